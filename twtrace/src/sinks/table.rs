//! The live text table: totals, then the top remote IPs, the top local ports, and the
//! destinations where connect() hit EADDRNOTAVAIL.
//!
//! ```text
//! twtrace 2025-11-22T03:50:01Z
//! tw_created 4  live 2 (present at start 0)  overflow 1  eaddrnotavail 2  lost 3  evictions 0
//! exits 3: expired 1  replaced_by_syn 0  killed_by_rst 0  reused 1  purged 0  unknown 1  (entry unseen 1)  lifetime avg 30500.0 ms  min 1000.0 ms  max 60000.0 ms
//! lost: tw_exit 3
//! not traced: paws_reject (no hook on this kernel)
//!
//! REMOTE_IP            CREATED  LIVE  EXPIRED  SYN  RST  REUSED  PURGED  UNKNOWN  OVERFLOW  EADDRNOTAVAIL   AVG_MS
//! 192.0.2.7                  3     1        1    0    0       1       0        0         0              2  30500.0
//! 2001:db8::1234:5678        1     1        0    0    0       0       0        0         0              0        -
//!
//! LOCAL_PORT  CREATED  LIVE  EXPIRED  SYN  RST  REUSED  PURGED  UNKNOWN  OVERFLOW   AVG_MS
//! 80                1     1        0    0    0       0       0        1         1        -
//! 40000             1     0        1    0    0       0       0        0         0  60000.0
//!
//! DESTINATION    EADDRNOTAVAIL  LIVE  CREATED   AVG_MS
//! 192.0.2.7:443              2     1        3  30500.0
//! ```
//!
//! Columns: CREATED = TIME-WAIT entries; LIVE = current TIME-WAIT population seen by twtrace;
//! EXPIRED/SYN/RST/REUSED/PURGED/UNKNOWN = exits by cause (SYN = replaced_by_syn, RST =
//! killed_by_rst); AVG_MS = mean TIME-WAIT lifetime of the exits whose entry was seen ("-" if
//! none). All counts are since start.

use std::fmt::Write as _;
use std::time::{SystemTime, UNIX_EPOCH};

use crate::aggregate::{Aggregate, Counters, DestRow, IpRow, Order, PortRow, Row, RowKey};
use crate::event::ExitCause;

/// ANSI: cursor home, then clear the screen, so each refresh redraws in place.
pub const CLEAR_SCREEN: &str = "\x1b[H\x1b[2J";

#[derive(Clone, Debug)]
pub struct TableOpts {
    /// Rows per section.
    pub top: usize,
    /// Signals not traced, with why (`(name, reason)`): shown under the totals, so that a
    /// zero there is never read as "none happened" when nothing was looking.
    pub untraced: Vec<(&'static str, &'static str)>,
    /// Signals traced in part, with what is not seen (`(name, limits)`), for the same reason.
    pub partial: Vec<(&'static str, &'static str)>,
    /// Prefix ANSI clear/home (set when stdout is a terminal). Otherwise each rendering ends
    /// with a blank line, so successive ones in a log stay apart.
    pub clear_screen: bool,
    /// Sort key of the remote IP and local port sections.
    pub order: Order,
    /// `--reread` in seconds: how soon after lost events LIVE is read again (None: never).
    pub reread_secs: Option<f64>,
}

impl Default for TableOpts {
    fn default() -> Self {
        TableOpts {
            top: 10,
            untraced: Vec::new(),
            partial: Vec::new(),
            clear_screen: false,
            order: Order::TwCreated,
            reread_secs: None,
        }
    }
}

/// The rows each section would show at `--top`, picked once per refresh: picking walks whole
/// tables, and a terminal too short for them renders the same picks with fewer rows.
pub struct Picked {
    ips: Vec<IpRow>,
    ports: Vec<PortRow>,
    dests: Vec<DestRow>,
    /// TIME-WAITs in LIVE past their deadline with no exit seen (see `Aggregate::overdue`).
    overdue: u64,
}

