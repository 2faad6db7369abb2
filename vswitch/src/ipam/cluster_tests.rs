//! The node agent against the node-local file store, with several "nodes" sharing one store
//! file: the same rules etcd enforces, without a cluster. The proof against a real etcd cluster
//! is in `vswitch/tests/ipam_etcd.rs`.

use std::collections::HashSet;
use std::net::IpAddr;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use vswitch_api::api::{AssignSpec, Attachment, IpFamilies, PodRef};

use super::error::{Conflict, InvalidRequest, SettingsError, StickyBusy};
use super::pool::Family;
use super::record::{AddressRecord, Keys};
use super::store::file::FileStore;
use super::store::{ClusterStore, Entry, Listing, StoreError, Watch};
use super::{AddressRequest, IpamConfig, IpamError, NodeIpam};

/// `pool`: one prefix, or several separated by commas.
fn config(node: &str, pool: &str, extra: &str) -> IpamConfig {
    let pools: Vec<String> = pool.split(',').map(|p| format!("\"{p}\"")).collect();
    toml::from_str(&format!(
        "node_name = \"{node}\"\npools = [{}]\nlease_ttl_seconds = 2\nquarantine_seconds = 1\n{extra}",
        pools.join(", ")
    ))
    .unwrap()
}

fn node(dir: &Path, name: &str, pool: &str, extra: &str) -> Arc<NodeIpam<FileStore>> {
    let state = dir.join(name);
    std::fs::create_dir_all(&state).unwrap();
    let settings = config(name, pool, extra).settings().unwrap();
    Arc::new(NodeIpam::open(settings, FileStore::new(&dir.join("store.json")), &state).unwrap())
}

fn spec(id: &str, pod: Option<(&str, &str)>) -> AddressRequest {
    AddressRequest::new(
        Attachment { container_id: id.into(), ifname: "eth0".into() },
        format!("/run/netns/{id}").into(),
        pod.map(|(ns, name)| PodRef { namespace: ns.into(), name: name.into() }),
    )
}

async fn records(dir: &Path) -> Vec<(IpAddr, AddressRecord)> {
    let store = FileStore::new(&dir.join("store.json"));
    let keys = Keys::new("/vpc-ipam/default");
    store
        .list(&keys.ips())
        .await
        .unwrap()
        .into_iter()
        .map(|e| (keys.ip_of(&e.key).unwrap(), AddressRecord::decode(&e.value).unwrap()))
        .collect()
}

fn none() -> HashSet<IpAddr> {
    HashSet::new()
}

/// `node` gives `ip` to a new pod, asking for it by name: a returning node that lost it finds it
/// taken (one that nobody took is taken back instead).
async fn take_by_name<S: ClusterStore>(node: &NodeIpam<S>, ip: IpAddr) {
    let IpAddr::V4(v4) = ip else { panic!("an IPv4 pool") };
    let request = AddressRequest { ipv4: Some(v4), ..spec("taker", None) };
    assert_eq!(node.requests().assign(&request, &none()).await.unwrap().ips, [ip]);
}

fn with_families(mut spec: AddressRequest, families: IpFamilies) -> AddressRequest {
    spec.families = Some(families);
    spec
}

/// Each address once, and one of each family per pod (IPv4 first).
fn assert_dual(views: &[Vec<IpAddr>]) {
    let all: Vec<IpAddr> = views.iter().flatten().copied().collect();
    assert_eq!(all.iter().collect::<HashSet<_>>().len(), all.len(), "an address twice: {views:?}");
    for ips in views {
        assert!(ips.len() == 2 && ips[0].is_ipv4() && ips[1].is_ipv6(), "{ips:?}");
    }
}

const DUAL: &str = "10.0.0.0/28,fd00::/64";

