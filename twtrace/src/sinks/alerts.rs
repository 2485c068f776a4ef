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

    /// Rejects at TIME-WAIT from which an IP is alerted about: [`Alerter::check`] needs only
    /// the rows at or above it.
    pub fn threshold(&self) -> u64 {
        self.rules.min_rejects
    }

    /// The lines due now (the caller prints them), from rows that include every source IP with
    /// [`Alerter::threshold`] rejects at TIME-WAIT or more.
    pub fn check(&mut self, rows: &[SourceRow], now: Instant) -> Vec<String> {
        let mut out = Vec::new();
        for r in rows {
            let rejects = r.rejects.timewait;
            if rejects < self.rules.min_rejects {
                continue;
            }
            let said = self.last.get(&r.ip).copied();
            if let Some((at, seen)) = said
                && (now.duration_since(at) < self.rules.every || rejects == seen)
            {
                continue;
            }
            self.last.insert(r.ip, (now, rejects));
            // Fewer than said before: the IP was evicted and came back, counting afresh.
            let since = said.and_then(|(_, seen)| rejects.checked_sub(seen));
            out.push(line(r, since));
        }
        // Bounded by the rows (the aggregate's capacity): an IP is forgotten only once it has
        // left them. Forgetting a quiet IP still listed would repeat its alert with no new
        // reject.
        if self.last.len() > rows.len() {
            let listed: std::collections::HashSet<IpAddr> = rows.iter().map(|r| r.ip).collect();
            self.last.retain(|ip, _| listed.contains(ip));
        }
        out
    }
}

/// `new`: the rejects since the last alert about this IP (None for the first).
fn line(r: &SourceRow, new: Option<u64>) -> String {
    let reading = if r.clocks_from_rejects {
        "SYNs behind the clock that made the TIME-WAIT keep coming on a 4-tuple: a second \
         timestamp clock behind this IP (NAT; the SYNs of the clock that made the TIME-WAIT \
         have left the estimate, e.g. under churn), or one client whose clock went back (a \
         reboot); see README \"PAWS and NAT\""
    } else if r.nat_suspected {
        "several TCP timestamp clocks share this IP (NAT): a client whose clock is behind reuses a \
         4-tuple the server still holds in TIME-WAIT, and its SYN is dropped. tcp_tw_recycle is \
         gone (4.12) and never helped NAT; see README \"PAWS and NAT\""
    } else {
        "rejects without a second clock seen yet: a client reconnects with an older timestamp \
         (clock reset, or a middlebox rewriting timestamps), or the clock that made the \
         TIME-WAIT was never sampled (its SYN came before twtrace started, or was not seen; a \
         second clock then shows as more SYNs come); see README \"PAWS and NAT\""
    };
    let since = new.map_or(String::new(), |n| format!(", {n} since the last alert"));
    format!(
        "twtrace: ALERT {}: {} at TIME-WAIT{since} ({} reached a listener), {} (confidence \
         {:.2}), regression max {} ticks, observed {:.2}/s vs predicted {:.2}/s. Reading: {}",
        r.ip,
        super::plural(r.rejects.timewait, "PAWS reject"),
        super::plural(r.syns, "SYN"),
        super::plural(u64::from(r.clocks), "clock"),
        r.clock_confidence,
        r.regression.max.map_or("?".to_owned(), |m| m.to_string()),
        r.observed_rejects_per_s,
        r.predicted_rejects_per_s,
        reading
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        aggregate::{clocks::ClockConfig, paws::PawsTable},
        event::{PawsPath, Record, What},
    };

    fn rows_with_rejects(n: u64) -> Vec<SourceRow> {
        let mut t = PawsTable::new(8, ClockConfig::default());
        for i in 0..n {
            t.apply(&Record {
                ts_ns: 1_000_000_000 + i,
                netns: 1,
                local: "10.0.0.1:80".parse().unwrap(),
                remote: "192.0.2.7:4000".parse().unwrap(),
                what: What::PawsReject {
                    path: PawsPath::Timewait,
                    tsval: Some(1),
                    ts_recent: Some(2),
                    tcp_flags: 0x02,
                    old_ack: false,
                },
            });
        }
        t.rows(2_000_000_000)
    }

    /// Once per IP and interval, and only with new rejects since: a quiet IP still listed is
    /// not alerted again, however long it stays.
    #[test]
    fn an_ip_is_alerted_again_only_for_new_rejects() {
        let every = Duration::from_secs(60);
        let mut a = Alerter::new(AlertRules {
            min_rejects: 5,
            every,
        });
        let t0 = Instant::now();
        assert!(
            a.check(&rows_with_rejects(4), t0).is_empty(),
            "under the threshold"
        );
        let five = rows_with_rejects(5);
        assert_eq!(a.check(&five, t0).len(), 1);
        let six = rows_with_rejects(6);
        assert!(
            a.check(&six, t0 + every / 2).is_empty(),
            "within the interval"
        );
        let again = a.check(&six, t0 + every);
        assert_eq!(again.len(), 1, "new rejects, interval passed");
        assert!(
            again[0].contains(": 6 PAWS rejects at TIME-WAIT, 1 since the last alert (0 SYNs "),
            "{}",
            again[0]
        );
        for k in 2..30 {
            assert!(
                a.check(&six, t0 + every * k).is_empty(),
                "no new reject at {k}"
            );
        }
        // Gone from the rows (evicted), then back: a new count, a new alert.
        assert!(a.check(&[], t0 + every * 31).is_empty());
        assert_eq!(a.check(&six, t0 + every * 32).len(), 1);
    }
}
