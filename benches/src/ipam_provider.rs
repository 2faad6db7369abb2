//! `vpc-bench ipam --provider ucloud`: pod addresses from a cloud's VPC API (provider mode on
//! the lab VPC, `--vpc ucloud`, the API slowed and rate-limited as asked) against vswitchd's
//! cluster IPAM on etcd, in one run on lab nodes of the same shape, through the real vpc-cni.
//!
//! - Provider, warm pool: ADDs one after another round-robin over the nodes, `PACE` apart, a
//!   window of live pods (the NICs' secondary-IP quota is 40), each DEL'd `WINDOW` ADDs later
//!   (ADDs told to retry later are retried, the time counted): ADD p50/p99,
//!   VPC API calls per pod over the run, and for every `PROBE_EVERY`th pod the time from the
//!   ADD's start to the first ping from the VM answered.
//! - Provider, empty pool: `BURST` ADDs at once on every node, more than its warm pool holds;
//!   the p99 is the ADDs that had to allocate themselves.
//! - etcd: the same sequential ADDs on an etcd lab.
//! - Duplicates: an address handed to a pod while another live pod had it. Leaked: after every
//!   pod is gone and the pools have settled, a secondary IP of a node's NIC the node does not
//!   account for.

use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use vpc_lab::lab::{IpamMode, Lab, LabSpec, VpcMode};
use vpc_lab::netns::{unique, Netns};

/// Live pods in the sequential phase, cluster-wide, and the pace of its ADDs: a DEL'd address
/// cools 30 s on its NIC, and a NIC holds at most 40 secondary IPs (live, warm and cooling).
const WINDOW: usize = 15;
const PACE: Duration = Duration::from_millis(400);
/// How long an ADD told to retry later (code 11) is retried, as kubelet does.
const RETRY_FOR: Duration = Duration::from_secs(60);
/// Concurrent ADDs per node in the empty-pool burst.
const BURST: usize = 12;
/// Every how many pods the first packet is timed.
const PROBE_EVERY: usize = 10;

#[derive(Debug, Clone, Copy)]
pub struct Options {
    pub nodes: usize,
    pub pods: usize,
    pub api_latency_ms: u64,
    pub api_rate: f64,
}

/// One provider's figures (a later provider, AWS, has the same keys).
#[derive(Debug, Clone, Copy, Default)]
pub struct ProviderFigures {
    pub add_p50_ms: f64,
    pub add_p99_ms: f64,
    pub add_p99_empty_pool_ms: f64,
    pub api_calls_per_pod: f64,
    pub first_packet_ms_p50: f64,
}

#[derive(Debug)]
pub struct ProviderReport {
    pub options: Options,
    pub providers: Vec<(&'static str, ProviderFigures)>,
    pub etcd_add_p50_ms: f64,
    pub etcd_add_p99_ms: f64,
    pub duplicates: usize,
    pub leaked: usize,
}

fn percentile(samples: &mut [f64], q: f64) -> f64 {
    if samples.is_empty() {
        return f64::NAN;
    }
    samples.sort_by(f64::total_cmp);
    samples[((samples.len() as f64 - 1.0) * q).round() as usize]
}

impl ProviderReport {
    pub fn json(&self) -> Value {
        let mut providers: serde_json::Map<String, Value> = self
            .providers
            .iter()
            .map(|(name, f)| {
                let figures = json!({
                    "add_p50_ms": f.add_p50_ms, "add_p99_ms": f.add_p99_ms,
                    "add_p99_empty_pool_ms": f.add_p99_empty_pool_ms,
                    "api_calls_per_pod": f.api_calls_per_pod, "first_packet_ms_p50": f.first_packet_ms_p50,
                });
                (name.to_string(), figures)
            })
            .collect();
        providers
            .insert("etcd".into(), json!({"add_p50_ms": self.etcd_add_p50_ms, "add_p99_ms": self.etcd_add_p99_ms}));
        json!({"providers": providers, "duplicates": self.duplicates, "leaked": self.leaked})
    }

