//! Kernel BTF reader: struct member offsets and sizes, enum values and function signatures.
//!
//! Rust eBPF gets no CO-RE relocations (rustc has no `preserve_access_index`), so every kernel
//! struct offset the eBPF programs use is looked up here, from the running kernel's BTF, and
//! injected as a global before load. Enum values (drop reasons, `tcp_tw_status`) move between
//! kernels too, so they are resolved by name instead of being compiled in.
//!
//! Parsing is done by the `btf-rs` crate; this module only walks the parsed types.

use std::io::ErrorKind;

use anyhow::{Context, Result, anyhow, bail};
use btf_rs::{Btf, BtfType, Struct, Type};

const VMLINUX: &str = "/sys/kernel/btf/vmlinux";

/// Upper bound on typedef/const chains and on nesting of anonymous members. Real kernel BTF
/// needs a handful; the bound turns a corrupt blob with a type cycle into an error, not a hang.
const MAX_DEPTH: usize = 64;

/// The kernel target is 64-bit (x86_64, arm64): BTF pointers carry no size of their own.
const POINTER_SIZE: u32 = 8;

/// Parsed kernel BTF.
pub struct KernelBtf {
    btf: Btf,
}

/// The value of a 32-bit enumerator. Signedness comes from kind_flag; old BTF (pahole < 1.24)
/// always says unsigned, which is right for every enum twtrace reads.
fn enumerator_value(e: &btf_rs::Enum, m: &btf_rs::EnumMember) -> i64 {
    if e.is_signed() {
        i64::from(m.val() as i32)
    } else {
        i64::from(m.val())
    }
}

/// A member located by [`KernelBtf::find_member`], with offsets already summed over every
/// enclosing struct and anonymous struct/union.
struct Located {
    bit_offset: u32,
    /// `Some(n)` with n > 0 only for real bitfields (kind_flag structs also report `Some(0)`
    /// for ordinary members). Old-style bitfields (kind_flag 0, width only in the INT type) are
    /// not seen: btf-rs does not expose INT bit widths, and pahole has emitted kind_flag
    /// bitfields for kernel BTF since BTF was first generated for vmlinux (5.2), so only a
    /// misaligned offset would give them away (member_offset refuses those).
    bitfield_bits: Option<u32>,
    ty: Type,
}

impl KernelBtf {
    /// Loads /sys/kernel/btf/vmlinux.
    pub fn from_sysfs() -> Result<Self> {
        Self::from_path(VMLINUX)
    }

    fn from_path(path: &str) -> Result<Self> {
        let bytes = match std::fs::read(path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == ErrorKind::NotFound => bail!(
                "no kernel BTF at {path}: twtrace needs a kernel built with CONFIG_DEBUG_INFO_BTF=y"
            ),
            Err(e) => return Err(e).with_context(|| format!("cannot read kernel BTF at {path}")),
        };
        Self::from_bytes(&bytes).with_context(|| format!("cannot parse kernel BTF at {path}"))
    }

