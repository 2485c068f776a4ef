//! Sort keys for the top-N snapshots.

use std::fmt;
use std::str::FromStr;

use super::Counters;
use crate::event::ExitCause;

/// What a top-N snapshot is sorted by (descending; ties by key, ascending).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Order {
    TwCreated,
    Live,
    /// Exits of one cause.
    Exits(ExitCause),
    /// Exits of all causes.
    ExitsTotal,
    Overflow,
    EaddrNotAvail,
}

impl Order {
    /// Every order, e.g. to list the accepted names in `--help`.
    pub const ALL: [Order; 11] = [
        Order::TwCreated,
        Order::Live,
        Order::Exits(ExitCause::Expired),
        Order::Exits(ExitCause::ReplacedBySyn),
        Order::Exits(ExitCause::KilledByRst),
        Order::Exits(ExitCause::Reused),
        Order::Exits(ExitCause::Purged),
        Order::Exits(ExitCause::Unknown),
        Order::ExitsTotal,
        Order::Overflow,
        Order::EaddrNotAvail,
    ];

    /// The name a user types (`--sort`); the same as the column/field it sorts by, with a
    /// cause named bare ("expired", not "exits_expired").
    pub fn as_str(self) -> &'static str {
        match self {
            Order::TwCreated => "tw_created",
            Order::Live => "live",
            Order::Exits(cause) => cause.as_str(),
            Order::ExitsTotal => "exits",
            Order::Overflow => "overflow",
            Order::EaddrNotAvail => "eaddrnotavail",
        }
    }

    /// The value this order sorts by.
    pub fn key(self, c: &Counters) -> u64 {
        match self {
            Order::TwCreated => c.tw_created,
            Order::Live => c.live,
            Order::Exits(cause) => c.exits(cause),
            Order::ExitsTotal => c.exits_total(),
            Order::Overflow => c.overflow,
            Order::EaddrNotAvail => c.eaddrnotavail,
        }
    }
}

impl fmt::Display for Order {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The unknown name, for an error message that lists the accepted ones.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnknownOrder(pub String);

impl fmt::Display for UnknownOrder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "unknown sort key {:?}; expected one of:", self.0)?;
        for o in Order::ALL {
            write!(f, " {o}")?;
        }
        Ok(())
    }
}

impl std::error::Error for UnknownOrder {}

impl FromStr for Order {
    type Err = UnknownOrder;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Order::ALL
            .into_iter()
            .find(|o| o.as_str() == s)
            .ok_or_else(|| UnknownOrder(s.to_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_are_unique() {
        for o in Order::ALL {
            assert_eq!(o.as_str().parse::<Order>(), Ok(o));
        }
        let mut names: Vec<_> = Order::ALL.iter().map(|o| o.as_str()).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), Order::ALL.len());
    }

    #[test]
    fn unknown_name_lists_choices() {
        let e = "bogus".parse::<Order>().unwrap_err();
        assert!(e.to_string().contains("tw_created"));
    }
}
