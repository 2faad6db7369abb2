//! `[ipam] provider = "aws"` against a real EC2 implementation: moto's server behind the lab's
//! proxy (throttling, outages, subnet capacity; vpc_lab::ec2). The node's pool (`ProviderIpam`
//! over the EC2 client) runs in this process, upkeep rounds driven by the test; the checks read
//! moto's state through its own API. vswitchd itself with this provider: ec2_vswitchd.rs.
//! Needs the tests' venv with moto (tests/install-deps.sh).

use std::collections::{BTreeSet, HashSet};
use std::net::IpAddr;
use std::time::{Duration, Instant};

use serde_json::json;
use vpc_lab::ec2::{Ec2Lab, REGION};
use vswitch::ipam::provider::agent::ProviderRefusal;
use vswitch::ipam::provider::aws::config::AwsConfig;
use vswitch::ipam::provider::aws::credentials::Credentials;
use vswitch::ipam::provider::aws::enis::{rfc3339, CREATED_AT_TAG, INSTANCE_TAG};
use vswitch::ipam::provider::aws::Ec2;
use vswitch::ipam::provider::{ProviderIpam, ProviderSettings};
use vswitch::ipam::IpamError;
use vswitch_api::api::Attachment;

fn config(lab: &Ec2Lab, targets: &str) -> AwsConfig {
    let config: AwsConfig = toml::from_str(&format!(
        "region = \"{REGION}\"\nsubnet_id = \"{}\"\ninstance_id = \"{}\"\nendpoint = \"{}\"\n\
         ip_cooldown_period = 0\nrequire_eni_interface = false\n{targets}",
        lab.subnet, lab.instances[0], lab.endpoint
    ))
    .unwrap();
    config
}

fn credentials() -> Credentials {
    Credentials {
        access_key_id: "AKIDLAB".into(),
        secret_access_key: "lab-secret".into(),
        session_token: None,
        source: "test".into(),
    }
}

fn pool(lab: &Ec2Lab, targets: &str, dir: &std::path::Path) -> ProviderIpam<Ec2> {
    pool_of(config(lab, targets), dir)
}

fn pool_of(config: AwsConfig, dir: &std::path::Path) -> ProviderIpam<Ec2> {
    let settings = ProviderSettings {
        backoff_min: Duration::from_millis(50),
        backoff_max: Duration::from_millis(400),
        reconcile_every: Duration::ZERO,
        ..config.settings().unwrap()
    };
    ProviderIpam::open(Ec2::with_credentials(&config, credentials()).unwrap(), settings, dir).unwrap()
}

fn owner(n: usize) -> Attachment {
    Attachment { container_id: format!("c{n}"), ifname: "eth0".into() }
}

/// The instance's secondary addresses in moto are exactly those the pool accounts for (a pod's,
/// warm, cooling or queued), each once, and no address of the subnet is on two ENIs.
fn assert_accounted(lab: &Ec2Lab, ipam: &ProviderIpam<Ec2>) {
    let held = ipam.report().held();
    let distinct: BTreeSet<IpAddr> = held.iter().copied().collect();
    assert_eq!(distinct.len(), held.len(), "an address held twice: {held:?}");
    let on_enis: BTreeSet<IpAddr> = lab.secondary_of(&lab.instances[0]).iter().map(|a| a.parse().unwrap()).collect();
    assert_eq!(distinct, on_enis, "the pool and EC2 disagree");
    let all: Vec<String> = lab
        .enis()
        .iter()
        .flat_map(|e| [&e["primary"], &e["secondary"]].into_iter().flat_map(|l| l.as_array().unwrap().clone()))
        .map(|a| a.as_str().unwrap().to_string())
        .collect();
    assert_eq!(all.iter().collect::<HashSet<_>>().len(), all.len(), "an address on two ENIs: {all:?}");
}

