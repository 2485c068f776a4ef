//! TW overflow: `tcp_time_wait` could not allocate a timewait socket (tcp_max_tw_buckets), so
//! the flow closed without TIME-WAIT. The kernel only bumps TcpExtTCPTimeWaitOverflow.
//!
//! Tracepoint routes: `sock:inet_sock_set_state` FIN_WAIT2/CLOSING -> CLOSE (the programs on it,
//! shared with connect_eaddrnotavail, are in twtrace-ebpf/src/dispatch.rs). When a TIME-WAIT was
//! created, its timer was armed on this CPU just before (tcp_time_wait runs with BH off), which
//! `LAST_ENTER` records. The other ways out of FIN_WAIT2/CLOSING are resets, received or sent
//! (`tcp:tcp_receive_reset`, `tcp:tcp_send_reset`, recorded in `LAST_RESET`), and a retransmit
//! timeout (the socket's error set), so a close that follows none of them is a refused
//! TIME-WAIT. (The call chain cannot tell: tcp_time_wait tail-calls
//! tcp_done, so its frame is gone.) The local port is already released from skc_num here;
//! inet_sport keeps it.
//!
//! Function-probe route: `inet_twsk_alloc(sk, ...)` returning NULL is the overflow itself
//! (tcp_time_wait counts TCPTimeWaitOverflow right after), and the socket still has its port.

use aya_ebpf::{
    helpers::bpf_ktime_get_ns,
    macros::{fexit, kprobe, kretprobe, tracepoint},
    maps::PerCpuArray,
    programs::{FExitContext, ProbeContext, RetProbeContext, TracePointContext},
};
use twtrace_common::{EventKind, HookFamily, LossSlot, overflow_detail};

use crate::{
    emit::emit,
    kernel::{Flow, fexit_ret, hooks_only, netns_wanted, read, read_flow},
    layout,
    maps::{LAST_ENTER, LAST_OVERFLOW, LAST_RESET, LastReset, OVERFLOW_SK},
};

const TCP_FIN_WAIT2: i32 = 5;
pub const TCP_CLOSE: i32 = 7;
const TCP_CLOSING: i32 = 11;
/// tcp_time_wait arms the timer and closes the socket within microseconds on one CPU; an abort
/// closes and resets as fast. Milliseconds of slack: under QEMU's TCG a kernel path run for
/// the first time is translated first (a first abort's reset came more than 1 ms after its
/// close), and a vCPU can be preempted. Marks match their own socket or port, and a close
/// consumes its mark, so the width costs little in precision (a TIME-WAIT's mark is matched
/// by remote port alone: kept short).
pub const SAME_CALL_NS: u64 = 10_000_000;
/// The same for a reset and the close it explains (an abort, or a keepalive timer's reset):
/// one call too, but marks by socket address and both ports can afford more. A vCPU
/// descheduled by a loaded host between the two stays so for tens of milliseconds (a guest
/// under TCG on a busy 2-CPU host: an abort's reset more than 10 ms after its close, so its
/// overflow stood). User space holds tracepoint-route overflows this long for their
/// retraction (run.rs, RETRACTION_NS).
pub const RESET_WINDOW_NS: u64 = 200_000_000;

/// The transitions a TIME-WAIT (or its refusal) ends a full socket with.
#[inline(always)]
pub fn leaves_fin_wait(oldstate: i32) -> bool {
    oldstate == TCP_FIN_WAIT2 || oldstate == TCP_CLOSING
}

