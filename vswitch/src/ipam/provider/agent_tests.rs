//! The provider pool against an in-memory VPC: warm pool, ADD/DEL, outages, crashes, reconcile.

use std::collections::{BTreeSet, HashSet};
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use vswitch_api::api::Attachment;

use super::agent::{ProviderIpam, ProviderRefusal, ProviderSettings};
use super::aws::config::WarmTargets;
use super::fake::{quick_settings as settings, FakeNic, FakeVpc};
use super::probe::{FabricProbe, ProbeError};
use crate::ipam::store::AnyStore;
use crate::ipam::IpamError;

fn owner(n: usize) -> Attachment {
    Attachment { container_id: format!("c{n}"), ifname: "eth0".into() }
}

/// A fabric that delivers each address `delay` after it is first probed (or never), and the
/// addresses it was asked about.
#[derive(Debug, Clone, Default)]
struct FakeFabric {
    delay: Duration,
    never: bool,
    /// No interface has the NIC's MAC.
    no_interface: bool,
    probed: Arc<Mutex<Vec<IpAddr>>>,
}

impl FabricProbe for FakeFabric {
    fn has_interface(&self, _nic: &str) -> bool {
        !self.no_interface
    }

    async fn probe(&self, _nic: &str, ip: IpAddr, timeout: Duration) -> Result<(), ProbeError> {
        self.probed.lock().unwrap().push(ip);
        if self.no_interface {
            return Err(ProbeError::NoInterface(_nic.into()));
        }
        if self.never || self.delay > timeout {
            tokio::time::sleep(timeout).await;
            return Err(ProbeError::TimedOut { ip, timeout });
        }
        tokio::time::sleep(self.delay).await;
        Ok(())
    }
}

type Node = ProviderIpam<FakeNic, AnyStore, FakeFabric>;

fn node_with(vpc: &Arc<Mutex<FakeVpc>>, dir: &std::path::Path, fabric: FakeFabric) -> Node {
    let nic = FakeNic { vpc: vpc.clone(), nic: "52:54:00:00:00:01".into() };
    ProviderIpam::open_with_probe(nic, fabric, settings(), dir).unwrap()
}

fn node(vpc: &Arc<Mutex<FakeVpc>>, dir: &std::path::Path) -> Node {
    node_with(vpc, dir, FakeFabric::default())
}

/// Every address on the NIC is a pod's, warm, cooling or queued for deletion: exactly once.
fn assert_accounted(ipam: &Node, vpc: &std::sync::Arc<std::sync::Mutex<FakeVpc>>) {
    let r = ipam.report();
    let mut held: Vec<IpAddr> = r.pods.iter().map(|p| p.ip).chain(r.warm).chain(r.cooling).chain(r.deleting).collect();
    let count = held.len();
    held.sort();
    held.dedup();
    assert_eq!(held.len(), count, "an address held twice: {held:?}");
    let on_nic = vpc.lock().unwrap().on("52:54:00:00:00:01");
    assert_eq!(held.into_iter().collect::<BTreeSet<_>>(), on_nic, "the state and the VPC disagree");
}

#[tokio::test]
async fn adds_come_from_the_warm_pool_without_api_calls_and_dels_return_to_it() {
    let dir = tempfile::tempdir().unwrap();
    let vpc = FakeVpc::new(16);
    let ipam = node(&vpc, dir.path());
    ipam.tick().await.unwrap();
    assert_eq!(ipam.report().warm.len(), 2, "filled to the low watermark");
    let calls = vpc.lock().unwrap().calls;
    let (ip, new) = ipam.assign(&owner(1), None, None, &HashSet::new()).await.unwrap();
    assert!(new);
    assert_eq!(vpc.lock().unwrap().calls, calls, "ADD from the pool calls nothing");
    assert_eq!(ipam.assign(&owner(1), None, None, &HashSet::new()).await.unwrap(), (ip, false), "ADD is idempotent");
    assert_eq!(ipam.lookup(&owner(1)), Some(ip));
    assert_eq!(ipam.release(&owner(1)).unwrap(), vec![ip]);
    assert_eq!(ipam.report().cooling, vec![ip]);
    ipam.tick().await.unwrap();
    assert!(ipam.report().warm.contains(&ip), "cooled back into the pool");
    assert_accounted(&ipam, &vpc);
}

