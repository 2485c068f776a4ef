//! Stock Debian cloud kernels, fetched with `apt-get download` and unpacked with `dpkg-deb -x`
//! into the cache: nothing is installed on the host. Bookworm ships 6.1 (main) and 6.12
//! (bookworm-security); both have KPROBES, BTF and fentry support.
//! Bullseye's 5.10 (BTF and fentry too, but no drop reasons) stands for the kernels before 5.17
//! that LTS distributions still run. Trixie-backports' 7.3 stands for the newest kernels, with
//! function probes: the 6.16+ drop reasons (TCP_RFC7323_TW_PAWS) and tcp_check_req's
//! drop_reason argument, which this machine's own kernel shows only through tracepoints.
//! Private series' package lists live in the cache, apart from the host's apt, so nothing
//! from them can reach the host's own upgrades.

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
    /// How the kernel is packaged.
    packaging: Packaging,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Packaging {
    /// One package holds boot/vmlinuz-*, boot/config-* and lib/modules (up to Debian 13's 6.12).
    Whole,
    /// `linux-image-V` is an empty package depending on `linux-binary-V` (the signed
    /// usr/lib/modules/V/vmlinuz), `linux-modules-V` and `linux-base-V` (config, modules.builtin):
    /// Debian's packaging since 6.16.
    Split,
}

/// The series a kernel package belongs to, if any.
fn series_of(package: &str) -> Option<&'static Series> {
    SERIES.iter().find(|s| number_in(s, package).is_some())
}

/// The packages to download for a kernel package name.
fn parts(package: &str) -> Vec<String> {
    let split = series_of(package).is_some_and(|s| s.packaging == Packaging::Split);
    let Some(version) = package.strip_prefix("linux-image-").filter(|_| split) else {
        return vec![package.to_string()];
    };
    ["linux-binary-", "linux-modules-", "linux-base-"]
        .iter()
        .map(|p| format!("{p}{version}"))
        .collect()
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

const SERIES: [Series; 4] = [
    Series {
        name: "5.10",
        prefix: "linux-image-5.10.0-",
        suffix: "-cloud-amd64-unsigned",
        // Only main: the mirror this machine reaches answers 404 for bullseye-security's pool.
        apt: Apt::Private {
            name: "bullseye",
            sources: "deb http://deb.debian.org/debian bullseye main\n",
        },
        packaging: Packaging::Whole,
    },
    Series {
        name: "6.1",
        prefix: "linux-image-6.1.0-",
        suffix: "-cloud-amd64-unsigned",
        apt: Apt::Host,
        packaging: Packaging::Whole,
    },
    Series {
        name: "6.12",
        prefix: "linux-image-6.12.",
        suffix: "+deb12-cloud-amd64-unsigned",
        apt: Apt::Host,
        packaging: Packaging::Whole,
    },
    Series {
        name: "7.3",
        prefix: "linux-image-7.3.",
        suffix: "+deb13-cloud-amd64",
        // Signed by the trixie keys, which bookworm's debian-archive-keyring carries.
        apt: Apt::Private {
            name: "trixie-backports",
            sources: "deb http://deb.debian.org/debian trixie-backports main\n",
        },
        packaging: Packaging::Split,
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

/// Turns `--kernel` (5.10, 6.1, 6.12, 7.3, all, an exact 5.10.0-32 / 6.1.0-56 / 6.12.117 /
/// 7.3.4, a full package name, or a comma list of those) into package names.
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
                "unknown kernel `{tok}`: use 5.10, 6.1, 6.12, 7.3, all, or an exact 5.10.0-NN / \
                 6.1.0-NN / 6.12.NNN / 7.3.N"
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
                 bookworm-security; bullseye's and trixie-backports' lists are kept in the \
                 cache)",
                s.prefix, s.suffix
            )
        })
}

/// Downloads (once) and unpacks (once) a kernel package (all its parts, into one tree).
pub fn fetch(package: &str, cache: &Path) -> Result<Kernel> {
    let root = cache.join("kernels").join(package);
    util::build_once(&root, |tmp| {
        for part in parts(package) {
            let apt = series_of(package).map_or(Apt::Host, |s| s.apt);
            let deb = download(&part, apt, cache)?;
            eprintln!("[vm] unpacking {}", deb.display());
            util::run(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(tmp))?;
        }
        Ok(())
    })?;
    let module_dirs = ["lib/modules", "usr/lib/modules"].map(|d| root.join(d));
    // boot/vmlinuz-<release> in whole packages, usr/lib/modules/<release>/vmlinuz in split ones.
    let vmlinuz = std::fs::read_dir(root.join("boot"))
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("vmlinuz-"))
        })
        .or_else(|| {
            module_dirs
                .iter()
                .flat_map(|d| std::fs::read_dir(d).into_iter().flatten())
                .filter_map(|e| e.ok().map(|e| e.path().join("vmlinuz")))
                .find(|p| p.is_file())
        })
        .with_context(|| format!("no vmlinuz in {}", root.display()))?;
    let release = match vmlinuz.file_name().unwrap_or_default().to_string_lossy() {
        n if n == "vmlinuz" => vmlinuz
            .parent()
            .and_then(Path::file_name)
            .unwrap_or_default()
            .to_string_lossy()
            .into_owned(),
        n => n["vmlinuz-".len()..].to_string(),
    };
    let modules = module_dirs
        .iter()
        .map(|d| d.join(&release))
        .find(|p| p.is_dir())
        .with_context(|| format!("no lib/modules/{release} in {}", root.display()))?;
    let config = [
        root.join("boot").join(format!("config-{release}")),
        modules.join("config"),
    ]
    .into_iter()
    .find(|p| p.is_file())
    .with_context(|| format!("no kernel config for {release} in {}", root.display()))?;
    Ok(Kernel {
        package: package.to_string(),
        release,
        vmlinuz,
        config,
        modules,
    })
}

fn download(package: &str, apt: Apt, cache: &Path) -> Result<PathBuf> {
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
        assert_eq!(n(3, "linux-image-7.3.4+deb13-cloud-amd64"), Some(4));
        assert_eq!(n(3, "linux-image-7.3.4+deb13-cloud-amd64-dbg"), None);
    }

    #[test]
    fn split_packages() {
        assert_eq!(
            parts("linux-image-7.3.4+deb13-cloud-amd64"),
            [
                "linux-binary-7.3.4+deb13-cloud-amd64",
                "linux-modules-7.3.4+deb13-cloud-amd64",
                "linux-base-7.3.4+deb13-cloud-amd64"
            ]
        );
        assert_eq!(
            parts("linux-image-6.1.0-56-cloud-amd64-unsigned"),
            ["linux-image-6.1.0-56-cloud-amd64-unsigned"]
        );
    }

    #[test]
    fn exact_versions() {
        let cache = Path::new("/nonexistent");
        assert_eq!(
            select("6.1.0-55,6.12.115,5.10.0-32,7.3.4", cache).unwrap(),
            [
                "linux-image-6.1.0-55-cloud-amd64-unsigned",
                "linux-image-6.12.115+deb12-cloud-amd64-unsigned",
                "linux-image-5.10.0-32-cloud-amd64-unsigned",
                "linux-image-7.3.4+deb13-cloud-amd64"
            ]
        );
        assert!(select("4.19", cache).is_err());
    }
}
