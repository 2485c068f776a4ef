//! TW exit and its cause.
//!
//! Tracepoint route: `timer:timer_cancel` on a TIME-WAIT timer. It fires on every end of a
//! TIME-WAIT (expiry detaches the timer first; every kill goes through timer_shutdown_sync) and
//! also on re-arms. The call chain tells them apart and names the cause (see `stack.rs`).

use aya_ebpf::{helpers::bpf_ktime_get_ns, macros::tracepoint, programs::TracePointContext};
use twtrace_common::{EventKind, ExitCause, HookFamily, LossSlot, frame_class as fc};

use crate::{
    emit::emit,
    kernel::{netns_wanted, read, read_flow},
    layout,
    maps::LIVE,
    stack::{bit, classify},
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
    let cause = match classify(&ctx, WANTED) {
        fc::REARM => return 0,
        fc::EXPIRE => ExitCause::Expired,
        fc::RCV => ExitCause::ReplacedBySyn,
        fc::TW_PROCESS => ExitCause::KilledByRst,
        fc::CONNECT_REUSE => ExitCause::Reused,
        fc::PURGE => ExitCause::Purged,
        _ => ExitCause::Unknown,
    };
    exit(
        timer - layout!(tw_timer) as u64,
        cause,
        HookFamily::Tracepoint,
    )
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
    emit(LossSlot::TwExit, |ev| {
        ev.ts_ns = ts;
        ev.obj = tw;
        ev.lifetime_ns = lifetime;
        ev.netns = flow.netns;
        ev.kind = EventKind::TwExit as u8;
        ev.family = flow.family;
        ev.detail = cause as u8;
        ev.hook = hook as u8;
        ev.lport = flow.lport;
        ev.rport = flow.rport;
        ev.laddr = flow.laddr;
        ev.raddr = flow.raddr;
    });
    0
}
