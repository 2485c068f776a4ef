//! Builds the [`KernelLayout`] the eBPF programs read: struct offsets from BTF, tracepoint record
//! offsets from tracefs, function addresses and extents from kallsyms. Nothing is hard-coded.

use anyhow::{Context as _, Result};
use twtrace_common::{CodeRange, KernelLayout, MAX_CODE_RANGES, frame_class as fc};

use super::{btf::KernelBtf, kallsyms::Kallsyms, tracefs::Format};

/// Functions whose presence in a call chain names a TIME-WAIT event's context. A function
/// missing on some kernel (renamed, inlined) only makes the matching cause `unknown`.
pub const FRAME_FUNCTIONS: &[(u8, &str)] = &[
    (fc::REARM, "__mod_timer"),
    (fc::EXPIRE, "__run_timers"),
    (fc::EXPIRE, "run_timer_softirq"),
    // Innermost where a timer callback tail-calls the kill (5.10's tw_timer_handler): only
    // timer callbacks run under it.
    (fc::EXPIRE, "call_timer_fn"),
    (fc::RCV, "tcp_v4_rcv"),
    (fc::RCV, "tcp_v6_rcv"),
    (fc::TW_PROCESS, "tcp_timewait_state_process"),
    (fc::CONNECT_REUSE, "__inet_check_established"),
    (fc::CONNECT_REUSE, "__inet6_check_established"),
    (fc::CONNECT_REUSE, "__inet_hash_connect"),
    (fc::PURGE, "inet_twsk_purge"),
];

