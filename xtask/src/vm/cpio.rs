//! A minimal in-memory description of the guest's root file system, written out as an
//! uncompressed "newc" cpio archive (the initramfs format the kernel unpacks). Uncompressed on
//! purpose: under TCG the kernel would spend seconds inflating it. Writing newc ourselves
//! avoids needing the cpio tool and lets us lay symlinks, device nodes and modes out exactly.

use anyhow::{Context as _, Result, bail};
use std::collections::BTreeMap;
use std::io::Write as _;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Component, Path, PathBuf};

enum Data {
    Host(PathBuf),
    Bytes(Vec<u8>),
}

enum Entry {
    Dir(u32),
    File(Data, u32),
    Symlink(String),
    CharDev(u32, u32, u32),
}

/// Paths are guest paths; keys are stored without the leading '/'. A BTreeMap orders every
/// directory before its contents, which the kernel's unpacker needs.
#[derive(Default)]
pub struct Archive {
    entries: BTreeMap<String, Entry>,
}

impl Archive {
    /// Resolves symlinks already in the archive in all but the last component, so that e.g.
    /// /lib/x86_64-linux-gnu/libc.so.6 lands in usr/lib when /lib -> usr/lib (merged /usr).
    fn resolve(&self, path: &str) -> Result<String> {
        let mut parts: Vec<String> = Vec::new();
        let mut todo: Vec<String> = split(path).into_iter().rev().collect();
        let mut hops = 0;
        while let Some(c) = todo.pop() {
            if c == ".." {
                parts.pop();
                continue;
            }
            parts.push(c);
            if todo.is_empty() {
                break;
            }
            if let Some(Entry::Symlink(target)) = self.entries.get(&parts.join("/")) {
                hops += 1;
                if hops > 40 {
                    bail!("symlink loop at {path}");
                }
                parts.pop();
                if target.starts_with('/') {
                    parts.clear();
                }
                todo.extend(split(target).into_iter().rev());
            }
        }
        if parts.is_empty() {
            bail!("bad guest path `{path}`");
        }
        Ok(parts.join("/"))
    }

    fn insert(&mut self, path: &str, entry: Entry) -> Result<()> {
        let key = self.resolve(path)?;
        let mut parent = key.as_str();
        while let Some((p, _)) = parent.rsplit_once('/') {
            parent = p;
            match self.entries.get(p) {
                None => {
                    self.entries.insert(p.to_string(), Entry::Dir(0o755));
                }
                Some(Entry::Dir(_)) => {}
                Some(_) => bail!("{p} is not a directory (adding {path})"),
            }
        }
        self.entries.insert(key, entry);
        Ok(())
    }

    pub fn dir(&mut self, path: &str, mode: u32) -> Result<()> {
        self.insert(path, Entry::Dir(mode))
    }

    pub fn symlink(&mut self, path: &str, target: &str) -> Result<()> {
        self.insert(path, Entry::Symlink(target.to_string()))
    }

    pub fn char_dev(&mut self, path: &str, mode: u32, major: u32, minor: u32) -> Result<()> {
        self.insert(path, Entry::CharDev(mode, major, minor))
    }

    pub fn bytes(&mut self, path: &str, mode: u32, data: impl Into<Vec<u8>>) -> Result<()> {
        self.insert(path, Entry::File(Data::Bytes(data.into()), mode))
    }

    /// A host file (symlinks followed), keeping its permission bits.
    pub fn host_file(&mut self, path: &str, host: &Path) -> Result<()> {
        let meta = std::fs::metadata(host).with_context(|| format!("{}", host.display()))?;
        let mode = meta.permissions().mode() & 0o7777;
        self.insert(path, Entry::File(Data::Host(host.to_path_buf()), mode))
    }

    /// A host file or directory tree; symlinks inside a tree stay symlinks.
    pub fn host_tree(&mut self, path: &str, host: &Path) -> Result<()> {
        let meta =
            std::fs::symlink_metadata(host).with_context(|| format!("{}", host.display()))?;
        if meta.is_dir() {
            self.dir(path, meta.permissions().mode() & 0o7777)?;
            for e in std::fs::read_dir(host)? {
                let e = e?;
                let name = e.file_name().into_string().map_err(|n| {
                    anyhow::anyhow!("non-UTF-8 file name {n:?} in {}", host.display())
                })?;
                self.host_tree(&format!("{path}/{name}"), &e.path())?;
            }
            Ok(())
        } else if meta.is_symlink() {
            let target = std::fs::read_link(host)?;
            self.symlink(path, &target.to_string_lossy())
        } else {
            self.host_file(path, host)
        }
    }

