//! The upkeep side: one round every [`TICK`] (or at once after an ADD or DEL) brings the store
//! in line with the local state. In order: keep the lease (and, without one, register and
//! reconcile), write pending changes, refill and trim the warm pools ([`super::warm`]), reclaim
//! dead nodes' addresses ([`super::reclaim`]), release addresses whose sandbox is gone.
//!
//! No step reads the whole cluster: a node reads its own index and records, claims by probing,
//! and learns of other nodes only through watches, and only the leader ([`super::reclaim`])
//! follows the node prefixes. Every write is one compare-and-swap per address.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use vswitch_api::api::Attachment;

use super::reclaim::Reclaimer;
use super::state::{describe, Fenced, LastRun, LocalEntry, NodeState, PoolConflict};
use super::warm;
use crate::ipam::pool::{Excluded, Family, PoolPrefix};
use crate::ipam::record::{now_secs, AddressRecord, NodeRecord};
use crate::ipam::store::{ClusterStore, StoreError};

/// How long the node waits between upkeep rounds (an ADD or DEL starts one at once).
pub const TICK: Duration = Duration::from_secs(1);
/// An assigned address whose sandbox is gone and that no port uses is released after this long
/// (a DEL that could not reach the daemon); younger ones may be an ADD in progress.
const ORPHAN_AFTER_SECS: u64 = 30;

#[derive(Debug)]
pub struct Upkeep<S: ClusterStore> {
    state: Arc<NodeState<S>>,
    /// Holds a lease that the store confirmed in this process (reconciled since).
    registered: AtomicBool,
    rounds: AtomicU64,
    /// When the lease was last renewed: a round run early (after an ADD) does only the work
    /// that cannot wait.
    last_keep_alive: LastRun,
    reclaimer: Reclaimer,
}

impl<S: ClusterStore> Upkeep<S> {
    pub(super) fn new(state: Arc<NodeState<S>>) -> Upkeep<S> {
        Upkeep {
            state,
            registered: AtomicBool::new(false),
            rounds: AtomicU64::new(0),
            last_keep_alive: LastRun::default(),
            reclaimer: Reclaimer::default(),
        }
    }

    /// Waits until an ADD or DEL asks for an early round.
    pub async fn kicked(&self) {
        self.state.kicked().await
    }

    /// One round of upkeep: keep the lease, write pending changes, refill the warm pool,
    /// reclaim dead nodes' addresses. Returns the addresses this node lost (their ports must be
    /// detached). `has_port` says whether an attachment still has a port.
    pub async fn tick(&self, has_port: impl Fn(&Attachment) -> bool) -> Vec<Fenced> {
        let state = &self.state;
        let stats = state.stats();
        let mut fenced = Vec::new();
        let round = self.rounds.fetch_add(1, Ordering::Relaxed);
        // The refill stops claiming a third of a lease TTL in: the next round renews the lease.
        let refill_until = Instant::now() + state.settings().lease_ttl / 3;
        let result = async {
            self.ensure_registered(&mut fenced).await?;
            self.sync(&mut fenced).await?;
            warm::refill(state, refill_until).await?;
            warm::trim(state).await?;
            self.reclaimer.run(state).await
        }
        .await;
        match result {
            Ok(()) => {
                if !stats.store_reachable.swap(true, Ordering::Relaxed) {
                    tracing::info!(store = %state.store().describe(), "address store reachable");
                }
            }
            Err(_) if state.pool_conflict().is_some() => {}
            Err(e) => {
                stats.store_errors.fetch_add(1, Ordering::Relaxed);
                if stats.store_reachable.swap(false, Ordering::Relaxed) || round == 0 {
                    tracing::warn!(store = %state.store().describe(), error = %e, "address store unreachable: ADD uses the warm pool");
                }
            }
        }
        let fenced_now = state.self_fenced();
        if fenced_now.is_some() != stats.self_fenced.swap(fenced_now.is_some(), Ordering::Relaxed) {
            if let Some(since) = fenced_now {
                tracing::warn!(
                    without_s = since.as_secs(),
                    fence_after_s = state.fence_after().as_secs(),
                    "no lease renewal for longer than another node waits before reclaiming this node's addresses: \
                     warm addresses are no longer handed out (assigned pods keep running)"
                );
            }
        }
        self.release_orphans(has_port).await;
        state.first_round_done();
        for f in &fenced {
            stats.fenced.fetch_add(1, Ordering::Relaxed);
            tracing::error!(ip = %f.ip, owner = %f.owner.container_id, store_says = %f.now,
                "address lost while this node was cut off: it belongs elsewhere now; detaching the pod");
        }
        fenced
    }

