//! vpc-bench: measurements that need the real system (root, namespaces, real plugins), printed
//! side by side with their baselines from the same run.

use clap::{Args, Parser, Subcommand};

#[derive(Parser)]
#[command(name = "vpc-bench", version, about = "End-to-end benchmarks of vswitchd and vpc-cni against their baselines")]
struct Cli {
    /// Print one JSON object instead of a table.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Bench,
}

/// How long and how often the forwarding measurements run, and on how many vswitchd threads.
#[derive(Args)]
struct Runs {
    #[arg(long, default_value_t = 3)]
    reps: usize,
    /// Length of each iperf3 run and each 64-byte flood.
    #[arg(long, default_value_t = 5)]
    seconds: u32,
    /// vswitchd forwarding threads.
    #[arg(long, default_value_t = 2)]
    workers: usize,
    /// UDP flows (source ports) in the 64-byte flood.
    #[arg(long, default_value_t = 8)]
    flows: u16,
}

#[derive(Subcommand)]
enum Bench {
    /// ADD and DEL latency of vpc-cni next to the reference bridge + host-local plugins.
    Cni {
        #[arg(long, default_value_t = 200)]
        pods: usize,
    },
    /// Address allocation: vswitchd's cluster IPAM on a 3-member etcd cluster, vpc-cni's
    /// node-local store and the reference host-local, in one run on the lab's nodes (ADD and
    /// DEL latency, allocations per second with ADDs racing on every node, and an audit of every
    /// address against etcd and the nodes' ports).
    Ipam {
        #[arg(long, default_value_t = 3)]
        nodes: usize,
        /// Pods per backend and phase.
        #[arg(long, default_value_t = 300)]
        pods: usize,
        /// Instead: VPC providers' APIs (comma-separated; each on its lab VPC) against the etcd
        /// mode, in one run and one table.
        #[arg(long, value_delimiter = ',')]
        provider: Vec<benches::ipam_provider::Provider>,
        /// With --provider: latency the lab's VPC API adds to every call.
        #[arg(long, default_value_t = 50)]
        api_latency_ms: u64,
        /// With --provider ucloud: the lab's VPC API's rate limit (calls per second).
        #[arg(long, default_value_t = 20.0)]
        api_rate: f64,
        /// With --provider aws: the share of calls the lab's EC2 proxy answers
        /// RequestLimitExceeded.
        #[arg(long, default_value_t = 0.05)]
        api_throttle: f64,
    },
    /// The cluster IPAM at Kubernetes' scale: N simulated nodes (the real node agent, no TAPs)
    /// on a fresh 3-member etcd per size, filled to P pods each, churned, one node killed and
    /// one restarted: ADD/DEL latency, etcd's bytes and requests per node (its own /metrics),
    /// database size, memory per agent, reclaim and reconcile times.
    IpamScale {
        /// Cluster sizes, comma-separated: one run each.
        #[arg(long, value_delimiter = ',', default_values_t = [10, 100, 1000, 2000])]
        nodes: Vec<usize>,
        #[arg(long, default_value_t = 30)]
        pods_per_node: usize,
        /// Length of the measured steady state.
        #[arg(long, default_value_t = 30)]
        steady_seconds: u64,
        /// A size not full after this many seconds is reported as such.
        #[arg(long, default_value_t = 180)]
        ramp_limit: u64,
        #[arg(long, default_value_t = 10)]
        lease_ttl: u64,
        #[arg(long, default_value_t = 5)]
        quarantine: u64,
    },
    /// Pod-to-pod forwarding side by side: veth, Linux bridge, kernel-routed, vswitchd, vswitchd
    /// only bouncing frames between the pods' TAPs (tap_bounce, the ceiling), Open vSwitch
    /// netdev (TCP x1/x4, 64-byte UDP rate, UDP GSO throughput, request-response latency, CPU
    /// cost); each figure's median, range and spread, marked noisy past 15%.
    E2e {
        #[command(flatten)]
        runs: Runs,
        /// Round trips per latency sample.
        #[arg(long, default_value_t = 20_000)]
        round_trips: u32,
        /// Comma-separated subset of: veth, linux_bridge, kernel_routed, vswitchd, tap_bounce,
        /// ovs_netdev (empty with --cross-node: only across nodes).
        #[arg(long, value_delimiter = ',', default_values_t = benches::e2e::PATHS.iter().map(|p| p.to_string()))]
        paths: Vec<String>,
        /// Where the markdown report, chart and JSON go.
        #[arg(long, default_value = "vpc-bench-report")]
        out: std::path::PathBuf,
        /// The family the pods talk over: ipv6 gives every path IPv6 addresses (/128 routes and a
        /// link-local gateway on the kernel router) and measures over them; the 64-byte flood
        /// then sends the smallest IPv6/UDP frame, 62 bytes (66 on the wire).
        #[arg(long, value_enum, default_value_t = benches::e2e::IpFamily::Ipv4)]
        ip_family: benches::e2e::IpFamily,
        /// Also measure across nodes, in the same run and repetitions: pod A on node 1, pod B on
        /// node 2, two node namespaces on a fabric bridge, through the kernel's router
        /// (kernel_routed, Calico's wiring), vswitchd host-routed and vswitchd with a dedicated
        /// uplink NIC. Over IPv4 only, whatever --ip-family says.
        #[arg(long)]
        cross_node: bool,
    },
    /// vswitchd with 2 pods against vswitchd with --pods pods (the rest attached through vpc-cni
    /// and idle): 64-byte UDP rate, TCP, resident memory.
    Scale {
        #[arg(long, default_value_t = 250)]
        pods: usize,
        #[command(flatten)]
        runs: Runs,
    },
    /// The kernel's per-packet price of TAP I/O for 64-byte frames (write into a pod, read what a
    /// pod sent): the floor under any TAP-based switch's small-packet rate on this machine.
    TapCost {
        #[arg(long, default_value_t = 4.0)]
        seconds: f64,
    },
    /// (inside a namespace) Send 64-byte UDP frames (62-byte ones to an IPv6 ADDRESS) to ADDRESS
    /// as fast as the path takes them; prints what was sent as JSON.
    UdpFlood {
        address: std::net::SocketAddr,
        #[arg(long, default_value_t = 5)]
        seconds: u32,
        #[arg(long, default_value_t = 8)]
        flows: u16,
    },
    /// (inside a namespace) Send UDP to ADDRESS as fast as the path takes it, in 64400-byte
    /// writes the kernel cuts into 1400-byte datagrams (UDP_SEGMENT); prints what was sent as
    /// JSON.
    UdpGsoSend {
        address: std::net::SocketAddr,
        #[arg(long, default_value_t = 5)]
        seconds: u32,
    },
    /// (inside a namespace) Count UDP payload arriving on PORT (with UDP_GRO) for SECONDS after
    /// the first datagram; prints bytes, datagrams, seconds and Gbit/s as JSON.
    UdpSink {
        #[arg(long)]
        port: u16,
        #[arg(long, default_value_t = 5)]
        seconds: u32,
        /// The address to listen on (`::` for IPv6).
        #[arg(long, default_value = "0.0.0.0")]
        bind: std::net::IpAddr,
    },
    /// (inside a namespace) Echo UDP datagrams.
    RrServer {
        #[arg(long)]
        port: u16,
        /// The address to listen on (`::` for IPv6).
        #[arg(long, default_value = "0.0.0.0")]
        bind: std::net::IpAddr,
    },
    /// (inside a namespace) Request-response round trips; prints p50/p99 in microseconds as JSON.
    RrClient {
        address: std::net::SocketAddr,
        #[arg(long, default_value_t = 20_000)]
        count: u32,
    },
}

