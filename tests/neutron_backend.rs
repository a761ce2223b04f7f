//! `NeutronBackend` against the real Neutron (ML2/OVN on this host's OVN) that
//! scripts/neutron.sh starts: nested vlan children as trunk subports (and in the
//! binding:profile form), the trunk Courier makes for them and when it goes, and children of
//! one VM coming and going at once (issue 20, item 2). Skipped (reported) when Neutron or the
//! OVN NB is not there; a failure under COURIER_REQUIRE_ENV=1.
mod common;
use std::time::{Duration, Instant};

use common::*;
use courier::backend::neutron::{self, NeutronBackend, VlanChildren};
use courier::backend::{Backend, OwnerMark, PortRef, PortRequest, PortRole, VlanChildPorts};
use courier::model::Network;
use courier_openstack::{self as os, Neutron, PortCreate, Query, SubnetCreate};

/// The admin cloud of scripts/neutron.sh (its clouds.yaml).
fn cloud(n: &NeutronEnv) -> os::CloudConfig {
    let clouds = n.clouds.clone();
    os::CloudConfig::resolve(Some("courier-admin"), &move |k: &str| {
        (k == "OS_CLIENT_CONFIG_FILE").then(|| clouds.clone())
    })
    .expect("cloud")
}

/// The test Neutron and the backend under test (its host id unused: vlan children are bound
/// with the VM's port); None (skipped, or a failure under COURIER_REQUIRE_ENV=1) when Neutron
/// or the OVN NB is not there.
async fn backend(test: &str) -> Option<(NeutronEnv, NeutronBackend)> {
    let n = NeutronEnv::get(test)?;
    let b = NeutronBackend::connect(cloud(&n), "unused-host")
        .await
        .expect("connect");
    Some((n, b))
}

/// A Neutron client of the test's own.
async fn api(n: &NeutronEnv) -> Neutron {
    Neutron::connect(cloud(n)).await.expect("connect")
}

fn lsp(id: &str, col: &str) -> String {
    let o = std::process::Command::new("ovn-nbctl")
        .args(["--timeout=5", "get", "Logical_Switch_Port", id, col])
        .output()
        .expect("ovn-nbctl");
    String::from_utf8_lossy(&o.stdout)
        .trim()
        .trim_matches('"')
        .to_string()
}

/// A nested vlan child: a trunk subport of the VM's port (the trunk made for it), the LSP
/// with parent_name and tag in the OVN NB; child_tags reads back a subport someone else
/// made; deleting leaves the subport out of the trunk, the port gone and, once the last
/// subport left, the trunk Courier made gone too.
#[tokio::test]
async fn child_port_is_a_trunk_subport() {
    let t = "child_port_is_a_trunk_subport";
    let Some((n, b)) = backend(t).await else {
        return;
    };
    let tag = format!(
        "courier-ut-{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis())
            .unwrap_or(0)
    );
    let r = tokio::spawn(child_port_body(api(&n).await, tag.clone(), b)).await;
    cleanup(&n, &tag).await;
    if let Err(e) = r {
        std::panic::resume_unwind(e.into_panic());
    }
}

/// A unique tag for one test's Neutron resources.
fn test_tag() -> String {
    format!(
        "courier-ut-{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis())
            .unwrap_or(0)
    )
}

/// Removes, whatever happened, what a test made: the ports tagged `tag` or made by Courier
/// for host `<tag>-host`, the trunks they are the parents of, and the networks tagged `tag`.
async fn cleanup(n: &NeutronEnv, tag: &str) {
    let api = api(n).await;
    let q = Query::new().tags(&[tag]);
    let made = Query::new().description(neutron::owner_description(&format!("{tag}-host")));
    for p in api.list_ports(&q).await.unwrap_or_default() {
        for tr in api
            .list_trunks(&Query::new().port_id(p.id.as_str()))
            .await
            .unwrap_or_default()
        {
            let subs: Vec<&str> = tr.sub_ports.iter().map(|s| s.port_id.as_str()).collect();
            let _ = api.remove_subports(&tr.id, &subs).await;
            let _ = api.delete_trunk(&tr.id).await;
        }
    }
    for q in [&q, &made] {
        for p in api.list_ports(q).await.unwrap_or_default() {
            let _ = api.delete_port(&p.id).await;
        }
    }
    for n in api.list_networks(&q).await.unwrap_or_default() {
        let _ = api.delete_network(&n.id).await;
    }
}

