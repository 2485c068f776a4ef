//! The ports SYNs were seen arriving at, by namespace: TIME-WAITs on them are a server's.

use std::collections::HashMap;

use foldhash::fast::RandomState;

/// Listening ports remembered at most (a bound, not a tuning knob: hosts listen on few).
const MAX: usize = 4096;

/// Each listening port with the earliest time it is known to listen: a TIME-WAIT is a
/// server's if its port listened when it began, so that its enter and its exit are judged
/// alike even when the port is first seen listening in between.
#[derive(Default)]
pub struct Listening {
    since: HashMap<(u32, u16), u64, RandomState>,
    /// The last (namespace, port) found or put in `since`, with its time: asked for every
    /// TIME-WAIT enter and exit and noted for every SYN, nearly always the same few ports, so
    /// most of those skip the hash.
    last: Option<((u32, u16), u64)>,
}

impl Listening {
    /// Remembers that a port listens, at `at_ns` at the latest.
    pub fn note(&mut self, netns: u32, port: u16, at_ns: u64) {
        let key = (netns, port);
        if self
            .last
            .is_some_and(|(k, since)| k == key && since <= at_ns)
        {
            return;
        }
        let full = self.since.len() >= MAX;
        let since = match self.since.get_mut(&key) {
            Some(since) => {
                *since = (*since).min(at_ns);
                *since
            }
            None if full => return,
            None => *self.since.entry(key).or_insert(at_ns),
        };
        self.last = Some((key, since));
    }

    /// Whether the port listened at `at_ns`.
    pub fn at(&mut self, netns: u32, port: u16, at_ns: u64) -> bool {
        let key = (netns, port);
        let since = match self.last {
            Some((k, since)) if k == key => since,
            _ => match self.since.get(&key) {
                Some(&since) => {
                    self.last = Some((key, since));
                    since
                }
                None => return false,
            },
        };
        since <= at_ns
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remembers_ports_up_to_its_bound() {
        let mut l = Listening::default();
        assert!(!l.at(1, 80, 0));
        l.note(1, 80, 0);
        l.note(1, 443, 0);
        assert!(l.at(1, 80, 0) && l.at(1, 443, 0) && l.at(1, 80, 0));
        assert!(!l.at(2, 80, 0), "per namespace");
        for port in 0..(MAX as u16) {
            l.note(3, port, 0);
        }
        assert_eq!(l.since.len(), MAX);
        assert!(!l.at(3, u16::MAX, 0), "beyond the bound");
        l.note(3, u16::MAX, 0);
        assert!(!l.at(3, u16::MAX, 0), "still beyond the bound");
    }

    /// A port listens from the earliest time it was seen to: not before.
    #[test]
    fn a_port_listens_from_when_it_was_first_seen() {
        let mut l = Listening::default();
        l.note(1, 80, 500);
        assert!(!l.at(1, 80, 499) && l.at(1, 80, 500) && l.at(1, 80, 10_000));
        l.note(1, 80, 900); // later: changes nothing
        assert!(!l.at(1, 80, 499));
        l.note(1, 80, 100); // earlier evidence: from then on
        assert!(l.at(1, 80, 100) && !l.at(1, 80, 99));
    }
}
