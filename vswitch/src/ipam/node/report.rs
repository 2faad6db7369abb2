//! What the node reports: `/metrics` figures, the local summary and the cluster view, each per
//! address family where it counts.
//!
//! Sizes: an IPv6 /64 holds 2^64 addresses, more than a u64 counts. Internally sizes are u128;
//! the metrics export them as float gauges (exact up to 2^53, rounded beyond); the API view's
//! `pool_size` and `free` are IPv4's, and [`pool_summary`] gives each family's (u128) from it.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};

use vswitch_api::api::{AssignmentView, CoolingView, IpamNodeView, IpamView, LocalIpamView, PodRef, StickyView};

use super::state::{LocalEntry, NodeState};
use super::stats::ClusterCounts;
use crate::ipam::pool::{Family, Pool};
use crate::ipam::record::AddressRecord;
use crate::ipam::store::{ClusterStore, StoreError};

fn saturating(n: u128) -> u64 {
    u64::try_from(n).unwrap_or(u64::MAX)
}

/// One family's figures for `/metrics`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FamilyMetrics {
    pub family: Family,
    /// This node's addresses of the family.
    pub warm: u64,
    pub assigned: u64,
    pub pending: u64,
    /// Usable addresses in the pool.
    pub pool_size: u128,
}

#[derive(Debug, Clone)]
pub struct IpamMetrics {
    pub local: LocalIpamView,
    /// Per family the pool holds, IPv4 first.
    pub families: Vec<FamilyMetrics>,
    /// This node's pods' addresses.
    pub addresses: Vec<(IpAddr, Option<PodRef>)>,
    pub store_up: bool,
    pub store_errors: u64,
    pub reclaimed: u64,
    pub assigned_from_warm: u64,
    pub assigned_from_store: u64,
    pub refused_unavailable: u64,
    /// Warm addresses are not handed out: no lease renewal for too long (see `fence_after`).
    pub self_fenced: bool,
}

/// Each family's pool size and free addresses, worked out from a view (the API's `pool_size`
/// and `free` are IPv4's only): the pools and exclusions it names, less the addresses it lists.
/// Empty when the store was unreachable (the view has no cluster part) or the pools do not parse.
pub fn pool_summary(view: &IpamView) -> Vec<(Family, u128, u128)> {
    let Ok(pool) = Pool::parse(&view.pools, &view.exclude) else { return Vec::new() };
    if !view.store_reachable {
        return Vec::new();
    }
    let listed = view.nodes.iter().flat_map(|n| n.warm.iter().chain(n.assigned.iter().map(|a| &a.ip)));
    let listed = listed.chain(view.sticky.iter().map(|s| &s.ip)).chain(view.cooling.iter().map(|c| &c.ip));
    let mut held: BTreeMap<Family, u128> = BTreeMap::new();
    for ip in listed.filter(|ip| pool.contains(**ip)) {
        *held.entry(Family::of(ip)).or_default() += 1;
    }
    pool.families()
        .into_iter()
        .map(|f| (f, pool.size(f), pool.size(f).saturating_sub(held.get(&f).copied().unwrap_or(0))))
        .collect()
}

/// The figures `/metrics` shows.
pub(super) fn metrics<S: ClusterStore>(state: &NodeState<S>) -> IpamMetrics {
    let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
    let (settings, stats) = (state.settings(), state.stats());
    let (addresses, families) = {
        let local = state.local();
        let addresses = local
            .entries
            .iter()
            .filter_map(|(ip, e)| match &e.record {
                AddressRecord::Assigned { pod, .. } => Some((*ip, pod.clone())),
                _ => None,
            })
            .collect();
        let families = settings
            .pool
            .families()
            .into_iter()
            .map(|family| {
                let mine = || local.entries.iter().filter(move |(ip, _)| Family::of(ip) == family).map(|(_, e)| e);
                let count = |f: &dyn Fn(&LocalEntry) -> bool| mine().filter(|e| f(e)).count() as u64;
                FamilyMetrics {
                    family,
                    warm: count(&LocalEntry::is_warm),
                    assigned: count(&LocalEntry::is_assigned),
                    pending: count(&|e| e.dirty),
                    pool_size: settings.pool.size(family),
                }
            })
            .collect();
        (addresses, families)
    };
    IpamMetrics {
        local: local_view(state),
        families,
        addresses,
        store_up: stats.store_reachable.load(Ordering::Relaxed),
        store_errors: load(&stats.store_errors),
        reclaimed: load(&stats.reclaimed),
        assigned_from_warm: load(&stats.assigned_from_warm),
        assigned_from_store: load(&stats.assigned_from_store),
        refused_unavailable: load(&stats.refused_unavailable),
        self_fenced: state.self_fenced().is_some(),
    }
}

