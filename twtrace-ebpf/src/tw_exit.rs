//! TW exit and its cause.
//!
//! Tracepoint route: `timer:timer_cancel` on a TIME-WAIT timer. It fires on every end of a
//! TIME-WAIT (expiry detaches the timer first; every kill goes through timer_shutdown_sync) and
//! also on re-arms. The call chain tells them apart and names the cause (see `stack.rs`).
//!
//! tp_btf route (no call chains: unwinding costs microseconds per TIME-WAIT): the cancel
//! itself names two causes, because of what the kernel did just before it:
//! - reused: connect() has already put its socket in the TIME-WAIT's place in the established
//!   table (`__inet_check_established`, `inet_ehash_insert`), so the TIME-WAIT is unhashed;
//! - purged: only a namespace being dismantled (reference count 0) has its TIME-WAITs purged.
//! Every other cancel (expiry, re-arm, kill while a segment is processed) is parked in
//! `PENDING` for this CPU and told apart by what the kernel does next on the same CPU, with
//! nothing of ours able to run in between (timer base lock held, interrupts off, or softirq):
//! - `timer_expire_entry` of the same timer: expired;
//! - `timer_start` of the same timer: a re-arm, not an exit;
//! - `timer_start` of a request socket with the same addresses and ports: replaced by SYN;
//! - `kfree_skb` naming the TIME-WAIT socket as the one that dropped the segment (6.11+; before,
//!   the TIME-WAIT the segment's connection leads to, see tw_flows.rs): a reset received, or a
//!   reset sent for a segment it refused (FIN_WAIT2).
//! Positive evidence only: an interrupt's unrelated timer never settles a parked cancel. One
//! still unexplained when the next one is parked is reported with cause `unknown` (a SYN
//! answered by a SYN cookie creates no request socket).
//!
//! Function-probe route: `inet_twsk_kill(tw)` runs exactly once per TIME-WAIT socket, from the
//! timer (expiry) or from `inet_twsk_deschedule_put` (every early kill); the same call-chain
//! classification names the cause. Where `inet_twsk_kill` is inlined, `tw_timer_handler` plus
//! `inet_twsk_deschedule_put` (only when the timer is still pending, i.e. the kill will happen
//! there) stand in for it. Unwinding costs several thousand instructions, so the common ends
//! skip it: an expiry is marked at `tw_timer_handler`'s entry (`EXPIRING`), and a kill right
//! after the socket's own verdict on a segment (below) is named by that verdict
//! (`fresh_verdict`; under churn nearly every TIME-WAIT ends that way, replaced by a SYN).
//!
//! A kill by `tcp_v{4,6}_rcv` itself (not inside `tcp_timewait_state_process`) has two causes
//! the call chain cannot tell apart: the TIME-WAIT accepted a SYN (TCP_TW_SYN, replaced) or
//! answered a segment with a reset (TCP_TW_RST: data or a SYN reaching a FIN_WAIT2 TIME-WAIT).
//! Its verdict on that segment, taken on this CPU just before (`TW_VERDICT`), names it: from the
//! function's exit where function probes work; from `tcp:tcp_send_reset` on the tracepoint
//! route, which traces resets of TIME-WAIT sockets since 6.10 (before, such a kill there reads
//! `unknown`, and the plan announces that hook as partial).

use aya_ebpf::{
    EbpfContext,
    helpers::bpf_ktime_get_ns,
    macros::{fentry, kprobe, tracepoint},
    programs::{FEntryContext, ProbeContext, TracePointContext},
};
use twtrace_common::{
    Event, EventKind, ExitCause, HookFamily, LossSlot, PendingExit, SocketIdentity, TCP_TIME_WAIT,
    frame_class as fc, route, ts_flags,
};

use crate::{
    emit::emit,
    kernel::{
        Access, Fields, Flow, Head, Typed, flow_of, hooks_only, netns_filtering, netns_wanted,
        read, routes, sock_netns, zero_words,
    },
    layout,
    maps::{EXPIRING, LIVE, PARKED, PENDING, REARMING, Rearming, TW_VERDICT, TwVerdict},
    stack::{bit, classify, classify_first},
    tw_flows,
};

