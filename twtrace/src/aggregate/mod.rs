//! The aggregation core: counts decoded [`Record`]s per remote IP, per local port and per
//! destination `ip:port`, plus global totals and lost-event counts. Pure data: it knows nothing
//! about the kernel, BPF or aya, and filters (--netns/--port/--ip) are applied before
//! [`Aggregate::apply`].
//!
//! Memory is bounded: each per-key table is an LRU of the configured capacity, and the
//! least-recently-updated key is evicted to make room (counted in [`Aggregate::evictions`]).
//! An evicted key loses its counters, including its `live` count; if it comes back it starts
//! from zero (and its `live` then never goes below 0). The global [`Aggregate::totals`] are
//! kept apart from the tables, so they stay exact whatever is evicted.

pub mod clocks;
pub mod counters;
pub mod order;
pub mod paws;
mod rows;
#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::num::NonZeroUsize;

use lru::LruCache;

use crate::event::{Record, What};

pub use counters::Counters;
pub use order::Order;
pub use rows::{DestRow, Evictions, IpRow, LostRow, PortRow, Row, RowKey};

/// One bounded per-key table.
struct Table<K: RowKey> {
    map: LruCache<K, Counters>,
    evictions: u64,
}

impl<K: RowKey> Table<K> {
    fn new(capacity: NonZeroUsize) -> Self {
        Table {
            map: LruCache::new(capacity),
            evictions: 0,
        }
    }

    fn apply(&mut self, key: K, what: &What) {
        // get_mut marks the key most recently used: eviction order is by last update.
        if let Some(c) = self.map.get_mut(&key) {
            c.apply(what);
            return;
        }
        let mut c = Counters::default();
        c.apply(what);
        // The key is absent, so anything push hands back was evicted to make room.
        if self.map.push(key, c).is_some() {
            self.evictions += 1;
        }
    }

    /// The `n` largest rows by `order`, largest first; ties by key so output is stable.
    fn top(&self, n: usize, order: Order) -> Vec<Row<K>> {
        let mut rows: Vec<Row<K>> = self
            .map
            .iter()
            .map(|(k, c)| Row {
                key: *k,
                counters: *c,
            })
            .collect();
        let cmp = |a: &Row<K>, b: &Row<K>| {
            order
                .key(&b.counters)
                .cmp(&order.key(&a.counters))
                .then(a.key.cmp(&b.key))
        };
        // Partial selection first: tables can hold far more keys than a screen shows.
        if n < rows.len() {
            rows.select_nth_unstable_by(n, cmp);
            rows.truncate(n);
        }
        rows.sort_unstable_by(cmp);
        rows
    }
}

/// Counters per remote IP, per local port, per destination, and in total.
pub struct Aggregate {
    by_ip: Table<IpAddr>,
    by_port: Table<u16>,
    by_dest: Table<SocketAddr>,
    totals: Counters,
    /// PAWS rejects, SYN timestamps and clocks per source IP.
    pub paws: paws::PawsTable,
    // Program names are a small fixed set of static strings; a BTreeMap keeps them sorted.
    lost: BTreeMap<&'static str, u64>,
}

impl Aggregate {
    /// `capacity` is the number of keys each table keeps (0 is taken as 1).
    pub fn new(capacity: usize) -> Self {
        let cap = NonZeroUsize::new(capacity).unwrap_or(NonZeroUsize::MIN);
        Aggregate {
            by_ip: Table::new(cap),
            by_port: Table::new(cap),
            by_dest: Table::new(cap),
            totals: Counters::default(),
            lost: BTreeMap::new(),
            paws: paws::PawsTable::new(cap.get(), clocks::ClockConfig::default()),
        }
    }

    /// Counts one record: in the totals, under its remote IP, its destination (remote
    /// `ip:port`) and its local port. `ConnectAddrNotAvail` skips the port table (no local
    /// port was bound, the record says 0). `Lost` only adds to the lost counts.
    pub fn apply(&mut self, rec: &Record) {
        let what = &rec.what;
        match *what {
            What::Lost { program, count } => {
                *self.lost.entry(program).or_default() += count;
                return;
            }
            What::PawsReject { .. } | What::Syn { .. } | What::TwSyn { .. } => {
                self.paws.apply(rec);
                return;
            }
            _ => {}
        }
        self.totals.apply(what);
        self.by_ip.apply(rec.remote.ip(), what);
        // Every TIME-WAIT event feeds the destination table, not just EADDRNOTAVAIL: the live
        // TIME-WAIT count toward a destination is what explains its port exhaustion.
        self.by_dest.apply(rec.remote, what);
        if !matches!(what, What::ConnectAddrNotAvail { .. }) {
            self.by_port.apply(rec.local.port(), what);
        }
    }

    /// Top `n` remote IPs by `order`.
    pub fn top_by_ip(&self, n: usize, order: Order) -> Vec<IpRow> {
        self.by_ip.top(n, order)
    }

    /// Top `n` local ports by `order`. Their `eaddrnotavail` is always 0 (see [`Self::apply`]).
    pub fn top_by_port(&self, n: usize, order: Order) -> Vec<PortRow> {
        self.by_port.top(n, order)
    }

    /// Top `n` destinations (remote `ip:port`) by `order`.
    pub fn top_by_dest(&self, n: usize, order: Order) -> Vec<DestRow> {
        self.by_dest.top(n, order)
    }

    /// Global counters; exact regardless of table evictions.
    pub fn totals(&self) -> Counters {
        self.totals
    }

    /// Lost events per program, sorted by program name.
    pub fn lost(&self) -> Vec<LostRow> {
        self.lost
            .iter()
            .map(|(&program, &count)| LostRow { program, count })
            .collect()
    }

    /// Sum of all lost events.
    pub fn lost_total(&self) -> u64 {
        self.lost.values().sum()
    }

    pub fn evictions(&self) -> Evictions {
        Evictions {
            remote_ip: self.by_ip.evictions,
            local_port: self.by_port.evictions,
            destination: self.by_dest.evictions,
        }
    }

    /// Keys each table can hold.
    pub fn capacity(&self) -> usize {
        self.by_ip.map.cap().get()
    }
}
