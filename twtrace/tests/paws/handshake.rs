//! PAWS during the handshake: request sockets (SYN-RECV) and connecting sockets (SYN-SENT).

use super::*;

/// A listener on `server_port` in a fresh namespace pair, a traced server namespace, and a
/// client address with no socket behind it for crafted SYNs: its kernel's resets to the
/// SYN-ACKs are dropped (they would remove the request socket), and a capture on the client
/// side sees the replies.
struct RawSynLab {
    server: SocketAddr,
    client: SocketAddr,
    cap: Capture,
    tracer: Tracer,
    _listener: Server,
    _block: RstBlock,
    /// Last: fields drop in order, and the namespaces go after what lives in them.
    pair: NetnsPair,
}

impl RawSynLab {
    fn new(tag: &str, v6: bool, server_port: u16, client_port: u16) -> Result<Self> {
        let pair = NetnsPair::new(tag)?;
        let server = SocketAddr::new(server_ip(&pair, v6), server_port);
        let listener = Server::start(pair.server_ns(), server)?;
        let client = SocketAddr::new(client_ip(&pair, v6), client_port);
        let block = RstBlock::install(pair.client_ns())?;
        let cap = Capture::start(pair.client_ns(), VETH)?;
        let tracer = trace(pair.server_inode(), &[])?;
        Ok(RawSynLab {
            server,
            client,
            cap,
            tracer,
            _listener: listener,
            _block: block,
            pair,
        })
    }
}

/// A SYN that repeats a queued SYN (same 4-tuple, same ISN) with an older TSval: the request
/// socket (SYN-RECV) rejects it by PAWS (tcp_check_req) and the kernel counts PAWSEstab. One
/// `syn_recv` reject with the exact regression and the first SYN's TSval as ts_recent.
/// This is what a second client behind a NAT does when it picks a 4-tuple the server is still
/// completing a handshake on.
fn request_socket_old_syn(tag: &str, v6: bool) -> Result<()> {
    const REGRESSION: i32 = 1000;
    const TSVAL: u32 = 3_000_000;
    let mut lab = RawSynLab::new(tag, v6, 5000, 41003)?;
    let (server_addr, client) = (lab.server, lab.client);
    let (srv, cli) = (lab.pair.server_ns(), lab.pair.client_ns());
    let client_ip = client.ip();
    let announced = lab.tracer.stderr_text();
    let mark = monotonic_ns();
    let first = Segment::syn(client, server_addr, 7_000_000, Some(TSVAL), 0);
    let synack = probe(cli, &mut lab.cap, &first, REPLY_TIMEOUT)?.context("SYN-ACK")?;
    ensure!(
        synack.has(support::raw::SYN | support::raw::ACK),
        "{synack:?}"
    );
    let before = netstat(srv)?;
    let old = Segment::syn(
        client,
        server_addr,
        7_000_000,
        Some(TSVAL.wrapping_sub(REGRESSION as u32)),
        0,
    );
    probe(cli, &mut lab.cap, &old, REPLY_TIMEOUT)?
        .context("the request socket answers the reject")?;
    let after = netstat(srv)?;
    let events = since(stop(lab.tracer)?, mark);

    let kernel = delta(&before, &after, "TcpExtPAWSEstab");
    assert_eq!(kernel, 1, "sanity: the request socket rejected it");
    let rejects = from(&events, "paws_reject", client_ip);
    // Before ~6.15 no drop reason names these rejects: only function probes see them
    // (tcp_oow_rate_limited's mib index), and the tracepoint routes must say so when they
    // start, and report none rather than guess.
    // Whether they are seen is decided here from the kernel's BTF and the hook family, not
    // from what twtrace says: a tracer that wrongly gave them up must fail.
    let unseen = announced.contains("rejects at request sockets (syn_recv)")
        || announced.contains("timewait path only");
    let family = hooks_of(&announced, "paws_reject");
    let by_function = ["fentry", "kprobe"].contains(&family.as_str());
    assert_eq!(
        unseen,
        !by_function && !kernel_func_has_param("tcp_check_req", "drop_reason"),
        "request-socket rejects announced unseen exactly where tcp_check_req names no drop \
         reason and no function probe stands in ({family}):\n{announced}"
    );
    if unseen {
        assert_eq!(rejects.len(), 0, "{rejects:?}");
        return Ok(());
    }
    assert_eq!(
        rejects.len() as u64,
        kernel,
        "paws_reject vs PAWSEstab: {events:?}"
    );
    let r = rejects[0];
    assert_eq!(r["path"], "syn_recv", "{r}");
    assert_eq!(r["regression"], REGRESSION, "{r}");
    assert_eq!(r["ts_recent"], TSVAL, "{r}");
    assert_eq!(r["flags"], "SYN", "{r}");
    assert_eq!(
        r["remote"].as_str(),
        Some(client.to_string().as_str()),
        "{r}"
    );
    Ok(())
}

