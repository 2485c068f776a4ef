//! Reading a TCP segment (addresses, ports, flags, TSval) from an `sk_buff` or a TCP header
//! pointer, with offsets from BTF. Used where the kernel hands us a segment it dropped.

use aya_ebpf::helpers::bpf_probe_read_kernel_buf;
use twtrace_common::{AF_INET, AF_INET6};

use crate::{
    kernel::{read, v4_in_16},
    layout,
};

/// TCP header plus the longest option space.
const TCP_MAX_HDR: usize = 60;
/// Copy buffer: a power of two above TCP_MAX_HDR, so indices can be masked into it.
const BUF: usize = 64;
const TCPOPT_EOL: u8 = 0;
const TCPOPT_NOP: u8 = 1;
const TCPOPT_MSS: u8 = 2;
const TCPOPT_SACK_PERM: u8 = 4;
const TCPOPT_TIMESTAMP: u8 = 8;
const TCPOLEN_TIMESTAMP: u8 = 10;

pub struct Segment {
    pub family: u8,
    pub saddr: [u8; 16],
    pub daddr: [u8; 16],
    pub sport: u16,
    pub dport: u16,
    pub seq: u32,
    pub flags: u8,
    pub tsval: Option<u32>,
}

/// Where the IP and TCP headers of `skb` are (network and transport headers must be set, as
/// they are anywhere past IP receive).
#[inline(always)]
unsafe fn headers(skb: u64) -> Option<(u64, u64)> {
    let head: u64 = unsafe { read(skb, layout!(skb_head))? };
    let nh: u16 = unsafe { read(skb, layout!(skb_network_header))? };
    let th: u16 = unsafe { read(skb, layout!(skb_transport_header))? };
    Some((head + nh as u64, head + th as u64))
}

/// Reads the addresses of the IP header at `ip` into `saddr` and `daddr` (IPv4 in the first
/// four bytes; the rest left as they are) and returns the family. Written in place: the
/// callers' frames are near the BPF stack limit.
#[inline(always)]
unsafe fn ip_addresses(ip: u64, saddr: &mut [u8; 16], daddr: &mut [u8; 16]) -> Option<u8> {
    let version: u8 = unsafe { read::<u8>(ip, 0)? } >> 4;
    if version == 6 {
        *saddr = unsafe { read(ip, 8)? };
        *daddr = unsafe { read(ip, 24)? };
        Some(AF_INET6)
    } else if version == 4 {
        *saddr = v4_in_16(unsafe { read(ip, 12)? });
        *daddr = v4_in_16(unsafe { read(ip, 16)? });
        Some(AF_INET)
    } else {
        None
    }
}

/// Parses the IP and TCP headers of `skb`.
#[inline(always)]
pub unsafe fn from_skb(skb: u64) -> Option<Segment> {
    let (ip, th) = unsafe { headers(skb)? };
    let mut seg = unsafe { tcp_header(th)? };
    seg.family = unsafe { ip_addresses(ip, &mut seg.saddr, &mut seg.daddr)? };
    Some(seg)
}

/// A segment's connection: family, addresses and ports (host order), nothing more.
pub struct Addresses {
    pub family: u8,
    pub saddr: [u8; 16],
    pub daddr: [u8; 16],
    pub sport: u16,
    pub dport: u16,
}

/// The connection of the segment in `skb`, without parsing its options (cheaper than
/// [`from_skb`], for lookups on every unexplained drop).
#[inline(always)]
pub unsafe fn addresses_of(skb: u64) -> Option<Addresses> {
    let (ip, th) = unsafe { headers(skb)? };
    let mut a = Addresses {
        family: 0,
        saddr: [0; 16],
        daddr: [0; 16],
        sport: 0,
        dport: 0,
    };
    a.family = unsafe { ip_addresses(ip, &mut a.saddr, &mut a.daddr)? };
    let ports: [u8; 4] = unsafe { read(th, 0)? };
    a.sport = u16::from_be_bytes([ports[0], ports[1]]);
    a.dport = u16::from_be_bytes([ports[2], ports[3]]);
    Some(a)
}

