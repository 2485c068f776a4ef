//! The NAT scenario on a [`NatLab`]: A's server TIME-WAIT on the public 4-tuple, then B on the
//! same public port with a TSval chosen older or newer, and what the server made of B's SYNs.

use std::net::SocketAddr;
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Result, anyhow, bail, ensure};

use super::super::netns::VETH;
use super::super::proc::{netstat, sysctl, try_delta};
use super::super::raw::{ACK, Capture, FIN, SYN, regression, tw_paws_counter, tw_paws_delta};
use super::super::traffic::IO_TIMEOUT;
use super::{A_PORT, B_PORTS, NatConn, NatLab, TS_MARGIN};

/// Which TSval client B's SYN carries relative to the server's ts_recent from A.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TsOrder {
    /// B (client 1) is older than A by more than a minute: the server's TIME-WAIT rejects it.
    BOlder,
    /// B is newer than A by more than a minute: the TIME-WAIT accepts it (control).
    BNewer,
    /// "B" is A again from the same private port (one client only): newer, accepted (control).
    SameClient,
}

/// The classic NAT scenario: A connects (server closes first: server TIME-WAIT on the public
/// 4-tuple), A's conntrack entry expires, B connects to the same server port and is mapped to
/// the same public port.
#[derive(Clone, Debug)]
pub struct Scenario {
    pub order: TsOrder,
    /// net.ipv4.tcp_rfc1337 in the server namespace. 0: the first SYN is rejected, the server's
    /// ACK makes B answer RST, which passes the NAT and kills the TIME-WAIT; B's SYN goes out
    /// again after TCP_TIMEOUT_MIN and connects (a few ms late): exactly 1 reject. 1: the RST
    /// is ignored and every SYN is rejected until B's connect() times out.
    pub rfc1337: bool,
    /// connect() timeout for B. With rfc1337 it must lie in 0.2..0.9 s: B's SYN and its fast
    /// retransmit get in, the next one (1 s later) does not: exactly 2 rejects.
    pub b_timeout: Duration,
    /// The forced public port; None takes [`NatLab::fresh_public_port`]. A port an earlier run
    /// used still has the server's TIME-WAIT (60 s), which A's own SYN would then meet.
    pub public_port: Option<u16>,
}

impl Default for Scenario {
    fn default() -> Self {
        Scenario {
            order: TsOrder::BOlder,
            rfc1337: false,
            b_timeout: IO_TIMEOUT,
            public_port: None,
        }
    }
}

/// What happened, with the exact values a tracer has to report.
#[derive(Clone, Debug)]
pub struct ScenarioReport {
    pub scenario: Scenario,
    /// The server's listening address and the public address both A and B appeared as.
    pub server: SocketAddr,
    pub public: SocketAddr,
    pub a: NatConn,
    pub b: NatConn,
    /// The server TIME-WAIT's ts_recent: TSval of A's FIN as captured at the server.
    pub ts_recent: u32,
    /// TSvals of B's SYNs that reached the server, in order.
    pub b_syn_tsvals: Vec<u32>,
    /// ts_recent - first B SYN TSval (s32): > 0 means B is older.
    pub regression: i32,
    /// The server's answers to B's SYNs: bare ACKs before its first SYN-ACK (PAWS rejects,
    /// minus those held back by the rate limit), and SYN-ACKs.
    pub server_acks: usize,
    pub server_synacks: usize,
    /// B's local address and the regression (A - B) probed before anything was sent; the real
    /// one is smaller by the time between A's FIN and B's SYN (~ the conntrack wait).
    pub b_probe: Option<(SocketAddr, i32)>,
    /// PAWS rejects the scenario predicts, and what the server namespace counted during B's
    /// attempt (in `paws_counter`: TcpExtPAWSTimewait, or TcpExtPAWSEstab before 6.16).
    pub expected_paws: u64,
    pub paws_counter: &'static str,
    pub paws: u64,
    /// TcpExtTCPACKSkippedTimeWait during B's attempt (reject ACKs held back by
    /// tcp_invalid_ratelimit, 500 ms per TIME-WAIT).
    pub acks_skipped: u64,
    /// How long the router took to forget A's mapping.
    pub conntrack_wait: Duration,
    pub elapsed: Duration,
}

impl NatLab {
    /// Picks B's local address: the first candidate (address fastest-varying, then port)
    /// whose TSval differs from A's in the wanted direction by at least TS_MARGIN. Returns it
    /// with the probed regression (A - B).
    fn pick_b_addr(&self, a: SocketAddr, order: TsOrder) -> Result<(SocketAddr, i32)> {
        let ts_a = self.syn_tsval_now(a)?;
        for port in B_PORTS {
            for ip in self.client_addrs(1) {
                let b = SocketAddr::new(ip, port);
                let r = regression(ts_a, self.syn_tsval_now(b)?);
                let want = if order == TsOrder::BOlder {
                    r
                } else {
                    r.saturating_neg()
                };
                if (TS_MARGIN..=i32::MAX - TS_MARGIN).contains(&want) {
                    return Ok((b, r));
                }
            }
        }
        bail!("no local address of client 1 gives B a TSval {order:?} by {TS_MARGIN} ms")
    }

