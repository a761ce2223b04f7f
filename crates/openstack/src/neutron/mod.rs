//! Neutron v2.0: networks, subnets, ports (single and bulk create, paginated lists, revision-
//! checked updates), security groups, trunks, tags.
//!
//! Types follow the API reference; fields Neutron may omit are `Option` (lists default to
//! empty) and unknown fields are ignored, so a newer Neutron does not break decoding.

mod networks;
mod pagination;
mod ports;
mod query;
mod security_groups;
mod tags;
mod trunks;
mod types;

pub use ports::Modified;
pub use query::Query;
pub use types::{
    AllocationPool, AllowedAddressPair, FixedIp, HostRoute, Network, NetworkCreate, Port,
    PortCreate, PortUpdate, SecurityGroup, SubPort, Subnet, SubnetCreate, Trunk, TrunkCreate,
};

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use reqwest::Method;
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::Value;
use tokio::sync::OnceCell;

use crate::config::CloudConfig;
use crate::error::{Error, RequestContext, Result};
use crate::retry::RevisionRetry;
use crate::session::{Request, Session};

/// Whether allowed address pair `have` (as Neutron returns it, on a port whose MAC is
/// `port_mac`) is `want`: the same address (`10.0.0.5` and `10.0.0.5/32` are one) and the same
/// MAC, a missing MAC being the port's own.
pub fn pair_matches(have: &AllowedAddressPair, want: &AllowedAddressPair, port_mac: &str) -> bool {
    fn addr(s: &str) -> String {
        let s = s.trim();
        match s.split_once('/') {
            Some((a, "32")) | Some((a, "128")) => a.to_ascii_lowercase(),
            _ => s.to_ascii_lowercase(),
        }
    }
    let mac = |p: &AllowedAddressPair| {
        p.mac_address
            .as_deref()
            .unwrap_or(port_mac)
            .to_ascii_lowercase()
    };
    let ip_eq = match (
        addr(&have.ip_address).parse::<std::net::IpAddr>(),
        addr(&want.ip_address).parse::<std::net::IpAddr>(),
    ) {
        (Ok(a), Ok(b)) => a == b,
        _ => addr(&have.ip_address) == addr(&want.ip_address),
    };
    ip_eq && mac(have) == mac(want)
}

/// Percent-encode a query component or path segment (RFC 3986 unreserved kept).
fn enc(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                o.push(b as char)
            }
            _ => o.push_str(&format!("%{b:02X}")),
        }
    }
    o
}

// ------------------------------------------------------------------------------------ client

/// A Neutron v2.0 client. Cheap to clone (shares the [`Session`]).
#[derive(Debug, Clone)]
pub struct Neutron {
    session: Arc<Session>,
    /// The endpoint, ending in `/v2.0`, no trailing slash.
    base: String,
    extensions: Arc<OnceCell<HashSet<String>>>,
    /// Allowed-address-pair changes waiting per port (see [`Neutron::add_allowed_address_pair`]).
    pairs: Arc<PairQueues>,
}

/// Pending pair changes per port, and the lock of the one writer per port in this client: the
/// writer takes every change waiting for its port into one GET + PUT, so concurrent callers in
/// one process neither collide (412) nor pay a round trip each.
#[derive(Default)]
struct PairQueues {
    pending: std::sync::Mutex<HashMap<String, Vec<PairOp>>>,
    locks: std::sync::Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

impl std::fmt::Debug for PairQueues {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PairQueues")
    }
}

struct PairOp {
    add: bool,
    pair: AllowedAddressPair,
    done: tokio::sync::oneshot::Sender<Result<Option<Modified>>>,
}

/// `pairs` with the changes applied in order; which of them changed something.
fn apply_pair_ops(
    pairs: &[AllowedAddressPair],
    port_mac: &str,
    ops: &[(bool, &AllowedAddressPair)],
) -> (Vec<AllowedAddressPair>, Vec<bool>) {
    let mut out = pairs.to_vec();
    let mut changed = Vec::with_capacity(ops.len());
    for (add, pair) in ops {
        let present = out.iter().any(|e| pair_matches(e, pair, port_mac));
        if *add {
            if !present {
                // The port's own MAC: an IP-only pair (what Neutron means by no MAC).
                let mut p = (*pair).clone();
                if p.mac_address
                    .as_deref()
                    .is_some_and(|m| m.eq_ignore_ascii_case(port_mac))
                {
                    p.mac_address = None;
                }
                out.push(p);
            }
            changed.push(!present);
        } else {
            out.retain(|e| !pair_matches(e, pair, port_mac));
            changed.push(present);
        }
    }
    (out, changed)
}

fn v20(endpoint: &str) -> String {
    let e = endpoint.trim_end_matches('/');
    if e.ends_with("/v2.0") {
        e.to_string()
    } else {
        format!("{e}/v2.0")
    }
}