    /// Assigned addresses whose sandbox is gone and that no port uses (their DEL could not
    /// reach this daemon) are released.
    async fn release_orphans(&self, has_port: impl Fn(&Attachment) -> bool) {
        let now = now_secs();
        let orphans: Vec<Attachment> = {
            let local = self.state.local();
            local
                .entries
                .values()
                .filter_map(|e| match &e.record {
                    AddressRecord::Assigned { owner, since, .. }
                        if now.saturating_sub(*since) >= ORPHAN_AFTER_SECS
                            && !has_port(owner)
                            && e.netns.as_ref().is_some_and(|ns| !ns.exists()) =>
                    {
                        Some(owner.clone())
                    }
                    _ => None,
                })
                .collect()
        };
        for owner in orphans {
            tracing::info!(owner = %owner.container_id, "its sandbox is gone and no port uses its address: released");
            let _ = self.state.release(&owner).await;
        }
    }

    /// Keeps the lease alive; without one (first start, or it expired while cut off), takes a
    /// new one and reconciles with the store before doing anything else.
    async fn ensure_registered(&self, fenced: &mut Vec<Fenced>) -> Result<(), StoreError> {
        let state = &self.state;
        let lease = state.local().lease;
        if self.registered.load(Ordering::Acquire) && !self.last_keep_alive.due(state.settings().lease_ttl / 3) {
            return Ok(());
        }
        let asked = now_secs();
        if let Some(lease) = lease {
            if state.store().keep_alive(lease).await? {
                self.last_keep_alive.ran();
                self.renewed(asked).await?;
                if !self.registered.load(Ordering::Acquire) {
                    self.register(lease, fenced).await?;
                }
                return Ok(());
            }
            tracing::warn!(lease, "this node's lease expired (the node was cut off or down): re-registering");
            // Until `register` has gone through with the new lease: should it fail half-way,
            // the next round's keep-alive of the new lease succeeds, and must not count as
            // registered (the node would never reconcile, fence or write its node key).
            self.registered.store(false, Ordering::Release);
        }
        let lease = state.store().grant_lease(state.settings().lease_ttl).await?;
        state.local().lease = Some(lease);
        self.renewed(asked).await?;
        self.register(lease, fenced).await
    }

    /// Records a renewal of the lease asked for at `asked` (the self-fence counts from there).
    async fn renewed(&self, asked: u64) -> Result<(), StoreError> {
        let lifted = self.state.self_fenced();
        self.state.local().renewed = Some(asked);
        if let Some(since) = lifted {
            tracing::info!(without_s = since.as_secs(), "lease renewed: warm addresses are handed out again");
        }
        self.state.save_in_round().await
    }

    /// The pool every node must have: written by the first node to register, compared by every
    /// other one before it registers.
    async fn check_pool(&self) -> Result<(), StoreError> {
        let state = &self.state;
        let settings = state.settings();
        let configured = pool_definition(&settings.pools, &settings.exclude);
        let key = state.keys().pool();
        let stored = match state.store().get(&key).await? {
            Some(e) => e.value,
            None => match state.store().put_if(&key, configured.clone().into_bytes(), 0).await? {
                Some(_) => configured.clone().into_bytes(),
                None => state.store().get(&key).await?.map(|e| e.value).unwrap_or_default(),
            },
        };
        let stored = String::from_utf8_lossy(&stored).into_owned();
        if stored == configured {
            state.set_pool_conflict(None);
            return Ok(());
        }
        let first = state.pool_conflict().is_none();
        state.set_pool_conflict(Some(PoolConflict { configured, stored, key }));
        let error = state.pool_conflict().expect("set above").to_string();
        if first {
            tracing::error!("{error}");
        }
        Err(StoreError(error))
    }

