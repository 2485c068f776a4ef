//! The running kernel's layout, injected by user space before load (computed from BTF,
//! kallsyms and tracefs), and typed readers built on it. No offset is a constant here.

use aya_ebpf::helpers::bpf_probe_read_kernel;
pub use twtrace_common::v4_in_16;
use twtrace_common::{AF_INET6, CodeRange, KernelLayout, MAX_CODE_RANGES, Settings};

#[unsafe(no_mangle)]
pub static LAYOUT: KernelLayout = KernelLayout::zeroed();

#[unsafe(no_mangle)]
pub static RANGES: [CodeRange; MAX_CODE_RANGES] = [CodeRange {
    start: 0,
    end: 0,
    class: 0,
}; MAX_CODE_RANGES];

#[unsafe(no_mangle)]
pub static SETTINGS: Settings = Settings::default_const();

/// Reads one field of a global without letting the compiler fold the compiled-in default.
#[macro_export]
macro_rules! layout {
    ($field:ident) => {{
        #[allow(unused_unsafe)]
        // SAFETY: reading a plain static; volatile so the loader's value is used.
        let v = unsafe { core::ptr::read_volatile(&$crate::kernel::LAYOUT.$field) };
        v
    }};
}

#[inline(always)]
pub fn settings() -> Settings {
    unsafe { core::ptr::read_volatile(&SETTINGS) }
}

/// `--hooks-only`: every function-probe and classic-tracepoint program returns at once, so a
/// run measures what its hook alone costs. (The tp_btf dispatchers keep their first filter and
/// are silenced through `ROUTES`.)
#[inline(always)]
pub fn hooks_only() -> bool {
    settings().hooks_only != 0
}

#[inline(always)]
pub fn range(i: usize) -> CodeRange {
    unsafe { core::ptr::read_volatile(&RANGES[i]) }
}

/// Zeroes `*p` with 8-byte stores. `ptr::write(p, T::zeroed())` (or `[0; N]`) becomes a call
/// of the BPF object's `memset`, which stores one byte per loop turn: about 600 instructions
/// for a 96-byte event, which was a fifth of the programs' work per connection. Volatile
/// stores so that LLVM cannot turn the loop back into that call.
///
/// # Safety
/// `p` must be valid for writes of `T`, 8-byte aligned, and every bit pattern of zeros must be
/// a valid `T`; `size_of::<T>()` must be a multiple of 8 (checked at compile time).
#[inline(always)]
pub unsafe fn zero_words<T>(p: *mut T) {
    const { assert!(core::mem::size_of::<T>() % 8 == 0) };
    let words = p as *mut u64;
    let mut i = 0;
    while i < core::mem::size_of::<T>() / 8 {
        unsafe { core::ptr::write_volatile(words.add(i), 0) };
        i += 1;
    }
}

#[inline(always)]
pub unsafe fn read<T>(base: u64, off: u32) -> Option<T> {
    unsafe { bpf_probe_read_kernel((base + off as u64) as *const T).ok() }
}

/// The `T` at `ptr + off`, loaded directly: `ptr` must be a BTF-typed kernel pointer (a
/// tp_btf or fentry argument) and `off` a load-time constant (frozen .rodata) at which that
/// type has a field of `T`'s size. The verifier checks the access against BTF and turns it into
/// a fault-safe load (0 on a fault): no helper call, which costs as much as a short copy.
///
/// # Safety
/// As above; any other pointer makes the verifier refuse the program (it does not fault).
#[inline(always)]
pub unsafe fn typed<T: Copy>(ptr: u64, off: u32) -> T {
    unsafe { core::ptr::read_volatile((ptr + off as u64) as *const T) }
}

/// A `T` at byte `at` of the 8-byte-aligned buffer `buf`. BPF has no unaligned loads, so
/// `read_unaligned` becomes one byte load (plus shift and or) per byte; a C struct's fields
/// sit at multiples of their alignment, so the aligned arm, one load, is the one taken. `at` is
/// a load-time constant to the verifier (frozen .rodata), which walks that arm only.
///
/// # Safety
/// `buf + at` must be valid for reads of `T`, and `buf` 8-byte aligned.
#[inline(always)]
unsafe fn load<T: Copy>(buf: *const u8, at: usize) -> T {
    const { assert!(core::mem::align_of::<T>() <= 8) };
    if at % core::mem::align_of::<T>() == 0 {
        // Volatile so that LLVM keeps this arm apart: it merges two plain loads of the same
        // address into one at the lesser alignment, the byte-wise one.
        unsafe { core::ptr::read_volatile(buf.add(at) as *const T) }
    } else {
        unsafe { core::ptr::read_unaligned(buf.add(at) as *const T) }
    }
}

