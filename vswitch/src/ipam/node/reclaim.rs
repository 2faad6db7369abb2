//! Dead nodes' addresses back to the pool, done by one node, the leader: a member (a node that
//! registered once) without a lease is marked down, and once `quarantine` has passed its
//! addresses, found through its index (`held/<node>/`), become cooling (sticky pods': sticky).
//!
//! Leadership is a key naming the leader (`<prefix>/leader`), taken by CAS only while the named
//! node's lease key is gone (`put_if_absent`): a leader that dies hands over within its lease
//! TTL plus one [`RECLAIM_EVERY`]. Every other node reads one key per [`RECLAIM_EVERY`] (the
//! leader's lease key); only the leader lists, and only the small node and member prefixes.
//! Leadership saves work, it does not keep addresses apart: every reclaim is a CAS made only
//! while the dead node's lease key is absent, so two nodes that both think they lead (one cut
//! off) still reclaim each address at most once.

use std::collections::HashSet;
use std::net::IpAddr;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::state::{LastRun, NodeState};
use super::stats::ClusterCounts;
use crate::ipam::pool::Family;
use crate::ipam::record::{now_secs, AddressRecord};
use crate::ipam::store::{ClusterStore, StoreError};

/// How often a node checks the leader, and the leader looks for dead nodes.
const RECLAIM_EVERY: Duration = Duration::from_secs(2);
/// How often the leader counts the cluster's records for its metrics (one listing of them all).
const COUNT_EVERY: Duration = Duration::from_secs(60);

#[derive(Debug, Default)]
pub(super) struct Reclaimer {
    last_run: LastRun,
    last_count: LastRun,
    /// The leader as last read (this node's name when it leads).
    leader: Mutex<Option<String>>,
}

impl Reclaimer {
    /// Checks the leader if [`RECLAIM_EVERY`] has passed since the last look, and, leading,
    /// reclaims dead nodes' addresses.
    pub(super) async fn run_if_due<S: ClusterStore>(&self, state: &Arc<NodeState<S>>) -> Result<(), StoreError> {
        if self.last_run.due(RECLAIM_EVERY) {
            if self.lead(state).await? {
                reclaim_dead(state).await?;
                if self.last_count.due(COUNT_EVERY) {
                    count(state).await?;
                    self.last_count.ran();
                }
            }
            self.last_run.ran();
        }
        Ok(())
    }

    /// Whether this node leads: the leader key names it. Another node's leadership is checked
    /// by reading its lease key alone; when that is gone, the leader key is taken by CAS.
    async fn lead<S: ClusterStore>(&self, state: &Arc<NodeState<S>>) -> Result<bool, StoreError> {
        let (store, keys, me) = (state.store(), state.keys(), state.node());
        let cached = self.leader.lock().unwrap_or_else(|p| p.into_inner()).clone();
        if let Some(leader) = cached.filter(|l| l != me) {
            if store.get(&keys.node(&leader)).await?.is_some() {
                return Ok(false);
            }
        }
        let current = store.get(&keys.leader()).await?;
        let named = current.as_ref().map(|e| String::from_utf8_lossy(&e.value).into_owned());
        let leader = match (&current, &named) {
            (Some(_), Some(named)) if named == me => me.to_string(),
            (Some(e), Some(named)) => {
                let (key, their_lease) = (keys.leader(), keys.node(named));
                if store.put_if_absent(&key, me.as_bytes().to_vec(), e.version, &their_lease).await?.is_some() {
                    tracing::info!(previous = %named, "the leader's lease is gone: this node reclaims dead nodes now");
                    me.to_string()
                } else {
                    named.clone()
                }
            }
            _ => match store.put_if(&keys.leader(), me.as_bytes().to_vec(), 0).await? {
                Some(_) => {
                    tracing::info!("no leader yet: this node reclaims dead nodes now");
                    me.to_string()
                }
                None => return Ok(false),
            },
        };
        let leads = leader == me;
        *self.leader.lock().unwrap_or_else(|p| p.into_inner()) = Some(leader);
        Ok(leads)
    }
}