impl Picked {
    /// What to show at `mono_ns` (CLOCK_MONOTONIC, the records' clock).
    pub fn of(agg: &Aggregate, opts: &TableOpts, mono_ns: u64) -> Self {
        // Ports never carry EADDRNOTAVAIL (no port was bound): that column is left out, and
        // `--sort eaddrnotavail` ranks them by LIVE instead.
        let port_order = match opts.order {
            Order::EaddrNotAvail => order_counted(Order::Live, &opts.untraced),
            order => order,
        };
        // Only destinations with failures are shown; without any failure at all, the table
        // (as large as --capacity, keyed by every peer's ip:port) is not walked.
        let dests = if agg.totals().eaddrnotavail == 0 {
            Vec::new()
        } else {
            agg.top_by_dest(opts.top, Order::EaddrNotAvail)
                .into_iter()
                .filter(|r| r.counters.eaddrnotavail > 0)
                .collect()
        };
        Picked {
            ips: agg.top_by_ip(opts.top, opts.order),
            ports: agg.top_by_port(opts.top, port_order),
            dests,
            overdue: agg.overdue(mono_ns),
        }
    }

    /// Whether a section holds more than `rows` rows (some would not be shown).
    pub fn more_than(&self, rows: usize) -> bool {
        [self.ips.len(), self.ports.len(), self.dests.len()]
            .into_iter()
            .any(|n| n > rows)
    }
}

/// Appends one rendering of `agg` with at most `rows` rows per section, from `picked`.
pub fn render_picked(
    agg: &Aggregate,
    opts: &TableOpts,
    picked: &Picked,
    rows: usize,
    out: &mut String,
) {
    render_at(agg, opts, picked, rows, SystemTime::now(), out);
}

fn render_at(
    agg: &Aggregate,
    opts: &TableOpts,
    picked: &Picked,
    rows: usize,
    now: SystemTime,
    out: &mut String,
) {
    if opts.clear_screen {
        out.push_str(CLEAR_SCREEN);
    }
    // Writing into a String cannot fail; the results of writeln! are ignored below.
    let _ = writeln!(out, "twtrace {}  (rows by {})", Utc(now), opts.order);
    // Without LIVE it is shown as `-`.
    let live_known = live_kept(&opts.untraced);
    header(agg, live_known, out);
    let (lost, skipped) = agg.lost_since_read();
    if live_known && lost + skipped > 0 {
        let what = match (lost, skipped) {
            (l, 0) => super::plural(l, "event") + " lost",
            (0, k) => super::plural(k, "run") + " skipped by the kernel",
            (l, k) => format!("{l} lost and {k} skipped by the kernel"),
        };
        let when = match opts.reread_secs {
            Some(secs) => format!("read again about {secs} s after the first loss, at the latest"),
            None => "not read again".to_owned(),
        };
        let _ = writeln!(
            out,
            "LIVE may be off by up to {}: {what} since the kernel's TIME-WAIT sockets were last \
             read ({when})",
            lost + skipped
        );
    }
    if live_known && picked.overdue > 0 {
        let when = match opts.reread_secs {
            Some(secs) => format!("will be read again within {secs} s"),
            None => "are not read again".to_owned(),
        };
        let whose = match picked.overdue {
            1 => "1 TIME-WAIT whose timer ran out".to_owned(),
            n => format!("{n} TIME-WAITs whose timers ran out"),
        };
        let _ = writeln!(
            out,
            "LIVE may be {} high: it counts {whose} with no exit seen (an exit twtrace did not \
             see, or a timer the kernel re-armed; the kernel's sockets {when})",
            picked.overdue,
        );
    }
    if !opts.untraced.is_empty() {
        out.push_str("not traced:");
        for (i, (signal, why)) in opts.untraced.iter().enumerate() {
            let sep = if i == 0 { " " } else { ", " };
            let _ = write!(out, "{sep}{signal} ({why})");
        }
        out.push('\n');
    }
    for (signal, limits) in &opts.partial {
        let _ = writeln!(out, "partly traced: {signal} ({limits})");
    }

    out.push('\n');
    key_section(first(&picked.ips, rows), "REMOTE_IP", true, live_known, out);
    out.push('\n');
    key_section(
        first(&picked.ports, rows),
        "LOCAL_PORT",
        false,
        live_known,
        out,
    );
    if !picked.dests.is_empty() {
        out.push('\n');
        dest_section(first(&picked.dests, rows), live_known, out);
    }

    if !opts.clear_screen {
        out.push('\n');
    }
}

/// Whether LIVE is kept: it is enters less exits, meaningless without either signal.
fn live_kept(untraced: &[(&str, &str)]) -> bool {
    !(untraced.iter()).any(|(s, _)| matches!(*s, "tw_enter" | "tw_exit"))
}

