//! Loads the eBPF object for the running kernel: layout injection, map sizing, hook choice.

use anyhow::{Context as _, Result};
use aya::{Btf, Ebpf, EbpfLoader};
use twtrace_common::{KernelLayout, Settings};

use crate::{
    kernel::{self, btf::KernelBtf, caps::Caps, kallsyms::Kallsyms, layout, sysinfo},
    plan::{self, Choice, Facts},
    signals::{DecodeCtx, Family},
};

/// The compiled eBPF object, built by build.rs (aya-build).
static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/twtrace"));

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
}

impl KernelFacts {
    pub fn gather(btf: &KernelBtf) -> Result<Self> {
        let syms = Kallsyms::load()?;
        let mut layout = KernelLayout::zeroed();
        layout::struct_offsets(btf, &mut layout).context("reading struct offsets from BTF")?;
        layout::tracepoint_offsets(&mut layout).context("reading tracepoint formats")?;
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

pub fn load(opts: &LoadOptions) -> Result<Loaded> {
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
        .map_max_entries("LIVE", opts.max_live_tw)
        .map_max_entries(
            "TW_BY_FLOW",
            if facts.tw_flows() {
                opts.max_live_tw
            } else {
                1
            },
        )
        .load(EBPF_OBJECT)
        .context("loading the eBPF object")?;
    let logger = aya_log::EbpfLogger::init(&mut bpf)
        .map_err(|e| log::warn!("eBPF diagnostics unavailable (aya-log): {e}"))
        .ok();
    log::info!("object loaded at {:?}", t0.elapsed());
    let choices = plan::attach_all(
        &mut bpf,
        &Facts {
            btf: &btf,
            kbtf: &kbtf,
            syms: &facts.syms,
            caps: &facts.caps,
            tw_flows: facts.tw_flows(),
        },
        opts.forced,
        &opts.signals,
    )?;
    log::info!("programs attached at {:?}", t0.elapsed());
    for w in choices.iter().filter_map(|c| c.warning.as_ref()) {
        eprintln!("twtrace: warning: {w}");
    }
    let by_flow = choices
        .iter()
        .any(|c| matches!(c.signal, "paws_reject" | "tw_exit") && c.chosen == Some(Family::TpBtf));
    if facts.tw_flows() && by_flow {
        eprintln!(
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
}