const WANTED: u64 = bit(fc::REARM)
    | bit(fc::EXPIRE)
    | bit(fc::RCV)
    | bit(fc::TW_PROCESS)
    | bit(fc::CONNECT_REUSE)
    | bit(fc::PURGE);

#[tracepoint]
pub fn tw_exit_timer_cancel(ctx: TracePointContext) -> u32 {
    if hooks_only() {
        return 0;
    }
    let Ok(timer) = (unsafe { ctx.read_at::<u64>(layout!(tp_timer_cancel_timer) as usize) }) else {
        return 0;
    };
    let func: u64 = unsafe { read(timer, layout!(timer_function)) }.unwrap_or(0);
    if func != layout!(tw_timer_handler) {
        return 0;
    }
    let tw = timer - layout!(tw_timer) as u64;
    // With --netns, a TIME-WAIT of another namespace is none of this program's business, and
    // its cancel must not mark a re-arm: a kill whose chain is not recognised counts as one
    // (below), and a new TIME-WAIT of the traced namespace made right after on this CPU, at the
    // freed socket's address, would then pass for that re-arm and go unreported (and its
    // close for an overflow). The namespace costs two reads, so only when filtering.
    if netns_filtering()
        && !netns_wanted(unsafe { sock_netns(tw + layout!(tw_common) as u64) }.unwrap_or(0))
    {
        return 0;
    }
    // Most cancels are expiries or re-arms, named by the immediate caller (__run_timers,
    // __mod_timer): unwinding one frame is enough for them; only kills need the full chain.
    let cause = match classify_first(&ctx, bit(fc::REARM) | bit(fc::EXPIRE)) {
        fc::EXPIRE => ExitCause::Expired,
        fc::REARM => return rearming(timer, REARM_WINDOW_NS),
        _ => match cause_from_chain(&ctx, tw, HookFamily::Tracepoint) {
            Some(c) => c,
            None => return rearming(timer, UNSURE_REARM_WINDOW_NS),
        },
    };
    exit(tw, cause, HookFamily::Tracepoint, Access::Copied)
}

/// A cancel by `__mod_timer` is a re-arm for sure: the start follows in the same call, with
/// interrupts off, so nothing else comes between on this CPU; only a guest's vCPU descheduled
/// by its host (KVM, TCG) stretches the gap, beyond 100 us at times under load (a re-arm then
/// read as a new TIME-WAIT, whose mark hid the next overflow toward that port).
const REARM_WINDOW_NS: u64 = 10_000_000;
/// A cancel whose call chain is not recognised, taken for a re-arm: only if the start comes
/// at once, as a new TIME-WAIT in the freed socket's memory would otherwise pass for one.
const UNSURE_REARM_WINDOW_NS: u64 = 100_000;

/// A re-arm cancels then restarts the timer on this CPU: tell tw_enter's timer_start that
/// the start it is about to see (within `window_ns`) is not a new TIME-WAIT (it may be one
/// from before twtrace).
#[inline(always)]
fn rearming(timer: u64, window_ns: u64) -> u32 {
    if let Some(slot) = REARMING.get_ptr_mut(0) {
        unsafe {
            *slot = Rearming {
                timer,
                ts_ns: bpf_ktime_get_ns(),
                window_ns,
            }
        };
    }
    0
}

#[fentry(function = "inet_twsk_kill")]
pub fn tw_exit_fentry(ctx: FEntryContext) -> u32 {
    if hooks_only() {
        return 0;
    }
    let tw: u64 = ctx.arg(0);
    let cause = cause_from_chain(&ctx, tw, HookFamily::Fentry).unwrap_or(ExitCause::Unknown);
    exit(tw, cause, HookFamily::Fentry, Access::Typed)
}

#[kprobe]
pub fn tw_exit_kprobe(ctx: ProbeContext) -> u32 {
    if hooks_only() {
        return 0;
    }
    let Some(tw) = ctx.arg::<u64>(0) else {
        return 0;
    };
    let cause = cause_from_chain(&ctx, tw, HookFamily::Kprobe).unwrap_or(ExitCause::Unknown);
    exit(tw, cause, HookFamily::Kprobe, Access::Copied)
}

