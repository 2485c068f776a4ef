//! Builds the eBPF programs (twtrace-ebpf) with Debian's rustc 1.96 + rust-web-src, the only
//! toolchain on these machines that can `-Z build-std=core` for bpfel-unknown-none
//! (README, "Toolchain"). `AYA_BUILD_SKIP=1` skips it (clippy, docs).

use anyhow::{Context as _, anyhow};

fn main() -> anyhow::Result<()> {
    let ebpf_dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .ok_or_else(|| anyhow!("no workspace root"))?
        .join("twtrace-ebpf");
    let root_dir = ebpf_dir.to_str().context("non-UTF-8 path")?;
    // Debian's rustc is a stable compiler; build-std needs the unstable flag to be accepted.
    // SAFETY: build scripts are single-threaded.
    unsafe { std::env::set_var("RUSTC_BOOTSTRAP", "1") };
    aya_build::build_ebpf(
        [aya_build::Package {
            name: "twtrace-ebpf",
            root_dir,
            ..Default::default()
        }],
        aya_build::Toolchain::Custom("/usr"),
    )
}