    /// Runs the scenario once. Errors are harness failures (the NAT did not map as forced, A
    /// failed, ...); B's fate is reported, not judged.
    pub fn run_scenario(&self, sc: &Scenario) -> Result<ScenarioReport> {
        let t0 = Instant::now();
        if sc.rfc1337 {
            ensure!(
                (Duration::from_millis(200)..=Duration::from_millis(900)).contains(&sc.b_timeout),
                "with rfc1337 the B timeout must be 0.2..0.9 s for an exact prediction"
            );
        }
        let a_addr = SocketAddr::new(self.client_ip(0), A_PORT);
        let b_probe = match sc.order {
            TsOrder::SameClient => None,
            order => {
                ensure!(self.clients() >= 2, "{order:?} needs two clients");
                Some(self.pick_b_addr(a_addr, order)?)
            }
        };
        let b_addr = b_probe.map_or(a_addr, |(b, _)| b);
        sysctl(
            self.server_ns(),
            "net.ipv4.tcp_rfc1337",
            if sc.rfc1337 { "1" } else { "0" },
        )?;
        let port = sc.public_port.unwrap_or_else(|| self.fresh_public_port());
        let (server, public) = (self.server_addr(), SocketAddr::new(self.public_ip(), port));
        self.wait_conntrack_gone(port, Duration::from_secs(5))?;

        let mut cap = Capture::start(self.server_ns(), VETH)?;
        let a = self.connect_from_addr(a_addr, port, IO_TIMEOUT)?;
        ensure!(a.is_ok(), "client A failed: {a:?}");
        let segs = cap.segments()?;
        let fin = segs
            .iter()
            .rev()
            .find(|s| s.is_from_to(public, server) && s.has(FIN))
            .ok_or_else(|| {
                anyhow!("A's FIN not seen at the server from {public}: wrong NAT mapping? {segs:?}")
            })?;
        let ts_recent = fin
            .tsval()
            .ok_or_else(|| anyhow!("A's FIN has no timestamp"))?;

        let conntrack_wait = self.wait_conntrack_gone(port, Duration::from_secs(5))?;
        let mark = cap.mark()?;
        let before = netstat(self.server_ns())?;
        let b = self.connect_from_addr(b_addr, port, sc.b_timeout)?;
        // B's SYNs are processed by the server as they arrive; let the last answer land.
        self.settle(&mut cap)?;
        let after = netstat(self.server_ns())?;

        let segs = &cap.segments()?[mark..];
        let syns: Vec<_> = segs
            .iter()
            .filter(|s| s.dst == server && s.flags & (SYN | ACK) == SYN)
            .collect();
        ensure!(
            !syns.is_empty() && syns.iter().all(|s| s.src == public),
            "B's SYNs did not all arrive from the forced public address {public}: {syns:?}"
        );
        // The server's answers to B's SYNs: everything it sent to B up to its first SYN-ACK.
        let answers: Vec<_> = segs
            .iter()
            .filter(|s| s.is_from_to(server, public))
            .collect();
        let first_synack = answers
            .iter()
            .position(|s| s.has(SYN | ACK))
            .unwrap_or(answers.len());
        let b_syn_tsvals: Vec<u32> = syns.iter().filter_map(|s| s.tsval()).collect();
        let expected_paws = match (sc.order, sc.rfc1337) {
            (TsOrder::BOlder, false) => 1,
            (TsOrder::BOlder, true) => 2,
            _ => 0,
        };
        Ok(ScenarioReport {
            scenario: sc.clone(),
            server,
            public,
            regression: regression(
                ts_recent,
                *b_syn_tsvals
                    .first()
                    .ok_or_else(|| anyhow!("B's SYN without timestamp"))?,
            ),
            server_acks: answers[..first_synack]
                .iter()
                .filter(|s| s.flags == ACK)
                .count(),
            server_synacks: answers.iter().filter(|s| s.has(SYN | ACK)).count(),
            b_probe,
            a,
            b,
            ts_recent,
            b_syn_tsvals,
            expected_paws,
            paws_counter: tw_paws_counter(&after),
            paws: tw_paws_delta(&before, &after),
            acks_skipped: try_delta(&before, &after, "TcpExtTCPACKSkippedTimeWait").unwrap_or(0),
            conntrack_wait,
            elapsed: t0.elapsed(),
        })
    }

    /// Waits until the server's veth has been quiet for 50 ms (bounded by 2 s).
    fn settle(&self, cap: &mut Capture) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(2);
        let mut n = cap.mark()?;
        let mut since = Instant::now();
        while since.elapsed() < Duration::from_millis(50) {
            ensure!(Instant::now() < deadline, "server link never went quiet");
            thread::sleep(Duration::from_millis(5));
            let m = cap.mark()?;
            if m != n {
                (n, since) = (m, Instant::now());
            }
        }
        Ok(())
    }
}
