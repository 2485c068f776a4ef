//! `--summary-json FILE`: the per-source-IP PAWS aggregate as a JSON list, rewritten atomically
//! (write a temporary file beside it, then rename) every interval and on exit, so a reader
//! never sees a half-written file.

use std::{
    fs,
    io::Write as _,
    path::{Path, PathBuf},
};

use anyhow::{Context as _, Result};

use crate::aggregate::paws::SourceRow;

pub fn write_atomic(path: &Path, rows: &[SourceRow]) -> Result<()> {
    let tmp = tmp_path(path);
    let written = write_then_rename(&tmp, path, rows);
    if written.is_err() {
        // Nothing half-done is left beside the user's file.
        let _ = fs::remove_file(&tmp);
    }
    written.with_context(|| format!("--summary-json {}: cannot write it", path.display()))
}

fn write_then_rename(tmp: &Path, path: &Path, rows: &[SourceRow]) -> Result<()> {
    let mut f = fs::File::create(tmp).with_context(|| format!("creating {}", tmp.display()))?;
    serde_json::to_writer_pretty(&mut f, rows).context("serializing the summary")?;
    f.write_all(b"\n")?;
    f.sync_all().ok();
    fs::rename(tmp, path).context("replacing it with the new summary")
}

/// Checked before tracing starts: `path` is not a directory and its directory takes the
/// temporary file each rewrite goes through (created and removed here).
pub fn check_writable(path: &Path) -> Result<()> {
    if path.is_dir() {
        anyhow::bail!("--summary-json {}: is a directory", path.display());
    }
    let tmp = tmp_path(path);
    fs::File::create(&tmp).with_context(|| {
        format!(
            "--summary-json {}: cannot create files in its directory",
            path.display()
        )
    })?;
    fs::remove_file(&tmp).ok();
    Ok(())
}

/// Whether two paths name the same file, either of which may not exist yet.
pub fn same_file(a: &Path, b: &Path) -> bool {
    let resolve = |p: &Path| -> Option<PathBuf> {
        if let Ok(c) = p.canonicalize() {
            return Some(c);
        }
        let dir = match p.parent() {
            Some(d) if !d.as_os_str().is_empty() => d.canonicalize().ok()?,
            _ => std::env::current_dir().ok()?,
        };
        Some(dir.join(p.file_name()?))
    };
    matches!((resolve(a), resolve(b)), (Some(x), Some(y)) if x == y)
}

fn tmp_path(path: &Path) -> PathBuf {
    let mut name = path
        .file_name()
        .map(|n| n.to_os_string())
        .unwrap_or_default();
    name.push(format!(".tmp.{}", std::process::id()));
    path.with_file_name(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_a_json_list_and_leaves_no_temporary() {
        let dir = std::env::temp_dir().join(format!("twtrace-summary-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let path = dir.join("s.json");
        write_atomic(&path, &[]).unwrap();
        let v: serde_json::Value =
            serde_json::from_str(&fs::read_to_string(&path).unwrap()).unwrap();
        assert_eq!(v, serde_json::json!([]));
        assert_eq!(
            fs::read_dir(&dir).unwrap().count(),
            1,
            "no temporary left behind"
        );
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn bad_paths_are_refused_up_front_and_leave_nothing() {
        let dir = std::env::temp_dir().join(format!("twtrace-summary-bad-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let err = check_writable(&dir.join("no/such/dir/s.json")).unwrap_err();
        assert!(format!("{err:#}").contains("no/such/dir/s.json"), "{err:#}");
        assert!(check_writable(&dir).is_err(), "a directory");
        // A rename onto a directory fails: the temporary goes too.
        let sub = dir.join("sub");
        fs::create_dir_all(&sub).unwrap();
        assert!(write_atomic(&sub, &[]).is_err());
        assert_eq!(fs::read_dir(&dir).unwrap().count(), 1, "only `sub` left");
        assert!(same_file(&dir.join("a.json"), &dir.join("sub/../a.json")));
        assert!(!same_file(&dir.join("a.json"), &dir.join("b.json")));
        fs::remove_dir_all(&dir).unwrap();
    }
}
