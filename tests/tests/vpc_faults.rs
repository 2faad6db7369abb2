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
//! - The subnet full: once a node's warm pool is spent, ADD answers code 11 with the VPC's own
//!   message (RetCode 57000), and `vswitchctl ipam` and the metrics show it.
//!
//! Needs root and etcd.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use serde_json::json;
use vpc_lab::etcd::require_etcd;
use vpc_lab::lab::{IpamMode, Lab, LabSpec, NicBooks, UplinkMode, VpcMode};
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

/// Until every node's books match the VPC's, or a panic with them after `within`.
fn settled(lab: &Lab, nodes: std::ops::Range<usize>, within: Duration) -> Vec<NicBooks> {
    let books = lab.settle_nic_books(nodes, within);
    assert!(books.iter().all(|b| b.quiet && b.on_nic == b.accounted), "not settled within {within:?}: {books:#?}");
    books
}

fn warm(lab: &Lab, node: usize) -> usize {
    lab.nic_books(node).warm.len()
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
    let warm_before: Vec<usize> = (0..3).map(|i| warm(&lab, i)).collect();
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
    let all: Vec<&String> = last.iter().flat_map(|b| &b.on_nic).collect();
    let distinct: BTreeSet<&&String> = all.iter().collect();
    assert_eq!(all.len(), distinct.len(), "an address on two NICs");
    eprintln!(
        "after recovery: {:?} secondary IPs per NIC, all accounted for",
        last.iter().map(|b| b.on_nic.len()).collect::<Vec<_>>()
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
    let before = lab.nic_secondary(0);
    // The VPC commits an allocation at once and answers 4 s later.
    api.set_faults(json!({"down": false, "latency_ms": 4000}));
    let pid = lab.daemon(0).child.as_ref().expect("node1's vswitchd").id();
    let ns = Netns::new("vk");
    let container = format!("killed-{}", unique(""));
    let add = std::thread::scope(|s| {
        let add = s.spawn(|| lab.cni("ADD", 0, &container, &ns.path(), "killed"));
        // Killed once the VPC has the new address and before it answers.
        let deadline = Instant::now() + Duration::from_secs(3);
        while lab.nic_secondary(0) == before {
            assert!(Instant::now() < deadline, "no allocation reached the VPC");
            std::thread::sleep(Duration::from_millis(20));
        }
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), nix::sys::signal::Signal::SIGKILL).unwrap();
        add.join().unwrap()
    });
    assert!(add.is_err(), "the ADD cannot succeed with vswitchd killed under it: {add:?}");
    let committed: BTreeSet<String> = lab.nic_secondary(0).difference(&before).cloned().collect();
    api.set_faults(json!({"latency_ms": 0}));
    lab.restart_vswitchd(0);
    // The runtime DELs the failed sandbox, as after any failed ADD.
    lab.cni("DEL", 0, &container, &ns.path(), "killed").expect("DEL of the failed sandbox");
    // The drained pods go too (their addresses cool back into the pool), so that the node's
    // accounting below is its pool's and the lab's pods'.
    for (ns, container, name) in &drained {
        lab.cni("DEL", 0, container, &ns.path(), name).expect("DEL");
    }
    let books = settled(&lab, 0..1, Duration::from_secs(90)).remove(0);
    for ip in &committed {
        assert!(books.warm.contains(ip) || !books.on_nic.contains(ip), "{ip}: neither adopted nor deleted: {books:?}");
    }
    eprintln!(
        "committed while killed: {committed:?}; after the restart warm {:?}, on the NIC {:?}",
        books.warm, books.on_nic
    );
    lab.delete_pods();
}

#[test]
fn a_full_subnet_answers_code_11_with_the_vpcs_message_shown_in_the_view_and_the_metrics() {
    let mut lab = lab();
    let api = lab.vpc_api().expect("the VPC API");
    // No address left in the subnet's pool: what the nodes hold stays theirs.
    api.set_faults(json!({"pool_size": 0}));
    let mut pods = Vec::new();
    let refused = loop {
        assert!(pods.len() < 40, "40 ADDs and the subnet never ran out");
        let ns = Netns::new("vs");
        let container = format!("full-{}-{}", pods.len(), unique(""));
        let name = format!("full-{}", pods.len());
        match lab.cni("ADD", 0, &container, &ns.path(), &name) {
            Ok(_) => pods.push((ns, container, name)),
            Err(e) => break e,
        }
    };
    eprintln!("{} ADDs from the warm pool, then: {}", pods.len(), refused.message);
    assert_eq!(refused.code, 11, "{}", refused.message);
    assert!(refused.message.contains("no free IP in subnet"), "not the VPC's message: {}", refused.message);
    let view = lab.daemon(0).ctl_json(&["ipam"]);
    let errors = view["provider"]["last_errors"].to_string();
    assert!(errors.contains("no free IP in subnet"), "vswitchctl ipam: {view:#}");
    let metrics = lab.node_ns(0).exec(&["curl", "-sS", "http://127.0.0.1:9477/metrics"]);
    let metrics = String::from_utf8_lossy(&metrics.stdout);
    assert!(
        metrics.lines().any(|l| l.starts_with("vswitch_ipam_provider_api_calls") && l.contains("subnet_full")),
        "no subnet_full call in the metrics: {metrics}"
    );
    // Room again: the same pod starts.
    api.set_faults(json!({"pool_size": null}));
    let ns = Netns::new("vs");
    let container = format!("full-again-{}", unique(""));
    lab.cni("ADD", 0, &container, &ns.path(), "full-again").expect("ADD once the subnet has room");
    lab.cni("DEL", 0, &container, &ns.path(), "full-again").expect("DEL");
    for (ns, container, name) in &pods {
        lab.cni("DEL", 0, container, &ns.path(), name).expect("DEL");
    }
    lab.delete_pods();
}
