//! Existing ports (`ExistingPorts`): a port someone else made, bound to nothing, claimed for
//! an attachment (device_owner, device_id, binding:host_id in one revision-checked PUT, then
//! the `courier:claimed` tags) and given back as it was; never deleted.

use async_trait::async_trait;
use courier_openstack as os;

use super::{
    os_err, tag_attachment, tag_host, NetInfo, NeutronBackend, DEVICE_OWNER, TAG_CLAIMED, TAG_OWNER,
};
use crate::backend::{ExistingPorts, OwnerMark, PortRole};
use crate::error::{Error, Result};
use crate::model::{ExistingPort, LogicalPort, Network};

#[async_trait]
impl ExistingPorts for NeutronBackend {
    async fn network_of(&self, id: &str) -> Result<String> {
        match self.api.get_port(id).await {
            Ok(p) => Ok(p.network_id),
            Err(e) if e.is_not_found() => Err(Error::InvalidInput(format!(
                "Neutron has no port {id:?}: check `openstack port show {id}`"
            ))),
            Err(e) => Err(os_err(format!("reading port {id}"))(e)),
        }
    }

    async fn inspect_port(&self, id: &str, network: &Network) -> Result<ExistingPort> {
        let p = match self.api.get_port(id).await {
            Ok(p) => p,
            Err(e) if e.is_not_found() => {
                return Err(Error::InvalidInput(format!(
                    "Neutron has no port {id:?}: check `openstack port show {id}`"
                )))
            }
            Err(e) => return Err(os_err(format!("reading port {id}"))(e)),
        };
        if p.network_id != network.backend_id {
            return Err(Error::InvalidInput(format!(
                "port {id} is on Neutron network {}, not on {:?} ({}): attach it to its own network",
                p.network_id, network.name, network.backend_id
            )));
        }
        if p.tags.iter().any(|t| t == TAG_OWNER || t == TAG_CLAIMED) {
            return Err(Error::InvalidInput(format!(
                "port {id} is already used by Courier ({}): detach that first",
                p.tags.join(", ")
            )));
        }
        let vnic = p
            .binding_vnic_type
            .clone()
            .unwrap_or_else(|| "normal".into());
        if !matches!(vnic.as_str(), "normal" | "direct") {
            return Err(Error::InvalidInput(format!(
                "port {id} has binding:vnic_type {vnic}, which Courier cannot give a container: it binds normal ports (a veth, or a nested binding) and direct ones (an SR-IOV VF, the sriov binding); make the port with vnic_type normal or direct"
            )));
        }
        let host = p.binding_host_id.clone().filter(|h| !h.is_empty());
        if !p.device_owner.is_empty() || !p.device_id.is_empty() || host.is_some() {
            return Err(Error::InvalidInput(format!(
                "port {id} is bound elsewhere (device_owner {:?}, device_id {:?}, host {:?}): give a port no server or container uses",
                p.device_owner, p.device_id, host.unwrap_or_default()
            )));
        }
        Ok(ExistingPort {
            id: p.id,
            device_owner: p.device_owner,
            device_id: p.device_id,
            host_id: p.binding_host_id,
            revision: p.revision_number,
            vnic_type: Some(vnic),
        })
    }

    async fn claim_port(
        &self,
        port: &ExistingPort,
        owner: &OwnerMark,
        network: &Network,
        role: &PortRole,
    ) -> Result<LogicalPort> {
        let update = os::PortUpdate {
            device_owner: Some(DEVICE_OWNER.into()),
            device_id: Some(owner.attachment.clone()),
            binding_host_id: Some(self.host_id.clone()),
            // A direct port: the VF it is bound to, as Nova and Zun send it.
            binding_profile: match role {
                PortRole::Direct(p) => Some(p.binding_profile()),
                _ => None,
            },
            ..Default::default()
        };
        let p = match self.api.update_port(&port.id, &update, port.revision).await {
            Ok(p) => p,
            Err(os::Error::RevisionConflict { .. }) => {
                return Err(Error::InvalidInput(format!(
                    "port {} changed while it was being bound (another attach or user took it): try again, or use another port",
                    port.id
                )))
            }
            Err(e) => return Err(os_err(format!("claiming port {}", port.id))(e)),
        };
        if let Err(e) = super::ports::refuse_failed_direct_binding(&p, &self.host_id) {
            // Given back as it was: nothing of the claim stays.
            if let Err(re) = self.release_port(port, owner).await {
                tracing::error!(port = %port.id, error = %re, "giving back a direct port Neutron could not bind failed");
            }
            return Err(e);
        }
        for tag in [
            TAG_CLAIMED.to_string(),
            tag_host(&owner.host),
            tag_attachment(&owner.attachment),
        ] {
            self.api
                .add_tag("ports", &port.id, &tag)
                .await
                .map_err(os_err(format!("tagging port {}", port.id)))?;
        }
        let mut lp = self.to_port(&p, &NetInfo::from(network)).await?;
        lp.attachment = Some(owner.attachment.clone());
        Ok(lp)
    }

    async fn release_port(&self, port: &ExistingPort, owner: &OwnerMark) -> Result<bool> {
        let p = match self.api.get_port(&port.id).await {
            Ok(p) => p,
            Err(e) if e.is_not_found() => return Ok(false),
            Err(e) => return Err(os_err(format!("reading port {}", port.id))(e)),
        };
        // Only our own claim: the claim's PUT set device_id to the attachment id, atomically
        // (the tags follow it). Another attach's claim — one that won a race for this port —
        // or a claim never made is left alone.
        if p.device_owner != DEVICE_OWNER || p.device_id != owner.attachment {
            return Ok(false);
        }
        let update = os::PortUpdate {
            device_owner: Some(port.device_owner.clone()),
            device_id: Some(port.device_id.clone()),
            binding_host_id: Some(port.host_id.clone().unwrap_or_default()),
            // A direct port's VF goes with the claim (it was unbound before: no profile).
            binding_profile: (port.vnic_type.as_deref() == Some("direct"))
                .then(|| serde_json::json!({})),
            ..Default::default()
        };
        self.api
            .update_port(&port.id, &update, None)
            .await
            .map_err(os_err(format!("giving port {} back", port.id)))?;
        for tag in p.tags.iter().filter(|t| {
            t.as_str() == TAG_CLAIMED
                || t.starts_with("courier:host:")
                || t.starts_with("courier:attachment:")
        }) {
            self.api
                .remove_tag("ports", &port.id, tag)
                .await
                .map_err(os_err(format!("untagging port {}", port.id)))?;
        }
        Ok(true)
    }
}
