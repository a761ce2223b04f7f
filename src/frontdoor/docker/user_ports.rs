//! Ports Courier did not make (a keepalived VIP port, Neutron's own metadata port, Zun's
//! pre-created port): found by address or MAC on a Docker network's backend network, and bound
//! only when the endpoint names them.

use std::net::IpAddr;

use crate::daemon::Daemon;
use crate::error::{Error, Result};
use crate::model::DockerNetwork;

/// A port Courier did not make (no attachment's) that holds `ip` on `net`, if its backend has
/// such ports (OVN direct binds none: an address in use fails the port's create instead).
pub(super) async fn user_port_holding(
    d: &Daemon,
    net: &DockerNetwork,
    ip: IpAddr,
) -> Result<Option<crate::model::LogicalPort>> {
    let (backend, network) = d
        .attacher
        .registry
        .network_in(&net.backend, &net.name)
        .await?;
    let q = crate::backend::PortQuery::Holding {
        network: network.backend_id.clone(),
        ip,
    };
    Ok(backend
        .find_ports(&q)
        .await?
        .into_iter()
        .find(|p| p.attachment.is_none()))
}

/// A port Courier did not make with MAC `mac` on `net` (at most one: a network's MACs are
/// unique).
pub(super) async fn user_port_with_mac(
    d: &Daemon,
    net: &DockerNetwork,
    mac: &str,
) -> Result<Option<crate::model::LogicalPort>> {
    let (backend, network) = d
        .attacher
        .registry
        .network_in(&net.backend, &net.name)
        .await?;
    let q = crate::backend::PortQuery::WithMac {
        network: network.backend_id.clone(),
        mac: mac.to_ascii_lowercase(),
    };
    Ok(backend
        .find_ports(&q)
        .await?
        .into_iter()
        .find(|p| p.attachment.is_none()))
}

/// Ok when `holder` (a port Courier did not make, holding `ip`) is one Courier could bind if
/// named: bound to nothing. Else the error says what it is bound to (e.g. Neutron's own
/// `network:distributed` metadata port) and to pick another address. Reads only.
pub(super) async fn bindable_or_refuse(
    d: &Daemon,
    net: &DockerNetwork,
    ip: IpAddr,
    holder: &crate::model::LogicalPort,
) -> Result<()> {
    let (backend, network) = d
        .attacher
        .registry
        .network_in(&net.backend, &net.name)
        .await?;
    let inspected = match backend.existing_ports() {
        Some(e) => e.inspect_port(&holder.id, &network).await,
        None => Err(crate::backend::Ability::ExistingPorts.missing(backend.id())),
    };
    match inspected {
        Ok(_) => Ok(()),
        Err(Error::InvalidInput(why)) => Err(Error::InvalidInput(format!(
            "address {ip} is in use by port {}, which Courier did not make and cannot bind ({why}): pick another address",
            holder.id
        ))),
        Err(e) => Err(e),
    }
}

/// The error for an address of a port nobody binds that the endpoint did not name.
pub(super) fn not_named(ip: IpAddr, holder: &crate::model::LogicalPort) -> Error {
    Error::InvalidInput(format!(
        "address {ip} is in use by port {id} (MAC {mac}), which Courier did not make: name it by id to bind it \
         (docker run --network name=NETWORK,ip={ip},driver-opt=courier.port={id} --mac-address {mac}), or pick another address",
        id = holder.id,
        mac = holder.mac
    ))
}
