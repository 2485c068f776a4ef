//! TIME-WAITs already there when twtrace starts. No hook sees them enter, so without them the
//! live count would start at 0 on a host that holds thousands, and stay short until they
//! have all ended. They come from the kernel's own socket tables (sock_diag, what `ss`
//! reads), per network namespace, read after the programs are attached.
//!
//! Exact without timing: a socket in the snapshot whose enter was traced too (it entered
//! between attach and the read) is one TIME-WAIT, not two, and one whose exit arrives with
//! its entry unseen ends its snapshot entry; the aggregate does both by 4-tuple (see
//! `aggregate::Aggregate::apply`). Records are handed on before any ring record.
//!
//! The live table runs the same read again after lost events, or when LIVE counts TIME-WAITs
//! past their timeout ([`Rereads`]), from which the aggregate starts its live counts over
//! (`What::LiveReset`).

use std::{
    collections::BTreeMap,
    net::SocketAddr,
    path::PathBuf,
    time::{Duration, Instant},
};

use anyhow::Result;
use tokio::task::JoinHandle;

use crate::{
    event::{Record, Substate, What},
    filter::{Filter, NetnsArg},
    kernel::{netns, sock_diag},
};

/// What to read: the `--netns` namespace (None: all), at most `limit` sockets of those
/// `filter` (--port/--ip) lets through: others spend none of the limit.
#[derive(Clone, Debug)]
pub struct Wanted {
    pub netns: Option<NetnsArg>,
    pub filter: Filter,
    pub limit: usize,
}

/// When to read the kernel's sockets again: after events were lost, which may have been
/// enters or exits (a lost exit leaves `live` too high for good, a lost enter too low), or
/// while `live` counts TIME-WAITs past their timeout (an exit no program reported, which no
/// loss count tells; see `Aggregate::overdue`), at most once per `every`. The aggregate starts
/// its live counts over from the read (`What::LiveReset`), exactly: see
/// `aggregate::Aggregate::apply`.
pub struct Rereads {
    every: Option<Duration>,
    lost: bool,
    next: Instant,
}

impl Rereads {
    /// None: never read again.
    pub fn new(every: Option<Duration>) -> Self {
        Self {
            every,
            lost: false,
            next: Instant::now(),
        }
    }

    /// Notes `rec`: a loss of any program calls for a read (most are TIME-WAIT records under
    /// churn, and a program's name does not say what its lost records were).
    pub fn note(&mut self, rec: &Record) {
        self.lost |= matches!(rec.what, What::Lost { count: 1.., .. });
    }

    /// Whether to read now (then the caller does), given that no read is running; `overdue`:
    /// `live` counts TIME-WAITs past their timeout now (not remembered: a late exit can end
    /// the doubt before the read is due).
    pub fn due(&mut self, now: Instant, overdue: bool) -> bool {
        let Some(every) = self.every else {
            return false;
        };
        if !(self.lost || overdue) || now < self.next {
            return false;
        }
        self.lost = false;
        self.next = now + every;
        true
    }
}

/// Starts a read beside the ring (which must not fill up meanwhile); None reads nothing. Ring
/// records wait in the [`Held`] until the read's own records have gone first. `again_from`: a
/// read after lost events (see [`Rereads`]), begun at that time, which says only what went
/// wrong; its `LiveReset` goes first when the read is done (handed on now, the live counts
/// would read 0 until then).
pub fn start(what: Option<Wanted>, again_from: Option<u64>) -> (Reading, Held) {
    let again = again_from.is_some();
    let task = what.map(|w| {
        tokio::task::spawn_blocking(move || Snapshot {
            again,
            ..take(w.netns.as_ref(), &w.filter, w.limit)
        })
    });
    let held = Held {
        active: task.is_some(),
        reset: again_from
            .filter(|_| task.is_some())
            .map(Record::live_reset),
        records: Vec::new(),
    };
    (Reading(task), held)
}

/// The read under way (apart from [`Held`], so that both can be borrowed at once).
pub struct Reading(Option<JoinHandle<Snapshot>>);

impl Reading {
    pub fn is_running(&self) -> bool {
        self.0.is_some()
    }

    /// Waits for the read to end (at once with an empty snapshot when none runs). A read that
    /// died is a warning, not the tracer's end: tracing goes on without its count.
    pub async fn done(&mut self) -> Snapshot {
        let Some(task) = self.0.as_mut() else {
            return Snapshot::default();
        };
        let snap = task.await.unwrap_or_else(|e| Snapshot {
            failed: vec![format!("any namespace (the read failed: {e})")],
            ..Snapshot::default()
        });
        self.0 = None;
        snap
    }
}

/// Ring records kept back while the read runs.
pub struct Held {
    active: bool,
    /// A read again's `LiveReset`, handed on first.
    reset: Option<Record>,
    records: Vec<Record>,
}

