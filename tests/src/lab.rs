//! A whole VPC on one machine (see `../shared/docs/design.md`):
//!
//! ```text
//!   hybrid (172.16.50.10) ── gateway (172.16.50.1 | 10.10.0.1) ──┐
//!                                                                  │  fabric: a Linux bridge,
//!   vm (10.10.0.50) ───────────────────────────────────────────────┤  the VPC subnet 10.10.0.0/16
//!   node1 (10.10.0.11): vswitchd, pods 10.10.1.x via vpc-cni ─────┤
//!   node2 (10.10.0.12): vswitchd, pods 10.10.2.x via vpc-cni ─────┘
//! ```
//!
//! Pods are created only by the real `vpc-cni` binary, called as containerd calls it. Each node
//! holds a ClusterIP Service (10.96.0.10:80) made of iptables DNAT rules as kube-proxy makes
//! them, with a backend on each node. Two uplink modes: host-routed (pod traffic leaves through
//! the node's stack, which answers ARP for its pods by proxy-ARP) and a dedicated uplink NIC per
//! node driven by vswitchd. Every server in the lab reports who connected, which proves there is
//! no NAT on the way.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::netns::{binary, cni_command, run_cni, unique, Binaries, Daemon, Netns, TempDir};

/// How pod traffic reaches the VPC.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum UplinkMode {
    /// Through the host port and the node's own stack (no dedicated NIC).
    HostRouted,
    /// Through a NIC dedicated to pod traffic, driven by vswitchd.
    Uplink,
}

#[derive(Debug, Clone)]
pub struct LabSpec {
    pub mode: UplinkMode,
    pub nodes: usize,
    pub pods_per_node: usize,
    pub pod_mtu: u16,
    /// MTU of the link to the hybrid-cloud network (smaller, to show fragmentation-needed).
    pub hybrid_mtu: u16,
    pub workers: usize,
}

impl Default for LabSpec {
    fn default() -> Self {
        LabSpec {
            mode: UplinkMode::HostRouted,
            nodes: 2,
            pods_per_node: 2,
            pod_mtu: 1500,
            hybrid_mtu: 1400,
            workers: 1,
        }
    }
}

pub const GATEWAY_IP: Ipv4Addr = Ipv4Addr::new(10, 10, 0, 1);
pub const VM_IP: Ipv4Addr = Ipv4Addr::new(10, 10, 0, 50);
pub const HYBRID_IP: Ipv4Addr = Ipv4Addr::new(172, 16, 50, 10);
pub const SERVICE_IP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 10);
pub const SERVER_PORT: u16 = 8080;
const STATE_DIR: &str = "/run/vpc-lab";

pub fn node_ip(node: usize) -> Ipv4Addr {
    Ipv4Addr::new(10, 10, 0, 11 + node as u8)
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LabPod {
    pub name: String,
    pub netns: String,
    pub container_id: String,
    pub ip: Ipv4Addr,
    pub node: usize,
}

/// Who is where in a lab: enough to check every path, from the process that built the lab or
/// from a later `vpc-lab check`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Topology {
    pub name: String,
    pub mode: UplinkMode,
    pub pod_mtu: u16,
    pub hybrid_mtu: u16,
    /// Node namespaces, node1 first.
    pub nodes: Vec<String>,
    pub pods: Vec<LabPod>,
    pub vm: String,
    pub hybrid: String,
}

/// Everything needed to find and remove a lab later (`vpc-lab down`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LabState {
    pub topology: Topology,
    pub dir: PathBuf,
    pub namespaces: Vec<String>,
    pub pids: Vec<u32>,
}

impl LabState {
    pub fn path(name: &str) -> PathBuf {
        Path::new(STATE_DIR).join(format!("{name}.json"))
    }