fn main() {
    let mut cli = Cli::parse();
    match cli.command {
        Bench::RrServer { port, bind } => return rr_server(bind, port),
        Bench::RrClient { address, count } => return rr_client(address, count),
        Bench::UdpFlood { address, seconds, flows } => return udp_flood(address, seconds, flows),
        Bench::UdpGsoSend { address, seconds } => return udp_gso_send(address, seconds),
        Bench::UdpSink { port, seconds, bind } => return udp_sink(bind, port, seconds),
        _ => {}
    }
    if let Bench::E2e { paths, .. } = &mut cli.command {
        // `--paths ''` with --cross-node measures across nodes only.
        paths.retain(|p| !p.is_empty());
        if let Some(bad) = paths.iter().find(|p| !benches::e2e::PATHS.contains(&p.as_str())) {
            eprintln!("vpc-bench: unknown path {bad:?}; paths are {}", benches::e2e::PATHS.join(", "));
            std::process::exit(2);
        }
    }
    if !nix::unistd::geteuid().is_root() {
        eprintln!("vpc-bench: needs root (it creates network namespaces, TAP devices and daemons)");
        std::process::exit(1);
    }
    match cli.command {
        Bench::RrServer { .. }
        | Bench::RrClient { .. }
        | Bench::UdpFlood { .. }
        | Bench::UdpGsoSend { .. }
        | Bench::UdpSink { .. } => unreachable!("handled above"),
        Bench::E2e { runs: Runs { reps, seconds, workers, flows }, round_trips, paths, out, ip_family, cross_node } => {
            let options = benches::e2e::Options {
                reps,
                seconds,
                workers,
                flows,
                round_trips,
                paths,
                family: ip_family,
                cross_node,
            };
            let results = benches::e2e::run(&options, |step| eprintln!("  {step}"));
            let command = std::env::args().collect::<Vec<_>>().join(" ");
            benches::e2e::report_dir(&out, &results, &options, &command).expect("write the report");
            if cli.json {
                println!("{}", benches::e2e::to_json(&results, &options));
            } else {
                print!("{}", benches::e2e::table(&results));
                print!("{}", benches::e2e::targets_text(&results));
                println!("{}", benches::e2e::family_text(&options));
                println!("report: {}", out.join("report.md").display());
            }
        }
        Bench::Scale { pods, runs: Runs { reps, seconds, workers, flows } } => {
            let report = benches::scale::run(pods, reps, seconds, workers, flows, |step| eprintln!("  {step}"));
            if cli.json {
                println!("{}", benches::scale::to_json(&report));
            } else {
                print!("{}", benches::scale::table(&report));
            }
        }
        Bench::TapCost { seconds } => {
            let cost = benches::tap_cost::run(seconds).unwrap_or_else(|e| {
                eprintln!("vpc-bench tap-cost: {e}");
                std::process::exit(1);
            });
            if cli.json {
                println!(
                    "{}",
                    serde_json::json!({"write_ns": cost.write_ns, "read_ns": cost.read_ns, "bound_pps": cost.bound_pps(), "frames": cost.frames})
                );
            } else {
                println!("TAP I/O per 64-byte frame: write {:.0} ns, read {:.0} ns", cost.write_ns, cost.read_ns);
                println!(
                    "one thread doing one read and one write per frame: at most {:.2} Mpps",
                    cost.bound_pps() / 1e6
                );
            }
        }
        Bench::Ipam { nodes, pods, provider, api_latency_ms, api_rate, api_throttle } if !provider.is_empty() => {
            let slow = benches::ipam_provider::ApiSlowdown {
                latency_ms: api_latency_ms,
                rate_per_sec: api_rate,
                throttle: api_throttle,
            };
            let options = benches::ipam_provider::Options { providers: provider, nodes, pods, slow };
            let report = benches::ipam_provider::run(&options, |step| eprintln!("  {step}"));
            if cli.json {
                println!("{}", report.json());
            } else {
                print!("{}", report.table());
            }
        }
        Bench::Ipam { nodes, pods, .. } => {
            let report = benches::ipam::run(nodes, pods);
            if cli.json {
                println!("{}", report.json());
            } else {
                print!("{}", report.table());
            }
        }
        Bench::IpamScale { nodes, pods_per_node, steady_seconds, ramp_limit, lease_ttl, quarantine } => {
            let options = benches::ipam_scale::Options {
                nodes,
                pods_per_node,
                steady_seconds,
                ramp_limit: std::time::Duration::from_secs(ramp_limit),
                lease_ttl,
                quarantine,
            };
            let runs = benches::ipam_scale::run(&options, |step| eprintln!("  {step}"));
            if cli.json {
                println!("{}", benches::ipam_scale::report::json(&runs));
            } else {
                print!("{}", benches::ipam_scale::report::table(&runs));
            }
        }
        Bench::Cni { pods } => {
            let r = benches::cni_latency::run(pods);
            if cli.json {
                let l = |l: benches::cni_latency::Latency| serde_json::json!({"p50_ms": l.p50_ms, "p99_ms": l.p99_ms});
                println!(
                    "{}",
                    serde_json::json!({
                        "pods": r.pods,
                        "vpc_cni": {"add": l(r.ours_add), "del": l(r.ours_del)},
                        "bridge_host_local": {"add": l(r.reference_add), "del": l(r.reference_del)},
                    })
                );
            } else {
                println!("CNI latency over {} pods (ms)", r.pods);
                println!("{:<24} {:>9} {:>9} {:>9} {:>9}", "plugin", "ADD p50", "ADD p99", "DEL p50", "DEL p99");
                for (name, add, del) in
                    [("vpc-cni", r.ours_add, r.ours_del), ("bridge + host-local", r.reference_add, r.reference_del)]
                {
                    println!(
                        "{:<24} {:>9.2} {:>9.2} {:>9.2} {:>9.2}",
                        name, add.p50_ms, add.p99_ms, del.p50_ms, del.p99_ms
                    );
                }
                println!(
                    "vpc-cni / reference: ADD p50 {:.2}x, DEL p50 {:.2}x",
                    r.ours_add.p50_ms / r.reference_add.p50_ms,
                    r.ours_del.p50_ms / r.reference_del.p50_ms
                );
            }
        }
    }
}

