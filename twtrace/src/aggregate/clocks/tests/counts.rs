//! Counting: 1, 2, 5, 20 clocks in both offset modes, wrap-around, rates, few samples.

use super::*;

#[test]
fn no_samples() {
    let e = ClockEstimator::new(ClockConfig::default()).estimate();
    assert_eq!(
        (e.clocks, e.clocks_low, e.clocks_high, e.samples),
        (0, 0, 0, 0)
    );
    assert_eq!(e.mode, OffsetMode::Unknown);
    assert_eq!(e.confidence, 0.0);
    assert_eq!(e.rate_hz, None);
}

#[test]
fn too_few_samples_is_unknown_with_low_confidence() {
    for n in 1..=3 {
        let mut sc = Scenario::new(7, 1, Offsets::PerHost, Ports::Random);
        sc.syns_per_host = n;
        let e = estimate(&sc);
        assert_eq!(e.mode, OffsetMode::Unknown, "{n} SYNs: {e:?}");
        assert_eq!((e.clocks, e.clocks_low), (1, 1), "{n} SYNs: {e:?}");
        assert!(e.confidence < 0.3, "{n} SYNs: {e:?}");
        assert_eq!(e.samples, n as u64);
        assert_consistent(&e, 1, "few samples");
    }
}

#[test]
fn per_host_offsets_count_exactly() {
    for hosts in [1, 2, 5, 20] {
        for seed in 0..8 {
            let sc = Scenario::new(seed, hosts, Offsets::PerHost, Ports::Random);
            let e = estimate(&sc);
            let n = hosts as u32;
            assert_eq!(
                e.mode,
                OffsetMode::PerHost,
                "{hosts} hosts seed {seed}: {e:?}"
            );
            assert_eq!(
                (e.clocks, e.clocks_low, e.clocks_high),
                (n, n, n),
                "{hosts} hosts seed {seed}: {e:?}"
            );
            assert_eq!(e.rate_hz, Some(1000));
            assert!(e.confidence > 0.9, "{e:?}");
            assert_eq!(e.samples, 20 * hosts as u64);
        }
    }
}

#[test]
fn per_host_offsets_through_a_nat_port_pool() {
    // Hosts share 8 ports: per port, several lines (one per host), all linked per host.
    for seed in 0..8 {
        let sc = Scenario::new(seed, 5, Offsets::PerHost, Ports::Pool(8));
        let e = estimate(&sc);
        assert_eq!(
            (e.clocks, e.clocks_low, e.clocks_high),
            (5, 5, 5),
            "seed {seed}: {e:?}"
        );
        assert_eq!(e.mode, OffsetMode::PerHost);
        assert!(e.shared_ports >= 1);
    }
}

#[test]
fn per_tuple_offsets_give_the_per_port_lower_bound() {
    // A NAT reusing 4 ports: every port sees (nearly) every host, so the bound is tight.
    for hosts in [1, 2, 5] {
        for seed in 0..8 {
            let sc = Scenario::new(seed, hosts, Offsets::PerTuple, Ports::Pool(4));
            let syns = generate(&sc);
            let truth = most_hosts_on_one_port(&syns);
            assert_eq!(truth, hosts as u32, "scenario should reuse every port");
            let e = run(ClockConfig::default(), &syns).estimate();
            assert_eq!(
                e.mode,
                OffsetMode::PerTuple,
                "{hosts} hosts seed {seed}: {e:?}"
            );
            assert_eq!(
                (e.clocks, e.clocks_low),
                (truth, truth),
                "{hosts} hosts seed {seed}: {e:?}"
            );
            // Every (host, port) line could be its own host: the upper bound is the lines.
            assert_eq!(e.clocks_high, distinct_lines(&syns), "{e:?}");
            assert_eq!(e.shared_ports, ports_with_several_hosts(&syns));
            assert_eq!(e.rate_hz, Some(1000));
            assert_consistent(&e, hosts as u32, "per tuple");
        }
    }
}

