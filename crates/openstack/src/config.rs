//! [`CloudConfig`]: where the cloud is and how to authenticate, resolved like every OpenStack
//! client does it: a named cloud in `clouds.yaml` (+ `secure.yaml`), or the `OS_*` environment
//! variables, or a struct built (or deserialized, e.g. from the daemon's TOML) directly.
//!
//! The environment is read through an injectable lookup ([`EnvLookup`]) so that tests pass a
//! map instead of mutating the process environment.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use serde_json::Value;

use crate::error::{Error, Result};
use crate::secret::Secret;

/// Looks up one environment variable. [`process_env`] is the real one.
pub type EnvLookup<'a> = &'a dyn Fn(&str) -> Option<String>;

/// The process environment, as an [`EnvLookup`]. Empty values count as unset.
pub fn process_env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
pub enum AuthType {
    /// Keystone v3 password (`password`, `v3password`).
    #[default]
    #[serde(alias = "password", alias = "v3password")]
    Password,
    /// Keystone v3 application credential (`v3applicationcredential`, `applicationcredential`).
    #[serde(
        alias = "v3applicationcredential",
        alias = "applicationcredential",
        alias = "application_credential"
    )]
    ApplicationCredential,
    /// No Keystone: an explicit endpoint and no token (`noauth`, `none`). Neutron with
    /// `auth_strategy = noauth` then acts as admin of `fake_project_id`, or of the project sent
    /// in `X-Project-Id` when `project_id` is set.
    #[serde(alias = "noauth", alias = "none")]
    NoAuth,
}

impl AuthType {
    pub fn parse(s: &str) -> Result<AuthType> {
        match s.to_ascii_lowercase().as_str() {
            "password" | "v3password" => Ok(AuthType::Password),
            "v3applicationcredential" | "applicationcredential" | "application_credential" => {
                Ok(AuthType::ApplicationCredential)
            }
            "noauth" | "none" => Ok(AuthType::NoAuth),
            other => Err(Error::Config(format!(
                "unsupported auth_type {other:?} (supported: password, v3password, v3applicationcredential, noauth)"
            ))),
        }
    }
}

/// Which catalog endpoint to use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Interface {
    #[default]
    #[serde(alias = "publicURL")]
    Public,
    #[serde(alias = "internalURL")]
    Internal,
    #[serde(alias = "adminURL")]
    Admin,
}

impl Interface {
    pub fn parse(s: &str) -> Result<Interface> {
        match s.to_ascii_lowercase().trim_end_matches("url") {
            "public" => Ok(Interface::Public),
            "internal" => Ok(Interface::Internal),
            "admin" => Ok(Interface::Admin),
            other => Err(Error::Config(format!(
                "unknown interface {other:?} (public, internal, admin)"
            ))),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Interface::Public => "public",
            Interface::Internal => "internal",
            Interface::Admin => "admin",
        }
    }
}

/// Everything needed to talk to one cloud. `Debug` is safe to log: secrets print `***`.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CloudConfig {
    /// The cloud's name in clouds.yaml, when it came from there (for messages).
    pub cloud: Option<String>,
    pub auth_type: AuthType,
    /// Keystone, e.g. `http://127.0.0.1:5000/v3` (`/v3` is added when missing).
    pub auth_url: Option<String>,
    pub username: Option<String>,
    pub user_id: Option<String>,
    pub password: Option<Secret>,
    pub user_domain_name: Option<String>,
    pub user_domain_id: Option<String>,
    pub project_name: Option<String>,
    /// Also the `X-Project-Id` sent with `noauth`.
    pub project_id: Option<String>,
    pub project_domain_name: Option<String>,
    pub project_domain_id: Option<String>,
    pub application_credential_id: Option<String>,
    pub application_credential_name: Option<String>,
    pub application_credential_secret: Option<Secret>,
    pub region_name: Option<String>,
    pub interface: Interface,
    /// Neutron's URL, instead of the one in the token's catalog (required for `noauth`).
    pub network_endpoint_override: Option<String>,
    /// A PEM file of CA certificates to trust (besides the built-in Mozilla roots).
    pub cacert: Option<PathBuf>,
    /// `false` accepts any server certificate (`verify: false`, `OS_INSECURE`).
    pub verify: bool,
    /// Whole-request timeout, seconds (each request, Keystone's included).
    #[serde(with = "secs")]
    pub request_timeout: Duration,
    #[serde(with = "secs")]
    pub connect_timeout: Duration,
    /// Renew the token when less than this is left before `expires_at`.
    #[serde(with = "secs")]
    pub token_renew_margin: Duration,
    /// At most this many API requests (Neutron; token requests are single-flight anyway) in
    /// flight at once; more wait their turn before they are sent (their timeout starts when
    /// they are). A cloud's API serves a few at a time (the test Neutron: one worker), so 100
    /// requests sent at once would time out in its queue, not for any fault of theirs.
    pub max_in_flight: usize,
}

