//! `vpc-bench e2e`: pod-to-pod forwarding, side by side. For every path of [`topology::PATHS`]
//! it measures iperf3 TCP with 1 and 4 streams, the 64-byte UDP forwarding rate, UDP GSO
//! throughput, UDP request-response latency, and (for the userspace switches) CPU seconds per GB
//! and per million packets; several repetitions, interleaved across paths so machine noise hits
//! all alike. `--ip-family ipv6` runs the same paths and measurements over IPv6 (see
//! [`topology`]); `--cross-node` adds the paths of [`topology::CROSS_PATHS`], between pods on
//! two nodes, to the same repetitions.

pub mod measure;
pub mod report;
pub mod topology;

use vpc_lab::netns::try_run;

pub use report::{chart, family_text, report_dir, table, targets, targets_text, to_json, udp_frame_bytes};
pub use topology::{CROSS_PATHS, PATHS};

/// The address family the pods talk over.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum IpFamily {
    #[default]
    Ipv4,
    Ipv6,
}

impl IpFamily {
    pub fn name(self) -> &'static str {
        match self {
            IpFamily::Ipv4 => "ipv4",
            IpFamily::Ipv6 => "ipv6",
        }
    }
}

impl std::fmt::Display for IpFamily {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// What to run.
#[derive(Debug, Clone)]
pub struct Options {
    pub reps: usize,
    /// Length of each iperf3 run and each flood.
    pub seconds: u32,
    /// vswitchd's forwarding threads.
    pub workers: usize,
    /// UDP flows (source ports) of the 64-byte flood.
    pub flows: u16,
    /// Round trips per latency sample.
    pub round_trips: u32,
    pub paths: Vec<String>,
    pub family: IpFamily,
    /// Also measure [`CROSS_PATHS`] (IPv4).
    pub cross_node: bool,
}

/// Every sample of one path.
#[derive(Debug, Clone, Default)]
pub struct PathResult {
    pub tcp_1_gbps: Vec<f64>,
    pub tcp_4_gbps: Vec<f64>,
    pub udp64_pps: Vec<f64>,
    pub udp64_sent_pps: Vec<f64>,
    /// Per flood: frames delivered in the measured window, frames sent in all.
    pub udp64_delivered_sent: Vec<(u64, u64)>,
    /// UDP GSO payload received (Gbit/s).
    pub udp_gso_gbps: Vec<f64>,
    /// Per UDP GSO run: payload bytes B received in its window, bytes A sent in all.
    pub udp_gso_received_sent: Vec<(u64, u64)>,
    pub rr_p50_us: Vec<f64>,
    pub rr_p99_us: Vec<f64>,
    /// The forwarding process's CPU seconds per GB received (single-stream TCP runs).
    pub cpu_s_per_gb: Vec<f64>,
    /// ... and per million 64-byte packets delivered.
    pub cpu_s_per_mpkt: Vec<f64>,
    /// What bounds throughput on a machine whose cores are all busy: CPU seconds the whole
    /// machine (sender, receiver, kernel and switch) spends per GB moved, TCP x4 and UDP GSO...
    pub tcp_4_machine_s_per_gb: Vec<f64>,
    pub udp_gso_machine_s_per_gb: Vec<f64>,
    /// ... and the forwarding process's share of it in the UDP GSO runs.
    pub udp_gso_cpu_s_per_gb: Vec<f64>,
}

pub fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    if s.is_empty() {
        f64::NAN
    } else {
        s[s.len() / 2]
    }
}

/// Every path measured, by name, in the order of the report.
pub type PathResults = Vec<(String, PathResult)>;

/// What a run measured: the same-node paths, and the cross-node ones when asked for.
#[derive(Debug, Clone, Default)]
pub struct Results {
    pub paths: PathResults,
    /// Empty unless [`Options::cross_node`].
    pub cross_node: PathResults,
}

/// The paths of one scope (same node or across nodes) still measured, and how to build them.
struct Scope<B> {
    label: &'static str,
    results: PathResults,
    missing: Vec<String>,
    build: B,
}

impl<B: Fn(&str) -> Option<topology::Topology>> Scope<B> {
    fn new(label: &'static str, names: &[String], build: B) -> Self {
        Scope {
            label,
            results: names.iter().map(|p| (p.clone(), PathResult::default())).collect(),
            missing: Vec::new(),
            build,
        }
    }

