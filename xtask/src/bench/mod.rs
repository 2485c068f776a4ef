//! `cargo xtask bench`: what twtrace costs a connection-churn workload. nginx in one network
//! namespace, wrk with `Connection: close` in another (so every request is a connection and a
//! server-side TIME-WAIT), and up to ten conditions — no tracer, `twtrace`, `twtrace` without
//! the PAWS and SYN signals (their cost is the difference), `twtrace` without the state-change
//! signals, `twtrace` with only the PAWS and SYN signals, `twtrace events --json`, `twtrace
//! --hooks-only` (what the hooks alone cost), the same for TIME-WAIT entry and exit only, a
//! bpftrace one-liner, bpftrace counting in maps
//! — interleaved in rounds with a rotated order, so slow drifts of the machine hit every
//! condition alike and each tracer is compared with its own round's baseline. Two measures per
//! pair: connections/s, and machine CPU per connection (which idle and stolen time on shared
//! VMs do not move).
//!
//! Needs root, wrk, nginx and iproute2 (bpftrace optional). Namespaces, processes and
//! kernel.bpf_stats_enabled are restored on every exit path, Ctrl-C included.

pub(crate) mod binary;
mod checks;
mod guard;
mod load;
mod machine;
mod netns;
mod procfs;
mod report;
mod run;
mod server;
mod text;
mod tracer;

use anyhow::{Context as _, Result};
use std::collections::BTreeMap;
use std::path::PathBuf;
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
        default_value = "table,table-no-paws,table-no-state,events,hooks-only,bpftrace,bpftrace-count"
    )]
    with: Vec<Condition>,
    /// Other load (% of all CPUs used by processes outside the bench) under which the machine
    /// counts as quiet: each run waits for it (over 1 s samples), and runs that had more are
    /// flagged as disturbed.
    #[arg(long, default_value_t = 5.0, value_name = "PCT")]
    max_background: f64,
    /// Longest wait for a quiet machine before a run; the run then goes ahead anyway.
    #[arg(long, default_value_t = 120, value_parser = clap::value_parser!(u64).range(0..=3600))]
    quiet_timeout: u64,
    /// twtrace binary to measure; by default `cargo build --release -p twtrace` runs first.
    #[arg(long, value_name = "PATH")]
    twtrace: Option<PathBuf>,
    /// Bind nginx to CPU 0 and wrk to CPU 1 (the tracer stays free to run anywhere): less
    /// run-to-run variance from where the scheduler happens to put the two.
    #[arg(long)]
    pin: bool,
    /// Leave kernel.bpf_stats_enabled alone: no BPF run-time columns, and no cost of the
    /// stats' two clock reads per program run.
    #[arg(long)]
    no_bpf_stats: bool,
    /// Hook family for every twtrace condition (`--hooks` of twtrace: auto, fentry, kprobe,
    /// tp_btf, tracepoint): compares routes on one kernel, e.g. in a VM where function probes
    /// load.
    #[arg(long, value_name = "FAMILY")]
    hooks: Option<String>,
}

