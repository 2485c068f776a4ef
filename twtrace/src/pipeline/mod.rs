//! What happens to every raw record between the ring buffer and a sink, in order: lifetimes
//! are paired (unless tw_enter and tw_exit are both on classic tracepoints), a request socket's reject that came
//! without ts_recent gets its SYN's TSval (signals/request_ts.rs), a TIME-WAIT exit and the
//! SYN that replaced it are joined into a verdict, the record is decoded, and the filter
//! (--netns/--port/--ip) keeps it or not.
//!
//! It runs tens of thousands of times a second (two or three records per connection under
//! churn: the tp_btf route sends a TIME-WAIT exit and the SYN that replaced it as one),
//! so it is kept free of allocation; `cargo bench -p twtrace` (benches/user_space.rs)
//! measures it.

use std::net::SocketAddr;

use twtrace_common::{Event, EventKind, HookFamily, overflow_detail, ts_flags};

use crate::{
    event::{LossReason, Record, What},
    filter::Filter,
    signals::{
        self, DecodeCtx,
        request_ts::RequestTsvals,
        tw_exit::{self, Lifetimes},
        tw_syn::TwSynClassifier,
    },
};

#[doc(hidden)]
pub mod fixtures;
mod late_syn;

use late_syn::{Held, UnexplainedExits};

pub struct Pipeline {
    ctx: DecodeCtx,
    lifetimes: Lifetimes,
    tw_syn: TwSynClassifier,
    request_ts: RequestTsvals,
    /// Overflows a tracepoint route reported, until a retraction could no longer come (see
    /// [`Pipeline::settled_before`]).
    held_overflows: Vec<Event>,
    /// The tp_btf route's `unknown` exits, until a late SYN explains them (late_syn.rs).
    unexplained: UnexplainedExits,
    settled_before: u64,
    /// The clock at the latest drain ([`Pipeline::set_now`]).
    now_ns: u64,
}

/// Held overflows beyond this many go at once (a ring kept full never lets the reader say
/// that it has caught up).
const MAX_HELD_OVERFLOWS: usize = 65_536;

impl Pipeline {
    /// `max_live_tw` bounds the TIME-WAITs whose entry time is remembered (for lifetimes).
    pub fn new(ctx: DecodeCtx, max_live_tw: usize) -> Self {
        Self {
            ctx,
            lifetimes: Lifetimes::new(max_live_tw),
            tw_syn: TwSynClassifier::default(),
            request_ts: RequestTsvals::default(),
            held_overflows: Vec::new(),
            unexplained: UnexplainedExits::default(),
            settled_before: 0,
            now_ns: 0,
        }
    }

    /// Says that the kernel pairs TIME-WAIT enters with exits (see
    /// [`Lifetimes::set_paired_in_kernel`]).
    pub fn set_lifetimes_paired_in_kernel(&mut self, yes: bool) {
        self.lifetimes.set_paired_in_kernel(yes);
    }

    /// Says whether the tp_btf route serves both tw_exit and syn: only then does an exit it
    /// could not explain wait for a late SYN (late_syn.rs).
    pub fn set_late_syns(&mut self, on: bool) {
        self.unexplained.set_on(on);
    }

    /// The monotonic clock now: an unexplained exit waits for its SYN no longer than this
    /// allows, even while the ring is never drained empty.
    pub fn set_now(&mut self, now_ns: u64) {
        self.now_ns = now_ns;
    }

    /// Says that every record up to `ts_ns` has been read: an unexplained exit whose SYN has
    /// not come by then (see late_syn.rs) goes out as it came, and an overflow from before then that
    /// no retraction followed was one, and goes out with the next batch. On the tracepoint
    /// routes an abort (close() with unread data, SO_LINGER 0, ...) closes a FIN_WAIT2 socket
    /// before it sends its reset, so its close first reads as an overflow, which the kernel
    /// side retracts when the reset comes (in the same call; within 0.2 s, RESET_WINDOW_NS, on a
    /// preempted CPU); until then the overflow is held.
    /// `u64::MAX` at shutdown lets every held one go.
    pub fn settled_before(&mut self, ts_ns: u64) {
        self.settled_before = ts_ns;
    }

