//! TIME-WAITs a SYN ended whose listener then dropped that SYN (a full accept queue, most
//! often: the overloaded server users look at this cause for). On the tp_btf route the cancel
//! of such a TIME-WAIT is explained by the request socket its SYN queues
//! (twtrace-ebpf/src/tw_exit.rs); with none queued, the kernel side can only report it
//! `unknown`. The client sends that SYN again a second later (3 s, 7 s, ...: SYN retransmits
//! double from 1 s), from the same port, and the retransmit is accepted once the queue has
//! room: a SYN of the very 4-tuple right after an unexplained end is the positive evidence
//! the kernel could not give at the time. So the tp_btf route's `unknown` exits wait here
//! [`LATE_SYN_NS`] for it; one that comes makes the exit `replaced_by_syn`, and the rest go out
//! as they came, `unknown` (`ss -K`, a SYN answered by a cookie, a client that gave up).
//!
//! The exit can also come after its SYN: the kernel side reports a cancel it could not
//! explain only when the next one is parked on that CPU, or at shutdown, while the retransmit
//! may be handled on another CPU meanwhile. So the tp_btf route's SYN records that came
//! alone (most SYNs under churn come joined to the exit they explain) are remembered for a
//! while, by a hash of their 4-tuple in a direct-mapped table: one store per SYN; a slot a
//! later SYN takes only loses evidence (that exit stays `unknown`).
//!
//! The exit is paired with its enter when it comes, not when its wait ends: by then the freed
//! socket's memory may hold newer TIME-WAITs, whose enters it must not take.
//!
//! What it cannot tell: a TIME-WAIT ended otherwise (`ss -K`, a SYN cookie, a reset before
//! 5.17) whose client connects again from the same port within [`LATE_SYN_NS`] reads
//! `replaced_by_syn`.

use std::{
    collections::{HashMap, VecDeque},
    hash::BuildHasher as _,
};

use twtrace_common::{Event, EventKind, ExitCause, HookFamily, ts_flags};

use crate::signals::{RawFlow, raw_flow};

/// How long an unexplained exit waits for its SYN: the client's first two retransmits (1 s
/// and 3 s after the dropped SYN, Linux's initial RTO), with a margin.
pub const LATE_SYN_NS: u64 = 4_000_000_000;
/// Exits held at most: beyond, the oldest goes out as it came (a flood of SYN cookies ends
/// every TIME-WAIT it replaces unexplained).
const MAX_HELD: usize = 65_536;
/// SYNs remembered, a power of two: the last 8192 that came alone, by hash.
const RECENT: usize = 8192;

type Hasher = foldhash::fast::RandomState;

pub struct UnexplainedExits {
    /// Off unless both tw_exit and syn are on the tp_btf route: without its SYNs no exit is
    /// ever explained here, and waiting would only delay it.
    on: bool,
    held: HashMap<RawFlow, Event, Hasher>,
    /// The held exits in the order they came, for their release (entries whose exit was
    /// explained or sent on meanwhile are skipped then).
    order: VecDeque<(u64, RawFlow)>,
    recent: Box<[SeenSyn]>,
    /// Seeded per process: a remote host choosing its ports cannot aim at a slot.
    hasher: Hasher,
}

/// A SYN that came alone, in the slot its 4-tuple's hash picks (`flow` 0: empty).
#[derive(Clone, Copy, Default)]
struct SeenSyn {
    flow: u64,
    ts_ns: u64,
    tsval: u32,
    ts_flags: u8,
}

impl Default for UnexplainedExits {
    fn default() -> Self {
        Self {
            on: true,
            held: HashMap::default(),
            order: VecDeque::new(),
            recent: vec![SeenSyn::default(); RECENT].into_boxed_slice(),
            hasher: Hasher::default(),
        }
    }
}

/// What becomes of an unexplained exit handed to [`UnexplainedExits::hold`].
pub enum Held {
    /// Waiting for its SYN.
    Waiting,
    /// To go on now as it came: an older exit of the same 4-tuple, or the oldest when full.
    GoesOn(Event),
    /// Its SYN came before it: the exit, now `replaced_by_syn`, and that SYN.
    Explained(Event, Event),
}

fn within_wait(exit: &Event, syn_ts_ns: u64) -> bool {
    syn_ts_ns >= exit.ts_ns && syn_ts_ns - exit.ts_ns <= LATE_SYN_NS
}

impl UnexplainedExits {
    /// Says whether the tp_btf route serves both tw_exit and syn (see `on`).
    pub fn set_on(&mut self, on: bool) {
        self.on = on;
    }

