//! Per-namespace kernel state read or written through /proc from a thread inside the namespace:
//! sysctls, the MIB counters (the ground truth tests compare twtrace with) and the TCP socket
//! tables.
//!
//! Why `/proc/thread-self/net` and not `/proc/net`: `/proc/net` is a symlink to
//! `/proc/self/net`, and `/proc/self` is the thread-group leader, i.e. the test's main thread in
//! the root namespace. A worker thread that did setns() must look at its own task instead.
//! `/proc/sys/net` needs no such care: it resolves against the calling thread's namespace.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};

use super::netns::try_in_netns;

const THREAD_NET: &str = "/proc/thread-self/net";

fn sysctl_path(key: &str) -> String {
    format!("/proc/sys/{}", key.replace('.', "/"))
}

/// Writes sysctl `key` (dotted, e.g. `net.ipv4.tcp_max_tw_buckets`) inside namespace `ns`.
/// Meant for the per-namespace net.* sysctls; a global one written this way changes the host.
pub fn sysctl(ns: &str, key: &str, value: &str) -> Result<()> {
    let path = sysctl_path(key);
    try_in_netns(ns, || std::fs::write(&path, value))?
        .with_context(|| format!("writing {value:?} to {path} in netns {ns}"))
}

/// Reads sysctl `key` inside namespace `ns`, trimmed (multi-value ones are tab-separated, e.g.
/// ip_local_port_range reads back as "40000\t40003").
pub fn sysctl_get(ns: &str, key: &str) -> Result<String> {
    let path = sysctl_path(key);
    let s = try_in_netns(ns, || std::fs::read_to_string(&path))?
        .with_context(|| format!("reading {path} in netns {ns}"))?;
    Ok(s.trim().to_owned())
}

/// Parses the header/value line pairs of /proc/net/netstat and /proc/net/snmp into
/// `<Prefix><Name>` keys ("TcpExtTW", "TcpActiveOpens", ...), the names nstat prints.
/// Negative values (snmp's Tcp MaxConn is -1) are not counters and are skipped.
fn parse_mib(text: &str, out: &mut BTreeMap<String, u64>) -> Result<()> {
    let mut lines = text.lines();
    while let Some(header) = lines.next() {
        let values = lines
            .next()
            .ok_or_else(|| anyhow!("MIB header without values: {header}"))?;
        let mut h = header.split_whitespace();
        let mut v = values.split_whitespace();
        let (Some(hp), Some(vp)) = (h.next(), v.next()) else {
            continue;
        };
        if hp != vp {
            bail!("MIB lines out of step: {hp} vs {vp}");
        }
        let prefix = hp.trim_end_matches(':');
        for (name, val) in h.zip(v) {
            if let Ok(n) = val.parse::<u64>() {
                out.insert(format!("{prefix}{name}"), n);
            }
        }
    }
    Ok(())
}

/// All counters of /proc/net/netstat and /proc/net/snmp in namespace `ns`, plus
/// [`TIMEWAIT_SOCKETS`]. The TcpExt ones count IPv4 and IPv6 together. A counter this kernel
/// does not have is simply absent.
pub fn netstat(ns: &str) -> Result<BTreeMap<String, u64>> {
    let (netstat, snmp) = try_in_netns(ns, || {
        (
            std::fs::read_to_string(format!("{THREAD_NET}/netstat")),
            std::fs::read_to_string(format!("{THREAD_NET}/snmp")),
        )
    })?;
    let mut out = BTreeMap::new();
    parse_mib(&netstat.context("reading netstat")?, &mut out)?;
    parse_mib(&snmp.context("reading snmp")?, &mut out)?;
    out.insert(TIMEWAIT_SOCKETS.to_owned(), timewait_count(ns)?);
    Ok(out)
}

/// Not a counter: the namespace's timewait sockets when the snapshot was taken (no MIB name has
/// a dot). Before 5.18 no counter counts TIME-WAITs as they are created, and this is the
/// kernel's own record of them (see [`tw_counted_at_creation`]).
pub const TIMEWAIT_SOCKETS: &str = "twtrace.TimewaitSockets";

/// `after[key] - before[key]`, or None if the kernel lacks the counter.
pub fn try_delta(
    before: &BTreeMap<String, u64>,
    after: &BTreeMap<String, u64>,
    key: &str,
) -> Option<u64> {
    Some(after.get(key)?.saturating_sub(*before.get(key)?))
}

