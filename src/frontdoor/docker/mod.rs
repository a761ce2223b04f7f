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
//!
//! Here: the socket's router, the protocol's replies and errors, request parsing. The calls:
//! `ipam` (IpamDriver), `network` (CreateNetwork / DeleteNetwork), `endpoint` (CreateEndpoint
//! … Leave), `options` (`-o` and `--driver-opt` parsing), `user_ports` (ports Courier did not
//! make), `reconcile` (against the Docker Engine's network list).

mod endpoint;
mod ipam;
mod network;
mod options;
mod reconcile;
mod user_ports;

use std::net::IpAddr;
use std::sync::Arc;

use axum::body::Bytes;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::Router;
use serde::de::DeserializeOwned;
use serde_json::{json, Value};

use crate::daemon::Daemon;
use crate::error::{Error, Result};
use crate::hooks;

use endpoint::{create_endpoint, delete_endpoint, endpoint_info, join, leave};
use ipam::{address_spaces, ipam_capabilities, release_address, request_address, request_pool};
use network::{allocate_network, create_network, delete_network, net_capabilities};

pub use options::NetworkOptions;
pub use reconcile::{reconcile_networks, NetworksReconciled};

pub const CONTENT_TYPE: &str = "application/vnd.docker.plugins.v1.2+json";

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

fn parse_ip(what: &str, s: &str) -> Result<IpAddr> {
    let bare = s.split('/').next().unwrap_or(s);
    bare.parse()
        .map_err(|_| Error::InvalidInput(format!("{what} {s:?} is not an IP address")))
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

/// The captured dockerd sessions (tests/fixtures/docker) replayed against the handlers.
#[cfg(test)]
mod replay;