/// A network with one subnet and a VM port on it, all tagged `tag`.
async fn vm_on_a_network(
    api: &Neutron,
    tag: &str,
    cidr: &str,
) -> (os::Network, os::Subnet, os::Port) {
    let tags = vec![tag.to_string()];
    let net = api
        .create_network(&os::NetworkCreate {
            name: Some(tag.to_string()),
            tags: tags.clone(),
            ..Default::default()
        })
        .await
        .unwrap();
    let sub = api
        .create_subnet(&SubnetCreate {
            network_id: net.id.clone(),
            cidr: cidr.into(),
            ip_version: 4,
            enable_dhcp: Some(false),
            ..Default::default()
        })
        .await
        .unwrap();
    let vm = api
        .create_port(&PortCreate {
            network_id: net.id.clone(),
            name: Some(format!("{tag}-vm")),
            tags,
            ..Default::default()
        })
        .await
        .unwrap();
    (net, sub, vm)
}

/// A vlan child of `vm`'s port for attachment `<tag>-<name>`, owned by host `<tag>-host`.
fn child_request(tag: &str, name: &str, network: Network, vm: &str, vlan: u16) -> PortRequest {
    PortRequest {
        name: format!("{tag}-{name}"),
        network,
        owner: OwnerMark {
            host: format!("{tag}-host"),
            attachment: format!("{tag}-{name}"),
        },
        ips: vec![],
        mac: None,
        security_groups: vec![],
        role: PortRole::Child {
            parent: vm.to_string(),
            tag: vlan,
        },
        pairs_on: None,
    }
}

/// Children of one VM come and go at once (issue 20, item 2): in each of 60 rounds the
/// VM's only child is deleted — its trunk, which Courier made, goes with its last subport —
/// while another child is made, started a little later each round to sweep the window
/// between the old child leaving the trunk and the trunk's delete. Every child made must be
/// a subport of a trunk of the VM's port when its create returns (Neutron deletes a trunk
/// that just got a subport: without the per-VM lock a child loses its trunk).
#[tokio::test]
async fn children_coming_and_going_at_once_keep_their_trunk() {
    let t = "children_coming_and_going_at_once_keep_their_trunk";
    let Some((n, b)) = backend(t).await else {
        return;
    };
    let tag = test_tag();
    let r = tokio::spawn(children_race_body(api(&n).await, tag.clone(), b)).await;
    cleanup(&n, &tag).await;
    if let Err(e) = r {
        std::panic::resume_unwind(e.into_panic());
    }
}

async fn children_race_body(api: Neutron, tag: String, b: NeutronBackend) {
    let b = std::sync::Arc::new(b);
    let (net, sub, vm) = vm_on_a_network(&api, &tag, "10.96.0.0/24").await;
    let network = NeutronBackend::to_network(&tag, &net, &[sub]);
    let host = format!("{tag}-host");
    let mut old = b
        .create_ports(&[child_request(&tag, "c0", network.clone(), &vm.id, 100)])
        .await
        .unwrap()
        .pop()
        .unwrap();
    let mut lost = Vec::new();
    for round in 1..=60u16 {
        let (b1, b2) = (b.clone(), b.clone());
        let pr = PortRef {
            id: Some(old.id.clone()),
            name: old.name.clone(),
        };
        let host1 = host.clone();
        let gone = tokio::spawn(async move { b1.delete_port(&pr, &host1).await });
        let req = child_request(
            &tag,
            &format!("c{round}"),
            network.clone(),
            &vm.id,
            100 + round % 2 * 50 + round,
        );
        let delay = Duration::from_millis(u64::from(round % 12) * 25);
        let made = tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            b2.create_ports(&[req]).await
        });
        gone.await.unwrap().unwrap();
        let child = made.await.unwrap().unwrap().pop().unwrap();
        let trunks = api
            .list_trunks(&Query::new().port_id(vm.id.as_str()))
            .await
            .unwrap();
        if !trunks
            .iter()
            .any(|t| t.sub_ports.iter().any(|s| s.port_id == child.id))
        {
            lost.push(format!(
                "round {round}: child {} in no trunk ({} trunks)",
                child.id,
                trunks.len()
            ));
            // Join it again so the next round starts from one child on a trunk.
            let pr = PortRef {
                id: Some(child.id.clone()),
                name: child.name.clone(),
            };
            b.delete_port(&pr, &host).await.unwrap();
            old = b
                .create_ports(&[child_request(
                    &tag,
                    &format!("r{round}"),
                    network.clone(),
                    &vm.id,
                    300 + round,
                )])
                .await
                .unwrap()
                .pop()
                .unwrap();
            continue;
        }
        old = child;
    }
    assert!(lost.is_empty(), "children lost their trunk: {lost:#?}");
    let pr = PortRef {
        id: Some(old.id.clone()),
        name: old.name.clone(),
    };
    assert!(b.delete_port(&pr, &host).await.unwrap());
    assert!(
        api.list_trunks(&Query::new().port_id(vm.id.as_str()))
            .await
            .unwrap()
            .is_empty(),
        "the trunk Courier made goes with the last child"
    );
}

