//! `courier bench attach`: CNI ADD/DEL through Courier for N namespaces, and the same through
//! the reference `bridge` + `host-local` plugins in the same run, and the netlink floor (a veth
//! born in the netns, addressed, routed, up, in this process: the least an ADD can cost here);
//! prints latency percentiles, throughput and the ratios. Plugin time is measured from exec to
//! exit.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use clap::Subcommand;
use serde_json::json;

use crate::cli::call;
use crate::netns;

#[derive(Subcommand, Debug)]
pub enum BenchCmd {
    /// ADD then DEL N namespaces through Courier's CNI plugin, through bridge+host-local, and
    /// the netlink floor (a veth born in the netns, addressed, routed and up, in-process).
    Attach {
        /// Number of namespaces.
        #[arg(short = 'n', long, default_value_t = 200)]
        count: usize,
        /// Concurrent plugin invocations.
        #[arg(short = 'p', long, default_value_t = 1)]
        parallel: usize,
        /// Directory of the reference CNI plugins.
        #[arg(long, default_value = "/usr/lib/cni")]
        cni_path: PathBuf,
        /// Skip the reference plugins and the netlink floor (Courier only).
        #[arg(long)]
        no_reference: bool,
        /// Also time ADD/DEL served from the network's port pool (filled with N ports first;
        /// the daemon needs pools on: [pool] enabled, COURIER_POOL=1), beside the cold ones.
        #[arg(long)]
        pooled: bool,
        /// Also write the numbers as JSON to this file.
        #[arg(long)]
        output: Option<PathBuf>,
        /// Attach to this existing Courier network (any backend) instead of a fresh OVN one.
        /// On a Neutron network the run also times bare Neutron port create + delete through
        /// the API (credentials: --cloud / OS_CLOUD / OS_*), and prints Courier's ratio to it.
        #[arg(long)]
        network: Option<String>,
        /// clouds.yaml cloud for the Neutron baseline (default: OS_CLOUD, else OS_*).
        #[arg(long)]
        cloud: Option<String>,
        /// binding:host_id of the baseline's ports (default: this machine's hostname, as the
        /// daemon's [neutron] host_id).
        #[arg(long)]
        host_id: Option<String>,
        /// Think time before each timed call, for every case alike (not timed; left out of the
        /// throughput). With it each call meets a backend that has finished the previous one's
        /// work: a bound Neutron port turns ACTIVE after its ADD returned, and back to back that
        /// work lands inside the next ADD's port create. On a Neutron network with -p 1, Courier
        /// and the baseline then take turns (ADD i, create i; DEL i, delete i). 0: back to back.
        #[arg(long, default_value_t = 0)]
        pause_ms: u64,
    },
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct Stats {
    pub count: usize,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub mean_ms: f64,
    pub max_ms: f64,
    pub per_sec: f64,
}

pub fn stats(mut v: Vec<Duration>, wall: Duration) -> Stats {
    v.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    let pick = |p: usize| {
        v.get(((v.len() * p) / 100).min(v.len().saturating_sub(1)))
            .copied()
            .map(ms)
            .unwrap_or(0.0)
    };
    Stats {
        count: v.len(),
        p50_ms: pick(50),
        p90_ms: pick(90),
        p99_ms: pick(99),
        mean_ms: if v.is_empty() {
            0.0
        } else {
            v.iter().map(|d| ms(*d)).sum::<f64>() / v.len() as f64
        },
        max_ms: v.last().copied().map(ms).unwrap_or(0.0),
        per_sec: if wall.is_zero() {
            0.0
        } else {
            v.len() as f64 / wall.as_secs_f64()
        },
    }
}

fn exec_plugin(
    plugin: &Path,
    command: &str,
    container: &str,
    netns: &Path,
    cni_path: &Path,
    conf: &str,
) -> Result<Duration, String> {
    let start = Instant::now();
    let mut child = Command::new(plugin)
        .env("CNI_COMMAND", command)
        .env("CNI_CONTAINERID", container)
        .env("CNI_NETNS", netns)
        .env("CNI_IFNAME", "eth0")
        .env("CNI_PATH", cni_path)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("exec {}: {e}", plugin.display()))?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(conf.as_bytes())
            .map_err(|e| format!("writing netconf: {e}"))?;
    }
    let out = child
        .wait_with_output()
        .map_err(|e| format!("waiting for {}: {e}", plugin.display()))?;
    let took = start.elapsed();
    if !out.status.success() {
        return Err(format!(
            "{} {command} {container} failed: {}{}",
            plugin.display(),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(took)
}

/// One plugin's calls over the bench's namespaces.
struct Phase<'a> {
    plugin: &'a Path,
    /// Container ids are `{prefix}-{i}`.
    prefix: &'a str,
    cni_path: &'a Path,
    conf: &'a str,
    parallel: usize,
    /// Think time before each call (not timed).
    pause: Duration,
}

impl Phase<'_> {
    /// `command` for namespace `name`, the `i`th: how long the plugin ran.
    fn exec(&self, command: &str, i: usize, name: &str) -> Result<Duration, String> {
        exec_plugin(
            self.plugin,
            command,
            &format!("{}-{i}", self.prefix),
            &netns::path(name),
            self.cni_path,
            self.conf,
        )
    }

    /// `command` for every namespace with `parallel` workers; per-call times and the wall time
    /// (think time left out).
    fn run(&self, command: &str, names: &[String]) -> Result<(Vec<Duration>, Duration), String> {
        let next = AtomicUsize::new(0);
        let times = Mutex::new(Vec::with_capacity(names.len()));
        let first_err = Mutex::new(None);
        let start = Instant::now();
        std::thread::scope(|s| {
            for _ in 0..self.parallel.max(1) {
                s.spawn(|| loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some(name) = names.get(i) else { break };
                    std::thread::sleep(self.pause);
                    match self.exec(command, i, name) {
                        Ok(d) => times.lock().unwrap_or_else(|p| p.into_inner()).push(d),
                        Err(e) => {
                            first_err
                                .lock()
                                .unwrap_or_else(|p| p.into_inner())
                                .get_or_insert(e);
                            break;
                        }
                    }
                });
            }
        });
        let rounds = names.len().div_ceil(self.parallel.max(1)) as u32;
        let wall = start.elapsed().saturating_sub(self.pause * rounds);
        if let Some(e) = first_err.into_inner().unwrap_or(None) {
            return Err(e);
        }
        Ok((times.into_inner().unwrap_or_default(), wall))
    }
}

