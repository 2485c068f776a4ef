//! The twtrace binary as a child process: NDJSON events from stdout, diagnostics from stderr,
//! readiness from the "twtrace: tracing" line, and a clean SIGINT shutdown that must exit 0.

use std::io::{BufRead, BufReader};
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail, ensure};
use serde_json::Value;

/// The line twtrace prints on stderr once its programs are attached.
pub const READY_MARKER: &str = "twtrace: tracing";
/// How long [`Tracer::stop`] waits after SIGINT before it SIGKILLs and fails.
pub const STOP_TIMEOUT: Duration = Duration::from_secs(10);

/// Path of the tracer under test: `$TWTRACE_BIN` if set (e.g. a release build or a binary
/// copied into a VM), else the binary Cargo built for this package's integration tests.
pub fn tracer_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("TWTRACE_BIN") {
        return PathBuf::from(p);
    }
    // option_env! rather than env!: the harness then also compiles in a crate without the bin
    // (the error appears when a test actually needs the tracer).
    match option_env!("CARGO_BIN_EXE_twtrace") {
        Some(p) => PathBuf::from(p),
        None => panic!("set TWTRACE_BIN: this crate has no twtrace binary target"),
    }
}

/// Lines collected by a reader thread plus a condition variable to wait for new ones.
#[derive(Default)]
struct Shared<T> {
    items: Mutex<Vec<T>>,
    changed: Condvar,
}

impl<T: Clone> Shared<T> {
    fn push(&self, item: T) {
        self.items.lock().unwrap().push(item);
        self.changed.notify_all();
    }
    fn snapshot(&self) -> Vec<T> {
        self.items.lock().unwrap().clone()
    }
}

/// A running tracer. Dropping it without [`Tracer::stop`] SIGKILLs the process (so a failing
/// test never leaves a tracer with attached BPF programs behind).
pub struct Tracer {
    child: Option<Child>,
    /// Command line, for error messages.
    cmdline: String,
    events: Arc<Shared<Value>>,
    /// stdout lines that were not JSON: the output contract is one JSON value per line, so
    /// stop() fails if there are any.
    bad_stdout: Arc<Shared<String>>,
    stderr: Arc<Shared<String>>,
    readers: Vec<JoinHandle<()>>,
    /// The namespace `--netns` named (by inode, name or file), if any.
    netns: Option<u32>,
}

/// The inode of the namespace `--netns arg` names, as twtrace reads it: a name under
/// /run/netns (digits too, when a namespace has that name) or a namespace file (both stat'ed
/// by [`super::netns_inode`]), else an inode number.
fn netns_inode_of(arg: &str) -> Option<u32> {
    super::netns_inode(arg).ok().or_else(|| {
        (arg.trim_start_matches("net:[").trim_end_matches(']'))
            .parse()
            .ok()
    })
}

