//! The lab every test here starts: the fabric bridge, three etcd members and the nodes with
//! their vswitchd, and what the tests ask of it (etcd's records, an audit of the pool, waiting).

use std::collections::{BTreeMap, HashSet};
use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, TcpStream};
use std::path::Path;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use vpc_lab::etcd::{require_etcd, EtcdCluster};
use vpc_lab::netns::{require_root, Binaries, Daemon, Netns, TempDir};
use vswitch::ipam::record::{AddressRecord, Keys};
use vswitch::ipam::Pool;
use vswitch_api::api::{AssignSpec, Attachment, IpamView};
use vswitch_api::client::{Client, ClientError};

/// 30 usable addresses in the /27 (not its network and broadcast address) and 2 in the /31.
pub const POOLS: [&str; 2] = ["10.99.0.0/27", "10.99.0.32/31"];
pub const POOL_SIZE: usize = 32;
pub const PREFIX: &str = "/vpc-ipam/itest";
pub const LEASE_TTL: u64 = 2;
pub const QUARANTINE: u64 = 2;
/// The interface each namespace has on the fabric.
pub const FABRIC_DEV: &str = "fab0";
/// What the daemons log when they lose an address while cut off (ipam/node/upkeep.rs).
pub const FENCING_MESSAGE: &str = "address lost while this node was cut off";

/// Held for a whole test (declared first, so it is released after everything else is gone): the
/// tests of this file run one at a time whatever `--test-threads` says.
pub fn one_at_a_time() -> MutexGuard<'static, ()> {
    pub static TURN: Mutex<()> = Mutex::new(());
    TURN.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

pub fn etcd_ip(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(10, 77, 0, 11 + i as u8)
}

pub fn node_ip(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(10, 77, 0, 21 + i as u8)
}

/// `ns` on the fabric bridge with `ip`/24 (its end of the veth is `FABRIC_DEV`).
pub fn wire(fabric: &Netns, ns: &Netns, port: &str, ip: Ipv4Addr) {
    ns.ip(&["link", "add", FABRIC_DEV, "type", "veth", "peer", "name", port, "netns", &fabric.name]);
    fabric.ip(&["link", "set", port, "master", "br0", "up"]);
    ns.ip(&["addr", "add", &format!("{ip}/24"), "dev", FABRIC_DEV]);
    ns.ip(&["link", "set", FABRIC_DEV, "up"]);
}

/// A node: its namespace on the fabric and its vswitchd (field order is drop order: the daemon
/// goes before its namespace).
pub struct Node {
    pub daemon: Daemon,
    pub name: String,
    pub ns: Netns,
}

impl Node {
    pub fn client(&self) -> Client {
        client(&self.daemon.socket)
    }

    pub fn view(&self) -> IpamView {
        self.client().ipam().unwrap_or_else(|e| panic!("{}: ipam view: {e}", self.name))
    }

    /// `vswitchctl --json ipam`, as an operator sees it.
    pub fn ctl_ipam(&self) -> serde_json::Value {
        self.daemon.ctl_json(&["ipam"])
    }

    /// Starts the daemon again (after `kill9`) on the same state directory and configuration.
    pub fn start(&mut self) {
        self.daemon.spawn(&self.ns, 1);
    }

    /// Upkeep rounds that could not reach the store (`vswitch_ipam_store_errors_total`).
    pub fn store_errors(&self) -> u64 {
        let metrics = self.metrics();
        let line = metrics.lines().find_map(|l| l.strip_prefix("vswitch_ipam_store_errors_total "));
        line.and_then(|v| v.trim().parse().ok()).unwrap_or_else(|| panic!("no store errors counter in {metrics}"))
    }

    /// Every log this node's daemons wrote (one file per start).
    pub fn logs(&self) -> String {
        self.daemon.logs()
    }