/// `sort`, unless it ranks by a count nobody keeps: LIVE is enters less exits, so without
/// either the rows go by the first signal traced (the title names the order used).
pub fn order_counted(sort: Order, untraced: &[(&str, &str)]) -> Order {
    if sort != Order::Live || live_kept(untraced) {
        return sort;
    }
    let traced = |name: &str| !untraced.iter().any(|(s, _)| *s == name);
    [
        ("tw_enter", Order::TwCreated),
        ("tw_exit", Order::ExitsTotal),
        ("tw_overflow", Order::Overflow),
        ("connect_eaddrnotavail", Order::EaddrNotAvail),
    ]
    .into_iter()
    .find_map(|(signal, order)| traced(signal).then_some(order))
    .unwrap_or(Order::TwCreated)
}

/// The first `n` of `rows`, or all of them when fewer.
pub fn first<T>(rows: &[T], n: usize) -> &[T] {
    &rows[..n.min(rows.len())]
}

fn header(agg: &Aggregate, live_known: bool, out: &mut String) {
    let t = agg.totals();
    let live = if live_known {
        format!("{} (present at start {})", t.live, agg.present_at_start())
    } else {
        "- (needs tw_enter and tw_exit)".to_owned()
    };
    let _ = writeln!(
        out,
        "tw_created {}  live {live}  overflow {}  eaddrnotavail {}  lost {}  evictions {}",
        t.tw_created,
        t.overflow,
        t.eaddrnotavail,
        agg.lost_total(),
        agg.evictions().total()
    );

    let _ = write!(out, "exits {}:", t.exits_total());
    for (i, cause) in ExitCause::ALL.into_iter().enumerate() {
        let sep = if i == 0 { " " } else { "  " };
        let _ = write!(out, "{sep}{} {}", cause.as_str(), t.exits(cause));
    }
    let _ = write!(out, "  (entry unseen {})", t.exits_unseen_entry);
    let lt = &t.lifetime;
    if let (Some(avg), Some(min), Some(max)) = (lt.avg_ms(), lt.min_ms(), lt.max_ms()) {
        let _ = write!(
            out,
            "  lifetime avg {avg:.1} ms  min {min:.1} ms  max {max:.1} ms"
        );
    }
    out.push('\n');

    // Detail lines only when there is something to say, to keep the common case short.
    let lost = agg.lost();
    if !lost.is_empty() {
        out.push_str("lost:");
        for (i, l) in lost.iter().enumerate() {
            let sep = if i == 0 { " " } else { "  " };
            let _ = write!(out, "{sep}{} {}", l.program, l.count);
        }
        out.push('\n');
    }
    let skipped = agg.skipped();
    if !skipped.is_empty() {
        out.push_str("runs skipped by the kernel (each may have been an event):");
        for l in &skipped {
            let _ = write!(out, " {} {}", l.program, l.count);
        }
        out.push('\n');
    }
    let (rereads, found) = agg.rereads();
    if rereads > 0 {
        // Why, and what it set right: with reads on, the read follows a doubt at once, so this
        // line is where a user learns that LIVE had drifted.
        let (after_loss, latest_after_loss, live_before) = agg.reread_causes();
        const LOSS: &str = "after lost events";
        const TIMER: &str = "for TIME-WAITs past their timer";
        let latest = if latest_after_loss { LOSS } else { TIMER };
        let the_latest = if rereads > 1 { "the latest " } else { "" };
        let (why, split) = match (after_loss, rereads - after_loss) {
            (_, 0) => (format!(" {LOSS}"), the_latest.to_owned()),
            (0, _) => (format!(" {TIMER}"), the_latest.to_owned()),
            (a, t) => (
                String::new(),
                format!("{a} {LOSS}, {t} {TIMER}; the latest, {latest}, "),
            ),
        };
        let _ = writeln!(
            out,
            "live re-read from the kernel's sockets{why}: {} ({split}found {}; LIVE had \
             {live_before} before it)",
            super::plural(rereads, "time"),
            super::plural(found, "TIME-WAIT")
        );
    }
    let ev = agg.evictions();
    if ev.total() > 0 {
        let _ = writeln!(
            out,
            "evictions: remote_ip {}  local_port {}  destination {}  (table capacity {}; a row made again counts from then on; totals stay exact)",
            ev.remote_ip,
            ev.local_port,
            ev.destination,
            agg.capacity()
        );
    }
}