/// Deletes a host link through the netlink crate (a short-lived runtime: the bench is sync).
fn remove_link(name: &str) {
    let Ok(rt) = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    else {
        return;
    };
    rt.block_on(async {
        if let Ok(nl) = courier_netlink::Netlink::host() {
            let _ = nl.delete_link(name).await;
        }
    });
}

fn ratio(a: f64, b: f64) -> f64 {
    if b > 0.0 {
        a / b
    } else {
        f64::NAN
    }
}

fn print_row(label: &str, s: &Stats) {
    println!(
        "{label:<22} n={:<4} p50={:>7.2} ms  p90={:>7.2} ms  p99={:>7.2} ms  mean={:>7.2} ms  max={:>7.2} ms  {:>7.1}/s",
        s.count, s.p50_ms, s.p90_ms, s.p99_ms, s.mean_ms, s.max_ms, s.per_sec
    );
}

pub fn run(cmd: BenchCmd, socket: &Path) -> i32 {
    match cmd {
        BenchCmd::Attach {
            count,
            parallel,
            cni_path,
            no_reference,
            pooled,
            output,
            network,
            cloud,
            host_id,
            pause_ms,
        } => {
            match bench_attach(
                socket,
                &Opts {
                    count,
                    parallel,
                    cni_path: &cni_path,
                    no_reference,
                    pooled,
                    output: output.as_deref(),
                    network: network.as_deref(),
                    cloud: cloud.as_deref(),
                    host_id: host_id.as_deref(),
                    pause: Duration::from_millis(pause_ms),
                },
            ) {
                Ok(()) => 0,
                Err(e) => {
                    eprintln!("error: {e}");
                    1
                }
            }
        }
    }
}

struct Opts<'a> {
    count: usize,
    parallel: usize,
    cni_path: &'a Path,
    no_reference: bool,
    pooled: bool,
    output: Option<&'a Path>,
    network: Option<&'a str>,
    cloud: Option<&'a str>,
    host_id: Option<&'a str>,
    pause: Duration,
}

