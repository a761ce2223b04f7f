//! TX checksum offload on/off through the SIOCETHTOOL ioctl (ETHTOOL_[GS]TXCSUM). OVS's
//! userspace datapath drops TCP segments whose checksum the veth left to "hardware".

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::Path;

use nix::sched::CloneFlags;

use crate::Error;

pub const SIOCETHTOOL: libc::c_ulong = 0x8946;
pub const ETHTOOL_GTXCSUM: u32 = 0x16;
pub const ETHTOOL_STXCSUM: u32 = 0x17;

/// `struct ethtool_value`.
#[repr(C)]
#[derive(Debug, Default, Clone, Copy, PartialEq)]
pub struct EthtoolValue {
    pub cmd: u32,
    pub data: u32,
}

/// `struct ifreq` with the `ifr_data` member.
#[repr(C)]
struct IfreqData {
    name: [libc::c_char; libc::IFNAMSIZ],
    data: *mut libc::c_void,
    _pad: [u8; 16],
}

/// The request value for a set/get.
pub fn request(set: Option<bool>) -> EthtoolValue {
    match set {
        Some(on) => EthtoolValue {
            cmd: ETHTOOL_STXCSUM,
            data: on as u32,
        },
        None => EthtoolValue {
            cmd: ETHTOOL_GTXCSUM,
            data: 0,
        },
    }
}

/// Runs one ethtool ioctl in the calling thread's netns.
fn ioctl(ifname: &str, set: Option<bool>) -> Result<bool, Error> {
    if ifname.is_empty() || ifname.len() >= libc::IFNAMSIZ {
        return Err(Error::Invalid(format!(
            "interface name {ifname:?} is not valid"
        )));
    }
    // SAFETY: plain socket(2); the fd is owned right away.
    let raw = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if raw < 0 {
        return Err(Error::Kernel {
            op: "ethtool socket".into(),
            source: std::io::Error::last_os_error(),
        });
    }
    // SAFETY: raw is a fresh, valid fd we own.
    let sock = unsafe { OwnedFd::from_raw_fd(raw) };
    let mut val = request(set);
    let mut ifr = IfreqData {
        name: [0; libc::IFNAMSIZ],
        data: &mut val as *mut EthtoolValue as *mut libc::c_void,
        _pad: [0; 16],
    };
    for (i, b) in ifname.bytes().enumerate() {
        ifr.name[i] = b as libc::c_char;
    }
    // SAFETY: ifr is a properly laid out ifreq whose data points at a live ethtool_value.
    let rc = unsafe { libc::ioctl(sock.as_raw_fd(), SIOCETHTOOL as _, &mut ifr) };
    if rc < 0 {
        let source = std::io::Error::last_os_error();
        if source.raw_os_error() == Some(libc::ENODEV) {
            return Err(Error::NotFound {
                what: format!("link {ifname}"),
            });
        }
        return Err(Error::Kernel {
            op: format!(
                "{} TX checksum offload on {ifname}",
                if set.is_some() { "setting" } else { "reading" }
            ),
            source,
        });
    }
    Ok(val.data != 0)
}

/// Turns TX checksum offload on or off on `ifname` in the host netns.
pub async fn set_tx_checksum(ifname: &str, enabled: bool) -> Result<(), Error> {
    let n = ifname.to_string();
    tokio::task::spawn_blocking(move || ioctl(&n, Some(enabled)).map(|_| ()))
        .await
        .map_err(|e| Error::Invalid(format!("ethtool task: {e}")))?
}

/// Whether TX checksum offload is on for `ifname` in the host netns.
pub async fn tx_checksum(ifname: &str) -> Result<bool, Error> {
    let n = ifname.to_string();
    tokio::task::spawn_blocking(move || ioctl(&n, None))
        .await
        .map_err(|e| Error::Invalid(format!("ethtool task: {e}")))?
}

/// Whether TX checksum offload is on for `ifname` inside the netns at `netns`.
pub async fn tx_checksum_in_netns(netns: &Path, ifname: &str) -> Result<bool, Error> {
    ioctl_in_netns(netns, ifname, None).await
}

/// Turns TX checksum offload on or off for `ifname` inside the netns at `netns`.
pub async fn set_tx_checksum_in_netns(
    netns: &Path,
    ifname: &str,
    enabled: bool,
) -> Result<(), Error> {
    ioctl_in_netns(netns, ifname, Some(enabled))
        .await
        .map(|_| ())
}

async fn ioctl_in_netns(netns: &Path, ifname: &str, set: Option<bool>) -> Result<bool, Error> {
    let file = std::fs::File::open(netns).map_err(|source| Error::Netns {
        path: netns.to_path_buf(),
        source,
    })?;
    let n = ifname.to_string();
    let p = netns.to_path_buf();
    tokio::task::spawn_blocking(move || {
        std::thread::spawn(move || {
            nix::sched::setns(&file, CloneFlags::CLONE_NEWNET).map_err(|e| Error::Netns {
                path: p,
                source: e.into(),
            })?;
            ioctl(&n, set)
        })
        .join()
        .map_err(|_| Error::Invalid("netns thread panicked".into()))?
    })
    .await
    .map_err(|e| Error::Invalid(format!("ethtool task: {e}")))?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_layout() {
        assert_eq!(std::mem::size_of::<EthtoolValue>(), 8);
        assert_eq!(request(Some(false)), EthtoolValue { cmd: 0x17, data: 0 });
        assert_eq!(request(Some(true)), EthtoolValue { cmd: 0x17, data: 1 });
        assert_eq!(request(None), EthtoolValue { cmd: 0x16, data: 0 });
        assert_eq!(
            std::mem::size_of::<IfreqData>(),
            40,
            "struct ifreq is 40 bytes on 64-bit"
        );
    }

    #[test]
    fn bad_names_are_refused() {
        assert!(ioctl("", None).is_err());
        assert!(ioctl("a-name-that-is-too-long", None).is_err());
    }
}