/// This node's figures, both families together.
pub(super) fn local_view<S: ClusterStore>(state: &NodeState<S>) -> LocalIpamView {
    let local = state.local();
    let count = |f: &dyn Fn(&LocalEntry) -> bool| local.entries.values().filter(|e| f(e)).count() as u64;
    LocalIpamView {
        warm: count(&LocalEntry::is_warm),
        warm_target: state.settings().warm_target as u64,
        assigned: count(&LocalEntry::is_assigned),
        pending_sync: count(&|e| e.dirty),
        fenced_total: state.stats().fenced.load(Ordering::Relaxed),
    }
}

/// The cluster's allocations from the store (this node's own state only when the store is
/// unreachable).
pub(super) async fn view<S: ClusterStore>(state: &NodeState<S>) -> IpamView {
    let settings = state.settings();
    // The view's pool_size and free are IPv4's (as the API says); `pool_summary` gives both
    // families from the same view.
    let pool_size = saturating(settings.pool.size(Family::Ipv4));
    let mut view = IpamView {
        node: settings.node.clone(),
        store: state.store().describe(),
        store_reachable: true,
        store_error: None,
        pools: settings.pools.iter().map(ToString::to_string).collect(),
        exclude: settings.exclude.iter().map(ToString::to_string).collect(),
        pool_size,
        free: 0,
        nodes: Vec::new(),
        sticky: Vec::new(),
        cooling: Vec::new(),
        this_node: local_view(state),
        provider: None,
    };
    let cluster =
        async { Ok::<_, StoreError>((state.records().await?, state.live_nodes().await?, state.down_marks().await?)) };
    let (records, live, downs) = match cluster.await {
        Ok(c) => c,
        Err(e) => {
            view.store_reachable = false;
            view.store_error = Some(e.0);
            return view;
        }
    };
    let reuse = settings.reuse_delay.as_secs();
    let mut nodes: BTreeMap<String, IpamNodeView> = BTreeMap::new();
    let node_view = |name: &str| IpamNodeView {
        name: name.to_string(),
        live: live.contains(name),
        down_since: downs.get(name).copied(),
        quarantine_ends: downs.get(name).map(|s| s + settings.quarantine.as_secs()),
        warm: Vec::new(),
        assigned: Vec::new(),
    };
    for name in live.iter() {
        nodes.insert(name.clone(), node_view(name));
    }
    let mut sorted: Vec<_> = records.iter().collect();
    sorted.sort_by_key(|(ip, _)| **ip);
    for (ip, (record, _)) in sorted {
        match record {
            AddressRecord::Warm { node, .. } => {
                nodes.entry(node.clone()).or_insert_with(|| node_view(node)).warm.push(*ip)
            }
            AddressRecord::Assigned { node, owner, pod, since } => nodes
                .entry(node.clone())
                .or_insert_with(|| node_view(node))
                .assigned
                .push(AssignmentView { ip: *ip, owner: owner.clone(), pod: pod.clone(), since: *since }),
            AddressRecord::Sticky { pod, until, last_node } => {
                view.sticky.push(StickyView { ip: *ip, pod: pod.clone(), until: *until, last_node: last_node.clone() })
            }
            AddressRecord::Cooling { released_at, last_node } => view.cooling.push(CoolingView {
                ip: *ip,
                released_at: *released_at,
                free_at: released_at + reuse,
                last_node: last_node.clone(),
            }),
        }
    }
    let counts = ClusterCounts::of(&settings.pool, records.iter().map(|(ip, (r, _))| (ip, r)));
    view.free = saturating(counts.free(&settings.pool, Family::Ipv4));
    view.nodes = nodes.into_values().collect();
    view
}
