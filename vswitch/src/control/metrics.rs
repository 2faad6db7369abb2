//! The Prometheus exposition of what the control plane gathered, encoded by `prometheus-client`.
//! Label values that come from outside (port and pod names) are escaped here: the crate (0.23)
//! writes label values as they are, so a `"` or a newline in a name would break the format.
//!
//! Label sets are bounded by what is attached: one series per port (with its pod's namespace and
//! name when it has one) and one per drop reason.

use std::time::Duration;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelValue, EncodeMetric, LabelValueEncoder};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;
use vswitch_api::api::{LinkState, PortCounters, PortRole, PortView};

use crate::ipam::node::IpamMetrics;
use crate::ipam::provider::stats::ApiReport;
use crate::pipeline::DropReason;

/// One scrape's worth of figures, gathered under the registry's lock and encoded without it.
#[derive(Debug)]
pub struct MetricsSnapshot {
    pub ports: Vec<PortView>,
    pub drops: Vec<(DropReason, u64)>,
    pub fib_routes: usize,
    pub fib_memory: usize,
    pub neighbors: usize,
    pub uptime: Duration,
    pub process: ProcessStats,
    /// Bandwidth shaping: frames held back for a pod's ingress limit, and batches a pod's egress
    /// limit stopped reading.
    pub shaping_delayed: u64,
    pub shaping_throttled: u64,
    /// Pod ports removed because their namespace was gone for `gone_port_timeout_seconds`.
    pub gone_ports_removed: u64,
    /// The cluster IPAM's figures, when it is on.
    pub ipam: Option<IpamMetrics>,
    /// Provider mode: the VPC API's calls.
    pub provider_api: Option<ApiReport>,
}

/// The process's own figures, from /proc/self (zero where unreadable).
#[derive(Debug, Default, Clone, Copy, PartialEq)]
pub struct ProcessStats {
    pub resident_bytes: u64,
    pub cpu_seconds: f64,
    pub open_fds: u64,
    pub threads: u64,
}

impl ProcessStats {
    pub fn read() -> ProcessStats {
        // SAFETY: sysconf has no preconditions.
        let (page, ticks) = unsafe { (libc::sysconf(libc::_SC_PAGESIZE), libc::sysconf(libc::_SC_CLK_TCK)) };
        let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
        let resident_pages: u64 = statm.split_whitespace().nth(1).and_then(|v| v.parse().ok()).unwrap_or(0);
        // Fields after the command (which may hold spaces) in /proc/self/stat: utime, stime are
        // the 14th and 15th of the whole line, threads the 20th.
        let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
        let rest: Vec<&str> = stat.rsplit_once(')').map_or(Vec::new(), |(_, r)| r.split_whitespace().collect());
        let field = |n: usize| rest.get(n - 3).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
        ProcessStats {
            resident_bytes: resident_pages * page.max(0) as u64,
            cpu_seconds: (field(14) + field(15)) as f64 / ticks.max(1) as f64,
            open_fds: std::fs::read_dir("/proc/self/fd").map_or(0, |d| d.count() as u64),
            threads: field(20),
        }
    }
}

impl MetricsSnapshot {
    /// The text exposition format.
    pub fn render(self) -> String {
        let mut registry = Registry::default();
        registry.register_collector(Box::new(self));
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &registry).expect("writing to a String");
        out
    }
}

/// A label value escaped as the exposition formats require (`\\`, `\"`, `\n`).
#[derive(Debug)]
struct Escaped(String);

impl Escaped {
    fn new(value: &str) -> Escaped {
        Escaped(value.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n"))
    }
}

impl EncodeLabelValue for Escaped {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
        std::fmt::Write::write_str(encoder, &self.0)
    }
}

fn port_labels(p: &PortView) -> Vec<(&'static str, Escaped)> {
    let role = match p.role {
        PortRole::Pod { .. } => "pod",
        PortRole::Host { .. } => "host",
        PortRole::Uplink { .. } => "uplink",
    };
    let mut labels = vec![("port", Escaped::new(&p.name)), ("role", Escaped::new(role))];
    if let Some(pod) = &p.pod {
        labels.push(("namespace", Escaped::new(&pod.namespace)));
        labels.push(("pod", Escaped::new(&pod.name)));
    }
    labels
}

