//! Self-test of the end-to-end harness in tests/support, without the tracer: it checks that the
//! traffic generators put TIME-WAIT sockets exactly where they claim, that the kernel counters
//! agree, and that namespaces are cleaned up. Needs root (network namespaces).

mod support;

use std::net::SocketAddr;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::time::{Duration, Instant};

use support::*;

const PORT: u16 = 5000;
const WAIT: Duration = Duration::from_secs(5);

/// Runs `n` connections with `policy` against a fresh server and checks TIME-WAIT sockets and
/// the TcpExtTW counter on both sides. Returns how long the connections took.
fn tw_lands_on_closer(pair: &NetnsPair, server_ip: std::net::IpAddr, policy: CloseFirst) {
    const N: usize = 20;
    let srv_addr = SocketAddr::new(server_ip, PORT);
    let server = Server::start(pair.server_ns(), srv_addr).unwrap();
    let before_srv = netstat(pair.server_ns()).unwrap();
    let before_cli = netstat(pair.client_ns()).unwrap();
    let tw_srv0 = tw_count(pair.server_ns()).unwrap();
    let tw_cli0 = tw_count(pair.client_ns()).unwrap();

    let t = Instant::now();
    let out = connect_many(pair.client_ns(), srv_addr, N, policy, None).unwrap();
    let took = t.elapsed();
    eprintln!(
        "{}: {N} connections {policy:?}-close-first over {} took {took:?}",
        pair.server_ns(),
        if server_ip.is_ipv4() { "IPv4" } else { "IPv6" }
    );
    assert!(out.iter().all(ConnOutcome::is_ok), "{out:?}");
    server.wait_completed(N as u64, WAIT).unwrap();

    let (want_srv, want_cli) = match policy {
        CloseFirst::Server => (N, 0),
        CloseFirst::Client => (0, N),
    };
    // The harness promises the TIME-WAIT sockets exist when connect_many returns: no waiting.
    assert_eq!(tw_count(pair.server_ns()).unwrap() - tw_srv0, want_srv);
    assert_eq!(tw_count(pair.client_ns()).unwrap() - tw_cli0, want_cli);

    let after_srv = netstat(pair.server_ns()).unwrap();
    let after_cli = netstat(pair.client_ns()).unwrap();
    assert_eq!(delta(&before_srv, &after_srv, "TcpExtTW"), want_srv as u64);
    assert_eq!(delta(&before_cli, &after_cli, "TcpExtTW"), want_cli as u64);
    // Every TIME-WAIT lives out its 60 s: none was killed early or recycled.
    for m in [(&before_srv, &after_srv), (&before_cli, &after_cli)] {
        assert_eq!(delta(m.0, m.1, "TcpExtTWKilled"), 0);
        assert_eq!(delta(m.0, m.1, "TcpExtTWRecycled"), 0);
        assert_eq!(delta(m.0, m.1, "TcpExtTCPTimeWaitOverflow"), 0);
    }
    // The local ports reported are the ones the server saw as remote ports of its TW sockets.
    if policy == CloseFirst::Server {
        let mut want: Vec<u16> = out.iter().map(|o| o.local_port.unwrap()).collect();
        let mut got: Vec<u16> = tcp_sockets(pair.server_ns())
            .unwrap()
            .iter()
            .filter(|e| e.state == TcpState::TimeWait)
            .map(|e| {
                assert_eq!(e.local, srv_addr);
                e.remote.port()
            })
            .collect();
        want.sort_unstable();
        got.sort_unstable();
        assert_eq!(got, want);
    }
}

#[test]
fn server_close_first_v4() {
    let pair = NetnsPair::new("scf4").unwrap();
    tw_lands_on_closer(&pair, pair.server_v4(), CloseFirst::Server);
}

#[test]
fn client_close_first_v4() {
    let pair = NetnsPair::new("ccf4").unwrap();
    tw_lands_on_closer(&pair, pair.server_v4(), CloseFirst::Client);
}