impl Held {
    /// Keeps `rec` (already filtered) while the read runs; false once it is done, when the
    /// caller hands records on itself.
    pub fn hold(&mut self, rec: &Record) -> bool {
        if self.active {
            self.records.push(*rec);
        }
        self.active
    }

    /// Says what the read found, and hands on its records that pass `filter`, then the held
    /// ones; from then on nothing is held. Nothing to do when no read ran.
    pub fn release(
        &mut self,
        snap: Snapshot,
        filter: &Filter,
        mut on_record: impl FnMut(&Record) -> Result<()>,
    ) -> Result<()> {
        if !self.active {
            return Ok(());
        }
        self.active = false;
        if let Some(reset) = self.reset.take() {
            on_record(&reset)?;
        }
        announce(&snap, filter);
        // A listener passes whatever --port/--ip say: it is no event, only what tells a
        // server's TIME-WAIT (which the filter judges by its own addresses) from a client's.
        let seeds =
            (snap.records.iter()).filter(|r| r.what == What::Listening || filter.matches(r));
        for rec in seeds.chain(std::mem::take(&mut self.records).iter()) {
            on_record(rec)?;
        }
        Ok(())
    }
}

/// What one read found.
#[derive(Debug, Default)]
pub struct Snapshot {
    /// A read after lost events, not the start-up one.
    pub again: bool,
    /// The TIME-WAITs wanted (`TwPresent`), then one `Listening` per listening port.
    pub records: Vec<Record>,
    /// How many of `records` are TIME-WAITs.
    pub timewaits: usize,
    /// Every TIME-WAIT of the namespaces read, wanted or not.
    pub seen: usize,
    /// Namespaces read.
    pub namespaces: usize,
    /// Namespaces read that hold any of `records`' TIME-WAITs.
    pub holding: usize,
    /// More sockets wanted than the limit: the rest are not counted as live.
    pub truncated: bool,
    /// Namespaces that could not be read, and why (they are still traced).
    pub failed: Vec<String>,
}

/// Reads the TIME-WAITs that `filter` lets through of every namespace (`only` None), or of
/// the `--netns` one, at most `limit` in all.
pub fn take(only: Option<&NetnsArg>, filter: &Filter, limit: usize) -> Snapshot {
    let spaces = match only {
        None => netns::all(),
        // Given as a file: entered by that file, which may be the only one naming it (a
        // namespace bound outside /run/netns that nothing runs in).
        Some(NetnsArg {
            inode,
            file: Some(file),
        }) => BTreeMap::from([(*inode, file.clone())]),
        // A number: whichever file refers to it now. One that names no namespace in use
        // was said at start-up (`run::warn_unknown_netns`).
        Some(NetnsArg { inode, file: None }) => {
            let mut all = netns::all();
            all.retain(|i, _| i == inode);
            all
        }
    };
    take_from(spaces, filter, limit)
}

/// Each namespace's records carry the time its read ended: every TIME-WAIT in them had entered
/// by then, so a traced enter after it is no socket of the read (`Aggregate` tests enters
/// against the read's sockets only up to that time).
fn take_from(spaces: BTreeMap<u32, PathBuf>, filter: &Filter, limit: usize) -> Snapshot {
    let mut snap = Snapshot::default();
    let mut listeners = Vec::new();
    for (inode, path) in spaces {
        let room = limit.saturating_sub(snap.records.len());
        // One more than the room tells a full namespace from an exact fit.
        let read = |path: PathBuf| {
            let filter = filter.clone();
            let named = path.display().to_string();
            netns::run_in(path, move || {
                sock_diag::sockets(room + 1, |l, r| filter.matches_endpoints(l, r))
            })
            .map_err(|e| format!("{named} ({inode}): {e:#}"))
        };
        // The file gone since the namespaces were listed (its process exited): the namespace
        // may live on, found through another.
        let socks = read(path.clone()).or_else(|first| {
            match netns::find(inode, None).filter(|other| *other != path) {
                Some(other) => read(other),
                None => Err(first),
            }
        });
        let socks = match socks {
            Ok(socks) => socks,
            Err(why) => {
                snap.failed.push(why);
                continue;
            }
        };
        let now_ns = crate::run::monotonic_ns();
        snap.namespaces += 1;
        snap.seen += socks.all_timewaits;
        snap.holding += usize::from(!socks.timewaits.is_empty() && room > 0);
        snap.truncated |= socks.timewaits.len() > room;
        let listening = &socks.listening;
        let records = socks.timewaits.iter().take(room).map(|s| Record {
            ts_ns: now_ns,
            netns: inode,
            local: s.local,
            remote: s.remote,
            what: What::TwPresent {
                substate: if s.fin_wait2 {
                    Substate::FinWait2
                } else {
                    Substate::TimeWait
                },
                server: listening.binary_search(&s.local.port()).is_ok(),
            },
        });
        snap.records.extend(records);
        snap.timewaits = snap.records.len();
        // Every listener, not only those with TIME-WAITs now: a connection accepted before
        // start-up leaves a server's TIME-WAIT later, possibly before any traced SYN says
        // that its port listens (and never, where the syn signal is not traced).
        let unspecified = SocketAddr::from(([0, 0, 0, 0], 0));
        listeners.extend(socks.listening.iter().map(|&port| Record {
            ts_ns: now_ns,
            netns: inode,
            local: SocketAddr::new(unspecified.ip(), port),
            remote: unspecified,
            what: What::Listening,
        }));
    }
    // After the TIME-WAITs, which `records[..timewaits]` are.
    snap.records.append(&mut listeners);
    snap
}

