use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use super::*;
use crate::event::{ExitCause, Substate};

const MS: u64 = 1_000_000;

fn rec(remote: &str, lport: u16, what: What) -> Record {
    Record {
        ts_ns: 1,
        netns: 4026531840,
        local: SocketAddr::new(IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1)), lport),
        remote: remote.parse().unwrap(),
        what,
    }
}

fn enter(remote: &str, lport: u16) -> Record {
    let what = What::TwEnter {
        substate: Substate::TimeWait,
        timeout_ms: 60_000,
    };
    rec(remote, lport, what)
}

/// An exit `lifetime_ns` after the fixtures' enters (all at 1 ns).
fn exit(remote: &str, lport: u16, cause: ExitCause, lifetime_ns: Option<u64>) -> Record {
    let r = rec(remote, lport, What::TwExit { cause, lifetime_ns });
    at(r, 1 + lifetime_ns.unwrap_or(0))
}

/// `r` at time `ts_ns`.
fn at(mut r: Record, ts_ns: u64) -> Record {
    r.ts_ns = ts_ns;
    r
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn row_for_ip(agg: &Aggregate, s: &str) -> Counters {
    let rows = agg.top_by_ip(usize::MAX, Order::TwCreated);
    rows.into_iter().find(|r| r.key == ip(s)).unwrap().counters
}

#[test]
fn enter_exit_pairing() {
    let mut agg = Aggregate::new(16);
    agg.apply(&enter("192.0.2.1:443", 40000));
    agg.apply(&enter("192.0.2.1:443", 40001));
    agg.apply(&exit(
        "192.0.2.1:443",
        40000,
        ExitCause::Expired,
        Some(60_000 * MS),
    ));

    let c = row_for_ip(&agg, "192.0.2.1");
    assert_eq!((c.tw_created, c.live, c.exits_total()), (2, 1, 1));
    assert_eq!(c.exits(ExitCause::Expired), 1);
    assert_eq!(c.lifetime.count, 1);
    assert_eq!(c.lifetime.max_ms(), Some(60_000.0));

    let ports = agg.top_by_port(10, Order::Live);
    assert_eq!(ports.len(), 2);
    assert_eq!((ports[0].key, ports[0].counters.live), (40001, 1));
    assert_eq!((ports[1].key, ports[1].counters.live), (40000, 0));

    let dest = agg.top_by_dest(10, Order::Live);
    assert_eq!(dest.len(), 1);
    assert_eq!(dest[0].key, "192.0.2.1:443".parse::<SocketAddr>().unwrap());
    assert_eq!(dest[0].counters.live, 1);
    assert_eq!(agg.totals().live, 1);
}

#[test]
fn exits_without_seen_entry_do_not_underflow_or_cancel_new_entries() {
    let mut agg = Aggregate::new(16);
    // Sockets already in TIME-WAIT when tracing started: the kernel has no lifetime for them.
    for _ in 0..3 {
        agg.apply(&exit("192.0.2.1:443", 40000, ExitCause::Expired, None));
    }
    agg.apply(&enter("192.0.2.1:443", 40001));
    agg.apply(&exit("192.0.2.1:443", 40002, ExitCause::Unknown, None));

    let c = row_for_ip(&agg, "192.0.2.1");
    assert_eq!(c.live, 1, "unseen exits must not cancel a traced entry");
    assert_eq!(c.exits_unseen_entry, 4);
    assert_eq!(c.exits_total(), 4);
    assert_eq!(c.lifetime.count, 0);
    assert_eq!(c.lifetime.avg_ms(), None);
    assert_eq!(agg.totals().live, 1);
    assert_eq!(agg.totals().exits_unseen_entry, 4);
}

fn present(remote: &str, lport: u16) -> Record {
    present_as(remote, lport, false)
}

fn present_as(remote: &str, lport: u16, server: bool) -> Record {
    let substate = Substate::TimeWait;
    rec(remote, lport, What::TwPresent { substate, server })
}

/// A server's TIME-WAITs read at start-up (their local port listened then) stay out of the
/// destination table, as traced ones do once a SYN showed the port listens: their "remote"
/// is a client's ephemeral port, never a destination; their exits too, before any SYN.
#[test]
fn present_server_timewaits_stay_out_of_destinations() {
    let mut agg = Aggregate::new(16);
    agg.apply(&present_as("192.0.2.1:41000", 443, true));
    agg.apply(&present_as("192.0.2.1:41002", 443, true));
    agg.apply(&present_as("198.51.100.9:443", 40000, false)); // ours, toward a server
    agg.apply(&exit("192.0.2.1:41000", 443, ExitCause::Expired, None));
    let dest = agg.top_by_dest(10, Order::Live);
    assert_eq!(dest.len(), 1, "{dest:?}");
    assert_eq!(
        (dest[0].key.to_string(), dest[0].counters.live),
        ("198.51.100.9:443".to_owned(), 1)
    );
    assert_eq!(agg.totals().live, 2);
}

/// A port that listened at start-up (read with the present TIME-WAITs, whether or not any
/// were on it) keeps that port's TIME-WAITs out of the destination table before any traced
/// SYN arrives there: a connection accepted before start-up closes after it. The listening
/// record itself counts nowhere.
#[test]
fn listeners_read_at_start_keep_server_timewaits_out_of_destinations() {
    let mut agg = Aggregate::new(16);
    agg.apply(&rec("0.0.0.0:0", 8443, What::Listening));
    assert_eq!(agg.totals().live, 0);
    assert!(agg.top_by_port(10, Order::Live).is_empty());
    agg.apply(&enter("192.0.2.1:41000", 8443));
    agg.apply(&enter("198.51.100.9:8443", 40000)); // ours, toward a server
    let dest: Vec<String> = (agg.top_by_dest(10, Order::Live).iter())
        .map(|r| r.key.to_string())
        .collect();
    assert_eq!(dest, ["198.51.100.9:8443"]);
    assert_eq!(agg.totals().live, 2);
}

/// TIME-WAITs read at start-up are live until their exit (entry unseen) arrives; one read
/// twice, or whose traced enter arrives too (it entered between attach and the read), counts
/// once; an unseen exit of a 4-tuple never read still does not take from `live`.
#[test]
fn present_at_start_counts_once_until_its_exit() {
    let mut agg = Aggregate::new(16);
    for port in [40000, 40001, 40002] {
        agg.apply(&present("192.0.2.1:443", port));
    }
    agg.apply(&present("192.0.2.1:443", 40000)); // read twice
    assert_eq!((agg.totals().live, agg.present_at_start()), (3, 3));
    // 40001 entered after attach: its traced enter is the same socket.
    agg.apply(&enter("192.0.2.1:443", 40001));
    let c = row_for_ip(&agg, "192.0.2.1");
    assert_eq!((c.live, c.tw_created), (3, 1));
    // 40000 ends (entry unseen): its count ends. 40009 was never read: no change.
    agg.apply(&exit(
        "192.0.2.1:443",
        40000,
        ExitCause::ReplacedBySyn,
        None,
    ));
    agg.apply(&exit("192.0.2.1:443", 40009, ExitCause::Expired, None));
    // 40001's exit carries its lifetime: a traced socket's ordinary end.
    agg.apply(&exit("192.0.2.1:443", 40001, ExitCause::Expired, Some(MS)));
    let c = row_for_ip(&agg, "192.0.2.1");
    assert_eq!(c.live, 1, "40002 only");
    assert_eq!(agg.totals().live, 1);
    let ports = agg.top_by_port(10, Order::Live);
    assert_eq!((ports[0].key, ports[0].counters.live), (40002, 1));
    // A new TIME-WAIT on 40000 is counted as any other.
    agg.apply(&enter("192.0.2.1:443", 40000));
    assert_eq!((agg.totals().live, agg.totals().tw_created), (2, 2));
    assert_eq!(agg.present_at_start(), 3);
}

/// Only an enter from before the start-up read ended can be a socket the read saw: a later
/// one is a new TIME-WAIT (its 4-tuple's present one ended first, its exit lost here), not
/// looked up.
#[test]
fn only_enters_before_the_read_ended_can_be_present_ones() {
    let mut agg = Aggregate::new(16);
    agg.apply(&at(present("192.0.2.1:443", 40000), 1_000));
    agg.apply(&at(present("192.0.2.1:443", 40001), 1_000));
    // Entered while the read ran: the socket it read.
    agg.apply(&at(enter("192.0.2.1:443", 40000), 900));
    assert_eq!((agg.totals().live, agg.totals().tw_created), (2, 1));
    // Entered after: another TIME-WAIT.
    agg.apply(&at(enter("192.0.2.1:443", 40001), 1_001));
    assert_eq!((agg.totals().live, agg.totals().tw_created), (3, 2));
}

/// A read again after lost events: records from before it began still come after its
/// reset (they were in the ring). A TIME-WAIT replaced by a SYN before the read, whose
/// connection then closed into a new TIME-WAIT on the same 4-tuple, also before the read:
/// the read counts the new one, and neither the old one's exit nor the new one's enter may
/// change that (the exit took it off as if the read had counted the old one: LIVE one short).
#[test]
fn records_from_before_a_read_again_leave_its_count() {
    let mut agg = Aggregate::new(16);
    agg.apply(&at(enter("192.0.2.1:443", 40000), 100));
    // The read again begins at 1_000 and finds the new TIME-WAIT and another.
    agg.apply(&Record::live_reset(1_000));
    agg.apply(&at(present("192.0.2.1:443", 40000), 1_100));
    agg.apply(&at(present("192.0.2.1:443", 40001), 1_100));
    assert_eq!(agg.totals().live, 2);
    // Then the ring's records from before it: the old one's exit, the new one's enter.
    let replaced = exit("192.0.2.1:443", 40000, ExitCause::ReplacedBySyn, Some(500));
    agg.apply(&at(replaced, 600));
    agg.apply(&at(enter("192.0.2.1:443", 40000), 700));
    assert_eq!(agg.totals().live, 2, "the read's count stands");
    // An unseen one's exit from before the read: the same.
    agg.apply(&at(
        exit("192.0.2.1:443", 40001, ExitCause::Expired, None),
        900,
    ));
    assert_eq!(agg.totals().live, 2);
    // Their exits after the read take them off, once.
    for port in [40000, 40001] {
        agg.apply(&at(
            exit("192.0.2.1:443", port, ExitCause::Expired, None),
            2_000,
        ));
    }
    assert_eq!(agg.totals().live, 0);
}

#[test]
fn a_seen_exit_of_an_evicted_row_leaves_the_rows_alone() {
    let mut agg = Aggregate::new(1);
    agg.apply(&enter("192.0.2.1:443", 40000));
    agg.apply(&enter("192.0.2.2:443", 40000)); // evicts 192.0.2.1
    agg.apply(&exit("192.0.2.1:443", 40000, ExitCause::Expired, Some(MS)));
    // Its row counted the enter and was evicted: no row of exits without enters.
    let ips: Vec<_> = (agg.top_by_ip(10, Order::TwCreated).iter())
        .map(|r| r.key)
        .collect();
    assert_eq!(ips, [ip("192.0.2.2")]);
    assert_eq!(agg.evictions().remote_ip, 1);
    // The totals saw both enters and the exit.
    let t = agg.totals();
    assert_eq!((t.tw_created, t.live, t.exits_total()), (2, 1, 1));
}

/// A row evicted and made again by a new enter counts only what follows: an exit of a
/// TIME-WAIT that began before (its earlier life) neither ends one of its LIVE nor counts as
/// its exit, so it never shows TIME-WAITs ending that it did not see begin.
#[test]
fn a_row_made_again_counts_only_its_own_time_waits() {
    let mut agg = Aggregate::new(1);
    agg.apply(&at(enter("192.0.2.1:443", 40000), 10 * MS));
    agg.apply(&at(enter("192.0.2.2:443", 40000), 20 * MS)); // evicts .1
    agg.apply(&at(enter("192.0.2.1:443", 40001), 30 * MS)); // .1 again, evicts .2
    let earlier = exit(
        "192.0.2.1:443",
        40000,
        ExitCause::Expired,
        Some(60_000 * MS),
    );
    agg.apply(&at(earlier, 60_010 * MS));
    let c = row_for_ip(&agg, "192.0.2.1");
    assert_eq!((c.tw_created, c.live, c.exits_total()), (1, 1, 0));
    let own = exit(
        "192.0.2.1:443",
        40001,
        ExitCause::Expired,
        Some(60_000 * MS),
    );
    agg.apply(&at(own, 60_030 * MS));
    let c = row_for_ip(&agg, "192.0.2.1");
    assert_eq!(
        (c.tw_created, c.live, c.exits(ExitCause::Expired)),
        (1, 0, 1)
    );
    // An exit whose entry was not seen cannot be placed: the row counts it, as before.
    agg.apply(&at(
        exit("192.0.2.1:443", 40002, ExitCause::Unknown, None),
        70_000 * MS,
    ));
    assert_eq!(row_for_ip(&agg, "192.0.2.1").exits_total(), 2);
    let t = agg.totals();
    assert_eq!((t.tw_created, t.live, t.exits_total()), (3, 1, 3));
}

/// Two CPUs' records reach the ring in the order they reserved room: an enter timed just
/// before the record that made its row is that row's, and so is its exit.
#[test]
fn an_enter_timed_before_its_rows_first_record_is_the_rows() {
    let mut agg = Aggregate::new(16);
    agg.apply(&at(enter("192.0.2.1:443", 40001), 20 * MS));
    agg.apply(&at(enter("192.0.2.1:443", 40000), 19 * MS));
    let first = exit(
        "192.0.2.1:443",
        40000,
        ExitCause::Expired,
        Some(60_000 * MS),
    );
    agg.apply(&at(first, 60_019 * MS));
    let c = row_for_ip(&agg, "192.0.2.1");
    assert_eq!((c.tw_created, c.live, c.exits_total()), (2, 1, 1));
}

#[test]
fn eviction_counts_with_tiny_capacity() {
    let mut agg = Aggregate::new(2);
    for i in 1..=5u8 {
        agg.apply(&enter(&format!("192.0.2.{i}:80"), 1000 + u16::from(i)));
    }
    // Updating an existing key does not evict.
    agg.apply(&enter("192.0.2.5:80", 1005));
    let ev = agg.evictions();
    assert_eq!(
        ev,
        Evictions {
            remote_ip: 3,
            local_port: 3,
            destination: 3
        }
    );
    assert_eq!(ev.total(), 9);
    let keys: Vec<_> = agg
        .top_by_ip(10, Order::TwCreated)
        .iter()
        .map(|r| r.key)
        .collect();
    assert_eq!(keys, [ip("192.0.2.5"), ip("192.0.2.4")]);
}

#[test]
fn eviction_is_least_recently_updated() {
    let mut agg = Aggregate::new(2);
    agg.apply(&enter("192.0.2.1:80", 1));
    agg.apply(&enter("192.0.2.2:80", 2));
    agg.apply(&enter("192.0.2.1:80", 1)); // .1 is now the most recently updated
    agg.apply(&enter("192.0.2.3:80", 3)); // so .2 goes
    let mut keys: Vec<_> = agg
        .top_by_ip(10, Order::Live)
        .iter()
        .map(|r| r.key)
        .collect();
    keys.sort();
    assert_eq!(keys, [ip("192.0.2.1"), ip("192.0.2.3")]);
}

/// Consecutive records of one key take the shortcut past the hash lookup (`newest_or_get`):
/// each still counts, and the key stays the most recent, as a lookup would leave it.
#[test]
fn a_run_of_one_key_counts_each_record_and_keeps_it_recent() {
    let mut agg = Aggregate::new(2);
    agg.apply(&enter("192.0.2.2:80", 2));
    for _ in 0..3 {
        agg.apply(&enter("192.0.2.1:80", 1));
    }
    agg.apply(&enter("192.0.2.2:80", 2)); // .2 most recent again, so .1 goes next
    agg.apply(&enter("192.0.2.2:80", 2));
    agg.apply(&enter("192.0.2.3:80", 3));
    let rows: Vec<_> = agg
        .top_by_ip(10, Order::Live)
        .iter()
        .map(|r| (r.key, r.counters.live))
        .collect();
    assert_eq!(rows, [(ip("192.0.2.2"), 3), (ip("192.0.2.3"), 1)]);
    let ports: Vec<_> = agg
        .top_by_port(10, Order::Live)
        .iter()
        .map(|r| (r.key, r.counters.live))
        .collect();
    assert_eq!(ports, [(2, 3), (3, 1)]);
}

#[test]
fn zero_capacity_is_one() {
    let mut agg = Aggregate::new(0);
    assert_eq!(agg.capacity(), 1);
    agg.apply(&enter("192.0.2.1:80", 1));
    assert_eq!(agg.top_by_ip(10, Order::Live).len(), 1);
}

#[test]
fn cause_accounting() {
    let mut agg = Aggregate::new(16);
    for (n, cause) in ExitCause::ALL.iter().enumerate() {
        for _ in 0..=n {
            agg.apply(&enter("192.0.2.9:443", 5000));
            agg.apply(&exit("192.0.2.9:443", 5000, *cause, Some(MS)));
        }
    }
    let c = row_for_ip(&agg, "192.0.2.9");
    for (n, cause) in ExitCause::ALL.iter().enumerate() {
        assert_eq!(c.exits(*cause), n as u64 + 1, "{cause:?}");
    }
    assert_eq!(c.exits_total(), 21);
    assert_eq!((c.tw_created, c.live), (21, 0));
    // The same counts, but for when the row was made (0 for the totals).
    assert_eq!(agg.totals(), Counters { since_ns: 0, ..c });
}

#[test]
fn overflow_eaddrnotavail_and_lost() {
    let mut agg = Aggregate::new(16);
    agg.apply(&rec("192.0.2.1:80", 40000, What::TwOverflow));
    agg.apply(&enter("198.51.100.7:5432", 41000));
    for _ in 0..2 {
        agg.apply(&rec(
            "198.51.100.7:5432",
            0,
            What::ConnectAddrNotAvail { pid: 42 },
        ));
    }
    let lost = |program, count| {
        let reason = crate::event::LossReason::RingFull;
        rec(
            "0.0.0.0:0",
            0,
            What::Lost {
                program,
                count,
                reason,
            },
        )
    };
    agg.apply(&lost("tw_exit", 3));
    agg.apply(&lost("tw_enter", 1));
    agg.apply(&lost("tw_exit", 4));

    let t = agg.totals();
    assert_eq!((t.overflow, t.eaddrnotavail, t.tw_created), (1, 2, 1));
    assert_eq!(row_for_ip(&agg, "192.0.2.1").overflow, 1);
    assert_eq!(row_for_ip(&agg, "198.51.100.7").eaddrnotavail, 2);

    let dest = agg.top_by_dest(1, Order::EaddrNotAvail);
    assert_eq!(
        dest[0].key,
        "198.51.100.7:5432".parse::<SocketAddr>().unwrap()
    );
    assert_eq!(
        (dest[0].counters.eaddrnotavail, dest[0].counters.live),
        (2, 1)
    );

    // No port table entry for the unbound port 0, none for the lost records either.
    let ports: Vec<_> = agg
        .top_by_port(10, Order::TwCreated)
        .iter()
        .map(|r| r.key)
        .collect();
    assert_eq!(ports, [41000, 40000]);
    assert!(
        agg.top_by_ip(10, Order::Live)
            .iter()
            .all(|r| !r.key.is_unspecified())
    );

    assert_eq!(
        agg.lost(),
        [
            LostRow {
                program: "tw_enter",
                count: 1
            },
            LostRow {
                program: "tw_exit",
                count: 7
            }
        ]
    );
    assert_eq!(agg.lost_total(), 8);
}

#[test]
fn totals_stay_exact_after_eviction() {
    let mut agg = Aggregate::new(2);
    for i in 0..100u16 {
        let remote = format!("192.0.2.{}:80", i % 50);
        agg.apply(&enter(&remote, 30000 + i));
    }
    for i in 0..40u16 {
        let remote = format!("192.0.2.{}:80", i % 50);
        agg.apply(&exit(&remote, 30000 + i, ExitCause::Expired, Some(2 * MS)));
    }
    agg.apply(&rec("192.0.2.1:80", 1, What::TwOverflow));
    let t = agg.totals();
    assert_eq!((t.tw_created, t.live, t.exits_total()), (100, 60, 40));
    assert_eq!(t.overflow, 1);
    assert_eq!(t.lifetime.count, 40);
    assert_eq!(t.lifetime.sum_ms(), 80.0);
    // 50 addresses in turn through 2 rows: every update past the first two misses and evicts
    // the least recent: 98 enters; the 40 exits are of evicted rows' TIME-WAITs (the rows
    // hold .48 and .49, each since its second enter), which make no row; then the overflow
    // of .1 evicts .48.
    assert_eq!(agg.evictions().remote_ip, 98 + 1);
    let mut kept: Vec<(String, u64, u64)> = (agg.top_by_ip(10, Order::TwCreated).iter())
        .map(|r| (r.key.to_string(), r.counters.tw_created, r.counters.live))
        .collect();
    kept.sort();
    assert_eq!(
        kept,
        [
            ("192.0.2.1".to_owned(), 0, 0),
            ("192.0.2.49".to_owned(), 1, 1)
        ]
    );
}

#[test]
fn ordering_by_each_key_with_stable_ties() {
    let mut agg = Aggregate::new(16);
    // .1: 3 created, 3 live. .2: 2 created, 0 live, 2 reused. .3: 1 created, 1 live, 4 overflow.
    for _ in 0..3 {
        agg.apply(&enter("192.0.2.1:80", 1));
    }
    for _ in 0..2 {
        agg.apply(&enter("192.0.2.2:80", 2));
        agg.apply(&exit("192.0.2.2:80", 2, ExitCause::Reused, Some(MS)));
    }
    agg.apply(&enter("192.0.2.3:80", 3));
    for _ in 0..4 {
        agg.apply(&rec("192.0.2.3:80", 3, What::TwOverflow));
    }
    let order_of =
        |o: Order| -> Vec<IpAddr> { agg.top_by_ip(10, o).iter().map(|r| r.key).collect() };
    let (a, b, c) = (ip("192.0.2.1"), ip("192.0.2.2"), ip("192.0.2.3"));
    assert_eq!(order_of(Order::TwCreated), [a, b, c]);
    assert_eq!(order_of(Order::Live), [a, c, b]);
    // Ties by live, then created, then key: the busy rows stay on screen.
    assert_eq!(order_of(Order::Exits(ExitCause::Reused)), [b, a, c]); // a, c tie at 0: a lives
    assert_eq!(order_of(Order::Overflow), [c, a, b]);
    assert_eq!(order_of(Order::EaddrNotAvail), [a, c, b]); // all 0: by live

    // Top-N selection picks the same rows as a full sort would.
    let top2: Vec<_> = agg
        .top_by_ip(2, Order::Live)
        .iter()
        .map(|r| r.key)
        .collect();
    assert_eq!(top2, [a, c]);
    assert!(agg.top_by_ip(0, Order::Live).is_empty());
}

#[test]
fn top_n_equals_the_head_of_a_full_sort() {
    // Many keys, many ties: every n must give exactly the first n rows of a full sort.
    let mut agg = Aggregate::new(512);
    for i in 0u32..300 {
        let remote = format!("198.51.100.{}:{}", i % 250, 1000 + i);
        for _ in 0..(i * 7 % 5) {
            agg.apply(&enter(&remote, 1));
        }
    }
    let all = agg.top_by_dest(usize::MAX, Order::TwCreated);
    let mut sorted = all.clone();
    sorted.sort_by(|a, b| {
        b.counters
            .tw_created
            .cmp(&a.counters.tw_created)
            .then(a.key.cmp(&b.key))
    });
    assert_eq!(all, sorted);
    for n in [0, 1, 2, 59, 60, 61, 240, 299, 1000] {
        let top = agg.top_by_dest(n, Order::TwCreated);
        assert_eq!(top[..], sorted[..n.min(sorted.len())], "n = {n}");
    }
}

#[test]
fn rows_serialize_flat() {
    let mut agg = Aggregate::new(4);
    agg.apply(&enter("[2001:db8::1]:443", 40000));
    agg.apply(&exit(
        "[2001:db8::1]:443",
        40000,
        ExitCause::KilledByRst,
        Some(1_500_000),
    ));
    let v = serde_json::to_value(agg.top_by_ip(1, Order::TwCreated)).unwrap();
    let row = &v[0];
    assert_eq!(row["remote_ip"], "2001:db8::1");
    assert_eq!(row["exits_killed_by_rst"], 1);
    assert_eq!(row["lifetime_avg_ms"], 1.5);
    let v = serde_json::to_value(agg.top_by_dest(1, Order::TwCreated)).unwrap();
    assert_eq!(v[0]["destination"], "[2001:db8::1]:443");
    let v = serde_json::to_value(agg.top_by_port(1, Order::TwCreated)).unwrap();
    assert_eq!(v[0]["local_port"], 40000);
    let v = serde_json::to_value(agg.evictions()).unwrap();
    assert_eq!(v["remote_ip"], 0);
}

#[test]
fn server_timewaits_stay_out_of_the_destination_table() {
    let mut agg = Aggregate::new(64);
    let at = |ms: u64, mut r: Record| {
        r.ts_ns = ms * MS;
        r
    };
    // Before any SYN is seen at port 80, a TIME-WAIT there counts toward its peer.
    agg.apply(&at(10, enter("192.0.2.7:40001", 80)));
    agg.apply(&at(15, enter("192.0.2.7:40005", 80)));
    agg.apply(&at(
        20,
        rec("192.0.2.7:40002", 80, What::Syn { tsval: Some(1) }),
    ));
    // Now port 80 is known to listen: its TIME-WAITs are a server's.
    agg.apply(&at(30, enter("192.0.2.7:40003", 80)));
    agg.apply(&at(
        31,
        exit("192.0.2.7:40003", 80, ExitCause::Expired, Some(MS)),
    ));
    // One that began before: its exit is judged by its beginning too, as its enter was.
    let lifetime = Some(25 * MS);
    agg.apply(&at(
        40,
        exit("192.0.2.7:40005", 80, ExitCause::Expired, lifetime),
    ));
    // A client TIME-WAIT (ephemeral local port) toward a service counts.
    agg.apply(&at(50, enter("198.51.100.1:443", 40000)));
    let dests: Vec<(SocketAddr, u64, u64)> = agg
        .top_by_dest(10, Order::TwCreated)
        .iter()
        .map(|r| (r.key, r.counters.live, r.counters.exits_total()))
        .collect();
    let addr = |s: &str| s.parse::<SocketAddr>().unwrap();
    assert_eq!(
        dests,
        [
            (addr("192.0.2.7:40001"), 1, 0),
            (addr("198.51.100.1:443"), 1, 0),
            (addr("192.0.2.7:40005"), 0, 1),
        ]
    );
    // Every table but the destinations still sees all of them.
    assert_eq!(agg.totals().tw_created, 4);
    assert_eq!(row_for_ip(&agg, "192.0.2.7").tw_created, 3);
    // A SYN at the same port in another namespace says nothing about this one.
    let mut other = rec("192.0.2.9:1", 443, What::Syn { tsval: None });
    other.netns += 1;
    agg.apply(&at(60, other));
    agg.apply(&at(70, enter("198.51.100.1:443", 40001)));
    assert_eq!(agg.top_by_dest(10, Order::TwCreated).len(), 3);
}

/// `twtrace events` keeps the PAWS rows alone: the same rows as the whole aggregate's, and no
/// TIME-WAIT table work.
#[test]
fn paws_only_keeps_the_paws_rows_alone() {
    let records = [
        enter("192.0.2.7:40001", 80),
        rec("192.0.2.7:40002", 80, What::Syn { tsval: Some(5) }),
        exit("192.0.2.7:40001", 80, ExitCause::ReplacedBySyn, Some(MS)),
        rec("192.0.2.8:40003", 80, What::Syn { tsval: None }),
    ];
    let (mut whole, mut paws_only) = (Aggregate::new(64), Aggregate::new(64));
    for r in &records {
        whole.apply(r);
        paws_only.apply_paws_only(r);
    }
    assert_eq!(paws_only.totals().tw_created, 0);
    assert!(paws_only.top_by_ip(10, Order::TwCreated).is_empty());
    let rows = |agg: &mut Aggregate| {
        let rows = agg.paws.rows(10 * MS);
        rows.iter()
            .map(|r| (r.ip, r.syns, r.syns_without_ts))
            .collect::<Vec<_>>()
    };
    let got = rows(&mut paws_only);
    assert_eq!(got, rows(&mut whole));
    assert_eq!(got.len(), 2);
}

mod overdue;
mod reread;

/// A read counts what was there when it began: losses found before then are settled by it,
/// those found while it ran are not, and keep LIVE in doubt until the next one.
#[test]
fn losses_found_while_a_read_ran_outlive_it() {
    use crate::event::LossReason::{RingFull, SkippedRuns};
    let mut agg = Aggregate::new(16);
    agg.apply(&Record::lost(5 * MS, "tw_exit", 3, RingFull));
    agg.apply(&Record::lost(
        6 * MS,
        "tw_exit_timer_cancel",
        2,
        SkippedRuns,
    ));
    assert_eq!(agg.lost_since_read(), (3, 2));
    agg.apply(&Record::lost(12 * MS, "tw_enter", 4, RingFull));
    // The read began at 10 ms and ends now.
    agg.apply(&Record::live_reset(10 * MS));
    assert_eq!(agg.lost_since_read(), (4, 0));
    agg.apply(&Record::live_reset(20 * MS));
    assert_eq!(agg.lost_since_read(), (0, 0));
}
