//! What the numbers were measured on, for the report.

use std::process::Command;
use std::time::{SystemTime, UNIX_EPOCH};

#[derive(serde::Serialize)]
pub struct Machine {
    pub nproc: usize,
    pub cpu_model: String,
    pub kernel: String,
    pub date_utc: String,
    pub loadavg_at_start: String,
    pub tools: Vec<String>,
}

pub fn describe() -> Machine {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let cpu_model = cpuinfo
        .lines()
        .find_map(|l| {
            l.strip_prefix("model name")?
                .split_once(':')
                .map(|(_, v)| v.trim().to_string())
        })
        .unwrap_or_else(|| "unknown".into());
    let read = |p: &str| {
        std::fs::read_to_string(p)
            .unwrap_or_default()
            .trim()
            .to_string()
    };
    Machine {
        nproc: std::thread::available_parallelism().map_or(0, |n| n.get()),
        cpu_model,
        kernel: read("/proc/sys/kernel/osrelease"),
        date_utc: utc(now_secs(), true),
        loadavg_at_start: read("/proc/loadavg"),
        tools: [
            ("wrk", &["-v"][..]),
            ("nginx", &["-v"][..]),
            ("bpftrace", &["--version"][..]),
        ]
        .iter()
        .map(|(t, a)| version(t, a))
        .collect(),
    }
}

/// First line a tool prints about its version (nginx uses stderr, wrk -v exits 1).
fn version(tool: &str, args: &[&str]) -> String {
    match Command::new(tool).args(args).output() {
        Ok(o) => {
            let text = format!(
                "{}{}",
                String::from_utf8_lossy(&o.stdout),
                String::from_utf8_lossy(&o.stderr)
            );
            text.lines().next().unwrap_or(tool).trim().to_string()
        }
        Err(_) => format!("{tool}: not found"),
    }
}

pub fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// UTC time as "2025-01-31 12:34:56 UTC", or compact "20250131T123456Z" for file names.
pub fn utc(secs: u64, readable: bool) -> String {
    let (days, rem) = ((secs / 86_400) as i64, secs % 86_400);
    let (h, m, s) = (rem / 3600, rem / 60 % 60, rem % 60);
    // Howard Hinnant's civil_from_days: days since 1970-01-01 to a Gregorian date.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let mo = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(mo <= 2);
    if readable {
        format!("{y:04}-{mo:02}-{d:02} {h:02}:{m:02}:{s:02} UTC")
    } else {
        format!("{y:04}{mo:02}{d:02}T{h:02}{m:02}{s:02}Z")
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn dates() {
        assert_eq!(super::utc(0, true), "1970-01-01 00:00:00 UTC");
        assert_eq!(super::utc(951_782_400, false), "20000229T000000Z");
        assert_eq!(super::utc(1_767_225_599, true), "2025-12-31 23:59:59 UTC");
    }
}
