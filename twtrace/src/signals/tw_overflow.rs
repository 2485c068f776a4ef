//! TW overflow: hooks and decoder. Kernel side: twtrace-ebpf/src/tw_overflow.rs.

use twtrace_common::Event;

use super::{
    CLASSIC_SET_STATE, Family, Hook, Program, Signal, TP_TIMER_CANCEL, TP_TIMER_START,
    TW_TIMER_CANCEL, TW_TIMER_START,
};
use crate::event::What;

pub static SIGNAL: Signal = Signal {
    name: "tw_overflow",
    route: twtrace_common::route::TW_OVERFLOW,
    description: "a flow closed without TIME-WAIT because tcp_max_tw_buckets was full",
    hooks: &[
        Hook {
            family: Family::Fentry,
            needs: &[],
            limits: None,
            programs: &[Program::fexit("tw_overflow_fexit", "inet_twsk_alloc")],
        },
        Hook {
            family: Family::Kprobe,
            needs: &[],
            limits: None,
            programs: &[
                Program::kprobe("tw_overflow_kprobe", "inet_twsk_alloc"),
                Program::kretprobe("tw_overflow_kretprobe", "inet_twsk_alloc"),
            ],
        },
        Hook {
            family: Family::TpBtf,
            needs: &[],
            limits: None,
            programs: &[
                Program::btf_tracepoint("tp_set_state", "inet_sock_set_state"),
                Program::btf_tracepoint("tp_rst_rx", "tcp_receive_reset"),
                Program::btf_tracepoint("tp_rst_tx", "tcp_send_reset"),
                // A close that got its TIME-WAIT is told by that TIME-WAIT's timer start just
                // before, on its CPU: needed even when tw_enter is not traced, with the
                // cancels that tell a re-arm from a new TIME-WAIT.
                TP_TIMER_START,
                TP_TIMER_CANCEL,
            ],
        },
        Hook {
            family: Family::Tracepoint,
            needs: &[],
            limits: None,
            programs: &[
                Program::tracepoint("tw_overflow_rst_rx", "tcp", "tcp_receive_reset"),
                Program::tracepoint("tw_overflow_rst_tx", "tcp", "tcp_send_reset"),
                CLASSIC_SET_STATE,
                // Same as tp_btf: the cancel marks a re-arm (REARMING) for the start.
                TW_TIMER_START,
                TW_TIMER_CANCEL,
            ],
        },
    ],
};

pub fn decode(_: &Event) -> What {
    What::TwOverflow
}
