//! Per source IP: PAWS rejects by path, how far behind the rejected clocks were, SYNs and their
//! timestamps, what TIME-WAIT sockets did with SYNs, how many clocks sit behind the IP, and
//! the reject rate those clocks predict next to the one observed.
//!
//! Knows nothing of the kernel: it reads [`Record`]s. Bounded: an LRU of source IPs.

use std::{
    collections::{BinaryHeap, VecDeque},
    net::IpAddr,
    num::NonZeroUsize,
};

use serde::Serialize;

use super::clocks::{ClockConfig, ClockEstimate, ClockEstimator};
use crate::event::{PawsPath, Record, TwSynVerdict, What, regression, th};

/// "Would the old per-host rule (tcp_tw_recycle, removed in 4.12) have rejected this SYN?" It
/// compared a SYN's TSval with the highest one seen from that host in the last 60 s.
const PER_HOST_WINDOW_NS: u64 = 60_000_000_000;
/// Time constant of the rate estimates (exponentially decaying counts).
const RATE_TAU_S: f64 = 10.0;
/// How long after its last count a rate still moves: 20 time constants, e^-20 (2e-9) of
/// where it was.
const RATES_SETTLE_NS: u64 = 20 * RATE_TAU_S as u64 * 1_000_000_000;

/// `e^-x` for `x >= 0`. Under churn a rate is bumped every few microseconds, `x` ~1e-7: there
/// the series to x² is within x³/6 (< 2e-10) of it at a fraction of `exp`'s cost, which
/// was paid for every SYN that replaced a TIME-WAIT.
fn decay(x: f64) -> f64 {
    if x < 1e-3 {
        1.0 - x * (1.0 - 0.5 * x)
    } else {
        (-x).exp()
    }
}

/// An exponentially decaying event count: `value / tau` is a rate that follows changes within
/// a few tau and needs no per-second buckets.
#[derive(Clone, Copy, Debug, Default)]
struct DecayingRate {
    value: f64,
    at_ns: u64,
}

impl DecayingRate {
    fn decayed(&self, now_ns: u64) -> f64 {
        let dt = now_ns.saturating_sub(self.at_ns) as f64 / 1e9;
        self.value * decay(dt / RATE_TAU_S)
    }

    fn add(&mut self, now_ns: u64) {
        self.value = self.decayed(now_ns) + 1.0;
        self.at_ns = self.at_ns.max(now_ns);
    }

    fn per_second(&self, now_ns: u64) -> f64 {
        self.decayed(now_ns) / RATE_TAU_S
    }
}

/// Signed regression statistics (ts_recent − TSval, timestamp ticks) of rejected segments.
#[derive(Clone, Copy, Debug, Default, Serialize, PartialEq)]
pub struct RegressionStats {
    pub count: u64,
    pub min: Option<i64>,
    pub max: Option<i64>,
    pub mean: Option<f64>,
    /// Counts of |regression| by order of magnitude: <10, <100, <1e3, ..., >=1e9 ticks.
    pub log10_buckets: [u64; 10],
    #[serde(skip)]
    sum: i128,
}

impl RegressionStats {
    fn record(&mut self, r: i64) {
        self.count += 1;
        self.sum += i128::from(r);
        self.min = Some(self.min.map_or(r, |m| m.min(r)));
        self.max = Some(self.max.map_or(r, |m| m.max(r)));
        self.mean = Some(self.sum as f64 / self.count as f64);
        let mag = r.unsigned_abs().max(1).ilog10() as usize;
        self.log10_buckets[mag.min(9)] += 1;
    }
}

/// Everything known about one source IP.
struct Source {
    rejects: [u64; 4],
    /// Old ACKs dropped by PAWS (6.14+), apart from `rejects` as the kernel counts them.
    old_acks: u64,
    regression: RegressionStats,
    syns: u64,
    syns_without_ts: u64,
    backward_syns: u64,
    /// Highest TSval seen from this IP and when (for the per-host rule).
    highest: Option<(u32, u64)>,
    tw_syn: [u64; 4],
    clocks: ClockEstimator,
    /// The last estimate; recomputed only after new SYNs (it costs up to tens of µs).
    estimate: Option<ClockEstimate>,
    observed: DecayingRate,
    tw_syn_rate: DecayingRate,
    last_ns: u64,
    /// Ports a TIME-WAIT refused an older SYN on, with when: see [`RejectProof`].
    proofs: RejectProof,
}

/// A SYN refused by PAWS at a TIME-WAIT, confirmed, proves two TSval lines on its 4-tuple:
/// the TIME-WAIT's ts_recent, from the clock that made it, and the older TSvals of a clock that
/// is still sending. The estimator finds the same when it holds both lines, but the line of
/// the clock that made the TIME-WAIT is sampled once, by its SYN, and under churn of new ports
/// (a line each with per-4-tuple offsets) it leaves the estimator's memory within seconds
/// while the rejects go on (audit: `clocks 1`, `NAT no` at 3.9 rejects/s).
///
/// One refused SYN alone proves nothing: a delayed duplicate of the connection's own first SYN
/// is refused the same way. Confirmed by what a live client behind does next, within
/// [`RejectProof::FOLLOW_NS`] on the same port: with `tcp_rfc1337` 0 (the default) the
/// TIME-WAIT's ACK draws the client's reset, which kills it, and the client's retransmitted
/// SYN reaches the listener, its fresh TSval still behind ts_recent; with `tcp_rfc1337` 1 the
/// TIME-WAIT lives on and refuses the retransmit too (another TSval). Kept per port for the
/// estimator's window (against the source's latest record), at most [`RejectProof::MAX`]
/// ports, unconfirmed ones going first.
#[derive(Default)]
struct RejectProof {
    ports: VecDeque<Refused>,
}

