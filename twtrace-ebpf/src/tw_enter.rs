//! TW enter: a socket became a timewait socket.
//!
//! Tracepoint route (works where fentry/kprobes are refused): `timer:timer_start` filtered on
//! `function == tw_timer_handler`. The timer is embedded in the inet_timewait_sock, so the
//! socket is `timer - offsetof(inet_timewait_sock, tw_timer)`. A TIME-WAIT timer is also re-armed
//! (PAWS reject, retransmitted FIN); a re-arm is announced by tw_exit's timer_cancel program
//! (it sees the cancel that precedes the restart), so only sockets it does not know and that
//! are not being re-armed are new. This route needs tw_exit on its tracepoint route too, as it
//! is wherever function probes are refused; otherwise a re-arm of a TIME-WAIT older than
//! twtrace would count as new.
//!
//! tp_btf route: the same timer, from the shared `timer_start` dispatcher. A re-arm is
//! recognised by the cancel parked on this CPU just before (see tw_exit.rs), so no lookup is
//! needed here.
//!
//! Function-probe route: `__inet_twsk_schedule(tw, timeo, rearm)` with `rearm == false` is the
//! first arm, called by `tcp_time_wait` right after the socket was created. It hands us the
//! timewait socket itself, which `tcp_time_wait(sk, ...)` does not.

use aya_ebpf::{
    EbpfContext,
    helpers::{bpf_jiffies64, bpf_ktime_get_ns},
    macros::{fentry, kprobe, tracepoint},
    programs::{FEntryContext, ProbeContext, TracePointContext},
};
use aya_log_ebpf::warn;
use twtrace_common::{EventKind, HookFamily, LossSlot, route};

use crate::{
    emit::{count_loss, emit},
    kernel::{Access, Fields, Head, Typed, flow_of, hooks_only, netns_wanted, routes, typed},
    layout,
    maps::{LAST_ENTER, LIVE, LiveTw, REARMING},
    tw_exit, tw_flows, tw_overflow,
};

#[tracepoint]
pub fn tw_enter_timer_start(ctx: TracePointContext) -> u32 {
    if hooks_only() {
        return 0;
    }
    // Cheapest possible filter first: this tracepoint fires ~9 times per connection.
    let Ok(func) = (unsafe { ctx.read_at::<u64>(layout!(tp_timer_start_function) as usize) })
    else {
        return 0;
    };
    if func != layout!(tw_timer_handler) {
        return 0;
    }
    let Ok(timer) = (unsafe { ctx.read_at::<u64>(layout!(tp_timer_start_timer) as usize) }) else {
        return 0;
    };
    let tw = timer - layout!(tw_timer) as u64;
    if let Some(live) = unsafe { LIVE.get(&tw) } {
        // A re-arm of a TIME-WAIT we know, unless the kernel skipped our program at its end
        // (a softirq nested in a BPF program; user space reports those runs) and this is a
        // new TIME-WAIT in its memory: its identity (ports and hash) tells (the entry is then
        // replaced below).
        if live.id == tw_exit::identity_at(tw) {
            return 0;
        }
    }
    // Unknown socket: a new TIME-WAIT, or a re-arm of one from before twtrace started. A
    // re-arm cancels the pending timer first, on this CPU, which tw_exit's timer_cancel
    // program notes in REARMING; a first arm has nothing to cancel.
    if let Some(r) = REARMING.get_ptr_mut(0) {
        let r = unsafe { &mut *r };
        if r.timer == timer && unsafe { bpf_ktime_get_ns() }.saturating_sub(r.ts_ns) < r.window_ns {
            r.timer = 0;
            return 0;
        }
    }
    let expires: u64 =
        unsafe { ctx.read_at(layout!(tp_timer_start_expires) as usize) }.unwrap_or(0);
    let now: u64 = unsafe { ctx.read_at(layout!(tp_timer_start_now) as usize) }.unwrap_or(0);
    // Attached for tw_overflow's sake alone, it only leaves its mark (`LAST_ENTER`).
    let routes = if routes() & route::classic(route::TW_ENTER) != 0 {
        route::TW_ENTER
    } else {
        0
    };
    enter(
        &ctx,
        tw,
        expires.wrapping_sub(now),
        HookFamily::Tracepoint,
        routes,
        Access::Copied,
    )
}

/// tp_btf route: a TIME-WAIT timer was started and it is not a re-arm (the dispatcher checked).
/// `routes` says whether to report it (TW_ENTER), to remember its flow (TW_FLOWS), or both;
/// with neither (tw_overflow alone) it only leaves its mark for tw_overflow.
#[inline(always)]
pub fn started<C: EbpfContext>(ctx: &C, timer: u64, routes: u32) {
    // A direct load: `timer` is the tracepoint's typed argument.
    let expires: u64 = unsafe { typed(timer, layout!(timer_expires)) };
    let now = unsafe { bpf_jiffies64() };
    enter(
        ctx,
        timer - layout!(tw_timer) as u64,
        expires.wrapping_sub(now),
        HookFamily::TpBtf,
        routes,
        Access::Copied,
    );
}

