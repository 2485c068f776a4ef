//! Command line.

use std::{
    collections::BTreeSet,
    ffi::OsString,
    path::{Path, PathBuf},
};

use clap::{
    ArgMatches, Args, CommandFactory as _, FromArgMatches as _, Parser, Subcommand,
    parser::ValueSource,
};
use ipnet::IpNet;

use crate::{aggregate::order::Order, filter, signals::Family};

const ABOUT: &str = "Live tracing of TCP TIME-WAIT sockets, per remote IP, with eBPF.";

const LONG_ABOUT: &str = "\
Live tracing of TCP TIME-WAIT sockets, per remote IP, with eBPF.

Without a subcommand, twtrace prints a table every --interval: TIME-WAITs created, alive now,
how they ended (expired, replaced_by_syn, killed_by_rst, reused, purged, unknown), overflows
(tcp_max_tw_buckets full) and connect() EADDRNOTAVAIL failures, per remote IP, per local port
and per destination; then PAWS (RFC 7323 timestamp) rejects per source IP, with how many
timestamp clocks sit behind each IP (NAT) and the reject rate they predict.
`twtrace events --json` streams every event as NDJSON instead.

Examples:
  sudo twtrace                             live table, all namespaces
  sudo twtrace --port 443 --ip 10.0.0.0/8  only port 443 traffic with 10/8
  sudo twtrace events --json > tw.ndjson   every event, one JSON object per line
  sudo twtrace --summary-json paws.json    also keep a per-source-IP PAWS summary file
  sudo twtrace doctor                      what this kernel allows and which hooks twtrace uses";

#[derive(Debug, Parser)]
#[command(name = "twtrace", version, about = ABOUT, long_about = LONG_ABOUT)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    #[command(flatten)]
    pub common: Common,
    #[command(flatten)]
    pub live: LiveOpts,
    /// The flags given on the command line (their ids), defaults left out: a flag a mode does
    /// not use is refused whatever its value, `--top 20` as much as `--top 5`.
    #[arg(skip)]
    given: BTreeSet<String>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Stream every event (TIME-WAIT enter/exit, overflow, EADDRNOTAVAIL, PAWS rejects,
    /// SYNs, losses).
    #[command(
        after_help = "Of the flags above, --top, --sort and --reread are for the live table \
        and refused here; --capacity and --interval need an aggregate to act on (--summary-json, \
        or alerts on)."
    )]
    Events(EventsOpts),
    /// Show the kernel, BTF, lockdown and which hook serves each signal, and why.
    #[command(
        after_help = "Of the flags above, doctor uses --hooks, --signals, --netns, \
        --ring-kib and --max-live-tw (what is loaded); the others are for tracing and refused here."
    )]
    Doctor(DoctorOpts),
}

#[derive(Debug, Args)]
pub struct Common {
    /// Hook family: `auto` picks, per signal, the best that loads (fentry, then kprobe, then
    /// tp_btf, then tracepoint), and leaves out with a warning a signal nothing can serve;
    /// naming a family (fentry, kprobe, tp_btf, tracepoint) forces it and fails if it cannot
    /// serve every signal. A hook that serves a signal only in part says so at start-up, e.g.
    /// PAWS rejects at request sockets (syn_recv) on kernels before ~6.15, which only
    /// function probes see there.
    /// `twtrace doctor` shows the choice.
    #[arg(long, global = true, value_name = "FAMILY", default_value = "auto", value_parser = parse_hooks)]
    pub hooks: HookChoice,

    /// Trace only these signals (comma-separated): tw_enter, tw_exit, tw_overflow,
    /// connect_eaddrnotavail, paws_reject, syn. Default: all. Fewer signals attach fewer
    /// programs; e.g. without paws_reject and syn the PAWS/NAT columns stay empty. Where only
    /// tracepoints load, tw_overflow and connect_eaddrnotavail need a hook on every TCP state
    /// change (a third of all hook runs; README, Performance).
    #[arg(long, global = true, value_name = "LIST", value_delimiter = ',', value_parser = parse_signal)]
    pub signals: Vec<&'static str>,

