//! `vpc-bench ipam --provider ucloud[,...]`: pod addresses from a cloud's VPC API (provider mode
//! on the provider's lab VPC, its API slowed and rate-limited as asked) against vswitchd's
//! cluster IPAM on etcd, in one run on lab nodes of the same shape, through the real vpc-cni.
//! One etcd phase, then each provider in turn on a lab of its own; what differs between the
//! providers is [`lab_api`]'s alone.
//!
//! - Provider, warm pool: ADDs one after another round-robin over the nodes, `PACE` apart, a
//!   window of live pods, each DEL'd `WINDOW` ADDs later (ADDs told to retry later are retried,
//!   the time counted): ADD p50/p99, VPC API calls per pod over the run (counted by the lab's
//!   API), and for every `PROBE_EVERY`th pod the time from the ADD's start to the first ping
//!   from the VM answered.
//! - Provider, empty pool: `BURST` ADDs at once on every node right after the sequential phase,
//!   more than its warm pool holds (the addresses cooling are not handed out); the p99 is the
//!   ADDs that had to allocate themselves: those whose address the node did not hold before the
//!   burst (its `vswitchctl ipam`: pods', warm, cooling, queued, held, not served). A pool's
//!   size and the number of those ADDs depend on its targets, so the number is reported too.
//!   Where their time went is printed as the nodes timed it (`vswitchctl ipam`): the burst's
//!   allocation calls and the fabric probes of its new addresses (the wait for the VPC's SDN).
//! - etcd: the same sequential ADDs on an etcd lab.
//! - Duplicates: an address handed to a pod while another live pod had it. Leaked: after every
//!   pod is gone and the pools have settled, a secondary IP of a node's NIC the node does not
//!   account for (the lab's audit of the nodes' books against the VPC's).

mod lab_api;
mod report;

use std::collections::{HashMap, HashSet};
use std::net::Ipv4Addr;
use std::process::Command;
use std::time::{Duration, Instant};

use vpc_lab::lab::{IpamMode, Lab, LabSpec};
use vpc_lab::netns::{unique, Netns};

use lab_api::NodeTimings;
pub use lab_api::{ApiSlowdown, Provider};
pub use report::{EtcdFigures, ProviderFigures, ProviderReport};

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

#[derive(Debug, Clone)]
pub struct Options {
    /// Measured one after the other, each on a lab of its own.
    pub providers: Vec<Provider>,
    pub nodes: usize,
    pub pods: usize,
    pub slow: ApiSlowdown,
}