/// Members without a lease: marked down, and after the quarantine their addresses become
/// cooling (sticky pods' addresses: sticky). A member whose index is empty then leaves.
async fn reclaim_dead<S: ClusterStore>(state: &Arc<NodeState<S>>) -> Result<(), StoreError> {
    let (settings, keys, store) = (state.settings(), state.keys(), state.store());
    let live = state.live_nodes().await?;
    let downs = state.down_marks().await?;
    let members = store.list(&keys.members()).await?;
    let members: Vec<(String, i64)> = members
        .into_iter()
        .filter_map(|e| Some((e.key.strip_prefix(&keys.members())?.to_string(), e.version)))
        .collect();
    let now = now_secs();
    for (node, member_version) in members.iter().filter(|(n, _)| !live.contains(n) && n != state.node()) {
        match downs.get(node) {
            None => {
                tracing::warn!(%node, quarantine_s = settings.quarantine.as_secs(), "node has no lease: quarantined");
                store.put(&keys.down(node), now.to_string().into_bytes()).await?;
            }
            Some(since) if now >= since + settings.quarantine.as_secs() => {
                let indexed = state.indexed(node).await?;
                // One address at a time would take a round trip each: all at once.
                let outcomes = futures::future::join_all(indexed.iter().map(|ip| reclaim_one(state, node, *ip, now)));
                let (mut n, mut left) = (0, 0);
                for outcome in outcomes.await {
                    match outcome? {
                        Reclaimed::Yes => n += 1,
                        Reclaimed::Stale => {}
                        Reclaimed::Changed => left += 1,
                    }
                }
                state.stats().reclaimed.fetch_add(n, Ordering::Relaxed);
                if n > 0 {
                    tracing::warn!(%node, addresses = n, "reclaimed the addresses of a node whose lease expired");
                }
                if left == 0 {
                    // Gone for good unless it registers again (which writes its member key anew,
                    // so this delete then fails and the node stays watched over).
                    store.delete_if(&keys.member(node), *member_version).await?;
                    store.delete(&keys.down(node)).await?;
                }
            }
            Some(_) => {}
        }
    }
    let members: HashSet<&String> = members.iter().map(|(n, _)| n).collect();
    for node in downs.keys().filter(|n| live.contains(*n) || !members.contains(n)) {
        store.delete(&keys.down(node)).await?;
    }
    Ok(())
}

enum Reclaimed {
    Yes,
    /// The index entry was stale (the record names someone else, or nobody): it is gone now.
    Stale,
    /// The record changed meanwhile, or the node came back: left for the next look.
    Changed,
}

/// Turns dead `node`'s record of `ip` cooling (a sticky pod's: sticky), by CAS and only while the
/// node's lease key is absent (it may have come back since the leader looked), then takes the
/// address out of the node's index.
async fn reclaim_one<S: ClusterStore>(
    state: &NodeState<S>,
    node: &str,
    ip: IpAddr,
    now: u64,
) -> Result<Reclaimed, StoreError> {
    let (settings, keys, store) = (state.settings(), state.keys(), state.store());
    let records = state.records_of([ip]).await?;
    let Some((record, version)) = records.get(&ip).filter(|(r, _)| r.node() == Some(node)) else {
        store.delete(&keys.held_ip(node, ip)).await?;
        return Ok(Reclaimed::Stale);
    };
    let last_node = node.to_string();
    let next = match record {
        AddressRecord::Assigned { pod: Some(pod), .. } if settings.is_sticky(pod) => {
            AddressRecord::Sticky { pod: pod.clone(), until: now + settings.sticky_hold.as_secs(), last_node }
        }
        _ => AddressRecord::Cooling { released_at: now, last_node },
    };
    if store.put_if_absent(&keys.ip(ip), next.encode(), *version, &keys.node(node)).await?.is_none() {
        return Ok(Reclaimed::Changed);
    }
    if let AddressRecord::Sticky { pod, .. } = &next {
        store.put(&keys.sticky(pod, Family::of(&ip)), ip.to_string().into_bytes()).await?;
    }
    store.delete(&keys.held_ip(node, ip)).await?;
    Ok(Reclaimed::Yes)
}

/// The cluster's addresses by state, for the leader's metrics (the only listing of every record,
/// once per [`COUNT_EVERY`] by one node).
async fn count<S: ClusterStore>(state: &Arc<NodeState<S>>) -> Result<(), StoreError> {
    let records = state.records().await?;
    let counts = ClusterCounts::of(&state.settings().pool, records.iter().map(|(ip, (r, _))| (ip, r)));
    *state.stats().cluster.lock().unwrap_or_else(|p| p.into_inner()) = Some(counts);
    Ok(())
}
