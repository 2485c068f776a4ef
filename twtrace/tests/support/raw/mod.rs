//! Crafted TCP segments for the PAWS (RFC 7323) paths: a raw socket sends them from inside a
//! namespace, an AF_PACKET capture on the namespace's veth reads what really went over the wire.
//!
//! Why a capture rather than socket options: TCP_INFO shows no sequence numbers and no
//! ts_recent, and TCP_TIMESTAMP only tells the clock *now*, not the TSval of a segment already
//! sent. The veth is the only link of a namespace, so the capture sees every segment of a
//! connection in order, both directions, and gives the exact values the peer's kernel stored:
//! for a server-side TIME-WAIT, `tw_ts_recent` is the TSval of the client's FIN and `tw_rcv_nxt`
//! is the FIN's sequence number + 1 (tcp_timewait_state_process / tcp_time_wait).
//!
//! The raw sockets are `socket(AF_INET{,6}, SOCK_RAW, IPPROTO_TCP)`: the kernel builds the IP
//! header (source from the bound address), we build the TCP header and its checksum over the
//! pseudo-header with etherparse. The client namespace's kernel has no socket for a crafted
//! 4-tuple and answers every reply of the server with a RST; with tcp_rfc1337=0 (the default) a
//! RST in window kills a TIME-WAIT socket, so a test that needs the TIME-WAIT to survive a
//! reply installs [`RstBlock`] (an nftables rule in the client namespace).

use std::io;
use std::mem;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail, ensure};
use etherparse::{NetSlice, SlicedPacket, TcpHeader, TcpOptionElement, TransportSlice};

use super::netns::try_in_netns;
use super::proc::try_delta;
use super::sys;

mod fixtures;
pub use fixtures::{Established, ServerTimeWait, probe};

pub const FIN: u8 = 0x01;
pub const SYN: u8 = 0x02;
pub const RST: u8 = 0x04;
pub const PSH: u8 = 0x08;
pub const ACK: u8 = 0x10;

/// How long a capture waits for the peer's answer to a crafted segment: a veth answers in
/// microseconds, so this only bounds a test that went wrong; generous, since a TCG guest on a
/// busy host can take seconds (a 2 s bound elsewhere was once too short there). A segment
/// that may go unanswered is waited for with a bound of its own.
pub const REPLY_TIMEOUT: Duration = Duration::from_secs(10);

/// One TCP segment, as sent or as captured. `ts` is the timestamp option (TSval, TSecr).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Segment {
    pub src: SocketAddr,
    pub dst: SocketAddr,
    pub flags: u8,
    pub seq: u32,
    pub ack: u32,
    pub window: u16,
    pub ts: Option<(u32, u32)>,
    pub payload: Vec<u8>,
}

impl Segment {
    /// A SYN as Linux sends it (MSS, SACK-permitted, timestamps, window scale); without
    /// `tsval` the timestamp option is left out, which turns PAWS off for this segment.
    pub fn syn(src: SocketAddr, dst: SocketAddr, seq: u32, tsval: Option<u32>, tsecr: u32) -> Self {
        Segment {
            src,
            dst,
            flags: SYN,
            seq,
            ack: 0,
            window: 64240,
            ts: tsval.map(|v| (v, tsecr)),
            payload: Vec::new(),
        }
    }

    pub fn has(&self, flags: u8) -> bool {
        self.flags & flags == flags
    }
    pub fn tsval(&self) -> Option<u32> {
        self.ts.map(|t| t.0)
    }
    /// Sequence space the segment occupies (payload, plus one each for SYN and FIN).
    pub fn seq_len(&self) -> u32 {
        self.payload.len() as u32 + u32::from(self.has(SYN)) + u32::from(self.has(FIN))
    }
    /// Whether it travels from `src` to `dst`.
    pub fn is_from_to(&self, src: SocketAddr, dst: SocketAddr) -> bool {
        self.src == src && self.dst == dst
    }

