//! The kernel's own list of TIME-WAIT sockets, as `ss -tan state time-wait` reads it: a
//! sock_diag (inet_diag) dump over netlink, of the network namespace the calling thread is in.

use std::net::SocketAddr;

use anyhow::{Context as _, Result, bail};
use netlink_packet_core::{
    NLM_F_DUMP, NLM_F_REQUEST, NetlinkHeader, NetlinkMessage, NetlinkPayload,
};
use netlink_packet_sock_diag::{
    SockDiagMessage,
    constants::{AF_INET, AF_INET6, IPPROTO_TCP},
    inet::{ExtensionFlags, InetRequest, SocketId, StateFlags, Timer},
};
use netlink_sys::{Socket, SocketAddr as NlAddr, protocols::NETLINK_SOCK_DIAG};

/// One TIME-WAIT socket: its endpoints (IPv4-mapped addresses already folded to IPv4, as the
/// decoders fold them) and whether it stands in for FIN_WAIT2.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct TimeWaitSock {
    pub local: SocketAddr,
    pub remote: SocketAddr,
    pub fin_wait2: bool,
}

/// `TCP_FIN_WAIT2`: a timewait socket's reported state is its substate.
const TCP_FIN_WAIT2: u8 = 5;
const TCP_LISTEN: u8 = 10;

/// What one namespace holds: its TIME-WAIT sockets (those asked for) and its listening ports.
#[derive(Debug, Default)]
pub struct Sockets {
    pub timewaits: Vec<TimeWaitSock>,
    /// Every TIME-WAIT the kernel listed, kept or not.
    pub all_timewaits: usize,
    /// Local ports with a listener (either family): a TIME-WAIT on one is a server's.
    pub listening: Vec<u16>,
}

/// The TIME-WAIT sockets (either substate) that `keep` (given local and remote) wants, at
/// most `limit`, and every listener, of the calling thread's network namespace, IPv4 and
/// IPv6. The others are counted only: the limit is spent on wanted sockets alone.
pub fn sockets(limit: usize, keep: impl Fn(SocketAddr, SocketAddr) -> bool) -> Result<Sockets> {
    let mut out = Sockets::default();
    for family in [AF_INET, AF_INET6] {
        dump(family, limit, &keep, &mut out)?;
    }
    out.listening.sort_unstable();
    out.listening.dedup();
    Ok(out)
}

fn dump(
    family: u8,
    limit: usize,
    keep: &impl Fn(SocketAddr, SocketAddr) -> bool,
    out: &mut Sockets,
) -> Result<()> {
    let mut socket = Socket::new(NETLINK_SOCK_DIAG).context("opening a sock_diag socket")?;
    socket.bind_auto().context("binding the sock_diag socket")?;
    socket.connect(&NlAddr::new(0, 0))?;
    let mut header = NetlinkHeader::default();
    header.flags = NLM_F_REQUEST | NLM_F_DUMP;
    let socket_id = if family == AF_INET {
        SocketId::new_v4()
    } else {
        SocketId::new_v6()
    };
    let mut req = NetlinkMessage::new(
        header,
        SockDiagMessage::InetRequest(InetRequest {
            family,
            protocol: IPPROTO_TCP,
            extensions: ExtensionFlags::empty(),
            // The kernel filters (and reports) a timewait socket by its substate: a TIME-WAIT
            // standing for an orphaned FIN_WAIT2 (tcp_fin_timeout) is asked for as FIN_WAIT2,
            // which brings full FIN_WAIT2 sockets too (told apart by their timer, below).
            states: StateFlags::TIME_WAIT | StateFlags::FIN_WAIT2 | StateFlags::LISTEN,
            socket_id,
        })
        .into(),
    );
    req.finalize();
    let mut buf = vec![0; req.buffer_len()];
    req.serialize(&mut buf);
    socket
        .send(&buf, 0)
        .context("sending the sock_diag request")?;

    let mut rx = Vec::with_capacity(64 * 1024);
    loop {
        rx.clear();
        let n = socket
            .recv(&mut rx, 0)
            .context("reading the sock_diag dump")?;
        let mut at = 0;
        while at < n {
            let msg = NetlinkMessage::<SockDiagMessage>::deserialize(&rx[at..n])
                .map_err(|e| anyhow::anyhow!("malformed sock_diag reply: {e}"))?;
            let len = msg.header.length as usize;
            match msg.payload {
                NetlinkPayload::InnerMessage(SockDiagMessage::InetResponse(r)) => {
                    let id = &r.header.socket_id;
                    // Only timewait sockets carry the TIME-WAIT timer (idiag_timer 3).
                    let timewait = r.header.timer == Some(Timer::TimeWait);
                    if r.header.state == TCP_LISTEN {
                        out.listening.push(id.source_port);
                    } else if timewait {
                        out.all_timewaits += 1;
                        let local =
                            SocketAddr::new(id.source_address.to_canonical(), id.source_port);
                        let remote = SocketAddr::new(
                            id.destination_address.to_canonical(),
                            id.destination_port,
                        );
                        if out.timewaits.len() < limit && keep(local, remote) {
                            out.timewaits.push(TimeWaitSock {
                                local,
                                remote,
                                fin_wait2: r.header.state == TCP_FIN_WAIT2,
                            });
                        }
                    }
                }
                NetlinkPayload::Done(_) => return Ok(()),
                NetlinkPayload::Error(e) => bail!("sock_diag dump refused: {e:?}"),
                _ => {}
            }
            if len == 0 {
                break;
            }
            at += len;
        }
    }
}
