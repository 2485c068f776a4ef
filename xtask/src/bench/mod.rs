//! `cargo xtask bench`: what twtrace costs a connection-churn workload. nginx in one network
//! namespace, wrk with `Connection: close` in another (so every request is a connection and a
//! server-side TIME-WAIT), and four conditions — no tracer, `twtrace`, `twtrace events --json`,
//! a bpftrace one-liner — interleaved in rounds with a rotated order, so slow drifts of the
//! machine hit every condition alike and each tracer is compared with its own round's baseline.
//!
//! Needs root, wrk, nginx and iproute2 (bpftrace optional). Namespaces, processes and
//! kernel.bpf_stats_enabled are restored on every exit path, Ctrl-C included.

mod guard;
mod load;
mod machine;
mod netns;
mod procfs;
mod report;
mod run;
mod server;
mod tracer;

use anyhow::{Context as _, Result, bail};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;
use tracer::Condition;

#[derive(clap::Args)]
pub struct BenchArgs {
    /// Rounds; each runs every condition once, in an order rotated per round.
    #[arg(long, default_value_t = 9, value_parser = clap::value_parser!(u32).range(1..=100))]
    rounds: u32,
    /// Seconds of load per run.
    #[arg(long, default_value_t = 15, value_parser = clap::value_parser!(u64).range(1..=600))]
    seconds: u64,
    /// wrk connections kept open.
    #[arg(long, default_value_t = 32, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    connections: u32,
    /// wrk threads.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=64))]
    threads: u32,
    /// Seconds of unrecorded load first (warms nginx and the TIME-WAIT hash table, and checks
    /// that TIME-WAITs land on the server).
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=600))]
    warmup: u64,
    /// Seconds of pause between runs, so one tracer's teardown never overlaps the next run.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u64).range(0..=60))]
    pause: u64,
    /// Conditions besides the baseline (always run), comma-separated.
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "table,events,bpftrace"
    )]
    with: Vec<Condition>,
    /// twtrace binary to measure; by default `cargo build --release -p twtrace` runs first.
    #[arg(long, value_name = "PATH")]
    twtrace: Option<PathBuf>,
    /// Leave kernel.bpf_stats_enabled alone: no BPF run-time columns, and no cost of the
    /// stats' two clock reads per program run.
    #[arg(long)]
    no_bpf_stats: bool,
}

pub fn run(args: &BenchArgs) -> Result<i32> {
    guard::install_signal_handlers();
    preflight()?;
    let twtrace = match &args.twtrace {
        Some(p) => p
            .canonicalize()
            .with_context(|| format!("{}", p.display()))?,
        None => build_twtrace()?,
    };
    let mut conds = vec![Condition::Baseline];
    conds.extend(args.with.iter().filter(|c| **c != Condition::Baseline));
    conds.dedup();
    let mut unavailable = BTreeMap::new();
    let script = if conds.contains(&Condition::Bpftrace) {
        bpftrace_check().unwrap_or_else(|e| {
            unavailable.insert(Condition::Bpftrace, format!("{e:#}"));
            String::new()
        })
    } else {
        String::new()
    };

    let machine = machine::describe();
    let started = machine::now_secs();
    // Declaration order is teardown order reversed: nginx, then namespaces, then the sysctl
    // and the scratch directory.
    let tmp = guard::TempDir::new()?;
    let _stats = if args.no_bpf_stats {
        None
    } else {
        Some(guard::Sysctl::set("kernel.bpf_stats_enabled", "1")?)
    };
    netns::remove_stale();
    let net = netns::Pair::create()?;
    let nginx = server::Nginx::start(&net, tmp.path())?;
    let ctx = run::Ctx {
        net: &net,
        load: load::Load {
            threads: args.threads,
            connections: args.connections,
        },
        seconds: args.seconds,
        setup: tracer::Setup {
            twtrace: twtrace.clone(),
            dir: tmp.path().to_path_buf(),
            bpf_stats: !args.no_bpf_stats,
        },
        server_pid: nginx.pid(),
        server_netns: procfs::netns_inode(nginx.pid())?,
        bpftrace_script: script.clone(),
    };
    warm_up(&ctx, args.warmup)?;

    let mut runs = Vec::new();
    let total = args.rounds as usize * conds.len();
    for round in 0..args.rounds {
        for slot in 0..conds.len() {
            let cond = conds[(slot + round as usize) % conds.len()];
            if unavailable.contains_key(&cond) {
                continue;
            }
            guard::sleep(Duration::from_secs(args.pause))?;
            eprint!(
                "bench: [{}/{total}] round {round} {:<9} ",
                runs.len() + 1,
                format!("{cond:?}")
            );
            match run::run_one(&ctx, cond, round, slot) {
                Ok(r) => {
                    eprintln!("{}", progress(&r));
                    runs.push(r);
                }
                // bpftrace is the comparison, not the subject: its failure is reported, not fatal.
                Err(e) if cond == Condition::Bpftrace && guard::check().is_ok() => {
                    eprintln!("unavailable: {e:#}");
                    unavailable.insert(cond, format!("{e:#}"));
                }
                Err(e) => return Err(e),
            }
        }
    }

    let summaries = report::summarize(&conds, &runs, &unavailable);
    let header = header(args, &machine, &ctx);
    let notes = notes(&summaries, &runs, &script);
    let md = report::markdown(&header, &summaries, &notes);
    let out_dir = workspace_root().join("target/bench");
    std::fs::create_dir_all(&out_dir)?;
    let stamp = machine::utc(started, false);
    let json = serde_json::json!({
        "machine": machine,
        "settings": {
            "rounds": args.rounds, "seconds": args.seconds, "warmup": args.warmup,
            "pause": args.pause, "wrk_args": ctx.load.args(args.seconds),
            "sysctls": netns::Pair::settings(), "bpf_stats": !args.no_bpf_stats,
            "pinning": "none", "twtrace": twtrace, "bpftrace_script": script,
            "conditions": conds,
        },
        "unavailable": unavailable,
        "summary": summaries,
        "runs": runs,
    });
    let path = out_dir.join(format!("{stamp}.json"));
    std::fs::write(&path, serde_json::to_string_pretty(&json)?)?;
    std::fs::write(out_dir.join(format!("{stamp}.md")), &md)?;
    println!("{md}");
    eprintln!("bench: raw data in {}", path.display());
    Ok(0)
}

