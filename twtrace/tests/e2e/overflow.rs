//! `tcp_max_tw_buckets` overflows: counted exactly, aborts not taken for them, and a
//! TIME-WAIT's re-arm not taken for a new TIME-WAIT.

use super::*;
use support::{raw::NftOutputRule, sys::setsockopt};

/// A tiny tcp_max_tw_buckets: every refused TIME-WAIT is an overflow event, exactly as many as
/// TcpExtTCPTimeWaitOverflow counts.
fn overflow_matches_kernel_counter(tag: &str, f: Family) -> Result<()> {
    const N: usize = 24;
    let pair = NetnsPair::new(tag)?;
    sysctl(pair.server_ns(), "net.ipv4.tcp_max_tw_buckets", "5")?;
    let (srv, server) = serve(&pair, f)?;
    let inode = pair.server_inode();
    let tracer = trace_netns(inode)?;
    let overflows_only = trace_netns_only(inode, "tw_overflow")?;
    let before = netstat(pair.server_ns())?;
    connect_all(&pair, srv, N, CloseFirst::Server, None)?;
    let after = netstat(pair.server_ns())?;
    let events = stop(tracer)?;
    let overflows_only = stop(overflows_only)?;
    drop(server);

    let kernel = delta(&before, &after, "TcpExtTCPTimeWaitOverflow");
    // All N within the TIME-WAITs' 60 s: the first 5 fill the buckets, every other overflows.
    assert_eq!(kernel, N as u64 - 5, "sanity: the bucket limit was hit");
    // Traced alone, closes that got their TIME-WAIT must not pass for overflows.
    assert_eq!(
        of(&overflows_only, "tw_overflow", inode).len() as u64,
        kernel,
        "tw_overflow traced alone vs TcpExtTCPTimeWaitOverflow"
    );
    let overflows = of(&events, "tw_overflow", inode);
    assert_eq!(
        overflows.len() as u64,
        kernel,
        "tw_overflow vs TcpExtTCPTimeWaitOverflow"
    );
    assert_eq!(
        of(&events, "tw_enter", inode).len() as u64,
        tw_created(&before, &after)
    );
    for e in &overflows {
        assert_eq!(addr(e, "remote").ip(), client_ip(&pair, f), "{e}");
        assert_eq!(addr(e, "local"), srv, "{e}");
    }
    Ok(())
}

#[test]
fn overflow_matches_kernel_counter_v4() -> Result<()> {
    rerun_if_skipped(|| overflow_matches_kernel_counter("ovf4", Family::V4))
}

#[test]
fn overflow_matches_kernel_counter_v6() -> Result<()> {
    rerun_if_skipped(|| overflow_matches_kernel_counter("ovf6", Family::V6))
}

/// How a half-closed connection (FIN_WAIT2 on the client) is aborted instead of waiting for
/// the server's FIN: the kernel closes such a socket before it sends its reset.
#[derive(Clone, Copy, Debug)]
enum Abort {
    /// close() with data unread (TcpExtTCPAbortOnClose).
    UnreadData,
    /// SO_LINGER {on, 0} then close() (TcpExtTCPAbortOnData).
    LingerZero,
    /// TCP_LINGER2 -1 then close() (TcpExtTCPAbortOnLinger).
    Linger2Negative,
}

/// Opens a connection from the client namespace, half-closes it (the server ACKs the FIN:
/// FIN_WAIT2) and aborts it as `how` says; the server end closes after.
fn abort_half_closed(pair: &NetnsPair, listener: &TcpListener, how: Abort) -> Result<SocketAddr> {
    use std::io::Read as _;
    let (client, mut server) = connect_to(pair, listener)?;
    let local = client.local_addr()?;
    server.set_read_timeout(Some(IO_TIMEOUT))?;
    let fd = client.as_raw_fd();
    if let Abort::Linger2Negative = how {
        setsockopt(fd, libc::IPPROTO_TCP, libc::TCP_LINGER2, &-1).context("TCP_LINGER2")?;
    }
    // In FIN_WAIT2 (the server's ACK of the FIN is in), where each abort below is meant to
    // happen.
    half_close_acked(std::slice::from_ref(&client), Duration::from_secs(15))?;
    ensure!(server.read(&mut [0u8; 16])? == 0, "EOF expected");
    match how {
        Abort::UnreadData => {
            server.write_all(b"unread")?;
            ensure!(
                support::sys::poll_readable(client.as_raw_fd(), Duration::from_secs(15))?,
                "the data reached the client"
            );
        }
        Abort::LingerZero => {
            let zero = libc::linger {
                l_onoff: 1,
                l_linger: 0,
            };
            setsockopt(fd, libc::SOL_SOCKET, libc::SO_LINGER, &zero).context("SO_LINGER")?;
        }
        Abort::Linger2Negative => {}
    }
    drop(client);
    thread::sleep(Duration::from_millis(20));
    drop(server);
    Ok(local)
}