impl Collector for MetricsSnapshot {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        type Field = fn(&PortCounters) -> u64;
        let port_counters: [(&str, &str, Field); 6] = [
            ("vswitch_port_rx_packets", "Frames received from the port.", |c| c.rx_packets),
            ("vswitch_port_rx_bytes", "Ethernet bytes received from the port (as ip -s link counts).", |c| c.rx_bytes),
            ("vswitch_port_tx_packets", "Frames sent to the port.", |c| c.tx_packets),
            ("vswitch_port_tx_bytes", "Ethernet bytes sent to the port (as ip -s link counts).", |c| c.tx_bytes),
            ("vswitch_port_rx_dropped", "Frames from the port that the switch dropped.", |c| c.rx_dropped),
            (
                "vswitch_port_tx_segmented",
                "UDP GSO frames the switch cut into datagrams because the port could not take them whole.",
                |c| c.tx_segmented,
            ),
        ];
        for (name, help, get) in port_counters {
            let mut family = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
            for p in &self.ports {
                let labels = port_labels(p);
                ConstCounter::new(get(&p.counters)).encode(family.encode_family(&labels)?)?;
            }
        }
        let mut family = encoder.encode_descriptor(
            "vswitch_port_up",
            "1 while the port's device exists; 0 once it vanished without a DEL (gone).",
            None,
            MetricType::Gauge,
        )?;
        for p in &self.ports {
            let labels = port_labels(p);
            ConstGauge::new(i64::from(p.link == LinkState::Up)).encode(family.encode_family(&labels)?)?;
        }
        let mut family =
            encoder.encode_descriptor("vswitch_drops", "Frames dropped, by reason.", None, MetricType::Counter)?;
        for (reason, n) in &self.drops {
            ConstCounter::new(*n).encode(family.encode_family(&[("reason", reason.name())])?)?;
        }
        for (name, help, value) in [
            ("vswitch_shaping_delayed_frames", "Frames held back for a port's ingress limit.", self.shaping_delayed),
            ("vswitch_shaping_throttled_batches", "Reads a port's egress limit held back.", self.shaping_throttled),
            (
                "vswitch_gone_ports_removed",
                "Pod ports removed after their namespace was gone for gone_port_timeout_seconds without a DEL.",
                self.gone_ports_removed,
            ),
        ] {
            ConstCounter::new(value).encode(encoder.encode_descriptor(name, help, None, MetricType::Counter)?)?;
        }
        for (name, help, value) in [
            ("vswitch_fib_routes", "Routes in the FIB.", self.fib_routes as i64),
            ("vswitch_fib_memory_bytes", "Memory of the FIB.", self.fib_memory as i64),
            ("vswitch_neighbors", "Neighbour entries.", self.neighbors as i64),
            ("vswitch_ports", "Attached ports.", self.ports.len() as i64),
            ("vswitch_uptime_seconds", "Seconds since vswitchd started.", self.uptime.as_secs() as i64),
        ] {
            ConstGauge::new(value).encode(encoder.encode_descriptor(name, help, None, MetricType::Gauge)?)?;
        }
        for (name, help, value) in [
            ("process_resident_memory_bytes", "Resident memory.", self.process.resident_bytes as i64),
            ("process_open_fds", "Open file descriptors.", self.process.open_fds as i64),
            ("process_threads", "Threads.", self.process.threads as i64),
        ] {
            ConstGauge::new(value).encode(encoder.encode_descriptor(name, help, None, MetricType::Gauge)?)?;
        }
        ConstCounter::new(self.process.cpu_seconds).encode(encoder.encode_descriptor(
            "process_cpu_seconds",
            "User and system CPU time.",
            None,
            MetricType::Counter,
        )?)?;
        if let Some(ipam) = &self.ipam {
            encode_ipam(ipam, &mut encoder)?;
        }
        if let Some(api) = &self.provider_api {
            encode_provider_api(api, &mut encoder)?;
        }
        let mut family =
            encoder.encode_descriptor("vswitch_build_info", "The running build.", None, MetricType::Gauge)?;
        ConstGauge::new(1i64).encode(family.encode_family(&[("version", env!("CARGO_PKG_VERSION"))])?)?;
        Ok(())
    }
}