/// `after[key] - before[key]`. Panics if the counter is absent: callers that deal with older
/// kernels check `map.contains_key(key)` (or use [`try_delta`]) first, so a typo in a key is
/// never silently read as zero.
pub fn delta(before: &BTreeMap<String, u64>, after: &BTreeMap<String, u64>, key: &str) -> u64 {
    try_delta(before, after, key)
        .unwrap_or_else(|| panic!("counter {key} not present on this kernel (or misspelled)"))
}

/// TCP states as /proc/net/tcp numbers them (include/net/tcp_states.h).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum TcpState {
    Established,
    SynSent,
    SynRecv,
    FinWait1,
    FinWait2,
    TimeWait,
    Close,
    CloseWait,
    LastAck,
    Listen,
    Closing,
    NewSynRecv,
    Other(u8),
}

impl TcpState {
    fn from_code(c: u8) -> TcpState {
        use TcpState::*;
        match c {
            1 => Established,
            2 => SynSent,
            3 => SynRecv,
            4 => FinWait1,
            5 => FinWait2,
            6 => TimeWait,
            7 => Close,
            8 => CloseWait,
            9 => LastAck,
            10 => Listen,
            11 => Closing,
            12 => NewSynRecv,
            n => Other(n),
        }
    }
}

/// One line of /proc/net/tcp or tcp6. For a TIME-WAIT socket `state` is its tw_substate: an
/// orphaned FIN_WAIT2 socket that the kernel already turned into a timewait sock shows as
/// FinWait2 until the peer's FIN arrives.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TcpEntry {
    pub local: SocketAddr,
    pub remote: SocketAddr,
    pub state: TcpState,
    /// A timewait socket (its timer column reads 3), whatever its substate.
    pub timewait: bool,
    /// A timewait socket's time left until its timer fires (/proc shows it in clock ticks,
    /// 0 once due).
    pub timewait_left: Option<Duration>,
    /// The `retrnsmt` column: for a request socket (SYN_RECV), how many times its timer has
    /// fired (`num_timeout`), SYN-ACK sent again or not.
    pub retransmits: u32,
}

/// The kernel prints addresses as the in-memory bytes of the big-endian address, grouped in
/// native-endian 32-bit words; undo that.
fn parse_addr(s: &str) -> Result<SocketAddr> {
    let (a, p) = s
        .split_once(':')
        .ok_or_else(|| anyhow!("bad address {s}"))?;
    let port = u16::from_str_radix(p, 16)?;
    let mut bytes = Vec::with_capacity(16);
    for chunk in a.as_bytes().chunks(8) {
        let word = u32::from_str_radix(std::str::from_utf8(chunk)?, 16)?;
        bytes.extend_from_slice(&word.to_ne_bytes());
    }
    let ip = match bytes.len() {
        4 => IpAddr::V4(Ipv4Addr::new(bytes[0], bytes[1], bytes[2], bytes[3])),
        16 => {
            let arr: [u8; 16] = bytes.try_into().expect("16 bytes");
            IpAddr::V6(Ipv6Addr::from(arr))
        }
        n => bail!("address of {n} bytes: {s}"),
    };
    Ok(SocketAddr::new(ip, port))
}

fn parse_tcp_table(text: &str, out: &mut Vec<TcpEntry>) -> Result<()> {
    for line in text.lines().skip(1) {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() < 4 {
            continue;
        }
        // "tr:tm->when": timer 3 is the TIME-WAIT timer, which only timewait socks carry;
        // `when` is the time left, in hex clock ticks.
        let (timer, when) = f.get(5).and_then(|t| t.split_once(':')).unzip();
        let timewait = timer == Some("03");
        let timewait_left = match when {
            Some(ticks) if timewait => Some(Duration::from_millis(
                u64::from_str_radix(ticks, 16)? * 1000 / clock_ticks_per_second(),
            )),
            _ => None,
        };
        out.push(TcpEntry {
            local: parse_addr(f[1])?,
            remote: parse_addr(f[2])?,
            state: TcpState::from_code(u8::from_str_radix(f[3], 16)?),
            timewait,
            timewait_left,
            retransmits: f.get(6).map_or(Ok(0), |r| u32::from_str_radix(r, 16))?,
        });
    }
    Ok(())
}