/// Drops every segment namespace `ns` sends to TCP port `port` while it lives.
fn drop_to_port(ns: &str, port: u16) -> Result<NftOutputRule> {
    NftOutputRule::install(ns, "twtrace_test_drop", &format!("tcp dport {port} drop"))
}

/// A client connection to `listener` and its accepted end.
fn connect_to(pair: &NetnsPair, listener: &TcpListener) -> Result<(TcpStream, TcpStream)> {
    let srv = listener.local_addr()?;
    let client = in_netns(pair.client_ns(), || {
        TcpStream::connect_timeout(&srv, IO_TIMEOUT)
    })
    .context("connect")?;
    Ok((client, listener.accept()?.0))
}

/// Leaves a client socket orphaned in CLOSING until its retransmits time out: every segment
/// toward the server is dropped (its FIN first), the server's FIN is let through before the
/// client's FIN is ACKed (a simultaneous close, as the client sees it). The kernel then closes
/// it with no TIME-WAIT and no reset (tcp_write_err: TcpExtTCPAbortOnTimeout), its error set.
/// Sets tcp_orphan_retries to 1 in the client namespace (the default, 0, means 8 retries):
/// orphans' FINs are then retransmitted once.
fn time_out_in_closing(pair: &NetnsPair, listener: &TcpListener) -> Result<SocketAddr> {
    sysctl(pair.client_ns(), "net.ipv4.tcp_orphan_retries", "1")?;
    let srv = listener.local_addr()?;
    let (client, server) = connect_to(pair, listener)?;
    let local = client.local_addr()?;
    let dropped = drop_to_port(pair.client_ns(), srv.port())?;
    drop(client); // its FIN is dropped: FIN_WAIT1, orphaned
    server.shutdown(Shutdown::Write)?; // reaches the client, its own FIN unACKed: CLOSING
    let closing = || has_socket(pair.client_ns(), local, srv, TcpState::Closing);
    wait_until("the client socket is in CLOSING", IO_TIMEOUT, closing)?;
    // One retransmit allowed: the close comes about 1.4 s after the first FIN.
    wait_until(
        "the CLOSING socket timed out",
        Duration::from_secs(30),
        || Ok(!closing()?),
    )?;
    drop(dropped);
    drop(server);
    Ok(local)
}

/// Closes a client with TCP_LINGER2 -1 while its FIN is unACKed (FIN_WAIT1: the FIN dropped,
/// then let through on retransmit): when the ACK comes, the kernel closes the orphan at once,
/// FIN_WAIT2 -> CLOSE without TIME-WAIT (TcpExtTCPAbortOnData), and answers that ACK with a
/// reset after the close (tcp_rcv_state_process returns 1). Before any lower
/// tcp_orphan_retries: the FIN must not time out while its retransmits are dropped.
fn abort_in_fin_wait1(pair: &NetnsPair, listener: &TcpListener) -> Result<SocketAddr> {
    let srv = listener.local_addr()?;
    let (client, server) = connect_to(pair, listener)?;
    let local = client.local_addr()?;
    setsockopt(
        client.as_raw_fd(),
        libc::IPPROTO_TCP,
        libc::TCP_LINGER2,
        &-1,
    )
    .context("TCP_LINGER2")?;
    let dropped = drop_to_port(pair.client_ns(), srv.port())?;
    drop(client);
    let state = |s| has_socket(pair.client_ns(), local, srv, s);
    wait_until("the client socket is in FIN_WAIT1", IO_TIMEOUT, || {
        state(TcpState::FinWait1)
    })?;
    drop(dropped); // the FIN's retransmit gets through and is ACKed
    wait_until(
        "the FIN_WAIT1 socket closed",
        Duration::from_secs(30),
        || Ok(!state(TcpState::FinWait1)? && !state(TcpState::FinWait2)?),
    )?;
    drop(server);
    Ok(local)
}

