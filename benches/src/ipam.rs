//! `vpc-bench ipam`: address allocation as a runtime sees it, three ways in one run on the same
//! lab nodes: vswitchd's cluster IPAM on a real 3-member etcd cluster (`"ipam": {"type":
//! "vswitchd"}`), vpc-cni's node-local store (`"type": "local"`, files on the node), and the
//! reference `host-local` IPAM plugin (Debian's containernetworking-plugins, IPAM alone: no
//! interface, so it is the floor of what an ADD can cost).
//!
//! 1. Latency: ADDs one after another, round-robin over the nodes and alternating between the
//!    three so machine noise hits all alike, then the DELs.
//! 2. Throughput: ADDs racing on every node at once (`RACERS_PER_NODE` each), cluster-wide
//!    allocations per second.
//! 3. Audit (etcd): once every node has written its changes, every pod's address is checked
//!    against etcd's records and against the node's ports: an address two pods hold is a
//!    duplicate, an address a pod holds that etcd does not record for it (or a record for a pod
//!    that does not exist) is lost.

use std::collections::{BTreeMap, HashMap};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use vpc_lab::lab::{IpamMode, Lab, LabSpec};
use vpc_lab::netns::{cni_command, run_cni, Netns, TempDir};

/// Concurrent ADDs per node in the racing phase.
const RACERS_PER_NODE: usize = 4;
const HOST_LOCAL: &str = "/usr/lib/cni/host-local";

#[derive(Debug, Clone, Copy, Default)]
pub struct Figures {
    pub add_p50_ms: f64,
    pub add_p99_ms: f64,
    pub del_p50_ms: f64,
    pub del_p99_ms: f64,
    pub allocs_per_sec: f64,
}

#[derive(Debug)]
pub struct IpamReport {
    pub nodes: usize,
    pub pods: usize,
    /// etcd, local, host_local.
    pub backends: BTreeMap<&'static str, Figures>,
    pub duplicates: usize,
    pub lost: usize,
    /// What the audit compared: pods, etcd records and ports.
    pub audited: usize,
}

impl IpamReport {
    pub fn json(&self) -> Value {
        let backends: serde_json::Map<String, Value> = self
            .backends
            .iter()
            .map(|(name, f)| {
                let figures = json!({
                    "add_p50_ms": f.add_p50_ms, "add_p99_ms": f.add_p99_ms,
                    "del_p50_ms": f.del_p50_ms, "del_p99_ms": f.del_p99_ms,
                    "allocs_per_sec": f.allocs_per_sec,
                });
                (name.to_string(), figures)
            })
            .collect();
        json!({
            "nodes": self.nodes, "pods": self.pods, "backends": backends,
            "duplicates": self.duplicates, "lost": self.lost, "audited": self.audited,
        })
    }

    pub fn table(&self) -> String {
        let mut out = format!(
            "IPAM over {} pods on {} nodes (ms; allocations/s cluster-wide with {} ADDs racing per node)\n",
            self.pods, self.nodes, RACERS_PER_NODE
        );
        out += &format!(
            "{:<36} {:>8} {:>8} {:>8} {:>8} {:>10}\n",
            "backend", "ADD p50", "ADD p99", "DEL p50", "DEL p99", "allocs/s"
        );
        for (name, label) in [
            ("etcd", "vswitchd IPAM on etcd (3 members)"),
            ("local", "vpc-cni node-local store"),
            ("host_local", "host-local (reference, IPAM only)"),
        ] {
            let f = self.backends[name];
            out += &format!(
                "{label:<36} {:>8.2} {:>8.2} {:>8.2} {:>8.2} {:>10.0}\n",
                f.add_p50_ms, f.add_p99_ms, f.del_p50_ms, f.del_p99_ms, f.allocs_per_sec
            );
        }
        let ratio = self.backends["etcd"].add_p50_ms / self.backends["local"].add_p50_ms;
        out += &format!("ADD p50 etcd / node-local store: {ratio:.2}x (target at most 1.2x)\n");
        out += &format!(
            "audit: {} pods against etcd's records and the nodes' ports: {} duplicates, {} lost\n",
            self.audited, self.duplicates, self.lost
        );
        out
    }
}

fn percentile(samples: &mut [Duration], q: f64) -> f64 {
    samples.sort();
    samples[((samples.len() as f64 - 1.0) * q).round() as usize].as_secs_f64() * 1e3
}

/// One way of allocating: how to call the plugin for a pod on a node.
struct Backend {
    name: &'static str,
    plugin: PathBuf,
    confs: Vec<Value>,
}

