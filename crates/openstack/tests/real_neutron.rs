//! Against the real Keystone (127.0.0.1:5000) and Neutron (127.0.0.1:9696, and the noauth one
//! on :9697 when it is there) that scripts/neutron.sh starts, with the clouds.yaml +
//! secure.yaml it writes to /etc/courier-test (or `$COURIER_TEST_CLOUDS`). Skipped (a failure
//! under COURIER_REQUIRE_ENV=1) when they are not there.
//!
//! Everything created carries a tag unique to the run (pid + time) and is deleted at the end,
//! also when the test fails.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use courier_openstack::{
    retry_transient, AddressPair, AllocationPool, AuthType, Backoff, CloudConfig, Error, FixedIp,
    HostRoute, NetworkCreate, Neutron, PortCreate, PortUpdate, Query, Secret, Session, SubPort,
    SubnetCreate, TrunkCreate,
};

fn clouds_file() -> PathBuf {
    std::env::var("COURIER_TEST_CLOUDS")
        .map(PathBuf::from)
        .unwrap_or_else(|_| PathBuf::from("/etc/courier-test/clouds.yaml"))
}

async fn reachable(addr: &str) -> bool {
    matches!(
        tokio::time::timeout(Duration::from_secs(2), tokio::net::TcpStream::connect(addr)).await,
        Ok(Ok(_))
    )
}

/// The env map a test resolves its config with (never the process env).
fn env_map(pairs: &[(&str, String)]) -> impl Fn(&str) -> Option<String> {
    let m: HashMap<String, String> = pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.clone()))
        .collect();
    move |k| m.get(k).cloned()
}

/// Neutron's host:port (`$COURIER_TEST_NEUTRON`, default 127.0.0.1:9696): the catalog's.
fn neutron_addr() -> String {
    std::env::var("COURIER_TEST_NEUTRON").unwrap_or_else(|_| "127.0.0.1:9696".into())
}

/// The noauth Neutron (`$COURIER_TEST_NOAUTH_NEUTRON`, default 127.0.0.1:9697).
fn noauth_addr() -> String {
    std::env::var("COURIER_TEST_NOAUTH_NEUTRON").unwrap_or_else(|_| "127.0.0.1:9697".into())
}

/// Ok(()) when Keystone + Neutron + clouds.yaml are there, else the reason to skip.
async fn env_ready() -> Result<(), String> {
    if !clouds_file().is_file() {
        return Err(format!(
            "{} missing (scripts/neutron.sh writes it)",
            clouds_file().display()
        ));
    }
    let env = env_map(&[("OS_CLIENT_CONFIG_FILE", clouds_file().display().to_string())]);
    let cfg = CloudConfig::resolve(Some("courier-admin"), &env).map_err(|e| e.to_string())?;
    let auth_url = cfg.auth_url.unwrap_or_default();
    let keystone = auth_url
        .split_once("://")
        .map(|(_, r)| r.split('/').next().unwrap_or(r).to_string())
        .unwrap_or(auth_url);
    for a in [keystone, neutron_addr()] {
        if !reachable(&a).await {
            return Err(format!(
                "nothing listening on {a} (scripts/neutron.sh start)"
            ));
        }
    }
    Ok(())
}

macro_rules! require_env {
    ($name:expr) => {
        if let Err(why) = env_ready().await {
            courier_testenv::skip($name, &why);
            return;
        }
    };
}

fn cloud(name: &str) -> CloudConfig {
    let env = env_map(&[("OS_CLIENT_CONFIG_FILE", clouds_file().display().to_string())]);
    CloudConfig::resolve(Some(name), &env).expect("cloud from clouds.yaml + secure.yaml")
}

fn unique() -> String {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis();
    format!("courier-ostest-{}-{t}", std::process::id())
}

#[tokio::test]
async fn auth_with_clouds_yaml_and_secure_yaml() {
    require_env!("auth_with_clouds_yaml_and_secure_yaml");
    for name in ["courier-admin", "courier-demo"] {
        let cfg = cloud(name);
        assert!(cfg.password.is_some(), "password merged from secure.yaml");
        let session = Arc::new(Session::new(cfg).unwrap());
        // concurrent first callers share one Keystone request
        let mut tasks = Vec::new();
        for _ in 0..8 {
            let s = session.clone();
            tasks.push(tokio::spawn(
                async move { s.token().await.unwrap().unwrap() },
            ));
        }
        let mut tokens = Vec::new();
        for t in tasks {
            tokens.push(t.await.unwrap());
        }
        assert_eq!(session.auth_count(), 1, "{name}: one renewal for 8 callers");
        assert!(tokens.windows(2).all(|w| Arc::ptr_eq(&w[0], &w[1])));
        assert!(tokens[0].project_id.is_some());
        assert!(tokens[0].remaining() > Duration::from_secs(60));
        // the endpoint comes from the token's catalog
        let neutron = Neutron::with_session(session.clone()).await.unwrap();
        assert_eq!(
            neutron.endpoint(),
            format!("http://{}/v2.0", neutron_addr())
        );
        neutron.list_networks(&Query::new().limit(5)).await.unwrap();
        assert_eq!(session.auth_count(), 1, "the cached token is reused");
        // after the cache is dropped, the next request authenticates again
        session.clear_token().await;
        neutron.list_ports(&Query::new().limit(1)).await.unwrap();
        assert_eq!(session.auth_count(), 2);
    }
}

/// A token Neutron refuses (401): the session renews it once and the request succeeds;
/// concurrent 401s share that one renewal.
#[tokio::test]
async fn unauthorized_token_is_renewed_once() {
    require_env!("unauthorized_token_is_renewed_once");
    let session = Arc::new(Session::new(cloud("courier-admin")).unwrap());
    let neutron = Neutron::with_endpoint(session.clone(), &format!("http://{}", neutron_addr()));
    let bogus = || {
        courier_openstack::Token::from_response(
            "gAAAAABbogus-token-courier",
            r#"{"token": {"expires_at": "2099-01-01T00:00:00Z", "catalog": []}}"#,
        )
        .unwrap()
    };
    session.set_token(bogus()).await;
    neutron.list_networks(&Query::new().limit(1)).await.unwrap();
    assert_eq!(session.auth_count(), 1);
    session.set_token(bogus()).await;
    let mut tasks = Vec::new();
    for _ in 0..4 {
        let n = neutron.clone();
        tasks.push(tokio::spawn(async move {
            n.list_ports(&Query::new().limit(1)).await
        }));
    }
    for t in tasks {
        t.await.unwrap().unwrap();
    }
    assert_eq!(session.auth_count(), 2, "4 concurrent 401s, one renewal");
}

