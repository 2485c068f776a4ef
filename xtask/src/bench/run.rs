//! One run: one condition under wrk for the configured time, with every measurement taken
//! around the load window (the tracer's start-up and teardown are outside it).

use super::guard;
use super::load::{Load, WrkResult};
use super::netns::Pair;
use super::procfs::{self, ProgStats};
use super::tracer::{self, Condition, EventCounts, Setup, Tracer};
use anyhow::{Result, bail};
use std::time::Instant;

/// Everything a run needs that stays the same across runs.
pub struct Ctx<'a> {
    pub net: &'a Pair,
    pub load: Load,
    pub seconds: u64,
    pub setup: Setup,
    /// A process inside the server namespace (nginx), to read its counters.
    pub server_pid: u32,
    pub server_netns: u64,
    pub bpftrace_scripts: tracer::Scripts,
}

#[derive(serde::Serialize)]
pub struct RunRecord {
    pub round: u32,
    pub slot: usize,
    pub condition: Condition,
    pub wrk: WrkResult,
    /// Seconds between the counter reads around wrk.
    pub window_s: f64,
    /// TcpExtTW delta in the server namespace over the window (TIME-WAITs entered).
    pub tw: u64,
    pub tw_per_s: f64,
    pub tw_overflow: u64,
    /// Whole-machine CPU use over the window, % of all CPUs (other load shows up here).
    pub host_busy_pct: f64,
    /// CPU time the hypervisor gave to others while ours wanted it, % of all CPUs.
    pub steal_pct: f64,
    /// Busy CPU time of the whole machine (steal left out) per connection, in µs: workload,
    /// kernel and tracer together. Unlike conn/s it does not move with idle or stolen time.
    pub cpu_us_per_conn: f64,
    /// Other load just before the run (see `procfs::background_over`), % of all CPUs.
    pub background_busy_pct: Option<f64>,
    /// CPU used by other processes during the window, % of all CPUs: above --max-background
    /// the run counts as disturbed.
    pub others_pct: f64,
    /// Seconds spent waiting for that load to drop under --max-background.
    pub waited_s: f64,
    pub tracer: Option<TracerRecord>,
}

#[derive(serde::Serialize)]
pub struct TracerRecord {
    /// CPU the tracer used before the window, from its start until it went quiet with no
    /// load running: loading and attaching, and twtrace's one-time read of the TIME-WAITs
    /// already there. Not in `cpu_s` nor in the machine's CPU per connection.
    pub startup_cpu_s: f64,
    pub cpu_s: f64,
    /// % of one CPU over the window.
    pub cpu_pct: f64,
    pub bpf: Option<BpfRecord>,
    /// TcpExtTW delta from the tracer being attached to it having exited.
    pub tw_while_attached: u64,
    pub events: Option<EventCounts>,
    pub killed: bool,
    pub stderr: String,
}

#[derive(serde::Serialize)]
pub struct BpfRecord {
    pub programs: Vec<ProgRecord>,
    #[serde(flatten)]
    pub total: ProgStats,
    pub ns_per_run: f64,
    pub ns_per_tw: f64,
    /// % of one CPU over the window.
    pub cpu_pct: f64,
}

/// One program's share, to see which hook costs what.
#[derive(serde::Serialize)]
pub struct ProgRecord {
    pub id: u32,
    pub name: String,
    #[serde(flatten)]
    pub ran: ProgStats,
}

fn tw_counters(pid: u32) -> Result<(u64, u64)> {
    let c = procfs::tcp_ext(pid)?;
    let get = |k: &str| c.get(k).copied().unwrap_or(0);
    Ok((get("TW"), get("TCPTimeWaitOverflow")))
}