impl Tracer {
    /// Spawns `bin args...` (plus `--hooks $TWTRACE_HOOKS` when that variable is set, so the
    /// VM runs can force kprobes, and `--signals $TWTRACE_SIGNALS` unless the test picks its own,
    /// so a forced family can be proven on a kernel where it serves only some signals) with
    /// stdout and stderr captured by reader threads.
    pub fn spawn(bin: &Path, args: &[&str]) -> Result<Tracer> {
        let mut cmd = Command::new(bin);
        cmd.args(args);
        if let Some(h) = std::env::var_os("TWTRACE_HOOKS") {
            cmd.arg("--hooks").arg(h);
        }
        if let Some(s) = std::env::var_os("TWTRACE_SIGNALS")
            && !args.contains(&"--signals")
        {
            cmd.arg("--signals").arg(s);
        }
        let cmdline = format!("{cmd:?}");
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        // The tests stop it with SIGINT. A suite started in the background by a non-interactive
        // shell (`./scripts/test.sh &`) inherits SIGINT ignored, and a shell stub cannot trap a
        // signal ignored on entry: give the child the default disposition whatever ours is.
        // SAFETY: only async-signal-safe calls (signal) between fork and exec.
        unsafe {
            cmd.pre_exec(|| {
                libc::signal(libc::SIGINT, libc::SIG_DFL);
                libc::signal(libc::SIGTERM, libc::SIG_DFL);
                Ok(())
            });
        }
        let mut child = cmd.spawn().with_context(|| format!("spawning {cmdline}"))?;
        let stdout = child.stdout.take().expect("piped stdout");
        let stderr = child.stderr.take().expect("piped stderr");
        let events = Arc::new(Shared::<Value>::default());
        let bad_stdout = Arc::new(Shared::<String>::default());
        let err_lines = Arc::new(Shared::<String>::default());
        let mut readers = Vec::new();
        {
            let (events, bad) = (events.clone(), bad_stdout.clone());
            readers.push(
                thread::Builder::new()
                    .name("tracer-stdout".into())
                    .spawn(move || {
                        for line in BufReader::new(stdout).lines() {
                            let Ok(line) = line else { break };
                            if line.trim().is_empty() {
                                continue;
                            }
                            match serde_json::from_str::<Value>(&line) {
                                Ok(v) => events.push(v),
                                Err(_) => bad.push(line),
                            }
                        }
                        // Wake waiters so they notice EOF (the process is gone).
                        events.changed.notify_all();
                    })?,
            );
        }
        {
            let err_lines = err_lines.clone();
            readers.push(
                thread::Builder::new()
                    .name("tracer-stderr".into())
                    .spawn(move || {
                        for line in BufReader::new(stderr).lines() {
                            let Ok(line) = line else { break };
                            err_lines.push(line);
                        }
                        err_lines.changed.notify_all();
                    })?,
            );
        }
        let netns = (args.iter())
            .skip_while(|a| **a != "--netns")
            .nth(1)
            .and_then(|n| netns_inode_of(n));
        Ok(Tracer {
            child: Some(child),
            cmdline,
            events,
            bad_stdout,
            stderr: err_lines,
            readers,
            netns,
        })
    }

    /// The namespace inode this tracer was given as `--netns N` (None: all, or by name).
    pub fn netns(&self) -> Option<u32> {
        self.netns
    }

    /// Spawns [`tracer_bin`] with `args`.
    pub fn spawn_default(args: &[&str]) -> Result<Tracer> {
        Tracer::spawn(&tracer_bin(), args)
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(|c| c.id()).unwrap_or(0)
    }

    /// The lines written to stdout so far (a tracer printing text: the live table's).
    pub fn stdout_lines(&self) -> Vec<String> {
        self.bad_stdout.snapshot()
    }

    /// Everything written to stderr so far, one line each.
    pub fn stderr_text(&self) -> String {
        self.stderr_reader()()
    }

    /// A reader of stderr that outlives the tracer: what it said while stopping too (the
    /// last interval's alerts, say).
    pub fn stderr_reader(&self) -> impl Fn() -> String + use<> {
        let stderr = Arc::clone(&self.stderr);
        move || stderr.snapshot().join("\n")
    }

    /// Events received so far.
    pub fn events(&self) -> Vec<Value> {
        self.events.snapshot()
    }

    fn child_mut(&mut self) -> &mut Child {
        self.child.as_mut().expect("child present until stop")
    }

    /// Exit status if the process has exited.
    fn exited(&mut self) -> Result<Option<ExitStatus>> {
        Ok(self.child_mut().try_wait()?)
    }

    /// Waits for the readiness line on stderr. Fails with the captured stderr if the process
    /// exits first or the line does not come within `timeout`.
    pub fn wait_ready(&mut self, timeout: Duration) -> Result<()> {
        self.wait_stderr(READY_MARKER, timeout).map(drop)
    }

    /// Waits for a stderr line containing `needle` and returns it; fails as [`Self::wait_ready`].
    pub fn wait_stderr(&mut self, needle: &str, timeout: Duration) -> Result<String> {
        let stderr = Arc::clone(&self.stderr);
        self.wait_line(&stderr, "", needle, timeout)
    }

