//! Nested macvlan and ipvlan: for containers inside the VM Courier runs in. (ipvlan is the same
//! but for the MAC: the container shares the VM's, so its pair on the VM's port is IP-only in
//! effect — the VM's own MAC with the container's IP.)
//! macvlan: The container's interface is a
//! macvlan (bridge mode) of the VM's NIC `master`, born in the container netns with its own MAC
//! (derived from the attachment id). No port per container is bound: the attach flow creates a
//! port nobody binds (the backend's IPAM reserves the address on the switch) and, through
//! `pair_plan`, adds "MAC IP" to the VM's port's allowed addresses. The VM needs no OVS.

use std::sync::Arc;

use async_trait::async_trait;
use courier_netlink::{Netlink, SubKind};

use super::vm_port::VmPort;
use super::{EdgeBinding, EdgeOrphan, PairPlan};
use crate::backend::{Backend, PortRole};
use crate::error::{Error, Result};
use crate::model::{
    derived_mac, parse_mac, peer_ifname, AttachRequest, Attachment, EdgeState, LogicalPort,
};

pub struct MacVlan {
    /// false: macvlan (own MAC); true: ipvlan L2 (the master's MAC).
    ipvlan: bool,
    vm: VmPort,
    mtu: Option<u32>,
}

impl MacVlan {
    pub fn new(host: Arc<Netlink>, master: &str, parent: Option<String>, mtu: Option<u32>) -> Self {
        MacVlan {
            ipvlan: false,
            vm: VmPort::new(host, master, parent),
            mtu,
        }
    }

    /// The ipvlan (L2) binding: like macvlan, with the master's MAC.
    pub fn ipvlan(
        host: Arc<Netlink>,
        master: &str,
        parent: Option<String>,
        mtu: Option<u32>,
    ) -> Self {
        MacVlan {
            ipvlan: true,
            ..Self::new(host, master, parent, mtu)
        }
    }

    fn mac_of(att: &Attachment) -> Result<String> {
        match &att.edge {
            EdgeState::MacVlan { mac, .. } => Ok(mac.clone()),
            other => Err(Error::Internal(format!(
                "attachment {} has a {} edge, not macvlan",
                att.id,
                other.kind()
            ))),
        }
    }

    /// The MAC the container's interface has: its own (macvlan) or the master's (ipvlan).
    async fn mac_for(&self, att: &Attachment) -> Result<String> {
        if self.ipvlan {
            self.vm.mac().await
        } else {
            Self::mac_of(att)
        }
    }
}

#[async_trait]
impl EdgeBinding for MacVlan {
    fn kind(&self) -> &'static str {
        if self.ipvlan {
            "ipvlan"
        } else {
            "macvlan"
        }
    }

    fn edge_for(&self, id: &str, req: &AttachRequest) -> EdgeState {
        if self.ipvlan {
            EdgeState::IpVlan {
                master: self.vm.master.clone(),
            }
        } else {
            // The MAC asked for (Docker always gives one, and sets it on the interface it
            // moves), else one derived from the id: the container's MAC, its pair's and its
            // reservation's.
            EdgeState::MacVlan {
                master: self.vm.master.clone(),
                mac: req
                    .mac
                    .clone()
                    .map(|m| m.to_ascii_lowercase())
                    .unwrap_or_else(|| derived_mac(id)),
            }
        }
    }

    async fn health(&self) -> Result<()> {
        self.vm.link().await.map(|_| ())
    }

    fn port_role(&self, _att: &Attachment) -> PortRole {
        // Nobody binds the container's port: it only holds the address on the switch.
        PortRole::Reservation
    }

    async fn pair_plan(&self, att: &Attachment, backend: &dyn Backend) -> Result<Option<PairPlan>> {
        Ok(Some(PairPlan {
            parent: self.vm.id(backend.require_address_pairs()?).await?,
            mac: self.mac_for(att).await?,
        }))
    }

    async fn validate(&self, att: &Attachment) -> Result<()> {
        if let (true, Some(want)) = (self.ipvlan, &att.requested_mac) {
            let vm = self.vm.mac().await?;
            if !want.eq_ignore_ascii_case(&vm) {
                return Err(Error::InvalidInput(format!(
                    "an ipvlan container shares the VM's MAC {vm}: drop the MAC {want} (or give {vm})"
                )));
            }
        }
        self.vm.validate(att).await
    }

    fn handoff_ifname(&self, att: &Attachment) -> String {
        peer_ifname(&att.id)
    }

    async fn plug(&self, att: &Attachment, port: &LogicalPort) -> Result<()> {
        let (kind, mac) = if self.ipvlan {
            (SubKind::IpVlan, None)
        } else {
            let mac = parse_mac(&Self::mac_of(att)?).map_err(Error::Internal)?;
            (SubKind::MacVlan, Some(mac))
        };
        self.vm
            .plug(att, port, kind, mac, port.mtu.or(self.mtu))
            .await
    }

    fn ready_by_backend(&self) -> bool {
        true
    }

    async fn wait_ready(&self, _att: &Attachment, _timeout: std::time::Duration) -> Result<()> {
        // Nothing local to wait for: the VM's port is bound already; the pair is in the NB.
        Ok(())
    }

    async fn unplug(&self, att: &Attachment) -> Vec<Error> {
        self.vm.unplug(att, self.mac_for(att).await.ok()).await
    }

    async fn check(&self, att: &Attachment, port: &LogicalPort) -> Result<()> {
        self.vm.check(att, port, &self.mac_for(att).await?).await
    }

    async fn owned(&self) -> Result<Vec<EdgeOrphan>> {
        // Its links live in container netns (gone with them) or, before a runtime moves them,
        // under derived names that rollback removes: nothing to sweep on this host.
        Ok(vec![])
    }

    async fn remove(&self, _orphan: &EdgeOrphan) -> Result<bool> {
        Ok(false)
    }
}
