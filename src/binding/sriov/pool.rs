//! The host's VF pool: the Virtual Functions of the physical functions that
//! `[sriov] physical_device_mappings` names, read from sysfs whenever it is asked (VFs come and
//! go with `sriov_numvfs`), and the store's `vf:<pci>` claims. A VF is known by its PCI
//! address, never by its netdev name (that changes: `devN` when a dying netns gives it back,
//! a rename by a runtime). Operations on the VFs of one PF are serialised (`lock_pf`): real
//! NICs fail when their VFs are configured in parallel.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use courier_sriov::{DeviceMapping, Sysfs};

use crate::error::{Error, Result};
use crate::model::{vf_claim, Network};

/// One VF as sysfs shows it now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Vf {
    pub physnet: String,
    pub pf: String,
    pub index: u32,
    pub pci: String,
    pub vendor_info: String,
    /// Its netdev in the host netns (None: in another netns, or bound to no net driver).
    pub netdev: Option<String>,
}

/// VFs of one PF, as `courier status` and the metrics show them.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PfStatus {
    pub physnet: String,
    pub pf: String,
    pub total: usize,
    /// Claimed by an attachment of this host.
    pub held: usize,
    /// Neither held nor usable: its netdev is in a netns Courier did not put it in, or no
    /// driver has it.
    pub unusable: usize,
    pub free: usize,
    /// Why the PF could not be read, if it could not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

pub struct VfPool {
    sysfs: Sysfs,
    mappings: Vec<DeviceMapping>,
    locks: std::sync::Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

impl VfPool {
    pub fn new(sysfs: Sysfs, mappings: Vec<DeviceMapping>) -> Self {
        VfPool {
            sysfs,
            mappings,
            locks: Default::default(),
        }
    }

    pub fn mappings(&self) -> &[DeviceMapping] {
        &self.mappings
    }

