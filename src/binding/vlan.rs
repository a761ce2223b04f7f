//! Nested VLAN: for containers inside the VM Courier runs in, each on a logical port of its
//! own — a *child* of the VM's port, told apart from the VM's own traffic and from its siblings
//! by a VLAN tag unique under that VM port (OVN `parent_name` + `tag`; Neutron a trunk
//! subport). The container's interface is an 802.1Q sub-interface (that tag) of the VM's trunk
//! interface `master`, with the child port's MAC, born in the container netns. The attach flow
//! chooses the tag before the intent and claims it with it (`Attacher::create_intent`); the
//! switch strips the tag at the VM's port. The VM needs no OVS.
//!
//! While an 802.1Q link with a tag exists on the master — in whichever netns — the kernel
//! refuses another one with that tag there (EEXIST). So the link is marked at creation (alias
//! `courier:<host>:<attachment>`), release finds it by what holds the tag (a VLAN link on the
//! master with the recorded tag, in the recorded netns and in the VM's own), not by a name or
//! MAC the container may have changed, and the leak sweep looks in every netns this host can
//! see for marked links no record knows. Tags held by links Courier did not make (seen by the
//! sweep, or by a plug the kernel refused) are skipped by the allocator.

use std::collections::{BTreeMap, BTreeSet};
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use courier_netlink::{self as nl, LinkInfoView, Netlink, SubKind};

use super::vm_port::{nl_err, VmPort};
use super::{EdgeBinding, EdgeOrphan, EdgeResource};
use crate::backend::{Backend, PortRole};
use crate::error::{Error, Result};
use crate::model::{
    link_alias, parse_mac, peer_ifname, AttachRequest, Attachment, EdgeState, LogicalPort,
};

pub struct Vlan {
    vm: VmPort,
    mtu: Option<u32>,
    /// This host's ownership mark (config `host`), in the links' alias.
    host_mark: String,
    /// Tags that links Courier did not make hold on the master (tag → which link): refreshed
    /// by each sweep, added to by a plug the kernel refused; the allocator skips them.
    foreign: Mutex<BTreeMap<u16, String>>,
}

/// An 802.1Q link on the master, and the netns it is in (None: the VM's own).
struct OnMaster {
    netns: Option<String>,
    link: LinkInfoView,
}

impl OnMaster {
    fn describe(&self) -> String {
        match &self.netns {
            Some(p) => format!("{} in netns {p}", self.link.name),
            None => format!("{} in the VM's own netns", self.link.name),
        }
    }

    /// The orphan's name: the link's, and where it is (" in PATH"; an interface name has no
    /// space).
    fn orphan_name(&self) -> String {
        match &self.netns {
            Some(p) => format!("{} in {p}", self.link.name),
            None => self.link.name.clone(),
        }
    }
}

/// The netns this process (the VM's own) is in, open, and its identity.
fn own_netns() -> Result<(std::fs::File, u64)> {
    let f = std::fs::File::open("/proc/self/ns/net")
        .map_err(|e| Error::InvalidEnv(format!("opening /proc/self/ns/net: {e}")))?;
    let ino = f
        .metadata()
        .map_err(|e| Error::InvalidEnv(format!("reading /proc/self/ns/net: {e}")))?
        .ino();
    Ok((f, ino))
}

impl Vlan {
    pub fn new(
        host: Arc<Netlink>,
        master: &str,
        parent: Option<String>,
        mtu: Option<u32>,
        host_mark: &str,
    ) -> Self {
        Vlan {
            vm: VmPort::new(host, master, parent),
            mtu,
            host_mark: host_mark.to_string(),
            foreign: Mutex::new(BTreeMap::new()),
        }
    }

    /// The attachment a link says it is for, if this host's Courier marked it.
    fn marked_for(&self, link: &LinkInfoView) -> Option<String> {
        let prefix = link_alias(&self.host_mark, "");
        link.alias
            .as_deref()?
            .strip_prefix(&prefix)
            .filter(|id| !id.is_empty())
            .map(str::to_string)
    }

    /// The master's ifindex; None when it is gone (its VLAN links went with it).
    async fn master_index(&self) -> Result<Option<u32>> {
        Ok(self
            .vm
            .host
            .link(&self.vm.master)
            .await
            .map_err(nl_err(format!("looking up {}", self.vm.master)))?
            .map(|l| l.index))
    }