/// An IPv6 address (`struct in6_addr`, 4-byte aligned in C) from its four words. Callers read
/// it as `[u32; 4]`, one aligned load per word: read as `[u8; 16]` (alignment 1) it is moved
/// byte by byte.
#[inline(always)]
fn in6(words: [u32; 4]) -> [u8; 16] {
    // SAFETY: four u32 are 16 initialised bytes, in memory order.
    unsafe { core::mem::transmute::<[u32; 4], [u8; 16]>(words) }
}

/// Addresses and ports of a `sock_common` (a full socket or a timewait socket). Aligned to 8
/// with the addresses first, so that [`Flow::same_as`] reads them as words.
#[repr(C, align(8))]
pub struct Flow {
    pub laddr: [u8; 16],
    pub raddr: [u8; 16],
    pub netns: u32,
    pub lport: u16,
    pub rport: u16,
    pub family: u8,
}

/// A copy of `N` bytes of a kernel struct (from offset `from`), taken with one helper call: a
/// helper call costs as much as a short copy, and these paths run once or twice per TIME-WAIT.
///
/// Made in two steps, [`Head::at`] then [`Head::fill`], so that the copy lands in the caller's
/// frame once: returned in an `Option` it was copied again, and the dispatchers' frames count
/// against the 512-byte BPF stack (with the frame of every call they make, e.g. memset).
pub struct Head<const N: usize> {
    bytes: core::mem::MaybeUninit<Aligned<N>>,
    base: u64,
    from: u32,
}

/// How a program may read a kernel struct it holds the address of.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// The address is a BTF-typed argument of the struct's own type (fentry/fexit): direct
    /// loads ([`Typed`]).
    Typed,
    /// Anything else (kprobe arguments, tracepoint records, container_of from a timer's
    /// address): copied with the helper ([`Head`]).
    Copied,
}

/// Fields of one kernel struct at load-time-constant offsets, read from a copy ([`Head`]) or
/// straight through a BTF-typed pointer ([`Typed`]); the code that reads a socket's flow is the
/// same for both.
pub trait Fields {
    /// The field of type `T` at byte `off` of the struct.
    unsafe fn get<T: Copy>(&self, off: u32) -> Option<T>;
    /// The namespace inode of `net`, a `struct net *` got from these fields (0 if unreadable).
    unsafe fn ns_inum(&self, net: u64) -> u32;
}

/// A struct behind a BTF-typed pointer of its own type (an fentry/fexit argument), read with
/// direct loads: the verifier checks each against BTF and makes it a fault-safe load (0 on a
/// fault), with no helper call. A `bpf_probe_read_kernel` is a call, a range check and a
/// checked copy; the fentry route made nine per connection for socket fields. A field past
/// `size` (of a container, e.g. tcp_timewait_sock's tw_ts_recent behind an
/// inet_timewait_sock argument) is read with the helper: the verifier refuses a direct load
/// beyond the pointer's type. Not for addresses computed from another type's pointer
/// (container_of from a timer): those are refused too.
pub struct Typed {
    ptr: u64,
    size: u32,
}

impl Typed {
    /// `tw`, an fentry argument typed `struct inet_timewait_sock *`.
    #[inline(always)]
    pub fn timewait(tw: u64) -> Self {
        Self {
            ptr: tw,
            size: layout!(tw_size),
        }
    }

    /// `req`, an fentry argument typed `struct request_sock *`.
    #[inline(always)]
    pub fn request(req: u64) -> Self {
        Self {
            ptr: req,
            size: layout!(req_size),
        }
    }
}

impl Fields for Typed {
    #[inline(always)]
    unsafe fn get<T: Copy>(&self, off: u32) -> Option<T> {
        // Both sides are load-time constants: the verifier walks one arm.
        if off as usize + core::mem::size_of::<T>() <= self.size as usize {
            Some(unsafe { typed(self.ptr, off) })
        } else {
            unsafe { read(self.ptr, off) }
        }
    }

