//! The ports SYNs were seen arriving at, by namespace: TIME-WAITs on them are a server's.

use std::collections::HashSet;

use foldhash::fast::RandomState;

/// Listening ports remembered at most (a bound, not a tuning knob: hosts listen on few).
const MAX: usize = 4096;

#[derive(Default)]
pub struct Listening {
    set: HashSet<(u32, u16), RandomState>,
    /// The last (namespace, port) found or put in `set`, which only grows: asked for every
    /// TIME-WAIT enter and exit and noted for every SYN, nearly always the same few ports, so
    /// most of those skip the hash.
    last: Option<(u32, u16)>,
}

impl Listening {
    /// Remembers a port that listens.
    pub fn note(&mut self, netns: u32, port: u16) {
        let key = (netns, port);
        if self.last == Some(key) {
            return;
        }
        if self.set.len() < MAX {
            self.set.insert(key);
            self.last = Some(key);
        }
    }

    pub fn contains(&mut self, netns: u32, port: u16) -> bool {
        let key = (netns, port);
        if self.last == Some(key) {
            return true;
        }
        let found = self.set.contains(&key);
        if found {
            self.last = Some(key);
        }
        found
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remembers_ports_up_to_its_bound() {
        let mut l = Listening::default();
        assert!(!l.contains(1, 80));
        l.note(1, 80);
        l.note(1, 443);
        assert!(l.contains(1, 80) && l.contains(1, 443) && l.contains(1, 80));
        assert!(!l.contains(2, 80), "per namespace");
        for port in 0..(MAX as u16) {
            l.note(3, port);
        }
        assert_eq!(l.set.len(), MAX);
        assert!(!l.contains(3, u16::MAX), "beyond the bound");
        l.note(3, u16::MAX);
        assert!(!l.contains(3, u16::MAX), "still beyond the bound");
    }
}