    /// Whether `ev` is an exit to hold: the tp_btf route's `unknown`.
    #[inline]
    pub fn wanted(&self, ev: &Event) -> bool {
        self.on
            && ev.kind == EventKind::TwExit as u8
            && ev.detail == ExitCause::Unknown as u8
            && ev.hook == HookFamily::TpBtf as u8
            && ev.ts_flags & ts_flags::WITH_SYN == 0
    }

    /// The table slot of `flow` (from the hash's high bits) and the mark stored there (never
    /// 0, the empty slot's).
    fn slot(&self, flow: &RawFlow) -> (usize, u64) {
        let h = self.hasher.hash_one(flow);
        ((h >> (64 - RECENT.trailing_zeros())) as usize, h | 1)
    }

    /// Takes an unexplained exit: explained at once by a SYN of its 4-tuple seen since, or held
    /// for one. An older exit of the same 4-tuple still held goes on (its SYN can no longer be
    /// told from this one's), as does the oldest when the wait is full.
    #[cold]
    pub fn hold(&mut self, mut exit: Event) -> Held {
        let key = raw_flow(&exit);
        let (at, mark) = self.slot(&key);
        let seen = &mut self.recent[at];
        if seen.flow == mark && within_wait(&exit, seen.ts_ns) {
            let mut syn = exit;
            syn.kind = EventKind::Syn as u8;
            (syn.detail, syn.obj, syn.ts_recent, syn.lifetime_ns) = (0, 0, 0, 0);
            (syn.ts_ns, syn.tsval, syn.ts_flags) = (seen.ts_ns, seen.tsval, seen.ts_flags);
            syn.tcp_flags = 0x02;
            seen.flow = 0;
            exit.detail = ExitCause::ReplacedBySyn as u8;
            return Held::Explained(exit, syn);
        }
        let full = self.held.len() >= MAX_HELD && !self.held.contains_key(&key);
        let oldest = if full { self.pop_oldest() } else { None };
        self.order.push_back((exit.ts_ns, key));
        match self.held.insert(key, exit).or(oldest) {
            Some(e) => Held::GoesOn(e),
            None => Held::Waiting,
        }
    }

    /// The oldest exit still held, taken out.
    fn pop_oldest(&mut self) -> Option<Event> {
        while let Some((ts, key)) = self.order.pop_front() {
            if self.held.get(&key).is_some_and(|e| e.ts_ns == ts) {
                return self.held.remove(&key);
            }
        }
        None
    }

    /// A SYN record: returns the held exit it explains (same namespace and 4-tuple, later),
    /// made `replaced_by_syn`; otherwise, if it came alone, it is remembered for an exit that
    /// comes after it.
    #[inline]
    pub fn on_syn(&mut self, syn: &Event) -> Option<Event> {
        if !self.on || syn.kind != EventKind::Syn as u8 || syn.hook != HookFamily::TpBtf as u8 {
            return None;
        }
        let key = raw_flow(syn);
        if !self.held.is_empty()
            && let Some(exit) = self.held.get(&key)
            && within_wait(exit, syn.ts_ns)
        {
            let mut exit = self.held.remove(&key)?;
            exit.detail = ExitCause::ReplacedBySyn as u8;
            return Some(exit);
        }
        let (at, mark) = self.slot(&key);
        self.recent[at] = SeenSyn {
            flow: mark,
            ts_ns: syn.ts_ns,
            tsval: syn.tsval,
            ts_flags: syn.ts_flags & ts_flags::HAS_TSVAL,
        };
        None
    }

