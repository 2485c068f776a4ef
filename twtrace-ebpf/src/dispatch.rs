//! Programs shared between signals: on the tp_btf route one program per tracepoint, shared by
//! every signal that reads it (and on the classic route the one on `inet_sock_set_state`); on
//! the function-probe routes the programs on
//! `tcp_timewait_state_process`, whose verdict both tw_exit and PAWS read (at the end).
//!
//! BTF-typed raw tracepoints run the program straight from the tracepoint site with the raw
//! arguments: no perf record is filled, which is most of a classic tracepoint's cost (timer
//! tracepoints fire ~9 times per connection). One program per site, not one per signal, so a
//! site is paid for once. `ROUTES` (written by user space after the hook choice) says which
//! signals each program serves; it is read only past the cheap first filter.

use aya_ebpf::{
    macros::{btf_tracepoint, fexit, kprobe, kretprobe, tracepoint},
    programs::{
        BtfTracePointContext, FExitContext, ProbeContext, RetProbeContext, TracePointContext,
    },
};
use twtrace_common::{HookFamily, route};

use crate::{
    kernel::{ctx_word, fexit_ret, hooks_only, read, read_flow, routes, scalar_arg, typed},
    layout,
    maps::TwVerdict,
    paws, port_exhaustion, syn, tw_enter, tw_exit, tw_flows, tw_overflow,
};

const IPPROTO_TCP: u16 = 6;
const TCP_SYN_SENT: i32 = 2;

/// `timer->function`, loaded directly (the argument is typed): no helper call on this path,
/// which runs for every timer of the machine.
#[inline(always)]
fn timer_function(timer: u64) -> u64 {
    unsafe { typed(timer, layout!(timer_function)) }
}

#[btf_tracepoint(function = "timer_start")]
pub fn tp_timer_start(ctx: BtfTracePointContext) -> u32 {
    let timer: u64 = ctx.arg(0);
    let func = timer_function(timer);
    if func == 0 {
        return 0;
    }
    if func == layout!(tw_timer_handler) {
        let routes = routes();
        // Silenced (shutdown, --hooks-only): the parked exit is left for user space to read.
        // The re-arm test here, not in tw_timer_started: ending a parked exit calls `finish`,
        // whose chain on top of that frame would pass the 512-byte stack.
        if routes != 0 && !tw_exit::rearmed(timer) {
            tw_timer_started(&ctx, timer, routes);
        }
        return 0;
    }
    if func == layout!(reqsk_timer_handler) {
        request_timer_started(timer);
    }
    tw_exit::other_timer_started();
    0
}

// The paths below are out of line on purpose: each gets its own stack frame. Inlined together,
// their buffers made one frame of nearly 512 bytes, and the 6.1 verifier adds the frame of any
// call (memset, at least 32 bytes) to the caller's and refused the program.

/// A TIME-WAIT timer started that re-arms no parked one: a new TIME-WAIT.
#[inline(never)]
fn tw_timer_started(ctx: &BtfTracePointContext, timer: u64, routes: u32) {
    // tw_overflow alone needs the mark a TIME-WAIT's start leaves (`LAST_ENTER`) too.
    if routes & (route::TW_ENTER | route::TW_FLOWS | route::TW_OVERFLOW) != 0 {
        tw_enter::started(ctx, timer, routes);
    }
}

/// A request socket's timer started: a SYN was queued (it may settle a parked exit).
#[inline(never)]
fn request_timer_started(timer: u64) {
    let routes = routes();
    if routes & (route::TW_EXIT | route::SYN) == 0 {
        return;
    }
    let req = timer - layout!(req_timer) as u64;
    // Re-arms (SYN-ACK retransmits, retransmitted SYNs) are not a new SYN, and cannot settle an
    // exit: the first arm of that request socket did, if any.
    if !syn::first_arm(req) {
        return;
    }
    // A request_sock starts with its sock_common (addresses, ports, netns).
    let Some(flow) = (unsafe { read_flow(req) }) else {
        return;
    };
    let reported = routes & route::TW_EXIT != 0 && tw_exit::request_queued(req, &flow, routes);
    if !reported && routes & route::SYN != 0 {
        syn::report_flow(req, &flow, HookFamily::TpBtf, None);
    }
}

