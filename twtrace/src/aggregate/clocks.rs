//! How many TCP timestamp clocks sit behind one source IP: NAT detection from the TSval of
//! SYNs. Pure data, no kernel, no I/O; one [`ClockEstimator`] per source IP.
//!
//! # What is measured
//!
//! A SYN's TSval is its sender's timestamp clock (a tick counter: 1000 Hz on Linux ≥ 4.13,
//! other stacks 1, 2, 10, 100, 250, 300 Hz or 1 MHz) plus an offset, modulo 2^32. Plotted
//! against arrival time, the SYNs of one clock with one offset lie on a line
//! `TSval = rate · t + offset` (blurred by network delay jitter, bent by clock skew of up to
//! ~100 ppm). Which SYNs share an offset depends on the sender's kernel:
//!
//! * **per host** (Linux 4.11 to early 2026, and any stack with `tcp_timestamps=2`, offset
//!   0): one offset per (source, destination) address pair, so every SYN of one host lies on
//!   one line, whatever its source port;
//! * **per 4-tuple** (newer Linux, this machine): each (saddr, sport, daddr, dport) has its own
//!   random offset, stable for that 4-tuple. One host reconnecting from the same source port
//!   stays on one line; different source ports give unrelated lines.
//!
//! Behind a NAT, several clocks share one IP with unrelated offsets; when one of them reuses
//! a 4-tuple still in TIME-WAIT on the server with an older TSval, the SYN is PAWS-rejected.
//!
//! # Method
//!
//! Following the prior art on counting hosts from TCP timestamps, adapted to per-4-tuple
//! offsets:
//!
//! * Kohno, Broido, claffy, "Remote physical device fingerprinting", IEEE S&P 2005: TSval
//!   against the observer's clock is a line whose slope is the tick rate times (1 + skew);
//!   skews are tens of ppm and differ between devices.
//! * Tekeoglu, Altiparmak, Tosun, "Approximating the number of active nodes behind a NAT
//!   device", ICCCN 2011: online clustering of timestamp lines (one per host) with bounded
//!   state per cluster.
//! * Wicherski, Weingarten, Meyer, "IP agnostic real-time traffic filtering and host
//!   identification using TCP timestamps", IEEE LCN 2013 (natfilterd, after Bursztein 2007):
//!   matching each packet against known timestamp lines, online, to count hosts behind NAT.
//!
//! Each SYN `(t, TSval, sport, dport)` is processed once, in O(lines) (about 2 µs with 32
//! lines of unrelated offsets); an estimate costs O(lines²) (up to ~70 µs at 32 lines, far
//! less for IPs with few lines), so compute it for the rows shown, not for every SYN:
//!
//! 1. **Lines per source port.** The SYN is tested against the lines already seen on its
//!    own `(sport, dport)`. It fits a line if, for a usual rate `r` the line still allows,
//!    `TSval − TSval_last − r·(t − t_last)` (wrapping, unwrapped around `r·Δt`) is within
//!    `2 + 2·jitter·r + skew·r·|Δt|` ticks: the tolerance scales with the rate. While
//!    several rates fit, the SYN must also fit against the line's first sample; the rates
//!    that survive narrow the line's rate ("snap the slope to the nearest usual rate"). A
//!    SYN repeating the TSval a line of its port ended on (a retransmission without a fresh
//!    TSval) is counted but not used.
//! 2. **Clusters across ports.** A SYN that starts a new line is tested the same way against
//!    every cluster (the union of lines found to share one offset line across ports) and
//!    joins the best fitting one; otherwise it starts a cluster. Under per-host offsets a
//!    cluster is one host; under per-4-tuple offsets clusters are single lines.
//! 3. **Bounded memory.** At most `max_lines` lines; when full, the least recently seen line
//!    of a cluster that has other lines goes first (it is redundant), else the least recently
//!    seen line, with its cluster. Lines not seen for `window_ns` are forgotten.
//!
//! [`ClockEstimator::estimate`] then looks at the lines seen within the window:
//!
//! * clusters whose lines come within `near_ns` (and, for ms-class rates, within 10 % of a
//!   usual rate) of each other, and lines of one port that do, are merged into one class: a
//!   delay outlier, a route change, an NTP slew or an unusual tick rate (1024 Hz) must not
//!   pass for a second clock;
//! * two lines of different classes are **provably different clocks** when they are on the
//!   same source port (one 4-tuple has one offset per host, so a second line there is a
//!   second clock), when their rates differ (each proven by 3 SYNs over a span no other
//!   usual rate comes near), or (opt-in) when their skews differ beyond error; the largest
//!   set of pairwise provably different lines found (greedy clique) is the lower bound;
//! * the offset mode is read from the clusters: many ports sharing few lines → per host;
//!   nearly every port on its own line → per 4-tuple.
//!
//! # What the estimate means
//!
//! [`ClockEstimate::clocks`] counts the distinct TSval lines (clocks with their offsets)
//! that sent a timestamped SYN within the window. A host that rebooted within the window
//! counts twice: its TSval jumped, which is exactly what trips PAWS.
//!
//! * **`per_host`** (enough SYNs from different ports landed on shared lines): every class
//!   is one clock. `clocks` = classes; `clocks_low` = classes seen on two ports or more
//!   (each a per-host clock for sure) plus the provable lower bound among the classes seen
//!   on one port only (or the provable bound over all lines, if larger); `clocks_high` =
//!   clusters before merging near ones, plus clusters evicted for memory within the window.
//!   Exact when every host sent a few SYNs from different ports; hosts seen on one port
//!   only count in `clocks` but not all in `clocks_low`.
//! * **`per_tuple`** (nearly every source port has its own line): lines on different ports
//!   cannot be told apart as one or many hosts, so `clocks` = `clocks_low` = the largest set
//!   of lines that are pairwise provably different clocks: in practice the most lines seen on
//!   any one source port (several hosts behind the NAT reused that port: the PAWS case), or
//!   the number of distinct tick rates. It is a **lower bound**: one host reconnecting from
//!   many ports gives 1, and so do two hosts that never reused each other's ports.
//!   `clocks_high` = number of lines tracked (each could be its own host) plus lines
//!   evicted within the window; confidence is lower.
//! * **`unknown`**: fewer than `min_samples` SYNs, or mixed/ambiguous evidence; `clocks` is
//!   the same provable lower bound as for `per_tuple`, with low confidence.
//!
//! `clocks_high` is `u32::MAX` when more lines were evicted within the window than the
//! estimator remembers (no useful upper bound). `clocks >= 2` means "NAT suspected"; the
//! rules above are built so that one host alone gives `clocks == 1` in every mode, as long
//! as its delay jitter stays under `jitter_ns` or its outliers stay "near".
//!
//! # Limits
//!
//! * Key one estimator per (source IP, destination IP): per-host offsets are per address
//!   pair, so one host talking to two server addresses has two lines.
//! * Use [`ClockEstimator::observe_flow`] (with the destination port) when the server
//!   listens on several ports; [`ClockEstimator::observe`] assumes one.
//! * Two unrelated offsets fall within tolerance of each other with a chance of about
//!   2·tolerance/2^32 (2e-8 at 1 kHz, up to 2e-5 at 1 MHz): the two clocks then merge,
//!   an undercount. The "near" rule merges more: ~1e-5 per pair of clocks at 1 kHz, but
//!   ~2.5e-4 at 1 MHz (`near_ns` is 500 000 µs ticks), so 20 clocks at 1 MHz come out as
//!   19 about 5 % of the time.
//! * A clock whose rate is more than 10 % from every usual rate never holds a line: each
//!   SYN starts a new one and nothing merges them, so its reused ports would count as
//!   several clocks (a false positive). None is known to us; 1024 Hz is handled.
//! * A stack that draws a fresh random offset per connection (not per 4-tuple) puts every
//!   connection on its own line: when it reuses a port, that port has two lines and counts
//!   as two clocks. To PAWS they are two clocks.
//! * With per-host and per-4-tuple senders mixed behind one NAT, the majority decides the
//!   mode; a per-host majority counts each per-4-tuple line as a clock in `clocks` (an
//!   overcount), while `clocks_low` stays a true lower bound.

