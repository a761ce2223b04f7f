//! Two machines with one host mark (e.g. one hostname): the second refuses to start, naming
//! both machines and what to set, and no sweep ever deletes a port another machine made or
//! binds, even under its own mark. Against the real OVN NB and the real Neutron.
//!
//! The second machine is simulated on this host: a network namespace of its own (its own kernel
//! view: no host link of the first is visible there) and an Open_vSwitch DB of its own (an
//! ovsdb-server with another `system-id` and a `br-int` row; no ovs-vswitchd, which the daemon
//! does not need to start). Its daemon reaches the NB through the socket file, and Keystone and
//! Neutron through socat bridges into the namespace.
mod common;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::nested::DeleteSwitch;
use common::*;
use serde_json::{json, Value};

/// This host's OVS system-id: the first machine's identity.
fn host_system_id() -> String {
    sh_ok(
        "ovs-vsctl",
        &["get", "Open_vSwitch", ".", "external_ids:system-id"],
    )
    .trim()
    .trim_matches('"')
    .to_string()
}

/// The second machine: its netns, its own OVS DB (system-id `system_id`), and socat bridges
/// that make 127.0.0.1:`ports` inside the netns this host's.
struct OtherMachine {
    ns: Netns,
    dir: PathBuf,
    server: Child,
    bridges: Vec<Child>,
    system_id: String,
}

impl OtherMachine {
    fn new(tag: &str, ports: &[u16]) -> OtherMachine {
        let pid = std::process::id();
        let dir = std::env::temp_dir().join(format!("courier-{tag}-{pid}"));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("machine dir");
        let db = dir.join("conf.db");
        sh_ok(
            "ovsdb-tool",
            &[
                "create",
                db.to_str().unwrap(),
                "/usr/share/openvswitch/vswitch.ovsschema",
            ],
        );
        let sock = dir.join("db.sock");
        let server = Command::new("ovsdb-server")
            .arg(&db)
            .arg(format!("--remote=punix:{}", sock.display()))
            .arg("--no-chdir")
            .arg(format!("--unixctl={}", dir.join("ctl").display()))
            .arg("-vconsole:off")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("ovsdb-server of the second machine");
        assert!(
            eventually(Duration::from_secs(5), || sock.exists()),
            "no {}",
            sock.display()
        );
        let system_id = format!("{tag}-system-{pid}");
        let remote = format!("--db=unix:{}", sock.display());
        sh_ok(
            "ovs-vsctl",
            &[
                &remote,
                "--no-wait",
                "init",
                "--",
                "set",
                "Open_vSwitch",
                ".",
                &format!("external_ids:system-id={system_id}"),
                "--",
                "add-br",
                "br-int",
            ],
        );
        let ns = Netns::new(tag);
        let mut m = OtherMachine {
            ns,
            dir,
            server,
            bridges: Vec::new(),
            system_id,
        };
        for p in ports {
            m.bridge(*p);
        }
        m
    }

    /// 127.0.0.1:`port` in the netns reaches 127.0.0.1:`port` of this host.
    fn bridge(&mut self, port: u16) {
        let sock = self.dir.join(format!("{port}.sock"));
        self.bridges.push(
            Command::new("socat")
                .arg(format!("UNIX-LISTEN:{},fork", sock.display()))
                .arg(format!("TCP:127.0.0.1:{port}"))
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("socat on the host"),
        );
        assert!(eventually(Duration::from_secs(5), || sock.exists()));
        self.bridges.push(
            Command::new("ip")
                .args(["netns", "exec", &self.ns.name, "socat"])
                .arg(format!("TCP-LISTEN:{port},bind=127.0.0.1,reuseaddr,fork"))
                .arg(format!("UNIX-CONNECT:{}", sock.display()))
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("socat in the netns"),
        );
        self.ns.exec(&["ip", "link", "set", "lo", "up"]);
        assert!(
            eventually(Duration::from_secs(5), || self
                .ns
                .exec(&["bash", "-c", &format!("exec 3<>/dev/tcp/127.0.0.1/{port}")])
                .status
                .success()),
            "127.0.0.1:{port} not reachable in {}",
            self.ns.name
        );
    }

    fn ovs_remote(&self) -> String {
        format!("unix:{}", self.dir.join("db.sock").display())
    }