/// AWS's targets (WARM_IP_TARGET = 2, MINIMUM_IP_TARGET = 6) on a VPC that batches as EC2
/// does: the floor in one call; pods churning within it call nothing, the addresses cooling
/// counting as available (before: each ADD refilled the pool and each cooled address was
/// unassigned); past it, the surplus given back as it cools, in one call.
#[tokio::test]
async fn aws_targets_batch_calls_and_churn_within_the_floor_calls_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let vpc = FakeVpc::new(32);
    vpc.lock().unwrap().targets = Some(WarmTargets { warm_eni: 1, warm_ip: Some(2), minimum_ip: Some(6) });
    vpc.lock().unwrap().batches = true;
    let cooldown = Duration::from_millis(300);
    let nic = FakeNic { vpc: vpc.clone(), nic: "52:54:00:00:00:01".into() };
    // Reconcile (a describe) on the first round only.
    let settings = ProviderSettings { cooldown, reconcile_every: Duration::from_secs(3600), ..settings() };
    let ipam: Node = ProviderIpam::open_with_probe(nic, FakeFabric::default(), settings, dir.path()).unwrap();
    let calls = || vpc.lock().unwrap().calls;
    let in_use = HashSet::new();
    ipam.tick().await.unwrap();
    assert_eq!((ipam.report().warm.len(), calls()), (6, 2), "MINIMUM_IP_TARGET in one call (and a describe)");
    for round in 0..3 {
        for o in (round * 4..round * 4 + 4).map(owner) {
            ipam.assign(&o, None, None, &in_use).await.unwrap();
        }
        ipam.tick().await.unwrap();
        for o in (round * 4..round * 4 + 4).map(owner) {
            ipam.release(&o).unwrap();
        }
        ipam.tick().await.unwrap();
        assert_eq!(calls(), 2, "round {round}: churn within the floor, cooling addresses available");
        tokio::time::sleep(cooldown).await;
        ipam.tick().await.unwrap();
    }
    let r = ipam.report();
    assert_eq!((r.warm.len(), r.cooling.len(), calls()), (6, 0, 2), "{r:?}");
    // 7 pods: the 7th ADD allocates its own; the upkeep brings WARM_IP_TARGET back in one call.
    for o in (20..27).map(owner) {
        ipam.assign(&o, None, None, &in_use).await.unwrap();
    }
    ipam.tick().await.unwrap();
    assert_eq!((ipam.report().warm.len(), calls()), (2, 4));
    for o in (20..27).map(owner) {
        ipam.release(&o).unwrap();
    }
    ipam.tick().await.unwrap();
    assert_eq!((ipam.report().warm.len(), calls()), (2, 4), "nothing given back while they cool");
    tokio::time::sleep(cooldown).await;
    ipam.tick().await.unwrap();
    let r = ipam.report();
    assert_eq!((r.warm.len(), r.deleting.len(), calls()), (6, 0, 5), "back to the floor in one call: {r:?}");
    assert_accounted(&ipam, &vpc);
}

