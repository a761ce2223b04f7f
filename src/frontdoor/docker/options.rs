//! The `-o` options of `docker network create` (Courier's own and kuryr-libnetwork's names) and
//! the `--driver-opt`s of an endpoint: parsed and checked before anything is made.

use std::collections::HashMap;

use serde_json::Value;

use crate::error::{Error, Result};

/// Docker's option keys.
const GENERIC: &str = "com.docker.network.generic";

/// `-o` options Courier understands: its own and kuryr-libnetwork's.
#[derive(Debug, Default, PartialEq)]
pub struct NetworkOptions {
    /// `courier.network`: an existing Courier network (any backend); `docker network rm`
    /// leaves it.
    pub network: Option<String>,
    /// `courier.backend`: where a new network goes (default: the daemon's default backend).
    pub backend: Option<String>,
    /// `courier.binding`: the edge binding of this network's endpoints (default: the daemon's
    /// default binding), e.g. `ipvlan` or `vlan` for containers inside a VM.
    pub binding: Option<String>,
    /// `neutron.net.uuid` / `neutron.net.name`: register this existing Neutron network.
    pub neutron_net: Option<String>,
    /// `neutron.subnet.uuid` / `neutron.subnet.name`: accepted; the subnet must be the one of
    /// `--subnet` (Courier picks the network's subnet of each family).
    pub neutron_subnet: Option<String>,
}

impl NetworkOptions {
    pub fn parse(generic: &HashMap<String, String>) -> Result<NetworkOptions> {
        let mut o = NetworkOptions::default();
        for (k, v) in generic {
            let v = Some(v.clone()).filter(|v| !v.is_empty());
            match k.as_str() {
                "courier.network" => o.network = v,
                "courier.backend" => o.backend = v,
                "courier.binding" => o.binding = v,
                "neutron.net.uuid" | "neutron.net.name" => {
                    if o.neutron_net.is_some() {
                        return Err(Error::InvalidInput(
                            "give one of -o neutron.net.uuid and -o neutron.net.name".into(),
                        ));
                    }
                    o.neutron_net = v;
                }
                "neutron.subnet.uuid" | "neutron.subnet.name" => o.neutron_subnet = v,
                "neutron.pool.uuid" | "neutron.pool.name" | "neutron.subnet.v6.uuid"
                | "neutron.subnet.v6.name" | "neutron.pool.v6.uuid" | "neutron.pool.v6.name"
                | "neutron.net.shared" => {
                    return Err(Error::InvalidInput(format!(
                        "-o {k} is not supported by Courier yet: create the Neutron network with its subnet pool, then use -o neutron.net.uuid=ID and --subnet"
                    )))
                }
                k if k.starts_with("courier.") || k.starts_with("neutron.") => {
                    return Err(Error::InvalidInput(format!(
                        "unknown option -o {k}: Courier knows courier.network, courier.backend, courier.binding, neutron.net.uuid, neutron.net.name, neutron.subnet.uuid, neutron.subnet.name"
                    )))
                }
                _ => {}
            }
        }
        if o.network.is_some() && (o.neutron_net.is_some() || o.backend.is_some()) {
            return Err(Error::InvalidInput(
                "-o courier.network names an existing Courier network: drop -o courier.backend / neutron.net.*".into(),
            ));
        }
        if o.neutron_net.is_some() && o.backend.as_deref().is_some_and(|b| b != "neutron") {
            return Err(Error::InvalidInput(
                "-o neutron.net.* is a Neutron network: drop -o courier.backend or make it neutron"
                    .into(),
            ));
        }
        if o.neutron_subnet.is_some() && o.neutron_net.is_none() {
            return Err(Error::InvalidInput(
                "-o neutron.subnet.* needs -o neutron.net.uuid or neutron.net.name".into(),
            ));
        }
        Ok(o)
    }
}

pub(super) fn generic_options(options: &HashMap<String, Value>) -> Result<HashMap<String, String>> {
    let Some(g) = options.get(GENERIC) else {
        return Ok(HashMap::new());
    };
    let Some(map) = g.as_object() else {
        return Ok(HashMap::new());
    };
    map.iter()
        .map(|(k, v)| match v {
            Value::String(s) => Ok((k.clone(), s.clone())),
            Value::Bool(b) => Ok((k.clone(), b.to_string())),
            Value::Number(n) => Ok((k.clone(), n.to_string())),
            other => Err(Error::InvalidInput(format!(
                "-o {k}: value {other} is not a string"
            ))),
        })
        .collect()
}

