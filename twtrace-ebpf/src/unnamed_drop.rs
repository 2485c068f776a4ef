//! tp_btf before 6.11: `kfree_skb` does not name the socket that dropped a segment (`rx_sk`).
//! Two signals need that socket when it is a TIME-WAIT: a PAWS reject there (its ts_recent,
//! its namespace) and a kill by reset (the exit's cause). The kernel's own steps on this CPU,
//! just before the drop, name it instead:
//! - a PAWS reject (or any ACK) re-arms the TIME-WAIT's timer inside
//!   `tcp_timewait_state_process`: `timer_cancel` + `timer_start` of that timer, recorded here
//!   by the re-arm detection of tw_exit.rs;
//! - a kill (a reset received, or a reset answering data after a half-close) cancels the timer
//!   for good: the exit parked by tw_exit.rs.
//! `tcp_v{4,6}_rcv` then frees the segment before this CPU handles any other one. The socket is
//! taken only when the dropped segment's ports are that socket's, and for a parked exit only
//! when it is not a SYN (a SYN may instead have replaced the TIME-WAIT and been dropped by the
//! listener afterwards; such an exit stays `unknown`).

use twtrace_common::Event;

use crate::{maps::TW_REARMED, segment, tw_exit};

const TH_SYN: u8 = 0x02;

/// The TIME-WAIT whose timer this CPU just re-armed (tp_btf re-arm detection).
#[inline(always)]
pub fn rearmed(tw: u64) {
    if let Some(slot) = TW_REARMED.get_ptr_mut(0) {
        unsafe { *slot = tw };
    }
}

/// The TIME-WAIT socket that dropped `skb`, as far as this CPU's last steps tell, or 0.
/// Out of line: the segment it parses gets a frame of its own (see dispatch.rs).
#[inline(never)]
pub fn socket_of(skb: u64) -> u64 {
    let rearmed = match TW_REARMED.get_ptr_mut(0) {
        // Consumed: it is about this segment or none.
        Some(slot) => unsafe { core::mem::replace(&mut *slot, 0) },
        None => 0,
    };
    let parked = tw_exit::parked_event();
    if rearmed == 0 && parked.is_none() {
        return 0; // the common case: no parse
    }
    let Some(seg) = (unsafe { segment::from_skb(skb) }) else {
        return 0;
    };
    if let Some(ev) = parked
        && seg.flags & TH_SYN == 0
        && ports_of(ev, seg.sport, seg.dport)
    {
        return ev.obj;
    }
    if rearmed != 0
        && let Some(flow) = unsafe { crate::kernel::read_flow(rearmed) }
        && flow.rport == seg.sport
        && flow.lport == seg.dport
    {
        return rearmed;
    }
    0
}

/// Whether a segment from remote port `sport` to local port `dport` is for the socket of `ev`.
#[inline(always)]
fn ports_of(ev: &Event, sport: u16, dport: u16) -> bool {
    ev.rport == sport && ev.lport == dport
}
