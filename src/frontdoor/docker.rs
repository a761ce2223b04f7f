//! Docker's libnetwork remote-driver protocol: a NetworkDriver and an IpamDriver on one unix
//! socket (`/run/docker/plugins/courier.sock` → driver `courier`), HTTP POST + JSON, errors as
//! `{"Err": "..."}`. A drop-in for kuryr-libnetwork: its option names are accepted.
//!
//! How Docker's calls map onto Courier (the backend is the IPAM, so the port is made when
//! Docker asks for the address):
//! - `RequestPool` → a pool id naming the subnet (`courier:CIDR`); no state. Without `--subnet`
//!   a free /24 of `[docker] default_pool`.
//! - `RequestAddress` (gateway) → the gateway, nothing made; (endpoint) → `Attacher::reserve`:
//!   a logical port with Docker's MAC and the requested or a backend-picked address, held
//!   `Reserved`. The IPv6 request that follows returns the same port's IPv6 address.
//! - `CreateNetwork` → a Courier network `docker-<id[:12]>` on the default backend (or the one
//!   `courier.backend` names), or a registration of an existing Neutron network
//!   (`neutron.net.uuid` / `neutron.net.name`), or a reference to an existing Courier network
//!   (`courier.network`); recorded in the store by Docker's id.
//! - `CreateEndpoint` → `Attacher::plug_reserved`: the edge, its interface left in the host
//!   netns; `Join` → the sandbox and the interface's name (`SrcName`); Docker moves it and sets
//!   its addresses and the routes Join returns.
//! - `Leave`, `DeleteEndpoint` (the edge goes), `ReleaseAddress` (the port goes),
//!   `DeleteNetwork` (what CreateNetwork made goes).
//!
//! Every call is idempotent: Docker repeats them after restarts.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::Router;
use ipnet::{IpNet, Ipv4Net};
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::{json, Value};

use crate::daemon::Daemon;
use crate::error::{Error, Result};
use crate::hooks;
use crate::model::{AttachRequest, Attachment, DockerNetwork, DockerRef, NetworkSpec};

pub const CONTENT_TYPE: &str = "application/vnd.docker.plugins.v1.2+json";
/// Prefix of the pool ids Courier's IPAM hands out.
const POOL_PREFIX: &str = "courier:";
const LOCAL_SPACE: &str = "courier-local";
const GLOBAL_SPACE: &str = "courier-global";
/// Docker's option keys.
const GENERIC: &str = "com.docker.network.generic";
const REQUEST_TYPE: &str = "RequestAddressType";
const GATEWAY_TYPE: &str = "com.docker.network.gateway";
const MAC_OPTION: &str = "com.docker.network.endpoint.macaddress";

pub fn router(d: Arc<Daemon>) -> Router {
    Router::new()
        .route("/Plugin.Activate", post(activate))
        .route("/NetworkDriver.GetCapabilities", post(net_capabilities))
        .route("/NetworkDriver.CreateNetwork", post(create_network))
        .route("/NetworkDriver.DeleteNetwork", post(delete_network))
        .route("/NetworkDriver.AllocateNetwork", post(allocate_network))
        .route("/NetworkDriver.FreeNetwork", post(nothing))
        .route("/NetworkDriver.CreateEndpoint", post(create_endpoint))
        .route("/NetworkDriver.EndpointOperInfo", post(endpoint_info))
        .route("/NetworkDriver.DeleteEndpoint", post(delete_endpoint))
        .route("/NetworkDriver.Join", post(join))
        .route("/NetworkDriver.Leave", post(leave))
        .route("/NetworkDriver.DiscoverNew", post(nothing))
        .route("/NetworkDriver.DiscoverDelete", post(nothing))
        .route("/NetworkDriver.ProgramExternalConnectivity", post(nothing))
        .route("/NetworkDriver.RevokeExternalConnectivity", post(nothing))
        .route("/IpamDriver.GetCapabilities", post(ipam_capabilities))
        .route("/IpamDriver.GetDefaultAddressSpaces", post(address_spaces))
        .route("/IpamDriver.RequestPool", post(request_pool))
        .route("/IpamDriver.ReleasePool", post(nothing))
        .route("/IpamDriver.RequestAddress", post(request_address))
        .route("/IpamDriver.ReleaseAddress", post(release_address))
        .fallback(unknown_method)
        .layer(axum::middleware::from_fn(log_call))
        .with_state(d)
}

