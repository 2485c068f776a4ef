//! The counters kept per key (remote IP, local port, destination) and globally.

use serde::ser::{Serialize, SerializeStruct, Serializer};

use crate::event::{ExitCause, What};

/// How many exit causes there are; `exits` arrays are indexed by `cause as usize`.
pub const CAUSES: usize = ExitCause::ALL.len();

/// Serialized names of the per-cause exit counters, in `ExitCause::ALL` order. Spelled out
/// (not formatted at run time) because serde field names must be `&'static str`.
const EXIT_FIELDS: [&str; CAUSES] = [
    "exits_expired",
    "exits_replaced_by_syn",
    "exits_killed_by_rst",
    "exits_reused",
    "exits_purged",
    "exits_unknown",
];

/// Number of fields [`Counters::serialize_fields`] writes (serde wants it up front).
pub(crate) const SERIALIZED_FIELDS: usize = 2 + CAUSES + 4 + 5;

/// TIME-WAIT lifetimes of exits whose entry was observed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Lifetime {
    pub count: u64,
    /// u128: a u64 of nanoseconds overflows after ~3e8 sixty-second lifetimes, which a busy
    /// host reaches within hours.
    pub sum_ns: u128,
    /// Meaningless while `count` is 0 (use the `*_ms` accessors).
    pub min_ns: u64,
    pub max_ns: u64,
}

const NS_PER_MS: f64 = 1_000_000.0;

impl Lifetime {
    fn record(&mut self, ns: u64) {
        if self.count == 0 {
            self.min_ns = ns;
            self.max_ns = ns;
        } else {
            self.min_ns = self.min_ns.min(ns);
            self.max_ns = self.max_ns.max(ns);
        }
        self.count += 1;
        self.sum_ns += u128::from(ns);
    }

    pub fn sum_ms(&self) -> f64 {
        self.sum_ns as f64 / NS_PER_MS
    }

    pub fn avg_ms(&self) -> Option<f64> {
        (self.count > 0).then(|| self.sum_ms() / self.count as f64)
    }

    pub fn min_ms(&self) -> Option<f64> {
        (self.count > 0).then(|| self.min_ns as f64 / NS_PER_MS)
    }

    pub fn max_ms(&self) -> Option<f64> {
        (self.count > 0).then(|| self.max_ns as f64 / NS_PER_MS)
    }
}

/// How one record moves `live`. The aggregate decides (`Aggregate::apply`): it alone knows
/// which TIME-WAITs the latest read of the kernel's sockets counted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum LiveStep {
    Up,
    Down,
    Keep,
}

/// Counters for one key, or for everything (the global totals). Plain `Copy` data so snapshot
/// rows can be taken without holding references into the tables.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counters {
    /// Sockets that entered TIME-WAIT (`TwEnter`).
    pub tw_created: u64,
    /// Current TIME-WAIT population: +1 per enter and per TIME-WAIT found by a read of the
    /// kernel's sockets (at start-up, and again after lost events), -1 per exit of either,
    /// never below 0.
    pub live: u64,
    /// Exits per cause, indexed by `ExitCause as usize` (see [`Counters::exits`]).
    pub exits_by_cause: [u64; CAUSES],
    /// Exits whose entry was not seen (`lifetime_ns == None`): sockets already in TIME-WAIT
    /// when tracing started, entered while the live table was full, or whose enter was lost.
    /// Also counted in `exits_by_cause`.
    pub exits_unseen_entry: u64,
    /// Closes that skipped TIME-WAIT because `tcp_max_tw_buckets` was full.
    pub overflow: u64,
    /// connect() failures with EADDRNOTAVAIL.
    pub eaddrnotavail: u64,
    pub lifetime: Lifetime,
    /// When this key's row was made (a row evicted and made again starts over): the exits of
    /// TIME-WAITs that began before it belong to its earlier life, not to these counts. 0 for
    /// the totals. Not serialized.
    pub since_ns: u64,
}

impl Counters {
    pub fn exits(&self, cause: ExitCause) -> u64 {
        self.exits_by_cause[cause as usize]
    }

    pub fn exits_total(&self) -> u64 {
        self.exits_by_cause.iter().sum()
    }

    /// Counts one event, and moves `live` by `live`. `Lost` carries no endpoint and is kept
    /// apart by the caller.
    pub(crate) fn apply(&mut self, what: &What, live: LiveStep) {
        match *what {
            What::TwEnter { .. } => self.tw_created += 1,
            What::TwExit { cause, lifetime_ns } => {
                self.exits_by_cause[cause as usize] += 1;
                match lifetime_ns {
                    Some(ns) => self.lifetime.record(ns),
                    None => self.exits_unseen_entry += 1,
                }
            }
            What::TwOverflow => self.overflow += 1,
            What::ConnectAddrNotAvail { .. } => self.eaddrnotavail += 1,
            // Already in TIME-WAIT when read: alive (`live`), but not created under watch.
            What::TwPresent { .. }
            // PAWS and SYN records are aggregated per source IP in `aggregate::paws`.
            | What::Lost { .. }
            | What::PawsReject { .. }
            | What::Syn { .. }
            | What::TwSyn { .. }
            | What::Listening
            | What::LiveReset => {}
        }
        match live {
            LiveStep::Up => self.live += 1,
            // Saturating: the +1 may have been counted in an LRU entry since evicted.
            LiveStep::Down => self.live = self.live.saturating_sub(1),
            LiveStep::Keep => {}
        }
    }

    /// Writes the counters as flat fields (no nesting, so CSV writers can take rows as they
    /// are). Lifetime fields are milliseconds; min/avg/max are null when no lifetime is known.
    pub(crate) fn serialize_fields<S: SerializeStruct>(&self, s: &mut S) -> Result<(), S::Error> {
        s.serialize_field("tw_created", &self.tw_created)?;
        s.serialize_field("live", &self.live)?;
        for (name, n) in EXIT_FIELDS.iter().zip(self.exits_by_cause) {
            s.serialize_field(name, &n)?;
        }
        s.serialize_field("exits_total", &self.exits_total())?;
        s.serialize_field("exits_unseen_entry", &self.exits_unseen_entry)?;
        s.serialize_field("overflow", &self.overflow)?;
        s.serialize_field("eaddrnotavail", &self.eaddrnotavail)?;
        s.serialize_field("lifetime_count", &self.lifetime.count)?;
        s.serialize_field("lifetime_sum_ms", &self.lifetime.sum_ms())?;
        s.serialize_field("lifetime_min_ms", &self.lifetime.min_ms())?;
        s.serialize_field("lifetime_avg_ms", &self.lifetime.avg_ms())?;
        s.serialize_field("lifetime_max_ms", &self.lifetime.max_ms())
    }
}

impl Serialize for Counters {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut s = serializer.serialize_struct("Counters", SERIALIZED_FIELDS)?;
        self.serialize_fields(&mut s)?;
        s.end()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_field_names_follow_cause_order() {
        for (i, cause) in ExitCause::ALL.iter().enumerate() {
            assert_eq!(*cause as usize, i, "ALL must be in discriminant order");
            assert_eq!(EXIT_FIELDS[i], format!("exits_{}", cause.as_str()));
        }
    }

    #[test]
    fn serialized_field_count_matches() {
        let v = serde_json::to_value(Counters::default()).unwrap();
        assert_eq!(v.as_object().unwrap().len(), SERIALIZED_FIELDS);
        assert!(v["lifetime_min_ms"].is_null());
    }
}
