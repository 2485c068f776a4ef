//! The ts_recent of a request socket that rejected a segment by PAWS, where the kernel does
//! not hand it over: since ~6.15 such a reject has its drop reason, but kfree_skb names the
//! listener, not the request socket (twtrace-ebpf/src/paws.rs). A request socket's ts_recent
//! is the TSval of the SYN that created it, which the `syn` signal reported (read from that
//! same request socket), so the reject takes it from there.
//!
//! Exact as long as the request socket took no other timestamp since. tcp_check_req updates
//! ts_recent from an in-window segment it accepts, and most of those end the request socket;
//! those that do not are a segment without ACK, SYN or RST, a bare ACK held back by
//! TCP_DEFER_ACCEPT, and an ACK that found the accept queue full (tcp_abort_on_overflow=0).
//! After one of those the true ts_recent is newer than the SYN's TSval. So the SYN's TSval is
//! taken only where it explains the reject (the rejected TSval is older than it); otherwise,
//! and where no SYN was seen (twtrace started after it, its record was lost, or the `syn`
//! signal is off), ts_recent stays null: never a guess. Entries older than a request socket
//! lives with default settings are ignored, and a slot taken by another connection is not
//! this one's. Rejects for their TSecr (`BY_TSECR`) compared no ts_recent and get none.

use twtrace_common::{Event, EventKind, PawsPath, ts_flags};

use super::{RawFlow, raw_flow};

/// Slots (a power of two). A request socket lives for one round trip unless its client
/// never answers; 4096 recent SYNs cover well over that at any realistic SYN rate.
const SLOTS: usize = 4096;
/// The longest a request socket lives with the default tcp_synack_retries (5): the SYN-ACK and
/// its retransmissions, 1+2+...+32 s.
const MAX_AGE_NS: u64 = 64_000_000_000;

/// Direct-mapped: one slot per hash, the newest SYN wins. A store per SYN, no allocation.
pub struct RequestTsvals {
    slots: Box<[Option<(RawFlow, u64, u32)>]>,
}

impl Default for RequestTsvals {
    fn default() -> Self {
        Self {
            slots: vec![None; SLOTS].into_boxed_slice(),
        }
    }
}

fn slot_of(ev: &Event) -> usize {
    // IPv4 sits in the first four bytes (twtrace-common), IPv6 differs most in the last four.
    let word = |i: usize| {
        u32::from_ne_bytes([
            ev.raddr[i],
            ev.raddr[i + 1],
            ev.raddr[i + 2],
            ev.raddr[i + 3],
        ])
    };
    let r = word(0) ^ word(12);
    let h = ev.netns ^ r ^ (u32::from(ev.rport) << 16 | u32::from(ev.lport));
    (h.wrapping_mul(0x9E37_79B1) >> (32 - SLOTS.trailing_zeros())) as usize
}

