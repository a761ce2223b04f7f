use std::io::ErrorKind;
use std::path::{Path, PathBuf};

use crate::{Error, PciAddress};

/// A sysfs tree: the host's (`/sys`) or a fake one in tests. What it shows under
/// `class/net` and a device's `net/` depends on the network namespace of whoever mounted it:
/// `/sys` shows the netdevs of the netns it was mounted in, so run this in the host's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sysfs {
    pub root: PathBuf,
}

/// An SR-IOV physical function as sysfs shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PhysicalFunction {
    pub netdev: String,
    pub pci: PciAddress,
    /// `sriov_totalvfs`: how many VFs the device can have.
    pub total_vfs: u32,
    /// `sriov_numvfs`: how many it has now (the operator writes this file).
    pub num_vfs: u32,
    /// One per `virtfnN` link, by index.
    pub vfs: Vec<VirtualFunction>,
}

/// A virtual function of a [`PhysicalFunction`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VirtualFunction {
    /// N of the PF's `virtfnN`: the VF number netlink's IFLA_VF_* attributes use.
    pub index: u32,
    pub pci: PciAddress,
    /// PCI vendor id, 4 lowercase hex digits without "0x" ("8086").
    pub vendor: String,
    /// PCI device id, likewise ("10ca").
    pub device: String,
    /// The bound driver ("igbvf", "vfio-pci"); None when unbound.
    pub driver: Option<String>,
    /// Its netdev in this netns; None when it has none (unbound, or bound to a non-net driver
    /// such as vfio-pci) or its netdev is in another netns. A VF with several netdevs (a
    /// dual-port mlx4 VF) gives the first by name.
    pub netdev: Option<String>,
}

impl VirtualFunction {
    /// Neutron's `pci_vendor_info` form: "8086:10ca".
    pub fn vendor_info(&self) -> String {
        format!("{}:{}", self.vendor, self.device)
    }
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> Error + '_ {
    move |source| Error::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn bad(path: &Path, value: &str, why: &str) -> Error {
    Error::BadValue {
        path: path.to_path_buf(),
        value: value.to_string(),
        why: why.to_string(),
    }
}

/// The last component of a symlink's target (sysfs links are relative: `../../../devices/…`).
fn link_basename(link: &Path) -> Result<String, Error> {
    let target = std::fs::read_link(link).map_err(io(link))?;
    target
        .file_name()
        .and_then(|n| n.to_str())
        .map(str::to_string)
        .ok_or_else(|| {
            bad(
                link,
                &target.to_string_lossy(),
                "a link to a device directory",
            )
        })
}

fn link_pci(link: &Path) -> Result<PciAddress, Error> {
    let name = link_basename(link)?;
    name.parse()
        .map_err(|_| bad(link, &name, "a link to a PCI device directory"))
}

fn read_trimmed(path: &Path) -> Result<String, Error> {
    Ok(std::fs::read_to_string(path)
        .map_err(io(path))?
        .trim()
        .to_string())
}

fn read_u32(path: &Path) -> Result<u32, Error> {
    let s = read_trimmed(path)?;
    s.parse().map_err(|_| bad(path, &s, "a decimal number"))
}

/// A PCI id file ("0x8086\n") as 4 lowercase hex digits.
fn read_pci_id(path: &Path) -> Result<String, Error> {
    let s = read_trimmed(path)?;
    match s.strip_prefix("0x") {
        Some(h) if h.len() == 4 && h.bytes().all(|b| b.is_ascii_hexdigit()) => {
            Ok(h.to_ascii_lowercase())
        }
        _ => Err(bad(path, &s, "a PCI id like 0x8086")),
    }
}

/// The sorted entries of `<device>/net/`; empty when there is no such directory.
fn netdevs(device: &Path) -> Result<Vec<String>, Error> {
    let dir = device.join("net");
    let entries = match std::fs::read_dir(&dir) {
        Ok(e) => e,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(vec![]),
        Err(e) => return Err(io(&dir)(e)),
    };
    let mut names = Vec::new();
    for e in entries {
        let e = e.map_err(io(&dir))?;
        if let Some(n) = e.file_name().to_str() {
            names.push(n.to_string());
        }
    }
    names.sort();
    Ok(names)
}

impl Sysfs {
    /// The host's sysfs, `/sys`.
    pub fn host() -> Sysfs {
        Sysfs::at("/sys")
    }

