//! The report as terminal tables: median [min-max] ±spread and the ratio to a baseline per
//! path and figure, vswitchd against its ceiling, the CPU costs, the cross-node tables.

use super::figures::{find, is_noisy, range, spread_pct, Metric, COST, FIGURES, LATENCY, NOISY_PCT, THROUGHPUT};
use crate::e2e::{median, PathResult, Results};

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
