//! The conditions and the tracer each one runs: start it, know when it is attached,
//! snapshot its CPU and BPF statistics, stop it, and count what `twtrace events` wrote.

use super::guard::{self, Proc};
use super::procfs::{self, ProgStats};
use anyhow::{Context as _, Result, bail};
use std::collections::BTreeMap;
use std::io::{BufRead as _, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Condition {
    /// No tracer.
    Baseline,
    /// `twtrace` (live table, stdout to /dev/null).
    Table,
    /// The same without the PAWS and SYN-timestamp signals: its difference to `table` is what
    /// the SYN route and the reject path cost.
    #[value(name = "table-no-paws")]
    TableNoPaws,
    /// The live table without tw_overflow and connect_eaddrnotavail, the two signals that
    /// on tracepoint-only kernels hang off `inet_sock_set_state` (10 runs per connection):
    /// its difference to `table` is what that hook costs.
    #[value(name = "table-no-state")]
    TableNoState,
    /// The live table with only the PAWS and SYN-timestamp signals: no TIME-WAIT signal at
    /// all. What streaming one record per SYN to the clock estimator costs on its own: the
    /// floor of a design that would count TIME-WAITs in the kernel and stream only SYNs.
    #[value(name = "table-syn-only")]
    TableSynOnly,
    /// `twtrace events --json` (NDJSON to a file, counted afterwards).
    Events,
    /// `twtrace --hooks-only`: every program attached and running its first filter, no
    /// signal routed: the floor that the hooks alone cost.
    #[value(name = "hooks-only")]
    HooksOnly,
    /// `twtrace --hooks-only --signals tw_enter,tw_exit`: only the hooks that TIME-WAIT entry
    /// and exit need, each returning at its first filter: the least any tool that sees exits
    /// (not only timer arms, as bpftrace counting does) pays on this kernel.
    #[value(name = "hooks-only-tw")]
    HooksOnlyTw,
    /// A bpftrace one-liner printing one line per TIME-WAIT to /dev/null.
    Bpftrace,
    /// bpftrace counting the TIME-WAIT timer and kfree_skb tracepoints in kernel maps (the
    /// reference the performance target was set against: it streams nothing).
    #[value(name = "bpftrace-count")]
    BpftraceCount,
}

impl Condition {
    pub fn is_bpftrace(self) -> bool {
        matches!(self, Self::Bpftrace | Self::BpftraceCount)
    }

    /// twtrace's arguments in the conditions that run its live table (to /dev/null).
    fn table_args(self) -> &'static [&'static str] {
        match self {
            Self::TableNoPaws => &[
                "--signals",
                "tw_enter,tw_exit,tw_overflow,connect_eaddrnotavail",
            ],
            Self::TableNoState => &["--signals", "tw_enter,tw_exit,paws_reject,syn"],
            Self::TableSynOnly => &["--signals", "paws_reject,syn"],
            Self::HooksOnly => &["--hooks-only"],
            Self::HooksOnlyTw => &["--hooks-only", "--signals", "tw_enter,tw_exit"],
            // The live table as users run it; the other conditions are not tables.
            _ => &[],
        }
    }

    pub fn label(self) -> &'static str {
        match self {
            Self::Baseline => "no tracer",
            Self::Table => "`twtrace` (live table > /dev/null)",
            Self::TableNoPaws => "`twtrace --signals <all but paws_reject,syn>` (live table)",
            Self::TableNoState => {
                "`twtrace --signals tw_enter,tw_exit,paws_reject,syn` (live table)"
            }
            Self::TableSynOnly => "`twtrace --signals paws_reject,syn` (live table)",
            Self::Events => "`twtrace events --json > file`",
            Self::HooksOnly => "`twtrace --hooks-only` (programs attached, no signal routed)",
            Self::HooksOnlyTw => "`twtrace --hooks-only --signals tw_enter,tw_exit`",
            Self::Bpftrace => "bpftrace one-liner > /dev/null",
            Self::BpftraceCount => "bpftrace counting in kernel maps",
        }
    }
}

