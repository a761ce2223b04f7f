//! The OVN Northbound DB goes away under a running daemon: ADD and DEL fail with "try again
//! later" (11) and leave nothing half-done once OVN is back; the interrupted DEL is finished by
//! reconciliation without restarting the daemon.
mod common;
use std::time::{Duration, Instant};

use common::*;

const OVN_CTL: &str = "/usr/share/ovn/scripts/ovn-ctl";

/// Restarts the NB DB however the test ends.
struct NbBack;
impl Drop for NbBack {
    fn drop(&mut self) {
        let _ = sh(OVN_CTL, &["start_nb_ovsdb"]);
        let _ = sh(repo().join("scripts/ovn.sh").to_str().unwrap(), &["start"]);
    }
}

#[test]
fn nb_down_then_back() {
    if !env_ready("nb_down_then_back") {
        return;
    }
    let d = TestDaemon::start("nbdown");
    let net = unique("nbdown-net");
    d.create_network(&net, &subnet_for(9));
    let conf = d.netconf(&net, "1.1.0");
    let clean = world(&d);
    let a = Netns::new("nbdown-a");
    let b = Netns::new("nbdown-b");
    assert_eq!(d.cni("ADD", "a", &a.path(), "eth0", &conf).0, 0);

    let _back = NbBack;
    sh_ok(OVN_CTL, &["stop_nb_ovsdb"]);

    // ADD while NB is down: "try again later", and nothing created.
    let (code, out) = d.cni("ADD", "b", &b.path(), "eth0", &conf);
    assert_eq!((code, out["code"].as_u64()), (1, Some(11)), "{out}");
    assert!(!b.has_link("eth0"));
    // DEL while NB is down: fails (the LSP cannot be deleted), edge already gone.
    let (code, out) = d.cni("DEL", "a", &a.path(), "eth0", &conf);
    assert_eq!((code, out["code"].as_u64()), (1, Some(11)), "{out}");
    assert!(!a.has_link("eth0"), "edge is removed first");
    let (code, out) = d.cni("STATUS", "", "", "", &conf);
    assert_eq!(
        (code, out["code"].as_u64()),
        (1, Some(50)),
        "STATUS with the backend down: {out}"
    );
    let st = d.cli(&["status"]);
    assert!(
        !st.status.success(),
        "status must report the backend unreachable"
    );
    assert!(String::from_utf8_lossy(&st.stdout).contains("UNREACHABLE"));

    sh_ok(OVN_CTL, &["start_nb_ovsdb"]);
    // The daemon reconnects on its own. The runtime retries the failed ADD: it succeeds (the
    // failed attempt's leftover record is undone first, not reported as "already attached").
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (code, out) = d.cni("ADD", "b", &b.path(), "eth0", &conf);
        if code == 0 {
            break;
        }
        assert_eq!(
            out["code"], 11,
            "retry of ADD must only ever say try again later: {out}"
        );
        assert!(
            Instant::now() < deadline,
            "ADD never succeeded after NB came back\n{}",
            d.log()
        );
        std::thread::sleep(Duration::from_millis(300));
    }
    assert_eq!(d.cni("CHECK", "b", &b.path(), "eth0", &conf).0, 0);
    // Reconcile finishes the interrupted DEL of a.
    let (code, report) = d.api("POST", "/v1/reconcile", None);
    assert_eq!(code, 200, "{report}");
    assert_eq!(
        report["rolled_back"].as_array().map(Vec::len),
        Some(1),
        "{report}"
    );
    assert_eq!(d.cni("DEL", "b", &b.path(), "eth0", &conf).0, 0);
    assert_eq!(world(&d), clean);
    assert!(d.cli(&["network", "delete", &net]).status.success());
}

/// The daemon starts before OVN (boot order): it serves at once (backends connect in the
/// background), the OVN-direct backend answers "try again later" meanwhile — STATUS 50, ADD 11
/// — and it serves OVN networks once OVN is there.
#[test]
fn daemon_started_before_ovn_serves_and_waits_for_it() {
    if !env_ready("daemon_started_before_ovn_serves_and_waits_for_it") {
        return;
    }
    let _back = NbBack;
    sh_ok(OVN_CTL, &["stop_nb_ovsdb"]);
    let mut d = TestDaemon::launch("early", &[]);
    d.wait_ready(Duration::from_secs(15));
    let conf = d.netconf("any", "1.1.0");
    let (code, out) = d.cni("STATUS", "", "", "", &conf);
    assert_eq!((code, out["code"].as_u64()), (1, Some(50)), "{out}");
    assert!(out["msg"].as_str().unwrap_or("").contains("ovn"), "{out}");
    let ns = Netns::new("early");
    let (code, out) = d.cni("ADD", "early", &ns.path(), "eth0", &conf);
    assert_eq!(
        (code, out["code"].as_u64()),
        (1, Some(11)),
        "ADD before OVN: {out}"
    );
    assert!(d.log().contains("not reachable yet"), "{}", d.log());
    sh_ok(OVN_CTL, &["start_nb_ovsdb"]);
    assert!(
        eventually(Duration::from_secs(15), || d
            .cni("STATUS", "", "", "", &conf)
            .0
            == 0),
        "{}",
        d.log()
    );
    assert!(d.log().contains("reachable now"), "{}", d.log());
}