#[test]
fn request_socket_old_syn_is_rejected_v4() -> Result<()> {
    rerun_if_skipped(|| request_socket_old_syn("pwreq4", false))
}

#[test]
fn request_socket_old_syn_is_rejected_v6() -> Result<()> {
    rerun_if_skipped(|| request_socket_old_syn("pwreq6", true))
}

/// One SYN makes one `syn`, however often its request socket's timer is armed again: the
/// server retransmits its unanswered SYN-ACK (the timer re-armed by its own handler) and
/// answers the client's retransmitted SYN (re-armed by tcp_check_req); each re-arm still holds
/// the first SYN's TSval, seconds stale, which as a new SYN would pass for another clock.
fn syn_once_per_request_socket(tag: &str, v6: bool) -> Result<()> {
    const TSVAL: u32 = 5_000_000;
    // No socket behind the crafted SYN: the SYN-ACK stays unanswered.
    let mut lab = RawSynLab::new(tag, v6, 5002, 41005)?;
    let (server_addr, client) = (lab.server, lab.client);
    let (srv, cli) = (lab.pair.server_ns(), lab.pair.client_ns());
    let client_ip = client.ip();
    let before = netstat(srv)?;
    let syn = Segment::syn(client, server_addr, 8_000_000, Some(TSVAL), 0);
    let synack = |s: &Segment| s.is_from_to(server_addr, client) && s.has(support::raw::SYN);
    let mark = lab.cap.mark()?;
    send_segment(cli, &syn)?;
    lab.cap
        .wait_for(mark, REPLY_TIMEOUT, synack)?
        .context("SYN-ACK")?;
    // The client's SYN again (same ISN): the request socket answers it with its SYN-ACK.
    let again = Segment::syn(client, server_addr, 8_000_000, Some(TSVAL + 10), 0);
    let mark = lab.cap.mark()?;
    send_segment(cli, &again)?;
    lab.cap
        .wait_for(mark, REPLY_TIMEOUT, synack)?
        .context("SYN-ACK to the retransmitted SYN")?;
    // The server's own retransmit, after its first timeout (1 s).
    let mark = lab.cap.mark()?;
    lab.cap
        .wait_for(mark, Duration::from_secs(4), synack)?
        .context("the server's SYN-ACK retransmit")?;
    let after = netstat(srv)?;
    let events = stop(lab.tracer)?;

    let retransmits = delta(&before, &after, "TcpRetransSegs");
    assert!(
        retransmits >= 2,
        "sanity: SYN-ACKs sent again: {retransmits}"
    );
    let syns = from(&events, "syn", client_ip);
    assert_eq!(syns.len(), 1, "one SYN, one request socket: {syns:#?}");
    assert_eq!(syns[0]["tsval"], TSVAL, "{}", syns[0]);
    assert_eq!(syns[0]["remote"], client.to_string(), "{}", syns[0]);
    Ok(())
}

#[test]
fn syn_once_per_request_socket_v4() -> Result<()> {
    rerun_if_skipped(|| syn_once_per_request_socket("pwsyn4", false))
}

#[test]
fn syn_once_per_request_socket_v6() -> Result<()> {
    rerun_if_skipped(|| syn_once_per_request_socket("pwsyn6", true))
}

