//! The daemon's local API: HTTP/JSON on a root-only unix socket, so the CNI plugin, the CLI
//! and `curl --unix-socket` all speak it. Errors are `{"code","msg","details"}` (the CNI shape).

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use tracing::Instrument;

use crate::daemon::Daemon;
use crate::error::Error;
use crate::frontdoor::cni::{self, CniCall};
use crate::model::{AttachRequest, AttachmentKey, NetworkSpec};

pub fn router(d: Arc<Daemon>) -> Router {
    Router::new()
        .route("/v1/status", get(status))
        .route("/v1/networks", get(list_networks).post(create_network))
        .route(
            "/v1/networks/{name}",
            get(show_network).delete(delete_network),
        )
        .route("/v1/ports", get(list_ports))
        .route("/v1/pools", get(list_pools))
        .route("/v1/pools/fill", post(fill_pool))
        .route("/v1/pools/drain", post(drain_pools))
        .route("/v1/pools/{name}", get(show_pool))
        .route("/v1/attachments", get(list_attachments).post(attach))
        .route("/v1/attachments/detach", post(detach))
        .route("/v1/attachments/check", post(check))
        .route("/v1/gc", post(gc))
        .route("/v1/reconcile", post(reconcile))
        .route("/v1/cni", post(cni_call))
        .route("/metrics", get(metrics))
        .with_state(d)
}

/// An API error: the status from the error kind, the CNI error body.
pub struct ApiError(pub Error);