/// Every call with its status and duration (debug), so a slow step shows which one it is.
async fn log_call(req: axum::extract::Request, next: axum::middleware::Next) -> Response {
    let method = req.uri().path().trim_start_matches('/').to_string();
    let t = std::time::Instant::now();
    if hooks::capturing() {
        return capture_call(&method, req, next).await;
    }
    let resp = next.run(req).await;
    tracing::debug!(method = %method, status = resp.status().as_u16(),
        ms = t.elapsed().as_secs_f64() * 1000.0, "docker call");
    resp
}

/// Test hooks only: the call and its answer, into the capture file.
async fn capture_call(
    method: &str,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let (parts, body) = req.into_parts();
    let request = axum::body::to_bytes(body, 1 << 20)
        .await
        .unwrap_or_default();
    let resp = next
        .run(axum::extract::Request::from_parts(
            parts,
            axum::body::Body::from(request.clone()),
        ))
        .await;
    let (parts, body) = resp.into_parts();
    let response = axum::body::to_bytes(body, 1 << 20)
        .await
        .unwrap_or_default();
    hooks::capture(method, &request, parts.status.as_u16(), &response);
    Response::from_parts(parts, axum::body::Body::from(response))
}

/// A reply in the plugin protocol's content type.
fn reply(status: StatusCode, body: Value) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, CONTENT_TYPE)],
        body.to_string(),
    )
        .into_response()
}

fn ok(body: Value) -> Response {
    reply(StatusCode::OK, body)
}

/// An error as Docker reads it: `{"Err": "..."}`.
struct DockerError(Error);

impl From<Error> for DockerError {
    fn from(e: Error) -> Self {
        DockerError(e)
    }
}

impl IntoResponse for DockerError {
    fn into_response(self) -> Response {
        let status =
            StatusCode::from_u16(self.0.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        tracing::warn!(error = %self.0, "docker: request failed");
        reply(status, json!({ "Err": self.0.to_string() }))
    }
}

type Reply = std::result::Result<Response, DockerError>;

fn parse<T: DeserializeOwned>(method: &str, body: &Bytes) -> Result<T> {
    serde_json::from_slice(body).map_err(|e| {
        Error::Decode(format!(
            "{method}: the request body is not what Docker sends ({e})"
        ))
    })
}

async fn unknown_method(uri: axum::http::Uri) -> Response {
    reply(
        StatusCode::NOT_FOUND,
        json!({ "Err": format!("{}: not a method of Courier's NetworkDriver or IpamDriver", uri.path()) }),
    )
}

async fn nothing() -> Response {
    ok(json!({}))
}

async fn activate() -> Response {
    ok(json!({ "Implements": ["NetworkDriver", "IpamDriver"] }))
}

async fn net_capabilities(State(d): State<Arc<Daemon>>) -> Response {
    let scope = &d.config.docker.scope;
    ok(json!({ "Scope": scope, "ConnectivityScope": scope }))
}

async fn ipam_capabilities() -> Response {
    // Docker's MAC becomes the port's, so the interface Docker configures matches the port.
    ok(json!({ "RequiresMACAddress": true }))
}

async fn address_spaces() -> Response {
    ok(json!({
        "LocalDefaultAddressSpace": LOCAL_SPACE,
        "GlobalDefaultAddressSpace": GLOBAL_SPACE,
    }))
}

async fn allocate_network() -> Response {
    ok(json!({ "Options": {} }))
}

// ---- IPAM ----

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
fn pool_subnet(pool_id: &str) -> Result<IpNet> {
    pool_id
        .strip_prefix(POOL_PREFIX)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| {
            Error::InvalidInput(format!(
                "pool {pool_id:?} is not one of Courier's (they look like {POOL_PREFIX}10.81.0.0/24): create the network with --ipam-driver courier"
            ))
        })
}

