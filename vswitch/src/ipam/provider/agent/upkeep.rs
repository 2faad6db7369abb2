//! The warm pool's upkeep: how far it is from its target ([`ProviderIpam::delta`]), cooled
//! addresses back to the pool or given back, the pool filled and trimmed in batches, and the
//! queued deletes.
//!
//! The target is the provider's where it derives one (AWS: `WARM_IP_TARGET`,
//! `MINIMUM_IP_TARGET`, `WARM_ENI_TARGET` counted as its VPC CNI counts them, cooling addresses
//! included), else the configured watermarks on the warm addresses alone (UCloud).
//!
//! Giving back is paced (`decrease_interval`, AWS: 30 s as its ipamd's
//! `decreaseIPPoolInterval`): within the interval of the last round that gave back, addresses
//! beyond the target stay warm, and go back together in the first round past it.

use std::net::IpAddr;
use std::time::Instant;

use super::{now_ms, Persisted, ProviderIpam};
use crate::ipam::provider::probe::FabricProbe;
use crate::ipam::provider::{PoolCall, PoolCounts, PoolDelta, ProviderError, VpcProvider};
use crate::ipam::store::ClusterStore;
use crate::ipam::IpamError;

impl Persisted {
    fn counts(&self) -> PoolCounts {
        PoolCounts {
            assigned: self.pods.len() + self.held.len(),
            warm: self.warm.len(),
            undeliverable: self.undeliverable.len(),
            cooling: self.cooling.len(),
        }
    }
}

/// The configured watermarks: below `low` warm (undeliverable ones count: their NIC may come),
/// allocate; above `high`, give back.
fn watermark_delta(counts: PoolCounts, low: usize, high: usize) -> PoolDelta {
    PoolDelta { short: low.saturating_sub(counts.warm + counts.undeliverable), over: counts.warm.saturating_sub(high) }
}

impl<P: VpcProvider, S: ClusterStore, F: FabricProbe> ProviderIpam<P, S, F> {
    /// How far the pool in `state` is from its target.
    pub(super) fn delta(&self, state: &Persisted) -> PoolDelta {
        self.delta_of(state.counts())
    }

    fn delta_of(&self, counts: PoolCounts) -> PoolDelta {
        self.provider
            .pool_delta(counts)
            .unwrap_or_else(|| watermark_delta(counts, self.settings.warm_low, self.settings.warm_high))
    }

    /// Whether one more warm address (cooled, or found on the NIC) stays within the target.
    pub(super) fn has_room_for_one_more(&self, state: &Persisted) -> bool {
        let mut counts = state.counts();
        counts.warm += 1;
        self.delta_of(counts).over == 0
    }

    /// Whether this round may give addresses back: none did within `decrease_interval`.
    pub(super) fn may_decrease(&self) -> bool {
        self.lock().1.last_decrease.is_none_or(|t| t.elapsed() >= self.settings.decrease_interval)
    }

    /// Addresses done cooling go back to the pool, or are queued for deletion beyond its target
    /// (`may_decrease`; else they stay warm until a round may).
    pub(super) fn cool_down(&self, may_decrease: bool) {
        let mut guard = self.lock();
        let (state, rt) = &mut *guard;
        let now = now_ms();
        let cooled: Vec<IpAddr> = state.cooling.iter().filter(|(_, until)| **until <= now).map(|(ip, _)| *ip).collect();
        for ip in cooled {
            state.cooling.remove(&ip);
            if !may_decrease || self.has_room_for_one_more(state) {
                state.warm.insert(ip);
            } else {
                state.deleting.insert(ip);
                rt.last_decrease = Some(Instant::now());
            }
        }
    }

