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

/// The kernel's CONFIG_HZ (timer tick), to turn jiffies into milliseconds.
pub fn hz() -> Result<u64> {
    if let Some(hz) = config_value("CONFIG_HZ")? {
        return hz.parse().context("CONFIG_HZ is not a number");
    }
    anyhow::bail!(
        "cannot find CONFIG_HZ in /proc/config.gz or /boot/config-{}",
        release()
    )
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

#[cfg(test)]
mod tests {
    use super::*;

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
    }
}
