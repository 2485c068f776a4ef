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
//! Syscall route (classic tracepoints): the connect syscall tracepoints (stable on every
//! kernel): remember the destination at entry, report it at exit when the result is
//! -EADDRNOTAVAIL.

use aya_ebpf::{
    helpers::{bpf_get_current_pid_tgid, bpf_ktime_get_ns, bpf_probe_read_user_buf},
    macros::{fexit, kprobe, tracepoint},
    programs::{FExitContext, ProbeContext, TracePointContext},
};
use twtrace_common::{AF_INET, AF_INET6, EventKind, HookFamily, LossSlot};

use crate::{
    emit::emit,
    kernel::{current_netns, fexit_ret, hooks_only, netns_wanted, read, read_flow, zero_words},
    layout,
    maps::CONNECTS,
    paws::TCP_SYN_SENT,
    tw_overflow::TCP_CLOSE,
};

const EADDRNOTAVAIL: i64 = 99;

#[tracepoint]
pub fn connect_enter(ctx: TracePointContext) -> u32 {
    if hooks_only() {
        return 0;
    }
    let Ok(uaddr) = (unsafe { ctx.read_at::<u64>(layout!(tp_connect_args) as usize) }) else {
        return 0;
    };
    remember(uaddr)
}

#[tracepoint]
pub fn connect_exit(ctx: TracePointContext) -> u32 {
    if hooks_only() {
        return 0;
    }
    let ret: i64 = unsafe { ctx.read_at(layout!(tp_connect_ret) as usize) }.unwrap_or(0);
    finish(ret, HookFamily::Tracepoint)
}

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

/// tp_btf route: a TCP socket went SYN_SENT -> CLOSE. Whether it ever got its 4-tuple is told
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
        // connect() runs this in the caller's context: the same pid as the syscall route.
        ev.obj = bpf_get_current_pid_tgid();
        flow.fill(ev);
        ev.kind = EventKind::ConnectAddrNotAvail as u8;
        ev.hook = hook as u8;
        ev.errno = EADDRNOTAVAIL as u32;
    });
    0
}

/// Remembers the destination of this thread's connect() until it returns.
#[inline(always)]
fn remember(uaddr: u64) -> u32 {
    // 28 zeroed bytes in an 8-byte aligned buffer: `[0u8; 28]` is a byte-at-a-time memset
    // call, and this runs on every connect() on the machine.
    let mut buf = core::mem::MaybeUninit::<[u64; 4]>::uninit();
    // SAFETY: zeroed in place, then viewed as its first 28 bytes.
    let sa = unsafe {
        zero_words(buf.as_mut_ptr());
        &mut *(buf.as_mut_ptr() as *mut [u8; 28])
    };
    // sockaddr_in is 16 bytes; only read the 28 of sockaddr_in6 when the family says so, so a
    // short buffer at the end of a page never makes the read fail.
    if unsafe { bpf_probe_read_user_buf(uaddr as *const u8, &mut sa[..16]) }.is_err() {
        return 0;
    }
    let family = u16::from_ne_bytes([sa[0], sa[1]]) as u8;
    if family == AF_INET6 {
        if unsafe { bpf_probe_read_user_buf(uaddr as *const u8, sa) }.is_err() {
            return 0;
        }
    } else if family != AF_INET {
        return 0;
    }
    let _ = CONNECTS.insert(&bpf_get_current_pid_tgid(), sa, 0);
    0
}

/// Reports this thread's connect() if it failed with EADDRNOTAVAIL.
#[inline(always)]
fn finish(ret: i64, hook: HookFamily) -> u32 {
    let id = bpf_get_current_pid_tgid();
    let Some(sa) = (unsafe { CONNECTS.get(&id) }).copied() else {
        return 0;
    };
    let _ = CONNECTS.remove(&id);
    if ret != -EADDRNOTAVAIL {
        return 0;
    }
    let netns = unsafe { current_netns() };
    if !netns_wanted(netns) {
        return 0;
    }
    let family = u16::from_ne_bytes([sa[0], sa[1]]) as u8;
    emit(LossSlot::Connect, |ev| {
        ev.ts_ns = unsafe { bpf_ktime_get_ns() };
        ev.obj = id;
        ev.netns = netns;
        ev.kind = EventKind::ConnectAddrNotAvail as u8;
        ev.family = family;
        ev.hook = hook as u8;
        ev.errno = EADDRNOTAVAIL as u32;
        ev.rport = u16::from_be_bytes([sa[2], sa[3]]);
        if family == AF_INET6 {
            ev.raddr.copy_from_slice(&sa[8..24]);
        } else {
            ev.raddr[..4].copy_from_slice(&sa[4..8]);
        }
    });
    0
}
