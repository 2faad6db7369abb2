//! Sticky pods in provider mode against an in-memory VPC and a shared file store: the move to
//! another node, the old node never deleting or reusing the address, the claim policy's expiry.

use std::collections::{BTreeSet, HashSet};
use std::net::IpAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use vswitch_api::api::{Attachment, PodRef};
use vswitch_api::sticky::{ClaimPolicy, StickyRequest};

use super::agent::{ProviderIpam, ProviderRefusal};
use super::claims::StickyClaims;
use super::fake::{quick_settings as settings, FakeNic, FakeVpc};
use crate::ipam::error::StickyBusy;
use crate::ipam::store::file::FileStore;
use crate::ipam::IpamError;

const NIC_A: &str = "52:54:00:00:00:0a";
const NIC_B: &str = "52:54:00:00:00:0b";

type Node = ProviderIpam<FakeNic, FileStore>;

fn node(vpc: &Arc<Mutex<FakeVpc>>, nic: &str, dir: &Path, store: &Path) -> Node {
    let claims = StickyClaims::new(FileStore::open(store).unwrap(), "/t", nic, vec!["db/*".into()], Duration::ZERO);
    let dir = dir.join(nic.replace(':', ""));
    std::fs::create_dir_all(&dir).unwrap();
    // Not probed: the fake NICs' MACs are on no interface here (the real ARP probe would refuse them).
    let settings = super::ProviderSettings { fabric_probe_timeout: std::time::Duration::ZERO, ..settings() };
    ProviderIpam::open_with(FakeNic { vpc: vpc.clone(), nic: nic.into() }, settings, &dir, Some(claims)).unwrap()
}

fn owner(id: &str) -> Attachment {
    Attachment { container_id: id.into(), ifname: "eth0".into() }
}

fn pod(name: &str) -> Option<PodRef> {
    Some(PodRef { namespace: "web".into(), name: name.into() })
}

fn sticky(hold: ClaimPolicy) -> Option<StickyRequest> {
    Some(StickyRequest { hold })
}

const KEEP: ClaimPolicy = ClaimPolicy::After(Duration::from_secs(300));

fn none() -> HashSet<IpAddr> {
    HashSet::new()
}

fn calls(node: &Node, action: &str) -> u64 {
    node.report().api.calls.iter().filter(|(a, r, _)| a == action && r == "ok").map(|(_, _, c)| c.calls).sum()
}

/// Every address on the node's NIC is a pod's, warm, cooling, deleting or held: exactly once.
fn assert_accounted(node: &Node, vpc: &Arc<Mutex<FakeVpc>>, nic: &str) {
    let r = node.report();
    let mut held: Vec<IpAddr> = r.pods.iter().map(|p| p.ip).chain(r.warm).chain(r.cooling).chain(r.deleting).collect();
    held.extend(r.held.iter().map(|(ip, _)| *ip));
    let count = held.len();
    let held: BTreeSet<IpAddr> = held.into_iter().collect();
    assert_eq!(held.len(), count, "an address held twice on {nic}: {held:?}");
    assert_eq!(held, vpc.lock().unwrap().on(nic), "{nic}: the state and the VPC disagree");
}

#[tokio::test]
async fn a_sticky_pod_moves_to_another_node_which_the_old_node_never_deletes_or_reuses() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store.json");
    let vpc = FakeVpc::new(32);
    let (a, b) = (node(&vpc, NIC_A, dir.path(), &store), node(&vpc, NIC_B, dir.path(), &store));
    a.tick().await.unwrap();
    b.tick().await.unwrap();
    let (ip, _) =
        a.assign(&owner("a1"), pod("pg-0"), sticky(ClaimPolicy::After(Duration::ZERO)), &none()).await.unwrap();
    a.release(&owner("a1")).unwrap();
    assert_eq!(a.report().held.iter().map(|(ip, _)| *ip).collect::<Vec<_>>(), [ip], "held, not cooling");
    // Node B claims the pod's record, but the move fails (API down): the record names B now.
    vpc.lock().unwrap().down = true;
    let refused = b.assign(&owner("b1"), pod("pg-0"), sticky(KEEP), &none()).await.unwrap_err();
    assert!(matches!(refused, IpamError::Provider(ProviderRefusal::Sticky { ip: i, .. }) if i == ip), "{refused}");
    vpc.lock().unwrap().down = false;
    tokio::time::sleep(Duration::from_millis(5)).await;
    // A's claim policy (0 s) has ended, yet B claimed it: A neither deletes nor reuses it.
    a.tick().await.unwrap();
    for n in 0..4 {
        let (other, _) = a.assign(&owner(&format!("x{n}")), pod(&format!("x{n}")), None, &none()).await.unwrap();
        assert_ne!(other, ip, "A handed the held address out");
    }
    assert_eq!(vpc.lock().unwrap().owners.get(&ip).map(String::as_str), Some(NIC_A), "A deleted it");
    assert!(a.report().held.iter().any(|(i, _)| *i == ip));
    // B's retried ADD moves it: same address, through MoveSecondaryIPMac.
    let (moved, new) = b.assign(&owner("b1"), pod("pg-0"), sticky(KEEP), &none()).await.unwrap();
    assert_eq!((moved, new), (ip, true));
    assert_eq!(vpc.lock().unwrap().owners.get(&ip).map(String::as_str), Some(NIC_B));
    assert_eq!(calls(&b, "MoveSecondaryIPMac"), 1);
    // A's reconcile sees it gone from its NIC and drops it, deleting nothing.
    a.tick().await.unwrap();
    assert!(a.report().held.is_empty() && !a.report().deleting.contains(&ip));
    assert_eq!(vpc.lock().unwrap().owners.get(&ip).map(String::as_str), Some(NIC_B));
    assert_accounted(&a, &vpc, NIC_A);
    assert_accounted(&b, &vpc, NIC_B);
}

