//! One node's side of the cluster IPAM.
//!
//! The node keeps what it holds in a local state file (`<state_dir>/ipam.json`, replaced
//! atomically): its warm pool, its pods' addresses, and what it still has to tell the store.
//! ADD and DEL change only that file, so they take no store round trip and keep working while
//! the store is unreachable; [`NodeIpam::tick`] then brings the store in line, one
//! compare-and-swap per address, and refills the warm pools (one per address family; see
//! [`warm`]). An attachment holds one address per family it asked for, each its own entry and
//! its own store key; ADD takes them all or none.
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
use vswitch_api::api::{AddressView, ApiError, AssignSpec, Attachment, ErrorCode, IpFamilies, PodRef};

use super::pool::Family;
use super::record::{now_secs, AddressRecord, Keys, NodeRecord};
use super::store::{ClusterStore, StoreError};
use super::IpamSettings;

mod report;
mod warm;

pub use report::{pool_summary, ClusterCounts, FamilyMetrics, IpamMetrics};

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
        self.record.owner()
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
    /// Cluster-wide counts, from the last scan.
    pub cluster: Mutex<Option<ClusterCounts>>,
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
    /// True once this process's first upkeep round is over (see [`NodeIpam::settled`]).
    first_round: tokio::sync::watch::Sender<bool>,
    pub stats: IpamStats,
}

fn unavailable(what: &str, e: &StoreError) -> ApiError {
    ApiError::new(ErrorCode::Unavailable, format!("{what}: the address store is unreachable ({e}); retry later"))
}

fn invalid(message: String) -> ApiError {
    ApiError::new(ErrorCode::Invalid, message)
}

