//! The forwarding state the workers read: ports, adjacencies and the FIB.
//!
//! The control plane builds a new [`ForwardingState`] for every change and publishes it whole
//! (an `ArcSwap`); workers load it once per batch and never lock. The FIBs (one per family) are
//! the `fib` crate's tables, whose own publish makes route changes visible; each maps a
//! destination to an index into the one `adjacencies` table. Adjacency indices are never reused while the daemon runs, so a worker holding a
//! slightly older FIB view can only find a missing adjacency (a counted drop), never a wrong one.
//! Each port's bandwidth limits ([`rate_limit`]) ride in its [`PortInfo`]: the token buckets the
//! datapath's shaper charges, carried from snapshot to snapshot.

mod rate_limit;

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::Arc;

use fib::{Fib, FibReader, FibView, Ipv4Prefix, Ipv6Prefix};
use serde::{Deserialize, Serialize};

use crate::wire::MacAddr;

pub use rate_limit::{PortRateLimit, RateLimitConfig, TokenBucket};

/// A port's index in [`ForwardingState::ports`] and in every worker's queue table.
pub type PortId = u16;

/// Ports a switch can hold (sizes the per-port counter arrays).
pub const MAX_PORTS: usize = 4096;

/// What a port connects, which decides what the pipeline checks and answers on it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "role", rename_all = "snake_case")]
pub enum PortRole {
    /// A pod's eth0: may only send from `mac`, and from `ip`, `ipv6` and the link-local address
    /// of `mac` (at least one of the two addresses is set).
    Pod {
        #[serde(default)]
        ip: Option<Ipv4Addr>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        ipv6: Option<Ipv6Addr>,
        mac: MacAddr,
    },
    /// The node's own stack (a TAP in the node namespace); `peer_mac` is the kernel side's MAC.
    Host { peer_mac: MacAddr },
    /// A NIC dedicated to pod traffic, on the VPC subnet; `mac` is the NIC's own MAC, which the
    /// switch uses as its address there (it answers ARP and neighbour solicitations for local
    /// pods with it). `ip` and `ipv6` are the NIC's own addresses, the sources of the ICMP errors
    /// the switch sends out of it: the pods' gateway addresses are link-local, and VPC hosts drop
    /// packets from them. Without one, no ICMP error of that family leaves through the uplink.
    Uplink {
        mac: MacAddr,
        #[serde(default)]
        ip: Option<Ipv4Addr>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        ipv6: Option<Ipv6Addr>,
    },
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PortInfo {
    pub id: PortId,
    pub name: String,
    #[serde(flatten)]
    pub role: PortRole,
    pub mtu: u16,
    /// Bandwidth limits, policed by the workers. Shared (`Arc`) so the buckets' state carries
    /// over into every snapshot the control plane publishes: pass the same `Arc` on.
    #[serde(default, skip_serializing_if = "Option::is_none", with = "rate_limit::serde_config")]
    pub rate_limit: Option<Arc<PortRateLimit>>,
}

/// Where an adjacency's destination MAC comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NextHop {
    /// Known when the port was attached (a pod, the node's stack).
    Mac(MacAddr),
    /// Resolved on the uplink (ARP for IPv4, neighbour discovery for IPv6): the neighbour `via`,
    /// or the destination itself when the route is the directly connected subnet.
    #[serde(alias = "arp")]
    Resolve { via: Option<IpAddr> },
}

/// How to send to a next hop: out of `port`, from `src_mac`, at most `mtu` bytes of IP.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Adjacency {
    pub port: PortId,
    pub src_mac: MacAddr,
    pub next_hop: NextHop,
    pub mtu: u16,
}

#[derive(Debug, Clone)]
pub struct ForwardingState {
    /// The pods' default gateway: ARP for anything but a pod's own IP gets this MAC.
    pub gateway_ip: Ipv4Addr,
    pub gateway_mac: MacAddr,
    /// The pods' IPv6 gateway, `gateway_mac`'s link-local address (as Calico's fe80:: gateway):
    /// neighbour solicitations for anything but a pod's own addresses get `gateway_mac`.
    pub gateway_ip6: Ipv6Addr,
    pub ports: Vec<Option<PortInfo>>,
    pub adjacencies: Vec<Option<Adjacency>>,
    pub fib: FibReader<Ipv4Addr>,
    pub fib6: FibReader<Ipv6Addr>,
    /// Resolved uplink neighbours, both families.
    pub neighbors: Arc<HashMap<IpAddr, MacAddr>>,
}