fn progress(r: &run::RunRecord) -> String {
    let mut s = format!("{:>8.0} conn/s {:>8.0} TW/s", r.wrk.rps, r.tw_per_s);
    if let Some(t) = &r.tracer {
        s += &format!("  tracer {:.1} % CPU", t.cpu_pct);
        if let Some(b) = &t.bpf {
            s += &format!("  BPF {:.0} ns/run {:.0} ns/TW", b.ns_per_run, b.ns_per_tw);
        }
        if let Some(e) = &t.events {
            s += &format!(
                "  tw_enter {}/{} lost {}",
                e.tw_enter, t.tw_while_attached, e.lost
            );
        }
    }
    s + &format!("  host {:.0} % busy", r.host_busy_pct)
}

fn preflight() -> Result<()> {
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

/// The bpftrace script, if bpftrace exists and the kernel shows the handler's address.
fn bpftrace_check() -> Result<String> {
    Command::new("bpftrace")
        .arg("--version")
        .output()
        .context("bpftrace not found (apt-get install bpftrace)")?;
    tracer::bpftrace_script()
}

fn build_twtrace() -> Result<PathBuf> {
    let root = workspace_root();
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    eprintln!("bench: cargo build --release -p twtrace");
    let status = Command::new(cargo)
        .args(["build", "--release", "-p", "twtrace"])
        .current_dir(&root)
        .status()
        .context("running cargo")?;
    if !status.success() {
        bail!("building twtrace failed ({status})");
    }
    let target = std::env::var_os("CARGO_TARGET_DIR").map_or(root.join("target"), |t| root.join(t));
    Ok(target.join("release/twtrace"))
}

fn workspace_root() -> PathBuf {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest.parent().unwrap_or(manifest).to_path_buf()
}

/// Unrecorded load, then a check that the workload does what the bench assumes: one server
/// TIME-WAIT per connection.
fn warm_up(ctx: &run::Ctx, seconds: u64) -> Result<()> {
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

fn header(args: &BenchArgs, m: &machine::Machine, ctx: &run::Ctx) -> String {
    let tools = m.tools.join(", ");
    format!(
        "Machine: {} CPUs ({}), Linux {}, {}. Tools: {tools}.\n\n\
         Workload: nginx (1 worker, epoll, 3-byte body, access log off) in one network namespace, \
         `wrk {}` in another, joined by veth; every request is a new connection and a \
         server-side TIME-WAIT. {} rounds × {} s per condition, order rotated each round, \
         {} s warm-up, nothing pinned{}.",
        m.nproc,
        m.cpu_model,
        m.kernel,
        m.date_utc,
        ctx.load
            .args(args.seconds)
            .iter()
            .map(|a| shell_word(a))
            .collect::<Vec<_>>()
            .join(" "),
        args.rounds,
        args.seconds,
        args.warmup,
        if args.no_bpf_stats {
            ""
        } else {
            ", kernel.bpf_stats_enabled=1 during the runs"
        },
    )
}

fn notes(summaries: &[report::Summary], runs: &[run::RunRecord], script: &str) -> Vec<String> {
    let mut n = vec![
        "conn/s: wrk's Requests/sec (one connection per request). TIME-WAITs/s: TcpExtTW delta \
         in the server namespace. Ratios are paired: each run over the same round's baseline."
            .to_string(),
        "tracer CPU: user+system time of the tracer process over the load window, % of one CPU. \
         BPF: run_time_ns/run_cnt of the tracer's programs (fdinfo); ns/TIME-WAIT is all its \
         programs' run time divided by the TIME-WAITs created; BPF CPU is % of one CPU."
            .to_string(),
        format!("sysctls: {}.", netns::Pair::settings().join("; ")),
    ];
    for s in summaries {
        if let Some(e) = s.events_per_tw {
            n.push(format!(
                "`twtrace events`: tw_enter lines in the server namespace / TcpExtTW while attached: \
                 median {:.4} [{:.4}, {:.4}]; lost events over all runs: {}.",
                e.median,
                e.min,
                e.max,
                s.lost.unwrap_or(0)
            ));
        }
        if let Some(h) = s.host_busy_pct {
            n.push(format!(
                "{}: whole machine {:.0} % busy (median).",
                s.condition.label(),
                h.median
            ));
        }
    }
    let errors: u64 = runs
        .iter()
        .map(|r| r.wrk.socket_errors + r.wrk.non_2xx)
        .sum();
    let overflow: u64 = runs.iter().map(|r| r.tw_overflow).sum();
    n.push(format!(
        "wrk socket errors + non-2xx over all runs: {errors}; TIME-WAIT overflows: {overflow}."
    ));
    if !script.is_empty() {
        n.push(format!("bpftrace script: `{script}`"));
    }
    n
}

fn shell_word(s: &str) -> String {
    if s.contains(' ') {
        format!("'{s}'")
    } else {
        s.to_string()
    }
}
