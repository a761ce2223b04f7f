//! The port of the VM Courier runs in (`NestedParents`): by `[nested] parent_port`, else by
//! the VM interface's addresses, then its MAC, among the ports that could be a VM's.

use async_trait::async_trait;
use courier_openstack::{self as os, Query};

use super::{os_err, NeutronBackend};
use crate::backend::{NestedParents, ParentQuery};
use crate::error::{Error, Result};

impl NeutronBackend {
    /// Could be the port of the VM Courier runs in: not Courier's, not Neutron's own
    /// (`network:*`: router, DHCP…), not a trunk subport (it shares the VM's MAC).
    fn may_be_vm_port(p: &os::Port) -> bool {
        !Self::is_courier_port(p)
            && !p.device_owner.starts_with("network:")
            && p.device_owner != "trunk:subport"
    }

    fn describe_ports(ports: &[os::Port]) -> String {
        ports
            .iter()
            .map(|p| {
                let ips: Vec<&str> = p
                    .fixed_ips
                    .iter()
                    .filter_map(|f| f.ip_address.as_deref())
                    .collect();
                format!(
                    "{} (network {}, {} {}, device_owner {:?})",
                    p.id,
                    p.network_id,
                    p.mac_address,
                    ips.join(" "),
                    p.device_owner
                )
            })
            .collect::<Vec<_>>()
            .join("; ")
    }
}

#[async_trait]
impl NestedParents for NeutronBackend {
    async fn parent_port(&self, q: &ParentQuery) -> Result<String> {
        if let Some(id) = &q.id {
            let p = match self.api.get_port(id).await {
                Ok(p) => p,
                Err(e) if e.is_not_found() => {
                    return Err(Error::InvalidInput(format!(
                        "Neutron has no port {id:?} ([nested] parent_port, the VM's port): set it to the id `openstack port list --server <this VM>` shows"
                    )))
                }
                Err(e) => return Err(os_err(format!("reading the VM's port {id}"))(e)),
            };
            if Self::is_courier_port(&p) {
                return Err(Error::InvalidInput(format!(
                    "port {id} ([nested] parent_port) is a port Courier made for a container, not the VM's: set [nested] parent_port to the VM's own port"
                )));
            }
            return Ok(p.id);
        }
        let mut by_ip: Vec<os::Port> = Vec::new();
        for ip in &q.ips {
            for p in self
                .ports_where(
                    &format!("looking up the VM's port by {ip}"),
                    Query::new().fixed_ip(ip.to_string()),
                )
                .await?
            {
                if Self::may_be_vm_port(&p) && !by_ip.iter().any(|b| b.id == p.id) {
                    by_ip.push(p);
                }
            }
        }
        // Overlapping networks may repeat an address: the MAC tells them apart.
        if by_ip.len() > 1 {
            if let Some(mac) = &q.mac {
                let same_mac: Vec<os::Port> = by_ip
                    .iter()
                    .filter(|p| p.mac_address.eq_ignore_ascii_case(mac))
                    .cloned()
                    .collect();
                if !same_mac.is_empty() {
                    by_ip = same_mac;
                }
            }
        }
        let found = if !by_ip.is_empty() {
            by_ip
        } else if let Some(mac) = &q.mac {
            self.ports_where(
                &format!("looking up the VM's port by {mac}"),
                Query::new().mac_address(mac.to_ascii_lowercase()),
            )
            .await?
            .into_iter()
            .filter(Self::may_be_vm_port)
            .collect()
        } else {
            vec![]
        };
        let ips: Vec<String> = q.ips.iter().map(ToString::to_string).collect();
        let wanted = format!(
            "addresses [{}], MAC {}",
            ips.join(", "),
            q.mac.as_deref().unwrap_or("-")
        );
        match found.as_slice() {
            [one] => Ok(one.id.clone()),
            [] => Err(Error::InvalidInput(format!(
                "no Neutron port visible to these credentials has the VM interface's {wanted}: set [nested] parent_port to the VM's port id"
            ))),
            many => Err(Error::InvalidInput(format!(
                "{} Neutron ports match the VM interface's {wanted}: {}; set [nested] parent_port to the VM's one",
                many.len(),
                Self::describe_ports(many)
            ))),
        }
    }
}
