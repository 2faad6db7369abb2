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

use fib::FibReader;
use serde::{Deserialize, Serialize};

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
