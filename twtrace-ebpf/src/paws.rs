//! PAWS rejects (RFC 7323): segments dropped because their TSval is older than the socket's
//! ts_recent, on every path (TIME-WAIT, established, SYN-RECV, SYN-SENT).
//!
//! Tracepoint route: `skb:kfree_skb`. Drop reasons name the PAWS drops (their numbers come
//! from BTF): TCP_RFC7323_PAWS, _PAWS_ACK, _TSECR, and since 6.16 _TW_PAWS for TIME-WAIT.
//! Before 6.16 a TIME-WAIT PAWS drop is NOT_SPECIFIED; where the tracepoint has `rx_sk`
//! (6.11+) it is the TIME-WAIT socket itself, so the kernel's test is redone here with its
//! own ts_recent. A SYN such a socket refuses without PAWS is reported as well.
//!
//! Function-probe route for TIME-WAIT: `tcp_timewait_state_process(tw, skb, th, ...)` on
//! exit, with its verdict (one program there serves tw_exit too: dispatch.rs); kfree_skb then
//! serves only the other paths.
//!
//! Function-probe route without drop reasons (before 5.17/5.18): an established-path reject
//! (any state a full socket checks PAWS in, SYN-RECV included) counts PAWSEstab and then,
//! always, calls `tcp_oow_rate_limited(net, skb, LINUX_MIB_TCPACKSKIPPEDPAWS,
//! &tp->last_oow_ack_time)`: that call, with that mib index, is the reject. (Resets are
//! neither counted nor passed there.) SYN-SENT rejects are not seen this way.
//!
//! Request sockets (SYN-RECV) name their rejects only since ~6.15 (tcp_check_req's drop
//! reason; kfree_skb then names the listener). Before, function probes see them as
//! `tcp_oow_rate_limited(net, skb, LINUX_MIB_TCPACKSKIPPEDSYNRECV, &treq->last_oow_ack_time)`,
//! and the PAWS test is redone to tell them from the other calls there.

use aya_ebpf::{
    helpers::bpf_ktime_get_ns,
    macros::{btf_tracepoint, fentry, kprobe, tracepoint},
    programs::{BtfTracePointContext, FEntryContext, ProbeContext, TracePointContext},
};
use twtrace_common::{EventKind, HookFamily, LossSlot, PawsPath, TCP_TIME_WAIT, ts_flags};

use crate::{
    emit::emit,
    kernel::{
        ctx_word, hooks_only, netns_wanted, read, read_flow, scalar_arg, sock_netns, zero_words,
    },
    layout,
    maps::TW_PROCESS_ARGS,
    segment::{self, Segment},
};

pub const TCP_SYN_SENT: u8 = 2;
const TCP_SYN_RECV: u8 = 3;
const TCP_LISTEN: u8 = 10;
const TCP_NEW_SYN_RECV: u8 = 12;
const TH_SYN: u8 = 0x02;
const TH_RST: u8 = 0x04;
const TH_ACK: u8 = 0x10;

/// Tracepoint route: every path, TIME-WAIT included.
#[tracepoint]
pub fn paws_kfree_skb(ctx: TracePointContext) -> u32 {
    if hooks_only() {
        return 0;
    }
    on_drop_tp(&ctx, true)
}

/// With a function probe on tcp_timewait_state_process: every path but TIME-WAIT.
#[tracepoint]
pub fn paws_kfree_skb_nontw(ctx: TracePointContext) -> u32 {
    if hooks_only() {
        return 0;
    }
    on_drop_tp(&ctx, false)
}

/// The same, BTF-typed (function-probe routes, where tracing programs load): the program runs
/// straight from the tracepoint site with the raw arguments, without the perf record a classic
/// run fills first, for every drop of the machine (about one per connection under churn).
#[btf_tracepoint(function = "kfree_skb")]
pub fn paws_kfree_skb_nontw_btf(ctx: BtfTracePointContext) -> u32 {
    if hooks_only() {
        return 0;
    }
    let reason = btf_drop_reason(&ctx);
    if !wanted_reason(reason, false) {
        return 0;
    }
    let rx_sk = btf_drop_socket(&ctx);
    on_drop(scalar_arg(&ctx, 0), reason, rx_sk, false, HookFamily::TpBtf)
}

