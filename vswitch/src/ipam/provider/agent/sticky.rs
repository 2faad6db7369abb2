//! Sticky pods in provider mode: a pod asked for by annotation or `[ipam] sticky` pattern keeps
//! its address across deletion and re-creation, on any node, as UK8S's static StatefulSet IPs.
//!
//! - ADD: the pod's record (see [`StickyClaims`]) names its address. The record is claimed for
//!   this NIC first (compare-and-swap), then the address is found: held on this NIC (no API
//!   call), on another node's NIC (`MoveSecondaryIPMac` here), or nowhere (allocated again by
//!   name). A pod without a record gets an ordinary address, recorded before the ADD answers.
//! - DEL: the address is held on this NIC for the pod, never pooled or handed to another.
//! - The old node of a moved address sees it leave its NIC at reconcile and drops it; it never
//!   deletes or reuses it (its record names another NIC).
//! - After the claim policy with no pod, the holding node forgets the record (compare-and-swap,
//!   so a node taking it over at that moment wins or loses as a whole) and deletes the address.

use std::collections::HashSet;
use std::net::IpAddr;

use vswitch_api::api::{Attachment, PodRef};
use vswitch_api::sticky::ClaimPolicy;

use super::{now_ms, HeldAddress, PodAddress, ProviderIpam, ProviderRefusal};
use crate::ipam::error::StickyBusy;
use crate::ipam::provider::claims::{same_nic, StickyClaims};
use crate::ipam::provider::probe::FabricProbe;
use crate::ipam::provider::{PoolCall, ProviderError, VpcProvider};
use crate::ipam::store::{ClusterStore, StoreError};
use crate::ipam::IpamError;

fn unavailable(source: StoreError) -> IpamError {
    IpamError::StoreUnavailable { what: "sticky address", source }
}

impl<P: VpcProvider, S: ClusterStore, F: FabricProbe> ProviderIpam<P, S, F> {
    fn claims(&self) -> &StickyClaims<S> {
        self.claims.as_ref().expect("a pod is sticky only with claims")
    }

    /// A sticky pod's address (recorded as `owner`'s, not saved yet) and whether it is new on
    /// this NIC (to be probed before it is used).
    pub(super) async fn assign_sticky(
        &self,
        owner: &Attachment,
        pod: PodRef,
        hold: ClaimPolicy,
        in_use: &HashSet<IpAddr>,
    ) -> Result<(IpAddr, bool), IpamError> {
        let claims = self.claims();
        let nic = self.provider.nic();
        let (record, version) = claims.get(&pod).await.map_err(unavailable)?;
        let Some(record) = record else {
            let (ip, fresh) = self.take(owner, Some(pod.clone()), Some(hold), in_use).await?;
            match claims.claim(&pod, ip, nic, version).await {
                Ok(true) => {
                    tracing::info!(%ip, %pod, %hold, "sticky address recorded");
                    return Ok((ip, fresh));
                }
                outcome => {
                    self.untake(owner);
                    return Err(match outcome {
                        Err(e) => unavailable(e),
                        _ => StickyBusy::Changed { pod, ip }.into(),
                    });
                }
            }
        };
        let ip = record.ip;
        {
            let state = &self.lock().0;
            if in_use.contains(&ip) || state.pods.values().any(|p| p.ip == ip) {
                return Err(StickyBusy::StillHeld { pod, ip, node: claims.node.clone() }.into());
            }
            if state.deleting.contains(&ip) {
                return Err(StickyBusy::Changed { pod, ip }.into());
            }
        }
        // Claimed before it is touched: a node releasing it at this moment finds it changed.
        if !claims.claim(&pod, ip, nic, version).await.map_err(unavailable)? {
            return Err(StickyBusy::Changed { pod, ip }.into());
        }
        let entry = PodAddress { ip, owner: owner.clone(), pod: Some(pod.clone()), hold: Some(hold) };
        {
            let mut guard = self.lock();
            let state = &mut guard.0;
            let here = state.held.remove(&ip).is_some() | state.warm.remove(&ip) | state.cooling.remove(&ip).is_some();
            if here {
                tracing::info!(%ip, %pod, "sticky address taken back on this node");
                state.pods.insert(super::key(owner), entry);
                return Ok((ip, false));
            }
            guard.1.allocating += 1;
            guard.1.epoch += 1;
        }
        let placed = self.place_here(ip, &record.nic).await;
        self.lock().1.allocating -= 1;
        placed.map_err(|error| ProviderRefusal::Sticky { ip, error })?;
        self.lock().0.pods.insert(super::key(owner), entry);
        Ok((ip, true))
    }

    /// Undoes [`ProviderIpam::take`] whose record could not be written: the address is warm again.
    fn untake(&self, owner: &Attachment) {
        let state = &mut self.lock().0;
        if let Some(entry) = state.pods.remove(&super::key(owner)) {
            state.warm.insert(entry.ip);
        }
    }

    /// Puts `ip` on this node's NIC: where the VPC has it now (the record's NIC is a hint).
    async fn place_here(&self, ip: IpAddr, recorded_nic: &str) -> Result<(), ProviderError> {
        match self.call(PoolCall::Locate, self.provider.locate(ip)).await? {
            Some(found) if same_nic(&found.nic, self.provider.nic()) => Ok(()),
            Some(found) => {
                tracing::info!(%ip, from = %found.nic, recorded = %recorded_nic, "moving a sticky address here");
                self.call(PoolCall::Move, self.provider.move_here(ip, &found.nic)).await
            }
            None => {
                tracing::info!(%ip, "a sticky address was deleted in the VPC: allocating it again");
                self.call(PoolCall::Allocate, self.provider.allocate(Some(ip))).await.map(drop)
            }
        }
    }

    /// Held addresses whose claim policy has ended are deleted, unless another node has taken
    /// them over (they leave this NIC; reconcile drops them). One whose record is gone (an
    /// operator's release) or names another address is deleted too; `with_never`: look at the
    /// ones held "Never" for that as well.
    pub(super) async fn expire_held(&self, with_never: bool) -> Result<(), IpamError> {
        let Some(claims) = &self.claims else { return Ok(()) };
        let now = now_ms();
        let due: Vec<(IpAddr, HeldAddress)> = self
            .lock()
            .0
            .held
            .iter()
            .filter(|(_, h)| h.until_ms.map_or(with_never, |t| t <= now))
            .map(|(ip, h)| (*ip, h.clone()))
            .collect();
        if due.is_empty() {
            return Ok(());
        }
        for (ip, held) in due {
            // The store unreachable: decided on a later round.
            let Ok((record, version)) = claims.get(&held.pod).await else { continue };
            let expired = held.until_ms.is_some_and(|t| t <= now);
            let release = match record {
                Some(r) if r.ip == ip && !same_nic(&r.nic, self.provider.nic()) => false,
                Some(r) if r.ip == ip => expired && matches!(claims.forget(&held.pod, version).await, Ok(true)),
                _ => true,
            };
            let state = &mut self.lock().0;
            if release && state.held.remove(&ip).is_some() {
                tracing::info!(%ip, pod = %held.pod, policy = %held.policy, "sticky address released");
                state.deleting.insert(ip);
            }
        }
        self.save()
    }
}
