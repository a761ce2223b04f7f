//! Which backend and which binding serve what: every configured backend by id and every
//! binding by kind. A Courier network is found in the backend that has it (a Logical_Switch of
//! that name for OVN direct; later a tagged Neutron network), so the registration lives in the
//! backend, visible to every host. A backend that is down makes only its own networks "try
//! again later": the others still resolve.

use std::sync::Arc;

use crate::backend::Backend;
use crate::binding::EdgeBinding;
use crate::error::{Error, Result};
use crate::model::Network;

pub struct Registry {
    backends: Vec<Arc<dyn Backend>>,
    bindings: Vec<Arc<dyn EdgeBinding>>,
    /// Where `network create` puts a network when no backend is named.
    pub default_backend: String,
    /// The binding of an attachment that names none.
    pub default_binding: String,
}

impl Registry {
    /// `default_backend` (else the first backend) and the first binding are the defaults.
    pub fn new(
        backends: Vec<Arc<dyn Backend>>,
        bindings: Vec<Arc<dyn EdgeBinding>>,
        default_backend: Option<&str>,
    ) -> Registry {
        Registry {
            default_backend: default_backend
                .map(String::from)
                .or_else(|| backends.first().map(|b| b.id().to_string()))
                .unwrap_or_default(),
            default_binding: bindings
                .first()
                .map(|b| b.kind().to_string())
                .unwrap_or_default(),
            backends,
            bindings,
        }
    }

    pub fn backends(&self) -> &[Arc<dyn Backend>] {
        &self.backends
    }

    pub fn bindings(&self) -> &[Arc<dyn EdgeBinding>] {
        &self.bindings
    }

    pub fn backend(&self, id: &str) -> Result<&Arc<dyn Backend>> {
        self.backends.iter().find(|b| b.id() == id).ok_or_else(|| {
            Error::InvalidInput(format!(
                "backend {id:?} is not configured on this daemon (configured: {}): configure it, or use one of those",
                self.backend_ids().join(", ")
            ))
        })
    }

    /// The binding of `kind`, or the default one.
    pub fn binding(&self, kind: Option<&str>) -> Result<&Arc<dyn EdgeBinding>> {
        let kind = kind.unwrap_or(&self.default_binding);
        self.bindings
            .iter()
            .find(|b| b.kind() == kind)
            .ok_or_else(|| {
                Error::InvalidInput(format!(
                    "binding {kind:?} is not available on this host (available: {})",
                    self.bindings
                        .iter()
                        .map(|b| b.kind())
                        .collect::<Vec<_>>()
                        .join(", ")
                ))
            })
    }

    fn backend_ids(&self) -> Vec<&str> {
        self.backends.iter().map(|b| b.id()).collect()
    }

    /// The Courier network `name` in backend `id` only (a caller that knows where it is).
    pub async fn network_in(&self, id: &str, name: &str) -> Result<(Arc<dyn Backend>, Network)> {
        let b = self.backend(id)?.clone();
        match b.network(name).await? {
            Some(n) => Ok((b, n)),
            None => Err(Error::UnknownNetwork(name.to_string())),
        }
    }

    /// The Courier network `name` and the backend that has it, asking every backend at once.
    /// Found in one: served, whatever the others answered (down, or failing for good: a bad
    /// cloud fails its own networks only). Not found in any that answered while one failed:
    /// that backend's error (it may be there) — its own hard error as it is, "try again
    /// later" if it is only unreachable. In two backends: an error that says so.
    pub async fn network(&self, name: &str) -> Result<(Arc<dyn Backend>, Network)> {
        resolve(name, self.ask_all(name).await)
    }

    /// Whether any backend has network `name`: Ok(Some(backend id)) or Ok(None); Err only
    /// when it cannot be told — no backend has it, and one of them failed to answer (the
    /// error is that backend's). Network creation goes ahead on such an error (logged) when
    /// the failing backend is not the one creating: a name later found in two backends is
    /// refused when used.
    pub async fn holder_of(&self, name: &str) -> Result<Option<String>> {
        let answers = self.ask_all(name).await;
        let mut failed = None;
        for (b, a) in answers {
            match a {
                Ok(Some(_)) => return Ok(Some(b.id().to_string())),
                Ok(None) => {}
                Err(e) => failed = failed.or(Some(e)),
            }
        }
        match failed {
            Some(e) => Err(e),
            None => Ok(None),
        }
    }

    async fn ask_all(&self, name: &str) -> Vec<Answer> {
        futures::future::join_all(
            self.backends
                .iter()
                .map(|b| async move { (b.clone(), b.network(name).await) }),
        )
        .await
    }
}

/// One backend's answer to "do you have network N?".
type Answer = (Arc<dyn Backend>, Result<Option<Network>>);

