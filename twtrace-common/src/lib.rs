//! Types shared by twtrace's eBPF programs and its user space.
//!
//! Everything here is `#[repr(C)]` plain data: the kernel side writes it into the ring buffer or
//! reads it from globals that user space fills in before load. Nothing kernel-specific is a
//! constant here: struct offsets, enum values and function addresses all arrive at load time in
//! [`KernelLayout`], computed from the running kernel's BTF and kallsyms.
#![no_std]

mod flow_key;
pub use flow_key::{FlowKey, v4_in_16};

/// What happened. The kernel side writes one of these into [`Event::kind`].
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventKind {
    /// A socket entered TIME-WAIT (a timewait sock was created and its timer armed).
    TwEnter = 1,
    /// A TIME-WAIT socket ended; [`Event::detail`] is an [`ExitCause`].
    TwExit = 2,
    /// A socket closed without TIME-WAIT because `tcp_max_tw_buckets` was full.
    TwOverflow = 3,
    /// `connect()` failed with EADDRNOTAVAIL (no free local port toward that destination).
    ConnectAddrNotAvail = 4,
    /// A segment was dropped by a PAWS (RFC 7323 timestamp) check; [`Event::detail`] is a
    /// [`PawsPath`].
    PawsReject = 5,
    /// A SYN reached a listener (a request socket was created); carries its TSval.
    Syn = 6,
    /// A SYN to a TIME-WAIT socket was refused for a reason other than PAWS.
    TwSynRejected = 7,
}

impl EventKind {
    pub fn from_u8(v: u8) -> Option<Self> {
        Some(match v {
            1 => Self::TwEnter,
            2 => Self::TwExit,
            3 => Self::TwOverflow,
            4 => Self::ConnectAddrNotAvail,
            5 => Self::PawsReject,
            6 => Self::Syn,
            7 => Self::TwSynRejected,
            _ => return None,
        })
    }
}

/// Why a TIME-WAIT socket ended. Derived in the kernel from the call chain that killed it.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExitCause {
    /// The kernel gave no distinguishing context (documented, never guessed).
    Unknown = 0,
    /// The TIME-WAIT timer fired.
    Expired = 1,
    /// A new SYN to the same 4-tuple was accepted (server side, `tcp_v{4,6}_rcv` -> TCP_TW_SYN).
    ReplacedBySyn = 2,
    /// Killed by an incoming segment inside `tcp_timewait_state_process` (RST, rfc1337=0).
    KilledByRst = 3,
    /// A local connect() took the 4-tuple over (tcp_tw_reuse, or bind + SO_REUSEADDR).
    Reused = 4,
    /// The network namespace went away (`inet_twsk_purge`).
    Purged = 5,
}

impl ExitCause {
    pub fn from_u8(v: u8) -> Self {
        match v {
            1 => Self::Expired,
            2 => Self::ReplacedBySyn,
            3 => Self::KilledByRst,
            4 => Self::Reused,
            5 => Self::Purged,
            _ => Self::Unknown,
        }
    }
}

/// Where a PAWS reject happened.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PawsPath {
    Timewait = 1,
    Established = 2,
    SynRecv = 3,
    SynSent = 4,
}

impl PawsPath {
    pub fn from_u8(v: u8) -> Option<Self> {
        Some(match v {
            1 => Self::Timewait,
            2 => Self::Established,
            3 => Self::SynRecv,
            4 => Self::SynSent,
            _ => return None,
        })
    }
}

/// [`Event::ts_flags`] bits.
pub mod ts_flags {
    /// The segment carried a TCP timestamp option (TSval is valid).
    pub const HAS_TSVAL: u8 = 1;
    /// The socket's stored ts_recent was readable (ts_recent is valid).
    pub const HAS_TS_RECENT: u8 = 2;
    // 4 was `HAS_RCV_NXT`: exits carried the TIME-WAIT's rcv_nxt, which nothing read (on the
    // function-probe routes it cost a helper call per TIME-WAIT).
    /// A tw_exit replaced by a SYN that also carries that SYN (the tp_btf route sees both in
    /// one program run, so it writes one record instead of two): `tsval` (with
    /// [`HAS_TSVAL`]) is the SYN's, `ts_ns` the time of the SYN, and `timeout_jiffies` the
    /// exit's own time, which can be much earlier (the exit waits on its CPU for the SYN that
    /// settles it: one dropped by a full accept queue is sent again a second later, and the
    /// freed socket may hold a new TIME-WAIT by then). User space splits it back into the exit
    /// and the SYN, each at its own time.
    pub const WITH_SYN: u8 = 8;
    /// A paws_reject of a pure ACK whose sequence is before the socket's rcv_nxt (drop reason
    /// TCP_RFC7323_PAWS_ACK, 6.14+): common under reordering, counted apart by the kernel
    /// (TcpExtPAWSOldAck), and by twtrace.
    pub const OLD_ACK: u8 = 16;
    /// A paws_reject for its TSecr, not its TSval (drop reason TCP_RFC7323_TSECR): no
    /// ts_recent is given, as none was compared.
    pub const BY_TSECR: u8 = 32;
}

