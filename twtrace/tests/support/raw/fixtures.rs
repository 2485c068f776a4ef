//! Connections whose kernel state a test knows exactly, for crafted segments to hit: a server
//! TIME-WAIT (ts_recent, rcv_nxt, snd_nxt from a capture) and an established connection.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::Duration;

use anyhow::{Result, anyhow, ensure};

use super::super::netns::{NetnsPair, VETH, try_in_netns};
use super::super::proc::{TcpState, tcp_sockets};
use super::super::traffic::{CloseFirst, ConnectOptions, Server, connect_many_opts};
use super::{ACK, Capture, FIN, PSH, REPLY_TIMEOUT, Segment, send_segment, tsval_with_regression};

/// A server-side TIME-WAIT socket whose state is known exactly, made by a real connection
/// from a fixed client port with the server closing first.
#[derive(Clone, Debug)]
pub struct ServerTimeWait {
    /// The 4-tuple: the client's address (the TIME-WAIT's remote) and the server's.
    pub client: SocketAddr,
    pub server: SocketAddr,
    /// tw_ts_recent: the TSval of the client's FIN.
    pub ts_recent: u32,
    /// tw_rcv_nxt: the client's FIN sequence number + 1.
    pub rcv_nxt: u32,
    /// tw_snd_nxt: the server's FIN sequence number + 1.
    pub snd_nxt: u32,
    /// The last TSval the server sent (what a real client would echo).
    pub server_tsval: u32,
}

impl ServerTimeWait {
    /// Connects from `pair`'s client namespace (its address of `server`'s family, local port
    /// `client_port`) to `server`, a [`Server`] in `pair`'s server namespace, the server
    /// closing first, and reads the TIME-WAIT's values from a capture of that connection. Use
    /// a port per fixture: a port that already has a TIME-WAIT on the server would be reopened
    /// through it.
    pub fn create(pair: &NetnsPair, server: &Server, client_port: u16) -> Result<ServerTimeWait> {
        Self::create_to(pair, server.addr(), client_port)
    }

    /// [`ServerTimeWait::create`] connecting to `srv`, an address the server listens on that
    /// is not its bound one: an IPv4 address of a dual-stack (`[::]`) listener.
    pub fn create_to(
        pair: &NetnsPair,
        srv: SocketAddr,
        client_port: u16,
    ) -> Result<ServerTimeWait> {
        let client_ip = if srv.is_ipv4() {
            pair.client_v4()
        } else {
            pair.client_v6()
        };
        let client = SocketAddr::new(client_ip, client_port);
        let mut cap = Capture::start(pair.client_ns(), VETH)?;
        let opts = ConnectOptions {
            local_ip: Some(client_ip),
            ..ConnectOptions::default()
        };
        let out = connect_many_opts(
            pair.client_ns(),
            srv,
            1,
            CloseFirst::Server,
            Some(&[client_port]),
            &opts,
        )?;
        ensure!(
            out[0].is_ok(),
            "connection for the TIME-WAIT failed: {:?}",
            out[0]
        );
        // connect_many returned after our FIN was acknowledged: the capture holds it all.
        let segs = cap.segments()?;
        let fin = segs
            .iter()
            .rev()
            .find(|s| s.is_from_to(client, srv))
            .filter(|s| s.has(FIN))
            .ok_or_else(|| anyhow!("last client segment is not a FIN: {segs:?}"))?;
        let last_srv = segs
            .iter()
            .rev()
            .find(|s| s.is_from_to(srv, client))
            .ok_or_else(|| anyhow!("no server segment captured"))?;
        let rcv_nxt = fin.seq.wrapping_add(fin.seq_len());
        ensure!(
            last_srv.ack == rcv_nxt && !last_srv.has(FIN),
            "server did not ACK our FIN last: {last_srv:?}"
        );
        let tw = ServerTimeWait {
            client,
            server: srv,
            ts_recent: fin
                .tsval()
                .ok_or_else(|| anyhow!("FIN without timestamps"))?,
            rcv_nxt,
            snd_nxt: last_srv.seq,
            server_tsval: last_srv.tsval().unwrap_or(0),
        };
        ensure!(
            tw.exists(pair.server_ns())?,
            "no TIME-WAIT for {client} on the server"
        );
        Ok(tw)
    }

    /// Whether the server namespace still holds this TIME-WAIT socket.
    pub fn exists(&self, server_ns: &str) -> Result<bool> {
        // A dual-stack listener's IPv4 connection is an IPv6 socket: /proc shows ::ffff:a.b.c.d.
        let same = |a: &SocketAddr, b: &SocketAddr| {
            a.port() == b.port() && a.ip().to_canonical() == b.ip().to_canonical()
        };
        Ok(tcp_sockets(server_ns)?.iter().any(|e| {
            e.state == TcpState::TimeWait
                && same(&e.local, &self.server)
                && same(&e.remote, &self.client)
        }))
    }

    /// A sequence number the TIME-WAIT sees as after rcv_nxt (a SYN that is acceptable by
    /// sequence alone), and one it does not.
    pub fn seq_after(&self) -> u32 {
        self.rcv_nxt.wrapping_add(1 << 20)
    }
    pub fn seq_before(&self) -> u32 {
        self.rcv_nxt.wrapping_sub(1 << 20)
    }

