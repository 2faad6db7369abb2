//! The provider pool against an in-memory VPC: warm pool, ADD/DEL, outages, crashes, reconcile.

use std::collections::{BTreeSet, HashSet};
use std::net::IpAddr;
use std::time::Duration;

use vswitch_api::api::Attachment;

use super::agent::{ProviderIpam, ProviderRefusal};
use super::fake::{quick_settings as settings, FakeNic, FakeVpc};
use crate::ipam::IpamError;

fn owner(n: usize) -> Attachment {
    Attachment { container_id: format!("c{n}"), ifname: "eth0".into() }
}

fn node(vpc: &std::sync::Arc<std::sync::Mutex<FakeVpc>>, dir: &std::path::Path) -> ProviderIpam<FakeNic> {
    let nic = FakeNic { vpc: vpc.clone(), nic: "52:54:00:00:00:01".into() };
    ProviderIpam::open(nic, settings(), dir).unwrap()
}

/// Every address on the NIC is a pod's, warm, cooling or queued for deletion: exactly once.
fn assert_accounted(ipam: &ProviderIpam<FakeNic>, vpc: &std::sync::Arc<std::sync::Mutex<FakeVpc>>) {
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
