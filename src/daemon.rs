//! `courier daemon`: wires the store, backend, vswitch and binding into the attach flow, binds
//! the API socket, and serves it until SIGTERM/SIGINT while the start-up reconcile runs beside
//! it (one bad record or one failing rollback never keeps the node from serving).

use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::sync::Arc;
use std::time::{Duration, Instant};

use courier_netlink::Netlink;
use tokio::net::UnixListener;

use crate::attach::Attacher;
use crate::backend::lazy::Lazy;
use crate::backend::neutron::{self, NeutronBackend};
use crate::backend::ovn::OvnBackend;
use crate::backend::Backend;
use crate::binding::veth_ovs::VethOvs;
use crate::config::Config;
use crate::error::{Error, Result};
use crate::reconcile;
use crate::registry::Registry;
use crate::state::Store;
use crate::vswitch::Vswitch;

pub struct Daemon {
    pub config: Config,
    pub attacher: Arc<Attacher>,
    pub started: Instant,
    /// One reconcile pass at a time (start-up, periodic and requested ones queue).
    reconciling: tokio::sync::Mutex<()>,
    /// The last pass's report, for `courier status`.
    pub last_reconcile: std::sync::Mutex<Option<reconcile::Report>>,
    /// Passes finished since start (the first is the start-up pass).
    pub reconcile_passes: std::sync::atomic::AtomicU64,
}

impl Daemon {
    pub fn new(config: Config, attacher: Arc<Attacher>) -> Daemon {
        Daemon {
            config,
            attacher,
            started: Instant::now(),
            reconciling: tokio::sync::Mutex::new(()),
            last_reconcile: std::sync::Mutex::new(None),
            reconcile_passes: std::sync::atomic::AtomicU64::new(0),
        }
    }

    /// One reconcile pass. Never fails as a whole: each item's error is in the report.
    pub async fn reconcile(&self) -> reconcile::Report {
        let _one = self.reconciling.lock().await;
        let mut report = reconcile::run(&self.attacher).await;
        if self.config.docker.enabled {
            let docker = crate::frontdoor::docker::reconcile_networks(self).await;
            report.removed_docker_networks = docker.removed;
            for (item, e) in &docker.errors {
                report.failed(item.clone(), e);
            }
        }
        let m = &self.attacher.metrics;
        m.repaired("rolled_back", report.rolled_back.len());
        m.repaired("detached_gone_netns", report.detached_gone_netns.len());
        m.repaired("leaked_port", report.leaked_ports.len());
        m.repaired("leaked_bridge_port", report.leaked_bridge_ports.len());
        m.repaired("leaked_link", report.leaked_links.len());
        m.repaired("released_port", report.released_ports.len());
        m.repaired("leaked_pair", report.leaked_pairs.len());
        m.reconciled(report.errors.len(), report.undecodable.len());
        let kept = reconcile::Report {
            undecodable: report.undecodable.clone(),
            errors: report.errors.clone(),
            ..Default::default()
        };
        *self
            .last_reconcile
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = Some(kept);
        self.reconcile_passes
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        report
    }
}

fn log_report(when: &str, r: &reconcile::Report) {
    if r.is_empty() {
        tracing::debug!("reconcile {when}: nothing to do");
    } else if r.errors.is_empty() && r.undecodable.is_empty() {
        tracing::warn!(report = ?r, "reconcile {when} repaired state");
    } else {
        tracing::error!(report = ?r, errors = r.errors.len(), undecodable = r.undecodable.len(),
            "reconcile {when}: some items could not be repaired; the next pass retries");
    }
}

