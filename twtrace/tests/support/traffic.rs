//! Bounded TCP traffic between the two namespaces of a pair, shaped so that each connection
//! leaves exactly one TIME-WAIT socket on the side the test chose.
//!
//! Wire protocol: the client sends one policy byte (`S` = server closes first, `C` = client
//! closes first), the server answers one byte, then:
//! - `S`: the server shuts down its write side and closes at once (FIN first, socket orphaned,
//!   as a real server does). The client reads EOF, sends its FIN and waits until that FIN is
//!   acknowledged (its socket reaches CLOSE from LAST_ACK). No TIME-WAIT on the client.
//! - `C`: the client shuts down its write side and reads until the server's FIN; when that read
//!   returns EOF the client socket is already in TIME-WAIT. The server read EOF and closed, so
//!   it ends in LAST_ACK -> CLOSED.
//!
//! Then the client also waits until the server's handler has returned from close() (through an
//! in-process registry of running [`Server`]s). Both waits are needed for "the TIME-WAIT exists
//! when connect_many returns": if the client's FIN reaches the server while the server thread
//! still holds the socket lock inside close(), the kernel processes it in that thread's
//! release_sock() and sends the ACK *before* calling tcp_time_wait(), so the client can see its
//! ACK while the server's TIME-WAIT socket does not exist yet (seen under parallel load). In
//! every other case the ACK is delivered only after tcp_time_wait() has run.
//!
//! Both sides always consume everything the peer sent before closing: closing with unread data
//! sends a RST instead of a FIN, and no TIME-WAIT would appear at all. FINs are sent with
//! shutdown() rather than left to close(), because a concurrent test's fork can hold a copy of
//! the fd for a moment and then close() alone sends nothing.

use std::collections::HashMap;
use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, Weak};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};

use super::netns::{enter_netns, open_netns, try_in_netns};
use super::proc::tw_count;
use super::sys;

/// Which side closes first, and so which side holds the TIME-WAIT socket afterwards.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CloseFirst {
    /// The server closes first: the TIME-WAIT socket is on the server.
    Server,
    /// The client closes first: the TIME-WAIT socket is on the client.
    Client,
}

impl CloseFirst {
    fn byte(self) -> u8 {
        match self {
            CloseFirst::Server => b'S',
            CloseFirst::Client => b'C',
        }
    }
}

/// Socket timeout for every harness socket: generous for a veth, short enough that a hung
/// handshake fails a test instead of hanging it.
pub const IO_TIMEOUT: Duration = Duration::from_secs(5);
/// Upper bound on bytes a server handler drains before giving up on a misbehaving client.
const MAX_DRAIN: usize = 1 << 20;
/// Upper bound on handler threads alive at once; beyond it the server closes new connections.
const MAX_HANDLERS: usize = 1024;

/// Counters the server keeps, readable while it runs.
#[derive(Debug, Default)]
pub struct ServerStats {
    pub accepted: AtomicU64,
    pub completed: AtomicU64,
    pub failed: AtomicU64,
}

/// Per-peer count of connections the server finished (ok + failed), so that a client can wait
/// for "the server has closed *my* connection" even when other clients use the same server.
#[derive(Debug, Default)]
struct Finished {
    by_peer: Mutex<HashMap<SocketAddr, (u64, u64)>>,
    changed: Condvar,
}

impl Finished {
    fn record(&self, peer: SocketAddr, ok: bool) {
        let mut m = self.by_peer.lock().unwrap();
        let e = m.entry(peer).or_default();
        if ok {
            e.0 += 1
        } else {
            e.1 += 1
        }
        self.changed.notify_all();
    }
    fn get(&self, peer: SocketAddr) -> (u64, u64) {
        self.by_peer
            .lock()
            .unwrap()
            .get(&peer)
            .copied()
            .unwrap_or_default()
    }
    /// Waits until `peer` has more finished connections than `before`; Some(ok) when it has.
    fn wait_past(&self, peer: SocketAddr, before: (u64, u64), timeout: Duration) -> Option<bool> {
        let deadline = Instant::now() + timeout;
        let mut m = self.by_peer.lock().unwrap();
        loop {
            let now = m.get(&peer).copied().unwrap_or_default();
            if now.1 > before.1 {
                return Some(false);
            }
            if now.0 > before.0 {
                return Some(true);
            }
            let left = deadline.checked_duration_since(Instant::now())?;
            m = self.changed.wait_timeout(m, left).unwrap().0;
        }
    }
}

