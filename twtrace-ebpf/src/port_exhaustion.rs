//! Client port exhaustion: connect() failing with EADDRNOTAVAIL, per destination.
//!
//! tp_btf route (no syscall tracepoint: enabling one sends every syscall of every task through
//! the slow path): `sock:inet_sock_set_state` SYN_SENT -> CLOSE of a socket that was never
//! given a 4-tuple. tcp_v4/v6_connect moves the socket to SYN_SENT, then `inet_hash_connect`
//! either hashes it with a free 4-tuple (setting `skc_hash`) or fails with EADDRNOTAVAIL and
//! the socket is closed with `skc_hash` still 0; every later failure (route, timeout, reset,
//! close() while connecting) closes a socket that had one. The destination is still set at that moment (connect clears it right after).
//!
//! kprobe route: the same test at the entry of `tcp_set_state(sk, TCP_CLOSE)`, which is where
//! that tracepoint fires. Not a kretprobe on connect: a kretprobe keeps records for at most
//! max(10, 2 per possible CPU) calls in flight, and connect() blocks, so a client with more
//! threads connecting at once than that (the very load that runs out of ports) would see
//! its failures missed at return.
//!
//! Function-probe route: fexit on `__inet_hash_connect(death_row, sk, ...)`, the search for a
//! free 4-tuple that TCP's connect (v4 and v6) runs once, returning -EADDRNOTAVAIL when there
//! is none: the failure itself, with its socket, for TCP alone (not a UDP connect's, nor one
//! for want of a source address), as the tracepoint routes see it.
//!
//! Classic tracepoint route: the same test as tp_btf, from the classic `inet_sock_set_state`
//! program shared with tw_overflow (twtrace-ebpf/src/dispatch.rs). Not the connect syscall
//! tracepoints: besides slowing every syscall, they see every connect() returning
//! EADDRNOTAVAIL (UDP, no source address), not only TCP's search for a free 4-tuple.

use aya_ebpf::{
    helpers::{bpf_get_current_pid_tgid, bpf_ktime_get_ns},
    macros::{fexit, kprobe},
    programs::{FExitContext, ProbeContext},
};
use twtrace_common::{EventKind, HookFamily, LossSlot};

use crate::{
    emit::emit,
    kernel::{fexit_ret, hooks_only, netns_wanted, read, read_flow},
    layout,
    paws::TCP_SYN_SENT,
    tw_overflow::TCP_CLOSE,
};

const EADDRNOTAVAIL: i64 = 99;

#[fexit(function = "__inet_hash_connect")]
pub fn connect_hash_fexit(ctx: FExitContext) -> u32 {
    if hooks_only() {
        return 0;
    }
    let ret = fexit_ret(&ctx, layout!(ret_slot_hash_connect)).unwrap_or(0) as i32 as i64;
    if ret != -EADDRNOTAVAIL {
        return 0;
    }
    no_free_tuple(ctx.arg(1), HookFamily::Fentry)
}

/// `tcp_set_state(sk, state)`: runs for every TCP state change on the machine, so the new
/// state (an argument, no memory read) is tested first.
#[kprobe]
pub fn connect_close_kprobe(ctx: ProbeContext) -> u32 {
    if hooks_only() || ctx.arg::<i32>(1) != Some(TCP_CLOSE) {
        return 0;
    }
    let Some(sk) = ctx.arg::<u64>(0) else {
        return 0;
    };
    // The state it leaves is still the socket's own at entry.
    if unsafe { read::<u8>(sk, layout!(skc_state)) } != Some(TCP_SYN_SENT) {
        return 0;
    }
    syn_sent_closed(sk, HookFamily::Kprobe)
}

/// Tracepoint routes: a TCP socket went SYN_SENT -> CLOSE. Whether it ever got its 4-tuple is told
/// by `skc_hash`, which the kernel sets only when it hashes the socket into the established
/// table (inet_ehash_insert, or the check of a bound port's 4-tuple) and sk_alloc zeroes.
/// Not by the socket's place in that table: tcp_set_state unhashes before the tracepoint
/// fires, so every close (a refused or timed-out connect, a close() while connecting) reads
/// unhashed there. Misses one case: a socket reused after connect(AF_UNSPEC) keeps its
/// earlier hash.
#[inline(always)]
pub fn syn_sent_closed(sk: u64, hook: HookFamily) -> u32 {
    let hash: u32 = unsafe { read(sk, layout!(skc_hash)) }.unwrap_or(1);
    if hash != 0 {
        return 0; // it got its 4-tuple: a later failure, not EADDRNOTAVAIL
    }
    no_free_tuple(sk, hook)
}

/// Reports the connect of socket `sk`, which found no free 4-tuple toward its destination.
#[inline(always)]
fn no_free_tuple(sk: u64, hook: HookFamily) -> u32 {
    let Some(flow) = (unsafe { read_flow(sk) }) else {
        return 0;
    };
    if !netns_wanted(flow.netns) {
        return 0;
    }
    emit(LossSlot::Connect, |ev| {
        ev.ts_ns = unsafe { bpf_ktime_get_ns() };
        // connect() runs this in the caller's context.
        ev.obj = bpf_get_current_pid_tgid();
        flow.fill(ev);
        ev.kind = EventKind::ConnectAddrNotAvail as u8;
        ev.hook = hook as u8;
        ev.errno = EADDRNOTAVAIL as u32;
    });
    0
}
