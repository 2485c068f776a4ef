//! Network namespaces for tests: a server and a client namespace joined by a veth pair.
//!
//! Namespaces are named `tw-<tag>-<pid>-srv` / `-cli` so that a crashed run's leftovers can be
//! recognised (by tag and by a pid that no longer exists) and removed, while namespaces of a
//! concurrently running test process with the same tag are left alone.

use std::collections::BTreeSet;
use std::fs::File;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::fd::AsRawFd;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::Command;
use std::sync::Mutex;
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail, ensure};

const NETNS_DIR: &str = "/run/netns";
/// The veth end in each namespace; the name is per namespace, so pairs never collide on it.
pub const VETH: &str = "veth0";

/// Two namespaces (server, client) with a veth between them and IPv4 + IPv6 addresses.
/// Dropping it deletes both namespaces (and with them the veth), also during a panic.
#[derive(Debug)]
pub struct NetnsPair {
    server: String,
    client: String,
    server_v4: Ipv4Addr,
    client_v4: Ipv4Addr,
    server_v6: Ipv6Addr,
    client_v6: Ipv6Addr,
    /// The namespaces created so far; Drop deletes exactly these.
    created: Vec<String>,
    subnet: (u8, u8),
}

/// Runs `ip <args>` and fails with its stderr if it does not succeed.
pub fn ip(args: &[&str]) -> Result<()> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .with_context(|| format!("running ip {}", args.join(" ")))?;
    ensure!(
        out.status.success(),
        "ip {} failed ({}): {}",
        args.join(" "),
        out.status,
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(())
}

/// Output of `ip <args>` on success.
fn ip_output(args: &[&str]) -> Result<String> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .with_context(|| format!("running ip {}", args.join(" ")))?;
    ensure!(
        out.status.success(),
        "ip {} failed ({}): {}",
        args.join(" "),
        out.status,
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// FNV-1a: stable across runs and Rust versions (std's hasher is randomly seeded), so a failing
/// run can be reproduced with the same subnet.
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// Subnets of the pairs alive in this process.
static SUBNETS: Mutex<BTreeSet<(u8, u8)>> = Mutex::new(BTreeSet::new());

/// Picks the 10.X.Y.0/24 and fd00:X:Y::/64 subnet for a tag in this process: a stable hash
/// of tag and pid, moved on to the next free value if a live pair of this process has it.
/// The namespaces are isolated, so equal subnets would still route, but distinct ones keep
/// tracer output of concurrent tests unambiguous and let a server address name one server
/// (the traffic module's completion registry relies on that).
fn alloc_subnet(tag: &str, pid: u32) -> (u8, u8) {
    let h = fnv1a(format!("{tag}/{pid}").as_bytes());
    let mut used = SUBNETS.lock().unwrap();
    // X in 1..=254 so addresses never look like network/broadcast oddities; 254*256 slots.
    let slots = 254 * 256;
    for i in 0..slots {
        let v = (h + i) % slots;
        let xy = (1 + (v / 256) as u8, (v % 256) as u8);
        if used.insert(xy) {
            return xy;
        }
    }
    panic!("more than {slots} live NetnsPairs");
}

fn free_subnet(xy: (u8, u8)) {
    SUBNETS.lock().unwrap().remove(&xy);
}

fn valid_tag(tag: &str) -> bool {
    !tag.is_empty()
        && tag.len() <= 32
        && tag
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b))
}

/// A namespace a test adds by a name of its own choosing (`ip netns add`), outside the
/// `tw-<tag>-<pid>` scheme. Dropping it deletes it, also during a panic: a leftover would make
/// the next run's `add` fail.
#[derive(Debug)]
pub struct NamedNetns(String);

impl NamedNetns {
    /// Adds `name`, after deleting a leftover of that name (from a run that was killed).
    pub fn add(name: &str) -> Result<Self> {
        if netns_exists(name) {
            ip(&["netns", "delete", name])?;
        }
        ip(&["netns", "add", name])?;
        Ok(Self(name.to_owned()))
    }

    pub fn name(&self) -> &str {
        &self.0
    }
}

impl Drop for NamedNetns {
    fn drop(&mut self) {
        // A test may have deleted it on purpose (what it tests).
        if netns_exists(&self.0)
            && let Err(e) = ip(&["netns", "delete", &self.0])
        {
            eprintln!("warning: could not delete netns {}: {e:#}", self.0);
        }
    }
}

/// Whether `/run/netns/<name>` exists.
pub fn netns_exists(name: &str) -> bool {
    Path::new(NETNS_DIR).join(name).exists()
}

