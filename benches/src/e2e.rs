//! Pod-to-pod forwarding, side by side: the same two "pods" (network namespaces) connected by a
//! veth pair directly, through a Linux bridge, through the kernel's own router (host /32 routes
//! and a proxy-ARP gateway, as UK8S and Calico wire pods), and through vswitchd; each measured
//! with iperf3 (1 and 4 TCP streams) and UDP request-response latency, several times.

use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::{json, Value};
use vpc_lab::netns::{binary, try_run, Binaries, Daemon, Netns, Pod, TempDir};

/// One measured path.
#[derive(Debug, Clone, Default)]
pub struct PathResult {
    pub tcp_1_gbps: Vec<f64>,
    pub tcp_4_gbps: Vec<f64>,
    pub rr_p50_us: Vec<f64>,
    pub rr_p99_us: Vec<f64>,
}

pub fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    if s.is_empty() { f64::NAN } else { s[s.len() / 2] }
}

fn spread(v: &[f64]) -> (f64, f64) {
    let min = v.iter().copied().fold(f64::INFINITY, f64::min);
    let max = v.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    (min, max)
}

const A: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 2);
const B: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 3);

/// Two endpoints and whatever connects them; dropped (and removed) after measuring.
struct Topology {
    a: String,
    b: String,
    _keep: Vec<Box<dyn std::any::Any>>,
}

fn veth_direct() -> Topology {
    let (a, b) = (Netns::new("vba"), Netns::new("vbb"));
    a.ip(&["link", "add", "eth0", "type", "veth", "peer", "name", "eth0", "netns", &b.name]);
    for (ns, ip) in [(&a, A), (&b, B)] {
        ns.ip(&["addr", "add", &format!("{ip}/24"), "dev", "eth0"]);
        ns.ip(&["link", "set", "eth0", "up"]);
    }
    Topology { a: a.name.clone(), b: b.name.clone(), _keep: vec![Box::new(a), Box::new(b)] }
}

fn linux_bridge() -> Topology {
    let (host, a, b) = (Netns::new("vbh"), Netns::new("vba"), Netns::new("vbb"));
    host.ip(&["link", "add", "br0", "type", "bridge"]);
    host.ip(&["link", "set", "br0", "up"]);
    for (ns, ip, port) in [(&a, A, "va"), (&b, B, "vb")] {
        ns.ip(&["link", "add", "eth0", "type", "veth", "peer", "name", port, "netns", &host.name]);
        host.ip(&["link", "set", port, "master", "br0", "up"]);
        ns.ip(&["addr", "add", &format!("{ip}/24"), "dev", "eth0"]);
        ns.ip(&["link", "set", "eth0", "up"]);
    }
    Topology { a: a.name.clone(), b: b.name.clone(), _keep: vec![Box::new(a), Box::new(b), Box::new(host)] }
}

/// Pods with /32 addresses and a default route via 169.254.1.1, which the host answers by
/// proxy-ARP; the host routes each pod's /32 out of its veth.
fn kernel_routed() -> Topology {
    let (host, a, b) = (Netns::new("vbh"), Netns::new("vba"), Netns::new("vbb"));
    // Proxy-ARP answers only for addresses routed out of another interface: give the host a
    // default route of its own.
    host.ip(&["link", "add", "up0", "type", "veth", "peer", "name", "up1"]);
    host.ip(&["link", "set", "up0", "up"]);
    host.ip(&["link", "set", "up1", "up"]);
    host.ip(&["addr", "add", "192.0.2.1/24", "dev", "up0"]);
    host.ip(&["route", "add", "default", "via", "192.0.2.2"]);
    let _ = host.exec(&["sh", "-c", "echo 1 > /proc/sys/net/ipv4/ip_forward"]);
    for (ns, ip, port) in [(&a, A, "va"), (&b, B, "vb")] {
        ns.ip(&["link", "add", "eth0", "type", "veth", "peer", "name", port, "netns", &host.name]);
        host.ip(&["link", "set", port, "up"]);
        let _ = host.exec(&["sh", "-c", &format!("echo 1 > /proc/sys/net/ipv4/conf/{port}/proxy_arp; echo 0 > /proc/sys/net/ipv4/neigh/{port}/proxy_delay")]);
        host.ip(&["route", "add", &format!("{ip}/32"), "dev", port]);
        ns.ip(&["addr", "add", &format!("{ip}/32"), "dev", "eth0"]);
        ns.ip(&["link", "set", "eth0", "up"]);
        ns.ip(&["route", "add", "169.254.1.1", "dev", "eth0", "scope", "link"]);
        ns.ip(&["route", "add", "default", "via", "169.254.1.1", "dev", "eth0"]);
    }
    Topology { a: a.name.clone(), b: b.name.clone(), _keep: vec![Box::new(a), Box::new(b), Box::new(host)] }
}

