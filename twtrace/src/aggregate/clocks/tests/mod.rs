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