    /// [`Self::wait_stderr`] for a line of text on stdout (the live table's).
    pub fn wait_stdout_text(&mut self, needle: &str, timeout: Duration) -> Result<String> {
        let stdout = Arc::clone(&self.bad_stdout);
        self.wait_line(&stdout, " on stdout", needle, timeout)
    }

    fn wait_line(
        &mut self,
        lines: &Shared<String>,
        on: &str,
        needle: &str,
        timeout: Duration,
    ) -> Result<String> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(line) = lines.snapshot().into_iter().find(|l| l.contains(needle)) {
                return Ok(line);
            }
            if let Some(status) = self.exited()? {
                // Let the reader drain the pipe so the message is complete.
                self.join_readers();
                bail!(
                    "{} exited with {status} before {needle:?}{on}; stderr:\n{}",
                    self.cmdline,
                    self.stderr_text()
                );
            }
            let now = Instant::now();
            if now > deadline {
                bail!(
                    "{} printed no {needle:?}{on} within {timeout:?}; stderr so far:\n{}",
                    self.cmdline,
                    self.stderr_text()
                );
            }
            // Wake on new lines, but re-check the process at least every 50 ms.
            let guard = lines.items.lock().unwrap();
            let wait = (deadline - now).min(Duration::from_millis(50));
            let _ = lines.changed.wait_timeout(guard, wait).unwrap();
        }
    }

    /// Waits until an event matching `pred` has arrived and returns it.
    pub fn wait_for_event(
        &mut self,
        pred: impl Fn(&Value) -> bool,
        timeout: Duration,
    ) -> Result<Value> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(v) = self.events.snapshot().into_iter().find(|v| pred(v)) {
                return Ok(v);
            }
            if let Some(status) = self.exited()? {
                bail!(
                    "{} exited with {status} while waiting for an event; stderr:\n{}",
                    self.cmdline,
                    self.stderr_text()
                );
            }
            let now = Instant::now();
            if now > deadline {
                let events = self.events.snapshot();
                let err = anyhow!(
                    "no matching event within {timeout:?}; {} events so far ({}); stderr:\n{}",
                    events.len(),
                    count_by_type(&events),
                    self.stderr_text()
                );
                // Missing because the kernel skipped the program that would have sent it?
                SkippedRuns::note_if_uncounted(&self.stderr_text());
                return Err(match SkippedRuns::among(&events) {
                    Some(skipped) => anyhow::Error::new(skipped).context(err),
                    None => err,
                });
            }
            let guard = self.events.items.lock().unwrap();
            let wait = (deadline - now).min(Duration::from_millis(50));
            let _ = self.events.changed.wait_timeout(guard, wait).unwrap();
        }
    }

    fn join_readers(&mut self) {
        for r in self.readers.drain(..) {
            let _ = r.join();
        }
    }

    fn signal(&self, sig: libc::c_int) {
        if let Some(c) = &self.child {
            // SAFETY: kill(2) on the pid of our own child, which has not been reaped yet (so
            // the pid cannot have been reused by another process).
            unsafe { libc::kill(c.id() as libc::pid_t, sig) };
        }
    }

    /// Sends SIGINT, waits up to 10 s (then SIGKILLs and fails), requires exit status 0 and
    /// well-formed NDJSON on stdout, and returns every event.
    pub fn stop(mut self) -> Result<Vec<Value>> {
        self.finish()?;
        let bad = self.bad_stdout.snapshot();
        if !bad.is_empty() {
            return Err(anyhow!(
                "{} printed {} non-JSON stdout line(s), first: {:?}",
                self.cmdline,
                bad.len(),
                bad[0]
            ));
        }
        let events = self.events.snapshot();
        // Noted for rerun_if_skipped: skips reported, or possible unseen.
        let _ = SkippedRuns::among(&events);
        SkippedRuns::note_if_uncounted(&self.stderr_text());
        // With `--netns N`, every event is of that namespace, or of none the kernel could name
        // (a drop before 6.11 that names no socket nor device: kept with netns 0, README "Using
        // it"). Tests run in parallel, each in namespaces of its own: a filter letting others'
        // events through would otherwise go unseen, as each test counts its own namespace's.
        if let Some(ns) = self.netns {
            let other: Vec<&Value> = (events.iter())
                .filter(|e| e["netns"] != ns && e["netns"] != 0)
                .collect();
            ensure!(
                other.is_empty(),
                "{}: events of another namespace than {ns}: {other:?}",
                self.cmdline
            );
        }
        Ok(events)
    }

    /// [`Tracer::stop`] after `settle`, failing if the tracer lost any event. Skipped runs
    /// are the kernel's count for all traffic, not only this test's: the test's own
    /// comparisons say whether they mattered (see [`rerun_if_skipped`]).
    pub fn stop_lossless(self, settle: Duration) -> Result<Vec<Value>> {
        thread::sleep(settle);
        let events = self.stop()?;
        let lost: Vec<&Value> = (events.iter())
            .filter(|e| e["type"] == "lost" && e["reason"] != "skipped_runs")
            .collect();
        ensure!(lost.is_empty(), "the tracer lost events: {lost:?}");
        Ok(events)
    }

    /// [`Tracer::stop`] for a tracer printing text (the live table): its stdout lines.
    pub fn stop_text(mut self) -> Result<Vec<String>> {
        self.finish()?;
        Ok(self.bad_stdout.snapshot())
    }

    /// SIGINT, then the exit status must be 0 within [`STOP_TIMEOUT`].
    fn finish(&mut self) -> Result<()> {
        let status = match self.exited()? {
            Some(s) => s,
            None => {
                self.signal(libc::SIGINT);
                let deadline = Instant::now() + STOP_TIMEOUT;
                loop {
                    if let Some(s) = self.exited()? {
                        break s;
                    }
                    if Instant::now() > deadline {
                        self.signal(libc::SIGKILL);
                        let _ = self.child_mut().wait();
                        self.join_readers();
                        bail!(
                            "{} ignored SIGINT for {STOP_TIMEOUT:?} and was killed; stderr:\n{}",
                            self.cmdline,
                            self.stderr_text()
                        );
                    }
                    thread::sleep(Duration::from_millis(10));
                }
            }
        };
        self.child = None;
        self.join_readers();
        if !status.success() {
            bail!(
                "{} exited with {status}; stderr:\n{}",
                self.cmdline,
                self.stderr_text()
            );
        }
        Ok(())
    }
}

