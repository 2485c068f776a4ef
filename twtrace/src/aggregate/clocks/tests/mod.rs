//! Scenario tests on synthetic SYN streams (see `sim`): 1 kHz unless said, ±2 ms delay
//! jitter, ±50 ppm skew, SYNs over 200 s inside the default 300 s window. Several seeds per
//! scenario; the bounds asserted are the ones the module documentation promises:
//!
//! * per host: `clocks` exact and `clocks_low == clocks_high == clocks` once every host has
//!   sent a few SYNs (chance merges of two offsets are ~1e-8 per pair at 1 kHz);
//! * per 4-tuple: `clocks == clocks_low ==` the most hosts seen on one source port (the
//!   ground truth of what is provable), `clocks_high >=` the true number of hosts;
//! * one host alone: `clocks == 1` in every mode, whatever the ports.

use super::sim::{
    Host, Offsets, Ports, Rng, Scenario, Syn, T0_NS, arrival_ns, distinct_lines, generate,
    most_hosts_on_one_port, ports_with_several_hosts,
};
use super::{ClockConfig, ClockEstimate, ClockEstimator, OffsetMode};

const S: u64 = 1_000_000_000;

fn run(cfg: ClockConfig, syns: &[Syn]) -> ClockEstimator {
    let mut e = ClockEstimator::new(cfg);
    for s in syns {
        e.observe(s.t_ns, s.tsval, s.sport);
    }
    e
}

fn estimate(sc: &Scenario) -> ClockEstimate {
    run(ClockConfig::default(), &generate(sc)).estimate()
}

/// The range contains the truth and the best estimate.
fn assert_consistent(e: &ClockEstimate, truth: u32, what: &str) {
    assert!(
        e.clocks_low <= truth && truth <= e.clocks_high,
        "{what}: truth {truth} outside [{}, {}]: {e:?}",
        e.clocks_low,
        e.clocks_high
    );
    assert!(
        e.clocks_low <= e.clocks && e.clocks <= e.clocks_high,
        "{what}: {e:?}"
    );
    assert!((0.0..=1.0).contains(&e.confidence), "{what}: {e:?}");
}

/// SYNs of `host` on each of `ports`, `per_port` times each, over 200 s.
fn syns_of(rng: &mut Rng, host: &Host, id: usize, ports: &[u16], per_port: usize) -> Vec<Syn> {
    let mut out = Vec::new();
    for &sport in ports {
        for _ in 0..per_port {
            let t = rng.unit() * 200.0;
            out.push(Syn {
                t_ns: arrival_ns(rng, t, 0.002),
                tsval: host.tsval(t, sport),
                sport,
                host: id,
            });
        }
    }
    out
}

fn sorted(mut v: Vec<Syn>) -> Vec<Syn> {
    v.sort_by_key(|s| s.t_ns);
    v
}

mod counts;
mod robust;
mod shortcut;
mod sweep;

/// Feeds 4M churn SYNs (a new source port each, 66 µs apart, one 1000 Hz clock whose
/// offset `offset(port)` gives) to a fresh estimator; prints the cost per SYN.
fn churn_cost(label: &str, offset: impl Fn(u16) -> u32) -> ClockEstimator {
    let mut e = ClockEstimator::new(ClockConfig::default());
    let n = 4_000_000u64;
    let syns: Vec<(u64, u32, u16)> = (0..n)
        .map(|i| {
            let port = 1024 + (i % 64_512) as u16;
            let t = T0_NS + i * 66_000;
            (t, offset(port).wrapping_add((t / 1_000_000) as u32), port)
        })
        .collect();
    let start = std::time::Instant::now();
    for &(t, tsval, port) in &syns {
        e.observe_flow(t, tsval, port, 8080);
    }
    let per = start.elapsed().as_nanos() as f64 / n as f64;
    eprintln!("clock estimator, {label}: {per:.0} ns per SYN");
    e
}

/// Measures the estimator's cost per SYN under the bench's churn on a kernel with per-4-tuple
/// offsets (every SYN from a port whose line is long gone: a new line tested against every
/// cluster). A measurement, not a test of speed: `cargo test --release -p twtrace
/// observe_cost -- --ignored --nocapture`.
#[test]
#[ignore = "measurement; run by hand"]
fn observe_cost() {
    let e = churn_cost("per-4-tuple offsets", |port| {
        u32::from(port).wrapping_mul(2_654_435_761)
    });
    assert_eq!(e.estimate().mode, OffsetMode::PerTuple);
}

/// [`observe_cost`] with per-host offsets (one clock behind the address): every SYN is a new
/// line that joins the one cluster.
#[test]
#[ignore = "measurement; run by hand"]
fn observe_cost_one_clock() {
    let e = churn_cost("one clock", |_| 12_345);
    assert_eq!(e.estimate().clocks, 1);
}

/// Replays SYNs captured from a real run (`TWTRACE_SYN_REPLAY`: a file of `ts_ns,tsval,sport`
/// lines, e.g. from `twtrace events --json` during `cargo xtask bench`) ten times over, and
/// prints the cost per SYN: the synthetic streams above miss what a kernel's offsets really
/// look like. A measurement, not a test of speed.
#[test]
#[ignore = "measurement; run by hand with TWTRACE_SYN_REPLAY=FILE"]
fn observe_replay() {
    let path = std::env::var("TWTRACE_SYN_REPLAY").expect("set TWTRACE_SYN_REPLAY to a file");
    let text = std::fs::read_to_string(&path).expect("reading the replay file");
    let syns: Vec<(u64, u32, u16)> = text
        .lines()
        .map(|l| {
            let mut f = l.split(',');
            let mut next = || f.next().expect("three fields").trim();
            let t = next().parse().expect("ts_ns");
            let tsval = next().parse().expect("tsval");
            (t, tsval, next().parse().expect("sport"))
        })
        .collect();
    let span = syns.last().expect("some SYNs").0 - syns[0].0 + 1_000_000;
    let mut e = ClockEstimator::new(ClockConfig::default());
    let start = std::time::Instant::now();
    for pass in 0..10u64 {
        for &(t, tsval, port) in &syns {
            // Each pass later by the capture's span (and the clock with it, at 1 kHz).
            let shift = pass * span;
            e.observe_flow(
                t + shift,
                tsval.wrapping_add((shift / 1_000_000) as u32),
                port,
                8080,
            );
        }
    }
    let per = start.elapsed().as_nanos() as f64 / (10 * syns.len()) as f64;
    eprintln!("clock estimator, replay of {path}: {per:.0} ns per SYN");
    assert!(e.estimate().clocks >= 1);
}
