//! ADD and DEL latency of vpc-cni next to the reference bridge + host-local plugins, in one run:
//! the same number of pods, the plugins invoked as a runtime invokes them (fresh process, CNI_*
//! environment, config on stdin), alternating between the two so machine noise hits both alike.

use std::path::{Path, PathBuf};

use std::time::{Duration, Instant};

use serde_json::{json, Value};
use vpc_lab::netns::{cni_command, run_cni, Binaries, Daemon, Netns, TempDir};

/// Latency percentiles in milliseconds.
#[derive(Debug, Clone, Copy)]
pub struct Latency {
    pub p50_ms: f64,
    pub p99_ms: f64,
}

fn percentiles(mut samples: Vec<Duration>) -> Latency {
    samples.sort();
    let at = |q: f64| samples[((samples.len() as f64 - 1.0) * q).round() as usize].as_secs_f64() * 1e3;
    Latency { p50_ms: at(0.5), p99_ms: at(0.99) }
}

#[derive(Debug)]
pub struct CniReport {
    pub pods: usize,
    pub ours_add: Latency,
    pub ours_del: Latency,
    pub reference_add: Latency,
    pub reference_del: Latency,
}

fn invoke(plugin: &Path, command: &str, container: &str, netns: &Path, conf: &Value) -> Duration {
    let start = Instant::now();
    let out = run_cni(cni_command(plugin, command, container, netns), conf);
    let elapsed = start.elapsed();
    assert!(out.status.success(), "{} {command} failed: {}", plugin.display(), String::from_utf8_lossy(&out.stdout));
    elapsed
}

fn wait_until_gone(pod: &Netns) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while pod.exec(&["ip", "link", "show", "eth0"]).status.success() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Runs the comparison with `pods` pods per plugin. Needs root.
pub fn run(pods: usize) -> CniReport {
    let reference = PathBuf::from("/usr/lib/cni/bridge");
    assert!(reference.exists(), "the reference plugins come from Debian's containernetworking-plugins");
    let ours = Binaries::beside_current_exe().vswitchd.with_file_name("vpc-cni");
    assert!(ours.exists(), "{} is missing: cargo build --release --workspace", ours.display());
    let dir = TempDir::new();
    let node = Netns::new("vbn");
    let daemon = Daemon::start(&Binaries::beside_current_exe(), &node, &dir.0, 1);
    let ours_conf = json!({
        "cniVersion": "1.0.0", "name": "vpc", "type": "vpc-cni", "vswitchSocket": daemon.socket,
        "ipam": {"ranges": [{"rangeStart": "10.10.0.10", "rangeEnd": "10.10.3.250"}], "dataDir": dir.0.join("ipam")}
    });
    let reference_conf = json!({
        "cniVersion": "1.0.0", "name": "ref", "type": "bridge", "bridge": "cniref0", "isGateway": true,
        "ipam": {"type": "host-local", "ranges": [[{"subnet": "10.99.0.0/16"}]], "dataDir": dir.0.join("host-local")}
    });
    // Both plugins run from inside the node namespace, as a runtime on that node would run them:
    // the bridge plugin makes its bridge where it runs.
    let node_ns = std::fs::File::open(node.path()).expect("node namespace");
    let original = std::fs::File::open("/proc/self/ns/net").expect("own namespace");
    nix::sched::setns(&node_ns, nix::sched::CloneFlags::CLONE_NEWNET).expect("enter node namespace");

    let sandboxes: Vec<(Netns, Netns)> = (0..pods).map(|_| (Netns::new("vbo"), Netns::new("vbr"))).collect();
    let (mut ours_add, mut ours_del, mut ref_add, mut ref_del) = (vec![], vec![], vec![], vec![]);
    for (i, (o, r)) in sandboxes.iter().enumerate() {
        let id = format!("bench-{i}");
        ours_add.push(invoke(&ours, "ADD", &id, &o.path(), &ours_conf));
        ref_add.push(invoke(&reference, "ADD", &id, &r.path(), &reference_conf));
    }
    for (i, (o, r)) in sandboxes.iter().enumerate() {
        let id = format!("bench-{i}");
        ours_del.push(invoke(&ours, "DEL", &id, &o.path(), &ours_conf));
        // vswitchd deletes our TAP right after answering; let that finish (untimed) so the
        // kernel's device teardown does not land on the reference's measurement.
        wait_until_gone(o);
        ref_del.push(invoke(&reference, "DEL", &id, &r.path(), &reference_conf));
    }
    nix::sched::setns(&original, nix::sched::CloneFlags::CLONE_NEWNET).expect("back to own namespace");
    drop(sandboxes);
    drop(daemon);
    CniReport {
        pods,
        ours_add: percentiles(ours_add),
        ours_del: percentiles(ours_del),
        reference_add: percentiles(ref_add),
        reference_del: percentiles(ref_del),
    }
}
