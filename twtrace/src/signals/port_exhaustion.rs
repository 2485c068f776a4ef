//! Client port exhaustion (connect() -> EADDRNOTAVAIL): hooks and decoder.
//! Kernel side: twtrace-ebpf/src/port_exhaustion.rs.

use twtrace_common::Event;

use super::{Attach, Family, Hook, Program, Signal, endpoints};
use crate::event::{Record, What};

pub static SIGNAL: Signal = Signal {
    name: "connect_eaddrnotavail",
    description: "connect() failed with EADDRNOTAVAIL (no free local port toward a destination)",
    hooks: &[Hook {
        family: Family::Tracepoint,
        programs: &[
            Program {
                name: "connect_enter",
                attach: Attach::Tracepoint {
                    category: "syscalls",
                    name: "sys_enter_connect",
                },
            },
            Program {
                name: "connect_exit",
                attach: Attach::Tracepoint {
                    category: "syscalls",
                    name: "sys_exit_connect",
                },
            },
        ],
    }],
    // The syscall's return value *is* the signal; a function probe would see the same thing
    // later and only on some kernels, so the stable syscall tracepoints are the best hook.
    no_hook_reason: |f| match f {
        Family::Fentry | Family::Kprobe => {
            Some("the connect(2) exit tracepoint is the signal itself on every kernel")
        }
        Family::Tracepoint => None,
    },
};

pub fn decode(ev: &Event) -> Record {
    let (local, remote) = endpoints(ev);
    Record {
        ts_ns: ev.ts_ns,
        netns: ev.netns,
        local,
        remote,
        what: What::ConnectAddrNotAvail {
            pid: (ev.obj >> 32) as u32,
        },
    }
}
