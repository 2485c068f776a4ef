//! When the TIME-WAITs counted in LIVE should have ended: a check on LIVE that needs no lost
//! count. An exit the kernel ran but no program reported (the sandbox's known gap, a parked
//! cancel never explained) leaves LIVE one high for good, and nothing says so. Every TIME-WAIT
//! has a timer: past its timeout, plus the timer wheel's lateness, it has ended or been
//! re-armed. LIVE holding more TIME-WAITs than could still be alive is a sign to read the
//! kernel's sockets again (a re-armed one is then found and counted; the read is exact).
//!
//! Kept per second of when each TIME-WAIT began counting (its enter, or the read that found
//! it), so that an exit with a known start takes its TIME-WAIT off its own second: what stays
//! in a second past its deadline is what no exit took off, however busy the host. Where an
//! exit's second is not known exactly (a TIME-WAIT found by a read: the read's seconds), the
//! earliest it can be is given, and the count is taken off the first second from there that
//! holds one: what is left can only be due later than the TIME-WAITs really left, never
//! sooner (a miss may be told late; nothing is told that did not happen).

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;

use foldhash::fast::RandomState;

const SEC_NS: u64 = 1_000_000_000;

/// A TIME-WAIT's 4-tuple in its namespace: (netns, local, remote).
pub type Tuple = (u32, SocketAddr, SocketAddr);

/// TCP_TIMEWAIT_LEN: a `#define` (not in BTF), 60 s in every kernel. What a TIME_WAIT timer is
/// armed with (`tcp_time_wait` always arms it so: a timeout read as less is taken as this), the
/// timer a FIN_WAIT2 stand-in is re-armed with when the peer's FIN comes (it then becomes a
/// TIME-WAIT), and the timeout of a TIME-WAIT found by a read (sock_diag's `expires` is not
/// kept by the crate). Longer timeouts seen in enters take its place ([`Deadlines::longest_ns`]).
pub const TIMEWAIT_LEN_NS: u64 = 60 * SEC_NS;

/// A timeout read as longer than this is no timer's (a failed read of one): taken as this.
const TIMEOUT_MAX_NS: u64 = 3_600 * SEC_NS;

/// Past its timeout a timer may still be waiting: the kernel's timer wheel rounds a timeout up
/// to its level's granularity (at most an eighth of it), a busy or virtual CPU runs the timer
/// softirq later still (up to 75 s for 60 s seen in single-vCPU guests), and the exit takes a
/// drain of the ring to reach the aggregate. A deadline too late only delays the check.
fn slack_ns(timeout_ns: u64) -> u64 {
    timeout_ns / 4 + 5 * SEC_NS
}

/// When a TIME-WAIT that began at `began_ns` with a timer of `life_ns` should have ended.
fn due_ns(began_ns: u64, life_ns: u64) -> u64 {
    (began_ns.saturating_add(life_ns)).saturating_add(slack_ns(life_ns))
}

/// Counts begun within one second, and by when all of them should have ended.
#[derive(Clone, Copy, Debug)]
struct Second {
    sec: u64,
    count: u64,
    due_ns: u64,
}

/// TIME-WAITs counted in LIVE by the second they began counting (see the module's text).
#[derive(Debug, Default)]
pub struct Deadlines {
    /// In order of `sec`, at most [`Deadlines::MAX`].
    seconds: VecDeque<Second>,
    /// The longest TIME_WAIT timeout an enter carried (at least [`TIMEWAIT_LEN_NS`]).
    longest_ns: u64,
    /// TIME-WAITs re-armed by a PAWS reject, by 4-tuple: the second their count is in now.
    /// Their next re-arm and their exit move that count, not another TIME-WAIT's: a NAT's
    /// rejects at a few TIME-WAITs, again and again, must not keep pushing back the deadline
    /// of one whose exit was missed. At most [`Deadlines::REARMS_MAX`].
    rearms: HashMap<Tuple, u64, RandomState>,
}

impl Deadlines {
    /// Seconds kept; beyond, the oldest is merged into the next (under the later deadline of
    /// the two). Two minutes of churn need about 130.
    const MAX: usize = 512;

    /// TIME-WAITs re-armed by PAWS remembered at once (about 160 B each with the hash table's
    /// slack: 10 MB at most; freed once none is left). Beyond, all are forgotten:
    /// their counts stay in the seconds they were moved to, later than those they came from,
    /// so an exit taking one off its enter's second leaves nothing due sooner than it was.
    const REARMS_MAX: usize = 65_536;

    /// The longest a TIME_WAIT timer runs, as far as seen.
    fn longest_ns(&self) -> u64 {
        self.longest_ns.max(TIMEWAIT_LEN_NS)
    }

    /// A TIME-WAIT that entered at `ts_ns` with its timer at `timeout_ns`; `fin_wait2`: a
    /// FIN_WAIT2 stand-in, which the peer's FIN turns into a TIME-WAIT for a full timer more.
    pub fn entered(&mut self, ts_ns: u64, timeout_ns: u64, fin_wait2: bool) {
        let timeout_ns = timeout_ns.min(TIMEOUT_MAX_NS);
        let life = if fin_wait2 {
            timeout_ns + self.longest_ns()
        } else {
            let timeout_ns = timeout_ns.max(TIMEWAIT_LEN_NS);
            self.longest_ns = self.longest_ns.max(timeout_ns);
            timeout_ns
        };
        self.up(ts_ns, life);
    }

