//! Keystone v3: the auth request body, the token and its catalog, endpoint selection.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::Deserialize;
use serde_json::{json, Value};

use crate::config::{AuthType, CloudConfig, Interface};
use crate::error::{Error, Result};
use crate::secret::Secret;

/// A Keystone token with what came with it.
#[derive(Debug, Clone)]
pub struct Token {
    /// From `X-Subject-Token`.
    pub value: Secret,
    /// `token.expires_at`.
    pub expires_at: Option<SystemTime>,
    /// `token.project.id`: the project the token is scoped to.
    pub project_id: Option<String>,
    pub user_id: Option<String>,
    pub catalog: Vec<CatalogService>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct CatalogService {
    #[serde(rename = "type")]
    pub service_type: String,
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub endpoints: Vec<CatalogEndpoint>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct CatalogEndpoint {
    pub interface: String,
    #[serde(default)]
    pub region: Option<String>,
    #[serde(default)]
    pub region_id: Option<String>,
    pub url: String,
}

#[derive(Deserialize)]
struct TokenBody {
    token: TokenInner,
}

#[derive(Deserialize)]
struct TokenInner {
    #[serde(default)]
    expires_at: Option<String>,
    #[serde(default)]
    project: Option<IdOnly>,
    #[serde(default)]
    user: Option<IdOnly>,
    #[serde(default)]
    catalog: Vec<CatalogService>,
}

#[derive(Deserialize)]
struct IdOnly {
    id: Option<String>,
}

impl Token {
    /// Build from the `X-Subject-Token` header value and the response body.
    pub fn from_response(subject_token: &str, body: &str) -> std::result::Result<Token, String> {
        let b: TokenBody = serde_json::from_str(body).map_err(|e| e.to_string())?;
        let expires_at = match b.token.expires_at {
            Some(s) => Some(parse_rfc3339(&s).ok_or_else(|| format!("bad expires_at {s:?}"))?),
            None => None,
        };
        Ok(Token {
            value: Secret::new(subject_token),
            expires_at,
            project_id: b.token.project.and_then(|p| p.id),
            user_id: b.token.user.and_then(|u| u.id),
            catalog: b.token.catalog,
        })
    }

    /// How long the token stays valid from now (zero when past; an hour when unknown).
    pub fn remaining(&self) -> Duration {
        match self.expires_at {
            Some(t) => t
                .duration_since(SystemTime::now())
                .unwrap_or(Duration::ZERO),
            None => Duration::from_secs(3600),
        }
    }

    /// The endpoint of `service_type` for `interface` in `region` (any region when None).
    pub fn endpoint(
        &self,
        service_type: &str,
        interface: Interface,
        region: Option<&str>,
    ) -> Result<String> {
        select_endpoint(&self.catalog, service_type, interface, region)
    }
}

/// Pick an endpoint from a catalog.
pub fn select_endpoint(
    catalog: &[CatalogService],
    service_type: &str,
    interface: Interface,
    region: Option<&str>,
) -> Result<String> {
    let Some(svc) = catalog.iter().find(|s| s.service_type == service_type) else {
        let types: Vec<&str> = catalog.iter().map(|s| s.service_type.as_str()).collect();
        return Err(Error::Config(format!(
            "no {service_type:?} service in the token's catalog (services: {})",
            types.join(", ")
        )));
    };
    let found = svc.endpoints.iter().find(|e| {
        e.interface.eq_ignore_ascii_case(interface.as_str())
            && region
                .is_none_or(|r| e.region_id.as_deref() == Some(r) || e.region.as_deref() == Some(r))
    });
    match found {
        Some(e) => Ok(e.url.clone()),
        None => {
            let have: Vec<String> = svc
                .endpoints
                .iter()
                .map(|e| {
                    format!(
                        "{}@{}",
                        e.interface,
                        e.region_id
                            .as_deref()
                            .or(e.region.as_deref())
                            .unwrap_or("-")
                    )
                })
                .collect();
            Err(Error::Config(format!(
                "no {} endpoint of {service_type:?}{} in the catalog (has: {})",
                interface.as_str(),
                region
                    .map(|r| format!(" in region {r:?}"))
                    .unwrap_or_default(),
                have.join(", ")
            )))
        }
    }
}

/// `{auth_url}/auth/tokens`, adding `/v3` to an unversioned auth URL.
pub(crate) fn tokens_url(auth_url: &str) -> String {
    let base = auth_url.trim_end_matches('/');
    if base.ends_with("/v3") {
        format!("{base}/auth/tokens")
    } else {
        format!("{base}/v3/auth/tokens")
    }
}

fn domain(name: &Option<String>, id: &Option<String>) -> Option<Value> {
    match (id, name) {
        (Some(id), _) => Some(json!({ "id": id })),
        (None, Some(n)) => Some(json!({ "name": n })),
        (None, None) => None,
    }
}

fn user(cfg: &CloudConfig) -> Value {
    let mut u = serde_json::Map::new();
    if let Some(id) = &cfg.user_id {
        u.insert("id".into(), json!(id));
    } else if let Some(n) = &cfg.username {
        u.insert("name".into(), json!(n));
        if let Some(d) = domain(&cfg.user_domain_name, &cfg.user_domain_id) {
            u.insert("domain".into(), d);
        }
    }
    Value::Object(u)
}

/// The body of `POST /v3/auth/tokens`. It holds the secret: build it, send it, drop it.
pub(crate) fn auth_body(cfg: &CloudConfig) -> Result<Value> {
    match cfg.auth_type {
        AuthType::Password => {
            let mut u = user(cfg);
            let pw = cfg
                .password
                .as_ref()
                .ok_or_else(|| Error::Config("password missing".into()))?;
            u["password"] = json!(pw.expose());
            let mut body =
                json!({"auth": {"identity": {"methods": ["password"], "password": {"user": u}}}});
            let scope = if let Some(id) = &cfg.project_id {
                Some(json!({"project": {"id": id}}))
            } else {
                cfg.project_name.as_ref().map(|n| {
                    let mut p = json!({ "name": n });
                    if let Some(d) = domain(&cfg.project_domain_name, &cfg.project_domain_id) {
                        p["domain"] = d;
                    }
                    json!({ "project": p })
                })
            };
            if let Some(s) = scope {
                body["auth"]["scope"] = s;
            }
            Ok(body)
        }
        AuthType::ApplicationCredential => {
            let secret = cfg
                .application_credential_secret
                .as_ref()
                .ok_or_else(|| Error::Config("application_credential_secret missing".into()))?;
            let mut ac = json!({ "secret": secret.expose() });
            if let Some(id) = &cfg.application_credential_id {
                ac["id"] = json!(id);
            } else {
                ac["name"] = json!(cfg.application_credential_name);
                ac["user"] = user(cfg);
            }
            // An application credential carries its own project scope: no "scope" here.
            Ok(
                json!({"auth": {"identity": {"methods": ["application_credential"], "application_credential": ac}}}),
            )
        }
        AuthType::NoAuth => Err(Error::Config("noauth has no Keystone request".into())),
    }
}

/// Parse Keystone's `expires_at`, e.g. `2026-05-01T12:34:56.000000Z` or `...+00:00`.
pub(crate) fn parse_rfc3339(s: &str) -> Option<SystemTime> {
    let s = s.trim();
    let (date, rest) = s.split_once(['T', 't', ' '])?;
    let mut d = date.split('-');
    let y: i64 = d.next()?.parse().ok()?;
    let mo: i64 = d.next()?.parse().ok()?;
    let da: i64 = d.next()?.parse().ok()?;
    // time, then an optional offset
    let (time, offset_secs) = if let Some(t) = rest.strip_suffix(['Z', 'z']) {
        (t, 0i64)
    } else if let Some(i) = rest.rfind(['+', '-']) {
        let (t, off) = rest.split_at(i);
        let sign = if off.starts_with('-') { -1 } else { 1 };
        let (oh, om) = off[1..]
            .split_once(':')
            .unwrap_or((&off[1..3.min(off.len())], "0"));
        (
            t,
            sign * (oh.parse::<i64>().ok()? * 3600 + om.parse::<i64>().ok()? * 60),
        )
    } else {
        (rest, 0)
    };
    let mut t = time.split(':');
    let h: i64 = t.next()?.parse().ok()?;
    let mi: i64 = t.next()?.parse().ok()?;
    let sec_s = t.next().unwrap_or("0");
    let (whole, frac) = sec_s.split_once('.').unwrap_or((sec_s, ""));
    let sec: i64 = whole.parse().ok()?;
    let nanos: u32 = if frac.is_empty() {
        0
    } else {
        let digits: String = frac.chars().take(9).collect();
        let n: u32 = digits.parse().ok()?;
        n * 10u32.pow(9 - digits.len() as u32)
    };
    if !(1..=12).contains(&mo) || !(1..=31).contains(&da) || h > 23 || mi > 59 || sec > 60 {
        return None;
    }
    // days from civil (Howard Hinnant)
    let yy = if mo <= 2 { y - 1 } else { y };
    let era = yy.div_euclid(400);
    let yoe = yy - era * 400;
    let mp = (mo + 9) % 12;
    let doy = (153 * mp + 2) / 5 + da - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146097 + doe - 719468;
    let secs = days * 86400 + h * 3600 + mi * 60 + sec - offset_secs;
    if secs < 0 {
        return None;
    }
    Some(UNIX_EPOCH + Duration::new(secs as u64, nanos))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) const TOKEN_BODY: &str = r#"{"token": {
      "methods": ["password"], "expires_at": "2030-01-02T03:04:05.123456Z",
      "user": {"id": "u1", "name": "admin", "domain": {"id": "default", "name": "Default"}},
      "project": {"id": "p1", "name": "admin", "domain": {"id": "default", "name": "Default"}},
      "roles": [{"id": "r", "name": "admin"}], "is_domain": false,
      "catalog": [
        {"type": "identity", "name": "keystone", "id": "k", "endpoints": [
          {"id": "1", "interface": "public", "region_id": "RegionOne", "region": "RegionOne", "url": "http://ks/v3"}]},
        {"type": "network", "name": "neutron", "id": "n", "endpoints": [
          {"id": "2", "interface": "public", "region_id": "RegionOne", "region": "RegionOne", "url": "http://pub:9696"},
          {"id": "3", "interface": "internal", "region_id": "RegionOne", "region": "RegionOne", "url": "http://int:9696/"},
          {"id": "4", "interface": "public", "region_id": "RegionTwo", "region": "RegionTwo", "url": "http://two:9696"},
          {"id": "5", "interface": "admin", "region_id": "RegionTwo", "url": "http://adm2:9696"}]}
      ]}}"#;

    #[test]
    fn token_and_catalog() {
        let t = Token::from_response("gAAAAB-token", TOKEN_BODY).unwrap();
        assert_eq!(t.project_id.as_deref(), Some("p1"));
        assert_eq!(t.user_id.as_deref(), Some("u1"));
        assert!(!format!("{t:?}").contains("gAAAAB"));
        let exp = t.expires_at.unwrap().duration_since(UNIX_EPOCH).unwrap();
        assert_eq!(exp.as_secs(), 1893553445);
        assert_eq!(exp.subsec_micros(), 123456);
        let ep = |i, r| t.endpoint("network", i, r);
        assert_eq!(ep(Interface::Public, None).unwrap(), "http://pub:9696");
        assert_eq!(
            ep(Interface::Internal, Some("RegionOne")).unwrap(),
            "http://int:9696/"
        );
        assert_eq!(
            ep(Interface::Public, Some("RegionTwo")).unwrap(),
            "http://two:9696"
        );
        assert_eq!(
            ep(Interface::Admin, Some("RegionTwo")).unwrap(),
            "http://adm2:9696"
        );
        let e = ep(Interface::Admin, Some("RegionOne"))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("no admin endpoint") && e.contains("public@RegionOne"),
            "{e}"
        );
        let e = t
            .endpoint("compute", Interface::Public, None)
            .unwrap_err()
            .to_string();
        assert!(e.contains("identity, network"), "{e}");
    }

    #[test]
    fn rfc3339() {
        let p = |s| parse_rfc3339(s).map(|t| t.duration_since(UNIX_EPOCH).unwrap().as_secs());
        assert_eq!(p("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(p("2000-03-01T00:00:00.000000Z"), Some(951868800));
        assert_eq!(p("2000-03-01T01:00:00+01:00"), Some(951868800));
        assert_eq!(p("2000-02-29T23:00:00-01:00"), Some(951868800));
        assert_eq!(p("garbage"), None);
        assert_eq!(p("2000-13-01T00:00:00Z"), None);
    }

    #[test]
    fn bodies() {
        let cfg = CloudConfig {
            auth_url: Some("http://ks:5000".into()),
            username: Some("admin".into()),
            password: Some("pw".into()),
            user_domain_name: Some("Default".into()),
            project_name: Some("admin".into()),
            project_domain_id: Some("default".into()),
            ..CloudConfig::default()
        };
        assert_eq!(
            tokens_url("http://ks:5000"),
            "http://ks:5000/v3/auth/tokens"
        );
        assert_eq!(
            tokens_url("http://ks:5000/v3/"),
            "http://ks:5000/v3/auth/tokens"
        );
        let b = auth_body(&cfg).unwrap();
        assert_eq!(
            b,
            json!({"auth": {"identity": {"methods": ["password"], "password": {"user":
                {"name": "admin", "domain": {"name": "Default"}, "password": "pw"}}},
                "scope": {"project": {"name": "admin", "domain": {"id": "default"}}}}})
        );
        let cfg = CloudConfig {
            auth_type: AuthType::ApplicationCredential,
            application_credential_name: Some("ac".into()),
            application_credential_secret: Some("sec".into()),
            username: Some("svc".into()),
            user_domain_id: Some("default".into()),
            ..cfg
        };
        let b = auth_body(&cfg).unwrap();
        assert_eq!(
            b["auth"]["identity"],
            json!({"methods": ["application_credential"], "application_credential":
                {"name": "ac", "secret": "sec", "user": {"name": "svc", "domain": {"id": "default"}}}})
        );
        assert!(b["auth"].get("scope").is_none());
    }
}
