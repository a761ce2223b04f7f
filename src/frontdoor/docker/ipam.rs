//! The IpamDriver: pools are subnets (`courier:CIDR`, no state), an endpoint's address is a
//! port the backend makes (`Attacher::reserve`, held as a lease until ReleaseAddress).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::State;
use axum::response::Response;
use ipnet::{IpNet, Ipv4Net};
use serde::Deserialize;
use serde_json::json;

use super::user_ports::{bindable_or_refuse, not_named, user_port_holding, user_port_with_mac};
use super::{ok, parse, parse_ip, Reply};
use crate::daemon::Daemon;
use crate::error::{Error, Result};
use crate::model::{AttachRequest, Attachment, DockerNetwork, DockerRef};

/// Prefix of the pool ids Courier's IPAM hands out.
const POOL_PREFIX: &str = "courier:";
const LOCAL_SPACE: &str = "courier-local";
const GLOBAL_SPACE: &str = "courier-global";
/// Docker's option keys.
const REQUEST_TYPE: &str = "RequestAddressType";
const GATEWAY_TYPE: &str = "com.docker.network.gateway";
const MAC_OPTION: &str = "com.docker.network.endpoint.macaddress";

pub(super) async fn ipam_capabilities() -> Response {
    // Docker's MAC becomes the port's, so the interface Docker configures matches the port.
    ok(json!({ "RequiresMACAddress": true }))
}

pub(super) async fn address_spaces() -> Response {
    ok(json!({
        "LocalDefaultAddressSpace": LOCAL_SPACE,
        "GlobalDefaultAddressSpace": GLOBAL_SPACE,
    }))
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct RequestPool {
    #[serde(default)]
    pool: String,
    #[serde(default)]
    sub_pool: String,
    #[serde(default, rename = "V6")]
    v6: bool,
}

/// The subnet a pool id names.
pub(super) fn pool_subnet(pool_id: &str) -> Result<IpNet> {
    pool_id
        .strip_prefix(POOL_PREFIX)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| {
            Error::InvalidInput(format!(
                "pool {pool_id:?} is not one of Courier's (they look like {POOL_PREFIX}10.81.0.0/24): create the network with --ipam-driver courier"
            ))
        })
}

pub(super) fn pool_id(subnet: &IpNet) -> String {
    format!("{POOL_PREFIX}{}", subnet.trunc())
}

pub(super) async fn request_pool(State(d): State<Arc<Daemon>>, body: Bytes) -> Reply {
    let req: RequestPool = parse("RequestPool", &body)?;
    if !req.sub_pool.is_empty() {
        return Err(Error::InvalidInput(format!(
            "--ip-range {} is not supported: the backend allocates from the whole subnet; drop --ip-range",
            req.sub_pool
        ))
        .into());
    }
    let subnet: IpNet = if req.pool.is_empty() {
        if req.v6 {
            return Err(Error::InvalidInput(
                "an IPv6 network needs its subnet: give --subnet with an IPv6 CIDR (e.g. fd00:81::/64)".into(),
            )
            .into());
        }
        IpNet::V4(unused_pool(&d).await?)
    } else {
        let s: IpNet = req.pool.parse().map_err(|_| {
            Error::InvalidInput(format!(
                "--subnet {:?} is not a CIDR such as 10.81.0.0/24",
                req.pool
            ))
        })?;
        if s.addr() != s.network() {
            return Err(Error::InvalidInput(format!(
                "--subnet {s} has host bits set: did you mean {}?",
                s.trunc()
            ))
            .into());
        }
        if req.v6 != matches!(s, IpNet::V6(_)) {
            return Err(Error::InvalidInput(format!(
                "--subnet {s} is not of the family Docker asked for (IPv6: {})",
                req.v6
            ))
            .into());
        }
        s
    };
    let id = pool_id(&subnet);
    if let Some(n) = d.attacher.store.docker_network_of_pool(&id).await? {
        return Err(Error::InvalidInput(format!(
            "subnet {subnet} is Docker network {}'s already (Courier network {}): pick another --subnet",
            n.network_id, n.name
        ))
        .into());
    }
    Ok(ok(
        json!({ "PoolID": id, "Pool": subnet.to_string(), "Data": {} }),
    ))
}

