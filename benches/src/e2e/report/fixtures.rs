//! Synthetic results for the report's tests.

use crate::e2e::report::Target;
use crate::e2e::{IpFamily, Options, PathResult};

/// Three repetitions of every figure at `level` times a reference path's, `jitter` apart
/// (relative), so each figure's spread is 2 * jitter.
pub fn path(level: f64, jitter: f64) -> PathResult {
    let three = |x: f64| vec![x * level * (1.0 - jitter), x * level, x * level * (1.0 + jitter)];
    PathResult {
        tcp_1_gbps: three(20.0),
        tcp_4_gbps: three(40.0),
        udp64_pps: three(2e6),
        udp64_sent_pps: three(3e6),
        udp64_delivered_sent: vec![(1, 2); 3],
        udp_gso_gbps: three(10.0),
        udp_gso_received_sent: vec![(1, 2); 3],
        rr_p50_us: three(30.0),
        rr_p99_us: three(60.0),
        cpu_s_per_gb: three(0.2),
        cpu_s_per_mpkt: three(0.5),
        tcp_4_machine_s_per_gb: three(0.4),
        udp_gso_machine_s_per_gb: three(0.6),
        udp_gso_cpu_s_per_gb: three(0.3),
    }
}

pub fn options(cross_node: bool) -> Options {
    Options {
        reps: 3,
        seconds: 2,
        workers: 2,
        flows: 8,
        round_trips: 100,
        paths: Vec::new(),
        family: IpFamily::Ipv4,
        cross_node,
    }
}

pub fn named(paths: Vec<(&str, PathResult)>) -> Vec<(String, PathResult)> {
    paths.into_iter().map(|(n, r)| (n.to_string(), r)).collect()
}

pub fn target<'a>(targets: &'a [Target], starts: &str) -> &'a Target {
    targets.iter().find(|t| t.what.starts_with(starts)).unwrap_or_else(|| panic!("no target {starts:?}: {targets:?}"))
}