    /// The 802.1Q links in `ns` on the master (`master` in the VM's netns, open as
    /// `own`: None when `ns` is that netns).
    async fn vlans_in(
        &self,
        ns: &Netlink,
        master: u32,
        own: Option<&std::fs::File>,
    ) -> Result<Vec<LinkInfoView>> {
        Ok(ns
            .links_on(master, own)
            .await
            .map_err(nl_err(format!("listing the links on {}", self.vm.master)))?
            .into_iter()
            .filter(|l| l.vlan_id.is_some())
            .collect())
    }

    /// Every 802.1Q link on the master in every netns this host can see (the VM's own, those
    /// mounted anywhere, those of live processes). A netns that cannot be read is logged and
    /// skipped: one container never stops the sweep.
    async fn vlans_everywhere(&self) -> Result<Vec<OnMaster>> {
        let Some(master) = self.master_index().await? else {
            return Ok(vec![]);
        };
        let mut out: Vec<OnMaster> = self
            .vlans_in(&self.vm.host, master, None)
            .await?
            .into_iter()
            .map(|link| OnMaster { netns: None, link })
            .collect();
        let (own, own_ino) = own_netns()?;
        let all = tokio::task::spawn_blocking(crate::netns::every)
            .await
            .map_err(|e| Error::Internal(format!("listing network namespaces: {e}")))?;
        for (path, ino) in all {
            if ino == own_ino {
                continue;
            }
            let found = match Netlink::in_netns(Path::new(&path)).await {
                Ok(ns) => self.vlans_in(&ns, master, Some(&own)).await,
                // Its process exited meanwhile.
                Err(nl::Error::NotFound { .. }) => continue,
                Err(e) => Err(nl_err(format!("opening netns {path}"))(e)),
            };
            match found {
                Ok(links) => out.extend(links.into_iter().map(|link| OnMaster {
                    netns: Some(path.clone()),
                    link,
                })),
                Err(e) => {
                    tracing::warn!(netns = %path, error = %e, "cannot list the VLAN links there")
                }
            }
        }
        Ok(out)
    }

    /// The plug's error when the kernel refused the link because a VLAN link with `tag`
    /// exists on the master already (EEXIST): which link, where, and what to do. The tag is
    /// remembered so that the next attach skips it.
    async fn tag_taken(&self, tag: u16, err: Error) -> Error {
        let Error::Netlink { source, context } = err else {
            return err;
        };
        let eexist = matches!(&*source, nl::Error::Kernel { source, .. }
            if source.raw_os_error() == Some(libc::EEXIST));
        if !eexist {
            return Error::Netlink { context, source };
        }
        let holder = match self.vlans_everywhere().await {
            Ok(found) => found.into_iter().find(|f| f.link.vlan_id == Some(tag)),
            Err(e) => {
                tracing::warn!(error = %e, "cannot look for the holder of VLAN {tag}");
                None
            }
        };
        let Some(holder) = holder else {
            return Error::Netlink { context, source };
        };
        let what = holder.describe();
        let whose = match (self.marked_for(&holder.link), &holder.link.alias) {
            (Some(id), _) => format!(
                " (Courier's, for attachment {id}: reconcile removes it once no record holds it)"
            ),
            (None, Some(a)) => format!(" (alias {a:?})"),
            (None, None) => String::new(),
        };
        if self.marked_for(&holder.link).is_none() {
            self.foreign
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(tag, what.clone());
        }
        Error::netlink(
            format!(
                "VLAN {tag} on {} is taken by {what}{whose}: delete that link or detach its container; the next attach skips this tag ({context})",
                self.vm.master
            ),
            *source,
        )
    }

    /// The recorded tag: chosen and claimed with the intent, so never 0 once plugged.
    fn tag_of(att: &Attachment) -> Result<u16> {
        match &att.edge {
            EdgeState::Vlan { tag, .. } if (1..=4094).contains(tag) => Ok(*tag),
            other => Err(Error::Internal(format!(
                "attachment {} has no VLAN tag on its {} edge",
                att.id,
                other.kind()
            ))),
        }
    }

    /// The child port's MAC (the container's interface has it).
    fn mac_of(att: &Attachment) -> Option<String> {
        att.port.as_ref().map(|p| p.mac.clone())
    }
}