#[tokio::test]
async fn dual_stack_pods_get_one_address_per_family_and_release_both() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (node(dir.path(), "a", DUAL, "warm_target = 2"), node(dir.path(), "b", DUAL, "warm_target = 2"));
    a.upkeep().tick(|_| false).await;
    b.upkeep().tick(|_| false).await;
    assert_eq!((a.local_view().warm, b.local_view().warm), (4, 4), "a warm pool per family");
    let mut views = Vec::new();
    for i in 0..3 {
        views.push(a.requests().assign(&spec(&format!("a{i}"), None), &none()).await.unwrap().ips);
        views.push(b.requests().assign(&spec(&format!("b{i}"), None), &none()).await.unwrap().ips);
    }
    assert_dual(&views);
    // Repeated ADD: the same two, not new.
    let again = a.requests().assign(&spec("a0", None), &none()).await.unwrap();
    assert_eq!((&again.ips, again.new), (&views[0], false));
    assert_eq!(a.requests().lookup(&spec("a0", None).owner), views[0]);
    // One family when asked for one.
    let v6 = a.requests().assign(&with_families(spec("v6", None), IpFamilies::Ipv6), &none()).await.unwrap().ips;
    let v4 = a.requests().assign(&with_families(spec("v4", None), IpFamilies::Ipv4), &none()).await.unwrap().ips;
    assert!(v6.len() == 1 && v6[0].is_ipv6() && v4.len() == 1 && v4[0].is_ipv4(), "{v6:?} {v4:?}");
    // Specific addresses, one per family.
    let taken: HashSet<IpAddr> = records(dir.path()).await.into_iter().map(|(ip, _)| ip).collect();
    let free_v4 = (1..15).map(|i| IpAddr::from([10, 0, 0, i])).find(|ip| !taken.contains(ip)).unwrap();
    let wanted: Vec<IpAddr> = vec![free_v4, "fd00::beef".parse().unwrap()];
    let as_asked = |ips: Vec<IpAddr>| AssignSpec {
        owner: spec("fixed", None).owner,
        netns: "/run/netns/fixed".into(),
        pod: None,
        ips,
        families: None,
        sticky: None,
    };
    let fixed = AddressRequest::try_from(as_asked(wanted.clone())).unwrap();
    assert_eq!(a.requests().assign(&fixed, &none()).await.unwrap().ips, wanted);
    let fixed = AddressRequest::try_from(as_asked(vec!["fd00::1:2".parse().unwrap()])).unwrap();
    let err = a.requests().assign(&fixed, &none()).await.unwrap_err();
    assert!(matches!(err, IpamError::Conflict(Conflict::AlreadyHas { .. })), "{err:?}");
    let two = AddressRequest::try_from(as_asked(vec!["fd00::1".parse().unwrap(), "fd00::2".parse().unwrap()]));
    assert_eq!(two, Err(InvalidRequest::TwoOfFamily(Family::Ipv6)), "two IPv6 addresses");
    // Released: both cool down in the store.
    assert_eq!(a.requests().release(&spec("a0", None).owner).await.unwrap(), views[0]);
    a.upkeep().tick(|_| true).await;
    let now = records(dir.path()).await;
    for ip in &views[0] {
        assert!(now.iter().any(|(i, r)| i == ip && r.state_name() == "cooling"), "{ip}: {now:?}");
    }
    // Every IPv6 key is the canonical spelling.
    let store = FileStore::new(&dir.path().join("store.json"));
    let keys = Keys::new("/vpc-ipam/default");
    assert!(store.get(&keys.ip("fd00::beef".parse().unwrap())).await.unwrap().is_some());
    assert!(store.get("/vpc-ipam/default/ip/fd00:0::beef").await.unwrap().is_none());
    let v4_only = node(dir.path(), "c", "10.0.0.0/28", "warm_target = 1");
    let err = v4_only.requests().assign(&with_families(spec("c0", None), IpFamilies::Dual), &none()).await.unwrap_err();
    assert!(matches!(err, IpamError::Invalid(InvalidRequest::FamilyNotInPool { .. })), "{err:?}");
}

#[tokio::test]
async fn one_family_exhausted_takes_nothing_and_the_other_address_stays_warm() {
    let dir = tempfile::tempdir().unwrap();
    // Three IPv6 addresses (fd00::11-13; fd00::10 is the subnet-router anycast address).
    let a = node(dir.path(), "a", "10.0.0.0/28,fd00::10/126", "warm_target = 1");
    a.upkeep().tick(|_| false).await;
    let mut views = Vec::new();
    for i in 0..3 {
        views.push(a.requests().assign(&spec(&format!("p{i}"), None), &none()).await.unwrap().ips);
    }
    assert_dual(&views);
    a.upkeep().tick(|_| true).await;
    let warm_before = a.local_view().warm;
    let err = a.requests().assign(&spec("p3", None), &none()).await.unwrap_err();
    assert!(matches!(err, IpamError::Exhausted { .. }), "{err:?}");
    assert!(err.to_string().contains("IPv6"), "{err:?}");
    assert!(a.requests().lookup(&spec("p3", None).owner).is_empty(), "nothing held for the failed ADD");
    assert_eq!(a.local_view().assigned, 6);
    assert_eq!(a.local_view().warm, warm_before, "the IPv4 address it took is warm again, not cooling");
    a.upkeep().tick(|_| true).await;
    assert!(records(dir.path()).await.iter().all(|(_, r)| r.state_name() != "cooling"));
    // IPv4 alone still works.
    let v4 = a.requests().assign(&with_families(spec("p4", None), IpFamilies::Ipv4), &none()).await.unwrap().ips;
    assert!(v4.len() == 1 && v4[0].is_ipv4());
    // Released, an IPv6 address cools down: only then may it be handed out again.
    a.requests().release(&spec("p0", None).owner).await.unwrap();
    a.upkeep().tick(|_| true).await;
    let err = a.requests().assign(&spec("p5", None), &none()).await.unwrap_err();
    assert!(matches!(err, IpamError::Exhausted { .. }), "{err:?}");
}

#[tokio::test]
async fn a_sticky_dual_stack_pod_keeps_both_addresses_on_another_node() {
    let dir = tempfile::tempdir().unwrap();
    let extra = "warm_target = 2\nsticky = [\"db/*\"]";
    let (a, b) = (node(dir.path(), "a", DUAL, extra), node(dir.path(), "b", DUAL, extra));
    a.upkeep().tick(|_| false).await;
    b.upkeep().tick(|_| false).await;
    let first = a.requests().assign(&spec("c1", Some(("db", "pg-0"))), &none()).await.unwrap().ips;
    assert_dual(std::slice::from_ref(&first));
    a.requests().release(&spec("c1", None).owner).await.unwrap();
    a.upkeep().tick(|_| false).await;
    let sticky = records(dir.path()).await.into_iter().filter(|(_, r)| r.state_name() == "sticky").count();
    assert_eq!(sticky, 2, "both are held for the pod");
    let moved = b.requests().assign(&spec("c2", Some(("db", "pg-0"))), &none()).await.unwrap();
    assert_eq!((moved.ips, moved.new), (first, true), "the sticky pod keeps both on b");
}

