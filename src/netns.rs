//! Named network namespaces (`/var/run/netns/NAME`, the iproute2 convention), for the
//! benchmark and the demo: a fresh thread unshares its netns and bind-mounts it.

use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sched::{unshare, CloneFlags};

pub const NETNS_DIR: &str = "/var/run/netns";

/// What is at a netns path now, for deciding whether an attached container is gone.
#[derive(Debug)]
pub enum Probe {
    /// A network namespace with this identity (nsfs inode).
    Netns(u64),
    /// Nothing there (ENOENT): the namespace was deleted, or its process exited.
    Missing,
    /// The path opens but is not a network namespace (e.g. the mount point of a deleted netns).
    NotNetns,
    /// Could not tell (EMFILE, EACCES, EINTR, ...): says nothing about the namespace.
    Unknown(io::Error),
}

impl Probe {
    /// Certainly not the namespace with identity `attached` any more: the path is gone, is no
    /// netns, or is a different netns. Any error that leaves it open is *not* gone.
    pub fn certainly_gone(&self, attached: Option<u64>) -> bool {
        match self {
            Probe::Missing | Probe::NotNetns => true,
            Probe::Netns(inode) => attached.is_some_and(|a| a != *inode),
            Probe::Unknown(_) => false,
        }
    }
}

/// Looks at `path` without deciding anything: see [`Probe`].
pub fn probe(path: &str) -> Probe {
    let file = match std::fs::File::open(Path::new(path)) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Probe::Missing,
        // A path component is no directory (ENOTDIR): nothing of ours is there either.
        Err(e) if e.raw_os_error() == Some(libc::ENOTDIR) => return Probe::Missing,
        Err(e) => return Probe::Unknown(e),
    };
    // NS_GET_NSTYPE = _IO(0xb7, 0x3)
    const NS_GET_NSTYPE: libc::c_ulong = (0xb7 << 8) | 0x3;
    // SAFETY: ioctl on a valid open fd with no argument; returns the namespace type or -1.
    let ty = unsafe { libc::ioctl(file.as_raw_fd(), NS_GET_NSTYPE as _) };
    if ty == -1 {
        let e = io::Error::last_os_error();
        // ENOTTY/EINVAL: the file is not an nsfs file at all.
        return match e.raw_os_error() {
            Some(libc::ENOTTY) | Some(libc::EINVAL) => Probe::NotNetns,
            _ => Probe::Unknown(e),
        };
    }
    if ty != libc::CLONE_NEWNET {
        return Probe::NotNetns;
    }
    match file.metadata() {
        Ok(meta) => Probe::Netns(meta.ino()),
        Err(e) => Probe::Unknown(e),
    }
}

/// Checks that `path` is a network namespace and returns its identity (the nsfs inode), which
/// stays the same for the namespace's life and differs for any other namespace, even one later
/// mounted at the same path.
pub fn identify(path: &str) -> Result<u64> {
    if path.is_empty() {
        return Err(Error::InvalidEnv(
            "no network namespace given (CNI_NETNS / --netns)".into(),
        ));
    }
    match probe(path) {
        Probe::Netns(inode) => Ok(inode),
        Probe::NotNetns => Err(Error::InvalidEnv(format!(
            "{path} is not a network namespace: give /var/run/netns/NAME or /proc/PID/ns/net"
        ))),
        Probe::Missing => Err(Error::InvalidEnv(format!(
            "network namespace {path} does not exist: give the path of an existing netns such as /var/run/netns/NAME or /proc/PID/ns/net"
        ))),
        Probe::Unknown(e) => Err(Error::InvalidEnv(format!("network namespace {path}: {e}"))),
    }
}

pub fn path(name: &str) -> PathBuf {
    Path::new(NETNS_DIR).join(name)
}

pub fn create(name: &str) -> io::Result<PathBuf> {
    std::fs::create_dir_all(NETNS_DIR)?;
    let p = path(name);
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&p)?;
    let target = p.clone();
    let res = std::thread::spawn(move || -> io::Result<()> {
        unshare(CloneFlags::CLONE_NEWNET).map_err(io::Error::from)?;
        mount(
            Some("/proc/thread-self/ns/net"),
            &target,
            None::<&str>,
            MsFlags::MS_BIND,
            None::<&str>,
        )
        .map_err(io::Error::from)
    })
    .join()
    .map_err(|_| io::Error::other("netns thread panicked"))?;
    if let Err(e) = res {
        let _ = std::fs::remove_file(&p);
        return Err(io::Error::new(
            e.kind(),
            format!("creating netns {name}: {e}"),
        ));
    }
    Ok(p)
}

pub fn delete(name: &str) -> io::Result<()> {
    let p = path(name);
    let _ = umount2(&p, MntFlags::MNT_DETACH);
    match std::fs::remove_file(&p) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_certain_gone_counts() {
        let eacces = || Probe::Unknown(io::Error::from_raw_os_error(libc::EACCES));
        let emfile = || Probe::Unknown(io::Error::from_raw_os_error(libc::EMFILE));
        assert!(!eacces().certainly_gone(Some(7)));
        assert!(!emfile().certainly_gone(Some(7)));
        assert!(Probe::Missing.certainly_gone(Some(7)));
        assert!(Probe::Missing.certainly_gone(None));
        assert!(Probe::NotNetns.certainly_gone(Some(7)));
        assert!(Probe::Netns(8).certainly_gone(Some(7)));
        assert!(!Probe::Netns(7).certainly_gone(Some(7)));
        assert!(!Probe::Netns(7).certainly_gone(None));
    }

    #[test]
    fn probe_reads_the_real_filesystem() {
        assert!(matches!(probe("/nonexistent/netns"), Probe::Missing));
        assert!(matches!(probe("/etc/hostname/x"), Probe::Missing));
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("plain");
        std::fs::write(&f, b"").unwrap();
        assert!(matches!(probe(f.to_str().unwrap()), Probe::NotNetns));
        // Our own netns, where /proc allows it.
        if let Probe::Netns(i) = probe("/proc/self/ns/net") {
            assert!(i > 0);
        }
    }
}