impl Default for CloudConfig {
    fn default() -> Self {
        CloudConfig {
            cloud: None,
            auth_type: AuthType::Password,
            auth_url: None,
            username: None,
            user_id: None,
            password: None,
            user_domain_name: None,
            user_domain_id: None,
            project_name: None,
            project_id: None,
            project_domain_name: None,
            project_domain_id: None,
            application_credential_id: None,
            application_credential_name: None,
            application_credential_secret: None,
            region_name: None,
            interface: Interface::Public,
            network_endpoint_override: None,
            cacert: None,
            verify: true,
            request_timeout: Duration::from_secs(30),
            connect_timeout: Duration::from_secs(5),
            token_renew_margin: Duration::from_secs(60),
            max_in_flight: 8,
        }
    }
}

mod secs {
    use serde::{Deserialize, Deserializer};
    use std::time::Duration;

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let s = f64::deserialize(d)?;
        if !(s.is_finite() && s >= 0.0) {
            return Err(serde::de::Error::custom(
                "expected a non-negative number of seconds",
            ));
        }
        Ok(Duration::from_secs_f64(s))
    }
}

/// A clouds.yaml cloud entry, after secure.yaml was merged over it.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct RawCloud {
    auth: RawAuth,
    auth_type: Option<String>,
    region_name: Option<String>,
    interface: Option<String>,
    endpoint_type: Option<String>,
    network_endpoint_override: Option<String>,
    endpoint_override: Option<String>,
    cacert: Option<String>,
    verify: Option<Value>,
    insecure: Option<Value>,
    api_timeout: Option<f64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct RawAuth {
    auth_url: Option<String>,
    username: Option<String>,
    user_id: Option<String>,
    password: Option<Secret>,
    user_domain_name: Option<String>,
    user_domain_id: Option<String>,
    #[serde(alias = "tenant_name")]
    project_name: Option<String>,
    #[serde(alias = "tenant_id")]
    project_id: Option<String>,
    project_domain_name: Option<String>,
    project_domain_id: Option<String>,
    domain_name: Option<String>,
    domain_id: Option<String>,
    application_credential_id: Option<String>,
    application_credential_name: Option<String>,
    application_credential_secret: Option<Secret>,
    /// `auth_type: none` clouds put the service endpoint here.
    endpoint: Option<String>,
}

fn truthy(v: &str) -> bool {
    matches!(v.to_ascii_lowercase().as_str(), "1" | "true" | "yes" | "on")
}

fn value_bool(v: &Value) -> Option<bool> {
    match v {
        Value::Bool(b) => Some(*b),
        Value::String(s) => Some(truthy(s)),
        Value::Number(n) => Some(n.as_i64() != Some(0)),
        _ => None,
    }
}

impl CloudConfig {
    /// Resolve as the OpenStack CLI does: the cloud `cloud` (or `$OS_CLOUD`) from clouds.yaml,
    /// else the `OS_*` variables.
    pub fn resolve(cloud: Option<&str>, env: EnvLookup) -> Result<CloudConfig> {
        let name = cloud.map(str::to_string).or_else(|| env("OS_CLOUD"));
        match name {
            Some(name) => Self::from_clouds_yaml(&name, env),
            None => Self::from_env(env),
        }
    }

    /// [`CloudConfig::resolve`] with the process environment.
    pub fn from_process_env(cloud: Option<&str>) -> Result<CloudConfig> {
        Self::resolve(cloud, &process_env)
    }