    /// The node key goes in first, and only then does the node compare its state with the
    /// store: other nodes take a dead node's addresses only while its node key is absent
    /// (`put_if_absent`), so any address taken from this node was taken before the key was
    /// written, and so before `reconcile` reads the records. (The other way round, a reclaim
    /// planned while the node was away could land just after `reconcile`, and the node would
    /// keep addresses the store gave back to the pool.)
    async fn register(&self, lease: i64, fenced: &mut Vec<Fenced>) -> Result<(), StoreError> {
        let (state, keys) = (&self.state, self.state.keys());
        self.check_pool().await?;
        let node = NodeRecord { lease, since: now_secs() };
        let value = serde_json::to_vec(&node).expect("serialisable");
        state.store().put_leased(&keys.node(state.node()), value, lease).await?;
        // The leader looks after members: this node's addresses go back to the pool if it dies.
        state.store().put(&keys.member(state.node()), Vec::new()).await?;
        self.reconcile(fenced).await?;
        state.store().delete(&keys.down(state.node())).await?;
        self.last_keep_alive.ran();
        self.registered.store(true, Ordering::Release);
        tracing::info!(node = %state.node(), lease, store = %state.store().describe(), "registered with the address store");
        Ok(())
    }

    /// Compares the local state with the store, reading only this node's records (its index
    /// and its local entries): adopts records that name this node (a claim written before a
    /// crash), takes back by CAS what was reclaimed while it was away and nobody took since (the
    /// record cooling, or sticky for the same pod, or gone), and gives up only what another node
    /// holds now.
    async fn reconcile(&self, fenced: &mut Vec<Fenced>) -> Result<(), StoreError> {
        let state = &self.state;
        let me = Some(state.node());
        let indexed = state.indexed(state.node()).await?;
        let local_ips: Vec<IpAddr> = state.local().entries.keys().copied().collect();
        let mut ips: Vec<IpAddr> = indexed.clone();
        ips.extend(local_ips.iter().filter(|ip| !indexed.contains(ip)));
        let records = state.records_of(ips).await?;
        // Local entries the store no longer gives this node (their record written at least once).
        let away: Vec<(IpAddr, LocalEntry)> = {
            let mut local = state.local();
            for (ip, (record, version)) in records.iter().filter(|(_, (r, _))| r.node() == me) {
                match local.entries.get_mut(ip) {
                    Some(entry) => entry.version = *version,
                    None => {
                        let entry = adopted(&local.entries, state.node(), *ip, record, *version);
                        local.entries.insert(*ip, entry);
                    }
                }
            }
            local
                .entries
                .iter()
                .filter(|(ip, e)| e.version != 0 && records.get(*ip).is_none_or(|(r, _)| r.node() != me))
                .map(|(ip, e)| (*ip, e.clone()))
                .collect()
        };
        for (ip, entry) in away {
            let current = records.get(&ip);
            if !entry.released() && unclaimed(current, &entry) {
                let expected = current.map_or(0, |(_, version)| *version);
                state.index(ip).await?;
                if let Some(version) =
                    state.store().put_if(&state.keys().ip(ip), entry.record.encode(), expected).await?
                {
                    tracing::warn!(%ip, was = %current.map_or("free".into(), |(r, _)| describe(r)),
                        "address reclaimed while this node was cut off and taken by nobody since: taken back");
                    if let Some(e) = state.local().entries.get_mut(&ip) {
                        e.version = version;
                    }
                    continue;
                }
                // Changed meanwhile: read again. This node's own ADD may have claimed it since
                // the records were read (the entry is then that claim's): kept.
                let now = state.records_of([ip]).await?;
                if let Some((_, version)) = now.get(&ip).filter(|(r, _)| r.node() == me) {
                    if let Some(e) = state.local().entries.get_mut(&ip) {
                        e.version = *version;
                    }
                    continue;
                }
                fence(state, ip, now.get(&ip), fenced);
            } else {
                fence(state, ip, current, fenced);
            }
            state.unindex(ip).await?;
        }
        // Addresses written before the index existed (an upgrade) join it.
        let unindexed: Vec<IpAddr> = {
            let local = state.local();
            let unindexed =
                local.entries.iter().filter(|(ip, e)| e.version != 0 && !e.released() && !indexed.contains(ip));
            unindexed.map(|(ip, _)| *ip).collect()
        };
        for ip in unindexed {
            state.index(ip).await?;
        }
        state.save_in_round().await
    }

