//! TW exit and its cause.
//!
//! Tracepoint route: `timer:timer_cancel` on a TIME-WAIT timer. It fires on every end of a
//! TIME-WAIT (expiry detaches the timer first; every kill goes through timer_shutdown_sync) and
//! also on re-arms. The call chain tells them apart and names the cause (see `stack.rs`).
//!
//! Function-probe route: `inet_twsk_kill(tw)` runs exactly once per TIME-WAIT socket, from the
//! timer (expiry) or from `inet_twsk_deschedule_put` (every early kill); the same call-chain
//! classification names the cause. Where `inet_twsk_kill` is inlined, `tw_timer_handler` plus
//! `inet_twsk_deschedule_put` (only when the timer is still pending, i.e. the kill will happen
//! there) stand in for it.

use aya_ebpf::{
    EbpfContext,
    helpers::bpf_ktime_get_ns,
    macros::{fentry, kprobe, tracepoint},
    programs::{FEntryContext, ProbeContext, TracePointContext},
};
use twtrace_common::{EventKind, ExitCause, HookFamily, LossSlot, frame_class as fc, ts_flags};

use crate::{
    emit::emit,
    kernel::{netns_wanted, read, read_flow},
    layout,
    maps::{LIVE, REARMING, Rearming},
    stack::{bit, classify, classify_first},
};

const WANTED: u64 = bit(fc::REARM)
    | bit(fc::EXPIRE)
    | bit(fc::RCV)
    | bit(fc::TW_PROCESS)
    | bit(fc::CONNECT_REUSE)
    | bit(fc::PURGE);

#[tracepoint]
pub fn tw_exit_timer_cancel(ctx: TracePointContext) -> u32 {
    let Ok(timer) = (unsafe { ctx.read_at::<u64>(layout!(tp_timer_cancel_timer) as usize) }) else {
        return 0;
    };
    let func: u64 = unsafe { read(timer, layout!(timer_function)) }.unwrap_or(0);
    if func != layout!(tw_timer_handler) {
        return 0;
    }
    // Most cancels are expiries or re-arms, named by the immediate caller (__run_timers,
    // __mod_timer): unwinding one frame is enough for them; only kills need the full chain.
    let cause = match classify_first(&ctx, bit(fc::REARM) | bit(fc::EXPIRE)) {
        fc::EXPIRE => ExitCause::Expired,
        fc::REARM => return rearming(timer),
        _ => match cause_from_chain(&ctx) {
            Some(c) => c,
            None => return rearming(timer),
        },
    };
    exit(
        timer - layout!(tw_timer) as u64,
        cause,
        HookFamily::Tracepoint,
    )
}

/// A re-arm cancels then restarts the timer on this CPU: tell tw_enter's timer_start that
/// the start it is about to see is not a new TIME-WAIT (it may be one from before twtrace).
#[inline(always)]
fn rearming(timer: u64) -> u32 {
    if let Some(slot) = REARMING.get_ptr_mut(0) {
        unsafe {
            *slot = Rearming {
                timer,
                ts_ns: bpf_ktime_get_ns(),
            }
        };
    }
    0
}

#[fentry(function = "inet_twsk_kill")]
pub fn tw_exit_fentry(ctx: FEntryContext) -> u32 {
    let tw: u64 = ctx.arg(0);
    let cause = cause_from_chain(&ctx).unwrap_or(ExitCause::Unknown);
    exit(tw, cause, HookFamily::Fentry)
}

#[kprobe]
pub fn tw_exit_kprobe(ctx: ProbeContext) -> u32 {
    let Some(tw) = ctx.arg::<u64>(0) else {
        return 0;
    };
    let cause = cause_from_chain(&ctx).unwrap_or(ExitCause::Unknown);
    exit(tw, cause, HookFamily::Kprobe)
}

#[fentry(function = "tw_timer_handler")]
pub fn tw_exit_timer_fentry(ctx: FEntryContext) -> u32 {
    let timer: u64 = ctx.arg(0);
    exit(
        timer - layout!(tw_timer) as u64,
        ExitCause::Expired,
        HookFamily::Fentry,
    )
}

