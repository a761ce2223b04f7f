//! Nested ipvlan/macvlan (`AddressPairs`): a container's address as an allowed address pair on
//! the VM's port, added and removed revision-checked (retried on 412: never a lost pair).
//! Neutron marks none on the VM's port: a pair is found through its reservation's tags
//! (`LogicalPort::pairs_on`).

use std::time::Instant;

use async_trait::async_trait;
use courier_openstack as os;

use super::{os_err, NeutronBackend, RETRY_FOR};
use crate::backend::{AddressPair, AddressPairs};
use crate::error::{Error, Result};

impl NeutronBackend {
    fn pair_of(pair: &AddressPair) -> os::AddressPair {
        os::AddressPair {
            ip_address: pair.ip.to_string(),
            mac_address: Some(pair.mac.to_ascii_lowercase()),
        }
    }
}

#[async_trait]
impl AddressPairs for NeutronBackend {
    async fn add_address_pair(&self, parent: &str, pair: &AddressPair) -> Result<()> {
        let want = Self::pair_of(pair);
        let retry = os::RevisionRetry::default();
        let r = os::retry_transient(Instant::now() + RETRY_FOR, os::Backoff::default(), || {
            self.api.add_address_pair(parent, &want, retry)
        })
        .await;
        match r {
            Ok(m) => {
                tracing::debug!(parent, ip = %pair.ip, changed = m.changed, conflicts = m.conflicts, "address pair on the VM's port");
                Ok(())
            }
            Err(e) => Err(match e.fault_type() {
                Some("InvalidVirtualMACAddress") => Error::InvalidInput(format!(
                    "Neutron refuses the address pair {} {} on the VM's port {parent}: ML2/OVN allows no MAC of a container's own on a bound port (InvalidVirtualMACAddress), so the macvlan binding cannot work through Neutron; use the ipvlan binding (the VM's MAC, an IP-only pair) or vlan (`--binding ipvlan`, CNI \"binding\": \"ipvlan\")",
                    pair.mac, pair.ip
                )),
                Some("AllowedAddressPairExhausted") => Error::InvalidInput(format!(
                    "the VM's port {parent} has as many allowed address pairs as Neutron permits ({}): raise max_allowed_address_pair in neutron.conf (10 by default), or detach containers of this VM",
                    e.fault().map(|f| f.message.as_str()).unwrap_or_default()
                )),
                _ if e.is_not_found() => Error::InvalidInput(format!(
                    "the VM's port {parent} is gone from Neutron: check [nested] parent_port"
                )),
                _ if matches!(e, os::Error::Forbidden { .. }) => Error::InvalidInput(format!(
                    "these credentials may not change the allowed address pairs of the VM's port {parent} ({e}): use the VM's project's credentials"
                )),
                _ => os_err(format!(
                    "adding the address pair {} {} to the VM's port {parent}",
                    pair.mac, pair.ip
                ))(e),
            }),
        }
    }

    async fn remove_address_pair(&self, parent: &str, pair: &AddressPair) -> Result<()> {
        let want = Self::pair_of(pair);
        let retry = os::RevisionRetry::default();
        os::retry_transient(Instant::now() + RETRY_FOR, os::Backoff::default(), || {
            self.api.remove_address_pair(parent, &want, retry)
        })
        .await
        .map(|_| ())
        .map_err(os_err(format!(
            "removing the address pair {} {} from the VM's port {parent}",
            pair.mac, pair.ip
        )))
    }
}
