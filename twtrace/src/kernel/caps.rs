//! Which hook families this kernel supports, judged by facts (kprobe PMU, config) before any
//! load is tried. The final word is always an actual load + attach (see `plan.rs`).

use std::path::Path;

use super::sysinfo;

#[derive(Debug, Clone)]
pub struct Caps {
    /// CONFIG_KPROBES, when the kernel config is readable.
    pub kprobes_config: Option<bool>,
    /// The kprobe perf PMU exists (kprobes can be created through perf_event_open).
    pub kprobe_pmu: bool,
    /// CONFIG_FUNCTION_TRACER / DYNAMIC_FTRACE_WITH_DIRECT_CALLS (fentry needs a trampoline).
    pub ftrace_direct: Option<bool>,
}

impl Caps {
    pub fn probe() -> Self {
        // Unknown (None) without a readable config: an absent key there means "not set".
        let readable = sysinfo::config_readable();
        let cfg = |k: &str| {
            sysinfo::config_value(k)
                .ok()
                .filter(|_| readable)
                .map(|v| v.as_deref() == Some("y"))
        };
        Self {
            kprobes_config: cfg("CONFIG_KPROBES"),
            kprobe_pmu: Path::new("/sys/bus/event_source/devices/kprobe").exists(),
            ftrace_direct: cfg("CONFIG_DYNAMIC_FTRACE_WITH_DIRECT_CALLS"),
        }
    }

    /// Why kprobes cannot work here, if we can tell without trying.
    pub fn kprobe_blocker(&self) -> Option<String> {
        if self.kprobes_config == Some(false) {
            return Some("kernel built without CONFIG_KPROBES".into());
        }
        if !self.kprobe_pmu {
            return Some("no kprobe PMU in /sys/bus/event_source/devices".into());
        }
        None
    }

    /// Why fentry/fexit cannot work here, if we can tell without trying.
    pub fn fentry_blocker(&self) -> Option<String> {
        if self.ftrace_direct == Some(false) {
            return Some(
                "kernel built without DYNAMIC_FTRACE_WITH_DIRECT_CALLS (no BPF trampoline)".into(),
            );
        }
        None
    }
}