    pub fn contains(&self, path: &str) -> bool {
        self.resolve(path)
            .is_ok_and(|k| self.entries.contains_key(&k))
    }

    pub fn write(&self, out: &Path) -> Result<u64> {
        let file = std::fs::File::create(out).with_context(|| format!("{}", out.display()))?;
        let mut w = std::io::BufWriter::new(file);
        let mut total = 0u64;
        for (ino, (name, entry)) in self.entries.iter().enumerate() {
            let (mode, data, rdev) = match entry {
                Entry::Dir(m) => (0o040000 | m, Vec::new(), (0, 0)),
                Entry::Symlink(t) => (0o120777, t.as_bytes().to_vec(), (0, 0)),
                Entry::CharDev(m, ma, mi) => (0o020000 | m, Vec::new(), (*ma, *mi)),
                Entry::File(Data::Bytes(b), m) => (0o100000 | m, b.clone(), (0, 0)),
                Entry::File(Data::Host(p), m) => {
                    let b = std::fs::read(p).with_context(|| format!("{}", p.display()))?;
                    (0o100000 | m, b, (0, 0))
                }
            };
            let nlink = if matches!(entry, Entry::Dir(_)) { 2 } else { 1 };
            let len = u32::try_from(data.len()).context("file over 4 GiB")?;
            header(&mut w, ino as u32 + 1, mode, nlink, len, rdev, name)?;
            w.write_all(&data)?;
            pad(&mut w, data.len())?;
            total += u64::from(len);
        }
        header(&mut w, 0, 0, 1, 0, (0, 0), "TRAILER!!!")?;
        w.flush()?;
        Ok(total)
    }
}

fn split(path: &str) -> Vec<String> {
    Path::new(path)
        .components()
        .filter_map(|c| match c {
            Component::Normal(s) => Some(s.to_string_lossy().into_owned()),
            Component::ParentDir => Some("..".to_string()),
            _ => None,
        })
        .collect()
}

/// newc header: magic, then 13 eight-digit hex fields, then the NUL-terminated name padded so
/// that the data starts on a 4-byte boundary.
fn header(
    w: &mut impl std::io::Write,
    ino: u32,
    mode: u32,
    nlink: u32,
    size: u32,
    rdev: (u32, u32),
    name: &str,
) -> Result<()> {
    let namesize = name.len() + 1;
    let fields = [
        ino,
        mode,
        0,
        0,
        nlink,
        0,
        size,
        0,
        0,
        rdev.0,
        rdev.1,
        namesize as u32,
        0,
    ];
    let mut h = String::from("070701");
    for f in fields {
        h.push_str(&format!("{f:08X}"));
    }
    w.write_all(h.as_bytes())?;
    w.write_all(name.as_bytes())?;
    w.write_all(&[0])?;
    pad(w, 110 + namesize)
}

fn pad(w: &mut impl std::io::Write, len: usize) -> Result<()> {
    w.write_all(&[0; 3][..(4 - len % 4) % 4])?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolves_merged_usr() {
        let mut a = Archive::default();
        a.symlink("/lib", "usr/lib").unwrap();
        a.symlink("/lib64", "/usr/lib64").unwrap();
        a.bytes("/lib/x86_64-linux-gnu/libc.so.6", 0o644, "x")
            .unwrap();
        a.bytes("/lib64/ld.so", 0o755, "x").unwrap();
        assert!(a.entries.contains_key("usr/lib/x86_64-linux-gnu/libc.so.6"));
        assert!(a.entries.contains_key("usr/lib64/ld.so"));
        assert!(a.contains("/lib/x86_64-linux-gnu/libc.so.6"));
        assert!(a.entries.contains_key("usr/lib")); // parents made
    }

    #[test]
    fn newc_layout() {
        let mut a = Archive::default();
        a.bytes("/init", 0o755, "hello").unwrap();
        let out = std::env::temp_dir().join(format!("xtask-cpio-{}", std::process::id()));
        a.write(&out).unwrap();
        let b = std::fs::read(&out).unwrap();
        std::fs::remove_file(&out).unwrap();
        assert!(b.starts_with(b"070701"));
        // header 110 + "init\0" 5 = 115 -> padded to 116, then data.
        assert_eq!(&b[116..121], b"hello");
        assert_eq!(b.len() % 4, 0);
        assert!(b.windows(10).any(|w| w == b"TRAILER!!!"));
    }
}
