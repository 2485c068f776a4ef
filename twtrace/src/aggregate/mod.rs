//! The aggregation core: counts decoded [`Record`]s per remote IP, per local port and per
//! destination `ip:port`, plus global totals and lost-event counts. Pure data: it knows nothing
//! about the kernel, BPF or aya, and filters (--netns/--port/--ip) are applied before
//! [`Aggregate::apply`].
//!
//! Memory is bounded: each per-key table is an LRU of the configured capacity, and the
//! least-recently-updated key is evicted to make room (counted in [`Aggregate::evictions`]).
//! An evicted key loses its counters, including its `live` count; if it comes back it starts
//! from zero (and its `live` then never goes below 0). The global [`Aggregate::totals`] are
//! kept apart from the tables, so they stay exact whatever is evicted.

pub mod clocks;
pub mod counters;
mod deadlines;
mod listening;
pub mod order;
pub mod paws;
mod rows;
#[cfg(test)]
mod tests;

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::num::NonZeroUsize;

use std::hash::Hash;

use foldhash::fast::RandomState;

use schnellru::{ByLength, LruMap};

use crate::event::{LossReason, PawsPath, Record, Substate, What, th};

pub use counters::Counters;
use counters::LiveStep;
pub use order::Order;
pub use rows::{DestRow, Evictions, IpRow, LostRow, PortRow, Row, RowKey};

/// One bounded per-key table.
struct Table<K: RowKey> {
    map: Lru<K, Counters>,
    capacity: usize,
    evictions: u64,
}

impl<K: RowKey> Table<K> {
    fn new(capacity: NonZeroUsize) -> Self {
        Table {
            map: lru(capacity),
            capacity: capacity.get(),
            evictions: 0,
        }
    }

    /// Counts `what` under `key`, moving its `live` by `live` (see [`Aggregate::apply`]), at
    /// `now_ns`. `began_ns`: when an exit's TIME-WAIT began, where known. Its row counted its
    /// enter unless evicted since: an exit whose TIME-WAIT began before the row was made (again)
    /// is its earlier life's, and leaves the row's counts alone (the totals keep it), so that
    /// a row's LIVE and exits stay those of the TIME-WAITs its CREATED counted.
    fn apply(&mut self, key: K, what: &What, live: LiveStep, now_ns: u64, began_ns: Option<u64>) {
        let earlier_life = |since: u64| began_ns.is_some_and(|b| b < since);
        // get marks the key most recently used: eviction order is by last update.
        if let Some(c) = newest_or_get(&mut self.map, &key) {
            if !earlier_life(c.since_ns) {
                c.apply(what, live);
            }
            // Records of two CPUs reach the ring in the order they reserved room, not the
            // order of their times: an enter timed before the record that made the row is
            // still this row's, and so is its exit.
            if matches!(what, What::TwEnter { .. } | What::TwPresent { .. }) {
                c.since_ns = c.since_ns.min(now_ns);
            }
            return;
        }
        // No row, and the exit's start known: its row was evicted.
        if began_ns.is_some() {
            return;
        }
        let mut c = Counters {
            since_ns: now_ns,
            ..Counters::default()
        };
        c.apply(what, live);
        // The key is absent, so a full table evicts its least recent key to make room.
        if self.map.len() >= self.capacity {
            self.evictions += 1;
        }
        self.map.insert(key, c);
    }

    /// Every key's `live` back to 0 (a read of the kernel's sockets counts them again).
    fn zero_live(&mut self) {
        for (_, c) in self.map.iter_mut() {
            c.live = 0;
        }
    }

    /// The `n` largest rows by `order`, largest first; ties as [`Ranked::rank`] says.
    ///
    /// Runs every refresh over tables that can hold far more keys than a screen shows: a
    /// bounded heap of the best `n` seen so far, so only those are copied.
    fn top(&self, n: usize, order: Order) -> Vec<Row<K>> {
        let mut best: BinaryHeap<Ranked<'_, K>> = BinaryHeap::with_capacity(n.min(self.map.len()));
        for (key, counters) in self.map.iter() {
            let r = Ranked {
                value: order.key(counters),
                key,
                counters,
            };
            if best.len() < n {
                best.push(r);
            } else if let Some(mut worst) = best.peek_mut()
                && r < *worst
            {
                *worst = r;
            }
        }
        best.into_sorted_vec()
            .into_iter()
            .map(|r| Row {
                key: *r.key,
                counters: *r.counters,
            })
            .collect()
    }
}

