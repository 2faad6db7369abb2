//! Provider mode under the lab VPC API's faults, with real parts: three vswitchd nodes in
//! provider mode on `--vpc ucloud`, pods through the real vpc-cni, faults switched on in the
//! running API server.
//!
//! - The API down for 30 s during a storm of 60 ADD/DEL across the nodes: ADDs are served from
//!   the warm pools while they last and answer code 11 (retry later) after, never anything else;
//!   every DEL succeeds; after recovery each NIC's secondary IPs in the VPC are exactly the node's
//!   pods, warm, cooling, queued and held addresses: nothing leaked, nothing lost.
//! - The API throttled to 5 calls/s: pods still start (kubelet's retries included).
//! - vswitchd killed (-9) while an ADD's `AllocateSecondaryIp` has been committed by the VPC but
//!   not yet answered: after the restart the address is adopted into the pool or deleted, never
//!   lost (on the NIC, held by nobody) and never held twice.
//!
//! Needs root and etcd.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use vpc_lab::etcd::require_etcd;
use vpc_lab::lab::{IpamMode, Lab, LabSpec, UplinkMode, VpcMode};
use vpc_lab::netns::{require_root, unique, Netns};

fn lab() -> Lab {
    require_root();
    require_etcd();
    let spec = LabSpec {
        mode: UplinkMode::HostRouted,
        vpc: VpcMode::Ucloud,
        ipam: IpamMode::Vpc,
        nodes: 3,
        pods_per_node: 1,
        ..LabSpec::default()
    };
    Lab::up(spec, |_| {})
}

/// Until every node's NIC in the VPC holds exactly what the node accounts for, with its queues
/// drained; panics after `within`. Returns each NIC's secondary IPs.
fn settled(lab: &Lab, nodes: std::ops::Range<usize>, within: Duration) -> Vec<BTreeSet<String>> {
    let deadline = Instant::now() + within;
    loop {
        let now: Vec<_> = nodes.clone().map(|i| (on_nic(lab, i), accounted(lab, i))).collect();
        if now.iter().all(|(nic, (ours, drained))| nic == ours && *drained) {
            return now.into_iter().map(|(nic, _)| nic).collect();
        }
        assert!(Instant::now() < deadline, "not settled within {within:?}: {now:#?}");
        std::thread::sleep(Duration::from_secs(1));
    }
}

fn strings(v: &Value) -> BTreeSet<String> {
    v.as_array().map(|a| a.iter().filter_map(|s| s.as_str().map(str::to_string)).collect()).unwrap_or_default()
}

/// The VPC's secondary IPs of node `node`'s pod NIC.
fn on_nic(lab: &Lab, node: usize) -> BTreeSet<String> {
    let vpc = lab.vpc.as_ref().expect("the lab's VPC");
    let mac = &vpc.nics.iter().find(|n| n.node == node && n.interface == "eth0").expect("node NIC").mac;
    let state = lab.vpc_api().expect("the VPC API").state();
    let nic = state["vpc"]["nics"].as_array().unwrap().iter().find(|n| n["mac"] == mac.as_str()).expect("the NIC");
    strings(&nic["secondary"])
}

/// What node `node` accounts for: the lab's pods on it, and its warm, cooling, queued and held
/// addresses; and whether its queues are drained.
fn accounted(lab: &Lab, node: usize) -> (BTreeSet<String>, bool) {
    let view = lab.daemon(node).ctl_json(&["ipam"]);
    let p = &view["provider"];
    let mut all: BTreeSet<String> = lab.pods.iter().filter(|x| x.node == node).map(|x| x.ip4().to_string()).collect();
    all.extend(strings(&p["warm"]));
    all.extend(strings(&p["cooling"]));
    all.extend(strings(&p["deleting"]));
    all.extend(view["sticky"].as_array().unwrap().iter().map(|s| s["ip"].as_str().unwrap().to_string()));
    // Cooled back into the pool (or deleted) by the upkeep, the deletes done, the API seen up.
    let drained = strings(&p["deleting"]).is_empty() && strings(&p["cooling"]).is_empty() && p["api_healthy"] == true;
    (all, drained)
}

/// One storm pod: ADD (its result or CNI error code), then DEL.
fn add_and_del(lab: &Lab, node: usize, n: usize) -> (Result<(), u64>, Result<(), String>) {
    let ns = Netns::new("vf");
    let container = format!("storm-{n}-{}", unique(""));
    let name = format!("storm-{n}");
    let added = lab.cni("ADD", node, &container, &ns.path(), &name).map(drop).map_err(|e| e.code);
    let deleted = lab.cni("DEL", node, &container, &ns.path(), &name).map(drop).map_err(|e| e.message);
    (added, deleted)
}