/// Kill route: the expiry about to call `inet_twsk_kill` on this CPU (see `EXPIRING`).
#[fentry(function = "tw_timer_handler")]
pub fn tw_exit_expiring_fentry(ctx: FEntryContext) -> u32 {
    if hooks_only() {
        return 0;
    }
    let timer: u64 = ctx.arg(0);
    mark_expiring(timer - layout!(tw_timer) as u64)
}

#[kprobe]
pub fn tw_exit_expiring_kprobe(ctx: ProbeContext) -> u32 {
    if hooks_only() {
        return 0;
    }
    let Some(timer) = ctx.arg::<u64>(0) else {
        return 0;
    };
    mark_expiring(timer - layout!(tw_timer) as u64)
}

#[inline(always)]
fn mark_expiring(tw: u64) -> u32 {
    if let Some(slot) = EXPIRING.get_ptr_mut(0) {
        unsafe { *slot = tw };
    }
    0
}

/// Kill route: whether this kill of `tw` is the expiry marked just before on this CPU
/// (consumed). `tw_timer_handler` calls `inet_twsk_kill` unconditionally, so the mark never
/// outlives its kill.
#[inline(always)]
fn marked_expiring(tw: u64) -> bool {
    let Some(slot) = EXPIRING.get_ptr_mut(0) else {
        return false;
    };
    if unsafe { *slot } != tw {
        return false;
    }
    unsafe { *slot = 0 };
    true
}

#[fentry(function = "tw_timer_handler")]
pub fn tw_exit_timer_fentry(ctx: FEntryContext) -> u32 {
    if hooks_only() {
        return 0;
    }
    let timer: u64 = ctx.arg(0);
    // The socket's address comes from the timer's (container_of): not typed as a socket.
    exit(
        timer - layout!(tw_timer) as u64,
        ExitCause::Expired,
        HookFamily::Fentry,
        Access::Copied,
    )
}

#[kprobe]
pub fn tw_exit_timer_kprobe(ctx: ProbeContext) -> u32 {
    if hooks_only() {
        return 0;
    }
    let Some(timer) = ctx.arg::<u64>(0) else {
        return 0;
    };
    exit(
        timer - layout!(tw_timer) as u64,
        ExitCause::Expired,
        HookFamily::Kprobe,
        Access::Copied,
    )
}

#[fentry(function = "inet_twsk_deschedule_put")]
pub fn tw_exit_deschedule_fentry(ctx: FEntryContext) -> u32 {
    if hooks_only() {
        return 0;
    }
    let tw: u64 = ctx.arg(0);
    deschedule(&ctx, tw, HookFamily::Fentry, Access::Typed)
}

#[kprobe]
pub fn tw_exit_deschedule_kprobe(ctx: ProbeContext) -> u32 {
    if hooks_only() {
        return 0;
    }
    let Some(tw) = ctx.arg::<u64>(0) else {
        return 0;
    };
    deschedule(&ctx, tw, HookFamily::Kprobe, Access::Copied)
}

/// `inet_twsk_deschedule_put` kills only if it can still cancel the timer; a timer no longer
/// pending is expiring on another CPU and `tw_timer_handler` reports it.
#[inline(always)]
fn deschedule<C: EbpfContext>(ctx: &C, tw: u64, hook: HookFamily, access: Access) -> u32 {
    let pending = layout!(tw_timer) + layout!(timer_entry_pprev);
    let pprev: u64 = match access {
        Access::Typed => unsafe { Typed::timewait(tw).get(pending) },
        Access::Copied => unsafe { read(tw, pending) },
    }
    .unwrap_or(0);
    if pprev == 0 {
        return 0;
    }
    let cause = cause_from_chain(ctx, tw, hook).unwrap_or(ExitCause::Unknown);
    exit(tw, cause, hook, access)
}

