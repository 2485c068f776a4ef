//! Stock Debian cloud kernels, fetched with `apt-get download` and unpacked with `dpkg-deb -x`
//! into the cache: nothing is installed on the host. Bookworm ships 6.1 (main) and 6.12
//! (bookworm-security); both have KPROBES, BTF and fentry support (see shared/KERNEL.md).
//! Bullseye's 5.10 (BTF and fentry too, but no drop reasons) stands for the kernels before 5.17
//! that LTS distributions still run; its package lists live in the cache, apart from the host's
//! apt, so nothing from bullseye can reach the host's own upgrades.

use super::util;
use anyhow::{Context as _, Result, bail};
use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};
use std::process::Command;

/// A kernel series: package names are `<prefix><N><suffix>`, the newest N wins.
struct Series {
    name: &'static str,
    prefix: &'static str,
    suffix: &'static str,
    /// Where apt finds it: the host's own lists, or a private set (a release the host does not
    /// run).
    apt: Apt,
}

#[derive(Clone, Copy)]
enum Apt {
    Host,
    /// Lists kept under `<cache>/apt/<name>`, from these sources.list lines.
    Private {
        name: &'static str,
        sources: &'static str,
    },
}

const SERIES: [Series; 3] = [
    Series {
        name: "5.10",
        prefix: "linux-image-5.10.0-",
        suffix: "-cloud-amd64-unsigned",
        // Only main: the mirror this machine reaches answers 404 for bullseye-security's pool.
        apt: Apt::Private {
            name: "bullseye",
            sources: "deb http://deb.debian.org/debian bullseye main\n",
        },
    },
    Series {
        name: "6.1",
        prefix: "linux-image-6.1.0-",
        suffix: "-cloud-amd64-unsigned",
        apt: Apt::Host,
    },
    Series {
        name: "6.12",
        prefix: "linux-image-6.12.",
        suffix: "+deb12-cloud-amd64-unsigned",
        apt: Apt::Host,
    },
];

impl Apt {
    /// apt options that point apt-get/apt-cache at this set of lists, updating a private set
    /// once (when it has no lists yet).
    fn options(self, cache: &Path) -> Result<Vec<String>> {
        // As root apt drops to the _apt user, which cannot write into our cache: it warns and
        // falls back to root anyway. Say so up front to keep the output clean.
        let sandbox = || match is_root() {
            true => vec!["-o".to_string(), "APT::Sandbox::User=root".to_string()],
            false => Vec::new(),
        };
        let Apt::Private { name, sources } = self else {
            return Ok(sandbox());
        };
        let dir = cache.join("apt").join(name);
        let lists = dir.join("lists");
        std::fs::create_dir_all(lists.join("partial"))?;
        std::fs::create_dir_all(dir.join("archives/partial"))?;
        let list = dir.join("sources.list");
        std::fs::write(&list, sources)?;
        let o = |k: &str, v: &Path| vec!["-o".to_string(), format!("{k}={}", v.display())];
        let mut opts = [
            o("Dir::Etc::SourceList", &list),
            o("Dir::Etc::SourceParts", &dir.join("none")),
            o("Dir::State::Lists", &lists),
            o("Dir::Cache", &dir),
        ]
        .concat();
        opts.extend(sandbox());
        let has_lists = std::fs::read_dir(&lists)?
            .filter_map(|e| e.ok())
            .any(|e| e.file_name().to_string_lossy().contains("_Packages"));
        if !has_lists {
            eprintln!(
                "[vm] apt-get update for {name} (private lists in {})",
                dir.display()
            );
            util::run(Command::new("apt-get").args(&opts).args(["-q", "update"]))
                .with_context(|| format!("could not fetch the {name} package lists"))?;
        }
        Ok(opts)
    }
}

fn is_root() -> bool {
    std::fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0)
}

/// An unpacked kernel package.
pub struct Kernel {
    pub package: String,
    /// `uname -r` inside the guest, e.g. 6.12.117+deb12-cloud-amd64.
    pub release: String,
    pub vmlinuz: PathBuf,
    /// boot/config-<release>: tools read CONFIG_* from /boot as on an installed system.
    pub config: PathBuf,
    /// lib/modules/<release> of the package.
    pub modules: PathBuf,
}

/// Turns `--kernel` (5.10, 6.1, 6.12, all, an exact 5.10.0-32 / 6.1.0-56 / 6.12.117, a full
/// package name, or a comma list of those) into package names.
pub fn select(spec: &str, cache: &Path) -> Result<Vec<String>> {
    let mut out = Vec::new();
    for tok in spec.split(',').map(str::trim).filter(|t| !t.is_empty()) {
        if tok == "all" {
            for s in &SERIES {
                out.push(newest(s, cache)?);
            }
        } else if let Some(s) = SERIES.iter().find(|s| s.name == tok) {
            out.push(newest(s, cache)?);
        } else if tok.starts_with("linux-image-") {
            out.push(tok.to_string());
        } else if let Some(s) = SERIES
            .iter()
            .rev() // "6.12." must win over "6.1."
            .find(|s| tok.starts_with(&format!("{}.", s.name)))
        {
            out.push(format!("linux-image-{tok}{}", s.suffix));
        } else {
            bail!(
                "unknown kernel `{tok}`: use 5.10, 6.1, 6.12, all, or an exact 5.10.0-NN / \
                 6.1.0-NN / 6.12.NNN"
            );
        }
    }
    if out.is_empty() {
        bail!("no kernel selected");
    }
    out.dedup();
    Ok(out)
}

