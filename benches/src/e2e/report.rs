//! What `vpc-bench e2e` prints and writes: tables (median, range, spread, ratio to a baseline),
//! vswitchd's figures as ratios to its `tap_bounce` ceiling, the targets judged from the same
//! run, a markdown report, an SVG chart and JSON.
//!
//! The spread of a figure is (max - min) / median over its repetitions, in percent; a figure
//! spread over [`NOISY_PCT`] is noisy, marked `~` in the tables and listed in the JSON, and a
//! target that depends on one is not judged.

use std::path::Path;

use serde_json::{json, Map, Value};

use super::{median, IpFamily, Options, PathResult, Results};
use crate::udp_flood::{FRAME_LEN, FRAME_LEN_V6};

/// Spread (percent) past which a figure is noisy.
pub const NOISY_PCT: f64 = 15.0;

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
        "ip family: {}{}; the \"UDP 64B\" flood sends {}-byte frames on the wire (with the FCS)",
        options.family,
        if options.cross_node { " (across nodes: ipv4)" } else { "" },
        udp_frame_bytes(options.family)
    )
}

fn range(v: &[f64]) -> (f64, f64) {
    let min = v.iter().copied().fold(f64::INFINITY, f64::min);
    let max = v.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    (min, max)
}

/// (max - min) / median in percent; NaN without samples, 0 for one.
pub fn spread_pct(v: &[f64]) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    let (min, max) = range(v);
    if max == min {
        0.0
    } else {
        (max - min) / median(v).abs() * 100.0
    }
}

/// Whether the repetitions of a figure disagree by more than [`NOISY_PCT`].
pub fn is_noisy(v: &[f64]) -> bool {
    spread_pct(v) > NOISY_PCT
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

/// One figure of a path: a column of the tables, a panel of the chart, a key of the JSON.
#[derive(Debug)]
pub struct Metric {
    /// Its key in the JSON.
    pub key: &'static str,
    /// Short, for targets and ratio lines.
    pub name: &'static str,
    unit: &'static str,
    panel: &'static str,
    samples: fn(&PathResult) -> &Vec<f64>,
    /// Applied for display (packets/s shown as Mpps).
    scale: f64,
}

impl Metric {
    pub fn samples<'a>(&self, r: &'a PathResult) -> &'a [f64] {
        (self.samples)(r)
    }

    fn scaled(&self, r: &PathResult) -> Vec<f64> {
        self.samples(r).iter().map(|x| x * self.scale).collect()
    }

    fn column(&self) -> String {
        format!("{} {}", self.name, self.unit)
    }
}

pub const TCP_1: Metric = Metric {
    key: "tcp_1_gbps",
    name: "TCP x1",
    unit: "Gbit/s",
    panel: "TCP, 1 stream (Gbit/s)",
    samples: |r| &r.tcp_1_gbps,
    scale: 1.0,
};
pub const TCP_4: Metric = Metric {
    key: "tcp_4_gbps",
    name: "TCP x4",
    unit: "Gbit/s",
    panel: "TCP, 4 streams (Gbit/s)",
    samples: |r| &r.tcp_4_gbps,
    scale: 1.0,
};
pub const UDP_64: Metric = Metric {
    key: "udp64_pps",
    name: "UDP 64B",
    unit: "Mpps",
    panel: "UDP 64 B delivered (Mpps)",
    samples: |r| &r.udp64_pps,
    scale: 1e-6,
};
pub const UDP_GSO: Metric = Metric {
    key: "udp_gso_gbps",
    name: "UDP GSO",
    unit: "Gbit/s",
    panel: "UDP with GSO, 1400-byte datagrams (Gbit/s of payload)",
    samples: |r| &r.udp_gso_gbps,
    scale: 1.0,
};
pub const RR_P50: Metric = Metric {
    key: "rr_p50_us",
    name: "RR p50",
    unit: "us",
    panel: "request-response p50 (us, lower is better)",
    samples: |r| &r.rr_p50_us,
    scale: 1.0,
};
pub const RR_P99: Metric = Metric {
    key: "rr_p99_us",
    name: "RR p99",
    unit: "us",
    panel: "request-response p99 (us, lower is better)",
    samples: |r| &r.rr_p99_us,
    scale: 1.0,
};
pub const CPU_GB: Metric = Metric {
    key: "cpu_s_per_gb",
    name: "CPU s/GB",
    unit: "",
    panel: "forwarding CPU seconds per GB of TCP (lower is better)",
    samples: |r| &r.cpu_s_per_gb,
    scale: 1.0,
};
pub const CPU_MPKT: Metric = Metric {
    key: "cpu_s_per_mpkt",
    name: "CPU s/Mpkt",
    unit: "",
    panel: "forwarding CPU seconds per million 64-byte packets (lower is better)",
    samples: |r| &r.cpu_s_per_mpkt,
    scale: 1.0,
};

