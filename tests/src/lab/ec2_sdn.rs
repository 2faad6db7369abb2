//! `--vpc aws`'s SDN programmer (`vpc-lab ec2-sdn`): the fabric's SDN ([`super::sdn`], the same
//! nftables table and [`FlowTable`] as `--vpc ucloud`) programmed from EC2's own view. It reads
//! moto's `DescribeNetworkInterfaces` (moto directly, not through the lab's proxy: these reads are
//! the fabric's, never counted as the provider's calls nor faulted) every `poll_ms`, turns it into
//! flow entries (each ENI's addresses owned by the fabric port whose host has that ENI's MAC) and
//! applies the difference `push_delay_ms` after it saw it, in order, as the UCloud API's pushes
//! are applied (`vpc-lab flow delay`'s semantics). So an address is forwarded only once EC2 has it
//! on that ENI, and no more once EC2 has unassigned it.
//!
//! What EC2 (moto) does not enforce, the SDN does: an address on two ENIs at once stays with
//! the port that had it (or with neither if both are new), and is reported as a duplicate.
//!
//! What EC2's hypervisor does on `AttachNetworkInterface`, it does too ([`Plug`]): an ENI
//! attached to a node's instance at device index N > 0 gets a NIC in that node, `ethN` with the
//! ENI's MAC, left down, on a new fabric port that owns the ENI's addresses; detached or
//! deleted, the NIC goes. An ENI whose MAC no port has (attached to no node) forwards nothing,
//! and its addresses are reported as unplaced.
//!
//! A separate process rather than a thread of the lab, because `vpc-lab up` ends while the lab
//! runs on: it is started and stopped like the UCloud API server ([`super::vpc_api::VpcApi`]),
//! its pid kept in the lab's state for `vpc-lab down`. Its control socket answers the same
//! `{"op": "state"}` (with the SDN's `counters`) and `{"op": "faults", "faults":
//! {"push_delay_ms": N}}` as the API server's.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{IpAddr, TcpStream};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use ipnet::IpNet;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use super::sdn::{self, FlowTable, SdnError};
use super::vpc_api::vpc::{FixedHost, FlowChange, FlowEntry};

/// What `vpc-lab ec2-sdn --config` reads.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SyncConfig {
    /// moto's own `http://127.0.0.1:PORT` (the programmer runs in moto's namespace).
    pub upstream: String,
    /// The fabric's namespace, whose SDN this programs.
    pub fabric: String,
    /// Fabric port by the MAC of the host behind it (lower case).
    pub ports: BTreeMap<String, String>,
    /// Hosts EC2 does not describe (the VPC router, `.1` of the subnet).
    pub fixed_hosts: Vec<FixedHost>,
    pub gateway_port: Option<String>,
    /// The VPC's prefixes (`10.10.0.0/16`): the SDN routes everything else to the gateway.
    pub prefixes: Vec<String>,
    pub poll_ms: u64,
    pub push_delay_ms: u64,
    /// The nodes' instances, whose later ENIs are hot-plugged into them.
    #[serde(default)]
    pub nodes: Vec<NodeInstance>,
    /// Every node's namespace is named with this prefix.
    #[serde(default)]
    pub node_netns_prefix: String,
}

/// A node as EC2's hypervisor knows it: its instance, its primary NIC's MAC and fabric port.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NodeInstance {
    pub instance: String,
    pub mac: String,
    pub port: String,
}

/// An ENI as the programmer needs it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DescribedEni {
    pub id: String,
    pub mac: String,
    pub addresses: Vec<IpAddr>,
    /// The instance it is attached to, and at which device index.
    pub attached: Option<(String, u32)>,
}

#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    #[error("reading {0}: {1}")]
    Config(PathBuf, String),
    #[error("DescribeNetworkInterfaces from {upstream}: {detail}")]
    Describe { upstream: String, detail: String },
    #[error("programming the SDN: {0}")]
    Sdn(#[from] SdnError),
    #[error("the VPC prefix {0:?} is not a prefix")]
    Prefix(String),
    #[error("the control socket: {0}")]
    Control(std::io::Error),
}