/// Both FIBs pinned for a batch of lookups.
#[derive(Debug)]
pub struct FibViews<'a> {
    pub v4: FibView<'a, Ipv4Addr>,
    pub v6: FibView<'a, Ipv6Addr>,
}

impl ForwardingState {
    /// Pins both FIBs (once per batch: each lookup then costs no atomic operation).
    pub fn pin(&self) -> FibViews<'_> {
        FibViews { v4: self.fib.pin(), v6: self.fib6.pin() }
    }

    pub fn port(&self, id: PortId) -> Option<&PortInfo> {
        self.ports.get(id as usize).and_then(Option::as_ref)
    }

    pub fn adjacency(&self, index: u32) -> Option<&Adjacency> {
        self.adjacencies.get(index as usize).and_then(Option::as_ref)
    }

    /// The switch's own MAC on a port: the gateway MAC toward pods and the node, the NIC's MAC
    /// on the uplink.
    pub fn own_mac(&self, port: &PortInfo) -> MacAddr {
        match port.role {
            PortRole::Uplink { mac, .. } => mac,
            PortRole::Pod { .. } | PortRole::Host { .. } => self.gateway_mac,
        }
    }

    /// The switch's own IPv4 address on a port, the source of the ICMP errors it sends there:
    /// the gateway address toward pods and the node, the NIC's address on the uplink (`None` if
    /// it has none configured).
    pub fn own_ip(&self, port: &PortInfo) -> Option<Ipv4Addr> {
        match port.role {
            PortRole::Uplink { ip, .. } => ip,
            PortRole::Pod { .. } | PortRole::Host { .. } => Some(self.gateway_ip),
        }
    }

    /// The switch's own IPv6 address on a port, the source of what it sends there (ICMPv6
    /// errors, neighbour advertisements for the gateway): the gateway's link-local address toward
    /// pods and the node, the NIC's configured address on the uplink.
    pub fn own_ip6(&self, port: &PortInfo) -> Option<Ipv6Addr> {
        match port.role {
            PortRole::Uplink { ipv6, .. } => ipv6,
            PortRole::Pod { .. } | PortRole::Host { .. } => Some(self.gateway_ip6),
        }
    }
}

/// Builds a [`ForwardingState`] the way the control plane lays one out, for tests, benches and
/// fuzzing (one fixture instead of four hand-built ones). Ports get ids 0, 1, 2… in the order
/// they are added, adjacencies likewise; each port has one adjacency (the uplink more with
/// gateways). Pods get their /32 and /128, the uplink its subnets and, with gateways, the default
/// routes.
///
/// ```
/// # use std::net::Ipv4Addr;
/// # use vswitch::state::ForwardingStateBuilder;
/// # use vswitch::wire::MacAddr;
/// let (state, _fib) = ForwardingStateBuilder::new(Ipv4Addr::new(169, 254, 1, 1), MacAddr([2, 0, 0, 0, 0, 1]))
///     .pod(Ipv4Addr::new(10, 0, 0, 2), MacAddr([2, 0, 0, 0, 0, 2]), 1500)
///     .host_port(MacAddr([2, 0, 0, 0, 0, 0xee]), 9000)
///     .route("0.0.0.0/0".parse().unwrap(), 1)
///     .build();
/// assert_eq!(state.fib.lookup(Ipv4Addr::new(192, 0, 2, 1)), Some(1));
/// ```
#[derive(Debug)]
pub struct ForwardingStateBuilder {
    gateway_ip: Ipv4Addr,
    gateway_mac: MacAddr,
    ports: Vec<Option<PortInfo>>,
    adjacencies: Vec<Option<Adjacency>>,
    /// Per port, the adjacency [`ForwardingStateBuilder::route`] points at.
    route_adjacency: Vec<u32>,
    /// Per port, the adjacency [`ForwardingStateBuilder::route6`] points at.
    route6_adjacency: Vec<u32>,
    routes: Vec<(Ipv4Prefix, u32)>,
    routes6: Vec<(Ipv6Prefix, u32)>,
    neighbors: HashMap<IpAddr, MacAddr>,
}

