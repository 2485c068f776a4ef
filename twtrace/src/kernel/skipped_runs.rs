//! Runs of twtrace's programs that the kernel skipped: losses no program of ours can count.
//!
//! The kernel runs at most one classic tracepoint or kprobe BPF program per CPU at a time
//! (`bpf_prog_active`), and a BTF-typed tracepoint or function-probe program at most once per
//! CPU (its own recursion guard). An interrupt that lands while a BPF program runs (ours or
//! anyone's: the kernel is shared) and runs softirqs on its way out, expiring timers or
//! receiving segments, has our programs skipped in there. On a busy host that is a run in
//! tens of thousands; all the TIME-WAITs of one timer tick expire in one such softirq.
//! Nothing of ours runs, so no loss counter of ours sees it; the kernel counts skipped runs
//! per program (`recursion_misses` in the program's fdinfo: function probes since 5.12,
//! BTF-typed tracepoints since 6.2, classic tracepoints and kprobes since 6.7; older kernels
//! skip without counting). Each skipped run may have carried an event, so they are losses.

use std::os::fd::{AsFd as _, AsRawFd as _, RawFd};

use aya::Ebpf;

use super::btf::KernelBtf;

/// Whether this kernel counts the skipped runs of classic tracepoint and kprobe programs
/// (`trace_call_bpf` does since 6.7). The same change gave kprobe links their `missed` count
/// in `bpf_link_info`, which BTF shows: found by feature, so a backport counts too.
pub fn counted_for_classic_and_kprobe(btf: &KernelBtf) -> bool {
    btf.has_member("bpf_link_info", "perf_event.kprobe.missed")
}

/// The loaded programs' skipped-run counters, and what was already reported of them.
pub struct SkippedRuns {
    /// (program name, its fd in this process, skipped runs already reported).
    programs: Vec<(&'static str, RawFd, u64)>,
}

impl SkippedRuns {
    /// The programs of `bpf` named in `attached` (the plan's, each once however many signals
    /// share it). Their fds stay valid while `bpf` lives, which must outlive this.
    pub fn new(bpf: &Ebpf, attached: impl IntoIterator<Item = &'static str>) -> Self {
        let mut programs: Vec<(&'static str, RawFd, u64)> = Vec::new();
        for name in attached {
            if programs.iter().any(|&(n, _, _)| n == name) {
                continue;
            }
            let Some(Ok(fd)) = bpf.program(name).map(|p| p.fd()) else {
                continue; // not loaded: never runs
            };
            let raw = fd.as_fd().as_raw_fd();
            programs.push((name, raw, recursion_misses(raw).unwrap_or(0)));
        }
        Self { programs }
    }

    /// Runs skipped since the last call, per program, for those with any.
    pub fn new_skips(&mut self) -> Vec<(&'static str, u64)> {
        let mut out = Vec::new();
        for (name, fd, seen) in &mut self.programs {
            if let Some(now) = recursion_misses(*fd)
                && now > *seen
            {
                out.push((*name, now - *seen));
                *seen = now;
            }
        }
        out
    }
}

/// The kernel's count of skipped runs of the program behind `fd`; None where the kernel
/// does not say (before 5.12) or the fd is gone.
fn recursion_misses(fd: RawFd) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/self/fdinfo/{fd}")).ok()?;
    parse_recursion_misses(&text)
}

fn parse_recursion_misses(fdinfo: &str) -> Option<u64> {
    fdinfo
        .lines()
        .find_map(|l| l.strip_prefix("recursion_misses:"))
        .and_then(|v| v.trim().parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// This host's kernel (6.7 or later on every machine the suite runs on directly) counts them.
    #[test]
    fn the_running_kernel_says_whether_it_counts_skips() {
        let btf = KernelBtf::from_sysfs().expect("kernel BTF");
        let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap();
        let mut parts = release.trim().split(['.', '-']);
        let major: u32 = parts.next().unwrap().parse().unwrap();
        let minor: u32 = parts.next().unwrap().parse().unwrap();
        assert_eq!(
            counted_for_classic_and_kprobe(&btf),
            (major, minor) >= (6, 7),
            "{release}"
        );
    }

    #[test]
    fn reads_the_count_from_a_program_fdinfo() {
        let fdinfo = "pos:\t0\nflags:\t02000002\nmnt_id:\t16\nino:\t2072\nlink_type:\tperf\n\
                      prog_type:\t5\nprog_jited:\t1\nprog_tag:\t4b5c0f2ce4f3c7a1\n\
                      memlock:\t4096\nprog_id:\t31844\nrun_time_ns:\t0\nrun_cnt:\t0\n\
                      recursion_misses:\t18\nverified_insns:\t212\n";
        assert_eq!(parse_recursion_misses(fdinfo), Some(18));
        // Before 5.12 the line is not there: unknown, not zero.
        assert_eq!(parse_recursion_misses("prog_type:\t5\nrun_cnt:\t0\n"), None);
    }
}