#[tokio::test]
async fn a_64_refills_quickly_by_probing_without_listing_the_store() {
    let dir = tempfile::tempdir().unwrap();
    let faults = Arc::new(Faults::default());
    let a = faulty_node(dir.path(), "a", "fd00:1::/64", "warm_target = 16\nwarm_max = 16", &faults);
    let started = std::time::Instant::now();
    a.upkeep().tick(|_| false).await;
    assert_eq!(a.local_view().warm, 16);
    for i in 0..16 {
        let ips = a.requests().assign(&spec(&format!("p{i}"), None), &none()).await.unwrap().ips;
        assert!(ips.len() == 1 && ips[0].is_ipv6(), "{ips:?}");
    }
    // Listing fails from now on: the refill of a /64 never lists (it probes).
    faults.lists.store(true, Ordering::Relaxed);
    a.upkeep().tick(|_| true).await;
    assert_eq!(a.local_view().warm, 16, "refilled without a listing");
    assert!(started.elapsed() < Duration::from_secs(10), "{:?}", started.elapsed());
    faults.lists.store(false, Ordering::Relaxed);
    let metrics = a.metrics();
    assert_eq!(metrics.families.len(), 1);
    assert_eq!(metrics.families[0].pool_size, (1u128 << 64) - 1);
    let summary = super::node::pool_summary(&a.view().await);
    assert_eq!(summary, [(Family::Ipv6, (1u128 << 64) - 1, (1u128 << 64) - 1 - 32)]);
}

#[tokio::test]
async fn a_lost_claim_reply_in_a_dual_pool_is_taken_in_for_its_family() {
    let dir = tempfile::tempdir().unwrap();
    let faults = Arc::new(Faults::default());
    let a = faulty_node(dir.path(), "a", DUAL, "warm_target = 2", &faults);
    faults.lose_put_if.store(true, Ordering::Relaxed);
    a.upkeep().tick(|_| false).await;
    a.upkeep().tick(|_| false).await;
    assert_eq!(a.local_view().warm, 4, "two per family, the lost one among them");
    assert_eq!(warm_in_store(dir.path(), "a").await, 4, "none claimed and forgotten");
    let ips = a.requests().assign(&spec("p", None), &none()).await.unwrap().ips;
    assert_dual(&[ips]);
}

#[tokio::test]
async fn nodes_sharing_a_pool_never_hand_out_the_same_address() {
    let dir = tempfile::tempdir().unwrap();
    // 14 usable addresses, two nodes with warm pools of 4.
    let (a, b) = (
        node(dir.path(), "a", "10.0.0.0/28", "warm_target = 4"),
        node(dir.path(), "b", "10.0.0.0/28", "warm_target = 4"),
    );
    a.upkeep().tick(|_| false).await;
    b.upkeep().tick(|_| false).await;
    assert_eq!(a.local_view().warm, 4);
    assert_eq!(b.local_view().warm, 4);
    let mut got = Vec::new();
    for i in 0..7 {
        got.push(a.requests().assign(&spec(&format!("a{i}"), None), &none()).await.unwrap().ips[0]);
        got.push(b.requests().assign(&spec(&format!("b{i}"), None), &none()).await.unwrap().ips[0]);
    }
    let unique: HashSet<_> = got.iter().collect();
    assert_eq!(unique.len(), 14, "{got:?}");
    let err = a.requests().assign(&spec("a-more", None), &none()).await.unwrap_err();
    assert!(matches!(err, IpamError::Exhausted { .. }), "{err:?}");
    // Repeated ADD: same address, not new.
    let again = a.requests().assign(&spec("a0", None), &none()).await.unwrap();
    assert_eq!((again.ips, again.new), (vec![got[0]], false));
    // The store knows every assignment once the nodes have synced.
    a.upkeep().tick(|_| true).await;
    b.upkeep().tick(|_| true).await;
    let assigned = records(dir.path()).await.iter().filter(|(_, r)| r.state_name() == "assigned").count();
    assert_eq!(assigned, 14);
}

#[tokio::test]
async fn released_addresses_cool_down_cluster_wide_and_ports_are_never_handed_out() {
    let dir = tempfile::tempdir().unwrap();
    let a = node(dir.path(), "a", "10.0.0.0/29", "warm_target = 2\nwarm_max = 2");
    let b = node(dir.path(), "b", "10.0.0.0/29", "warm_target = 2\nwarm_max = 2");
    a.upkeep().tick(|_| false).await;
    let ip = a.requests().assign(&spec("p", None), &none()).await.unwrap().ips[0];
    assert_eq!(a.requests().release(&spec("p", None).owner).await.unwrap(), [ip]);
    assert!(a.requests().release(&spec("p", None).owner).await.unwrap().is_empty(), "twice is fine");
    a.upkeep().tick(|_| false).await;
    assert!(records(dir.path()).await.iter().any(|(i, r)| *i == ip && r.state_name() == "cooling"));
    // b fills its warm pool from what is left: never the cooling address.
    b.upkeep().tick(|_| false).await;
    let mut b_ips = Vec::new();
    for i in 0..2 {
        b_ips.push(b.requests().assign(&spec(&format!("b{i}"), None), &none()).await.unwrap().ips[0]);
    }
    assert!(!b_ips.contains(&ip), "{ip} was released a moment ago: {b_ips:?}");
    // An address a port uses is never handed out, whatever the state says.
    let warm: Vec<IpAddr> = records(dir.path())
        .await
        .into_iter()
        .filter(|(_, r)| matches!(r, AddressRecord::Warm { node, .. } if node == "a"))
        .map(|(i, _)| i)
        .collect();
    let in_use: HashSet<IpAddr> = warm.iter().copied().collect();
    let err = a.requests().assign(&spec("q", None), &in_use).await;
    assert!(err.as_ref().map_or(true, |v| !in_use.contains(&v.ips[0])), "{err:?} {in_use:?}");
}

