//! The two ways of running: the live table (default) and the event stream, plus `doctor`.
//! Both load the programs, then loop: drain the ring, decode, filter, hand to the sink; they
//! stop on SIGINT/SIGTERM, and dropping the loaded object detaches every program.

use std::{
    fs::File,
    io::{self, BufWriter, IsTerminal as _, Write},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result};

use crate::{
    aggregate::{Aggregate, paws::PawsView},
    cli::{Cli, Command, Common, EventsOpts, HookChoice, LiveOpts},
    doctor,
    event::{Record, What},
    filter::{self, Filter, NetnsArg},
    loader::{self, LoadOptions, Loaded},
    pipeline::Pipeline,
    shutdown::Shutdown,
    signals::{self, Family, tw_present},
    sinks::{
        self,
        alerts::{AlertRules, Alerter},
        ndjson,
        screen::Size,
        table,
    },
};

/// How often the ring is drained when the kernel has not woken us (it wakes us only when the
/// ring passes 1/8 full, to avoid a wake-up per event).
const POLL: Duration = Duration::from_millis(100);
/// How long after an overflow its retraction may still come: the kernel side retracts within
/// 200 ms (`RESET_WINDOW_NS` in twtrace-ebpf/src/tw_overflow.rs; microseconds but on a
/// preempted vCPU), and writes the record a moment later. Tracepoint-route overflows come out
/// this much later, plus a poll period.
const RETRACTION_NS: u64 = 210_000_000;
/// How often the kernel's per-CPU loss counters are read.
const LOSS_CHECK: Duration = Duration::from_secs(1);

pub async fn main(cli: Cli) -> Result<()> {
    let unused = cli.unused_flags();
    if !unused.is_empty() {
        let mode = match &cli.command {
            Some(Command::Doctor(_)) => "doctor",
            Some(Command::Events(_)) => "events",
            None => "the live table",
        };
        anyhow::bail!("{mode} does not use {}", crate::cli::describe(&unused));
    }
    if let Some(Command::Doctor(opts)) = &cli.command {
        return doctor::run(&cli.common, opts.verbose, opts.all_hooks);
    }
    // Root, BTF and lockdown first: nothing (an --output file truncated, say) may happen for
    // a run that cannot trace at all.
    crate::kernel::preflight()?;
    // Where output goes is checked before anything is attached: a bad path fails at once,
    // not after the first interval with the programs already in the kernel.
    let output = match &cli.command {
        Some(Command::Events(opts)) => open_output(opts, &cli.common)?,
        _ => None,
    };
    if let Some(path) = &cli.common.summary_json {
        sinks::summary::check_writable(path)?;
    }
    let netns = netns_arg(&cli.common)?;
    let options = load_options(&cli.common, netns.as_ref());
    // Where the namespace is found now, before loading (which can take a while): the watch
    // starts from there.
    let netns_found = netns.as_ref().map(found_netns);
    // Before loading: a SIGTERM that arrives while programs attach must still end in a clean
    // detach and exit 0, not in the default action.
    let shutdown = Shutdown::new()?;
    let loaded = loader::load(&options)?;
    // Only now, with tracing sure to start, is an existing --output file emptied.
    let output = output.map(PendingOutput::start).transpose()?;
    announce(&loaded);
    return_freed_memory();
    if let (Some(n), Some(Some(at))) = (&netns, netns_found) {
        let given = cli.common.netns.clone().unwrap_or_default();
        tokio::spawn(watch_netns(given, n.inode, at));
    }
    say_what_flags_change(&cli.common);
    let filter = Filter {
        ports: cli.common.ports.clone(),
        nets: cli.common.ips.clone(),
    };
    let present = present_read(&loaded, &cli.common, netns, &filter);
    match cli.command {
        Some(Command::Events(opts)) => {
            events(
                loaded,
                shutdown,
                &filter,
                present,
                &cli.common,
                &opts,
                output,
            )
            .await
        }
        _ => live(loaded, shutdown, &filter, present, &cli.common, &cli.live).await,
    }
}