    #[inline(always)]
    unsafe fn ns_inum(&self, net: u64) -> u32 {
        // A pointer loaded from a typed struct is typed too (struct net).
        unsafe { typed(net, layout!(net_ns_inum)) }
    }
}

/// A byte buffer moved with 8-byte loads and stores rather than byte by byte.
#[repr(C, align(8))]
struct Aligned<const N: usize>([u8; N]);

impl<const N: usize> Head<N> {
    /// An empty copy of the `N` bytes at `base + from` (the struct must extend that far).
    #[inline(always)]
    pub fn at(base: u64, from: u32) -> Self {
        Self {
            bytes: core::mem::MaybeUninit::uninit(),
            base,
            from,
        }
    }

    /// Takes the copy; false if the kernel memory could not be read (then nothing may be got).
    /// Not zeroed first: the helper writes every byte or fails.
    #[inline(always)]
    pub unsafe fn fill(&mut self) -> bool {
        unsafe {
            aya_ebpf::helpers::generated::bpf_probe_read_kernel(
                self.bytes.as_mut_ptr().cast(),
                N as u32,
                (self.base + self.from as u64) as *const core::ffi::c_void,
            ) == 0
        }
    }
}

impl<const N: usize> Fields for Head<N> {
    /// The field at `off` (from `base`): from the copy when it lies there, else read on its
    /// own. The offsets are load-time constants to the verifier (frozen .rodata), so it
    /// follows one branch.
    #[inline(always)]
    unsafe fn get<T: Copy>(&self, off: u32) -> Option<T> {
        if off >= self.from && (off - self.from) as usize + core::mem::size_of::<T>() <= N {
            // `from` is a field offset too, so `off - from` keeps the field's alignment when
            // `from` is 8-aligned; otherwise `load` takes its byte-wise arm.
            let at = (off - self.from) as usize;
            Some(unsafe { load(self.bytes.as_ptr() as *const u8, at) })
        } else {
            unsafe { read(self.base, off) }
        }
    }

    #[inline(always)]
    unsafe fn ns_inum(&self, net: u64) -> u32 {
        unsafe { read(net, layout!(net_ns_inum)) }.unwrap_or(0)
    }
}

/// Reads the flow of the `sock_common` at `skc`. Ports come back in host order.
///
/// Deliberately simpler than [`flow_of`] (a plain buffer, no start offset): it runs in the
/// PAWS fexit program, whose option-parsing loop sits at the verifier's complexity limit on
/// 6.1, and every extra tracked value there costs states.
#[inline(always)]
pub unsafe fn read_flow(skc: u64) -> Option<Flow> {
    // Filled by the helper, not zeroed first (zeroing is a byte-at-a-time memset call), and
    // read in place: `assume_init` by value copied it again, one byte per instruction pair.
    let mut b = core::mem::MaybeUninit::<Aligned<SKC_BLOCK>>::uninit();
    let rc = unsafe {
        aya_ebpf::helpers::generated::bpf_probe_read_kernel(
            b.as_mut_ptr().cast(),
            SKC_BLOCK as u32,
            skc as *const core::ffi::c_void,
        )
    };
    if rc != 0 {
        return None;
    }
    let b = b.as_ptr() as *const u8;
    let family: u16 = unsafe { field(b, skc, layout!(skc_family))? };
    // Addresses chosen before the struct is built: a zeroed array overwritten later costs a
    // memset call (see `v4_in_16`).
    let (laddr, raddr) = if family as u8 == AF_INET6 {
        (
            in6(unsafe { field(b, skc, layout!(skc_v6_rcv_saddr))? }),
            in6(unsafe { field(b, skc, layout!(skc_v6_daddr))? }),
        )
    } else {
        (
            v4_in_16(unsafe { field::<u32>(b, skc, layout!(skc_rcv_saddr))? }.to_ne_bytes()),
            v4_in_16(unsafe { field::<u32>(b, skc, layout!(skc_daddr))? }.to_ne_bytes()),
        )
    };
    let net: u64 = unsafe { field(b, skc, layout!(skc_net))? };
    Some(Flow {
        family: family as u8,
        lport: unsafe { field::<u16>(b, skc, layout!(skc_num))? },
        rport: u16::from_be(unsafe { field::<u16>(b, skc, layout!(skc_dport))? }),
        laddr,
        raddr,
        netns: unsafe { read(net, layout!(net_ns_inum)) }.unwrap_or(0),
    })
}

