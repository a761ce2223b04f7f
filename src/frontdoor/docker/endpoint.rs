//! The NetworkDriver's endpoints: CreateEndpoint (the edge, its interface left in the host
//! netns), EndpointOperInfo, Join (the sandbox; Docker moves the interface), Leave and
//! DeleteEndpoint.

use std::collections::HashMap;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::State;
use serde::Deserialize;
use serde_json::{json, Value};

use super::ipam::leases_holding;
use super::network::docker_network;
use super::options::endpoint_port_option;
use super::user_ports::{bindable_or_refuse, not_named, user_port_holding};
use super::{ok, parse, parse_ip, Reply};
use crate::daemon::Daemon;
use crate::error::{Error, Result};
use crate::hooks;
use crate::model::{AttachRequest, Attachment, DockerNetwork, DockerRef};

#[derive(Deserialize, Default)]
#[serde(rename_all = "PascalCase")]
struct EndpointInterface {
    #[serde(default)]
    address: String,
    #[serde(default, rename = "AddressIPv6")]
    address_ipv6: String,
    #[serde(default)]
    mac_address: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct CreateEndpoint {
    #[serde(rename = "NetworkID")]
    network_id: String,
    #[serde(rename = "EndpointID")]
    endpoint_id: String,
    #[serde(default)]
    interface: Option<EndpointInterface>,
    /// `--driver-opt`s of `docker network connect` land here.
    #[serde(default)]
    options: Option<HashMap<String, Value>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct EndpointRef {
    #[serde(rename = "NetworkID")]
    #[allow(dead_code)]
    network_id: String,
    #[serde(rename = "EndpointID")]
    endpoint_id: String,
}

async fn endpoint_record(d: &Daemon, endpoint_id: &str) -> Result<Option<Attachment>> {
    Ok(d.attacher
        .staged_records(crate::state::DockerKey::Endpoint(endpoint_id), |a| {
            a.docker.as_ref().and_then(|x| x.endpoint_id.as_deref()) == Some(endpoint_id)
        })
        .await?
        .into_iter()
        .next())
}

pub(super) async fn create_endpoint(State(d): State<Arc<Daemon>>, body: Bytes) -> Reply {
    let req: CreateEndpoint = parse("CreateEndpoint", &body)?;
    let iface = req.interface.unwrap_or_default();
    let Some(net) = docker_network(&d, &req.network_id).await? else {
        return Err(Error::InvalidInput(format!(
            "network {} is not a Courier network on this host: create it with docker network create -d courier",
            req.network_id
        ))
        .into());
    };
    if let Some(att) = endpoint_record(&d, &req.endpoint_id).await? {
        // A repeat: the same answer as the first time.
        return Ok(ok(endpoint_reply(&att, &iface, &net)?));
    }
    let ip = match iface.address.as_str() {
        "" => None,
        a => Some(parse_ip("endpoint address", a)?),
    };
    // The lease RequestAddress made for this address; none when another IPAM gave it, or
    // when it is the address of a port Courier did not make.
    let lease = match ip {
        Some(ip) => leases_holding(&d, &net, ip).await?.into_iter().next(),
        None => None,
    };
    let wanted_port = endpoint_port_option(&req.options)?;
    let mac = Some(iface.mac_address.clone()).filter(|m| !m.is_empty());
    // A port Courier did not make holding the address is bound only when the endpoint names
    // it (`courier.port`), and only with its own MAC: checked before anything is touched.
    let holder = match (&lease, ip) {
        (None, Some(ip)) => user_port_holding(&d, &net, ip).await?.map(|h| (ip, h)),
        _ => None,
    };
    let existing = match (&holder, &wanted_port) {
        (Some((ip, h)), Some(p)) if &h.id == p => {
            bindable_or_refuse(&d, &net, *ip, h).await?;
            if !mac.as_deref().is_some_and(|m| m.eq_ignore_ascii_case(&h.mac)) {
                return Err(Error::InvalidInput(format!(
                    "port {p} has MAC {}, the container's interface would get {}: run it with --mac-address {}",
                    h.mac,
                    mac.as_deref().unwrap_or("another"),
                    h.mac
                ))
                .into());
            }
            Some(p.clone())
        }
        (Some((_, h)), Some(p)) => {
            return Err(Error::InvalidInput(format!(
                "the endpoint's address {} is port {}'s, not port {p}'s: give port {p}'s address with --ip",
                iface.address, h.id
            ))
            .into())
        }
        (Some((ip, h)), None) => {
            bindable_or_refuse(&d, &net, *ip, h).await?;
            return Err(not_named(*ip, h).into());
        }
        (None, Some(p)) => {
            let is_it = lease
                .as_ref()
                .and_then(|l| l.existing_port.as_ref())
                .is_some_and(|e| &e.id == p);
            if !is_it {
                return Err(Error::InvalidInput(format!(
                    "the endpoint's address {} is not port {p}'s: give the port's address with --ip (and its MAC with --mac-address)",
                    iface.address
                ))
                .into());
            }
            None
        }
        (None, None) => None,
    };
    let att = match lease {
        Some(l) => l,
        None => {
            d.attacher
                .reserve(
                    AttachRequest {
                        network: net.name.clone(),
                        ip,
                        mac,
                        port: existing,
                        device: None,
                        binding: net.binding.clone(),
                        ..Default::default()
                    },
                    DockerRef {
                        pool_id: net.pool4.clone(),
                        network_id: Some(net.network_id.clone()),
                        leased: false,
                        ..Default::default()
                    },
                    Some(net.backend.clone()),
                )
                .await?
        }
    };
    let att = d
        .attacher
        .plug_reserved(&att.id, &req.endpoint_id, &req.network_id)
        .await;
    let att = match att {
        Ok(a) => a,
        Err(e) => return Err(e.into()),
    };
    Ok(ok(endpoint_reply(&att, &iface, &net)?))
}

/// CreateEndpoint's answer: Docker takes what the driver fills in only where it had nothing.
fn endpoint_reply(
    att: &Attachment,
    iface: &EndpointInterface,
    net: &DockerNetwork,
) -> Result<Value> {
    let port = port_of(att)?;
    let mut out = serde_json::Map::new();
    if iface.mac_address.is_empty() {
        out.insert("MacAddress".into(), json!(port.mac));
    }
    if iface.address.is_empty() {
        if let Some(a) = port.ips.iter().find(|i| i.addr().is_ipv4()) {
            out.insert("Address".into(), json!(a.to_string()));
        }
    }
    if iface.address_ipv6.is_empty() && net.pool6.is_some() {
        if let Some(a) = port.ips.iter().find(|i| i.addr().is_ipv6()) {
            out.insert("AddressIPv6".into(), json!(a.to_string()));
        }
    }
    Ok(json!({ "Interface": out }))
}

/// A plugged record's port (always there once the port step ran).
fn port_of(att: &Attachment) -> Result<&crate::model::LogicalPort> {
    att.port
        .as_ref()
        .ok_or_else(|| Error::Internal(format!("attachment {} has no port recorded", att.id)))
}

pub(super) async fn endpoint_info(State(d): State<Arc<Daemon>>, body: Bytes) -> Reply {
    let req: EndpointRef = parse("EndpointOperInfo", &body)?;
    let Some(att) = endpoint_record(&d, &req.endpoint_id).await? else {
        return Ok(ok(json!({ "Value": {} })));
    };
    // Docker asks once the container runs: its sandbox netns exists now; learn its identity.
    if let Err(e) = d.attacher.note_sandbox(&att.id).await {
        tracing::warn!(attachment = %att.id, error = %e, "recording the sandbox's identity failed");
    }
    let port = att.port.clone();
    Ok(ok(json!({ "Value": {
        "attachment": att.id,
        "backend": att.backend,
        "network": att.network,
        "port_id": port.as_ref().map(|p| p.id.clone()),
        "port_name": att.port_name,
        // The data plane's state: Ready means ovn-controller installed the port's flows.
        "status": if att.phase == crate::model::Phase::Ready { "ACTIVE" } else { "DOWN" },
    }})))
}

pub(super) async fn delete_endpoint(State(d): State<Arc<Daemon>>, body: Bytes) -> Reply {
    let req: EndpointRef = parse("DeleteEndpoint", &body)?;
    if let Some(att) = endpoint_record(&d, &req.endpoint_id).await? {
        d.attacher.unplug_endpoint(&att.id).await?;
    }
    Ok(ok(json!({})))
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct Join {
    #[serde(rename = "NetworkID")]
    #[allow(dead_code)]
    network_id: String,
    #[serde(rename = "EndpointID")]
    endpoint_id: String,
    sandbox_key: String,
}

pub(super) async fn join(State(d): State<Arc<Daemon>>, body: Bytes) -> Reply {
    hooks::point("docker-join").await;
    let req: Join = parse("Join", &body)?;
    if req.sandbox_key.is_empty() {
        return Err(Error::InvalidInput("Join without a SandboxKey".into()).into());
    }
    let att = endpoint_record(&d, &req.endpoint_id)
        .await?
        .ok_or_else(|| {
            Error::InvalidInput(format!(
                "endpoint {} does not exist: create it first (CreateEndpoint)",
                req.endpoint_id
            ))
        })?;
    let att = d.attacher.join(&att.id, &req.sandbox_key).await?;
    d.attacher.watch_sandbox(&att.id);
    let binding = d.attacher.registry.binding(Some(att.edge.kind()))?;
    let port = port_of(&att)?;
    let gw4 = port.gateways.iter().find(|g| g.is_ipv4());
    let gw6 = port.gateways.iter().find(|g| g.is_ipv6());
    let routes: Vec<Value> = port
        .routes
        .iter()
        .map(|r| json!({ "Destination": r.dst.to_string(), "RouteType": 0, "NextHop": r.gw.to_string() }))
        .collect();
    Ok(ok(json!({
        "InterfaceName": { "SrcName": binding.handoff_ifname(&att), "DstPrefix": "eth" },
        "Gateway": gw4.map(|g| g.to_string()).unwrap_or_default(),
        "GatewayIPv6": gw6.map(|g| g.to_string()).unwrap_or_default(),
        "StaticRoutes": routes,
        "DisableGatewayService": true,
    })))
}

pub(super) async fn leave(State(d): State<Arc<Daemon>>, body: Bytes) -> Reply {
    hooks::point("docker-leave").await;
    let req: EndpointRef = parse("Leave", &body)?;
    if let Some(att) = endpoint_record(&d, &req.endpoint_id).await? {
        d.attacher.leave(&att.id).await?;
    }
    Ok(ok(json!({})))
}