    /// Attach the programs and report nothing: the tp_btf dispatchers still run their first
    /// filter on every hit (no signal is routed through them), every other program returns at
    /// once. What the hooks alone cost, for `cargo xtask bench`; not for use.
    #[arg(long, global = true, hide = true)]
    pub hooks_only: bool,

    /// Only this network namespace: its inode number, as `readlink /proc/PID/ns/net` prints it
    /// (`net:[4026531840]`, or just the number), a name under /run/netns, or a namespace file
    /// such as /proc/PID/ns/net. Filtered in the kernel.
    #[arg(
        long,
        global = true,
        value_name = "NETNS",
        allow_negative_numbers = true
    )]
    pub netns: Option<String>,

    /// Only events with this local or remote port, 1-65535 (repeatable).
    #[arg(long = "port", global = true, value_name = "PORT", allow_negative_numbers = true, value_parser = parse_port)]
    pub ports: Vec<u16>,

    /// Only events with a local or remote address in this address or CIDR (repeatable).
    #[arg(long = "ip", global = true, value_name = "ADDR|CIDR", value_parser = filter::parse_net)]
    pub ips: Vec<IpNet>,

    /// Most remote IPs / ports / destinations, and PAWS source IPs, kept in the aggregate (at
    /// least 16); least recent are evicted (and counted) beyond this. Memory: a PAWS source IP
    /// holds about 1.5 KB after a SYN or two, up to ~5 KB with many clocks (65536 one-SYN IPs
    /// took ~100 MB).
    #[arg(long, global = true, default_value_t = 65_536, value_name = "N", allow_negative_numbers = true, value_parser = parse_capacity)]
    pub capacity: u32,

    /// Ring buffer size in KiB: a power of two from 64 to 1048576 (1 GiB). It is kernel
    /// memory, taken whole at start-up.
    #[arg(long, global = true, default_value_t = 4096, value_name = "KIB", allow_negative_numbers = true, value_parser = parse_ring_kib)]
    pub ring_kib: u32,

    /// TIME-WAIT sockets whose entry time is kept for their lifetime: in the kernel on the
    /// classic tracepoint route (more are still reported, and counted as `live_table_full`
    /// losses), in user space elsewhere (the latest N enters are always kept, older ones may be
    /// forgotten, counted as `max_live_tw` losses: their exits show `lifetime_ms: null` and LIVE
    /// over-counts by as many until the next --reread; raise it on hosts with more live
    /// TIME-WAITs). On tp_btf before 6.11 it also bounds the kernel's table of live
    /// TIME-WAITs by connection, through which their PAWS rejects are found (when full:
    /// `live_table_full` losses, and a warning). And it bounds the TIME-WAITs read from the
    /// kernel's sockets and counted as live, at start-up (`tw_present`) and after lost events
    /// (--reread), of those --port/--ip let through; beyond it, a warning. 1024 to 67108864.
    /// On the classic route the kernel's table is preallocated, about 88 bytes per entry (23 MB
    /// at the default).
    #[arg(long, global = true, default_value_t = 262_144, value_name = "N", allow_negative_numbers = true, value_parser = parse_max_live_tw)]
    pub max_live_tw: u32,

    /// Seconds between table refreshes, summary rewrites and alert checks (0.05 to 3600).
    #[arg(long, global = true, default_value_t = 1.0, value_name = "SECS", allow_negative_numbers = true, value_parser = parse_seconds)]
    pub interval: f64,

    /// Keep FILE up to date with the per-source-IP PAWS aggregate (a JSON list; fields in the
    /// README): an empty list at start, rewritten atomically at each --interval while anything
    /// in it moves (a record counted, or rates still decaying: 200 s after the last), and on
    /// exit.
    #[arg(long, global = true, value_name = "FILE")]
    pub summary_json: Option<PathBuf>,

    /// Alert (one line on stderr) when a source IP reaches this many PAWS rejects at
    /// TIME-WAIT; 0 turns alerts off.
    #[arg(
        long,
        global = true,
        default_value_t = 5,
        value_name = "N",
        allow_negative_numbers = true,
        value_parser = parse_alert_rejects
    )]
    pub alert_rejects: u64,

    /// Least seconds between two alerts about the same source IP (0.05 to 3600).
    #[arg(long, global = true, default_value_t = 60.0, value_name = "SECS", allow_negative_numbers = true, value_parser = parse_seconds)]
    pub alert_every: f64,
}