/// Addresses on more than one ENI, and those ENIs.
pub type Duplicates = Vec<(IpAddr, Vec<String>)>;

/// The flow table EC2's view implies. `current` is what the fabric has (or will have once the
/// queued changes are applied): an address on two ENIs keeps the port it has there, or gets
/// none. Returns the entries, the duplicates (address, ENIs) and the unplaced ENIs (no port).
pub fn desired(
    enis: &[DescribedEni],
    ports: &BTreeMap<String, String>,
    fixed: &[FixedHost],
    current: &BTreeSet<FlowEntry>,
) -> (BTreeSet<FlowEntry>, Duplicates, Vec<DescribedEni>) {
    let mut entries: BTreeSet<FlowEntry> =
        fixed.iter().flat_map(|h| h.addresses.iter().map(|&addr| FlowEntry { port: h.port.clone(), addr })).collect();
    let mut holders: BTreeMap<IpAddr, Vec<(&str, Option<&String>)>> = BTreeMap::new();
    let mut unplaced = Vec::new();
    for eni in enis {
        let port = ports.get(&eni.mac.to_ascii_lowercase());
        if port.is_none() {
            unplaced.push(eni.clone());
        }
        for addr in &eni.addresses {
            holders.entry(*addr).or_default().push((eni.id.as_str(), port));
        }
    }
    let mut duplicates = Vec::new();
    for (addr, on) in holders {
        if let [(_, port)] = on.as_slice() {
            entries.extend(port.map(|p| FlowEntry { port: p.clone(), addr }));
            continue;
        }
        duplicates.push((addr, on.iter().map(|(id, _)| id.to_string()).collect()));
        // Refused: the port that has it keeps it; a newcomer gets nothing.
        let kept =
            on.iter().filter_map(|(_, p)| *p).find(|p| current.contains(&FlowEntry { port: (*p).clone(), addr }));
        entries.extend(kept.map(|p| FlowEntry { port: p.clone(), addr }));
    }
    (entries, duplicates, unplaced)
}

/// The changes from `from` to `to`: removals first, so a moved address is never on two ports.
pub fn changes(from: &BTreeSet<FlowEntry>, to: &BTreeSet<FlowEntry>) -> Vec<FlowChange> {
    let removed = from.difference(to).cloned().map(FlowChange::Remove);
    removed.chain(to.difference(from).cloned().map(FlowChange::Add)).collect()
}

/// The text of `node`'s child element `name`.
fn named<'a>(node: roxmltree::Node<'a, '_>, name: &str) -> Option<&'a str> {
    node.children().find(|c| c.is_element() && c.tag_name().name() == name).and_then(|c| c.text()).map(str::trim)
}

/// `DescribeNetworkInterfaces`' reply, parsed.
pub fn parse_enis(xml: &str) -> Result<Vec<DescribedEni>, String> {
    let doc = roxmltree::Document::parse(xml).map_err(|e| format!("not XML: {e}"))?;
    let set = doc
        .descendants()
        .find(|n| n.tag_name().name() == "networkInterfaceSet")
        .ok_or_else(|| format!("no networkInterfaceSet: {}", xml.chars().take(300).collect::<String>()))?;
    let mut enis = Vec::new();
    for item in set.children().filter(|c| c.is_element()) {
        let mut eni = DescribedEni {
            id: named(item, "networkInterfaceId").unwrap_or_default().to_string(),
            mac: named(item, "macAddress").unwrap_or_default().to_ascii_lowercase(),
            addresses: Vec::new(),
            attached: None,
        };
        if let Some(attachment) = item.children().find(|c| c.tag_name().name() == "attachment") {
            let index = named(attachment, "deviceIndex").and_then(|i| i.parse().ok());
            eni.attached = named(attachment, "instanceId").zip(index).map(|(i, d)| (i.to_string(), d));
        }
        let addresses = item.children().find(|c| c.tag_name().name() == "privateIpAddressesSet");
        for address in addresses.into_iter().flat_map(|a| a.children().filter(|c| c.is_element())) {
            eni.addresses.extend(named(address, "privateIpAddress").and_then(|a| a.parse::<IpAddr>().ok()));
        }
        enis.push(eni);
    }
    Ok(enis)
}

