//! The lab's shape ([`LabSpec`] and its modes) and its fixed addresses: the VPC subnet
//! 10.10.0.0/16 (and fd00:10::/64), the gateway, the VM, the nodes, the etcd members, the
//! Service, the pools.

use std::net::{Ipv4Addr, Ipv6Addr};

use serde::{Deserialize, Serialize};

/// How pod traffic reaches the VPC.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum UplinkMode {
    /// Through the host port and the node's own stack (no dedicated NIC).
    HostRouted,
    /// Through a NIC dedicated to pod traffic, driven by vswitchd.
    Uplink,
}

/// The address families of the lab's pods. The VPC's hosts (gateway, VM, nodes, hybrid host)
/// get IPv6 next to IPv4 whenever the pods have IPv6; a pod's IPv6 address is in the VPC's
/// IPv6 subnet [`VPC_SUBNET6`] as its IPv4 address is in 10.10.0.0/16.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum IpFamily {
    #[default]
    Ipv4,
    /// Every pod both.
    Dual,
    /// Pods with IPv6 only (the VPC's hosts still have IPv4 too).
    Ipv6,
}

impl IpFamily {
    /// The families pods have, IPv4 first.
    pub fn families(self) -> Vec<Family> {
        match self {
            IpFamily::Ipv4 => vec![Family::V4],
            IpFamily::Dual => vec![Family::V4, Family::V6],
            IpFamily::Ipv6 => vec![Family::V6],
        }
    }

    pub fn has_v6(self) -> bool {
        self != IpFamily::Ipv4
    }
}

/// One address family: each path of the matrix runs once per family the pods have.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Family {
    V4,
    V6,
}

impl std::fmt::Display for Family {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Family::V4 => "IPv4",
            Family::V6 => "IPv6",
        })
    }
}

/// What the VPC's fabric is.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum VpcMode {
    /// A plain Linux bridge that learns from any frame: a gratuitous ARP moves an address.
    #[default]
    L2,
    /// An SDN as on UCloud: a frame passes only between addresses registered to NICs through
    /// the VPC API (UCloud's dialect), which the lab serves in its own namespace ([`ucloud`]).
    Ucloud,
    /// The same SDN programmed from EC2's view of the ENIs (moto, in its own namespace:
    /// [`aws`]): a frame passes only for an address EC2 has on the ENI of the sending port.
    Aws,
}

/// Where pods' addresses come from.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum IpamMode {
    /// Each node its own range, 10.10.<node>.10-250, kept by vpc-cni in files on the node.
    #[default]
    Local,
    /// One pool for the cluster ([`POD_POOL`]), allocated by the nodes' vswitchd in a 3-member
    /// etcd cluster (vpc-cni's `"ipam": {"type": "vswitchd"}`).
    Etcd,
    /// Secondary IPs of each node's NIC, which the node's vswitchd allocates through the VPC's
    /// API (`[ipam] provider = "ucloud"`, vpc-cni's `"ipam": {"type": "vswitchd"}`): what
    /// [`VpcMode::Ucloud`] needs, since its SDN delivers nothing else; with [`VpcMode::Aws`],
    /// secondary private IPs of the instance's ENIs (`[ipam] provider = "aws"`). IPv4 only.
    Vpc,
}

#[derive(Debug, Clone)]
pub struct LabSpec {
    pub mode: UplinkMode,
    pub ipam: IpamMode,
    /// The pods' address families ([`IpamMode::Etcd`]: IPv4 only).
    pub family: IpFamily,
    /// 2 to 4.
    pub nodes: usize,
    pub pods_per_node: usize,
    pub pod_mtu: u16,
    /// MTU of the link to the hybrid-cloud network (smaller, to show fragmentation-needed).
    pub hybrid_mtu: u16,
    pub workers: usize,
    /// The lab outlives this process (`vpc-lab up`): the etcd members are started in sessions
    /// of their own instead of being killed by the kernel when this process ends (tests).
    pub detachable: bool,
    pub vpc: VpcMode,
}

impl Default for LabSpec {
    fn default() -> Self {
        LabSpec {
            mode: UplinkMode::HostRouted,
            ipam: IpamMode::Local,
            family: IpFamily::Ipv4,
            nodes: 2,
            pods_per_node: 2,
            pod_mtu: 1500,
            hybrid_mtu: 1400,
            workers: 1,
            detachable: false,
            vpc: VpcMode::L2,
        }
    }
}

