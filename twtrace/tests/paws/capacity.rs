//! More source IPs than `--capacity`: the least recent leave the aggregate and the summary
//! file, and stderr says so, with what the file lost against the kernel's count.

use super::*;
use support::{CloseFirst, ConnectOptions, connect_many_opts};

/// One PAWS reject at a TIME-WAIT from the client's address, then one connection from each of
/// `CAPACITY + EXTRA` other addresses of the client (each SYN at the listener a source IP)
/// under `--capacity CAPACITY`: the client's row, the least recent, is evicted with `EXTRA`
/// others. The summary lists the last CAPACITY addresses, without the reject; stderr says so
/// at the first eviction (once) and, at exit, how many were evicted and that the file holds none of
/// the rejects seen, the kernel's PAWS count.
#[test]
fn source_ips_beyond_the_capacity_leave_the_summary_and_are_said() -> Result<()> {
    rerun_if_skipped(|| {
        const CAPACITY: usize = 16;
        const EXTRA: usize = 4;
        let pair = NetnsPair::new("pwcap")?;
        let (srv, cli) = (pair.server_ns(), pair.client_ns());
        let server = Server::start(srv, SocketAddr::new(pair.server_v4(), 5000))?;
        let dir = TempDir::new("cap")?;
        let summary = dir.0.join("summary.json");
        let path = summary.to_string_lossy().into_owned();
        let capacity = CAPACITY.to_string();
        let mut tracer = trace(
            pair.server_inode(),
            &[
                "--capacity",
                &capacity,
                "--summary-json",
                &path,
                "--interval",
                "0.1",
            ],
        )?;
        let said = tracer.stderr_reader();
        let made_from = netstat(srv)?;
        let tw = ServerTimeWait::create(&pair, &server, 41001)?;
        {
            let _block = RstBlock::install(cli)?;
            let mut cap = Capture::start(cli, VETH)?;
            let syn = tw.syn(tw.seq_after(), Some(1000));
            probe(cli, &mut cap, &syn, REPLY_TIMEOUT)?
                .context("the server answers a PAWS reject")?;
        }
        // Addresses of the pair's /24 that nothing else uses.
        let std::net::IpAddr::V4(base) = pair.client_v4() else {
            unreachable!("an IPv4 address")
        };
        let others: Vec<std::net::IpAddr> = (0..CAPACITY + EXTRA)
            .map(|k| {
                let [a, b, c, _] = base.octets();
                std::net::Ipv4Addr::new(a, b, c, 100 + k as u8).into()
            })
            .collect();
        for (k, ip) in others.iter().enumerate() {
            support::netns::ip(&["-n", cli, "addr", "add", &format!("{ip}/24"), "dev", VETH])?;
            let opts = ConnectOptions {
                local_ip: Some(*ip),
                ..ConnectOptions::default()
            };
            let port = [42000 + k as u16];
            let out = connect_many_opts(
                cli,
                server.addr(),
                1,
                CloseFirst::Client,
                Some(&port),
                &opts,
            )?;
            ensure!(
                out[0].is_ok(),
                "sanity: a connection from {ip}: {:?}",
                out[0]
            );
        }
        let after = netstat(srv)?;
        let note = format!(
            "twtrace: note: more than --capacity {CAPACITY} source IPs: the least recent leave \
             the aggregate and {path} (counted; said again at exit)"
        );
        tracer.wait_stderr(&note, Duration::from_secs(10))?;
        let all = stop(tracer)?;
        drop(server);
        let kernel = paws_drops(&made_from, &after);
        assert_eq!(kernel, 1, "sanity: the kernel rejected one SYN");
        assert_eq!(
            rejects_in(&all, pair.server_inode(), tw.client.ip()) as u64,
            kernel,
            "{all:#?}"
        );

        let text = std::fs::read_to_string(&summary)?;
        let rows: Vec<Value> = serde_json::from_str(&text)?;
        let listed: std::collections::BTreeSet<String> = rows
            .iter()
            .map(|r| r["ip"].as_str().unwrap_or("?").to_owned())
            .collect();
        let last: std::collections::BTreeSet<String> =
            others[EXTRA..].iter().map(|ip| ip.to_string()).collect();
        assert_eq!(listed, last, "the most recent {CAPACITY}: {text}");
        let rejects: u64 = rows
            .iter()
            .filter_map(|r| r["rejects_total"].as_u64())
            .sum();
        assert_eq!(rejects, 0, "{text}");

        let stderr = said();
        // Each connection the kernel accepted came from its own address: one source IP each.
        let accepted = delta(&made_from, &after, "TcpPassiveOpens");
        assert_eq!(
            accepted as usize,
            1 + CAPACITY + EXTRA,
            "sanity: a connection from each address"
        );
        let evicted = accepted - CAPACITY as u64;
        let end = format!(
            "twtrace: {evicted} evictions of source IPs (more than --capacity {CAPACITY}): \
             {path} lists the {CAPACITY} most recent, with 0 of the {kernel} PAWS rejects seen"
        );
        let lines: Vec<&str> = stderr.lines().collect();
        assert_eq!(
            (lines.iter()).filter(|l| **l == note).count(),
            1,
            "said once at the first eviction: {stderr}"
        );
        assert!(lines.contains(&end.as_str()), "{end}\n not in:\n{stderr}");
        Ok(())
    })
}
