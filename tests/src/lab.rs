//! A whole VPC on one machine (see `docs/design.md`):
//!
//! ```text
//!   hybrid (172.16.50.10) ── gateway (172.16.50.1 | 10.10.0.1) ──┐
//!                                                                  │  fabric: a Linux bridge,
//!   vm (10.10.0.50) ───────────────────────────────────────────────┤  the VPC subnet 10.10.0.0/16
//!   etcd members e1-e3 (10.10.0.21-23; --ipam etcd only) ──────────┤
//!   node1 (10.10.0.11): vswitchd, pods via vpc-cni ───────────────┤
//!   node2 (10.10.0.12): vswitchd, pods via vpc-cni ───────────────┤
//!   ... up to node4 (10.10.0.14) ──────────────────────────────────┘
//! ```
//!
//! Pods are created only by the real `vpc-cni` binary, called as containerd calls it. Their
//! addresses come either from each node's own range 10.10.<node>.10-250, kept by vpc-cni in files
//! on the node ([`IpamMode::Local`]), or from one pool for the whole cluster, 10.10.64.0/18, which
//! the nodes' vswitchd allocate from a 3-member TLS etcd cluster ([`IpamMode::Etcd`]; there a
//! sticky pod keeps its address when it is re-created on another node). Each node holds a
//! ClusterIP Service (10.96.0.10:80) and a NodePort (30080) made of iptables DNAT rules as
//! kube-proxy makes them, with a backend on each node. Two uplink modes: host-routed (pod
//! traffic leaves through the node's stack, which answers ARP for its pods by proxy-ARP) and a
//! dedicated uplink NIC per node driven by vswitchd. Every server in the lab reports who
//! connected, which proves there is no NAT on the way.

pub mod aws;
pub mod ec2_sdn;
pub mod load_balancer;
mod node_config;
mod paths;
mod provider_audit;
mod restart;
pub mod sdn;
mod state;
mod sticky;
mod sticky_vpc;
pub mod ucloud;
mod unregistered;
pub mod vpc_api;

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::etcd::EtcdCluster;
use crate::netns::{binary, cni_command, run_cni, unique, Binaries, Daemon, Netns, TempDir};

pub use provider_audit::NicBooks;
pub use state::LabState;
pub use sticky::StickyMove;

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
const STATE_DIR: &str = "/run/vpc-lab";

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

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LabPod {
    pub name: String,
    pub netns: String,
    pub container_id: String,
    /// None for an IPv6-only pod.
    pub ip: Option<Ipv4Addr>,
    /// None for an IPv4-only pod.
    #[serde(default)]
    pub ipv6: Option<Ipv6Addr>,
    pub node: usize,
}

impl LabPod {
    /// The pod's address of `family`, if it has one.
    pub fn addr(&self, family: Family) -> Option<IpAddr> {
        match family {
            Family::V4 => self.ip.map(IpAddr::V4),
            Family::V6 => self.ipv6.map(IpAddr::V6),
        }
    }

    /// The pod's IPv4 address; panics for an IPv6-only pod (the etcd IPAM is IPv4 only).
    pub fn ip4(&self) -> Ipv4Addr {
        self.ip.unwrap_or_else(|| panic!("pod {} has no IPv4 address", self.name))
    }

    /// Its addresses, as `vpc-lab` prints them.
    pub fn addresses(&self) -> String {
        let all: Vec<String> =
            self.ip.map(IpAddr::V4).into_iter().chain(self.ipv6.map(IpAddr::V6)).map(|a| a.to_string()).collect();
        all.join(", ")
    }

    /// Its addresses from a CNI result's `ips`.
    fn from_result(result: &Value) -> (Option<Ipv4Addr>, Option<Ipv6Addr>) {
        let mut v4 = None;
        let mut v6 = None;
        for ip in result["ips"].as_array().into_iter().flatten() {
            match ip["address"].as_str().and_then(|a| a.split('/').next()).and_then(|a| a.parse().ok()) {
                Some(IpAddr::V4(a)) if v4.is_none() => v4 = Some(a),
                Some(IpAddr::V6(a)) if v6.is_none() => v6 = Some(a),
                _ => {}
            }
        }
        (v4, v6)
    }
}

