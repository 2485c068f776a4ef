//! LIVE after lost events: a read of the kernel's sockets (`LiveReset`, then `TwPresent`)
//! makes it exact again, whatever was lost before the read began and however the records of
//! that time interleave with the read. Checked against a model of the kernel: TIME-WAITs on a
//! few 4-tuples entering and ending at random, some of their records lost, a read that looks
//! at each 4-tuple at its own moment while the TIME-WAITs go on.

use std::collections::BTreeMap;

use super::*;
use crate::aggregate::clocks::sim::Rng;

/// A 4-tuple: remote IP (one of two), local port.
type Tuple = (u8, u16);

#[derive(Clone, Copy)]
enum Step {
    Enter,
    Exit { enter_ns: u64, enter_lost: bool },
}

struct Happened {
    ts_ns: u64,
    tuple: Tuple,
    step: Step,
    lost: bool,
}

fn remote((ip, _): Tuple) -> String {
    format!("192.0.2.{ip}:443")
}

fn record(h: &Happened) -> Record {
    let what = match h.step {
        Step::Enter => What::TwEnter {
            substate: Substate::TimeWait,
            timeout_ms: 60_000,
        },
        // Lifetimes are paired by socket: an exit whose enter was lost has none.
        Step::Exit {
            enter_ns,
            enter_lost,
        } => What::TwExit {
            cause: ExitCause::Expired,
            lifetime_ns: (!enter_lost).then(|| h.ts_ns - enter_ns),
        },
    };
    Record {
        ts_ns: h.ts_ns,
        ..rec(&remote(h.tuple), h.tuple.1, what)
    }
}

/// The kernel: what is alive on each 4-tuple, and everything that happened, in time order.
#[derive(Default)]
struct Kernel {
    alive: BTreeMap<Tuple, (u64, bool)>,
    /// Each 4-tuple's TIME-WAITs: (entered, ended) times.
    spans: BTreeMap<Tuple, Vec<(u64, u64)>>,
    log: Vec<Happened>,
}

impl Kernel {
    /// One random enter or exit at `ts_ns`, lost with probability `loss`.
    fn step(&mut self, rng: &mut Rng, ts_ns: u64, loss: f64) {
        let tuple = ((1 + rng.below(2)) as u8, 40_000 + rng.below(12) as u16);
        let lost = rng.unit() < loss;
        let step = match self.alive.remove(&tuple) {
            Some((enter_ns, enter_lost)) => {
                self.spans.entry(tuple).or_default().push((enter_ns, ts_ns));
                Step::Exit {
                    enter_ns,
                    enter_lost,
                }
            }
            None => {
                self.alive.insert(tuple, (ts_ns, lost));
                Step::Enter
            }
        };
        self.log.push(Happened {
            ts_ns,
            tuple,
            step,
            lost,
        });
    }

    /// Whether a TIME-WAIT was alive on `tuple` at `ts_ns`.
    fn alive_at(&self, tuple: Tuple, ts_ns: u64) -> bool {
        let ended = self.spans.get(&tuple).into_iter().flatten().copied();
        let open = self.alive.get(&tuple).map(|&(from, _)| (from, u64::MAX));
        ended
            .chain(open)
            .any(|(from, to)| from <= ts_ns && ts_ns < to)
    }
}