/// [`Event::detail`] of a `TwOverflow` record.
pub mod overflow_detail {
    /// The close reported just before as an overflow (obj: the socket) was followed, in the
    /// same call, by a reset the socket sent or received: it was an abort (close() with
    /// unread data, SO_LINGER 0, TCP_LINGER2 < 0, data after close), not a refused
    /// TIME-WAIT. The tracepoint routes only; user space drops the two.
    pub const RETRACT: u8 = 1;
}

/// Call-chain classes the kernel side recognises while walking a stack. A frame that falls in a
/// [`CodeRange`] yields its class; the innermost recognised frame wins.
pub mod frame_class {
    /// `__mod_timer` & co: the TIME-WAIT timer is being re-armed, the socket lives on.
    pub const REARM: u8 = 10;
    /// The timer softirq is expiring the timer.
    pub const EXPIRE: u8 = 11;
    /// `tcp_v4_rcv` / `tcp_v6_rcv` killed it after TCP_TW_SYN.
    pub const RCV: u8 = 12;
    /// `tcp_timewait_state_process` killed it (RST).
    pub const TW_PROCESS: u8 = 13;
    /// connect() reusing the 4-tuple.
    pub const CONNECT_REUSE: u8 = 14;
    /// Namespace teardown.
    pub const PURGE: u8 = 15;
}

/// Which hook produced an event (reported in `doctor` and in debug output).
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HookFamily {
    Fentry = 1,
    Kprobe = 2,
    Tracepoint = 3,
    /// BTF-typed raw tracepoints (tp_btf): tracepoint sites without the perf record.
    TpBtf = 4,
}

pub const AF_INET: u8 = 2;
pub const AF_INET6: u8 = 10;

/// TIME-WAIT substates as the kernel stores them in `tw_substate` (TCP state numbers are ABI).
pub const TCP_FIN_WAIT2: u8 = 5;
pub const TCP_TIME_WAIT: u8 = 6;

/// One event, as written into the ring buffer. Fixed size so the reader never allocates.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct Event {
    /// `bpf_ktime_get_ns()` (CLOCK_MONOTONIC) when it happened.
    pub ts_ns: u64,
    /// Opaque identity of the TIME-WAIT object (pairs enter and exit), or pid_tgid for connect.
    pub obj: u64,
    /// Exit: how long the socket sat in TIME-WAIT, 0 if its entry was not seen.
    pub lifetime_ns: u64,
    /// Enter: armed timeout in jiffies (user space converts with the kernel's HZ). An exit
    /// carrying its SYN ([`ts_flags::WITH_SYN`]): the exit's own time (`ts_ns` is the SYN's).
    pub timeout_jiffies: u64,
    /// Network namespace inode number (what `ls -l /proc/PID/ns/net` shows).
    pub netns: u32,
    /// [`EventKind`].
    pub kind: u8,
    /// [`AF_INET`] or [`AF_INET6`].
    pub family: u8,
    /// Exit: [`ExitCause`]; enter: substate ([`TCP_TIME_WAIT`] or [`TCP_FIN_WAIT2`]).
    pub detail: u8,
    /// [`HookFamily`] of the program that emitted it.
    pub hook: u8,
    /// Local port, host order.
    pub lport: u16,
    /// Remote port, host order.
    pub rport: u16,
    /// Errno for connect failures, 0 otherwise.
    pub errno: u32,
    /// Local address: IPv4 in the first 4 bytes (network order), or IPv6.
    pub laddr: [u8; 16],
    /// Remote address, same encoding.
    pub raddr: [u8; 16],
    /// The segment's TSval (PAWS, SYN), if [`ts_flags::HAS_TSVAL`].
    pub tsval: u32,
    /// The socket's ts_recent (PAWS reject; tw_exit), if [`ts_flags::HAS_TS_RECENT`].
    pub ts_recent: u32,
    /// The segment's sequence number (SYN: the ISN); 0 on tw_exit.
    pub seq: u32,
    /// TCP flags byte of the segment (FIN 0x01, SYN 0x02, RST 0x04, PSH 0x08, ACK 0x10 ...).
    pub tcp_flags: u8,
    /// [`ts_flags`] bits.
    pub ts_flags: u8,
    pub _pad: [u8; 2],
}