    /// The labs that are up.
    pub fn list() -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(STATE_DIR)
            .map(|d| {
                d.flatten().filter_map(|e| e.file_name().to_str()?.strip_suffix(".json").map(str::to_string)).collect()
            })
            .unwrap_or_default();
        names.sort();
        names
    }

    pub fn load(name: &str) -> std::io::Result<LabState> {
        let bytes = std::fs::read(Self::path(name))?;
        serde_json::from_slice(&bytes).map_err(std::io::Error::other)
    }

    /// Kills the lab's processes and deletes its namespaces (and so every link in them).
    pub fn teardown(&self) {
        for &pid in &self.pids {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), nix::sys::signal::Signal::SIGKILL);
        }
        for ns in self.namespaces.iter().rev() {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
        let _ = std::fs::remove_file(Self::path(&self.topology.name));
    }
}

/// A running lab. Dropping it removes everything it made, also after a failure.
#[derive(Debug)]
pub struct Lab {
    pub topology: Topology,
    pub spec: LabSpec,
    servers: Vec<Child>,
    daemons: Vec<Daemon>,
    nodes: Vec<Netns>,
    pod_ns: Vec<Netns>,
    vm: Netns,
    hybrid: Netns,
    gateway: Netns,
    fabric: Netns,
    dir: TempDir,
    cni: PathBuf,
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
    pub from: String,
    pub to: String,
    pub ok: bool,
    pub rtt_ms: Option<f64>,
    pub detail: String,
}

impl Topology {
    /// The first pod of each node is a backend of the Service.
    pub fn backends(&self) -> Vec<&LabPod> {
        (0..self.nodes.len()).filter_map(|n| self.pods.iter().find(|p| p.node == n)).collect()
    }

    /// Connects from namespace `from` to `to:port`; returns (server name, the peer address the
    /// server saw, connect+reply time).
    pub fn probe(&self, from: &str, to: Ipv4Addr, port: u16) -> Result<(String, String, f64), String> {
        let out = Command::new("ip")
            .args(["netns", "exec", from])
            .arg(binary("vpc-lab"))
            .args(["probe", &format!("{to}:{port}")])
            .output()
            .map_err(|e| e.to_string())?;
        let text = String::from_utf8_lossy(&out.stdout).trim().to_string();
        if !out.status.success() {
            return Err(format!("{text}{}", String::from_utf8_lossy(&out.stderr).trim()));
        }
        // "name=X peer=IP:PORT rtt_ms=F"
        let field = |k: &str| text.split_whitespace().find_map(|f| f.strip_prefix(k)).unwrap_or("").to_string();
        Ok((field("name="), field("peer="), field("rtt_ms=").parse().unwrap_or(0.0)))
    }

    /// Pings; returns the average RTT.
    pub fn ping(&self, from: &str, to: Ipv4Addr) -> Result<f64, String> {
        let out = Command::new("ip")
            .args(["netns", "exec", from, "ping", "-c", "2", "-i", "0.2", "-W", "2", &to.to_string()])
            .output()
            .map_err(|e| e.to_string())?;
        let text = String::from_utf8_lossy(&out.stdout);
        if !out.status.success() {
            return Err(text.lines().last().unwrap_or("no reply").to_string());
        }
        // rtt min/avg/max/mdev = 0.1/0.2/0.3/0.0 ms
        let avg = text
            .lines()
            .next_back()
            .and_then(|l| l.split('=').nth(1))
            .and_then(|v| v.trim().split('/').nth(1))
            .and_then(|v| v.parse().ok());
        Ok(avg.unwrap_or(0.0))
    }

    fn ns_of(&self, who: &str) -> (String, Ipv4Addr) {
        if let Some(p) = self.pods.iter().find(|p| p.name == who) {
            return (p.netns.clone(), p.ip);
        }
        match who {
            "vm" => (self.vm.clone(), VM_IP),
            "hybrid" => (self.hybrid.clone(), HYBRID_IP),
            n if n.starts_with("node") => {
                let i: usize = n[4..].parse::<usize>().expect("node number") - 1;
                (self.nodes[i].clone(), node_ip(i))
            }
            _ => panic!("no {who} in the lab"),
        }
    }