    fn mapping_text(&self) -> String {
        self.mappings
            .iter()
            .map(|m| format!("{}:{}", m.physnet, m.pf))
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// Every VF of every mapped PF, read from sysfs now (off the runtime threads), and the PFs
    /// that could not be read with why.
    pub async fn scan(&self) -> (Vec<Vf>, Vec<(DeviceMapping, String)>) {
        let sysfs = self.sysfs.clone();
        let mappings = self.mappings.clone();
        tokio::task::spawn_blocking(move || scan_blocking(&sysfs, &mappings))
            .await
            .unwrap_or_else(|e| {
                let failed = mappings_of(&self.mappings, &e.to_string());
                (vec![], failed)
            })
    }

    /// The VF at `pci`'s netdev in the host netns now (None: not there).
    pub async fn netdev_of(&self, pci: &str) -> Option<String> {
        let sysfs = self.sysfs.clone();
        let pci = pci.parse().ok()?;
        tokio::task::spawn_blocking(move || sysfs.vf_netdev(&pci))
            .await
            .ok()
            .flatten()
    }

    /// Holds the PF's lock: one VF operation per PF at a time.
    pub async fn lock_pf(&self, pf: &str) -> tokio::sync::OwnedMutexGuard<()> {
        let lock = self
            .locks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(pf.to_string())
            .or_default()
            .clone();
        lock.lock_owned().await
    }

    /// The pool per PF: total, held (claims in `held`), unusable, free; and the claims in
    /// `held` whose VF is on no mapped PF now.
    pub async fn status(&self, held: &BTreeSet<String>) -> (Vec<PfStatus>, Vec<String>) {
        let (vfs, failed) = self.scan().await;
        let vanished: Vec<String> = held
            .iter()
            .filter_map(|c| c.strip_prefix(crate::model::VF_CLAIM_PREFIX))
            .filter(|pci| !vfs.iter().any(|v| v.pci == *pci))
            .map(String::from)
            .collect();
        let mut out: Vec<PfStatus> = self
            .mappings
            .iter()
            .map(|m| {
                let of_pf: Vec<&Vf> = vfs.iter().filter(|v| v.pf == m.pf).collect();
                let held_n = of_pf
                    .iter()
                    .filter(|v| held.contains(&vf_claim(&v.pci)))
                    .count();
                let unusable = of_pf
                    .iter()
                    .filter(|v| !held.contains(&vf_claim(&v.pci)) && v.netdev.is_none())
                    .count();
                PfStatus {
                    physnet: m.physnet.clone(),
                    pf: m.pf.clone(),
                    total: of_pf.len(),
                    held: held_n,
                    unusable,
                    free: of_pf.len() - held_n - unusable,
                    error: failed
                        .iter()
                        .find(|(f, _)| f.pf == m.pf)
                        .map(|(_, e)| e.clone()),
                }
            })
            .collect();
        out.sort_by(|a, b| (&a.physnet, &a.pf).cmp(&(&b.physnet, &b.pf)));
        (out, vanished)
    }

    /// The VF for a container on `network`: the one at `want` (a device plugin's choice) or
    /// the first free one on a PF of the network's physical network. Refused with what to do
    /// when the network has no physical network, this host no PF on it, or no VF is free.
    pub async fn pick(
        &self,
        network: &Network,
        held: &BTreeSet<String>,
        want: Option<&str>,
    ) -> Result<Vf> {
        let (vfs, failed) = self.scan().await;
        pick_from(
            &vfs,
            &failed,
            &self.mapping_text(),
            &self.mappings,
            network,
            held,
            want,
        )
    }
}

fn mappings_of(mappings: &[DeviceMapping], why: &str) -> Vec<(DeviceMapping, String)> {
    mappings
        .iter()
        .map(|m| (m.clone(), why.to_string()))
        .collect()
}

fn scan_blocking(
    sysfs: &Sysfs,
    mappings: &[DeviceMapping],
) -> (Vec<Vf>, Vec<(DeviceMapping, String)>) {
    let mut vfs = Vec::new();
    let mut failed = Vec::new();
    for m in mappings {
        match sysfs.physical_function(&m.pf) {
            Ok(pf) => vfs.extend(pf.vfs.iter().map(|v| Vf {
                physnet: m.physnet.clone(),
                pf: m.pf.clone(),
                index: v.index,
                pci: v.pci.to_string(),
                vendor_info: v.vendor_info(),
                netdev: v.netdev.clone().filter(|_| v.driver.is_some()),
            })),
            Err(e) => failed.push((m.clone(), e.to_string())),
        }
    }
    (vfs, failed)
}

/// [`VfPool::pick`] on a scan already made (pure: unit-tested).
pub fn pick_from(
    vfs: &[Vf],
    failed: &[(DeviceMapping, String)],
    mapping_text: &str,
    mappings: &[DeviceMapping],
    network: &Network,
    held: &BTreeSet<String>,
    want: Option<&str>,
) -> Result<Vf> {
    let Some(physnet) = network.physical.as_ref().map(|p| p.name.as_str()) else {
        return Err(Error::InvalidInput(format!(
            "network {:?} reaches no physical network (OVN: the logical switch has no localnet port; Neutron: no provider:physical_network), and an SR-IOV VF joins a logical network only through one: give it one, or attach with another binding",
            network.name
        )));
    };
    if !mappings.iter().any(|m| m.physnet == physnet) {
        return Err(Error::InvalidInput(format!(
            "network {:?} is on physical network {physnet:?}, and this host has no SR-IOV PF on it ([sriov] physical_device_mappings = [{mapping_text}]): map a PF to {physnet}, or run the container on a host that has one",
            network.name
        )));
    }
    let on_net: Vec<&Vf> = vfs.iter().filter(|v| v.physnet == physnet).collect();
    if let Some(want) = want {
        let Some(vf) = vfs.iter().find(|v| v.pci == want) else {
            return Err(Error::InvalidInput(format!(
                "VF {want} (deviceID) is not a VF of a PF this host maps ([sriov] physical_device_mappings = [{mapping_text}]): give the PCI address of one of their VFs"
            )));
        };
        if vf.physnet != physnet {
            return Err(Error::InvalidInput(format!(
                "VF {want} is on physical network {:?} (PF {}), network {:?} on {physnet:?}: give a VF of that physical network",
                vf.physnet, vf.pf, network.name
            )));
        }
        if held.contains(&vf_claim(want)) {
            return Err(Error::Claimed {
                resource: format!("SR-IOV VF {want}"),
                holder: "another container of this host".into(),
                what: "give another VF, or detach that container first".into(),
            });
        }
        if vf.netdev.is_none() {
            return Err(Error::InvalidInput(format!(
                "VF {want} of {} has no netdev in the host netns (another netns has it, or no driver is bound): give a free VF",
                vf.pf
            )));
        }
        return Ok(vf.clone());
    }
    if let Some(v) = on_net
        .iter()
        .find(|v| v.netdev.is_some() && !held.contains(&vf_claim(&v.pci)))
    {
        return Ok((*v).clone());
    }
    let held_n = on_net
        .iter()
        .filter(|v| held.contains(&vf_claim(&v.pci)))
        .count();
    let pfs: Vec<String> = mappings
        .iter()
        .filter(|m| m.physnet == physnet)
        .map(|m| match failed.iter().find(|(f, _)| f.pf == m.pf) {
            Some((_, e)) => format!("{} unreadable: {e}", m.pf),
            None => m.pf.clone(),
        })
        .collect();
    Err(Error::Exhausted {
        resource: format!("SR-IOV VFs of physical network {physnet} on this host"),
        what: format!(
            "{} VFs on {}: {held_n} held by containers, {} with no netdev in the host netns (in use outside Courier, or unbound); detach a container, or raise sriov_numvfs",
            on_net.len(),
            pfs.join(", "),
            on_net.len() - held_n
        ),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::PhysicalNetwork;

    fn vf(pf: &str, i: u32, netdev: Option<&str>) -> Vf {
        Vf {
            physnet: "physnet1".into(),
            pf: pf.into(),
            index: i,
            pci: format!("0000:01:10.{i}"),
            vendor_info: "8086:10ca".into(),
            netdev: netdev.map(Into::into),
        }
    }

    fn net(physnet: Option<&str>) -> Network {
        Network {
            name: "phys".into(),
            physical: physnet.map(|p| PhysicalNetwork {
                name: p.into(),
                vlan: Some(100),
            }),
            ..Default::default()
        }
    }

    fn maps() -> Vec<DeviceMapping> {
        vec![DeviceMapping {
            physnet: "physnet1".into(),
            pf: "eth1".into(),
        }]
    }

    fn pick(vfs: &[Vf], n: &Network, held: &[&str], want: Option<&str>) -> Result<Vf> {
        let held: BTreeSet<String> = held.iter().map(|p| vf_claim(p)).collect();
        pick_from(vfs, &[], "physnet1:eth1", &maps(), n, &held, want)
    }

    #[test]
    fn the_first_free_vf_of_the_networks_physnet() {
        let vfs = [
            vf("eth1", 0, Some("eth2")),
            vf("eth1", 2, None),
            vf("eth1", 4, Some("eth4")),
        ];
        let n = net(Some("physnet1"));
        assert_eq!(pick(&vfs, &n, &[], None).unwrap().index, 0);
        // Held by a record: the next; no netdev here: skipped.
        assert_eq!(pick(&vfs, &n, &["0000:01:10.0"], None).unwrap().index, 4);
        let e = pick(&vfs, &n, &["0000:01:10.0", "0000:01:10.4"], None).unwrap_err();
        let text = e.to_string();
        assert!(matches!(e, Error::Exhausted { .. }), "{e:?}");
        assert!(text.contains("3 VFs on eth1: 2 held"), "{text}");
        assert!(text.contains("1 with no netdev"), "{text}");
    }

    #[test]
    fn a_vf_asked_for_by_address() {
        let vfs = [vf("eth1", 0, Some("eth2")), vf("eth1", 2, None)];
        let n = net(Some("physnet1"));
        assert_eq!(
            pick(&vfs, &n, &[], Some("0000:01:10.0")).unwrap().pci,
            "0000:01:10.0"
        );
        assert!(matches!(
            pick(&vfs, &n, &["0000:01:10.0"], Some("0000:01:10.0")),
            Err(Error::Claimed { .. })
        ));
        let e = pick(&vfs, &n, &[], Some("0000:01:10.2")).unwrap_err();
        assert!(e.to_string().contains("no netdev"), "{e}");
        let e = pick(&vfs, &n, &[], Some("0000:05:00.1")).unwrap_err();
        assert!(
            e.to_string().contains("not a VF of a PF this host maps"),
            "{e}"
        );
    }

    #[test]
    fn a_network_off_the_mapped_physnets_is_refused() {
        let vfs = [vf("eth1", 0, Some("eth2"))];
        let e = pick(&vfs, &net(None), &[], None).unwrap_err();
        assert!(e.to_string().contains("localnet"), "{e}");
        let e = pick(&vfs, &net(Some("physnet9")), &[], None).unwrap_err();
        assert!(e.to_string().contains("no SR-IOV PF on it"), "{e}");
        assert!(e.to_string().contains("physnet1:eth1"), "{e}");
    }
}
