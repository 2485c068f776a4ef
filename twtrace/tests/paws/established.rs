//! PAWS on established connections: in-window data and pure ACKs with an old TSval.

use super::*;

/// A quiescent established connection in a fresh namespace pair (server side traced), and a
/// capture on the client's side, for crafting in-window segments at the server.
fn established_lab(tag: &str, v6: bool) -> Result<(NetnsPair, Established, Capture, Tracer)> {
    let pair = NetnsPair::new(tag)?;
    let est = Established::open(&pair, SocketAddr::new(server_ip(&pair, v6), 0))?;
    let cap = Capture::start(pair.client_ns(), VETH)?;
    let tracer = trace(pair.server_inode(), &[])?;
    Ok((pair, est, cap, tracer))
}

/// In-window data with an old TSval on an established connection: one `established` reject
/// per segment, as TcpExtPAWSEstab counts, with the exact regression.
fn established_old_data_is_rejected(tag: &str, v6: bool) -> Result<()> {
    let (pair, est, mut cap, tracer) = established_lab(tag, v6)?;
    let (srv, cli) = (pair.server_ns(), pair.client_ns());
    let announced = tracer.stderr_text();
    let before = netstat(srv)?;
    for regression in [1000, 2] {
        let seg = est.data_segment(regression, b"x");
        probe(cli, &mut cap, &seg, REPLY_TIMEOUT)?.context("dupack")?;
    }
    let after = netstat(srv)?;
    let events = stop(tracer)?;

    let kernel = delta(&before, &after, "TcpExtPAWSEstab");
    assert_eq!(kernel, 2, "sanity");
    let rejects = from(&events, "paws_reject", client_ip(&pair, v6));
    // Without the PAWS drop reason (kernels before 5.17/5.18) no drop reason names these
    // drops: twtrace must say so when it starts. Whether the kernel has the reason is checked
    // here independently of twtrace. Function probes then still see the established path
    // (tcp_oow_rate_limited's mib index) and must count it exactly; a hook that sees only the
    // TIME-WAIT path must report none rather than guess.
    let timewait_only = established_unseen(&announced);
    let by_function_probe = announced.contains("established and syn_recv paths only");
    assert_eq!(
        timewait_only || by_function_probe,
        !kernel_btf_has_name("SKB_DROP_REASON_TCP_RFC7323_PAWS"),
        "partial PAWS coverage announced exactly when the kernel lacks the reason:\n{announced}"
    );
    if timewait_only {
        assert_eq!(rejects.len(), 0, "{rejects:?}");
        return Ok(());
    }
    assert_eq!(rejects.len() as u64, kernel);
    // ts_recent (hence the regression) is readable where kfree_skb names the dropping socket
    // (rx_sk, 6.11+) or a function probe hands over the socket; otherwise twtrace reports the
    // TSval and null, never a guess.
    if ts_recent_readable(&announced)? {
        let regs: Vec<i64> = rejects
            .iter()
            .filter_map(|r| r["regression"].as_i64())
            .collect();
        assert_eq!(regs, [1000, 2]);
    } else {
        assert!(
            rejects
                .iter()
                .all(|r| r["regression"].is_null() && r["tsval"].is_u64())
        );
    }
    assert!(rejects.iter().all(|r| r["path"] == "established"));
    Ok(())
}

#[test]
fn established_old_data_is_rejected_v4() -> Result<()> {
    rerun_if_skipped(|| established_old_data_is_rejected("pwest4", false))
}

#[test]
fn established_old_data_is_rejected_v6() -> Result<()> {
    rerun_if_skipped(|| established_old_data_is_rejected("pwest6", true))
}

/// Whether the tracer announced that it sees PAWS rejects at TIME-WAIT sockets only, checked
/// against what the kernel and the hook family allow, independently of twtrace: exactly
/// where the kernel has no TCP_RFC7323_PAWS drop reason and no function probe stands in
/// (fentry and kprobe see the established path through `tcp_oow_rate_limited`).
fn established_unseen(announced: &str) -> bool {
    let timewait_only = announced.contains("timewait path only");
    let family = hooks_of(announced, "paws_reject");
    let by_function = ["fentry", "kprobe"].contains(&family.as_str());
    assert_eq!(
        timewait_only,
        !kernel_btf_has_name("SKB_DROP_REASON_TCP_RFC7323_PAWS") && !by_function,
        "\"timewait path only\" announced exactly where no reason or function sees the \
         established path ({family}):\n{announced}"
    );
    timewait_only
}

/// Whether an established-path reject carries ts_recent: where kfree_skb names the dropping
/// socket (rx_sk, 6.11+) or a function probe hands it over; otherwise twtrace reports the
/// TSval and null, never a guess.
fn ts_recent_readable(announced: &str) -> Result<bool> {
    let has_rx_sk = std::fs::read_to_string("/sys/kernel/tracing/events/skb/kfree_skb/format")
        .context("tracefs")?
        .contains("rx_sk");
    Ok(has_rx_sk || announced.contains("established and syn_recv paths only"))
}