async fn child_port_body(api: Neutron, tag: String, b: NeutronBackend) {
    let tags = vec![tag.clone()];
    let net = api
        .create_network(&os::NetworkCreate {
            name: Some(tag.clone()),
            tags: tags.clone(),
            ..Default::default()
        })
        .await
        .unwrap();
    let sub = api
        .create_subnet(&SubnetCreate {
            network_id: net.id.clone(),
            cidr: "10.95.0.0/24".into(),
            ip_version: 4,
            enable_dhcp: Some(false),
            ..Default::default()
        })
        .await
        .unwrap();
    let vm = api
        .create_port(&PortCreate {
            network_id: net.id.clone(),
            name: Some(format!("{tag}-vm")),
            tags: tags.clone(),
            ..Default::default()
        })
        .await
        .unwrap();
    let network = NeutronBackend::to_network(&tag, &net, &[sub]);
    let host = format!("{tag}-host");
    // A vlan child of the VM's port, owned by `host`.
    let child_req = |name: &str, attachment: &str, network: Network, vlan: u16| PortRequest {
        name: format!("{tag}-{name}"),
        network,
        owner: OwnerMark {
            host: host.clone(),
            attachment: format!("{tag}-{attachment}"),
        },
        ips: vec![],
        mac: None,
        security_groups: vec![],
        role: PortRole::Child {
            parent: vm.id.clone(),
            tag: vlan,
        },
        pairs_on: None,
    };
    let req = child_req("child", "att", network, 101);
    let t0 = Instant::now();
    let child = b.create_ports(&[req]).await.unwrap().pop().unwrap();
    let create_ms = t0.elapsed().as_millis();
    api.add_tag("ports", &child.id, &tag).await.unwrap();
    let trunks = api
        .list_trunks(&Query::new().port_id(vm.id.as_str()))
        .await
        .unwrap();
    assert_eq!(trunks.len(), 1, "a trunk was made for the VM's port");
    assert!(trunks[0].tags.iter().any(|t| t == neutron::TAG_CREATED));
    assert_eq!(
        trunks[0].sub_ports,
        vec![os::SubPort::vlan(child.id.clone(), 101)]
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while (lsp(&child.id, "parent_name") != vm.id || lsp(&child.id, "tag") != "101")
        && Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(lsp(&child.id, "parent_name"), vm.id, "OVN NB parent_name");
    assert_eq!(lsp(&child.id, "tag"), "101", "OVN NB tag");

    // Someone else's subport on the same trunk, and a binding:profile child.
    let other = api
        .create_port(&PortCreate {
            network_id: net.id.clone(),
            tags: tags.clone(),
            ..Default::default()
        })
        .await
        .unwrap();
    api.add_subports(&trunks[0].id, &[os::SubPort::vlan(other.id.clone(), 202)])
        .await
        .unwrap();
    api.create_port(&PortCreate {
        network_id: net.id.clone(),
        binding_profile: Some(serde_json::json!({"parent_name": vm.id, "tag": 303})),
        tags: tags.clone(),
        ..Default::default()
    })
    .await
    .unwrap();
    let got = b.child_tags(&vm.id).await.unwrap();
    assert_eq!(got.into_iter().collect::<Vec<_>>(), vec![101, 202, 303]);

    // A VLAN the trunk has already: a clear error, and no port left behind.
    let dup = child_req(
        "dup",
        "dup",
        NeutronBackend::to_network(&tag, &net, &[]),
        202,
    );
    let e = b.create_ports(&[dup]).await.unwrap_err();
    assert!(e.to_string().contains("VLAN 202"), "{e}");
    assert!(api
        .list_ports(&Query::new().name(format!("{tag}-dup")))
        .await
        .unwrap()
        .is_empty());

    // Delete ours: out of the trunk, port gone; the trunk stays for the other subport.
    let pr = PortRef {
        id: Some(child.id.clone()),
        name: child.name.clone(),
    };
    let t1 = Instant::now();
    assert!(b.delete_port(&pr, &host).await.unwrap());
    let delete_ms = t1.elapsed().as_millis();
    assert!(api.get_port(&child.id).await.unwrap_err().is_not_found());
    let tr = api.get_trunk(&trunks[0].id).await.unwrap();
    assert_eq!(tr.sub_ports, vec![os::SubPort::vlan(other.id.clone(), 202)]);
    // The last subport leaving a trunk Courier made: it goes too (made again for this).
    api.remove_subports(&tr.id, &[other.id.as_str()])
        .await
        .unwrap();
    let again = child_req(
        "child2",
        "att2",
        NeutronBackend::to_network(&tag, &net, &[]),
        102,
    );
    let c2 = b.create_ports(&[again]).await.unwrap().pop().unwrap();
    let pr = PortRef {
        id: Some(c2.id.clone()),
        name: c2.name.clone(),
    };
    assert!(b.delete_port(&pr, &host).await.unwrap());
    assert!(api
        .list_trunks(&Query::new().port_id(vm.id.as_str()))
        .await
        .unwrap()
        .is_empty());
    assert!(api.get_port(&c2.id).await.unwrap_err().is_not_found());
    // A trunk Courier made whose tag never came (a crash between its POST and the tag's
    // PUT): its description still says whose it is, so it goes with its last subport too.
    let untagged = api
        .create_trunk(&os::TrunkCreate {
            port_id: vm.id.clone(),
            name: Some(format!("courier-{}", vm.id)),
            description: Some(neutron::TAG_CREATED.to_string()),
            ..Default::default()
        })
        .await
        .unwrap();
    assert!(untagged.tags.is_empty());
    let third = child_req(
        "child4",
        "att4",
        NeutronBackend::to_network(&tag, &net, &[]),
        104,
    );
    let c4 = b.create_ports(&[third]).await.unwrap().pop().unwrap();
    assert_eq!(
        api.get_trunk(&untagged.id).await.unwrap().sub_ports,
        vec![os::SubPort::vlan(c4.id.clone(), 104)],
        "the untagged trunk was used, not a second one made"
    );
    let pr = PortRef {
        id: Some(c4.id.clone()),
        name: c4.name.clone(),
    };
    assert!(b.delete_port(&pr, &host).await.unwrap());
    assert!(
        api.get_trunk(&untagged.id)
            .await
            .unwrap_err()
            .is_not_found(),
        "the untagged trunk Courier made went with its last subport"
    );
    // A child undone before its port joined (a crash after the trunk's POST): the tidy
    // removes the empty trunk Courier made, and never someone else's.
    let ours = api
        .create_trunk(&os::TrunkCreate {
            port_id: vm.id.clone(),
            description: Some(neutron::TAG_CREATED.to_string()),
            ..Default::default()
        })
        .await
        .unwrap();
    b.tidy_children_of(&vm.id).await.unwrap();
    assert!(api.get_trunk(&ours.id).await.unwrap_err().is_not_found());
    let theirs = api
        .create_trunk(&os::TrunkCreate {
            port_id: vm.id.clone(),
            ..Default::default()
        })
        .await
        .unwrap();
    b.tidy_children_of(&vm.id).await.unwrap();
    assert!(api
        .get_trunk(&theirs.id)
        .await
        .unwrap()
        .sub_ports
        .is_empty());
    api.delete_trunk(&theirs.id).await.unwrap();
    eprintln!("child_port_is_a_trunk_subport: child create {create_ms} ms, delete {delete_ms} ms");

    // The binding:profile form (`[neutron] vlan_children = "binding-profile"`, what ML2/OVN
    // without the trunk plugin takes): no trunk, the LSP a child with the tag all the same.
    let b = b.with_vlan_children(VlanChildren::BindingProfile);
    let req = child_req(
        "child3",
        "att3",
        NeutronBackend::to_network(&tag, &net, &[]),
        42,
    );
    let c3 = b.create_ports(&[req]).await.unwrap().pop().unwrap();
    assert!(api
        .list_trunks(&Query::new().port_id(vm.id.as_str()))
        .await
        .unwrap()
        .is_empty());
    let deadline = Instant::now() + Duration::from_secs(10);
    while (lsp(&c3.id, "parent_name") != vm.id || lsp(&c3.id, "tag") != "42")
        && Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(lsp(&c3.id, "parent_name"), vm.id, "OVN NB parent_name");
    assert_eq!(lsp(&c3.id, "tag"), "42", "OVN NB tag");
    assert!(b.child_tags(&vm.id).await.unwrap().contains(&42));
    let pr = PortRef {
        id: Some(c3.id.clone()),
        name: c3.name.clone(),
    };
    assert!(b.delete_port(&pr, &host).await.unwrap());
    assert!(api.get_port(&c3.id).await.unwrap_err().is_not_found());
}
