//! TIME-WAITs taken over by a local connect (tcp_tw_reuse).

use super::*;

/// With tcp_tw_reuse=1 a client connect() takes over its own TIME-WAIT 4-tuples: one tw_reuse
/// per TcpExtTWRecycled.
fn tw_reuse_matches_twrecycled(tag: &str, f: Family) -> Result<()> {
    const PORTS: usize = 4;
    let pair = NetnsPair::new(tag)?;
    sysctl(
        pair.client_ns(),
        "net.ipv4.ip_local_port_range",
        "40000 40003",
    )?;
    sysctl(pair.client_ns(), "net.ipv4.tcp_tw_reuse", "1")?;
    // 6.14+: reuse is allowed tcp_tw_reuse_delay ms after the TIME-WAIT began (default 1 s);
    // older kernels: once the monotonic second has changed. 500 ms keeps the first round (a
    // few ms, tens under TCG) from reusing its own TIME-WAITs (1 ms did in a 7.3 guest under
    // TCG: 6 recycles for 4 ports) and lets the second round, 1.1 s later, reuse every port.
    if std::path::Path::new("/proc/sys/net/ipv4/tcp_tw_reuse_delay").exists() {
        sysctl(pair.client_ns(), "net.ipv4.tcp_tw_reuse_delay", "500")?;
    }
    let (srv, server) = serve(&pair, f)?;
    let inode = pair.client_inode();
    let tracer = trace_netns(inode)?;
    let before = netstat(pair.client_ns())?;
    // Older kernels: the first round starts just after a second begins, so that it ends
    // within that second (it need not otherwise: one crossing made it reuse its own).
    sleep_past_next_monotonic_second();
    connect_all(&pair, srv, PORTS, CloseFirst::Client, None)?;
    thread::sleep(Duration::from_millis(1100));
    connect_all(&pair, srv, PORTS, CloseFirst::Client, None)?;
    let after = netstat(pair.client_ns())?;
    let events = stop(tracer)?;
    drop(server);

    let kernel = delta(&before, &after, "TcpExtTWRecycled");
    // Every port was in TIME-WAIT and every second-round connect succeeded: each reused one.
    assert_eq!(
        kernel, PORTS as u64,
        "sanity: the kernel reused TIME-WAIT ports"
    );
    let reuses = of(&events, "tw_reuse", inode);
    assert_eq!(reuses.len() as u64, kernel, "tw_reuse vs TcpExtTWRecycled");
    for e in &reuses {
        assert_eq!(e["cause"], "reused");
        assert_eq!(addr(e, "remote"), srv, "{e}");
    }
    Ok(())
}

#[test]
fn tw_reuse_matches_twrecycled_v4() -> Result<()> {
    rerun_if_skipped(|| tw_reuse_matches_twrecycled("reuse4", Family::V4))
}

#[test]
fn tw_reuse_matches_twrecycled_v6() -> Result<()> {
    rerun_if_skipped(|| tw_reuse_matches_twrecycled("reuse6", Family::V6))
}

/// Sleeps until 5 ms past the next whole second of CLOCK_MONOTONIC, the clock of the kernel's
/// `ktime_get_seconds()`, which TIME-WAIT reuse compared against before 6.14.
fn sleep_past_next_monotonic_second() {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes only the timespec it is given.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    assert_eq!(rc, 0, "clock_gettime(CLOCK_MONOTONIC)");
    let to_next = 1_000_000_000 - u64::try_from(ts.tv_nsec).expect("tv_nsec below 1e9");
    thread::sleep(Duration::from_nanos(to_next) + Duration::from_millis(5));
}
