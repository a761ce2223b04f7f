//! What sysfs says about SR-IOV NICs: a physical function (PF, the netdev the operator names)
//! and its virtual functions (VFs, the PCI functions containers get), plus Neutron's
//! `physical_device_mappings` (which PFs carry which physnet). Pure reads of a directory tree:
//! [`Sysfs::at`] points it at a fake tree in tests.

mod mapping;
mod pci;
mod sysfs;

use std::path::PathBuf;

pub use mapping::{parse_device_mappings, DeviceMapping};
pub use pci::PciAddress;
pub use sysfs::{PhysicalFunction, Sysfs, VirtualFunction};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The netdev exists but is no SR-IOV physical function (no PCI device, or one without
    /// the SR-IOV capability).
    #[error("{netdev} has no SR-IOV capability (no sriov_totalvfs under {})", .device.display())]
    NotAPhysicalFunction { netdev: String, device: PathBuf },
    /// No such netdev in this network namespace (sysfs shows only its own netdevs).
    #[error("no network device {netdev} in this network namespace (no {})", .path.display())]
    NoSuchNetdev { netdev: String, path: PathBuf },
    #[error("{}: {source}", .path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A sysfs file or link holds something other than what the kernel writes there.
    #[error("{}: unexpected content {value:?} ({why})", .path.display())]
    BadValue {
        path: PathBuf,
        value: String,
        why: String,
    },
    #[error(
        "PCI address {text:?}: {why}; expected DOMAIN:BUS:DEVICE.FUNCTION, e.g. \"0000:01:10.2\""
    )]
    BadPciAddress { text: String, why: String },
    #[error("[sriov] physical_device_mappings entry {entry:?}: {why}")]
    BadMapping { entry: String, why: String },
}
