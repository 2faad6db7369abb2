//! Crashes and lost replies: a write the node cannot be sure of is adopted or taken in, never
//! leaked and never left assigned to nobody.

use std::collections::HashSet;
use std::net::IpAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use super::faulty_store::{faulty_node, warm_in_store, Faults};
use super::fixture::{node, none, outlive_lease_and_quarantine, records, spec, take_by_name};
use crate::ipam::record::{AddressRecord, Keys};
use crate::ipam::store::file::FileStore;
use crate::ipam::store::ClusterStore;
use crate::ipam::IpamError;

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
    outlive_lease_and_quarantine(&b).await;
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

/// The refill and an ADD that found the warm pool empty claim at once, both the same free
/// address: the claim that loses must not take the winner's index entry with it (the index is
/// how a restarted node, or the leader after its death, finds what the store gives it).
#[tokio::test]
async fn two_claims_of_one_node_racing_for_an_address_leave_it_in_the_index() {
    let dir = tempfile::tempdir().unwrap();
    let faults = Arc::new(Faults::default());
    let a = faulty_node(dir.path(), "a", "10.0.0.9/32", "warm_target = 1", &faults);
    let gate = faults.gate.lock().await;
    faults.put_if_gated.store(true, Ordering::Relaxed);
    let refill = tokio::spawn({
        let a = a.clone();
        async move { a.upkeep().tick(|_| false).await }
    });
    let at_gate = |n: usize| {
        let faults = faults.clone();
        async move {
            while faults.at_put_if_gate.load(Ordering::Relaxed) < n {
                tokio::time::sleep(std::time::Duration::from_millis(5)).await;
            }
        }
    };
    at_gate(1).await;
    let add = tokio::spawn({
        let a = a.clone();
        async move { a.requests().assign(&spec("racer", None), &none()).await }
    });
    // The ADD's claim either waits at the gate behind the refill's or gives up on the address.
    tokio::select! {
        _ = at_gate(2) => {}
        _ = tokio::time::sleep(std::time::Duration::from_secs(2)) => {}
    }
    faults.put_if_gated.store(false, Ordering::Relaxed);
    drop(gate);
    refill.await.unwrap();
    let _ = add.await.unwrap();
    let ip: IpAddr = "10.0.0.9".parse().unwrap();
    let now = records(dir.path()).await;
    assert!(now.iter().any(|(at, r)| *at == ip && r.node() == Some("a")), "a claimed it: {now:?}");
    let keys = Keys::new("/vpc-ipam/default");
    let store = FileStore::new(&dir.path().join("store.json"));
    assert!(store.get(&keys.held_ip("a", ip)).await.unwrap().is_some(), "{ip} is a's, and in a's index");
}
