//! `cargo xtask vm-bench`: `cargo xtask bench` inside a stock kernel under QEMU with
//! deterministic instruction counting (`-icount`). The guest's clock then advances one
//! nanosecond per instruction executed, so connections/s measured in the guest is a count of
//! instructions per connection: the same run repeated gives the same numbers to a few tenths
//! of a percent, whatever the host does, where conn/s on this shared VM swings ±30 %. It also
//! measures the routes this host refuses (fentry, kprobes) on the same kernel as the tp_btf
//! one. Instructions are not cycles (no cache misses, no SRSO return thunks), so it ranks and
//! sizes costs; the host bench says what they cost in time.

use super::rootfs::Add;
use super::{GuestOpts, run_in_kernels};
use anyhow::{Context as _, Result, bail};
use std::path::Path;

#[derive(clap::Args)]
pub struct VmBenchArgs {
    #[command(flatten)]
    guest: GuestOpts,
    /// Arguments for `cargo xtask bench` in the guest (`--twtrace` is set), e.g. `-- --hooks
    /// fentry --with hooks-only,table --rounds 2 --seconds 8 --no-bpf-stats`. The guest runs
    /// under TCG with `--icount 0` unless told otherwise; pick one `--kernel`. Guest time runs
    /// two to three times slower than the host's: raise `--timeout` past the default 20m for
    /// more than a few short rounds (2 rounds × 8 s of 5 conditions take about 15 minutes).
    #[arg(last = true, value_name = "BENCH_ARGS")]
    bench_args: Vec<String>,
}

pub fn run(args: &VmBenchArgs) -> Result<i32> {
    // Instructions are counted under TCG only; one instruction per guest nanosecond unless
    // --icount says otherwise.
    let mut guest = args.guest.clone();
    if guest.accel == super::qemu::Accel::Kvm {
        bail!("vm-bench counts instructions, which needs TCG: leave out --accel kvm");
    }
    guest.accel = super::qemu::Accel::Tcg;
    guest.icount.get_or_insert(0);
    let release = crate::bench::binary::build_release(&["twtrace", "xtask"])?;
    let mut adds = vec![
        add(&release.join("xtask"), "/root/xtask")?,
        add(&release.join("twtrace"), "/root/twtrace")?,
    ];
    for tool in ["nginx", "wrk", "bpftrace"] {
        match super::util::which(tool) {
            Some(path) => adds.push(add(&path, &path.to_string_lossy())?),
            // bpftrace is a comparison only; the guest's bench says it is unavailable.
            None if tool == "bpftrace" => eprintln!("[vm-bench] bpftrace not found, left out"),
            None => bail!("`{tool}` not found (apt-get install nginx-light wrk)"),
        }
    }
    let words: Vec<String> = args
        .bench_args
        .iter()
        .map(|a| super::util::shell_quote(a))
        .collect();
    let script = format!(
        "/root/xtask bench --twtrace /root/twtrace {}",
        words.join(" ")
    );
    run_in_kernels(&guest, &adds, &[], &script)
}

fn add(host: &Path, guest: &str) -> Result<Add> {
    Add::parse(&format!("{}:{guest}", host.display()))
        .with_context(|| format!("adding {}", host.display()))
}
