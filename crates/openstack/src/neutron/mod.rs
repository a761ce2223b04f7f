//! Neutron v2.0: networks, subnets, ports (single and bulk create, paginated lists, revision-
//! checked updates), security groups, trunks, tags.
//!
//! Types follow the API reference; fields Neutron may omit are `Option` (lists default to
//! empty) and unknown fields are ignored, so a newer Neutron does not break decoding.
//!
//! Here: the [`Neutron`] client and its request plumbing (call, decode, delete, extensions).
//! `types.rs` the resources, `query.rs` [`Query`], `pagination.rs` reading a collection page by
//! page; the calls by resource in `networks.rs` (with subnets), `ports.rs` (with
//! [`Neutron::modify_port`]), `address_pairs.rs`, `security_groups.rs`, `trunks.rs`, `tags.rs`.

mod address_pairs;
mod networks;
mod pagination;
mod ports;
mod query;
mod security_groups;
mod tags;
mod trunks;
mod types;

pub use address_pairs::pair_matches;
pub use ports::Modified;
pub use query::Query;
pub use types::{
    AddressPair, AllocationPool, FixedIp, HostRoute, Network, NetworkCreate, Port, PortCreate,
    PortUpdate, SecurityGroup, SubPort, Subnet, SubnetCreate, Trunk, TrunkCreate,
};

use std::collections::HashSet;
use std::sync::Arc;

use reqwest::Method;
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::Value;
use tokio::sync::OnceCell;

use crate::config::CloudConfig;
use crate::error::{Error, RequestContext, Result};
use crate::session::{Request, Session};

use address_pairs::PairQueues;

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
    /// Allowed-address-pair changes waiting per port (see [`Neutron::add_address_pair`]).
    pairs: Arc<PairQueues>,
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
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoint_and_encoding() {
        assert_eq!(v20("http://x:9696/"), "http://x:9696/v2.0");
        assert_eq!(v20("http://x:9696/v2.0/"), "http://x:9696/v2.0");
        assert_eq!(enc("a b/c"), "a%20b%2Fc");
    }
}