    /// `GET /metrics` from inside the node's namespace (vswitchd listens on 127.0.0.1:9477 there).
    pub fn metrics(&self) -> String {
        let text = vswitch_host::netns::run_in(Some(&self.ns.path()), || {
            let mut stream = TcpStream::connect("127.0.0.1:9477")?;
            stream.set_read_timeout(Some(Duration::from_secs(5)))?;
            stream.write_all(b"GET /metrics HTTP/1.1\r\nHost: vswitchd\r\nConnection: close\r\n\r\n")?;
            let mut text = String::new();
            stream.read_to_string(&mut text)?;
            Ok(text)
        });
        text.unwrap_or_else(|e| panic!("{}: GET /metrics: {e}", self.name))
    }
}

pub fn client(socket: &Path) -> Client {
    Client::new(socket).with_timeouts(Duration::from_secs(1), Duration::from_secs(8))
}

/// The fabric, three etcd members and `n` nodes. Field order is drop order: daemons, then etcd,
/// then the namespaces, then the directory.
pub struct Lab {
    pub nodes: Vec<Node>,
    pub etcd: EtcdCluster,
    pub _etcd_ns: Vec<Netns>,
    pub _fabric: Netns,
    pub pool: Pool,
    pub keys: Keys,
    pub _dir: TempDir,
}

impl Lab {
    /// `ipam` is added to each node's `[ipam]` section (warm_target, reuse_delay_seconds, ...).
    pub fn new(nodes: usize, ipam: &str) -> Lab {
        Lab::with_pools(nodes, &POOLS, ipam)
    }

    pub fn with_pools(nodes: usize, pools: &[&str], ipam: &str) -> Lab {
        require_root();
        require_etcd();
        let bins = Binaries::beside_current_exe();
        let started = Instant::now();
        let dir = TempDir::new();
        let fabric = Netns::new("vif");
        fabric.ip(&["link", "add", "br0", "type", "bridge"]);
        fabric.ip(&["link", "set", "br0", "up"]);
        let etcd_ns: Vec<Netns> = (0..3)
            .map(|i| {
                let ns = Netns::new("vie");
                wire(&fabric, &ns, &format!("e{i}"), etcd_ip(i));
                ns
            })
            .collect();
        let members: Vec<(String, Ipv4Addr)> =
            etcd_ns.iter().enumerate().map(|(i, ns)| (ns.name.clone(), etcd_ip(i))).collect();
        let etcd = EtcdCluster::start_in(&members);
        let mut started_nodes = Vec::new();
        for i in 0..nodes {
            let ns = Netns::new("vin");
            wire(&fabric, &ns, &format!("n{i}"), node_ip(i));
            let name = format!("n{i}");
            let config = format!(
                "[ipam]\nnode_name = \"{name}\"\npools = {pools:?}\nprefix = \"{PREFIX}\"\n\
                 lease_ttl_seconds = {LEASE_TTL}\nquarantine_seconds = {QUARANTINE}\n{ipam}\n\n\
                 [ipam.etcd]\n{}",
                etcd.client_toml(1000),
            );
            let daemon = Daemon::start_with_config(&bins, &ns, &dir.0.join(&name), 1, &config);
            started_nodes.push(Node { daemon, name, ns });
        }
        let pool_strings: Vec<String> = pools.iter().map(|p| p.to_string()).collect();
        let lab = Lab {
            nodes: started_nodes,
            etcd,
            _etcd_ns: etcd_ns,
            _fabric: fabric,
            pool: Pool::parse(&pool_strings, &[]).unwrap(),
            keys: Keys::new(PREFIX),
            _dir: dir,
        };
        let n = lab.nodes.len();
        wait_for(Duration::from_secs(20), "every node registered with a full warm pool", || {
            lab.live_nodes().len() == n && lab.nodes.iter().all(|node| warm_is_full(&node.view()))
        });
        eprintln!("lab up in {:.1}s: 3 etcd members, {n} nodes", started.elapsed().as_secs_f64());
        lab
    }

    /// Every address record in etcd, read with etcdctl (a linearizable read).
    pub fn records(&self) -> BTreeMap<IpAddr, AddressRecord> {
        self.etcd
            .get_prefix(&self.keys.ips())
            .into_iter()
            .map(|(key, value)| {
                let ip = self.keys.ip_of(&key).unwrap_or_else(|| panic!("a key that is no address: {key}"));
                let record = AddressRecord::decode(value.as_bytes())
                    .unwrap_or_else(|| panic!("{key}: an unreadable record: {value}"));
                (ip, record)
            })
            .collect()
    }

