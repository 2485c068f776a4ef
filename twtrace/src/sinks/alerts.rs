//! Alerts: one line on stderr (the journal under systemd) when a source IP crosses the PAWS
//! thresholds, at most once per IP per interval, and only when it got new rejects since.

use std::{
    collections::HashMap,
    net::IpAddr,
    time::{Duration, Instant},
};

use crate::aggregate::paws::SourceRow;

#[derive(Clone, Copy, Debug)]
pub struct AlertRules {
    /// Timewait PAWS rejects from one IP before it is worth a line.
    pub min_rejects: u64,
    /// Least time between two lines about the same IP.
    pub every: Duration,
}

pub struct Alerter {
    rules: AlertRules,
    /// Per IP: when we last spoke, and the reject total then.
    last: HashMap<IpAddr, (Instant, u64)>,
}

impl Alerter {
    pub fn new(rules: AlertRules) -> Self {
        Self {
            rules,
            last: HashMap::new(),
        }
    }

    /// The lines due now (the caller prints them).
    pub fn check(&mut self, rows: &[SourceRow], now: Instant) -> Vec<String> {
        let mut out = Vec::new();
        for r in rows {
            let rejects = r.rejects.timewait;
            if rejects < self.rules.min_rejects {
                continue;
            }
            if let Some(&(at, seen)) = self.last.get(&r.ip)
                && (now.duration_since(at) < self.rules.every || rejects == seen)
            {
                continue;
            }
            self.last.insert(r.ip, (now, rejects));
            out.push(line(r));
        }
        // Bounded: forget IPs quiet for ten intervals.
        let every = self.rules.every;
        self.last
            .retain(|_, (at, _)| now.duration_since(*at) < every * 10);
        out
    }
}

fn line(r: &SourceRow) -> String {
    let reading = if r.nat_suspected {
        "several TCP timestamp clocks share this IP (NAT): a client whose clock is behind reuses a \
         4-tuple the server still holds in TIME-WAIT, and its SYN is dropped. tcp_tw_recycle is \
         gone (4.12) and never helped NAT; see README \"PAWS and NAT\""
    } else {
        "rejects without a second clock seen yet: a client reconnects with an older timestamp \
         (clock reset, or a middlebox rewriting timestamps); see README \"PAWS and NAT\""
    };
    format!(
        "twtrace: ALERT {}: {} PAWS rejects at TIME-WAIT ({} SYNs), {} clock(s) (confidence {:.2}), \
         regression max {} ticks, observed {:.2}/s vs predicted {:.2}/s. Reading: {}",
        r.ip,
        r.rejects.timewait,
        r.tw_syns.rejected_paws,
        r.clocks,
        r.clock_confidence,
        r.regression.max.map_or("?".to_owned(), |m| m.to_string()),
        r.observed_rejects_per_s,
        r.predicted_rejects_per_s,
        reading
    )
}