impl Backend {
    /// Runs `command` for `container`; returns the time and the address (ADD).
    fn call(&self, command: &str, node: usize, container: &str, netns: &Path) -> (Duration, Option<Ipv4Addr>) {
        let mut cmd = cni_command(&self.plugin, command, container, netns);
        cmd.env("CNI_ARGS", format!("IgnoreUnknown=1;K8S_POD_NAMESPACE=bench;K8S_POD_NAME={container}"));
        let start = Instant::now();
        let out = run_cni(cmd, &self.confs[node]);
        let elapsed = start.elapsed();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{} {command} {container} on node{}: {text}", self.name, node + 1);
        let ip = serde_json::from_str::<Value>(&text)
            .ok()
            .and_then(|r| r["ips"][0]["address"].as_str()?.split('/').next()?.parse().ok());
        (elapsed, ip)
    }
}

/// A pod the bench made: its sandbox and where it lives.
struct BenchPod {
    container: String,
    node: usize,
    netns: Netns,
    ip: Option<Ipv4Addr>,
}

fn sandboxes(prefix: &str, count: usize, nodes: usize) -> Vec<BenchPod> {
    (0..count)
        .map(|i| BenchPod { container: format!("{prefix}-{i}"), node: i % nodes, netns: Netns::new("vbi"), ip: None })
        .collect()
}

/// Runs the comparison with `pods` pods per backend and phase over `nodes` lab nodes. Needs root.
pub fn run(nodes: usize, pods: usize) -> IpamReport {
    assert!(Path::new(HOST_LOCAL).exists(), "{HOST_LOCAL} is missing (containernetworking-plugins)");
    let lab = Lab::up(LabSpec { nodes, ipam: IpamMode::Etcd, pods_per_node: 1, ..LabSpec::default() }, |_| {});
    let dir = TempDir::new();
    let vpc_cni = vpc_lab::netns::binary("vpc-cni");
    let etcd = Backend { name: "etcd", plugin: vpc_cni.clone(), confs: (0..nodes).map(|n| lab.cni_conf(n)).collect() };
    let local = Backend {
        name: "local",
        plugin: vpc_cni,
        confs: (0..nodes)
            .map(|n| {
                let mut conf = lab.cni_conf(n);
                // Its own part of the subnet per node, no reuse delay: both phases fit.
                conf["ipam"] = json!({
                    "ranges": [{"rangeStart": format!("10.10.{}.1", 160 + 8 * n), "rangeEnd": format!("10.10.{}.254", 167 + 8 * n)}],
                    "dataDir": dir.0.join(format!("local{n}")),
                    "reuseDelaySeconds": 0,
                });
                conf
            })
            .collect(),
    };
    let host_local = Backend {
        name: "host_local",
        plugin: HOST_LOCAL.into(),
        confs: (0..nodes)
            .map(|n| {
                json!({
                    "cniVersion": "1.0.0", "name": "hl", "type": "host-local",
                    "ipam": {"type": "host-local", "ranges": [[{"subnet": format!("10.{}.0.0/16", 120 + n)}]],
                             "dataDir": dir.0.join(format!("host-local{n}"))}
                })
            })
            .collect(),
    };
    let backends = [&etcd, &local, &host_local];

    // 1. Latency, one call at a time.
    // One round per pod: the same pod index on every backend, back to back.
    let mut rounds: Vec<Vec<BenchPod>> = (0..pods)
        .map(|i| {
            let node = i % nodes;
            let sandbox = |b: &Backend| BenchPod {
                container: format!("seq-{}-{i}", b.name),
                node,
                netns: Netns::new("vbi"),
                ip: None,
            };
            backends.iter().map(|b| sandbox(b)).collect()
        })
        .collect();
    let mut adds: Vec<Vec<Duration>> = vec![Vec::new(); backends.len()];
    let mut dels: Vec<Vec<Duration>> = vec![Vec::new(); backends.len()];
    for round in rounds.iter_mut() {
        for (b, (backend, pod)) in backends.iter().zip(round.iter_mut()).enumerate() {
            let (t, ip) = backend.call("ADD", pod.node, &pod.container, &pod.netns.path());
            adds[b].push(t);
            pod.ip = ip;
        }
    }
    for round in &rounds {
        for (b, (backend, pod)) in backends.iter().zip(round).enumerate() {
            dels[b].push(backend.call("DEL", pod.node, &pod.container, &pod.netns.path()).0);
        }
    }
    drop(rounds);

    // 2. Throughput: every node's racers at once, one backend after the other.
    let mut rates = Vec::new();
    let mut raced_etcd = Vec::new();
    for backend in backends {
        let mut racing = sandboxes(&format!("race-{}", backend.name), pods, nodes);
        let start = Instant::now();
        std::thread::scope(|s| {
            let mut lanes: Vec<Vec<&mut BenchPod>> = (0..nodes * RACERS_PER_NODE).map(|_| Vec::new()).collect();
            for (i, pod) in racing.iter_mut().enumerate() {
                // Pod i lives on node i % nodes; lane = node + nodes * racer.
                lanes[pod.node + nodes * ((i / nodes) % RACERS_PER_NODE)].push(pod);
            }
            for lane in lanes {
                s.spawn(move || {
                    for pod in lane {
                        pod.ip = backend.call("ADD", pod.node, &pod.container, &pod.netns.path()).1;
                    }
                });
            }
        });
        rates.push(pods as f64 / start.elapsed().as_secs_f64());
        if backend.name == "etcd" {
            raced_etcd = racing;
        } else {
            for pod in &racing {
                backend.call("DEL", pod.node, &pod.container, &pod.netns.path());
            }
        }
    }

    // 3. Audit the etcd run's pods.
    let (duplicates, lost) = audit(&lab, &raced_etcd);
    for pod in &raced_etcd {
        etcd.call("DEL", pod.node, &pod.container, &pod.netns.path());
    }
    let mut figures = BTreeMap::new();
    for (b, backend) in backends.iter().enumerate() {
        figures.insert(
            backend.name,
            Figures {
                add_p50_ms: percentile(&mut adds[b], 0.5),
                add_p99_ms: percentile(&mut adds[b], 0.99),
                del_p50_ms: percentile(&mut dels[b], 0.5),
                del_p99_ms: percentile(&mut dels[b], 0.99),
                allocs_per_sec: rates[b],
            },
        );
    }
    IpamReport { nodes, pods, backends: figures, duplicates, lost, audited: raced_etcd.len() }
}

