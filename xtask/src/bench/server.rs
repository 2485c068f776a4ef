//! The HTTP server: Debian's nginx (a real epoll server, which makes the numbers credible),
//! configured on the fly inside the server namespace with everything under a private prefix.

use super::guard::{self, Proc};
use super::netns::{Pair, SERVER_IP};
use anyhow::{Context as _, Result, bail};
use std::path::Path;
use std::time::{Duration, Instant};

pub const PORT: u16 = 8080;

pub struct Nginx {
    proc: Proc,
}

impl Nginx {
    /// `cpu`: bind nginx (master and its one worker) to that CPU (`--pin`).
    pub fn start(net: &Pair, dir: &Path, cpu: Option<u32>) -> Result<Self> {
        let d = dir.display();
        // One worker: on two cores the other core is for wrk, and the tracer competes with both.
        // No access log, a 3-byte body: the cost is the connection itself.
        let conf = format!(
            "daemon off;\nmaster_process on;\nworker_processes 1;\npid {d}/nginx.pid;\n\
             error_log {d}/error.log warn;\n\
             events {{ worker_connections 4096; use epoll; }}\n\
             http {{\n  access_log off;\n  default_type text/plain;\n\
             client_body_temp_path {d}/body;\n  proxy_temp_path {d}/proxy;\n\
             fastcgi_temp_path {d}/fastcgi;\n  uwsgi_temp_path {d}/uwsgi;\n\
             scgi_temp_path {d}/scgi;\n\
             server {{ listen {SERVER_IP}:{PORT} backlog=4096; location / {{ return 200 \"ok\\n\"; }} }}\n}}\n"
        );
        let path = dir.join("nginx.conf");
        std::fs::write(&path, conf).with_context(|| format!("writing {}", path.display()))?;
        let mut cmd = Pair::exec_on(&net.server, cpu, "nginx");
        // -e: the error log before the configuration is read (else /var/log/nginx).
        cmd.arg("-p")
            .arg(dir)
            .arg("-c")
            .arg(&path)
            .arg("-e")
            .arg(dir.join("error.log"));
        let mut nginx = Self {
            proc: Proc::spawn("nginx", &mut cmd)?,
        };
        nginx.wait_listening(dir)?;
        Ok(nginx)
    }

    /// A process in the server namespace, for its counters.
    pub fn pid(&self) -> u32 {
        self.proc.pid()
    }

    /// Polls the namespace's socket table (not a connection, which would add a TIME-WAIT).
    fn wait_listening(&mut self, dir: &Path) -> Result<()> {
        let want = format!(":{PORT:04X} 00000000:0000 0A");
        let end = Instant::now() + Duration::from_secs(10);
        while Instant::now() < end {
            if let Some(status) = self.proc.exited()? {
                let log = std::fs::read_to_string(dir.join("error.log")).unwrap_or_default();
                bail!("nginx exited ({status}): {}", log.trim());
            }
            let tcp = std::fs::read_to_string(format!("/proc/{}/net/tcp", self.pid()))?;
            if tcp.contains(&want) {
                return Ok(());
            }
            guard::sleep(Duration::from_millis(50))?;
        }
        bail!("nginx is not listening after 10 s")
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        // SIGTERM is nginx's fast shutdown; the master takes its worker down with it.
        if let Err(e) = self.proc.stop(libc::SIGTERM, Duration::from_secs(5)) {
            eprintln!("bench: stopping nginx: {e:#}");
        }
    }
}
