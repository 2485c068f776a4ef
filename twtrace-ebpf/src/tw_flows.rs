//! Live TIME-WAITs by connection, for the tp_btf route on kernels whose `kfree_skb` does not
//! name the dropping socket (before 6.11, no `rx_sk`).
//!
//! There a TIME-WAIT's verdict on a segment (a PAWS reject, a reset it answers) ends in a drop
//! with reason NOT_SPECIFIED and nothing else: the socket has to be found from the segment.
//! Matching it to a TIME-WAIT this CPU just cancelled or re-armed was tried and fails, because
//! `__mod_timer` re-arms a pending timer in place, with no tracepoint, when the new expiry falls
//! in the same timer-wheel bucket. So the table is kept from the TIME-WAIT's birth (timer
//! start) to its end (exit, whatever the cause): every drop can be looked up, whatever its
//! timers did.
//!
//! Kept only when user space sets `route::TW_FLOWS` (such kernels, tp_btf chosen for PAWS or TW
//! exit); sized at load to `--max-live-tw` there and to one entry elsewhere.

use aya_log_ebpf::warn;
use twtrace_common::{Event, FlowKey, LossSlot};

use crate::{emit::count_loss, kernel::Flow, maps::TW_BY_FLOW, segment};

/// A new TIME-WAIT `tw` with this flow.
#[inline(always)]
pub fn remember<C: aya_ebpf::EbpfContext>(ctx: &C, flow: &Flow, tw: u64) {
    let k = FlowKey::new(
        flow.netns,
        flow.family,
        flow.lport,
        flow.rport,
        &flow.laddr,
        &flow.raddr,
    );
    if TW_BY_FLOW.insert(&k, &tw, 0).is_err() {
        let n = count_loss(LossSlot::LiveTableFull);
        if n.is_power_of_two() {
            warn!(
                ctx,
                "TIME-WAIT flow table full ({} times on this CPU): their PAWS rejects are missed; raise --max-live-tw",
                n
            );
        }
    }
}

/// A TIME-WAIT timer re-armed or ending: `ev` (its exit event, prepared) may be a TIME-WAIT
/// born before twtrace started, unknown to the table. Entered now, its drops from here on are
/// found (a PAWS reject re-arms the timer before its segment is dropped). A re-arm that lands in
/// the same timer-wheel bucket is not traced, so a TIME-WAIT younger than about two seconds at
/// start-up may still be missed until it ends. Out of line, like [`forget`].
#[inline(never)]
pub fn learn(ev: &Event) {
    let k = FlowKey::new(
        ev.netns, ev.family, ev.lport, ev.rport, &ev.laddr, &ev.raddr,
    );
    // BPF_NOEXIST: a TIME-WAIT born under twtrace is in already (the usual case); a full table
    // was reported at birth.
    let _ = TW_BY_FLOW.insert(&k, &ev.obj, 1);
}

/// The end of the TIME-WAIT reported by `ev` (its exit event). A newer TIME-WAIT of the same
/// connection may already hold the key: only the entry of this one goes. Out of line: its key
/// would otherwise sit in the frame of kfree_skb's dispatcher, whose PAWS path needs most of
/// the 512-byte stack (6.1's verifier adds up caller and callee frames).
#[inline(never)]
pub fn forget(ev: &Event) {
    let k = FlowKey::new(
        ev.netns, ev.family, ev.lport, ev.rport, &ev.laddr, &ev.raddr,
    );
    if let Some(tw) = unsafe { TW_BY_FLOW.get(&k) }
        && *tw == ev.obj
    {
        let _ = TW_BY_FLOW.remove(&k);
    }
}

/// The live TIME-WAIT the segment in `skb` (received in namespace `netns`) was addressed to,
/// or 0.
#[inline(always)]
pub fn of_segment(skb: u64, netns: u32) -> u64 {
    let Some(s) = (unsafe { segment::addresses_of(skb) }) else {
        return 0;
    };
    // The segment travels from the remote end to the local one.
    let k = FlowKey::new(netns, s.family, s.dport, s.sport, &s.daddr, &s.saddr);
    unsafe { TW_BY_FLOW.get(&k) }.copied().unwrap_or(0)
}