#[async_trait]
impl EdgeBinding for Vlan {
    fn kind(&self) -> &'static str {
        "vlan"
    }

    fn edge_for(&self, _id: &str, _req: &AttachRequest) -> EdgeState {
        // Parent and tag are chosen by the attach flow before the intent is written.
        EdgeState::Vlan {
            master: self.vm.master.clone(),
            parent: String::new(),
            tag: 0,
        }
    }

    async fn health(&self) -> Result<()> {
        self.vm.link().await.map(|_| ())
    }

    async fn vlan_parent(&self, backend: &dyn Backend) -> Result<Option<String>> {
        self.vm
            .id(backend.require_vlan_child_ports()?)
            .await
            .map(Some)
    }

    fn port_role(&self, att: &Attachment) -> PortRole {
        match &att.edge {
            EdgeState::Vlan { parent, tag, .. } => PortRole::Child {
                parent: parent.clone(),
                tag: *tag,
            },
            _ => PortRole::Bound,
        }
    }

    async fn validate(&self, att: &Attachment) -> Result<()> {
        self.vm.validate(att).await
    }

    fn handoff_ifname(&self, att: &Attachment) -> String {
        peer_ifname(&att.id)
    }

    fn held_tags(&self) -> BTreeSet<u16> {
        self.foreign
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .keys()
            .copied()
            .collect()
    }

    async fn plug(&self, att: &Attachment, port: &LogicalPort) -> Result<()> {
        let tag = Self::tag_of(att)?;
        let mac = parse_mac(&port.mac).map_err(|e| {
            Error::BackendState(format!(
                "child port {} has MAC {:?}: {e}",
                port.name, port.mac
            ))
        })?;
        let alias = link_alias(&self.host_mark, &att.id);
        match self
            .vm
            .plug_marked(
                att,
                port,
                SubKind::Vlan(tag),
                Some(mac),
                port.mtu.or(self.mtu),
                Some(&alias),
            )
            .await
        {
            Err(e) => Err(self.tag_taken(tag, e).await),
            ok => ok,
        }
    }

    fn ready_by_backend(&self) -> bool {
        true
    }

    async fn wait_ready(&self, _att: &Attachment, _timeout: std::time::Duration) -> Result<()> {
        // Nothing local to wait for: the VM's port is bound already, and the child port rides
        // on its binding (no OVS in the VM to ask).
        Ok(())
    }

    /// The link that holds the recorded tag on the master, in the recorded netns (unless it
    /// is certainly gone) and in the VM's own (handed off): ours when it has our mark, its
    /// birth name or the child port's MAC — whatever the container renamed — never a link
    /// someone else made with that tag (the plug that met one failed: nothing of ours).
    async fn unplug(&self, att: &Attachment) -> Vec<Error> {
        let mut errors = Vec::new();
        let born = peer_ifname(&att.id);
        if let Err(e) = self.vm.host.delete_link(&born).await {
            errors.push(nl_err(format!("deleting {born}"))(e));
        }
        // Tag 0: chosen never, so never plugged.
        let Ok(tag) = Self::tag_of(att) else {
            return errors;
        };
        let master = match self.master_index().await {
            Ok(Some(m)) => m,
            Ok(None) => return errors,
            Err(e) => {
                errors.push(e);
                return errors;
            }
        };
        let alias = link_alias(&self.host_mark, &att.id);
        let mac = Self::mac_of(att).and_then(|m| parse_mac(&m).ok());
        let ours = |l: &LinkInfoView| {
            l.vlan_id == Some(tag)
                && (l.alias.as_deref() == Some(alias.as_str())
                    || l.name == born
                    || (mac.is_some() && l.mac == mac))
        };
        async fn delete_ours(
            ns: &Netlink,
            links: Vec<LinkInfoView>,
            ours: &impl Fn(&LinkInfoView) -> bool,
            where_: &str,
            errors: &mut Vec<Error>,
        ) {
            for l in links.into_iter().filter(|l| ours(l)) {
                if let Err(e) = ns.delete_link_index(l.index, &l.name).await {
                    errors.push(nl_err(format!("deleting {} in {where_}", l.name))(e));
                }
            }
        }
        match self.vlans_in(&self.vm.host, master, None).await {
            Ok(links) => {
                delete_ours(&self.vm.host, links, &ours, "the VM's netns", &mut errors).await
            }
            Err(e) => errors.push(e),
        }
        if att.netns.is_empty() || crate::netns::probe(&att.netns).certainly_gone(att.netns_inode) {
            return errors;
        }
        let own = match own_netns() {
            Ok((f, _)) => f,
            Err(e) => {
                errors.push(e);
                return errors;
            }
        };
        match Netlink::in_netns(Path::new(&att.netns)).await {
            Ok(ns) => match self.vlans_in(&ns, master, Some(&own)).await {
                Ok(links) => delete_ours(&ns, links, &ours, &att.netns, &mut errors).await,
                Err(e) => errors.push(e),
            },
            Err(nl::Error::NotFound { .. }) => {}
            Err(e) => errors.push(nl_err(format!("opening netns {}", att.netns))(e)),
        }
        errors
    }

    async fn check(&self, att: &Attachment, port: &LogicalPort) -> Result<()> {
        self.vm.check(att, port, &port.mac).await
    }

    /// The 802.1Q links on the master that this host's Courier marked, in every netns this
    /// host can see; those of others (no mark, or another host's) are remembered as held.
    async fn owned(&self) -> Result<Vec<EdgeOrphan>> {
        let mut out = Vec::new();
        let mut foreign = BTreeMap::new();
        for f in self.vlans_everywhere().await? {
            match self.marked_for(&f.link) {
                Some(attachment) => out.push(EdgeOrphan {
                    attachment,
                    resource: EdgeResource::Link,
                    name: f.orphan_name(),
                }),
                None => {
                    if let Some(tag) = f.link.vlan_id {
                        foreign.insert(tag, f.describe());
                    }
                }
            }
        }
        *self.foreign.lock().unwrap_or_else(|p| p.into_inner()) = foreign;
        Ok(out)
    }

    /// Removes the orphan found by `owned` if it is still there: a VLAN link on the master,
    /// under that name, in that netns, with the orphan's mark.
    async fn remove(&self, o: &EdgeOrphan) -> Result<bool> {
        let (name, netns) = match o.name.split_once(" in ") {
            Some((n, p)) => (n, Some(p)),
            None => (o.name.as_str(), None),
        };
        let Some(master) = self.master_index().await? else {
            return Ok(false);
        };
        let inside;
        let (ns, own) = match netns {
            None => (&*self.vm.host, None),
            Some(p) => {
                inside = match Netlink::in_netns(Path::new(p)).await {
                    Ok(ns) => ns,
                    Err(nl::Error::NotFound { .. }) => return Ok(false),
                    Err(e) => return Err(nl_err(format!("opening netns {p}"))(e)),
                };
                (&inside, Some(own_netns()?.0))
            }
        };
        let mark = link_alias(&self.host_mark, &o.attachment);
        let Some(link) = self
            .vlans_in(ns, master, own.as_ref())
            .await?
            .into_iter()
            .find(|l| l.name == name && l.alias.as_deref() == Some(mark.as_str()))
        else {
            return Ok(false);
        };
        ns.delete_link_index(link.index, &link.name)
            .await
            .map_err(nl_err(format!("deleting {}", o.name)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn link(name: &str, alias: Option<&str>) -> LinkInfoView {
        LinkInfoView {
            index: 5,
            name: name.into(),
            mac: None,
            mtu: None,
            up: true,
            kind: Some("vlan".into()),
            alias: alias.map(str::to_string),
            link: Some(3),
            link_netnsid: Some(0),
            vlan_id: Some(7),
        }
    }

    #[tokio::test]
    async fn only_this_hosts_mark_makes_a_link_ours() {
        let Ok(nl) = Netlink::host() else {
            return; // no rtnetlink socket here: nothing below needs one to be used
        };
        let v = Vlan::new(Arc::new(nl), "eth1", None, None, "vm");
        assert_eq!(
            v.marked_for(&link("eth0", Some("courier:vm:0123456789ab"))),
            Some("0123456789ab".into())
        );
        for other in [
            None,
            Some("courier:vm2:0123"),
            Some("courier:vm:"),
            Some("mine"),
        ] {
            assert_eq!(v.marked_for(&link("eth0", other)), None, "{other:?}");
        }
        let f = OnMaster {
            netns: Some("/run/netns/c 1".into()),
            link: link("renamed0", None),
        };
        assert_eq!(f.orphan_name(), "renamed0 in /run/netns/c 1");
        assert_eq!(
            f.orphan_name().split_once(" in "),
            Some(("renamed0", "/run/netns/c 1"))
        );
        let host = OnMaster {
            netns: None,
            link: link("cp0123456789ab", None),
        };
        assert_eq!(host.orphan_name(), "cp0123456789ab");
        assert_eq!(host.describe(), "cp0123456789ab in the VM's own netns");
    }
}