/// A row by rank: "less" is better (larger value, then smaller key), so a max-heap keeps
/// its worst kept row on top and a sorted vector lists the best first.
struct Ranked<'a, K> {
    value: u64,
    key: &'a K,
    counters: &'a Counters,
}

impl<K: Ord> Ranked<'_, K> {
    /// Ties (a key zero in most rows: overflow, a rare cause) by live, then created, so the
    /// rows shown are still the busy ones; then by key, so output is stable.
    fn rank(&self) -> (Reverse<u64>, Reverse<u64>, Reverse<u64>, &K) {
        let c = self.counters;
        (
            Reverse(self.value),
            Reverse(c.live),
            Reverse(c.tw_created),
            self.key,
        )
    }
}

impl<K: Ord> PartialEq for Ranked<'_, K> {
    fn eq(&self, other: &Self) -> bool {
        self.rank() == other.rank()
    }
}

impl<K: Ord> Eq for Ranked<'_, K> {}

impl<K: Ord> PartialOrd for Ranked<'_, K> {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl<K: Ord> Ord for Ranked<'_, K> {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.rank().cmp(&other.rank())
    }
}

/// A table of at most a given number of keys, least recently used evicted first.
///
/// Hashed with foldhash (hashbrown's default): fast, and seeded per process from
/// address-space randomisation, without a syscall. schnellru's own default seeds with a
/// getrandom(2) call that blocks until the kernel's entropy pool is ready, which hung twtrace
/// in a freshly booted VM (and would at early boot as a service).
pub type Lru<K, V> = LruMap<K, V, ByLength, RandomState>;

/// Whether `key` is `map`'s most recently used key. Consecutive records of one key (one
/// client or one NAT address under churn, one server port) are the usual case, and that key
/// is then found without hashing ([`newest`]): it already is the most recent, so the order
/// needs no change either. The lookups this saves (four per connection under churn, and two
/// in the PAWS table) were a twentieth of the tracer's user space.
fn is_newest<K: Hash + Eq, V>(map: &Lru<K, V>, key: &K) -> bool {
    map.peek_newest().is_some_and(|(k, _)| k == key)
}

/// The value of `map`'s most recently used key (see [`is_newest`]).
fn newest<K: Hash + Eq, V>(map: &mut Lru<K, V>) -> Option<&mut V> {
    map.iter_mut().next().map(|(_, v)| v)
}

/// `key`'s value, marked most recently used (as [`LruMap::get`] does).
fn newest_or_get<'a, K: Hash + Eq, V>(map: &'a mut Lru<K, V>, key: &K) -> Option<&'a mut V> {
    if is_newest(map, key) {
        newest(map)
    } else {
        map.get(key)
    }
}

/// An empty [`Lru`] that holds at most `capacity` keys.
pub fn lru<K: Hash + Eq, V>(capacity: NonZeroUsize) -> Lru<K, V> {
    let limit = u32::try_from(capacity.get()).unwrap_or(u32::MAX);
    LruMap::with_hasher(ByLength::new(limit), RandomState::default())
}