    /// A TIME-WAIT found by a read of the kernel's sockets at `ts_ns` (its timer unknown: the
    /// longest it can be).
    pub fn found(&mut self, ts_ns: u64, fin_wait2: bool) {
        let life = self.longest_ns() * if fin_wait2 { 2 } else { 1 };
        self.up(ts_ns, life);
    }

    fn up(&mut self, began_ns: u64, life_ns: u64) {
        self.add(began_ns, due_ns(began_ns, life_ns));
    }

    /// Counts one TIME-WAIT that began at `began_ns`, due by `due_ns`.
    fn add(&mut self, began_ns: u64, due_ns: u64) {
        let sec = began_ns / SEC_NS;
        // Records come nearly in time order: the last second, or a new one, almost always.
        let at = match self.seconds.back() {
            Some(last) if last.sec == sec => self.seconds.len() - 1,
            Some(last) if last.sec > sec => {
                match self.seconds.binary_search_by_key(&sec, |s| s.sec) {
                    Ok(i) => i,
                    Err(i) => {
                        self.seconds.insert(
                            i,
                            Second {
                                sec,
                                count: 0,
                                due_ns,
                            },
                        );
                        i
                    }
                }
            }
            _ => {
                self.seconds.push_back(Second {
                    sec,
                    count: 0,
                    due_ns,
                });
                self.seconds.len() - 1
            }
        };
        let s = &mut self.seconds[at];
        s.count += 1;
        s.due_ns = s.due_ns.max(due_ns);
        self.bound();
    }

    /// A TIME-WAIT counted in LIVE had its timer re-armed at `ts_ns` for a full TIME-WAIT.
    /// Which one is not known here (its enter's time is not kept by 4-tuple): the oldest
    /// second's count is moved, due no sooner than it was (the one re-armed may have been a
    /// FIN_WAIT2 stand-in, not re-armed at all, due later). When the one moved was another,
    /// the one re-armed keeps a deadline no sooner than the moved one's: what is told overdue
    /// is still no more than the TIME-WAITs really past their timers.
    pub fn rearmed(&mut self, tuple: Tuple, ts_ns: u64) {
        // Re-armed before: its own count, where the last re-arm put it.
        let own = self.rearms.get(&tuple).and_then(|&sec| self.holding(sec));
        let Some(from) = own.or_else(|| self.seconds.iter().position(|s| s.count > 0)) else {
            return;
        };
        let was_due = self.seconds[from].due_ns;
        self.seconds[from].count -= 1;
        self.pop_empty_front();
        let due = due_ns(ts_ns, self.longest_ns());
        self.add(ts_ns, due.max(was_due));
        if self.rearms.len() >= Self::REARMS_MAX && !self.rearms.contains_key(&tuple) {
            self.rearms = HashMap::default();
        }
        self.rearms.insert(tuple, ts_ns / SEC_NS);
    }

    /// The index of second `sec`, if it holds a count.
    fn holding(&self, sec: u64) -> Option<usize> {
        let i = self.seconds.binary_search_by_key(&sec, |s| s.sec).ok()?;
        (self.seconds[i].count > 0).then_some(i)
    }

    fn pop_empty_front(&mut self) {
        while self.seconds.front().is_some_and(|s| s.count == 0) {
            self.seconds.pop_front();
        }
    }

    /// A TIME-WAIT counted in LIVE ended; it began at `began_ns`, or, for one found by a read,
    /// no sooner (see the module's text). Taken off its own second, or, when that holds none
    /// (a read counted it, in a later second; or an earlier exit took its count), off the next
    /// later second that holds one, else the latest earlier one.
    pub fn ended(&mut self, tuple: impl FnOnce() -> Tuple, began_ns: u64) {
        // Re-armed by PAWS: its count is where the last re-arm put it.
        let rearmed = (!self.rearms.is_empty())
            .then(|| self.rearms.remove(&tuple()))
            .flatten();
        if rearmed.is_some() && self.rearms.is_empty() {
            self.rearms = HashMap::default(); // a storm's table, freed
        }
        let sec = rearmed.unwrap_or(began_ns / SEC_NS);
        let at = match self.seconds.binary_search_by_key(&sec, |s| s.sec) {
            Ok(i) if self.seconds[i].count > 0 => Some(i),
            Ok(i) | Err(i) => {
                let later = (i..self.seconds.len()).find(|&j| self.seconds[j].count > 0);
                later.or_else(|| {
                    (0..i.min(self.seconds.len()))
                        .rev()
                        .find(|&j| self.seconds[j].count > 0)
                })
            }
        };
        if let Some(at) = at {
            self.seconds[at].count -= 1;
        }
        self.pop_empty_front();
    }

    /// TIME-WAITs counted whose deadline had passed at `now_ns`, with no exit seen.
    pub fn overdue(&self, now_ns: u64) -> u64 {
        (self.seconds.iter())
            .filter(|s| s.due_ns < now_ns)
            .map(|s| s.count)
            .sum()
    }

    /// Seconds held (for the bound's test).
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.seconds.len()
    }

    /// LIVE starts over (a read of the kernel's sockets follows).
    pub fn clear(&mut self) {
        self.seconds.clear();
        self.rearms = HashMap::default();
    }

    /// Keeps at most [`Self::MAX`] seconds: with one overdue at the front and no read again,
    /// every later second would stay behind it.
    fn bound(&mut self) {
        while self.seconds.len() > Self::MAX {
            let Some(oldest) = self.seconds.pop_front() else {
                return;
            };
            if let Some(next) = self.seconds.front_mut() {
                next.count += oldest.count;
                next.due_ns = next.due_ns.max(oldest.due_ns);
            }
        }
    }
}
