//! Logical attachment: a backend owns networks and ports and is the IPAM. The attach flow talks
//! to `dyn Backend` (through the `Registry`, which picks the backend per network) and never
//! knows which one it has. Ports are referred to by the backend's own id where it is known, and
//! by the name derived from the attachment id otherwise (after a crash before the id was
//! recorded); every delete checks this host's ownership marks.
//!
//! What not every backend can do has a trait of its own, which a backend implements or not and
//! reports through an accessor of `Backend` (None: it has not): `AddressPairs` (nested
//! ipvlan/macvlan), `VlanChildPorts` (nested vlan), both built on `NestedParents` (finding the
//! VM's port), and `ExistingPorts` (binding a port someone else made). A flow asks before it
//! starts (`Backend::require`, `Ability`), so a backend without one is refused with an error
//! naming it and the ability, before any side effect.

#[cfg(test)]
pub mod fake;
pub mod lazy;
pub mod neutron;
pub mod ovn;
pub mod ovn_sb;

use std::net::IpAddr;

use async_trait::async_trait;

use crate::error::Result;
use crate::model::{ExistingPort, LogicalPort, Network, NetworkSpec};

/// Who owns a port: this host's mark and the attachment it serves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OwnerMark {
    pub host: String,
    pub attachment: String,
}

/// What the attach flow asks of a backend when it needs a port.
#[derive(Debug, Clone)]
pub struct PortRequest {
    /// Name the port must have (derived from the attachment id, so cleanup can find it).
    pub name: String,
    /// The Courier network (as the backend reported it).
    pub network: Network,
    pub owner: OwnerMark,
    /// Requested fixed addresses (empty: the backend's IPAM chooses).
    pub ips: Vec<IpAddr>,
    pub mac: Option<String>,
    /// Security groups (names or ids) where the backend has them; empty: its default.
    pub security_groups: Vec<String>,
    /// What the port is for (its edge binding decides): how the backend makes it.
    pub role: PortRole,
    /// A reservation's pair target (`EdgeBinding::pair_plan`), known before the port exists.
    /// A backend that cannot take a pair off in the same step as it deletes the port marks
    /// the port with it (Neutron tags) and reports it in `LogicalPort::pairs_on`.
    pub pairs_on: Option<crate::model::PairPlan>,
}

/// What a port is for, which decides how the backend makes it (`EdgeBinding::port_role`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum PortRole {
    /// Bound on this host by its edge (veth-ovs: `iface-id` on this host's OVS; Neutron:
    /// `binding:host_id` = this host).
    #[default]
    Bound,
    /// Reserves its addresses only and is never bound (nested ipvlan/macvlan: the VM's port
    /// carries them as address pairs). Neutron: no `binding:host_id`, no device.
    Reservation,
    /// A child of the VM's port `parent` (its backend id), told apart by VLAN `tag` (nested
    /// vlan): OVN `parent_name` + `tag`; Neutron a trunk subport.
    Child { parent: String, tag: u16 },
    /// Bound on this host to an SR-IOV VF (`binding:vnic_type=direct`): Neutron gets the VF in
    /// `binding:profile`; OVN makes an `external` port (served by the chassis that hosts
    /// external ports: it answers ARP and DHCP for the VF, whose frames reach the switch
    /// through the localnet port).
    Direct(DirectProfile),
}

/// The VF behind a direct port, as Nova and Zun describe it to Neutron (`binding:profile`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirectProfile {
    /// The VF's PCI address, "0000:01:10.0".
    pub pci_slot: String,
    /// "8086:10ca": vendor and device id.
    pub pci_vendor_info: String,
    pub physical_network: String,
}

impl DirectProfile {
    /// Neutron's `binding:profile` for the VF.
    pub fn binding_profile(&self) -> serde_json::Value {
        serde_json::json!({
            "pci_slot": self.pci_slot,
            "pci_vendor_info": self.pci_vendor_info,
            "physical_network": self.physical_network,
        })
    }
}

/// A port of one attachment: its backend id when known, else found by its derived name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortRef {
    pub id: Option<String>,
    pub name: String,
}

