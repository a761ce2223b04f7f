//! Named network namespaces (`/var/run/netns/NAME`, the iproute2 convention), for the
//! benchmark and the demo: a fresh thread unshares its netns and bind-mounts it.

use std::io;
use std::path::{Path, PathBuf};

use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sched::{unshare, CloneFlags};

pub const NETNS_DIR: &str = "/var/run/netns";

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
