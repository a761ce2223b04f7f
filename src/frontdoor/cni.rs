//! CNI 1.1 front door. Two halves:
//! - the plugin process (`run_plugin`): the `courier` binary run by a container runtime with
//!   `CNI_COMMAND` set. It answers VERSION itself and forwards everything else, unparsed, to the
//!   daemon in one request over its unix socket; no async runtime, no logging setup.
//! - the daemon side (`handle`): parses env + netconf, calls the attach flow, and builds the
//!   spec's result or error JSON.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::attach::Attacher;
use crate::client::{self, ClientError};
use crate::config::DEFAULT_SOCKET;
use crate::error::{code, Error, ErrorBody, Result};
use crate::model::{AttachRequest, Attachment, AttachmentKey, MadeBy};

pub const SUPPORTED_VERSIONS: &[&str] = &["0.4.0", "1.0.0", "1.1.0"];
const LATEST: &str = "1.1.0";
const GC_ATTACHMENTS_KEY: &str = "cni.dev/valid-attachments";

/// What the plugin process forwards to the daemon: the CNI environment and stdin, verbatim.
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
pub struct CniCall {
    pub command: String,
    #[serde(default)]
    pub container_id: String,
    #[serde(default)]
    pub netns: String,
    #[serde(default)]
    pub ifname: String,
    #[serde(default)]
    pub args: String,
    #[serde(default)]
    pub path: String,
    /// The runtime that ran the plugin: its parent process's name (`/proc/PPID/comm`). A GC
    /// touches only the attachments this runtime made.
    #[serde(default)]
    pub runtime: String,
    /// The network configuration JSON exactly as the runtime wrote it.
    pub stdin: String,
}

/// The parts of the network configuration Courier reads.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NetConf {
    pub cni_version: String,
    /// The Courier network to attach to.
    pub name: String,
    #[serde(default)]
    pub runtime_config: RuntimeConfig,
    #[serde(default, rename = "cni.dev/valid-attachments")]
    pub valid_attachments: Option<Vec<ValidAttachment>>,
    /// CHECK/DEL: the result of the ADD, as the runtime recorded it.
    #[serde(default)]
    pub prev_result: Option<Value>,
    /// Edge binding for this network's attachments (default: the daemon's default binding).
    #[serde(default)]
    pub binding: Option<String>,
    /// Neutron security groups (names or ids) for this network's ports (CNI_ARGS
    /// SECURITY_GROUPS=a,b overrides); empty: the project's default group.
    #[serde(default, rename = "securityGroups")]
    pub security_groups: Vec<String>,
    /// The VF for an sriov attachment, by PCI address, as Kubernetes' SR-IOV device plugin
    /// hands it over (Multus puts it here, as sriov-cni reads it). Implies the sriov binding.
    #[serde(default, rename = "deviceID")]
    pub device_id: Option<String>,
}