/// Which ports to find.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PortQuery {
    /// Every port carrying this host's ownership mark (for leak sweeps).
    OwnedBy { host: String },
    /// Existing ports this host claimed (bound for an attachment; given back, never deleted).
    ClaimedBy { host: String },
    /// Ports of network `network` (its backend id) that hold address `ip` (whoever made them):
    /// Docker's `--ip` of a port the user made (Zun, kuryr-libnetwork's reuse of such ports).
    Holding {
        network: String,
        ip: std::net::IpAddr,
    },
    /// Ports of network `network` with MAC `mac` (lower case; whoever made them): the IPv6
    /// address Docker asks for after the IPv4 one of a user's port.
    WithMac { network: String, mac: String },
}

/// How to find the port of the VM Courier runs in (the parent of nested containers' ports and
/// addresses): by its backend id, else by the master interface's IP, else by its MAC.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ParentQuery {
    pub id: Option<String>,
    pub ips: Vec<IpAddr>,
    pub mac: Option<String>,
}

/// An address a nested container uses on its VM's port (`allowed address pair` in Neutron's
/// words): its MAC (macvlan: its own; ipvlan: the VM's) and IP.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct AddressPair {
    pub mac: String,
    pub ip: IpAddr,
}

/// An address pair a host put on a VM's port for one of its attachments, as the backend marks
/// it there (OVN direct: `external_ids` of the VM's port, see `marks::ADDED_PAIR`): what the
/// sweep finds when both the record and the reservation behind the pair are gone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OwnedAddressPair {
    /// The VM's port (backend id).
    pub parent: String,
    pub pair: AddressPair,
    pub host: String,
    pub attachment: String,
}

/// Another machine's port under this daemon's host mark (`Backend::mark_claimed`): two
/// machines with one mark (e.g. one hostname) would delete each other's ports, so the daemon
/// refuses to start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MarkClaim {
    /// One such port (its backend id) and how many more there are.
    pub port: String,
    pub more: usize,
    /// What identifies a machine to this backend ("OVS system-id", "binding:host_id"), the
    /// other machine's and this one's (None: this machine has none).
    pub what: &'static str,
    pub theirs: String,
    pub ours: Option<String>,
    /// What to set if it is this machine under an earlier identity.
    pub same_machine: String,
}

impl MarkClaim {
    /// The refusal, naming the mark, both machines and what to set.
    pub fn message(&self, backend: &str, host: &str) -> String {
        let more = match self.more {
            0 => String::new(),
            n => format!(" (and {n} more)"),
        };
        let ours = match &self.ours {
            Some(o) => format!("this machine's is {o}"),
            None => "this machine has none".to_string(),
        };
        let backend = match backend {
            "ovn" => "OVN",
            "neutron" => "Neutron",
            other => other,
        };
        format!(
            "host mark {host:?} is in use by another machine: {backend} port {}{more} under it belongs to the machine whose {} is {}; {ours}. Two machines with one mark delete each other's ports, so this daemon does not start: give this machine a mark of its own (`host` in the config, or COURIER_HOST; the default is the hostname). If it is this machine under an earlier identity: {}",
            self.port, self.what, self.theirs, self.same_machine
        )
    }
}

#[async_trait]
pub trait Backend: Send + Sync {
    /// The backend's id in records and configuration ("ovn", "neutron").
    fn id(&self) -> &str;
    /// Reading a port costs no round trip (OVN: the monitor's cache). The attach then reports
    /// the backend's `up` as it is once the edge is ready; a remote backend's port is not read
    /// again (Neutron's status turns ACTIVE later, and the GET only loads its API).
    fn reads_are_local(&self) -> bool {
        false
    }
    /// Ok when the backend answers.
    async fn health(&self) -> Result<()>;

    async fn create_network(&self, spec: &NetworkSpec) -> Result<Network>;
    async fn delete_network(&self, name: &str) -> Result<()>;
    /// The Courier network `name` if this backend has it; Ok(None) if it does not.
    async fn network(&self, name: &str) -> Result<Option<Network>>;
    async fn networks(&self) -> Result<Vec<Network>>;

