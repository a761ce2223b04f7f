//! Allowed address pairs: which pair is which ([`pair_matches`]), and adding or removing
//! one with a revision-checked update, concurrent changes to one port folded into one.

use std::collections::HashMap;
use std::sync::Arc;

use super::{AddressPair, Modified, Neutron, PortUpdate};
use crate::error::{Error, RequestContext, Result};
use crate::retry::RevisionRetry;

/// Whether allowed address pair `have` (as Neutron returns it, on a port whose MAC is
/// `port_mac`) is `want`: the same address (`10.0.0.5` and `10.0.0.5/32` are one) and the same
/// MAC, a missing MAC being the port's own.
pub fn pair_matches(have: &AddressPair, want: &AddressPair, port_mac: &str) -> bool {
    fn addr(s: &str) -> String {
        let s = s.trim();
        match s.split_once('/') {
            Some((a, "32")) | Some((a, "128")) => a.to_ascii_lowercase(),
            _ => s.to_ascii_lowercase(),
        }
    }
    let mac = |p: &AddressPair| {
        p.mac_address
            .as_deref()
            .unwrap_or(port_mac)
            .to_ascii_lowercase()
    };
    let ip_eq = match (
        addr(&have.ip_address).parse::<std::net::IpAddr>(),
        addr(&want.ip_address).parse::<std::net::IpAddr>(),
    ) {
        (Ok(a), Ok(b)) => a == b,
        _ => addr(&have.ip_address) == addr(&want.ip_address),
    };
    ip_eq && mac(have) == mac(want)
}

/// Pending pair changes per port, and the lock of the one writer per port in this client: the
/// writer takes every change waiting for its port into one GET + PUT, so concurrent callers in
/// one process neither collide (412) nor pay a round trip each.
#[derive(Default)]
pub(super) struct PairQueues {
    pending: std::sync::Mutex<HashMap<String, Vec<PairOp>>>,
    locks: std::sync::Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

impl std::fmt::Debug for PairQueues {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PairQueues")
    }
}

struct PairOp {
    add: bool,
    pair: AddressPair,
    done: tokio::sync::oneshot::Sender<Result<Option<Modified>>>,
}

/// `pairs` with the changes applied in order; which of them changed something.
fn apply_pair_ops(
    pairs: &[AddressPair],
    port_mac: &str,
    ops: &[(bool, &AddressPair)],
) -> (Vec<AddressPair>, Vec<bool>) {
    let mut out = pairs.to_vec();
    let mut changed = Vec::with_capacity(ops.len());
    for (add, pair) in ops {
        let present = out.iter().any(|e| pair_matches(e, pair, port_mac));
        if *add {
            if !present {
                // The port's own MAC: an IP-only pair (what Neutron means by no MAC).
                let mut p = (*pair).clone();
                if p.mac_address
                    .as_deref()
                    .is_some_and(|m| m.eq_ignore_ascii_case(port_mac))
                {
                    p.mac_address = None;
                }
                out.push(p);
            }
            changed.push(!present);
        } else {
            out.retain(|e| !pair_matches(e, pair, port_mac));
            changed.push(present);
        }
    }
    (out, changed)
}

impl Neutron {
    /// Adds `pair` to port `id`'s `allowed_address_pairs`; already there ([`pair_matches`]):
    /// nothing is sent (`changed` false). The change is one revision-checked
    /// [`Neutron::modify_port`], so a concurrent writer anywhere never loses its own; and
    /// concurrent calls for one port through this client (and its clones) are folded into one
    /// GET + PUT, each told whether *its* pair changed anything.
    pub async fn add_address_pair(
        &self,
        id: &str,
        pair: &AddressPair,
        retry: RevisionRetry,
    ) -> Result<Modified> {
        match self.queue_pair_op(id, true, pair, retry).await? {
            Some(m) => Ok(m),
            None => Err(Error::NotFound {
                ctx: RequestContext {
                    method: "GET".into(),
                    path: format!("/v2.0/ports/{id}"),
                    resource: Some(format!("port {id}")),
                },
                fault: crate::error::ApiFault {
                    kind: Some("PortNotFound".into()),
                    message: format!("Port {id} could not be found."),
                },
            }),
        }
    }

    /// Removes exactly `pair` from port `id`'s `allowed_address_pairs` (as
    /// [`Neutron::add_address_pair`]). Not there: nothing is sent; the port gone
    /// (404): Ok(None).
    pub async fn remove_address_pair(
        &self,
        id: &str,
        pair: &AddressPair,
        retry: RevisionRetry,
    ) -> Result<Option<Modified>> {
        self.queue_pair_op(id, false, pair, retry).await
    }