pub const MACHINE_TCP_4: Metric = Metric {
    key: "tcp_4_machine_s_per_gb",
    name: "machine CPU s/GB TCP x4",
    unit: "",
    panel: "whole machine's CPU seconds per GB of TCP x4 (lower is better)",
    samples: |r| &r.tcp_4_machine_s_per_gb,
    scale: 1.0,
};
pub const MACHINE_GSO: Metric = Metric {
    key: "udp_gso_machine_s_per_gb",
    name: "machine CPU s/GB UDP GSO",
    unit: "",
    panel: "whole machine's CPU seconds per GB of UDP GSO (lower is better)",
    samples: |r| &r.udp_gso_machine_s_per_gb,
    scale: 1.0,
};
pub const CPU_GSO: Metric = Metric {
    key: "udp_gso_cpu_s_per_gb",
    name: "CPU s/GB UDP GSO",
    unit: "",
    panel: "forwarding CPU seconds per GB of UDP GSO (lower is better)",
    samples: |r| &r.udp_gso_cpu_s_per_gb,
    scale: 1.0,
};
/// The CPU cost of moving bytes: what bounds throughput once every core is busy.
const COST: [&Metric; 3] = [&MACHINE_TCP_4, &MACHINE_GSO, &CPU_GSO];

/// The tables' columns and the chart's panels: throughput, then latency.
const THROUGHPUT: [&Metric; 4] = [&TCP_1, &TCP_4, &UDP_64, &UDP_GSO];
const LATENCY: [&Metric; 2] = [&RR_P50, &RR_P99];
/// Every figure a path has: what spread, noise and ceiling ratios are reported for.
pub const FIGURES: [&Metric; 11] =
    [&TCP_1, &TCP_4, &UDP_64, &UDP_GSO, &RR_P50, &RR_P99, &CPU_GB, &CPU_MPKT, &MACHINE_TCP_4, &MACHINE_GSO, &CPU_GSO];

/// The JSON keys of `r`'s noisy figures.
pub fn noisy(r: &PathResult) -> Vec<&'static str> {
    FIGURES.iter().filter(|m| is_noisy(m.samples(r))).map(|m| m.key).collect()
}

/// `r`'s figures as ratios of medians to `base`'s (those both have).
pub fn ratios(r: &PathResult, base: &PathResult) -> Map<String, Value> {
    FIGURES
        .iter()
        .filter(|m| !m.samples(r).is_empty() && !m.samples(base).is_empty())
        .map(|m| (m.key.to_string(), number(&[median(m.samples(r)) / median(m.samples(base))])))
        .collect()
}

/// A path's JSON: each figure of [`FIGURES`] (its median, its spread, its samples), the
/// generator's own rate, which figures are noisy, and the sent/received counts behind the rates.
fn path_json(r: &PathResult) -> Value {
    let measured = || FIGURES.iter().filter(|m| !m.samples(r).is_empty());
    let spread: Map<String, Value> = measured().map(|m| (m.key.to_string(), json!(spread_pct(m.samples(r))))).collect();
    let mut samples: Map<String, Value> = FIGURES.iter().map(|m| (m.key.to_string(), json!(m.samples(r)))).collect();
    samples.insert("udp64_delivered_sent".into(), json!(r.udp64_delivered_sent));
    samples.insert("udp_gso_received_sent".into(), json!(r.udp_gso_received_sent));
    let mut path: Map<String, Value> = FIGURES.iter().map(|m| (m.key.to_string(), number(m.samples(r)))).collect();
    path.insert("udp64_sent_pps".into(), number(&r.udp64_sent_pps));
    path.insert("spread_pct".into(), Value::Object(spread));
    path.insert("noisy".into(), json!(noisy(r)));
    path.insert("samples".into(), Value::Object(samples));
    Value::Object(path)
}

