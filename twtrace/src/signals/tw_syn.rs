//! SYNs that reach a TIME-WAIT socket, classified: accepted by timestamp, accepted by
//! sequence, rejected by PAWS, rejected otherwise.
//!
//! No hook of its own: the verdict is assembled from other signals' records. A TIME-WAIT
//! replaced by a SYN exits (cause `replaced_by_syn`, carrying the ts_recent it judged with)
//! and, right after on the same CPU, that SYN creates a request socket (`syn`,
//! carrying its TSval): the kernel accepted it because its TSval was newer than ts_recent
//! (by timestamp), or else because its sequence was after rcv_nxt (by sequence) — the test
//! in tcp_timewait_state_process. Rejections come from the `paws` signal (a PAWS reject of a
//! SYN, or a SYN refused otherwise).

use std::num::NonZeroUsize;

use twtrace_common::{Event, EventKind, ExitCause, PawsPath, ts_flags};

use super::{RawFlow, flagged, raw_flow};
use crate::{
    aggregate::{Lru, lru},
    event::{
        TwSynVerdict, What,
        th::{ACK as TH_ACK, RST as TH_RST, SYN as TH_SYN},
    },
};

/// A replacing SYN follows its TIME-WAIT's exit within microseconds, or, when the listener
/// dropped it (a full accept queue), comes again 1 s or 3 s later (SYN retransmits): anything
/// older is stale. The same wait as for tp_btf's unexplained exits (pipeline/late_syn.rs).
const PAIRING_WINDOW_NS: u64 = 4_000_000_000;
/// Pending exits kept at most (each waits for one SYN); a bound, not a tuning knob.
const PENDING: NonZeroUsize = NonZeroUsize::new(4096).expect("non-zero");

struct Pending {
    ts_ns: u64,
    ts_recent: Option<u32>,
}

impl Pending {
    fn of(exit: &Event) -> Self {
        Self {
            ts_ns: exit.ts_ns,
            // 0: the connection had no timestamps (ts_recent was never set), and the kernel
            // then reads none from the SYN: accepted by sequence alone. (A real ts_recent of 0
            // is one in 2^32; the eBPF PAWS test reads 0 alike.)
            ts_recent: flagged(exit, ts_flags::HAS_TS_RECENT, exit.ts_recent).filter(|&r| r != 0),
        }
    }
}

fn replaced(exit: &Event) -> bool {
    ExitCause::from_u8(exit.detail) == ExitCause::ReplacedBySyn
}

/// The verdict on `syn`, accepted by the TIME-WAIT whose exit is `p`: by timestamp if its
/// TSval was newer than ts_recent, else by sequence (tcp_timewait_state_process's test).
fn accepted(p: &Pending, syn: &Event) -> What {
    let tsval = flagged(syn, ts_flags::HAS_TSVAL, syn.tsval);
    let newer =
        matches!((tsval, p.ts_recent), (Some(t), Some(r)) if (r.wrapping_sub(t) as i32) < 0);
    let verdict = if newer {
        TwSynVerdict::AcceptedByTimestamp
    } else {
        TwSynVerdict::AcceptedBySequence
    };
    What::TwSyn {
        verdict,
        tsval,
        ts_recent: p.ts_recent,
    }
}

pub struct TwSynClassifier {
    /// The latest exit: its SYN is almost always the very next record (the same program run
    /// emits both), so most pairs never touch the map.
    last: Option<(RawFlow, Pending)>,
    /// Older exits still waiting (records of another CPU came in between).
    pending: Lru<RawFlow, Pending>,
}

impl Default for TwSynClassifier {
    fn default() -> Self {
        Self {
            last: None,
            pending: lru(PENDING),
        }
    }
}

