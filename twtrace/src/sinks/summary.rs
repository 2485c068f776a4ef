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
    let mut f = fs::File::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
    serde_json::to_writer_pretty(&mut f, rows).context("serializing the summary")?;
    f.write_all(b"\n")?;
    f.sync_all().ok();
    fs::rename(&tmp, path)
        .with_context(|| format!("renaming {} to {}", tmp.display(), path.display()))
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
}