#[tokio::test]
async fn a_dead_node_is_quarantined_reclaimed_and_fenced_when_it_returns() {
    let dir = tempfile::tempdir().unwrap();
    let a = node(dir.path(), "a", "10.0.0.0/28", "warm_target = 2");
    let b = node(dir.path(), "b", "10.0.0.0/28", "warm_target = 2");
    a.upkeep().tick(|_| false).await;
    let ip = a.requests().assign(&spec("victim", None), &none()).await.unwrap().ips[0];
    a.upkeep().tick(|_| true).await;
    b.upkeep().tick(|_| false).await;
    // a stops renewing (cut off); b sees it without a lease, quarantines, then reclaims.
    tokio::time::sleep(Duration::from_millis(2200)).await;
    for _ in 0..6 {
        b.upkeep().tick(|_| false).await;
        tokio::time::sleep(Duration::from_millis(400)).await;
    }
    let now = records(dir.path()).await;
    assert!(
        now.iter().any(|(i, r)| *i == ip && matches!(r, AddressRecord::Cooling { last_node, .. } if last_node == "a")),
        "{now:?}"
    );
    assert!(now.iter().all(|(_, r)| r.node() != Some("a")), "nothing stays a's: {now:?}");
    // b hands the address to a pod of its own (by name: the reuse delay does not apply).
    take_by_name(&b, ip).await;
    // a comes back: its lease is gone, it re-registers and learns that it lost the address.
    let fenced = a.upkeep().tick(|_| true).await;
    assert_eq!(fenced.len(), 1, "{fenced:?}");
    assert_eq!((fenced[0].ip, fenced[0].owner.container_id.as_str()), (ip, "victim"));
    assert!(a.requests().lookup(&spec("victim", None).owner).is_empty());
    assert_eq!(a.local_view().fenced_total, 1);
}

#[tokio::test]
async fn a_sticky_pod_keeps_its_address_on_another_node() {
    let dir = tempfile::tempdir().unwrap();
    let extra = "warm_target = 2\nsticky = [\"db/*\"]";
    let a = node(dir.path(), "a", "10.0.0.0/28", extra);
    let b = node(dir.path(), "b", "10.0.0.0/28", extra);
    a.upkeep().tick(|_| false).await;
    b.upkeep().tick(|_| false).await;
    let first = a.requests().assign(&spec("c1", Some(("db", "pg-0"))), &none()).await.unwrap().ips[0];
    // Still on a: the new node must wait for the DEL.
    let err = b.requests().assign(&spec("c2", Some(("db", "pg-0"))), &none()).await.unwrap_err();
    assert!(matches!(err, IpamError::StickyBusy(StickyBusy::StillHeld { .. })), "{err:?}");
    a.requests().release(&spec("c1", None).owner).await.unwrap();
    a.upkeep().tick(|_| false).await;
    let moved = b.requests().assign(&spec("c2", Some(("db", "pg-0"))), &none()).await.unwrap();
    assert_eq!(moved.ips, [first], "the sticky pod keeps its address on b");
    // A pod that is not sticky gets a fresh address.
    let other = b.requests().assign(&spec("c3", Some(("web", "x"))), &none()).await.unwrap().ips[0];
    assert_ne!(other, first);
}

#[tokio::test]
async fn a_claim_written_before_a_crash_is_adopted_and_the_warm_pool_serves_without_the_store() {
    let dir = tempfile::tempdir().unwrap();
    let a = node(dir.path(), "a", "10.0.0.0/28", "warm_target = 3");
    a.upkeep().tick(|_| false).await;
    drop(a);
    // The local file is lost (a crash between the store's write and the local one).
    std::fs::remove_file(dir.path().join("a/ipam.json")).unwrap();
    let a = node(dir.path(), "a", "10.0.0.0/28", "warm_target = 3");
    a.upkeep().tick(|_| false).await;
    assert_eq!(a.local_view().warm, 3, "the claims in the store were adopted, not claimed again");
    let mine = records(dir.path()).await.iter().filter(|(_, r)| r.node() == Some("a")).count();
    assert_eq!(mine, 3);
    // The store goes away: ADD still works from the warm pool, then says try later.
    let store = dir.path().join("store.json");
    std::fs::remove_file(&store).unwrap();
    std::fs::create_dir(&store).unwrap();
    for i in 0..3 {
        a.requests().assign(&spec(&format!("w{i}"), None), &none()).await.unwrap();
    }
    let err = a.requests().assign(&spec("w3", None), &none()).await.unwrap_err();
    assert!(matches!(err, IpamError::StoreUnavailable { .. }), "{err:?}");
    let fenced = a.upkeep().tick(|_| true).await;
    assert!(fenced.is_empty());
    assert_eq!(a.local_view().pending_sync, 3, "written once the store is back");
}