/// Every ENI, from moto at `upstream` (`http://HOST:PORT`). moto checks no signature; the
/// header only names the region its state is kept under.
pub fn describe(upstream: &str) -> Result<Vec<DescribedEni>, SyncError> {
    let fail = |detail: String| SyncError::Describe { upstream: upstream.to_string(), detail };
    let host = upstream.strip_prefix("http://").ok_or_else(|| fail("not an http:// URL".into()))?;
    let mut stream = TcpStream::connect(host).map_err(|e| fail(e.to_string()))?;
    stream.set_read_timeout(Some(Duration::from_secs(10))).map_err(|e| fail(e.to_string()))?;
    let body = "Action=DescribeNetworkInterfaces&Version=2016-11-15";
    let auth = format!(
        "AWS4-HMAC-SHA256 Credential=lab/20260101/{}/ec2/aws4_request, SignedHeaders=host, Signature=0",
        crate::ec2::REGION
    );
    let request = format!(
        "POST / HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/x-www-form-urlencoded\r\n\
         Authorization: {auth}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).map_err(|e| fail(e.to_string()))?;
    let mut reply = String::new();
    stream.read_to_string(&mut reply).map_err(|e| fail(e.to_string()))?;
    let (head, body) = reply.split_once("\r\n\r\n").ok_or_else(|| fail("no HTTP reply".into()))?;
    if !head.starts_with("HTTP/1.1 200") && !head.starts_with("HTTP/1.0 200") {
        return Err(fail(head.lines().next().unwrap_or("").to_string()));
    }
    // moto answers with Content-Length; a chunked body would not parse as XML and say so.
    parse_enis(body).map_err(fail)
}

/// A later ENI's NIC hot-plugged into its node, as EC2's hypervisor does on
/// `AttachNetworkInterface`: a veth pair whose node end, `ifname` (the kernel's name for device
/// index N, `ethN`), has the ENI's MAC and [`HOTPLUG_MTU`] and is left down (the node brings it
/// up), and whose other end is `port` on the fabric's bridge, owning the ENI's addresses in the
/// SDN.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Plug {
    pub instance: String,
    pub ifname: String,
    pub port: String,
    pub mac: String,
}

/// The MTU a hot-plugged NIC comes up with: its driver's default, not what the VPC carries
/// (on EC2, 1500 where the VPC and the first NIC have 9001). The lab's VPC carries 1500, so
/// the lab's driver default is lower, and the node must raise it.
pub const HOTPLUG_MTU: u32 = 1280;

/// The NICs EC2's view implies, by ENI: one per ENI past the first attached to a node.
pub fn plugs(enis: &[DescribedEni], nodes: &[NodeInstance]) -> BTreeMap<String, Plug> {
    enis.iter()
        .filter_map(|eni| {
            let (instance, index) = eni.attached.as_ref().filter(|(_, index)| *index > 0)?;
            let node = nodes.iter().find(|n| n.instance == *instance)?;
            let plug = Plug {
                instance: instance.clone(),
                ifname: format!("eth{index}"),
                port: format!("{}e{index}", node.port),
                mac: eni.mac.to_ascii_lowercase(),
            };
            Some((eni.id.clone(), plug))
        })
        .collect()
}

/// The hot-plugged NICs, kept in step with EC2's attachments.
#[derive(Debug, Default)]
struct Hotplug {
    fabric: String,
    node_netns_prefix: String,
    nodes: Vec<NodeInstance>,
    plugged: BTreeMap<String, Plug>,
}

/// `ip ARGS`: its stderr if it failed.
fn ip(args: &[&str]) -> Result<(), String> {
    let out = std::process::Command::new("ip").args(args).output().map_err(|e| format!("ip {args:?}: {e}"))?;
    match out.status.success() {
        true => Ok(()),
        false => Err(format!("ip {args:?}: {}", String::from_utf8_lossy(&out.stderr).trim())),
    }
}

