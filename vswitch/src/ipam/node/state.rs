//! What the request side and the upkeep share: the node's local state (its file, `ipam.json`,
//! replaced atomically), the store, and the few steps both take on them: writing one pending
//! change to the store, releasing an attachment's addresses, reading the cluster's keys.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use vswitch_api::api::Attachment;

use super::stats::IpamStats;
use crate::ipam::config::{IpamSettings, STATE_FILE};
use crate::ipam::error::{IpamError, SettingsError};
use crate::ipam::pool::Family;
use crate::ipam::record::{now_secs, AddressRecord, Keys};
use crate::ipam::store::{ClusterStore, StoreError};

/// The local state file's format.
const FORMAT: u32 = 1;

#[derive(Debug, Default, Serialize, Deserialize)]
pub(super) struct Local {
    format: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) lease: Option<i64>,
    /// When the store last renewed the lease (seconds since the epoch, taken before asking):
    /// the self-fence counts from it, across restarts too.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) renewed: Option<u64>,
    pub(super) entries: BTreeMap<IpAddr, LocalEntry>,
}

/// One address this node has to do with: `record` is what the store should say (Warm or
/// Assigned to this node, or, once released, Cooling or Sticky until the store has it).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) struct LocalEntry {
    pub(super) record: AddressRecord,
    /// The store version this node last wrote or saw as its own (0: not in the store yet).
    pub(super) version: i64,
    pub(super) dirty: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) netns: Option<PathBuf>,
}

impl LocalEntry {
    pub(super) fn released(&self) -> bool {
        matches!(self.record, AddressRecord::Cooling { .. } | AddressRecord::Sticky { .. })
    }

    pub(super) fn owner(&self) -> Option<&Attachment> {
        self.record.owner()
    }

    pub(super) fn is_warm(&self) -> bool {
        matches!(self.record, AddressRecord::Warm { .. })
    }