impl From<Error> for ApiError {
    fn from(e: Error) -> Self {
        ApiError(e)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status =
            StatusCode::from_u16(self.0.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        (status, Json(self.0.body())).into_response()
    }
}

type ApiResult<T> = Result<Json<T>, ApiError>;

fn parse<T: DeserializeOwned>(body: &Bytes) -> Result<T, ApiError> {
    serde_json::from_slice(body).map_err(|e| ApiError(Error::Decode(format!("request body: {e}"))))
}

/// One backend's or binding's health.
#[derive(Serialize, Deserialize)]
pub struct Health {
    pub name: String,
    pub ok: bool,
    pub error: Option<String>,
    /// The error's code: 11 (try again later) for an unreachable backend; another (100: the
    /// backend refuses, e.g. a bad cloud's credentials) for one that fails until fixed.
    #[serde(default)]
    pub code: Option<u32>,
    /// A binding's devices (sriov: VFs per PF: total, held, unusable, free).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub devices: Option<crate::binding::DevicePool>,
}

impl Health {
    fn of(name: &str, r: crate::error::Result<()>) -> Health {
        Health {
            name: name.to_string(),
            ok: r.is_ok(),
            code: r.as_ref().err().map(|e| e.code()),
            error: r.err().map(|e| e.to_string()),
            devices: None,
        }
    }
}

#[derive(Serialize, Deserialize)]
pub struct Status {
    pub version: String,
    pub host: String,
    /// Every configured backend: reachable?
    pub backends: Vec<Health>,
    /// Every binding on this host: can it plug and ready edges now? (veth-ovs: the OVS DB, its
    /// bridge, ovn-controller connected to the Southbound DB.)
    pub bindings: Vec<Health>,
    pub default_backend: String,
    pub default_binding: String,
    pub networks: usize,
    pub attachments: usize,
    pub attachments_ready: usize,
    /// Store records this daemon cannot read, kept aside untouched.
    #[serde(default)]
    pub undecodable_records: Vec<crate::state::Undecodable>,
    /// Items the last reconcile pass could not repair (retried on the next pass).
    #[serde(default)]
    pub reconcile_errors: Vec<crate::reconcile::ItemError>,
    /// Reconcile passes finished since start (0: the start-up pass is still running).
    #[serde(default)]
    pub reconcile_passes: u64,
    pub uptime_secs: u64,
}

async fn status(State(d): State<Arc<Daemon>>) -> ApiResult<Status> {
    let reg = &d.attacher.registry;
    let backends = futures::future::join_all(
        reg.backends()
            .iter()
            .map(|b| async move { Health::of(b.id(), b.health().await) }),
    );
    let store = &d.attacher.store;
    let bindings = futures::future::join_all(reg.bindings().iter().map(|b| async move {
        let mut h = Health::of(b.kind(), b.health().await);
        if let Some(prefix) = b.device_claim_prefix() {
            let held = store
                .claims(prefix)
                .await
                .map(|c| c.into_iter().map(|(c, _)| c).collect())
                .unwrap_or_default();
            h.devices = b.devices(&held).await;
        }
        h
    }));
    let (backends, bindings) = tokio::join!(backends, bindings);
    let networks = all_networks(&d).await.map(|n| n.len()).unwrap_or(0);
    let listing = d.attacher.list().await?;
    let reconcile_errors = d
        .last_reconcile
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .as_ref()
        .map(|r| r.errors.clone())
        .unwrap_or_default();
    let atts = &listing.attachments;
    Ok(Json(Status {
        version: env!("CARGO_PKG_VERSION").into(),
        host: d.config.host.clone(),
        backends,
        bindings,
        default_backend: reg.default_backend.clone(),
        default_binding: reg.default_binding.clone(),
        networks,
        attachments: atts.len(),
        attachments_ready: atts
            .iter()
            .filter(|a| a.phase == crate::model::Phase::Ready)
            .count(),
        undecodable_records: listing.undecodable,
        reconcile_errors,
        reconcile_passes: d
            .reconcile_passes
            .load(std::sync::atomic::Ordering::Relaxed),
        uptime_secs: d.started.elapsed().as_secs(),
    }))
}

/// Every backend's networks; a backend that does not answer is left out (and logged).
async fn all_networks(d: &Daemon) -> crate::error::Result<Vec<crate::model::Network>> {
    let mut out = Vec::new();
    for b in d.attacher.registry.backends() {
        match b.networks().await {
            Ok(n) => out.extend(n),
            Err(e) => tracing::warn!(backend = b.id(), error = %e, "listing networks failed"),
        }
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}

async fn list_networks(State(d): State<Arc<Daemon>>) -> ApiResult<Value> {
    Ok(Json(json!(all_networks(&d).await?)))
}

#[derive(Deserialize)]
struct CreateNetwork {
    #[serde(flatten)]
    spec: NetworkSpec,
    /// Which backend (default: the daemon's default).
    #[serde(default)]
    backend: Option<String>,
}

async fn create_network(State(d): State<Arc<Daemon>>, body: Bytes) -> ApiResult<Value> {
    let req: CreateNetwork = parse(&body)?;
    let reg = &d.attacher.registry;
    let backend = reg.backend(req.backend.as_deref().unwrap_or(&reg.default_backend))?;
    // A name is one network across all backends.
    match reg.holder_of(&req.spec.name).await {
        Ok(Some(_)) => return Err(Error::NetworkExists(req.spec.name.clone()).into()),
        Ok(None) => {}
        // A backend cannot tell now (down, or failing: a bad cloud): create anyway (the target
        // backend still refuses a duplicate of its own); a name later found in two backends
        // is refused when used.
        Err(e) => {
            tracing::warn!(network = %req.spec.name, error = %e, "creating a network while another backend cannot be asked whether the name is taken");
        }
    }
    Ok(Json(json!(backend.create_network(&req.spec).await?)))
}

async fn show_network(State(d): State<Arc<Daemon>>, Path(name): Path<String>) -> ApiResult<Value> {
    Ok(Json(json!(d.attacher.registry.network(&name).await?.1)))
}

async fn delete_network(
    State(d): State<Arc<Daemon>>,
    Path(name): Path<String>,
) -> ApiResult<Value> {
    let (backend, _) = d.attacher.registry.network(&name).await?;
    d.attacher
        .delete_network_and_pools(&*backend, &name)
        .await?;
    Ok(Json(json!({"deleted": name})))
}

async fn list_ports(State(d): State<Arc<Daemon>>) -> ApiResult<Value> {
    let q = crate::backend::PortQuery::OwnedBy {
        host: d.attacher.host.clone(),
    };
    let mut out = Vec::new();
    for b in d.attacher.registry.backends() {
        out.extend(b.find_ports(&q).await?);
    }
    Ok(Json(json!(out)))
}

async fn list_pools(State(d): State<Arc<Daemon>>) -> ApiResult<Value> {
    let views = d.attacher.pool_views().await?;
    d.attacher.metrics.set_pools(&views);
    Ok(Json(json!(views)))
}

async fn show_pool(State(d): State<Arc<Daemon>>, Path(name): Path<String>) -> ApiResult<Value> {
    let pool = d.attacher.find_pool(&name).await?;
    let view = d
        .attacher
        .pool_views()
        .await?
        .into_iter()
        .find(|v| v.pool == pool);
    Ok(Json(
        json!({"pool": view, "slots": d.attacher.slot_views(&pool).await?}),
    ))
}

/// `POST /v1/pools/fill`: {network, binding?, count?}. Without a count, what the pool's rule
/// wants now; with one, that many (up to the pool's max).
#[derive(Deserialize)]
struct FillRequest {
    network: String,
    #[serde(default)]
    binding: Option<String>,
    #[serde(default)]
    count: Option<usize>,
}

async fn fill_pool(State(d): State<Arc<Daemon>>, body: Bytes) -> ApiResult<Value> {
    let req: FillRequest = parse(&body)?;
    if req.count == Some(0) {
        return Err(ApiError(Error::InvalidInput(
            "count 0: give 1 or more, or leave it out for what the pool wants".into(),
        )));
    }
    let pool = d
        .attacher
        .pool_of_network(&req.network, req.binding.as_deref())
        .await?;
    let made = match req.count {
        Some(n) => d.attacher.fill(&pool, n).await?,
        None => d.attacher.refill_pool(&pool, None).await?,
    };
    Ok(Json(json!({"pool": pool, "made": made})))
}

/// `POST /v1/pools/drain`: {network?}: the free ports of that network's pools (all pools'
/// without one) deleted.
#[derive(Deserialize)]
struct DrainRequest {
    #[serde(default)]
    network: Option<String>,
}

async fn drain_pools(State(d): State<Arc<Daemon>>, body: Bytes) -> ApiResult<Value> {
    let req: DrainRequest = parse(&body)?;
    let drained = d.attacher.drain(req.network.as_deref()).await?;
    Ok(Json(json!({"drained": drained})))
}

async fn list_attachments(State(d): State<Arc<Daemon>>) -> ApiResult<Value> {
    Ok(Json(json!(d.attacher.list().await?.attachments)))
}

async fn attach(State(d): State<Arc<Daemon>>, body: Bytes) -> ApiResult<Value> {
    let mut req: AttachRequest = parse(&body)?;
    req.made_by = Some(crate::model::MadeBy::Cli);
    Ok(Json(json!(d.attacher.attach(&req).await?)))
}

async fn detach(State(d): State<Arc<Daemon>>, body: Bytes) -> ApiResult<Value> {
    let key: AttachmentKey = parse(&body)?;
    let removed = d.attacher.detach(&key).await?;
    Ok(Json(json!({"detached": removed})))
}

#[derive(Deserialize)]
struct CheckRequest {
    #[serde(flatten)]
    key: AttachmentKey,
    /// Check the interface in this netns (default: the one recorded at attach).
    #[serde(default)]
    netns: Option<String>,
}

async fn check(State(d): State<Arc<Daemon>>, body: Bytes) -> ApiResult<Value> {
    let req: CheckRequest = parse(&body)?;
    Ok(Json(json!(
        d.attacher.check(&req.key, req.netns.as_deref()).await?
    )))
}

#[derive(Deserialize)]
struct GcRequest {
    network: String,
    /// The CNI runtime whose attachments are collected (as its plugin calls report it).
    #[serde(default)]
    runtime: String,
    valid: Vec<AttachmentKey>,
}

async fn gc(State(d): State<Arc<Daemon>>, body: Bytes) -> ApiResult<Value> {
    let req: GcRequest = parse(&body)?;
    let removed = d
        .attacher
        .gc(&req.network, &req.runtime, &req.valid)
        .await?;
    Ok(Json(json!({"removed": removed})))
}

async fn reconcile(State(d): State<Arc<Daemon>>) -> ApiResult<Value> {
    // On its own task: a caller that goes away does not cut a pass in half.
    let d2 = d.clone();
    let report = tokio::spawn(async move { d2.reconcile().await })
        .await
        .map_err(|e| Error::Internal(format!("reconcile task: {e}")))?;
    Ok(Json(json!(report)))
}

async fn cni_call(State(d): State<Arc<Daemon>>, body: Bytes) -> Result<Response, ApiError> {
    let call: CniCall = parse(&body)?;
    let span = tracing::info_span!("cni", command = %call.command, container = %call.container_id, ifname = %call.ifname);
    let t = std::time::Instant::now();
    let r = cni::handle(&d.attacher, &call).instrument(span).await;
    tracing::debug!(command = %call.command, container = %call.container_id,
        handled_ms = t.elapsed().as_secs_f64() * 1000.0, "CNI call answered");
    match r {
        Ok(Some(v)) => Ok(Json(v).into_response()),
        Ok(None) => Ok(StatusCode::OK.into_response()),
        Err(e) => {
            tracing::warn!(error = %e, "CNI {} failed", call.command);
            Err(ApiError(e))
        }
    }
}

async fn metrics(State(d): State<Arc<Daemon>>) -> Response {
    for b in d.attacher.registry.bindings() {
        let Some(prefix) = b.device_claim_prefix() else {
            continue;
        };
        let held = d
            .attacher
            .store
            .claims(prefix)
            .await
            .map(|c| c.into_iter().map(|(c, _)| c).collect())
            .unwrap_or_default();
        if let Some(pool) = b.devices(&held).await {
            d.attacher.metrics.set_vfs(&pool.groups);
        }
    }
    if let Ok(views) = d.attacher.pool_views().await {
        d.attacher.metrics.set_pools(&views);
    }
    if let Ok(l) = d.attacher.list().await {
        d.attacher
            .metrics
            .attachments
            .set(l.attachments.len() as i64);
        d.attacher
            .metrics
            .undecodable_records
            .set(l.undecodable.len() as i64);
    }
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        d.attacher.metrics.encode(),
    )
        .into_response()
}
