//! VPC-provider mode: pod addresses are secondary IPs of this node's NIC, registered through the
//! cloud's VPC API, as UK8S's CNI (UCloud) and AWS's VPC CNI do it. The cloud's SDN delivers a
//! packet only to an address registered to a NIC, so here the VPC, not etcd, says who holds what.
//!
//! - [`VpcProvider`]: the small trait a cloud implements (allocate, delete, describe this NIC's
//!   secondary IPs, move one here, subnet free count), with typed [`ProviderError`]s. A second
//!   cloud (AWS EC2, issue 26) is one new file beside [`ucloud`].
//! - [`agent`]: the node's pool of secondary IPs: ADD/DEL from local state, the upkeep that keeps
//!   the warm pool between its watermarks, queued deletes, reconcile against the VPC, persistence.
//! - [`probe`]: whether the fabric delivers a new address yet (an ARP probe, as UK8S's arping).
//! - [`claims`]: sticky pods' records in the cluster store (which address a pod keeps).
//! - [`config`]: `[ipam] provider = "ucloud"` and `[ipam.ucloud]`.

pub mod agent;
pub mod claims;
pub mod config;
pub mod probe;
pub mod stats;
pub mod ucloud;

#[cfg(test)]
mod agent_tests;
#[cfg(test)]
pub(crate) mod fake;
#[cfg(test)]
mod sticky_tests;

use std::future::Future;
use std::net::IpAddr;

pub use agent::{ProviderIpam, ProviderSettings};

/// A secondary IP as the VPC describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SecondaryIp {
    pub ip: IpAddr,
    /// The NIC holding it (MAC, lower case).
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
    #[error("VPC API error {code}: {message}")]
    Other { code: u32, message: String },
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
            ProviderError::Other { .. } => "other",
        }
    }
}

/// A cloud's VPC API for one node's NIC. Futures are `Send`: the upkeep runs them on tokio.
pub trait VpcProvider: Send + Sync + 'static {
    /// The provider's name as configuration and views say it (`ucloud`).
    fn name(&self) -> &'static str;
    /// This node's NIC as the API names it.
    fn nic(&self) -> &str;
    /// A new secondary IP on this node's NIC (`ip`: that one).
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
}
