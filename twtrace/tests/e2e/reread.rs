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
