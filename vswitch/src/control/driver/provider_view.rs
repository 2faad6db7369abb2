//! `vswitchctl ipam` in provider mode: the pool's report as the API's [`IpamView`].

use vswitch_api::api::{ApiCallView, FabricProbeView, IpamView, LocalIpamView, ProviderView, StickyView};

use crate::ipam::provider::{ProviderIpam, VpcProvider};
use crate::ipam::store::ClusterStore;

pub fn view<P: VpcProvider, S: ClusterStore>(provider: &ProviderIpam<P, S>) -> IpamView {
    let r = provider.report();
    // Held for a sticky pod; `until` in seconds since the epoch, u64::MAX for "Never".
    let sticky = r
        .held
        .iter()
        .map(|(ip, h)| StickyView {
            ip: *ip,
            pod: h.pod.clone(),
            until: h.until_ms.map_or(u64::MAX, |ms| ms / 1000),
            last_node: r.nic.clone(),
        })
        .collect();
    let api_up = r.api.healthy != Some(false);
    IpamView {
        node: r.nic.clone(),
        store: format!("{} VPC API (NIC {})", r.provider, r.nic),
        store_reachable: api_up,
        store_error: if api_up { None } else { r.api.last_errors.last().cloned() },
        pools: Vec::new(),
        exclude: Vec::new(),
        pool_size: 0,
        free: 0,
        nodes: Vec::new(),
        sticky,
        cooling: Vec::new(),
        this_node: LocalIpamView {
            warm: r.warm.len() as u64,
            warm_target: 0,
            assigned: r.pods.len() as u64,
            pending_sync: r.deleting.len() as u64,
            fenced_total: 0,
        },
        provider: Some(ProviderView {
            provider: r.provider,
            nic: r.nic,
            // The caller knows the concrete provider (`AnyProvider::identity`).
            identity: None,
            warm: r.warm,
            cooling: r.cooling,
            deleting: r.deleting,
            undeliverable: r.undeliverable,
            nic_secondary: r.nic_secondary,
            api_healthy: r.api.healthy,
            backing_off_ms: r.backing_off_ms,
            last_errors: r.api.last_errors,
            fabric_probe: r.api.fabric_probe.last.as_ref().map(|last| FabricProbeView {
                last_ip: last.ip,
                last_ms: (last.seconds * 1e3).round() as u64,
                last_result: last.result.into(),
                probes: r.api.fabric_probe.count,
                total_ms: (r.api.fabric_probe.sum_seconds * 1e3).round() as u64,
                timeouts: r.api.fabric_probe.timeouts,
                errors: r.api.fabric_probe.errors,
            }),
            calls: r
                .api
                .calls
                .into_iter()
                .map(|(action, result, c)| ApiCallView {
                    action,
                    result,
                    calls: c.calls,
                    millis: (c.seconds * 1000.0) as u64,
                })
                .collect(),
        }),
    }
}
