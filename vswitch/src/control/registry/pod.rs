//! A pod port as the registry knows it: its spec (what the driver asks to attach) and the
//! addresses it owns. These are the core's own types; the API's `PortSpec` and the state file's
//! `SavedPort` are converted to and from them at the edge.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::PathBuf;

use fib::{AnyPrefix, Ipv4Prefix, Ipv6Prefix};

use super::error::InvalidPod;
use crate::state::PortRole;
use crate::wire::MacAddr;

/// A pod port to attach: the pod's TAP (`ifname` in the namespace at `netns`) and what the
/// switch enforces for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodSpec {
    /// Unique per attachment (the plugin uses `CONTAINER_ID:IFNAME`).
    pub name: String,
    pub netns: PathBuf,
    pub ifname: String,
    pub addresses: PodAddresses,
    pub mac: MacAddr,
    /// `None`: the configured pod MTU.
    pub mtu: Option<u16>,
    pub pod: Option<PodName>,
    pub bandwidth: Option<BandwidthLimits>,
}

/// The Kubernetes pod a port belongs to.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PodName {
    pub namespace: String,
    pub name: String,
}

impl std::fmt::Display for PodName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// A port's traffic limits: ingress is traffic into the pod, egress traffic from it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BandwidthLimits {
    pub ingress: Option<Rate>,
    pub egress: Option<Rate>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    pub bits_per_second: u64,
    pub burst_bits: u64,
}

/// A pod's addresses: either family or both.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PodAddresses {
    pub ip: Option<Ipv4Addr>,
    pub ipv6: Option<Ipv6Addr>,
}

impl PodAddresses {
    /// A pod port's addresses; `None` for the host port and the uplink.
    pub fn of_role(role: &PortRole) -> Option<PodAddresses> {
        match *role {
            PortRole::Pod { ip, ipv6, .. } => Some(PodAddresses { ip, ipv6 }),
            _ => None,
        }
    }

    /// The address both have, if any.
    pub(super) fn shared_with(&self, other: &PodAddresses) -> Option<IpAddr> {
        match (self.ip, other.ip, self.ipv6, other.ipv6) {
            (Some(a), Some(b), ..) if a == b => Some(a.into()),
            (.., Some(a), Some(b)) if a == b => Some(a.into()),
            _ => None,
        }
    }

    /// The routes a pod port owns.
    pub fn host_prefixes(&self) -> impl Iterator<Item = AnyPrefix> {
        let v4 = self.ip.map(|ip| AnyPrefix::V4(Ipv4Prefix::host(ip)));
        v4.into_iter().chain(self.ipv6.map(|ip| AnyPrefix::V6(Ipv6Prefix::host(ip))))
    }

    pub fn iter(&self) -> impl Iterator<Item = IpAddr> {
        self.ip.map(IpAddr::V4).into_iter().chain(self.ipv6.map(IpAddr::V6))
    }
}

impl PodSpec {
    /// What makes a spec unattachable on its own (names, addresses, MAC, MTU, limits); returns
    /// the port's MTU. `gateway_ip` is the pods' gateway, which no pod may take.
    pub(super) fn check(&self, gateway_ip: Ipv4Addr, pod_mtu: u16) -> Result<u16, InvalidPod> {
        if self.name.is_empty() || self.name.len() > 256 {
            return Err(InvalidPod::NameLength);
        }
        if !vswitch_host::tap::valid_name(&self.ifname) {
            return Err(InvalidPod::InterfaceName(self.ifname.clone()));
        }
        if self.mac.is_multicast() || self.mac == MacAddr::ZERO {
            return Err(InvalidPod::NotUnicast(self.mac));
        }
        let PodAddresses { ip, ipv6 } = self.addresses;
        if ip.is_none() && ipv6.is_none() {
            return Err(InvalidPod::NoAddress);
        }
        if let Some(ip) = ip {
            if ip.is_unspecified() || ip.is_broadcast() || ip.is_multicast() || ip.is_loopback() || ip == gateway_ip {
                return Err(InvalidPod::Address(ip.into()));
            }
        }
        if let Some(ip) = ipv6 {
            // Link-local addresses are the link's own (the pod has its MAC's), never routed.
            if ip.is_unspecified() || ip.is_multicast() || ip.is_loopback() || ip.is_unicast_link_local() {
                return Err(InvalidPod::Address(ip.into()));
            }
        }
        let mtu = self.mtu.unwrap_or(pod_mtu);
        if !(576..=9000).contains(&mtu) {
            return Err(InvalidPod::Mtu(mtu));
        }
        if let Some(b) = &self.bandwidth {
            if [b.ingress, b.egress].into_iter().flatten().any(|r| r.bits_per_second == 0 || r.burst_bits == 0) {
                return Err(InvalidPod::ZeroRate);
            }
        }
        Ok(mtu)
    }
}