    /// The environment of a daemon of this machine with host mark `mark` (`extra` last).
    fn env(&self, mark: &str, extra: &[(&str, String)]) -> Vec<(String, String)> {
        let mut env = vec![
            ("COURIER_HOST".to_string(), mark.to_string()),
            ("COURIER_OVS_REMOTE".to_string(), self.ovs_remote()),
        ];
        env.extend(extra.iter().map(|(k, v)| (k.to_string(), v.clone())));
        env
    }

    /// A daemon of this machine, serving (its start-up reconcile done).
    fn daemon(&self, name: &str, env: &[(String, String)]) -> TestDaemon {
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        TestDaemon::start_in_netns(name, &self.ns.name, &env)
    }

    /// Starts a daemon of this machine and waits until it exits (→ its status and log) or
    /// `give_up` holds or 20 s pass (→ killed, None and its log).
    fn run_daemon(
        &self,
        name: &str,
        env: &[(String, String)],
        mut give_up: impl FnMut() -> bool,
    ) -> (Option<std::process::ExitStatus>, String) {
        let dir = self.dir.join(name);
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let log = dir.join("daemon.log");
        let mut child = Command::new("ip")
            .args(["netns", "exec", &self.ns.name, BIN, "daemon"])
            .env("COURIER_SOCKET", dir.join("courier.sock"))
            .env("COURIER_STATE_DIR", dir.join("state"))
            .env("COURIER_RECONCILE_INTERVAL_SECS", "0")
            .env("COURIER_LOG", "debug")
            .env("COURIER_DOCKER", "0")
            .envs(env.iter().map(|(k, v)| (k, v)))
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("courier daemon of the second machine");
        let deadline = Instant::now() + Duration::from_secs(20);
        let status = loop {
            if let Ok(Some(st)) = child.try_wait() {
                break Some(st);
            }
            if give_up() || Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
            std::thread::sleep(Duration::from_millis(100));
        };
        (status, std::fs::read_to_string(&log).unwrap_or_default())
    }
}

