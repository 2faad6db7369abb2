//! One node's side of the cluster IPAM.
//!
//! The node keeps what it holds in a local state file (`<state_dir>/ipam.json`, replaced
//! atomically): its warm pool, its pods' addresses, and what it still has to tell the store.
//! ADD and DEL change only that file, so they take no store round trip and keep working while
//! the store is unreachable; [`NodeIpam::tick`] then brings the store in line, one
//! compare-and-swap per address, and refills the warm pool.
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

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use vswitch_api::api::{
    AddressView, ApiError, AssignSpec, AssignmentView, Attachment, CoolingView, ErrorCode, IpamNodeView, IpamView,
    LocalIpamView, PodRef, StickyView,
};

use super::record::{now_secs, AddressRecord, Keys, NodeRecord};
use super::store::{ClusterStore, StoreError};
use super::IpamSettings;

/// The local state file's format.
const FORMAT: u32 = 1;
/// An assigned address whose sandbox is gone and that no port uses is released after this long
/// (a DEL that could not reach the daemon); younger ones may be an ADD in progress.
const ORPHAN_AFTER_SECS: u64 = 30;

#[derive(Debug, Default, Serialize, Deserialize)]
struct Local {
    format: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    lease: Option<i64>,
    entries: BTreeMap<IpAddr, LocalEntry>,
}

/// One address this node has to do with: `record` is what the store should say (Warm or
/// Assigned to this node, or, once released, Cooling or Sticky until the store has it).
#[derive(Debug, Clone, Serialize, Deserialize)]
struct LocalEntry {
    record: AddressRecord,
    /// The store version this node last wrote or saw as its own (0: not in the store yet).
    version: i64,
    dirty: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    netns: Option<PathBuf>,
}

impl LocalEntry {
    fn released(&self) -> bool {
        matches!(self.record, AddressRecord::Cooling { .. } | AddressRecord::Sticky { .. })
    }

    fn owner(&self) -> Option<&Attachment> {
        match &self.record {
            AddressRecord::Assigned { owner, .. } => Some(owner),
            _ => None,
        }
    }
}

/// An address this node lost while cut off: its port must go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fenced {
    pub ip: IpAddr,
    pub owner: Attachment,
    /// What the store says now.
    pub now: String,
}

#[derive(Debug, Default)]
pub struct IpamStats {
    pub store_reachable: AtomicBool,
    pub store_errors: AtomicU64,
    pub fenced: AtomicU64,
    pub assigned_from_warm: AtomicU64,
    pub assigned_from_store: AtomicU64,
    pub refused_unavailable: AtomicU64,
    pub reclaimed: AtomicU64,
    /// Cluster-wide counts by state, from the last scan.
    pub cluster: Mutex<BTreeMap<&'static str, u64>>,
}

#[derive(Debug, Clone)]
pub struct IpamMetrics {
    pub local: LocalIpamView,
    /// This node's pods' addresses.
    pub addresses: Vec<(IpAddr, Option<PodRef>)>,
    /// Cluster-wide addresses by state, from the last scan.
    pub cluster: BTreeMap<&'static str, u64>,
    pub store_up: bool,
    pub store_errors: u64,
    pub reclaimed: u64,
    pub assigned_from_warm: u64,
    pub assigned_from_store: u64,
    pub refused_unavailable: u64,
}

#[derive(Debug)]
pub struct NodeIpam<S: ClusterStore> {
    settings: IpamSettings,
    keys: Keys,
    store: S,
    local: Mutex<Local>,
    path: PathBuf,
    /// Serialises saves so an older snapshot never replaces a newer one.
    save_lock: Mutex<()>,
    /// Holds a lease that the store confirmed in this process (reconciled since).
    registered: AtomicBool,
    /// Addresses whose claim or give-back may or may not have reached the store: the request
    /// failed without an answer (a timeout, a member lost mid-request). Looked up again before
    /// the next refill, so a claim that went through is not leaked, and a give-back that went
    /// through leaves nothing behind in the warm pool. (Across a restart, `reconcile` does it.)
    unsure: Mutex<HashSet<IpAddr>>,
    ticks: AtomicU64,
    /// When the lease was last renewed and dead nodes last looked for: a round run early (after
    /// an ADD) does only the work that cannot wait.
    last_keep_alive: Mutex<Option<Instant>>,
    last_reclaim: Mutex<Option<Instant>>,
    /// Wakes the upkeep task early: an ADD took from the warm pool, a DEL released.
    kick: tokio::sync::Notify,
    pub stats: IpamStats,
}

fn unavailable(what: &str, e: &StoreError) -> ApiError {
    ApiError::new(ErrorCode::Unavailable, format!("{what}: the address store is unreachable ({e}); retry later"))
}

fn io_error(path: &Path, e: impl std::fmt::Display) -> ApiError {
    ApiError::new(ErrorCode::Unavailable, format!("IPAM state {}: {e}", path.display()))
}

