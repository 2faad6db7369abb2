//! The request side: what CNI ADD, DEL, GC and lookups ask of the node. ADD and DEL change only
//! the local state (no store round trip) except where they cannot wait: a warm pool that ran
//! dry, a sticky pod's address, an address asked for by name.

use std::collections::HashSet;
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use vswitch_api::api::{Attachment, PodRef};

use super::state::{LocalEntry, NodeState};
use super::warm;
use crate::ipam::error::{Conflict, Holder, InvalidRequest, IpamError, StickyBusy};
use crate::ipam::pool::Family;
use crate::ipam::record::{now_secs, AddressRecord};
use crate::ipam::request::{AddressRequest, Assigned};
use crate::ipam::store::{ClusterStore, StoreError};

/// One port's address as vswitchd knows it from the port itself: address, attachment, pod and
/// network namespace.
pub type PortAddress = (IpAddr, Attachment, Option<PodRef>, PathBuf);

#[derive(Debug)]
pub struct Requests<S: ClusterStore> {
    state: Arc<NodeState<S>>,
}

fn unavailable(what: &'static str) -> impl FnOnce(StoreError) -> IpamError {
    move |source| IpamError::StoreUnavailable { what, source }
}

impl<S: ClusterStore> Requests<S> {
    pub(super) fn new(state: Arc<NodeState<S>>) -> Requests<S> {
        Requests { state }
    }

    /// Waits (at most `bound`) for this process's first upkeep round, so that a claim written
    /// just before a crash is known before requests are answered.
    pub async fn settled(&self, bound: Duration) {
        self.state.settled(bound).await
    }

    /// The attachment's addresses here, IPv4 first (empty: none).
    pub fn lookup(&self, owner: &Attachment) -> Vec<IpAddr> {
        self.state.lookup(owner)
    }

    /// The attachments that hold an address of this node (each once).
    fn owners(&self) -> Vec<Attachment> {
        let mut owners: Vec<Attachment> = Vec::new();
        for owner in self.state.local().entries.values().filter_map(LocalEntry::owner) {
            if !owners.contains(owner) {
                owners.push(owner.clone());
            }
        }
        owners
    }

    /// The families an ADD gets, IPv4 first, each with the specific address asked for if any:
    /// those the request names, or every family the pool holds.
    fn wanted(&self, request: &AddressRequest) -> Result<Vec<(Family, Option<IpAddr>)>, IpamError> {
        let settings = self.state.settings();
        let held = settings.pool.families();
        let asked: Vec<Family> = Family::ALL.into_iter().filter(|f| request.asks_for(*f, &held)).collect();
        if let Some(missing) = asked.iter().find(|f| !held.contains(f)) {
            return Err(InvalidRequest::FamilyNotInPool { pools: settings.pool_list(), family: *missing }.into());
        }
        if let Some(ip) = Family::ALL.into_iter().filter(|f| !asked.contains(f)).find_map(|f| request.specific(f)) {
            return Err(InvalidRequest::UnaskedFamily(ip).into());
        }
        Ok(asked.into_iter().map(|family| (family, request.specific(family))).collect())
    }