/// The BTF-typed kfree_skb's drop reason; u32::MAX where it has none (before 5.17), which no
/// wanted reason equals.
#[inline(always)]
pub fn btf_drop_reason(ctx: &BtfTracePointContext) -> u32 {
    let arg = layout!(btf_kfree_skb_reason_arg);
    if arg == u32::MAX {
        return u32::MAX;
    }
    ctx_word(ctx, arg).unwrap_or(u64::MAX) as u32
}

/// The BTF-typed kfree_skb's dropping socket; 0 where it names none (before 6.11).
#[inline(always)]
pub fn btf_drop_socket(ctx: &BtfTracePointContext) -> u64 {
    let arg = layout!(btf_kfree_skb_rx_sk_arg);
    if arg == u32::MAX {
        return 0;
    }
    ctx_word(ctx, arg).unwrap_or(0)
}

#[inline(always)]
fn on_drop_tp(ctx: &TracePointContext, timewait: bool) -> u32 {
    let reason_off = layout!(tp_kfree_skb_reason);
    if reason_off == u32::MAX {
        return 0; // no drop reasons on this kernel (before 5.17): the plan did not pick this hook
    }
    let reason: u32 = unsafe { ctx.read_at(reason_off as usize) }.unwrap_or(0);
    if !wanted_reason(reason, timewait) {
        return 0;
    }
    let rx_off = layout!(tp_kfree_skb_rx_sk);
    let rx_sk: u64 = if rx_off == u32::MAX {
        0
    } else {
        unsafe { ctx.read_at(rx_off as usize) }.unwrap_or(0)
    };
    let Ok(skb) = (unsafe { ctx.read_at::<u64>(layout!(tp_kfree_skb_skbaddr) as usize) }) else {
        return 0;
    };
    on_drop(skb, reason, rx_sk, timewait, HookFamily::Tracepoint)
}

/// Cheap first filter on the drop reason (kfree_skb fires for every dropped packet).
/// u32::MAX stands for "absent on this kernel" in the layout, so it is never wanted.
#[inline(always)]
pub fn wanted_reason(reason: u32, timewait: bool) -> bool {
    reason != u32::MAX
        && (reason == layout!(reason_paws)
            || reason == layout!(reason_paws_ack)
            || reason == layout!(reason_tsecr)
            || (timewait
                && (reason == layout!(reason_tw_paws) || reason == layout!(reason_not_specified))))
}

/// A dropped segment whose reason passed [`wanted_reason`]; `rx_sk` is the socket that
/// dropped it where the kernel says (0 otherwise).
#[inline(always)]
pub fn on_drop(skb: u64, reason: u32, rx_sk: u64, timewait: bool, hook: HookFamily) -> u32 {
    let tw_reason = reason == layout!(reason_tw_paws);
    let unspecified = timewait && reason == layout!(reason_not_specified);
    let state: u8 = if rx_sk == 0 {
        0
    } else {
        unsafe { read(rx_sk, layout!(skc_state)) }.unwrap_or(0)
    };
    if unspecified && state != TCP_TIME_WAIT {
        return 0; // an ordinary drop, not at a TIME-WAIT socket
    }
    let Some(seg) = (unsafe { segment::from_skb(skb) }) else {
        return 0;
    };
    let netns = if rx_sk == 0 {
        // Kernels before 6.11 do not name the socket: the receiving device's namespace.
        unsafe { skb_netns(skb) }
    } else {
        unsafe { sock_netns(rx_sk) }.unwrap_or(0)
    };
    // netns 0: neither a socket nor a device names the namespace (older kernels, some
    // paths). Such drops are kept, with netns 0, rather than silently filtered out.
    if netns != 0 && !netns_wanted(netns) {
        return 0;
    }
    if tw_reason || state == TCP_TIME_WAIT {
        let ts_recent: Option<u32> = if rx_sk == 0 {
            None
        } else {
            unsafe { read(rx_sk, layout!(tw_ts_recent)) }
        };
        if tw_reason {
            return report(&seg, netns, PawsPath::Timewait, ts_recent, hook);
        }
        // Before 6.16: NOT_SPECIFIED at a TIME-WAIT socket. Redo the kernel's PAWS test.
        return timewait_verdict(&seg, netns, ts_recent.unwrap_or(0), None, hook);
    }
    let (path, ts_recent) = match state {
        // The SYN-SENT check is on the SYN-ACK's TSecr (against the SYN's send time); the
        // socket has taken no TSval yet, so it has no ts_recent to compare with.
        TCP_SYN_SENT => (PawsPath::SynSent, None),
        TCP_NEW_SYN_RECV => (PawsPath::SynRecv, unsafe {
            read(rx_sk, layout!(req_ts_recent))
        }),
        TCP_SYN_RECV => (PawsPath::SynRecv, unsafe {
            read(rx_sk, layout!(tcp_ts_recent))
        }),
        // A request socket's reject (tcp_check_req, ~6.15+) names its listener, which has no
        // ts_recent of its own; the request socket's is out of reach here.
        TCP_LISTEN => (PawsPath::SynRecv, None),
        // No socket named (before 6.11). A PAWS drop of a SYN is a connecting socket's: an
        // established one answers a SYN with a challenge ACK whatever its TSval (reason
        // TCP_INVALID_SYN). A connecting socket's reject of a bare ACK stays `established`.
        0 if seg.flags & TH_SYN != 0 => (PawsPath::SynSent, None),
        0 => (PawsPath::Established, None),
        _ => (PawsPath::Established, unsafe {
            read(rx_sk, layout!(tcp_ts_recent))
        }),
    };
    let old_ack = reason == layout!(reason_paws_ack);
    // A TSecr reject compared the echoed timestamp, not TSval with ts_recent: no regression.
    let by_tsecr = reason == layout!(reason_tsecr);
    // Flag and value apart, the value defined on every path: an `Option` rebuilt here left
    // its payload undefined where None, and LLVM spilled that undefined register, which the
    // verifier refuses ("R1 !read_ok").
    let has_ts_recent = ts_recent.is_some() && !by_tsecr;
    let ts_recent_value = ts_recent.unwrap_or(0);
    emit(LossSlot::Paws, |ev| {
        fill(ev, &seg, netns, None, hook);
        if has_ts_recent {
            ev.ts_recent = ts_recent_value;
            ev.ts_flags |= ts_flags::HAS_TS_RECENT;
        }
        ev.kind = EventKind::PawsReject as u8;
        ev.detail = path as u8;
        if old_ack {
            ev.ts_flags |= ts_flags::OLD_ACK;
        }
        if by_tsecr {
            ev.ts_flags |= ts_flags::BY_TSECR;
        }
    });
    0
}

