//! What `vpc-bench e2e` prints and writes: a table (median, spread, ratio to the Linux bridge),
//! the targets judged from the same run, a markdown report, an SVG chart and JSON.

use std::path::Path;

use serde_json::{json, Value};

use super::{median, IpFamily, Options, PathResult};
use crate::udp_flood::{FRAME_LEN, FRAME_LEN_V6};

/// The flood's frame length on the wire (with the FCS) in `family`.
pub fn udp_frame_bytes(family: IpFamily) -> usize {
    4 + match family {
        IpFamily::Ipv4 => FRAME_LEN,
        IpFamily::Ipv6 => FRAME_LEN_V6,
    }
}

/// One line naming the family and the flood's frame size.
pub fn family_text(options: &Options) -> String {
    format!(
        "ip family: {}; the \"UDP 64B\" flood sends {}-byte frames on the wire (with the FCS)",
        options.family,
        udp_frame_bytes(options.family)
    )
}

fn spread(v: &[f64]) -> (f64, f64) {
    let min = v.iter().copied().fold(f64::INFINITY, f64::min);
    let max = v.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    (min, max)
}

fn find<'a>(results: &'a [(String, PathResult)], name: &str) -> Option<&'a PathResult> {
    results.iter().find(|(n, _)| n == name).map(|(_, r)| r)
}

/// A median, or null when there is no sample.
fn number(v: &[f64]) -> Value {
    let m = median(v);
    if m.is_finite() {
        json!(m)
    } else {
        Value::Null
    }
}

pub fn to_json(results: &[(String, PathResult)], options: &Options) -> Value {
    let mut paths = serde_json::Map::new();
    for (name, r) in results {
        paths.insert(
            name.clone(),
            json!({
                "tcp_1_gbps": number(&r.tcp_1_gbps),
                "tcp_4_gbps": number(&r.tcp_4_gbps),
                "udp64_pps": number(&r.udp64_pps),
                "udp64_sent_pps": number(&r.udp64_sent_pps),
                "rr_p50_us": number(&r.rr_p50_us),
                "rr_p99_us": number(&r.rr_p99_us),
                "cpu_s_per_gb": number(&r.cpu_s_per_gb),
                "cpu_s_per_mpkt": number(&r.cpu_s_per_mpkt),
                "samples": {
                    "tcp_1_gbps": r.tcp_1_gbps, "tcp_4_gbps": r.tcp_4_gbps, "udp64_pps": r.udp64_pps,
                    "udp64_delivered_sent": r.udp64_delivered_sent,
                    "rr_p50_us": r.rr_p50_us, "rr_p99_us": r.rr_p99_us,
                    "cpu_s_per_gb": r.cpu_s_per_gb, "cpu_s_per_mpkt": r.cpu_s_per_mpkt,
                },
            }),
        );
    }
    let targets: Vec<Value> =
        targets(results).into_iter().map(|t| json!({"target": t.what, "value": t.value, "met": t.met})).collect();
    json!({
        "repetitions": options.reps, "seconds": options.seconds, "vswitchd_workers": options.workers,
        "udp64_flows": options.flows, "paths": paths, "targets": targets,
        "ip_family": options.family.name(), "udp64_frame_bytes": udp_frame_bytes(options.family),
    })
}

/// A column of the table and a panel of the chart.
struct Metric {
    column: &'static str,
    panel: &'static str,
    samples: fn(&PathResult) -> &Vec<f64>,
    /// Applied for display (packets/s shown as Mpps).
    scale: f64,
}

impl Metric {
    fn scaled(&self, r: &PathResult) -> Vec<f64> {
        (self.samples)(r).iter().map(|x| x * self.scale).collect()
    }
}

const METRICS: [Metric; 5] = [
    Metric { column: "TCP x1 Gbit/s", panel: "TCP, 1 stream (Gbit/s)", samples: |r| &r.tcp_1_gbps, scale: 1.0 },
    Metric { column: "TCP x4 Gbit/s", panel: "TCP, 4 streams (Gbit/s)", samples: |r| &r.tcp_4_gbps, scale: 1.0 },
    Metric { column: "UDP 64B Mpps", panel: "UDP 64 B delivered (Mpps)", samples: |r| &r.udp64_pps, scale: 1e-6 },
    Metric {
        column: "RR p50 us",
        panel: "request-response p50 (us, lower is better)",
        samples: |r| &r.rr_p50_us,
        scale: 1.0,
    },
    Metric {
        column: "RR p99 us",
        panel: "request-response p99 (us, lower is better)",
        samples: |r| &r.rr_p99_us,
        scale: 1.0,
    },
];

/// The main table: median [min-max] and the ratio to the Linux bridge, per metric.
pub fn table(results: &[(String, PathResult)]) -> String {
    let bridge = find(results, "linux_bridge").cloned().unwrap_or_default();
    let mut out = format!("{:<14}", "path");
    for metric in &METRICS {
        out.push_str(&format!(" {:>25}", metric.column));
    }
    out.push('\n');
    for (name, r) in results {
        out.push_str(&format!("{name:<14}"));
        for metric in &METRICS {
            let v = metric.scaled(r);
            let (lo, hi) = spread(&v);
            let ratio = median(&v) / median(&metric.scaled(&bridge));
            let cell =
                if v.is_empty() { "-".to_string() } else { format!("{:.2} [{lo:.2}-{hi:.2}] {ratio:.2}x", median(&v)) };
            out.push_str(&format!(" {cell:>25}"));
        }
        out.push('\n');
    }
    out.push_str("\nforwarding process CPU (userspace switches): seconds per GB of TCP, per million 64-byte packets\n");
    for (name, r) in results.iter().filter(|(_, r)| !r.cpu_s_per_gb.is_empty() || !r.cpu_s_per_mpkt.is_empty()) {
        let per_mpkt = median(&r.cpu_s_per_mpkt);
        out.push_str(&format!(
            "{name:<14} {:>8.3} CPU s/GB {:>8.3} CPU s/Mpkt  = {:.2} Mpps per fully busy thread\n",
            median(&r.cpu_s_per_gb),
            per_mpkt,
            1.0 / per_mpkt
        ));
    }
    out
}