/// Bytes of a `sock_common` copied at once by [`read_flow`].
const SKC_BLOCK: usize = 96;

/// A field of the struct at `base`, from the copy `b` (8-aligned, [`SKC_BLOCK`] bytes) of its
/// head when it lies there.
#[inline(always)]
unsafe fn field<T: Copy>(b: *const u8, base: u64, off: u32) -> Option<T> {
    let off = off as usize;
    if off + core::mem::size_of::<T>() <= SKC_BLOCK {
        Some(unsafe { load(b, off) })
    } else {
        unsafe { read(base, off as u32) }
    }
}

/// The flow of the `sock_common` at offset `at` of the struct `h` reads.
#[inline(always)]
pub unsafe fn flow_of<F: Fields>(h: &F, at: u32) -> Option<Flow> {
    let family: u16 = unsafe { h.get(at + layout!(skc_family))? };
    // Addresses chosen before the struct is built: a zeroed array overwritten later costs a
    // memset call (see `v4_in_16`).
    let (laddr, raddr) = if family as u8 == AF_INET6 {
        (
            in6(unsafe { h.get(at + layout!(skc_v6_rcv_saddr))? }),
            in6(unsafe { h.get(at + layout!(skc_v6_daddr))? }),
        )
    } else {
        (
            v4_in_16(unsafe { h.get::<u32>(at + layout!(skc_rcv_saddr))? }.to_ne_bytes()),
            v4_in_16(unsafe { h.get::<u32>(at + layout!(skc_daddr))? }.to_ne_bytes()),
        )
    };
    let net: u64 = unsafe { h.get(at + layout!(skc_net))? };
    Some(Flow {
        family: family as u8,
        lport: unsafe { h.get::<u16>(at + layout!(skc_num))? },
        rport: u16::from_be(unsafe { h.get::<u16>(at + layout!(skc_dport))? }),
        laddr,
        raddr,
        netns: unsafe { h.ns_inum(net) },
    })
}

impl Flow {
    /// Writes the flow's namespace, family, ports and addresses into an event.
    #[inline(always)]
    pub fn fill(&self, ev: &mut twtrace_common::Event) {
        ev.netns = self.netns;
        ev.family = self.family;
        ev.lport = self.lport;
        ev.rport = self.rport;
        ev.laddr = self.laddr;
        ev.raddr = self.raddr;
    }
}

/// Network namespace of the `sock_common` at `skc` (0 if its `struct net` cannot be read;
/// None if `skc` itself cannot be): two reads, where [`read_flow`] copies the whole head.
#[inline(always)]
pub unsafe fn sock_netns(skc: u64) -> Option<u32> {
    let net: u64 = unsafe { read(skc, layout!(skc_net))? };
    Some(unsafe { read(net, layout!(net_ns_inum)) }.unwrap_or(0))
}

/// True when the namespace filter (if any) lets this namespace through.
#[inline(always)]
pub fn netns_wanted(netns: u32) -> bool {
    let want = settings().netns_filter;
    want == 0 || want == netns
}

/// True when `--netns` names one namespace: for checks worth their reads only then.
#[inline(always)]
pub fn netns_filtering() -> bool {
    settings().netns_filter != 0
}

/// Argument `n` of an fentry/fexit program as a plain number. Read directly, a pointer
/// argument is a typed kernel pointer to the verifier, which then tracks every derived address
/// separately (no state pruning in option-parsing loops: programs that load as kprobes blow the
/// complexity limit as fexit on 6.1). Every access goes through bpf_probe_read anyway.
#[inline(always)]
pub fn scalar_arg<C: aya_ebpf::EbpfContext>(ctx: &C, n: usize) -> u64 {
    unsafe { bpf_probe_read_kernel((ctx.as_ptr() as *const u64).add(n)) }.unwrap_or(0)
}

/// The return value in an fexit program, from the slot after the arguments (`slot`, from the
/// layout: the argument count differs between kernels), rather than with bpf_get_func_ret,
/// which came only with 5.17. None where the layout has no slot.
#[inline(always)]
pub fn fexit_ret<C: aya_ebpf::EbpfContext>(ctx: &C, slot: u32) -> Option<u64> {
    ctx_word(ctx, slot)
}