    pub fn at(root: impl Into<PathBuf>) -> Sysfs {
        Sysfs { root: root.into() }
    }

    /// The PF netdev `pf_netdev` of this netns, its VFs, and what each is bound to.
    pub fn physical_function(&self, pf_netdev: &str) -> Result<PhysicalFunction, Error> {
        let netdev_dir = self.root.join("class/net").join(pf_netdev);
        // A name with '/' would walk elsewhere in the tree; no netdev is named so.
        if pf_netdev.is_empty()
            || pf_netdev.contains('/')
            || pf_netdev == "."
            || pf_netdev == ".."
            || !netdev_dir.exists()
        {
            return Err(Error::NoSuchNetdev {
                netdev: pf_netdev.to_string(),
                path: netdev_dir,
            });
        }
        let device = netdev_dir.join("device");
        let not_pf = || Error::NotAPhysicalFunction {
            netdev: pf_netdev.to_string(),
            device: device.clone(),
        };
        let total = device.join("sriov_totalvfs");
        // A virtual netdev (bridge, veth) has no `device`; a VF or a NIC without the
        // capability has no `sriov_totalvfs`.
        if !total.exists() {
            return Err(not_pf());
        }
        let total_vfs = read_u32(&total)?;
        let num_vfs = read_u32(&device.join("sriov_numvfs"))?;
        let pci = link_pci(&device)?;

        let mut vfs = Vec::new();
        let entries = std::fs::read_dir(&device).map_err(io(&device))?;
        for e in entries {
            let e = e.map_err(io(&device))?;
            let name = e.file_name();
            let Some(index) = name
                .to_str()
                .and_then(|n| n.strip_prefix("virtfn"))
                .and_then(|n| n.parse::<u32>().ok())
            else {
                continue;
            };
            vfs.push(self.virtual_function(index, &e.path())?);
        }
        vfs.sort_by_key(|v| v.index);
        Ok(PhysicalFunction {
            netdev: pf_netdev.to_string(),
            pci,
            total_vfs,
            num_vfs,
            vfs,
        })
    }

    fn virtual_function(&self, index: u32, link: &Path) -> Result<VirtualFunction, Error> {
        let pci = link_pci(link)?;
        let driver_link = link.join("driver");
        let driver = match std::fs::symlink_metadata(&driver_link) {
            Ok(_) => Some(link_basename(&driver_link)?),
            Err(e) if e.kind() == ErrorKind::NotFound => None,
            Err(e) => return Err(io(&driver_link)(e)),
        };
        Ok(VirtualFunction {
            index,
            pci,
            vendor: read_pci_id(&link.join("vendor"))?,
            device: read_pci_id(&link.join("device"))?,
            driver,
            netdev: netdevs(link)?.into_iter().next(),
        })
    }

