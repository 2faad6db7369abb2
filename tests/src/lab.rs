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
mod spec;
mod state;
mod sticky;
mod sticky_vpc;
pub mod ucloud;
mod unregistered;
mod up;
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
pub use spec::*;
pub use state::LabState;
pub use sticky::StickyMove;

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