/// Who is where in a lab: enough to check every path, and to move the sticky pod, from the
/// process that built the lab or from a later `vpc-lab check`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Topology {
    pub name: String,
    pub mode: UplinkMode,
    #[serde(default)]
    pub ipam: IpamMode,
    #[serde(default)]
    pub family: IpFamily,
    pub pod_mtu: u16,
    pub hybrid_mtu: u16,
    /// Node namespaces, node1 first.
    pub nodes: Vec<String>,
    /// Each node's vswitchd control socket, node1 first.
    #[serde(default)]
    pub sockets: Vec<PathBuf>,
    /// The lab's directory (each node's vswitchd state and node-local IPAM files).
    #[serde(default)]
    pub dir: PathBuf,
    pub pods: Vec<LabPod>,
    pub vm: String,
    pub hybrid: String,
    /// The VPC API and what its clients need ([`VpcMode::Ucloud`]).
    #[serde(default)]
    pub vpc: Option<ucloud::LabVpc>,
    /// EC2 and where each host is in it ([`VpcMode::Aws`]).
    #[serde(default)]
    pub ec2: Option<aws::LabEc2>,
    /// [`VpcMode::Ucloud`]: a pod with an address the VPC was never told about (not in `pods`:
    /// outside the matrix; [`Topology::check_unregistered`] checks it).
    #[serde(default)]
    pub unregistered: Option<LabPod>,
    /// [`VpcMode::Ucloud`]: the load balancer on the VPC in front of the Service's pods.
    #[serde(default)]
    pub load_balancer: Option<load_balancer::LabLoadBalancer>,
}

fn kill9(pid: u32) {
    let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), nix::sys::signal::Signal::SIGKILL);
}

/// A running lab. Dropping it removes everything it made, also after a failure.
#[derive(Debug)]
pub struct Lab {
    pub topology: Topology,
    pub spec: LabSpec,
    servers: Vec<Child>,
    daemons: Vec<Daemon>,
    /// Killed after the daemons that use it, before the namespaces it runs in go.
    etcd: Option<EtcdCluster>,
    nodes: Vec<Netns>,
    pod_ns: Vec<Netns>,
    etcd_ns: Vec<Netns>,
    /// Killed before the fabric whose SDN it programs goes.
    vpc_api: Option<vpc_api::VpcApi>,
    /// [`VpcMode::Aws`]: EC2 and the SDN programmer, killed before the fabric goes.
    ec2_vpc: Option<aws::Ec2Vpc>,
    /// [`VpcMode::Ucloud`]: the load balancer's namespace.
    lb_ns: Option<Netns>,
    vm: Netns,
    hybrid: Netns,
    gateway: Netns,
    fabric: Netns,
    dir: TempDir,
}

impl std::ops::Deref for Lab {
    type Target = Topology;
    fn deref(&self) -> &Topology {
        &self.topology
    }
}

/// One line of `vpc-lab check`.
#[derive(Debug, Clone, Serialize)]
pub struct PathCheck {
    pub path: String,
    /// IPv4 or IPv6.
    pub family: String,
    pub from: String,
    pub to: String,
    pub ok: bool,
    pub rtt_ms: Option<f64>,
    /// The sticky move: from the ADD on the new node to the first answer.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub elapsed_ms: Option<f64>,
    pub detail: String,
}

impl PathCheck {
    fn new(path: &str, from: &str, to: &str) -> PathCheck {
        Self::of(Family::V4, path, from, to)
    }

    fn of(family: Family, path: &str, from: &str, to: &str) -> PathCheck {
        PathCheck {
            path: path.into(),
            family: family.to_string(),
            from: from.into(),
            to: to.into(),
            ok: false,
            rtt_ms: None,
            elapsed_ms: None,
            detail: String::new(),
        }
    }
}

/// A failed vpc-cni call: its CNI error code (0 if it printed none) and what it said.
#[derive(Debug, Clone)]
pub struct CniFailure {
    pub code: u64,
    pub message: String,
}

impl Topology {
    /// The control socket of whatever programs the SDN (`state` with its `counters`): the VPC
    /// API's ([`VpcMode::Ucloud`]) or the EC2 programmer's ([`VpcMode::Aws`]); none on L2.
    pub fn sdn_control(&self) -> Option<&Path> {
        self.vpc.as_ref().map(|v| v.control.as_path()).or(self.ec2.as_ref().map(|e| e.control.as_path()))
    }

    /// The first pod of each node is a backend of the Service.
    pub fn backends(&self) -> Vec<&LabPod> {
        (0..self.nodes.len()).filter_map(|n| self.pods.iter().find(|p| p.node == n)).collect()
    }

    pub fn pod(&self, name: &str) -> Option<&LabPod> {
        self.pods.iter().find(|p| p.name == name)
    }

    /// vpc-cni's network configuration on `node`, as the node's conflist gives it.
    pub fn cni_conf(&self, node: usize) -> Value {
        let ipam = match self.ipam {
            IpamMode::Local => {
                let mut ranges = Vec::new();
                if self.family != IpFamily::Ipv6 {
                    ranges.push(json!({"rangeStart": format!("10.10.{}.10", node + 1), "rangeEnd": format!("10.10.{}.250", node + 1)}));
                }
                if self.family.has_v6() {
                    let (start, end) = pod_range6(node);
                    ranges.push(json!({"rangeStart": start, "rangeEnd": end}));
                }
                json!({"ranges": ranges, "dataDir": self.dir.join(format!("node{}/ipam", node + 1))})
            }
            IpamMode::Etcd | IpamMode::Vpc => json!({"type": "vswitchd"}),
        };
        json!({
            "cniVersion": "1.1.0",
            "name": "vpc",
            "type": "vpc-cni",
            "vswitchSocket": self.sockets[node],
            "mtu": self.pod_mtu,
            "ipam": ipam,
        })
    }

