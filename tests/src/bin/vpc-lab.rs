//! vpc-lab: a whole VPC on this machine, with every communication path proven end to end.
//!
//! `vpc-lab demo` stands the lab up, checks every path, measures pod-to-pod iperf3 and takes it
//! all down again, failing if any path fails. `up`, `check` and `down` do the same in steps.
//! `--nodes N` (2 to 4) sets the number of nodes; `--ipam etcd` allocates every pod from one
//! pool in a 3-member etcd cluster, and then `demo` and every `check` also move a sticky pod to
//! the next node and time how soon it answers there. The lab is dual-stack by default
//! (`--ip-family dual`): the VPC has an IPv6 subnet next to the IPv4 one, the pods an address of
//! each family (`ipv4` or `ipv6` for one only), and every path of the matrix runs over each
//! family the pods have.
//!
//! The VPC is UCloud's by default (`--vpc ucloud`): its fabric is an SDN that delivers only
//! addresses registered through the VPC API the lab serves (UCloud's dialect), and each node's
//! vswitchd gets its pods' addresses from that API as secondary IPs of its NIC (provider mode,
//! `--ipam vpc`, IPv4 only: the pods have no IPv6 in this mode). `--vpc aws` is the same SDN
//! programmed from EC2's view (moto behind the lab's proxy, one instance per node): vswitchd's
//! `[ipam] provider = "aws"` assigns secondary private IPs on each node's ENI. `--vpc l2` is the
//! plain learning bridge, where `--ipam local|etcd` and dual stack (its default) apply.

use std::io::{BufRead, BufReader, Write};
use std::net::{Ipv6Addr, SocketAddr, TcpListener, TcpStream};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use clap::{Parser, Subcommand, ValueEnum};
use vpc_lab::lab::{vpc_api, IpFamily, IpamMode, Lab, LabSpec, LabState, PathCheck, UplinkMode, VpcMode};

#[derive(Parser)]
#[command(
    name = "vpc-lab",
    version,
    about = "A VPC on one machine: nodes with vswitchd, pods through vpc-cni, every path checked"
)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Clone, Copy, ValueEnum)]
enum Mode {
    /// Pod traffic leaves through the node's own stack.
    HostRouted,
    /// Each node has a NIC dedicated to pod traffic, driven by vswitchd.
    Uplink,
}

#[derive(Clone, Copy, ValueEnum)]
enum Ipam {
    /// Each node its own range, kept by vpc-cni in files on the node.
    Local,
    /// One pool for the cluster, allocated by the nodes' vswitchd in a 3-member etcd cluster.
    Etcd,
    /// Secondary IPs of each node's NIC from the VPC API, allocated by the node's vswitchd
    /// (provider mode; IPv4 only). The only one --vpc ucloud and aws deliver, and their default.
    Vpc,
}

