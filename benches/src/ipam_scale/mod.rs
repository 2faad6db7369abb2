//! `vpc-bench ipam-scale`: the cluster IPAM at Kubernetes' scale on one machine. For each
//! cluster size, N simulated nodes (the real node agent, see [`agents`]) against a fresh real
//! 3-member etcd: every node brought to P pods, then pods deleted and added at a steady rate
//! (each node churns one pod every [`CHURN_PERIOD_S`] seconds), during which etcd's own
//! counters are read ([`etcd_metrics`]); then one node is killed (its agent stopped without
//! releasing anything) and the time until etcd shows its addresses cooling is measured, and
//! another node is restarted on its state directory and its first round (registration and
//! reconcile) timed.
//!
//! The lease TTL and quarantine are the bench's (`--lease-ttl`, `--quarantine`) so a dead node
//! is reclaimed within a run; everything else is vswitchd's default `[ipam]`.

pub mod agents;
pub mod etcd_metrics;
pub mod machine;
pub mod report;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rand::Rng;
use vpc_lab::etcd::EtcdCluster;
use vswitch::ipam::record::{AddressRecord, Keys};
use vswitch::ipam::store::etcd::{EtcdConfig, EtcdStore};
use vswitch::ipam::store::ClusterStore;

use agents::{config, held_in, Agent, Shard, Store};
use etcd_metrics::EtcdCounters;
pub use report::{Latency, Reclaim, Run};

/// Each node deletes its oldest pod and adds a new one this often, on average.
pub const CHURN_PERIOD_S: f64 = 10.0;
const MEMBERS: usize = 3;
/// Agents per etcd connection (a connection is one `EtcdStore`) and per runtime ([`Shard`]).
const AGENTS_PER_CONNECTION: usize = 64;
/// Nodes that join per second.
const JOINS_PER_S: f64 = 40.0;
/// ADDs in flight at once while the nodes fill up.
const RAMP_CONCURRENCY: usize = 64;
/// How often a dead node's lease key, then its records, are looked at.
const LOOK_EVERY: Duration = Duration::from_millis(100);

#[derive(Debug, Clone)]
pub struct Options {
    pub nodes: Vec<usize>,
    pub pods_per_node: usize,
    /// Length of the measured steady state (after a warm-up of a third of it).
    pub steady_seconds: u64,
    /// A size whose nodes are not all full after this long is reported as not reached.
    pub ramp_limit: Duration,
    pub lease_ttl: u64,
    pub quarantine: u64,
}

/// Runs every size in turn, each on its own etcd cluster.
pub fn run(options: &Options, progress: impl Fn(&str)) -> Vec<Run> {
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    options.nodes.iter().map(|&n| runtime.block_on(run_size(options, n, &progress))).collect()
}

/// A directory in memory (the agents' state files: fsync costs nothing there, so the figures
/// are etcd's and the agents', not this machine's disk), removed on drop.
struct ShmDir(std::path::PathBuf);

impl Drop for ShmDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// IPv4 prefixes from 10.64.0.0 holding twice the addresses the run needs (pods, warm pools, and
/// the churned addresses cooling for the reuse delay), rounded up to a /24: the pool is as full
/// at every size. (One prefix rounded up to a power of two left it 57 % to 88 % as full from one
/// size to the next, and a fuller pool costs a claim more probes, more reads.)
fn pool_for(nodes: usize, pods: usize) -> Vec<String> {
    let needed = (nodes * (pods + 16 + 12) * 2).max(256) as u32;
    let size = needed.div_ceil(256) * 256;
    let mut start = u32::from(std::net::Ipv4Addr::new(10, 64, 0, 0));
    let mut prefixes = Vec::new();
    let mut left = size;
    // Largest blocks first, each aligned (start is aligned to every block size still left).
    for bits in (8..=22).rev() {
        let block = 1u32 << bits;
        if left >= block {
            prefixes.push(format!("{}/{}", std::net::Ipv4Addr::from(start), 32 - bits));
            start += block;
            left -= block;
        }
    }
    prefixes
}

fn store_for(cluster: &EtcdCluster) -> Store {
    let config: EtcdConfig = toml::from_str(&cluster.client_toml(5000)).expect("the cluster's [ipam.etcd]");
    Arc::new(EtcdStore::new(config).expect("the cluster's certificates"))
}

fn rss_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let kb = status.lines().find_map(|l| l.strip_prefix("VmRSS:")).and_then(|v| v.split_whitespace().next());
    kb.and_then(|v| v.parse::<u64>().ok()).unwrap_or(0) * 1024
}

