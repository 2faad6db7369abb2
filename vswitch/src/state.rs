//! The forwarding state the workers read: ports, adjacencies and the FIB.
//!
//! The control plane builds a new [`ForwardingState`] for every change and publishes it whole
//! (an `ArcSwap`); workers load it once per batch and never lock. The FIB is the `fib` crate's
//! table, whose own publish makes route changes visible; it maps a destination to an index into
//! `adjacencies`. Adjacency indices are never reused while the daemon runs, so a worker holding a
//! slightly older FIB view can only find a missing adjacency (a counted drop), never a wrong one.

use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::sync::Arc;

use fib::{Fib, FibReader, Ipv4Prefix};
use serde::{Deserialize, Serialize};

use crate::pipeline::PortRateLimit;
use crate::wire::MacAddr;

/// A port's index in [`ForwardingState::ports`] and in every worker's queue table.
pub type PortId = u16;

/// Ports a switch can hold (sizes the per-port counter arrays).
pub const MAX_PORTS: usize = 4096;

/// What a port connects, which decides what the pipeline checks and answers on it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "role", rename_all = "snake_case")]
pub enum PortRole {
    /// A pod's eth0: may only send from `ip` and `mac`.
    Pod { ip: Ipv4Addr, mac: MacAddr },
    /// The node's own stack (a TAP in the node namespace); `peer_mac` is the kernel side's MAC.
    Host { peer_mac: MacAddr },
    /// A NIC dedicated to pod traffic, on the VPC subnet; `mac` is the NIC's own MAC, which the
    /// switch uses as its address there (it answers ARP for local pods with it). `ip` is the
    /// NIC's own address, the source of the ICMP errors the switch sends out of it: the pods'
    /// gateway address is link-local, and VPC hosts drop packets from it. Without one, no ICMP
    /// error leaves through the uplink.
    Uplink {
        mac: MacAddr,
        #[serde(default)]
        ip: Option<Ipv4Addr>,
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
    #[serde(default, skip_serializing_if = "Option::is_none", with = "crate::pipeline::rate_limit::serde_config")]
    pub rate_limit: Option<Arc<PortRateLimit>>,
}

/// Where an adjacency's destination MAC comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NextHop {
    /// Known when the port was attached (a pod, the node's stack).
    Mac(MacAddr),
    /// Resolved with ARP on the uplink: the neighbour `via`, or the destination itself when the
    /// route is the directly connected subnet.
    Arp { via: Option<Ipv4Addr> },
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
    pub ports: Vec<Option<PortInfo>>,
    pub adjacencies: Vec<Option<Adjacency>>,
    pub fib: FibReader<Ipv4Addr>,
    /// Resolved uplink neighbours.
    pub neighbors: Arc<HashMap<Ipv4Addr, MacAddr>>,
}

impl ForwardingState {
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
}

/// Builds a [`ForwardingState`] the way the control plane lays one out, for tests, benches and
/// fuzzing (one fixture instead of four hand-built ones). Ports get ids 0, 1, 2… in the order
/// they are added, adjacencies likewise; each port has one adjacency (the uplink two with a
/// gateway). Pods get their /32, the uplink its subnet and, with a gateway, the default route.
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
    routes: Vec<(Ipv4Prefix, u32)>,
    neighbors: HashMap<Ipv4Addr, MacAddr>,
}

impl ForwardingStateBuilder {
    pub fn new(gateway_ip: Ipv4Addr, gateway_mac: MacAddr) -> Self {
        ForwardingStateBuilder {
            gateway_ip,
            gateway_mac,
            ports: Vec::new(),
            adjacencies: Vec::new(),
            route_adjacency: Vec::new(),
            routes: Vec::new(),
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
        self.adjacencies.push(Some(Adjacency { port: id, src_mac, next_hop, mtu }));
        id
    }

    /// A pod at `ip` with `mac`, and its /32.
    pub fn pod(mut self, ip: Ipv4Addr, mac: MacAddr, mtu: u16) -> Self {
        let id = self.next_port();
        let gateway_mac = self.gateway_mac;
        self.add_port(format!("pod{id}"), PortRole::Pod { ip, mac }, mtu, gateway_mac, NextHop::Mac(mac));
        self.route(Ipv4Prefix::host(ip), id)
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
        let id = self.add_port("eth1".into(), PortRole::Uplink { mac, ip }, mtu, mac, NextHop::Arp { via: None });
        self = self.route(subnet, id);
        if let Some(via) = gateway {
            self.route_adjacency[id as usize] = self.adjacencies.len() as u32;
            self.adjacencies.push(Some(Adjacency {
                port: id,
                src_mac: mac,
                next_hop: NextHop::Arp { via: Some(via) },
                mtu,
            }));
            self = self.route("0.0.0.0/0".parse().expect("valid prefix"), id);
        }
        self
    }

    /// A route for `prefix` out of `port` (through the uplink's gateway if it has one).
    pub fn route(mut self, prefix: Ipv4Prefix, port: PortId) -> Self {
        let adjacency = *self.route_adjacency.get(port as usize).expect("route to a port added before");
        self.routes.push((prefix, adjacency));
        self
    }

    /// Bandwidth limits on a port added before.
    pub fn rate_limit(mut self, port: PortId, limit: Arc<PortRateLimit>) -> Self {
        let info = self.ports.get_mut(port as usize).and_then(Option::as_mut).expect("a port added before");
        info.rate_limit = Some(limit);
        self
    }

    /// A resolved uplink neighbour.
    pub fn neighbor(mut self, ip: Ipv4Addr, mac: MacAddr) -> Self {
        self.neighbors.insert(ip, mac);
        self
    }

    /// The state, and the FIB writer behind its reader (keep it: it owns the table, and it is
    /// how routes change afterwards).
    pub fn build(self) -> (ForwardingState, Fib<Ipv4Addr>) {
        let mut fib = Fib::new();
        for (prefix, adjacency) in self.routes {
            fib.insert(prefix, adjacency).expect("adjacency index below MAX_NEXT_HOP");
        }
        fib.publish();
        let state = ForwardingState {
            gateway_ip: self.gateway_ip,
            gateway_mac: self.gateway_mac,
            ports: self.ports,
            adjacencies: self.adjacencies,
            fib: fib.reader(),
            neighbors: Arc::new(self.neighbors),
        };
        (state, fib)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_uplink_without_an_address_still_parses() {
        let port: PortInfo =
            serde_json::from_str(r#"{"id":3,"name":"eth1","role":"uplink","mac":"02:00:00:00:00:99","mtu":1500}"#)
                .unwrap();
        assert_eq!(port.role, PortRole::Uplink { mac: MacAddr([2, 0, 0, 0, 0, 0x99]), ip: None });
        let with_ip =
            PortInfo { role: PortRole::Uplink { mac: MacAddr([2; 6]), ip: Some(Ipv4Addr::new(10, 0, 0, 7)) }, ..port };
        let json = serde_json::to_string(&with_ip).unwrap();
        assert_eq!(serde_json::from_str::<PortInfo>(&json).unwrap(), with_ip);
    }
}
