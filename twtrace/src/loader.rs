//! Loads the eBPF object for the running kernel: layout injection, map sizing, hook choice.

use anyhow::{Context as _, Result};
use aya::{Btf, Ebpf, EbpfLoader};
use twtrace_common::{KernelLayout, Settings};

use crate::{
    kernel::{self, btf::KernelBtf, caps::Caps, kallsyms::Kallsyms, layout, sysinfo},
    plan::{self, Choice, Facts},
    signals::{DecodeCtx, Family},
};

/// The compiled eBPF object, built by build.rs (aya-build). Public for the end-to-end tests,
/// which load its test program `hold_cpu` themselves.
pub static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/twtrace"));

/// Sizing and filtering knobs that reach the kernel side.
#[derive(Clone, Debug)]
pub struct LoadOptions {
    pub forced: Option<Family>,
    /// Signals to trace (empty: all).
    pub signals: Vec<&'static str>,
    pub netns: u32,
    pub ring_bytes: u32,
    pub max_live_tw: u32,
    /// Route nothing through the tp_btf programs once attached (see `--hooks-only`).
    pub hooks_only: bool,
}

/// Everything a run needs about the kernel, gathered once.
pub struct KernelFacts {
    pub release: String,
    pub lockdown: Option<String>,
    pub hz: u64,
    pub caps: Caps,
    pub syms: Kallsyms,
    pub layout: KernelLayout,
    pub ranges: [twtrace_common::CodeRange; twtrace_common::MAX_CODE_RANGES],
    /// Call-chain functions absent on this kernel (their causes read `unknown`).
    pub missing_frames: Vec<&'static str>,
    /// Tracepoints whose format cannot be read, and why: the classic hooks on them are out.
    pub unreadable_tracepoints: Vec<(&'static str, &'static str, String)>,
    /// The kernel counts the runs of classic tracepoint and kprobe programs it skips (6.7+;
    /// see `kernel::skipped_runs`).
    pub skips_counted: bool,
}

impl KernelFacts {
    pub fn gather(btf: &KernelBtf) -> Result<Self> {
        let syms = Kallsyms::load()?;
        let mut layout = KernelLayout::zeroed();
        layout::struct_offsets(btf, &mut layout).context("reading struct offsets from BTF")?;
        let unreadable_tracepoints = layout::tracepoint_offsets(&mut layout);
        let (ranges, missing_frames) = layout::code_ranges(&syms, &mut layout)?;
        Ok(Self {
            release: sysinfo::release(),
            lockdown: sysinfo::lockdown(),
            hz: sysinfo::hz()?,
            caps: Caps::probe(),
            syms,
            layout,
            ranges,
            missing_frames,
            unreadable_tracepoints,
            skips_counted: kernel::skipped_runs::counted_for_classic_and_kprobe(btf),
        })
    }

    /// Whether the tp_btf route keeps live TIME-WAITs by connection here: kfree_skb names no
    /// dropping socket (before 6.11) but has drop reasons (5.17+), so a drop without one may be
    /// a TIME-WAIT's, found by the segment's connection (twtrace-ebpf/src/tw_flows.rs).
    pub fn tw_flows(&self) -> bool {
        self.layout.btf_kfree_skb_rx_sk_arg == u32::MAX
            && self.layout.btf_kfree_skb_reason_arg != u32::MAX
            && self.layout.reason_not_specified != u32::MAX
    }

    pub fn decode_ctx(&self) -> DecodeCtx {
        DecodeCtx { hz: self.hz }
    }
}

pub struct Loaded {
    pub bpf: Ebpf,
    /// The programs' own diagnostics (aya-log), drained on every poll; kept alive because its
    /// map must outlive the programs that write to it.
    pub logger: Option<aya_log::EbpfLogger<&'static dyn log::Log>>,
    pub choices: Vec<Choice>,
    pub facts: KernelFacts,
    /// TIME-WAITs tracked at once for lifetimes (`--max-live-tw`).
    pub max_live_tw: usize,
}

/// The eBPF object in memory with this kernel's layout injected, nothing attached yet, and
/// what was learnt of the kernel on the way.
struct Opened {
    kbtf: KernelBtf,
    facts: KernelFacts,
    btf: Btf,
    bpf: Ebpf,
    logger: Option<aya_log::EbpfLogger<&'static dyn log::Log>>,
}

