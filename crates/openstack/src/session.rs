//! [`Session`]: the HTTP client, the cached Keystone token and its renewal, and the one request
//! function every API call goes through.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use reqwest::header::{HeaderValue, ACCEPT};
use reqwest::Method;
use serde_json::Value;
use tokio::sync::Mutex;

use crate::auth::{self, Token};
use crate::config::{AuthType, CloudConfig};
use crate::error::{ApiFault, Error, RequestContext, Result};

struct Cached {
    token: Arc<Token>,
    /// When the token is to be renewed (expires_at less the margin), on the monotonic clock.
    renew_at: Instant,
}

/// One authenticated connection to a cloud; cheap to share (`Arc`). Every request has the
/// config's timeout. The token is fetched on first use, renewed when it is about to expire and
/// once after a 401; concurrent callers wait for the one renewal in flight.
pub struct Session {
    http: reqwest::Client,
    cfg: CloudConfig,
    token: Mutex<Option<Cached>>,
    auths: AtomicU64,
    requests: AtomicU64,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("cfg", &self.cfg)
            .finish_non_exhaustive()
    }
}

/// One request: method, URL, body, and what it is about (for errors).
pub(crate) struct Request {
    pub method: Method,
    pub url: String,
    /// The path (with query) shown in errors.
    pub path: String,
    pub body: Option<Value>,
    pub if_match_revision: Option<u64>,
    pub resource: Option<String>,
}

impl Session {
    pub fn new(cfg: CloudConfig) -> Result<Session> {
        cfg.validate()?;
        let mut b = reqwest::Client::builder()
            .timeout(cfg.request_timeout)
            .connect_timeout(cfg.connect_timeout)
            .user_agent(concat!("courier-openstack/", env!("CARGO_PKG_VERSION")));
        if let Some(ca) = &cfg.cacert {
            let pem = std::fs::read(ca)
                .map_err(|e| Error::Config(format!("cacert {}: {e}", ca.display())))?;
            let certs = reqwest::Certificate::from_pem_bundle(&pem)
                .map_err(|e| Error::Config(format!("cacert {}: {e}", ca.display())))?;
            if certs.is_empty() {
                return Err(Error::Config(format!(
                    "cacert {}: no PEM certificate in it",
                    ca.display()
                )));
            }
            for c in certs {
                b = b.add_root_certificate(c);
            }
        }
        if !cfg.verify {
            b = b.danger_accept_invalid_certs(true);
        }
        let http = b
            .build()
            .map_err(|e| Error::Config(format!("HTTP client: {e}")))?;
        Ok(Session {
            http,
            cfg,
            token: Mutex::new(None),
            auths: AtomicU64::new(0),
            requests: AtomicU64::new(0),
        })
    }

    pub fn config(&self) -> &CloudConfig {
        &self.cfg
    }

    /// How many times this session asked Keystone for a token.
    pub fn auth_count(&self) -> u64 {
        self.auths.load(Ordering::Relaxed)
    }

    /// How many requests this session sent to services (Keystone's token requests not
    /// counted: see [`Session::auth_count`]).
    pub fn request_count(&self) -> u64 {
        self.requests.load(Ordering::Relaxed)
    }

    /// A valid token (None with `noauth`): the cached one, or a new one when it is about to
    /// expire. Concurrent callers share one renewal: the lock is held across the request.
    pub async fn token(&self) -> Result<Option<Arc<Token>>> {
        if self.cfg.auth_type == AuthType::NoAuth {
            return Ok(None);
        }
        let mut slot = self.token.lock().await;
        if let Some(c) = slot.as_ref() {
            if Instant::now() < c.renew_at {
                return Ok(Some(c.token.clone()));
            }
        }
        let token = Arc::new(self.authenticate().await?);
        let remaining = token.remaining();
        // A token shorter-lived than twice the margin is renewed at half its life.
        let margin = self.cfg.token_renew_margin.min(remaining / 2);
        *slot = Some(Cached {
            token: token.clone(),
            renew_at: Instant::now() + remaining.saturating_sub(margin),
        });
        Ok(Some(token))
    }

    /// Forget `old` (after a 401), unless another caller already replaced it.
    pub async fn invalidate(&self, old: &Arc<Token>) {
        let mut slot = self.token.lock().await;
        if slot.as_ref().is_some_and(|c| Arc::ptr_eq(&c.token, old)) {
            *slot = None;
        }
    }

    /// Use this token (e.g. one obtained elsewhere) until it is about to expire or a service
    /// answers 401 to it; then the session authenticates with its own credentials.
    pub async fn set_token(&self, token: Token) {
        let token = Arc::new(token);
        let remaining = token.remaining();
        let margin = self.cfg.token_renew_margin.min(remaining / 2);
        *self.token.lock().await = Some(Cached {
            token,
            renew_at: Instant::now() + remaining.saturating_sub(margin),
        });
    }

    /// Forget the cached token whatever it is: the next request authenticates again.
    pub async fn clear_token(&self) {
        *self.token.lock().await = None;
    }