    /// One path: ping, then a TCP connection whose server must report `from`'s own address.
    fn check_path(&self, path: &str, from: &str, to: &str) -> PathCheck {
        let (from_ns, from_ip) = self.ns_of(from);
        let (_, to_ip) = self.ns_of(to);
        let mut check = PathCheck {
            path: path.into(),
            from: from.into(),
            to: to.into(),
            ok: false,
            rtt_ms: None,
            detail: String::new(),
        };
        match self.ping(&from_ns, to_ip) {
            Err(e) => check.detail = format!("ping: {e}"),
            Ok(rtt) => {
                check.rtt_ms = Some(rtt);
                match self.probe(&from_ns, to_ip, SERVER_PORT) {
                    Err(e) => check.detail = format!("tcp: {e}"),
                    Ok((name, peer, _)) => {
                        let peer_ip = peer.split(':').next().unwrap_or("");
                        check.ok = name == to && peer_ip == from_ip.to_string();
                        check.detail = format!(
                            "{to} saw {peer_ip}{}",
                            if check.ok {
                                " (its own address: no NAT)"
                            } else {
                                " - expected the sender's own address"
                            }
                        );
                    }
                }
            }
        }
        check
    }

    /// The Service from a pod: every backend must answer (kube-proxy spreads connections).
    fn check_service(&self, from: &str) -> PathCheck {
        let (from_ns, _) = self.ns_of(from);
        let wanted: Vec<String> = self.backends().iter().map(|b| b.name.clone()).collect();
        let mut seen = std::collections::BTreeSet::new();
        let mut rtts = Vec::new();
        let mut error = None;
        for _ in 0..24 {
            match self.probe(&from_ns, SERVICE_IP, 80) {
                Ok((name, _, rtt)) => {
                    seen.insert(name);
                    rtts.push(rtt);
                }
                Err(e) => error = Some(e),
            }
            if wanted.iter().all(|w| seen.contains(w)) {
                break;
            }
        }
        let ok = error.is_none() && wanted.iter().all(|w| seen.contains(w));
        PathCheck {
            path: "pod -> Service ClusterIP".into(),
            from: from.into(),
            to: format!("{SERVICE_IP}:80"),
            ok,
            rtt_ms: (!rtts.is_empty()).then(|| rtts.iter().sum::<f64>() / rtts.len() as f64),
            detail: match error {
                Some(e) => format!("tcp: {e}"),
                None => format!("backends reached: {}", seen.into_iter().collect::<Vec<_>>().join(", ")),
            },
        }
    }

    /// A DF ping larger than the hybrid link's MTU must come back as fragmentation-needed with
    /// that MTU.
    fn check_mtu(&self, from: &str) -> PathCheck {
        let (from_ns, _) = self.ns_of(from);
        let size = (self.pod_mtu - 28).to_string();
        let out = Command::new("ip")
            .args([
                "netns",
                "exec",
                &from_ns,
                "ping",
                "-c",
                "2",
                "-i",
                "0.3",
                "-W",
                "1",
                "-M",
                "do",
                "-s",
                &size,
                &HYBRID_IP.to_string(),
            ])
            .output();
        let text = out
            .map(|o| String::from_utf8_lossy(&o.stdout).to_string() + &String::from_utf8_lossy(&o.stderr))
            .unwrap_or_default();
        let mtu = self.hybrid_mtu.to_string();
        let ok = text.contains(&format!("mtu = {mtu}")) || text.contains(&format!("mtu={mtu}"));
        PathCheck {
            path: "MTU: DF ping too big for the hybrid link".into(),
            from: from.into(),
            to: "hybrid".into(),
            ok,
            rtt_ms: None,
            detail: if ok {
                format!("fragmentation needed, mtu {mtu}")
            } else {
                text.lines().rfind(|l| !l.is_empty()).unwrap_or("").to_string()
            },
        }
    }

    /// The whole matrix.
    pub fn check(&self) -> Vec<PathCheck> {
        let pod = |node: usize, index: usize| format!("n{}{}", node + 1, (b'a' + index as u8) as char);
        let (a1, b1, a2) = (pod(0, 0), pod(0, 1), pod(1, 0));
        vec![
            self.check_path("pod -> pod, same node", &a1, &b1),
            self.check_path("pod -> pod, across nodes", &a1, &a2),
            self.check_path("pod -> pod, across nodes (back)", &a2, &b1),
            self.check_path("pod -> its own node", &a1, "node1"),
            self.check_path("pod -> the other node", &a1, "node2"),
            self.check_path("node -> pod on another node", "node2", &b1),
            self.check_service(&b1),
            self.check_path("pod -> VPC host (VM)", &a1, "vm"),
            self.check_path("VPC host (VM) -> pod", "vm", &a2),
            self.check_path("pod -> hybrid-cloud host", &b1, "hybrid"),
            self.check_path("hybrid-cloud host -> pod", "hybrid", &a1),
            self.check_mtu(&a1),
        ]
    }

