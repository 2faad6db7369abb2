//! vpc-bench itself, run as a user runs it (root, real namespaces, short runs): every figure the
//! report promises is there and plausible, and the scale run really forwards to its idle pods.

use std::process::Command;

use serde_json::Value;
use vpc_lab::netns::{binary, require_root, TempDir};

fn vpc_bench(args: &[&str]) -> Value {
    let out = Command::new(binary("vpc-bench")).args(args).output().expect("run vpc-bench");
    assert!(out.status.success(), "vpc-bench {args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!("vpc-bench {args:?} printed no JSON ({e}): {}", String::from_utf8_lossy(&out.stdout))
    })
}

fn positive(v: &Value, what: &str) -> f64 {
    let x = v.as_f64().unwrap_or_else(|| panic!("{what} is missing or not a number: {v}"));
    assert!(x.is_finite() && x > 0.0, "{what} = {x}");
    x
}

/// B never receives more UDP GSO payload in its window than A sent in its whole run, and what
/// it received is whole 1400-byte datagrams.
fn udp_gso_is_plausible(path: &str, p: &Value) {
    let pairs = p["samples"]["udp_gso_received_sent"].as_array().expect("UDP GSO counts");
    assert!(!pairs.is_empty(), "{path}: {p}");
    for pair in pairs {
        let (received, sent) = (pair[0].as_u64().unwrap(), pair[1].as_u64().unwrap());
        assert!(received > 0 && received <= sent, "{path}: received {received}, sent {sent}: {p}");
        assert_eq!(received % 1400, 0, "{path}: {received} bytes is not whole datagrams");
    }
}

#[test]
fn e2e_measures_every_figure_for_the_bridge_and_vswitchd() {
    require_root();
    let dir = TempDir::new();
    let out = dir.0.join("report");
    let report = vpc_bench(&[
        "e2e",
        "--reps",
        "1",
        "--seconds",
        "1",
        "--round-trips",
        "500",
        "--paths",
        "linux_bridge,vswitchd",
        "--out",
        out.to_str().unwrap(),
        "--json",
    ]);
    for path in ["linux_bridge", "vswitchd"] {
        let p = &report["paths"][path];
        for metric in ["tcp_1_gbps", "tcp_4_gbps", "udp64_pps", "udp_gso_gbps", "rr_p50_us", "rr_p99_us"] {
            positive(&p[metric], &format!("{path}.{metric}"));
        }
        udp_gso_is_plausible(path, p);
        // One repetition: nothing to disagree with.
        assert_eq!(p["noisy"], serde_json::json!([]), "{path}: {p}");
        assert_eq!(p["spread_pct"]["tcp_1_gbps"], 0.0, "{path}: {p}");
        // B cannot receive more frames in the window than the generator sent in its whole run
        // (give or take a few frames of ARP and IPv6 housekeeping on B's interface).
        for pair in p["samples"]["udp64_delivered_sent"].as_array().expect("flood counts") {
            let (delivered, sent) = (pair[0].as_u64().unwrap(), pair[1].as_u64().unwrap());
            assert!(delivered > 0 && delivered <= sent + 100, "{path}: delivered {delivered}, sent {sent}: {p}");
        }
    }
    // The bridge is in the kernel; only vswitchd has a process whose CPU is counted.
    assert!(report["paths"]["linux_bridge"]["cpu_s_per_gb"].is_null());
    positive(&report["paths"]["vswitchd"]["cpu_s_per_gb"], "vswitchd CPU s/GB");
    positive(&report["paths"]["vswitchd"]["cpu_s_per_mpkt"], "vswitchd CPU s/Mpkt");
    assert!(report["paths"].get("veth").is_none(), "only the paths asked for");
    let targets = report["targets"].as_array().expect("targets");
    assert!(targets.iter().any(|t| t["target"].as_str().unwrap().contains("linux_bridge")), "{targets:?}");
    assert!(
        targets.iter().all(|t| t["met"].is_boolean() && t["noisy"] == false),
        "one repetition is never noisy: {targets:?}"
    );
    assert!(report["cross_node"].is_null(), "not asked for: {report}");
    let md = std::fs::read_to_string(out.join("report.md")).expect("report.md");
    assert!(md.contains("vswitchd") && md.contains("linux_bridge"), "{md}");
    assert!(std::fs::read_to_string(out.join("chart.svg")).expect("chart.svg").starts_with("<svg"));
}

#[test]
fn e2e_measures_across_nodes_through_the_kernel_and_both_vswitchd_modes() {
    require_root();
    let dir = TempDir::new();
    let out = dir.0.join("report");
    let report = vpc_bench(&[
        "e2e",
        "--reps",
        "1",
        "--seconds",
        "1",
        "--round-trips",
        "500",
        "--paths",
        "",
        "--cross-node",
        "--out",
        out.to_str().unwrap(),
        "--json",
    ]);
    assert_eq!(report["paths"], serde_json::json!({}), "--paths '': across nodes only");
    let cross = &report["cross_node"]["paths"];
    for path in ["kernel_routed", "vswitchd_host_routed", "vswitchd_uplink"] {
        let p = &cross[path];
        for metric in ["tcp_1_gbps", "tcp_4_gbps", "udp64_pps", "udp_gso_gbps", "rr_p50_us", "rr_p99_us"] {
            positive(&p[metric], &format!("cross_node.{path}.{metric}"));
        }
        udp_gso_is_plausible(path, p);
    }
    positive(&cross["vswitchd_uplink"]["vs_kernel_routed"]["tcp_1_gbps"], "vswitchd_uplink vs kernel_routed");
    let targets = report["targets"].as_array().expect("targets");
    assert_eq!(targets.len(), 2, "one per vswitchd mode: {targets:?}");
    let md = std::fs::read_to_string(out.join("report.md")).expect("report.md");
    assert!(md.contains("across nodes") && md.contains("vswitchd_uplink"), "{md}");
}

#[test]
fn scale_attaches_pods_through_the_plugin_and_forwards_to_them() {
    require_root();
    let report = vpc_bench(&["scale", "--pods", "12", "--reps", "1", "--seconds", "1", "--json"]);
    let pinged = report["idle_pods_pinged"].as_u64().unwrap();
    assert!(pinged >= 5, "{report}");
    assert_eq!(report["idle_pods_answered"], pinged, "every sampled idle pod answers: {report}");
    for side in ["two_pods", "many_pods"] {
        positive(&report[side]["udp64_pps"], &format!("{side}.udp64_pps"));
        positive(&report[side]["tcp_1_gbps"], &format!("{side}.tcp_1_gbps"));
        let rss = positive(&report[side]["rss_bytes"], &format!("{side}.rss_bytes"));
        assert!(rss > 1e6 && rss < 1e9, "{side} RSS {rss}");
    }
}

#[test]
fn a_bad_path_name_is_refused_clearly() {
    let out =
        Command::new(binary("vpc-bench")).args(["e2e", "--paths", "veth,nonsense"]).output().expect("run vpc-bench");
    assert_eq!(out.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("unknown path \"nonsense\""),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn tap_cost_measures_both_directions() {
    require_root();
    let cost = vpc_bench(&["tap-cost", "--seconds", "0.5", "--json"]);
    let write = positive(&cost["write_ns"], "write_ns");
    let read = positive(&cost["read_ns"], "read_ns");
    assert!(write < 1e6 && read < 1e6, "{cost}");
    let bound = positive(&cost["bound_pps"], "bound_pps");
    assert!((bound - 1e9 / (write + read)).abs() < 1.0, "{cost}");
}