mod estimate;
mod graph;
mod track;

#[cfg(test)]
pub(super) mod sim;
#[cfg(test)]
mod tests;

use std::collections::VecDeque;

use serde::Serialize;

use track::{QuickBounds, Sample, Tolerance, Track};

pub use track::RATES;

/// Tuning of one [`ClockEstimator`]; [`Default`] suits Internet clients.
///
/// Tolerances are in time units, not ticks (the brief's `tolerance_ticks`): the same
/// jitter is 10 ticks at 1 kHz and 10 000 at 1 MHz, so ticks are derived per rate.
#[derive(Clone, Debug)]
pub struct ClockConfig {
    /// Most TSval lines kept per source IP (about 150 bytes each with their share of
    /// clusters and eviction ring: 5 KB at 32); bounds memory and the per-SYN cost. Per-4-tuple NAT detection needs the reused port's lines to survive
    /// until the reuse: raise it for busy NATs. Minimum 1.
    pub max_lines: usize,
    /// Lines not seen for this long are forgotten, and the estimate covers this span.
    pub window_ns: u64,
    /// Largest deviation of one SYN's one-way delay from the path's usual delay.
    pub jitter_ns: u64,
    /// Largest clock skew of a sender against this host's monotonic clock.
    pub max_skew_ppm: f64,
    /// Offset slack under which a separate line is still taken for the same clock
    /// (delay outliers, route changes).
    pub near_ns: u64,
    /// Rate slack (ppm) under which a separate ms-class line is still taken for the same
    /// clock (unusual rates such as 1024 Hz, NTP slews).
    pub near_rate_ppm: f64,
    /// `Some(guard)`: lines whose skews differ by more than their error bounds plus twice
    /// `guard` (ppm) count as different clocks. Off by default: a delay spike larger than
    /// `jitter_ns` or an NTP slew biases a skew, and that would create a false clock.
    /// Worth it on paths with well bounded jitter and observations of many minutes.
    pub skew_guard_ppm: Option<f64>,
    /// Fewer SYNs than this within the window: mode `unknown`.
    pub min_samples: u64,
}

