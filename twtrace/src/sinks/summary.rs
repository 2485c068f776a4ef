//! `--summary-json FILE`: the per-source-IP PAWS aggregate as a JSON list, rewritten atomically
//! (write a temporary file beside it, then rename), so a reader never sees a half-written
//! file: an empty list at start, then at each interval while anything in it moves, and on
//! exit ([`SummaryFile`]).

use std::{
    fs,
    io::{self, Write as _},
    path::{Path, PathBuf},
};

use anyhow::{Context as _, Result};

use crate::aggregate::paws::SourceRow;

/// When the file is rewritten, and what is said about it on stderr.
///
/// An empty list at start: a file left by an earlier run must not pass for this one's. Then
/// at each interval while anything in it moves: a record counted since the last write, or
/// rates still decaying from the last one (their value must not stand while the traffic has
/// stopped). An aggregate idle beyond that is left as written: each rewrite is the whole list,
/// at tens of thousands of source IPs megabytes and a sizeable share of a CPU every interval,
/// on the thread that drains the ring. On exit, always.
pub struct SummaryFile {
    path: PathBuf,
    /// The aggregate's change count ([`crate::aggregate::paws::PawsTable::changes`]) at the last
    /// write that succeeded.
    written_at: Option<u64>,
    /// The last try failed (warned once per run of failures).
    failing: bool,
    /// Evictions were said (once).
    evictions_said: bool,
}

impl SummaryFile {
    /// Starts with an empty list (a failure is a warning, as at any interval).
    pub fn start(path: PathBuf) -> Self {
        let mut file = Self {
            path,
            written_at: None,
            failing: false,
            evictions_said: false,
        };
        // Not `last`: never an error.
        let _ = file.write(&[], 0, false);
        file
    }

    /// Whether a rewrite is due at `now_ns` with the aggregate at `changes`, its rates
    /// standing still from `settled_at` ([`crate::aggregate::paws::PawsTable::settled_at`]).
    pub fn due(&self, changes: u64, settled_at: Option<u64>, now_ns: u64, last: bool) -> bool {
        last || self.written_at != Some(changes) || settled_at.is_some_and(|at| now_ns < at)
    }

    /// Rewrites the file with `rows`, the aggregate at `changes`. A failure is a warning while
    /// tracing (a full disk must not end a service's tracing; the next interval tries again)
    /// and an error only at the end (`last`).
    pub fn write(&mut self, rows: &[SourceRow], changes: u64, last: bool) -> Result<()> {
        match write_atomic(&self.path, rows) {
            Ok(()) => {
                self.failing = false;
                self.written_at = Some(changes);
            }
            Err(e) if last => return Err(e),
            Err(e) => {
                if !self.failing {
                    crate::say!("twtrace: warning: {e:#} (trying again every interval)");
                }
                self.failing = true;
            }
        }
        Ok(())
    }

    /// Says on stderr that rows have left the file: once at the first eviction, and at exit
    /// (`last`, with `rows` the file's last content and `rejects` those of every source IP
    /// seen) how many, and the rejects they took with them (`twtrace events` has no table
    /// that counts them).
    pub fn say_evictions(
        &mut self,
        evicted: u64,
        capacity: u32,
        last: Option<(&[SourceRow], u64)>,
    ) {
        if let Some(line) = eviction_line(&self.path, evicted, capacity, last, self.evictions_said)
        {
            crate::say!("{line}");
            self.evictions_said = true;
        }
    }
}

fn eviction_line(
    path: &Path,
    evicted: u64,
    capacity: u32,
    last: Option<(&[SourceRow], u64)>,
    said: bool,
) -> Option<String> {
    let path = path.display();
    match last {
        _ if evicted == 0 => None,
        Some((rows, rejects)) => {
            let listed: u64 = rows.iter().map(|r| r.rejects_total).sum();
            // Evictions, not IPs: an IP that comes back and leaves again counts each time.
            let times = super::plural(evicted, "eviction");
            Some(format!(
                "twtrace: {times} of source IPs (more than --capacity {capacity}): {path} lists \
                 the {} most recent, with {listed} of the {rejects} PAWS rejects seen",
                rows.len()
            ))
        }
        None if !said => Some(format!(
            "twtrace: note: more than --capacity {capacity} source IPs: the least recent leave \
             the aggregate and {path} (counted; said again at exit)"
        )),
        None => None,
    }
}

