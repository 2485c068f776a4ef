//! Everything that must be undone however the bench ends: child processes, a global sysctl and
//! a scratch directory, each behind a Drop guard; plus a SIGINT/SIGTERM/SIGHUP flag that every
//! wait polls, so Ctrl-C unwinds through those guards instead of killing us mid-setup.

use anyhow::{Context as _, Result, bail};
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    // Only an atomic store: the one thing a signal handler may safely do here.
    STOP.store(true, Ordering::SeqCst);
}

/// Turns SIGINT, SIGTERM and SIGHUP into a flag checked by [`check`] and the waits below.
pub fn install_signal_handlers() {
    for sig in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
        // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
        unsafe {
            libc::signal(
                sig,
                on_signal as extern "C" fn(libc::c_int) as libc::sighandler_t,
            )
        };
    }
}

/// Fails once a stop signal arrived, so the caller unwinds and the guards clean up.
pub fn check() -> Result<()> {
    if STOP.load(Ordering::SeqCst) {
        bail!("interrupted");
    }
    Ok(())
}

/// Sleeps in short slices so a stop signal is honoured within 100 ms.
pub fn sleep(d: Duration) -> Result<()> {
    let end = Instant::now() + d;
    loop {
        check()?;
        let left = end.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Ok(());
        }
        std::thread::sleep(left.min(Duration::from_millis(100)));
    }
}

/// A child in its own process group: the terminal's Ctrl-C reaches only us, we stop children
/// in order, and the group kill also catches grandchildren (nginx's worker).
pub struct Proc {
    pub name: String,
    child: Child,
    done: Option<ExitStatus>,
}

impl Proc {
    pub fn spawn(name: &str, cmd: &mut Command) -> Result<Self> {
        cmd.stdin(Stdio::null()).process_group(0);
        let child = cmd
            .spawn()
            .with_context(|| format!("cannot start {name} ({:?})", cmd.get_program()))?;
        Ok(Self {
            name: name.to_string(),
            child,
            done: None,
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn child(&mut self) -> &mut Child {
        &mut self.child
    }

    /// The exit status if the process has ended (reaping it).
    pub fn exited(&mut self) -> Result<Option<ExitStatus>> {
        if self.done.is_none() {
            self.done = self.child.try_wait()?;
        }
        Ok(self.done)
    }

    /// Waits at most `limit` for the process to end by itself; `None` if it did not. A stop
    /// signal ends the wait with an error.
    pub fn wait_for(&mut self, limit: Duration) -> Result<Option<ExitStatus>> {
        let end = Instant::now() + limit;
        while Instant::now() < end {
            if let Some(s) = self.exited()? {
                return Ok(Some(s));
            }
            check()?;
            std::thread::sleep(Duration::from_millis(20));
        }
        self.exited()
    }

    /// Sends `sig` to the process, waits up to `grace`, then kills the whole group. Returns the
    /// exit status and whether it had to be killed.
    pub fn stop(&mut self, sig: libc::c_int, grace: Duration) -> Result<(ExitStatus, bool)> {
        if let Some(s) = self.exited()? {
            return Ok((s, false));
        }
        signal(self.pid() as i32, sig);
        self.reap(grace)
    }

    /// Waits up to `grace` for the process to end, then kills its group. Not interruptible on
    /// purpose: this is cleanup, and it is bounded by `grace`.
    fn reap(&mut self, grace: Duration) -> Result<(ExitStatus, bool)> {
        let end = Instant::now() + grace;
        while Instant::now() < end {
            if let Some(s) = self.exited()? {
                return Ok((s, false));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        signal(-(self.pid() as i32), libc::SIGKILL);
        let s = self.child.wait()?;
        self.done = Some(s);
        Ok((s, true))
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if matches!(self.exited(), Ok(Some(_))) {
            return;
        }
        // SIGTERM to the group first so nginx and the tracers tear down cleanly (the tracers
        // detach their programs), SIGKILL if that takes too long.
        signal(-(self.pid() as i32), libc::SIGTERM);
        if let Err(e) = self.reap(Duration::from_secs(5)) {
            eprintln!("bench: could not stop {}: {e:#}", self.name);
        }
    }
}

fn signal(pid: i32, sig: libc::c_int) {
    // SAFETY: kill(2) has no memory-safety preconditions; errors (already gone) are fine.
    unsafe { libc::kill(pid, sig) };
}

/// Sets a sysctl under /proc/sys and restores the previous value when dropped.
pub struct Sysctl {
    path: PathBuf,
    old: String,
}

impl Sysctl {
    pub fn set(name: &str, value: &str) -> Result<Self> {
        let path = Path::new("/proc/sys").join(name.replace('.', "/"));
        let old = std::fs::read_to_string(&path)
            .with_context(|| format!("reading {}", path.display()))?;
        std::fs::write(&path, value).with_context(|| format!("setting {name}={value}"))?;
        Ok(Self {
            path,
            old: old.trim().to_string(),
        })
    }
}

impl Drop for Sysctl {
    fn drop(&mut self) {
        if let Err(e) = std::fs::write(&self.path, &self.old) {
            eprintln!(
                "bench: could not restore {} to {}: {e}",
                self.path.display(),
                self.old
            );
        }
    }
}

/// A private scratch directory (nginx prefix, NDJSON files), removed when dropped.
pub struct TempDir(PathBuf);

impl TempDir {
    /// In /dev/shm where it is there: the `events` condition writes its NDJSON (about 10 MB/s)
    /// here, and on a disk the writeback (kworker and filesystem time) would be billed to the
    /// tracer's CPU per connection although `> /dev/null`, the condition the target names,
    /// never pays it. tmpfs keeps the write(2) and the copy, nothing else.
    pub fn new() -> Result<Self> {
        let shm = Path::new("/dev/shm");
        let base = if shm.is_dir() {
            shm.to_path_buf()
        } else {
            std::env::temp_dir()
        };
        let dir = base.join(format!("twtrace-bench-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).with_context(|| format!("mkdir {}", dir.display()))?;
        Ok(Self(dir))
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