/// Notes on stderr where a flag does something the user may not have meant: a CIDR with host
/// bits set (`10.0.0.1/8` is taken as the network, as routing tools do), and the benchmark
/// mode that reports nothing.
fn say_what_flags_change(c: &Common) {
    for net in c.ips.iter().filter(|n| n.addr() != n.network()) {
        crate::say!(
            "twtrace: note: --ip {net} has host bits set: it matches all of {}",
            net.trunc()
        );
    }
    if c.hooks_only {
        crate::say!(
            "twtrace: note: --hooks-only attaches the programs and reports nothing (every \
             count stays 0): it measures what the hooks alone cost (cargo xtask bench)"
        );
    }
}

/// `--netns`, parsed once: the kernel filters on its inode, the start-up read enters it.
pub fn netns_arg(c: &Common) -> Result<Option<NetnsArg>> {
    c.netns.as_deref().map(filter::parse_netns).transpose()
}

pub fn load_options(c: &Common, netns: Option<&NetnsArg>) -> LoadOptions {
    LoadOptions {
        forced: match c.hooks {
            HookChoice::Auto => None,
            HookChoice::Only(f) => Some(f),
        },
        netns: netns.map_or(0, |n| n.inode),
        signals: c.signals.clone(),
        ring_bytes: c.ring_kib * 1024,
        max_live_tw: c.max_live_tw,
        hooks_only: c.hooks_only,
    }
}

/// `events --output FILE`, opened (created if missing) before anything is attached, so that a
/// path that cannot be written fails at once; emptied only once tracing starts
/// ([`PendingOutput::start`]): a run that fails before (a mistyped --netns, a forced hook
/// family that cannot load) leaves an earlier capture as it was, and removes a file it created.
struct PendingOutput {
    file: Option<File>,
    path: std::path::PathBuf,
    created: bool,
}

impl PendingOutput {
    fn start(mut self) -> Result<File> {
        let file = self.file.take().expect("started once");
        // Only a regular file holds an earlier capture; /dev/null, a tty or a pipe cannot be
        // emptied (and need not be).
        if file.metadata().is_ok_and(|m| m.is_file()) {
            file.set_len(0)
                .with_context(|| format!("--output {}: cannot empty it", self.path.display()))?;
        }
        Ok(file)
    }
}

