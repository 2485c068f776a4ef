use super::*;
use std::sync::OnceLock;

/// Parsing vmlinux BTF takes a moment: share one parse across the tests.
fn kernel() -> &'static KernelBtf {
    static KERNEL: OnceLock<KernelBtf> = OnceLock::new();
    KERNEL.get_or_init(|| {
        KernelBtf::from_sysfs().unwrap_or_else(|e| {
            panic!("these tests need the running kernel's BTF ({VMLINUX}): {e:#}")
        })
    })
}

fn off(strukt: &str, path: &str) -> u32 {
    kernel()
        .member_offset(strukt, path)
        .unwrap_or_else(|e| panic!("member_offset({strukt}, {path}): {e:#}"))
}

fn size(strukt: &str, path: &str) -> u32 {
    kernel()
        .member_size(strukt, path)
        .unwrap_or_else(|e| panic!("member_size({strukt}, {path}): {e:#}"))
}

fn err_text<T>(r: Result<T>) -> String {
    match r {
        Ok(_) => panic!("expected an error"),
        Err(e) => format!("{e:#}"),
    }
}

/// An enumerator of an anonymous enum is found by its name alone. The kernel lists
/// /proc/net/netstat's TcpExt fields in `LINUX_MIB_*` order from 1 (0 is LINUX_MIB_NUM),
/// which checks the value independently of BTF.
/// The mib indexes the PAWS probes filter on, against the order of /proc/net/netstat's
/// TcpExt line (the kernel prints them in enum order, from index 1).
#[test]
fn anonymous_enumerators_are_found() {
    let netstat = std::fs::read_to_string("/proc/net/netstat").expect("/proc/net/netstat");
    let header = netstat
        .lines()
        .find(|l| l.starts_with("TcpExt:"))
        .expect("a TcpExt line");
    for (enumerator, counter) in [
        ("LINUX_MIB_TCPACKSKIPPEDPAWS", "TCPACKSkippedPAWS"),
        ("LINUX_MIB_TCPACKSKIPPEDSYNRECV", "TCPACKSkippedSynRecv"),
    ] {
        let value = kernel().enumerator(enumerator).expect("in BTF");
        let index = header
            .split_whitespace()
            .skip(1)
            .position(|f| f == counter)
            .unwrap_or_else(|| panic!("{counter} in TcpExt"));
        assert_eq!(value, index as i64 + 1, "{enumerator}");
    }
    assert_eq!(kernel().enumerator("LINUX_MIB_NO_SUCH_THING"), None);
}

#[test]
fn missing_btf_file_explains_the_kernel_config() {
    let e = err_text(KernelBtf::from_path("/nonexistent/btf/vmlinux"));
    assert_eq!(
        e,
        "no kernel BTF at /nonexistent/btf/vmlinux: twtrace needs a kernel built with CONFIG_DEBUG_INFO_BTF=y"
    );
}

