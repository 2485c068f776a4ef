//! Self-test of the PAWS harness (tests/support/raw.rs and nat.rs), without the tracer: every
//! crafted segment and every NAT scenario must move the kernel's own counters of the receiving
//! namespace by exactly the amount the harness claims, run after run. Needs root.
//!
//! The boundaries are tested on purpose (1 tick older / equal / 1 tick newer): they only come
//! out right if the harness knows the peer's ts_recent exactly.

mod support;

use std::collections::BTreeMap;
use std::io::Read as _;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use support::nat::{NatLab, Scenario, ScenarioReport, TsOrder};
use support::netns::VETH;
use support::raw::{
    ACK, Capture, Established, REPLY_TIMEOUT, RST, RstBlock, SYN, ServerTimeWait, probe,
    tw_paws_counter, tw_paws_delta,
};
use support::{NetnsPair, Server, delta, netns_exists, netstat, try_delta};

const PORT: u16 = 5000;

type Counters = BTreeMap<String, u64>;

/// PAWSEstab must stay put while a TIME-WAIT rejects, unless this kernel (< 6.16) counts TIME-WAIT
/// rejects there.
fn assert_estab_untouched(before: &Counters, after: &Counters) {
    if tw_paws_counter(after) != "TcpExtPAWSEstab" {
        assert_eq!(delta(before, after, "TcpExtPAWSEstab"), 0);
    }
}

fn server_ip(pair: &NetnsPair, v6: bool) -> IpAddr {
    if v6 {
        pair.server_v6()
    } else {
        pair.server_v4()
    }
}

