//! SYN timestamps: every SYN that made a listener create a request socket, with its TSval
//! (or the fact that it had none) and its source port, for the per-IP clock estimate.
//!
//! Tracepoint route: the request socket's retransmit timer is armed right after the SYN was
//! accepted into the queue: `timer:timer_start` with `function == reqsk_timer_handler`; the
//! timer is embedded in the request_sock, which holds the SYN's TSval (`ts_recent`), whether
//! it carried timestamps (`tstamp_ok`) and its ISN (`rcv_isn`). This costs no extra hook on
//! the receive path. SYN cookies and TCP Fast Open create no request socket and are not seen.
//! Only the timer's first arm is the SYN (see [`first_arm`]).
//!
//! tp_btf route: the same timer, from the shared `timer_start` dispatcher.
//!
//! Function-probe route: `inet_csk_reqsk_queue_hash_add(sk, req, timeout)`, the same socket.

use aya_ebpf::{
    helpers::bpf_ktime_get_ns,
    macros::{fentry, kprobe, tracepoint},
    programs::{FEntryContext, ProbeContext, TracePointContext},
};
use twtrace_common::{Event, EventKind, ExitCause, HookFamily, LossSlot, ts_flags};

use crate::{
    emit::{count_loss, emit},
    kernel::{
        Access, Fields, Flow, Head, Typed, flow_of, hooks_only, netns_wanted, read, read_flow,
    },
    layout,
};

#[tracepoint]
pub fn syn_timer_start(ctx: TracePointContext) -> u32 {
    if hooks_only() {
        return 0;
    }
    let Ok(func) = (unsafe { ctx.read_at::<u64>(layout!(tp_timer_start_function) as usize) })
    else {
        return 0;
    };
    if func != layout!(reqsk_timer_handler) || func == 0 {
        return 0;
    }
    let Ok(timer) = (unsafe { ctx.read_at::<u64>(layout!(tp_timer_start_timer) as usize) }) else {
        return 0;
    };
    let req = timer - layout!(req_timer) as u64;
    if !first_arm(req) {
        return 0;
    }
    report(req, HookFamily::Tracepoint, Access::Copied)
}

/// Whether a request socket's timer starts for the first time: the SYN that created it. The
/// timer is armed again at every SYN-ACK retransmit (by its own handler, the SYN's TSval then
/// stale by seconds) and for every retransmitted SYN (tcp_check_req), each after
/// `num_retrans` went up, and by its handler without a retransmit (a listener deferring
/// accept until data has had the handshake's ACK; a retransmit that failed) after
/// `num_timeout` went up. The function-probe route sees the first arm only.
#[inline(always)]
pub fn first_arm(req: u64) -> bool {
    // num_retrans is a byte, num_timeout a bitfield just after it: one read for both.
    unsafe { read::<u32>(req, layout!(req_num_retrans)) }.is_some_and(|w| {
        w & 0xff == 0 && (w >> layout!(req_num_timeout_shift)) & layout!(req_num_timeout_mask) == 0
    })
}

#[fentry(function = "inet_csk_reqsk_queue_hash_add")]
pub fn syn_fentry(ctx: FEntryContext) -> u32 {
    if hooks_only() {
        return 0;
    }
    report(ctx.arg(1), HookFamily::Fentry, Access::Typed)
}

#[kprobe]
pub fn syn_kprobe(ctx: ProbeContext) -> u32 {
    if hooks_only() {
        return 0;
    }
    ctx.arg::<u64>(1)
        .map_or(0, |req| report(req, HookFamily::Kprobe, Access::Copied))
}

/// Bytes copied from a request socket for the SYN's fields: they span 136 on 6.x kernels, and
/// the copy starts up to 7 bytes before the first of them (rounded down to a multiple of 8).
const SYN_FIELDS: usize = 152;

#[inline(always)]
fn min3(a: u32, b: u32, c: u32) -> u32 {
    a.min(b).min(c)
}

#[inline(always)]
fn report(req: u64, hook: HookFamily, access: Access) -> u32 {
    // A request_sock starts with its sock_common (addresses, ports, netns).
    let flow = match access {
        Access::Typed => unsafe { flow_of(&Typed::request(req), 0) },
        Access::Copied => unsafe { read_flow(req) },
    };
    let Some(flow) = flow else {
        return 0;
    };
    // The TIME-WAIT this SYN replaced, if its exit waits here for it: one record for both.
    match crate::tw_exit::take_replaced(&flow) {
        Some(parked) => {
            report_flow(req, &flow, hook, Some(&parked.ev));
            parked.timer = 0;
            0
        }
        None => report_flow(req, &flow, hook, None),
    }
}

/// Reports the SYN behind request socket `req`, whose flow the caller has read. With
/// `replaced` (the exit of the TIME-WAIT this SYN replaced, prepared by tw_exit), one record
/// carries both (`ts_flags::WITH_SYN`): one ring reservation and one record for user space
/// instead of two, on the path every connection takes under churn.
#[inline(always)]
pub fn report_flow(req: u64, flow: &Flow, hook: HookFamily, replaced: Option<&Event>) -> u32 {
    if !netns_wanted(flow.netns) {
        return 0;
    }
    // The SYN's TSval, tstamp_ok bit and ISN sit within ~140 bytes of each other: one copy
    // from the first of them (fields outside it are read on their own).
    let bit = layout!(ireq_tstamp_ok_bit);
    // Rounded down to a multiple of 8 so that the copy keeps the fields' alignment (each is
    // then one load, see `Head::get`).
    let first = min3(bit / 8, layout!(req_ts_recent), layout!(req_rcv_isn)) & !7;
    let mut h = Head::<SYN_FIELDS>::at(req, first);
    let copied = unsafe { h.fill() };
    let get = |off: u32| -> Option<u32> {
        if copied {
            unsafe { h.get::<u32>(off) }
        } else {
            unsafe { read(req, off) }
        }
    };
    let byte: u8 = if copied {
        unsafe { h.get(bit / 8) }
    } else {
        unsafe { read(req, bit / 8) }
    }
    .unwrap_or(0);
    let has_ts = byte & (1 << (bit % 8)) != 0;
    let tsval = get(layout!(req_ts_recent)).unwrap_or(0);
    let isn = get(layout!(req_rcv_isn)).unwrap_or(0);
    let sent = emit(LossSlot::Syn, |ev| {
        ev.ts_ns = unsafe { bpf_ktime_get_ns() };
        flow.fill(ev);
        ev.hook = hook as u8;
        ev.tcp_flags = 0x02;
        if has_ts {
            ev.tsval = tsval;
            ev.ts_flags = ts_flags::HAS_TSVAL;
        }
        match replaced {
            Some(exit) => {
                ev.kind = EventKind::TwExit as u8;
                ev.detail = ExitCause::ReplacedBySyn as u8;
                ev.obj = exit.obj;
                // Its own time (the cancel): the SYN may come much later, see WITH_SYN.
                ev.timeout_jiffies = exit.ts_ns;
                ev.ts_recent = exit.ts_recent;
                ev.ts_flags |= ts_flags::WITH_SYN | (exit.ts_flags & ts_flags::HAS_TS_RECENT);
            }
            None => {
                ev.kind = EventKind::Syn as u8;
                ev.obj = req;
                ev.seq = isn;
            }
        }
    });
    if !sent && replaced.is_some() {
        count_loss(LossSlot::TwExit);
    }
    0
}
