//! What must not create clocks (outliers, unusual rates, ports) and what bounds memory.

use super::*;

#[test]
fn delay_outliers_and_route_changes_stay_one_clock() {
    for offsets in [Offsets::PerHost, Offsets::PerTuple] {
        for seed in 0..8 {
            let mut sc = Scenario::new(seed, 1, offsets, Ports::Pool(8));
            sc.syns_per_host = 100;
            let mut syns = generate(&sc);
            // One SYN 300 ms late, then the path gets 50 ms longer for the second half.
            syns[10].t_ns += 300_000_000;
            for s in &mut syns[50..] {
                s.t_ns += 50_000_000;
            }
            let e = run(ClockConfig::default(), &sorted(syns)).estimate();
            assert_eq!(
                (e.clocks, e.clocks_low),
                (1, 1),
                "{offsets:?} seed {seed}: {e:?}"
            );
            assert_consistent(&e, 1, "outliers");
        }
    }
}

#[test]
fn unusual_rate_single_host_stays_one_clock() {
    // 1024 Hz is no usual rate: lines break up once the 2.4 % drift exceeds the tolerance,
    // but the pieces are "near" each other. Short stretches may snap to 1000 Hz.
    for offsets in [Offsets::PerHost, Offsets::PerTuple] {
        for seed in 0..8 {
            let mut sc = Scenario::new(seed, 1, offsets, Ports::Pool(8));
            sc.rate_hz = 1024.0;
            sc.syns_per_host = 100;
            let e = estimate(&sc);
            assert_eq!(
                (e.clocks, e.clocks_low),
                (1, 1),
                "{offsets:?} seed {seed}: {e:?}"
            );
            assert!(matches!(e.rate_hz, None | Some(1000)), "{e:?}");
        }
    }
}

#[test]
fn the_window_forgets() {
    let sc = Scenario::new(3, 3, Offsets::PerHost, Ports::Random);
    let mut e = run(ClockConfig::default(), &generate(&sc));
    assert_eq!(e.estimate().clocks, 3);
    // 10 minutes later one clock is seen; the three others are older than the window.
    let mut rng = Rng::new(9);
    let h = Host::random(&mut rng, 1000.0, 0.0, Offsets::PerHost);
    for k in 0..10u64 {
        let t = 600.0 + k as f64;
        e.observe(
            arrival_ns(&mut rng, t, 0.002),
            h.tsval(t, 50000 + k as u16),
            50000 + k as u16,
        );
    }
    let est = e.estimate();
    assert_eq!(
        (est.clocks, est.clocks_low, est.clocks_high),
        (1, 1, 1),
        "{est:?}"
    );
    assert!(e.estimate_at(T0_NS + 2000 * S).clocks == 0);
}

#[test]
fn memory_is_bounded() {
    // One per-4-tuple host, 5000 SYNs from random ports: far more lines than fit.
    let mut sc = Scenario::new(1, 1, Offsets::PerTuple, Ports::Random);
    sc.syns_per_host = 5000;
    sc.duration_s = 250.0;
    let syns = generate(&sc);
    let mut e = ClockEstimator::new(ClockConfig::default());
    for s in &syns {
        e.observe(s.t_ns, s.tsval, s.sport);
        assert!(e.lines() <= 32);
    }
    let est = e.estimate();
    assert_eq!((est.clocks, est.clocks_low), (1, 1), "{est:?}");
    // More lines went than the eviction ring remembers: no upper bound.
    assert_eq!(est.clocks_high, u32::MAX);
}

#[test]
fn destination_port_separates_4_tuples() {
    // One per-4-tuple client uses source port 40000 towards server ports 80 and 443: two
    // offsets on one source port. With the destination port given, that is one clock.
    let mut rng = Rng::new(5);
    let h = Host::random(&mut rng, 1000.0, 20.0, Offsets::PerTuple);
    let mut flow = ClockEstimator::new(ClockConfig::default());
    let mut sport_only = ClockEstimator::new(ClockConfig::default());
    for k in 0..20 {
        let t = f64::from(k) * 5.0;
        let dport = if k % 2 == 0 { 80 } else { 443 };
        // Per-4-tuple: the offset depends on the destination port too.
        let tsval = h.tsval(t, 40000 ^ dport);
        let at = arrival_ns(&mut rng, t, 0.002);
        flow.observe_flow(at, tsval, 40000, dport);
        sport_only.observe(at, tsval, 40000);
    }
    assert_eq!(flow.estimate().clocks, 1);
    // The documented limit of `observe`: it would see two clocks on one port.
    assert_eq!(sport_only.estimate().clocks, 2);
}

