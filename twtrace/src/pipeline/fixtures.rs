//! The records of one connection under the bench's churn (nginx answering wrk with
//! `Connection: close`), for the pipeline's tests and for `benches/user_space.rs`, which
//! measures the pipeline on exactly these: not part of the API.

use twtrace_common::{AF_INET, Event, EventKind, ExitCause, HookFamily, ts_flags};

/// Ephemeral ports a churning client cycles through (1024..65535).
pub const PORTS: u64 = 64_512;

/// Per-4-tuple TSval offsets, as Linux gives since early 2026: a fixed pseudo-random offset
/// per source port, every port its own line (the clock estimator's costliest case).
#[inline]
pub fn per_tuple(port: u16) -> u32 {
    u32::from(port).wrapping_mul(2_654_435_761)
}

/// Connection `i` from source port `port`, at `t0_ns + i · 50 µs`, as the routes other than
/// tp_btf send it: the exit of the server's TIME-WAIT that the client's SYN replaced (same
/// 4-tuple), that SYN, then the new connection's TIME-WAIT entry.
#[inline]
pub fn connection(t0_ns: u64, i: u64, port: u16) -> [Event; 3] {
    let mut base = Event::zeroed();
    base.family = AF_INET;
    base.netns = 4_026_532_000;
    base.laddr[..4].copy_from_slice(&[10, 231, 0, 1]);
    base.raddr[..4].copy_from_slice(&[10, 231, 0, 2]);
    base.lport = 8080;
    base.rport = port;
    base.hook = HookFamily::TpBtf as u8;
    let t = t0_ns + i * 50_000;
    let tw_addr = 0xffff_8880_0000_0000 + u64::from(port) * 512;
    let offset = per_tuple(port);
    let mut exit = base;
    exit.kind = EventKind::TwExit as u8;
    exit.detail = ExitCause::ReplacedBySyn as u8;
    exit.ts_ns = t;
    exit.obj = tw_addr;
    exit.ts_recent = offset.wrapping_add((t / 1_000_000) as u32);
    exit.ts_flags = ts_flags::HAS_TS_RECENT;
    let mut syn = base;
    syn.kind = EventKind::Syn as u8;
    syn.ts_ns = t + 2_000;
    syn.tsval = offset.wrapping_add((t / 1_000_000) as u32 + 7);
    syn.ts_flags = ts_flags::HAS_TSVAL;
    syn.tcp_flags = 0x02;
    let mut enter = base;
    enter.kind = EventKind::TwEnter as u8;
    enter.ts_ns = t + 40_000;
    enter.obj = tw_addr;
    enter.timeout_jiffies = 15_000;
    [exit, syn, enter]
}

/// What the tp_btf route sends for `exit` and the `syn` that replaced it: one record.
#[inline]
pub fn merged(exit: &Event, syn: &Event) -> Event {
    let mut m = *syn;
    m.kind = EventKind::TwExit as u8;
    m.detail = exit.detail;
    m.obj = exit.obj;
    m.timeout_jiffies = exit.ts_ns;
    m.ts_recent = exit.ts_recent;
    m.ts_flags = syn.ts_flags | ts_flags::WITH_SYN | (exit.ts_flags & ts_flags::HAS_TS_RECENT);
    m
}

/// Connection `i` of the churn as the tp_btf route sends it: the exit carrying its SYN, then
/// the entry. Source ports cycle through the [`PORTS`] ephemeral ones.
#[inline]
pub fn tp_btf_connection(t0_ns: u64, i: u64) -> [Event; 2] {
    let port = 1024 + (i % PORTS) as u16;
    let [exit, syn, enter] = connection(t0_ns, i, port);
    [merged(&exit, &syn), enter]
}
