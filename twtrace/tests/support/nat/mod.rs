//! A NAT topology that reproduces the classic PAWS failure deterministically (README, "PAWS
//! and NAT"): K client namespaces on one private subnet behind a router
//! namespace that SNATs them to ONE public address, with the source port forced per
//! connection, so two clients can take turns on the same public 4-tuple while the server still
//! holds the first one's TIME-WAIT.
//!
//! ```text
//!  client i: veth0 192.168.(i+1).1..16/16 ── lan<i> ─┐
//!                                                    br0 192.168.0.1/16  router  veth0 10.X.Y.2
//!  client j: ...                           ── lan<j> ─┘                  (public)     │
//!                                                              server veth0 10.X.Y.1:SERVER_PORT
//! ```
//! The server/router link is a [`NetnsPair`] (server = its server side, router = its client
//! side), so the public subnet is unique among the pairs of this process.
//!
//! Determinism, piece by piece:
//! - Forced public port: an nftables map `(private ip . private port) -> public port` feeds
//!   `snat to PUBLIC:port`; [`NatLab::connect_from`] sets the element before connecting.
//! - Port reuse at the router: conntrack's TIME_WAIT/CLOSE timeouts are 1 s there, and the
//!   scenario waits until the previous entry for the public port is gone from
//!   /proc/net/nf_conntrack (listing it also reaps it), so the next client's SYN creates a fresh
//!   entry on the same public port. The server's TIME-WAIT (60 s) is still there.
//! - Timestamp order: TSval = ms clock + an offset hashed with a per-boot secret (not per
//!   netns) from the 4-tuple (this kernel) or from the address pair (kernels 4.11 .. early 2026).
//!   Before a connection, TCP_FASTOPEN_CONNECT + TCP_FASTOPEN_NO_COOKIE make connect() compute
//!   the offset but defer the SYN, and getsockopt(TCP_TIMESTAMP) returns clock + offset without
//!   a packet sent. The offset depends only on the addresses and ports, so a later plain
//!   connect() from the same local address uses it too. Each client has 16 private addresses:
//!   trying addresses (old kernels) and ports (new ones) for B picks a local address whose TSval
//!   is older (or newer) than A's by a wide margin. The probe is read from B's own namespace
//!   right before use, so it holds for this boot whatever the secret.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Shutdown, SocketAddr};
use std::os::fd::AsRawFd;
use std::process::Command;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU16, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, ensure};

use super::netns::{NetnsPair, VETH, cleanup_stale, ip, try_in_netns};
use super::proc::{TcpState, sysctl, tcp_sockets};
use super::raw::{FIN, SYN, nft};
use super::sys;
use super::traffic::{IO_TIMEOUT, Server};

mod scenario;
pub use scenario::{Scenario, ScenarioReport, TsOrder};

pub const MAX_CLIENTS: usize = 8;
/// Where the lab's [`Server`] listens.
pub const SERVER_PORT: u16 = 8080;
/// Private addresses per client (see `client_addr`).
pub const ADDRS_PER_CLIENT: u8 = 16;
/// Private source port of client A in the scenario; B's local address is picked among its
/// addresses and `B_PORTS`.
const A_PORT: u16 = 40000;
const B_PORTS: std::ops::Range<u16> = 40100..40104;
/// How far apart A's and B's TSvals must be: far beyond any delay inside a scenario, far from
/// the s32 wrap. A candidate passes with probability ~1/2 (random offsets): 64 candidates here,
/// 16 independent ones on kernels whose offset ignores ports; both practically never all fail.
const TS_MARGIN: i32 = 60_000;
const ROUTER_LAN: Ipv4Addr = Ipv4Addr::new(192, 168, 0, 1);
const CONNTRACK_TIMEOUT_S: &str = "1";

const TCP_TIMESTAMP: libc::c_int = 24;
const TCP_FASTOPEN_CONNECT: libc::c_int = 30;
const TCP_FASTOPEN_NO_COOKIE: libc::c_int = 34;

/// The lab. Dropping it stops the server and deletes every namespace, also during a panic.
pub struct NatLab {
    // Field order is drop order: the server first, the pair (server + router) last.
    server: Option<Server>,
    clients: Vec<String>,
    pair: NetnsPair,
    /// Installed map elements, so that a changed mapping is deleted before it is re-added.
    mappings: Mutex<BTreeMap<SocketAddr, u16>>,
    next_public_port: AtomicU16,
}