impl RequestTsvals {
    /// Remembers a SYN's TSval; gives a request-socket reject without ts_recent the TSval of
    /// the SYN that created its request socket.
    #[inline]
    pub fn on_event(&mut self, ev: &mut Event) {
        match EventKind::from_u8(ev.kind) {
            Some(EventKind::Syn) if ev.ts_flags & ts_flags::HAS_TSVAL != 0 => {
                self.slots[slot_of(ev)] = Some((raw_flow(ev), ev.ts_ns, ev.tsval));
            }
            Some(EventKind::PawsReject)
                if ev.detail == PawsPath::SynRecv as u8
                    && ev.ts_flags & (ts_flags::HAS_TS_RECENT | ts_flags::BY_TSECR) == 0
                    && ev.ts_flags & ts_flags::HAS_TSVAL != 0 =>
            {
                if let Some((key, at, syn_tsval)) = self.slots[slot_of(ev)]
                    && key == raw_flow(ev)
                    && ev.ts_ns.saturating_sub(at) <= MAX_AGE_NS
                    && (syn_tsval.wrapping_sub(ev.tsval) as i32) > 0
                {
                    ev.ts_recent = syn_tsval;
                    ev.ts_flags |= ts_flags::HAS_TS_RECENT;
                }
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(kind: EventKind, ts_ns: u64, rport: u16) -> Event {
        let mut e = Event::zeroed();
        e.kind = kind as u8;
        e.ts_ns = ts_ns;
        (e.netns, e.family, e.lport, e.rport) = (7, 2, 443, rport);
        e.raddr[..4].copy_from_slice(&[192, 0, 2, 9]);
        e
    }

    fn syn(ts_ns: u64, rport: u16, tsval: u32) -> Event {
        let mut e = ev(EventKind::Syn, ts_ns, rport);
        e.tsval = tsval;
        e.ts_flags = ts_flags::HAS_TSVAL;
        e
    }

    fn reject(ts_ns: u64, rport: u16) -> Event {
        let mut e = ev(EventKind::PawsReject, ts_ns, rport);
        e.detail = PawsPath::SynRecv as u8;
        e.tsval = 500;
        e.ts_flags = ts_flags::HAS_TSVAL;
        e
    }

    fn ts_recent(e: &Event) -> Option<u32> {
        (e.ts_flags & ts_flags::HAS_TS_RECENT != 0).then_some(e.ts_recent)
    }

    /// An IPv4 SYN at a `[::]` listener: its request socket (the `syn` record) is AF_INET6
    /// with `::ffff:` addresses, the reject (built from the IPv4 segment) AF_INET. One
    /// connection.
    #[test]
    fn a_dual_stack_listeners_reject_finds_its_syn() {
        let mut t = RequestTsvals::default();
        let mut s = syn(1_000, 40000, 1500);
        s.family = twtrace_common::AF_INET6;
        for a in [&mut s.laddr, &mut s.raddr] {
            let v4 = [a[0], a[1], a[2], a[3]];
            *a = [
                0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, v4[0], v4[1], v4[2], v4[3],
            ];
        }
        t.on_event(&mut s);
        let mut r = reject(2_000, 40000);
        t.on_event(&mut r);
        assert_eq!(ts_recent(&r), Some(1500));
    }

    #[test]
    fn a_reject_takes_the_tsval_of_its_request_sockets_syn() {
        let mut t = RequestTsvals::default();
        t.on_event(&mut syn(1_000, 40000, 1500));
        t.on_event(&mut syn(2_000, 40001, 9999));
        let mut r = reject(3_000, 40000);
        t.on_event(&mut r);
        assert_eq!(ts_recent(&r), Some(1500));
        // The newest SYN of the connection is the request socket's.
        t.on_event(&mut syn(4_000, 40000, 1700));
        let mut r = reject(5_000, 40000);
        t.on_event(&mut r);
        assert_eq!(ts_recent(&r), Some(1700));
    }

    #[test]
    fn unknown_stale_or_other_paths_are_left_alone() {
        let mut t = RequestTsvals::default();
        // No SYN seen for this connection.
        let mut r = reject(1_000, 40000);
        t.on_event(&mut r);
        assert_eq!(ts_recent(&r), None);
        // A SYN older than any request socket lives.
        t.on_event(&mut syn(1_000, 40002, 1500));
        let mut r = reject(1_000 + MAX_AGE_NS + 1, 40002);
        t.on_event(&mut r);
        assert_eq!(ts_recent(&r), None);
        // A SYN without timestamps is not remembered.
        let mut s = syn(2_000, 40003, 0);
        s.ts_flags = 0;
        t.on_event(&mut s);
        let mut r = reject(3_000, 40003);
        t.on_event(&mut r);
        assert_eq!(ts_recent(&r), None);
        // Rejects that came with ts_recent, or on another path, keep what they have.
        t.on_event(&mut syn(4_000, 40004, 1500));
        let mut r = reject(5_000, 40004);
        r.ts_recent = 42;
        r.ts_flags |= ts_flags::HAS_TS_RECENT;
        t.on_event(&mut r);
        assert_eq!(ts_recent(&r), Some(42));
        let mut r = reject(5_000, 40004);
        r.detail = PawsPath::Established as u8;
        t.on_event(&mut r);
        assert_eq!(ts_recent(&r), None);
        // A TSecr reject compared no ts_recent.
        let mut r = reject(5_000, 40004);
        r.ts_flags |= ts_flags::BY_TSECR;
        t.on_event(&mut r);
        assert_eq!(ts_recent(&r), None);
        // A SYN TSval that cannot explain the reject (not newer than the rejected TSval) is
        // not the request socket's ts_recent any more.
        t.on_event(&mut syn(6_000, 40005, 400));
        let mut r = reject(7_000, 40005);
        t.on_event(&mut r);
        assert_eq!(ts_recent(&r), None);
    }
}
