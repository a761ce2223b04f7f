//! Tags on any resource: `/v2.0/{resource}/{id}/tags`.

use reqwest::Method;
use serde_json::json;

use super::{enc, Neutron};
use crate::error::Result;

impl Neutron {
    /// A create's answer `have` lacks some of `want` (Neutron dropped or refused them in the
    /// POST): sets them with `PUT /{resource}/{id}/tags`.
    pub async fn ensure_tags(
        &self,
        resource: &str,
        id: &str,
        have: &mut Vec<String>,
        want: &[String],
    ) -> Result<()> {
        if !want.iter().all(|t| have.contains(t)) {
            *have = self.replace_tags(resource, id, want).await?;
        }
        Ok(())
    }

    /// `PUT /v2.0/{resource}/{id}/tags/{tag}` (resource: `networks`, `ports`, `subnets`,
    /// `trunks`, `security-groups`…).
    pub async fn add_tag(&self, resource: &str, id: &str, tag: &str) -> Result<()> {
        let path = format!("/{resource}/{}/tags/{}", enc(id), enc(tag));
        self.call(
            Method::PUT,
            &path,
            None,
            None,
            Some(format!("{resource} {id}")),
        )
        .await?;
        Ok(())
    }

    /// `DELETE /v2.0/{resource}/{id}/tags/{tag}`; a tag that was not there is Ok(false).
    pub async fn remove_tag(&self, resource: &str, id: &str, tag: &str) -> Result<bool> {
        let path = format!("/{resource}/{}/tags/{}", enc(id), enc(tag));
        self.delete_path(&path, format!("{resource} {id}")).await
    }

    /// `PUT /v2.0/{resource}/{id}/tags` with all the tags; returns them.
    pub async fn replace_tags<S: AsRef<str>>(
        &self,
        resource: &str,
        id: &str,
        tags: &[S],
    ) -> Result<Vec<String>> {
        let tags: Vec<&str> = tags.iter().map(|t| t.as_ref()).collect();
        self.call_key(
            Method::PUT,
            &format!("/{resource}/{}/tags", enc(id)),
            Some(json!({ "tags": tags })),
            None,
            Some(format!("{resource} {id}")),
            "tags",
        )
        .await
    }

    /// `GET /v2.0/{resource}/{id}/tags`.
    pub async fn get_tags(&self, resource: &str, id: &str) -> Result<Vec<String>> {
        self.call_key(
            Method::GET,
            &format!("/{resource}/{}/tags", enc(id)),
            None,
            None,
            Some(format!("{resource} {id}")),
            "tags",
        )
        .await
    }
}