/// One connection through the NAT (the server closes first, so on success the server holds a
/// TIME-WAIT for `public` when this is returned).
#[derive(Clone, Debug)]
pub struct NatConn {
    pub client: usize,
    pub private: SocketAddr,
    /// The address the server sees: public IP and the forced port.
    pub public: SocketAddr,
    /// Ok, or the errno of the failing step (connect timeout: EINPROGRESS through SO_SNDTIMEO).
    pub result: std::result::Result<(), i32>,
    pub failed_at: Option<&'static str>,
    /// Time connect() took (the PAWS reject + RST + fast SYN retransmit shows up here).
    pub connect_time: Duration,
    pub elapsed: Duration,
}

impl NatConn {
    pub fn is_ok(&self) -> bool {
        self.result.is_ok()
    }
}

/// Private address `k` (0 = primary) of client `i`: 192.168.(i+1).(k+1).
fn client_addr(i: usize, k: u8) -> Ipv4Addr {
    Ipv4Addr::new(192, 168, i as u8 + 1, k + 1)
}

impl NatLab {
    /// Creates the server, router and `clients` client namespaces (`tw-<tag>-<pid>-srv`,
    /// `-cli` for the router, `tw-<tag>.c<i>-<pid>-cli`) and starts a [`Server`] on
    /// [`SERVER_PORT`]. Stale namespaces of crashed runs with this tag are removed first.
    pub fn new(tag: &str, clients: usize) -> Result<NatLab> {
        ensure!(
            (1..=MAX_CLIENTS).contains(&clients),
            "1..={MAX_CLIENTS} clients"
        );
        for i in 0..MAX_CLIENTS {
            cleanup_stale(&format!("{tag}.c{i}"))?;
        }
        let pair = NetnsPair::new(tag)?;
        let mut lab = NatLab {
            server: None,
            clients: Vec::new(),
            pair,
            mappings: Mutex::new(BTreeMap::new()),
            next_public_port: AtomicU16::new(50000),
        };
        let pid = std::process::id();
        for i in 0..clients {
            let ns = format!("tw-{tag}.c{i}-{pid}-cli");
            ip(&["netns", "add", &ns])?;
            lab.clients.push(ns);
        }
        lab.setup_router()?;
        for i in 0..clients {
            lab.setup_client(i)?;
        }
        lab.wait_links_up()?;
        let addr = SocketAddr::new(lab.pair.server_v4(), SERVER_PORT);
        lab.server = Some(Server::start(lab.server_ns(), addr)?);
        Ok(lab)
    }