impl<S: ClusterStore> NodeIpam<S> {
    /// Loads the node's state (a corrupt file is an error: it may be all that knows which pods
    /// hold which addresses). Does not touch the store: the node starts while it is down.
    pub fn open(settings: IpamSettings, store: S, state_dir: &Path) -> Result<NodeIpam<S>, String> {
        let path = state_dir.join("ipam.json");
        let local = match std::fs::read(&path) {
            Ok(bytes) => {
                let local: Local =
                    serde_json::from_slice(&bytes).map_err(|e| format!("{} is corrupt: {e}", path.display()))?;
                if local.format > FORMAT {
                    return Err(format!(
                        "{} has format {}, newer than this vswitchd knows ({FORMAT})",
                        path.display(),
                        local.format
                    ));
                }
                local
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Local { format: FORMAT, ..Local::default() },
            Err(e) => return Err(format!("{}: {e}", path.display())),
        };
        Ok(NodeIpam {
            keys: Keys::new(&settings.prefix),
            settings,
            store,
            local: Mutex::new(local),
            path,
            save_lock: Mutex::new(()),
            registered: AtomicBool::new(false),
            unsure: Mutex::new(HashSet::new()),
            ticks: AtomicU64::new(0),
            last_keep_alive: Mutex::new(None),
            last_reclaim: Mutex::new(None),
            kick: tokio::sync::Notify::new(),
            stats: IpamStats::default(),
        })
    }

    fn local(&self) -> MutexGuard<'_, Local> {
        self.local.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Writes the local state (temporary file, fsync, rename): off the async runtime.
    async fn save(self: &Arc<Self>) -> Result<(), ApiError> {
        let this = self.clone();
        tokio::task::spawn_blocking(move || this.save_now())
            .await
            .map_err(|e| io_error(&self.path, e))?
            .map_err(|e| io_error(&self.path, e))
    }

    fn save_now(&self) -> std::io::Result<()> {
        let _order = self.save_lock.lock().unwrap_or_else(|p| p.into_inner());
        let bytes = serde_json::to_vec(&*self.local()).expect("serialisable");
        vswitch_api::file::write_atomic(&self.path, &bytes)
    }

    fn is_sticky(&self, pod: Option<&PodRef>) -> bool {
        pod.is_some_and(|p| self.settings.is_sticky(p))
    }

    /// The attachment's address, if it has one here.
    pub fn lookup(&self, owner: &Attachment) -> Option<IpAddr> {
        self.local().entries.iter().find(|(_, e)| e.owner() == Some(owner)).map(|(ip, _)| *ip)
    }

    /// The attachments that hold an address of this node.
    fn owners(&self) -> Vec<Attachment> {
        self.local().entries.values().filter_map(|e| e.owner().cloned()).collect()
    }

    /// The address for an ADD. `in_use`: addresses ports of this node hold (never handed out).
    pub async fn assign(
        self: &Arc<Self>,
        spec: &AssignSpec,
        in_use: &HashSet<IpAddr>,
    ) -> Result<AddressView, ApiError> {
        if let Some(ip) = self.lookup(&spec.owner) {
            if spec.ips.first().is_some_and(|wanted| *wanted != ip) {
                return Err(ApiError::new(
                    ErrorCode::Conflict,
                    format!("{} already has {ip}; it cannot also take {}", spec.owner.container_id, spec.ips[0]),
                ));
            }
            return Ok(AddressView { ips: vec![ip], new: false });
        }
        let view = if let Some(ip) = spec.ips.first().copied() {
            self.assign_specific(spec, ip, in_use).await?
        } else if self.is_sticky(spec.pod.as_ref()) {
            self.assign_sticky(spec, in_use).await?
        } else {
            self.assign_warm(spec, in_use).await?
        };
        tracing::info!(ip = %view.ips[0], owner = %spec.owner.container_id, pod = ?spec.pod, "address assigned");
        Ok(view)
    }

    fn assigned_record(&self, spec: &AssignSpec) -> AddressRecord {
        AddressRecord::Assigned {
            node: self.settings.node.clone(),
            owner: spec.owner.clone(),
            pod: spec.pod.clone(),
            since: now_secs(),
        }
    }

    /// Takes a warm address for `spec` in the local state (no store round trip).
    fn take_warm(&self, spec: &AssignSpec, in_use: &HashSet<IpAddr>) -> Option<IpAddr> {
        let mut local = self.local();
        let ip = local
            .entries
            .iter()
            .find(|(ip, e)| ip.is_ipv4() && matches!(e.record, AddressRecord::Warm { .. }) && !in_use.contains(*ip))
            .map(|(ip, _)| *ip)?;
        let entry = local.entries.get_mut(&ip).expect("found above");
        entry.record = self.assigned_record(spec);
        entry.dirty = true;
        entry.netns = Some(spec.netns.clone());
        Some(ip)
    }

    async fn assign_warm(
        self: &Arc<Self>,
        spec: &AssignSpec,
        in_use: &HashSet<IpAddr>,
    ) -> Result<AddressView, ApiError> {
        if let Some(ip) = self.take_warm(spec, in_use) {
            self.save().await?;
            self.stats.assigned_from_warm.fetch_add(1, Ordering::Relaxed);
            // Refill (and tell the store) now rather than at the next round.
            self.kick.notify_one();
            return Ok(AddressView { ips: vec![ip], new: true });
        }
        // The warm pool is empty (ADDs faster than it refills): claim one for this ADD alone,
        // straight as assigned, and have the pool refilled behind it.
        self.kick.notify_one();
        let record = self.assigned_record(spec);
        match self.claim(1, &record, in_use, Some(spec.netns.clone())).await {
            Ok(won) => match won.first() {
                Some(&(ip, _)) => {
                    self.save().await?;
                    self.stats.assigned_from_store.fetch_add(1, Ordering::Relaxed);
                    Ok(AddressView { ips: vec![ip], new: true })
                }
                None => Err(ApiError::new(
                    ErrorCode::Exhausted,
                    format!("no free address in the pool {}", self.settings.pools.join(", ")),
                )),
            },
            Err(e) => {
                self.stats.refused_unavailable.fetch_add(1, Ordering::Relaxed);
                Err(unavailable("the warm pool is empty", &e))
            }
        }
    }

    /// Writes one entry to the store now (sticky pods and specific addresses cannot wait).
    async fn sync_now(self: &Arc<Self>, ip: IpAddr) -> Result<(), StoreError> {
        let mut fenced = Vec::new();
        let synced = self.sync_entry(ip, &mut fenced).await;
        drop(self.save().await);
        synced?;
        if fenced.is_empty() && self.local().entries.get(&ip).is_some_and(|e| !e.dirty) {
            Ok(())
        } else {
            Err(StoreError(format!("{ip} changed owner in the store")))
        }
    }

    /// A sticky pod's address: the one it kept (from any node), or a new one recorded as its own.
    async fn assign_sticky(
        self: &Arc<Self>,
        spec: &AssignSpec,
        in_use: &HashSet<IpAddr>,
    ) -> Result<AddressView, ApiError> {
        let pod = spec.pod.clone().expect("sticky pods have a name");
        let index = self.store.get(&self.keys.sticky(&pod)).await.map_err(|e| unavailable("sticky address", &e))?;
        let kept = index.and_then(|e| std::str::from_utf8(&e.value).ok()?.parse::<IpAddr>().ok());
        if let Some(ip) = kept {
            let key = self.keys.ip(ip);
            let current = self.store.get(&key).await.map_err(|e| unavailable("sticky address", &e))?;
            match current.as_ref().and_then(|e| Some((AddressRecord::decode(&e.value)?, e.version))) {
                Some((AddressRecord::Sticky { pod: held, .. }, version)) if held == pod => {
                    return match self.take_from_store(spec, ip, version).await {
                        Ok(Some(view)) => {
                            tracing::info!(%ip, %pod, "sticky address taken over");
                            Ok(view)
                        }
                        Ok(None) => Err(ApiError::new(
                            ErrorCode::Unavailable,
                            format!("{pod}'s address {ip} changed while taking it; retry"),
                        )),
                        Err(e) => Err(e),
                    };
                }
                Some((AddressRecord::Assigned { pod: Some(held), node, .. }, _)) if held == pod => {
                    return Err(ApiError::new(
                        ErrorCode::Unavailable,
                        format!("{pod} still holds {ip} on {node} (its DEL has not happened yet); retry"),
                    ))
                }
                // The pod's hold ended and the address went to someone else: a new one.
                _ => {}
            }
        }
        let view = self.assign_warm(spec, in_use).await?;
        if let Err(e) = self.sync_now(view.ips[0]).await {
            self.undo_assign(view.ips[0]).await;
            return Err(unavailable("sticky address", &e));
        }
        if let Err(e) = self.store.put(&self.keys.sticky(&pod), view.ips[0].to_string().into_bytes()).await {
            // The record names the pod; the index is written again when the pod is released.
            tracing::warn!(ip = %view.ips[0], %pod, error = %e, "sticky index not written yet");
        }
        Ok(view)
    }

    /// Back to the warm pool (an ADD that could not finish).
    async fn undo_assign(self: &Arc<Self>, ip: IpAddr) {
        if let Some(entry) = self.local().entries.get_mut(&ip) {
            entry.record = AddressRecord::Warm { node: self.settings.node.clone(), since: now_secs() };
            entry.netns = None;
            entry.dirty = true;
        }
        let _ = self.save().await;
    }

    /// A specific address (static IP): from the warm pool, or claimed in the store right away.
    /// A released address may be asked for by name before its reuse delay is over.
    async fn assign_specific(
        self: &Arc<Self>,
        spec: &AssignSpec,
        ip: IpAddr,
        in_use: &HashSet<IpAddr>,
    ) -> Result<AddressView, ApiError> {
        if !self.settings.pool.contains(ip) {
            return Err(ApiError::new(ErrorCode::Invalid, format!("{ip} is not in the pool")));
        }
        let taken = |by: &str| ApiError::new(ErrorCode::Conflict, format!("{ip} is in use by {by}"));
        if in_use.contains(&ip) {
            return Err(taken("a port of this node"));
        }
        {
            let mut local = self.local();
            match local.entries.get_mut(&ip) {
                Some(entry) if matches!(entry.record, AddressRecord::Warm { .. }) => {
                    entry.record = self.assigned_record(spec);
                    entry.dirty = true;
                    entry.netns = Some(spec.netns.clone());
                }
                Some(entry) => return Err(taken(&format!("{:?}", entry.owner().map(|o| &o.container_id)))),
                None => {}
            }
        }
        if self.local().entries.contains_key(&ip) {
            self.save().await?;
            return Ok(AddressView { ips: vec![ip], new: true });
        }
        let key = self.keys.ip(ip);
        let current = self.store.get(&key).await.map_err(|e| unavailable("static address", &e))?;
        let version = match current.as_ref().map(|e| (AddressRecord::decode(&e.value), e.version)) {
            None => 0,
            Some((Some(AddressRecord::Cooling { .. }), version)) => version,
            Some((Some(AddressRecord::Sticky { pod, .. }), version)) if Some(&pod) == spec.pod.as_ref() => version,
            Some((Some(record), _)) => {
                return Err(taken(&format!("{} ({})", record.node().unwrap_or("-"), record.state_name())))
            }
            Some((None, _)) => return Err(taken("an unreadable record")),
        };
        self.take_from_store(spec, ip, version).await?.ok_or_else(|| taken("another node (it changed while asking)"))
    }

    /// Assigns `ip` to `spec` by a CAS from the record's `version`, then records it locally.
    /// `Ok(None)`: the record changed meanwhile.
    async fn take_from_store(
        self: &Arc<Self>,
        spec: &AssignSpec,
        ip: IpAddr,
        version: i64,
    ) -> Result<Option<AddressView>, ApiError> {
        let record = self.assigned_record(spec);
        let written = self.store.put_if(&self.keys.ip(ip), record.encode(), version).await;
        let version = match written {
            Ok(Some(version)) => version,
            Ok(None) => return Ok(None),
            Err(e) => {
                // It may be this node's now: looked up again, and then found by the retried ADD.
                self.unsure_about(ip);
                return Err(unavailable("taking the address", &e));
            }
        };
        let entry = LocalEntry { record, version, dirty: false, netns: Some(spec.netns.clone()) };
        self.local().entries.insert(ip, entry);
        self.save().await?;
        self.stats.assigned_from_store.fetch_add(1, Ordering::Relaxed);
        Ok(Some(AddressView { ips: vec![ip], new: true }))
    }

    /// Gives the attachment's address back: cooling (free after the reuse delay) or, for a
    /// sticky pod, held for it. The store learns it on the next tick.
    pub async fn release(self: &Arc<Self>, owner: &Attachment) -> Result<Option<IpAddr>, ApiError> {
        let released = {
            let mut local = self.local();
            let Some((ip, entry)) = local.entries.iter_mut().find(|(_, e)| e.owner() == Some(owner)) else {
                return Ok(None);
            };
            let AddressRecord::Assigned { pod, .. } = &entry.record else { unreachable!("owner() matched") };
            let last_node = self.settings.node.clone();
            entry.record = match pod.clone() {
                Some(pod) if self.settings.is_sticky(&pod) => {
                    AddressRecord::Sticky { pod, until: now_secs() + self.settings.sticky_hold.as_secs(), last_node }
                }
                _ => AddressRecord::Cooling { released_at: now_secs(), last_node },
            };
            entry.dirty = true;
            *ip
        };
        self.save().await?;
        self.kick.notify_one();
        tracing::info!(ip = %released, owner = %owner.container_id, "address released");
        Ok(Some(released))
    }

    /// CNI GC: releases every address held by an attachment not in `keep`.
    pub async fn gc(self: &Arc<Self>, keep: &[Attachment]) -> Result<Vec<IpAddr>, ApiError> {
        let stale: Vec<Attachment> = self.owners().into_iter().filter(|o| !keep.contains(o)).collect();
        let mut released = Vec::new();
        for owner in stale {
            released.extend(self.release(&owner).await?);
        }
        Ok(released)
    }

    /// Records addresses that ports of this node hold but the local state does not know (its
    /// file was lost): they are this node's until the store says otherwise.
    pub async fn adopt_ports(self: &Arc<Self>, ports: &[(IpAddr, Attachment, Option<PodRef>, PathBuf)]) {
        let mut changed = false;
        {
            let mut local = self.local();
            for (ip, owner, pod, netns) in ports {
                if !self.settings.pool.contains(*ip) || local.entries.contains_key(ip) {
                    continue;
                }
                let record = AddressRecord::Assigned {
                    node: self.settings.node.clone(),
                    owner: owner.clone(),
                    pod: pod.clone(),
                    since: now_secs(),
                };
                tracing::warn!(%ip, owner = %owner.container_id, "a port holds an address the IPAM state did not know: adopted");
                local.entries.insert(*ip, LocalEntry { record, version: 0, dirty: true, netns: Some(netns.clone()) });
                changed = true;
            }
        }
        if changed {
            let _ = self.save().await;
        }
    }

    /// One round of upkeep, every second: keep the lease, write pending changes, refill the
    /// warm pool, reclaim dead nodes' addresses. Returns the addresses this node lost (their
    /// ports must be detached). `has_port` says whether an attachment still has a port.
    pub async fn tick(self: &Arc<Self>, has_port: impl Fn(&Attachment) -> bool) -> Vec<Fenced> {
        let mut fenced = Vec::new();
        let round = self.ticks.fetch_add(1, Ordering::Relaxed);
        let result = async {
            self.ensure_registered(&mut fenced).await?;
            self.sync(&mut fenced).await?;
            self.refill(self.settings.warm_target).await?;
            self.trim().await?;
            if due(&self.last_reclaim, RECLAIM_EVERY) {
                self.reclaim_dead().await?;
                *self.last_reclaim.lock().unwrap_or_else(|p| p.into_inner()) = Some(Instant::now());
            }
            Ok::<(), StoreError>(())
        }
        .await;
        match result {
            Ok(()) => {
                if !self.stats.store_reachable.swap(true, Ordering::Relaxed) {
                    tracing::info!(store = %self.store.describe(), "address store reachable");
                }
            }
            Err(e) => {
                self.stats.store_errors.fetch_add(1, Ordering::Relaxed);
                if self.stats.store_reachable.swap(false, Ordering::Relaxed) || round == 0 {
                    tracing::warn!(store = %self.store.describe(), error = %e, "address store unreachable: ADD uses the warm pool");
                }
            }
        }
        self.release_orphans(has_port).await;
        for f in &fenced {
            self.stats.fenced.fetch_add(1, Ordering::Relaxed);
            tracing::error!(ip = %f.ip, owner = %f.owner.container_id, store_says = %f.now,
                "address lost while this node was cut off: it belongs elsewhere now; detaching the pod");
        }
        fenced
    }

    /// Assigned addresses whose sandbox is gone and that no port uses (their DEL could not
    /// reach this daemon) are released.
    async fn release_orphans(self: &Arc<Self>, has_port: impl Fn(&Attachment) -> bool) {
        let now = now_secs();
        let orphans: Vec<Attachment> = {
            let local = self.local();
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
            let _ = self.release(&owner).await;
        }
    }

    /// Keeps the lease alive; without one (first start, or it expired while cut off), takes a
    /// new one and reconciles with the store before doing anything else.
    async fn ensure_registered(self: &Arc<Self>, fenced: &mut Vec<Fenced>) -> Result<(), StoreError> {
        let lease = self.local().lease;
        if self.registered.load(Ordering::Acquire) && !due(&self.last_keep_alive, self.settings.lease_ttl / 3) {
            return Ok(());
        }
        if let Some(lease) = lease {
            if self.store.keep_alive(lease).await? {
                *self.last_keep_alive.lock().unwrap_or_else(|p| p.into_inner()) = Some(Instant::now());
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
        let lease = self.store.grant_lease(self.settings.lease_ttl).await?;
        self.local().lease = Some(lease);
        self.save().await.map_err(|e| StoreError(e.message))?;
        self.register(lease, fenced).await
    }

    /// The node key goes in first, and only then does the node compare its state with the
    /// store: other nodes take a dead node's addresses only while its node key is absent
    /// (`put_if_absent`), so any address taken from this node was taken before the key was
    /// written, and so before `reconcile` reads the records. (The other way round, a reclaim
    /// planned while the node was away could land just after `reconcile`, and the node would
    /// keep addresses the store gave back to the pool.)
    async fn register(self: &Arc<Self>, lease: i64, fenced: &mut Vec<Fenced>) -> Result<(), StoreError> {
        let node = NodeRecord { lease, since: now_secs() };
        let value = serde_json::to_vec(&node).expect("serialisable");
        self.store.put_leased(&self.keys.node(&self.settings.node), value, lease).await?;
        self.reconcile(fenced).await?;
        self.store.delete(&self.keys.down(&self.settings.node)).await?;
        *self.last_keep_alive.lock().unwrap_or_else(|p| p.into_inner()) = Some(Instant::now());
        self.registered.store(true, Ordering::Release);
        tracing::info!(node = %self.settings.node, lease, store = %self.store.describe(), "registered with the address store");
        Ok(())
    }

    /// Compares the local state with the store: adopts records that name this node (a claim
    /// that was written before a crash), and drops what the store gave to someone else.
    async fn reconcile(self: &Arc<Self>, fenced: &mut Vec<Fenced>) -> Result<(), StoreError> {
        let records = self.records().await?;
        {
            let mut local = self.local();
            for (ip, (record, version)) in &records {
                if record.node() != Some(self.settings.node.as_str()) {
                    continue;
                }
                match local.entries.get_mut(ip) {
                    Some(entry) => entry.version = *version,
                    None => {
                        tracing::info!(%ip, state = record.state_name(), "adopted an address the store gives this node");
                        local.entries.insert(
                            *ip,
                            LocalEntry { record: record.clone(), version: *version, dirty: false, netns: None },
                        );
                    }
                }
            }
            let lost: Vec<IpAddr> = local
                .entries
                .iter()
                .filter(|(ip, e)| {
                    e.version != 0
                        && records.get(*ip).is_none_or(|(r, _)| r.node() != Some(self.settings.node.as_str()))
                })
                .map(|(ip, _)| *ip)
                .collect();
            for ip in lost {
                let entry = local.entries.remove(&ip).expect("listed above");
                let now = records.get(&ip).map_or("free".to_string(), |(r, _)| describe(r));
                if let Some(owner) = entry.owner() {
                    fenced.push(Fenced { ip, owner: owner.clone(), now });
                }
            }
        }
        self.save().await.map_err(|e| StoreError(e.message))
    }

    async fn records(&self) -> Result<HashMap<IpAddr, (AddressRecord, i64)>, StoreError> {
        let entries = self.store.list(&self.keys.ips()).await?;
        Ok(entries
            .into_iter()
            .filter_map(|e| Some((self.keys.ip_of(&e.key)?, (AddressRecord::decode(&e.value)?, e.version))))
            .collect())
    }

    /// Writes every pending change.
    async fn sync(self: &Arc<Self>, fenced: &mut Vec<Fenced>) -> Result<(), StoreError> {
        let dirty: Vec<IpAddr> = self.local().entries.iter().filter(|(_, e)| e.dirty).map(|(ip, _)| *ip).collect();
        let mut result = Ok(());
        for ip in &dirty {
            result = self.sync_entry(*ip, fenced).await;
            if result.is_err() {
                break;
            }
        }
        // One save for the round (the versions learnt, the entries released).
        if !dirty.is_empty() {
            drop(self.save().await);
        }
        result
    }

    /// Writes one pending change (the caller saves the local state).
    async fn sync_entry(self: &Arc<Self>, ip: IpAddr, fenced: &mut Vec<Fenced>) -> Result<(), StoreError> {
        let Some(entry) = self.local().entries.get(&ip).cloned().filter(|e| e.dirty) else { return Ok(()) };
        let key = self.keys.ip(ip);
        match self.store.put_if(&key, entry.record.encode(), entry.version).await? {
            Some(version) => {
                if let AddressRecord::Sticky { pod, .. } = &entry.record {
                    self.store.put(&self.keys.sticky(pod), ip.to_string().into_bytes()).await?;
                }
                let mut local = self.local();
                // Changed again meanwhile (a DEL right after the ADD): keep it dirty.
                let unchanged = local.entries.get(&ip).is_some_and(|e| e.record == entry.record);
                if unchanged && entry.released() {
                    local.entries.remove(&ip);
                } else if let Some(e) = local.entries.get_mut(&ip) {
                    e.version = version;
                    e.dirty = !unchanged;
                }
            }
            None => {
                let current = self.store.get(&key).await?;
                let record = current.as_ref().and_then(|c| Some((AddressRecord::decode(&c.value)?, c.version)));
                let mut local = self.local();
                match record {
                    // Ours: this node wrote it before a crash lost the version; write again.
                    Some((r, version)) if r.node() == Some(self.settings.node.as_str()) => {
                        if let Some(e) = local.entries.get_mut(&ip) {
                            e.version = version;
                        }
                    }
                    other => {
                        // (Gone already when another sync of the same address got here first.)
                        let lost = local.entries.remove(&ip);
                        if let Some(owner) = lost.as_ref().and_then(LocalEntry::owner) {
                            let now = other.map_or("free".to_string(), |(r, _)| describe(&r));
                            fenced.push(Fenced { ip, owner: owner.clone(), now });
                        }
                    }
                }
            }
        }
        Ok(())
    }

    fn unsure_about(&self, ip: IpAddr) {
        self.unsure.lock().unwrap_or_else(|p| p.into_inner()).insert(ip);
    }

    /// Looks up the addresses whose last write went unanswered: one the store gives this node
    /// and that it does not know is taken in (warm, or assigned as the store says); anything
    /// else is not this node's.
    async fn resolve_unsure(self: &Arc<Self>) -> Result<(), StoreError> {
        let unsure: Vec<IpAddr> = self.unsure.lock().unwrap_or_else(|p| p.into_inner()).iter().copied().collect();
        if unsure.is_empty() {
            return Ok(());
        }
        let mut adopted = false;
        for ip in unsure {
            let current = self.store.get(&self.keys.ip(ip)).await?;
            let record = current.and_then(|e| Some((AddressRecord::decode(&e.value)?, e.version)));
            if let Some((record, version)) = record.filter(|(r, _)| r.node() == Some(self.settings.node.as_str())) {
                let mut local = self.local();
                if let std::collections::btree_map::Entry::Vacant(slot) = local.entries.entry(ip) {
                    tracing::info!(%ip, state = record.state_name(), "a write whose reply was lost went through: the address is this node's");
                    slot.insert(LocalEntry { record, version, dirty: false, netns: None });
                    adopted = true;
                }
            }
            self.unsure.lock().unwrap_or_else(|p| p.into_inner()).remove(&ip);
        }
        if adopted {
            self.save().await.map_err(|e| StoreError(e.message))?;
        }
        Ok(())
    }

    /// Claims up to `target - warm` addresses for the warm pool; returns how many are warm now.
    async fn refill(self: &Arc<Self>, target: usize) -> Result<usize, StoreError> {
        self.resolve_unsure().await?;
        let warm = self.warm_count();
        if warm >= target {
            return Ok(warm);
        }
        let record = AddressRecord::Warm { node: self.settings.node.clone(), since: now_secs() };
        let won = self.claim(target - warm, &record, &HashSet::new(), None).await?;
        if !won.is_empty() {
            self.save().await.map_err(|e| StoreError(e.message))?;
        }
        Ok(warm + won.len())
    }

    /// Claims up to `count` free addresses in the store as `record`, one CAS each (from absent,
    /// or from a record whose reuse delay is over), from a random place in the pool so that
    /// nodes rarely race for the same one. Skips what this node knows and `also_skip`. Each
    /// address won is recorded locally at once (with `netns`); the caller saves. A write whose
    /// reply was lost is looked up again later (`resolve_unsure`).
    async fn claim(
        self: &Arc<Self>,
        count: usize,
        record: &AddressRecord,
        also_skip: &HashSet<IpAddr>,
        netns: Option<PathBuf>,
    ) -> Result<Vec<(IpAddr, i64)>, StoreError> {
        let records = self.records().await?;
        let now = now_secs();
        let reuse = self.settings.reuse_delay.as_secs();
        let known: HashSet<IpAddr> = self.local().entries.keys().copied().collect();
        let start = rand::random::<u64>() as u128;
        let mut won = Vec::new();
        let mut tried = 0;
        for ip in self.settings.pool.candidates(false, start) {
            if won.len() >= count || tried > 64 + 4 * count {
                break;
            }
            if known.contains(&ip) || also_skip.contains(&ip) {
                continue;
            }
            let expected = match records.get(&ip) {
                None => 0,
                Some((existing, version)) if existing.claimable(now, reuse) => *version,
                Some(_) => continue,
            };
            tried += 1;
            match self.store.put_if(&self.keys.ip(ip), record.encode(), expected).await {
                Ok(Some(version)) => {
                    // Recorded at once (a later failure must not lose it); adopted meanwhile by
                    // `resolve_unsure` it is the same record: that entry stays.
                    let entry = LocalEntry { record: record.clone(), version, dirty: false, netns: netns.clone() };
                    self.local().entries.entry(ip).or_insert(entry);
                    won.push((ip, version));
                }
                Ok(None) => {}
                Err(e) => {
                    self.unsure_about(ip);
                    if !won.is_empty() {
                        let _ = self.save().await;
                    }
                    return Err(e);
                }
            }
        }
        Ok(won)
    }

    fn warm_count(&self) -> usize {
        self.local().entries.values().filter(|e| matches!(e.record, AddressRecord::Warm { .. }) && !e.dirty).count()
    }

    /// Gives warm addresses above `warm_max` back (deleting their records: no pod used them).
    /// Each leaves the warm pool before its record is deleted, so no ADD can take it meanwhile
    /// (and nothing else of this node touches a record naming it that it does not know); a
    /// delete that went unanswered or found the record changed is looked up again later.
    async fn trim(self: &Arc<Self>) -> Result<(), StoreError> {
        let excess: Vec<(IpAddr, i64)> = {
            let mut local = self.local();
            let warm: Vec<IpAddr> = local
                .entries
                .iter()
                .filter(|(_, e)| matches!(e.record, AddressRecord::Warm { .. }) && !e.dirty)
                .map(|(ip, _)| *ip)
                .collect();
            warm.into_iter()
                .skip(self.settings.warm_max)
                .filter_map(|ip| Some((ip, local.entries.remove(&ip)?.version)))
                .collect()
        };
        if excess.is_empty() {
            return Ok(());
        }
        // Saved without them first: after a crash from here on, `reconcile` adopts what is left.
        let mut result = self.save().await.map_err(|e| StoreError(e.message));
        for (ip, version) in excess {
            if result.is_err() {
                self.unsure_about(ip);
                continue;
            }
            match self.store.delete_if(&self.keys.ip(ip), version).await {
                Ok(true) => {}
                Ok(false) => self.unsure_about(ip),
                Err(e) => {
                    self.unsure_about(ip);
                    result = Err(e);
                }
            }
        }
        result
    }

    /// Nodes that hold addresses but no lease: marked down, and after the quarantine their
    /// addresses become cooling (sticky pods' addresses: sticky). Any live node may do this;
    /// the CAS makes it happen once.
    async fn reclaim_dead(self: &Arc<Self>) -> Result<(), StoreError> {
        let live = self.live_nodes().await?;
        let downs = self.down_marks().await?;
        let records = self.records().await?;
        let mut counts: BTreeMap<&'static str, u64> = BTreeMap::new();
        for (record, _) in records.values() {
            *counts.entry(record.state_name()).or_default() += 1;
        }
        *self.stats.cluster.lock().unwrap_or_else(|p| p.into_inner()) = counts;
        let holders: HashSet<String> = records.values().filter_map(|(r, _)| r.node().map(str::to_string)).collect();
        let now = now_secs();
        for node in holders.iter().filter(|n| !live.contains(*n) && **n != self.settings.node) {
            match downs.get(node) {
                None => {
                    tracing::warn!(%node, quarantine_s = self.settings.quarantine.as_secs(), "node has addresses but no lease: quarantined");
                    self.store.put(&self.keys.down(node), now.to_string().into_bytes()).await?;
                }
                Some(since) if now >= since + self.settings.quarantine.as_secs() => {
                    let mut n = 0;
                    for (ip, (record, version)) in records.iter().filter(|(_, (r, _))| r.node() == Some(node.as_str()))
                    {
                        let last_node = node.clone();
                        let next = match record {
                            AddressRecord::Assigned { pod: Some(pod), .. } if self.settings.is_sticky(pod) => {
                                AddressRecord::Sticky {
                                    pod: pod.clone(),
                                    until: now + self.settings.sticky_hold.as_secs(),
                                    last_node,
                                }
                            }
                            _ => AddressRecord::Cooling { released_at: now, last_node },
                        };
                        // Only while the node is still without a lease (it may have come back
                        // since `live` was read).
                        let key = self.keys.ip(*ip);
                        let node_key = self.keys.node(node);
                        if self.store.put_if_absent(&key, next.encode(), *version, &node_key).await?.is_some() {
                            n += 1;
                            if let AddressRecord::Sticky { pod, .. } = &next {
                                self.store.put(&self.keys.sticky(pod), ip.to_string().into_bytes()).await?;
                            }
                        }
                    }
                    self.stats.reclaimed.fetch_add(n, Ordering::Relaxed);
                    tracing::warn!(%node, addresses = n, "reclaimed the addresses of a node whose lease expired");
                    self.store.delete(&self.keys.down(node)).await?;
                }
                Some(_) => {}
            }
        }
        for node in downs.keys().filter(|n| live.contains(*n) || !holders.contains(*n)) {
            self.store.delete(&self.keys.down(node)).await?;
        }
        Ok(())
    }

    async fn live_nodes(&self) -> Result<HashSet<String>, StoreError> {
        let prefix = self.keys.nodes();
        Ok(self
            .store
            .list(&prefix)
            .await?
            .into_iter()
            .filter_map(|e| Some(e.key.strip_prefix(&prefix)?.to_string()))
            .collect())
    }

    async fn down_marks(&self) -> Result<HashMap<String, u64>, StoreError> {
        let prefix = self.keys.downs();
        Ok(self
            .store
            .list(&prefix)
            .await?
            .into_iter()
            .filter_map(|e| {
                let since = std::str::from_utf8(&e.value).ok()?.parse().ok()?;
                Some((e.key.strip_prefix(&prefix)?.to_string(), since))
            })
            .collect())
    }

    /// The figures `/metrics` shows.
    pub fn metrics(&self) -> IpamMetrics {
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let addresses = {
            let local = self.local();
            local
                .entries
                .iter()
                .filter_map(|(ip, e)| match &e.record {
                    AddressRecord::Assigned { pod, .. } => Some((*ip, pod.clone())),
                    _ => None,
                })
                .collect()
        };
        IpamMetrics {
            local: self.local_view(),
            addresses,
            cluster: self.stats.cluster.lock().unwrap_or_else(|p| p.into_inner()).clone(),
            store_up: self.stats.store_reachable.load(Ordering::Relaxed),
            store_errors: load(&self.stats.store_errors),
            reclaimed: load(&self.stats.reclaimed),
            assigned_from_warm: load(&self.stats.assigned_from_warm),
            assigned_from_store: load(&self.stats.assigned_from_store),
            refused_unavailable: load(&self.stats.refused_unavailable),
        }
    }

    pub fn local_view(&self) -> LocalIpamView {
        let local = self.local();
        let count = |f: &dyn Fn(&LocalEntry) -> bool| local.entries.values().filter(|e| f(e)).count() as u64;
        LocalIpamView {
            warm: count(&|e| matches!(e.record, AddressRecord::Warm { .. })),
            warm_target: self.settings.warm_target as u64,
            assigned: count(&|e| matches!(e.record, AddressRecord::Assigned { .. })),
            pending_sync: count(&|e| e.dirty),
            fenced_total: self.stats.fenced.load(Ordering::Relaxed),
        }
    }

    /// The cluster's allocations from the store (this node's own state only when the store is
    /// unreachable).
    pub async fn view(&self) -> IpamView {
        let pool_size = self.settings.pool.candidates(false, 0).count() as u64;
        let mut view = IpamView {
            node: self.settings.node.clone(),
            store: self.store.describe(),
            store_reachable: true,
            store_error: None,
            pools: self.settings.pools.clone(),
            exclude: self.settings.exclude.clone(),
            pool_size,
            free: 0,
            nodes: Vec::new(),
            sticky: Vec::new(),
            cooling: Vec::new(),
            this_node: self.local_view(),
        };
        let cluster =
            async { Ok::<_, StoreError>((self.records().await?, self.live_nodes().await?, self.down_marks().await?)) };
        let (records, live, downs) = match cluster.await {
            Ok(c) => c,
            Err(e) => {
                view.store_reachable = false;
                view.store_error = Some(e.0);
                return view;
            }
        };
        let reuse = self.settings.reuse_delay.as_secs();
        let mut nodes: BTreeMap<String, IpamNodeView> = BTreeMap::new();
        let node_view = |name: &str| IpamNodeView {
            name: name.to_string(),
            live: live.contains(name),
            down_since: downs.get(name).copied(),
            quarantine_ends: downs.get(name).map(|s| s + self.settings.quarantine.as_secs()),
            warm: Vec::new(),
            assigned: Vec::new(),
        };
        for name in live.iter() {
            nodes.insert(name.clone(), node_view(name));
        }
        let mut sorted: Vec<_> = records.iter().collect();
        sorted.sort_by_key(|(ip, _)| **ip);
        let mut held = 0;
        for (ip, (record, _)) in sorted {
            if self.settings.pool.contains(*ip) && ip.is_ipv4() {
                held += 1;
            }
            match record {
                AddressRecord::Warm { node, .. } => {
                    nodes.entry(node.clone()).or_insert_with(|| node_view(node)).warm.push(*ip)
                }
                AddressRecord::Assigned { node, owner, pod, since } => nodes
                    .entry(node.clone())
                    .or_insert_with(|| node_view(node))
                    .assigned
                    .push(AssignmentView { ip: *ip, owner: owner.clone(), pod: pod.clone(), since: *since }),
                AddressRecord::Sticky { pod, until, last_node } => view.sticky.push(StickyView {
                    ip: *ip,
                    pod: pod.clone(),
                    until: *until,
                    last_node: last_node.clone(),
                }),
                AddressRecord::Cooling { released_at, last_node } => view.cooling.push(CoolingView {
                    ip: *ip,
                    released_at: *released_at,
                    free_at: released_at + reuse,
                    last_node: last_node.clone(),
                }),
            }
        }
        view.free = pool_size.saturating_sub(held);
        view.nodes = nodes.into_values().collect();
        view
    }
}

fn describe(record: &AddressRecord) -> String {
    match record.node() {
        Some(node) => format!("{} on {node}", record.state_name()),
        None => record.state_name().to_string(),
    }
}

/// How long the node waits between upkeep rounds (an ADD or DEL starts one at once).
pub const TICK: Duration = Duration::from_secs(1);
/// How often a node looks for dead nodes to reclaim.
const RECLAIM_EVERY: Duration = Duration::from_secs(2);

/// Has `interval` passed since `last` (or never happened)?
fn due(last: &Mutex<Option<Instant>>, interval: Duration) -> bool {
    last.lock().unwrap_or_else(|p| p.into_inner()).is_none_or(|t| t.elapsed() >= interval)
}

impl<S: ClusterStore> NodeIpam<S> {
    /// Waits until an ADD or DEL asks for an early round.
    pub async fn kicked(&self) {
        self.kick.notified().await
    }
}
