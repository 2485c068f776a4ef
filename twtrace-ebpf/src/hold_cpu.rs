//! Test support, never attached by twtrace itself: a program that keeps one thread's CPU
//! inside BPF for a while on every system call it makes. The end-to-end tests attach it to
//! `syscalls:sys_enter_getppid` and call getppid in a loop on a pinned CPU: interrupts there
//! then land inside a BPF program and run their softirqs (timer expiry) nested in it, which
//! has the kernel skip every classic tracepoint and kprobe program in them, as a busy host's
//! BPF users do now and then. The tests check that twtrace reports such skipped runs, and
//! that the function-probe and BTF-tracepoint routes (guarded per program) are immune.
//! The same loop as a kprobe on the syscall (`hold_cpu_kprobe`, where kernels have kprobes)
//! also holds the CPU's running kprobe: every kprobe hit in a softirq nested there is missed
//! by the kprobe itself, before any program.

use aya_ebpf::{
    helpers::bpf_get_current_pid_tgid,
    macros::{kprobe, tracepoint},
    programs::{ProbeContext, TracePointContext},
};

/// The thread (kernel task id) to hold; 0 holds none. Set by the test at load time.
#[unsafe(no_mangle)]
static HOLD_TID: u32 = 0;

/// Loop turns per run: a tenth of a millisecond natively (more under emulation), and few
/// enough for the verifier, which walks every turn of a bounded loop (a million instructions
/// at most). Plain loads, not helper calls: a clock read can be an emulated device's under
/// QEMU, whose cost would set the pace instead.
const SPINS: u32 = 100_000;

#[tracepoint]
pub fn hold_cpu(_ctx: TracePointContext) -> u32 {
    hold()
}

#[kprobe]
pub fn hold_cpu_kprobe(_ctx: ProbeContext) -> u32 {
    hold()
}

#[inline(always)]
fn hold() -> u32 {
    let want = unsafe { core::ptr::read_volatile(&HOLD_TID) };
    if want == 0 || bpf_get_current_pid_tgid() as u32 != want {
        return 0;
    }
    let mut sum = 0u32;
    for _ in 0..SPINS {
        // A volatile load: the loop cannot be folded away.
        sum = sum.wrapping_add(unsafe { core::ptr::read_volatile(&HOLD_TID) });
    }
    sum & 1
}
