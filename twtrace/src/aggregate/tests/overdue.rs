//! LIVE's own check (`Aggregate::overdue`): TIME-WAITs it counts past their timeout with no exit
//! seen, however many others enter and end meanwhile, and never one that is not.

use super::*;

const SEC: u64 = 1_000_000_000;

fn enter_at(port: u16, ts_ns: u64, substate: Substate, timeout_ms: u64) -> Record {
    let what = What::TwEnter {
        substate,
        timeout_ms,
    };
    at(rec("192.0.2.1:443", port, what), ts_ns)
}

/// A segment with `tcp_flags` refused by PAWS at the TIME-WAIT on `port`, at `ts_ns`.
fn reject_at(port: u16, ts_ns: u64, tcp_flags: u8) -> Record {
    let what = What::PawsReject {
        path: PawsPath::Timewait,
        tsval: Some(1),
        ts_recent: Some(2),
        tcp_flags,
        old_ack: false,
    };
    at(rec("192.0.2.1:443", port, what), ts_ns)
}

fn exit_at(port: u16, ts_ns: u64, lifetime_ns: Option<u64>) -> Record {
    let what = What::TwExit {
        cause: ExitCause::Expired,
        lifetime_ns,
    };
    at(rec("192.0.2.1:443", port, what), ts_ns)
}

/// A busy host: 50 TIME-WAITs a second, each ending 60 to 64 s later, one exit never
/// reported. Past its deadline exactly that one is overdue, while thousands are alive.
#[test]
fn one_unreported_exit_among_thousands_is_overdue_once_its_timer_is_past() {
    let mut agg = Aggregate::new(64);
    let mut records = Vec::new();
    let missing = (10 * SEC, 500);
    for i in 0..50 * 200u64 {
        let enter = i * SEC / 50;
        let port = (i % 60_000) as u16;
        let life = 60 * SEC + (i % 4) * SEC;
        records.push(enter_at(port, enter, Substate::TimeWait, 60_000));
        if (enter, port) != missing {
            records.push(exit_at(port, enter + life, Some(life)));
        }
    }
    records.sort_by_key(|r| r.ts_ns);
    // Its timer, a quarter of it and 5 s (the timer may run late, see `slack_ns`) past its
    // enter: nothing before; overdue once that is past for every enter of its second.
    let deadline = missing.0 + 60 * SEC + 60 * SEC / 4 + 5 * SEC;
    let (mut checked, mut most_live) = (0, 0);
    for r in &records {
        agg.apply(r);
        let now = r.ts_ns;
        if now % (5 * SEC) == 0 && !(deadline..deadline + SEC).contains(&now) {
            let want = u64::from(now > deadline);
            assert_eq!(agg.overdue(now), want, "at {} s", now / SEC);
            checked += 1;
            most_live = most_live.max(agg.totals().live);
        }
    }
    assert!(checked > 30);
    assert!(most_live > 2_000, "{most_live}");
    assert_eq!(agg.totals().live, 1, "the unreported one");
    assert_eq!(agg.overdue(u64::MAX), 1);
    // A read makes LIVE exact: nothing overdue from before it.
    let end = records.last().unwrap().ts_ns;
    agg.apply(&at(Record::live_reset(end), end));
    assert_eq!(agg.overdue(u64::MAX), 0);
}

/// A FIN_WAIT2 stand-in becomes a TIME-WAIT for a full timer when the peer's FIN comes: not
/// overdue until both timers are past.
#[test]
fn a_fin_wait2_stand_in_has_a_time_wait_timer_more() {
    let mut agg = Aggregate::new(16);
    agg.apply(&enter_at(1, 0, Substate::FinWait2, 30_000));
    assert_eq!(agg.overdue(40 * SEC), 0);
    assert_eq!(agg.overdue(110 * SEC), 0, "30 s, then 60 s as a TIME-WAIT");
    assert_eq!(agg.overdue(120 * SEC), 1);
}

