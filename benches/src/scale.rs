//! `vpc-bench scale`: vswitchd with 2 pods against vswitchd with N pods (the extra ones attached
//! through vpc-cni and idle), measured alternately in one run: 64-byte UDP rate, single-stream
//! TCP, and vswitchd's resident memory. Also checks that idle pods are really forwarded to.

use serde_json::{json, Value};
use vpc_lab::netns::try_run;

use crate::e2e::measure::{self, rss_bytes};
use crate::e2e::topology::{vswitchd_with_pods, Topology, B};
use crate::e2e::{median, IpFamily};

#[derive(Debug, Clone, Default)]
pub struct Sample {
    pub udp64_pps: Vec<f64>,
    pub tcp_1_gbps: Vec<f64>,
    pub rss_bytes: Vec<f64>,
}

#[derive(Debug, Clone)]
pub struct ScaleReport {
    pub pods: usize,
    pub small: Sample,
    pub large: Sample,
    /// Idle pods pinged from pod A, and how many answered.
    pub idle_pinged: usize,
    pub idle_answered: usize,
}

fn measure_into(t: &Topology, seconds: u32, flows: u16, into: &mut Sample) {
    if let Some(flood) = measure::udp64(t, seconds, flows) {
        into.udp64_pps.push(flood.delivered_pps);
    }
    if let Some(tcp) = measure::iperf3(t, 1, seconds) {
        into.tcp_1_gbps.push(tcp.gbps);
    }
    if let Some(rss) = t.forwarder_pid.and_then(rss_bytes) {
        into.rss_bytes.push(rss as f64);
    }
}

/// Runs the comparison: `pods` pods in all (at least 2), `reps` alternating repetitions.
pub fn run(
    pods: usize,
    reps: usize,
    seconds: u32,
    workers: usize,
    flows: u16,
    mut progress: impl FnMut(&str),
) -> ScaleReport {
    let extra = pods.max(2) - 2;
    progress("vswitchd with 2 pods");
    let small_topology = vswitchd_with_pods(workers, 0, IpFamily::Ipv4);
    progress(&format!("vswitchd with {pods} pods ({extra} through vpc-cni)"));
    let large_topology = vswitchd_with_pods(workers, extra, IpFamily::Ipv4);
    for t in [&small_topology, &large_topology] {
        let _ = try_run(&["ip", "netns", "exec", &t.a, "ping", "-c", "2", "-i", "0.2", "-W", "1", &B.to_string()]);
    }
    // A sample of the idle pods, first to last.
    let idle: Vec<&String> =
        large_topology.idle_pods.iter().step_by((extra / 8).max(1)).chain(large_topology.idle_pods.last()).collect();
    let answered = idle
        .iter()
        .filter(|ip| {
            try_run(&["ip", "netns", "exec", &large_topology.a, "ping", "-c", "2", "-i", "0.2", "-W", "1", ip.as_str()])
                .status
                .success()
        })
        .count();
    let (mut small, mut large) = (Sample::default(), Sample::default());
    for rep in 0..reps {
        progress(&format!("repetition {}/{reps}", rep + 1));
        measure_into(&small_topology, seconds, flows, &mut small);
        measure_into(&large_topology, seconds, flows, &mut large);
    }
    ScaleReport { pods, small, large, idle_pinged: idle.len(), idle_answered: answered }
}

pub fn to_json(r: &ScaleReport) -> Value {
    let sample = |s: &Sample| {
        json!({
            "udp64_pps": median(&s.udp64_pps), "tcp_1_gbps": median(&s.tcp_1_gbps), "rss_bytes": median(&s.rss_bytes),
            "samples": {"udp64_pps": s.udp64_pps, "tcp_1_gbps": s.tcp_1_gbps, "rss_bytes": s.rss_bytes},
        })
    };
    json!({
        "pods": r.pods, "two_pods": sample(&r.small), "many_pods": sample(&r.large),
        "udp64_ratio": median(&r.large.udp64_pps) / median(&r.small.udp64_pps),
        "idle_pods_pinged": r.idle_pinged, "idle_pods_answered": r.idle_answered,
        "rss_target_met": median(&r.large.rss_bytes) <= 64.0 * 1024.0 * 1024.0,
    })
}

pub fn table(r: &ScaleReport) -> String {
    let mib = |s: &Sample| median(&s.rss_bytes) / (1024.0 * 1024.0);
    let mut out = format!("{:<12} {:>14} {:>16} {:>16}\n", "pods", "UDP 64B Mpps", "TCP x1 Gbit/s", "vswitchd RSS MiB");
    for (label, s) in [("2".to_string(), &r.small), (r.pods.to_string(), &r.large)] {
        out.push_str(&format!(
            "{label:<12} {:>14.3} {:>16.2} {:>16.1}\n",
            median(&s.udp64_pps) / 1e6,
            median(&s.tcp_1_gbps),
            mib(s)
        ));
    }
    out.push_str(&format!(
        "{} pods / 2 pods: UDP 64B {:.2}x, TCP {:.2}x; idle pods answering ping: {}/{}\nRSS with {} pods: {:.1} MiB (target <= 64 MiB: {})\n",
        r.pods,
        median(&r.large.udp64_pps) / median(&r.small.udp64_pps),
        median(&r.large.tcp_1_gbps) / median(&r.small.tcp_1_gbps),
        r.idle_answered,
        r.idle_pinged,
        r.pods,
        mib(&r.large),
        if mib(&r.large) <= 64.0 { "met" } else { "NOT met" }
    ));
    out
}
