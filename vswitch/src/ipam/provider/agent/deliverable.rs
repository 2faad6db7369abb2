//! Whether this node can deliver an address of its provider: an address of a NIC that is not in
//! the node (an ENI attached but not brought up, a wrong `nic_mac`) is kept in the VPC but never
//! served, set aside as undeliverable until its NIC comes; a new address is served once the
//! fabric delivers it (the fabric probe).

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::time::Instant;

use super::{Persisted, ProviderIpam};
use crate::ipam::provider::probe::{FabricProbe, ProbeError};
use crate::ipam::provider::VpcProvider;
use crate::ipam::store::ClusterStore;

impl<P: VpcProvider, S: ClusterStore, F: FabricProbe> ProviderIpam<P, S, F> {
    /// The MAC the fabric probe would send from for `ip`: `None` where the provider's fabric
    /// proves nothing ([`VpcProvider::fabric_probe_mac`]) or the probe is off (zero timeout).
    async fn probe_mac(&self, ip: IpAddr) -> Option<String> {
        if self.settings.fabric_probe_timeout.is_zero() {
            return None;
        }
        self.provider.fabric_probe_mac(ip).await
    }

    /// Why `ip` cannot be delivered from `mac`: no interface of this node has it.
    fn missing_interface(&self, ip: IpAddr, mac: &str) -> Option<String> {
        (!self.probe.has_interface(mac))
            .then(|| format!("the NIC holding {ip} is not present in this node: no interface has its MAC {mac}"))
    }

    /// Why this node cannot deliver `ip`: the provider says its NIC is not in the node, or (when
    /// probed) no interface has the probe's MAC; `None`: nothing known against it.
    pub(super) async fn absence(&self, ip: IpAddr) -> Option<String> {
        if let Some(why) = self.provider.undeliverable(ip).await {
            return Some(why);
        }
        let mac = self.probe_mac(ip).await?;
        self.missing_interface(ip, &mac)
    }

    /// Whether this node can deliver a new address `ip`: not where the provider says its NIC is
    /// not in the node ([`VpcProvider::undeliverable`]) nor where no interface has the probe's
    /// MAC; else once the fabric delivers it, bounded by the probe's timeout (measured). A probe
    /// that times out or fails otherwise only warns: the address is used anyway. Not probed
    /// where the provider's fabric proves nothing ([`VpcProvider::fabric_probe_mac`]), nor with
    /// a zero timeout (`ipam.ucloud.fabric_probe_timeout_ms = 0`). `Err`: why not.
    pub(super) async fn deliverable(&self, ip: IpAddr) -> Result<(), String> {
        // The provider's verdict, then the probe's MAC asked once (it may take the provider's lock).
        let not_served = |why: String| {
            tracing::warn!(%ip, "{why}: the address is not served");
            Err(why)
        };
        if let Some(why) = self.provider.undeliverable(ip).await {
            return not_served(why);
        }
        let Some(nic) = self.probe_mac(ip).await else { return Ok(()) };
        if let Some(why) = self.missing_interface(ip, &nic) {
            return not_served(why);
        }
        let started = Instant::now();
        let result = self.probe.probe(&nic, ip, self.settings.fabric_probe_timeout).await;
        self.stats.record_probe(ip, started.elapsed(), &result);
        match result {
            Ok(()) => {
                tracing::debug!(%ip, ms = started.elapsed().as_millis() as u64, "the fabric delivers a new address")
            }
            Err(e @ ProbeError::NoInterface(_)) => {
                tracing::warn!(%ip, error = %e, "the address's NIC is not in this node: not served");
                return Err(format!("the NIC holding {ip} is not present in this node: {e}"));
            }
            Err(e) => tracing::warn!(%ip, error = %e, "fabric probe failed: the address is used anyway"),
        }
        Ok(())
    }

    /// Warm addresses whose NIC left the node become undeliverable; undeliverable ones whose NIC
    /// is in the node again become warm (`absent`: the NIC-less addresses of `on_nic`); those
    /// the VPC no longer has are dropped. Neither kind is deleted: the NIC may come (EC2 shows an
    /// attached ENI in the instance seconds later), and deleting would only make room for
    /// another allocation onto the same NIC.
    pub(super) fn sort_undeliverable(
        &self,
        state: &mut Persisted,
        on_nic: &BTreeSet<IpAddr>,
        absent: &BTreeMap<IpAddr, String>,
    ) {
        state.undeliverable.retain(|ip, _| on_nic.contains(ip));
        for (ip, why) in absent {
            if state.warm.remove(ip) {
                tracing::warn!(%ip, "{why}: taken out of the warm pool");
                state.undeliverable.insert(*ip, why.clone());
            }
        }
        let back: Vec<IpAddr> = state.undeliverable.keys().filter(|ip| !absent.contains_key(ip)).copied().collect();
        for ip in back {
            tracing::info!(%ip, "its NIC is in the node now: back in the warm pool");
            state.undeliverable.remove(&ip);
            state.warm.insert(ip);
        }
    }
}
