//! vswitchctl: talks to vswitchd's API socket; human tables by default, `--json` for scripts.

use std::io::{BufRead, BufReader, Write};
use std::net::Ipv4Addr;
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use vswitch::control::api::{CountersView, NeighborView, PortView, Reply, Request, RouteView, TraceView};
use vswitch::state::PortRole;
use vswitch::wire::MacAddr;

#[derive(Parser)]
#[command(name = "vswitchctl", about = "Control and inspect vswitchd")]
struct Cli {
    #[arg(long, global = true, default_value = "/run/vswitchd/vswitchd.sock")]
    socket: PathBuf,
    /// Print the daemon's JSON reply instead of a table.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Attach a pod's TAP.
    AddPort {
        name: String,
        #[arg(long)]
        netns: PathBuf,
        #[arg(long, default_value = "eth0")]
        ifname: String,
        #[arg(long)]
        ip: Ipv4Addr,
        #[arg(long)]
        mac: MacAddr,
        #[arg(long)]
        mtu: Option<u16>,
    },
    DelPort {
        name: String,
        /// Also delete the port's TAP device.
        #[arg(long)]
        remove_device: bool,
    },
    /// Route a prefix out of a port.
    AddRoute {
        prefix: String,
        port: String,
    },
    DelRoute {
        prefix: String,
    },
    /// Is the daemon up (ports attached, state generation).
    Status,
    Ports,
    Routes,
    Neighbors,
    Counters,
    /// Show what the pipeline does with a frame (hex, from the Ethernet header) on a port.
    Trace {
        #[arg(long)]
        port: String,
        frame: String,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let request = match cli.command {
        Command::AddPort { name, netns, ifname, ip, mac, mtu } => {
            Request::AddPort { name, netns, ifname, ip, mac, mtu }
        }
        Command::DelPort { name, remove_device } => Request::DelPort { name, remove_device },
        Command::AddRoute { prefix, port } => Request::AddRoute { prefix, port },
        Command::DelRoute { prefix } => Request::DelRoute { prefix },
        Command::Status => Request::Status,
        Command::Ports => Request::ListPorts,
        Command::Routes => Request::ListRoutes,
        Command::Neighbors => Request::ListNeighbors,
        Command::Counters => Request::Counters,
        Command::Trace { port, frame } => Request::Trace { port, frame },
    };
    let reply = match call(&cli.socket, &request) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("vswitchctl: {}: {e}", cli.socket.display());
            return ExitCode::from(3);
        }
    };
    if cli.json {
        println!("{}", serde_json::to_string_pretty(&reply).expect("serialisable"));
    } else if !reply.ok {
        eprintln!("vswitchctl: {}", reply.error.as_deref().unwrap_or("failed"));
    } else {
        print_human(&request, reply.result.unwrap_or_default());
    }
    if reply.ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

fn call(socket: &PathBuf, request: &Request) -> std::io::Result<Reply> {
    let mut stream = UnixStream::connect(socket)?;
    let mut line = serde_json::to_vec(request)?;
    line.push(b'\n');
    stream.write_all(&line)?;
    let mut reply = String::new();
    BufReader::new(stream).read_line(&mut reply)?;
    serde_json::from_str(&reply).map_err(std::io::Error::other)
}

fn print_human(request: &Request, result: serde_json::Value) {
    match request {
        Request::ListPorts => {
            let ports: Vec<PortView> = serde_json::from_value(result).unwrap_or_default();
            println!(
                "{:<4} {:<20} {:<5} {:<16} {:<18} {:>5} {:>12} {:>12} {:>12} {:>12}",
                "ID", "NAME", "ROLE", "IP", "MAC", "MTU", "RX PKTS", "RX BYTES", "TX PKTS", "TX BYTES"
            );
            for p in ports {
                let (role, ip, mac) = match p.role {
                    PortRole::Pod { ip, mac } => ("pod", ip.to_string(), mac.to_string()),
                    PortRole::Host { peer_mac } => ("host", "-".into(), peer_mac.to_string()),
                    PortRole::Uplink { mac, .. } => ("uplink", "-".into(), mac.to_string()),
                };
                let c = p.counters;
                println!(
                    "{:<4} {:<20} {:<5} {:<16} {:<18} {:>5} {:>12} {:>12} {:>12} {:>12}",
                    p.id, p.name, role, ip, mac, p.mtu, c.rx_packets, c.rx_bytes, c.tx_packets, c.tx_bytes
                );
            }
        }
        Request::ListRoutes => {
            let routes: Vec<RouteView> = serde_json::from_value(result).unwrap_or_default();
            println!("{:<20} {:<20} {:<20} {:>5}", "PREFIX", "PORT", "NEXT HOP", "MTU");
            for r in routes {
                println!("{:<20} {:<20} {:<20} {:>5}", r.prefix, r.port, r.next_hop, r.mtu);
            }
        }
        Request::Counters => {
            let Ok(c) = serde_json::from_value::<CountersView>(result) else { return };
            println!("fib routes: {}   neighbours: {}", c.fib_routes, c.neighbors);
            println!("{:<20} {:>12} {:>14} {:>12} {:>14}", "PORT", "RX PKTS", "RX BYTES", "TX PKTS", "TX BYTES");
            for (name, t) in c.ports {
                println!(
                    "{:<20} {:>12} {:>14} {:>12} {:>14}",
                    name, t.rx_packets, t.rx_bytes, t.tx_packets, t.tx_bytes
                );
            }
            println!("drops:");
            for (reason, n) in c.drops.into_iter().filter(|(_, n)| *n > 0) {
                println!("  {reason:<28} {n:>12}");
            }
        }
        Request::Trace { .. } => {
            let Ok(t) = serde_json::from_value::<TraceView>(result) else { return };
            for (stage, detail) in t.steps {
                println!("{stage:>10}: {detail}");
            }
            println!("   verdict: {}", t.verdict);
        }
        Request::Status => println!("up: {} ports, generation {}", result["ports"], result["generation"]),
        Request::ListNeighbors => {
            let neighbors: Vec<NeighborView> = serde_json::from_value(result).unwrap_or_default();
            println!("{:<16} {:<18} {:<20} STATE", "IP", "MAC", "PORT");
            for n in neighbors {
                let mac = n.mac.map_or_else(|| "-".to_string(), |m| m.to_string());
                println!("{:<16} {:<18} {:<20} {}", n.ip, mac, n.port, n.state);
            }
        }
        Request::AddPort { .. } | Request::DelPort { .. } | Request::AddRoute { .. } | Request::DelRoute { .. } => {
            println!("ok");
        }
    }
}