#[test]
fn kernel_sock_common_layout() {
    // skc_daddr/skc_rcv_saddr share a union with skc_addrpair, skc_dport/skc_num with
    // skc_portpair: both sit inside anonymous structs inside anonymous unions.
    assert_eq!(
        off("sock_common", "skc_daddr"),
        off("sock_common", "skc_addrpair")
    );
    assert_eq!(
        off("sock_common", "skc_rcv_saddr"),
        off("sock_common", "skc_daddr") + 4
    );
    assert_eq!(
        off("sock_common", "skc_dport"),
        off("sock_common", "skc_portpair")
    );
    assert_eq!(
        off("sock_common", "skc_num"),
        off("sock_common", "skc_dport") + 2
    );
    // Independent source: the kernel sources. The first 18 bytes of sock_common have kept
    // this layout on every 64-bit kernel since 3.x (addrpair, hash, portpair, family).
    assert_eq!(off("sock_common", "skc_daddr"), 0);
    assert_eq!(off("sock_common", "skc_rcv_saddr"), 4);
    assert_eq!(off("sock_common", "skc_hash"), 8);
    assert_eq!(off("sock_common", "skc_dport"), 12);
    assert_eq!(off("sock_common", "skc_num"), 14);
    assert_eq!(off("sock_common", "skc_family"), 16);

    assert_eq!(size("sock_common", "skc_addrpair"), 8);
    assert_eq!(size("sock_common", "skc_daddr"), 4);
    assert_eq!(size("sock_common", "skc_rcv_saddr"), 4);
    assert_eq!(size("sock_common", "skc_dport"), 2);
    assert_eq!(size("sock_common", "skc_num"), 2);
    assert_eq!(size("sock_common", "skc_family"), 2);
    assert_eq!(size("sock_common", "skc_state"), 1); // volatile unsigned char
    assert_eq!(size("sock_common", "skc_v6_daddr"), 16);
    assert_eq!(size("sock_common", "skc_v6_rcv_saddr"), 16);
    assert_eq!(
        off("sock_common", "skc_v6_rcv_saddr"),
        off("sock_common", "skc_v6_daddr") + 16
    );
    // possible_net_t is a typedef of an anonymous struct { struct net *net; }.
    assert_eq!(size("sock_common", "skc_net"), 8);
    assert_eq!(
        off("sock_common", "skc_net.net"),
        off("sock_common", "skc_net")
    );
    assert_eq!(size("sock_common", "skc_net.net"), 8);
    assert!(off("sock_common", "skc_net") > off("sock_common", "skc_family"));
    // u16 skc_u16hashes[2]: array size = element size * length.
    assert_eq!(size("sock_common", "skc_u16hashes"), 4);
}

#[test]
fn kernel_timewait_layout() {
    assert_eq!(off("inet_timewait_sock", "__tw_common"), 0);
    let common = size("inet_timewait_sock", "__tw_common");
    assert!(common >= off("sock_common", "skc_v6_rcv_saddr") + 16);
    // Dotted paths agree with looking up the inner struct directly.
    for m in [
        "skc_daddr",
        "skc_rcv_saddr",
        "skc_dport",
        "skc_num",
        "skc_family",
        "skc_net",
        "skc_v6_daddr",
    ] {
        assert_eq!(
            off("inet_timewait_sock", &format!("__tw_common.{m}")),
            off("sock_common", m),
            "{m}"
        );
    }
    let substate = off("inet_timewait_sock", "tw_substate");
    let timer = off("inet_timewait_sock", "tw_timer");
    assert!(substate >= common, "tw_substate follows __tw_common");
    assert_eq!(size("inet_timewait_sock", "tw_substate"), 1);
    assert!(timer > substate);
    assert_eq!(timer % 8, 0, "timer_list holds pointers: 8-aligned");
    let function = off("timer_list", "function");
    assert_eq!(size("timer_list", "function"), 8);
    assert!(size("inet_timewait_sock", "tw_timer") >= function + 8);
    assert_eq!(
        off("inet_timewait_sock", "tw_timer.function"),
        timer + function
    );
    assert_eq!(size("timer_list", "expires"), 8);
    // Where direct loads through an inet_timewait_sock pointer end: tw_ts_recent lies
    // beyond, in the tcp_timewait_sock around it.
    let tw_size = kernel().struct_size("inet_timewait_sock").unwrap();
    assert!(tw_size >= timer + size("inet_timewait_sock", "tw_timer"));
    assert!(off("tcp_timewait_sock", "tw_ts_recent") >= tw_size);
    let req_size = kernel().struct_size("request_sock").unwrap();
    assert!(req_size >= off("request_sock", "ts_recent") + 4);
    assert!(off("tcp_request_sock", "rcv_isn") >= req_size);
}

#[test]
fn kernel_netns_paths() {
    assert_eq!(
        off("net", "ns.inum"),
        off("net", "ns") + off("ns_common", "inum")
    );
    assert_eq!(size("net", "ns.inum"), 4);
    assert_eq!(size("task_struct", "nsproxy"), 8);
    assert_eq!(size("nsproxy", "net_ns"), 8);
    assert!(off("nsproxy", "net_ns") > 0);
    let e = err_text(kernel().member_offset("task_struct", "nsproxy.net_ns"));
    assert!(
        e.contains("task_struct.nsproxy") && e.contains("pointer"),
        "{e}"
    );
}

