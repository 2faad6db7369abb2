//! A node's lease: when it ends its addresses are quarantined and reclaimed, a returning node is
//! fenced or takes back what nobody took, one without renewals fences itself, and the leader's
//! key moves on.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use super::faulty_store::{faulty_node, warm_in_store, Faults};
use super::fixture::{node, none, outlive_lease_and_quarantine, records, spec, take_by_name};
use crate::ipam::record::{AddressRecord, Keys};
use crate::ipam::store::file::FileStore;
use crate::ipam::store::ClusterStore;
use crate::ipam::IpamError;

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
    outlive_lease_and_quarantine(&b).await;
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
    outlive_lease_and_quarantine(&b).await;
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
