//! The VM Courier runs in, as the nested bindings see it: its interface `master` (on the VM's
//! logical port) and that port in the backend — by `[nested] parent_port`, else found by the
//! master's IPs, then its MAC (looked up once).

//!
//! It also makes, checks and removes their interfaces: a sub-interface of `master` (macvlan,
//! ipvlan, 802.1Q) born in the container netns and configured there.

use std::os::fd::AsRawFd;
use std::path::Path;
use std::sync::Arc;

use courier_netlink::{self as nl, Netlink, SubKind, SubLinkSpec};
use tokio::sync::OnceCell;

use crate::backend::{NestedParents, ParentQuery};
use crate::error::{Error, Result};
use crate::model::{parse_mac, peer_ifname, Attachment, LogicalPort};

pub struct VmPort {
    pub host: Arc<Netlink>,
    /// The VM's interface on its logical port (`[nested] master`).
    pub master: String,
    /// `[nested] parent_port`: the VM's port by its backend id.
    parent_cfg: Option<String>,
    parent: OnceCell<String>,
}

pub(crate) fn nl_err(context: impl Into<String>) -> impl FnOnce(nl::Error) -> Error {
    let context = context.into();
    move |source| Error::netlink(context, source)
}

impl VmPort {
    pub fn new(host: Arc<Netlink>, master: &str, parent: Option<String>) -> Self {
        VmPort {
            host,
            master: master.to_string(),
            parent_cfg: parent.filter(|p| !p.is_empty()),
            parent: OnceCell::new(),
        }
    }

    /// The master's link; an error that says what to set when it does not exist.
    pub async fn link(&self) -> Result<nl::LinkInfoView> {
        self.host
            .link(&self.master)
            .await
            .map_err(nl_err(format!("looking up {}", self.master)))?
            .ok_or_else(|| self.no_master())
    }

    /// The master's MAC (ipvlan's, and its pairs').
    pub async fn mac(&self) -> Result<String> {
        self.link()
            .await?
            .mac
            .map(nl::mac_to_string)
            .ok_or_else(|| self.no_master())
    }