/// The latest SYN refused on one port.
#[derive(Clone, Copy)]
struct Refused {
    t_ns: u64,
    sport: u16,
    dport: u16,
    tsval: u32,
    ts_recent: u32,
    proven: bool,
}

impl RejectProof {
    const MAX: usize = 64;
    /// SYN retransmits come 1, 3, 7 s ... after the first (and on): what follows a reject
    /// within this is the same attempt going on.
    const FOLLOW_NS: u64 = 60_000_000_000;

    fn at(&self, sport: u16, dport: u16) -> Option<usize> {
        (self.ports.iter()).position(|r| (r.sport, r.dport) == (sport, dport))
    }

    /// A SYN refused at `t_ns`, TSval `tsval`, by a TIME-WAIT with `ts_recent`; whether its
    /// port is proven now.
    fn refused(&mut self, t_ns: u64, sport: u16, dport: u16, tsval: u32, ts_recent: u32) -> bool {
        let earlier = self.at(sport, dport).and_then(|i| self.ports.remove(i));
        let follows = earlier.filter(|e| t_ns.saturating_sub(e.t_ns) <= Self::FOLLOW_NS);
        let proven = follows.is_some_and(|e| e.proven || e.tsval != tsval);
        if earlier.is_none() && self.ports.len() >= Self::MAX {
            let i = self.ports.iter().position(|r| !r.proven).unwrap_or(0);
            self.ports.remove(i);
        }
        self.ports.push_back(Refused {
            t_ns,
            sport,
            dport,
            tsval,
            ts_recent,
            proven,
        });
        proven
    }

    /// A SYN that reached a listener: it confirms a reject on its port it follows, if its own
    /// fresh TSval is still behind that TIME-WAIT's ts_recent (the same clock, behind, live).
    fn reached(&mut self, t_ns: u64, sport: u16, dport: u16, tsval: u32) {
        if self.ports.is_empty() {
            return; // the usual case
        }
        if let Some(i) = self.at(sport, dport) {
            let r = &mut self.ports[i];
            let follows = t_ns.saturating_sub(r.t_ns) <= Self::FOLLOW_NS;
            if follows && tsval != r.tsval && regression(r.ts_recent, tsval) > 1 {
                r.proven = true;
            }
        }
    }

    /// Ports proven within `window_ns` of `now_ns`.
    fn within(&self, now_ns: u64, window_ns: u64) -> u32 {
        let fresh =
            (self.ports.iter()).filter(|r| r.proven && now_ns.saturating_sub(r.t_ns) <= window_ns);
        fresh.count() as u32
    }
}

impl Source {
    fn new(cfg: &ClockConfig) -> Self {
        Self {
            rejects: [0; 4],
            old_acks: 0,
            regression: RegressionStats::default(),
            syns: 0,
            syns_without_ts: 0,
            backward_syns: 0,
            highest: None,
            tw_syn: [0; 4],
            clocks: ClockEstimator::new(cfg.clone()),
            estimate: None,
            observed: DecayingRate::default(),
            tw_syn_rate: DecayingRate::default(),
            last_ns: 0,
            proofs: RejectProof::default(),
        }
    }

    fn clock_sample(&mut self, t_ns: u64, tsval: u32, sport: u16, dport: u16) {
        self.clocks.observe_flow(t_ns, tsval, sport, dport);
        self.estimate = None;
    }

    fn syn(&mut self, t_ns: u64, tsval: Option<u32>, sport: u16, dport: u16) {
        self.syns += 1;
        let Some(tsval) = tsval else {
            // No timestamp option: PAWS cannot check it, and it tells nothing of clocks.
            self.syns_without_ts += 1;
            return;
        };
        self.proofs.reached(t_ns, sport, dport, tsval);
        match self.highest {
            Some((high, at)) if t_ns.saturating_sub(at) <= PER_HOST_WINDOW_NS => {
                if (high.wrapping_sub(tsval) as i32) > 0 {
                    self.backward_syns += 1;
                } else {
                    self.highest = Some((tsval, t_ns));
                }
            }
            _ => self.highest = Some((tsval, t_ns)),
        }
        self.clock_sample(t_ns, tsval, sport, dport);
    }
}