/// Provider mode: VPC API calls and their latency, by action and result.
fn encode_provider_api(api: &ApiReport, encoder: &mut DescriptorEncoder) -> Result<(), std::fmt::Error> {
    let mut family = encoder.encode_descriptor(
        "vswitch_ipam_provider_api_calls",
        "VPC API calls by action and result (ok, throttled, unavailable, subnet_full, address_gone, quota, auth, nic_absent, other).",
        None,
        MetricType::Counter,
    )?;
    for (action, result, c) in &api.calls {
        ConstCounter::new(c.calls)
            .encode(family.encode_family(&[("action", action.as_str()), ("result", result.as_str())])?)?;
    }
    let mut family = encoder.encode_descriptor(
        "vswitch_ipam_provider_api_seconds",
        "Time spent in VPC API calls, by action and result.",
        None,
        MetricType::Counter,
    )?;
    for (action, result, c) in &api.calls {
        ConstCounter::new(c.seconds)
            .encode(family.encode_family(&[("action", action.as_str()), ("result", result.as_str())])?)?;
    }
    // The time from an address's allocation to the fabric delivering it (the ARP probe).
    let probe = &api.fabric_probe;
    if probe.count > 0 {
        encoder
            .encode_descriptor(
                "vswitch_ipam_provider_fabric_probe_seconds",
                "From a new secondary IP's allocation to the fabric delivering it (the ARP probe; a timed-out probe counts its timeout).",
                None,
                MetricType::Histogram,
            )?
            .encode_histogram::<prometheus_client::encoding::NoLabelSet>(
                probe.sum_seconds,
                probe.count,
                &probe.buckets,
                None,
            )?;
    }
    let up = i64::from(api.healthy != Some(false));
    ConstGauge::new(up).encode(encoder.encode_descriptor(
        "vswitch_ipam_provider_api_up",
        "1 when the last VPC API call reached the API.",
        None,
        MetricType::Gauge,
    )?)?;
    Ok(())
}