    /// Where clouds.yaml is looked for, first match wins: `$OS_CLIENT_CONFIG_FILE`,
    /// `./clouds.yaml`, `~/.config/openstack/clouds.yaml`, `/etc/openstack/clouds.yaml`.
    pub fn clouds_yaml_search_path(env: EnvLookup) -> Vec<PathBuf> {
        let mut v = Vec::new();
        if let Some(f) = env("OS_CLIENT_CONFIG_FILE") {
            v.push(PathBuf::from(f));
        }
        v.push(PathBuf::from("clouds.yaml"));
        if let Some(home) = env("HOME") {
            v.push(Path::new(&home).join(".config/openstack/clouds.yaml"));
        }
        v.push(PathBuf::from("/etc/openstack/clouds.yaml"));
        v
    }

    /// The cloud `name` from the first clouds.yaml of the search path, with the secure.yaml
    /// beside it (or `$OS_CLIENT_SECURE_FILE`) merged over it.
    pub fn from_clouds_yaml(name: &str, env: EnvLookup) -> Result<CloudConfig> {
        let search = Self::clouds_yaml_search_path(env);
        let Some(path) = search.iter().find(|p| p.is_file()) else {
            return Err(Error::Config(format!(
                "cloud {name:?} requested but no clouds.yaml found (looked at {})",
                search
                    .iter()
                    .map(|p| p.display().to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            )));
        };
        let secure = match env("OS_CLIENT_SECURE_FILE") {
            Some(f) => Some(PathBuf::from(f)),
            None => Some(path.with_file_name("secure.yaml")),
        }
        .filter(|p| p.is_file());
        Self::from_clouds_file(path, secure.as_deref(), name)
    }

    /// The cloud `name` from this clouds.yaml, with `secure` (a secure.yaml) deep-merged over it.
    pub fn from_clouds_file(path: &Path, secure: Option<&Path>, name: &str) -> Result<CloudConfig> {
        let mut doc = load_yaml(path)?;
        if let Some(s) = secure {
            deep_merge(&mut doc, load_yaml(s)?);
        }
        let Some(entry) = doc.get("clouds").and_then(|c| c.get(name)) else {
            let known: Vec<String> = doc
                .get("clouds")
                .and_then(|c| c.as_object())
                .map(|o| o.keys().cloned().collect())
                .unwrap_or_default();
            return Err(Error::Config(format!(
                "no cloud {name:?} in {} (clouds: {})",
                path.display(),
                known.join(", ")
            )));
        };
        let raw: RawCloud = serde_json::from_value(entry.clone())
            .map_err(|e| Error::Config(format!("cloud {name:?} in {}: {e}", path.display())))?;
        let mut c = CloudConfig {
            cloud: Some(name.to_string()),
            ..CloudConfig::default()
        };
        let a = raw.auth;
        c.auth_url = a.auth_url;
        c.username = a.username;
        c.user_id = a.user_id;
        c.password = a.password;
        c.user_domain_name = a.user_domain_name.or_else(|| a.domain_name.clone());
        c.user_domain_id = a.user_domain_id.or_else(|| a.domain_id.clone());
        c.project_name = a.project_name;
        c.project_id = a.project_id;
        c.project_domain_name = a.project_domain_name.or(a.domain_name);
        c.project_domain_id = a.project_domain_id.or(a.domain_id);
        c.application_credential_id = a.application_credential_id;
        c.application_credential_name = a.application_credential_name;
        c.application_credential_secret = a.application_credential_secret;
        c.auth_type = match raw.auth_type {
            Some(t) => AuthType::parse(&t)?,
            None if c.application_credential_secret.is_some() => AuthType::ApplicationCredential,
            None => AuthType::Password,
        };
        c.region_name = raw.region_name;
        if let Some(i) = raw.interface.or(raw.endpoint_type) {
            c.interface = Interface::parse(&i)?;
        }
        c.network_endpoint_override = raw
            .network_endpoint_override
            .or(raw.endpoint_override)
            .or(a.endpoint);
        c.cacert = raw.cacert.map(PathBuf::from);
        if let Some(v) = raw.verify.as_ref().and_then(value_bool) {
            c.verify = v;
        }
        if let Some(true) = raw.insecure.as_ref().and_then(value_bool) {
            c.verify = false;
        }
        if let Some(t) = raw.api_timeout {
            if t > 0.0 && t.is_finite() {
                c.request_timeout = Duration::from_secs_f64(t);
            }
        }
        c.validate()?;
        Ok(c)
    }

    /// From the `OS_*` variables (OS_AUTH_URL, OS_USERNAME, OS_PASSWORD, OS_PROJECT_NAME, …).
    pub fn from_env(env: EnvLookup) -> Result<CloudConfig> {
        let mut c = CloudConfig {
            auth_url: env("OS_AUTH_URL"),
            username: env("OS_USERNAME"),
            user_id: env("OS_USER_ID"),
            password: env("OS_PASSWORD").map(Secret::from),
            user_domain_name: env("OS_USER_DOMAIN_NAME").or_else(|| env("OS_DOMAIN_NAME")),
            user_domain_id: env("OS_USER_DOMAIN_ID").or_else(|| env("OS_DOMAIN_ID")),
            project_name: env("OS_PROJECT_NAME").or_else(|| env("OS_TENANT_NAME")),
            project_id: env("OS_PROJECT_ID").or_else(|| env("OS_TENANT_ID")),
            project_domain_name: env("OS_PROJECT_DOMAIN_NAME").or_else(|| env("OS_DOMAIN_NAME")),
            project_domain_id: env("OS_PROJECT_DOMAIN_ID").or_else(|| env("OS_DOMAIN_ID")),
            application_credential_id: env("OS_APPLICATION_CREDENTIAL_ID"),
            application_credential_name: env("OS_APPLICATION_CREDENTIAL_NAME"),
            application_credential_secret: env("OS_APPLICATION_CREDENTIAL_SECRET")
                .map(Secret::from),
            region_name: env("OS_REGION_NAME"),
            network_endpoint_override: env("OS_NETWORK_ENDPOINT_OVERRIDE")
                .or_else(|| env("OS_ENDPOINT_OVERRIDE"))
                .or_else(|| env("OS_ENDPOINT")),
            cacert: env("OS_CACERT").map(PathBuf::from),
            ..CloudConfig::default()
        };
        c.auth_type = match env("OS_AUTH_TYPE") {
            Some(t) => AuthType::parse(&t)?,
            None if c.application_credential_secret.is_some() => AuthType::ApplicationCredential,
            None if c.auth_url.is_none() && c.network_endpoint_override.is_some() => {
                AuthType::NoAuth
            }
            None => AuthType::Password,
        };
        if let Some(i) = env("OS_INTERFACE").or_else(|| env("OS_ENDPOINT_TYPE")) {
            c.interface = Interface::parse(&i)?;
        }
        if env("OS_INSECURE").is_some_and(|v| truthy(&v)) {
            c.verify = false;
        }
        if c.auth_url.is_none() && c.auth_type != AuthType::NoAuth {
            return Err(Error::Config(
                "neither a cloud (OS_CLOUD) nor OS_AUTH_URL is set".into(),
            ));
        }
        c.validate()?;
        Ok(c)
    }

    /// Check that the fields the auth type needs are there.
    pub fn validate(&self) -> Result<()> {
        let who = self
            .cloud
            .as_deref()
            .map(|c| format!("cloud {c:?}: "))
            .unwrap_or_default();
        let missing = |what: &str| Err(Error::Config(format!("{who}{what} missing")));
        match self.auth_type {
            AuthType::Password => {
                if self.auth_url.is_none() {
                    return missing("auth_url");
                }
                if self.username.is_none() && self.user_id.is_none() {
                    return missing("username (or user_id)");
                }
                if self.password.is_none() {
                    return missing("password");
                }
                if self.username.is_some()
                    && self.user_id.is_none()
                    && self.user_domain_name.is_none()
                    && self.user_domain_id.is_none()
                {
                    return missing("user_domain_name (or user_domain_id) for username");
                }
            }
            AuthType::ApplicationCredential => {
                if self.auth_url.is_none() {
                    return missing("auth_url");
                }
                if self.application_credential_secret.is_none() {
                    return missing("application_credential_secret");
                }
                if self.application_credential_id.is_none() {
                    if self.application_credential_name.is_none() {
                        return missing("application_credential_id (or _name)");
                    }
                    if self.user_id.is_none() && self.username.is_none() {
                        return missing(
                            "user (username or user_id) for application_credential_name",
                        );
                    }
                }
            }
            AuthType::NoAuth => {
                if self.network_endpoint_override.is_none() {
                    return missing(
                        "network_endpoint_override (noauth needs an explicit endpoint)",
                    );
                }
            }
        }
        Ok(())
    }

    /// Who this authenticates as, for messages (never a secret).
    pub fn principal(&self) -> String {
        match self.auth_type {
            AuthType::ApplicationCredential => format!(
                "application credential {}",
                self.application_credential_id
                    .as_deref()
                    .or(self.application_credential_name.as_deref())
                    .unwrap_or("?")
            ),
            _ => {
                let user = self
                    .username
                    .as_deref()
                    .or(self.user_id.as_deref())
                    .unwrap_or("?");
                format!("user {user}")
            }
        }
    }
}

fn load_yaml(path: &Path) -> Result<Value> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| Error::Config(format!("cannot read {}: {e}", path.display())))?;
    parse_yaml(&text).map_err(|e| Error::Config(format!("{}: {e}", path.display())))
}