/// One source IP, as sinks and exports see it.
#[derive(Clone, Debug, Serialize)]
pub struct SourceRow {
    pub ip: IpAddr,
    pub rejects: RejectsByPath,
    pub rejects_total: u64,
    /// Late pure ACKs dropped by PAWS (TcpExtPAWSOldAck, 6.14+):
    /// reordering, not rejects; in no other field.
    pub old_acks: u64,
    pub regression: RegressionStats,
    pub syns: u64,
    pub syns_without_ts: u64,
    pub backward_syns: u64,
    pub tw_syns: TwSynCounts,
    pub clocks: u32,
    pub clocks_low: u32,
    pub clocks_high: u32,
    pub clock_confidence: f64,
    pub clock_mode: &'static str,
    pub clock_rate_hz: Option<u32>,
    /// Source ports (4-tuples) seen with two or more clocks: the reuse that trips PAWS.
    pub shared_ports: u32,
    pub nat_suspected: bool,
    /// The second clock is known only from rejects at a TIME-WAIT (see `RejectProof`), not
    /// from the estimator's lines: NAT, or one client whose clock went back. Not in the file.
    #[serde(skip)]
    pub clocks_from_rejects: bool,
    pub predicted_rejects_per_s: f64,
    pub observed_rejects_per_s: f64,
}

#[derive(Clone, Copy, Debug, Serialize)]
pub struct RejectsByPath {
    pub timewait: u64,
    pub established: u64,
    pub syn_recv: u64,
    pub syn_sent: u64,
}

#[derive(Clone, Copy, Debug, Serialize)]
pub struct TwSynCounts {
    pub accepted_by_timestamp: u64,
    pub accepted_by_sequence: u64,
    pub rejected_paws: u64,
    pub rejected_other: u64,
}

/// Chance that a SYN hitting a TIME-WAIT 4-tuple is PAWS-rejected when `k` unrelated clocks
/// share the IP: the SYN comes from another clock than the one that left the TIME-WAIT with
/// probability 1 − 1/k, and that clock is behind half of the time.
pub fn reject_probability(k: u32) -> f64 {
    if k <= 1 {
        0.0
    } else {
        (1.0 - 1.0 / f64::from(k)) / 2.0
    }
}

pub struct PawsTable {
    by_ip: super::Lru<IpAddr, Source>,
    capacity: usize,
    cfg: ClockConfig,
    pub evictions: u64,
    /// Rejects and old ACKs of every source IP ever seen, evicted ones included.
    rejects_total: u64,
    old_acks_total: u64,
    /// Records counted so far: unchanged, nothing but the rates' decay moved since it was read.
    changes: u64,
    /// The latest time of a counted record.
    last_ns: u64,
}

impl PawsTable {
    pub fn new(capacity: usize, cfg: ClockConfig) -> Self {
        Self {
            by_ip: super::lru(NonZeroUsize::new(capacity).unwrap_or(NonZeroUsize::MIN)),
            capacity: capacity.max(1),
            cfg,
            evictions: 0,
            rejects_total: 0,
            old_acks_total: 0,
            changes: 0,
            last_ns: 0,
        }
    }

    fn source(&mut self, ip: IpAddr) -> &mut Source {
        // A SYN and its verdict come from one IP: the second finds it without a lookup.
        if super::is_newest(&self.by_ip, &ip) {
            return super::newest(&mut self.by_ip).expect("the newest entry was just seen");
        }
        // One lookup: a new source evicts the least recent one when the table is full.
        let full = self.by_ip.len() >= self.capacity;
        let mut created = false;
        let cfg = &self.cfg;
        let s = self
            .by_ip
            .get_or_insert(ip, || {
                created = true;
                Source::new(cfg)
            })
            .expect("a length-limited map always takes a new key");
        if created && full {
            self.evictions += 1;
        }
        s
    }

    /// Counts one record (others than PAWS, SYN and TIME-WAIT SYN verdicts are ignored).
    pub fn apply(&mut self, rec: &Record) {
        let t = rec.ts_ns;
        let ip = rec.remote.ip();
        match rec.what {
            What::PawsReject { old_ack: true, .. } => {
                // Reordered ACKs say nothing of clocks: counted, nothing more.
                self.old_acks_total += 1;
                let s = self.source(ip);
                s.last_ns = t;
                s.old_acks += 1;
            }
            What::PawsReject {
                path,
                tsval,
                ts_recent,
                tcp_flags,
                old_ack: false,
            } => {
                self.rejects_total += 1;
                let s = self.source(ip);
                s.last_ns = t;
                s.rejects[path_index(path)] += 1;
                let (sport, dport) = (rec.remote.port(), rec.local.port());
                let mut sample = true;
                if let (Some(tv), Some(tr)) = (tsval, ts_recent) {
                    let behind = regression(tr, tv);
                    s.regression.record(behind);
                    // A pure SYN (no ACK, no RST), more than a tick behind (a margin). Its
                    // TSval is a clock sample only once confirmed (see `RejectProof`): beside
                    // the line of the clock that made the TIME-WAIT, one unconfirmed would make
                    // two lines on one port of a delayed duplicate of that clock's own SYN.
                    if path == PawsPath::Timewait
                        && behind > 1
                        && tcp_flags & (th::SYN | th::ACK | th::RST) == th::SYN
                    {
                        sample = s.proofs.refused(t, sport, dport, tv, tr);
                    }
                }
                // A rejected SYN never reaches a listener, but its clock is as real as any:
                // behind a NAT it is often the only sample of the clock that is behind.
                if let Some(tv) = tsval
                    && tcp_flags & (th::SYN | th::ACK) == th::SYN
                    && sample
                {
                    s.clock_sample(t, tv, sport, dport);
                }
                if path == PawsPath::Timewait {
                    s.observed.add(t);
                }
            }
            What::Syn { tsval } => {
                let s = self.source(ip);
                s.last_ns = t;
                s.syn(t, tsval, rec.remote.port(), rec.local.port());
            }
            What::TwSyn {
                verdict,
                tsval,
                ts_recent,
            } => {
                let s = self.source(ip);
                s.last_ns = t;
                s.tw_syn[verdict_index(verdict)] += 1;
                // Only a SYN PAWS can judge counts toward the prediction: one without
                // timestamps, or at a TIME-WAIT that kept none, cannot be rejected by it.
                if paws_checkable(verdict, tsval, ts_recent) {
                    s.tw_syn_rate.add(t);
                }
            }
            _ => return,
        }
        self.changes += 1;
        self.last_ns = self.last_ns.max(t);
    }

