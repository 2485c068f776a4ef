//! PAWS rejects on every path: hooks and decoder. Kernel side: twtrace-ebpf/src/paws.rs.

use twtrace_common::{Event, PawsPath as RawPath, ts_flags};

use super::{
    Family, Hook, Need, Program, Signal, TP_TIMER_CANCEL, TP_TIMER_EXPIRE, TP_TIMER_START,
    TW_PROCESS_FEXIT, TW_PROCESS_KPROBE, TW_PROCESS_KPROBES, TW_PROCESS_KRETPROBE, flagged,
};
use crate::{
    event::{PawsPath, TwSynVerdict, What},
    kernel::layout,
};

const KFREE_SKB_NON_TW: Program = Program::tracepoint("paws_kfree_skb_nontw", "skb", "kfree_skb");

/// The same, BTF-typed: no perf record filled per drop (tracing programs load wherever fentry
/// does; the kprobe family falls back to the classic one, for kernels that refuse them).
const KFREE_SKB_NON_TW_BTF: Program =
    Program::btf_tracepoint("paws_kfree_skb_nontw_btf", "kfree_skb");

/// kfree_skb's dropping socket: how the tracepoint routes recognise a TIME-WAIT reject.
const RX_SK: Need = Need::TracepointField {
    category: "skb",
    name: "kfree_skb",
    field: "rx_sk",
    why: "TIME-WAIT rejects are recognised by the dropping socket (kernel 6.11+)",
};

/// The reason the non-TIME-WAIT paths are recognised by (the enum came with 5.17, this value
/// soon after; _PAWS_ACK and _TSECR are younger still and each adds a path where present).
const PAWS_REASON: Need = Need::DropReason {
    name: "TCP_RFC7323_PAWS",
    why: "established, syn_recv and syn_sent rejects are recognised by their drop reasons",
};

/// What the fallbacks without drop reasons miss (`doctor -v` says why the full hook was
/// passed over).
const TIMEWAIT_ONLY: Option<&str> = Some(
    "timewait path only: established, syn_recv and syn_sent rejects are not seen (only the \
     PAWS drop reasons show them, on kernels that have them)",
);

/// Without the PAWS drop reason, an established-path reject is the call of
/// `tcp_oow_rate_limited` with this mib index (twtrace-ebpf/src/paws.rs).
const OOW_MIB: Need = Need::Enumerator {
    name: "LINUX_MIB_TCPACKSKIPPEDPAWS",
    why: "established-path rejects are recognised by tcp_oow_rate_limited's mib index",
};

/// Since ~6.15 a request socket's reject has its drop reason (tcp_check_req names it).
const REQ_REASON: Need = Need::FuncParam {
    function: layout::CHECK_REQ,
    param: layout::CHECK_REQ_REASON_PARAM,
    why: "rejects at request sockets (syn_recv) are recognised by the drop reason \
          tcp_check_req gives them since ~6.15",
};

/// Before that, a request socket's reject is one of its calls of `tcp_oow_rate_limited` with
/// this mib index (the program redoes the kernel's PAWS test to tell which).
const SYNRECV_MIB: Need = Need::Enumerator {
    name: "LINUX_MIB_TCPACKSKIPPEDSYNRECV",
    why: "rejects at request sockets are recognised by tcp_oow_rate_limited's mib index",
};

/// SYN-SENT drops carry reasons on newer kernels (6.12 has them, 6.1 not: TCP_RFC7323_PAWS
/// for the TSecr check, later _TSECR); TCP_INVALID_ACK_SEQUENCE came with them and marks such
/// a kernel.
const SYN_SENT_REASON: Need = Need::DropReason {
    name: "TCP_INVALID_ACK_SEQUENCE",
    why: "syn_sent rejects carry a drop reason only where SYN-SENT drops are named (with \
          this reason)",
};

/// What the tracepoint routes miss where tcp_check_req gives no drop reason.
const NO_REQUESTS: Option<&str> = Some(
    "rejects at request sockets (syn_recv) are not seen: this kernel's tcp_check_req gives \
     them no drop reason (kernels before ~6.15), and only function probes see them there",
);

/// ... and where SYN-SENT drops have none either.
const NO_REQUESTS_OR_SYN_SENT: Option<&str> = Some(
    "rejects at request sockets (syn_recv) and in syn_sent are not seen: this kernel gives \
     them no drop reason (e.g. 6.1; request sockets also on 6.12); function probes see the \
     request sockets' there",
);

