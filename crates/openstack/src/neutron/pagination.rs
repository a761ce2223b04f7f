//! Reading a whole collection page by page (`limit` + `marker`, the `<key>_links` "next").

use reqwest::Method;
use serde::de::DeserializeOwned;
use serde_json::Value;

use super::{Network, Neutron, Port, Query, SecurityGroup, Subnet, Trunk};
use crate::error::{Error, RequestContext, Result};

impl Neutron {
    /// GET a collection, following pagination (`limit` + `marker`, `<key>_links` next).
    pub(super) async fn list<T: DeserializeOwned + HasId>(
        &self,
        collection: &str,
        q: &Query,
    ) -> Result<Vec<T>> {
        self.list_at(collection, collection, q).await
    }

    /// [`Neutron::list`] where the URL segment differs from the JSON key (`security-groups`).
    pub(super) async fn list_at<T: DeserializeOwned + HasId>(
        &self,
        segment: &str,
        collection: &str,
        q: &Query,
    ) -> Result<Vec<T>> {
        let mut out: Vec<T> = Vec::new();
        let mut marker: Option<String> = None;
        loop {
            let (items, next) = self
                .page_at::<T>(segment, collection, q, marker.as_deref())
                .await?;
            let empty = items.is_empty();
            out.extend(items);
            match next {
                Some(m) if !empty && Some(&m) != marker.as_ref() => marker = Some(m),
                _ => return Ok(out),
            }
        }
    }

    /// One GET of a collection: the page after `marker` (the first when None) and the marker
    /// of the page after it, if any.
    pub(super) async fn page_at<T: DeserializeOwned + HasId>(
        &self,
        segment: &str,
        collection: &str,
        q: &Query,
        marker: Option<&str>,
    ) -> Result<(Vec<T>, Option<String>)> {
        let path = format!("/{segment}{}", q.to_query_string(marker));
        let (_, text) = self.call(Method::GET, &path, None, None, None).await?;
        let mut v: Value = Self::decode("GET", &path, None, &text)?;
        let items: Vec<T> = serde_json::from_value(
            v.get_mut(collection)
                .map(Value::take)
                .unwrap_or(Value::Array(vec![])),
        )
        .map_err(|e| Error::Decode {
            ctx: RequestContext {
                method: "GET".into(),
                path: format!("/v2.0{path}"),
                resource: None,
            },
            message: e.to_string(),
        })?;
        // Neutron pages every list when it has `pagination_max_limit`, whether the query asked
        // for a limit or not (and caps a larger one): its "next" link is followed always.
        let next = next_marker(v.get(format!("{collection}_links").as_str())).or_else(|| {
            // No links (pagination disabled?): a full page of ours may have a successor.
            q.limit
                .is_some_and(|l| items.len() as u32 >= l)
                .then(|| items.last().map(|i| i.id().to_string()))
                .flatten()
        });
        Ok((items, next))
    }
}

/// The `marker` of a `*_links` "next" href, if there is a next page.
fn next_marker(links: Option<&Value>) -> Option<String> {
    let links = links?.as_array()?;
    let next = links
        .iter()
        .find(|l| l.get("rel").and_then(|r| r.as_str()) == Some("next"))?;
    let href = next.get("href")?.as_str()?;
    let query = href.split_once('?')?.1;
    query.split('&').find_map(|kv| {
        let (k, v) = kv.split_once('=')?;
        (k == "marker").then(|| percent_decode(v))
    })
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            if let Ok(v) = u8::from_str_radix(&s[i + 1..i + 3], 16) {
                out.push(v);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Items of a paginated collection.
pub(super) trait HasId {
    fn id(&self) -> &str;
}

macro_rules! has_id {
    ($($t:ty),*) => { $(impl HasId for $t { fn id(&self) -> &str { &self.id } })* };
}
has_id!(Network, Subnet, Port, SecurityGroup, Trunk);

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn next_link_marker() {
        let links = json!([
            {"rel": "previous", "href": "http://n:9696/v2.0/ports?limit=1&marker=aaa&page_reverse=True"},
            {"rel": "next", "href": "http://n:9696/v2.0/ports?limit=1&marker=b%2Dbb"}
        ]);
        assert_eq!(next_marker(Some(&links)).as_deref(), Some("b-bb"));
        assert_eq!(next_marker(Some(&json!([]))), None);
        assert_eq!(next_marker(None), None);
        assert_eq!(percent_decode("a%20b%"), "a b%");
    }
}