/// A listener that accepts only once data comes (TCP_DEFER_ACCEPT, nginx's `deferred`): the
/// client's handshake ACK is dropped and marks the request socket acked, and its timer, at 1 s,
/// is armed again without a SYN-ACK retransmit (`num_retrans` still 0, `num_timeout` 1). That
/// re-arm, with the SYN's TSval a second stale, is no SYN either: one `syn` per connection,
/// as many as the connections the data then makes (TcpPassiveOpens).
fn syn_once_while_accept_waits_for_data(tag: &str, v6: bool) -> Result<()> {
    use std::io::Write as _;
    use std::os::fd::AsRawFd as _;
    const N: usize = 3;
    let pair = NetnsPair::new(tag)?;
    let ip = server_ip(&pair, v6);
    let listener = support::in_netns(pair.server_ns(), || std::net::TcpListener::bind((ip, 0)))?;
    let defer_secs: libc::c_int = 3;
    let (fd, level) = (listener.as_raw_fd(), libc::IPPROTO_TCP);
    support::sys::setsockopt(fd, level, libc::TCP_DEFER_ACCEPT, &defer_secs)
        .context("TCP_DEFER_ACCEPT")?;
    let server = listener.local_addr()?;
    let tracer = trace(pair.server_inode(), &[])?;
    let before = netstat(pair.server_ns())?;
    let connected = std::time::Instant::now();
    let mut clients = (0..N)
        .map(|_| {
            support::in_netns(pair.client_ns(), || {
                std::net::TcpStream::connect_timeout(&server, support::IO_TIMEOUT)
            })
        })
        .collect::<std::io::Result<Vec<_>>>()
        .context("connect")?;
    // Past the request sockets' first timeout (1 s: the re-arm this test is about, seen in
    // their timer count), before their SYN-ACK retransmit (3 s).
    loop {
        let rearmed = (support::tcp_sockets(pair.server_ns())?.iter())
            .filter(|e| {
                e.local == server && e.state == support::TcpState::SynRecv && e.retransmits >= 1
            })
            .count();
        if rearmed == N {
            break;
        }
        ensure!(
            connected.elapsed() < Duration::from_millis(2500),
            "sanity: {rearmed} of {N} request sockets' timers fired once within 2.5 s"
        );
        thread::sleep(Duration::from_millis(20));
    }
    for c in &mut clients {
        c.write_all(b"x")?;
    }
    let mut accepted = Vec::new();
    while accepted.len() < N {
        ensure!(
            support::sys::poll_readable(listener.as_raw_fd(), support::IO_TIMEOUT)?,
            "accepted {} of {N} connections",
            accepted.len()
        );
        accepted.push(listener.accept()?.0);
    }
    let after = netstat(pair.server_ns())?;
    let events = stop(tracer)?;

    assert_eq!(
        delta(&before, &after, "TcpExtTCPDeferAcceptDrop"),
        N as u64,
        "sanity: each handshake ACK was held back"
    );
    let opened = delta(&before, &after, "TcpPassiveOpens");
    assert_eq!(opened, N as u64, "sanity: the data made the connections");
    let syns = from(&events, "syn", client_ip(&pair, v6));
    assert_eq!(
        syns.len() as u64,
        opened,
        "syns vs TcpPassiveOpens: {syns:#?}"
    );
    Ok(())
}

#[test]
fn syn_once_while_accept_waits_for_data_v4() -> Result<()> {
    rerun_if_skipped(|| syn_once_while_accept_waits_for_data("pwdefer4", false))
}

#[test]
fn syn_once_while_accept_waits_for_data_v6() -> Result<()> {
    rerun_if_skipped(|| syn_once_while_accept_waits_for_data("pwdefer6", true))
}

