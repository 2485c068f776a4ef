//! Tracepoint record layouts from tracefs `format` files (field offsets are per kernel).

use std::{collections::HashMap, fs, path::PathBuf};

use anyhow::{Context as _, Result, anyhow};

/// Where tracefs is mounted, mounting it if needed (as `mount -t tracefs` would).
pub fn root() -> Result<PathBuf> {
    for p in ["/sys/kernel/tracing", "/sys/kernel/debug/tracing"] {
        if PathBuf::from(p).join("events").is_dir() {
            return Ok(p.into());
        }
    }
    let target = c"/sys/kernel/tracing";
    // SAFETY: plain mount(2) with static C strings.
    let rc = unsafe {
        libc::mount(
            c"tracefs".as_ptr(),
            target.as_ptr(),
            c"tracefs".as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if rc != 0 {
        return Err(anyhow!(
            "tracefs is not mounted and mounting it at /sys/kernel/tracing failed: {}",
            std::io::Error::last_os_error()
        ));
    }
    Ok("/sys/kernel/tracing".into())
}

/// The fields of one tracepoint: name -> (offset, size).
pub struct Format {
    pub event: String,
    fields: HashMap<String, (u32, u32)>,
}

impl Format {
    pub fn load(category: &str, name: &str) -> Result<Self> {
        let path = root()?
            .join("events")
            .join(category)
            .join(name)
            .join("format");
        let text = fs::read_to_string(&path).with_context(|| {
            format!(
                "tracepoint {category}:{name} not found ({})",
                path.display()
            )
        })?;
        Ok(Self::parse(&format!("{category}:{name}"), &text))
    }

    pub fn parse(event: &str, text: &str) -> Self {
        let mut fields = HashMap::new();
        for line in text.lines() {
            let line = line.trim();
            let Some(rest) = line.strip_prefix("field:") else {
                continue;
            };
            let mut decl = "";
            let (mut off, mut size) = (None, None);
            for part in rest.split(';') {
                let part = part.trim();
                if let Some(v) = part.strip_prefix("offset:") {
                    off = v.parse().ok();
                } else if let Some(v) = part.strip_prefix("size:") {
                    size = v.parse().ok();
                } else if decl.is_empty() {
                    decl = part;
                }
            }
            // "unsigned long expires", "__u8 saddr[4]", "struct sockaddr * uservaddr"
            let last = decl.rsplit([' ', '*']).next().unwrap_or("");
            let name = last.split('[').next().unwrap_or(last);
            if let (Some(o), Some(s)) = (off, size) {
                fields.insert(name.to_owned(), (o, s));
            }
        }
        Self {
            event: event.to_owned(),
            fields,
        }
    }

    pub fn offset(&self, field: &str) -> Result<u32> {
        self.fields
            .get(field)
            .map(|f| f.0)
            .ok_or_else(|| anyhow!("tracepoint {} has no field `{field}`", self.event))
    }

    #[cfg(test)]
    pub fn has(&self, field: &str) -> bool {
        self.fields.contains_key(field)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TIMER_START: &str = "name: timer_start\nID: 466\nformat:\n\
        \tfield:unsigned short common_type;\toffset:0;\tsize:2;\tsigned:0;\n\
        \tfield:void * timer;\toffset:8;\tsize:8;\tsigned:0;\n\
        \tfield:void * function;\toffset:16;\tsize:8;\tsigned:0;\n\
        \tfield:unsigned long expires;\toffset:24;\tsize:8;\tsigned:0;\n\
        \tfield:__u8 saddr[4];\toffset:32;\tsize:4;\tsigned:0;\n";

    #[test]
    fn parses_offsets() {
        let f = Format::parse("timer:timer_start", TIMER_START);
        assert_eq!(f.offset("timer").unwrap(), 8);
        assert_eq!(f.offset("function").unwrap(), 16);
        assert_eq!(f.offset("expires").unwrap(), 24);
        assert_eq!(f.offset("saddr").unwrap(), 32);
        assert!(
            f.offset("nope")
                .unwrap_err()
                .to_string()
                .contains("timer:timer_start")
        );
    }

    #[test]
    fn reads_the_running_kernel() {
        let f = Format::load("timer", "timer_start").unwrap();
        assert!(f.offset("function").unwrap() >= 8);
        let f = Format::load("sock", "inet_sock_set_state").unwrap();
        assert!(f.has("oldstate") && f.has("newstate"));
    }
}
