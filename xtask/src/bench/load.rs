//! The connection-churn load: wrk in the client namespace, every request with
//! `Connection: close`, so each request is one TCP connection that the server closes first.

use super::guard::Proc;
use super::netns::{Pair, SERVER_IP};
use super::server::PORT;
use anyhow::{Context as _, Result, bail};
use std::io::Read as _;
use std::process::Stdio;
use std::time::{Duration, Instant};

#[derive(Clone, Copy)]
pub struct Load {
    pub threads: u32,
    pub connections: u32,
    /// CPU wrk is bound to (`--pin`).
    pub cpu: Option<u32>,
}

#[derive(Clone, Default, serde::Serialize)]
pub struct WrkResult {
    pub requests: u64,
    /// wrk's own Requests/sec (= connections/s here).
    pub rps: f64,
    /// Wall time of the wrk process, as we measured it.
    pub wall_s: f64,
    pub socket_errors: u64,
    pub non_2xx: u64,
}

impl Load {
    /// The wrk arguments, also quoted in the report.
    pub fn args(&self, seconds: u64) -> Vec<String> {
        vec![
            format!("-t{}", self.threads),
            format!("-c{}", self.connections),
            format!("-d{seconds}s"),
            "--timeout".into(),
            "5s".into(),
            "-H".into(),
            "Connection: close".into(),
            format!("http://{SERVER_IP}:{PORT}/"),
        ]
    }

    pub fn run(&self, net: &Pair, seconds: u64) -> Result<WrkResult> {
        let mut cmd = Pair::exec_on(&net.client, self.cpu, "wrk");
        cmd.args(self.args(seconds))
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let start = Instant::now();
        let mut wrk = Proc::spawn("wrk", &mut cmd)?;
        // wrk prints a few hundred bytes at the end only, so the pipes cannot fill up first.
        let status = wrk
            .wait_for(Duration::from_secs(seconds + 30))?
            .context("wrk did not finish 30 s after its run time")?;
        let wall_s = start.elapsed().as_secs_f64();
        let (mut out, mut err) = (String::new(), String::new());
        if let Some(mut o) = wrk.child().stdout.take() {
            o.read_to_string(&mut out)?;
        }
        if let Some(mut e) = wrk.child().stderr.take() {
            e.read_to_string(&mut err)?;
        }
        if !status.success() {
            bail!("wrk failed ({status}): {}{}", out.trim(), err.trim());
        }
        let mut r = parse(&out).with_context(|| format!("unexpected wrk output:\n{out}"))?;
        r.wall_s = wall_s;
        Ok(r)
    }
}

fn parse(out: &str) -> Result<WrkResult> {
    let mut r = WrkResult::default();
    for line in out.lines().map(str::trim) {
        if let Some(v) = line.strip_prefix("Requests/sec:") {
            r.rps = v.trim().parse()?;
        } else if let Some((n, _)) = line.split_once(" requests in ") {
            r.requests = n.trim().parse()?;
        } else if let Some(v) = line.strip_prefix("Socket errors:") {
            // "connect 0, read 0, write 0, timeout 0"
            r.socket_errors = v
                .split(',')
                .filter_map(|kv| kv.split_whitespace().nth(1)?.parse::<u64>().ok())
                .sum();
        } else if let Some(v) = line.strip_prefix("Non-2xx or 3xx responses:") {
            r.non_2xx = v.trim().parse()?;
        }
    }
    if r.rps <= 0.0 || r.requests == 0 {
        bail!("no requests completed");
    }
    Ok(r)
}

#[cfg(test)]
mod tests {
    #[test]
    fn parses_wrk_output() {
        let out = "Running 5s test @ http://10.231.0.1:8080/\n  1 threads and 32 connections\n\
                   \x20 Thread Stats   Avg      Stdev     Max   +/- Stdev\n\
                   \x20   Latency     2.61ms  480.12us   9.01ms   80.00%\n\
                   \x20 61234 requests in 5.00s, 9.46MB read\n\
                   \x20 Socket errors: connect 0, read 3, write 0, timeout 1\n\
                   Requests/sec:  12246.80\nTransfer/sec:      1.89MB\n";
        let r = super::parse(out).unwrap();
        assert_eq!(r.requests, 61234);
        assert_eq!(r.socket_errors, 4);
        assert!((r.rps - 12246.8).abs() < 1e-9);
    }
}
