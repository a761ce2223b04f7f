//! The `courier` command line: the daemon, and verbs that talk to it over its socket.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use serde_json::{json, Value};

use crate::client;
use crate::config::DEFAULT_SOCKET;
use crate::error::ErrorBody;

#[derive(Parser, Debug)]
#[command(
    name = "courier",
    version,
    about = "Courier: containers get first-class ports on OVN logical networks.",
    long_about = "Courier: containers get first-class ports on OVN logical networks.\n\n\
        Run `courier daemon` (as root) to serve the local API; the other verbs talk to it.\n\
        Installed in a CNI bin dir, the same binary is the CNI plugin `courier` \
        (it acts as one whenever CNI_COMMAND is set)."
)]
pub struct Cli {
    /// The daemon's API socket.
    #[arg(long, global = true, env = "COURIER_SOCKET", default_value = DEFAULT_SOCKET)]
    pub socket: PathBuf,
    /// Print JSON instead of tables.
    #[arg(long, global = true)]
    pub json: bool,
    #[command(subcommand)]
    pub cmd: Cmd,
}

#[derive(Subcommand, Debug)]
pub enum Cmd {
    /// Run the daemon: local API on --socket, durable store, reconciliation.
    Daemon {
        /// TOML config file (default /etc/courier/courier.toml if it exists); COURIER_* env vars override it.
        #[arg(long, env = "COURIER_CONFIG")]
        config: Option<PathBuf>,
    },
    /// Create, list, show and delete logical networks.
    #[command(subcommand)]
    Network(NetworkCmd),
    /// Logical ports Courier owns on this host.
    #[command(subcommand)]
    Port(PortCmd),
    /// Port pools: ports made ahead, so an attach makes no backend write ([pool] in the config).
    #[command(subcommand)]
    Pool(PoolCmd),
    /// Attach a network namespace to a network (what CNI ADD does).
    Attach(AttachArgs),
    /// Detach an interface (what CNI DEL does); succeeds if already detached.
    Detach(DetachArgs),
    /// List attachments recorded on this host.
    Attachments,
    /// Daemon, backends' and bindings' health, counts, records kept aside, reconcile errors.
    Status,
    /// Run leak detection and repair now (the daemon also does it at start and periodically).
    Reconcile,
    /// Benchmarks that print numbers.
    #[command(subcommand)]
    Bench(crate::bench::BenchCmd),
}

#[derive(Subcommand, Debug)]
pub enum NetworkCmd {
    /// Create a logical network; the backend assigns addresses from --subnet.
    Create {
        name: String,
        /// Subnet: an IPv4 CIDR (e.g. 10.9.0.0/24) and/or an IPv6 prefix (OVN direct: a /64,
        /// e.g. fd00:9::/64); give --subnet twice for dual-stack.
        #[arg(long, required_unless_present = "neutron_network")]
        subnet: Vec<String>,
        /// Neutron: register this existing network (id or name) under NAME instead of creating
        /// one (`network delete` then removes only the registration).
        #[arg(long, conflicts_with = "subnet")]
        neutron_network: Option<String>,
        /// IPv4 gateway for the default route (default: the subnet's first address; on Neutron,
        /// Neutron's choice). Never assigned to a port.
        #[arg(long, conflicts_with = "no_gateway")]
        gateway: Option<String>,
        /// IPv6 gateway for the default route (default: the /64's ::1; on Neutron, Neutron's choice).
        #[arg(long, conflicts_with = "no_gateway")]
        gateway6: Option<String>,
        /// Create the network without a gateway (no default route in containers).
        #[arg(long)]
        no_gateway: bool,
        /// Addresses or A..B ranges the backend must not assign (repeatable, or space separated).
        #[arg(long, num_args = 1..)]
        exclude_ips: Vec<String>,
        /// Backend that holds the network (default: the daemon's default; see `courier status`).
        #[arg(long)]
        backend: Option<String>,
    },
    /// List networks.
    List,
    /// Show one network.
    Show { name: String },
    /// Delete a network Courier created (refused while it has ports).
    Delete { name: String },
}

#[derive(Subcommand, Debug)]
pub enum PortCmd {
    /// List logical ports Courier owns on this host.
    List,
}

#[derive(Subcommand, Debug)]
pub enum PoolCmd {
    /// List pools: free, taken and creating ports, hits and misses, refills.
    List,
    /// Show one pool (by id, or by network when it has one pool) and its ports.
    Show { name: String },
    /// Make ports for a network's pool now: COUNT of them (up to the pool's max), or what the
    /// pool's rule wants.
    Fill {
        network: String,
        #[arg(long)]
        count: Option<usize>,
        /// The pool of this binding (default: the daemon's default binding).
        #[arg(long)]
        binding: Option<String>,
    },
    /// Delete the free ports of a network's pools (of every pool without a network); taken
    /// ones stay with their containers.
    Drain { network: Option<String> },
}