#[test]
fn both_directions_in_one_pair_v4() {
    // The brief's sequence: server-first then client-first in the same namespaces.
    let pair = NetnsPair::new("both4").unwrap();
    tw_lands_on_closer(&pair, pair.server_v4(), CloseFirst::Server);
    tw_lands_on_closer(&pair, pair.server_v4(), CloseFirst::Client);
}

#[test]
fn server_close_first_v6() {
    let pair = NetnsPair::new("scf6").unwrap();
    tw_lands_on_closer(&pair, pair.server_v6(), CloseFirst::Server);
}

#[test]
fn client_close_first_v6() {
    let pair = NetnsPair::new("ccf6").unwrap();
    tw_lands_on_closer(&pair, pair.server_v6(), CloseFirst::Client);
}

#[test]
fn narrow_port_range_runs_out_with_eaddrnotavail() {
    let pair = NetnsPair::new("ports").unwrap();
    let cli = pair.client_ns();
    sysctl(cli, "net.ipv4.ip_local_port_range", "40000 40003").unwrap();
    assert_eq!(
        sysctl_get(cli, "net.ipv4.ip_local_port_range").unwrap(),
        "40000\t40003"
    );
    // Default 2 = reuse only for loopback; the veth is not loopback, so no TIME-WAIT reuse.
    assert_eq!(sysctl_get(cli, "net.ipv4.tcp_tw_reuse").unwrap(), "2");
    let srv_addr = SocketAddr::new(pair.server_v4(), PORT);
    let _server = Server::start(pair.server_ns(), srv_addr).unwrap();
    let before = netstat(cli).unwrap();
    let out = connect_many(cli, srv_addr, 10, CloseFirst::Client, None).unwrap();
    let after = netstat(cli).unwrap();

    let ok: Vec<&ConnOutcome> = out.iter().filter(|o| o.is_ok()).collect();
    let failed: Vec<&ConnOutcome> = out.iter().filter(|o| !o.is_ok()).collect();
    eprintln!(
        "port range 40000-40003: {} ok, {} failed",
        ok.len(),
        failed.len()
    );
    assert_eq!(ok.len(), 4, "{out:?}");
    assert!(out[..4].iter().all(ConnOutcome::is_ok), "{out:?}");
    let mut ports: Vec<u16> = ok.iter().map(|o| o.local_port.unwrap()).collect();
    ports.sort_unstable();
    assert_eq!(ports, vec![40000, 40001, 40002, 40003]);
    for f in &failed {
        assert_eq!(f.errno(), Some(libc::EADDRNOTAVAIL), "{f:?}");
        assert_eq!(f.failed_at, Some("connect"));
        assert_eq!(f.local_port, None);
    }
    assert_eq!(failed.len(), 6);
    assert_eq!(tw_count(cli).unwrap(), 4);
    assert_eq!(delta(&before, &after, "TcpExtTW"), 4);
    assert_eq!(delta(&before, &after, "TcpExtTWRecycled"), 0);
}

#[test]
fn tw_reuse_1_recycles_client_time_wait() {
    // Same exhaustion, but tcp_tw_reuse=1 lets connect() take over the client's own TIME-WAIT
    // 4-tuples (timestamps are on, and the TW must be at least 1 s old, or
    // tcp_tw_reuse_delay on 6.14+), counted as TcpExtTWRecycled.
    let pair = NetnsPair::new("reuse").unwrap();
    let cli = pair.client_ns();
    sysctl(cli, "net.ipv4.ip_local_port_range", "40000 40003").unwrap();
    sysctl(cli, "net.ipv4.tcp_tw_reuse", "1").unwrap();
    let srv_addr = SocketAddr::new(pair.server_v4(), PORT);
    let _server = Server::start(pair.server_ns(), srv_addr).unwrap();
    let first = connect_many(cli, srv_addr, 4, CloseFirst::Client, None).unwrap();
    assert!(first.iter().all(ConnOutcome::is_ok), "{first:?}");
    // The reuse check compares whole seconds (and 6.14+ has tcp_tw_reuse_delay = 1000 ms).
    std::thread::sleep(Duration::from_millis(2100));
    let before = netstat(cli).unwrap();
    let second = connect_many(cli, srv_addr, 4, CloseFirst::Client, None).unwrap();
    let after = netstat(cli).unwrap();
    assert!(second.iter().all(ConnOutcome::is_ok), "{second:?}");
    assert_eq!(delta(&before, &after, "TcpExtTWRecycled"), 4);
    assert_eq!(tw_count(cli).unwrap(), 4);
}

