//! A nested container's attach and detach wait until the hypervisor that hosts its VM (the
//! chassis binding the VM's port) has applied the change — not every chassis of the
//! deployment: a dead or slow hypervisor elsewhere must not delay them.
//!
//! Host-wide: the test adds a `Chassis_Private` row to this host's OVN Southbound DB — what a
//! dead hypervisor leaves: a chassis whose `nb_cfg` never advances — for the length of one
//! attach and one detach. Meanwhile NB_Global `hv_cfg` lags for every NB client on this host
//! (`ovn-nbctl --wait=hv` of other tests waits). The row is removed on drop, pass or fail, and
//! a row left by an earlier run that was killed is removed at the start.
mod common;
use std::time::{Duration, Instant};

use common::nested::*;
use common::*;
use serde_json::json;

const STALE_PREFIX: &str = "courier-stale-chassis-";

/// A hypervisor that never reports: a Chassis_Private row whose nb_cfg stays 1. Removed on drop.
struct StaleChassis {
    uuid: String,
}

impl StaleChassis {
    fn new() -> StaleChassis {
        // Rows of earlier runs killed before their drop.
        let rows = sh_ok(
            "ovn-sbctl",
            &["--bare", "--columns=_uuid,name", "list", "Chassis_Private"],
        );
        let words: Vec<&str> = rows.split_whitespace().collect();
        for w in words.chunks(2) {
            if let [uuid, name] = w {
                if name.starts_with(STALE_PREFIX) {
                    let _ = sh(
                        "ovn-sbctl",
                        &["--if-exists", "destroy", "Chassis_Private", uuid],
                    );
                }
            }
        }
        let name = format!("{STALE_PREFIX}{}", std::process::id());
        let uuid = sh_ok(
            "ovn-sbctl",
            &[
                "create",
                "Chassis_Private",
                &format!("name={name}"),
                "nb_cfg=1",
            ],
        )
        .trim()
        .to_string();
        StaleChassis { uuid }
    }
}

impl Drop for StaleChassis {
    fn drop(&mut self) {
        let _ = sh(
            "ovn-sbctl",
            &["--if-exists", "destroy", "Chassis_Private", &self.uuid],
        );
    }
}

/// This host's chassis name (its OVS system-id): the hypervisor of the test's "VM".
fn host_chassis() -> String {
    sh_ok(
        "ovs-vsctl",
        &["get", "Open_vSwitch", ".", "external_ids:system-id"],
    )
    .trim()
    .trim_matches('"')
    .to_string()
}

/// With a stale chassis in the SB, a nested macvlan attach and its detach each take well under
/// the 5 s bound and warn of no lagging hypervisor (before: each waited the full 5 s for NB
/// `hv_cfg`, which the stale chassis holds back, and warned); the attach waited for this
/// host's chassis (its log names it), and the container reaches its switch.
#[test]
fn a_nested_attach_waits_for_its_vms_hypervisor_only() {
    let t = "a_nested_attach_waits_for_its_vms_hypervisor_only";
    if !env_ready(t) {
        return;
    }
    let pid = std::process::id();
    let net = unique("nchas");
    let subnet = subnet_for(83);
    let base = subnet.trim_end_matches(".0/24").to_string();
    let host = TestDaemon::start("nchas-host");
    host.create_network(&net, &subnet);
    let _switch = DeleteSwitch(net.clone());
    let vm_ip = format!("{base}.10");
    let vm = Plugged::new(
        "nchvm",
        &net,
        &format!("nchvm-{pid}"),
        &format!("0a:00:00:{:02x}:83:01", pid % 256),
        &vm_ip,
        24,
    );
    vm.ns
        .exec(&["sysctl", "-qw", "net.ipv4.conf.all.arp_ignore=1"]);
    vm.ns
        .exec(&["sysctl", "-qw", "net.ipv4.conf.all.arp_announce=2"]);
    let peer = Plugged::new(
        "nchpeer",
        &net,
        &format!("nchpeer-{pid}"),
        &format!("0a:00:00:{:02x}:83:02", pid % 256),
        &format!("{base}.11"),
        24,
    );
    let d = TestDaemon::start_in_netns(
        "nchas-vm",
        &vm.ns.name,
        &[
            ("COURIER_BINDINGS", "macvlan"),
            ("COURIER_NESTED_MASTER", "eth0"),
            ("COURIER_OVS_REMOTE", "unix:/nonexistent/db.sock"),
        ],
    );
    wait_backends(&d);
    let c = Netns::new("nchc");
    let lagging = "not every hypervisor";

    let stale = StaleChassis::new();
    let t0 = Instant::now();
    let (code, att) = d.api(
        "POST",
        "/v1/attachments",
        Some(
            json!({"container_id": "nchc", "ifname": "eth0", "netns": c.path(),
                    "network": net, "binding": "macvlan"}),
        ),
    );
    let attach_took = t0.elapsed();
    assert_eq!(code, 200, "{att}\n{}", d.log());
    let t1 = Instant::now();
    let (code, out) = d.api(
        "POST",
        "/v1/attachments/detach",
        Some(json!({"container_id": "nchc", "ifname": "eth0"})),
    );
    let detach_took = t1.elapsed();
    drop(stale);
    assert_eq!(code, 200, "{out}");
    let log = d.log();
    eprintln!("nested attach {attach_took:?}, detach {detach_took:?} with a stale chassis");
    assert!(
        !log.contains(lagging),
        "the nested attach or detach waited for the stale chassis:\n{log}"
    );
    assert!(
        attach_took < Duration::from_secs(4) && detach_took < Duration::from_secs(4),
        "attach {attach_took:?}, detach {detach_took:?}"
    );
    let waited: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("applied by the VM's hypervisor"))
        .collect();
    assert_eq!(waited.len(), 2, "one wait per attach and detach:\n{log}");
    assert!(
        waited.iter().all(|l| l.contains(&host_chassis())),
        "it waited for this host's chassis: {waited:?}"
    );

    // Attached again without the stale chassis: the container reaches its switch at once.
    let (code, att) = d.api(
        "POST",
        "/v1/attachments",
        Some(
            json!({"container_id": "nchc", "ifname": "eth0", "netns": c.path(),
                    "network": net, "binding": "macvlan"}),
        ),
    );
    assert_eq!(code, 200, "{att}");
    assert!(
        c.ping(&format!("{base}.11")),
        "the nested container reaches the switch"
    );
    let ip = att["port"]["ips"][0]
        .as_str()
        .unwrap()
        .split('/')
        .next()
        .unwrap();
    assert!(peer.ns.ping(ip));
    let (code, out) = d.api(
        "POST",
        "/v1/attachments/detach",
        Some(json!({"container_id": "nchc", "ifname": "eth0"})),
    );
    assert_eq!(code, 200, "{out}");
    assert!(owned(&d).is_empty(), "{:?}", owned(&d));
}