/// What every tracer start needs.
pub struct Setup {
    pub twtrace: PathBuf,
    pub dir: PathBuf,
    pub bpf_stats: bool,
    /// `--hooks FAMILY` for every twtrace condition (none: twtrace's own choice).
    pub hooks: Option<String>,
}

/// bpftrace's closest equivalent of twtrace's TIME-WAIT entry signal on a tracepoint-only
/// kernel: the TIME-WAIT timer being armed. The handler's address is a literal because
/// bpftrace cannot resolve kernel symbols in a tracepoint filter.
pub fn bpftrace_scripts() -> Result<Scripts> {
    let syms = std::fs::read_to_string("/proc/kallsyms").context("reading /proc/kallsyms")?;
    let addr = syms
        .lines()
        .find_map(|l| {
            let mut f = l.split_whitespace();
            let (a, _, name) = (f.next()?, f.next()?, f.next()?);
            (name == "tw_timer_handler").then_some(a)
        })
        .context("tw_timer_handler is not in /proc/kallsyms")?;
    if addr.bytes().all(|b| b == b'0') {
        bail!("/proc/kallsyms hides addresses (kernel.kptr_restrict)");
    }
    Ok(Scripts {
        print: format!(
            "tracepoint:timer:timer_start /args->function == 0x{addr}/ \
             {{ printf(\"%llu tw %p\\n\", nsecs, args->timer); }}"
        ),
        count: format!(
            "tracepoint:timer:timer_start /args->function == 0x{addr}/ {{ @tw = count(); }} \
             tracepoint:skb:kfree_skb {{ @drops[args->reason] = count(); }}"
        ),
    })
}

/// The bpftrace programs of the two bpftrace conditions.
#[derive(Clone, Default, serde::Serialize)]
pub struct Scripts {
    /// One line per TIME-WAIT.
    pub print: String,
    /// Counts in kernel maps, printed once at exit.
    pub count: String,
}

impl Scripts {
    pub fn of(&self, cond: Condition) -> &str {
        match cond {
            Condition::BpftraceCount => &self.count,
            _ => &self.print,
        }
    }
}

/// CPU time and BPF statistics of a tracer at one instant.
pub struct Snapshot {
    pub cpu_s: f64,
    pub bpf: BTreeMap<u32, ProgStats>,
}

pub struct Tracer {
    proc: Proc,
    stderr: Arc<Mutex<String>>,
    pub ndjson: Option<PathBuf>,
    /// CPU seconds the tracer used from its start until it went quiet, before the window.
    pub startup_cpu_s: f64,
}

pub struct Stopped {
    pub status: ExitStatus,
    pub killed: bool,
    pub stderr: String,
}

