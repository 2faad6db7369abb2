//! vswitchctl: talks to vswitchd's API socket; tables for people by default, `--json` for
//! scripts. `vswitchctl doctor` checks that the node is ready for pods (see `doctor.rs`).

#[path = "vswitchctl/doctor.rs"]
mod doctor;

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use serde::Serialize;
use vswitch_api::api::{
    CountersView, DropsView, FlowProtocol, FlowSpec, IpamView, NeighborView, PortRole, PortSpec, PortView, Request,
    RouteView, StatusView, TraceView,
};
use vswitch_api::client::{Client, ClientError};
use vswitch_api::defaults;
use vswitch_api::MacAddr;

const EXIT_CODES: &str = "Exit codes: 0 done; 1 vswitchd refused the request (the error says why); \
2 bad command line; 3 vswitchd unreachable or answered something unexpected.\n\
doctor: 0 no check failed, 1 at least one did (vswitchd unreachable included).\n\
With --json, stdout is always one JSON document: the result, or {\"ok\":false,\"error\":{\"code\",\"message\"}}.";

#[derive(Parser)]
#[command(name = "vswitchctl", version, about = "Control and inspect vswitchd", after_help = EXIT_CODES)]
struct Cli {
    /// vswitchd's API socket [default: /run/vswitchd/vswitchd.sock; for doctor, vswitchd.toml's].
    #[arg(long, global = true)]
    socket: Option<PathBuf>,
    /// Print JSON instead of a table (errors too).
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Attach a pod's existing TAP (vpc-cni does this; for debugging by hand).
    AddPort {
        /// Port name, unique on the node (vpc-cni uses CONTAINER_ID:IFNAME).
        name: String,
        /// The pod's network namespace (a path such as /run/netns/NAME or /proc/PID/ns/net).
        #[arg(long)]
        netns: PathBuf,
        /// The TAP's name inside that namespace.
        #[arg(long, default_value = "eth0")]
        ifname: String,
        /// The pod's IPv4 address; the only IPv4 source address the port may send from.
        #[arg(long, required_unless_present = "ipv6")]
        ip: Option<Ipv4Addr>,
        /// The pod's IPv6 address; with the MAC's link-local address, the only IPv6 sources.
        #[arg(long)]
        ipv6: Option<Ipv6Addr>,
        /// The pod's MAC; the only source MAC the port may send from.
        #[arg(long)]
        mac: MacAddr,
        /// MTU (default: vswitchd's pod_mtu).
        #[arg(long)]
        mtu: Option<u16>,
    },
    /// Detach a port.
    DelPort {
        /// The port's name.
        name: String,
        /// Also delete the port's TAP device.
        #[arg(long)]
        remove_device: bool,
    },
    /// Route a prefix out of a port. Routes added here are saved and restored at restart.
    AddRoute {
        /// The prefix, e.g. 10.96.0.0/12.
        prefix: String,
        /// The port to send it out of.
        port: String,
        /// Replace an existing route for the prefix (without it, an existing route is an error).
        #[arg(long)]
        replace: bool,
    },
    /// Remove a route added with add-route (or one from the configuration, until restart).
    DelRoute {
        /// The prefix, exactly as listed by `routes`.
        prefix: String,
    },
    /// Is the daemon up: version, uptime, ports, routes, workers.
    Status,
    /// The attached ports with their pods, link state and counters.
    Ports,
    /// The routes: prefix, port, next hop, MTU and where each came from.
    Routes,
    /// The uplink's ARP neighbours.
    Neighbors,
    /// Per-port counters and drops by reason.
    Counters,
    /// Cluster address allocation: pool usage, each node's pods and warm pool, sticky and
    /// cooling (quarantined) addresses, and what this node still has to write to the store.
    Ipam,
    /// Show what the pipeline does with a packet, without sending anything: each stage, the
    /// route that matched, the verdict and the frame as it leaves. Either a flow from a pod
    /// (`--from NAMESPACE/POD --to ADDRESS --tcp 80`), built by vswitchd, or a frame in hex
    /// arriving on a port (`--port NAME FRAME`).
    #[command(group(clap::ArgGroup::new("l4").args(["tcp", "udp", "icmp"])))]
    Trace {
        /// The pod the packet comes from: NAMESPACE/POD, or its port's name.
        #[arg(long, conflicts_with_all = ["port", "frame"], requires = "to")]
        from: Option<String>,
        /// The destination address (IPv4 or IPv6).
        #[arg(long, requires = "from")]
        to: Option<IpAddr>,
        /// A TCP packet to this port (the default: TCP port 80).
        #[arg(long)]
        tcp: Option<u16>,
        /// A UDP packet to this port.
        #[arg(long)]
        udp: Option<u16>,
        /// An ICMP echo request.
        #[arg(long)]
        icmp: bool,
        /// The IP packet's size in bytes.
        #[arg(long)]
        size: Option<u16>,
        /// As a GSO super-frame (65,000 bytes unless --size), as a pod hands TSO frames over.
        #[arg(long)]
        gso: bool,
        /// With a hex frame: the port it arrives on.
        #[arg(long, requires = "frame")]
        port: Option<String>,
        /// A frame in hex, from the Ethernet header (':' and spaces allowed).
        frame: Option<String>,
    },
    /// Recent drops, sampled: time, pod, reason, addresses and ports. Sampling runs while
    /// someone asks (and a few seconds after); the first call starts it.
    Drops {
        /// Keep printing new drops as they come (until interrupted, or for --seconds); with
        /// --json, one JSON object per line.
        #[arg(long)]
        follow: bool,
        /// With --follow: stop after this many seconds.
        #[arg(long, requires = "follow")]
        seconds: Option<u64>,
    },
    /// Is this node ready for pods: node prerequisites, vswitchd answering, the CNI conflist
    /// agreeing with vswitchd.toml, addresses left. One line per check: ok, warn or FAIL (with
    /// what to do); exits 1 if any check failed. --json: [{check, status, detail}].
    Doctor {
        /// The CNI conflist that holds vpc-cni.
        #[arg(long, default_value = defaults::CONFLIST)]
        conflist: PathBuf,
        /// vswitchd's configuration [default: /etc/vswitchd/vswitchd.toml; if that is absent,
        /// vswitchd's defaults].
        #[arg(long)]
        config: Option<PathBuf>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Command::Doctor { conflist, config } = cli.command {
        return run_doctor(&doctor::Options { conflist, config, socket: cli.socket }, cli.json);
    }
    let client = Client::new(cli.socket.as_deref().unwrap_or(defaults::SOCKET.as_ref()));
    let outcome = match cli.command {
        Command::AddPort { name, netns, ifname, ip, ipv6, mac, mtu } => {
            let spec = PortSpec { name, netns, ifname, ip, ipv6, mac, mtu, pod: None, bandwidth: None };
            show(&client, cli.json, &Request::AddPort(spec), |p: PortView| print_ports(&[p]))
        }
        Command::DelPort { name, remove_device } => {
            show(&client, cli.json, &Request::DelPort { name, remove_device }, |()| println!("ok"))
        }
        Command::AddRoute { prefix, port, replace } => {
            show(&client, cli.json, &Request::AddRoute { prefix, port, replace }, |()| println!("ok"))
        }
        Command::DelRoute { prefix } => show(&client, cli.json, &Request::DelRoute { prefix }, |()| println!("ok")),
        Command::Status => show(&client, cli.json, &Request::Status, print_status),
        Command::Ports => show(&client, cli.json, &Request::ListPorts, |p: Vec<PortView>| print_ports(&p)),
        Command::Routes => show(&client, cli.json, &Request::ListRoutes, print_routes),
        Command::Neighbors => show(&client, cli.json, &Request::ListNeighbors, print_neighbors),
        Command::Counters => show(&client, cli.json, &Request::Counters, print_counters),
        Command::Ipam => show(&client, cli.json, &Request::Ipam, print_ipam),
        Command::Trace { from, to, tcp, udp, icmp, size, gso, port, frame } => {
            let request = match (from, to, port, frame) {
                (Some(from), Some(to), _, _) => {
                    let protocol = match (tcp, udp, icmp) {
                        (_, Some(port), _) => FlowProtocol::Udp { port },
                        (_, _, true) => FlowProtocol::Icmp,
                        (port, _, _) => FlowProtocol::Tcp { port: port.unwrap_or(80) },
                    };
                    Request::TraceFlow(FlowSpec { from, to, protocol, size, gso })
                }
                (_, _, Some(port), Some(frame)) => Request::Trace { port, frame },
                _ => {
                    eprintln!("vswitchctl trace: give --from POD --to ADDRESS, or --port NAME FRAME");
                    return ExitCode::from(2);
                }
            };
            show(&client, cli.json, &request, print_trace)
        }
        Command::Drops { follow, seconds } => follow_drops(&client, cli.json, follow, seconds),
        Command::Doctor { .. } => unreachable!("run above"),
    };
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            if cli.json {
                let (code, message) = match &e {
                    ClientError::Api(api) => (serde_json::to_value(api.code).expect("serialises"), api.message.clone()),
                    other => (serde_json::json!("unreachable"), other.to_string()),
                };
                println!("{}", serde_json::json!({"ok": false, "error": {"code": code, "message": message}}));
            } else {
                eprintln!("vswitchctl: {e}");
            }
            match e {
                ClientError::Api(_) => ExitCode::FAILURE,
                ClientError::Unreachable { .. } | ClientError::Protocol { .. } => ExitCode::from(3),
            }
        }
    }
}

