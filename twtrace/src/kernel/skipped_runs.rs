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
//!
//! A kprobe has a guard of its own before that: a kprobe hit while another kprobe's handler
//! runs on that CPU (a softirq nested in one of our kprobe programs, say) is missed by the
//! kprobe itself and never reaches any program, so no program's counter sees it either. Its
//! link counts those (`missed` in `bpf_link_info`, 6.7+, with the kretprobe's own misses):
//! they are added to the program's skipped runs.

use std::os::fd::{AsFd as _, AsRawFd as _, RawFd};

use aya::{Ebpf, programs::Program};
use aya_obj::generated::{bpf_attr, bpf_cmd, bpf_link_info, bpf_perf_event_type};

use super::btf::KernelBtf;

/// Whether this kernel counts the skipped runs of classic tracepoint and kprobe programs
/// (`trace_call_bpf` does since 6.7). The same change gave kprobe links their `missed` count
/// in `bpf_link_info`, which BTF shows: found by feature, so a backport counts too.
pub fn counted_for_classic_and_kprobe(btf: &KernelBtf) -> bool {
    btf.has_member("bpf_link_info", "perf_event.kprobe.missed")
}

/// The loaded programs' skipped-run counters, and what was already reported of them.
pub struct SkippedRuns {
    programs: Vec<Counted>,
}

struct Counted {
    name: &'static str,
    /// The program's fd in this process.
    fd: RawFd,
    /// Its kprobe links' fds in this process (none for other program types).
    kprobe_links: Vec<RawFd>,
    /// Skipped runs already reported (none at first).
    seen: u64,
}

impl Counted {
    /// The kernel's count, or None where it keeps none (or the fds are gone).
    fn skipped(&self) -> Option<u64> {
        let links = self
            .kprobe_links
            .iter()
            .filter_map(|&l| kprobe_link_missed(l));
        recursion_misses(self.fd)
            .into_iter()
            .chain(links)
            .reduce(|a, b| a + b)
    }
}

impl SkippedRuns {
    /// The programs of `bpf` named in `attached` (the plan's, each once however many signals
    /// share it), with their kprobe links' counts where the kernel keeps them
    /// (`kprobe_misses_counted`: [`counted_for_classic_and_kprobe`]; before, a link reads 0).
    /// Their fds (and their links') stay valid while `bpf` lives, which must outlive this.
    pub fn new(
        bpf: &Ebpf,
        attached: impl IntoIterator<Item = &'static str>,
        kprobe_misses_counted: bool,
    ) -> Self {
        let mut programs: Vec<Counted> = Vec::new();
        let mut kprobes = Vec::new();
        for name in attached {
            if programs.iter().any(|c| c.name == name) {
                continue;
            }
            let Some(program) = bpf.program(name) else {
                continue; // not loaded: never runs
            };
            let Ok(fd) = program.fd() else {
                continue;
            };
            let fd = fd.as_fd().as_raw_fd();
            if let (Program::KProbe(_), Ok(info)) = (program, program.info()) {
                kprobes.push((programs.len(), info.id()));
            }
            programs.push(Counted {
                name,
                fd,
                kprobe_links: Vec::new(),
                seen: 0,
            });
        }
        if !kprobes.is_empty() && kprobe_misses_counted {
            for (link, its_prog_id) in kprobe_links_here() {
                if let Some(&(i, _)) = kprobes.iter().find(|&&(_, id)| id == its_prog_id) {
                    programs[i].kprobe_links.push(link);
                }
            }
        }
        // Nothing is taken as already reported: the programs and their links are this
        // process's own, so every run skipped since they were attached (before "tracing" was
        // announced, or while user space was still starting) is a loss to report.
        Self { programs }
    }

    /// Runs skipped since the last call, per program, for those with any.
    pub fn new_skips(&mut self) -> Vec<(&'static str, u64)> {
        let mut out = Vec::new();
        for c in &mut self.programs {
            if let Some(now) = c.skipped()
                && now > c.seen
            {
                out.push((c.name, now - c.seen));
                c.seen = now;
            }
        }
        out
    }
}

/// This process's BPF links whose kernel object is a kprobe or kretprobe, as (link fd, id of
/// the program on it). aya keeps the link fds of the programs it attached but does not hand
/// them out; they are found among this process's open fds, by their fdinfo.
fn kprobe_links_here() -> Vec<(RawFd, u32)> {
    let Ok(dir) = std::fs::read_dir("/proc/self/fd") else {
        return Vec::new();
    };
    let fds = dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<RawFd>().ok());
    fds.filter_map(|fd| {
        let text = std::fs::read_to_string(format!("/proc/self/fdinfo/{fd}")).ok()?;
        let prog = parse_link_prog_id(&text)?;
        kprobe_link_missed(fd)?; // not a kprobe's link (or the kernel keeps no count)
        Some((fd, prog))
    })
    .collect()
}