/// Duplicates and lost addresses among `pods`, from etcd's records (through `vswitchctl ipam`,
/// which reads them) and every node's ports, once every node has written its changes.
fn audit(lab: &Lab, pods: &[BenchPod]) -> (usize, usize) {
    let deadline = Instant::now() + Duration::from_secs(20);
    let views: Vec<Value> = loop {
        let views: Vec<Value> = (0..lab.topology.nodes.len()).map(|n| lab.daemon(n).ctl_json(&["ipam"])).collect();
        if views.iter().all(|v| v["this_node"]["pending_sync"] == 0) || Instant::now() > deadline {
            break views;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    // etcd's assignments: address -> (node, container).
    let mut recorded: HashMap<Ipv4Addr, (String, String)> = HashMap::new();
    for node in views[0]["nodes"].as_array().into_iter().flatten() {
        for a in node["assigned"].as_array().into_iter().flatten() {
            let ip: Ipv4Addr = a["ip"].as_str().and_then(|s| s.parse().ok()).expect("an IPv4 address");
            let holder = (
                node["name"].as_str().unwrap_or("").to_string(),
                a["owner"]["containerID"].as_str().unwrap_or("").to_string(),
            );
            recorded.insert(ip, holder);
        }
    }
    // Every node's ports: port name -> address.
    let mut ports: HashMap<String, Ipv4Addr> = HashMap::new();
    for n in 0..lab.topology.nodes.len() {
        for p in lab.daemon(n).ctl_json(&["ports"]).as_array().into_iter().flatten() {
            if let Some(ip) = p["ip"].as_str().and_then(|s| s.parse().ok()) {
                ports.insert(p["name"].as_str().unwrap_or("").to_string(), ip);
            }
        }
    }
    let mut holders: HashMap<Ipv4Addr, usize> = HashMap::new();
    let mut lost = 0;
    for pod in pods {
        let Some(ip) = pod.ip else {
            lost += 1;
            continue;
        };
        *holders.entry(ip).or_default() += 1;
        let node_name = format!("node{}", pod.node + 1);
        let in_etcd = recorded.get(&ip) == Some(&(node_name, pod.container.clone()));
        let on_port = ports.get(&format!("{}:eth0", pod.container)) == Some(&ip);
        if !in_etcd || !on_port {
            lost += 1;
        }
    }
    // Records for bench pods that do not exist.
    let ours: std::collections::HashSet<&str> = pods.iter().map(|p| p.container.as_str()).collect();
    lost += recorded.values().filter(|(_, c)| c.starts_with("race-etcd-") && !ours.contains(c.as_str())).count();
    let duplicates = holders.values().filter(|&&n| n > 1).map(|n| n - 1).sum();
    (duplicates, lost)
}