    /// The SYN of a new connection on this 4-tuple with TSval `regression` ticks older than
    /// ts_recent (negative = newer; None = no timestamp option).
    pub fn syn(&self, seq: u32, regression: Option<i32>) -> Segment {
        let tsval = regression.map(|r| tsval_with_regression(self.ts_recent, r));
        Segment::syn(self.client, self.server, seq, tsval, 0)
    }
}

/// Sends `seg` from `ns` and waits for the first segment back on the same 4-tuple, seen by
/// `cap` (a capture in `ns`). None when the peer sent nothing within `timeout` (e.g. an ACK
/// suppressed by tcp_invalid_ratelimit).
pub fn probe(
    ns: &str,
    cap: &mut Capture,
    seg: &Segment,
    timeout: Duration,
) -> Result<Option<Segment>> {
    let mark = cap.mark()?;
    send_segment(ns, seg)?;
    let (src, dst) = (seg.src, seg.dst);
    cap.wait_for(mark, timeout, |s| s.is_from_to(dst, src))
}

/// A quiescent established connection (client in `pair`'s client namespace) whose sequence
/// and timestamp state is known from a capture, for crafting in-window segments.
pub struct Established {
    pub client_stream: TcpStream,
    pub server_stream: TcpStream,
    pub client: SocketAddr,
    pub server: SocketAddr,
    /// The client's snd_nxt = the server's rcv_nxt.
    pub snd_nxt: u32,
    /// The client's rcv_nxt = the server's snd_nxt.
    pub rcv_nxt: u32,
    /// The server's ts_recent: the TSval of the client's last segment.
    pub ts_recent: u32,
    /// The server's last TSval (a valid TSecr).
    pub server_tsval: u32,
    pub window: u16,
}

impl Established {
    /// Opens a connection from `pair`'s client namespace to a listener on `server` in its
    /// server namespace, exchanges one byte each way and waits until the client's ACK of the
    /// server's byte has gone out, so that no segment is in flight or pending.
    pub fn open(pair: &NetnsPair, server: SocketAddr) -> Result<Established> {
        let listener = try_in_netns(pair.server_ns(), || TcpListener::bind(server))??;
        let server = listener.local_addr()?;
        let mut cap = Capture::start(pair.client_ns(), VETH)?;
        let client_stream = try_in_netns(pair.client_ns(), || {
            TcpStream::connect_timeout(&server, REPLY_TIMEOUT)
        })??;
        let client = client_stream.local_addr()?;
        let (server_stream, _) = listener.accept()?;
        for s in [&client_stream, &server_stream] {
            s.set_read_timeout(Some(REPLY_TIMEOUT))?;
        }
        use std::io::{Read as _, Write as _};
        let mut b = [0u8; 1];
        (&client_stream).write_all(b"c")?;
        (&server_stream).read_exact(&mut b)?;
        (&server_stream).write_all(b"s")?;
        (&client_stream).read_exact(&mut b)?;
        // The server's byte is acknowledged at once (quick-ack mode at connection start) or
        // after the delayed-ACK timer (<= 200 ms); wait for it either way.
        let srv_data = cap
            .wait_for(0, REPLY_TIMEOUT, |s| {
                s.is_from_to(server, client) && !s.payload.is_empty()
            })?
            .ok_or_else(|| anyhow!("server byte not captured"))?;
        let acked = srv_data.seq.wrapping_add(1);
        cap.wait_for(0, REPLY_TIMEOUT, |s| {
            s.is_from_to(client, server) && s.ack == acked
        })?
        .ok_or_else(|| anyhow!("client never acknowledged the server's byte"))?;
        let segs = cap.segments()?;
        let last_cli = segs
            .iter()
            .rev()
            .find(|s| s.is_from_to(client, server))
            .expect("seen above");
        let last_srv = segs
            .iter()
            .rev()
            .find(|s| s.is_from_to(server, client))
            .expect("seen above");
        Ok(Established {
            snd_nxt: last_cli.seq.wrapping_add(last_cli.seq_len()),
            rcv_nxt: acked,
            ts_recent: last_cli.tsval().ok_or_else(|| anyhow!("no timestamps"))?,
            server_tsval: last_srv.tsval().unwrap_or(0),
            window: last_cli.window,
            client_stream,
            server_stream,
            client,
            server,
        })
    }

    /// An in-window data segment from the client with TSval `regression` ticks older than the
    /// server's ts_recent. Established sockets tolerate 1 tick (TCP_PAWS_WINDOW): 2 or more
    /// is a PAWS reject.
    pub fn data_segment(&self, regression: i32, payload: &[u8]) -> Segment {
        Segment {
            src: self.client,
            dst: self.server,
            flags: ACK | PSH,
            seq: self.snd_nxt,
            ack: self.rcv_nxt,
            window: self.window,
            ts: Some((
                tsval_with_regression(self.ts_recent, regression),
                self.server_tsval,
            )),
            payload: payload.to_vec(),
        }
    }
}
