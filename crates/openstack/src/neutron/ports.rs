//! Ports: single and bulk create (with their tags), get, list, update, delete, and the
//! revision-checked read-modify-write [`Neutron::modify_port`].

use reqwest::Method;
use serde_json::{json, Value};

use super::{enc, Neutron, Port, PortCreate, PortUpdate, Query};
use crate::error::{Error, RequestContext, Result};
use crate::retry::RevisionRetry;

/// What [`Neutron::modify_port`] did: the port as it is now, whether it was changed, and how
/// many 412s it took.
#[derive(Debug, Clone)]
pub struct Modified {
    pub port: Port,
    pub changed: bool,
    pub conflicts: u32,
}

impl Neutron {
    /// Whether to send tags in the port POST. Neutron keeps them only with ML2's
    /// `tag_ports_during_bulk_creation` extension driver (single and bulk creates alike), and
    /// ML2/OVN does not list that alias even when the driver is loaded; without the driver a
    /// Neutron with `standard-attr-tag` accepts and drops them. So they are sent whenever ports
    /// have tags at all, and the create's answer tells: tags missing from it are set with a
    /// PUT (`ensure_tags`). (`tag-creation` is not this: it is `POST /ports/ID/tags`.)
    async fn inline_port_tags(&self) -> Result<bool> {
        let e = self.extensions().await?;
        Ok(e.contains("tag-ports-during-bulk-creation") || e.contains("standard-attr-tag"))
    }

    fn port_body(p: &PortCreate, inline_tags: bool) -> Value {
        let mut v = serde_json::to_value(p).expect("serializable");
        if !inline_tags {
            if let Some(o) = v.as_object_mut() {
                o.remove("tags");
            }
        }
        v
    }

    pub async fn create_port(&self, req: &PortCreate) -> Result<Port> {
        let inline = !req.tags.is_empty() && self.inline_port_tags().await?;
        let what = format!(
            "port {} on network {}",
            req.name.as_deref().unwrap_or("-"),
            req.network_id
        );
        let mut port: Port = self
            .call_key(
                Method::POST,
                "/ports",
                Some(json!({ "port": Self::port_body(req, inline) })),
                None,
                Some(what),
                "port",
            )
            .await?;
        self.ensure_tags("ports", &port.id, &mut port.tags, &req.tags)
            .await?;
        Ok(port)
    }

    /// `POST /v2.0/ports` with `{"ports": [...]}`: all are created or none (Neutron rolls the
    /// bulk back on an error). The answer is in the order of `reqs`.
    pub async fn create_ports(&self, reqs: &[PortCreate]) -> Result<Vec<Port>> {
        let mut ports = self.create_ports_untagged(reqs).await?;
        self.tag_created_ports(&mut ports, reqs).await?;
        Ok(ports)
    }

    /// The tags of `reqs` that the create's answer `ports` lacks, set with one PUT per port.
    pub async fn tag_created_ports(&self, ports: &mut [Port], reqs: &[PortCreate]) -> Result<()> {
        for (p, r) in ports.iter_mut().zip(reqs) {
            self.ensure_tags("ports", &p.id, &mut p.tags, &r.tags)
                .await?;
        }
        Ok(())
    }

    /// [`Neutron::create_ports`]'s POST alone: the ports as Neutron answered, with only the
    /// tags it kept from the POST (all of them with `tag-ports-during-bulk-creation`, else
    /// none); [`Neutron::tag_created_ports`] sets the rest.
    pub async fn create_ports_untagged(&self, reqs: &[PortCreate]) -> Result<Vec<Port>> {
        if reqs.is_empty() {
            return Ok(Vec::new());
        }
        let inline = reqs.iter().any(|r| !r.tags.is_empty()) && self.inline_port_tags().await?;
        let body: Vec<Value> = reqs.iter().map(|r| Self::port_body(r, inline)).collect();
        let what = format!("{} ports on network {}", reqs.len(), reqs[0].network_id);
        self.call_key(
            Method::POST,
            "/ports",
            Some(json!({ "ports": body })),
            None,
            Some(what),
            "ports",
        )
        .await
    }

