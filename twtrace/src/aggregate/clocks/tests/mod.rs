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

/// Memory grows with the lines an IP has, up to `max_lines + 1` per container, not reserved
/// up front: most source IPs send a SYN or two, and a reservation of 33 lines each cost ~4 KB
/// per IP (300 MB at the default capacity of 65536 IPs).
#[test]
fn memory_grows_with_the_lines_only() {
    let cfg = ClockConfig::default();
    let max = cfg.max_lines;
    let mut e = ClockEstimator::new(cfg);
    e.observe(T0_NS, 1000, 40_000);
    assert!(e.lines.capacity() <= 2, "{}", e.lines.capacity());
    // Churn: a new port per SYN, far more lines than kept.
    for i in 1..500u64 {
        let port = 40_000 + i as u16;
        e.observe(
            T0_NS + i * S / 100,
            u32::from(port).wrapping_mul(2_654_435_761),
            port,
        );
    }
    assert_eq!(e.lines(), max);
    for cap in [
        e.lines.capacity(),
        e.line_keys.capacity(),
        e.line_last_ns.capacity(),
        e.ages.capacity(),
    ] {
        assert!(
            (max..=max + 1).contains(&cap),
            "capacity {cap}, max_lines {max}"
        );
    }
}