    /// [`Pipeline::feed`] for each record of a batch, in order, prefetching the state of the
    /// record `AHEAD` places on: the TIME-WAITs' enter times sit in a table of megabytes, and a
    /// miss there per record was the tracer's largest cost; overlapped, it mostly is not.
    pub fn feed_batch(&mut self, batch: &[Event], filter: &Filter, mut f: impl FnMut(&Record)) {
        const AHEAD: usize = 8;
        for ev in batch.iter().take(AHEAD) {
            self.lifetimes.prefetch(ev);
        }
        for (i, ev) in batch.iter().enumerate() {
            if let Some(next) = batch.get(i + AHEAD) {
                self.lifetimes.prefetch(next);
            }
            self.feed(*ev, filter, &mut f);
        }
        self.release_held(filter, f);
    }

    /// Held records whose wait is over (exits no late SYN explained, overflows no
    /// retraction can follow any more), decoded and handed to `f`.
    fn release_held(&mut self, filter: &Filter, mut f: impl FnMut(&Record)) {
        // Also by the clock, less a second for the ring's lag: a ring never drained empty
        // (`settled_before` stays) must not keep them for good.
        let upto = self
            .settled_before
            .max(self.now_ns.saturating_sub(1_000_000_000));
        for exit in self.unexplained.expired(upto) {
            self.feed_paired(exit, filter, &mut f);
        }
        if self.held_overflows.is_empty() {
            return;
        }
        let upto = if self.held_overflows.len() > MAX_HELD_OVERFLOWS {
            u64::MAX
        } else {
            self.settled_before
        };
        let mut held = std::mem::take(&mut self.held_overflows);
        held.retain(|ev| {
            if ev.ts_ns > upto {
                return true;
            }
            if let Some(rec) = signals::decode(ev, &self.ctx)
                && filter.matches(&rec)
            {
                f(&rec);
            }
            false
        });
        self.held_overflows = held;
    }

    /// Keeps a tracepoint route's overflow back, or drops it with its retraction: true when
    /// `ev` is taken care of here.
    fn hold_overflow(&mut self, ev: &Event) -> bool {
        if ev.detail == overflow_detail::RETRACT {
            // The latest of that socket: its memory may have served an earlier overflow.
            if let Some(i) = self.held_overflows.iter().rposition(|h| h.obj == ev.obj) {
                self.held_overflows.remove(i);
            }
            return true;
        }
        let by_tracepoint =
            ev.hook == HookFamily::Tracepoint as u8 || ev.hook == HookFamily::TpBtf as u8;
        if by_tracepoint {
            self.held_overflows.push(*ev);
        }
        by_tracepoint
    }

    /// Hands `f` the record decoded from `ev` (the ring's copy, taken over) and the verdict it
    /// completes, if any, when the filter keeps them.
    #[inline]
    pub fn feed(&mut self, ev: Event, filter: &Filter, mut f: impl FnMut(&Record)) {
        if self.unexplained.wanted(&ev) {
            // Paired with its enter now, in the order the kernel reported it: the freed
            // socket's memory makes new TIME-WAITs while it waits.
            let mut ev = ev;
            self.pair_lifetime(&mut ev, &mut f);
            match self.unexplained.hold(ev) {
                Held::Waiting => {}
                Held::GoesOn(now) => self.feed_paired(now, filter, f),
                Held::Explained(exit, syn) => {
                    // Its SYN went on already: the exit, then the verdict the two make. (The
                    // SYN is the retransmit, a second newer than the one the TIME-WAIT took:
                    // its verdict can read by timestamp where that one's was by sequence.)
                    let verdict = TwSynClassifier::joined(&exit, &syn);
                    let ends = signals::endpoints(&exit);
                    self.feed_one(exit, ends, Join::Known(None), Paired::Yes, filter, &mut f);
                    if let Some(what) = verdict {
                        let rec = signals::record_at(&syn, ends, what);
                        if filter.matches(&rec) {
                            f(&rec);
                        }
                    }
                }
            }
            return;
        }
        if let Some(exit) = self.unexplained.on_syn(&ev) {
            // The two halves of one record, as if the kernel had joined them.
            let verdict = TwSynClassifier::joined(&exit, &ev);
            let exit_ends = signals::endpoints(&exit);
            let ends = signals::endpoints(&ev);
            self.feed_one(
                exit,
                exit_ends,
                Join::Known(None),
                Paired::Yes,
                filter,
                &mut f,
            );
            self.feed_one(ev, ends, Join::Known(verdict), Paired::No, filter, &mut f);
            return;
        }
        self.feed_now(ev, filter, f);
    }

