//! TW exit and its cause: hooks and decoder. Kernel side: twtrace-ebpf/src/tw_exit.rs.

use twtrace_common::{Event, ExitCause as RawCause};

use super::{
    Family, Hook, Need, Program, Signal, TP_TIMER_CANCEL, TP_TIMER_EXPIRE, TP_TIMER_START,
    TW_PROCESS_FEXIT, TW_PROCESS_KPROBE, TW_PROCESS_KRETPROBE, TW_TIMER_CANCEL,
    addr_map::{AddrMap, Inserted},
};
use crate::event::{ExitCause, What};

pub static SIGNAL: Signal = Signal {
    name: "tw_exit",
    route: twtrace_common::route::TW_EXIT,
    description: "a TIME-WAIT socket ended, with its cause and lifetime",
    hooks: &[
        Hook {
            family: Family::Fentry,
            needs: &[],
            limits: None,
            programs: &[
                Program::fentry("tw_exit_fentry", "inet_twsk_kill"),
                // Marks an expiry for the kill it calls: no call-chain walk for the commonest
                // exit.
                Program::fentry("tw_exit_expiring_fentry", "tw_timer_handler"),
                TW_PROCESS_FEXIT,
            ],
        },
        Hook {
            family: Family::Fentry,
            needs: &[],
            limits: None,
            programs: &[
                Program::fentry("tw_exit_timer_fentry", "tw_timer_handler"),
                Program::fentry("tw_exit_deschedule_fentry", "inet_twsk_deschedule_put"),
                TW_PROCESS_FEXIT,
            ],
        },
        Hook {
            family: Family::Kprobe,
            needs: &[],
            limits: None,
            programs: &[
                Program::kprobe("tw_exit_kprobe", "inet_twsk_kill"),
                Program::kprobe("tw_exit_expiring_kprobe", "tw_timer_handler"),
                TW_PROCESS_KPROBE,
                TW_PROCESS_KRETPROBE,
            ],
        },
        Hook {
            family: Family::Kprobe,
            needs: &[],
            limits: None,
            programs: &[
                Program::kprobe("tw_exit_timer_kprobe", "tw_timer_handler"),
                Program::kprobe("tw_exit_deschedule_kprobe", "inet_twsk_deschedule_put"),
                TW_PROCESS_KPROBE,
                TW_PROCESS_KRETPROBE,
            ],
        },
        Hook {
            family: Family::TpBtf,
            needs: &[DROP_REASONS],
            limits: None,
            programs: &TP_BTF_PROGRAMS,
        },
        // Before 5.17: the same programs, but the reset that kills a TIME-WAIT is found
        // through its segment's drop, which only a drop reason tells from any other.
        Hook {
            family: Family::TpBtf,
            needs: &[],
            limits: Some(
                "a TIME-WAIT killed by a reset reads `unknown` (kfree_skb has no drop reason before 5.17, which this route needs to find the reset's segment)",
            ),
            programs: &TP_BTF_PROGRAMS,
        },
        Hook {
            family: Family::Tracepoint,
            needs: &[RESETS_TRACED],
            limits: None,
            programs: &TRACEPOINT_PROGRAMS,
        },
        // Before 6.10: the same programs, but a kill while a segment is processed is a reset
        // or a replacing SYN, and nothing on this route tells which (twtrace-ebpf/src/tw_exit.rs).
        Hook {
            family: Family::Tracepoint,
            needs: &[],
            limits: Some(
                "a TIME-WAIT killed by a segment reads `unknown` (a reset it sent and a SYN that \
                 replaced it look alike here; tcp_send_reset traces TIME-WAIT resets since \
                 6.10), so SYNs a TIME-WAIT accepted get no tw_syn verdict",
            ),
            programs: &TRACEPOINT_PROGRAMS,
        },
    ],
};

/// `tcp_send_reset` got its `reason` field in 6.10, when it began to fire for resets sent on
/// behalf of TIME-WAIT sockets: the tracepoint route's only way to tell them from SYNs.
/// kernel/layout.rs sets `tw_rst_traced` from the same field.
const RESETS_TRACED: Need = Need::TracepointField {
    category: "tcp",
    name: "tcp_send_reset",
    field: "reason",
    why: "a reset sent by a TIME-WAIT is traced since 6.10; before, a kill by a segment is a \
          reset or a replacing SYN, and this route cannot tell which",
};

