//! The two network namespaces the workload runs in, joined by a veth pair created directly
//! inside them (nothing is added to the host namespace). Deleted when dropped; namespaces left
//! by a bench that was SIGKILLed are removed by the next run.

use anyhow::{Context as _, Result, bail};
use std::process::Command;

pub const SERVER_IP: &str = "10.231.0.1";
const CLIENT_IP: &str = "10.231.0.2";
const PREFIX: &str = "twb-";

/// Server side: the TIME-WAITs land here (the server closes first), at up to 60 s × the
/// connection rate at once, far above the 131072 default of a new namespace; overflows would
/// skip TIME-WAIT and make the counter disagree with wrk.
const SERVER_SYSCTLS: &[(&str, &str)] = &[("net.ipv4.tcp_max_tw_buckets", "2097152")];

/// Client side: every ephemeral port, and TIME-WAIT reuse for the few connections the client
/// closes first, so wrk never runs out of source ports.
const CLIENT_SYSCTLS: &[(&str, &str)] = &[
    ("net.ipv4.ip_local_port_range", "1024 65535"),
    ("net.ipv4.tcp_tw_reuse", "1"),
];

pub struct Pair {
    pub server: String,
    pub client: String,
    created: Vec<String>,
}

impl Pair {
    pub fn create() -> Result<Self> {
        let id = std::process::id();
        let mut pair = Self {
            server: format!("{PREFIX}srv-{id}"),
            client: format!("{PREFIX}cli-{id}"),
            created: Vec::new(),
        };
        // Each namespace is recorded as soon as it exists, so a failure in a later step still
        // deletes it (in Drop).
        for ns in [pair.server.clone(), pair.client.clone()] {
            ip(&["netns", "add", &ns])?;
            pair.created.push(ns);
        }
        let (sveth, cveth) = (format!("twbs{id}"), format!("twbc{id}"));
        ip(&[
            "link",
            "add",
            "name",
            &sveth,
            "netns",
            &pair.server,
            "type",
            "veth",
            "peer",
            "name",
            &cveth,
            "netns",
            &pair.client,
        ])?;
        for (ns, dev, addr) in [
            (&pair.server, &sveth, SERVER_IP),
            (&pair.client, &cveth, CLIENT_IP),
        ] {
            ip(&["-n", ns, "addr", "add", &format!("{addr}/24"), "dev", dev])?;
            ip(&["-n", ns, "link", "set", dev, "up"])?;
            ip(&["-n", ns, "link", "set", "lo", "up"])?;
        }
        for (ns, sysctls) in [
            (&pair.server, SERVER_SYSCTLS),
            (&pair.client, CLIENT_SYSCTLS),
        ] {
            for (k, v) in sysctls {
                run(Command::new("ip")
                    .args(["netns", "exec", ns, "sysctl", "-qw"])
                    .arg(format!("{k}={v}")))?;
            }
        }
        Ok(pair)
    }

    /// `ip netns exec <ns> <program>`: ip execs the program, so the pid is the program's.
    /// `program` run in namespace `ns`, bound to one CPU when `cpu` is given (taskset).
    pub fn exec_on(ns: &str, cpu: Option<u32>, program: &str) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", ns]);
        if let Some(cpu) = cpu {
            c.args(["taskset", "-c", &cpu.to_string()]);
        }
        c.arg(program);
        c
    }

    /// The sysctls set, for the report.
    pub fn settings() -> Vec<String> {
        let fmt = |side: &str, list: &[(&str, &str)]| {
            list.iter()
                .map(|(k, v)| format!("{side}: {k}={v}"))
                .collect::<Vec<_>>()
        };
        let mut all = fmt("server ns", SERVER_SYSCTLS);
        all.extend(fmt("client ns", CLIENT_SYSCTLS));
        all
    }
}

impl Drop for Pair {
    fn drop(&mut self) {
        // Deleting a namespace also deletes its end of the veth and purges its TIME-WAITs.
        for ns in self.created.iter().rev() {
            if let Err(e) = ip(&["netns", "del", ns]) {
                eprintln!("bench: could not delete netns {ns}: {e:#}");
            }
        }
    }
}

/// Deletes namespaces named by an earlier bench whose process no longer exists.
pub fn remove_stale() {
    let Ok(dir) = std::fs::read_dir("/run/netns") else {
        return;
    };
    for entry in dir.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(pid) = name
            .strip_prefix(PREFIX)
            .and_then(|rest| rest.split_once('-'))
            .and_then(|(_, pid)| pid.parse::<u32>().ok())
        else {
            continue;
        };
        if !std::path::Path::new(&format!("/proc/{pid}")).exists() {
            eprintln!("bench: removing stale netns {name}");
            let _ = ip(&["netns", "del", &name]);
        }
    }
}

fn ip(args: &[&str]) -> Result<()> {
    run(Command::new("ip").args(args))
}

pub fn run(cmd: &mut Command) -> Result<()> {
    let out = cmd
        .output()
        .with_context(|| format!("cannot run {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}