impl Opened {
    /// What hook choice needs (borrowed field by field, so that `bpf` stays free to mutate).
    fn plan_facts<'a>(btf: &'a Btf, kbtf: &'a KernelBtf, facts: &'a KernelFacts) -> Facts<'a> {
        Facts {
            btf,
            kbtf,
            syms: &facts.syms,
            caps: &facts.caps,
            tw_flows: facts.tw_flows(),
            unreadable_tracepoints: &facts.unreadable_tracepoints,
        }
    }
}

/// Opens the object. `live_table`: size the kernel's table of live TIME-WAITs (`LIVE`) to
/// `--max-live-tw`; otherwise it gets one entry. Only the classic tracepoint route of tw_enter
/// and tw_exit uses it, and as a preallocated hash it would hold its memory (about 23 MB at
/// the default 262144) on every route.
fn open(opts: &LoadOptions, live_table: bool) -> Result<Opened> {
    let t0 = std::time::Instant::now();
    kernel::preflight()?;
    let kbtf = KernelBtf::from_sysfs()?;
    log::info!("kernel BTF parsed in {:?}", t0.elapsed());
    let facts = KernelFacts::gather(&kbtf)?;
    log::info!("kernel facts gathered at {:?}", t0.elapsed());
    let btf = Btf::from_sys_fs().context("loading kernel BTF for the loader")?;
    log::info!("loader BTF parsed at {:?}", t0.elapsed());
    let settings = Settings {
        netns_filter: opts.netns,
        // Wake the reader at 1/8 of the ring: early enough never to fill it between polls.
        wakeup_bytes: u64::from(opts.ring_bytes / 8),
        hooks_only: u32::from(opts.hooks_only),
    };
    let mut bpf = EbpfLoader::new()
        .btf(Some(&btf))
        .override_global("LAYOUT", &facts.layout, true)
        .override_global("RANGES", &facts.ranges, true)
        .override_global("SETTINGS", &settings, true)
        .map_max_entries("EVENTS", opts.ring_bytes)
        .map_max_entries("LIVE", if live_table { opts.max_live_tw } else { 1 })
        .map_max_entries(
            "TW_BY_FLOW",
            if facts.tw_flows() {
                opts.max_live_tw
            } else {
                1
            },
        )
        .load(EBPF_OBJECT)
        .with_context(|| {
            format!(
                "loading the eBPF object, its maps sized by --ring-kib {} and --max-live-tw {}",
                opts.ring_bytes / 1024,
                opts.max_live_tw
            )
        })?;
    let logger = aya_log::EbpfLogger::init(&mut bpf)
        .map_err(|e| log::warn!("eBPF diagnostics unavailable (aya-log): {e}"))
        .ok();
    log::info!("object loaded at {:?}", t0.elapsed());
    Ok(Opened {
        kbtf,
        facts,
        btf,
        bpf,
        logger,
    })
}

pub fn load(opts: &LoadOptions) -> Result<Loaded> {
    let t0 = std::time::Instant::now();
    let wants_lifecycle = opts.signals.is_empty()
        || (opts.signals.iter()).any(|s| matches!(*s, "tw_enter" | "tw_exit"));
    let live_table = wants_lifecycle && opts.forced == Some(Family::Tracepoint);
    let (mut opened, mut choices) = open_and_attach(opts, live_table)?;
    if !live_table && uses_live_table(&choices) {
        // Automatic choice fell back to classic tracepoints: everything again, with the table
        // (dropping the first load detaches its programs; nothing has read their events).
        log::info!("classic tracepoints chosen: loading again with the live TIME-WAIT table");
        drop((opened, choices));
        (opened, choices) = open_and_attach(opts, true)?;
    }
    let Opened {
        facts,
        mut bpf,
        logger,
        ..
    } = opened;
    log::info!("programs attached in {:?}", t0.elapsed());
    for w in choices.iter().filter_map(|c| c.warning.as_ref()) {
        crate::say!("twtrace: warning: {w}");
    }
    let by_flow = choices
        .iter()
        .any(|c| matches!(c.signal, "paws_reject" | "tw_exit") && c.chosen == Some(Family::TpBtf));
    if facts.tw_flows() && by_flow {
        crate::say!(
            "twtrace: note: this kernel's kfree_skb names no socket, so TIME-WAITs are found by \
             connection: one that exists already is learnt at its next timer re-arm or end, and \
             a PAWS reject or reset at it before that is not attributed"
        );
    }
    if opts.hooks_only {
        plan::silence(&mut bpf)?;
    }
    Ok(Loaded {
        bpf,
        logger,
        choices,
        facts,
        max_live_tw: opts.max_live_tw as usize,
    })
}

