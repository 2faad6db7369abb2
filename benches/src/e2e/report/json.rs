//! The report as JSON (`--json`, `report.json`): every figure's median, spread and samples per
//! path, vswitchd's ratios to its ceiling (and across nodes to the kernel's router), the targets.

use serde_json::{json, Map, Value};

use super::figures::{find, noisy, spread_pct, FIGURES, NOISY_PCT};
use super::targets::{targets, CROSS_VSWITCHD};
use super::udp_frame_bytes;
use crate::e2e::{median, Options, PathResult, Results};

/// A median, or null when there is no sample.
fn number(v: &[f64]) -> Value {
    let m = median(v);
    if m.is_finite() {
        json!(m)
    } else {
        Value::Null
    }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::e2e::report::fixtures::{named, options, path};
    use crate::e2e::report::table;

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
