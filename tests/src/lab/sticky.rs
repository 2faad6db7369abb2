//! The sticky pod's move ([`super::IpamMode::Etcd`]): `default/sticky-0` is deleted on its node
//! through vpc-cni DEL and created again, with the same name but a new sandbox, on the next node
//! through vpc-cni ADD, as a StatefulSet pod moves. It must keep its address, and the VPC must
//! find it on the new node at once: the VM and a pod that talked to it on the old node (so
//! their ARP caches and the switches' neighbour tables point at the old node) must reach it
//! within [`STICKY_LIMIT`] of the ADD, which only the new node's gratuitous ARP makes possible.

use std::io::{BufRead, BufReader};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use serde::Serialize;
use serde_json::Value;

use super::{
    kill9, pod_name, start_server, LabPod, PathCheck, Topology, POD_NAMESPACE, SERVER_PORT, STICKY_POD, VM_IP,
};
use crate::netns::{binary, pids_in, try_run, unique, Netns};

/// How soon after the ADD the moved pod must answer (etcd mode: only gratuitous ARP moves it).
pub const STICKY_LIMIT: Duration = Duration::from_secs(1);
/// The same on the VPC (`--vpc ucloud`): `MoveSecondaryIPMac` and the flow-table push included.
pub const STICKY_LIMIT_VPC: Duration = Duration::from_secs(2);
/// How long the new node's ADD is retried while the old node's release is not in etcd yet.
const ADD_RETRY_FOR: Duration = Duration::from_secs(10);
/// How long to wait for an answer before calling the path broken.
const ANSWER_WITHIN: Duration = Duration::from_secs(5);

/// What the move showed.
#[derive(Debug, Clone, Serialize)]
pub struct StickyMove {
    /// `default/sticky-0`.
    pub pod: String,
    /// Nodes, from 0.
    pub from_node: usize,
    pub to_node: usize,
    pub ip_before: Ipv4Addr,
    /// The address the ADD on the new node gave (none: it failed).
    pub ip_after: Option<Ipv4Addr>,
    /// ADDs on the new node until one succeeded (the earlier ones were told to try again later).
    pub add_attempts: u32,
    /// From the DEL on the old node to the successful ADD on the new one.
    pub del_to_add_ms: f64,
    /// The pod that reached it before and after (on a third node, or on the old node).
    pub observer: String,
    /// From the ADD's return to the first answer, from the VM and from the observer pod.
    pub vm_ms: Option<f64>,
    pub pod_ms: Option<f64>,
    /// The rows of `vpc-lab check`.
    pub checks: Vec<PathCheck>,
}

impl StickyMove {
    pub fn ok(&self) -> bool {
        self.checks.iter().all(|c| c.ok)
    }
}

/// A move and what the owner of the lab must now keep or forget.
pub(super) struct Moved {
    pub report: StickyMove,
    /// Deleted already.
    pub old_netns: String,
    pub new_netns: Netns,
    pub server: Child,
    /// The old sandbox's server.
    pub killed: Vec<u32>,
}

/// Runs `f` on a thread inside network namespace `ns`.
fn in_netns<T: Send>(ns: &str, f: impl FnOnce() -> T + Send) -> Result<T, String> {
    let path = Path::new("/run/netns").join(ns);
    std::thread::scope(|s| {
        s.spawn(move || {
            let file = std::fs::File::open(&path).map_err(|e| format!("{}: {e}", path.display()))?;
            nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET)
                .map_err(|e| format!("entering {}: {e}", path.display()))?;
            Ok(f())
        })
        .join()
        .expect("the namespace thread panicked")
    })
}

/// One connection to the lab's server at `to`: its answer line.
fn ask(to: SocketAddr, timeout: Duration) -> std::io::Result<String> {
    let stream = TcpStream::connect_timeout(&to, timeout)?;
    stream.set_read_timeout(Some(timeout))?;
    let mut line = String::new();
    BufReader::new(stream).read_line(&mut line)?;
    Ok(line)
}