pub async fn run(config: Config) -> Result<()> {
    let store = Store::open(&config.state_dir)?;
    // Resolved once, now: a bad clouds.yaml or missing OS_* is a start-up error to fix.
    let neutron_cfg = if config.neutron.enabled {
        let cloud = config.neutron.cloud.clone();
        let mut cloud_cfg = match &config.neutron.auth {
            Some(auth) => {
                auth.validate()
                    .map_err(|e| Error::InvalidInput(format!("[neutron.auth]: {e}")))?;
                auth.clone()
            }
            None => courier_openstack::CloudConfig::from_process_env(cloud.as_deref())
                .map_err(|e| Error::InvalidInput(format!("[neutron]: {e}")))?,
        };
        if let Some(n) = config.neutron.max_in_flight {
            cloud_cfg.max_in_flight = n;
        }
        let host_id = config
            .neutron
            .host_id
            .clone()
            .unwrap_or_else(crate::config::local_hostname);
        tracing::info!(cloud = ?cloud, principal = %cloud_cfg.principal(), %host_id, "Neutron backend configured");
        Some((cloud_cfg, host_id))
    } else {
        None
    };
    let host_netlink = Arc::new(
        Netlink::host().map_err(|e| Error::netlink("opening rtnetlink in the host netns", e))?,
    );
    // The bindings this host offers, in config order (the first is the default). Only
    // veth-ovs needs the local OVS DB: wait for it then (boot order); a VM running nested
    // bindings only has none.
    let mut bindings: Vec<Arc<dyn crate::binding::EdgeBinding>> = Vec::new();
    let mut vswitches: Vec<Arc<Vswitch>> = Vec::new();
    for kind in &config.bindings {
        match kind.as_str() {
            "veth-ovs" => {
                let vswitch = Arc::new(
                    retry_until_up("local Open_vSwitch DB", || {
                        Vswitch::connect(
                            &config.ovn.ovs_remote,
                            &config.ovn.bridge,
                            &config.host,
                            config.ovn.ovsdb_options(),
                        )
                    })
                    .await?,
                );
                vswitches.push(vswitch.clone());
                bindings.push(Arc::new(VethOvs::new(
                    host_netlink.clone(),
                    vswitch,
                    config.ovn.mtu,
                    &config.host,
                    &config.ovn.controller_ctl,
                )));
            }
            "ipvlan" => bindings.push(Arc::new(crate::binding::macvlan::MacVlan::ipvlan(
                host_netlink.clone(),
                &config.nested.master,
                config.nested.parent_port.clone(),
                config.ovn.mtu,
            ))),
            "macvlan" => bindings.push(Arc::new(crate::binding::macvlan::MacVlan::new(
                host_netlink.clone(),
                &config.nested.master,
                config.nested.parent_port.clone(),
                config.ovn.mtu,
            ))),
            "vlan-ovs" => {
                let vswitch = Arc::new(
                    retry_until_up("local Open_vSwitch DB", || {
                        Vswitch::connect(
                            &config.ovn.ovs_remote,
                            &config.nested.bridge,
                            &config.host,
                            config.ovn.ovsdb_options(),
                        )
                    })
                    .await?,
                );
                vswitches.push(vswitch.clone());
                bindings.push(Arc::new(VethOvs::nested_vlan(
                    host_netlink.clone(),
                    vswitch,
                    config.ovn.mtu,
                    &config.host,
                    crate::binding::vm_port::VmPort::new(
                        host_netlink.clone(),
                        &config.nested.master,
                        config.nested.parent_port.clone(),
                    ),
                )));
            }
            "vlan" => bindings.push(Arc::new(crate::binding::vlan::Vlan::new(
                host_netlink.clone(),
                &config.nested.master,
                config.nested.parent_port.clone(),
                config.ovn.mtu,
                &config.host,
            ))),
            "sriov" => {
                let mappings =
                    courier_sriov::parse_device_mappings(&config.sriov.physical_device_mappings)
                        .map_err(|e| Error::InvalidInput(e.to_string()))?;
                let pool = Arc::new(crate::binding::sriov::pool::VfPool::new(
                    courier_sriov::Sysfs::host(),
                    mappings,
                ));
                bindings.push(Arc::new(crate::binding::sriov::Sriov::new(
                    host_netlink.clone(),
                    pool,
                    crate::binding::sriov::VfPolicy {
                        spoof_check: config.sriov.spoof_check,
                        trust: config.sriov.trust,
                        mtu: config.ovn.mtu,
                    },
                    &config.host,
                )));
            }
            other => {
                return Err(Error::InvalidInput(format!(
                    "binding {other:?} is not one Courier has"
                )))
            }
        }
    }
    // Backends connect in the background: the daemon serves the networks of those that are up,
    // and the others answer "try again later" until they come (boot order, outages).
    // A backend connects only once it has checked that no other machine uses this host mark
    // (`refuse_a_claimed_mark`); if one does, the daemon stops (below).
    let machine = machine_id(&config, vswitches.first()).await?;
    let host = config.host.clone();
    let mut lazies: Vec<Arc<Lazy>> = Vec::new();
    if !config.ovn.nb_remote.is_empty() {
        let (remote, options) = (config.ovn.nb_remote.clone(), config.ovn.ovsdb_options());
        let southbound = config.ovn.southbound();
        let host = host.clone();
        lazies.push(Lazy::spawn("ovn", move || {
            let (remote, southbound) = (remote.clone(), southbound.clone());
            let (machine, host) = (machine.clone(), host.clone());
            async move {
                let b = OvnBackend::connect(&remote, options)
                    .await?
                    .with_machine(machine);
                let b = match southbound {
                    Some(sb) => b.with_southbound(&sb, options),
                    None => b,
                };
                refuse_a_claimed_mark(b, &host).await
            }
        }));
    }
    if let Some((cloud_cfg, host_id)) = neutron_cfg {
        let vlan_children = config.neutron.vlan_children;
        lazies.push(Lazy::spawn(neutron::ID, move || {
            let (cfg, host_id, host) = (cloud_cfg.clone(), host_id.clone(), host.clone());
            async move {
                let b = NeutronBackend::connect(cfg, &host_id)
                    .await?
                    .with_vlan_children(vlan_children);
                refuse_a_claimed_mark(b, &host).await
            }
        }));
    }
    let backends: Vec<Arc<dyn Backend>> = lazies
        .iter()
        .map(|l| l.clone() as Arc<dyn Backend>)
        .collect();
    let registry = Arc::new(Registry::new(
        backends,
        bindings,
        Some(&config.default_backend),
    ));
    let mut attacher = Attacher::new(store, registry, config.ovn.port_up_timeout(), &config.host);
    attacher.lease_timeout = Duration::from_secs(config.docker.lease_timeout_secs);
    attacher.pools = Arc::new(crate::pool::flow::Pools::new(config.pool.clone()));
    let attacher = Arc::new(attacher);
    if config.pool.enabled || !config.pool.overrides.is_empty() {
        // Refills: every interval, and at once when a take or a miss wakes it. Pools of a
        // backend refill only once its slots are recovered (the reconcile pass).
        let (a, every) = (
            attacher.clone(),
            Duration::from_secs(config.pool.refill_interval_secs),
        );
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = tokio::time::sleep(every) => {}
                    _ = a.pools.wake.notified() => {}
                }
                a.refill_all().await;
            }
        });
    }
    let daemon = Arc::new(Daemon::new(config.clone(), attacher));

    // Serve first: the start-up reconcile runs beside the API. That is safe because every
    // flow and every repair takes the attachment's lock, and an ADD that finds a leftover
    // undoes it itself.
    let listener = bind(&config.socket)?;
    tracing::info!(socket = %config.socket.display(), host = %config.host,
        nb = %config.ovn.nb_remote, "courier daemon serving");
    let docker_listener = if config.docker.enabled {
        let l = bind(&config.docker.socket)?;
        tracing::info!(socket = %config.docker.socket.display(), scope = %config.docker.scope,
            "serving Docker's libnetwork NetworkDriver + IpamDriver");
        Some(l)
    } else {
        None
    };

    // A backend that connects after the start-up pass gets a pass of its own then (its leaks
    // and its records' leftovers), periodic reconcile or not.
    for lazy in lazies.iter().filter(|l| !l.is_connected()) {
        let (d, lazy) = (daemon.clone(), lazy.clone());
        tokio::spawn(async move {
            lazy.wait_connected().await;
            let r = d.reconcile().await;
            log_report(&format!("after {} connected", lazy.id()), &r);
        });
    }
    let d = daemon.clone();
    let every = Duration::from_secs(config.reconcile_interval_secs);
    tokio::spawn(async move {
        let r = d.reconcile().await;
        log_report("at start", &r);
        if every.is_zero() {
            return;
        }
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        loop {
            tick.tick().await;
            let r = d.reconcile().await;
            log_report("(periodic)", &r);
        }
    });

    let app = crate::frontdoor::api::router(daemon.clone());
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .map_err(|e| Error::Internal(format!("installing SIGTERM handler: {e}")))?;
    // A backend that refuses for good (another machine has this host mark) stops the daemon.
    let (refused_tx, refused_rx) = tokio::sync::watch::channel(None::<String>);
    for lazy in &lazies {
        let (lazy, tx) = (lazy.clone(), refused_tx.clone());
        tokio::spawn(async move {
            let why = lazy.wait_refused().await;
            tx.send_replace(Some(why));
        });
    }
    let mut refused = refused_rx.clone();
    let shutdown = async move {
        tokio::select! {
            _ = term.recv() => {},
            _ = tokio::signal::ctrl_c() => {},
            _ = refused.wait_for(|r| r.is_some()) => {},
        }
        tracing::info!("shutting down");
    };
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let docker = docker_listener.map(|l| {
        let app = crate::frontdoor::docker::router(daemon.clone());
        let mut stop = stop_rx.clone();
        tokio::spawn(async move {
            let r = axum::serve(l, app)
                .with_graceful_shutdown(async move {
                    let _ = stop.wait_for(|s| *s).await;
                })
                .await;
            if let Err(e) = r {
                tracing::error!(error = %e, "serving the Docker plugin socket failed");
            }
        })
    });
    let served = axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
        .map_err(|e| Error::Internal(format!("serving API: {e}")));
    let _ = stop_tx.send(true);
    if let Some(t) = docker {
        let _ = t.await;
        let _ = std::fs::remove_file(&config.docker.socket);
    }
    let _ = std::fs::remove_file(&config.socket);
    if let Some(why) = refused_rx.borrow().clone() {
        return Err(Error::MarkClaimed(why));
    }
    served
}