#[tokio::test]
async fn auth_with_os_env_vars() {
    require_env!("auth_with_os_env_vars");
    // the OS_* variables of an openrc, with the password from the resolved clouds.yaml
    let admin = cloud("courier-admin");
    let env = env_map(&[
        ("OS_AUTH_URL", admin.auth_url.clone().unwrap()),
        ("OS_USERNAME", admin.username.clone().unwrap()),
        (
            "OS_PASSWORD",
            admin.password.clone().unwrap().expose().to_string(),
        ),
        ("OS_PROJECT_NAME", admin.project_name.clone().unwrap()),
        ("OS_USER_DOMAIN_NAME", "Default".into()),
        ("OS_PROJECT_DOMAIN_NAME", "Default".into()),
        ("OS_REGION_NAME", "RegionOne".into()),
        ("OS_INTERFACE", "internal".into()),
        ("OS_AUTH_TYPE", "v3password".into()),
    ]);
    let cfg = CloudConfig::resolve(None, &env).unwrap();
    assert_eq!(cfg.auth_type, AuthType::Password);
    let neutron = Neutron::connect(cfg).await.unwrap();
    // the internal endpoint of RegionOne
    assert_eq!(
        neutron.endpoint(),
        format!("http://{}/v2.0", neutron_addr())
    );
    neutron.list_networks(&Query::new()).await.unwrap();
}

#[tokio::test]
async fn wrong_password_is_an_auth_error_without_the_password() {
    require_env!("wrong_password_is_an_auth_error_without_the_password");
    let mut cfg = cloud("courier-admin");
    let wrong = format!("wrong-pw-{}", std::process::id());
    cfg.password = Some(Secret::new(wrong.clone()));
    let e = Neutron::connect(cfg).await.unwrap_err();
    let shown = format!("{e} / {e:?}");
    assert!(matches!(e, Error::Auth { .. }), "{shown}");
    assert!(shown.contains("http://127.0.0.1:5000/v3"), "{shown}");
    assert!(shown.contains("admin"), "{shown}");
    assert!(!shown.contains(&wrong), "{shown}");
    assert!(!e.is_transient());
}