#[test]
fn per_tuple_20_hosts() {
    // 20 hosts × 4 ports = 80 lines: with room for all of them the bound is the most hosts
    // seen on one port (here 18..20 of 20).
    let cfg = ClockConfig {
        max_lines: 128,
        ..ClockConfig::default()
    };
    for seed in 0..4 {
        let sc = Scenario::new(seed, 20, Offsets::PerTuple, Ports::Pool(4));
        let syns = generate(&sc);
        let truth = most_hosts_on_one_port(&syns);
        assert!(truth >= 18, "{truth}");
        let e = run(cfg.clone(), &syns).estimate();
        assert_eq!(
            (e.clocks, e.clocks_low),
            (truth, truth),
            "seed {seed}: {e:?}"
        );
        assert_eq!(e.clocks_high, distinct_lines(&syns));
        assert_consistent(&e, 20, "20 per tuple");
    }
    // With the default 32 lines, old lines go: still a NAT, still a true lower bound, and
    // the upper bound admits it lost track (evictions within the window).
    for seed in 0..4 {
        let sc = Scenario::new(seed, 20, Offsets::PerTuple, Ports::Pool(4));
        let mut est = run(ClockConfig::default(), &generate(&sc));
        assert!(est.lines() <= 32);
        let e = est.estimate();
        assert!(e.clocks >= 2 && e.clocks <= 20, "seed {seed}: {e:?}");
        assert_consistent(&e, 20, "20 per tuple, 32 lines");
        est.observe(T0_NS + 1000 * S, 1, 1);
        assert!(est.lines() <= 32);
    }
}

#[test]
fn one_host_reconnecting_is_one_clock_in_every_mode() {
    let cases = [
        (Offsets::PerHost, Ports::Random, OffsetMode::PerHost),
        (Offsets::PerHost, Ports::Pool(16), OffsetMode::PerHost),
        (Offsets::Zero, Ports::Random, OffsetMode::PerHost),
        (Offsets::PerTuple, Ports::Random, OffsetMode::PerTuple),
        (Offsets::PerTuple, Ports::Pool(16), OffsetMode::PerTuple),
    ];
    for (offsets, ports, mode) in cases {
        for seed in 0..50 {
            let mut sc = Scenario::new(seed, 1, offsets, ports);
            sc.syns_per_host = 300;
            sc.duration_s = 250.0;
            let e = estimate(&sc);
            let what = format!("{offsets:?} {ports:?} seed {seed}");
            assert_eq!((e.clocks, e.clocks_low), (1, 1), "{what}: {e:?}");
            assert_eq!(e.mode, mode, "{what}: {e:?}");
            assert_consistent(&e, 1, &what);
            if mode == OffsetMode::PerHost {
                assert_eq!(e.clocks_high, 1, "{what}: {e:?}");
                assert!(e.confidence > 0.9);
            } else {
                assert!(e.confidence <= 0.6);
            }
        }
    }
}

#[test]
fn tsval_wraparound() {
    // Every host's TSval wraps 100 s into the 200 s run (1 kHz: 100 000 ticks).
    for seed in 0..4 {
        let mut sc = Scenario::new(seed, 5, Offsets::PerHost, Ports::Random);
        sc.ticks_before_wrap = Some(100_000);
        let syns = generate(&sc);
        assert!(
            syns.iter().any(|s| s.tsval < 100_000)
                && syns.iter().any(|s| s.tsval > u32::MAX - 100_000)
        );
        let e = run(ClockConfig::default(), &syns).estimate();
        assert_eq!(
            (e.clocks, e.clocks_low, e.clocks_high),
            (5, 5, 5),
            "seed {seed}: {e:?}"
        );

        // Per 4-tuple: both hosts' lines on port 40000 wrap (at 80 s and 120 s), and that
        // shared port is what proves two clocks.
        let mut rng = Rng::new(seed);
        let mut syns = Vec::new();
        for (id, wrap_s) in [(0, 80.0), (1, 120.0)] {
            let mut h = Host::random(&mut rng, 1000.0, 50.0, Offsets::PerTuple);
            h.wrap_port_at(40000, wrap_s);
            syns.extend(syns_of(&mut rng, &h, id, &[40000], 20));
            syns.extend(syns_of(&mut rng, &h, id, &[40001, 40002, 40003], 3));
        }
        let port_0: Vec<u32> = syns
            .iter()
            .filter(|s| s.sport == 40000)
            .map(|s| s.tsval)
            .collect();
        assert!(
            port_0.iter().any(|&v| v < 100_000) && port_0.iter().any(|&v| v > u32::MAX - 100_000)
        );
        let e = run(ClockConfig::default(), &sorted(syns)).estimate();
        assert_eq!(
            (e.clocks, e.clocks_low, e.mode),
            (2, 2, OffsetMode::PerTuple),
            "seed {seed}: {e:?}"
        );
        assert_eq!(
            (e.clocks_high, e.shared_ports),
            (8, 4),
            "seed {seed}: {e:?}"
        );

        // 1 MHz wraps every 71.6 min; here 100 s in.
        let mut sc = Scenario::new(seed, 3, Offsets::PerHost, Ports::Random);
        sc.rate_hz = 1e6;
        sc.ticks_before_wrap = Some(100_000_000);
        let e = estimate(&sc);
        assert_eq!(
            (e.clocks, e.clocks_low, e.clocks_high),
            (3, 3, 3),
            "seed {seed}: {e:?}"
        );
        assert_eq!(e.rate_hz, Some(1_000_000));
    }
}

