//! Signals and their hooks. A signal is something twtrace reports (a socket entered TIME-WAIT,
//! ...); a hook is one way to observe it on some kernel. Each signal module holds its hook list,
//! best first, and the decoder of its ring-buffer records; its eBPF side is the module of the
//! same name in twtrace-ebpf.

mod addr_map;
pub mod paws;
pub mod port_exhaustion;
pub mod request_ts;
pub mod syn;
pub mod tw_enter;
pub mod tw_exit;
pub mod tw_overflow;
pub mod tw_present;
pub mod tw_syn;

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use twtrace_common::{AF_INET6, Event, EventKind};

use crate::event::{Record, What};

/// Hook families, best first: fentry/fexit (BPF trampoline, cheapest, typed args), kprobes,
/// then tracepoints (stable ABI, always allowed, but TIME-WAIT has none of its own): BTF-typed
/// raw tracepoints (tp_btf, no perf record: several times cheaper per hit) before classic ones.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, clap::ValueEnum)]
pub enum Family {
    Fentry,
    Kprobe,
    #[value(name = "tp_btf")]
    TpBtf,
    Tracepoint,
}

impl Family {
    pub const ALL: [Family; 4] = [
        Family::Fentry,
        Family::Kprobe,
        Family::TpBtf,
        Family::Tracepoint,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Family::Fentry => "fentry",
            Family::Kprobe => "kprobe",
            Family::TpBtf => "tp_btf",
            Family::Tracepoint => "tracepoint",
        }
    }
}

/// Where one eBPF program attaches.
#[derive(Clone, Copy, Debug)]
pub enum Attach {
    Tracepoint {
        category: &'static str,
        name: &'static str,
    },
    Kprobe {
        function: &'static str,
    },
    Kretprobe {
        function: &'static str,
    },
    Fentry {
        function: &'static str,
    },
    Fexit {
        function: &'static str,
    },
    /// A BTF-typed raw tracepoint (by its event name, e.g. `timer_start`).
    BtfTracepoint {
        name: &'static str,
    },
}

impl Attach {
    pub fn describe(&self) -> String {
        match self {
            Attach::Tracepoint { category, name } => format!("tracepoint {category}:{name}"),
            Attach::Kprobe { function } => format!("kprobe {function}"),
            Attach::Kretprobe { function } => format!("kretprobe {function}"),
            Attach::Fentry { function } => format!("fentry {function}"),
            Attach::Fexit { function } => format!("fexit {function}"),
            Attach::BtfTracepoint { name } => format!("tp_btf {name}"),
        }
    }
}

/// One eBPF program (by its name in the object) and where it goes.
#[derive(Clone, Copy, Debug)]
pub struct Program {
    pub name: &'static str,
    pub attach: Attach,
}

/// One constructor per attach type, so that the hook tables read one program per line.
impl Program {
    /// A classic tracepoint, `category:event`.
    pub const fn tracepoint(
        name: &'static str,
        category: &'static str,
        event: &'static str,
    ) -> Self {
        Self {
            name,
            attach: Attach::Tracepoint {
                category,
                name: event,
            },
        }
    }

    /// A BTF-typed raw tracepoint, by its event name.
    pub const fn btf_tracepoint(name: &'static str, event: &'static str) -> Self {
        Self {
            name,
            attach: Attach::BtfTracepoint { name: event },
        }
    }

    pub const fn kprobe(name: &'static str, function: &'static str) -> Self {
        Self {
            name,
            attach: Attach::Kprobe { function },
        }
    }

    pub const fn kretprobe(name: &'static str, function: &'static str) -> Self {
        Self {
            name,
            attach: Attach::Kretprobe { function },
        }
    }

    pub const fn fentry(name: &'static str, function: &'static str) -> Self {
        Self {
            name,
            attach: Attach::Fentry { function },
        }
    }

    pub const fn fexit(name: &'static str, function: &'static str) -> Self {
        Self {
            name,
            attach: Attach::Fexit { function },
        }
    }
}