impl Event {
    pub const fn zeroed() -> Self {
        Self {
            ts_ns: 0,
            obj: 0,
            lifetime_ns: 0,
            timeout_jiffies: 0,
            netns: 0,
            kind: 0,
            family: 0,
            detail: 0,
            hook: 0,
            lport: 0,
            rport: 0,
            errno: 0,
            laddr: [0; 16],
            raddr: [0; 16],
            tsval: 0,
            ts_recent: 0,
            seq: 0,
            tcp_flags: 0,
            ts_flags: 0,
            _pad: [0; 2],
        }
    }
}

/// A kernel text range and the [`frame_class`] it stands for.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct CodeRange {
    pub start: u64,
    pub end: u64,
    pub class: u64,
}

/// How many [`CodeRange`]s the kernel side checks (unused slots have start == end == 0).
pub const MAX_CODE_RANGES: usize = 16;
/// How many frames the kernel side walks when classifying a call chain: every known chain
/// names its cause within 4 (e.g. timer delete, inet_twsk_deschedule_put,
/// tcp_timewait_state_process, tcp_v4_rcv); unwinding costs per frame.
pub const STACK_DEPTH: usize = 6;

/// Ring-buffer slots per program counted as lost (index = [`LossSlot`]).
#[repr(u32)]
#[derive(Clone, Copy, Debug)]
pub enum LossSlot {
    TwEnter = 0,
    TwExit = 1,
    TwOverflow = 2,
    Connect = 3,
    /// The in-kernel table of live TIME-WAIT sockets was full (their exits lose lifetime).
    LiveTableFull = 4,
    Paws = 5,
    Syn = 6,
}
pub const LOSS_SLOTS: u32 = 7;