/// A link's fdinfo names its type and its program; a program's has no `link_type`.
fn parse_link_prog_id(fdinfo: &str) -> Option<u32> {
    fdinfo
        .lines()
        .any(|l| l.starts_with("link_type:"))
        .then_some(())?;
    field(fdinfo, "prog_id:")
}

fn field<T: std::str::FromStr>(fdinfo: &str, key: &str) -> Option<T> {
    fdinfo
        .lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|v| v.trim().parse().ok())
}

/// The hits the kprobe behind link `fd` missed (its own and, for a kretprobe, its return
/// probe's); None if `fd` is not a kprobe's perf link or the kernel keeps no such count
/// (before 6.7: zero there, so those kernels are told apart by BTF, see above).
fn kprobe_link_missed(fd: RawFd) -> Option<u64> {
    // SAFETY: both are plain C data, valid zeroed (a zeroed info asks for no function name).
    let mut info: bpf_link_info = unsafe { std::mem::zeroed() };
    let mut attr: bpf_attr = unsafe { std::mem::zeroed() };
    attr.info.bpf_fd = u32::try_from(fd).ok()?;
    attr.info.info_len = std::mem::size_of::<bpf_link_info>() as u32;
    attr.info.info = std::ptr::from_mut(&mut info) as u64;
    // SAFETY: BPF_OBJ_GET_INFO_BY_FD writes at most info_len bytes to `info`, which lives
    // across the call, and writes back the length it filled into `attr` (passed mutable);
    // the kernel requires the rest of `attr` past its own size to be zero, which it is.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            bpf_cmd::BPF_OBJ_GET_INFO_BY_FD as libc::c_long,
            std::ptr::from_mut(&mut attr),
            std::mem::size_of::<bpf_attr>(),
        )
    };
    if rc != 0 {
        return None;
    }
    // SAFETY: the union's members are plain integers, valid whatever the bytes; they are a
    // kprobe's count only for a kprobe perf link, checked before the count is used.
    unsafe {
        let perf = info.__bindgen_anon_1.perf_event;
        let kprobe = [
            bpf_perf_event_type::BPF_PERF_EVENT_KPROBE as u32,
            bpf_perf_event_type::BPF_PERF_EVENT_KRETPROBE as u32,
        ];
        let is_perf =
            info.type_ == aya_obj::generated::bpf_link_type::BPF_LINK_TYPE_PERF_EVENT as u32;
        if !(is_perf && kprobe.contains(&perf.type_)) {
            return None;
        }
        Some(perf.__bindgen_anon_1.kprobe.missed)
    }
}

/// The kernel's count of skipped runs of the program behind `fd`; None where the kernel
/// does not say (before 5.12) or the fd is gone.
fn recursion_misses(fd: RawFd) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/self/fdinfo/{fd}")).ok()?;
    parse_recursion_misses(&text)
}

fn parse_recursion_misses(fdinfo: &str) -> Option<u64> {
    field(fdinfo, "recursion_misses:")
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
        let fdinfo = "pos:\t0\nflags:\t02000002\nmnt_id:\t16\nino:\t2072\n\
                      prog_type:\t5\nprog_jited:\t1\nprog_tag:\t4b5c0f2ce4f3c7a1\n\
                      memlock:\t4096\nprog_id:\t31844\nrun_time_ns:\t0\nrun_cnt:\t0\n\
                      recursion_misses:\t18\nverified_insns:\t212\n";
        assert_eq!(parse_recursion_misses(fdinfo), Some(18));
        // Before 5.12 the line is not there: unknown, not zero.
        assert_eq!(parse_recursion_misses("prog_type:\t5\nrun_cnt:\t0\n"), None);
    }

    #[test]
    fn tells_a_link_fdinfo_from_a_program_fdinfo() {
        let link = "pos:\t0\nflags:\t02000000\nmnt_id:\t16\nino:\t2072\nlink_type:\tperf\n\
                    link_id:\t77\nprog_tag:\t4b5c0f2ce4f3c7a1\nprog_id:\t31844\n";
        assert_eq!(parse_link_prog_id(link), Some(31844));
        let program = "prog_type:\t2\nprog_jited:\t1\nprog_id:\t31844\nrun_cnt:\t0\n";
        assert_eq!(parse_link_prog_id(program), None);
    }

    /// Not a link (/dev/null, or no fd at all): no kprobe count, rather than zero.
    #[test]
    fn only_a_kprobe_link_has_a_missed_count() {
        let null = std::fs::File::open("/dev/null").unwrap();
        assert_eq!(kprobe_link_missed(null.as_raw_fd()), None);
        assert_eq!(kprobe_link_missed(-1), None);
    }
}
