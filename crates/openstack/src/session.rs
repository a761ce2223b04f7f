//! [`Session`]: the HTTP client, the cached Keystone token and its renewal, and the one request
//! function every API call goes through.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use reqwest::header::{HeaderValue, ACCEPT};
use reqwest::Method;
use serde_json::Value;
use tokio::sync::watch;

use crate::auth::{self, Token};
use crate::config::{AuthType, CloudConfig};
use crate::error::{ApiFault, Error, RequestContext, Result};

struct Cached {
    token: Arc<Token>,
    /// When the token is to be renewed (expires_at less the margin), on the monotonic clock.
    renew_at: Instant,
    /// Until when it may still be sent while a renewal is in flight (its expiry less
    /// [`USABLE_GRACE`]).
    usable_until: Instant,
}

impl Cached {
    fn new(token: Arc<Token>, renew_margin: Duration) -> Cached {
        let remaining = token.remaining();
        // A token shorter-lived than twice the margin is renewed at half its life.
        let margin = renew_margin.min(remaining / 2);
        let now = Instant::now();
        Cached {
            token,
            renew_at: now + remaining.saturating_sub(margin),
            usable_until: now + remaining.saturating_sub(USABLE_GRACE),
        }
    }
}

/// A token this close to its expiry is not sent any more (clock skew, the request's own time).
const USABLE_GRACE: Duration = Duration::from_secs(5);

/// How long Keystone's refusal of the credentials (400/401/403/404: a wrong password, a
/// deleted user) is the answer to every caller without asking Keystone again: a burst of
/// callers fails at once with that error, and Keystone (whose lockout may count failures)
/// is asked at most once per hold.
pub const REFUSAL_HOLD: Duration = Duration::from_secs(2);

/// What one Keystone request ended with, given to every caller that waited for it.
type Outcome = std::result::Result<Arc<Token>, Error>;

#[derive(Default)]
struct TokenState {
    cached: Option<Cached>,
    /// The one token request in flight: callers that need a new token wait on it (None in the
    /// channel until it ends; the sender dropped without an answer if its caller went away).
    flight: Option<watch::Receiver<Option<Outcome>>>,
    /// Keystone's last refusal, answered without asking again until the instant.
    refused: Option<(Instant, Error)>,
}

/// One authenticated connection to a cloud; cheap to share (`Arc`). Every request has the
/// config's timeout. The token is fetched on first use, renewed when it is about to expire and
/// once after a 401. One token request at a time: concurrent callers that need a new token wait
/// for the one in flight and all get its outcome — the token, or the same error (a refusal is
/// kept [`REFUSAL_HOLD`]) — while callers whose cached token is still valid keep using it
/// during a renewal. No lock is held across a request.
pub struct Session {
    http: reqwest::Client,
    cfg: CloudConfig,
    token: std::sync::Mutex<TokenState>,
    auths: AtomicU64,
    requests: AtomicU64,
    /// `CloudConfig::max_in_flight` permits, one held by each request while it is out.
    in_flight: tokio::sync::Semaphore,
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
            token: std::sync::Mutex::new(TokenState::default()),
            auths: AtomicU64::new(0),
            requests: AtomicU64::new(0),
            in_flight: tokio::sync::Semaphore::new(cfg.max_in_flight.max(1)),
            cfg,
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

    fn state(&self) -> std::sync::MutexGuard<'_, TokenState> {
        self.token.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A valid token (None with `noauth`): the cached one, or a new one when it is about to
    /// expire. Concurrent callers share one token request and its outcome (see [`Session`]).
    pub async fn token(&self) -> Result<Option<Arc<Token>>> {
        if self.cfg.auth_type == AuthType::NoAuth {
            return Ok(None);
        }
        loop {
            let rx = {
                let mut st = self.state();
                let now = Instant::now();
                if let Some(c) = &st.cached {
                    if now < c.renew_at || (st.flight.is_some() && now < c.usable_until) {
                        return Ok(Some(c.token.clone()));
                    }
                }
                if let Some((until, e)) = &st.refused {
                    if now < *until {
                        return Err(e.clone());
                    }
                }
                match &st.flight {
                    Some(rx) => Ok(rx.clone()),
                    None => {
                        let (tx, rx) = watch::channel(None);
                        st.flight = Some(rx);
                        Err(tx)
                    }
                }
            };
            let mut rx = match rx {
                Ok(rx) => rx,
                // None in flight: this caller asks.
                Err(tx) => return self.renew(tx).await.map(Some),
            };
            let answer = rx
                .wait_for(Option::is_some)
                .await
                .ok()
                .and_then(|o| o.clone());
            if let Some(outcome) = answer {
                return outcome.map(Some);
            }
            // Its caller went away before the answer: the next one asks.
        }
    }