    /// TCP header + payload with the checksum over the IPv4 or IPv6 pseudo-header.
    pub fn encode(&self) -> Result<Vec<u8>> {
        let mut h = TcpHeader::new(self.src.port(), self.dst.port(), self.seq, self.window);
        h.acknowledgment_number = self.ack;
        (h.fin, h.syn, h.rst, h.psh, h.ack) = (
            self.has(FIN),
            self.has(SYN),
            self.has(RST),
            self.has(PSH),
            self.has(ACK),
        );
        let mut opts = Vec::new();
        if self.has(SYN) {
            opts.push(TcpOptionElement::MaximumSegmentSize(1460));
            opts.push(TcpOptionElement::SelectiveAcknowledgementPermitted);
        } else if self.ts.is_some() {
            // The aligned layout Linux uses, so the receiver's fast-path parser sees it too.
            opts.extend([TcpOptionElement::Noop, TcpOptionElement::Noop]);
        }
        if let Some((v, e)) = self.ts {
            opts.push(TcpOptionElement::Timestamp(v, e));
        }
        if self.has(SYN) {
            opts.extend([TcpOptionElement::Noop, TcpOptionElement::WindowScale(7)]);
        }
        h.set_options(&opts)
            .map_err(|e| anyhow!("tcp options: {e}"))?;
        h.checksum = match (self.src.ip(), self.dst.ip()) {
            (IpAddr::V4(s), IpAddr::V4(d)) => {
                h.calc_checksum_ipv4_raw(s.octets(), d.octets(), &self.payload)?
            }
            (IpAddr::V6(s), IpAddr::V6(d)) => {
                h.calc_checksum_ipv6_raw(s.octets(), d.octets(), &self.payload)?
            }
            _ => bail!("mixed address families: {} -> {}", self.src, self.dst),
        };
        let mut out = h.to_bytes().to_vec();
        out.extend_from_slice(&self.payload);
        Ok(out)
    }

    /// Parses an IP packet (network header first, as AF_PACKET/SOCK_DGRAM delivers it);
    /// None for anything that is not TCP.
    pub fn parse(packet: &[u8]) -> Option<Segment> {
        let p = SlicedPacket::from_ip(packet).ok()?;
        let (s, d): (IpAddr, IpAddr) = match p.net? {
            NetSlice::Ipv4(ip) => (
                ip.header().source_addr().into(),
                ip.header().destination_addr().into(),
            ),
            NetSlice::Ipv6(ip) => (
                ip.header().source_addr().into(),
                ip.header().destination_addr().into(),
            ),
            NetSlice::Arp(_) => return None,
        };
        let Some(TransportSlice::Tcp(t)) = p.transport else {
            return None;
        };
        let ts = t.options_iterator().find_map(|o| match o {
            Ok(TcpOptionElement::Timestamp(v, e)) => Some((v, e)),
            _ => None,
        });
        let flags = [
            (t.fin(), FIN),
            (t.syn(), SYN),
            (t.rst(), RST),
            (t.psh(), PSH),
            (t.ack(), ACK),
        ]
        .iter()
        .filter(|(set, _)| *set)
        .fold(0, |acc, (_, f)| acc | f);
        Some(Segment {
            src: SocketAddr::new(s, t.source_port()),
            dst: SocketAddr::new(d, t.destination_port()),
            flags,
            seq: t.sequence_number(),
            ack: t.acknowledgment_number(),
            window: t.window_size(),
            ts,
            payload: t.payload().to_vec(),
        })
    }
}

fn cvt(ret: libc::c_int) -> io::Result<libc::c_int> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

/// Sends `seg` from a raw socket in namespace `ns`, bound to `seg.src`'s address (the address
/// must exist in `ns`). Returns once the kernel took the packet; the peer's reaction is
/// asynchronous: wait for it with a [`Capture`].
pub fn send_segment(ns: &str, seg: &Segment) -> Result<()> {
    let bytes = seg.encode()?;
    let seg = seg.clone();
    try_in_netns(ns, move || -> Result<()> {
        let domain = if seg.src.is_ipv4() {
            libc::AF_INET
        } else {
            libc::AF_INET6
        };
        // SAFETY: plain syscall; the fd is owned by the OwnedFd right below.
        let fd = cvt(unsafe {
            libc::socket(
                domain,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                libc::IPPROTO_TCP,
            )
        })
        .context("socket(SOCK_RAW, IPPROTO_TCP)")?;
        // SAFETY: fd was just returned by socket() and is owned by nobody else.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        // Port 0 in both addresses: raw sockets have no ports; a non-zero sin6_port would even
        // be read as a protocol number.
        sys::bind(&fd, &SocketAddr::new(seg.src.ip(), 0))
            .with_context(|| format!("bind raw socket to {}", seg.src.ip()))?;
        let (sa, len) = sys::sockaddr(&SocketAddr::new(seg.dst.ip(), 0));
        // SAFETY: bytes and sa are valid for the lengths passed.
        let n = cvt(unsafe {
            libc::sendto(
                fd.as_raw_fd(),
                bytes.as_ptr().cast(),
                bytes.len(),
                0,
                (&raw const sa).cast(),
                len,
            ) as libc::c_int
        })
        .with_context(|| format!("sendto {}", seg.dst))?;
        ensure!(
            n as usize == bytes.len(),
            "short raw send: {n} of {}",
            bytes.len()
        );
        Ok(())
    })?
}