    fn setup_router(&self) -> Result<()> {
        let r = self.router_ns();
        ip(&["-n", r, "link", "add", "br0", "type", "bridge"])?;
        ip(&[
            "-n",
            r,
            "addr",
            "add",
            &format!("{ROUTER_LAN}/16"),
            "dev",
            "br0",
        ])?;
        ip(&["-n", r, "link", "set", "br0", "up"])?;
        sysctl(r, "net.ipv4.ip_forward", "1")?;
        let public = self.public_ip();
        // The map miss falls through to plain masquerade, so unmapped traffic still works.
        nft(
            r,
            &format!(
                "table ip tw_nat {{
                   map pubport {{ type ipv4_addr . inet_service : inet_service; }}
                   chain post {{
                     type nat hook postrouting priority srcnat; policy accept;
                     oifname \"{VETH}\" ip saddr 192.168.0.0/16 meta l4proto tcp \
                       snat ip to {public} : ip saddr . tcp sport map @pubport
                     oifname \"{VETH}\" ip saddr 192.168.0.0/16 masquerade
                   }}
                 }}"
            ),
        )?;
        // Per-netns conntrack sysctls (present once the nat table made conntrack active).
        for state in ["time_wait", "close"] {
            sysctl(
                r,
                &format!("net.netfilter.nf_conntrack_tcp_timeout_{state}"),
                CONNTRACK_TIMEOUT_S,
            )?;
        }
        Ok(())
    }

    fn setup_client(&self, i: usize) -> Result<()> {
        let (r, c) = (self.router_ns(), self.clients[i].as_str());
        let lan = format!("lan{i}");
        ip(&[
            "-n", r, "link", "add", &lan, "type", "veth", "peer", "name", VETH, "netns", c,
        ])?;
        ip(&["-n", r, "link", "set", &lan, "master", "br0"])?;
        ip(&["-n", r, "link", "set", &lan, "up"])?;
        // One `ip -batch` for the 16 addresses and the rest: a process per line adds up.
        let mut cmds: Vec<String> = (0..ADDRS_PER_CLIENT)
            .map(|k| format!("addr add {}/16 dev {VETH}", client_addr(i, k)))
            .collect();
        cmds.extend([
            "link set lo up".to_owned(),
            format!("link set {VETH} up"),
            format!("route add default via {ROUTER_LAN}"),
        ]);
        ip_batch(c, &cmds.join("\n"))
    }

    /// Waits until every link reports UP (carrier state follows asynchronously, see NetnsPair).
    fn wait_links_up(&self) -> Result<()> {
        let mut links: Vec<(String, String)> = self
            .clients
            .iter()
            .map(|c| (c.clone(), VETH.to_owned()))
            .collect();
        links.push((self.router_ns().to_owned(), "br0".to_owned()));
        links.extend(
            (0..self.clients.len()).map(|i| (self.router_ns().to_owned(), format!("lan{i}"))),
        );
        let deadline = Instant::now() + Duration::from_secs(5);
        for (ns, dev) in links {
            loop {
                let out = Command::new("ip")
                    .args(["-n", &ns, "-o", "link", "show", &dev])
                    .output()?;
                let s = String::from_utf8_lossy(&out.stdout);
                if s.contains("state UP") && s.contains("LOWER_UP") {
                    break;
                }
                ensure!(
                    Instant::now() < deadline,
                    "{dev} in {ns} did not come up: {}",
                    s.trim()
                );
                thread::sleep(Duration::from_millis(5));
            }
        }
        Ok(())
    }

    pub fn server_ns(&self) -> &str {
        self.pair.server_ns()
    }
    pub fn router_ns(&self) -> &str {
        self.pair.client_ns()
    }
    pub fn client_ns(&self, i: usize) -> &str {
        &self.clients[i]
    }
    pub fn clients(&self) -> usize {
        self.clients.len()
    }
    /// The router's address on the server side: every client appears as this address.
    pub fn public_ip(&self) -> IpAddr {
        self.pair.client_v4()
    }
    /// Client `i`'s primary private address.
    pub fn client_ip(&self, i: usize) -> IpAddr {
        client_addr(i, 0).into()
    }
    /// All of client `i`'s private addresses (the primary first).
    pub fn client_addrs(&self, i: usize) -> Vec<IpAddr> {
        (0..ADDRS_PER_CLIENT)
            .map(|k| client_addr(i, k).into())
            .collect()
    }
    /// The client that owns private address `ip`.
    fn client_of(&self, ip: IpAddr) -> Result<usize> {
        (0..self.clients())
            .find(|&i| self.client_addrs(i).contains(&ip))
            .ok_or_else(|| anyhow!("{ip} is no client address of this lab"))
    }
    pub fn server_addr(&self) -> SocketAddr {
        self.server
            .as_ref()
            .expect("server runs while the lab lives")
            .addr()
    }
    pub fn server(&self) -> &Server {
        self.server
            .as_ref()
            .expect("server runs while the lab lives")
    }
    /// A public port no earlier scenario of this lab used (so no TIME-WAIT of an earlier run
    /// sits on it at the server).
    pub fn fresh_public_port(&self) -> u16 {
        self.next_public_port.fetch_add(1, Ordering::SeqCst)
    }

    /// Makes the router translate connections from `private` (a client's address and port)
    /// to `public_port` on the public address (conntrack keeps existing ones as they are).
    pub fn set_mapping(&self, private: SocketAddr, public_port: u16) -> Result<()> {
        let mut m = self.mappings.lock().unwrap();
        let key = format!("{} . {}", private.ip(), private.port());
        match m.get(&private) {
            Some(&p) if p == public_port => return Ok(()),
            Some(_) => nft(
                self.router_ns(),
                &format!("delete element ip tw_nat pubport {{ {key} }}"),
            )?,
            None => {}
        }
        nft(
            self.router_ns(),
            &format!("add element ip tw_nat pubport {{ {key} : {public_port} }}"),
        )?;
        m.insert(private, public_port);
        Ok(())
    }

    /// The TSval a SYN from `local` (a client address and port) to the server would carry
    /// right now, read without sending anything (TCP_FASTOPEN_CONNECT defers the SYN; see the
    /// module doc). The kernel clears the low bit for ms-resolution sockets: exact to 1 tick.
    pub fn syn_tsval_now(&self, local: SocketAddr) -> Result<u32> {
        let (ns, server) = (
            self.client_ns(self.client_of(local.ip())?),
            self.server_addr(),
        );
        // Seen once in about a hundred runs (2026-12-03, 6.18): the second probe from a port
        // got EADDRNOTAVAIL at connect, as if the first probe's socket still held the
        // 4-tuple. A few short retries, said on stderr, keep that from failing a suite.
        let mut tries = 0;
        loop {
            match self.probe_tsval(ns, server, local) {
                Err(e) if tries < 5 && is_addr_not_avail(&e) => {
                    tries += 1;
                    eprintln!("syn_tsval_now({local}): {e:#}; retry {tries}");
                    std::thread::sleep(std::time::Duration::from_millis(20));
                }
                r => return r,
            }
        }
    }

    fn probe_tsval(&self, ns: &str, server: SocketAddr, local: SocketAddr) -> Result<u32> {
        try_in_netns(ns, move || -> Result<u32> {
            let fd = sys::tcp_socket(&server)?;
            sys::set_reuseaddr(&fd)?;
            sys::bind(&fd, &local).with_context(|| format!("bind {local}"))?;
            for opt in [TCP_FASTOPEN_CONNECT, TCP_FASTOPEN_NO_COOKIE] {
                super::sys::setsockopt(fd.as_raw_fd(), libc::IPPROTO_TCP, opt, &1).with_context(
                    || format!("TCP option {opt} (net.ipv4.tcp_fastopen needs bit 1)"),
                )?;
            }
            sys::connect(&fd, &server).context("deferred connect")?;
            ensure!(
                sys::tcp_state(fd.as_raw_fd())? == 2,
                "connect() was not deferred (not SYN_SENT)"
            );
            let mut v: u32 = 0;
            let mut len = std::mem::size_of::<u32>() as libc::socklen_t;
            // SAFETY: v is writable for len bytes.
            let r = unsafe {
                libc::getsockopt(
                    fd.as_raw_fd(),
                    libc::IPPROTO_TCP,
                    TCP_TIMESTAMP,
                    (&raw mut v).cast(),
                    &mut len,
                )
            };
            ensure!(r == 0, "TCP_TIMESTAMP: {}", std::io::Error::last_os_error());
            // Closing a socket whose SYN was deferred sends nothing.
            Ok(v)
        })?
    }

    /// One connection from client `client`'s primary address and `private_port`, translated
    /// to `public_port`; see [`NatLab::connect_from_addr`].
    pub fn connect_from(
        &self,
        client: usize,
        private_port: u16,
        public_port: u16,
        timeout: Duration,
    ) -> Result<NatConn> {
        self.connect_from_addr(
            SocketAddr::new(self.client_ip(client), private_port),
            public_port,
            timeout,
        )
    }

    /// One connection from `private` (a client's address and port), translated to
    /// `public_port`, the server closing first. On success waits (bounded by IO_TIMEOUT) until
    /// the server's TIME-WAIT for the public 4-tuple exists. `timeout` bounds connect() and
    /// each read.
    pub fn connect_from_addr(
        &self,
        private: SocketAddr,
        public_port: u16,
        timeout: Duration,
    ) -> Result<NatConn> {
        let client = self.client_of(private.ip())?;
        self.set_mapping(private, public_port)?;
        let public = SocketAddr::new(self.public_ip(), public_port);
        let server = self.server_addr();
        let mut conn = try_in_netns(self.client_ns(client), move || {
            one_connection(private, server, timeout)
        })?;
        (conn.client, conn.public) = (client, public);
        if conn.is_ok() {
            self.wait_server_tw(public)?;
        }
        Ok(conn)
    }

    fn wait_server_tw(&self, public: SocketAddr) -> Result<()> {
        let (deadline, server) = (Instant::now() + IO_TIMEOUT, self.server_addr());
        loop {
            let tw = tcp_sockets(self.server_ns())?
                .iter()
                .any(|e| e.state == TcpState::TimeWait && e.local == server && e.remote == public);
            if tw {
                return Ok(());
            }
            ensure!(
                Instant::now() < deadline,
                "no server TIME-WAIT for {public} within {IO_TIMEOUT:?}"
            );
            thread::sleep(Duration::from_millis(1));
        }
    }

    /// Waits until the router's conntrack table has no entry on `public_port` any more, so a
    /// new SYN can be translated to that port again. Reading the table removes expired entries.
    pub fn wait_conntrack_gone(&self, public_port: u16, timeout: Duration) -> Result<Duration> {
        let (t0, srv) = (Instant::now(), self.server_addr());
        let needle = format!(
            "src={} dst={} sport={} dport={public_port} ",
            srv.ip(),
            self.public_ip(),
            srv.port()
        );
        loop {
            let table = try_in_netns(self.router_ns(), || {
                std::fs::read_to_string("/proc/thread-self/net/nf_conntrack")
            })??;
            if !table.contains(&needle) {
                return Ok(t0.elapsed());
            }
            ensure!(
                t0.elapsed() < timeout,
                "conntrack entry for public port {public_port} still there after {timeout:?}"
            );
            thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for NatLab {
    fn drop(&mut self) {
        drop(self.server.take());
        for ns in self.clients.drain(..).rev() {
            if let Err(e) = ip(&["netns", "delete", &ns]) {
                eprintln!("warning: could not delete netns {ns}: {e:#}");
            }
        }
        // self.pair deletes the server and router namespaces after this.
    }
}

/// `ip -n <ns> -batch -` with one command per line.
fn ip_batch(ns: &str, cmds: &str) -> Result<()> {
    use std::io::Write as _;
    let mut child = Command::new("ip")
        .args(["-n", ns, "-batch", "-"])
        .stdin(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .context("spawning ip -batch")?;
    child
        .stdin
        .take()
        .expect("piped")
        .write_all(cmds.as_bytes())?;
    let out = child.wait_with_output()?;
    ensure!(
        out.status.success(),
        "ip -n {ns} -batch failed: {}\n{cmds}",
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(())
}

/// Client side of the traffic module's protocol with policy `S` (server closes first): send
/// `S`, read the echo and EOF, send our FIN and wait until it is acknowledged (CLOSE).
fn one_connection(private: SocketAddr, server: SocketAddr, timeout: Duration) -> NatConn {
    let start = Instant::now();
    let mut connect_time = Duration::ZERO;
    let (result, failed_at) =
        match connect_and_exchange(private, server, timeout, &mut connect_time) {
            Ok(()) => (Ok(()), None),
            Err((stage, e)) => (Err(e.raw_os_error().unwrap_or(libc::EIO)), Some(stage)),
        };
    NatConn {
        client: 0,
        private,
        public: private,
        result,
        failed_at,
        connect_time,
        elapsed: start.elapsed(),
    }
}

fn connect_and_exchange(
    private: SocketAddr,
    server: SocketAddr,
    timeout: Duration,
    connect_time: &mut Duration,
) -> std::result::Result<(), (&'static str, std::io::Error)> {
    use std::io::{Read as _, Write as _};
    let at = |stage| move |e| (stage, e);
    let fd = sys::tcp_socket(&server).map_err(at("socket"))?;
    sys::set_timeouts(&fd, timeout).map_err(at("socket"))?;
    sys::set_reuseaddr(&fd)
        .and_then(|_| sys::bind(&fd, &private))
        .map_err(at("bind"))?;
    let t = Instant::now();
    let r = sys::connect(&fd, &server);
    *connect_time = t.elapsed();
    r.map_err(at("connect"))?;
    let mut s = sys::into_stream(fd);
    let mut buf = [0u8; 64];
    s.write_all(b"S").map_err(at("exchange"))?;
    s.read_exact(&mut buf[..1]).map_err(at("exchange"))?;
    while s.read(&mut buf).map_err(at("exchange"))? > 0 {}
    s.shutdown(Shutdown::Write).map_err(at("close"))?;
    let deadline = Instant::now() + timeout;
    while sys::tcp_state(s.as_raw_fd()).map_err(at("close"))? != sys::TCP_CLOSE {
        if Instant::now() > deadline {
            return Err(("close", std::io::Error::from_raw_os_error(libc::ETIMEDOUT)));
        }
        thread::sleep(Duration::from_micros(50));
    }
    Ok(())
}

/// Whether `e` (or an error it wraps) is EADDRNOTAVAIL.
fn is_addr_not_avail(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.raw_os_error() == Some(libc::EADDRNOTAVAIL))
    })
}
