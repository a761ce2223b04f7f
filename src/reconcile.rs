//! Reconciliation, at start (before the API serves) and periodically:
//! 1. unfinished attachments (any phase but Ready) whose lock is free are rolled back — a crash's
//!    or a failed rollback's leftovers (an attach in flight holds its lock);
//! 2. Ready attachments whose netns no longer exists — path gone, or now a different namespace
//!    (compared by nsfs inode) — are detached (a forgotten DEL);
//! 3. owned resources that no record references — logical ports and bridge ports marked with
//!    this host, host veths named `cv<id>`/`cp<id>` whose alias is `courier:<host>:<id>` — are
//!    deleted. (A crash between creating a veth and setting its alias is covered by step 1: the
//!    record exists by then and rollback deletes by derived name.)
//!
//! Every resource is created only after its attachment's intent is durable, and the sweep
//! holds that attachment's lock while it re-reads the store and deletes; so "no record"
//! really means leaked, never "being created right now".

use std::future::Future;
use std::path::Path;

use crate::attach::Attacher;
use crate::error::{Error, Result};
use crate::model::{self, Phase};
use crate::vswitch::Vswitch;

#[derive(Debug, Default, serde::Serialize, serde::Deserialize)]
pub struct Report {
    pub rolled_back: Vec<String>,
    pub detached_gone_netns: Vec<String>,
    pub leaked_ports: Vec<String>,
    pub leaked_bridge_ports: Vec<String>,
    pub leaked_links: Vec<String>,
}

impl Report {
    pub fn is_empty(&self) -> bool {
        self.rolled_back.is_empty()
            && self.detached_gone_netns.is_empty()
            && self.leaked_ports.is_empty()
            && self.leaked_bridge_ports.is_empty()
            && self.leaked_links.is_empty()
    }
}

pub async fn run(
    attacher: &Attacher,
    vswitch: &Vswitch,
    host: &courier_netlink::Netlink,
    host_mark: &str,
) -> Result<Report> {
    let mut report = Report::default();

    for att in attacher.store.list().await? {
        if att.phase != Phase::Ready {
            // Under the attachment's lock an unfinished record is never one in flight (attach
            // and detach hold the lock for their whole flow): it is a crash's or a failed
            // rollback's leftover. Re-read it under the lock, then undo it.
            let _guard = attacher.locks.lock(&att.id).await;
            let Some(current) = attacher.store.get(&att.id).await? else {
                continue;
            };
            if current.phase != Phase::Ready {
                tracing::warn!(attachment = %att.id, phase = ?current.phase, "rolling back unfinished attachment");
                attacher.roll_back(&current).await?;
                report.rolled_back.push(att.id.clone());
            }
        } else if netns_gone(&att) {
            tracing::warn!(attachment = %att.id, netns = %att.netns, "netns is gone; detaching");
            attacher.detach(&att.key()).await?;
            report.detached_gone_netns.push(att.id.clone());
        }
    }

    for port in attacher.backend.owned_ports().await? {
        let id = port.attachment.clone().unwrap_or_default();
        let name = port.name.clone();
        if delete_if_unrecorded(attacher, &id, || attacher.backend.delete_port(&name)).await? {
            tracing::warn!(port = %port.name, attachment = %id, "deleted leaked logical port");
            report.leaked_ports.push(port.name);
        }
    }
    for bp in vswitch.owned_ports() {
        let id = bp.attachment.clone().unwrap_or_default();
        if delete_if_unrecorded(attacher, &id, || vswitch.delete_port(&bp.name)).await? {
            tracing::warn!(port = %bp.name, attachment = %id, "deleted leaked bridge port");
            report.leaked_bridge_ports.push(bp.name);
        }
    }
    for prefix in [model::HOST_IFNAME_PREFIX, model::PEER_IFNAME_PREFIX] {
        let links = host
            .links_with_prefix(prefix)
            .await
            .map_err(|e| Error::netlink(format!("listing {prefix}* interfaces"), e))?;
        for link in links {
            let Some(id) = model::id_from_ifname(&link.name) else {
                continue;
            };
            // Only links this host's Courier marked: another daemon's (or a stranger's) are not ours.
            if link.alias.as_deref() != Some(model::link_alias(host_mark, id).as_str()) {
                continue;
            }
            let delete = || async {
                host.delete_link(&link.name)
                    .await
                    .map_err(|e| Error::netlink(format!("deleting {}", link.name), e))
            };
            if delete_if_unrecorded(attacher, id, delete).await? {
                tracing::warn!(link = %link.name, "deleted leaked host interface");
                report.leaked_links.push(link.name);
            }
        }
    }
    Ok(report)
}

/// The attachment's netns no longer exists: its path is gone, is no longer a network namespace,
/// or now names a different namespace than the one attached (a reused name or PID).
fn netns_gone(att: &crate::model::Attachment) -> bool {
    match crate::netns::identify(&att.netns) {
        Err(_) => !Path::new(&att.netns).exists() || att.netns_inode.is_some(),
        Ok(inode) => att.netns_inode.is_some_and(|i| i != inode),
    }
}

/// Under the attachment's lock: if the store has no record of `id`, runs `delete`.
async fn delete_if_unrecorded<F, Fut>(attacher: &Attacher, id: &str, delete: F) -> Result<bool>
where
    F: FnOnce() -> Fut,
    Fut: Future<Output = Result<bool>>,
{
    let _guard = attacher.locks.lock(id).await;
    if !id.is_empty() && attacher.store.get(id).await?.is_some() {
        return Ok(false);
    }
    delete().await
}