/// The latest lines twtrace said on stderr (warnings, alerts), under a table that clears the
/// terminal: the refresh wiped them from the screen.
pub fn render_said(lines: &[String], out: &mut String) {
    if lines.is_empty() {
        return;
    }
    if !out.ends_with("\n\n") {
        out.push('\n');
    }
    out.push_str("latest on stderr:\n");
    for l in lines {
        let _ = writeln!(out, "  {l}");
    }
}

/// Short column names for the exit causes, in `ExitCause::ALL` order.
const CAUSE_COLUMNS: [&str; 6] = ["EXPIRED", "SYN", "RST", "REUSED", "PURGED", "UNKNOWN"];

fn key_section<K: RowKey + std::fmt::Display>(
    rows: &[Row<K>],
    key_name: &str,
    with_eaddrnotavail: bool,
    live_known: bool,
    out: &mut String,
) {
    let mut head = vec![key_name, "CREATED", "LIVE"];
    head.extend(CAUSE_COLUMNS);
    head.push("OVERFLOW");
    if with_eaddrnotavail {
        head.push("EADDRNOTAVAIL");
    }
    head.push("AVG_MS");

    let cells: Vec<Vec<String>> = rows
        .iter()
        .map(|r| {
            let c: &Counters = &r.counters;
            let mut row = vec![
                r.key.to_string(),
                c.tw_created.to_string(),
                live_cell(c, live_known),
            ];
            row.extend(ExitCause::ALL.map(|cause| c.exits(cause).to_string()));
            row.push(c.overflow.to_string());
            if with_eaddrnotavail {
                row.push(c.eaddrnotavail.to_string());
            }
            row.push(avg_ms(c));
            row
        })
        .collect();
    grid(&head, &cells, out);
}

fn dest_section(rows: &[DestRow], live_known: bool, out: &mut String) {
    let head = ["DESTINATION", "EADDRNOTAVAIL", "LIVE", "CREATED", "AVG_MS"];
    let cells: Vec<Vec<String>> = rows
        .iter()
        .map(|r| {
            let c = &r.counters;
            vec![
                r.key.to_string(),
                c.eaddrnotavail.to_string(),
                live_cell(c, live_known),
                c.tw_created.to_string(),
                avg_ms(c),
            ]
        })
        .collect();
    grid(&head, &cells, out);
}

fn live_cell(c: &Counters, live_known: bool) -> String {
    if live_known {
        c.live.to_string()
    } else {
        "-".to_owned()
    }
}

fn avg_ms(c: &Counters) -> String {
    match c.lifetime.avg_ms() {
        Some(ms) => format!("{ms:.1}"),
        None => "-".to_owned(),
    }
}

/// Writes `head` and `rows` in columns as wide as their widest cell, two spaces apart; the
/// first column (the key) left-aligned, the numbers right-aligned.
fn grid<S: AsRef<str>>(head: &[S], rows: &[Vec<String>], out: &mut String) {
    let mut widths: Vec<usize> = head.iter().map(|h| h.as_ref().len()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: &mut dyn Iterator<Item = &str>, out: &mut String| {
        for (i, (cell, w)) in cells.zip(&widths).enumerate() {
            if i == 0 {
                let _ = write!(out, "{cell:<w$}");
            } else {
                let _ = write!(out, "  {cell:>w$}");
            }
        }
        out.push('\n');
    };
    line(&mut head.iter().map(|h| h.as_ref()), out);
    if rows.is_empty() {
        out.push_str("(none)\n");
    }
    for row in rows {
        line(&mut row.iter().map(String::as_str), out);
    }
}

/// A wall-clock time printed as RFC 3339 UTC to the second (no time-zone database needed).
struct Utc(SystemTime);

impl std::fmt::Display for Utc {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let secs = self.0.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
        let (days, rem) = (secs / 86_400, secs % 86_400);
        let (y, m, d) = civil_from_days(days);
        write!(
            f,
            "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
            rem / 3600,
            rem % 3600 / 60,
            rem % 60
        )
    }
}

