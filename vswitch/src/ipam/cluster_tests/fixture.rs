//! What every test here starts from: nodes with the file store in one directory, requests, and
//! the store's records as the tests read them.

use std::collections::HashSet;
use std::net::IpAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use vswitch_api::api::{Attachment, IpFamilies, PodRef};

use crate::ipam::record::{AddressRecord, Keys};
use crate::ipam::store::file::FileStore;
use crate::ipam::store::ClusterStore;
use crate::ipam::{AddressRequest, IpamConfig, NodeIpam};

/// `pool`: one prefix, or several separated by commas.
pub fn config(node: &str, pool: &str, extra: &str) -> IpamConfig {
    let pools: Vec<String> = pool.split(',').map(|p| format!("\"{p}\"")).collect();
    toml::from_str(&format!(
        "node_name = \"{node}\"\npools = [{}]\nlease_ttl_seconds = 2\nquarantine_seconds = 1\n{extra}",
        pools.join(", ")
    ))
    .unwrap()
}

pub fn node(dir: &Path, name: &str, pool: &str, extra: &str) -> Arc<NodeIpam<FileStore>> {
    let state = dir.join(name);
    std::fs::create_dir_all(&state).unwrap();
    let settings = config(name, pool, extra).settings().unwrap();
    Arc::new(NodeIpam::open(settings, FileStore::new(&dir.join("store.json")), &state).unwrap())
}

pub fn spec(id: &str, pod: Option<(&str, &str)>) -> AddressRequest {
    AddressRequest::new(
        Attachment { container_id: id.into(), ifname: "eth0".into() },
        format!("/run/netns/{id}").into(),
        pod.map(|(ns, name)| PodRef { namespace: ns.into(), name: name.into() }),
    )
}

pub async fn records(dir: &Path) -> Vec<(IpAddr, AddressRecord)> {
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

pub fn none() -> HashSet<IpAddr> {
    HashSet::new()
}

/// `node` gives `ip` to a new pod, asking for it by name: a returning node that lost it finds it
/// taken (one that nobody took is taken back instead).
pub async fn take_by_name<S: ClusterStore>(node: &NodeIpam<S>, ip: IpAddr) {
    let IpAddr::V4(v4) = ip else { panic!("an IPv4 pool") };
    let request = AddressRequest { ipv4: Some(v4), ..spec("taker", None) };
    assert_eq!(node.requests().assign(&request, &none()).await.unwrap().ips, [ip]);
}

pub fn with_families(mut spec: AddressRequest, families: IpFamilies) -> AddressRequest {
    spec.families = Some(families);
    spec
}

/// Each address once, and one of each family per pod (IPv4 first).
pub fn assert_dual(views: &[Vec<IpAddr>]) {
    let all: Vec<IpAddr> = views.iter().flatten().copied().collect();
    assert_eq!(all.iter().collect::<HashSet<_>>().len(), all.len(), "an address twice: {views:?}");
    for ips in views {
        assert!(ips.len() == 2 && ips[0].is_ipv4() && ips[1].is_ipv6(), "{ips:?}");
    }
}

pub const DUAL: &str = "10.0.0.0/28,fd00::/64";

/// Another node has stopped renewing its lease (cut off): `survivor` runs its rounds past that
/// lease (2 s) and the quarantine (1 s), so the other node's addresses are reclaimed.
pub async fn outlive_lease_and_quarantine<S: ClusterStore>(survivor: &NodeIpam<S>) {
    tokio::time::sleep(Duration::from_millis(2200)).await;
    for _ in 0..6 {
        survivor.upkeep().tick(|_| false).await;
        tokio::time::sleep(Duration::from_millis(400)).await;
    }
}