    pub(super) fn is_assigned(&self) -> bool {
        matches!(self.record, AddressRecord::Assigned { .. })
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

/// The store's address records: address -> (record, version).
pub(super) type Records = HashMap<IpAddr, (AddressRecord, i64)>;

#[derive(Debug)]
pub(super) struct NodeState<S: ClusterStore> {
    settings: IpamSettings,
    keys: Keys,
    store: S,
    local: Mutex<Local>,
    path: PathBuf,
    /// Serialises saves so an older snapshot never replaces a newer one.
    save_lock: Mutex<()>,
    /// Addresses whose claim or give-back may or may not have reached the store: the request
    /// failed without an answer (a timeout, a member lost mid-request). Looked up again before
    /// the next refill, so a claim that went through is not leaked, and a give-back that went
    /// through leaves nothing behind in the warm pool. (Across a restart, `reconcile` does it.)
    unsure: Mutex<HashMap<IpAddr, Instant>>,
    /// Addresses a store write of this node is under way for (see [`NodeState::hold`]).
    in_flight: Mutex<HashSet<IpAddr>>,
    /// Wakes the upkeep early: an ADD took from the warm pool, a DEL released.
    kick: tokio::sync::Notify,
    /// True once this process's first upkeep round is over (see [`NodeState::settled`]).
    first_round: tokio::sync::watch::Sender<bool>,
    stats: IpamStats,
    /// The pool the store holds, when it is not the configured one: the node does not register.
    pool_conflict: Mutex<Option<PoolConflict>>,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}

impl<S: ClusterStore> NodeState<S> {
    /// Loads the node's state (a corrupt file is an error: it may be all that knows which pods
    /// hold which addresses). Does not touch the store: the node starts while it is down.
    pub(super) fn open(settings: IpamSettings, store: S, state_dir: &Path) -> Result<NodeState<S>, IpamError> {
        let path = state_dir.join(STATE_FILE);
        let local = match std::fs::read(&path) {
            Ok(bytes) => {
                let local: Local = serde_json::from_slice(&bytes)
                    .map_err(|e| IpamError::StateCorrupt { path: path.clone(), detail: e.to_string() })?;
                if local.format > FORMAT {
                    return Err(IpamError::StateTooNew { path, found: local.format, known: FORMAT });
                }
                local
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Local { format: FORMAT, ..Local::default() },
            Err(source) => return Err(IpamError::StateIo { path, source }),
        };
        Ok(NodeState {
            keys: Keys::new(&settings.prefix),
            settings,
            store,
            local: Mutex::new(local),
            path,
            save_lock: Mutex::new(()),
            unsure: Mutex::new(HashMap::new()),
            in_flight: Mutex::new(HashSet::new()),
            kick: tokio::sync::Notify::new(),
            first_round: tokio::sync::watch::channel(false).0,
            stats: IpamStats::default(),
            pool_conflict: Mutex::new(None),
        })
    }

    pub(super) fn settings(&self) -> &IpamSettings {
        &self.settings
    }

    pub(super) fn keys(&self) -> &Keys {
        &self.keys
    }

    pub(super) fn store(&self) -> &S {
        &self.store
    }

    pub(super) fn stats(&self) -> &IpamStats {
        &self.stats
    }

    /// This node's name in the store.
    pub(super) fn node(&self) -> &str {
        &self.settings.node
    }

    pub(super) fn local(&self) -> MutexGuard<'_, Local> {
        lock(&self.local)
    }

    /// Writes the local state (temporary file, fsync, rename): off the async runtime.
    pub(super) async fn save(self: &Arc<Self>) -> Result<(), IpamError> {
        let this = self.clone();
        let io = |source| IpamError::StateIo { path: self.path.clone(), source };
        tokio::task::spawn_blocking(move || this.save_now())
            .await
            .map_err(|e| io(std::io::Error::other(e)))?
            .map_err(io)
    }

    fn save_now(&self) -> std::io::Result<()> {
        let _order = lock(&self.save_lock);
        let bytes = serde_json::to_vec(&*self.local()).expect("serialisable");
        vswitch_host::file::write_atomic(&self.path, &bytes)
    }

    /// [`NodeState::save`] for the upkeep, where a failed save fails the round like the store.
    pub(super) async fn save_in_round(self: &Arc<Self>) -> Result<(), StoreError> {
        self.save().await.map_err(|e| StoreError(e.to_string()))
    }

    /// How long without a lease renewal the node still hands out warm addresses: the lease TTL
    /// plus the quarantine, less a margin. Another node reclaims this node's addresses no sooner
    /// than that after the last renewal (the lease outlives it by the TTL, the leader waits the
    /// quarantine after seeing it gone), and hands them out only after the reuse delay on top;
    /// the margin (2 s, or half the sum when that is shorter) covers the whole seconds the times
    /// are kept in and the leader's clock against this node's.
    pub(super) fn fence_after(&self) -> Duration {
        let sum = self.settings.lease_ttl + self.settings.quarantine;
        sum - Duration::from_secs(2).min(sum / 2)
    }

    /// How long the lease has gone without renewal, when that is past [`NodeState::fence_after`]:
    /// warm addresses are then no longer handed out.
    pub(super) fn self_fenced(&self) -> Option<Duration> {
        let renewed = self.local().renewed?;
        let since = Duration::from_secs(now_secs().saturating_sub(renewed));
        (since >= self.fence_after()).then_some(since)
    }

    /// The configured pool disagrees with the store's: set by the upkeep, refused by ADDs.
    pub(super) fn pool_conflict(&self) -> Option<SettingsError> {
        let conflict = lock(&self.pool_conflict).clone()?;
        Some(SettingsError::PoolMismatch {
            configured: conflict.configured,
            stored: conflict.stored,
            key: conflict.key,
        })
    }

    pub(super) fn set_pool_conflict(&self, conflict: Option<PoolConflict>) {
        *lock(&self.pool_conflict) = conflict;
    }

    /// Asks the upkeep for a round now.
    pub(super) fn kick(&self) {
        self.kick.notify_one();
    }

    pub(super) async fn kicked(&self) {
        self.kick.notified().await
    }

    /// This process's first upkeep round is over.
    pub(super) fn first_round_done(&self) {
        self.first_round.send_replace(true);
    }

    /// Waits (at most `bound`) for this process's first upkeep round: a claim written to the
    /// store just before a crash reaches the local state only there (`reconcile`), and requests
    /// answered before it would not know it. Without the store the round fails quickly, and the
    /// local state answers.
    pub(super) async fn settled(&self, bound: Duration) {
        let mut done = self.first_round.subscribe();
        let _ = tokio::time::timeout(bound, done.wait_for(|done| *done)).await;
    }

    pub(super) fn unsure_about(&self, ip: IpAddr) {
        lock(&self.unsure).insert(ip, Instant::now());
    }

    /// The addresses in doubt, each with how long since its write went unanswered.
    pub(super) fn unsure(&self) -> Vec<(IpAddr, Duration)> {
        lock(&self.unsure).iter().map(|(ip, at)| (*ip, at.elapsed())).collect()
    }

    pub(super) fn resolved(&self, ip: IpAddr) {
        lock(&self.unsure).remove(&ip);
    }

    /// Reserves `ip` for one write of this node (a claim, a give-back) until the hold is
    /// dropped; `None` while another one holds it or its last write is in doubt. The ADD's claim
    /// and the refill run at once, and each takes its index entry out again when its CAS loses:
    /// without the hold, a claim that lost to this node's own would delete the winner's index
    /// entry, and after a crash before the local save nothing would know the address was this
    /// node's (a warm record leaked for good).
    pub(super) fn hold(&self, ip: IpAddr) -> Option<Hold<'_>> {
        if lock(&self.unsure).contains_key(&ip) || !lock(&self.in_flight).insert(ip) {
            return None;
        }
        Some(Hold { ip, in_flight: &self.in_flight })
    }

    /// The attachment's addresses here, IPv4 first (empty: none).
    pub(super) fn lookup(&self, owner: &Attachment) -> Vec<IpAddr> {
        self.local().entries.iter().filter(|(_, e)| e.owner() == Some(owner)).map(|(ip, _)| *ip).collect()
    }

    /// Gives the attachment's addresses back: cooling (free after the reuse delay) or, for a
    /// sticky pod, held for it. The store learns it on the next round.
    pub(super) async fn release(self: &Arc<Self>, owner: &Attachment) -> Result<Vec<IpAddr>, IpamError> {
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
        self.kick();
        tracing::info!(ips = ?released, owner = %owner.container_id, "addresses released");
        Ok(released)
    }

    /// Every address record in the store.
    pub(super) async fn records(&self) -> Result<Records, StoreError> {
        let entries = self.store.list(&self.keys.ips()).await?;
        Ok(entries
            .into_iter()
            .filter_map(|e| Some((self.keys.ip_of(&e.key)?, (AddressRecord::decode(&e.value)?, e.version))))
            .collect())
    }

    /// Puts `ip` in this node's index (`held/<node>/<ip>`) ahead of a write that makes its
    /// record name this node: the leader finds a dead node's addresses there, and a node its
    /// own, without listing the cluster.
    pub(super) async fn index(&self, ip: IpAddr) -> Result<(), StoreError> {
        self.store.put(&self.keys.held_ip(self.node(), ip), Vec::new()).await
    }

    /// Takes `ip` out of this node's index, once its record names someone else (or nobody).
    pub(super) async fn unindex(&self, ip: IpAddr) -> Result<(), StoreError> {
        self.store.delete(&self.keys.held_ip(self.node(), ip)).await
    }

    /// The addresses in `node`'s index.
    pub(super) async fn indexed(&self, node: &str) -> Result<Vec<IpAddr>, StoreError> {
        let entries = self.store.list(&self.keys.held(node)).await?;
        Ok(entries.iter().filter_map(|e| self.keys.held_ip_of(node, &e.key)).collect())
    }

    /// The records of `ips`, one read each (absent: free).
    pub(super) async fn records_of(&self, ips: impl IntoIterator<Item = IpAddr>) -> Result<Records, StoreError> {
        let mut records = Records::new();
        for ip in ips {
            if let Some(e) = self.store.get(&self.keys.ip(ip)).await? {
                if let Some(record) = AddressRecord::decode(&e.value) {
                    records.insert(ip, (record, e.version));
                }
            }
        }
        Ok(records)
    }

    /// The nodes that hold a lease.
    pub(super) async fn live_nodes(&self) -> Result<HashSet<String>, StoreError> {
        Ok(self.named_under(&self.keys.nodes()).await?.into_iter().map(|(node, _)| node).collect())
    }

    /// Nodes marked down, and since when.
    pub(super) async fn down_marks(&self) -> Result<HashMap<String, u64>, StoreError> {
        let marks = self.named_under(&self.keys.downs()).await?.into_iter();
        Ok(marks.filter_map(|(node, value)| Some((node, std::str::from_utf8(&value).ok()?.parse().ok()?))).collect())
    }

    /// The keys under `prefix` as (the rest of the key, value): one per node for node keys and
    /// down marks.
    async fn named_under(&self, prefix: &str) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        let entries = self.store.list(prefix).await?.into_iter();
        Ok(entries.filter_map(|e| Some((e.key.strip_prefix(prefix)?.to_string(), e.value))).collect())
    }

