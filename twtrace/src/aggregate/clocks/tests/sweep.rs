//! Many seeds, many scenarios: the false-positive guard, and how often counts are exact.
//! Runs in CI with a few seeds per scenario; `TWTRACE_SWEEP_SEEDS=200 cargo test --release
//! sweep -- --nocapture` for the full statistics. Jitter beyond
//! `jitter_ns` (20 ms, 100 ms against the default 5 ms) is included on purpose; with skew
//! separation on it is not: that is why skew separation is opt-in (it then overcounts).

use super::*;

/// What a scenario should produce: the hosts, or (per 4-tuple) the most hosts on one port.
fn truth(sc: &Scenario, syns: &[Syn]) -> u32 {
    match sc.offsets {
        Offsets::PerTuple => most_hosts_on_one_port(syns),
        _ => sc.hosts as u32,
    }
}

#[test]
fn sweep() {
    let seeds: u64 = std::env::var("TWTRACE_SWEEP_SEEDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(64);
    assert!(seeds >= 1, "TWTRACE_SWEEP_SEEDS must be at least 1");
    use Offsets::{PerHost, PerTuple};
    use Ports::{Pool, Random};
    let one = |o, p| Scenario::new(0, 1, o, p).syns(300, 250.0);
    let many = |n, o, p| Scenario::new(0, n, o, p);
    let skew_on = ClockConfig {
        skew_guard_ppm: Some(10.0),
        ..ClockConfig::default()
    };
    let d = ClockConfig::default;
    let cases: Vec<(&str, Scenario, ClockConfig)> = vec![
        ("1 per-host", one(PerHost, Random), d()),
        ("1 per-tuple", one(PerTuple, Random), d()),
        ("1 per-tuple pool8", one(PerTuple, Pool(8)), d()),
        ("1 per-tuple 1MHz", one(PerTuple, Random).rate(1e6), d()),
        ("1 per-host 1MHz", one(PerHost, Random).rate(1e6), d()),
        ("1 per-tuple 100Hz", one(PerTuple, Pool(8)).rate(100.0), d()),
        (
            "1 per-tuple 20ms jitter",
            one(PerTuple, Pool(8)).jitter(0.02),
            d(),
        ),
        (
            "1 per-host 20ms jitter",
            one(PerHost, Random).jitter(0.02),
            d(),
        ),
        (
            "1 per-tuple 1h",
            one(PerTuple, Pool(32)).syns(3000, 3600.0),
            d(),
        ),
        (
            "1 per-tuple burst",
            one(PerTuple, Random).syns(1000, 10.0),
            d(),
        ),
        (
            "1 per-tuple skew on",
            one(PerTuple, Pool(8)),
            skew_on.clone(),
        ),
        ("1 per-host skew on", one(PerHost, Pool(8)), skew_on.clone()),
        ("2 per-host", many(2, PerHost, Random), d()),
        ("20 per-host", many(20, PerHost, Random), d()),
        (
            "20 per-host 2 SYNs",
            many(20, PerHost, Random).syns(2, 200.0),
            d(),
        ),
        ("20 per-host 1MHz", many(20, PerHost, Random).rate(1e6), d()),
        ("5 per-tuple pool4", many(5, PerTuple, Pool(4)), d()),
        ("5 per-tuple pool16", many(5, PerTuple, Pool(16)), d()),
        (
            "5 per-tuple pool4 1MHz",
            many(5, PerTuple, Pool(4)).rate(1e6),
            d(),
        ),
        (
            "5 per-tuple 20ms",
            many(5, PerTuple, Pool(4)).jitter(0.02),
            d(),
        ),
        ("5 per-tuple skew on", many(5, PerTuple, Pool(4)), skew_on),
        (
            "1 per-tuple 100ms jitter",
            one(PerTuple, Pool(8)).jitter(0.1),
            d(),
        ),
        (
            "1 per-host 100ms jitter",
            one(PerHost, Random).jitter(0.1),
            d(),
        ),
        (
            "1 per-tuple 1MHz 20ms",
            one(PerTuple, Pool(8)).rate(1e6).jitter(0.02),
            d(),
        ),
        (
            "2 per-tuple 1MHz 20ms",
            many(2, PerTuple, Pool(4)).rate(1e6).jitter(0.02),
            d(),
        ),
        (
            "5 per-tuple 100ms",
            many(5, PerTuple, Pool(4)).jitter(0.1),
            d(),
        ),
        ("1 per-tuple 10Hz", one(PerTuple, Pool(8)).rate(10.0), d()),
        ("1 per-host 2Hz", one(PerHost, Random).rate(2.0), d()),
    ];
    for (name, base, cfg) in cases {
        let (mut exact, mut over, mut under, mut outside) = (0, 0, 0, 0);
        for seed in 0..seeds {
            let sc = Scenario {
                seed,
                ..base.clone()
            };
            let syns = generate(&sc);
            let want = truth(&sc, &syns);
            let e = run(cfg.clone(), &syns).estimate();
            match e.clocks.cmp(&want) {
                std::cmp::Ordering::Equal => exact += 1,
                std::cmp::Ordering::Greater => {
                    over += 1;
                    println!("  over: seed {seed} truth {want}: {e:?}");
                }
                std::cmp::Ordering::Less => under += 1,
            }
            let n = sc.hosts as u32;
            if !(e.clocks_low <= n && n <= e.clocks_high) {
                outside += 1;
            }
        }
        println!("{name:26} exact {exact:3} over {over:3} under {under:3} outside {outside:3}");
        // Never more clocks than there are (the false-positive guard: a NAT flag on one host
        // is the costly mistake), and the hosts always within [clocks_low, clocks_high], in
        // every scenario, beyond-spec jitter included. Undercounts are allowed (per-4-tuple
        // offsets over many ports cannot be told apart sooner), and reported above.
        assert_eq!(over, 0, "{name}: overcounted");
        assert_eq!(outside, 0, "{name}: the truth outside the bounds");
    }
}