#[tokio::test]
async fn noauth_neutron() {
    let addr = noauth_addr();
    if !reachable(&addr).await {
        courier_testenv::skip("noauth_neutron", &format!("no noauth Neutron on {addr}"));
        return;
    }
    let env = env_map(&[
        ("OS_AUTH_TYPE", "noauth".into()),
        ("OS_ENDPOINT", format!("http://{addr}")),
    ]);
    let cfg = CloudConfig::resolve(None, &env).unwrap();
    let neutron = Neutron::connect(cfg).await.unwrap();
    assert!(neutron.has_extension("trunk").await.unwrap());
    let tag = unique();
    let net = neutron
        .create_network(&NetworkCreate {
            name: Some(tag.clone()),
            tags: vec![tag.clone()],
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(net.project_id.as_deref(), Some("fake_project_id"));
    // This Neutron lacks ML2's tag_ports_during_bulk_creation (scripts/neutron.sh): a port POST
    // drops its tags ...
    let raw: serde_json::Value = reqwest::Client::new()
        .post(format!("http://{addr}/v2.0/ports"))
        .json(&serde_json::json!({"port": {"network_id": net.id, "tags": [tag]}}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(raw["port"]["tags"], serde_json::json!([]), "{raw}");
    assert!(neutron
        .delete_port(raw["port"]["id"].as_str().unwrap())
        .await
        .unwrap());
    // ... so the client sets them right after the create, single and bulk.
    let tags = vec![tag.clone(), "courier:second".to_string()];
    let req = |name: &str| PortCreate {
        network_id: net.id.clone(),
        name: Some(name.into()),
        tags: tags.clone(),
        ..Default::default()
    };
    let one = neutron.create_port(&req("one")).await.unwrap();
    let bulk = neutron
        .create_ports(&[req("two"), req("three")])
        .await
        .unwrap();
    let sorted = |mut v: Vec<String>| {
        v.sort();
        v
    };
    for p in std::iter::once(&one).chain(&bulk) {
        assert_eq!(
            sorted(p.tags.clone()),
            sorted(tags.clone()),
            "answer: {p:?}"
        );
        let live = neutron.get_port(&p.id).await.unwrap().tags;
        assert_eq!(
            sorted(live),
            sorted(tags.clone()),
            "port {} in Neutron",
            p.id
        );
        assert!(neutron.delete_port(&p.id).await.unwrap());
    }
    assert!(neutron.delete_network(&net.id).await.unwrap());
    assert!(!neutron.delete_network(&net.id).await.unwrap());
}

/// Delete whatever carries `tag`: trunks, then ports, then networks (with their subnets).
async fn cleanup(neutron: &Neutron, tag: &str) {
    let q = Query::new().tags(&[tag]);
    if let Ok(trunks) = neutron.list_trunks(&q).await {
        for t in trunks {
            let _ = neutron.delete_trunk(&t.id).await;
        }
    }
    if let Ok(ports) = neutron.list_ports(&q).await {
        for p in ports {
            let _ = neutron.delete_port(&p.id).await;
        }
    }
    if let Ok(nets) = neutron.list_networks(&q).await {
        for n in nets {
            let _ = neutron.delete_network(&n.id).await;
        }
    }
}

#[tokio::test]
async fn neutron_resources_lifecycle() {
    require_env!("neutron_resources_lifecycle");
    let neutron = Neutron::connect(cloud("courier-admin")).await.unwrap();
    let tag = unique();
    let body = tokio::spawn(lifecycle(neutron.clone(), tag.clone())).await;
    cleanup(&neutron, &tag).await;
    if let Err(e) = body {
        std::panic::resume_unwind(e.into_panic());
    }
    // nothing of this run is left
    let q = Query::new().tags(&[tag.as_str()]);
    assert!(neutron.list_ports(&q).await.unwrap().is_empty());
    assert!(neutron.list_networks(&q).await.unwrap().is_empty());
}

async fn lifecycle(neutron: Neutron, tag: String) {
    let tags = vec![tag.clone()];
    // ---- network + subnets
    let net = neutron
        .create_network(&NetworkCreate {
            name: Some(tag.clone()),
            tags: tags.clone(),
            ..Default::default()
        })
        .await
        .unwrap();
    assert!(net.tags.contains(&tag), "{:?}", net.tags);
    assert!(net.mtu.is_some());
    assert_eq!(neutron.get_network(&net.id).await.unwrap().name, tag);
    let found = neutron
        .list_networks(
            &Query::new()
                .name(tag.as_str())
                .tags_any(&[tag.as_str(), "nope"]),
        )
        .await
        .unwrap();
    assert_eq!(
        found.iter().map(|n| n.id.as_str()).collect::<Vec<_>>(),
        [net.id.as_str()]
    );

    let v4 = neutron
        .create_subnet(&SubnetCreate {
            network_id: net.id.clone(),
            name: Some(format!("{tag}-v4")),
            cidr: "10.99.0.0/24".into(),
            ip_version: 4,
            gateway_ip: Some(Some("10.99.0.1".into())),
            enable_dhcp: Some(false),
            dns_nameservers: vec!["10.99.0.2".into()],
            host_routes: vec![HostRoute {
                destination: "10.98.0.0/16".into(),
                nexthop: "10.99.0.3".into(),
            }],
            allocation_pools: vec![AllocationPool {
                start: "10.99.0.10".into(),
                end: "10.99.0.200".into(),
            }],
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(v4.gateway_ip.as_deref(), Some("10.99.0.1"));
    assert_eq!(v4.allocation_pools[0].start, "10.99.0.10");
    assert_eq!(v4.host_routes.len(), 1);
    let v6 = neutron
        .create_subnet(&SubnetCreate {
            network_id: net.id.clone(),
            cidr: "fd00:99::/64".into(),
            ip_version: 6,
            ipv6_address_mode: Some("slaac".into()),
            ipv6_ra_mode: Some("slaac".into()),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(v6.ipv6_address_mode.as_deref(), Some("slaac"));
    assert_eq!(neutron.get_subnet(&v6.id).await.unwrap().ip_version, 6);
    let subnets = neutron
        .list_subnets(&Query::new().network_id(net.id.as_str()))
        .await
        .unwrap();
    assert_eq!(subnets.len(), 2);

    // ---- bulk ports, listed by tag one page at a time
    let reqs: Vec<PortCreate> = (0..3)
        .map(|i| PortCreate {
            network_id: net.id.clone(),
            name: Some(format!("{tag}-p{i}")),
            device_owner: Some("compute:courier".into()),
            device_id: Some(format!("{tag}-dev{i}")),
            fixed_ips: vec![FixedIp {
                subnet_id: Some(v4.id.clone()),
                ip_address: None,
            }],
            binding_host_id: (i == 0).then(|| "courier-test-host".to_string()),
            binding_profile: (i == 0).then(|| serde_json::json!({"courier": "test"})),
            tags: tags.clone(),
            ..Default::default()
        })
        .collect();
    let ports = neutron.create_ports(&reqs).await.unwrap();
    assert_eq!(ports.len(), 3);
    for (i, p) in ports.iter().enumerate() {
        assert_eq!(p.name, format!("{tag}-p{i}"));
        assert!(p.tags.contains(&tag));
        assert!(p
            .fixed_ips
            .iter()
            .any(|f| f.subnet_id.as_deref() == Some(v4.id.as_str())));
    }
    assert_eq!(
        ports[0].binding_host_id.as_deref(),
        Some("courier-test-host")
    );
    let listed = neutron
        .list_ports(&Query::new().tags(&[tag.as_str()]).limit(1))
        .await
        .unwrap();
    let mut ids: Vec<&str> = listed.iter().map(|p| p.id.as_str()).collect();
    ids.sort();
    let mut want: Vec<&str> = ports.iter().map(|p| p.id.as_str()).collect();
    want.sort();
    assert_eq!(ids, want, "all 3 ports through limit=1 pagination");
    let ip1 = ports[1]
        .fixed_ips
        .iter()
        .find(|f| f.subnet_id.as_deref() == Some(v4.id.as_str()))
        .and_then(|f| f.ip_address.clone())
        .unwrap();
    let by_ip = neutron
        .list_ports(&Query::new().network_id(net.id.as_str()).fixed_ip(&ip1))
        .await
        .unwrap();
    assert_eq!(by_ip.len(), 1);
    assert_eq!(by_ip[0].id, ports[1].id);
    let by_dev = neutron
        .list_ports(
            &Query::new()
                .device_owner("compute:courier")
                .device_id(format!("{tag}-dev2")),
        )
        .await
        .unwrap();
    assert_eq!(by_dev.len(), 1);
    let by_mac = neutron
        .list_ports(&Query::new().mac_address(ports[0].mac_address.as_str()))
        .await
        .unwrap();
    assert_eq!(by_mac[0].id, ports[0].id);

    // ---- revision-checked update
    let p0 = neutron.get_port(&ports[0].id).await.unwrap();
    let rev = p0.revision_number.unwrap();
    let upd = PortUpdate {
        allowed_address_pairs: Some(vec![AddressPair {
            ip_address: "10.99.0.250".into(),
            mac_address: None,
        }]),
        ..Default::default()
    };
    let p0b = neutron.update_port(&p0.id, &upd, Some(rev)).await.unwrap();
    assert_eq!(p0b.allowed_address_pairs[0].ip_address, "10.99.0.250");
    assert!(p0b.revision_number.unwrap() > rev);
    let e = neutron
        .update_port(&p0.id, &upd, Some(rev))
        .await
        .unwrap_err();
    assert!(matches!(e, Error::RevisionConflict { .. }), "{e}");
    assert_eq!(e.status(), Some(412));
    assert!(e.to_string().contains(&p0.id), "{e}");

    // ---- an IP in use
    let e = neutron
        .create_port(&PortCreate {
            network_id: net.id.clone(),
            fixed_ips: vec![FixedIp {
                subnet_id: Some(v4.id.clone()),
                ip_address: Some(ip1.clone()),
            }],
            tags: tags.clone(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert!(matches!(e, Error::Conflict { .. }), "{e}");
    assert_eq!(e.fault_type(), Some("IpAddressAlreadyAllocated"), "{e}");

    // ---- a bad MAC is a 400 with its type
    let e = neutron
        .create_port(&PortCreate {
            network_id: net.id.clone(),
            mac_address: Some("not-a-mac".into()),
            tags: tags.clone(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert!(matches!(e, Error::BadRequest { .. }), "{e}");

    // ---- unknown ids
    let unknown = "00000000-0000-4000-8000-000000000000";
    let e = neutron.get_port(unknown).await.unwrap_err();
    assert!(e.is_not_found(), "{e}");
    assert!(e.to_string().contains(unknown), "{e}");
    assert!(!neutron.delete_port(unknown).await.unwrap());
    assert!(neutron
        .get_network(unknown)
        .await
        .unwrap_err()
        .is_not_found());

    // ---- tags API
    neutron
        .add_tag("ports", &ports[2].id, "extra")
        .await
        .unwrap();
    let t = neutron.get_tags("ports", &ports[2].id).await.unwrap();
    assert!(t.contains(&"extra".to_string()) && t.contains(&tag));
    assert!(neutron
        .remove_tag("ports", &ports[2].id, "extra")
        .await
        .unwrap());
    assert!(!neutron
        .remove_tag("ports", &ports[2].id, "extra")
        .await
        .unwrap());
    let t = neutron
        .replace_tags("ports", &ports[2].id, &[tag.as_str(), "b"])
        .await
        .unwrap();
    assert_eq!(t.len(), 2);

    // ---- security groups: the project's default one exists now that it has ports
    let project = neutron
        .session()
        .token()
        .await
        .unwrap()
        .unwrap()
        .project_id
        .clone()
        .unwrap();
    let sgs = neutron
        .list_security_groups(&Query::new().name("default").project_id(project.as_str()))
        .await
        .unwrap();
    assert_eq!(sgs.len(), 1, "{sgs:?}");
    let sg = neutron.get_security_group(&sgs[0].id).await.unwrap();
    assert!(!sg.security_group_rules.is_empty());
    assert!(ports[0].security_groups.contains(&sg.id));

    // ---- trunk with a subport
    let child = neutron
        .create_port(&PortCreate {
            network_id: net.id.clone(),
            name: Some(format!("{tag}-child")),
            tags: tags.clone(),
            ..Default::default()
        })
        .await
        .unwrap();
    let trunk = neutron
        .create_trunk(&TrunkCreate {
            port_id: ports[2].id.clone(),
            name: Some(tag.clone()),
            ..Default::default()
        })
        .await
        .unwrap();
    neutron.add_tag("trunks", &trunk.id, &tag).await.unwrap();
    assert_eq!(trunk.port_id, ports[2].id);
    let t = neutron
        .add_subports(&trunk.id, &[SubPort::vlan(child.id.clone(), 101)])
        .await
        .unwrap();
    assert_eq!(t.sub_ports, vec![SubPort::vlan(child.id.clone(), 101)]);
    let trunks = neutron
        .list_trunks(&Query::new().port_id(ports[2].id.as_str()))
        .await
        .unwrap();
    assert_eq!(trunks.len(), 1);
    assert_eq!(trunks[0].sub_ports.len(), 1);
    let t = neutron
        .remove_subports(&trunk.id, &[child.id.as_str()])
        .await
        .unwrap();
    assert!(t.sub_ports.is_empty());
    assert!(neutron
        .get_trunk(&trunk.id)
        .await
        .unwrap()
        .sub_ports
        .is_empty());
    assert!(neutron.delete_trunk(&trunk.id).await.unwrap());
    assert!(neutron
        .get_trunk(&trunk.id)
        .await
        .unwrap_err()
        .is_not_found());

    // ---- the retry helper on a call that succeeds / fails for good
    let deadline = Instant::now() + Duration::from_secs(10);
    let n = retry_transient(deadline, Backoff::default(), || {
        neutron.get_network(&net.id)
    })
    .await
    .unwrap();
    assert_eq!(n.id, net.id);
    let e = retry_transient(deadline, Backoff::default(), || neutron.get_port(unknown))
        .await
        .unwrap_err();
    assert!(e.is_not_found());

    // ---- delete everything and check it is gone
    for p in ports.iter().chain([&child]) {
        assert!(neutron.delete_port(&p.id).await.unwrap(), "{}", p.id);
        assert!(neutron.get_port(&p.id).await.unwrap_err().is_not_found());
    }
    assert!(neutron.delete_subnet(&v6.id).await.unwrap());
    assert!(neutron.get_subnet(&v6.id).await.unwrap_err().is_not_found());
    assert!(neutron.delete_network(&net.id).await.unwrap());
    assert!(neutron
        .get_network(&net.id)
        .await
        .unwrap_err()
        .is_not_found());
    assert!(neutron.get_subnet(&v4.id).await.unwrap_err().is_not_found());
    assert!(!neutron.delete_network(&net.id).await.unwrap());
}

/// The LSP's `port_security` in the OVN NB that this Neutron writes to (ML2/OVN names the LSP
/// after the port id); None when `ovn-nbctl` cannot answer (then only Neutron is asserted).
fn lsp_port_security(port_id: &str) -> Option<String> {
    let out = std::process::Command::new("ovn-nbctl")
        .args([
            "--timeout=5",
            "get",
            "Logical_Switch_Port",
            port_id,
            "port_security",
        ])
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

/// 100 concurrent adds of distinct IP-only pairs on one port through 10 independent clients
/// (10 sessions: each folds its own concurrent calls into one GET + PUT, and the clients race
/// each other with `If-Match: revision_number`, retried on 412): all 100 are there (in Neutron
/// and in the OVN LSP's port_security); then 100 concurrent removes: none is left. Adding a
/// pair that is there and removing one that is not change nothing (no PUT: the revision stays).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_address_pairs_lose_nothing() {
    require_env!("concurrent_address_pairs_lose_nothing");
    let neutron = Neutron::connect(cloud("courier-admin")).await.unwrap();
    let tag = unique();
    let body = tokio::spawn(concurrent_pairs(neutron.clone(), tag.clone())).await;
    cleanup(&neutron, &tag).await;
    if let Err(e) = body {
        std::panic::resume_unwind(e.into_panic());
    }
}

async fn concurrent_pairs(neutron: Neutron, tag: String) {
    use courier_openstack::RevisionRetry;
    const N: usize = 100;
    let tags = vec![tag.clone()];
    let net = neutron
        .create_network(&NetworkCreate {
            name: Some(tag.clone()),
            tags: tags.clone(),
            ..Default::default()
        })
        .await
        .unwrap();
    neutron
        .create_subnet(&SubnetCreate {
            network_id: net.id.clone(),
            cidr: "10.97.0.0/22".into(),
            ip_version: 4,
            enable_dhcp: Some(false),
            ..Default::default()
        })
        .await
        .unwrap();
    let port = neutron
        .create_port(&PortCreate {
            network_id: net.id.clone(),
            name: Some(format!("{tag}-vm")),
            tags: tags.clone(),
            ..Default::default()
        })
        .await
        .unwrap();
    let pair = |i: usize| AddressPair {
        ip_address: format!("10.97.{}.{}", 1 + i / 200, 10 + i % 200),
        mac_address: None,
    };
    let ps_before = lsp_port_security(&port.id);
    const CLIENTS: usize = 10;
    let mut clients = Vec::new();
    for _ in 0..CLIENTS {
        clients.push(Neutron::connect(cloud("courier-admin")).await.unwrap());
    }
    let rev0 = port.revision_number.unwrap();

    let t0 = Instant::now();
    let mut tasks = Vec::new();
    for i in 0..N {
        let (n, id, p) = (clients[i % CLIENTS].clone(), port.id.clone(), pair(i));
        tasks.push(tokio::spawn(async move {
            let t = Instant::now();
            let m = n
                .add_address_pair(&id, &p, RevisionRetry::default())
                .await
                .unwrap_or_else(|e| panic!("add {}: {e}", p.ip_address));
            assert!(m.changed);
            (m.conflicts, t.elapsed())
        }));
    }
    let mut conflicts = Vec::new();
    let mut lat = Vec::new();
    for t in tasks {
        let (c, l) = t.await.unwrap();
        conflicts.push(c);
        lat.push(l);
    }
    let add_time = t0.elapsed();
    let now = neutron.get_port(&port.id).await.unwrap();
    assert_eq!(
        now.allowed_address_pairs.len(),
        N,
        "{:?}",
        now.allowed_address_pairs
    );
    for i in 0..N {
        let want = pair(i);
        assert!(
            now.allowed_address_pairs
                .iter()
                .any(|h| courier_openstack::neutron::pair_matches(h, &want, &now.mac_address)),
            "pair {} lost",
            want.ip_address
        );
    }
    if let Some(ps) = lsp_port_security(&port.id) {
        for i in 0..N {
            let ip = pair(i).ip_address;
            assert!(
                ps.split([' ', '"']).any(|w| w == ip),
                "{ip} not in the LSP's port_security: {ps}"
            );
        }
    } else {
        eprintln!(
            "concurrent_address_pairs_lose_nothing: ovn-nbctl cannot read the LSP; Neutron only"
        );
    }
    let add_puts = now.revision_number.unwrap() - rev0;
    // Idempotent: present → no PUT, same revision.
    let rev = now.revision_number;
    let again = neutron
        .add_address_pair(&port.id, &pair(7), RevisionRetry::default())
        .await
        .unwrap();
    assert!(!again.changed);
    assert_eq!(again.port.revision_number, rev);

    let t1 = Instant::now();
    let mut tasks = Vec::new();
    for i in 0..N {
        let (n, id, p) = (clients[i % CLIENTS].clone(), port.id.clone(), pair(i));
        tasks.push(tokio::spawn(async move {
            let m = n
                .remove_address_pair(&id, &p, RevisionRetry::default())
                .await
                .unwrap_or_else(|e| panic!("remove {}: {e}", p.ip_address))
                .expect("the port is there");
            assert!(m.changed);
            m.conflicts
        }));
    }
    let mut rm_conflicts = Vec::new();
    for t in tasks {
        rm_conflicts.push(t.await.unwrap());
    }
    let rm_time = t1.elapsed();
    let now = neutron.get_port(&port.id).await.unwrap();
    assert!(
        now.allowed_address_pairs.is_empty(),
        "{:?}",
        now.allowed_address_pairs
    );
    if let (Some(before), Some(after)) = (ps_before, lsp_port_security(&port.id)) {
        assert_eq!(after, before, "the LSP's port_security is as it began");
    }
    let rm_puts = now.revision_number.unwrap() - rev.unwrap();
    // Absent → nothing sent; port gone → Ok(None).
    let rev = now.revision_number;
    let m = neutron
        .remove_address_pair(&port.id, &pair(3), RevisionRetry::default())
        .await
        .unwrap()
        .unwrap();
    assert!(!m.changed);
    assert_eq!(m.port.revision_number, rev);
    assert!(neutron.delete_port(&port.id).await.unwrap());
    assert!(neutron
        .remove_address_pair(&port.id, &pair(3), RevisionRetry::default())
        .await
        .unwrap()
        .is_none());
    lat.sort();
    let sum = |v: &[u32]| v.iter().sum::<u32>();
    eprintln!(
        "concurrent_address_pairs_lose_nothing: {N} adds through {CLIENTS} clients in {:.1} s, {add_puts} PUTs (latency median {:.0} ms, max {:.0} ms; 412s: {} total, max {} for one add); {N} removes in {:.1} s, {rm_puts} PUTs (412s: {} total, max {})",
        add_time.as_secs_f64(),
        lat[N / 2].as_secs_f64() * 1000.0,
        lat[N - 1].as_secs_f64() * 1000.0,
        sum(&conflicts),
        conflicts.iter().max().unwrap(),
        rm_time.as_secs_f64(),
        sum(&rm_conflicts),
        rm_conflicts.iter().max().unwrap(),
    );
}

/// The noauth Neutron's client (`auth_type: noauth`, its endpoint); None when it is not there.
async fn noauth_client(test: &str) -> Option<Neutron> {
    let addr = noauth_addr();
    if !reachable(&addr).await {
        courier_testenv::skip(test, &format!("no noauth Neutron on {addr}"));
        return None;
    }
    let env = env_map(&[
        ("OS_AUTH_TYPE", "noauth".into()),
        ("OS_ENDPOINT", format!("http://{addr}")),
    ]);
    let cfg = CloudConfig::resolve(None, &env).unwrap();
    Some(Neutron::connect(cfg).await.unwrap())
}

/// Deletes what carries `tag` until nothing is left (each round lists again: a client that
/// sees only the first page still gets to the end), security groups too.
async fn cleanup_all_pages(neutron: &Neutron, tag: &str) {
    let q = Query::new().tags(&[tag]);
    for _ in 0..20 {
        let trunks = neutron.list_trunks(&q).await.unwrap_or_default();
        let ports = neutron.list_ports(&q).await.unwrap_or_default();
        let nets = neutron.list_networks(&q).await.unwrap_or_default();
        let sgs = neutron.list_security_groups(&q).await.unwrap_or_default();
        if trunks.is_empty() && ports.is_empty() && nets.is_empty() && sgs.is_empty() {
            return;
        }
        for t in trunks {
            let _ = neutron.delete_trunk(&t.id).await;
        }
        for p in ports {
            let _ = neutron.delete_port(&p.id).await;
        }
        for n in nets {
            let _ = neutron.delete_network(&n.id).await;
        }
        for g in sgs {
            let _ = reqwest::Client::new()
                .delete(format!("{}/security-groups/{}", neutron.endpoint(), g.id))
                .send()
                .await;
        }
    }
}

/// The noauth Neutron serves pages of at most 5 items (`pagination_max_limit = 5` in
/// scripts/neutron.sh's noauth.conf), with or without a `limit` in the query: every list
/// follows `*_links` "next" to the end — networks, subnets, ports, security groups and trunks,
/// each more than a page, asked without a limit, with a smaller one and with a larger one.
#[tokio::test]
async fn every_list_reads_every_page() {
    let Some(neutron) = noauth_client("every_list_reads_every_page").await else {
        return;
    };
    let tag = unique();
    let body = tokio::spawn(every_page(neutron.clone(), tag.clone())).await;
    cleanup_all_pages(&neutron, &tag).await;
    if let Err(e) = body {
        std::panic::resume_unwind(e.into_panic());
    }
    let q = Query::new().tags(&[tag.as_str()]);
    assert!(neutron.list_ports(&q).await.unwrap().is_empty());
    assert!(neutron.list_networks(&q).await.unwrap().is_empty());
}

async fn every_page(neutron: Neutron, tag: String) {
    const PAGE: usize = 5;
    let tags = vec![tag.clone()];
    let http = reqwest::Client::new();
    let base = neutron.endpoint().to_string();
    // More than a page of each.
    let mut nets = Vec::new();
    for i in 0..(PAGE + 2) {
        nets.push(
            neutron
                .create_network(&NetworkCreate {
                    name: Some(format!("{tag}-n{i}")),
                    tags: tags.clone(),
                    ..Default::default()
                })
                .await
                .unwrap()
                .id,
        );
    }
    // The premise: this Neutron cuts an unlimited list at PAGE and says there is a next page.
    let raw: serde_json::Value = http
        .get(format!("{base}/networks?tags={tag}"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        raw["networks"].as_array().map(Vec::len),
        Some(PAGE),
        "the noauth Neutron must have pagination_max_limit = {PAGE} (scripts/neutron.sh): {raw}"
    );
    assert!(
        raw["networks_links"]
            .as_array()
            .is_some_and(|l| l.iter().any(|l| l["rel"] == "next")),
        "{raw}"
    );
    let mut subnets = Vec::new();
    for i in 0..(PAGE + 2) {
        subnets.push(
            neutron
                .create_subnet(&SubnetCreate {
                    network_id: nets[0].clone(),
                    cidr: format!("10.231.{i}.0/24"),
                    ip_version: 4,
                    enable_dhcp: Some(false),
                    ..Default::default()
                })
                .await
                .unwrap()
                .id,
        );
    }
    let reqs: Vec<PortCreate> = (0..(2 * PAGE + 2))
        .map(|i| PortCreate {
            network_id: nets[0].clone(),
            name: Some(format!("{tag}-p{i}")),
            tags: tags.clone(),
            ..Default::default()
        })
        .collect();
    let ports: Vec<String> = neutron
        .create_ports(&reqs)
        .await
        .unwrap()
        .into_iter()
        .map(|p| p.id)
        .collect();
    let mut trunks = Vec::new();
    for (i, p) in ports.iter().take(PAGE + 1).enumerate() {
        trunks.push(
            neutron
                .create_trunk(&TrunkCreate {
                    port_id: p.clone(),
                    name: Some(format!("{tag}-t{i}")),
                    tags: tags.clone(),
                    ..Default::default()
                })
                .await
                .unwrap()
                .id,
        );
    }
    let mut sgs = Vec::new();
    for i in 0..(PAGE + 1) {
        let v: serde_json::Value = http
            .post(format!("{base}/security-groups"))
            .json(&serde_json::json!({"security_group": {"name": format!("{tag}-sg{i}")}}))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let id = v["security_group"]["id"].as_str().unwrap().to_string();
        neutron
            .replace_tags("security-groups", &id, &[tag.as_str()])
            .await
            .unwrap();
        sgs.push(id);
    }
    fn same(mut got: Vec<String>, want: &[String], what: &str) {
        got.sort();
        let mut want = want.to_vec();
        want.sort();
        assert_eq!(got, want, "{what}: every one, each once");
    }
    for (limit, name) in [
        (None, "no limit"),
        (Some(2), "limit 2"),
        (Some(100), "limit 100"),
    ] {
        let with = |q: Query| match limit {
            Some(l) => q.limit(l),
            None => q,
        };
        let by_tag = with(Query::new().tags(&[tag.as_str()]));
        let ids = |v: Vec<String>| v;
        same(
            ids(neutron
                .list_networks(&by_tag)
                .await
                .unwrap()
                .into_iter()
                .map(|n| n.id)
                .collect()),
            &nets,
            &format!("networks, {name}"),
        );
        same(
            neutron
                .list_subnets(&with(Query::new().network_id(nets[0].as_str())))
                .await
                .unwrap()
                .into_iter()
                .map(|s| s.id)
                .collect(),
            &subnets,
            &format!("subnets, {name}"),
        );
        same(
            neutron
                .list_ports(&by_tag)
                .await
                .unwrap()
                .into_iter()
                .map(|p| p.id)
                .collect(),
            &ports,
            &format!("ports, {name}"),
        );
        same(
            neutron
                .list_trunks(&by_tag)
                .await
                .unwrap()
                .into_iter()
                .map(|t| t.id)
                .collect(),
            &trunks,
            &format!("trunks, {name}"),
        );
        same(
            neutron
                .list_security_groups(&by_tag)
                .await
                .unwrap()
                .into_iter()
                .map(|g| g.id)
                .collect(),
            &sgs,
            &format!("security groups, {name}"),
        );
    }
    // Unfiltered (what Courier's network list asks): ours are all among them.
    let all: Vec<String> = neutron
        .list_networks(&Query::new())
        .await
        .unwrap()
        .into_iter()
        .map(|n| n.id)
        .collect();
    assert!(nets.iter().all(|n| all.contains(n)), "{all:?}");
    // A probe reads one page: one request, whatever the collection holds; the whole list with
    // that page size takes one request per item.
    let by_tag = Query::new().tags(&[tag.as_str()]).limit(1);
    let before = neutron.session().request_count();
    let one = neutron.first_page_networks(&by_tag).await.unwrap();
    assert_eq!(one.len(), 1);
    assert_eq!(
        neutron.session().request_count() - before,
        1,
        "a probe is one request"
    );
    let before = neutron.session().request_count();
    let one = neutron
        .first_page_ports(&Query::new().tags(&[tag.as_str()]))
        .await
        .unwrap();
    assert_eq!(
        one.len(),
        PAGE,
        "the first page, cut at the server's page size"
    );
    assert_eq!(neutron.session().request_count() - before, 1);
    let before = neutron.session().request_count();
    assert_eq!(
        neutron.list_networks(&by_tag).await.unwrap().len(),
        nets.len()
    );
    assert!(neutron.session().request_count() - before >= nets.len() as u64);
}

/// A TCP proxy in front of Keystone that counts the token requests (`POST .../auth/tokens`)
/// going through it; or, `answer_500`, a "Keystone" that answers every request 500 after
/// `delay`, counting them too.
struct KeystoneProxy {
    url: String,
    posts: Arc<std::sync::atomic::AtomicUsize>,
}

impl KeystoneProxy {
    async fn start(upstream: &str, answer_500: Option<Duration>) -> KeystoneProxy {
        use std::sync::atomic::Ordering;
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/v3", l.local_addr().unwrap());
        let posts = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let (p, upstream) = (posts.clone(), upstream.to_string());
        tokio::spawn(async move {
            while let Ok((mut c, _)) = l.accept().await {
                let (p, upstream) = (p.clone(), upstream.clone());
                tokio::spawn(async move {
                    if let Some(delay) = answer_500 {
                        let mut buf = vec![0u8; 65536];
                        loop {
                            let n = match c.read(&mut buf).await {
                                Ok(0) | Err(_) => return,
                                Ok(n) => n,
                            };
                            let text = String::from_utf8_lossy(&buf[..n]);
                            let k = text.matches("POST /v3/auth/tokens ").count();
                            if k == 0 {
                                continue;
                            }
                            p.fetch_add(k, Ordering::SeqCst);
                            tokio::time::sleep(delay).await;
                            let body = r#"{"error": {"code": 500, "title": "Internal Server Error", "message": "the test's Keystone is broken"}}"#;
                            let _ = c
                                .write_all(
                                    format!("HTTP/1.1 500 Internal Server Error\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}", body.len())
                                        .as_bytes(),
                                )
                                .await;
                        }
                    }
                    let Ok(mut up) = tokio::net::TcpStream::connect(&upstream).await else {
                        return;
                    };
                    let (mut cr, mut cw) = c.split();
                    let (mut ur, mut uw) = up.split();
                    let to_up = async {
                        let mut buf = vec![0u8; 65536];
                        loop {
                            let n = match cr.read(&mut buf).await {
                                Ok(0) | Err(_) => break,
                                Ok(n) => n,
                            };
                            let text = String::from_utf8_lossy(&buf[..n]);
                            p.fetch_add(
                                text.matches("POST /v3/auth/tokens ").count(),
                                Ordering::SeqCst,
                            );
                            if uw.write_all(&buf[..n]).await.is_err() {
                                break;
                            }
                        }
                        let _ = uw.shutdown().await;
                    };
                    let to_client = async {
                        let _ = tokio::io::copy(&mut ur, &mut cw).await;
                        let _ = cw.shutdown().await;
                    };
                    tokio::join!(to_up, to_client);
                });
            }
        });
        KeystoneProxy { url, posts }
    }

    fn token_requests(&self) -> usize {
        self.posts.load(std::sync::atomic::Ordering::SeqCst)
    }
}

/// `courier-admin` with Keystone behind `proxy`, and a Neutron client on the real Neutron.
fn through(proxy: &KeystoneProxy, password: Option<&str>) -> (Arc<Session>, Neutron) {
    let mut cfg = cloud("courier-admin");
    cfg.auth_url = Some(proxy.url.clone());
    if let Some(pw) = password {
        cfg.password = Some(Secret::new(pw));
    }
    let session = Arc::new(Session::new(cfg).unwrap());
    let neutron = Neutron::with_endpoint(session.clone(), &format!("http://{}", neutron_addr()));
    (session, neutron)
}

/// `n` concurrent first-page probes through `neutron`: each one's result, and the time for all.
async fn callers(neutron: &Neutron, n: usize) -> (Vec<Result<(), Error>>, Duration) {
    let start = Arc::new(tokio::sync::Barrier::new(n));
    let t0 = Instant::now();
    let tasks: Vec<_> = (0..n)
        .map(|_| {
            let (nt, start) = (neutron.clone(), start.clone());
            tokio::spawn(async move {
                start.wait().await;
                nt.first_page_networks(&Query::new().limit(1))
                    .await
                    .map(|_| ())
            })
        })
        .collect();
    let mut out = Vec::new();
    for t in tasks {
        out.push(t.await.unwrap());
    }
    (out, t0.elapsed())
}

/// 100 concurrent callers whose token has expired: one token request (counted at Keystone's
/// door, a proxy in front of the real Keystone), all 100 succeed with the new token.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_expired_token_is_renewed_once_for_100_callers() {
    require_env!("an_expired_token_is_renewed_once_for_100_callers");
    let keystone = KeystoneProxy::start("127.0.0.1:5000", None).await;
    let (session, neutron) = through(&keystone, None);
    let mut token = (*session.token().await.unwrap().unwrap()).clone();
    assert_eq!(keystone.token_requests(), 1);
    // The same token, now past its expiry as the client sees it.
    token.expires_at = Some(std::time::SystemTime::now() - Duration::from_secs(1));
    session.set_token(token).await;
    let (results, took) = callers(&neutron, 100).await;
    for r in &results {
        assert!(r.is_ok(), "{r:?}");
    }
    assert_eq!(keystone.token_requests(), 2, "one renewal for 100 callers");
    assert_eq!(session.auth_count(), 2);
    // The token alone (no Neutron request): 100 callers of an expired one.
    let mut token = (*session.token().await.unwrap().unwrap()).clone();
    token.expires_at = Some(std::time::SystemTime::now() - Duration::from_secs(1));
    session.set_token(token).await;
    let t0 = Instant::now();
    let tasks: Vec<_> = (0..100)
        .map(|_| {
            let s = session.clone();
            tokio::spawn(async move { s.token().await })
        })
        .collect();
    let mut tokens = Vec::new();
    for t in tasks {
        tokens.push(t.await.unwrap().unwrap().unwrap());
    }
    let token_took = t0.elapsed();
    assert!(tokens.windows(2).all(|w| Arc::ptr_eq(&w[0], &w[1])));
    assert_eq!(keystone.token_requests(), 3);
    eprintln!(
        "an_expired_token_is_renewed_once_for_100_callers: 100 callers (a Neutron GET each) in {:.0} ms, 1 token request; 100 callers of token() alone in {:.0} ms, 1 token request",
        took.as_secs_f64() * 1000.0,
        token_took.as_secs_f64() * 1000.0
    );
}

/// A Keystone that refuses the credentials (a wrong password, the real Keystone) or is broken
/// (answers 500): 100 concurrent callers make one token request and all fail fast with the
/// same clear error, instead of one request each, one after the other.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_refusing_keystone_fails_100_callers_with_one_request() {
    require_env!("a_refusing_keystone_fails_100_callers_with_one_request");
    // The time of one refused request, to compare with.
    let keystone = KeystoneProxy::start("127.0.0.1:5000", None).await;
    let wrong = format!("wrong-pw-{}", std::process::id());
    let (session, _) = through(&keystone, Some(&wrong));
    let t = Instant::now();
    let e = session.token().await.unwrap_err();
    let one = t.elapsed();
    assert!(matches!(e, Error::Auth { .. }), "{e}");
    for (what, answer_500) in [
        ("wrong password", None),
        ("Keystone answers 500", Some(Duration::from_millis(200))),
    ] {
        let keystone = KeystoneProxy::start("127.0.0.1:5000", answer_500).await;
        let (_, neutron) = through(&keystone, Some(&wrong));
        let (results, took) = callers(&neutron, 100).await;
        let errors: Vec<String> = results
            .iter()
            .map(|r| match r {
                Ok(()) => panic!("{what}: a caller succeeded"),
                Err(e) => e.to_string(),
            })
            .collect();
        eprintln!(
            "a_refusing_keystone_fails_100_callers_with_one_request: {what}: 100 callers failed in {:.0} ms ({} token requests; one refused request alone: {:.0} ms)",
            took.as_secs_f64() * 1000.0,
            keystone.token_requests(),
            one.as_secs_f64() * 1000.0
        );
        assert!(
            errors.iter().all(|e| e == &errors[0]),
            "{what}: one error for all: {errors:?}"
        );
        match answer_500 {
            None => {
                assert!(errors[0].contains("authentication at"), "{}", errors[0]);
                assert!(errors[0].contains("401"), "{}", errors[0]);
                assert!(!errors[0].contains(&wrong), "{}", errors[0]);
            }
            Some(_) => assert!(errors[0].contains("500"), "{}", errors[0]),
        }
        assert_eq!(keystone.token_requests(), 1, "{what}: one token request");
    }
}
