//! Nested vlan children (`VlanChildPorts`): a trunk subport (`segmentation_type vlan`) of the
//! VM's port's trunk — made, and marked as Courier's, if it has none; deleted with its last
//! subport — or the `binding:profile {parent_name, tag}` form (`[neutron] vlan_children`).
//! Every change of a VM's trunk is made under that VM's lock (`NeutronBackend::trunk_locks`).

use async_trait::async_trait;
use courier_openstack::{self as os, PortCreate, Query};

use super::ports::port_create_error;
use super::{os_err, NeutronBackend, TAG_CREATED};
use crate::backend::{PortRequest, VlanChildPorts};
use crate::error::{Error, Result};

/// A trunk Courier made for a VM's vlan children (deleted with its last one): its tag, or its
/// description, which is in the trunk's POST and so there even if a crash came before the tag.
fn made_by_courier(trunk: &os::Trunk) -> bool {
    trunk.tags.iter().any(|t| t == TAG_CREATED) || trunk.description.as_deref() == Some(TAG_CREATED)
}

/// How a nested vlan child port is made in Neutron (`[neutron] vlan_children`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum VlanChildren {
    /// A trunk subport when Neutron has the `trunk` extension, else `binding:profile`.
    #[default]
    Auto,
    /// A trunk subport (`segmentation_type vlan`) on the VM port's trunk.
    Trunk,
    /// `binding:profile {parent_name, tag}` (ML2/OVN's container-in-VM form; admin only under
    /// Neutron's default policy).
    BindingProfile,
}

impl std::str::FromStr for VlanChildren {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "auto" => Ok(VlanChildren::Auto),
            "trunk" => Ok(VlanChildren::Trunk),
            "binding-profile" => Ok(VlanChildren::BindingProfile),
            other => Err(Error::InvalidInput(format!(
                "[neutron] vlan_children {other:?} (COURIER_NEUTRON_VLAN_CHILDREN) must be auto, trunk or binding-profile"
            ))),
        }
    }
}

impl NeutronBackend {
    /// A nested vlan child of the VM's port `parent`, told apart by `tag`: with the trunk
    /// extension a trunk subport (`segmentation_type vlan`) on the parent's trunk, which is
    /// created (tagged `courier:created`) if the parent has none; without it the
    /// `binding:profile {parent_name, tag}` form (ML2/OVN sets the LSP's parent_name and tag);
    /// `[neutron] vlan_children` can choose either.
    pub(super) async fn create_child(
        &self,
        r: &PortRequest,
        mut body: PortCreate,
        parent: &str,
        tag: u16,
    ) -> Result<os::Port> {
        let trunks = match self.vlan_children {
            VlanChildren::Trunk => true,
            VlanChildren::BindingProfile => false,
            VlanChildren::Auto => self
                .api
                .has_extension("trunk")
                .await
                .map_err(os_err("reading Neutron's extensions"))?,
        };
        // Neutron sets device_owner trunk:subport itself; a subport is bound with its parent.
        body.device_owner = None;
        body.device_id = None;
        body.binding_host_id = None;
        if !trunks {
            body.binding_profile = Some(serde_json::json!({"parent_name": parent, "tag": tag}));
            return self
                .api
                .create_port(&body)
                .await
                .map_err(|e| port_create_error(&r.network.name, e));
        }
        // The port first, outside the VM's lock (children of one VM are made side by side);
        // then, under it, the trunk found or made and joined.
        let port = self
            .api
            .create_port(&body)
            .await
            .map_err(|e| port_create_error(&r.network.name, e))?;
        let _vm = self.trunk_locks.lock(parent).await;
        let (mut trunk, mut made_trunk) = match self.trunk_for(parent).await {
            Ok(t) => t,
            Err(e) => {
                if let Err(de) = self.api.delete_port(&port.id).await {
                    tracing::error!(port = %port.id, error = %de, "removing a child port whose VM has no trunk failed");
                }
                return Err(e);
            }
        };
        let undo_trunk = |made: bool, id: String| async move {
            if made {
                if let Err(e) = self.api.delete_trunk(&id).await {
                    tracing::warn!(trunk = %id, error = %e, "removing the trunk made for a failed child port failed");
                }
            }
        };
        let mut again = 0;
        let joined = loop {
            let e = match self
                .api
                .add_subports(&trunk.id, &[os::SubPort::vlan(port.id.clone(), tag.into())])
                .await
            {
                Ok(_) => break Ok(()),
                Err(e) => e,
            };
            // The trunk went meanwhile (another container's last child left it, or a rollback
            // tidied it away while empty): find or make it again.
            if e.is_not_found() && again < 2 {
                again += 1;
                tracing::debug!(trunk = %trunk.id, parent, "the trunk went before its subport joined; again");
                match self.trunk_for(parent).await {
                    Ok((t, made)) => (trunk, made_trunk) = (t, made),
                    Err(e) => break Err(e),
                }
                continue;
            }
            undo_trunk(made_trunk, trunk.id.clone()).await;
            break Err(match e {
                os::Error::Conflict { .. } | os::Error::BadRequest { .. } => Error::InvalidInput(format!(
                    "trunk {} of the VM's port {parent} refuses VLAN {tag} for port {} ({e}): another subport may have it",
                    trunk.id, r.name
                )),
                e => os_err(format!("adding port {} to trunk {}", port.id, trunk.id))(e),
            });
        };
        if let Err(e) = joined {
            if let Err(de) = self.api.delete_port(&port.id).await {
                tracing::error!(port = %port.id, error = %de, "removing a child port that did not join the trunk failed");
            }
            return Err(e);
        }
        // The answer's device_owner and binding are what they were before the trunk took it.
        self.api
            .get_port(&port.id)
            .await
            .map_err(os_err(format!("reading port {}", port.id)))
    }