/// Parse a YAML document into a JSON value (an empty document is `{}`).
pub(crate) fn parse_yaml(text: &str) -> std::result::Result<Value, String> {
    let docs = yaml_rust2::YamlLoader::load_from_str(text).map_err(|e| e.to_string())?;
    match docs.into_iter().next() {
        None => Ok(Value::Object(Default::default())),
        Some(d) => yaml_to_json(d),
    }
}

fn yaml_to_json(y: yaml_rust2::Yaml) -> std::result::Result<Value, String> {
    use yaml_rust2::Yaml;
    Ok(match y {
        Yaml::Null => Value::Null,
        Yaml::Boolean(b) => Value::Bool(b),
        Yaml::Integer(i) => Value::from(i),
        Yaml::Real(r) => match r.parse::<f64>() {
            Ok(f) => serde_json::Number::from_f64(f)
                .map(Value::Number)
                .unwrap_or(Value::String(r)),
            Err(_) => Value::String(r),
        },
        Yaml::String(s) => Value::String(s),
        Yaml::Array(a) => Value::Array(
            a.into_iter()
                .map(yaml_to_json)
                .collect::<std::result::Result<_, _>>()?,
        ),
        Yaml::Hash(h) => {
            let mut m = serde_json::Map::new();
            for (k, v) in h {
                let key = match k {
                    Yaml::String(s) | Yaml::Real(s) => s,
                    Yaml::Integer(i) => i.to_string(),
                    Yaml::Boolean(b) => b.to_string(),
                    other => return Err(format!("unsupported mapping key {other:?}")),
                };
                m.insert(key, yaml_to_json(v)?);
            }
            Value::Object(m)
        }
        Yaml::Alias(_) => return Err("YAML aliases are not supported".into()),
        Yaml::BadValue => return Err("bad YAML value".into()),
    })
}

