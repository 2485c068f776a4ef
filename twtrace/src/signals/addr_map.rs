//! A map from kernel object addresses to a `u64`, for state kept per live kernel object (the
//! enter time of each TIME-WAIT socket, until its exit).
//!
//! Why not `HashMap`: under churn every TIME-WAIT is one insert and, seconds later, one remove
//! at a random socket address in a table of ~60k entries (a few MB). Each remove is then one
//! or two cache misses, and they were a quarter of the tracer's CPU time (host perf, 30k
//! connections/s). The ring buffer hands records over in batches, so the misses can be
//! overlapped: [`AddrMap::prefetch`] starts loading a key's slot while earlier records are
//! processed. std's and hashbrown's tables do not say where a key's slot is; this one does,
//! and it keeps key and value in one 16-byte slot (one line to fetch, not a control byte group
//! and a bucket).
//!
//! Open addressing with linear probing and backward-shift deletion (no tombstones, so a long
//! churn never degrades it). Keys are kernel addresses, never 0, which marks an empty slot.

/// One slot: `key == 0` is empty.
#[derive(Clone, Copy, Default)]
struct Slot {
    key: u64,
    val: u64,
}

/// What [`AddrMap::insert`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Inserted {
    New,
    /// The key was there: its value was this.
    Replaced(u64),
    /// The map was full and the key not in it: nothing changed.
    Full,
}

pub struct AddrMap {
    slots: Vec<Slot>,
    /// `slots.len() - 1`; the length is a power of two.
    mask: usize,
    /// 64 − log2(slots.len()): the hash's top bits pick the home slot.
    shift: u32,
    len: usize,
    /// Most entries held; the table grows to at most twice that many slots.
    max_len: usize,
}

/// Fibonacci hashing: kernel addresses differ in their middle bits (slab objects are aligned,
/// so the low bits are mostly equal); the product's top bits mix all of them.
const MULTIPLIER: u64 = 0x9e37_79b9_7f4a_7c15;
const MIN_SLOTS: usize = 1024;

impl AddrMap {
    /// A map for up to `max_len` entries, growing on demand (load factor at most 1/2).
    pub fn new(max_len: usize) -> Self {
        let mut m = Self {
            slots: Vec::new(),
            mask: 0,
            shift: 0,
            len: 0,
            max_len: max_len.max(1),
        };
        m.resize(MIN_SLOTS);
        m
    }

    pub fn len(&self) -> usize {
        self.len
    }

    /// Forgets every entry, keeping the memory.
    pub fn clear(&mut self) {
        if self.len > 0 {
            self.slots.fill(Slot::default());
            self.len = 0;
        }
    }

    #[inline]
    fn home(&self, key: u64) -> usize {
        (key.wrapping_mul(MULTIPLIER) >> self.shift) as usize
    }

    /// Starts loading the cache line of `key`'s home slot, so that a later insert or remove of
    /// it does not wait for memory. A hint only: no effect on the contents.
    #[inline]
    pub fn prefetch(&self, key: u64) {
        #[cfg(target_arch = "x86_64")]
        {
            let p = self.slots.as_ptr().wrapping_add(self.home(key));
            // SAFETY: a prefetch never faults and `p` lies within the slots.
            unsafe {
                core::arch::x86_64::_mm_prefetch(p.cast::<i8>(), core::arch::x86_64::_MM_HINT_T0)
            };
        }
        #[cfg(not(target_arch = "x86_64"))]
        let _ = key;
    }

    /// Sets `key`'s value (`key` must not be 0); changes nothing when the map already holds
    /// `max_len` entries and `key` is not one of them.
    pub fn insert(&mut self, key: u64, val: u64) -> Inserted {
        debug_assert_ne!(key, 0, "0 marks an empty slot");
        if self.len >= self.max_len {
            return match self.find(key) {
                Some(i) => Inserted::Replaced(std::mem::replace(&mut self.slots[i].val, val)),
                None => Inserted::Full,
            };
        }
        if (self.len + 1) * 2 > self.slots.len() {
            self.resize(self.slots.len() * 2);
        }
        let mut i = self.home(key);
        loop {
            let s = &mut self.slots[i];
            if s.key == 0 {
                *s = Slot { key, val };
                self.len += 1;
                return Inserted::New;
            }
            if s.key == key {
                return Inserted::Replaced(std::mem::replace(&mut s.val, val));
            }
            i = (i + 1) & self.mask;
        }
    }