impl Default for ClockConfig {
    fn default() -> Self {
        Self {
            max_lines: 32,
            window_ns: 300_000_000_000,
            jitter_ns: 5_000_000,
            max_skew_ppm: 100.0,
            near_ns: 500_000_000,
            near_rate_ppm: 100_000.0,
            skew_guard_ppm: None,
            min_samples: 4,
        }
    }
}

impl ClockConfig {
    fn tolerance(&self) -> Tolerance {
        Tolerance {
            jitter_s: self.jitter_ns as f64 * 1e-9,
            skew: self.max_skew_ppm * 1e-6,
            near_s: self.near_ns as f64 * 1e-9,
            near_rate: self.near_rate_ppm * 1e-6,
        }
    }
}

/// How the senders behind the IP choose TSval offsets, as far as the SYNs tell.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum OffsetMode {
    /// One offset per host: SYNs from many ports share few lines.
    PerHost,
    /// One offset per 4-tuple: nearly every source port has its own line.
    PerTuple,
    /// Too few SYNs, or the evidence is mixed.
    Unknown,
}

impl OffsetMode {
    pub fn as_str(self) -> &'static str {
        match self {
            OffsetMode::PerHost => "per_host",
            OffsetMode::PerTuple => "per_tuple",
            OffsetMode::Unknown => "unknown",
        }
    }
}

/// The estimate for one source IP; see the module documentation for what each mode means.
#[derive(Clone, Copy, Debug, Serialize)]
pub struct ClockEstimate {
    /// Best estimate of the distinct clocks (TSval lines) seen within the window.
    pub clocks: u32,
    /// Plausible range: at least this many (provably, in `per_tuple` and `unknown`).
    pub clocks_low: u32,
    /// Plausible range: at most this many (`u32::MAX`: no useful bound).
    pub clocks_high: u32,
    /// 0..1, heuristic: grows with SYNs that confirmed a line, and with a tight range;
    /// scaled by 1 (per host), 0.6 (per 4-tuple) or 0.3 (unknown).
    pub confidence: f64,
    /// Tick rate of the dominant clock, once its SYNs pin one usual rate.
    pub rate_hz: Option<u32>,
    pub mode: OffsetMode,
    /// SYNs behind the estimate (those of the clocks still tracked).
    pub samples: u64,
    /// Source ports (4-tuples) seen with two or more clocks within the window: the reuse
    /// that can trip PAWS.
    pub shared_ports: u32,
}

/// One TSval line on one `(sport, dport)`.
#[derive(Clone, Debug)]
struct Line {
    key: u32,
    cluster: u32,
    /// Where `cluster` was in `clusters` when last seen: checked against its id before use
    /// (see [`ClockEstimator::cluster_of`]).
    cluster_at: u32,
    track: Track,
}

