//! The words around the numbers: the progress line, the report's header and notes.

use super::{BenchArgs, machine, netns, report, run};
use std::collections::BTreeMap;

pub fn progress(r: &run::RunRecord) -> String {
    let mut s = format!(
        "{:>8.0} conn/s {:>8.0} TW/s {:>5.1} µs CPU/conn steal {:.0} %",
        r.wrk.rps, r.tw_per_s, r.cpu_us_per_conn, r.steal_pct
    );
    if let Some(t) = &r.tracer {
        s += &format!(
            "  tracer {:.1} % CPU (start-up {:.0} ms before the window)",
            t.cpu_pct,
            t.startup_cpu_s * 1e3
        );
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
    s + &format!(
        "  (other load before {:.0} %, during {:.0} %)",
        r.background_busy_pct.unwrap_or(0.0),
        r.others_pct
    )
}

pub fn header(args: &BenchArgs, m: &machine::Machine, ctx: &run::Ctx, twtrace: &str) -> String {
    let tools = m.tools.join(", ");
    format!(
        "Machine: {} CPUs ({}), Linux {}, {}. Tools: {tools}. twtrace: {twtrace}.\n\n\
         Workload: nginx (1 worker, epoll, 3-byte body, access log off) in one network namespace, \
         `wrk {}` in another, joined by veth; every request is a new connection and a \
         server-side TIME-WAIT. {} rounds × {} s per condition, order rotated each round, \
         {} s warm-up, {}{}{}.",
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
        if args.pin {
            "nginx on CPU 0 and wrk on CPU 1 (`--pin`)"
        } else {
            "nothing pinned"
        },
        if args.no_bpf_stats {
            ""
        } else {
            ", kernel.bpf_stats_enabled=1 during the runs"
        },
        match &args.hooks {
            Some(f) => format!(", twtrace run with `--hooks {f}`"),
            None => String::new(),
        },
    )
}

pub fn notes(
    args: &BenchArgs,
    summaries: &[report::Summary],
    runs: &[run::RunRecord],
    scripts: &super::tracer::Scripts,
) -> Vec<String> {
    let mut n = vec![
        "conn/s: wrk's Requests/sec (one connection per request). TIME-WAITs/s: TcpExtTW delta \
         in the server namespace. Ratios are paired: each run over the same round's baseline."
            .to_string(),
        "tracer CPU: user+system time of the tracer process over the load window, % of one CPU. \
         BPF: run_time_ns/run_cnt of the tracer's programs (fdinfo); ns/TIME-WAIT is all its \
         programs' run time divided by the TIME-WAITs created; BPF CPU is % of one CPU."
            .to_string(),
        "CPU per connection: busy CPU time of the whole machine (idle and steal left out) over \
         the load window divided by the connections made, paired with the same round's \
         baseline: the work a tracer adds per connection, wherever it runs. It does not move \
         with idle time (the workload is partly latency-bound) or with time the hypervisor \
         gave to other guests (steal: % of all CPUs), which make conn/s noisy on shared VMs."
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
        if let Some(p) = report::program_breakdown(s.condition, runs) {
            n.push(p);
        }
    }
    let waited: f64 = runs.iter().map(|r| r.waited_s).sum();
    let during: Vec<f64> = runs.iter().map(|r| r.others_pct).collect();
    let disturbed = during.iter().filter(|&&p| p > args.max_background).count();
    let max = during.iter().copied().fold(0.0, f64::max);
    n.push(format!(
        "Other load (CPU of processes outside the bench, kernel threads excluded, % of all \
         CPUs): before each run the bench waited (at most {} s, {waited:.0} s in all) for it \
         to drop under {} %; during the runs it was above that in {disturbed} of {} runs \
         (max {max:.0} %). \"Undisturbed rounds\" leave out the rounds where the run or its \
         baseline was.",
        args.quiet_timeout,
        args.max_background,
        runs.len()
    ));
    let mut causes = BTreeMap::<String, u64>::new();
    for e in runs
        .iter()
        .filter_map(|r| r.tracer.as_ref()?.events.as_ref())
    {
        for (k, v) in &e.exit_causes {
            *causes.entry(k.clone()).or_default() += v;
        }
    }
    if !causes.is_empty() {
        let list: Vec<String> = causes.iter().map(|(k, v)| format!("{k} {v}")).collect();
        n.push(format!(
            "TIME-WAIT exits seen by `twtrace events` (all namespaces), by cause: {}.",
            list.join(", ")
        ));
    }
    let errors: u64 = runs
        .iter()
        .map(|r| r.wrk.socket_errors + r.wrk.non_2xx)
        .sum();
    let overflow: u64 = runs.iter().map(|r| r.tw_overflow).sum();
    n.push(format!(
        "wrk socket errors + non-2xx over all runs: {errors}; TIME-WAIT overflows: {overflow}."
    ));
    if !scripts.print.is_empty() {
        n.push(format!(
            "bpftrace scripts: one line per TIME-WAIT `{}`; counting `{}`",
            scripts.print, scripts.count
        ));
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