/// Counters per remote IP, per local port, per destination, and in total.
pub struct Aggregate {
    by_ip: Table<IpAddr>,
    by_port: Table<u16>,
    by_dest: Table<SocketAddr>,
    totals: Counters,
    /// PAWS rejects, SYN timestamps and clocks per source IP.
    pub paws: paws::PawsTable,
    // Program names are a small fixed set of static strings; a BTreeMap keeps them sorted.
    lost: BTreeMap<&'static str, u64>,
    /// Runs of each program the kernel skipped (`LossReason::SkippedRuns`): apart from `lost`,
    /// as most were not about TIME-WAITs (a timer program runs for every timer).
    skipped: BTreeMap<&'static str, u64>,
    /// (netns, port) pairs that SYNs were seen arriving at: listening ports.
    listening: listening::Listening,
    /// TIME-WAITs found by the latest read of the kernel's sockets (`TwPresent`) that have
    /// not ended yet, by (netns, local, remote): one TIME-WAIT per 4-tuple at a time.
    present: HashSet<(u32, SocketAddr, SocketAddr), RandomState>,
    present_at_start: u64,
    /// When the latest read began (`LiveReset`; 0 for the start-up read): a TIME-WAIT that
    /// entered before it is in `live` through the read, if it was still there then, and never
    /// through its own records.
    read_from_ns: u64,
    /// The latest time a read ended (the `TwPresent` records' time): an enter traced after it
    /// cannot be one of `present`, and skips the lookup (a hash of two addresses in a table of
    /// up to `--max-live-tw`, for every enter while present ones remain: a minute after a read
    /// on a busy host).
    present_read_ns: u64,
    /// Reads again (`LiveReset`: after lost events, or for TIME-WAITs past their timer), and
    /// the TIME-WAITs the latest one found.
    rereads: u64,
    reread_found: u64,
    /// Of `rereads`, those with events lost (or runs skipped) before they began since the read
    /// before (the others were for TIME-WAITs past their timer), whether the latest was one,
    /// and LIVE just before the latest: what the read set right.
    rereads_after_loss: u64,
    latest_after_loss: bool,
    live_before_read: u64,
    /// Losses found since the kernel's sockets were last read (at start-up or again), with when
    /// they were found: LIVE may be off by up to as many until the next read. A read counts
    /// what was there when it began, so at its end the losses found before it began are
    /// settled and the others are not.
    lost_since_read: LossLog,
    /// When the TIME-WAITs counted in the totals' `live` should have ended: those past it with
    /// no exit seen make LIVE doubtful without any loss ([`Aggregate::overdue`]).
    deadlines: deadlines::Deadlines,
}

/// Losses by when they were found: `(ts_ns, lost events, runs skipped by the kernel)`, in
/// arrival order, at most [`LossLog::MAX`] entries (the oldest two merged into one found at the
/// later time: never fewer than were lost since a read).
#[derive(Default)]
struct LossLog(std::collections::VecDeque<(u64, u64, u64)>);

impl LossLog {
    const MAX: usize = 256;

    fn push(&mut self, ts_ns: u64, lost: u64, skipped: u64) {
        if self.0.len() >= Self::MAX
            && let Some((_, l, k)) = self.0.pop_front()
            && let Some(next) = self.0.front_mut()
        {
            next.1 += l;
            next.2 += k;
        }
        self.0.push_back((ts_ns, lost, skipped));
    }

    /// Whether any loss was found before `from_ns`.
    fn any_before(&self, from_ns: u64) -> bool {
        (self.0.iter()).any(|&(ts, lost, skipped)| ts < from_ns && lost + skipped > 0)
    }

    /// Keeps only the losses found at or after `from_ns`.
    fn settle_before(&mut self, from_ns: u64) {
        self.0.retain(|&(ts, _, _)| ts >= from_ns);
    }

    fn sums(&self) -> (u64, u64) {
        (self.0.iter()).fold((0, 0), |(l, k), &(_, lost, skipped)| {
            (l + lost, k + skipped)
        })
    }
}

impl Aggregate {
    /// `capacity` is the number of keys each table keeps (0 is taken as 1).
    pub fn new(capacity: usize) -> Self {
        let cap = NonZeroUsize::new(capacity).unwrap_or(NonZeroUsize::MIN);
        Aggregate {
            by_ip: Table::new(cap),
            by_port: Table::new(cap),
            by_dest: Table::new(cap),
            totals: Counters::default(),
            lost: BTreeMap::new(),
            skipped: BTreeMap::new(),
            listening: listening::Listening::default(),
            present: HashSet::default(),
            present_at_start: 0,
            read_from_ns: 0,
            present_read_ns: 0,
            rereads: 0,
            reread_found: 0,
            rereads_after_loss: 0,
            latest_after_loss: false,
            live_before_read: 0,
            lost_since_read: LossLog::default(),
            deadlines: deadlines::Deadlines::default(),
            paws: paws::PawsTable::new(cap.get(), clocks::ClockConfig::default()),
        }
    }