    /// The VM's port in `backend` (its id), looked up once.
    pub async fn id<P: NestedParents + ?Sized>(&self, backend: &P) -> Result<String> {
        self.parent
            .get_or_try_init(|| async {
                let mut q = ParentQuery {
                    id: self.parent_cfg.clone(),
                    ..Default::default()
                };
                if q.id.is_none() {
                    let link = self.link().await?;
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

    pub fn no_master(&self) -> Error {
        Error::InvalidEnv(format!(
            "the VM's interface {:?} ([nested] master) does not exist on this host",
            self.master
        ))
    }
}

/// The container interfaces of the nested bindings: sub-interfaces of the master.
impl VmPort {
    /// The master exists and, unless the runtime moves the interface itself, the container
    /// netns exists and has no interface named `att.ifname`.
    pub async fn validate(&self, att: &Attachment) -> Result<()> {
        self.link().await?;
        refuse_taken_ifname(att).await
    }

    /// Creates the `kind` sub-interface of the master for `att` with `mac` (None: the kernel's
    /// choice, ipvlan: the master's) in the container netns, named `att.ifname` there, with
    /// the port's addresses and routes. Handed off (Docker): left in this netns as
    /// `peer_ifname(id)`, unaddressed, for the runtime to move.
    pub async fn plug(
        &self,
        att: &Attachment,
        port: &LogicalPort,
        kind: SubKind,
        mac: Option<[u8; 6]>,
        mtu: Option<u32>,
    ) -> Result<()> {
        self.plug_marked(att, port, kind, mac, mtu, None).await
    }

    /// [`VmPort::plug`], and the interface gets `alias` (IFLA_IFALIAS: the kernel takes it
    /// only after the link exists, so it is set before the rename: under any other name than
    /// its birth name the link carries it).
    pub async fn plug_marked(
        &self,
        att: &Attachment,
        port: &LogicalPort,
        kind: SubKind,
        mac: Option<[u8; 6]>,
        mtu: Option<u32>,
        alias: Option<&str>,
    ) -> Result<()> {
        // Born under a name of its own (some kernels check the name in the creating netns,
        // where the container's ifname may well exist), renamed in the container's netns.
        let born = peer_ifname(&att.id);
        let spec = |netns_fd| SubLinkSpec {
            name: born.clone(),
            master: 0,
            kind,
            mac,
            mtu,
            netns_fd,
        };
        if att.hands_off() {
            self.host
                .create_sub_link(&self.master, &spec(None))
                .await
                .map_err(nl_err(format!("creating {born} on {}", self.master)))?;
            if let Some(alias) = alias {
                self.host
                    .set_alias(&born, alias)
                    .await
                    .map_err(nl_err(format!("marking {born}")))?;
            }
            return Ok(());
        }
        let netns_file = std::fs::File::open(&att.netns)
            .map_err(|e| Error::InvalidEnv(format!("network namespace {}: {e}", att.netns)))?;
        self.host
            .create_sub_link(&self.master, &spec(Some(netns_file.as_raw_fd())))
            .await
            .map_err(nl_err(format!(
                "creating {} on {} in {}",
                att.ifname, self.master, att.netns
            )))?;
        let ns = Netlink::in_netns(Path::new(&att.netns))
            .await
            .map_err(nl_err(format!("opening netns {}", att.netns)))?;
        if let Some(alias) = alias {
            ns.set_alias(&born, alias)
                .await
                .map_err(nl_err(format!("marking {born} in {}", att.netns)))?;
        }
        ns.configure(&super::port_iface_config(&born, &att.ifname, port))
            .await
            .map_err(nl_err(format!(
                "configuring {} in {}",
                att.ifname, att.netns
            )))
    }

    /// Removes what [`VmPort::plug`] made: the handed-off interface in this netns, and the
    /// container's `att.ifname` if it has `mac` (ours; a netns that is gone took it along).
    pub async fn unplug(&self, att: &Attachment, mac: Option<String>) -> Vec<Error> {
        let mut errors = Vec::new();
        if let Err(e) = self.host.delete_link(&peer_ifname(&att.id)).await {
            errors.push(nl_err(format!("deleting {}", peer_ifname(&att.id)))(e));
        }
        if att.netns.is_empty() || crate::netns::probe(&att.netns).certainly_gone(att.netns_inode) {
            return errors;
        }
        match Netlink::in_netns(Path::new(&att.netns)).await {
            Ok(ns) => {
                if let Ok(Some(link)) = ns.link(&att.ifname).await {
                    let ours = mac
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

    /// The container's interface is there with `mac` and the port's addresses.
    pub async fn check(&self, att: &Attachment, port: &LogicalPort, mac: &str) -> Result<()> {
        check_container_iface(att, port, mac, None).await
    }
}

/// The container's interface `att.ifname` is there with `mac`, the port's addresses and, if
/// given, the `alias` Courier marked it with (an SR-IOV VF: the one Courier moved there).
pub(crate) async fn check_container_iface(
    att: &Attachment,
    port: &LogicalPort,
    mac: &str,
    alias: Option<&str>,
) -> Result<()> {
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
    if alias.is_some() && link.alias.as_deref() != alias {
        return Err(fail(format!(
            "{} is not the interface Courier gave it",
            att.ifname
        )));
    }
    let want = parse_mac(mac).map_err(Error::Internal)?;
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

/// Unless the runtime moves the interface itself (Docker), the container netns exists and has
/// no interface named `att.ifname` yet: refused before anything is made.
pub(crate) async fn refuse_taken_ifname(att: &Attachment) -> Result<()> {
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

fn is_link_local(a: &std::net::IpAddr) -> bool {
    match a {
        std::net::IpAddr::V4(v) => v.is_link_local(),
        std::net::IpAddr::V6(v) => (v.segments()[0] & 0xffc0) == 0xfe80,
    }
}