/// Everything the eBPF programs need to know about the running kernel, computed in user space
/// from BTF, kallsyms and tracefs, and injected before load with `override_global("LAYOUT")`.
/// Offsets are in bytes from the start of the named struct.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct KernelLayout {
    // struct sock_common (at offset `tw_common` inside inet_timewait_sock, 0 in practice)
    pub skc_daddr: u32,
    pub skc_rcv_saddr: u32,
    pub skc_dport: u32,
    pub skc_num: u32,
    pub skc_family: u32,
    pub skc_net: u32,
    pub skc_v6_daddr: u32,
    pub skc_v6_rcv_saddr: u32,
    // struct inet_timewait_sock
    pub tw_common: u32,
    pub tw_substate: u32,
    pub tw_timer: u32,
    // struct timer_list
    pub timer_function: u32,
    // struct net -> ns_common.inum
    pub net_ns_inum: u32,
    // tracepoint record offsets (from tracefs format files)
    pub tp_timer_start_timer: u32,
    pub tp_timer_start_function: u32,
    pub tp_timer_start_expires: u32,
    pub tp_timer_start_now: u32,
    pub tp_timer_cancel_timer: u32,
    pub tp_timer_expire_timer: u32,
    pub tp_timer_expire_function: u32,
    pub tp_set_state_skaddr: u32,
    pub tp_set_state_oldstate: u32,
    pub tp_set_state_newstate: u32,
    pub tp_set_state_protocol: u32,
    // struct timer_list -> entry.pprev (non-NULL while the timer is pending)
    pub timer_entry_pprev: u32,
    pub tp_receive_reset_skaddr: u32,
    pub tp_send_reset_skaddr: u32,
    // PAWS and SYN timestamps
    pub skc_state: u32,
    pub skb_head: u32,
    pub skb_network_header: u32,
    pub skb_transport_header: u32,
    pub tw_ts_recent: u32,
    pub tcp_ts_recent: u32,
    pub req_timer: u32,
    pub req_ts_recent: u32,
    pub req_rcv_isn: u32,
    /// request_sock.num_retrans (u8) and num_timeout (a 7-bit field right after it): both 0
    /// only at the first arm of a request socket's timer. A re-arm by a SYN-ACK retransmit or
    /// for a retransmitted SYN comes after one more num_retrans; one by the timer's own
    /// handler without a retransmit (accept deferred until data, a failed retransmit) after
    /// one more num_timeout.
    pub req_num_retrans: u32,
    /// Where num_timeout lies in the u32 read at `req_num_retrans`: shift, then mask.
    pub req_num_timeout_shift: u32,
    pub req_num_timeout_mask: u32,
    /// Bit offset of inet_request_sock.tstamp_ok (a one-bit bitfield).
    pub ireq_tstamp_ok_bit: u32,
    pub tp_kfree_skb_skbaddr: u32,
    pub tp_kfree_skb_protocol: u32,
    pub tp_kfree_skb_reason: u32,
    /// u32::MAX when this kernel's kfree_skb has no rx_sk field (before 6.11).
    pub tp_kfree_skb_rx_sk: u32,
    /// Drop reason values (enum skb_drop_reason); u32::MAX when absent on this kernel.
    pub reason_not_specified: u32,
    pub reason_paws: u32,
    pub reason_paws_ack: u32,
    pub reason_tw_paws: u32,
    pub reason_tsecr: u32,
    /// `LINUX_MIB_TCPACKSKIPPEDPAWS` (an anonymous enum): the mib index tcp_oow_rate_limited
    /// gets for an established-path PAWS reject, which is how kernels without the PAWS drop
    /// reason show one; u32::MAX where the reason exists (not looked up) or it is absent.
    pub mib_ackskipped_paws: u32,
    /// tcp_sock.last_oow_ack_time: tcp_oow_rate_limited's last argument, back to its socket.
    pub tcp_last_oow_ack_time: u32,
    /// `LINUX_MIB_TCPACKSKIPPEDSYNRECV`: the mib index tcp_oow_rate_limited gets from a
    /// request socket (tcp_check_req), PAWS rejects among those calls; looked up only where
    /// tcp_check_req gives no drop reason (before ~6.15), u32::MAX otherwise.
    pub mib_ackskipped_synrecv: u32,
    /// tcp_request_sock.last_oow_ack_time: the same argument, back to its request socket.
    pub req_last_oow_ack_time: u32,
    /// enum tcp_tw_status TCP_TW_SYN (the SYN was accepted by the TIME-WAIT socket).
    pub tw_status_syn: u32,
    /// enum tcp_tw_status TCP_TW_RST (the TIME-WAIT socket answers with a reset and dies).
    pub tw_status_rst: u32,
    // tp_btf argument positions (from the btf_trace_* prototypes; u32::MAX = absent)
    pub btf_kfree_skb_reason_arg: u32,
    pub btf_kfree_skb_rx_sk_arg: u32,
    // struct timer_list -> expires
    pub timer_expires: u32,
    // struct sock -> sk_protocol
    pub sk_protocol: u32,
    // struct sock_common -> skc_nulls_node.pprev (NULL once unhashed from the established table)
    pub skc_nulls_pprev: u32,
    // struct net -> its reference count (0 while the namespace is being dismantled)
    pub net_refcount: u32,
    /// sk_buff.dev and net_device.nd_net: a dropped segment's namespace when no socket is named.
    pub skb_dev: u32,
    pub dev_nd_net: u32,
    /// Where an fexit program finds the return value: the slot after the function's arguments
    /// (their count from BTF; bpf_get_func_ret would need 5.17). u32::MAX: function absent.
    pub ret_slot_tw_process: u32,
    pub ret_slot_hash_connect: u32,
    pub ret_slot_twsk_alloc: u32,
    /// 1 where `tcp:tcp_send_reset` fires for resets a TIME-WAIT socket sends (6.10+, seen by
    /// its `reason` field): only there can the tracepoint route tell a reset kill from a SYN
    /// replacing the socket; elsewhere such kills read `unknown`.
    pub tw_rst_traced: u32,
    /// inet_sock.inet_sport: a closing socket's local port after the kernel released skc_num.
    pub inet_sport: u32,
    /// sock_common.skc_hash: set only when a connecting socket gets its 4-tuple (inet_ehash_insert
    /// or the established-table check), so still 0 (sk_alloc zeroes) at the close of a connect()
    /// that failed with EADDRNOTAVAIL.
    pub skc_hash: u32,
    /// Sizes of struct inet_timewait_sock and struct request_sock: where a direct load
    /// through a BTF-typed pointer of that type must end (the verifier refuses one beyond, e.g.
    /// tcp_timewait_sock's tw_ts_recent behind an inet_timewait_sock argument).
    pub tw_size: u32,
    pub req_size: u32,
    /// sock.sk_err: set (ETIMEDOUT) before a socket whose retransmits timed out is closed, which
    /// on the tracepoint routes tells such a close from a refused TIME-WAIT. The last u32 field:
    /// an even number of them keeps the u64 fields below 8-byte aligned (see the assertion after
    /// the struct).
    pub sk_err: u32,
    /// Address of `tw_timer_handler` (kallsyms): the filter for TIME-WAIT timers.
    pub tw_timer_handler: u64,
    /// Address of `reqsk_timer_handler`: the filter for request-socket (SYN) timers.
    pub reqsk_timer_handler: u64,
    /// Call-chain classifier table.
    pub ranges: [CodeRange; MAX_CODE_RANGES],
}