#[test]
fn reconnect_from_same_ports_replaces_server_time_wait() {
    // Server-close-first from fixed client ports, twice: each new SYN hits the server's
    // TIME-WAIT socket for the same 4-tuple, which accepts it and is replaced by the new
    // connection (whose own close makes a fresh TIME-WAIT).
    let pair = NetnsPair::new("samep").unwrap();
    let ports: Vec<u16> = (41000..41005).collect();
    let srv_addr = SocketAddr::new(pair.server_v4(), PORT);
    let _server = Server::start(pair.server_ns(), srv_addr).unwrap();
    let srv = pair.server_ns();
    let before = netstat(srv).unwrap();
    let a = connect_many(
        pair.client_ns(),
        srv_addr,
        5,
        CloseFirst::Server,
        Some(&ports),
    )
    .unwrap();
    assert!(a.iter().all(ConnOutcome::is_ok), "{a:?}");
    assert_eq!(
        a.iter().map(|o| o.local_port.unwrap()).collect::<Vec<_>>(),
        ports
    );
    assert_eq!(tw_count(srv).unwrap(), 5);
    let t = Instant::now();
    let b = connect_many(
        pair.client_ns(),
        srv_addr,
        5,
        CloseFirst::Server,
        Some(&ports),
    )
    .unwrap();
    eprintln!("5 reconnects onto server TIME-WAITs took {:?}", t.elapsed());
    assert!(b.iter().all(ConnOutcome::is_ok), "{b:?}");
    let after = netstat(srv).unwrap();
    assert_eq!(tw_count(srv).unwrap(), 5);
    assert_eq!(delta(&before, &after, "TcpExtTW"), 10);
    // No PAWS trouble: same 4-tuple, same host, so the same TSval offset.
    assert_eq!(delta(&before, &after, "TcpExtPAWSEstab"), 0);
}

#[test]
fn reconnect_from_same_ports_reuses_client_time_wait() {
    // Client-close-first from fixed ports, twice: bind()+SO_REUSEADDR then connect() takes
    // over the client's own TIME-WAIT 4-tuple whatever tcp_tw_reuse says.
    let pair = NetnsPair::new("samec").unwrap();
    let ports: Vec<u16> = (42000..42004).collect();
    let srv_addr = SocketAddr::new(pair.server_v4(), PORT);
    let _server = Server::start(pair.server_ns(), srv_addr).unwrap();
    let cli = pair.client_ns();
    sysctl(cli, "net.ipv4.tcp_tw_reuse", "0").unwrap();
    let a = connect_many(cli, srv_addr, 4, CloseFirst::Client, Some(&ports)).unwrap();
    assert!(a.iter().all(ConnOutcome::is_ok), "{a:?}");
    let before = netstat(cli).unwrap();
    let b = connect_many(cli, srv_addr, 4, CloseFirst::Client, Some(&ports)).unwrap();
    let after = netstat(cli).unwrap();
    assert!(b.iter().all(ConnOutcome::is_ok), "{b:?}");
    assert_eq!(tw_count(cli).unwrap(), 4);
    assert_eq!(delta(&before, &after, "TcpExtTW"), 4);
    assert_eq!(delta(&before, &after, "TcpExtTWRecycled"), 4);
}

