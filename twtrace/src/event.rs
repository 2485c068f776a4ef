//! The decoded, kernel-independent event model. Decoders (one per signal, in `signals/`) turn
//! raw ring-buffer records into these; the aggregation core and every sink consume only these.

use std::net::{IpAddr, SocketAddr};

/// Why a TIME-WAIT socket ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ExitCause {
    Expired,
    ReplacedBySyn,
    KilledByRst,
    Reused,
    Purged,
    /// The kernel gave no context that tells the cause apart. Never a guess.
    Unknown,
}

impl ExitCause {
    pub const ALL: [ExitCause; 6] = [
        ExitCause::Expired,
        ExitCause::ReplacedBySyn,
        ExitCause::KilledByRst,
        ExitCause::Reused,
        ExitCause::Purged,
        ExitCause::Unknown,
    ];

    /// The name used in JSON, CSV and table headers.
    pub fn as_str(self) -> &'static str {
        match self {
            ExitCause::Expired => "expired",
            ExitCause::ReplacedBySyn => "replaced_by_syn",
            ExitCause::KilledByRst => "killed_by_rst",
            ExitCause::Reused => "reused",
            ExitCause::Purged => "purged",
            ExitCause::Unknown => "unknown",
        }
    }
}

/// TIME-WAIT substate (a timewait socket stands in for FIN_WAIT2 or TIME_WAIT).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Substate {
    FinWait2,
    TimeWait,
}

impl Substate {
    pub fn as_str(self) -> &'static str {
        match self {
            Substate::FinWait2 => "FIN_WAIT2",
            Substate::TimeWait => "TIME_WAIT",
        }
    }
}

/// Where a PAWS reject happened.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum PawsPath {
    Timewait,
    Established,
    SynRecv,
    SynSent,
}

impl PawsPath {
    pub const ALL: [PawsPath; 4] = [
        PawsPath::Timewait,
        PawsPath::Established,
        PawsPath::SynRecv,
        PawsPath::SynSent,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            PawsPath::Timewait => "timewait",
            PawsPath::Established => "established",
            PawsPath::SynRecv => "syn_recv",
            PawsPath::SynSent => "syn_sent",
        }
    }
}

/// What a TIME-WAIT socket did with a SYN for its 4-tuple.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum TwSynVerdict {
    /// Accepted because its TSval is newer than the socket's ts_recent.
    AcceptedByTimestamp,
    /// Accepted because its sequence number is after the socket's rcv_nxt.
    AcceptedBySequence,
    /// Refused by PAWS (also reported as a `paws_reject` with path `timewait`).
    RejectedPaws,
    /// Refused for another reason (no newer TSval, sequence not after rcv_nxt).
    RejectedOther,
}

impl TwSynVerdict {
    pub const ALL: [TwSynVerdict; 4] = [
        TwSynVerdict::AcceptedByTimestamp,
        TwSynVerdict::AcceptedBySequence,
        TwSynVerdict::RejectedPaws,
        TwSynVerdict::RejectedOther,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            TwSynVerdict::AcceptedByTimestamp => "accepted_by_timestamp",
            TwSynVerdict::AcceptedBySequence => "accepted_by_sequence",
            TwSynVerdict::RejectedPaws => "rejected_paws",
            TwSynVerdict::RejectedOther => "rejected_other",
        }
    }
}

/// `ts_recent - tsval` as the kernel compares them (32-bit wrapping, signed): positive means
/// the segment's clock is behind the socket's, by that many timestamp ticks.
pub fn regression(ts_recent: u32, tsval: u32) -> i64 {
    i64::from(ts_recent.wrapping_sub(tsval) as i32)
}