pub fn write_atomic(path: &Path, rows: &[SourceRow]) -> Result<()> {
    let target = through_symlink(path);
    let tmp = tmp_path(&target);
    let written = write_then_rename(&tmp, &target, rows);
    if written.is_err() {
        // Nothing half-done is left beside the user's file.
        let _ = fs::remove_file(&tmp);
    }
    written.with_context(|| format!("--summary-json {}: cannot write it", path.display()))
}

fn write_then_rename(tmp: &Path, path: &Path, rows: &[SourceRow]) -> Result<()> {
    // A fresh file (O_EXCL): never one planted at the temporary name, nor through a symlink.
    let _ = fs::remove_file(tmp);
    let file = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(tmp)
        .with_context(|| format!("creating {}", tmp.display()))?;
    // The file it replaces keeps its mode (one made 0600 for the client addresses it lists
    // must not turn 0644 at the first rewrite); a new one gets the umask's.
    if let Ok(old) = fs::metadata(path) {
        file.set_permissions(old.permissions())
            .context("giving the new summary the mode of the one it replaces")?;
    }
    // Buffered: the serializer writes each key and value on its own, and tens of thousands
    // of rows would be millions of system calls, on the thread that drains the ring.
    let mut out = io::BufWriter::with_capacity(256 * 1024, file);
    serde_json::to_writer_pretty(&mut out, rows).context("serializing the summary")?;
    out.write_all(b"\n")?;
    let file = out.into_inner().map_err(|e| e.into_error())?;
    // On disk before it replaces the last good summary (NFS, for one, reports write errors
    // only here).
    file.sync_all().context("writing the summary to disk")?;
    fs::rename(tmp, path).context("replacing it with the new summary")
}

/// A `--summary-json` that is a symlink: the file it points to is the one to replace (a
/// rename onto the link would replace the link itself, and the target would never change).
fn through_symlink(path: &Path) -> PathBuf {
    let is_link = fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_symlink());
    if !is_link {
        return path.to_path_buf();
    }
    // A link to a file not there yet: its target, resolved from the link's directory.
    fs::canonicalize(path).unwrap_or_else(|_| match fs::read_link(path) {
        Ok(t) if t.is_absolute() => t,
        Ok(t) => path.parent().map_or(t.clone(), |d| d.join(&t)),
        Err(_) => path.to_path_buf(),
    })
}

/// Checked before tracing starts: `path` is not a directory and its directory takes the
/// temporary file each rewrite goes through (created and removed here).
pub fn check_writable(path: &Path) -> Result<()> {
    // `new/` or `file.json/`: the path drops the slash, the rename onto it later would not.
    if path.as_os_str().as_encoded_bytes().ends_with(b"/") || path.file_name().is_none() {
        anyhow::bail!(
            "--summary-json {}: names a directory; give a file's path",
            path.display()
        );
    }
    if path.is_dir() {
        anyhow::bail!("--summary-json {}: is a directory", path.display());
    }
    // Each rewrite renames a new file onto the path: onto a device (/dev/null, /dev/stdout,
    // a pipe) that would replace the device itself with a JSON file.
    if let Ok(m) = fs::metadata(path)
        && !m.is_file()
    {
        anyhow::bail!(
            "--summary-json {}: not a regular file (the summary is rewritten by replacing the \
             file each interval; give a file's path)",
            path.display()
        );
    }
    if let Some(stream) = own_stream(path) {
        anyhow::bail!(
            "--summary-json {}: is this process's {stream}; each rewrite replaces the file \
             whole (what else was written to it would be lost): give a file of its own",
            path.display()
        );
    }
    // A symlink that leads nowhere resolvable (a loop): the rename would replace the link.
    if let Err(e) = fs::metadata(path)
        && e.kind() != io::ErrorKind::NotFound
    {
        anyhow::bail!("--summary-json {}: {e}", path.display());
    }
    let target = through_symlink(path);
    let tmp = tmp_path(&target);
    let _ = fs::remove_file(&tmp);
    fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&tmp)
        .with_context(|| {
            // A symlink's target is what is replaced: its directory is the one that matters.
            let dir = target.parent().filter(|d| !d.as_os_str().is_empty());
            let dir = dir.map_or_else(|| ".".into(), |d| d.display().to_string());
            let via = if target.as_path() == path {
                String::new()
            } else {
                format!(": a symlink to {}", target.display())
            };
            format!(
                "--summary-json {}{via}: cannot create files in {dir}",
                path.display()
            )
        })?;
    fs::remove_file(&tmp).ok();
    Ok(())
}