    /// Runs vpc-cni as containerd does for pod `default/<pod>` (sandbox `container` in `netns`).
    pub fn cni(
        &self,
        command: &str,
        node: usize,
        container: &str,
        netns: &Path,
        pod: &str,
    ) -> Result<Value, CniFailure> {
        self.cni_with(&self.cni_conf(node), command, node, container, netns, pod)
    }

    /// [`Topology::cni`] with network configuration `conf`.
    fn cni_with(
        &self,
        conf: &Value,
        command: &str,
        node: usize,
        container: &str,
        netns: &Path,
        pod: &str,
    ) -> Result<Value, CniFailure> {
        let mut cmd = cni_command(&binary("vpc-cni"), command, container, netns);
        cmd.env("CNI_ARGS", format!("IgnoreUnknown=1;K8S_POD_NAMESPACE={POD_NAMESPACE};K8S_POD_NAME={pod}"));
        let mut conf = conf.clone();
        if self.ipam == IpamMode::Vpc && pod == STICKY_POD {
            sticky_vpc::annotate(&mut conf);
        }
        let out = run_cni(cmd, &conf);
        let text = String::from_utf8_lossy(&out.stdout).trim().to_string();
        if !out.status.success() {
            let code = serde_json::from_str::<Value>(&text).ok().and_then(|v| v["code"].as_u64()).unwrap_or(0);
            return Err(CniFailure {
                code,
                message: format!("vpc-cni {command} {container} on node{}: {text}", node + 1),
            });
        }
        Ok(if text.is_empty() { Value::Null } else { serde_json::from_str(&text).expect("CNI result JSON") })
    }
}

fn sh(ns: &Netns, script: &str) {
    let out = ns.exec(&["sh", "-c", script]);
    assert!(out.status.success(), "in {}: {script}: {}", ns.name, String::from_utf8_lossy(&out.stderr));
}

fn veth(a: &Netns, a_name: &str, b: &Netns, b_name: &str) {
    a.ip(&["link", "add", a_name, "type", "veth", "peer", "name", b_name, "netns", &b.name]);
}