/// What [`Faulty`] does wrong, switched by the test.
#[derive(Debug, Default)]
struct Faults {
    /// `list` fails: the store became unreachable half-way through a round.
    lists: AtomicBool,
    /// The next `put_if` / `delete_if` is carried out, but its reply is lost (a timeout, an
    /// etcd member killed mid-request): the caller cannot tell whether it happened.
    lose_put_if: AtomicBool,
    lose_delete_if: AtomicBool,
    /// While `gated`, `put_if_absent` (a reclaim's write) waits for `gate`, which the test
    /// holds; `at_gate` says one is waiting.
    gated: AtomicBool,
    gate: tokio::sync::Mutex<()>,
    at_gate: AtomicBool,
}

/// The file store with [`Faults`].
#[derive(Debug)]
struct Faulty {
    inner: FileStore,
    faults: Arc<Faults>,
}

fn lost() -> StoreError {
    StoreError("the reply was lost".into())
}

impl ClusterStore for Faulty {
    fn describe(&self) -> String {
        self.inner.describe()
    }
    async fn list_at(&self, prefix: &str) -> Result<Listing, StoreError> {
        if self.faults.lists.load(Ordering::Relaxed) {
            return Err(StoreError("unreachable".into()));
        }
        self.inner.list_at(prefix).await
    }
    async fn watch(&self, prefix: &str, after: i64) -> Result<Watch, StoreError> {
        self.inner.watch(prefix, after).await
    }
    async fn get(&self, key: &str) -> Result<Option<Entry>, StoreError> {
        self.inner.get(key).await
    }
    async fn put_if(&self, key: &str, value: Vec<u8>, expected: i64) -> Result<Option<i64>, StoreError> {
        let result = self.inner.put_if(key, value, expected).await?;
        // (Address records only: the pool's key is written with a CAS at registration too.)
        if key.contains("/ip/") && self.faults.lose_put_if.swap(false, Ordering::Relaxed) {
            return Err(lost());
        }
        Ok(result)
    }
    async fn put_if_absent(
        &self,
        key: &str,
        value: Vec<u8>,
        expected: i64,
        absent: &str,
    ) -> Result<Option<i64>, StoreError> {
        if self.faults.gated.load(Ordering::Relaxed) {
            self.faults.at_gate.store(true, Ordering::Relaxed);
            let _wait = self.faults.gate.lock().await;
        }
        self.inner.put_if_absent(key, value, expected, absent).await
    }
    async fn delete_if(&self, key: &str, expected: i64) -> Result<bool, StoreError> {
        let result = self.inner.delete_if(key, expected).await?;
        if self.faults.lose_delete_if.swap(false, Ordering::Relaxed) {
            return Err(lost());
        }
        Ok(result)
    }
    async fn put(&self, key: &str, value: Vec<u8>) -> Result<(), StoreError> {
        self.inner.put(key, value).await
    }
    async fn delete(&self, key: &str) -> Result<(), StoreError> {
        self.inner.delete(key).await
    }
    async fn grant_lease(&self, ttl: Duration) -> Result<i64, StoreError> {
        self.inner.grant_lease(ttl).await
    }
    async fn keep_alive(&self, lease: i64) -> Result<bool, StoreError> {
        self.inner.keep_alive(lease).await
    }
    async fn put_leased(&self, key: &str, value: Vec<u8>, lease: i64) -> Result<(), StoreError> {
        self.inner.put_leased(key, value, lease).await
    }
    async fn create_leased(&self, key: &str, value: Vec<u8>, lease: i64) -> Result<Option<i64>, StoreError> {
        self.inner.create_leased(key, value, lease).await
    }
}

fn faulty_node(dir: &Path, name: &str, pool: &str, extra: &str, faults: &Arc<Faults>) -> Arc<NodeIpam<Faulty>> {
    let state = dir.join(name);
    std::fs::create_dir_all(&state).unwrap();
    let settings = config(name, pool, extra).settings().unwrap();
    let store = Faulty { inner: FileStore::new(&dir.join("store.json")), faults: faults.clone() };
    Arc::new(NodeIpam::open(settings, store, &state).unwrap())
}

/// Warm addresses the store gives `node`.
async fn warm_in_store(dir: &Path, node: &str) -> u64 {
    records(dir).await.iter().filter(|(_, r)| matches!(r, AddressRecord::Warm { node: n, .. } if n == node)).count()
        as u64
}

#[tokio::test]
async fn a_node_whose_re_registration_fails_half_way_registers_again_and_is_fenced() {
    let dir = tempfile::tempdir().unwrap();
    let faults = Arc::new(Faults::default());
    let a = faulty_node(dir.path(), "a", "10.0.0.0/28", "warm_target = 2", &faults);
    let b = node(dir.path(), "b", "10.0.0.0/28", "warm_target = 2");
    a.upkeep().tick(|_| false).await;
    let ip = a.requests().assign(&spec("victim", None), &none()).await.unwrap().ips[0];
    a.upkeep().tick(|_| true).await;
    // a is cut off until its lease has expired and b has reclaimed its addresses.
    tokio::time::sleep(Duration::from_millis(2200)).await;
    for _ in 0..6 {
        b.upkeep().tick(|_| false).await;
        tokio::time::sleep(Duration::from_millis(400)).await;
    }
    assert!(records(dir.path()).await.iter().all(|(_, r)| r.node() != Some("a")));
    take_by_name(&b, ip).await;
    // a comes back, finds its lease gone and takes a new one, but the store goes away again
    // before it has reconciled.
    faults.lists.store(true, Ordering::Relaxed);
    assert!(a.upkeep().tick(|_| true).await.is_empty());
    assert_eq!(a.requests().lookup(&spec("victim", None).owner), [ip], "not reconciled yet");
    // The next round's keep-alive of the new lease succeeds: a must still reconcile (and so
    // learn that it lost the address), not carry on as if registered.
    faults.lists.store(false, Ordering::Relaxed);
    let fenced = a.upkeep().tick(|_| true).await;
    assert_eq!(fenced.iter().map(|f| f.ip).collect::<Vec<_>>(), [ip], "{fenced:?}");
    assert!(a.requests().lookup(&spec("victim", None).owner).is_empty());
    let store = FileStore::new(&dir.path().join("store.json"));
    assert!(store.get(&Keys::new("/vpc-ipam/default").node("a")).await.unwrap().is_some(), "a is live again");
}