    /// Nodes holding their lease (`<prefix>/node/<name>` exists).
    pub fn live_nodes(&self) -> HashSet<String> {
        let prefix = self.keys.nodes();
        self.etcd
            .get_prefix(&prefix)
            .into_iter()
            .filter_map(|(k, _)| Some(k.strip_prefix(&prefix)?.to_string()))
            .collect()
    }

    /// Waits until every node has written everything to the store (pending_sync 0, as
    /// `vswitchctl --json ipam` shows it).
    pub fn wait_synced(&self, timeout: Duration) {
        for node in &self.nodes {
            wait_for(timeout, &format!("{} has synced (pending_sync 0)", node.name), || {
                node.ctl_ipam()["this_node"]["pending_sync"].as_u64() == Some(0)
            });
        }
    }

    /// What etcd says, address by address, checked against the pool and the live nodes.
    pub fn audit(&self) -> Audit {
        let records = self.records();
        let live = self.live_nodes();
        let mut audit = Audit { records: records.len(), ..Audit::default() };
        for (ip, record) in &records {
            if !self.pool.contains(*ip) {
                audit.lost.push(format!("{ip}: outside the pool ({record:?})"));
                continue;
            }
            match record {
                AddressRecord::Cooling { .. } => audit.cooling += 1,
                AddressRecord::Warm { node, .. } if live.contains(node) => {
                    *audit.warm.entry(node.clone()).or_default() += 1
                }
                AddressRecord::Assigned { node, owner, .. } if live.contains(node) => {
                    audit.assigned.push((*ip, node.clone(), owner.container_id.clone()))
                }
                other => audit.lost.push(format!("{ip}: {other:?} (live nodes: {live:?})")),
            }
        }
        audit.free = POOL_SIZE - records.len();
        audit
    }
}

#[derive(Debug, Default)]
pub struct Audit {
    pub records: usize,
    pub free: usize,
    pub cooling: usize,
    /// Warm addresses of live nodes, by node.
    pub warm: BTreeMap<String, usize>,
    /// (address, node, container id) of live nodes.
    pub assigned: Vec<(IpAddr, String, String)>,
    /// Neither free nor cooling nor warm or assigned on a live node, or outside the pool.
    pub lost: Vec<String>,
}

impl std::fmt::Display for Audit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} records: free {}, cooling {}, warm {:?}, assigned {}, lost {}",
            self.records,
            self.free,
            self.cooling,
            self.warm,
            self.assigned.len(),
            self.lost.len()
        )
    }
}

pub fn warm_is_full(view: &IpamView) -> bool {
    view.store_reachable && view.this_node.warm >= view.this_node.warm_target && view.this_node.pending_sync == 0
}

pub fn wait_for(timeout: Duration, what: &str, done: impl FnMut() -> bool) -> Duration {
    wait_or(timeout, what, done, String::new)
}

/// [`wait_for`], with `context()` (logs, say) in the panic message.
pub fn wait_or(
    timeout: Duration,
    what: &str,
    mut done: impl FnMut() -> bool,
    context: impl Fn() -> String,
) -> Duration {
    let start = Instant::now();
    loop {
        if done() {
            return start.elapsed();
        }
        assert!(start.elapsed() < timeout, "timed out after {timeout:?} waiting until {what}\n{}", context());
        std::thread::sleep(Duration::from_millis(100));
    }
}

pub fn owner(id: &str) -> Attachment {
    Attachment { container_id: id.to_string(), ifname: "eth0".into() }
}

pub fn spec(id: &str) -> AssignSpec {
    AssignSpec {
        owner: owner(id),
        netns: format!("/run/netns/{id}").into(),
        pod: None,
        ips: vec![],
        families: None,
        sticky: None,
    }
}

/// Whether the daemon could not be reached or its answer was cut off (killed mid-request).
pub fn cut_off(e: &ClientError) -> bool {
    matches!(e, ClientError::Unreachable { .. })
}
