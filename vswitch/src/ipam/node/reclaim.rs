//! Dead nodes' addresses back to the pool: a node that holds addresses but no lease is marked
//! down, and once `quarantine` has passed its addresses become cooling (sticky pods': sticky).
//! Any live node may do it; the compare-and-swap makes it happen once. (A large cluster would
//! have one node, a leader, do it: a change to [`Reclaimer`] alone.)

use std::collections::HashSet;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use super::state::{LastRun, NodeState};
use super::stats::ClusterCounts;
use crate::ipam::pool::Family;
use crate::ipam::record::{now_secs, AddressRecord};
use crate::ipam::store::{ClusterStore, StoreError};

/// How often a node looks for dead nodes to reclaim.
const RECLAIM_EVERY: Duration = Duration::from_secs(2);

#[derive(Debug, Default)]
pub(super) struct Reclaimer {
    last_run: LastRun,
}

impl Reclaimer {
    /// Looks for dead nodes if [`RECLAIM_EVERY`] has passed since the last look.
    pub(super) async fn run_if_due<S: ClusterStore>(&self, state: &Arc<NodeState<S>>) -> Result<(), StoreError> {
        if self.last_run.due(RECLAIM_EVERY) {
            reclaim_dead(state).await?;
            self.last_run.ran();
        }
        Ok(())
    }
}

/// Nodes that hold addresses but no lease: marked down, and after the quarantine their
/// addresses become cooling (sticky pods' addresses: sticky). Also counts the cluster's
/// addresses for the metrics, from the same listing.
async fn reclaim_dead<S: ClusterStore>(state: &Arc<NodeState<S>>) -> Result<(), StoreError> {
    let (settings, keys, store) = (state.settings(), state.keys(), state.store());
    let live = state.live_nodes().await?;
    let downs = state.down_marks().await?;
    let records = state.records().await?;
    let counts = ClusterCounts::of(&settings.pool, records.iter().map(|(ip, (r, _))| (ip, r)));
    *state.stats().cluster.lock().unwrap_or_else(|p| p.into_inner()) = Some(counts);
    let holders: HashSet<String> = records.values().filter_map(|(r, _)| r.node().map(str::to_string)).collect();
    let now = now_secs();
    for node in holders.iter().filter(|n| !live.contains(*n) && n.as_str() != state.node()) {
        match downs.get(node) {
            None => {
                tracing::warn!(%node, quarantine_s = settings.quarantine.as_secs(), "node has addresses but no lease: quarantined");
                store.put(&keys.down(node), now.to_string().into_bytes()).await?;
            }
            Some(since) if now >= since + settings.quarantine.as_secs() => {
                let mut n = 0;
                for (ip, (record, version)) in records.iter().filter(|(_, (r, _))| r.node() == Some(node.as_str())) {
                    let last_node = node.clone();
                    let next = match record {
                        AddressRecord::Assigned { pod: Some(pod), .. } if settings.is_sticky(pod) => {
                            AddressRecord::Sticky {
                                pod: pod.clone(),
                                until: now + settings.sticky_hold.as_secs(),
                                last_node,
                            }
                        }
                        _ => AddressRecord::Cooling { released_at: now, last_node },
                    };
                    // Only while the node is still without a lease (it may have come back
                    // since `live` was read).
                    let key = keys.ip(*ip);
                    if store.put_if_absent(&key, next.encode(), *version, &keys.node(node)).await?.is_some() {
                        n += 1;
                        if let AddressRecord::Sticky { pod, .. } = &next {
                            store.put(&keys.sticky(pod, Family::of(ip)), ip.to_string().into_bytes()).await?;
                        }
                    }
                }
                state.stats().reclaimed.fetch_add(n, Ordering::Relaxed);
                tracing::warn!(%node, addresses = n, "reclaimed the addresses of a node whose lease expired");
                store.delete(&keys.down(node)).await?;
            }
            Some(_) => {}
        }
    }
    for node in downs.keys().filter(|n| live.contains(*n) || !holders.contains(*n)) {
        store.delete(&keys.down(node)).await?;
    }
    Ok(())
}