/// This machine's identity (`Config::machine_id`): configured, else the local OVS system-id
/// (the OVN chassis name) when a binding uses the local Open_vSwitch DB, else /etc/machine-id.
/// None (warned): ports are then made without it and this machine is told from no other.
async fn machine_id(config: &Config, vswitch: Option<&Arc<Vswitch>>) -> Result<Option<String>> {
    if let Some(m) = &config.machine_id {
        return Ok(Some(m.clone()));
    }
    if let Some(vs) = vswitch {
        if let Some(id) = vs.system_id().await? {
            return Ok(Some(id));
        }
    }
    for path in ["/etc/machine-id", "/var/lib/dbus/machine-id"] {
        if let Ok(text) = std::fs::read_to_string(path) {
            let id = text.trim();
            if !id.is_empty() {
                return Ok(Some(id.to_string()));
            }
        }
    }
    tracing::warn!("this machine has no identity (no OVS system-id, no /etc/machine-id): set machine_id (COURIER_MACHINE_ID), or two machines given one host mark cannot be told apart");
    Ok(None)
}

/// `backend` if no other machine has ports under host mark `host`; else the refusal
/// (`Error::MarkClaimed`), which stops the daemon.
async fn refuse_a_claimed_mark<B: Backend>(backend: B, host: &str) -> Result<B> {
    match backend.mark_claimed(host).await? {
        None => Ok(backend),
        Some(claim) => Err(Error::MarkClaimed(claim.message(backend.id(), host))),
    }
}