/// The namespace id twtrace reports: the inode number of the namespace (st_ino of the
/// bind mount at /run/netns/<name>, which is the nsfs inode). Inode numbers of nsfs are
/// 32-bit proc inums, so the truncation is lossless.
pub fn netns_inode(ns: &str) -> Result<u32> {
    let meta = std::fs::metadata(Path::new(NETNS_DIR).join(ns))
        .with_context(|| format!("stat {NETNS_DIR}/{ns}"))?;
    u32::try_from(meta.ino()).map_err(|_| anyhow!("netns inode {} exceeds u32", meta.ino()))
}

fn pid_alive(pid: u32) -> bool {
    Path::new("/proc").join(pid.to_string()).exists()
}

/// Parses `tw-<tag>-<pid>-srv|cli` for the given tag; returns the pid.
fn parse_name(name: &str, tag: Option<&str>) -> Option<u32> {
    let rest = name.strip_prefix("tw-")?;
    let rest = rest
        .strip_suffix("-srv")
        .or_else(|| rest.strip_suffix("-cli"))?;
    let (t, pid) = rest.rsplit_once('-')?;
    if let Some(tag) = tag
        && t != tag
    {
        return None;
    }
    pid.parse().ok()
}

fn cleanup_matching(tag: Option<&str>) -> Result<Vec<String>> {
    let mut removed = Vec::new();
    let dir = match std::fs::read_dir(NETNS_DIR) {
        Ok(d) => d,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(removed),
        Err(e) => return Err(e).context(NETNS_DIR),
    };
    for entry in dir {
        let name = entry?.file_name().to_string_lossy().into_owned();
        let Some(pid) = parse_name(&name, tag) else {
            continue;
        };
        // A live pid may be another test process running right now with the same tag; its
        // namespaces are in use. Only an owner that no longer exists means "crashed run".
        if pid == std::process::id() || pid_alive(pid) {
            continue;
        }
        ip(&["netns", "delete", &name])?;
        removed.push(name);
    }
    Ok(removed)
}

/// Removes namespaces left by an earlier crashed (SIGKILLed, aborted) run for this tag.
/// Returns the names removed. Namespaces whose owning process still runs are kept.
pub fn cleanup_stale(tag: &str) -> Result<Vec<String>> {
    cleanup_matching(Some(tag))
}

/// Like [`cleanup_stale`] for every tag (for CI scripts or a test that runs first).
pub fn cleanup_stale_all() -> Result<Vec<String>> {
    cleanup_matching(None)
}

/// Runs `f` on a new thread that has joined network namespace `ns` and returns its result.
///
/// Only this short-lived thread changes namespace (setns affects the calling thread alone);
/// the test's own thread stays in the root namespace, where the tracer is spawned. A panic in
/// `f` is re-raised here with its original payload. Panics if the namespace cannot be entered;
/// see [`try_in_netns`] for a fallible version.
pub fn in_netns<T: Send>(ns: &str, f: impl FnOnce() -> T + Send) -> T {
    match try_in_netns(ns, f) {
        Ok(v) => v,
        Err(e) => panic!("in_netns({ns}): {e:#}"),
    }
}

/// [`in_netns`] returning an error instead of panicking when the namespace cannot be entered.
pub fn try_in_netns<T: Send>(ns: &str, f: impl FnOnce() -> T + Send) -> Result<T> {
    // Open before spawning so that a missing namespace is reported with its path.
    let file = File::open(Path::new(NETNS_DIR).join(ns))
        .with_context(|| format!("open {NETNS_DIR}/{ns}"))?;
    thread::scope(|s| {
        let handle = thread::Builder::new()
            .name(format!("netns-{ns}"))
            .spawn_scoped(s, move || -> Result<T> {
                enter_netns(&file)?;
                drop(file);
                Ok(f())
            })
            .context("spawning netns thread")?;
        match handle.join() {
            Ok(r) => r,
            Err(payload) => std::panic::resume_unwind(payload),
        }
    })
}

/// setns(CLONE_NEWNET) for the calling thread.
pub(crate) fn enter_netns(file: &File) -> Result<()> {
    // SAFETY: plain syscall on an fd that stays open for the call.
    let ret = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
    if ret != 0 {
        return Err(std::io::Error::last_os_error()).context("setns(CLONE_NEWNET)");
    }
    Ok(())
}

/// Opens /run/netns/<ns> for a later [`enter_netns`] on a thread we spawn ourselves.
pub(crate) fn open_netns(ns: &str) -> Result<File> {
    File::open(Path::new(NETNS_DIR).join(ns)).with_context(|| format!("open {NETNS_DIR}/{ns}"))
}

