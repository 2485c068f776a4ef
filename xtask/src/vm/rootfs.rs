//! Lays out the guest's root file system: busybox for the basics, dash as /bin/sh, the host's
//! iproute2 / nftables / procps binaries with their shared libraries, the staged kernel modules,
//! /init, the command to run and any files the caller adds. The layout mirrors the host's merged
//! /usr (/lib -> usr/lib, ...) so that the paths ldd reports work unchanged in the guest.

use super::cpio::Archive;
use super::modules::Modules;
use super::util;
use anyhow::{Context as _, Result, bail};
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Host tools copied into the guest. The tests drive iproute2 (ip, ss, nstat, tc), nft and
/// sysctl; dash is /bin/sh because busybox's shell would run its own `ip`/`sysctl`/`tc` applets
/// whatever PATH says.
const HOST_TOOLS: [&str; 7] = ["ip", "ss", "nstat", "tc", "nft", "sysctl", "dash"];

/// Small configuration files the tools read if present (protocol and service names for nft and
/// ss, iproute2's tables).
const HOST_CONFIG: [&str; 3] = ["/etc/protocols", "/etc/services", "/etc/iproute2"];

const INIT: &str = include_str!("init.sh");

/// A host file or directory to copy into the guest.
#[derive(Clone)]
pub struct Add {
    pub host: PathBuf,
    pub guest: String,
}

impl Add {
    /// `HOST_PATH[:GUEST_PATH]`; the guest path defaults to /root/<file name>.
    pub fn parse(s: &str) -> Result<Add> {
        let (host, guest) = match s.split_once(':') {
            Some((h, g)) => (h, g.to_string()),
            None => {
                let name = Path::new(s)
                    .file_name()
                    .context("--add needs a file name")?;
                (s, format!("/root/{}", name.to_string_lossy()))
            }
        };
        if !guest.starts_with('/') {
            bail!("guest path `{guest}` must be absolute");
        }
        // /init mounts file systems over these, which would hide the files.
        let hidden = ["/proc", "/sys", "/dev", "/run"];
        if let Some(h) = hidden.iter().find(|h| Path::new(&guest).starts_with(h)) {
            bail!("guest path `{guest}` is under {h}, which /init mounts over");
        }
        let host = PathBuf::from(host);
        if !host.exists() {
            bail!("--add: {} does not exist", host.display());
        }
        Ok(Add { host, guest })
    }
}

/// Everything the guest needs besides the kernel.
pub struct Guest<'a> {
    pub release: &'a str,
    /// The kernel's config, installed as /boot/config-<release> like on a Debian system
    /// (tools read CONFIG_HZ and friends there when /proc/config.gz is absent).
    pub config: &'a Path,
    pub modules: &'a Modules,
    pub preload: Vec<String>,
    pub adds: &'a [Add],
    pub env: &'a [(String, String)],
    pub script: &'a str,
}

pub fn build(g: &Guest) -> Result<Archive> {
    let mut a = Archive::default();
    skeleton(&mut a)?;
    let mut elves = Vec::new();

    let busybox =
        util::which("busybox").context("busybox not found (apt-get install busybox-static)")?;
    let busybox_at = canonical_place(&busybox)?;
    a.host_file(&busybox_at, &busybox)?;
    if !a.contains("/bin/busybox") {
        a.symlink("/bin/busybox", &busybox_at)?;
    }

    for tool in HOST_TOOLS {
        let path = util::which(tool).with_context(|| {
            format!(
                "`{tool}` not found on the host (apt-get install iproute2 nftables procps dash)"
            )
        })?;
        a.host_file(&canonical_place(&path)?, &path)?;
        elves.push(path);
    }
    a.symlink("/bin/sh", "dash")?;

    // Busybox applets where busybox would install them, except names the host tools provide.
    let taken: BTreeSet<&str> = HOST_TOOLS.iter().copied().chain(["sh"]).collect();
    let list = util::output(Command::new(&busybox).arg("--list-full"))?;
    for applet in list.lines().map(str::trim).filter(|l| !l.is_empty()) {
        let name = applet.rsplit('/').next().unwrap_or(applet);
        let path = format!("/{applet}");
        if !taken.contains(name) && !a.contains(&path) {
            a.symlink(&path, "/bin/busybox")?;
        }
    }

    for cfg in HOST_CONFIG.iter().map(Path::new).filter(|p| p.exists()) {
        a.host_tree(&cfg.to_string_lossy(), cfg)?;
    }

    if g.config.is_file() {
        a.host_file(&format!("/boot/config-{}", g.release), g.config)?;
    }
    a.host_tree(&format!("/lib/modules/{}", g.release), &g.modules.dir())?;
    let mut list = g.preload.join("\n");
    list.push('\n');
    a.bytes("/etc/twtrace-vm/modules", 0o644, list)?;

    for add in g.adds {
        a.host_tree(&add.guest, &add.host)?;
        collect_elves(&add.host, &mut elves)?;
    }

    for lib in shared_libraries(&elves)? {
        a.host_file(&canonical_place(&lib)?, &lib)?;
    }

    a.bytes(
        "/etc/twtrace-vm/command.sh",
        0o755,
        command_script(g.env, g.script),
    )?;
    a.bytes("/init", 0o755, INIT)?;
    Ok(a)
}