/// Word `n` of a tracing program's context (fentry/fexit and tp_btf arguments, the fexit
/// return value after them), `n` a load-time constant from the layout. One load, where
/// `bpf_probe_read_kernel` costs a helper call and a checked copy (a sixth of twtrace's kernel
/// cost per connection on the fentry route was such copies). The verifier refuses a context
/// load at a computed address ("modified ctx ptr"), so each possible `n` is its own load at a
/// constant offset; `n` is known to the verifier (frozen .rodata), which walks one arm only.
/// A pointer argument read this way is a typed kernel pointer: fine to store or compare, but
/// see [`scalar_arg`] for why loops should not derive addresses from it. None past the last
/// slot any traced function has.
#[inline(always)]
pub fn ctx_word<C: aya_ebpf::EbpfContext>(ctx: &C, n: u32) -> Option<u64> {
    let p = ctx.as_ptr() as *const u64;
    // In assembly, one load per arm: LLVM merges plain (even volatile) loads of the arms into
    // one load at `p + 8n`, which the verifier refuses.
    macro_rules! arms {
        ($($k:literal => $off:literal)*) => {
            match n {
                $($k => {
                    let v: u64;
                    // SAFETY: a load from the program's own context; the verifier checks
                    // that slot `n` exists for the traced function.
                    unsafe {
                        core::arch::asm!(
                            concat!("{v} = *(u64 *)({p} + ", $off, ")"),
                            v = out(reg) v,
                            p = in(reg) p,
                            options(readonly, nostack, preserves_flags),
                        )
                    };
                    Some(v)
                })*
                _ => None,
            }
        };
    }
    arms!(0 => 0 1 => 8 2 => 16 3 => 24 4 => 32 5 => 40 6 => 48 7 => 56 8 => 64 9 => 72
        10 => 80 11 => 88)
}

impl Flow {
    /// Same addresses, ports and namespace as an event filled from another socket.
    #[inline(always)]
    pub fn same_as(&self, ev: &twtrace_common::Event) -> bool {
        self.lport == ev.lport
            && self.rport == ev.rport
            && self.netns == ev.netns
            && self.family == ev.family
            && self.addr_words() == event_addr_words(ev)
    }

    /// The local and remote addresses as two words each, like [`event_addr_words`].
    #[inline(always)]
    fn addr_words(&self) -> ([u64; 2], [u64; 2]) {
        const {
            assert!(core::mem::align_of::<Flow>() >= 8);
            assert!(core::mem::offset_of!(Flow, laddr) % 8 == 0);
            assert!(core::mem::offset_of!(Flow, raddr) % 8 == 0);
        };
        // SAFETY: fields of an 8-aligned Flow at 8-aligned offsets (checked above).
        unsafe {
            (
                core::ptr::read(self.laddr.as_ptr() as *const [u64; 2]),
                core::ptr::read(self.raddr.as_ptr() as *const [u64; 2]),
            )
        }
    }
}

/// An event's local and remote addresses as two words each. An `Event` is 8-byte aligned and
/// its address fields lie at multiples of 8, so they are read with aligned loads: LLVM cannot
/// know that of a `[u8; 16]` behind a pointer from a helper (map value, ring record) and
/// reads it byte by byte. Takes the whole event, so that only its fields can be read so.
#[inline(always)]
fn event_addr_words(ev: &twtrace_common::Event) -> ([u64; 2], [u64; 2]) {
    const {
        assert!(core::mem::align_of::<twtrace_common::Event>() == 8);
        assert!(core::mem::offset_of!(twtrace_common::Event, laddr) % 8 == 0);
        assert!(core::mem::offset_of!(twtrace_common::Event, raddr) % 8 == 0);
    };
    // SAFETY: fields of a (properly aligned) Event at 8-aligned offsets (checked above).
    unsafe {
        (
            core::ptr::read(ev.laddr.as_ptr() as *const [u64; 2]),
            core::ptr::read(ev.raddr.as_ptr() as *const [u64; 2]),
        )
    }
}

/// Signals the shared tp_btf dispatchers serve (`twtrace_common::route`).
#[inline(always)]
pub fn routes() -> u32 {
    crate::maps::ROUTES.get(0).copied().unwrap_or(0)
}