impl Drop for PendingOutput {
    fn drop(&mut self) {
        if self.file.is_some() && self.created {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// `events --output FILE` (see [`PendingOutput`]); refused when it is also the --summary-json
/// file (each summary rewrite would replace the event stream).
fn open_output(opts: &EventsOpts, common: &Common) -> Result<Option<PendingOutput>> {
    let Some(path) = opts.output_file() else {
        return Ok(None);
    };
    if let Some(summary) = &common.summary_json
        && sinks::summary::same_file(path, summary)
    {
        anyhow::bail!(
            "--output and --summary-json are the same file ({}): give each its own",
            path.display()
        );
    }
    if path.is_dir() {
        anyhow::bail!("--output {}: is a directory", path.display());
    }
    let created = !path.exists();
    let file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
        .with_context(|| format!("--output {}: cannot create it", path.display()))?;
    Ok(Some(PendingOutput {
        file: Some(file),
        path: path.to_path_buf(),
        created,
    }))
}

/// Where the `--netns` namespace is found now: its file when given as one (parsing just checked
/// it), else a file of a process in it or a name for it. None, said as a warning, when no
/// process runs in it and nothing names it: it may appear later, or be held open by something
/// twtrace cannot see.
fn found_netns(netns: &NetnsArg) -> Option<std::path::PathBuf> {
    let at = crate::kernel::netns::find(netns.inode, netns.file.as_deref());
    if at.is_none() {
        crate::say!(
            "twtrace: warning: --netns {}: no such namespace in use now (no process runs \
             in it and nothing under /run/netns names it); nothing will show unless it appears",
            netns.inode
        );
    }
    at
}

/// How often the `--netns` namespace is looked for while tracing.
const NETNS_CHECK: Duration = Duration::from_secs(5);

/// Says once when the `--netns` namespace (`given`, inode `inode`), found at start at `at`,
/// can no longer be found (`ip netns del`, its last process gone): tracing goes on, but a
/// namespace that went shows nothing more, and a quiet table would read as a quiet namespace.
/// Each look tries the file it was last found through first: /proc is scanned only when that
/// fails.
async fn watch_netns(given: String, inode: u32, mut at: std::path::PathBuf) {
    loop {
        tokio::time::sleep(NETNS_CHECK).await;
        let last = at.clone();
        let look = move || crate::kernel::netns::find(inode, Some(&last));
        match tokio::task::spawn_blocking(look).await {
            Ok(Some(now)) => at = now,
            Ok(None) => {
                crate::say!(
                    "twtrace: warning: --netns {given}: the namespace can no longer be found \
                     (deleted, or held only where twtrace does not look: an open descriptor, a \
                     bind mount outside /run/netns); nothing more will show if it is gone"
                );
                return;
            }
            Err(_) => return,
        }
    }
}

/// Whether stdout is a pipe or socket whose reader has gone (`twtrace events | head`): its
/// write end then polls POLLERR or POLLHUP. Checked every drain, so that a quiet stream
/// stops too, not only one whose next write fails.
fn stdout_reader_gone() -> bool {
    let mut p = libc::pollfd {
        fd: libc::STDOUT_FILENO,
        events: 0,
        revents: 0,
    };
    // SAFETY: one pollfd, zero timeout.
    (unsafe { libc::poll(&mut p, 1, 0) } == 1) && p.revents & (libc::POLLERR | libc::POLLHUP) != 0
}

/// Whether to read the TIME-WAITs already there at start-up, of which namespace (0: all),
/// which (--port/--ip) and how many at most: only when both ends of a TIME-WAIT are traced
/// (without them `live` has no meaning), and not with --hooks-only.
fn present_read(
    l: &Loaded,
    c: &Common,
    netns: Option<NetnsArg>,
    filter: &Filter,
) -> Option<tw_present::Wanted> {
    let traced = |name: &str| {
        l.choices
            .iter()
            .any(|ch| ch.signal == name && ch.untraced_why().is_none())
    };
    if c.hooks_only || !traced("tw_enter") || !traced("tw_exit") {
        return None;
    }
    Some(tw_present::Wanted {
        netns,
        filter: filter.clone(),
        limit: l.max_live_tw,
    })
}

/// One line on stderr naming the hook behind each signal; tests wait for "twtrace: tracing".
fn announce(l: &Loaded) {
    let hooks: Vec<String> = l
        .choices
        .iter()
        .map(|c| {
            format!(
                "{}={}{}",
                c.signal,
                c.hook_label(),
                if c.limits.is_some() { "(partial)" } else { "" }
            )
        })
        .collect();
    crate::say!("twtrace: tracing ({})", hooks.join(" "));
    let shared_guard =
        (l.choices.iter()).any(|c| matches!(c.chosen, Some(Family::Tracepoint | Family::Kprobe)));
    if shared_guard && !l.facts.skips_counted {
        crate::say!(
            "twtrace: note: this kernel does not count the runs of classic tracepoint and kprobe \
             programs it skips (6.7 does): events missed while an interrupt is nested in another \
             BPF program on a CPU go unreported"
        );
    }
}

/// What `on_tick` tells [`pump`].
#[derive(Clone, Copy, Debug, Default)]
struct Ticked {
    /// The output has gone (a closed pipe): stop as a signal does, with the same final drain
    /// and detach.
    output_gone: bool,
    /// The live counts hold TIME-WAITs past their timeout (`Aggregate::overdue`): read the
    /// kernel's sockets again, as after a loss.
    overdue: bool,
}

/// Runs `on_record` for every record (and every loss) until shutdown; `on_tick` after each drain.
async fn pump(
    mut loaded: Loaded,
    mut shutdown: Shutdown,
    filter: &Filter,
    present: Option<tw_present::Wanted>,
    reread_every: Option<Duration>,
    mut on_record: impl FnMut(&Record) -> Result<()>,
    mut on_tick: impl FnMut(bool) -> Result<Ticked>,
) -> Result<()> {
    let attached = (loaded.choices.iter()).flat_map(|c| c.attached.iter().map(|a| a.program));
    let mut transport =
        crate::transport::Transport::new(&mut loaded.bpf, attached, loaded.facts.skips_counted)?;
    let mut pipeline = Pipeline::new(loaded.facts.decode_ctx(), loaded.max_live_tw);
    pipeline
        .set_lifetimes_paired_in_kernel(crate::loader::lifetimes_paired_in_kernel(&loaded.choices));
    pipeline.set_late_syns(crate::loader::late_syns(&loaded.choices));
    let mut failed = None;
    let mut next_loss_check = Instant::now();
    let mut rereads = tw_present::Rereads::new(reread_every.filter(|_| present.is_some()));
    let (mut reading, mut held) = tw_present::start(present.clone(), None);
    let mut batch = Vec::new();
    loop {
        let before = monotonic_ns();
        let mut drained = false;
        let stop = tokio::select! {
            _ = shutdown.wait() => true,
            snap = reading.done(), if reading.is_running() => {
                held.release(snap, filter, &mut on_record)?;
                false
            }
            r = transport.drain(POLL, &mut batch) => { r?; drained = true; false }
        };
        // A drain that emptied the ring read every record written before it began, so every
        // retraction of an overflow from before that, less the moment one takes to follow.
        if drained && transport.caught_up() {
            pipeline.settled_before(before.saturating_sub(RETRACTION_NS));
        }
        pipeline.set_now(before);
        // What a completed drain took (a drain cancelled by another branch takes nothing).
        pipeline.feed_batch(&batch, filter, |rec| {
            rereads.note(rec);
            if !held.hold(rec)
                && failed.is_none()
                && let Err(e) = on_record(rec)
            {
                failed = Some(e);
            }
        });
        batch.clear();
        // Losses are read from every CPU's counters (one syscall per slot): once a second is
        // soon enough, and keeps an idle tracer idle.
        let now = Instant::now();
        let losses = if stop || now >= next_loss_check {
            next_loss_check = now + LOSS_CHECK;
            transport.new_losses(monotonic_ns())
        } else {
            Vec::new()
        };
        for rec in &losses {
            rereads.note(rec);
            on_record(rec)?;
        }
        if let Some(e) = failed.take() {
            return Err(e);
        }
        if let Some(logger) = loaded.logger.as_mut() {
            logger.flush();
        }
        // After this drain's records: an exit just drained ends its doubt.
        let Ticked {
            output_gone,
            overdue,
        } = on_tick(false)?;
        // Events were lost, or the live counts hold TIME-WAITs past their timer: they start
        // over from the kernel's own sockets (the reset goes first when the read is done).
        // Records from before it still come; the aggregate tells them by time. Not while a
        // read runs (its records are held back, exits included).
        if !(stop || output_gone || reading.is_running()) && rereads.due(now, overdue) {
            (reading, held) = tw_present::start(present.clone(), Some(monotonic_ns()));
        }
        if stop || output_gone {
            // Stopped while the start-up read ran: it still goes first.
            held.release(reading.done().await, filter, &mut on_record)?;
            // Final drain so nothing already in the ring, or parked in the kernel, is lost.
            crate::plan::silence(&mut loaded.bpf)?;
            let parked = signals::tw_exit::parked_exits(&mut loaded.bpf)?;
            let mut last = |ev: twtrace_common::Event| {
                pipeline.feed(ev, filter, |rec| {
                    let _ = on_record(rec);
                });
            };
            while transport.drain(Duration::ZERO, &mut batch).await? > 0 {
                batch.iter().copied().for_each(&mut last);
            }
            parked.into_iter().for_each(last);
            // Nothing more can retract an overflow still held.
            pipeline.settled_before(u64::MAX);
            pipeline.feed_batch(&[], filter, |rec| {
                let _ = on_record(rec);
            });
            // Records the kernel could not store between the last check and the silence.
            for rec in &transport.new_losses(monotonic_ns()) {
                on_record(rec)?;
            }
            on_tick(true)?;
            break;
        }
    }
    drop(loaded); // detaches and unloads every program and map
    Ok(())
}

/// What both modes keep between ticks: the aggregate (for the table, the summary file and
/// alerts) and when to act next.
struct Reporter {
    agg: Aggregate,
    every: Duration,
    next: Instant,
    alerter: Option<Alerter>,
    summary: Option<sinks::summary::SummaryFile>,
    capacity: u32,
    table: Option<table::TableOpts>,
    top: usize,
    buf: String,
    /// stdout's reader has gone: the table is no longer printed.
    closed: bool,
}

impl Reporter {
    fn new(common: &Common, table: Option<table::TableOpts>, top: usize) -> Self {
        let every = Duration::from_secs_f64(common.interval);
        Self {
            agg: Aggregate::new(common.capacity as usize),
            every,
            next: Instant::now() + every,
            alerter: (common.alert_rejects > 0).then(|| {
                Alerter::new(AlertRules {
                    min_rejects: common.alert_rejects,
                    every: Duration::from_secs_f64(common.alert_every),
                })
            }),
            summary: (common.summary_json.clone()).map(sinks::summary::SummaryFile::start),
            capacity: common.capacity,
            table,
            top,
            buf: String::new(),
            closed: false,
        }
    }

    /// Acts once per interval, or now when `last` (shutdown).
    fn tick(&mut self, last: bool) -> Result<()> {
        let now = Instant::now();
        if !last && now < self.next {
            return Ok(());
        }
        self.next = now + self.every;
        let mono = monotonic_ns();
        let alert_at = self.alerter.as_ref().map(Alerter::threshold);
        let top = if self.table.is_some() { self.top } else { 0 };
        // Every row only for a summary due a rewrite; otherwise those shown or due an alert
        // check.
        let changes = self.agg.paws.changes();
        let settled_at = self.agg.paws.settled_at();
        let due = (self.summary.as_ref()).is_some_and(|f| f.due(changes, settled_at, mono, last));
        let rows = due.then(|| self.agg.paws.rows(mono));
        let view = match &rows {
            Some(rows) => PawsView::of(rows, self.agg.paws.totals(), top, alert_at),
            None => self.agg.paws.view(mono, top, alert_at),
        };
        if let Some(alerter) = &mut self.alerter {
            for line in alerter.check(&view.alerting, now) {
                crate::say!("{line}");
            }
        }
        if let Some(file) = &mut self.summary {
            if let Some(rows) = &rows {
                file.write(rows, changes, last)?;
            }
            let at_exit = (rows.as_deref()).filter(|_| last);
            let at_exit = at_exit.map(|r| (r, self.agg.paws.totals().0));
            file.say_evictions(self.agg.paws.evictions, self.capacity, at_exit);
        }
        if let Some(opts) = self.table.as_ref().filter(|_| !self.closed) {
            self.buf.clear();
            // Without both PAWS signals the section has nothing to show (the totals say why).
            let untraced = |name: &str| opts.untraced.iter().any(|(s, _)| *s == name);
            let paws = !(untraced("syn") && untraced("paws_reject"));
            // On a terminal the refresh has just cleared what stderr said: said again below.
            let said =
                (opts.clear_screen && io::stderr().is_terminal()).then(crate::stderr::recent);
            let picked = table::Picked::of(&self.agg, opts, mono);
            let compose = |rows: usize, out: &mut String| {
                table::render_picked(&self.agg, opts, &picked, rows, out);
                if paws {
                    // Apart from the sections above (a terminal's rendering ends with no blank).
                    if !out.ends_with("\n\n") {
                        out.push('\n');
                    }
                    sinks::paws_table::render(&view, self.agg.paws.evictions, rows, out);
                }
                if let Some(said) = &said {
                    sinks::table::render_said(said, out);
                }
                picked.more_than(rows) || (paws && view.top.len() > rows)
            };
            let size = opts.clear_screen.then(Size::of_stdout).flatten();
            sinks::screen::fit(opts.top, size, compose, &mut self.buf);
            let mut stdout = io::stdout().lock();
            let written = stdout
                .write_all(self.buf.as_bytes())
                .and_then(|_| stdout.flush());
            // `twtrace | head`: the reader has had enough.
            self.closed |= sinks::reader_gone(written).context("writing the table to stdout")?;
        }
        Ok(())
    }
}

/// Hands the heap freed by loading back to the system. Loading parses the kernel's BTF twice
/// (twtrace's layout reader and aya's loader), tens of MB dropped once the programs are in;
/// glibc keeps freed heap mapped unless asked, and a service would hold it for its lifetime.
fn return_freed_memory() {
    // SAFETY: malloc_trim only releases free memory of the allocator's own arenas.
    unsafe { libc::malloc_trim(0) };
}

/// CLOCK_MONOTONIC, the clock of the kernel's event timestamps.
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes the timespec we pass.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

async fn events(
    loaded: Loaded,
    shutdown: Shutdown,
    filter: &Filter,
    present: Option<tw_present::Wanted>,
    common: &Common,
    opts: &EventsOpts,
    output: Option<File>,
) -> Result<()> {
    let to_stdout = output.is_none();
    let sink: Box<dyn Write> = match output {
        Some(file) => Box::new(file),
        None => Box::new(io::stdout().lock()),
    };
    // Set when a write finds the reader gone (`| head`): a normal way to stop reading.
    let closed = std::cell::Cell::new(false);
    let target = match opts.output_file() {
        Some(path) => path.display().to_string(),
        None => "stdout".to_string(),
    };
    let gone = |r: io::Result<()>| -> Result<()> {
        if sinks::reader_gone(r).with_context(|| format!("writing events to {target}"))? {
            closed.set(true);
        }
        Ok(())
    };
    let out = std::cell::RefCell::new(BufWriter::with_capacity(64 * 1024, sink));
    let json = opts.json;
    // The aggregate is only needed for the summary file and alerts, and only its PAWS rows.
    let reporter = std::cell::RefCell::new(
        (common.summary_json.is_some() || common.alert_rejects > 0)
            .then(|| Reporter::new(common, None, 0)),
    );
    let result = pump(
        loaded,
        shutdown,
        filter,
        present,
        // Nothing here shows live counts, and the read would repeat its tw_present events.
        None,
        |rec| {
            if let Some(r) = reporter.borrow_mut().as_mut() {
                r.agg.apply_paws_only(rec);
            }
            // Knowledge for the aggregate, not events.
            if closed.get() || matches!(rec.what, What::Listening | What::LiveReset) {
                return Ok(());
            }
            let mut out = out.borrow_mut();
            gone(if json {
                ndjson::write_record(&mut *out, rec)
            } else {
                crate::sinks::write_text_line(&mut *out, rec)
            })
        },
        // Flush once per drained batch: consumers see events within one poll period, and the
        // cost stays one write per batch, not per event.
        |last| {
            if let Some(r) = reporter.borrow_mut().as_mut() {
                r.tick(last)?;
            }
            if !closed.get() {
                gone(out.borrow_mut().flush())?;
            }
            Ok(Ticked {
                output_gone: closed.get() || (to_stdout && stdout_reader_gone()),
                // No live counts here.
                overdue: false,
            })
        },
    )
    .await;
    if !closed.get() {
        gone(out.into_inner().flush())?;
    }
    result
}

async fn live(
    loaded: Loaded,
    shutdown: Shutdown,
    filter: &Filter,
    present: Option<tw_present::Wanted>,
    common: &Common,
    opts: &LiveOpts,
) -> Result<()> {
    let untraced: Vec<_> = (loaded.choices.iter())
        .filter_map(|c| Some((c.signal, c.untraced_why()?)))
        .collect();
    let topts = table::TableOpts {
        top: opts.top,
        order: table::order_counted(opts.sort, &untraced),
        untraced,
        partial: loaded
            .choices
            .iter()
            .filter_map(|c| Some((c.signal, c.limits?)))
            .collect(),
        clear_screen: io::stdout().is_terminal(),
        // No read without the start-up one (`--hooks-only`, or LIVE not kept).
        reread_secs: (opts.reread > 0.0 && present.is_some()).then_some(opts.reread),
    };
    let reporter = std::cell::RefCell::new(Reporter::new(common, Some(topts), opts.top));
    pump(
        loaded,
        shutdown,
        filter,
        present,
        (opts.reread > 0.0).then(|| Duration::from_secs_f64(opts.reread)),
        |rec| {
            reporter.borrow_mut().agg.apply(rec);
            Ok(())
        },
        |last| {
            let mut r = reporter.borrow_mut();
            r.tick(last)?;
            Ok(Ticked {
                output_gone: r.closed || stdout_reader_gone(),
                overdue: r.agg.overdue(monotonic_ns()) > 0,
            })
        },
    )
    .await
}