#[test]
fn kernel_bitfields() {
    // unsigned char skc_reuse:4, skc_reuseport:1 share one byte.
    let reuse = off("sock_common", "skc_reuse");
    let e = err_text(kernel().member_offset("sock_common", "skc_reuseport"));
    assert!(
        e.contains("sock_common.skc_reuseport") && e.contains("bitfield"),
        "{e}"
    );
    let e = err_text(kernel().member_size("sock_common", "skc_reuse"));
    assert!(e.contains("skc_reuse") && e.contains("4-bit"), "{e}");
    assert_eq!(reuse, off("sock_common", "skc_state") + 1);
    // A bitfield exists even where it has no byte offset.
    assert!(kernel().has_member("sock_common", "skc_reuseport"));
    assert!(!kernel().has_member("sock_common", "skc_nope"));
    // u8 num_retrans; u8 syncookie:1; u8 num_timeout:7 (cookie_ts:1 before 5.14).
    let retrans = off("request_sock", "num_retrans");
    let timeout = kernel().bit_range("request_sock", "num_timeout").unwrap();
    assert_eq!(timeout, (8 * retrans + 9, 7));
}

#[test]
fn kernel_enums() {
    let k = kernel();
    assert_eq!(
        k.enum_value("skb_drop_reason", "SKB_DROP_REASON_NOT_SPECIFIED")
            .unwrap(),
        Some(2)
    );
    assert_eq!(
        k.enum_value("tcp_tw_status", "TCP_TW_SUCCESS").unwrap(),
        Some(0)
    );
    assert_eq!(
        k.enum_value("tcp_tw_status", "TCP_TW_SYN").unwrap(),
        Some(3)
    );
    assert_eq!(k.enum_value("tcp_tw_status", "TCP_TW_NOPE").unwrap(), None);
    let variants = k.enum_variants("tcp_tw_status").unwrap();
    assert_eq!(variants[0], ("TCP_TW_SUCCESS".to_string(), 0));
    assert!(variants.len() >= 4, "{variants:?}");
    let reasons = k.enum_variants("skb_drop_reason").unwrap();
    assert!(reasons.len() > 50, "{} drop reasons", reasons.len());
    let e = err_text(k.enum_value("no_such_enum_xyz", "X"));
    assert!(e.contains("no_such_enum_xyz"), "{e}");
    // A name that exists but is not an enum.
    let e = err_text(k.enum_variants("sock_common"));
    assert!(
        e.contains("sock_common") && e.contains("not an enum"),
        "{e}"
    );
}

#[test]
fn kernel_funcs() {
    let k = kernel();
    assert!(k.has_func("tcp_time_wait"));
    assert!(k.has_func("tcp_timewait_state_process"));
    assert!(!k.has_func("definitely_not_a_kernel_function"));
    assert!(!k.has_func("sock_common"), "a struct is not a function");
    let params = k.func_params("tcp_timewait_state_process").expect("params");
    assert_eq!(params[..3], ["tw", "skb", "th"], "{params:?}");
    assert_eq!(
        k.func_params("tcp_time_wait").unwrap(),
        ["sk", "state", "timeo"]
    );
    assert_eq!(k.func_params("definitely_not_a_kernel_function"), None);
}

#[test]
fn kernel_errors_name_what_failed() {
    let k = kernel();
    let e = err_text(k.member_offset("no_such_struct_xyz", "a"));
    assert!(e.contains("no_such_struct_xyz"), "{e}");
    let e = err_text(k.member_offset("sock_common", "skc_nope"));
    assert!(e.contains("sock_common") && e.contains("skc_nope"), "{e}");
    let e = err_text(k.member_offset("inet_timewait_sock", "__tw_common.skc_nope"));
    assert!(
        e.contains("inet_timewait_sock.__tw_common") && e.contains("skc_nope"),
        "{e}"
    );
    let e = err_text(k.member_size("sock_common", "skc_family.x"));
    assert!(
        e.contains("sock_common.skc_family") && e.contains("int"),
        "{e}"
    );
    let e = err_text(k.member_offset("sock_common", "skc_net..net"));
    assert!(e.contains("skc_net..net"), "{e}");
}