#[test]
fn api_down_30_s_during_a_storm_serves_adds_from_the_pools_queues_dels_and_leaks_nothing() {
    let mut lab = lab();
    let api = lab.vpc_api().expect("the VPC API");
    let warm_before: Vec<usize> =
        (0..3).map(|i| strings(&lab.daemon(i).ctl_json(&["ipam"])["provider"]["warm"]).len()).collect();
    api.set_faults(json!({"down": true}));
    let down_at = Instant::now();
    let (mut served, mut retry_later) = ([0usize; 3], [0usize; 3]);
    for n in 0..60 {
        let node = n % 3;
        let (added, deleted) = add_and_del(&lab, node, n);
        match added {
            Ok(()) => served[node] += 1,
            Err(11) => retry_later[node] += 1,
            Err(code) => panic!("ADD {n} on node{} while the API is down: code {code}, not 11", node + 1),
        }
        deleted.unwrap_or_else(|e| panic!("DEL {n} while the API is down: {e}"));
    }
    for node in 0..3 {
        assert!(served[node] >= warm_before[node].max(1), "node{}: its warm pool was not used: {served:?}", node + 1);
    }
    let view = lab.daemon(0).ctl_json(&["ipam"]);
    assert_eq!(view["provider"]["api_healthy"], false, "the view shows the API down: {view}");
    eprintln!("API down: served {served:?}, code 11 {retry_later:?} (warm before {warm_before:?})");
    std::thread::sleep(Duration::from_secs(30).saturating_sub(down_at.elapsed()));
    api.set_faults(json!({"down": false}));

    // Cooldown (30 s) plus backoff (at most 30 s) plus an upkeep round.
    let last = settled(&lab, 0..3, Duration::from_secs(120));
    let all: Vec<&String> = last.iter().flatten().collect();
    let distinct: BTreeSet<&&String> = all.iter().collect();
    assert_eq!(all.len(), distinct.len(), "an address on two NICs");
    eprintln!(
        "after recovery: {:?} secondary IPs per NIC, all accounted for",
        last.iter().map(BTreeSet::len).collect::<Vec<_>>()
    );
    lab.delete_pods();
}

#[test]
fn api_throttled_to_5_calls_per_second_pods_still_start() {
    let mut lab = lab();
    lab.vpc_api().expect("the VPC API").set_faults(json!({"rate_per_sec": 5.0}));
    let started = Instant::now();
    let mut sandboxes = Vec::new();
    // More pods than the warm pools hold: some ADDs need the API.
    for n in 0..24 {
        let node = n % 3;
        let ns = Netns::new("vt");
        let container = format!("thr-{n}-{}", unique(""));
        let name = format!("thr-{n}");
        let since = Instant::now();
        // As kubelet: an ADD told to retry later (11) is retried.
        let result = loop {
            match lab.cni("ADD", node, &container, &ns.path(), &name) {
                Err(e) if e.code == 11 && since.elapsed() < Duration::from_secs(60) => {
                    let _ = lab.cni("DEL", node, &container, &ns.path(), &name);
                    std::thread::sleep(Duration::from_millis(500));
                }
                other => break other,
            }
        };
        result.unwrap_or_else(|e| panic!("pod {n} did not start while throttled: {}", e.message));
        sandboxes.push((node, ns, container, name));
    }
    let throttled: u64 = (0..3)
        .flat_map(|i| lab.daemon(i).ctl_json(&["ipam"])["provider"]["calls"].as_array().unwrap().clone())
        .filter(|c| c["result"] == "throttled")
        .map(|c| c["calls"].as_u64().unwrap())
        .sum();
    eprintln!("24 pods started under 5 calls/s in {:?}; {throttled} calls throttled", started.elapsed());
    for (node, ns, container, name) in &sandboxes {
        lab.cni("DEL", *node, container, &ns.path(), name).expect("DEL");
    }
    lab.delete_pods();
}

#[test]
fn kill_9_between_the_vpcs_allocation_and_the_adds_answer_loses_nothing() {
    let mut lab = lab();
    let api = lab.vpc_api().expect("the VPC API");
    // Node1's warm pool emptied while the API is down, so the next ADD must allocate itself.
    api.set_faults(json!({"down": true}));
    let mut drained = Vec::new();
    for n in 0..20 {
        let ns = Netns::new("vk");
        let container = format!("drain-{n}-{}", unique(""));
        match lab.cni("ADD", 0, &container, &ns.path(), &format!("drain-{n}")) {
            Ok(_) => drained.push((ns, container, format!("drain-{n}"))),
            Err(e) if e.code == 11 => break,
            Err(e) => panic!("ADD while draining: {}", e.message),
        }
    }
    let before = on_nic(&lab, 0);
    // The VPC commits an allocation at once and answers 4 s later.
    api.set_faults(json!({"down": false, "latency_ms": 4000}));
    let pid = lab.daemon(0).child.as_ref().expect("node1's vswitchd").id();
    let ns = Netns::new("vk");
    let container = format!("killed-{}", unique(""));
    let add = std::thread::scope(|s| {
        let add = s.spawn(|| lab.cni("ADD", 0, &container, &ns.path(), "killed"));
        // Killed once the VPC has the new address and before it answers.
        let deadline = Instant::now() + Duration::from_secs(3);
        while on_nic(&lab, 0) == before {
            assert!(Instant::now() < deadline, "no allocation reached the VPC");
            std::thread::sleep(Duration::from_millis(20));
        }
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), nix::sys::signal::Signal::SIGKILL).unwrap();
        add.join().unwrap()
    });
    assert!(add.is_err(), "the ADD cannot succeed with vswitchd killed under it: {add:?}");
    let committed: BTreeSet<String> = on_nic(&lab, 0).difference(&before).cloned().collect();
    api.set_faults(json!({"latency_ms": 0}));
    lab.restart_vswitchd(0);
    // The runtime DELs the failed sandbox, as after any failed ADD.
    lab.cni("DEL", 0, &container, &ns.path(), "killed").expect("DEL of the failed sandbox");
    // The drained pods go too (their addresses cool back into the pool), so that the node's
    // accounting below is its pool's and the lab's pods'.
    for (ns, container, name) in &drained {
        lab.cni("DEL", 0, container, &ns.path(), name).expect("DEL");
    }
    let nic = settled(&lab, 0..1, Duration::from_secs(90)).remove(0);
    let view = lab.daemon(0).ctl_json(&["ipam"]);
    let warm = strings(&view["provider"]["warm"]);
    for ip in &committed {
        assert!(warm.contains(ip) || !nic.contains(ip), "{ip}: neither adopted nor deleted: {view}");
    }
    eprintln!("committed while killed: {committed:?}; after the restart warm {warm:?}, on the NIC {nic:?}");
    lab.delete_pods();
}