impl TwSynClassifier {
    /// Looks at one raw record; returns the `tw_syn` verdict it completes, if any (a record
    /// about the same connection as `ev`, at the same time).
    pub fn on_event(&mut self, ev: &Event) -> Option<What> {
        let kind = EventKind::from_u8(ev.kind)?;
        // Most records (TIME-WAIT enters, other exits) play no part: leave before any work.
        if !matches!(
            kind,
            EventKind::TwExit | EventKind::Syn | EventKind::PawsReject
        ) {
            return None;
        }
        let key = raw_flow(ev);
        let pure_syn = ev.tcp_flags & (TH_SYN | TH_ACK | TH_RST) == TH_SYN;
        match kind {
            EventKind::TwExit if replaced(ev) => {
                let exit = Pending::of(ev);
                if let Some((k, older)) = self.last.replace((key, exit)) {
                    self.pending.insert(k, older);
                }
                None
            }
            EventKind::Syn => {
                // The newest exit of this 4-tuple wins, as if every exit went to the map: one
                // in `last` is newer than any in the map, which only takes exits `last` held.
                let newest = self.last.take_if(|(k, _)| *k == key).map(|(_, p)| p);
                self.forget_stale(ev.ts_ns);
                let older = if self.pending.is_empty() {
                    None
                } else {
                    self.pending.remove(&key)
                };
                let p = newest.or(older)?;
                if ev.ts_ns.saturating_sub(p.ts_ns) > PAIRING_WINDOW_NS {
                    return None;
                }
                Some(accepted(&p, ev))
            }
            EventKind::PawsReject if ev.detail == PawsPath::Timewait as u8 && pure_syn => {
                Some(What::TwSyn {
                    verdict: TwSynVerdict::RejectedPaws,
                    tsval: flagged(ev, ts_flags::HAS_TSVAL, ev.tsval),
                    ts_recent: flagged(ev, ts_flags::HAS_TS_RECENT, ev.ts_recent),
                })
            }
            _ => None,
        }
    }

    /// The verdict of an exit and the SYN that replaced it, the two halves of one record
    /// (the pair every connection gives under churn; the pipeline splits it): no pairing to
    /// do, so nothing is stored or looked up. `None` unless the exit says it was replaced.
    pub fn joined(exit: &Event, syn: &Event) -> Option<What> {
        debug_assert_eq!(EventKind::from_u8(syn.kind), Some(EventKind::Syn));
        replaced(exit).then(|| accepted(&Pending::of(exit), syn))
    }