impl Hotplug {
    /// Plugs the NICs of newly attached ENIs, unplugs those of detached (or deleted) ones.
    fn sync(&mut self, enis: &[DescribedEni]) -> Result<(), String> {
        let wanted = plugs(enis, &self.nodes);
        let gone: Vec<String> =
            self.plugged.iter().filter(|(id, p)| wanted.get(*id) != Some(p)).map(|(id, _)| id.clone()).collect();
        for id in gone {
            let plug = self.plugged.remove(&id).expect("listed");
            // The pair goes with either end (already gone if the node's namespace went).
            let _ = ip(&["-n", &self.fabric, "link", "del", &plug.port]);
            println!("ec2-sdn: unplugged {id} ({}) from {}", plug.ifname, plug.instance);
        }
        for (id, plug) in wanted {
            if self.plugged.contains_key(&id) {
                continue;
            }
            let node = self.node_netns(&plug.instance)?;
            let _ = ip(&["-n", &self.fabric, "link", "del", &plug.port]);
            let fabric = self.fabric.as_str();
            let made = ip(&[
                "-n",
                fabric,
                "link",
                "add",
                &plug.port,
                "type",
                "veth",
                "peer",
                "name",
                &plug.ifname,
                "mtu",
                &HOTPLUG_MTU.to_string(),
                "netns",
                &node,
            ])
            .and_then(|()| ip(&["-n", &node, "link", "set", &plug.ifname, "address", &plug.mac]))
            .and_then(|()| ip(&["-n", fabric, "link", "set", &plug.port, "master", "br0", "up"]));
            if let Err(e) = made {
                let _ = ip(&["-n", fabric, "link", "del", &plug.port]);
                return Err(e);
            }
            println!("ec2-sdn: plugged {id} into {} as {} (fabric port {})", plug.instance, plug.ifname, plug.port);
            self.plugged.insert(id, plug);
        }
        Ok(())
    }

    /// The namespace of the node running `instance`: the one whose link has its primary MAC.
    fn node_netns(&self, instance: &str) -> Result<String, String> {
        let node = self.nodes.iter().find(|n| n.instance == instance).ok_or(format!("{instance} is no node"))?;
        let names = std::fs::read_dir("/run/netns").map_err(|e| format!("/run/netns: {e}"))?;
        names
            .flatten()
            .filter_map(|e| e.file_name().to_str().map(String::from))
            .filter(|name| name.starts_with(&self.node_netns_prefix))
            .find(|name| {
                std::process::Command::new("ip")
                    .args(["-n", name, "-o", "link", "show"])
                    .output()
                    .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains(&node.mac))
            })
            .ok_or(format!("no namespace {}* has {instance}'s MAC {}", self.node_netns_prefix, node.mac))
    }

    /// The hot-plugged NICs' fabric ports, by MAC.
    fn ports(&self) -> impl Iterator<Item = (String, String)> + '_ {
        self.plugged.values().map(|p| (p.mac.clone(), p.port.clone()))
    }
}

/// Changes to make at `due`.
struct Push {
    due: Instant,
    changes: Vec<FlowChange>,
}

#[derive(Default)]
struct State {
    table: FlowTable,
    /// The flow table once every queued push is applied.
    target: BTreeSet<FlowEntry>,
    queue: VecDeque<Push>,
    push_delay_ms: u64,
    polls: u64,
    pushes_applied: u64,
    last_error: Option<String>,
    duplicates: Duplicates,
    unplaced: Vec<DescribedEni>,
    hotplug: Hotplug,
}

impl State {
    /// Hot-plugs and unplugs NICs as EC2's attachments say; the fabric ports by MAC after it.
    fn plug(&mut self, enis: &[DescribedEni], fixed: &BTreeMap<String, String>) -> BTreeMap<String, String> {
        if let Err(e) = self.hotplug.sync(enis) {
            eprintln!("ec2-sdn: {e}");
            self.last_error = Some(e);
        }
        fixed.clone().into_iter().chain(self.hotplug.ports()).collect()
    }
}