/// What tcp_oow_rate_limited cannot show: a reset that a request socket refuses by PAWS is
/// counted (PAWSEstab) and dropped without that call.
const NO_REQUEST_RESETS: Option<&str> = Some(
    "resets that a request socket refuses by PAWS are not seen: this kernel's tcp_check_req \
     names no drop (before ~6.15), and only its other rejects call tcp_oow_rate_limited",
);

/// What the function probes miss where SYN-SENT drops have no reason either.
const NO_SYN_SENT_REASON: Option<&str> = Some(
    "syn_sent rejects are not seen (without their drop reason, e.g. on 6.1, no function marks \
     them), nor resets that a request socket refuses by PAWS",
);

/// What the function-probe fallback without drop reasons misses.
const NO_SYN_SENT: Option<&str> = Some(
    "timewait, established and syn_recv paths only: syn_sent rejects are not seen (only the \
     PAWS drop reasons show them, on kernels that have them), nor resets that a request \
     socket refuses by PAWS",
);

const OOW_FENTRY: Program = Program::fentry("paws_oow_fentry", "tcp_oow_rate_limited");

const OOW_KPROBE: Program = Program::kprobe("paws_oow_kprobe", "tcp_oow_rate_limited");

const TP_KFREE_SKB: Program = Program::btf_tracepoint("tp_kfree_skb", "kfree_skb");

/// The kprobe family's TIME-WAIT verdict, the other paths by drop reason, and request
/// sockets by tcp_oow_rate_limited: with kfree_skb BTF-typed, and with it classic.
const KPROBES_OOW_BTF: [Program; 4] = [
    TW_PROCESS_KPROBE,
    TW_PROCESS_KRETPROBE,
    KFREE_SKB_NON_TW_BTF,
    OOW_KPROBE,
];
const KPROBES_OOW: [Program; 4] = [
    TW_PROCESS_KPROBE,
    TW_PROCESS_KRETPROBE,
    KFREE_SKB_NON_TW,
    OOW_KPROBE,
];

const TP_BTF_BEFORE_RX_SK: [Program; 4] = [
    TP_KFREE_SKB,
    TP_TIMER_START,
    TP_TIMER_CANCEL,
    TP_TIMER_EXPIRE,
];

/// The tracepoint route: every path, TIME-WAIT included.
const KFREE_SKB_ALL: Program = Program::tracepoint("paws_kfree_skb", "skb", "kfree_skb");

