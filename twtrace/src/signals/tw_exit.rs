//! TW exit and its cause: hooks and decoder. Kernel side: twtrace-ebpf/src/tw_exit.rs.

use twtrace_common::{Event, ExitCause as RawCause};

use super::{Attach, Family, Hook, Program, Signal, record};
use crate::event::{ExitCause, Record, What};

pub static SIGNAL: Signal = Signal {
    name: "tw_exit",
    route: twtrace_common::route::TW_EXIT,
    description: "a TIME-WAIT socket ended, with its cause and lifetime",
    hooks: &[
        Hook {
            family: Family::Fentry,
            needs: &[],
            programs: &[Program {
                name: "tw_exit_fentry",
                attach: Attach::Fentry {
                    function: "inet_twsk_kill",
                },
            }],
        },
        Hook {
            family: Family::Fentry,
            needs: &[],
            programs: &[
                Program {
                    name: "tw_exit_timer_fentry",
                    attach: Attach::Fentry {
                        function: "tw_timer_handler",
                    },
                },
                Program {
                    name: "tw_exit_deschedule_fentry",
                    attach: Attach::Fentry {
                        function: "inet_twsk_deschedule_put",
                    },
                },
            ],
        },
        Hook {
            family: Family::Kprobe,
            needs: &[],
            programs: &[Program {
                name: "tw_exit_kprobe",
                attach: Attach::Kprobe {
                    function: "inet_twsk_kill",
                },
            }],
        },
        Hook {
            family: Family::Kprobe,
            needs: &[],
            programs: &[
                Program {
                    name: "tw_exit_timer_kprobe",
                    attach: Attach::Kprobe {
                        function: "tw_timer_handler",
                    },
                },
                Program {
                    name: "tw_exit_deschedule_kprobe",
                    attach: Attach::Kprobe {
                        function: "inet_twsk_deschedule_put",
                    },
                },
            ],
        },
        Hook {
            family: Family::TpBtf,
            needs: &[],
            programs: &[
                Program {
                    name: "tp_timer_cancel",
                    attach: Attach::BtfTracepoint {
                        name: "timer_cancel",
                    },
                },
                Program {
                    name: "tp_timer_start",
                    attach: Attach::BtfTracepoint {
                        name: "timer_start",
                    },
                },
                Program {
                    name: "tp_timer_expire",
                    attach: Attach::BtfTracepoint {
                        name: "timer_expire_entry",
                    },
                },
                Program {
                    name: "tp_kfree_skb",
                    attach: Attach::BtfTracepoint { name: "kfree_skb" },
                },
            ],
        },
        Hook {
            family: Family::Tracepoint,
            needs: &[],
            programs: &[Program {
                name: "tw_exit_timer_cancel",
                attach: Attach::Tracepoint {
                    category: "timer",
                    name: "timer_cancel",
                },
            }],
        },
    ],
};

pub fn cause(raw: u8) -> ExitCause {
    match RawCause::from_u8(raw) {
        RawCause::Expired => ExitCause::Expired,
        RawCause::ReplacedBySyn => ExitCause::ReplacedBySyn,
        RawCause::KilledByRst => ExitCause::KilledByRst,
        RawCause::Reused => ExitCause::Reused,
        RawCause::Purged => ExitCause::Purged,
        RawCause::Unknown => ExitCause::Unknown,
    }
}

pub fn decode(ev: &Event) -> Record {
    record(
        ev,
        What::TwExit {
            cause: cause(ev.detail),
            lifetime_ns: (ev.lifetime_ns != 0).then_some(ev.lifetime_ns),
        },
    )
}

/// TIME-WAIT exits the tp_btf route parked and nothing explained before shutdown (see
/// twtrace-ebpf/src/tw_exit.rs), as events with cause `unknown`: reported, not lost.
pub fn unexplained(bpf: &mut aya::Ebpf) -> anyhow::Result<Vec<Event>> {
    let Some(map) = bpf.map_mut("PENDING") else {
        return Ok(Vec::new());
    };
    let slots: aya::maps::PerCpuArray<_, twtrace_common::PendingExit> = map.try_into()?;
    let per_cpu = slots.get(&0, 0)?;
    Ok(per_cpu
        .iter()
        .filter(|p| p.timer != 0 && p.ev.kind != 0)
        .map(|p| {
            let mut ev = p.ev;
            ev.detail = twtrace_common::ExitCause::Unknown as u8;
            ev
        })
        .collect())
}