/// Aborts of half-closed connections close a FIN_WAIT2 socket without TIME-WAIT too, as do an
/// orphan with TCP_LINGER2 -1 whose FIN is ACKed and a CLOSING socket whose retransmits time
/// out, but not for want of a bucket: they are no
/// overflow, while real overflows (a tiny tcp_max_tw_buckets on the same client) all are.
/// tw_overflow == TcpExtTCPTimeWaitOverflow.
#[test]
fn aborts_are_not_overflows() -> Result<()> {
    rerun_if_skipped(|| {
        const N: usize = 8;
        const BUCKETS: usize = 3;
        let pair = NetnsPair::new("abrt")?;
        sysctl(
            pair.client_ns(),
            "net.ipv4.tcp_max_tw_buckets",
            &BUCKETS.to_string(),
        )?;
        let srv_ip = pair.server_v4();
        let (_, listener) = listen_free(pair.server_ns(), srv_ip)?;
        let (srv2, server) = serve(&pair, Family::V4)?;
        let inode = pair.client_inode();
        let tracer = trace_netns(inode)?;
        let before = netstat(pair.client_ns())?;
        // Each step's client address, named in a failure.
        let mut steps = Vec::new();
        for how in [Abort::UnreadData, Abort::LingerZero, Abort::Linger2Negative] {
            steps.push((
                format!("{how:?}"),
                abort_half_closed(&pair, &listener, how)?,
            ));
        }
        let fin_wait1 = abort_in_fin_wait1(&pair, &listener)?;
        steps.push(("Linger2NegativeInFinWait1".to_owned(), fin_wait1));
        let closing = time_out_in_closing(&pair, &listener)?;
        steps.push(("TimedOutInClosing".to_owned(), closing));
        connect_all(&pair, srv2, N, CloseFirst::Client, None)?;
        let after = netstat(pair.client_ns())?;
        let events = stop(tracer)?;
        drop(server);

        let aborts: u64 = [
            "TcpExtTCPAbortOnClose",
            "TcpExtTCPAbortOnData",
            "TcpExtTCPAbortOnLinger",
        ]
        .iter()
        .map(|c| delta(&before, &after, c))
        .sum();
        assert_eq!(aborts, 4, "sanity: the kernel aborted the four");
        assert_eq!(
            delta(&before, &after, "TcpExtTCPAbortOnTimeout"),
            1,
            "sanity: the CLOSING socket timed out"
        );
        let kernel = delta(&before, &after, "TcpExtTCPTimeWaitOverflow");
        assert_eq!(
            kernel,
            (N - BUCKETS) as u64,
            "sanity: the bucket limit was hit"
        );
        let overflows = of(&events, "tw_overflow", inode);
        let taken = (steps.iter())
            .filter(|(_, local)| overflows.iter().any(|e| addr(e, "local") == *local))
            .map(|(step, _)| step.as_str())
            .collect::<Vec<_>>();
        assert!(taken.is_empty(), "taken for overflows: {taken:?}");
        assert_overflows(&events, inode, kernel, srv2);
        Ok(())
    })
}

/// tw_overflow of namespace `inode` == the kernel's TcpExtTCPTimeWaitOverflow delta, each
/// toward `remote`.
fn assert_overflows(events: &[Value], inode: u32, kernel: u64, remote: SocketAddr) {
    let overflows = of(events, "tw_overflow", inode);
    assert_eq!(
        overflows.len() as u64,
        kernel,
        "tw_overflow vs TcpExtTCPTimeWaitOverflow: {overflows:#?}"
    );
    for e in &overflows {
        assert_eq!(addr(e, "remote"), remote, "{e}");
    }
}