/// Running servers of this process by bound address (NetnsPair keeps subnets distinct among
/// live pairs, so an address names one server). Weak: the Server owns its state.
static SERVERS: Mutex<Vec<(SocketAddr, Weak<Finished>)>> = Mutex::new(Vec::new());

fn registered(addr: SocketAddr) -> Option<Arc<Finished>> {
    let servers = SERVERS.lock().unwrap();
    servers
        .iter()
        .rev()
        .find(|(a, _)| *a == addr)
        .and_then(|(_, w)| w.upgrade())
}

/// A listener thread inside a namespace; each accepted connection is served on its own thread
/// following the policy byte the client sends. Stops (and joins every thread) on drop.
pub struct Server {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    stats: Arc<ServerStats>,
    finished: Arc<Finished>,
    thread: Option<JoinHandle<()>>,
}

impl Server {
    /// Binds `addr` (port 0 picks one; see [`Server::addr`]) inside namespace `ns` with
    /// SO_REUSEADDR and starts accepting. Fails if the bind fails.
    pub fn start(ns: &str, addr: SocketAddr) -> Result<Server> {
        let file = open_netns(ns)?;
        let stop = Arc::new(AtomicBool::new(false));
        let stats = Arc::new(ServerStats::default());
        let finished = Arc::new(Finished::default());
        let (tx, rx) = std::sync::mpsc::channel::<Result<SocketAddr>>();
        let (stop2, stats2, fin2) = (stop.clone(), stats.clone(), finished.clone());
        let thread = thread::Builder::new()
            .name(format!("server-{ns}"))
            .spawn(move || {
                let listener = (|| -> Result<_> {
                    // Threads spawned by this one (the handlers) inherit the namespace, but
                    // they only use already-created sockets, which belong to it regardless.
                    enter_netns(&file)?;
                    drop(file);
                    let fd = sys::tcp_socket(&addr)?;
                    sys::set_reuseaddr(&fd)?;
                    bind_retrying(&fd, &addr)?;
                    sys::listen(&fd, 128)?;
                    let l = sys::into_listener(fd);
                    Ok(l)
                })();
                let listener = match listener {
                    Ok(l) => {
                        let _ = tx.send(l.local_addr().map_err(Into::into));
                        l
                    }
                    Err(e) => {
                        let _ = tx.send(Err(e));
                        return;
                    }
                };
                accept_loop(listener, &stop2, &stats2, &fin2);
            })
            .context("spawning server thread")?;
        let addr = rx
            .recv_timeout(IO_TIMEOUT)
            .map_err(|_| anyhow!("server thread did not report its bind"))??;
        SERVERS
            .lock()
            .unwrap()
            .push((addr, Arc::downgrade(&finished)));
        Ok(Server {
            addr,
            stop,
            stats,
            finished,
            thread: Some(thread),
        })
    }

    /// The bound address (with the real port if 0 was asked).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn stats(&self) -> &ServerStats {
        &self.stats
    }

    /// Connections accepted so far.
    pub fn accepted(&self) -> u64 {
        self.stats.accepted.load(Ordering::SeqCst)
    }

    /// Waits until `n` connections were served to the end (their handler closed the socket).
    pub fn wait_completed(&self, n: u64, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            let done = self.stats.completed.load(Ordering::SeqCst)
                + self.stats.failed.load(Ordering::SeqCst);
            if done >= n {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("server finished {done} of {n} connections within {timeout:?}");
            }
            thread::sleep(Duration::from_millis(2));
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        SERVERS
            .lock()
            .unwrap()
            .retain(|(_, w)| w.strong_count() > 0 && !std::ptr::eq(w.as_ptr(), &*self.finished));
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            // The accept loop polls with a short timeout, so it notices the flag quickly.
            let _ = t.join();
        }
    }
}

/// A listener on a free port of `ip` in namespace `ns`, for a test that accepts itself: bound
/// once to port 0, not to a port found free a moment before (a concurrent test's fork may
/// still hold the socket that found it: its port is then in use).
pub fn listen_free(ns: &str, ip: std::net::IpAddr) -> Result<(SocketAddr, std::net::TcpListener)> {
    try_in_netns(ns, || -> Result<_> {
        let any = SocketAddr::new(ip, 0);
        let fd = sys::tcp_socket(&any)?;
        sys::set_reuseaddr(&fd)?;
        sys::bind(&fd, &any).with_context(|| format!("bind {any}"))?;
        sys::listen(&fd, 128)?;
        let l = sys::into_listener(fd);
        Ok((l.local_addr()?, l))
    })?
}