impl Drop for Tracer {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            if matches!(c.try_wait(), Ok(None)) {
                // SAFETY: as in signal(): our unreaped child.
                unsafe { libc::kill(c.id() as libc::pid_t, libc::SIGKILL) };
            }
            let _ = c.wait();
        }
        self.join_readers();
    }
}

/// The kernel skipped runs of the tracer's programs (`lost` records with reason
/// `skipped_runs`): an interrupt nested in a BPF program, the tracer's, another test's tracer's
/// or anyone's, on that CPU. The kernel counts them per program, not per namespace: most are
/// about other traffic, and a test whose comparisons hold passes. One that fails with them
/// reported meanwhile may have failed for them: [`rerun_if_skipped`] runs it again.
#[derive(Debug)]
pub struct SkippedRuns(pub Vec<Value>);

impl SkippedRuns {
    /// The skipped-run records among `events`, if any; noted for [`rerun_if_skipped`].
    pub fn among(events: &[Value]) -> Option<Self> {
        let skipped: Vec<Value> = (events.iter())
            .filter(|e| e["type"] == "lost" && e["reason"] == "skipped_runs")
            .cloned()
            .collect();
        if skipped.is_empty() {
            return None;
        }
        SKIPS_SEEN.set(true);
        Some(Self(skipped))
    }

    /// Where the kernel skips classic tracepoint and kprobe runs without counting them
    /// (before 6.7; twtrace says so at start-up, `stderr`), any run may have been skipped
    /// unseen: noted for [`rerun_if_skipped`] as if skips had been reported.
    pub fn note_if_uncounted(stderr: &str) {
        if stderr.contains(UNCOUNTED) {
            SKIPS_SEEN.set(true);
        }
    }