/// One run: losses until `reset_ns`, a read over [reset_ns, read_end_ns], records of the
/// `lag_ns` before the reset handed on after it, no loss after it. Returns the aggregate
/// and the kernel, with `reread` false to run the same stream without the read.
fn run(seed: u64, reread: bool) -> (Aggregate, Kernel) {
    let mut rng = Rng::new(seed);
    let mut kernel = Kernel::default();
    let (reset_ns, read_end_ns, lag_ns, end_ns) = (4_000, 4_300, 200, 6_000);
    let mut t = 0;
    while t < end_ns {
        t += 1 + rng.below(20);
        kernel.step(&mut rng, t, if t < reset_ns { 0.3 } else { 0.0 });
    }
    // The read looks at each 4-tuple once, at its own moment, while TIME-WAITs go on.
    let read: Vec<Tuple> = (1..=2u8)
        .flat_map(|ip| (40_000..40_012).map(move |port| (ip, port)))
        .filter(|&tuple| {
            let at = reset_ns + rng.below(read_end_ns - reset_ns);
            kernel.alive_at(tuple, at)
        })
        .collect();
    let mut agg = Aggregate::new(64);
    let kept = || kernel.log.iter().filter(|h| !h.lost);
    let before = |h: &&Happened| !reread || h.ts_ns < reset_ns - lag_ns;
    for h in kept().filter(before) {
        agg.apply(&record(h));
    }
    if reread {
        agg.apply(&Record::live_reset(reset_ns));
        for &tuple in &read {
            let what = What::TwPresent {
                substate: Substate::TimeWait,
                server: false,
            };
            let r = rec(&remote(tuple), tuple.1, what);
            agg.apply(&Record {
                ts_ns: read_end_ns,
                ..r
            });
        }
        for h in kept().filter(|h| !before(h)) {
            agg.apply(&record(h));
        }
    }
    (agg, kernel)
}

#[test]
fn a_read_after_losses_makes_live_exact() {
    let mut drifted = 0;
    for seed in 0..500 {
        let (agg, kernel) = run(seed, true);
        for ip in [1u8, 2] {
            let truth = kernel.alive.keys().filter(|(i, _)| *i == ip).count() as u64;
            let c = row_for_ip(&agg, &format!("192.0.2.{ip}"));
            assert_eq!(c.live, truth, "seed {seed}, 192.0.2.{ip}");
        }
        assert_eq!(agg.totals().live, kernel.alive.len() as u64, "seed {seed}");
        for port in 40_000..40_012 {
            let truth = kernel.alive.keys().filter(|(_, p)| *p == port).count() as u64;
            let live = (agg.top_by_port(usize::MAX, Order::Live).into_iter())
                .find(|r| r.key == port)
                .map_or(0, |r| r.counters.live);
            assert_eq!(live, truth, "seed {seed}, port {port}");
        }
        assert_eq!(agg.rereads().0, 1);
        // Every TIME-WAIT counted in LIVE has a deadline, once (all past at the end of time).
        assert_eq!(agg.overdue(u64::MAX), agg.totals().live, "seed {seed}");
        // The same records without the read: the losses leave LIVE wrong.
        let (agg, kernel) = run(seed, false);
        drifted += usize::from(agg.totals().live != kernel.alive.len() as u64);
        assert_eq!(agg.overdue(u64::MAX), agg.totals().live, "seed {seed}");
    }
    assert!(
        drifted > 400,
        "the model must lose what matters: {drifted} of 500"
    );
}

/// A second read starts over again: what the first found and its counts are forgotten.
#[test]
fn each_read_starts_live_over() {
    let at = |r: Record, ts_ns: u64| Record { ts_ns, ..r };
    let mut agg = Aggregate::new(16);
    agg.apply(&at(enter("192.0.2.1:443", 40000), 10));
    agg.apply(&at(enter("192.0.2.1:443", 40001), 20));
    // 40000's exit lost; 40001's exit lost too, after the first read counted it.
    agg.apply(&at(Record::live_reset(100), 100));
    agg.apply(&at(present("192.0.2.1:443", 40001), 110));
    assert_eq!(agg.totals().live, 1);
    assert_eq!(agg.rereads(), (1, 1));
    agg.apply(&at(Record::live_reset(200), 200));
    assert_eq!(agg.totals().live, 0);
    assert_eq!(row_for_ip(&agg, "192.0.2.1").live, 0);
    // Nothing left from the first read: 40001's late exit (entered before) takes nothing.
    agg.apply(&at(
        exit("192.0.2.1:443", 40001, ExitCause::Expired, Some(50)),
        70,
    ));
    assert_eq!(agg.totals().live, 0);
    assert_eq!(agg.rereads(), (2, 0));
    // Present at start-up counts only the first read.
    assert_eq!(agg.present_at_start(), 0);
    assert_eq!(agg.totals().tw_created, 2);
}
