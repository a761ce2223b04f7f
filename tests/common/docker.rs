//! Docker Engine for the libnetwork front door's tests: the repo's own dockerd
//! (scripts/docker.sh, socket unix:///run/courier-docker/docker.sock, image courier-busybox),
//! and a Courier daemon per test serving the plugin protocol on a socket of its own
//! (`/run/docker/plugins/<plugin>.sock`, so the driver is `<plugin>`). Containers and networks a
//! test makes are removed when its `DockerScope` drops, pass or fail.
use std::path::PathBuf;
use std::process::{Command, Output};
use std::sync::OnceLock;
use std::time::Duration;

use serde_json::Value;

use super::*;

pub const DOCKER_HOST: &str = "unix:///run/courier-docker/docker.sock";
pub const IMAGE: &str = "courier-busybox:latest";

/// dockerd from scripts/docker.sh (started here if needed); false (skip reported) if it cannot run.
pub fn docker_ready(test: &str) -> bool {
    if !env_ready(test) {
        return false;
    }
    static READY: OnceLock<Result<(), String>> = OnceLock::new();
    let r = READY.get_or_init(|| {
        let out = Command::new(repo().join("scripts/docker.sh"))
            .arg("start")
            .output()
            .map_err(|e| format!("cannot run scripts/docker.sh: {e}"))?;
        if out.status.success() {
            Ok(())
        } else {
            Err(format!(
                "scripts/docker.sh start failed: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ))
        }
    });
    match r {
        Ok(()) => true,
        Err(reason) => {
            skip(test, reason);
            false
        }
    }
}

pub fn docker(args: &[&str]) -> Output {
    Command::new("/usr/bin/docker")
        .env("DOCKER_HOST", DOCKER_HOST)
        .args(args)
        .output()
        .expect("running docker")
}

/// Runs docker; panics with its stderr unless it succeeds; returns trimmed stdout.
pub fn docker_ok(args: &[&str]) -> String {
    let out = docker(args);
    assert!(
        out.status.success(),
        "docker {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// Runs docker expecting failure; returns stderr.
pub fn docker_err(args: &[&str]) -> String {
    let out = docker(args);
    assert!(
        !out.status.success(),
        "docker {} should have failed: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stdout)
    );
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// The plugin (driver) name and socket of test daemon `name`.
pub fn plugin_for(name: &str) -> (String, PathBuf) {
    let plugin = format!("courier-it-{name}-{}", std::process::id());
    let sock = PathBuf::from(format!("/run/docker/plugins/{plugin}.sock"));
    (plugin, sock)
}

/// Environment that turns a test daemon's Docker door on, on its own socket.
/// With `COURIER_CAPTURE_DIR` set (scripts/capture-docker-fixture.sh), every call dockerd makes
/// is captured into `<dir>/<name>.jsonl` (a test-hooks build).
pub fn docker_env(name: &str) -> Vec<(&'static str, String)> {
    let (_, sock) = plugin_for(name);
    let mut env = vec![
        ("COURIER_DOCKER", "1".into()),
        ("COURIER_DOCKER_SOCKET", sock.display().to_string()),
        // The dockerd whose network list reconcile follows.
        ("COURIER_DOCKER_ENGINE", DOCKER_HOST.into()),
    ];
    if let Some(dir) = std::env::var_os("COURIER_CAPTURE_DIR") {
        let file = PathBuf::from(dir).join(format!("{name}.jsonl"));
        env.push(("COURIER_DOCKER_CAPTURE", file.display().to_string()));
    }
    env
}

/// Starts test daemon `name` with the Docker door, plus `extra` (last, so it overrides).
pub fn docker_daemon(name: &str, extra: &[(&str, String)]) -> TestDaemon {
    let mut env = docker_env(name);
    env.extend(extra.iter().cloned());
    let all: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let d = TestDaemon::start_with(name, &all);
    wait_backends(&d);
    d
}

/// Posts `body` straight to the plugin socket: (HTTP status, JSON reply, Content-Type).
pub fn plugin_call(sock: &std::path::Path, method: &str, body: &str) -> (u16, Value, String) {
    let out = sh_ok(
        "curl",
        &[
            "-s",
            "--unix-socket",
            &sock.display().to_string(),
            "-X",
            "POST",
            "-H",
            "Content-Type: application/json",
            "-d",
            body,
            "-w",
            "\n%{http_code} %{content_type}",
            &format!("http://localhost/{method}"),
        ],
    );
    let (body, tail) = out.rsplit_once('\n').unwrap_or(("", "0"));
    let (code, ctype) = tail.split_once(' ').unwrap_or((tail, ""));
    (
        code.trim().parse().unwrap_or(0),
        serde_json::from_str(body).unwrap_or(Value::Null),
        ctype.trim().to_string(),
    )
}

/// Containers and networks to remove at the end of a test, whatever happens.
#[derive(Default)]
pub struct DockerScope {
    pub containers: Vec<String>,
    pub networks: Vec<String>,
}

impl DockerScope {
    /// `docker network create -d PLUGIN --ipam-driver PLUGIN ARGS... NAME`; returns Docker's id.
    pub fn network(&mut self, plugin: &str, name: &str, args: &[&str]) -> String {
        let mut all = vec!["network", "create", "-d", plugin, "--ipam-driver", plugin];
        all.extend_from_slice(args);
        all.push(name);
        let id = docker_ok(&all);
        self.networks.push(name.to_string());
        id
    }

    /// `docker run -d --name NAME ARGS... IMAGE sleep 600`.
    pub fn run(&mut self, name: &str, args: &[&str]) -> Output {
        self.containers.push(name.to_string());
        let mut all = vec!["run", "-d", "--name", name];
        all.extend_from_slice(args);
        all.extend([IMAGE, "sleep", "600"]);
        docker(&all)
    }

    pub fn run_ok(&mut self, name: &str, args: &[&str]) {
        let out = self.run(name, args);
        assert!(
            out.status.success(),
            "docker run {name}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

impl Drop for DockerScope {
    fn drop(&mut self) {
        for c in &self.containers {
            let _ = docker(&["rm", "-f", c]);
        }
        for n in &self.networks {
            let _ = docker(&["network", "rm", n]);
        }
    }
}

/// The container's address on `network` (docker inspect).
pub fn ip_of(container: &str, network: &str) -> String {
    docker_ok(&[
        "inspect",
        "-f",
        &format!("{{{{(index .NetworkSettings.Networks \"{network}\").IPAddress}}}}"),
        container,
    ])
}

pub fn mac_of(container: &str, network: &str) -> String {
    docker_ok(&[
        "inspect",
        "-f",
        &format!("{{{{(index .NetworkSettings.Networks \"{network}\").MacAddress}}}}"),
        container,
    ])
}

pub fn ping(from: &str, ip: &str) -> bool {
    docker(&["exec", from, "ping", "-c", "2", "-W", "2", ip])
        .status
        .success()
}

/// Sends `bytes` random bytes over TCP from `client` to `server_ip` (a listener started in
/// `server`); returns (sha256 sent, sha256 received).
pub fn tcp_between(server: &str, client: &str, server_ip: &str, bytes: usize) -> (String, String) {
    docker_ok(&[
        "exec",
        "-d",
        server,
        "sh",
        "-c",
        "sleep 30 | nc -l -p 5000 > /tmp/got",
    ]);
    std::thread::sleep(Duration::from_millis(300));
    let sent = docker_ok(&[
        "exec",
        client,
        "sh",
        "-c",
        &format!(
            "head -c {bytes} /dev/urandom > /tmp/blob && nc {server_ip} 5000 < /tmp/blob && sha256sum /tmp/blob"
        ),
    ]);
    let mut got = String::new();
    eventually(Duration::from_secs(5), || {
        got = docker_ok(&["exec", server, "sh", "-c", "sha256sum /tmp/got"]);
        got.split_whitespace().next() == sent.split_whitespace().next()
    });
    (
        sent.split_whitespace().next().unwrap_or("").into(),
        got.split_whitespace().next().unwrap_or("").into(),
    )
}

/// The interfaces of a container, by name (`ip -o link`).
pub fn links_in(container: &str) -> Vec<String> {
    docker_ok(&["exec", container, "ip", "-o", "link"])
        .lines()
        .filter_map(|l| l.split(": ").nth(1))
        .map(|n| n.split('@').next().unwrap_or(n).to_string())
        .collect()
}
