//! The edge between the API's types and the core's: the pod spec a request carries becomes the
//! registry's, and registry records, counters and drop samples become the views replies carry.

use std::time::Duration;

use fib::AnyPrefix;
use vswitch_api::api::{
    self, CountersView, DropSampleView, NeighborView, PortCounters, PortSpec, PortView, RouteView, StatusView,
};

use super::errors::RequestError;
use super::workers::Counters;
use crate::control::registry::{
    BandwidthLimits, LinkState, PodAddresses, PodName, PodSpec, PortRecord, Rate, Registry, RouteOrigin,
};
use crate::datapath::drop_sampler::DropSample;
use crate::datapath::PortTotals;
use crate::pipeline::DropReason;
use crate::state::{NextHop, PortRole};

impl From<PortSpec> for PodSpec {
    fn from(spec: PortSpec) -> PodSpec {
        let rate =
            |r: Option<api::RateLimit>| r.map(|r| Rate { bits_per_second: r.rate_bps, burst_bits: r.burst_bits });
        PodSpec {
            name: spec.name,
            netns: spec.netns,
            ifname: spec.ifname,
            addresses: PodAddresses { ip: spec.ip, ipv6: spec.ipv6 },
            mac: spec.mac,
            mtu: spec.mtu,
            pod: spec.pod.map(|p| PodName { namespace: p.namespace, name: p.name }),
            bandwidth: spec.bandwidth.map(|b| BandwidthLimits { ingress: rate(b.ingress), egress: rate(b.egress) }),
        }
    }
}

/// A prefix a request (or the state file) writes as text.
pub fn prefix(text: &str) -> Result<AnyPrefix, RequestError> {
    text.parse().map_err(|source| RequestError::Prefix { prefix: text.into(), source })
}

pub fn pod_ref(pod: &PodName) -> api::PodRef {
    api::PodRef { namespace: pod.namespace.clone(), name: pod.name.clone() }
}

fn bandwidth(limits: BandwidthLimits) -> api::Bandwidth {
    let rate = |r: Option<Rate>| r.map(|r| api::RateLimit { rate_bps: r.bits_per_second, burst_bits: r.burst_bits });
    api::Bandwidth { ingress: rate(limits.ingress), egress: rate(limits.egress) }
}

// The API lists the datapath's reasons in the same order: a reason added to one and not the
// other stops the build here, and the test below checks the names.
const _: () = assert!(api::DropReason::ALL.len() == DropReason::COUNT);

pub fn drop_reason(reason: DropReason) -> api::DropReason {
    api::DropReason::ALL[reason as usize]
}

fn route_origin(origin: RouteOrigin) -> api::RouteOrigin {
    match origin {
        RouteOrigin::Port => api::RouteOrigin::Port,
        RouteOrigin::Config => api::RouteOrigin::Config,
        RouteOrigin::Api => api::RouteOrigin::Api,
    }
}

fn port_counters(c: PortTotals) -> PortCounters {
    PortCounters {
        rx_packets: c.rx_packets,
        rx_bytes: c.rx_bytes,
        tx_packets: c.tx_packets,
        tx_bytes: c.tx_bytes,
        rx_dropped: c.rx_dropped,
        tx_segmented: c.tx_segmented,
    }
}

pub fn port(p: &PortRecord, counters: &Counters) -> PortView {
    let role = match p.info.role {
        PortRole::Pod { ip, ipv6, mac } => api::PortRole::Pod { ip, ipv6, mac },
        PortRole::Host { peer_mac } => api::PortRole::Host { peer_mac },
        PortRole::Uplink { mac, .. } => api::PortRole::Uplink { mac },
    };
    PortView {
        id: p.info.id,
        name: p.info.name.clone(),
        role,
        mtu: p.info.mtu,
        netns: p.attachment.netns.clone(),
        ifname: p.attachment.ifname.clone(),
        pod: p.attachment.pod.as_ref().map(pod_ref),
        bandwidth: p.attachment.bandwidth.map(bandwidth),
        link: match p.link {
            LinkState::Up => api::LinkState::Up,
            LinkState::Gone => api::LinkState::Gone,
        },
        counters: port_counters(counters.port_totals(p.info.id).since(p.baseline)),
    }
}

pub fn ports(registry: &Registry, counters: &Counters) -> Vec<PortView> {
    registry.ports().map(|p| port(p, counters)).collect()
}

pub fn routes(registry: &Registry) -> Vec<RouteView> {
    registry
        .routes()
        .filter_map(|(prefix, r)| {
            let adj = registry.adjacency(r.adjacency)?;
            let protocol = if matches!(prefix, AnyPrefix::V4(_)) { "arp" } else { "ndp" };
            let next_hop = match adj.next_hop {
                NextHop::Mac(mac) => mac.to_string(),
                NextHop::Resolve { via: Some(via) } => format!("{protocol} {via}"),
                NextHop::Resolve { via: None } => protocol.to_string(),
            };
            Some(RouteView {
                prefix: prefix.to_string(),
                port: registry.record(r.port).info.name.clone(),
                next_hop,
                mtu: adj.mtu,
                origin: route_origin(r.origin),
            })
        })
        .collect()
}

pub fn neighbors(registry: &Registry) -> Vec<NeighborView> {
    let port = registry.uplink().map_or_else(String::new, |u| u.info.name.clone());
    registry
        .neighbors()
        .list()
        .into_iter()
        .map(|n| NeighborView { ip: n.ip, mac: n.mac, port: port.clone(), state: n.state.to_string() })
        .collect()
}

pub fn status(registry: &Registry, workers: usize, uptime: Duration) -> StatusView {
    StatusView {
        version: env!("CARGO_PKG_VERSION").to_string(),
        uptime_seconds: uptime.as_secs(),
        ports: registry.ports().count(),
        routes: registry.routes().count(),
        workers,
        generation: registry.generation(),
    }
}

pub fn counters(registry: &Registry, counters: &Counters) -> CountersView {
    CountersView {
        ports: ports(registry, counters).into_iter().map(|p| (p.name, p.counters)).collect(),
        drops: counters.drops().into_iter().map(|(r, n)| (drop_reason(r), n)).collect(),
        fib_routes: registry.fib_routes(),
        neighbors: registry.neighbors().len(),
    }
}

/// Sampled drops with the names of their ports and pods.
pub fn drop_samples(samples: Vec<DropSample>, registry: &Registry) -> Vec<DropSampleView> {
    samples
        .into_iter()
        .map(|s| {
            let record = registry.ports().find(|p| p.info.id == s.port);
            DropSampleView {
                seq: s.seq,
                unix_ms: s.unix_ms,
                port: record.map_or_else(|| s.port.to_string(), |r| r.info.name.clone()),
                pod: record.and_then(|r| r.attachment.pod.as_ref().map(pod_ref)),
                reason: drop_reason(s.reason),
                src: s.src,
                dst: s.dst,
                protocol: s.protocol.map(|p| match p {
                    1 => "icmp".to_string(),
                    6 => "tcp".to_string(),
                    17 => "udp".to_string(),
                    other => other.to_string(),
                }),
                src_port: s.ports.map(|p| p.0),
                dst_port: s.ports.map(|p| p.1),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_drop_reason_has_its_metric_label_on_the_wire() {
        for &reason in DropReason::ALL {
            assert_eq!(drop_reason(reason).to_string(), reason.name(), "{reason:?}");
        }
    }
}
