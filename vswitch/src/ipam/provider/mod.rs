//! VPC-provider mode: pod addresses are secondary IPs of this node's NIC, registered through the
//! cloud's VPC API, as UK8S's CNI (UCloud) and AWS's VPC CNI do it. The cloud's SDN delivers a
//! packet only to an address registered to a NIC, so here the VPC, not etcd, says who holds what.
//!
//! - [`VpcProvider`]: the small trait a cloud implements (allocate, delete, describe this node's
//!   secondary IPs, move one here, subnet free count), with typed [`ProviderError`]s; [`ucloud`]
//!   (one NIC) and [`aws`] (several ENIs per instance, limits by instance type, leaked ENIs),
//!   one of them chosen at start ([`AnyProvider`]).
//! - [`agent`]: the node's pool of secondary IPs: ADD/DEL from local state, the upkeep that keeps
//!   the pool at its target (watermarks, or AWS's warm targets), queued deletes, reconcile
//!   against the VPC, persistence.
//! - [`probe`]: whether the fabric delivers a new address yet (an ARP probe, as UK8S's arping).
//! - [`claims`]: sticky pods' records in the cluster store (which address a pod keeps).
//! - [`config`]: `[ipam] provider = "ucloud"` and `[ipam.ucloud]`; `"aws"` and `[ipam.aws]`.
//! - [`ucloud_metadata`]: this node's NIC and UHost id from UCloud's metadata service.

pub mod agent;
mod any;
pub mod aws;
pub mod claims;
pub mod config;
pub(crate) mod http;
pub mod probe;
pub mod stats;
pub mod ucloud;
pub mod ucloud_metadata;

#[cfg(test)]
mod agent_tests;
#[cfg(test)]
pub(crate) mod fake;
#[cfg(test)]
mod sticky_tests;

use std::future::Future;
use std::net::IpAddr;

pub use agent::{ProviderIpam, ProviderSettings};
pub use any::AnyProvider;

/// A secondary IP as the VPC describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SecondaryIp {
    pub ip: IpAddr,
    /// The NIC holding it (UCloud: its MAC, lower case; AWS: the ENI id).
    pub nic: String,
}

/// What a VPC API call fails with, one variant per reaction of the pool.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProviderError {
    /// Rate-limited: back off and retry.
    #[error("VPC API throttled: {0}")]
    Throttled(String),
    /// Unreachable, timed out or an answer that is not the API's: back off and retry.
    #[error("VPC API unavailable: {0}")]
    Unavailable(String),
    /// The subnet has no free address (the VPC's own message).
    #[error("VPC subnet full: {0}")]
    SubnetFull(String),
    /// The address is not (or no longer) on that NIC: success for a delete.
    #[error("VPC address gone: {0}")]
    AddressGone(String),
    /// The NIC holds as many secondary IPs as its quota allows.
    #[error("VPC NIC quota reached: {0}")]
    Quota(String),
    /// The credentials are refused (bad signature, unknown key).
    #[error("VPC API refused the credentials: {0}")]
    Auth(String),
    /// The NIC that would hold the address is attached in the VPC but has no interface up in
    /// this node, which therefore cannot deliver its addresses (AWS: an ENI not yet, or never,
    /// brought up in the instance). The message names the NIC.
    #[error("{0}")]
    NicAbsent(String),
    #[error("VPC API error {code}: {message}")]
    Other { code: u32, message: String },
}

/// The calls the pool makes, each named as the provider's API names it ([`VpcProvider::call_name`]:
/// `vswitchctl ipam` and the metrics' `action` label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PoolCall {
    Allocate,
    Delete,
    Describe,
    /// Where an address is in the VPC (sticky pods).
    Locate,
    /// An address moved from another NIC to this node's (sticky pods).
    Move,
    SubnetFree,
    CollectLeakedNics,
}

/// The pool's addresses as AWS's VPC CNI counts its datastore (`DataStoreStats`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PoolCounts {
    /// Pods' addresses, and those held for sticky pods: not for a new pod.
    pub assigned: usize,
    /// Ready to hand out.
    pub warm: usize,
    /// On a NIC the node does not have yet: not served, but likely soon (and allocating more
    /// would likely land on the same NIC).
    pub undeliverable: usize,
    /// Released, resting until their cooldown ends.
    pub cooling: usize,
}

impl PoolCounts {
    /// AWS's `AvailableAddresses`: every address held but not assigned, cooling ones included.
    pub fn available(&self) -> usize {
        self.warm + self.undeliverable + self.cooling
    }

    pub fn total(&self) -> usize {
        self.assigned + self.available()
    }
}

/// How far the pool is from its target: addresses to allocate, or warm ones to give back now.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PoolDelta {
    pub short: usize,
    pub over: usize,
}

impl ProviderError {
    /// Worth retrying later as it is.
    pub fn is_transient(&self) -> bool {
        matches!(self, ProviderError::Throttled(_) | ProviderError::Unavailable(_))
    }