#[derive(Args, Debug)]
pub struct AttachArgs {
    /// Path of the network namespace, e.g. /var/run/netns/NAME or /proc/PID/ns/net.
    #[arg(long)]
    pub netns: String,
    /// Network to attach to (with --port it may be left out: the port's own network, if it is
    /// a Courier network).
    #[arg(long, required_unless_present = "port")]
    pub network: Option<String>,
    /// Interface name inside the namespace.
    #[arg(long, default_value = "eth0")]
    pub ifname: String,
    /// Request this IP address instead of letting the backend choose (OVN direct: IPv4 only).
    #[arg(long)]
    pub ip: Option<String>,
    /// Request this MAC address instead of letting the backend choose.
    #[arg(long)]
    pub mac: Option<String>,
    /// Container id to record (default: the netns path).
    #[arg(long)]
    pub container_id: Option<String>,
    /// Edge binding for this interface (default: the daemon's default; see `courier status`).
    #[arg(long)]
    pub binding: Option<String>,
    /// Neutron security group (name or id) for the port; repeatable. Default: the project's.
    #[arg(long = "security-group")]
    pub security_groups: Vec<String>,
    /// Bind this existing Neutron port (its id) instead of creating one; detach gives it back
    /// as it was and never deletes it.
    #[arg(long, conflicts_with_all = ["ip", "mac", "security_groups"])]
    pub port: Option<String>,
    /// sriov binding: use the VF at this PCI address (e.g. 0000:01:10.0) instead of one from
    /// the host's VF pool.
    #[arg(long)]
    pub device: Option<String>,
}

#[derive(Args, Debug)]
pub struct DetachArgs {
    /// Container id given at attach time (default: the netns path).
    #[arg(long, required_unless_present = "netns")]
    pub container_id: Option<String>,
    /// Network namespace path given at attach time (used as container id if --container-id is absent).
    #[arg(long)]
    pub netns: Option<String>,
    #[arg(long, default_value = "eth0")]
    pub ifname: String,
}

pub fn main() -> i32 {
    let cli = Cli::parse();
    match cli.cmd {
        Cmd::Daemon { config } => crate::run_daemon(config),
        Cmd::Bench(cmd) => crate::bench::run(cmd, &cli.socket),
        ref cmd => match run_verb(&cli, cmd) {
            Ok(()) => 0,
            Err(msg) => {
                eprintln!("error: {msg}");
                1
            }
        },
    }
}

/// One request to the daemon; Err is a printable message.
pub fn call(
    socket: &std::path::Path,
    method: &str,
    path: &str,
    body: Option<Value>,
) -> Result<Value, String> {
    let bytes = body.map(|b| b.to_string().into_bytes());
    let resp = client::request(
        socket,
        method,
        path,
        bytes.as_deref(),
        Duration::from_secs(120),
    )
    .map_err(|e| e.to_string())?;
    if (200..300).contains(&resp.status) {
        if resp.body.is_empty() {
            return Ok(Value::Null);
        }
        serde_json::from_slice(&resp.body).map_err(|e| format!("bad reply from daemon: {e}"))
    } else {
        match serde_json::from_slice::<ErrorBody>(&resp.body) {
            Ok(e) if e.details.is_empty() => Err(e.msg),
            Ok(e) => Err(format!("{} ({})", e.msg, e.details)),
            Err(_) => Err(format!(
                "daemon answered HTTP {}: {}",
                resp.status,
                String::from_utf8_lossy(&resp.body)
            )),
        }
    }
}

