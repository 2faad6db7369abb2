//! vswitchd's `/metrics` as Prometheus' own tools take it: promtool finds nothing to report in
//! the classic format (the one it reads), and Debian's Prometheus, scraping a lab node, stores the per-port
//! and drop counters with the pod's namespace and name. Needs root (the lab), promtool and
//! prometheus (tests/install-deps.sh installs them).

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use vpc_lab::lab::{Lab, LabSpec, POD_NAMESPACE};
use vpc_lab::netns::{require_root, Netns};

/// vswitchd's metrics address inside a lab node's namespace.
const METRICS: &str = "127.0.0.1:9477";

fn require(tool: &str) {
    let found =
        Command::new("sh").args(["-c", &format!("command -v {tool}")]).output().is_ok_and(|o| o.status.success());
    assert!(found, "{tool} is not installed: run tests/install-deps.sh (Debian's prometheus package)");
}

/// `GET url` with curl inside `ns`, with `accept` as the Accept header: (content type, body).
fn get(ns: &Netns, url: &str, accept: &str) -> (String, String) {
    let out = ns.exec(&[
        "curl",
        "-sS",
        "--max-time",
        "5",
        "-H",
        &format!("Accept: {accept}"),
        "-w",
        "\n%{content_type}",
        url,
    ]);
    assert!(out.status.success(), "GET {url}: {}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let (body, content_type) = text.rsplit_once('\n').expect("curl wrote the content type last");
    (content_type.to_string(), body.to_string())
}

/// What `promtool check metrics` says about `text` (empty when it finds nothing), and whether
/// it passed.
fn promtool_check(text: &str) -> (bool, String) {
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool runs");
    child.stdin.take().expect("stdin").write_all(text.as_bytes()).expect("promtool reads the metrics");
    let out = child.wait_with_output().expect("promtool finishes");
    (out.status.success(), String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr))
}

#[test]
fn promtool_and_a_real_prometheus_take_the_metrics_with_pod_labels() {
    require_root();
    require("promtool");
    require("prometheus");
    let lab = Lab::up(LabSpec { nodes: 2, ..LabSpec::default() }, |_| {});
    let node = lab.node_ns(0);
    // Traffic through the first pod, so its counters move.
    let pod = &lab.pods[0];
    let peer = &lab.pods[1];
    lab.ping(&pod.netns, peer.ip4()).unwrap_or_else(|e| panic!("ping {} -> {}: {e}", pod.name, peer.name));

    let url = format!("http://{METRICS}/metrics");
    let (classic_type, classic) = get(node, &url, "text/plain;version=0.0.4");
    assert!(classic_type.starts_with("text/plain; version=0.0.4"), "{classic_type}");
    assert!(!classic.contains("# EOF"), "the classic format has no EOF marker");
    let (ok, problems) = promtool_check(&classic);
    assert!(ok && problems.trim().is_empty(), "promtool on the classic format:\n{problems}");
    let (om_type, openmetrics) = get(node, &url, "application/openmetrics-text;version=1.0.0");
    assert!(om_type.starts_with("application/openmetrics-text"), "{om_type}");
    assert!(openmetrics.trim_end().ends_with("# EOF"), "OpenMetrics ends with # EOF");
    // promtool's `check metrics` reads the classic format only: on OpenMetrics it reports every
    // counter as lacking help (the family is `x`, its samples `x_total`). The OpenMetrics form is
    // judged by the parser that reads it, Prometheus' own, below: its scrapes ask for it.
    let (ok, problems) = promtool_check(&openmetrics);
    assert!(problems.contains("no help text"), "promtool learned OpenMetrics ({ok}): check it here too:\n{problems}");

    // Prometheus in the node's namespace, scraping its vswitchd every second.
    let dir = tempfile::tempdir().expect("temp dir");
    let config = dir.path().join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\nscrape_configs:\n  - job_name: vswitchd\n    \
             static_configs:\n      - targets: ['{METRICS}']\n"
        ),
    )
    .expect("write the scrape config");
    let listen = "127.0.0.1:9490";
    let mut prometheus = node.spawn(&[
        "prometheus",
        &format!("--config.file={}", config.display()),
        &format!("--storage.tsdb.path={}", dir.path().join("data").display()),
        &format!("--web.listen-address={listen}"),
    ]);
    let query = |q: &str| -> Vec<Value> {
        let out = node.exec(&[
            "curl",
            "-sS",
            "--max-time",
            "5",
            "-G",
            &format!("http://{listen}/api/v1/query"),
            "--data-urlencode",
            &format!("query={q}"),
        ]);
        let reply: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
        reply["data"]["result"].as_array().cloned().unwrap_or_default()
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    let wanted = format!("vswitch_port_rx_packets_total{{namespace=\"{POD_NAMESPACE}\",pod=\"{}\"}}", pod.name);
    let series = loop {
        let series = query(&wanted);
        if !series.is_empty() || Instant::now() > deadline {
            break series;
        }
        std::thread::sleep(Duration::from_millis(500));
    };
    let drops = query("vswitch_drops_total");
    let up = query("up{job=\"vswitchd\"}");
    let _ = prometheus.kill();
    let log = prometheus.wait_with_output().map(|o| String::from_utf8_lossy(&o.stderr).to_string()).unwrap_or_default();
    assert_eq!(series.len(), 1, "Prometheus has no {wanted} series after 60 s; up: {up:?}\nits log:\n{log}");
    let packets: f64 = series[0]["value"][1].as_str().and_then(|v| v.parse().ok()).unwrap_or(0.0);
    assert!(packets > 0.0, "the pod's received packets as Prometheus stored them: {series:?}");
    assert!(!drops.is_empty(), "Prometheus stored no vswitch_drops_total series");
    assert_eq!(up.first().map(|s| s["value"][1].clone()), Some(Value::from("1")), "the scrape target is up: {up:?}");
}