/// Lines that share one offset line across ports (one host, under per-host offsets).
#[derive(Clone, Debug)]
struct Cluster {
    id: u32,
    /// All SYNs of the cluster that fit it (a cross-port line, for the per-host case).
    track: Track,
    /// Ports that joined the cluster, its first included (a port counts again only if it
    /// rejoins after its line went): more than one means SYNs from several ports shared an
    /// offset, the per-host signature. Survives line eviction.
    links: u32,
    /// Lines currently in the cluster.
    lines: u32,
    /// SYNs of the cluster's lines.
    syns: u64,
}

/// Online estimate of the clocks behind one source IP. Memory is bounded by
/// `max_lines` (lines, clusters, and a ring of `4 · max_lines` eviction times).
pub struct ClockEstimator {
    cfg: ClockConfig,
    tol: Tolerance,
    /// `tol`'s bounds per rate, for the quick reject.
    quick: QuickBounds,
    /// No cluster's latest sample is older than this (`u64::MAX` without clusters): with
    /// [`QuickBounds::widest`] it bounds which clusters a new line can join at all, so most
    /// are passed over with one integer compare. Only ever earlier than the truth between
    /// recomputations (a cluster's latest sample only moves later).
    cluster_floor_ns: u64,
    /// Clusters at the floor removed since it was last recomputed (see `remove_line`).
    floor_behind: u32,
    /// Tests only: always test every cluster in full, scan for the oldest line and for a
    /// line's cluster (the reference for the shortcuts).
    #[cfg(test)]
    full_scan: bool,
    lines: Vec<Line>,
    clusters: Vec<Cluster>,
    /// `lines[i].key`, kept beside `lines`: the per-SYN scans for a port and for a cluster in
    /// reach read 4 bytes per entry and vectorize, where walking `lines` and `clusters`
    /// themselves was most of the estimator's cost under churn (a third of the tracer's
    /// CPU). [`ClockEstimator::check_index`] (tests) holds them to the truth.
    line_keys: Vec<u32>,
    /// `lines[i].track.last.t_ns`, kept beside `lines` for the eviction scan, which runs for
    /// every SYN once `max_lines` are tracked (under churn, always): walking `lines` for it
    /// was half of the estimator's cost per SYN.
    line_last_ns: Vec<u64>,
    /// The values of `line_last_ns`, sorted: the oldest line's time is the first, so the
    /// eviction under churn (every SYN, once `max_lines` are tracked) need not scan for it, a
    /// fifth of the estimator's cost per SYN. Under churn a new time goes to the back and the
    /// oldest leaves from the front.
    ages: VecDeque<u64>,
    /// `clusters[j].track.last.tsval`, kept beside `clusters`, for step 2's candidate test.
    cluster_tsvals: Vec<u32>,
    /// Clusters with two lines or more (only their lines are redundant, see `evict_one`).
    multi_clusters: usize,
    next_id: u32,
    /// Latest arrival time seen.
    now_ns: u64,
    /// Last-seen times of clusters evicted for memory, oldest first.
    dropped: VecDeque<u64>,
    /// `dropped` overflowed; until this time the upper bound is unknown.
    dropped_overflow_until: Option<u64>,
    /// Nothing (line or dropped cluster) is older than the window while `now_ns` is at most
    /// this: [`Self::expire`] has nothing to do until then. Never later than the truth (a line
    /// seen again only moves its own expiry later), so skipping the scan changes no result.
    quiet_until: u64,
}

/// Removals of the oldest cluster after which `ClockEstimator::cluster_floor_ns` is recomputed.
const FLOOR_REFRESH: u32 = 8;

/// The track (by index) that takes `s` best: the lowest score, the first of equals; with
/// the rates it was taken under.
fn best_fit<'a>(
    tracks: impl Iterator<Item = (usize, &'a Track)>,
    s: Sample,
    tol: &Tolerance,
    q: &QuickBounds,
) -> Option<(usize, track::RateMask, f64)> {
    tracks
        .filter_map(|(i, t)| t.fit_with(s, tol, q).map(|(m, score)| (i, m, score)))
        .min_by(|a, b| a.2.total_cmp(&b.2))
}

