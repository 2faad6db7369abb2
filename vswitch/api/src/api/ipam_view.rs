//! `vswitchctl ipam`'s view: the cluster's address allocation as one node sees it, or in
//! provider mode this node's NIC and the VPC API.

use std::net::IpAddr;

use serde::{Deserialize, Serialize};

use super::{Attachment, PodRef};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AddressView {
    /// One per family, IPv4 first.
    pub ips: Vec<IpAddr>,
    /// False when the attachment had them already (a repeated ADD).
    pub new: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReleasedView {
    pub released: Vec<IpAddr>,
}

/// The cluster's address allocation as one node sees it. Times are seconds since the epoch.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IpamView {
    pub node: String,
    /// `etcd https://...` or `file /var/lib/...`.
    pub store: String,
    /// False: the cluster part below is missing and only this node's own state is shown.
    pub store_reachable: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub store_error: Option<String>,
    pub pools: Vec<String>,
    pub exclude: Vec<String>,
    /// Usable IPv4 addresses in the pools (exclusions applied).
    pub pool_size: u64,
    /// Of those, held by nobody (claimable now or after their reuse delay is not counted).
    pub free: u64,
    pub nodes: Vec<IpamNodeView>,
    pub sticky: Vec<StickyView>,
    /// Released addresses waiting out the reuse delay.
    pub cooling: Vec<CoolingView>,
    pub this_node: LocalIpamView,
    /// Provider mode: the VPC API's side (absent in the cluster-pool mode).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provider: Option<ProviderView>,
}

/// Provider mode (`[ipam] provider`): this node's NIC and the VPC API as the node sees them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProviderView {
    /// `ucloud`.
    pub provider: String,
    pub nic: String,
    /// Who this node is to the VPC API and where that was learnt (UCloud: `host uhost-..., NIC
    /// 52:54:... (metadata http://100.80.80.80)`; AWS: the credentials' source).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub identity: Option<String>,
    pub warm: Vec<IpAddr>,
    pub cooling: Vec<IpAddr>,
    /// Deletes queued until the API confirms them.
    pub deleting: Vec<IpAddr>,
    /// Addresses of a NIC this node does not have (AWS: an ENI attached but not in the node),
    /// and why: kept in the VPC, served to nobody.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub undeliverable: Vec<(IpAddr, String)>,
    /// The NIC's secondary IPs at the last reconcile (none: not described yet).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nic_secondary: Option<Vec<IpAddr>>,
    /// The last call reached the API (none: no call yet).
    pub api_healthy: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backing_off_ms: Option<u64>,
    pub last_errors: Vec<String>,
    pub calls: Vec<ApiCallView>,
    /// The fabric probes of new addresses (none: no address probed yet).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fabric_probe: Option<FabricProbeView>,
}

/// Provider mode: how long the fabric took to deliver new addresses (the ARP probe).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FabricProbeView {
    /// The last probed address, how long it took, and `delivered`, `timeout` or `error`.
    pub last_ip: IpAddr,
    pub last_ms: u64,
    pub last_result: String,
    pub probes: u64,
    /// The time every probe took, summed (with `probes`: the mean wait for the VPC's SDN).
    #[serde(default)]
    pub total_ms: u64,
    pub timeouts: u64,
    pub errors: u64,
}

/// Calls of one VPC API action with one result.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiCallView {
    pub action: String,
    /// `ok`, `throttled`, `unavailable`, `subnet_full`, `address_gone`, `quota`, `auth`, `other`.
    pub result: String,
    pub calls: u64,
    /// Their total latency.
    pub millis: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IpamNodeView {
    pub name: String,
    /// Holds its lease now.
    pub live: bool,
    /// Seen without a lease since then; its addresses return to the pool at `quarantine_ends`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub down_since: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quarantine_ends: Option<u64>,
    pub warm: Vec<IpAddr>,
    pub assigned: Vec<AssignmentView>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AssignmentView {
    pub ip: IpAddr,
    pub owner: Attachment,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod: Option<PodRef>,
    pub since: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StickyView {
    pub ip: IpAddr,
    pub pod: PodRef,
    pub until: u64,
    pub last_node: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CoolingView {
    pub ip: IpAddr,
    pub released_at: u64,
    pub free_at: u64,
    pub last_node: String,
}

/// This node's side: what it holds and what it still has to tell the store.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LocalIpamView {
    pub warm: u64,
    pub warm_target: u64,
    pub assigned: u64,
    /// Changes made while the store was unreachable (or not yet written).
    pub pending_sync: u64,
    /// Addresses this node lost to another owner while it was cut off (ports detached).
    pub fenced_total: u64,
}
