//! What the registry keeps about ports and routes, and the plain values it takes from and hands
//! to the driver.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::PathBuf;

use fib::AnyPrefix;

use super::pod::{BandwidthLimits, PodAddresses, PodName, PodSpec};
use crate::datapath::{PortQueues, PortTotals};
use crate::state::{PortId, PortInfo, PortRole};
use crate::wire::MacAddr;

/// Where a route came from, which decides who may change it and whether it is saved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RouteOrigin {
    /// A pod port's /32 or /128, removed with the port.
    Port,
    /// From vswitchd.toml (host port routes, the uplink's subnet and default); made again at
    /// every start, not saved.
    Config,
    /// Added through the API; saved in the state file and restored at start.
    Api,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Route {
    pub port: PortId,
    pub adjacency: u32,
    pub origin: RouteOrigin,
}

/// Whether a port's device is there.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinkState {
    Up,
    /// The TAP (or its namespace) disappeared without a DEL; the port forwards nothing.
    Gone,
}

/// How a port was attached: what listing and persistence need besides the forwarding info.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attachment {
    pub ifname: String,
    /// A pod's namespace path, and the namespace's identity (device, inode) when attached, to
    /// notice the path disappearing or naming another namespace.
    pub netns: Option<PathBuf>,
    pub netns_id: Option<(u64, u64)>,
    pub pod: Option<PodName>,
    pub bandwidth: Option<BandwidthLimits>,
}

pub struct PortRecord {
    pub info: PortInfo,
    pub attachment: Attachment,
    /// None once the device is gone: the workers stop polling it.
    pub queues: Option<PortQueues>,
    pub adjacency: u32,
    pub link: LinkState,
    /// Counters at attach time (ids are reused; counters are per id).
    pub baseline: PortTotals,
}

impl std::fmt::Debug for PortRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PortRecord").field("info", &self.info).field("link", &self.link).finish_non_exhaustive()
    }
}

impl PortRecord {
    /// What a pod port was attached with (for the state file); `None` for the host port and
    /// the uplink.
    pub fn pod_spec(&self) -> Option<PodSpec> {
        let PortRole::Pod { ip, ipv6, mac } = self.info.role else { return None };
        Some(PodSpec {
            name: self.info.name.clone(),
            netns: self.attachment.netns.clone()?,
            ifname: self.attachment.ifname.clone(),
            addresses: PodAddresses { ip, ipv6 },
            mac,
            mtu: Some(self.info.mtu),
            pod: self.attachment.pod.clone(),
            bandwidth: self.attachment.bandwidth,
        })
    }
}

/// A pod port that passed validation and holds its reservation; the driver opens its queues
/// and then calls [`Registry::commit_pod`] or [`Registry::cancel`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodReservation {
    pub spec: PodSpec,
    pub mtu: u16,
    /// A port whose device is gone that held this name or address; committing replaces it.
    pub replaces: Option<PortId>,
}

/// What the neighbour machinery wants done on the uplink.
#[derive(Debug, Default)]
pub struct UplinkWork {
    /// Neighbours to ask for: ARP requests (probes: sender 0.0.0.0) or neighbour solicitations.
    pub ask: Vec<IpAddr>,
    /// Packets (vnet header first) to send to `mac`.
    pub send: Vec<(Vec<u8>, MacAddr)>,
    pub unresolved_drops: u64,
    pub queue_full_drops: u64,
}

/// The uplink NIC: its MAC and addresses, the connected subnets, and the VPC gateways (a default
/// route per family through each).
#[derive(Debug, Clone, Default)]
pub struct UplinkSpec {
    pub mac: MacAddr,
    pub ip: Option<Ipv4Addr>,
    pub ipv6: Option<Ipv6Addr>,
    pub subnets: Vec<AnyPrefix>,
    pub gateways: Vec<IpAddr>,
}
