//! One node's side of the cluster IPAM.
//!
//! The node keeps what it holds in a local state file (`<state_dir>/ipam.json`, replaced
//! atomically): its warm pool, its pods' addresses, and what it still has to tell the store.
//! Two parts share it ([`state`]):
//! - [`Requests`]: ADD, DEL, GC and lookups. They change only that file, so they take no store
//!   round trip and keep working while the store is unreachable.
//! - [`Upkeep`]: the rounds that then bring the store in line, one compare-and-swap per address,
//!   refill the warm pools (one per address family; see [`warm`]) and reclaim dead nodes'
//!   addresses ([`reclaim`]).
//!
//! An attachment holds one address per family it asked for, each its own entry and its own
//! store key; ADD takes them all or none.
//!
//! The rules that keep an address from ever having two owners:
//! - Only the store's record says who may use an address. A node claims one by a CAS from
//!   "absent" or "cooling (reuse delay over)" to "warm on me"; it gives one back by a CAS from
//!   the version it last wrote.
//! - Claims are written to the store first and to the local file second; a node that dies in
//!   between finds the claim in the store when it comes back (it adopts every record that names
//!   it). ADD and DEL are written to the local file before they are answered.
//! - A node that loses its lease (dead or cut off) has its addresses reclaimed by any other node
//!   once `quarantine` has passed; they become cooling (or sticky), so they are handed out again
//!   only after the reuse delay on top. When the node comes back, every write it tries fails its
//!   CAS: it sees that the records no longer name it and detaches those pods ("fenced").
//! - An address a port of this node uses is never handed out, whatever the files say.

use std::path::Path;
use std::sync::Arc;

use vswitch_api::api::{IpamView, LocalIpamView};

use super::config::IpamSettings;
use super::error::IpamError;
use super::store::ClusterStore;

mod reclaim;
mod report;
mod requests;
mod state;
mod stats;
mod upkeep;
mod warm;

pub use report::{pool_summary, FamilyMetrics, IpamMetrics};
pub use requests::{PortAddress, Requests};
pub use state::Fenced;
pub use stats::ClusterCounts;
pub use upkeep::{Upkeep, TICK};

/// The node's IPAM: its two sides over one shared state, and what it reports.
#[derive(Debug)]
pub struct NodeIpam<S: ClusterStore> {
    state: Arc<state::NodeState<S>>,
    requests: Requests<S>,
    upkeep: Upkeep<S>,
}

impl<S: ClusterStore> NodeIpam<S> {
    /// Loads the node's state (a corrupt file is an error: it may be all that knows which pods
    /// hold which addresses). Does not touch the store: the node starts while it is down.
    pub fn open(settings: IpamSettings, store: S, state_dir: &Path) -> Result<NodeIpam<S>, IpamError> {
        let state = Arc::new(state::NodeState::open(settings, store, state_dir)?);
        Ok(NodeIpam { requests: Requests::new(state.clone()), upkeep: Upkeep::new(state.clone()), state })
    }

    /// ADD, DEL, GC and lookups.
    pub fn requests(&self) -> &Requests<S> {
        &self.requests
    }

    /// The rounds against the store.
    pub fn upkeep(&self) -> &Upkeep<S> {
        &self.upkeep
    }

    /// The figures `/metrics` shows.
    pub fn metrics(&self) -> IpamMetrics {
        report::metrics(&self.state)
    }

    /// This node's figures, both families together.
    pub fn local_view(&self) -> LocalIpamView {
        report::local_view(&self.state)
    }

    /// The cluster's allocations from the store (this node's own state only when the store is
    /// unreachable).
    pub async fn view(&self) -> IpamView {
        report::view(&self.state).await
    }
}