/// Every TCP socket (IPv4 and IPv6, listeners and timewait socks included) in namespace `ns`.
pub fn tcp_sockets(ns: &str) -> Result<Vec<TcpEntry>> {
    let (v4, v6) = try_in_netns(ns, || {
        (
            std::fs::read_to_string(format!("{THREAD_NET}/tcp")),
            // tcp6 is absent when IPv6 is disabled; that is just "no IPv6 sockets".
            std::fs::read_to_string(format!("{THREAD_NET}/tcp6")).unwrap_or_default(),
        )
    })?;
    let mut out = Vec::new();
    parse_tcp_table(&v4.context("reading tcp")?, &mut out)?;
    parse_tcp_table(&v6, &mut out)?;
    Ok(out)
}

/// Number of sockets in state TIME_WAIT (06) in namespace `ns`, both families.
pub fn tw_count(ns: &str) -> Result<usize> {
    Ok(tcp_sockets(ns)?
        .iter()
        .filter(|e| e.state == TcpState::TimeWait)
        .count())
}

/// Timewait sockets (either substate, TIME_WAIT or FIN_WAIT2) in namespace `ns`.
pub fn timewait_count(ns: &str) -> Result<u64> {
    Ok(tcp_sockets(ns)?.iter().filter(|e| e.timewait).count() as u64)
}

/// The unit of times the kernel shows user space (USER_HZ).
fn clock_ticks_per_second() -> u64 {
    // SAFETY: sysconf reads a constant; no memory is passed.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    u64::try_from(hz).ok().filter(|&hz| hz > 0).unwrap_or(100)
}

/// The time left until the first of namespace `ns`'s timewait sockets expires, if it has any.
pub fn first_timewait_expiry(ns: &str) -> Result<Option<Duration>> {
    Ok(tcp_sockets(ns)?
        .iter()
        .filter_map(|e| e.timewait_left)
        .min())
}

/// Whether the kernel counts the runs of classic tracepoint and kprobe programs it skips
/// (`recursion_misses`, from 6.7), by its release number: the test's own check, apart from
/// twtrace's (which looks for the feature in BTF).
pub fn kernel_counts_classic_skips() -> bool {
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let mut parts = release.trim().split(['.', '-']);
    let mut num = || {
        parts
            .next()
            .and_then(|p| p.parse::<u32>().ok())
            .unwrap_or(0)
    };
    (num(), num()) >= (6, 7)
}

/// Whether TcpExtTW/TWKilled count a TIME-WAIT when it is created. Before 5.18 (commit
/// "tcp/dccp: no longer use twsk_net(tw) from tw_timer_handler()") they counted it when its
/// timer expired, remembered in `inet_timewait_sock.tw_kill`, a field that went with that
/// change. Read from BTF, so a backport is seen too.
pub fn tw_counted_at_creation() -> bool {
    !kernel_btf_has_name("tw_kill")
}

/// Whether the running kernel's BTF string table holds `name` (a type, member or enumerator
/// name), e.g. `SKB_DROP_REASON_TCP_RFC7323_PAWS`. The tests' own check, apart from twtrace's.
pub fn kernel_btf_has_name(name: &str) -> bool {
    static BTF: std::sync::OnceLock<Vec<u8>> = std::sync::OnceLock::new();
    let btf = BTF.get_or_init(|| std::fs::read("/sys/kernel/btf/vmlinux").expect("kernel BTF"));
    let needle = [b"\0", name.as_bytes(), b"\0"].concat();
    btf.windows(needle.len()).any(|w| w == needle)
}

/// Whether the running kernel's function `func` has a parameter named `param` (read with
/// btf-rs straight from /sys/kernel/btf/vmlinux, not through twtrace's own BTF layer).
pub fn kernel_func_has_param(func: &str, param: &str) -> bool {
    use btf_rs::{Btf, Type};
    let btf = Btf::from_file("/sys/kernel/btf/vmlinux").expect("kernel BTF");
    let funcs = btf.resolve_types_by_name(func).unwrap_or_default();
    funcs.iter().any(|t| {
        let Type::Func(f) = t else { return false };
        let Ok(Type::FuncProto(proto)) = btf.resolve_chained_type(f) else {
            return false;
        };
        (proto.parameters.iter()).any(|p| btf.resolve_name(p).is_ok_and(|n| n == param))
    })
}