#[derive(Clone, Copy, ValueEnum)]
enum Vpc {
    /// A plain Linux bridge that learns from any frame.
    L2,
    /// UCloud's SDN: only addresses registered through the VPC API (UCloud's dialect, served by
    /// the lab) pass; the nodes, the VM, the gateway and etcd are registered from the start.
    Ucloud,
    /// AWS: EC2 (moto behind the lab's proxy) holds one instance per node; the same SDN
    /// delivers only the addresses EC2 has on the ENI behind each port (host-routed only).
    Aws,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Families {
    /// Pods with IPv4 only.
    Ipv4,
    /// Pods with IPv4 and IPv6; every path checked over both.
    Dual,
    /// Pods with IPv6 only.
    Ipv6,
}

#[derive(clap::Args, Clone)]
struct Shape {
    #[arg(long, value_enum, default_value_t = Mode::HostRouted)]
    mode: Mode,
    /// Nodes, each with vswitchd and its pods.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u8).range(2..=4))]
    nodes: u8,
    /// Where pods' addresses come from [default: vpc with --vpc ucloud, else local].
    #[arg(long, value_enum)]
    ipam: Option<Ipam>,
    /// The pods' address families (the VPC gets the IPv6 subnet fd00:10::/64 with dual or ipv6)
    /// [default: ipv4 with --vpc ucloud, whose provider mode is IPv4 only; else dual].
    #[arg(long, value_enum)]
    ip_family: Option<Families>,
    #[arg(long, default_value_t = 1500)]
    pod_mtu: u16,
    /// Forwarding threads per vswitchd.
    #[arg(long, default_value_t = 1)]
    workers: usize,
    /// The VPC's fabric.
    #[arg(long, value_enum, default_value_t = Vpc::Ucloud)]
    vpc: Vpc,
}

#[derive(Subcommand)]
enum Cmd {
    /// Stand the lab up and leave it running.
    Up(Shape),
    /// Check every path of a running lab (the only one, or NAME); with --ipam etcd, also move
    /// its sticky pod to the next node.
    Check {
        name: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Take a running lab down (the only one, NAME, or --all).
    Down {
        name: Option<String>,
        #[arg(long)]
        all: bool,
    },
    /// Up, check, a short iperf3, down. Exits non-zero if any path fails.
    Demo {
        #[command(flatten)]
        shape: Shape,
        /// Seconds of iperf3 per measurement.
        #[arg(long, default_value_t = 3)]
        seconds: u32,
    },
    /// (inside the lab) Answer every TCP connection with this server's name and the peer it saw.
    Serve {
        #[arg(long)]
        name: String,
        #[arg(long)]
        port: u16,
    },
    /// (inside the lab) Connect, print the server's answer and the time it took.
    Probe { address: SocketAddr },
    /// (inside the lab) Serve UCloud's VPC API for the VPC in --config, programming the SDN of
    /// the fabric namespace --fabric; its state and faults on the --control socket.
    VpcApi {
        #[arg(long)]
        config: std::path::PathBuf,
        #[arg(long)]
        listen: SocketAddr,
        #[arg(long)]
        control: std::path::PathBuf,
        #[arg(long)]
        fabric: Option<String>,
    },
    /// (inside the lab) Program the fabric's SDN from EC2's DescribeNetworkInterfaces (`--vpc
    /// aws`), as --config says; its state and push delay on the --control socket.
    Ec2Sdn {
        #[arg(long)]
        config: std::path::PathBuf,
        #[arg(long)]
        control: std::path::PathBuf,
    },
}

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc_int) {
    INTERRUPTED.store(true, Ordering::SeqCst);
}
#[allow(non_camel_case_types)]
type libc_int = std::os::raw::c_int;

/// The lab `shape` asks for, or why it cannot be built.
fn spec(shape: &Shape) -> Result<LabSpec, String> {
    let vpc = match shape.vpc {
        Vpc::L2 => VpcMode::L2,
        Vpc::Ucloud => VpcMode::Ucloud,
        Vpc::Aws => VpcMode::Aws,
    };
    if vpc == VpcMode::Aws && matches!(shape.mode, Mode::Uplink) {
        return Err("--vpc aws is host-routed only: a dedicated uplink would be a second ENI, whose addresses \
                    vswitchd does not send through it (see docs/testing.md)"
            .into());
    }
    let ipam = match (shape.ipam, vpc) {
        (None | Some(Ipam::Vpc), VpcMode::Ucloud | VpcMode::Aws) => IpamMode::Vpc,
        (None, VpcMode::L2) | (Some(Ipam::Local), VpcMode::L2) => IpamMode::Local,
        (Some(Ipam::Etcd), VpcMode::L2) => IpamMode::Etcd,
        (Some(Ipam::Vpc), VpcMode::L2) => {
            return Err("--ipam vpc needs --vpc ucloud or aws (the L2 fabric has no VPC API)".into())
        }
        (Some(_), VpcMode::Ucloud | VpcMode::Aws) => {
            return Err("--vpc ucloud and aws deliver only addresses registered through the VPC's API: use --ipam \
                        vpc (the default there), or --vpc l2 for --ipam local or etcd"
                .into())
        }
    };
    let family = match (shape.ip_family, ipam) {
        (None | Some(Families::Ipv4), IpamMode::Vpc) => IpFamily::Ipv4,
        (Some(_), IpamMode::Vpc) => {
            return Err("--vpc ucloud and aws are IPv4 only: vswitchd's provider mode allocates IPv4 secondary IPs \
                        (use --vpc l2 for dual stack)"
                .into())
        }
        (None | Some(Families::Dual), _) => IpFamily::Dual,
        (Some(Families::Ipv4), _) => IpFamily::Ipv4,
        (Some(Families::Ipv6), _) => IpFamily::Ipv6,
    };
    Ok(LabSpec {
        mode: match shape.mode {
            Mode::HostRouted => UplinkMode::HostRouted,
            Mode::Uplink => UplinkMode::Uplink,
        },
        ipam,
        family,
        nodes: shape.nodes.into(),
        pod_mtu: shape.pod_mtu,
        workers: shape.workers,
        vpc,
        ..LabSpec::default()
    })
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Cmd::Serve { name, port } => serve(&name, port),
        Cmd::Probe { address } => probe(address),
        Cmd::VpcApi { config, listen, control, fabric } => {
            match vpc_api::server::run(vpc_api::server::ServerArgs { config, listen, control, fabric }) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("vpc-lab vpc-api: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Cmd::Ec2Sdn { config, control } => match vpc_lab::lab::ec2_sdn::run(config, control) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("vpc-lab ec2-sdn: {e}");
                ExitCode::FAILURE
            }
        },
        command => {
            if !nix::unistd::geteuid().is_root() {
                eprintln!("vpc-lab: needs root (it creates network namespaces)");
                return ExitCode::from(2);
            }
            match command {
                Cmd::Up(shape) => up(&shape),
                Cmd::Check { name, json } => with_state(name, |mut state| {
                    let mut checks = state.topology.check();
                    if state.topology.sticky_pod().is_some() {
                        checks.extend(state.move_sticky().checks);
                    }
                    report(&checks, json)
                }),
                Cmd::Down { name, all } => down(name, all),
                Cmd::Demo { shape, seconds } => demo(&shape, seconds),
                Cmd::Serve { .. } | Cmd::Probe { .. } | Cmd::VpcApi { .. } | Cmd::Ec2Sdn { .. } => {
                    unreachable!("handled above")
                }
            }
        }
    }
}

