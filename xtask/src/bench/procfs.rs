//! Readings from /proc: a process's CPU time and BPF program statistics, a namespace's TCP
//! counters, and the whole machine's CPU use (to spot other load disturbing a run).

use anyhow::{Context as _, Result};
use std::collections::BTreeMap;

/// User + system CPU seconds of a process, all its threads included (also exited ones).
pub fn cpu_seconds(pid: u32) -> Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the command name, which is in parentheses and may contain spaces.
    let rest = stat
        .rsplit_once(')')
        .map(|(_, r)| r)
        .context("malformed stat")?;
    let f: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of stat(5), i.e. 11 and 12 after the name.
    let ticks: u64 = f.get(11).context("no utime")?.parse::<u64>()?
        + f.get(12).context("no stime")?.parse::<u64>()?;
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    Ok(ticks as f64 / hz)
}

/// Cumulative run time and run count of one BPF program.
#[derive(Clone, Copy, Default, serde::Serialize)]
pub struct ProgStats {
    pub run_time_ns: u64,
    pub run_cnt: u64,
}

/// Statistics of every BPF program a process holds open, by program id. The kernel keeps
/// run_time_ns/run_cnt only while kernel.bpf_stats_enabled=1; fdinfo shows them per fd.
pub fn bpf_progs(pid: u32) -> Result<BTreeMap<u32, ProgStats>> {
    let mut progs = BTreeMap::new();
    for fd in std::fs::read_dir(format!("/proc/{pid}/fd"))?.flatten() {
        let Ok(link) = std::fs::read_link(fd.path()) else {
            continue;
        };
        if link.to_string_lossy() != "anon_inode:bpf-prog" {
            continue;
        }
        let name = fd.file_name();
        let Ok(info) =
            std::fs::read_to_string(format!("/proc/{pid}/fdinfo/{}", name.to_string_lossy()))
        else {
            continue; // closed in between
        };
        let field = |key: &str| {
            info.lines()
                .find_map(|l| l.strip_prefix(key)?.strip_prefix(':'))
                .and_then(|v| v.trim().parse::<u64>().ok())
        };
        if let Some(id) = field("prog_id") {
            progs.insert(
                id as u32,
                ProgStats {
                    run_time_ns: field("run_time_ns").unwrap_or(0),
                    run_cnt: field("run_cnt").unwrap_or(0),
                },
            );
        }
    }
    Ok(progs)
}

/// Sum over programs of what ran between two snapshots (programs present in both).
pub fn bpf_delta(a: &BTreeMap<u32, ProgStats>, b: &BTreeMap<u32, ProgStats>) -> ProgStats {
    let mut d = ProgStats::default();
    for (id, end) in b {
        if let Some(start) = a.get(id) {
            d.run_time_ns += end.run_time_ns.saturating_sub(start.run_time_ns);
            d.run_cnt += end.run_cnt.saturating_sub(start.run_cnt);
        }
    }
    d
}

/// TcpExt counters of the network namespace `pid` lives in (/proc/PID/net is per namespace).
pub fn tcp_ext(pid: u32) -> Result<BTreeMap<String, u64>> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/net/netstat"))
        .with_context(|| format!("reading /proc/{pid}/net/netstat"))?;
    // Pairs of lines: "TcpExt: name name ..." then "TcpExt: value value ...".
    let lines: Vec<&str> = text.lines().filter(|l| l.starts_with("TcpExt:")).collect();
    let (names, values) = match lines.as_slice() {
        [n, v, ..] => (n, v),
        _ => anyhow::bail!("no TcpExt lines in /proc/{pid}/net/netstat"),
    };
    Ok(names
        .split_whitespace()
        .zip(values.split_whitespace())
        .skip(1)
        .filter_map(|(n, v)| Some((n.to_string(), v.parse().ok()?)))
        .collect())
}

/// Inode of the network namespace of `pid` (what twtrace prints as `netns`).
pub fn netns_inode(pid: u32) -> Result<u64> {
    use std::os::unix::fs::MetadataExt as _;
    Ok(std::fs::metadata(format!("/proc/{pid}/ns/net"))?.ino())
}

/// Machine-wide (busy, total) CPU time in ticks, from the first line of /proc/stat.
pub fn host_cpu() -> Result<(u64, u64)> {
    let stat = std::fs::read_to_string("/proc/stat")?;
    let cpu = stat.lines().next().context("empty /proc/stat")?;
    let v: Vec<u64> = cpu
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal (guest time is already in user).
    let total: u64 = v.iter().take(8).sum();
    let idle = v.get(3).copied().unwrap_or(0) + v.get(4).copied().unwrap_or(0);
    Ok((total - idle, total))
}