/// bind() that retries EADDRINUSE for a while: the previous listener on this port may still be
/// referenced by a concurrent test's fork that has not reached exec yet.
fn bind_retrying(fd: &std::os::fd::OwnedFd, addr: &SocketAddr) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        match sys::bind(fd, addr) {
            Ok(()) => return Ok(()),
            Err(e) if e.raw_os_error() == Some(libc::EADDRINUSE) && Instant::now() < deadline => {
                thread::sleep(Duration::from_millis(10));
            }
            Err(e) => return Err(e).with_context(|| format!("bind {addr}")),
        }
    }
}

fn accept_loop(
    listener: std::net::TcpListener,
    stop: &AtomicBool,
    stats: &Arc<ServerStats>,
    finished: &Arc<Finished>,
) {
    let mut handlers: Vec<JoinHandle<()>> = Vec::new();
    // Non-blocking so that a connection that vanished between poll and accept cannot park the
    // loop in accept() past a stop request; accepted sockets do not inherit O_NONBLOCK on Linux.
    if listener.set_nonblocking(true).is_err() {
        return;
    }
    while !stop.load(Ordering::SeqCst) {
        // poll with a short timeout: accepts at once, and checks the stop flag every 50 ms.
        match sys::poll_readable(listener.as_raw_fd(), Duration::from_millis(50)) {
            Ok(true) => {}
            Ok(false) => continue,
            Err(_) => break,
        }
        let Ok((stream, peer)) = listener.accept() else {
            continue;
        };
        stats.accepted.fetch_add(1, Ordering::SeqCst);
        handlers.retain(|h| !h.is_finished());
        if handlers.len() >= MAX_HANDLERS {
            stats.failed.fetch_add(1, Ordering::SeqCst);
            finished.record(peer, false);
            continue;
        }
        let (st, fin) = (stats.clone(), finished.clone());
        let spawned = thread::Builder::new()
            .name("server-conn".into())
            .spawn(move || {
                let ok = serve(stream).is_ok();
                let c = if ok { &st.completed } else { &st.failed };
                c.fetch_add(1, Ordering::SeqCst);
                // After serve() returned, i.e. after close(): see the module doc.
                fin.record(peer, ok);
            });
        match spawned {
            Ok(h) => handlers.push(h),
            Err(_) => {
                stats.failed.fetch_add(1, Ordering::SeqCst);
                finished.record(peer, false);
            }
        }
    }
    // Unhash the listener now even if a concurrent fork still holds a copy of its fd, so the
    // next Server on this port can bind at once.
    let _ = sys::shutdown(listener.as_raw_fd(), libc::SHUT_RDWR);
    drop(listener);
    for h in handlers {
        let _ = h.join();
    }
}