fn vswitchd(workers: usize) -> Topology {
    let dir = TempDir::new();
    let node = Netns::new("vbn");
    let daemon = Daemon::start(&Binaries::beside_current_exe(), &node, &dir.0, workers);
    let (a, b) = (Pod::new(A), Pod::new(B));
    daemon.attach("a", &a);
    daemon.attach("b", &b);
    let names = (a.ns.name.clone(), b.ns.name.clone());
    // Drop order: pods, daemon, node, dir.
    Topology { a: names.0, b: names.1, _keep: vec![Box::new(a), Box::new(b), Box::new(daemon), Box::new(node), Box::new(dir)] }
}

fn iperf3(t: &Topology, streams: u32, seconds: u32) -> Option<f64> {
    let mut server = Command::new("ip").args(["netns", "exec", &t.b, "iperf3", "-s", "-1", "-p", "5201"]).stdout(Stdio::null()).stderr(Stdio::null()).spawn().ok()?;
    std::thread::sleep(Duration::from_millis(300));
    let out = try_run(&["ip", "netns", "exec", &t.a, "iperf3", "-c", &B.to_string(), "-p", "5201", "-t", &seconds.to_string(), "-P", &streams.to_string(), "-J"]);
    let _ = server.kill();
    let _ = server.wait();
    let report: Value = serde_json::from_slice(&out.stdout).ok()?;
    report["end"]["sum_received"]["bits_per_second"].as_f64().map(|b| b / 1e9)
}

fn rr(t: &Topology, count: u32) -> Option<(f64, f64)> {
    let tool = binary("vpc-bench");
    let mut server = Command::new("ip").args(["netns", "exec", &t.b]).arg(&tool).args(["rr-server", "--port", "7777"]).stdout(Stdio::null()).spawn().ok()?;
    std::thread::sleep(Duration::from_millis(200));
    let out = Command::new("ip").args(["netns", "exec", &t.a]).arg(&tool).args(["rr-client", &format!("{B}:7777"), "--count", &count.to_string()]).output().ok()?;
    let _ = server.kill();
    let _ = server.wait();
    let v: Value = serde_json::from_slice(&out.stdout).ok()?;
    Some((v["p50_us"].as_f64()?, v["p99_us"].as_f64()?))
}

pub const PATHS: &[&str] = &["veth", "linux_bridge", "kernel_routed", "vswitchd"];