/// Names the cause of `tw`'s end from the call chain; None for a timer re-arm (the socket
/// lives on).
#[inline(always)]
fn cause_from_chain<C: EbpfContext>(ctx: &C, tw: u64, hook: HookFamily) -> Option<ExitCause> {
    // The tracepoint route sees resets only, and walks just one frame before this anyway.
    if hook != HookFamily::Tracepoint {
        if marked_expiring(tw) {
            return Some(ExitCause::Expired);
        }
        if let Some(cause) = fresh_verdict(tw) {
            return Some(cause);
        }
    }
    Some(match classify(ctx, WANTED) {
        fc::REARM => return None,
        fc::EXPIRE => ExitCause::Expired,
        fc::RCV => after_verdict(tw, hook),
        fc::TW_PROCESS => ExitCause::KilledByRst,
        fc::CONNECT_REUSE => ExitCause::Reused,
        fc::PURGE => ExitCause::Purged,
        _ => ExitCause::Unknown,
    })
}

/// kprobe route, return half: the verdict of the call whose entry half left the socket in
/// this CPU's slot (tcp_timewait_state_process does not sleep, so the slot is this call's).
#[inline(always)]
pub fn verdict_returned(status: u32) {
    if let Some(slot) = TW_VERDICT.get_ptr_mut(0) {
        let slot = unsafe { &mut *slot };
        if slot.tw != 0 && slot.status == TwVerdict::PENDING {
            slot.status = status;
            slot.at_ns = kill_announced_at(status);
        }
    }
}

/// Tracepoint route: a reset sent on behalf of a TIME-WAIT socket (traced since 6.10) is its
/// TCP_TW_RST verdict.
#[tracepoint]
pub fn tw_exit_rst_tx(ctx: TracePointContext) -> u32 {
    if hooks_only() {
        return 0;
    }
    let Ok(sk) = (unsafe { ctx.read_at::<u64>(layout!(tp_send_reset_skaddr) as usize) }) else {
        return 0;
    };
    if sk == 0 || unsafe { read::<u8>(sk, layout!(skc_state)) }.unwrap_or(0) != TCP_TIME_WAIT {
        return 0;
    }
    remember_verdict(sk, layout!(tw_status_rst));
    0
}

/// The verdict of TIME-WAIT socket `tw` on the segment it just processed (`status`;
/// [`TwVerdict::PENDING`] from a kprobe's entry half), for a kill of it that follows. The
/// function-probe routes call it from the programs on `tcp_timewait_state_process` that this
/// signal shares with PAWS (dispatch.rs).
#[inline(always)]
pub fn remember_verdict(tw: u64, status: u32) {
    if let Some(slot) = TW_VERDICT.get_ptr_mut(0) {
        unsafe {
            *slot = TwVerdict {
                tw,
                status,
                _pad: 0,
                at_ns: kill_announced_at(status),
            }
        };
    }
}

/// The time of a verdict after which `tcp_v{4,6}_rcv` kills the socket (TCP_TW_SYN with a
/// listener, TCP_TW_RST), 0 for the others: only those are worth a clock read.
#[inline(always)]
fn kill_announced_at(status: u32) -> u64 {
    if status == layout!(tw_status_syn) || status == layout!(tw_status_rst) {
        unsafe { bpf_ktime_get_ns() }
    } else {
        0
    }
}

/// How recent a verdict must be for a kill of the same socket to be read as its consequence
/// without walking the call chain. On real hardware the kill follows within microseconds; a
/// slower one (an emulated kernel sending the reset in between) just takes the walk. Only a
/// kill of that same socket by another path this soon after its verdict (a SYN that found no
/// listener, then its expiry or a reuse by connect() within the millisecond) would be misread.
const VERDICT_FRESH_NS: u64 = 1_000_000;

/// Function-probe routes: the cause of a kill of `tw`, from a fresh verdict on it by this CPU
/// (consumed), so the common kills (a SYN replacing the TIME-WAIT, a reset) skip the call-chain
/// walk, which costs several thousand instructions.
#[inline(always)]
fn fresh_verdict(tw: u64) -> Option<ExitCause> {
    let slot = TW_VERDICT.get_ptr_mut(0)?;
    let v = unsafe { *slot };
    if v.tw != tw || v.at_ns == 0 {
        return None;
    }
    if unsafe { bpf_ktime_get_ns() }.wrapping_sub(v.at_ns) > VERDICT_FRESH_NS {
        return None;
    }
    unsafe { *slot = TwVerdict::NONE };
    Some(if v.status == layout!(tw_status_rst) {
        ExitCause::KilledByRst
    } else {
        ExitCause::ReplacedBySyn
    })
}

