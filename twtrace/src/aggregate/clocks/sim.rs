//! Test-only SYN stream generator: hosts with their own tick clocks (rate, skew, uptime),
//! per-host or per-4-tuple offsets, network delay with jitter, ports picked at random or
//! from a small NAT pool. Deterministic (splitmix64), no dependencies.

use std::collections::{BTreeMap, BTreeSet};

/// splitmix64: tiny, deterministic, good enough for test data.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        mix(self.0)
    }

    /// Uniform in [0, 1).
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Uniform in [-a, a].
    pub fn sym(&mut self, a: f64) -> f64 {
        (2.0 * self.unit() - 1.0) * a
    }

    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }
}

fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// How the senders pick TSval offsets.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Offsets {
    /// One random offset per host (Linux 4.11 .. early 2026).
    PerHost,
    /// One random offset per (host, source port) (newer Linux).
    PerTuple,
    /// Offset 0 (`tcp_timestamps=2`).
    Zero,
}

/// How source ports are chosen (after NAT).
#[derive(Clone, Copy, Debug)]
pub enum Ports {
    /// Uniform over the ephemeral range: ports rarely repeat.
    Random,
    /// From a pool of `n` ports starting at 40000, as a NAT reusing a small port block does.
    Pool(u16),
}

#[derive(Clone, Debug)]
pub struct Scenario {
    pub seed: u64,
    pub hosts: usize,
    pub rate_hz: f64,
    pub offsets: Offsets,
    pub ports: Ports,
    pub syns_per_host: usize,
    /// SYNs are sent at uniformly random times in [0, duration).
    pub duration_s: f64,
    /// One-way delay = 20 ms ± this (uniform).
    pub jitter_s: f64,
    /// Each host's skew is uniform in ± this.
    pub skew_ppm: f64,
    /// If set, host `i` of `n` starts `w − i·w/(2n)` ticks before the TSval wrap (per-host
    /// offsets): all wrap mid-run, on lines far enough apart to stay distinct.
    pub ticks_before_wrap: Option<u32>,
}

impl Scenario {
    /// 1 kHz, ±2 ms jitter, ±50 ppm skew, SYNs spread over 200 s (inside a 300 s window).
    pub fn new(seed: u64, hosts: usize, offsets: Offsets, ports: Ports) -> Self {
        Self {
            seed,
            hosts,
            rate_hz: 1000.0,
            offsets,
            ports,
            syns_per_host: 20,
            duration_s: 200.0,
            jitter_s: 0.002,
            skew_ppm: 50.0,
            ticks_before_wrap: None,
        }
    }
}

impl Scenario {
    pub fn rate(mut self, hz: f64) -> Self {
        self.rate_hz = hz;
        self
    }

    pub fn jitter(mut self, s: f64) -> Self {
        self.jitter_s = s;
        self
    }

    pub fn syns(mut self, per_host: usize, duration_s: f64) -> Self {
        self.syns_per_host = per_host;
        self.duration_s = duration_s;
        self
    }
}

#[derive(Clone, Copy, Debug)]
pub struct Syn {
    pub t_ns: u64,
    pub tsval: u32,
    pub sport: u16,
    pub host: usize,
}

/// Arrival times start here, as a monotonic clock that has run for a while.
pub const T0_NS: u64 = 7_000_000_000_000;

/// A host's clock: `ticks(t) = floor(rate · (1 + skew) · (uptime + t))`.
#[derive(Clone, Debug)]
pub struct Host {
    pub rate_hz: f64,
    pub skew: f64,
    pub uptime_s: f64,
    /// The per-host offset.
    pub offset: u32,
    /// Per-4-tuple offsets are `hash(secret, sport)`.
    pub secret: u64,
    pub offsets: Offsets,
}

impl Host {
    pub fn random(rng: &mut Rng, rate_hz: f64, skew_ppm: f64, offsets: Offsets) -> Self {
        Self {
            rate_hz,
            skew: rng.sym(skew_ppm) * 1e-6,
            uptime_s: 3600.0 + rng.unit() * 30.0 * 86400.0,
            offset: rng.next_u64() as u32,
            secret: rng.next_u64(),
            offsets,
        }
    }

