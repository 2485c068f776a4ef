//! The key of the eBPF side's table of live TIME-WAITs by connection (twtrace-ebpf's
//! tw_flows.rs), shared so that its IPv4-mapped fold is unit-tested here.

use crate::{AF_INET, AF_INET6};

/// A connection seen from its local side: the key of the eBPF side's table of live TIME-WAITs
/// by connection (twtrace-ebpf/src/tw_flows.rs), used where kfree_skb names no dropping socket.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FlowKey {
    pub netns: u32,
    pub lport: u16,
    pub rport: u16,
    pub family: u8,
    /// Padding as two plain fields: a `[u8; 3]` of zeros compiles to a `memset` call in BPF.
    pub _pad1: u8,
    pub _pad2: u16,
    pub laddr: [u8; 16],
    pub raddr: [u8; 16],
}

/// `::ffff:0:0/96`: an IPv4 peer of a dual-stack (AF_INET6) socket.
const V4_MAPPED: [u8; 12] = [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff];

impl FlowKey {
    /// The key of a connection (IPv4 addresses in the first four bytes). IPv4-mapped IPv6
    /// addresses are folded to IPv4: a dual-stack socket's TIME-WAIT is AF_INET6, the segments
    /// that reach it are IPv4, and both must find the same key.
    #[inline(always)]
    pub fn new(
        netns: u32,
        family: u8,
        lport: u16,
        rport: u16,
        laddr: &[u8; 16],
        raddr: &[u8; 16],
    ) -> Self {
        let mut k = Self {
            netns,
            lport,
            rport,
            family,
            _pad1: 0,
            _pad2: 0,
            laddr: *laddr,
            raddr: *raddr,
        };
        if family == AF_INET6 && laddr[..12] == V4_MAPPED && raddr[..12] == V4_MAPPED {
            k.family = AF_INET;
            k.laddr = v4_in_16([laddr[12], laddr[13], laddr[14], laddr[15]]);
            k.raddr = v4_in_16([raddr[12], raddr[13], raddr[14], raddr[15]]);
        }
        k
    }
}

/// An IPv4 address in the 16-byte form events and keys carry (the address first, zeros
/// after), built with two 8-byte stores. In BPF, `[0; 16]` followed by a 4-byte copy compiles
/// to a call of the object's byte-at-a-time `memset` (about 50 instructions per address).
#[inline(always)]
pub fn v4_in_16(a: [u8; 4]) -> [u8; 16] {
    let first = u64::from_ne_bytes([a[0], a[1], a[2], a[3], 0, 0, 0, 0]);
    // SAFETY: two u64 are 16 initialised bytes, in memory order.
    unsafe { core::mem::transmute::<[u64; 2], [u8; 16]>([first, 0]) }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v4(a: [u8; 4]) -> [u8; 16] {
        let mut b = [0; 16];
        b[..4].copy_from_slice(&a);
        b
    }

    fn mapped(a: [u8; 4]) -> [u8; 16] {
        let mut b = [0; 16];
        b[10] = 0xff;
        b[11] = 0xff;
        b[12..].copy_from_slice(&a);
        b
    }

    /// A dual-stack socket's TIME-WAIT (AF_INET6, mapped addresses) and the IPv4 segment that
    /// reaches it find the same entry.
    #[test]
    fn v4_in_16_puts_the_address_first() {
        assert_eq!(v4_in_16([10, 0, 0, 1]), v4([10, 0, 0, 1]));
        assert_eq!(v4_in_16([255, 254, 253, 252]), v4([255, 254, 253, 252]));
    }

    #[test]
    fn mapped_timewait_and_ipv4_segment_share_a_key() {
        let (l, r) = ([10, 0, 0, 1], [192, 0, 2, 7]);
        let tw = FlowKey::new(7, AF_INET6, 80, 40000, &mapped(l), &mapped(r));
        let seg = FlowKey::new(7, AF_INET, 80, 40000, &v4(l), &v4(r));
        assert_eq!(tw, seg);
        assert_eq!(tw.family, AF_INET);
    }

    /// Real IPv6 addresses stay IPv6; one mapped side alone is not folded; namespaces and
    /// ports tell connections apart.
    #[test]
    fn other_keys_stay_apart() {
        let mut l6 = [0u8; 16];
        l6[0] = 0x20;
        l6[1] = 0x01;
        l6[15] = 1;
        let k = FlowKey::new(7, AF_INET6, 80, 40000, &l6, &mapped([192, 0, 2, 7]));
        assert_eq!(k.family, AF_INET6);
        assert_eq!(k.laddr, l6);
        let a = FlowKey::new(
            7,
            AF_INET,
            80,
            40000,
            &v4([10, 0, 0, 1]),
            &v4([192, 0, 2, 7]),
        );
        let other_ns = FlowKey { netns: 8, ..a };
        let other_port = FlowKey { rport: 40001, ..a };
        assert_ne!(a, other_ns);
        assert_ne!(a, other_port);
    }
}