/// A longer timeout seen in an enter makes the timer of TIME-WAITs found by a read (unknown)
/// that long too.
#[test]
fn a_time_wait_found_by_a_read_gets_the_longest_timer_seen() {
    let mut agg = Aggregate::new(16);
    agg.apply(&at(present("192.0.2.1:443", 1), 10 * SEC));
    assert_eq!(agg.overdue(85 * SEC), 0);
    assert_eq!(
        agg.overdue(91 * SEC),
        1,
        "found at 10 s, 60 s and the lateness past"
    );
    agg.apply(&at(Record::live_reset(100 * SEC), 100 * SEC));
    agg.apply(&enter_at(2, 100 * SEC, Substate::TimeWait, 120_000));
    agg.apply(&exit_at(2, 101 * SEC, Some(SEC)));
    agg.apply(&at(present("192.0.2.1:443", 3), 102 * SEC));
    assert_eq!(agg.overdue(250 * SEC), 0, "120 s now");
    assert_eq!(agg.overdue(260 * SEC), 1);
    // Its exit (entry unseen) ends it.
    agg.apply(&exit_at(3, 261 * SEC, None));
    assert_eq!(agg.overdue(u64::MAX), 0);
    assert_eq!(agg.totals().live, 0);
}

/// An exit whose enter a read counted (it entered while the read ran) has its start in another
/// second than the read's: it takes the read's count off instead, so the two still balance.
#[test]
fn an_exit_of_a_time_wait_counted_by_a_read_balances() {
    let mut agg = Aggregate::new(16);
    agg.apply(&at(Record::live_reset(10 * SEC), 10 * SEC));
    let enter = enter_at(7, 10 * SEC + 5, Substate::TimeWait, 60_000);
    let found = at(present("192.0.2.1:443", 7), 11 * SEC);
    agg.apply(&found);
    agg.apply(&enter);
    assert_eq!(agg.totals().live, 1);
    agg.apply(&exit_at(7, 70 * SEC, Some(60 * SEC - 5)));
    assert_eq!(agg.totals().live, 0);
    assert_eq!(agg.overdue(u64::MAX), 0);
}

/// With one TIME-WAIT overdue and no read to clear it, the per-second record stays bounded
/// over a long run, and the overdue one is still told.
#[test]
fn the_record_stays_bounded_behind_an_overdue_one() {
    let mut agg = Aggregate::new(16);
    agg.apply(&enter_at(1, 0, Substate::TimeWait, 60_000));
    for s in 1..5_000u64 {
        agg.apply(&enter_at(2, s * SEC, Substate::TimeWait, 60_000));
        agg.apply(&exit_at(2, s * SEC + 10, Some(10)));
    }
    assert!(agg.deadlines.len() <= 512, "{}", agg.deadlines.len());
    assert_eq!(agg.overdue(5_000 * SEC), 1);
}

/// A SYN refused by PAWS at a TIME-WAIT re-arms its timer (behind a NAT, again and again): it
/// is not overdue until a full timer after the refusal. A reset refused by PAWS re-arms nothing.
#[test]
fn a_paws_reject_at_a_time_wait_re_arms_its_timer() {
    let mut agg = Aggregate::new(16);
    agg.apply(&enter_at(1, 0, Substate::TimeWait, 60_000));
    agg.apply(&reject_at(1, 50 * SEC, th::SYN));
    assert_eq!(agg.overdue(100 * SEC), 0, "re-armed at 50 s");
    assert_eq!(agg.overdue(131 * SEC), 1);
    agg.apply(&reject_at(1, 140 * SEC, th::RST | th::ACK));
    assert_eq!(agg.overdue(141 * SEC), 1, "a reset re-arms nothing");
    assert_eq!(agg.totals().live, 1);
}

/// A read stamps each namespace's TIME-WAITs with when its own read ended, so one read can
/// spread them over seconds. Their exits (entry unseen) take them off from the read's first
/// second on: none is left behind to be told overdue while the new TIME-WAITs churn on.
#[test]
fn time_waits_found_across_seconds_end_without_a_false_overdue() {
    let mut agg = Aggregate::new(64);
    agg.apply(&at(
        Record::live_reset(10 * SEC + SEC / 2),
        10 * SEC + SEC / 2,
    ));
    for port in 1..=100 {
        let stamp = if port <= 50 {
            10 * SEC + 900
        } else {
            11 * SEC + 100
        };
        agg.apply(&at(present("192.0.2.1:443", port), stamp));
    }
    // New TIME-WAITs every second, each ending 60 s later; the found ones end by 70 s.
    let mut records = Vec::new();
    for s in 12..300u64 {
        let port = 1_000 + s as u16;
        records.push(enter_at(port, s * SEC, Substate::TimeWait, 60_000));
        records.push(exit_at(port, (s + 60) * SEC, Some(60 * SEC)));
    }
    for port in 1..=100u16 {
        records.push(exit_at(port, (20 + u64::from(port) / 2) * SEC, None));
    }
    records.sort_by_key(|r| r.ts_ns);
    for r in &records {
        agg.apply(r);
        assert_eq!(agg.overdue(r.ts_ns), 0, "at {} s", r.ts_ns / SEC);
    }
    assert_eq!(agg.totals().live, 0);
}

