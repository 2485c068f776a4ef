//! FIN_WAIT2 TIME-WAITs (the server closed, the client has not): reset by data, and present
//! at start-up.

use super::*;

/// A connection to `srv` from the client namespace whose server side is closed while the
/// client's stays open: the server then holds a FIN_WAIT2 TIME-WAIT. Returns the client.
fn fin_wait2_timewait(
    pair: &NetnsPair,
    listener: &TcpListener,
    srv: SocketAddr,
) -> Result<TcpStream> {
    let client = in_netns(pair.client_ns(), || {
        TcpStream::connect_timeout(&srv, IO_TIMEOUT)
    })
    .context("connect")?;
    let cli = client.local_addr()?;
    let (accepted, _) = listener.accept()?;
    // Half-close first and close once the client's ACK is in: the orphan then becomes a
    // FIN_WAIT2 TIME-WAIT at close() itself, never racing the ACK into the keepalive path.
    accepted.shutdown(Shutdown::Write)?;
    // The client's ACK of that FIN may be a delayed one, later still in a busy guest.
    wait_until(
        "the server is in FIN_WAIT2",
        Duration::from_secs(15),
        || has_socket(pair.server_ns(), srv, cli, TcpState::FinWait2),
    )?;
    drop(accepted);
    Ok(client)
}

/// Data reaching a FIN_WAIT2 TIME-WAIT (the server closed its half, the client has not and
/// writes afterwards): the kernel answers with a reset and kills the socket from
/// tcp_v{4,6}_rcv (TCP_TW_RST), a kill whose call chain looks like a SYN replacement's. Every
/// such exit is `killed_by_rst`, one per reset the server namespace sent (Tcp OutRsts).
fn data_after_close_resets(tag: &str, f: Family) -> Result<()> {
    let pair = NetnsPair::new(tag)?;
    let srv_ns = pair.server_ns();
    let ip = server_ip(&pair, f);
    let (srv, listener) = listen_free(srv_ns, ip)?;
    let tracer = trace_netns(pair.server_inode())?;
    let before = netstat(srv_ns)?;
    let mut client = fin_wait2_timewait(&pair, &listener, srv)?;
    let cli = client.local_addr()?;
    // The timewait sock exists from close() on; on kernels before 5.18 only the socket table
    // records its creation (tw_created), so look before the reset removes it.
    let created = tw_created(&before, &netstat(srv_ns)?);
    client.write_all(b"late data")?;
    wait_until("the reset removed the TIME-WAIT", IO_TIMEOUT, || {
        Ok(!has_socket(srv_ns, srv, cli, TcpState::FinWait2)?)
    })?;
    let after = netstat(srv_ns)?;
    let cause = segment_kill_cause(&tracer.stderr_text(), "killed_by_rst");
    let events = stop(tracer)?;

    let inode = pair.server_inode();
    let mine = |ty: &str| -> Vec<&Value> {
        of(&events, ty, inode)
            .into_iter()
            .filter(|e| addr(e, "local") == srv && addr(e, "remote") == cli)
            .collect()
    };
    assert_eq!(created, 1, "sanity: one TIME-WAIT");
    assert_eq!(mine("tw_enter").len(), 1, "{events:#?}");
    let resets = delta(&before, &after, "TcpOutRsts");
    assert_eq!(resets, 1, "sanity: the server sent one reset");
    let exits = mine("tw_exit");
    assert_eq!(
        exits.iter().filter(|e| e["cause"] == cause).count() as u64,
        resets,
        "{exits:#?}"
    );
    assert_eq!(exits.len(), 1, "{exits:#?}");
    Ok(())
}

#[test]
fn data_after_close_resets_fin_wait2_timewait_v4() -> Result<()> {
    rerun_if_skipped(|| data_after_close_resets("rst4", Family::V4))
}

#[test]
fn data_after_close_resets_fin_wait2_timewait_v6() -> Result<()> {
    rerun_if_skipped(|| data_after_close_resets("rst6", Family::V6))
}

/// TIME-WAITs standing in for an orphaned FIN_WAIT2 (the server closed, the client has not)
/// are read at start-up too: the kernel lists a timewait socket under its substate, so they
/// must be asked for as FIN_WAIT2. `tw_present` names exactly the namespace's FIN_WAIT2
/// timewait sockets, with that substate.
#[test]
fn fin_wait2_timewaits_present_at_start() -> Result<()> {
    rerun_if_skipped(|| {
        const N: usize = 4;
        let pair = NetnsPair::new("pfw2")?;
        let srv_ns = pair.server_ns();
        let ip = server_ip(&pair, Family::V4);
        let (srv, listener) = listen_free(srv_ns, ip)?;
        // The clients stay open: their peers stay FIN_WAIT2 TIME-WAITs for tcp_fin_timeout.
        let mut clients = Vec::new();
        for _ in 0..N {
            clients.push(fin_wait2_timewait(&pair, &listener, srv)?);
        }
        let at_start: BTreeSet<(SocketAddr, SocketAddr)> = tcp_sockets(srv_ns)?
            .into_iter()
            .filter(|e| e.timewait && e.state == TcpState::FinWait2)
            .map(|e| (e.local, e.remote))
            .collect();
        assert_eq!(at_start.len(), N, "sanity: {N} FIN_WAIT2 TIME-WAITs");

        let tracer = trace_netns(pair.server_inode())?;
        let events = stop(tracer)?;
        drop(clients);
        let present = of(&events, "tw_present", pair.server_inode());
        let seen: BTreeSet<(SocketAddr, SocketAddr)> = present
            .iter()
            .map(|e| (addr(e, "local"), addr(e, "remote")))
            .collect();
        assert_eq!(seen, at_start, "tw_present = the FIN_WAIT2 TIME-WAITs");
        assert_eq!(present.len(), N, "each once");
        for e in &present {
            assert_eq!(e["substate"], "FIN_WAIT2", "{e}");
        }
        Ok(())
    })
}