#[test]
fn tw_bucket_limit_overflows() {
    let pair = NetnsPair::new("ovf").unwrap();
    let srv = pair.server_ns();
    sysctl(srv, "net.ipv4.tcp_max_tw_buckets", "5").unwrap();
    let srv_addr = SocketAddr::new(pair.server_v4(), PORT);
    let _server = Server::start(srv, srv_addr).unwrap();
    let before = netstat(srv).unwrap();
    let out = connect_many(pair.client_ns(), srv_addr, 12, CloseFirst::Server, None).unwrap();
    let after = netstat(srv).unwrap();
    assert!(out.iter().all(ConnOutcome::is_ok), "{out:?}");
    assert_eq!(tw_count(srv).unwrap(), 5);
    assert_eq!(delta(&before, &after, "TcpExtTW"), 5);
    assert_eq!(delta(&before, &after, "TcpExtTCPTimeWaitOverflow"), 7);
}

#[test]
fn sysctls_are_per_namespace() {
    let pair = NetnsPair::new("sysctl").unwrap();
    let key = "net.ipv4.tcp_max_tw_buckets";
    let host = std::fs::read_to_string("/proc/sys/net/ipv4/tcp_max_tw_buckets").unwrap();
    let srv_before = sysctl_get(pair.server_ns(), key).unwrap();
    sysctl(pair.client_ns(), key, "7").unwrap();
    assert_eq!(sysctl_get(pair.client_ns(), key).unwrap(), "7");
    assert_eq!(sysctl_get(pair.server_ns(), key).unwrap(), srv_before);
    assert_eq!(
        std::fs::read_to_string("/proc/sys/net/ipv4/tcp_max_tw_buckets").unwrap(),
        host
    );
    assert!(sysctl(pair.client_ns(), "net.ipv4.no_such_sysctl", "1").is_err());
}

#[test]
fn netns_inode_is_the_namespace_id() {
    let pair = NetnsPair::new("inode").unwrap();
    let from_thread = in_netns(pair.server_ns(), || {
        std::fs::metadata("/proc/thread-self/ns/net").unwrap().ino()
    });
    assert_eq!(u64::from(pair.server_inode()), from_thread);
    assert_ne!(pair.server_inode(), pair.client_inode());
    let root = std::fs::metadata("/proc/thread-self/ns/net").unwrap().ino();
    assert_ne!(
        u64::from(pair.server_inode()),
        root,
        "main thread left root"
    );
}

#[test]
fn pair_is_removed_when_the_test_panics() {
    let names = std::sync::Mutex::new(Vec::new());
    let r = std::panic::catch_unwind(|| {
        let pair = NetnsPair::new("panic").unwrap();
        names
            .lock()
            .unwrap()
            .extend([pair.server_ns().to_owned(), pair.client_ns().to_owned()]);
        // A panic inside a netns thread reaches the caller with its own message.
        in_netns(pair.server_ns(), || panic!("boom in netns"));
    });
    let payload = r.unwrap_err();
    assert_eq!(payload.downcast_ref::<&str>(), Some(&"boom in netns"));
    let names = names.into_inner().unwrap();
    assert_eq!(names.len(), 2);
    for n in names {
        assert!(!netns_exists(&n), "{n} left behind");
    }
}

#[test]
fn stale_namespaces_of_dead_runs_are_removed() {
    // pid_max is at most 2^22, so this pid can never belong to a live process.
    let dead = 4_194_305u32;
    let stale = format!("tw-stale-{dead}-srv");
    let other_tag = format!("tw-stale2-{dead}-srv");
    // Deleted on every way out, by the code under test or else by the guards.
    let _stale = NamedNetns::add(&stale).unwrap();
    let _other = NamedNetns::add(&other_tag).unwrap();
    let pair = NetnsPair::new("stale").unwrap();
    assert!(!netns_exists(&stale));
    // Only the tag's own leftovers go; another tag's are left for its own test.
    assert!(netns_exists(&other_tag));
    assert!(netns_exists(pair.server_ns()));
    assert_eq!(cleanup_stale("stale2").unwrap(), vec![other_tag.clone()]);
    assert!(!netns_exists(&other_tag));
}