impl Tracer {
    /// Starts the tracer of `cond` (none for the baseline) and returns once it is attached.
    pub fn start(cond: Condition, setup: &Setup, scripts: &Scripts) -> Result<Option<Self>> {
        let (mut cmd, ndjson) = match cond {
            Condition::Baseline => return Ok(None),
            Condition::Table
            | Condition::TableNoPaws
            | Condition::TableNoState
            | Condition::TableSynOnly
            | Condition::HooksOnly
            | Condition::HooksOnlyTw => {
                let mut c = Command::new(&setup.twtrace);
                c.args(cond.table_args()).stdout(Stdio::null());
                (c, None)
            }
            Condition::Events => {
                let path = setup.dir.join("events.ndjson");
                let file = std::fs::File::create(&path)?;
                let mut c = Command::new(&setup.twtrace);
                // As `> file` would: twtrace's stdout is the file.
                c.args(["events", "--json"]).stdout(file);
                (c, Some(path))
            }
            Condition::Bpftrace | Condition::BpftraceCount => {
                let mut c = Command::new("bpftrace");
                // -o: output (also its "Attaching 1 probe..." banner) to /dev/null.
                c.args(["-o", "/dev/null", "-e", scripts.of(cond)])
                    .stdout(Stdio::null());
                (c, None)
            }
        };
        if let (Some(family), false) = (&setup.hooks, cond.is_bpftrace()) {
            cmd.args(["--hooks", family]);
        }
        cmd.stderr(Stdio::piped());
        let mut proc = Proc::spawn(cond.label(), &mut cmd)?;
        let stderr = Arc::new(Mutex::new(String::new()));
        let pipe = proc.child().stderr.take().context("no stderr pipe")?;
        let sink = Arc::clone(&stderr);
        // Drains stderr for the whole run so the tracer never blocks on it; ends at EOF.
        std::thread::spawn(move || {
            for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                let mut s = sink.lock().unwrap_or_else(|e| e.into_inner());
                s.push_str(&line);
                s.push('\n');
            }
        });
        let mut tracer = Self {
            proc,
            stderr,
            ndjson,
            startup_cpu_s: 0.0,
        };
        tracer.wait_attached(cond, setup.bpf_stats)?;
        tracer.startup_cpu_s = tracer.wait_settled()?;
        Ok(Some(tracer))
    }

    /// Waits until the tracer, attached and with no load running yet, has gone quiet, and
    /// returns the CPU it used up to then. twtrace announces "tracing" once its programs are
    /// attached, then reads the TIME-WAITs already there (sock_diag, in every namespace):
    /// with the tens of thousands the warm-up and earlier rounds leave, that one-time read
    /// was counted as cost per connection when the window began at the announcement, and a
    /// long-running tracer pays it once. It is reported apart (`startup_cpu_s`).
    ///
    /// Quiet: no CPU tick charged over two steps of 250 ms in a row (/proc counts CPU in
    /// ticks of 10 ms, so that is under ~2 % of a CPU; an idle twtrace polls its ring at
    /// 10 Hz and uses far less). The start-up CPU is as coarse as those ticks.
    fn wait_settled(&mut self) -> Result<f64> {
        const STEP: Duration = Duration::from_millis(250);
        const QUIET_STEPS: u32 = 2;
        let limit = Instant::now() + Duration::from_secs(60);
        let mut last = procfs::cpu_seconds(self.proc.pid())?;
        let mut quiet = 0;
        loop {
            guard::sleep(STEP)?;
            self.fail_if_exited()?;
            let now = procfs::cpu_seconds(self.proc.pid())?;
            quiet = if now > last { 0 } else { quiet + 1 };
            last = now;
            if quiet >= QUIET_STEPS {
                return Ok(now);
            }
            if Instant::now() > limit {
                eprintln!(
                    "bench: {} still busy 60 s after attaching; starting the run anyway (its \
                     start-up work now counts in the window)",
                    self.proc.name
                );
                return Ok(now);
            }
        }
    }

    /// An error with the tracer's last stderr lines if it has exited (while it starts, it
    /// must not).
    fn fail_if_exited(&mut self) -> Result<()> {
        if let Some(status) = self.proc.exited()? {
            // Let the reader thread collect the last lines.
            std::thread::sleep(Duration::from_millis(200));
            bail!(
                "{} exited ({status}): {}",
                self.proc.name,
                self.stderr().trim()
            );
        }
        Ok(())
    }

    /// twtrace says "twtrace: tracing" once attached. bpftrace's banner went to /dev/null, so
    /// for it: a program that has run (timer_start fires constantly) when run counts are on,
    /// else a loaded program plus a second.
    fn wait_attached(&mut self, cond: Condition, stats: bool) -> Result<()> {
        let start = Instant::now();
        let limit = Duration::from_secs(60);
        loop {
            self.fail_if_exited()?;
            let ready = match cond {
                Condition::Bpftrace | Condition::BpftraceCount => {
                    let progs = procfs::bpf_progs(self.proc.pid()).unwrap_or_default();
                    if stats {
                        progs.values().any(|p| p.run_cnt > 0)
                    } else {
                        !progs.is_empty() && start.elapsed() > Duration::from_secs(1)
                    }
                }
                _ => self.stderr().contains("twtrace: tracing"),
            };
            if ready {
                return Ok(());
            }
            if start.elapsed() > limit {
                bail!(
                    "{} not attached after {limit:?}: {}",
                    self.proc.name,
                    self.stderr().trim()
                );
            }
            guard::sleep(Duration::from_millis(20))?;
        }
    }

    pub fn pid(&self) -> u32 {
        self.proc.pid()
    }

    pub fn stderr(&self) -> String {
        self.stderr
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    pub fn alive(&mut self) -> Result<bool> {
        Ok(self.proc.exited()?.is_none())
    }

    pub fn snapshot(&self) -> Result<Snapshot> {
        Ok(Snapshot {
            cpu_s: procfs::cpu_seconds(self.proc.pid())?,
            bpf: procfs::bpf_progs(self.proc.pid())?,
        })
    }

    /// SIGINT, as a user would; twtrace drains its ring and flushes before exiting.
    pub fn stop(mut self) -> Result<Stopped> {
        let (status, killed) = self.proc.stop(libc::SIGINT, Duration::from_secs(20))?;
        std::thread::sleep(Duration::from_millis(100)); // last stderr lines
        Ok(Stopped {
            status,
            killed,
            stderr: self.stderr(),
        })
    }
}