/// The cause of a kill of `tw` by `tcp_v{4,6}_rcv` (see the module comment), from the verdict
/// this CPU recorded for that socket, consumed here. Nothing of ours runs between the verdict
/// and the kill, so no clock is needed (emulated kernels take milliseconds for the reset in
/// between); the socket must match. Function probes see every verdict, so without one the cause
/// is unknown; the tracepoint route sees resets only, so there no reset means a SYN, but only
/// where TIME-WAIT resets are traced at all (6.10+): before, it cannot tell, and says so.
#[inline(always)]
fn after_verdict(tw: u64, hook: HookFamily) -> ExitCause {
    let Some(slot) = TW_VERDICT.get_ptr_mut(0) else {
        return ExitCause::Unknown;
    };
    let v = unsafe { core::mem::replace(&mut *slot, TwVerdict::NONE) };
    let mine = v.tw == tw;
    let resets_seen = hook == HookFamily::Tracepoint && layout!(tw_rst_traced) != 0;
    if mine && v.status == layout!(tw_status_rst) {
        ExitCause::KilledByRst
    } else if (mine && v.status == layout!(tw_status_syn)) || resets_seen {
        ExitCause::ReplacedBySyn
    } else {
        ExitCause::Unknown
    }
}

/// Reports the end of TIME-WAIT socket `tw` (shared by every hook of this signal).
#[inline(always)]
fn exit(tw: u64, cause: ExitCause, hook: HookFamily, access: Access) -> u32 {
    if cause == ExitCause::ReplacedBySyn
        && hook != HookFamily::Tracepoint
        && routes() & route::MERGE_EXIT_SYN != 0
    {
        return park_replaced(tw, hook, access);
    }
    let mut slot = core::mem::MaybeUninit::<Event>::uninit();
    // SAFETY: an all-zero Event is `Event::zeroed()`, zeroed in place: moved out of the
    // MaybeUninit it was copied, and LLVM made that copy a byte-at-a-time memset call.
    let ev = unsafe {
        zero_words(slot.as_mut_ptr());
        &mut *slot.as_mut_ptr()
    };
    if !prepare(tw, hook, ev, access) {
        return 0;
    }
    report(ev, cause);
    0
}

/// Function-probe routes: the exit of `tw`, replaced by a SYN, is prepared in this CPU's
/// `PARKED` slot; the SYN's program, which runs next on this CPU (the same `tcp_v{4,6}_rcv`
/// queues its request socket), writes it and the SYN as one record (`take_replaced`). One
/// whose SYN never came (answered by a SYN cookie, or dropped by a full listener) is reported
/// alone when the next one is parked, or read by user space at shutdown: late, never lost.
#[inline(always)]
fn park_replaced(tw: u64, hook: HookFamily, access: Access) -> u32 {
    let Some(slot) = PARKED.get_ptr_mut(0) else {
        return 0;
    };
    let slot = unsafe { &mut *slot };
    if slot.timer != 0 {
        report(&slot.ev, ExitCause::ReplacedBySyn);
    }
    // Zeroed first: `prepare` sets the fields it has, and the previous exit's must not stay.
    unsafe { zero_words(slot) };
    if prepare(tw, hook, &mut slot.ev, access) {
        slot.ev.detail = ExitCause::ReplacedBySyn as u8;
        slot.timer = tw;
    }
    0
}

/// Function-probe routes: a new TIME-WAIT at `tw` while the exit parked on this CPU is of a
/// socket at that address (its SYN never came: dropped by a full accept queue, and the socket
/// freed and reused at once). That exit is reported first, so that records come in order and
/// user space, which pairs an enter with its exit by address, pairs each with its own.
#[inline(never)]
pub fn parked_at(tw: u64) {
    let Some(slot) = PARKED.get_ptr_mut(0) else {
        return;
    };
    let slot = unsafe { &mut *slot };
    if slot.timer == tw {
        report(&slot.ev, ExitCause::ReplacedBySyn);
        slot.timer = 0;
    }
}

