//! Which twtrace is measured: built from this tree unless --twtrace names one, and described
//! (path, size, build time, commit) so results can be told apart.

use super::machine;
use anyhow::{Context as _, Result, bail};
use std::path::{Path, PathBuf};
use std::process::Command;

pub fn build_twtrace() -> Result<PathBuf> {
    Ok(build_release(&["twtrace"])?.join("twtrace"))
}

/// `cargo build --release` of these packages; returns the release output directory.
pub fn build_release(packages: &[&str]) -> Result<PathBuf> {
    let root = workspace_root();
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut args = vec!["build", "--release"];
    for p in packages {
        args.extend(["-p", p]);
    }
    eprintln!("bench: cargo {}", args.join(" "));
    let status = Command::new(cargo)
        .args(&args)
        .current_dir(&root)
        .status()
        .context("running cargo")?;
    if !status.success() {
        bail!("building {} failed ({status})", packages.join(", "));
    }
    let target = std::env::var_os("CARGO_TARGET_DIR").map_or(root.join("target"), |t| root.join(t));
    Ok(target.join("release"))
}

/// Path, size and modification time of the binary measured, to tell builds apart.
pub fn binary_facts(path: &Path) -> Result<String> {
    let m = std::fs::metadata(path).with_context(|| format!("{}", path.display()))?;
    let mtime = m
        .modified()?
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    Ok(format!(
        "{} ({} bytes, built {})",
        path.display(),
        m.len(),
        machine::utc(mtime, true)
    ))
}

/// The commit measured, "-dirty" if the work tree differs (only meaningful when twtrace was
/// built from this tree).
pub fn git_revision() -> String {
    let git = |args: &[&str]| {
        Command::new("git")
            .args(args)
            .current_dir(workspace_root())
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
            .unwrap_or_default()
    };
    let rev = git(&["rev-parse", "--short", "HEAD"]);
    if git(&["status", "--porcelain", "--untracked-files=no"]).is_empty() {
        rev
    } else {
        format!("{rev}-dirty")
    }
}

pub fn workspace_root() -> PathBuf {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest.parent().unwrap_or(manifest).to_path_buf()
}
