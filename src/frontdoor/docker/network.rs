//! The NetworkDriver's networks: CreateNetwork (a new Courier network, a registered Neutron
//! network or an existing Courier network, recorded by Docker's id) and DeleteNetwork (what
//! CreateNetwork made goes).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::State;
use axum::response::Response;
use ipnet::{IpNet, Ipv4Net};
use serde::Deserialize;
use serde_json::{json, Value};

use super::ipam::pool_id;
use super::options::{generic_options, NetworkOptions};
use super::{ok, parse, parse_ip, DockerError, Reply};
use crate::daemon::Daemon;
use crate::error::{Error, Result};
use crate::model::{DockerNetwork, NetworkSpec};

pub(super) async fn net_capabilities(State(d): State<Arc<Daemon>>) -> Response {
    let scope = &d.config.docker.scope;
    ok(json!({ "Scope": scope, "ConnectivityScope": scope }))
}

pub(super) async fn allocate_network() -> Response {
    ok(json!({ "Options": {} }))
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct IpamData {
    #[serde(default)]
    pool: String,
    #[serde(default)]
    gateway: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct CreateNetwork {
    #[serde(rename = "NetworkID")]
    network_id: String,
    #[serde(default)]
    options: HashMap<String, Value>,
    #[serde(default, rename = "IPv4Data")]
    ipv4_data: Option<Vec<IpamData>>,
    #[serde(default, rename = "IPv6Data")]
    ipv6_data: Option<Vec<IpamData>>,
}

/// The one IPAM entry of a family: pool and gateway.
fn one_subnet(
    family: &str,
    data: &Option<Vec<IpamData>>,
) -> Result<Option<(IpNet, Option<IpAddr>)>> {
    let data = data.as_deref().unwrap_or_default();
    let entry = match data {
        [] => return Ok(None),
        [one] => one,
        _ => {
            return Err(Error::InvalidInput(format!(
                "a Courier network has one {family} subnet: give one --subnet of that family"
            )))
        }
    };
    let pool: IpNet = entry.pool.parse().map_err(|_| {
        Error::InvalidInput(format!("{family} pool {:?} is not a CIDR", entry.pool))
    })?;
    let gw = match entry.gateway.as_str() {
        "" => None,
        g => Some(parse_ip("gateway", g)?),
    };
    Ok(Some((pool.trunc(), gw)))
}

/// How long a network call waits for a backend that is not connected yet (a daemon just
/// started: Docker does not retry a failed CreateNetwork).
const BACKEND_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

/// Runs `f` again while it answers "try again later", up to [`BACKEND_WAIT`]. Only for calls
/// that are idempotent as a whole.
async fn while_backend_comes<F, Fut>(mut f: F) -> Reply
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Reply>,
{
    let deadline = std::time::Instant::now() + BACKEND_WAIT;
    loop {
        match f().await {
            Err(DockerError(e))
                if e.code() == crate::error::code::TRY_AGAIN_LATER
                    && std::time::Instant::now() < deadline =>
            {
                tracing::debug!(error = %e, "backend not ready; retrying");
                tokio::time::sleep(std::time::Duration::from_millis(250)).await;
            }
            other => return other,
        }
    }
}

pub(super) async fn create_network(State(d): State<Arc<Daemon>>, body: Bytes) -> Reply {
    while_backend_comes(|| create_network_once(d.clone(), body.clone())).await
}

async fn create_network_once(d: Arc<Daemon>, body: Bytes) -> Reply {
    let req: CreateNetwork = parse("CreateNetwork", &body)?;
    // Docker's ids are hex; anything else would also cut a character in two below.
    if req.network_id.len() < 12 || !req.network_id.bytes().all(|b| b.is_ascii_alphanumeric()) {
        return Err(Error::InvalidInput(format!(
            "network id {:?} is not a Docker network id",
            req.network_id
        ))
        .into());
    }
    let store = &d.attacher.store;
    if store.docker_network(&req.network_id).await?.is_some() {
        return Ok(ok(json!({})));
    }
    let opts = NetworkOptions::parse(&generic_options(&req.options)?)?;
    let (subnet4, gw4) = one_subnet("IPv4", &req.ipv4_data)?.ok_or_else(|| {
        Error::InvalidInput("the network has no IPv4 subnet: give --subnet".into())
    })?;
    let v6 = one_subnet("IPv6", &req.ipv6_data)?;
    let reg = &d.attacher.registry;
    if let Some(b) = &opts.binding {
        // Refused before anything is made when this host cannot serve it.
        reg.binding(Some(b))?;
    }
    let (name, created) = match &opts.network {
        Some(existing) => (existing.clone(), false),
        None => (format!("docker-{}", &req.network_id[..12]), true),
    };
    let network = match reg.network(&name).await {
        // A repeated CreateNetwork whose record was lost, or another host's (global scope).
        Ok((_, n)) => n,
        Err(Error::UnknownNetwork(_)) if created => {
            let backend_id = match (&opts.backend, &opts.neutron_net) {
                (Some(b), _) => b.clone(),
                (None, Some(_)) => crate::backend::neutron::ID.to_string(),
                (None, None) => reg.default_backend.clone(),
            };
            let backend = reg.backend(&backend_id)?;
            let spec = match &opts.neutron_net {
                Some(existing) => NetworkSpec {
                    name: name.clone(),
                    subnet: None,
                    gateway: None,
                    subnet6: None,
                    gateway6: None,
                    existing: Some(existing.clone()),
                    exclude_ips: vec![],
                },
                None => NetworkSpec {
                    name: name.clone(),
                    subnet: as_v4(&subnet4),
                    gateway: gw4.and_then(|g| match g {
                        IpAddr::V4(g) => Some(g),
                        IpAddr::V6(_) => None,
                    }),
                    subnet6: v6.as_ref().and_then(|(s, _)| match s {
                        IpNet::V6(s) => Some(*s),
                        IpNet::V4(_) => None,
                    }),
                    gateway6: v6.as_ref().and_then(|(_, g)| match g {
                        Some(IpAddr::V6(g)) => Some(*g),
                        _ => None,
                    }),
                    existing: None,
                    exclude_ips: vec![],
                },
            };
            let n = backend.create_network(&spec).await?;
            if spec.existing.is_some() && n.subnet.map(IpNet::V4) != Some(subnet4) {
                let have = n.subnet.map(|s| s.to_string()).unwrap_or("none".into());
                if let Err(e) = backend.delete_network(&name).await {
                    tracing::error!(network = %name, error = %e, "removing the registration again failed");
                }
                return Err(Error::InvalidInput(format!(
                    "Neutron network {} has IPv4 subnet {have}, not --subnet {subnet4}: give --subnet {have}",
                    spec.existing.unwrap_or_default()
                ))
                .into());
            }
            n
        }
        Err(e) => return Err(e.into()),
    };
    if network.subnet.map(IpNet::V4) != Some(subnet4) {
        return Err(Error::InvalidInput(format!(
            "Courier network {name} has subnet {}, not --subnet {subnet4}: give --subnet {}",
            network
                .subnet
                .map(|s| s.to_string())
                .unwrap_or("none".into()),
            network
                .subnet
                .map(|s| s.to_string())
                .unwrap_or("none".into()),
        ))
        .into());
    }
    if let Some((s6, _)) = &v6 {
        if network.subnet6.map(IpNet::V6) != Some(*s6) {
            return Err(Error::InvalidInput(format!(
                "Courier network {name} has IPv6 subnet {}, not {s6}",
                network
                    .subnet6
                    .map(|s| s.to_string())
                    .unwrap_or("none".into())
            ))
            .into());
        }
    }
    store
        .put_docker_network(&DockerNetwork {
            network_id: req.network_id.clone(),
            name: name.clone(),
            backend: network.backend.clone(),
            created,
            pool4: pool_id(&subnet4),
            pool6: v6.as_ref().map(|(s, _)| pool_id(s)),
            binding: opts.binding.clone(),
            scope: Some(d.config.docker.scope.clone()),
            since: crate::model::unix_now(),
        })
        .await?;
    tracing::info!(docker_network = %req.network_id, network = %name, backend = %network.backend, created, "docker network ready");
    Ok(ok(json!({})))
}

fn as_v4(n: &IpNet) -> Option<Ipv4Net> {
    match n {
        IpNet::V4(v) => Some(*v),
        IpNet::V6(_) => None,
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct NetworkRef {
    #[serde(rename = "NetworkID")]
    network_id: String,
}

pub(super) async fn docker_network(d: &Daemon, id: &str) -> Result<Option<DockerNetwork>> {
    d.attacher.store.docker_network(id).await
}

pub(super) async fn delete_network(State(d): State<Arc<Daemon>>, body: Bytes) -> Reply {
    while_backend_comes(|| delete_network_once(d.clone(), body.clone())).await
}

async fn delete_network_once(d: Arc<Daemon>, body: Bytes) -> Reply {
    let req: NetworkRef = parse("DeleteNetwork", &body)?;
    let Some(net) = docker_network(&d, &req.network_id).await? else {
        return Ok(ok(json!({})));
    };
    remove_network(&d, &net).await?;
    Ok(ok(json!({})))
}

/// What DeleteNetwork does: this network's leftover endpoints here, then what CreateNetwork
/// made (as the backend allows), then the record. Ok(true) when the backend network went too.
pub(super) async fn remove_network(d: &Daemon, net: &DockerNetwork) -> Result<bool> {
    // Docker deletes a network only once it has no endpoints: what is left of this network
    // here is a leftover of an outage (a `docker rm -f` while Courier was down). Release it now
    // rather than at the next reconcile, so the network can go.
    let left = d
        .attacher
        .staged_records(crate::state::DockerKey::Network(&net.network_id), |a| {
            a.network == net.name
                && a.docker.as_ref().and_then(|x| x.network_id.as_deref())
                    == Some(net.network_id.as_str())
        })
        .await?;
    for a in left {
        if !a.netns.is_empty() && !crate::netns::probe(&a.netns).certainly_gone(a.netns_inode) {
            return Err(Error::InvalidInput(format!(
                "endpoint {} of network {} is still joined to sandbox {}: disconnect it first",
                a.docker.and_then(|x| x.endpoint_id).unwrap_or_default(),
                net.network_id,
                a.netns
            )));
        }
        tracing::warn!(attachment = %a.id, "releasing a Docker endpoint left over on a network being deleted");
        d.attacher.release(&a.id).await?;
    }
    let global = net.scope.as_deref().unwrap_or(&d.config.docker.scope) == "global";
    let mut deleted = false;
    if net.created {
        // The backend decides what goes: a network Courier made is deleted, a registered one
        // only unregistered — and neither while a port is on it (anyone's for a made one,
        // Courier's of any host for a registration), so the answer is "in use" then.
        match d.attacher.registry.network(&net.name).await {
            Ok((backend, _)) => match d
                .attacher
                .delete_network_and_pools(&*backend, &net.name)
                .await
            {
                Ok(()) => deleted = true,
                // Global scope: every host that uses the Docker network has it; other hosts'
                // containers are still on it. Only this host's registration goes; the last
                // host's DeleteNetwork removes the backend network.
                Err(Error::NetworkInUse { ports, .. }) if global => {
                    tracing::info!(docker_network = %net.network_id, network = %net.name, ports,
                        "global-scope network still in use (other hosts' ports): only this host's registration goes");
                }
                Err(e) => return Err(e),
            },
            Err(Error::UnknownNetwork(_)) => {}
            Err(e) => return Err(e),
        }
    }
    d.attacher
        .store
        .delete_docker_network(&net.network_id)
        .await?;
    tracing::info!(docker_network = %net.network_id, network = %net.name, deleted, "docker network removed");
    Ok(deleted)
}
