//! The cluster IPAM's race at scale: 200 simulated nodes (the real node agent, in this process,
//! no TAPs) on a real 3-member etcd, racing for a pool of 4,096 addresses until it runs dry, with
//! pods deleted and added meanwhile. Checked from etcd's keys: no address has two owners, every
//! pod's address is recorded as its own, no record names a node that does not know it.
//!
//! Needs root-free etcd only (tests/install-deps.sh); members on unique loopback addresses,
//! removed on drop also when the test fails.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use vpc_lab::etcd::EtcdCluster;
use vpc_lab::netns::TempDir;
use vswitch::ipam::record::{AddressRecord, Keys};
use vswitch::ipam::store::etcd::{EtcdConfig, EtcdStore};
use vswitch::ipam::{AddressRequest, IpamConfig, IpamError, NodeIpam};
use vswitch_api::api::Attachment;

const NODES: usize = 200;
/// 4,094 usable addresses in the /20 (not its network and broadcast address) and 2 in the /31.
const POOLS: &str = "\"10.98.0.0/20\", \"10.98.16.0/31\"";
const POOL_SIZE: usize = 4096;
const PREFIX: &str = "/vpc-ipam/race200";
/// More than the pool holds: every fifth pod is deleted again, so each node ends holding 21
/// pods, 4,200 in all, past the 4,096 addresses even with every warm pool empty. (At 22, 18 held
/// per node, the pool ran dry only when the warm pools happened to be full at the end: whether
/// the test saw an exhausted ADD depended on timing.)
const PODS_PER_NODE: usize = 26;

type Agent = Arc<NodeIpam<Arc<EtcdStore>>>;

fn agent(name: &str, dir: &std::path::Path, store: Arc<EtcdStore>) -> Agent {
    let text = format!(
        "node_name = \"{name}\"\npools = [{POOLS}]\nprefix = \"{PREFIX}\"\nwarm_target = 2\nwarm_max = 4\n\
         lease_ttl_seconds = 10\nquarantine_seconds = 5\nreuse_delay_seconds = 2\n"
    );
    let config: IpamConfig = toml::from_str(&text).unwrap();
    std::fs::create_dir_all(dir).unwrap();
    Arc::new(NodeIpam::open(config.settings().unwrap(), store, dir).unwrap())
}

