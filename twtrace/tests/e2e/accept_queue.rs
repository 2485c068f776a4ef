//! A SYN that replaces a server TIME-WAIT while the listener's accept queue is full: the
//! TIME-WAIT is killed for that SYN, then the listener drops the SYN (TcpExtListenOverflows),
//! so no request socket follows it; the client sends the SYN again a second later and gets in
//! once the queue has room. The exit is `replaced_by_syn`: the function probes read the
//! TIME-WAIT's verdict, the classic tracepoints the call chain (before 6.10 such a kill reads
//! `unknown` there, announced partial: `segment_kill_cause`), and the tp_btf route takes the
//! retransmitted SYN of the same 4-tuple as the evidence (twtrace/src/pipeline/late_syn.rs).
//! The reconnects run on one CPU: each TIME-WAIT cancel there settles the one before it as
//! unexplained, so the user-space path is the one taken, not the kernel's own pairing of a
//! cancel still parked on its CPU with its SYN.

use super::*;
use support::{cpu::PinnedToCpu, netns::try_in_netns, sys};

const N: usize = 4;

fn full_queue(tag: &str, f: Family) -> Result<()> {
    let pair = NetnsPair::new(tag)?;
    let (srv_ns, cli_ns) = (pair.server_ns(), pair.client_ns());
    let (srv, server) = serve(&pair, f)?;
    let client_ip = match f {
        Family::V4 => pair.client_v4(),
        Family::V6 => pair.client_v6(),
    };
    let ports: Vec<u16> = (0..N as u16).map(|i| 42_000 + i * 2).collect();
    let tracer = trace_netns(pair.server_inode())?;
    let before = netstat(srv_ns)?;
    // The server's TIME-WAITs of these 4-tuples.
    connect_all(&pair, srv, N, CloseFirst::Server, Some(&ports))?;
    let held = tcp_sockets(srv_ns)?
        .iter()
        .filter(|e| e.timewait && ports.contains(&e.remote.port()))
        .count();
    ensure!(
        held == N,
        "sanity: the server holds {held} of {N} TIME-WAITs"
    );
    // Every TIME-WAIT of the run is made by now (the reconnects' connections stay open until
    // the tracer has stopped): counted here, where kernels before TcpExtTW counted creations
    // still show them in the socket count the replacing SYNs then shrink.
    let mid = netstat(srv_ns)?;
    // The same port, now a listener nobody accepts from, its accept queue filled (it holds
    // backlog + 1). A backlog of at least N: the retransmits' request sockets must fit, or
    // the kernel answers them with SYN cookies, which make no request socket (and none at
    // all: they are off here, a full SYN queue drops the SYN instead).
    const BACKLOG: usize = 2 * N;
    sysctl(srv_ns, "net.ipv4.tcp_syncookies", "0")?;
    drop(server);
    let listener = try_in_netns(srv_ns, || -> Result<_> {
        let fd = sys::tcp_socket(&srv)?;
        sys::set_reuseaddr(&fd)?;
        sys::bind(&fd, &srv).with_context(|| format!("bind {srv}"))?;
        sys::listen(&fd, BACKLOG as i32)?;
        Ok(sys::into_listener(fd))
    })??;
    let fillers = try_in_netns(cli_ns, || {
        (0..=BACKLOG)
            .map(|_| TcpStream::connect_timeout(&srv, IO_TIMEOUT))
            .collect::<std::io::Result<Vec<_>>>()
    })??;
    let overflows_before = netstat(srv_ns)?;
    // Each reconnect's first SYN kills its TIME-WAIT and is dropped; its retransmit (1 s
    // on) gets in once the queue is drained.
    let reconnects: Vec<_> = ports
        .iter()
        .map(|&port| {
            let ns = cli_ns.to_owned();
            thread::spawn(move || {
                let _pinned = PinnedToCpu::first_allowed()?;
                try_in_netns(&ns, || -> Result<TcpStream> {
                    let local = SocketAddr::new(client_ip, port);
                    let fd = sys::tcp_socket(&local)?;
                    sys::set_reuseaddr(&fd)?;
                    sys::bind(&fd, &local)?;
                    sys::set_timeouts(&fd, Duration::from_secs(8))?;
                    sys::connect(&fd, &srv).with_context(|| format!("connect from {local}"))?;
                    Ok(sys::into_stream(fd))
                })?
            })
        })
        .collect();
    // Each first SYN dropped (well before the retransmits, 1 s on).
    let deadline = Instant::now() + Duration::from_millis(900);
    let dropped = loop {
        let n = delta(
            &overflows_before,
            &netstat(srv_ns)?,
            "TcpExtListenOverflows",
        );
        if n >= N as u64 || Instant::now() > deadline {
            break n;
        }
        thread::sleep(Duration::from_millis(20));
    };
    // Drained: the fillers and every reconnect, as they come.
    listener.set_nonblocking(true)?;
    let mut accepted = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    while accepted.len() < BACKLOG + 1 + N && Instant::now() < deadline {
        match listener.accept() {
            Ok((s, _)) => accepted.push(s),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                thread::sleep(Duration::from_millis(20))
            }
            Err(e) => return Err(e.into()),
        }
    }
    let streams: Vec<TcpStream> = reconnects
        .into_iter()
        .map(|t| t.join().expect("reconnect thread"))
        .collect::<Result<_>>()?;
    thread::sleep(SETTLE);
    let after = netstat(srv_ns)?;
    let cause = segment_kill_cause(&tracer.stderr_text(), "replaced_by_syn");
    let events = stop(tracer)?;
    drop((streams, accepted, fillers, listener));

    let inode = pair.server_inode();
    ensure!(
        dropped >= N as u64,
        "sanity: each reconnect's first SYN was dropped (ListenOverflows +{dropped})"
    );
    if tw_counted_at_creation() {
        assert_eq!(
            tw_created(&mid, &after),
            0,
            "sanity: no TIME-WAIT after the first round"
        );
    }
    assert_eq!(
        of(&events, "tw_enter", inode).len() as u64,
        tw_created(&before, &mid),
        "tw_enter vs the kernel's TIME-WAITs"
    );
    let told: Vec<&Value> = (events.iter())
        .filter(|e| e["netns"] == inode && e["type"] != "tw_enter")
        .collect();
    assert_eq!(
        exits_by_cause(&events, inode),
        BTreeMap::from([(cause.to_owned(), N as u64)]),
        "exits by cause: {told:#?}"
    );
    for e in of(&events, "tw_exit", inode) {
        assert!(ports.contains(&addr(e, "remote").port()), "{e}");
        assert!(e["lifetime_ms"].as_f64().is_some(), "entry seen: {e}");
    }
    // Each replaced TIME-WAIT took its SYN by timestamp (the SYN's TSval is newer): one
    // verdict per port, where the cause is known.
    if cause == "replaced_by_syn" {
        let mut verdicts: Vec<(u16, String)> = of(&events, "tw_syn", inode)
            .iter()
            .map(|e| (addr(e, "remote").port(), e["verdict"].to_string()))
            .collect();
        verdicts.sort();
        let expected: Vec<(u16, String)> = (ports.iter())
            .map(|&p| (p, "\"accepted_by_timestamp\"".to_owned()))
            .collect();
        assert_eq!(verdicts, expected, "tw_syn verdicts: {told:#?}");
    }
    Ok(())
}

#[test]
fn replaced_while_the_accept_queue_is_full_v4() -> Result<()> {
    rerun_if_skipped(|| full_queue("aqf4", Family::V4))
}

#[test]
fn replaced_while_the_accept_queue_is_full_v6() -> Result<()> {
    rerun_if_skipped(|| full_queue("aqf6", Family::V6))
}
