//! The warm pools, one per family: claiming free addresses in the store ahead of ADDs, and
//! giving back what is above `warm_max`. `warm_target` and `warm_max` apply to each family.
//! The upkeep refills and trims; [`claim`] also serves an ADD that found its warm pool empty.

use std::collections::HashSet;
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::state::{LocalEntry, NodeState, Records};
use crate::ipam::pool::Family;
use crate::ipam::record::{now_secs, AddressRecord};
use crate::ipam::store::{ClusterStore, StoreError};

/// Pools of up to this many addresses may be listed once when probing found too few free
/// addresses (the pool is nearly full), so "exhausted" is exact. Larger ones (IPv6: a /64 holds
/// 2^64) are only ever probed.
const LISTED_UP_TO: u128 = 1 << 20;

/// How long a write that went unanswered stays in doubt: etcd answers a proposal it could not
/// commit with "request timed out" after 5 s plus twice the election timeout (7 s with etcd's
/// defaults), and an overloaded etcd does apply writes whose client gave up. Looked up before
/// this, an address not (yet) this node's stays in doubt. (One committed later still is leaked
/// until an operator frees it, never given twice: its record names this node.)
const UNSURE_SETTLES: Duration = Duration::from_secs(10);

/// Store writes one claim of `count` addresses may try.
fn max_tries(count: usize) -> usize {
    64 + 4 * count
}

/// Looks up the addresses whose last write went unanswered: one the store gives this node
/// and that it does not know is taken in; anything else is not this node's. A claim made
/// straight as assigned for an ADD went unanswered only for an ADD that was refused (the
/// reply said unavailable, so no pod has the address): it joins the warm pool instead of
/// staying assigned to an owner who never got it (and would never release it).
async fn resolve_unsure<S: ClusterStore>(state: &Arc<NodeState<S>>) -> Result<(), StoreError> {
    let unsure = state.unsure();
    if unsure.is_empty() {
        return Ok(());
    }
    let mut adopted = false;
    for (ip, age) in unsure {
        let current = state.store().get(&state.keys().ip(ip)).await?;
        let record = current.and_then(|e| Some((AddressRecord::decode(&e.value)?, e.version)));
        if let Some((record, version)) = record.filter(|(r, _)| r.node() == Some(state.node())) {
            let mut local = state.local();
            if let std::collections::btree_map::Entry::Vacant(slot) = local.entries.entry(ip) {
                tracing::info!(%ip, state = record.state_name(), "a write whose reply was lost went through: the address is this node's");
                let refused_add = matches!(record, AddressRecord::Assigned { .. });
                let record = if refused_add {
                    AddressRecord::Warm { node: state.node().to_string(), since: now_secs() }
                } else {
                    record
                };
                slot.insert(LocalEntry { record, version, dirty: refused_add, netns: None });
                adopted = true;
            }
        } else if age < UNSURE_SETTLES {
            // A write that timed out may still be carried out (an overloaded etcd applies it
            // later): not this node's *yet* is no answer.
            continue;
        } else if !state.local().entries.contains_key(&ip) {
            // Not this node's: its index entry (written ahead of the write) goes.
            state.unindex(ip).await?;
        }
        state.resolved(ip);
    }
    if adopted {
        state.save_in_round().await?;
    }
    Ok(())
}

/// Claims up to `warm_target - warm` addresses for each family's warm pool, none once `until`
/// has passed: under a slow store a full refill takes many round trips, and the next round
/// (which renews the lease first) must not wait behind it.
pub(super) async fn refill<S: ClusterStore>(state: &Arc<NodeState<S>>, until: Instant) -> Result<(), StoreError> {
    resolve_unsure(state).await?;
    let target = state.settings().warm_target;
    for family in state.settings().pool.families() {
        let warm = warm_count(state, family);
        if warm >= target {
            continue;
        }
        let record = AddressRecord::Warm { node: state.node().to_string(), since: now_secs() };
        let wanted = Wanted { family, record: &record, also_skip: &HashSet::new(), netns: None, until: Some(until) };
        let won = claim(state, &wanted, target - warm).await?;
        if !won.is_empty() {
            state.save_in_round().await?;
        }
    }
    Ok(())
}

/// What a claim takes: addresses of `family`, written as `record`, never one of `also_skip`
/// (nor one this node knows), recorded locally with `netns`; no try is begun after `until`.
pub(super) struct Wanted<'a> {
    pub(super) family: Family,
    pub(super) record: &'a AddressRecord,
    pub(super) also_skip: &'a HashSet<IpAddr>,
    pub(super) netns: Option<PathBuf>,
    pub(super) until: Option<Instant>,
}

/// Claims up to `count` free addresses of `family` in the store as `record`, one CAS each
/// (from absent, or from a record whose reuse delay is over), probing random positions in the
/// pool so that nodes rarely race for the same one: a claim costs the same however
/// many nodes and records the cluster has. Only when the probes found too few (a nearly full
/// pool) does one listing of the records find the last free ones. Skips what this node knows
/// and `also_skip`. Each address won is recorded locally at once (with `netns`); the caller
/// saves. A write whose reply was lost is looked up again later (`resolve_unsure`).
pub(super) async fn claim<S: ClusterStore>(
    state: &Arc<NodeState<S>>,
    wanted: &Wanted<'_>,
    count: usize,
) -> Result<Vec<(IpAddr, i64)>, StoreError> {
    let mut won = probe(state, wanted, count, None).await?;
    let late = wanted.until.is_some_and(|until| Instant::now() >= until);
    if won.len() < count && !late && state.settings().pool.size(wanted.family) <= LISTED_UP_TO {
        let listed = state.records().await?;
        won.extend(probe(state, wanted, count - won.len(), Some(&listed)).await?);
    }
    Ok(won)
}