/// Drop reasons (5.17, read from BTF as the loader's `tw_flows` does): the tp_btf route finds
/// a reset's TIME-WAIT through the reset's drop, which only its reason tells from others.
const DROP_REASONS: Need = Need::Enumerator {
    name: "SKB_DROP_REASON_NOT_SPECIFIED",
    why: "a TIME-WAIT killed by a reset is found through the reset's drop, named by its drop \
          reason since 5.17",
};

const TP_BTF_PROGRAMS: [Program; 4] = [
    TP_TIMER_CANCEL,
    TP_TIMER_START,
    TP_TIMER_EXPIRE,
    Program::btf_tracepoint("tp_kfree_skb", "kfree_skb"),
];

const TRACEPOINT_PROGRAMS: [Program; 2] = [
    TW_TIMER_CANCEL,
    Program::tracepoint("tw_exit_rst_tx", "tcp", "tcp_send_reset"),
];

pub fn cause(raw: u8) -> ExitCause {
    match RawCause::from_u8(raw) {
        RawCause::Expired => ExitCause::Expired,
        RawCause::ReplacedBySyn => ExitCause::ReplacedBySyn,
        RawCause::KilledByRst => ExitCause::KilledByRst,
        RawCause::Reused => ExitCause::Reused,
        RawCause::Purged => ExitCause::Purged,
        RawCause::Unknown => ExitCause::Unknown,
    }
}

pub fn decode(ev: &Event) -> What {
    What::TwExit {
        cause: cause(ev.detail),
        lifetime_ns: (ev.lifetime_ns != 0).then_some(ev.lifetime_ns),
    }
}

/// TIME-WAIT exits still parked in the kernel at shutdown (see twtrace-ebpf/src/tw_exit.rs),
/// read once the programs no longer touch them (`plan::silence`): reported, not lost.
/// - tp_btf (`PENDING`): cancels nothing explained, cause `unknown`;
/// - function probes (`PARKED`): TIME-WAITs replaced by a SYN whose own program has not
///   run (a SYN answered by a cookie), cause `replaced_by_syn`.
pub fn parked_exits(bpf: &mut aya::Ebpf) -> anyhow::Result<Vec<Event>> {
    let mut out = Vec::new();
    for (name, cause) in [
        ("PENDING", Some(twtrace_common::ExitCause::Unknown)),
        ("PARKED", None),
    ] {
        let Some(map) = bpf.map_mut(name) else {
            continue;
        };
        let slots: aya::maps::PerCpuArray<_, twtrace_common::PendingExit> = map.try_into()?;
        let per_cpu = slots.get(&0, 0)?;
        out.extend(
            per_cpu
                .iter()
                .filter(|p| p.timer != 0 && p.ev.kind != 0)
                .map(|p| {
                    let mut ev = p.ev;
                    if let Some(c) = cause {
                        ev.detail = c as u8;
                    }
                    ev
                }),
        );
    }
    Ok(out)
}

/// Lifetimes on every route but the classic tracepoint one, which alone keeps a table in the
/// kernel (it needs it to tell re-arms apart; elsewhere a hash insert, lookup and delete per
/// TIME-WAIT there cost more than this): each enter is remembered by socket address until
/// its exit. Bounded like the kernel's table (`--max-live-tw`): the latest `capacity` enters are
/// always remembered, older ones may go, and their exits read `lifetime_ms: null`, as for
/// sockets older than twtrace. What goes is counted ([`Lifetimes::take_forgotten`]) and
/// reported as lost ([`FORGOTTEN`]): those TIME-WAITs' exits cannot end their LIVE count.
///
/// Two generations of address maps rather than an LRU: every TIME-WAIT is one insert and
/// one remove at a random socket address, and an LRU's recency list costs two more cache
/// misses per remove (it was the tracer's largest single cost under churn). When the current
/// generation is full it becomes the old one and the previous old one is dropped whole. The
/// maps' slots are prefetched a few records ahead ([`Lifetimes::prefetch`]): the remaining
/// miss per remove was still a quarter of the tracer's time.
pub struct Lifetimes {
    current: AddrMap,
    old: AddrMap,
    /// Enters replaced by a later TIME-WAIT at the same address before their exit came: the
    /// kernel can hold an exit back (parked on its CPU until the SYN that replaced it, or a
    /// timer event, comes there) while the freed socket's memory makes a new TIME-WAIT on
    /// another CPU. Its exit, timed before the newer enter, pairs here.
    displaced: AddrMap,
    /// For each of `displaced`, the time of the enter that displaced it: only an exit from
    /// before that is its own (a later one is of a TIME-WAIT whose enter was lost, or of the
    /// displacer's successors; an entry whose exit was lost stays until the table is cleared).
    displaced_by: AddrMap,
    capacity: usize,
    /// See [`Lifetimes::set_paired_in_kernel`].
    paired_in_kernel: bool,
    /// Enters dropped with their generation, not yet reported.
    forgotten: u64,
}

