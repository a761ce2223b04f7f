//! Harness for integration tests: they run the real `courier` binary against the real OVS/OVN
//! started by scripts/ovn.sh, in real network namespaces. Needs root.
//!
//! When the environment is missing, a test prints `SKIP <test>: <reason>`, records it in
//! $COURIER_SKIP_LOG (scripts/test.sh counts them) and returns — unless COURIER_REQUIRE_ENV=1
//! (CI), where it fails instead. Integration tests share one OVN and one host: run them with
//! --test-threads=1 (scripts/test.sh does).
#![allow(dead_code)]

pub mod docker;
pub mod nested;
pub mod proxy;

use std::collections::BTreeSet;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

pub const BIN: &str = env!("CARGO_BIN_EXE_courier");

pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Returns true when the test can run; otherwise reports the skip (or panics under CI).
pub fn env_ready(test: &str) -> bool {
    static READY: OnceLock<Result<(), String>> = OnceLock::new();
    let r = READY.get_or_init(|| {
        courier_testenv::require_root("network namespaces, OVS ports")?;
        let out = Command::new(repo().join("scripts/ovn.sh"))
            .arg("start")
            .output()
            .map_err(|e| format!("cannot run scripts/ovn.sh: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "scripts/ovn.sh start failed: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        Ok(())
    });
    match r {
        Ok(()) => true,
        Err(reason) => {
            skip(test, reason);
            false
        }
    }
}

pub use courier_testenv::skip;

/// The crash points of an attach, in order (src/hooks.rs; `after-ready` comes after these).
pub const ATTACH_STEPS: &[&str] = &[
    "after-intent",
    "after-port",
    "after-veth",
    "after-ovs-port",
    "after-plug",
    "after-up",
];
/// The crash points of a detach, in order.
pub const DETACH_STEPS: &[&str] = &[
    "detach-after-mark",
    "detach-after-unplug",
    "detach-after-port",
];

/// [`env_ready`], and the binary has the crash/pause points (cargo feature `test-hooks`, which
/// scripts/test.sh enables); otherwise the test is reported skipped.
pub fn hooks_ready(test: &str) -> bool {
    if !cfg!(feature = "test-hooks") {
        skip(
            test,
            "courier built without the test-hooks feature (run scripts/test.sh, or cargo test --features courier/test-hooks)",
        );
        return false;
    }
    env_ready(test)
}

pub fn sh(cmd: &str, args: &[&str]) -> Output {
    Command::new(cmd)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("running {cmd}: {e}"))
}

pub fn sh_ok(cmd: &str, args: &[&str]) -> String {
    let out = sh(cmd, args);
    assert!(
        out.status.success(),
        "{cmd} {args:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

pub fn nbctl(args: &[&str]) -> String {
    sh_ok("ovn-nbctl", args)
}

/// ovn-northd paused (`ovn-appctl -t ovn-northd pause`) until dropped: NB changes wait
/// unprocessed, e.g. a child port's `tag_request` not yet copied into `tag`. Host-wide: every
/// NB client on this host sees northd's work stop meanwhile, so hold it only around the steps
/// that need it.
pub struct NorthdPaused(());

impl NorthdPaused {
    pub fn new() -> NorthdPaused {
        sh_ok("ovn-appctl", &["-t", "ovn-northd", "pause"]);
        NorthdPaused(())
    }
}

impl Drop for NorthdPaused {
    fn drop(&mut self) {
        let _ = sh("ovn-appctl", &["-t", "ovn-northd", "resume"]);
    }
}

/// A daemon with its own socket, store and host mark, killed on drop.
pub struct TestDaemon {
    pub name: String,
    pub dir: PathBuf,
    pub socket: PathBuf,
    child: Option<Child>,
    /// Run inside this named netns (`ip netns exec`), e.g. the "VM" of nested tests.
    netns: Option<String>,
}

impl TestDaemon {
    pub fn start(name: &str) -> TestDaemon {
        Self::start_with(name, &[])
    }

    /// Starts a daemon and returns at once, ready or not (see `wait_ready`).
    pub fn launch(name: &str, env: &[(&str, &str)]) -> TestDaemon {
        let dir = std::env::temp_dir().join(format!("courier-it-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("test dir");
        let mut d = TestDaemon {
            name: name.to_string(),
            socket: dir.join("courier.sock"),
            dir,
            child: None,
            netns: None,
        };
        d.spawn_only(env);
        d
    }

    /// A daemon running inside named netns `netns` (the "VM" of the nested tests: the API
    /// socket is a file, so the host reaches it as usual).
    pub fn start_in_netns(name: &str, netns: &str, env: &[(&str, &str)]) -> TestDaemon {
        let dir = std::env::temp_dir().join(format!("courier-it-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("test dir");
        let mut d = TestDaemon {
            name: name.to_string(),
            socket: dir.join("courier.sock"),
            dir,
            child: None,
            netns: Some(netns.to_string()),
        };
        d.spawn(env);
        d
    }

    pub fn start_with(name: &str, env: &[(&str, &str)]) -> TestDaemon {
        let mut d = Self::launch(name, env);
        d.wait_ready(Duration::from_secs(20));
        d
    }

    fn spawn(&mut self, env: &[(&str, &str)]) {
        self.spawn_only(env);
        self.wait_ready(Duration::from_secs(20));
    }

    fn spawn_only(&mut self, env: &[(&str, &str)]) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("daemon.log"))
            .expect("log file");
        let mut cmd = match &self.netns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns, BIN]);
                c
            }
            None => Command::new(BIN),
        };
        cmd.arg("daemon")
            .env("COURIER_SOCKET", &self.socket)
            .env("COURIER_STATE_DIR", self.dir.join("state"))
            .env("COURIER_HOST", format!("it-{}", self.name))
            .env("COURIER_RECONCILE_INTERVAL_SECS", "0")
            .env("COURIER_LOG", "debug")
            // Tests that want the Docker door give it a socket of their own.
            .env("COURIER_DOCKER", "0")
            .env_remove("COURIER_CRASH_AT")
            .stdout(Stdio::null())
            .stderr(log.try_clone().expect("log"));
        for (k, v) in env {
            cmd.env(k, v);
        }
        let child = cmd.spawn().expect("spawning courier daemon");
        self.child = Some(child);
    }

    /// Waits until the API answers; panics (with the log) if the daemon exits or times out.
    pub fn wait_ready(&mut self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(c) = self.child.as_mut() {
                if let Ok(Some(st)) = c.try_wait() {
                    panic!("daemon exited early ({st}); log:\n{}", self.log());
                }
            }
            // Serving, and the start-up reconcile (which runs beside the API) has finished, so
            // a test sees the repaired state.
            if let Ok((200, st)) = self.try_api("GET", "/v1/status", None) {
                if st["reconcile_passes"].as_u64().unwrap_or(0) >= 1 {
                    return;
                }
            }
            assert!(
                Instant::now() < deadline,
                "daemon not ready in 20 s; log:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("daemon.log")).unwrap_or_default()
    }

    /// Waits for the daemon process to exit (e.g. after a crash point) and returns its status.
    pub fn wait_exit(&mut self, timeout: Duration) -> std::process::ExitStatus {
        let deadline = Instant::now() + timeout;
        let c = self.child.as_mut().expect("daemon running");
        loop {
            if let Ok(Some(st)) = c.try_wait() {
                self.child = None;
                return st;
            }
            assert!(Instant::now() < deadline, "daemon did not exit");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The daemon's process id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("daemon running").id()
    }

    /// Sends SIGTERM and waits for the daemon to exit; returns how long that took.
    pub fn terminate(&mut self, timeout: Duration) -> Duration {
        let t = Instant::now();
        let _ = Command::new("kill").arg(self.pid().to_string()).status();
        self.wait_exit(timeout);
        t.elapsed()
    }

    /// The daemon's state directory (its redb store is `state/courier.redb`).
    pub fn state_dir(&self) -> PathBuf {
        self.dir.join("state")
    }

    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn restart(&mut self, env: &[(&str, &str)]) {
        self.kill9();
        self.spawn(env);
    }

    pub fn try_api(
        &self,
        method: &str,
        path: &str,
        body: Option<Value>,
    ) -> Result<(u16, Value), String> {
        let mut args = vec![
            "-s".to_string(),
            "--unix-socket".into(),
            self.socket.display().to_string(),
            "-X".into(),
            method.into(),
            "-w".into(),
            "\n%{http_code}".into(),
        ];
        if let Some(b) = &body {
            args.push("-H".into());
            args.push("Content-Type: application/json".into());
            args.push("-d".into());
            args.push(b.to_string());
        }
        args.push(format!("http://courier{path}"));
        let out = Command::new("curl")
            .args(&args)
            .output()
            .map_err(|e| e.to_string())?;
        if !out.status.success() {
            return Err(format!("curl exit {}", out.status));
        }
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let (body, code) = text.rsplit_once('\n').ok_or("no status")?;
        let code: u16 = code.trim().parse().map_err(|_| "bad status")?;
        let v = if body.trim().is_empty() {
            Value::Null
        } else {
            serde_json::from_str(body).unwrap_or(Value::String(body.into()))
        };
        Ok((code, v))
    }

    pub fn api(&self, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
        self.try_api(method, path, body)
            .expect("daemon API reachable")
    }

    /// Runs the CLI against this daemon.
    pub fn cli(&self, args: &[&str]) -> Output {
        Command::new(BIN)
            .arg("--socket")
            .arg(&self.socket)
            .args(args)
            .output()
            .expect("running courier CLI")
    }

    /// `network create NAME --subnet SUBNET`. The daemon's backends connect in the background,
    /// so a "try again later" right after start is retried (for up to 10 s).
    pub fn create_network(&self, name: &str, subnet: &str) {
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut out = self.cli(&["network", "create", name, "--subnet", subnet]);
        while !out.status.success()
            && String::from_utf8_lossy(&out.stderr).contains("try again later")
            && Instant::now() < deadline
        {
            std::thread::sleep(Duration::from_millis(100));
            out = self.cli(&["network", "create", name, "--subnet", subnet]);
        }
        assert!(
            out.status.success(),
            "network create: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    pub fn netconf(&self, network: &str, version: &str) -> String {
        json!({"cniVersion": version, "name": network, "type": "courier", "socket": self.socket})
            .to_string()
    }

    /// Runs the binary as a CNI plugin; returns (exit code, parsed stdout or Null).
    pub fn cni(
        &self,
        command: &str,
        container: &str,
        netns: &str,
        ifname: &str,
        stdin: &str,
    ) -> (i32, Value) {
        cni_exec(command, container, netns, ifname, stdin, &[])
    }

    pub fn store(&self) -> Vec<Value> {
        let (code, v) = self.api("GET", "/v1/attachments", None);
        assert_eq!(code, 200);
        v.as_array().cloned().unwrap_or_default()
    }
}

pub fn cni_exec(
    command: &str,
    container: &str,
    netns: &str,
    ifname: &str,
    stdin: &str,
    extra: &[(&str, &str)],
) -> (i32, Value) {
    let mut cmd = Command::new(BIN);
    cmd.env("CNI_COMMAND", command)
        .env("CNI_CONTAINERID", container)
        .env("CNI_IFNAME", ifname)
        .env("CNI_PATH", "/usr/lib/cni")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if !netns.is_empty() {
        cmd.env("CNI_NETNS", netns);
    } else {
        cmd.env_remove("CNI_NETNS");
    }
    for (k, v) in extra {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().expect("exec courier as CNI plugin");
    // A plugin may exit without reading stdin (VERSION does): a closed pipe is fine.
    let _ = child
        .stdin
        .take()
        .expect("stdin")
        .write_all(stdin.as_bytes());
    let out = child.wait_with_output().expect("plugin output");
    let text = String::from_utf8_lossy(&out.stdout);
    let v = if text.trim().is_empty() {
        Value::Null
    } else {
        serde_json::from_str(&text).unwrap_or_else(|_| panic!("plugin stdout is not JSON: {text}"))
    };
    (out.status.code().unwrap_or(-1), v)
}

impl Drop for TestDaemon {
    fn drop(&mut self) {
        self.kill9();
        // Keep the log of a failed test for reading; clean up after a passing one.
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.dir);
        } else {
            eprintln!("daemon log kept in {}", self.dir.display());
        }
    }
}

/// A named netns, deleted on drop.
pub struct Netns {
    pub name: String,
}

impl Netns {
    pub fn new(prefix: &str) -> Netns {
        let name = format!("{prefix}-{}", std::process::id());
        let _ = sh("ip", &["netns", "del", &name]);
        sh_ok("ip", &["netns", "add", &name]);
        Netns { name }
    }

    pub fn path(&self) -> String {
        format!("/var/run/netns/{}", self.name)
    }

    pub fn exec(&self, args: &[&str]) -> Output {
        let mut a = vec!["netns", "exec", &self.name];
        a.extend_from_slice(args);
        sh("ip", &a)
    }

    pub fn ping(&self, ip: &str) -> bool {
        self.exec(&["ping", "-c", "2", "-i", "0.2", "-W", "2", ip])
            .status
            .success()
    }

    pub fn has_link(&self, ifname: &str) -> bool {
        self.exec(&["ip", "link", "show", ifname]).status.success()
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = sh("ip", &["netns", "del", &self.name]);
    }
}

/// Sends `bytes` random bytes over TCP from `client` to `server`:`port`; returns what the
/// server received (length, sha256 hex) and what was sent.
pub fn tcp_transfer(
    server: &Netns,
    client: &Netns,
    server_ip: &str,
    port: u16,
    bytes: usize,
) -> ((usize, String), (usize, String)) {
    let srv_code = format!(
        "import socket,hashlib\ns=socket.socket();s.setsockopt(socket.SOL_SOCKET,socket.SO_REUSEADDR,1);s.bind(('0.0.0.0',{port}));s.listen(1);s.settimeout(20)\nc,_=s.accept();c.settimeout(20);h=hashlib.sha256();n=0\nwhile True:\n d=c.recv(65536)\n if not d: break\n h.update(d);n+=len(d)\nprint(n,h.hexdigest())"
    );
    let srv = Command::new("ip")
        .args(["netns", "exec", &server.name, "python3", "-c", &srv_code])
        .stdout(Stdio::piped())
        .spawn()
        .expect("server");
    std::thread::sleep(Duration::from_millis(400));
    let cli_code = format!(
        "import socket,hashlib,os,time\nd=os.urandom({bytes})\nfor i in range(50):\n try:\n  s=socket.create_connection(('{server_ip}',{port}),timeout=20);break\n except OSError: time.sleep(0.1)\ns.sendall(d);s.close();print(len(d),hashlib.sha256(d).hexdigest())"
    );
    let sent = client.exec(&["python3", "-c", &cli_code]);
    let recv = srv.wait_with_output().expect("server output");
    let parse = |o: &[u8]| {
        let t = String::from_utf8_lossy(o);
        let mut w = t.split_whitespace();
        (
            w.next().and_then(|n| n.parse().ok()).unwrap_or(0),
            w.next().unwrap_or("").to_string(),
        )
    };
    (parse(&recv.stdout), parse(&sent.stdout))
}

/// Everything Courier could leave behind, as seen by the real components.
#[derive(Debug, PartialEq, Eq, Clone)]
pub struct World {
    pub switches: BTreeSet<String>,
    pub lsps: BTreeSet<String>,
    pub ovs_ports: BTreeSet<String>,
    pub host_links: BTreeSet<String>,
    pub store: BTreeSet<String>,
}

pub fn world(d: &TestDaemon) -> World {
    let lines = |s: String| {
        s.lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .map(String::from)
            .collect::<BTreeSet<_>>()
    };
    let links = sh_ok("ip", &["-o", "link", "show"]);
    World {
        switches: lines(nbctl(&[
            "--bare",
            "--columns=name",
            "list",
            "Logical_Switch",
        ])),
        lsps: lines(nbctl(&[
            "--bare",
            "--columns=name",
            "list",
            "Logical_Switch_Port",
        ])),
        ovs_ports: lines(sh_ok("ovs-vsctl", &["list-ports", "br-int"])),
        host_links: links
            .lines()
            .filter_map(|l| l.split(": ").nth(1))
            .map(|n| n.split('@').next().unwrap_or(n).to_string())
            .filter(|n| n.starts_with("cv") || n.starts_with("cp"))
            .collect(),
        store: d
            .store()
            .iter()
            .map(|a| a["id"].as_str().unwrap_or("").to_string())
            .collect(),
    }
}

/// Names a test network uniquely per process.
pub fn unique(name: &str) -> String {
    format!("{name}-{}", std::process::id())
}

pub fn subnet_for(i: u8) -> String {
    format!("10.{}.{}.0/24", 200 + (std::process::id() % 50) as u8, i)
}

pub fn assert_path_absent(p: &Path) {
    assert!(!p.exists(), "{} should not exist", p.display());
}

/// What one daemon (by its host mark) owns right now, seen through the real components: LSPs
/// and OVS ports carrying its `courier-host`, host links with its alias, its store records.
/// Unlike [`world`], unaffected by anything else running on this machine.
#[derive(Debug, PartialEq, Eq, Default)]
pub struct Owned {
    pub lsps: BTreeSet<String>,
    pub ovs_ports: BTreeSet<String>,
    pub links: BTreeSet<String>,
    pub records: BTreeSet<String>,
}

impl Owned {
    pub fn is_empty(&self) -> bool {
        *self == Owned::default()
    }
}

pub fn host_mark(d: &TestDaemon) -> String {
    format!("it-{}", d.name)
}

pub fn owned(d: &TestDaemon) -> Owned {
    let mark = host_mark(d);
    let names = |s: String| {
        s.split_whitespace()
            .map(String::from)
            .collect::<BTreeSet<_>>()
    };
    let links: Value =
        serde_json::from_str(&sh_ok("ip", &["-j", "link", "show"])).unwrap_or(Value::Null);
    let alias_prefix = format!("courier:{mark}:");
    Owned {
        lsps: names(nbctl(&[
            "--bare",
            "--columns=name",
            "find",
            "Logical_Switch_Port",
            &format!("external_ids:courier-host={mark}"),
        ])),
        ovs_ports: names(sh_ok(
            "ovs-vsctl",
            &[
                "--bare",
                "--columns=name",
                "find",
                "Port",
                &format!("external_ids:courier-host={mark}"),
            ],
        )),
        links: links
            .as_array()
            .into_iter()
            .flatten()
            .filter(|l| {
                l["ifalias"]
                    .as_str()
                    .is_some_and(|a| a.starts_with(&alias_prefix))
            })
            .filter_map(|l| l["ifname"].as_str().map(String::from))
            .collect(),
        records: d
            .try_api("GET", "/v1/attachments", None)
            .ok()
            .and_then(|(_, v)| v.as_array().cloned())
            .unwrap_or_default()
            .iter()
            .filter_map(|a| a["id"].as_str().map(String::from))
            .collect(),
    }
}

/// Polls `cond` every 100 ms until it holds or `timeout` passes; returns whether it held.
pub fn eventually(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// How many times the daemon's log says a pause point was reached.
pub fn pauses(d: &TestDaemon) -> usize {
    d.log().matches("COURIER_PAUSE_AT reached").count()
}

/// Neutron + Keystone from scripts/neutron.sh (started here if needed), and a way to look at
/// them as an admin, for asserting what Courier did. `None` (with the skip reported) when they
/// cannot run.
pub struct NeutronEnv {
    pub clouds: String,
    pub host_id: String,
    token: String,
}

pub const NEUTRON_URL: &str = "http://127.0.0.1:9696/v2.0";
pub const ADMIN_PASSWORD: &str = "courier-admin-secret";

impl NeutronEnv {
    pub fn get(test: &str) -> Option<NeutronEnv> {
        if !env_ready(test) {
            return None;
        }
        static READY: OnceLock<Result<(), String>> = OnceLock::new();
        let r = READY.get_or_init(|| {
            let out = Command::new(repo().join("scripts/neutron.sh"))
                .arg("start")
                .output()
                .map_err(|e| format!("cannot run scripts/neutron.sh: {e}"))?;
            if out.status.success() {
                Ok(())
            } else {
                Err(format!(
                    "scripts/neutron.sh start failed: {}{}",
                    String::from_utf8_lossy(&out.stdout),
                    String::from_utf8_lossy(&out.stderr)
                ))
            }
        });
        if let Err(reason) = r {
            skip(test, reason);
            return None;
        }
        let host_id = sh_ok(
            "ovs-vsctl",
            &["get", "open_vswitch", ".", "external_ids:hostname"],
        )
        .trim()
        .trim_matches('"')
        .to_string();
        let body = json!({"auth": {"identity": {"methods": ["password"], "password": {"user": {
            "name": "admin", "domain": {"name": "Default"}, "password": ADMIN_PASSWORD}}},
            "scope": {"project": {"name": "admin", "domain": {"name": "Default"}}}}});
        let out = sh_ok(
            "curl",
            &[
                "-si",
                "-H",
                "Content-Type: application/json",
                "-d",
                &body.to_string(),
                "http://127.0.0.1:5000/v3/auth/tokens",
            ],
        );
        let token = out
            .lines()
            .find_map(|l| {
                l.to_ascii_lowercase()
                    .starts_with("x-subject-token:")
                    .then(|| l[16..].trim().to_string())
            })
            .expect("a Keystone token");
        Some(NeutronEnv {
            clouds: "/etc/courier-test/clouds.yaml".into(),
            host_id,
            token,
        })
    }

    /// The admin token this test uses to look at Neutron.
    pub fn token(&self) -> &str {
        &self.token
    }

    /// The daemon environment that enables the Neutron backend with the admin cloud.
    pub fn daemon_env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("OS_CLIENT_CONFIG_FILE", self.clouds.clone()),
            ("COURIER_NEUTRON_CLOUD", "courier-admin".into()),
            ("COURIER_NEUTRON_HOST_ID", self.host_id.clone()),
        ]
    }

    /// A bodiless call on Neutron: (status, body).
    pub fn api(&self, method: &str, path: &str) -> (u16, Value) {
        self.call(method, path, None)
    }

    /// A call with a JSON body on Neutron: (status, body).
    pub fn call(&self, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
        let token = format!("X-Auth-Token: {}", self.token);
        let url = format!("{NEUTRON_URL}{path}");
        let body = body.map(|b| b.to_string());
        let mut args = vec!["-s", "-X", method, "-H", &token, "-w", "\n%{http_code}"];
        if let Some(b) = &body {
            args.extend(["-H", "Content-Type: application/json", "-d", b]);
        }
        args.push(&url);
        let out = sh_ok("curl", &args);
        let (body, code) = out.rsplit_once('\n').unwrap_or(("", "0"));
        (
            code.trim().parse().unwrap_or(0),
            serde_json::from_str(body).unwrap_or(Value::Null),
        )
    }

    /// Neutron ports this daemon made: carrying its host tag, or the mark its create sets
    /// (`description` = `courier:host:<mark>`), which a port whose tags never came still has.
    pub fn owned_ports(&self, d: &TestDaemon) -> Vec<Value> {
        let mark = format!("courier:host:{}", host_mark(d));
        let mut ports = Vec::new();
        for q in [format!("tags={mark}"), format!("description={mark}")] {
            let (_, v) = self.api("GET", &format!("/ports?{q}"));
            for p in v["ports"].as_array().cloned().unwrap_or_default() {
                if !ports.iter().any(|o: &Value| o["id"] == p["id"]) {
                    ports.push(p);
                }
            }
        }
        ports
    }

    /// A clouds.yaml (with secure.yaml) like the test one, whose Neutron endpoint is `proxy`
    /// (a `proxy::Proxy` in front of the real Neutron).
    pub fn proxied_clouds(&self, proxy: &proxy::Proxy, dir: &Path) -> String {
        let clouds = dir.join("clouds.yaml");
        let text = std::fs::read_to_string(&self.clouds).unwrap().replace(
            "  courier-admin:\n",
            &format!(
                "  courier-admin:\n    network_endpoint_override: http://{}\n",
                proxy.remote.trim_start_matches("tcp:")
            ),
        );
        std::fs::write(&clouds, text).unwrap();
        std::fs::copy("/etc/courier-test/secure.yaml", dir.join("secure.yaml")).unwrap();
        clouds.display().to_string()
    }

    /// Every port on Neutron network `net_id` but Neutron's own (`network:*`: the metadata
    /// port, DHCP, routers), whoever made it and whatever marks it has or lacks.
    pub fn ports_on(&self, net_id: &str) -> Vec<Value> {
        let (_, v) = self.api("GET", &format!("/ports?network_id={net_id}"));
        v["ports"]
            .as_array()
            .cloned()
            .unwrap_or_default()
            .into_iter()
            .filter(|p| {
                !p["device_owner"]
                    .as_str()
                    .unwrap_or("")
                    .starts_with("network:")
            })
            .collect()
    }

    /// Neutron networks named `name` (Courier names the networks it creates after the Courier
    /// network), whatever tags they have or lack.
    pub fn networks_named(&self, name: &str) -> Vec<Value> {
        let (_, v) = self.api("GET", &format!("/networks?name={name}"));
        v["networks"].as_array().cloned().unwrap_or_default()
    }
}

/// Starts a daemon with the Neutron backend (and OVN direct) enabled; `extra` comes last, so it
/// overrides (e.g. `COURIER_NEUTRON_CLOUD=courier-demo` for the demo member's credentials).
pub fn neutron_daemon(name: &str, n: &NeutronEnv, extra: &[(&str, &str)]) -> TestDaemon {
    let env = n.daemon_env();
    let mut all: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    all.extend_from_slice(extra);
    let d = TestDaemon::start_with(name, &all);
    wait_backends(&d);
    d
}

/// Waits until every backend of the daemon is connected (they connect in the background).
pub fn wait_backends(d: &TestDaemon) {
    let connected = eventually(Duration::from_secs(20), || {
        d.try_api("GET", "/v1/status", None).is_ok_and(|(_, st)| {
            st["backends"]
                .as_array()
                .is_some_and(|b| b.iter().all(|h| h["ok"] == true))
        })
    });
    assert!(connected, "backends did not connect:\n{}", d.log());
}

/// A Courier network on Neutron (found by its `courier:network:NAME` tag): on drop, if it is
/// still there (the test failed before it deleted it), its ports but Neutron's own
/// (`network:*`) and then the network are deleted, through the noauth API (which sees every
/// project's). So a failed assertion leaks nothing.
#[must_use = "the network is removed when this guard is dropped"]
pub struct NeutronNetGuard(pub String);

impl Drop for NeutronNetGuard {
    fn drop(&mut self) {
        let noauth = |method: &str, path: &str| -> Value {
            let out = sh(
                "curl",
                &[
                    "-s",
                    "-X",
                    method,
                    &format!("http://127.0.0.1:9697/v2.0{path}"),
                ],
            );
            serde_json::from_slice(&out.stdout).unwrap_or(Value::Null)
        };
        let nets = noauth("GET", &format!("/networks?tags=courier:network:{}", self.0));
        for net in nets["networks"].as_array().cloned().unwrap_or_default() {
            let Some(id) = net["id"].as_str() else {
                continue;
            };
            let ports = noauth("GET", &format!("/ports?network_id={id}"));
            for p in ports["ports"].as_array().cloned().unwrap_or_default() {
                if !p["device_owner"]
                    .as_str()
                    .unwrap_or("")
                    .starts_with("network:")
                {
                    noauth(
                        "DELETE",
                        &format!("/ports/{}", p["id"].as_str().unwrap_or("")),
                    );
                }
            }
            noauth("DELETE", &format!("/networks/{id}"));
        }
    }
}