#[btf_tracepoint(function = "timer_cancel")]
pub fn tp_timer_cancel(ctx: BtfTracePointContext) -> u32 {
    let timer: u64 = ctx.arg(0);
    if timer_function(timer) != layout!(tw_timer_handler) {
        return 0;
    }
    let routes = routes();
    // tw_overflow alone needs it too: a re-arm not told apart would leave a TIME-WAIT mark
    // (`LAST_ENTER`) that a later close with that remote port would take for its own.
    if routes & (route::TW_EXIT | route::TW_ENTER | route::TW_FLOWS | route::TW_OVERFLOW) != 0 {
        tw_exit::on_cancel(timer, routes);
    }
    0
}

#[btf_tracepoint(function = "timer_expire_entry")]
pub fn tp_timer_expire(ctx: BtfTracePointContext) -> u32 {
    let timer: u64 = ctx.arg(0);
    if timer_function(timer) == layout!(tw_timer_handler) {
        tw_exit::expiring(timer);
    }
    0
}

#[btf_tracepoint(function = "kfree_skb")]
pub fn tp_kfree_skb(ctx: BtfTracePointContext) -> u32 {
    let reason = paws::btf_drop_reason(&ctx);
    let rx_sk = paws::btf_drop_socket(&ctx);
    let routes = routes();
    // Before 6.11 the dropping socket is not named: find the TIME-WAIT by the segment's
    // connection (only drops without a reason can be a TIME-WAIT's, see tw_flows.rs).
    let rx_sk =
        if rx_sk == 0 && routes & route::TW_FLOWS != 0 && reason == layout!(reason_not_specified) {
            timewait_of(scalar_arg(&ctx, 0))
        } else {
            rx_sk
        };
    if rx_sk != 0 && routes & route::TW_EXIT != 0 {
        tw_exit::segment_dropped_by(rx_sk);
    }
    // The skb is read only past the filters: this program runs for every drop of the machine.
    if routes & route::PAWS != 0 && paws::wanted_reason(reason, true) {
        paws_drop(scalar_arg(&ctx, 0), reason, rx_sk);
    }
    0
}

/// Out of line (its own frame): the live TIME-WAIT a dropped segment was addressed to, or 0.
#[inline(never)]
fn timewait_of(skb: u64) -> u64 {
    tw_flows::of_segment(skb, paws::netns_of_skb(skb))
}

/// Out of line for the same reason as the timer_start paths (its own frame).
#[inline(never)]
fn paws_drop(skb: u64, reason: u32, rx_sk: u64) {
    paws::on_drop(skb, reason, rx_sk, true, HookFamily::TpBtf);
}

/// Which signal a TCP state change may concern, as its route bit: a FIN_WAIT2/CLOSING -> CLOSE
/// close for tw_overflow, a SYN_SENT -> CLOSE one for connect_eaddrnotavail; 0 for the rest
/// (nine of the ten changes of a connection).
#[inline(always)]
fn close_route(oldstate: i32, newstate: i32) -> u32 {
    if newstate != tw_overflow::TCP_CLOSE {
        0
    } else if tw_overflow::leaves_fin_wait(oldstate) {
        route::TW_OVERFLOW
    } else if oldstate == TCP_SYN_SENT {
        route::PORT_EXHAUSTION
    } else {
        0
    }
}

/// A close `close_route` picked, of TCP socket `sk` from `oldstate` (remote port `rport`, host
/// order, read only for tw_overflow), handed to its signal.
#[inline(always)]
fn tcp_closed(
    wanted: u32,
    sk: u64,
    oldstate: i32,
    rport: impl FnOnce() -> u16,
    hook: HookFamily,
) -> u32 {
    if wanted == route::TW_OVERFLOW {
        tw_overflow::closed(sk, oldstate, rport(), hook)
    } else {
        port_exhaustion::syn_sent_closed(sk, hook)
    }
}

#[btf_tracepoint(function = "inet_sock_set_state")]
pub fn tp_set_state(ctx: BtfTracePointContext) -> u32 {
    let oldstate: i32 = ctx.arg(1);
    let wanted = close_route(oldstate, ctx.arg(2));
    if wanted == 0 || routes() & wanted == 0 {
        return 0;
    }
    // Typed: both reads are direct loads, on a path taken by every TIME-WAIT's socket.
    let sk: u64 = ctx.arg(0);
    let proto: u16 = unsafe { typed(sk, layout!(sk_protocol)) };
    if proto != IPPROTO_TCP {
        return 0;
    }
    let rport = || u16::from_be(unsafe { typed(sk, layout!(skc_dport)) });
    tcp_closed(wanted, sk, oldstate, rport, HookFamily::TpBtf)
}