/// The `lost` program name under which forgotten enters are reported: `--max-live-tw` live
/// TIME-WAITs were exceeded, and LIVE over-counts by as many until the live table reads the
/// kernel's sockets again (`--reread`).
pub const FORGOTTEN: &str = "max_live_tw";

/// Most displaced enters kept (see [`Lifetimes`]); 128 KB.
const DISPLACED_MAX: usize = 4096;

impl Lifetimes {
    pub fn new(capacity: usize) -> Self {
        let capacity = capacity.max(1);
        Self {
            current: AddrMap::new(capacity),
            old: AddrMap::new(capacity),
            displaced: AddrMap::new(DISPLACED_MAX),
            displaced_by: AddrMap::new(DISPLACED_MAX),
            capacity,
            paired_in_kernel: false,
            forgotten: 0,
        }
    }

    /// Enters forgotten since the last call (their exits will read `lifetime_ms: null`).
    #[inline]
    pub fn take_forgotten(&mut self) -> u64 {
        std::mem::take(&mut self.forgotten)
    }

    /// Says that the kernel pairs enters with exits itself: both signals are on the classic
    /// tracepoint route, whose exits carry their lifetime (its own table of live TIME-WAITs).
    /// Any other mix pairs here, classic records included (a classic exit then finds no
    /// enter in the kernel's table).
    pub fn set_paired_in_kernel(&mut self, yes: bool) {
        self.paired_in_kernel = yes;
    }

    /// Whether the record is paired here, and as what.
    #[inline]
    fn paired(&self, ev: &Event) -> Option<twtrace_common::EventKind> {
        if self.paired_in_kernel {
            return None;
        }
        match twtrace_common::EventKind::from_u8(ev.kind) {
            k @ Some(twtrace_common::EventKind::TwEnter | twtrace_common::EventKind::TwExit) => k,
            _ => None,
        }
    }

    /// A hint that `ev` comes soon: starts loading the slots its socket will touch.
    #[inline]
    pub fn prefetch(&self, ev: &Event) {
        if self.paired(ev).is_some() {
            self.current.prefetch(ev.obj);
            if self.old.len() > 0 {
                self.old.prefetch(ev.obj);
            }
        }
    }

    /// Notes an enter, or fills in the lifetime of an exit.
    pub fn on_event(&mut self, ev: &mut Event) {
        match self.paired(ev) {
            Some(twtrace_common::EventKind::TwEnter) => self.insert(ev.obj, ev.ts_ns),
            Some(twtrace_common::EventKind::TwExit) => {
                if let Some(enter) = self.enter_of(ev.obj, ev.ts_ns) {
                    // 0 reads "unknown": a real lifetime is never under 1 ns.
                    ev.lifetime_ns = ev.ts_ns.saturating_sub(enter).max(1);
                }
            }
            _ => {}
        }
    }

    fn insert(&mut self, tw: u64, ts_ns: u64) {
        if self.current.len() >= self.capacity {
            // The old generation's memory is reused; what it still held is forgotten.
            self.forgotten += self.old.len() as u64;
            self.old.clear();
            std::mem::swap(&mut self.current, &mut self.old);
        }
        // A socket address reused while a stale entry of it sits in `old` (its exit not seen
        // yet): exits look in `current` first, and by time (`enter_of`).
        if let Inserted::Replaced(earlier) = self.current.insert(tw, ts_ns) {
            self.displace(tw, earlier, ts_ns);
        }
    }