#[test]
fn settle_and_wait_helpers() {
    let pair = NetnsPair::new("settle").unwrap();
    let srv_addr = SocketAddr::new(pair.server_v6(), PORT);
    let server = Server::start(pair.server_ns(), srv_addr).unwrap();
    assert_eq!(server.addr(), srv_addr);
    connect_many(pair.client_ns(), srv_addr, 3, CloseFirst::Server, None).unwrap();
    wait_tw_count(pair.server_ns(), 3, WAIT).unwrap();
    let n = wait_tw_settled(pair.server_ns(), Duration::from_millis(50), WAIT).unwrap();
    assert_eq!(n, 3);
    assert!(wait_tw_count(pair.server_ns(), 4, Duration::from_millis(50)).is_err());
    // Port 0 asks the kernel for a port; the server reports the real one.
    let s2 = Server::start(pair.server_ns(), SocketAddr::new(pair.server_v4(), 0)).unwrap();
    assert_ne!(s2.addr().port(), 0);
    // Nobody listens on this port in the server namespace: refused, errno recorded.
    let out = connect_many(
        pair.client_ns(),
        SocketAddr::new(pair.server_v4(), PORT + 1),
        1,
        CloseFirst::Client,
        None,
    )
    .unwrap();
    assert_eq!(out[0].errno(), Some(libc::ECONNREFUSED));
}

/// Bounded idling for the stubs (15 s at most). Short sleeps in the foreground rather than one
/// long background sleep: the shell runs its trap only between commands, and a background sleep
/// would keep the output pipes open after the shell exits.
const IDLE: &str = "i=0; while [ $i -lt 300 ]; do sleep 0.05; i=$((i+1)); done";

/// A shell script standing in for twtrace, to exercise the process helper. Like the real
/// tracer, a stub must install its SIGINT handling before it prints the ready line, or stop()
/// can kill it before the trap exists.
fn stub(script: &str) -> Result<Tracer, anyhow::Error> {
    // `sh -c script` takes a possible `--hooks X` from TWTRACE_HOOKS as $0 $1: harmless.
    Tracer::spawn(Path::new("/bin/sh"), &["-c", script])
}

#[test]
fn tracer_helper_collects_events_and_stops_cleanly() {
    let mut t = stub(&format!(
        r#"trap 'echo "{{\"bye\":true}}"; exit 0' INT
           echo 'twtrace: tracing with stub' >&2; echo '{{"n":1}}'; echo '{{"n":2}}'; {IDLE}"#
    ))
    .unwrap();
    t.wait_ready(WAIT).unwrap();
    let e = t
        .wait_for_event(|v| v["n"] == 2, WAIT)
        .expect("second event");
    assert_eq!(e["n"], 2);
    let events = t.stop().unwrap();
    assert_eq!(
        events,
        vec![
            serde_json::json!({"n": 1}),
            serde_json::json!({"n": 2}),
            serde_json::json!({"bye": true})
        ]
    );
}

#[test]
fn tracer_helper_reports_early_exit_and_bad_status() {
    let mut t = stub("echo 'cannot attach: EPERM' >&2; exit 3").unwrap();
    let err = format!("{:#}", t.wait_ready(WAIT).unwrap_err());
    assert!(err.contains("cannot attach: EPERM"), "{err}");
    assert!(err.contains("exit status: 3"), "{err}");

    let mut t = stub(&format!(
        "trap 'exit 1' INT; echo 'twtrace: tracing' >&2; {IDLE}"
    ))
    .unwrap();
    t.wait_ready(WAIT).unwrap();
    let err = format!("{:#}", t.stop().unwrap_err());
    assert!(err.contains("exit status: 1"), "{err}");

    let mut t = stub(&format!(
        "trap 'exit 0' INT; echo not-json; echo 'twtrace: tracing' >&2; {IDLE}"
    ))
    .unwrap();
    t.wait_ready(WAIT).unwrap();
    let err = format!("{:#}", t.stop().unwrap_err());
    assert!(err.contains("non-JSON"), "{err}");
}

