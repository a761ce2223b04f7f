//! SR-IOV: the container's interface is a Virtual Function of a NIC on the port's physical
//! network, moved into its netns. The VF is picked from the host's pool (`pool.rs`) — or the one
//! a device plugin named (CNI `deviceID`) — before the intent, and claimed with it (`vf:<pci>`).
//! Plug configures the VF through its PF (MAC, VLAN, spoof check, trust, link state), marks
//! its netdev (alias), moves it into the netns, names, addresses and brings it up. Release
//! brings it home — from a live netns, or wherever the kernel put it when the netns died (a
//! physical device goes back to the host netns, perhaps as `devN`) — found by its PCI
//! address, gives it back its host name and resets it through the PF. The VF carries the
//! port's traffic straight to the physical network: the backend knows the port as a direct
//! one (`PortRole::Direct`), and no security group applies to it.

pub mod pool;

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::Arc;

use async_trait::async_trait;
use courier_netlink::msg::{VfLinkStateSetting, VfSettings};
use courier_netlink::Netlink;

use super::vm_port::nl_err;
use super::{EdgeBinding, EdgeOrphan, EdgeResource};
use crate::backend::{DirectProfile, PortRole};
use crate::error::{Error, Result};
use crate::model::{
    link_alias, parse_mac, AttachRequest, Attachment, EdgeState, LogicalPort, Network,
    VF_CLAIM_PREFIX,
};
use pool::{Vf, VfPool};

/// How VFs are configured for containers (`[sriov]`).
#[derive(Debug, Clone)]
pub struct VfPolicy {
    /// IFLA_VF_SPOOFCHK: the NIC drops frames from the VF with another source MAC.
    pub spoof_check: bool,
    /// IFLA_VF_TRUST: the VF may change its MAC and enter promiscuous mode.
    pub trust: bool,
    /// The container interface's MTU when the port names none.
    pub mtu: Option<u32>,
}

pub struct Sriov {
    host: Arc<Netlink>,
    pool: Arc<VfPool>,
    policy: VfPolicy,
    /// This host's mark (the VF netdev's alias names it).
    mark: String,
}

/// How long release waits for a VF that a dying netns is giving back to the host.
const COME_HOME: std::time::Duration = std::time::Duration::from_secs(10);