    fn ticks(&self, t_send_s: f64) -> u32 {
        let ticks = (self.rate_hz * (1.0 + self.skew) * (self.uptime_s + t_send_s)).floor();
        (ticks as u64) as u32
    }

    pub fn tsval(&self, t_send_s: f64, sport: u16) -> u32 {
        let off = match self.offsets {
            Offsets::PerHost => self.offset,
            Offsets::PerTuple => mix(self.secret ^ u64::from(sport)) as u32,
            Offsets::Zero => 0,
        };
        self.ticks(t_send_s).wrapping_add(off)
    }

    /// Switches to a per-host offset that puts a SYN sent at `t_send_s` `n` ticks before the
    /// TSval wrap.
    pub fn wrap_at(&mut self, t_send_s: f64, n: u32) {
        self.offsets = Offsets::PerHost;
        self.offset = 0u32.wrapping_sub(n).wrapping_sub(self.ticks(t_send_s));
    }

    /// Keeps the offsets, but sets the uptime so that the line of `sport` wraps at `t_s`.
    pub fn wrap_port_at(&mut self, sport: u16, t_s: f64) {
        let off = self.tsval(-self.uptime_s, sport);
        let target = f64::from(0u32.wrapping_sub(off)) + 4_294_967_296.0;
        self.uptime_s = target / (self.rate_hz * (1.0 + self.skew)) - t_s;
    }
}

/// Arrival time of a SYN sent at `t_send_s`.
pub fn arrival_ns(rng: &mut Rng, t_send_s: f64, jitter_s: f64) -> u64 {
    T0_NS + ((t_send_s + 0.020 + rng.sym(jitter_s)) * 1e9) as u64
}

fn pick_port(rng: &mut Rng, ports: Ports) -> u16 {
    match ports {
        Ports::Random => 32768 + rng.below(28232) as u16,
        Ports::Pool(n) => 40000 + rng.below(u64::from(n)) as u16,
    }
}

/// The SYNs of a scenario, in arrival order.
pub fn generate(sc: &Scenario) -> Vec<Syn> {
    let mut rng = Rng::new(sc.seed);
    let mut hosts: Vec<Host> = (0..sc.hosts)
        .map(|_| Host::random(&mut rng, sc.rate_hz, sc.skew_ppm, sc.offsets))
        .collect();
    if let Some(n) = sc.ticks_before_wrap {
        let step = n / (2 * sc.hosts as u32);
        for (i, h) in hosts.iter_mut().enumerate() {
            h.wrap_at(0.0, n - i as u32 * step);
        }
    }
    let mut syns = Vec::new();
    for (i, h) in hosts.iter().enumerate() {
        for _ in 0..sc.syns_per_host {
            let t_send = rng.unit() * sc.duration_s;
            let sport = pick_port(&mut rng, sc.ports);
            syns.push(Syn {
                t_ns: arrival_ns(&mut rng, t_send, sc.jitter_s),
                tsval: h.tsval(t_send, sport),
                sport,
                host: i,
            });
        }
    }
    syns.sort_by_key(|s| s.t_ns);
    syns
}

/// Distinct (host, port) pairs: the lines a per-4-tuple stream has.
pub fn distinct_lines(syns: &[Syn]) -> u32 {
    let pairs: BTreeSet<(usize, u16)> = syns.iter().map(|s| (s.host, s.sport)).collect();
    pairs.len() as u32
}

fn hosts_by_port(syns: &[Syn]) -> BTreeMap<u16, BTreeSet<usize>> {
    let mut by_port: BTreeMap<u16, BTreeSet<usize>> = BTreeMap::new();
    for s in syns {
        by_port.entry(s.sport).or_default().insert(s.host);
    }
    by_port
}

/// Ground truth for the per-4-tuple lower bound: the most hosts seen on one source port.
pub fn most_hosts_on_one_port(syns: &[Syn]) -> u32 {
    let by_port = hosts_by_port(syns);
    by_port.values().map(|h| h.len() as u32).max().unwrap_or(0)
}

/// Ground truth for `shared_ports`: ports used by two hosts or more.
pub fn ports_with_several_hosts(syns: &[Syn]) -> u32 {
    hosts_by_port(syns).values().filter(|h| h.len() > 1).count() as u32
}