    /// Pairs `ev` with its enter (or remembers the enter), reporting enters forgotten for
    /// memory as lost.
    #[inline]
    fn pair_lifetime(&mut self, ev: &mut Event, f: &mut impl FnMut(&Record)) {
        self.lifetimes.on_event(ev);
        let forgotten = self.lifetimes.take_forgotten();
        if forgotten > 0 {
            // A loss names no flow: never filtered out.
            f(&Record::lost(
                ev.ts_ns,
                tw_exit::FORGOTTEN,
                forgotten,
                LossReason::TableFull,
            ));
        }
    }

    /// An exit that waited (already paired), decoded and handed on.
    fn feed_paired(&mut self, ev: Event, filter: &Filter, f: impl FnMut(&Record)) {
        let ends = signals::endpoints(&ev);
        self.feed_one(ev, ends, Join::Classify, Paired::Yes, filter, f);
    }

    /// [`Pipeline::feed`] past the wait for late SYNs.
    #[inline]
    fn feed_now(&mut self, ev: Event, filter: &Filter, mut f: impl FnMut(&Record)) {
        // Built once for every record of this connection the raw one gives (up to four: an
        // exit, its SYN, their verdict; two `SocketAddr`s each were a tenth of decoding).
        let ends = signals::endpoints(&ev);
        match split_exit_and_syn(&ev) {
            Some((exit, syn)) => {
                // The pair is already joined: its verdict needs no classifier state.
                let verdict = TwSynClassifier::joined(&exit, &syn);
                self.feed_one(exit, ends, Join::Known(None), Paired::No, filter, &mut f);
                self.feed_one(syn, ends, Join::Known(verdict), Paired::No, filter, &mut f);
            }
            None => self.feed_one(ev, ends, Join::Classify, Paired::No, filter, f),
        }
    }

    /// `ends`: `ev`'s endpoints, which nothing here changes.
    #[inline]
    fn feed_one(
        &mut self,
        mut ev: Event,
        ends: (SocketAddr, SocketAddr),
        join: Join,
        paired: Paired,
        filter: &Filter,
        mut f: impl FnMut(&Record),
    ) {
        if ev.kind == EventKind::TwOverflow as u8 && self.hold_overflow(&ev) {
            return;
        }
        if let Paired::No = paired {
            self.pair_lifetime(&mut ev, &mut f);
        }
        self.request_ts.on_event(&mut ev);
        let derived = match join {
            Join::Classify => self.tw_syn.on_event(&ev),
            Join::Known(verdict) => verdict,
        };
        // Two plain steps, not a chain of the two options: its state machine was a quarter of
        // this function's own cost.
        let mut hand = |what| {
            let rec = signals::record_at(&ev, ends, what);
            if filter.matches(&rec) {
                f(&rec);
            }
        };
        if let Some(what) = signals::decode_what(&ev, &self.ctx) {
            hand(what);
        }
        if let Some(what) = derived {
            hand(what);
        }
    }
}

/// Whether a record's lifetime pairing is done (an exit that waited for its SYN was paired
/// when it came).
enum Paired {
    Yes,
    No,
}