#[tokio::test]
async fn a_claim_whose_reply_was_lost_is_taken_in_not_leaked() {
    let dir = tempfile::tempdir().unwrap();
    let faults = Arc::new(Faults::default());
    let a = faulty_node(dir.path(), "a", "10.0.0.0/28", "warm_target = 3", &faults);
    // The first claim is written, but a never hears so.
    faults.lose_put_if.store(true, Ordering::Relaxed);
    a.upkeep().tick(|_| false).await;
    assert_eq!(warm_in_store(dir.path(), "a").await, 1);
    assert_eq!(a.local_view().warm, 0);
    a.upkeep().tick(|_| false).await;
    assert_eq!(a.local_view().warm, 3, "the claim that went through counts, and two more");
    assert_eq!(warm_in_store(dir.path(), "a").await, 3, "none claimed and forgotten");
}

/// An ADD that finds the warm pool empty claims its address straight as assigned; if that write
/// goes through but its reply is lost, the ADD is refused (unavailable): the address must not stay
/// assigned to an owner who never got it (it would never be released), but join the warm pool.
#[tokio::test]
async fn an_add_whose_claim_reply_was_lost_leaves_no_address_assigned_to_it() {
    let dir = tempfile::tempdir().unwrap();
    let faults = Arc::new(Faults::default());
    let a = faulty_node(dir.path(), "a", "10.0.0.0/28", "warm_target = 1", &faults);
    a.upkeep().tick(|_| false).await;
    a.requests().assign(&spec("first", None), &none()).await.unwrap();
    assert_eq!(a.local_view().warm, 0, "the one warm address went to the first ADD");
    faults.lose_put_if.store(true, Ordering::Relaxed);
    let err = a.requests().assign(&spec("refused", None), &none()).await.unwrap_err();
    assert!(matches!(err, IpamError::StoreUnavailable { .. }), "{err:?}");
    let assigned_to_it = |records: &[(IpAddr, AddressRecord)]| {
        let refused =
            |r: &AddressRecord| matches!(r, AddressRecord::Assigned { owner, .. } if owner.container_id == "refused");
        records.iter().filter(|(_, r)| refused(r)).count()
    };
    let before = records(dir.path()).await;
    assert_eq!(assigned_to_it(&before), 1, "the write went through");
    let lost = before
        .iter()
        .find(|(_, r)| matches!(r, AddressRecord::Assigned { owner, .. } if owner.container_id == "refused"))
        .unwrap()
        .0;
    a.upkeep().tick(|_| false).await;
    a.upkeep().tick(|_| false).await;
    assert!(a.requests().lookup(&spec("refused", None).owner).is_empty(), "the refused ADD holds nothing");
    assert_eq!(assigned_to_it(&records(dir.path()).await), 0, "nor does the store say so");
    let after = records(dir.path()).await;
    let now = after.iter().find(|(ip, _)| *ip == lost).map(|(_, r)| r.clone());
    assert!(
        matches!(now, Some(AddressRecord::Warm { ref node, .. }) if node == "a"),
        "{lost} is a's warm address: {now:?}"
    );
    assert_eq!(a.local_view().assigned, 1, "only the first ADD's");
}

/// The same refused ADD, retried and answered, and then the node crashes before it looked the
/// lost write up: the restarted node finds the claim in the store naming an owner that holds
/// another address of the family. It must take it in as warm, not give the owner two.
#[tokio::test]
async fn a_refused_adds_claim_found_after_a_crash_joins_the_warm_pool() {
    let dir = tempfile::tempdir().unwrap();
    let faults = Arc::new(Faults::default());
    let a = faulty_node(dir.path(), "a", "10.0.0.0/28", "warm_target = 1", &faults);
    a.upkeep().tick(|_| false).await;
    a.requests().assign(&spec("first", None), &none()).await.unwrap();
    faults.lose_put_if.store(true, Ordering::Relaxed);
    a.requests().assign(&spec("retried", None), &none()).await.unwrap_err();
    faults.lose_put_if.store(false, Ordering::Relaxed);
    let got = a.requests().assign(&spec("retried", None), &none()).await.unwrap().ips;
    assert_eq!(got.len(), 1);
    let claims = records(dir.path()).await;
    let lost = claims
        .iter()
        .find(|(ip, r)| *ip != got[0] && r.owner().is_some_and(|o| o.container_id == "retried"))
        .expect("the refused ADD's claim is in the store")
        .0;
    drop(a);
    let a = faulty_node(dir.path(), "a", "10.0.0.0/28", "warm_target = 1", &faults);
    a.upkeep().tick(|_| false).await;
    assert_eq!(
        a.requests().lookup(&spec("retried", None).owner),
        got,
        "the owner keeps the address it was given, only"
    );
    a.upkeep().tick(|_| false).await;
    let now = records(dir.path()).await.into_iter().find(|(ip, _)| *ip == lost).map(|(_, r)| r);
    assert!(matches!(now, Some(AddressRecord::Warm { ref node, .. }) if node == "a"), "{lost}: {now:?}");
}