    /// The queued deletes, in as few calls as the provider batches them into.
    pub(super) async fn run_deletes(&self) -> Result<(), IpamError> {
        let mut queued: Vec<IpAddr> = self.lock().0.deleting.iter().copied().collect();
        while !queued.is_empty() {
            let done = match self.call(PoolCall::Delete, self.provider.delete_batch(&queued)).await {
                Ok(done) => done,
                Err(ProviderError::AddressGone(_)) => vec![queued[0]],
                Err(e) if e.is_transient() => return Ok(()),
                Err(e) => {
                    tracing::error!(ip = %queued[0], error = %e, "VPC refused a delete; retried next round");
                    queued.remove(0);
                    continue;
                }
            };
            if done.is_empty() {
                // A provider that deleted nothing without an error: do not spin on it.
                queued.remove(0);
                continue;
            }
            queued.retain(|ip| !done.contains(ip));
            self.lock().0.deleting.retain(|ip| !done.contains(ip));
            self.save()?;
        }
        Ok(())
    }

    /// Allocates what the pool is short of, in as few calls as the provider batches them into,
    /// then probes the new addresses together; they join the pool once probed. Reconcile stays
    /// off meanwhile (`allocating`): an allocated address is on the NIC but not yet in the
    /// state. A crash before they join leaves them to reconcile.
    pub(super) async fn fill(&self) -> Result<(), IpamError> {
        let short = self.delta(&self.lock().0).short;
        if short == 0 {
            return Ok(());
        }
        self.lock().1.allocating += 1;
        let mut allocated = Vec::new();
        while allocated.len() < short {
            match self.call(PoolCall::Allocate, self.provider.allocate_batch(short - allocated.len())).await {
                Ok(ips) if !ips.is_empty() => {
                    self.refill_allocated();
                    allocated.extend(ips)
                }
                Ok(_) => break,
                Err(e) => {
                    if !e.is_transient() {
                        self.refill_refused(&e);
                    }
                    break;
                }
            }
        }
        let checked = futures::future::join_all(allocated.iter().map(|ip| self.deliverable(*ip))).await;
        {
            let mut guard = self.lock();
            guard.1.allocating -= 1;
            guard.1.epoch += 1;
            for (ip, check) in allocated.into_iter().zip(checked) {
                match check {
                    Ok(()) => guard.0.warm.insert(ip),
                    Err(why) => guard.0.undeliverable.insert(ip, why).is_none(),
                };
            }
        }
        self.save()
    }

    /// Warns of a refused refill once while the refusal stays the same (an ENI's NIC absent for
    /// minutes would warn every round); repeats are logged at debug.
    fn refill_refused(&self, e: &ProviderError) {
        let why = e.to_string();
        let mut guard = self.lock();
        let rt = &mut guard.1;
        if rt.refill_refused.as_deref() == Some(why.as_str()) {
            tracing::debug!(error = %e, "VPC still refuses a warm address");
        } else {
            tracing::warn!(error = %e, "VPC refused a warm address (said again only once it changes or an allocation succeeds)");
            rt.refill_refused = Some(why);
        }
    }

    /// Ends a refused refill's quiet (said once).
    fn refill_allocated(&self) {
        if let Some(why) = self.lock().1.refill_refused.take() {
            tracing::info!(before = %why, "VPC allocates warm addresses again");
        }
    }

    /// Warm addresses beyond the target are queued for deletion (`may_decrease`), then deleted
    /// together.
    pub(super) async fn trim(&self, may_decrease: bool) -> Result<(), IpamError> {
        {
            let mut guard = self.lock();
            let (state, rt) = &mut *guard;
            let over = self.delta(state).over.min(state.warm.len());
            if over == 0 {
                return Ok(());
            }
            if !may_decrease {
                tracing::debug!(over, "warm pool above its target: given back once the decrease interval is over");
                return Ok(());
            }
            tracing::debug!(over, "warm pool above its target");
            rt.last_decrease = Some(Instant::now());
            for _ in 0..over {
                let ip = state.warm.pop_last().expect("counted");
                state.deleting.insert(ip);
            }
        }
        self.save()?;
        self.run_deletes().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_watermarks_count_warm_addresses_alone() {
        let counts = PoolCounts { assigned: 5, warm: 1, undeliverable: 1, cooling: 9 };
        assert_eq!(watermark_delta(counts, 4, 8), PoolDelta { short: 2, over: 0 }, "cooling ones do not count");
        let counts = PoolCounts { warm: 10, ..counts };
        assert_eq!(watermark_delta(counts, 4, 8), PoolDelta { short: 0, over: 2 });
    }
}