    fn auth_error(&self, message: String) -> Error {
        Error::Auth {
            auth_url: self
                .cfg
                .auth_url
                .clone()
                .unwrap_or_else(|| "(noauth)".into()),
            user: self.cfg.principal(),
            message,
        }
    }

    /// `POST /v3/auth/tokens`: a new token, not cached (use [`Session::token`]).
    pub async fn authenticate(&self) -> Result<Token> {
        let auth_url = self
            .cfg
            .auth_url
            .as_deref()
            .ok_or_else(|| Error::Config("auth_url missing".into()))?;
        let url = auth::tokens_url(auth_url);
        let ctx = RequestContext {
            method: "POST".into(),
            path: url.clone(),
            resource: Some(self.cfg.principal()),
        };
        self.auths.fetch_add(1, Ordering::Relaxed);
        let body = auth::auth_body(&self.cfg)?;
        // Issuing a token has no side effect, so a connection that broke before the answer
        // (a server closing it under load) is retried once here; a timeout is not.
        let mut attempt = 0;
        let resp = loop {
            attempt += 1;
            match self
                .http
                .post(&url)
                .header(ACCEPT, "application/json")
                .json(&body)
                .send()
                .await
            {
                Ok(r) => break r,
                Err(e) if attempt == 1 && !e.is_timeout() => {
                    tracing::debug!(error = %e, "Keystone request failed, retrying once");
                }
                Err(e) => return Err(Error::transport(ctx, &e)),
            }
        };
        drop(body);
        let status = resp.status().as_u16();
        let subject = resp
            .headers()
            .get("x-subject-token")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let text = resp
            .text()
            .await
            .map_err(|e| Error::transport(ctx.clone(), &e))?;
        match status {
            200..=299 => {
                let subject = subject.ok_or_else(|| Error::Decode {
                    ctx: ctx.clone(),
                    message: "no X-Subject-Token header".into(),
                })?;
                Token::from_response(&subject, &text)
                    .map_err(|message| Error::Decode { ctx, message })
            }
            400 | 401 | 403 | 404 => Err(self.auth_error(format!(
                "Keystone answered {status}: {}",
                ApiFault::parse(&text)
            ))),
            _ => Err(Error::from_status(ctx, status, &text)),
        }
    }

    /// The endpoint of `service_type`: `network_endpoint_override` for the network service,
    /// else the token's catalog (interface and region from the config).
    pub async fn endpoint(&self, service_type: &str) -> Result<String> {
        if service_type == "network" {
            if let Some(e) = &self.cfg.network_endpoint_override {
                return Ok(e.clone());
            }
        }
        let token = self.token().await?.ok_or_else(|| {
            Error::Config(format!("noauth: no endpoint override for {service_type}"))
        })?;
        token.endpoint(
            service_type,
            self.cfg.interface,
            self.cfg.region_name.as_deref(),
        )
    }

    /// Send a request with the token; on 401 renew the token once and send it again. Returns
    /// the status and body of a 2xx answer, else the error for the status.
    pub(crate) async fn send(&self, req: Request) -> Result<(u16, String)> {
        let ctx = RequestContext {
            method: req.method.to_string(),
            path: req.path.clone(),
            resource: req.resource.clone(),
        };
        let mut renewed = false;
        loop {
            let token = self.token().await?;
            let mut rb = self
                .http
                .request(req.method.clone(), &req.url)
                .header(ACCEPT, "application/json");
            match &token {
                Some(t) => {
                    let mut v =
                        HeaderValue::from_str(t.value.expose()).map_err(|_| Error::Decode {
                            ctx: ctx.clone(),
                            message: "token is not a valid header value".into(),
                        })?;
                    v.set_sensitive(true);
                    rb = rb.header("X-Auth-Token", v);
                }
                None => {
                    if let Some(p) = &self.cfg.project_id {
                        rb = rb.header("X-Project-Id", p);
                    }
                }
            }
            if let Some(n) = req.if_match_revision {
                rb = rb.header("If-Match", format!("revision_number={n}"));
            }
            if let Some(b) = &req.body {
                rb = rb.json(b);
            }
            let started = Instant::now();
            self.requests.fetch_add(1, Ordering::Relaxed);
            let resp = rb
                .send()
                .await
                .map_err(|e| Error::transport(ctx.clone(), &e))?;
            let status = resp.status().as_u16();
            let text = resp
                .text()
                .await
                .map_err(|e| Error::transport(ctx.clone(), &e))?;
            tracing::debug!(method = %ctx.method, path = %ctx.path, status, elapsed_ms = started.elapsed().as_millis() as u64, "openstack request");
            if status == 401 {
                if let Some(t) = token {
                    if !renewed {
                        renewed = true;
                        self.invalidate(&t).await;
                        continue;
                    }
                }
                return Err(self.auth_error(format!(
                    "{ctx}: 401 even with a new token: {}",
                    ApiFault::parse(&text)
                )));
            }
            if (200..300).contains(&status) {
                return Ok((status, text));
            }
            return Err(Error::from_status(ctx, status, &text));
        }
    }
}
