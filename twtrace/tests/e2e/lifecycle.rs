//! TIME-WAITs made with either side closing first, replaced by a reconnect from the same
//! ports, and purged with their namespace.

use super::*;

/// N connections where one side closes first; that side's namespace must show exactly the
/// kernel's count of TIME-WAITs, each with the right addresses. The tracer is stopped
/// `settle` after the traffic.
fn timewait_side(tag: &str, f: Family, policy: CloseFirst, settle: Duration) -> Result<()> {
    const N: usize = 40;
    let pair = NetnsPair::new(tag)?;
    let (srv, server) = serve(&pair, f)?;
    let (ns, inode) = match policy {
        CloseFirst::Server => (pair.server_ns(), pair.server_inode()),
        CloseFirst::Client => (pair.client_ns(), pair.client_inode()),
    };
    let tracer = trace_netns(inode)?;
    let fin_timeout_ms = sysctl_get(ns, "net.ipv4.tcp_fin_timeout")?.parse::<u64>()? * 1000;
    // What the kernel arms the timer with: TCP_TIMEWAIT_LEN (60 s) for TIME_WAIT, the
    // namespace's tcp_fin_timeout for an orphaned FIN_WAIT2 (the default 60 s lies above
    // 3.5 RTOs, which would win). The tracepoint routes read it as expiry minus now, in
    // jiffies: up to one jiffy (10 ms at HZ=100) short.
    let kernel_timeout_ms = |e: &Value| -> Result<u64> {
        match e["substate"].as_str() {
            Some("TIME_WAIT") => Ok(60_000),
            Some("FIN_WAIT2") => Ok(fin_timeout_ms),
            _ => anyhow::bail!("substate: {e}"),
        }
    };
    let before = netstat(ns)?;
    let other_before = netstat(if policy == CloseFirst::Server {
        pair.client_ns()
    } else {
        pair.server_ns()
    })?;
    connect_all(&pair, srv, N, policy, None)?;
    let after = netstat(ns)?;
    let other_after = netstat(if policy == CloseFirst::Server {
        pair.client_ns()
    } else {
        pair.server_ns()
    })?;
    let events = tracer.stop_lossless(settle)?;
    drop(server);

    let enters = of(&events, "tw_enter", inode);
    let kernel = tw_created(&before, &after);
    assert_eq!(
        kernel, N as u64,
        "sanity: the kernel created one TIME-WAIT per connection"
    );
    assert_eq!(
        tw_created(&other_before, &other_after),
        0,
        "sanity: the other side has none"
    );
    assert_eq!(
        enters.len() as u64,
        kernel,
        "tw_enter events vs TcpExtTW(+TWKilled) delta"
    );
    // They live 60 s: none ended while traced.
    assert_eq!(
        exits_by_cause(&events, inode),
        BTreeMap::new(),
        "no TIME-WAIT exits"
    );
    for e in &enters {
        let (local, remote) = (addr(e, "local"), addr(e, "remote"));
        match policy {
            CloseFirst::Server => {
                assert_eq!(local, srv, "{e}");
                assert_eq!(remote.ip(), client_ip(&pair, f), "{e}");
            }
            CloseFirst::Client => {
                assert_eq!(local.ip(), client_ip(&pair, f), "{e}");
                assert_eq!(remote, srv, "{e}");
            }
        }
        assert_eq!(
            e["family"],
            if matches!(f, Family::V4) {
                "ipv4"
            } else {
                "ipv6"
            }
        );
        let (want, got) = (kernel_timeout_ms(e)?, e["timeout_ms"].as_u64());
        assert!(
            got.is_some_and(|got| (want - 10..=want).contains(&got)),
            "timeout_ms, the kernel's {want}: {e}"
        );
    }
    Ok(())
}

#[test]
fn server_close_first_v4() -> Result<()> {
    rerun_if_skipped(|| timewait_side("scf4", Family::V4, CloseFirst::Server, SETTLE))
}

#[test]
fn server_close_first_v6() -> Result<()> {
    rerun_if_skipped(|| timewait_side("scf6", Family::V6, CloseFirst::Server, SETTLE))
}

#[test]
fn client_close_first_v4() -> Result<()> {
    rerun_if_skipped(|| timewait_side("ccf4", Family::V4, CloseFirst::Client, SETTLE))
}

#[test]
fn client_close_first_v6() -> Result<()> {
    rerun_if_skipped(|| timewait_side("ccf6", Family::V6, CloseFirst::Client, SETTLE))
}

/// Stopped as soon as the traffic is done, before the reader's next periodic read (SIGINT is
/// how users stop it): the shutdown's last read of the ring must still deliver every record.
#[test]
fn stopped_at_once_loses_nothing() -> Result<()> {
    rerun_if_skipped(|| timewait_side("now4", Family::V4, CloseFirst::Server, Duration::ZERO))
}