fn percentiles(mut samples: Vec<Duration>) -> Latency {
    samples.sort();
    let at = |q: f64| samples.get(((samples.len() as f64 * q) as usize).min(samples.len().saturating_sub(1))).copied();
    let ms = |d: Option<Duration>| d.map_or(f64::NAN, |d| d.as_secs_f64() * 1e3);
    Latency { p50_ms: ms(at(0.5)), p99_ms: ms(at(0.99)), samples: samples.len() }
}

async fn run_size(options: &Options, n: usize, progress: &impl Fn(&str)) -> Run {
    let p = options.pods_per_node;
    progress(&format!("{n} nodes x {p} pods: starting a 3-member etcd"));
    // Its data in memory: etcd's fsyncs on this VM's shared disk are not what a production etcd
    // runs on, and the runs would measure the disk.
    let cluster = EtcdCluster::start_under(MEMBERS, std::path::Path::new("/dev/shm"));
    let dir = ShmDir(std::path::Path::new("/dev/shm").join(format!("ipam-scale-{}-{n}", std::process::id())));
    let pool = pool_for(n, p);
    let stores: Vec<Store> = (0..n.div_ceil(AGENTS_PER_CONNECTION)).map(|_| store_for(&cluster)).collect();
    let shards: Vec<Shard> = (0..stores.len()).map(Shard::start).collect();
    let rss_before = rss_bytes();
    // Nodes join at [`JOINS_PER_S`], as a cluster's nodes boot, not all in one instant: 2,000
    // first rounds at once (registration, reconcile, a warm pool each) saturated etcd on this VM
    // and cost leases.
    let mut agents: Vec<Arc<Agent>> = Vec::with_capacity(n);
    let mut joins = tokio::time::interval(Duration::from_secs_f64(1.0 / JOINS_PER_S));
    for i in 0..n {
        joins.tick().await;
        let name = format!("node-{i}");
        let config = config(&name, &pool, options.lease_ttl, options.quarantine);
        let (store, shard) = (stores[i % stores.len()].clone(), &shards[i % stores.len()]);
        agents.push(Arc::new(Agent::start(&name, &dir.0.join(&name), &config, store, shard).expect("open the agent")));
    }

    progress(&format!("{n} nodes: filling to {} pods on {}", n * p, pool.join(",")));
    let ramp_started = Instant::now();
    let reached = fill(&agents, p, ramp_started + options.ramp_limit).await;
    let ramp_s = ramp_started.elapsed().as_secs_f64();
    let rss_bytes_per_node = rss_bytes().saturating_sub(rss_before) / n as u64;

    let mut run = Run {
        nodes: n,
        pods_per_node: p,
        reached,
        ramp_s,
        rss_bytes_per_node,
        quarantine_s: options.quarantine,
        ..Run::default()
    };
    if !reached {
        progress(&format!("{n} nodes: not full after {:?}: no steady state measured", options.ramp_limit));
        run.db_bytes = EtcdCounters::read(&cluster, MEMBERS).map_or(f64::NAN, |c| c.db_bytes);
        for agent in agents {
            agent.upkeep.abort();
        }
        return run;
    }

    progress(&format!("{n} nodes: full after {ramp_s:.1} s; churning for {} s", options.steady_seconds * 4 / 3));
    let stop = Arc::new(AtomicBool::new(false));
    let adds = Arc::new(Mutex::new(Vec::new()));
    let adds_around = Arc::new(Mutex::new(Vec::new()));
    let dels = Arc::new(Mutex::new(Vec::new()));
    let measuring = Arc::new(AtomicBool::new(false));
    let failed = Arc::new(AtomicU64::new(0));
    let churn = tokio::spawn(churn(
        agents.clone(),
        stop.clone(),
        measuring.clone(),
        Samples { adds: adds.clone(), adds_around: adds_around.clone(), dels: dels.clone(), failed: failed.clone() },
    ));
    tokio::time::sleep(Duration::from_secs(options.steady_seconds / 3)).await;
    let before = EtcdCounters::read(&cluster, MEMBERS).expect("etcd metrics");
    let (load_before, cpu_before, lateness) =
        (machine::load_average(), machine::cpu_seconds(), machine::Lateness::start(&shards[0].handle));
    let window = Instant::now();
    measuring.store(true, Ordering::Relaxed);
    tokio::time::sleep(Duration::from_secs(options.steady_seconds)).await;
    measuring.store(false, Ordering::Relaxed);
    let after = EtcdCounters::read(&cluster, MEMBERS).expect("etcd metrics");
    let seconds = window.elapsed().as_secs_f64();
    run.load_average = (load_before, machine::load_average());
    run.agents_cpu = (machine::cpu_seconds() - cpu_before) / seconds;
    run.wake_lateness = percentiles(lateness.finish());
    stop.store(true, Ordering::Relaxed);
    let _ = churn.await;
    let delta = after.since(&before);
    run.add_errors = failed.load(Ordering::Relaxed);
    run.add = percentiles(std::mem::take(&mut *adds.lock().unwrap()));
    run.add_around = percentiles(std::mem::take(&mut *adds_around.lock().unwrap()));
    run.del = percentiles(std::mem::take(&mut *dels.lock().unwrap()));
    run.etcd_read_bytes_per_s = delta.read_bytes / seconds;
    run.etcd_write_bytes_per_s = delta.written_bytes / seconds;
    run.etcd_requests_per_s = delta.requests / seconds;
    run.etcd_requests_by_method_per_s = delta.by_method.iter().map(|(m, v)| (m.clone(), v / seconds)).collect();
    let methods: Vec<String> =
        run.etcd_requests_by_method_per_s.iter().map(|(m, v)| format!("{m} {:.3}", v / n as f64)).collect();
    progress(&format!("{n} nodes: etcd requests per node per s: {}", methods.join(", ")));
    run.db_bytes = after.db_bytes;

    // Nodes die: their agents stop, their leases run out, the leader takes their addresses
    // back. First a node that does not lead, then the leader (a handover on top).
    let mut agents: Vec<Agent> = agents.into_iter().map(|a| Arc::into_inner(a).expect("churn is over")).collect();
    let observer = store_for(&cluster);
    let keys = Keys::new(agents::PREFIX);
    let limit = Duration::from_secs(options.lease_ttl + options.quarantine + 60);
    let leader =
        observer.get(&keys.leader()).await.ok().flatten().map(|e| String::from_utf8_lossy(&e.value).into_owned());
    let follower = agents.iter().position(|a| Some(&a.name) != leader.as_ref()).expect("more than one node");
    run.reclaim = kill_and_time(agents.remove(follower), &observer, &keys, limit, progress).await;
    if let Some(at) = agents.iter().position(|a| Some(&a.name) == leader.as_ref()) {
        run.leader_reclaim = kill_and_time(agents.remove(at), &observer, &keys, limit, progress).await;
    }

    // Another node restarts on its state directory: its first round registers and reconciles.
    let restarted = agents.remove(0);
    let name = restarted.name.clone();
    let held = restarted.held().len();
    let (dir_of, _) = restarted.kill();
    progress(&format!("{n} nodes: restarting {name}"));
    let config = config(&name, &pool, options.lease_ttl, options.quarantine);
    let started = Instant::now();
    let settings = config.settings().expect("checked settings");
    let ipam = vswitch::ipam::NodeIpam::open(settings, stores[0].clone(), &dir_of).expect("reopen");
    ipam.upkeep().tick(|_| true).await;
    run.reconcile_s = Some(started.elapsed().as_secs_f64());
    run.restarted_kept = held_in(&dir_of).len() == held;
    for agent in agents {
        agent.kill();
    }
    drop(cluster);
    run
}