    async fn queue_pair_op(
        &self,
        id: &str,
        add: bool,
        pair: &AddressPair,
        retry: RevisionRetry,
    ) -> Result<Option<Modified>> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.pairs
            .pending
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(id.to_string())
            .or_default()
            .push(PairOp {
                add,
                pair: pair.clone(),
                done: tx,
            });
        let lock = self
            .pairs
            .locks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(id.to_string())
            .or_default()
            .clone();
        {
            let _writer = lock.lock().await;
            let batch = self
                .pairs
                .pending
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(id)
                .unwrap_or_default();
            // Empty: an earlier writer took ours with its batch.
            if !batch.is_empty() {
                self.write_pair_batch(id, batch, retry).await;
            }
        }
        rx.await.unwrap_or_else(|_| {
            Err(Error::Decode {
                ctx: RequestContext {
                    method: "PUT".into(),
                    path: format!("/v2.0/ports/{id}"),
                    resource: Some(format!("port {id}")),
                },
                message: "the writer of this address pair change went away".into(),
            })
        })
    }

    /// One revision-checked write of every change in `batch`; if it fails, each change alone
    /// (so one refused pair does not fail the others), each caller getting its own answer.
    async fn write_pair_batch(&self, id: &str, batch: Vec<PairOp>, retry: RevisionRetry) {
        let ops: Vec<(bool, &AddressPair)> = batch.iter().map(|o| (o.add, &o.pair)).collect();
        let mut changed = Vec::new();
        let r = self
            .modify_port(id, retry, |p| {
                let (pairs, c) = apply_pair_ops(&p.allowed_address_pairs, &p.mac_address, &ops);
                let any = c.iter().any(|c| *c);
                changed = c;
                any.then(|| PortUpdate {
                    allowed_address_pairs: Some(pairs),
                    ..Default::default()
                })
            })
            .await;
        match r {
            Ok(m) => {
                for (op, c) in batch.into_iter().zip(changed) {
                    let _ = op.done.send(Ok(Some(Modified {
                        changed: c,
                        ..m.clone()
                    })));
                }
            }
            // The port gone: every remove is done; an add is told None (its caller: 404).
            Err(e) if e.is_not_found() => {
                for op in batch {
                    let _ = op.done.send(Ok(None));
                }
            }
            Err(e) if batch.len() == 1 => {
                if let Some(op) = batch.into_iter().next() {
                    let _ = op.done.send(Err(e));
                }
            }
            Err(_) => {
                for op in batch {
                    let one = [(op.add, &op.pair)];
                    let r = self
                        .modify_port(id, retry, |p| {
                            let (pairs, c) =
                                apply_pair_ops(&p.allowed_address_pairs, &p.mac_address, &one);
                            c[0].then(|| PortUpdate {
                                allowed_address_pairs: Some(pairs),
                                ..Default::default()
                            })
                        })
                        .await;
                    let answer = match r {
                        Ok(m) => Ok(Some(m)),
                        Err(e) if e.is_not_found() && !op.add => Ok(None),
                        Err(e) => Err(e),
                    };
                    let _ = op.done.send(answer);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pairs_match_by_address_and_mac() {
        let p = |ip: &str, mac: Option<&str>| AddressPair {
            ip_address: ip.into(),
            mac_address: mac.map(String::from),
        };
        let vm = "fa:16:3e:00:00:01";
        assert!(pair_matches(
            &p("10.0.0.5", Some(vm)),
            &p("10.0.0.5", None),
            vm
        ));
        assert!(pair_matches(
            &p("10.0.0.5/32", None),
            &p("10.0.0.5", Some("FA:16:3E:00:00:01")),
            vm
        ));
        assert!(pair_matches(
            &p("fd00::0005/128", None),
            &p("fd00::5", None),
            vm
        ));
        assert!(!pair_matches(
            &p("10.0.0.5", Some("0a:00:00:00:00:09")),
            &p("10.0.0.5", None),
            vm
        ));
        assert!(!pair_matches(
            &p("10.0.0.6", None),
            &p("10.0.0.5", None),
            vm
        ));
        assert!(!pair_matches(
            &p("10.0.0.0/24", None),
            &p("10.0.0.0", None),
            vm
        ));
    }
}