    /// Counts only what the per-source-IP PAWS table needs (SYNs, rejects, SYNs at TIME-WAIT):
    /// for `twtrace events`, whose alerts and summary file read nothing else, so the records
    /// of the TIME-WAIT lifecycle (two per connection) cost no table work there. True when
    /// `rec` was one of those.
    pub fn apply_paws_only(&mut self, rec: &Record) -> bool {
        let paws = matches!(
            rec.what,
            What::Syn { .. } | What::PawsReject { .. } | What::TwSyn { .. }
        );
        if paws {
            self.paws.apply(rec);
        }
        paws
    }

    /// Counts one record: in the totals, under its remote IP, its destination (remote
    /// `ip:port`) and its local port. `ConnectAddrNotAvail` skips the port table (no local
    /// port was bound, the record says 0). A server's TIME-WAITs (local port one that SYNs
    /// arrived at) skip the destination table. `Lost` only adds to the lost counts.
    pub fn apply(&mut self, rec: &Record) {
        let what = &rec.what;
        match *what {
            What::Lost {
                program,
                count,
                reason,
            } => {
                let counts = match reason {
                    LossReason::SkippedRuns => &mut self.skipped,
                    LossReason::RingFull | LossReason::TableFull => &mut self.lost,
                };
                *counts.entry(program).or_default() += count;
                match reason {
                    LossReason::SkippedRuns => self.lost_since_read.push(rec.ts_ns, 0, count),
                    _ => self.lost_since_read.push(rec.ts_ns, count, 0),
                }
                return;
            }
            What::Listening => {
                self.listening_found_by_read(rec);
                return;
            }
            What::LiveReset => {
                self.reset_live(rec.ts_ns);
                return;
            }
            What::Syn { .. } => self.listening.note(rec.netns, rec.local.port(), rec.ts_ns),
            // A TIME-WAIT that refuses a segment by PAWS re-arms its timer for a full
            // TIME-WAIT (tcp_timewait_state_process; not for a reset): behind a NAT, SYNs
            // refused again and again (tcp_rfc1337=1, or the client's reset lost) keep it
            // for minutes, not as an exit twtrace missed.
            What::PawsReject {
                path: PawsPath::Timewait,
                tcp_flags,
                ..
            } if tcp_flags & th::RST == 0 => {
                let tuple = (rec.netns, rec.local, rec.remote);
                self.deadlines.rearmed(tuple, rec.ts_ns);
            }
            // (The RST test matters from 6.16, whose drop reason names a reset refused by PAWS;
            // before, the programs report no reset as a PAWS reject.)
            _ => {}
        }
        if self.apply_paws_only(rec) {
            return;
        }
        // Built only where it is looked up: two socket addresses, for every record otherwise.
        let key = || (rec.netns, rec.local, rec.remote);
        // How `live` moves. A read of the kernel's sockets (at start-up, and again after lost
        // events) counts what was there when it looked, so a TIME-WAIT's own records must not
        // count it a second time, nor take off one the read did not count.
        // When the TIME-WAIT began, as far as known: whether its port listened then says
        // whether it is a server's, alike at its enter and at its exit.
        // For a TIME-WAIT found by a read, the earliest it can have begun counting in LIVE.
        let mut found_from = None;
        let mut began = match *what {
            What::TwExit {
                lifetime_ns: Some(ns),
                ..
            } => rec.ts_ns.saturating_sub(ns),
            _ => rec.ts_ns,
        };
        let live = match *what {
            What::TwPresent { server, .. } => {
                if !self.present.insert(key()) {
                    return; // the same socket read twice: counted once
                }
                if self.rereads == 0 {
                    self.present_at_start += 1;
                } else {
                    self.reread_found += 1;
                }
                self.present_read_ns = self.present_read_ns.max(rec.ts_ns);
                if server {
                    self.listening_found_by_read(rec);
                }
                LiveStep::Up
            }
            // Entered before the read began: the read counted it if it was still there.
            What::TwEnter { .. } if rec.ts_ns < self.read_from_ns => LiveStep::Keep,
            // Entered while the read ran: counted by it, or not (it looked too soon).
            What::TwEnter { .. } if rec.ts_ns <= self.present_read_ns && self.end_present(key) => {
                LiveStep::Keep
            }
            What::TwEnter { .. } => LiveStep::Up,
            What::TwExit {
                lifetime_ns: Some(ns),
                ..
            } if rec.ts_ns.saturating_sub(ns) >= self.read_from_ns => LiveStep::Down,
            // Ended before the read began: the read did not count it. Its 4-tuple among the
            // read's sockets is a later TIME-WAIT's (a SYN replaced it, and that connection
            // closed too), whose enter, also before the read, was kept as counted by it. (An
            // exit is timed microseconds before its socket leaves the kernel's table: a read
            // that began in between and reached it at once counts it; LIVE is then one high
            // until the next read. Rare, and a margin here would bring back the case above.)
            What::TwExit { .. } if rec.ts_ns < self.read_from_ns => LiveStep::Keep,
            // An exit whose entry was not seen, or was before the read: counted by the read
            // if it was among its sockets. Not otherwise: an unseen entry was (almost always)
            // never added; one that was is in the lost counts, which start a read again.
            What::TwExit { .. } if self.end_present(key) => {
                began = self.present_read_ns;
                // Found by a read: in one of its seconds (each namespace's records carry when
                // its own read ended), the earliest being when the read began.
                found_from = Some(self.read_from_ns);
                LiveStep::Down
            }
            _ => LiveStep::Keep,
        };
        self.totals.apply(what, live);
        match (live, what) {
            (
                LiveStep::Up,
                &What::TwEnter {
                    substate,
                    timeout_ms,
                },
            ) => self.deadlines.entered(
                rec.ts_ns,
                timeout_ms.saturating_mul(1_000_000),
                substate == Substate::FinWait2,
            ),
            (LiveStep::Up, &What::TwPresent { substate, .. }) => {
                (self.deadlines).found(rec.ts_ns, substate == Substate::FinWait2)
            }
            (LiveStep::Down, _) => (self.deadlines).ended(key, found_from.unwrap_or(began)),
            _ => {}
        }
        // When an exit's TIME-WAIT began, where known (see `Table::apply`).
        let exit_began = match *what {
            What::TwExit {
                lifetime_ns: Some(_),
                ..
            } => Some(began),
            What::TwExit { .. } if live == LiveStep::Down => Some(began),
            _ => None,
        };
        let now = rec.ts_ns;
        self.by_ip
            .apply(rec.remote.ip(), what, live, now, exit_began);
        // Every TIME-WAIT event feeds the destination table, not just EADDRNOTAVAIL: the live
        // TIME-WAIT count toward a destination is what explains its port exhaustion. Except
        // where the local side is a listening port: that TIME-WAIT is a server's, its "remote"
        // a client's ephemeral port, never a destination anything connects to (and keying
        // every one would churn the table at the connection rate).
        if !self.listening.at(rec.netns, rec.local.port(), began) {
            self.by_dest.apply(rec.remote, what, live, now, exit_began);
        }
        if !matches!(what, What::ConnectAddrNotAvail { .. }) {
            self.by_port
                .apply(rec.local.port(), what, live, now, exit_began);
        }
    }