/// Function-probe routes: the exit parked on this CPU for the SYN with flow `flow`, if any
/// (`route::MERGE_EXIT_SYN`). The caller reports both and then frees the slot.
#[inline(always)]
pub fn take_replaced(flow: &Flow) -> Option<&'static mut PendingExit> {
    if routes() & route::MERGE_EXIT_SYN == 0 {
        return None;
    }
    let slot = unsafe { &mut *PARKED.get_ptr_mut(0)? };
    (slot.timer != 0 && flow.same_as(&slot.ev)).then_some(slot)
}

/// Fills the exit event of `tw` while the socket is intact; false if it is not wanted.
#[inline(always)]
fn prepare(tw: u64, hook: HookFamily, ev: &mut Event, access: Access) -> bool {
    if access == Access::Typed {
        return prepare_from(&Typed::timewait(tw), tw, hook, ev);
    }
    // The call-chain routes come here with a stack walk's buffer and an event on the BPF stack:
    // a smaller copy (the flow's fields) keeps them under the 512-byte limit.
    let mut h = Head::<96>::at(tw, layout!(tw_common));
    let copied = unsafe { h.fill() };
    copied && prepare_from(&h, tw, hook, ev)
}

/// [`prepare`], reading the timewait socket `tw` through `h`.
#[inline(always)]
fn prepare_from<F: Fields>(h: &F, tw: u64, hook: HookFamily, ev: &mut Event) -> bool {
    let Some(flow) = (unsafe { flow_of(h, layout!(tw_common)) }) else {
        return false;
    };
    if !netns_wanted(flow.netns) {
        return false;
    }
    let ts = unsafe { bpf_ktime_get_ns() };
    // Only the classic tracepoint route pairs enter and exit here (tw_enter.rs says why);
    // elsewhere user space does, and no LIVE entry was made.
    ev.lifetime_ns = match hook {
        HookFamily::Tracepoint => match unsafe { LIVE.get(&tw) } {
            Some(live) => ts.saturating_sub(live.enter_ts),
            None => 0,
        },
        _ => 0,
    };
    // What a replacing SYN was judged against: user space pairs it with that SYN's TSval and
    // ISN to tell "accepted by timestamp" from "accepted by sequence". Kept only for that
    // cause, and for `unknown`, which user space may still find replaced (a late SYN).
    if let Some(r) = unsafe { h.get::<u32>(layout!(tw_ts_recent)) } {
        ev.ts_recent = r;
        ev.ts_flags |= ts_flags::HAS_TS_RECENT;
    }
    ev.ts_ns = ts;
    ev.obj = tw;
    flow.fill(ev);
    ev.kind = EventKind::TwExit as u8;
    ev.hook = hook as u8;
    true
}

#[inline(always)]
fn report(prepared: &Event, cause: ExitCause) {
    if prepared.hook == HookFamily::Tracepoint as u8 {
        let _ = LIVE.remove(&prepared.obj);
        // Attached for tw_enter's sake alone (its live table must lose ended TIME-WAITs).
        if routes() & route::classic(route::TW_EXIT) == 0 {
            return;
        }
    }
    emit(LossSlot::TwExit, |ev| {
        *ev = *prepared;
        ev.detail = cause as u8;
        if !matches!(cause, ExitCause::ReplacedBySyn | ExitCause::Unknown) {
            ev.ts_flags = 0;
            ev.ts_recent = 0;
            ev.seq = 0;
        }
    });
}

/// Bytes of a timewait socket copied at once: its sock_common on 6.x kernels (a field beyond,
/// like tw_ts_recent, is read on its own; copying up to that one overflows the BPF stack).
const TW_HEAD: usize = 144;