pub static SIGNAL: Signal = Signal {
    name: "paws_reject",
    route: twtrace_common::route::PAWS,
    description: "segments dropped by PAWS (timewait, established, syn_recv, syn_sent)",
    hooks: &[
        // The TIME-WAIT path from the kernel's own verdict; the other paths from drop reasons,
        // and where request sockets give none (before ~6.15), from tcp_oow_rate_limited.
        Hook {
            family: Family::Fentry,
            needs: &[PAWS_REASON, REQ_REASON, SYN_SENT_REASON],
            limits: None,
            programs: &[TW_PROCESS_FEXIT, KFREE_SKB_NON_TW_BTF],
        },
        Hook {
            family: Family::Fentry,
            needs: &[PAWS_REASON, SYNRECV_MIB, SYN_SENT_REASON],
            limits: NO_REQUEST_RESETS,
            programs: &[TW_PROCESS_FEXIT, KFREE_SKB_NON_TW_BTF, OOW_FENTRY],
        },
        Hook {
            family: Family::Fentry,
            needs: &[PAWS_REASON, SYNRECV_MIB],
            limits: NO_SYN_SENT_REASON,
            programs: &[TW_PROCESS_FEXIT, KFREE_SKB_NON_TW_BTF, OOW_FENTRY],
        },
        // Before drop reasons (5.10, 5.15): the TIME-WAIT path, and the established and
        // request-socket ones from tcp_oow_rate_limited's mib index, said to be partial;
        // failing that, TIME-WAIT alone.
        Hook {
            family: Family::Fentry,
            needs: &[OOW_MIB, SYNRECV_MIB],
            limits: NO_SYN_SENT,
            programs: &[TW_PROCESS_FEXIT, OOW_FENTRY],
        },
        Hook {
            family: Family::Fentry,
            needs: &[],
            limits: TIMEWAIT_ONLY,
            programs: &[TW_PROCESS_FEXIT],
        },
        // Each with kfree_skb BTF-typed first, then classic (a kernel may allow kprobes and
        // refuse tracing programs).
        Hook {
            family: Family::Kprobe,
            needs: &[PAWS_REASON, REQ_REASON, SYN_SENT_REASON],
            limits: None,
            programs: &[
                TW_PROCESS_KPROBE,
                TW_PROCESS_KRETPROBE,
                KFREE_SKB_NON_TW_BTF,
            ],
        },
        Hook {
            family: Family::Kprobe,
            needs: &[PAWS_REASON, REQ_REASON, SYN_SENT_REASON],
            limits: None,
            programs: &[TW_PROCESS_KPROBE, TW_PROCESS_KRETPROBE, KFREE_SKB_NON_TW],
        },
        Hook {
            family: Family::Kprobe,
            needs: &[PAWS_REASON, SYNRECV_MIB, SYN_SENT_REASON],
            limits: NO_REQUEST_RESETS,
            programs: &KPROBES_OOW_BTF,
        },
        Hook {
            family: Family::Kprobe,
            needs: &[PAWS_REASON, SYNRECV_MIB, SYN_SENT_REASON],
            limits: NO_REQUEST_RESETS,
            programs: &KPROBES_OOW,
        },
        Hook {
            family: Family::Kprobe,
            needs: &[PAWS_REASON, SYNRECV_MIB],
            limits: NO_SYN_SENT_REASON,
            programs: &KPROBES_OOW_BTF,
        },
        Hook {
            family: Family::Kprobe,
            needs: &[PAWS_REASON, SYNRECV_MIB],
            limits: NO_SYN_SENT_REASON,
            programs: &KPROBES_OOW,
        },
        Hook {
            family: Family::Kprobe,
            needs: &[OOW_MIB, SYNRECV_MIB],
            limits: NO_SYN_SENT,
            programs: &[TW_PROCESS_KPROBE, TW_PROCESS_KRETPROBE, OOW_KPROBE],
        },
        Hook {
            family: Family::Kprobe,
            needs: &[],
            limits: TIMEWAIT_ONLY,
            programs: &TW_PROCESS_KPROBES,
        },
        Hook {
            family: Family::TpBtf,
            needs: &[RX_SK, REQ_REASON, SYN_SENT_REASON],
            limits: None,
            programs: &[TP_KFREE_SKB],
        },
        Hook {
            family: Family::TpBtf,
            needs: &[RX_SK, SYN_SENT_REASON],
            limits: NO_REQUESTS,
            programs: &[TP_KFREE_SKB],
        },
        Hook {
            family: Family::TpBtf,
            needs: &[RX_SK],
            limits: NO_REQUESTS_OR_SYN_SENT,
            programs: &[TP_KFREE_SKB],
        },
        // Before 6.11 (kfree_skb names no socket): a TIME-WAIT's drops are found through the
        // table of live TIME-WAITs by connection, kept by the TIME-WAIT timer dispatchers
        // (twtrace-ebpf/src/tw_flows.rs). No kernel that old names request-socket rejects.
        Hook {
            family: Family::TpBtf,
            needs: &[PAWS_REASON],
            limits: NO_REQUESTS_OR_SYN_SENT,
            programs: &TP_BTF_BEFORE_RX_SK,
        },
        Hook {
            family: Family::Tracepoint,
            needs: &[RX_SK, REQ_REASON, SYN_SENT_REASON],
            limits: None,
            programs: &[KFREE_SKB_ALL],
        },
        Hook {
            family: Family::Tracepoint,
            needs: &[RX_SK, SYN_SENT_REASON],
            limits: NO_REQUESTS,
            programs: &[KFREE_SKB_ALL],
        },
        Hook {
            family: Family::Tracepoint,
            needs: &[RX_SK],
            limits: NO_REQUESTS_OR_SYN_SENT,
            programs: &[KFREE_SKB_ALL],
        },
    ],
};

pub fn decode(ev: &Event) -> Option<What> {
    let path = match RawPath::from_u8(ev.detail)? {
        RawPath::Timewait => PawsPath::Timewait,
        RawPath::Established => PawsPath::Established,
        RawPath::SynRecv => PawsPath::SynRecv,
        RawPath::SynSent => PawsPath::SynSent,
    };
    Some(What::PawsReject {
        path,
        tsval: flagged(ev, ts_flags::HAS_TSVAL, ev.tsval),
        ts_recent: flagged(ev, ts_flags::HAS_TS_RECENT, ev.ts_recent),
        tcp_flags: ev.tcp_flags,
        old_ack: ev.ts_flags & ts_flags::OLD_ACK != 0,
    })
}

pub fn decode_tw_syn_rejected(ev: &Event) -> What {
    What::TwSyn {
        verdict: TwSynVerdict::RejectedOther,
        tsval: flagged(ev, ts_flags::HAS_TSVAL, ev.tsval),
        ts_recent: flagged(ev, ts_flags::HAS_TS_RECENT, ev.ts_recent),
    }
}
