//! Courier networks as Neutron networks: found by the tag `courier:network:<NAME>` (or, when
//! its tags never came, the description Courier's POST set), created with their subnets or
//! registered, deleted or unregistered; their subnets cached by id, resolved networks for
//! `NETWORK_TTL`.

use std::time::{Duration, Instant};

use courier_openstack::{self as os, Query, SubnetCreate};

use super::{os_err, NetInfo, NeutronBackend, DEVICE_OWNER, ID, TAG_CREATED};
use crate::error::{Error, Result};
use crate::model::{validate_network_name, Network, NetworkSpec};

fn tag_network(name: &str) -> String {
    format!("courier:network:{name}")
}
/// The `description` of a network Courier creates (`network create --backend neutron`): in the
/// POST (Neutron 29 takes no tags there), so a network whose tags never came is still found.
fn network_description(name: &str) -> String {
    tag_network(name)
}

pub(super) const NETWORK_TTL: Duration = Duration::from_secs(10);

impl NeutronBackend {
    /// The Neutron network registered as `name`, if any.
    async fn find_network(&self, name: &str) -> Result<Option<os::Network>> {
        let tag = [tag_network(name)];
        let q = Query::new().tags(&tag);
        let mut nets = self
            .retry(&format!("looking up network {name}"), || {
                self.api.list_networks(&q)
            })
            .await?;
        if nets.is_empty() {
            // One Courier created whose tags never came (the PUT after the POST failed, or the
            // daemon died in between): its POST set the description.
            let q = Query::new().description(network_description(name));
            nets = self
                .retry(&format!("looking up network {name}"), || {
                    self.api.list_networks(&q)
                })
                .await?;
        }
        match nets.len() {
            0 => Ok(None),
            1 => Ok(nets.pop()),
            n => Err(Error::BackendState(format!(
                "{n} Neutron networks carry the tag {}: remove it from all but one",
                tag[0]
            ))),
        }
    }

    async fn subnets_of(&self, net: &os::Network) -> Result<Vec<os::Subnet>> {
        let q = Query::new().network_id(&net.id);
        let subs = self
            .retry(&format!("listing subnets of network {}", net.id), || {
                self.api.list_subnets(&q)
            })
            .await?;
        let mut cache = self.subnets.lock().unwrap_or_else(|p| p.into_inner());
        for s in &subs {
            cache.insert(s.id.clone(), s.clone());
        }
        Ok(subs)
    }