/// A timeout read as 0 or as garbage (a failed read of the timer) is taken as a TIME-WAIT's
/// 60 s, or at most an hour: no TIME-WAIT is told overdue after 5 s, and no deadline wraps.
#[test]
fn a_timeout_read_wrong_neither_rushes_nor_wraps() {
    let mut agg = Aggregate::new(16);
    agg.apply(&enter_at(1, 10 * SEC, Substate::TimeWait, 0));
    assert_eq!(agg.overdue(20 * SEC), 0);
    assert_eq!(agg.overdue(91 * SEC), 1);
    agg.apply(&enter_at(2, 10 * SEC, Substate::TimeWait, u64::MAX));
    agg.apply(&enter_at(3, 10 * SEC, Substate::FinWait2, u64::MAX));
    agg.apply(&at(present("192.0.2.1:443", 4), u64::MAX - SEC));
    assert_eq!(agg.overdue(91 * SEC), 0, "two hours or more for all");
    assert_eq!(
        agg.overdue(u64::MAX),
        3,
        "the last one's deadline saturates"
    );
}

/// A PAWS reject at a FIN_WAIT2 stand-in re-arms nothing: the count moved for it keeps the
/// later deadline it had.
#[test]
fn a_re_arm_never_brings_a_deadline_forward() {
    let mut agg = Aggregate::new(16);
    agg.apply(&enter_at(1, 0, Substate::FinWait2, 60_000));
    agg.apply(&reject_at(1, 10 * SEC, th::SYN));
    assert_eq!(
        agg.overdue(100 * SEC),
        0,
        "due at 120 s + 30 s, not at 10 s + 80 s"
    );
    assert_eq!(agg.overdue(156 * SEC), 1);
}

/// Rejects again and again at one TIME-WAIT (a NAT's clients retrying) move its own count
/// each time after the first: they do not keep pushing back another TIME-WAIT whose exit was
/// missed (audit: a storm on 4 ports hid 8 missed exits for as long as it lasted).
#[test]
fn rejects_at_one_time_wait_do_not_hide_another_ones_missed_exit() {
    let mut agg = Aggregate::new(16);
    // Port 1's exit will be missed; port 2 is rejected at every 10 s.
    agg.apply(&enter_at(1, 0, Substate::TimeWait, 60_000));
    agg.apply(&enter_at(2, SEC, Substate::TimeWait, 60_000));
    for k in 1..=20u64 {
        agg.apply(&reject_at(2, k * 10 * SEC, th::SYN));
        let now = k * 10 * SEC + 1;
        let want = u64::from(now > 81 * SEC);
        assert_eq!(agg.overdue(now), want, "at {} s", now / SEC);
    }
    // Port 2 ends at last: its count goes, the missed one stays told.
    agg.apply(&exit_at(2, 250 * SEC, Some(249 * SEC)));
    assert_eq!(agg.overdue(251 * SEC), 1);
    assert_eq!(agg.totals().live, 1);
}

/// A read is one after lost events only for losses found before it began: one found while it
/// ran (loss records are not held back) starts the next read, and is that one's cause.
#[test]
fn a_read_is_after_losses_only_for_losses_before_it() {
    let mut agg = Aggregate::new(16);
    let lost = |ts_ns| {
        let what = What::Lost {
            program: "tw_exit",
            count: 1,
            reason: LossReason::RingFull,
        };
        at(rec("0.0.0.0:0", 0, what), ts_ns)
    };
    agg.apply(&lost(150));
    agg.apply(&at(Record::live_reset(100), 100));
    assert_eq!(agg.reread_causes(), (0, false, 0), "for timers");
    agg.apply(&at(Record::live_reset(200), 200));
    assert_eq!(agg.reread_causes(), (1, true, 0), "after the loss");
}
