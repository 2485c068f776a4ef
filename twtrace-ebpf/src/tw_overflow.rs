//! TW overflow: `tcp_time_wait` could not allocate a timewait socket (tcp_max_tw_buckets), so
//! the flow closed without TIME-WAIT. The kernel only bumps TcpExtTCPTimeWaitOverflow.
//!
//! Tracepoint route: `sock:inet_sock_set_state` FIN_WAIT2/CLOSING -> CLOSE. When a TIME-WAIT was
//! created, its timer was armed on this CPU just before (tcp_time_wait runs with BH off), which
//! `LAST_ENTER` records. Any other such close is checked against the call chain: only one coming
//! from `tcp_time_wait` is an overflow (an RST in FIN_WAIT2 closes the same way, elsewhere).
//! The local port is already released at this point and reads 0.

use aya_ebpf::{helpers::bpf_ktime_get_ns, macros::tracepoint, programs::TracePointContext};
use twtrace_common::{EventKind, HookFamily, LossSlot, frame_class};

use crate::{
    emit::emit,
    kernel::{netns_wanted, read_flow},
    layout,
    maps::LAST_ENTER,
    stack::{bit, classify},
};

const IPPROTO_TCP: u16 = 6;
const TCP_FIN_WAIT2: i32 = 5;
const TCP_CLOSE: i32 = 7;
const TCP_CLOSING: i32 = 11;
/// tcp_time_wait arms the timer and closes the socket within microseconds on one CPU.
const SAME_CALL_NS: u64 = 1_000_000;

#[tracepoint]
pub fn tw_overflow_set_state(ctx: TracePointContext) -> u32 {
    let newstate: i32 =
        unsafe { ctx.read_at(layout!(tp_set_state_newstate) as usize) }.unwrap_or(0);
    if newstate != TCP_CLOSE {
        return 0;
    }
    let oldstate: i32 =
        unsafe { ctx.read_at(layout!(tp_set_state_oldstate) as usize) }.unwrap_or(0);
    if oldstate != TCP_FIN_WAIT2 && oldstate != TCP_CLOSING {
        return 0;
    }
    let proto: u16 = unsafe { ctx.read_at(layout!(tp_set_state_protocol) as usize) }.unwrap_or(0);
    if proto != IPPROTO_TCP {
        return 0;
    }
    let Ok(sk) = (unsafe { ctx.read_at::<u64>(layout!(tp_set_state_skaddr) as usize) }) else {
        return 0;
    };
    let Some(flow) = (unsafe { read_flow(sk) }) else {
        return 0;
    };
    if !netns_wanted(flow.netns) {
        return 0;
    }
    let ts = unsafe { bpf_ktime_get_ns() };
    if let Some(last) = LAST_ENTER.get_ptr_mut(0) {
        let last = unsafe { &mut *last };
        if last.rport == flow.rport && ts.saturating_sub(last.ts_ns) < SAME_CALL_NS {
            last.ts_ns = 0; // consumed: this close got its TIME-WAIT
            return 0;
        }
    }
    if classify(&ctx, bit(frame_class::TCP_TIME_WAIT)) != frame_class::TCP_TIME_WAIT {
        return 0;
    }
    emit(LossSlot::TwOverflow, |ev| {
        ev.ts_ns = ts;
        ev.obj = sk;
        ev.netns = flow.netns;
        ev.kind = EventKind::TwOverflow as u8;
        ev.family = flow.family;
        ev.hook = HookFamily::Tracepoint as u8;
        ev.lport = flow.lport;
        ev.rport = flow.rport;
        ev.laddr = flow.laddr;
        ev.raddr = flow.raddr;
    });
    0
}