    /// Removes `key`, returning its value.
    pub fn remove(&mut self, key: u64) -> Option<u64> {
        let mut hole = self.find(key)?;
        let val = self.slots[hole].val;
        // Backward shift: move later entries of the probe run into the hole when their home
        // slot does not lie after it, so every entry stays reachable from its home slot.
        let mut j = hole;
        loop {
            j = (j + 1) & self.mask;
            let k = self.slots[j].key;
            if k == 0 {
                break;
            }
            let home = self.home(k);
            // `j` may fill the hole if the hole lies cyclically within [home, j).
            if (j.wrapping_sub(home) & self.mask) >= (j.wrapping_sub(hole) & self.mask) {
                self.slots[hole] = self.slots[j];
                hole = j;
            }
        }
        self.slots[hole] = Slot::default();
        self.len -= 1;
        Some(val)
    }

    fn find(&self, key: u64) -> Option<usize> {
        if key == 0 {
            return None;
        }
        let mut i = self.home(key);
        loop {
            match self.slots[i].key {
                0 => return None,
                k if k == key => return Some(i),
                _ => i = (i + 1) & self.mask,
            }
        }
    }

    fn resize(&mut self, slots: usize) {
        let old = std::mem::replace(&mut self.slots, vec![Slot::default(); slots]);
        self.mask = slots - 1;
        self.shift = 64 - slots.trailing_zeros();
        self.len = 0;
        for s in old.into_iter().filter(|s| s.key != 0) {
            self.insert(s.key, s.val);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    /// Random inserts and removes against std's map, with keys shaped like slab addresses
    /// (aligned, clustered) and with colliding runs, through growth and at the size limit.
    #[test]
    fn behaves_like_a_hash_map() {
        let mut m = AddrMap::new(3000);
        let mut model: HashMap<u64, u64> = HashMap::new();
        let mut x: u64 = 0x2545_f491_4f6c_dd1d;
        for step in 0..400_000u64 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let key = 0xffff_8880_0000_0000 + (x % 5000) * 256;
            if x >> 60 < 9 {
                let want = match model.get(&key) {
                    Some(&v) => Inserted::Replaced(v),
                    None if model.len() < 3000 => Inserted::New,
                    None => Inserted::Full,
                };
                assert_eq!(m.insert(key, step), want, "insert at step {step}");
                if want != Inserted::Full {
                    model.insert(key, step);
                }
            } else {
                assert_eq!(m.remove(key), model.remove(&key), "remove at step {step}");
            }
            assert_eq!(m.len(), model.len());
        }
        for (k, v) in &model {
            assert_eq!(m.find(*k).map(|i| m.slots[i].val), Some(*v));
        }
        m.clear();
        assert_eq!(m.len(), 0);
        assert_eq!(m.remove(0xffff_8880_0000_0100), None);
    }

    /// Keys that share a home slot form one probe run; removing from its middle must keep the
    /// rest reachable, including across the end of the table.
    #[test]
    fn removal_keeps_probe_runs_reachable() {
        let mut m = AddrMap::new(8);
        let n = m.slots.len() as u64;
        // Keys whose home is the last slot: their run wraps around to the start.
        let wrap: Vec<u64> = (1..u64::MAX / 2)
            .map(|k| k * 64)
            .filter(|&k| m.home(k) == n as usize - 1)
            .take(4)
            .collect();
        for (v, &k) in wrap.iter().enumerate() {
            assert_eq!(m.insert(k, v as u64), Inserted::New);
        }
        assert_eq!(m.remove(wrap[1]), Some(1));
        assert_eq!(m.remove(wrap[0]), Some(0));
        assert_eq!(m.remove(wrap[3]), Some(3));
        assert_eq!(m.remove(wrap[2]), Some(2));
        assert_eq!(m.len(), 0);
    }
}