    /// The one token request, by the caller that found none in flight: its outcome is cached
    /// (a token; a refusal for [`REFUSAL_HOLD`]) and sent to every caller waiting on `tx`.
    async fn renew(&self, tx: watch::Sender<Option<Outcome>>) -> Outcome {
        /// Cancelled (the caller dropped): no flight left behind; waiters see the sender
        /// dropped and one of them asks again.
        struct InFlight<'a>(&'a Session, bool);
        impl Drop for InFlight<'_> {
            fn drop(&mut self) {
                if !self.1 {
                    self.0.state().flight = None;
                }
            }
        }
        let mut guard = InFlight(self, false);
        let outcome = self.authenticate().await.map(Arc::new);
        {
            let mut st = self.state();
            st.flight = None;
            match &outcome {
                Ok(t) => {
                    st.cached = Some(Cached::new(t.clone(), self.cfg.token_renew_margin));
                    st.refused = None;
                }
                Err(e) if is_refusal(e) => {
                    st.refused = Some((Instant::now() + REFUSAL_HOLD, e.clone()));
                }
                Err(_) => {}
            }
        }
        guard.1 = true;
        tx.send_replace(Some(outcome.clone()));
        outcome
    }

    /// Forget `old` (after a 401), unless another caller already replaced it.
    pub async fn invalidate(&self, old: &Arc<Token>) {
        let mut st = self.state();
        if st
            .cached
            .as_ref()
            .is_some_and(|c| Arc::ptr_eq(&c.token, old))
        {
            st.cached = None;
        }
    }

    /// Use this token (e.g. one obtained elsewhere) until it is about to expire or a service
    /// answers 401 to it; then the session authenticates with its own credentials.
    pub async fn set_token(&self, token: Token) {
        let mut st = self.state();
        st.cached = Some(Cached::new(Arc::new(token), self.cfg.token_renew_margin));
        st.refused = None;
    }

    /// Forget the cached token (and a refusal) whatever it is: the next request authenticates
    /// again.
    pub async fn clear_token(&self) {
        let mut st = self.state();
        st.cached = None;
        st.refused = None;
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
            // Never closed, so acquiring only waits for a turn.
            let _turn = self.in_flight.acquire().await.ok();
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

/// Keystone refused the credentials themselves (or the config has none): asking again at once
/// cannot help.
fn is_refusal(e: &Error) -> bool {
    matches!(e, Error::Auth { .. } | Error::Config(_))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A stand-in Keystone on 127.0.0.1: every token request is counted and answered `status`
    /// after `delay` (200: a token valid for an hour).
    async fn keystone(status: u16, delay: Duration) -> (String, Arc<AtomicUsize>) {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/v3", l.local_addr().unwrap());
        let count = Arc::new(AtomicUsize::new(0));
        let c = count.clone();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = l.accept().await {
                let c = c.clone();
                tokio::spawn(async move {
                    let mut got = Vec::new();
                    let mut buf = [0u8; 4096];
                    // The head, then the body by Content-Length.
                    let body_len = loop {
                        match s.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => got.extend_from_slice(&buf[..n]),
                        }
                        let text = String::from_utf8_lossy(&got).to_string();
                        if let Some(head_end) = text.find("\r\n\r\n") {
                            let len = text[..head_end]
                                .lines()
                                .find_map(|l| {
                                    let (k, v) = l.split_once(':')?;
                                    k.eq_ignore_ascii_case("content-length")
                                        .then(|| v.trim().parse::<usize>().ok())?
                                })
                                .unwrap_or(0);
                            break head_end + 4 + len;
                        }
                    };
                    while got.len() < body_len {
                        match s.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => got.extend_from_slice(&buf[..n]),
                        }
                    }
                    c.fetch_add(1, Ordering::SeqCst);
                    tokio::time::sleep(delay).await;
                    let (extra, body) = if status == 200 {
                        let exp = std::time::SystemTime::now() + Duration::from_secs(3600);
                        let secs = exp.duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
                        // 1970 + secs, written as RFC 3339 by parse_rfc3339's inverse.
                        let days = secs / 86400;
                        let (y, m, d) = civil(days as i64);
                        let t = secs % 86400;
                        (
                            "X-Subject-Token: tok\r\n".to_string(),
                            format!(
                                r#"{{"token": {{"expires_at": "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.000000Z", "project": {{"id": "p"}}, "catalog": []}}}}"#,
                                t / 3600,
                                t % 3600 / 60,
                                t % 60
                            ),
                        )
                    } else {
                        (
                            String::new(),
                            format!(
                                r#"{{"error": {{"code": {status}, "title": "No", "message": "refused by the stub"}}}}"#
                            ),
                        )
                    };
                    let _ = s
                        .write_all(
                            format!(
                                "HTTP/1.1 {status} X\r\n{extra}Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                                body.len()
                            )
                            .as_bytes(),
                        )
                        .await;
                });
            }
        });
        (url, count)
    }

    /// Days since 1970-01-01 → (year, month, day) (Howard Hinnant's civil_from_days).
    fn civil(z: i64) -> (i64, i64, i64) {
        let z = z + 719468;
        let era = z.div_euclid(146097);
        let doe = z - era * 146097;
        let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
        let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
        let mp = (5 * doy + 2) / 153;
        let d = doy - (153 * mp + 2) / 5 + 1;
        let m = if mp < 10 { mp + 3 } else { mp - 9 };
        (yoe + era * 400 + i64::from(m <= 2), m, d)
    }

    fn session(url: &str) -> Arc<Session> {
        Arc::new(
            Session::new(CloudConfig {
                auth_url: Some(url.into()),
                username: Some("u".into()),
                user_domain_name: Some("Default".into()),
                password: Some("pw".into()),
                project_name: Some("p".into()),
                project_domain_name: Some("Default".into()),
                ..CloudConfig::default()
            })
            .unwrap(),
        )
    }

    async fn all(s: &Arc<Session>, n: usize) -> Vec<Result<Option<Arc<Token>>>> {
        let tasks: Vec<_> = (0..n)
            .map(|_| {
                let s = s.clone();
                tokio::spawn(async move { s.token().await })
            })
            .collect();
        let mut out = Vec::new();
        for t in tasks {
            out.push(t.await.unwrap());
        }
        out
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_callers_share_one_request_and_its_error() {
        // A refusal: one request, one error for all, held for the next caller too.
        let (url, count) = keystone(401, Duration::from_millis(200)).await;
        let s = session(&url);
        let t = Instant::now();
        let out = all(&s, 100).await;
        assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
        let errs: Vec<String> = out
            .iter()
            .map(|r| r.as_ref().unwrap_err().to_string())
            .collect();
        assert!(errs.iter().all(|e| e == &errs[0]), "{errs:?}");
        assert!(errs[0].contains("refused by the stub"), "{}", errs[0]);
        assert_eq!(count.load(Ordering::SeqCst), 1);
        assert!(matches!(s.token().await, Err(Error::Auth { .. })));
        assert_eq!(count.load(Ordering::SeqCst), 1, "the refusal is held");
        s.clear_token().await;
        assert!(s.token().await.is_err());
        assert_eq!(count.load(Ordering::SeqCst), 2);

        // A broken Keystone (500): shared by the callers of that request, not held.
        let (url, count) = keystone(500, Duration::from_millis(200)).await;
        let s = session(&url);
        let out = all(&s, 100).await;
        assert!(out
            .iter()
            .all(|r| matches!(r, Err(Error::Server { status: 500, .. }))));
        assert_eq!(count.load(Ordering::SeqCst), 1);
        assert!(s.token().await.is_err());
        assert_eq!(count.load(Ordering::SeqCst), 2);

        // A good one: one request, one token.
        let (url, count) = keystone(200, Duration::from_millis(200)).await;
        let s = session(&url);
        let out = all(&s, 100).await;
        let first = out[0].as_ref().unwrap().clone().unwrap();
        assert!(out
            .iter()
            .all(|r| Arc::ptr_eq(r.as_ref().unwrap().as_ref().unwrap(), &first)));
        assert_eq!(count.load(Ordering::SeqCst), 1);
        assert_eq!(s.auth_count(), 1);
    }

    /// A stand-in API on 127.0.0.1 that answers every request `200 {}` after `delay`, and
    /// counts the most requests it held at once.
    async fn slow_api(delay: Duration) -> (String, Arc<AtomicUsize>) {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", l.local_addr().unwrap());
        let now = Arc::new(AtomicUsize::new(0));
        let most = Arc::new(AtomicUsize::new(0));
        let m = most.clone();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = l.accept().await {
                let (now, most) = (now.clone(), m.clone());
                tokio::spawn(async move {
                    let mut got = Vec::new();
                    let mut buf = [0u8; 4096];
                    while !got.windows(4).any(|w| w == b"\r\n\r\n") {
                        match s.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => got.extend_from_slice(&buf[..n]),
                        }
                    }
                    let held = now.fetch_add(1, Ordering::SeqCst) + 1;
                    most.fetch_max(held, Ordering::SeqCst);
                    tokio::time::sleep(delay).await;
                    now.fetch_sub(1, Ordering::SeqCst);
                    let _ = s
                        .write_all(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}")
                        .await;
                });
            }
        });
        (url, most)
    }

    /// A burst larger than `max_in_flight` reaches the API a few at a time, and the requests
    /// that waited their turn are not timed out by the wait: 12 requests of 300 ms, 3 at a
    /// time, take 1.2 s; each is allowed 1 s.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_burst_waits_its_turn_instead_of_timing_out() {
        let (url, most) = slow_api(Duration::from_millis(300)).await;
        let s = Arc::new(
            Session::new(CloudConfig {
                auth_type: crate::config::AuthType::NoAuth,
                network_endpoint_override: Some(url.clone()),
                request_timeout: Duration::from_secs(1),
                max_in_flight: 3,
                ..CloudConfig::default()
            })
            .unwrap(),
        );
        let t = Instant::now();
        let tasks: Vec<_> = (0..12)
            .map(|i| {
                let (s, url) = (s.clone(), url.clone());
                tokio::spawn(async move {
                    s.send(Request {
                        method: Method::GET,
                        url: format!("{url}/v2.0/ports/{i}"),
                        path: format!("/v2.0/ports/{i}"),
                        body: None,
                        resource: None,
                        if_match_revision: None,
                    })
                    .await
                })
            })
            .collect();
        for t in tasks {
            let (status, _) = t.await.unwrap().expect("answered, not timed out");
            assert_eq!(status, 200);
        }
        assert!(
            t.elapsed() >= Duration::from_millis(1150),
            "{:?}",
            t.elapsed()
        );
        assert_eq!(
            most.load(Ordering::SeqCst),
            3,
            "at most max_in_flight at once"
        );
        assert_eq!(s.request_count(), 12);
    }

    /// The caller whose request was in flight goes away (its future dropped): a waiter asks
    /// again and gets a token; nothing is left in flight.
    #[tokio::test]
    async fn a_cancelled_request_is_taken_over() {
        let (url, count) = keystone(200, Duration::from_millis(300)).await;
        let s = session(&url);
        let s2 = s.clone();
        let first = tokio::spawn(async move {
            tokio::time::timeout(Duration::from_millis(50), s2.token()).await
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        let waiter = {
            let s = s.clone();
            tokio::spawn(async move { s.token().await })
        };
        assert!(first.await.unwrap().is_err(), "the first caller timed out");
        let t = waiter.await.unwrap().unwrap().unwrap();
        assert_eq!(t.project_id.as_deref(), Some("p"));
        assert_eq!(count.load(Ordering::SeqCst), 2);
        assert!(s.state().flight.is_none());
    }

    /// While a renewal is in flight, a caller whose cached token is due for renewal but still
    /// valid uses it at once instead of waiting.
    #[tokio::test]
    async fn a_renewal_does_not_hold_up_callers_with_a_valid_token() {
        let (url, count) = keystone(200, Duration::from_millis(500)).await;
        let s = session(&url);
        let old = Arc::new(Token::from_response("old", crate::auth::tests::TOKEN_BODY).unwrap());
        s.state().cached = Some(Cached {
            token: old.clone(),
            renew_at: Instant::now(),
            usable_until: Instant::now() + Duration::from_secs(60),
        });
        let renewing = {
            let s = s.clone();
            tokio::spawn(async move { s.token().await })
        };
        tokio::time::sleep(Duration::from_millis(100)).await;
        let t = Instant::now();
        let got = s.token().await.unwrap().unwrap();
        assert!(Arc::ptr_eq(&got, &old));
        assert!(
            t.elapsed() < Duration::from_millis(100),
            "{:?}",
            t.elapsed()
        );
        let new = renewing.await.unwrap().unwrap().unwrap();
        assert!(!Arc::ptr_eq(&new, &old));
        assert!(Arc::ptr_eq(&s.token().await.unwrap().unwrap(), &new));
        assert_eq!(count.load(Ordering::SeqCst), 1);
    }
}