#[tokio::test]
async fn api_down_adds_from_the_pool_dels_queued_and_nothing_leaks_after_recovery() {
    let dir = tempfile::tempdir().unwrap();
    let vpc = FakeVpc::new(32);
    let ipam = node(&vpc, dir.path());
    ipam.tick().await.unwrap();
    vpc.lock().unwrap().down = true;
    let in_use = HashSet::new();
    let a = ipam.assign(&owner(1), None, None, &in_use).await.unwrap().0;
    let b = ipam.assign(&owner(2), None, None, &in_use).await.unwrap().0;
    assert_ne!(a, b);
    let refused = ipam.assign(&owner(3), None, None, &in_use).await.unwrap_err();
    assert!(
        matches!(refused, IpamError::Provider(ProviderRefusal::Unavailable(ref m)) if m.contains("connection refused"))
    );
    // Pool above its high watermark once they cool: the surplus is queued for deletion.
    for n in 4..8 {
        ipam.adopt_ports(&[(format!("10.0.0.{}", 40 + n).parse().unwrap(), owner(n), None)]).unwrap();
    }
    vpc.lock()
        .unwrap()
        .owners
        .extend((4..8).map(|n| (format!("10.0.0.{}", 40 + n).parse().unwrap(), "52:54:00:00:00:01".into())));
    for n in [1, 2, 4, 5, 6, 7] {
        ipam.release(&owner(n)).unwrap();
    }
    tokio::time::sleep(Duration::from_millis(5)).await;
    ipam.tick().await.unwrap();
    assert!(!ipam.report().deleting.is_empty(), "deletes queued while down");
    // A restart while down loses nothing: the queue is in the file.
    drop(ipam);
    let ipam = node(&vpc, dir.path());
    assert!(!ipam.report().deleting.is_empty());
    vpc.lock().unwrap().down = false;
    tokio::time::sleep(Duration::from_millis(5)).await;
    ipam.tick().await.unwrap();
    let r = ipam.report();
    assert!(r.deleting.is_empty() && r.warm.len() <= 3 && r.warm.len() >= 2, "{r:?}");
    assert_accounted(&ipam, &vpc);
}

#[tokio::test]
async fn reconcile_adopts_unrecorded_allocations_and_drops_out_of_band_deletes() {
    let dir = tempfile::tempdir().unwrap();
    let vpc = FakeVpc::new(32);
    let ipam = node(&vpc, dir.path());
    ipam.tick().await.unwrap();
    let warm = ipam.report().warm;
    // Deleted behind the node's back: gone from the pool before anyone gets it.
    {
        let mut v = vpc.lock().unwrap();
        v.owners.remove(&warm[0]);
        // Allocated by a node that died before recording it (kill -9 between call and write).
        for ip in ["10.0.0.60", "10.0.0.61", "10.0.0.62"] {
            v.owners.insert(ip.parse().unwrap(), "52:54:00:00:00:01".into());
        }
    }
    ipam.reconcile().await.unwrap();
    let r = ipam.report();
    assert!(!r.warm.contains(&warm[0]));
    assert_eq!(r.warm.len(), 3, "adopted up to the high watermark: {r:?}");
    assert_accounted(&ipam, &vpc);
    assert_eq!(vpc.lock().unwrap().on("52:54:00:00:00:01").len(), 3, "the rest deleted");
}

#[tokio::test]
async fn subnet_full_is_refused_with_the_vpcs_message_and_throttling_backs_off() {
    let dir = tempfile::tempdir().unwrap();
    let vpc = FakeVpc::new(1);
    let ipam = node(&vpc, dir.path());
    ipam.tick().await.unwrap();
    ipam.assign(&owner(1), None, None, &HashSet::new()).await.unwrap();
    let full = ipam.assign(&owner(2), None, None, &HashSet::new()).await.unwrap_err();
    assert_eq!(full.to_string(), "no warm address on this node and the VPC subnet is full: no free IP in subnet-t");
    let api = ipam.report().api;
    assert!(api.calls.iter().any(|(a, r, c)| a == "AllocateSecondaryIp" && r == "subnet_full" && c.calls >= 1));
    assert!(api.last_errors.iter().any(|e| e.contains("subnet full")));
    vpc.lock().unwrap().throttled = true;
    assert!(matches!(
        ipam.assign(&owner(3), None, None, &HashSet::new()).await.unwrap_err(),
        IpamError::Provider(ProviderRefusal::Unavailable(_))
    ));
    assert!(ipam.report().backing_off_ms.is_some(), "throttled: backing off");
    assert_eq!(ipam.report().api.healthy, Some(false));
}

#[tokio::test]
async fn a_corrupt_state_file_stops_the_start() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join(super::agent::STATE_FILE), b"{").unwrap();
    let nic = FakeNic { vpc: FakeVpc::new(1), nic: "n".into() };
    assert!(matches!(ProviderIpam::open(nic, settings(), dir.path()), Err(IpamError::StateCorrupt { .. })));
}