fn rr_server(bind: std::net::IpAddr, port: u16) {
    let socket = std::net::UdpSocket::bind((bind, port)).expect("bind");
    let mut buf = [0u8; 64];
    while let Ok((n, peer)) = socket.recv_from(&mut buf) {
        let _ = socket.send_to(&buf[..n], peer);
    }
}

fn rr_client(address: std::net::SocketAddr, count: u32) {
    let any: std::net::IpAddr =
        if address.is_ipv6() { std::net::Ipv6Addr::UNSPECIFIED.into() } else { std::net::Ipv4Addr::UNSPECIFIED.into() };
    let socket = std::net::UdpSocket::bind((any, 0)).expect("bind");
    socket.connect(address).expect("connect");
    socket.set_read_timeout(Some(std::time::Duration::from_secs(1))).expect("timeout");
    let mut samples = Vec::with_capacity(count as usize);
    let mut buf = [0u8; 64];
    for i in 0..count {
        let start = std::time::Instant::now();
        socket.send(&i.to_be_bytes()).expect("send");
        if socket.recv(&mut buf).is_ok() {
            samples.push(start.elapsed().as_secs_f64() * 1e6);
        }
    }
    samples.sort_by(f64::total_cmp);
    let at = |q: f64| samples.get(((samples.len() as f64 - 1.0) * q) as usize).copied().unwrap_or(f64::NAN);
    println!(
        "{}",
        serde_json::json!({"p50_us": at(0.5), "p99_us": at(0.99), "received": samples.len(), "sent": count})
    );
}