/// Starts `vpc-lab serve` in namespace `ns` under `name`.
fn start_server(ns: &str, name: &str) -> Child {
    Command::new("ip")
        .args(["netns", "exec", ns])
        .arg(binary("vpc-lab"))
        .args(["serve", "--name", name, "--port", &SERVER_PORT.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start server")
}

impl Lab {
    /// Builds the lab; `progress` is told about each step.
    pub fn up(spec: LabSpec, mut progress: impl FnMut(&str)) -> Lab {
        assert!((2..=4).contains(&spec.nodes), "the lab has 2 to 4 nodes, not {}", spec.nodes);
        assert!((1..=26).contains(&spec.pods_per_node), "1 to 26 pods per node, not {}", spec.pods_per_node);
        // (`--vpc ucloud` with another IPAM is for tests of the SDN: its pods are unregistered.)
        assert!(spec.ipam != IpamMode::Vpc || spec.vpc != VpcMode::L2, "the VPC's IPAM needs --vpc ucloud or aws");
        assert!(
            spec.vpc != VpcMode::Aws || (spec.ipam == IpamMode::Vpc && spec.mode == UplinkMode::HostRouted),
            "--vpc aws is host-routed with --ipam vpc"
        );
        assert!(spec.ipam != IpamMode::Vpc || spec.family == IpFamily::Ipv4, "provider mode is IPv4 only");
        let v6 = spec.family.has_v6();
        let name = unique("vl");
        let dir = TempDir::new();
        progress("fabric: a bridge for the VPC subnet 10.10.0.0/16");
        let fabric = Netns::new(&format!("{name}f"));
        fabric.ip(&["link", "add", "br0", "type", "bridge"]);
        fabric.ip(&["link", "set", "br0", "up"]);
        let (mut vpc_api, mut vpc, mut ec2_vpc, mut ec2) = (None, None, None, None);
        match spec.vpc {
            VpcMode::L2 => {}
            VpcMode::Ucloud => {
                let (api, info) = ucloud::start(&name, &fabric, &spec, &dir.0.join("vpc"));
                progress(&format!(
                    "SDN on the fabric (nftables, bridge family): frames pass only between addresses registered to \
                     their ports; the VPC API in UCloud's dialect at {} (VPC {}, subnet {}, flow-table push {} ms)",
                    api.endpoint, info.vpc_id, info.subnet_id, api.config.faults.push_delay_ms
                ));
                (vpc_api, vpc) = (Some(api), Some(info));
            }
            VpcMode::Aws => {
                let (running, info) = aws::start(&name, &fabric, spec.nodes, &dir.0.join("vpc"));
                progress(&format!(
                    "EC2 (moto behind the lab's proxy) at {} (VPC {}, subnet {} = 10.10.0.0/16, one {} instance per \
                     node, the VM and etcd as instances); SDN on the fabric programmed from EC2's \
                     DescribeNetworkInterfaces every {} ms, applied {} ms after",
                    info.endpoint,
                    info.vpc_id,
                    info.subnet_id,
                    info.instance_type,
                    aws::POLL_MS,
                    aws::PUSH_DELAY_MS
                ));
                (ec2_vpc, ec2) = (Some(running), Some(info));
            }
        }

        progress("VPC gateway, and the hybrid-cloud network behind it (link MTU 1400)");
        let gateway = Netns::new(&format!("{name}g"));
        attach(&fabric, &gateway, "eth0", "fgw", "10.10.0.1/16");
        let hybrid = Netns::new(&format!("{name}h"));
        veth(&gateway, "eth1", &hybrid, "eth0");
        let hybrid_mtu = spec.hybrid_mtu.to_string();
        gateway.ip(&["addr", "add", "172.16.50.1/24", "dev", "eth1"]);
        gateway.ip(&["link", "set", "eth1", "mtu", &hybrid_mtu, "up"]);
        hybrid.ip(&["addr", "add", "172.16.50.10/24", "dev", "eth0"]);
        hybrid.ip(&["link", "set", "eth0", "mtu", &hybrid_mtu, "up"]);
        hybrid.ip(&["route", "add", "default", "via", "172.16.50.1"]);
        sh(&gateway, "echo 1 > /proc/sys/net/ipv4/ip_forward");
        if v6 {
            progress(&format!(
                "IPv6: the VPC subnet {VPC_SUBNET6} (gateway {GATEWAY_IP6}), the hybrid network fd00:172:16:50::/64 on the same link"
            ));
            add6(&gateway, "eth0", GATEWAY_IP6);
            add6(&gateway, "eth1", HYBRID_GATEWAY_IP6);
            add6(&hybrid, "eth0", HYBRID_IP6);
            hybrid.ip(&["-6", "route", "add", "default", "via", &HYBRID_GATEWAY_IP6.to_string()]);
            sh(&gateway, "echo 1 > /proc/sys/net/ipv6/conf/all/forwarding");
        }

        progress("a VM on the VPC subnet (10.10.0.50)");
        let vm = Netns::new(&format!("{name}v"));
        attach(&fabric, &vm, "eth0", "fvm", "10.10.0.50/16");
        set_ec2_mac(ec2.as_ref(), &vm, "vm");
        vm.ip(&["route", "add", "default", "via", "10.10.0.1"]);
        if v6 {
            add6(&vm, "eth0", VM_IP6);
            vm.ip(&["-6", "route", "add", "default", "via", &GATEWAY_IP6.to_string()]);
        }

        let topology = Topology {
            name: name.clone(),
            mode: spec.mode,
            ipam: spec.ipam,
            family: spec.family,
            pod_mtu: spec.pod_mtu,
            hybrid_mtu: spec.hybrid_mtu,
            nodes: Vec::new(),
            sockets: Vec::new(),
            dir: dir.0.clone(),
            pods: Vec::new(),
            vm: vm.name.clone(),
            hybrid: hybrid.name.clone(),
            vpc,
            ec2,
            unregistered: None,
            load_balancer: None,
        };
        let mut lab = Lab {
            topology,
            spec: spec.clone(),
            servers: Vec::new(),
            daemons: Vec::new(),
            etcd: None,
            nodes: Vec::new(),
            pod_ns: Vec::new(),
            etcd_ns: Vec::new(),
            vpc_api,
            ec2_vpc,
            lb_ns: None,
            vm,
            hybrid,
            gateway,
            fabric,
            dir,
        };
        if spec.ipam != IpamMode::Local {
            progress(&format!(
                "etcd: 3 members, each in its own namespace on the fabric ({}-{}), TLS with client certificates",
                ETCD_IPS[0], ETCD_IPS[2]
            ));
            lab.start_etcd();
        }
        for i in 0..spec.nodes {
            progress(&format!(
                "node{} ({}): vswitchd, {}{}",
                i + 1,
                node_ip(i),
                match spec.mode {
                    UplinkMode::HostRouted => "host-routed",
                    UplinkMode::Uplink => "with a dedicated uplink NIC",
                },
                match (spec.ipam, spec.family) {
                    (IpamMode::Local, IpFamily::Ipv4) => format!(", pods from its own range 10.10.{}.10-250", i + 1),
                    (IpamMode::Local, IpFamily::Dual) => format!(
                        ", {}: pods from its own ranges 10.10.{}.10-250 and {}-{}",
                        node_ip6(i),
                        i + 1,
                        pod_range6(i).0,
                        pod_range6(i).1
                    ),
                    (IpamMode::Local, IpFamily::Ipv6) => format!(
                        ", {}: pods (IPv6 only) from its own range {}-{}",
                        node_ip6(i),
                        pod_range6(i).0,
                        pod_range6(i).1
                    ),
                    (IpamMode::Etcd, family) =>
                        format!(", pods from the cluster pool {} (in etcd)", pools(family).join(" and ")),
                    (IpamMode::Vpc, _) if spec.vpc == VpcMode::Aws => format!(
                        ", instance {}: pods get secondary private IPs of its ENIs from EC2 (provider \"aws\", \
                         IPv4 only; eth0 has its primary ENI's MAC)",
                        lab.topology.ec2.as_ref().and_then(|e| e.host(&format!("node{}", i + 1)).instance.clone())
                            .unwrap_or_default()
                    ),
                    (IpamMode::Vpc, _) => format!(
                        ", pods get secondary IPs of its NIC {} from the VPC API (provider mode, IPv4 only)",
                        node_config::pod_nic(spec.mode)
                    ),
                }
            ));
            lab.add_node(i);
        }
        for i in 0..spec.nodes {
            for p in 0..spec.pods_per_node {
                let pod = lab.add_pod(i, &pod_name(i, p));
                progress(&format!("pod {} on node{}: {} (through vpc-cni ADD)", pod.name, i + 1, pod.addresses()));
            }
        }
        if spec.ipam != IpamMode::Local {
            let pod = lab.add_pod(0, STICKY_POD);
            progress(&format!(
                "sticky pod {POD_NAMESPACE}/{STICKY_POD} on node1: {} (keeps its address on any node)",
                pod.addresses()
            ));
        }
        progress(&if v6 {
            format!(
                "dual-stack ClusterIP Service {SERVICE_IP}:80 and [{SERVICE_IP6}]:80, NodePort {NODE_PORT} on both \
                 families, as kube-proxy's iptables and ip6tables DNAT rules on every node"
            )
        } else {
            format!(
                "ClusterIP Service {SERVICE_IP}:80 and NodePort {NODE_PORT} as kube-proxy's DNAT rules on every node"
            )
        });
        if spec.ipam == IpamMode::Vpc {
            let pod = lab.add_unregistered_pod(0);
            progress(&format!(
                "pod {} on node1: {} configured by hand (a static address in its network config), never registered \
                 with the VPC",
                pod.name,
                pod.addresses()
            ));
        }
        lab.add_service();
        if spec.ipam == IpamMode::Vpc {
            let lb = lab.add_load_balancer();
            progress(&format!(
                "a load balancer on the VPC ({}:{}, {} in NAT mode, standing in for {}): the Service's pods \
                 {} as real servers, no NodePort hop",
                lb.vip,
                load_balancer::VIP_PORT,
                lb.kind,
                match spec.vpc {
                    VpcMode::Aws => "an NLB with IP targets and client IP preservation, its ENI in EC2",
                    _ => "UCloud's ULB",
                },
                lb.backends.join(", ")
            ));
        }
        progress("servers that report their peer's address, in every pod, node, the VM and the hybrid host");
        lab.start_servers();
        lab
    }

    /// Three etcd members, each in a namespace of its own on the fabric.
    fn start_etcd(&mut self) {
        let mut placement = Vec::new();
        for (i, ip) in ETCD_IPS.iter().enumerate() {
            let ns = Netns::new(&format!("{}e{}", self.name, i + 1));
            attach(&self.fabric, &ns, "eth0", &format!("fe{}", i + 1), &format!("{ip}/16"));
            set_ec2_mac(self.topology.ec2.as_ref(), &ns, &format!("etcd{}", i + 1));
            placement.push((ns.name.clone(), *ip));
            self.etcd_ns.push(ns);
        }
        self.etcd = Some(if self.spec.detachable {
            EtcdCluster::start_in_detached(&placement)
        } else {
            EtcdCluster::start_in(&placement)
        });
    }

    /// The VPC API's server ([`VpcMode::Ucloud`]): its state, SDN counters and faults.
    pub fn vpc_api(&self) -> Option<&vpc_api::VpcApi> {
        self.vpc_api.as_ref()
    }

    /// EC2 and the SDN programmer ([`VpcMode::Aws`]).
    pub fn ec2_vpc(&self) -> Option<&aws::Ec2Vpc> {
        self.ec2_vpc.as_ref()
    }

    /// The etcd cluster ([`IpamMode::Etcd`]).
    pub fn etcd(&self) -> Option<&EtcdCluster> {
        self.etcd.as_ref()
    }

    /// The network namespace of `node` (from 0): the node's own stack, where its vswitchd runs.
    pub fn node_ns(&self, node: usize) -> &Netns {
        &self.nodes[node]
    }

    /// vswitchd on `node` (from 0).
    pub fn daemon(&self, node: usize) -> &Daemon {
        &self.daemons[node]
    }

    /// Waits until every node has written its pods' addresses to etcd: an ADD takes a warm
    /// address in the node's own state and the node's next upkeep round (every second) writes it
    /// to the store. False if that took longer than `timeout`.
    pub fn wait_ipam_synced(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            let pending = |d: &Daemon| {
                let out = d.ctl(&["--json", "ipam"]);
                serde_json::from_slice::<Value>(&out.stdout).ok().and_then(|v| v["this_node"]["pending_sync"].as_u64())
            };
            if self.daemons.iter().all(|d| pending(d) == Some(0)) {
                return true;
            }
            if Instant::now() > deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// `vswitchctl ipam` on node1: the cluster's allocations, every node's pods from one pool
    /// (once every node has written its pods to etcd).
    pub fn ipam_report(&self) -> String {
        self.wait_ipam_synced(Duration::from_secs(5));
        let out = self.daemons[0].ctl(&["ipam"]);
        format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
    }

    fn add_node(&mut self, i: usize) {
        let ns = Netns::new(&format!("{}n{}", self.name, i + 1));
        let ip = node_ip(i);
        attach(&self.fabric, &ns, "eth0", &format!("fn{}", i + 1), &format!("{ip}/16"));
        if self.spec.vpc == VpcMode::Ucloud {
            // The MAC the VPC API knows this NIC by.
            ns.ip(&["link", "set", "eth0", "address", &ucloud::nic_mac(i)]);
        }
        set_ec2_mac(self.topology.ec2.as_ref(), &ns, &format!("node{}", i + 1));
        ns.ip(&["route", "add", "default", "via", "10.10.0.1"]);
        sh(&ns, "echo 1 > /proc/sys/net/ipv4/ip_forward");
        let v6 = self.spec.family.has_v6();
        let ip6 = node_ip6(i);
        if v6 {
            add6(&ns, "eth0", ip6);
            ns.ip(&["-6", "route", "add", "default", "via", &GATEWAY_IP6.to_string()]);
            // The node routes its pods' IPv6 (host-routed: between vsw0 and eth0).
            sh(&ns, "echo 1 > /proc/sys/net/ipv6/conf/all/forwarding");
        }
        match self.spec.mode {
            UplinkMode::HostRouted => {
                // The node answers ARP on the VPC subnet for its pods (it routes them via vsw0),
                // at once rather than after the default random proxy delay of up to 0.8 s.
                sh(&ns, "echo 1 > /proc/sys/net/ipv4/conf/eth0/proxy_arp && echo 0 > /proc/sys/net/ipv4/neigh/eth0/proxy_delay");
                if v6 {
                    // IPv6 has no proxy-everything: the node answers neighbour solicitations on
                    // eth0 only for the addresses in its proxy list, which vswitchd fills with
                    // its pods' IPv6 addresses when it has a NIC to announce them on.
                    sh(&ns, "echo 1 > /proc/sys/net/ipv6/conf/eth0/proxy_ndp && echo 0 > /proc/sys/net/ipv6/neigh/eth0/proxy_delay");
                }
            }
            UplinkMode::Uplink => {
                veth(&ns, "up0", &self.fabric, &format!("fu{}", i + 1));
                if self.spec.vpc == VpcMode::Ucloud {
                    ns.ip(&["link", "set", "up0", "address", &ucloud::uplink_mac(i)]);
                }
                self.fabric.ip(&["link", "set", &format!("fu{}", i + 1), "master", "br0", "up"]);
            }
        }
        let config = node_config::vswitchd_toml(
            &self.spec,
            i,
            self.etcd.as_ref(),
            self.topology.vpc.as_ref(),
            self.topology.ec2.as_ref(),
        );
        let env = self.topology.ec2.as_ref().map(aws::vswitchd_env).unwrap_or_default();
        let daemon = Daemon::start_with_config_env(
            &Binaries::beside_current_exe(),
            &ns,
            &self.dir.0.join(format!("node{}", i + 1)),
            self.spec.workers,
            &config,
            &env,
        );
        self.topology.sockets.push(daemon.socket.clone());
        self.daemons.push(daemon);
        self.topology.nodes.push(ns.name.clone());
        self.nodes.push(ns);
    }

    /// Pod `name` on `node` through vpc-cni ADD; panics with vpc-cni's error on failure.
    pub fn add_pod(&mut self, node: usize, name: &str) -> LabPod {
        let ns = Netns::new(&format!("{}p{name}", self.name));
        let container = format!("{}-{name}", self.name);
        let result = self.cni("ADD", node, &container, &ns.path(), name).unwrap_or_else(|e| {
            match self.spec.family {
                IpFamily::Ipv4 => panic!("{}", e.message),
                // The likeliest cause: a vpc-cni without dual-stack ranges.
                family => panic!("{} (--ip-family {family:?}: ipam {})", e.message, self.cni_conf(node)["ipam"]),
            }
        });
        let (ip, ipv6) = LabPod::from_result(&result);
        let wanted = self.spec.family.families();
        let has = |f: Family| match f {
            Family::V4 => ip.is_some(),
            Family::V6 => ipv6.is_some(),
        };
        assert!(
            wanted.iter().all(|&f| has(f)) && [Family::V4, Family::V6].iter().all(|&f| has(f) == wanted.contains(&f)),
            "vpc-cni ADD {name} on node{}: wanted {:?} addresses, the result has {result}",
            node + 1,
            self.spec.family
        );
        let pod = LabPod { name: name.to_string(), netns: ns.name.clone(), container_id: container, ip, ipv6, node };
        self.pod_ns.push(ns);
        self.topology.pods.push(pod.clone());
        pod
    }

    /// The Service on every node, in each family the pods have (a dual-stack Service: one
    /// ClusterIP per family, the NodePort on the node's addresses of both).
    fn add_service(&self) {
        for family in self.spec.family.families() {
            self.add_service_family(family);
        }
    }

    fn add_service_family(&self, family: Family) {
        let backends = self.topology.backends();
        let (tables, cluster_ip, backend): (&str, String, fn(&LabPod) -> String) = match family {
            Family::V4 => ("iptables", format!("{SERVICE_IP}/32"), |p: &LabPod| format!("{}:{SERVER_PORT}", p.ip4())),
            Family::V6 => ("ip6tables", format!("{SERVICE_IP6}/128"), |p: &LabPod| {
                format!("[{}]:{SERVER_PORT}", p.ipv6.expect("an IPv6 backend"))
            }),
        };
        for (i, node) in self.nodes.iter().enumerate() {
            let mut rules = vec![format!("{tables} -t nat -N KUBE-SVC-LAB")];
            rules.push(format!("{tables} -t nat -A PREROUTING -d {cluster_ip} -p tcp --dport 80 -j KUBE-SVC-LAB"));
            // The NodePort: kube-proxy sends what comes to any of the node's own addresses on the
            // port to the same Service chain (its KUBE-NODEPORTS, last in KUBE-SERVICES).
            rules.push(format!("{tables} -t nat -N KUBE-NODEPORTS"));
            rules.push(format!("{tables} -t nat -A PREROUTING -m addrtype --dst-type LOCAL -j KUBE-NODEPORTS"));
            rules.push(format!("{tables} -t nat -A KUBE-NODEPORTS -p tcp --dport {NODE_PORT} -j KUBE-SVC-LAB"));
            for (k, b) in backends.iter().enumerate() {
                let remaining = backends.len() - k;
                let pick = if remaining > 1 {
                    format!("-m statistic --mode random --probability {:.5} ", 1.0 / remaining as f64)
                } else {
                    String::new()
                };
                rules.push(format!(
                    "{tables} -t nat -A KUBE-SVC-LAB {pick}-p tcp -j DNAT --to-destination {}",
                    backend(b)
                ));
            }
            // A backend's reply must come back through this node's conntrack to be un-DNATed,
            // but the switch forwards pod to pod (and, with an uplink, node to node) directly,
            // and a backend on another node answers a NodePort client straight through the VPC:
            // so Service traffic leaves with the node's address, as kube-proxy masquerades
            // (for a NodePort, externalTrafficPolicy: Cluster; Local would keep the client's
            // address but serve only from this node's own backends).
            let node_addr = match family {
                Family::V4 => IpAddr::V4(node_ip(i)),
                Family::V6 => IpAddr::V6(node_ip6(i)),
            };
            rules.push(format!(
                "{tables} -t nat -A POSTROUTING -m conntrack --ctstate DNAT -j SNAT --to-source {node_addr}"
            ));
            sh(node, &rules.join(" && "));
        }
    }

    fn start_servers(&mut self) {
        let mut targets: Vec<(String, String)> =
            self.topology.pods.iter().map(|p| (p.netns.clone(), p.name.clone())).collect();
        targets.extend(self.nodes.iter().enumerate().map(|(i, n)| (n.name.clone(), format!("node{}", i + 1))));
        targets.push((self.vm.name.clone(), "vm".into()));
        targets.push((self.hybrid.name.clone(), "hybrid".into()));
        for (ns, name) in targets {
            self.servers.push(start_server(&ns, &name));
        }
        // Wait until every server listens.
        let deadline = Instant::now() + Duration::from_secs(10);
        for pod in self.topology.pods.clone() {
            let family = self.spec.family.families()[0];
            let ip = pod.addr(family).expect("the pod's address of its first family");
            while self.probe(&pod.netns, ip, SERVER_PORT).is_err() {
                assert!(Instant::now() < deadline, "server in {} did not start", pod.name);
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }

    /// Moves the sticky pod to the next node ([`Topology::move_sticky`]).
    pub fn move_sticky(&mut self) -> StickyMove {
        let moved = self.topology.move_sticky();
        if let Some(i) = self.pod_ns.iter().position(|n| n.name == moved.old_netns) {
            // Deleted by the move already.
            let _ = self.pod_ns.swap_remove(i).keep();
        }
        self.pod_ns.push(moved.new_netns);
        self.servers.push(moved.server);
        moved.report
    }

    /// Every pod back through vpc-cni DEL.
    pub fn delete_pods(&mut self) {
        self.delete_unregistered_pod();
        for pod in std::mem::take(&mut self.topology.pods) {
            let path = Path::new("/run/netns").join(&pod.netns);
            if let Err(e) = self.cni("DEL", pod.node, &pod.container_id, &path, &pod.name) {
                panic!("{}", e.message);
            }
        }
    }

    /// Leaves the lab running after this process ends (`vpc-lab up`); `vpc-lab down` removes it.
    pub fn detach(mut self) -> LabState {
        let etcd = self.etcd.take().map(EtcdCluster::detach);
        let mut pids: Vec<u32> = self.servers.iter().map(|c| c.id()).collect();
        pids.extend(self.daemons.iter().filter_map(|d| d.child.as_ref().map(|c| c.id())));
        let mut namespaces =
            vec![self.fabric.name.clone(), self.gateway.name.clone(), self.hybrid.name.clone(), self.vm.name.clone()];
        if let Some(api) = self.vpc_api.take() {
            let (ns, pid) = api.detach();
            namespaces.push(ns);
            pids.extend(pid);
        }
        if let Some(ec2) = self.ec2_vpc.take() {
            let (ns, ec2_pids) = ec2.detach();
            namespaces.push(ns);
            pids.extend(ec2_pids);
        }
        namespaces.extend(self.lb_ns.iter().map(|n| n.name.clone()));
        namespaces.extend(self.etcd_ns.iter().map(|n| n.name.clone()));
        namespaces.extend(self.nodes.iter().map(|n| n.name.clone()));
        namespaces.extend(self.pod_ns.iter().map(|n| n.name.clone()));
        let state = LabState { topology: self.topology.clone(), dir: self.dir.0.clone(), namespaces, pids, etcd };
        state.save().expect("save lab state");
        // Everything stays: the state file is now how it is found and removed.
        std::mem::forget(self);
        state
    }

    /// The fabric's namespace (its bridge `br0` is the VPC subnet): for a node the test wires
    /// up itself with [`attach`].
    pub fn fabric(&self) -> &Netns {
        &self.fabric
    }
}

/// `ns`'s eth0 takes the MAC of lab host `host`'s ENI in EC2 ([`VpcMode::Aws`]): the SDN
/// forwards an ENI's addresses to the port whose host has that ENI's MAC.
fn set_ec2_mac(ec2: Option<&aws::LabEc2>, ns: &Netns, host: &str) {
    if let Some(mac) = ec2.and_then(|e| e.mac(host)) {
        ns.ip(&["link", "set", "eth0", "address", mac]);
    }
}

/// `addr`/64 on `dev`, usable at once (no duplicate address detection: the lab's static
/// addresses are its own).
fn add6(ns: &Netns, dev: &str, addr: Ipv6Addr) {
    ns.ip(&["-6", "addr", "add", &format!("{addr}/64"), "dev", dev, "nodad"]);
}

/// Connects namespace `ns` to the fabric bridge: `inside` (addressed `addr`) there, `port` on
/// the bridge (`br0` in `fabric`). Public for benchmarks that build their own fabric.
pub fn attach(fabric: &Netns, ns: &Netns, inside: &str, port: &str, addr: &str) {
    veth(ns, inside, fabric, port);
    fabric.ip(&["link", "set", port, "master", "br0", "up"]);
    ns.ip(&["addr", "add", addr, "dev", inside]);
    ns.ip(&["link", "set", inside, "up"]);
}

impl Drop for Lab {
    fn drop(&mut self) {
        for server in &mut self.servers {
            let _ = server.kill();
            let _ = server.wait();
        }
        // Daemons, then etcd, then namespaces (their own Drop), then the directory: field order
        // does the rest.
        self.daemons.clear();
    }
}
