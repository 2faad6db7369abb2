//! The path matrix: every communication path of the lab, for every node and every pair of nodes
//! and for each address family the pods have, each proven with a ping and a TCP connection whose
//! server reports the address it saw.

use std::collections::BTreeSet;
use std::net::{IpAddr, SocketAddr};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

use super::{
    node_ip, node_ip6, pod_name, Family, PathCheck, Topology, HYBRID_IP, HYBRID_IP6, NODE_PORT, SERVER_PORT,
    SERVICE_IP, SERVICE_IP6, VM_IP, VM_IP6,
};
use crate::netns::binary;

/// How many checks run at once: they mostly wait for replies.
const PARALLEL: usize = 6;

/// One row of the matrix, before it runs.
enum Check {
    Path {
        family: Family,
        path: &'static str,
        from: String,
        to: String,
    },
    Service {
        family: Family,
        from: String,
    },
    NodePort {
        family: Family,
        node: usize,
    },
    Mtu {
        from: String,
    },
    /// IPv6: Packet Too Big, path MTU discovery, and a large transfer that completes; `port`
    /// is the iperf3 server's on the hybrid host (one per check: they run in parallel).
    Mtu6 {
        from: String,
        port: u16,
    },
}

/// The peer address in a server's `peer=` field (`IP:PORT` or `[IPv6]:PORT`).
fn peer_ip(peer: &str) -> String {
    peer.parse::<SocketAddr>().map_or_else(|_| peer.to_string(), |a| a.ip().to_string())
}

impl Topology {
    /// Connects from namespace `from` to `to:port`; returns (server name, the peer address the
    /// server saw, connect+reply time).
    pub fn probe(&self, from: &str, to: IpAddr, port: u16) -> Result<(String, String, f64), String> {
        let out = Command::new("ip")
            .args(["netns", "exec", from])
            .arg(binary("vpc-lab"))
            .args(["probe", &SocketAddr::new(to, port).to_string()])
            .output()
            .map_err(|e| e.to_string())?;
        let text = String::from_utf8_lossy(&out.stdout).trim().to_string();
        if !out.status.success() {
            return Err(format!("{text}{}", String::from_utf8_lossy(&out.stderr).trim()));
        }
        // "name=X peer=IP:PORT rtt_ms=F"; the peer's address only is returned.
        let field = |k: &str| text.split_whitespace().find_map(|f| f.strip_prefix(k)).unwrap_or("").to_string();
        Ok((field("name="), peer_ip(&field("peer=")), field("rtt_ms=").parse().unwrap_or(0.0)))
    }

