//! TW enter: hooks and decoder. Kernel side: twtrace-ebpf/src/tw_enter.rs.

use twtrace_common::{Event, TCP_FIN_WAIT2};

use super::{
    DecodeCtx, Family, Hook, Program, Signal, TP_TIMER_CANCEL, TP_TIMER_START, TW_TIMER_CANCEL,
    TW_TIMER_START,
};
use crate::event::{Substate, What};

pub static SIGNAL: Signal = Signal {
    name: "tw_enter",
    route: twtrace_common::route::TW_ENTER,
    description: "a socket entered TIME-WAIT",
    hooks: &[
        Hook {
            family: Family::Fentry,
            needs: &[],
            limits: None,
            programs: &[Program::fentry("tw_enter_fentry", "__inet_twsk_schedule")],
        },
        Hook {
            family: Family::Kprobe,
            needs: &[],
            limits: None,
            programs: &[Program::kprobe("tw_enter_kprobe", "__inet_twsk_schedule")],
        },
        Hook {
            family: Family::TpBtf,
            needs: &[],
            limits: None,
            programs: &[TP_TIMER_START, TP_TIMER_CANCEL],
        },
        // The cancel program too: it takes ended TIME-WAITs out of the kernel's live table,
        // whose entries tell a re-arm from a new TIME-WAIT (it reports exits only when tw_exit
        // is traced on this route).
        Hook {
            family: Family::Tracepoint,
            needs: &[],
            limits: None,
            programs: &[TW_TIMER_START, TW_TIMER_CANCEL],
        },
    ],
};

pub fn decode(ev: &Event, ctx: &DecodeCtx) -> What {
    let substate = if ev.detail == TCP_FIN_WAIT2 {
        Substate::FinWait2
    } else {
        Substate::TimeWait
    };
    What::TwEnter {
        substate,
        timeout_ms: ev.timeout_jiffies.saturating_mul(1000) / ctx.hz.max(1),
    }
}