/// Waits (up to 3 s) until link `name` (on the socket `nl`) has `mac`; false if it never does.
async fn wait_mac(nl: &Netlink, name: &str, mac: [u8; 6]) -> bool {
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(3);
    loop {
        if let Ok(Some(l)) = nl.link(name).await {
            if l.mac == Some(mac) {
                return true;
            }
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

struct VfRef<'a> {
    pf: &'a str,
    vf: u32,
    pci: &'a str,
    host_ifname: &'a str,
    vlan: Option<u16>,
}

fn vf_of(att: &Attachment) -> Result<Option<VfRef<'_>>> {
    match &att.edge {
        EdgeState::Sriov {
            pf,
            vf,
            pci,
            host_ifname,
            vlan,
            ..
        } => Ok((!pci.is_empty()).then_some(VfRef {
            pf,
            vf: *vf,
            pci,
            host_ifname,
            vlan: *vlan,
        })),
        other => Err(Error::Internal(format!(
            "attachment {} has a {} edge, not sriov",
            att.id,
            other.kind()
        ))),
    }
}

impl Sriov {
    pub fn new(host: Arc<Netlink>, pool: Arc<VfPool>, policy: VfPolicy, mark: &str) -> Self {
        Sriov {
            host,
            pool,
            policy,
            mark: mark.to_string(),
        }
    }

    pub fn pool(&self) -> &Arc<VfPool> {
        &self.pool
    }

    fn alias_prefix(&self) -> String {
        link_alias(&self.mark, "")
    }

    /// The VF's settings while a container has it.
    fn settings_for(&self, vf: u32, mac: [u8; 6], vlan: Option<u16>) -> VfSettings {
        VfSettings {
            vf,
            mac: Some(mac),
            vlan: Some(vlan.unwrap_or(0)),
            spoof_check: Some(self.policy.spoof_check),
            trust: Some(self.policy.trust),
            link_state: Some(VfLinkStateSetting::Auto),
        }
    }

    /// The VF's settings when no container has it: no MAC, untagged, spoof check on, not
    /// trusted, link state following the PF.
    fn reset_settings(vf: u32) -> VfSettings {
        VfSettings {
            vf,
            mac: Some([0; 6]),
            vlan: Some(0),
            spoof_check: Some(true),
            trust: Some(false),
            link_state: Some(VfLinkStateSetting::Auto),
        }
    }

    /// Sets `s` on VF `s.vf` of `pf`. The kernel applies a VF's settings in order and stops at
    /// the first one the driver refuses, so they go in three requests: MAC, VLAN and spoof
    /// check (what every SR-IOV driver has, and what the port needs); then trust and link
    /// state, each alone. A driver without trust or link-state control (igb has no link
    /// state) answers EOPNOTSUPP: that is fine when the value asked is the driver's own
    /// (untrusted; link following the PF), an error otherwise.
    async fn apply_vf(&self, pf: &str, s: &VfSettings) -> Result<()> {
        let context = |what: &str| format!("{what} VF {} of {pf}", s.vf);
        let base = VfSettings {
            trust: None,
            link_state: None,
            ..s.clone()
        };
        if !base.is_empty() {
            self.host
                .set_vf(pf, &base)
                .await
                .map_err(nl_err(context("configuring")))?;
        }
        let optional = [
            (
                VfSettings {
                    vf: s.vf,
                    trust: s.trust,
                    ..Default::default()
                },
                s.trust == Some(false),
            ),
            (
                VfSettings {
                    vf: s.vf,
                    link_state: s.link_state,
                    ..Default::default()
                },
                s.link_state == Some(VfLinkStateSetting::Auto),
            ),
        ];
        for (one, is_default) in optional {
            if one.is_empty() {
                continue;
            }
            match self.host.set_vf(pf, &one).await {
                Ok(()) => {}
                Err(courier_netlink::Error::Kernel { source, .. })
                    if is_default && source.raw_os_error() == Some(libc::EOPNOTSUPP) =>
                {
                    tracing::debug!(
                        pf,
                        vf = s.vf,
                        "the driver has no control of this VF setting; it is at its default"
                    );
                }
                Err(e) => return Err(nl_err(context("configuring"))(e)),
            }
        }
        Ok(())
    }

    /// Brings the VF home and resets it (the PF's lock held by the caller). Every step is
    /// tried; the errors are returned.
    async fn release_vf(&self, att: &Attachment, v: &VfRef<'_>) -> Vec<Error> {
        let mut errors = Vec::new();
        let alias = link_alias(&self.mark, &att.id);
        // 1. From the container's netns, while it lives: the link with our mark, whatever its
        // name now (a runtime may have renamed it).
        let alive = !att.netns.is_empty()
            && !crate::netns::probe(&att.netns).certainly_gone(att.netns_inode);
        if alive && self.pool.netdev_of(v.pci).await.is_none() {
            match Netlink::in_netns(Path::new(&att.netns)).await {
                Ok(ns) => match ns.links().await {
                    Ok(links) => {
                        if let Some(l) = links.iter().find(|l| l.alias.as_deref() == Some(&alias)) {
                            if let Err(e) = ns.set_down(&l.name).await {
                                errors.push(
                                    nl_err(format!("downing {} in {}", l.name, att.netns))(e),
                                );
                            }
                            // Named for the host before it goes there: the kernel refuses a
                            // move into a netns that has its name (the container's eth0).
                            let home = if v.host_ifname.is_empty()
                                || links.iter().any(|o| o.name == v.host_ifname)
                            {
                                crate::model::peer_ifname(&att.id)
                            } else {
                                v.host_ifname.to_string()
                            };
                            let mut name = l.name.clone();
                            if name != home {
                                match ns.rename(&name, &home).await {
                                    Ok(()) => name = home,
                                    Err(e) => errors.push(nl_err(format!(
                                        "renaming {name} to {home} in {}",
                                        att.netns
                                    ))(e)),
                                }
                            }
                            if let Err(e) = ns
                                .move_to_netns(&name, Path::new("/proc/self/ns/net"))
                                .await
                            {
                                errors.push(nl_err(format!(
                                    "moving VF {} ({name} in {}) back to the host",
                                    v.pci, att.netns
                                ))(e));
                            }
                        }
                    }
                    Err(e) => errors.push(nl_err(format!("listing links of {}", att.netns))(e)),
                },
                Err(e) => errors.push(nl_err(format!("opening netns {}", att.netns))(e)),
            }
        }
        // 2. On the host, by PCI address; a dying netns gives a VF back a moment after it is
        // gone, so wait a little for it.
        let deadline = tokio::time::Instant::now() + COME_HOME;
        let netdev = loop {
            if let Some(n) = self.pool.netdev_of(v.pci).await {
                break Some(n);
            }
            if tokio::time::Instant::now() >= deadline {
                break None;
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        };
        let Some(netdev) = netdev else {
            errors.push(Error::Unavailable(format!(
                "VF {} (VF {} of {}) has not come back to the host netns within {}s (a netns still holds it, or its driver is gone): the record is kept and reconcile will try again",
                v.pci,
                v.vf,
                v.pf,
                COME_HOME.as_secs()
            )));
            return errors;
        };
        // 3. Its host name back (down first: a link is renamed only when down), no mark.
        if let Err(e) = self.host.set_down(&netdev).await {
            errors.push(nl_err(format!("downing VF netdev {netdev}"))(e));
        }
        if netdev != v.host_ifname && !v.host_ifname.is_empty() {
            let taken = matches!(self.host.link(v.host_ifname).await, Ok(Some(_)));
            if !taken {
                if let Err(e) = self.host.rename(&netdev, v.host_ifname).await {
                    errors.push(nl_err(format!(
                        "renaming VF netdev {netdev} back to {}",
                        v.host_ifname
                    ))(e));
                }
            }
        }
        let now = self.pool.netdev_of(v.pci).await.unwrap_or(netdev);
        if let Err(e) = self.host.set_alias(&now, "").await {
            errors.push(nl_err(format!("clearing the mark of VF netdev {now}"))(e));
        }
        // 4. Reset through the PF.
        if let Err(e) = self.apply_vf(v.pf, &Self::reset_settings(v.vf)).await {
            errors.push(e);
        }
        errors
    }
}

#[async_trait]
impl EdgeBinding for Sriov {
    fn kind(&self) -> &'static str {
        "sriov"
    }

    fn edge_for(&self, _id: &str, req: &AttachRequest) -> EdgeState {
        // Filled in by `pick_device` before the intent.
        EdgeState::Sriov {
            physnet: String::new(),
            pf: String::new(),
            vf: 0,
            pci: req.device.clone().unwrap_or_default(),
            vendor_info: String::new(),
            host_ifname: String::new(),
            vlan: None,
            requested: req.device.is_some(),
        }
    }

    async fn health(&self) -> Result<()> {
        let (vfs, failed) = self.pool.scan().await;
        if let Some((m, e)) = failed.first() {
            return Err(Error::Unavailable(format!(
                "SR-IOV PF {} (physical network {}): {e}",
                m.pf, m.physnet
            )));
        }
        if vfs.is_empty() {
            return Err(Error::Unavailable(format!(
                "the SR-IOV PFs {} have no VFs: set sriov_numvfs",
                self.pool
                    .mappings()
                    .iter()
                    .map(|m| m.pf.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            )));
        }
        Ok(())
    }

    fn port_role(&self, att: &Attachment) -> PortRole {
        match &att.edge {
            EdgeState::Sriov {
                physnet,
                pci,
                vendor_info,
                ..
            } => PortRole::Direct(DirectProfile {
                pci_slot: pci.clone(),
                pci_vendor_info: vendor_info.clone(),
                physical_network: physnet.clone(),
            }),
            _ => PortRole::Bound,
        }
    }

    fn device_claim_prefix(&self) -> Option<&'static str> {
        Some(VF_CLAIM_PREFIX)
    }

    async fn pick_device(
        &self,
        att: &mut Attachment,
        network: &Network,
        held: &BTreeSet<String>,
    ) -> Result<Option<String>> {
        let want = match &att.edge {
            EdgeState::Sriov {
                pci,
                requested: true,
                ..
            } => Some(pci.clone()),
            _ => None,
        };
        let Vf {
            physnet,
            pf,
            index,
            pci,
            vendor_info,
            netdev,
        } = self.pool.pick(network, held, want.as_deref()).await?;
        let claim = crate::model::vf_claim(&pci);
        att.edge = EdgeState::Sriov {
            physnet,
            pf,
            vf: index,
            pci,
            vendor_info,
            host_ifname: netdev.unwrap_or_default(),
            vlan: network.physical.as_ref().and_then(|p| p.vlan),
            requested: want.is_some(),
        };
        Ok(Some(claim))
    }

    async fn devices(&self, held: &BTreeSet<String>) -> Option<super::DevicePool> {
        let (groups, vanished) = self.pool.status(held).await;
        for pci in &vanished {
            tracing::warn!(vf = %pci, "a VF a container of this host holds is on no mapped PF now (sriov_numvfs lowered? driver unbound?)");
        }
        Some(super::DevicePool { groups, vanished })
    }

    async fn validate(&self, att: &Attachment) -> Result<()> {
        if !att.security_groups.is_empty() {
            return Err(Error::InvalidInput(format!(
                "security groups ({}) do not apply to an SR-IOV VF: its frames go from the NIC to the wire, past the virtual switch that enforces them; drop them",
                att.security_groups.join(", ")
            )));
        }
        super::vm_port::refuse_taken_ifname(att).await
    }

    fn handoff_ifname(&self, att: &Attachment) -> String {
        match &att.edge {
            EdgeState::Sriov { host_ifname, .. } => host_ifname.clone(),
            _ => String::new(),
        }
    }

    async fn plug(&self, att: &Attachment, port: &LogicalPort) -> Result<()> {
        let v = vf_of(att)?
            .ok_or_else(|| Error::Internal(format!("attachment {} has no VF picked", att.id)))?;
        let mac = parse_mac(&port.mac).map_err(Error::Internal)?;
        let _pf = self.pool.lock_pf(v.pf).await;
        let netdev = self.pool.netdev_of(v.pci).await.ok_or_else(|| {
            Error::Unavailable(format!(
                "VF {} (VF {} of {}) has no netdev in the host netns: another netns holds it, or its driver is gone",
                v.pci, v.vf, v.pf
            ))
        })?;
        // The netdev gets the port's MAC first, while the PF gives the VF none (a released VF
        // has no admin MAC): igb refuses a VF's own MAC change once the PF has set one
        // (EADDRNOTAVAIL), and its VF driver takes a new admin MAC only when reloaded. Then
        // the PF pins the same MAC (spoof check enforces it), with the VLAN.
        self.host
            .set_down(&netdev)
            .await
            .map_err(nl_err(format!("downing VF netdev {netdev}")))?;
        if let Err(e) = self.host.set_mac(&netdev, mac).await {
            tracing::debug!(vf = %v.pci, error = %e, "the VF refused its MAC from its own side; the PF's admin MAC decides");
        }
        // The VLAN the backend bound the port to (Neutron's vif_details), else the network's.
        let vlan = port.vlan.or(v.vlan);
        self.apply_vf(v.pf, &self.settings_for(v.vf, mac, vlan))
            .await?;
        self.host
            .set_alias(&netdev, &link_alias(&self.mark, &att.id))
            .await
            .map_err(nl_err(format!("marking VF netdev {netdev}")))?;
        let mtu = port.mtu.or(self.policy.mtu);
        if att.hands_off() {
            // Docker moves it (Join's SrcName), names it and brings it up; it has its MAC.
            let mut cfg = super::port_iface_config(&netdev, v.host_ifname, port);
            cfg.mtu = mtu;
            cfg.addresses.clear();
            cfg.gateways.clear();
            cfg.routes.clear();
            return self
                .host
                .configure(&cfg)
                .await
                .map_err(nl_err(format!("setting the MTU of VF netdev {netdev}")));
        }
        // Still down (from above): a link moves and is renamed only when down.
        self.host
            .move_to_netns(&netdev, Path::new(&att.netns))
            .await
            .map_err(nl_err(format!(
                "moving VF netdev {netdev} into {}",
                att.netns
            )))?;
        let ns = Netlink::in_netns(Path::new(&att.netns))
            .await
            .map_err(nl_err(format!("opening netns {}", att.netns)))?;
        let mut cfg = super::port_iface_config(&netdev, &att.ifname, port);
        cfg.mtu = mtu;
        ns.configure(&cfg).await.map_err(nl_err(format!(
            "configuring VF {} as {} in {}",
            v.pci, att.ifname, att.netns
        )))?;
        if !wait_mac(&ns, &att.ifname, mac).await {
            return Err(Error::Unavailable(format!(
                "the VF {} ({} in {}) did not take the MAC {} of its port (its driver refused it, and did not take it from the PF either)",
                v.pci, att.ifname, att.netns, port.mac
            )));
        }
        Ok(())
    }

    async fn wait_ready(&self, _att: &Attachment, _timeout: std::time::Duration) -> Result<()> {
        // The VF's frames go to the wire; nothing on this host installs flows for it.
        Ok(())
    }

    async fn unplug(&self, att: &Attachment) -> Vec<Error> {
        let v = match vf_of(att) {
            Ok(Some(v)) => v,
            // No VF picked (refused before the intent): nothing was touched.
            Ok(None) => return vec![],
            Err(e) => return vec![e],
        };
        let _pf = self.pool.lock_pf(v.pf).await;
        self.release_vf(att, &v).await
    }

    async fn check(&self, att: &Attachment, port: &LogicalPort) -> Result<()> {
        let alias = link_alias(&self.mark, &att.id);
        super::vm_port::check_container_iface(att, port, &port.mac, Some(&alias)).await
    }

    async fn owned(&self) -> Result<Vec<EdgeOrphan>> {
        // VFs in the host netns that still carry this host's mark: a release that did not
        // finish, whose record is gone. In a container netns a VF goes with its record.
        let prefix = self.alias_prefix();
        let (vfs, _) = self.pool.scan().await;
        let mut out = Vec::new();
        for vf in vfs {
            let Some(netdev) = vf.netdev else { continue };
            if let Ok(Some(l)) = self.host.link(&netdev).await {
                if let Some(id) = l.alias.as_deref().and_then(|a| a.strip_prefix(&prefix)) {
                    out.push(EdgeOrphan {
                        attachment: id.to_string(),
                        resource: EdgeResource::Link,
                        name: format!("{}/{}/{}", vf.pf, vf.index, netdev),
                    });
                }
            }
        }
        Ok(out)
    }

    async fn remove(&self, orphan: &EdgeOrphan) -> Result<bool> {
        let mut parts = orphan.name.splitn(3, '/');
        let (Some(pf), Some(index), Some(netdev)) = (parts.next(), parts.next(), parts.next())
        else {
            return Ok(false);
        };
        let index: u32 = index
            .parse()
            .map_err(|_| Error::Internal(format!("orphan VF {}", orphan.name)))?;
        let _pf = self.pool.lock_pf(pf).await;
        self.host
            .set_alias(netdev, "")
            .await
            .map_err(nl_err(format!("clearing the mark of VF netdev {netdev}")))?;
        self.apply_vf(pf, &Self::reset_settings(index)).await?;
        Ok(true)
    }
}