/// Retries `connect` every second (logging why) until it succeeds or SIGTERM/SIGINT arrives.
async fn retry_until_up<T, F, Fut>(what: &str, mut connect: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T>>,
{
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .map_err(|e| Error::Internal(format!("installing SIGTERM handler: {e}")))?;
    let mut warned = false;
    loop {
        match connect().await {
            Ok(v) => {
                if warned {
                    tracing::info!("{what} is reachable now");
                }
                return Ok(v);
            }
            Err(e) => {
                if !warned {
                    tracing::warn!(error = %e, "{what} not reachable yet; retrying every second");
                    warned = true;
                }
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            _ = term.recv() => return Err(Error::Unavailable(format!("stopped while waiting for {what}"))),
            _ = tokio::signal::ctrl_c() => return Err(Error::Unavailable(format!("stopped while waiting for {what}"))),
        }
    }
}

/// Binds the API socket, root-only from birth: it is bound inside a fresh 0700 directory next
/// to its final path, made 0600 there, and renamed into place — so the socket at the final path
/// never has another mode, and no process-wide umask is touched. A stale socket file (no daemon
/// behind it) is replaced; a live one means another daemon runs: refuse.
fn bind(path: &std::path::Path) -> Result<UnixListener> {
    let dir = path.parent().unwrap_or(std::path::Path::new("."));
    std::fs::create_dir_all(dir)
        .map_err(|e| Error::Internal(format!("creating {}: {e}", dir.display())))?;
    if path.exists() {
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            return Err(Error::InvalidInput(format!(
                "another courier daemon is serving {}: stop it first",
                path.display()
            )));
        }
        std::fs::remove_file(path)
            .map_err(|e| Error::Internal(format!("removing stale {}: {e}", path.display())))?;
    }
    let private = dir.join(format!(".courier-bind-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&private);
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(&private)
        .map_err(|e| Error::Internal(format!("creating {}: {e}", private.display())))?;
    let result = (|| {
        let tmp = private.join("api.sock");
        let listener = std::os::unix::net::UnixListener::bind(&tmp)
            .map_err(|e| Error::Internal(format!("binding {}: {e}", tmp.display())))?;
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o600))
            .map_err(|e| Error::Internal(format!("chmod 0600 {}: {e}", tmp.display())))?;
        std::fs::rename(&tmp, path).map_err(|e| {
            Error::Internal(format!(
                "moving {} to {}: {e}",
                tmp.display(),
                path.display()
            ))
        })?;
        listener
            .set_nonblocking(true)
            .map_err(|e| Error::Internal(format!("socket {}: {e}", path.display())))?;
        UnixListener::from_std(listener)
            .map_err(|e| Error::Internal(format!("socket {}: {e}", path.display())))
    })();
    let _ = std::fs::remove_dir_all(&private);
    result
}

#[cfg(test)]
mod tests {
    use super::*;
    use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify};

    /// The socket appears at its path already 0600 (moved there whole), and its mode is never
    /// changed afterwards: no window where another user could connect.
    #[tokio::test]
    async fn socket_is_born_0600() {
        let dir = tempfile::tempdir().unwrap();
        let config = Config {
            socket: dir.path().join("api.sock"),
            ..Default::default()
        };
        let ino = Inotify::init(InitFlags::IN_NONBLOCK).unwrap();
        ino.add_watch(
            dir.path(),
            AddWatchFlags::IN_CREATE | AddWatchFlags::IN_ATTRIB | AddWatchFlags::IN_MOVED_TO,
        )
        .unwrap();
        let _listener = bind(&config.socket).unwrap();
        let mode = std::fs::metadata(&config.socket)
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let events: Vec<_> = ino
            .read_events()
            .unwrap_or_default()
            .into_iter()
            .filter(|e| e.name.as_deref() == Some(std::ffi::OsStr::new("api.sock")))
            .map(|e| e.mask)
            .collect();
        assert!(
            events.iter().all(|m| *m == AddWatchFlags::IN_MOVED_TO),
            "the socket was created or chmod'ed in place: {events:?}"
        );
        assert!(!events.is_empty());
        // Nothing left behind but the socket.
        let left: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
        assert_eq!(left.len(), 1);
    }
}