    /// Drops waiting exits past the pairing window, oldest first, so that in steady churn the
    /// map is empty again and a SYN with no exit before it costs no hash lookup.
    fn forget_stale(&mut self, now_ns: u64) {
        while let Some((_, p)) = self.pending.peek_oldest() {
            if now_ns.saturating_sub(p.ts_ns) <= PAIRING_WINDOW_NS {
                break;
            }
            self.pending.pop_oldest();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(kind: EventKind, ts_ns: u64) -> Event {
        let mut e = Event::zeroed();
        e.kind = kind as u8;
        e.ts_ns = ts_ns;
        e.family = twtrace_common::AF_INET;
        e.netns = 7;
        e.laddr[..4].copy_from_slice(&[10, 0, 0, 1]);
        e.raddr[..4].copy_from_slice(&[10, 0, 0, 2]);
        e.lport = 80;
        e.rport = 40000;
        e
    }

    fn exit(ts_recent: u32) -> Event {
        let mut e = ev(EventKind::TwExit, 1_000);
        e.detail = ExitCause::ReplacedBySyn as u8;
        e.ts_recent = ts_recent;
        e.ts_flags = ts_flags::HAS_TS_RECENT;
        e
    }

    fn syn(tsval: Option<u32>, ts_ns: u64) -> Event {
        let mut e = ev(EventKind::Syn, ts_ns);
        e.tcp_flags = TH_SYN;
        if let Some(t) = tsval {
            e.tsval = t;
            e.ts_flags = ts_flags::HAS_TSVAL;
        }
        e
    }

    /// `e` from remote port `port` (another 4-tuple).
    fn on_port(mut e: Event, port: u16) -> Event {
        e.rport = port;
        e
    }

    fn verdict(w: Option<What>) -> Option<TwSynVerdict> {
        match w? {
            What::TwSyn { verdict, .. } => Some(verdict),
            _ => None,
        }
    }

    #[test]
    fn newer_tsval_is_accepted_by_timestamp() {
        let mut c = TwSynClassifier::default();
        assert_eq!(c.on_event(&exit(1000)), None);
        assert_eq!(
            verdict(c.on_event(&syn(Some(1001), 2_000))),
            Some(TwSynVerdict::AcceptedByTimestamp)
        );
        // Paired once only.
        assert_eq!(c.on_event(&syn(Some(1001), 3_000)), None);
    }

    /// A TIME-WAIT of a connection without timestamps keeps ts_recent 0, and the kernel
    /// parses no option of the SYN then: only its sequence can let it in.
    #[test]
    fn no_timestamps_at_time_wait_means_accepted_by_sequence() {
        let mut c = TwSynClassifier::default();
        c.on_event(&exit(0));
        match c.on_event(&syn(Some(0x1000_0000), 2_000)) {
            Some(What::TwSyn {
                verdict, ts_recent, ..
            }) => {
                assert_eq!(verdict, TwSynVerdict::AcceptedBySequence);
                assert_eq!(ts_recent, None);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn interleaved_exits_pair_with_their_own_syns() {
        let mut c = TwSynClassifier::default();
        // Two exits of different 4-tuples before either SYN (another CPU's records between).
        c.on_event(&on_port(exit(1000), 1));
        c.on_event(&on_port(exit(5000), 2));
        assert_eq!(
            verdict(c.on_event(&on_port(syn(Some(999), 2_000), 1))),
            Some(TwSynVerdict::AcceptedBySequence)
        );
        assert_eq!(
            verdict(c.on_event(&on_port(syn(Some(5001), 2_000), 2))),
            Some(TwSynVerdict::AcceptedByTimestamp)
        );
        // Two exits of one 4-tuple: the newer is judged, and neither pairs again.
        c.on_event(&on_port(exit(1000), 3));
        c.on_event(&on_port(exit(900), 4));
        c.on_event(&on_port(exit(3000), 3));
        assert_eq!(
            verdict(c.on_event(&on_port(syn(Some(2000), 2_500), 3))),
            Some(TwSynVerdict::AcceptedBySequence)
        );
        assert_eq!(c.on_event(&on_port(syn(Some(2000), 2_600), 3)), None);
        assert_eq!(
            verdict(c.on_event(&on_port(syn(Some(901), 2_700), 4))),
            Some(TwSynVerdict::AcceptedByTimestamp)
        );
    }

    #[test]
    fn exits_left_waiting_are_forgotten_after_the_window() {
        let mut c = TwSynClassifier::default();
        // Port 1's SYN never comes (a SYN cookie, say); port 2's exit pushes it to the map.
        c.on_event(&on_port(exit(1000), 1));
        c.on_event(&on_port(exit(1000), 2));
        assert_eq!(c.pending.len(), 1);
        // A SYN within the window leaves it waiting; one past the window clears it.
        c.on_event(&on_port(syn(Some(1), 500_000_000), 9));
        assert_eq!(c.pending.len(), 1);
        c.on_event(&on_port(syn(Some(1), 2_000_000_000), 9));
        assert_eq!(c.pending.len(), 1, "a retransmit may still come");
        c.on_event(&on_port(syn(Some(1), 5_000_000_000), 9));
        assert_eq!(c.pending.len(), 0);
    }

    #[test]
    fn older_or_missing_tsval_means_accepted_by_sequence() {
        let mut c = TwSynClassifier::default();
        c.on_event(&exit(1000));
        assert_eq!(
            verdict(c.on_event(&syn(Some(999), 2_000))),
            Some(TwSynVerdict::AcceptedBySequence)
        );
        c.on_event(&exit(1000));
        assert_eq!(
            verdict(c.on_event(&syn(None, 2_000))),
            Some(TwSynVerdict::AcceptedBySequence)
        );
        // Wrap-around: 5 is newer than u32::MAX - 5.
        c.on_event(&exit(u32::MAX - 5));
        assert_eq!(
            verdict(c.on_event(&syn(Some(5), 2_000))),
            Some(TwSynVerdict::AcceptedByTimestamp)
        );
    }

    #[test]
    fn unrelated_or_late_syns_are_not_paired() {
        let mut c = TwSynClassifier::default();
        c.on_event(&exit(1000));
        let mut other = syn(Some(2000), 2_000);
        other.rport = 40001;
        assert_eq!(c.on_event(&other), None);
        assert_eq!(c.on_event(&syn(Some(2000), 5_000_001_001)), None);
        // A SYN a listener dropped comes again a second later: still its exit's.
        let mut c = TwSynClassifier::default();
        c.on_event(&exit(1000));
        assert!(c.on_event(&syn(Some(2000), 1_000_001_000)).is_some());
    }

    #[test]
    fn paws_rejected_syn_is_classified() {
        let mut c = TwSynClassifier::default();
        let mut e = ev(EventKind::PawsReject, 1);
        e.detail = PawsPath::Timewait as u8;
        e.tcp_flags = TH_SYN;
        assert_eq!(verdict(c.on_event(&e)), Some(TwSynVerdict::RejectedPaws));
        e.tcp_flags = TH_ACK;
        assert_eq!(c.on_event(&e), None, "only SYNs get a SYN verdict");
    }
}
