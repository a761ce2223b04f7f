//! QEMU guest tests: a stock Debian kernel (with 802.1Q, ipvlan, macvlan, openvswitch — this
//! host's kernel lacks them) booted under TCG by `tests/vm/guest.sh`, which runs one bash
//! scenario from `tests/vm/scenarios/` inside the guest. The guest's eth1 is the "VM port": a
//! host tap on the host's br-int bound to the VM's logical switch port; its eth0 is QEMU user
//! networking, where the host's 127.0.0.1:PORT is 10.0.2.2:PORT.
//!
//! The tests are `#[ignore]`d so that `scripts/test.sh` (cargo test --workspace) does not boot
//! guests; `scripts/vm-test.sh` runs them (`--include-ignored`), a CI stage of its own. Needs
//! root, OVN (scripts/ovn.sh), /dev/net/tun, and QEMU ≥ 8 (guest.sh installs QEMU 10 from
//! bookworm-backports when missing); otherwise the tests are reported skipped.
mod common;
use common::*;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

/// `tests/vm/guest.sh`, without the environment `cargo test` gives its tests (CARGO_PKG_*,
/// CARGO_MANIFEST_DIR, LD_LIBRARY_PATH, ...): with it, the `cargo build` of
/// scripts/build-static.sh inside guest.sh sees other inputs than one from a shell, and the
/// two keep rebuilding the static binary from scratch in turn.
fn guest_cmd() -> Command {
    let mut cmd = Command::new(repo().join("tests/vm/guest.sh"));
    for (k, _) in std::env::vars_os() {
        let k = k.to_string_lossy();
        if (k.starts_with("CARGO") && k != "CARGO_HOME")
            || k == "LD_LIBRARY_PATH"
            || k == "RUST_RECURSION_COUNT"
        {
            cmd.env_remove(&*k);
        }
    }
    cmd
}

fn scenario(name: &str) -> String {
    repo()
        .join("tests/vm/scenarios")
        .join(name)
        .display()
        .to_string()
}

