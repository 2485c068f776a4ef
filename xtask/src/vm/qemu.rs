//! Boots a kernel + initramfs under QEMU, streams the serial console to our stdout (and a log
//! file) and recovers the guest command's exit code from the `TWTRACE_VM_EXIT=<n>` line /init
//! prints before powering off.

use anyhow::{Context as _, Result};
use clap::ValueEnum;
use std::io::{Read as _, Write as _};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Accel {
    /// KVM when kvm_intel or kvm_amd is loaded, TCG otherwise.
    Auto,
    Kvm,
    Tcg,
}

pub struct Machine<'a> {
    pub vmlinuz: &'a Path,
    pub initrd: &'a Path,
    pub accel: Accel,
    pub cpus: u32,
    pub memory_mib: u32,
    /// `-icount shift=N,sleep=off` (TCG): the guest clock counts instructions.
    pub icount: Option<u32>,
    pub timeout: Duration,
    pub log: &'a Path,
}

pub struct Outcome {
    /// The guest command's exit code, if /init got to report it.
    pub exit: Option<i32>,
    pub timed_out: bool,
    pub elapsed: Duration,
}

/// KVM only with a real hardware backend: the /dev/kvm of some sandboxes (e.g. kvm_pvm) cannot
/// boot these kernels (-cpu host aborts on MSR 0x10a).
pub(crate) fn use_kvm(accel: Accel) -> bool {
    match accel {
        Accel::Kvm => true,
        Accel::Tcg => false,
        Accel::Auto => ["kvm_intel", "kvm_amd"]
            .iter()
            .any(|m| Path::new("/sys/module").join(m).exists()),
    }
}

pub fn boot(m: &Machine) -> Result<Outcome> {
    let mut cmd = Command::new("qemu-system-x86_64");
    if use_kvm(m.accel) {
        cmd.args(["-accel", "kvm", "-cpu", "host"]);
    } else {
        cmd.args(["-accel", "tcg"]);
    }
    if let Some(shift) = m.icount {
        cmd.args(["-icount", &format!("shift={shift},sleep=off")]);
    }
    cmd.args(["-machine", "q35", "-no-reboot"])
        .args(["-smp", &m.cpus.to_string(), "-m", &m.memory_mib.to_string()])
        // The one serial port (ttyS0, the console) on our stdout. `-display none` rather than
        // -nographic, which would also make SeaBIOS draw on it (screen-clearing escapes);
        // -nodefaults drops the NIC and VGA we do not use.
        .args(["-display", "none", "-nodefaults", "-monitor", "none"])
        .args(["-serial", "stdio"])
        .arg("-kernel")
        .arg(m.vmlinuz)
        .arg("-initrd")
        .arg(m.initrd)
        // panic=-1 + -no-reboot: a guest panic ends QEMU at once instead of hanging.
        .args(["-append", "console=ttyS0 panic=-1 quiet"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped());
    let start = Instant::now();
    let mut child = cmd
        .spawn()
        .context("cannot start qemu-system-x86_64 (apt-get install qemu-system-x86)")?;
    let mut stdout = child.stdout.take().context("no qemu stdout")?;
    let mut log = std::fs::File::create(m.log)
        .with_context(|| format!("cannot create {}", m.log.display()))?;

    // A reader thread forwards the console as it arrives and keeps the lines for the marker.
    let reader = std::thread::spawn(move || -> Option<i32> {
        let mut buf = [0u8; 8192];
        let mut line = Vec::new();
        let mut exit = None;
        while let Ok(n @ 1..) = stdout.read(&mut buf) {
            let chunk = &buf[..n];
            let mut out = std::io::stdout().lock();
            let _ = out.write_all(chunk);
            let _ = out.flush();
            let _ = log.write_all(chunk);
            for &b in chunk {
                if b == b'\n' {
                    let text = String::from_utf8_lossy(&line);
                    if let Some(code) = text.trim().strip_prefix("TWTRACE_VM_EXIT=") {
                        exit = code.parse().ok();
                    }
                    line.clear();
                } else {
                    line.push(b);
                }
            }
        }
        exit
    });

    let mut timed_out = false;
    loop {
        match child.try_wait() {
            Ok(Some(_)) => break,
            Ok(None) => {}
            Err(e) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(e).context("waiting for QEMU");
            }
        }
        if start.elapsed() > m.timeout {
            timed_out = true;
            let _ = child.kill();
            let _ = child.wait();
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let elapsed = start.elapsed();
    let exit = reader.join().unwrap_or(None);
    Ok(Outcome {
        exit,
        timed_out,
        elapsed,
    })
}
