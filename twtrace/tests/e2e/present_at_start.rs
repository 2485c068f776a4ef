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

/// --port/--ip apply before --max-live-tw when the kernel's sockets are read: TIME-WAITs they
/// leave out spend none of it. A namespace holds exactly --max-live-tw TIME-WAITs on one
/// server port and more on another; traced on the first port, all of its TIME-WAITs count as
/// live (read without the filter first, the other port's took their room: LIVE fell short,
/// and a re-read after lost events replaced a right LIVE with that short one).
#[test]
fn the_live_limit_is_spent_on_filtered_timewaits_alone() -> Result<()> {
    rerun_if_skipped(|| {
        const LIMIT: usize = 1024; // --max-live-tw's least
        const OTHERS: usize = 200;
        let pair = NetnsPair::new("plim")?;
        let (wanted, server) = serve(&pair, Family::V4)?;
        let (other, other_server) = serve(&pair, Family::V4)?;
        // Client ports of the test's choosing: a port the kernel picked twice toward one
        // server would have its SYN replace the first TIME-WAIT. None is a server's port (the
        // kernel picked those): `--port` matches either side, and another port's TIME-WAIT from
        // a client port equal to the wanted server's would match too.
        let servers = [wanted.port(), other.port()];
        let free = |from: u16, n: usize| -> Vec<u16> {
            (from..).filter(|p| !servers.contains(p)).take(n).collect()
        };
        let ports = free(44_000, LIMIT);
        let other_ports = free(46_000, OTHERS);
        connect_all(&pair, wanted, LIMIT, CloseFirst::Server, Some(&ports))?;
        connect_all(&pair, other, OTHERS, CloseFirst::Server, Some(&other_ports))?;
        let on = |port: u16| -> Result<usize> {
            Ok((tcp_sockets(pair.server_ns())?.iter())
                .filter(|e| e.timewait && e.local.port() == port)
                .count())
        };
        let (kernel_wanted, kernel_other) = (on(wanted.port())?, on(other.port())?);
        assert_eq!(
            (kernel_wanted, kernel_other),
            (LIMIT, OTHERS),
            "sanity: the server holds every 4-tuple"
        );

        let ns = pair.server_inode().to_string();
        let port = wanted.port().to_string();
        let limit = LIMIT.to_string();
        let args = [
            "--netns",
            &ns,
            "--port",
            &port,
            "--max-live-tw",
            &limit,
            "--interval",
            "1",
        ];
        let mut table = Tracer::spawn_default(&args)?;
        table.wait_ready(READY)?;
        let said = table.wait_stderr("already present", Duration::from_secs(60))?;
        let all = LIMIT + OTHERS;
        assert!(
            said.contains(&format!(
                "twtrace: {LIMIT} TIME-WAITs matching --port/--ip already present ({all} in all) \
                 in 1 network namespace"
            )),
            "{said}"
        );
        table.wait_stdout_text("(present at start ", Duration::from_secs(30))?;
        let stderr = table.stderr_reader();
        let lines = table.stop_text()?;
        drop((server, other_server));
        let stderr = stderr();
        assert!(!stderr.contains("than --max-live-tw"), "{stderr}");
        let last = Totals::last(&lines)?;
        assert_eq!(last.field("live")?, kernel_wanted as u64, "{last}");
        assert!(
            last.0
                .contains(&format!("(present at start {kernel_wanted})")),
            "{last}"
        );
        Ok(())
    })
}