/// Cross-check against pahole, an independent BTF reader (libbpf-based; `dwarves`, which
/// scripts/setup.sh installs: without it this fails rather than pass unchecked).
/// pahole prints `type name; /* offset size */` for every member, also inside anonymous
/// unions; bitfield lines (`offset:bit`) are not used.
#[test]
fn kernel_matches_pahole() {
    let checks: &[(&str, &[&str])] = &[
        (
            "sock_common",
            &[
                "skc_daddr",
                "skc_rcv_saddr",
                "skc_dport",
                "skc_num",
                "skc_family",
                "skc_net",
                "skc_v6_daddr",
                "skc_v6_rcv_saddr",
                "skc_hash",
            ],
        ),
        (
            "inet_timewait_sock",
            &["__tw_common", "tw_substate", "tw_timer"],
        ),
        ("timer_list", &["function"]),
        ("nsproxy", &["net_ns"]),
        ("ns_common", &["inum"]),
    ];
    for (strukt, members) in checks {
        let out = std::process::Command::new("pahole")
            .args(["-C", strukt, VMLINUX])
            .output()
            .expect("pahole (Debian package dwarves; scripts/setup.sh installs it)");
        assert!(
            out.status.success(),
            "pahole -C {strukt} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let out = String::from_utf8_lossy(&out.stdout).into_owned();
        for member in *members {
            let (p_off, p_size) = pahole_member(&out, member)
                .unwrap_or_else(|| panic!("pahole output for {strukt} lacks {member}:\n{out}"));
            assert_eq!(off(strukt, member), p_off, "offset of {strukt}.{member}");
            assert_eq!(size(strukt, member), p_size, "size of {strukt}.{member}");
        }
    }
}

fn pahole_member(out: &str, member: &str) -> Option<(u32, u32)> {
    out.lines().find_map(|line| {
        let (decl, comment) = line.rsplit_once("/*")?;
        // `name;` for plain members, `(*name)` for function pointers; the character before
        // must not continue an identifier (skc_daddr must not match skc_v6_daddr).
        let starts_identifier = |i: usize| {
            i == 0 || {
                let c = decl.as_bytes()[i - 1];
                !(c.is_ascii_alphanumeric() || c == b'_')
            }
        };
        let named = [format!("{member};"), format!("(*{member})")]
            .iter()
            .any(|pat| {
                decl.match_indices(pat.as_str())
                    .any(|(i, _)| starts_identifier(i))
            });
        if !named {
            return None;
        }
        let mut nums = comment.trim_end_matches("*/").split_whitespace();
        Some((nums.next()?.parse().ok()?, nums.next()?.parse().ok()?))
    })
}

/// Builds a standalone BTF blob byte by byte, as the kernel's uapi btf.h lays it out:
/// 24-byte header, type section, string section (which starts with the empty string).
struct Blob {
    types: Vec<u8>,
    strings: Vec<u8>,
    next_id: u32,
}

const INT: u32 = 1;
const PTR: u32 = 2;
const ARRAY: u32 = 3;
const STRUCT: u32 = 4;
const UNION: u32 = 5;
const ENUM: u32 = 6;
const FWD: u32 = 7;
const TYPEDEF: u32 = 8;
const CONST: u32 = 10;
const FUNC: u32 = 12;
const FUNC_PROTO: u32 = 13;
const ENUM64: u32 = 19;

impl Blob {
    fn new() -> Self {
        Self {
            types: Vec::new(),
            strings: vec![0],
            next_id: 1,
        }
    }

    fn str(&mut self, s: &str) -> u32 {
        if s.is_empty() {
            return 0;
        }
        let at = self.strings.len() as u32;
        self.strings.extend_from_slice(s.as_bytes());
        self.strings.push(0);
        at
    }

    fn words(&mut self, words: &[u32]) {
        for w in words {
            self.types.extend_from_slice(&w.to_le_bytes());
        }
    }

    /// struct btf_type { name_off; info (vlen | kind << 24 | kind_flag << 31); size/type },
    /// followed by `extra` (the kind-specific trailer).
    fn ty(
        &mut self,
        name: &str,
        kind: u32,
        kflag: bool,
        vlen: u32,
        size_or_type: u32,
        extra: &[u32],
    ) -> u32 {
        let name_off = self.str(name);
        self.words(&[
            name_off,
            vlen | kind << 24 | u32::from(kflag) << 31,
            size_or_type,
        ]);
        self.words(extra);
        let id = self.next_id;
        self.next_id += 1;
        id
    }

    /// struct btf_member / btf_enum / btf_param entries all start with a name offset.
    fn entry(&mut self, name: &str, rest: &[u32]) -> Vec<u32> {
        let mut v = vec![self.str(name)];
        v.extend_from_slice(rest);
        v
    }

    fn finish(self) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend_from_slice(&0xEB9F_u16.to_le_bytes()); // magic (written 0xeB9F in btf.h)
        out.push(1); // version
        out.push(0); // flags
        for w in [
            24,
            0,
            self.types.len() as u32,
            self.types.len() as u32,
            self.strings.len() as u32,
        ] {
            // hdr_len, type_off, type_len, str_off, str_len (offsets relative to header end)
            out.extend_from_slice(&u32::to_le_bytes(w));
        }
        out.extend_from_slice(&self.types);
        out.extend_from_slice(&self.strings);
        out
    }
}