/// From namespace `ns`, connects to the sticky pod at `to` again and again (each attempt gives
/// up after 100 ms, so a lost SYN costs no 1 s retransmission) until it answers; returns the
/// time since `since` and the peer address it saw.
fn first_answer(ns: &str, to: Ipv4Addr, since: Instant) -> Result<(f64, String), String> {
    in_netns(ns, || {
        let addr = SocketAddr::from((to, SERVER_PORT));
        loop {
            let error = match ask(addr, Duration::from_millis(100)) {
                Ok(line) if line.starts_with(&format!("name={STICKY_POD} ")) => {
                    let peer = line.split_whitespace().find_map(|f| f.strip_prefix("peer=")).unwrap_or("");
                    let peer = peer.parse::<SocketAddr>().map_or_else(|_| peer.to_string(), |a| a.ip().to_string());
                    return Ok((since.elapsed().as_secs_f64() * 1e3, peer));
                }
                Ok(line) => format!("answered by someone else: {}", line.trim()),
                Err(e) => e.to_string(),
            };
            if since.elapsed() > ANSWER_WITHIN {
                return Err(format!("no answer within {ANSWER_WITHIN:?}: {error}"));
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    })?
}

/// The MAC in `ip -j neigh` output for the one entry there, if it has one.
fn neigh_mac(out: &std::process::Output) -> Option<String> {
    let entries: Value = serde_json::from_slice(&out.stdout).ok()?;
    entries.as_array()?.iter().find_map(|e| e["lladdr"].as_str().map(str::to_string))
}

impl Topology {
    pub fn sticky_pod(&self) -> Option<&LabPod> {
        self.pod(STICKY_POD)
    }

    /// The MAC the VPC reaches node `node`'s pods at: its NIC's (host-routed, proxy-ARP) or its
    /// uplink's (answered by vswitchd).
    fn vpc_mac(&self, node: usize) -> String {
        let nic = match self.mode {
            super::UplinkMode::HostRouted => "eth0",
            super::UplinkMode::Uplink => "up0",
        };
        let out = try_run(&["ip", "netns", "exec", &self.nodes[node], "cat", &format!("/sys/class/net/{nic}/address")]);
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    /// The VM's ARP entry for `ip`.
    fn vm_arp(&self, ip: Ipv4Addr) -> Option<String> {
        neigh_mac(&try_run(&["ip", "-n", &self.vm, "-j", "neigh", "show", "to", &ip.to_string(), "dev", "eth0"]))
    }

    /// Where node `node` sends traffic for `ip` on the VPC subnet: its kernel's ARP entry on
    /// eth0 (host-routed) or its vswitchd's neighbour entry (uplink). None: it has none (the
    /// address is, or was, one of its own pods).
    fn next_hop(&self, node: usize, ip: Ipv4Addr) -> Option<String> {
        match self.mode {
            super::UplinkMode::HostRouted => neigh_mac(&try_run(&[
                "ip",
                "-n",
                &self.nodes[node],
                "-j",
                "neigh",
                "show",
                "to",
                &ip.to_string(),
                "dev",
                "eth0",
            ])),
            super::UplinkMode::Uplink => {
                let out = Command::new(binary("vswitchctl"))
                    .arg("--socket")
                    .arg(&self.sockets[node])
                    .args(["--json", "neighbors"])
                    .output()
                    .ok()?;
                let entries: Value = serde_json::from_slice(&out.stdout).ok()?;
                entries
                    .as_array()?
                    .iter()
                    .find(|e| e["ip"] == ip.to_string())
                    .and_then(|e| e["mac"].as_str().map(str::to_string))
            }
        }
    }

    /// Moves the sticky pod to the next node: DEL on its node, a new sandbox with the same pod
    /// name ADDed on the next one (retried while vpc-cni says to try again later, as kubelet
    /// retries a sandbox), then the time until the VM and a pod reach it again. Panics unless
    /// the lab has a sticky pod ([`super::IpamMode::Etcd`]).
    pub(super) fn move_sticky(&mut self) -> Moved {
        let index =
            self.pods.iter().position(|p| p.name == STICKY_POD).expect("a sticky pod: the lab runs with --ipam etcd");
        let old = self.pods[index].clone();
        // The move is timed over IPv4; a dual-stack pod must keep its IPv6 address too.
        let old_ip = old.ip4();
        let n = self.nodes.len();
        let (from, to) = (old.node, (old.node + 1) % n);
        let node = |i: usize| format!("node{}", i + 1);
        // A pod on a third node, or (with two nodes) on the old node itself.
        let observer = (0..n).find(|&i| i != from && i != to).map_or_else(|| pod_name(from, 0), |i| pod_name(i, 0));
        let (observer_ns, observer_ip) = self.ns_of(&observer, super::Family::V4);
        let observer_node = self.pod(&observer).expect("the observer pod").node;
        let (old_mac, new_mac) = (self.vpc_mac(from), self.vpc_mac(to));
        let mac_name = |mac: &Option<String>| match mac {
            Some(m) if *m == old_mac => format!("{}'s MAC", node(from)),
            Some(m) if *m == new_mac => format!("{}'s MAC", node(to)),
            Some(m) => m.clone(),
            None => "none".to_string(),
        };
        let mut report = StickyMove {
            pod: format!("{POD_NAMESPACE}/{STICKY_POD}"),
            from_node: from,
            to_node: to,
            ip_before: old_ip,
            ip_after: None,
            add_attempts: 0,
            del_to_add_ms: 0.0,
            observer: observer.clone(),
            vm_ms: None,
            pod_ms: None,
            checks: Vec::new(),
        };

        // Before: the VM and the observer talk to it on the old node, so their ARP caches (or
        // the observer's switch) point at the old node.
        let vm_ping = self.ping(&self.vm, old_ip);
        let observer_ping = self.ping(&observer_ns, old_ip);
        let vm_before = self.vm_arp(old_ip);
        let observer_before = self.next_hop(observer_node, old_ip);

        // The pod is deleted: its containers (the server) stop, kubelet's DEL, the sandbox goes.
        let killed = pids_in(&old.netns);
        killed.iter().for_each(|&pid| kill9(pid));
        let deleted = Instant::now();
        let del = self.cni("DEL", from, &old.container_id, &Path::new("/run/netns").join(&old.netns), STICKY_POD);
        let _ = Command::new("ip").args(["netns", "del", &old.netns]).status();

        // The new pod of the same name on the next node: a new sandbox, its server listening
        // before the network is there.
        let ns = Netns::new(&format!("{}psticky", self.name));
        let server = start_server(&ns.name, STICKY_POD);
        let listening = in_netns(&ns.name, || {
            let deadline = Instant::now() + Duration::from_secs(5);
            while ask(SocketAddr::from(([127, 0, 0, 1], SERVER_PORT)), Duration::from_millis(100)).is_err() {
                if Instant::now() > deadline {
                    return false;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            true
        });
        let container = format!("{}-{STICKY_POD}-{}", self.name, unique(""));
        // Until the old node's release reaches etcd (its next upkeep, within a second), the
        // new node answers "try again later" (CNI error 11); the runtime then DELs the sandbox
        // and kubelet retries, which is what this does, every 50 ms.
        let add = loop {
            report.add_attempts += 1;
            match self.cni("ADD", to, &container, &ns.path(), STICKY_POD) {
                Err(e) if e.code == 11 && deleted.elapsed() < ADD_RETRY_FOR => {
                    let _ = self.cni("DEL", to, &container, &ns.path(), STICKY_POD);
                    std::thread::sleep(Duration::from_millis(50));
                }
                other => break other,
            }
        };
        let added = Instant::now();
        report.del_to_add_ms = (added - deleted).as_secs_f64() * 1e3;
        let (ip_after, ipv6_after) = add.as_ref().map_or((None, None), LabPod::from_result);
        report.ip_after = ip_after;
        self.pods[index] = LabPod {
            name: STICKY_POD.into(),
            netns: ns.name.clone(),
            container_id: container,
            ip: Some(ip_after.unwrap_or(old_ip)),
            ipv6: ipv6_after,
            node: to,
        };

        // After: the first answers, timed from the ADD's return.
        let ip = ip_after.unwrap_or(old_ip);
        let (vm_answer, pod_answer) = std::thread::scope(|s| {
            let vm = s.spawn(|| first_answer(&self.vm, ip, added));
            let pod = s.spawn(|| first_answer(&observer_ns, ip, added));
            (vm.join().expect("VM prober"), pod.join().expect("pod prober"))
        });
        let vm_after = self.vm_arp(ip);
        let observer_after = self.next_hop(observer_node, ip);

        let mut moved = PathCheck::new("sticky pod: same address, next node", &node(from), &node(to));
        moved.ok =
            del.is_ok() && add.is_ok() && ip_after == Some(old_ip) && ipv6_after == old.ipv6 && listening == Ok(true);
        moved.detail = match (&del, &add) {
            (Err(e), _) | (_, Err(e)) => e.message.clone(),
            _ if listening != Ok(true) => format!("the new sandbox's server did not start: {listening:?}"),
            _ => format!(
                "{} {}: DEL on {}, ADD on {} {:.0} ms later ({})",
                report.pod,
                match ip_after {
                    Some(ip) if ip == old_ip && ipv6_after == old.ipv6 => format!("kept {}", old.addresses()),
                    Some(ip) if ip == old_ip => format!("kept {ip}, but IPv6 {:?} became {ipv6_after:?}", old.ipv6),
                    Some(ip) => format!("had {}, got {ip}", old_ip),
                    None => format!("had {}, got none", old_ip),
                },
                node(from),
                node(to),
                report.del_to_add_ms,
                match report.add_attempts {
                    1 => "at the first try".to_string(),
                    n => format!("{n} tries: error 11 until {}'s release was in etcd", node(from)),
                },
            ),
        };

        let limit = if self.ipam == super::IpamMode::Vpc { STICKY_LIMIT_VPC } else { STICKY_LIMIT };
        let within = |answer: &Result<(f64, String), String>, own: std::net::IpAddr| -> (bool, Option<f64>, String) {
            match answer {
                Err(e) => (false, None, e.clone()),
                Ok((ms, peer)) => {
                    let fast = *ms <= limit.as_secs_f64() * 1e3;
                    let no_nat = *peer == own.to_string();
                    let text = format!(
                        "answered {ms:.0} ms after the ADD (limit {} ms){}",
                        limit.as_millis(),
                        if no_nat { String::new() } else { format!(", but saw {peer}, not {own}") }
                    );
                    (fast && no_nat, Some(*ms), text)
                }
            }
        };

        let (fast, ms, text) = within(&vm_answer, VM_IP.into());
        report.vm_ms = ms;
        let mut vm = PathCheck::new("sticky pod moved: VM -> pod", "vm", STICKY_POD);
        vm.elapsed_ms = ms;
        vm.ok =
            fast && vm_ping.is_ok() && vm_before.as_deref() == Some(&old_mac) && vm_after.as_deref() == Some(&new_mac);
        vm.detail = match &vm_ping {
            Err(e) => format!("before the move: ping: {e}"),
            Ok(_) => {
                format!("{text}; the VM's ARP entry: {} before, {} after", mac_name(&vm_before), mac_name(&vm_after))
            }
        };

        let (fast, ms, text) = within(&pod_answer, observer_ip);
        report.pod_ms = ms;
        let mut pod = PathCheck::new("sticky pod moved: pod -> pod", &observer, STICKY_POD);
        pod.elapsed_ms = ms;
        pod.ok = fast && observer_ping.is_ok() && observer_after.as_deref() == Some(&new_mac);
        let hop = |mac: &Option<String>| match mac {
            None => "local".to_string(),
            some => mac_name(some),
        };
        pod.detail = match &observer_ping {
            Err(e) => format!("before the move: ping: {e}"),
            Ok(_) => format!(
                "{text}; {}'s next hop for it: {} before, {} after",
                node(observer_node),
                hop(&observer_before),
                hop(&observer_after)
            ),
        };
        report.checks = vec![moved, vm, pod];
        Moved { report, old_netns: old.netns, new_netns: ns, server, killed }
    }
}