#[derive(Debug, Args)]
pub struct LiveOpts {
    /// Rows per table (live table only), at least 1. On a terminal, fewer when the window is
    /// too short for them all (a last line says so); to a pipe or file, all of them.
    #[arg(
        long,
        global = true,
        default_value_t = LIVE_TOP,
        value_name = "N",
        allow_negative_numbers = true,
        value_parser = parse_top
    )]
    pub top: usize,

    /// After events were lost (the `lost` lines), or while LIVE counts TIME-WAITs past their
    /// timer with no exit seen, read the kernel's own TIME-WAIT sockets again, as at start-up,
    /// so that LIVE is exact again: a lost exit would leave it too high for good, a lost enter
    /// too low. At most once every SECS (0.05 to 3600); 0: never. Live table only.
    #[arg(long, global = true, default_value_t = LIVE_REREAD, value_name = "SECS", allow_negative_numbers = true, value_parser = parse_reread)]
    pub reread: f64,

    /// What the REMOTE_IP and LOCAL_PORT rows are sorted by, most first (live table only):
    /// live (TIME-WAITs alive now: where they pile up), tw_created, exits, one exit cause
    /// (expired, replaced_by_syn, killed_by_rst, reused, purged, unknown), overflow or
    /// eaddrnotavail.
    #[arg(long, global = true, default_value_t = LIVE_SORT, value_name = "KEY", value_parser = parse_sort)]
    pub sort: Order,
}

#[derive(Debug, Args)]
pub struct EventsOpts {
    /// One JSON object per line (NDJSON; fields documented in the README). Without it, one
    /// human-readable line per event: seconds of the kernel's monotonic clock (`ts_ns`: since
    /// boot, time suspended left out), the namespace, the local address, `<-` (a segment received: SYN, PAWS
    /// reject), `->` (a connect()) or `<->` (a socket: TIME-WAIT, overflow), the remote
    /// address, and what happened.
    #[arg(long)]
    pub json: bool,

    /// Write events here instead of stdout (`-`: stdout).
    #[arg(long, value_name = "FILE")]
    pub output: Option<PathBuf>,
}

impl EventsOpts {
    /// The file `--output` names; None for stdout (no --output, or `-` as tools take it).
    pub fn output_file(&self) -> Option<&Path> {
        self.output.as_deref().filter(|p| *p != Path::new("-"))
    }
}

#[derive(Debug, Args)]
pub struct DoctorOpts {
    /// Print every rejection in full (verifier logs included), not just its first line.
    #[arg(long, short)]
    pub verbose: bool,

    /// Load and attach every hook of every signal (of --signals), one at a time, and detach
    /// each again, instead of only the one chosen: shows which fallbacks this kernel would
    /// take. Fails if a hook this kernel could run is refused
    #[arg(long)]
    pub all_hooks: bool,
}

impl Cli {
    /// The process's command line, parsed (clap's own exit on errors and --help).
    pub fn from_env() -> Self {
        Self::try_from_args(std::env::args_os()).unwrap_or_else(|e| e.exit())
    }

    /// `args` (the program's name first) parsed as the command line is: see [`hoist_globals`].
    pub fn try_from_args<I, T>(args: I) -> Result<Self, clap::Error>
    where
        I: IntoIterator<Item = T>,
        T: Into<OsString>,
    {
        let args = hoist_globals(args.into_iter().map(Into::into).collect());
        let matches = Self::command().try_get_matches_from(args)?;
        let mut cli =
            Self::from_arg_matches(&matches).map_err(|e| e.format(&mut Self::command()))?;
        cli.given = given_on_the_command_line(&matches);
        Ok(cli)
    }