    /// The exits whose wait ended by `now_ns` (every record up to it read), in the order they
    /// came, as they came.
    pub fn expired(&mut self, now_ns: u64) -> Vec<Event> {
        let mut out = Vec::new();
        while let Some(&(ts, key)) = self.order.front() {
            if now_ns != u64::MAX && ts.saturating_add(LATE_SYN_NS) > now_ns {
                break;
            }
            self.order.pop_front();
            if self.held.get(&key).is_some_and(|e| e.ts_ns == ts) {
                out.extend(self.held.remove(&key));
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pipeline::fixtures::connection;

    fn unknown_exit(ts_ns: u64, port: u16) -> (Event, Event) {
        let [mut exit, mut syn, _] = connection(0, 0, port);
        exit.detail = ExitCause::Unknown as u8;
        exit.ts_ns = ts_ns;
        syn.ts_ns = ts_ns + 1_000_000_000;
        (exit, syn)
    }

    /// The retransmitted SYN of the same 4-tuple explains the exit; another port's, a SYN
    /// before the exit, or one after the wait does not, and the exit goes out unknown.
    #[test]
    fn only_a_later_syn_of_the_same_flow_within_the_wait_explains_an_exit() {
        let mut h = UnexplainedExits::default();
        let (exit, syn) = unknown_exit(10_000_000_000, 40_000);
        assert!(h.wanted(&exit));
        assert!(matches!(h.hold(exit), Held::Waiting));
        let (_, other_port) = unknown_exit(10_000_000_000, 40_001);
        assert!(h.on_syn(&other_port).is_none());
        let mut before = syn;
        before.ts_ns = exit.ts_ns - 1;
        assert!(h.on_syn(&before).is_none());
        let mut too_late = syn;
        too_late.ts_ns = exit.ts_ns + LATE_SYN_NS + 1;
        assert!(h.on_syn(&too_late).is_none());
        let got = h.on_syn(&syn).expect("explained");
        assert_eq!(got.detail, ExitCause::ReplacedBySyn as u8);
        assert_eq!(got.ts_ns, exit.ts_ns, "at its own time");
        assert!(h.expired(u64::MAX).is_empty(), "taken");

        let (exit, _) = unknown_exit(10_000_000_000, 40_002);
        assert!(matches!(h.hold(exit), Held::Waiting));
        assert!(
            h.expired(exit.ts_ns + LATE_SYN_NS - 1).is_empty(),
            "still waiting"
        );
        let out = h.expired(exit.ts_ns + LATE_SYN_NS);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].detail, ExitCause::Unknown as u8, "as it came");
    }

    /// The exit can come after its SYN (the kernel reports it late): a SYN of its 4-tuple seen
    /// within the wait after the exit's time explains it at once, with that SYN's TSval; one
    /// from before the exit's time, or another 4-tuple's, does not.
    #[test]
    fn a_syn_seen_before_the_exit_came_explains_it() {
        let mut h = UnexplainedExits::default();
        let (exit, syn) = unknown_exit(10_000_000_000, 40_000);
        let (early_exit, early) = unknown_exit(10_000_000_000, 40_001);
        let mut early = early;
        early.ts_ns = early_exit.ts_ns - 1;
        assert!(h.on_syn(&syn).is_none(), "nothing held: remembered");
        assert!(h.on_syn(&early).is_none());
        match h.hold(exit) {
            Held::Explained(e, s) => {
                assert_eq!(e.detail, ExitCause::ReplacedBySyn as u8);
                assert_eq!(e.ts_ns, exit.ts_ns);
                assert_eq!((s.kind, s.ts_ns, s.tsval), (syn.kind, syn.ts_ns, syn.tsval));
                assert_eq!(s.ts_flags, ts_flags::HAS_TSVAL);
            }
            _ => panic!("not explained"),
        }
        assert!(
            matches!(h.hold(early_exit), Held::Waiting),
            "SYN before the exit"
        );
        // Used once: the same exit again waits.
        assert!(matches!(h.hold(exit), Held::Waiting));
    }

    /// Only the tp_btf route's unknown exits wait: others, and exits that carry their SYN, go on.
    #[test]
    fn only_unexplained_tp_btf_exits_wait() {
        let mut h = UnexplainedExits::default();
        let (exit, syn) = unknown_exit(1, 40_000);
        assert!(h.wanted(&exit));
        let mut other = exit;
        other.hook = HookFamily::Tracepoint as u8;
        assert!(!h.wanted(&other));
        other = exit;
        other.detail = ExitCause::Expired as u8;
        assert!(!h.wanted(&other));
        other = exit;
        other.ts_flags |= ts_flags::WITH_SYN;
        assert!(!h.wanted(&other));
        // Off (tw_exit or syn not on tp_btf): nothing waits, no SYN is kept.
        h.set_on(false);
        assert!(!h.wanted(&exit));
        assert!(h.on_syn(&syn).is_none());
        assert!(h.recent.iter().all(|s| s.flow == 0));
    }

    /// A second exit of one 4-tuple sends the first on; when full, the oldest goes.
    #[test]
    fn held_exits_are_bounded() {
        let mut h = UnexplainedExits::default();
        let went = |held: Held| match held {
            Held::GoesOn(e) => Some(e.ts_ns),
            _ => None,
        };
        let (a, _) = unknown_exit(5, 40_000);
        let mut b = a;
        b.ts_ns = 6;
        h.hold(a);
        assert_eq!(went(h.hold(b)), Some(5));
        for i in 0..MAX_HELD as u64 {
            let (mut e, _) = unknown_exit(100 + i, 1);
            e.rport = (i % 60_000) as u16 + 1;
            e.lport = (i / 60_000) as u16 + 1;
            let full = i == MAX_HELD as u64 - 1;
            assert_eq!(went(h.hold(e)), full.then_some(6), "{i}: the oldest goes");
        }
        assert_eq!(h.held.len(), MAX_HELD);
        // Released in the order they came, the one sent on and the replaced one skipped.
        let out = h.expired(100 + LATE_SYN_NS + 1);
        assert_eq!(out.iter().map(|e| e.ts_ns).collect::<Vec<_>>(), [100, 101]);
    }
}