/// Where a record's TIME-WAIT SYN verdict comes from.
enum Join {
    /// The classifier pairs exits and SYNs that came as records of their own.
    Classify,
    /// Already known: a half of an exit that carried its SYN (the verdict goes with the SYN).
    Known(Option<What>),
}

/// A TIME-WAIT exit that carries the SYN which replaced it (`ts_flags::WITH_SYN`, the tp_btf
/// route), as the two records the other routes send: the exit at its own time, then the SYN
/// at its. The rest of the pipeline then treats every route alike.
fn split_exit_and_syn(ev: &Event) -> Option<(Event, Event)> {
    if ev.ts_flags & ts_flags::WITH_SYN == 0
        || EventKind::from_u8(ev.kind) != Some(EventKind::TwExit)
    {
        return None;
    }
    let mut exit = *ev;
    exit.ts_flags = ev.ts_flags & ts_flags::HAS_TS_RECENT;
    exit.tsval = 0;
    exit.tcp_flags = 0;
    // Timed at the SYN, the exit could pair with a newer TIME-WAIT's enter at the freed
    // socket's address, made meanwhile. (0: a producer that did not say; the SYN's then.)
    if ev.timeout_jiffies != 0 {
        exit.ts_ns = ev.timeout_jiffies;
    }
    exit.timeout_jiffies = 0;
    let mut syn = *ev;
    syn.timeout_jiffies = 0;
    syn.kind = EventKind::Syn as u8;
    syn.detail = 0;
    syn.obj = 0;
    syn.ts_recent = 0;
    syn.ts_flags = ev.ts_flags & ts_flags::HAS_TSVAL;
    Some((exit, syn))
}

#[cfg(test)]
mod tests {
    use super::{fixtures::*, late_syn::LATE_SYN_NS, *};
    use twtrace_common::ExitCause;

    /// One record carrying an exit and its SYN gives the very records the two would: the exit
    /// (with its lifetime), the SYN, and the verdict they make, whatever the SYN's timestamps.
    #[test]
    fn an_exit_carrying_its_syn_decodes_as_the_two_records() {
        let filter = Filter {
            ports: vec![],
            nets: vec![],
        };
        for has_ts in [true, false] {
            let [mut exit, mut syn, enter] = connection(1_000_000_000, 7, 40_000);
            if !has_ts {
                syn.ts_flags = 0;
                syn.tsval = 0;
            }
            let mut enter0 = enter;
            enter0.ts_ns = 1_000;
            let run = |evs: &[Event]| {
                let mut p = Pipeline::new(DecodeCtx { hz: 250 }, 1024);
                let mut out = Vec::new();
                p.feed_batch(evs, &filter, |r| out.push(*r));
                out
            };
            let one = run(&[enter0, merged(&exit, &syn)]);
            exit.ts_flags &= ts_flags::HAS_TS_RECENT;
            exit.seq = 0;
            syn.obj = 0;
            syn.seq = 0;
            let two = run(&[enter0, exit, syn]);
            assert_eq!(one, two, "timestamps: {has_ts}");
            // The enter, the exit, the SYN and its verdict.
            assert_eq!(one.len(), 4, "{one:?}");
        }
    }

    /// An exit held back until a SYN sent again a second later, while the freed socket
    /// already holds a newer TIME-WAIT: the exit pairs with its own enter, by its own time,
    /// not with the newer one's (which then read 'entry unseen' at its end).
    #[test]
    fn a_late_syn_leaves_its_exit_at_its_own_time() {
        let filter = Filter::default();
        let [mut exit, mut syn, mut enter_x] = connection(0, 7, 40_000);
        (enter_x.ts_ns, exit.ts_ns, syn.ts_ns) = (100, 200, 600);
        let mut enter_z = enter_x;
        enter_z.rport = 40_001; // another connection, in the freed socket's memory
        enter_z.ts_ns = 500;
        let mut exit_z = exit;
        (exit_z.rport, exit_z.ts_ns) = (40_001, 900);
        let mut p = Pipeline::new(DecodeCtx { hz: 250 }, 1024);
        let mut lifetimes = Vec::new();
        let batch = [enter_x, enter_z, merged(&exit, &syn), exit_z];
        p.feed_batch(&batch, &filter, |r| {
            if let What::TwExit { lifetime_ns, .. } = r.what {
                lifetimes.push((r.remote.port(), r.ts_ns, lifetime_ns));
            }
        });
        assert_eq!(
            lifetimes,
            [(40_000, 200, Some(100)), (40_001, 900, Some(400))]
        );
    }