/// The classic tracepoint `sock:inet_sock_set_state`, shared the same way (`route::classic`
/// bits): the fields are read from the perf record, the socket through helpers.
#[tracepoint]
pub fn classic_set_state(ctx: TracePointContext) -> u32 {
    if hooks_only() {
        return 0;
    }
    let field = |off: u32| unsafe { ctx.read_at::<i32>(off as usize) }.unwrap_or(0);
    // Each field a helper call here: the old state only for the one change in ten into CLOSE.
    let newstate = field(layout!(tp_set_state_newstate));
    if newstate != tw_overflow::TCP_CLOSE {
        return 0;
    }
    let oldstate = field(layout!(tp_set_state_oldstate));
    let wanted = close_route(oldstate, newstate);
    if wanted == 0 || routes() & route::classic(wanted) == 0 {
        return 0;
    }
    let proto: u16 = unsafe { ctx.read_at(layout!(tp_set_state_protocol) as usize) }.unwrap_or(0);
    if proto != IPPROTO_TCP {
        return 0;
    }
    let Ok(sk) = (unsafe { ctx.read_at::<u64>(layout!(tp_set_state_skaddr) as usize) }) else {
        return 0;
    };
    let rport = || u16::from_be(unsafe { read::<u16>(sk, layout!(skc_dport)) }.unwrap_or(0));
    tcp_closed(wanted, sk, oldstate, rport, HookFamily::Tracepoint)
}

#[btf_tracepoint(function = "tcp_receive_reset")]
pub fn tp_rst_rx(ctx: BtfTracePointContext) -> u32 {
    tw_overflow::reset_for(scalar_arg(&ctx, 0))
}

#[btf_tracepoint(function = "tcp_send_reset")]
pub fn tp_rst_tx(ctx: BtfTracePointContext) -> u32 {
    tw_overflow::reset_for(scalar_arg(&ctx, 0))
}

// Function-probe routes: `tcp_timewait_state_process(tw, skb, th, ...)`, once per segment that
// reaches a TIME-WAIT socket (twice per connection under churn: the peer's FIN, then the SYN
// that replaces it). tw_exit keeps its verdict for the kill that may follow; PAWS reports a
// reject (or a refused SYN) from it. One program per attach point rather than one per signal:
// each program a trampoline or kprobe runs costs its own entry and exit (a kretprobe's are
// the dearest), paid on every segment. `ROUTES` says which of the two each family serves
// (`route::fentry`, `route::kprobe`): the other family's programs may be attached too when
// the two signals chose differently.

/// fentry route: the verdict, at the function's exit.
#[fexit(function = "tcp_timewait_state_process")]
pub fn tw_process_fexit(ctx: FExitContext) -> u32 {
    if hooks_only() {
        return 0;
    }
    let routes = routes();
    let status = fexit_ret(&ctx, layout!(ret_slot_tw_process)).unwrap_or(u64::MAX) as u32;
    if routes & route::fentry(route::TW_EXIT) != 0 {
        // The socket is only stored and compared: read directly, not through a helper call.
        tw_exit::remember_verdict(ctx_word(&ctx, 0).unwrap_or(0), status);
    }
    // Tested before the arguments are read (a helper call each): nearly every run under churn
    // is an accepted SYN, which PAWS has nothing to say about.
    if routes & route::fentry(route::PAWS) != 0 && status != layout!(tw_status_syn) {
        paws::tw_verdict(
            scalar_arg(&ctx, 0),
            scalar_arg(&ctx, 2),
            status,
            HookFamily::Fentry,
        );
    }
    0
}

/// kprobe route, entry half: what the return half will need, per signal served.
#[kprobe]
pub fn tw_process_kprobe(ctx: ProbeContext) -> u32 {
    if hooks_only() {
        return 0;
    }
    let routes = routes();
    let tw = ctx.arg::<u64>(0).unwrap_or(0);
    if routes & route::kprobe(route::TW_EXIT) != 0 {
        tw_exit::remember_verdict(tw, TwVerdict::PENDING);
    }
    if routes & route::kprobe(route::PAWS) != 0
        && let Some(th) = ctx.arg::<u64>(2)
    {
        paws::tw_process_entered(tw, th);
    }
    0
}

/// kprobe route, return half: the verdict.
#[kretprobe]
pub fn tw_process_kretprobe(ctx: RetProbeContext) -> u32 {
    if hooks_only() {
        return 0;
    }
    let routes = routes();
    let status = ctx.ret::<u64>() as u32;
    if routes & route::kprobe(route::TW_EXIT) != 0 {
        tw_exit::verdict_returned(status);
    }
    if routes & route::kprobe(route::PAWS) != 0 {
        paws::tw_process_returned(status);
    }
    0
}
