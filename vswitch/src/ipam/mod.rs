//! Cluster-wide address allocation: any VPC address on any node, as a cloud's SDN hands them
//! out, with etcd (or, on a single node, a local file) as the one place that says who holds
//! which address.
//!
//! - [`config`]: `[ipam]` as read and as checked.
//! - [`pool`]: the cluster's pool (prefixes minus reserved addresses).
//! - [`record`]: what the store holds per address, and the key layout.
//! - [`store`]: the compare-and-swap store trait and its two backends (file, etcd).
//! - [`node`]: this node's agent: the request side (ADD/DEL from local state) and the upkeep
//!   against the store, over one shared state.
//! - [`request`] and [`error`]: what the IPAM takes, returns and refuses, in its own types; the
//!   driver converts them to and from the API.
//!
//! It lives in vswitchd rather than a daemon of its own: vswitchd already owns the node's
//! socket, state directory, upgrade handover and pod ports, and fencing a node that lost its
//! addresses means detaching ports, which only vswitchd can do. The short-lived `vpc-cni`
//! process only talks to vswitchd.

pub mod config;
pub mod error;
pub mod node;
pub mod pool;
pub mod provider;
pub mod record;
pub mod request;
pub mod store;

pub use config::{IpamConfig, IpamSettings};
pub use error::{IpamError, SettingsError};
pub use node::{Fenced, NodeIpam};
pub use pool::Pool;
pub use request::{AddressRequest, Assigned};

#[cfg(test)]
mod cluster_tests;