fn run_verb(cli: &Cli, cmd: &Cmd) -> Result<(), String> {
    let s = cli.socket.as_path();
    let out = |v: &Value, table: &dyn Fn(&Value)| {
        if cli.json {
            println!("{}", serde_json::to_string_pretty(v).unwrap_or_default());
        } else {
            table(v)
        }
    };
    match cmd {
        Cmd::Network(NetworkCmd::Create {
            name,
            subnet,
            gateway,
            gateway6,
            no_gateway,
            exclude_ips,
            backend,
            neutron_network,
        }) => {
            let backend = match (backend, neutron_network) {
                (None, Some(_)) => Some("neutron".to_string()),
                (b, _) => b.clone(),
            };
            let (mut v4, mut v6) = (None, None);
            for sn in subnet.iter() {
                match sn.parse::<ipnet::IpNet>() {
                    Ok(ipnet::IpNet::V4(n)) if v4.is_none() => v4 = Some(n),
                    Ok(ipnet::IpNet::V6(n)) if v6.is_none() => v6 = Some(n),
                    Ok(_) => {
                        return Err(format!(
                            "--subnet {sn}: at most one IPv4 and one IPv6 subnet per network"
                        ))
                    }
                    Err(_) => {
                        return Err(format!(
                            "--subnet {sn:?} is not a CIDR such as 10.9.0.0/24 or fd00:9::/64"
                        ))
                    }
                }
            }
            let gw = match (gateway, no_gateway) {
                (Some(g), _) => Some(
                    g.parse::<std::net::Ipv4Addr>()
                        .map_err(|_| format!("--gateway {g:?} is not an IPv4 address"))?,
                ),
                (None, true) => None,
                (None, false) if backend.as_deref() == Some("neutron") => None,
                (None, false) => v4.and_then(|n| n.hosts().next()),
            };
            let gw6 = match (gateway6, no_gateway) {
                (Some(g), _) => Some(
                    g.parse::<std::net::Ipv6Addr>()
                        .map_err(|_| format!("--gateway6 {g:?} is not an IPv6 address"))?,
                ),
                (None, true) => None,
                // Neutron picks the gateway itself (the subnet's first address).
                (None, false) if backend.as_deref() == Some("neutron") => None,
                (None, false) => v6.map(|n| {
                    let mut o = n.network().octets();
                    o[15] |= 1;
                    std::net::Ipv6Addr::from(o)
                }),
            };
            let excludes: Vec<String> = exclude_ips
                .iter()
                .flat_map(|e| e.split_whitespace().map(String::from))
                .collect();
            let v = call(
                s,
                "POST",
                "/v1/networks",
                Some(
                    json!({"name": name, "subnet": v4, "gateway": gw, "subnet6": v6,
                    "gateway6": gw6, "exclude_ips": excludes, "backend": backend,
                    "existing": neutron_network}),
                ),
            )?;
            out(&v, &|v| {
                println!(
                    "created network {} ({}{})",
                    v["name"].as_str().unwrap_or("?"),
                    v["subnet"].as_str().unwrap_or("-"),
                    v["subnet6"]
                        .as_str()
                        .map(|s| format!(", {s}"))
                        .unwrap_or_default()
                )
            });
        }
        Cmd::Network(NetworkCmd::List) => {
            let v = call(s, "GET", "/v1/networks", None)?;
            out(&v, &|v| {
                println!(
                    "{:<24} {:<8} {:<18} {:<15} {:>5}",
                    "NAME", "BACKEND", "SUBNET", "GATEWAY", "PORTS"
                );
                for n in v.as_array().into_iter().flatten() {
                    println!(
                        "{:<24} {:<8} {:<18} {:<15} {:>5}",
                        n["name"].as_str().unwrap_or(""),
                        n["backend"].as_str().unwrap_or(""),
                        n["subnet"].as_str().unwrap_or("-"),
                        n["gateway"].as_str().unwrap_or("-"),
                        n["ports"]
                    );
                }
            });
        }
        Cmd::Network(NetworkCmd::Show { name }) => {
            let v = call(s, "GET", &format!("/v1/networks/{name}"), None)?;
            println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
        }
        Cmd::Network(NetworkCmd::Delete { name }) => {
            let v = call(s, "DELETE", &format!("/v1/networks/{name}"), None)?;
            out(&v, &|_| println!("deleted network {name}"));
        }
        Cmd::Port(PortCmd::List) => {
            let v = call(s, "GET", "/v1/ports", None)?;
            out(&v, &|v| {
                println!(
                    "{:<22} {:<16} {:<18} {:<18} {:<4} ATTACHMENT",
                    "PORT", "NETWORK", "MAC", "IP", "UP"
                );
                for p in v.as_array().into_iter().flatten() {
                    println!(
                        "{:<22} {:<16} {:<18} {:<18} {:<4} {}",
                        p["name"].as_str().unwrap_or(""),
                        p["network"].as_str().unwrap_or(""),
                        p["mac"].as_str().unwrap_or(""),
                        p["ips"][0].as_str().unwrap_or("-"),
                        if p["up"].as_bool() == Some(true) {
                            "yes"
                        } else {
                            "no"
                        },
                        p["attachment"].as_str().unwrap_or("-"),
                    );
                }
            });
        }
        Cmd::Pool(PoolCmd::List) => {
            let v = call(s, "GET", "/v1/pools", None)?;
            out(&v, &|v| {
                println!(
                    "{:<13} {:<16} {:<9} {:>5} {:>5} {:>8} {:>6} {:>6} {:>7} LAST ERROR",
                    "POOL",
                    "NETWORK",
                    "BINDING",
                    "FREE",
                    "TAKEN",
                    "CREATING",
                    "HITS",
                    "MISSES",
                    "REFILLS"
                );
                for p in v.as_array().into_iter().flatten() {
                    println!(
                        "{:<13} {:<16} {:<9} {:>5} {:>5} {:>8} {:>6} {:>6} {:>7} {}",
                        p["pool"].as_str().unwrap_or(""),
                        p["network"].as_str().unwrap_or(""),
                        p["key"]["binding"].as_str().unwrap_or(""),
                        p["free"],
                        p["taken"],
                        p["creating"],
                        p["stats"]["hits"],
                        p["stats"]["misses"],
                        p["stats"]["refills"],
                        p["stats"]["last_error"].as_str().unwrap_or("-"),
                    );
                }
            });
        }
        Cmd::Pool(PoolCmd::Show { name }) => {
            let v = call(s, "GET", &format!("/v1/pools/{name}"), None)?;
            out(&v, &|v| {
                let p = &v["pool"];
                println!(
                    "pool {} on {} ({} binding): {} free, {} taken, {} creating; min {} max {} batch {}",
                    p["pool"].as_str().unwrap_or(""),
                    p["network"].as_str().unwrap_or(""),
                    p["key"]["binding"].as_str().unwrap_or(""),
                    p["free"],
                    p["taken"],
                    p["creating"],
                    p["min"],
                    p["max"],
                    p["batch"]
                );
                println!(
                    "{:<13} {:<22} {:<9} {:<18} {:<18} HOLDER",
                    "SLOT", "PORT", "STATE", "MAC", "IP"
                );
                for sl in v["slots"].as_array().into_iter().flatten() {
                    let slot = &sl["slot"];
                    println!(
                        "{:<13} {:<22} {:<9} {:<18} {:<18} {}",
                        slot["id"].as_str().unwrap_or(""),
                        slot["port_name"].as_str().unwrap_or(""),
                        slot["state"].as_str().unwrap_or(""),
                        slot["port"]["mac"].as_str().unwrap_or("-"),
                        slot["port"]["ips"][0].as_str().unwrap_or("-"),
                        sl["holder"].as_str().unwrap_or("-"),
                    );
                }
            });
        }
        Cmd::Pool(PoolCmd::Fill {
            network,
            count,
            binding,
        }) => {
            let body = json!({"network": network, "count": count, "binding": binding});
            let v = call(s, "POST", "/v1/pools/fill", Some(body))?;
            out(&v, &|v| {
                println!(
                    "pool {}: {} ports made",
                    v["pool"].as_str().unwrap_or(""),
                    v["made"]
                )
            });
        }
        Cmd::Pool(PoolCmd::Drain { network }) => {
            let v = call(
                s,
                "POST",
                "/v1/pools/drain",
                Some(json!({"network": network})),
            )?;
            out(&v, &|v| {
                println!("{} free pooled ports deleted", v["drained"])
            });
        }
        Cmd::Attach(a) => {
            let ip =
                a.ip.as_ref()
                    .map(|i| {
                        i.parse::<std::net::IpAddr>()
                            .map_err(|_| format!("--ip {i:?} is not an IP address"))
                    })
                    .transpose()?;
            let v = call(
                s,
                "POST",
                "/v1/attachments",
                Some(json!({
                    "container_id": a.container_id.clone().unwrap_or_else(|| a.netns.clone()),
                    "ifname": a.ifname,
                    "netns": a.netns,
                    "network": a.network.clone().unwrap_or_default(),
                    "ip": ip,
                    "mac": a.mac,
                    "binding": a.binding,
                    "security_groups": a.security_groups,
                    "port": a.port,
                    "device": a.device,
                })),
            )?;
            out(&v, &|v| {
                println!(
                    "attached {} {} to {}: {} {} (port {})",
                    v["netns"].as_str().unwrap_or(""),
                    v["ifname"].as_str().unwrap_or(""),
                    v["network"].as_str().unwrap_or(""),
                    v["port"]["mac"].as_str().unwrap_or(""),
                    v["port"]["ips"][0].as_str().unwrap_or(""),
                    v["port_name"].as_str().unwrap_or(""),
                )
            });
        }
        Cmd::Detach(d) => {
            let container_id = d
                .container_id
                .clone()
                .or_else(|| d.netns.clone())
                .ok_or("give --container-id or --netns")?;
            let v = call(
                s,
                "POST",
                "/v1/attachments/detach",
                Some(json!({"container_id": container_id, "ifname": d.ifname})),
            )?;
            out(&v, &|v| {
                if v["detached"].is_null() {
                    println!("nothing was attached for {container_id} {}", d.ifname)
                } else {
                    println!("detached {container_id} {}", d.ifname)
                }
            });
        }
        Cmd::Attachments => {
            let v = call(s, "GET", "/v1/attachments", None)?;
            out(&v, &|v| {
                println!(
                    "{:<12} {:<10} {:<32} {:<8} {:<16} IP",
                    "ID", "PHASE", "NETNS", "IFNAME", "NETWORK"
                );
                for a in v.as_array().into_iter().flatten() {
                    println!(
                        "{:<12} {:<10} {:<32} {:<8} {:<16} {}",
                        a["id"].as_str().unwrap_or(""),
                        a["phase"].as_str().unwrap_or(""),
                        a["netns"].as_str().unwrap_or(""),
                        a["ifname"].as_str().unwrap_or(""),
                        a["network"].as_str().unwrap_or(""),
                        a["port"]["ips"][0].as_str().unwrap_or("-"),
                    );
                }
            });
        }
        Cmd::Status => {
            let v = call(s, "GET", "/v1/status", None)?;
            out(&v, &|v| {
                println!(
                    "daemon:      running (version {}, up {} s, host {})",
                    v["version"].as_str().unwrap_or("?"),
                    v["uptime_secs"],
                    v["host"].as_str().unwrap_or("?")
                );
                let health = |what: &str, h: &Value, ok: &str, bad: &str, default: &Value| {
                    let name = h["name"].as_str().unwrap_or("?");
                    println!(
                        "{what:<12} {name}{} {}{}",
                        if default.as_str() == Some(name) {
                            " (default)"
                        } else {
                            ""
                        },
                        if h["ok"].as_bool() == Some(true) {
                            ok
                        } else if what == "backend:" && h["code"].as_u64().is_some_and(|c| c != 11)
                        {
                            // Answers, but refuses (a bad cloud): not a matter of waiting.
                            "FAILING"
                        } else {
                            bad
                        },
                        h["error"]
                            .as_str()
                            .map(|e| format!(" ({e})"))
                            .unwrap_or_default()
                    );
                };
                for b in v["backends"].as_array().into_iter().flatten() {
                    health(
                        "backend:",
                        b,
                        "reachable",
                        "UNREACHABLE",
                        &v["default_backend"],
                    );
                }
                for b in v["bindings"].as_array().into_iter().flatten() {
                    health("binding:", b, "ready", "NOT READY", &v["default_binding"]);
                    for g in b["devices"]["groups"].as_array().into_iter().flatten() {
                        println!(
                            "  VFs of {} ({}): {} free of {} ({} held, {} unusable){}",
                            g["pf"].as_str().unwrap_or("?"),
                            g["physnet"].as_str().unwrap_or("?"),
                            g["free"],
                            g["total"],
                            g["held"],
                            g["unusable"],
                            g["error"]
                                .as_str()
                                .map(|e| format!(": {e}"))
                                .unwrap_or_default()
                        );
                    }
                    for pci in b["devices"]["vanished"].as_array().into_iter().flatten() {
                        println!(
                            "  VF {} is held by a container and is on no mapped PF now",
                            pci.as_str().unwrap_or("?")
                        );
                    }
                }
                println!("networks:    {}", v["networks"]);
                println!(
                    "attachments: {} ({} ready)",
                    v["attachments"], v["attachments_ready"]
                );
                for u in v["undecodable_records"].as_array().into_iter().flatten() {
                    println!(
                        "kept aside:  record {} cannot be read: {}",
                        u["id"].as_str().unwrap_or("?"),
                        u["error"].as_str().unwrap_or("?")
                    );
                }
                for e in v["reconcile_errors"].as_array().into_iter().flatten() {
                    println!(
                        "reconcile:   {} failed: {}",
                        e["item"].as_str().unwrap_or("?"),
                        e["error"].as_str().unwrap_or("?")
                    );
                }
            });
            let all_ok = ["backends", "bindings"].iter().all(|k| {
                v[k].as_array()
                    .into_iter()
                    .flatten()
                    .all(|h| h["ok"].as_bool() == Some(true))
            });
            if !all_ok {
                return Err("not everything is reachable".into());
            }
        }
        Cmd::Reconcile => {
            let v = call(s, "POST", "/v1/reconcile", None)?;
            println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
        }
        Cmd::Daemon { .. } | Cmd::Bench(_) => unreachable!("handled in main"),
    }
    Ok(())
}