    /// Writes every pending change.
    async fn sync(&self, fenced: &mut Vec<Fenced>) -> Result<(), StoreError> {
        let dirty = self.state.pending(None).await?;
        let mut result = Ok(());
        for (ip, entry) in &dirty {
            result = self.state.sync_entry(*ip, entry, fenced).await;
            if result.is_err() {
                break;
            }
        }
        // One save for the round (the versions learnt, the entries released).
        if !dirty.is_empty() {
            drop(self.state.save().await);
        }
        result
    }
}

/// The local entry for a record the store gives this node and the local state does not know.
/// A claim for an ADD whose owner holds another address of the family was an ADD refused (its
/// reply lost) and retried: nobody has this one, and it joins the warm pool.
fn adopted(
    entries: &BTreeMap<IpAddr, LocalEntry>,
    node: &str,
    ip: IpAddr,
    record: &AddressRecord,
    version: i64,
) -> LocalEntry {
    let refused_add = record.owner().is_some_and(|owner| {
        entries.iter().any(|(held, e)| e.owner() == Some(owner) && Family::of(held) == Family::of(&ip))
    });
    if refused_add {
        tracing::info!(%ip, "adopted a claim of a refused ADD into the warm pool");
        let warm = AddressRecord::Warm { node: node.to_string(), since: now_secs() };
        LocalEntry { record: warm, version, dirty: true, netns: None }
    } else {
        tracing::info!(%ip, state = record.state_name(), "adopted an address the store gives this node");
        LocalEntry { record: record.clone(), version, dirty: false, netns: None }
    }
}

/// Was the address left alone since this node lost it: freed by the reclaim (cooling, or sticky
/// for the pod that has it here) or gone, and not handed to anyone?
fn unclaimed(current: Option<&(AddressRecord, i64)>, entry: &LocalEntry) -> bool {
    match current.map(|(r, _)| r) {
        None | Some(AddressRecord::Cooling { .. }) => true,
        Some(AddressRecord::Sticky { pod, .. }) => {
            matches!(&entry.record, AddressRecord::Assigned { pod: Some(ours), .. } if ours == pod)
        }
        Some(_) => false,
    }
}

/// Drops a local entry the store gives someone else; its pod (if any) must be detached.
fn fence<S: ClusterStore>(
    state: &NodeState<S>,
    ip: IpAddr,
    current: Option<&(AddressRecord, i64)>,
    fenced: &mut Vec<Fenced>,
) {
    let entry = state.local().entries.remove(&ip);
    if let Some(owner) = entry.as_ref().and_then(LocalEntry::owner) {
        let now = current.map_or("free".to_string(), |(r, _)| describe(r));
        fenced.push(Fenced { ip, owner: owner.clone(), now });
    }
}

/// The pool as the store keeps it: `pools` and `exclude` as configured, each sorted (the order
/// does not change the pool).
fn pool_definition(pools: &[PoolPrefix], exclude: &[Excluded]) -> String {
    let sorted = |mut v: Vec<String>| {
        v.sort();
        v
    };
    let pools = sorted(pools.iter().map(ToString::to_string).collect());
    let exclude = sorted(exclude.iter().map(ToString::to_string).collect());
    serde_json::json!({ "pools": pools, "exclude": exclude }).to_string()
}
