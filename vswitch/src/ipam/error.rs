//! What the IPAM refuses or fails at, one variant per failure its callers tell apart. The
//! messages are the ones CNI replies carry; the driver maps each variant to the API's code
//! (`control/ipam_errors.rs`).

use std::net::IpAddr;
use std::path::PathBuf;

use vswitch_api::api::PodRef;

use super::pool::{Family, PoolError};
use super::provider::agent::ProviderRefusal;
use super::store::etcd::EtcdSetupError;
use super::store::StoreError;

#[derive(Debug, thiserror::Error)]
pub enum IpamError {
    /// vswitchd runs without `[ipam]`.
    #[error("this vswitchd has no [ipam] section: cluster address allocation is off")]
    Off,
    #[error(transparent)]
    Settings(#[from] SettingsError),
    /// The request asks for what cannot be given however often it is retried.
    #[error(transparent)]
    Invalid(#[from] InvalidRequest),
    #[error("{container_id} has no address here")]
    NotFound { container_id: String },
    #[error("no free {family} address in the pool {pools}")]
    Exhausted { family: Family, pools: String },
    /// The address asked for is someone else's.
    #[error(transparent)]
    Conflict(#[from] Conflict),
    /// The store did not answer a request that needs it (`what` names the request).
    #[error("{what}: the address store is unreachable ({source}); retry later")]
    StoreUnavailable { what: &'static str, source: StoreError },
    /// A sticky pod's address is between two nodes: retrying works once it has settled.
    #[error(transparent)]
    StickyBusy(#[from] StickyBusy),
    /// Reading or writing the node's state file (`ipam.json`).
    #[error("IPAM state {path}: {source}")]
    StateIo { path: PathBuf, source: std::io::Error },
    #[error("{path} is corrupt: {detail}")]
    StateCorrupt { path: PathBuf, detail: String },
    #[error("{path} has format {found}, newer than this vswitchd knows ({known})")]
    StateTooNew { path: PathBuf, found: u32, known: u32 },
    /// The node-local store's file does not parse: not an unreachable store, a broken one.
    /// (`local`: the node's state file beside it.)
    #[error(
        "the address store {path} is corrupt ({detail}); vswitchd does not start on it and leaves it as it is. \
         Restore it from a backup; or, to start with an empty store, stop vswitchd and move {path} and {local} \
         away: this node then records again the addresses of the pods it has ports for and claims new warm \
         ones (an address released less than ipam.reuse_delay_seconds ago may be handed out again at once)",
        local = local.display()
    )]
    StoreCorrupt { path: PathBuf, detail: String, local: PathBuf },
    #[error("address store {path}: {source}")]
    StoreUnreadable { path: PathBuf, source: std::io::Error },
    #[error("ipam.etcd: {0}")]
    Etcd(#[from] EtcdSetupError),
    /// Provider mode: no address for an ADD (code 11, retry later).
    #[error(transparent)]
    Provider(#[from] ProviderRefusal),
    /// Provider mode: `[ipam.ucloud]`/`[ipam.aws]` or its credentials are unusable.
    #[error(transparent)]
    ProviderSetup(#[from] ProviderSetupError),
}

/// Provider mode's configuration as checked at start.
#[derive(Debug, thiserror::Error)]
pub enum ProviderSetupError {
    #[error(transparent)]
    Config(#[from] super::provider::config::ProviderConfigError),
    #[error(transparent)]
    Client(#[from] super::provider::ucloud::UCloudSetupError),
    #[error(transparent)]
    Aws(#[from] super::provider::aws::query::AwsSetupError),
    /// `[ipam.ucloud]` leaves the node's NIC or host id out and the metadata service did not tell.
    #[error(transparent)]
    Metadata(#[from] super::provider::ucloud_metadata::MetadataError),
}

/// What is wrong with `[ipam]` as a whole (each prefix was checked as it was read).
#[derive(Debug, thiserror::Error)]
pub enum SettingsError {
    #[error("ipam.node_name is not set and the host name is unreadable: {0}")]
    NoHostName(nix::Error),
    #[error("ipam.node_name '{0}' must be non-empty and without '/'")]
    NodeName(String),
    #[error("ipam.prefix '{0}' must start with '/'")]
    KeyPrefix(String),
    #[error("ipam.warm_target must be at least 1 and at most warm_max")]
    WarmTarget,
    #[error("ipam.lease_ttl_seconds must be at least 2")]
    LeaseTtl,
    #[error("ipam.sticky pattern '{0}' must be NAMESPACE/NAME")]
    StickyPattern(String),
    #[error("ipam: {0}")]
    Pool(#[from] PoolError),
    /// Every node must hand out the same pool: the first node to register wrote it to the store.
    #[error(
        "ipam: this node's pool ({configured}) is not the cluster's ({stored}, in the store at {key}); \
         every node's [ipam] pools and exclude must be the same: IPAM does not start until they are"
    )]
    PoolMismatch { configured: String, stored: String, key: String },
}

/// An ADD that asks for what the pool or the request itself rules out.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidRequest {
    #[error("the pool {pools} has no {family} addresses")]
    FamilyNotInPool { pools: String, family: Family },
    #[error("at most one {0} address may be asked for")]
    TwoOfFamily(Family),
    #[error("{0} is not of a family this ADD asks for")]
    UnaskedFamily(IpAddr),
    #[error("{0} is not in the pool")]
    NotInPool(IpAddr),
}

/// An address asked for by name that is not free for this attachment.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Conflict {
    #[error("{container_id} already has {has}; it cannot also take {asked}")]
    AlreadyHas { container_id: String, has: IpAddr, asked: IpAddr },
    #[error("{ip} is in use by {by}")]
    InUse { ip: IpAddr, by: Holder },
}

/// Who holds an address asked for by name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Holder {
    /// A port of this node.
    Port,
    /// This node's state, for this container (none: warm, cooling or sticky).
    Local(Option<String>),
    /// The store's record: the node it names (if any) and its state.
    Record {
        node: Option<String>,
        state: &'static str,
    },
    Unreadable,
    /// Someone took it between reading its record and writing it.
    Raced,
}

impl std::fmt::Display for Holder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Holder::Port => f.write_str("a port of this node"),
            // Written as the debug form (`Some("c1")`), as replies always said.
            Holder::Local(owner) => write!(f, "{owner:?}"),
            Holder::Record { node, state } => write!(f, "{} ({state})", node.as_deref().unwrap_or("-")),
            Holder::Unreadable => f.write_str("an unreadable record"),
            Holder::Raced => f.write_str("another node (it changed while asking)"),
        }
    }
}

/// A sticky pod's address that cannot be taken over yet.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StickyBusy {
    #[error("{pod}'s address {ip} changed while taking it; retry")]
    Changed { pod: PodRef, ip: IpAddr },
    #[error("{pod} still holds {ip} on {node} (its DEL has not happened yet); retry")]
    StillHeld { pod: PodRef, ip: IpAddr, node: String },
}