#[derive(Debug, Clone, Deserialize, Default)]
pub struct RuntimeConfig {
    /// `ips` capability: requested addresses (CIDR or plain).
    #[serde(default)]
    pub ips: Vec<String>,
    /// `mac` capability.
    #[serde(default)]
    pub mac: Option<String>,
    /// The VF's PCI address, when the runtime passes it here rather than at the top level.
    #[serde(default, rename = "deviceID")]
    pub device_id: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ValidAttachment {
    #[serde(rename = "containerID")]
    pub container_id: String,
    pub ifname: String,
}

/// The VF a device plugin chose (`deviceID`, top level or in runtimeConfig).
fn device_of(conf: &NetConf) -> Option<String> {
    conf.device_id
        .clone()
        .or_else(|| conf.runtime_config.device_id.clone())
        .filter(|d| !d.is_empty())
}

pub fn parse_netconf(stdin: &str) -> Result<NetConf> {
    let conf: NetConf = serde_json::from_str(stdin)
        .map_err(|e| Error::Decode(format!("network configuration is not valid CNI JSON: {e}")))?;
    if !SUPPORTED_VERSIONS.contains(&conf.cni_version.as_str()) {
        return Err(Error::IncompatibleVersion(format!(
            "cniVersion {:?} is not supported; use one of {}",
            conf.cni_version,
            SUPPORTED_VERSIONS.join(", ")
        )));
    }
    Ok(conf)
}

/// CNI_ARGS: `K=V;K=V`. Courier reads IP and MAC (the static-IPAM convention).
pub fn parse_cni_args(args: &str) -> Result<HashMap<String, String>> {
    let mut out = HashMap::new();
    for kv in args.split(';').filter(|s| !s.is_empty()) {
        let (k, v) = kv
            .split_once('=')
            .ok_or_else(|| Error::InvalidEnv(format!("CNI_ARGS entry {kv:?} is not KEY=VALUE")))?;
        out.insert(k.to_string(), v.to_string());
    }
    Ok(out)
}

fn requested_ip(conf: &NetConf, args: &HashMap<String, String>) -> Result<Option<IpAddr>> {
    let raw = conf
        .runtime_config
        .ips
        .first()
        .cloned()
        .or_else(|| args.get("IP").cloned());
    match raw {
        None => Ok(None),
        Some(s) => {
            let addr = s.split('/').next().unwrap_or_default();
            addr.parse().map(Some).map_err(|_| {
                Error::InvalidInput(format!("requested IP {s:?} is not an IP address"))
            })
        }
    }
}

fn require(var: &str, value: &str) -> Result<()> {
    if value.is_empty() {
        Err(Error::InvalidEnv(format!("{var} is not set")))
    } else {
        Ok(())
    }
}

/// Daemon side: runs one CNI command. Ok(Some(json)) is printed by the plugin; Ok(None) prints nothing.
pub async fn handle(attacher: &Arc<Attacher>, call: &CniCall) -> Result<Option<Value>> {
    let conf = parse_netconf(&call.stdin)?;
    match call.command.as_str() {
        "ADD" => {
            require("CNI_CONTAINERID", &call.container_id)?;
            require("CNI_NETNS", &call.netns)?;
            require("CNI_IFNAME", &call.ifname)?;
            let args = parse_cni_args(&call.args)?;
            let req = AttachRequest {
                container_id: call.container_id.clone(),
                ifname: call.ifname.clone(),
                netns: call.netns.clone(),
                network: conf.name.clone(),
                ip: requested_ip(&conf, &args)?,
                mac: conf
                    .runtime_config
                    .mac
                    .clone()
                    .or_else(|| args.get("MAC").cloned()),
                // A device (a VF) implies the sriov binding when the netconf names none.
                binding: conf
                    .binding
                    .clone()
                    .or_else(|| device_of(&conf).map(|_| "sriov".to_string())),
                // CNI_ARGS SECURITY_GROUPS=a,b (names or ids), else the netconf's list.
                security_groups: match args.get("SECURITY_GROUPS") {
                    Some(v) => v
                        .split(',')
                        .filter(|s| !s.is_empty())
                        .map(String::from)
                        .collect(),
                    None => conf.security_groups.clone(),
                },
                // CNI_ARGS PORT=<id>: bind this existing Neutron port (kept on DEL).
                port: args.get("PORT").cloned(),
                device: device_of(&conf),
                made_by: Some(MadeBy::Cni {
                    runtime: call.runtime.clone(),
                }),
            };
            let att = attacher.attach(&req).await?;
            Ok(Some(result_json(&att, &conf.cni_version)))
        }
        "DEL" => {
            require("CNI_CONTAINERID", &call.container_id)?;
            require("CNI_IFNAME", &call.ifname)?;
            attacher
                .detach(&AttachmentKey {
                    container_id: call.container_id.clone(),
                    ifname: call.ifname.clone(),
                })
                .await?;
            Ok(None)
        }
        "CHECK" => {
            require("CNI_CONTAINERID", &call.container_id)?;
            require("CNI_NETNS", &call.netns)?;
            require("CNI_IFNAME", &call.ifname)?;
            let att = attacher
                .check(
                    &AttachmentKey {
                        container_id: call.container_id.clone(),
                        ifname: call.ifname.clone(),
                    },
                    Some(&call.netns),
                )
                .await?;
            check_prev_result(&att, conf.prev_result.as_ref())?;
            Ok(None)
        }
        "GC" => {
            let valid: Vec<AttachmentKey> = conf
                .valid_attachments
                .clone()
                .unwrap_or_default()
                .into_iter()
                .map(|v| AttachmentKey {
                    container_id: v.container_id,
                    ifname: v.ifname,
                })
                .collect();
            if conf.valid_attachments.is_none() {
                return Err(Error::InvalidInput(format!(
                    "GC needs {GC_ATTACHMENTS_KEY} in the network configuration"
                )));
            }
            attacher.gc(&conf.name, &call.runtime, &valid).await?;
            Ok(None)
        }
        "STATUS" => {
            // Ready to ADD: the backend answers, and this host can plug and ready an edge
            // (local OVS DB with its bridge, ovn-controller connected to the Southbound DB).
            // The backend of this network (or every backend, if it is not found in any);
            // another backend being down does not matter to this network.
            let reg = &attacher.registry;
            let backends: Vec<_> = match reg.network(&conf.name).await {
                Ok((b, _)) => vec![b],
                Err(Error::UnknownNetwork(_)) => reg.backends().to_vec(),
                Err(e) => return Err(Error::Unavailable(format!("backend unreachable: {e}"))),
            };
            for b in backends {
                b.health().await.map_err(|e| {
                    Error::Unavailable(format!("backend {} unreachable: {e}", b.id()))
                })?;
            }
            reg.binding(None)?.health().await.map_err(|e| {
                Error::Unavailable(format!("this host cannot plug containers now: {e}"))
            })?;
            Ok(None)
        }
        other => Err(Error::InvalidEnv(format!(
            "CNI_COMMAND {other:?} is not one of ADD, DEL, CHECK, STATUS, GC, VERSION"
        ))),
    }
}

/// CHECK: every address the runtime recorded from ADD must still be the attachment's.
pub fn check_prev_result(att: &Attachment, prev: Option<&Value>) -> Result<()> {
    let Some(prev) = prev else { return Ok(()) };
    let have: Vec<String> = att
        .port
        .as_ref()
        .map(|p| p.ips.iter().map(ToString::to_string).collect())
        .unwrap_or_default();
    for ip in prev["ips"].as_array().into_iter().flatten() {
        let addr = ip["address"].as_str().unwrap_or_default();
        if !have.iter().any(|h| h == addr) {
            return Err(Error::CheckFailed {
                id: att.id.clone(),
                what: format!(
                    "prevResult address {addr} is not the attachment's ({})",
                    have.join(", ")
                ),
            });
        }
    }
    Ok(())
}

/// The ADD result per the CNI spec version the runtime asked for.
pub fn result_json(att: &Attachment, version: &str) -> Value {
    let port = att
        .port
        .clone()
        .unwrap_or_else(|| crate::model::LogicalPort {
            id: String::new(),
            name: att.port_name.clone(),
            network: att.network.clone(),
            mac: String::new(),
            ips: vec![],
            gateways: vec![],
            routes: vec![],
            dns: Default::default(),
            mtu: None,
            up: false,
            attachment: None,
            pairs_on: None,
            vlan: None,
        });
    let legacy = version == "0.4.0";
    // The host-side interface, when the edge has one (veth); a VF or a macvlan has none, and
    // then the container's interface is the only one (index 0).
    let mut interfaces: Vec<Value> = att
        .edge
        .host_ifname()
        .map(|h| json!({"name": h}))
        .into_iter()
        .collect();
    let container = interfaces.len();
    interfaces.push(json!({"name": att.ifname, "mac": port.mac, "sandbox": att.netns}));
    let ips: Vec<Value> = port
        .ips
        .iter()
        .map(|ip| {
            let mut o = json!({"address": ip.to_string(), "interface": container});
            if let Some(gw) = port
                .gateways
                .iter()
                .find(|gw| gw.is_ipv4() == ip.addr().is_ipv4())
            {
                o["gateway"] = json!(gw.to_string());
            }
            if legacy {
                o["version"] = json!(if ip.addr().is_ipv4() { "4" } else { "6" });
            }
            o
        })
        .collect();
    let routes: Vec<Value> = port
        .gateways
        .iter()
        .map(|gw| {
            let dst = if gw.is_ipv4() { "0.0.0.0/0" } else { "::/0" };
            json!({"dst": dst, "gw": gw.to_string()})
        })
        .chain(
            port.routes
                .iter()
                .map(|r| json!({"dst": r.dst.to_string(), "gw": r.gw.to_string()})),
        )
        .collect();
    json!({
        "cniVersion": version,
        "interfaces": interfaces,
        "ips": ips,
        "routes": routes,
        "dns": port.dns,
    })
}

/// Error JSON as the spec wants it on stdout.
pub fn error_json(version: &str, body: &ErrorBody) -> Value {
    let mut v = json!({"cniVersion": version, "code": body.code, "msg": body.msg});
    if !body.details.is_empty() {
        v["details"] = json!(body.details);
    }
    v
}

/// Plugin process: returns the exit code.
/// The name of the process that ran the plugin (the runtime: `podman`, `containerd`, …), or
/// "" if it cannot be read.
fn runtime_name() -> String {
    let ppid = std::os::unix::process::parent_id();
    std::fs::read_to_string(format!("/proc/{ppid}/comm"))
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

pub fn run_plugin() -> i32 {
    let env = |k: &str| std::env::var(k).unwrap_or_default();
    let command = env("CNI_COMMAND");
    let mut stdout = std::io::stdout();
    if command == "VERSION" {
        let v = json!({"cniVersion": LATEST, "supportedVersions": SUPPORTED_VERSIONS});
        let _ = writeln!(stdout, "{v}");
        return 0;
    }
    let mut stdin = String::new();
    let _ = std::io::stdin().read_to_string(&mut stdin);
    // Only two fields matter here; the daemon parses the rest.
    let peek: Value = serde_json::from_str(&stdin).unwrap_or(Value::Null);
    let version = peek
        .get("cniVersion")
        .and_then(Value::as_str)
        .filter(|v| SUPPORTED_VERSIONS.contains(v))
        .unwrap_or(LATEST)
        .to_string();
    let fail = |body: ErrorBody| {
        let _ = writeln!(std::io::stdout(), "{}", error_json(&version, &body));
        1
    };
    if peek.is_null() {
        return fail(ErrorBody {
            code: code::DECODE,
            msg: "network configuration on stdin is not valid JSON".into(),
            details: String::new(),
        });
    }
    let socket = peek
        .get("socket")
        .and_then(Value::as_str)
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("COURIER_SOCKET").map(PathBuf::from))
        .unwrap_or_else(|| PathBuf::from(DEFAULT_SOCKET));
    let call = CniCall {
        command: command.clone(),
        container_id: env("CNI_CONTAINERID"),
        netns: env("CNI_NETNS"),
        ifname: env("CNI_IFNAME"),
        args: env("CNI_ARGS"),
        path: env("CNI_PATH"),
        runtime: runtime_name(),
        stdin,
    };
    let body = match serde_json::to_vec(&call) {
        Ok(b) => b,
        Err(e) => {
            return fail(ErrorBody {
                code: code::INTERNAL,
                msg: format!("encoding request: {e}"),
                details: String::new(),
            })
        }
    };
    match client::request(
        &socket,
        "POST",
        "/v1/cni",
        Some(&body),
        Duration::from_secs(120),
    ) {
        Ok(resp) if resp.status == 200 => {
            if !resp.body.is_empty() && resp.body != b"null" {
                let _ = stdout.write_all(&resp.body);
                let _ = writeln!(stdout);
            }
            0
        }
        Ok(resp) => match serde_json::from_slice::<ErrorBody>(&resp.body) {
            Ok(e) => fail(e),
            Err(_) => fail(ErrorBody {
                code: code::INTERNAL,
                msg: format!("daemon answered HTTP {}", resp.status),
                details: String::from_utf8_lossy(&resp.body).into_owned(),
            }),
        },
        Err(e @ ClientError::Connect { .. }) => fail(ErrorBody {
            code: if command == "STATUS" {
                code::PLUGIN_NOT_AVAILABLE
            } else {
                code::TRY_AGAIN_LATER
            },
            msg: e.to_string(),
            details: String::new(),
        }),
        Err(e) => fail(ErrorBody {
            code: code::IO_FAILURE,
            msg: e.to_string(),
            details: String::new(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{AttachRequest, EdgeState, LogicalPort, Phase};

    fn att() -> Attachment {
        let mut a = Attachment::new(
            &AttachRequest {
                container_id: "c1".into(),
                ifname: "eth0".into(),
                netns: "/var/run/netns/a".into(),
                network: "n1".into(),
                ..Default::default()
            },
            "0123456789ab".into(),
            "ovn",
            EdgeState::VethOvs {
                host_ifname: "cv0123456789ab".into(),
                lower: None,
            },
        );
        a.phase = Phase::Ready;
        a.port = Some(LogicalPort {
            id: a.port_name.clone(),
            name: a.port_name.clone(),
            network: "n1".into(),
            mac: "0a:00:00:00:00:05".into(),
            ips: vec!["10.9.0.5/24".parse().unwrap()],
            gateways: vec!["10.9.0.1".parse().unwrap()],
            routes: vec![],
            dns: Default::default(),
            mtu: None,
            up: true,
            attachment: Some(a.id.clone()),
            pairs_on: None,
            vlan: None,
        });
        a
    }

    #[test]
    fn result_follows_spec_1_1() {
        let a = att();
        let r = result_json(&a, "1.1.0");
        assert_eq!(r["cniVersion"], "1.1.0");
        assert_eq!(r["interfaces"][1]["name"], "eth0");
        assert_eq!(r["interfaces"][1]["mac"], "0a:00:00:00:00:05");
        assert_eq!(r["interfaces"][1]["sandbox"], "/var/run/netns/a");
        assert_eq!(r["interfaces"][0]["name"], "cv0123456789ab");
        assert_eq!(r["ips"][0]["address"], "10.9.0.5/24");
        assert_eq!(r["ips"][0]["gateway"], "10.9.0.1");
        assert_eq!(r["ips"][0]["interface"], 1);
        assert!(r["ips"][0].get("version").is_none());
        assert_eq!(
            r["routes"][0],
            json!({"dst": "0.0.0.0/0", "gw": "10.9.0.1"})
        );
    }

    /// An edge without a host-side interface (an SR-IOV VF, a macvlan): the container's is
    /// the only interface, and the addresses name it (index 0), not an empty host entry.
    #[test]
    fn a_vf_result_has_only_the_containers_interface() {
        let mut a = att();
        a.edge = EdgeState::Sriov {
            physnet: "physnet1".into(),
            pf: "eth2".into(),
            vf: 1,
            pci: "0000:01:10.2".into(),
            vendor_info: "8086:10ca".into(),
            host_ifname: "eth3".into(),
            vlan: Some(100),
            requested: true,
        };
        let r = result_json(&a, "1.1.0");
        assert_eq!(r["interfaces"].as_array().map(Vec::len), Some(1), "{r}");
        assert_eq!(r["interfaces"][0]["name"], "eth0");
        assert_eq!(r["interfaces"][0]["sandbox"], "/var/run/netns/a");
        assert_eq!(r["ips"][0]["interface"], 0);
    }

    #[test]
    fn result_0_4_0_has_ip_version() {
        let r = result_json(&att(), "0.4.0");
        assert_eq!(r["ips"][0]["version"], "4");
    }

    /// sriov-cni's form: the device plugin's VF as `deviceID` (Multus puts it at the top
    /// level), or in runtimeConfig; either implies the sriov binding.
    #[test]
    fn a_device_id_picks_the_vf_and_the_sriov_binding() {
        let c = parse_netconf(
            r#"{"cniVersion":"1.1.0","name":"phys","type":"courier","deviceID":"0000:01:10.2"}"#,
        )
        .unwrap();
        assert_eq!(device_of(&c).as_deref(), Some("0000:01:10.2"));
        let c = parse_netconf(r#"{"cniVersion":"1.1.0","name":"phys","type":"courier","runtimeConfig":{"deviceID":"0000:01:10.4"}}"#).unwrap();
        assert_eq!(device_of(&c).as_deref(), Some("0000:01:10.4"));
        let c = parse_netconf(r#"{"cniVersion":"1.1.0","name":"phys","type":"courier"}"#).unwrap();
        assert_eq!(device_of(&c), None);
    }

    #[test]
    fn netconf_parsing_and_errors() {
        let c = parse_netconf(r#"{"cniVersion":"1.1.0","name":"n1","type":"courier","runtimeConfig":{"ips":["10.9.0.7/24"],"mac":"0a:00:00:00:00:07"}}"#).unwrap();
        assert_eq!(c.name, "n1");
        assert_eq!(
            requested_ip(&c, &HashMap::new()).unwrap(),
            Some("10.9.0.7".parse().unwrap())
        );
        let e = parse_netconf("{not json").unwrap_err();
        assert_eq!(e.code(), code::DECODE);
        let e =
            parse_netconf(r#"{"cniVersion":"0.3.1","name":"n1","type":"courier"}"#).unwrap_err();
        assert_eq!(e.code(), code::INCOMPATIBLE_VERSION);
        let e = parse_netconf(r#"{"cniVersion":"1.1.0","type":"courier"}"#).unwrap_err();
        assert_eq!(e.code(), code::DECODE);
        let gc = parse_netconf(r#"{"cniVersion":"1.1.0","name":"n1","type":"courier","cni.dev/valid-attachments":[{"containerID":"a","ifname":"eth0"}]}"#).unwrap();
        assert_eq!(gc.valid_attachments.unwrap()[0].container_id, "a");
    }

    #[test]
    fn check_compares_prev_result() {
        let a = att();
        assert!(check_prev_result(&a, None).is_ok());
        let good = result_json(&a, "1.1.0");
        assert!(check_prev_result(&a, Some(&good)).is_ok());
        let bad = json!({"ips": [{"address": "10.9.0.99/24"}]});
        let e = check_prev_result(&a, Some(&bad)).unwrap_err();
        assert_eq!(e.code(), code::CHECK_FAILED);
        assert!(e.to_string().contains("10.9.0.99/24"));
    }

    #[test]
    fn cni_args() {
        let a = parse_cni_args("IgnoreUnknown=1;IP=10.9.0.9;MAC=0a:00:00:00:00:09").unwrap();
        assert_eq!(a["IP"], "10.9.0.9");
        assert!(parse_cni_args("IP").is_err());
        assert!(parse_cni_args("").unwrap().is_empty());
    }

    #[test]
    fn error_json_shape() {
        let v = error_json(
            "1.0.0",
            &ErrorBody {
                code: 7,
                msg: "m".into(),
                details: String::new(),
            },
        );
        assert_eq!(v, json!({"cniVersion": "1.0.0", "code": 7, "msg": "m"}));
    }
}