/// tp_btf route: a TIME-WAIT timer is being cancelled (see the module comment).
#[inline(always)]
pub fn on_cancel(timer: u64, routes: u32) {
    let tw = timer - layout!(tw_timer) as u64;
    // The exit is prepared (its flow read) when it is reported or its flow is forgotten.
    let preparing = routes & (route::TW_EXIT | route::TW_FLOWS) != 0;
    // The socket's head in one copy: the unhashed test, the namespace, the flow.
    let mut h = Head::<TW_HEAD>::at(tw, 0);
    if !unsafe { h.fill() } {
        return;
    }
    let skc = layout!(tw_common);
    let pprev: u64 = unsafe { h.get(skc + layout!(skc_nulls_pprev)) }.unwrap_or(1);
    let net: u64 = unsafe { h.get(skc + layout!(skc_net)) }.unwrap_or(0);
    let refs: u32 = unsafe { read(net, layout!(net_refcount)) }.unwrap_or(1);
    let immediate = if pprev == 0 {
        Some(ExitCause::Reused)
    } else if refs == 0 {
        Some(ExitCause::Purged)
    } else {
        None
    };
    let Some(slot) = PENDING.get_ptr_mut(0) else {
        return;
    };
    let slot = unsafe { &mut *slot };
    if slot.timer != 0 {
        settle(slot, ExitCause::Unknown);
    }
    slot.timer = timer;
    slot.rearmable = 1;
    slot.id = identity_in(&h);
    slot.ev.kind = 0;
    // With only tw_enter on this route the slot just marks a re-arm in progress.
    let prepared = preparing && prepare_from(&h, tw, HookFamily::TpBtf, &mut slot.ev);
    if preparing && !prepared {
        // Not traced (another namespace under --netns): left parked, its timer would pass a
        // new TIME-WAIT made right after on this CPU at the freed socket's address for a
        // re-arm of it, and that enter would be lost (same on the classic route).
        slot.timer = 0;
        return;
    }
    if prepared && routes & route::TW_FLOWS != 0 && immediate.is_none() {
        tw_flows::learn(&slot.ev);
    }
    // Prepared in the slot even when nothing is left to wait for: an event on the stack next
    // to the socket's copy would crowd the 512-byte stack.
    if let Some(cause) = immediate {
        settle(slot, cause);
    }
}

/// Ends the parked exit (if it was prepared) and frees the slot.
#[inline(always)]
fn settle(slot: &mut PendingExit, cause: ExitCause) {
    if slot.ev.kind != 0 {
        finish(&slot.ev, cause, routes());
    }
    slot.timer = 0;
    slot.ev.kind = 0;
}

/// tp_btf route: the TIME-WAIT `prepared` describes has ended. Its flow leaves the table where
/// one is kept (TW_FLOWS); the exit is reported where wanted (TW_EXIT). Out of line, so the
/// dispatchers that end exits (timer cancel, kfree_skb) do not carry its frame in theirs.
#[inline(never)]
fn finish(prepared: &Event, cause: ExitCause, routes: u32) {
    if routes & route::TW_FLOWS != 0 {
        tw_flows::forget(prepared);
    }
    if routes & route::TW_EXIT != 0 {
        report(prepared, cause);
    }
}

#[inline(always)]
fn parked() -> Option<&'static mut PendingExit> {
    let slot = unsafe { &mut *PENDING.get_ptr_mut(0)? };
    if slot.timer == 0 { None } else { Some(slot) }
}

/// `timer_start` of a TIME-WAIT timer: true if it re-arms the parked one (no exit, no enter).
/// A re-arm starts the timer right after its cancel, with no other timer event between (see
/// `PendingExit::rearmable`; not a time window: under QEMU's TCG, or a preempted vCPU, the
/// two are milliseconds apart), and of the same socket (its identity: ports and hash). The
/// same timer started otherwise is a new TIME-WAIT in the memory of the parked one, freed by an
/// end nothing named (`ss -K`, a replacing SYN dropped by a full accept queue: with no timer
/// event between when the next segment of that poll makes the new TIME-WAIT; sockets are
/// reused at once on the CPU that freed them): that end is settled as unknown, and the start
/// is an enter.
#[inline(always)]
pub fn rearmed(timer: u64) -> bool {
    let Some(slot) = parked() else {
        return false;
    };
    if slot.timer != timer {
        slot.rearmable = 0; // another TIME-WAIT's start came between
        return false;
    }
    if slot.rearmable != 0 && slot.id == identity_at(timer - layout!(tw_timer) as u64) {
        slot.timer = 0;
        slot.ev.kind = 0;
        return true;
    }
    settle(slot, ExitCause::Unknown);
    false
}

