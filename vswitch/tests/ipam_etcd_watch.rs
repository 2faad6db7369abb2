//! The store's watch against a real 3-member etcd: what a node follows (the leader key, the
//! leader's node and member prefixes) arrives as events in revision order, a watch resumed from
//! an earlier revision replays what it missed, one from a compacted revision says so, and the
//! mirror built on it lists again only then. Also a listing larger than one page (and than
//! etcd-client's 4 MB message limit) at one revision.
//!
//! Needs etcd only (tests/install-deps.sh); members on unique loopback addresses, removed on drop
//! also when the test fails.

use std::time::{Duration, Instant};

use vpc_lab::etcd::EtcdCluster;
use vswitch::ipam::store::etcd::{EtcdConfig, EtcdStore};
use vswitch::ipam::store::mirror::Mirror;
use vswitch::ipam::store::{Change, ClusterStore, Watch, WatchEvent};

fn store(cluster: &EtcdCluster) -> EtcdStore {
    let config: EtcdConfig = toml::from_str(&cluster.client_toml(5000)).expect("the cluster's [ipam.etcd]");
    EtcdStore::new(config).unwrap()
}

/// The next event that is not a progress notification (within 10 s).
async fn next_change(watch: &mut Watch) -> WatchEvent {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, watch.recv()).await {
            Ok(Some(WatchEvent::Progress { .. })) => continue,
            Ok(Some(event)) => return event,
            Ok(None) => panic!("the watch ended"),
            Err(_) => panic!("no event within 10 s"),
        }
    }
}