    /// Whether the flag whose id (field name) is `id` was given, whatever its value.
    fn given(&self, id: &str) -> bool {
        self.given.contains(id)
    }

    /// Flags the chosen mode would silently ignore (clap accepts the global ones everywhere):
    /// refused, naming them and why, so nobody believes e.g. `doctor --port 443` filtered
    /// anything.
    pub fn unused_flags(&self) -> Vec<Unused> {
        let c = &self.common;
        let given = |id: &str| self.given(id);
        let mut unused = Vec::new();
        let mut check = |used: bool, flag: &'static str, why: Option<&'static str>| {
            if used {
                unused.push(Unused { flag, why });
            }
        };
        match &self.command {
            Some(Command::Doctor(_)) => {
                check(!c.ports.is_empty(), "--port", None);
                check(!c.ips.is_empty(), "--ip", None);
                check(c.summary_json.is_some(), "--summary-json", None);
                check(given("capacity"), "--capacity", None);
                check(given("interval"), "--interval", None);
                check(given("alert_rejects"), "--alert-rejects", None);
                check(given("alert_every"), "--alert-every", None);
                check(given("top"), "--top", None);
                check(given("sort"), "--sort", None);
                check(given("reread"), "--reread", None);
                return unused;
            }
            Some(Command::Events(_)) => {
                let table = Some("it prints no table");
                check(given("top"), "--top", table);
                check(given("sort"), "--sort", table);
                // events shows no live counts, and would repeat its tw_present events.
                check(given("reread"), "--reread", Some("it shows no live counts"));
                // Without alerts and a summary file, events keeps no aggregate and no clock.
                let aggregate = c.summary_json.is_some() || c.alert_rejects > 0;
                let why = Some("without --summary-json and with alerts off it keeps no aggregate");
                check(!aggregate && given("capacity"), "--capacity", why);
                check(!aggregate && given("interval"), "--interval", why);
            }
            None => {}
        }
        // What the PAWS aggregate is made of, left out by --signals: the summary would stay an
        // empty list, and alerts (rejects at TIME-WAIT) could never fire.
        let traced = |s: &str| c.signals.is_empty() || c.signals.contains(&s);
        check(
            c.summary_json.is_some() && !traced("paws_reject") && !traced("syn"),
            "--summary-json",
            Some("--signals leaves out paws_reject and syn, all it lists"),
        );
        let no_rejects = Some("--signals leaves out paws_reject, what alerts are about");
        check(
            !traced("paws_reject") && given("alert_rejects") && c.alert_rejects > 0,
            "--alert-rejects",
            no_rejects,
        );
        check(
            !traced("paws_reject") && c.alert_rejects > 0 && given("alert_every"),
            "--alert-every",
            no_rejects,
        );
        // Alerts off: their spacing does nothing.
        check(
            c.alert_rejects == 0 && given("alert_every"),
            "--alert-every",
            Some("--alert-rejects 0 turns alerts off"),
        );
        unused
    }
}

/// The ids of the arguments given on the command line, the subcommand's included (where the
/// global flags are after [`hoist_globals`]).
fn given_on_the_command_line(m: &ArgMatches) -> BTreeSet<String> {
    let mut ids = BTreeSet::new();
    let mut add = |m: &ArgMatches| {
        for id in m.ids() {
            if m.value_source(id.as_str()) == Some(ValueSource::CommandLine) {
                ids.insert(id.as_str().to_owned());
            }
        }
    };
    add(m);
    if let Some((_, sub)) = m.subcommand() {
        add(sub);
    }
    ids
}

/// A flag given that the chosen mode does not use, and why where the mode alone does not say.
#[derive(Debug, PartialEq, Eq)]
pub struct Unused {
    pub flag: &'static str,
    pub why: Option<&'static str>,
}

