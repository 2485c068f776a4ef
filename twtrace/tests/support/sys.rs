//! Thin libc wrappers for the socket calls std does not expose: std's `TcpStream::connect`
//! cannot set SO_REUSEADDR or bind a local port before connecting, and the harness needs both
//! (reconnecting from a port the client still holds in TIME-WAIT), plus TCP_INFO to see when
//! the peer has acknowledged our FIN.

use std::io;
use std::mem;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::time::Duration;

/// Converts a libc return value into an io::Result, keeping errno.
fn cvt(ret: libc::c_int) -> io::Result<libc::c_int> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

/// Builds a `sockaddr_storage` for `addr` (network byte order port and address).
pub fn sockaddr(addr: &SocketAddr) -> (libc::sockaddr_storage, libc::socklen_t) {
    // SAFETY: sockaddr_storage is plain old data; all-zero is a valid value.
    let mut storage: libc::sockaddr_storage = unsafe { mem::zeroed() };
    let len = match addr {
        SocketAddr::V4(a) => {
            let sin = libc::sockaddr_in {
                sin_family: libc::AF_INET as libc::sa_family_t,
                sin_port: a.port().to_be(),
                sin_addr: libc::in_addr {
                    s_addr: u32::from_ne_bytes(a.ip().octets()),
                },
                sin_zero: [0; 8],
            };
            // SAFETY: sockaddr_storage is larger than and suitably aligned for sockaddr_in.
            unsafe { std::ptr::write((&raw mut storage).cast::<libc::sockaddr_in>(), sin) };
            mem::size_of::<libc::sockaddr_in>()
        }
        SocketAddr::V6(a) => {
            let sin6 = libc::sockaddr_in6 {
                sin6_family: libc::AF_INET6 as libc::sa_family_t,
                sin6_port: a.port().to_be(),
                sin6_flowinfo: a.flowinfo(),
                sin6_addr: libc::in6_addr {
                    s6_addr: a.ip().octets(),
                },
                sin6_scope_id: a.scope_id(),
            };
            // SAFETY: sockaddr_storage is larger than and suitably aligned for sockaddr_in6.
            unsafe { std::ptr::write((&raw mut storage).cast::<libc::sockaddr_in6>(), sin6) };
            mem::size_of::<libc::sockaddr_in6>()
        }
    };
    (storage, len as libc::socklen_t)
}