/// What one `twtrace events --json` run wrote.
#[derive(Default, serde::Serialize)]
pub struct EventCounts {
    pub lines: u64,
    /// tw_enter lines in any namespace, then in the server namespace only.
    pub tw_enter_all: u64,
    pub tw_enter: u64,
    pub tw_exit: u64,
    /// tw_exit/tw_reuse lines by `cause` (in this workload ports wrap every few seconds, so
    /// most server TIME-WAITs end replaced_by_syn rather than expired).
    pub exit_causes: BTreeMap<String, u64>,
    pub tw_overflow: u64,
    pub lost: u64,
    pub lost_by_program: BTreeMap<String, u64>,
}

/// Counts by line prefix (the field order is fixed by twtrace's NDJSON sink), parsing JSON
/// only for the rare `lost` lines: a run can write millions of lines.
pub fn count_ndjson(path: &Path, server_netns: u64) -> Result<EventCounts> {
    let file = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let netns_field = format!(",\"netns\":{server_netns},");
    let mut c = EventCounts::default();
    for line in BufReader::with_capacity(1 << 20, file).lines() {
        let line = line?;
        c.lines += 1;
        if line.starts_with(r#"{"type":"tw_enter""#) {
            c.tw_enter_all += 1;
            if line.contains(&netns_field) {
                c.tw_enter += 1;
            }
        } else if line.starts_with(r#"{"type":"tw_exit""#)
            || line.starts_with(r#"{"type":"tw_reuse""#)
        {
            c.tw_exit += 1;
            let cause = line
                .split_once(r#""cause":""#)
                .and_then(|(_, rest)| rest.split_once('"'))
                .map_or("?", |(cause, _)| cause);
            *c.exit_causes.entry(cause.to_string()).or_default() += 1;
        } else if line.starts_with(r#"{"type":"tw_overflow""#) {
            c.tw_overflow += 1;
        } else if line.starts_with(r#"{"type":"lost""#) {
            let v: serde_json::Value = serde_json::from_str(&line)?;
            let n = v["count"].as_u64().unwrap_or(0);
            c.lost += n;
            let program = v["program"].as_str().unwrap_or("?").to_string();
            *c.lost_by_program.entry(program).or_default() += n;
        }
    }
    Ok(c)
}