    /// The trunk of the VM's port `parent`, made (and marked as Courier's) if it has none;
    /// true when made here.
    async fn trunk_for(&self, parent: &str) -> Result<(os::Trunk, bool)> {
        let tq = Query::new().port_id(parent);
        let found = self
            .retry(&format!("looking up the trunk of port {parent}"), || {
                self.api.list_trunks(&tq)
            })
            .await?;
        if let Some(t) = found.into_iter().next() {
            return Ok((t, false));
        }
        let t = self
            .api
            .create_trunk(&os::TrunkCreate {
                port_id: parent.to_string(),
                name: Some(format!("courier-{parent}")),
                // In the POST itself: a crash before the tags go on leaves a trunk still
                // known as Courier's (`made_by_courier`).
                description: Some(TAG_CREATED.to_string()),
                tags: vec![TAG_CREATED.to_string()],
                ..Default::default()
            })
            .await
            .map_err(|e| {
                Error::InvalidInput(format!(
                    "the VM's port {parent} cannot be a trunk parent ({e}): give the VM a port that can (`openstack network trunk create --parent-port …`), or use the ipvlan binding"
                ))
            })?;
        crate::hooks::point("after-trunk").await;
        Ok((t, true))
    }

    /// The trunk whose subport `p` is, if any: by the parent ML2/OVN names in its
    /// binding:profile, else every trunk visible.
    async fn trunk_of(&self, p: &os::Port) -> Result<Option<os::Trunk>> {
        let parent = p
            .binding_profile
            .as_ref()
            .and_then(|b| b.get("parent_name"))
            .and_then(|v| v.as_str())
            .map(String::from);
        let q = match &parent {
            Some(parent) => Query::new().port_id(parent.as_str()),
            None => Query::new(),
        };
        let trunks = self
            .retry("listing trunks", || self.api.list_trunks(&q))
            .await?;
        Ok(trunks
            .into_iter()
            .find(|t| t.sub_ports.iter().any(|s| s.port_id == p.id)))
    }

    /// Before port `p` is deleted: out of its trunk (Neutron refuses to delete a subport), and
    /// a trunk Courier made goes with its last subport. (A trunk made by someone else stays.)
    pub(super) async fn leave_trunk(&self, p: &os::Port) -> Result<()> {
        if p.device_owner != "trunk:subport" {
            return Ok(());
        }
        let Some(trunk) = self.trunk_of(p).await? else {
            return Ok(());
        };
        let _vm = self.trunk_locks.lock(&trunk.port_id).await;
        let t = match self.api.remove_subports(&trunk.id, &[p.id.as_str()]).await {
            Ok(t) => t,
            Err(e) if e.is_not_found() => return Ok(()),
            Err(e) => {
                return Err(os_err(format!(
                    "removing port {} from trunk {}",
                    p.id, trunk.id
                ))(e))
            }
        };
        if t.sub_ports.is_empty() && made_by_courier(&trunk) {
            match self.api.delete_trunk(&trunk.id).await {
                Ok(_) => {
                    tracing::info!(trunk = %trunk.id, "deleted the trunk Courier made (its last subport left)")
                }
                // A subport added meanwhile keeps it.
                Err(e) => tracing::debug!(trunk = %trunk.id, error = %e, "trunk kept"),
            }
        }
        Ok(())
    }
}

#[async_trait]
impl VlanChildPorts for NeutronBackend {
    async fn child_tags(&self, parent: &str) -> Result<std::collections::BTreeSet<u16>> {
        let mut tags = std::collections::BTreeSet::new();
        let tq = Query::new().port_id(parent);
        let trunks = self
            .retry(&format!("looking up the trunk of port {parent}"), || {
                self.api.list_trunks(&tq)
            })
            .await?;
        for t in &trunks {
            for s in &t.sub_ports {
                if let Ok(tag) = u16::try_from(s.segmentation_id) {
                    tags.insert(tag);
                }
            }
        }
        // The binding:profile form (no trunk): ports on the parent's network naming it.
        let vm = match self.api.get_port(parent).await {
            Ok(p) => p,
            Err(e) if e.is_not_found() => return Ok(tags),
            Err(e) => return Err(os_err(format!("reading the VM's port {parent}"))(e)),
        };
        let ports = self
            .ports_where(
                &format!("listing ports of network {}", vm.network_id),
                Query::new().network_id(vm.network_id.as_str()),
            )
            .await?;
        for p in ports {
            let Some(b) = p.binding_profile.as_ref() else {
                continue;
            };
            if b.get("parent_name").and_then(|v| v.as_str()) == Some(parent) {
                if let Some(tag) = b.get("tag").and_then(|v| v.as_u64()) {
                    if let Ok(tag) = u16::try_from(tag) {
                        tags.insert(tag);
                    }
                }
            }
        }
        Ok(tags)
    }

    async fn tidy_children_of(&self, parent: &str) -> Result<()> {
        // Under the VM's lock: no child of this daemon joins between the look and the delete.
        let _vm = self.trunk_locks.lock(parent).await;
        let tq = Query::new().port_id(parent);
        let trunks = self
            .retry(&format!("looking up the trunk of port {parent}"), || {
                self.api.list_trunks(&tq)
            })
            .await?;
        for t in trunks
            .iter()
            .filter(|t| t.sub_ports.is_empty() && made_by_courier(t))
        {
            match self.api.delete_trunk(&t.id).await {
                Ok(true) => {
                    tracing::info!(trunk = %t.id, parent, "deleted the empty trunk Courier made (its child port never came)")
                }
                Ok(false) => {}
                Err(e) => return Err(os_err(format!("deleting the empty trunk {}", t.id))(e)),
            }
        }
        Ok(())
    }
}