/// The struct offsets every hook needs.
pub fn struct_offsets(btf: &KernelBtf, layout: &mut KernelLayout) -> Result<()> {
    let sc = |m: &str| btf.member_offset("sock_common", m);
    layout.skc_daddr = sc("skc_daddr")?;
    layout.skc_rcv_saddr = sc("skc_rcv_saddr")?;
    layout.skc_dport = sc("skc_dport")?;
    layout.skc_num = sc("skc_num")?;
    layout.skc_family = sc("skc_family")?;
    layout.skc_net = sc("skc_net")?;
    layout.skc_v6_daddr = sc("skc_v6_daddr")?;
    layout.skc_v6_rcv_saddr = sc("skc_v6_rcv_saddr")?;
    layout.tw_common = btf.member_offset("inet_timewait_sock", "__tw_common")?;
    layout.tw_substate = btf.member_offset("inet_timewait_sock", "tw_substate")?;
    layout.tw_timer = btf.member_offset("inet_timewait_sock", "tw_timer")?;
    layout.timer_function = btf.member_offset("timer_list", "function")?;
    layout.timer_entry_pprev = btf.member_offset("timer_list", "entry.pprev")?;
    layout.net_ns_inum = btf.member_offset("net", "ns.inum")?;
    layout.skc_state = sc("skc_state")?;
    layout.skb_head = btf.member_offset("sk_buff", "head")?;
    layout.skb_network_header = btf.member_offset("sk_buff", "network_header")?;
    layout.skb_transport_header = btf.member_offset("sk_buff", "transport_header")?;
    layout.tw_ts_recent = btf.member_offset("tcp_timewait_sock", "tw_ts_recent")?;
    layout.tcp_ts_recent = btf.member_offset("tcp_sock", "rx_opt.ts_recent")?;
    layout.req_timer = btf.member_offset("request_sock", "rsk_timer")?;
    layout.req_ts_recent = btf.member_offset("request_sock", "ts_recent")?;
    layout.req_rcv_isn = btf.member_offset("tcp_request_sock", "rcv_isn")?;
    layout.req_num_retrans = btf.member_offset("request_sock", "num_retrans")?;
    (layout.req_num_timeout_shift, layout.req_num_timeout_mask) =
        num_timeout_in_word(btf, layout.req_num_retrans)?;
    layout.skb_dev = btf.member_offset("sk_buff", "dev")?;
    layout.dev_nd_net = btf.member_offset("net_device", "nd_net")?;
    layout.ireq_tstamp_ok_bit = btf.flag_bit_offset("inet_request_sock", "tstamp_ok")?;
    layout.timer_expires = btf.member_offset("timer_list", "expires")?;
    layout.sk_protocol = btf.member_offset("sock", "sk_protocol")?;
    layout.inet_sport = btf.member_offset("inet_sock", "inet_sport")?;
    layout.sk_err = btf.member_offset("sock", "sk_err")?;
    layout.skc_nulls_pprev = sc("skc_nulls_node.pprev")?;
    layout.skc_hash = sc("skc_hash")?;
    layout.tw_size = btf.struct_size("inet_timewait_sock")?;
    layout.req_size = btf.struct_size("request_sock")?;
    // The namespace's own reference count moved: net.count (< 5.17), net.ns.count, and
    // net.ns.__ns_ref (6.18+).
    layout.net_refcount = ["ns.__ns_ref", "ns.count", "count"]
        .iter()
        .find_map(|m| btf.member_offset("net", m).ok())
        .context(
            "struct net has no reference count twtrace knows (ns.__ns_ref, ns.count, count)",
        )?;
    tp_btf_args(btf, layout)?;
    let ret_slot = |f: &str| btf.func_params(f).map_or(u32::MAX, |p| p.len() as u32);
    layout.ret_slot_tw_process = ret_slot("tcp_timewait_state_process");
    layout.ret_slot_hash_connect = ret_slot("__inet_hash_connect");
    layout.ret_slot_twsk_alloc = ret_slot("inet_twsk_alloc");
    // Drop reasons came with 5.17 and the PAWS ones later: an absent one is u32::MAX, which no
    // drop carries, and the hooks that depend on it say so in the plan (`Need::DropReason`).
    let reason = |name: &str| drop_reason(btf, name).unwrap_or(u32::MAX);
    layout.reason_not_specified = reason("NOT_SPECIFIED");
    layout.reason_paws = reason("TCP_RFC7323_PAWS");
    layout.reason_paws_ack = reason("TCP_RFC7323_PAWS_ACK");
    layout.reason_tw_paws = reason("TCP_RFC7323_TW_PAWS");
    layout.reason_tsecr = reason("TCP_RFC7323_TSECR");
    // Without the PAWS reason (before 5.17/5.18), established-path rejects show as
    // tcp_oow_rate_limited(.., LINUX_MIB_TCPACKSKIPPEDPAWS, &tp->last_oow_ack_time): only
    // then is the anonymous enum scanned for it (a scan of every BTF type).
    let mib = |name: &str| {
        btf.enumerator(name)
            .and_then(|v| u32::try_from(v).ok())
            .unwrap_or(u32::MAX)
    };
    layout.mib_ackskipped_paws = if layout.reason_paws == u32::MAX {
        mib("LINUX_MIB_TCPACKSKIPPEDPAWS")
    } else {
        u32::MAX
    };
    layout.tcp_last_oow_ack_time = btf.member_offset("tcp_sock", "last_oow_ack_time")?;
    // Likewise a request socket's reject (tcp_check_req) wherever tcp_check_req has no drop
    // reason to give (before ~6.15): tcp_oow_rate_limited(.., LINUX_MIB_TCPACKSKIPPEDSYNRECV,
    // &tcp_rsk(req)->last_oow_ack_time), PAWS or not; the program redoes the PAWS test.
    layout.mib_ackskipped_synrecv = if check_req_has_reason(btf) {
        u32::MAX
    } else {
        mib("LINUX_MIB_TCPACKSKIPPEDSYNRECV")
    };
    layout.req_last_oow_ack_time = btf.member_offset("tcp_request_sock", "last_oow_ack_time")?;
    layout.tw_status_syn = btf
        .enum_value("tcp_tw_status", "TCP_TW_SYN")?
        .context("enum tcp_tw_status has no TCP_TW_SYN")? as u32;
    layout.tw_status_rst = btf
        .enum_value("tcp_tw_status", "TCP_TW_RST")?
        .context("enum tcp_tw_status has no TCP_TW_RST")? as u32;
    // The eBPF side reads these with fixed widths: refuse a kernel where they changed.
    for (s, m, size) in [
        ("sock_common", "skc_family", 2),
        ("sock_common", "skc_num", 2),
        ("sock_common", "skc_dport", 2),
        ("sock_common", "skc_daddr", 4),
        ("sock_common", "skc_hash", 4),
        ("sock_common", "skc_v6_daddr", 16),
        ("inet_timewait_sock", "tw_substate", 1),
        ("ns_common", "inum", 4),
        ("sock_common", "skc_state", 1),
        ("sk_buff", "network_header", 2),
        ("sk_buff", "transport_header", 2),
        ("tcp_timewait_sock", "tw_ts_recent", 4),
        ("tcp_sock", "rx_opt.ts_recent", 4),
        ("request_sock", "ts_recent", 4),
        ("tcp_request_sock", "rcv_isn", 4),
        ("sock", "sk_protocol", 2),
        ("inet_sock", "inet_sport", 2),
        ("sock", "sk_err", 4),
    ] {
        let got = btf.member_size(s, m)?;
        anyhow::ensure!(
            got == size,
            "{s}.{m} is {got} bytes on this kernel, twtrace reads {size}"
        );
    }
    Ok(())
}

