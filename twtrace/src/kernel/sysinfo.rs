//! Facts about the running kernel that are not in BTF: release, lockdown mode, HZ, privileges.

use std::{fs, io::Read as _};

use anyhow::{Context as _, Result};

pub fn release() -> String {
    fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_owned())
        .unwrap_or_else(|_| "unknown".into())
}

/// The active lockdown mode ("none", "integrity", "confidentiality"), if the LSM is present.
pub fn lockdown() -> Option<String> {
    let text = fs::read_to_string("/sys/kernel/security/lockdown")
        .ok()
        .or_else(|| {
            // securityfs may simply not be mounted; mount it once and retry.
            // SAFETY: plain mount(2) with static C strings.
            unsafe {
                libc::mount(
                    c"securityfs".as_ptr(),
                    c"/sys/kernel/security".as_ptr(),
                    c"securityfs".as_ptr(),
                    0,
                    std::ptr::null(),
                )
            };
            fs::read_to_string("/sys/kernel/security/lockdown").ok()
        })?;
    parse_lockdown(&text)
}

/// "none [integrity] confidentiality" -> "integrity"
pub fn parse_lockdown(text: &str) -> Option<String> {
    let start = text.find('[')?;
    let end = text[start..].find(']')? + start;
    Some(text[start + 1..end].to_owned())
}

/// The kernel's CONFIG_HZ (timer tick), to turn jiffies into milliseconds: from the kernel
/// config, or, where none is readable (a container without the host's /boot), measured.
pub fn hz() -> Result<u64> {
    if let Some(hz) = config_value("CONFIG_HZ")? {
        return hz.parse().context("CONFIG_HZ is not a number");
    }
    measured_hz().with_context(|| {
        format!(
            "cannot find CONFIG_HZ in /proc/config.gz or /boot/config-{}, nor measure it from \
             /proc/timer_list",
            release()
        )
    })
}

/// HZ measured: the jiffies /proc/timer_list shows, 200 ms of CLOCK_MONOTONIC apart, snapped
/// to the tick rate Linux offers nearest (100, 250, 300, 1000).
fn measured_hz() -> Result<u64> {
    let jiffies = || -> Result<(u64, std::time::Instant)> {
        let text = fs::read_to_string("/proc/timer_list").context("reading /proc/timer_list")?;
        let now = std::time::Instant::now();
        let j = text
            .lines()
            .find_map(|l| l.strip_prefix("jiffies:"))
            .context("no `jiffies:` line in /proc/timer_list")?
            .trim()
            .parse()
            .context("jiffies is not a number")?;
        Ok((j, now))
    };
    let (j0, t0) = jiffies()?;
    std::thread::sleep(std::time::Duration::from_millis(200));
    let (j1, t1) = jiffies()?;
    snap_hz(j1.wrapping_sub(j0), t1.duration_since(t0).as_secs_f64())
        .context("jiffies did not advance at a usual tick rate")
}

/// The usual tick rate within 10 % of `ticks` per `secs`, if any.
fn snap_hz(ticks: u64, secs: f64) -> Option<u64> {
    let rate = ticks as f64 / secs;
    [100u64, 250, 300, 1000]
        .into_iter()
        .find(|&hz| (rate - hz as f64).abs() <= hz as f64 * 0.1)
}

/// Whether the kernel config is readable (/proc/config.gz or /boot/config-<release>): without
/// it no CONFIG_ value is known, which is not the same as "not set".
pub fn config_readable() -> bool {
    matches!(config_text(), Ok(Some(_)))
}

/// The kernel config text from /proc/config.gz or /boot/config-<release>, read once.
fn config_text() -> Result<Option<&'static str>> {
    static TEXT: std::sync::OnceLock<Option<String>> = std::sync::OnceLock::new();
    if let Some(t) = TEXT.get() {
        return Ok(t.as_deref());
    }
    let text = if let Ok(gz) = fs::File::open("/proc/config.gz") {
        let mut s = String::new();
        flate2::read::GzDecoder::new(gz)
            .read_to_string(&mut s)
            .context("decompressing /proc/config.gz")?;
        Some(s)
    } else {
        fs::read_to_string(format!("/boot/config-{}", release())).ok()
    };
    Ok(TEXT.get_or_init(|| text).as_deref())
}

/// Reads a CONFIG_ value from /proc/config.gz or /boot/config-<release>.
pub fn config_value(key: &str) -> Result<Option<String>> {
    let Some(text) = config_text()? else {
        return Ok(None);
    };
    let prefix = format!("{key}=");
    Ok(text
        .lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .map(|v| v.trim_matches('"').to_owned()))
}

pub fn is_root() -> bool {
    // SAFETY: geteuid never fails.
    unsafe { libc::geteuid() == 0 }
}

