//! Nodes sharing one pool: no address twice, cooling cluster-wide, sticky pods moving between
//! nodes, and a node configured with another pool kept out.

use std::collections::HashSet;
use std::net::IpAddr;

use super::fixture::{node, none, records, spec};
use crate::ipam::error::{SettingsError, StickyBusy};
use crate::ipam::record::{AddressRecord, Keys};
use crate::ipam::store::file::FileStore;
use crate::ipam::store::ClusterStore;
use crate::ipam::IpamError;

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