/// `request_sock.num_timeout` as a shift and mask within the u32 the eBPF side reads at
/// `num_retrans` (byte `retrans_at`): one read for both counters.
fn num_timeout_in_word(btf: &KernelBtf, retrans_at: u32) -> Result<(u32, u32)> {
    let (bit, bits) = btf.bit_range("request_sock", "num_timeout")?;
    let shift = bit
        .checked_sub(8 * retrans_at)
        .filter(|&shift| bits > 0 && shift + bits <= 32)
        .with_context(|| {
            format!(
                "request_sock.num_timeout (bit {bit}, {bits} bits) is not within 4 bytes of \
                 num_retrans (byte {retrans_at})"
            )
        })?;
    Ok((shift, ((1u64 << bits) - 1) as u32))
}

/// The value of `SKB_DROP_REASON_<name>` on this kernel; None before 5.17 (no such enum) or
/// where that reason is younger than the kernel.
pub fn drop_reason(btf: &KernelBtf, name: &str) -> Option<u32> {
    let v = btf.enum_value("skb_drop_reason", &format!("SKB_DROP_REASON_{name}"));
    v.ok().flatten().map(|v| v as u32)
}

/// The function, and its parameter, whose presence says that a request socket's PAWS reject
/// carries a drop reason: tcp_check_req gained `drop_reason` (~6.15) and names
/// TCP_RFC7323_PAWS with it. Before, the reject reaches kfree_skb as NOT_SPECIFIED, at the
/// listener. (The plan's `Need::FuncParam` for the same thing uses these.)
pub const CHECK_REQ: &str = "tcp_check_req";
pub const CHECK_REQ_REASON_PARAM: &str = "drop_reason";

/// Whether this kernel's tcp_check_req names its drops (see [`CHECK_REQ`]).
pub fn check_req_has_reason(btf: &KernelBtf) -> bool {
    btf.func_params(CHECK_REQ)
        .is_some_and(|p| p.iter().any(|n| n == CHECK_REQ_REASON_PARAM))
}

/// Argument positions the tp_btf programs cannot take for granted: kfree_skb gained its reason
/// (5.17) and the dropping socket (6.12) over time; u32::MAX where absent (the program then
/// reads neither). The rest (timer, socket, states) have kept their first places since tp_btf
/// exists; a kernel where they moved fails the verifier.
fn tp_btf_args(btf: &KernelBtf, layout: &mut KernelLayout) -> Result<()> {
    let args = btf.tracepoint_args("kfree_skb")?;
    let find = |want: &str| args.iter().position(|a| a == want).map(|i| i as u32);
    layout.btf_kfree_skb_reason_arg = find("enum skb_drop_reason").unwrap_or(u32::MAX);
    layout.btf_kfree_skb_rx_sk_arg = find("struct sock *").unwrap_or(u32::MAX);
    Ok(())
}

