//! TW enter: hooks and decoder. Kernel side: twtrace-ebpf/src/tw_enter.rs.

use twtrace_common::{Event, TCP_FIN_WAIT2};

use super::{
    Attach, DecodeCtx, Family, Hook, Program, Signal, TP_TIMER_CANCEL, TP_TIMER_START, record,
};
use crate::event::{Record, Substate, What};

pub static SIGNAL: Signal = Signal {
    name: "tw_enter",
    route: twtrace_common::route::TW_ENTER,
    description: "a socket entered TIME-WAIT",
    hooks: &[
        Hook {
            family: Family::Fentry,
            needs: &[],
            limits: None,
            programs: &[Program {
                name: "tw_enter_fentry",
                attach: Attach::Fentry {
                    function: "__inet_twsk_schedule",
                },
            }],
        },
        Hook {
            family: Family::Kprobe,
            needs: &[],
            limits: None,
            programs: &[Program {
                name: "tw_enter_kprobe",
                attach: Attach::Kprobe {
                    function: "__inet_twsk_schedule",
                },
            }],
        },
        Hook {
            family: Family::TpBtf,
            needs: &[],
            limits: None,
            programs: &[TP_TIMER_START, TP_TIMER_CANCEL],
        },
        Hook {
            family: Family::Tracepoint,
            needs: &[],
            limits: None,
            programs: &[Program {
                name: "tw_enter_timer_start",
                attach: Attach::Tracepoint {
                    category: "timer",
                    name: "timer_start",
                },
            }],
        },
    ],
};

pub fn decode(ev: &Event, ctx: &DecodeCtx) -> Record {
    let substate = if ev.detail == TCP_FIN_WAIT2 {
        Substate::FinWait2
    } else {
        Substate::TimeWait
    };
    record(
        ev,
        What::TwEnter {
            substate,
            timeout_ms: ev.timeout_jiffies.saturating_mul(1000) / ctx.hz.max(1),
        },
    )
}