/// The identity of the TIME-WAIT socket at `tw` (a re-arm's is unchanged since its cancel).
#[inline(always)]
pub fn identity_at(tw: u64) -> SocketIdentity {
    let skc = tw + layout!(tw_common) as u64;
    // One read for both where the port pair follows the hash, as on every 64-bit kernel since
    // 3.x (a load-time constant: the verifier drops the other branch). A server that closes
    // first re-arms once per connection (FIN_WAIT2, then TIME_WAIT).
    if layout!(skc_dport) == layout!(skc_hash) + 4 {
        let both: [u32; 2] = unsafe { read(skc, layout!(skc_hash)) }.unwrap_or([0; 2]);
        return SocketIdentity {
            hash: both[0],
            ports: both[1],
        };
    }
    SocketIdentity {
        ports: unsafe { read(skc, layout!(skc_dport)) }.unwrap_or(0),
        hash: unsafe { read(skc, layout!(skc_hash)) }.unwrap_or(0),
    }
}

/// The identity of the TIME-WAIT socket whose fields `tw` holds (a copy of its head).
#[inline(always)]
pub fn identity_in<F: Fields>(tw: &F) -> SocketIdentity {
    let skc = layout!(tw_common);
    SocketIdentity {
        ports: unsafe { tw.get(skc + layout!(skc_dport)) }.unwrap_or(0),
        hash: unsafe { tw.get(skc + layout!(skc_hash)) }.unwrap_or(0),
    }
}

/// `timer_start` of any timer but a TIME-WAIT's. A re-arm cancels and starts its timer in one
/// call under the timer base's lock: no other timer starts between on this CPU, so one that
/// does means the parked cancel was an end. Where exits are traced, the end's own events
/// (expiry, the SYN or reset that killed it) settle it, and a later start of its timer is
/// no re-arm of it (see [`rearmed`]); without them (tw_enter alone) this settles it (forgetting its flow where one is kept), or a new TIME-WAIT made later on this CPU at
/// the freed socket's address would pass for a re-arm of it and go unreported.
#[inline(always)]
pub fn other_timer_started() {
    // Silenced (routes 0): the parked exit is left for user space to read at shutdown.
    let routes = routes();
    if routes == 0 {
        return;
    }
    let Some(slot) = parked() else {
        return;
    };
    if routes & route::TW_EXIT != 0 {
        // Its own events will settle it; a start of its timer from now on is no re-arm.
        slot.rearmable = 0;
    } else {
        settle(slot, ExitCause::Unknown);
    }
}

/// `timer_expire_entry` of a TIME-WAIT timer.
#[inline(always)]
pub fn expiring(timer: u64) {
    if routes() == 0 {
        return; // silenced: left for user space (see other_timer_started)
    }
    if let Some(slot) = parked()
        && slot.timer == timer
    {
        settle(slot, ExitCause::Expired);
    }
}

/// A request socket `req` with flow `flow` was queued (a SYN accepted by a listener): it
/// settles a parked exit of the same flow as replaced. Where the SYN is reported too
/// (`routes & SYN`), one record carries both (see `syn::report_flow`); returns true when the
/// SYN was reported that way.
#[inline(always)]
pub fn request_queued(req: u64, flow: &Flow, routes: u32) -> bool {
    let Some(slot) = parked() else {
        return false;
    };
    if slot.ev.kind == 0 || !flow.same_as(&slot.ev) {
        return false;
    }
    // What `settle` does, without its out-of-line `finish`: 6.1's verifier adds up the frames
    // of a call chain (each rounded up to 32 bytes) to at most 512, and this dispatcher's
    // frame, plus finish's, plus tw_flows::forget's, came to 544.
    if routes & route::TW_FLOWS != 0 {
        tw_flows::forget(&slot.ev);
    }
    let merged = routes & route::SYN != 0;
    if merged {
        crate::syn::report_flow(req, flow, HookFamily::TpBtf, Some(&slot.ev));
    } else {
        report(&slot.ev, ExitCause::ReplacedBySyn);
    }
    slot.timer = 0;
    slot.ev.kind = 0;
    merged
}

/// `kfree_skb` naming `rx_sk` as the socket that dropped the segment.
#[inline(always)]
pub fn segment_dropped_by(rx_sk: u64) {
    if let Some(slot) = parked()
        && slot.ev.kind != 0
        && slot.ev.obj == rx_sk
    {
        settle(slot, ExitCause::KilledByRst);
    }
}