fn udp_flood(address: std::net::SocketAddr, seconds: u32, flows: u16) {
    use benches::udp_flood::{flood, Target};
    let target = Target::resolve(address.ip(), address.port()).unwrap_or_else(|e| {
        eprintln!("udp-flood: {e}");
        std::process::exit(1);
    });
    let sent =
        flood(&target, &target.frames(flows), std::time::Duration::from_secs(seconds.into())).unwrap_or_else(|e| {
            eprintln!("udp-flood on {}: {e}", target.dev);
            std::process::exit(1);
        });
    println!(
        "{}",
        serde_json::json!({"sent": sent.packets, "refused": sent.refused, "seconds": sent.seconds, "pps": sent.packets as f64 / sent.seconds})
    );
}

fn udp_gso_send(address: std::net::SocketAddr, seconds: u32) {
    let sent = benches::udp_gso::send(address, std::time::Duration::from_secs(seconds.into())).unwrap_or_else(|e| {
        eprintln!("udp-gso-send to {address}: {e}");
        std::process::exit(1);
    });
    println!(
        "{}",
        serde_json::json!({"bytes": sent.bytes, "datagrams": sent.datagrams, "retried": sent.retried, "seconds": sent.seconds})
    );
}

fn udp_sink(bind: std::net::IpAddr, port: u16, seconds: u32) {
    use std::time::Duration;
    let received = benches::udp_gso::Sink::bind((bind, port).into())
        .and_then(|sink| sink.count(Duration::from_secs(seconds.into()), Duration::from_secs(5)))
        .unwrap_or_else(|e| {
            eprintln!("udp-sink on port {port}: {e}");
            std::process::exit(1);
        });
    println!(
        "{}",
        serde_json::json!({"bytes": received.bytes, "datagrams": received.datagrams, "seconds": received.seconds, "gbps": received.gbps()})
    );
}