#[test]
fn skew_separation_is_opt_in() {
    // Two per-4-tuple hosts, ±80 ppm, never on the same port, one rate: only their skews
    // differ. Over 2000 s with 0.5 ms jitter the skew error is ~1 ppm per line.
    let cfg = ClockConfig {
        window_ns: 3000 * S,
        jitter_ns: 1_000_000,
        skew_guard_ppm: Some(10.0),
        ..ClockConfig::default()
    };
    for seed in 0..4 {
        let mut rng = Rng::new(seed);
        let mut syns = Vec::new();
        for (id, skew) in [(0usize, 80e-6), (1, -80e-6)] {
            let mut h = Host::random(&mut rng, 1000.0, 0.0, Offsets::PerTuple);
            h.skew = skew;
            for k in 0..40u16 {
                let sport = 40000 + id as u16 * 100 + k % 4;
                let t = f64::from(k) * 50.0 + rng.unit();
                syns.push(Syn {
                    t_ns: arrival_ns(&mut rng, t, 0.0005),
                    tsval: h.tsval(t, sport),
                    sport,
                    host: id,
                });
            }
        }
        let syns = sorted(syns);
        let on = run(cfg.clone(), &syns).estimate();
        assert_eq!((on.clocks, on.clocks_low), (2, 2), "seed {seed}: {on:?}");
        let off = run(
            ClockConfig {
                skew_guard_ppm: None,
                ..cfg.clone()
            },
            &syns,
        )
        .estimate();
        assert_eq!(off.clocks, 1, "seed {seed}: {off:?}");
        // One host alone over the same span stays one clock with the guard on.
        let one: Vec<Syn> = syns.iter().copied().filter(|s| s.host == 0).collect();
        assert_eq!(run(cfg.clone(), &one).estimate().clocks, 1);
    }
}

#[test]
fn retransmitted_syn_with_the_same_tsval_is_no_new_clock() {
    // Per-4-tuple host on one port; every SYN is sent again 1 s and 3 s later with its
    // TSval unchanged (1000 and 3000 ticks behind the line: not within "near").
    let mut rng = Rng::new(4);
    let h = Host::random(&mut rng, 1000.0, 30.0, Offsets::PerTuple);
    let mut syns = Vec::new();
    for k in 0..10 {
        let t = f64::from(k) * 20.0;
        let tsval = h.tsval(t, 40000);
        for again in [0.0, 1.0, 3.0] {
            syns.push(Syn {
                t_ns: arrival_ns(&mut rng, t + again, 0.002),
                tsval,
                sport: 40000,
                host: 0,
            });
        }
    }
    let e = run(ClockConfig::default(), &sorted(syns)).estimate();
    assert_eq!((e.clocks, e.clocks_low, e.clocks_high), (1, 1, 1), "{e:?}");
    assert_eq!(e.samples, 30);
}

#[test]
fn mixed_offset_modes_behind_one_nat() {
    // An old-kernel host (per-host offsets, a new port per connection) and a new-kernel host
    // (per-4-tuple offsets, 8 ports reused). The per-host majority counts every per-4-tuple
    // line in `clocks`, but the range still holds the truth (2).
    for seed in 0..8 {
        let mut rng = Rng::new(seed);
        let old = Host::random(&mut rng, 1000.0, 50.0, Offsets::PerHost);
        let new = Host::random(&mut rng, 1000.0, 50.0, Offsets::PerTuple);
        let ports: Vec<u16> = (0..40).map(|k| 50000 + k).collect();
        let mut syns = syns_of(&mut rng, &old, 0, &ports, 1);
        syns.extend(syns_of(&mut rng, &new, 1, &[40000, 40001, 40002, 40003], 3));
        let e = run(ClockConfig::default(), &sorted(syns)).estimate();
        assert_eq!(e.mode, OffsetMode::PerHost, "seed {seed}: {e:?}");
        assert_eq!((e.clocks, e.clocks_low), (5, 2), "seed {seed}: {e:?}");
        assert_consistent(&e, 2, "mixed");
    }
}