impl ForwardingStateBuilder {
    pub fn new(gateway_ip: Ipv4Addr, gateway_mac: MacAddr) -> Self {
        ForwardingStateBuilder {
            gateway_ip,
            gateway_mac,
            ports: Vec::new(),
            adjacencies: Vec::new(),
            route_adjacency: Vec::new(),
            route6_adjacency: Vec::new(),
            routes: Vec::new(),
            routes6: Vec::new(),
            neighbors: HashMap::new(),
        }
    }

    /// The id the next port added gets.
    pub fn next_port(&self) -> PortId {
        self.ports.len() as PortId
    }

    fn add_port(&mut self, name: String, role: PortRole, mtu: u16, src_mac: MacAddr, next_hop: NextHop) -> PortId {
        let id = self.next_port();
        self.ports.push(Some(PortInfo { id, name, role, mtu, rate_limit: None }));
        self.route_adjacency.push(self.adjacencies.len() as u32);
        self.route6_adjacency.push(self.adjacencies.len() as u32);
        self.adjacencies.push(Some(Adjacency { port: id, src_mac, next_hop, mtu }));
        id
    }

    /// A pod at `ip` with `mac`, and its /32.
    pub fn pod(self, ip: Ipv4Addr, mac: MacAddr, mtu: u16) -> Self {
        self.dual_stack_pod(Some(ip), None, mac, mtu)
    }

    /// A pod with either address or both, and its /32 and /128.
    pub fn dual_stack_pod(mut self, ip: Option<Ipv4Addr>, ipv6: Option<Ipv6Addr>, mac: MacAddr, mtu: u16) -> Self {
        let id = self.next_port();
        let gateway_mac = self.gateway_mac;
        self.add_port(format!("pod{id}"), PortRole::Pod { ip, ipv6, mac }, mtu, gateway_mac, NextHop::Mac(mac));
        if let Some(ip) = ip {
            self = self.route(Ipv4Prefix::host(ip), id);
        }
        if let Some(ipv6) = ipv6 {
            self = self.route6(Ipv6Prefix::host(ipv6), id);
        }
        self
    }

    /// The node's stack, whose side of the TAP has `peer_mac`; no routes (add them with
    /// [`ForwardingStateBuilder::route`]).
    pub fn host_port(mut self, peer_mac: MacAddr, mtu: u16) -> Self {
        let gateway_mac = self.gateway_mac;
        self.add_port("vsw0".into(), PortRole::Host { peer_mac }, mtu, gateway_mac, NextHop::Mac(peer_mac));
        self
    }

    /// The uplink NIC (`mac`, `ip`) on `subnet`, resolved with ARP; with a `gateway`, the
    /// default route through it, and later [`ForwardingStateBuilder::route`]s to the uplink go
    /// through it too.
    pub fn uplink(
        mut self,
        mac: MacAddr,
        ip: Option<Ipv4Addr>,
        subnet: Ipv4Prefix,
        gateway: Option<Ipv4Addr>,
        mtu: u16,
    ) -> Self {
        let role = PortRole::Uplink { mac, ip, ipv6: None };
        let id = self.add_port("eth1".into(), role, mtu, mac, NextHop::Resolve { via: None });
        self = self.route(subnet, id);
        if let Some(via) = gateway {
            self.route_adjacency[id as usize] = self.via_adjacency(id, IpAddr::V4(via));
            self = self.route("0.0.0.0/0".parse().expect("valid prefix"), id);
        }
        self
    }

    /// IPv6 on the uplink added before: the NIC's address `ip`, its `subnet`, and with a
    /// `gateway`, the default route through it (and later [`ForwardingStateBuilder::route6`]s
    /// to the uplink too).
    pub fn uplink_ipv6(mut self, ip: Option<Ipv6Addr>, subnet: Ipv6Prefix, gateway: Option<Ipv6Addr>) -> Self {
        let id = self
            .ports
            .iter()
            .flatten()
            .find(|p| matches!(p.role, PortRole::Uplink { .. }))
            .map(|p| p.id)
            .expect("an uplink added before");
        if let Some(PortInfo { role: PortRole::Uplink { ipv6, .. }, .. }) = self.ports[id as usize].as_mut() {
            *ipv6 = ip;
        }
        self = self.route6(subnet, id);
        if let Some(via) = gateway {
            self.route6_adjacency[id as usize] = self.via_adjacency(id, IpAddr::V6(via));
            self = self.route6("::/0".parse().expect("valid prefix"), id);
        }
        self
    }