/// The upkeep probes what it allocates before it joins the pool (together, not one by one), so
/// an ADD from the pool is answered at once; an ADD on an empty pool waits for its own probe.
#[tokio::test]
async fn new_addresses_are_probed_before_anyone_gets_them() {
    let dir = tempfile::tempdir().unwrap();
    let vpc = FakeVpc::new(16);
    let fabric = FakeFabric { delay: Duration::from_millis(300), ..FakeFabric::default() };
    let ipam = node_with(&vpc, dir.path(), fabric.clone());
    let started = Instant::now();
    ipam.tick().await.unwrap();
    let filled = started.elapsed();
    let warm = ipam.report().warm;
    assert_eq!(warm.len(), 2);
    assert_eq!(*fabric.probed.lock().unwrap(), warm, "each warm address probed before it joined");
    assert!(filled >= Duration::from_millis(300) && filled < Duration::from_millis(550), "probed together: {filled:?}");
    let started = Instant::now();
    ipam.assign(&owner(1), None, None, &HashSet::new()).await.unwrap();
    ipam.assign(&owner(2), None, None, &HashSet::new()).await.unwrap();
    assert!(started.elapsed() < Duration::from_millis(100), "ADDs from the pool wait for nothing");
    assert_eq!(fabric.probed.lock().unwrap().len(), 2, "no probe for a pool address");
    let started = Instant::now();
    let (ip, _) = ipam.assign(&owner(3), None, None, &HashSet::new()).await.unwrap();
    assert!(started.elapsed() >= Duration::from_millis(300), "the empty pool's ADD waited for its probe");
    assert_eq!(fabric.probed.lock().unwrap().last(), Some(&ip));
    let probe = ipam.report().api.fabric_probe;
    assert_eq!((probe.count, probe.timeouts), (3, 0));
    assert_eq!(probe.last.as_ref().map(|l| (l.ip, l.result)), Some((ip, "delivered")));
    assert!(probe.last.unwrap().seconds >= 0.3);
    assert_accounted(&ipam, &vpc);
}

/// A fabric that never delivers: the probe gives up at its timeout and the address is used
/// anyway, counted as a timeout.
#[tokio::test]
async fn a_probe_that_times_out_hands_the_address_out_anyway() {
    let dir = tempfile::tempdir().unwrap();
    let vpc = FakeVpc::new(16);
    let nic = FakeNic { vpc: vpc.clone(), nic: "52:54:00:00:00:01".into() };
    let fabric = FakeFabric { never: true, ..FakeFabric::default() };
    let settings = ProviderSettings { fabric_probe_timeout: Duration::from_millis(200), ..settings() };
    let ipam = ProviderIpam::open_with_probe(nic, fabric, settings, dir.path()).unwrap();
    let started = Instant::now();
    let (ip, new) = ipam.assign(&owner(1), None, None, &HashSet::new()).await.unwrap();
    let waited = started.elapsed();
    assert!(new && waited >= Duration::from_millis(200) && waited < Duration::from_secs(2), "{waited:?}");
    let probe = ipam.report().api.fabric_probe;
    assert_eq!((probe.count, probe.timeouts), (1, 1));
    assert_eq!(probe.last.map(|l| (l.ip, l.result)), Some((ip, "timeout")));
}

/// The node's addresses by where the pool keeps them: pods', warm, undeliverable.
fn kept(ipam: &Node) -> (usize, BTreeSet<IpAddr>, BTreeSet<IpAddr>) {
    let r = ipam.report();
    (r.pods.len(), r.warm.into_iter().collect(), r.undeliverable.into_iter().map(|(ip, _)| ip).collect())
}

/// An ADD refused because its address's NIC is not in the node, saying `why`.
fn assert_nic_absent(refused: &IpamError, why: &str) {
    assert!(matches!(refused, IpamError::Provider(ProviderRefusal::NicAbsent(m)) if m.contains(why)), "{refused}");
}