fn pool_id(subnet: &IpNet) -> String {
    format!("{POOL_PREFIX}{}", subnet.trunc())
}

async fn request_pool(State(d): State<Arc<Daemon>>, body: Bytes) -> Reply {
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
        IpNet::V4(free_pool(&d).await?)
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
async fn free_pool(d: &Daemon) -> Result<Ipv4Net> {
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

fn parse_ip(what: &str, s: &str) -> Result<IpAddr> {
    let bare = s.split('/').next().unwrap_or(s);
    bare.parse()
        .map_err(|_| Error::InvalidInput(format!("{what} {s:?} is not an IP address")))
}

/// The port's address of `subnet`'s family, with the subnet's prefix.
fn address_in(att: &Attachment, subnet: &IpNet) -> Option<IpNet> {
    let port = att.port.as_ref()?;
    port.ips
        .iter()
        .find(|ip| subnet.contains(&ip.addr()))
        .map(|ip| IpNet::new(ip.addr(), subnet.prefix_len()).unwrap_or(*ip))
}

async fn request_address(State(d): State<Arc<Daemon>>, body: Bytes) -> Reply {
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

/// A port Courier did not make (no attachment's) that holds `ip` on `net`, if its backend has
/// such ports (OVN direct binds none: an address in use fails the port's create instead).
async fn user_port_holding(
    d: &Daemon,
    net: &DockerNetwork,
    ip: IpAddr,
) -> Result<Option<crate::model::LogicalPort>> {
    let (backend, network) = d
        .attacher
        .registry
        .network_in(&net.backend, &net.name)
        .await?;
    let q = crate::backend::PortQuery::Holding {
        network: network.backend_id.clone(),
        ip,
    };
    Ok(backend
        .find_ports(&q)
        .await?
        .into_iter()
        .find(|p| p.attachment.is_none()))
}

/// A port Courier did not make with MAC `mac` on `net` (at most one: a network's MACs are
/// unique).
async fn user_port_with_mac(
    d: &Daemon,
    net: &DockerNetwork,
    mac: &str,
) -> Result<Option<crate::model::LogicalPort>> {
    let (backend, network) = d
        .attacher
        .registry
        .network_in(&net.backend, &net.name)
        .await?;
    let q = crate::backend::PortQuery::WithMac {
        network: network.backend_id.clone(),
        mac: mac.to_ascii_lowercase(),
    };
    Ok(backend
        .find_ports(&q)
        .await?
        .into_iter()
        .find(|p| p.attachment.is_none()))
}

/// Ok when `holder` (a port Courier did not make, holding `ip`) is one Courier could bind if
/// named: bound to nothing. Else the error says what it is bound to (e.g. Neutron's own
/// `network:distributed` metadata port) and to pick another address. Reads only.
async fn bindable_or_refuse(
    d: &Daemon,
    net: &DockerNetwork,
    ip: IpAddr,
    holder: &crate::model::LogicalPort,
) -> Result<()> {
    let (backend, network) = d
        .attacher
        .registry
        .network_in(&net.backend, &net.name)
        .await?;
    let inspected = match backend.existing_ports() {
        Some(e) => e.inspect_port(&holder.id, &network).await,
        None => Err(crate::backend::Ability::ExistingPorts.missing(backend.id())),
    };
    match inspected {
        Ok(_) => Ok(()),
        Err(Error::InvalidInput(why)) => Err(Error::InvalidInput(format!(
            "address {ip} is in use by port {}, which Courier did not make and cannot bind ({why}): pick another address",
            holder.id
        ))),
        Err(e) => Err(e),
    }
}

/// The error for an address of a port nobody binds that the endpoint did not name.
fn not_named(ip: IpAddr, holder: &crate::model::LogicalPort) -> Error {
    Error::InvalidInput(format!(
        "address {ip} is in use by port {id} (MAC {mac}), which Courier did not make: name it by id to bind it \
         (docker run --network name=NETWORK,ip={ip},driver-opt=courier.port={id} --mac-address {mac}), or pick another address",
        id = holder.id,
        mac = holder.mac
    ))
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

async fn release_address(State(d): State<Arc<Daemon>>, body: Bytes) -> Reply {
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
async fn leases_holding(d: &Daemon, net: &DockerNetwork, ip: IpAddr) -> Result<Vec<Attachment>> {
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

// ---- NetworkDriver ----

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

/// `-o` options Courier understands: its own and kuryr-libnetwork's.
#[derive(Debug, Default, PartialEq)]
pub struct NetworkOptions {
    /// `courier.network`: an existing Courier network (any backend); `docker network rm`
    /// leaves it.
    pub network: Option<String>,
    /// `courier.backend`: where a new network goes (default: the daemon's default backend).
    pub backend: Option<String>,
    /// `courier.binding`: the edge binding of this network's endpoints (default: the daemon's
    /// default binding), e.g. `ipvlan` or `vlan` for containers inside a VM.
    pub binding: Option<String>,
    /// `neutron.net.uuid` / `neutron.net.name`: register this existing Neutron network.
    pub neutron_net: Option<String>,
    /// `neutron.subnet.uuid` / `neutron.subnet.name`: accepted; the subnet must be the one of
    /// `--subnet` (Courier picks the network's subnet of each family).
    pub neutron_subnet: Option<String>,
}

impl NetworkOptions {
    pub fn parse(generic: &HashMap<String, String>) -> Result<NetworkOptions> {
        let mut o = NetworkOptions::default();
        for (k, v) in generic {
            let v = Some(v.clone()).filter(|v| !v.is_empty());
            match k.as_str() {
                "courier.network" => o.network = v,
                "courier.backend" => o.backend = v,
                "courier.binding" => o.binding = v,
                "neutron.net.uuid" | "neutron.net.name" => {
                    if o.neutron_net.is_some() {
                        return Err(Error::InvalidInput(
                            "give one of -o neutron.net.uuid and -o neutron.net.name".into(),
                        ));
                    }
                    o.neutron_net = v;
                }
                "neutron.subnet.uuid" | "neutron.subnet.name" => o.neutron_subnet = v,
                "neutron.pool.uuid" | "neutron.pool.name" | "neutron.subnet.v6.uuid"
                | "neutron.subnet.v6.name" | "neutron.pool.v6.uuid" | "neutron.pool.v6.name"
                | "neutron.net.shared" => {
                    return Err(Error::InvalidInput(format!(
                        "-o {k} is not supported by Courier yet: create the Neutron network with its subnet pool, then use -o neutron.net.uuid=ID and --subnet"
                    )))
                }
                k if k.starts_with("courier.") || k.starts_with("neutron.") => {
                    return Err(Error::InvalidInput(format!(
                        "unknown option -o {k}: Courier knows courier.network, courier.backend, courier.binding, neutron.net.uuid, neutron.net.name, neutron.subnet.uuid, neutron.subnet.name"
                    )))
                }
                _ => {}
            }
        }
        if o.network.is_some() && (o.neutron_net.is_some() || o.backend.is_some()) {
            return Err(Error::InvalidInput(
                "-o courier.network names an existing Courier network: drop -o courier.backend / neutron.net.*".into(),
            ));
        }
        if o.neutron_net.is_some() && o.backend.as_deref().is_some_and(|b| b != "neutron") {
            return Err(Error::InvalidInput(
                "-o neutron.net.* is a Neutron network: drop -o courier.backend or make it neutron"
                    .into(),
            ));
        }
        if o.neutron_subnet.is_some() && o.neutron_net.is_none() {
            return Err(Error::InvalidInput(
                "-o neutron.subnet.* needs -o neutron.net.uuid or neutron.net.name".into(),
            ));
        }
        Ok(o)
    }
}

fn generic_options(options: &HashMap<String, Value>) -> Result<HashMap<String, String>> {
    let Some(g) = options.get(GENERIC) else {
        return Ok(HashMap::new());
    };
    let Some(map) = g.as_object() else {
        return Ok(HashMap::new());
    };
    map.iter()
        .map(|(k, v)| match v {
            Value::String(s) => Ok((k.clone(), s.clone())),
            Value::Bool(b) => Ok((k.clone(), b.to_string())),
            Value::Number(n) => Ok((k.clone(), n.to_string())),
            other => Err(Error::InvalidInput(format!(
                "-o {k}: value {other} is not a string"
            ))),
        })
        .collect()
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

async fn create_network(State(d): State<Arc<Daemon>>, body: Bytes) -> Reply {
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

async fn docker_network(d: &Daemon, id: &str) -> Result<Option<DockerNetwork>> {
    d.attacher.store.docker_network(id).await
}

async fn delete_network(State(d): State<Arc<Daemon>>, body: Bytes) -> Reply {
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
async fn remove_network(d: &Daemon, net: &DockerNetwork) -> Result<bool> {
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
            Ok((backend, _)) => match backend.delete_network(&net.name).await {
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

/// What reconciling Courier's Docker networks against Docker's own list did.
#[derive(Debug, Default)]
pub struct NetworksReconciled {
    /// Docker network ids whose record (and what CreateNetwork made) went.
    pub removed: Vec<String>,
    /// (item, error) of what could not be done; the next pass retries.
    pub errors: Vec<(String, Error)>,
}

/// Reconcile (at start and every pass): a Docker network Courier has a record of but the Docker
/// Engine (`[docker] engine`) no longer lists was removed while Courier was down (Docker
/// forgets a network whatever the driver answers, and cannot tell a driver that was not
/// there): it is removed as DeleteNetwork would. A record younger than the lease timeout is
/// left alone (Docker lists a network only after CreateNetwork answered). Docker unreachable:
/// nothing is removed, and the error says so. No record: Docker is not asked.
pub async fn reconcile_networks(d: &Daemon) -> NetworksReconciled {
    let mut out = NetworksReconciled::default();
    let nets = match d.attacher.store.docker_networks().await {
        Ok(n) => n,
        Err(e) => {
            out.errors.push(("docker networks".into(), e));
            return out;
        }
    };
    if nets.is_empty() {
        return out;
    }
    let listed = match engine_networks(&d.config.docker.engine_socket()).await {
        Ok(l) => l,
        Err(e) => {
            tracing::warn!(engine = %d.config.docker.engine, error = %e,
                "Docker networks not reconciled: the Docker Engine does not answer");
            out.errors.push(("docker networks".into(), e));
            return out;
        }
    };
    let grace = d.attacher.lease_timeout.as_secs();
    let now = crate::model::unix_now();
    for net in nets {
        if listed.contains(&net.network_id) || now.saturating_sub(net.since) <= grace {
            continue;
        }
        tracing::warn!(docker_network = %net.network_id, network = %net.name,
            "Docker no longer has this network (removed while Courier was down): removing it");
        match remove_network(d, &net).await {
            Ok(_) => out.removed.push(net.network_id),
            Err(e) => out
                .errors
                .push((format!("docker network {}", net.network_id), e)),
        }
    }
    out
}

/// The ids of every network the Docker Engine at `socket` has (`GET /networks`).
async fn engine_networks(socket: &std::path::Path) -> Result<std::collections::HashSet<String>> {
    let sock = socket.to_path_buf();
    let shown = socket.display().to_string();
    let unreachable = |why: String| {
        Error::BackendDown {
            backend: "docker-engine".into(),
            detail: format!(
                "the Docker Engine at {shown} ([docker] engine) does not answer ({why}); Docker networks removed while Courier was down stay until it does"
            ),
        }
    };
    let resp = tokio::task::spawn_blocking(move || {
        crate::client::request(
            &sock,
            "GET",
            "/networks",
            None,
            std::time::Duration::from_secs(10),
        )
    })
    .await
    .map_err(|e| Error::Internal(format!("docker engine task: {e}")))?
    .map_err(|e| {
        unreachable(match e {
            crate::client::ClientError::Connect { source, .. }
            | crate::client::ClientError::Io { source, .. } => source.to_string(),
            crate::client::ClientError::Reply(r) => r,
        })
    })?;
    if resp.status != 200 {
        return Err(unreachable(format!(
            "GET /networks answered {}: {}",
            resp.status,
            String::from_utf8_lossy(&resp.body)
        )));
    }
    #[derive(Deserialize)]
    struct Listed {
        #[serde(rename = "Id")]
        id: String,
    }
    let nets: Vec<Listed> = serde_json::from_slice(&resp.body)
        .map_err(|e| unreachable(format!("its network list does not decode: {e}")))?;
    Ok(nets.into_iter().map(|n| n.id).collect())
}

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

/// Endpoint driver options: `courier.port` (alias `neutron.port.uuid`) names the existing port
/// the endpoint must be (its `--ip` selects it; this confirms it).
fn endpoint_port_option(options: &Option<HashMap<String, Value>>) -> Result<Option<String>> {
    let Some(o) = options else { return Ok(None) };
    let mut found = None;
    for key in ["courier.port", "neutron.port.uuid"] {
        if let Some(v) = o.get(key) {
            let v = v.as_str().ok_or_else(|| {
                Error::InvalidInput(format!("--driver-opt {key}: give a port id"))
            })?;
            found = Some(v.to_string());
        }
    }
    Ok(found)
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

async fn create_endpoint(State(d): State<Arc<Daemon>>, body: Bytes) -> Reply {
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

async fn endpoint_info(State(d): State<Arc<Daemon>>, body: Bytes) -> Reply {
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

async fn delete_endpoint(State(d): State<Arc<Daemon>>, body: Bytes) -> Reply {
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

async fn join(State(d): State<Arc<Daemon>>, body: Bytes) -> Reply {
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

async fn leave(State(d): State<Arc<Daemon>>, body: Bytes) -> Reply {
    hooks::point("docker-leave").await;
    let req: EndpointRef = parse("Leave", &body)?;
    if let Some(att) = endpoint_record(&d, &req.endpoint_id).await? {
        d.attacher.leave(&att.id).await?;
    }
    Ok(ok(json!({})))
}

/// The captured dockerd sessions (tests/fixtures/docker) replayed against the handlers.
#[cfg(test)]
#[path = "docker_replay.rs"]
mod replay;

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(kv: &[(&str, &str)]) -> HashMap<String, String> {
        kv.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn kuryr_option_names_are_understood() {
        let o = NetworkOptions::parse(&opts(&[("neutron.net.uuid", "abc")])).unwrap();
        assert_eq!(o.neutron_net.as_deref(), Some("abc"));
        let o = NetworkOptions::parse(&opts(&[
            ("neutron.net.name", "n1"),
            ("neutron.subnet.name", "s1"),
        ]))
        .unwrap();
        assert_eq!(o.neutron_net.as_deref(), Some("n1"));
        assert_eq!(o.neutron_subnet.as_deref(), Some("s1"));
        let o = NetworkOptions::parse(&opts(&[("courier.binding", "ipvlan")])).unwrap();
        assert_eq!(o.binding.as_deref(), Some("ipvlan"));
        // Other drivers' options are none of our business.
        assert_eq!(
            NetworkOptions::parse(&opts(&[("com.example.x", "1")])).unwrap(),
            NetworkOptions::default()
        );
    }

    #[test]
    fn contradictory_or_misspelt_options_are_refused_with_what_to_do() {
        for bad in [
            vec![("neutron.net.uuid", "a"), ("neutron.net.name", "b")],
            vec![("courier.network", "n"), ("courier.backend", "ovn")],
            vec![("neutron.net.uuid", "a"), ("courier.backend", "ovn")],
            vec![("neutron.subnet.uuid", "s")],
            vec![("courier.netwrok", "n")],
            vec![("neutron.pool.uuid", "p")],
        ] {
            let e = NetworkOptions::parse(&opts(&bad)).unwrap_err().to_string();
            assert!(e.contains("-o") || e.contains("give"), "{bad:?}: {e}");
        }
    }

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