pub fn run(args: &BenchArgs) -> Result<i32> {
    guard::install_signal_handlers();
    checks::preflight()?;
    let twtrace = match &args.twtrace {
        Some(p) => p
            .canonicalize()
            .with_context(|| format!("{}", p.display()))?,
        None => binary::build_twtrace()?,
    };
    let mut conds = vec![Condition::Baseline];
    for c in &args.with {
        if !conds.contains(c) {
            conds.push(*c);
        }
    }
    let mut unavailable = BTreeMap::new();
    let bpftrace = [Condition::Bpftrace, Condition::BpftraceCount];
    let scripts = if conds.iter().any(|c| bpftrace.contains(c)) {
        checks::bpftrace_check().unwrap_or_else(|e| {
            for c in bpftrace {
                unavailable.insert(c, format!("{e:#}"));
            }
            tracer::Scripts::default()
        })
    } else {
        tracer::Scripts::default()
    };

    let machine = machine::describe();
    let started = machine::now_secs();
    // Declaration order is teardown order reversed: nginx, then namespaces, then the sysctl
    // and the scratch directory.
    let tmp = guard::TempDir::new()?;
    // A private copy: other builds may replace target/release/twtrace while the bench runs,
    // and every run must measure the same binary.
    let measured = tmp.path().join("twtrace");
    std::fs::copy(&twtrace, &measured).with_context(|| format!("copying {}", twtrace.display()))?;
    let binary = binary::binary_facts(&twtrace)?;
    // Now, not at the end: others may commit while the bench runs.
    let git = binary::git_revision();
    let _stats = if args.no_bpf_stats {
        None
    } else {
        Some(guard::Sysctl::set("kernel.bpf_stats_enabled", "1")?)
    };
    netns::remove_stale();
    let net = netns::Pair::create()?;
    let nginx = server::Nginx::start(&net, tmp.path(), args.pin.then_some(0))?;
    let ctx = run::Ctx {
        net: &net,
        load: load::Load {
            threads: args.threads,
            connections: args.connections,
            cpu: args.pin.then_some(1),
        },
        seconds: args.seconds,
        setup: tracer::Setup {
            twtrace: measured,
            dir: tmp.path().to_path_buf(),
            bpf_stats: !args.no_bpf_stats,
            hooks: args.hooks.clone(),
        },
        server_pid: nginx.pid(),
        server_netns: procfs::netns_inode(nginx.pid())?,
        bpftrace_scripts: scripts.clone(),
    };
    checks::warm_up(&ctx, args.warmup)?;

    let mut runs = Vec::new();
    let total = args.rounds as usize * conds.len();
    for round in 0..args.rounds {
        for slot in 0..conds.len() {
            let cond = conds[(slot + round as usize) % conds.len()];
            if unavailable.contains_key(&cond) {
                continue;
            }
            guard::sleep(Duration::from_secs(args.pause))?;
            let (background, waited) = checks::wait_quiet(args)?;
            eprint!(
                "bench: [{}/{total}] round {round} {:<9} ",
                runs.len() + 1,
                format!("{cond:?}")
            );
            match run::run_one(&ctx, cond, round, slot) {
                Ok(mut r) => {
                    r.background_busy_pct = Some(background);
                    r.waited_s = waited;
                    eprintln!("{}", text::progress(&r));
                    runs.push(r);
                }
                // bpftrace is the comparison, not the subject: its failure is reported, not fatal.
                Err(e) if bpftrace.contains(&cond) && guard::check().is_ok() => {
                    eprintln!("unavailable: {e:#}");
                    unavailable.insert(cond, format!("{e:#}"));
                }
                Err(e) => return Err(e),
            }
        }
    }

    let summaries = report::summarize(&conds, &runs, &unavailable, args.max_background);
    let header = text::header(args, &machine, &ctx, &format!("{binary}, tree {git}"));
    let notes = text::notes(args, &summaries, &runs, &scripts);
    let md = report::markdown(&header, &summaries, &notes);
    let out_dir = binary::workspace_root().join("target/bench");
    std::fs::create_dir_all(&out_dir)?;
    let stamp = machine::utc(started, false);
    let json = serde_json::json!({
        "machine": machine,
        "settings": {
            "rounds": args.rounds, "seconds": args.seconds, "warmup": args.warmup,
            "pause": args.pause, "max_background": args.max_background,
            "quiet_timeout": args.quiet_timeout, "wrk_args": ctx.load.args(args.seconds),
            "sysctls": netns::Pair::settings(), "bpf_stats": !args.no_bpf_stats,
            "pinning": if args.pin { "nginx on CPU 0, wrk on CPU 1" } else { "none" },
            "twtrace": binary, "hooks": args.hooks, "bpftrace_scripts": scripts,
            "git": git,
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
