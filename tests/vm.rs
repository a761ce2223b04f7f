//! QEMU guest tests: a stock Debian kernel (with 802.1Q, ipvlan, macvlan, openvswitch — this
//! host's kernel lacks them) booted under TCG by `tests/vm/guest.sh`, which runs one bash
//! scenario from `tests/vm/scenarios/` inside the guest. The guest's eth1 is the "VM port": a
//! host tap on the host's br-int bound to the VM's logical switch port; its eth0 is QEMU user
//! networking, where the host's 127.0.0.1:PORT is 10.0.2.2:PORT.
//!
//! The tests are `#[ignore]`d so that `scripts/test.sh` (cargo test --workspace) does not boot
//! guests; `scripts/vm-test.sh` runs them (`--include-ignored`), a CI stage of its own. Needs
//! root, OVN (scripts/ovn.sh), /dev/net/tun, and QEMU ≥ 8 (guest.sh installs QEMU 10 from
//! bookworm-backports when missing), and for the `*_through_neutron` tests Neutron + Keystone
//! (scripts/neutron.sh, started when not running); otherwise the tests are reported skipped.
mod common;
use common::*;

use serde_json::{json, Value};
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

    /// Asserts the scenario exited 0 and said every one of `steps`.
    fn assert_passed(&self, steps: &[&str]) {
        assert_eq!(self.code, 0, "{}", self.explain());
        for said in steps {
            assert!(self.stdout.contains(said), "{said}:\n{}", self.explain());
        }
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
        remove_tap_and_veth(&self.tap, &self.veth);
    }
}

/// Removes the VM port's tap and a host port's veth (and their br-int ports), if there.
fn remove_tap_and_veth(tap: &str, veth: &str) {
    for p in [tap, veth] {
        run_quiet("ovs-vsctl", &["--if-exists", "del-port", "br-int", p]);
    }
    run_quiet("ip", &["tuntap", "del", "dev", tap, "mode", "tap"]);
    run_quiet("ip", &["link", "del", veth]);
}

/// A host veth end on br-int (a [`host_port`]'s), removed with its OVS port on drop.
struct BrIntPort(String);

