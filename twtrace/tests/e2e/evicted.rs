//! A remote IP evicted from the live table (more IPs than `--capacity`) and made again counts
//! only its own TIME-WAITs.

use super::*;
use support::{ConnectOptions, connect_many_opts, netns::VETH};

/// More client addresses than `--capacity` (16, the least) each leave a server TIME-WAIT, so
/// the first address's row is evicted while its TIME-WAIT lives on; that address then leaves a
/// second TIME-WAIT (its row made again) and, from its first port, a SYN that replaces the
/// first. That exit belongs to the row's earlier life: the row made again shows its one
/// TIME-WAIT alive and no exit (not `LIVE 0` and a SYN exit it never saw begin), each row's
/// LIVE equals the kernel's TIME-WAITs from that address, and the totals keep every count.
#[test]
fn a_row_made_again_counts_only_its_own_time_waits() -> Result<()> {
    rerun_if_skipped(|| {
        const CAPACITY: usize = 16;
        const OTHERS: usize = CAPACITY + 4;
        let pair = NetnsPair::new("evr")?;
        let (srv, cli) = (pair.server_ns(), pair.client_ns());
        let (addr, _server) = serve(&pair, Family::V4)?;
        let ns = pair.server_inode().to_string();
        let capacity = CAPACITY.to_string();
        let args = [
            "--netns",
            &ns,
            "--interval",
            "0.2",
            "--capacity",
            &capacity,
            "--top",
            "40",
        ];
        let mut table = Tracer::spawn_default(&args)?;
        table.wait_ready(READY)?;
        let before = netstat(srv)?;
        let first = pair.client_v4();
        let connect = |ip: IpAddr, port: u16, close: CloseFirst| -> Result<()> {
            let opts = ConnectOptions {
                local_ip: Some(ip),
                ..ConnectOptions::default()
            };
            let out = connect_many_opts(cli, addr, 1, close, Some(&[port]), &opts)?;
            ensure!(out[0].is_ok(), "sanity: {ip}:{port}: {:?}", out[0]);
            Ok(())
        };
        connect(first, 43_000, CloseFirst::Server)?;
        // Addresses of the pair's /24 that nothing else uses.
        let IpAddr::V4(base) = first else {
            unreachable!("an IPv4 address")
        };
        for k in 0..OTHERS {
            let [a, b, c, _] = base.octets();
            let ip = IpAddr::V4(std::net::Ipv4Addr::new(a, b, c, 100 + k as u8));
            support::netns::ip(&["-n", cli, "addr", "add", &format!("{ip}/24"), "dev", VETH])?;
            connect(ip, 42_000 + k as u16, CloseFirst::Server)?;
        }
        // The first address again: its row is made anew by this TIME-WAIT ...
        connect(first, 43_001, CloseFirst::Server)?;
        // ... and this SYN, from its first port, replaces its first TIME-WAIT (the client
        // closes first: no new server TIME-WAIT).
        connect(first, 43_000, CloseFirst::Client)?;
        let made = (1 + OTHERS + 1) as u64;
        let ended = 1;
        let kernel = timewaits_by_remote(srv)?;
        ensure!(
            kernel.values().sum::<u64>() == made - ended,
            "sanity: {kernel:?}"
        );
        table.wait_stdout_text(&format!("tw_created {made} "), Duration::from_secs(30))?;
        thread::sleep(SETTLE);
        let lines = table.stop_text()?;
        let last = Totals::last(&lines)?;
        if tw_counted_at_creation() {
            assert_eq!(
                last.field("tw_created")?,
                delta(&before, &netstat(srv)?, "TcpExtTW"),
                "{last}"
            );
        }
        assert_eq!(last.field("live")?, made - ended, "{last}");
        let frame = &lines[lines
            .iter()
            .rposition(|l| l.starts_with("twtrace "))
            .context("a table")?..];
        let rows = remote_ip_rows(frame)?;
        assert_eq!(rows.len(), CAPACITY, "{frame:#?}");
        let row = rows
            .get(&first)
            .with_context(|| format!("{first} in {frame:#?}"))?;
        // CREATED, LIVE, and the exits by cause (EXPIRED .. UNKNOWN).
        assert_eq!(row[..2], [1, kernel[&first]], "{first}: {frame:#?}");
        assert_eq!(row[2..8], [0; 6], "{first}: no exit of its own: {frame:#?}");
        for (ip, cells) in &rows {
            assert_eq!(
                cells[1],
                kernel.get(ip).copied().unwrap_or(0),
                "{ip}: {frame:#?}"
            );
        }
        // Every address made a row, the first twice; the table kept CAPACITY of them.
        let evictions = format!("evictions: remote_ip {} ", made as usize - CAPACITY);
        assert!(
            frame.iter().any(|l| l.starts_with(&evictions)),
            "{evictions}: {frame:#?}"
        );
        Ok(())
    })
}

/// The server namespace's TIME-WAIT sockets per remote address.
fn timewaits_by_remote(ns: &str) -> Result<BTreeMap<IpAddr, u64>> {
    let mut by = BTreeMap::new();
    for e in tcp_sockets(ns)? {
        if e.state == TcpState::TimeWait {
            *by.entry(e.remote.ip()).or_default() += 1;
        }
    }
    Ok(by)
}

/// The REMOTE_IP section's rows of one table: the address and its numbers (CREATED, LIVE, the
/// exits by cause, OVERFLOW, EADDRNOTAVAIL), AVG_MS left out.
fn remote_ip_rows(frame: &[String]) -> Result<BTreeMap<IpAddr, Vec<u64>>> {
    let mut lines = frame.iter().skip_while(|l| !l.starts_with("REMOTE_IP"));
    ensure!(lines.next().is_some(), "no REMOTE_IP section: {frame:#?}");
    let mut rows = BTreeMap::new();
    // The capture keeps no blank lines: the next section's head ends this one.
    for l in lines.take_while(|l| !l.is_empty() && !l.starts_with("LOCAL_PORT")) {
        let mut cells = l.split_whitespace();
        let ip: IpAddr = (cells.next().context("an address")?)
            .parse()
            .with_context(|| format!("an address in {l:?}"))?;
        let numbers: Vec<u64> = cells
            .take(10)
            .map(str::parse)
            .collect::<Result<_, _>>()
            .with_context(|| format!("numbers in {l:?}"))?;
        rows.insert(ip, numbers);
    }
    Ok(rows)
}