#[inline(always)]
unsafe fn skb_netns(skb: u64) -> u32 {
    let Some(dev) = (unsafe { read::<u64>(skb, layout!(skb_dev)) }) else {
        return 0;
    };
    let Some(net) = (unsafe { read::<u64>(dev, layout!(dev_nd_net)) }) else {
        return 0;
    };
    unsafe { read(net, layout!(net_ns_inum)) }.unwrap_or(0)
}

/// The namespace of the device a dropped segment arrived on (0 if unknown).
#[inline(always)]
pub fn netns_of_skb(skb: u64) -> u32 {
    unsafe { skb_netns(skb) }
}

/// The kernel's PAWS test (tcp_paws_check with no window), but for ts_recent's age, which
/// only the kernel knows: the segment's TSval older than a set ts_recent (s32 compare).
#[inline(always)]
fn fails_paws(seg: &Segment, ts_recent: u32) -> bool {
    match seg.tsval {
        Some(tsval) => ts_recent != 0 && (ts_recent.wrapping_sub(tsval) as i32) > 0,
        None => false,
    }
}

/// A PAWS reject at a TIME-WAIT socket, as far as the segment tells. An RST with an old TSval
/// is not PAWS-rejected once ts_recent is older than 60 s; the kernel keeps that stamp, we do
/// not, so RSTs are left to the counters.
#[inline(always)]
fn paws_at_timewait(seg: &Segment, ts_recent: u32) -> bool {
    fails_paws(seg, ts_recent) && seg.flags & TH_RST == 0
}

#[inline(always)]
fn pure_syn(seg: &Segment) -> bool {
    seg.flags & (TH_SYN | TH_RST | TH_ACK) == TH_SYN
}

/// Whether [`timewait_verdict`] can report anything for this segment (a segment the kernel
/// did not take as a SYN to accept, which the callers test first).
#[inline(always)]
fn worth_a_verdict(seg: &Segment, ts_recent: u32) -> bool {
    paws_at_timewait(seg, ts_recent) || pure_syn(seg)
}

