//! Dead nodes' addresses back to the pool, done by one node, the leader: a member (a node that
//! registered once) without a lease is marked down, and once `quarantine` has passed its
//! addresses, found through its index (`held/<node>/`), become cooling (sticky pods': sticky).
//!
//! Nothing here polls. Leadership is a key naming the leader (`<prefix>/reclaim-leader`), bound
//! to the leader's own lease and created only where it is absent: when the leader dies (or is
//! cut off) the key goes with its lease, and every node learns it from its watch of that one key
//! and tries to create it on its next round; one wins. The leader follows the node, member and
//! down-mark prefixes through one watch each ([`Mirror`]): a node's lease key vanishing is an
//! event, so its down mark is written within a round of its lease expiring, and its addresses
//! are reclaimed within a round of the quarantine ending. A non-leader's steady cost is a watch
//! that sees nothing; the leader's is three that see only registrations and deaths.
//!
//! Leadership saves work, it does not keep addresses apart: every reclaim is a CAS made only
//! while the dead node's lease key is absent, so two nodes that both think they lead (one cut
//! off) still reclaim each address at most once.

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use super::state::NodeState;
use crate::ipam::pool::Family;
use crate::ipam::record::{now_secs, AddressRecord, Keys};
use crate::ipam::store::mirror::Mirror;
use crate::ipam::store::{ClusterStore, Entry, StoreError};

#[derive(Debug, Default)]
pub(super) struct Reclaimer {
    /// Made on the first round (the mirrors need the node's keys); boxed, as the node's agent
    /// is held by value.
    watching: tokio::sync::Mutex<Option<Box<Watching>>>,
}

#[derive(Debug)]
struct Watching {
    /// The leader key.
    leader: Mirror,
    /// While this node leads.
    leading: Option<Leading>,
}

/// What the leader follows.
#[derive(Debug)]
struct Leading {
    /// Lease keys: the live nodes.
    nodes: Mirror,
    members: Mirror,
    downs: Mirror,
}

impl Leading {
    fn new(keys: &Keys) -> Leading {
        Leading {
            nodes: Mirror::new(&keys.nodes()),
            members: Mirror::new(&keys.members()),
            downs: Mirror::new(&keys.downs()),
        }
    }
}

impl Reclaimer {
    /// Follows the leader key (taking it when it is gone) and, leading, reclaims dead nodes'
    /// addresses. Runs every round: without news from the watches it sends nothing.
    pub(super) async fn run<S: ClusterStore>(&self, state: &Arc<NodeState<S>>) -> Result<(), StoreError> {
        let (store, keys, me) = (state.store(), state.keys(), state.node());
        let Some(lease) = state.local().lease else { return Ok(()) };
        let mut watching = self.watching.lock().await;
        let watching =
            watching.get_or_insert_with(|| Box::new(Watching { leader: Mirror::new(&keys.leader()), leading: None }));
        watching.leader.refresh(store).await?;
        let key = keys.leader();
        let named = watching.leader.get(&key).map(|e| e.value.clone());
        let leads = match named {
            Some(named) => named == me.as_bytes(),
            None => match store.create_leased(&key, me.as_bytes().to_vec(), lease).await? {
                Some(version) => {
                    tracing::info!("no leader (or its lease ended): this node reclaims dead nodes' addresses now");
                    watching.leader.wrote(Entry { key, value: me.as_bytes().to_vec(), version });
                    true
                }
                None => false,
            },
        };
        if !leads {
            watching.leading = None;
            return Ok(());
        }
        let leading = watching.leading.get_or_insert_with(|| Leading::new(keys));
        leading.nodes.refresh(store).await?;
        leading.members.refresh(store).await?;
        leading.downs.refresh(store).await?;
        reclaim_dead(state, leading).await
    }
}

/// Members without a lease: marked down, and after the quarantine their addresses become
/// cooling (sticky pods' addresses: sticky). A member whose index is empty then leaves.
async fn reclaim_dead<S: ClusterStore>(state: &Arc<NodeState<S>>, leading: &mut Leading) -> Result<(), StoreError> {
    let (settings, keys, store) = (state.settings(), state.keys(), state.store());
    let live: HashSet<String> = leading.nodes.named().map(|(node, _)| node.to_string()).collect();
    let downs: HashMap<String, u64> = leading
        .downs
        .named()
        .filter_map(|(node, e)| Some((node.to_string(), std::str::from_utf8(&e.value).ok()?.parse().ok()?)))
        .collect();
    let members: Vec<(String, i64)> = leading.members.named().map(|(node, e)| (node.to_string(), e.version)).collect();
    let now = now_secs();
    for (node, member_version) in members.iter().filter(|(n, _)| !live.contains(n) && n != state.node()) {
        match downs.get(node) {
            None => {
                tracing::warn!(%node, quarantine_s = settings.quarantine.as_secs(), "node has no lease: quarantined");
                let (key, value) = (keys.down(node), now.to_string().into_bytes());
                if let Some(version) = store.put_if(&key, value.clone(), 0).await? {
                    leading.downs.wrote(Entry { key, value, version });
                }
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
                    if store.delete_if(&keys.member(node), *member_version).await? {
                        leading.members.deleted(&keys.member(node));
                    }
                    store.delete(&keys.down(node)).await?;
                    leading.downs.deleted(&keys.down(node));
                }
            }
            Some(_) => {}
        }
    }
    let members: HashSet<&String> = members.iter().map(|(n, _)| n).collect();
    for node in downs.keys().filter(|n| live.contains(*n) || !members.contains(n)) {
        store.delete(&keys.down(node)).await?;
        leading.downs.deleted(&keys.down(node));
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