/// Reads until EOF, bounded in bytes and (through SO_RCVTIMEO) in time.
fn drain(stream: &mut TcpStream) -> std::io::Result<()> {
    let mut buf = [0u8; 4096];
    let mut total = 0;
    loop {
        match stream.read(&mut buf) {
            Ok(0) => return Ok(()),
            Ok(n) => {
                total += n;
                if total > MAX_DRAIN {
                    return Err(std::io::Error::other("peer sent too much"));
                }
            }
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}

fn serve(mut stream: TcpStream) -> std::io::Result<()> {
    // Linux does not pass the listener's O_NONBLOCK on to accepted sockets; say so anyway,
    // since the timeouts below only apply to blocking sockets.
    stream.set_nonblocking(false)?;
    stream.set_read_timeout(Some(IO_TIMEOUT))?;
    stream.set_write_timeout(Some(IO_TIMEOUT))?;
    let mut b = [0u8; 1];
    // A client that connects and closes without a byte (e.g. a test's bare connect) is fine:
    // the server then closes second, like policy `C`.
    if stream.read(&mut b)? == 0 {
        return Ok(());
    }
    stream.write_all(&[b[0]])?;
    if b[0] != CloseFirst::Server.byte() {
        drain(&mut stream)?;
    }
    // After `S` this is the first FIN, after `C` the second. ENOTCONN: a client's RST got here
    // first, which the client reports on its side.
    if let Err(e) = stream.shutdown(Shutdown::Write)
        && e.kind() != ErrorKind::NotConnected
    {
        return Err(e);
    }
    drop(stream);
    Ok(())
}

/// What one client connection did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConnOutcome {
    /// Local port the connection used (None when it failed before a port was assigned, e.g.
    /// connect() with EADDRNOTAVAIL on an exhausted ephemeral range).
    pub local_port: Option<u16>,
    /// Ok, or the errno of the first failing step (EADDRNOTAVAIL = 99; a connect that times out
    /// through SO_SNDTIMEO reports EINPROGRESS = 115; a read timeout EAGAIN = 11).
    pub result: std::result::Result<(), i32>,
    /// Which step failed: "socket", "bind", "connect", "exchange", "close" (our FIN was not
    /// acknowledged in time) or "server" (the server's handler failed or did not finish).
    pub failed_at: Option<&'static str>,
    /// Time from socket() to the end of close().
    pub elapsed: Duration,
}

impl ConnOutcome {
    pub fn is_ok(&self) -> bool {
        self.result.is_ok()
    }
    pub fn errno(&self) -> Option<i32> {
        self.result.err()
    }
}

/// Tunables of [`connect_many_opts`].
#[derive(Clone, Debug)]
pub struct ConnectOptions {
    /// SO_RCVTIMEO/SO_SNDTIMEO of each socket, which also bounds connect().
    pub timeout: Duration,
    /// Local address to bind when local ports are given (default: unspecified of the family).
    pub local_ip: Option<std::net::IpAddr>,
}

impl Default for ConnectOptions {
    fn default() -> Self {
        ConnectOptions {
            timeout: IO_TIMEOUT,
            local_ip: None,
        }
    }
}

/// `n` sequential connections from namespace `ns` to `server` with the given close policy.
/// With `local_ports`, connection i binds port `local_ports[i % len]` (SO_REUSEADDR before
/// bind, so a port the client still holds in TIME-WAIT can be bound again). Each connection
/// returns only once its TIME-WAIT socket exists on the chosen side. Failures are recorded per
/// connection and the run continues; only harness errors (namespace) are an `Err`.
/// The wait for the server's side needs the server to be a [`Server`] of this process;
/// against any other listener only the client's side is waited for.
pub fn connect_many(
    ns: &str,
    server: SocketAddr,
    n: usize,
    policy: CloseFirst,
    local_ports: Option<&[u16]>,
) -> Result<Vec<ConnOutcome>> {
    connect_many_opts(
        ns,
        server,
        n,
        policy,
        local_ports,
        &ConnectOptions::default(),
    )
}

/// [`connect_many`] with explicit [`ConnectOptions`].
pub fn connect_many_opts(
    ns: &str,
    server: SocketAddr,
    n: usize,
    policy: CloseFirst,
    local_ports: Option<&[u16]>,
    opts: &ConnectOptions,
) -> Result<Vec<ConnOutcome>> {
    if let Some(p) = local_ports
        && p.is_empty()
    {
        bail!("local_ports given but empty");
    }
    try_in_netns(ns, || {
        (0..n)
            .map(|i| {
                let port = local_ports.map(|p| p[i % p.len()]);
                one_connection(server, policy, port, opts)
            })
            .collect()
    })
}

fn one_connection(
    server: SocketAddr,
    policy: CloseFirst,
    port: Option<u16>,
    opts: &ConnectOptions,
) -> ConnOutcome {
    let start = Instant::now();
    let mut local_port = port;
    let fail = |stage: &'static str, errno: i32, local_port: Option<u16>| ConnOutcome {
        local_port,
        result: Err(errno),
        failed_at: Some(stage),
        elapsed: start.elapsed(),
    };
    // Errors without errno (our own "too much data" and the like) map to EIO.
    let errno = |e: std::io::Error| e.raw_os_error().unwrap_or(libc::EIO);
    let fd = match sys::tcp_socket(&server) {
        Ok(fd) => fd,
        Err(e) => return fail("socket", errno(e), local_port),
    };
    if let Err(e) = sys::set_timeouts(&fd, opts.timeout) {
        return fail("socket", errno(e), local_port);
    }
    if let Some(p) = port {
        let ip = opts.local_ip.unwrap_or(if server.is_ipv4() {
            std::net::Ipv4Addr::UNSPECIFIED.into()
        } else {
            std::net::Ipv6Addr::UNSPECIFIED.into()
        });
        let r = sys::set_reuseaddr(&fd).and_then(|_| sys::bind(&fd, &SocketAddr::new(ip, p)));
        if let Err(e) = r {
            return fail("bind", errno(e), local_port);
        }
    }
    if let Err(e) = sys::connect(&fd, &server) {
        return fail("connect", errno(e), local_port);
    }
    let mut stream = sys::into_stream(fd);
    let me = stream.local_addr().ok();
    local_port = me.map(|a| a.port());
    // Read before sending the policy byte: the server cannot finish this connection earlier.
    let server_state = registered(server).zip(me).map(|(f, me)| {
        let before = f.get(me);
        (f, me, before)
    });
    if let Err(e) = exchange(&mut stream, policy) {
        return fail("exchange", errno(e), local_port);
    }
    if policy == CloseFirst::Server {
        // We are in CLOSE_WAIT: send our FIN and wait for its ACK (LAST_ACK -> CLOSE).
        if let Err(e) = stream.shutdown(Shutdown::Write) {
            return fail("close", errno(e), local_port);
        }
        if let Err(e) = wait_closed(&stream, opts.timeout) {
            return fail("close", errno(e), local_port);
        }
    }
    drop(stream);
    if let Some((f, me, before)) = server_state {
        match f.wait_past(me, before, opts.timeout) {
            Some(true) => {}
            Some(false) => return fail("server", libc::EIO, local_port),
            None => return fail("server", libc::ETIMEDOUT, local_port),
        }
    }
    ConnOutcome {
        local_port,
        result: Ok(()),
        failed_at: None,
        elapsed: start.elapsed(),
    }
}