/// Every path's JSON; the paths named in `compared` also get `key`: their ratios to `base`.
fn paths_json(results: &[(String, PathResult)], compared: &[&str], key: &str, base: &str) -> Value {
    let base = find(results, base);
    let mut paths = Map::new();
    for (name, r) in results {
        let mut p = path_json(r);
        if let (Some(base), true) = (base, compared.contains(&name.as_str())) {
            p[key] = Value::Object(ratios(r, base));
        }
        paths.insert(name.clone(), p);
    }
    Value::Object(paths)
}

/// vswitchd's modes across nodes, compared with the kernel's router there.
const CROSS_VSWITCHD: [&str; 2] = ["vswitchd_host_routed", "vswitchd_uplink"];

pub fn to_json(results: &Results, options: &Options) -> Value {
    let targets: Vec<Value> = targets(results)
        .into_iter()
        .map(|t| json!({"target": t.what, "value": t.value, "met": t.met, "noisy": t.met.is_none()}))
        .collect();
    let cross_node = if options.cross_node {
        json!({
            "ip_family": "ipv4",
            "paths": paths_json(&results.cross_node, &CROSS_VSWITCHD, "vs_kernel_routed", "kernel_routed"),
        })
    } else {
        Value::Null
    };
    json!({
        "repetitions": options.reps, "seconds": options.seconds, "vswitchd_workers": options.workers,
        "udp64_flows": options.flows,
        "paths": paths_json(&results.paths, &["vswitchd"], "vs_tap_bounce", "tap_bounce"),
        "cross_node": cross_node, "targets": targets, "noisy_spread_pct": NOISY_PCT,
        "ip_family": options.family.name(), "udp64_frame_bytes": udp_frame_bytes(options.family),
    })
}

/// `median [min-max] ±spread%`, `~` when noisy, and the ratio to `base` when there is one.
fn cell(metric: &Metric, r: &PathResult, base: Option<&PathResult>) -> String {
    let v = metric.scaled(r);
    if v.is_empty() {
        return "-".to_string();
    }
    let (lo, hi) = range(&v);
    let mark = if is_noisy(&v) { "~" } else { "" };
    let mut cell = format!("{:.2} [{lo:.2}-{hi:.2}] ±{:.0}%{mark}", median(&v), spread_pct(&v));
    let ratio = base.map_or(f64::NAN, |b| median(&v) / median(&metric.scaled(b)));
    if ratio.is_finite() {
        cell.push_str(&format!(" {ratio:.2}x"));
    }
    cell
}

/// One table: a row per path, a column per metric, ratios to path `base`.
fn metric_table(results: &[(String, PathResult)], metrics: &[&Metric], base: &str) -> String {
    let base = find(results, base);
    let width = results
        .iter()
        .flat_map(|(_, r)| metrics.iter().map(move |m| cell(m, r, base).chars().count()))
        .chain(metrics.iter().map(|m| m.column().len()))
        .max()
        .unwrap_or(0);
    let mut out = format!("{:<20}", "path");
    for metric in metrics {
        out.push_str(&format!(" {:>width$}", metric.column()));
    }
    out.push('\n');
    for (name, r) in results {
        out.push_str(&format!("{name:<20}"));
        for metric in metrics {
            out.push_str(&format!(" {:>width$}", cell(metric, r, base)));
        }
        out.push('\n');
    }
    out
}

/// One line of `ours`'s figures as ratios to `base`'s, `~` where either is noisy.
fn ratio_line(ours: &PathResult, base: &PathResult) -> String {
    let parts: Vec<String> = FIGURES
        .iter()
        .filter(|m| !m.samples(ours).is_empty() && !m.samples(base).is_empty())
        .map(|m| {
            let ratio = median(m.samples(ours)) / median(m.samples(base));
            let mark = if is_noisy(m.samples(ours)) || is_noisy(m.samples(base)) { "~" } else { "" };
            format!("{} {ratio:.2}x{mark}", m.name)
        })
        .collect();
    parts.join(", ")
}