fn open_and_attach(opts: &LoadOptions, live_table: bool) -> Result<(Opened, Vec<plan::Choice>)> {
    let mut opened = open(opts, live_table)?;
    let Opened {
        kbtf,
        facts,
        btf,
        bpf,
        ..
    } = &mut opened;
    let choices = plan::attach_all(
        bpf,
        &Opened::plan_facts(btf, kbtf, facts),
        opts.forced,
        &opts.signals,
    )?;
    Ok((opened, choices))
}

/// Whether `signal` is served by classic tracepoints.
fn classic(choices: &[plan::Choice], signal: &str) -> bool {
    (choices.iter()).any(|c| c.signal == signal && c.chosen == Some(Family::Tracepoint))
}

/// Whether a chosen hook keeps TIME-WAITs in the kernel's live table (see [`open`]).
fn uses_live_table(choices: &[plan::Choice]) -> bool {
    classic(choices, "tw_enter") || classic(choices, "tw_exit")
}

/// Whether the kernel pairs TIME-WAIT enters with exits (both on classic tracepoints, through
/// its live table); user space does it for any other choice.
pub fn lifetimes_paired_in_kernel(choices: &[plan::Choice]) -> bool {
    classic(choices, "tw_enter") && classic(choices, "tw_exit")
}

/// Whether TIME-WAIT exits and SYNs both come from the tp_btf route: only there does an exit
/// the kernel side could not explain wait in user space for a late SYN (pipeline/late_syn.rs).
pub fn late_syns(choices: &[plan::Choice]) -> bool {
    let on = |signal: &str| {
        (choices.iter()).any(|c| c.signal == signal && c.chosen == Some(Family::TpBtf))
    };
    on("tw_exit") && on("syn")
}

/// Every hook of every signal, loaded and attached one at a time and detached again
/// (`twtrace doctor --all-hooks`), with what was learnt of the kernel.
pub fn try_every_hook(opts: &LoadOptions) -> Result<(KernelFacts, Vec<plan::HookTrial>)> {
    let Opened {
        kbtf,
        facts,
        btf,
        mut bpf,
        // Held until the end: the programs write to its map, whose fd dropping it would close.
        logger: _logger,
    } = open(opts, false)?;
    let trials = plan::try_every_hook(
        &mut bpf,
        &Opened::plan_facts(&btf, &kbtf, &facts),
        &opts.signals,
    );
    Ok((facts, trials))
}

#[cfg(test)]
mod tests {
    use object::{Object, ObjectSection, ObjectSymbol, RelocationTarget};

    /// Zeroing or copying a buffer can compile to a call of the object's own `memset` or
    /// `memcpy`, which move one byte per loop turn: about 600 instructions for one 96-byte
    /// event, which once were a fifth of the programs' work per connection. The programs zero
    /// and copy with word stores instead (`kernel::zero_words`, `v4_in_16`); this keeps it so.
    #[test]
    fn no_program_calls_a_byte_loop_mem_function() {
        let obj = object::File::parse(super::EBPF_OBJECT).expect("the eBPF object parses");
        let mut calls = Vec::new();
        for section in obj.sections() {
            for (_, rel) in section.relocations() {
                let RelocationTarget::Symbol(i) = rel.target() else {
                    continue;
                };
                let name = obj.symbol_by_index(i).and_then(|s| s.name()).unwrap_or("");
                if ["memset", "memcpy", "memmove", "memcmp", "bcmp"].contains(&name) {
                    calls.push(format!("{} -> {name}", section.name().unwrap_or("?")));
                }
            }
        }
        assert!(
            calls.is_empty(),
            "byte-loop calls in eBPF programs: {calls:?}"
        );
    }

    /// eBPF functions by (section, first instruction): name, stack depth, functions called.
    type Funcs = std::collections::BTreeMap<(usize, u64), (String, u64, Vec<(usize, u64)>)>;

