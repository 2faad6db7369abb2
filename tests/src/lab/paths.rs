//! The path matrix: every communication path of the lab, for every node and every pair of nodes,
//! each proven with a ping and a TCP connection whose server reports the address it saw.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

use super::{node_ip, pod_name, PathCheck, Topology, HYBRID_IP, NODE_PORT, SERVER_PORT, SERVICE_IP, VM_IP};
use crate::netns::binary;

/// How many checks run at once: they mostly wait for replies.
const PARALLEL: usize = 6;

/// One row of the matrix, before it runs.
enum Check {
    Path { path: &'static str, from: String, to: String },
    Service { from: String },
    NodePort { node: usize },
    Mtu { from: String },
}

impl Topology {
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

    /// The namespace and address of a pod, `nodeN`, `vm` or `hybrid`.
    pub(super) fn ns_of(&self, who: &str) -> (String, Ipv4Addr) {
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
        let mut check = PathCheck::new(path, from, to);
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

    /// Connects from `from_ns` to `to:port` until every backend has answered (kube-proxy
    /// spreads connections at random) or 24 tries; returns the backends that answered with the
    /// peer address each saw, the mean time, and the last error.
    fn spread(
        &self,
        from_ns: &str,
        to: Ipv4Addr,
        port: u16,
    ) -> (BTreeSet<(String, String)>, Option<f64>, Option<String>) {
        let wanted: Vec<String> = self.backends().iter().map(|b| b.name.clone()).collect();
        let mut seen = BTreeSet::new();
        let mut rtts = Vec::new();
        let mut error = None;
        for _ in 0..24 {
            match self.probe(from_ns, to, port) {
                Ok((name, peer, rtt)) => {
                    seen.insert((name, peer.split(':').next().unwrap_or("").to_string()));
                    rtts.push(rtt);
                }
                Err(e) => error = Some(e),
            }
            if wanted.iter().all(|w| seen.iter().any(|(name, _)| name == w)) {
                break;
            }
        }
        let mean = (!rtts.is_empty()).then(|| rtts.iter().sum::<f64>() / rtts.len() as f64);
        (seen, mean, error)
    }

    fn all_backends(&self, seen: &BTreeSet<(String, String)>) -> bool {
        self.backends().iter().all(|b| seen.iter().any(|(name, _)| *name == b.name))
    }

    /// The Service from a pod: every backend must answer.
    fn check_service(&self, from: &str) -> PathCheck {
        let (from_ns, _) = self.ns_of(from);
        let (seen, rtt, error) = self.spread(&from_ns, SERVICE_IP, 80);
        let mut check = PathCheck::new("pod -> Service ClusterIP", from, &format!("{SERVICE_IP}:80"));
        check.ok = error.is_none() && self.all_backends(&seen);
        check.rtt_ms = rtt;
        let names: BTreeSet<&str> = seen.iter().map(|(name, _)| name.as_str()).collect();
        check.detail = match error {
            Some(e) => format!("tcp: {e}"),
            None => format!("backends reached: {}", names.into_iter().collect::<Vec<_>>().join(", ")),
        };
        check
    }

    /// The NodePort through node `node` from the hybrid-cloud host, a client outside the cluster
    /// behind the VPC gateway: every backend (on every node) must answer, and each must see
    /// this node's address, because the node masquerades as kube-proxy does for
    /// externalTrafficPolicy: Cluster (a backend on another node would otherwise answer the
    /// client directly, past the conntrack entry that undoes the DNAT).
    fn check_node_port(&self, node: usize) -> PathCheck {
        let (from_ns, _) = self.ns_of("hybrid");
        let via = node_ip(node);
        let (seen, rtt, error) = self.spread(&from_ns, via, NODE_PORT);
        let mut check =
            PathCheck::new("outside client -> NodePort", "hybrid", &format!("node{}:{NODE_PORT}", node + 1));
        let peers: BTreeSet<&str> = seen.iter().map(|(_, peer)| peer.as_str()).collect();
        let snat = peers.iter().all(|p| *p == via.to_string());
        check.ok = error.is_none() && self.all_backends(&seen) && snat;
        check.rtt_ms = rtt;
        let names: BTreeSet<&str> = seen.iter().map(|(name, _)| name.as_str()).collect();
        let names = names.into_iter().collect::<Vec<_>>().join(", ");
        check.detail = match error {
            Some(e) => format!("tcp: {e}"),
            None if snat => {
                format!("{names} answered; each saw {via} (node{}: SNAT, externalTrafficPolicy Cluster)", node + 1)
            }
            None => format!(
                "{names} answered; they saw {} - expected node{}'s {via}",
                peers.into_iter().collect::<Vec<_>>().join(", "),
                node + 1
            ),
        };
        check
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
        let mut check = PathCheck::new("MTU: DF ping too big for the hybrid link", from, "hybrid");
        check.ok = text.contains(&format!("mtu = {mtu}")) || text.contains(&format!("mtu={mtu}"));
        check.detail = if check.ok {
            format!("fragmentation needed, mtu {mtu}")
        } else {
            text.lines().rfind(|l| !l.is_empty()).unwrap_or("").to_string()
        };
        check
    }

    /// Pod `index` of `node`, or its first pod if it has fewer.
    fn pod_of(&self, node: usize, index: usize) -> String {
        let name = pod_name(node, index);
        if self.pod(&name).is_some() {
            name
        } else {
            pod_name(node, 0)
        }
    }

    /// The whole matrix, for every node and every pair of nodes (the sticky pod is not in it:
    /// [`Topology::move_sticky`] checks that one).
    pub fn check(&self) -> Vec<PathCheck> {
        let n = self.nodes.len();
        let (a, b) = (|i| self.pod_of(i, 0), |i| self.pod_of(i, 1));
        let node = |i: usize| format!("node{}", i + 1);
        let pairs: Vec<(usize, usize)> =
            (0..n).flat_map(|i| (0..n).filter(move |&j| j != i).map(move |j| (i, j))).collect();
        let path = |path: &'static str, from: String, to: String| Check::Path { path, from, to };
        let mut plan = Vec::new();
        plan.extend((0..n).map(|i| path("pod -> pod, same node", a(i), b(i))));
        for i in 0..n {
            for j in i + 1..n {
                plan.push(path("pod -> pod, across nodes", a(i), a(j)));
                plan.push(path("pod -> pod, across nodes (back)", a(j), b(i)));
            }
        }
        plan.extend((0..n).map(|i| path("pod -> its own node", a(i), node(i))));
        plan.extend(pairs.iter().map(|&(i, j)| path("pod -> another node", a(i), node(j))));
        plan.extend(pairs.iter().map(|&(i, j)| path("node -> pod on another node", node(j), b(i))));
        plan.extend((0..n).map(|i| Check::Service { from: b(i) }));
        plan.extend((0..n).map(|i| Check::NodePort { node: i }));
        plan.extend((0..n).map(|i| path("pod -> VPC host (VM)", a(i), "vm".into())));
        plan.extend((0..n).map(|i| path("VPC host (VM) -> pod", "vm".into(), a(i))));
        plan.extend((0..n).map(|i| path("pod -> hybrid-cloud host", b(i), "hybrid".into())));
        plan.extend((0..n).map(|i| path("hybrid-cloud host -> pod", "hybrid".into(), a(i))));
        plan.extend((0..n).map(|i| Check::Mtu { from: a(i) }));
        self.run_all(&plan)
    }

    /// Runs the checks, [`PARALLEL`] at a time; results in plan order.
    fn run_all(&self, plan: &[Check]) -> Vec<PathCheck> {
        let next = AtomicUsize::new(0);
        let results: Mutex<Vec<Option<PathCheck>>> = Mutex::new(vec![None; plan.len()]);
        std::thread::scope(|s| {
            for _ in 0..PARALLEL.min(plan.len()) {
                s.spawn(|| loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some(check) = plan.get(i) else { break };
                    let result = match check {
                        Check::Path { path, from, to } => self.check_path(path, from, to),
                        Check::Service { from } => self.check_service(from),
                        Check::NodePort { node } => self.check_node_port(*node),
                        Check::Mtu { from } => self.check_mtu(from),
                    };
                    results.lock().unwrap_or_else(|p| p.into_inner())[i] = Some(result);
                });
            }
        });
        results
            .into_inner()
            .unwrap_or_else(|p| p.into_inner())
            .into_iter()
            .map(|r| r.expect("every check ran"))
            .collect()
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
