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

    /// Bit offset and width of an integer member, a bitfield or not (e.g.
    /// `request_sock.num_timeout`, 7 bits), for the eBPF side to shift and mask.
    pub fn bit_range(&self, strukt: &str, path: &str) -> Result<(u32, u32)> {
        let found = self.find_member(strukt, path)?;
        let bits = match found.bitfield_bits {
            Some(bits) => bits,
            None => 8 * self.member_size(strukt, path)?,
        };
        Ok((found.bit_offset, bits))
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
mod tests;