    /// For a live table's `lines`: notes, for [`rerun_if_skipped`], whether it said the kernel
    /// skipped runs of its programs (each may have been a record).
    pub fn note_if_said(lines: &[String]) {
        if lines.iter().any(|l| l.starts_with(TABLE_SKIPS)) {
            SKIPS_SEEN.set(true);
        }
    }
}

/// The live table's line on runs the kernel skipped.
pub const TABLE_SKIPS: &str = "runs skipped by the kernel";

/// twtrace's start-up note on a kernel that skips runs without counting them.
pub const UNCOUNTED: &str = "does not count the runs";

thread_local! {
    /// Whether a tracer of the test running on this thread reported skipped runs.
    static SKIPS_SEEN: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

impl std::fmt::Display for SkippedRuns {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "the kernel skipped runs of the tracer's programs: ")?;
        for e in &self.0 {
            write!(f, "{} x{} ", e["program"], e["count"])?;
        }
        Ok(())
    }
}

impl std::error::Error for SkippedRuns {}

/// Runs `test`, and once more if it failed (an error or a failed assertion) while a tracer of
/// it reported runs the kernel skipped ([`SkippedRuns`], seen by [`Tracer::stop`] or
/// [`Tracer::wait_for_event`]), or said that this kernel skips runs without counting them:
/// that run was void, not wrong, and the second one is held to the same exact comparisons.
/// A failure without skipped runs is final, and so is the second run's. Every end-to-end test runs under it: a skip is likeliest in the long windows (a
/// real 60 s expiry) and beside other tests' tracers (their programs in task context are
/// where softirqs nest), and any test can meet one on a shared kernel. Runs alongside the
/// other tests of its binary, but never alongside one holding [`alone`].
pub fn rerun_if_skipped(test: impl Fn() -> Result<()>) -> Result<()> {
    let _beside_others = ALONE.read().unwrap_or_else(|e| e.into_inner());
    rerun_once_if_skipped(test)
}

/// [`rerun_if_skipped`] for a test that must run [`alone`] (it makes the kernel skip runs on
/// purpose): the same rule, with no other test running meanwhile.
pub fn rerun_alone_if_skipped(test: impl Fn() -> Result<()>) -> Result<()> {
    let _alone = alone();
    rerun_once_if_skipped(test)
}

fn rerun_once_if_skipped(test: impl Fn() -> Result<()>) -> Result<()> {
    SKIPS_SEEN.set(false);
    let first = std::panic::catch_unwind(std::panic::AssertUnwindSafe(&test));
    if !matches!(first, Ok(Ok(()))) && SKIPS_SEEN.get() {
        let why = match &first {
            Ok(Err(e)) => format!("{e:#}"),
            _ => "a failed assertion, above".to_owned(),
        };
        eprintln!(
            "first run void: it failed ({why}) while the kernel skipped runs of the tracer's \
             programs (or may have, uncounted); running it again, once"
        );
        return test();
    }
    match first {
        Ok(result) => result,
        Err(panic) => std::panic::resume_unwind(panic),
    }
}

/// Tests run as threads of one process: [`rerun_if_skipped`] runs each under a shared hold
/// of this, [`rerun_alone_if_skipped`] under the only one.
static ALONE: std::sync::RwLock<()> = std::sync::RwLock::new(());

/// While the guard lives, no other test of this binary runs (they wait): for a test that
/// makes the kernel skip BPF programs on purpose (a held CPU), which would have every other
/// test's tracer skipped too (the kernel counts skips per program, not per namespace).
fn alone() -> std::sync::RwLockWriteGuard<'static, ()> {
    ALONE.write().unwrap_or_else(|e| e.into_inner())
}

/// "type: count" for each event type, to say in a failure what did arrive.
fn count_by_type(events: &[Value]) -> String {
    let mut counts = std::collections::BTreeMap::<String, usize>::new();
    for e in events {
        *counts.entry(e["type"].to_string()).or_default() += 1;
    }
    let parts: Vec<String> = counts.iter().map(|(t, n)| format!("{t}: {n}")).collect();
    parts.join(", ")
}
