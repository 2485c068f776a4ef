//! TIME-WAITs already there when twtrace starts.

use super::*;

/// TIME-WAITs already there when twtrace starts are read from the kernel's own socket table
/// and count as live from the first table: `tw_present` events name exactly the namespace's
/// TIME-WAIT sockets, and after half of them are replaced by new connections from the same
/// ports, LIVE in the final table equals the namespace's TIME-WAIT sockets again, exactly
/// (without the start-up read it would count only the new ones).
#[test]
fn timewaits_present_at_start_count_as_live() -> Result<()> {
    rerun_if_skipped(|| {
        const PORTS: usize = 12;
        let pair = NetnsPair::new("pres")?;
        let (srv, server) = serve(&pair, Family::V4)?;
        let ports: Vec<u16> = (0..PORTS as u16).map(|i| 42_000 + i * 2).collect();
        connect_all(&pair, srv, PORTS, CloseFirst::Server, Some(&ports))?;
        let at_start: BTreeSet<(SocketAddr, SocketAddr)> = tcp_sockets(pair.server_ns())?
            .into_iter()
            .filter(|e| e.timewait)
            .map(|e| (e.local, e.remote))
            .collect();
        assert_eq!(
            at_start.len(),
            PORTS,
            "sanity: the server holds every 4-tuple"
        );

        let ns = pair.server_inode().to_string();
        let events = trace_netns(pair.server_inode())?;
        let mut table = Tracer::spawn_default(&["--netns", &ns, "--interval", "1"])?;
        table.wait_ready(READY)?;
        let said = table.wait_stderr("already present", Duration::from_secs(30))?;
        assert!(
            said.contains(&format!(
                "twtrace: {PORTS} TIME-WAITs already present in 1 "
            )),
            "{said}"
        );
        let before = netstat(pair.server_ns())?;
        connect_all(
            &pair,
            srv,
            PORTS / 2,
            CloseFirst::Server,
            Some(&ports[..PORTS / 2]),
        )?;
        let after = netstat(pair.server_ns())?;
        let live_now = support::proc::timewait_count(pair.server_ns())?;
        thread::sleep(SETTLE);
        let lines = table.stop_text()?;
        let events = stop(events)?;
        drop(server);

        let inode = pair.server_inode();
        let present: BTreeSet<(SocketAddr, SocketAddr)> = of(&events, "tw_present", inode)
            .iter()
            .map(|e| (addr(e, "local"), addr(e, "remote")))
            .collect();
        assert_eq!(
            present, at_start,
            "tw_present = the kernel's TIME-WAIT sockets"
        );
        assert_eq!(of(&events, "tw_present", inode).len(), PORTS, "each once");
        let last = Totals::last(&lines)?;
        // Before 5.18 TcpExtTW counts expiries (none happen here) and the socket table holds as
        // many TIME-WAITs as before (each new one replaced an old one on its 4-tuple), so the
        // kernel's count of the new ones is the connections it accepted, each closed by the
        // server into TIME-WAIT (the socket table, checked against LIVE below, confirms it).
        let created = if tw_counted_at_creation() {
            tw_created(&before, &after)
        } else {
            delta(&before, &after, "TcpPassiveOpens")
        };
        assert_eq!(last.field("tw_created")?, created, "{last}");
        assert_eq!(last.field("live")?, live_now, "{last}");
        assert!(
            last.0.contains(&format!("(present at start {PORTS})")),
            "{last}"
        );
        Ok(())
    })
}