fn lock(m: &Mutex<State>) -> MutexGuard<'_, State> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Per node, a counter and a set of sender addresses, `arp_spoofed_request_<port>`: the ARP
/// requests (announcements, probes) `arp_spoofed` drops that came from the node's first NIC,
/// which must never announce a later ENI's address. Requests only: the lab's bridge floods a
/// later ENI's announcement to the node's first NIC too, whose proxy ARP answers it (EC2 floods
/// no ARP; replies are the kernel's, not vswitchd's).
fn spoofed_arp_counters(nodes: &[NodeInstance]) -> String {
    let table = sdn::TABLE;
    nodes
        .iter()
        .map(|n| {
            let (port, counter) = (&n.port, format!("arp_spoofed_request_{}", n.port));
            format!(
                "add counter bridge {table} {counter}\n\
                 add set bridge {table} {counter} {{ type ipv4_addr; flags dynamic; }}\n\
                 insert rule bridge {table} arp_in iifname \"{port}\" arp operation request arp saddr ip != 0.0.0.0 \
                 iifname . arp saddr ip != @own4 add @{counter} {{ arp saddr ip }} counter name {counter}\n"
            )
        })
        .collect()
}

/// Runs the programmer until the process is killed.
pub fn run(config_path: PathBuf, control: PathBuf) -> Result<(), SyncError> {
    let text = std::fs::read(&config_path).map_err(|e| SyncError::Config(config_path.clone(), e.to_string()))?;
    let config: SyncConfig =
        serde_json::from_slice(&text).map_err(|e| SyncError::Config(config_path.clone(), e.to_string()))?;
    let prefixes = config
        .prefixes
        .iter()
        .map(|p| p.parse::<IpNet>().map_err(|_| SyncError::Prefix(p.clone())))
        .collect::<Result<Vec<_>, _>>()?;
    sdn::run_nft(&config.fabric, &sdn::ruleset(config.gateway_port.as_deref(), &prefixes))?;
    sdn::run_nft(&config.fabric, &spoofed_arp_counters(&config.nodes))?;
    // The start: what EC2 has now, at once (the hosts' primary addresses).
    let hotplug = Hotplug {
        fabric: config.fabric.clone(),
        node_netns_prefix: config.node_netns_prefix.clone(),
        nodes: config.nodes.clone(),
        ..Hotplug::default()
    };
    let mut state = State { push_delay_ms: config.push_delay_ms, hotplug, ..State::default() };
    let enis = describe(&config.upstream)?;
    let ports = state.plug(&enis, &config.ports);
    let (entries, duplicates, unplaced) = desired(&enis, &ports, &config.fixed_hosts, &BTreeSet::new());
    if let Some(script) = state.table.apply(&changes(&BTreeSet::new(), &entries)) {
        sdn::run_nft(&config.fabric, &script)?;
    }
    (state.target, state.duplicates, state.unplaced, state.polls) = (entries, duplicates, unplaced, 1);
    let state = Arc::new(Mutex::new(state));
    let _ = std::fs::remove_file(&control);
    let listener = UnixListener::bind(&control).map_err(SyncError::Control)?;
    let (shared, fabric) = (state.clone(), config.fabric.clone());
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let _ = answer(&shared, &fabric, stream);
        }
    });
    println!("ec2-sdn: programming {} from {} every {} ms", config.fabric, config.upstream, config.poll_ms);
    let poll = Duration::from_millis(config.poll_ms);
    loop {
        let started = Instant::now();
        let described = describe(&config.upstream);
        let mut s = lock(&state);
        s.polls += 1;
        match described {
            Ok(enis) => {
                let ports = s.plug(&enis, &config.ports);
                let (entries, duplicates, unplaced) = desired(&enis, &ports, &config.fixed_hosts, &s.target);
                let delta = changes(&s.target, &entries);
                if !delta.is_empty() {
                    // In the order seen, never before an earlier push.
                    let due = (Instant::now() + Duration::from_millis(s.push_delay_ms))
                        .max(s.queue.back().map_or_else(Instant::now, |p| p.due));
                    s.queue.push_back(Push { due, changes: delta });
                }
                (s.target, s.duplicates, s.unplaced) = (entries, duplicates, unplaced);
            }
            Err(e) => s.last_error = Some(e.to_string()),
        }
        let now = Instant::now();
        let mut due = Vec::new();
        while s.queue.front().is_some_and(|p| p.due <= now) {
            due.extend(s.queue.pop_front().expect("not empty").changes);
            s.pushes_applied += 1;
        }
        if let Some(script) = s.table.apply(&due) {
            if let Err(e) = sdn::run_nft(&config.fabric, &script) {
                eprintln!("ec2-sdn: {e}");
                s.last_error = Some(e.to_string());
            }
        }
        // Until the next poll or the next push, whichever is first.
        let next = s.queue.front().map_or(started + poll, |p| p.due.min(started + poll));
        drop(s);
        std::thread::sleep(next.saturating_duration_since(Instant::now()).max(Duration::from_millis(5)));
    }
}