    /// The targets: warm-pool ADD p99 at most 1.2x etcd's, at most 1.2 API calls per pod, no
    /// duplicate, no leak.
    pub fn targets(&self) -> Vec<(String, bool)> {
        let mut out = Vec::new();
        for (name, f) in &self.providers {
            let ratio = f.add_p99_ms / self.etcd_add_p99_ms;
            out.push((format!("{name}: warm-pool ADD p99 {ratio:.2}x etcd's (at most 1.2x)"), ratio <= 1.2));
            out.push((
                format!("{name}: {:.2} VPC API calls per pod (at most 1.2)", f.api_calls_per_pod),
                f.api_calls_per_pod <= 1.2,
            ));
        }
        out.push((format!("{} duplicates (0)", self.duplicates), self.duplicates == 0));
        out.push((format!("{} leaked addresses (0)", self.leaked), self.leaked == 0));
        out
    }

    pub fn table(&self) -> String {
        let o = &self.options;
        let mut out = format!(
            "IPAM by provider: {} pods on {} nodes; VPC API latency {} ms, rate {}/s (ms)\n",
            o.pods, o.nodes, o.api_latency_ms, o.api_rate
        );
        out += &format!(
            "{:<10} {:>8} {:>8} {:>16} {:>14} {:>16}\n",
            "mode", "ADD p50", "ADD p99", "ADD p99 empty", "API calls/pod", "first packet p50"
        );
        for (name, f) in &self.providers {
            out += &format!(
                "{name:<10} {:>8.1} {:>8.1} {:>16.1} {:>14.2} {:>16.1}\n",
                f.add_p50_ms, f.add_p99_ms, f.add_p99_empty_pool_ms, f.api_calls_per_pod, f.first_packet_ms_p50
            );
        }
        out += &format!(
            "{:<10} {:>8.1} {:>8.1} {:>16} {:>14} {:>16}\n",
            "etcd", self.etcd_add_p50_ms, self.etcd_add_p99_ms, "-", "-", "-"
        );
        for (target, met) in self.targets() {
            out += &format!("{}: {target}\n", if met { "met    " } else { "NOT MET" });
        }
        out
    }
}

/// A pod the bench made.
struct BenchPod {
    container: String,
    name: String,
    node: usize,
    netns: Netns,
    ip: Option<Ipv4Addr>,
}

impl BenchPod {
    fn new(prefix: &str, i: usize, node: usize) -> BenchPod {
        BenchPod {
            container: format!("{prefix}-{i}-{}", unique("")),
            name: format!("{prefix}-{i}"),
            node,
            netns: Netns::new("vbp"),
            ip: None,
        }
    }

    /// ADD, retried while told to retry later; the time until it succeeded. Panics unless it does.
    fn add(&mut self, lab: &Lab) -> f64 {
        let started = Instant::now();
        let result = loop {
            match lab.cni("ADD", self.node, &self.container, &self.netns.path(), &self.name) {
                Err(e) if e.code == 11 && started.elapsed() < RETRY_FOR => {
                    let _ = lab.cni("DEL", self.node, &self.container, &self.netns.path(), &self.name);
                    std::thread::sleep(Duration::from_millis(100));
                }
                other => break other,
            }
        };
        let ms = started.elapsed().as_secs_f64() * 1e3;
        let result = result.unwrap_or_else(|e| panic!("ADD {}: {}", self.name, e.message));
        self.ip = result["ips"][0]["address"].as_str().and_then(|a| a.split('/').next()?.parse().ok());
        ms
    }