fn serve(name: &str, port: u16) -> ExitCode {
    // Both families on one socket where the namespace has IPv6 (an IPv4 peer then shows as
    // ::ffff:a.b.c.d, printed as a.b.c.d), IPv4 alone where it has not.
    let listener =
        match TcpListener::bind((Ipv6Addr::UNSPECIFIED, port)).or_else(|_| TcpListener::bind(("0.0.0.0", port))) {
            Ok(l) => l,
            Err(e) => {
                eprintln!("vpc-lab serve: {e}");
                return ExitCode::FAILURE;
            }
        };
    for stream in listener.incoming().flatten() {
        let peer = stream
            .peer_addr()
            .map_or_else(|_| "?".into(), |p| SocketAddr::new(p.ip().to_canonical(), p.port()).to_string());
        let mut stream = stream;
        let _ = writeln!(stream, "name={name} peer={peer}");
    }
    ExitCode::SUCCESS
}

fn probe(address: SocketAddr) -> ExitCode {
    let start = Instant::now();
    let result = TcpStream::connect_timeout(&address, Duration::from_secs(2)).and_then(|s| {
        s.set_read_timeout(Some(Duration::from_secs(2)))?;
        let mut line = String::new();
        BufReader::new(s).read_line(&mut line)?;
        Ok(line)
    });
    match result {
        Ok(line) if !line.is_empty() => {
            println!("{} rtt_ms={:.3}", line.trim(), start.elapsed().as_secs_f64() * 1e3);
            ExitCode::SUCCESS
        }
        Ok(_) => {
            eprintln!("no answer from {address}");
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("{address}: {e}");
            ExitCode::FAILURE
        }
    }
}

