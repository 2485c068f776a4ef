//! One human-readable line per event (`twtrace events` without --json), written straight into
//! the (buffered) output: no String per event.

use std::io::{self, Write};

use crate::event::{LossReason, Record, What};

pub fn write_line(out: &mut impl Write, r: &Record) -> io::Result<()> {
    // Losses are about no socket: their line has no time, namespace or endpoints.
    if let What::Lost {
        program,
        count,
        reason,
    } = r.what
    {
        return match reason {
            LossReason::SkippedRuns => writeln!(
                out,
                "LOST {count} runs of {program} skipped by the kernel (each may have been an event)"
            ),
            LossReason::TableFull => writeln!(
                out,
                "LOST {count} events unpaired: table {program} was full (README, lost)"
            ),
            LossReason::RingFull => writeln!(out, "LOST {count} events from {program}"),
        };
    }
    // The arrow says which way things went: a segment received (SYN, PAWS reject), a
    // connect() made, or a socket between the two (TIME-WAIT, overflow).
    let arrow = match r.what {
        What::Syn { .. } | What::PawsReject { .. } | What::TwSyn { .. } => "<-",
        What::ConnectAddrNotAvail { .. } => "->",
        _ => "<->",
    };
    write!(
        out,
        "{:>14.6} netns={} {} {arrow} {} ",
        r.ts_ns as f64 / 1e9,
        r.netns,
        r.local,
        r.remote
    )?;
    match r.what {
        What::TwEnter {
            substate,
            timeout_ms,
        } => writeln!(out, "enter  {} timeout={timeout_ms}ms", substate.as_str()),
        What::Listening => writeln!(out, "listening (at start)"),
        What::LiveReset => writeln!(out, "live counts re-read from the kernel's sockets"),
        What::TwPresent { substate, .. } => {
            writeln!(out, "present {} (already at start)", substate.as_str())
        }
        What::TwExit { cause, lifetime_ns } => match lifetime_ns {
            Some(ns) => writeln!(
                out,
                "exit   {} after {:.3}s",
                cause.as_str(),
                ns as f64 / 1e9
            ),
            None => writeln!(out, "exit   {} (entry not seen)", cause.as_str()),
        },
        What::TwOverflow => writeln!(out, "overflow (tcp_max_tw_buckets full: no TIME-WAIT)"),
        What::ConnectAddrNotAvail { pid } => writeln!(out, "connect EADDRNOTAVAIL pid={pid}"),
        What::PawsReject {
            path,
            tsval,
            ts_recent,
            old_ack,
            ..
        } => {
            let what = if old_ack { "old ACK, " } else { "" };
            write!(out, "PAWS reject ({what}{})", path.as_str())?;
            timestamps(out, tsval, ts_recent)
        }
        What::Syn { tsval: Some(t) } => writeln!(out, "SYN tsval={t}"),
        What::Syn { tsval: None } => writeln!(out, "SYN without timestamp"),
        What::TwSyn {
            verdict,
            tsval,
            ts_recent,
        } => {
            write!(out, "SYN at TIME-WAIT: {}", verdict.as_str())?;
            timestamps(out, tsval, ts_recent)
        }
        What::Lost { .. } => unreachable!("written above"),
    }
}

/// The end of a line: the segment's TSval and the socket's ts_recent, each where known, and
/// the regression when both are.
fn timestamps(out: &mut impl Write, tsval: Option<u32>, ts_recent: Option<u32>) -> io::Result<()> {
    if let Some(t) = tsval {
        write!(out, " tsval={t}")?;
    }
    if let Some(r) = ts_recent {
        write!(out, " ts_recent={r}")?;
    }
    if let (Some(t), Some(r)) = (tsval, ts_recent) {
        write!(out, " regression={}", crate::event::regression(r, t))?;
    }
    writeln!(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A record of `what` between 10.0.0.1:80 (local) and 10.0.0.2:4000.
    fn at(what: What) -> Record {
        Record {
            ts_ns: 0,
            netns: 1,
            local: "10.0.0.1:80".parse().unwrap(),
            remote: "10.0.0.2:4000".parse().unwrap(),
            what,
        }
    }

    fn line(r: &Record) -> String {
        let mut out = Vec::new();
        write_line(&mut out, r).unwrap();
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn a_loss_names_its_program_and_no_socket() {
        let r = Record::lost(5, "tw_enter", 3, LossReason::RingFull);
        assert_eq!(line(&r), "LOST 3 events from tw_enter\n");
        let r = Record::lost(5, "tp_timer_cancel", 2, LossReason::SkippedRuns);
        assert_eq!(
            line(&r),
            "LOST 2 runs of tp_timer_cancel skipped by the kernel (each may have been an event)\n"
        );
    }

    /// Whatever timestamps a PAWS reject or a SYN at a TIME-WAIT carries are shown, each on
    /// its own (a SYN-SENT socket has no ts_recent, yet the segment's TSval is known).
    #[test]
    fn timestamps_are_shown_where_known() {
        use crate::event::{PawsPath, TwSynVerdict};
        let reject = |tsval, ts_recent| {
            at(What::PawsReject {
                path: PawsPath::SynSent,
                tsval,
                ts_recent,
                old_ack: false,
                tcp_flags: 0x12,
            })
        };
        let l = line(&reject(Some(7), None));
        assert!(l.ends_with("PAWS reject (syn_sent) tsval=7\n"), "{l}");
        let l = line(&reject(Some(7), Some(10)));
        assert!(l.ends_with("tsval=7 ts_recent=10 regression=3\n"), "{l}");
        let l = line(&at(What::TwSyn {
            verdict: TwSynVerdict::AcceptedByTimestamp,
            tsval: Some(11),
            ts_recent: Some(10),
        }));
        assert!(
            l.ends_with(
                "SYN at TIME-WAIT: accepted_by_timestamp tsval=11 ts_recent=10 regression=-1\n"
            ),
            "{l}"
        );
    }

    /// The arrow points the way the segment went: in, for a SYN or a reject (a server's
    /// SYN must not read as one it sent); out, for a connect(); both ways for a socket.
    #[test]
    fn the_arrow_points_the_way_things_went() {
        let l = line(&at(What::Syn { tsval: Some(1) }));
        assert!(l.contains("10.0.0.1:80 <- 10.0.0.2:4000 SYN"), "{l}");
        let l = line(&at(What::TwOverflow));
        assert!(l.contains(" <-> "), "{l}");
    }

    #[test]
    fn a_socket_event_has_time_namespace_and_endpoints() {
        let r = Record {
            ts_ns: 1_500_000_000,
            netns: 4026531840,
            local: "10.0.0.1:80".parse().unwrap(),
            remote: "[::1]:4000".parse().unwrap(),
            what: What::ConnectAddrNotAvail { pid: 42 },
        };
        assert_eq!(
            line(&r),
            "      1.500000 netns=4026531840 10.0.0.1:80 -> [::1]:4000 connect EADDRNOTAVAIL pid=42\n"
        );
    }
}
