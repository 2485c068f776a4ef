//! One human-readable line per event (`twtrace events` without --json).

use crate::event::{LossReason, Record, What};

pub fn text_line(r: &Record) -> String {
    let what = match r.what {
        What::TwEnter {
            substate,
            timeout_ms,
        } => format!("enter  {} timeout={timeout_ms}ms", substate.as_str()),
        What::Listening => "listening (at start)".to_owned(),
        What::LiveReset => "live counts re-read from the kernel's sockets".to_owned(),
        What::TwPresent { substate, .. } => {
            format!("present {} (already at start)", substate.as_str())
        }
        What::TwExit { cause, lifetime_ns } => match lifetime_ns {
            Some(ns) => format!("exit   {} after {:.3}s", cause.as_str(), ns as f64 / 1e9),
            None => format!("exit   {} (entry not seen)", cause.as_str()),
        },
        What::TwOverflow => "overflow (tcp_max_tw_buckets full: no TIME-WAIT)".to_owned(),
        What::ConnectAddrNotAvail { pid } => format!("connect EADDRNOTAVAIL pid={pid}"),
        What::Lost {
            program,
            count,
            reason: LossReason::SkippedRuns,
        } => {
            return format!(
                "LOST {count} runs of {program} skipped by the kernel (each may have been an event)"
            );
        }
        What::Lost { program, count, .. } => return format!("LOST {count} events from {program}"),
        What::PawsReject {
            path,
            tsval,
            ts_recent,
            old_ack,
            ..
        } => {
            let what = if old_ack { "old ACK, " } else { "" };
            match (tsval, ts_recent) {
                (Some(t), Some(r)) => format!(
                    "PAWS reject ({what}{}) tsval={t} ts_recent={r} regression={}",
                    path.as_str(),
                    crate::event::regression(r, t)
                ),
                _ => format!("PAWS reject ({what}{})", path.as_str()),
            }
        }
        What::Syn { tsval: Some(t) } => format!("SYN tsval={t}"),
        What::Syn { tsval: None } => "SYN without timestamp".to_owned(),
        What::TwSyn { verdict, .. } => format!("SYN at TIME-WAIT: {}", verdict.as_str()),
    };
    format!(
        "{:>14.6} netns={} {} -> {} {what}",
        r.ts_ns as f64 / 1e9,
        r.netns,
        r.local,
        r.remote
    )
}