/// One control request (a JSON line) and its answer.
fn answer(state: &Mutex<State>, fabric: &str, stream: UnixStream) -> std::io::Result<()> {
    let mut line = String::new();
    BufReader::new((&stream).take(1 << 16)).read_line(&mut line)?;
    let request: Value = serde_json::from_str(&line).unwrap_or(Value::Null);
    let reply = match request["op"].as_str() {
        Some("state") => {
            let counters = match sdn::counters(fabric) {
                Ok(c) => json!(c),
                Err(e) => json!({"error": e.to_string()}),
            };
            let s = lock(state);
            json!({
                "flow_table": s.table.entries(),
                "pending_pushes": s.queue.len(),
                "pushes_applied": s.pushes_applied,
                "polls": s.polls,
                "last_error": s.last_error,
                "duplicates": s.duplicates,
                "unplaced": s.unplaced,
                "plugged": s.hotplug.plugged,
                "faults": {"push_delay_ms": s.push_delay_ms},
                "counters": counters,
            })
        }
        Some("faults") => match request["faults"]["push_delay_ms"].as_u64() {
            Some(ms) => {
                lock(state).push_delay_ms = ms;
                json!({"faults": {"push_delay_ms": ms}})
            }
            None => json!({"error": "faults: only push_delay_ms is served here"}),
        },
        _ => json!({"error": format!("unknown request {line:?}: ops are state and faults")}),
    };
    (&stream).write_all(format!("{reply}\n").as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn eni(id: &str, mac: &str, addrs: &[&str]) -> DescribedEni {
        let addresses = addrs.iter().map(|a| a.parse().unwrap()).collect();
        DescribedEni { id: id.into(), mac: mac.into(), addresses, attached: None }
    }

    fn entry(port: &str, addr: &str) -> FlowEntry {
        FlowEntry { port: port.into(), addr: addr.parse().unwrap() }
    }

    #[test]
    fn each_enis_addresses_go_to_the_port_with_its_mac_and_a_duplicate_is_refused() {
        let ports: BTreeMap<String, String> =
            [("02:00:00:00:00:01", "fn1"), ("02:00:00:00:00:02", "fn2")].map(|(m, p)| (m.into(), p.into())).into();
        let gateway =
            FixedHost { name: "gateway".into(), port: "fgw".into(), addresses: vec!["10.10.0.1".parse().unwrap()] };
        let enis = [
            eni("eni-1", "02:00:00:00:00:01", &["10.10.0.11", "10.10.7.7"]),
            eni("eni-2", "02:00:00:00:00:02", &["10.10.0.12"]),
            eni("eni-9", "02:00:00:00:00:09", &["10.10.9.9"]),
        ];
        let (entries, dups, unplaced) = desired(&enis, &ports, std::slice::from_ref(&gateway), &BTreeSet::new());
        let want: BTreeSet<FlowEntry> = [
            entry("fgw", "10.10.0.1"),
            entry("fn1", "10.10.0.11"),
            entry("fn1", "10.10.7.7"),
            entry("fn2", "10.10.0.12"),
        ]
        .into();
        assert_eq!(entries, want);
        assert!(dups.is_empty());
        assert_eq!(unplaced.iter().map(|e| e.id.as_str()).collect::<Vec<_>>(), ["eni-9"], "no port: forwards nothing");

        // 10.10.7.7 also on eni-2: fn1 keeps it, and it is reported.
        let both =
            [eni("eni-1", "02:00:00:00:00:01", &["10.10.7.7"]), eni("eni-2", "02:00:00:00:00:02", &["10.10.7.7"])];
        let (kept, dups, _) = desired(&both, &ports, &[], &want);
        assert_eq!(kept, [entry("fn1", "10.10.7.7")].into());
        assert_eq!(dups, vec![("10.10.7.7".parse().unwrap(), vec!["eni-1".to_string(), "eni-2".to_string()])]);
        let (none, _, _) = desired(&both, &ports, &[], &BTreeSet::new());
        assert!(none.is_empty(), "new on both at once: neither");

        // A move (unassigned on eni-1, assigned on eni-2): removal first.
        let moved = [eni("eni-2", "02:00:00:00:00:02", &["10.10.7.7"])];
        let (after, _, _) = desired(&moved, &ports, &[], &kept);
        assert_eq!(
            changes(&kept, &after),
            vec![FlowChange::Remove(entry("fn1", "10.10.7.7")), FlowChange::Add(entry("fn2", "10.10.7.7"))]
        );
    }

    #[test]
    fn moto_replies_parse() {
        let xml = r#"<DescribeNetworkInterfacesResponse xmlns="http://ec2.amazonaws.com/doc/2016-11-15/">
            <networkInterfaceSet><item><networkInterfaceId>eni-1</networkInterfaceId>
            <macAddress>02:00:00:AB:00:01</macAddress><privateIpAddress>10.10.0.11</privateIpAddress>
            <privateIpAddressesSet><item><privateIpAddress>10.10.0.11</privateIpAddress><primary>true</primary></item>
            <item><privateIpAddress>10.10.7.7</privateIpAddress><primary>false</primary></item></privateIpAddressesSet>
            <attachment><deviceIndex>1</deviceIndex><instanceId>i-3</instanceId><status>attached</status></attachment>
            </item></networkInterfaceSet></DescribeNetworkInterfacesResponse>"#;
        let mut want = eni("eni-1", "02:00:00:ab:00:01", &["10.10.0.11", "10.10.7.7"]);
        want.attached = Some(("i-3".into(), 1));
        assert_eq!(parse_enis(xml).unwrap(), vec![want]);
        assert!(parse_enis("<Response><Errors/></Response>").is_err());
    }

    #[test]
    fn a_later_eni_attached_to_a_node_gets_a_nic_there_and_no_other_does() {
        let nodes = [NodeInstance { instance: "i-3".into(), mac: "02:00:00:00:00:03".into(), port: "fn3".into() }];
        let attached = |id: &str, mac: &str, to: Option<(&str, u32)>| {
            let mut e = eni(id, mac, &[]);
            e.attached = to.map(|(i, d)| (i.to_string(), d));
            e
        };
        let enis = [
            attached("eni-primary", "02:00:00:00:00:03", Some(("i-3", 0))),
            attached("eni-second", "02:00:00:00:AA:01", Some(("i-3", 1))),
            attached("eni-vm", "02:00:00:00:00:09", Some(("i-9", 1))),
            attached("eni-free", "02:00:00:00:00:0a", None),
        ];
        let want = Plug {
            instance: "i-3".into(),
            ifname: "eth1".into(),
            port: "fn3e1".into(),
            mac: "02:00:00:00:aa:01".into(),
        };
        assert_eq!(plugs(&enis, &nodes), [("eni-second".to_string(), want)].into());
        assert!(plugs(&enis[..1], &nodes).is_empty(), "detached: unplugged");
    }
}