/// A SYN from `src` to `dst` sent from namespace `ns` (see [`Segment::syn`]).
pub fn send_syn(
    ns: &str,
    src: SocketAddr,
    dst: SocketAddr,
    seq: u32,
    tsval: Option<u32>,
    tsecr: u32,
) -> Result<()> {
    send_segment(ns, &Segment::syn(src, dst, seq, tsval, tsecr))
}

/// Every TCP segment seen on one interface of one namespace (both directions) since
/// [`Capture::start`], in order. The kernel queues packets on the socket until read (a few
/// hundred small segments fit the default buffer; beyond that it drops), so a capture may be
/// read after the fact as long as the traffic is small.
pub struct Capture {
    fd: OwnedFd,
    log: Vec<Segment>,
}

impl Capture {
    /// Captures on `ifname` (normally [`VETH`]) inside `ns`.
    pub fn start(ns: &str, ifname: &str) -> Result<Capture> {
        let name = std::ffi::CString::new(ifname)?;
        let fd = try_in_netns(ns, move || -> Result<OwnedFd> {
            // SAFETY: name is a valid C string.
            let ifindex = unsafe { libc::if_nametoindex(name.as_ptr()) };
            ensure!(ifindex != 0, "no interface {name:?}");
            // Protocol 0 at socket(): no packet is queued before bind() limits the socket to
            // this one interface.
            // SAFETY: plain syscall; the fd is owned by the OwnedFd below.
            let fd = cvt(unsafe {
                libc::socket(
                    libc::AF_PACKET,
                    libc::SOCK_DGRAM | libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK,
                    0,
                )
            })
            .context("socket(AF_PACKET)")?;
            // SAFETY: fd was just returned by socket() and is owned by nobody else.
            let fd = unsafe { OwnedFd::from_raw_fd(fd) };
            // SAFETY: sockaddr_ll is plain old data; all-zero is valid.
            let mut sll: libc::sockaddr_ll = unsafe { mem::zeroed() };
            sll.sll_family = libc::AF_PACKET as u16;
            sll.sll_protocol = (libc::ETH_P_ALL as u16).to_be();
            sll.sll_ifindex = ifindex as i32;
            // SAFETY: sll is a valid sockaddr_ll of the size passed.
            cvt(unsafe {
                libc::bind(
                    fd.as_raw_fd(),
                    (&raw const sll).cast(),
                    mem::size_of::<libc::sockaddr_ll>() as u32,
                )
            })
            .context("bind(AF_PACKET)")?;
            Ok(fd)
        })??;
        Ok(Capture {
            fd,
            log: Vec::new(),
        })
    }

    /// Moves everything the kernel queued into the log.
    fn drain(&mut self) -> Result<()> {
        let mut buf = vec![0u8; 65536];
        loop {
            // SAFETY: buf is writable for its length.
            let n = unsafe {
                libc::recv(
                    self.fd.as_raw_fd(),
                    buf.as_mut_ptr().cast(),
                    buf.len(),
                    libc::MSG_DONTWAIT,
                )
            };
            if n < 0 {
                let e = io::Error::last_os_error();
                match e.kind() {
                    io::ErrorKind::WouldBlock => return Ok(()),
                    io::ErrorKind::Interrupted => continue,
                    _ => return Err(e).context("recv(AF_PACKET)"),
                }
            }
            if let Some(s) = Segment::parse(&buf[..n as usize]) {
                self.log.push(s);
            }
        }
    }

    /// All segments so far, in wire order.
    pub fn segments(&mut self) -> Result<&[Segment]> {
        self.drain()?;
        Ok(&self.log)
    }