    /// Every `live` back to 0, and what the previous read found forgotten: a read of the
    /// kernel's sockets that began at `from_ns` counts them again.
    fn reset_live(&mut self, from_ns: u64) {
        // A loss found while the read ran (loss records are not held back) started the next.
        self.latest_after_loss = self.lost_since_read.any_before(from_ns);
        self.rereads_after_loss += u64::from(self.latest_after_loss);
        self.live_before_read = self.totals.live;
        self.by_ip.zero_live();
        self.by_port.zero_live();
        self.by_dest.zero_live();
        self.totals.live = 0;
        self.deadlines.clear();
        self.present = HashSet::default();
        self.read_from_ns = from_ns;
        self.rereads += 1;
        self.reread_found = 0;
        self.lost_since_read.settle_before(from_ns);
    }

    /// A listening port a read of the kernel's sockets found (`rec`'s local port). The start-up
    /// read says it listened since before tracing, as far as TIME-WAITs seen by twtrace go; a
    /// read again tells only of its own time.
    fn listening_found_by_read(&mut self, rec: &Record) {
        let since = if self.rereads == 0 { 0 } else { rec.ts_ns };
        self.listening.note(rec.netns, rec.local.port(), since);
    }

    /// Whether `key` was a TIME-WAIT found by the latest read, which then ends. The set is freed
    /// once its last member has ended (a busy host may start with a quarter million).
    fn end_present(&mut self, key: impl FnOnce() -> (u32, SocketAddr, SocketAddr)) -> bool {
        if self.present.is_empty() || !self.present.remove(&key()) {
            return false;
        }
        if self.present.is_empty() {
            self.present = HashSet::default();
        }
        true
    }