    fn displace(&mut self, tw: u64, enter_ns: u64, by_ns: u64) {
        // Those whose exit never comes were reported already, as the exit's loss (ring full,
        // skipped runs): dropped here without being counted again.
        if self.displaced.len() >= DISPLACED_MAX {
            self.displaced.clear();
            self.displaced_by.clear();
        }
        self.displaced.insert(tw, enter_ns);
        self.displaced_by.insert(tw, by_ns);
    }

    /// The displaced enter at `tw`, if an exit at `exit_ns` is its own (see `displaced_by`).
    fn displaced_enter(&mut self, tw: u64, exit_ns: u64) -> Option<u64> {
        if self.displaced.len() == 0 {
            return None; // the usual case: nothing to look up
        }
        let by = self.displaced_by.remove(tw);
        let enter = self.displaced.remove(tw)?;
        (enter <= exit_ns && by.is_some_and(|by| exit_ns < by)).then_some(enter)
    }

    /// The enter time of the TIME-WAIT at `tw` that ended at `exit_ns`: the latest enter there,
    /// unless it came after the exit (then the exit is of the one before it).
    fn enter_of(&mut self, tw: u64, exit_ns: u64) -> Option<u64> {
        let (enter, in_current) = match self.current.remove(tw) {
            Some(enter) => (enter, true),
            None => match self.old.remove(tw) {
                Some(enter) => (enter, false),
                // Neither holds the address: the later TIME-WAIT there that displaced this one's
                // enter has ended already (its exit came first; this one was held back).
                None => return self.displaced_enter(tw, exit_ns),
            },
        };
        if enter <= exit_ns {
            return Some(enter);
        }
        // Put back: room was just made.
        let generation = if in_current {
            &mut self.current
        } else {
            &mut self.old
        };
        generation.insert(tw, enter);
        let before = if in_current {
            self.old.remove(tw)
        } else {
            None
        };
        match before {
            Some(before) => (before <= exit_ns).then_some(before),
            None => self.displaced_enter(tw, exit_ns),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use twtrace_common::{EventKind, HookFamily};

    fn ev(kind: EventKind, hook: HookFamily, obj: u64, ts_ns: u64) -> Event {
        let mut e = Event::zeroed();
        (e.kind, e.hook, e.obj, e.ts_ns) = (kind as u8, hook as u8, obj, ts_ns);
        e
    }

    /// An exit held back in the kernel (parked on its CPU) can arrive after the next
    /// TIME-WAIT at the same address has entered and ended: it still pairs with its own enter.
    #[test]
    fn a_late_exit_pairs_after_its_successor_ended() {
        let mut l = Lifetimes::new(16);
        let mut at = |kind, t| {
            let mut e = ev(kind, HookFamily::TpBtf, 7, t);
            l.on_event(&mut e);
            e.lifetime_ns
        };
        at(EventKind::TwEnter, 100);
        at(EventKind::TwEnter, 500);
        assert_eq!(at(EventKind::TwExit, 900), 400, "the second one's exit");
        assert_eq!(at(EventKind::TwExit, 300), 200, "the first one's, late");
        assert_eq!(at(EventKind::TwExit, 1_000), 0, "no third");
        // A displaced enter whose exit was lost: a later exit there whose own enter was lost
        // too is no exit of it (no lifetime invented back to it).
        at(EventKind::TwEnter, 2_000);
        at(EventKind::TwEnter, 2_500);
        assert_eq!(at(EventKind::TwExit, 2_900), 400);
        assert_eq!(
            at(EventKind::TwExit, 9_000),
            0,
            "after its displacer: not its own"
        );
    }

    #[test]
    fn lifetimes_pair_enters_and_exits_by_socket() {
        let mut l = Lifetimes::new(2);
        for (obj, t) in [(1, 100), (2, 200), (3, 300), (4, 400), (5, 500)] {
            l.on_event(&mut ev(EventKind::TwEnter, HookFamily::TpBtf, obj, t));
        }
        // Sockets 1 and 2 went with their generation: unknown, never a guess; and counted.
        assert_eq!(l.take_forgotten(), 2);
        assert_eq!(l.take_forgotten(), 0, "reported once");
        for obj in [1, 2] {
            let mut x = ev(EventKind::TwExit, HookFamily::TpBtf, obj, 1_000);
            l.on_event(&mut x);
            assert_eq!(x.lifetime_ns, 0);
        }
        // The latest `capacity` enters (and here one more) are remembered, each once.
        for (obj, enter) in [(5, 500), (4, 400), (3, 300)] {
            let mut x = ev(EventKind::TwExit, HookFamily::TpBtf, obj, 1_000);
            l.on_event(&mut x);
            assert_eq!(x.lifetime_ns, 1_000 - enter);
            let mut again = ev(EventKind::TwExit, HookFamily::TpBtf, obj, 2_000);
            l.on_event(&mut again);
            assert_eq!(again.lifetime_ns, 0);
        }
        // A socket address reused: the newer enter wins.
        l.on_event(&mut ev(EventKind::TwEnter, HookFamily::TpBtf, 9, 100));
        l.on_event(&mut ev(EventKind::TwEnter, HookFamily::TpBtf, 8, 100));
        l.on_event(&mut ev(EventKind::TwEnter, HookFamily::TpBtf, 9, 600));
        let mut x = ev(EventKind::TwExit, HookFamily::TpBtf, 9, 1_000);
        l.on_event(&mut x);
        assert_eq!(x.lifetime_ns, 400);
        // The function-probe routes are paired here too.
        l.on_event(&mut ev(EventKind::TwEnter, HookFamily::Fentry, 7, 300));
        let mut x = ev(EventKind::TwExit, HookFamily::Fentry, 7, 1_000);
        l.on_event(&mut x);
        assert_eq!(x.lifetime_ns, 700);
        // A classic exit beside enters on another route: paired here.
        l.on_event(&mut ev(EventKind::TwEnter, HookFamily::TpBtf, 6, 300));
        let mut x = ev(EventKind::TwExit, HookFamily::Tracepoint, 6, 1_000);
        l.on_event(&mut x);
        assert_eq!(x.lifetime_ns, 700);
        // Both on the classic route: the kernel's own lifetime, left alone, and no enter kept.
        l.set_paired_in_kernel(true);
        let kept = l.current.len() + l.old.len();
        l.on_event(&mut ev(EventKind::TwEnter, HookFamily::Tracepoint, 2, 100));
        let mut x = ev(EventKind::TwExit, HookFamily::Tracepoint, 2, 1_000);
        x.lifetime_ns = 5;
        l.on_event(&mut x);
        assert_eq!(x.lifetime_ns, 5);
        assert_eq!(l.current.len() + l.old.len(), kept, "no enter kept");
    }

    /// An exit the kernel held back arrives after a newer TIME-WAIT entered at its address (on
    /// another CPU): it pairs with its own enter, and the newer one's exit with the newer enter.
    #[test]
    fn a_late_exit_pairs_with_the_enter_before_the_newer_one() {
        let enter = |l: &mut Lifetimes, obj, t| {
            l.on_event(&mut ev(EventKind::TwEnter, HookFamily::Fentry, obj, t));
        };
        let exit = |l: &mut Lifetimes, obj, t| {
            let mut x = ev(EventKind::TwExit, HookFamily::Fentry, obj, t);
            l.on_event(&mut x);
            x.lifetime_ns
        };
        let mut l = Lifetimes::new(4);
        enter(&mut l, 7, 100);
        enter(&mut l, 7, 500); // the socket freed at 300, its exit still held back
        assert_eq!(exit(&mut l, 7, 300), 200);
        assert_eq!(exit(&mut l, 7, 900), 400);
        assert_eq!(exit(&mut l, 7, 950), 0, "each enter pairs once");
        // The same across generations: the earlier enter went to `old`.
        enter(&mut l, 1, 100);
        for obj in [2, 3, 4, 5] {
            enter(&mut l, obj, 200);
        }
        enter(&mut l, 1, 500);
        assert_eq!(exit(&mut l, 1, 300), 200);
        assert_eq!(exit(&mut l, 1, 700), 200);
        // An exit older than every enter at its address (none displaced): unknown, and the
        // enter there stays for its own exit.
        enter(&mut l, 6, 500);
        assert_eq!(exit(&mut l, 6, 400), 0);
        assert_eq!(exit(&mut l, 6, 800), 300);
        assert_eq!(l.take_forgotten(), 0);
    }
}