/// Bare Neutron port creates and deletes on one network straight through the API: what Neutron
/// itself costs for the port Courier asks for (same device_owner, binding:host_id and tags — a
/// host binding makes ML2 bind the port, which is most of Neutron's work). Its ports are never
/// plugged, so Neutron never turns them ACTIVE.
struct NeutronBaseline {
    rt: tokio::runtime::Runtime,
    api: courier_openstack::Neutron,
    network_id: String,
    host_id: String,
    tag: String,
}

impl NeutronBaseline {
    fn connect(cloud: Option<&str>, network_id: &str, host_id: &str) -> Result<Self, String> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| e.to_string())?;
        let api = rt.block_on(async {
            let cfg = courier_openstack::CloudConfig::from_process_env(cloud)
                .map_err(|e| format!("Neutron baseline: {e}"))?;
            courier_openstack::Neutron::connect(cfg)
                .await
                .map_err(|e| format!("Neutron baseline: {e}"))
        })?;
        Ok(NeutronBaseline {
            rt,
            api,
            network_id: network_id.to_string(),
            host_id: host_id.to_string(),
            tag: format!("courier-bench-{}", std::process::id()),
        })
    }

    /// Creates port `i`; returns its id and how long the create took.
    fn create(&self, i: usize) -> Result<(String, Duration), String> {
        let tag = &self.tag;
        let req = courier_openstack::PortCreate {
            network_id: self.network_id.clone(),
            name: Some(format!("{tag}-{i}")),
            device_owner: Some("compute:courier-bench".into()),
            device_id: Some(format!("{tag}-{i}")),
            binding_host_id: Some(self.host_id.clone()),
            tags: vec![tag.clone(), "courier:bench".into(), format!("{tag}-{i}")],
            ..Default::default()
        };
        let t = Instant::now();
        let p = self
            .rt
            .block_on(self.api.create_port(&req))
            .map_err(|e| format!("Neutron baseline: {e}"))?;
        Ok((p.id, t.elapsed()))
    }

    fn delete(&self, id: &str) -> Result<Duration, String> {
        let t = Instant::now();
        self.rt
            .block_on(self.api.delete_port(id))
            .map_err(|e| format!("Neutron baseline: deleting port {id}: {e}"))?;
        Ok(t.elapsed())
    }

    /// `count` creates then `count` deletes, each after `pause`.
    fn run(&self, count: usize, pause: Duration) -> Result<(Stats, Stats), String> {
        let (mut creates, mut deletes, mut ids) = (Vec::new(), Vec::new(), Vec::new());
        let start = Instant::now();
        let mut result = Ok(());
        for i in 0..count {
            std::thread::sleep(pause);
            match self.create(i) {
                Ok((id, took)) => {
                    ids.push(id);
                    creates.push(took);
                }
                Err(e) => {
                    result = Err(e);
                    break;
                }
            }
        }
        let created = start.elapsed();
        for id in &ids {
            std::thread::sleep(pause);
            match self.delete(id) {
                Ok(took) => deletes.push(took),
                Err(e) => result = result.and(Err(e)),
            }
        }
        result?;
        let thinking = pause * count as u32;
        let deleted = start.elapsed() - created;
        Ok((
            stats(creates, created.saturating_sub(thinking)),
            stats(deletes, deleted.saturating_sub(thinking)),
        ))
    }
}

/// Courier and the bare Neutron baseline taken in turns, each call after `pause`: ADD i, then
/// create i; once all are up, DEL i, then delete i. Both meet the same Neutron (its load, the
/// machine's drift) within a second of each other. Only with a pause long enough for Neutron
/// to finish a Courier port's ACTIVE transition: back to back, the baseline's create would pay
/// for it instead.
fn interleaved(
    courier: &Phase,
    baseline: &NeutronBaseline,
    names: &[String],
    pause: Duration,
) -> Result<[Stats; 4], String> {
    let n = names.len();
    let mut t: [Vec<Duration>; 4] = Default::default();
    let mut ids = Vec::with_capacity(n);
    let mut result = Ok(());
    for (i, name) in names.iter().enumerate() {
        std::thread::sleep(pause);
        match courier.exec("ADD", i, name) {
            Ok(d) => t[0].push(d),
            Err(e) => {
                result = Err(e);
                break;
            }
        }
        std::thread::sleep(pause);
        match baseline.create(i) {
            Ok((id, d)) => {
                ids.push(id);
                t[1].push(d);
            }
            Err(e) => {
                result = Err(e);
                break;
            }
        }
    }
    // Everything made is undone, whatever failed.
    for (i, name) in names.iter().enumerate().take(t[0].len()) {
        std::thread::sleep(pause);
        match courier.exec("DEL", i, name) {
            Ok(d) => t[2].push(d),
            Err(e) => result = result.and(Err(e)),
        }
        if let Some(id) = ids.get(i) {
            std::thread::sleep(pause);
            match baseline.delete(id) {
                Ok(d) => t[3].push(d),
                Err(e) => result = result.and(Err(e)),
            }
        }
    }
    result?;
    // Each kind's calls ran one at a time, so its busy time is the sum of its calls.
    Ok(t.map(|v| {
        let busy = v.iter().sum();
        stats(v, busy)
    }))
}