    /// One iperf3 TCP stream between two pods.
    pub fn iperf3(&self, from: &str, to: &str, seconds: u32) -> Result<crate::netns::TcpRun, String> {
        let (from_ns, _) = self.ns_of(from);
        let (to_ns, to_ip) = self.ns_of(to);
        let run = crate::netns::iperf3(&from_ns, &to_ns, to_ip, 1, seconds)?;
        if run.bits_per_second > 0.0 {
            Ok(run)
        } else {
            Err(format!("iperf3 received nothing: {run:?}"))
        }
    }
}

fn sh(ns: &Netns, script: &str) {
    let out = ns.exec(&["sh", "-c", script]);
    assert!(out.status.success(), "in {}: {script}: {}", ns.name, String::from_utf8_lossy(&out.stderr));
}

fn veth(a: &Netns, a_name: &str, b: &Netns, b_name: &str) {
    a.ip(&["link", "add", a_name, "type", "veth", "peer", "name", b_name, "netns", &b.name]);
}

impl Lab {
    /// Builds the lab; `progress` is told about each step.
    pub fn up(spec: LabSpec, mut progress: impl FnMut(&str)) -> Lab {
        let name = unique("vl");
        let dir = TempDir::new();
        let cni = binary("vpc-cni");
        progress("fabric: a bridge for the VPC subnet 10.10.0.0/16");
        let fabric = Netns::new(&format!("{name}f"));
        fabric.ip(&["link", "add", "br0", "type", "bridge"]);
        fabric.ip(&["link", "set", "br0", "up"]);
        let attach = |ns: &Netns, inside: &str, port: &str, addr: Option<&str>| {
            veth(ns, inside, &fabric, port);
            fabric.ip(&["link", "set", port, "master", "br0", "up"]);
            if let Some(addr) = addr {
                ns.ip(&["addr", "add", addr, "dev", inside]);
            }
            ns.ip(&["link", "set", inside, "up"]);
        };

        progress("VPC gateway, and the hybrid-cloud network behind it (link MTU 1400)");
        let gateway = Netns::new(&format!("{name}g"));
        attach(&gateway, "eth0", "fgw", Some("10.10.0.1/16"));
        let hybrid = Netns::new(&format!("{name}h"));
        veth(&gateway, "eth1", &hybrid, "eth0");
        let hybrid_mtu = spec.hybrid_mtu.to_string();
        gateway.ip(&["addr", "add", "172.16.50.1/24", "dev", "eth1"]);
        gateway.ip(&["link", "set", "eth1", "mtu", &hybrid_mtu, "up"]);
        hybrid.ip(&["addr", "add", "172.16.50.10/24", "dev", "eth0"]);
        hybrid.ip(&["link", "set", "eth0", "mtu", &hybrid_mtu, "up"]);
        hybrid.ip(&["route", "add", "default", "via", "172.16.50.1"]);
        sh(&gateway, "echo 1 > /proc/sys/net/ipv4/ip_forward");

        progress("a VM on the VPC subnet (10.10.0.50)");
        let vm = Netns::new(&format!("{name}v"));
        attach(&vm, "eth0", "fvm", Some("10.10.0.50/16"));
        vm.ip(&["route", "add", "default", "via", "10.10.0.1"]);

        let topology = Topology {
            name: name.clone(),
            mode: spec.mode,
            pod_mtu: spec.pod_mtu,
            hybrid_mtu: spec.hybrid_mtu,
            nodes: Vec::new(),
            pods: Vec::new(),
            vm: vm.name.clone(),
            hybrid: hybrid.name.clone(),
        };
        let mut lab = Lab {
            topology,
            spec: spec.clone(),
            servers: Vec::new(),
            daemons: Vec::new(),
            nodes: Vec::new(),
            pod_ns: Vec::new(),
            vm,
            hybrid,
            gateway,
            fabric,
            dir,
            cni,
        };
        for i in 0..spec.nodes {
            progress(&format!(
                "node{} ({}): vswitchd, {}",
                i + 1,
                node_ip(i),
                match spec.mode {
                    UplinkMode::HostRouted => "host-routed".to_string(),
                    UplinkMode::Uplink => "with a dedicated uplink NIC".to_string(),
                }
            ));
            lab.add_node(i);
        }
        for i in 0..spec.nodes {
            for p in 0..spec.pods_per_node {
                let pod = lab.add_pod(i, p);
                progress(&format!("pod {} on node{}: {} (through vpc-cni ADD)", pod.name, i + 1, pod.ip));
            }
        }
        progress("ClusterIP Service 10.96.0.10:80 as kube-proxy's DNAT rules on every node");
        lab.add_service();
        progress("servers that report their peer's address, in every pod, node, the VM and the hybrid host");
        lab.start_servers();
        lab
    }