/// Pure ACKs with an old TSval on an established connection. 1000 ticks back, a duplicate
/// ACK is a PAWS reject (TcpExtPAWSEstab, drop reason TCP_RFC7323_PAWS); 2 ticks back it may
/// pass as a disordered ACK (RFC 7323 5.3: within the replay window), which the kernel does
/// not count and twtrace must not report; a pure ACK whose sequence is before rcv_nxt, 1000
/// ticks back, is an "old ACK" (reason TCP_RFC7323_PAWS_ACK and TcpExtPAWSOldAck, 6.14+;
/// PAWSEstab before). twtrace reports it as such (`old_ack`), apart from the rejects, and its
/// counts equal the kernel's either way.
#[test]
fn established_old_pure_acks_are_rejected() -> Result<()> {
    rerun_if_skipped(|| {
        let (pair, est, mut cap, tracer) = established_lab("pwack", false)?;
        let (srv, cli) = (pair.server_ns(), pair.client_ns());
        let announced = tracer.stderr_text();
        let before = netstat(srv)?;
        for (regression, old_ack) in [(1000, false), (2, false), (1000, true)] {
            let mut seg = est.data_segment(regression, b"");
            seg.flags = support::raw::ACK;
            if old_ack {
                // Its sequence is before rcv_nxt: an ACK delivered late.
                seg.seq = seg.seq.wrapping_sub(1);
            }
            // Only the first reject is answered (a duplicate ACK; tcp_invalid_ratelimit holds back
            // the next for 500 ms, and old ACKs get none): wait for a reply, or a while.
            probe(cli, &mut cap, &seg, UNANSWERED)?;
        }
        // The first and the last are rejects (PAWSEstab, or PAWSOldAck for the late one where
        // it exists): their counts, waited for (bounded), since the unanswered ones give no
        // sign of having been processed; a shortfall is the checks' below to name.
        let rejects = |now: &std::collections::BTreeMap<String, u64>| {
            delta(&before, now, "TcpExtPAWSEstab")
                + support::try_delta(&before, now, "TcpExtPAWSOldAck").unwrap_or(0)
        };
        let deadline = std::time::Instant::now() + REPLY_TIMEOUT;
        let mut after = netstat(srv)?;
        while rejects(&after) < 2 && std::time::Instant::now() < deadline {
            thread::sleep(Duration::from_millis(20));
            after = netstat(srv)?;
        }
        let events = stop(tracer)?;

        let estab = delta(&before, &after, "TcpExtPAWSEstab");
        // The old-ACK reason and PAWSOldAck came together (6.14); before, such an ACK counts as
        // PAWSEstab.
        let old_acks = support::try_delta(&before, &after, "TcpExtPAWSOldAck");
        if old_acks.is_some() {
            assert_eq!(old_acks, Some(1), "sanity: the late ACK is an old ACK");
        }
        let old_acks = old_acks.unwrap_or(0);
        assert!(
            estab + old_acks == 2 || estab + old_acks == 3,
            "sanity: both ACKs 1000 ticks back are dropped ({estab} + {old_acks})"
        );
        let rejects = from(&events, "paws_reject", pair.client_v4());
        if established_unseen(&announced) {
            assert_eq!(rejects.len(), 0, "{rejects:?}");
            return Ok(());
        }
        // Old ACKs are reported as such, apart from the rejects, as the kernel counts them.
        let (old, rest): (Vec<&Value>, Vec<&Value>) =
            rejects.iter().partition(|r| r["old_ack"] == true);
        assert_eq!(
            rest.len() as u64,
            estab,
            "rejects vs PAWSEstab: {rejects:?}"
        );
        assert_eq!(
            old.len() as u64,
            old_acks,
            "old ACKs vs PAWSOldAck: {rejects:?}"
        );
        assert!(
            rejects
                .iter()
                .all(|r| r["path"] == "established" && r["flags"] == "ACK")
        );
        let regs: Vec<Option<i64>> = rejects.iter().map(|r| r["regression"].as_i64()).collect();
        // Exact regressions, in order, of the ACKs the kernel dropped (the 2-tick one only if it
        // dropped three), where ts_recent is readable (see established_old_data_is_rejected).
        let rejected: &[i64] = if rejects.len() == 3 {
            &[1000, 2, 1000]
        } else {
            &[1000, 1000]
        };
        let expected: Vec<Option<i64>> = if ts_recent_readable(&announced)? {
            rejected.iter().map(|&r| Some(r)).collect()
        } else {
            vec![None; rejected.len()]
        };
        assert_eq!(regs, expected);
        Ok(())
    })
}