fn skeleton(a: &mut Archive) -> Result<()> {
    // Mirror the host's merged /usr so library paths from ldd resolve the same way.
    for d in ["bin", "sbin", "lib", "lib64"] {
        match std::fs::read_link(format!("/{d}")) {
            Ok(target) => a.symlink(&format!("/{d}"), &target.to_string_lossy())?,
            Err(_) => a.dir(&format!("/{d}"), 0o755)?,
        }
    }
    for d in [
        "dev", "proc", "sys", "run", "etc", "mnt", "usr/bin", "usr/sbin", "var",
    ] {
        a.dir(&format!("/{d}"), 0o755)?;
    }
    a.dir("/root", 0o700)?;
    a.dir("/tmp", 0o1777)?;
    a.dir("/var/tmp", 0o1777)?;
    a.symlink("/var/run", "../run")?;
    // The kernel opens /dev/console for init's stdio before /init can mount devtmpfs.
    a.char_dev("/dev/console", 0o600, 5, 1)?;
    a.char_dev("/dev/null", 0o666, 1, 3)?;
    // `nobody` for daemons that drop privileges to it (nginx's worker in `vm-bench`).
    a.bytes(
        "/etc/passwd",
        0o644,
        "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n",
    )?;
    a.bytes("/etc/group", 0o644, "root:x:0:\nnogroup:x:65534:\n")?;
    a.bytes(
        "/etc/hosts",
        0o644,
        "127.0.0.1 localhost twtrace-vm\n::1 localhost\n",
    )?;
    a.bytes(
        "/etc/nsswitch.conf",
        0o644,
        "passwd: files\ngroup: files\nhosts: files\n",
    )?;
    Ok(())
}

/// Where a host file goes in the guest: its directory with symlinks resolved, its own name kept
/// (/lib64/ld-linux-x86-64.so.2 -> /usr/lib64/ld-linux-x86-64.so.2, content followed).
fn canonical_place(path: &Path) -> Result<String> {
    let parent = path.parent().context("no parent")?;
    let parent = parent
        .canonicalize()
        .with_context(|| format!("{}", parent.display()))?;
    let name = path.file_name().context("no file name")?;
    Ok(parent.join(name).to_string_lossy().into_owned())
}

/// Dynamically linked ELF files among an added file or tree (static ones are harmless: ldd
/// just reports no libraries).
fn collect_elves(path: &Path, out: &mut Vec<PathBuf>) -> Result<()> {
    let meta = std::fs::symlink_metadata(path)?;
    if meta.is_dir() {
        for e in std::fs::read_dir(path)? {
            collect_elves(&e?.path(), out)?;
        }
    } else if meta.is_file() {
        let mut magic = [0u8; 4];
        use std::io::Read as _;
        let is_elf = std::fs::File::open(path)
            .and_then(|mut f| f.read_exact(&mut magic))
            .is_ok()
            && magic == *b"\x7fELF";
        if is_elf {
            out.push(path.to_path_buf());
        }
    }
    Ok(())
}

/// Every library (and the ELF interpreter) the given binaries load, from ldd's output.
fn shared_libraries(elves: &[PathBuf]) -> Result<BTreeSet<PathBuf>> {
    let mut libs = BTreeSet::new();
    for elf in elves {
        let out = Command::new("ldd")
            .arg(elf)
            .output()
            .context("cannot run ldd")?;
        let text = String::from_utf8_lossy(&out.stdout);
        if !out.status.success() {
            // Static binaries (e.g. the crt-static test binaries): nothing to copy.
            continue;
        }
        for line in text.lines() {
            // "libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x..)" or "/lib64/ld-linux... (0x..)";
            // linux-vdso has no path.
            let path = match line.split_once("=>") {
                Some((_, rhs)) => rhs.split_whitespace().next(),
                None => line.split_whitespace().next(),
            };
            match path {
                Some("not") => bail!("{}: missing library: {}", elf.display(), line.trim()),
                Some(p) if p.starts_with('/') => {
                    libs.insert(PathBuf::from(p));
                }
                _ => {}
            }
        }
    }
    Ok(libs)
}

fn command_script(env: &[(String, String)], script: &str) -> String {
    let mut s = String::from("# Generated by `cargo xtask vm`: the guest command, run by dash.\n");
    for (k, v) in env {
        s.push_str(&format!("export {k}={}\n", util::shell_quote(v)));
    }
    s.push_str(script);
    s.push('\n');
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn add_paths() {
        let a = Add::parse("/etc/hostname").unwrap();
        assert_eq!(a.guest, "/root/hostname");
        let a = Add::parse("/etc:/opt/etc").unwrap();
        assert_eq!(a.guest, "/opt/etc");
        assert!(Add::parse("/etc:rel").is_err());
        assert!(Add::parse("/etc:/run/x").is_err());
        assert!(Add::parse("/nonexistent-xtask").is_err());
    }
}
