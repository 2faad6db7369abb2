//! Dual-stack pools: one address per family, all or nothing, a /64 probed rather than listed.

use std::collections::HashSet;
use std::net::IpAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use vswitch_api::api::{AssignSpec, IpFamilies};

use super::faulty_store::{faulty_node, warm_in_store, Faults};
use super::fixture::{assert_dual, node, none, records, spec, with_families, DUAL};
use crate::ipam::error::{Conflict, InvalidRequest};
use crate::ipam::pool::Family;
use crate::ipam::record::Keys;
use crate::ipam::store::file::FileStore;
use crate::ipam::store::ClusterStore;
use crate::ipam::{AddressRequest, IpamError};

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
    let summary = crate::ipam::node::pool_summary(&a.view().await);
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
