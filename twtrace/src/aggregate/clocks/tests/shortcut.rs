//! The candidate window of step 2 (`ClockEstimator::candidates`), the vectorized scans of
//! the hot copies (`line_keys`, `cluster_tsvals`), the sorted line times that name the oldest
//! line (`ages`) and the lines' hints to their clusters (`cluster_at`) are shortcuts, not a
//! change of method: fed the same SYNs, an estimator that tests every line and cluster in
//! full and scans for the oldest line and for each cluster ends up in the same state after
//! every SYN, and the copies match what they copy.

use super::*;

/// Feeds `syns` to a shortcut estimator and to a full-scan one side by side; asserts the
/// same lines, clusters and estimate after every SYN.
fn assert_same_as_full_scan(cfg: &ClockConfig, syns: &[Syn], what: &str) {
    let mut fast = ClockEstimator::new(cfg.clone());
    let mut full = ClockEstimator::new(cfg.clone());
    full.full_scan = true;
    for (i, s) in syns.iter().enumerate() {
        fast.observe_flow(s.t_ns, s.tsval, s.sport, 443);
        full.observe_flow(s.t_ns, s.tsval, s.sport, 443);
        fast.check_index();
        full.check_index();
        let lines = |e: &ClockEstimator| {
            e.lines
                .iter()
                .map(|l| {
                    (
                        l.key,
                        l.cluster,
                        l.track.last,
                        l.track.mask,
                        l.track.samples,
                    )
                })
                .collect::<Vec<_>>()
        };
        let clusters = |e: &ClockEstimator| {
            e.clusters
                .iter()
                .map(|c| (c.id, c.track.last, c.track.mask, c.links, c.lines, c.syns))
                .collect::<Vec<_>>()
        };
        assert_eq!(lines(&fast), lines(&full), "{what}: lines after SYN {i}");
        assert_eq!(
            clusters(&fast),
            clusters(&full),
            "{what}: clusters after SYN {i}"
        );
    }
    assert_eq!(
        format!("{:?}", fast.estimate()),
        format!("{:?}", full.estimate()),
        "{what}"
    );
}

#[test]
fn the_candidate_window_changes_nothing() {
    let small = ClockConfig {
        max_lines: 8,
        ..ClockConfig::default()
    };
    for seed in 0..6 {
        for offsets in [Offsets::PerHost, Offsets::PerTuple, Offsets::Zero] {
            for (hosts, ports) in [
                (1, Ports::Random),
                (5, Ports::Pool(16)),
                (20, Ports::Random),
            ] {
                for rate in [100.0, 1000.0, 1_000_000.0] {
                    let sc = Scenario::new(seed, hosts, offsets, ports).rate(rate);
                    let syns = generate(&sc);
                    let what = format!("seed {seed} {offsets:?} {hosts} hosts {rate} Hz");
                    for cfg in [&ClockConfig::default(), &small] {
                        // As generated (arrivals slightly out of order) and sorted.
                        assert_same_as_full_scan(cfg, &syns, &what);
                        assert_same_as_full_scan(cfg, &sorted(syns.clone()), &what);
                    }
                }
            }
        }
    }
}

/// Churn as under the bench: a new port per SYN 66 µs apart, per-4-tuple offsets and one
/// host per 4-tuple offset, with SYNs every so often that do continue an earlier line.
#[test]
fn the_candidate_window_changes_nothing_under_churn() {
    let mut syns = Vec::new();
    for i in 0..20_000u64 {
        let t_ns = T0_NS + i * 66_000;
        // Every 7th SYN reuses the port of 40 SYNs ago; the offset is per port.
        let port = if i % 7 == 0 && i >= 40 {
            1024 + ((i - 40) % 60_000) as u16
        } else {
            1024 + (i % 60_000) as u16
        };
        let offset = u32::from(port).wrapping_mul(2_654_435_761);
        syns.push(Syn {
            t_ns,
            tsval: offset.wrapping_add((t_ns / 1_000_000) as u32),
            sport: port,
            host: 0,
        });
    }
    assert_same_as_full_scan(&ClockConfig::default(), &syns, "churn");
}