/// `--a, --b (why), --c`: the flags in order, each reason said once after the flags it covers.
pub fn describe(unused: &[Unused]) -> String {
    let mut out = String::new();
    for (i, u) in unused.iter().enumerate() {
        if i > 0 {
            out.push_str(", ");
        }
        out.push_str(u.flag);
        let next_why = unused.get(i + 1).map(|n| n.why);
        if let Some(why) = u.why.filter(|_| next_why != Some(u.why)) {
            out.push_str(&format!(" ({why})"));
        }
    }
    out
}

/// Moves the global flags given before the subcommand to just after its name. Given on both
/// sides, clap keeps only the values after the subcommand (`--port 80 events --port 443`
/// traced port 443 alone): moved, a list flag keeps every value, and any other (a single
/// value, or on/off) is refused as given twice. Anything it cannot follow (an unknown flag, no
/// subcommand, `--`) is left as it is, for clap to judge.
fn hoist_globals(args: Vec<OsString>) -> Vec<OsString> {
    let cmd = Cli::command();
    let long = |name: &str| cmd.get_arguments().find(|a| a.get_long() == Some(name));
    let mut kept = Vec::with_capacity(args.len());
    let mut moved = Vec::new();
    let mut rest = args.into_iter();
    kept.extend(rest.next()); // the program's name
    while let Some(arg) = rest.next() {
        let bytes = arg.as_encoded_bytes();
        if bytes == b"--" {
            kept.push(arg);
            break;
        }
        if let Some(flag) = bytes.strip_prefix(b"--") {
            // Only the name must be UTF-8: `--summary-json=<any path>` is followed too.
            let (name, inline_value) = match flag.iter().position(|&b| b == b'=') {
                Some(at) => (&flag[..at], true),
                None => (flag, false),
            };
            let Some(def) = std::str::from_utf8(name).ok().and_then(long) else {
                kept.push(arg);
                break;
            };
            let to = if def.is_global_set() {
                &mut moved
            } else {
                &mut kept
            };
            to.push(arg);
            if !inline_value && def.get_action().takes_values() {
                to.extend(rest.next());
            }
            continue;
        }
        let text = arg.to_str().unwrap_or("-");
        if !text.starts_with('-') && cmd.find_subcommand(text).is_some() {
            kept.push(arg);
            kept.append(&mut moved);
            break;
        }
        // A short flag (-h, -V) or a stray value: clap's to judge.
        kept.push(arg);
        break;
    }
    // No subcommand: the global flags stay where they were, in their order.
    if !moved.is_empty() {
        let at = kept.len().min(1);
        let tail = kept.split_off(at);
        kept.append(&mut moved);
        kept.extend(tail);
    }
    kept.extend(rest);
    kept
}

/// `--top`'s default.
const LIVE_TOP: usize = 20;
/// `--sort`'s default.
const LIVE_SORT: Order = Order::Live;
/// `--reread`'s default.
const LIVE_REREAD: f64 = 60.0;
/// The most `--max-live-tw` takes: 2^26. The kernel refuses a hash map of 2^28 entries or more
/// (its bucket array would pass 4 GiB), and at 2^26 the classic route's preallocated table
/// already holds about 6 GB.
const MAX_LIVE_TW_LIMIT: u32 = 1 << 26;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HookChoice {
    Auto,
    Only(Family),
}

fn parse_hooks(s: &str) -> Result<HookChoice, String> {
    match s {
        "auto" => Ok(HookChoice::Auto),
        "fentry" => Ok(HookChoice::Only(Family::Fentry)),
        "kprobe" => Ok(HookChoice::Only(Family::Kprobe)),
        "tp_btf" | "tp-btf" => Ok(HookChoice::Only(Family::TpBtf)),
        "tracepoint" => Ok(HookChoice::Only(Family::Tracepoint)),
        _ => Err(format!(
            "`{s}`: expected one of auto, fentry, kprobe, tp_btf, tracepoint"
        )),
    }
}