/// Polls TCP_INFO until the socket reached CLOSE (our FIN acknowledged, or a RST).
fn wait_closed(stream: &TcpStream, timeout: Duration) -> std::io::Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        if sys::tcp_state(stream.as_raw_fd())? == sys::TCP_CLOSE {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(std::io::Error::from_raw_os_error(libc::ETIMEDOUT));
        }
        // The ACK normally takes tens of microseconds on a veth.
        thread::sleep(Duration::from_micros(50));
    }
}

fn exchange(stream: &mut TcpStream, policy: CloseFirst) -> std::io::Result<()> {
    stream.write_all(&[policy.byte()])?;
    let mut b = [0u8; 1];
    stream.read_exact(&mut b)?;
    match policy {
        // The server closes after its byte; wait for that FIN before closing ourselves.
        CloseFirst::Server => drain(stream),
        CloseFirst::Client => {
            stream.shutdown(Shutdown::Write)?;
            // EOF here means the server's FIN arrived while we were in FIN_WAIT2: from this
            // moment our socket is a TIME-WAIT socket.
            drain(stream)
        }
    }
}

/// Waits until the number of TIME-WAIT sockets in `ns` equals `expected`; returns the last
/// count seen in the error otherwise.
pub fn wait_tw_count(ns: &str, expected: usize, timeout: Duration) -> Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        let n = tw_count(ns)?;
        if n == expected {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("netns {ns}: {n} TIME-WAIT sockets, expected {expected} within {timeout:?}");
        }
        thread::sleep(Duration::from_millis(5));
    }
}

/// Waits until the TIME-WAIT count in `ns` stays unchanged for `quiet` (checked every 5 ms)
/// and returns it; fails if it still moves after `timeout`.
pub fn wait_tw_settled(ns: &str, quiet: Duration, timeout: Duration) -> Result<usize> {
    let deadline = Instant::now() + timeout;
    let mut last = tw_count(ns)?;
    let mut since = Instant::now();
    loop {
        thread::sleep(Duration::from_millis(5));
        let n = tw_count(ns)?;
        if n != last {
            last = n;
            since = Instant::now();
        } else if since.elapsed() >= quiet {
            return Ok(n);
        }
        if Instant::now() > deadline {
            bail!("netns {ns}: TIME-WAIT count still changing after {timeout:?} (last {last})");
        }
    }
}

/// `n` connect(2) calls that stay in the kernel together, from namespace `ns` to `dst`, an
/// address on its link that nobody has: a permanent neighbour entry gives it a MAC no
/// interface has, so the SYNs leave and the peer drops them. Each socket's SO_SNDTIMEO
/// (`hold`) ends its wait. For what keeps a record per call in flight: a kretprobe has
/// max(10, 2 per possible CPU) and misses the calls beyond them.
pub struct HangingConnects {
    ns: String,
    dst: std::net::IpAddr,
    threads: Vec<JoinHandle<Result<i32>>>,
}