/// A lost record of the kind the tracer writes for runs the kernel skipped.
fn skipped_runs_record() -> serde_json::Value {
    serde_json::json!({"type": "lost", "program": "tw_exit_timer_cancel", "count": 3,
        "reason": "skipped_runs"})
}

/// A run that fails while the tracer reported skipped runs (or said the kernel skips without
/// counting) is made again, once, and the second run's result stands (pass or fail); a failure
/// without them is final after one run; an assertion that fails (a panic) counts as a failure.
/// The lost record's reason is checked too: only `skipped_runs` voids a run.
#[test]
fn a_failure_with_skipped_runs_is_run_again_once() {
    use std::cell::Cell;
    use support::tracer::SkippedRuns;

    let runs = Cell::new(0);
    let flaky = || -> anyhow::Result<()> {
        runs.set(runs.get() + 1);
        if runs.get() == 1 {
            assert!(SkippedRuns::among(&[skipped_runs_record()]).is_some());
            anyhow::bail!("first run: counts off");
        }
        Ok(())
    };
    assert!(rerun_if_skipped(flaky).is_ok());
    assert_eq!(runs.get(), 2);

    runs.set(0);
    let always = || -> anyhow::Result<()> {
        runs.set(runs.get() + 1);
        let _ = SkippedRuns::among(&[skipped_runs_record()]);
        anyhow::bail!("counts off")
    };
    assert!(rerun_if_skipped(always).is_err());
    assert_eq!(runs.get(), 2, "run again once, not more");

    runs.set(0);
    let ring_full = || -> anyhow::Result<()> {
        runs.set(runs.get() + 1);
        let mut rec = skipped_runs_record();
        rec["reason"] = "ring_full".into();
        assert!(SkippedRuns::among(&[rec]).is_none());
        anyhow::bail!("counts off")
    };
    assert!(rerun_if_skipped(ring_full).is_err());
    assert_eq!(runs.get(), 1, "a failure without skipped runs is final");

    runs.set(0);
    let panics_first = || -> anyhow::Result<()> {
        runs.set(runs.get() + 1);
        if runs.get() == 1 {
            let _ = SkippedRuns::among(&[skipped_runs_record()]);
            panic!("an assertion failed (expected by this self-test)");
        }
        Ok(())
    };
    assert!(rerun_if_skipped(panics_first).is_ok());
    assert_eq!(runs.get(), 2);

    // A kernel that skips without counting (twtrace's start-up note): as void as reported
    // skips; any other stderr is not.
    runs.set(0);
    let uncounted = || -> anyhow::Result<()> {
        runs.set(runs.get() + 1);
        SkippedRuns::note_if_uncounted(&format!(
            "twtrace: tracing (tw_enter=kprobe)\ntwtrace: note: this kernel {} ...",
            support::tracer::UNCOUNTED
        ));
        anyhow::ensure!(runs.get() > 1, "first run: counts off");
        Ok(())
    };
    assert!(rerun_if_skipped(uncounted).is_ok());
    assert_eq!(runs.get(), 2);
    runs.set(0);
    let other_stderr = || -> anyhow::Result<()> {
        runs.set(runs.get() + 1);
        SkippedRuns::note_if_uncounted("twtrace: tracing (tw_enter=kprobe)");
        anyhow::bail!("counts off")
    };
    assert!(rerun_if_skipped(other_stderr).is_err());
    assert_eq!(runs.get(), 1);
}
