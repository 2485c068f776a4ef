//! Client port exhaustion (connect() -> EADDRNOTAVAIL): hooks and decoder.
//! Kernel side: twtrace-ebpf/src/port_exhaustion.rs.

use twtrace_common::Event;

use super::{CLASSIC_SET_STATE, Family, Hook, Program, Signal};
use crate::event::What;

pub static SIGNAL: Signal = Signal {
    name: "connect_eaddrnotavail",
    route: twtrace_common::route::PORT_EXHAUSTION,
    description: "connect() failed with EADDRNOTAVAIL (no free local port toward a destination)",
    hooks: &[
        Hook {
            family: Family::Fentry,
            needs: &[],
            limits: None,
            programs: &[Program::fexit("connect_hash_fexit", "__inet_hash_connect")],
        },
        Hook {
            family: Family::Kprobe,
            needs: &[],
            limits: None,
            // Not a kretprobe on connect: see twtrace-ebpf/src/port_exhaustion.rs.
            programs: &[Program::kprobe("connect_close_kprobe", "tcp_set_state")],
        },
        Hook {
            family: Family::TpBtf,
            needs: &[],
            limits: None,
            programs: &[Program::btf_tracepoint(
                "tp_set_state",
                "inet_sock_set_state",
            )],
        },
        Hook {
            family: Family::Tracepoint,
            needs: &[],
            limits: None,
            // Not the connect syscall tracepoints: see twtrace-ebpf/src/port_exhaustion.rs.
            programs: &[CLASSIC_SET_STATE],
        },
    ],
};

pub fn decode(ev: &Event) -> What {
    What::ConnectAddrNotAvail {
        pid: (ev.obj >> 32) as u32,
    }
}
