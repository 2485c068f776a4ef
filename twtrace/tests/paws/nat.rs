//! A real NAT: clients with disagreeing clocks behind one address.

use super::*;

/// Two clients behind one NAT IP, the second with an older clock, reuse the same public
/// 4-tuple: the server rejects the second one's SYN. twtrace reports exactly the rejects the
/// server namespace counted, for the NAT IP, and sees at least two clocks behind it. The
/// controls give no reject: B newer (still two clocks behind the IP, and twtrace says so),
/// and one client only (one clock).
#[test]
fn nat_clients_with_disagreeing_clocks() -> Result<()> {
    rerun_if_skipped(|| {
        let lab = NatLab::new("pwnat", 2)?;
        let dir = TempDir::new("paws")?;
        for (order, expect_rejects, two_clocks) in [
            (TsOrder::BOlder, true, true),
            (TsOrder::BNewer, false, true),
            (TsOrder::SameClient, false, false),
        ] {
            let summary = dir.0.join(format!("{order:?}.json"));
            let inode = support::netns_inode(lab.server_ns())?;
            let summary_arg = summary.to_string_lossy().into_owned();
            let tracer = trace(
                inode,
                &["--summary-json", &summary_arg, "--alert-rejects", "1"],
            )?;
            let report = lab.run_scenario(&Scenario {
                order,
                ..Scenario::default()
            })?;
            let said = tracer.stderr_reader();
            let events = stop(tracer)?;

            let ip = lab.public_ip();
            assert_eq!(report.paws, report.expected_paws, "sanity: {report:#?}");
            assert_eq!(report.paws > 0, expect_rejects, "sanity: {report:#?}");
            // One alert (--alert-rejects 1; --alert-every 60 s outlasts the run) exactly where
            // the server rejected, naming the IP, its rejects so far, its clocks and a reading.
            let said = said();
            let alerts: Vec<&str> = (said.lines())
                .filter(|l| l.starts_with("twtrace: ALERT"))
                .collect();
            if expect_rejects {
                assert_eq!(alerts.len(), 1, "{order:?}: {said}");
                let rest = alerts[0]
                    .strip_prefix(&format!("twtrace: ALERT {ip}: "))
                    .unwrap_or_else(|| panic!("{order:?}: another IP alerted: {said}"));
                let (n, rest) = rest.split_once(' ').expect("a count first");
                let n: u64 = n.parse().expect("a number of rejects");
                assert!((1..=report.paws).contains(&n), "{order:?}: {said}");
                let word = if n == 1 { "reject" } else { "rejects" };
                assert!(
                    rest.starts_with(&format!("PAWS {word} at TIME-WAIT (")),
                    "{said}"
                );
                assert!(
                    rest.contains(" reached a listener), ") && rest.contains(" (confidence "),
                    "{said}"
                );
                assert!(rest.contains(" clock"), "{said}");
                assert!(rest.contains("Reading: "), "{said}");
            } else {
                assert!(alerts.is_empty(), "{order:?}: no reject, no alert: {said}");
            }
            // The counter window holds B's attempt alone: TIME-WAIT rejects. A's own connection,
            // traced but outside that window, may have an established-path reject of its own (a
            // reordered ACK; seen once in the 6.1 VM, where such a drop names no namespace).
            let rejects: Vec<&Value> = from(&events, "paws_reject", ip)
                .into_iter()
                .filter(|r| r["path"] == "timewait")
                .collect();
            assert_eq!(
                rejects.len() as u64,
                report.paws,
                "{order:?}: paws_reject vs the counter: {rejects:#?}\n{report:#?}"
            );
            for r in &rejects {
                assert_eq!(r["ts_recent"], report.ts_recent, "{r}");
            }
            if let Some(first) = rejects.first() {
                assert_eq!(first["regression"], report.regression, "{first}");
            }
            let row = summary_row(&summary, ip)?;
            assert_eq!(row["rejects"]["timewait"], report.paws, "{order:?}: {row}");
            let clocks = row["clocks"].as_u64().unwrap_or(0);
            if two_clocks {
                assert!(
                    clocks >= 2,
                    "{order:?}: at least two clocks behind the NAT: {row}"
                );
                // Where each connection has its own offset (per-4-tuple), lines may outnumber
                // hosts; the bounds must still hold the truth.
                let (low, high) = (row["clocks_low"].as_u64(), row["clocks_high"].as_u64());
                assert!(
                    low.is_some_and(|l| l <= 2) && high.is_some_and(|h| h >= 2),
                    "{order:?}: two clocks within [clocks_low, clocks_high]: {row}"
                );
                assert_eq!(row["nat_suspected"], true, "{row}");
            } else {
                assert_eq!(clocks, 1, "{order:?}: one clock: {row}");
                assert_eq!(row["nat_suspected"], false, "{row}");
            }
        }
        Ok(())
    })
}
