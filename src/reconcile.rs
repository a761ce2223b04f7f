//! Reconciliation, at start (while the API already serves) and periodically:
//! 1. unfinished attachments (any phase but Ready) are rolled back under their lock — a
//!    crash's or a failed rollback's leftovers (an attach in flight holds its lock, and after it
//!    the record is Ready or gone);
//!    Docker's resting records (a lease, an endpoint not joined yet: see staged.rs) are not
//!    leftovers: they are released once not joined for longer than the lease timeout;
//! 2. Ready attachments whose netns is *certainly* gone — the path no longer exists, is no
//!    netns, or names a different namespace (compared by nsfs inode) — are detached (a
//!    forgotten DEL). The decision is re-made under the attachment's lock on the record as it is
//!    then (same generation): a restarted container is never detached on an old snapshot, and
//!    an error that cannot tell (EMFILE, EACCES) never counts as gone;
//! 3. owned resources that no record references are deleted: every backend's ports marked with
//!    this host (`Backend::find_ports`), and what every binding made here (`EdgeBinding::owned`:
//!    for veth-ovs, bridge ports marked with this host and host veths `cv<id>`/`cp<id>` whose
//!    alias is `courier:<host>:<id>`). (A crash between creating a veth and setting its alias is
//!    covered by step 1: the record exists by then and rollback deletes by derived name.)
//!
//! 0. before all that, each backend's pools are recovered once (pool/flow.rs
//!    `recover_pools`): until then none of its slots is handed out; and the sweep of step 3
//!    deletes a pooled port (its mark names a slot) only when no slot record names it.
//!
//! Every item is on its own: an error is recorded in the report (`errors`) and the pass goes on.
//! Records that do not decode are kept aside (see state.rs), listed in `undecodable`, and their
//! ids count as recorded, so step 3 spares whatever they describe.
//!
//! Every resource is created only after its attachment's intent is durable, and the sweep
//! holds that attachment's lock while it re-reads the store and deletes; so "no record"
//! really means leaked, never "being created right now".

use std::future::Future;

use serde::{Deserialize, Serialize};

use crate::attach::{Attacher, Forgotten};
use crate::backend::{PortQuery, PortRef};
use crate::binding::EdgeResource;
use crate::error::{Error, Result};
use crate::hooks;
use crate::model::{self, Phase};
use crate::state::Undecodable;

#[derive(Debug, Default, Serialize, Deserialize)]
pub struct Report {
    pub rolled_back: Vec<String>,
    pub detached_gone_netns: Vec<String>,
    pub leaked_ports: Vec<String>,
    pub leaked_bridge_ports: Vec<String>,
    pub leaked_links: Vec<String>,
    /// Docker leases and endpoints never joined or released within the lease timeout.
    #[serde(default)]
    pub expired_leases: Vec<String>,
    /// Existing ports this host had claimed for an attachment no record knows: given back.
    #[serde(default)]
    pub released_ports: Vec<String>,
    /// Address pairs this host put on a VM's port for an attachment no record knows, left
    /// without their reservation: removed ("VM port: MAC IP").
    #[serde(default)]
    pub leaked_pairs: Vec<String>,
    /// Docker networks the Docker Engine no longer lists (a `docker network rm` while Courier
    /// was down): removed as DeleteNetwork would (frontdoor/docker/reconcile.rs `reconcile_networks`).
    #[serde(default)]
    pub removed_docker_networks: Vec<String>,
    /// Pool slots recovery undid (a refill a crash cut short) or dropped (their port gone or
    /// changed in the backend).
    #[serde(default)]
    pub pool_slots_repaired: Vec<String>,
    /// Records kept aside because this daemon cannot read them.
    #[serde(default)]
    pub undecodable: Vec<Undecodable>,
    /// What could not be done this pass, item by item; the next pass retries.
    #[serde(default)]
    pub errors: Vec<ItemError>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ItemError {
    /// What it was about: an attachment id, a port or link name, or a listing.
    pub item: String,
    pub error: String,
}

impl Report {
    /// Nothing repaired, nothing failed, nothing kept aside.
    pub fn is_empty(&self) -> bool {
        self.rolled_back.is_empty()
            && self.detached_gone_netns.is_empty()
            && self.leaked_ports.is_empty()
            && self.leaked_bridge_ports.is_empty()
            && self.leaked_links.is_empty()
            && self.released_ports.is_empty()
            && self.leaked_pairs.is_empty()
            && self.removed_docker_networks.is_empty()
            && self.pool_slots_repaired.is_empty()
            && self.expired_leases.is_empty()
            && self.undecodable.is_empty()
            && self.errors.is_empty()
    }

