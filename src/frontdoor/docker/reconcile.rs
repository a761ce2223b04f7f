//! Courier's Docker networks against the Docker Engine's own list: what Docker removed while
//! Courier was down goes as DeleteNetwork would.

use serde::Deserialize;

use super::network::remove_network;
use crate::daemon::Daemon;
use crate::error::{Error, Result};

/// What reconciling Courier's Docker networks against Docker's own list did.
#[derive(Debug, Default)]
pub struct NetworksReconciled {
    /// Docker network ids whose record (and what CreateNetwork made) went.
    pub removed: Vec<String>,
    /// (item, error) of what could not be done; the next pass retries.
    pub errors: Vec<(String, Error)>,
}

/// Reconcile (at start and every pass): a Docker network Courier has a record of but the Docker
/// Engine (`[docker] engine`) no longer lists was removed while Courier was down (Docker
/// forgets a network whatever the driver answers, and cannot tell a driver that was not
/// there): it is removed as DeleteNetwork would. A record younger than the lease timeout is
/// left alone (Docker lists a network only after CreateNetwork answered). Docker unreachable:
/// nothing is removed, and the error says so. No record: Docker is not asked.
pub async fn reconcile_networks(d: &Daemon) -> NetworksReconciled {
    let mut out = NetworksReconciled::default();
    let nets = match d.attacher.store.docker_networks().await {
        Ok(n) => n,
        Err(e) => {
            out.errors.push(("docker networks".into(), e));
            return out;
        }
    };
    if nets.is_empty() {
        return out;
    }
    let listed = match engine_networks(&d.config.docker.engine_socket()).await {
        Ok(l) => l,
        Err(e) => {
            tracing::warn!(engine = %d.config.docker.engine, error = %e,
                "Docker networks not reconciled: the Docker Engine does not answer");
            out.errors.push(("docker networks".into(), e));
            return out;
        }
    };
    let grace = d.attacher.lease_timeout.as_secs();
    let now = crate::model::unix_now();
    for net in nets {
        if listed.contains(&net.network_id) || now.saturating_sub(net.since) <= grace {
            continue;
        }
        tracing::warn!(docker_network = %net.network_id, network = %net.name,
            "Docker no longer has this network (removed while Courier was down): removing it");
        match remove_network(d, &net).await {
            Ok(_) => out.removed.push(net.network_id),
            Err(e) => out
                .errors
                .push((format!("docker network {}", net.network_id), e)),
        }
    }
    out
}

/// The ids of every network the Docker Engine at `socket` has (`GET /networks`).
async fn engine_networks(socket: &std::path::Path) -> Result<std::collections::HashSet<String>> {
    let sock = socket.to_path_buf();
    let shown = socket.display().to_string();
    let unreachable = |why: String| {
        Error::BackendDown {
            backend: "docker-engine".into(),
            detail: format!(
                "the Docker Engine at {shown} ([docker] engine) does not answer ({why}); Docker networks removed while Courier was down stay until it does"
            ),
        }
    };
    let resp = tokio::task::spawn_blocking(move || {
        crate::client::request(
            &sock,
            "GET",
            "/networks",
            None,
            std::time::Duration::from_secs(10),
        )
    })
    .await
    .map_err(|e| Error::Internal(format!("docker engine task: {e}")))?
    .map_err(|e| {
        unreachable(match e {
            crate::client::ClientError::Connect { source, .. }
            | crate::client::ClientError::Io { source, .. } => source.to_string(),
            crate::client::ClientError::Reply(r) => r,
        })
    })?;
    if resp.status != 200 {
        return Err(unreachable(format!(
            "GET /networks answered {}: {}",
            resp.status,
            String::from_utf8_lossy(&resp.body)
        )));
    }
    #[derive(Deserialize)]
    struct Listed {
        #[serde(rename = "Id")]
        id: String,
    }
    let nets: Vec<Listed> = serde_json::from_slice(&resp.body)
        .map_err(|e| unreachable(format!("its network list does not decode: {e}")))?;
    Ok(nets.into_iter().map(|n| n.id).collect())
}