    fn del(&self, lab: &Lab) {
        lab.cni("DEL", self.node, &self.container, &self.netns.path(), &self.name)
            .unwrap_or_else(|e| panic!("DEL {}: {}", self.name, e.message));
    }
}

/// Every VPC API call the nodes made so far.
fn api_calls(lab: &Lab, nodes: usize) -> u64 {
    (0..nodes)
        .flat_map(|n| lab.daemon(n).ctl_json(&["ipam"])["provider"]["calls"].as_array().cloned().unwrap_or_default())
        .filter_map(|c| c["calls"].as_u64())
        .sum()
}

/// Until the VM's ping reaches `ip`, from `since`; at most 5 s.
fn first_packet(lab: &Lab, ip: Ipv4Addr, since: Instant) -> Option<f64> {
    while since.elapsed() < Duration::from_secs(5) {
        let out = Command::new("ip")
            .args(["netns", "exec", &lab.vm, "ping", "-c", "1", "-W", "0.1", &ip.to_string()])
            .output()
            .ok()?;
        if out.status.success() {
            return Some(since.elapsed().as_secs_f64() * 1e3);
        }
    }
    None
}

/// Sequential ADDs with a window of live pods: the latencies, first packets (provider only) and
/// duplicates.
fn sequential(lab: &Lab, nodes: usize, pods: usize, first_packets: bool) -> (Vec<f64>, Vec<f64>, usize) {
    let mut live: std::collections::VecDeque<BenchPod> = Default::default();
    let mut holders: HashMap<Ipv4Addr, String> = HashMap::new();
    let (mut adds, mut packets, mut duplicates) = (Vec::new(), Vec::new(), 0);
    for i in 0..pods {
        if live.len() >= WINDOW {
            let old = live.pop_front().expect("a live pod");
            old.del(lab);
            old.ip.map(|ip| holders.remove(&ip));
        }
        let mut pod = BenchPod::new("seq", i, i % nodes);
        std::thread::sleep(PACE);
        let started = Instant::now();
        adds.push(pod.add(lab));
        if let Some(ip) = pod.ip {
            if holders.insert(ip, pod.name.clone()).is_some() {
                duplicates += 1;
            }
            if first_packets && i % PROBE_EVERY == 0 {
                packets.extend(first_packet(lab, ip, started));
            }
        }
        live.push_back(pod);
    }
    for pod in live {
        pod.del(lab);
    }
    (adds, packets, duplicates)
}

/// Runs both modes. Needs root and etcd.
pub fn run(options: Options, progress: impl Fn(&str)) -> ProviderReport {
    let Options { nodes, pods, api_latency_ms, api_rate } = options;
    progress("etcd mode: lab up");
    let (mut etcd_adds, _, etcd_duplicates) = {
        let lab = Lab::up(LabSpec { nodes, ipam: IpamMode::Etcd, pods_per_node: 1, ..LabSpec::default() }, |_| {});
        progress(&format!("etcd mode: {pods} sequential ADDs"));
        sequential(&lab, nodes, pods, false)
    };

    progress("provider mode (ucloud): lab up");
    let mut lab = Lab::up(
        LabSpec { nodes, vpc: VpcMode::Ucloud, ipam: IpamMode::Vpc, pods_per_node: 1, ..LabSpec::default() },
        |_| {},
    );
    let api = lab.vpc_api().expect("the VPC API");
    api.set_faults(json!({"latency_ms": api_latency_ms, "rate_per_sec": api_rate}));
    let calls_before = api_calls(&lab, nodes);
    progress(&format!("provider mode: {pods} sequential ADDs"));
    let (mut adds, mut packets, mut duplicates) = sequential(&lab, nodes, pods, true);
    progress(&format!("provider mode: bursts of {BURST} ADDs per node"));
    let mut burst: Vec<BenchPod> = (0..nodes * BURST).map(|i| BenchPod::new("burst", i, i % nodes)).collect();
    let mut empty: Vec<f64> = std::thread::scope(|s| {
        let lab = &lab;
        let handles: Vec<_> = burst.iter_mut().map(|pod| s.spawn(move || pod.add(lab))).collect();
        handles.into_iter().map(|h| h.join().expect("a burst ADD")).collect()
    });
    let mut seen: HashMap<Ipv4Addr, usize> = HashMap::new();
    burst.iter().filter_map(|p| p.ip).for_each(|ip| *seen.entry(ip).or_default() += 1);
    duplicates += seen.values().filter(|&&n| n > 1).map(|n| n - 1).sum::<usize>() + etcd_duplicates;
    for pod in &burst {
        pod.del(&lab);
    }
    let calls = api_calls(&lab, nodes) - calls_before;
    let api_calls_per_pod = calls as f64 / (pods + burst.len()) as f64;
    api.set_faults(json!({"latency_ms": 0, "rate_per_sec": null}));
    lab.delete_pods();
    progress("provider mode: every pod gone; waiting for the pools to settle (cooldown 30 s)");
    let books = lab.settle_nic_books(0..nodes, Duration::from_secs(120));
    let leaked = books.iter().map(|b| b.leaked().len()).sum();
    ProviderReport {
        options,
        providers: vec![(
            "ucloud",
            ProviderFigures {
                add_p50_ms: percentile(&mut adds, 0.5),
                add_p99_ms: percentile(&mut adds, 0.99),
                add_p99_empty_pool_ms: percentile(&mut empty, 0.99),
                api_calls_per_pod,
                first_packet_ms_p50: percentile(&mut packets, 0.5),
            },
        )],
        etcd_add_p50_ms: percentile(&mut etcd_adds, 0.5),
        etcd_add_p99_ms: percentile(&mut etcd_adds, 0.99),
        duplicates,
        leaked,
    }
}