/// The netlink floor: what giving a netns an interface costs at the least on this host, in
/// this process (no plugin exec, no backend, no switch): a veth born with its peer in the netns,
/// the peer renamed, addressed, up with a default route, the host end up; then its delete.
/// Sequential, one per namespace in `names`. Returns (ADD times, DEL times, ADD wall, DEL wall).
fn netlink_floor(names: &[String]) -> Result<(Stats, Stats), String> {
    use std::os::fd::AsRawFd;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    rt.block_on(async {
        let host = courier_netlink::Netlink::host().map_err(|e| e.to_string())?;
        let (mut add, mut del) = (Vec::new(), Vec::new());
        let (mut add_wall, mut del_wall) = (Duration::ZERO, Duration::ZERO);
        let gw: std::net::IpAddr = "10.242.0.1".parse().map_err(|_| "gateway".to_string())?;
        for (i, n) in names.iter().enumerate() {
            let path = netns::path(n);
            let host_if = format!("fl{}", &n[n.len().saturating_sub(11)..]);
            let addr: ipnet::IpNet = format!("10.242.{}.{}/16", 1 + i / 250, 1 + i % 250)
                .parse()
                .map_err(|e| format!("floor address: {e}"))?;
            let t = Instant::now();
            let fd = std::fs::File::open(&path).map_err(|e| format!("{}: {e}", path.display()))?;
            host.create_veth(&courier_netlink::VethSpec {
                host_name: host_if.clone(),
                peer_name: "flpeer0".into(),
                peer_mac: None,
                mtu: None,
                peer_netns_fd: Some(fd.as_raw_fd()),
            })
            .await
            .map_err(|e| e.to_string())?;
            let ns = courier_netlink::Netlink::in_netns(&path)
                .await
                .map_err(|e| e.to_string())?;
            ns.configure(&courier_netlink::IfaceConfig {
                current_name: "flpeer0".into(),
                new_name: "eth0".into(),
                mac: None,
                mtu: None,
                addresses: vec![addr],
                gateways: vec![gw],
                routes: vec![],
            })
            .await
            .map_err(|e| e.to_string())?;
            host.set_up(&host_if).await.map_err(|e| e.to_string())?;
            let took = t.elapsed();
            add.push(took);
            add_wall += took;
            let t = Instant::now();
            host.delete_link(&host_if)
                .await
                .map_err(|e| e.to_string())?;
            let took = t.elapsed();
            del.push(took);
            del_wall += took;
        }
        Ok((stats(add, add_wall), stats(del, del_wall)))
    })
}

