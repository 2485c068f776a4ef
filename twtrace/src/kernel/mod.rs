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
        bail!(
            "twtrace needs root (to load BPF programs: CAP_BPF and CAP_PERFMON; to read kernel \
             symbol addresses: CAP_SYSLOG; to read other namespaces' sockets: CAP_SYS_ADMIN): \
             run it with sudo"
        );
    }
    if sysinfo::in_child_user_namespace() {
        bail!(
            "twtrace runs in a user namespace (a rootless container, unshare -r): its root has \
             capabilities only there, and loading BPF programs needs them on the host; run it \
             as the host's root"
        );
    }
    let missing = sysinfo::missing_bpf_caps();
    if !missing.is_empty() {
        bail!(
            "twtrace runs as root but without {}, which loading BPF programs needs (CAP_SYS_ADMIN \
             would do too): in a container, add these capabilities (or run it privileged)",
            missing.join(" and ")
        );
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