/// TIME-WAIT verdict from the segment and the socket's ts_recent, as tcp_timewait_state_process
/// decides it: a PAWS reject when TSval is older than ts_recent; otherwise a SYN that was not
/// accepted (`syn_accepted == Some(false)`, or unknown and no TSval news) is refused for
/// another reason (sequence not after rcv_nxt).
#[inline(always)]
fn timewait_verdict(
    seg: &Segment,
    netns: u32,
    ts_recent: u32,
    syn_accepted: Option<bool>,
    hook: HookFamily,
) -> u32 {
    if paws_at_timewait(seg, ts_recent) {
        return report(seg, netns, PawsPath::Timewait, Some(ts_recent), hook);
    }
    if pure_syn(seg) && syn_accepted != Some(true) {
        emit(LossSlot::Paws, |ev| {
            fill(ev, seg, netns, Some(ts_recent), hook);
            ev.kind = EventKind::TwSynRejected as u8;
        });
    }
    0
}

#[inline(always)]
fn report(
    seg: &Segment,
    netns: u32,
    path: PawsPath,
    ts_recent: Option<u32>,
    hook: HookFamily,
) -> u32 {
    emit(LossSlot::Paws, |ev| {
        fill(ev, seg, netns, ts_recent, hook);
        ev.kind = EventKind::PawsReject as u8;
        ev.detail = path as u8;
    });
    0
}

/// The receiving side is local: the segment's destination is our address.
#[inline(always)]
fn fill(
    ev: &mut twtrace_common::Event,
    seg: &Segment,
    netns: u32,
    ts_recent: Option<u32>,
    hook: HookFamily,
) {
    ev.ts_ns = unsafe { bpf_ktime_get_ns() };
    ev.netns = netns;
    ev.family = seg.family;
    ev.hook = hook as u8;
    ev.laddr = seg.daddr;
    ev.raddr = seg.saddr;
    ev.lport = seg.dport;
    ev.rport = seg.sport;
    ev.seq = seg.seq;
    ev.tcp_flags = seg.flags;
    if let Some(t) = seg.tsval {
        ev.tsval = t;
        ev.ts_flags |= ts_flags::HAS_TSVAL;
    }
    if let Some(r) = ts_recent {
        ev.ts_recent = r;
        ev.ts_flags |= ts_flags::HAS_TS_RECENT;
    }
}

/// kprobe route, entry half: remember the arguments until the function returns (no sleeping
/// inside).
#[inline(always)]
pub fn tw_process_entered(tw: u64, th: u64) {
    if let Some(slot) = TW_PROCESS_ARGS.get_ptr_mut(0) {
        unsafe { *slot = [tw, th] };
    }
}

/// kprobe route, return half: the verdict for the arguments the entry half left.
#[inline(always)]
pub fn tw_process_returned(status: u32) {
    let Some(slot) = TW_PROCESS_ARGS.get_ptr_mut(0) else {
        return;
    };
    // Read, then cleared word by word (`mem::replace` with `[0, 0]` is a memset call).
    let [tw, th] = unsafe { *slot };
    unsafe { zero_words(slot) };
    if tw != 0 {
        tw_verdict(tw, th, status, HookFamily::Kprobe);
    }
}

/// Function-probe routes: the kernel's own verdict (`status`) for the segment at `th` that
/// reached TIME-WAIT socket `tw`. The fentry route calls it from the program on
/// `tcp_timewait_state_process` that this signal shares with tw_exit (dispatch.rs).
#[inline(always)]
pub fn tw_verdict(tw: u64, th: u64, status: u32, hook: HookFamily) -> u32 {
    // A SYN the TIME-WAIT accepted (it gives way to a new connection) passed the kernel's own
    // PAWS test: nothing to report (user space classifies it from the exit and the SYN).
    // Under churn nearly every run is one (bpf_stats: one run per TIME-WAIT), and all of its
    // reads are saved.
    // It also keeps the check below, which cannot see ts_recent's age, from calling a
    // 24-day-old ts_recent a PAWS reject where the kernel did not.
    if status == layout!(tw_status_syn) {
        return 0;
    }
    let Some(mut seg) = (unsafe { segment::tcp_header(th) }) else {
        return 0;
    };
    let ts_recent: u32 = unsafe { read(tw, layout!(tw_ts_recent)) }.unwrap_or(0);
    // The socket's flow only for a segment reported: the other runs (under churn, one per
    // connection: the peer's FIN that moves a FIN_WAIT2 TIME-WAIT on) end here without it.
    if !worth_a_verdict(&seg, ts_recent) {
        return 0;
    }
    let Some(flow) = (unsafe { read_flow(tw + layout!(tw_common) as u64) }) else {
        return 0;
    };
    if !netns_wanted(flow.netns) {
        return 0;
    }
    seg.family = flow.family;
    seg.saddr = flow.raddr;
    seg.daddr = flow.laddr;
    // Always false here, but passed as read: folded to a constant, it let LLVM reorder the
    // code so that one path read a stack slot it had not written, which 5.10's verifier
    // refuses ("invalid read from stack") where later ones allow it.
    let accepted = status == layout!(tw_status_syn);
    timewait_verdict(&seg, flow.netns, ts_recent, Some(accepted), hook)
}