fn owner(node: usize, pod: usize) -> Attachment {
    Attachment { container_id: format!("n{node}-p{pod}"), ifname: "eth0".into() }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_nodes_racing_on_4096_addresses_never_duplicate_or_lose() {
    let cluster = EtcdCluster::start(3);
    let dir = TempDir::new();
    let config: EtcdConfig = toml::from_str(&cluster.client_toml(5000)).expect("the cluster's [ipam.etcd]");
    // A few connections, as a few processes would have.
    let stores: Vec<Arc<EtcdStore>> = (0..4).map(|_| Arc::new(EtcdStore::new(config.clone()).unwrap())).collect();
    let agents: Vec<Agent> = (0..NODES)
        .map(|i| agent(&format!("node-{i}"), &dir.0.join(format!("node-{i}")), stores[i % 4].clone()))
        .collect();
    // Stopped between rounds, never inside one: a round cut short mid-claim is a crash, which
    // the chaos tests cover; here every claim a round makes is also recorded by it.
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let upkeep: Vec<_> = agents
        .iter()
        .map(|a| {
            let (a, stop) = (a.clone(), stop.clone());
            tokio::spawn(async move {
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    a.upkeep().tick(|_| true).await;
                    tokio::select! {
                        _ = tokio::time::sleep(Duration::from_millis(500)) => {}
                        _ = a.upkeep().kicked() => {}
                    }
                }
            })
        })
        .collect();

    // Every node adds its pods as fast as it can, and deletes every fifth one again.
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for (i, a) in agents.iter().enumerate() {
        let a = a.clone();
        tasks.spawn(async move {
            let (mut held, mut exhausted) = (Vec::new(), 0);
            for p in 0..PODS_PER_NODE {
                let request = AddressRequest::new(owner(i, p), "/".into(), None);
                let deadline = Instant::now() + Duration::from_secs(120);
                loop {
                    match a.requests().assign(&request, &HashSet::new()).await {
                        Ok(got) => {
                            held.push((owner(i, p), got.ips[0]));
                            break;
                        }
                        Err(IpamError::Exhausted { .. }) => {
                            exhausted += 1;
                            break;
                        }
                        Err(e) if Instant::now() > deadline => panic!("node-{i}: ADD {p}: {e}"),
                        Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
                    }
                }
                if p % 5 == 4 {
                    let (gone, _) = held.remove(0);
                    a.requests().release(&gone).await.unwrap();
                }
            }
            (i, held, exhausted)
        });
    }
    let mut pods: Vec<(usize, Attachment, IpAddr)> = Vec::new();
    let mut exhausted = 0;
    while let Some(done) = tasks.join_next().await {
        let (i, held, e) = done.unwrap();
        exhausted += e;
        pods.extend(held.into_iter().map(|(o, ip)| (i, o, ip)));
    }
    eprintln!(
        "{NODES} nodes: {} pods hold an address, {exhausted} ADDs found the pool exhausted, in {:.1}s",
        pods.len(),
        started.elapsed().as_secs_f64()
    );

    // Everything written: no node has anything pending.
    let synced = Instant::now();
    while agents.iter().any(|a| a.local_view().pending_sync > 0) {
        assert!(synced.elapsed() < Duration::from_secs(120), "not synced after 120 s");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for task in upkeep {
        task.await.unwrap();
    }

    // No address has two pods.
    let mut by_ip: HashMap<IpAddr, &Attachment> = HashMap::new();
    for (_, o, ip) in &pods {
        if let Some(other) = by_ip.insert(*ip, o) {
            panic!("{ip} is both {} and {}", other.container_id, o.container_id);
        }
    }
    // etcd says the same: each pod's record names it and its node; nothing names a node that
    // does not hold it.
    let keys = Keys::new(PREFIX);
    let records: BTreeMap<IpAddr, AddressRecord> = cluster
        .get_prefix(&keys.ips())
        .into_iter()
        .map(|(k, v)| (keys.ip_of(&k).unwrap(), AddressRecord::decode(v.as_bytes()).unwrap()))
        .collect();
    for (i, o, ip) in &pods {
        let node = format!("node-{i}");
        assert!(
            matches!(records.get(ip), Some(AddressRecord::Assigned { node: n, owner, .. }) if *n == node && owner == o),
            "{ip} of {}: {:?}",
            o.container_id,
            records.get(ip)
        );
    }
    let mut lost = Vec::new();
    let mut warm_in_store: HashMap<String, u64> = HashMap::new();
    for (ip, record) in &records {
        match record {
            AddressRecord::Assigned { owner, .. } if by_ip.get(ip) == Some(&owner) => {}
            AddressRecord::Warm { node, .. } => *warm_in_store.entry(node.clone()).or_default() += 1,
            AddressRecord::Cooling { .. } => {}
            AddressRecord::Assigned { node, owner, .. } => {
                let i: usize = node.trim_start_matches("node-").parse().unwrap();
                let here = agents[i].requests().lookup(owner);
                let held = pods.iter().find(|(_, o, _)| o == owner).map(|(_, _, ip)| *ip);
                lost.push(format!(
                    "{ip}: assigned to {} on {node}, which has {here:?} for it (the pod holds {held:?})",
                    owner.container_id
                ));
            }
            other => lost.push(format!("{ip}: {other:?}")),
        }
    }
    // Each node's warm pool is exactly the warm records naming it.
    for (i, a) in agents.iter().enumerate() {
        let (here, there) = (a.local_view().warm, warm_in_store.get(&format!("node-{i}")).copied().unwrap_or(0));
        if here != there {
            lost.push(format!("node-{i}: {here} warm addresses, the store names it in {there} warm records"));
        }
    }
    assert!(lost.is_empty(), "{} lost: {lost:#?}", lost.len());
    let in_store: u64 = warm_in_store.values().sum();
    assert!(records.len() <= POOL_SIZE);
    assert!(exhausted > 0, "the race must reach the end of the pool");
    eprintln!(
        "etcd: {} records ({} assigned, {} warm, {} cooling), 0 duplicates, 0 lost",
        records.len(),
        pods.len(),
        in_store,
        records.values().filter(|r| r.state_name() == "cooling").count()
    );
}