    /// Parses a standalone (non-split) BTF blob.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self> {
        let btf = Btf::from_bytes(bytes).context("invalid BTF data")?;
        Ok(Self { btf })
    }

    /// Byte offset of a member path inside a struct, e.g. `("inet_timewait_sock",
    /// "__tw_common.skc_daddr")`. Members of anonymous structs/unions are found as if they were
    /// direct members, the way C code names them.
    pub fn member_offset(&self, strukt: &str, path: &str) -> Result<u32> {
        let found = self.find_member(strukt, path)?;
        if found.bit_offset % 8 != 0 {
            bail!(
                "member {strukt}.{path} is a bitfield at bit {} (bit {} of byte {}): not byte addressable",
                found.bit_offset,
                found.bit_offset % 8,
                found.bit_offset / 8
            );
        }
        Ok(found.bit_offset / 8)
    }

    /// Size in bytes of a struct.
    pub fn struct_size(&self, strukt: &str) -> Result<u32> {
        Ok(self.find_struct(strukt)?.size() as u32)
    }

    /// Whether a struct has this member (bitfields included).
    pub fn has_member(&self, strukt: &str, path: &str) -> bool {
        self.find_member(strukt, path).is_ok()
    }

    /// Bit offset of a one-bit flag inside a struct (e.g. `inet_request_sock.tstamp_ok`), for
    /// the eBPF side to read the containing byte and mask it.
    pub fn flag_bit_offset(&self, strukt: &str, path: &str) -> Result<u32> {
        let found = self.find_member(strukt, path)?;
        if found.bitfield_bits != Some(1) {
            bail!("member {strukt}.{path} is not a one-bit bitfield");
        }
        Ok(found.bit_offset)
    }

    /// Size in bytes of a member's type (arrays: element size * length; pointers: 8).
    pub fn member_size(&self, strukt: &str, path: &str) -> Result<u32> {
        let found = self.find_member(strukt, path)?;
        if let Some(bits) = found.bitfield_bits {
            // A bitfield is read as whole bytes only when it covers whole, aligned bytes;
            // anything else needs masking the caller must know about, so refuse.
            if bits % 8 != 0 || found.bit_offset % 8 != 0 {
                bail!("member {strukt}.{path} is a {bits}-bit bitfield: it has no byte size");
            }
            return Ok(bits / 8);
        }
        self.type_size(&found.ty)
            .with_context(|| format!("cannot size member {strukt}.{path}"))
    }

    /// Value of an enumerator (BTF enum or enum64). `Ok(None)` if the enum exists without that
    /// variant (e.g. a drop reason added by a later kernel).
    pub fn enum_value(&self, enum_name: &str, variant: &str) -> Result<Option<i64>> {
        Ok(self
            .enum_variants(enum_name)?
            .into_iter()
            .find(|(name, _)| name == variant)
            .map(|(_, value)| value))
    }

    /// Value of an enumerator wherever it is declared, e.g. in an anonymous enum such as the
    /// kernel's `LINUX_MIB_*` (which no type name leads to): a scan of every type, so only
    /// for what no named enum holds. `None` if no enum has it.
    pub fn enumerator(&self, variant: &str) -> Option<i64> {
        // Type ids are dense from 1; the first id that does not resolve is the end.
        (1..)
            .map_while(|id| self.btf.resolve_type_by_id(id).ok())
            .find_map(|t| match &t {
                Type::Enum(e) => e
                    .members
                    .iter()
                    .find(|m| self.btf.resolve_name(*m).is_ok_and(|n| n == variant))
                    .map(|m| enumerator_value(e, m)),
                _ => None,
            })
    }

    /// All (name, value) pairs of an enum, in declaration order.
    pub fn enum_variants(&self, enum_name: &str) -> Result<Vec<(String, i64)>> {
        let types = self
            .btf
            .resolve_types_by_name(enum_name)
            .map_err(|_| anyhow!("enum {enum_name} not found in kernel BTF"))?;
        // An empty enum is a forward declaration: prefer the first one that lists values.
        let populated = |t: &&Type| match t {
            Type::Enum(e) => !e.members.is_empty(),
            Type::Enum64(e) => !e.members.is_empty(),
            _ => false,
        };
        let chosen = types
            .iter()
            .find(populated)
            .or_else(|| {
                types
                    .iter()
                    .find(|t| matches!(t, Type::Enum(_) | Type::Enum64(_)))
            })
            .ok_or_else(|| anyhow!("{enum_name} is not an enum in kernel BTF"))?;
        let named = |m: &dyn BtfType| {
            self.btf
                .resolve_name(m)
                .with_context(|| format!("bad enumerator name in enum {enum_name}"))
        };
        match chosen {
            Type::Enum(e) => e
                .members
                .iter()
                .map(|m| Ok((named(m)?, enumerator_value(e, m))))
                .collect(),
            Type::Enum64(e) => e
                .members
                .iter()
                // Unsigned values above i64::MAX wrap; no kernel enum twtrace reads has one.
                .map(|m| Ok((named(m)?, m.val() as i64)))
                .collect(),
            _ => unreachable!("filtered to enums above"),
        }
    }

    /// Whether a BTF FUNC with this name exists (so fentry/kprobe can target it by name).
    pub fn has_func(&self, name: &str) -> bool {
        self.find_func(name).is_some()
    }

    /// Parameter names of a function's prototype (`"..."` for a variadic tail).
    pub fn func_params(&self, name: &str) -> Option<Vec<String>> {
        let func = self.find_func(name)?;
        let Ok(Type::FuncProto(proto)) = self.btf.resolve_chained_type(&func) else {
            return None;
        };
        proto
            .parameters
            .iter()
            .map(|p| {
                if p.is_variadic() {
                    Some("...".to_string())
                } else {
                    self.btf.resolve_name(p).ok()
                }
            })
            .collect()
    }

    /// The argument types of a tracepoint as a tp_btf program sees them (from the kernel's
    /// `btf_trace_<name>` prototype, whose first parameter, the probe's data, is dropped), e.g.
    /// `["struct sk_buff *", "void *", "enum skb_drop_reason", "struct sock *"]`.
    pub fn tracepoint_args(&self, name: &str) -> Result<Vec<String>> {
        let typedef = format!("btf_trace_{name}");
        let td = self
            .btf
            .resolve_types_by_name(&typedef)
            .ok()
            .and_then(|v| v.into_iter().find(|t| matches!(t, Type::Typedef(_))))
            .ok_or_else(|| anyhow!("no {typedef} in kernel BTF (no such tracepoint)"))?;
        let Type::Ptr(ptr) = self.strip_modifiers(td)? else {
            bail!("{typedef} is not a function pointer");
        };
        let Type::FuncProto(proto) = self.btf.resolve_chained_type(&ptr)? else {
            bail!("{typedef} does not point to a prototype");
        };
        proto
            .parameters
            .iter()
            .skip(1)
            .map(|p| self.describe(self.btf.resolve_chained_type(p)?, 0))
            .collect()
    }

    /// A C-like spelling of a type, qualifiers dropped.
    fn describe(&self, ty: Type, depth: usize) -> Result<String> {
        if depth > MAX_DEPTH {
            bail!("pointer chain deeper than {MAX_DEPTH}: corrupt BTF?");
        }
        let named = |t: &dyn btf_rs::BtfType| self.btf.resolve_name(t).unwrap_or_default();
        Ok(match self.strip_modifiers(ty)? {
            Type::Ptr(p) => match self.btf.resolve_chained_type(&p) {
                Ok(t) => format!("{} *", self.describe(t, depth + 1)?),
                Err(_) => "void *".to_string(),
            },
            Type::Struct(s) => format!("struct {}", named(&s)),
            Type::Union(u) => format!("union {}", named(&u)),
            Type::Enum(e) => format!("enum {}", named(&e)),
            Type::Enum64(e) => format!("enum {}", named(&e)),
            Type::Int(i) => named(&i),
            Type::Void => "void".to_string(),
            other => format!("{other:?}").chars().take(20).collect(),
        })
    }

    fn find_func(&self, name: &str) -> Option<btf_rs::Func> {
        self.btf
            .resolve_types_by_name(name)
            .ok()?
            .into_iter()
            .find_map(|t| match t {
                Type::Func(f) => Some(f),
                _ => None,
            })
    }

    /// The struct a lookup starts from. Names repeat in kernel BTF (forward declarations, and
    /// empty definitions from some compilation units), so take the first one with members.
    fn find_struct(&self, name: &str) -> Result<Struct> {
        let types = self
            .btf
            .resolve_types_by_name(name)
            .map_err(|_| anyhow!("struct {name} not found in kernel BTF"))?;
        let with_members = |want_union: bool| {
            types.iter().find_map(|t| match t {
                Type::Struct(s) if !want_union && !s.members.is_empty() => Some(s.clone()),
                Type::Union(u) if want_union && !u.members.is_empty() => Some(u.clone()),
                _ => None,
            })
        };
        if let Some(s) = with_members(false).or_else(|| with_members(true)) {
            return Ok(s);
        }
        // Typedef'd anonymous structs (possible_net_t) are only reachable through their typedef.
        for t in &types {
            if let Type::Typedef(td) = t
                && let Ok(Type::Struct(s) | Type::Union(s)) = self
                    .btf
                    .resolve_chained_type(td)
                    .and_then(|t| self.strip_modifiers(t))
                && !s.members.is_empty()
            {
                return Ok(s);
            }
        }
        bail!("struct {name} has no definition with members in kernel BTF (only declarations)")
    }

    /// Walks a dotted member path. Each segment is looked up with anonymous members flattened;
    /// between segments the member's type must be a struct or union (after typedef/const/volatile).
    fn find_member(&self, strukt: &str, path: &str) -> Result<Located> {
        if path.is_empty() || path.split('.').any(str::is_empty) {
            bail!("invalid member path {path:?} for struct {strukt}");
        }
        let mut current = self.find_struct(strukt)?;
        let mut base_bits = 0u32;
        let mut walked = String::new();
        let mut segments = path.split('.').peekable();
        while let Some(segment) = segments.next() {
            let owner = if walked.is_empty() {
                format!("struct {strukt}")
            } else {
                format!("{strukt}.{walked}")
            };
            let (bits, member) = self
                .find_in(&current, segment, 0)
                .with_context(|| format!("while looking up {segment} in {owner}"))?
                .ok_or_else(|| {
                    anyhow!("{owner} has no member {segment} (looking up {strukt}.{path})")
                })?;
            let bit_offset = base_bits
                .checked_add(bits)
                .ok_or_else(|| anyhow!("offset overflow at {strukt}.{path}"))?;
            if !walked.is_empty() {
                walked.push('.');
            }
            walked.push_str(segment);
            let ty = self
                .btf
                .resolve_chained_type(&member)
                .and_then(|t| self.strip_modifiers(t))
                .with_context(|| format!("cannot resolve the type of {strukt}.{walked}"))?;

            if segments.peek().is_none() {
                return Ok(Located {
                    bit_offset,
                    bitfield_bits: member.bitfield_size().filter(|&b| b > 0),
                    ty,
                });
            }
            current = match ty {
                Type::Struct(s) | Type::Union(s) => s,
                Type::Ptr(_) => bail!(
                    "{strukt}.{walked} is a pointer: a path cannot go through it (read the pointer, \
                     then look up the pointee's struct separately)"
                ),
                other => bail!(
                    "{strukt}.{walked} is a {}, not a struct or union: cannot look up {path}",
                    other.name()
                ),
            };
            base_bits = bit_offset;
        }
        unreachable!("path has at least one segment")
    }

    /// Finds `name` among the members of `s`, descending into anonymous struct/union members
    /// (C11 flattening). Returns the bit offset relative to `s` and the member itself.
    fn find_in(
        &self,
        s: &Struct,
        name: &str,
        depth: usize,
    ) -> Result<Option<(u32, btf_rs::Member)>> {
        if depth > MAX_DEPTH {
            bail!("anonymous members nested deeper than {MAX_DEPTH}: corrupt BTF?");
        }
        for m in &s.members {
            let member_name = self.btf.resolve_name(m)?;
            if member_name == name {
                return Ok(Some((m.bit_offset(), m.clone())));
            }
            if !member_name.is_empty() {
                continue;
            }
            let inner = self.strip_modifiers(self.btf.resolve_chained_type(m)?)?;
            if let Type::Struct(inner) | Type::Union(inner) = inner
                && let Some((bits, found)) = self.find_in(&inner, name, depth + 1)?
            {
                let bits = m
                    .bit_offset()
                    .checked_add(bits)
                    .ok_or_else(|| anyhow!("member offset overflow looking up {name}"))?;
                return Ok(Some((bits, found)));
            }
        }
        Ok(None)
    }

    /// Follows typedef/const/volatile/restrict/type-tag links down to the type they qualify.
    fn strip_modifiers(&self, mut ty: Type) -> Result<Type> {
        for _ in 0..MAX_DEPTH {
            ty = match &ty {
                Type::Typedef(t) | Type::TypeTag(t) => self.btf.resolve_chained_type(t)?,
                Type::Volatile(t) | Type::Const(t) | Type::Restrict(t) => {
                    self.btf.resolve_chained_type(t)?
                }
                _ => return Ok(ty),
            };
        }
        bail!("type modifier chain longer than {MAX_DEPTH}: corrupt BTF?")
    }

    fn type_size(&self, ty: &Type) -> Result<u32> {
        self.type_size_at(ty, 0)
    }

    fn type_size_at(&self, ty: &Type, depth: usize) -> Result<u32> {
        if depth > MAX_DEPTH {
            bail!("array nesting deeper than {MAX_DEPTH}: corrupt BTF?");
        }
        let size = match self.strip_modifiers(ty.clone())? {
            Type::Int(t) => t.size(),
            Type::Float(t) => t.size(),
            Type::Enum(t) => t.size(),
            Type::Enum64(t) => t.size(),
            Type::Struct(t) | Type::Union(t) => t.size(),
            Type::Ptr(_) => return Ok(POINTER_SIZE),
            Type::Array(a) => {
                let elem = self.btf.resolve_chained_type(&a)?;
                let elem_size = self.type_size_at(&elem, depth + 1)?;
                return u32::try_from(a.len())
                    .ok()
                    .and_then(|n| n.checked_mul(elem_size))
                    .ok_or_else(|| anyhow!("array size overflows u32"));
            }
            other => bail!("a {} has no size", other.name()),
        };
        u32::try_from(size).map_err(|_| anyhow!("type size {size} overflows u32"))
    }
}

#[cfg(test)]
mod tests {
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
}