    /// How many records have been counted: a sink that last read the table at the same count
    /// has nothing new to show but the rates' decay (see [`PawsTable::settled_at`]).
    pub fn changes(&self) -> u64 {
        self.changes
    }

    /// From when on the rates stand still (to 2e-9 of their value) if nothing more is counted;
    /// `None` while nothing was.
    pub fn settled_at(&self) -> Option<u64> {
        (self.changes > 0).then(|| self.last_ns.saturating_add(RATES_SETTLE_NS))
    }

    /// Every tracked source IP, most rejects first.
    pub fn rows(&mut self, now_ns: u64) -> Vec<SourceRow> {
        let window_ns = self.cfg.window_ns;
        let mut rows: Vec<SourceRow> = self
            .by_ip
            .iter_mut()
            .map(|(ip, s)| {
                let est = *s.estimate.get_or_insert_with(|| s.clocks.estimate());
                row(*ip, s, &est, now_ns, window_ns)
            })
            .collect();
        rows.sort_by(by_rank);
        rows
    }

    /// What an interval shows and checks without a row per source IP (a clock estimate and a
    /// row for each of 65536 IPs took ~60-100 ms): the totals over all of them, and rows for the
    /// `top` first in [`PawsTable::rows`]' order and for those with at least `alert_at`
    /// rejects at TIME-WAIT.
    pub fn view(&mut self, now_ns: u64, top: usize, alert_at: Option<u64>) -> PawsView {
        let mut view = PawsView {
            sources: self.by_ip.len(),
            rejects_total: self.rejects_total,
            old_acks_total: self.old_acks_total,
            ..PawsView::default()
        };
        // One walk over the sources (at tens of thousands, a walk is tens of ms of cache
        // misses): the totals, the best `top` in a heap whose head is the worst kept, and the
        // IPs due an alert check; their rows after, by lookup.
        let mut best: BinaryHeap<Ranked> = BinaryHeap::with_capacity(top + 1);
        let mut alerting = Vec::new();
        for (ip, s) in self.by_ip.iter() {
            let rejects = s.rejects.iter().sum();
            let key = Ranked((rejects, s.syns, *ip));
            if best.len() < top {
                best.push(key);
            } else if best.peek().is_some_and(|worst| key < *worst) {
                best.pop();
                best.push(key);
            }
            if alert_at.is_some_and(|at| s.rejects[0] >= at) {
                alerting.push(*ip);
            }
        }
        let window_ns = self.cfg.window_ns;
        let mut row_of = |ip: IpAddr| {
            let s = self.by_ip.peek_mut(&ip)?;
            let est = *s.estimate.get_or_insert_with(|| s.clocks.estimate());
            Some(row(ip, s, &est, now_ns, window_ns))
        };
        view.top = best.into_iter().filter_map(|k| row_of(k.0.2)).collect();
        // An IP both shown and due a check: its row once, copied.
        view.alerting = (alerting.into_iter())
            .filter_map(|ip| match view.top.iter().find(|r| r.ip == ip) {
                Some(r) => Some(r.clone()),
                None => row_of(ip),
            })
            .collect();
        view.top.sort_by(by_rank);
        view.alerting.sort_by(by_rank);
        view
    }

    /// Rejects and old ACKs of every source IP seen, those evicted since included.
    pub fn totals(&self) -> (u64, u64) {
        (self.rejects_total, self.old_acks_total)
    }

    /// Source IPs tracked (tests).
    #[cfg(test)]
    pub fn sources(&self) -> usize {
        self.by_ip.len()
    }
}

/// Rejects, SYNs, IP: what rows are ranked by.
type RankKey = (u64, u64, IpAddr);

/// A [`RankKey`] ordered by [`rank`]: the greatest is the one ranked last.
#[derive(PartialEq, Eq)]
struct Ranked(RankKey);

impl Ord for Ranked {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        rank(self.0, other.0)
    }
}

