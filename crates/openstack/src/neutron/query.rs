//! [`Query`]: the filters of a list call, as a query string.

use super::enc;

/// Query filters for a list call: `?k=v&k=v…`. Values are URL-encoded.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Query {
    pairs: Vec<(String, String)>,
    pub(super) limit: Option<u32>,
}

impl Query {
    pub fn new() -> Query {
        Query::default()
    }
    /// Any `field=value` filter (repeatable: a field given twice matches either value).
    pub fn eq(mut self, field: &str, value: impl Into<String>) -> Query {
        self.pairs.push((field.to_string(), value.into()));
        self
    }
    pub fn id(self, id: impl Into<String>) -> Query {
        self.eq("id", id)
    }
    pub fn name(self, name: impl Into<String>) -> Query {
        self.eq("name", name)
    }
    pub fn network_id(self, id: impl Into<String>) -> Query {
        self.eq("network_id", id)
    }
    pub fn device_owner(self, v: impl Into<String>) -> Query {
        self.eq("device_owner", v)
    }
    pub fn device_id(self, v: impl Into<String>) -> Query {
        self.eq("device_id", v)
    }
    pub fn description(self, v: impl Into<String>) -> Query {
        self.eq("description", v)
    }
    pub fn mac_address(self, v: impl Into<String>) -> Query {
        self.eq("mac_address", v)
    }
    pub fn project_id(self, v: impl Into<String>) -> Query {
        self.eq("project_id", v)
    }
    pub fn port_id(self, v: impl Into<String>) -> Query {
        self.eq("port_id", v)
    }
    /// Ports with this fixed IP (`fixed_ips=ip_address=X`).
    pub fn fixed_ip(self, ip: impl AsRef<str>) -> Query {
        let v = format!("ip_address={}", ip.as_ref());
        self.eq("fixed_ips", v)
    }
    /// Resources with all of these tags.
    pub fn tags<S: AsRef<str>>(self, tags: &[S]) -> Query {
        let v = tags
            .iter()
            .map(|t| t.as_ref())
            .collect::<Vec<_>>()
            .join(",");
        self.eq("tags", v)
    }
    /// Resources with any of these tags.
    pub fn tags_any<S: AsRef<str>>(self, tags: &[S]) -> Query {
        let v = tags
            .iter()
            .map(|t| t.as_ref())
            .collect::<Vec<_>>()
            .join(",");
        self.eq("tags-any", v)
    }
    /// Page size: the list is still read whole, `limit` items per request (Neutron may send
    /// fewer: its `pagination_max_limit` caps it). For one request only, use a `first_page_*`
    /// call.
    pub fn limit(mut self, n: u32) -> Query {
        self.limit = Some(n);
        self
    }

    pub(super) fn to_query_string(&self, marker: Option<&str>) -> String {
        let mut parts: Vec<String> = self
            .pairs
            .iter()
            .map(|(k, v)| format!("{}={}", enc(k), enc(v)))
            .collect();
        if let Some(l) = self.limit {
            parts.push(format!("limit={l}"));
        }
        if let Some(m) = marker {
            parts.push(format!("marker={}", enc(m)));
        }
        if parts.is_empty() {
            String::new()
        } else {
            format!("?{}", parts.join("&"))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_strings() {
        let q = Query::new()
            .network_id("n1")
            .fixed_ip("10.0.0.5")
            .tags(&["a", "b c"])
            .tags_any(&["x"])
            .limit(2);
        assert_eq!(
            q.to_query_string(Some("m/1")),
            "?network_id=n1&fixed_ips=ip_address%3D10.0.0.5&tags=a%2Cb%20c&tags-any=x&limit=2&marker=m%2F1"
        );
        assert_eq!(Query::new().to_query_string(None), "");
    }
}