impl Drop for OtherMachine {
    fn drop(&mut self) {
        for c in self
            .bridges
            .iter_mut()
            .chain(std::iter::once(&mut self.server))
        {
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// An LSP as the daemon of machine `system_id` with host mark `mark` makes them, for an
/// attachment no record knows (the `n`th); returns its name.
fn machine_port(net: &str, mark: &str, system_id: &str, n: u64) -> String {
    let name = format!("courier-{:012x}", std::process::id() as u64 * 7919 + n);
    let ext = |k: &str, v: &str| format!("external_ids:{k}={v}");
    nbctl(&[
        "lsp-add",
        net,
        &name,
        "--",
        "set",
        "Logical_Switch_Port",
        &name,
        &ext("courier-owner", "courier"),
        &ext("courier-host", mark),
        &ext("courier-attachment", &name[8..]),
        &ext("courier-network", net),
        &ext("courier-machine", system_id),
    ]);
    name
}

fn lsp_exists(name: &str) -> bool {
    !nbctl(&[
        "--bare",
        "--columns=name",
        "find",
        "Logical_Switch_Port",
        &format!("name={name}"),
    ])
    .trim()
    .is_empty()
}

/// Attaches container `container` (veth-ovs) to `network` through `d`; returns the attachment.
fn attach(d: &TestDaemon, container: &str, ns: &Netns, network: &str) -> Value {
    let (code, att) = d.api(
        "POST",
        "/v1/attachments",
        Some(
            json!({"container_id": container, "ifname": "eth0", "netns": ns.path(),
                    "network": network}),
        ),
    );
    assert_eq!(code, 200, "{att}\n{}", d.log());
    att
}

/// Detaches `.1` through daemon `.0` when dropped, pass or fail (best effort).
struct Detach<'a>(&'a TestDaemon, &'static str);

impl Drop for Detach<'_> {
    fn drop(&mut self) {
        let _ = self.0.try_api(
            "POST",
            "/v1/attachments/detach",
            Some(json!({"container_id": self.1, "ifname": "eth0"})),
        );
    }
}

fn detach(d: &TestDaemon, container: &str) {
    let (code, out) = d.api(
        "POST",
        "/v1/attachments/detach",
        Some(json!({"container_id": container, "ifname": "eth0"})),
    );
    assert_eq!(code, 200, "{out}");
}

/// The second machine's refusal names the mark, both machines, and what to set.
fn assert_refused(
    status: Option<std::process::ExitStatus>,
    log: &str,
    mark: &str,
    this: &str,
    other: &str,
) {
    let st = status.unwrap_or_else(|| {
        panic!("the second machine's daemon did not refuse to start; its log:\n{log}")
    });
    assert!(!st.success(), "it exited, but with success: {st}\n{log}");
    let err = log
        .lines()
        .rev()
        .find(|l| l.starts_with("error:"))
        .unwrap_or_else(|| panic!("no error line in its log:\n{log}"));
    eprintln!("the second machine's daemon: {err}");
    for want in [mark, this, other, "COURIER_HOST"] {
        assert!(
            err.contains(want),
            "the error does not name {want:?}: {err}"
        );
    }
}

/// The first machine (this host's OVS system-id) attaches a container under mark M; a second
/// machine (another system-id) whose daemon has mark M too refuses to start, naming both
/// system-ids and COURIER_HOST; the first machine's port, OVS port and container interface are
/// intact. (Before: the second daemon started and its start-up sweep deleted the first's LSP.)
#[test]
fn ovn_a_second_machine_with_the_same_mark_refuses_to_start() {
    let t = "ovn_a_second_machine_with_the_same_mark_refuses_to_start";
    if !env_ready(t) {
        return;
    }
    let pid = std::process::id();
    let mark = format!("hg-o1-{pid}");
    let net = unique("hg-o1");
    let a = TestDaemon::start_with("hg-o1a", &[("COURIER_HOST", &mark)]);
    a.create_network(&net, &subnet_for(81));
    let _switch = DeleteSwitch(net.clone());
    let c = Netns::new("hg-o1c");
    let att = attach(&a, "hg-o1c", &c, &net);
    let _detach = Detach(&a, "hg-o1c");
    let lsp = att["port"]["name"].as_str().unwrap().to_string();
    let veth = att["edge"]["host_ifname"].as_str().unwrap().to_string();
    assert!(lsp_exists(&lsp));

    let other = OtherMachine::new("hg-o1m", &[]);
    let (status, log) = other.run_daemon("b", &other.env(&mark, &[]), || !lsp_exists(&lsp));
    assert!(
        lsp_exists(&lsp),
        "the second machine's daemon deleted the first machine's port {lsp}; its log:\n{log}"
    );
    assert_refused(status, &log, &mark, &host_system_id(), &other.system_id);
    assert!(sh_ok("ovs-vsctl", &["list-ports", "br-int"])
        .lines()
        .any(|p| p == veth));
    assert!(c.has_link("eth0"));
    assert_eq!(a.store().len(), 1);

    detach(&a, "hg-o1c");
    assert!(!lsp_exists(&lsp));
}

/// Two machines started with one mark before either had a port (so neither could refuse):
/// each one's sweep spares the other's port under that mark — the second machine's reconcile
/// leaves the first's attached container's LSP, the first's leaves a port the second made (an
/// LSP as its daemon would make it, with its system-id) — while each still sweeps its own
/// leftovers. (Before: the second machine's reconcile deleted the first's LSP.)
#[test]
fn ovn_the_sweep_spares_another_machines_port_under_the_same_mark() {
    let t = "ovn_the_sweep_spares_another_machines_port_under_the_same_mark";
    if !env_ready(t) {
        return;
    }
    let pid = std::process::id();
    let mark = format!("hg-o2-{pid}");
    let net = unique("hg-o2");
    let a = TestDaemon::start_with("hg-o2a", &[("COURIER_HOST", &mark)]);
    let other = OtherMachine::new("hg-o2m", &[]);
    let b = other.daemon("hg-o2b", &other.env(&mark, &[]));
    wait_backends(&b);
    a.create_network(&net, &subnet_for(82));
    let _switch = DeleteSwitch(net.clone());
    let c = Netns::new("hg-o2c");
    let att = attach(&a, "hg-o2c", &c, &net);
    let _detach = Detach(&a, "hg-o2c");
    let lsp = att["port"]["name"].as_str().unwrap().to_string();

    // A port the second machine made (its marks, its system-id) that no record knows: its own
    // leftover, which its sweep takes.
    let (code, report) = b.api("POST", "/v1/reconcile", None);
    assert_eq!(code, 200, "{report}");
    assert!(
        lsp_exists(&lsp),
        "the second machine's sweep deleted the first machine's port {lsp}: {report}\n{}",
        b.log()
    );
    let leftover = machine_port(&net, &mark, &other.system_id, 1);
    let (code, report) = b.api("POST", "/v1/reconcile", None);
    assert_eq!(code, 200, "{report}");
    assert!(
        !lsp_exists(&leftover),
        "the second machine did not sweep its own leftover: {report}"
    );
    assert_eq!(
        report["leaked_ports"],
        json!([leftover]),
        "only its own leftover was swept: {report}"
    );
    assert!(lsp_exists(&lsp), "{report}");
    // And the first machine's sweep leaves a port of the second alone.
    let theirs = machine_port(&net, &mark, &other.system_id, 2);
    let (code, report) = a.api("POST", "/v1/reconcile", None);
    assert_eq!(code, 200, "{report}");
    assert!(
        lsp_exists(&theirs),
        "the first machine swept the second's port: {report}"
    );
    assert!(c.has_link("eth0"));

    detach(&a, "hg-o2c");
    assert!(!lsp_exists(&lsp));
}

/// The Neutron ports of `d`'s mark, as Neutron has them.
fn neutron_port(n: &NeutronEnv, id: &str) -> (u16, Value) {
    n.api("GET", &format!("/ports/{id}"))
}

/// A Neutron port as the daemon of the machine with `[neutron] host_id` `host` and host mark
/// `mark` makes them (name, description, device, tags, binding), for an attachment no record
/// knows (the `k`th); returns its id.
fn machine_neutron_port(n: &NeutronEnv, net_id: &str, mark: &str, host: &str, k: u64) -> String {
    let attachment = format!("{:012x}", std::process::id() as u64 * 7919 + 10 + k);
    let (code, p) = n.call(
        "POST",
        "/ports",
        Some(json!({"port": {
            "network_id": net_id,
            "name": format!("courier-{attachment}"),
            "description": format!("courier:host:{mark}"),
            "device_owner": "compute:courier",
            "device_id": attachment,
            "binding:host_id": host,
        }})),
    );
    assert_eq!(code, 201, "{p}");
    let id = p["port"]["id"].as_str().unwrap().to_string();
    let tags = json!({"tags": ["courier:owner", format!("courier:host:{mark}"),
        format!("courier:attachment:{attachment}")]});
    let (code, out) = n.call("PUT", &format!("/ports/{id}/tags"), Some(tags));
    assert_eq!(code, 200, "{out}");
    id
}

fn neutron_net(d: &TestDaemon, name: &str, subnet: &str) -> String {
    let out = d.cli(&[
        "network",
        "create",
        name,
        "--backend",
        "neutron",
        "--subnet",
        subnet,
    ]);
    assert!(
        out.status.success(),
        "network create {name}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    name.to_string()
}

/// Deletes Courier network `.1` through daemon `.0` when dropped (its ports first), pass or fail.
struct DeleteNeutronNet<'a>(&'a TestDaemon, String);

impl Drop for DeleteNeutronNet<'_> {
    fn drop(&mut self) {
        let _ = self.0.cli(&["network", "delete", &self.1]);
    }
}

/// The Neutron form: the first machine (binding:host_id = this host's chassis hostname) attaches
/// a container under mark M; a second machine whose daemon has mark M and `[neutron] host_id`
/// of its own refuses to start, naming both host ids and COURIER_HOST; the first's port is
/// intact. (Before: the second daemon started and its start-up sweep deleted the first's port.)
#[test]
fn neutron_a_second_machine_with_the_same_mark_refuses_to_start() {
    let Some(n) = NeutronEnv::get("neutron_a_second_machine_with_the_same_mark_refuses_to_start")
    else {
        return;
    };
    let pid = std::process::id();
    let mark = format!("hg-n1-{pid}");
    let a = neutron_daemon("hg-n1a", &n, &[("COURIER_HOST", &mark)]);
    let net = neutron_net(&a, &unique("hg-n1"), "10.213.81.0/24");
    let _net = DeleteNeutronNet(&a, net.clone());
    let c = Netns::new("hg-n1c");
    let att = attach(&a, "hg-n1c", &c, &net);
    let _detach = Detach(&a, "hg-n1c");
    let port = att["port"]["id"].as_str().unwrap().to_string();
    assert_eq!(neutron_port(&n, &port).0, 200);

    let other = OtherMachine::new("hg-n1m", &[5000, 9696]);
    let other_host = format!("hg-n1-other-{pid}");
    let mut extra: Vec<(&str, String)> = n.daemon_env();
    extra.push(("COURIER_NEUTRON_HOST_ID", other_host.clone()));
    let (status, log) = other.run_daemon("b", &other.env(&mark, &extra), || {
        neutron_port(&n, &port).0 == 404
    });
    let (code, p) = neutron_port(&n, &port);
    assert_eq!(
        code, 200,
        "the second machine's daemon deleted the first machine's port {port}; its log:\n{log}"
    );
    assert_eq!(p["port"]["binding:host_id"], n.host_id.as_str());
    assert_refused(status, &log, &mark, &n.host_id, &other_host);
    assert!(c.has_link("eth0"));

    detach(&a, "hg-n1c");
    assert_eq!(neutron_port(&n, &port).0, 404);
}

/// The Neutron form of the sweep: two machines started with one mark before either had a port;
/// the second's reconcile leaves the first's port (bound to the first's host id) and sweeps its
/// own leftover (a port as its daemon makes them, bound to its own host id); the first's
/// reconcile leaves the second's. (Before: the second machine's reconcile deleted the first's.)
#[test]
fn neutron_the_sweep_spares_another_machines_port_under_the_same_mark() {
    let Some(n) =
        NeutronEnv::get("neutron_the_sweep_spares_another_machines_port_under_the_same_mark")
    else {
        return;
    };
    let pid = std::process::id();
    let mark = format!("hg-n2-{pid}");
    let a = neutron_daemon("hg-n2a", &n, &[("COURIER_HOST", &mark)]);
    let other = OtherMachine::new("hg-n2m", &[5000, 9696]);
    let other_host = format!("hg-n2-other-{pid}");
    let mut extra: Vec<(&str, String)> = n.daemon_env();
    extra.push(("COURIER_NEUTRON_HOST_ID", other_host.clone()));
    let b = other.daemon("hg-n2b", &other.env(&mark, &extra));
    wait_backends(&b);
    let net = neutron_net(&a, &unique("hg-n2"), "10.213.82.0/24");
    let _net = DeleteNeutronNet(&a, net.clone());
    let c = Netns::new("hg-n2c");
    let att = attach(&a, "hg-n2c", &c, &net);
    let _detach = Detach(&a, "hg-n2c");
    let port = att["port"]["id"].as_str().unwrap().to_string();
    let net_id = neutron_port(&n, &port).1["port"]["network_id"]
        .as_str()
        .unwrap()
        .to_string();

    // The second machine's sweep leaves the first's port, and takes its own leftover.
    let (code, report) = b.api("POST", "/v1/reconcile", None);
    assert_eq!(code, 200, "{report}");
    assert_eq!(
        neutron_port(&n, &port).0,
        200,
        "the second machine's sweep deleted the first machine's port {port}: {report}"
    );
    let leftover = machine_neutron_port(&n, &net_id, &mark, &other_host, 1);
    let (code, report) = b.api("POST", "/v1/reconcile", None);
    assert_eq!(code, 200, "{report}");
    assert_eq!(
        neutron_port(&n, &leftover).0,
        404,
        "the second machine did not sweep its own leftover: {report}"
    );
    assert_eq!(neutron_port(&n, &port).0, 200, "{report}");
    // And the first machine's sweep leaves a port of the second alone.
    let theirs = machine_neutron_port(&n, &net_id, &mark, &other_host, 2);
    let (code, report) = a.api("POST", "/v1/reconcile", None);
    assert_eq!(code, 200, "{report}");
    let kept = neutron_port(&n, &theirs).0;
    let _ = n.api("DELETE", &format!("/ports/{theirs}"));
    assert_eq!(
        kept, 200,
        "the first machine swept the second's port: {report}"
    );
    assert!(c.has_link("eth0"));

    detach(&a, "hg-n2c");
    assert_eq!(neutron_port(&n, &port).0, 404);
}