    /// An exit the kernel could not explain waits for a late SYN of its 4-tuple (a listener
    /// dropped the first one): the retransmit makes it `replaced_by_syn` at its own time, with
    /// its verdict, whether it comes after the exit or (the exit reported late) before it; one
    /// that no SYN follows goes out `unknown` once the wait is over.
    #[test]
    fn a_late_syn_explains_an_unknown_exit() {
        let filter = Filter::default();
        let mut p = Pipeline::new(DecodeCtx { hz: 250 }, 1024);
        let [mut exit, mut syn, _] = connection(0, 7, 40_000);
        exit.detail = ExitCause::Unknown as u8;
        (exit.ts_ns, syn.ts_ns) = (1_000_000_000, 2_000_000_000);
        let mut lone = exit;
        lone.rport = 40_001;
        // Reported by the kernel after its SYN.
        let (mut after, mut its_syn) = (exit, syn);
        (after.rport, its_syn.rport) = (40_002, 40_002);
        let mut out = Vec::new();
        let mut seen = |r: &Record| out.push((r.ts_ns, r.remote.port(), r.what));
        p.feed_batch(&[exit, lone], &filter, &mut seen);
        p.settled_before(1_500_000_000);
        p.feed_batch(&[syn, its_syn, after], &filter, &mut seen);
        p.settled_before(exit.ts_ns + late_syn::LATE_SYN_NS);
        p.feed_batch(&[], &filter, &mut seen);
        let causes: Vec<_> = out
            .iter()
            .map(|(ts, port, what)| match what {
                What::TwExit { cause, .. } => format!("{ts} {port} exit {cause:?}"),
                What::Syn { .. } => format!("{ts} {port} syn"),
                What::TwSyn { verdict, .. } => format!("{ts} {port} tw_syn {verdict:?}"),
                other => format!("{ts} {port} {other:?}"),
            })
            .collect();
        assert_eq!(
            causes,
            [
                "1000000000 40000 exit ReplacedBySyn",
                "2000000000 40000 syn",
                "2000000000 40000 tw_syn AcceptedByTimestamp",
                "2000000000 40002 syn",
                "1000000000 40002 exit ReplacedBySyn",
                "2000000000 40002 tw_syn AcceptedByTimestamp",
                "1000000000 40001 exit Unknown",
            ]
        );
    }

    /// Unexplained exits are paired with their enters when they come, not when their wait
    /// ends: the freed socket's memory holds newer TIME-WAITs by then (A, B and C at one
    /// address here), and each exit still gets its own lifetime. The wait ends by the clock
    /// too, a second later than by the drain, for a ring never drained empty.
    #[test]
    fn waiting_exits_keep_their_lifetimes() {
        let filter = Filter::default();
        let mut p = Pipeline::new(DecodeCtx { hz: 250 }, 1024);
        let [mut exit_a, _, mut enter_a] = connection(0, 7, 40_000);
        exit_a.detail = ExitCause::Unknown as u8;
        let (mut enter_b, mut exit_b, mut enter_c) = (enter_a, exit_a, enter_a);
        (enter_b.rport, exit_b.rport, enter_c.rport) = (40_001, 40_001, 40_002);
        (enter_a.ts_ns, exit_a.ts_ns) = (1_000, 2_000);
        (enter_b.ts_ns, exit_b.ts_ns, enter_c.ts_ns) = (3_000, 4_000, 5_000);
        let out = std::cell::RefCell::new(Vec::new());
        let seen = |r: &Record| {
            if let What::TwExit { lifetime_ns, cause } = r.what {
                out.borrow_mut().push((r.remote.port(), cause, lifetime_ns));
            }
        };
        p.feed_batch(&[enter_a, exit_a, enter_b, exit_b, enter_c], &filter, seen);
        p.set_now(LATE_SYN_NS + 1_000_000_000);
        p.feed_batch(&[], &filter, seen);
        assert!(out.borrow().is_empty(), "still waiting: {out:?}");
        p.set_now(LATE_SYN_NS + 1_000_004_000);
        p.feed_batch(&[], &filter, seen);
        let out = out.into_inner();
        use crate::event::ExitCause as Cause;
        assert_eq!(
            out,
            [
                (40_000, Cause::Unknown, Some(1_000)),
                (40_001, Cause::Unknown, Some(1_000))
            ]
        );
    }