    fn add_node(&mut self, i: usize) {
        let ns = Netns::new(&format!("{}n{}", self.name, i + 1));
        let ip = node_ip(i);
        veth(&ns, "eth0", &self.fabric, &format!("fn{}", i + 1));
        self.fabric.ip(&["link", "set", &format!("fn{}", i + 1), "master", "br0", "up"]);
        ns.ip(&["addr", "add", &format!("{ip}/16"), "dev", "eth0"]);
        ns.ip(&["link", "set", "eth0", "up"]);
        ns.ip(&["route", "add", "default", "via", "10.10.0.1"]);
        sh(&ns, "echo 1 > /proc/sys/net/ipv4/ip_forward");
        let config = match self.spec.mode {
            UplinkMode::HostRouted => {
                // The node answers ARP on the VPC subnet for its pods (it routes them via vsw0),
                // at once rather than after the default random proxy delay of up to 0.8 s.
                sh(&ns, "echo 1 > /proc/sys/net/ipv4/conf/eth0/proxy_arp && echo 0 > /proc/sys/net/ipv4/neigh/eth0/proxy_delay");
                "".to_string()
            }
            UplinkMode::Uplink => {
                veth(&ns, "up0", &self.fabric, &format!("fu{}", i + 1));
                self.fabric.ip(&["link", "set", &format!("fu{}", i + 1), "master", "br0", "up"]);
                format!(
                    "[host_port]\ndefault_route = false\nroutes = [\"{ip}/32\", \"10.96.0.0/12\"]\n\
                     [uplink]\ninterface = \"up0\"\nsubnet = \"10.10.0.0/16\"\ngateway = \"10.10.0.1\"\n"
                )
            }
        };
        let daemon = Daemon::start_with_config(
            &Binaries::beside_current_exe(),
            &ns,
            &self.dir.0.join(format!("node{}", i + 1)),
            self.spec.workers,
            &config,
        );
        self.daemons.push(daemon);
        self.topology.nodes.push(ns.name.clone());
        self.nodes.push(ns);
    }

    fn cni_conf(&self, node: usize) -> Value {
        json!({
            "cniVersion": "1.1.0",
            "name": "vpc",
            "type": "vpc-cni",
            "vswitchSocket": self.daemons[node].socket,
            "mtu": self.spec.pod_mtu,
            "ipam": {
                "ranges": [{"rangeStart": format!("10.10.{}.10", node + 1), "rangeEnd": format!("10.10.{}.250", node + 1)}],
                "dataDir": self.dir.0.join(format!("node{}/ipam", node + 1)),
            }
        })
    }