/// Kills `victim` and times until no record names it, from the kill and from its lease's
/// expiry (its lease key gone, looked at every [`LOOK_EVERY`]).
async fn kill_and_time(
    victim: Agent,
    observer: &EtcdStore,
    keys: &Keys,
    limit: Duration,
    progress: &impl Fn(&str),
) -> Option<Reclaim> {
    let (name, watched) = (victim.name.clone(), victim.held());
    progress(&format!("killing {name} ({} addresses)", watched.len()));
    let died = Instant::now();
    drop(victim.kill());
    let (mut expired, mut still) = (None, watched.len());
    while died.elapsed() < limit {
        tokio::time::sleep(LOOK_EVERY).await;
        if expired.is_none() {
            if let Ok(None) = observer.get(&keys.node(&name)).await {
                expired = Some(Instant::now());
            }
            continue;
        }
        still = 0;
        for ip in &watched {
            let record = observer.get(&keys.ip(*ip)).await.ok().flatten();
            let record = record.and_then(|e| AddressRecord::decode(&e.value));
            if record.is_some_and(|r| r.node() == Some(name.as_str())) {
                still += 1;
            }
        }
        if still == 0 {
            let expired = expired.expect("looked for the records only after");
            return Some(Reclaim {
                from_kill_s: died.elapsed().as_secs_f64(),
                after_expiry_s: expired.elapsed().as_secs_f64(),
            });
        }
    }
    // Which step stalled: the lease outliving its TTL, or the leader's reclaim.
    match expired {
        None => progress(&format!("{name}: its lease key still there after {limit:?}")),
        Some(at) => progress(&format!(
            "{name}: {still} of {} addresses still its {:.1} s after its lease expired",
            watched.len(),
            at.elapsed().as_secs_f64()
        )),
    }
    None
}