/// The capabilities loading twtrace's programs needs that this process lacks (root in a
/// container may have none of them): CAP_BPF and CAP_PERFMON (Linux 5.8), or CAP_SYS_ADMIN
/// which covered both before. Empty when it has them, or when /proc cannot tell.
pub fn missing_bpf_caps() -> Vec<&'static str> {
    let status = fs::read_to_string("/proc/self/status").unwrap_or_default();
    effective_caps(&status).map_or_else(Vec::new, missing_of)
}

/// Whether this process has CAP_SYSLOG, which kernel.kptr_restrict=1 (or 0 with
/// kernel.perf_event_paranoid above 1) asks of a reader of /proc/kallsyms's addresses.
/// None when /proc cannot tell.
pub fn has_cap_syslog() -> Option<bool> {
    const CAP_SYSLOG: u32 = 34;
    let status = fs::read_to_string("/proc/self/status").ok()?;
    effective_caps(&status).map(|eff| eff & (1 << CAP_SYSLOG) != 0)
}

/// Whether this process runs in a user namespace other than the initial one (a rootless
/// container, `unshare -r`): root there, with every capability, but capabilities count there
/// only, and BPF asks for them in the initial namespace. That one's inode is fixed
/// (PROC_USER_INIT_INO, include/linux/proc_ns.h). False when /proc cannot tell.
pub fn in_child_user_namespace() -> bool {
    const PROC_USER_INIT_INO: u64 = 0xEFFF_FFFD;
    use std::os::unix::fs::MetadataExt as _;
    fs::metadata("/proc/self/ns/user").is_ok_and(|m| m.ino() != PROC_USER_INIT_INO)
}

/// CapEff of a /proc/PID/status text.
fn effective_caps(status: &str) -> Option<u64> {
    let hex = status.lines().find_map(|l| l.strip_prefix("CapEff:"))?;
    u64::from_str_radix(hex.trim(), 16).ok()
}

fn missing_of(eff: u64) -> Vec<&'static str> {
    const CAP_SYS_ADMIN: u32 = 21;
    const CAP_PERFMON: u32 = 38;
    const CAP_BPF: u32 = 39;
    let has = |cap: u32| eff & (1 << cap) != 0;
    if has(CAP_SYS_ADMIN) {
        return Vec::new();
    }
    [(CAP_BPF, "CAP_BPF"), (CAP_PERFMON, "CAP_PERFMON")]
        .into_iter()
        .filter(|&(cap, _)| !has(cap))
        .map(|(_, name)| name)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bpf_capabilities_from_capeff() {
        let status = "Name:\ttwtrace\nCapPrm:\t000001ffffffffff\nCapEff:\t000001ffffffffff\n";
        assert_eq!(effective_caps(status), Some(0x1ff_ffff_ffff));
        assert!(missing_of(0x1ff_ffff_ffff).is_empty());
        // CAP_SYS_ADMIN alone covers both (kernels before 5.8 have neither).
        assert!(missing_of(1 << 21).is_empty());
        assert_eq!(missing_of(1 << 39), ["CAP_PERFMON"]);
        // Docker's default set: no CAP_SYS_ADMIN, CAP_BPF or CAP_PERFMON.
        assert_eq!(missing_of(0xa80425fb), ["CAP_BPF", "CAP_PERFMON"]);
        assert_eq!(effective_caps("CapEff:\tzz\n"), None);
        assert_eq!(effective_caps(""), None);
    }

    #[test]
    fn lockdown_brackets() {
        assert_eq!(
            parse_lockdown("none [integrity] confidentiality\n").as_deref(),
            Some("integrity")
        );
        assert_eq!(
            parse_lockdown("[none] integrity confidentiality").as_deref(),
            Some("none")
        );
        assert_eq!(parse_lockdown("garbage"), None);
    }

    #[test]
    fn running_kernel_hz_is_a_usual_value() {
        let hz = hz().unwrap();
        assert!([100, 250, 300, 1000].contains(&hz), "HZ={hz}");
        // Measured, as where no kernel config is readable: the same value.
        assert_eq!(measured_hz().unwrap(), hz);
    }

    #[test]
    fn measured_rates_snap_to_the_usual_ticks() {
        assert_eq!(snap_hz(50, 0.2), Some(250));
        assert_eq!(snap_hz(61, 0.201), Some(300));
        assert_eq!(snap_hz(199, 0.2), Some(1000));
        assert_eq!(snap_hz(21, 0.2), Some(100));
        assert_eq!(snap_hz(80, 0.2), None, "400 Hz is no Linux tick rate");
        assert_eq!(snap_hz(0, 0.2), None);
    }
}