impl ClockEstimator {
    pub fn new(mut cfg: ClockConfig) -> Self {
        cfg.max_lines = cfg.max_lines.max(1);
        Self {
            tol: cfg.tolerance(),
            quick: QuickBounds::new(&cfg.tolerance()),
            cluster_floor_ns: u64::MAX,
            floor_behind: 0,
            #[cfg(test)]
            full_scan: false,
            // Grown as lines come (`grow`), not reserved: most source IPs send a SYN or two.
            lines: Vec::new(),
            clusters: Vec::new(),
            line_keys: Vec::new(),
            line_last_ns: Vec::new(),
            ages: VecDeque::new(),
            cluster_tsvals: Vec::new(),
            multi_clusters: 0,
            next_id: 0,
            now_ns: 0,
            dropped: VecDeque::new(),
            dropped_overflow_until: None,
            quiet_until: u64::MAX,
            cfg,
        }
    }

    /// One SYN with timestamps from this source IP: arrival time (monotonic ns), its TSval,
    /// its source port. Same as [`ClockEstimator::observe_flow`] with destination port 0.
    #[cfg(test)]
    pub fn observe(&mut self, t_ns: u64, tsval: u32, sport: u16) {
        self.observe_flow(t_ns, tsval, sport, 0);
    }

    /// One SYN, with its destination (local) port too: per-4-tuple offsets differ per
    /// destination port, so a client that uses one source port towards two server ports has
    /// two lines there, which must not pass for two clocks.
    pub fn observe_flow(&mut self, t_ns: u64, tsval: u32, sport: u16, dport: u16) {
        let s = Sample { t_ns, tsval };
        self.now_ns = self.now_ns.max(t_ns);
        self.expire();
        let key = u32::from(sport) << 16 | u32::from(dport);
        // Borrowed, not copied: the bounds are 200 bytes, a copy per SYN.
        let (tol, q) = (&self.tol, &self.quick);

        // 0. The TSval a line of this port ended on, again: a SYN retransmitted without a
        // fresh TSval (or seen twice). Same clock; as a sample it would bend the line.
        // The same scan learns whether this port has a line at all: under churn most SYNs
        // come from a port not seen within the window, and steps 1 and 2 then skip a scan.
        let mut own_port = false;
        let mut repeated = None;
        // Whether any line is on this port at all, without a branch per line (it vectorizes).
        let port_seen = self.line_keys.iter().fold(false, |a, &k| a | (k == key));
        if port_seen || !self.shortcuts() {
            for l in self.lines.iter().filter(|l| l.key == key) {
                own_port = true;
                if l.track.last.tsval == tsval {
                    repeated = Some(l.cluster);
                    break;
                }
            }
        }
        if let Some(id) = repeated {
            if let Some(c) = self.clusters.iter_mut().find(|c| c.id == id) {
                c.syns += 1;
            }
            return;
        }

        // 1. A line of this very port: the same clock again (both offset modes agree here).
        let own = if own_port {
            best_fit(
                self.lines
                    .iter()
                    .enumerate()
                    .filter(|(_, l)| l.key == key)
                    .map(|(i, l)| (i, &l.track)),
                s,
                tol,
                q,
            )
        } else {
            None
        };
        if let Some((i, mask, _)) = own {
            self.lines[i].track.push(s, mask);
            let (was, now) = (self.line_last_ns[i], self.lines[i].track.last.t_ns);
            if now != was {
                self.line_last_ns[i] = now;
                Self::forget_age(&mut self.ages, was);
                Self::note_age(&mut self.ages, now);
            }
            if let Some(j) = self.cluster_of(i) {
                let c = &mut self.clusters[j];
                c.syns += 1;
                if let Some((m, _)) = c.track.fit_with(s, tol, q) {
                    c.track.push(s, m);
                    self.cluster_tsvals[j] = c.track.last.tsval;
                }
            }
            return;
        }

        // 2. A new line: does it continue a cluster seen on other ports (per-host offsets)?
        // Clusters whose latest TSval is too far from this one for any rate and gap are
        // passed over first, with one integer compare (`candidates`); under per-4-tuple
        // offsets that is nearly all of them. The others are tested in full, in the same
        // order, so the choice is the one a full scan makes.
        // As (shift, span): the step is in `[-lo, hi]` exactly when `step + lo`, wrapped to
        // 32 bits, is at most `lo + hi` (0 <= lo <= hi < 2^31, so nothing aliases), one
        // unsigned compare per cluster that vectorizes. A window reaching 2^31 (it cannot be
        // wider) is left to the full test.
        let window = self
            .candidates(s)
            .filter(|&(lo, hi)| 0 <= lo && lo <= hi && hi < 1 << 31)
            .map(|(lo, hi)| (lo as u32, (lo + hi) as u32));
        let in_reach = |(shift, span): (u32, u32), last: u32| {
            tsval.wrapping_sub(last).wrapping_add(shift) <= span
        };
        // Under churn no cluster is in reach: one vectorized pass over their TSvals says so.
        let any_in_reach = window.is_none_or(|w| {
            self.cluster_tsvals
                .iter()
                .fold(false, |a, &last| a | in_reach(w, last))
        });
        let best = if any_in_reach {
            best_fit(
                self.clusters
                    .iter()
                    .zip(&self.cluster_tsvals)
                    .enumerate()
                    .filter(|(_, (_, last))| window.is_none_or(|w| in_reach(w, **last)))
                    .map(|(j, (c, _))| (j, &c.track)),
                s,
                tol,
                q,
            )
        } else {
            None
        };
        let (cluster, cluster_at) = match best {
            Some((j, mask, _)) => {
                let id = self.clusters[j].id;
                let new_port =
                    !own_port || !self.lines.iter().any(|l| l.cluster == id && l.key == key);
                let c = &mut self.clusters[j];
                c.track.push(s, mask);
                c.links = c.links.saturating_add(u32::from(new_port));
                c.lines += 1;
                c.syns += 1;
                self.cluster_tsvals[j] = c.track.last.tsval;
                if c.lines == 2 {
                    self.multi_clusters += 1;
                }
                (id, j)
            }
            None => {
                let id = self.next_id;
                self.next_id = self.next_id.wrapping_add(1);
                if self.clusters.len() == self.clusters.capacity() {
                    // As for lines (`grow`): doubling, from one.
                    let more = self.clusters.len().max(1);
                    self.clusters.reserve_exact(more);
                    self.cluster_tsvals.reserve_exact(more);
                }
                self.clusters.push(Cluster {
                    id,
                    track: Track::new(s),
                    links: 1,
                    lines: 1,
                    syns: 1,
                });
                self.cluster_tsvals.push(tsval);
                self.cluster_floor_ns = self.cluster_floor_ns.min(s.t_ns);
                (id, self.clusters.len() - 1)
            }
        };
        if self.lines.len() == self.lines.capacity() {
            self.grow();
        }
        self.lines.push(Line {
            key,
            cluster,
            cluster_at: cluster_at as u32,
            track: Track::new(s),
        });
        self.line_keys.push(key);
        self.line_last_ns.push(s.t_ns);
        Self::note_age(&mut self.ages, s.t_ns);
        self.quiet_until = self.quiet_until.min(self.expiry_of(s.t_ns));
        if self.lines.len() > self.cfg.max_lines {
            self.evict_one();
        }
    }