    /// Pings; returns the average RTT.
    pub fn ping(&self, from: &str, to: impl Into<IpAddr>) -> Result<f64, String> {
        let to: IpAddr = to.into();
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

    /// The namespace and address of `family` of a pod, `nodeN`, `vm` or `hybrid`.
    pub(super) fn ns_of(&self, who: &str, family: Family) -> (String, IpAddr) {
        if let Some(p) = self.pods.iter().find(|p| p.name == who) {
            let ip = p.addr(family).unwrap_or_else(|| panic!("pod {who} has no {family} address"));
            return (p.netns.clone(), ip);
        }
        let v6 = family == Family::V6;
        match who {
            "vm" if v6 => (self.vm.clone(), VM_IP6.into()),
            "vm" => (self.vm.clone(), VM_IP.into()),
            "hybrid" if v6 => (self.hybrid.clone(), HYBRID_IP6.into()),
            "hybrid" => (self.hybrid.clone(), HYBRID_IP.into()),
            n if n.starts_with("node") => {
                let i: usize = n[4..].parse::<usize>().expect("node number") - 1;
                let ip = if v6 { node_ip6(i).into() } else { node_ip(i).into() };
                (self.nodes[i].clone(), ip)
            }
            _ => panic!("no {who} in the lab"),
        }
    }

    /// One path: ping, then a TCP connection whose server must report `from`'s own address.
    fn check_path(&self, family: Family, path: &str, from: &str, to: &str) -> PathCheck {
        let (from_ns, from_ip) = self.ns_of(from, family);
        let (_, to_ip) = self.ns_of(to, family);
        let mut check = PathCheck::of(family, path, from, to);
        match self.ping(&from_ns, to_ip) {
            Err(e) => check.detail = format!("ping: {e}"),
            Ok(rtt) => {
                check.rtt_ms = Some(rtt);
                match self.probe(&from_ns, to_ip, SERVER_PORT) {
                    Err(e) => check.detail = format!("tcp: {e}"),
                    Ok((name, peer_ip, _)) => {
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
    pub(super) fn spread(
        &self,
        from_ns: &str,
        to: IpAddr,
        port: u16,
    ) -> (BTreeSet<(String, String)>, Option<f64>, Option<String>) {
        let wanted: Vec<String> = self.backends().iter().map(|b| b.name.clone()).collect();
        let mut seen = BTreeSet::new();
        let mut rtts = Vec::new();
        let mut error = None;
        for _ in 0..24 {
            match self.probe(from_ns, to, port) {
                Ok((name, peer, rtt)) => {
                    seen.insert((name, peer));
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

    pub(super) fn all_backends(&self, seen: &BTreeSet<(String, String)>) -> bool {
        self.backends().iter().all(|b| seen.iter().any(|(name, _)| *name == b.name))
    }

    /// The Service from a pod: every backend must answer.
    fn check_service(&self, family: Family, from: &str) -> PathCheck {
        let (from_ns, _) = self.ns_of(from, family);
        let service = match family {
            Family::V4 => SocketAddr::from((SERVICE_IP, 80)),
            Family::V6 => SocketAddr::from((SERVICE_IP6, 80)),
        };
        let (seen, rtt, error) = self.spread(&from_ns, service.ip(), 80);
        let mut check = PathCheck::of(family, "pod -> Service ClusterIP", from, &service.to_string());
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
    fn check_node_port(&self, family: Family, node: usize) -> PathCheck {
        let (from_ns, _) = self.ns_of("hybrid", family);
        let (_, via) = self.ns_of(&format!("node{}", node + 1), family);
        let (seen, rtt, error) = self.spread(&from_ns, via, NODE_PORT);
        let mut check =
            PathCheck::of(family, "outside client -> NodePort", "hybrid", &format!("node{}:{NODE_PORT}", node + 1));
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
        let (from_ns, _) = self.ns_of(from, Family::V4);
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

    /// IPv6 routers do not fragment: a packet larger than the hybrid link's MTU must come back
    /// as Packet Too Big with that MTU, the pod's kernel must then know the path's MTU (its
    /// route to the hybrid host shows it), and a 2 MB TCP transfer to the hybrid host must
    /// complete.
    fn check_mtu6(&self, from: &str, port: u16) -> PathCheck {
        let (from_ns, _) = self.ns_of(from, Family::V6);
        let (hybrid_ns, hybrid) = self.ns_of("hybrid", Family::V6);
        let mtu = self.hybrid_mtu.to_string();
        let mut check = PathCheck::of(Family::V6, "MTU: ping too big for the hybrid link, PMTUD", from, "hybrid");
        let output = |args: &[&str]| {
            Command::new("ip")
                .args(["netns", "exec", &from_ns])
                .args(args)
                .output()
                .map(|o| String::from_utf8_lossy(&o.stdout).to_string() + &String::from_utf8_lossy(&o.stderr))
                .unwrap_or_else(|e| e.to_string())
        };
        // Forget what an earlier check taught the pod (the learnt MTU lasts 10 minutes), so the
        // Packet Too Big comes again on every `vpc-lab check`.
        output(&["ip", "-6", "route", "flush", "cache"]);
        let size = (self.pod_mtu - 48).to_string();
        let ping =
            output(&["ping", "-6", "-c", "2", "-i", "0.3", "-W", "1", "-M", "do", "-s", &size, &hybrid.to_string()]);
        let ptb = ping.lines().find(|l| l.contains("Packet too big") && l.contains(&format!("mtu={mtu}")));
        let Some(ptb) = ptb else {
            check.detail =
                format!("no Packet Too Big with mtu={mtu}: {}", ping.lines().rfind(|l| !l.is_empty()).unwrap_or(""));
            return check;
        };
        let route = output(&["ip", "-6", "route", "get", &hybrid.to_string()]);
        if !route.contains(&format!("mtu {mtu}")) {
            check.detail = format!("Packet Too Big came, but the pod's route did not learn the MTU: {}", route.trim());
            return check;
        }
        let sender = ptb.split_whitespace().nth(1).unwrap_or("?");
        match crate::netns::iperf3_bytes(&from_ns, &hybrid_ns, hybrid, port, 2 << 20) {
            Ok(run) => {
                check.ok = true;
                check.detail = format!(
                    "Packet Too Big mtu={mtu} from {sender}; path MTU learnt ({mtu}); 2 MB TCP to the hybrid host: {:.0} Mbit/s",
                    run.bits_per_second / 1e6
                );
            }
            Err(e) => check.detail = format!("PMTU {mtu} learnt, but the 2 MB transfer failed: {e}"),
        }
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

    /// The whole matrix, for every node and every pair of nodes, once for each address family
    /// of the pods (the sticky pod is not in it: [`Topology::move_sticky`] checks that one).
    pub fn check(&self) -> Vec<PathCheck> {
        let mut plan = Vec::new();
        for family in self.family.families() {
            plan.extend(self.plan(family));
        }
        let mut checks = self.run_all(&plan);
        // The enforcing VPC's own rows (`--vpc ucloud`), after the matrix: they read the SDN's
        // counters, which the matrix's parallel checks would move too.
        checks.extend(self.check_unregistered());
        checks.extend(self.check_load_balancer());
        // The sticky move through the API (`MoveSecondaryIPMac`) is a row of its own: see
        // [`Topology::move_sticky`], which `vpc-lab check` and `demo` run after this.
        checks
    }

    fn plan(&self, family: Family) -> Vec<Check> {
        let n = self.nodes.len();
        let (a, b) = (|i| self.pod_of(i, 0), |i| self.pod_of(i, 1));
        let node = |i: usize| format!("node{}", i + 1);
        let pairs: Vec<(usize, usize)> =
            (0..n).flat_map(|i| (0..n).filter(move |&j| j != i).map(move |j| (i, j))).collect();
        let path = |path: &'static str, from: String, to: String| Check::Path { family, path, from, to };
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
        plan.extend((0..n).map(|i| Check::Service { family, from: b(i) }));
        plan.extend((0..n).map(|i| Check::NodePort { family, node: i }));
        plan.extend((0..n).map(|i| path("pod -> VPC host (VM)", a(i), "vm".into())));
        plan.extend((0..n).map(|i| path("VPC host (VM) -> pod", "vm".into(), a(i))));
        plan.extend((0..n).map(|i| path("pod -> hybrid-cloud host", b(i), "hybrid".into())));
        plan.extend((0..n).map(|i| path("hybrid-cloud host -> pod", "hybrid".into(), a(i))));
        match family {
            Family::V4 => plan.extend((0..n).map(|i| Check::Mtu { from: a(i) })),
            Family::V6 => plan.extend((0..n).map(|i| Check::Mtu6 { from: a(i), port: 5301 + i as u16 })),
        }
        plan
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
                        Check::Path { family, path, from, to } => self.check_path(*family, path, from, to),
                        Check::Service { family, from } => self.check_service(*family, from),
                        Check::NodePort { family, node } => self.check_node_port(*family, *node),
                        Check::Mtu { from } => self.check_mtu(from),
                        Check::Mtu6 { from, port } => self.check_mtu6(from, *port),
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

    /// One iperf3 TCP stream between two pods over `family`.
    pub fn iperf3(&self, family: Family, from: &str, to: &str, seconds: u32) -> Result<crate::netns::TcpRun, String> {
        let (from_ns, _) = self.ns_of(from, family);
        let (to_ns, to_ip) = self.ns_of(to, family);
        let run = crate::netns::iperf3_ip(&from_ns, &to_ns, to_ip, 1, seconds)?;
        if run.bits_per_second > 0.0 {
            Ok(run)
        } else {
            Err(format!("iperf3 received nothing: {run:?}"))
        }
    }
}