/// The throughput and latency tables of one scope, ratios to `base`.
fn scope_tables(results: &[(String, PathResult)], base: &str) -> String {
    format!("{}\n{}", metric_table(results, &THROUGHPUT, base), metric_table(results, &LATENCY, base))
}

/// Everything the terminal shows but the targets: same-node tables (ratio to the Linux bridge),
/// vswitchd against its ceiling, CPU costs, and the cross-node tables (ratio to the kernel's
/// router) when they were measured.
pub fn table(results: &Results) -> String {
    let same = &results.paths;
    let mut out = format!("median [min-max] ±spread over the repetitions (~: spread over {NOISY_PCT:.0}%, noisy)\n");
    if !same.is_empty() {
        out.push_str("\nsame node, ratio to linux_bridge\n\n");
        out.push_str(&scope_tables(same, "linux_bridge"));
    }
    if let (Some(ours), Some(ceiling)) = (find(same, "vswitchd"), find(same, "tap_bounce")) {
        out.push_str(&format!("\nvswitchd / tap_bounce (the ceiling): {}\n", ratio_line(ours, ceiling)));
    }
    let userspace: Vec<_> =
        same.iter().filter(|(_, r)| !r.cpu_s_per_gb.is_empty() || !r.cpu_s_per_mpkt.is_empty()).collect();
    if !userspace.is_empty() {
        out.push_str(
            "\nforwarding process CPU (userspace switches): seconds per GB of TCP, per million 64-byte packets\n",
        );
    }
    for (name, r) in userspace {
        let per_mpkt = median(&r.cpu_s_per_mpkt);
        let mark = |v: &[f64]| if is_noisy(v) { "~" } else { " " };
        out.push_str(&format!(
            "{name:<14} {:>8.3} CPU s/GB ±{:.0}%{} {:>8.3} CPU s/Mpkt ±{:.0}%{}  = {:.2} Mpps per fully busy thread\n",
            median(&r.cpu_s_per_gb),
            spread_pct(&r.cpu_s_per_gb),
            mark(&r.cpu_s_per_gb),
            per_mpkt,
            spread_pct(&r.cpu_s_per_mpkt),
            mark(&r.cpu_s_per_mpkt),
            1.0 / per_mpkt
        ));
    }
    if same.iter().any(|(_, r)| COST.iter().any(|m| !m.samples(r).is_empty())) {
        out.push_str(
            "\nwhat bounds throughput once every core is busy: CPU seconds per GB moved, the whole machine \
             (sender, receiver, kernel, switch) and the switch alone; ratio to linux_bridge\n\n",
        );
        out.push_str(&metric_table(same, &COST, "linux_bridge"));
    }
    if !results.cross_node.is_empty() {
        out.push_str("\nacross nodes (IPv4; pod A on node 1, pod B on node 2), ratio to kernel_routed\n\n");
        out.push_str(&scope_tables(&results.cross_node, "kernel_routed"));
    }
    out
}

/// One of issue 16's targets, judged from this run's medians.
#[derive(Debug, Clone, PartialEq)]
pub struct Target {
    pub what: String,
    pub value: f64,
    /// None when a figure it depends on is noisy: not judged.
    pub met: Option<bool>,
}

impl Target {
    pub fn verdict(&self) -> &'static str {
        match self.met {
            Some(true) => "met",
            Some(false) => "NOT met",
            None => "noisy, not judged",
        }
    }
}

#[derive(Debug, Clone, Copy)]
enum Bound {
    AtLeast(f64),
    AtMost(f64),
}

impl Bound {
    fn holds(self, value: f64) -> bool {
        match self {
            Bound::AtLeast(x) => value >= x,
            Bound::AtMost(x) => value <= x,
        }
    }
}

impl std::fmt::Display for Bound {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Bound::AtLeast(x) => write!(f, ">= {x}x"),
            Bound::AtMost(x) => write!(f, "<= {x}x"),
        }
    }
}

/// `metric` of `ours` against `base` (named `base_name`), if both were measured.
fn judge(
    label: &str,
    metric: &Metric,
    ours: &PathResult,
    base_name: &str,
    base: &PathResult,
    bound: Bound,
) -> Option<Target> {
    let (o, b) = (metric.samples(ours), metric.samples(base));
    if o.is_empty() || b.is_empty() {
        return None;
    }
    let value = median(o) / median(b);
    let met = (!is_noisy(o) && !is_noisy(b)).then(|| bound.holds(value));
    Some(Target { what: format!("{label}{} vs {base_name} {bound}", metric.name), value, met })
}

