//! Maps shared by every program.

use aya_ebpf::{
    macros::map,
    maps::{Array, HashMap, PerCpuArray, RingBuf},
};
use twtrace_common::{FlowKey, LOSS_SLOTS, PendingExit, SocketIdentity};

/// The one transport to user space. Size is overridden at load time (`--ring-size`).
#[map]
pub static EVENTS: RingBuf = RingBuf::with_byte_size(4 * 1024 * 1024, 0);

/// Per-CPU counts of events that found no room in [`EVENTS`] (index: `LossSlot`).
#[map]
pub static LOSSES: PerCpuArray<u64> = PerCpuArray::with_max_entries(LOSS_SLOTS, 0);

/// What the kernel side remembers about a live TIME-WAIT socket.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct LiveTw {
    pub enter_ts: u64,
    /// A timer start at this address of a socket with another identity is a new TIME-WAIT, not
    /// a re-arm (see `tw_enter_timer_start`).
    pub id: SocketIdentity,
}

/// Live TIME-WAIT sockets keyed by the timewait sock's address. A plain hash (not LRU): an
/// evicted entry would make its next timer re-arm look like a new TIME-WAIT. When it is full the
/// enter is still reported and the loss is counted (`LossSlot::LiveTableFull`). Resized at load
/// time (`--max-live-tw`).
#[map]
pub static LIVE: HashMap<u64, LiveTw> = HashMap::with_max_entries(262_144, 0);

/// The last TIME-WAIT created on this CPU, so a following FIN_WAIT2/CLOSING -> CLOSE transition
/// of the same flow can be told apart from one whose TIME-WAIT was refused (overflow).
#[repr(C)]
#[derive(Clone, Copy)]
pub struct LastEnter {
    /// [0]: the mark of the call under way; [1]: of one nested in it (a softirq run at the
    /// local_bh_enable of a task's tcp_time_wait, FIN from the socket backlog, closes its own
    /// TIME-WAIT before the task's tcp_done). 0: consumed.
    pub ts_ns: [u64; 2],
    pub rport: [u16; 2],
    pub _pad: [u8; 4],
}

#[map]
pub static LAST_ENTER: PerCpuArray<LastEnter> = PerCpuArray::with_max_entries(1, 0);

/// kprobe route of TW overflow: the socket passed to `inet_twsk_alloc`, until it returns.
/// Per CPU (inet_twsk_alloc does not sleep), two deep: [0] for the call under way, [1] for
/// one nested in it (a task's call, FIN from the socket backlog, interrupted by a softirq's).
#[map]
pub static OVERFLOW_SK: PerCpuArray<u64> = PerCpuArray::with_max_entries(2, 0);

/// The last socket a reset was received or sent for, on this CPU (see tw_overflow.rs).
#[repr(C)]
#[derive(Clone, Copy)]
pub struct LastReset {
    pub sk: u64,
    pub ts_ns: u64,
    /// The socket's ports (host order) then: a freed socket's memory is often the next
    /// socket allocated on that CPU, within the marks' window, and its ports tell them apart
    /// (the remote port alone does not on the connecting side: one backend port for all).
    pub rport: u16,
    pub lport: u16,
    pub _pad: [u8; 4],
}

#[map]
pub static LAST_RESET: PerCpuArray<LastReset> = PerCpuArray::with_max_entries(1, 0);

/// Tracepoint routes of TW overflow: the last close reported as an overflow on this CPU, which
/// a reset of the same socket right after retracts (see `tw_overflow::reset_for`).
#[map]
pub static LAST_OVERFLOW: PerCpuArray<LastReset> = PerCpuArray::with_max_entries(1, 0);

/// Call-chain routes of TW exit: what the last TIME-WAIT socket to process a segment on this
/// CPU answered (`tcp_tw_status`), so that the kill `tcp_v{4,6}_rcv` performs right after it is
/// named: TCP_TW_SYN replaced by a SYN, TCP_TW_RST killed with a reset (see tw_exit.rs).
#[repr(C)]
#[derive(Clone, Copy)]
pub struct TwVerdict {
    /// The TIME-WAIT socket the verdict is about; 0 when none is recorded.
    pub tw: u64,
    /// `tcp_tw_status`, or [`TwVerdict::PENDING`] between a kprobe and its kretprobe.
    pub status: u32,
    pub _pad: u32,
    /// When a kill-announcing verdict (TCP_TW_SYN, TCP_TW_RST) was taken, for the function-probe
    /// routes' shortcut past the call chain (tw_exit.rs, `fresh_verdict`); 0 otherwise.
    pub at_ns: u64,
}

impl TwVerdict {
    pub const PENDING: u32 = u32::MAX;
    pub const NONE: TwVerdict = TwVerdict {
        tw: 0,
        status: Self::PENDING,
        _pad: 0,
        at_ns: 0,
    };
}

/// Function-probe kill route: the TIME-WAIT whose timer handler is running on this CPU, set at
/// `tw_timer_handler`'s entry and consumed by the `inet_twsk_kill` it always calls, so an
/// expiry is named without walking the call chain (see tw_exit.rs).
#[map]
pub static EXPIRING: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

#[map]
pub static TW_VERDICT: PerCpuArray<TwVerdict> = PerCpuArray::with_max_entries(1, 0);

/// kprobe route of PAWS: (tw, th) passed to `tcp_timewait_state_process`, until it returns.
#[map]
pub static TW_PROCESS_ARGS: PerCpuArray<[u64; 2]> = PerCpuArray::with_max_entries(1, 0);

/// The TIME-WAIT timer this CPU is re-arming (seen cancelled, restart imminent).
#[repr(C)]
#[derive(Clone, Copy)]
pub struct Rearming {
    pub timer: u64,
    pub ts_ns: u64,
    /// How long after `ts_ns` the start still counts as this re-arm's (see tw_exit.rs).
    pub window_ns: u64,
}

#[map]
pub static REARMING: PerCpuArray<Rearming> = PerCpuArray::with_max_entries(1, 0);

/// Which signals the shared tp_btf dispatchers serve (`twtrace_common::route` bits), written by
/// user space after the hook choice.
#[map]
pub static ROUTES: Array<u32> = Array::with_max_entries(1, 0);

/// tp_btf route of TW exit: the TIME-WAIT timer cancel on this CPU still waiting for what the
/// kernel does next (see tw_exit.rs).
#[map]
pub static PENDING: PerCpuArray<PendingExit> = PerCpuArray::with_max_entries(1, 0);

/// Function-probe routes: the exit of a TIME-WAIT replaced by a SYN, waiting on this CPU for
/// that SYN's program (`route::MERGE_EXIT_SYN`; `timer` holds the socket, 0 = free). Apart from
/// `PENDING`, which the tp_btf dispatchers may use for other signals at the same time.
#[map]
pub static PARKED: PerCpuArray<PendingExit> = PerCpuArray::with_max_entries(1, 0);

/// tp_btf route before 6.11: live TIME-WAITs (their address) by connection, so a dropped
/// segment finds the TIME-WAIT that dropped it (see tw_flows.rs). Resized at load time:
/// `--max-live-tw` where it is used, one entry elsewhere.
#[map]
pub static TW_BY_FLOW: HashMap<FlowKey, u64> = HashMap::with_max_entries(1, 0);
