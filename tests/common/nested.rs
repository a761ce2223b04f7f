//! Containers nested in a VM, for the tests that run on this host: the "VM" is a netns (or this
//! host's netns) whose interface is a veth on the real br-int bound to the VM's logical port.
use std::time::Duration;

use super::*;

/// A netns (named from `prefix`) whose `eth0` (`mac`, `cidr`) is a veth whose host end
/// `host_if` is a br-int port with `iface-id` = `iface_id`, TX checksum offload off on both
/// ends (the userspace datapath forwards partial checksums as they are).
pub fn netns_on_br_int(
    prefix: &str,
    host_if: &str,
    iface_id: &str,
    mac: &str,
    cidr: &str,
) -> Netns {
    let ns = Netns::new(prefix);
    let _ = sh("ip", &["link", "del", host_if]);
    sh_ok(
        "ip",
        &[
            "link", "add", host_if, "type", "veth", "peer", "name", "eth0", "netns", &ns.name,
        ],
    );
    let _ = sh("ethtool", &["-K", host_if, "tx", "off"]);
    sh_ok("ip", &["link", "set", host_if, "up"]);
    sh_ok(
        "ovs-vsctl",
        &[
            "add-port",
            "br-int",
            host_if,
            "--",
            "set",
            "Interface",
            host_if,
            &format!("external_ids:iface-id={iface_id}"),
        ],
    );
    ns.exec(&["ip", "link", "set", "eth0", "address", mac]);
    ns.exec(&["ip", "addr", "add", cidr, "dev", "eth0"]);
    ns.exec(&["ip", "link", "set", "eth0", "up"]);
    ns.exec(&["ip", "link", "set", "lo", "up"]);
    let _ = ns.exec(&["ethtool", "-K", "eth0", "tx", "off"]);
    ns
}

/// A netns with one interface `eth0` on the logical switch: a veth whose host end is a br-int
/// port bound to LSP `lsp` (static "MAC IP"); returns the netns. The LSP is made here.
pub struct Plugged {
    pub ns: Netns,
    pub lsp: String,
    host_if: String,
}

impl Plugged {
    pub fn new(
        prefix: &str,
        switch: &str,
        lsp: &str,
        mac: &str,
        ip: &str,
        prefix_len: u8,
    ) -> Plugged {
        let host_if = format!("nh{}", &lsp[lsp.len().saturating_sub(10)..]);
        let entry = format!("{mac} {ip}");
        nbctl(&["lsp-add", switch, lsp]);
        nbctl(&["lsp-set-addresses", lsp, &entry]);
        nbctl(&["lsp-set-port-security", lsp, &entry]);
        let ns = netns_on_br_int(prefix, &host_if, lsp, mac, &format!("{ip}/{prefix_len}"));
        assert!(
            eventually(Duration::from_secs(10), || nbctl(&[
                "get",
                "Logical_Switch_Port",
                lsp,
                "up"
            ])
            .trim()
                == "true"),
            "{lsp} did not come up"
        );
        Plugged {
            ns,
            lsp: lsp.to_string(),
            host_if,
        }
    }
}

impl Drop for Plugged {
    fn drop(&mut self) {
        let _ = sh(
            "ovs-vsctl",
            &["--if-exists", "del-port", "br-int", &self.host_if],
        );
        let _ = sh("ip", &["link", "del", &self.host_if]);
        let _ = sh("ovn-nbctl", &["--if-exists", "lsp-del", &self.lsp]);
    }
}

pub fn port_security(lsp: &str) -> String {
    nbctl(&["get", "Logical_Switch_Port", lsp, "port_security"])
}

pub fn addresses(lsp: &str) -> String {
    nbctl(&["get", "Logical_Switch_Port", lsp, "addresses"])
}

/// This host's netns as the "VM" (for a daemon serving veth-ovs and nested containers side by
/// side, or Docker's nested containers): its interface on the VM's port is `master`, one end of
/// a veth whose other end is on br-int with `iface-id` = the VM's LSP `lsp` (made here, with
/// static "MAC IP" in addresses and port security). `master` has the VM's MAC but not its IP
/// (this host's stack would answer ARP for it on every interface, the veth-ovs ones too), so
/// Courier finds the VM's port by MAC. Changes only `master`'s ARP settings, not host-wide ones.
pub struct HostVm {
    pub master: String,
    uplink: String,
    pub lsp: String,
}

impl HostVm {
    /// The name `master` will have (a daemon is given it before the VM exists).
    pub fn master_name(tag: &str) -> String {
        format!("{tag}m{}", std::process::id())
    }

    pub fn new(switch: &str, tag: &str, mac: &str, ip: &str) -> HostVm {
        let pid = std::process::id();
        let vm = HostVm {
            master: Self::master_name(tag),
            uplink: format!("{tag}u{pid}"),
            lsp: format!("{tag}-vm-{pid}"),
        };
        let entry = format!("{mac} {ip}");
        nbctl(&["lsp-add", switch, &vm.lsp]);
        nbctl(&["lsp-set-addresses", &vm.lsp, &entry]);
        nbctl(&["lsp-set-port-security", &vm.lsp, &entry]);
        sh_ok(
            "ip",
            &[
                "link", "add", &vm.master, "type", "veth", "peer", "name", &vm.uplink,
            ],
        );
        for (k, v) in [("arp_ignore", "1"), ("arp_announce", "2")] {
            sh_ok(
                "sysctl",
                &["-qw", &format!("net.ipv4.conf.{}.{k}={v}", vm.master)],
            );
        }
        sh_ok("ip", &["link", "set", &vm.master, "address", mac]);
        sh_ok(
            "ip",
            &["addr", "add", &format!("{ip}/24"), "dev", &vm.master],
        );
        for i in [&vm.master, &vm.uplink] {
            let _ = sh("ethtool", &["-K", i, "tx", "off"]);
            sh_ok("ip", &["link", "set", i, "up"]);
        }
        sh_ok(
            "ovs-vsctl",
            &[
                "add-port",
                "br-int",
                &vm.uplink,
                "--",
                "set",
                "Interface",
                &vm.uplink,
                &format!("external_ids:iface-id={}", vm.lsp),
            ],
        );
        assert!(
            eventually(Duration::from_secs(10), || nbctl(&[
                "get",
                "Logical_Switch_Port",
                &vm.lsp,
                "up"
            ])
            .trim()
                == "true"),
            "{} did not come up",
            vm.lsp
        );
        vm
    }
}

impl Drop for HostVm {
    fn drop(&mut self) {
        let _ = sh(
            "ovs-vsctl",
            &["--if-exists", "del-port", "br-int", &self.uplink],
        );
        let _ = sh("ip", &["link", "del", &self.uplink]);
        let _ = sh("ovn-nbctl", &["--if-exists", "lsp-del", &self.lsp]);
    }
}

/// Deletes logical switch `.0` (and its ports) when dropped, pass or fail.
pub struct DeleteSwitch(pub String);

impl Drop for DeleteSwitch {
    fn drop(&mut self) {
        let _ = sh("ovn-nbctl", &["--if-exists", "ls-del", &self.0]);
    }
}