/// The targets, from the medians of this run (those whose figures were measured).
pub fn targets(results: &Results) -> Vec<Target> {
    let (same, cross) = (&results.paths, &results.cross_node);
    let mut out = Vec::new();
    if let Some(ours) = find(same, "vswitchd") {
        if let Some(ceiling) = find(same, "tap_bounce") {
            for metric in [&TCP_1, &TCP_4, &UDP_64] {
                out.extend(judge("", metric, ours, "tap_bounce", ceiling, Bound::AtLeast(0.95)));
            }
            for metric in [&RR_P50, &RR_P99] {
                out.extend(judge("", metric, ours, "tap_bounce", ceiling, Bound::AtMost(1.1)));
            }
        }
        // The better of the kernel's two ways of wiring pods on one node.
        let best = ["linux_bridge", "kernel_routed"]
            .into_iter()
            .filter_map(|name| find(same, name).filter(|r| !r.tcp_1_gbps.is_empty()).map(|r| (name, r)))
            .max_by(|a, b| median(&a.1.tcp_1_gbps).total_cmp(&median(&b.1.tcp_1_gbps)));
        if let Some((name, base)) = best {
            out.extend(judge("", &TCP_1, ours, &format!("{name} (the better kernel path)"), base, Bound::AtLeast(0.9)));
        }
        if let Some(ovs) = find(same, "ovs_netdev") {
            out.extend(judge("", &CPU_GB, ours, "ovs_netdev", ovs, Bound::AtMost(0.6)));
        }
        if let Some(bridge) = find(same, "linux_bridge") {
            out.extend(judge("", &UDP_GSO, ours, "linux_bridge", bridge, Bound::AtLeast(0.9)));
        }
        if let Some(ovs) = find(same, "ovs_netdev") {
            out.extend(judge("", &UDP_GSO, ours, "ovs_netdev", ovs, Bound::AtLeast(1.5)));
        }
    }
    if let Some(kernel) = find(cross, "kernel_routed") {
        for mode in CROSS_VSWITCHD {
            if let Some(ours) = find(cross, mode) {
                let label = format!("across nodes: {mode} ");
                out.extend(judge(&label, &TCP_1, ours, "kernel_routed", kernel, Bound::AtLeast(0.9)));
            }
        }
    }
    out
}

pub fn targets_text(results: &Results) -> String {
    let targets = targets(results);
    let width = targets.iter().map(|t| t.what.len()).max().unwrap_or(0);
    let mut out = String::from("\ntargets (vswitchd, this run's medians)\n");
    for t in targets {
        out.push_str(&format!("  {:<width$} {:>6.2}x  {}\n", t.what, t.value, t.verdict()));
    }
    out
}

