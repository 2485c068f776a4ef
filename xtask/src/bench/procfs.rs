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

/// What each program ran between two snapshots (programs present in both), by id.
pub fn bpf_delta(
    a: &BTreeMap<u32, ProgStats>,
    b: &BTreeMap<u32, ProgStats>,
) -> BTreeMap<u32, ProgStats> {
    b.iter()
        .filter_map(|(id, end)| {
            let start = a.get(id)?;
            Some((
                *id,
                ProgStats {
                    run_time_ns: end.run_time_ns.saturating_sub(start.run_time_ns),
                    run_cnt: end.run_cnt.saturating_sub(start.run_cnt),
                },
            ))
        })
        .collect()
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

/// Machine-wide CPU time in ticks, from the first line of /proc/stat.
#[derive(Clone, Copy)]
pub struct HostCpu {
    /// Busy on our behalf or anyone's: all but idle, iowait and steal.
    pub busy: u64,
    pub softirq: u64,
    /// Time the hypervisor ran something else while a CPU of ours wanted to run.
    pub steal: u64,
    pub total: u64,
}

pub fn host_cpu() -> Result<HostCpu> {
    let stat = std::fs::read_to_string("/proc/stat")?;
    let cpu = stat.lines().next().context("empty /proc/stat")?;
    let v: Vec<u64> = cpu
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    let at = |i: usize| v.get(i).copied().unwrap_or(0);
    // user nice system idle iowait irq softirq steal (guest time is already in user).
    let total: u64 = v.iter().take(8).sum();
    Ok(HostCpu {
        busy: total - at(3) - at(4) - at(7),
        softirq: at(6),
        steal: at(7),
        total,
    })
}

/// Seconds per /proc/stat tick.
pub fn tick_s() -> f64 {
    // SAFETY: sysconf has no preconditions.
    1.0 / unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64
}

/// Names of the BPF programs `pid` holds, by program id. fdinfo has no name, so each fd is
/// duplicated with pidfd_getfd and asked with BPF_OBJ_GET_INFO_BY_FD. Best effort: any
/// failure leaves a program unnamed (the report then shows its id).
pub fn bpf_prog_names(pid: u32) -> BTreeMap<u32, String> {
    use std::os::fd::{FromRawFd as _, OwnedFd};
    let mut names = BTreeMap::new();
    // SAFETY: plain syscalls on integers; a returned fd is owned by the OwnedFd made from it.
    let pidfd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::c_int, 0) };
    if pidfd < 0 {
        return names;
    }
    // SAFETY: pidfd_open returned a new fd we own.
    let pidfd = unsafe { OwnedFd::from_raw_fd(pidfd as i32) };
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return names;
    };
    for fd in dir.flatten() {
        let is_prog = std::fs::read_link(fd.path())
            .is_ok_and(|l| l.to_string_lossy() == "anon_inode:bpf-prog");
        let Some(target) = fd.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
            continue;
        };
        if !is_prog {
            continue;
        }
        use std::os::fd::AsRawFd as _;
        // SAFETY: as above.
        let dup = unsafe { libc::syscall(libc::SYS_pidfd_getfd, pidfd.as_raw_fd(), target, 0) };
        if dup < 0 {
            continue;
        }
        // SAFETY: pidfd_getfd returned a new fd we own.
        let dup = unsafe { OwnedFd::from_raw_fd(dup as i32) };
        if let Some((id, name)) = prog_info(dup.as_raw_fd()) {
            names.insert(id, name);
        }
    }
    names
}

/// (id, name) of a BPF program fd: struct bpf_prog_info has the id at byte 4 and the
/// 16-byte name at byte 64 (stable uapi layout).
fn prog_info(fd: i32) -> Option<(u32, String)> {
    const BPF_OBJ_GET_INFO_BY_FD: libc::c_long = 15;
    let mut info = [0u8; 128];
    // union bpf_attr's info member: bpf_fd u32, info_len u32, info u64.
    #[repr(C)]
    struct InfoAttr {
        bpf_fd: u32,
        info_len: u32,
        info: u64,
    }
    let attr = InfoAttr {
        bpf_fd: fd as u32,
        info_len: info.len() as u32,
        info: info.as_mut_ptr() as u64,
    };
    // SAFETY: the kernel writes at most info_len bytes into `info`, which outlives the call.
    let r = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_OBJ_GET_INFO_BY_FD,
            &attr as *const InfoAttr,
            std::mem::size_of::<InfoAttr>(),
        )
    };
    if r != 0 {
        return None;
    }
    let id = u32::from_ne_bytes(info[4..8].try_into().ok()?);
    let name = &info[64..80];
    let end = name.iter().position(|&b| b == 0).unwrap_or(name.len());
    Some((id, String::from_utf8_lossy(&name[..end]).into_owned()))
}

/// Machine-wide CPU use over `d` outside softirqs, % of all CPUs. Measured while none of our
/// processes run, it is other load that would disturb the next run; softirq time is left out
/// because it is our own earlier TIME-WAITs expiring (for 60 s after each run).
pub fn background_over(d: std::time::Duration) -> Result<f64> {
    let a = host_cpu()?;
    super::guard::sleep(d)?;
    let b = host_cpu()?;
    let busy = (b.busy - b.softirq) as f64 - (a.busy - a.softirq) as f64;
    Ok(100.0 * busy / (b.total - a.total).max(1) as f64)
}

/// CPU ticks of every user process that is neither ours (a descendant of this process) nor a
/// kernel thread (those do our network work: ksoftirqd, kworkers), by pid.
pub fn others_ticks() -> BTreeMap<u32, u64> {
    let me = std::process::id();
    let mut parent = BTreeMap::new();
    let mut ticks = BTreeMap::new();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return ticks;
    };
    for e in dir.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue; // gone
        };
        let Some((_, rest)) = stat.rsplit_once(')') else {
            continue;
        };
        let f: Vec<&str> = rest.split_whitespace().collect();
        let num = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
        let ppid = num(1) as u32;
        if pid == 2 || ppid == 2 {
            continue;
        }
        parent.insert(pid, ppid);
        ticks.insert(pid, num(11) + num(12));
    }
    // Bounded walk up the parent chain (pid 1 or an unknown parent ends it).
    let ours = |mut p: u32| {
        for _ in 0..64 {
            if p == me {
                return true;
            }
            match parent.get(&p) {
                Some(&pp) if pp > 1 => p = pp,
                _ => return false,
            }
        }
        false
    };
    ticks.retain(|&pid, _| !ours(pid));
    ticks
}

/// CPU used by other processes between two [`others_ticks`] readings over `secs`, % of all
/// CPUs. Processes that started and ended in between are missed (short compiler runs).
pub fn others_pct(a: &BTreeMap<u32, u64>, b: &BTreeMap<u32, u64>, secs: f64) -> f64 {
    let delta: u64 = b
        .iter()
        .map(|(pid, t)| t.saturating_sub(a.get(pid).copied().unwrap_or(0)))
        .sum();
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
    100.0 * delta as f64 / hz / secs.max(1e-3) / cpus
}