/// SYNs against server-side TIME-WAIT sockets: reject by one tick, reject again (ACK held back
/// by the rate limit), accept by one tick newer, the equal-TSval cases, and the RST that kills
/// the TIME-WAIT when nothing blocks it.
fn tw_syn_paths(tag: &str, v6: bool) {
    let pair = NetnsPair::new(tag).unwrap();
    let (srv, cli) = (pair.server_ns(), pair.client_ns());
    let server = Server::start(srv, SocketAddr::new(server_ip(&pair, v6), PORT)).unwrap();
    let tws: Vec<ServerTimeWait> = (41001..=41004)
        .map(|p| ServerTimeWait::create(&pair, &server, p).unwrap())
        .collect();
    let block = RstBlock::install(cli).unwrap();
    let mut cap = Capture::start(cli, VETH).unwrap();
    let t = Instant::now();

    // 1 tick older, sequence after rcv_nxt: PAWS beats the sequence test. The bare ACK carries
    // the TIME-WAIT's own state, which pins down what the fixture says it knows.
    let tw = &tws[0];
    let syn = tw.syn(tw.seq_after(), Some(1));
    let c0 = netstat(srv).unwrap();
    let r = probe(cli, &mut cap, &syn, REPLY_TIMEOUT)
        .unwrap()
        .expect("ACK to a PAWS reject");
    let c1 = netstat(srv).unwrap();
    assert_eq!(r.flags, ACK, "{r:?}");
    assert_eq!(
        (r.seq, r.ack, r.ts.map(|t| t.1)),
        (tw.snd_nxt, tw.rcv_nxt, Some(tw.ts_recent))
    );
    assert_eq!(tw_paws_delta(&c0, &c1), 1);
    assert_estab_untouched(&c0, &c1);
    assert!(
        tw.exists(srv).unwrap(),
        "the blocked RST cannot have killed it"
    );

    // The same SYN again within tcp_invalid_ratelimit (500 ms): counted again, no ACK.
    let r = probe(cli, &mut cap, &syn, Duration::from_millis(200)).unwrap();
    let c2 = netstat(srv).unwrap();
    assert_eq!(r, None);
    assert_eq!(tw_paws_delta(&c1, &c2), 1);
    assert_eq!(delta(&c1, &c2, "TcpExtTCPACKSkippedTimeWait"), 1);

    // 1 tick newer with an old sequence number: accepted on the timestamp alone. The SYN-ACK's
    // ISN is the one the TIME-WAIT hands over (tw_snd_nxt + 65535 + 2).
    let syn = tw.syn(tw.seq_before(), Some(-1));
    let r = probe(cli, &mut cap, &syn, REPLY_TIMEOUT)
        .unwrap()
        .expect("SYN-ACK");
    let c3 = netstat(srv).unwrap();
    assert_eq!(
        (r.flags, r.ack),
        (SYN | ACK, syn.seq.wrapping_add(1)),
        "{r:?}"
    );
    assert_eq!(r.seq, tw.snd_nxt.wrapping_add(65535 + 2));
    assert_eq!(tw_paws_delta(&c2, &c3), 0);
    assert!(
        !tw.exists(srv).unwrap(),
        "an accepted SYN replaces the TIME-WAIT"
    );

    // Equal TSval: no PAWS reject (the TIME-WAIT window is 0), but not newer either: with an
    // old sequence number it is a duplicate (ACK), with a new one it is accepted.
    let tw = &tws[1];
    let r = probe(
        cli,
        &mut cap,
        &tw.syn(tw.seq_before(), Some(0)),
        REPLY_TIMEOUT,
    )
    .unwrap();
    assert_eq!(r.map(|r| r.flags), Some(ACK));
    assert!(tw.exists(srv).unwrap());
    let r = probe(
        cli,
        &mut cap,
        &tw.syn(tw.seq_after(), Some(0)),
        REPLY_TIMEOUT,
    )
    .unwrap();
    assert_eq!(r.map(|r| r.flags), Some(SYN | ACK));
    // Newer TSval and sequence after: accepted; no timestamp option at all: PAWS cannot apply.
    for (tw, ts) in [(&tws[2], Some(-1000)), (&tws[3], None)] {
        let r = probe(cli, &mut cap, &tw.syn(tw.seq_after(), ts), REPLY_TIMEOUT).unwrap();
        assert_eq!(r.map(|r| r.flags), Some(SYN | ACK), "ts regression {ts:?}");
    }
    let c4 = netstat(srv).unwrap();
    assert_eq!(tw_paws_delta(&c3, &c4), 0);
    assert_estab_untouched(&c0, &c4);

    // Without the block: the reject's ACK reaches the client kernel, which has no socket for
    // this 4-tuple and answers RST; with tcp_rfc1337=0 that RST kills the TIME-WAIT.
    drop(block);
    let tw = ServerTimeWait::create(&pair, &server, 41005).unwrap();
    let c5 = netstat(srv).unwrap();
    let r = probe(
        cli,
        &mut cap,
        &tw.syn(tw.seq_after(), Some(1)),
        REPLY_TIMEOUT,
    )
    .unwrap();
    assert_eq!(r.map(|r| r.flags), Some(ACK));
    let rst = cap.wait_for(0, REPLY_TIMEOUT, |s| {
        s.is_from_to(tw.client, tw.server) && s.has(RST)
    });
    assert!(
        rst.unwrap().is_some(),
        "client kernel answers the ACK with RST"
    );
    let deadline = Instant::now() + REPLY_TIMEOUT;
    while tw.exists(srv).unwrap() {
        assert!(Instant::now() < deadline, "RST did not kill the TIME-WAIT");
        std::thread::sleep(Duration::from_millis(1));
    }
    assert_eq!(tw_paws_delta(&c5, &netstat(srv).unwrap()), 1);
    eprintln!("{tag}: TIME-WAIT SYN paths checked in {:?}", t.elapsed());
}

#[test]
fn tw_syn_paws_v4() {
    tw_syn_paths("pawstw4", false);
}

#[test]
fn tw_syn_paws_v6() {
    tw_syn_paths("pawstw6", true);
}