    /// The netdev in this netns of PCI function `vf` (`bus/pci/devices/<vf>/net/*`): what a
    /// VF's netdev is called now, e.g. after it came back from a container's netns under
    /// another name. None when it has none here.
    pub fn vf_netdev(&self, vf: &PciAddress) -> Option<String> {
        let device = self.root.join("bus/pci/devices").join(vf.to_string());
        netdevs(&device).ok()?.into_iter().next()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;
    use std::os::unix::fs::symlink;

    /// A QEMU guest's emulated igb (82576) with two of its seven VFs enabled, laid out as the
    /// kernel does: netdevs in class/net link to device directories under devices/, which
    /// bus/pci/devices also links to.
    fn fake_sysfs() -> tempfile::TempDir {
        let t = tempfile::tempdir().unwrap();
        let r = t.path();
        let bridge = r.join("devices/pci0000:00");
        let pf = bridge.join("0000:00:01.0/0000:01:00.0");
        fs::create_dir_all(&pf).unwrap();
        fs::create_dir_all(r.join("bus/pci/drivers/igbvf")).unwrap();
        fs::create_dir_all(r.join("bus/pci/drivers/igb")).unwrap();
        fs::create_dir_all(r.join("bus/pci/devices")).unwrap();
        fs::create_dir_all(r.join("class/net")).unwrap();
        let pci_dev = |pci: &str, rel: &str| {
            symlink(
                format!("../../../devices/pci0000:00/{rel}"),
                r.join("bus/pci/devices").join(pci),
            )
            .unwrap()
        };

        fs::write(pf.join("sriov_totalvfs"), "7\n").unwrap();
        fs::write(pf.join("sriov_numvfs"), "2\n").unwrap();
        fs::write(pf.join("vendor"), "0x8086\n").unwrap();
        fs::write(pf.join("device"), "0x10c9\n").unwrap();
        symlink("../../../../bus/pci/drivers/igb", pf.join("driver")).unwrap();
        fs::create_dir_all(pf.join("net/eth1")).unwrap();
        fs::create_dir_all(r.join("class/net/eth1")).unwrap();
        symlink(
            "../../../devices/pci0000:00/0000:00:01.0/0000:01:00.0",
            r.join("class/net/eth1/device"),
        )
        .unwrap();
        pci_dev("0000:01:00.0", "0000:00:01.0/0000:01:00.0");

        for (n, vf, netdev) in [(0, "0000:01:10.0", Some("eth2")), (1, "0000:01:10.2", None)] {
            let dir = bridge.join("0000:00:01.0").join(vf);
            fs::create_dir_all(dir.join("net")).unwrap();
            fs::write(dir.join("vendor"), "0x8086\n").unwrap();
            fs::write(dir.join("device"), "0x10ca\n").unwrap();
            symlink("../../../../bus/pci/drivers/igbvf", dir.join("driver")).unwrap();
            symlink("../0000:01:00.0", dir.join("physfn")).unwrap();
            symlink(format!("../{vf}"), pf.join(format!("virtfn{n}"))).unwrap();
            pci_dev(vf, &format!("0000:00:01.0/{vf}"));
            if let Some(name) = netdev {
                fs::create_dir_all(dir.join("net").join(name)).unwrap();
                fs::create_dir_all(r.join("class/net").join(name)).unwrap();
                symlink(
                    format!("../../../devices/pci0000:00/0000:00:01.0/{vf}"),
                    r.join("class/net").join(name).join("device"),
                )
                .unwrap();
            }
        }

        // A NIC without SR-IOV, and a virtual netdev without a device.
        let nic = bridge.join("0000:00:03.0");
        fs::create_dir_all(nic.join("net/eth0")).unwrap();
        fs::write(nic.join("vendor"), "0x8086\n").unwrap();
        fs::write(nic.join("device"), "0x100e\n").unwrap();
        fs::create_dir_all(r.join("class/net/eth0")).unwrap();
        symlink(
            "../../../devices/pci0000:00/0000:00:03.0",
            r.join("class/net/eth0/device"),
        )
        .unwrap();
        fs::create_dir_all(r.join("class/net/br-int")).unwrap();
        t
    }

    fn pci(s: &str) -> PciAddress {
        s.parse().unwrap()
    }

    #[test]
    fn scan_of_a_physical_function() {
        let t = fake_sysfs();
        let pf = Sysfs::at(t.path()).physical_function("eth1").unwrap();
        assert_eq!(pf.netdev, "eth1");
        assert_eq!(pf.pci, pci("0000:01:00.0"));
        assert_eq!((pf.total_vfs, pf.num_vfs), (7, 2));
        assert_eq!(
            pf.vfs,
            vec![
                VirtualFunction {
                    index: 0,
                    pci: pci("0000:01:10.0"),
                    vendor: "8086".into(),
                    device: "10ca".into(),
                    driver: Some("igbvf".into()),
                    netdev: Some("eth2".into()),
                },
                VirtualFunction {
                    index: 1,
                    pci: pci("0000:01:10.2"),
                    vendor: "8086".into(),
                    device: "10ca".into(),
                    driver: Some("igbvf".into()),
                    netdev: None,
                },
            ]
        );
        assert_eq!(pf.vfs[0].vendor_info(), "8086:10ca");
    }

    #[test]
    fn unbound_vf_and_virtfn_order() {
        let t = fake_sysfs();
        let vf1 = t
            .path()
            .join("devices/pci0000:00/0000:00:01.0/0000:01:10.2");
        fs::remove_file(vf1.join("driver")).unwrap();
        fs::remove_dir(vf1.join("net")).unwrap();
        // virtfn10 sorts before virtfn2 by name; by index it comes last.
        let pf_dir = t
            .path()
            .join("devices/pci0000:00/0000:00:01.0/0000:01:00.0");
        let vf10 = pf_dir.parent().unwrap().join("0000:01:11.2");
        fs::create_dir_all(&vf10).unwrap();
        fs::write(vf10.join("vendor"), "0x8086\n").unwrap();
        fs::write(vf10.join("device"), "0x10CA\n").unwrap();
        symlink("../0000:01:11.2", pf_dir.join("virtfn10")).unwrap();
        let pf = Sysfs::at(t.path()).physical_function("eth1").unwrap();
        let got: Vec<_> = pf
            .vfs
            .iter()
            .map(|v| {
                (
                    v.index,
                    v.pci.to_string(),
                    v.driver.clone(),
                    v.netdev.clone(),
                )
            })
            .collect();
        assert_eq!(
            got,
            vec![
                (
                    0,
                    "0000:01:10.0".into(),
                    Some("igbvf".into()),
                    Some("eth2".into())
                ),
                (1, "0000:01:10.2".into(), None, None),
                (10, "0000:01:11.2".into(), None, None),
            ]
        );
        assert_eq!(pf.vfs[2].device, "10ca");
    }

    #[test]
    fn netdev_without_sriov() {
        let t = fake_sysfs();
        let s = Sysfs::at(t.path());
        for (name, dev) in [("eth0", "eth0"), ("br-int", "br-int"), ("eth2", "eth2")] {
            let e = s.physical_function(name).unwrap_err();
            assert!(matches!(e, Error::NotAPhysicalFunction { .. }), "{e:?}");
            let want = format!(
                "{name} has no SR-IOV capability (no sriov_totalvfs under {}/class/net/{dev}/device)",
                t.path().display()
            );
            assert_eq!(e.to_string(), want);
        }
    }

    #[test]
    fn missing_netdev() {
        let t = fake_sysfs();
        let s = Sysfs::at(t.path());
        for name in ["eth9", "", "..", "../../bus"] {
            let e = s.physical_function(name).unwrap_err();
            assert!(matches!(e, Error::NoSuchNetdev { .. }), "{name}: {e:?}");
        }
        let e = s.physical_function("eth9").unwrap_err().to_string();
        assert!(
            e.starts_with("no network device eth9 in this network namespace"),
            "{e}"
        );
    }

    #[test]
    fn malformed_sysfs_is_named() {
        let t = fake_sysfs();
        let pf_dir = t
            .path()
            .join("devices/pci0000:00/0000:00:01.0/0000:01:00.0");
        fs::write(pf_dir.join("sriov_numvfs"), "two\n").unwrap();
        let e = Sysfs::at(t.path()).physical_function("eth1").unwrap_err();
        assert!(matches!(e, Error::BadValue { ref path, .. } if path.ends_with("sriov_numvfs")));
        assert!(e.to_string().contains("\"two\""), "{e}");
    }

    #[test]
    fn vf_netdev_follows_a_rename() {
        let t = fake_sysfs();
        let s = Sysfs::at(t.path());
        let vf0 = pci("0000:01:10.0");
        assert_eq!(s.vf_netdev(&vf0).as_deref(), Some("eth2"));
        assert_eq!(s.vf_netdev(&pci("0000:01:10.2")), None);
        assert_eq!(s.vf_netdev(&pci("0000:02:00.0")), None);
        // Back from a container's netns, where it was renamed.
        let net = t
            .path()
            .join("devices/pci0000:00/0000:00:01.0/0000:01:10.0/net");
        fs::rename(net.join("eth2"), net.join("cvf0123456789")).unwrap();
        assert_eq!(s.vf_netdev(&vf0).as_deref(), Some("cvf0123456789"));
        let pf = s.physical_function("eth1").unwrap();
        assert_eq!(pf.vfs[0].netdev.as_deref(), Some("cvf0123456789"));
    }

    #[test]
    fn host_root() {
        assert_eq!(Sysfs::host().root, PathBuf::from("/sys"));
    }
}