fn up(shape: &Shape) -> ExitCode {
    let spec = match spec(shape) {
        Ok(spec) => spec,
        Err(e) => return usage(&e),
    };
    let lab = Lab::up(LabSpec { detachable: true, ..spec }, |step| println!("  {step}"));
    if lab.ipam != IpamMode::Local {
        print_ipam(&lab);
    }
    if let Some(vpc) = &lab.vpc {
        print_vpc(vpc);
    }
    if let Some(ec2) = &lab.ec2 {
        print_ec2(ec2);
    }
    let state = lab.detach();
    println!("lab {} is up; `vpc-lab check` checks it, `vpc-lab down` removes it", state.topology.name);
    ExitCode::SUCCESS
}

/// A shape the lab cannot take: exit 2, as clap does for bad arguments.
fn usage(why: &str) -> ExitCode {
    eprintln!("vpc-lab: {why}");
    ExitCode::from(2)
}

fn with_state(name: Option<String>, f: impl FnOnce(LabState) -> ExitCode) -> ExitCode {
    let labs = LabState::list();
    let name = match (name, labs.as_slice()) {
        (Some(n), _) => n,
        (None, [only]) => only.clone(),
        (None, []) => {
            eprintln!("vpc-lab: no lab is up");
            return ExitCode::FAILURE;
        }
        (None, many) => {
            eprintln!("vpc-lab: several labs are up ({}); name one", many.join(", "));
            return ExitCode::FAILURE;
        }
    };
    match LabState::load(&name) {
        Ok(state) => f(state),
        Err(e) => {
            eprintln!("vpc-lab: lab {name}: {e}");
            ExitCode::FAILURE
        }
    }
}

fn down(name: Option<String>, all: bool) -> ExitCode {
    if all {
        for name in LabState::list() {
            if let Ok(state) = LabState::load(&name) {
                state.teardown();
                println!("lab {name} removed");
            }
        }
        return ExitCode::SUCCESS;
    }
    with_state(name, |state| {
        state.teardown();
        println!("lab {} removed", state.topology.name);
        ExitCode::SUCCESS
    })
}

/// `vswitchctl ipam` on node1: every node's pods from the one pool (etcd), or node1's NIC's
/// secondary IPs and the VPC API's health (provider mode).
fn print_ipam(lab: &Lab) {
    println!("  vswitchctl ipam (on node1):");
    for line in lab.ipam_report().lines() {
        println!("    {line}");
    }
}

/// Where the VPC API is and what its clients need.
fn print_vpc(vpc: &vpc_lab::lab::ucloud::LabVpc) {
    println!(
        "  VPC API: {} (region {}, zone {}, project {}, VPC {}, subnet {})",
        vpc.endpoint, vpc.region, vpc.zone, vpc.project_id, vpc.vpc_id, vpc.subnet_id
    );
    println!("    credentials: {} and {}", vpc.public_key_file.display(), vpc.private_key_file.display());
    println!("    state and faults: {} (one JSON line: {{\"op\": \"state\"}})", vpc.control.display());
    for nic in &vpc.nics {
        println!("    node{} {}: MAC {}, ObjectId {}", nic.node + 1, nic.interface, nic.mac, nic.object_id);
    }
}

/// Where EC2 is, what its clients need, and each host in it.
fn print_ec2(ec2: &vpc_lab::lab::aws::LabEc2) {
    println!(
        "  EC2: {} (region {}, VPC {}, subnet {}; moto itself at {} in namespace {})",
        ec2.endpoint, ec2.region, ec2.vpc_id, ec2.subnet_id, ec2.upstream, ec2.netns
    );
    println!("    credentials: {} (AWS_SHARED_CREDENTIALS_FILE)", ec2.credentials_file.display());
    println!("    SDN state and push delay: {} (one JSON line: {{\"op\": \"state\"}})", ec2.control.display());
    for (name, host) in &ec2.hosts {
        let instance = host.instance.as_deref().unwrap_or("(no instance)");
        println!("    {name}: {instance}, ENI {} MAC {}", host.eni, host.mac);
    }
}