pub const GATEWAY_IP: Ipv4Addr = Ipv4Addr::new(10, 10, 0, 1);
pub const VM_IP: Ipv4Addr = Ipv4Addr::new(10, 10, 0, 50);
pub const HYBRID_IP: Ipv4Addr = Ipv4Addr::new(172, 16, 50, 10);
pub const SERVICE_IP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 10);
pub const SERVER_PORT: u16 = 8080;
/// The VPC's IPv6 subnet (a ULA prefix), next to 10.10.0.0/16: the gateway is fd00:10::1, node i
/// fd00:10::11.., the VM fd00:10::50, node i's pods fd00:10::i:10-fd00:10::i:250.
pub const VPC_SUBNET6: &str = "fd00:10::/64";
pub const GATEWAY_IP6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x10, 0, 0, 0, 0, 0, 0x1);
pub const VM_IP6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x10, 0, 0, 0, 0, 0, 0x50);
/// The hybrid-cloud network's IPv6 subnet, behind the gateway on the same small-MTU link.
pub const HYBRID_GATEWAY_IP6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x172, 0x16, 0x50, 0, 0, 0, 0x1);
pub const HYBRID_IP6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x172, 0x16, 0x50, 0, 0, 0, 0x10);
/// The Service's IPv6 ClusterIP (a dual-stack Service), in the IPv6 Service range.
pub const SERVICE_IP6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x96, 0, 0, 0, 0, 0, 0x10);
pub const SERVICE_RANGE6: &str = "fd00:96::/108";
/// The Service's NodePort on every node.
pub const NODE_PORT: u16 = 30080;
/// The cluster pools of the families the pods get ([`IpamMode::Etcd`]).
pub fn pools(family: IpFamily) -> Vec<&'static str> {
    family.families().into_iter().map(|f| if f == Family::V4 { POD_POOL } else { POD_POOL6 }).collect()
}

/// The etcd members, each in its own namespace on the fabric ([`IpamMode::Etcd`]).
pub const ETCD_IPS: [Ipv4Addr; 3] =
    [Ipv4Addr::new(10, 10, 0, 21), Ipv4Addr::new(10, 10, 0, 22), Ipv4Addr::new(10, 10, 0, 23)];
/// The cluster pool ([`IpamMode::Etcd`]): the quarter 10.10.64.0/18 of the VPC subnet. Every
/// fixed address of the lab (the gateway 10.10.0.1, the nodes 10.10.0.11-14, the etcd members
/// 10.10.0.21-23, the VM 10.10.0.50) lies in 10.10.0.0/24, and the local mode's ranges in
/// 10.10.1-4.x, so the pool holds none of them and needs no `exclude` list; the hybrid network
/// (172.16.50.0/24) and the Service range (10.96.0.0/12) are outside the VPC subnet altogether.
pub const POD_POOL: &str = "10.10.64.0/18";
/// The cluster's IPv6 pool ([`IpamMode::Etcd`] with IPv6): fd00:10::64:0/112 of the VPC's /64,
/// clear of every fixed address (::1, ::11-14, ::21-23, ::50) and of the local mode's ranges
/// (fd00:10::<node>:10-250).
pub const POD_POOL6: &str = "fd00:10::64:0/112";
/// Where the lab's IPAM keys live in etcd.
pub const IPAM_PREFIX: &str = "/vpc-ipam/lab";
/// Pods live in this Kubernetes namespace (CNI_ARGS K8S_POD_NAMESPACE).
pub const POD_NAMESPACE: &str = "default";
/// The sticky pod ([`IpamMode::Etcd`]: `ipam.sticky` is `["default/sticky-*"]`; [`IpamMode::Vpc`]:
/// UK8S's static-IP annotations, see `lab/sticky_vpc.rs`).
pub const STICKY_POD: &str = "sticky-0";
pub(crate) const STATE_DIR: &str = "/run/vpc-lab";

pub fn node_ip(node: usize) -> Ipv4Addr {
    Ipv4Addr::new(10, 10, 0, 11 + node as u8)
}

pub fn node_ip6(node: usize) -> Ipv6Addr {
    Ipv6Addr::new(0xfd00, 0x10, 0, 0, 0, 0, 0, 0x11 + node as u16)
}

/// Node `node`'s IPv6 pod range (local IPAM): fd00:10::<node>:10 to fd00:10::<node>:250.
pub fn pod_range6(node: usize) -> (Ipv6Addr, Ipv6Addr) {
    let n = node as u16 + 1;
    (Ipv6Addr::new(0xfd00, 0x10, 0, 0, 0, 0, n, 0x10), Ipv6Addr::new(0xfd00, 0x10, 0, 0, 0, 0, n, 0x250))
}

/// The lab's name of pod `index` on `node` (both from 0): n1a, n1b, n2a, ...
pub fn pod_name(node: usize, index: usize) -> String {
    format!("n{}{}", node + 1, (b'a' + index as u8) as char)
}