fn encode_ipam(ipam: &IpamMetrics, encoder: &mut DescriptorEncoder) -> Result<(), std::fmt::Error> {
    let mut family = encoder.encode_descriptor(
        "vswitch_ipam_node_addresses",
        "Addresses this node holds, by family and state (warm: claimed ahead of ADDs; pending: not yet written to the store).",
        None,
        MetricType::Gauge,
    )?;
    for f in &ipam.families {
        for (state, n) in [("warm", f.warm), ("assigned", f.assigned), ("pending", f.pending)] {
            ConstGauge::new(n as i64)
                .encode(family.encode_family(&[("family", f.family.name()), ("state", state)])?)?;
        }
    }
    // Float gauges: an IPv6 /64 holds 2^64 addresses, more than an integer gauge counts.
    let mut family = encoder.encode_descriptor(
        "vswitch_ipam_pool_addresses",
        "Usable addresses in the cluster's pool, by family (exclusions applied).",
        None,
        MetricType::Gauge,
    )?;
    for f in &ipam.families {
        ConstGauge::new(f.pool_size as f64).encode(family.encode_family(&[("family", f.family.name())])?)?;
    }
    let mut family = encoder.encode_descriptor(
        "vswitch_ipam_address_info",
        "1 for each address a pod on this node holds.",
        None,
        MetricType::Gauge,
    )?;
    for (ip, pod) in &ipam.addresses {
        let ip_family = if ip.is_ipv6() { "ipv6" } else { "ipv4" };
        let mut labels = vec![("ip", Escaped::new(&ip.to_string())), ("family", Escaped::new(ip_family))];
        if let Some(pod) = pod {
            labels.push(("namespace", Escaped::new(&pod.namespace)));
            labels.push(("pod", Escaped::new(&pod.name)));
        }
        ConstGauge::new(1i64).encode(family.encode_family(&labels)?)?;
    }
    for (name, help, value) in [
        ("vswitch_ipam_store_up", "1 while the address store answers.", i64::from(ipam.store_up)),
        ("vswitch_ipam_warm_target", "Warm addresses the node keeps claimed.", ipam.local.warm_target as i64),
        (
            "vswitch_ipam_self_fenced",
            "1 while the lease has gone unrenewed too long to hand out warm addresses safely.",
            i64::from(ipam.self_fenced),
        ),
    ] {
        ConstGauge::new(value).encode(encoder.encode_descriptor(name, help, None, MetricType::Gauge)?)?;
    }
    let mut family = encoder.encode_descriptor(
        "vswitch_ipam_assignments",
        "Addresses handed to pods, by where they came from (warm: the local pool; store: a round trip).",
        None,
        MetricType::Counter,
    )?;
    for (from, n) in [("warm", ipam.assigned_from_warm), ("store", ipam.assigned_from_store)] {
        ConstCounter::new(n).encode(family.encode_family(&[("from", from)])?)?;
    }
    for (name, help, value) in [
        ("vswitch_ipam_store_errors", "Upkeep rounds that could not reach the store.", ipam.store_errors),
        (
            "vswitch_ipam_fenced",
            "Addresses this node lost while cut off from the store (their pods were detached).",
            ipam.local.fenced_total,
        ),
        ("vswitch_ipam_reclaimed", "Addresses of dead nodes this node returned to the pool.", ipam.reclaimed),
        (
            "vswitch_ipam_refused_unavailable",
            "ADDs refused because the warm pool was empty and the store unreachable.",
            ipam.refused_unavailable,
        ),
    ] {
        ConstCounter::new(value).encode(encoder.encode_descriptor(name, help, None, MetricType::Counter)?)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use vswitch_api::api::PodRef;
    use vswitch_api::MacAddr;

    #[test]
    fn label_values_are_escaped_and_every_family_is_there() {
        let port = PortView {
            id: 1,
            name: "evil\"}\nname".into(),
            role: PortRole::Pod {
                ip: Some("10.0.0.2".parse().unwrap()),
                ipv6: None,
                mac: MacAddr::local_from([10, 0, 0, 2]),
            },
            mtu: 1500,
            netns: None,
            ifname: "eth0".into(),
            pod: Some(PodRef { namespace: "default".into(), name: "web-0".into() }),
            bandwidth: None,
            link: LinkState::Gone,
            counters: PortCounters { rx_packets: 7, tx_segmented: 3, ..Default::default() },
        };
        let text = MetricsSnapshot {
            ports: vec![port],
            drops: vec![(DropReason::ALL[0], 5)],
            fib_routes: 3,
            fib_memory: 1024,
            neighbors: 0,
            uptime: Duration::from_secs(9),
            process: ProcessStats::read(),
            shaping_delayed: 4,
            shaping_throttled: 0,
            gone_ports_removed: 2,
            ipam: None,
            provider_api: Some(ApiReport {
                calls: vec![(
                    "AllocateSecondaryIp".into(),
                    "subnet_full".into(),
                    crate::ipam::provider::stats::CallCount { calls: 2, seconds: 0.5 },
                )],
                last_errors: vec![],
                healthy: Some(true),
                fabric_probe: {
                    let stats = crate::ipam::provider::probe::ProbeStats::default();
                    stats.record("10.10.64.7".parse().unwrap(), Duration::from_millis(2900), &Ok(()));
                    stats.report()
                },
            }),
        }
        .render();
        assert!(
            text.contains(
                r#"vswitch_ipam_provider_api_calls_total{action="AllocateSecondaryIp",result="subnet_full"} 2"#
            ),
            "{text}"
        );
        assert!(text.contains("vswitch_gone_ports_removed_total 2"), "{text}");
        assert!(text.contains("# TYPE vswitch_ipam_provider_fabric_probe_seconds histogram"), "{text}");
        assert!(text.contains(r#"vswitch_ipam_provider_fabric_probe_seconds_bucket{le="2.0"} 0"#), "{text}");
        assert!(text.contains(r#"vswitch_ipam_provider_fabric_probe_seconds_bucket{le="3.0"} 1"#), "{text}");
        assert!(text.contains("vswitch_ipam_provider_fabric_probe_seconds_count 1"), "{text}");
        assert!(text.contains(r#"port="evil\"}\nname""#), "{text}");
        assert!(!text.contains("evil\"}\nname\""), "a raw newline in a label breaks the format");
        assert!(text.contains(r#"namespace="default",pod="web-0"} 7"#), "{text}");
        assert!(text.contains(&format!("vswitch_drops_total{{reason=\"{}\"}} 5", DropReason::ALL[0].name())), "{text}");
        assert!(text.contains("vswitch_port_up{") && text.contains("} 0\n"), "{text}");
        assert!(text.contains("vswitch_fib_routes 3"));
        assert!(text.contains("vswitch_shaping_delayed_frames_total 4"), "{text}");
        let segmented = text.lines().find(|l| l.starts_with("vswitch_port_tx_segmented_total{")).expect(&text);
        assert!(segmented.ends_with(r#"pod="web-0"} 3"#), "{segmented}");
        assert!(text.contains("process_cpu_seconds_total ") && text.contains("process_open_fds "), "{text}");
        assert!(ProcessStats::read().resident_bytes > 0 && ProcessStats::read().threads >= 1);
        assert!(text.ends_with("# EOF\n"));
    }
}