    /// Creates the ports, each marked as owned by its host and attachment, and returns them with
    /// the addresses the backend assigned, in request order. All or nothing: on error none of
    /// them is left.
    async fn create_ports(&self, reqs: &[PortRequest]) -> Result<Vec<LogicalPort>>;
    /// Deletes the port; Ok(false) when no such port of ours exists. By name alone, only a port
    /// whose ownership marks say `host` (checked atomically with the delete where the backend
    /// allows), so another host's port is never deleted. By id, the id is the proof: it came
    /// back from this host's own create and was recorded (ids are never reused), so a backend
    /// may delete it without reading it first (Neutron: one DELETE, no GET).
    async fn delete_port(&self, port: &PortRef, host: &str) -> Result<bool>;
    async fn port(&self, port: &PortRef) -> Result<Option<LogicalPort>>;
    /// Ports of another machine under host mark `host`, if any (the daemon then refuses to
    /// start). Such ports are never in `find_ports(OwnedBy | ClaimedBy)`: no sweep touches them.
    /// Default: the backend cannot tell machines apart.
    async fn mark_claimed(&self, host: &str) -> Result<Option<MarkClaim>> {
        let _ = host;
        Ok(None)
    }
    /// `OwnedBy`/`ClaimedBy`: only this machine's (or those that cannot say whose they are),
    /// never another machine's under the same mark.
    async fn find_ports(&self, q: &PortQuery) -> Result<Vec<LogicalPort>>;

    /// Waits until the hypervisor that hosts port `on` (a nested edge's VM port) has applied
    /// every change made so far: the readiness of nested edges, whose host has no switch of the
    /// backend's to ask. OVN: the `Chassis_Private.nb_cfg` (SB) of the chassis that binds `on`
    /// catches up with a bumped NB `nb_cfg` — other hypervisors, slow or dead, do not count;
    /// without `on` or the SB, NB_Global `hv_cfg` (every chassis: what `ovn-nbctl --wait=hv`
    /// does). Ok(false) when `timeout` passed first. Default: nothing to wait for.
    async fn wait_applied(&self, on: Option<&str>, timeout: std::time::Duration) -> Result<bool> {
        let _ = (on, timeout);
        Ok(true)
    }

    /// Address pairs on the VM's port (the ipvlan and macvlan bindings), if this backend has
    /// them. Asked before a flow that needs them starts: None is refused then, naming the
    /// backend and the ability (`Ability::missing`), before any side effect.
    fn address_pairs(&self) -> Option<&dyn AddressPairs> {
        None
    }
    /// VLAN child ports of the VM's port (the vlan and vlan-ovs bindings), if this backend has
    /// them.
    fn vlan_child_ports(&self) -> Option<&dyn VlanChildPorts> {
        None
    }
    /// Existing ports to bind (`--port`, Docker's `courier.port`), if this backend has them.
    fn existing_ports(&self) -> Option<&dyn ExistingPorts> {
        None
    }

    /// Whether this backend has `ability`.
    fn has(&self, ability: Ability) -> bool {
        match ability {
            Ability::AddressPairs => self.address_pairs().is_some(),
            Ability::VlanChildPorts => self.vlan_child_ports().is_some(),
            Ability::ExistingPorts => self.existing_ports().is_some(),
        }
    }
    /// Ok when this backend has every one of `needs`; else the refusal naming the first it
    /// lacks.
    fn require(&self, needs: &[Ability]) -> Result<()> {
        match needs.iter().find(|a| !self.has(**a)) {
            Some(a) => Err(a.missing(self.id())),
            None => Ok(()),
        }
    }
    /// `address_pairs`, or the refusal.
    fn require_address_pairs(&self) -> Result<&dyn AddressPairs> {
        self.address_pairs()
            .ok_or_else(|| Ability::AddressPairs.missing(self.id()))
    }
    /// `vlan_child_ports`, or the refusal.
    fn require_vlan_child_ports(&self) -> Result<&dyn VlanChildPorts> {
        self.vlan_child_ports()
            .ok_or_else(|| Ability::VlanChildPorts.missing(self.id()))
    }
    /// `existing_ports`, or the refusal.
    fn require_existing_ports(&self) -> Result<&dyn ExistingPorts> {
        self.existing_ports()
            .ok_or_else(|| Ability::ExistingPorts.missing(self.id()))
    }
}