/// The brief's blob (int, anonymous union, struct outer, enum color) plus decoys and
/// modifiers: an empty struct and a forward declaration named `outer` before the real one,
/// a typedef/const chain, an array, a pointer, bitfields, an enum64 and a function.
fn crafted() -> KernelBtf {
    let mut b = Blob::new();
    let int = b.ty("int", INT, false, 0, 4, &[1 << 24 | 32]); // BTF_INT_SIGNED, 32 bits
    b.ty("outer", STRUCT, false, 0, 0, &[]); // empty definition: skipped
    b.ty("outer", FWD, false, 0, 0, &[]); // forward declaration: skipped
    let ua = b.entry("u_a", &[int, 0]);
    let ub = b.entry("u_b", &[int, 0]);
    let union = b.ty("", UNION, false, 2, 4, &[ua, ub].concat());
    let first = b.entry("first", &[int, 0]);
    let anon = b.entry("", &[union, 64]);
    let outer = b.ty("outer", STRUCT, false, 2, 12, &[first, anon].concat());
    let red = b.entry("RED", &[1]);
    let blue = b.entry("BLUE", &[7]);
    b.ty("color", ENUM, false, 2, 4, &[red, blue].concat());

    let cint = b.ty("", CONST, false, 0, int, &[]);
    let myint = b.ty("myint", TYPEDEF, false, 0, cint, &[]);
    let arr = b.ty("", ARRAY, false, 0, 0, &[myint, int, 3]); // myint[3]
    let ptr = b.ty("", PTR, false, 0, outer, &[]);
    let couter = b.ty("", CONST, false, 0, outer, &[]);
    // kind_flag struct: member offset word = bitfield_size << 24 | bit_offset.
    let members = [
        b.entry("pad", &[int, 0]),
        b.entry("inner", &[couter, 32]),
        b.entry("arr", &[arr, 128]),
        b.entry("p", &[ptr, 256]),
        b.entry("flags8", &[int, 8 << 24 | 320]),
        b.entry("flag", &[int, 1 << 24 | 328]),
        b.entry("flag3", &[int, 3 << 24 | 329]),
    ]
    .concat();
    b.ty("wrap", STRUCT, true, 7, 48, &members);

    // enum64 big (signed): HUGE = 1 << 40, NEG = -5; entries are name, lo32, hi32.
    let huge = b.entry("HUGE", &[0, 1 << 8]);
    let neg = b.entry("NEG", &[(-5i64) as u32, ((-5i64) >> 32) as u32]);
    b.ty("big", ENUM64, true, 2, 8, &[huge, neg].concat());

    let pa = b.entry("a", &[int]);
    let pb = b.entry("b", &[ptr]);
    let proto = b.ty("", FUNC_PROTO, false, 2, int, &[pa, pb].concat());
    b.ty("do_thing", FUNC, false, 1, proto, &[]); // vlen 1 = global linkage
    b.ty("pair_t", TYPEDEF, false, 0, outer, &[]);

    KernelBtf::from_bytes(&b.finish()).expect("btf-rs accepts a standalone blob")
}