/// The decision of [`Registry::network`], given each backend's answer.
fn resolve(name: &str, answers: Vec<Answer>) -> Result<(Arc<dyn Backend>, Network)> {
    let mut found = Vec::new();
    let mut down = Vec::new();
    let mut failed = Vec::new();
    for (b, a) in answers {
        match a {
            Ok(Some(n)) => found.push((b, n)),
            Ok(None) => {}
            Err(e) if e.code() == crate::error::code::TRY_AGAIN_LATER => down.push((b, e)),
            Err(e) => failed.push((b, e)),
        }
    }
    if found.len() == 1 {
        for (b, e) in down.iter().chain(&failed) {
            tracing::debug!(network = name, backend = b.id(), error = %e,
                "network found in another backend; this one could not be asked");
        }
        return Ok(found.remove(0));
    }
    if found.len() > 1 {
        return Err(Error::InvalidInput(format!(
            "network {name:?} exists in several backends ({}): rename or remove one of them",
            found
                .iter()
                .map(|(b, _)| b.id())
                .collect::<Vec<_>>()
                .join(", ")
        )));
    }
    // Found nowhere. A hard error says what to fix; else an unreachable backend may have it.
    if let Some((_, e)) = failed.into_iter().next() {
        return Err(e);
    }
    match down.first() {
        Some((b, e)) => Err(Error::BackendDown {
            backend: b.id().to_string(),
            detail: format!("network {name:?} may be there: {e}"),
        }),
        None => Err(Error::UnknownNetwork(name.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::{PortQuery, PortRef, PortRequest};
    use crate::model::{LogicalPort, NetworkSpec};
    use async_trait::async_trait;

    /// A backend that only has an id: `resolve` looks at nothing else.
    struct Named(&'static str);

    #[async_trait]
    impl Backend for Named {
        fn id(&self) -> &str {
            self.0
        }
        async fn health(&self) -> Result<()> {
            Ok(())
        }
        async fn create_network(&self, _: &NetworkSpec) -> Result<Network> {
            unreachable!()
        }
        async fn delete_network(&self, _: &str) -> Result<()> {
            unreachable!()
        }
        async fn network(&self, _: &str) -> Result<Option<Network>> {
            unreachable!()
        }
        async fn networks(&self) -> Result<Vec<Network>> {
            unreachable!()
        }
        async fn create_ports(&self, _: &[PortRequest]) -> Result<Vec<LogicalPort>> {
            unreachable!()
        }
        async fn delete_port(&self, _: &PortRef, _: &str) -> Result<bool> {
            unreachable!()
        }
        async fn port(&self, _: &PortRef) -> Result<Option<LogicalPort>> {
            unreachable!()
        }
        async fn find_ports(&self, _: &PortQuery) -> Result<Vec<LogicalPort>> {
            unreachable!()
        }
    }

    fn net(backend: &str) -> Network {
        Network {
            name: "web".into(),
            backend_id: "x".into(),
            backend: backend.into(),
            subnet: None,
            gateway: None,
            subnet6: None,
            gateway6: None,
            exclude_ips: vec![],
            mtu: None,
            dns_domain: None,
            created_by_courier: false,
            ports: 0,
            physical: None,
        }
    }

    fn err(r: Result<(Arc<dyn Backend>, Network)>) -> Error {
        match r {
            Ok((b, _)) => panic!("resolved to {}", b.id()),
            Err(e) => e,
        }
    }

    fn down() -> Error {
        Error::Timeout("no reply".into())
    }

    #[test]
    fn a_network_is_found_where_it_is_and_a_down_backend_only_blocks_its_own() {
        let (a, b): (Arc<dyn Backend>, Arc<dyn Backend>) =
            (Arc::new(Named("ovn")), Arc::new(Named("neutron")));
        // Found in one backend while the other is down: served.
        let (got, n) = resolve(
            "web",
            vec![(a.clone(), Ok(Some(net("ovn")))), (b.clone(), Err(down()))],
        )
        .unwrap();
        assert_eq!((got.id(), n.backend.as_str()), ("ovn", "ovn"));
        // Found nowhere reachable, one backend down: try again later (11), naming it.
        let e = err(resolve(
            "web",
            vec![(a.clone(), Ok(None)), (b.clone(), Err(down()))],
        ));
        assert_eq!(e.code(), crate::error::code::TRY_AGAIN_LATER);
        assert!(e.to_string().contains("neutron"), "{e}");
        // Found nowhere, all answered: unknown network.
        let e = err(resolve(
            "web",
            vec![(a.clone(), Ok(None)), (b.clone(), Ok(None))],
        ));
        assert!(matches!(e, Error::UnknownNetwork(_)));
        // In two backends: refused, naming both.
        let e = err(resolve(
            "web",
            vec![
                (a.clone(), Ok(Some(net("ovn")))),
                (b.clone(), Ok(Some(net("neutron")))),
            ],
        ));
        assert!(e.to_string().contains("ovn, neutron"), "{e}");
        // A backend's own hard error is not hidden when nobody has the network ...
        let e = err(resolve(
            "web",
            vec![
                (a.clone(), Err(Error::BackendState("two switches".into()))),
                (b.clone(), Ok(None)),
            ],
        ));
        assert!(matches!(e, Error::BackendState(_)));
        // ... nor behind another backend's "try again later": it says what to fix.
        let e = err(resolve(
            "web",
            vec![(a.clone(), Err(down())), (b.clone(), Err(bad_cloud()))],
        ));
        assert!(e.to_string().contains("401"), "{e}");
        // A backend failing for good (a bad cloud) does not fail a network found elsewhere.
        let (got, _) = resolve(
            "web",
            vec![(a, Ok(Some(net("ovn")))), (b, Err(bad_cloud()))],
        )
        .unwrap();
        assert_eq!(got.id(), "ovn");
    }

    fn bad_cloud() -> Error {
        Error::OpenStack {
            context: "looking up network web".into(),
            source: Box::new(courier_openstack::Error::Auth {
                auth_url: "http://ks:5000/v3".into(),
                user: "user admin".into(),
                message: "Keystone answered 401".into(),
            }),
        }
    }
}
