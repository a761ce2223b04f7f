//! Networks and their subnets.

use reqwest::Method;
use serde_json::json;

use super::{enc, Network, NetworkCreate, Neutron, Query, Subnet, SubnetCreate};
use crate::error::Result;

impl Neutron {
    /// Create a network, then set its tags with `PUT /v2.0/networks/ID/tags` (Neutron 29
    /// refuses `tags` in a network POST, `tag-creation` or not: it is for ports only).
    pub async fn create_network(&self, req: &NetworkCreate) -> Result<Network> {
        let mut net = self.create_network_untagged(req).await?;
        self.tag_created_network(&mut net, req).await?;
        Ok(net)
    }

    /// The tags of `req` that the new network `net` lacks, set with one PUT. If that fails the
    /// network is deleted (all or nothing) and the error returned.
    pub async fn tag_created_network(&self, net: &mut Network, req: &NetworkCreate) -> Result<()> {
        if let Err(e) = self
            .ensure_tags("networks", &net.id, &mut net.tags, &req.tags)
            .await
        {
            if let Err(de) = self.delete_network(&net.id).await {
                tracing::error!(network = %net.id, error = %de, "removing a network whose tags were refused failed");
            }
            return Err(e);
        }
        Ok(())
    }

    /// [`Neutron::create_network`]'s POST alone (no tags: Neutron takes none in it).
    pub async fn create_network_untagged(&self, req: &NetworkCreate) -> Result<Network> {
        let body = serde_json::to_value(req).expect("serializable");
        let what = format!("network {}", req.name.as_deref().unwrap_or("-"));
        self.call_key(
            Method::POST,
            "/networks",
            Some(json!({ "network": body })),
            None,
            Some(what),
            "network",
        )
        .await
    }

    pub async fn get_network(&self, id: &str) -> Result<Network> {
        self.call_key(
            Method::GET,
            &format!("/networks/{}", enc(id)),
            None,
            None,
            Some(format!("network {id}")),
            "network",
        )
        .await
    }

    pub async fn list_networks(&self, q: &Query) -> Result<Vec<Network>> {
        self.list("networks", q).await
    }

    /// One request: the first page of the networks matching `q` (at most `q`'s limit, or
    /// Neutron's page size) — a probe, e.g. `Query::new().limit(1)`, that never reads the rest
    /// of the collection.
    pub async fn first_page_networks(&self, q: &Query) -> Result<Vec<Network>> {
        Ok(self.page_at("networks", "networks", q, None).await?.0)
    }

    pub async fn delete_network(&self, id: &str) -> Result<bool> {
        self.delete_path(&format!("/networks/{}", enc(id)), format!("network {id}"))
            .await
    }

    // ------------------------------------------------------------------ subnets

    pub async fn create_subnet(&self, req: &SubnetCreate) -> Result<Subnet> {
        let what = format!("subnet {} on network {}", req.cidr, req.network_id);
        self.call_key(
            Method::POST,
            "/subnets",
            Some(json!({ "subnet": req })),
            None,
            Some(what),
            "subnet",
        )
        .await
    }

    pub async fn get_subnet(&self, id: &str) -> Result<Subnet> {
        self.call_key(
            Method::GET,
            &format!("/subnets/{}", enc(id)),
            None,
            None,
            Some(format!("subnet {id}")),
            "subnet",
        )
        .await
    }

    pub async fn list_subnets(&self, q: &Query) -> Result<Vec<Subnet>> {
        self.list("subnets", q).await
    }

    pub async fn delete_subnet(&self, id: &str) -> Result<bool> {
        self.delete_path(&format!("/subnets/{}", enc(id)), format!("subnet {id}"))
            .await
    }
}