/// Upkeep rounds until `done` (backoff waited out), at most `limit`.
async fn ticks_until(ipam: &ProviderIpam<Ec2>, limit: Duration, what: &str, done: impl Fn(&ProviderIpam<Ec2>) -> bool) {
    let deadline = Instant::now() + limit;
    while !done(ipam) {
        assert!(Instant::now() < deadline, "{what}: {:#?}", ipam.report());
        ipam.tick().await.unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pods_get_secondary_addresses_and_a_second_eni_is_attached_when_the_first_is_full() {
    let lab = Ec2Lab::start(None, "t3.small", 1);
    let dir = tempfile::tempdir().unwrap();
    // t3.small: 3 ENIs of 4 addresses (3 secondary); WARM_IP_TARGET 1.
    let ipam = pool(&lab, "WARM_IP_TARGET = 1", dir.path());
    ipam.tick().await.unwrap();
    assert_eq!(ipam.report().warm.len(), 1, "{:#?}", ipam.report());
    assert_eq!(ipam.report().nic, lab.instances[0]);

    // ADD from the warm pool calls nothing.
    let calls = lab.total_calls();
    let (first, new) = ipam.assign(&owner(1), None, None, &HashSet::new()).await.unwrap();
    assert!(new);
    assert_eq!(lab.total_calls(), calls, "ADD with a warm address called EC2: {}", lab.calls());

    for n in 2..=5 {
        ipam.tick().await.unwrap();
        ipam.assign(&owner(n), None, None, &HashSet::new()).await.unwrap();
    }
    ipam.tick().await.unwrap();
    let enis = lab.enis_of(&lab.instances[0]);
    assert_eq!(enis.len(), 2, "5 pods and 1 warm need a second ENI: {enis:#?}");
    let primary_eni = enis.iter().find(|e| e["device_index"] == 0).unwrap();
    assert!(primary_eni["secondary"].as_array().unwrap().iter().any(|a| a == &first.to_string()));
    assert_eq!(primary_eni["secondary"].as_array().unwrap().len(), 3, "the first ENI is full first");
    let second = enis.iter().find(|e| e["device_index"] == 1).expect("attached at device index 1");
    assert_eq!(second["tags"][INSTANCE_TAG], lab.instances[0].as_str(), "{second:#}");
    assert!(second["tags"][CREATED_AT_TAG].as_str().is_some_and(|t| t.ends_with('Z')), "{second:#}");
    assert_eq!(second["status"], "in-use");
    assert_accounted(&lab, &ipam);
    let calls = lab.calls();
    for action in ["CreateNetworkInterface", "AttachNetworkInterface", "ModifyNetworkInterfaceAttribute"] {
        assert_eq!(calls[action], 1, "{calls}");
    }

    // DELs cool (0 s here), then go back to the pool or are unassigned above its target.
    for n in 1..=5 {
        ipam.release(&owner(n)).unwrap();
    }
    ticks_until(&ipam, Duration::from_secs(20), "the surplus unassigned", |i| {
        let r = i.report();
        r.warm.len() == 1 && r.cooling.is_empty() && r.deleting.is_empty()
    })
    .await;
    assert_accounted(&lab, &ipam);
    // Batched as AWS's ipamd does: one call per ENI for the 5 addresses on the two.
    assert_eq!(lab.calls()["UnassignPrivateIpAddresses"], 2, "{}", lab.calls());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outage_and_throttling_during_a_pod_storm_lose_nothing_and_leak_nothing() {
    let lab = Ec2Lab::start(None, "t3.medium", 1);
    let dir = tempfile::tempdir().unwrap();
    let ipam = pool(&lab, "WARM_IP_TARGET = 6", dir.path());
    ticks_until(&ipam, Duration::from_secs(30), "the pool filled", |i| i.report().warm.len() == 6).await;

    // EC2 down: the storm's first 6 pods start from the pool, the 7th is refused (retry later).
    lab.faults(json!({"down": true}));
    for n in 1..=6 {
        ipam.assign(&owner(n), None, None, &HashSet::new()).await.unwrap();
    }
    let refused = ipam.assign(&owner(7), None, None, &HashSet::new()).await.unwrap_err();
    assert!(
        matches!(&refused, IpamError::Provider(ProviderRefusal::Unavailable(m)) if m.contains("Unavailable")),
        "{refused}"
    );
    // DELs while down: queued, nothing lost.
    for n in 1..=3 {
        ipam.release(&owner(n)).unwrap();
    }
    for _ in 0..3 {
        ipam.tick().await.unwrap();
    }
    let report = ipam.report();
    assert_eq!(report.pods.len(), 3);
    assert!(report.backing_off_ms.is_some() || report.api.last_errors.iter().any(|e| e.contains("Unavailable")));

    // Back, but throttling every call until one is counted as throttled (the refill is one
    // batched call: at 50% it could pass untouched), then half the time: the pool gets there
    // with backoff.
    lab.faults(json!({"down": false, "throttle": 1.0}));
    let throttled =
        |i: &ProviderIpam<Ec2>| i.report().api.calls.iter().filter(|(_, result, _)| result == "throttled").count();
    ticks_until(&ipam, Duration::from_secs(30), "a throttled call counted", |i| throttled(i) > 0).await;
    lab.faults(json!({"throttle": 0.5}));
    ticks_until(&ipam, Duration::from_secs(60), "the pool refilled while throttled", |i| {
        let r = i.report();
        r.warm.len() == 6 && r.deleting.is_empty() && r.cooling.is_empty()
    })
    .await;
    lab.faults(json!({"throttle": 0.0}));
    ipam.reconcile().await.unwrap();
    assert_accounted(&lab, &ipam);
    ipam.assign(&owner(7), None, None, &HashSet::new()).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_eni_with_no_interface_in_the_node_gets_no_address_and_no_eni_after_it() {
    let lab = Ec2Lab::start(None, "t3.small", 1);
    let dir = tempfile::tempdir().unwrap();
    // As vswitchd on the instance: here no interface has the primary ENI's (moto's) MAC.
    let mut config = config(&lab, "WARM_IP_TARGET = 1");
    config.require_eni_interface = true;
    let ipam = pool_of(config, dir.path());
    ipam.tick().await.unwrap();
    ipam.tick().await.unwrap();
    assert!(ipam.report().warm.is_empty(), "{:#?}", ipam.report());
    let refused = ipam.assign(&owner(1), None, None, &HashSet::new()).await.unwrap_err();
    let eni = lab.enis_of(&lab.instances[0])[0]["id"].as_str().unwrap().to_string();
    assert!(
        matches!(&refused, IpamError::Provider(ProviderRefusal::NicAbsent(m))
            if m.starts_with(&format!("{eni} attached but not present in this node"))),
        "{refused}"
    );
    assert_eq!(lab.enis_of(&lab.instances[0]).len(), 1, "an ENI attached after one the node lacks");
    assert!(lab.secondary_of(&lab.instances[0]).is_empty(), "an address assigned to an absent ENI");
    let api = ipam.report().api;
    assert!(api.calls.iter().any(|(_, result, _)| result == "nic_absent"), "{:?}", api.calls);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_subnet_is_a_clear_refusal() {
    let lab = Ec2Lab::start(None, "t3.small", 1);
    let dir = tempfile::tempdir().unwrap();
    // Only the instance's primary address fits.
    lab.faults(json!({"capacity": 1}));
    let ipam = pool(&lab, "WARM_IP_TARGET = 1", dir.path());
    ipam.tick().await.unwrap();
    assert!(ipam.report().warm.is_empty());
    let refused = ipam.assign(&owner(1), None, None, &HashSet::new()).await.unwrap_err();
    assert!(
        matches!(&refused, IpamError::Provider(ProviderRefusal::SubnetFull(m)) if m.contains("InsufficientFreeAddressesInSubnet")),
        "{refused}"
    );
    assert_eq!(ipam.check_api().await.unwrap(), 0, "DescribeSubnets says the subnet is full");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leaked_enis_older_than_five_minutes_are_deleted() {
    let lab = Ec2Lab::start(None, "t3.small", 2);
    let dir = tempfile::tempdir().unwrap();
    let ipam = pool(&lab, "WARM_IP_TARGET = 1", dir.path());
    let ours = lab.instances[0].as_str();
    let old = rfc3339(std::time::SystemTime::now() - Duration::from_secs(600));
    let recent = rfc3339(std::time::SystemTime::now() - Duration::from_secs(60));
    let leaked = lab.create_eni(&[(INSTANCE_TAG, ours), (CREATED_AT_TAG, &old)]);
    let young = lab.create_eni(&[(INSTANCE_TAG, ours), (CREATED_AT_TAG, &recent)]);
    let others = lab.create_eni(&[(INSTANCE_TAG, &lab.instances[1]), (CREATED_AT_TAG, &old)]);
    let untagged = lab.create_eni(&[]);
    ipam.tick().await.unwrap();
    let left: BTreeSet<String> = lab.enis().iter().map(|e| e["id"].as_str().unwrap().to_string()).collect();
    assert!(!left.contains(&leaked), "the leaked ENI is still there");
    for kept in [&young, &others, &untagged] {
        assert!(left.contains(kept), "{kept} was deleted");
    }
    assert_eq!(lab.calls()["DeleteNetworkInterface"], 1);
}