impl KernelLayout {
    pub const fn zeroed() -> Self {
        Self {
            skc_daddr: 0,
            skc_rcv_saddr: 0,
            skc_dport: 0,
            skc_num: 0,
            skc_family: 0,
            skc_net: 0,
            skc_v6_daddr: 0,
            skc_v6_rcv_saddr: 0,
            tw_common: 0,
            tw_substate: 0,
            tw_timer: 0,
            timer_function: 0,
            net_ns_inum: 0,
            tp_timer_start_timer: 0,
            tp_timer_start_function: 0,
            tp_timer_start_expires: 0,
            tp_timer_start_now: 0,
            tp_timer_cancel_timer: 0,
            tp_timer_expire_timer: 0,
            tp_timer_expire_function: 0,
            tp_set_state_skaddr: 0,
            tp_set_state_oldstate: 0,
            tp_set_state_newstate: 0,
            tp_set_state_protocol: 0,
            timer_entry_pprev: 0,
            tp_receive_reset_skaddr: 0,
            tp_send_reset_skaddr: 0,
            skc_state: 0,
            skb_head: 0,
            skb_network_header: 0,
            skb_transport_header: 0,
            tw_ts_recent: 0,
            tcp_ts_recent: 0,
            req_timer: 0,
            req_ts_recent: 0,
            req_rcv_isn: 0,
            req_num_retrans: 0,
            req_num_timeout_shift: 0,
            req_num_timeout_mask: 0,
            ireq_tstamp_ok_bit: 0,
            tp_kfree_skb_skbaddr: 0,
            tp_kfree_skb_protocol: 0,
            tp_kfree_skb_reason: 0,
            tp_kfree_skb_rx_sk: 0,
            reason_not_specified: 0,
            reason_paws: 0,
            reason_paws_ack: 0,
            reason_tw_paws: 0,
            reason_tsecr: 0,
            mib_ackskipped_paws: 0,
            tcp_last_oow_ack_time: 0,
            mib_ackskipped_synrecv: 0,
            req_last_oow_ack_time: 0,
            tw_status_syn: 0,
            tw_status_rst: 0,
            inet_sport: 0,
            skc_hash: 0,
            tw_size: 0,
            req_size: 0,
            sk_err: 0,
            btf_kfree_skb_reason_arg: 0,
            btf_kfree_skb_rx_sk_arg: 0,
            timer_expires: 0,
            sk_protocol: 0,
            skc_nulls_pprev: 0,
            net_refcount: 0,
            skb_dev: 0,
            dev_nd_net: 0,
            ret_slot_tw_process: 0,
            ret_slot_hash_connect: 0,
            ret_slot_twsk_alloc: 0,
            tw_rst_traced: 0,
            tw_timer_handler: 0,
            reqsk_timer_handler: 0,
            ranges: [CodeRange {
                start: 0,
                end: 0,
                class: 0,
            }; MAX_CODE_RANGES],
        }
    }
}

// Both structs are copied as raw bytes between kernel and user space: no implicit padding.
const _: () = assert!(core::mem::size_of::<Event>() == 96);
const _: () = assert!(
    core::mem::offset_of!(KernelLayout, tw_timer_handler)
        == core::mem::offset_of!(KernelLayout, sk_err) + 4,
    "an even number of u32 fields must precede the u64 ones (add a `_pad: u32` after sk_err)"
);

