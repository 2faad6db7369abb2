//! The forwarding state the workers read: ports, adjacencies and the FIB.
//!
//! The control plane builds a new [`ForwardingState`] for every change and publishes it whole
//! (an `ArcSwap`); workers load it once per batch and never lock. The FIB is the `fib` crate's
//! table, whose own publish makes route changes visible; it maps a destination to an index into
//! `adjacencies`. Adjacency indices are never reused while the daemon runs, so a worker holding a
//! slightly older FIB view can only find a missing adjacency (a counted drop), never a wrong one.

use std::net::Ipv4Addr;

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
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PortInfo {
    pub id: PortId,
    pub name: String,
    #[serde(flatten)]
    pub role: PortRole,
    pub mtu: u16,
}

/// How to send to a next hop: out of `port`, with these MACs, at most `mtu` bytes of IP.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Adjacency {
    pub port: PortId,
    pub src_mac: MacAddr,
    pub dst_mac: MacAddr,
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
}

impl ForwardingState {
    pub fn port(&self, id: PortId) -> Option<&PortInfo> {
        self.ports.get(id as usize).and_then(Option::as_ref)
    }

    pub fn adjacency(&self, index: u32) -> Option<&Adjacency> {
        self.adjacencies.get(index as usize).and_then(Option::as_ref)
    }
}
