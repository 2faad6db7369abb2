//! The node's addresses against the VPC's view, every few upkeep rounds: what the NIC holds
//! that nobody here does is adopted into the pool (or deleted beyond its target, or set aside
//! while it cannot be delivered); what the state holds that the NIC no longer has is dropped.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::time::Instant;

use super::{key, ProviderIpam};
use crate::ipam::provider::probe::FabricProbe;
use crate::ipam::provider::{PoolCall, VpcProvider};
use crate::ipam::store::ClusterStore;
use crate::ipam::IpamError;

impl<P: VpcProvider, S: ClusterStore, F: FabricProbe> ProviderIpam<P, S, F> {
    /// Compares the NIC's secondary IPs with the state: unknown ones are adopted into the pool
    /// (or deleted beyond its target); pool addresses the VPC no longer has are dropped.
    pub async fn reconcile(&self) -> Result<(), IpamError> {
        let epoch = {
            let guard = self.lock();
            if guard.1.allocating > 0 {
                return Ok(());
            }
            guard.1.epoch
        };
        let Ok(listed) = self.call(PoolCall::Describe, self.provider.describe()).await else { return Ok(()) };
        let mut absent = BTreeMap::new();
        for ip in &listed {
            if let Some(why) = self.absence(*ip).await {
                absent.insert(*ip, why);
            }
        }
        {
            let mut guard = self.lock();
            let (state, rt) = &mut *guard;
            rt.last_reconcile = Some(Instant::now());
            rt.described = Some(listed.clone());
            if rt.allocating > 0 || rt.epoch != epoch {
                return Ok(());
            }
            let on_nic: BTreeSet<IpAddr> = listed.iter().copied().collect();
            for gone in state.warm.iter().filter(|ip| !on_nic.contains(ip)).copied().collect::<Vec<_>>() {
                tracing::warn!(ip = %gone, "warm address deleted out of band: dropped from the pool");
                state.warm.remove(&gone);
            }
            state.cooling.retain(|ip, _| on_nic.contains(ip));
            self.sort_undeliverable(state, &on_nic, &absent);
            state.deleting.retain(|ip| on_nic.contains(ip));
            // Taken over by another node (MoveSecondaryIPMac) or deleted: no longer ours to hold.
            state.held.retain(|ip, h| {
                on_nic.contains(ip) || {
                    tracing::info!(%ip, pod = %h.pod, "held sticky address left this NIC: dropped");
                    false
                }
            });
            for p in state.pods.values().filter(|p| !on_nic.contains(&p.ip)) {
                tracing::error!(ip = %p.ip, owner = %key(&p.owner), "a pod's address is not on this NIC in the VPC");
            }
            for ip in on_nic.iter().filter(|ip| !state.knows(**ip)).copied().collect::<Vec<_>>() {
                if let Some(why) = absent.get(&ip) {
                    tracing::warn!(%ip, "an address of this node nobody held: {why}; not served");
                    state.undeliverable.insert(ip, why.clone());
                } else if self.has_room_for_one_more(state) {
                    tracing::info!(%ip, "adopted an address of this NIC nobody held into the pool");
                    state.warm.insert(ip);
                } else {
                    tracing::info!(%ip, "deleting an address of this NIC nobody held");
                    state.deleting.insert(ip);
                }
            }
        }
        self.save()?;
        self.run_deletes().await?;
        if self.provider.collects_leaked_nics() {
            // Errors are counted and logged by `call`; the next round tries again.
            let _ = self.call(PoolCall::CollectLeakedNics, self.provider.collect_leaked_nics()).await;
        }
        Ok(())
    }
}