    /// Number of segments so far: a mark for [`Capture::wait_for`].
    pub fn mark(&mut self) -> Result<usize> {
        Ok(self.segments()?.len())
    }

    /// The first segment at index >= `from` that matches `pred`, waiting up to `timeout`.
    pub fn wait_for(
        &mut self,
        from: usize,
        timeout: Duration,
        pred: impl Fn(&Segment) -> bool,
    ) -> Result<Option<Segment>> {
        let deadline = Instant::now() + timeout;
        loop {
            self.drain()?;
            if let Some(s) = self.log.iter().skip(from).find(|s| pred(s)) {
                return Ok(Some(s.clone()));
            }
            let Some(left) = deadline.checked_duration_since(Instant::now()) else {
                return Ok(None);
            };
            sys::poll_readable(self.fd.as_raw_fd(), left.min(Duration::from_millis(50)))?;
        }
    }
}

/// Runs `nft -f -` with `script` inside namespace `ns`.
pub fn nft(ns: &str, script: &str) -> Result<()> {
    use std::io::Write as _;
    let mut child = Command::new("ip")
        .args(["netns", "exec", ns, "nft", "-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .context("spawning nft (apt package nftables)")?;
    child
        .stdin
        .take()
        .expect("piped")
        .write_all(script.as_bytes())?;
    let out = child.wait_with_output()?;
    ensure!(
        out.status.success(),
        "nft in {ns} failed ({}): {}\nscript:\n{script}",
        out.status,
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(())
}

/// An nftables `inet` table `table` in namespace `ns` whose output chain holds `rule`; removed
/// on drop (and with the namespace).
pub struct NftOutputRule {
    ns: String,
    table: &'static str,
}

impl NftOutputRule {
    pub fn install(ns: &str, table: &'static str, rule: &str) -> Result<NftOutputRule> {
        nft(
            ns,
            &format!(
                "table inet {table} {{
                   chain out {{
                     type filter hook output priority 0; policy accept;
                     {rule}
                   }}
                 }}"
            ),
        )?;
        Ok(NftOutputRule {
            ns: ns.to_owned(),
            table,
        })
    }
}

impl Drop for NftOutputRule {
    fn drop(&mut self) {
        if super::netns::netns_exists(&self.ns) {
            let _ = nft(&self.ns, &format!("delete table inet {}", self.table));
        }
    }
}

/// Drops every RST that namespace `ns` sends while alive, so the kernel's answers to replies
/// for crafted 4-tuples cannot kill the peer's TIME-WAIT (RFC 1337 "TIME-WAIT assassination").
/// An nftables output rule rather than tcp_rfc1337=1 on the peer: the peer's TIME-WAIT then
/// behaves exactly as with the default sysctl. Removed on drop (and with the namespace).
pub struct RstBlock {
    _rule: NftOutputRule,
}

impl RstBlock {
    pub fn install(ns: &str) -> Result<RstBlock> {
        let rule = NftOutputRule::install(ns, "tw_rstblock", "tcp flags & rst == rst drop")?;
        Ok(RstBlock { _rule: rule })
    }
}

/// The counter a PAWS reject by a TIME-WAIT socket increments on this kernel:
/// TcpExtPAWSTimewait (6.16+), before that TcpExtPAWSEstab.
pub fn tw_paws_counter(counters: &std::collections::BTreeMap<String, u64>) -> &'static str {
    if counters.contains_key("TcpExtPAWSTimewait") {
        "TcpExtPAWSTimewait"
    } else {
        "TcpExtPAWSEstab"
    }
}

/// Delta of [`tw_paws_counter`] between two snapshots.
pub fn tw_paws_delta(
    before: &std::collections::BTreeMap<String, u64>,
    after: &std::collections::BTreeMap<String, u64>,
) -> u64 {
    try_delta(before, after, tw_paws_counter(after))
        .expect("PAWS counter present in both snapshots")
}

/// `ts_recent - tsval` as the kernel compares them (s32): positive = `tsval` is older.
pub fn regression(ts_recent: u32, tsval: u32) -> i32 {
    ts_recent.wrapping_sub(tsval) as i32
}

/// The TSval that is `regression` ticks older than `ts_recent` (negative = newer).
pub fn tsval_with_regression(ts_recent: u32, regression: i32) -> u32 {
    ts_recent.wrapping_sub(regression as u32)
}
