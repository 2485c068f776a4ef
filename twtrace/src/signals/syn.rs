//! SYN timestamps per source IP: hooks and decoder. Kernel side: twtrace-ebpf/src/syn.rs.

use twtrace_common::{Event, ts_flags};

use super::{Family, Hook, Need, Program, Signal, TP_TIMER_START, flagged};
use crate::event::What;

pub static SIGNAL: Signal = Signal {
    name: "syn",
    route: twtrace_common::route::SYN,
    description: "SYNs reaching a listener, with their TSval (clock estimate per source IP)",
    hooks: &[
        Hook {
            family: Family::Fentry,
            needs: &[],
            limits: None,
            programs: &[Program::fentry(
                "syn_fentry",
                "inet_csk_reqsk_queue_hash_add",
            )],
        },
        Hook {
            family: Family::Kprobe,
            needs: &[],
            limits: None,
            programs: &[Program::kprobe(
                "syn_kprobe",
                "inet_csk_reqsk_queue_hash_add",
            )],
        },
        Hook {
            family: Family::TpBtf,
            needs: &[],
            limits: None,
            programs: &[TP_TIMER_START],
        },
        Hook {
            family: Family::Tracepoint,
            needs: &[Need::Symbol("reqsk_timer_handler")],
            limits: None,
            programs: &[Program::tracepoint(
                "syn_timer_start",
                "timer",
                "timer_start",
            )],
        },
    ],
};

pub fn decode(ev: &Event) -> What {
    What::Syn {
        tsval: flagged(ev, ts_flags::HAS_TSVAL, ev.tsval),
    }
}