fn ips(last_octets: std::ops::RangeInclusive<u8>) -> BTreeSet<IpAddr> {
    last_octets.map(|i| IpAddr::from([10, 0, 0, i])).collect()
}

#[tokio::test]
async fn addresses_of_a_nic_the_node_lacks_are_kept_but_never_served_until_it_comes() {
    let dir = tempfile::tempdir().unwrap();
    let vpc = FakeVpc::new(16);
    // The first two addresses are on the node's NIC, the rest on one it does not have.
    vpc.lock().unwrap().absent = ips(12..=25);
    let ipam = node(&vpc, dir.path());
    ipam.tick().await.unwrap();
    for n in 1..=2 {
        ipam.assign(&owner(n), None, None, &HashSet::new()).await.unwrap();
    }
    ipam.tick().await.unwrap();
    assert_eq!(kept(&ipam), (2, BTreeSet::new(), ips(12..=13)), "the refill is not served");
    let refused = ipam.assign(&owner(3), None, None, &HashSet::new()).await.unwrap_err();
    assert_nic_absent(&refused, "eni-2 attached but not present in this node");
    assert_eq!(ipam.lookup(&owner(3)), None);
    assert_eq!(kept(&ipam), (2, BTreeSet::new(), ips(12..=14)));
    // Reconcile neither deletes them nor adopts them, and the pool does not allocate more.
    let calls = vpc.lock().unwrap().calls;
    ipam.tick().await.unwrap();
    ipam.tick().await.unwrap();
    assert_eq!(vpc.lock().unwrap().calls, calls + 2, "two describes, no allocation, no delete");
    assert_eq!(vpc.lock().unwrap().on("52:54:00:00:00:01"), ips(10..=14), "kept in the VPC");
    assert_eq!(kept(&ipam), (2, BTreeSet::new(), ips(12..=14)));
    // A restart keeps them apart.
    drop(ipam);
    let ipam = node(&vpc, dir.path());
    assert_eq!(kept(&ipam), (2, BTreeSet::new(), ips(12..=14)));
    // The NIC comes up in the node: they are served.
    vpc.lock().unwrap().absent.clear();
    ipam.tick().await.unwrap();
    assert_eq!(kept(&ipam), (2, ips(12..=14), BTreeSet::new()));
    let (ip, _) = ipam.assign(&owner(3), None, None, &HashSet::new()).await.unwrap();
    assert!(ips(12..=14).contains(&ip));
}

#[tokio::test]
async fn a_probe_that_finds_no_interface_for_the_nic_does_not_hand_the_address_out() {
    let dir = tempfile::tempdir().unwrap();
    let vpc = FakeVpc::new(16);
    let fabric = FakeFabric { no_interface: true, ..FakeFabric::default() };
    let ipam = node_with(&vpc, dir.path(), fabric);
    ipam.tick().await.unwrap();
    assert_eq!(kept(&ipam), (0, BTreeSet::new(), ips(10..=11)), "the refill is not served");
    let refused = ipam.assign(&owner(1), None, None, &HashSet::new()).await.unwrap_err();
    assert_nic_absent(&refused, "not present in this node");
    assert!(refused.to_string().contains("52:54:00:00:00:01"), "names the NIC: {refused}");
}

