//! What the node counts: its own events. Cluster-wide figures are the sum of every node's
//! (Prometheus adds them up), or `vswitchctl ipam`'s listing on demand: no node reads the whole
//! cluster on a timer.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, AtomicU64};

use crate::ipam::pool::{Family, Pool};
use crate::ipam::record::AddressRecord;

/// What the node counts for `/metrics`.
#[derive(Debug, Default)]
pub(super) struct IpamStats {
    pub store_reachable: AtomicBool,
    pub store_errors: AtomicU64,
    pub fenced: AtomicU64,
    pub assigned_from_warm: AtomicU64,
    pub assigned_from_store: AtomicU64,
    pub refused_unavailable: AtomicU64,
    pub reclaimed: AtomicU64,
    /// No lease renewal for longer than the self-fence allows: no warm address is handed out.
    pub self_fenced: AtomicBool,
}

/// Cluster-wide counts from one listing of the records (the on-demand view's).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClusterCounts {
    /// Records by family and state.
    pub by_state: BTreeMap<(Family, &'static str), u64>,
    /// Records of addresses in the pool, by family: the rest of the pool is free.
    pub held: BTreeMap<Family, u128>,
}

impl ClusterCounts {
    pub fn of<'a>(pool: &Pool, records: impl Iterator<Item = (&'a IpAddr, &'a AddressRecord)>) -> ClusterCounts {
        let mut counts = ClusterCounts::default();
        for (ip, record) in records {
            let family = Family::of(ip);
            *counts.by_state.entry((family, record.state_name())).or_default() += 1;
            if pool.contains(*ip) {
                *counts.held.entry(family).or_default() += 1;
            }
        }
        counts
    }

    /// Addresses of the family in the pool that no record holds.
    pub fn free(&self, pool: &Pool, family: Family) -> u128 {
        pool.size(family).saturating_sub(self.held.get(&family).copied().unwrap_or(0))
    }
}
