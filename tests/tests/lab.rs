//! The lab's path matrix as integration tests: each test stands up its own uniquely named VPC
//! (namespaces, two vswitchd nodes, pods through vpc-cni), checks every path, and tears it all
//! down, also when an assertion fails. Needs root, like every namespace test.

use vpc_lab::lab::{Lab, LabSpec, UplinkMode};
use vpc_lab::netns::require_root;

fn every_path_works(spec: LabSpec) {
    require_root();
    let mut lab = Lab::up(spec, |_| {});
    let checks = lab.check();
    let failed: Vec<String> =
        checks.iter().filter(|c| !c.ok).map(|c| format!("{} ({} -> {}): {}", c.path, c.from, c.to, c.detail)).collect();
    assert!(failed.is_empty(), "paths failed:\n{}", failed.join("\n"));
    assert!(checks.len() >= 12, "the matrix lost paths: {}", checks.len());
    // A working TCP stream across nodes; how fast it goes is vpc-bench's business (three labs
    // share two cores here, so a figure from a test would say little). What a test can say: the
    // switches do not lose its segments. When the uplink socket's receive buffer held only
    // three GSO frames, 5-7% of the segments were sent again and the stream fell to 3 Gbit/s.
    let run = lab.iperf3("n1a", "n2a", 3).expect("iperf3 across nodes");
    eprintln!("iperf3 n1a -> n2a: {:.2} Gbit/s, {} retransmitted", run.bits_per_second / 1e9, run.retransmits);
    assert!(run.retransmit_ratio() < 0.01, "segments lost across nodes: {run:?}");
    lab.delete_pods();
}

#[test]
fn host_routed_lab_every_path_works() {
    every_path_works(LabSpec::default());
}

#[test]
fn dedicated_uplink_lab_every_path_works() {
    every_path_works(LabSpec { mode: UplinkMode::Uplink, ..LabSpec::default() });
}

#[test]
fn a_smaller_pod_mtu_is_honoured() {
    // Pods at 1300: a DF ping at the pod MTU fits the 1400 hybrid link, so set that link lower.
    every_path_works(LabSpec { pod_mtu: 1300, hybrid_mtu: 1280, ..LabSpec::default() });
}
