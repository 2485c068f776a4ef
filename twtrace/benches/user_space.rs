//! What twtrace's user space costs per SYN and per connection under connection churn, the
//! bench's workload (`cargo xtask bench` measures the whole tracer, kernel included; this
//! measures the user-space steps alone, repeatably): `cargo bench -p twtrace`.
//!
//! - `clock_estimator/*`: one SYN into the per-IP clock estimator, a new source port each
//!   (66 µs apart, one 1000 Hz clock), with per-4-tuple offsets (Linux since early 2026:
//!   every SYN a new line, tested against every cluster) and with one per-host offset (every
//!   SYN a new line joining the one cluster);
//! - `clock_estimator/replay`: SYNs captured from a real run, when `TWTRACE_SYN_REPLAY`
//!   names a file of `ts_ns,tsval,sport` lines (e.g. from `twtrace events --json` during
//!   `cargo xtask bench`): the synthetic streams miss what a kernel's offsets look like;
//! - `pipeline/connection`: the live table's path for one connection as the tp_btf route
//!   sends it (the exit of the TIME-WAIT its SYN replaced, carrying that SYN, then the new
//!   connection's TIME-WAIT entry): pairing, joins, decoding, filter and aggregate.
//!
//! The estimator and the tables are filled before measuring (one pass of the port cycle, or
//! of the capture), so every iteration pays what a long run pays (full line table,
//! evictions). Each iteration also builds its input (a SYN from a few integer operations; a
//! connection's records, from `pipeline::fixtures`: three 96-byte events, two of them merged
//! into one as the tp_btf route sends them), a few nanoseconds of the time reported.

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_group, criterion_main};
use twtrace::{
    aggregate::{
        Aggregate,
        clocks::{ClockConfig, ClockEstimator},
    },
    filter::Filter,
    pipeline::{
        Pipeline,
        fixtures::{PORTS, per_tuple, tp_btf_connection},
    },
    signals::DecodeCtx,
};

const T0_NS: u64 = 1_000_000_000_000;
const GAP_NS: u64 = 66_000;

/// SYN `i` of the churn: (arrival ns, TSval, source port), its clock's offset by `offset`.
fn churn_syn(i: u64, offset: impl Fn(u16) -> u32) -> (u64, u32, u16) {
    let port = 1024 + (i % PORTS) as u16;
    let t = T0_NS + i * GAP_NS;
    (t, offset(port).wrapping_add((t / 1_000_000) as u32), port)
}

fn per_host(_port: u16) -> u32 {
    12_345
}

/// Feeds `iters` SYNs after a warm-up of one port cycle; returns the time they took.
fn estimator_run(iters: u64, offset: fn(u16) -> u32) -> Duration {
    let mut e = ClockEstimator::new(ClockConfig::default());
    for i in 0..PORTS {
        let (t, tsval, port) = churn_syn(i, offset);
        e.observe_flow(t, tsval, port, 8080);
    }
    let start = Instant::now();
    for i in PORTS..PORTS + iters {
        let (t, tsval, port) = churn_syn(i, offset);
        e.observe_flow(t, tsval, port, 8080);
    }
    let took = start.elapsed();
    black_box(e.estimate());
    took
}

/// `ts_ns,tsval,sport` lines of the file `TWTRACE_SYN_REPLAY` names, if it is set.
fn replay_syns() -> Option<Vec<(u64, u32, u16)>> {
    let path = std::env::var("TWTRACE_SYN_REPLAY").ok()?;
    let text =
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("TWTRACE_SYN_REPLAY={path}: {e}"));
    let syns: Vec<(u64, u32, u16)> = text
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let f: Vec<&str> = l.split(',').map(str::trim).collect();
            let bad = || panic!("{path}: `{l}` is not `ts_ns,tsval,sport`");
            if f.len() != 3 {
                bad();
            }
            match (f[0].parse(), f[1].parse(), f[2].parse()) {
                (Ok(t), Ok(tsval), Ok(port)) => (t, tsval, port),
                _ => bad(),
            }
        })
        .collect();
    assert!(!syns.is_empty(), "{path}: no SYNs");
    Some(syns)
}

fn clock_estimator(c: &mut Criterion) {
    let mut g = c.benchmark_group("clock_estimator");
    g.bench_function("per_tuple_churn", |b| {
        b.iter_custom(|iters| estimator_run(iters, per_tuple))
    });
    g.bench_function("one_clock_churn", |b| {
        b.iter_custom(|iters| estimator_run(iters, per_host))
    });
    if let Some(syns) = replay_syns() {
        let span = syns[syns.len() - 1].0 - syns[0].0 + 1_000_000;
        g.bench_function("replay", |b| {
            b.iter_custom(|iters| {
                let mut e = ClockEstimator::new(ClockConfig::default());
                let n = syns.len() as u64;
                let mut feed = |i: u64| {
                    let (t, tsval, port) = syns[(i % n) as usize];
                    // Each pass later by the capture's span, and the clock with it (1 kHz).
                    let shift = i / n * span;
                    e.observe_flow(
                        t + shift,
                        tsval.wrapping_add((shift / 1_000_000) as u32),
                        port,
                        8080,
                    );
                };
                // One pass of the capture first, untimed.
                (0..n).for_each(&mut feed);
                let start = Instant::now();
                (n..n + iters).for_each(&mut feed);
                let took = start.elapsed();
                black_box(e.estimate());
                took
            })
        });
    }
    g.finish();
}

fn pipeline(c: &mut Criterion) {
    let mut g = c.benchmark_group("pipeline");
    g.bench_function("connection", |b| {
        b.iter_custom(|iters| {
            let mut p = Pipeline::new(DecodeCtx { hz: 250 }, 262_144);
            let mut agg = Aggregate::new(65_536);
            let filter = Filter {
                ports: vec![],
                nets: vec![],
            };
            // In batches, as the ring buffer hands them over; one port cycle to warm up.
            let mut batch = Vec::with_capacity(1024);
            let mut run = |from: u64, to: u64| {
                for i in from..to {
                    batch.extend(tp_btf_connection(T0_NS, i));
                    if batch.len() >= 1024 {
                        p.feed_batch(&batch, &filter, |r| agg.apply(r));
                        batch.clear();
                    }
                }
                p.feed_batch(&batch, &filter, |r| agg.apply(r));
                batch.clear();
            };
            run(0, PORTS);
            let start = Instant::now();
            run(PORTS, PORTS + iters);
            let took = start.elapsed();
            assert_eq!(agg.totals().tw_created, PORTS + iters);
            took
        })
    });
    g.finish();
}

criterion_group!(benches, clock_estimator, pipeline);
criterion_main!(benches);