/// A kernel fact a hook depends on beyond its attach points.
#[derive(Clone, Copy, Debug)]
pub enum Need {
    /// A text symbol (e.g. a timer callback the program filters on).
    Symbol(&'static str),
    /// A field of a tracepoint record (e.g. kfree_skb's rx_sk, 6.11+).
    TracepointField {
        category: &'static str,
        name: &'static str,
        field: &'static str,
        why: &'static str,
    },
    /// A value of the kernel's `enum skb_drop_reason` (`SKB_DROP_REASON_<name>`): the enum came
    /// with 5.17, the PAWS reasons later.
    DropReason {
        name: &'static str,
        why: &'static str,
    },
    /// An enumerator of any kernel enum, anonymous ones included (e.g. `LINUX_MIB_*`).
    Enumerator {
        name: &'static str,
        why: &'static str,
    },
    /// A named parameter of a kernel function's BTF prototype (e.g. tcp_check_req's
    /// `drop_reason`, with which that function started naming its drops).
    FuncParam {
        function: &'static str,
        param: &'static str,
        why: &'static str,
    },
}

/// The tp_btf timer dispatchers (twtrace-ebpf/src/dispatch.rs), shared by several signals'
/// hooks: attached once, whichever signal chooses them first.
pub const TP_TIMER_START: Program = Program::btf_tracepoint("tp_timer_start", "timer_start");
pub const TP_TIMER_CANCEL: Program = Program::btf_tracepoint("tp_timer_cancel", "timer_cancel");
pub const TP_TIMER_EXPIRE: Program =
    Program::btf_tracepoint("tp_timer_expire", "timer_expire_entry");

/// Classic tracepoint programs other signals' hooks on that route depend on (shared like the
/// tp_btf dispatchers). A TIME-WAIT's timer start marks, on its CPU, that the closing socket
/// got its TIME-WAIT (without it tw_overflow takes every close for an overflow); its cancel
/// takes it out of the kernel's live table (without it tw_enter takes every new TIME-WAIT at a
/// reused address for a re-arm) and marks re-arms (without it a re-arm passes for a new
/// TIME-WAIT, whose mark hides the next overflow toward that remote port). What they report
/// is gated on `route::classic` bits.
pub const TW_TIMER_START: Program =
    Program::tracepoint("tw_enter_timer_start", "timer", "timer_start");
pub const TW_TIMER_CANCEL: Program =
    Program::tracepoint("tw_exit_timer_cancel", "timer", "timer_cancel");

/// The classic `sock:inet_sock_set_state` program, shared by tw_overflow (a FIN_WAIT2/CLOSING
/// close) and connect_eaddrnotavail (a SYN_SENT close) as tp_btf's `tp_set_state` is; what it
/// reports is gated on `route::classic` bits.
pub const CLASSIC_SET_STATE: Program =
    Program::tracepoint("classic_set_state", "sock", "inet_sock_set_state");

/// The programs on `tcp_timewait_state_process` (twtrace-ebpf/src/dispatch.rs), shared by
/// tw_exit (the verdict names the kill that follows) and PAWS (the verdict on a segment at a
/// TIME-WAIT): a program costs its entry and exit on every segment, so one per attach point,
/// told which signals it serves through `ROUTES` (`route::fentry`, `route::kprobe`).
pub const TW_PROCESS_FEXIT: Program =
    Program::fexit("tw_process_fexit", "tcp_timewait_state_process");
pub const TW_PROCESS_KPROBE: Program =
    Program::kprobe("tw_process_kprobe", "tcp_timewait_state_process");
pub const TW_PROCESS_KRETPROBE: Program =
    Program::kretprobe("tw_process_kretprobe", "tcp_timewait_state_process");
/// The kprobe route's pair on `tcp_timewait_state_process`: the entry keeps the arguments
/// the return half needs.
pub const TW_PROCESS_KPROBES: [Program; 2] = [TW_PROCESS_KPROBE, TW_PROCESS_KRETPROBE];

/// One way to observe a signal: all of its programs must load and attach.
#[derive(Clone, Copy, Debug)]
pub struct Hook {
    pub family: Family,
    pub needs: &'static [Need],
    /// What this hook does not see of its signal, for a fallback that serves it in part (the
    /// plan, `doctor` and the live table say so); None for a hook that sees all of it.
    pub limits: Option<&'static str>,
    pub programs: &'static [Program],
}

/// Something twtrace reports, and the hooks that can deliver it, best first.
#[derive(Debug)]
pub struct Signal {
    pub name: &'static str,
    /// Its bit in the kernel's `ROUTES` map: set when a tp_btf hook serves it, since those
    /// programs are shared between signals (`twtrace_common::route`).
    pub route: u32,
    pub description: &'static str,
    pub hooks: &'static [Hook],
}

pub const ALL: [&Signal; 6] = [
    &tw_enter::SIGNAL,
    &tw_exit::SIGNAL,
    &tw_overflow::SIGNAL,
    &port_exhaustion::SIGNAL,
    &paws::SIGNAL,
    &syn::SIGNAL,
];

/// Kernel facts decoders need.
#[derive(Clone, Copy, Debug)]
pub struct DecodeCtx {
    pub hz: u64,
}

/// Turns one ring-buffer record into a [`Record`]; None for a record of unknown kind.
pub fn decode(ev: &Event, ctx: &DecodeCtx) -> Option<Record> {
    decode_what(ev, ctx).map(|what| record_at(ev, endpoints(ev), what))
}

/// What one ring-buffer record says, its kind's own fields: [`decode`] without the common
/// ones, for a caller that builds several records of one connection (the pipeline: a
/// TIME-WAIT exit, the SYN that replaced it and their verdict) from one [`endpoints`].
pub fn decode_what(ev: &Event, ctx: &DecodeCtx) -> Option<What> {
    match EventKind::from_u8(ev.kind)? {
        EventKind::TwEnter => Some(tw_enter::decode(ev, ctx)),
        EventKind::TwExit => Some(tw_exit::decode(ev)),
        EventKind::TwOverflow => Some(tw_overflow::decode(ev)),
        EventKind::ConnectAddrNotAvail => Some(port_exhaustion::decode(ev)),
        EventKind::PawsReject => paws::decode(ev),
        EventKind::TwSynRejected => Some(paws::decode_tw_syn_rejected(ev)),
        EventKind::Syn => Some(syn::decode(ev)),
    }
}

/// The local and remote endpoints of an event (addresses are in network byte order).
///
/// IPv4-mapped IPv6 addresses (::ffff:a.b.c.d) come out as the IPv4 addresses they are. A
/// dual-stack listener (`[::]`, IPV6_V6ONLY off: Go's and Java's default) keeps an IPv4
/// client's connections and TIME-WAITs as IPv6 sockets with such addresses, while the
/// client's segments (hence rejects read from a packet) are IPv4: unfolded, one client would
/// be two rows, its SYNs and clocks on one and its rejects on the other.
pub fn endpoints(ev: &Event) -> (SocketAddr, SocketAddr) {
    let ip = |b: &[u8; 16]| -> IpAddr {
        if ev.family == AF_INET6 {
            IpAddr::V6(Ipv6Addr::from(*b)).to_canonical()
        } else {
            Ipv4Addr::new(b[0], b[1], b[2], b[3]).into()
        }
    };
    (
        SocketAddr::new(ip(&ev.laddr), ev.lport),
        SocketAddr::new(ip(&ev.raddr), ev.rport),
    )
}

/// A [`Record`] with the common fields of `ev`, its [`endpoints`] (built by the caller, once
/// for all the records one raw record gives) and the given specifics.
pub fn record_at(ev: &Event, (local, remote): (SocketAddr, SocketAddr), what: What) -> Record {
    Record {
        ts_ns: ev.ts_ns,
        netns: ev.netns,
        local,
        remote,
        what,
    }
}

/// An optional field of a record, by its flag bit.
/// A connection's identity, straight from the raw record's fields (namespace, family,
/// ports, addresses): hashing these plain words is much cheaper than two `SocketAddr`s, and
/// the joins that use it run for every exit and SYN.
pub type RawFlow = (u32, u8, u16, u16, [u8; 16], [u8; 16]);

/// IPv4-mapped addresses folded to IPv4: a dual-stack socket (and the request socket of an
/// IPv4 SYN at a `[::]` listener) carries `::ffff:a.b.c.d`, while records built from the
/// segment (kfree_skb's PAWS rejects) carry `a.b.c.d`; both are one connection.
pub fn raw_flow(ev: &Event) -> RawFlow {
    const AF_INET: u8 = 2;
    const AF_INET6: u8 = 10;
    if ev.family == AF_INET6 && is_v4_mapped(&ev.laddr) && is_v4_mapped(&ev.raddr) {
        let v4 = |a: &[u8; 16]| {
            let mut out = [0u8; 16];
            out[..4].copy_from_slice(&a[12..]);
            out
        };
        return (
            ev.netns,
            AF_INET,
            ev.lport,
            ev.rport,
            v4(&ev.laddr),
            v4(&ev.raddr),
        );
    }
    (ev.netns, ev.family, ev.lport, ev.rport, ev.laddr, ev.raddr)
}

#[inline]
fn is_v4_mapped(a: &[u8; 16]) -> bool {
    a[..10] == [0; 10] && a[10] == 0xff && a[11] == 0xff
}

pub fn flagged(ev: &Event, bit: u8, value: u32) -> Option<u32> {
    (ev.ts_flags & bit != 0).then_some(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The plan takes a family's hooks in order and keeps the first that loads: a hook that
    /// sees only part of its signal must come after one of its family that sees all of it,
    /// or it would be chosen on kernels where the whole signal can be served.
    #[test]
    fn partial_hooks_come_after_a_full_one_of_their_family() {
        for signal in ALL {
            for (i, hook) in signal.hooks.iter().enumerate() {
                if hook.limits.is_none() {
                    continue;
                }
                let full_before = signal.hooks[..i]
                    .iter()
                    .any(|h| h.family == hook.family && h.limits.is_none());
                assert!(
                    full_before,
                    "{}: partial {:?} hook first",
                    signal.name, hook.family
                );
            }
        }
        // The partial fallbacks today: tw_exit on tp_btf before drop reasons (5.17: resets
        // not found) and on classic tracepoints before 6.10 (no TIME-WAIT resets traced); PAWS with function probes where request sockets name no drop (before
        // ~6.15: their refused resets), and SYN-SENT drops none (syn_sent), with and without
        // drop reasons, then timewait alone (with kprobes, the two with drop reasons each
        // twice: kfree_skb BTF-typed, then classic); PAWS on the tracepoint routes where request
        // sockets, and SYN-SENT, give no drop reason.
        let mut partial: Vec<(&str, Family)> = ALL
            .iter()
            .flat_map(|s| {
                s.hooks
                    .iter()
                    .filter(|h| h.limits.is_some())
                    .map(|h| (s.name, h.family))
            })
            .collect();
        partial.sort_by_key(|(name, _)| *name);
        assert_eq!(
            partial,
            [
                ("paws_reject", Family::Fentry),
                ("paws_reject", Family::Fentry),
                ("paws_reject", Family::Fentry),
                ("paws_reject", Family::Fentry),
                ("paws_reject", Family::Kprobe),
                ("paws_reject", Family::Kprobe),
                ("paws_reject", Family::Kprobe),
                ("paws_reject", Family::Kprobe),
                ("paws_reject", Family::Kprobe),
                ("paws_reject", Family::Kprobe),
                ("paws_reject", Family::TpBtf),
                ("paws_reject", Family::TpBtf),
                ("paws_reject", Family::TpBtf),
                ("paws_reject", Family::Tracepoint),
                ("paws_reject", Family::Tracepoint),
                ("tw_exit", Family::TpBtf),
                ("tw_exit", Family::Tracepoint),
            ]
        );
    }

    #[test]
    fn ipv4_mapped_endpoints_are_ipv4_and_plain_ipv6_stays() {
        let mut ev = Event::zeroed();
        ev.family = AF_INET6;
        (ev.lport, ev.rport) = (443, 41000);
        let mapped = |v4: [u8; 4]| Ipv4Addr::from(v4).to_ipv6_mapped().octets();
        (ev.laddr, ev.raddr) = (mapped([10, 0, 0, 1]), mapped([192, 0, 2, 7]));
        let (l, r) = endpoints(&ev);
        assert_eq!(
            (l.to_string(), r.to_string()),
            ("10.0.0.1:443".into(), "192.0.2.7:41000".into())
        );
        let v6: Ipv6Addr = "fd00::7".parse().unwrap();
        ev.raddr = v6.octets();
        assert_eq!(endpoints(&ev).1.to_string(), "[fd00::7]:41000");
    }
}