/// An optional ability of a backend: a trait of its own that a backend implements or not, and
/// reports through its accessor (`Backend::address_pairs`, `vlan_child_ports`,
/// `existing_ports`), so a flow can tell before it calls.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ability {
    /// `AddressPairs`: a container's address allowed on the VM's port (nested ipvlan/macvlan).
    AddressPairs,
    /// `VlanChildPorts`: child ports of the VM's port told apart by VLAN tag (nested vlan).
    VlanChildPorts,
    /// `ExistingPorts`: a port someone else made, bound for an attachment and given back.
    ExistingPorts,
}

impl Ability {
    /// The refusal when backend `backend` lacks this ability.
    pub fn missing(self, backend: &str) -> crate::error::Error {
        crate::error::Error::InvalidInput(match self {
            Ability::AddressPairs => format!(
                "backend {backend} has no nested bindings yet: it has no address pairs on the VM's port (what the ipvlan and macvlan bindings need)"
            ),
            Ability::VlanChildPorts => format!(
                "backend {backend} has no nested vlan child ports yet (what the vlan and vlan-ovs bindings need)"
            ),
            Ability::ExistingPorts => format!(
                "backend {backend} has no existing ports to bind: Courier creates its ports (binding an existing port is a Neutron feature)"
            ),
        })
    }

    /// The abilities `b` reports.
    pub fn of(b: &dyn Backend) -> Vec<Ability> {
        [
            Ability::AddressPairs,
            Ability::VlanChildPorts,
            Ability::ExistingPorts,
        ]
        .into_iter()
        .filter(|a| b.has(*a))
        .collect()
    }
}

/// The abilities every backend of a kind has, known before one is connected: what `Lazy`
/// reports for it meanwhile. Must be what its accessors say, in `Ability`'s order (checked,
/// in debug builds, when it connects: `Ability::of`).
pub trait KnownAbilities {
    const ABILITIES: &'static [Ability];
}

/// Where the VM Courier runs in has its port: what both nested abilities start from.
#[async_trait]
pub trait NestedParents: Send + Sync {
    /// The VM's port: its backend id (what address pairs and child ports go on). None matching
    /// or several is an error that says which and what to set.
    async fn parent_port(&self, q: &ParentQuery) -> Result<String>;
}

/// Nested ipvlan/macvlan: a container's address allowed on the VM's port (`Backend::address_pairs`).
#[async_trait]
pub trait AddressPairs: NestedParents {
    /// Adds `pair` to port `parent`'s allowed addresses, atomically with respect to every other
    /// change of them (no pair is ever lost to a concurrent one). Idempotent.
    async fn add_address_pair(&self, parent: &str, pair: &AddressPair) -> Result<()>;
    /// Removes exactly `pair` from port `parent`; Ok when it is not there (or the port is gone).
    async fn remove_address_pair(&self, parent: &str, pair: &AddressPair) -> Result<()>;
    /// The address pairs `host` put on VM ports, found by their marks there (whatever
    /// reservation or record is behind them). Default: the backend marks none (Neutron finds
    /// a pair through its reservation's tags, `LogicalPort::pairs_on`).
    async fn owned_address_pairs(&self, host: &str) -> Result<Vec<OwnedAddressPair>> {
        let _ = host;
        Ok(vec![])
    }
    /// Removes `pair` from its VM port if it is still marked as that host's and attachment's
    /// (checked in the same step as the removal), with its mark. Ok(false): no such mark now.
    async fn remove_owned_address_pair(&self, pair: &OwnedAddressPair) -> Result<bool> {
        let _ = pair;
        Ok(false)
    }
}

