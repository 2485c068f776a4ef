//! End-to-end test harness for twtrace, shared by the integration tests with `mod support;`.
//!
//! Everything here is synchronous (std threads) and needs root: it creates network namespaces
//! with iproute2, moves threads into them with setns(2), and drives real TCP traffic between
//! them so that TIME-WAIT sockets appear exactly where a test expects them.
//!
//! Traffic rule: all traffic stays between the two namespaces a
//! [`NetnsPair`] creates; nothing here ever talks to an address outside them.
//!
//! Map of the modules:
//! - [`netns`]: [`NetnsPair`], [`in_netns`], [`netns_inode`], stale-namespace cleanup.
//! - [`sys`]: the few libc socket calls std lacks (SO_REUSEADDR before bind, TCP_INFO, ...).
//! - [`proc`]: per-netns sysctls, `/proc/net/{netstat,snmp}` counters, `/proc/net/tcp*` sockets.
//! - [`traffic`]: [`Server`], [`connect_many`] and the TIME-WAIT wait helpers.
//! - [`tracer`]: [`Tracer`], a child-process wrapper for the twtrace binary.
//! - [`raw`]: crafted TCP segments from raw sockets and AF_PACKET captures, for the PAWS paths
//!   (a server TIME-WAIT or an established connection whose ts_recent is known exactly).
//! - [`nat`]: [`nat::NatLab`], clients behind one SNAT router: the classic NAT PAWS failure.

// Each integration test binary compiles this module on its own and uses only part of it;
// without this every test would warn (and `clippy -D warnings` fail) about the rest.
#![allow(dead_code, unused_imports)]

pub mod cpu;
pub mod nat;
pub mod netns;
pub mod proc;
pub mod raw;
pub mod sys;
pub mod tracer;
pub mod traffic;

pub use netns::{
    NamedNetns, NetnsPair, cleanup_stale, cleanup_stale_all, in_netns, netns_exists, netns_inode,
    try_in_netns,
};
pub use proc::{
    TIMEWAIT_SOCKETS, TcpEntry, TcpState, delta, kernel_btf_has_name, kernel_counts_classic_skips,
    kernel_func_has_param, netstat, sysctl, sysctl_get, tcp_sockets, try_delta, tw_count,
    tw_counted_at_creation,
};
pub use tracer::{
    READY_MARKER, STOP_TIMEOUT, Tracer, rerun_alone_if_skipped, rerun_if_skipped, tracer_bin,
};
pub use traffic::{
    CloseFirst, ConnOutcome, ConnectOptions, HangingConnects, IO_TIMEOUT, Server, ServerStats,
    connect_many, connect_many_opts, listen_free, wait_tw_count, wait_tw_settled,
};

/// A scratch directory of one test, removed when the test ends, passing or failing.
pub struct TempDir(pub std::path::PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> std::io::Result<Self> {
        let dir = std::env::temp_dir().join(format!("twtrace-{tag}-{}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        Ok(Self(dir))
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
