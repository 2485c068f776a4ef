//! Checks around the runs: tools present, the workload behaving as assumed, and a quiet
//! machine before each run.

use super::{BenchArgs, procfs, run, tracer};
use anyhow::{Context as _, Result, bail};
use std::process::Command;
use std::time::Duration;

pub fn preflight() -> Result<()> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!("the bench needs root (network namespaces, BPF, sysctls)");
    }
    for tool in ["ip", "wrk", "nginx"] {
        if Command::new(tool).arg("-h").output().is_err() {
            bail!("`{tool}` not found: apt-get install iproute2 wrk nginx-light");
        }
    }
    Ok(())
}

/// The bpftrace scripts, if bpftrace exists and the kernel shows the handler's address.
pub fn bpftrace_check() -> Result<tracer::Scripts> {
    Command::new("bpftrace")
        .arg("--version")
        .output()
        .context("bpftrace not found (apt-get install bpftrace)")?;
    tracer::bpftrace_scripts()
}

/// Unrecorded load, then a check that the workload does what the bench assumes: one server
/// TIME-WAIT per connection.
pub fn warm_up(ctx: &run::Ctx, seconds: u64) -> Result<()> {
    let before = procfs::tcp_ext(ctx.server_pid)?;
    let w = ctx.load.run(ctx.net, seconds)?;
    let after = procfs::tcp_ext(ctx.server_pid)?;
    let d = |k: &str| after.get(k).unwrap_or(&0) - before.get(k).unwrap_or(&0);
    let per_conn = d("TW") as f64 / w.requests as f64;
    eprintln!(
        "bench: warm-up {:.0} conn/s, server TcpExtTW +{} ({per_conn:.3} per connection), overflow +{}, wrk socket errors {}",
        w.rps,
        d("TW"),
        d("TCPTimeWaitOverflow"),
        w.socket_errors
    );
    if !(0.9..=1.1).contains(&per_conn) {
        eprintln!("bench: warning: TIME-WAITs per connection is not ~1 on the server side");
    }
    Ok(())
}

/// Waits (bounded) for a quiet machine: this is a shared box, and a build or VM running next
/// to a run skews it more than any tracer. Returns the last background reading and the wait.
pub fn wait_quiet(args: &BenchArgs) -> Result<(f64, f64)> {
    let start = std::time::Instant::now();
    let limit = Duration::from_secs(args.quiet_timeout);
    let mut warned = false;
    loop {
        let bg = procfs::background_over(Duration::from_secs(1))?;
        let waited = start.elapsed();
        if bg <= args.max_background || waited >= limit {
            if warned && bg > args.max_background {
                eprint!("(still {bg:.0} % busy, going ahead) ");
            }
            return Ok((bg, waited.as_secs_f64()));
        }
        if !warned {
            eprint!("(waiting: other load {bg:.0} %) ");
            warned = true;
        }
    }
}