    pub fn failed(&mut self, item: impl Into<String>, e: &Error) {
        let item = item.into();
        tracing::error!(item = %item, error = %e, "reconcile: item failed; going on");
        self.errors.push(ItemError {
            item,
            error: e.to_string(),
        });
    }

    /// Records `r` (Ok(true) = repaired → `into`, Err → errors) for `item`.
    fn record(&mut self, item: String, r: Result<bool>, into: fn(&mut Report) -> &mut Vec<String>) {
        match r {
            Ok(true) => into(self).push(item),
            Ok(false) => {}
            Err(e) => self.failed(item, &e),
        }
    }
}

pub async fn run(attacher: &Attacher) -> Report {
    let mut report = Report::default();

    // 0. Pools, before any of a backend's slots is handed out (and before the sweep below,
    // which spares the ports of recorded slots).
    for backend in attacher.registry.backends() {
        if attacher.pools.is_recovered(backend.id()) {
            continue;
        }
        match attacher.recover_pools(&**backend).await {
            Ok(r) => report
                .pool_slots_repaired
                .extend(r.undone.into_iter().chain(r.dropped)),
            Err(e) => report.failed(format!("recovering {} pools", backend.id()), &e),
        }
    }

    match attacher.store.list().await {
        Ok(listing) => {
            for u in &listing.undecodable {
                tracing::error!(record = %u.id, error = %u.error,
                    "store record cannot be read; kept aside, and what it may describe is spared");
            }
            report.undecodable = listing.undecodable;
            for att in listing.attachments {
                if att.docker.is_some() && att.netns.is_empty() {
                    // A Docker lease or endpoint not joined: the clock decides (staged.rs).
                    if crate::staged::lease_expired(&att, attacher.lease_timeout) {
                        let r = attacher
                            .release_expired(&att)
                            .await
                            .map(|f| f == Forgotten::Detached);
                        report.record(att.id, r, |r| &mut r.expired_leases);
                    } else if !matches!(att.phase, Phase::Reserved | Phase::Ready) {
                        let r = roll_back_leftover(attacher, &att).await;
                        report.record(att.id, r, |r| &mut r.rolled_back);
                    }
                } else if att.phase == Phase::Ready
                    && att.docker.is_some()
                    && att.netns_inode.is_none()
                    && matches!(
                        crate::netns::probe(&att.netns),
                        crate::netns::Probe::Netns(_)
                    )
                {
                    // A sandbox that exists now: learn its identity (Docker makes it after Join).
                    if let Err(e) = attacher.note_sandbox(&att.id).await {
                        report.failed(att.id.clone(), &e);
                    }
                } else if att.phase == Phase::Ready
                    && crate::staged::sandbox_may_be_coming(&att, attacher.lease_timeout)
                {
                    // Joined moments ago: Docker is still making the sandbox.
                } else if att.phase != Phase::Ready {
                    let r = roll_back_leftover(attacher, &att).await;
                    report.record(att.id, r, |r| &mut r.rolled_back);
                } else {
                    let probe = crate::netns::probe(&att.netns);
                    if let crate::netns::Probe::Unknown(e) = &probe {
                        tracing::warn!(attachment = %att.id, netns = %att.netns, error = %e,
                            "cannot tell whether the netns still exists; keeping the attachment");
                    } else if probe.certainly_gone(att.netns_inode) {
                        // Decided on the snapshot only as a hint; re-made under the lock.
                        hooks::point("reconcile-before-detach").await;
                        let r = attacher
                            .detach_forgotten(&att)
                            .await
                            .map(|f| f == Forgotten::Detached);
                        report.record(att.id, r, |r| &mut r.detached_gone_netns);
                    }
                }
            }
        }
        Err(e) => report.failed("listing the store", &e),
    }

    for backend in attacher.registry.backends() {
        let q = PortQuery::OwnedBy {
            host: attacher.host.clone(),
        };
        let ports = match backend.find_ports(&q).await {
            Ok(p) => p,
            Err(e) => {
                report.failed(format!("listing {} ports owned here", backend.id()), &e);
                continue;
            }
        };
        // Listed after the ports: a port is made only after its slot is recorded, so a
        // pooled port of the listing whose slot is not here now is a leftover.
        let slots = match attacher.store.slot_ids().await {
            Ok(s) => s,
            Err(e) => {
                report.failed("listing pool slots", &e);
                continue;
            }
        };
        for port in ports {
            let id = port.attachment.clone().unwrap_or_default();
            let port = &port;
            if crate::pool::is_slot_id(&id) {
                let r = if slots.contains(&id) {
                    Ok(false)
                } else {
                    let port_ref = PortRef {
                        id: Some(port.id.clone()),
                        name: port.name.clone(),
                    };
                    backend.delete_port(&port_ref, &attacher.host).await
                };
                if matches!(r, Ok(true)) {
                    tracing::warn!(backend = backend.id(), port = %port.name, slot = %id, "deleted a pooled port whose slot no record has");
                }
                report.record(port.name.clone(), r, |r| &mut r.leaked_ports);
                continue;
            }
            let r = delete_if_not_its_port(attacher, &id, &port.id, || {
                let port_ref = PortRef {
                    id: Some(port.id.clone()),
                    name: port.name.clone(),
                };
                async move {
                    // A reservation's pairs on the VM's port go first: they are all that
                    // allows its addresses there, and a pair left would outlive the port.
                    // (If one cannot be removed, the port stays for the next sweep.)
                    if let Some(plan) = &port.pairs_on {
                        let pairs = backend.require_address_pairs()?;
                        for ip in &port.ips {
                            let pair = crate::backend::AddressPair {
                                mac: plan.mac.clone(),
                                ip: ip.addr(),
                            };
                            pairs.remove_address_pair(&plan.parent, &pair).await?;
                        }
                    }
                    backend.delete_port(&port_ref, &attacher.host).await
                }
            })
            .await;
            if matches!(r, Ok(true)) {
                tracing::warn!(backend = backend.id(), port = %port.name, attachment = %id, "deleted leaked logical port");
            }
            report.record(port.name.clone(), r, |r| &mut r.leaked_ports);
        }
    }

    sweep_pairs(attacher, &mut report).await;

    // Existing ports claimed for an attachment whose record is gone: given back, not deleted.
    // (Courier only claims ports that were bound to nothing, so "given back" is "unbound".)
    for backend in attacher.registry.backends() {
        let q = PortQuery::ClaimedBy {
            host: attacher.host.clone(),
        };
        let ports = match backend.find_ports(&q).await {
            Ok(p) => p,
            Err(e) => {
                report.failed(format!("listing {} ports claimed here", backend.id()), &e);
                continue;
            }
        };
        for port in ports {
            let id = port.attachment.clone().unwrap_or_default();
            let r = delete_if_unrecorded(attacher, &id, || {
                let existing = model::ExistingPort {
                    id: port.id.clone(),
                    device_owner: String::new(),
                    device_id: String::new(),
                    host_id: None,
                    revision: None,
                    vnic_type: None,
                };
                let owner = crate::backend::OwnerMark {
                    host: attacher.host.clone(),
                    attachment: id.clone(),
                };
                async move {
                    backend
                        .require_existing_ports()?
                        .release_port(&existing, &owner)
                        .await
                }
            })
            .await;
            if matches!(r, Ok(true)) {
                tracing::warn!(backend = backend.id(), port = %port.id, attachment = %id, "gave back a claimed port no record knows");
            }
            report.record(port.id, r, |r| &mut r.released_ports);
        }
    }

    for binding in attacher.registry.bindings() {
        let orphans = match binding.owned().await {
            Ok(o) => o,
            Err(e) => {
                report.failed(format!("listing what {} made here", binding.kind()), &e);
                continue;
            }
        };
        // Read after the listing: a pooled edge is made only after its slot is recorded.
        let slots = match attacher.store.slot_ids().await {
            Ok(s) => s,
            Err(e) => {
                report.failed("listing pool slots", &e);
                continue;
            }
        };
        for o in orphans {
            let r = if crate::pool::is_slot_id(&o.attachment) {
                // A pool slot's pre-plugged edge: kept while its slot is recorded.
                if slots.contains(&o.attachment) {
                    Ok(false)
                } else {
                    binding.remove(&o).await
                }
            } else {
                delete_if_unrecorded(attacher, &o.attachment, || binding.remove(&o)).await
            };
            if matches!(r, Ok(true)) {
                let what = match o.resource {
                    EdgeResource::BridgePort => "deleted leaked bridge port",
                    EdgeResource::Link => "deleted leaked host interface",
                };
                tracing::warn!(binding = binding.kind(), name = %o.name, attachment = %o.attachment, "{what}");
            }
            match o.resource {
                EdgeResource::BridgePort => {
                    report.record(o.name, r, |r| &mut r.leaked_bridge_ports)
                }
                EdgeResource::Link => report.record(o.name, r, |r| &mut r.leaked_links),
            }
        }
    }
    report
}

/// Address pairs this host marked on VM ports (`AddressPairs::owned_address_pairs`) for an attachment no
/// record knows: their reservation went with its pair above, so what is left here has none
/// (deleted by hand, say) and nothing else would ever take it off. Removed under the
/// attachment's lock, only while the mark is still that attachment's.
async fn sweep_pairs(attacher: &Attacher, report: &mut Report) {
    for backend in attacher.registry.backends() {
        // A backend without address pairs marks none.
        let Some(marked) = backend.address_pairs() else {
            continue;
        };
        let pairs = match marked.owned_address_pairs(&attacher.host).await {
            Ok(p) => p,
            Err(e) => {
                report.failed(
                    format!("listing {} address pairs added here", backend.id()),
                    &e,
                );
                continue;
            }
        };
        for p in pairs {
            let item = format!("{}: {} {}", p.parent, p.pair.mac, p.pair.ip);
            let r = delete_if_unrecorded(attacher, &p.attachment, || {
                marked.remove_owned_address_pair(&p)
            })
            .await;
            if matches!(r, Ok(true)) {
                tracing::warn!(backend = backend.id(), pair = %item, attachment = %p.attachment, "removed a leaked address pair");
            }
            report.record(item, r, |r| &mut r.leaked_pairs);
        }
    }
}

/// Rolls back an unfinished record — re-read under its lock, where an unfinished record is never
/// one in flight (attach and detach hold the lock for their whole flow).
async fn roll_back_leftover(attacher: &Attacher, seen: &model::Attachment) -> Result<bool> {
    let _guard = attacher.lock_for(&seen.key()).await;
    let Some(current) = attacher.store.get(&seen.id).await? else {
        return Ok(false);
    };
    // Finished meanwhile, or at rest (a Docker lease: its own expiry rule).
    if matches!(current.phase, Phase::Ready | Phase::Reserved) {
        return Ok(false);
    }
    tracing::warn!(attachment = %current.id, phase = ?current.phase, "rolling back unfinished attachment");
    attacher.roll_back(&current).await?;
    Ok(true)
}

/// A backend port of attachment `id` (under its lock): deleted when no record of `id` exists,
/// or when the record names another port — an earlier attach's orphan that bears the same
/// derived name (a POST that completed in the backend after the daemon died, then the same
/// container attached again). A record that names no port yet (an intent) is rolled back by
/// name, all of that name, so it spares every one here.
async fn delete_if_not_its_port<F, Fut>(
    attacher: &Attacher,
    id: &str,
    port_id: &str,
    delete: F,
) -> Result<bool>
where
    F: FnOnce() -> Fut,
    Fut: Future<Output = Result<bool>>,
{
    let _guard = attacher.locks.lock(id).await;
    if !id.is_empty() && attacher.store.is_recorded(id).await? {
        match attacher.store.get(id).await {
            Ok(Some(att)) if att.port.as_ref().is_some_and(|p| p.id != port_id) => {
                tracing::warn!(attachment = %id, port = %port_id, recorded = ?att.port.as_ref().map(|p| &p.id),
                    "a port of this attachment that its record does not name: an orphan of an earlier attach");
            }
            _ => return Ok(false),
        }
    }
    delete().await
}

/// Under the attachment's lock: if the store has no record of `id` (an undecodable one counts
/// as a record), runs `delete`.
async fn delete_if_unrecorded<F, Fut>(attacher: &Attacher, id: &str, delete: F) -> Result<bool>
where
    F: FnOnce() -> Fut,
    Fut: Future<Output = Result<bool>>,
{
    let _guard = attacher.locks.lock(id).await;
    if !id.is_empty() && attacher.store.is_recorded(id).await? {
        return Ok(false);
    }
    delete().await
}