#[tokio::test]
async fn a_give_back_whose_reply_was_lost_leaves_nothing_in_the_warm_pool() {
    let dir = tempfile::tempdir().unwrap();
    let faults = Arc::new(Faults::default());
    let extra = "warm_target = 2\nwarm_max = 2";
    let a = faulty_node(dir.path(), "a", "10.0.0.0/28", extra, &faults);
    a.upkeep().tick(|_| false).await;
    // A claim a crash kept from the local state: a restarted a adopts it, one above warm_max.
    let taken: HashSet<IpAddr> = records(dir.path()).await.into_iter().map(|(ip, _)| ip).collect();
    let spare: IpAddr = (1..15).map(|i| format!("10.0.0.{i}").parse().unwrap()).find(|ip| !taken.contains(ip)).unwrap();
    let keys = Keys::new("/vpc-ipam/default");
    let store = FileStore::new(&dir.path().join("store.json"));
    let record = AddressRecord::Warm { node: "a".into(), since: 0 };
    // (Its index entry goes first, as every claim writes it.)
    store.put(&keys.held_ip("a", spare), Vec::new()).await.unwrap();
    store.put_if(&keys.ip(spare), record.encode(), 0).await.unwrap().unwrap();
    drop(a);
    let a = faulty_node(dir.path(), "a", "10.0.0.0/28", extra, &faults);
    // The round adopts it and gives the excess back; the delete happens, its reply is lost.
    faults.lose_delete_if.store(true, Ordering::Relaxed);
    a.upkeep().tick(|_| false).await;
    assert_eq!(warm_in_store(dir.path(), "a").await, 2);
    assert_eq!(a.local_view().warm, 2, "the address being given back left the warm pool first");
    a.upkeep().tick(|_| false).await;
    assert_eq!((a.local_view().warm, warm_in_store(dir.path(), "a").await), (2, 2));
    // Every warm address a hands out is one the store gives it.
    let mine: HashSet<IpAddr> =
        records(dir.path()).await.into_iter().filter(|(_, r)| r.node() == Some("a")).map(|(ip, _)| ip).collect();
    for i in 0..2 {
        let ip = a.requests().assign(&spec(&format!("p{i}"), None), &none()).await.unwrap().ips[0];
        assert!(mine.contains(&ip), "{ip} is not a's in the store: {mine:?}");
    }
}

