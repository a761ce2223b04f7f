//! `courier daemon`: wires the store, backend, vswitch and binding into the attach flow,
//! reconciles, then serves the local API until SIGTERM/SIGINT.

use std::os::unix::fs::PermissionsExt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use courier_netlink::Netlink;
use tokio::net::UnixListener;

use crate::attach::Attacher;
use crate::backend::ovn::OvnBackend;
use crate::binding::veth_ovs::VethOvs;
use crate::config::Config;
use crate::error::{Error, Result};
use crate::reconcile;
use crate::state::Store;
use crate::vswitch::Vswitch;

pub struct Daemon {
    pub config: Config,
    pub attacher: Arc<Attacher>,
    pub vswitch: Arc<Vswitch>,
    pub host_netlink: Arc<Netlink>,
    pub started: Instant,
}

impl Daemon {
    pub async fn reconcile(&self) -> Result<reconcile::Report> {
        let report = reconcile::run(
            &self.attacher,
            &self.vswitch,
            &self.host_netlink,
            &self.config.host,
        )
        .await?;
        let m = &self.attacher.metrics;
        m.repaired("rolled_back", report.rolled_back.len());
        m.repaired("detached_gone_netns", report.detached_gone_netns.len());
        m.repaired("leaked_port", report.leaked_ports.len());
        m.repaired("leaked_bridge_port", report.leaked_bridge_ports.len());
        m.repaired("leaked_link", report.leaked_links.len());
        Ok(report)
    }
}

pub async fn run(config: Config) -> Result<()> {
    let store = Store::open(&config.state_dir)?;
    // OVN may start after us (boot order): wait for it rather than exit. The API socket is bound
    // only once everything is up and reconciled, so CNI callers meanwhile get "try again later".
    let backend = Arc::new(
        retry_until_up("OVN Northbound", || {
            OvnBackend::connect(&config.ovn.nb_remote, &config.host)
        })
        .await?,
    );
    let vswitch = Arc::new(
        retry_until_up("local Open_vSwitch DB", || {
            Vswitch::connect(&config.ovn.ovs_remote, &config.ovn.bridge, &config.host)
        })
        .await?,
    );
    let host_netlink = Arc::new(
        Netlink::host().map_err(|e| Error::netlink("opening rtnetlink in the host netns", e))?,
    );
    let binding = Arc::new(VethOvs::new(
        host_netlink.clone(),
        vswitch.clone(),
        config.ovn.mtu,
        &config.host,
    ));
    let attacher = Arc::new(Attacher::new(
        store,
        backend,
        binding,
        config.ovn.port_up_timeout(),
    ));
    let daemon = Arc::new(Daemon {
        config: config.clone(),
        attacher,
        vswitch,
        host_netlink,
        started: Instant::now(),
    });

    let report = daemon.reconcile().await?;
    if report.is_empty() {
        tracing::info!("reconcile at start: nothing to do");
    } else {
        tracing::warn!(?report, "reconcile at start repaired state");
    }

    let listener = bind(&config)?;
    tracing::info!(socket = %config.socket.display(), host = %config.host,
        nb = %config.ovn.nb_remote, "courier daemon ready");

    if config.reconcile_interval_secs > 0 {
        let d = daemon.clone();
        let every = Duration::from_secs(config.reconcile_interval_secs);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.tick().await;
            loop {
                tick.tick().await;
                match d.reconcile().await {
                    Ok(r) if !r.is_empty() => {
                        tracing::warn!(report = ?r, "periodic reconcile repaired state")
                    }
                    Ok(_) => {}
                    Err(e) => tracing::error!(error = %e, "periodic reconcile failed"),
                }
            }
        });
    }

    let app = crate::frontdoor::api::router(daemon.clone());
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .map_err(|e| Error::Internal(format!("installing SIGTERM handler: {e}")))?;
    let shutdown = async move {
        tokio::select! {
            _ = term.recv() => {},
            _ = tokio::signal::ctrl_c() => {},
        }
        tracing::info!("shutting down");
    };
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
        .map_err(|e| Error::Internal(format!("serving API: {e}")))?;
    let _ = std::fs::remove_file(&config.socket);
    Ok(())
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

/// Binds the API socket, root-only. A stale socket file (no daemon behind it) is replaced;
/// a live one means another daemon runs: refuse.
fn bind(config: &Config) -> Result<UnixListener> {
    let path = &config.socket;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)
            .map_err(|e| Error::Internal(format!("creating {}: {e}", dir.display())))?;
    }
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
    let listener = UnixListener::bind(path)
        .map_err(|e| Error::Internal(format!("binding {}: {e}", path.display())))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .map_err(|e| Error::Internal(format!("chmod 0600 {}: {e}", path.display())))?;
    Ok(listener)
}
