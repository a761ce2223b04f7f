//! A real CNI client: podman (Debian's, CNI backend) runs containers on a Courier network.
//! Its libcni execs the plugin, validates our result and records it; two containers ping each
//! other over OVN; `podman rm` runs DEL and nothing is left behind.
mod common;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::*;

struct Podman {
    dir: PathBuf,
}

impl Podman {
    fn setup(d: &TestDaemon, network: &str) -> Result<Podman, String> {
        if Command::new("podman").arg("--version").output().is_err() {
            return Err("podman is not installed (scripts/install-deps.sh installs it)".into());
        }
        if !Path::new("/bin/busybox").exists() {
            return Err(
                "busybox-static is not installed (scripts/install-deps.sh installs it)".into(),
            );
        }
        hybrid_cgroup_fix()?;
        let dir = d.dir.join("podman");
        let p = Podman { dir: dir.clone() };
        std::fs::create_dir_all(dir.join("net.d")).map_err(|e| e.to_string())?;
        std::fs::create_dir_all(dir.join("cni-bin")).map_err(|e| e.to_string())?;
        std::fs::create_dir_all(dir.join("rootfs/bin")).map_err(|e| e.to_string())?;
        std::os::unix::fs::symlink(BIN, dir.join("cni-bin/courier")).map_err(|e| e.to_string())?;
        std::fs::write(
            dir.join("containers.conf"),
            format!(
                "[engine]\ncgroup_manager = \"cgroupfs\"\nevents_logger = \"file\"\n[network]\nnetwork_backend = \"cni\"\ncni_plugin_dirs = [\"{0}/cni-bin\", \"/usr/lib/cni\"]\nnetwork_config_dir = \"{0}/net.d\"\n",
                dir.display()
            ),
        )
        .map_err(|e| e.to_string())?;
        std::fs::write(
            dir.join(format!("net.d/{network}.conflist")),
            serde_json::json!({"cniVersion": "1.0.0", "name": network,
                "plugins": [{"type": "courier", "socket": d.socket}]})
            .to_string(),
        )
        .map_err(|e| e.to_string())?;
        // A busybox image without a registry: import a one-binary rootfs.
        std::fs::copy("/bin/busybox", dir.join("rootfs/bin/busybox")).map_err(|e| e.to_string())?;
        for applet in ["sh", "ping", "ip", "sleep"] {
            std::os::unix::fs::symlink("busybox", dir.join("rootfs/bin").join(applet))
                .map_err(|e| e.to_string())?;
        }
        let tar = dir.join("rootfs.tar");
        sh_ok(
            "tar",
            &[
                "-C",
                dir.join("rootfs").to_str().unwrap(),
                "-cf",
                tar.to_str().unwrap(),
                ".",
            ],
        );
        let out = p.run(&["import", tar.to_str().unwrap(), "localhost/courier-bb:1"]);
        if !out.status.success() {
            return Err(format!(
                "podman import failed: {}",
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        Ok(p)
    }

    fn run(&self, args: &[&str]) -> Output {
        Command::new("podman")
            .env("CONTAINERS_CONF", self.dir.join("containers.conf"))
            .args(["--root", self.dir.join("storage").to_str().unwrap()])
            .args(["--runroot", self.dir.join("run").to_str().unwrap()])
            .args(["--storage-driver", "vfs"])
            .args(args)
            .output()
            .expect("podman")
    }

    /// `podman run` with limits this sandbox lets crun set.
    fn container(&self, extra: &[&str]) -> Output {
        let mut a = vec![
            "run",
            "--ulimit",
            "nofile=1024:1024",
            "--ulimit",
            "nproc=1024:1024",
        ];
        a.extend_from_slice(extra);
        self.run(&a)
    }
}

/// crun refuses "hybrid" cgroups when the v2 hierarchy still holds a controller. On this machine
/// kind that is `hugetlb` alone, used by nothing: mounting it as a v1 hierarchy moves it out.
fn hybrid_cgroup_fix() -> Result<(), String> {
    let unified = Path::new("/sys/fs/cgroup/unified/cgroup.controllers");
    let Ok(ctl) = std::fs::read_to_string(unified) else {
        return Ok(());
    };
    if ctl.trim().is_empty() {
        return Ok(());
    }
    if ctl.trim() != "hugetlb" {
        return Err(format!(
            "cgroup v2 holds controllers {ctl:?}; crun cannot run containers here"
        ));
    }
    let _ = std::fs::create_dir_all("/sys/fs/cgroup/hugetlb");
    let out = sh(
        "mount",
        &[
            "-t",
            "cgroup",
            "-o",
            "hugetlb",
            "cgroup",
            "/sys/fs/cgroup/hugetlb",
        ],
    );
    if !out.status.success() {
        return Err(format!(
            "cannot move hugetlb to cgroup v1: {}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    eprintln!("note: mounted the hugetlb cgroup v1 hierarchy so that crun accepts this machine's hybrid cgroups");
    Ok(())
}

#[test]
fn podman_containers_talk_over_courier() {
    if !env_ready("podman_containers_talk_over_courier") {
        return;
    }
    let d = TestDaemon::start("podman");
    let net = unique("podnet");
    d.create_network(&net, &subnet_for(10));
    let clean = world(&d);
    let pm = match Podman::setup(&d, &net) {
        Ok(p) => p,
        Err(reason) => return skip("podman_containers_talk_over_courier", &reason),
    };
    let srv = format!("srv-{}", std::process::id());
    let out = pm.container(&[
        "-d",
        "--name",
        &srv,
        "--network",
        &net,
        "localhost/courier-bb:1",
        "sleep",
        "120",
    ]);
    assert!(
        out.status.success(),
        "podman run: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        d.log()
    );
    // podman recorded the result our plugin returned.
    let ip = String::from_utf8_lossy(
        &pm.run(&[
            "inspect",
            &srv,
            "-f",
            &format!("{{{{(index .NetworkSettings.Networks \"{net}\").IPAddress}}}}"),
        ])
        .stdout,
    )
    .trim()
    .to_string();
    let atts = d.store();
    assert_eq!(atts.len(), 1);
    assert_eq!(
        format!("{ip}/24"),
        atts[0]["port"]["ips"][0].as_str().unwrap(),
        "podman's view = OVN's"
    );
    // A second container reaches the first through OVN.
    let out = pm.container(&[
        "--rm",
        "--network",
        &net,
        "localhost/courier-bb:1",
        "ping",
        "-c",
        "3",
        "-W",
        "2",
        &ip,
    ]);
    assert!(
        out.status.success(),
        "ping between podman containers: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("0% packet loss"));
    // podman rm runs DEL: the attachment, its LSP, bridge port and veth are gone.
    let out = pm.run(&["rm", "-f", &srv]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(world(&d), clean, "podman rm left something behind");
    assert!(d.cli(&["network", "delete", &net]).status.success());
}

/// CNI GC is the runtime's list of what it still uses (issue 20, item 12): a GC run by one
/// runtime (this test binary, execing the plugin) on a network detaches only what that runtime
/// made. A podman container and a CLI attachment on the same network survive it (and still
/// talk to each other); the test runtime's own leftover goes.
#[test]
fn cni_gc_touches_only_what_its_runtime_made() {
    let t = "cni_gc_touches_only_what_its_runtime_made";
    if !env_ready(t) {
        return;
    }
    let d = TestDaemon::start("podgc");
    let net = unique("podgc");
    d.create_network(&net, &subnet_for(11));
    let pm = match Podman::setup(&d, &net) {
        Ok(p) => p,
        Err(reason) => return skip(t, &reason),
    };
    let srv = format!("gc-{}", std::process::id());
    let out = pm.container(&[
        "-d",
        "--name",
        &srv,
        "--network",
        &net,
        "localhost/courier-bb:1",
        "sleep",
        "120",
    ]);
    assert!(
        out.status.success(),
        "podman run: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let cli_ns = Netns::new("podgc-cli");
    let out = d.cli(&["attach", "--netns", &cli_ns.path(), "--network", &net]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mine = Netns::new("podgc-mine");
    let conf = d.netconf(&net, "1.1.0");
    assert_eq!(d.cni("ADD", "mine", &mine.path(), "eth0", &conf).0, 0);
    assert_eq!(d.store().len(), 3);
    let makers: Vec<String> = d.store().iter().map(|a| a["made_by"].to_string()).collect();
    assert!(
        makers.iter().any(|m| m.contains("\"podman\"")),
        "{makers:?}"
    );
    assert!(makers.iter().any(|m| m.contains("\"cli\"")), "{makers:?}");

    // This runtime's GC with an empty list of valid attachments.
    let gc = serde_json::json!({"cniVersion": "1.1.0", "name": net, "type": "courier",
        "socket": d.socket, "cni.dev/valid-attachments": []})
    .to_string();
    let (code, out) = d.cni("GC", "", "", "", &gc);
    assert_eq!(code, 0, "GC: {out}");
    assert!(!mine.has_link("eth0"), "this runtime's leftover goes");
    let left: Vec<String> = d
        .store()
        .iter()
        .map(|a| a["made_by"]["door"].to_string())
        .collect();
    assert_eq!(left.len(), 2, "podman's and the CLI's stay: {left:?}");
    assert!(cli_ns.has_link("eth0"));
    let ip = String::from_utf8_lossy(
        &pm.run(&[
            "inspect",
            &srv,
            "-f",
            &format!("{{{{(index .NetworkSettings.Networks \"{net}\").IPAddress}}}}"),
        ])
        .stdout,
    )
    .trim()
    .to_string();
    assert!(
        cli_ns.ping(&ip),
        "the CLI's container still reaches podman's"
    );

    let out = pm.run(&["rm", "-f", &srv]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = d.cli(&["detach", "--netns", &cli_ns.path()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Counted on the whole switch and host, not by marks (other tests may run beside this one,
    // so not the whole NB).
    assert_eq!(
        nbctl(&["lsp-list", &net]).trim(),
        "",
        "ports left on the switch"
    );
    assert!(owned(&d).is_empty(), "{:?}", owned(&d));
    assert!(d.store().is_empty());
    assert!(d.cli(&["network", "delete", &net]).status.success());
}
