//! Security groups (read only).

use reqwest::Method;

use super::{enc, Neutron, Query, SecurityGroup};
use crate::error::Result;

impl Neutron {
    pub async fn list_security_groups(&self, q: &Query) -> Result<Vec<SecurityGroup>> {
        self.list_at("security-groups", "security_groups", q).await
    }

    pub async fn get_security_group(&self, id: &str) -> Result<SecurityGroup> {
        self.call_key(
            Method::GET,
            &format!("/security-groups/{}", enc(id)),
            None,
            None,
            Some(format!("security group {id}")),
            "security_group",
        )
        .await
    }
}
