//! Kernel text symbols from /proc/kallsyms: function addresses and the extent of each function
//! (up to the next symbol), which the eBPF side needs to recognise frames of a call chain.

use std::{collections::HashMap, fs, ops::Range};

use anyhow::{Context as _, Result, bail};

pub struct Kallsyms {
    /// Text symbols sorted by address.
    sorted: Vec<(u64, String)>,
    /// Name -> index into `sorted` (first occurrence wins; duplicates are static functions).
    by_name: HashMap<String, usize>,
}

impl Kallsyms {
    pub fn load() -> Result<Self> {
        let text = fs::read_to_string("/proc/kallsyms").context("reading /proc/kallsyms")?;
        Self::parse(&text)
    }

    pub fn parse(text: &str) -> Result<Self> {
        let mut sorted = Vec::with_capacity(text.len() / 40);
        for line in text.lines() {
            let mut it = line.split_ascii_whitespace();
            let (Some(addr), Some(kind), Some(name)) = (it.next(), it.next(), it.next()) else {
                continue;
            };
            // Module symbols carry a "[module]" 4th column; they are never hook targets here.
            if it.next().is_some() || !matches!(kind, "t" | "T") {
                continue;
            }
            let addr = u64::from_str_radix(addr, 16).unwrap_or(0);
            sorted.push((addr, name.to_owned()));
        }
        if sorted.iter().all(|(a, _)| *a == 0) {
            bail!("/proc/kallsyms shows no addresses: {}", why_hidden());
        }
        sorted.sort_unstable_by_key(|(a, _)| *a);
        let mut by_name = HashMap::with_capacity(sorted.len());
        for (i, (_, name)) in sorted.iter().enumerate() {
            by_name.entry(name.clone()).or_insert(i);
        }
        Ok(Self { sorted, by_name })
    }

    pub fn addr(&self, name: &str) -> Option<u64> {
        self.by_name.get(name).map(|&i| self.sorted[i].0)
    }

    /// Address range of a function: from its start to the next text symbol.
    pub fn range(&self, name: &str) -> Option<Range<u64>> {
        let &i = self.by_name.get(name)?;
        let start = self.sorted[i].0;
        let end = self.sorted[i + 1..]
            .iter()
            .map(|(a, _)| *a)
            .find(|&a| a > start)?;
        Some(start..end)
    }

    pub fn contains(&self, name: &str) -> bool {
        self.by_name.contains_key(name)
    }
}

/// Why the kernel hides symbol addresses from this process (kallsyms_show_value() in
/// kernel/ksyms_common.c): kptr_restrict 2 hides them from everyone, 1 from all without
/// CAP_SYSLOG, 0 from those without it unless perf_event_paranoid is 1 or less.
fn why_hidden() -> String {
    let sysctl = |name: &str| {
        std::fs::read_to_string(format!("/proc/sys/kernel/{name}"))
            .ok()
            .and_then(|s| s.trim().parse::<i64>().ok())
    };
    match sysctl("kptr_restrict") {
        Some(2) => "kernel.kptr_restrict=2 hides them from everyone; set it to 1 (root then \
                    sees them) while twtrace runs"
            .to_owned(),
        Some(n) if crate::kernel::sysinfo::has_cap_syslog() == Some(false) => format!(
            "this root lacks CAP_SYSLOG, which kernel.kptr_restrict={n} asks for (kernel.\
             perf_event_paranoid={}); in a container, add CAP_SYSLOG",
            sysctl("perf_event_paranoid").map_or("?".into(), |p| p.to_string())
        ),
        _ => "kernel.kptr_restrict hides them from this process".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_ranges_and_skips_modules_and_data() {
        let text = "ffffffff81000000 T _stext\n\
                    ffffffff81000100 t helper\n\
                    ffffffff81000180 D some_data\n\
                    ffffffff81000200 T next_fn\n\
                    ffffffffc0000000 t mod_fn\t[veth]\n";
        let k = Kallsyms::parse(text).unwrap();
        assert_eq!(k.addr("helper"), Some(0xffffffff81000100));
        assert_eq!(
            k.range("helper"),
            Some(0xffffffff81000100..0xffffffff81000200)
        );
        assert!(!k.contains("some_data"));
        assert!(!k.contains("mod_fn"));
        assert_eq!(k.range("next_fn"), None, "last symbol has no known end");
    }

    #[test]
    fn hidden_addresses_are_an_error() {
        let err = Kallsyms::parse("0000000000000000 T a\n0000000000000000 T b\n").err();
        assert!(err.unwrap().to_string().contains("shows no addresses"));
    }

    #[test]
    fn running_kernel_has_the_timewait_timer_handler() {
        let k = Kallsyms::load().unwrap();
        let r = k
            .range("tw_timer_handler")
            .expect("tw_timer_handler in kallsyms");
        assert!(r.end > r.start);
    }
}