    /// The addresses for an ADD, one per family wanted, IPv4 first; all or nothing. A repeated
    /// ADD gets what the attachment has (and any family it still lacks). `in_use`: addresses
    /// ports of this node hold (never handed out).
    pub async fn assign(&self, request: &AddressRequest, in_use: &HashSet<IpAddr>) -> Result<Assigned, IpamError> {
        if let Some(conflict) = self.state.pool_conflict() {
            return Err(conflict.into());
        }
        let wanted = self.wanted(request)?;
        let held = self.lookup(&request.owner);
        let has = |family: Family| held.iter().copied().find(|ip| Family::of(ip) == family);
        for (family, specific) in &wanted {
            if let (Some(has), Some(asked)) = (has(*family), *specific) {
                if has != asked {
                    let container_id = request.owner.container_id.clone();
                    return Err(Conflict::AlreadyHas { container_id, has, asked }.into());
                }
            }
        }
        let missing: Vec<(Family, Option<IpAddr>)> = wanted.into_iter().filter(|(f, _)| has(*f).is_none()).collect();
        if missing.is_empty() {
            return Ok(Assigned { ips: held, new: false });
        }
        let mut taken = Vec::new();
        for (family, specific) in missing {
            let got = match specific {
                Some(ip) => self.assign_specific(request, ip, in_use).await,
                None if self.is_sticky(request.pod.as_ref()) => self.assign_sticky(request, family, in_use).await,
                None => self.assign_warm(request, family, in_use).await,
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
        tracing::info!(ips = ?taken, owner = %request.owner.container_id, pod = ?request.pod, "addresses assigned");
        let mut ips = held;
        ips.extend(taken);
        ips.sort();
        Ok(Assigned { ips, new: true })
    }

    fn is_sticky(&self, pod: Option<&PodRef>) -> bool {
        pod.is_some_and(|p| self.state.settings().is_sticky(p))
    }

    fn assigned_record(&self, request: &AddressRequest) -> AddressRecord {
        AddressRecord::Assigned {
            node: self.state.node().to_string(),
            owner: request.owner.clone(),
            pod: request.pod.clone(),
            since: now_secs(),
        }
    }

    /// Takes a warm address of `family` for `request` in the local state (no store round trip).
    fn take_warm(&self, request: &AddressRequest, family: Family, in_use: &HashSet<IpAddr>) -> Option<IpAddr> {
        let mut local = self.state.local();
        let ip = local
            .entries
            .iter()
            .find(|(ip, e)| Family::of(ip) == family && e.is_warm() && !in_use.contains(*ip))
            .map(|(ip, _)| *ip)?;
        self.assign_entry(local.entries.get_mut(&ip).expect("found above"), request);
        Some(ip)
    }

    /// Turns a warm entry into the request's (the store learns it in the next round).
    fn assign_entry(&self, entry: &mut LocalEntry, request: &AddressRequest) {
        entry.record = self.assigned_record(request);
        entry.dirty = true;
        entry.netns = Some(request.netns.clone());
    }

    /// An address of `family` from the warm pool, or claimed for this ADD when it is empty.
    async fn assign_warm(
        &self,
        request: &AddressRequest,
        family: Family,
        in_use: &HashSet<IpAddr>,
    ) -> Result<IpAddr, IpamError> {
        let stats = self.state.stats();
        if let Some(since) = self.state.self_fenced() {
            stats.refused_unavailable.fetch_add(1, Ordering::Relaxed);
            let detail = format!(
                "no lease renewal for {}s (over {}s, when another node may reclaim this node's addresses)",
                since.as_secs(),
                self.state.fence_after().as_secs()
            );
            return Err(unavailable("the warm pool is fenced off")(StoreError(detail)));
        }
        if let Some(ip) = self.take_warm(request, family, in_use) {
            self.state.save().await?;
            stats.assigned_from_warm.fetch_add(1, Ordering::Relaxed);
            // Refill (and tell the store) now rather than at the next round.
            self.state.kick();
            return Ok(ip);
        }
        // The warm pool is empty (ADDs faster than it refills): claim one for this ADD alone,
        // straight as assigned, and have the pool refilled behind it.
        self.state.kick();
        let record = self.assigned_record(request);
        let wanted = warm::Wanted {
            family,
            record: &record,
            also_skip: in_use,
            netns: Some(request.netns.clone()),
            until: None,
        };
        match warm::claim(&self.state, &wanted, 1).await {
            Ok(won) => match won.first() {
                Some(&(ip, _)) => {
                    self.state.save().await?;
                    stats.assigned_from_store.fetch_add(1, Ordering::Relaxed);
                    Ok(ip)
                }
                None => Err(IpamError::Exhausted { family, pools: self.state.settings().pool_list() }),
            },
            Err(e) => {
                stats.refused_unavailable.fetch_add(1, Ordering::Relaxed);
                Err(unavailable("the warm pool is empty")(e))
            }
        }
    }

    /// Writes one entry to the store now (sticky pods and specific addresses cannot wait).
    async fn sync_now(&self, ip: IpAddr) -> Result<(), StoreError> {
        let mut fenced = Vec::new();
        if let Some((ip, entry)) = self.state.pending(Some(ip)).await?.first() {
            let synced = self.state.sync_entry(*ip, entry, &mut fenced).await;
            drop(self.state.save().await);
            synced?;
        }
        if fenced.is_empty() && self.state.local().entries.get(&ip).is_some_and(|e| !e.dirty) {
            Ok(())
        } else {
            Err(StoreError(format!("{ip} changed owner in the store")))
        }
    }

    /// A sticky pod's address of `family`: the one it kept (from any node), or a new one
    /// recorded as its own.
    async fn assign_sticky(
        &self,
        request: &AddressRequest,
        family: Family,
        in_use: &HashSet<IpAddr>,
    ) -> Result<IpAddr, IpamError> {
        let pod = request.pod.clone().expect("sticky pods have a name");
        let (store, keys) = (self.state.store(), self.state.keys());
        let index_key = keys.sticky(&pod, family);
        let index = store.get(&index_key).await.map_err(unavailable("sticky address"))?;
        let kept = index.and_then(|e| std::str::from_utf8(&e.value).ok()?.parse::<IpAddr>().ok());
        if let Some(ip) = kept.filter(|ip| Family::of(ip) == family) {
            let current = store.get(&keys.ip(ip)).await.map_err(unavailable("sticky address"))?;
            match current.as_ref().and_then(|e| Some((AddressRecord::decode(&e.value)?, e.version))) {
                Some((AddressRecord::Sticky { pod: held, .. }, version)) if held == pod => {
                    return match self.take_from_store(request, ip, version).await? {
                        Some(ip) => {
                            tracing::info!(%ip, %pod, "sticky address taken over");
                            Ok(ip)
                        }
                        None => Err(StickyBusy::Changed { pod, ip }.into()),
                    };
                }
                Some((AddressRecord::Assigned { pod: Some(held), node, .. }, _)) if held == pod => {
                    return Err(StickyBusy::StillHeld { pod, ip, node }.into())
                }
                // The pod's hold ended and the address went to someone else: a new one.
                _ => {}
            }
        }
        let ip = self.assign_warm(request, family, in_use).await?;
        if let Err(e) = self.sync_now(ip).await {
            self.undo_assign(ip).await;
            return Err(unavailable("sticky address")(e));
        }
        if let Err(e) = store.put(&index_key, ip.to_string().into_bytes()).await {
            // The record names the pod; the index is written again when the pod is released.
            tracing::warn!(%ip, %pod, error = %e, "sticky index not written yet");
        }
        Ok(ip)
    }

    /// Back to the warm pool (an ADD that could not finish).
    async fn undo_assign(&self, ip: IpAddr) {
        if let Some(entry) = self.state.local().entries.get_mut(&ip) {
            entry.record = AddressRecord::Warm { node: self.state.node().to_string(), since: now_secs() };
            entry.netns = None;
            entry.dirty = true;
        }
        let _ = self.state.save().await;
    }

    /// A specific address (static IP): from the warm pool, or claimed in the store right away.
    /// A released address may be asked for by name before its reuse delay is over.
    async fn assign_specific(
        &self,
        request: &AddressRequest,
        ip: IpAddr,
        in_use: &HashSet<IpAddr>,
    ) -> Result<IpAddr, IpamError> {
        if !self.state.settings().pool.contains(ip) {
            return Err(InvalidRequest::NotInPool(ip).into());
        }
        let taken = |by: Holder| IpamError::from(Conflict::InUse { ip, by });
        if in_use.contains(&ip) {
            return Err(taken(Holder::Port));
        }
        let known = {
            let mut local = self.state.local();
            match local.entries.get_mut(&ip) {
                Some(entry) if entry.is_warm() => {
                    self.assign_entry(entry, request);
                    true
                }
                Some(entry) => return Err(taken(Holder::Local(entry.owner().map(|o| o.container_id.clone())))),
                None => false,
            }
        };
        if known {
            self.state.save().await?;
            return Ok(ip);
        }
        let current = self.state.store().get(&self.state.keys().ip(ip)).await.map_err(unavailable("static address"))?;
        let version = match current.as_ref().map(|e| (AddressRecord::decode(&e.value), e.version)) {
            None => 0,
            Some((Some(AddressRecord::Cooling { .. }), version)) => version,
            Some((Some(AddressRecord::Sticky { pod, .. }), version)) if Some(&pod) == request.pod.as_ref() => version,
            Some((Some(record), _)) => {
                let node = record.node().map(str::to_string);
                return Err(taken(Holder::Record { node, state: record.state_name() }));
            }
            Some((None, _)) => return Err(taken(Holder::Unreadable)),
        };
        self.take_from_store(request, ip, version).await?.ok_or_else(|| taken(Holder::Raced))
    }

    /// Assigns `ip` to `request` by a CAS from the record's `version`, then records it locally.
    /// `Ok(None)`: the record changed meanwhile, or this node is writing it already.
    async fn take_from_store(
        &self,
        request: &AddressRequest,
        ip: IpAddr,
        version: i64,
    ) -> Result<Option<IpAddr>, IpamError> {
        // Another write of this node for it is under way (or in doubt): raced.
        let Some(_hold) = self.state.hold(ip) else { return Ok(None) };
        let record = self.assigned_record(request);
        self.state.index(ip).await.map_err(unavailable("taking the address"))?;
        let written = self.state.store().put_if(&self.state.keys().ip(ip), record.encode(), version).await;
        let version = match written {
            Ok(Some(version)) => version,
            Ok(None) => {
                self.state.unindex(ip).await.map_err(unavailable("taking the address"))?;
                return Ok(None);
            }
            Err(e) => {
                // It may be this node's now: looked up again, and then found by the retried ADD.
                self.state.unsure_about(ip);
                return Err(unavailable("taking the address")(e));
            }
        };
        let entry = LocalEntry { record, version, dirty: false, netns: Some(request.netns.clone()) };
        self.state.local().entries.insert(ip, entry);
        self.state.save().await?;
        self.state.stats().assigned_from_store.fetch_add(1, Ordering::Relaxed);
        Ok(Some(ip))
    }

    /// Gives the attachment's addresses back: cooling (free after the reuse delay) or, for a
    /// sticky pod, held for it. The store learns it on the next upkeep round.
    pub async fn release(&self, owner: &Attachment) -> Result<Vec<IpAddr>, IpamError> {
        self.state.release(owner).await
    }

    /// CNI GC: releases every address held by an attachment not in `keep`.
    pub async fn gc(&self, keep: &[Attachment]) -> Result<Vec<IpAddr>, IpamError> {
        let stale: Vec<Attachment> = self.owners().into_iter().filter(|o| !keep.contains(o)).collect();
        let mut released = Vec::new();
        for owner in stale {
            released.extend(self.release(&owner).await?);
        }
        Ok(released)
    }

    /// Records addresses that ports of this node hold but the local state does not know (its
    /// file was lost): they are this node's until the store says otherwise.
    pub async fn adopt_ports(&self, ports: &[PortAddress]) {
        let mut changed = false;
        {
            let mut local = self.state.local();
            for (ip, owner, pod, netns) in ports {
                if !self.state.settings().pool.contains(*ip) || local.entries.contains_key(ip) {
                    continue;
                }
                let record = AddressRecord::Assigned {
                    node: self.state.node().to_string(),
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
            let _ = self.state.save().await;
        }
    }
}