/// Nested vlan: child ports of the VM's port, told apart by VLAN tag (`PortRole::Child`,
/// made by `Backend::create_ports`; `Backend::vlan_child_ports`).
#[async_trait]
pub trait VlanChildPorts: NestedParents {
    /// The VLAN tags of the child ports port `parent` has in the backend now, whoever made them
    /// (the tag allocator never hands one of those out).
    async fn child_tags(&self, parent: &str) -> Result<std::collections::BTreeSet<u16>>;
    /// A vlan child of `parent` was undone and its port is not in the backend (a crash came
    /// between the steps that make it): what the backend made for the VM's children and no
    /// child uses now goes (Neutron: the trunk Courier made, once it has no subport). Default:
    /// nothing is made for them.
    async fn tidy_children_of(&self, parent: &str) -> Result<()> {
        let _ = parent;
        Ok(())
    }
}

/// Existing ports: a port someone else made, bound for an attachment and given back as it was
/// (`Backend::existing_ports`).
#[async_trait]
pub trait ExistingPorts: Send + Sync {
    /// An existing port to bind (no side effect): what it is now, refused if it is bound to
    /// something else (the error says to what) or is not on `network`.
    async fn inspect_port(&self, id: &str, network: &Network) -> Result<ExistingPort>;
    /// The backend id of the network existing port `id` is on (no side effect): what an attach
    /// that names only the port (`--port` without `--network`) is resolved with.
    async fn network_of(&self, id: &str) -> Result<String>;
    /// Claims the existing port for `owner` on this host and returns it as Courier sees it;
    /// `role` is how its edge binds it (a direct port gets its VF in `binding:profile`).
    async fn claim_port(
        &self,
        port: &ExistingPort,
        owner: &OwnerMark,
        network: &Network,
        role: &PortRole,
    ) -> Result<LogicalPort>;
    /// Gives a port claimed for `owner` back as it was (`port`); never deletes it. Ok(false) if
    /// it is gone or not claimed for `owner` (another attach's claim is left alone).
    async fn release_port(&self, port: &ExistingPort, owner: &OwnerMark) -> Result<bool>;
}

/// Ownership marks Courier puts on backend resources.
pub mod marks {
    pub const OWNER: &str = "courier-owner";
    pub const OWNER_VALUE: &str = "courier";
    pub const HOST: &str = "courier-host";
    pub const ATTACHMENT: &str = "courier-attachment";
    pub const NETWORK: &str = "courier-network";
    /// OVN direct: the machine that made the port (its OVS system-id, see `Config::machine_id`).
    /// Another machine's port under the same host mark is never swept.
    pub const MACHINE: &str = "courier-machine";
    pub const GATEWAY: &str = "courier-gateway";
    pub const GATEWAY6: &str = "courier-gateway6";
    /// OVN direct: a reservation port (nested ipvlan/macvlan) whose address now lives on the
    /// VM's port as a pair: the "MAC IP" it held, so it is still reported.
    pub const RESERVED: &str = "courier-reserved";
    /// OVN direct: the port's role when it is not an ordinary bound port ("reservation").
    pub const ROLE: &str = "courier-role";
    /// On an SR-IOV port: the PCI address of the VF it is bound to.
    pub const VF: &str = "courier-vf";
    /// OVN direct, on a reservation: the VM's port its address is a pair on, and that pair's
    /// entry there ("MAC IP"). Deleting the reservation takes the pair off in the same
    /// transaction, so a reservation swept without its record leaves no address allowed.
    pub const PAIR_ON: &str = "courier-pair-on";
    pub const PAIR: &str = "courier-pair";
    /// OVN direct, on the VM's port: one key per pair Courier added there, this prefix + the
    /// pair's entry ("MAC IP"), its value `<host>:<attachment>`; written and removed in the same
    /// transaction as the pair, so the sweep tells Courier's pairs (and whose) from the user's
    /// own entries even when the reservation behind one is gone.
    pub const ADDED_PAIR: &str = "courier-added-pair:";
}
