//! Nested macvlan and ipvlan: for containers inside the VM Courier runs in. (ipvlan is the same
//! but for the MAC: the container shares the VM's, so its pair on the VM's port is IP-only in
//! effect — the VM's own MAC with the container's IP.)
//! macvlan: The container's interface is a
//! macvlan (bridge mode) of the VM's NIC `master`, born in the container netns with its own MAC
//! (derived from the attachment id). No port per container is bound: the attach flow creates a
//! port nobody binds (the backend's IPAM reserves the address on the switch) and, through
//! `pair_plan`, adds "MAC IP" to the VM's port's allowed addresses. The VM needs no OVS.

use std::os::fd::AsRawFd;
use std::path::Path;
use std::sync::Arc;

use async_trait::async_trait;
use courier_netlink::{self as nl, IfaceConfig, Netlink, SubKind, SubLinkSpec};
use tokio::sync::OnceCell;

use super::{EdgeBinding, EdgeOrphan, PairPlan};
use crate::backend::{Backend, ParentQuery, PortRole};
use crate::error::{Error, Result};
use crate::model::{derived_mac, parse_mac, peer_ifname, Attachment, EdgeState, LogicalPort};

pub struct MacVlan {
    /// false: macvlan (own MAC); true: ipvlan L2 (the master's MAC).
    ipvlan: bool,
    host: Arc<Netlink>,
    /// The VM's interface on its logical port.
    master: String,
    /// `[nested] parent_port`: the VM's port by id; else found by the master's IPs, then MAC.
    parent_cfg: Option<String>,
    parent: OnceCell<String>,
    mtu: Option<u32>,
}

fn nl_err(context: impl Into<String>) -> impl FnOnce(nl::Error) -> Error {
    let context = context.into();
    move |source| Error::netlink(context, source)
}