    /// One repetition of every path still measured. A path whose software is missing, or whose
    /// set-up fails (a vswitchd refusing its configuration), is left out from then on; what it
    /// had made is removed as the failure unwinds.
    fn measure(&mut self, options: &Options, rep: usize, progress: &mut impl FnMut(&str)) {
        for (name, result) in self.results.iter_mut() {
            if self.missing.contains(name) {
                continue;
            }
            progress(&format!("repetition {}/{}: {}{name}", rep + 1, options.reps, self.label));
            let built = catch_quietly(|| (self.build)(name));
            let Ok(Some(t)) = built else {
                if built.is_err() {
                    progress(&format!("{}{name}: not measured, its set-up failed (see above)", self.label));
                }
                self.missing.push(name.clone());
                continue;
            };
            warm(&t);
            measure_once(&t, options, result);
        }
    }

    fn finish(mut self) -> PathResults {
        self.results.retain(|(name, _)| !self.missing.contains(name));
        self.results
    }
}

/// Runs `f`, turning a panic into an Err after printing its message (without the backtrace
/// RUST_BACKTRACE may ask for: a path that fails to set up is reported, not debugged).
fn catch_quietly<T>(f: impl FnOnce() -> T) -> std::thread::Result<T> {
    let hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(|info| eprintln!("  {info}")));
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f));
    std::panic::set_hook(hook);
    result
}

/// Measures every path `reps` times (the cross-node ones too, in the same repetitions, when
/// asked); paths whose software is missing are left out.
pub fn run(options: &Options, mut progress: impl FnMut(&str)) -> Results {
    let mut same = Scope::new("", &options.paths, |name| topology::build(name, options.workers, options.family));
    let cross_names: Vec<String> =
        if options.cross_node { CROSS_PATHS.iter().map(|p| p.to_string()).collect() } else { Vec::new() };
    let mut cross = Scope::new("across nodes, ", &cross_names, |name| topology::build_cross(name, options.workers));
    for rep in 0..options.reps {
        same.measure(options, rep, &mut progress);
        cross.measure(options, rep, &mut progress);
    }
    Results { paths: same.finish(), cross_node: cross.finish() }
}

/// Warms the path (ARP or neighbour discovery, proxy-ARP, MAC learning) before timing anything.
/// Over IPv6 it also waits out addresses still in duplicate address detection (the kernel's own
/// link-local ones) by pinging until B answers, for up to 5 s.
pub fn warm(t: &topology::Topology) {
    let ping = || {
        try_run(&["ip", "netns", "exec", &t.a, "ping", "-c", "2", "-i", "0.2", "-W", "1", &t.b_ip.to_string()])
            .status
            .success()
    };
    if t.b_ip.is_ipv6() {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while !ping() && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(200));
        }
    } else {
        ping();
    }
}

fn measure_once(t: &topology::Topology, options: &Options, result: &mut PathResult) {
    if let Some(tcp) = measure::iperf3(t, 1, options.seconds) {
        result.tcp_1_gbps.push(tcp.gbps);
        if let Some(cpu) = tcp.cpu_s {
            result.cpu_s_per_gb.push(cpu / (tcp.bytes / 1e9));
        }
    }
    if let Some(tcp) = measure::iperf3(t, 4, options.seconds) {
        result.tcp_4_gbps.push(tcp.gbps);
        result.tcp_4_machine_s_per_gb.extend(tcp.load.machine_s.map(|s| s / (tcp.bytes / 1e9)));
    }
    if let Some(flood) = measure::udp64(t, options.seconds, options.flows) {
        result.udp64_pps.push(flood.delivered_pps);
        result.udp64_sent_pps.push(flood.sent_pps);
        result.udp64_delivered_sent.push((flood.delivered, flood.sent));
        if let (Some(cpu), true) = (flood.cpu_s, flood.delivered > 0) {
            result.cpu_s_per_mpkt.push(cpu / (flood.delivered as f64 / 1e6));
        }
    }
    if let Some(gso) = measure::udp_gso(t, options.seconds) {
        result.udp_gso_gbps.push(gso.gbps);
        result.udp_gso_received_sent.push((gso.received_bytes, gso.sent_bytes));
        result.udp_gso_machine_s_per_gb.extend(gso.load.per_gb(gso.load.machine_s, gso.gbps));
        result.udp_gso_cpu_s_per_gb.extend(gso.load.per_gb(gso.load.forwarder_s, gso.gbps));
    }
    if let Some((p50, p99)) = measure::rr(t, options.round_trips) {
        result.rr_p50_us.push(p50);
        result.rr_p99_us.push(p99);
    }
}