#[tokio::test]
async fn a_reclaim_planned_while_a_node_was_away_does_not_take_its_addresses_once_it_is_back() {
    let dir = tempfile::tempdir().unwrap();
    let faults = Arc::new(Faults::default());
    let a = node(dir.path(), "a", "10.0.0.0/28", "warm_target = 2");
    let b = faulty_node(dir.path(), "b", "10.0.0.0/28", "warm_target = 2", &faults);
    a.upkeep().tick(|_| false).await;
    let ip = a.requests().assign(&spec("victim", None), &none()).await.unwrap().ips[0];
    a.upkeep().tick(|_| true).await;
    b.upkeep().tick(|_| false).await;
    // a is away until its lease has expired and b has marked it down.
    tokio::time::sleep(Duration::from_millis(2200)).await;
    let store = FileStore::new(&dir.path().join("store.json"));
    let keys = Keys::new("/vpc-ipam/default");
    for round in 0.. {
        assert!(round < 20, "b never marked a down");
        b.upkeep().tick(|_| false).await;
        if store.get(&keys.down("a")).await.unwrap().is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Once the quarantine is over, b plans the reclaim with a still away; its first write waits.
    let gate = faults.gate.lock().await;
    faults.gated.store(true, Ordering::Relaxed);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let reclaim = tokio::spawn({
        let (b, faults) = (b.clone(), faults.clone());
        async move {
            // The dead-node scan runs every 2 s: tick until a round has got to the gated write
            // (that round waits there until the gate opens).
            for _ in 0..40 {
                b.upkeep().tick(|_| false).await;
                if faults.at_gate.load(Ordering::Relaxed) {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    });
    for round in 0.. {
        assert!(round < 500, "b's reclaim never got to its first write");
        if faults.at_gate.load(Ordering::Relaxed) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // a comes back and registers again before b's writes land.
    let fenced = a.upkeep().tick(|_| true).await;
    drop(gate);
    reclaim.await.unwrap();
    // Either way round, a keeps only what the store gives it.
    let now = records(dir.path()).await;
    match a.requests().lookup(&spec("victim", None).owner).first().copied() {
        Some(kept) => assert!(
            now.iter().any(|(i, r)| *i == kept && r.node() == Some("a")),
            "a still uses {kept} but the store says {:?}",
            now.iter().find(|(i, _)| *i == kept)
        ),
        None => assert_eq!(fenced.iter().map(|f| f.ip).collect::<Vec<_>>(), [ip]),
    }
    assert_eq!(warm_in_store(dir.path(), "a").await, a.local_view().warm, "{now:?}");
}

#[tokio::test]
async fn a_returning_node_takes_back_what_nobody_took_and_keeps_the_pod() {
    let dir = tempfile::tempdir().unwrap();
    let a = node(dir.path(), "a", "10.0.0.0/28", "warm_target = 2");
    let b = node(dir.path(), "b", "10.0.0.0/28", "warm_target = 2");
    a.upkeep().tick(|_| false).await;
    let kept = a.requests().assign(&spec("kept", None), &none()).await.unwrap().ips[0];
    let lost = a.requests().assign(&spec("lost", None), &none()).await.unwrap().ips[0];
    a.upkeep().tick(|_| true).await;
    b.upkeep().tick(|_| false).await;
    tokio::time::sleep(Duration::from_millis(2200)).await;
    for _ in 0..6 {
        b.upkeep().tick(|_| false).await;
        tokio::time::sleep(Duration::from_millis(400)).await;
    }
    let now = records(dir.path()).await;
    assert!(now.iter().all(|(_, r)| r.node() != Some("a")), "a's addresses reclaimed: {now:?}");
    take_by_name(&b, lost).await;
    // a comes back: the cooling address is its pod's again, the taken one is fenced.
    let fenced = a.upkeep().tick(|_| true).await;
    assert_eq!(fenced.iter().map(|f| (f.ip, f.now.as_str())).collect::<Vec<_>>(), [(lost, "assigned on b")]);
    assert_eq!(a.requests().lookup(&spec("kept", None).owner), [kept]);
    let now = records(dir.path()).await;
    let record = now.iter().find(|(ip, _)| *ip == kept).map(|(_, r)| r.clone());
    assert!(
        matches!(&record, Some(AddressRecord::Assigned { node, owner, .. }) if node == "a" && owner.container_id == "kept"),
        "{record:?}"
    );
}

#[tokio::test]
async fn a_node_configured_with_another_pool_refuses_to_start_ipam_naming_both() {
    let dir = tempfile::tempdir().unwrap();
    let a = node(dir.path(), "a", "10.0.0.0/28", "");
    let b = node(dir.path(), "b", "10.0.1.0/28", "");
    a.upkeep().tick(|_| false).await;
    b.upkeep().tick(|_| false).await;
    let err = b.requests().assign(&spec("p", None), &none()).await.unwrap_err();
    let text = err.to_string();
    assert!(matches!(err, IpamError::Settings(SettingsError::PoolMismatch { .. })), "{err:?}");
    assert!(text.contains("10.0.1.0/28") && text.contains("10.0.0.0/28"), "{text}");
    let store = FileStore::new(&dir.path().join("store.json"));
    assert!(store.get(&Keys::new("/vpc-ipam/default").node("b")).await.unwrap().is_none(), "b never registered");
    assert!(a.requests().assign(&spec("q", None), &none()).await.is_ok(), "a, with the cluster's pool, works");
}

#[tokio::test]
async fn a_node_without_lease_renewals_stops_handing_out_warm_addresses_in_time() {
    let dir = tempfile::tempdir().unwrap();
    // Lease 2 s + quarantine 1 s: another node may reclaim after 3 s; the fence is at 1.5 s.
    let a = node(dir.path(), "a", "10.0.0.0/28", "warm_target = 3");
    a.upkeep().tick(|_| false).await;
    let kept = a.requests().assign(&spec("kept", None), &none()).await.unwrap().ips;
    assert!(!a.metrics().self_fenced);
    // No round, so no renewal (as when cut off from the store).
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let err = a.requests().assign(&spec("late", None), &none()).await.unwrap_err();
    assert!(matches!(err, IpamError::StoreUnavailable { .. }), "{err:?}");
    assert!(err.to_string().contains("no lease renewal"), "{err}");
    assert!(a.metrics().self_fenced);
    assert_eq!(a.requests().lookup(&spec("kept", None).owner), kept, "the pod keeps its address");
    // Back in touch: renewed (or registered again), it hands out warm addresses again.
    a.upkeep().tick(|_| true).await;
    assert!(!a.metrics().self_fenced);
    assert!(a.requests().assign(&spec("again", None), &none()).await.is_ok());
}

#[tokio::test]
async fn a_dead_leaders_addresses_are_reclaimed_by_the_node_that_takes_over_its_lease_bound_key() {
    let dir = tempfile::tempdir().unwrap();
    let store = FileStore::new(&dir.path().join("store.json"));
    let keys = Keys::new("/vpc-ipam/default");
    let a = node(dir.path(), "a", "10.0.0.0/28", "warm_target = 2");
    let b = node(dir.path(), "b", "10.0.0.0/28", "warm_target = 2");
    a.upkeep().tick(|_| false).await;
    b.upkeep().tick(|_| false).await;
    let leader = || {
        let (store, key) = (store.clone(), keys.leader());
        async move { store.get(&key).await.unwrap().map(|e| e.value) }
    };
    assert_eq!(leader().await, Some(b"a".to_vec()), "the first node to register leads");
    a.requests().assign(&spec("victim", None), &none()).await.unwrap();
    a.upkeep().tick(|_| true).await;
    // a (the leader) dies: only b runs from now on. Its lease (2 s) ends, the leader key with
    // it; b takes the key over, marks a down, and reclaims after the quarantine (1 s).
    let died = std::time::Instant::now();
    while records(dir.path()).await.iter().any(|(_, r)| r.node() == Some("a")) {
        assert!(died.elapsed() < Duration::from_secs(6), "a's addresses not reclaimed in time");
        b.upkeep().tick(|_| false).await;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(died.elapsed() >= Duration::from_secs(2), "reclaimed before a's lease could end");
    assert_eq!(leader().await, Some(b"b".to_vec()));
    assert!(b.metrics().reclaimed >= 3, "a's warm and assigned addresses, by b");
}