pub fn run_one(ctx: &Ctx, cond: Condition, round: u32, slot: usize) -> Result<RunRecord> {
    let mut tracer = Tracer::start(cond, &ctx.setup, &ctx.bpftrace_scripts)?;
    let (tw_attached, _) = tw_counters(ctx.server_pid)?;
    let snap0 = tracer.as_ref().map(Tracer::snapshot).transpose()?;

    let others0 = procfs::others_ticks();
    let host0 = procfs::host_cpu()?;
    let (tw0, ovf0) = tw_counters(ctx.server_pid)?;
    let t0 = Instant::now();
    let wrk = ctx.load.run(ctx.net, ctx.seconds)?;
    let (tw1, ovf1) = tw_counters(ctx.server_pid)?;
    let window_s = t0.elapsed().as_secs_f64();
    let host1 = procfs::host_cpu()?;
    let others1 = procfs::others_ticks();
    let snap1 = tracer.as_ref().map(Tracer::snapshot).transpose()?;
    let names = tracer
        .as_ref()
        .map(|t| procfs::bpf_prog_names(t.pid()))
        .unwrap_or_default();

    let tw = tw1 - tw0;
    let conns = wrk.requests.max(1) as f64;
    let mut record = RunRecord {
        round,
        slot,
        condition: cond,
        wrk,
        window_s,
        tw,
        tw_per_s: tw as f64 / window_s,
        tw_overflow: ovf1 - ovf0,
        host_busy_pct: 100.0 * (host1.busy - host0.busy) as f64
            / (host1.total - host0.total).max(1) as f64,
        steal_pct: 100.0 * (host1.steal - host0.steal) as f64
            / (host1.total - host0.total).max(1) as f64,
        cpu_us_per_conn: (host1.busy - host0.busy) as f64 * procfs::tick_s() * 1e6 / conns,
        background_busy_pct: None,
        others_pct: procfs::others_pct(&others0, &others1, window_s),
        waited_s: 0.0,
        tracer: None,
    };
    let (Some(mut t), Some(s0), Some(s1)) = (tracer.take(), snap0, snap1) else {
        return Ok(record);
    };
    if !t.alive()? {
        bail!(
            "{} died during the run: {}",
            cond.label(),
            t.stderr().trim()
        );
    }
    let ndjson = t.ndjson.take();
    let startup_cpu_s = t.startup_cpu_s;
    let stopped = t.stop()?;
    let (tw_end, _) = tw_counters(ctx.server_pid)?;
    if !stopped.status.success() && !stopped.killed {
        bail!(
            "{} failed on SIGINT ({}): {}",
            cond.label(),
            stopped.status,
            stopped.stderr.trim()
        );
    }
    let events = match &ndjson {
        Some(path) => {
            let counts = tracer::count_ndjson(path, ctx.server_netns)?;
            // Hundreds of MB over a full bench otherwise.
            let _ = std::fs::remove_file(path);
            Some(counts)
        }
        None => None,
    };
    let per_prog = procfs::bpf_delta(&s0.bpf, &s1.bpf);
    let d = per_prog
        .values()
        .fold(ProgStats::default(), |a, p| ProgStats {
            run_time_ns: a.run_time_ns + p.run_time_ns,
            run_cnt: a.run_cnt + p.run_cnt,
        });
    let bpf = ctx.setup.bpf_stats.then(|| BpfRecord {
        programs: per_prog
            .iter()
            .map(|(id, ran)| ProgRecord {
                id: *id,
                name: names.get(id).cloned().unwrap_or_default(),
                ran: *ran,
            })
            .collect(),
        total: d,
        ns_per_run: d.run_time_ns as f64 / d.run_cnt.max(1) as f64,
        ns_per_tw: d.run_time_ns as f64 / tw.max(1) as f64,
        cpu_pct: d.run_time_ns as f64 / (window_s * 1e7),
    });
    let cpu_s = s1.cpu_s - s0.cpu_s;
    record.tracer = Some(TracerRecord {
        startup_cpu_s,
        cpu_s,
        cpu_pct: 100.0 * cpu_s / window_s,
        bpf,
        tw_while_attached: tw_end - tw_attached,
        events,
        killed: stopped.killed,
        stderr: tail(&stopped.stderr, 2000),
    });
    guard::check()?;
    Ok(record)
}

fn tail(s: &str, max: usize) -> String {
    let s = s.trim();
    let mut start = s.len().saturating_sub(max);
    while !s.is_char_boundary(start) {
        start += 1;
    }
    s[start..].to_string()
}
