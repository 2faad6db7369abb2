//! What `vpc-bench e2e` prints and writes, one module per output format: terminal tables
//! ([`table`]), JSON ([`to_json`]), the markdown report and SVG chart ([`report_dir`]), over the
//! figures of [`figures`]; the targets judged from the same run are [`targets`]'s.

mod figures;
#[cfg(test)]
mod fixtures;
mod json;
mod markdown;
mod svg;
mod table;
mod targets;

use std::path::Path;

pub use figures::{
    is_noisy, noisy, spread_pct, Metric, CPU_GB, CPU_GSO, CPU_MPKT, FIGURES, MACHINE_GSO, MACHINE_TCP_4, NOISY_PCT,
    RR_P50, RR_P99, TCP_1, TCP_4, UDP_64, UDP_GSO,
};
pub use json::{ratios, to_json};
pub use markdown::markdown;
pub use svg::chart;
pub use table::table;
pub use targets::{targets, targets_text, Target};

use super::{IpFamily, Options, Results};
use crate::udp_flood::{FRAME_LEN, FRAME_LEN_V6};

/// The chart's file name in the report directory (the markdown links it).
const CHART_FILE: &str = "chart.svg";

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

/// Writes `report.md`, `chart.svg` and `report.json` into `out`.
pub fn report_dir(out: &Path, results: &Results, options: &Options, command: &str) -> std::io::Result<()> {
    std::fs::create_dir_all(out)?;
    std::fs::write(out.join("report.md"), markdown(results, options, command))?;
    std::fs::write(out.join(CHART_FILE), chart(results))?;
    std::fs::write(out.join("report.json"), serde_json::to_vec_pretty(&to_json(results, options))?)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::fixtures::{named, options, path};
    use super::*;
    use crate::e2e::PathResult;

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
}