    /// Room for twice the lines (`lines` and its three companions hold one entry per line),
    /// never more than `max_lines + 1` (one is pushed before an eviction). Reserving all of
    /// them for every source IP cost about 4 KB each: 300 MB at the default `--capacity`.
    #[cold]
    fn grow(&mut self) {
        let len = self.lines.len();
        let more = (2 * len).clamp(2, self.cfg.max_lines + 1).max(len + 1) - len;
        self.lines.reserve_exact(more);
        self.line_keys.reserve_exact(more);
        self.line_last_ns.reserve_exact(more);
        self.ages.reserve_exact(more);
    }

    /// Index in `clusters` of line `i`'s cluster: where it was last seen, else found by id.
    fn cluster_of(&self, i: usize) -> Option<usize> {
        let line = &self.lines[i];
        let at = line.cluster_at as usize;
        if self.shortcuts() && self.clusters.get(at).is_some_and(|c| c.id == line.cluster) {
            return Some(at);
        }
        self.clusters.iter().position(|c| c.id == line.cluster)
    }

    /// Adds a line's latest time to `ages`, keeping it sorted (at the back when it is the
    /// newest, as it is unless SYNs come out of order).
    fn note_age(ages: &mut VecDeque<u64>, t_ns: u64) {
        if ages.back().is_none_or(|&b| b <= t_ns) {
            ages.push_back(t_ns);
        } else {
            let at = ages.partition_point(|&x| x <= t_ns);
            ages.insert(at, t_ns);
        }
    }