/// Reconnecting from the same client ports while the server still holds their TIME-WAITs: the
/// new SYN replaces each one (the kernel has no counter for this; the test knows how many
/// 4-tuples it reused, and the TIME-WAITs created still match TcpExtTW exactly).
fn reconnect(tag: &str, f: Family) -> Result<()> {
    const PORTS: usize = 12;
    let pair = NetnsPair::new(tag)?;
    let (srv, server) = serve(&pair, f)?;
    let ports: Vec<u16> = (0..PORTS as u16).map(|i| 41_000 + i * 2).collect();
    let tracer = trace_netns(pair.server_inode())?;
    let enters_only = trace_netns_only(pair.server_inode(), "tw_enter")?;
    let before = netstat(pair.server_ns())?;
    connect_all(&pair, srv, PORTS, CloseFirst::Server, Some(&ports))?;
    let mid = netstat(pair.server_ns())?;
    let held = tcp_sockets(pair.server_ns())?
        .iter()
        .filter(|e| e.timewait && ports.contains(&e.remote.port()))
        .count() as u64;
    connect_all(&pair, srv, PORTS, CloseFirst::Server, Some(&ports))?;
    let after = netstat(pair.server_ns())?;
    let cause = segment_kill_cause(&tracer.stderr_text(), "replaced_by_syn");
    let events = stop(tracer)?;
    let enters_only = stop(enters_only)?;
    drop(server);

    let inode = pair.server_inode();
    let created = if tw_counted_at_creation() {
        tw_created(&before, &after)
    } else {
        // The second round connected from every 4-tuple the server held in TIME-WAIT: each of
        // those `held` sockets was replaced, so the table's growth undercounts by them.
        tw_created(&before, &mid) + delta(&mid, &after, TIMEWAIT_SOCKETS) + held
    };
    assert_eq!(held, PORTS as u64, "sanity: the server held every 4-tuple");
    assert_eq!(of(&events, "tw_enter", inode).len() as u64, created);
    // The replaced TIME-WAITs' sockets are freed and their addresses reused by the next ones:
    // traced alone, tw_enter must still tell those from re-arms.
    assert_eq!(
        of(&enters_only, "tw_enter", inode).len() as u64,
        created,
        "tw_enter traced alone"
    );
    assert!(
        enters_only.iter().all(|e| e["type"] == "tw_enter"),
        "only tw_enter events"
    );
    // Each first-round TIME-WAIT replaced, and no other exit (the second round's live on).
    assert_eq!(
        exits_by_cause(&events, inode),
        BTreeMap::from([(cause.to_owned(), PORTS as u64)]),
        "exits by cause"
    );
    let replaced: Vec<&Value> = events
        .iter()
        .filter(|e| e["type"] == "tw_exit" && e["netns"] == inode && e["cause"] == cause)
        .collect();
    for e in &replaced {
        assert!(ports.contains(&addr(e, "remote").port()), "{e}");
        assert!(
            e["lifetime_ms"].as_f64().is_some(),
            "entry was seen, lifetime known: {e}"
        );
    }
    Ok(())
}

#[test]
fn reconnect_replaces_server_timewait_v4() -> Result<()> {
    rerun_if_skipped(|| reconnect("rcn4", Family::V4))
}

#[test]
fn reconnect_replaces_server_timewait_v6() -> Result<()> {
    rerun_if_skipped(|| reconnect("rcn6", Family::V6))
}

/// Deleting a namespace purges its TIME-WAIT sockets: each exits `purged`.
#[test]
fn namespace_teardown_purges() -> Result<()> {
    rerun_if_skipped(|| {
        let (pair, server, mut tracer, Created { n: created, .. }) = server_timewaits("purge", 8)?;
        assert_eq!(created, 8, "sanity: one TIME-WAIT per connection");
        let inode = pair.server_inode();
        drop(server);
        drop(pair); // deletes both namespaces; the kernel purges their TIME-WAITs asynchronously
        tracer.wait_for_event(|e| e["cause"] == "purged", Duration::from_secs(30))?;
        // Give the cleanup worker time to finish the rest, then compare.
        let deadline = Instant::now() + Duration::from_secs(30);
        while (exits_by_cause(&tracer.events(), inode)
            .get("purged")
            .copied()
            .unwrap_or(0))
            < created
            && Instant::now() < deadline
        {
            thread::sleep(Duration::from_millis(200));
        }
        let events = stop(tracer)?;
        assert_eq!(of(&events, "tw_enter", inode).len() as u64, created);
        assert_eq!(
            exits_by_cause(&events, inode),
            BTreeMap::from([("purged".to_owned(), created)]),
        );
        Ok(())
    })
}