impl HangingConnects {
    /// Starts them, and returns once all `n` are waiting (SYN-SENT), or fails.
    pub fn start(
        ns: &str,
        dst: std::net::IpAddr,
        n: usize,
        hold: Duration,
    ) -> Result<HangingConnects> {
        let dev = super::netns::VETH;
        let to = dst.to_string();
        let mac = "02:00:5e:00:53:01"; // locally administered, documentation range
        super::netns::ip(&[
            "-n",
            ns,
            "neigh",
            "replace",
            &to,
            "lladdr",
            mac,
            "dev",
            dev,
            "nud",
            "permanent",
        ])?;
        let threads = (0..n)
            .map(|i| {
                let ns = ns.to_owned();
                thread::spawn(move || {
                    try_in_netns(&ns, || -> Result<i32> {
                        // Ports 9000 and up, one per call (each its own 4-tuple).
                        let port = u16::try_from(9000 + i).context("too many connects")?;
                        let to = SocketAddr::new(dst, port);
                        let fd = sys::tcp_socket(&to)?;
                        sys::set_timeouts(&fd, hold)?;
                        Ok(match sys::connect(&fd, &to) {
                            Ok(()) => 0,
                            Err(e) => e.raw_os_error().unwrap_or(libc::EIO),
                        })
                    })?
                })
            })
            .collect();
        let hanging = HangingConnects {
            ns: ns.to_owned(),
            dst,
            threads,
        };
        let deadline = Instant::now() + hold / 2;
        while hanging.waiting()? < n {
            if Instant::now() > deadline {
                bail!("sanity: {n} connects to {dst} should be waiting");
            }
            thread::sleep(Duration::from_millis(50));
        }
        Ok(hanging)
    }

    /// How many are waiting now (SYN-SENT toward `dst`).
    pub fn waiting(&self) -> Result<usize> {
        let socks = super::proc::tcp_sockets(&self.ns)?;
        Ok(socks
            .iter()
            .filter(|s| s.state == super::proc::TcpState::SynSent && s.remote.ip() == self.dst)
            .count())
    }

    /// Waits for every call to return; their errnos (EINPROGRESS: `hold` ran out, as meant).
    pub fn join(mut self) -> Result<Vec<i32>> {
        (self.threads.drain(..))
            .map(|t| {
                t.join()
                    .map_err(|_| anyhow!("a connecting thread panicked"))?
            })
            .collect()
    }
}

impl Drop for HangingConnects {
    /// A test that failed midway still waits for its calls (at most `hold` each): none
    /// outlives it to hold a kretprobe's records during the next test.
    fn drop(&mut self) {
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// Closes `streams` so that each becomes a FIN_WAIT2 TIME-WAIT in close() itself, on the
/// calling thread's CPU: all are half-closed first ([`half_close_acked`]), then closed.
/// Closed with its FIN unacknowledged, an orphan whose ACK comes while close() still owns the
/// socket (backlogged: the peer's softirq ran inside close()'s last steps, as it now and then
/// does in a slow guest) stays a full FIN_WAIT2 socket on the keepalive timer instead, and
/// with tcp_fin_timeout under 60 s it ends with a reset, never a TIME-WAIT
/// (tcp_rcv_state_process, "Bad case").
pub fn close_after_fin_acked(streams: Vec<TcpStream>, timeout: Duration) -> Result<()> {
    half_close_acked(&streams, timeout)?;
    drop(streams);
    Ok(())
}

/// Half-closes `streams` and waits (bounded) until the peer has acknowledged every FIN: each
/// is then in FIN_WAIT2, where its close() makes the TIME-WAIT (or the overflow) at once.
pub fn half_close_acked(streams: &[TcpStream], timeout: Duration) -> Result<()> {
    for s in streams {
        s.shutdown(Shutdown::Write)?;
    }
    let deadline = Instant::now() + timeout;
    loop {
        let states = (streams.iter())
            .map(|s| sys::tcp_state(s.as_raw_fd()))
            .collect::<std::io::Result<Vec<u8>>>()?;
        if states.iter().all(|&s| s == sys::TCP_FIN_WAIT2) {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("FINs not acknowledged within {timeout:?}: tcpi_state {states:?}");
        }
        thread::sleep(Duration::from_millis(5));
    }
}
