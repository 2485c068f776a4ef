//! PAWS end to end: crafted segments and a real NAT, with the real eBPF programs in the real
//! kernel. Every count twtrace reports for the sender IP is compared exactly with the
//! receiving namespace's own counter delta (TcpExtPAWSTimewait from 6.16, PAWSEstab before
//! for TIME-WAIT rejects; TcpExtPAWSEstab for established and request-socket ones;
//! TcpExtPAWSActive for a connecting socket's), and every regression with the value the
//! harness captured on the wire. Where a kernel names a path nowhere twtrace can hook, the
//! test checks that twtrace said so at start and reported none.
//!
//! Needs root. `TWTRACE_HOOKS` forces a hook family (the VM runs use it).

#[path = "../support/mod.rs"]
mod support;

mod capacity;
mod established;
mod handshake;
mod nat;
mod timewait;

use std::{
    collections::BTreeMap,
    net::{IpAddr, SocketAddr},
    path::PathBuf,
    thread,
    time::Duration,
};

use anyhow::{Context as _, Result, ensure};
use serde_json::Value;
use support::{
    NetnsPair, Server, TIMEWAIT_SOCKETS, TempDir, Tracer, delta, kernel_btf_has_name,
    kernel_func_has_param,
    nat::{NatLab, Scenario, TsOrder},
    netns::VETH,
    netstat,
    raw::{
        Capture, Established, REPLY_TIMEOUT, RST, RstBlock, Segment, ServerTimeWait, probe,
        send_segment, tw_paws_delta,
    },
    rerun_if_skipped, try_delta, tw_counted_at_creation,
};

const SETTLE: Duration = Duration::from_millis(500);
const READY: Duration = Duration::from_secs(180);
/// How long a crafted segment that may go unanswered is given for its answer.
const UNANSWERED: Duration = Duration::from_secs(2);

fn trace(inode: u32, extra: &[&str]) -> Result<Tracer> {
    let ns = inode.to_string();
    let mut args = vec!["events", "--json", "--netns", &ns];
    args.extend_from_slice(extra);
    let mut t = Tracer::spawn_default(&args)?;
    t.wait_ready(READY)?;
    Ok(t)
}

/// CLOCK_MONOTONIC now: the clock of the events' `ts_ns`.
fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: a valid timespec to write into.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    assert_eq!(rc, 0, "clock_gettime");
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// The events from `mark_ns` on. The crafted-segment tests start the tracer before they make
/// their TIME-WAITs, as a user starts twtrace before the load: the tp_btf route before 6.11
/// learns a TIME-WAIT older than twtrace only at a timer re-arm it sees. Making the TIME-WAIT
/// (its connection's SYN, enter, ...) is not what these tests assert, so it is cut off.
fn since(events: Vec<Value>, mark_ns: u64) -> Vec<Value> {
    events
        .into_iter()
        .filter(|e| e["ts_ns"].as_u64().is_some_and(|t| t >= mark_ns))
        .collect()
}

/// Every PAWS drop the namespace's kernel counted between two snapshots, on any path:
/// TcpExtPAWSActive (SYN-SENT), TcpExtPAWSEstab, and TcpExtPAWSTimewait where the kernel has
/// it (6.16). For a whole run, setup included: what twtrace must report then too (nothing,
/// while a clean connection makes a TIME-WAIT).
fn paws_drops(before: &BTreeMap<String, u64>, after: &BTreeMap<String, u64>) -> u64 {
    ["TcpExtPAWSActive", "TcpExtPAWSEstab", "TcpExtPAWSTimewait"]
        .iter()
        .filter_map(|c| try_delta(before, after, c))
        .sum()
}

/// `paws_reject` events of namespace `inode`, from any source, and those of no namespace the
/// kernel named (netns 0, a few paths before 6.11) from `ip` (tests run in parallel: another
/// test's would be of another address).
fn rejects_in(events: &[Value], inode: u32, ip: IpAddr) -> usize {
    let ours = |e: &&Value| {
        e["netns"] == inode
            || (e["netns"] == 0
                && (e["remote"].as_str())
                    .and_then(|s| s.parse::<SocketAddr>().ok())
                    .is_some_and(|a| a.ip() == ip))
    };
    (events.iter())
        .filter(|e| e["type"] == "paws_reject")
        .filter(ours)
        .count()
}

fn stop(t: Tracer) -> Result<Vec<Value>> {
    t.stop_lossless(SETTLE)
}

fn from<'a>(events: &'a [Value], ty: &str, ip: IpAddr) -> Vec<&'a Value> {
    events
        .iter()
        .filter(|e| {
            e["type"] == ty
                && e["remote"]
                    .as_str()
                    .and_then(|s| s.parse::<SocketAddr>().ok())
                    .is_some_and(|a| a.ip() == ip)
        })
        .collect()
}

fn verdicts(events: &[Value], ip: IpAddr, verdict: &str) -> usize {
    from(events, "tw_syn", ip)
        .iter()
        .filter(|e| e["verdict"] == verdict)
        .count()
}

fn client_ip(pair: &NetnsPair, v6: bool) -> IpAddr {
    if v6 {
        pair.client_v6()
    } else {
        pair.client_v4()
    }
}

fn server_ip(pair: &NetnsPair, v6: bool) -> IpAddr {
    if v6 {
        pair.server_v6()
    } else {
        pair.server_v4()
    }
}

fn summary_row(path: &PathBuf, ip: IpAddr) -> Result<Value> {
    let text = std::fs::read_to_string(path).with_context(|| format!("{}", path.display()))?;
    let rows: Vec<Value> = serde_json::from_str(&text)?;
    rows.into_iter()
        .find(|r| r["ip"] == ip.to_string())
        .with_context(|| format!("no summary row for {ip}: {text}"))
}

/// The hook family the tracer's start line names for `signal` ("tp_btf" in
/// "paws_reject=tp_btf(partial)").
fn hooks_of(announced: &str, signal: &str) -> String {
    let key = format!("{signal}=");
    announced
        .split_whitespace()
        .find_map(|w| w.trim_start_matches('(').strip_prefix(key.as_str()))
        .map(|f| f.split(['(', ')']).next().unwrap_or_default().to_owned())
        .unwrap_or_default()
}
