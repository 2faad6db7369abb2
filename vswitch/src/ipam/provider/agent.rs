//! The node's pool of secondary IPs in provider mode.
//!
//! State (persisted in `ipam-provider.json`, atomic writes): the pods' addresses, the warm pool,
//! the cooling addresses and the deletes not yet done. The order of writes and calls makes a
//! kill -9 anywhere safe: a delete is recorded before it is called (and retried until the VPC
//! says done or gone); an allocation is recorded after the VPC answered, and one the node died
//! before recording is on the NIC with no owner here, which reconcile adopts into the pool (or
//! deletes beyond the pool's target). The VPC is the truth for which addresses this NIC holds;
//! this file for which pod holds which of them.
//!
//! ADD takes a warm address (no API call); only with an empty pool does it call the API itself.
//! A new address is handed out once the fabric delivers it ([`super::probe`]): the upkeep probes
//! the addresses it allocates before they join the pool, so an ADD from the pool never waits; an
//! ADD on an empty pool waits for its own address's probe. A probe is bounded
//! ([`ProviderSettings::fabric_probe_timeout`]): past it the address is used anyway, with a
//! warning and counted, since refusing would cost an ADD or a pool an address the fabric is most
//! likely about to deliver. Throttled or unreachable API: exponential backoff with jitter;
//! ADDs go on from the pool; DELs are queued in the file and retried.
//!
//! Sticky pods (annotations or `[ipam] sticky` patterns) keep their address across deletion and
//! re-creation on any node: see [`sticky`].

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rand::Rng;
use serde::{Deserialize, Serialize};
use vswitch_api::api::{Attachment, PodRef};
use vswitch_api::sticky::{ClaimPolicy, StickyRequest};

use super::claims::StickyClaims;
use super::probe::{ArpProbe, FabricProbe};
use super::stats::{ApiReport, ApiStats};
use super::{PoolCall, ProviderError, VpcProvider};
use crate::ipam::store::{AnyStore, ClusterStore};
use crate::ipam::IpamError;

mod deliverable;
mod reconcile;
mod sticky;
mod upkeep;

/// The provider state's file in the state directory.
pub const STATE_FILE: &str = "ipam-provider.json";
const FORMAT: u32 = 1;

#[derive(Debug, Clone)]
pub struct ProviderSettings {
    pub warm_low: usize,
    pub warm_high: usize,
    pub cooldown: Duration,
    /// At least this long between two rounds that give addresses back, as AWS's ipamd paces
    /// them (`decreaseIPPoolInterval`, 30 s): pods churning never unassign in consecutive
    /// rounds. Zero: unpaced (UCloud, whose watermarks leave a gap instead).
    pub decrease_interval: Duration,
    /// The longest a new address is probed before it is used anyway.
    pub fabric_probe_timeout: Duration,
    /// Whom the ARP probe asks (none: the node's default gateway).
    pub fabric_probe_target: Option<Ipv4Addr>,
    pub backoff_min: Duration,
    pub backoff_max: Duration,
    pub reconcile_every: Duration,
}

impl Default for ProviderSettings {
    fn default() -> Self {
        ProviderSettings {
            warm_low: 4,
            warm_high: 8,
            cooldown: Duration::from_secs(30),
            decrease_interval: Duration::ZERO,
            fabric_probe_timeout: Duration::from_secs(5),
            fabric_probe_target: None,
            backoff_min: Duration::from_millis(500),
            backoff_max: Duration::from_secs(30),
            reconcile_every: Duration::from_secs(60),
        }
    }
}

/// Why an ADD got no address (the API's code 11: retry later).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProviderRefusal {
    #[error("no warm address on this node and the VPC subnet is full: {0}")]
    SubnetFull(String),
    #[error("no warm address on this node and the VPC API is unavailable ({0}); retry later")]
    Unavailable(String),
    #[error("no warm address on this node and the VPC API refused an allocation: {0}")]
    Refused(ProviderError),
    /// Every address this node could get is on a NIC the node does not have (the message names it).
    #[error("no warm address on this node and none it can deliver: {0}")]
    NicAbsent(String),
    #[error("the sticky address {ip} could not be brought to this node: {error}")]
    Sticky { ip: IpAddr, error: ProviderError },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PodAddress {
    pub ip: IpAddr,
    pub owner: Attachment,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod: Option<PodRef>,
    /// A sticky pod's: how long the address is held for it once released.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hold: Option<ClaimPolicy>,
}