    /// Removes one copy of a line's former latest time from `ages` (at the front when the
    /// oldest line goes, as under churn).
    fn forget_age(ages: &mut VecDeque<u64>, t_ns: u64) {
        if ages.front() == Some(&t_ns) {
            ages.pop_front();
        } else if let Ok(at) = ages.binary_search(&t_ns) {
            ages.remove(at);
        }
    }

    /// Whether the scans may take their shortcuts (tests compare with an estimator that does
    /// not: `full_scan`).
    #[inline]
    fn shortcuts(&self) -> bool {
        #[cfg(test)]
        if self.full_scan {
            return false;
        }
        true
    }

    /// Tests: the hot copies beside `lines` and `clusters` match them.
    #[cfg(test)]
    pub(crate) fn check_index(&self) {
        let keys: Vec<u32> = self.lines.iter().map(|l| l.key).collect();
        assert_eq!(self.line_keys, keys, "line keys out of step");
        let last: Vec<u64> = self.lines.iter().map(|l| l.track.last.t_ns).collect();
        assert_eq!(self.line_last_ns, last, "line times out of step");
        let mut sorted = last;
        sorted.sort_unstable();
        assert!(self.ages.iter().eq(&sorted), "line ages out of step");
        let tsvals: Vec<u32> = self.clusters.iter().map(|c| c.track.last.tsval).collect();
        assert_eq!(self.cluster_tsvals, tsvals, "cluster TSvals out of step");
        let multi = self.clusters.iter().filter(|c| c.lines >= 2).count();
        assert_eq!(
            self.multi_clusters, multi,
            "multi-line cluster count out of step"
        );
    }

    /// The TSval steps `[-lo, hi]` from a cluster's latest sample to `s` outside of which
    /// that cluster cannot take `s` (see [`QuickBounds::widest`]), or `None`: test every
    /// cluster. Only for a SYN no older than any sample seen (then every cluster's gap is
    /// between 0 and the gap to the floor); an out-of-order one takes the full scan.
    fn candidates(&self, s: Sample) -> Option<(i64, i64)> {
        #[cfg(test)]
        if self.full_scan {
            return None;
        }
        debug_assert!(
            self.clusters
                .iter()
                .all(|c| c.track.last.t_ns >= self.cluster_floor_ns),
            "cluster floor later than a cluster"
        );
        if s.t_ns < self.now_ns || self.cluster_floor_ns > s.t_ns {
            return None;
        }
        self.quick
            .widest(track::secs(s.t_ns, self.cluster_floor_ns))
    }

    /// The estimate over the window ending at the latest SYN seen.
    pub fn estimate(&self) -> ClockEstimate {
        self.estimate_at(self.now_ns)
    }

    /// The estimate over the window ending at `now_ns` (lines older than the window ignored;
    /// nothing is mutated, so the caller can ask between SYNs).
    pub fn estimate_at(&self, now_ns: u64) -> ClockEstimate {
        estimate::estimate(self, now_ns)
    }

    /// Lines currently tracked.
    #[cfg(test)]
    pub fn lines(&self) -> usize {
        self.lines.len()
    }

    fn alive(&self, last_ns: u64, now_ns: u64) -> bool {
        self.expiry_of(last_ns) >= now_ns
    }

    /// The last `now_ns` at which something last seen at `last_ns` is still alive.
    fn expiry_of(&self, last_ns: u64) -> u64 {
        last_ns.saturating_add(self.cfg.window_ns)
    }

    /// Forgets lines (and emptied clusters) not seen within the window.
    fn expire(&mut self) {
        let now = self.now_ns;
        if now <= self.quiet_until {
            debug_assert!(
                self.lines
                    .iter()
                    .all(|l| self.alive(l.track.last.t_ns, now))
                    && self.dropped.front().is_none_or(|&t| self.alive(t, now)),
                "expiry skipped while something was due"
            );
            return;
        }
        let mut i = 0;
        while i < self.lines.len() {
            if self.alive(self.lines[i].track.last.t_ns, now) {
                i += 1;
            } else {
                self.remove_line(i, false);
            }
        }
        while let Some(&t) = self.dropped.front() {
            if self.alive(t, now) {
                break;
            }
            self.dropped.pop_front();
        }
        // The scan above only ever looks at the front of `dropped`.
        let lines = self.lines.iter().map(|l| self.expiry_of(l.track.last.t_ns));
        let front = self.dropped.front().map(|&t| self.expiry_of(t));
        self.quiet_until = lines.chain(front).min().unwrap_or(u64::MAX);
    }