impl MacVlan {
    pub fn new(host: Arc<Netlink>, master: &str, parent: Option<String>, mtu: Option<u32>) -> Self {
        MacVlan {
            ipvlan: false,
            host,
            master: master.to_string(),
            parent_cfg: parent.filter(|p| !p.is_empty()),
            parent: OnceCell::new(),
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

    /// The master's MAC (ipvlan's, and the pair's).
    async fn master_mac(&self) -> Result<String> {
        self.host
            .link(&self.master)
            .await
            .map_err(nl_err(format!("looking up {}", self.master)))?
            .and_then(|l| l.mac)
            .map(nl::mac_to_string)
            .ok_or_else(|| self.no_master())
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

    /// The VM's port, looked up once (by config, else by the master's addresses).
    async fn parent(&self, backend: &dyn Backend) -> Result<String> {
        self.parent
            .get_or_try_init(|| async {
                let mut q = ParentQuery {
                    id: self.parent_cfg.clone(),
                    ..Default::default()
                };
                if q.id.is_none() {
                    let link = self
                        .host
                        .link(&self.master)
                        .await
                        .map_err(nl_err(format!("looking up {}", self.master)))?
                        .ok_or_else(|| self.no_master())?;
                    q.ips = self
                        .host
                        .addresses(&self.master)
                        .await
                        .map_err(nl_err(format!("reading addresses of {}", self.master)))?
                        .into_iter()
                        .map(|a| a.addr())
                        .filter(|a| !a.is_loopback() && !is_link_local(a))
                        .collect();
                    q.mac = link.mac.map(nl::mac_to_string);
                }
                backend.parent_port(&q).await
            })
            .await
            .cloned()
    }

    fn no_master(&self) -> Error {
        Error::InvalidEnv(format!(
            "the VM's interface {:?} ([nested] master) does not exist on this host",
            self.master
        ))
    }
}

fn is_link_local(a: &std::net::IpAddr) -> bool {
    match a {
        std::net::IpAddr::V4(v) => v.is_link_local(),
        std::net::IpAddr::V6(v) => (v.segments()[0] & 0xffc0) == 0xfe80,
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

    fn edge_for(&self, id: &str) -> EdgeState {
        if self.ipvlan {
            EdgeState::IpVlan {
                master: self.master.clone(),
            }
        } else {
            EdgeState::MacVlan {
                master: self.master.clone(),
                mac: derived_mac(id),
            }
        }
    }

    async fn health(&self) -> Result<()> {
        match self
            .host
            .link(&self.master)
            .await
            .map_err(nl_err(format!("looking up {}", self.master)))?
        {
            Some(_) => Ok(()),
            None => Err(self.no_master()),
        }
    }

    fn port_role(&self, _att: &Attachment) -> PortRole {
        // Nobody binds the container's port: it only holds the address on the switch.
        PortRole::Reservation
    }

    async fn pair_plan(&self, att: &Attachment, backend: &dyn Backend) -> Result<Option<PairPlan>> {
        let mac = if self.ipvlan {
            self.master_mac().await?
        } else {
            Self::mac_of(att)?
        };
        Ok(Some(PairPlan {
            parent: self.parent(backend).await?,
            mac,
        }))
    }

    async fn validate(&self, att: &Attachment) -> Result<()> {
        self.health().await?;
        if att.hands_off() {
            return Ok(());
        }
        crate::netns::identify(&att.netns)?;
        let ns = Netlink::in_netns(Path::new(&att.netns))
            .await
            .map_err(nl_err(format!("opening netns {}", att.netns)))?;
        if ns
            .link(&att.ifname)
            .await
            .map_err(nl_err(format!(
                "looking up {} in {}",
                att.ifname, att.netns
            )))?
            .is_some()
        {
            return Err(Error::InvalidInput(format!(
                "netns {} already has an interface named {}: pick another ifname",
                att.netns, att.ifname
            )));
        }
        Ok(())
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
        let mtu = port.mtu.or(self.mtu);
        if att.hands_off() {
            // Left in this netns for the runtime (Docker) to move and address.
            let name = peer_ifname(&att.id);
            return self
                .host
                .create_sub_link(
                    &self.master,
                    &SubLinkSpec {
                        name: name.clone(),
                        master: 0,
                        kind,
                        mac,
                        mtu,
                        netns_fd: None,
                    },
                )
                .await
                .map_err(nl_err(format!(
                    "creating macvlan {name} on {}",
                    self.master
                )));
        }
        let netns_file = std::fs::File::open(&att.netns)
            .map_err(|e| Error::InvalidEnv(format!("network namespace {}: {e}", att.netns)))?;
        // Born under a name of its own (some kernels check the name in this netns, where the
        // container's ifname may well exist), renamed to the ifname in the container's netns.
        let born = peer_ifname(&att.id);
        self.host
            .create_sub_link(
                &self.master,
                &SubLinkSpec {
                    name: born.clone(),
                    master: 0,
                    kind,
                    mac,
                    mtu,
                    netns_fd: Some(netns_file.as_raw_fd()),
                },
            )
            .await
            .map_err(nl_err(format!(
                "creating {} {} on {} in {}",
                self.kind(),
                att.ifname,
                self.master,
                att.netns
            )))?;
        let ns = Netlink::in_netns(Path::new(&att.netns))
            .await
            .map_err(nl_err(format!("opening netns {}", att.netns)))?;
        ns.configure(&IfaceConfig {
            current_name: born,
            new_name: att.ifname.clone(),
            mac: None,
            mtu: None,
            addresses: port.ips.clone(),
            gateways: port.gateways.clone(),
            routes: port.routes.iter().map(|r| (r.dst, r.gw)).collect(),
        })
        .await
        .map_err(nl_err(format!(
            "configuring {} in {}",
            att.ifname, att.netns
        )))
    }

    async fn wait_ready(&self, _att: &Attachment, _timeout: std::time::Duration) -> Result<()> {
        // Nothing local to wait for: the VM's port is bound already; the pair is in the NB.
        Ok(())
    }

    async fn unplug(&self, att: &Attachment) -> Vec<Error> {
        let mut errors = Vec::new();
        // Left for a runtime and never moved (Docker before Join), in this netns.
        if let Err(e) = self.host.delete_link(&peer_ifname(&att.id)).await {
            errors.push(nl_err(format!("deleting {}", peer_ifname(&att.id)))(e));
        }
        if att.netns.is_empty() {
            return errors;
        }
        // In the container netns; a netns that is gone took the link with it.
        if crate::netns::probe(&att.netns).certainly_gone(att.netns_inode) {
            return errors;
        }
        match Netlink::in_netns(Path::new(&att.netns)).await {
            Ok(ns) => {
                if let Ok(Some(link)) = ns.link(&att.ifname).await {
                    let want = if self.ipvlan {
                        self.master_mac().await.ok()
                    } else {
                        Self::mac_of(att).ok()
                    };
                    let ours = want
                        .and_then(|m| parse_mac(&m).ok())
                        .is_some_and(|m| link.mac == Some(m));
                    if ours {
                        if let Err(e) = ns.delete_link(&att.ifname).await {
                            errors
                                .push(nl_err(format!("deleting {} in {}", att.ifname, att.netns))(
                                    e,
                                ));
                        }
                    }
                }
            }
            Err(e) => errors.push(nl_err(format!("opening netns {}", att.netns))(e)),
        }
        errors
    }

    async fn check(&self, att: &Attachment, port: &LogicalPort) -> Result<()> {
        let fail = |what: String| Error::CheckFailed {
            id: att.id.clone(),
            what,
        };
        let ns = Netlink::in_netns(Path::new(&att.netns))
            .await
            .map_err(nl_err(format!("opening netns {}", att.netns)))?;
        let link = ns
            .link(&att.ifname)
            .await
            .map_err(nl_err(format!("looking up {}", att.ifname)))?
            .ok_or_else(|| fail(format!("{} is missing from {}", att.ifname, att.netns)))?;
        let want = if self.ipvlan {
            self.master_mac().await?
        } else {
            Self::mac_of(att)?
        };
        let want = parse_mac(&want).map_err(Error::Internal)?;
        if link.mac != Some(want) {
            return Err(fail(format!("{} has another MAC", att.ifname)));
        }
        let addrs = ns
            .addresses(&att.ifname)
            .await
            .map_err(nl_err(format!("reading addresses of {}", att.ifname)))?;
        for ip in &port.ips {
            if !addrs.contains(ip) {
                return Err(fail(format!("{} lacks address {ip}", att.ifname)));
            }
        }
        Ok(())
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