/// A new blocking TCP socket of the family of `addr`, close-on-exec so a spawned tracer
/// never inherits test sockets.
pub fn tcp_socket(addr: &SocketAddr) -> io::Result<OwnedFd> {
    let domain = if addr.is_ipv4() {
        libc::AF_INET
    } else {
        libc::AF_INET6
    };
    // SAFETY: plain syscall; the returned fd is owned by the OwnedFd below.
    let fd = cvt(unsafe { libc::socket(domain, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) })?;
    // SAFETY: fd was just returned by socket() and is owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// setsockopt(`level`, `name`) to `val` (its size passed as the option's length).
pub fn setsockopt<T>(fd: RawFd, level: libc::c_int, name: libc::c_int, val: &T) -> io::Result<()> {
    // SAFETY: val points to a live T of the size passed.
    cvt(unsafe {
        libc::setsockopt(
            fd,
            level,
            name,
            (val as *const T).cast(),
            mem::size_of::<T>() as libc::socklen_t,
        )
    })
    .map(drop)
}

pub fn set_reuseaddr(fd: &OwnedFd) -> io::Result<()> {
    setsockopt(
        fd.as_raw_fd(),
        libc::SOL_SOCKET,
        libc::SO_REUSEADDR,
        &(1 as libc::c_int),
    )
}

/// SO_RCVTIMEO and SO_SNDTIMEO; connect() also honours SO_SNDTIMEO (and then fails with
/// EINPROGRESS when the handshake does not finish in time).
pub fn set_timeouts(fd: &OwnedFd, timeout: Duration) -> io::Result<()> {
    let tv = libc::timeval {
        tv_sec: timeout.as_secs() as libc::time_t,
        tv_usec: timeout.subsec_micros() as libc::suseconds_t,
    };
    setsockopt(fd.as_raw_fd(), libc::SOL_SOCKET, libc::SO_RCVTIMEO, &tv)?;
    setsockopt(fd.as_raw_fd(), libc::SOL_SOCKET, libc::SO_SNDTIMEO, &tv)
}

/// The TCP state of a socket (TCP_INFO's tcpi_state: 1 = ESTABLISHED ... 7 = CLOSE, 9 =
/// LAST_ACK), read without touching the connection.
pub fn tcp_state(fd: RawFd) -> io::Result<u8> {
    // tcpi_state is the first byte of struct tcp_info; the kernel copies at most our length.
    let mut buf = [0u8; 8];
    let mut len = buf.len() as libc::socklen_t;
    // SAFETY: buf is writable for len bytes and len is updated by the kernel.
    cvt(unsafe {
        libc::getsockopt(
            fd,
            libc::IPPROTO_TCP,
            libc::TCP_INFO,
            buf.as_mut_ptr().cast(),
            &mut len,
        )
    })?;
    Ok(buf[0])
}

/// TCP_FIN_WAIT2 in tcpi_state numbering.
pub const TCP_FIN_WAIT2: u8 = 5;

/// TCP_CLOSE in tcpi_state numbering.
pub const TCP_CLOSE: u8 = 7;

/// shutdown(2) on a raw fd. Unlike close(), it acts on the socket itself even when another
/// process briefly holds a copy of the fd (every fork/spawn of a concurrent test copies the
/// whole fd table until its exec), so FINs and port releases happen when we say so.
pub fn shutdown(fd: RawFd, how: libc::c_int) -> io::Result<()> {
    // SAFETY: plain syscall.
    cvt(unsafe { libc::shutdown(fd, how) }).map(drop)
}

pub fn bind(fd: &OwnedFd, addr: &SocketAddr) -> io::Result<()> {
    let (sa, len) = sockaddr(addr);
    // SAFETY: sa is a valid sockaddr of length len.
    cvt(unsafe { libc::bind(fd.as_raw_fd(), (&raw const sa).cast(), len) }).map(drop)
}

pub fn connect(fd: &OwnedFd, addr: &SocketAddr) -> io::Result<()> {
    let (sa, len) = sockaddr(addr);
    loop {
        // SAFETY: sa is a valid sockaddr of length len.
        let ret = unsafe { libc::connect(fd.as_raw_fd(), (&raw const sa).cast(), len) };
        if ret == 0 {
            return Ok(());
        }
        let err = io::Error::last_os_error();
        // A signal during a blocking connect leaves the handshake running; retrying is what
        // libc callers are expected to do, and returns EALREADY/EISCONN accordingly.
        if err.raw_os_error() != Some(libc::EINTR) {
            return Err(err);
        }
    }
}

pub fn listen(fd: &OwnedFd, backlog: i32) -> io::Result<()> {
    // SAFETY: plain syscall on an fd we own.
    cvt(unsafe { libc::listen(fd.as_raw_fd(), backlog) }).map(drop)
}

pub fn into_stream(fd: OwnedFd) -> TcpStream {
    TcpStream::from(fd)
}

pub fn into_listener(fd: OwnedFd) -> TcpListener {
    TcpListener::from(fd)
}

/// Waits up to `timeout` for `fd` to become readable (for a listener: a connection to accept).
pub fn poll_readable(fd: RawFd, timeout: Duration) -> io::Result<bool> {
    let mut pfd = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    let ms = timeout.as_millis().min(i32::MAX as u128) as libc::c_int;
    // SAFETY: pfd is a valid pollfd array of length 1.
    match unsafe { libc::poll(&mut pfd, 1, ms) } {
        n if n > 0 => Ok(true),
        0 => Ok(false),
        _ => {
            let err = io::Error::last_os_error();
            if err.raw_os_error() == Some(libc::EINTR) {
                Ok(false)
            } else {
                Err(err)
            }
        }
    }
}
