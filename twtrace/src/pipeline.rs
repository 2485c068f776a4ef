//! What happens to every raw record between the ring buffer and a sink, in order: lifetimes
//! are paired (every route but classic tracepoints), a TIME-WAIT exit and the SYN that replaced it are joined into a
//! verdict, the record is decoded, and the filter (--netns/--port/--ip) keeps it or not.
//!
//! It runs tens of thousands of times a second (three records per connection under churn),
//! so it is kept free of allocation; `churn_cost` below measures it.

use twtrace_common::Event;

use crate::{
    event::Record,
    filter::Filter,
    signals::{self, DecodeCtx, tw_exit::Lifetimes, tw_syn::TwSynClassifier},
};

pub struct Pipeline {
    ctx: DecodeCtx,
    lifetimes: Lifetimes,
    tw_syn: TwSynClassifier,
}

impl Pipeline {
    /// `max_live_tw` bounds the TIME-WAITs whose entry time is remembered (for lifetimes).
    pub fn new(ctx: DecodeCtx, max_live_tw: usize) -> Self {
        Self {
            ctx,
            lifetimes: Lifetimes::new(max_live_tw),
            tw_syn: TwSynClassifier::default(),
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
    pub fn feed(&mut self, mut ev: Event, filter: &Filter, mut f: impl FnMut(&Record)) {
        self.lifetimes.on_event(&mut ev);
        let derived = self.tw_syn.on_event(&ev);
        for rec in signals::decode(&ev, &self.ctx).into_iter().chain(derived) {
            if filter.matches(&rec) {
                f(&rec);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use twtrace_common::{AF_INET, EventKind, ExitCause, HookFamily, ts_flags};

    use super::*;
    use crate::aggregate::Aggregate;

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
        exit.ts_flags = ts_flags::HAS_TS_RECENT | ts_flags::HAS_RCV_NXT;
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

    /// Measures the user-space cost per connection of the live table's path (pipeline and
    /// aggregate), on a synthetic churn of one client IP cycling through 64k ports. A
    /// measurement, not a test of speed: `cargo test --release -p twtrace churn_cost --
    /// --ignored --nocapture`.
    #[test]
    #[ignore = "measurement; run by hand"]
    fn churn_cost() {
        let mut p = Pipeline::new(DecodeCtx { hz: 250 }, 262_144);
        let mut agg = Aggregate::new(65_536);
        let filter = Filter {
            ports: vec![],
            nets: vec![],
        };
        let n = 1_000_000u64;
        let conns: Vec<[Event; 3]> = (0..n)
            .map(|i| connection(i, 1024 + (i % 64_512) as u16))
            .collect();
        // The fastest of five passes: this machine's noise only ever adds time.
        let mut best = f64::INFINITY;
        for _ in 0..5 {
            let start = Instant::now();
            // In batches, as the ring buffer hands them over.
            for batch in conns.as_flattened().chunks(1024) {
                p.feed_batch(batch, &filter, |r| agg.apply(r));
            }
            best = best.min(start.elapsed().as_nanos() as f64 / n as f64);
        }
        eprintln!("user space: {best:.0} ns per connection (3 records), fastest of 5 passes");
        assert_eq!(agg.totals().tw_created, 5 * n);
    }
}
