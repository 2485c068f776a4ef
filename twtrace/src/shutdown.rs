//! SIGINT, SIGTERM and SIGHUP (the terminal or the ssh session went away: the last summary
//! must still be written): the main loop stops on any, drains what is left, detaches every
//! program and exits 0 ([`Shutdown`]). A watchdog makes sure that the process ends even when
//! the loop cannot get to the signal: blocked writing to a reader that stopped reading
//! (`twtrace events | less`, paused), for one. Then, [`GRACE`] after the signal, the process
//! exits at once, and the kernel detaches its programs as its descriptors close (nothing is
//! pinned).

use std::{
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
    sync::OnceLock,
    time::Duration,
};

use anyhow::{Context as _, Result};
use tokio::signal::unix::{SignalKind, signal};

/// How long the main loop has to finish after a signal: its final drain and detach take
/// milliseconds, a start-up read under way at most seconds.
pub const GRACE: Duration = Duration::from_secs(10);

/// Stops the loop on SIGINT, SIGTERM or SIGHUP (unless SIGHUP is ignored, as `nohup` leaves
/// it: a handler would undo that).
pub struct Shutdown {
    int: tokio::signal::unix::Signal,
    term: tokio::signal::unix::Signal,
    hup: Option<tokio::signal::unix::Signal>,
}

impl Shutdown {
    pub fn new() -> Result<Self> {
        let shutdown = Self {
            int: signal(SignalKind::interrupt()).context("installing the SIGINT handler")?,
            term: signal(SignalKind::terminate()).context("installing the SIGTERM handler")?,
            hup: if hangup_ignored() {
                None
            } else {
                Some(signal(SignalKind::hangup()).context("installing the SIGHUP handler")?)
            },
        };
        arm_watchdog()?;
        Ok(shutdown)
    }

    pub async fn wait(&mut self) {
        tokio::select! {
            _ = self.int.recv() => {}
            _ = self.term.recv() => {}
            Some(_) = async {
                match self.hup.as_mut() {
                    Some(hup) => hup.recv().await,
                    None => std::future::pending().await,
                }
            } => {}
        }
    }
}

/// Whether SIGHUP is ignored (inherited from `nohup`, or a service manager's choice).
fn hangup_ignored() -> bool {
    // SAFETY: reads the current action into a zeroed struct; changes nothing.
    unsafe {
        let mut old: libc::sigaction = std::mem::zeroed();
        libc::sigaction(libc::SIGHUP, std::ptr::null(), &mut old) == 0
            && old.sa_sigaction == libc::SIG_IGN
    }
}

/// The write end of the pipe the signal handler wakes the watchdog through (a write(2) is
/// async-signal-safe; a lock or a condition variable is not).
static WAKE: OnceLock<OwnedFd> = OnceLock::new();

fn arm_watchdog() -> Result<()> {
    if WAKE.get().is_some() {
        return Ok(());
    }
    let mut fds = [0; 2];
    // SAFETY: pipe2 fills the two descriptors it is given.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(std::io::Error::last_os_error()).context("creating the watchdog's pipe");
    }
    // SAFETY: both descriptors were just created and are owned here alone.
    let (read, write) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    let wake = WAKE.get_or_init(|| write).as_raw_fd();
    let hup = (!hangup_ignored()).then_some(libc::SIGHUP);
    for sig in [libc::SIGINT, libc::SIGTERM].into_iter().chain(hup) {
        // SAFETY: the action only calls write(2), which is async-signal-safe; tokio's own
        // action for the signal runs too (signal-hook-registry chains them).
        unsafe {
            signal_hook_registry::register(sig, move || {
                let _ = libc::write(wake, [1u8].as_ptr().cast(), 1);
            })
        }
        .context("installing the shutdown watchdog")?;
    }
    std::thread::Builder::new()
        .name("shutdown-watchdog".into())
        .spawn(move || {
            let mut byte = 0u8;
            // SAFETY: reads one byte into a byte; blocks until a signal's action wrote one.
            while unsafe { libc::read(read.as_raw_fd(), (&raw mut byte).cast(), 1) } != 1 {}
            std::thread::sleep(GRACE);
            // Still running: the main loop is stuck. Said on stderr from a thread of its own
            // (stderr may be the very pipe that stalls), then the end.
            std::thread::spawn(|| {
                crate::say!(
                    "twtrace: warning: shutdown did not finish within {} s (output blocked: its \
                     reader stopped reading?); exiting now, the kernel detaches the programs",
                    GRACE.as_secs()
                );
            });
            std::thread::sleep(Duration::from_millis(200));
            // SAFETY: ends the process without unwinding or running destructors, which the
            // stuck main thread may hold locks for.
            unsafe { libc::_exit(0) }
        })
        .context("starting the shutdown watchdog")?;
    Ok(())
}