/// What happened, with the fields specific to each kind.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum What {
    /// A socket entered TIME-WAIT (or its FIN_WAIT2 stand-in).
    TwEnter { substate: Substate, timeout_ms: u64 },
    /// A TIME-WAIT socket that existed when tracing started (its entry was not traced).
    /// `server`: its local port had a listener then, so it is a server's TIME-WAIT (as a SYN
    /// arriving at that port would tell the aggregate later).
    TwPresent { substate: Substate, server: bool },
    /// A port that had a listener when tracing started (`local`; `remote` is unspecified).
    /// Start-up knowledge for the aggregate (TIME-WAITs on that port are a server's), read
    /// with the TIME-WAITs already present; not an event, so no sink prints it.
    Listening,
    /// The live counts start over from a read of the kernel's own TIME-WAIT sockets, which
    /// follows as `TwPresent` records (events were lost, so some enters or exits went
    /// unseen). `ts_ns` is when the read began. Knowledge for the aggregate, not an event.
    LiveReset,
    /// A TIME-WAIT socket ended. `lifetime_ns` is None when its entry was not observed
    /// (it predates twtrace, or the in-kernel live table was full).
    TwExit {
        cause: ExitCause,
        lifetime_ns: Option<u64>,
    },
    /// Closed without TIME-WAIT because `net.ipv4.tcp_max_tw_buckets` was full.
    TwOverflow,
    /// connect() failed with EADDRNOTAVAIL toward `remote`.
    ConnectAddrNotAvail { pid: u32 },
    /// `count` events of `program` never reached user space, for `reason`.
    Lost {
        program: &'static str,
        count: u64,
        reason: LossReason,
    },
    /// A segment dropped by a PAWS check. `local` is the receiver.
    PawsReject {
        path: PawsPath,
        tsval: Option<u32>,
        ts_recent: Option<u32>,
        tcp_flags: u8,
        /// A pure ACK from before the socket's receive point (drop reason
        /// TCP_RFC7323_PAWS_ACK, 6.14+): reordering, not a clock; the kernel counts it apart
        /// (TcpExtPAWSOldAck).
        old_ack: bool,
    },
    /// A SYN reached a listener; `tsval` is None when it carried no timestamp.
    Syn { tsval: Option<u32> },
    /// A SYN reached a TIME-WAIT socket, and this is what the socket did with it.
    TwSyn {
        verdict: TwSynVerdict,
        tsval: Option<u32>,
        ts_recent: Option<u32>,
    },
}

/// TCP header flag bits, as segments carry them (`PawsReject::tcp_flags`).
pub mod th {
    pub const SYN: u8 = 0x02;
    pub const RST: u8 = 0x04;
    pub const ACK: u8 = 0x10;
}

/// Why records were lost (`lost` records say it as `reason`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LossReason {
    /// A program found the ring buffer full: `count` is events.
    RingFull,
    /// A bounded table (the kernel's live TIME-WAITs, or `--max-live-tw`) had no room: `count`
    /// is events whose pairing or lookup was lost.
    TableFull,
    /// The kernel skipped `count` runs of the program, because a BPF program was already
    /// running on that CPU (an interrupt nested in it). Each may have carried an event.
    SkippedRuns,
}

impl LossReason {
    pub fn as_str(self) -> &'static str {
        match self {
            LossReason::RingFull => "ring_full",
            LossReason::TableFull => "table_full",
            LossReason::SkippedRuns => "skipped_runs",
        }
    }
}

/// One decoded event.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Record {
    /// CLOCK_MONOTONIC nanoseconds (the kernel's `bpf_ktime_get_ns`).
    pub ts_ns: u64,
    /// Network namespace inode number; 0 when unknown (e.g. `Lost`).
    pub netns: u32,
    /// Local endpoint. For `ConnectAddrNotAvail` the port is 0 (none could be bound).
    pub local: SocketAddr,
    /// Remote endpoint.
    pub remote: SocketAddr,
    pub what: What,
}

impl Record {
    /// `count` events `program` lost, for `reason`, as found at `ts_ns` (CLOCK_MONOTONIC).
    pub fn lost(ts_ns: u64, program: &'static str, count: u64, reason: LossReason) -> Self {
        let what = What::Lost {
            program,
            count,
            reason,
        };
        Self::without_endpoints(ts_ns, what)
    }

    pub fn family(&self) -> &'static str {
        match self.remote.ip() {
            IpAddr::V4(_) => "ipv4",
            IpAddr::V6(_) => "ipv6",
        }
    }

    /// The live counts start over at `ts_ns` (see [`What::LiveReset`]).
    pub fn live_reset(ts_ns: u64) -> Self {
        Self::without_endpoints(ts_ns, What::LiveReset)
    }

    /// A record about no socket (netns 0, both endpoints 0.0.0.0:0).
    fn without_endpoints(ts_ns: u64, what: What) -> Self {
        let nowhere = SocketAddr::from(([0, 0, 0, 0], 0));
        Record {
            ts_ns,
            netns: 0,
            local: nowhere,
            remote: nowhere,
            what,
        }
    }

    /// The JSON `type` of this record.
    pub fn type_name(&self) -> &'static str {
        match self.what {
            What::TwEnter { .. } => "tw_enter",
            What::TwPresent { .. } => "tw_present",
            What::Listening => "listening",
            What::LiveReset => "live_reset",
            What::TwExit {
                cause: ExitCause::Reused,
                ..
            } => "tw_reuse",
            What::TwExit { .. } => "tw_exit",
            What::TwOverflow => "tw_overflow",
            What::ConnectAddrNotAvail { .. } => "connect_eaddrnotavail",
            What::Lost { .. } => "lost",
            What::PawsReject { .. } => "paws_reject",
            What::Syn { .. } => "syn",
            What::TwSyn { .. } => "tw_syn",
        }
    }
}