#[tokio::test]
async fn the_claim_policy_ends_in_a_delete_and_a_pod_back_in_time_keeps_its_address() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store.json");
    let vpc = FakeVpc::new(32);
    let a = node(&vpc, NIC_A, dir.path(), &store);
    a.tick().await.unwrap();
    // Back on the same node within the policy: the same address, no API call.
    let (ip, _) = a.assign(&owner("c1"), pod("kept"), sticky(KEEP), &none()).await.unwrap();
    a.release(&owner("c1")).unwrap();
    a.tick().await.unwrap();
    let before = vpc.lock().unwrap().calls;
    assert_eq!(a.assign(&owner("c2"), pod("kept"), sticky(KEEP), &none()).await.unwrap(), (ip, true));
    assert_eq!(vpc.lock().unwrap().calls, before, "taken back without the API");
    // A short policy: held until it ends, then deleted in the VPC and its record forgotten.
    let short = ClaimPolicy::After(Duration::from_millis(300));
    let (gone, _) = a.assign(&owner("c3"), pod("short"), sticky(short), &none()).await.unwrap();
    a.release(&owner("c3")).unwrap();
    a.tick().await.unwrap();
    assert!(vpc.lock().unwrap().on(NIC_A).contains(&gone), "deleted before its policy ended");
    tokio::time::sleep(Duration::from_millis(350)).await;
    a.tick().await.unwrap();
    assert!(!vpc.lock().unwrap().on(NIC_A).contains(&gone), "kept after its policy ended");
    let claims = StickyClaims::new(FileStore::open(&store).unwrap(), "/t", "op", vec![], Duration::ZERO);
    assert_eq!(claims.get(pod("short").as_ref().unwrap()).await.unwrap().0, None, "its record forgotten");
    // Never: held whatever the time, until its record is deleted (an operator's release).
    let (never, _) = a.assign(&owner("c5"), pod("never"), sticky(ClaimPolicy::Never), &none()).await.unwrap();
    a.release(&owner("c5")).unwrap();
    a.tick().await.unwrap();
    assert!(vpc.lock().unwrap().on(NIC_A).contains(&never));
    let (_, version) = claims.get(pod("never").as_ref().unwrap()).await.unwrap();
    assert!(claims.forget(pod("never").as_ref().unwrap(), version).await.unwrap());
    a.tick().await.unwrap();
    assert!(!vpc.lock().unwrap().on(NIC_A).contains(&never), "released once its record was deleted");
    assert_accounted(&a, &vpc, NIC_A);
}

#[tokio::test]
async fn a_pattern_makes_a_pod_sticky_and_an_address_deleted_in_the_vpc_is_allocated_again_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store.json");
    let vpc = FakeVpc::new(32);
    let (a, b) = (node(&vpc, NIC_A, dir.path(), &store), node(&vpc, NIC_B, dir.path(), &store));
    a.tick().await.unwrap();
    let db = Some(PodRef { namespace: "db".into(), name: "pg-0".into() });
    let (ip, _) = a.assign(&owner("a1"), db.clone(), None, &none()).await.unwrap();
    a.release(&owner("a1")).unwrap();
    assert_eq!(a.report().held.len(), 1, "db/* is sticky by pattern");
    // Deleted behind everyone's back (node A gone with its NIC, say).
    {
        let mut v = vpc.lock().unwrap();
        v.owners.remove(&ip);
        v.free.insert(ip);
    }
    assert_eq!(b.assign(&owner("b1"), db, None, &none()).await.unwrap(), (ip, true));
    assert_eq!(calls(&b, "AllocateSecondaryIp"), 1, "allocated by name, the pool untouched");
    assert_eq!(vpc.lock().unwrap().owners.get(&ip).map(String::as_str), Some(NIC_B));
    // A pod of this node still holding it (its DEL not yet come): retry later.
    let busy = b.assign(&owner("b2"), pod("other"), sticky(KEEP), &HashSet::from([ip])).await.unwrap();
    assert_ne!(busy.0, ip);
    b.release(&owner("b2")).unwrap();
    let db = Some(PodRef { namespace: "db".into(), name: "pg-0".into() });
    let twice = b.assign(&owner("b3"), db, None, &none()).await.unwrap_err();
    assert!(matches!(twice, IpamError::StickyBusy(StickyBusy::StillHeld { .. })), "{twice}");
}

#[tokio::test]
async fn an_unwritable_store_refuses_a_sticky_add_and_loses_no_address() {
    let dir = tempfile::tempdir().unwrap();
    let vpc = FakeVpc::new(32);
    let sub = dir.path().join("sub");
    std::fs::create_dir(&sub).unwrap();
    let a = node(&vpc, NIC_A, dir.path(), &sub.join("store.json"));
    // Its directory becomes a file: every read and write of the store fails.
    std::fs::remove_dir(&sub).unwrap();
    std::fs::write(&sub, b"").unwrap();
    a.tick().await.unwrap();
    let warm = a.report().warm;
    let refused = a.assign(&owner("c1"), pod("pg-0"), sticky(KEEP), &none()).await.unwrap_err();
    assert!(matches!(refused, IpamError::StoreUnavailable { what: "sticky address", .. }), "{refused}");
    assert_eq!(a.report().warm, warm, "the address went back to the pool");
    assert!(a.assign(&owner("c2"), pod("plain"), None, &none()).await.is_ok(), "other pods still start");
    assert_accounted(&a, &vpc, NIC_A);
}