/// A TIME-WAIT's re-arm (FIN_WAIT2 -> TIME_WAIT: the peer's FIN reaches it) is no new
/// TIME-WAIT: read as one, on the tracepoint routes it leaves the mark a close that got its
/// TIME-WAIT consumes, and the next close toward the same remote port on that CPU, an
/// overflow, passes for the owner of that mark. Client side, buckets full of FIN_WAIT2
/// TIME-WAITs; per round, the server closes one of them (a re-arm at the client) and the
/// client closes another connection right after (an overflow), on one CPU. tw_overflow,
/// traced alone (its hooks must tell re-arms apart by themselves), must equal
/// TcpExtTCPTimeWaitOverflow.
#[test]
fn overflow_after_a_rearm() -> Result<()> {
    rerun_if_skipped(|| {
        const ROUNDS: usize = 6;
        let pair = NetnsPair::new("rearm")?;
        sysctl(
            pair.client_ns(),
            "net.ipv4.tcp_max_tw_buckets",
            &ROUNDS.to_string(),
        )?;
        // FIN_WAIT2 TIME-WAITs last tcp_fin_timeout; 60 s (the default) is also TIME-WAIT's own
        // length, and the timer wheel keeps a timer moved within its bucket without a cancel and
        // start: no re-arm to see. A shorter one (a common tuning) moves it; 10 s leaves time
        // for the wait below on a slow guest.
        sysctl(pair.client_ns(), "net.ipv4.tcp_fin_timeout", "10")?;
        let srv_ip = pair.server_v4();
        let (srv, listener) = listen_free(pair.server_ns(), srv_ip)?;
        let connect = || connect_to(&pair, &listener);
        let held: Vec<_> = (0..ROUNDS).map(|_| connect()).collect::<Result<_>>()?;
        let closing: Vec<_> = (0..ROUNDS).map(|_| connect()).collect::<Result<_>>()?;
        let inode = pair.client_inode();
        let tracer = trace_netns_only(inode, "tw_overflow")?;
        let before = netstat(pair.client_ns())?;
        // The held connections' clients close first: FIN_WAIT2 TIME-WAITs (made in close(), see
        // `close_after_fin_acked`) fill the buckets.
        let (clients, servers): (Vec<TcpStream>, Vec<TcpStream>) = held.into_iter().unzip();
        close_after_fin_acked(clients, Duration::from_secs(15))?;
        // The first re-arm below must find every bucket taken.
        let count = support::proc::timewait_count(pair.client_ns())?;
        ensure!(
            count == ROUNDS as u64,
            "sanity: {ROUNDS} client FIN_WAIT2 TIME-WAITs, not {count}"
        );
        let _pin = PinnedToCpu::first_allowed()?;
        // Each closing client half-closed and its FIN acknowledged first, so that its close()
        // is the overflow, at once and on this CPU (not a keepalive-timer FIN_WAIT2 socket
        // that ends with a reset and no overflow: see `close_after_fin_acked`).
        let (clients, accepted): (Vec<TcpStream>, Vec<TcpStream>) = closing.into_iter().unzip();
        half_close_acked(&clients, Duration::from_secs(15))?;
        for ((server_side, client), accepted) in servers.into_iter().zip(clients).zip(accepted) {
            drop(server_side); // its FIN re-arms a client TIME-WAIT (softirq on this CPU)
            drop(client); // a FIN_WAIT2 close with every bucket taken: an overflow, on this CPU
            thread::sleep(Duration::from_millis(30));
            drop(accepted);
        }
        // Each round re-armed one: every held 4-tuple's TIME-WAIT is now in substate TIME_WAIT
        // (the server's FIN reached it), or this test would be one of plain overflows.
        let rearmed = || -> Result<usize> {
            Ok(tcp_sockets(pair.client_ns())?
                .iter()
                .filter(|e| e.timewait && e.state == TcpState::TimeWait)
                .count())
        };
        wait_until(
            "every held TIME-WAIT re-armed",
            Duration::from_secs(5),
            || Ok(rearmed()? == ROUNDS),
        )?;
        thread::sleep(Duration::from_millis(100));
        let after = netstat(pair.client_ns())?;
        let events = stop(tracer)?;

        let kernel = delta(&before, &after, "TcpExtTCPTimeWaitOverflow");
        assert_eq!(kernel, ROUNDS as u64, "sanity: each round overflowed once");
        assert_overflows(&events, inode, kernel, srv);
        Ok(())
    })
}