#[kprobe]
pub fn tw_exit_timer_kprobe(ctx: ProbeContext) -> u32 {
    let Some(timer) = ctx.arg::<u64>(0) else {
        return 0;
    };
    exit(
        timer - layout!(tw_timer) as u64,
        ExitCause::Expired,
        HookFamily::Kprobe,
    )
}

#[fentry(function = "inet_twsk_deschedule_put")]
pub fn tw_exit_deschedule_fentry(ctx: FEntryContext) -> u32 {
    let tw: u64 = ctx.arg(0);
    deschedule(&ctx, tw, HookFamily::Fentry)
}

#[kprobe]
pub fn tw_exit_deschedule_kprobe(ctx: ProbeContext) -> u32 {
    let Some(tw) = ctx.arg::<u64>(0) else {
        return 0;
    };
    deschedule(&ctx, tw, HookFamily::Kprobe)
}

/// `inet_twsk_deschedule_put` kills only if it can still cancel the timer; a timer no longer
/// pending is expiring on another CPU and `tw_timer_handler` reports it.
#[inline(always)]
fn deschedule<C: EbpfContext>(ctx: &C, tw: u64, hook: HookFamily) -> u32 {
    let timer = tw + layout!(tw_timer) as u64;
    let pprev: u64 = unsafe { read(timer, layout!(timer_entry_pprev)) }.unwrap_or(0);
    if pprev == 0 {
        return 0;
    }
    let cause = cause_from_chain(ctx).unwrap_or(ExitCause::Unknown);
    exit(tw, cause, hook)
}

/// Names the cause from the call chain; None for a timer re-arm (the socket lives on).
#[inline(always)]
fn cause_from_chain<C: EbpfContext>(ctx: &C) -> Option<ExitCause> {
    Some(match classify(ctx, WANTED) {
        fc::REARM => return None,
        fc::EXPIRE => ExitCause::Expired,
        fc::RCV => ExitCause::ReplacedBySyn,
        fc::TW_PROCESS => ExitCause::KilledByRst,
        fc::CONNECT_REUSE => ExitCause::Reused,
        fc::PURGE => ExitCause::Purged,
        _ => ExitCause::Unknown,
    })
}

/// Reports the end of TIME-WAIT socket `tw` (shared by every hook of this signal).
#[inline(always)]
fn exit(tw: u64, cause: ExitCause, hook: HookFamily) -> u32 {
    let skc = tw + layout!(tw_common) as u64;
    let Some(flow) = (unsafe { read_flow(skc) }) else {
        return 0;
    };
    if !netns_wanted(flow.netns) {
        return 0;
    }
    let ts = unsafe { bpf_ktime_get_ns() };
    let lifetime = match unsafe { LIVE.get(&tw) } {
        Some(live) => ts.saturating_sub(live.enter_ts),
        None => 0,
    };
    let _ = LIVE.remove(&tw);
    // What a replacing SYN was judged against: user space pairs it with that SYN's TSval and
    // ISN to tell "accepted by timestamp" from "accepted by sequence".
    let (ts_recent, rcv_nxt) = if cause == ExitCause::ReplacedBySyn {
        (unsafe { read::<u32>(tw, layout!(tw_ts_recent)) }, unsafe {
            read::<u32>(tw, layout!(tw_rcv_nxt))
        })
    } else {
        (None, None)
    };
    emit(LossSlot::TwExit, |ev| {
        if let Some(r) = ts_recent {
            ev.ts_recent = r;
            ev.ts_flags |= ts_flags::HAS_TS_RECENT;
        }
        if let Some(n) = rcv_nxt {
            ev.seq = n;
            ev.ts_flags |= ts_flags::HAS_RCV_NXT;
        }
        ev.ts_ns = ts;
        ev.obj = tw;
        ev.lifetime_ns = lifetime;
        flow.fill(ev);
        ev.kind = EventKind::TwExit as u8;
        ev.detail = cause as u8;
        ev.hook = hook as u8;
    });
    0
}
