//! Snapshot rows handed to sinks: owned copies, never references into the tables.

use std::net::{IpAddr, SocketAddr};

use serde::Serialize;
use serde::ser::{SerializeStruct, Serializer};

use super::Counters;
use super::counters::SERIALIZED_FIELDS;

/// A key of a per-key table, with the field name it is serialized under.
pub trait RowKey: Copy + Ord + std::hash::Hash + Serialize {
    const FIELD: &'static str;
}

impl RowKey for IpAddr {
    const FIELD: &'static str = "remote_ip";
}

impl RowKey for u16 {
    const FIELD: &'static str = "local_port";
}

/// A destination `ip:port` (IPv6 serialized as `[addr]:port`).
impl RowKey for SocketAddr {
    const FIELD: &'static str = "destination";
}

/// One key and its counters. Serializes flat: the key field first, then the counter fields
/// of [`Counters`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Row<K> {
    pub key: K,
    pub counters: Counters,
}

pub type IpRow = Row<IpAddr>;
pub type PortRow = Row<u16>;
pub type DestRow = Row<SocketAddr>;

impl<K: RowKey> Serialize for Row<K> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut s = serializer.serialize_struct("Row", 1 + SERIALIZED_FIELDS)?;
        s.serialize_field(K::FIELD, &self.key)?;
        self.counters.serialize_fields(&mut s)?;
        s.end()
    }
}

/// Events one kernel program could not deliver (ring buffer full), or, for the live-table
/// slot (`LossSlot::LiveTableFull`), enters the in-kernel live table had no room for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct LostRow {
    pub program: &'static str,
    pub count: u64,
}

/// Entries evicted from each bounded table since start.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Evictions {
    pub remote_ip: u64,
    pub local_port: u64,
    pub destination: u64,
}

impl Evictions {
    pub fn total(&self) -> u64 {
        self.remote_ip + self.local_port + self.destination
    }
}