    /// The result label of the metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            ProviderError::Throttled(_) => "throttled",
            ProviderError::Unavailable(_) => "unavailable",
            ProviderError::SubnetFull(_) => "subnet_full",
            ProviderError::AddressGone(_) => "address_gone",
            ProviderError::Quota(_) => "quota",
            ProviderError::Auth(_) => "auth",
            ProviderError::NicAbsent(_) => "nic_absent",
            ProviderError::Other { .. } => "other",
        }
    }
}

/// A cloud's VPC API for one node's NICs. Futures are `Send`: the upkeep runs them on tokio.
pub trait VpcProvider: Send + Sync + 'static {
    /// The provider's name as configuration and views say it (`ucloud`, `aws`).
    fn name(&self) -> &'static str;
    /// This node's NIC as the API names it (AWS: the instance, whose ENIs hold the addresses).
    fn nic(&self) -> &str;
    /// A new secondary IP on this node's NIC (`ip`: that one). AWS: on an attached ENI with
    /// room, or on a new ENI when they are full and the instance type allows another.
    fn allocate(&self, ip: Option<IpAddr>) -> impl Future<Output = Result<IpAddr, ProviderError>> + Send;
    /// Deletes a secondary IP of this node's NIC ([`ProviderError::AddressGone`] if it is not).
    fn delete(&self, ip: IpAddr) -> impl Future<Output = Result<(), ProviderError>> + Send;
    /// This NIC's secondary IPs.
    fn describe(&self) -> impl Future<Output = Result<Vec<IpAddr>, ProviderError>> + Send;
    /// Where `ip` is a secondary IP in the VPC, if anywhere.
    fn locate(&self, ip: IpAddr) -> impl Future<Output = Result<Option<SecondaryIp>, ProviderError>> + Send;
    /// Moves `ip` from the NIC `from` to this node's NIC.
    fn move_here(&self, ip: IpAddr, from: &str) -> impl Future<Output = Result<(), ProviderError>> + Send;
    /// Free addresses in the subnet (also the credentials and reachability check).
    fn subnet_free(&self) -> impl Future<Output = Result<u64, ProviderError>> + Send;
    /// `call` as this provider's API names it.
    fn call_name(&self, call: PoolCall) -> &'static str;
    /// Up to `count` new secondary IPs in one call, at least one. Default: one
    /// ([`VpcProvider::allocate`]); AWS: as many as the ENI with room takes.
    fn allocate_batch(&self, count: usize) -> impl Future<Output = Result<Vec<IpAddr>, ProviderError>> + Send {
        let _ = count;
        async { self.allocate(None).await.map(|ip| vec![ip]) }
    }
    /// Deletes some of `ips` (at least the first) in one call; those no longer on this node's
    /// NICs. Default: the first alone ([`VpcProvider::delete`]); AWS: every one on its ENI.
    fn delete_batch(&self, ips: &[IpAddr]) -> impl Future<Output = Result<Vec<IpAddr>, ProviderError>> + Send {
        let first = ips[0];
        async move { self.delete(first).await.map(|()| vec![first]) }
    }
    /// How far the pool is from the provider's targets, where it derives them (AWS: its warm
    /// targets and the instance type's limits, once known); `None`: the configured watermarks.
    fn pool_delta(&self, _counts: PoolCounts) -> Option<PoolDelta> {
        None
    }
    /// Whether [`VpcProvider::collect_leaked_nics`] does anything (the pool calls it only then).
    fn collects_leaked_nics(&self) -> bool {
        false
    }
    /// Deletes this node's NICs left detached and unused (AWS: leaked ENIs); how many.
    fn collect_leaked_nics(&self) -> impl Future<Output = Result<usize, ProviderError>> + Send {
        async { Ok(0) }
    }
    /// Why this node cannot deliver `ip`, a secondary IP of one of its NICs (AWS: the ENI holding
    /// it has no interface up in the node); `None`: it can. The pool serves no such address.
    fn undeliverable(&self, _ip: IpAddr) -> impl Future<Output = Option<String>> + Send {
        async { None }
    }
    /// The MAC of the NIC a new address `ip` is probed from ([`probe`]: an ARP request with `ip`
    /// as sender, to the gateway), where the provider's fabric proves delivery by answering it;
    /// `None`: not probed, the fabric proves nothing. Default: [`VpcProvider::nic`], UCloud's
    /// NIC MAC (its SDN answers only for registered addresses). AWS: off unless configured
    /// (the hypervisor answers ARP for the gateway whatever the sender), then the ENI holding `ip`.
    fn fabric_probe_mac(&self, _ip: IpAddr) -> impl Future<Output = Option<String>> + Send {
        let mac = self.nic().to_ascii_lowercase();
        async move { Some(mac) }
    }
}