/// Days since 1970-01-01 to (year, month, day) in the proleptic Gregorian calendar
/// (Howard Hinnant's `civil_from_days`, restricted to dates after the epoch).
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z % 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + u64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;
    use std::time::Duration;

    use super::*;
    use crate::event::{Record, Substate, What};

    const NOW: u64 = 1_763_783_401; // 2025-11-22T03:50:01Z

    fn rec(local: &str, remote: &str, what: What) -> Record {
        Record {
            ts_ns: 1,
            netns: 1,
            local: local.parse::<SocketAddr>().unwrap(),
            remote: remote.parse::<SocketAddr>().unwrap(),
            what,
        }
    }

    fn enter(local: &str, remote: &str) -> Record {
        let what = What::TwEnter {
            substate: Substate::TimeWait,
            timeout_ms: 60_000,
        };
        rec(local, remote, what)
    }

    /// An exit `ms` after the fixtures' enters (all at 1 ns).
    fn exit(local: &str, remote: &str, cause: ExitCause, ms: Option<u64>) -> Record {
        let lifetime_ns = ms.map(|ms| ms * 1_000_000);
        let what = What::TwExit { cause, lifetime_ns };
        Record {
            ts_ns: 1 + lifetime_ns.unwrap_or(0),
            ..rec(local, remote, what)
        }
    }

    fn sample() -> Aggregate {
        let mut agg = Aggregate::new(64);
        for i in 0..3 {
            agg.apply(&enter(&format!("10.0.0.1:{}", 40000 + i), "192.0.2.7:443"));
        }
        agg.apply(&exit(
            "10.0.0.1:40000",
            "192.0.2.7:443",
            ExitCause::Expired,
            Some(60_000),
        ));
        agg.apply(&exit(
            "10.0.0.1:40001",
            "192.0.2.7:443",
            ExitCause::Reused,
            Some(1_000),
        ));
        agg.apply(&enter("10.0.0.1:80", "[2001:db8::1234:5678]:51000"));
        agg.apply(&exit(
            "10.0.0.1:80",
            "[2001:db8::99]:1",
            ExitCause::Unknown,
            None,
        ));
        agg.apply(&rec("10.0.0.1:80", "192.0.2.8:5000", What::TwOverflow));
        for _ in 0..2 {
            let what = What::ConnectAddrNotAvail { pid: 7 };
            agg.apply(&rec("10.0.0.1:0", "192.0.2.7:443", what));
        }
        agg
    }

    fn render_str(agg: &Aggregate, opts: &TableOpts) -> String {
        render_rows(agg, opts, opts.top)
    }

    fn render_rows(agg: &Aggregate, opts: &TableOpts, rows: usize) -> String {
        let mut out = String::new();
        let now = UNIX_EPOCH + Duration::from_secs(NOW);
        render_at(agg, opts, &Picked::of(agg, opts, 0), rows, now, &mut out);
        out
    }

    /// The lines of the section whose column header starts with `head`.
    fn section<'a>(text: &'a str, head: &str) -> Vec<&'a str> {
        text.split("\n\n")
            .find(|s| s.starts_with(head))
            .unwrap_or_else(|| panic!("no {head} section in:\n{text}"))
            .lines()
            .collect()
    }

    fn cols(line: &str) -> Vec<&str> {
        line.split_whitespace().collect()
    }

    #[test]
    fn utc_timestamps() {
        let at = |s| Utc(UNIX_EPOCH + Duration::from_secs(s)).to_string();
        assert_eq!(at(0), "1970-01-01T00:00:00Z");
        assert_eq!(at(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(at(1_700_000_000), "2023-11-14T22:13:20Z");
        assert_eq!(at(4_107_542_400), "2100-03-01T00:00:00Z");
        assert_eq!(at(NOW), "2025-11-22T03:50:01Z");
    }

    #[test]
    fn cause_columns_follow_cause_order() {
        let short = |c: ExitCause| match c {
            ExitCause::ReplacedBySyn => "SYN".to_owned(),
            ExitCause::KilledByRst => "RST".to_owned(),
            c => c.as_str().to_uppercase(),
        };
        assert_eq!(CAUSE_COLUMNS.to_vec(), ExitCause::ALL.map(short).to_vec());
    }

    #[test]
    fn header_has_totals() {
        let text = render_str(&sample(), &TableOpts::default());
        let lines: Vec<_> = text.lines().collect();
        assert_eq!(
            lines[0],
            "twtrace 2025-11-22T03:50:01Z  (rows by tw_created)"
        );
        assert_eq!(
            lines[1],
            "tw_created 4  live 2 (present at start 0)  overflow 1  eaddrnotavail 2  lost 0  evictions 0"
        );
        assert_eq!(
            lines[2],
            "exits 3: expired 1  replaced_by_syn 0  killed_by_rst 0  reused 1  purged 0  \
             unknown 1  (entry unseen 1)  lifetime avg 30500.0 ms  min 1000.0 ms  max 60000.0 ms"
        );
        // No lost or eviction detail lines while there is nothing to report.
        assert_eq!(lines[3], "");
    }

    #[test]
    fn untraced_signals_are_named_under_the_totals() {
        let opts = TableOpts {
            untraced: vec![
                ("paws_reject", "no hook on this kernel"),
                ("syn", "left out by --signals"),
            ],
            ..Default::default()
        };
        let text = render_str(&sample(), &opts);
        let lines: Vec<_> = text.lines().collect();
        assert_eq!(
            lines[3],
            "not traced: paws_reject (no hook on this kernel), syn (left out by --signals)"
        );
        assert_eq!(lines[4], "");
    }

    #[test]
    fn live_is_a_dash_without_both_ends_of_a_time_wait() {
        let opts = TableOpts {
            untraced: vec![("tw_exit", "left out by --signals")],
            ..Default::default()
        };
        let text = render_str(&sample(), &opts);
        assert!(
            text.lines()
                .nth(1)
                .unwrap()
                .contains("  live - (needs tw_enter and tw_exit)  "),
            "{text}"
        );
        let s = section(&text, "REMOTE_IP");
        let live = s[0].split_whitespace().position(|c| c == "LIVE").unwrap();
        assert!(
            s[1..]
                .iter()
                .all(|row| row.split_whitespace().nth(live) == Some("-")),
            "{s:?}"
        );
        let known = render_str(&sample(), &TableOpts::default());
        assert!(!known.contains("live -"), "{known}");
    }

    #[test]
    fn what_stderr_said_follows_one_blank_line() {
        let mut out = String::from("PAWS: ...\n");
        render_said(&["twtrace: warning: w".to_owned()], &mut out);
        assert_eq!(
            out,
            "PAWS: ...\n\nlatest on stderr:\n  twtrace: warning: w\n"
        );
        let mut out = String::from("x\n\n");
        render_said(&["a".to_owned()], &mut out);
        assert_eq!(out, "x\n\nlatest on stderr:\n  a\n");
        let mut out = String::from("x\n");
        render_said(&[], &mut out);
        assert_eq!(out, "x\n");
    }

    #[test]
    fn partly_traced_signals_say_what_is_not_seen() {
        let opts = TableOpts {
            untraced: vec![("syn", "left out by --signals")],
            partial: vec![("paws_reject", "timewait path only")],
            ..Default::default()
        };
        let text = render_str(&sample(), &opts);
        let lines: Vec<_> = text.lines().collect();
        assert_eq!(lines[3], "not traced: syn (left out by --signals)");
        assert_eq!(lines[4], "partly traced: paws_reject (timewait path only)");
        assert_eq!(lines[5], "");
    }

    #[test]
    fn ip_section_sorted_and_aligned() {
        let text = render_str(&sample(), &TableOpts::default());
        let s = section(&text, "REMOTE_IP");
        let head = [
            "REMOTE_IP",
            "CREATED",
            "LIVE",
            "EXPIRED",
            "SYN",
            "RST",
            "REUSED",
            "PURGED",
            "UNKNOWN",
            "OVERFLOW",
            "EADDRNOTAVAIL",
            "AVG_MS",
        ];
        assert_eq!(cols(s[0]), head);
        let ip4 = [
            "192.0.2.7",
            "3",
            "1",
            "1",
            "0",
            "0",
            "1",
            "0",
            "0",
            "0",
            "2",
            "30500.0",
        ];
        assert_eq!(cols(s[1]), ip4);
        assert_eq!(cols(s[2])[..3], ["2001:db8::1234:5678", "1", "1"]);
        // Ties (0 created) by key: IPv4 before IPv6.
        let keys: Vec<_> = s[1..].iter().map(|l| cols(l)[0]).collect();
        assert_eq!(
            keys,
            [
                "192.0.2.7",
                "2001:db8::1234:5678",
                "192.0.2.8",
                "2001:db8::99"
            ]
        );
        // Every line as wide as the header; the key column as wide as the longest key.
        assert!(s.iter().all(|l| l.len() == s[0].len()), "{s:#?}");
        assert!(s[0].starts_with("REMOTE_IP            CREATED"));
        // Numbers right-aligned: each ends where its header ends.
        let end = s[0].find("CREATED").unwrap() + "CREATED".len();
        assert_eq!(&s[1][end - 1..end], "3");
        assert_eq!(s[1].as_bytes()[end - 2], b' ');
    }

    #[test]
    fn port_section_has_no_eaddrnotavail_column() {
        let text = render_str(&sample(), &TableOpts::default());
        let s = section(&text, "LOCAL_PORT");
        assert!(!s[0].contains("EADDRNOTAVAIL"));
        assert_eq!(cols(s[0]).len(), 11);
        // 80: 1 enter + 1 unseen exit + 1 overflow (3 events) but 1 created; 4000x: 1 each.
        assert_eq!(cols(s[1])[..3], ["80", "1", "1"]);
        assert!(
            s.iter().all(|l| !l.starts_with("0 ")),
            "no port 0 row: {s:?}"
        );
    }

    #[test]
    fn destinations_only_with_eaddrnotavail() {
        let text = render_str(&sample(), &TableOpts::default());
        let s = section(&text, "DESTINATION");
        assert_eq!(
            cols(s[0]),
            ["DESTINATION", "EADDRNOTAVAIL", "LIVE", "CREATED", "AVG_MS"]
        );
        assert_eq!(cols(s[1]), ["192.0.2.7:443", "2", "1", "3", "30500.0"]);
        assert_eq!(s.len(), 2);
    }

    #[test]
    fn top_limits_rows_and_order_is_honoured() {
        let opts = TableOpts {
            top: 1,
            order: Order::Overflow,
            ..TableOpts::default()
        };
        let text = render_str(&sample(), &opts);
        let s = section(&text, "REMOTE_IP");
        assert_eq!(s.len(), 2);
        assert_eq!(cols(s[1])[0], "192.0.2.8");
    }

    #[test]
    fn empty_aggregate() {
        let text = render_str(&Aggregate::new(8), &TableOpts::default());
        assert_eq!(section(&text, "REMOTE_IP")[1], "(none)");
        assert_eq!(section(&text, "LOCAL_PORT")[1], "(none)");
        assert!(!text.contains("DESTINATION"));
        assert!(text.contains("exits 0:"));
        assert!(!text.contains("lifetime avg"));
    }

    #[test]
    fn terminal_vs_plain_framing() {
        let agg = sample();
        let plain = render_str(&agg, &TableOpts::default());
        assert!(plain.starts_with("twtrace 2025-11-22T03:50:01Z  (rows by tw_created)\n"));
        assert!(plain.ends_with("\n\n"), "blank line between renderings");
        assert!(!plain.contains('\x1b'));

        let tty = TableOpts {
            clear_screen: true,
            ..TableOpts::default()
        };
        let term = render_str(&agg, &tty);
        assert_eq!(
            term.strip_prefix(CLEAR_SCREEN).unwrap().trim_end(),
            plain.trim_end()
        );
        assert!(!term.ends_with("\n\n"));
    }

    #[test]
    fn lost_and_eviction_lines_when_nonzero() {
        let mut agg = Aggregate::new(1);
        agg.apply(&enter("10.0.0.1:1", "192.0.2.1:80"));
        agg.apply(&enter("10.0.0.1:2", "192.0.2.2:80"));
        use crate::event::LossReason::{RingFull, SkippedRuns};
        for (program, count, reason) in [
            ("tw_exit", 5, RingFull),
            ("tw_enter", 2, RingFull),
            ("tw_exit_timer_cancel", 9, SkippedRuns),
        ] {
            agg.apply(&rec(
                "0.0.0.0:0",
                "0.0.0.0:0",
                What::Lost {
                    program,
                    count,
                    reason,
                },
            ));
        }
        let text = render_str(&agg, &TableOpts::default());
        let lines: Vec<_> = text.lines().collect();
        // Skipped runs are not counted as lost events (most were about other timers), but said.
        assert!(lines[1].ends_with("lost 7  evictions 3"), "{}", lines[1]);
        assert_eq!(lines[3], "lost: tw_enter 2  tw_exit 5");
        assert_eq!(
            lines[4],
            "runs skipped by the kernel (each may have been an event): tw_exit_timer_cancel 9"
        );
        assert!(lines[5].starts_with("evictions: remote_ip 1  local_port 1  destination 1"));
        assert!(lines[5].contains("capacity 1"));
        assert_eq!(
            lines[6],
            "LIVE may be off by up to 16: 7 lost and 9 skipped by the kernel since the kernel's \
             TIME-WAIT sockets were last read (not read again)"
        );
        // The lost records did not create a 0.0.0.0 row.
        assert!(
            !section(&text, "REMOTE_IP")
                .iter()
                .any(|l| l.starts_with("0.0.0.0"))
        );
        // A read after the losses, which found one TIME-WAIT: said under the losses, and LIVE
        // is what it found.
        agg.apply(&crate::event::Record::live_reset(10));
        let substate = crate::event::Substate::TimeWait;
        let found = What::TwPresent {
            substate,
            server: false,
        };
        agg.apply(&rec("10.0.0.1:2", "192.0.2.2:80", found));
        let text = render_str(&agg, &TableOpts::default());
        let lines: Vec<_> = text.lines().collect();
        assert!(
            lines[1].contains(" live 1 (present at start 0) "),
            "{}",
            lines[1]
        );
        assert_eq!(
            lines[5],
            "live re-read from the kernel's sockets after lost events: 1 time (found 1 \
             TIME-WAIT; LIVE had 2 before it)"
        );
        // The read ended the doubt.
        assert!(!text.contains("LIVE may be"), "{text}");
        // An hour on, the one it found has had no exit: its timer ran out long ago.
        let hour = 3_600 * 1_000_000_000;
        let mut late = String::new();
        let (opts, now) = (TableOpts::default(), UNIX_EPOCH + Duration::from_secs(NOW));
        render_at(
            &agg,
            &opts,
            &Picked::of(&agg, &opts, hour),
            opts.top,
            now,
            &mut late,
        );
        assert!(
            late.contains(
                "\nLIVE may be 1 high: it counts 1 TIME-WAIT whose timer ran out with no exit \
                 seen (an exit twtrace did not see, or a timer the kernel re-armed; the kernel's \
                 sockets are not read again)\n"
            ),
            "{late}"
        );
        // Lost again, with reads on: when the next one comes.
        let lost = What::Lost {
            program: "tw_exit",
            count: 3,
            reason: RingFull,
        };
        agg.apply(&rec("0.0.0.0:0", "0.0.0.0:0", lost));
        let opts = TableOpts {
            reread_secs: Some(60.0),
            ..TableOpts::default()
        };
        assert!(
            render_str(&agg, &opts).contains(
                "LIVE may be off by up to 3: 3 events lost since the kernel's TIME-WAIT sockets \
                 were last read (read again about 60 s after the first loss, at the latest)\n"
            ),
            "{}",
            render_str(&agg, &opts)
        );
        // That read, then one with nothing lost before it (for TIME-WAITs past their timer).
        for ts in [20, 30] {
            agg.apply(&crate::event::Record::live_reset(ts));
        }
        assert!(
            render_str(&agg, &opts).contains(
                "\nlive re-read from the kernel's sockets: 3 times (2 after lost events, 1 for \
                 TIME-WAITs past their timer; the latest, for TIME-WAITs past their timer, found \
                 0 TIME-WAITs; LIVE had 0 before it)\n"
            ),
            "{}",
            render_str(&agg, &opts)
        );
    }

    #[test]
    fn rows_go_by_a_count_that_is_kept() {
        let off =
            |names: &[&'static str]| names.iter().map(|n| (*n, "--signals")).collect::<Vec<_>>();
        assert_eq!(order_counted(Order::Live, &[]), Order::Live);
        assert_eq!(
            order_counted(Order::Live, &off(&["tw_exit"])),
            Order::TwCreated
        );
        assert_eq!(
            order_counted(Order::Live, &off(&["tw_enter"])),
            Order::ExitsTotal
        );
        let only_overflow = off(&["tw_enter", "tw_exit", "connect_eaddrnotavail"]);
        assert_eq!(order_counted(Order::Live, &only_overflow), Order::Overflow);
        // Another order asked for is kept, whatever is traced.
        assert_eq!(
            order_counted(Order::Overflow, &off(&["tw_enter"])),
            Order::Overflow
        );
    }
}
