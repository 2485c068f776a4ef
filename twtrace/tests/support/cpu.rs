//! One CPU for a test's own kernel work: [`PinnedToCpu`] keeps the calling thread there, and
//! [`HeldCpu`] keeps that CPU inside a BPF program almost all the time, as a busy host's BPF
//! users sometimes do, so that the kernel skips the tracer's programs in softirqs run there.

use std::sync::{
    Arc,
    atomic::{AtomicBool, Ordering},
    mpsc,
};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, ensure};
use aya::{
    EbpfLoader,
    programs::{KProbe, TracePoint},
};

/// Pins the calling thread to one CPU (the first it may run on) while alive: kernel work its
/// syscalls start on veth (softirqs of both namespaces) then runs on that CPU too.
pub struct PinnedToCpu {
    old: libc::cpu_set_t,
    pub cpu: usize,
}

impl PinnedToCpu {
    pub fn first_allowed() -> Result<PinnedToCpu> {
        // SAFETY: cpu_set_t is plain data; sched_{get,set}affinity on this thread with its size.
        unsafe {
            let mut old: libc::cpu_set_t = std::mem::zeroed();
            let size = std::mem::size_of::<libc::cpu_set_t>();
            ensure!(
                libc::sched_getaffinity(0, size, &mut old) == 0,
                "sched_getaffinity"
            );
            let cpu = (0..libc::CPU_SETSIZE as usize)
                .find(|&c| libc::CPU_ISSET(c, &old))
                .context("no CPU allowed")?;
            pin_to(cpu)?;
            Ok(PinnedToCpu { old, cpu })
        }
    }
}

impl Drop for PinnedToCpu {
    fn drop(&mut self) {
        // SAFETY: restores the mask read in `first_allowed`.
        unsafe { libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &self.old) };
    }
}

fn pin_to(cpu: usize) -> Result<()> {
    // SAFETY: as above, a one-CPU mask for this thread.
    unsafe {
        let mut one: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut one);
        ensure!(
            libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &one) == 0,
            "sched_setaffinity to CPU {cpu}"
        );
    }
    Ok(())
}

/// A CPU kept inside BPF: a thread pinned there calls getppid(2) in a loop, and each call
/// spends a while (a tenth of a millisecond natively) in the eBPF object's test program
/// `hold_cpu`. A softirq run at the end of an interrupt there (a timer tick expiring
/// TIME-WAITs) runs nested in it: the kernel skips every classic tracepoint and kprobe
/// program in it (one `bpf_prog_active` per CPU), and counts the skips (6.7+).
/// Function-probe and BTF-tracepoint programs have a guard of their own and still run.
/// Released (program detached, thread ended) on drop, or after `limit` in any case.
pub struct HeldCpu {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<u64>>,
    /// Dropped after the thread ends (field order): detaches and unloads `hold_cpu`.
    _bpf: aya::Ebpf,
}

/// getppid(2)'s syscall wrapper function (x86-64 since 4.17, arm64 since 4.19).
#[cfg(target_arch = "x86_64")]
const SYS_GETPPID: &str = "__x64_sys_getppid";
#[cfg(target_arch = "aarch64")]
const SYS_GETPPID: &str = "__arm64_sys_getppid";

/// Where `hold_cpu` runs on each getppid(2) call.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Hold {
    /// A classic tracepoint program on `syscalls:sys_enter_getppid`.
    Tracepoint,
    /// A kprobe program on the syscall's function (kernels with kprobes): it also holds the
    /// CPU's running kprobe, so every kprobe hit nested there is missed by the kprobe itself
    /// before any program (counted on the kprobe's link, 6.7+).
    Kprobe,
}

impl Hold {
    /// Whether a kprobe can hold the CPU here: the kernel has kprobes (the kprobe PMU aya
    /// attaches through) and getppid(2)'s wrapper function by the name this build knows.
    pub fn kprobe_available() -> bool {
        std::path::Path::new("/sys/bus/event_source/devices/kprobe").exists()
            && twtrace::kernel::kallsyms::Kallsyms::load().is_ok_and(|k| k.contains(SYS_GETPPID))
    }
}

impl HeldCpu {
    pub fn start(cpu: usize, limit: Duration, how: Hold) -> Result<HeldCpu> {
        let (tid_tx, tid_rx) = mpsc::channel();
        let (go_tx, go_rx) = mpsc::channel::<()>();
        let stop = Arc::new(AtomicBool::new(false));
        let stopping = Arc::clone(&stop);
        let thread = thread::spawn(move || {
            let pinned = pin_to(cpu);
            // SAFETY: gettid(2) has no arguments and cannot fail.
            let tid = unsafe { libc::gettid() } as u32;
            let _ = tid_tx.send(pinned.map(|()| tid));
            // Until the program is attached; no go (the sender dropped) means no hold.
            if go_rx.recv().is_err() {
                return 0;
            }
            let deadline = Instant::now() + limit;
            let mut calls = 0u64;
            while !stopping.load(Ordering::Relaxed) && Instant::now() < deadline {
                // SAFETY: getppid(2) has no arguments and cannot fail.
                unsafe { libc::getppid() };
                calls += 1;
            }
            calls
        });
        let tid = tid_rx.recv().context("the holding thread died")??;
        let mut bpf = EbpfLoader::new()
            .override_global("HOLD_TID", &tid, true)
            // Only `hold_cpu` is loaded; the tracer's maps need not be of any size.
            .map_max_entries("EVENTS", 4096)
            .map_max_entries("LIVE", 1)
            .map_max_entries("TW_BY_FLOW", 1)
            .load(twtrace::loader::EBPF_OBJECT)
            .context("loading the eBPF object for hold_cpu")?;
        match how {
            Hold::Tracepoint => {
                let prog: &mut TracePoint = bpf
                    .program_mut("hold_cpu")
                    .context("no hold_cpu program in the eBPF object")?
                    .try_into()?;
                prog.load().context("loading hold_cpu")?;
                prog.attach("syscalls", "sys_enter_getppid")
                    .context("attaching hold_cpu to syscalls:sys_enter_getppid")?;
            }
            Hold::Kprobe => {
                let prog: &mut KProbe = bpf
                    .program_mut("hold_cpu_kprobe")
                    .context("no hold_cpu_kprobe program in the eBPF object")?
                    .try_into()?;
                prog.load().context("loading hold_cpu_kprobe")?;
                prog.attach(SYS_GETPPID, 0)
                    .with_context(|| format!("attaching hold_cpu_kprobe to {SYS_GETPPID}"))?;
            }
        }
        go_tx.send(()).context("the holding thread died")?;
        Ok(HeldCpu {
            stop,
            thread: Some(thread),
            _bpf: bpf,
        })
    }

    /// Releases the CPU; returns how many system calls held it (a sanity number).
    pub fn release(mut self) -> u64 {
        self.end()
    }

    fn end(&mut self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.take().map_or(0, |t| t.join().unwrap_or(0))
    }
}

impl Drop for HeldCpu {
    fn drop(&mut self) {
        self.end();
    }
}