    /// Makes room for the line just pushed (the last one, never chosen): the least recently
    /// seen line whose cluster has others, else the least recently seen line.
    fn evict_one(&mut self) {
        let newest = self.lines.len() - 1;
        // Runs for every SYN once the table is full, no allocation. Two passes that vectorize
        // (the minimum, then where it first is: ties go to the first line, as `min_by_key`
        // would), where one pass carrying an index did not and was a sixth of the cost per SYN.
        let times = &self.line_last_ns[..newest];
        // The oldest time but the newest line's (which `ages` holds too, usually at the back).
        let min = match (self.ages.front(), self.ages.get(1)) {
            _ if !self.shortcuts() => match times.iter().min() {
                Some(&m) => m,
                None => return,
            },
            (Some(&a), Some(&b)) => {
                if a == self.line_last_ns[newest] {
                    b
                } else {
                    a
                }
            }
            _ => return,
        };
        let Some(first) = times.iter().position(|&t| t == min) else {
            return;
        };
        let multi = |id: u32| self.clusters.iter().any(|c| c.id == id && c.lines >= 2);
        // The oldest line of all, if its cluster has others, is also the oldest redundant one
        // (the usual case: under per-host offsets one cluster holds nearly every line).
        if self.multi_clusters == 0 || multi(self.lines[first].cluster) {
            self.remove_line(first, true);
            return;
        }
        // Otherwise the oldest line whose cluster has others, a cluster looked up only for a
        // line older than the best found so far.
        let mut oldest_redundant: Option<(usize, u64)> = None;
        for (i, l) in self.lines[..newest].iter().enumerate() {
            let t = self.line_last_ns[i];
            if oldest_redundant.is_none_or(|(_, o)| t < o) && multi(l.cluster) {
                oldest_redundant = Some((i, t));
            }
        }
        self.remove_line(oldest_redundant.map_or(first, |(i, _)| i), true);
    }

    /// Removes line `i`; drops its cluster if that was its last line, remembering when the
    /// cluster was last seen if it goes for memory (`evicted`) rather than age.
    fn remove_line(&mut self, i: usize, evicted: bool) {
        let j = self.cluster_of(i);
        let line = self.lines.swap_remove(i);
        self.line_keys.swap_remove(i);
        let last_ns = self.line_last_ns.swap_remove(i);
        Self::forget_age(&mut self.ages, last_ns);
        let Some(j) = j else {
            return;
        };
        self.clusters[j].lines -= 1;
        if self.clusters[j].lines == 1 {
            self.multi_clusters -= 1;
        }
        if self.clusters[j].lines > 0 {
            return;
        }
        let gone = self.clusters.swap_remove(j);
        self.cluster_tsvals.swap_remove(j);
        // The last cluster took its place. Under churn that is the newest, whose one line
        // (the newest too) has just taken line `i`'s place: its hint follows. Other lines of
        // a moved cluster find it by id.
        if let Some(moved) = self.clusters.get(j)
            && let Some(l) = self.lines.get_mut(i)
            && l.cluster == moved.id
        {
            l.cluster_at = j as u32;
        }
        // The floor moves up with the oldest cluster gone, or a floor left behind would soon
        // widen the candidate window to all. But not at once: under per-4-tuple churn every
        // SYN evicts the oldest, and the scan of every cluster was a tenth of the cost per
        // SYN. Left up to `FLOOR_REFRESH` removals behind, the window is wider by what they
        // span (milliseconds under churn); an older floor is still a floor.
        if gone.track.last.t_ns <= self.cluster_floor_ns {
            self.floor_behind += 1;
        }
        if self.floor_behind >= FLOOR_REFRESH || self.clusters.is_empty() {
            self.floor_behind = 0;
            self.cluster_floor_ns = self
                .clusters
                .iter()
                .map(|c| c.track.last.t_ns)
                .min()
                .unwrap_or(u64::MAX);
        }
        if evicted {
            if self.dropped.len() >= 4 * self.cfg.max_lines
                && let Some(old) = self.dropped.pop_front()
            {
                let until = old.saturating_add(self.cfg.window_ns);
                self.dropped_overflow_until =
                    Some(self.dropped_overflow_until.map_or(until, |u| u.max(until)));
            }
            self.dropped.push_back(line.track.last.t_ns);
            self.quiet_until = self.quiet_until.min(self.expiry_of(line.track.last.t_ns));
        }
    }
}