#[fentry(function = "__inet_twsk_schedule")]
pub fn tw_enter_fentry(ctx: FEntryContext) -> u32 {
    if hooks_only() {
        return 0;
    }
    let tw: u64 = ctx.arg(0);
    let timeo: u64 = ctx.arg(1);
    let rearm: u64 = ctx.arg(2);
    if rearm & 0xff != 0 {
        return 0;
    }
    enter(
        &ctx,
        tw,
        timeo & 0xffff_ffff,
        HookFamily::Fentry,
        route::TW_ENTER,
        Access::Typed,
    )
}

#[kprobe]
pub fn tw_enter_kprobe(ctx: ProbeContext) -> u32 {
    if hooks_only() {
        return 0;
    }
    let (Some(tw), Some(timeo), Some(rearm)) =
        (ctx.arg::<u64>(0), ctx.arg::<u64>(1), ctx.arg::<u64>(2))
    else {
        return 0;
    };
    if rearm & 0xff != 0 {
        return 0;
    }
    enter(
        &ctx,
        tw,
        timeo & 0xffff_ffff,
        HookFamily::Kprobe,
        route::TW_ENTER,
        Access::Copied,
    )
}

/// Bytes of a timewait socket copied at an enter: past tw_substate on 6.x kernels.
const TW_ENTER_HEAD: usize = 144;

/// Records and reports a new TIME-WAIT socket `tw` (shared by every hook of this signal; the
/// tp_btf dispatcher and the classic program attached for tw_overflow alone pass `routes`
/// other than TW_ENTER). Always leaves the mark tw_overflow's close looks for.
#[inline(always)]
fn enter<C: EbpfContext>(
    ctx: &C,
    tw: u64,
    timeout_jiffies: u64,
    hook: HookFamily,
    routes: u32,
    access: Access,
) -> u32 {
    if matches!(hook, HookFamily::Fentry | HookFamily::Kprobe) {
        tw_exit::parked_at(tw);
    }
    if access == Access::Typed {
        let h = Typed::timewait(tw);
        return enter_from(ctx, &h, tw, timeout_jiffies, hook, routes);
    }
    // One copy for the flow and the substate (sock_common, then tw_substate right after it).
    let mut h = Head::<TW_ENTER_HEAD>::at(tw, 0);
    if !unsafe { h.fill() } {
        return 0;
    }
    enter_from(ctx, &h, tw, timeout_jiffies, hook, routes)
}

/// [`enter`], reading the socket's fields through `h`.
#[inline(always)]
fn enter_from<C: EbpfContext, F: Fields>(
    ctx: &C,
    h: &F,
    tw: u64,
    timeout_jiffies: u64,
    hook: HookFamily,
    routes: u32,
) -> u32 {
    let Some(flow) = (unsafe { flow_of(h, layout!(tw_common)) }) else {
        return 0;
    };
    if !netns_wanted(flow.netns) {
        return 0;
    }
    if routes & route::TW_FLOWS != 0 {
        tw_flows::remember(ctx, &flow, tw);
    }
    let ts = unsafe { bpf_ktime_get_ns() };
    // The mark tw_overflow's close looks for: this socket got its TIME-WAIT (it is needed
    // whether or not enters are reported).
    if let Some(last) = LAST_ENTER.get_ptr_mut(0) {
        // Field by field: the padding is never read, and writing it costs a memset call. An
        // unconsumed mark of a moment ago is the call this one runs nested in: kept.
        unsafe {
            if ts.saturating_sub((*last).ts_ns[0]) < tw_overflow::SAME_CALL_NS {
                (*last).ts_ns[1] = ts;
                (*last).rport[1] = flow.rport;
            } else {
                (*last).ts_ns[0] = ts;
                (*last).rport[0] = flow.rport;
            }
        }
    }
    if routes & route::TW_ENTER == 0 {
        return 0;
    }
    // Only the classic tracepoint route keeps TIME-WAITs in a kernel table: it needs one to
    // tell a re-arm from a first arm (above). Every other route leaves lifetimes to user space,
    // which pairs this enter with the exit by socket address: a hash insert, lookup and delete
    // per TIME-WAIT cost about 750 instructions here (fentry, stock 6.12), more than user
    // space's pairing.
    if hook == HookFamily::Tracepoint {
        let live = LiveTw {
            enter_ts: ts,
            id: tw_exit::identity_in(h),
        };
        if LIVE.insert(&tw, &live, 0).is_err() {
            let n = count_loss(LossSlot::LiveTableFull);
            if n.is_power_of_two() {
                warn!(
                    ctx,
                    "live TIME-WAIT table full ({} times on this CPU): lifetimes unknown; raise --max-live-tw",
                    n
                );
            }
        }
    }
    let substate: u8 = unsafe { h.get(layout!(tw_substate)) }.unwrap_or(0);
    emit(LossSlot::TwEnter, |ev| {
        ev.ts_ns = ts;
        ev.obj = tw;
        ev.timeout_jiffies = timeout_jiffies;
        flow.fill(ev);
        ev.kind = EventKind::TwEnter as u8;
        ev.detail = substate;
        ev.hook = hook as u8;
    });
    0
}