/// AWS's targets (WARM_IP_TARGET = 2) with `decrease_interval` as its ipamd paces decreases:
/// pods churning give addresses back at most once per interval, the surplus of the rounds in
/// between together in the first round past it.
#[tokio::test]
async fn addresses_are_given_back_at_most_once_per_decrease_interval() {
    let dir = tempfile::tempdir().unwrap();
    let vpc = FakeVpc::new(32);
    vpc.lock().unwrap().targets = Some(WarmTargets { warm_eni: 1, warm_ip: Some(2), minimum_ip: None });
    vpc.lock().unwrap().batches = true;
    let interval = Duration::from_secs(2);
    let nic = FakeNic { vpc: vpc.clone(), nic: "52:54:00:00:00:01".into() };
    let settings =
        ProviderSettings { decrease_interval: interval, reconcile_every: Duration::from_secs(3600), ..settings() };
    let ipam: Node = ProviderIpam::open_with_probe(nic, FakeFabric::default(), settings, dir.path()).unwrap();
    let on_nic = || vpc.lock().unwrap().on("52:54:00:00:00:01").len();
    let in_use = HashSet::new();
    ipam.tick().await.unwrap();
    for pair in [[1, 2], [3, 4]] {
        for o in pair.map(owner) {
            ipam.assign(&o, None, None, &in_use).await.unwrap();
        }
        ipam.tick().await.unwrap();
    }
    assert_eq!((ipam.report().pods.len(), ipam.report().warm.len(), on_nic()), (4, 2, 6));
    // Two pods go (cooldown 0 here): their addresses are unassigned in the next round.
    let started = Instant::now();
    for o in [1, 2].map(owner) {
        ipam.release(&o).unwrap();
    }
    ipam.tick().await.unwrap();
    assert_eq!((ipam.report().warm.len(), on_nic()), (2, 4), "the first decrease is not paced");
    // Two more go in the next round, within the interval: kept warm, nothing unassigned.
    for o in [3, 4].map(owner) {
        ipam.release(&o).unwrap();
    }
    ipam.tick().await.unwrap();
    assert!(started.elapsed() < interval, "the machine is too slow for this test's interval");
    let r = ipam.report();
    assert_eq!((r.warm.len(), r.deleting.len(), on_nic()), (4, 0, 4), "unassigned in consecutive rounds: {r:?}");
    // Past the interval: the surplus goes back.
    tokio::time::sleep(interval).await;
    ipam.tick().await.unwrap();
    assert_eq!((ipam.report().warm.len(), on_nic()), (2, 2));
    assert_accounted(&ipam, &vpc);
}

/// The log lines as text, for a test that counts warnings.
#[derive(Debug, Clone, Default)]
struct CapturedLog(Arc<Mutex<Vec<u8>>>);

impl CapturedLog {
    fn count(&self, what: &str) -> usize {
        String::from_utf8_lossy(&self.0.lock().unwrap()).matches(what).count()
    }
}

impl std::io::Write for CapturedLog {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for CapturedLog {
    type Writer = CapturedLog;

    fn make_writer(&'a self) -> CapturedLog {
        self.clone()
    }
}

/// While the only NIC with room is absent from the node, every round's refill is refused: one
/// warning when it starts, one line when allocations succeed again, not one per round.
#[tokio::test]
async fn a_refill_refused_round_after_round_warns_once() {
    let log = CapturedLog::default();
    let subscriber = tracing_subscriber::fmt().with_writer(log.clone()).with_ansi(false).finish();
    // The test's thread only (a current-thread runtime): other tests log elsewhere.
    let _logging = tracing::subscriber::set_default(subscriber);
    let dir = tempfile::tempdir().unwrap();
    let vpc = FakeVpc::new(16);
    vpc.lock().unwrap().nic_absent = Some("eni-2 attached but not present in this node".into());
    let ipam = node(&vpc, dir.path());
    for _ in 0..5 {
        ipam.tick().await.unwrap();
    }
    assert_eq!(ipam.report().warm.len(), 0);
    assert_eq!(log.count("VPC refused a warm address"), 1, "one warning for five refused rounds");
    assert_eq!(log.count("eni-2 attached but not present"), 1, "and it says why");
    vpc.lock().unwrap().nic_absent = None;
    ipam.tick().await.unwrap();
    ipam.tick().await.unwrap();
    assert_eq!(ipam.report().warm.len(), 2);
    assert_eq!(log.count("VPC allocates warm addresses again"), 1);
    // Refused again later: warned again.
    vpc.lock().unwrap().nic_absent = Some("eni-3 attached but not present in this node".into());
    ipam.assign(&owner(1), None, None, &HashSet::new()).await.unwrap();
    ipam.tick().await.unwrap();
    ipam.tick().await.unwrap();
    assert_eq!(log.count("VPC refused a warm address"), 2);
}