/// Parses a TCP header at `th` (ports, seq, flags, TSval); addresses are left zero.
#[inline(always)]
pub unsafe fn tcp_header(th: u64) -> Option<Segment> {
    // Filled by the helper, not zeroed first: a zeroing loop costs the verifier dearly in
    // the programs that also run the option loop below.
    let mut buf = core::mem::MaybeUninit::<[u8; BUF]>::uninit();
    // SAFETY: bpf_probe_read_kernel writes every byte of the destination (zeros on failure).
    let buf = unsafe {
        let p = buf.as_mut_ptr() as *mut core::ffi::c_void;
        aya_ebpf::helpers::generated::bpf_probe_read_kernel(p, BUF as u32, th as *const _);
        buf.assume_init()
    };
    // The option space may run past the segment's end; the read then fails as a whole (the
    // helper zeroes the buffer) and the fixed header is read alone.
    let mut avail = TCP_MAX_HDR;
    let mut buf = buf;
    if buf[12] == 0 {
        unsafe { bpf_probe_read_kernel_buf(th as *const u8, &mut buf[..20]) }.ok()?;
        avail = 20;
    }
    let doff = ((buf[12] >> 4) as usize * 4).min(avail);
    Some(Segment {
        family: 0,
        saddr: [0; 16],
        daddr: [0; 16],
        sport: u16::from_be_bytes([buf[0], buf[1]]),
        dport: u16::from_be_bytes([buf[2], buf[3]]),
        seq: u32::from_be_bytes([buf[4], buf[5], buf[6], buf[7]]),
        flags: buf[13],
        tsval: tsval(&buf, doff, th),
    })
}

/// Finds the timestamp option between byte 20 and `end` of the TCP header at `th` (copied in
/// `buf`). The two layouts Linux sends (SYN: MSS, SACK-permitted, TS; others: NOP, NOP, TS)
/// are checked at fixed offsets; anything else is walked with reads from the kernel at computed
/// addresses, never at a variable offset into the stack copy (older verifiers refuse that).
#[inline(always)]
fn tsval(buf: &[u8; BUF], end: usize, th: u64) -> Option<u32> {
    let be = |o: usize| u32::from_be_bytes([buf[o], buf[o + 1], buf[o + 2], buf[o + 3]]);
    if end >= 32 && buf[20] == TCPOPT_NOP && buf[21] == TCPOPT_NOP && is_ts(buf[22], buf[23]) {
        return Some(be(24));
    }
    if end >= 36 && buf[20] == TCPOPT_MSS && buf[24] == TCPOPT_SACK_PERM && is_ts(buf[26], buf[27])
    {
        return Some(be(28));
    }
    let mut i = 20u32;
    // Real option lists are short (a SYN carries 5, with NOPs 6); 12 steps cover any sane
    // segment and keep the verifier's work bounded.
    for _ in 0..12 {
        if i as usize >= end {
            return None;
        }
        let kind: u8 = unsafe { read(th, i)? };
        match kind {
            TCPOPT_EOL => return None,
            TCPOPT_NOP => i += 1,
            _ => {
                let len: u8 = unsafe { read(th, i + 1)? };
                if is_ts(kind, len) {
                    if i as usize + TCPOLEN_TIMESTAMP as usize > end {
                        return None;
                    }
                    let raw: u32 = unsafe { read(th, i + 2)? };
                    return Some(u32::from_be(raw));
                }
                if len < 2 {
                    return None;
                }
                i += u32::from(len);
            }
        }
    }
    None
}

#[inline(always)]
fn is_ts(kind: u8, len: u8) -> bool {
    kind == TCPOPT_TIMESTAMP && len == TCPOLEN_TIMESTAMP
}