fn parse_signal(s: &str) -> Result<&'static str, String> {
    crate::signals::ALL
        .iter()
        .map(|sig| sig.name)
        .find(|name| *name == s)
        .ok_or_else(|| {
            let names: Vec<&str> = crate::signals::ALL.iter().map(|sig| sig.name).collect();
            format!("`{s}`: no such signal; signals are {}", names.join(", "))
        })
}

fn parse_ring_kib(s: &str) -> Result<u32, String> {
    let n: u32 = s
        .parse()
        .map_err(|_| format!("`{s}` is not a number of KiB"))?;
    if n < 64 || !n.is_power_of_two() || n > 1 << 20 {
        return Err(format!(
            "{n} KiB: the ring must be a power of two between 64 KiB and 1 GiB"
        ));
    }
    Ok(n)
}

fn parse_port(s: &str) -> Result<u16, String> {
    match s.parse::<u16>() {
        Ok(p) if p > 0 => Ok(p),
        _ => Err(format!("`{s}`: give a port number, 1 to 65535")),
    }
}

fn parse_capacity(s: &str) -> Result<u32, String> {
    parse_count(s, 16, u32::MAX, "entries")
}

fn parse_max_live_tw(s: &str) -> Result<u32, String> {
    parse_count(s, 1024, MAX_LIVE_TW_LIMIT, "TIME-WAITs")
}

/// A whole number from `min` to `max`, said in `what` when it is not.
fn parse_count(s: &str, min: u32, max: u32, what: &str) -> Result<u32, String> {
    match s.parse::<u64>() {
        Ok(n) if (u64::from(min)..=u64::from(max)).contains(&n) => Ok(n as u32),
        _ => Err(format!("`{s}`: give a number of {what}, {min} to {max}")),
    }
}

fn parse_sort(s: &str) -> Result<Order, String> {
    s.parse()
        .map_err(|e: crate::aggregate::order::UnknownOrder| e.to_string())
}

fn parse_top(s: &str) -> Result<usize, String> {
    match s.parse::<usize>() {
        Ok(n) if n >= 1 => Ok(n),
        _ => Err(format!("`{s}`: give a number of rows, 1 or more")),
    }
}

fn parse_alert_rejects(s: &str) -> Result<u64, String> {
    s.parse()
        .map_err(|_| format!("`{s}`: give a number of rejects, 0 or more (0: no alerts)"))
}

/// Seconds for --interval and --alert-every (clap names the flag in the error).
fn parse_seconds(s: &str) -> Result<f64, String> {
    let v: f64 = s
        .parse()
        .map_err(|_| format!("`{s}` is not a number of seconds"))?;
    if !(0.05..=3600.0).contains(&v) {
        return Err(format!("{v}: must be between 0.05 and 3600 seconds"));
    }
    Ok(v)
}