    /// TIME-WAITs that were already there when tracing started (counted in `live` until they
    /// end).
    pub fn present_at_start(&self) -> u64 {
        self.present_at_start
    }

    /// Events lost, and runs the kernel skipped (each may have been an event), since the
    /// kernel's sockets were last read: LIVE may be off by up to as many.
    pub fn lost_since_read(&self) -> (u64, u64) {
        self.lost_since_read.sums()
    }

    /// TIME-WAITs counted in LIVE that should have ended by `now_ns` (their timeout and the
    /// timer's lateness past) with no exit seen: an exit no program reported, or a timer
    /// re-armed. LIVE is that many high unless re-armed; a read of the kernel's sockets tells.
    pub fn overdue(&self, now_ns: u64) -> u64 {
        self.deadlines.overdue(now_ns)
    }

    /// Reads of the kernel's sockets again, and the TIME-WAITs the latest found.
    pub fn rereads(&self) -> (u64, u64) {
        (self.rereads, self.reread_found)
    }

    /// Of the reads again, those after lost events (the others were for TIME-WAITs past their
    /// timer), whether the latest was one, and LIVE just before the latest read.
    pub fn reread_causes(&self) -> (u64, bool, u64) {
        (
            self.rereads_after_loss,
            self.latest_after_loss,
            self.live_before_read,
        )
    }

    /// Top `n` remote IPs by `order`.
    pub fn top_by_ip(&self, n: usize, order: Order) -> Vec<IpRow> {
        self.by_ip.top(n, order)
    }

    /// Top `n` local ports by `order`. Their `eaddrnotavail` is always 0 (see [`Self::apply`]).
    pub fn top_by_port(&self, n: usize, order: Order) -> Vec<PortRow> {
        self.by_port.top(n, order)
    }

    /// Top `n` destinations (remote `ip:port`) by `order`.
    pub fn top_by_dest(&self, n: usize, order: Order) -> Vec<DestRow> {
        self.by_dest.top(n, order)
    }

    /// Global counters; exact regardless of table evictions.
    pub fn totals(&self) -> Counters {
        self.totals
    }

    /// Lost events per program, sorted by program name.
    pub fn lost(&self) -> Vec<LostRow> {
        self.lost
            .iter()
            .map(|(&program, &count)| LostRow { program, count })
            .collect()
    }

    /// Runs the kernel skipped per program, sorted by program name.
    pub fn skipped(&self) -> Vec<LostRow> {
        self.skipped
            .iter()
            .map(|(&program, &count)| LostRow { program, count })
            .collect()
    }

    /// Sum of all lost events.
    pub fn lost_total(&self) -> u64 {
        self.lost.values().sum()
    }

    pub fn evictions(&self) -> Evictions {
        Evictions {
            remote_ip: self.by_ip.evictions,
            local_port: self.by_port.evictions,
            destination: self.by_dest.evictions,
        }
    }

    /// Keys each table can hold.
    pub fn capacity(&self) -> usize {
        self.by_ip.capacity
    }
}