/// A /24 of `[docker] default_pool` that no network Courier knows uses.
async fn unused_pool(d: &Daemon) -> Result<Ipv4Net> {
    let range: Ipv4Net = d
        .config
        .docker
        .default_pool
        .parse()
        .map_err(|_| Error::Internal("[docker] default_pool was validated".into()))?;
    let mut used: Vec<IpNet> = Vec::new();
    for b in d.attacher.registry.backends() {
        for n in b.networks().await? {
            used.extend(n.subnet.map(IpNet::V4));
        }
    }
    for n in d.attacher.store.docker_networks().await? {
        used.extend(pool_subnet(&n.pool4).ok());
    }
    let subnets = range
        .subnets(24)
        .map_err(|e| Error::Internal(e.to_string()))?;
    for s in subnets {
        let s = IpNet::V4(s);
        if !used
            .iter()
            .any(|u| u.contains(&s.network()) || s.contains(&u.network()))
        {
            if let IpNet::V4(v4) = s {
                return Ok(v4);
            }
        }
    }
    Err(Error::InvalidInput(format!(
        "every /24 of [docker] default_pool {range} is in use: give --subnet"
    )))
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct RequestAddress {
    #[serde(rename = "PoolID")]
    pool_id: String,
    #[serde(default)]
    address: String,
    #[serde(default)]
    options: Option<HashMap<String, String>>,
}

/// The Docker network whose pool is `pool_id`.
async fn network_of_pool(d: &Daemon, pool_id: &str) -> Result<Option<DockerNetwork>> {
    d.attacher.store.docker_network_of_pool(pool_id).await
}

/// The port's address of `subnet`'s family, with the subnet's prefix.
fn address_in(att: &Attachment, subnet: &IpNet) -> Option<IpNet> {
    let port = att.port.as_ref()?;
    port.ips
        .iter()
        .find(|ip| subnet.contains(&ip.addr()))
        .map(|ip| IpNet::new(ip.addr(), subnet.prefix_len()).unwrap_or(*ip))
}

pub(super) async fn request_address(State(d): State<Arc<Daemon>>, body: Bytes) -> Reply {
    let req: RequestAddress = parse("RequestAddress", &body)?;
    let subnet = pool_subnet(&req.pool_id)?;
    let options = req.options.unwrap_or_default();
    let wanted = match req.address.as_str() {
        "" => None,
        a => {
            let ip = parse_ip("address", a)?;
            if !subnet.contains(&ip) {
                return Err(Error::InvalidInput(format!(
                    "address {ip} is outside the network's subnet {subnet}: pick one inside it"
                ))
                .into());
            }
            Some(ip)
        }
    };
    if options.get(REQUEST_TYPE).map(String::as_str) == Some(GATEWAY_TYPE) {
        // Docker's own bookkeeping; the backend's gateway is what containers get (Join).
        let gw = match wanted {
            Some(ip) => ip,
            None => first_host(&subnet)?,
        };
        return Ok(ok(json!({
            "Address": IpNet::new(gw, subnet.prefix_len()).map_err(|e| Error::Internal(e.to_string()))?.to_string(),
            "Data": {}
        })));
    }
    let Some(net) = network_of_pool(&d, &req.pool_id).await? else {
        return Err(Error::InvalidInput(format!(
            "no Docker network has pool {} yet: Courier reserves no --aux-address addresses; drop --aux-address",
            req.pool_id
        ))
        .into());
    };
    let mac = options.get(MAC_OPTION).filter(|m| !m.is_empty()).cloned();
    if matches!(subnet, IpNet::V6(_)) {
        // The port was made by the IPv4 request just before (same MAC): its IPv6 address.
        let found = match &mac {
            Some(m) => {
                d.attacher
                    .staged_records(
                        crate::state::DockerKey::Mac {
                            network: &net.name,
                            mac: m,
                        },
                        |a| {
                            a.network == net.name
                                && a.port
                                    .as_ref()
                                    .is_some_and(|p| p.mac.eq_ignore_ascii_case(m))
                        },
                    )
                    .await?
            }
            None => Vec::new(),
        };
        let mut addr = found.iter().find_map(|a| address_in(a, &subnet));
        if addr.is_none() {
            // The IPv4 request named a user's port (bound at CreateEndpoint, when the endpoint
            // names it): that port's IPv6 address, nothing made.
            if let Some(m) = &mac {
                addr = user_port_with_mac(&d, &net, m).await?.and_then(|p| {
                    p.ips
                        .iter()
                        .find(|ip| subnet.contains(&ip.addr()))
                        .map(|ip| IpNet::new(ip.addr(), subnet.prefix_len()).unwrap_or(*ip))
                });
            }
        }
        return match (addr, wanted) {
            (Some(a), Some(w)) if a.addr() != w => Err(Error::InvalidInput(format!(
                "the endpoint's port has IPv6 address {} and cannot take {w}: drop --ip6 (the backend assigns it)",
                a.addr()
            ))
            .into()),
            (Some(a), _) => Ok(ok(json!({ "Address": a.to_string(), "Data": {} }))),
            (None, _) => Err(Error::InvalidInput(format!(
                "no port of network {} has an address in {subnet}: its backend network has no IPv6 subnet",
                net.name
            ))
            .into()),
        };
    }
    // An address held by a port Courier did not make (a keepalived VIP port, Neutron's own
    // metadata port, Zun's pre-created port): never taken here. A port nobody binds may be
    // bound by the endpoint that names it (CreateEndpoint's `courier.port`, which Docker sends
    // only there), so its address is answered with nothing made or touched; any other is
    // refused now.
    if let Some(ip) = wanted {
        if let Some(holder) = user_port_holding(&d, &net, ip).await? {
            bindable_or_refuse(&d, &net, ip, &holder).await?;
            if !mac
                .as_deref()
                .is_some_and(|m| m.eq_ignore_ascii_case(&holder.mac))
            {
                return Err(not_named(ip, &holder).into());
            }
            tracing::info!(address = %ip, port = %holder.id,
                "address of a port Courier did not make: bound only if the endpoint names it");
            return Ok(ok(json!({
                "Address": IpNet::new(ip, subnet.prefix_len()).map_err(|e| Error::Internal(e.to_string()))?.to_string(),
                "Data": {}
            })));
        }
    }
    let att = d
        .attacher
        .reserve(
            AttachRequest {
                network: net.name.clone(),
                ip: wanted,
                mac,
                binding: net.binding.clone(),
                ..Default::default()
            },
            DockerRef {
                pool_id: req.pool_id.clone(),
                network_id: Some(net.network_id.clone()),
                leased: true,
                ..Default::default()
            },
            Some(net.backend.clone()),
        )
        .await?;
    let addr = address_in(&att, &subnet).ok_or_else(|| {
        Error::BackendState(format!("port {} got no address in {subnet}", att.port_name))
    })?;
    Ok(ok(json!({ "Address": addr.to_string(), "Data": {} })))
}

/// The first usable address (IPv6: after the subnet-router anycast address).
fn first_host(subnet: &IpNet) -> Result<IpAddr> {
    match subnet {
        IpNet::V4(s) => s.hosts().next().map(IpAddr::V4),
        IpNet::V6(s) if s.prefix_len() < 127 => Some(IpAddr::V6(std::net::Ipv6Addr::from(
            u128::from(s.network()) + 1,
        ))),
        IpNet::V6(_) => None,
    }
    .ok_or_else(|| Error::InvalidInput(format!("subnet {subnet} has no room for a gateway")))
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct ReleaseAddress {
    #[serde(rename = "PoolID")]
    pool_id: String,
    address: String,
}

pub(super) async fn release_address(State(d): State<Arc<Daemon>>, body: Bytes) -> Reply {
    let req: ReleaseAddress = parse("ReleaseAddress", &body)?;
    let subnet = pool_subnet(&req.pool_id)?;
    let ip = parse_ip("address", &req.address)?;
    if matches!(subnet, IpNet::V6(_)) {
        // The port goes with its IPv4 address.
        return Ok(ok(json!({})));
    }
    let Some(net) = network_of_pool(&d, &req.pool_id).await? else {
        return Ok(ok(json!({})));
    };
    for a in leases_holding(&d, &net, ip).await? {
        d.attacher.release_soon(&a.id).await?;
    }
    Ok(ok(json!({})))
}

/// This host's leases (Courier's IPAM) on Docker network `net` whose port holds `ip`.
pub(super) async fn leases_holding(
    d: &Daemon,
    net: &DockerNetwork,
    ip: IpAddr,
) -> Result<Vec<Attachment>> {
    let key = crate::state::DockerKey::Address {
        network: &net.name,
        ip,
    };
    d.attacher
        .staged_records(key, |a| {
            a.network == net.name
                && a.docker.as_ref().is_some_and(|x| x.leased)
                && a.port
                    .as_ref()
                    .is_some_and(|p| p.ips.iter().any(|i| i.addr() == ip))
        })
        .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_gateway_is_the_first_usable_address() {
        let v4: IpNet = "10.81.0.0/24".parse().unwrap();
        assert_eq!(first_host(&v4).unwrap().to_string(), "10.81.0.1");
        let v6: IpNet = "fd00:95::/64".parse().unwrap();
        assert_eq!(first_host(&v6).unwrap().to_string(), "fd00:95::1");
    }

    #[test]
    fn pool_ids_name_their_subnet() {
        let s: IpNet = "10.81.0.0/24".parse().unwrap();
        assert_eq!(pool_id(&s), "courier:10.81.0.0/24");
        assert_eq!(pool_subnet("courier:10.81.0.0/24").unwrap(), s);
        let s6: IpNet = "fd00:81::/64".parse().unwrap();
        assert_eq!(pool_subnet(&pool_id(&s6)).unwrap(), s6);
        assert!(pool_subnet("kuryrPool-10.81.0.0/24").is_err());
        assert!(pool_subnet("courier:nonsense").is_err());
    }
}