impl NetnsPair {
    /// Creates `tw-<tag>-<pid>-srv` and `tw-<tag>-<pid>-cli` joined by a veth pair, with
    /// 10.X.Y.1/24 + fd00:X:Y::1/64 on the server and .2 / ::2 on the client, everything up.
    /// Stale namespaces of this tag from crashed runs are removed first. The tag must be
    /// unique among the pairs alive at once in one test process (ASCII letters, digits, `_`,
    /// `.`, `-`).
    pub fn new(tag: &str) -> Result<NetnsPair> {
        ensure!(
            valid_tag(tag),
            "netns tag {tag:?} must be 1-32 chars of [A-Za-z0-9_.-]"
        );
        cleanup_stale(tag)?;
        let pid = std::process::id();
        let (x, y) = alloc_subnet(tag, pid);
        let mut pair = NetnsPair {
            server: format!("tw-{tag}-{pid}-srv"),
            client: format!("tw-{tag}-{pid}-cli"),
            server_v4: Ipv4Addr::new(10, x, y, 1),
            client_v4: Ipv4Addr::new(10, x, y, 2),
            server_v6: Ipv6Addr::new(0xfd00, x.into(), y.into(), 0, 0, 0, 0, 1),
            client_v6: Ipv6Addr::new(0xfd00, x.into(), y.into(), 0, 0, 0, 0, 2),
            created: Vec::new(),
            subnet: (x, y),
        };
        // From here on `pair` owns whatever got created, so an error (or panic) half-way
        // still deletes the namespaces through Drop.
        for ns in [pair.server.clone(), pair.client.clone()] {
            ip(&["netns", "add", &ns])
                .with_context(|| format!("is tag {tag:?} used twice at once in this process?"))?;
            pair.created.push(ns);
        }
        pair.setup_links()?;
        Ok(pair)
    }

    fn setup_links(&self) -> Result<()> {
        let (srv, cli) = (self.server.as_str(), self.client.as_str());
        // Create the veth inside the server namespace with its peer directly in the client
        // namespace: no interface name ever exists in the root namespace, where concurrent
        // tests (or the host) could collide with it.
        ip(&[
            "-n", srv, "link", "add", VETH, "type", "veth", "peer", "name", VETH, "netns", cli,
        ])?;
        for (ns, v4, v6) in [
            (srv, self.server_v4, self.server_v6),
            (cli, self.client_v4, self.client_v6),
        ] {
            ip(&["-n", ns, "addr", "add", &format!("{v4}/24"), "dev", VETH])?;
            // nodad: without it the address stays "tentative" for ~1-2 s of duplicate address
            // detection and connect()/bind() to it fail with EADDRNOTAVAIL meanwhile.
            ip(&[
                "-n",
                ns,
                "-6",
                "addr",
                "add",
                &format!("{v6}/64"),
                "dev",
                VETH,
                "nodad",
            ])?;
            ip(&["-n", ns, "link", "set", "lo", "up"])?;
            ip(&["-n", ns, "link", "set", VETH, "up"])?;
        }
        // The kernel turns the carrier on when the second end comes up, but the operational
        // state follows asynchronously (linkwatch); wait for it so the first SYN of a test is
        // not sent into a link that still reports NO-CARRIER.
        let deadline = Instant::now() + Duration::from_secs(5);
        for ns in [srv, cli] {
            loop {
                let out = ip_output(&["-n", ns, "-o", "link", "show", VETH])?;
                if out.contains("state UP") && out.contains("LOWER_UP") {
                    break;
                }
                if Instant::now() > deadline {
                    bail!("{VETH} in {ns} did not come up: {}", out.trim());
                }
                thread::sleep(Duration::from_millis(5));
            }
        }
        Ok(())
    }

    pub fn server_ns(&self) -> &str {
        &self.server
    }
    pub fn client_ns(&self) -> &str {
        &self.client
    }
    pub fn server_v4(&self) -> IpAddr {
        IpAddr::V4(self.server_v4)
    }
    pub fn client_v4(&self) -> IpAddr {
        IpAddr::V4(self.client_v4)
    }
    pub fn server_v6(&self) -> IpAddr {
        IpAddr::V6(self.server_v6)
    }
    pub fn client_v6(&self) -> IpAddr {
        IpAddr::V6(self.client_v6)
    }
    /// Namespace id of the server side, as twtrace reports it.
    pub fn server_inode(&self) -> u32 {
        netns_inode(&self.server).expect("server netns inode")
    }
    /// Namespace id of the client side, as twtrace reports it.
    pub fn client_inode(&self) -> u32 {
        netns_inode(&self.client).expect("client netns inode")
    }
}

impl Drop for NetnsPair {
    fn drop(&mut self) {
        // Deleting the namespace removes its veth end, which deletes the peer too; sockets
        // still in TIME-WAIT are purged by the kernel when the namespace dies.
        for ns in self.created.drain(..).rev() {
            if let Err(e) = ip(&["netns", "delete", &ns]) {
                eprintln!("warning: could not delete netns {ns}: {e:#}");
            }
        }
        free_subnet(self.subnet);
    }
}