/// In-window data with an old TSval on an established connection: PAWSEstab in the receiver.
/// Established sockets allow 1 tick (TCP_PAWS_WINDOW): 2 is rejected, 1 is accepted.
fn established_paths(tag: &str, v6: bool) {
    let pair = NetnsPair::new(tag).unwrap();
    let (srv, cli) = (pair.server_ns(), pair.client_ns());
    let mut est = Established::open(&pair, SocketAddr::new(server_ip(&pair, v6), 0)).unwrap();
    let mut cap = Capture::start(cli, VETH).unwrap();
    for (i, regression) in [1000, 2].into_iter().enumerate() {
        let c0 = netstat(srv).unwrap();
        let seg = est.data_segment(regression, b"x");
        let r = probe(cli, &mut cap, &seg, REPLY_TIMEOUT)
            .unwrap()
            .expect("dupack");
        let c1 = netstat(srv).unwrap();
        // A duplicate ACK: our byte not acknowledged, the server's ts_recent echoed.
        assert_eq!(
            (r.flags, r.seq, r.ack),
            (ACK, est.rcv_nxt, est.snd_nxt),
            "{r:?}"
        );
        assert_eq!(r.ts.map(|t| t.1), Some(est.ts_recent), "attempt {i}");
        assert_eq!(
            delta(&c0, &c1, "TcpExtPAWSEstab"),
            1,
            "regression {regression}"
        );
        if let Some(d) = try_delta(&c0, &c1, "TcpExtPAWSTimewait") {
            assert_eq!(d, 0);
        }
    }
    let c0 = netstat(srv).unwrap();
    support::raw::send_segment(cli, &est.data_segment(1, b"y")).unwrap();
    let mut b = [0u8; 1];
    est.server_stream.read_exact(&mut b).unwrap();
    assert_eq!(&b, b"y", "1 tick old is inside the PAWS window");
    assert_eq!(delta(&c0, &netstat(srv).unwrap(), "TcpExtPAWSEstab"), 0);
}

#[test]
fn established_paws_v4() {
    established_paths("pawsest4", false);
}

#[test]
fn established_paws_v6() {
    established_paths("pawsest6", true);
}

fn check_rejected_once(r: &ScenarioReport) {
    assert_eq!(r.expected_paws, 1);
    assert_eq!(r.paws, r.expected_paws, "{r:#?}");
    assert!(
        r.b.is_ok(),
        "B connects once its RST killed the TIME-WAIT: {r:#?}"
    );
    // One reject ACK, the RST, the fast SYN retransmit (TCP_TIMEOUT_MIN) accepted.
    assert_eq!(
        (r.b_syn_tsvals.len(), r.server_acks, r.server_synacks),
        (2, 1, 1),
        "{r:#?}"
    );
    // Well under the 1 s the next retransmit would take (a busy host delays the fast one).
    assert!(
        r.b.connect_time < Duration::from_millis(900),
        "{:?}",
        r.b.connect_time
    );
    assert!(r.regression > 50_000, "B older by design: {}", r.regression);
    let (_, probed) = r.b_probe.unwrap();
    assert!(
        (probed - 5000..=probed).contains(&r.regression),
        "probed {probed}, real {}",
        r.regression
    );
}