/// [`claim`]'s tries: each candidate's record read (or looked up in `listed`), and written only
/// if it is free: first this node's index, then the record by CAS, then, if the CAS lost, the
/// index entry taken out again.
async fn probe<S: ClusterStore>(
    state: &Arc<NodeState<S>>,
    wanted: &Wanted<'_>,
    count: usize,
    listed: Option<&Records>,
) -> Result<Vec<(IpAddr, i64)>, StoreError> {
    let Wanted { family, record, also_skip, netns, until } = wanted;
    let settings = state.settings();
    let now = now_secs();
    let reuse = settings.reuse_delay.as_secs();
    let known: HashSet<IpAddr> = state.local().entries.keys().copied().collect();
    let mut won = Vec::new();
    let mut tried = 0;
    let (store, keys) = (state.store(), state.keys());
    // Read from the store, each try is at a new random place: a walk from one random place
    // crossed whole runs of other nodes' addresses (claims that walk fill the first free
    // address after a run, so runs grow), a read each, more of them the more nodes there are
    // around a node's own. Random places cost 1/(1 - occupancy) reads whatever the cluster's
    // size. From a listing, where reads are free, the walk covers every address.
    let pool = &settings.pool;
    let candidates: Box<dyn Iterator<Item = IpAddr> + Send + '_> = match listed {
        Some(_) => Box::new(pool.candidates(*family, rand::random::<u128>())),
        // As many tries as the pool has addresses at most: a small pool this node holds all of
        // ends the loop (its addresses are skipped without a try).
        None => Box::new(
            std::iter::from_fn(|| pool.candidates(*family, rand::random::<u128>()).next())
                .take(usize::try_from(pool.size(*family)).unwrap_or(usize::MAX)),
        ),
    };
    for ip in candidates {
        if won.len() >= count || tried >= max_tries(count) || until.is_some_and(|u| Instant::now() >= u) {
            break;
        }
        if known.contains(&ip) || also_skip.contains(&ip) {
            continue;
        }
        let Some(_hold) = state.hold(ip) else { continue };
        tried += 1;
        let key = keys.ip(ip);
        let current = match listed {
            Some(records) => records.get(&ip).cloned(),
            None => store.get(&key).await?.and_then(|e| Some((AddressRecord::decode(&e.value)?, e.version))),
        };
        let expected = match current {
            None => 0,
            Some((existing, version)) if existing.claimable(now, reuse) => version,
            Some(_) => continue,
        };
        state.index(ip).await?;
        match store.put_if(&key, record.encode(), expected).await {
            Ok(Some(version)) => {
                // Recorded at once (a later failure must not lose it); adopted meanwhile by
                // `resolve_unsure` it is the same record: that entry stays.
                let entry = LocalEntry { record: (*record).clone(), version, dirty: false, netns: netns.clone() };
                state.local().entries.entry(ip).or_insert(entry);
                won.push((ip, version));
            }
            Ok(None) => state.unindex(ip).await?,
            Err(e) => {
                state.unsure_about(ip);
                if !won.is_empty() {
                    let _ = state.save().await;
                }
                return Err(e);
            }
        }
    }
    Ok(won)
}

/// Warm addresses of `family` the store knows are this node's.
fn warm_count<S: ClusterStore>(state: &NodeState<S>, family: Family) -> usize {
    state.local().entries.iter().filter(|(ip, e)| Family::of(ip) == family && e.is_warm() && !e.dirty).count()
}

/// Gives warm addresses above `warm_max` (per family) back, deleting their records: no pod
/// used them. Each leaves the warm pool before its record is deleted, so no ADD can take it
/// meanwhile (and nothing else of this node touches a record naming it that it does not
/// know); a delete that went unanswered or found the record changed is looked up again later.
pub(super) async fn trim<S: ClusterStore>(state: &Arc<NodeState<S>>) -> Result<(), StoreError> {
    let warm_max = state.settings().warm_max;
    // Each held until its delete is done: a claim of this node meanwhile must not take it
    // (the delete's unindex would take the claim's index entry with it).
    let excess: Vec<(IpAddr, i64, _)> = {
        let mut local = state.local();
        let warm: Vec<IpAddr> =
            local.entries.iter().filter(|(_, e)| e.is_warm() && !e.dirty).map(|(ip, _)| *ip).collect();
        Family::ALL
            .into_iter()
            .flat_map(|family| warm.iter().filter(move |ip| Family::of(ip) == family).skip(warm_max))
            .filter_map(|ip| {
                let hold = state.hold(*ip)?;
                Some((*ip, local.entries.remove(ip)?.version, hold))
            })
            .collect()
    };
    if excess.is_empty() {
        return Ok(());
    }
    // Saved without them first: after a crash from here on, `reconcile` adopts what is left.
    let mut result = state.save_in_round().await;
    for (ip, version, _hold) in excess {
        if result.is_err() {
            state.unsure_about(ip);
            continue;
        }
        match state.store().delete_if(&state.keys().ip(ip), version).await {
            Ok(true) => {
                if let Err(e) = state.unindex(ip).await {
                    result = Err(e);
                }
            }
            Ok(false) => state.unsure_about(ip),
            Err(e) => {
                state.unsure_about(ip);
                result = Err(e);
            }
        }
    }
    result
}