    /// The verifier adds up the stack frames of a call chain, each rounded up to 32 bytes, and
    /// refuses a program whose deepest chain passes 512. 6.1 did so for a dispatcher that
    /// 6.12 loaded, and only CI's VM stage saw it; this catches it on the host (checked to
    /// fail on that tree, 8a520b0, with the verifier's own 544). A frame's depth is the
    /// deepest stack slot its instructions address (through r10, or a register set from r10
    /// and moved down for a helper's buffer): close to, not exactly, the verifier's measure.
    #[test]
    fn every_call_chain_fits_the_bpf_stack() {
        let obj = object::File::parse(super::EBPF_OBJECT).expect("the eBPF object parses");
        let text = obj.section_by_name(".text");
        let text_index = text.as_ref().map(|t| t.index());
        // Functions by (section, first instruction): their depth and the functions they call.
        let mut funcs: Funcs = Default::default();
        for sym in obj
            .symbols()
            .filter(|s| s.kind() == object::SymbolKind::Text)
        {
            let Some(sec_index) = sym.section_index() else {
                continue;
            };
            let section = obj.section_by_index(sec_index).expect("symbol's section");
            let data = section.data().expect("section data");
            let relocated: std::collections::HashSet<u64> =
                section.relocations().map(|(off, _)| off / 8).collect();
            let (start, end) = (sym.address() / 8, (sym.address() + sym.size()) / 8);
            let mut depth = 0i64;
            let mut from_r10 = [false; 11];
            let mut calls = Vec::new();
            let mut i = start;
            while i < end {
                let at = (i * 8) as usize;
                let insn = &data[at..at + 8];
                let (op, dst, src) = (insn[0], insn[1] & 0xf, insn[1] >> 4);
                let off = i64::from(i16::from_le_bytes([insn[2], insn[3]]));
                let imm = i64::from(i32::from_le_bytes([insn[4], insn[5], insn[6], insn[7]]));
                match op & 0x07 {
                    // LDX: src is the base; ST, STX: dst is.
                    0x01 if src == 10 => depth = depth.max(-off),
                    0x02 | 0x03 if dst == 10 => depth = depth.max(-off),
                    _ => {}
                }
                match op {
                    // rX = r10, then rX += -N: a stack buffer handed to a helper.
                    0xbf => from_r10[usize::from(dst).min(10)] = src == 10,
                    0x07 if dst < 10 && from_r10[usize::from(dst)] => depth = depth.max(-imm),
                    // A call of a BPF function (not a helper): within .text relative to the
                    // next instruction; from a program section relocated against .text.
                    0x85 if src == 1 => {
                        let target = if Some(sec_index) == text_index {
                            (i as i64 + imm + 1) as u64
                        } else {
                            assert!(relocated.contains(&i), "unrelocated call at {i}");
                            (imm + 1) as u64
                        };
                        calls.push((text_index.expect(".text").0, target));
                    }
                    _ => {}
                }
                if op & 0x07 != 0x07 && op != 0xbf {
                    // Any other write of a register ends what we know of it.
                    if matches!(op & 0x07, 0x00 | 0x01 | 0x04) {
                        from_r10[usize::from(dst).min(10)] = false;
                    }
                }
                // A 64-bit immediate load takes two slots.
                i += if op == 0x18 { 2 } else { 1 };
            }
            let name = sym.name().unwrap_or("?").to_string();
            funcs.insert((sec_index.0, start), (name, depth.max(0) as u64, calls));
        }
        fn chain(
            f: (usize, u64),
            funcs: &Funcs,
            seen: &mut Vec<(usize, u64)>,
        ) -> (u64, Vec<String>) {
            let (name, depth, calls) = &funcs[&f];
            assert!(!seen.contains(&f), "recursion through {name}");
            seen.push(f);
            let frame = (*depth).max(1).next_multiple_of(32);
            let deepest = calls
                .iter()
                .map(|c| chain(*c, funcs, seen))
                .max_by_key(|(d, _)| *d)
                .unwrap_or_default();
            seen.pop();
            let mut path = vec![format!("{name} ({depth})")];
            path.extend(deepest.1);
            (frame + deepest.0, path)
        }
        let mut checked = 0;
        for (&key, (name, ..)) in funcs
            .iter()
            .filter(|(k, _)| Some(object::SectionIndex(k.0)) != text_index)
        {
            let (total, path) = chain(key, &funcs, &mut Vec::new());
            assert!(
                total <= 512,
                "{name}: call chain needs {total} bytes of stack: {path:?}"
            );
            checked += 1;
        }
        assert!(checked > 20, "only {checked} programs found");
    }
}