impl Neutron {
    /// Build the session, authenticate (unless noauth or an endpoint override is given) and
    /// find Neutron's endpoint.
    pub async fn connect(cfg: CloudConfig) -> Result<Neutron> {
        let session = Arc::new(Session::new(cfg)?);
        Neutron::with_session(session).await
    }

    pub async fn with_session(session: Arc<Session>) -> Result<Neutron> {
        let endpoint = session.endpoint("network").await?;
        Ok(Neutron::with_endpoint(session, &endpoint))
    }

    /// A client for this endpoint (e.g. `http://127.0.0.1:9696`), no catalog look-up.
    pub fn with_endpoint(session: Arc<Session>, endpoint: &str) -> Neutron {
        Neutron {
            session,
            base: v20(endpoint),
            extensions: Arc::new(OnceCell::new()),
            pairs: Arc::new(PairQueues::default()),
        }
    }

    pub fn session(&self) -> &Arc<Session> {
        &self.session
    }

    /// The endpoint in use, ending in `/v2.0`.
    pub fn endpoint(&self) -> &str {
        &self.base
    }

    async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
        if_match_revision: Option<u64>,
        resource: Option<String>,
    ) -> Result<(u16, String)> {
        self.session
            .send(Request {
                method,
                url: format!("{}{}", self.base, path),
                path: format!("/v2.0{path}"),
                body,
                if_match_revision,
                resource,
            })
            .await
    }

    fn decode<T: DeserializeOwned>(
        method: &str,
        path: &str,
        resource: Option<String>,
        text: &str,
    ) -> Result<T> {
        serde_json::from_str(text).map_err(|e| Error::Decode {
            ctx: RequestContext {
                method: method.into(),
                path: format!("/v2.0{path}"),
                resource,
            },
            message: e.to_string(),
        })
    }

    /// Call and decode the member `key` of the answer.
    async fn call_key<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
        if_match: Option<u64>,
        resource: Option<String>,
        key: &str,
    ) -> Result<T> {
        let m = method.to_string();
        let (_, text) = self
            .call(method, path, body, if_match, resource.clone())
            .await?;
        let mut v: Value = Self::decode(&m, path, resource.clone(), &text)?;
        let inner = v
            .get_mut(key)
            .map(Value::take)
            .ok_or_else(|| Error::Decode {
                ctx: RequestContext {
                    method: m.clone(),
                    path: format!("/v2.0{path}"),
                    resource: resource.clone(),
                },
                message: format!("no {key:?} in the answer"),
            })?;
        serde_json::from_value(inner).map_err(|e| Error::Decode {
            ctx: RequestContext {
                method: m,
                path: format!("/v2.0{path}"),
                resource,
            },
            message: e.to_string(),
        })
    }

    /// DELETE; 404 is Ok(false).
    async fn delete_path(&self, path: &str, resource: String) -> Result<bool> {
        match self
            .call(Method::DELETE, path, None, None, Some(resource))
            .await
        {
            Ok(_) => Ok(true),
            Err(Error::NotFound { .. }) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// The aliases of the extensions this Neutron has (read once, cached).
    pub async fn extensions(&self) -> Result<&HashSet<String>> {
        self.extensions
            .get_or_try_init(|| async {
                #[derive(Deserialize)]
                struct Ext {
                    alias: String,
                }
                let exts: Vec<Ext> = self
                    .call_key(Method::GET, "/extensions", None, None, None, "extensions")
                    .await?;
                Ok(exts.into_iter().map(|e| e.alias).collect())
            })
            .await
    }

    pub async fn has_extension(&self, alias: &str) -> Result<bool> {
        Ok(self.extensions().await?.contains(alias))
    }

    /// Adds `pair` to port `id`'s `allowed_address_pairs`; already there ([`pair_matches`]):
    /// nothing is sent (`changed` false). The change is one revision-checked
    /// [`Neutron::modify_port`], so a concurrent writer anywhere never loses its own; and
    /// concurrent calls for one port through this client (and its clones) are folded into one
    /// GET + PUT, each told whether *its* pair changed anything.
    pub async fn add_allowed_address_pair(
        &self,
        id: &str,
        pair: &AllowedAddressPair,
        retry: RevisionRetry,
    ) -> Result<Modified> {
        match self.queue_pair_op(id, true, pair, retry).await? {
            Some(m) => Ok(m),
            None => Err(Error::NotFound {
                ctx: RequestContext {
                    method: "GET".into(),
                    path: format!("/v2.0/ports/{id}"),
                    resource: Some(format!("port {id}")),
                },
                fault: crate::error::ApiFault {
                    kind: Some("PortNotFound".into()),
                    message: format!("Port {id} could not be found."),
                },
            }),
        }
    }

    /// Removes exactly `pair` from port `id`'s `allowed_address_pairs` (as
    /// [`Neutron::add_allowed_address_pair`]). Not there: nothing is sent; the port gone
    /// (404): Ok(None).
    pub async fn remove_allowed_address_pair(
        &self,
        id: &str,
        pair: &AllowedAddressPair,
        retry: RevisionRetry,
    ) -> Result<Option<Modified>> {
        self.queue_pair_op(id, false, pair, retry).await
    }

    async fn queue_pair_op(
        &self,
        id: &str,
        add: bool,
        pair: &AllowedAddressPair,
        retry: RevisionRetry,
    ) -> Result<Option<Modified>> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.pairs
            .pending
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(id.to_string())
            .or_default()
            .push(PairOp {
                add,
                pair: pair.clone(),
                done: tx,
            });
        let lock = self
            .pairs
            .locks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(id.to_string())
            .or_default()
            .clone();
        {
            let _writer = lock.lock().await;
            let batch = self
                .pairs
                .pending
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(id)
                .unwrap_or_default();
            // Empty: an earlier writer took ours with its batch.
            if !batch.is_empty() {
                self.write_pair_batch(id, batch, retry).await;
            }
        }
        rx.await.unwrap_or_else(|_| {
            Err(Error::Decode {
                ctx: RequestContext {
                    method: "PUT".into(),
                    path: format!("/v2.0/ports/{id}"),
                    resource: Some(format!("port {id}")),
                },
                message: "the writer of this address pair change went away".into(),
            })
        })
    }

    /// One revision-checked write of every change in `batch`; if it fails, each change alone
    /// (so one refused pair does not fail the others), each caller getting its own answer.
    async fn write_pair_batch(&self, id: &str, batch: Vec<PairOp>, retry: RevisionRetry) {
        let ops: Vec<(bool, &AllowedAddressPair)> =
            batch.iter().map(|o| (o.add, &o.pair)).collect();
        let mut changed = Vec::new();
        let r = self
            .modify_port(id, retry, |p| {
                let (pairs, c) = apply_pair_ops(&p.allowed_address_pairs, &p.mac_address, &ops);
                let any = c.iter().any(|c| *c);
                changed = c;
                any.then(|| PortUpdate {
                    allowed_address_pairs: Some(pairs),
                    ..Default::default()
                })
            })
            .await;
        match r {
            Ok(m) => {
                for (op, c) in batch.into_iter().zip(changed) {
                    let _ = op.done.send(Ok(Some(Modified {
                        changed: c,
                        ..m.clone()
                    })));
                }
            }
            // The port gone: every remove is done; an add is told None (its caller: 404).
            Err(e) if e.is_not_found() => {
                for op in batch {
                    let _ = op.done.send(Ok(None));
                }
            }
            Err(e) if batch.len() == 1 => {
                if let Some(op) = batch.into_iter().next() {
                    let _ = op.done.send(Err(e));
                }
            }
            Err(_) => {
                for op in batch {
                    let one = [(op.add, &op.pair)];
                    let r = self
                        .modify_port(id, retry, |p| {
                            let (pairs, c) =
                                apply_pair_ops(&p.allowed_address_pairs, &p.mac_address, &one);
                            c[0].then(|| PortUpdate {
                                allowed_address_pairs: Some(pairs),
                                ..Default::default()
                            })
                        })
                        .await;
                    let answer = match r {
                        Ok(m) => Ok(Some(m)),
                        Err(e) if e.is_not_found() && !op.add => Ok(None),
                        Err(e) => Err(e),
                    };
                    let _ = op.done.send(answer);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pairs_match_by_address_and_mac() {
        let p = |ip: &str, mac: Option<&str>| AllowedAddressPair {
            ip_address: ip.into(),
            mac_address: mac.map(String::from),
        };
        let vm = "fa:16:3e:00:00:01";
        assert!(pair_matches(
            &p("10.0.0.5", Some(vm)),
            &p("10.0.0.5", None),
            vm
        ));
        assert!(pair_matches(
            &p("10.0.0.5/32", None),
            &p("10.0.0.5", Some("FA:16:3E:00:00:01")),
            vm
        ));
        assert!(pair_matches(
            &p("fd00::0005/128", None),
            &p("fd00::5", None),
            vm
        ));
        assert!(!pair_matches(
            &p("10.0.0.5", Some("0a:00:00:00:00:09")),
            &p("10.0.0.5", None),
            vm
        ));
        assert!(!pair_matches(
            &p("10.0.0.6", None),
            &p("10.0.0.5", None),
            vm
        ));
        assert!(!pair_matches(
            &p("10.0.0.0/24", None),
            &p("10.0.0.0", None),
            vm
        ));
    }

    #[test]
    fn bodies_and_decoding() {
        assert_eq!(v20("http://x:9696/"), "http://x:9696/v2.0");
        assert_eq!(v20("http://x:9696/v2.0/"), "http://x:9696/v2.0");
        assert_eq!(enc("a b/c"), "a%20b%2Fc");
    }
}