#[test]
fn crafted_blob_brief_cases() {
    let k = crafted();
    assert_eq!(k.member_offset("outer", "first").unwrap(), 0);
    // The definition's size, not the empty one's or the forward declaration's.
    assert_eq!(k.struct_size("outer").unwrap(), 12);
    assert_eq!(k.struct_size("wrap").unwrap(), 48);
    assert_eq!(k.member_offset("outer", "u_a").unwrap(), 8);
    assert_eq!(k.member_offset("outer", "u_b").unwrap(), 8);
    assert_eq!(k.member_size("outer", "u_b").unwrap(), 4);
    assert_eq!(k.enum_value("color", "BLUE").unwrap(), Some(7));
    assert_eq!(k.enum_value("color", "RED").unwrap(), Some(1));
    assert_eq!(k.enum_value("color", "GREEN").unwrap(), None);
    let e = err_text(k.enum_value("nope", "X"));
    assert!(e.contains("nope"), "{e}");
    assert_eq!(
        k.enum_variants("color").unwrap(),
        [("RED".to_string(), 1), ("BLUE".to_string(), 7)]
    );
}

#[test]
fn crafted_blob_paths_sizes_and_bitfields() {
    let k = crafted();
    // Descends through a const-qualified named struct, then flattens its anonymous union.
    assert_eq!(k.member_offset("wrap", "inner").unwrap(), 4);
    assert_eq!(k.member_offset("wrap", "inner.u_b").unwrap(), 12);
    assert_eq!(k.member_size("wrap", "inner").unwrap(), 12);
    assert_eq!(k.member_size("wrap", "arr").unwrap(), 12); // (typedef const int)[3]
    assert_eq!(k.member_size("wrap", "p").unwrap(), 8);
    assert_eq!(k.member_offset("wrap", "p").unwrap(), 32);
    let e = err_text(k.member_offset("wrap", "p.first"));
    assert!(e.contains("wrap.p") && e.contains("pointer"), "{e}");
    let e = err_text(k.member_offset("wrap", "pad.x"));
    assert!(e.contains("wrap.pad") && e.contains("int"), "{e}");
    // Whole-byte bitfield: addressable and sized; others are refused.
    assert_eq!(k.member_offset("wrap", "flags8").unwrap(), 40);
    assert_eq!(k.member_size("wrap", "flags8").unwrap(), 1);
    assert_eq!(k.member_offset("wrap", "flag").unwrap(), 41);
    let e = err_text(k.member_size("wrap", "flag"));
    assert!(e.contains("wrap.flag") && e.contains("1-bit"), "{e}");
    let e = err_text(k.member_offset("wrap", "flag3"));
    assert!(e.contains("wrap.flag3") && e.contains("bitfield"), "{e}");
    // Bit ranges: of a bitfield, and of a plain member (its size in bits).
    assert_eq!(k.bit_range("wrap", "flag3").unwrap(), (329, 3));
    assert_eq!(k.bit_range("wrap", "p").unwrap(), (8 * 32, 64));
    // Errors name the struct and member.
    let e = err_text(k.member_offset("outer", "missing"));
    assert!(e.contains("outer") && e.contains("missing"), "{e}");
    let e = err_text(k.member_offset("absent", "first"));
    assert!(e.contains("absent"), "{e}");
    // A typedef of a struct works as a starting point.
    assert_eq!(k.member_offset("pair_t", "u_a").unwrap(), 8);
}

#[test]
fn crafted_blob_enum64_and_funcs() {
    let k = crafted();
    assert_eq!(k.enum_value("big", "HUGE").unwrap(), Some(1 << 40));
    assert_eq!(k.enum_value("big", "NEG").unwrap(), Some(-5));
    assert!(k.has_func("do_thing"));
    assert!(!k.has_func("outer"));
    assert_eq!(k.func_params("do_thing").unwrap(), ["a", "b"]);
    assert_eq!(k.func_params("nothing"), None);
}

#[test]
fn garbage_is_rejected() {
    assert!(KernelBtf::from_bytes(&[0u8; 8]).is_err());
    assert!(KernelBtf::from_bytes(&[]).is_err());
}