/// Brings every node to `pods` pods, at most [`RAMP_CONCURRENCY`] ADDs at a time, retrying
/// ADDs the agent refuses for now (its warm pool empty and the store slow). False if the
/// deadline came first.
async fn fill(agents: &[Arc<Agent>], pods: usize, deadline: Instant) -> bool {
    let permits = Arc::new(tokio::sync::Semaphore::new(RAMP_CONCURRENCY));
    let mut tasks = tokio::task::JoinSet::new();
    for agent in agents {
        let (agent, permits) = (agent.clone(), permits.clone());
        tasks.spawn(async move {
            for _ in 0..pods {
                loop {
                    if Instant::now() > deadline {
                        return false;
                    }
                    let _permit = permits.acquire().await.expect("open");
                    if agent.add().await.is_ok() {
                        break;
                    }
                    drop(_permit);
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
            true
        });
    }
    let mut all = true;
    while let Some(done) = tasks.join_next().await {
        all &= done.unwrap_or(false);
    }
    all
}

/// The churn's latencies, and the ADDs refused.
#[derive(Clone)]
struct Samples {
    adds: Arc<Mutex<Vec<Duration>>>,
    adds_around: Arc<Mutex<Vec<Duration>>>,
    dels: Arc<Mutex<Vec<Duration>>>,
    failed: Arc<AtomicU64>,
}

/// Until `stop`: every 100 ms, a tenth of a second's worth of churn (N / [`CHURN_PERIOD_S`]
/// per second), each on a random node: a DEL of its oldest pod, then an ADD. Latencies are kept
/// while `measuring`.
async fn churn(agents: Vec<Arc<Agent>>, stop: Arc<AtomicBool>, measuring: Arc<AtomicBool>, samples: Samples) {
    let per_tick = agents.len() as f64 / CHURN_PERIOD_S / 10.0;
    let mut owed = 0.0;
    let mut tasks = tokio::task::JoinSet::new();
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    while !stop.load(Ordering::Relaxed) {
        tick.tick().await;
        owed += per_tick;
        while owed >= 1.0 {
            owed -= 1.0;
            let agent = agents[rand::thread_rng().gen_range(0..agents.len())].clone();
            let (measuring, samples) = (measuring.clone(), samples.clone());
            tasks.spawn(async move {
                let del = agent.delete_oldest().await;
                let add = agent.add().await;
                if measuring.load(Ordering::Relaxed) {
                    if let Some(Ok(d)) = del {
                        samples.dels.lock().unwrap().push(d);
                    }
                    match add {
                        Ok(took) => {
                            samples.adds.lock().unwrap().push(took.agent);
                            samples.adds_around.lock().unwrap().push(took.around);
                        }
                        Err(_) => drop(samples.failed.fetch_add(1, Ordering::Relaxed)),
                    }
                }
            });
        }
        while tasks.try_join_next().is_some() {}
    }
    while tasks.join_next().await.is_some() {}
}

#[cfg(test)]
mod tests {
    use vswitch::ipam::pool::{Family, Pool};

    #[test]
    fn the_pool_is_twice_the_need_rounded_to_a_24_and_as_full_at_every_size() {
        for (nodes, pods) in [(10, 30), (100, 30), (1000, 30), (2000, 30), (2000, 110), (1, 1)] {
            let prefixes = super::pool_for(nodes, pods);
            let pool = Pool::parse(&prefixes, &[]).expect("aligned prefixes");
            let needed = (nodes * (pods + 28) * 2).max(256) as u128;
            let size = pool.size(Family::Ipv4);
            // Each prefix's network and broadcast addresses are not handed out.
            let blocks = 2 * prefixes.len() as u128;
            assert!(size + blocks >= needed && size < needed + 256, "{nodes} x {pods}: {prefixes:?} hold {size}");
        }
    }
}
