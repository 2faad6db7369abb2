//! The simulated nodes: each a real [`NodeIpam`] with its own state directory and its own
//! upkeep loop (what vswitchd runs), sharing a few etcd connections; ADD and DEL are the
//! request side's own calls, without TAPs or namespaces.
//!
//! Agents run in shards: a thread with its own single-threaded runtime per etcd connection
//! ([`Shard`]), so an ADD waits behind its shard's tasks only. One runtime for every agent put
//! the wake-ups of N upkeep loops in one queue in front of each ADD: its latency grew with N,
//! a cost of the simulation (each vswitchd runs one agent on its own runtime), not the product's.

use std::collections::{HashSet, VecDeque};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use vswitch::ipam::node::TICK;
use vswitch::ipam::store::etcd::EtcdStore;
use vswitch::ipam::{AddressRequest, IpamConfig, IpamError, NodeIpam};
use vswitch_api::api::{Attachment, PodRef};

pub type Store = Arc<EtcdStore>;

/// The simulated cluster's key prefix.
pub const PREFIX: &str = "/vpc-ipam/scale";

/// One simulated node: its agent, the task running its upkeep, and its pods (oldest first).
#[derive(Debug)]
pub struct Agent {
    pub name: String,
    /// The runtime its upkeep, ADDs and DELs run on.
    shard: tokio::runtime::Handle,
    pub dir: PathBuf,
    pub ipam: Arc<NodeIpam<Store>>,
    pub upkeep: tokio::task::JoinHandle<()>,
    pub pods: Mutex<VecDeque<Attachment>>,
    next_pod: Mutex<u64>,
}

/// How long an ADD took: in the agent (what the CNI plugin waits for in vswitchd) and around it.
#[derive(Debug, Clone, Copy)]
pub struct AddTook {
    pub agent: Duration,
    pub around: Duration,
}

/// The `[ipam]` every simulated node shares (one ConfigMap), as vswitchd.toml would say it.
pub fn config(node: &str, pools: &[String], lease_ttl: u64, quarantine: u64) -> IpamConfig {
    toml::from_str(&format!(
        "node_name = \"{node}\"\npools = {pools:?}\nprefix = \"{PREFIX}\"\n\
         lease_ttl_seconds = {lease_ttl}\nquarantine_seconds = {quarantine}\n"
    ))
    .expect("a valid [ipam]")
}

impl Agent {
    /// Opens the node's agent on `dir` (made if missing) and starts its upkeep loop.
    pub fn start(name: &str, dir: &Path, config: &IpamConfig, store: Store, shard: &Shard) -> Result<Agent, IpamError> {
        std::fs::create_dir_all(dir).map_err(|source| IpamError::StateIo { path: dir.to_path_buf(), source })?;
        let settings = config.settings().expect("checked settings");
        let ipam = Arc::new(NodeIpam::open(settings, store, dir)?);
        let shard = shard.handle.clone();
        let upkeep = shard.spawn(upkeep_loop(ipam.clone()));
        Ok(Agent {
            name: name.to_string(),
            shard,
            dir: dir.to_path_buf(),
            ipam,
            upkeep,
            pods: Mutex::new(VecDeque::new()),
            next_pod: Mutex::new(0),
        })
    }

    /// Stops the upkeep loop (the node dies: nothing is released, the lease just stops).
    pub fn kill(self) -> (PathBuf, Vec<Attachment>) {
        self.upkeep.abort();
        let pods = self.pods.lock().unwrap().iter().cloned().collect();
        (self.dir, pods)
    }

    /// One ADD on the agent's shard: a new pod's addresses. Returns how long the agent took,
    /// and how long it took seen from outside (the wait for the shard's runtime included).
    pub async fn add(self: &Arc<Self>) -> Result<AddTook, IpamError> {
        let this = self.clone();
        let asked = Instant::now();
        let agent = self.shard.spawn(async move { this.add_here().await }).await.expect("the ADD ran to its end")?;
        Ok(AddTook { agent, around: asked.elapsed() })
    }

    async fn add_here(&self) -> Result<Duration, IpamError> {
        let n = {
            let mut next = self.next_pod.lock().unwrap();
            *next += 1;
            *next
        };
        let id = format!("{}-pod-{n}", self.name);
        let owner = Attachment { container_id: id.clone(), ifname: "eth0".into() };
        let pod = PodRef { namespace: "bench".into(), name: id.clone() };
        // A path that exists, so the upkeep never takes the pod for an orphan.
        let request = AddressRequest::new(owner.clone(), "/".into(), Some(pod));
        let started = Instant::now();
        self.ipam.requests().assign(&request, &HashSet::new()).await?;
        let took = started.elapsed();
        self.pods.lock().unwrap().push_back(owner);
        Ok(took)
    }

    /// One DEL of the node's oldest pod on the agent's shard (`None`: it has none).
    pub async fn delete_oldest(self: &Arc<Self>) -> Option<Result<Duration, IpamError>> {
        let this = self.clone();
        self.shard.spawn(async move { this.delete_oldest_here().await }).await.expect("the DEL ran to its end")
    }

    async fn delete_oldest_here(&self) -> Option<Result<Duration, IpamError>> {
        let owner = self.pods.lock().unwrap().pop_front()?;
        let started = Instant::now();
        Some(self.ipam.requests().release(&owner).await.map(|_| started.elapsed()))
    }

    /// The addresses the node's state file holds (for watching them after the node dies).
    pub fn held(&self) -> Vec<IpAddr> {
        held_in(&self.dir)
    }
}

/// The addresses in a state directory's `ipam.json`.
pub fn held_in(dir: &Path) -> Vec<IpAddr> {
    let text = std::fs::read(dir.join("ipam.json")).unwrap_or_default();
    let state: serde_json::Value = serde_json::from_slice(&text).unwrap_or_default();
    state["entries"].as_object().map_or(Vec::new(), |e| e.keys().filter_map(|k| k.parse().ok()).collect())
}

/// What vswitchd does with the upkeep: a round every tick, or at once when an ADD or DEL asks.
async fn upkeep_loop(ipam: Arc<NodeIpam<Store>>) {
    loop {
        // Every pod has its port in the simulation.
        ipam.upkeep().tick(|_| true).await;
        tokio::select! {
            _ = tokio::time::sleep(TICK) => {}
            _ = ipam.upkeep().kicked() => {}
        }
    }
}

/// A thread running a single-threaded runtime for a group of agents; stopped (its tasks
/// dropped) on drop.
#[derive(Debug)]
pub struct Shard {
    pub handle: tokio::runtime::Handle,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Shard {
    pub fn start(i: usize) -> Shard {
        let (handle_tx, handle_rx) = std::sync::mpsc::channel();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::Builder::new()
            .name(format!("agents-{i}"))
            .spawn(move || {
                let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("a runtime");
                handle_tx.send(runtime.handle().clone()).expect("the starter waits");
                let _ = runtime.block_on(stopped);
            })
            .expect("a thread");
        let handle = handle_rx.recv().expect("the shard's runtime");
        Shard { handle, stop: Some(stop), thread: Some(thread) }
    }
}

impl Drop for Shard {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