/// Record offsets of the tracepoints the classic tracepoint route reads. A tracepoint whose
/// format cannot be read (no tracefs in a container, a field renamed) only rules out the
/// classic hooks that attach to it: returned as `(category, name, why)` for the plan, its
/// offsets left unset. The other routes need none.
pub fn tracepoint_offsets(layout: &mut KernelLayout) -> Vec<(&'static str, &'static str, String)> {
    type Reader = fn(&Format, &mut KernelLayout) -> Result<()>;
    let readers: [(&str, &str, Reader); 7] = [
        ("timer", "timer_start", |f, l| {
            l.tp_timer_start_timer = f.offset("timer")?;
            l.tp_timer_start_function = f.offset("function")?;
            l.tp_timer_start_expires = f.offset("expires")?;
            l.tp_timer_start_now = f.offset("now")?;
            Ok(())
        }),
        ("timer", "timer_cancel", |f, l| {
            l.tp_timer_cancel_timer = f.offset("timer")?;
            Ok(())
        }),
        ("timer", "timer_expire_entry", |f, l| {
            l.tp_timer_expire_timer = f.offset("timer")?;
            l.tp_timer_expire_function = f.offset("function")?;
            Ok(())
        }),
        ("sock", "inet_sock_set_state", |f, l| {
            l.tp_set_state_skaddr = f.offset("skaddr")?;
            l.tp_set_state_oldstate = f.offset("oldstate")?;
            l.tp_set_state_newstate = f.offset("newstate")?;
            l.tp_set_state_protocol = f.offset("protocol")?;
            Ok(())
        }),
        ("tcp", "tcp_receive_reset", |f, l| {
            l.tp_receive_reset_skaddr = f.offset("skaddr")?;
            Ok(())
        }),
        ("tcp", "tcp_send_reset", |f, l| {
            l.tp_send_reset_skaddr = f.offset("skaddr")?;
            // The same fact as tw_exit's tracepoint hook's `Need` (see signals/tw_exit.rs).
            l.tw_rst_traced = u32::from(f.offset("reason").is_ok());
            Ok(())
        }),
        ("skb", "kfree_skb", |f, l| {
            l.tp_kfree_skb_skbaddr = f.offset("skbaddr")?;
            l.tp_kfree_skb_protocol = f.offset("protocol")?;
            // `reason` (5.17+): without it no drop is wanted (every reason is u32::MAX).
            l.tp_kfree_skb_reason = f.offset("reason").unwrap_or(u32::MAX);
            // rx_sk (6.11+) names the socket that dropped the segment; without it a
            // TIME-WAIT socket's ts_recent is out of reach from this tracepoint.
            l.tp_kfree_skb_rx_sk = f.offset("rx_sk").unwrap_or(u32::MAX);
            Ok(())
        }),
    ];
    let mut unreadable = Vec::new();
    for (category, name, read) in readers {
        if let Err(e) = Format::load(category, name).and_then(|f| read(&f, layout)) {
            log::debug!("tracepoint {category}:{name}: {e:#}");
            unreadable.push((category, name, format!("{e:#}")));
        }
    }
    unreadable
}

/// Function addresses: the TIME-WAIT timer callback and the call-chain classifier table.
/// Returns the table and the names that could not be found.
pub fn code_ranges(
    syms: &Kallsyms,
    layout: &mut KernelLayout,
) -> Result<([CodeRange; MAX_CODE_RANGES], Vec<&'static str>)> {
    layout.tw_timer_handler = syms
        .addr("tw_timer_handler")
        .context("tw_timer_handler is not in /proc/kallsyms: cannot recognise TIME-WAIT timers")?;
    // Absent only on kernels without request-socket timers; the SYN hook then refuses itself.
    layout.reqsk_timer_handler = syms.addr("reqsk_timer_handler").unwrap_or(0);
    let mut ranges = [CodeRange::default(); MAX_CODE_RANGES];
    let mut missing = Vec::new();
    let mut n = 0;
    for &(class, name) in FRAME_FUNCTIONS {
        match syms.range(name) {
            Some(r) if n < MAX_CODE_RANGES => {
                ranges[n] = CodeRange {
                    start: r.start,
                    end: r.end,
                    class: class as u64,
                };
                n += 1;
            }
            _ => missing.push(name),
        }
    }
    Ok((ranges, missing))
}