impl Drop for BrIntPort {
    fn drop(&mut self) {
        remove_tap_and_veth("", &self.0);
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

/// A Connection row for the host's NB (ptcp:6641:127.0.0.1) or SB (ptcp:6642:127.0.0.1),
/// removed on drop if we made it.
struct NbTcpListener {
    ctl: &'static str,
    global: &'static str,
    made: Option<String>,
}

impl NbTcpListener {
    fn ensure() -> NbTcpListener {
        Self::ensure_on("ovn-nbctl", "NB_Global", 6641)
    }

    /// The Southbound DB's listener (what a nested or SR-IOV Courier in the guest reads).
    fn ensure_sb() -> NbTcpListener {
        Self::ensure_on("ovn-sbctl", "SB_Global", 6642)
    }

    fn ensure_on(ctl: &'static str, global: &'static str, port: u16) -> NbTcpListener {
        let target = format!("ptcp:{port}:127.0.0.1");
        let ctl_out = |args: &[&str]| {
            let out = sh(ctl, args);
            assert!(
                out.status.success(),
                "{ctl} {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            String::from_utf8_lossy(&out.stdout).to_string()
        };
        let targets = ctl_out(&["--bare", "--columns=target", "list", "Connection"]);
        let made = if targets.split_whitespace().any(|t| t == target) {
            None
        } else {
            // A row of our own, added to the global row's set: the existing rows are left as
            // they are (`set-connection` would replace them all).
            let uuid = ctl_out(&[
                "--",
                "--id=@c",
                "create",
                "Connection",
                &format!("target=\"{target}\""),
                "--",
                "add",
                global,
                ".",
                "connections",
                "@c",
            ]);
            Some(uuid.trim().to_string())
        };
        let l = NbTcpListener { ctl, global, made };
        let addr = format!("127.0.0.1:{port}");
        let listening = eventually(Duration::from_secs(10), || {
            std::net::TcpStream::connect_timeout(&addr.parse().unwrap(), Duration::from_millis(200))
                .is_ok()
        });
        assert!(listening, "{global} does not listen on {addr}");
        l
    }
}

impl Drop for NbTcpListener {
    fn drop(&mut self) {
        if let Some(uuid) = &self.made {
            // Connection is not a root table: dropping the reference deletes the row.
            run_quiet(self.ctl, &["remove", self.global, ".", "connections", uuid]);
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
    run.assert_passed(&[
        "dropped without a pair",
        "reachable with the pair",
        "dropped again after detach",
        "__ok__",
    ]);
    assert_eq!(
        nbctl(&["get", "Logical_Switch_Port", &lsp_vm, "port_security"]),
        security_before,
        "detach removed exactly its pair"
    );
    let left = ports_of_mark(&format!("it-vm-ipv-{pid}"));
    assert!(left.trim().is_empty(), "no reservation port left: {left}");
    drop(o);
    drop(host);
}

/// Nested ipvlan and macvlan in the guest on a VM port whose `port_security` is *empty* (open:
/// a cloud port with port security off). The first container's pair must not turn it into an
/// allow-list without the VM's own address: with an ipvlan container attached, then with a
/// macvlan one (one after the other: the kernel gives a master links of one kind only), the VM
/// still reaches a peer on its switch, the container reaches it, the port stays open meanwhile
/// (the pair goes into `addresses` only), and after the detaches the VM port is as it was
/// (port_security empty, addresses its own) and no reservation port is left.
///
/// Host-wide side effect: the NB's TCP listener on 127.0.0.1:6641 while it runs (see above).
#[test]
#[ignore = "QEMU guest test: run by scripts/vm-test.sh"]
fn guest_nested_containers_on_an_open_vm_port() {
    let test = "guest_nested_containers_on_an_open_vm_port";
    if !guest_ready(test) {
        return;
    }
    let _nb = NbTcpListener::ensure();
    let pid = std::process::id();
    let host = TestDaemon::start("vm-open-host");
    let net = unique("vm-open");
    let subnet = subnet_for(96);
    host.create_network(&net, &subnet);
    let base = subnet.trim_end_matches(".0/24");
    let o = Objects {
        ls: net.clone(),
        tap: format!("vmtapo{pid}"),
        veth: format!("vmho{pid}"),
    };
    let (lsp_vm, lsp_host) = (unique("vm-open-port"), unique("vm-open-peer"));
    let (vm_ip, host_ip) = (format!("{base}.10"), format!("{base}.3"));
    let (vm_mac, host_mac) = ("02:c0:00:00:60:0a", "02:c0:00:00:60:03");
    let vm_addr = format!("{vm_mac} {vm_ip}");
    let host_addr = format!("{host_mac} {host_ip}");
    // The VM's port: its address, and no port security.
    nbctl(&[
        "lsp-add",
        &net,
        &lsp_vm,
        "--",
        "lsp-set-addresses",
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
    let _ns = host_port("vm-open-h", &o.veth, &lsp_host, host_mac, &host_ip);
    let mark = format!("it-vm-open-{pid}");
    let vm_env = vec![
        ("VM_TAP", o.tap.clone()),
        ("VM_LSP", lsp_vm.clone()),
        ("VM_MAC", vm_mac.to_string()),
        ("VM_IP", vm_ip.clone()),
        ("VM_PREFIX", "24".to_string()),
        ("VM_NET", net.clone()),
        ("VM_HOST_IP", host_ip.clone()),
        ("VM_NB_REMOTE", "tcp:10.0.2.2:6641".to_string()),
        ("VM_FREE_IP", format!("{base}.77")),
        ("VM_HOST_MARK", mark.clone()),
    ];
    plug_vm_port(&vm_env, &[&lsp_vm, &lsp_host]);
    let get = |col: &str| {
        nbctl(&["get", "Logical_Switch_Port", &lsp_vm, col])
            .trim()
            .to_string()
    };
    assert_eq!(get("port_security"), "[]");
    let addresses_before = get("addresses");
    // (kind, ip, port_security, addresses) while each container was attached.
    let mut checks: Vec<(String, String, String, String)> = Vec::new();
    let run = run_guest(scenario("nested-open.sh").as_str(), &[], &vm_env, |line| {
        if let Some(rest) = line.strip_prefix("__check__ ") {
            let (kind, ip) = rest.split_once(' ').unwrap_or((rest, "?"));
            checks.push((
                kind.to_string(),
                ip.to_string(),
                get("port_security"),
                get("addresses"),
            ));
        }
    });
    let mut steps = vec!["the VM reaches its switch (open port)".to_string()];
    for kind in ["ipvlan", "macvlan"] {
        steps.push(format!("the {kind} container reaches the switch"));
        steps.push(format!(
            "the VM reaches its switch with an {kind} container"
        ));
        steps.push(format!(
            "the VM reaches its switch after the {kind} container's detach"
        ));
    }
    steps.push("__ok__".into());
    run.assert_passed(&steps.iter().map(String::as_str).collect::<Vec<_>>());
    assert_eq!(checks.len(), 2, "{checks:?}");
    for (kind, ip, security, addresses) in &checks {
        assert_eq!(
            security, "[]",
            "{kind}: the open port stayed open while attached"
        );
        assert!(
            addresses.contains(&format!("{ip}\"")),
            "{kind}: its address is on the VM's port: {addresses}"
        );
    }
    assert_eq!(get("port_security"), "[]", "still open after the detaches");
    assert_eq!(get("addresses"), addresses_before, "addresses as they were");
    let left = ports_of_mark(&mark);
    assert!(left.trim().is_empty(), "no reservation port left: {left}");
    drop(o);
    drop(host);
}

/// Nested VLAN on OVN direct, in the guest: each container's port is a child of the VM's port
/// (`parent_name` + a tag unique under it), its interface an 802.1Q sub-interface of the VM's
/// trunk NIC. A child port someone else made (tag 1) is read back, so Courier never hands out
/// its tag; a tag with no child reaches nothing; detach frees the tag.
///
/// And a sub-interface left in a container's netns never keeps its tag taken (vlan.sh with
/// VM_LEFTOVERS): detach removes it after the container renamed it and changed its MAC (on the
/// old main the next attach with that tag failed: EEXIST); after kill -9 and the state removed,
/// reconcile removes those of the lost records (named netns, one only a process holds) and
/// never a VLAN link on the VM's NIC that Courier did not make; a tag held by such a link makes
/// the attach that meets it fail naming it, and the next one skip it.
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

/// What vlan.sh says when VM_LEFTOVERS is set.
const LEFTOVER_STEPS: &[&str] = &[
    "detach removed the renamed sub-interface",
    "reconcile removed the sub-interfaces of lost records",
    "a tag held on eth1 is skipped",
    "leftovers done",
];

/// Asserts that a vlan.sh / vlan-ovs.sh run passed (exit 0 and every step said so, and
/// `more`) and returns its attaches: ("NETNS TAG IP", TAG) per `__attached__` line.
fn vlan_scenario_passed(run: &GuestRun, more: &[&str]) -> Vec<(String, u64)> {
    let mut steps = vec![
        "a wrong tag reaches nothing",
        "both containers reach the switch",
        "and each other",
        "detach freed the tag",
        "a detached child's tag reaches nothing",
        "__ok__",
    ];
    steps.extend_from_slice(more);
    run.assert_passed(&steps);
    run.stdout
        .lines()
        .filter_map(|l| l.strip_prefix("__attached__ "))
        .map(|rest| {
            let tag = rest
                .split_whitespace()
                .nth(1)
                .and_then(|t| t.parse().ok())
                .unwrap_or(0);
            (rest.to_string(), tag)
        })
        .collect()
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
    // The leftovers steps, once (on OVN direct with the vlan binding): a kernel matter.
    let leftovers = scenario_name == "vlan.sh";
    let mut vm_env = vm_env;
    if leftovers {
        vm_env.push(("VM_LEFTOVERS", "1".to_string()));
    }
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
        let run = run_guest(scenario(scenario_name).as_str(), &[], &vm_env, |_| {});
        done.store(true, std::sync::atomic::Ordering::Relaxed);
        run
    });
    let attached = vlan_scenario_passed(&run, if leftovers { LEFTOVER_STEPS } else { &[] });
    let seen = seen.into_inner().unwrap_or_else(|p| p.into_inner());
    if leftovers {
        // c1, c2, c3; c2 again; c4, the process's netns; c3, c2, c4 again; c5.
        assert_eq!(attached.len(), 10, "{attached:?}");
    } else {
        assert_eq!(attached.len(), 3, "{attached:?}");
        assert_eq!(seen.len(), 3, "one child port per attach: {seen:?}");
    }
    for (said, tag) in &attached {
        assert!(
            seen.iter().any(|(_, t)| u64::from(*t) == *tag),
            "no child LSP of {lsp_vm} with tag {tag} for {said}: {seen:?}"
        );
    }
    let left = ports_of_mark(&mark);
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

// ---------- through Neutron ----------

/// The demo member's password (scripts/neutron.sh): the tenant's credentials Courier uses inside
/// the VM. Passed to the guest in its environment, never printed.
const DEMO_PASSWORD: &str = "courier-demo-secret";

/// A Neutron network of the demo project (made by a host daemon with the demo member's
/// credentials, so the tenant inside the VM owns it) with two ports bound to this host's chassis
/// (`binding:host_id` = the local chassis hostname, so the real ovn-controller binds them and
/// they go ACTIVE): the VM's port (its iface-id = the port id on the guest's tap; fixed IP .10)
/// and a peer (.3) in a host netns on a veth to br-int. Both in a security group of their own
/// that lets IPv4 in, so the traffic assertions test port security (the pairs), not the demo
/// project's default group. Everything the test made in Neutron carries `tag`; removed on drop.
struct NeutronVmNet {
    n: NeutronEnv,
    host: Option<TestDaemon>,
    net: String,
    net_id: String,
    project: String,
    tag: String,
    sg: String,
    vm: Value,
    peer: Value,
    base: String,
    tap: String,
    veth: String,
    peer_ns: Option<Netns>,
}

impl NeutronVmNet {
    fn new(test: &str, short: &str, subnet_index: u8) -> Option<NeutronVmNet> {
        if !guest_ready(test) {
            return None;
        }
        let n = NeutronEnv::get(test)?;
        let pid = std::process::id();
        let tag = unique(&format!("vmneu{short}"));
        let host = neutron_daemon(
            &format!("vm-neu{short}-host"),
            &n,
            &[("COURIER_NEUTRON_CLOUD", "courier-demo")],
        );
        let net = unique(&format!("vm-neu{short}"));
        let subnet = subnet_for(subnet_index);
        let out = host.cli(&[
            "network",
            "create",
            &net,
            "--backend",
            "neutron",
            "--subnet",
            &subnet,
        ]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let found = n
            .api("GET", &format!("/networks?tags=courier:network:{net}"))
            .1;
        let net_id = found["networks"][0]["id"]
            .as_str()
            .expect("the Courier network in Neutron")
            .to_string();
        let project = found["networks"][0]["project_id"]
            .as_str()
            .expect("its project")
            .to_string();
        let mut v = NeutronVmNet {
            n,
            host: Some(host),
            net,
            net_id,
            project,
            tag,
            sg: String::new(),
            vm: Value::Null,
            peer: Value::Null,
            base: subnet.trim_end_matches(".0/24").to_string(),
            tap: format!("vmtapn{short}{pid}"),
            veth: format!("vmhn{short}{pid}"),
            peer_ns: None,
        };
        v.remove_host_objects(); // leftovers of a crashed run with this pid
        let (code, sg) = v.n.call(
            "POST",
            "/security-groups",
            Some(json!({"security_group": {"name": v.tag, "project_id": v.project}})),
        );
        assert_eq!(code, 201, "security group: {sg}");
        v.sg = sg["security_group"]["id"].as_str().unwrap().to_string();
        v.n.api("PUT", &format!("/security-groups/{}/tags/{}", v.sg, v.tag));
        let (code, r) = v.n.call(
            "POST",
            "/security-group-rules",
            Some(json!({"security_group_rule": {"security_group_id": v.sg,
                "project_id": v.project, "direction": "ingress", "ethertype": "IPv4"}})),
        );
        assert_eq!(code, 201, "security group rule: {r}");
        v.vm = v.bound_port("vm", ".10");
        v.peer = v.bound_port("peer", ".3");
        let peer_id = v.peer["id"].as_str().unwrap().to_string();
        let peer_mac = v.peer["mac_address"].as_str().unwrap().to_string();
        v.peer_ns = Some(host_port(
            &format!("vm-neu{short}-h"),
            &v.veth,
            &peer_id,
            &peer_mac,
            &v.peer_ip(),
        ));
        Some(v)
    }

    /// A port on the network in the demo project, bound to this host, in the test's group.
    fn bound_port(&self, name: &str, host_part: &str) -> Value {
        self.new_port(
            name,
            host_part,
            json!({"device_owner": "compute:nova", "device_id": format!("{}-{name}", self.tag),
                "binding:host_id": self.n.host_id}),
        )
    }

    /// A port on the network in the demo project, in the test's group, with the fields `more`.
    fn new_port(&self, name: &str, host_part: &str, more: Value) -> Value {
        let mut port = json!({"network_id": self.net_id, "project_id": self.project,
            "name": format!("{}-{name}", self.tag), "security_groups": [self.sg],
            "fixed_ips": [{"ip_address": format!("{}{host_part}", self.base)}]});
        if let (Some(p), Some(m)) = (port.as_object_mut(), more.as_object()) {
            p.extend(m.clone());
        }
        let (code, p) = self.n.call("POST", "/ports", Some(json!({ "port": port })));
        assert_eq!(code, 201, "{name} port: {p}");
        let id = p["port"]["id"].as_str().unwrap().to_string();
        self.n.api("PUT", &format!("/ports/{id}/tags/{}", self.tag));
        p["port"].clone()
    }

    fn vm_id(&self) -> String {
        self.vm["id"].as_str().unwrap().to_string()
    }

    fn vm_ip(&self) -> String {
        format!("{}.10", self.base)
    }

    fn peer_ip(&self) -> String {
        format!("{}.3", self.base)
    }

    fn port(&self, id: &str) -> Value {
        self.n.api("GET", &format!("/ports/{id}")).1["port"].clone()
    }

    /// The VM's port as Neutron has it now.
    fn vm_now(&self) -> Value {
        self.port(&self.vm_id())
    }

    /// Neutron ports carrying the guest daemon's host tag.
    fn courier_ports(&self, mark: &str) -> Vec<Value> {
        self.n
            .api("GET", &format!("/ports?tags=courier:host:{mark}"))
            .1["ports"]
            .as_array()
            .cloned()
            .unwrap_or_default()
    }

    /// The trunks whose parent is the VM's port.
    fn vm_trunks(&self) -> Vec<Value> {
        self.n
            .api("GET", &format!("/trunks?port_id={}", self.vm_id()))
            .1["trunks"]
            .as_array()
            .cloned()
            .unwrap_or_default()
    }

    /// The guest's environment: the VM port, the network, the peer, the tenant's credentials
    /// (Keystone and Neutron at 10.0.2.2, the host's 127.0.0.1 seen from the guest) and the
    /// guest daemon's host mark `mark`.
    fn guest_env(&self, mark: &str) -> Vec<(&'static str, String)> {
        vec![
            ("VM_TAP", self.tap.clone()),
            ("VM_LSP", self.vm_id()),
            (
                "VM_MAC",
                self.vm["mac_address"].as_str().unwrap().to_string(),
            ),
            ("VM_IP", self.vm_ip()),
            ("VM_PREFIX", "24".to_string()),
            ("VM_NET", self.net.clone()),
            ("VM_HOST_IP", self.peer_ip()),
            ("VM_FREE_IP", format!("{}.250", self.base)),
            ("VM_HOST_MARK", mark.to_string()),
            ("VM_OS_AUTH_URL", "http://10.0.2.2:5000/v3".to_string()),
            ("VM_OS_USERNAME", "demo".to_string()),
            ("VM_OS_PASSWORD", DEMO_PASSWORD.to_string()),
            ("VM_OS_PROJECT_NAME", "demo".to_string()),
            ("VM_OS_NETWORK_ENDPOINT", "http://10.0.2.2:9696".to_string()),
        ]
    }

    /// Plugs the VM's tap and waits until both ports are ACTIVE (bound by ovn-controller).
    fn plug(&self, vm_env: &[(&str, String)]) {
        plug_vm_port(vm_env, &[]);
        for id in [self.vm_id(), self.peer["id"].as_str().unwrap().to_string()] {
            assert!(
                eventually(Duration::from_secs(30), || self.port(&id)["status"]
                    == "ACTIVE"),
                "port {id} did not become ACTIVE: {}",
                self.port(&id)
            );
        }
    }

    fn remove_host_objects(&self) {
        remove_tap_and_veth(&self.tap, &self.veth);
    }
}

impl Drop for NeutronVmNet {
    fn drop(&mut self) {
        self.remove_host_objects();
        self.peer_ns = None;
        if !self.vm.is_null() {
            for t in self.vm_trunks() {
                let id = t["id"].as_str().unwrap_or("").to_string();
                let subs: Vec<Value> = t["sub_ports"]
                    .as_array()
                    .cloned()
                    .unwrap_or_default()
                    .iter()
                    .map(|s| json!({"port_id": s["port_id"]}))
                    .collect();
                if !subs.is_empty() {
                    self.n.call(
                        "PUT",
                        &format!("/trunks/{id}/remove_subports"),
                        Some(json!({"sub_ports": subs})),
                    );
                }
                if self.n.api("DELETE", &format!("/trunks/{id}")).0 != 204 {
                    // A trunk whose parent is bound may be refused: unbind the parent first.
                    self.n.call(
                        "PUT",
                        &format!("/ports/{}", self.vm_id()),
                        Some(json!({"port": {"binding:host_id": "", "device_id": ""}})),
                    );
                    self.n.api("DELETE", &format!("/trunks/{id}"));
                }
            }
        }
        for p in self
            .n
            .api("GET", &format!("/ports?network_id={}", self.net_id))
            .1["ports"]
            .as_array()
            .cloned()
            .unwrap_or_default()
        {
            if !p["device_owner"]
                .as_str()
                .unwrap_or("")
                .starts_with("network:")
            {
                self.n.api(
                    "DELETE",
                    &format!("/ports/{}", p["id"].as_str().unwrap_or("")),
                );
            }
        }
        if !self.sg.is_empty() {
            self.n
                .api("DELETE", &format!("/security-groups/{}", self.sg));
        }
        if let Some(host) = self.host.take() {
            let _ = host.cli(&["network", "delete", &self.net]);
        }
    }
}

/// Runs `run` (a guest) while a thread calls `poll` every `every` and keeps what it returns:
/// the guest's lines reach the host late and in batches, so what the backend had while the
/// guest ran is watched, not asked on each line.
fn watching<T: Send>(
    every: Duration,
    poll: impl Fn() -> T + Sync,
    run: impl FnOnce() -> GuestRun,
) -> (Vec<T>, GuestRun) {
    let seen = std::sync::Mutex::new(Vec::new());
    let done = std::sync::atomic::AtomicBool::new(false);
    let run = std::thread::scope(|s| {
        s.spawn(|| {
            while !done.load(std::sync::atomic::Ordering::Relaxed) {
                let v = poll();
                seen.lock().unwrap_or_else(|p| p.into_inner()).push(v);
                std::thread::sleep(every);
            }
        });
        let run = run();
        done.store(true, std::sync::atomic::Ordering::Relaxed);
        run
    });
    (seen.into_inner().unwrap_or_else(|p| p.into_inner()), run)
}

/// The IP addresses in a port's allowed_address_pairs.
fn pair_ips(port: &Value) -> std::collections::BTreeSet<String> {
    port["allowed_address_pairs"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|p| p["ip_address"].as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default()
}

/// The `__timing__ WHAT MS` lines a scenario printed, for the test's log.
fn timings(run: &GuestRun) -> Vec<String> {
    run.stdout
        .lines()
        .filter_map(|l| l.strip_prefix("__timing__ ").map(String::from))
        .collect()
}

/// Nested ipvlan through Neutron, in the guest: the VM's port is a real Neutron port (ML2/OVN,
/// bound to this host's chassis) on the guest's tap, Courier in the VM uses the Neutron backend
/// with the tenant's credentials (a clouds.yaml in the guest: Keystone at 10.0.2.2:5000, the
/// network endpoint overridden to 10.0.2.2:9696, since the catalog says 127.0.0.1). The
/// container's address is reachable only while its IP-only pair is on the VM port's
/// `allowed_address_pairs`: dropped before (an ipvlan by hand), through after attach, dropped
/// again after detach (tests/vm/scenarios/ipvlan.sh, the same as on OVN direct); while attached
/// the peer reaches the container too (resolving its address by ARP first). On the host: the
/// pair was on the VM's port while the guest ran, and is gone after; no Courier port is left.
#[test]
#[ignore = "QEMU guest test: run by scripts/vm-test.sh"]
fn guest_nested_ipvlan_through_neutron() {
    let test = "guest_nested_ipvlan_through_neutron";
    let Some(v) = NeutronVmNet::new(test, "i", 95) else {
        return;
    };
    let mark = format!("it-vm-neui-{}", std::process::id());
    let mut vm_env = v.guest_env(&mark);
    vm_env.push(("VM_AWAIT_ECHO", "3".to_string()));
    v.plug(&vm_env);
    assert_eq!(v.vm_now()["allowed_address_pairs"], json!([]));
    let mut pinged_back = None;
    let (seen, run) = watching(
        Duration::from_millis(200),
        || pair_ips(&v.vm_now()),
        || {
            run_guest(scenario("ipvlan.sh").as_str(), &[], &vm_env, |line| {
                if let Some(ip) = line.strip_prefix("__await_echo__ ") {
                    // The peer resolves the container's address anew (ARP), then pings it.
                    let ns = v.peer_ns.as_ref().expect("the peer");
                    ns.exec(&["ip", "neigh", "flush", "all"]);
                    let out = ns.exec(&["ping", "-c", "3", "-i", "0.3", "-W", "2", ip.trim()]);
                    let said = String::from_utf8_lossy(&out.stdout).into_owned();
                    println!("peer -> container: {said}");
                    pinged_back = Some(said);
                }
            })
        },
    );
    run.assert_passed(&[
        "dropped without a pair",
        "reachable with the pair",
        "the peer reaches the container",
        "dropped again after detach",
        "__ok__",
    ]);
    let back = pinged_back.expect("the scenario never waited for the peer's ping");
    assert!(
        back.contains(", 0% packet loss"),
        "peer -> container ping failed:\n{back}"
    );
    let attached = run
        .stdout
        .lines()
        .find_map(|l| l.strip_prefix("__attached__ "))
        .expect("the attached address")
        .trim()
        .to_string();
    assert!(
        seen.iter().any(|s| s.contains(&attached)),
        "{attached} was never in the VM port's allowed_address_pairs ({} looks): {seen:?}",
        seen.len()
    );
    assert!(
        seen.iter().all(|s| s.iter().all(|ip| ip == &attached)),
        "no other pair: {seen:?}"
    );
    assert_eq!(
        v.vm_now()["allowed_address_pairs"],
        json!([]),
        "detach removed its pair"
    );
    let left = v.courier_ports(&mark);
    assert!(left.is_empty(), "no Courier port left: {left:?}");
    eprintln!("{test}: {:?}", timings(&run));
}

/// Nested VLAN through Neutron, in the guest: each container's port is a trunk subport
/// (`segmentation_type vlan`) of the VM's Neutron port, its interface an 802.1Q sub-interface of
/// the guest's trunk NIC (tests/vm/scenarios/vlan.sh, the same as on OVN direct). The VM's port
/// already has a trunk with someone else's subport on VLAN 1: the allocator skips that tag. On
/// the host: subports appeared on the VM's trunk with the tags the guest printed; afterwards no
/// Courier port is left and the trunk (not Courier's: it stays, the backend's rule) has only the
/// other subport.
#[test]
#[ignore = "QEMU guest test: run by scripts/vm-test.sh"]
fn guest_nested_vlan_through_neutron() {
    nested_vlan_through_neutron("guest_nested_vlan_through_neutron", true, 96);
}

/// The same on a VM port with no trunk: Courier makes one (tagged `courier:created`) for the
/// first child, and deletes it with its last subport.
#[test]
#[ignore = "QEMU guest test: run by scripts/vm-test.sh"]
fn guest_nested_vlan_through_neutron_makes_the_trunk() {
    nested_vlan_through_neutron(
        "guest_nested_vlan_through_neutron_makes_the_trunk",
        false,
        98,
    );
}

/// Nested VLAN through Neutron in the guest (see above); `foreign`: the VM's port has someone
/// else's trunk with a subport on VLAN 1, else no trunk.
fn nested_vlan_through_neutron(test: &str, foreign: bool, subnet_index: u8) {
    let short = if foreign { "v" } else { "t" };
    let Some(v) = NeutronVmNet::new(test, short, subnet_index) else {
        return;
    };
    let mark = format!("it-vm-neu{short}-{}", std::process::id());
    let mut vm_env = v.guest_env(&mark);
    let mut other_id = String::new();
    let mut trunk_id = String::new();
    if foreign {
        // Someone else's child port: a subport (VLAN 1) of a trunk they made on the VM's port.
        let other = v.new_port("other", ".201", json!({}));
        other_id = other["id"].as_str().unwrap().to_string();
        let (code, t) = v.n.call(
            "POST",
            "/trunks",
            Some(
                json!({"trunk": {"port_id": v.vm_id(), "project_id": v.project,
                "name": v.tag, "sub_ports": [{"port_id": other_id,
                "segmentation_type": "vlan", "segmentation_id": 1}]}}),
            ),
        );
        assert_eq!(code, 201, "the VM's trunk with another subport: {t}");
        trunk_id = t["trunk"]["id"].as_str().unwrap().to_string();
        vm_env.push(("VM_TAKEN_TAG", "1".to_string()));
    } else {
        // No VLAN is taken: the scenario's check that the taken one is skipped has nothing to
        // find (the allocator starts at 1).
        vm_env.push(("VM_TAKEN_TAG", "4094".to_string()));
    }
    v.plug(&vm_env);
    let subports = |t: &Value| -> std::collections::BTreeSet<(String, u64)> {
        t["sub_ports"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|s| {
                        Some((
                            s["port_id"].as_str()?.to_string(),
                            s["segmentation_id"].as_u64()?,
                        ))
                    })
                    .collect()
            })
            .unwrap_or_default()
    };
    // Each look: the VM port's trunks (id, Courier made it) and their subports.
    let (looks, run) = watching(
        Duration::from_millis(200),
        || {
            v.vm_trunks()
                .iter()
                .map(|t| {
                    let made = t["tags"]
                        .as_array()
                        .is_some_and(|a| a.iter().any(|x| x == "courier:created"));
                    (
                        t["id"].as_str().unwrap_or("").to_string(),
                        made,
                        subports(t),
                    )
                })
                .collect::<Vec<_>>()
        },
        || run_guest(scenario("vlan.sh").as_str(), &[], &vm_env, |_| {}),
    );
    let attached = vlan_scenario_passed(&run, &[]);
    let trunks_seen: std::collections::BTreeSet<(String, bool)> = looks
        .iter()
        .flatten()
        .map(|(id, made, _)| (id.clone(), *made))
        .collect();
    if foreign {
        assert_eq!(
            trunks_seen,
            [(trunk_id.clone(), false)].into_iter().collect(),
            "Courier used the VM's trunk, made none"
        );
    } else {
        // Made, then tagged (two calls): a look may fall between them.
        let ids: std::collections::BTreeSet<&String> =
            trunks_seen.iter().map(|(id, _)| id).collect();
        assert_eq!(ids.len(), 1, "one trunk: {trunks_seen:?}");
        assert!(
            trunks_seen.iter().any(|(_, made)| *made),
            "tagged courier:created: {trunks_seen:?}"
        );
    }
    let seen: std::collections::BTreeSet<(String, u64)> = looks
        .into_iter()
        .flatten()
        .flat_map(|(_, _, subs)| subs)
        .filter(|(id, _)| id != &other_id)
        .collect();
    assert_eq!(attached.len(), 3, "{attached:?}");
    assert_eq!(seen.len(), 3, "one subport per attach: {seen:?}");
    for (said, tag) in &attached {
        if foreign {
            assert_ne!(*tag, 1, "the other subport's VLAN was skipped: {said}");
        }
        assert!(
            seen.iter().any(|(_, t)| t == tag),
            "no subport on the VM's trunk with VLAN {tag} for {said}: {seen:?}"
        );
    }
    let left = v.courier_ports(&mark);
    assert!(left.is_empty(), "no child port left: {left:?}");
    for (id, _) in &seen {
        assert_eq!(v.n.api("GET", &format!("/ports/{id}")).0, 404, "{id} gone");
    }
    let trunks = v.vm_trunks();
    if foreign {
        assert_eq!(trunks.len(), 1, "{trunks:?}");
        assert_eq!(trunks[0]["id"], trunk_id.as_str());
        assert_eq!(
            subports(&trunks[0]),
            [(other_id.clone(), 1)].into_iter().collect(),
            "the other subport is untouched and alone"
        );
    } else {
        assert!(
            trunks.is_empty(),
            "the trunk Courier made went with its last subport: {trunks:?}"
        );
    }
    assert_eq!(v.vm_now()["allowed_address_pairs"], json!([]));
    eprintln!("{test}: {:?}", timings(&run));
}

/// 100 (VM_MANY, from COURIER_VM_MANY) concurrent ipvlan attaches on one VM port through the
/// guest daemon, Neutron IP-only pairs (revision-checked read-modify-write, 412 retried): all
/// 100 addresses are on the VM port's allowed_address_pairs at once (watched from the host)
/// and every container reaches the peer; then 100 concurrent detaches leave no pair and no
/// Courier port (tests/vm/scenarios/ipvlan-many.sh, which prints how long both took).
#[test]
#[ignore = "QEMU guest test: run by scripts/vm-test.sh"]
fn guest_nested_ipvlan_100_through_neutron() {
    let test = "guest_nested_ipvlan_100_through_neutron";
    let Some(v) = NeutronVmNet::new(test, "m", 97) else {
        return;
    };
    let many: usize = std::env::var("COURIER_VM_MANY")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(100);
    let mark = format!("it-vm-neum-{}", std::process::id());
    let mut vm_env = v.guest_env(&mark);
    vm_env.push(("VM_MANY", many.to_string()));
    vm_env.push(("VM_TIMEOUT", "900".to_string()));
    v.plug(&vm_env);
    let (seen, run) = watching(
        Duration::from_millis(500),
        || pair_ips(&v.vm_now()),
        || run_guest(scenario("ipvlan-many.sh").as_str(), &[], &vm_env, |_| {}),
    );
    run.assert_passed(&[
        "__attached_all__",
        "every container reaches the peer",
        "__detached_all__",
        "__ok__",
    ]);
    let attached: std::collections::BTreeSet<String> = run
        .stdout
        .lines()
        .filter_map(|l| l.strip_prefix("__attached__ "))
        .filter_map(|l| l.split_whitespace().nth(1).map(String::from))
        .collect();
    assert_eq!(attached.len(), many, "distinct addresses: {attached:?}");
    let most = seen
        .iter()
        .map(|s| s.intersection(&attached).count())
        .max()
        .unwrap_or(0);
    assert_eq!(
        most,
        many,
        "all {many} pairs on the VM's port at once (at most {most} seen in {} looks)",
        seen.len()
    );
    assert_eq!(
        v.vm_now()["allowed_address_pairs"],
        json!([]),
        "all pairs removed"
    );
    let left = v.courier_ports(&mark);
    assert!(left.is_empty(), "no Courier port left: {} left", left.len());
    eprintln!("{test}: {many} containers: {:?}", timings(&run));
}

/// The host side of an SR-IOV NIC in the guest, removed on drop: a netdev-datapath OVS bridge
/// `bridge` holding the igb PF's tap `tap` (a trunk: the VFs' frames arrive 802.1Q-tagged),
/// mapped to physical network `physnet` for ovn-controller; this chassis marked as the host
/// of OVN external ports; the HA_Chassis_Group Courier makes for those, if it was not there.
///
/// Host-wide side effects while it lives: `external_ids:ovn-bridge-mappings` and
/// `ovn-cms-options` of the local Open_vSwitch (restored as they were on drop).
struct PhysicalNic {
    bridge: String,
    tap: String,
    mappings_before: Option<String>,
    cms_before: Option<String>,
    group_before: bool,
}

fn ovs_external_id(key: &str) -> Option<String> {
    let out = sh(
        "ovs-vsctl",
        &[
            "--if-exists",
            "get",
            "Open_vSwitch",
            ".",
            &format!("external_ids:{key}"),
        ],
    );
    let v = String::from_utf8_lossy(&out.stdout)
        .trim()
        .trim_matches('"')
        .to_string();
    (!v.is_empty()).then_some(v)
}

fn set_ovs_external_id(key: &str, value: Option<&str>) {
    match value {
        Some(v) => sh_ok(
            "ovs-vsctl",
            &[
                "set",
                "Open_vSwitch",
                ".",
                &format!("external_ids:{key}=\"{v}\""),
            ],
        ),
        None => sh_ok(
            "ovs-vsctl",
            &["remove", "Open_vSwitch", ".", "external_ids", key],
        ),
    };
}

impl PhysicalNic {
    fn new(bridge: &str, tap: &str, physnet: &str) -> PhysicalNic {
        let group_before = !nbctl(&[
            "--bare",
            "--columns=name",
            "find",
            "HA_Chassis_Group",
            "name=courier-extport",
        ])
        .trim()
        .is_empty();
        let nic = PhysicalNic {
            bridge: bridge.into(),
            tap: tap.into(),
            mappings_before: ovs_external_id("ovn-bridge-mappings"),
            cms_before: ovs_external_id("ovn-cms-options"),
            group_before,
        };
        nic.remove_bridge();
        sh_ok("ip", &["tuntap", "add", "dev", tap, "mode", "tap"]);
        sh_ok("ip", &["link", "set", tap, "up"]);
        sh_ok(
            "ovs-vsctl",
            &[
                "add-br",
                bridge,
                "--",
                "set",
                "Bridge",
                bridge,
                "datapath_type=netdev",
                "--",
                "add-port",
                bridge,
                tap,
            ],
        );
        sh_ok("ip", &["link", "set", bridge, "up"]);
        let mut mappings: Vec<String> = nic
            .mappings_before
            .iter()
            .flat_map(|m| m.split(',').map(String::from))
            .filter(|m| !m.is_empty())
            .collect();
        mappings.push(format!("{physnet}:{bridge}"));
        set_ovs_external_id("ovn-bridge-mappings", Some(&mappings.join(",")));
        let mut cms: Vec<String> = nic
            .cms_before
            .iter()
            .flat_map(|m| m.split(',').map(String::from))
            .filter(|m| !m.is_empty())
            .collect();
        if !cms.iter().any(|c| c == "enable-chassis-as-extport-host") {
            cms.push("enable-chassis-as-extport-host".into());
        }
        set_ovs_external_id("ovn-cms-options", Some(&cms.join(",")));
        // ovn-controller copies the options into its SB Chassis row.
        let marked = eventually(Duration::from_secs(15), || {
            String::from_utf8_lossy(
                &sh(
                    "ovn-sbctl",
                    &["--bare", "--columns=other_config", "list", "Chassis"],
                )
                .stdout,
            )
            .contains("enable-chassis-as-extport-host")
        });
        assert!(
            marked,
            "ovn-controller never marked this chassis as an external-port host"
        );
        nic
    }

    fn remove_bridge(&self) {
        run_quiet("ovs-vsctl", &["--if-exists", "del-br", &self.bridge]);
        run_quiet("ip", &["tuntap", "del", "dev", &self.tap, "mode", "tap"]);
    }
}

impl Drop for PhysicalNic {
    fn drop(&mut self) {
        set_ovs_external_id("ovn-bridge-mappings", self.mappings_before.as_deref());
        set_ovs_external_id("ovn-cms-options", self.cms_before.as_deref());
        self.remove_bridge();
        if !self.group_before {
            run_quiet(
                "ovn-nbctl",
                &["--if-exists", "ha-chassis-group-del", "courier-extport"],
            );
        }
    }
}

/// The host side of an SR-IOV guest test on OVN direct: the NB's and SB's TCP listeners, the
/// PF's tap on an OVS bridge mapped to a physical network of its own ([`PhysicalNic`]), a
/// Courier network (made by a host daemon) with a localnet port there (VLAN 100), and a veth
/// container on the host on that network (`host_ip`). Removed on drop, pass or fail.
struct SriovOvnRig {
    ns: Netns,
    o: Objects,
    /// Made the network; kept until the rig goes.
    _host: TestDaemon,
    nic: PhysicalNic,
    _sb: NbTcpListener,
    _nb: NbTcpListener,
    physnet: String,
    net: String,
    subnet: String,
    ln: String,
    lsp_host: String,
    host_ip: String,
    host_mac: String,
}

impl SriovOvnRig {
    /// `short` names this test's objects, `subnet_index` picks its subnet.
    fn new(short: &str, subnet_index: u8) -> SriovOvnRig {
        let nb = NbTcpListener::ensure();
        let sb = NbTcpListener::ensure_sb();
        let pid = std::process::id();
        let physnet = format!("srphys{short}{pid}");
        let nic = PhysicalNic::new(
            &format!("brsr{short}{}", pid % 100_000),
            &format!("vmtaps{short}{pid}"),
            &physnet,
        );
        let host = TestDaemon::start(&format!("vm-sriov{short}-host"));
        let net = unique(&format!("vm-sriov{short}"));
        let subnet = subnet_for(subnet_index);
        host.create_network(&net, &subnet);
        let base = subnet.trim_end_matches(".0/24");
        let o = Objects {
            ls: net.clone(),
            tap: format!("vmtapz{short}{pid}"),
            veth: format!("vmhs{short}{pid}"),
        };
        let ln = unique(&format!("vm-sriov{short}-ln"));
        let lsp_host = unique(&format!("vm-sriov{short}-host"));
        let host_ip = format!("{base}.3");
        let host_mac = format!("02:c0:00:00:{subnet_index:02x}:03");
        nbctl(&[
            "lsp-add",
            &net,
            &ln,
            "--",
            "lsp-set-type",
            &ln,
            "localnet",
            "--",
            "lsp-set-options",
            &ln,
            &format!("network_name={physnet}"),
            "--",
            "set",
            "Logical_Switch_Port",
            &ln,
            "tag=100",
            "--",
            "lsp-set-addresses",
            &ln,
            "unknown",
            "--",
            "lsp-add",
            &net,
            &lsp_host,
            "--",
            "lsp-set-addresses",
            &lsp_host,
            &format!("{host_mac} {host_ip}"),
        ]);
        let ns = host_port(
            &format!("vm-sriov{short}-h"),
            &o.veth,
            &lsp_host,
            &host_mac,
            &host_ip,
        );
        wait_up(&lsp_host);
        // ovn-controller patches br-int to the physical bridge for the localnet port.
        let patched = eventually(Duration::from_secs(15), || {
            String::from_utf8_lossy(&sh("ovs-vsctl", &["list-ports", &nic.bridge]).stdout)
                .contains("patch-")
        });
        assert!(
            patched,
            "no patch port from br-int to {} for the localnet port",
            nic.bridge
        );
        SriovOvnRig {
            ns,
            o,
            _host: host,
            nic,
            _sb: sb,
            _nb: nb,
            physnet,
            net,
            subnet,
            ln,
            lsp_host,
            host_ip,
            host_mac,
        }
    }

    /// The guest's environment for this rig: the PF on the rig's tap (its MAC from
    /// `subnet_index`), the network, the host container, the physnet and VLAN, the NB.
    fn guest_env(&self, subnet_index: u8, mark: &str) -> Vec<(&'static str, String)> {
        vec![
            ("VM_SRIOV_TAP", self.nic.tap.clone()),
            ("VM_SRIOV_MAC", format!("02:c0:00:00:{subnet_index:02x}:0f")),
            ("VM_NET", self.net.clone()),
            ("VM_SUBNET", self.subnet.clone()),
            ("VM_HOST_IP", self.host_ip.clone()),
            ("VM_PHYSNET", self.physnet.clone()),
            ("VM_VLAN", "100".to_string()),
            ("VM_NB_REMOTE", "tcp:10.0.2.2:6641".to_string()),
            ("VM_HOST_MARK", mark.to_string()),
        ]
    }

    /// What the host sees of the rig, for a failing scenario: the bridges' ports and flows,
    /// the external ports, and ovn-trace of the VF's first frames.
    fn diagnose(&self) {
        for (cmd, args) in [
            ("ovs-vsctl", vec!["list-ports", self.nic.bridge.as_str()]),
            ("ovs-ofctl", vec!["dump-ports", self.nic.bridge.as_str()]),
            ("ovs-ofctl", vec!["dump-flows", self.nic.bridge.as_str()]),
            ("ovn-sbctl", vec!["find", "Port_Binding", "type=external"]),
            ("ovn-nbctl", vec!["list", "HA_Chassis_Group"]),
            ("ovn-nbctl", vec!["show", self.net.as_str()]),
            ("ovs-ofctl", vec!["dump-ports", "br-int"]),
        ] {
            let out = sh(cmd, &args);
            eprintln!(
                "diag {cmd} {args:?}:\n{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let vf = nbctl(&[
            "--bare",
            "--columns=dynamic_addresses",
            "find",
            "Logical_Switch_Port",
            "type=external",
        ]);
        let mut w = vf.split_whitespace();
        if let (Some(vmac), Some(vip)) = (w.next(), w.next()) {
            let (ln, lsp_host, hip, hmac) =
                (&self.ln, &self.lsp_host, &self.host_ip, &self.host_mac);
            for flow in [
                format!("inport == \"{ln}\" && eth.src == {vmac} && eth.dst == {hmac} && ip4.src == {vip} && ip4.dst == {hip} && ip.ttl == 64 && icmp4.type == 8"),
                format!("inport == \"{lsp_host}\" && eth.src == {hmac} && eth.dst == {vmac} && ip4.src == {hip} && ip4.dst == {vip} && ip.ttl == 64 && icmp4.type == 0"),
                format!("inport == \"{ln}\" && eth.src == {vmac} && eth.dst == ff:ff:ff:ff:ff:ff && arp.op == 1 && arp.sha == {vmac} && arp.spa == {vip} && arp.tpa == {hip}"),
            ] {
                let out = sh("ovn-trace", &["--minimal", self.net.as_str(), &flow]);
                eprintln!("diag ovn-trace {flow}:\n{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
            }
        }
    }

    /// The host container pings `ip` (3 echoes); ping's output.
    fn ping_from_host(&self, ip: &str) -> String {
        String::from_utf8_lossy(
            &sh(
                "ip",
                &[
                    "netns",
                    "exec",
                    &self.ns.name,
                    "ping",
                    "-c",
                    "3",
                    "-W",
                    "3",
                    ip,
                ],
            )
            .stdout,
        )
        .to_string()
    }
}

/// The LSPs of the guest's Courier (host mark `mark`) left in the NB.
fn ports_of_mark(mark: &str) -> String {
    nbctl(&[
        "--bare",
        "--columns=name",
        "find",
        "Logical_Switch_Port",
        &format!("external_ids:courier-host={mark}"),
    ])
}

/// The `__timings__ NAME MS...` lines of a run: each name with its figures' statistics
/// (`courier bench`'s), printed as "TEST: NAME n=.. p50 .. p90 .. p99 .. max .. ms".
fn timing_series(test: &str, run: &GuestRun) -> Vec<(String, courier::bench::Stats)> {
    run.stdout
        .lines()
        .filter_map(|l| l.strip_prefix("__timings__ "))
        .map(|rest| {
            let mut w = rest.split_whitespace();
            let name = w.next().unwrap_or("?").to_string();
            let ms: Vec<Duration> = w
                .filter_map(|x| x.parse::<f64>().ok())
                .map(|x| Duration::from_secs_f64(x / 1000.0))
                .collect();
            let s = courier::bench::stats(ms, Duration::ZERO);
            println!(
                "{test}: {name} n={} p50 {:.1} p90 {:.1} p99 {:.1} max {:.1} ms",
                s.count, s.p50_ms, s.p90_ms, s.p99_ms, s.max_ms
            );
            (name, s)
        })
        .collect()
}

/// SR-IOV for real, in the guest: an igb PF (eth2) whose VFs are the pool
/// (`[sriov] physical_device_mappings = ["PHYSNET:eth2"]`); its host side is a tap on an OVS
/// bridge mapped to PHYSNET, and the Courier network has a localnet port there with VLAN 100.
/// Courier in the guest (OVN direct, the host's NB and SB over TCP) attaches containers with
/// the sriov binding: an OVN external port (this chassis hosts them) per VF, the VF's MAC and
/// VLAN set through the PF. The VF container and a veth container on the host ping both ways
/// and exchange TCP data over the logical network; two VF containers at once, the third
/// refused clearly with nothing changed; DEL after the netns is gone; kill -9 and restart
/// with a VF claimed (none lost, none handed out twice); 100 attach/detach cycles over the two
/// VFs; at the end every VF free and reset, and no port of the guest's host mark left.
///
/// Host-wide side effects: the NB's and SB's TCP listeners, and the local Open_vSwitch's
/// `ovn-bridge-mappings` and `ovn-cms-options` (see [`PhysicalNic`]), while it runs.
#[test]
#[ignore = "QEMU guest test: run by scripts/vm-test.sh"]
fn guest_sriov_vf_containers() {
    let test = "guest_sriov_vf_containers";
    if !guest_ready(test) {
        return;
    }
    let rig = SriovOvnRig::new("", 97);
    let pid = std::process::id();
    // The host container's TCP listener: what the VF container sends arrives here.
    let token = format!("{pid}");
    let listener = Command::new("ip")
        .args([
            "netns",
            "exec",
            &rig.ns.name,
            "timeout",
            "200",
            "nc",
            "-l",
            "5001",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("nc -l in the host netns");
    let mark = format!("it-vm-sriov-{pid}");
    let mut vm_env = rig.guest_env(97, &mark);
    vm_env.extend([
        ("VM_TCP_PORT", "5001".to_string()),
        ("VM_TOKEN", token.clone()),
        ("VM_CYCLES", "50".to_string()),
    ]);
    let mut ext_ports_seen = String::new();
    let mut pinged = String::new();
    let run = run_guest(scenario("sriov.sh").as_str(), &[], &vm_env, |line| {
        if line.starts_with("__attached__ c1 ") {
            ext_ports_seen = nbctl(&[
                "--bare",
                "--columns=type,ha_chassis_group",
                "find",
                "Logical_Switch_Port",
                &format!("external_ids:courier-host={mark}"),
            ]);
        }
        if line.starts_with("UNEXPECTED") || line.starts_with("__diag__") {
            rig.diagnose();
        }
        if let Some(ip) = line.strip_prefix("__await_echo__ ") {
            pinged = rig.ping_from_host(ip.trim());
        }
    });
    let timings = timings(&run);
    run.assert_passed(&[
        "the PF set the VF's MAC and VLAN",
        "the VF container reaches the host container",
        "the host container reaches the VF container",
        "pool exhausted: a clear error, nothing changed",
        "released with its netns already gone",
        "reconcile recovered the VF of a netns deleted while the daemon was down",
        "after kill -9 and restart: no VF lost, none handed out twice",
        "an ADD failed half way, then DEL: the VF home and reset",
        "CNI with deviceID: that VF, reachable, released",
        "courier status shows the pool",
        "100 attach/detach cycles on 2 VFs",
        "every VF free and reset",
        "__ok__",
    ]);
    println!("{test}: {}", timings.join("; "));
    timing_series(test, &run);
    assert!(
        ext_ports_seen.contains("external"),
        "the VF's port is not an OVN external port: {ext_ports_seen:?}"
    );
    assert!(
        pinged.contains(" 0% packet loss"),
        "host → VF container: {pinged}"
    );
    let got = listener.wait_with_output().expect("nc -l");
    assert!(
        String::from_utf8_lossy(&got.stdout).contains(&format!("courier-sriov-{token}")),
        "the VF container's TCP data never reached the host container: {:?}",
        String::from_utf8_lossy(&got.stdout)
    );
    let left = ports_of_mark(&mark);
    assert!(
        left.trim().is_empty(),
        "ports of the guest's Courier left: {left}"
    );
    drop(rig);
}

/// One daemon, every kind of container, in the guest (tests/vm/scenarios/sriov-mixed.sh, with
/// Docker's real dockerd in the guest): a VF container by the CLI, a Docker container on a VF
/// (a Docker network with `-o courier.binding=sriov`: Join hands Docker the VF's netdev as
/// `SrcName` and Docker moves it) and a macvlan container on the VM's port (eth1, a port of
/// the same logical switch) at once; each reaches the host container, the VF containers reach
/// the macvlan container and each other; `docker rm` gives the VF back reset and free. Then
/// the daemon again with sriov and vlan-ovs (a veth into the VM's own Open vSwitch): a veth
/// container reaches the host, and VF and veth attach/release times are measured side by
/// side in this one guest (p50/p99 printed, docs/performance.md). On the host: while the
/// three ran, the VF ports were OVN external ports and the macvlan's pair was on the VM's
/// port; after, no port of the guest's mark is left and the VM's port is as before.
///
/// Host-wide side effects: as [`guest_sriov_vf_containers`].
#[test]
#[ignore = "QEMU guest test: run by scripts/vm-test.sh"]
fn guest_sriov_beside_macvlan_docker_and_veth() {
    let test = "guest_sriov_beside_macvlan_docker_and_veth";
    if !guest_ready(test) {
        return;
    }
    let rig = SriovOvnRig::new("m", 99);
    let pid = std::process::id();
    let base = rig.subnet.trim_end_matches(".0/24").to_string();
    let lsp_vm = unique("vm-sriovm-port");
    let (vm_mac, vm_ip) = ("02:c0:00:00:63:0a".to_string(), format!("{base}.10"));
    let vm_addr = format!("{vm_mac} {vm_ip}");
    nbctl(&[
        "lsp-add",
        &rig.net,
        &lsp_vm,
        "--",
        "lsp-set-addresses",
        &lsp_vm,
        &vm_addr,
        "--",
        "lsp-set-port-security",
        &lsp_vm,
        &vm_addr,
    ]);
    let mark = format!("it-vm-sriovm-{pid}");
    let mut vm_env = rig.guest_env(99, &mark);
    vm_env.extend([
        ("VM_TAP", rig.o.tap.clone()),
        ("VM_LSP", lsp_vm.clone()),
        ("VM_MAC", vm_mac.clone()),
        ("VM_DOCKER", "1".to_string()),
        ("VM_MEM", "2048".to_string()),
        ("VM_CYCLES", "30".to_string()),
    ]);
    plug_vm_port(&vm_env, &[&lsp_vm]);
    let vm_security = || {
        nbctl(&["get", "Logical_Switch_Port", &lsp_vm, "port_security"])
            .trim()
            .to_string()
    };
    let security_before = vm_security();
    let (mut externals, mut security_with_macvlan) = (String::new(), String::new());
    let run = run_guest(scenario("sriov-mixed.sh").as_str(), &[], &vm_env, |line| {
        if line == "two VF containers and a macvlan container on one daemon" {
            externals = nbctl(&[
                "--bare",
                "--columns=type",
                "find",
                "Logical_Switch_Port",
                &format!("external_ids:courier-host={mark}"),
                "type=external",
            ]);
            security_with_macvlan = vm_security();
        }
        if line.starts_with("UNEXPECTED") {
            rig.diagnose();
        }
    });
    run.assert_passed(&[
        "dockerd runs in the guest",
        "the Docker container's eth0 is a VF",
        "two VF containers and a macvlan container on one daemon",
        "all three reach the host container",
        "the VF containers reach the macvlan container and each other",
        "docker rm gave the VF back: home, reset, free",
        "a veth container in this guest reaches the host container",
        "30 cycles of a VF and a veth",
        "every VF free and reset",
        "__ok__",
    ]);
    let series = timing_series(test, &run);
    assert_eq!(
        series.len(),
        6,
        "vf/veth attach/plug/release timings: {series:?}"
    );
    for (name, s) in &series {
        assert_eq!(
            s.count, 30,
            "{name}: one figure per cycle in the guest's log"
        );
    }
    let p50 = |name: &str| {
        series
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, s)| s.p50_ms)
    };
    for what in ["attach", "plug", "release"] {
        if let (Some(vf), Some(veth)) = (p50(&format!("vf-{what}")), p50(&format!("veth-{what}"))) {
            println!("{test}: {what} p50 VF / veth = {:.2}", vf / veth);
        }
    }
    assert_eq!(
        externals.split_whitespace().count(),
        2,
        "while two VF containers ran, their ports were not two OVN external ports: {externals:?}"
    );
    assert_ne!(
        security_with_macvlan, security_before,
        "the macvlan container's pair was not on the VM's port"
    );
    assert_eq!(vm_security(), security_before, "the VM's port as before");
    let left = ports_of_mark(&mark);
    assert!(
        left.trim().is_empty(),
        "ports of the guest's Courier left: {left}"
    );
    drop(rig);
}

/// A netdev of this host with a device behind it (`/sys/class/net/X/device`): what Neutron's
/// SR-IOV agent accepts as a PF. This host has no SR-IOV, so it has no VFs; the agent only
/// scans it (it configures a VF only when a port's MAC is on one of its own).
fn host_device_netdev() -> Option<String> {
    let mut names: Vec<String> = std::fs::read_dir("/sys/class/net")
        .ok()?
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().to_string())
        .filter(|n| std::path::Path::new(&format!("/sys/class/net/{n}/device")).is_dir())
        .collect();
    names.sort();
    names.into_iter().next()
}

/// The binding host the guest's Courier sends as `binding:host_id`, served by Neutron's SR-IOV
/// NIC agent (one fixed name: Neutron keeps every agent it ever saw as a row).
const SRIOV_AGENT_HOST: &str = "courier-sriov-guest";

/// SR-IOV through Neutron, in the guest: Neutron's real sriovnicswitch mechanism driver binds
/// the direct ports, with its real SR-IOV NIC agent (over RabbitMQ, `scripts/neutron.sh
/// sriov-agent`) registered as the guest's binding host. The agent runs on this host, where
/// no NIC has VFs (the guest's igb has them, and Neutron's Python agent does not run in the
/// busybox TCG guest): so the binding is Neutron's own (`vif_type hw_veb`, the VLAN in
/// `vif_details`), and ML2/OVN makes the port an OVN external port, but no agent sees the VF,
/// so Neutron keeps the port DOWN (the datapath does not depend on it: the test pings).
/// A Neutron VLAN network on `physnet1` (VLAN chosen by Neutron), a veth peer on the host, a
/// user's pre-created direct port; in the guest (tests/vm/scenarios/sriov-neutron.sh):
/// a Courier-made direct port on a VF pings the peer both ways, with the VLAN Neutron bound it
/// to; the user's port by id (its vnic_type chooses sriov) is reachable; both detached; a
/// binding host no agent serves is refused (binding_failed) with nothing left; and Docker (a
/// real dockerd in the guest) runs a container on the user's port by id (`--driver-opt
/// courier.port=ID` with its `--ip` and `--mac-address`, the Zun flow): on a VF, reachable,
/// the port given back on `docker rm`; and CNI (`CNI_ARGS` `PORT=ID`) the same. On the host:
/// each port as Neutron had it while bound (hw_veb, the VF's PCI address in binding:profile,
/// an external LSP); after, Courier's port gone, the user's given back unbound; the network's
/// ports as before.
///
/// Host-wide side effects: RabbitMQ, a neutron-rpc-server and the SR-IOV agent keep running
/// after it (`scripts/neutron.sh sriov-agent-stop`); ovn-bridge-mappings and ovn-cms-options
/// while it runs (see [`PhysicalNic`]).
#[test]
#[ignore = "QEMU guest test: run by scripts/vm-test.sh"]
fn guest_sriov_through_neutron() {
    let test = "guest_sriov_through_neutron";
    if !guest_ready(test) {
        return;
    }
    let Some(n) = NeutronEnv::get(test) else {
        return;
    };
    let Some(agent_pf) = host_device_netdev() else {
        skip(
            test,
            "no netdev of this host has a device (/sys/class/net/*/device) for Neutron's SR-IOV agent to scan",
        );
        return;
    };
    let physnet = "physnet1"; // scripts/neutron.sh: network_vlan_ranges physnet1:100:200
    let agent = Command::new(repo().join("scripts/neutron.sh"))
        .args([
            "sriov-agent",
            SRIOV_AGENT_HOST,
            &format!("{physnet}:{agent_pf}"),
        ])
        .output()
        .expect("scripts/neutron.sh sriov-agent");
    assert!(
        agent.status.success(),
        "scripts/neutron.sh sriov-agent: {}{}",
        String::from_utf8_lossy(&agent.stdout),
        String::from_utf8_lossy(&agent.stderr)
    );
    let pid = std::process::id();
    let nic = PhysicalNic::new(
        &format!("brsn{}", pid % 100_000),
        &format!("vmtapq{pid}"),
        physnet,
    );
    let subnet = subnet_for(98);
    let net = SriovNeutronNet::new(&n, &unique("vm-srneu"), subnet.clone());
    let veth = BrIntPort(format!("vmhq{pid}"));
    let peer = net.port(
        "peer",
        json!({"device_owner": "compute:nova", "binding:host_id": n.host_id,
            "security_groups": [net.sg, net.default_sg]}),
    );
    let peer_ip = peer["fixed_ips"][0]["ip_address"]
        .as_str()
        .unwrap()
        .to_string();
    let ns = host_port(
        "vm-srneu-h",
        &veth.0,
        peer["id"].as_str().unwrap(),
        peer["mac_address"].as_str().unwrap(),
        &peer_ip,
    );
    let patched = eventually(Duration::from_secs(30), || {
        n.api("GET", &format!("/ports/{}", peer["id"].as_str().unwrap()))
            .1["port"]["status"]
            == "ACTIVE"
            && String::from_utf8_lossy(&sh("ovs-vsctl", &["list-ports", &nic.bridge]).stdout)
                .contains("patch-")
    });
    assert!(
        patched,
        "the peer port is not ACTIVE, or no patch port from br-int to {} for the network's localnet port",
        nic.bridge
    );
    // The user's own port (the Zun flow): vnic_type direct, not bound yet.
    let user = net.port(
        "user",
        json!({"binding:vnic_type": "direct", "device_owner": "", "device_id": ""}),
    );
    let user_id = user["id"].as_str().unwrap().to_string();
    let ports_before = net.ports();
    let mark = format!("it-vm-srneu-{pid}");
    let vm_env = vec![
        ("VM_SRIOV_TAP", nic.tap.clone()),
        ("VM_SRIOV_MAC", "02:c0:00:00:62:0f".to_string()),
        ("VM_NET", net.id.clone()),
        ("VM_HOST_IP", peer_ip.clone()),
        ("VM_PHYSNET", physnet.to_string()),
        ("VM_VLAN", net.vlan.to_string()),
        ("VM_PORT_ID", user_id.clone()),
        (
            "VM_PORT_IP",
            user["fixed_ips"][0]["ip_address"]
                .as_str()
                .unwrap()
                .to_string(),
        ),
        (
            "VM_PORT_MAC",
            user["mac_address"].as_str().unwrap().to_string(),
        ),
        ("VM_SUBNET", subnet.clone()),
        ("VM_DOCKER", "1".to_string()),
        ("VM_MEM", "2048".to_string()),
        ("VM_HOST_MARK", mark.clone()),
        ("COURIER_NEUTRON_HOST_ID", SRIOV_AGENT_HOST.to_string()),
        ("VM_OS_AUTH_URL", "http://10.0.2.2:5000/v3".to_string()),
        ("VM_OS_USERNAME", "admin".to_string()),
        ("VM_OS_PASSWORD", ADMIN_PASSWORD.to_string()),
        ("VM_OS_PROJECT_NAME", "admin".to_string()),
        ("VM_OS_NETWORK_ENDPOINT", "http://10.0.2.2:9696".to_string()),
    ];
    // What Neutron and OVN had for each port while it was bound: (port, PCI the guest saw).
    let mut bound: Vec<(Value, String, String)> = Vec::new();
    let mut after_detach: Option<Value> = None;
    let mut after_docker: Option<Value> = None;
    let mut after_cni: Option<Value> = None;
    let mut pinged = String::new();
    let run = run_guest(
        scenario("sriov-neutron.sh").as_str(),
        &[],
        &vm_env,
        |line| {
            if let Some(rest) = line.strip_prefix("__bound__ ") {
                let w: Vec<&str> = rest.split_whitespace().collect();
                let (which, key, pci) = (
                    w[0],
                    w.get(1).copied().unwrap_or(""),
                    w.get(2).copied().unwrap_or(""),
                );
                let port = if which != "made" {
                    n.api("GET", &format!("/ports/{key}")).1["port"].clone()
                } else {
                    net.ports()
                        .into_iter()
                        .find(|p| p["fixed_ips"][0]["ip_address"] == key)
                        .unwrap_or(Value::Null)
                };
                let lsp = nbctl(&[
                    "--bare",
                    "--columns=type",
                    "find",
                    "Logical_Switch_Port",
                    &format!("name={}", port["id"].as_str().unwrap_or("none")),
                ]);
                bound.push((port, pci.to_string(), lsp.trim().to_string()));
            }
            if line.starts_with("__detached__") {
                after_detach = Some(n.api("GET", &format!("/ports/{user_id}")).1["port"].clone());
            }
            if line.starts_with("__docker_detached__") {
                after_docker = Some(n.api("GET", &format!("/ports/{user_id}")).1["port"].clone());
            }
            if line.starts_with("__cni_detached__") {
                after_cni = Some(n.api("GET", &format!("/ports/{user_id}")).1["port"].clone());
            }
            if let Some(ip) = line.strip_prefix("__await_echo__ ") {
                pinged = String::from_utf8_lossy(
                    &sh(
                        "ip",
                        &[
                            "netns",
                            "exec",
                            &ns.name,
                            "ping",
                            "-c",
                            "3",
                            "-W",
                            "3",
                            ip.trim(),
                        ],
                    )
                    .stdout,
                )
                .to_string();
            }
        },
    );
    println!("{test}: {}", timings(&run).join("; "));
    run.assert_passed(&[
        "the PF set the VLAN Neutron bound the port to",
        "the VF container reaches the host container through Neutron's network",
        "the host container reaches the VF container",
        "the user's direct port by id: on a VF, reachable",
        "both detached",
        "docker run on the user's direct port by id: on a VF, reachable",
        "CNI ADD of the user's direct port by id: on a VF, reachable, given back",
        "a host no SR-IOV agent serves: refused clearly, nothing left",
        "every VF free and reset",
        "__ok__",
    ]);
    assert!(
        pinged.contains(" 0% packet loss"),
        "host → VF container: {pinged}"
    );
    assert_eq!(
        bound.len(),
        4,
        "the guest bound two ports, the user's by the CLI, Docker and CNI: {bound:?}"
    );
    for (port, pci, lsp_type) in &bound {
        let what = format!("port as Neutron had it while bound: {port}");
        assert_eq!(port["binding:vnic_type"], "direct", "{what}");
        assert_eq!(port["binding:vif_type"], "hw_veb", "{what}");
        assert_eq!(
            port["binding:vif_details"]["vlan"],
            net.vlan.to_string(),
            "{what}"
        );
        assert_eq!(port["binding:host_id"], SRIOV_AGENT_HOST, "{what}");
        assert_eq!(
            port["binding:profile"]["physical_network"], physnet,
            "{what}"
        );
        assert_eq!(port["binding:profile"]["pci_slot"], pci.as_str(), "{what}");
        assert!(
            port["binding:profile"]["pci_vendor_info"]
                .as_str()
                .is_some_and(|v| v.len() == 9 && v.contains(':')),
            "{what}"
        );
        assert_eq!(lsp_type, "external", "ML2/OVN's LSP type for {what}");
    }
    for (by, given_back) in [
        (
            "the CLI",
            after_detach.expect("the user's port after detach"),
        ),
        (
            "Docker",
            after_docker.expect("the user's port after docker rm"),
        ),
        ("CNI", after_cni.expect("the user's port after CNI DEL")),
    ] {
        assert_eq!(
            given_back["binding:host_id"], "",
            "given back unbound by {by}: {given_back}"
        );
        assert_eq!(
            given_back["device_id"], "",
            "given back by {by}: {given_back}"
        );
        assert_eq!(
            given_back["binding:profile"],
            json!({}),
            "given back without the VF by {by}: {given_back}"
        );
    }
    let made: Vec<Value> = n
        .api("GET", &format!("/ports?description=courier:host:{mark}"))
        .1["ports"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert!(
        made.is_empty(),
        "ports of the guest's Courier left: {made:?}"
    );
    let ids = |ps: &[Value]| -> Vec<String> {
        let mut v: Vec<String> = ps.iter().map(|p| p["id"].to_string()).collect();
        v.sort();
        v
    };
    assert_eq!(
        ids(&net.ports()),
        ids(&ports_before),
        "the network's ports after the run are not those before it"
    );
    drop(ns);
    drop(veth);
    drop(net);
    drop(nic);
}

/// A Neutron VLAN network on physnet1 (admin project; the VLAN chosen by Neutron) with a /24,
/// and a security group that lets IPv4 in; every port on it and the group removed on drop.
struct SriovNeutronNet<'a> {
    n: &'a NeutronEnv,
    id: String,
    name: String,
    vlan: u64,
    sg: String,
    default_sg: String,
}

impl<'a> SriovNeutronNet<'a> {
    fn new(n: &'a NeutronEnv, name: &str, cidr: String) -> SriovNeutronNet<'a> {
        let (code, net) = n.call(
            "POST",
            "/networks",
            Some(
                json!({"network": {"name": name, "provider:network_type": "vlan",
                "provider:physical_network": "physnet1"}}),
            ),
        );
        assert_eq!(code, 201, "VLAN network: {net}");
        let id = net["network"]["id"].as_str().unwrap().to_string();
        let vlan = net["network"]["provider:segmentation_id"]
            .as_u64()
            .expect("a VLAN Neutron chose");
        let mut v = SriovNeutronNet {
            n,
            id,
            name: name.to_string(),
            vlan,
            sg: String::new(),
            default_sg: String::new(),
        };
        let (code, s) = n.call(
            "POST",
            "/subnets",
            Some(
                json!({"subnet": {"network_id": v.id, "cidr": cidr, "ip_version": 4,
                "name": name}}),
            ),
        );
        assert_eq!(code, 201, "subnet: {s}");
        let (code, sg) = n.call(
            "POST",
            "/security-groups",
            Some(json!({"security_group": {"name": name}})),
        );
        assert_eq!(code, 201, "security group: {sg}");
        v.sg = sg["security_group"]["id"].as_str().unwrap().to_string();
        let (code, r) = n.call(
            "POST",
            "/security-group-rules",
            Some(json!({"security_group_rule": {"security_group_id": v.sg,
                "direction": "ingress", "ethertype": "IPv4"}})),
        );
        assert_eq!(code, 201, "security group rule: {r}");
        let project = net["network"]["project_id"].as_str().unwrap_or("");
        v.default_sg = n
            .api(
                "GET",
                &format!("/security-groups?name=default&project_id={project}"),
            )
            .1["security_groups"][0]["id"]
            .as_str()
            .expect("the project's default group")
            .to_string();
        v
    }

    fn port(&self, name: &str, more: Value) -> Value {
        let mut port = json!({"network_id": self.id, "name": format!("{}-{name}", self.name),
            "security_groups": [self.sg]});
        if let (Some(p), Some(m)) = (port.as_object_mut(), more.as_object()) {
            p.extend(m.clone());
        }
        let (code, p) = self.n.call("POST", "/ports", Some(json!({ "port": port })));
        assert_eq!(code, 201, "{name} port: {p}");
        p["port"].clone()
    }

    /// The network's ports, Neutron's own (DHCP, metadata) included.
    fn ports(&self) -> Vec<Value> {
        self.n
            .api("GET", &format!("/ports?network_id={}", self.id))
            .1["ports"]
            .as_array()
            .cloned()
            .unwrap_or_default()
    }
}

impl Drop for SriovNeutronNet<'_> {
    fn drop(&mut self) {
        for p in self.ports() {
            if !p["device_owner"]
                .as_str()
                .unwrap_or("")
                .starts_with("network:")
            {
                self.n.api(
                    "DELETE",
                    &format!("/ports/{}", p["id"].as_str().unwrap_or("")),
                );
            }
        }
        self.n.api("DELETE", &format!("/networks/{}", self.id));
        if !self.sg.is_empty() {
            self.n
                .api("DELETE", &format!("/security-groups/{}", self.sg));
        }
    }
}
