//! Everything twtrace learns about the running kernel, in one place: BTF (offsets, enums,
//! functions), kallsyms, tracefs formats, lockdown, HZ and which program types load.

pub mod btf;
pub mod caps;
pub mod kallsyms;
pub mod layout;
pub mod netns;
pub mod skipped_runs;
pub mod sock_diag;
pub mod sysinfo;
pub mod tracefs;

use anyhow::{Result, bail};

/// Refuses, with one clear message each, the environments twtrace cannot work in.
pub fn preflight() -> Result<()> {
    if !sysinfo::is_root() {
        bail!("twtrace needs root (CAP_BPF, CAP_PERFMON and CAP_NET_ADMIN): run it with sudo");
    }
    if !std::path::Path::new("/sys/kernel/btf/vmlinux").exists() {
        bail!(
            "no kernel BTF at /sys/kernel/btf/vmlinux: twtrace needs a kernel built with \
             CONFIG_DEBUG_INFO_BTF=y (all current Debian, Ubuntu, Fedora and RHEL kernels are)"
        );
    }
    if sysinfo::lockdown().as_deref() == Some("confidentiality") {
        bail!(
            "kernel lockdown is 'confidentiality', which forbids BPF programs from reading kernel \
             memory; twtrace cannot trace under it (boot with lockdown=integrity or none)"
        );
    }
    Ok(())
}
