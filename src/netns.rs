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

/// Every network namespace this process can see, once each, by a path that opens it, with
/// its identity (nsfs inode): those mounted somewhere (`/var/run/netns/*`, a runtime's own
/// directory: the nsfs mounts in /proc/self/mountinfo) first, then those only a process holds
/// (`/proc/PID/ns/net`). A netns that only an open file holds is not seen.
pub fn every() -> Vec<(String, u64)> {
    let mut seen = std::collections::BTreeSet::new();
    let mut out = Vec::new();
    if let Ok(info) = std::fs::read_to_string("/proc/self/mountinfo") {
        for (path, ino) in nsfs_net_mounts(&info) {
            if seen.insert(ino) {
                out.push((path, ino));
            }
        }
    }
    if let Ok(dir) = std::fs::read_dir("/proc") {
        for e in dir.flatten() {
            let name = e.file_name();
            let Some(pid) = name
                .to_str()
                .filter(|n| n.bytes().all(|b| b.is_ascii_digit()))
            else {
                continue;
            };
            let path = format!("/proc/{pid}/ns/net");
            // The magic link's target: the netns itself (a process that exited: skipped).
            if let Ok(meta) = std::fs::metadata(&path) {
                if seen.insert(meta.ino()) {
                    out.push((path, meta.ino()));
                }
            }
        }
    }
    out
}

/// The network namespaces mounted somewhere, from a /proc/PID/mountinfo text: (mount point,
/// nsfs inode) of each `nsfs` mount whose root is `net:[INODE]`.
fn nsfs_net_mounts(mountinfo: &str) -> Vec<(String, u64)> {
    mountinfo
        .lines()
        .filter_map(|line| {
            let (mount, fs) = line.split_once(" - ")?;
            if fs.split(' ').next() != Some("nsfs") {
                return None;
            }
            let fields: Vec<&str> = mount.split(' ').collect();
            let ino = fields
                .get(3)?
                .strip_prefix("net:[")?
                .strip_suffix(']')?
                .parse()
                .ok()?;
            Some((unescape_mountinfo(fields.get(4)?), ino))
        })
        .collect()
}

/// mountinfo writes space, tab, newline and backslash in paths as `\ooo` (octal).
fn unescape_mountinfo(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            out.push((b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0'));
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn netns_mounts_from_mountinfo() {
        let info = "\
22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw
610 29 0:4 net:[4026532600] /run/netns/c1 rw shared:300 - nsfs nsfs rw
611 29 0:4 net:[4026532700] /run/docker/netns/a\\040b rw - nsfs nsfs rw
612 29 0:4 mnt:[4026532800] /run/snapd/ns/x.mnt rw - nsfs nsfs rw
613 29 0:4 net:[4026532600] /var/run/netns/c1 rw shared:300 - nsfs nsfs rw
";
        assert_eq!(
            nsfs_net_mounts(info),
            vec![
                ("/run/netns/c1".to_string(), 4026532600),
                ("/run/docker/netns/a b".to_string(), 4026532700),
                ("/var/run/netns/c1".to_string(), 4026532600),
            ]
        );
        assert_eq!(unescape_mountinfo("a\\134b\\011"), "a\\b\t");
    }

    #[test]
    fn every_netns_includes_our_own() {
        let Probe::Netns(own) = probe("/proc/self/ns/net") else {
            return;
        };
        let all = every();
        assert!(all.iter().any(|(_, i)| *i == own), "{all:?}");
        let mut inodes: Vec<u64> = all.iter().map(|(_, i)| *i).collect();
        inodes.sort_unstable();
        inodes.dedup();
        assert_eq!(inodes.len(), all.len(), "each once");
    }

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