fn percentile(samples: &mut [f64], q: f64) -> f64 {
    if samples.is_empty() {
        return f64::NAN;
    }
    samples.sort_by(f64::total_cmp);
    samples[((samples.len() as f64 - 1.0) * q).round() as usize]
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

/// Every address node `node`'s pool holds, as its `vswitchctl ipam` shows it.
fn held_addresses(lab: &Lab, node: usize) -> HashSet<Ipv4Addr> {
    let view = lab.daemon(node).ctl_json(&["ipam"]);
    let p = &view["provider"];
    let listed = ["warm", "cooling", "deleting"].into_iter().flat_map(|k| p[k].as_array().cloned().unwrap_or_default());
    // `pods` are objects with an `ip`; `held` and `undeliverable` pairs with the address first.
    let pods = p["pods"].as_array().into_iter().flatten().map(|pod| pod["ip"].clone());
    let pairs = ["held", "undeliverable"].into_iter().flat_map(|k| p[k].as_array().cloned().unwrap_or_default());
    let pairs = pairs.map(|pair| pair[0].clone());
    listed.chain(pods).chain(pairs).filter_map(|v| v.as_str().and_then(|s| s.parse().ok())).collect()
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

/// Runs the etcd mode, then every provider. Needs root and etcd.
pub fn run(options: &Options, progress: impl Fn(&str)) -> ProviderReport {
    let Options { nodes, pods, .. } = *options;
    progress("etcd mode: lab up");
    let (mut etcd_adds, _, etcd_duplicates) = {
        let lab = Lab::up(LabSpec { nodes, ipam: IpamMode::Etcd, pods_per_node: 1, ..LabSpec::default() }, |_| {});
        progress(&format!("etcd mode: {pods} sequential ADDs"));
        sequential(&lab, nodes, pods, false)
    };
    let etcd = EtcdFigures {
        add_p50_ms: percentile(&mut etcd_adds, 0.5),
        add_p99_ms: percentile(&mut etcd_adds, 0.99),
        duplicates: etcd_duplicates,
    };
    let providers = options.providers.iter().map(|&p| (p, measure(p, options, &progress))).collect();
    ProviderReport { nodes, pods, slow: options.slow, providers, etcd }
}

/// One provider's phases on a lab of its own.
fn measure(provider: Provider, options: &Options, progress: &impl Fn(&str)) -> ProviderFigures {
    let Options { nodes, pods, .. } = *options;
    let name = provider.name();
    progress(&format!("provider mode ({name}): lab up"));
    let mut lab = Lab::up(
        LabSpec { nodes, vpc: provider.vpc_mode(), ipam: IpamMode::Vpc, pods_per_node: 1, ..LabSpec::default() },
        |_| {},
    );
    provider.slow_api(&lab, &options.slow);
    let calls_before = provider.api_calls(&lab);
    progress(&format!("{name}: {pods} sequential ADDs"));
    let (mut adds, mut packets, mut duplicates) = sequential(&lab, nodes, pods, true);
    progress(&format!("{name}: bursts of {BURST} ADDs per node"));
    let held_before: Vec<HashSet<Ipv4Addr>> = (0..nodes).map(|node| held_addresses(&lab, node)).collect();
    let timed_before = NodeTimings::read(&lab, nodes);
    let mut burst: Vec<BenchPod> = (0..nodes * BURST).map(|i| BenchPod::new("burst", i, i % nodes)).collect();
    let took: Vec<f64> = std::thread::scope(|s| {
        let lab = &lab;
        let handles: Vec<_> = burst.iter_mut().map(|pod| s.spawn(move || pod.add(lab))).collect();
        handles.into_iter().map(|h| h.join().expect("a burst ADD")).collect()
    });
    // The ADDs that allocated their own address: one the node did not hold before the burst.
    let mut empty: Vec<f64> = burst
        .iter()
        .zip(took)
        .filter(|(pod, _)| pod.ip.is_some_and(|ip| !held_before[pod.node].contains(&ip)))
        .map(|(_, ms)| ms)
        .collect();
    progress(&format!("{name}: {} of {} burst ADDs allocated their own address", empty.len(), burst.len()));
    // Where their time went, as the nodes timed it (the probe waits for the VPC's SDN).
    progress(&format!(
        "{name}: the burst, timed by the nodes: {}",
        NodeTimings::read(&lab, nodes).since(&timed_before)
    ));
    let mut seen: HashMap<Ipv4Addr, usize> = HashMap::new();
    burst.iter().filter_map(|p| p.ip).for_each(|ip| *seen.entry(ip).or_default() += 1);
    duplicates += seen.values().filter(|&&n| n > 1).map(|n| n - 1).sum::<usize>();
    for pod in &burst {
        pod.del(&lab);
    }
    let mut calls = provider.api_calls(&lab);
    for (action, before) in calls_before {
        *calls.entry(action).or_default() -= before;
    }
    calls.retain(|_, n| *n > 0);
    progress(&format!("{name}: API calls by action: {calls:?}"));
    let calls: u64 = calls.values().sum();
    provider.slow_api(&lab, &ApiSlowdown::NONE);
    lab.delete_pods();
    progress(&format!("{name}: every pod gone; waiting for the pools to settle (cooldown 30 s)"));
    let books = lab.settle_nic_books(0..nodes, Duration::from_secs(120));
    let since_start: u64 = provider.api_calls(&lab).values().sum();
    progress(&format!("{name}: every call since the lab started, its start and the settling included: {since_start}"));
    ProviderFigures {
        add_p50_ms: percentile(&mut adds, 0.5),
        add_p99_ms: percentile(&mut adds, 0.99),
        empty_pool_adds: empty.len(),
        add_p99_empty_pool_ms: percentile(&mut empty, 0.99),
        api_calls_per_pod: calls as f64 / (pods + burst.len()) as f64,
        first_packet_ms_p50: percentile(&mut packets, 0.5),
        duplicates,
        leaked: books.iter().map(|b| b.leaked().len()).sum(),
    }
}