/// Says on stderr what the read found, and what it could not read. A read after lost events
/// (which the table shows) speaks only of what went wrong.
fn announce(snap: &Snapshot, filter: &Filter) {
    // When nothing could be read, the warnings below say why.
    if !snap.again && (snap.namespaces > 0 || snap.failed.is_empty()) {
        crate::say!("twtrace: {}", found(snap, filter));
    }
    if snap.truncated {
        let which = if filter.is_empty() {
            ""
        } else {
            " matching --port/--ip"
        };
        crate::say!(
            "twtrace: warning: more TIME-WAITs{which} were present than --max-live-tw; the \
             rest are not counted as live until they end"
        );
    }
    let when = if snap.again { "now" } else { "already" };
    for why in &snap.failed {
        crate::say!("twtrace: warning: not counted as live: the TIME-WAITs {when} in {why}");
    }
}

/// "N TIME-WAITs already present in K of the M network namespaces read", counting those
/// that pass --port/--ip (the only ones the table and the stream show; the read keeps only
/// those) and naming the whole too.
fn found(snap: &Snapshot, filter: &Filter) -> String {
    let plural = |n: usize, word: &str| crate::sinks::plural(n as u64, word);
    let spaces = if snap.namespaces == 0 {
        "(no network namespace found to read)".to_owned()
    } else if snap.namespaces == 1 {
        "in 1 network namespace".to_owned()
    } else {
        let read = plural(snap.namespaces, "network namespace");
        format!("in {} of the {read} read", snap.holding)
    };
    let timewaits = plural(snap.timewaits, "TIME-WAIT");
    if filter.is_empty() {
        return format!("{timewaits} already present {spaces}");
    }
    format!(
        "{timewaits} matching --port/--ip already present ({} in all) {spaces}",
        snap.seen
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::LossReason;

    /// The start-up line counts what --port/--ip let through (the read kept those alone),
    /// says of how many, and in how many of the namespaces read they are.
    #[test]
    fn the_count_found_follows_the_filter() {
        let none = Filter::default();
        let port = Filter {
            ports: vec![80],
            nets: vec![],
        };
        let snap = |timewaits, seen, namespaces, holding| Snapshot {
            timewaits,
            seen,
            namespaces,
            holding,
            ..Snapshot::default()
        };
        assert_eq!(
            found(&snap(3, 3, 1, 1), &none),
            "3 TIME-WAITs already present in 1 network namespace"
        );
        assert_eq!(
            found(&snap(1, 3, 1, 1), &port),
            "1 TIME-WAIT matching --port/--ip already present (3 in all) in 1 network namespace"
        );
        assert_eq!(
            found(&snap(2, 1500, 3, 1), &port),
            "2 TIME-WAITs matching --port/--ip already present (1500 in all) in 1 of the 3 \
             network namespaces read"
        );
        assert_eq!(
            found(&snap(0, 0, 2, 0), &none),
            "0 TIME-WAITs already present in 0 of the 2 network namespaces read"
        );
        assert_eq!(
            found(&snap(0, 0, 0, 0), &none),
            "0 TIME-WAITs already present (no network namespace found to read)"
        );
    }

    /// --port/--ip apply before the limit: sockets they leave out spend none of it (the
    /// limit is for what LIVE counts). This test's own TIME-WAITs, in its namespace.
    #[test]
    fn the_limit_is_spent_on_wanted_sockets_alone() {
        if unsafe { libc::geteuid() } != 0 {
            return; // reading a namespace takes root (setns)
        }
        // Two TIME-WAITs on loopback (the server side closes first), on two listeners.
        let mut ports = Vec::new();
        for _ in 0..2 {
            let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            let client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
            drop(listener.accept().unwrap().0);
            let mut client = client;
            assert_eq!(std::io::Read::read(&mut client, &mut [0u8; 1]).unwrap(), 0);
            ports.push(listener.local_addr().unwrap().port());
        }
        let own = NetnsArg {
            inode: 7,
            file: Some("/proc/self/ns/net".into()),
        };
        let second = Filter {
            ports: vec![ports[1]],
            nets: vec!["127.0.0.1/32".parse().unwrap()],
        };
        // One socket of room: the one wanted is read, however the kernel orders the two.
        // (Polled: the server's timewait socket comes with the client's ACK of its FIN, which
        // may still be on its way when the client has read the end of the stream.)
        let deadline = Instant::now() + Duration::from_secs(5);
        let snap = loop {
            let snap = take(Some(&own), &second, 1);
            if snap.timewaits == 1 || Instant::now() > deadline {
                break snap;
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        let (timewaits, _) = snap.records.split_at(snap.timewaits);
        assert_eq!(timewaits.len(), 1, "{snap:?}");
        assert_eq!(timewaits[0].local.port(), ports[1], "{snap:?}");
        assert!(!snap.truncated, "{snap:?}");
        assert!(snap.seen >= 2, "{snap:?}");
    }

    /// A read again only after a loss, or while TIME-WAITs are overdue, at most once per
    /// period, never when turned off.
    #[test]
    fn rereads_follow_losses_and_overdue_timewaits_at_most_once_per_period() {
        let lost = |count| Record::lost(1, "tw_exit", count, LossReason::RingFull);
        let minute = Duration::from_secs(60);
        let mut r = Rereads::new(Some(minute));
        let t0 = Instant::now();
        assert!(!r.due(t0, false), "nothing lost");
        r.note(&lost(0));
        r.note(&Record::live_reset(1));
        assert!(!r.due(t0, false), "a zero count is no loss");
        r.note(&lost(3));
        assert!(r.due(t0, false));
        assert!(!r.due(t0, false), "once per loss");
        r.note(&lost(1));
        assert!(!r.due(t0 + minute / 2, false), "not within the period");
        assert!(r.due(t0 + minute, false), "the loss waited for it");
        // Overdue TIME-WAITs call for a read as a loss does, but only while they are overdue.
        assert!(!r.due(t0 + minute * 3 / 2, true), "not within the period");
        assert!(!r.due(t0 + minute * 2, false), "no longer overdue: no read");
        assert!(r.due(t0 + minute * 2, true));
        assert!(!r.due(t0 + minute * 2, true), "once per period");
        let mut off = Rereads::new(None);
        off.note(&lost(1));
        assert!(!off.due(t0 + minute, true));
    }

    /// A `--netns` given as a file is entered by that file, even where no process runs in
    /// its namespace and nothing under /run/netns names it (then only that file leads to it).
    /// Here the file is this process's own namespace, with an inode no namespace has: the
    /// read must still go through the file (entered as root; refused otherwise, and then
    /// listed as failed: either way it was tried, once).
    #[test]
    fn a_namespace_file_is_read_through_that_file() {
        let file = NetnsArg {
            inode: 1,
            file: Some("/proc/self/ns/net".into()),
        };
        let snap = take(Some(&file), &Filter::default(), 16);
        assert_eq!(snap.namespaces + snap.failed.len(), 1, "{snap:?}");
        if unsafe { libc::geteuid() } == 0 {
            assert_eq!(snap.namespaces, 1, "{snap:?}");
        }
        // By number, only a namespace in use with that inode is read: none has inode 1.
        let number = NetnsArg {
            inode: 1,
            file: None,
        };
        let snap = take(Some(&number), &Filter::default(), 16);
        assert_eq!((snap.namespaces, snap.failed.len()), (0, 0), "{snap:?}");
    }

    /// Every listener of a namespace read comes with its TIME-WAITs, as a `Listening` record
    /// after them (this test's own, on a port the kernel picked), not counted as one. Reading
    /// a namespace takes root (setns); without it the read fails and says so.
    #[test]
    fn listeners_come_after_the_timewaits() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let file = NetnsArg {
            inode: 7,
            file: Some("/proc/self/ns/net".into()),
        };
        let snap = take(Some(&file), &Filter::default(), 1 << 20);
        if unsafe { libc::geteuid() } != 0 {
            assert_eq!(snap.failed.len(), 1, "{snap:?}");
            return;
        }
        let (timewaits, listening) = snap.records.split_at(snap.timewaits);
        assert!(
            timewaits
                .iter()
                .all(|r| matches!(r.what, What::TwPresent { .. }))
        );
        assert!(
            listening
                .iter()
                .all(|r| r.what == What::Listening && r.netns == 7)
        );
        assert!(
            listening.iter().any(|r| r.local.port() == port),
            "port {port} not among {listening:?}"
        );
    }
}