/// Which signals the shared programs serve (bits of the `ROUTES` map, written by user space once
/// each signal's hook is chosen: a tp_btf dispatcher may be attached for one signal while
/// another signal on the same tracepoint uses a function probe). One byte per family: tp_btf
/// (the signal bits themselves), fentry, classic tracepoints, kprobes.
pub mod route {
    pub const TW_ENTER: u32 = 1;
    pub const TW_EXIT: u32 = 2;
    pub const TW_OVERFLOW: u32 = 4;
    pub const PORT_EXHAUSTION: u32 = 8;
    pub const PAWS: u32 = 16;
    pub const SYN: u32 = 32;
    /// Keep live TIME-WAITs by connection (kernels whose kfree_skb names no socket, where the
    /// tp_btf route serves PAWS rejects or TIME-WAIT exits): see twtrace-ebpf/src/tw_flows.rs.
    pub const TW_FLOWS: u32 = 64;
    /// Function-probe routes, where TIME-WAIT exits and SYNs are both served by fentry or
    /// kprobe programs: a TIME-WAIT replaced by a SYN waits in this CPU's `PARKED` slot for
    /// that SYN, whose program then writes both as one record (as the tp_btf route does).
    /// Cleared first at shutdown, so that the slots can be read without racing the programs.
    pub const MERGE_EXIT_SYN: u32 = 128;

    /// The bit of signal `bit` served by the classic tracepoint route. Its programs are also
    /// attached for other signals' sake (`TW_TIMER_START` for tw_overflow, `TW_TIMER_CANCEL`
    /// for tw_enter): they report only what these bits say is traced there.
    pub const fn classic(bit: u32) -> u32 {
        bit << 16
    }

    /// The bit of signal `bit` served by fentry/fexit programs. Only the programs shared by
    /// two signals read these (`tcp_timewait_state_process`'s exit serves tw_exit's verdict
    /// and PAWS at TIME-WAIT): each serves what the signals that chose its family ask for.
    pub const fn fentry(bit: u32) -> u32 {
        bit << 8
    }

    /// The bit of signal `bit` served by kprobe programs (see [`fentry`]).
    pub const fn kprobe(bit: u32) -> u32 {
        bit << 24
    }
}

/// What tells one TIME-WAIT socket from another allocated in its memory: its port pair
/// (skc_portpair: the remote port, then the local one, as read from skc_dport's offset) and its
/// skc_hash, which mixes in both addresses (IPv6 too) and the namespace. Two flows on the same
/// ports differ in hash but for a 2^-32 chance; the ports alone told apart neither clients on
/// the same source port behind different addresses nor the same flow in two namespaces.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct SocketIdentity {
    pub ports: u32,
    pub hash: u32,
}

/// tp_btf route of TW exit: a TIME-WAIT timer cancelled on this CPU whose meaning (expiry,
/// re-arm, kill by SYN or RST) is told by what the kernel does next on the same CPU. `ev` is the
/// exit event, filled while the socket was still intact; `timer == 0` means the slot is free.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct PendingExit {
    pub timer: u64,
    /// tp_btf route: 1 while the cancel is the last timer event on this CPU. A re-arm cancels
    /// and starts its timer back to back (one call, base lock held, interrupts off); a start
    /// of that timer after any other timer started is a new TIME-WAIT in the freed socket's
    /// memory.
    pub rearmable: u32,
    /// The cancelled socket's identity (see `SocketIdentity`): a re-arm starts the timer of the
    /// same socket; a new TIME-WAIT in its memory right after an end nothing announced (a SYN
    /// dropped by a full accept queue) is another flow, even where its ports are the same.
    pub id: SocketIdentity,
    pub ev: Event,
}

/// Run-time settings for the kernel side, injected with `override_global("SETTINGS")`.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct Settings {
    /// Wake the reader once this many bytes are waiting in the ring (events are submitted with
    /// BPF_RB_NO_WAKEUP; user space also polls on a short timer).
    pub wakeup_bytes: u64,
    /// Only report this network namespace (0 = all).
    pub netns_filter: u32,
    /// `--hooks-only`: non-zero makes every program but the tp_btf dispatchers return at once.
    pub hooks_only: u32,
}

impl Settings {
    pub const fn default_const() -> Self {
        Self {
            wakeup_bytes: 64 * 1024,
            netns_filter: 0,
            hooks_only: 0,
        }
    }
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY: plain #[repr(C)] data with no padding-dependent invariants.
    unsafe impl aya::Pod for super::Event {}
    unsafe impl aya::Pod for super::KernelLayout {}
    unsafe impl aya::Pod for super::Settings {}
    unsafe impl aya::Pod for super::CodeRange {}
    unsafe impl aya::Pod for super::PendingExit {}
}