/// One of issue 7's targets, judged from this run.
#[derive(Debug, Clone)]
pub struct Target {
    pub what: String,
    pub value: f64,
    pub met: bool,
}

/// The targets for vswitchd, from the medians of this run (those whose baseline was measured).
pub fn targets(results: &[(String, PathResult)]) -> Vec<Target> {
    let Some(ours) = find(results, "vswitchd") else { return Vec::new() };
    let mut out = Vec::new();
    let mut ratio = |what: &str, ours: &[f64], base: Option<&Vec<f64>>, pass: fn(f64) -> bool| {
        if let Some(base) = base.filter(|b| !b.is_empty()) {
            let value = median(ours) / median(base);
            out.push(Target { what: what.to_string(), value, met: pass(value) });
        }
    };
    ratio(
        "TCP x1 vs linux_bridge >= 0.9x",
        &ours.tcp_1_gbps,
        find(results, "linux_bridge").map(|r| &r.tcp_1_gbps),
        |v| v >= 0.9,
    );
    ratio(
        "TCP x1 vs kernel_routed >= 0.9x",
        &ours.tcp_1_gbps,
        find(results, "kernel_routed").map(|r| &r.tcp_1_gbps),
        |v| v >= 0.9,
    );
    ratio("TCP x1 vs ovs_netdev >= 1.5x", &ours.tcp_1_gbps, find(results, "ovs_netdev").map(|r| &r.tcp_1_gbps), |v| {
        v >= 1.5
    });
    ratio(
        "RR p50 vs linux_bridge <= 1.5x",
        &ours.rr_p50_us,
        find(results, "linux_bridge").map(|r| &r.rr_p50_us),
        |v| v <= 1.5,
    );
    if !ours.cpu_s_per_mpkt.is_empty() {
        let value = 1.0 / median(&ours.cpu_s_per_mpkt);
        out.push(Target { what: "64 B Mpps per forwarding thread >= 1".into(), value, met: value >= 1.0 });
    }
    out
}

pub fn targets_text(results: &[(String, PathResult)]) -> String {
    let mut out = String::from("\ntargets (vswitchd, this run)\n");
    for t in targets(results) {
        out.push_str(&format!("  {:<40} {:>6.2}  {}\n", t.what, t.value, if t.met { "met" } else { "NOT met" }));
    }
    out
}

/// One bar chart per metric, one bar per path, as SVG.
pub fn chart(results: &[(String, PathResult)]) -> String {
    let row = 26;
    let panel_height = 30 + row * results.len();
    let mut svg = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"640\" height=\"{}\" font-family=\"sans-serif\" font-size=\"12\">\n",
        METRICS.len() * panel_height + 10
    );
    for (p, metric) in METRICS.iter().enumerate() {
        let top = p * panel_height;
        svg.push_str(&format!(
            "<text x=\"10\" y=\"{}\" font-weight=\"bold\">{}, median</text>\n",
            top + 18,
            metric.panel
        ));
        let max = results
            .iter()
            .map(|(_, r)| median(&metric.scaled(r)))
            .filter(|v| v.is_finite())
            .fold(f64::MIN_POSITIVE, f64::max);
        for (i, (name, r)) in results.iter().enumerate() {
            let v = median(&metric.scaled(r));
            let w = if v.is_finite() { 400.0 * v / max } else { 0.0 };
            let y = top + 28 + i * row;
            let fill = if name == "vswitchd" { "#d9822b" } else { "#4a7ebb" };
            svg.push_str(&format!(
                "<text x=\"10\" y=\"{}\">{name}</text><rect x=\"120\" y=\"{y}\" width=\"{w:.0}\" height=\"20\" fill=\"{fill}\"/><text x=\"{:.0}\" y=\"{}\">{v:.2}</text>\n",
                y + 15,
                126.0 + w,
                y + 15
            ));
        }
    }
    svg.push_str("</svg>\n");
    svg
}

pub fn report_dir(
    out: &Path,
    results: &[(String, PathResult)],
    options: &Options,
    command: &str,
) -> std::io::Result<()> {
    std::fs::create_dir_all(out)?;
    let md = format!(
        "# vpc-bench e2e\n\n`{command}`\n\n{} repetitions, {} s per iperf3 run and per 64-byte flood ({} flows), {} UDP round trips per latency sample, vswitchd with {} worker(s). Median [min-max] and ratio to the Linux bridge.\n\n{}.\n\n```\n{}{}```\n\n![charts](chart.svg)\n",
        options.reps,
        options.seconds,
        options.flows,
        options.round_trips,
        options.workers,
        family_text(options),
        table(results),
        targets_text(results)
    );
    std::fs::write(out.join("report.md"), md)?;
    std::fs::write(out.join("chart.svg"), chart(results))?;
    std::fs::write(out.join("report.json"), serde_json::to_vec_pretty(&to_json(results, options))?)?;
    Ok(())
}
