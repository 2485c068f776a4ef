//! Network namespaces by inode, and running code inside one: for reading a namespace's own
//! socket tables (sock_diag answers for the namespace the asking thread is in).

use std::{
    collections::BTreeMap,
    fs::File,
    os::{fd::AsRawFd as _, unix::fs::MetadataExt as _},
    path::{Path, PathBuf},
};

use anyhow::{Context as _, Result, bail};

/// Directories of namespace files kept by name: `ip netns` and Docker. A namespace nothing
/// runs in and nothing names there cannot be found (it is still traced).
const NAMED: [&str; 2] = ["/run/netns", "/run/docker/netns"];

/// Every network namespace that a process runs in or that is named under [`NAMED`], by inode,
/// with one file that refers to it: its name where it has one, which lasts, rather than a
/// process's, which goes with that process (a load generator's client, a CGI worker).
pub fn all() -> BTreeMap<u32, PathBuf> {
    let mut found = BTreeMap::new();
    let procs = std::fs::read_dir("/proc").into_iter().flatten().flatten();
    let pids = procs
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .bytes()
                .all(|b| b.is_ascii_digit())
        })
        .map(|e| e.path().join("ns/net"));
    let named = NAMED
        .iter()
        .flat_map(std::fs::read_dir)
        .flatten()
        .flatten()
        .map(|e| e.path());
    // A file left under a name after its namespace went (Docker leaves such files) is an
    // ordinary file: no namespace, and nothing to enter.
    let named = named.filter(|p| is_namespace_file(p));
    for path in named.chain(pids) {
        // A process may exit between listing and stat: skip it.
        if let Ok(meta) = std::fs::metadata(&path)
            && let Ok(inode) = u32::try_from(meta.ino())
        {
            found.entry(inode).or_insert(path);
        }
    }
    found
}

/// Whether `path` is a file of the kernel's namespace filesystem (nsfs): any file has an
/// inode, only a namespace file's is a namespace id.
pub fn is_namespace_file(path: &Path) -> bool {
    inspect(path).is_ok_and(|kind| kind != NsFile::NotNamespace)
}

/// What a file given as a network namespace turned out to be.
#[derive(Debug, PartialEq, Eq)]
pub enum NsFile {
    /// A network namespace's file, with the namespace's inode (its id in events).
    Network(u64),
    /// A namespace file of another kind: /proc/PID/ns/mnt is one, and no network event
    /// carries its inode.
    OtherNamespace,
    /// Not a namespace file at all (any file has an inode; only a namespace file's is an id).
    NotNamespace,
}

/// Opens `path` once and asks that descriptor what it is (so the answers are about one file):
/// its filesystem (nsfs), its kind (NS_GET_NSTYPE, Linux 4.11; a kernel without it lets any
/// namespace file pass as a network one) and its inode.
pub fn inspect(path: &Path) -> std::io::Result<NsFile> {
    const NSFS_MAGIC: i64 = 0x6e73_6673;
    const NS_GET_NSTYPE: u32 = 0xb703; // _IO(0xb7, 0x3)
    let file = File::open(path)?;
    let fd = file.as_raw_fd();
    // SAFETY: fstatfs writes the struct we pass; an all-zero statfs is a valid value.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::fstatfs(fd, &mut st) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    if st.f_type as i64 != NSFS_MAGIC {
        return Ok(NsFile::NotNamespace);
    }
    // SAFETY: an ioctl without argument on an fd we own.
    let kind = unsafe { libc::ioctl(fd, NS_GET_NSTYPE as _) };
    let unknown = kind < 0 && std::io::Error::last_os_error().raw_os_error() == Some(libc::ENOTTY);
    if kind != libc::CLONE_NEWNET && !unknown {
        return Ok(NsFile::OtherNamespace);
    }
    Ok(NsFile::Network(file.metadata()?.ino()))
}

/// A file through which the namespace with `inode` is found now: `hint` if it still leads
/// there (a /run/netns name goes with `ip netns del`, a /proc/PID one with its process), else
/// one of those in use ([`all`], a scan of /proc). None when neither finds it.
pub fn find(inode: u32, hint: Option<&Path>) -> Option<PathBuf> {
    if let Some(hint) = hint
        && inspect(hint).is_ok_and(|k| k == NsFile::Network(inode.into()))
    {
        return Some(hint.to_path_buf());
    }
    all().remove(&inode)
}

/// Runs `f` on a new thread that has entered the namespace of `path`, and returns its result.
/// The thread ends with `f`, so no other code runs in that namespace by mistake.
pub fn run_in<T: Send + 'static>(
    path: PathBuf,
    f: impl FnOnce() -> Result<T> + Send + 'static,
) -> Result<T> {
    std::thread::Builder::new()
        .name("twtrace-netns".into())
        .spawn(move || {
            let file = File::open(&path).with_context(|| format!("opening {}", path.display()))?;
            // SAFETY: a valid namespace fd; setns only changes this thread's namespace.
            if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                let e = std::io::Error::last_os_error();
                let hint = if e.raw_os_error() == Some(libc::EPERM) {
                    " (entering a network namespace needs CAP_SYS_ADMIN)"
                } else {
                    ""
                };
                bail!("entering the namespace of {}: {e}{hint}", path.display());
            }
            f()
        })
        .context("spawning a namespace thread")?
        .join()
        .map_err(|_| anyhow::anyhow!("namespace thread panicked"))?
}