fn number_in(s: &Series, name: &str) -> Option<u32> {
    name.strip_prefix(s.prefix)?
        .strip_suffix(s.suffix)?
        .parse()
        .ok()
}

/// Newest package of a series that apt knows; without apt lists (offline, no `apt-get update`)
/// the newest one already in the cache.
fn newest(s: &Series, cache: &Path) -> Result<String> {
    let esc = |x: &str| x.replace('.', r"\.").replace('+', r"\+");
    let pattern = format!("^{}[0-9]+{}$", esc(s.prefix), esc(s.suffix));
    let opts = s.apt.options(cache).unwrap_or_else(|e| {
        eprintln!("[vm] {e:#}: looking in the cache only");
        Vec::new()
    });
    let apt = util::output(Command::new("apt-cache").args(&opts).args([
        "search",
        "--names-only",
        &pattern,
    ]))
    .unwrap_or_default();
    let from_apt = apt.lines().filter_map(|l| l.split_whitespace().next());
    if let Some(best) = from_apt.max_by_key(|n| number_in(s, n).unwrap_or(0)) {
        return Ok(best.to_string());
    }
    let cached = std::fs::read_dir(cache.join("kernels"))
        .into_iter()
        .flatten();
    let cached = cached.filter_map(|e| e.ok()?.file_name().into_string().ok());
    cached
        .filter(|n| number_in(s, n).is_some())
        .max_by_key(|n| number_in(s, n))
        .with_context(|| {
            format!(
                "apt knows no {}NN{} package: run `apt-get update` (bookworm and \
                 bookworm-security; bullseye's lists are kept in the cache)",
                s.prefix, s.suffix
            )
        })
}

/// Downloads (once) and unpacks (once) a kernel package.
pub fn fetch(package: &str, cache: &Path) -> Result<Kernel> {
    let root = cache.join("kernels").join(package);
    util::build_once(&root, |tmp| {
        let deb = download(package, cache)?;
        eprintln!("[vm] unpacking {}", deb.display());
        util::run(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(tmp))
    })?;
    let boot = root.join("boot");
    let vmlinuz = std::fs::read_dir(&boot)
        .with_context(|| format!("{} has no boot/", root.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("vmlinuz-"))
        })
        .with_context(|| format!("no vmlinuz in {}", boot.display()))?;
    let release =
        vmlinuz.file_name().unwrap_or_default().to_string_lossy()["vmlinuz-".len()..].to_string();
    let modules = ["lib/modules", "usr/lib/modules"]
        .iter()
        .map(|d| root.join(d).join(&release))
        .find(|p| p.is_dir())
        .with_context(|| format!("no lib/modules/{release} in {}", root.display()))?;
    let config = boot.join(format!("config-{release}"));
    Ok(Kernel {
        package: package.to_string(),
        release,
        vmlinuz,
        config,
        modules,
    })
}

fn download(package: &str, cache: &Path) -> Result<PathBuf> {
    let debs = &cache.join("debs");
    let find = || -> Option<PathBuf> {
        let prefix = format!("{package}_");
        std::fs::read_dir(debs)
            .ok()?
            .filter_map(|e| e.ok())
            .find_map(|e| {
                let n = e.file_name().to_string_lossy().into_owned();
                (n.starts_with(&prefix) && n.ends_with(".deb")).then(|| e.path())
            })
    };
    if let Some(deb) = find() {
        return Ok(deb);
    }
    std::fs::create_dir_all(debs)?;
    eprintln!("[vm] apt-get download {package}");
    let mut cmd = Command::new("apt-get");
    // The series that names this package says which lists know it.
    let apt = SERIES
        .iter()
        .find(|s| package.starts_with(s.prefix) && package.ends_with(s.suffix))
        .map_or(Apt::Host, |s| s.apt);
    cmd.args(apt.options(cache)?);
    cmd.current_dir(debs).args(["-q", "download", package]);
    util::run(&mut cmd).context("run `apt-get update` first if apt does not know the package")?;
    find().with_context(|| format!("apt-get download left no {package}_*.deb"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn package_numbers() {
        let n = |i: usize, name| number_in(&SERIES[i], name);
        assert_eq!(n(0, "linux-image-5.10.0-32-cloud-amd64-unsigned"), Some(32));
        assert_eq!(n(1, "linux-image-6.1.0-56-cloud-amd64-unsigned"), Some(56));
        assert_eq!(
            n(2, "linux-image-6.12.117+deb12-cloud-amd64-unsigned"),
            Some(117)
        );
        assert_eq!(n(1, "linux-image-6.1.0-56-cloud-amd64"), None);
        assert_eq!(n(1, "linux-image-5.10.0-32-cloud-amd64-unsigned"), None);
    }

    #[test]
    fn exact_versions() {
        let cache = Path::new("/nonexistent");
        assert_eq!(
            select("6.1.0-55,6.12.115,5.10.0-32", cache).unwrap(),
            [
                "linux-image-6.1.0-55-cloud-amd64-unsigned",
                "linux-image-6.12.115+deb12-cloud-amd64-unsigned",
                "linux-image-5.10.0-32-cloud-amd64-unsigned"
            ]
        );
        assert!(select("4.19", cache).is_err());
    }
}
