//! LIVE after lost events: read again from the kernel's own sockets.

use super::*;

/// The ring the tracer gets here (the smallest it takes), and the size of one record in it:
/// the event and the ring's 8-byte header.
const RING_KIB: usize = 64;
const RECORD_BYTES: usize = std::mem::size_of::<twtrace_common::Event>() + 8;

/// Events lost, for certain and in bulk: the live table's tracer is stopped (SIGSTOP) while
/// its namespace makes more TIME-WAITs than its ring holds records, and then the TIME-WAITs it
/// saw enter are replaced by new connections from the same ports (their exits and the new
/// enters lost too: the ring is full). Without a read after the losses LIVE would be wrong
/// for good; with it (`--reread`), LIVE in the final table equals the namespace's TIME-WAIT
/// sockets, exactly, and the table says that it read them again.
#[test]
fn live_is_exact_again_after_lost_events() -> Result<()> {
    rerun_if_skipped(|| {
        const SEEN: usize = 40;
        // Each connection leaves at least its TIME-WAIT's enter in the ring: more than it holds.
        let unseen = RING_KIB * 1024 / RECORD_BYTES + 100;
        let pair = NetnsPair::new("rrd")?;
        let (srv, server) = serve(&pair, Family::V4)?;
        let ns = pair.server_inode().to_string();
        let ring = RING_KIB.to_string();
        let args = [
            "--netns",
            &ns,
            "--interval",
            "1",
            "--ring-kib",
            &ring,
            "--reread",
            "1",
        ];
        let mut table = Tracer::spawn_default(&args)?;
        table.wait_ready(READY)?;
        // Ports of the test's choosing, each its own: an ephemeral port the client reused would
        // have its SYN replace the server's TIME-WAIT of it (one fewer than connections).
        let ports: Vec<u16> = (0..SEEN as u16).map(|i| 43_000 + i).collect();
        let more: Vec<u16> = (0..unseen as u16).map(|i| 44_000 + i).collect();
        connect_all(&pair, srv, SEEN, CloseFirst::Server, Some(&ports))?;
        // Seen: their enters read (the ring empty again) before the tracer stops.
        table.wait_stdout_text(&format!("tw_created {SEEN} "), Duration::from_secs(30))?;
        {
            let _stopped = Stopped::new(table.pid())?;
            connect_all(&pair, srv, unseen, CloseFirst::Server, Some(&more))?;
            connect_all(&pair, srv, SEEN, CloseFirst::Server, Some(&ports))?;
        }
        let live_now = support::proc::timewait_count(pair.server_ns())?;
        ensure!(
            live_now == (SEEN + unseen) as u64,
            "sanity: {} server TIME-WAITs, not {live_now}",
            SEEN + unseen
        );
        // The read follows the loss report (read once a second); a table after it has begun
        // says so. The final table comes after the read has ended.
        let reread = "live re-read from the kernel's sockets";
        let first = table.wait_stdout_text(reread, Duration::from_secs(60))?;
        let lines = table.stop_text()?;
        drop(server);
        let last = Totals::last(&lines)?;
        // Every connection made while the tracer was stopped tried to store its enter at
        // least, and the ring, empty then, held no more records than fit.
        let at_least = SEEN + unseen - RING_KIB * 1024 / RECORD_BYTES;
        let lost = last.field("lost")?;
        assert!(lost >= at_least as u64, "lost {lost} < {at_least}: {last}");
        assert_eq!(last.field("live")?, live_now, "{last}; {first}");
        Ok(())
    })
}

/// A process stopped (SIGSTOP) until this is dropped (SIGCONT), even when the test fails.
struct Stopped(libc::pid_t);

impl Stopped {
    fn new(pid: u32) -> Result<Self> {
        let pid = libc::pid_t::try_from(pid)?;
        // SAFETY: a plain signal to our own child.
        ensure!(unsafe { libc::kill(pid, libc::SIGSTOP) } == 0, "SIGSTOP");
        Ok(Self(pid))
    }
}

impl Drop for Stopped {
    fn drop(&mut self) {
        // SAFETY: as in `new`.
        unsafe { libc::kill(self.0, libc::SIGCONT) };
    }
}