/// Measures every path `reps` times.
pub fn run(reps: usize, seconds: u32, workers: usize, mut progress: impl FnMut(&str)) -> Vec<(&'static str, PathResult)> {
    let mut results: Vec<(&'static str, PathResult)> = PATHS.iter().map(|p| (*p, PathResult::default())).collect();
    for rep in 0..reps {
        for (name, result) in results.iter_mut() {
            progress(&format!("repetition {}/{reps}: {name}", rep + 1));
            let t = match *name {
                "veth" => veth_direct(),
                "linux_bridge" => linux_bridge(),
                "kernel_routed" => kernel_routed(),
                _ => vswitchd(workers),
            };
            // Warm the path (ARP, proxy-ARP) before timing anything.
            let _ = try_run(&["ip", "netns", "exec", &t.a, "ping", "-c", "2", "-i", "0.2", "-W", "1", &B.to_string()]);
            if let Some(g) = iperf3(&t, 1, seconds) {
                result.tcp_1_gbps.push(g);
            }
            if let Some(g) = iperf3(&t, 4, seconds) {
                result.tcp_4_gbps.push(g);
            }
            if let Some((p50, p99)) = rr(&t, 20_000) {
                result.rr_p50_us.push(p50);
                result.rr_p99_us.push(p99);
            }
        }
    }
    results
}

pub fn to_json(results: &[(&str, PathResult)], reps: usize, seconds: u32) -> Value {
    let mut paths = serde_json::Map::new();
    for (name, r) in results {
        paths.insert(name.to_string(), json!({
            "tcp_1_gbps": median(&r.tcp_1_gbps),
            "tcp_4_gbps": median(&r.tcp_4_gbps),
            // Not measured yet: needs a 64-byte generator that saturates the path (issue 7).
            "udp64_pps": Value::Null,
            "rr_p50_us": median(&r.rr_p50_us),
            "rr_p99_us": median(&r.rr_p99_us),
            "samples": {"tcp_1_gbps": r.tcp_1_gbps, "tcp_4_gbps": r.tcp_4_gbps, "rr_p50_us": r.rr_p50_us, "rr_p99_us": r.rr_p99_us},
        }));
    }
    json!({"repetitions": reps, "seconds": seconds, "paths": paths})
}

/// The table: median, spread (min-max) and ratio to the Linux bridge.
pub fn table(results: &[(&str, PathResult)]) -> String {
    let bridge = results.iter().find(|(n, _)| *n == "linux_bridge").map(|(_, r)| r.clone()).unwrap_or_default();
    let mut out = format!("{:<15} {:>24} {:>24} {:>22} {:>22}\n", "path", "TCP x1 Gbit/s", "TCP x4 Gbit/s", "RR p50 us", "RR p99 us");
    let cell = |v: &[f64], base: &[f64]| {
        let (lo, hi) = spread(v);
        format!("{:.2} [{:.2}-{:.2}] {:.2}x", median(v), lo, hi, median(v) / median(base))
    };
    for (name, r) in results {
        out.push_str(&format!(
            "{:<15} {:>24} {:>24} {:>22} {:>22}\n",
            name,
            cell(&r.tcp_1_gbps, &bridge.tcp_1_gbps),
            cell(&r.tcp_4_gbps, &bridge.tcp_4_gbps),
            cell(&r.rr_p50_us, &bridge.rr_p50_us),
            cell(&r.rr_p99_us, &bridge.rr_p99_us),
        ));
    }
    out
}

/// A bar chart of single-stream TCP throughput, as SVG.
pub fn chart(results: &[(&str, PathResult)]) -> String {
    let max = results.iter().map(|(_, r)| median(&r.tcp_1_gbps)).fold(1.0, f64::max);
    let mut svg = String::from("<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"640\" height=\"260\" font-family=\"sans-serif\" font-size=\"12\">\n<text x=\"10\" y=\"20\">pod-to-pod TCP, one stream (Gbit/s, median)</text>\n");
    for (i, (name, r)) in results.iter().enumerate() {
        let v = median(&r.tcp_1_gbps);
        let w = if v.is_finite() { 440.0 * v / max } else { 0.0 };
        let y = 40 + i * 50;
        svg.push_str(&format!("<text x=\"10\" y=\"{}\">{name}</text><rect x=\"120\" y=\"{}\" width=\"{w:.0}\" height=\"30\" fill=\"#4a7ebb\"/><text x=\"{:.0}\" y=\"{}\">{v:.2}</text>\n", y + 20, y, 126.0 + w, y + 20));
    }
    svg.push_str("</svg>\n");
    svg
}

pub fn report_dir(out: &PathBuf, results: &[(&str, PathResult)], reps: usize, seconds: u32) -> std::io::Result<()> {
    std::fs::create_dir_all(out)?;
    let md = format!(
        "# vpc-bench e2e\n\n{reps} repetitions, {seconds} s per iperf3 run, 20,000 UDP round trips for latency. Median [min-max] and ratio to the Linux bridge.\n\n```\n{}```\n\n![TCP one stream](chart.svg)\n",
        table(results)
    );
    std::fs::write(out.join("report.md"), md)?;
    std::fs::write(out.join("chart.svg"), chart(results))?;
    std::fs::write(out.join("report.json"), serde_json::to_vec_pretty(&to_json(results, reps, seconds))?)?;
    Ok(())
}