/// [`env_ready`], and the guest can be booted: /dev/net/tun for the VM port, and the cached
/// setup of `guest.sh setup` (QEMU, kernel, initramfs, static courier) succeeds.
fn guest_ready(test: &str) -> bool {
    if !env_ready(test) {
        return false;
    }
    static READY: OnceLock<Result<(), String>> = OnceLock::new();
    let r = READY.get_or_init(|| {
        if !std::path::Path::new("/dev/net/tun").exists() {
            return Err("no /dev/net/tun: cannot make the VM port's tap".into());
        }
        let out = guest_cmd()
            .arg("setup")
            .output()
            .map_err(|e| format!("cannot run tests/vm/guest.sh: {e}"))?;
        eprint!("{}", String::from_utf8_lossy(&out.stderr));
        if out.status.success() {
            Ok(())
        } else {
            Err(format!(
                "tests/vm/guest.sh setup failed ({}): {}{}",
                out.status,
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

/// What one guest run printed and returned.
struct GuestRun {
    code: i32,
    stdout: String,
    stderr: String,
}

impl GuestRun {
    fn explain(&self) -> String {
        let what = match self.code {
            124 => " (guest timed out)",
            125 => " (guest never reported a status: boot failure?)",
            126 => " (host setup failed)",
            _ => "",
        };
        format!(
            "guest exit {}{what}\n--- guest output:\n{}\n--- harness:\n{}",
            self.code, self.stdout, self.stderr
        )
    }
}

/// Boots the guest with `scenario ARGS` and `env`; every stdout line is passed to `on_line`
/// while the guest runs (so the host can act on a scenario's cue).
fn run_guest(
    scenario: &str,
    args: &[&str],
    env: &[(&str, String)],
    mut on_line: impl FnMut(&str),
) -> GuestRun {
    let mut cmd = guest_cmd();
    cmd.arg("run")
        .arg(scenario)
        .args(args)
        .env("VM_TIMEOUT", "240")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().expect("running tests/vm/guest.sh");
    let stderr = child.stderr.take().expect("stderr");
    let err_reader = std::thread::spawn(move || {
        let mut s = String::new();
        for l in BufReader::new(stderr).lines().map_while(Result::ok) {
            eprintln!("{l}");
            s.push_str(&l);
            s.push('\n');
        }
        s
    });
    let mut stdout = String::new();
    for line in BufReader::new(child.stdout.take().expect("stdout"))
        .lines()
        .map_while(Result::ok)
    {
        println!("guest| {line}");
        on_line(&line);
        stdout.push_str(&line);
        stdout.push('\n');
    }
    let status = child.wait().expect("guest.sh exit");
    GuestRun {
        code: status.code().unwrap_or(-1),
        stdout,
        stderr: err_reader.join().unwrap_or_default(),
    }
}

fn run_quiet(cmd: &str, args: &[&str]) {
    let _ = Command::new(cmd)
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

/// The test's OVN and host objects, removed on drop (pass or fail): the logical switch (with
/// its ports), the OVS ports, the tap and the veth. (The netns is a [`Netns`].)
struct Objects {
    ls: String,
    tap: String,
    veth: String,
}

impl Objects {
    fn remove(&self) {
        run_quiet("ovn-nbctl", &["--if-exists", "ls-del", &self.ls]);
        for p in [&self.tap, &self.veth] {
            run_quiet("ovs-vsctl", &["--if-exists", "del-port", "br-int", p]);
        }
        run_quiet("ip", &["tuntap", "del", "dev", &self.tap, "mode", "tap"]);
        run_quiet("ip", &["link", "del", &self.veth]);
    }
}

impl Drop for Objects {
    fn drop(&mut self) {
        self.remove();
    }
}

/// A netns (named from `prefix`) whose eth0 (`mac`, `ip`/24) is a veth whose host end `veth` is
/// a br-int port bound to LSP `lsp`: a port on the switch outside the VM.
fn host_port(prefix: &str, veth: &str, lsp: &str, mac: &str, ip: &str) -> Netns {
    common::nested::netns_on_br_int(prefix, veth, lsp, mac, &format!("{ip}/24"))
}

/// `guest.sh plug` (the VM port's tap on br-int, as `vm_env` says), then waits until `lsps`
/// are up.
fn plug_vm_port(vm_env: &[(&str, String)], lsps: &[&str]) {
    let plug = guest_cmd()
        .arg("plug")
        .envs(vm_env.iter().map(|(k, v)| (k, v)))
        .output()
        .expect("guest.sh plug");
    assert!(
        plug.status.success(),
        "guest.sh plug: {}",
        String::from_utf8_lossy(&plug.stderr)
    );
    for lsp in lsps {
        wait_up(lsp);
    }
}

fn wait_up(lsp: &str) {
    let up = eventually(Duration::from_secs(15), || {
        nbctl(&["get", "Logical_Switch_Port", lsp, "up"]).trim() == "true"
    });
    assert!(up, "LSP {lsp} never came up");
}

/// The guest's VM port (eth1: a host tap on br-int with iface-id = the VM's LSP, QEMU
/// virtio-net with vnet_hdr=off) reaches a host netns bound to another LSP of the same logical
/// switch: the guest pings it, then the host netns pings the guest back while it still runs.
#[test]
#[ignore = "QEMU guest test: run by scripts/vm-test.sh"]
fn guest_vm_port_reaches_the_logical_switch() {
    let test = "guest_vm_port_reaches_the_logical_switch";
    if !guest_ready(test) {
        return;
    }
    let pid = std::process::id();
    let o = Objects {
        ls: unique("vm-ls"),
        tap: format!("vmtap{pid}"),
        veth: format!("vmh{pid}"),
    };
    o.remove(); // leftovers of a crashed run with this pid
    let (lsp_vm, lsp_host) = (unique("vm-port"), unique("vm-hostport"));
    let subnet = subnet_for(91);
    let base = subnet.trim_end_matches(".0/24");
    let (vm_ip, host_ip) = (format!("{base}.10"), format!("{base}.2"));
    let (vm_mac, host_mac) = ("02:c0:00:00:5b:0a", "02:c0:00:00:5b:02");
    let vm_addr = format!("{vm_mac} {vm_ip}");
    let host_addr = format!("{host_mac} {host_ip}");
    nbctl(&[
        "ls-add",
        &o.ls,
        "--",
        "set",
        "Logical_Switch",
        &o.ls,
        &format!("other_config:subnet={subnet}"),
        "--",
        "lsp-add",
        &o.ls,
        &lsp_vm,
        "--",
        "lsp-set-addresses",
        &lsp_vm,
        &vm_addr,
        "--",
        "lsp-set-port-security",
        &lsp_vm,
        &vm_addr,
        "--",
        "lsp-add",
        &o.ls,
        &lsp_host,
        "--",
        "lsp-set-addresses",
        &lsp_host,
        &host_addr,
    ]);

    // The host side: a netns on a veth whose host end is a br-int port bound to lsp_host.
    let ns = host_port("vm-h", &o.veth, &lsp_host, host_mac, &host_ip);
    // The VM port: made before QEMU starts (and kept by us, so guest.sh leaves it in place).
    let vm_env = vec![
        ("VM_TAP", o.tap.clone()),
        ("VM_LSP", lsp_vm.clone()),
        ("VM_MAC", vm_mac.to_string()),
        ("VM_IP", vm_ip.clone()),
        ("VM_PREFIX", "24".to_string()),
        ("VM_AWAIT_ECHO", "3".to_string()),
    ];
    plug_vm_port(&vm_env, &[&lsp_vm, &lsp_host]);
    nbctl(&["--wait=hv", "sync"]);

    let mut pinged_back = None;
    let run = run_guest(scenario("ping.sh").as_str(), &[&host_ip], &vm_env, |line| {
        if line == "__await_echo__" {
            let out = ns.exec(&["ping", "-c", "3", "-i", "0.3", "-W", "2", &vm_ip]);
            pinged_back = Some(format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ));
            println!(
                "host netns -> guest: {}",
                pinged_back.as_deref().unwrap_or("")
            );
        }
    });
    assert_eq!(run.code, 0, "{}", run.explain());
    assert!(
        run.stdout.contains(", 0% packet loss"),
        "guest -> host netns ping lost packets:\n{}",
        run.explain()
    );
    let back = pinged_back.expect("the scenario never waited for the host's ping");
    assert!(
        back.contains(", 0% packet loss"),
        "host netns -> guest ping failed:\n{back}"
    );
    // The tap is still ours (guest.sh did not remove what it had not made); Objects removes it.
    assert!(
        sh("ip", &["link", "show", &o.tap]).status.success(),
        "tap vanished"
    );
}

/// A Connection row for the host's NB at ptcp:6641:127.0.0.1, removed on drop if we made it.
struct NbTcpListener {
    made: Option<String>,
}

const NB_TCP: &str = "ptcp:6641:127.0.0.1";

impl NbTcpListener {
    fn ensure() -> NbTcpListener {
        let targets = nbctl(&["--bare", "--columns=target", "list", "Connection"]);
        let made = if targets.split_whitespace().any(|t| t == NB_TCP) {
            None
        } else {
            // A row of our own, added to NB_Global's set: the existing rows are left as they
            // are (`ovn-nbctl set-connection` would replace them all).
            let uuid = nbctl(&[
                "--",
                "--id=@c",
                "create",
                "Connection",
                &format!("target=\"{NB_TCP}\""),
                "--",
                "add",
                "NB_Global",
                ".",
                "connections",
                "@c",
            ]);
            Some(uuid.trim().to_string())
        };
        let l = NbTcpListener { made };
        let listening = eventually(Duration::from_secs(10), || {
            std::net::TcpStream::connect_timeout(
                &"127.0.0.1:6641".parse().unwrap(),
                Duration::from_millis(200),
            )
            .is_ok()
        });
        assert!(listening, "NB does not listen on 127.0.0.1:6641");
        l
    }
}

impl Drop for NbTcpListener {
    fn drop(&mut self) {
        if let Some(uuid) = &self.made {
            // Connection is not a root table: dropping the reference deletes the row.
            run_quiet(
                "ovn-nbctl",
                &["remove", "NB_Global", ".", "connections", uuid],
            );
        }
    }
}

/// In the guest, the static courier binary runs, and the host's OVN NB answers over TCP at
/// 10.0.2.2:6641 (QEMU user networking): what Courier running inside a VM will talk to.
///
/// Host-wide side effect: the NB gets a TCP listener on 127.0.0.1:6641 for the duration of
/// the test (a Connection row added beside any existing ones, removed afterwards unless it
/// was there before).
#[test]
#[ignore = "QEMU guest test: run by scripts/vm-test.sh"]
fn guest_runs_courier_and_reaches_the_nb_over_tcp() {
    let test = "guest_runs_courier_and_reaches_the_nb_over_tcp";
    if !guest_ready(test) {
        return;
    }
    let _nb = NbTcpListener::ensure();
    let run = run_guest(
        scenario("nb.sh").as_str(),
        &[],
        &[("VM_NB_REMOTE", "tcp:10.0.2.2:6641".to_string())],
        |_| {},
    );
    assert_eq!(run.code, 0, "{}", run.explain());
    assert!(
        run.stdout.lines().any(|l| l.starts_with("courier ")),
        "courier --version did not run in the guest:\n{}",
        run.explain()
    );
    assert!(run.stdout.contains("NB answers"), "{}", run.explain());
}

/// Nested ipvlan, for real, in the guest (this host's kernel has no ipvlan): Courier runs in the
/// VM with the ipvlan binding and the host's NB over TCP. A container's address is reachable
/// only once its IP-only pair (the VM's MAC) is on the VM's port: dropped before (an ipvlan by
/// hand), through after attach, dropped again after detach; the VM port's port security ends
/// as it began, and no reservation port is left.
///
/// Host-wide side effect: the NB's TCP listener on 127.0.0.1:6641 while it runs (see above).
#[test]
#[ignore = "QEMU guest test: run by scripts/vm-test.sh"]
fn guest_nested_ipvlan_needs_its_pair() {
    let test = "guest_nested_ipvlan_needs_its_pair";
    if !guest_ready(test) {
        return;
    }
    let _nb = NbTcpListener::ensure();
    let pid = std::process::id();
    // The Courier network, through a host daemon (a Courier network is a switch it made).
    let host = TestDaemon::start("vm-ipv-host");
    let net = unique("vm-ipv");
    let subnet = subnet_for(92);
    host.create_network(&net, &subnet);
    let base = subnet.trim_end_matches(".0/24");
    let o = Objects {
        ls: net.clone(),
        tap: format!("vmtapi{pid}"),
        veth: format!("vmhi{pid}"),
    };
    let (lsp_vm, lsp_host) = (unique("vm-ipv-port"), unique("vm-ipv-host"));
    let (vm_ip, host_ip) = (format!("{base}.10"), format!("{base}.3"));
    let (vm_mac, host_mac) = ("02:c0:00:00:5c:0a", "02:c0:00:00:5c:03");
    let vm_addr = format!("{vm_mac} {vm_ip}");
    let host_addr = format!("{host_mac} {host_ip}");
    nbctl(&[
        "lsp-add",
        &net,
        &lsp_vm,
        "--",
        "lsp-set-addresses",
        &lsp_vm,
        &vm_addr,
        "--",
        "lsp-set-port-security",
        &lsp_vm,
        &vm_addr,
        "--",
        "lsp-add",
        &net,
        &lsp_host,
        "--",
        "lsp-set-addresses",
        &lsp_host,
        &host_addr,
    ]);
    let _ns = host_port("vm-ipv-h", &o.veth, &lsp_host, host_mac, &host_ip);
    let vm_env = vec![
        ("VM_TAP", o.tap.clone()),
        ("VM_LSP", lsp_vm.clone()),
        ("VM_MAC", vm_mac.to_string()),
        ("VM_IP", vm_ip.clone()),
        ("VM_PREFIX", "24".to_string()),
        ("VM_NET", net.clone()),
        ("VM_HOST_IP", host_ip.clone()),
        ("VM_FREE_IP", format!("{base}.77")),
        ("VM_NB_REMOTE", "tcp:10.0.2.2:6641".to_string()),
        ("VM_HOST_MARK", format!("it-vm-ipv-{pid}")),
    ];
    plug_vm_port(&vm_env, &[&lsp_vm, &lsp_host]);
    let security_before = nbctl(&["get", "Logical_Switch_Port", &lsp_vm, "port_security"]);
    let run = run_guest(scenario("ipvlan.sh").as_str(), &[], &vm_env, |_| {});
    assert_eq!(run.code, 0, "{}", run.explain());
    for said in [
        "dropped without a pair",
        "reachable with the pair",
        "dropped again after detach",
        "__ok__",
    ] {
        assert!(run.stdout.contains(said), "{said}:\n{}", run.explain());
    }
    assert_eq!(
        nbctl(&["get", "Logical_Switch_Port", &lsp_vm, "port_security"]),
        security_before,
        "detach removed exactly its pair"
    );
    let left = nbctl(&[
        "--bare",
        "--columns=name",
        "find",
        "Logical_Switch_Port",
        &format!("external_ids:courier-host=it-vm-ipv-{pid}"),
    ]);
    assert!(left.trim().is_empty(), "no reservation port left: {left}");
    drop(o);
    drop(host);
}

/// Nested VLAN on OVN direct, in the guest: each container's port is a child of the VM's port
/// (`parent_name` + a tag unique under it), its interface an 802.1Q sub-interface of the VM's
/// trunk NIC. A child port someone else made (tag 1) is read back, so Courier never hands out
/// its tag; a tag with no child reaches nothing; detach frees the tag.
#[test]
#[ignore = "boots a QEMU guest: run by scripts/vm-test.sh"]
fn guest_nested_vlan_child_ports() {
    nested_vlan_in_guest("guest_nested_vlan_child_ports", "vlan.sh", 93, "v");
}

/// The same with the vlan-ovs binding: the VM runs Open vSwitch, its NIC is the trunk uplink of
/// its own bridge, and each container is a veth on an access port tagged with its child port's
/// VLAN (OVN's container-in-VM document).
#[test]
#[ignore = "boots a QEMU guest: run by scripts/vm-test.sh"]
fn guest_nested_vlan_ovs_access_ports() {
    nested_vlan_in_guest("guest_nested_vlan_ovs_access_ports", "vlan-ovs.sh", 94, "o");
}

/// Nested VLAN in the guest with `scenario` (vlan.sh or vlan-ovs.sh): see those.
fn nested_vlan_in_guest(test: &str, scenario_name: &str, subnet_index: u8, short: &str) {
    if !guest_ready(test) {
        return;
    }
    let _nb = NbTcpListener::ensure();
    let pid = std::process::id();
    let host = TestDaemon::start(&format!("vm-vlan{short}-host"));
    let net = unique(&format!("vm-vlan{short}"));
    let subnet = subnet_for(subnet_index);
    host.create_network(&net, &subnet);
    let base = subnet.trim_end_matches(".0/24");
    let o = Objects {
        ls: net.clone(),
        tap: format!("vmtap{short}{pid}"),
        veth: format!("vmh{short}{pid}"),
    };
    let (lsp_vm, lsp_host) = (
        unique(&format!("vm-vlan{short}-port")),
        unique(&format!("vm-vlan{short}-host")),
    );
    let foreign = unique(&format!("vm-vlan{short}-other"));
    let (vm_ip, host_ip) = (format!("{base}.10"), format!("{base}.3"));
    let (vm_mac, host_mac) = (
        format!("02:c0:00:00:{subnet_index:02x}:0a"),
        format!("02:c0:00:00:{subnet_index:02x}:03"),
    );
    let vm_addr = format!("{vm_mac} {vm_ip}");
    let host_addr = format!("{host_mac} {host_ip}");
    nbctl(&[
        "lsp-add",
        &net,
        &lsp_vm,
        "--",
        "lsp-set-addresses",
        &lsp_vm,
        &vm_addr,
        "--",
        "lsp-set-port-security",
        &lsp_vm,
        &vm_addr,
        "--",
        "lsp-add",
        &net,
        &lsp_host,
        "--",
        "lsp-set-addresses",
        &lsp_host,
        &host_addr,
        // A child port of the VM's port that Courier did not make: its tag is taken.
        "--",
        "lsp-add",
        &net,
        &foreign,
        &lsp_vm,
        "1",
        "--",
        "lsp-set-addresses",
        &foreign,
        &format!("02:c0:00:00:{subnet_index:02x}:01 {base}.201"),
    ]);
    let _ns = host_port(
        &format!("vm-vlan{short}-h"),
        &o.veth,
        &lsp_host,
        &host_mac,
        &host_ip,
    );
    let mark = format!("it-vm-vlan{short}-{pid}");
    let vm_env = vec![
        ("VM_TAP", o.tap.clone()),
        ("VM_LSP", lsp_vm.clone()),
        ("VM_MAC", vm_mac.clone()),
        ("VM_IP", vm_ip.clone()),
        ("VM_PREFIX", "24".to_string()),
        ("VM_NET", net.clone()),
        ("VM_HOST_IP", host_ip.clone()),
        ("VM_FREE_IP", format!("{base}.77")),
        ("VM_TAKEN_TAG", "1".to_string()),
        ("VM_NB_REMOTE", "tcp:10.0.2.2:6641".to_string()),
        ("VM_HOST_MARK", mark.clone()),
    ];
    plug_vm_port(&vm_env, &[&lsp_vm, &lsp_host]);
    let vm_row_before = nbctl(&[
        "--columns=addresses,port_security",
        "list",
        "Logical_Switch_Port",
        &lsp_vm,
    ]);
    // The child ports the NB has while the guest runs (the guest's lines reach the host in
    // batches, after the fact: so the NB is watched, not asked on each line).
    let seen = std::sync::Mutex::new(std::collections::BTreeSet::<(String, u16)>::new());
    let done = std::sync::atomic::AtomicBool::new(false);
    let mut attached = Vec::new();
    let run = std::thread::scope(|s| {
        s.spawn(|| {
            while !done.load(std::sync::atomic::Ordering::Relaxed) {
                let rows = nbctl(&[
                    "--bare",
                    "--format=csv",
                    "--columns=name,tag",
                    "find",
                    "Logical_Switch_Port",
                    &format!("parent_name={lsp_vm}"),
                    &format!("external_ids:courier-host={mark}"),
                ]);
                let mut seen = seen.lock().unwrap_or_else(|p| p.into_inner());
                for row in rows.lines() {
                    if let Some((name, tag)) = row.split_once(',') {
                        if let Ok(tag) = tag.trim().parse() {
                            seen.insert((name.to_string(), tag));
                        }
                    }
                }
                drop(seen);
                std::thread::sleep(Duration::from_millis(100));
            }
        });
        let run = run_guest(scenario(scenario_name).as_str(), &[], &vm_env, |line| {
            if let Some(rest) = line.strip_prefix("__attached__ ") {
                let tag: u16 = rest
                    .split_whitespace()
                    .nth(1)
                    .and_then(|t| t.parse().ok())
                    .unwrap_or(0);
                attached.push((rest.to_string(), tag));
            }
        });
        done.store(true, std::sync::atomic::Ordering::Relaxed);
        run
    });
    assert_eq!(run.code, 0, "{}", run.explain());
    for said in [
        "a wrong tag reaches nothing",
        "both containers reach the switch",
        "and each other",
        "detach freed the tag",
        "a detached child's tag reaches nothing",
        "__ok__",
    ] {
        assert!(run.stdout.contains(said), "{said}:\n{}", run.explain());
    }
    let seen = seen.into_inner().unwrap_or_else(|p| p.into_inner());
    assert_eq!(attached.len(), 3, "{attached:?}");
    assert_eq!(seen.len(), 3, "one child port per attach: {seen:?}");
    for (said, tag) in &attached {
        assert!(
            seen.iter().any(|(_, t)| t == tag),
            "no child LSP of {lsp_vm} with tag {tag} for {said}: {seen:?}"
        );
    }
    let left = nbctl(&[
        "--bare",
        "--columns=name",
        "find",
        "Logical_Switch_Port",
        &format!("external_ids:courier-host={mark}"),
    ]);
    assert!(left.trim().is_empty(), "no child port left: {left}");
    assert_eq!(
        nbctl(&[
            "--bare",
            "--columns=tag",
            "list",
            "Logical_Switch_Port",
            &foreign
        ])
        .trim(),
        "1",
        "the other child port is untouched"
    );
    assert_eq!(
        nbctl(&[
            "--columns=addresses,port_security",
            "list",
            "Logical_Switch_Port",
            &lsp_vm
        ]),
        vm_row_before,
        "the VM's port is unchanged"
    );
    drop(o);
    drop(host);
}
