//! Trunks and their subports.

use reqwest::Method;
use serde_json::{json, Value};

use super::{enc, Neutron, Query, SubPort, Trunk, TrunkCreate};
use crate::error::{Error, RequestContext, Result};

impl Neutron {
    pub async fn create_trunk(&self, req: &TrunkCreate) -> Result<Trunk> {
        let what = format!("trunk on port {}", req.port_id);
        // Neutron 29 refuses tags in a trunk POST ("Attribute 'tags' not allowed"), even with
        // `tag-creation`: they go on right after, and a failure there removes the trunk.
        let mut body = serde_json::to_value(req).expect("serializable");
        if let Some(o) = body.as_object_mut() {
            o.remove("tags");
        }
        let mut trunk: Trunk = self
            .call_key(
                Method::POST,
                "/trunks",
                Some(json!({ "trunk": body })),
                None,
                Some(what),
                "trunk",
            )
            .await?;
        if let Err(e) = self
            .ensure_tags("trunks", &trunk.id, &mut trunk.tags, &req.tags)
            .await
        {
            // Untagged, nobody would know to remove it.
            let _ = self.delete_trunk(&trunk.id).await;
            return Err(e);
        }
        Ok(trunk)
    }

    pub async fn get_trunk(&self, id: &str) -> Result<Trunk> {
        self.call_key(
            Method::GET,
            &format!("/trunks/{}", enc(id)),
            None,
            None,
            Some(format!("trunk {id}")),
            "trunk",
        )
        .await
    }

    pub async fn list_trunks(&self, q: &Query) -> Result<Vec<Trunk>> {
        self.list("trunks", q).await
    }

    /// `PUT /v2.0/trunks/ID/add_subports`; the answer is the trunk.
    pub async fn add_subports(&self, trunk_id: &str, subports: &[SubPort]) -> Result<Trunk> {
        self.subports(trunk_id, "add_subports", json!({ "sub_ports": subports }))
            .await
    }

    /// `PUT /v2.0/trunks/ID/remove_subports` (only `port_id` matters).
    pub async fn remove_subports(&self, trunk_id: &str, port_ids: &[&str]) -> Result<Trunk> {
        let sp: Vec<Value> = port_ids.iter().map(|p| json!({ "port_id": p })).collect();
        self.subports(trunk_id, "remove_subports", json!({ "sub_ports": sp }))
            .await
    }

    async fn subports(&self, trunk_id: &str, action: &str, body: Value) -> Result<Trunk> {
        let path = format!("/trunks/{}/{action}", enc(trunk_id));
        let what = Some(format!("trunk {trunk_id}"));
        let (_, text) = self
            .call(Method::PUT, &path, Some(body), None, what.clone())
            .await?;
        // The answer is the trunk itself (not wrapped in "trunk").
        let v: Value = Self::decode("PUT", &path, what.clone(), &text)?;
        let v = match v.get("trunk") {
            Some(t) => t.clone(),
            None => v,
        };
        serde_json::from_value(v).map_err(|e| Error::Decode {
            ctx: RequestContext {
                method: "PUT".into(),
                path: format!("/v2.0{path}"),
                resource: what,
            },
            message: e.to_string(),
        })
    }

    pub async fn delete_trunk(&self, id: &str) -> Result<bool> {
        self.delete_path(&format!("/trunks/{}", enc(id)), format!("trunk {id}"))
            .await
    }
}