fn keys_of(event: &WatchEvent) -> Vec<String> {
    let WatchEvent::Changed { changes, .. } = event else { panic!("not a change: {event:?}") };
    changes
        .iter()
        .map(|c| match c {
            Change::Put(e) => format!("put {}", e.key),
            Change::Delete { key, .. } => format!("delete {key}"),
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watches_resume_replay_report_compaction_and_the_mirror_lists_again_only_then() {
    let cluster = EtcdCluster::start(3);
    let store = store(&cluster);
    store.put("/w/node/a", b"1".to_vec()).await.unwrap();
    let listing = store.list_at("/w/node/").await.unwrap();
    assert_eq!(listing.entries.len(), 1);

    // Changes after the listing, and only under the prefix, in order.
    let mut watch = store.watch("/w/node/", listing.revision).await.unwrap();
    store.put("/w/other", b"x".to_vec()).await.unwrap();
    store.put("/w/node/b", b"2".to_vec()).await.unwrap();
    store.delete("/w/node/a").await.unwrap();
    let first = next_change(&mut watch).await;
    let second = next_change(&mut watch).await;
    assert_eq!([keys_of(&first), keys_of(&second)].concat(), ["put /w/node/b", "delete /w/node/a"]);

    // A leased key's expiry is a delete event: what tells the leader a node died.
    let lease = store.grant_lease(Duration::from_secs(1)).await.unwrap();
    store.put_leased("/w/node/c", b"3".to_vec(), lease).await.unwrap();
    assert_eq!(keys_of(&next_change(&mut watch).await), ["put /w/node/c"]);
    assert_eq!(keys_of(&next_change(&mut watch).await), ["delete /w/node/c"], "the lease ran out");
    drop(watch);

    // A watch resumed from the listing's revision replays everything since.
    let mut resumed = store.watch("/w/node/", listing.revision).await.unwrap();
    let mut replayed = Vec::new();
    while replayed.len() < 4 {
        replayed.extend(keys_of(&next_change(&mut resumed).await));
    }
    assert_eq!(replayed, ["put /w/node/b", "delete /w/node/a", "put /w/node/c", "delete /w/node/c"]);
    drop(resumed);

    // Once etcd has compacted past it, a resume says so (and ends).
    let now = store.list_at("/w/").await.unwrap().revision;
    let out = cluster.etcdctl(&["compact", &now.to_string()]);
    assert!(out.status.success(), "etcdctl compact: {}", String::from_utf8_lossy(&out.stderr));
    let mut stale = store.watch("/w/node/", listing.revision).await.unwrap();
    assert_eq!(next_change(&mut stale).await, WatchEvent::Compacted);

    // The leader key is created once, bound to a lease, and goes with it.
    let lease = store.grant_lease(Duration::from_secs(1)).await.unwrap();
    assert!(store.create_leased("/w/leader", b"n1".to_vec(), lease).await.unwrap().is_some());
    assert_eq!(store.create_leased("/w/leader", b"n2".to_vec(), lease).await.unwrap(), None, "exists");
    let mut mirror = Mirror::new("/w/leader");
    mirror.refresh(&store).await.unwrap();
    assert!(mirror.get("/w/leader").is_some());
    let deadline = Instant::now() + Duration::from_secs(10);
    while mirror.get("/w/leader").is_some() {
        assert!(Instant::now() < deadline, "the leader key outlived its lease in the mirror");
        tokio::time::sleep(Duration::from_millis(100)).await;
        mirror.refresh(&store).await.unwrap();
    }
    assert_eq!(mirror.listings(), 1, "followed by its watch");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_listing_past_one_page_and_4_mb_is_whole_and_at_one_revision() {
    let cluster = EtcdCluster::start(3);
    let store = store(&cluster);
    // 5,000 keys of 1 KB: 5 MB, three pages.
    let value = vec![b'v'; 1024];
    let keys: Vec<String> = (0..5000).map(|i| format!("/big/ip/{i:05}")).collect();
    for chunk in keys.chunks(100) {
        let puts = chunk.iter().map(|key| store.put(key, value.clone()));
        for put in futures::future::join_all(puts).await {
            put.unwrap();
        }
    }
    let listing = store.list_at("/big/ip/").await.unwrap();
    assert_eq!(listing.entries.len(), 5000);
    assert!(listing.entries.windows(2).all(|w| w[0].key < w[1].key), "in key order, each once");
    assert!(listing.entries.iter().all(|e| e.version <= listing.revision));
}

/// LeaseKeepAlive streams etcd has started, summed over the running members.
fn keep_alive_streams_started(cluster: &EtcdCluster) -> u64 {
    (0..3)
        .map(|i| {
            let text = cluster.metrics(i).unwrap();
            text.lines()
                .filter(|l| l.starts_with("grpc_server_started_total{") && l.contains("grpc_method=\"LeaseKeepAlive\""))
                .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
                .sum::<f64>() as u64
        })
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keep_alives_share_one_stream_per_lease_which_is_reopened_when_it_breaks() {
    let mut cluster = EtcdCluster::start(3);
    let store = store(&cluster);
    let lease = store.grant_lease(Duration::from_secs(10)).await.unwrap();
    let before = keep_alive_streams_started(&cluster);
    for _ in 0..20 {
        assert!(store.keep_alive(lease).await.unwrap());
    }
    let started = keep_alive_streams_started(&cluster) - before;
    // One per keep-alive before: etcd-client's lease_keep_alive opens a stream each call.
    assert_eq!(started, 1, "20 keep-alives of one lease started {started} LeaseKeepAlive streams");

    // Its member stops: the stream breaks, and the next keep-alive opens one on another member.
    let other = store.grant_lease(Duration::from_secs(60)).await.unwrap();
    assert!(store.keep_alive(other).await.unwrap());
    for i in 0..3 {
        cluster.stop_member(i);
        assert!(store.keep_alive(lease).await.unwrap(), "with member {i} stopped");
        cluster.start_member(i);
        cluster.wait_healthy(Duration::from_secs(30)).unwrap();
    }

    // A lease that expired on an open stream is gone (etcd answers TTL 0), not an error.
    let short = store.grant_lease(Duration::from_secs(2)).await.unwrap();
    assert!(store.keep_alive(short).await.unwrap());
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert!(!store.keep_alive(short).await.unwrap(), "expired");
    assert!(store.keep_alive(other).await.unwrap(), "another lease on the same store lives on");
}