fn asks_for(families: IpFamilies, family: Family) -> bool {
    match family {
        Family::Ipv4 => families.has_ipv4(),
        Family::Ipv6 => families.has_ipv6(),
    }
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
            first_round: tokio::sync::watch::channel(false).0,
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
        vswitch_host::file::write_atomic(&self.path, &bytes)
    }

    fn is_sticky(&self, pod: Option<&PodRef>) -> bool {
        pod.is_some_and(|p| self.settings.is_sticky(p))
    }

    /// The attachment's addresses here, IPv4 first (empty: none).
    pub fn lookup(&self, owner: &Attachment) -> Vec<IpAddr> {
        self.local().entries.iter().filter(|(_, e)| e.owner() == Some(owner)).map(|(ip, _)| *ip).collect()
    }

    /// The attachments that hold an address of this node (each once).
    fn owners(&self) -> Vec<Attachment> {
        let mut owners: Vec<Attachment> = Vec::new();
        for owner in self.local().entries.values().filter_map(LocalEntry::owner) {
            if !owners.contains(owner) {
                owners.push(owner.clone());
            }
        }
        owners
    }

    /// The families an ADD gets, IPv4 first, each with the specific address asked for if any:
    /// those named in `families`, or every family the pool holds.
    fn wanted(&self, spec: &AssignSpec) -> Result<Vec<(Family, Option<IpAddr>)>, ApiError> {
        let held = self.settings.pool.families();
        let asked: Vec<Family> = match spec.families {
            None => held.clone(),
            Some(families) => Family::ALL.into_iter().filter(|f| asks_for(families, *f)).collect(),
        };
        if let Some(missing) = asked.iter().find(|f| !held.contains(f)) {
            return Err(invalid(format!("the pool {} has no {missing} addresses", self.settings.pools.join(", "))));
        }
        let mut wanted = Vec::new();
        for family in asked {
            let mut specific = spec.ips.iter().filter(|ip| Family::of(ip) == family);
            let ip = specific.next().copied();
            if specific.next().is_some() {
                return Err(invalid(format!("at most one {family} address may be asked for")));
            }
            wanted.push((family, ip));
        }
        if let Some(ip) = spec.ips.iter().find(|ip| !wanted.iter().any(|(f, _)| *f == Family::of(ip))) {
            return Err(invalid(format!("{ip} is not of a family this ADD asks for")));
        }
        Ok(wanted)
    }

    /// The addresses for an ADD, one per family wanted, IPv4 first; all or nothing. A repeated
    /// ADD gets what the attachment has (and any family it still lacks). `in_use`: addresses
    /// ports of this node hold (never handed out).
    pub async fn assign(
        self: &Arc<Self>,
        spec: &AssignSpec,
        in_use: &HashSet<IpAddr>,
    ) -> Result<AddressView, ApiError> {
        let wanted = self.wanted(spec)?;
        let held = self.lookup(&spec.owner);
        let has = |family: Family| held.iter().copied().find(|ip| Family::of(ip) == family);
        for (family, specific) in &wanted {
            if let (Some(has), Some(asked)) = (has(*family), specific) {
                if has != *asked {
                    return Err(ApiError::new(
                        ErrorCode::Conflict,
                        format!("{} already has {has}; it cannot also take {asked}", spec.owner.container_id),
                    ));
                }
            }
        }
        let missing: Vec<(Family, Option<IpAddr>)> = wanted.into_iter().filter(|(f, _)| has(*f).is_none()).collect();
        if missing.is_empty() {
            return Ok(AddressView { ips: held, new: false });
        }
        let mut taken = Vec::new();
        for (family, specific) in missing {
            let got = match specific {
                Some(ip) => self.assign_specific(spec, ip, in_use).await,
                None if self.is_sticky(spec.pod.as_ref()) => self.assign_sticky(spec, family, in_use).await,
                None => self.assign_warm(spec, family, in_use).await,
            };
            match got {
                Ok(ip) => taken.push(ip),
                Err(e) => {
                    // All or nothing: what this ADD took goes back to the warm pool (no pod
                    // used it, so it need not cool down).
                    for ip in taken {
                        self.undo_assign(ip).await;
                    }
                    return Err(e);
                }
            }
        }
        tracing::info!(ips = ?taken, owner = %spec.owner.container_id, pod = ?spec.pod, "addresses assigned");
        let mut ips = held;
        ips.extend(taken);
        ips.sort();
        Ok(AddressView { ips, new: true })
    }

    fn assigned_record(&self, spec: &AssignSpec) -> AddressRecord {
        AddressRecord::Assigned {
            node: self.settings.node.clone(),
            owner: spec.owner.clone(),
            pod: spec.pod.clone(),
            since: now_secs(),
        }
    }

    /// Takes a warm address of `family` for `spec` in the local state (no store round trip).
    fn take_warm(&self, spec: &AssignSpec, family: Family, in_use: &HashSet<IpAddr>) -> Option<IpAddr> {
        let mut local = self.local();
        let ip = local
            .entries
            .iter()
            .find(|(ip, e)| {
                Family::of(ip) == family && matches!(e.record, AddressRecord::Warm { .. }) && !in_use.contains(*ip)
            })
            .map(|(ip, _)| *ip)?;
        let entry = local.entries.get_mut(&ip).expect("found above");
        entry.record = self.assigned_record(spec);
        entry.dirty = true;
        entry.netns = Some(spec.netns.clone());
        Some(ip)
    }

    /// An address of `family` from the warm pool, or claimed for this ADD when it is empty.
    async fn assign_warm(
        self: &Arc<Self>,
        spec: &AssignSpec,
        family: Family,
        in_use: &HashSet<IpAddr>,
    ) -> Result<IpAddr, ApiError> {
        if let Some(ip) = self.take_warm(spec, family, in_use) {
            self.save().await?;
            self.stats.assigned_from_warm.fetch_add(1, Ordering::Relaxed);
            // Refill (and tell the store) now rather than at the next round.
            self.kick.notify_one();
            return Ok(ip);
        }
        // The warm pool is empty (ADDs faster than it refills): claim one for this ADD alone,
        // straight as assigned, and have the pool refilled behind it.
        self.kick.notify_one();
        let record = self.assigned_record(spec);
        match self.claim(family, 1, &record, in_use, Some(spec.netns.clone())).await {
            Ok(won) => match won.first() {
                Some(&(ip, _)) => {
                    self.save().await?;
                    self.stats.assigned_from_store.fetch_add(1, Ordering::Relaxed);
                    Ok(ip)
                }
                None => Err(ApiError::new(
                    ErrorCode::Exhausted,
                    format!("no free {family} address in the pool {}", self.settings.pools.join(", ")),
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
        if let Some((ip, entry)) = self.pending(Some(ip)).await?.first() {
            let synced = self.sync_entry(*ip, entry, &mut fenced).await;
            drop(self.save().await);
            synced?;
        }
        if fenced.is_empty() && self.local().entries.get(&ip).is_some_and(|e| !e.dirty) {
            Ok(())
        } else {
            Err(StoreError(format!("{ip} changed owner in the store")))
        }
    }

    /// A sticky pod's address of `family`: the one it kept (from any node), or a new one
    /// recorded as its own.
    async fn assign_sticky(
        self: &Arc<Self>,
        spec: &AssignSpec,
        family: Family,
        in_use: &HashSet<IpAddr>,
    ) -> Result<IpAddr, ApiError> {
        let pod = spec.pod.clone().expect("sticky pods have a name");
        let index_key = self.keys.sticky(&pod, family);
        let index = self.store.get(&index_key).await.map_err(|e| unavailable("sticky address", &e))?;
        let kept = index.and_then(|e| std::str::from_utf8(&e.value).ok()?.parse::<IpAddr>().ok());
        let kept = kept.filter(|ip| Family::of(ip) == family);
        if let Some(ip) = kept {
            let key = self.keys.ip(ip);
            let current = self.store.get(&key).await.map_err(|e| unavailable("sticky address", &e))?;
            match current.as_ref().and_then(|e| Some((AddressRecord::decode(&e.value)?, e.version))) {
                Some((AddressRecord::Sticky { pod: held, .. }, version)) if held == pod => {
                    return match self.take_from_store(spec, ip, version).await {
                        Ok(Some(ip)) => {
                            tracing::info!(%ip, %pod, "sticky address taken over");
                            Ok(ip)
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
        let ip = self.assign_warm(spec, family, in_use).await?;
        if let Err(e) = self.sync_now(ip).await {
            self.undo_assign(ip).await;
            return Err(unavailable("sticky address", &e));
        }
        if let Err(e) = self.store.put(&index_key, ip.to_string().into_bytes()).await {
            // The record names the pod; the index is written again when the pod is released.
            tracing::warn!(%ip, %pod, error = %e, "sticky index not written yet");
        }
        Ok(ip)
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
    ) -> Result<IpAddr, ApiError> {
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
            return Ok(ip);
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
    ) -> Result<Option<IpAddr>, ApiError> {
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
        Ok(Some(ip))
    }

    /// Gives the attachment's addresses back: cooling (free after the reuse delay) or, for a
    /// sticky pod, held for it. The store learns it on the next tick.
    pub async fn release(self: &Arc<Self>, owner: &Attachment) -> Result<Vec<IpAddr>, ApiError> {
        let released: Vec<IpAddr> = {
            let mut local = self.local();
            let now = now_secs();
            let mut released = Vec::new();
            for (ip, entry) in local.entries.iter_mut().filter(|(_, e)| e.owner() == Some(owner)) {
                let AddressRecord::Assigned { pod, .. } = &entry.record else { unreachable!("owner() matched") };
                let last_node = self.settings.node.clone();
                entry.record = match pod.clone() {
                    Some(pod) if self.settings.is_sticky(&pod) => {
                        AddressRecord::Sticky { pod, until: now + self.settings.sticky_hold.as_secs(), last_node }
                    }
                    _ => AddressRecord::Cooling { released_at: now, last_node },
                };
                entry.dirty = true;
                released.push(*ip);
            }
            released
        };
        if released.is_empty() {
            return Ok(released);
        }
        self.save().await?;
        self.kick.notify_one();
        tracing::info!(ips = ?released, owner = %owner.container_id, "addresses released");
        Ok(released)
    }

    /// Waits (at most `bound`) for this process's first upkeep round: a claim written to the
    /// store just before a crash reaches the local state only there (`reconcile`), and requests
    /// answered before it would not know it. Without the store the round fails quickly, and the
    /// local state answers.
    pub async fn settled(&self, bound: Duration) {
        let mut done = self.first_round.subscribe();
        let _ = tokio::time::timeout(bound, done.wait_for(|done| *done)).await;
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
            self.refill().await?;
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
        self.first_round.send_replace(true);
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
                        // A claim for an ADD whose owner holds another address of the family was
                        // an ADD refused (its reply lost) and retried: nobody has this one.
                        let refused_add = record.owner().is_some_and(|owner| {
                            local
                                .entries
                                .iter()
                                .any(|(held, e)| e.owner() == Some(owner) && Family::of(held) == Family::of(ip))
                        });
                        let entry = if refused_add {
                            tracing::info!(%ip, "adopted a claim of a refused ADD into the warm pool");
                            let warm = AddressRecord::Warm { node: self.settings.node.clone(), since: now_secs() };
                            LocalEntry { record: warm, version: *version, dirty: true, netns: None }
                        } else {
                            tracing::info!(%ip, state = record.state_name(), "adopted an address the store gives this node");
                            LocalEntry { record: record.clone(), version: *version, dirty: false, netns: None }
                        };
                        local.entries.insert(*ip, entry);
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

    /// The pending changes, each as it is now, once the local file holds them (or something
    /// newer): the store must never learn a change a crash could take from the file, or the
    /// restarted node would read its own release (say) as its address given away.
    async fn pending(self: &Arc<Self>, only: Option<IpAddr>) -> Result<Vec<(IpAddr, LocalEntry)>, StoreError> {
        let pending: Vec<(IpAddr, LocalEntry)> = self
            .local()
            .entries
            .iter()
            .filter(|(ip, e)| e.dirty && only.is_none_or(|only| only == **ip))
            .map(|(ip, e)| (*ip, e.clone()))
            .collect();
        if !pending.is_empty() {
            self.save().await.map_err(|e| StoreError(e.message))?;
        }
        Ok(pending)
    }

    /// Writes every pending change.
    async fn sync(self: &Arc<Self>, fenced: &mut Vec<Fenced>) -> Result<(), StoreError> {
        let dirty = self.pending(None).await?;
        let mut result = Ok(());
        for (ip, entry) in &dirty {
            result = self.sync_entry(*ip, entry, fenced).await;
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

    /// Writes one pending change, `entry` as `pending` saw it (the caller saves the local state).
    async fn sync_entry(
        self: &Arc<Self>,
        ip: IpAddr,
        entry: &LocalEntry,
        fenced: &mut Vec<Fenced>,
    ) -> Result<(), StoreError> {
        let key = self.keys.ip(ip);
        match self.store.put_if(&key, entry.record.encode(), entry.version).await? {
            Some(version) => {
                if let AddressRecord::Sticky { pod, .. } = &entry.record {
                    self.store.put(&self.keys.sticky(pod, Family::of(&ip)), ip.to_string().into_bytes()).await?;
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

    /// Nodes that hold addresses but no lease: marked down, and after the quarantine their
    /// addresses become cooling (sticky pods' addresses: sticky). Any live node may do this;
    /// the CAS makes it happen once.
    async fn reclaim_dead(self: &Arc<Self>) -> Result<(), StoreError> {
        let live = self.live_nodes().await?;
        let downs = self.down_marks().await?;
        let records = self.records().await?;
        let counts = ClusterCounts::of(&self.settings.pool, records.iter().map(|(ip, (r, _))| (ip, r)));
        *self.stats.cluster.lock().unwrap_or_else(|p| p.into_inner()) = Some(counts);
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
                                let index = self.keys.sticky(pod, Family::of(ip));
                                self.store.put(&index, ip.to_string().into_bytes()).await?;
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