fn report(checks: &[PathCheck], json: bool) -> ExitCode {
    if json {
        println!("{}", serde_json::to_string_pretty(checks).expect("serialisable"));
    } else {
        let width = |f: fn(&PathCheck) -> &str, title: &str| {
            checks.iter().map(|c| f(c).len()).max().unwrap_or(0).max(title.len())
        };
        let (wp, wf, wt) = (width(|c| &c.path, "PATH"), width(|c| &c.from, "FROM"), width(|c| &c.to, "TO"));
        println!("{:<4} {:<wp$} {:<wf$} {:<wt$} {:<4} {:>8}  DETAIL", "IP", "PATH", "FROM", "TO", "", "RTT ms");
        for c in checks {
            let rtt = c.rtt_ms.map_or_else(|| "-".to_string(), |r| format!("{r:.3}"));
            println!(
                "{:<4} {:<wp$} {:<wf$} {:<wt$} {:<4} {:>8}  {}",
                c.family.strip_prefix("IP").unwrap_or(&c.family),
                c.path,
                c.from,
                c.to,
                if c.ok { "PASS" } else { "FAIL" },
                rtt,
                c.detail
            );
        }
        let failed = checks.iter().filter(|c| !c.ok).count();
        println!("{} passed, {} failed", checks.len() - failed, failed);
    }
    if checks.iter().all(|c| c.ok) {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

fn demo(shape: &Shape, seconds: u32) -> ExitCode {
    // Ctrl-C or SIGTERM stops between steps; dropping the lab removes everything either way.
    // SAFETY: the handler only stores to an atomic.
    unsafe {
        let handler = nix::sys::signal::SigHandler::Handler(on_signal);
        let _ = nix::sys::signal::signal(nix::sys::signal::Signal::SIGINT, handler);
        let _ = nix::sys::signal::signal(nix::sys::signal::Signal::SIGTERM, handler);
    }
    let spec = match spec(shape) {
        Ok(spec) => spec,
        Err(e) => return usage(&e),
    };
    let started = Instant::now();
    println!("[1/4] standing up the lab VPC");
    let mut lab = Lab::up(spec, |step| println!("  {step}"));
    if let Some(vpc) = &lab.vpc {
        print_vpc(vpc);
    }
    if let Some(ec2) = &lab.ec2 {
        print_ec2(ec2);
    }
    let stopped = || INTERRUPTED.load(Ordering::SeqCst);
    let mut ok = !stopped();
    if ok {
        println!("[2/4] checking every path");
        let mut checks = lab.check();
        if lab.sticky_pod().is_some() && !stopped() {
            checks.extend(lab.move_sticky().checks);
        }
        ok = report(&checks, false) == ExitCode::SUCCESS;
        if lab.ipam != IpamMode::Local {
            print_ipam(&lab);
        }
    }
    if !stopped() {
        println!("[3/4] iperf3, one TCP stream, {seconds} s");
        let runs = lab.family.families().into_iter().flat_map(|family| {
            [("pod -> pod, same node", "n1a", "n1b"), ("pod -> pod, across nodes", "n1a", "n2a")]
                .map(|(what, from, to)| (family, what, from, to))
        });
        for (family, what, from, to) in runs {
            let what = format!("{family} {what}");
            match lab.iperf3(family, from, to, seconds) {
                Ok(run) => println!(
                    "  {what:<33} {:>7.2} Gbit/s, {} segments retransmitted",
                    run.bits_per_second / 1e9,
                    run.retransmits
                ),
                Err(e) => {
                    println!("  {what:<33} failed: {e}");
                    ok = false;
                }
            }
        }
    }
    println!("[4/4] taking the lab down (pods through vpc-cni DEL, then daemons and namespaces)");
    lab.delete_pods();
    drop(lab);
    if stopped() {
        println!("interrupted; everything removed");
        return ExitCode::from(130);
    }
    println!(
        "done in {:.1} s: {}",
        started.elapsed().as_secs_f64(),
        if ok { "every path works" } else { "SOME PATHS FAILED" }
    );
    if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
