//! The cluster IPAM against a real etcd cluster (3 members, TLS with client certificates) and real
//! vswitchd processes, each in its own node namespace: nodes racing for a small pool while
//! daemons are killed and etcd members stopped, a partitioned node fenced when it returns, quorum
//! loss, and a node killed in the middle of an allocation. The unit tests with a file store
//! (`src/ipam/cluster_tests.rs`) show the rules; these show them hold against etcd.
//!
//! ```text
//!   etcd m0 (10.77.0.11)   m1 (.12)   m2 (.13)      each in its own namespace
//!            \              |          /
//!             fabric: a Linux bridge, 10.77.0.0/24
//!            /              |          \
//!   node n0 (10.77.0.21)   n1 (.22)   n2 (.23)      vswitchd in each
//! ```
//!
//! Needs root and etcd (tests/install-deps.sh); without them every test fails with a clear message.
//! Everything (namespaces, processes, directories) is unique per run and removed on drop, also
//! when a test fails. The tests take turns (see [`one_at_a_time`]): they measure how quickly
//! things happen, on machines with two cores.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use rand::Rng;
use vpc_lab::etcd::{require_etcd, EtcdCluster};
use vpc_lab::netns::{require_root, Binaries, Daemon, Netns, Pod, TempDir};
use vswitch::ipam::record::{AddressRecord, Keys};
use vswitch::ipam::Pool;
use vswitch_api::api::{AddressView, AssignSpec, Attachment, ErrorCode, IpamView, PodRef};
use vswitch_api::client::{Client, ClientError};

/// 30 usable addresses in the /27 (not its network and broadcast address) and 2 in the /31.
const POOLS: [&str; 2] = ["10.99.0.0/27", "10.99.0.32/31"];
const POOL_SIZE: usize = 32;
const PREFIX: &str = "/vpc-ipam/itest";
const LEASE_TTL: u64 = 2;
const QUARANTINE: u64 = 2;
/// The interface each namespace has on the fabric.
const FABRIC_DEV: &str = "fab0";
/// What the daemons log when they lose an address while cut off (ipam/node/upkeep.rs).
const FENCING_MESSAGE: &str = "address lost while this node was cut off";

/// Held for a whole test (declared first, so it is released after everything else is gone): the
/// tests of this file run one at a time whatever `--test-threads` says.
fn one_at_a_time() -> MutexGuard<'static, ()> {
    static TURN: Mutex<()> = Mutex::new(());
    TURN.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn etcd_ip(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(10, 77, 0, 11 + i as u8)
}

fn node_ip(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(10, 77, 0, 21 + i as u8)
}

/// `ns` on the fabric bridge with `ip`/24 (its end of the veth is `FABRIC_DEV`).
fn wire(fabric: &Netns, ns: &Netns, port: &str, ip: Ipv4Addr) {
    ns.ip(&["link", "add", FABRIC_DEV, "type", "veth", "peer", "name", port, "netns", &fabric.name]);
    fabric.ip(&["link", "set", port, "master", "br0", "up"]);
    ns.ip(&["addr", "add", &format!("{ip}/24"), "dev", FABRIC_DEV]);
    ns.ip(&["link", "set", FABRIC_DEV, "up"]);
}

/// A node: its namespace on the fabric and its vswitchd (field order is drop order: the daemon
/// goes before its namespace).
struct Node {
    daemon: Daemon,
    name: String,
    ns: Netns,
}

impl Node {
    fn client(&self) -> Client {
        client(&self.daemon.socket)
    }

    fn view(&self) -> IpamView {
        self.client().ipam().unwrap_or_else(|e| panic!("{}: ipam view: {e}", self.name))
    }

    /// `vswitchctl --json ipam`, as an operator sees it.
    fn ctl_ipam(&self) -> serde_json::Value {
        self.daemon.ctl_json(&["ipam"])
    }

    /// Starts the daemon again (after `kill9`) on the same state directory and configuration.
    fn start(&mut self) {
        self.daemon.spawn(&self.ns, 1);
    }

    /// Upkeep rounds that could not reach the store (`vswitch_ipam_store_errors_total`).
    fn store_errors(&self) -> u64 {
        let metrics = self.metrics();
        let line = metrics.lines().find_map(|l| l.strip_prefix("vswitch_ipam_store_errors_total "));
        line.and_then(|v| v.trim().parse().ok()).unwrap_or_else(|| panic!("no store errors counter in {metrics}"))
    }

