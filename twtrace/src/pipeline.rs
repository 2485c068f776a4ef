//! What happens to every raw record between the ring buffer and a sink, in order: lifetimes
//! are paired (every route but classic tracepoints), a request socket's reject that came
//! without ts_recent gets its SYN's TSval (signals/request_ts.rs), a TIME-WAIT exit and the
//! SYN that replaced it are joined into a verdict, the record is decoded, and the filter
//! (--netns/--port/--ip) keeps it or not.
//!
//! It runs tens of thousands of times a second (two or three records per connection under
//! churn: the tp_btf route sends a TIME-WAIT exit and the SYN that replaced it as one),
//! so it is kept free of allocation; `cargo bench -p twtrace` (benches/user_space.rs)
//! measures it.

use twtrace_common::{Event, EventKind, ts_flags};

use crate::{
    event::Record,
    filter::Filter,
    signals::{
        self, DecodeCtx, request_ts::RequestTsvals, tw_exit::Lifetimes, tw_syn::TwSynClassifier,
    },
};

pub struct Pipeline {
    ctx: DecodeCtx,
    lifetimes: Lifetimes,
    tw_syn: TwSynClassifier,
    request_ts: RequestTsvals,
}

impl Pipeline {
    /// `max_live_tw` bounds the TIME-WAITs whose entry time is remembered (for lifetimes).
    pub fn new(ctx: DecodeCtx, max_live_tw: usize) -> Self {
        Self {
            ctx,
            lifetimes: Lifetimes::new(max_live_tw),
            tw_syn: TwSynClassifier::default(),
            request_ts: RequestTsvals::default(),
        }
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
    }

    /// Hands `f` the record decoded from `ev` (the ring's copy, taken over) and the verdict it
    /// completes, if any, when the filter keeps them.
    #[inline]
    pub fn feed(&mut self, ev: Event, filter: &Filter, mut f: impl FnMut(&Record)) {
        match split_exit_and_syn(&ev) {
            Some((exit, syn)) => {
                self.feed_one(exit, filter, &mut f);
                self.feed_one(syn, filter, &mut f);
            }
            None => self.feed_one(ev, filter, f),
        }
    }

    #[inline]
    fn feed_one(&mut self, mut ev: Event, filter: &Filter, mut f: impl FnMut(&Record)) {
        self.lifetimes.on_event(&mut ev);
        self.request_ts.on_event(&mut ev);
        let derived = self.tw_syn.on_event(&ev);
        for rec in signals::decode(&ev, &self.ctx).into_iter().chain(derived) {
            if filter.matches(&rec) {
                f(&rec);
            }
        }
    }
}

/// A TIME-WAIT exit that carries the SYN which replaced it (`ts_flags::WITH_SYN`, the tp_btf
/// route), as the two records the other routes send: the exit, then the SYN, both at the
/// SYN's time. The rest of the pipeline then treats every route alike.
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
    let mut syn = *ev;
    syn.kind = EventKind::Syn as u8;
    syn.detail = 0;
    syn.obj = 0;
    syn.ts_recent = 0;
    syn.ts_flags = ev.ts_flags & ts_flags::HAS_TSVAL;
    Some((exit, syn))
}

#[cfg(test)]
mod tests {
    use twtrace_common::{AF_INET, ExitCause, HookFamily};

    use super::*;

    /// The records of one connection under the bench's churn, as the tp_btf route emits them:
    /// the client's SYN replaces the server's TIME-WAIT of the same 4-tuple, then the new
    /// connection ends in TIME-WAIT again.
    fn connection(i: u64, port: u16) -> [Event; 3] {
        let mut base = Event::zeroed();
        base.family = AF_INET;
        base.netns = 4026532000;
        base.laddr[..4].copy_from_slice(&[10, 231, 0, 1]);
        base.raddr[..4].copy_from_slice(&[10, 231, 0, 2]);
        base.lport = 8080;
        base.rport = port;
        base.hook = HookFamily::TpBtf as u8;
        let t = 1_000_000_000 + i * 50_000;
        let tw_addr = 0xffff_8880_0000_0000 + u64::from(port) * 512;
        let mut exit = base;
        exit.kind = EventKind::TwExit as u8;
        exit.detail = ExitCause::ReplacedBySyn as u8;
        exit.ts_ns = t;
        exit.obj = tw_addr;
        // Per-4-tuple TSval offsets, as Linux gives since early 2026 (this bench's kernel):
        // every port its own line, the clock estimator's costliest case.
        let offset = u32::from(port).wrapping_mul(2_654_435_761);
        exit.ts_recent = offset.wrapping_add((t / 1_000_000) as u32);
        exit.ts_flags = ts_flags::HAS_TS_RECENT;
        let mut syn = base;
        syn.kind = EventKind::Syn as u8;
        syn.ts_ns = t + 2_000;
        syn.tsval = offset.wrapping_add((t / 1_000_000) as u32 + 7);
        syn.ts_flags = ts_flags::HAS_TSVAL;
        syn.tcp_flags = 0x02;
        let mut enter = base;
        enter.kind = EventKind::TwEnter as u8;
        enter.ts_ns = t + 40_000;
        enter.obj = tw_addr;
        enter.timeout_jiffies = 15_000;
        [exit, syn, enter]
    }

    /// What the tp_btf route sends for `exit` and the `syn` that replaced it: one record.
    fn merged(exit: &Event, syn: &Event) -> Event {
        let mut m = *syn;
        m.kind = EventKind::TwExit as u8;
        m.detail = exit.detail;
        m.obj = exit.obj;
        m.ts_recent = exit.ts_recent;
        m.ts_flags = syn.ts_flags | ts_flags::WITH_SYN | (exit.ts_flags & ts_flags::HAS_TS_RECENT);
        m
    }

    /// One record carrying an exit and its SYN gives the very records the two would: the exit
    /// (with its lifetime), the SYN, and the verdict they make, whatever the SYN's timestamps.
    #[test]
    fn an_exit_carrying_its_syn_decodes_as_the_two_records() {
        let filter = Filter {
            ports: vec![],
            nets: vec![],
        };
        for has_ts in [true, false] {
            let [mut exit, mut syn, enter] = connection(7, 40_000);
            if !has_ts {
                syn.ts_flags = 0;
                syn.tsval = 0;
            }
            // The merged record has one time, the SYN's; and no rcv_nxt.
            exit.ts_ns = syn.ts_ns;
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
}