/// A TCP socket went FIN_WAIT2/CLOSING (`oldstate`) -> CLOSE: an overflow unless a TIME-WAIT,
/// a reset or a retransmit timeout explains it. The cheap checks (on its remote port, host
/// order, read by the caller: a direct load where `sk` is typed) come before the flow is read.
#[inline(always)]
pub fn closed(sk: u64, oldstate: i32, rport: u16, hook: HookFamily) -> u32 {
    let ts = unsafe { bpf_ktime_get_ns() };
    if let Some(last) = LAST_ENTER.get_ptr_mut(0) {
        let last = unsafe { &mut *last };
        // A nested call's mark first: its close comes first.
        if last.rport[1] == rport && ts.saturating_sub(last.ts_ns[1]) < SAME_CALL_NS {
            last.ts_ns[1] = 0; // consumed: this close got its TIME-WAIT
            return 0;
        }
        if last.rport[0] == rport && ts.saturating_sub(last.ts_ns[0]) < SAME_CALL_NS {
            last.ts_ns[0] = 0;
            return 0;
        }
    }
    if let Some(rst) = LAST_RESET.get_ptr_mut(0) {
        let rst = unsafe { &mut *rst };
        if rst.sk == sk
            && rst.rport == rport
            && ts.saturating_sub(rst.ts_ns) < RESET_WINDOW_NS
            && rst.lport == local_port(sk)
        {
            rst.sk = 0;
            return 0;
        }
    }
    // A CLOSING socket whose retransmits timed out (an orphan whose FIN is never ACKed:
    // tcp_write_err, TcpExtTCPAbortOnTimeout) is closed with its error set and without a
    // reset. Only CLOSING: FIN_WAIT2 retransmits nothing, and an error left on a live socket
    // (an ICMP error under IP_RECVERR, kTLS) must not hide its overflow.
    if oldstate == TCP_CLOSING && unsafe { read::<i32>(sk, layout!(sk_err)) }.unwrap_or(0) != 0 {
        return 0;
    }
    let Some(mut flow) = (unsafe { read_flow(sk) }) else {
        return 0;
    };
    if !netns_wanted(flow.netns) {
        return 0;
    }
    if flow.lport == 0 {
        flow.lport = local_port(sk);
    }
    // Aborts set the state before they send their reset (close() with unread data, SO_LINGER
    // 0, TCP_LINGER2 < 0, data after close): reported now, retracted by that reset.
    mark(&LAST_OVERFLOW, sk, ts, rport, flow.lport);
    report(sk, &flow, ts, hook)
}

/// A reset about to close `sk` (received): remembered so the close is not taken for an overflow.
#[tracepoint]
pub fn tw_overflow_rst_rx(ctx: TracePointContext) -> u32 {
    if hooks_only() {
        return 0;
    }
    remember_reset(&ctx, layout!(tp_receive_reset_skaddr))
}

/// Same for a reset we send (FIN_WAIT2 timeout, abort).
#[tracepoint]
pub fn tw_overflow_rst_tx(ctx: TracePointContext) -> u32 {
    if hooks_only() {
        return 0;
    }
    remember_reset(&ctx, layout!(tp_send_reset_skaddr))
}

#[inline(always)]
fn remember_reset(ctx: &TracePointContext, off: u32) -> u32 {
    let Ok(sk) = (unsafe { ctx.read_at::<u64>(off as usize) }) else {
        return 0;
    };
    reset_for(sk)
}

/// A reset was received or sent for `sk`: its coming close is not an overflow, nor was the
/// close just reported as one (an abort closes first, then sends its reset).
#[inline(always)]
pub fn reset_for(sk: u64) -> u32 {
    if sk == 0 {
        return 0; // a reset for a segment no socket took: it explains no close
    }
    let ts = unsafe { bpf_ktime_get_ns() };
    // Marks name the socket by address and ports: a socket freed after its reset (a client's,
    // in LAST_ACK) is often reallocated at once on that CPU as the next accepted or connecting
    // socket, which can reach its own close within the window (a 7.3 guest under TCG missed
    // an overflow so).
    let rport = u16::from_be(unsafe { read::<u16>(sk, layout!(skc_dport)) }.unwrap_or(0));
    let lport = local_port(sk);
    if unsafe { read::<u8>(sk, layout!(skc_state)) } != Some(TCP_CLOSE as u8) {
        // Before its close (a reset received, a keepalive timer's or an orphan limit's reset):
        // marked for the close. Not a reset after the close (an abort's): a mark nothing
        // consumes would explain away a close of the next socket in this memory.
        mark(&LAST_RESET, sk, ts, rport, lport);
        return 0;
    }
    if let Some(last) = LAST_OVERFLOW.get_ptr_mut(0) {
        let last = unsafe { &mut *last };
        // The socket closed (above) and matched by its ports too: a reset of another socket
        // in its memory since does not retract it.
        if last.sk == sk
            && last.rport == rport
            && last.lport == lport
            && ts.saturating_sub(last.ts_ns) < RESET_WINDOW_NS
        {
            last.sk = 0;
            emit(LossSlot::TwOverflow, |ev| {
                ev.ts_ns = ts;
                ev.obj = sk;
                ev.kind = EventKind::TwOverflow as u8;
                ev.detail = overflow_detail::RETRACT;
            });
        }
    }
    0
}

