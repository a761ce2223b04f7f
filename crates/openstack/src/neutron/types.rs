//! The Neutron resources as the API reference has them, and the bodies that create or
//! update them.

use serde::{Deserialize, Serialize};
use serde_json::Value;

#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default)]
pub struct Network {
    pub id: String,
    pub name: String,
    pub description: Option<String>,
    pub status: Option<String>,
    pub admin_state_up: Option<bool>,
    pub shared: Option<bool>,
    pub mtu: Option<u32>,
    pub subnets: Vec<String>,
    pub tags: Vec<String>,
    pub project_id: Option<String>,
    pub port_security_enabled: Option<bool>,
    pub revision_number: Option<u64>,
    #[serde(rename = "provider:network_type")]
    pub network_type: Option<String>,
    #[serde(rename = "provider:segmentation_id")]
    pub segmentation_id: Option<u32>,
    /// Admin-only by Neutron's default policy: None for a tenant (the VF's VLAN then comes
    /// from the port's binding:vif_details).
    #[serde(rename = "provider:physical_network")]
    pub physical_network: Option<String>,
    /// With the `dns-integration` extension: the network's DNS domain (e.g. "example.org.").
    pub dns_domain: Option<String>,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct NetworkCreate {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Set by the POST itself (unlike tags): what finds the network if the tags never came.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub shared: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub admin_state_up: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mtu: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub port_security_enabled: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub project_id: Option<String>,
    /// Set with the tags API right after create.
    #[serde(skip)]
    pub tags: Vec<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AllocationPool {
    pub start: String,
    pub end: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostRoute {
    pub destination: String,
    pub nexthop: String,
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default)]
pub struct Subnet {
    pub id: String,
    pub name: String,
    pub network_id: String,
    pub cidr: String,
    pub ip_version: u8,
    pub gateway_ip: Option<String>,
    pub enable_dhcp: Option<bool>,
    pub ipv6_address_mode: Option<String>,
    pub ipv6_ra_mode: Option<String>,
    pub dns_nameservers: Vec<String>,
    pub host_routes: Vec<HostRoute>,
    pub allocation_pools: Vec<AllocationPool>,
    pub tags: Vec<String>,
    pub project_id: Option<String>,
    pub revision_number: Option<u64>,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct SubnetCreate {
    pub network_id: String,
    pub cidr: String,
    pub ip_version: u8,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// `Some(None)` sends `"gateway_ip": null` (no gateway); None lets Neutron pick.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gateway_ip: Option<Option<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub enable_dhcp: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ipv6_address_mode: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ipv6_ra_mode: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub dns_nameservers: Vec<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub host_routes: Vec<HostRoute>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub allocation_pools: Vec<AllocationPool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub project_id: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FixedIp {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subnet_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip_address: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AddressPair {
    pub ip_address: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mac_address: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default)]
pub struct Port {
    pub id: String,
    pub name: String,
    pub description: Option<String>,
    pub network_id: String,
    pub mac_address: String,
    pub fixed_ips: Vec<FixedIp>,
    pub device_owner: String,
    pub device_id: String,
    pub status: Option<String>,
    pub admin_state_up: Option<bool>,
    pub security_groups: Vec<String>,
    pub allowed_address_pairs: Vec<AddressPair>,
    pub port_security_enabled: Option<bool>,
    pub tags: Vec<String>,
    pub project_id: Option<String>,
    pub revision_number: Option<u64>,
    #[serde(rename = "binding:host_id")]
    pub binding_host_id: Option<String>,
    #[serde(rename = "binding:vnic_type")]
    pub binding_vnic_type: Option<String>,
    #[serde(rename = "binding:vif_type")]
    pub binding_vif_type: Option<String>,
    #[serde(rename = "binding:profile")]
    pub binding_profile: Option<Value>,
    #[serde(rename = "binding:vif_details")]
    pub binding_vif_details: Option<Value>,
    /// Set on a trunk's parent port.
    pub trunk_details: Option<Value>,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct PortCreate {
    pub network_id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Set by the POST itself (unlike tags, which may need a PUT after it): what finds the port
    /// if the tags never came.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub device_owner: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub device_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mac_address: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub fixed_ips: Vec<FixedIp>,
    /// None: the project's default group; `Some(vec![])`: none.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub security_groups: Option<Vec<String>>,
    #[serde(rename = "binding:host_id", skip_serializing_if = "Option::is_none")]
    pub binding_host_id: Option<String>,
    #[serde(rename = "binding:vnic_type", skip_serializing_if = "Option::is_none")]
    pub binding_vnic_type: Option<String>,
    #[serde(rename = "binding:profile", skip_serializing_if = "Option::is_none")]
    pub binding_profile: Option<Value>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub allowed_address_pairs: Vec<AddressPair>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub port_security_enabled: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub admin_state_up: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub project_id: Option<String>,
    /// Sent inline when Neutron has the `tag-ports-during-bulk-creation` (or `tag-creation`)
    /// extension, else set with `PUT /v2.0/ports/ID/tags` after create.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub tags: Vec<String>,
}

/// A partial port update: only the fields that are `Some` are sent.
#[derive(Debug, Clone, Default, Serialize)]
pub struct PortUpdate {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub device_owner: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub device_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mac_address: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fixed_ips: Option<Vec<FixedIp>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub security_groups: Option<Vec<String>>,
    #[serde(rename = "binding:host_id", skip_serializing_if = "Option::is_none")]
    pub binding_host_id: Option<String>,
    #[serde(rename = "binding:vnic_type", skip_serializing_if = "Option::is_none")]
    pub binding_vnic_type: Option<String>,
    #[serde(rename = "binding:profile", skip_serializing_if = "Option::is_none")]
    pub binding_profile: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub allowed_address_pairs: Option<Vec<AddressPair>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub port_security_enabled: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub admin_state_up: Option<bool>,
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default)]
pub struct SecurityGroup {
    pub id: String,
    pub name: String,
    pub description: Option<String>,
    pub project_id: Option<String>,
    pub stateful: Option<bool>,
    pub tags: Vec<String>,
    pub security_group_rules: Vec<Value>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SubPort {
    pub port_id: String,
    /// `vlan` (or `inherit`).
    pub segmentation_type: String,
    pub segmentation_id: u32,
}

impl SubPort {
    pub fn vlan(port_id: impl Into<String>, vlan: u32) -> SubPort {
        SubPort {
            port_id: port_id.into(),
            segmentation_type: "vlan".into(),
            segmentation_id: vlan,
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default)]
pub struct Trunk {
    pub id: String,
    pub name: String,
    pub port_id: String,
    pub status: Option<String>,
    pub admin_state_up: Option<bool>,
    pub sub_ports: Vec<SubPort>,
    pub tags: Vec<String>,
    pub description: Option<String>,
    pub project_id: Option<String>,
    pub revision_number: Option<u64>,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct TrunkCreate {
    pub port_id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub sub_ports: Vec<SubPort>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub admin_state_up: Option<bool>,
    /// Goes in the POST (tags cannot): a mark that holds from the trunk's first moment.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// Set right after the create (Neutron takes no tags in a trunk POST); if that fails the
    /// trunk is deleted again.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub tags: Vec<String>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn bodies_and_decoding() {
        let u = PortUpdate {
            allowed_address_pairs: Some(vec![]),
            ..Default::default()
        };
        assert_eq!(
            serde_json::to_value(&u).unwrap(),
            json!({"allowed_address_pairs": []})
        );
        let s = SubnetCreate {
            network_id: "n".into(),
            cidr: "fd00::/64".into(),
            ip_version: 6,
            gateway_ip: Some(None),
            ipv6_address_mode: Some("slaac".into()),
            ..Default::default()
        };
        assert_eq!(
            serde_json::to_value(&s).unwrap(),
            json!({"network_id": "n", "cidr": "fd00::/64", "ip_version": 6, "gateway_ip": null, "ipv6_address_mode": "slaac"})
        );
        let port: Port = serde_json::from_value(json!({
            "id": "p", "network_id": "n", "mac_address": "fa:16:3e:00:00:01", "unknown_field": 1,
            "fixed_ips": [{"subnet_id": "s", "ip_address": "10.0.0.3"}], "binding:host_id": "",
            "binding:profile": {}, "revision_number": 3, "tags": ["a"], "device_owner": "", "device_id": ""
        }))
        .unwrap();
        assert_eq!(port.revision_number, Some(3));
        assert_eq!(port.fixed_ips[0].ip_address.as_deref(), Some("10.0.0.3"));
    }
}