/// "standard output" or "standard error" when `path` is the file this process writes them to
/// (`/dev/stdout`, or the file they were redirected to by name).
fn own_stream(path: &Path) -> Option<&'static str> {
    use std::os::unix::fs::MetadataExt as _;
    let file = fs::metadata(path).ok()?;
    [
        ("/proc/self/fd/1", "standard output"),
        ("/proc/self/fd/2", "standard error"),
    ]
    .into_iter()
    .find(|(fd, _)| fs::metadata(fd).is_ok_and(|m| (m.dev(), m.ino()) == (file.dev(), file.ino())))
    .map(|(_, name)| name)
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
    use crate::{
        aggregate::{clocks::ClockConfig, paws::PawsTable},
        event::{PawsPath, Record, What},
    };

    #[test]
    fn writes_a_json_list_and_leaves_no_temporary() {
        let dir = scratch("plain");
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

    /// A summary the user made private stays so through every rewrite (it lists client
    /// addresses); a new one is made with the umask's mode.
    #[test]
    fn a_rewrite_keeps_the_mode_of_the_file_it_replaces() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = scratch("mode");
        let path = dir.join("s.json");
        fs::write(&path, "").unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).unwrap();
        for _ in 0..2 {
            write_atomic(&path, &[]).unwrap();
            let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600);
        }
        fs::remove_dir_all(&dir).unwrap();
    }

    /// A directory of one test, made fresh.
    fn scratch(tag: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("twtrace-summary-{tag}-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        dir
    }

    /// A table of `capacity` source IPs that saw IPs 192.0.2.1.. in turn, the i-th with i
    /// rejects at TIME-WAIT.
    fn paws_table(capacity: usize, ips: u8) -> PawsTable {
        let mut t = PawsTable::new(capacity, ClockConfig::default());
        for i in 1..=ips {
            for _ in 0..i {
                t.apply(&Record {
                    ts_ns: 1_000_000_000,
                    netns: 1,
                    local: "10.0.0.1:80".parse().unwrap(),
                    remote: format!("192.0.2.{i}:4000").parse().unwrap(),
                    what: What::PawsReject {
                        path: PawsPath::Timewait,
                        tsval: Some(900),
                        ts_recent: Some(1000),
                        tcp_flags: 0x02,
                        old_ack: false,
                    },
                });
            }
        }
        t
    }

    /// An empty list at start, over an earlier run's file; then rewritten when the aggregate
    /// counted something and while its rates decay, and always at the end.
    #[test]
    fn rewritten_at_start_then_only_when_something_was_counted() {
        use std::os::unix::fs::MetadataExt as _;
        let dir = scratch("due");
        let path = dir.join("s.json");
        fs::write(&path, "[{\"ip\": \"192.0.2.99\"}]\n").unwrap();
        let mut file = SummaryFile::start(path.clone());
        assert_eq!(fs::read_to_string(&path).unwrap(), "[]\n");
        assert!(
            !file.due(0, None, 5, false),
            "nothing counted since the start"
        );
        assert!(file.due(0, None, 5, true), "the end");
        let mut t = paws_table(16, 3);
        let (settled, now) = (t.settled_at(), 2_000_000_000);
        assert!(file.due(t.changes(), settled, now, false));
        file.write(&t.rows(2_000_000_000), t.changes(), false)
            .unwrap();
        let written = fs::metadata(&path).unwrap().ino();
        let list: serde_json::Value =
            serde_json::from_str(&fs::read_to_string(&path).unwrap()).unwrap();
        assert_eq!(list.as_array().map(Vec::len), Some(3));
        assert!(
            file.due(t.changes(), settled, now + 1_000_000_000, false),
            "nothing counted since, but the rates decay"
        );
        let still = settled.unwrap();
        assert!(
            !file.due(t.changes(), settled, still, false),
            "idle, settled"
        );
        assert_eq!(fs::metadata(&path).unwrap().ino(), written);
        t.apply(&Record {
            ts_ns: 3_000_000_000,
            netns: 1,
            local: "10.0.0.1:80".parse().unwrap(),
            remote: "192.0.2.1:4001".parse().unwrap(),
            what: What::Syn { tsval: Some(5) },
        });
        assert!(file.due(t.changes(), t.settled_at(), still, false));
        fs::remove_dir_all(&dir).unwrap();
    }

    /// Evictions: said once when they begin, and at the end with how many and what the file
    /// lost with them (rejects of all IPs against those listed).
    #[test]
    fn evictions_are_said_once_then_at_the_end_with_what_the_file_lost() {
        let path = Path::new("/run/s.json");
        assert_eq!(eviction_line(path, 0, 16, None, false), None);
        let first = eviction_line(path, 5, 16, None, false).unwrap();
        assert_eq!(
            first,
            "twtrace: note: more than --capacity 16 source IPs: the least recent leave the \
             aggregate and /run/s.json (counted; said again at exit)"
        );
        assert_eq!(eviction_line(path, 6, 16, None, true), None, "said already");
        // 1 + 2 + 3 rejects from three IPs, two kept: the first IP's one reject is gone.
        let mut t = paws_table(2, 3);
        let rows = t.rows(2_000_000_000);
        assert_eq!(t.evictions, 1);
        assert_eq!(
            eviction_line(path, t.evictions, 2, Some((&rows, t.totals().0)), true).unwrap(),
            "twtrace: 1 eviction of source IPs (more than --capacity 2): /run/s.json lists the 2 \
             most recent, with 5 of the 6 PAWS rejects seen"
        );
        assert_eq!(eviction_line(path, 0, 2, Some((&[], 0)), true), None);
    }

    #[test]
    fn a_symlinked_summary_updates_its_target() {
        let dir = scratch("ln");
        let target = dir.join("real.json");
        let link = dir.join("link.json");
        fs::write(&target, "old").unwrap();
        std::os::unix::fs::symlink("real.json", &link).unwrap();
        check_writable(&link).unwrap();
        for _ in 0..2 {
            write_atomic(&link, &[]).unwrap();
        }
        assert!(
            fs::symlink_metadata(&link)
                .unwrap()
                .file_type()
                .is_symlink()
        );
        assert_eq!(fs::read_to_string(&target).unwrap(), "[]\n");
        // A link whose target is not there yet: the target is created.
        fs::remove_file(&target).unwrap();
        write_atomic(&link, &[]).unwrap();
        assert_eq!(fs::read_to_string(&link).unwrap(), "[]\n");
        assert_eq!(fs::read_dir(&dir).unwrap().count(), 2, "no temporary left");
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn bad_paths_are_refused_up_front_and_leave_nothing() {
        let dir = scratch("bad");
        let err = check_writable(&dir.join("no/such/dir/s.json")).unwrap_err();
        assert!(format!("{err:#}").contains("no/such/dir/s.json"), "{err:#}");
        assert!(check_writable(&dir).is_err(), "a directory");
        // Ending in a slash: a directory not made yet, or a file taken for one.
        let file = dir.join("s.json");
        fs::write(&file, "[]\n").unwrap();
        for p in [
            format!("{}/new/", dir.display()),
            format!("{}/", file.display()),
        ] {
            let err = check_writable(Path::new(&p)).unwrap_err();
            assert!(
                format!("{err:#}").contains("names a directory"),
                "{p}: {err:#}"
            );
        }
        fs::remove_file(&file).unwrap();
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