fn run_doctor(options: &doctor::Options, json: bool) -> ExitCode {
    let checks = doctor::run(options);
    if json {
        println!("{}", serde_json::to_string_pretty(&checks).expect("serialises"));
    } else {
        for c in &checks {
            let status = match c.status {
                doctor::Status::Ok => "ok",
                doctor::Status::Warn => "warn",
                doctor::Status::Fail => "FAIL",
            };
            println!("{status:<4}  {}: {}", c.check, c.detail);
        }
    }
    if checks.iter().any(|c| c.status == doctor::Status::Fail) {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

/// Sends `request`, then prints its result as JSON or with `human`.
fn show<T: serde::de::DeserializeOwned + Serialize>(
    client: &Client,
    json: bool,
    request: &Request,
    human: impl FnOnce(T),
) -> Result<(), ClientError> {
    let result: T = client.call(request)?;
    if json {
        println!("{}", serde_json::to_string_pretty(&result).expect("serialises"));
    } else {
        human(result);
    }
    Ok(())
}

fn print_status(s: StatusView) {
    println!(
        "vswitchd {}: up {}s, {} ports, {} routes, {} workers, state generation {}",
        s.version, s.uptime_seconds, s.ports, s.routes, s.workers, s.generation
    );
}

fn print_ports(ports: &[PortView]) {
    println!(
        "{:<4} {:<22} {:<24} {:<6} {:<5} {:<16} {:<18} {:>5} {:>10} {:>12} {:>10} {:>12}",
        "ID", "NAME", "POD", "ROLE", "LINK", "IP", "MAC", "MTU", "RX PKTS", "RX BYTES", "TX PKTS", "TX BYTES"
    );
    for p in ports {
        let (role, ip, mac) = match p.role {
            PortRole::Pod { ip, ipv6, mac } => {
                let ips: Vec<String> =
                    ip.map(IpAddr::V4).into_iter().chain(ipv6.map(IpAddr::V6)).map(|ip| ip.to_string()).collect();
                ("pod", ips.join(","), mac)
            }
            PortRole::Host { peer_mac } => ("host", "-".into(), peer_mac),
            PortRole::Uplink { mac } => ("uplink", "-".into(), mac),
        };
        let pod = p.pod.as_ref().map_or_else(|| "-".to_string(), |p| p.to_string());
        let link = match p.link {
            vswitch_api::api::LinkState::Up => "up",
            vswitch_api::api::LinkState::Gone => "gone",
        };
        let c = p.counters;
        println!(
            "{:<4} {:<22} {:<24} {:<6} {:<5} {:<16} {:<18} {:>5} {:>10} {:>12} {:>10} {:>12}",
            p.id,
            p.name,
            pod,
            role,
            link,
            ip,
            mac.to_string(),
            p.mtu,
            c.rx_packets,
            c.rx_bytes,
            c.tx_packets,
            c.tx_bytes
        );
    }
}

fn print_routes(routes: Vec<RouteView>) {
    println!("{:<20} {:<22} {:<20} {:>5} ORIGIN", "PREFIX", "PORT", "NEXT HOP", "MTU");
    for r in routes {
        println!("{:<20} {:<22} {:<20} {:>5} {}", r.prefix, r.port, r.next_hop, r.mtu, r.origin);
    }
}

fn print_neighbors(neighbors: Vec<NeighborView>) {
    println!("{:<16} {:<18} {:<20} STATE", "IP", "MAC", "PORT");
    for n in neighbors {
        let mac = n.mac.map_or_else(|| "-".to_string(), |m| m.to_string());
        println!("{:<16} {:<18} {:<20} {}", n.ip, mac, n.port, n.state);
    }
}

/// Provider mode: the NIC's addresses and the VPC API's health.
fn print_provider(v: &IpamView, p: &vswitch_api::api::ProviderView) {
    let list = |ips: &[std::net::IpAddr]| {
        if ips.is_empty() {
            "-".to_string()
        } else {
            ips.iter().map(|ip| ip.to_string()).collect::<Vec<_>>().join(" ")
        }
    };
    println!("provider {}   NIC {}   {}", p.provider, p.nic, v.store);
    if let Some(identity) = &p.identity {
        println!("node: {identity}");
    }
    let health = match (p.api_healthy, p.backing_off_ms) {
        (_, Some(ms)) => format!("backing off ({ms} ms left)"),
        (Some(false), None) => "unreachable".into(),
        (Some(true), None) => "ok".into(),
        (None, None) => "not called yet".into(),
    };
    println!("API: {health}   subnet free: {}", if v.store_reachable { v.free.to_string() } else { "?".into() });
    println!("pods: {}   warm: {}", v.this_node.assigned, list(&p.warm));
    println!("cooling: {}   deletes queued: {}", list(&p.cooling), list(&p.deleting));
    for (ip, why) in &p.undeliverable {
        println!("not served: {ip}: {why}");
    }
    match &p.nic_secondary {
        Some(ips) => println!("NIC's secondary IPs (last reconcile): {}", list(ips)),
        None => println!("NIC's secondary IPs: not described yet"),
    }
    match &p.fabric_probe {
        Some(f) => println!(
            "fabric probe: last {} {} after {} ms ({} probed, mean {} ms, {} timed out, {} failed)",
            f.last_ip,
            f.last_result,
            f.last_ms,
            f.probes,
            f.total_ms / f.probes.max(1),
            f.timeouts,
            f.errors
        ),
        None => println!("fabric probe: no new address probed yet"),
    }
    for c in &p.calls {
        println!("  {:<26} {:<14} {:>6} calls {:>8} ms", c.action, c.result, c.calls, c.millis);
    }
    for e in &p.last_errors {
        println!("  error: {e}");
    }
}

fn print_ipam(v: IpamView) {
    if let Some(p) = &v.provider {
        return print_provider(&v, p);
    }
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let until = |t: u64| if t > now { format!("in {}s", t - now) } else { "now".to_string() };
    println!("node {}   store {}", v.node, v.store);
    println!(
        "pools {}   excluded {}",
        v.pools.join(", "),
        if v.exclude.is_empty() { "-".into() } else { v.exclude.join(", ") }
    );
    let l = &v.this_node;
    println!(
        "this node: {} assigned, {} warm (target {}), {} changes not yet in the store, {} addresses lost to fencing",
        l.assigned, l.warm, l.warm_target, l.pending_sync, l.fenced_total
    );
    if !v.store_reachable {
        println!("the store is unreachable: {}", v.store_error.unwrap_or_default());
        return;
    }
    let held: usize =
        v.nodes.iter().map(|n| n.warm.len() + n.assigned.len()).sum::<usize>() + v.sticky.len() + v.cooling.len();
    println!("pool: {} held ({} sticky, {} cooling)", held, v.sticky.len(), v.cooling.len());
    // Per family from the view's pools (a /64 holds 2^64 addresses: counted in u128 here).
    for (family, size, free) in vswitch::ipam::node::pool_summary(&v) {
        println!("  {family}: {size} usable, {free} free");
    }
    for n in &v.nodes {
        let state = match (n.live, n.quarantine_ends) {
            (true, _) => "live".to_string(),
            (false, Some(t)) => format!("DOWN, addresses reclaimed {}", until(t)),
            (false, None) => "DOWN".to_string(),
        };
        println!("\nnode {} ({state}): {} pods, {} warm", n.name, n.assigned.len(), n.warm.len());
        for a in &n.assigned {
            let pod = a.pod.as_ref().map_or_else(|| "-".to_string(), |p| p.to_string());
            println!("  {:<40} {:<32} {}:{}", a.ip.to_string(), pod, a.owner.container_id, a.owner.ifname);
        }
        if !n.warm.is_empty() {
            println!("  warm: {}", n.warm.iter().map(|ip| ip.to_string()).collect::<Vec<_>>().join(" "));
        }
    }
    if !v.sticky.is_empty() {
        println!("\nsticky (held for a pod that may come back on any node):");
        for s in &v.sticky {
            println!(
                "  {:<40} {:<32} last on {}, held until {}",
                s.ip.to_string(),
                s.pod.to_string(),
                s.last_node,
                until(s.until)
            );
        }
    }
    if !v.cooling.is_empty() {
        println!("\ncooling (released; free again after the reuse delay):");
        for c in &v.cooling {
            println!("  {:<40} last on {:<16} free {}", c.ip.to_string(), c.last_node, until(c.free_at));
        }
    }
}

fn print_counters(c: CountersView) {
    println!("fib routes: {}   neighbours: {}", c.fib_routes, c.neighbors);
    // TX SEGMENTED: UDP GSO frames cut into datagrams for a port that could not take them whole.
    println!(
        "{:<22} {:>12} {:>14} {:>12} {:>14} {:>12}",
        "PORT", "RX PKTS", "RX BYTES", "TX PKTS", "TX BYTES", "TX SEGMENTED"
    );
    for (name, t) in c.ports {
        println!(
            "{:<22} {:>12} {:>14} {:>12} {:>14} {:>12}",
            name, t.rx_packets, t.rx_bytes, t.tx_packets, t.tx_bytes, t.tx_segmented
        );
    }
    println!("drops:");
    for (reason, n) in c.drops.into_iter().filter(|(_, n)| *n > 0) {
        println!("  {reason:<28} {n:>12}");
    }
}

/// Prints the sampled drops; with `follow`, asks again every half second for new ones.
fn follow_drops(client: &Client, json: bool, follow: bool, seconds: Option<u64>) -> Result<(), ClientError> {
    let until = seconds.map(|s| std::time::Instant::now() + std::time::Duration::from_secs(s));
    let mut after = 0;
    if !json {
        println!(
            "{:<12} {:<22} {:<24} {:<26} {:<22} {:<22} PROTO",
            "TIME", "PORT", "POD", "REASON", "SOURCE", "DESTINATION"
        );
    }
    loop {
        let view: DropsView = client.call(&Request::Drops { after })?;
        if json && !follow {
            println!("{}", serde_json::to_string_pretty(&view).expect("serialises"));
            return Ok(());
        }
        after = view.next;
        for d in view.samples {
            if json {
                println!("{}", serde_json::to_string(&d).expect("serialises"));
                continue;
            }
            let at = |ip: Option<IpAddr>, port: Option<u16>| match (ip, port) {
                (Some(IpAddr::V6(ip)), Some(port)) => format!("[{ip}]:{port}"),
                (Some(ip), Some(port)) => format!("{ip}:{port}"),
                (Some(ip), None) => ip.to_string(),
                _ => "-".to_string(),
            };
            let secs = d.unix_ms / 1000;
            let time =
                format!("{:02}:{:02}:{:02}.{:03}", secs / 3600 % 24, secs / 60 % 60, secs % 60, d.unix_ms % 1000);
            let pod = d.pod.as_ref().map_or_else(|| "-".to_string(), |p| p.to_string());
            println!(
                "{:<12} {:<22} {:<24} {:<26} {:<22} {:<22} {}",
                time,
                d.port,
                pod,
                d.reason,
                at(d.src, d.src_port),
                at(d.dst, d.dst_port),
                d.protocol.as_deref().unwrap_or("-")
            );
        }
        if !follow || until.is_some_and(|u| std::time::Instant::now() >= u) {
            return Ok(());
        }
        std::thread::sleep(std::time::Duration::from_millis(500));
    }
}

fn print_trace(t: TraceView) {
    for (stage, detail) in t.steps {
        println!("{stage:>10}: {detail}");
    }
    if let Some(route) = t.route {
        println!("     route: {route}");
    }
    println!("   verdict: {}", t.verdict);
    if let Some(output) = t.output {
        println!("    leaves: {output}");
    }
}