/// A released sticky pod's address, kept on this NIC for the pod until its claim policy ends
/// (or another node takes it over). Never handed to anyone else.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HeldAddress {
    pub pod: PodRef,
    pub policy: ClaimPolicy,
    /// Deleted from then on (ms since the epoch); none: held until the pod comes back.
    pub until_ms: Option<u64>,
}

/// What survives a restart.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
struct Persisted {
    format: u32,
    /// By port name (`container:ifname`).
    pods: BTreeMap<String, PodAddress>,
    warm: BTreeSet<IpAddr>,
    /// Address → when it may be handed out again (ms since the epoch).
    cooling: BTreeMap<IpAddr, u64>,
    /// Deletes recorded, not yet confirmed by the VPC.
    deleting: BTreeSet<IpAddr>,
    /// Released sticky pods' addresses.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    held: BTreeMap<IpAddr, HeldAddress>,
    /// Addresses of this node's NICs it cannot deliver (why): kept in the VPC, served to nobody,
    /// warm again once the NIC is in the node (reconcile looks).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    undeliverable: BTreeMap<IpAddr, String>,
}

impl Persisted {
    fn knows(&self, ip: IpAddr) -> bool {
        self.warm.contains(&ip)
            || self.cooling.contains_key(&ip)
            || self.deleting.contains(&ip)
            || self.held.contains_key(&ip)
            || self.undeliverable.contains_key(&ip)
            || self.pods.values().any(|p| p.ip == ip)
    }
}

/// What does not survive a restart.
#[derive(Debug, Default)]
struct Runtime {
    retry_at: Option<Instant>,
    backoff: Duration,
    /// Allocations in flight, and how many were started: reconcile skips a round that raced one.
    allocating: usize,
    epoch: u64,
    last_reconcile: Option<Instant>,
    /// The NIC's secondary IPs at the last reconcile.
    described: Option<Vec<IpAddr>>,
    last_transient: Option<String>,
    /// When the upkeep last gave addresses back (paced by `decrease_interval`).
    last_decrease: Option<Instant>,
    /// Why the refill was last refused (warned once, until an allocation succeeds).
    refill_refused: Option<String>,
}

/// The view `vswitchctl ipam` shows.
#[derive(Debug, Clone, Serialize)]
pub struct ProviderReport {
    pub provider: String,
    pub nic: String,
    pub pods: Vec<PodAddress>,
    pub warm: Vec<IpAddr>,
    pub cooling: Vec<IpAddr>,
    pub deleting: Vec<IpAddr>,
    pub held: Vec<(IpAddr, HeldAddress)>,
    /// Addresses of a NIC this node does not have, and why: not served.
    pub undeliverable: Vec<(IpAddr, String)>,
    pub nic_secondary: Option<Vec<IpAddr>>,
    pub backing_off_ms: Option<u64>,
    pub api: ApiReport,
}

impl ProviderReport {
    /// Every address the pool accounts for: the pods', warm, cooling and queued for deletion.
    pub fn held(&self) -> Vec<IpAddr> {
        let pods = self.pods.iter().map(|p| p.ip);
        pods.chain(self.warm.iter().chain(&self.cooling).chain(&self.deleting).copied()).collect()
    }
}

#[derive(Debug)]
pub struct ProviderIpam<P, S = AnyStore, F = ArpProbe> {
    provider: P,
    probe: F,
    settings: ProviderSettings,
    path: PathBuf,
    state: Mutex<(Persisted, Runtime)>,
    save_lock: Mutex<()>,
    stats: ApiStats,
    kick: tokio::sync::Notify,
    /// Sticky records (none: no pod is sticky).
    claims: Option<StickyClaims<S>>,
}

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

fn key(owner: &Attachment) -> String {
    vswitch_api::api::port_name(owner)
}

impl<P: VpcProvider> ProviderIpam<P> {
    /// The pool as `state_dir` last recorded it (empty if never), without sticky pods.
    pub fn open(provider: P, settings: ProviderSettings, state_dir: &Path) -> Result<ProviderIpam<P>, IpamError> {
        ProviderIpam::open_with(provider, settings, state_dir, None)
    }
}