    /// Every log this node's daemons wrote (one file per start).
    fn logs(&self) -> String {
        let mut text = String::new();
        let mut files: Vec<PathBuf> = std::fs::read_dir(&self.daemon.dir)
            .unwrap()
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with("vswitchd-")))
            .collect();
        files.sort();
        for f in files {
            text.push_str(&std::fs::read_to_string(&f).unwrap_or_default());
        }
        text
    }

    /// `GET /metrics` from inside the node's namespace (vswitchd listens on 127.0.0.1:9477 there).
    fn metrics(&self) -> String {
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

fn client(socket: &Path) -> Client {
    Client::new(socket).with_timeouts(Duration::from_secs(1), Duration::from_secs(8))
}

/// The fabric, three etcd members and `n` nodes. Field order is drop order: daemons, then etcd,
/// then the namespaces, then the directory.
struct Lab {
    nodes: Vec<Node>,
    etcd: EtcdCluster,
    _etcd_ns: Vec<Netns>,
    _fabric: Netns,
    pool: Pool,
    keys: Keys,
    _dir: TempDir,
}

impl Lab {
    /// `ipam` is added to each node's `[ipam]` section (warm_target, reuse_delay_seconds, ...).
    fn new(nodes: usize, ipam: &str) -> Lab {
        Lab::with_pools(nodes, &POOLS, ipam)
    }

    fn with_pools(nodes: usize, pools: &[&str], ipam: &str) -> Lab {
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
    fn records(&self) -> BTreeMap<IpAddr, AddressRecord> {
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
    fn live_nodes(&self) -> HashSet<String> {
        let prefix = self.keys.nodes();
        self.etcd
            .get_prefix(&prefix)
            .into_iter()
            .filter_map(|(k, _)| Some(k.strip_prefix(&prefix)?.to_string()))
            .collect()
    }

    /// Waits until every node has written everything to the store (pending_sync 0, as
    /// `vswitchctl --json ipam` shows it).
    fn wait_synced(&self, timeout: Duration) {
        for node in &self.nodes {
            wait_for(timeout, &format!("{} has synced (pending_sync 0)", node.name), || {
                node.ctl_ipam()["this_node"]["pending_sync"].as_u64() == Some(0)
            });
        }
    }

    /// What etcd says, address by address, checked against the pool and the live nodes.
    fn audit(&self) -> Audit {
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
struct Audit {
    records: usize,
    free: usize,
    cooling: usize,
    /// Warm addresses of live nodes, by node.
    warm: BTreeMap<String, usize>,
    /// (address, node, container id) of live nodes.
    assigned: Vec<(IpAddr, String, String)>,
    /// Neither free nor cooling nor warm or assigned on a live node, or outside the pool.
    lost: Vec<String>,
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

fn warm_is_full(view: &IpamView) -> bool {
    view.store_reachable && view.this_node.warm >= view.this_node.warm_target && view.this_node.pending_sync == 0
}

fn wait_for(timeout: Duration, what: &str, done: impl FnMut() -> bool) -> Duration {
    wait_or(timeout, what, done, String::new)
}

/// [`wait_for`], with `context()` (logs, say) in the panic message.
fn wait_or(timeout: Duration, what: &str, mut done: impl FnMut() -> bool, context: impl Fn() -> String) -> Duration {
    let start = Instant::now();
    loop {
        if done() {
            return start.elapsed();
        }
        assert!(start.elapsed() < timeout, "timed out after {timeout:?} waiting until {what}\n{}", context());
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn owner(id: &str) -> Attachment {
    Attachment { container_id: id.to_string(), ifname: "eth0".into() }
}

fn spec(id: &str) -> AssignSpec {
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
fn cut_off(e: &ClientError) -> bool {
    matches!(e, ClientError::Unreachable { .. })
}

// ---------------------------------------------------------------------------------------------
// 1. Three nodes racing on 32 addresses under chaos.
// ---------------------------------------------------------------------------------------------

/// Who holds what, as the clients were told: an address is held from a successful assign reply
/// until a successful release reply.
#[derive(Debug, Default)]
struct Model {
    held: HashMap<IpAddr, Hold>,
    /// An address assigned to someone else while its holder's release was on its way for long
    /// (its reply lost in a kill): decided when that release is finally answered.
    suspects: Vec<Suspect>,
    duplicates: Vec<String>,
    anomalies: Vec<String>,
    /// Reassignments while the old holder's release reply was outstanding, found legitimate.
    late_reuse_ok: u64,
}

#[derive(Debug)]
struct Hold {
    owner: String,
    node: usize,
    /// When the first release request for it was sent.
    release_sent: Option<Instant>,
}

#[derive(Debug)]
struct Suspect {
    ip: IpAddr,
    old: String,
    new: String,
    at: Instant,
}

/// The reuse delay in test 1. A released address can be handed out again only after
/// `floor(release second) + REUSE`, so more than `REUSE - 1` seconds after the release: an
/// assignment earlier than that after the release request was sent is a duplicate for certain.
const CHAOS_REUSE: u64 = 2;
const CERTAIN_WINDOW: Duration = Duration::from_secs(CHAOS_REUSE - 1);

impl Model {
    /// `owner` on `node` was told it has `ip` at `at`.
    fn assigned(&mut self, owner: &str, node: usize, ip: IpAddr, at: Instant) {
        if let Some(hold) = self.held.get(&ip) {
            if hold.owner == owner {
                return;
            }
            match hold.release_sent {
                Some(sent) if at.duration_since(sent) >= CERTAIN_WINDOW => {
                    self.suspects.push(Suspect { ip, old: hold.owner.clone(), new: owner.into(), at })
                }
                _ => self.duplicates.push(format!(
                    "{ip} given to {owner} on n{node} while {} (n{}) holds it{}",
                    hold.owner,
                    hold.node,
                    hold.release_sent.map_or(String::new(), |s| format!(
                        " (its release was sent {:?} before)",
                        at.duration_since(s)
                    ))
                )),
            }
        }
        self.held.insert(ip, Hold { owner: owner.into(), node, release_sent: None });
    }

    fn release_sent(&mut self, owner: &str, ip: IpAddr, at: Instant) {
        if let Some(hold) = self.held.get_mut(&ip).filter(|h| h.owner == owner) {
            hold.release_sent.get_or_insert(at);
        }
    }

    /// `owner`'s release of `ip`, sent at `sent`, was answered: `now` says whether it released
    /// the address just then (false: an earlier attempt whose reply was lost had done it).
    fn released(&mut self, owner: &str, ip: IpAddr, sent: Instant, now: bool) {
        if self.held.get(&ip).is_some_and(|h| h.owner == owner) {
            self.held.remove(&ip);
        }
        let (mine, others): (Vec<Suspect>, Vec<Suspect>) =
            std::mem::take(&mut self.suspects).into_iter().partition(|s| s.old == owner && s.ip == ip);
        self.suspects = others;
        for s in mine {
            // Released only by this attempt, which started at `sent`: anyone who had the address
            // before `sent + CERTAIN_WINDOW` had it while `owner` still did.
            if now && s.at < sent + CERTAIN_WINDOW {
                self.duplicates.push(format!("{ip} given to {} while {owner} still held it", s.new));
            } else {
                self.late_reuse_ok += 1;
            }
        }
    }
}

#[derive(Debug, Default)]
struct Counts {
    assigned: AtomicU64,
    released: AtomicU64,
    repeat_assign: AtomicU64,
    unavailable: AtomicU64,
    exhausted: AtomicU64,
    unreachable: AtomicU64,
    /// Requests whose reply was lost and that were sent again.
    retried: AtomicU64,
}

impl Counts {
    fn ops(&self) -> u64 {
        self.assigned.load(Ordering::Relaxed)
            + self.released.load(Ordering::Relaxed)
            + self.repeat_assign.load(Ordering::Relaxed)
    }
}

#[derive(Debug)]
enum Slot {
    Idle,
    /// The assign's reply was lost: the daemon may have given it an address.
    Unsure(String),
    Holding(String, IpAddr),
    /// The release's reply was lost.
    Releasing(String, IpAddr),
}

struct Client1<'a> {
    node: usize,
    client: Client,
    model: &'a Mutex<Model>,
    counts: &'a Counts,
}

impl Client1<'_> {
    /// One step of a slot; returns its next state.
    fn step(&self, slot: Slot, new_owner: impl FnOnce() -> String, rng: &mut impl Rng) -> Slot {
        let anomaly = |text: String| self.model.lock().unwrap().anomalies.push(text);
        match slot {
            Slot::Idle => self.assign(new_owner(), false),
            Slot::Unsure(owner) => {
                self.counts.retried.fetch_add(1, Ordering::Relaxed);
                self.assign(owner, true)
            }
            Slot::Holding(owner, ip) if rng.gen_bool(0.2) => {
                // Asking again must give the same address, not a new one.
                match self.client.ipam_assign(spec(&owner)) {
                    Ok(AddressView { ips: again, new }) => {
                        if again != [ip] || new {
                            anomaly(format!("{owner} holds {ip} but asking again gave {again:?} (new: {new})"));
                        }
                        self.counts.repeat_assign.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(e) if cut_off(&e) => {
                        self.counts.unreachable.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(e) => anomaly(format!("{owner} holds {ip} but asking again failed: {e}")),
                }
                Slot::Holding(owner, ip)
            }
            Slot::Holding(owner, ip) => {
                let sent = Instant::now();
                self.model.lock().unwrap().release_sent(&owner, ip, sent);
                self.release(owner, ip, sent, false)
            }
            Slot::Releasing(owner, ip) => {
                self.counts.retried.fetch_add(1, Ordering::Relaxed);
                self.release(owner, ip, Instant::now(), true)
            }
        }
    }

    fn assign(&self, owner: String, retry: bool) -> Slot {
        match self.client.ipam_assign(spec(&owner)) {
            Ok(AddressView { ips, new }) => {
                let ip = ips[0];
                let at = Instant::now();
                let mut model = self.model.lock().unwrap();
                if !new && !retry {
                    model.anomalies.push(format!("{owner} is new but its address {ip} is not"));
                }
                model.assigned(&owner, self.node, ip, at);
                self.counts.assigned.fetch_add(1, Ordering::Relaxed);
                Slot::Holding(owner, ip)
            }
            Err(e) if e.code() == Some(ErrorCode::Unavailable) => {
                self.counts.unavailable.fetch_add(1, Ordering::Relaxed);
                Slot::Idle
            }
            Err(e) if e.code() == Some(ErrorCode::Exhausted) => {
                self.counts.exhausted.fetch_add(1, Ordering::Relaxed);
                // Every address is taken, cooling or warm on another node: give them time.
                std::thread::sleep(Duration::from_millis(20));
                Slot::Idle
            }
            Err(e) if cut_off(&e) => {
                self.counts.unreachable.fetch_add(1, Ordering::Relaxed);
                Slot::Unsure(owner)
            }
            Err(e) => {
                self.model.lock().unwrap().anomalies.push(format!("assign {owner} on n{}: {e}", self.node));
                Slot::Idle
            }
        }
    }

    fn release(&self, owner: String, ip: IpAddr, sent: Instant, retry: bool) -> Slot {
        match self.client.ipam_release(&self::owner(&owner)) {
            Ok(reply) => {
                let now = reply.released == [ip];
                let mut model = self.model.lock().unwrap();
                // A retry may find it released by the attempt whose reply was lost.
                let expected = now || (retry && reply.released.is_empty());
                if !expected {
                    model.anomalies.push(format!(
                        "releasing {owner} ({ip}) on n{} released {:?} (retry: {retry})",
                        self.node, reply.released
                    ));
                }
                model.released(&owner, ip, sent, now);
                self.counts.released.fetch_add(1, Ordering::Relaxed);
                Slot::Idle
            }
            Err(e) if cut_off(&e) => {
                self.counts.unreachable.fetch_add(1, Ordering::Relaxed);
                Slot::Releasing(owner, ip)
            }
            Err(e) => {
                self.model.lock().unwrap().anomalies.push(format!("release {owner} on n{}: {e}", self.node));
                Slot::Releasing(owner, ip)
            }
        }
    }
}

#[derive(Debug, Default)]
struct Chaos {
    node_kills: u64,
    etcd_stops: u64,
    etcd_kills: u64,
    etcd_restarts: u64,
    slowest_etcd_recovery: Duration,
}

#[test]
fn three_nodes_racing_on_32_addresses_never_duplicate_or_lose() {
    let _turn = one_at_a_time();
    const THREADS_PER_NODE: usize = 2;
    const SLOTS_PER_THREAD: usize = 3;
    const TARGET_OPS: u64 = 3000;
    const MIN_RUN: Duration = Duration::from_secs(30);
    const MAX_RUN: Duration = Duration::from_secs(150);

    let mut lab = Lab::new(3, &format!("warm_target = 4\nwarm_max = 6\nreuse_delay_seconds = {CHAOS_REUSE}"));
    let sockets: Vec<PathBuf> = lab.nodes.iter().map(|n| n.daemon.socket.clone()).collect();
    let model = Mutex::new(Model::default());
    let counts = Counts::default();
    let stop = AtomicBool::new(false);
    let started = Instant::now();
    let Lab { nodes, etcd, .. } = &mut lab;

    let chaos = std::thread::scope(|s| {
        for (node, socket) in sockets.iter().enumerate() {
            for t in 0..THREADS_PER_NODE {
                let (model, counts, stop) = (&model, &counts, &stop);
                s.spawn(move || {
                    let c = Client1 { node, client: client(socket), model, counts };
                    let mut rng = rand::thread_rng();
                    let mut slots: Vec<Slot> = (0..SLOTS_PER_THREAD).map(|_| Slot::Idle).collect();
                    let mut seq = 0;
                    let mut next_owner = || {
                        seq += 1;
                        format!("n{node}-t{t}-{seq}")
                    };
                    while !stop.load(Ordering::Relaxed) {
                        let i = rng.gen_range(0..slots.len());
                        let slot = std::mem::replace(&mut slots[i], Slot::Idle);
                        let waiting = !matches!(slot, Slot::Idle | Slot::Holding(..));
                        slots[i] = c.step(slot, &mut next_owner, &mut rng);
                        let still_waiting = matches!(slots[i], Slot::Unsure(_) | Slot::Releasing(..));
                        if still_waiting || waiting {
                            std::thread::sleep(Duration::from_millis(50));
                        } else {
                            std::thread::sleep(Duration::from_millis(rng.gen_range(0..15)));
                        }
                    }
                    // Wind down: every slot ends idle (lost replies answered, everything released).
                    let deadline = Instant::now() + Duration::from_secs(60);
                    while let Some(i) = slots.iter().position(|s| !matches!(s, Slot::Idle)) {
                        assert!(Instant::now() < deadline, "n{node}: could not release {:?}", slots[i]);
                        let slot = std::mem::replace(&mut slots[i], Slot::Idle);
                        // Always release (never the repeated assign) when winding down.
                        let slot = match slot {
                            Slot::Holding(owner, ip) => {
                                let sent = Instant::now();
                                model.lock().unwrap().release_sent(&owner, ip, sent);
                                c.release(owner, ip, sent, false)
                            }
                            other => c.step(other, || unreachable!("no new owners"), &mut rng),
                        };
                        if !matches!(slot, Slot::Idle) {
                            std::thread::sleep(Duration::from_millis(100));
                        }
                        slots[i] = slot;
                    }
                });
            }
        }

        let chaos = s.spawn(|| {
            let mut rng = rand::thread_rng();
            let mut chaos = Chaos::default();
            let mut down: Option<usize> = None;
            while !stop.load(Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(rng.gen_range(600..1400)));
                if rng.gen_bool(0.5) {
                    let i = rng.gen_range(0..nodes.len());
                    nodes[i].daemon.kill9();
                    std::thread::sleep(Duration::from_millis(rng.gen_range(0..300)));
                    nodes[i].start();
                    chaos.node_kills += 1;
                } else if let Some(m) = down.take() {
                    let t = Instant::now();
                    etcd.start_member(m);
                    etcd.wait_healthy(Duration::from_secs(30)).expect("etcd healthy after a member restart");
                    chaos.slowest_etcd_recovery = chaos.slowest_etcd_recovery.max(t.elapsed());
                    chaos.etcd_restarts += 1;
                } else {
                    let m = rng.gen_range(0..3);
                    if rng.gen_bool(0.5) {
                        etcd.stop_member(m);
                        chaos.etcd_stops += 1;
                    } else {
                        etcd.kill_member(m);
                        chaos.etcd_kills += 1;
                    }
                    down = Some(m);
                }
            }
            if let Some(m) = down {
                etcd.start_member(m);
                etcd.wait_healthy(Duration::from_secs(30)).expect("etcd healthy after a member restart");
                chaos.etcd_restarts += 1;
            }
            chaos
        });

        loop {
            std::thread::sleep(Duration::from_millis(200));
            let elapsed = started.elapsed();
            if (counts.ops() >= TARGET_OPS && elapsed >= MIN_RUN) || elapsed >= MAX_RUN || chaos.is_finished() {
                break;
            }
        }
        stop.store(true, Ordering::Relaxed);
        chaos.join()
    });
    let chaos = chaos.unwrap_or_else(|e| std::panic::resume_unwind(e));
    let run = started.elapsed();

    // Everything was released; now every node writes it to etcd.
    let synced = Instant::now();
    lab.wait_synced(Duration::from_secs(30));
    let synced = synced.elapsed();
    let model = model.into_inner().unwrap();
    let c = |a: &AtomicU64| a.load(Ordering::Relaxed);
    eprintln!(
        "{:.1}s of chaos: {} operations ({} assigned, {} released, {} repeated assigns answered the same); \
         refused: {} unavailable, {} exhausted; {} requests unanswered (daemon killed), {} resent",
        run.as_secs_f64(),
        counts.ops(),
        c(&counts.assigned),
        c(&counts.released),
        c(&counts.repeat_assign),
        c(&counts.unavailable),
        c(&counts.exhausted),
        c(&counts.unreachable),
        c(&counts.retried),
    );
    eprintln!(
        "chaos: {} vswitchd kill -9 + restart, etcd members {} stopped + {} killed, {} restarted (slowest back to \
         healthy: {:.1}s); synced {:.1}s after the last release",
        chaos.node_kills,
        chaos.etcd_stops,
        chaos.etcd_kills,
        chaos.etcd_restarts,
        chaos.slowest_etcd_recovery.as_secs_f64(),
        synced.as_secs_f64()
    );
    eprintln!(
        "model: {} duplicates, {} anomalies, {} reassignments while an old release reply was outstanding (fine)",
        model.duplicates.len(),
        model.anomalies.len(),
        model.late_reuse_ok
    );
    let logs: Vec<String> = lab.nodes.iter().map(Node::logs).collect();
    let count = |needle: &str| logs.iter().map(|l| l.matches(needle).count()).sum::<usize>();
    eprintln!(
        "daemon logs: {} addresses adopted from the store after a crash, {} after a lost reply, {} fenced, \
         {} reclaims, {} lease expiries",
        count("adopted an address the store gives this node"),
        count("a write whose reply was lost went through"),
        count(FENCING_MESSAGE),
        count("reclaimed the addresses of a node"),
        count("this node's lease expired"),
    );

    assert!(model.duplicates.is_empty(), "duplicates: {:#?}", model.duplicates);
    assert!(model.anomalies.is_empty(), "anomalies: {:#?}", model.anomalies);
    assert!(model.held.is_empty() && model.suspects.is_empty(), "left over: {:?} {:?}", model.held, model.suspects);
    assert!(counts.ops() >= TARGET_OPS, "only {} operations in {run:?}", counts.ops());
    assert!(chaos.node_kills >= 5 && chaos.etcd_restarts >= 5, "too little chaos: {chaos:?}");
    assert_eq!(count(FENCING_MESSAGE), 0, "no node was cut off for long, so none may be fenced");

    // etcd's own view: nothing assigned, nothing outside the pool, nothing lost, and each node's
    // warm pool in etcd is exactly the one it knows (no address claimed and forgotten).
    // Once the released addresses have cooled down, every node refills its warm pool; then
    // etcd's warm pool of each node must be exactly the one the node knows.
    wait_for(Duration::from_secs(20), "every node's warm pool is full again", || {
        lab.nodes.iter().all(|n| warm_is_full(&n.view()))
    });
    let deadline = Instant::now() + Duration::from_secs(10);
    let audit = loop {
        let audit = lab.audit();
        let local_warm: Vec<(String, u64)> =
            lab.nodes.iter().map(|n| (n.name.clone(), n.view().this_node.warm)).collect();
        if local_warm.iter().all(|(n, warm)| audit.warm.get(n).copied().unwrap_or(0) as u64 == *warm) {
            break audit;
        }
        if Instant::now() >= deadline {
            let records = lab.records();
            let mut history = String::new();
            for (ip, r) in records.iter().filter(|(_, r)| r.state_name() == "warm") {
                history.push_str(&format!("--- {ip}: {r:?}\n"));
                for node in &lab.nodes {
                    let logs = node.logs();
                    for line in logs.lines().filter(|l| l.contains(&format!("ip={ip} "))) {
                        history.push_str(&format!("{}: {line}\n", node.name));
                    }
                }
            }
            panic!("etcd's warm pools are not the nodes': etcd {audit}; the nodes {local_warm:?}\n{history}");
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    eprintln!("etcd after the run: {audit}");
    if !audit.assigned.is_empty() {
        let mut history = String::new();
        for (ip, _, owner) in &audit.assigned {
            for node in &lab.nodes {
                for line in node.logs().lines().filter(|l| l.contains(&ip.to_string()) || l.contains(owner.as_str())) {
                    history.push_str(&format!("{}: {line}\n", node.name));
                }
            }
        }
        panic!("still assigned after releasing everything: {:?}\n{history}", audit.assigned);
    }
    assert!(audit.lost.is_empty(), "lost addresses: {:#?}", audit.lost);
    assert_eq!(audit.free + audit.cooling + audit.warm.values().sum::<usize>(), POOL_SIZE);
    assert_eq!(audit.warm.values().sum::<usize>(), 3 * 4, "every node has its 4 warm addresses: {audit}");
    let downs = lab.etcd.get_prefix(&lab.keys.downs());
    assert!(downs.is_empty(), "down marks left: {downs:?}");
}

// ---------------------------------------------------------------------------------------------
// 2. Fencing.
// ---------------------------------------------------------------------------------------------

fn has_port(node: &Node, name: &str) -> bool {
    node.daemon.ctl_json(&["ports"]).as_array().unwrap().iter().any(|p| p["name"] == name)
}

#[test]
fn a_partitioned_node_is_fenced_when_it_returns() {
    let _turn = one_at_a_time();
    let lab = Lab::new(2, "warm_target = 2\nreuse_delay_seconds = 3");
    let (a, b) = (&lab.nodes[0], &lab.nodes[1]);

    // A pod on node A with an address from the IPAM and a real port.
    let pod_ns = Netns::new("vtp");
    let victim = owner("victim");
    let assigned = a
        .client()
        .ipam_assign(AssignSpec {
            owner: victim.clone(),
            netns: pod_ns.path(),
            pod: Some(PodRef { namespace: "default".into(), name: "victim".into() }),
            ips: vec![],
            families: None,
            sticky: None,
        })
        .unwrap();
    let assigned_ip = assigned.ips[0];
    let IpAddr::V4(ip) = assigned_ip else { panic!("an IPv4 pool gave {assigned_ip}") };
    let pod = Pod::in_netns(pod_ns, ip);
    let port = vswitch_api::api::port_name(&victim);
    a.daemon.attach(&port, &pod);
    assert!(has_port(a, &port));
    // A second pod on A, whose address nobody takes while A is away: A takes it back.
    let keeper_ns = Netns::new("vtk");
    let keeper = owner("keeper");
    let keeper_ip = a
        .client()
        .ipam_assign(AssignSpec {
            owner: keeper.clone(),
            netns: keeper_ns.path(),
            pod: None,
            ips: vec![],
            families: None,
            sticky: None,
        })
        .unwrap()
        .ips[0];
    let IpAddr::V4(kip) = keeper_ip else { panic!("an IPv4 pool gave {keeper_ip}") };
    let keeper_pod = Pod::in_netns(keeper_ns, kip);
    let keeper_port = vswitch_api::api::port_name(&keeper);
    a.daemon.attach(&keeper_port, &keeper_pod);
    lab.wait_synced(Duration::from_secs(10));
    let before = lab.records();
    assert!(
        matches!(&before[&assigned_ip], AddressRecord::Assigned { node, owner, .. } if node == "n0" && *owner == victim),
        "{:?}",
        before.get(&assigned_ip)
    );
    let a_warm: Vec<IpAddr> =
        before.iter().filter(|(_, r)| r.state_name() == "warm" && r.node() == Some("n0")).map(|(ip, _)| *ip).collect();

    // Cut A off from etcd.
    a.ns.ip(&["link", "set", FABRIC_DEV, "down"]);
    let cut = Instant::now();
    let reclaimed = wait_for(
        Duration::from_secs(LEASE_TTL + QUARANTINE + 20),
        "node B has reclaimed A's addresses (the victim's record is cooling, last on A)",
        || matches!(lab.records().get(&assigned_ip), Some(AddressRecord::Cooling { last_node, .. }) if last_node == "n0"),
    );
    eprintln!(
        "A cut off: B reclaimed its addresses after {:.1}s (lease {LEASE_TTL}s + quarantine {QUARANTINE}s)",
        reclaimed.as_secs_f64()
    );
    assert!(reclaimed >= Duration::from_secs(LEASE_TTL + QUARANTINE - 1), "reclaimed too early: {reclaimed:?}");
    let after = lab.records();
    assert!(after.values().all(|r| r.node() != Some("n0")), "nothing stays A's: {after:?}");
    for ip in &a_warm {
        assert!(after.get(ip).is_none_or(|r| r.state_name() == "cooling"), "A's warm {ip}: {:?}", after.get(ip));
    }
    assert!(b.logs().contains("reclaimed the addresses of a node whose lease expired"));
    // A cannot know yet: the pod keeps its port while A is cut off.
    assert!(has_port(a, &port), "A detached the pod before it could know");
    assert_eq!(a.view().this_node.fenced_total, 0);
    // B gives the victim's address to a pod of its own (by name: no reuse delay); the keeper's
    // stays cooling.
    let taker = owner("taker");
    let taken = b
        .client()
        .ipam_assign(AssignSpec {
            owner: taker.clone(),
            netns: b.ns.path(),
            pod: None,
            ips: vec![assigned_ip],
            families: None,
            sticky: None,
        })
        .unwrap();
    assert_eq!(taken.ips, [assigned_ip]);
    assert!(matches!(lab.records().get(&keeper_ip), Some(AddressRecord::Cooling { .. })));

    // Heal: A finds its lease gone, re-registers, learns that the address is not its own any
    // more and detaches the pod.
    a.ns.ip(&["link", "set", FABRIC_DEV, "up"]);
    let healed = Instant::now();
    let detached = wait_or(
        Duration::from_secs(15),
        "A has detached the fenced pod",
        || !has_port(a, &port),
        || {
            let ss = a.ns.exec(&["ss", "-tnoi"]);
            format!("{}\n{:?}\n{}\n{}", a.logs(), a.view(), a.metrics(), String::from_utf8_lossy(&ss.stdout))
        },
    );
    eprintln!(
        "partition healed after {:.1}s; A detached the pod {:.1}s later",
        healed.duration_since(cut).as_secs_f64(),
        detached.as_secs_f64()
    );
    let view = a.ctl_ipam();
    assert!(view["this_node"]["fenced_total"].as_u64().unwrap() >= 1, "{view}");
    let lookup = a.client().ipam_lookup(&victim).unwrap_err();
    assert_eq!(lookup.code(), Some(ErrorCode::NotFound), "{lookup}");
    let logs = a.logs();
    assert!(logs.contains(FENCING_MESSAGE), "A's log has no fencing message:\n{logs}");
    assert!(logs.contains("pod detached: its address is owned elsewhere"), "{logs}");
    assert!(logs.contains("assigned on n1"), "the fencing message names the new holder:\n{logs}");
    let metrics = a.metrics();
    assert!(metrics.contains("\nvswitch_ipam_fenced_total 1\n"), "{metrics}");
    // The keeper's address was taken back: its pod keeps its port and its address.
    assert!(has_port(a, &keeper_port), "A detached a pod whose address nobody took");
    assert_eq!(a.client().ipam_lookup(&keeper).unwrap().ips, [keeper_ip]);
    assert!(
        matches!(&lab.records()[&keeper_ip], AddressRecord::Assigned { node, owner, .. } if node == "n0" && *owner == keeper),
        "{:?}",
        lab.records().get(&keeper_ip)
    );
    assert!(logs.contains("taken back"), "{logs}");
    // A is a member again, with a fresh warm pool that is not the addresses it lost.
    wait_for(Duration::from_secs(10), "A is live again with a full warm pool", || {
        lab.live_nodes().contains("n0") && warm_is_full(&a.view())
    });
    let now = lab.records();
    assert!(now.get(&assigned_ip).is_none_or(|r| r.node() != Some("n0")), "{:?}", now.get(&assigned_ip));
    // The two pods that stay are deleted, so what follows checks what it always did.
    a.client().ipam_release(&keeper).unwrap();
    b.client().ipam_release(&taker).unwrap();
    lab.wait_synced(Duration::from_secs(10));
    let audit = lab.audit();
    eprintln!("etcd after healing: {audit}");
    assert!(audit.lost.is_empty(), "{:#?}", audit.lost);
    assert!(audit.assigned.is_empty(), "{:?}", audit.assigned);
}

// ---------------------------------------------------------------------------------------------
// 3. Quorum loss.
// ---------------------------------------------------------------------------------------------

#[test]
fn quorum_loss_serves_adds_from_the_warm_pool_then_code_unavailable() {
    let _turn = one_at_a_time();
    let mut lab = Lab::new(1, "warm_target = 3\nwarm_max = 3\nreuse_delay_seconds = 3");
    let c = lab.nodes[0].client();

    // One member down: a quorum is left and everything works as before, without a single failed
    // round of upkeep once the node has noticed (its requests go to the members that are up).
    lab.etcd.stop_member(2);
    let node = &lab.nodes[0];
    std::thread::sleep(Duration::from_millis(1500));
    let errors_before = node.store_errors();
    let quiet = Instant::now();
    let first = c.ipam_assign(spec("q-first")).unwrap();
    assert_eq!(c.ipam_release(&owner("q-first")).unwrap().released, [first.ips[0]]);
    let kept = c.ipam_assign(spec("q-kept")).unwrap();
    let t = wait_for(Duration::from_secs(10), "synced with one member down", || {
        let v = node.view();
        v.store_reachable && warm_is_full(&v)
    });
    eprintln!("one member down: assign, release, assign synced in {:.1}s", t.as_secs_f64());
    std::thread::sleep(Duration::from_secs(5).saturating_sub(quiet.elapsed()));
    let failed = node.store_errors() - errors_before;
    eprintln!("one member down: {failed} failed upkeep rounds in {:.1}s", quiet.elapsed().as_secs_f64());
    assert_eq!(failed, 0, "with a quorum up, upkeep must not fail:\n{}", node.logs());
    let records = lab.records();
    assert!(matches!(&records[&first.ips[0]], AddressRecord::Cooling { .. }), "{:?}", records[&first.ips[0]]);
    assert!(matches!(&records[&kept.ips[0]], AddressRecord::Assigned { owner, .. } if owner.container_id == "q-kept"));

    // Two down: no quorum. ADDs are served from the warm pool (3), then refused with code
    // unavailable; DELs are accepted and wait.
    lab.etcd.stop_member(1);
    let node = &lab.nodes[0];
    let lost_quorum = Instant::now();
    let mut got = Vec::new();
    for i in 0..3 {
        let v = c.ipam_assign(spec(&format!("q{i}"))).unwrap_or_else(|e| panic!("assign {i} without quorum: {e}"));
        assert!(v.new);
        got.push(v.ips[0]);
    }
    let t = Instant::now();
    let refused = c.ipam_assign(spec("q3")).unwrap_err();
    eprintln!("no quorum: 3 ADDs from the warm pool, then refused in {:.2}s: {refused}", t.elapsed().as_secs_f64());
    assert_eq!(refused.code(), Some(ErrorCode::Unavailable), "{refused}");
    assert_eq!(c.ipam_release(&owner("q0")).unwrap().released, [got[0]]);
    assert_eq!(c.ipam_release(&owner("q1")).unwrap().released, [got[1]]);
    assert_eq!(c.ipam_lookup(&owner("q2")).unwrap().ips, [got[2]]);
    wait_for(Duration::from_secs(10), "the node's upkeep finds the store unreachable", || {
        node.metrics().contains("\nvswitch_ipam_store_up 0\n")
    });
    assert!(!node.view().store_reachable);
    let view = node.view();
    assert_eq!(view.this_node.pending_sync, 3, "q0, q1 released and q2 assigned, all waiting: {view:?}");
    assert_eq!(view.this_node.warm, 0);
    let metrics = node.metrics();
    assert!(metrics.contains("\nvswitch_ipam_refused_unavailable_total 1\n"), "{metrics}");

    // Longer without a quorum than the lease lasts: without a leader no lease expires, and a new
    // leader extends them all, so the node keeps its lease through this.
    std::thread::sleep(Duration::from_secs(2 * LEASE_TTL + 1).saturating_sub(lost_quorum.elapsed()));
    assert_eq!(node.view().this_node.pending_sync, 3);

    // Both back: the pending changes reach etcd and the warm pool refills.
    eprintln!("{:.1}s without a quorum", lost_quorum.elapsed().as_secs_f64());
    let restarted = Instant::now();
    lab.etcd.start_member(1);
    lab.etcd.start_member(2);
    lab.etcd.wait_healthy(Duration::from_secs(30)).unwrap();
    let healthy = restarted.elapsed();
    let node = &lab.nodes[0];
    wait_for(Duration::from_secs(10), "synced and the warm pool full again", || warm_is_full(&node.view()));
    eprintln!(
        "members restarted: etcd healthy after {:.1}s, the node synced with its warm pool full after {:.1}s",
        healthy.as_secs_f64(),
        restarted.elapsed().as_secs_f64()
    );
    let records = lab.records();
    for ip in &got[..2] {
        assert!(
            matches!(&records[ip], AddressRecord::Cooling { last_node, .. } if last_node == "n0")
                || matches!(&records[ip], AddressRecord::Warm { .. }),
            "released {ip}: {:?}",
            records[ip]
        );
    }
    assert!(
        matches!(&records[&got[2]], AddressRecord::Assigned { owner, node, .. } if owner.container_id == "q2" && node == "n0")
    );
    assert!(matches!(&records[&kept.ips[0]], AddressRecord::Assigned { owner, .. } if owner.container_id == "q-kept"));
    let logs = node.logs();
    assert!(!logs.contains("this node's lease expired") && !logs.contains(FENCING_MESSAGE), "{logs}");
    let audit = lab.audit();
    eprintln!("etcd after the quorum came back: {audit}");
    assert!(audit.lost.is_empty(), "{:#?}", audit.lost);
    assert_eq!(audit.warm.get("n0").copied(), Some(3));
    assert_eq!(audit.assigned.len(), 2, "{:?}", audit.assigned);
    // And the refused ADD goes through now, with none of the addresses held. (One released
    // during the outage may come back: its 3 s reuse delay is long over, and the check above
    // lets the warm pool have it.)
    let retried = c.ipam_assign(spec("q3")).unwrap();
    assert!(retried.ips[0] != got[2] && retried.ips[0] != kept.ips[0], "{retried:?} is held already");
}

// ---------------------------------------------------------------------------------------------
// 4. kill -9 in the middle of allocations.
// ---------------------------------------------------------------------------------------------

#[test]
fn a_node_killed_mid_allocation_loses_and_duplicates_nothing() {
    let _turn = one_at_a_time();
    const ROUNDS: usize = 20;
    let mut lab = Lab::new(1, "warm_target = 2\nwarm_max = 4\nreuse_delay_seconds = 3");
    let socket = lab.nodes[0].daemon.socket.clone();
    let mut rng = rand::thread_rng();
    // Owner -> what the test knows: Some(ip) held, None: unknown (its request was cut off).
    let mut held: BTreeMap<String, Option<IpAddr>> = BTreeMap::new();
    let (mut replied, mut add_cut, mut released_n, mut release_cut) = (0, 0, 0, 0);
    // Cut-off requests that turned out to have been done before the kill.
    let (mut add_done, mut release_done) = (0, 0);
    let mut seq = 0;
    for round in 0..ROUNDS {
        // A few new ADDs and some DELs at once, and the daemon killed 0-20 ms later.
        let adds: Vec<String> = (0..rng.gen_range(1..=3))
            .map(|_| {
                seq += 1;
                format!("k{seq}")
            })
            .collect();
        let dels: Vec<String> =
            held.iter().filter(|(_, ip)| ip.is_some()).map(|(o, _)| o.clone()).filter(|_| rng.gen_bool(0.5)).collect();
        let kill_after = Duration::from_millis(rng.gen_range(0..=20));
        let (add_results, del_results) = std::thread::scope(|s| {
            let adds: Vec<_> = adds
                .iter()
                .map(|o| {
                    let socket = &socket;
                    s.spawn(move || (o.clone(), client(socket).ipam_assign(spec(o))))
                })
                .collect();
            let dels: Vec<_> = dels
                .iter()
                .map(|o| {
                    let socket = &socket;
                    s.spawn(move || (o.clone(), client(socket).ipam_release(&owner(o))))
                })
                .collect();
            std::thread::sleep(kill_after);
            lab.nodes[0].daemon.kill9();
            let adds: Vec<_> = adds.into_iter().map(|h| h.join().unwrap()).collect();
            let dels: Vec<_> = dels.into_iter().map(|h| h.join().unwrap()).collect();
            (adds, dels)
        });
        for (o, result) in add_results {
            match result {
                Ok(v) => {
                    assert!(v.new, "{o}: {v:?}");
                    replied += 1;
                    held.insert(o, Some(v.ips[0]));
                }
                Err(e) if cut_off(&e) => {
                    add_cut += 1;
                    held.insert(o, None);
                }
                Err(e) if e.code() == Some(ErrorCode::Exhausted) || e.code() == Some(ErrorCode::Unavailable) => {}
                Err(e) => panic!("round {round}: assign {o}: {e}"),
            }
        }
        // Owners whose DEL was cut off: it may or may not have happened.
        let mut maybe_released: HashSet<String> = HashSet::new();
        for (o, result) in del_results {
            match result {
                Ok(r) => {
                    assert_eq!(r.released, [held[&o].unwrap()], "{o}");
                    released_n += 1;
                    held.remove(&o);
                }
                Err(e) if cut_off(&e) => {
                    release_cut += 1;
                    maybe_released.insert(o);
                }
                Err(e) => panic!("round {round}: release {o}: {e}"),
            }
        }
        // Asked at once: the restarted node answers only after its first round with the store,
        // where it adopts the claims the kill cut off before they reached its file.
        lab.nodes[0].start();

        // After the restart, each owner's address is what the test was told, or (reply lost)
        // whatever the node says now; a DEL whose reply was lost may or may not have happened.
        let c = client(&socket);
        let mut seen: HashMap<IpAddr, String> = HashMap::new();
        for (o, known) in held.iter_mut() {
            let now = match c.ipam_lookup(&owner(o)) {
                Ok(v) => Some(v.ips[0]),
                Err(e) if e.code() == Some(ErrorCode::NotFound) => None,
                Err(e) => panic!("lookup {o}: {e}"),
            };
            match (*known, now) {
                (Some(ip), Some(now)) => assert_eq!(ip, now, "round {round}: {o} had {ip}"),
                // A DEL cut off by the kill went through.
                (Some(_), None) if maybe_released.contains(o) => {
                    release_done += 1;
                    *known = None
                }
                (Some(ip), None) => panic!("round {round}: {o} had {ip}, released nothing, and the node forgot it"),
                (None, now) => {
                    add_done += usize::from(now.is_some());
                    *known = now
                }
            }
            if let Some(ip) = now {
                if let Some(other) = seen.insert(ip, o.clone()) {
                    panic!("round {round}: {ip} is held by {o} and {other}");
                }
            }
        }
        held.retain(|_, ip| ip.is_some());
    }
    eprintln!(
        "{ROUNDS} kills: {replied} ADDs answered, {add_cut} cut off ({add_done} of them done before the kill); \
         {released_n} DELs answered, {release_cut} cut off ({release_done} done); {} owners hold addresses now",
        held.len()
    );

    // etcd agrees with the node: every address it says the node has is in its warm pool or held
    // by an owner the test knows, with the same address.
    lab.wait_synced(Duration::from_secs(15));
    let node = &lab.nodes[0];
    wait_for(Duration::from_secs(10), "the warm pool is full", || warm_is_full(&node.view()));
    let c = node.client();
    let records = lab.records();
    let mut warm = 0;
    for (ip, record) in &records {
        match record {
            AddressRecord::Warm { node, .. } => {
                assert_eq!(node, "n0");
                warm += 1;
            }
            AddressRecord::Assigned { owner: o, node, .. } => {
                assert_eq!(node, "n0");
                assert_eq!(
                    held.get(&o.container_id),
                    Some(&Some(*ip)),
                    "{ip} is {o:?}'s in etcd; the test knows {held:?}"
                );
            }
            AddressRecord::Cooling { .. } => {}
            other => panic!("{ip}: {other:?}"),
        }
    }
    assert_eq!(warm as u64, node.view().this_node.warm, "etcd's warm pool of n0 is the node's: {records:?}");
    for (o, ip) in &held {
        assert!(
            matches!(records.get(&ip.unwrap()), Some(AddressRecord::Assigned { owner: r, .. }) if r.container_id == *o),
            "{o} holds {ip:?} but etcd says {:?}",
            records.get(&ip.unwrap())
        );
        // Asking again gives the same address.
        let again = c.ipam_assign(spec(o)).unwrap();
        assert_eq!((again.ips.first().copied(), again.new), (*ip, false), "{o}");
    }
    let audit = lab.audit();
    eprintln!("etcd after {ROUNDS} kills: {audit}");
    assert!(audit.lost.is_empty(), "{:#?}", audit.lost);
    assert_eq!(audit.assigned.len(), held.len());
    let logs = node.logs();
    assert!(!logs.contains("this node's lease expired"), "restarts are quick: the lease must survive them");
    let fenced: Vec<&str> = logs.lines().filter(|l| l.contains(FENCING_MESSAGE)).collect();
    assert!(fenced.is_empty(), "one node alone, so nothing may be fenced:\n{}", fenced.join("\n"));

    // Everything released: nothing stays assigned, nothing is lost.
    for o in held.keys() {
        c.ipam_release(&owner(o)).unwrap();
    }
    lab.wait_synced(Duration::from_secs(10));
    let audit = lab.audit();
    eprintln!("etcd after releasing everything: {audit}");
    assert!(audit.assigned.is_empty() && audit.lost.is_empty(), "{audit:?}");
}

// ---------------------------------------------------------------------------------------------
// 5. Dual stack: pods on three nodes race for an IPv4 and an IPv6 address each.

#[test]
fn dual_stack_pods_racing_on_three_nodes_get_one_address_per_family_and_never_share_one() {
    let _serial = one_at_a_time();
    // 30 IPv4 addresses and a /64, probed rather than listed.
    let lab =
        Lab::with_pools(3, &["10.98.0.0/27", "fd98::/64"], "warm_target = 2\nwarm_max = 4\nreuse_delay_seconds = 3");
    const PODS_PER_NODE: usize = 8;
    let replies: Vec<(String, usize, AddressView)> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..lab.nodes.len())
            .flat_map(|n| (0..PODS_PER_NODE).map(move |i| (n, format!("d{n}-{i}"))))
            .map(|(n, id)| {
                let socket = lab.nodes[n].daemon.socket.clone();
                s.spawn(move || {
                    let reply = client(&socket).ipam_assign(spec(&id)).unwrap_or_else(|e| panic!("{id} on n{n}: {e}"));
                    (id, n, reply)
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let mut seen: HashMap<IpAddr, String> = HashMap::new();
    for (id, _, reply) in &replies {
        assert!(reply.new, "{id}: {reply:?}");
        let [v4, v6] = reply.ips[..] else { panic!("{id} got {:?}, not one address per family", reply.ips) };
        assert!(v4.is_ipv4() && v6.is_ipv6() && lab.pool.contains(v4) && lab.pool.contains(v6), "{id}: {v4} {v6}");
        for ip in [v4, v6] {
            if let Some(other) = seen.insert(ip, id.clone()) {
                panic!("{ip} given to both {other} and {id}");
            }
        }
    }
    // Asked again: the same two. And etcd says the same, with both families' keys.
    for (id, n, reply) in &replies {
        let again = lab.nodes[*n].client().ipam_assign(spec(id)).unwrap();
        assert_eq!((&again.ips, again.new), (&reply.ips, false), "{id}");
    }
    lab.wait_synced(Duration::from_secs(20));
    let records = lab.records();
    for (id, n, reply) in &replies {
        for ip in &reply.ips {
            assert!(
                matches!(&records[ip], AddressRecord::Assigned { node, owner, .. }
                    if *node == format!("n{n}") && owner.container_id == *id),
                "{ip} of {id}: {:?}",
                records.get(ip)
            );
        }
    }
    // The view and the metrics count both families.
    let ctl = lab.nodes[0].ctl_ipam();
    assert!(ctl["this_node"]["warm"].as_u64().unwrap() >= 2, "{ctl}");
    let metrics = lab.nodes[0].metrics();
    assert!(metrics.contains("vswitch_ipam_pool_addresses{family=\"ipv6\"}"), "{metrics}");
    assert!(metrics.contains("vswitch_ipam_node_addresses{family=\"ipv4\",state=\"assigned\"} 8"), "{metrics}");
    // Released: both addresses of every pod cool down.
    for (id, n, reply) in &replies {
        let released = lab.nodes[*n].client().ipam_release(&owner(id)).unwrap().released;
        assert_eq!(released, reply.ips, "{id}");
    }
    lab.wait_synced(Duration::from_secs(20));
    let records = lab.records();
    for ip in seen.keys() {
        assert!(matches!(records.get(ip), Some(AddressRecord::Cooling { .. })), "{ip}: {:?}", records.get(ip));
    }
}