/// Established-path rejects on kernels without the PAWS drop reason, and request-socket
/// rejects on kernels whose tcp_check_req gives none (see the module comment).
#[fentry(function = "tcp_oow_rate_limited")]
pub fn paws_oow_fentry(ctx: FEntryContext) -> u32 {
    if hooks_only() {
        return 0;
    }
    // An int argument: only its low 32 bits are defined.
    let Some(mib) = ctx_word(&ctx, 2).map(|w| w as u32) else {
        return 0;
    };
    on_oow(
        mib,
        scalar_arg(&ctx, 1),
        scalar_arg(&ctx, 3),
        HookFamily::Fentry,
    )
}

#[kprobe]
pub fn paws_oow_kprobe(ctx: ProbeContext) -> u32 {
    if hooks_only() {
        return 0;
    }
    match (ctx.arg::<u64>(2), ctx.arg::<u64>(1), ctx.arg::<u64>(3)) {
        (Some(mib), Some(skb), Some(last_oow)) => {
            on_oow(mib as u32, skb, last_oow, HookFamily::Kprobe)
        }
        _ => 0,
    }
}

/// A call of tcp_oow_rate_limited: a reject where the mib index says so. Both indexes are
/// u32::MAX where not looked up (the kernel names those rejects otherwise), which no call has.
#[inline(always)]
fn on_oow(mib: u32, skb: u64, last_oow: u64, hook: HookFamily) -> u32 {
    if mib == u32::MAX {
        return 0;
    }
    if mib == layout!(mib_ackskipped_paws) {
        return oow_paws(skb, last_oow, hook);
    }
    if mib == layout!(mib_ackskipped_synrecv) {
        return oow_request(skb, last_oow, hook);
    }
    0
}

/// tcp_check_req calls tcp_oow_rate_limited for a request socket (SYN-RECV) on three
/// occasions: a retransmitted SYN that passed PAWS, and a segment out of window or rejected
/// by PAWS (then PAWSEstab counts it). The kernel's PAWS test is redone here with the request
/// socket's ts_recent ([`fails_paws`]). (Its other condition, ts_recent's age of 24 days, is
/// estimated from the SYN-ACK retransmissions and holds only after 21 of them; resets never
/// get here.)
#[inline(always)]
fn oow_request(skb: u64, last_oow: u64, hook: HookFamily) -> u32 {
    let req = last_oow.wrapping_sub(layout!(req_last_oow_ack_time) as u64);
    let Some((netns, seg)) = wanted_segment(req, skb) else {
        return 0;
    };
    let ts_recent: u32 = unsafe { read(req, layout!(req_ts_recent)) }.unwrap_or(0);
    if !fails_paws(&seg, ts_recent) {
        return 0;
    }
    report(&seg, netns, PawsPath::SynRecv, Some(ts_recent), hook)
}

/// The reject of `skb` by the socket whose `last_oow_ack_time` is at `last_oow`.
#[inline(always)]
fn oow_paws(skb: u64, last_oow: u64, hook: HookFamily) -> u32 {
    let tp = last_oow.wrapping_sub(layout!(tcp_last_oow_ack_time) as u64);
    let Some((netns, seg)) = wanted_segment(tp, skb) else {
        return 0;
    };
    let state: u8 = unsafe { read(tp, layout!(skc_state)) }.unwrap_or(0);
    let path = if state == TCP_SYN_RECV {
        PawsPath::SynRecv
    } else {
        PawsPath::Established
    };
    let ts_recent: Option<u32> = unsafe { read(tp, layout!(tcp_ts_recent)) };
    report(&seg, netns, path, ts_recent, hook)
}

/// The namespace of the socket at `sk` and the segment `skb` it rejected, if that namespace
/// is traced (the two out-of-window paths start alike).
#[inline(always)]
fn wanted_segment(sk: u64, skb: u64) -> Option<(u32, segment::Segment)> {
    let netns = unsafe { sock_netns(sk) }?;
    if !netns_wanted(netns) {
        return None;
    }
    Some((netns, unsafe { segment::from_skb(skb) }?))
}