/// LIVE checks itself against the TIME-WAITs' timers, with nothing lost: one still counted past
/// its timeout (and the timer's lateness) with no exit seen makes the table say LIVE may be
/// that many high, and read the kernel's sockets again. Made for real by a bare ACK, which
/// re-arms a TIME-WAIT's timer with no program seeing it (twtrace cannot tell that from an
/// exit it missed): the read finds the TIME-WAIT still there and LIVE equals the kernel's
/// sockets. A SYN refused by PAWS re-arms its TIME-WAIT's timer too, which twtrace sees (on a
/// route that traces PAWS rejects): that one is never said to be overdue. Both end later, and
/// LIVE goes to 0 in either table.
/// Runs beside the other suites in the VM (`BESIDE` in xtask/src/vm/test.rs): keep its name.
#[test]
fn a_time_wait_past_its_timer_is_read_again() -> Result<()> {
    rerun_if_skipped(|| {
        use support::raw::{ACK, RstBlock, Segment, ServerTimeWait, send_segment, tw_paws_delta};
        let pair = NetnsPair::new("ovd")?;
        let srv = pair.server_ns();
        let (_, server) = serve(&pair, Family::V4)?;
        let ns = pair.server_inode().to_string();
        let table = |reread: &str| -> Result<Tracer> {
            let args = ["--netns", &ns, "--interval", "1", "--reread", reread];
            let mut t = Tracer::spawn_default(&args)?;
            t.wait_ready(READY)?;
            Ok(t)
        };
        // One table never reads again (it keeps saying what it doubts), one reads at once.
        let (mut doubts, mut reads) = (table("0")?, table("1")?);
        let before = netstat(srv)?;
        // The client kernel would answer the server's ACKs with resets, which kill TIME-WAITs.
        let _block = RstBlock::install(pair.client_ns())?;
        // TIME_WAIT from the start: the server closes its socket right after its FIN, and with
        // a FIN timeout of 60 s or less the kernel makes an orphan whose FIN was ACKed a
        // FIN_WAIT2 stand-in at once (the client's FIN then turns it into a TIME-WAIT, a re-arm
        // no program sees), whose deadline is a full TIME-WAIT later (timing: VM 7.3 did so,
        // the host rarely). Above 60 s the orphan stays a full socket until that FIN.
        sysctl(srv, "net.ipv4.tcp_fin_timeout", "90")?;
        let acked = ServerTimeWait::create(&pair, &server, 41_001)?;
        let refused = ServerTimeWait::create(&pair, &server, 41_002)?;
        let made = Instant::now();
        // Half-way through their timers, each gets a segment that re-arms it for 60 s more.
        thread::sleep(Duration::from_secs(35).saturating_sub(made.elapsed()));
        let bare_ack = Segment {
            src: acked.client,
            dst: acked.server,
            flags: ACK,
            seq: acked.rcv_nxt,
            ack: acked.snd_nxt,
            window: 1024,
            ts: Some((acked.ts_recent.wrapping_add(1), acked.server_tsval)),
            payload: Vec::new(),
        };
        send_segment(pair.client_ns(), &bare_ack)?;
        let paws_from = netstat(srv)?;
        send_segment(
            pair.client_ns(),
            &refused.syn(refused.seq_after(), Some(1000)),
        )?;
        wait_until(
            "the kernel counts the PAWS reject",
            Duration::from_secs(10),
            || Ok(tw_paws_delta(&paws_from, &netstat(srv)?) == 1),
        )?;
        // The ACKed one's timer (from its enter) and lateness past: said, with no loss. (The
        // first such line: later, past the PAWS re-arm's own deadline, both may be said.)
        let left = |by: u64| Duration::from_secs(by).saturating_sub(made.elapsed());
        let doubt = doubts
            .wait_stdout_text(" high: it counts ", left(100))
            .with_context(|| {
                // What the kernel and the table held then, so that a failure explains itself.
                let held =
                    |tw: &ServerTimeWait| tw.exists(srv).map_or("?".into(), |b| b.to_string());
                let lines = doubts.stdout_lines();
                let frame = lines
                    .iter()
                    .rposition(|l| l.starts_with("twtrace "))
                    .unwrap_or(0);
                let said: Vec<&String> = (lines.iter())
                    .filter(|l| l.starts_with("tw_created") || l.starts_with("LIVE"))
                    .collect();
                format!(
                    "after {:?}: the ACKed TIME-WAIT still there: {}, the refused one: {}; the \
                     table's last frame: {:#?}; its totals and doubts: {said:#?}",
                    made.elapsed(),
                    held(&acked),
                    held(&refused),
                    &lines[frame..]
                )
            })?;
        // A run the kernel skipped may have been any record: a failure is then void.
        SkippedRuns::note_if_said(&doubts.stdout_lines());
        ensure!(
            acked.exists(srv)? && refused.exists(srv)?,
            "sanity: both TIME-WAITs are still there past their first timers (re-armed)"
        );
        let paws_traced = std::env::var("TWTRACE_SIGNALS")
            .map_or(true, |s| s.split(',').any(|x| x == "paws_reject"));
        let unseen = if paws_traced { 1 } else { 2 };
        assert!(
            doubt.starts_with(&format!("LIVE may be {unseen} high: it counts ")),
            "{doubt}"
        );
        // The other table read the kernel's sockets again, and found both.
        let reread = reads.wait_stdout_text("live re-read from the kernel's sockets", left(100))?;
        SkippedRuns::note_if_said(&reads.stdout_lines());
        assert!(
            reread.starts_with(
                "live re-read from the kernel's sockets for TIME-WAITs past their timer: 1 time \
                 (found 2 TIME-WAITs; LIVE had 2 before it)"
            ),
            "{reread}"
        );
        // Both end (about 60 s after their re-arm); LIVE follows them to 0 in both tables.
        wait_until("the re-armed TIME-WAITs end", left(150), || {
            Ok(support::tw_count(srv)? == 0)
        })?;
        thread::sleep(SETTLE);
        let after = netstat(srv)?;
        for (name, t) in [("--reread 0", doubts), ("--reread 1", reads)] {
            let lines = t.stop_text()?;
            SkippedRuns::note_if_said(&lines);
            let last = Totals::last(&lines)?;
            assert_eq!(last.field("live")?, 0, "{name}: {last}");
            if tw_counted_at_creation() {
                assert_eq!(
                    last.field("tw_created")?,
                    delta(&before, &after, "TcpExtTW"),
                    "{name}: {last}"
                );
            }
            assert_eq!(last.field("lost")?, 0, "{name}: {last}");
            // The final table doubts nothing.
            let frame = lines.iter().rposition(|l| l.starts_with("twtrace "));
            let final_frame = &lines[frame.context("no table")?..];
            let doubted = final_frame.iter().find(|l| l.starts_with("LIVE may be"));
            assert!(doubted.is_none(), "{name}: {doubted:?}");
        }
        Ok(())
    })
}
