//! connect() failing with EADDRNOTAVAIL, counted per destination.

use super::*;

/// A pair whose client has 4 ephemeral ports and no TIME-WAIT reuse, a server, and a tracer
/// of the client's namespace: of [`CONNECTS`] connects to the server, the first 4 take the
/// ports into TIME-WAIT and each later one fails with EADDRNOTAVAIL.
struct FewPorts {
    pair: NetnsPair,
    srv: SocketAddr,
    server: Server,
    inode: u32,
    tracer: Tracer,
}

const CONNECTS: usize = 10;

fn few_ports(tag: &str, f: Family) -> Result<FewPorts> {
    let pair = NetnsPair::new(tag)?;
    sysctl(
        pair.client_ns(),
        "net.ipv4.ip_local_port_range",
        "40000 40003",
    )?;
    sysctl(pair.client_ns(), "net.ipv4.tcp_tw_reuse", "0")?;
    let (srv, server) = serve(&pair, f)?;
    let inode = pair.client_inode();
    let tracer = trace_netns(inode)?;
    Ok(FewPorts {
        pair,
        srv,
        server,
        inode,
        tracer,
    })
}

/// Every EADDRNOTAVAIL the client saw is reported once, toward `srv`, from the client's source
/// address `client` with port 0 (none could be bound).
fn assert_failures_reported(
    events: &[Value],
    inode: u32,
    outcomes: &[support::ConnOutcome],
    (client, srv): (IpAddr, SocketAddr),
    during: &str,
) {
    let reported = of(events, "connect_eaddrnotavail", inode);
    assert_eq!(
        reported.len(),
        port_range_ran_out(outcomes),
        "connect_eaddrnotavail vs failures the client saw{during}"
    );
    for e in reported {
        assert_eq!(addr(e, "remote"), srv, "{e}");
        assert_eq!(addr(e, "local"), SocketAddr::new(client, 0), "{e}");
    }
}

/// The EADDRNOTAVAIL failures among `outcomes` of [`FewPorts`]' connects: all but 4.
fn port_range_ran_out(outcomes: &[support::ConnOutcome]) -> usize {
    let failures = (outcomes.iter())
        .filter(|o| o.errno() == Some(libc::EADDRNOTAVAIL))
        .count();
    assert_eq!(
        failures,
        CONNECTS - 4,
        "sanity: the port range ran out: {outcomes:?}"
    );
    failures
}

/// A narrow ephemeral range on the client: once its ports sit in TIME-WAIT, connect() fails
/// with EADDRNOTAVAIL; twtrace reports each failure, with its destination.
fn port_exhaustion(tag: &str, f: Family) -> Result<()> {
    let FewPorts {
        pair,
        srv,
        server,
        inode,
        tracer,
    } = few_ports(tag, f)?;
    // Connects refused by a reset (nothing listens there) fail too, but not for want of a
    // port: no connect_eaddrnotavail (they took a port and sent a SYN before failing).
    let closed = SocketAddr::new(srv.ip(), srv.port() + 1);
    let refused = connect_many(pair.client_ns(), closed, 3, CloseFirst::Client, None)?;
    assert!(
        refused
            .iter()
            .all(|o| o.errno() == Some(libc::ECONNREFUSED)),
        "sanity: refused: {refused:?}"
    );
    let outcomes = connect_many(pair.client_ns(), srv, CONNECTS, CloseFirst::Client, None)?;
    let events = stop(tracer)?;
    drop(server);

    let ends = (client_ip(&pair, f), srv);
    assert_failures_reported(&events, inode, &outcomes, ends, "");
    Ok(())
}

/// Connect failures are counted while many other connects wait in the kernel, on every route.
/// More calls wait than a kretprobe keeps records for (by default max(10, 2 per possible
/// CPU), each call in flight holding one): a route that took connect()'s result from a
/// kretprobe (the kprobe route did until 2026-12) would miss every failure here, before any
/// program ran. Alone: the waiting connects would also starve other tracers' kretprobes.
#[test]
fn eaddrnotavail_beside_waiting_connects() -> Result<()> {
    rerun_alone_if_skipped(|| {
        let FewPorts {
            pair,
            srv,
            server,
            inode,
            tracer,
        } = few_ports("pexw", Family::V4)?;
        let announced = tracer.stderr_text();
        // From the server's namespace (its ports are not the ones running out), to an
        // address on the link nobody has; more than any kretprobe keeps records for.
        let IpAddr::V4(ip) = pair.server_v4() else {
            unreachable!("server_v4 is IPv4")
        };
        let nobody = IpAddr::V4(std::net::Ipv4Addr::from(u32::from(ip) + 2));
        let records = kretprobe_records()?;
        ensure!(
            records <= 1024,
            "a kretprobe keeps {records} records here: too many calls to keep waiting"
        );
        let n = records + 4;
        let waiting = HangingConnects::start(pair.server_ns(), nobody, n, Duration::from_secs(10))?;
        let outcomes = connect_many(pair.client_ns(), srv, CONNECTS, CloseFirst::Client, None)?;
        let still = waiting.waiting()?;
        let ended = waiting.join()?;
        let events = stop(tracer)?;
        drop(server);

        ensure!(
            still == n,
            "sanity: {n} connects waited throughout ({still} at the end)"
        );
        ensure!(
            ended.iter().all(|&e| e == libc::EINPROGRESS),
            "sanity: they waited until SO_SNDTIMEO: {ended:?}"
        );
        let family = (announced.split_whitespace())
            .find_map(|w| w.strip_prefix("connect_eaddrnotavail="))
            .context("connect_eaddrnotavail's hook announced")?;
        let during = format!(" on {family}, {n} connects waiting");
        let ends = (pair.client_v4(), srv);
        assert_failures_reported(&events, inode, &outcomes, ends, &during);
        Ok(())
    })
}

/// Calls in flight a kretprobe keeps records for (the kernel's default when none is asked
/// for, as for aya's): max(10, 2 per possible CPU); some kernels keep fewer (one per possible
/// CPU without kernel preemption), never more.
fn kretprobe_records() -> Result<usize> {
    let cpus = aya::util::nr_cpus().map_err(|(path, e)| anyhow::anyhow!("reading {path}: {e}"))?;
    Ok((2 * cpus).max(10))
}

#[test]
fn eaddrnotavail_v4() -> Result<()> {
    rerun_if_skipped(|| port_exhaustion("pex4", Family::V4))
}

#[test]
fn eaddrnotavail_v6() -> Result<()> {
    rerun_if_skipped(|| port_exhaustion("pex6", Family::V6))
}