/// Merge `over` into `base`: mappings merge key by key (recursively), anything else replaces.
pub(crate) fn deep_merge(base: &mut Value, over: Value) {
    match (base, over) {
        (Value::Object(b), Value::Object(o)) => {
            for (k, v) in o {
                match b.get_mut(&k) {
                    Some(slot) => deep_merge(slot, v),
                    None => {
                        b.insert(k, v);
                    }
                }
            }
        }
        (slot, v) => *slot = v,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn env_of(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let m: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |k| m.get(k).cloned()
    }

    const CLOUDS: &str = r#"
clouds:
  courier-admin:
    auth:
      auth_url: http://127.0.0.1:5000/v3
      username: admin
      project_name: admin
      user_domain_name: Default
      project_domain_name: Default
    region_name: RegionOne
    interface: internal
    identity_api_version: 3
  courier-demo:
    auth:
      auth_url: http://127.0.0.1:5000/v3
      username: demo
      password: in-clouds-yaml
      project_name: demo
      user_domain_id: default
      project_domain_id: default
    verify: false
    cacert: /etc/ssl/ca.pem
  appcred:
    auth_type: v3applicationcredential
    auth:
      auth_url: http://ks/v3
      application_credential_id: ac1
      application_credential_secret: s3cr3t
  local:
    auth_type: none
    network_endpoint_override: http://127.0.0.1:9697
    auth:
      project_id: p1
"#;

    const SECURE: &str = r#"
clouds:
  courier-admin:
    auth:
      password: adminpw
  courier-demo:
    auth:
      password: from-secure
"#;

    fn write_dir() -> tempfile::TempDir {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("clouds.yaml"), CLOUDS).unwrap();
        std::fs::write(d.path().join("secure.yaml"), SECURE).unwrap();
        d
    }

    #[test]
    fn clouds_yaml_with_secure_yaml_merged() {
        let d = write_dir();
        let f = d.path().join("clouds.yaml");
        let env = env_of(&[("OS_CLIENT_CONFIG_FILE", f.to_str().unwrap())]);
        let c = CloudConfig::resolve(Some("courier-admin"), &env).unwrap();
        assert_eq!(c.cloud.as_deref(), Some("courier-admin"));
        assert_eq!(c.auth_type, AuthType::Password);
        assert_eq!(c.auth_url.as_deref(), Some("http://127.0.0.1:5000/v3"));
        assert_eq!(c.username.as_deref(), Some("admin"));
        assert_eq!(c.password.as_ref().unwrap().expose(), "adminpw");
        assert_eq!(c.user_domain_name.as_deref(), Some("Default"));
        assert_eq!(c.project_name.as_deref(), Some("admin"));
        assert_eq!(c.region_name.as_deref(), Some("RegionOne"));
        assert_eq!(c.interface, Interface::Internal);
        assert!(c.verify);
        // the Debug of the whole config hides the password
        assert!(!format!("{c:?}").contains("adminpw"));

        // OS_CLOUD picks the cloud; secure.yaml wins over clouds.yaml
        let env = env_of(&[
            ("OS_CLIENT_CONFIG_FILE", f.to_str().unwrap()),
            ("OS_CLOUD", "courier-demo"),
        ]);
        let c = CloudConfig::resolve(None, &env).unwrap();
        assert_eq!(c.password.as_ref().unwrap().expose(), "from-secure");
        assert_eq!(c.user_domain_id.as_deref(), Some("default"));
        assert!(!c.verify);
        assert_eq!(c.cacert.as_deref(), Some(Path::new("/etc/ssl/ca.pem")));
        assert_eq!(c.interface, Interface::Public);
    }

    #[test]
    fn appcred_and_noauth_clouds() {
        let d = write_dir();
        let f = d.path().join("clouds.yaml");
        let env = env_of(&[("OS_CLIENT_CONFIG_FILE", f.to_str().unwrap())]);
        let c = CloudConfig::resolve(Some("appcred"), &env).unwrap();
        assert_eq!(c.auth_type, AuthType::ApplicationCredential);
        assert_eq!(c.application_credential_id.as_deref(), Some("ac1"));
        assert_eq!(c.principal(), "application credential ac1");
        assert!(!format!("{c:?}").contains("s3cr3t"));
        let c = CloudConfig::resolve(Some("local"), &env).unwrap();
        assert_eq!(c.auth_type, AuthType::NoAuth);
        assert_eq!(
            c.network_endpoint_override.as_deref(),
            Some("http://127.0.0.1:9697")
        );
        assert_eq!(c.project_id.as_deref(), Some("p1"));
    }

    #[test]
    fn search_path_order_and_errors() {
        let d = write_dir();
        let home = tempfile::tempdir().unwrap();
        let env = env_of(&[("HOME", home.path().to_str().unwrap())]);
        let p = CloudConfig::clouds_yaml_search_path(&env);
        assert_eq!(p[0], PathBuf::from("clouds.yaml"));
        assert_eq!(p[1], home.path().join(".config/openstack/clouds.yaml"));
        assert_eq!(p[2], PathBuf::from("/etc/openstack/clouds.yaml"));
        // ~/.config/openstack/clouds.yaml is found (when ./clouds.yaml does not exist)
        let cfg = home.path().join(".config/openstack");
        std::fs::create_dir_all(&cfg).unwrap();
        std::fs::copy(d.path().join("clouds.yaml"), cfg.join("clouds.yaml")).unwrap();
        if !Path::new("clouds.yaml").exists() {
            let c = CloudConfig::resolve(Some("courier-demo"), &env).unwrap();
            // no secure.yaml beside this one
            assert_eq!(c.password.unwrap().expose(), "in-clouds-yaml");
        }
        // OS_CLIENT_CONFIG_FILE comes first
        let f = d.path().join("clouds.yaml");
        let env = env_of(&[
            ("HOME", home.path().to_str().unwrap()),
            ("OS_CLIENT_CONFIG_FILE", f.to_str().unwrap()),
        ]);
        assert_eq!(CloudConfig::clouds_yaml_search_path(&env)[0], f);
        let e = CloudConfig::resolve(Some("nope"), &env).unwrap_err();
        let s = e.to_string();
        assert!(
            s.contains("no cloud \"nope\"") && s.contains("courier-admin"),
            "{s}"
        );
        // a cloud whose password is nowhere is an error naming the field
        std::fs::remove_file(d.path().join("secure.yaml")).unwrap();
        let e = CloudConfig::resolve(Some("courier-admin"), &env).unwrap_err();
        assert!(e.to_string().contains("password missing"), "{e}");
    }

    #[test]
    fn os_env_vars() {
        let env = env_of(&[
            ("OS_AUTH_URL", "http://127.0.0.1:5000/v3"),
            ("OS_USERNAME", "admin"),
            ("OS_PASSWORD", "adminpw"),
            ("OS_PROJECT_NAME", "admin"),
            ("OS_USER_DOMAIN_NAME", "Default"),
            ("OS_PROJECT_DOMAIN_ID", "default"),
            ("OS_REGION_NAME", "RegionOne"),
            ("OS_INTERFACE", "internal"),
            ("OS_CACERT", "/tmp/ca.pem"),
            ("OS_INSECURE", "true"),
        ]);
        let c = CloudConfig::resolve(None, &env).unwrap();
        assert_eq!(c.auth_type, AuthType::Password);
        assert_eq!(c.password.as_ref().unwrap().expose(), "adminpw");
        assert_eq!(c.project_domain_id.as_deref(), Some("default"));
        assert_eq!(c.interface, Interface::Internal);
        assert_eq!(c.region_name.as_deref(), Some("RegionOne"));
        assert!(!c.verify);
        assert_eq!(c.cacert.as_deref(), Some(Path::new("/tmp/ca.pem")));

        let env = env_of(&[
            ("OS_AUTH_URL", "http://ks/v3"),
            ("OS_APPLICATION_CREDENTIAL_NAME", "courier"),
            ("OS_APPLICATION_CREDENTIAL_SECRET", "x"),
            ("OS_USERNAME", "svc"),
            ("OS_USER_DOMAIN_NAME", "Default"),
        ]);
        let c = CloudConfig::resolve(None, &env).unwrap();
        assert_eq!(c.auth_type, AuthType::ApplicationCredential);

        let env = env_of(&[
            ("OS_AUTH_TYPE", "noauth"),
            ("OS_ENDPOINT", "http://127.0.0.1:9697"),
        ]);
        let c = CloudConfig::resolve(None, &env).unwrap();
        assert_eq!(c.auth_type, AuthType::NoAuth);

        let e = CloudConfig::resolve(None, &env_of(&[])).unwrap_err();
        assert!(e.to_string().contains("OS_AUTH_URL"), "{e}");
        let e = CloudConfig::resolve(
            None,
            &env_of(&[("OS_AUTH_URL", "http://x"), ("OS_AUTH_TYPE", "token")]),
        )
        .unwrap_err();
        assert!(e.to_string().contains("unsupported auth_type"), "{e}");
    }

    #[test]
    fn from_toml_like_struct() {
        let c: CloudConfig = serde_json::from_value(serde_json::json!({
            "auth_type": "v3applicationcredential",
            "auth_url": "http://ks/v3",
            "application_credential_id": "id",
            "application_credential_secret": "sec",
            "request_timeout": 2.5,
        }))
        .unwrap();
        assert_eq!(c.auth_type, AuthType::ApplicationCredential);
        assert_eq!(c.request_timeout, Duration::from_millis(2500));
        assert_eq!(c.token_renew_margin, Duration::from_secs(60));
        c.validate().unwrap();
    }

    #[test]
    fn merge_is_deep() {
        let mut a = serde_json::json!({"a": {"b": 1, "c": {"d": 2}}, "x": [1]});
        deep_merge(&mut a, serde_json::json!({"a": {"c": {"e": 3}}, "x": [2]}));
        assert_eq!(
            a,
            serde_json::json!({"a": {"b": 1, "c": {"d": 2, "e": 3}}, "x": [2]})
        );
        assert_eq!(parse_yaml("").unwrap(), serde_json::json!({}));
        assert!(parse_yaml("a: [").is_err());
    }
}