    /// A new adjacency out of uplink `port` through the neighbour `via`.
    fn via_adjacency(&mut self, port: PortId, via: IpAddr) -> u32 {
        let first = self.adjacencies[self.route_adjacency[port as usize] as usize].expect("the port's adjacency");
        self.adjacencies.push(Some(Adjacency { next_hop: NextHop::Resolve { via: Some(via) }, ..first }));
        self.adjacencies.len() as u32 - 1
    }

    /// A route for `prefix` out of `port` (through the uplink's gateway if it has one).
    pub fn route(mut self, prefix: Ipv4Prefix, port: PortId) -> Self {
        let adjacency = *self.route_adjacency.get(port as usize).expect("route to a port added before");
        self.routes.push((prefix, adjacency));
        self
    }

    /// An IPv6 route for `prefix` out of `port` (through the uplink's IPv6 gateway if it has one).
    pub fn route6(mut self, prefix: Ipv6Prefix, port: PortId) -> Self {
        let adjacency = *self.route6_adjacency.get(port as usize).expect("route to a port added before");
        self.routes6.push((prefix, adjacency));
        self
    }

    /// Bandwidth limits on a port added before.
    pub fn rate_limit(mut self, port: PortId, limit: Arc<PortRateLimit>) -> Self {
        let info = self.ports.get_mut(port as usize).and_then(Option::as_mut).expect("a port added before");
        info.rate_limit = Some(limit);
        self
    }

    /// A resolved uplink neighbour.
    pub fn neighbor(mut self, ip: impl Into<IpAddr>, mac: MacAddr) -> Self {
        self.neighbors.insert(ip.into(), mac);
        self
    }

    /// The state, and the FIB writers behind its readers (keep them: they own the tables, and
    /// they are how routes change afterwards).
    pub fn build(self) -> (ForwardingState, Fibs) {
        let mut fibs = Fibs { v4: Fib::new(), v6: Fib::new() };
        for (prefix, adjacency) in self.routes {
            fibs.v4.insert(prefix, adjacency).expect("adjacency index below MAX_NEXT_HOP");
        }
        for (prefix, adjacency) in self.routes6 {
            fibs.v6.insert(prefix, adjacency).expect("adjacency index below MAX_NEXT_HOP");
        }
        fibs.v4.publish();
        fibs.v6.publish();
        let state = ForwardingState {
            gateway_ip: self.gateway_ip,
            gateway_mac: self.gateway_mac,
            gateway_ip6: self.gateway_mac.link_local(),
            ports: self.ports,
            adjacencies: self.adjacencies,
            fib: fibs.v4.reader(),
            fib6: fibs.v6.reader(),
            neighbors: Arc::new(self.neighbors),
        };
        (state, fibs)
    }
}

/// The FIB writers of both families.
#[derive(Debug)]
pub struct Fibs {
    pub v4: Fib<Ipv4Addr>,
    pub v6: Fib<Ipv6Addr>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_uplink_without_an_address_still_parses() {
        let port: PortInfo =
            serde_json::from_str(r#"{"id":3,"name":"eth1","role":"uplink","mac":"02:00:00:00:00:99","mtu":1500}"#)
                .unwrap();
        assert_eq!(port.role, PortRole::Uplink { mac: MacAddr([2, 0, 0, 0, 0, 0x99]), ip: None, ipv6: None });
        let with_ip = PortInfo {
            role: PortRole::Uplink { mac: MacAddr([2; 6]), ip: Some(Ipv4Addr::new(10, 0, 0, 7)), ipv6: None },
            ..port
        };
        let json = serde_json::to_string(&with_ip).unwrap();
        assert_eq!(serde_json::from_str::<PortInfo>(&json).unwrap(), with_ip);
    }
}