#[test]
fn other_rates_100hz_and_1mhz() {
    for (rate, hz) in [(100.0, 100), (1e6, 1_000_000), (10.0, 10), (250.0, 250)] {
        for seed in 0..4 {
            let mut sc = Scenario::new(seed, 5, Offsets::PerHost, Ports::Random);
            sc.rate_hz = rate;
            let e = estimate(&sc);
            assert_eq!(
                (e.clocks, e.clocks_low, e.clocks_high),
                (5, 5, 5),
                "{hz} Hz seed {seed}: {e:?}"
            );
            assert_eq!(e.rate_hz, Some(hz));

            let mut sc = Scenario::new(seed, 2, Offsets::PerTuple, Ports::Pool(4));
            sc.rate_hz = rate;
            let e = estimate(&sc);
            assert_eq!(
                (e.clocks, e.clocks_low),
                (2, 2),
                "{hz} Hz per tuple seed {seed}: {e:?}"
            );
            assert_eq!(e.rate_hz, Some(hz));

            let mut sc = Scenario::new(seed, 1, Offsets::PerTuple, Ports::Random);
            sc.rate_hz = rate;
            sc.syns_per_host = 200;
            let e = estimate(&sc);
            assert_eq!(e.clocks, 1, "{hz} Hz one host seed {seed}: {e:?}");
        }
    }
}

#[test]
fn different_rates_are_different_clocks() {
    // Per 4-tuple, no shared port: only the rates tell the two hosts apart.
    for seed in 0..8 {
        let mut rng = Rng::new(seed);
        let a = Host::random(&mut rng, 1000.0, 50.0, Offsets::PerTuple);
        let b = Host::random(&mut rng, 100.0, 50.0, Offsets::PerTuple);
        let mut syns = syns_of(&mut rng, &a, 0, &[40001, 40002, 40003], 5);
        syns.extend(syns_of(&mut rng, &b, 1, &[40004, 40005, 40006], 5));
        let e = run(ClockConfig::default(), &sorted(syns)).estimate();
        assert_eq!(
            (e.clocks, e.clocks_low, e.clocks_high),
            (2, 2, 6),
            "seed {seed}: {e:?}"
        );
        assert_eq!(e.shared_ports, 0);
    }
}

#[test]
fn paws_case_one_reuse_of_one_port() {
    // Host A connects from 40000 ten times; host B (other clock) takes 40000 once.
    for seed in 0..8 {
        let mut rng = Rng::new(seed);
        let a = Host::random(&mut rng, 1000.0, 50.0, Offsets::PerTuple);
        let b = Host::random(&mut rng, 1000.0, 50.0, Offsets::PerTuple);
        let mut syns = syns_of(&mut rng, &a, 0, &[40000], 10);
        syns.extend(syns_of(&mut rng, &a, 0, &[40001, 40002, 40003], 1));
        syns.extend(syns_of(&mut rng, &b, 1, &[40000], 1));
        let e = run(ClockConfig::default(), &sorted(syns)).estimate();
        assert_eq!(
            (e.clocks, e.clocks_low, e.shared_ports),
            (2, 2, 1),
            "seed {seed}: {e:?}"
        );
        assert_eq!(e.mode, OffsetMode::PerTuple);
        assert_eq!(e.clocks_high, 5);
    }
}

#[test]
fn estimate_serializes() {
    let sc = Scenario::new(1, 2, Offsets::PerHost, Ports::Random);
    let v = serde_json::to_value(estimate(&sc)).unwrap();
    assert_eq!(v["mode"], "per_host");
    assert_eq!(v["clocks"], 2);
    assert_eq!(v["rate_hz"], 1000);
    assert_eq!(OffsetMode::PerTuple.as_str(), "per_tuple");
}