fn bench_attach(socket: &Path, o: &Opts) -> Result<(), String> {
    let Opts {
        count,
        parallel,
        cni_path,
        no_reference,
        output,
        pause,
        ..
    } = *o;
    let me = std::env::current_exe().map_err(|e| format!("finding own binary: {e}"))?;
    let tag = std::process::id();
    call(socket, "GET", "/v1/status", None)?;
    let (network, own_network) = match o.network {
        Some(n) => (n.to_string(), false),
        None => (format!("bench-{tag}"), true),
    };
    let net_info = if own_network {
        call(
            socket,
            "POST",
            "/v1/networks",
            Some(
                json!({"name": network, "subnet": "10.240.0.0/16", "gateway": "10.240.0.1", "exclude_ips": []}),
            ),
        )?
    } else {
        call(socket, "GET", &format!("/v1/networks/{network}"), None)?
    };
    let backend = net_info["backend"].as_str().unwrap_or("ovn").to_string();
    let names: Vec<String> = (0..count).map(|i| format!("cb{tag}-{i}")).collect();
    let ref_names: Vec<String> = (0..count).map(|i| format!("rb{tag}-{i}")).collect();
    let floor_names: Vec<String> = (0..count).map(|i| format!("fb{tag}-{i}")).collect();
    let cleanup = |names: &[String]| {
        for n in names {
            let _ = netns::delete(n);
        }
    };
    let result = (|| -> Result<serde_json::Value, String> {
        for n in names
            .iter()
            .chain(if no_reference {
                [].iter()
            } else {
                ref_names.iter()
            })
            .chain(if no_reference {
                [].iter()
            } else {
                floor_names.iter()
            })
        {
            netns::create(n).map_err(|e| e.to_string())?;
        }
        let conf =
            json!({"cniVersion": "1.1.0", "name": network, "type": "courier", "socket": socket})
                .to_string();
        let courier = Phase {
            plugin: &me,
            prefix: "cb",
            cni_path,
            conf: &conf,
            parallel,
            pause,
        };
        let baseline = if backend == "neutron" {
            let net_id = net_info["backend_id"].as_str().unwrap_or_default();
            let host_id = o
                .host_id
                .map(String::from)
                .unwrap_or_else(crate::config::local_hostname);
            Some(NeutronBaseline::connect(o.cloud, net_id, &host_id)?)
        } else {
            None
        };
        // Settled calls one at a time on Neutron: Courier and the baseline in turns.
        let turns = baseline.is_some() && parallel <= 1 && !pause.is_zero();
        println!(
            "courier bench attach: n={count} parallel={parallel} pause={}ms{}; Courier network {network} ({backend}), reference bridge+host-local",
            pause.as_millis(),
            if turns { ", Courier and Neutron's baseline in turns" } else { "" }
        );
        let (c_add, c_del, neutron) = match &baseline {
            Some(b) if turns => {
                let [a, c, d, e] = interleaved(&courier, b, &names, pause)?;
                (a, d, Some((c, e)))
            }
            _ => {
                let (add, add_wall) = courier.run("ADD", &names)?;
                let (del, del_wall) = courier.run("DEL", &names)?;
                let n = match &baseline {
                    Some(b) => Some(b.run(count, pause)?),
                    None => None,
                };
                (stats(add, add_wall), stats(del, del_wall), n)
            }
        };
        print_row("courier ADD", &c_add);
        print_row("courier DEL", &c_del);
        let mut out = json!({"count": count, "parallel": parallel, "pause_ms": pause.as_millis() as u64,
            "in_turns": turns, "backend": backend, "courier": {"add": c_add, "del": c_del}});
        // The same ADDs and DELs served from the network's pool, filled with N ports first
        // (and drained after, so the network is left as found).
        let pooled = if o.pooled {
            let filled = call(
                socket,
                "POST",
                "/v1/pools/fill",
                Some(json!({"network": network, "count": count})),
            )
            .map_err(|e| format!("filling the pool of {network} (--pooled): {e}"))?;
            let made = filled["made"].as_u64().unwrap_or(0) as usize;
            if made < count {
                println!("note: the pool got {made} of {count} ports; the other ADDs go cold");
            }
            let (add, add_wall) = courier.run("ADD", &names)?;
            let (del, del_wall) = courier.run("DEL", &names)?;
            let _ = call(
                socket,
                "POST",
                "/v1/pools/drain",
                Some(json!({"network": network})),
            );
            let (p_add, p_del) = (stats(add, add_wall), stats(del, del_wall));
            print_row("courier pooled ADD", &p_add);
            print_row("courier pooled DEL", &p_del);
            println!(
                "ratio pooled/cold: ADD p50 {:.2}x, p99 {:.2}x; DEL p50 {:.2}x; pooled ADD p99/p50 {:.2}",
                ratio(p_add.p50_ms, c_add.p50_ms),
                ratio(p_add.p99_ms, c_add.p99_ms),
                ratio(p_del.p50_ms, c_del.p50_ms),
                ratio(p_add.p99_ms, p_add.p50_ms),
            );
            out["pooled"] = json!({"add": p_add, "del": p_del, "filled": made});
            Some(p_add)
        } else {
            None
        };
        if let Some((n_create, n_delete)) = neutron {
            print_row("neutron port create", &n_create);
            print_row("neutron port delete", &n_delete);
            println!(
                "ratio courier/neutron: ADD/create p50 {:.2}x p99 {:.2}x; DEL/delete p50 {:.2}x p99 {:.2}x",
                ratio(c_add.p50_ms, n_create.p50_ms),
                ratio(c_add.p99_ms, n_create.p99_ms),
                ratio(c_del.p50_ms, n_delete.p50_ms),
                ratio(c_del.p99_ms, n_delete.p99_ms),
            );
            out["neutron"] = json!({"create": n_create, "delete": n_delete});
        }
        if !no_reference {
            let data_dir = std::env::temp_dir().join(format!("courier-bench-ipam-{tag}"));
            let rconf = json!({
                "cniVersion": "1.0.0", "name": format!("benchbr{tag}"), "type": "bridge",
                "bridge": format!("cbr{}", tag % 100000), "isGateway": true,
                "ipam": {"type": "host-local", "subnet": "10.241.0.0/16", "dataDir": data_dir}
            })
            .to_string();
            let bridge = cni_path.join("bridge");
            let reference = Phase {
                plugin: &bridge,
                prefix: "rb",
                conf: &rconf,
                ..courier
            };
            let (radd, radd_wall) = reference.run("ADD", &ref_names)?;
            let (rdel, rdel_wall) = reference.run("DEL", &ref_names)?;
            let r_add = stats(radd, radd_wall);
            let r_del = stats(rdel, rdel_wall);
            print_row("bridge+host-local ADD", &r_add);
            print_row("bridge+host-local DEL", &r_del);
            println!(
                "ratio courier/bridge: ADD p50 {:.2}x, p99 {:.2}x; DEL p50 {:.2}x, p99 {:.2}x; ADD throughput {:.2}x",
                ratio(c_add.p50_ms, r_add.p50_ms),
                ratio(c_add.p99_ms, r_add.p99_ms),
                ratio(c_del.p50_ms, r_del.p50_ms),
                ratio(c_del.p99_ms, r_del.p99_ms),
                ratio(c_add.per_sec, r_add.per_sec),
            );
            out["reference"] = json!({"add": r_add, "del": r_del});
            let (f_add, f_del) = netlink_floor(&floor_names)?;
            print_row("netlink floor ADD", &f_add);
            print_row("netlink floor DEL", &f_del);
            println!(
                "ratio courier/floor: ADD p50 {:.2}x, p99 {:.2}x; bridge/floor: ADD p50 {:.2}x",
                ratio(c_add.p50_ms, f_add.p50_ms),
                ratio(c_add.p99_ms, f_add.p99_ms),
                ratio(r_add.p50_ms, f_add.p50_ms),
            );
            if let Some(p_add) = &pooled {
                println!(
                    "ratio pooled/bridge: ADD p50 {:.2}x, p99 {:.2}x; pooled/floor: ADD p50 {:.2}x",
                    ratio(p_add.p50_ms, r_add.p50_ms),
                    ratio(p_add.p99_ms, r_add.p99_ms),
                    ratio(p_add.p50_ms, f_add.p50_ms),
                );
            }
            out["floor"] = json!({"add": f_add, "del": f_del});
            let _ = std::fs::remove_dir_all(&data_dir);
            // The bridge plugin leaves its bridge behind; remove it.
            remove_link(&format!("cbr{}", tag % 100000));
        }
        Ok(out)
    })();
    cleanup(&names);
    cleanup(&ref_names);
    cleanup(&floor_names);
    if own_network {
        let _ = call(socket, "DELETE", &format!("/v1/networks/{network}"), None);
    }
    let out = result?;
    if let Some(path) = output {
        std::fs::write(path, serde_json::to_string_pretty(&out).unwrap_or_default())
            .map_err(|e| format!("writing {}: {e}", path.display()))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles() {
        let v: Vec<Duration> = (1..=100).map(Duration::from_millis).collect();
        let s = stats(v, Duration::from_secs(10));
        assert_eq!(s.count, 100);
        assert_eq!(s.p50_ms, 51.0);
        assert_eq!(s.p99_ms, 100.0);
        assert_eq!(s.max_ms, 100.0);
        assert!((s.per_sec - 10.0).abs() < 1e-9);
        assert_eq!(stats(vec![], Duration::ZERO).count, 0);
    }
}