    /// Runs vpc-cni as containerd does; panics with its error JSON on failure.
    fn run_cni(&self, command: &str, node: usize, container: &str, netns: &Path) -> Value {
        let mut cmd = cni_command(&self.cni, command, container, netns);
        cmd.env("CNI_ARGS", format!("IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME={container}"));
        let out = run_cni(cmd, &self.cni_conf(node));
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "vpc-cni {command} {container}: {text}");
        if text.trim().is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).expect("CNI result JSON")
        }
    }

    fn add_pod(&mut self, node: usize, index: usize) -> LabPod {
        let name = format!("n{}{}", node + 1, (b'a' + index as u8) as char);
        let ns = Netns::new(&format!("{}p{}", self.name, name));
        let container = format!("{}-{name}", self.name);
        let result = self.run_cni("ADD", node, &container, &ns.path());
        let ip =
            result["ips"][0]["address"].as_str().expect("address").split('/').next().unwrap().parse().expect("IPv4");
        let pod = LabPod { name, netns: ns.name.clone(), container_id: container, ip, node };
        self.pod_ns.push(ns);
        self.topology.pods.push(pod.clone());
        pod
    }

    fn add_service(&self) {
        let backends = self.topology.backends();
        for (i, node) in self.nodes.iter().enumerate() {
            let mut rules = vec![format!("iptables -t nat -N KUBE-SVC-LAB")];
            rules.push(format!("iptables -t nat -A PREROUTING -d {SERVICE_IP}/32 -p tcp --dport 80 -j KUBE-SVC-LAB"));
            for (k, b) in backends.iter().enumerate() {
                let remaining = backends.len() - k;
                let pick = if remaining > 1 {
                    format!("-m statistic --mode random --probability {:.5} ", 1.0 / remaining as f64)
                } else {
                    String::new()
                };
                rules.push(format!(
                    "iptables -t nat -A KUBE-SVC-LAB {pick}-p tcp -j DNAT --to-destination {}:{SERVER_PORT}",
                    b.ip
                ));
            }
            // A backend's reply must come back through this node's conntrack to be un-DNATed,
            // but the switch forwards pod to pod (and, with an uplink, node to node) directly:
            // so Service traffic leaves with the node's address, as kube-proxy masquerades.
            rules.push(format!(
                "iptables -t nat -A POSTROUTING -m conntrack --ctstate DNAT -j SNAT --to-source {}",
                node_ip(i)
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
        let tool = binary("vpc-lab");
        for (ns, name) in targets {
            let child = Command::new("ip")
                .args(["netns", "exec", &ns])
                .arg(&tool)
                .args(["serve", "--name", &name, "--port", &SERVER_PORT.to_string()])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("start server");
            self.servers.push(child);
        }
        // Wait until every server listens.
        let deadline = Instant::now() + Duration::from_secs(10);
        for pod in self.topology.pods.clone() {
            while self.probe(&pod.netns, pod.ip, SERVER_PORT).is_err() {
                assert!(Instant::now() < deadline, "server in {} did not start", pod.name);
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }

    /// Every pod back through vpc-cni DEL.
    pub fn delete_pods(&mut self) {
        for pod in std::mem::take(&mut self.topology.pods) {
            let path = Path::new("/run/netns").join(&pod.netns);
            self.run_cni("DEL", pod.node, &pod.container_id, &path);
        }
    }

    /// Leaves the lab running after this process ends (`vpc-lab up`); `vpc-lab down` removes it.
    pub fn detach(self) -> LabState {
        let mut pids: Vec<u32> = self.servers.iter().map(|c| c.id()).collect();
        pids.extend(self.daemons.iter().filter_map(|d| d.child.as_ref().map(|c| c.id())));
        let mut namespaces =
            vec![self.fabric.name.clone(), self.gateway.name.clone(), self.hybrid.name.clone(), self.vm.name.clone()];
        namespaces.extend(self.nodes.iter().map(|n| n.name.clone()));
        namespaces.extend(self.pod_ns.iter().map(|n| n.name.clone()));
        let state = LabState { topology: self.topology.clone(), dir: self.dir.0.clone(), namespaces, pids };
        std::fs::create_dir_all(STATE_DIR).expect("state dir");
        std::fs::write(LabState::path(&state.topology.name), serde_json::to_vec_pretty(&state).expect("serialisable"))
            .expect("save lab state");
        // Everything stays: the state file is now how it is found and removed.
        std::mem::forget(self);
        state
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        for server in &mut self.servers {
            let _ = server.kill();
            let _ = server.wait();
        }
        // Daemons, then namespaces (their own Drop), then the directory: field order does the rest.
        self.daemons.clear();
    }
}