impl PartialOrd for Ranked {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

/// Most rejects first, then most SYNs, then by IP.
fn rank(a: RankKey, b: RankKey) -> std::cmp::Ordering {
    b.0.cmp(&a.0).then(b.1.cmp(&a.1)).then(a.2.cmp(&b.2))
}

/// [`rank`] of two rows.
fn by_rank(a: &SourceRow, b: &SourceRow) -> std::cmp::Ordering {
    rank(
        (a.rejects_total, a.syns, a.ip),
        (b.rejects_total, b.syns, b.ip),
    )
}

/// See [`PawsTable::view`].
#[derive(Clone, Debug, Default)]
pub struct PawsView {
    /// Source IPs tracked.
    pub sources: usize,
    /// Over every source IP seen, those evicted since included.
    pub rejects_total: u64,
    pub old_acks_total: u64,
    /// The first rows of [`PawsTable::rows`].
    pub top: Vec<SourceRow>,
    /// The rows with at least the alert threshold of rejects at TIME-WAIT, in the same order.
    pub alerting: Vec<SourceRow>,
}

impl PawsView {
    /// The same view taken from every row (when a summary needs them all anyway), with the
    /// table's [`PawsTable::totals`].
    pub fn of(rows: &[SourceRow], totals: (u64, u64), top: usize, alert_at: Option<u64>) -> Self {
        Self {
            sources: rows.len(),
            rejects_total: totals.0,
            old_acks_total: totals.1,
            top: rows.iter().take(top).cloned().collect(),
            alerting: (rows.iter())
                .filter(|r| alert_at.is_some_and(|at| r.rejects.timewait >= at))
                .cloned()
                .collect(),
        }
    }
}

/// `window_ns`: the clock estimator's window, for which a reject's proof holds too.
fn row(ip: IpAddr, s: &Source, est: &ClockEstimate, now_ns: u64, window_ns: u64) -> SourceRow {
    // Rejects at TIME-WAIT proved two lines on their ports, whether or not the estimator
    // still holds both (see `RejectProof`).
    let proven = s.proofs.within(s.last_ns, window_ns);
    let floor = if proven > 0 { 2 } else { 0 };
    let k = est.clocks.max(floor);
    SourceRow {
        ip,
        rejects: RejectsByPath {
            timewait: s.rejects[0],
            established: s.rejects[1],
            syn_recv: s.rejects[2],
            syn_sent: s.rejects[3],
        },
        rejects_total: s.rejects.iter().sum(),
        old_acks: s.old_acks,
        regression: s.regression,
        syns: s.syns,
        syns_without_ts: s.syns_without_ts,
        backward_syns: s.backward_syns,
        tw_syns: TwSynCounts {
            accepted_by_timestamp: s.tw_syn[0],
            accepted_by_sequence: s.tw_syn[1],
            rejected_paws: s.tw_syn[2],
            rejected_other: s.tw_syn[3],
        },
        clocks: k,
        clocks_low: est.clocks_low.max(floor),
        clocks_high: est.clocks_high.max(k),
        clock_confidence: est.confidence,
        clock_mode: est.mode.as_str(),
        clock_rate_hz: est.rate_hz,
        shared_ports: est.shared_ports.max(proven),
        nat_suspected: k >= 2,
        clocks_from_rejects: floor > est.clocks,
        predicted_rejects_per_s: s.tw_syn_rate.per_second(now_ns) * reject_probability(k),
        observed_rejects_per_s: s.observed.per_second(now_ns),
    }
}

fn path_index(p: PawsPath) -> usize {
    PawsPath::ALL.iter().position(|x| *x == p).unwrap_or(0)
}

fn paws_checkable(v: TwSynVerdict, tsval: Option<u32>, ts_recent: Option<u32>) -> bool {
    v == TwSynVerdict::RejectedPaws || (tsval.is_some() && ts_recent.is_some())
}

fn verdict_index(v: TwSynVerdict) -> usize {
    TwSynVerdict::ALL.iter().position(|x| *x == v).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(ip: &str, port: u16, t_s: f64, what: What) -> Record {
        Record {
            ts_ns: (t_s * 1e9) as u64,
            netns: 1,
            local: "10.0.0.1:80".parse().unwrap(),
            remote: std::net::SocketAddr::new(ip.parse().unwrap(), port),
            what,
        }
    }

    fn table() -> PawsTable {
        PawsTable::new(8, ClockConfig::default())
    }

    /// A SYN from 192.0.2.9:`port` with `tsval`, refused by PAWS at a TIME-WAIT with `ts_recent`.
    fn refused_at(port: u16, t_s: f64, tsval: u32, ts_recent: Option<u32>) -> Record {
        let what = What::PawsReject {
            path: PawsPath::Timewait,
            tsval: Some(tsval),
            ts_recent,
            tcp_flags: th::SYN,
            old_ack: false,
        };
        rec("192.0.2.9", port, t_s, what)
    }

    /// Two clients behind a NAT with per-4-tuple offsets: a TIME-WAIT made by one (its SYN
    /// sampled once), then churn from new ports (a line each) pushes that line out of the
    /// estimator's memory while the other client's SYNs on the TIME-WAIT's port are refused
    /// again and again. Those rejects prove two lines on that port: two clocks, NAT suspected,
    /// the port shared, for the estimator's window (audit: `clocks 1`, `NAT no`, under churn).
    /// One refused SYN alone (a delayed duplicate would be), or rejects carrying no
    /// ts_recent, prove nothing.
    #[test]
    fn rejects_at_a_time_wait_prove_two_clocks_under_churn() {
        let mut t = table();
        let ip = "192.0.2.9";
        let syn = |port, t_s: f64, tsval| rec(ip, port, t_s, What::Syn { tsval: Some(tsval) });
        t.apply(&syn(40_000, 0.0, 1_000_000));
        // Churn: 200 new ports, unrelated offsets (the 1 kHz clock of each 4-tuple).
        for k in 0..200u32 {
            let t_s = 1.0 + f64::from(k) * 0.05;
            let offset = k.wrapping_mul(2_654_435_761);
            let tsval = offset.wrapping_add((t_s * 1000.0) as u32);
            t.apply(&syn(41_000 + k as u16, t_s, tsval));
        }
        let reject = |t_s, tsval, ts_recent| refused_at(40_000, t_s, tsval, ts_recent);
        let at = |t_s: f64| (t_s * 1e9) as u64;
        for (t_s, tsval) in [(12.0, 5_000), (13.0, 6_000)] {
            t.apply(&reject(t_s, tsval, None));
        }
        let r = t.rows(at(13.0)).remove(0);
        assert_eq!(
            (r.clocks, r.nat_suspected),
            (1, false),
            "no ts_recent: {r:?}"
        );
        t.apply(&reject(14.0, 7_000, Some(1_001_000)));
        let r = t.rows(at(14.0)).remove(0);
        assert_eq!((r.clocks, r.nat_suspected), (1, false), "one alone: {r:?}");
        t.apply(&reject(15.0, 8_000, Some(1_001_000)));
        let r = t.rows(at(15.0)).remove(0);
        assert!(
            r.clocks >= 2 && r.clocks_low >= 2 && r.clocks_high >= r.clocks,
            "{r:?}"
        );
        assert!(r.nat_suspected && r.shared_ports >= 1, "{r:?}");
        assert!(r.clocks_from_rejects, "{r:?}");
        // The proof ages with the source's records, as the estimate does: a quiet IP keeps
        // it; a record past the window ends it.
        let window_s = ClockConfig::default().window_ns as f64 / 1e9;
        assert!(t.rows(at(15.0 + 2.0 * window_s)).remove(0).nat_suspected);
        t.apply(&syn(50_000, 17.0 + window_s, 9));
        let r = t.rows(at(17.0 + window_s)).remove(0);
        assert!(!r.clocks_from_rejects && r.shared_ports == 0, "{r:?}");
    }

    /// What confirms a refused SYN, on its port and soon after it: the client's retransmit
    /// reaching the listener with a TSval still behind the TIME-WAIT's ts_recent (the default
    /// `tcp_rfc1337` 0: the client's reset killed the TIME-WAIT), or another refused one with
    /// another TSval. Not: a repeat of the same TSval, a SYN ahead of ts_recent, one on another
    /// port, or one that comes after the attempt is over.
    #[test]
    fn a_refused_syn_is_confirmed_by_what_follows_it() {
        let ip = "192.0.2.9";
        let refused = |port, t_s, tsval| refused_at(port, t_s, tsval, Some(1_000_000));
        let reached = |port, t_s, tsval| rec(ip, port, t_s, What::Syn { tsval: Some(tsval) });
        let proven = |follow: &[Record]| {
            let mut t = table();
            t.apply(&refused(40_000, 10.0, 5_000));
            for r in follow {
                t.apply(r);
            }
            t.rows(100_000_000_000).remove(0).clocks_from_rejects
        };
        assert!(
            proven(&[reached(40_000, 11.0, 6_000)]),
            "the retransmit, behind"
        );
        assert!(proven(&[refused(40_000, 11.0, 6_000)]), "refused again");
        assert!(!proven(&[]), "alone");
        assert!(
            !proven(&[refused(40_000, 11.0, 5_000)]),
            "the same TSval again"
        );
        assert!(
            !proven(&[reached(40_000, 11.0, 1_000_500)]),
            "ahead of ts_recent"
        );
        assert!(!proven(&[reached(40_001, 11.0, 6_000)]), "another port");
        assert!(
            !proven(&[reached(40_000, 80.0, 6_000)]),
            "after the attempt"
        );
        assert!(!proven(&[refused(40_000, 80.0, 6_000)]), "another attempt");
    }

    /// Without churn the line of the clock that made the TIME-WAIT is still held: one refused
    /// SYN alone (a delayed duplicate of that clock's own first SYN) is not a second line on
    /// its port (audit: it read `clocks 2`, `NAT yes` for good on a quiet IP). Confirmed, it is.
    #[test]
    fn a_lone_refused_syn_beside_the_time_waits_own_line_is_no_second_clock() {
        let ip = "192.0.2.9";
        let mut t = table();
        t.apply(&rec(
            ip,
            40_000,
            10.0,
            What::Syn {
                tsval: Some(1_000_000),
            },
        ));
        let refused = |t_s, tsval| refused_at(40_000, t_s, tsval, Some(1_000_010));
        t.apply(&refused(11.2, 999_997));
        let r = t.rows(12_000_000_000).remove(0);
        assert!(!r.nat_suspected && r.shared_ports == 0, "{r:?}");
        t.apply(&refused(12.2, 500_000));
        let r = t.rows(13_000_000_000).remove(0);
        assert!(r.nat_suspected && r.shared_ports >= 1, "{r:?}");
    }

    /// The series stands in for `exp` only where it agrees to 1e-9, and the two meet at the
    /// switch.
    #[test]
    fn decay_is_exp() {
        for x in [
            0.0_f64, 1e-9, 1e-7, 1e-5, 1e-4, 5e-4, 9.99e-4, 1e-3, 0.1, 1.0, 30.0,
        ] {
            let exact = (-x).exp();
            assert!((decay(x) - exact).abs() <= 1e-9 * exact, "x = {x}");
        }
        // A million bumps a microsecond apart decay as one exp over the second.
        let mut r = DecayingRate::default();
        for i in 0..1_000_000u64 {
            r.add(i * 1_000);
        }
        let exact: f64 = (0..1_000_000u64)
            .map(|i| (-((999_999 - i) as f64 * 1e-6) / RATE_TAU_S).exp())
            .sum();
        assert!(
            (r.value - exact).abs() <= 1e-9 * exact,
            "{} {exact}",
            r.value
        );
    }

    /// The view an interval takes without every row equals the one taken from every row: the
    /// same totals, the same top rows in the same order, the same IPs due an alert check.
    #[test]
    fn the_view_equals_the_one_from_every_row() {
        let mut t = PawsTable::new(64, ClockConfig::default());
        // Up to 40 IPs (those with neither rejects nor SYNs are never made): rejects at
        // TIME-WAIT 0..=4 by IP, SYNs 0..=2, ties broken by IP; old ACKs.
        for i in 0..40u32 {
            let ip = format!("192.0.2.{}", 10 + (i * 7) % 40);
            for _ in 0..i % 5 {
                let what = What::PawsReject {
                    path: PawsPath::Timewait,
                    tsval: Some(900),
                    ts_recent: Some(1000),
                    tcp_flags: 0x02,
                    old_ack: i % 9 == 0,
                };
                t.apply(&rec(&ip, 4000, 1.0, what));
            }
            for k in 0..i % 3 {
                let what = What::Syn {
                    tsval: Some(1000 + k),
                };
                t.apply(&rec(&ip, 4001 + k as u16, 1.0 + f64::from(k), what));
            }
        }
        let ips = |rows: &[SourceRow]| rows.iter().map(|r| r.ip).collect::<Vec<_>>();
        for (top, alert_at) in [
            (0, None),
            (5, Some(3)),
            (12, Some(1)),
            (40, Some(5)),
            (100, None),
        ] {
            let rows = t.rows(5_000_000_000);
            let want = PawsView::of(&rows, t.totals(), top, alert_at);
            let sums = (rows.iter()).fold((0, 0), |(r, o), row| {
                (r + row.rejects_total, o + row.old_acks)
            });
            assert_eq!(t.totals(), sums, "nothing evicted: the rows' sums");
            let got = t.view(5_000_000_000, top, alert_at);
            let what = format!("top {top}, alert at {alert_at:?}");
            assert_eq!(
                (got.sources, got.rejects_total, got.old_acks_total),
                (want.sources, want.rejects_total, want.old_acks_total),
                "{what}"
            );
            assert_eq!(ips(&got.top), ips(&want.top), "{what}");
            assert_eq!(ips(&got.alerting), ips(&want.alerting), "{what}");
            assert_eq!(got.top.len(), top.min(rows.len()), "{what}");
        }
    }

    /// The totals count the rejects of source IPs evicted since, as the kernel's counters do.
    #[test]
    fn totals_outlive_evictions() {
        let mut t = PawsTable::new(2, ClockConfig::default());
        for ip in ["192.0.2.1", "192.0.2.2", "192.0.2.3"] {
            let what = What::PawsReject {
                path: PawsPath::Timewait,
                tsval: Some(900),
                ts_recent: Some(1000),
                tcp_flags: 0x02,
                old_ack: false,
            };
            t.apply(&rec(ip, 4000, 1.0, what));
        }
        assert_eq!((t.sources(), t.evictions), (2, 1));
        assert_eq!(t.totals(), (3, 0));
        let view = t.view(2_000_000_000, 10, None);
        assert_eq!(
            (view.sources, view.rejects_total, view.top.len()),
            (2, 3, 2)
        );
    }

    /// Every record the table counts moves `changes` (a summary file is rewritten only then),
    /// whether it makes a source IP or finds one; others leave it.
    #[test]
    fn changes_count_what_the_table_counts() {
        let mut t = table();
        let reject = What::PawsReject {
            path: PawsPath::Timewait,
            tsval: Some(900),
            ts_recent: Some(1000),
            tcp_flags: 0x02,
            old_ack: false,
        };
        let counted = [
            What::Syn { tsval: Some(1) },
            What::Syn { tsval: Some(2) },
            reject,
        ];
        for (i, what) in counted.into_iter().enumerate() {
            t.apply(&rec("192.0.2.1", 4000, 1.0, what));
            assert_eq!(t.changes(), i as u64 + 1);
        }
        t.apply(&rec("192.0.2.2", 4000, 2.0, What::TwOverflow));
        t.apply(&rec("192.0.2.2", 4000, 2.0, What::Listening));
        assert_eq!((t.changes(), t.sources()), (3, 1));
        // The rates of the last count (1 s) decay for 200 s more.
        assert_eq!(t.settled_at(), Some(201_000_000_000));
        assert_eq!(table().settled_at(), None);
    }

    #[test]
    fn rejects_by_path_and_regression() {
        let mut t = table();
        for (path, tsval, ts_recent) in [
            (PawsPath::Timewait, 900u32, 1000u32),
            (PawsPath::Timewait, 500, 1000),
            (PawsPath::Established, u32::MAX - 9, 10),
        ] {
            t.apply(&rec(
                "192.0.2.1",
                4000,
                1.0,
                What::PawsReject {
                    path,
                    tsval: Some(tsval),
                    ts_recent: Some(ts_recent),
                    tcp_flags: 0x02,
                    old_ack: false,
                },
            ));
        }
        // An old ACK is counted apart, and in neither the rejects nor the regressions.
        t.apply(&rec(
            "192.0.2.1",
            4000,
            1.0,
            What::PawsReject {
                path: PawsPath::Established,
                tsval: Some(1),
                ts_recent: Some(5000),
                tcp_flags: 0x10,
                old_ack: true,
            },
        ));
        let r = &t.rows(1_000_000_000)[0];
        assert_eq!(r.rejects.timewait, 2);
        assert_eq!(r.rejects.established, 1);
        assert_eq!(r.rejects_total, 3);
        assert_eq!(r.old_acks, 1);
        assert_eq!(r.regression.count, 3);
        assert_eq!(
            r.regression.min,
            Some(20),
            "wrapping: 10 - (2^32 - 10) = 20"
        );
        assert_eq!(r.regression.max, Some(500));
        assert!(r.observed_rejects_per_s > 0.0);
    }

    #[test]
    fn syns_without_timestamps_and_backward_syns() {
        let mut t = table();
        let syn = |tsval| What::Syn { tsval };
        t.apply(&rec("192.0.2.2", 1, 0.0, syn(Some(1000))));
        t.apply(&rec("192.0.2.2", 2, 1.0, syn(Some(2000))));
        t.apply(&rec("192.0.2.2", 3, 2.0, syn(Some(1500)))); // behind the highest: backward
        t.apply(&rec("192.0.2.2", 4, 3.0, syn(None)));
        // 61 s after the highest was seen, the per-host rule has forgotten it.
        t.apply(&rec("192.0.2.2", 5, 62.0, syn(Some(10))));
        let r = &t.rows(62_000_000_000)[0];
        assert_eq!((r.syns, r.syns_without_ts, r.backward_syns), (5, 1, 1));
    }

    #[test]
    fn verdicts_and_prediction() {
        let mut t = table();
        for v in [
            TwSynVerdict::AcceptedByTimestamp,
            TwSynVerdict::RejectedPaws,
            TwSynVerdict::RejectedPaws,
            TwSynVerdict::RejectedOther,
        ] {
            t.apply(&rec(
                "192.0.2.3",
                1,
                5.0,
                What::TwSyn {
                    verdict: v,
                    tsval: None,
                    ts_recent: None,
                },
            ));
        }
        let r = &t.rows(5_000_000_000)[0];
        assert_eq!(r.tw_syns.rejected_paws, 2);
        assert_eq!(r.tw_syns.accepted_by_timestamp, 1);
        assert_eq!(r.tw_syns.rejected_other, 1);
        // What the prediction's rate counts: PAWS rejects, and SYNs with timestamps at
        // TIME-WAITs that kept one; not SYNs PAWS cannot judge.
        assert!(paws_checkable(TwSynVerdict::RejectedPaws, None, None));
        assert!(paws_checkable(
            TwSynVerdict::AcceptedByTimestamp,
            Some(2),
            Some(1)
        ));
        assert!(!paws_checkable(
            TwSynVerdict::AcceptedBySequence,
            None,
            Some(1)
        ));
        assert!(!paws_checkable(TwSynVerdict::RejectedOther, None, None));
        let rate = |t: &mut PawsTable| t.source("192.0.2.3".parse().unwrap()).tw_syn_rate;
        let before = rate(&mut t).per_second(5_000_000_000);
        t.apply(&rec(
            "192.0.2.3",
            1,
            5.0,
            What::TwSyn {
                verdict: TwSynVerdict::AcceptedBySequence,
                tsval: None,
                ts_recent: None,
            },
        ));
        assert_eq!(rate(&mut t).per_second(5_000_000_000), before);
        assert_eq!(reject_probability(1), 0.0);
        assert_eq!(reject_probability(2), 0.25);
        assert!((reject_probability(20) - 0.475).abs() < 1e-9);
    }

    #[test]
    fn bounded_with_evictions() {
        let mut t = PawsTable::new(2, ClockConfig::default());
        for i in 1..=5u8 {
            t.apply(&rec(
                &format!("192.0.2.{i}"),
                1,
                0.0,
                What::Syn { tsval: None },
            ));
        }
        assert_eq!(t.sources(), 2);
        assert_eq!(t.evictions, 3);
    }
}
