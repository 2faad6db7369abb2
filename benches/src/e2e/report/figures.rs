//! The figures a path has (the shared type of every output format), their spread and noise.
//!
//! The spread of a figure is (max - min) / median over its repetitions, in percent; a figure
//! spread over [`NOISY_PCT`] is noisy, marked `~` in the tables and listed in the JSON, and a
//! target that depends on one is not judged.

use crate::e2e::{median, PathResult};

/// Spread (percent) past which a figure is noisy.
pub const NOISY_PCT: f64 = 15.0;

/// The smallest and largest sample.
pub(super) fn range(v: &[f64]) -> (f64, f64) {
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

/// The results of the path called `name`, if it was measured.
pub(super) fn find<'a>(results: &'a [(String, PathResult)], name: &str) -> Option<&'a PathResult> {
    results.iter().find(|(n, _)| n == name).map(|(_, r)| r)
}

/// One figure of a path: a column of the tables, a panel of the chart, a key of the JSON.
#[derive(Debug)]
pub struct Metric {
    /// Its key in the JSON.
    pub key: &'static str,
    /// Short, for targets and ratio lines.
    pub name: &'static str,
    unit: &'static str,
    pub(super) panel: &'static str,
    samples: fn(&PathResult) -> &Vec<f64>,
    /// Applied for display (packets/s shown as Mpps).
    scale: f64,
}

impl Metric {
    pub fn samples<'a>(&self, r: &'a PathResult) -> &'a [f64] {
        (self.samples)(r)
    }

    pub(super) fn scaled(&self, r: &PathResult) -> Vec<f64> {
        self.samples(r).iter().map(|x| x * self.scale).collect()
    }

    pub(super) fn column(&self) -> String {
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
pub(super) const COST: [&Metric; 3] = [&MACHINE_TCP_4, &MACHINE_GSO, &CPU_GSO];

/// The tables' columns and the chart's panels: throughput, then latency.
pub(super) const THROUGHPUT: [&Metric; 4] = [&TCP_1, &TCP_4, &UDP_64, &UDP_GSO];
pub(super) const LATENCY: [&Metric; 2] = [&RR_P50, &RR_P99];
/// Every figure a path has: what spread, noise and ceiling ratios are reported for.
pub const FIGURES: [&Metric; 11] =
    [&TCP_1, &TCP_4, &UDP_64, &UDP_GSO, &RR_P50, &RR_P99, &CPU_GB, &CPU_MPKT, &MACHINE_TCP_4, &MACHINE_GSO, &CPU_GSO];

/// The JSON keys of `r`'s noisy figures.
pub fn noisy(r: &PathResult) -> Vec<&'static str> {
    FIGURES.iter().filter(|m| is_noisy(m.samples(r))).map(|m| m.key).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::e2e::report::fixtures::path;

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
}