    pub async fn get_port(&self, id: &str) -> Result<Port> {
        self.call_key(
            Method::GET,
            &format!("/ports/{}", enc(id)),
            None,
            None,
            Some(format!("port {id}")),
            "port",
        )
        .await
    }

    /// All ports matching `q`, every page of them.
    pub async fn list_ports(&self, q: &Query) -> Result<Vec<Port>> {
        self.list("ports", q).await
    }

    /// One request: the first page of the ports matching `q` (see
    /// [`Neutron::first_page_networks`]).
    pub async fn first_page_ports(&self, q: &Query) -> Result<Vec<Port>> {
        Ok(self.page_at("ports", "ports", q, None).await?.0)
    }

    /// PUT a partial port. With `if_revision`, sends `If-Match: revision_number=N`: a port
    /// changed since is [`Error::RevisionConflict`].
    pub async fn update_port(
        &self,
        id: &str,
        upd: &PortUpdate,
        if_revision: Option<u64>,
    ) -> Result<Port> {
        self.call_key(
            Method::PUT,
            &format!("/ports/{}", enc(id)),
            Some(json!({ "port": upd })),
            if_revision,
            Some(format!("port {id}")),
            "port",
        )
        .await
    }

    pub async fn delete_port(&self, id: &str) -> Result<bool> {
        self.delete_path(&format!("/ports/{}", enc(id)), format!("port {id}"))
            .await
    }

    /// A read-modify-write of port `id` that never loses a concurrent change: GET the port,
    /// `change` says what to PUT (None: nothing to do, e.g. already as wanted), PUT it with
    /// `If-Match: revision_number=N`; on 412 (someone changed the port in between) wait a
    /// random while from `retry.backoff` and start again from a fresh GET, at most
    /// `retry.attempts` PUTs. Any other error is returned as it is (a 404 too).
    pub async fn modify_port<F>(
        &self,
        id: &str,
        retry: RevisionRetry,
        mut change: F,
    ) -> Result<Modified>
    where
        F: FnMut(&Port) -> Option<PortUpdate>,
    {
        let mut conflicts = 0u32;
        loop {
            let port = self.get_port(id).await?;
            let Some(upd) = change(&port) else {
                return Ok(Modified {
                    port,
                    changed: false,
                    conflicts,
                });
            };
            let rev = port.revision_number.ok_or_else(|| Error::Decode {
                ctx: RequestContext {
                    method: "GET".into(),
                    path: format!("/v2.0/ports/{id}"),
                    resource: Some(format!("port {id}")),
                },
                message: "no revision_number (Neutron without standard-attr-revisions): a safe concurrent update is impossible".into(),
            })?;
            match self.update_port(id, &upd, Some(rev)).await {
                Ok(port) => {
                    return Ok(Modified {
                        port,
                        changed: true,
                        conflicts,
                    })
                }
                Err(Error::RevisionConflict { .. }) if conflicts + 1 < retry.attempts.max(1) => {
                    tokio::time::sleep(retry.backoff.wait(conflicts)).await;
                    conflicts += 1;
                }
                Err(e) => return Err(e),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::neutron::FixedIp;

    #[test]
    fn port_bodies() {
        let p = PortCreate {
            network_id: "n".into(),
            name: Some("p".into()),
            fixed_ips: vec![FixedIp {
                subnet_id: Some("s".into()),
                ip_address: None,
            }],
            binding_host_id: Some("h1".into()),
            binding_profile: Some(json!({"capabilities": ["switchdev"]})),
            security_groups: Some(vec![]),
            tags: vec!["t".into()],
            ..Default::default()
        };
        assert_eq!(
            Neutron::port_body(&p, false),
            json!({"network_id": "n", "name": "p", "fixed_ips": [{"subnet_id": "s"}],
                "security_groups": [], "binding:host_id": "h1",
                "binding:profile": {"capabilities": ["switchdev"]}})
        );
        assert_eq!(Neutron::port_body(&p, true)["tags"], json!(["t"]));
    }
}