#[test]
fn nat_paws_scenario_is_deterministic() {
    let lab = NatLab::new("pawsnat", 2).unwrap();
    let names: Vec<String> = [
        lab.server_ns(),
        lab.router_ns(),
        lab.client_ns(0),
        lab.client_ns(1),
    ]
    .map(str::to_owned)
    .into();
    let t = Instant::now();
    for i in 0..5 {
        let r = lab.run_scenario(&Scenario::default()).unwrap();
        check_rejected_once(&r);
        eprintln!(
            "run {i}: {} +{} (regression {} ms), B connect {:?}, conntrack wait {:?}, run {:?}",
            r.paws_counter, r.paws, r.regression, r.b.connect_time, r.conntrack_wait, r.elapsed
        );
    }
    eprintln!("5 NAT PAWS runs took {:?}", t.elapsed());

    // Controls: B newer than A, or A alone reconnecting: the TIME-WAIT accepts at once.
    for order in [TsOrder::BNewer, TsOrder::SameClient] {
        let r = lab
            .run_scenario(&Scenario {
                order,
                ..Scenario::default()
            })
            .unwrap();
        assert_eq!(
            (r.expected_paws, r.paws, r.acks_skipped),
            (0, 0, 0),
            "{r:#?}"
        );
        assert!(r.b.is_ok() && r.regression < 0, "{r:#?}");
        assert_eq!(
            (r.b_syn_tsvals.len(), r.server_acks, r.server_synacks),
            (1, 0, 1),
            "{r:#?}"
        );
        eprintln!(
            "control {order:?}: {} +0, regression {} ms, run {:?}",
            r.paws_counter, r.regression, r.elapsed
        );
    }

    // tcp_rfc1337=1: the RST is ignored, B's SYN and its fast retransmit are both rejected (the
    // second ACK held back by the rate limit) and connect() times out.
    let sc = Scenario {
        rfc1337: true,
        b_timeout: Duration::from_millis(500),
        ..Scenario::default()
    };
    let r = lab.run_scenario(&sc).unwrap();
    assert_eq!(
        (r.expected_paws, r.paws, r.acks_skipped),
        (2, 2, 1),
        "{r:#?}"
    );
    assert_eq!(
        (r.b_syn_tsvals.len(), r.server_acks, r.server_synacks),
        (2, 1, 0),
        "{r:#?}"
    );
    assert_eq!(
        (r.b.failed_at, r.b.result),
        (Some("connect"), Err(libc::EINPROGRESS)),
        "{r:#?}"
    );
    eprintln!(
        "rfc1337=1: {} +{}, B gave up after {:?}",
        r.paws_counter, r.paws, r.b.connect_time
    );

    drop(lab);
    assert!(
        names.iter().all(|n| !netns_exists(n)),
        "namespaces left: {names:?}"
    );
}

/// The TSval probe sends nothing, and a real SYN from the probed port carries the probed
/// offset (the offset is a function of the 4-tuple).
#[test]
fn nat_tsval_probe_is_silent_and_exact() {
    let lab = NatLab::new("pawsprobe", 1).unwrap();
    let cli = lab.client_ns(0);
    let local = SocketAddr::new(lab.client_ip(0), 40500);
    let c0 = netstat(cli).unwrap();
    let a = lab.syn_tsval_now(local).unwrap();
    let b = lab.syn_tsval_now(local).unwrap();
    let c1 = netstat(cli).unwrap();
    assert_eq!(delta(&c0, &c1, "TcpOutSegs"), 0);
    assert_eq!(delta(&c0, &c1, "TcpActiveOpens"), 0);
    assert!(
        b.wrapping_sub(a) < 50,
        "same 4-tuple, same offset: {a} then {b}"
    );

    let mut cap = Capture::start(lab.server_ns(), VETH).unwrap();
    let port = lab.fresh_public_port();
    let before = lab.syn_tsval_now(local).unwrap();
    let conn = lab.connect_from_addr(local, port, REPLY_TIMEOUT).unwrap();
    assert!(conn.is_ok(), "{conn:?}");
    let syn = cap
        .wait_for(0, REPLY_TIMEOUT, |s| s.has(SYN) && !s.has(ACK))
        .unwrap()
        .expect("SYN at the server");
    assert_eq!(syn.src, conn.public);
    // TCP_TIMESTAMP clears the low bit, so the SYN may be one tick ahead even at once.
    let ahead = syn.tsval().unwrap().wrapping_sub(before);
    assert!(ahead < 50, "SYN TSval {:?} vs probe {before}", syn.tsval());
}