#[inline(always)]
fn mark(map: &PerCpuArray<LastReset>, sk: u64, ts_ns: u64, rport: u16, lport: u16) {
    if let Some(slot) = map.get_ptr_mut(0) {
        // Field by field: writing the padding would cost a memset call.
        unsafe {
            (*slot).sk = sk;
            (*slot).ts_ns = ts_ns;
            (*slot).rport = rport;
            (*slot).lport = lport;
        }
    }
}

/// A socket's local port, host order. Closing releases skc_num first (tcp_set_state puts the
/// port before the state tracepoint); inet_sport keeps it.
#[inline(always)]
fn local_port(sk: u64) -> u16 {
    u16::from_be(unsafe { read::<u16>(sk, layout!(inet_sport)) }.unwrap_or(0))
}

#[fexit(function = "inet_twsk_alloc")]
pub fn tw_overflow_fexit(ctx: FExitContext) -> u32 {
    if hooks_only() {
        return 0;
    }
    if fexit_ret(&ctx, layout!(ret_slot_twsk_alloc)).unwrap_or(1) != 0 {
        return 0;
    }
    overflowed(ctx.arg(0), HookFamily::Fentry)
}

/// kprobe half: remember which socket asked for a timewait socket on this CPU.
#[kprobe]
pub fn tw_overflow_kprobe(ctx: ProbeContext) -> u32 {
    if hooks_only() {
        return 0;
    }
    let (Some(sk), Some(outer)) = (ctx.arg::<u64>(0), OVERFLOW_SK.get_ptr_mut(0)) else {
        return 0;
    };
    unsafe {
        if *outer == 0 {
            *outer = sk;
        } else if let Some(nested) = OVERFLOW_SK.get_ptr_mut(1) {
            *nested = sk;
        }
    }
    0
}

/// kretprobe half: NULL means no TIME-WAIT for that socket.
#[kretprobe]
pub fn tw_overflow_kretprobe(ctx: RetProbeContext) -> u32 {
    if hooks_only() {
        return 0;
    }
    // The innermost call returns first.
    let slot = match OVERFLOW_SK.get_ptr_mut(1) {
        Some(nested) if unsafe { *nested } != 0 => nested,
        _ => match OVERFLOW_SK.get_ptr_mut(0) {
            Some(outer) => outer,
            None => return 0,
        },
    };
    let sk = unsafe { core::mem::replace(&mut *slot, 0) };
    if sk == 0 || ctx.ret::<u64>() != 0 {
        return 0;
    }
    overflowed(sk, HookFamily::Kprobe)
}

#[inline(always)]
fn overflowed(sk: u64, hook: HookFamily) -> u32 {
    let Some(flow) = (unsafe { read_flow(sk) }) else {
        return 0;
    };
    if !netns_wanted(flow.netns) {
        return 0;
    }
    report(sk, &flow, unsafe { bpf_ktime_get_ns() }, hook)
}

#[inline(always)]
fn report(sk: u64, flow: &Flow, ts: u64, hook: HookFamily) -> u32 {
    emit(LossSlot::TwOverflow, |ev| {
        ev.ts_ns = ts;
        ev.obj = sk;
        flow.fill(ev);
        ev.kind = EventKind::TwOverflow as u8;
        ev.hook = hook as u8;
    });
    0
}