    pub(super) async fn subnet(&self, id: &str) -> Result<os::Subnet> {
        if let Some(s) = self
            .subnets
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(id)
        {
            return Ok(s.clone());
        }
        let s = self
            .retry(&format!("reading subnet {id}"), || self.api.get_subnet(id))
            .await?;
        self.subnets
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id.to_string(), s.clone());
        Ok(s)
    }

    /// Neutron network `net` (with its subnets `subs`) as the Courier network `name`.
    pub fn to_network(name: &str, net: &os::Network, subs: &[os::Subnet]) -> Network {
        let v4 = subs.iter().find(|s| s.ip_version == 4);
        let v6 = subs.iter().find(|s| s.ip_version == 6);
        Network {
            name: name.to_string(),
            backend_id: net.id.clone(),
            backend: ID.into(),
            subnet: v4.and_then(|s| s.cidr.parse().ok()),
            gateway: v4.and_then(|s| s.gateway_ip.as_deref()?.parse().ok()),
            subnet6: v6.and_then(|s| s.cidr.parse().ok()),
            gateway6: v6.and_then(|s| s.gateway_ip.as_deref()?.parse().ok()),
            exclude_ips: vec![],
            mtu: net.mtu,
            dns_domain: net
                .dns_domain
                .as_deref()
                .map(|d| d.trim_end_matches('.').to_string())
                .filter(|d| !d.is_empty()),
            created_by_courier: net.tags.iter().any(|t| t == TAG_CREATED),
            ports: 0,
            physical: net
                .physical_network
                .clone()
                .map(|name| crate::model::PhysicalNetwork {
                    name,
                    vlan: (net.network_type.as_deref() == Some("vlan"))
                        .then(|| net.segmentation_id.and_then(|v| u16::try_from(v).ok()))
                        .flatten(),
                }),
        }
    }

    fn forget(&self, name: &str) {
        self.resolved
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(name);
    }

    /// What ports of Neutron network `id` take from it, from the resolved networks if there.
    pub(super) async fn network_by_id(&self, id: &str) -> Result<NetInfo> {
        let known = self
            .resolved
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .find(|(_, n)| n.backend_id == id)
            .map(|(_, n)| NetInfo::from(n));
        if let Some(k) = known {
            return Ok(k);
        }
        let net = self
            .api
            .get_network(id)
            .await
            .map_err(os_err(format!("reading network {id}")))?;
        let name = Self::network_name_of(&net.tags).unwrap_or(net.name.clone());
        Ok(NetInfo::from(&Self::to_network(&name, &net, &[])))
    }

    fn network_name_of(tags: &[String]) -> Option<String> {
        tags.iter()
            .find_map(|t| t.strip_prefix("courier:network:"))
            .map(String::from)
    }

    /// `Backend::create_network`.
    pub(super) async fn network_create(&self, spec: &NetworkSpec) -> Result<Network> {
        validate_network_name(&spec.name).map_err(Error::InvalidInput)?;
        self.forget(&spec.name);
        if self.find_network(&spec.name).await?.is_some() {
            return Err(Error::NetworkExists(spec.name.clone()));
        }
        if let Some(existing) = &spec.existing {
            if spec.subnet.is_some() || spec.subnet6.is_some() {
                return Err(Error::InvalidInput(
                    "give either an existing Neutron network or subnets to create, not both".into(),
                ));
            }
            // By id, else by name (which must be unique).
            let net = match self.api.get_network(existing).await {
                Ok(n) => n,
                Err(e) if e.is_not_found() => {
                    let q = Query::new().name(existing);
                    let mut by_name = self
                        .retry(&format!("looking up network {existing}"), || {
                            self.api.list_networks(&q)
                        })
                        .await?;
                    match by_name.len() {
                        1 => by_name.remove(0),
                        0 => {
                            return Err(Error::InvalidInput(format!(
                                "Neutron has no network {existing:?} (by id or name): check `openstack network list`"
                            )))
                        }
                        n => {
                            return Err(Error::InvalidInput(format!(
                                "{n} Neutron networks are named {existing:?}: give its id"
                            )))
                        }
                    }
                }
                Err(e) => return Err(os_err(format!("reading network {existing}"))(e)),
            };
            if let Some(other) = Self::network_name_of(&net.tags) {
                return Err(Error::InvalidInput(format!(
                    "Neutron network {} is already registered as Courier network {other:?}",
                    net.id
                )));
            }
            self.api
                .add_tag("networks", &net.id, &tag_network(&spec.name))
                .await
                .map_err(os_err(format!("tagging network {}", net.id)))?;
            let subs = self.subnets_of(&net).await?;
            tracing::info!(network = %spec.name, neutron = %net.id, "registered Neutron network");
            return Ok(Self::to_network(&spec.name, &net, &subs));
        }
        if spec.subnet.is_none() && spec.subnet6.is_none() {
            return Err(Error::InvalidInput(
                "a Neutron network needs --subnet (IPv4 and/or IPv6), or --neutron-network to register an existing one".into(),
            ));
        }
        let create = os::NetworkCreate {
            name: Some(spec.name.clone()),
            description: Some(network_description(&spec.name)),
            tags: vec![tag_network(&spec.name), TAG_CREATED.into()],
            ..Default::default()
        };
        let mut net = self
            .api
            .create_network_untagged(&create)
            .await
            .map_err(os_err(format!("creating network {}", spec.name)))?;
        crate::hooks::point("after-network-post").await;
        self.api
            .tag_created_network(&mut net, &create)
            .await
            .map_err(os_err(format!(
                "tagging the new network {} (Courier tags the networks it makes: check Neutron's policy for update_network:tags)",
                spec.name
            )))?;
        let mut subs = Vec::new();
        let made = async {
            if let Some(v4) = spec.subnet {
                subs.push(
                    self.api
                        .create_subnet(&SubnetCreate {
                            network_id: net.id.clone(),
                            cidr: v4.to_string(),
                            ip_version: 4,
                            name: Some(format!("{}-v4", spec.name)),
                            gateway_ip: spec.gateway.map(|g| Some(g.to_string())),
                            ..Default::default()
                        })
                        .await?,
                );
            }
            if let Some(v6) = spec.subnet6 {
                subs.push(
                    self.api
                        .create_subnet(&SubnetCreate {
                            network_id: net.id.clone(),
                            cidr: v6.to_string(),
                            ip_version: 6,
                            name: Some(format!("{}-v6", spec.name)),
                            gateway_ip: spec.gateway6.map(|g| Some(g.to_string())),
                            ipv6_address_mode: Some("dhcpv6-stateful".into()),
                            ..Default::default()
                        })
                        .await?,
                );
            }
            Ok::<(), os::Error>(())
        };
        if let Err(e) = made.await {
            // Nothing half-made stays: the network goes with its subnets.
            if let Err(de) = self.api.delete_network(&net.id).await {
                tracing::error!(network = %net.id, error = %de, "removing a half-created network failed");
            }
            return Err(os_err(format!("creating subnets of {}", spec.name))(e));
        }
        let net = self
            .api
            .get_network(&net.id)
            .await
            .map_err(os_err(format!("reading network {}", net.id)))?;
        tracing::info!(network = %spec.name, neutron = %net.id, "created Neutron network");
        Ok(Self::to_network(&spec.name, &net, &subs))
    }

    /// `Backend::delete_network`.
    pub(super) async fn network_delete(&self, name: &str) -> Result<()> {
        self.forget(name);
        let Some(net) = self.find_network(name).await? else {
            return Err(Error::UnknownNetwork(name.to_string()));
        };
        let created = net.tags.iter().any(|t| t == TAG_CREATED)
            || net.description.as_deref() == Some(network_description(name).as_str());
        if created {
            // Neutron refuses while a port of anyone's is on it, and deletes its own
            // (`network:distributed` metadata, `network:dhcp`) with the network: no count first.
            match self.api.delete_network(&net.id).await {
                Ok(_) => {}
                Err(os::Error::Conflict { ref fault, .. })
                    if fault.kind.as_deref() == Some("NetworkInUse") =>
                {
                    let q = Query::new().network_id(&net.id);
                    let ports = self
                        .ports_where(&format!("listing ports of {name}"), q)
                        .await?;
                    return Err(Error::NetworkInUse {
                        name: name.into(),
                        ports: ports
                            .iter()
                            .filter(|p| !p.device_owner.starts_with("network:"))
                            .count()
                            .max(1),
                    });
                }
                Err(e) => return Err(os_err(format!("deleting network {}", net.id))(e)),
            }
        } else {
            // Registered, not created: only the registration goes, and only once no port
            // Courier made or bound (for any host) is left on it: their attachments name it.
            let q = Query::new().network_id(&net.id);
            let ours = self
                .ports_where(&format!("listing ports of {name}"), q)
                .await?
                .iter()
                .filter(|p| {
                    Self::is_courier_port(p)
                        || p.device_owner == DEVICE_OWNER
                        || p.description
                            .as_deref()
                            .is_some_and(|d| d.starts_with("courier:host:"))
                })
                .count();
            if ours > 0 {
                return Err(Error::NetworkInUse {
                    name: name.into(),
                    ports: ours,
                });
            }
            self.api
                .remove_tag("networks", &net.id, &tag_network(name))
                .await
                .map_err(os_err(format!("untagging network {}", net.id)))?;
        }
        Ok(())
    }

    /// `Backend::network`: from the resolved networks while fresh.
    pub(super) async fn network_lookup(&self, name: &str) -> Result<Option<Network>> {
        if let Some((at, n)) = self
            .resolved
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(name)
        {
            if at.elapsed() < NETWORK_TTL {
                return Ok(Some(n.clone()));
            }
        }
        let Some(net) = self.find_network(name).await? else {
            self.forget(name);
            return Ok(None);
        };
        let subs = self.subnets_of(&net).await?;
        let n = Self::to_network(name, &net, &subs);
        self.resolved
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(name.to_string(), (Instant::now(), n.clone()));
        Ok(Some(n))
    }

    /// `Backend::networks`.
    pub(super) async fn network_list(&self) -> Result<Vec<Network>> {
        let q = Query::new();
        let nets = self
            .retry("listing networks", || self.api.list_networks(&q))
            .await?;
        let mut out = Vec::new();
        for n in nets {
            if let Some(name) = Self::network_name_of(&n.tags) {
                let subs = self.subnets_of(&n).await?;
                out.push(Self::to_network(&name, &n, &subs));
            }
        }
        Ok(out)
    }
}
