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

/// Checks that `path` is a network namespace and returns its identity (the nsfs inode), which
/// stays the same for the namespace's life and differs for any other namespace, even one later
/// mounted at the same path.
pub fn identify(path: &str) -> Result<u64> {
    if path.is_empty() {
        return Err(Error::InvalidEnv(
            "no network namespace given (CNI_NETNS / --netns)".into(),
        ));
    }
    let file = std::fs::File::open(Path::new(path)).map_err(|e| {
        Error::InvalidEnv(format!(
            "network namespace {path}: {e}: give the path of an existing netns such as /var/run/netns/NAME or /proc/PID/ns/net"
        ))
    })?;
    // NS_GET_NSTYPE = _IO(0xb7, 0x3)
    const NS_GET_NSTYPE: libc::c_ulong = (0xb7 << 8) | 0x3;
    // SAFETY: ioctl on a valid open fd with no argument; returns the namespace type or -1.
    let ty = unsafe { libc::ioctl(file.as_raw_fd(), NS_GET_NSTYPE as _) };
    if ty != libc::CLONE_NEWNET {
        return Err(Error::InvalidEnv(format!(
            "{path} is not a network namespace: give /var/run/netns/NAME or /proc/PID/ns/net"
        )));
    }
    let meta = file
        .metadata()
        .map_err(|e| Error::InvalidEnv(format!("network namespace {path}: {e}")))?;
    Ok(meta.ino())
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