/// Seconds for --reread, where 0 turns it off.
fn parse_reread(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(0.0) => Ok(0.0),
        _ => parse_seconds(s).map_err(|e| format!("{e} (or 0: never)")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cli_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn global_flags_keep_their_values_on_both_sides_of_a_subcommand() {
        let parse = |args: &[&str]| Cli::try_from_args(args).map(|c| c.common);
        let c = parse(&[
            "twtrace", "--port", "80", "events", "--json", "--port", "443",
        ])
        .unwrap();
        assert_eq!(c.ports, [80, 443]);
        let c = parse(&[
            "twtrace",
            "--signals=syn",
            "events",
            "--signals",
            "tw_enter",
        ])
        .unwrap();
        assert_eq!(c.signals, ["syn", "tw_enter"]);
        let c = parse(&["twtrace", "--ip", "10.0.0.0/8", "--port", "80", "events"]).unwrap();
        assert_eq!((c.ports.len(), c.ips.len()), (1, 1));
        // A flag that takes one value, given twice, is refused (clap kept the second).
        let e = parse(&["twtrace", "--netns", "1", "events", "--netns", "2"]).unwrap_err();
        assert_eq!(e.kind(), clap::error::ErrorKind::ArgumentConflict, "{e}");
        // A value that names a subcommand is a value, not the subcommand.
        let cli = Cli::try_from_args(["twtrace", "--netns", "events", "doctor"]).unwrap();
        assert_eq!(cli.common.netns.as_deref(), Some("events"));
        assert!(matches!(cli.command, Some(Command::Doctor(_))));
        let cli = Cli::try_from_args(["twtrace", "--top", "3", "--port", "1", "events"]).unwrap();
        assert_eq!(describe(&cli.unused_flags()), "--top (it prints no table)");
        assert_eq!(cli.common.ports, [1]);
        // After the subcommand too: refused with the reason, not as an unknown flag.
        let cli = Cli::try_from_args(["twtrace", "events", "--top", "3"]).unwrap();
        assert_eq!(describe(&cli.unused_flags()), "--top (it prints no table)");
        let cli = Cli::try_from_args(["twtrace", "events", "--sort", "expired"]).unwrap();
        assert_eq!(describe(&cli.unused_flags()), "--sort (it prints no table)");
        let cli = Cli::try_from_args(["twtrace", "--sort", "tw_created"]).unwrap();
        assert_eq!(cli.live.sort, Order::TwCreated);
        assert_eq!(
            Cli::try_from_args(["twtrace"]).unwrap().live.sort,
            Order::Live
        );
        let e = Cli::try_from_args(["twtrace", "--sort", "created"]).unwrap_err();
        assert!(
            e.to_string().contains("expected one of: tw_created live"),
            "{e}"
        );
        // A value that is no UTF-8 (a path) does not stop the flags after it being followed.
        use std::os::unix::ffi::OsStringExt as _;
        let odd = OsString::from_vec(b"--summary-json=/tmp/\xff.json".to_vec());
        let args: Vec<OsString> = ["twtrace", "--port", "80"]
            .into_iter()
            .map(OsString::from)
            .chain([odd])
            .chain(["events", "--port", "443"].map(OsString::from))
            .collect();
        assert_eq!(Cli::try_from_args(args).unwrap().common.ports, [80, 443]);
        // Without a subcommand nothing changes.
        let c = parse(&["twtrace", "--port", "80", "--top", "2", "--port", "81"]).unwrap();
        assert_eq!(c.ports, [80, 81]);
        assert!(Cli::try_from_args(["twtrace", "--port", "80", "--bogus", "events"]).is_err());
    }

    #[test]
    fn bad_values_are_refused() {
        assert!(Cli::try_from_args(["twtrace", "--hooks", "ebpf"]).is_err());
        assert!(Cli::try_from_args(["twtrace", "--ring-kib", "100"]).is_err());
        assert!(Cli::try_from_args(["twtrace", "--ip", "300.1.1.1"]).is_err());
        assert!(Cli::try_from_args(["twtrace", "--frobnicate"]).is_err());
        assert!(Cli::try_from_args(["twtrace", "--port", "0"]).is_err());
        assert!(Cli::try_from_args(["twtrace", "--reread", "0.01"]).is_err());
        assert!(Cli::try_from_args(["twtrace", "--reread", "-1"]).is_err());
        assert!(Cli::try_from_args(["twtrace", "--reread", "0"]).is_ok());
        // A negative number is a bad value, not an unknown flag.
        assert!(Cli::try_from_args(["twtrace", "--top", "0"]).is_err());
        assert!(Cli::try_from_args(["twtrace", "--max-live-tw", "268435456"]).is_err());
        assert!(Cli::try_from_args(["twtrace", "--max-live-tw", "67108864"]).is_ok());
        // Every bad number says what is wanted, never a parser's own words.
        for (flag, v, wanted) in [
            ("--port", "http", "give a port number, 1 to 65535"),
            ("--port", "65536", "give a port number, 1 to 65535"),
            (
                "--capacity",
                "18446744073709551616",
                "entries, 16 to 4294967295",
            ),
            ("--capacity", "15", "entries, 16 to 4294967295"),
            ("--max-live-tw", "1e6", "TIME-WAITs, 1024 to 67108864"),
        ] {
            let e = Cli::try_from_args(["twtrace", flag, v])
                .unwrap_err()
                .to_string();
            assert!(e.contains(wanted), "{flag} {v}: {e}");
            assert!(!e.contains("digit") && !e.contains("too large"), "{e}");
        }
        for (flag, v) in [
            ("--port", "-1"),
            ("--interval", "-1"),
            ("--top", "-1"),
            ("--alert-rejects", "-1"),
        ] {
            let e = Cli::try_from_args(["twtrace", flag, v]).unwrap_err();
            assert_eq!(
                e.kind(),
                clap::error::ErrorKind::ValueValidation,
                "{flag}: {e}"
            );
        }
        let unused = |args: &[&str]| -> Vec<&str> {
            let cli = Cli::try_from_args(args).unwrap();
            cli.unused_flags().into_iter().map(|u| u.flag).collect()
        };
        assert_eq!(
            unused(&["twtrace", "doctor", "--port", "443", "--interval", "5"]),
            ["--port", "--interval"]
        );
        assert_eq!(unused(&["twtrace", "--top", "3", "events"]), ["--top"]);
        assert_eq!(
            unused(&["twtrace", "--reread", "5", "events"]),
            ["--reread"]
        );
        assert_eq!(
            unused(&["twtrace", "--reread", "0", "doctor"]),
            ["--reread"]
        );
        assert!(unused(&["twtrace", "doctor", "--hooks", "kprobe", "--netns", "1"]).is_empty());
        assert!(unused(&["twtrace", "--top", "3", "--port", "80"]).is_empty());
        // Alerts off and no summary file: events keeps no aggregate to size or tick.
        let quiet = [
            "twtrace",
            "events",
            "--alert-rejects",
            "0",
            "--interval",
            "5",
            "--capacity",
            "100",
            "--alert-every",
            "5",
        ];
        assert_eq!(
            unused(&quiet),
            ["--capacity", "--interval", "--alert-every"]
        );
        assert!(unused(&["twtrace", "events", "--interval", "5", "--capacity", "100"]).is_empty());
        let cli = Cli::try_from_args(quiet).unwrap();
        assert_eq!(
            describe(&cli.unused_flags()),
            "--capacity, --interval (without --summary-json and with alerts off it keeps no \
             aggregate), --alert-every (--alert-rejects 0 turns alerts off)"
        );
        assert_eq!(
            unused(&["twtrace", "--alert-rejects", "0", "--alert-every", "5"]),
            ["--alert-every"]
        );
        let e = Cli::try_from_args(["twtrace", "--alert-every", "7200"]).unwrap_err();
        assert!(e.to_string().contains("--alert-every"), "{e}");
        // Given is given: a flag at its default value is refused all the same.
        assert_eq!(unused(&["twtrace", "events", "--top", "20"]), ["--top"]);
        assert_eq!(
            unused(&[
                "twtrace",
                "doctor",
                "--capacity",
                "65536",
                "--interval",
                "1"
            ]),
            ["--capacity", "--interval"]
        );
        assert_eq!(unused(&["twtrace", "events", "--sort", "live"]), ["--sort"]);
        // What --signals leaves out of the PAWS aggregate.
        assert_eq!(
            unused(&[
                "twtrace",
                "--signals",
                "tw_enter",
                "--summary-json",
                "s.json"
            ]),
            ["--summary-json"]
        );
        assert!(unused(&["twtrace", "--signals", "syn", "--summary-json", "s.json"]).is_empty());
        assert_eq!(
            unused(&[
                "twtrace",
                "--signals",
                "tw_enter,syn",
                "--alert-rejects",
                "3"
            ]),
            ["--alert-rejects"]
        );
        assert!(unused(&["twtrace", "--signals", "tw_enter"]).is_empty());
        assert!(unused(&["twtrace", "--signals", "paws_reject", "--alert-every", "5"]).is_empty());
        let ok = Cli::try_from_args(["twtrace", "events", "--json", "--hooks", "kprobe"]).unwrap();
        assert_eq!(ok.common.hooks, HookChoice::Only(Family::Kprobe));
    }
}