    /// A tracepoint route's overflow is held until the reader says that its retraction can no
    /// longer come: dropped with a retraction (an abort's reset), handed on otherwise. A
    /// function probe's overflow is the overflow itself: handed on at once.
    #[test]
    fn tracepoint_overflows_wait_for_their_retraction() {
        let filter = Filter {
            ports: vec![],
            nets: vec![],
        };
        let overflow = |sk: u64, ts_ns: u64, hook: HookFamily| {
            let [_, _, mut ev] = connection(ts_ns, sk, 40_000);
            ev.kind = EventKind::TwOverflow as u8;
            ev.detail = 0;
            ev.hook = hook as u8;
            ev.obj = sk;
            ev.ts_ns = ts_ns;
            ev
        };
        let retract = |sk: u64, ts_ns: u64| {
            let mut ev = overflow(sk, ts_ns, HookFamily::TpBtf);
            ev.detail = overflow_detail::RETRACT;
            ev
        };
        let mut p = Pipeline::new(DecodeCtx { hz: 250 }, 1024);
        let mut out = Vec::new();
        let batch = [
            overflow(1, 1_000, HookFamily::TpBtf),
            overflow(2, 2_000, HookFamily::Tracepoint),
            retract(1, 1_500),
            overflow(3, 3_000, HookFamily::Fentry),
            overflow(4, 9_000, HookFamily::TpBtf),
        ];
        p.feed_batch(&batch, &filter, |r| out.push(r.ts_ns));
        assert_eq!(out, [3_000], "only the function probe's at once");
        p.settled_before(5_000);
        p.feed_batch(&[], &filter, |r| out.push(r.ts_ns));
        assert_eq!(out, [3_000, 2_000], "the unretracted one settled");
        p.settled_before(u64::MAX);
        p.feed_batch(&[], &filter, |r| out.push(r.ts_ns));
        assert_eq!(out, [3_000, 2_000, 9_000], "all at shutdown");
    }

    /// Beyond `max_live_tw` live TIME-WAITs, enters forgotten for memory are reported as lost
    /// (`max_live_tw`), at once, whatever the filter: LIVE over-counts by that many
    /// until the live table reads the kernel's sockets again (`--reread`).
    #[test]
    fn forgotten_enters_are_reported_as_lost() {
        let filter = Filter {
            ports: vec![1],
            nets: vec![],
        };
        let cap = 1024;
        let mut p = Pipeline::new(DecodeCtx { hz: 250 }, cap);
        let mut lost = Vec::new();
        let enters: Vec<Event> = (0..3 * cap as u64)
            .map(|i| {
                let [_, _, mut enter] = connection(1_000 + i, i + 1, 40_000);
                enter.obj = 0x1000 + i;
                enter
            })
            .collect();
        p.feed_batch(&enters, &filter, |r| {
            if let crate::event::What::Lost { program, count, .. } = r.what {
                lost.push((program, count));
            }
        });
        // The second generation filled with one still in the first: those are dropped.
        let total: u64 = lost.iter().map(|(_, c)| c).sum();
        assert!(lost.iter().all(|(p, _)| *p == "max_live_tw"), "{lost:?}");
        assert_eq!(total, cap as u64, "{lost:?}");
    }
}