    /// The pending changes, each as it is now, once the local file holds them (or something
    /// newer): the store must never learn a change a crash could take from the file, or the
    /// restarted node would read its own release (say) as its address given away.
    pub(super) async fn pending(
        self: &Arc<Self>,
        only: Option<IpAddr>,
    ) -> Result<Vec<(IpAddr, LocalEntry)>, StoreError> {
        let pending: Vec<(IpAddr, LocalEntry)> = self
            .local()
            .entries
            .iter()
            .filter(|(ip, e)| e.dirty && only.is_none_or(|only| only == **ip))
            .map(|(ip, e)| (*ip, e.clone()))
            .collect();
        if !pending.is_empty() {
            self.save_in_round().await?;
        }
        Ok(pending)
    }

    /// Writes one pending change, `entry` as `pending` saw it (the caller saves the local state).
    pub(super) async fn sync_entry(
        self: &Arc<Self>,
        ip: IpAddr,
        entry: &LocalEntry,
        fenced: &mut Vec<Fenced>,
    ) -> Result<(), StoreError> {
        let key = self.keys.ip(ip);
        if entry.version == 0 && entry.record.node() == Some(self.node()) {
            // A record this node writes for the first time (an adopted port's address).
            self.index(ip).await?;
        }
        match self.store.put_if(&key, entry.record.encode(), entry.version).await? {
            Some(version) => {
                if let AddressRecord::Sticky { pod, .. } = &entry.record {
                    self.store.put(&self.keys.sticky(pod, Family::of(&ip)), ip.to_string().into_bytes()).await?;
                }
                if entry.released() {
                    self.unindex(ip).await?;
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
                    Some((r, version)) if r.node() == Some(self.node()) => {
                        if let Some(e) = local.entries.get_mut(&ip) {
                            e.version = version;
                        }
                    }
                    other => {
                        // (Gone already when another sync of the same address got here first.)
                        drop(local);
                        self.unindex(ip).await?;
                        let mut local = self.local();
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
}

/// An address reserved by [`NodeState::hold`], released on drop.
pub(super) struct Hold<'a> {
    ip: IpAddr,
    in_flight: &'a Mutex<HashSet<IpAddr>>,
}

impl Drop for Hold<'_> {
    fn drop(&mut self) {
        lock(self.in_flight).remove(&self.ip);
    }
}

/// The pool as configured and as the store holds it, when they differ.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct PoolConflict {
    pub(super) configured: String,
    pub(super) stored: String,
    pub(super) key: String,
}

/// When a periodic step of the upkeep last ran.
#[derive(Debug, Default)]
pub(super) struct LastRun(Mutex<Option<Instant>>);

impl LastRun {
    /// Has `interval` passed since the last run (or was there none)?
    pub(super) fn due(&self, interval: Duration) -> bool {
        lock(&self.0).is_none_or(|t| t.elapsed() >= interval)
    }

    pub(super) fn ran(&self) {
        *lock(&self.0) = Some(Instant::now());
    }
}

/// A record as the logs and [`Fenced::now`] name it: `assigned on n2`, `cooling`.
pub(super) fn describe(record: &AddressRecord) -> String {
    match record.node() {
        Some(node) => format!("{} on {node}", record.state_name()),
        None => record.state_name().to_string(),
    }
}