/// One bar chart per metric, one bar per same-node path, as SVG.
pub fn chart(results: &Results) -> String {
    let results = &results.paths;
    let metrics: Vec<&Metric> = THROUGHPUT.into_iter().chain(LATENCY).collect();
    let row = 26;
    let panel_height = 30 + row * results.len();
    let mut svg = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"640\" height=\"{}\" font-family=\"sans-serif\" font-size=\"12\">\n",
        metrics.len() * panel_height + 10
    );
    for (p, metric) in metrics.iter().enumerate() {
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
            let fill = match name.as_str() {
                "vswitchd" => "#d9822b",
                "tap_bounce" => "#999999",
                _ => "#4a7ebb",
            };
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

pub fn report_dir(out: &Path, results: &Results, options: &Options, command: &str) -> std::io::Result<()> {
    std::fs::create_dir_all(out)?;
    let md = format!(
        "# vpc-bench e2e\n\n`{command}`\n\n{} repetitions, {} s per iperf3 run, per 64-byte flood ({} flows) and per UDP GSO run, {} UDP round trips per latency sample, vswitchd with {} worker(s). Median [min-max] ±spread ((max-min)/median; `~` marks a spread over {NOISY_PCT:.0}%, and targets depending on such a figure are not judged) and ratio to the Linux bridge; tap_bounce is vswitchd's ceiling (its workers only bounce frames between the pods' TAPs).\n\n{}.\n\n```\n{}{}```\n\n![charts](chart.svg)\n",
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Three repetitions of every figure at `level` times a reference path's, `jitter` apart
    /// (relative), so each figure's spread is 2 * jitter.
    fn path(level: f64, jitter: f64) -> PathResult {
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

    fn options(cross_node: bool) -> Options {
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

    fn named(paths: Vec<(&str, PathResult)>) -> Vec<(String, PathResult)> {
        paths.into_iter().map(|(n, r)| (n.to_string(), r)).collect()
    }

    fn target<'a>(targets: &'a [Target], starts: &str) -> &'a Target {
        targets
            .iter()
            .find(|t| t.what.starts_with(starts))
            .unwrap_or_else(|| panic!("no target {starts:?}: {targets:?}"))
    }

    /// A whole run: every same-node path (the bridge without the switches' CPU figures, as
    /// measured; veth with TCP only; one noisy figure for Open vSwitch) and three cross-node ones.
    fn whole_run() -> Results {
        let mut bridge = path(1.0, 0.02);
        bridge.cpu_s_per_gb.clear();
        bridge.cpu_s_per_mpkt.clear();
        bridge.udp_gso_cpu_s_per_gb.clear();
        let veth = PathResult { tcp_1_gbps: vec![40.0, 41.5, 44.0], tcp_4_gbps: vec![70.0; 3], ..Default::default() };
        let mut ovs = path(0.5, 0.04);
        ovs.tcp_1_gbps = vec![7.0, 10.0, 12.0];
        Results {
            paths: named(vec![
                ("veth", veth),
                ("linux_bridge", bridge),
                ("kernel_routed", path(1.1, 0.03)),
                ("vswitchd", path(0.9, 0.05)),
                ("tap_bounce", path(0.95, 0.02)),
                ("ovs_netdev", ovs),
            ]),
            cross_node: named(vec![
                ("kernel_routed", path(1.0, 0.02)),
                ("vswitchd_host_routed", path(0.93, 0.03)),
                ("vswitchd_uplink", path(0.85, 0.1)),
            ]),
        }
    }

    /// What `report_dir` writes (the markdown holds the terminal's tables and targets) for
    /// [`whole_run`], byte for byte as recorded in `benches/testdata/e2e-report/`: the output
    /// format changes only on purpose. After such a change, `VPC_BENCH_RECORD=1 cargo test
    /// --release -p benches --lib report` records the new output (review its diff).
    #[test]
    fn the_report_files_are_the_recorded_ones() {
        let recorded = Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata/e2e-report");
        let dir = vpc_lab::netns::TempDir::new();
        report_dir(&dir.0, &whole_run(), &options(true), "vpc-bench e2e --reps 3 --cross-node").unwrap();
        for file in ["report.md", "chart.svg", "report.json"] {
            let written = std::fs::read_to_string(dir.0.join(file)).unwrap();
            if std::env::var_os("VPC_BENCH_RECORD").is_some() {
                std::fs::create_dir_all(&recorded).unwrap();
                std::fs::write(recorded.join(file), &written).unwrap();
            }
            let want = std::fs::read_to_string(recorded.join(file))
                .unwrap_or_else(|e| panic!("{}: {e} (VPC_BENCH_RECORD=1 records it)", recorded.join(file).display()));
            assert!(written == want, "{file} differs from {}:\n{written}", recorded.join(file).display());
        }
    }

    #[test]
    fn spread_is_the_range_over_the_median_in_percent() {
        assert_eq!(spread_pct(&[9.0, 10.0, 11.0]), 20.0);
        assert_eq!(spread_pct(&[11.0, 9.0, 10.0]), 20.0, "order does not matter");
        assert_eq!(spread_pct(&[7.0]), 0.0, "one repetition has no spread");
        assert!(spread_pct(&[]).is_nan());
        assert!(is_noisy(&[9.0, 10.0, 11.0]));
        assert!(is_noisy(&[9.2, 10.0, 10.8]), "16% is noisy");
        assert!(!is_noisy(&[9.3, 10.0, 10.7]), "14% is not");
        assert!(!is_noisy(&[]), "no samples: nothing to call noisy");
    }

    #[test]
    fn noisy_lists_exactly_the_figures_spread_past_the_limit() {
        let mut r = path(1.0, 0.05);
        assert!(noisy(&r).is_empty(), "10% everywhere: {:?}", noisy(&r));
        r.tcp_4_gbps = vec![30.0, 40.0, 50.0];
        r.cpu_s_per_mpkt = vec![0.5, 0.5, 0.1];
        assert_eq!(noisy(&r), ["tcp_4_gbps", "cpu_s_per_mpkt"]);
    }

    #[test]
    fn ratios_divide_medians_and_skip_figures_one_side_lacks() {
        let ours = path(0.9, 0.0);
        let mut ceiling = path(1.0, 0.3);
        ceiling.cpu_s_per_gb.clear();
        let r = ratios(&ours, &ceiling);
        assert!((r["tcp_1_gbps"].as_f64().unwrap() - 0.9).abs() < 1e-9, "{r:?}");
        assert!((r["rr_p99_us"].as_f64().unwrap() - 0.9).abs() < 1e-9, "{r:?}");
        assert!(!r.contains_key("cpu_s_per_gb"), "{r:?}");
        assert_eq!(r.len(), FIGURES.len() - 1);
    }

    #[test]
    fn targets_are_judged_against_the_ceiling_the_kernel_and_ovs() {
        let mut ours = path(0.96, 0.02);
        // Latency: lower is better, so 1.2x the ceiling's misses its target.
        ours.rr_p50_us = vec![36.0; 3];
        ours.tcp_4_gbps = vec![36.0; 3]; // 0.9x the ceiling's 40
        let mut bridge = path(1.0, 0.02);
        bridge.tcp_1_gbps = vec![18.0; 3];
        let mut kernel = path(1.0, 0.02);
        kernel.tcp_1_gbps = vec![22.0; 3];
        let mut ovs = path(0.5, 0.02);
        ovs.cpu_s_per_gb = vec![0.4; 3];
        let results = Results {
            paths: named(vec![
                ("linux_bridge", bridge),
                ("kernel_routed", kernel),
                ("vswitchd", ours),
                ("tap_bounce", path(1.0, 0.02)),
                ("ovs_netdev", ovs),
            ]),
            cross_node: Vec::new(),
        };
        let t = targets(&results);
        assert_eq!(target(&t, "TCP x1 vs tap_bounce").met, Some(true));
        assert_eq!(target(&t, "TCP x4 vs tap_bounce").met, Some(false));
        assert!((target(&t, "TCP x4 vs tap_bounce").value - 0.9).abs() < 1e-9);
        assert_eq!(target(&t, "UDP 64B vs tap_bounce").met, Some(true));
        assert_eq!(target(&t, "RR p50 vs tap_bounce").met, Some(false));
        assert_eq!(target(&t, "RR p99 vs tap_bounce").met, Some(true), "0.96x is faster than the ceiling");
        // The better kernel path is kernel_routed (22 Gbit/s): 19.2 / 22 < 0.9.
        let kernel = target(&t, "TCP x1 vs kernel_routed");
        assert!((kernel.value - 19.2 / 22.0).abs() < 1e-9, "{kernel:?}");
        assert_eq!(kernel.met, Some(false));
        assert!(!t.iter().any(|t| t.what.starts_with("TCP x1 vs linux_bridge")), "{t:?}");
        // 0.192 CPU s/GB against Open vSwitch's 0.4: 0.48x.
        assert_eq!(target(&t, "CPU s/GB vs ovs_netdev").met, Some(true));
        assert_eq!(target(&t, "UDP GSO vs linux_bridge").met, Some(true));
        assert_eq!(target(&t, "UDP GSO vs ovs_netdev").met, Some(true), "0.96 / 0.5 = 1.92x");
        assert_eq!(t.len(), 9, "{t:?}");
        assert!(targets_text(&results).contains("NOT met"));
    }

    #[test]
    fn a_target_depending_on_a_noisy_figure_is_not_judged() {
        let mut ceiling = path(1.0, 0.02);
        ceiling.tcp_1_gbps = vec![15.0, 20.0, 25.0];
        let results = Results {
            paths: named(vec![("vswitchd", path(0.5, 0.02)), ("tap_bounce", ceiling)]),
            cross_node: Vec::new(),
        };
        let t = targets(&results);
        // Far below target, yet the ceiling's own spread (50%) says nothing can be concluded.
        assert_eq!(target(&t, "TCP x1 vs tap_bounce").met, None);
        assert_eq!(target(&t, "TCP x4 vs tap_bounce").met, Some(false), "its inputs are steady");
        assert!(targets_text(&results).contains("noisy, not judged"));
        let json = to_json(&results, &options(false));
        let judged: Vec<&Value> = json["targets"].as_array().unwrap().iter().collect();
        let tcp1 = judged.iter().find(|t| t["target"].as_str().unwrap().starts_with("TCP x1")).unwrap();
        assert!(tcp1["met"].is_null() && tcp1["noisy"] == true, "{tcp1}");
        assert_eq!(json["paths"]["tap_bounce"]["noisy"], json!(["tcp_1_gbps"]));
        assert!(json["paths"]["tap_bounce"]["spread_pct"]["tcp_1_gbps"].as_f64().unwrap() == 50.0);
        assert!(table(&results).contains("±50%~"), "{}", table(&results));
    }

    #[test]
    fn cross_node_targets_compare_each_vswitchd_mode_with_the_kernel() {
        let mut uplink = path(1.0, 0.02);
        uplink.tcp_1_gbps = vec![17.0; 3];
        let results = Results {
            paths: Vec::new(),
            cross_node: named(vec![
                ("kernel_routed", path(1.0, 0.02)),
                ("vswitchd_host_routed", path(0.95, 0.02)),
                ("vswitchd_uplink", uplink),
            ]),
        };
        let t = targets(&results);
        assert_eq!(t.len(), 2, "{t:?}");
        assert_eq!(target(&t, "across nodes: vswitchd_host_routed TCP x1 vs kernel_routed").met, Some(true));
        let uplink = target(&t, "across nodes: vswitchd_uplink TCP x1 vs kernel_routed");
        assert_eq!(uplink.met, Some(false), "17 / 20 = 0.85x");
        let text = table(&results);
        assert!(text.contains("across nodes (IPv4"), "{text}");
        assert!(text.contains("vswitchd_uplink"), "{text}");
    }

    #[test]
    fn json_keeps_every_key_and_adds_ceiling_and_cross_node_ratios() {
        let results = Results {
            paths: named(vec![
                ("linux_bridge", path(1.0, 0.02)),
                ("vswitchd", path(0.8, 0.02)),
                ("tap_bounce", path(1.0, 0.02)),
            ]),
            cross_node: named(vec![("kernel_routed", path(1.0, 0.02)), ("vswitchd_uplink", path(0.5, 0.02))]),
        };
        let json = to_json(&results, &options(true));
        for key in ["repetitions", "seconds", "vswitchd_workers", "udp64_flows", "paths", "targets", "ip_family"] {
            assert!(json.get(key).is_some(), "{key} missing: {json}");
        }
        let ours = &json["paths"]["vswitchd"];
        for key in FIGURES.iter().map(|m| m.key).chain(["udp64_sent_pps", "samples", "noisy", "spread_pct"]) {
            assert!(ours.get(key).is_some(), "paths.vswitchd.{key} missing: {ours}");
        }
        assert_eq!(ours["samples"]["udp_gso_gbps"].as_array().unwrap().len(), 3);
        assert!((ours["vs_tap_bounce"]["udp_gso_gbps"].as_f64().unwrap() - 0.8).abs() < 1e-9, "{ours}");
        assert!(json["paths"]["linux_bridge"].get("vs_tap_bounce").is_none(), "only vswitchd is compared");
        let uplink = &json["cross_node"]["paths"]["vswitchd_uplink"];
        assert!((uplink["vs_kernel_routed"]["tcp_1_gbps"].as_f64().unwrap() - 0.5).abs() < 1e-9, "{json}");
        assert_eq!(json["cross_node"]["ip_family"], "ipv4");
        assert!(to_json(&results, &options(false))["cross_node"].is_null());
        let text = table(&results);
        assert!(text.contains("vswitchd / tap_bounce (the ceiling): TCP x1 0.80x"), "{text}");
    }
}