/// A SYN-ACK whose TSecr is older than the SYN it answers (RFC 7323's check in SYN-SENT): the
/// connecting socket rejects it and the kernel counts TcpExtPAWSActive. One `syn_sent` reject
/// with the segment's TSval; ts_recent is null (a socket in SYN-SENT has none yet).
fn syn_sent_old_tsecr(tag: &str, v6: bool) -> Result<()> {
    let pair = NetnsPair::new(tag)?;
    let (srv, cli) = (pair.server_ns(), pair.client_ns());
    let server = SocketAddr::new(server_ip(&pair, v6), 5001);
    let client_ip = client_ip(&pair, v6);
    let client = SocketAddr::new(client_ip, 41004);
    // Nothing listens on `server`: the server namespace's reset to the SYN is dropped, so the
    // socket stays in SYN-SENT for the crafted SYN-ACK.
    let _block = RstBlock::install(srv)?;
    let mut cap = Capture::start(srv, VETH)?;
    let tracer = trace(pair.client_inode(), &[])?;
    let announced = tracer.stderr_text();
    let mark = monotonic_ns();
    let _sock = support::netns::try_in_netns(cli, move || -> Result<std::os::fd::OwnedFd> {
        use std::os::fd::AsRawFd as _;
        let fd = support::sys::tcp_socket(&client)?;
        support::sys::bind(&fd, &client)?;
        // SAFETY: plain fcntl on an fd we own.
        let rc = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_SETFL, libc::O_NONBLOCK) };
        ensure!(rc == 0, "fcntl O_NONBLOCK");
        match support::sys::connect(&fd, &server) {
            Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => Ok(fd),
            other => anyhow::bail!("non-blocking connect: {other:?}"),
        }
    })??;
    let syn = cap
        .wait_for(0, REPLY_TIMEOUT, |s| {
            s.is_from_to(client, server) && s.has(support::raw::SYN)
        })?
        .context("the client's SYN")?;
    let (tsval, _) = syn.ts.context("SYN without timestamps")?;
    let before = netstat(cli)?;
    let mut synack = Segment::syn(
        server,
        client,
        9_000_000,
        Some(77_777),
        tsval.wrapping_sub(100_000),
    );
    synack.flags |= support::raw::ACK;
    synack.ack = syn.seq.wrapping_add(1);
    // The client answers the rejected SYN-ACK with a reset: that reply marks it processed.
    let mut ccap = Capture::start(cli, VETH)?;
    let mark_c = ccap.mark()?;
    send_segment(srv, &synack)?;
    ccap.wait_for(mark_c, REPLY_TIMEOUT, |s| {
        s.is_from_to(client, server) && s.has(RST)
    })?
    .context("the client resets the rejected SYN-ACK")?;
    let after = netstat(cli)?;
    let events = since(stop(tracer)?, mark);

    let kernel = delta(&before, &after, "TcpExtPAWSActive");
    assert_eq!(kernel, 1, "sanity: the SYN-SENT socket rejected it");
    let rejects = from(&events, "paws_reject", server.ip());
    // Where no drop reason names these rejects (6.1; the kernels that name SYN-SENT drops
    // brought TCP_INVALID_ACK_SEQUENCE with them) and no function marks them, twtrace must say
    // so when it starts, and report none rather than guess.
    let unseen = announced.contains("and in syn_sent are not seen")
        || announced.contains("syn_sent rejects are not seen")
        || announced.contains("timewait path only");
    assert_eq!(
        unseen,
        !kernel_btf_has_name("SKB_DROP_REASON_TCP_INVALID_ACK_SEQUENCE"),
        "syn_sent announced unseen exactly where SYN-SENT drops have no reason:\n{announced}"
    );
    if unseen {
        assert_eq!(rejects.len(), 0, "{rejects:?}");
        return Ok(());
    }
    assert_eq!(
        rejects.len() as u64,
        kernel,
        "paws_reject vs PAWSActive: {events:?}"
    );
    let r = rejects[0];
    assert_eq!(r["path"], "syn_sent", "{r}");
    assert_eq!(r["tsval"], 77_777, "{r}");
    assert!(r["ts_recent"].is_null() && r["regression"].is_null(), "{r}");
    assert_eq!(r["flags"], "SYN|ACK", "{r}");
    Ok(())
}

#[test]
fn syn_sent_old_tsecr_is_rejected_v4() -> Result<()> {
    rerun_if_skipped(|| syn_sent_old_tsecr("pwss4", false))
}

#[test]
fn syn_sent_old_tsecr_is_rejected_v6() -> Result<()> {
    rerun_if_skipped(|| syn_sent_old_tsecr("pwss6", true))
}