/// Endpoint driver options: `courier.port` (alias `neutron.port.uuid`) names the existing port
/// the endpoint must be (its `--ip` selects it; this confirms it). Any other `courier.*` or
/// `neutron.*` key is refused: the network's options (`courier.binding`, ...) are fixed when
/// the network is made, and the address (with a VF, for sriov) is reserved before the
/// endpoint's options arrive.
pub(super) fn endpoint_port_option(
    options: &Option<HashMap<String, Value>>,
) -> Result<Option<String>> {
    let Some(o) = options else { return Ok(None) };
    let mut unknown: Vec<&str> = o
        .keys()
        .map(String::as_str)
        .filter(|k| {
            (k.starts_with("courier.") || k.starts_with("neutron."))
                && !matches!(*k, "courier.port" | "neutron.port.uuid")
        })
        .collect();
    if !unknown.is_empty() {
        unknown.sort_unstable();
        return Err(Error::InvalidInput(format!(
            "unknown endpoint option --driver-opt {}: an endpoint takes only courier.port=PORT_ID (alias neutron.port.uuid); the binding is the network's (docker network create -o courier.binding=...) or the named port's vnic type",
            unknown.join(", ")
        )));
    }
    let mut found = None;
    for key in ["courier.port", "neutron.port.uuid"] {
        if let Some(v) = o.get(key) {
            let v = v.as_str().ok_or_else(|| {
                Error::InvalidInput(format!("--driver-opt {key}: give a port id"))
            })?;
            found = Some(v.to_string());
        }
    }
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(kv: &[(&str, &str)]) -> HashMap<String, String> {
        kv.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn endpoint(kv: &[(&str, &str)]) -> Option<HashMap<String, Value>> {
        Some(
            kv.iter()
                .map(|(k, v)| (k.to_string(), Value::String(v.to_string())))
                .collect(),
        )
    }

    #[test]
    fn endpoint_options_name_a_port_and_nothing_else() {
        assert_eq!(endpoint_port_option(&None).unwrap(), None);
        assert_eq!(
            endpoint_port_option(&endpoint(&[("courier.port", "p1")])).unwrap(),
            Some("p1".to_string())
        );
        assert_eq!(
            endpoint_port_option(&endpoint(&[("neutron.port.uuid", "p2")])).unwrap(),
            Some("p2".to_string())
        );
        // Docker's own keys pass through.
        assert_eq!(
            endpoint_port_option(&endpoint(&[(
                "com.docker.network.endpoint.exposedports",
                ""
            )]))
            .unwrap(),
            None
        );
        let err = endpoint_port_option(&endpoint(&[("courier.binding", "sriov")]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("courier.binding"), "{err}");
        assert!(
            err.contains("docker network create -o courier.binding"),
            "{err}"
        );
    }

    #[test]
    fn kuryr_option_names_are_understood() {
        let o = NetworkOptions::parse(&opts(&[("neutron.net.uuid", "abc")])).unwrap();
        assert_eq!(o.neutron_net.as_deref(), Some("abc"));
        let o = NetworkOptions::parse(&opts(&[
            ("neutron.net.name", "n1"),
            ("neutron.subnet.name", "s1"),
        ]))
        .unwrap();
        assert_eq!(o.neutron_net.as_deref(), Some("n1"));
        assert_eq!(o.neutron_subnet.as_deref(), Some("s1"));
        let o = NetworkOptions::parse(&opts(&[("courier.binding", "ipvlan")])).unwrap();
        assert_eq!(o.binding.as_deref(), Some("ipvlan"));
        // Other drivers' options are none of our business.
        assert_eq!(
            NetworkOptions::parse(&opts(&[("com.example.x", "1")])).unwrap(),
            NetworkOptions::default()
        );
    }

    #[test]
    fn contradictory_or_misspelt_options_are_refused_with_what_to_do() {
        for bad in [
            vec![("neutron.net.uuid", "a"), ("neutron.net.name", "b")],
            vec![("courier.network", "n"), ("courier.backend", "ovn")],
            vec![("neutron.net.uuid", "a"), ("courier.backend", "ovn")],
            vec![("neutron.subnet.uuid", "s")],
            vec![("courier.netwrok", "n")],
            vec![("neutron.pool.uuid", "p")],
        ] {
            let e = NetworkOptions::parse(&opts(&bad)).unwrap_err().to_string();
            assert!(e.contains("-o") || e.contains("give"), "{bad:?}: {e}");
        }
    }
}