impl<P: VpcProvider, F: FabricProbe> ProviderIpam<P, AnyStore, F> {
    /// Without sticky pods, probing new addresses with `probe`.
    pub fn open_with_probe(
        provider: P,
        probe: F,
        settings: ProviderSettings,
        state_dir: &Path,
    ) -> Result<Self, IpamError> {
        ProviderIpam::build(provider, probe, settings, state_dir, None)
    }
}

impl<P: VpcProvider, S: ClusterStore> ProviderIpam<P, S> {
    /// The pool as `state_dir` last recorded it (empty if never), with sticky pods' records in
    /// `claims`, probing new addresses with ARP on the provider's NIC.
    pub fn open_with(
        provider: P,
        settings: ProviderSettings,
        state_dir: &Path,
        claims: Option<StickyClaims<S>>,
    ) -> Result<ProviderIpam<P, S>, IpamError> {
        let probe = ArpProbe::new(settings.fabric_probe_target);
        ProviderIpam::build(provider, probe, settings, state_dir, claims)
    }
}

impl<P: VpcProvider, S: ClusterStore, F: FabricProbe> ProviderIpam<P, S, F> {
    fn build(
        provider: P,
        probe: F,
        settings: ProviderSettings,
        state_dir: &Path,
        claims: Option<StickyClaims<S>>,
    ) -> Result<Self, IpamError> {
        let path = state_dir.join(STATE_FILE);
        let persisted = match std::fs::read(&path) {
            Ok(bytes) => {
                let p: Persisted = serde_json::from_slice(&bytes)
                    .map_err(|e| IpamError::StateCorrupt { path: path.clone(), detail: e.to_string() })?;
                if p.format > FORMAT {
                    return Err(IpamError::StateTooNew { path, found: p.format, known: FORMAT });
                }
                p
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Persisted { format: FORMAT, ..Persisted::default() },
            Err(source) => return Err(IpamError::StateIo { path, source }),
        };
        Ok(ProviderIpam {
            provider,
            probe,
            settings,
            path,
            state: Mutex::new((persisted, Runtime::default())),
            save_lock: Mutex::new(()),
            stats: ApiStats::default(),
            kick: tokio::sync::Notify::new(),
            claims,
        })
    }

    pub fn provider(&self) -> &P {
        &self.provider
    }

    pub fn stats(&self) -> &ApiStats {
        &self.stats
    }

    fn lock(&self) -> MutexGuard<'_, (Persisted, Runtime)> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Writes the state (temporary file, fsync, rename).
    fn save(&self) -> Result<(), IpamError> {
        let _order = self.save_lock.lock().unwrap_or_else(|e| e.into_inner());
        let bytes = serde_json::to_vec(&self.lock().0).expect("serialisable");
        vswitch_host::file::write_atomic(&self.path, &bytes)
            .map_err(|source| IpamError::StateIo { path: self.path.clone(), source })
    }

    /// One API call, counted and timed under the provider's name for it.
    async fn call<T>(
        &self,
        which: PoolCall,
        call: impl std::future::Future<Output = Result<T, ProviderError>>,
    ) -> Result<T, ProviderError> {
        let action = self.provider.call_name(which);
        let started = Instant::now();
        let result = call.await;
        self.stats.record(action, started.elapsed(), result.as_ref().map(drop));
        let mut guard = self.lock();
        let rt = &mut guard.1;
        match &result {
            Err(e) if e.is_transient() => {
                let base = if rt.backoff.is_zero() { self.settings.backoff_min } else { rt.backoff * 2 };
                rt.backoff = base.min(self.settings.backoff_max);
                let jitter = rand::thread_rng().gen_range(0.5..1.0);
                rt.retry_at = Some(Instant::now() + rt.backoff.mul_f64(jitter));
                rt.last_transient = Some(e.to_string());
                tracing::warn!(action, error = %e, backoff_ms = rt.backoff.as_millis() as u64, "VPC API: backing off");
            }
            _ => {
                rt.backoff = Duration::ZERO;
                rt.retry_at = None;
            }
        }
        result
    }

    fn backing_off(&self) -> Option<String> {
        let guard = self.lock();
        let rt = &guard.1;
        rt.retry_at.filter(|t| *t > Instant::now()).map(|_| rt.last_transient.clone().unwrap_or_default())
    }

    /// The address of `owner`, from the warm pool if it has one; with an empty pool from the API;
    /// a sticky pod's own (see [`sticky`]). Answers once the fabric delivers the address.
    /// `in_use`: addresses ports of this node hold.
    pub async fn assign(
        &self,
        owner: &Attachment,
        pod: Option<PodRef>,
        sticky: Option<StickyRequest>,
        in_use: &HashSet<IpAddr>,
    ) -> Result<(IpAddr, bool), IpamError> {
        if let Some(existing) = self.lookup(owner) {
            return Ok((existing, false));
        }
        let hold = self.claims.as_ref().and_then(|c| c.policy(pod.as_ref(), sticky));
        let (ip, fresh) = match (hold, pod) {
            (Some(hold), Some(pod)) => self.assign_sticky(owner, pod, hold, in_use).await?,
            (_, pod) => self.take(owner, pod, None, in_use).await?,
        };
        self.save()?;
        if fresh {
            // New on this NIC: answered once the fabric delivers it (warm ones were probed).
            if let Err(why) = self.deliverable(ip).await {
                {
                    let mut guard = self.lock();
                    guard.0.pods.remove(&key(owner));
                    guard.0.undeliverable.insert(ip, why.clone());
                }
                self.save()?;
                return Err(ProviderRefusal::NicAbsent(why).into());
            }
        }
        Ok((ip, true))
    }

    /// An address from the warm pool, or from the API with an empty pool, recorded as `owner`'s
    /// (not saved yet), and whether it is new on the NIC (to be probed before it is used).
    async fn take(
        &self,
        owner: &Attachment,
        pod: Option<PodRef>,
        hold: Option<ClaimPolicy>,
        in_use: &HashSet<IpAddr>,
    ) -> Result<(IpAddr, bool), IpamError> {
        {
            let mut guard = self.lock();
            let (state, rt) = &mut *guard;
            if let Some(ip) = state.warm.iter().find(|ip| !in_use.contains(ip)).copied() {
                state.warm.remove(&ip);
                state.pods.insert(key(owner), PodAddress { ip, owner: owner.clone(), pod, hold });
                if self.delta(state).short > 0 {
                    self.kick.notify_one();
                }
                // Probed before it joined the pool.
                return Ok((ip, false));
            }
            rt.allocating += 1;
            rt.epoch += 1;
        }
        let allocated = self.allocate_for(owner, pod, hold).await;
        self.lock().1.allocating -= 1;
        allocated
    }

    /// An ADD with an empty pool: one allocation, recorded before it is answered.
    async fn allocate_for(
        &self,
        owner: &Attachment,
        pod: Option<PodRef>,
        hold: Option<ClaimPolicy>,
    ) -> Result<(IpAddr, bool), IpamError> {
        self.kick.notify_one();
        if let Some(why) = self.backing_off() {
            return Err(ProviderRefusal::Unavailable(why).into());
        }
        let ip = self.call(PoolCall::Allocate, self.provider.allocate(None)).await.map_err(|e| match e {
            ProviderError::SubnetFull(m) => ProviderRefusal::SubnetFull(m),
            ProviderError::NicAbsent(m) => ProviderRefusal::NicAbsent(m),
            e if e.is_transient() => ProviderRefusal::Unavailable(e.to_string()),
            e => ProviderRefusal::Refused(e),
        })?;
        self.lock().0.pods.insert(key(owner), PodAddress { ip, owner: owner.clone(), pod, hold });
        Ok((ip, true))
    }

    pub fn lookup(&self, owner: &Attachment) -> Option<IpAddr> {
        self.lock().0.pods.get(&key(owner)).map(|p| p.ip)
    }

    /// DEL: the address cools, then returns to the pool or is deleted; a sticky pod's is held
    /// for it.
    pub fn release(&self, owner: &Attachment) -> Result<Vec<IpAddr>, IpamError> {
        let released = {
            let mut guard = self.lock();
            let state = &mut guard.0;
            let Some(entry) = state.pods.remove(&key(owner)) else { return Ok(Vec::new()) };
            match (entry.hold, entry.pod) {
                (Some(hold), Some(pod)) => {
                    let until_ms = match hold {
                        ClaimPolicy::Never => None,
                        ClaimPolicy::After(d) => Some(now_ms() + d.as_millis() as u64),
                    };
                    tracing::info!(ip = %entry.ip, %pod, %hold, "sticky address held for its pod");
                    state.held.insert(entry.ip, HeldAddress { pod, policy: hold, until_ms });
                }
                _ => {
                    state.cooling.insert(entry.ip, now_ms() + self.settings.cooldown.as_millis() as u64);
                }
            }
            vec![entry.ip]
        };
        self.save()?;
        Ok(released)
    }

    /// Releases every pod but those in `keep` (CNI GC).
    pub fn gc(&self, keep: &[Attachment]) -> Result<Vec<IpAddr>, IpamError> {
        let keep: HashSet<String> = keep.iter().map(key).collect();
        let gone: Vec<Attachment> =
            self.lock().0.pods.iter().filter(|(k, _)| !keep.contains(*k)).map(|(_, p)| p.owner.clone()).collect();
        let mut released = Vec::new();
        for owner in gone {
            released.extend(self.release(&owner)?);
        }
        Ok(released)
    }

    /// Ports this node has whose addresses the state lost: recorded as theirs.
    pub fn adopt_ports(&self, ports: &[(IpAddr, Attachment, Option<PodRef>)]) -> Result<(), IpamError> {
        {
            let mut guard = self.lock();
            let state = &mut guard.0;
            for (ip, owner, pod) in ports {
                if state.pods.contains_key(&key(owner)) || state.pods.values().any(|p| p.ip == *ip) {
                    continue;
                }
                state.warm.remove(ip);
                state.cooling.remove(ip);
                state.deleting.remove(ip);
                let hold = state.held.remove(ip).map(|h| h.policy);
                state.pods.insert(key(owner), PodAddress { ip: *ip, owner: owner.clone(), pod: pod.clone(), hold });
            }
        }
        self.save()
    }

    /// Until an ADD asks for an early upkeep round.
    pub async fn kicked(&self) {
        self.kick.notified().await
    }

    /// One upkeep round: cooled addresses back to the pool (or queued for deletion), queued
    /// deletes, the pool brought to its target (`upkeep`), and reconcile when due. Addresses
    /// are given back at most once per `decrease_interval`.
    pub async fn tick(&self) -> Result<(), IpamError> {
        // Asked once: cooled addresses and warm ones beyond the target go back in the same round.
        let may_decrease = self.may_decrease();
        self.cool_down(may_decrease);
        self.save()?;
        if self.backing_off().is_some() {
            return Ok(());
        }
        let due = self.lock().1.last_reconcile.is_none_or(|t| t.elapsed() >= self.settings.reconcile_every);
        // Held addresses held "Never" are looked at only as often as reconcile runs.
        self.expire_held(due).await?;
        self.run_deletes().await?;
        self.fill().await?;
        self.trim(may_decrease).await?;
        if due && self.backing_off().is_none() {
            self.reconcile().await?;
        }
        Ok(())
    }

    /// The subnet's free addresses, straight from the API (credentials and reachability).
    pub async fn check_api(&self) -> Result<u64, ProviderError> {
        self.call(PoolCall::SubnetFree, self.provider.subnet_free()).await
    }

    pub fn report(&self) -> ProviderReport {
        let guard = self.lock();
        let (state, rt) = &*guard;
        ProviderReport {
            provider: self.provider.name().into(),
            nic: self.provider.nic().into(),
            pods: state.pods.values().cloned().collect(),
            warm: state.warm.iter().copied().collect(),
            cooling: state.cooling.keys().copied().collect(),
            deleting: state.deleting.iter().copied().collect(),
            held: state.held.iter().map(|(ip, h)| (*ip, h.clone())).collect(),
            undeliverable: state.undeliverable.iter().map(|(ip, why)| (*ip, why.clone())).collect(),
            nic_secondary: rt.described.clone(),
            backing_off_ms: rt
                .retry_at
                .and_then(|t| t.checked_duration_since(Instant::now()))
                .map(|d| d.as_millis() as u64),
            api: self.stats.report(),
        }
    }
}
