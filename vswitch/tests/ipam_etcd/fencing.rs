//! A partitioned node: its addresses reclaimed while it is away, fenced when it returns.

use std::net::IpAddr;
use std::time::{Duration, Instant};

use vpc_lab::netns::{Netns, Pod};
use vswitch::ipam::record::AddressRecord;
use vswitch_api::api::{AssignSpec, ErrorCode, PodRef};

use crate::lab::{
    one_at_a_time, owner, wait_for, wait_or, warm_is_full, Lab, Node, FABRIC_DEV, FENCING_MESSAGE, LEASE_TTL,
    QUARANTINE,
};

fn has_port(node: &Node, name: &str) -> bool {
    node.daemon.ctl_json(&["ports"]).as_array().unwrap().iter().any(|p| p["name"] == name)
}

#[test]
fn a_partitioned_node_is_fenced_when_it_returns() {
    let _turn = one_at_a_time();
    let lab = Lab::new(2, "warm_target = 2\nreuse_delay_seconds = 3");
    let (a, b) = (&lab.nodes[0], &lab.nodes[1]);

    // A pod on node A with an address from the IPAM and a real port.
    let pod_ns = Netns::new("vtp");
    let victim = owner("victim");
    let assigned = a
        .client()
        .ipam_assign(AssignSpec {
            owner: victim.clone(),
            netns: pod_ns.path(),
            pod: Some(PodRef { namespace: "default".into(), name: "victim".into() }),
            ips: vec![],
            families: None,
            sticky: None,
        })
        .unwrap();
    let assigned_ip = assigned.ips[0];
    let IpAddr::V4(ip) = assigned_ip else { panic!("an IPv4 pool gave {assigned_ip}") };
    let pod = Pod::in_netns(pod_ns, ip);
    let port = vswitch_api::api::port_name(&victim);
    a.daemon.attach(&port, &pod);
    assert!(has_port(a, &port));
    // A second pod on A, whose address nobody takes while A is away: A takes it back.
    let keeper_ns = Netns::new("vtk");
    let keeper = owner("keeper");
    let keeper_ip = a
        .client()
        .ipam_assign(AssignSpec {
            owner: keeper.clone(),
            netns: keeper_ns.path(),
            pod: None,
            ips: vec![],
            families: None,
            sticky: None,
        })
        .unwrap()
        .ips[0];
    let IpAddr::V4(kip) = keeper_ip else { panic!("an IPv4 pool gave {keeper_ip}") };
    let keeper_pod = Pod::in_netns(keeper_ns, kip);
    let keeper_port = vswitch_api::api::port_name(&keeper);
    a.daemon.attach(&keeper_port, &keeper_pod);
    lab.wait_synced(Duration::from_secs(10));
    let before = lab.records();
    assert!(
        matches!(&before[&assigned_ip], AddressRecord::Assigned { node, owner, .. } if node == "n0" && *owner == victim),
        "{:?}",
        before.get(&assigned_ip)
    );
    let a_warm: Vec<IpAddr> =
        before.iter().filter(|(_, r)| r.state_name() == "warm" && r.node() == Some("n0")).map(|(ip, _)| *ip).collect();

    // Cut A off from etcd.
    a.ns.ip(&["link", "set", FABRIC_DEV, "down"]);
    let cut = Instant::now();
    let reclaimed = wait_for(
        Duration::from_secs(LEASE_TTL + QUARANTINE + 20),
        "node B has reclaimed A's addresses (the victim's record is cooling, last on A)",
        || matches!(lab.records().get(&assigned_ip), Some(AddressRecord::Cooling { last_node, .. }) if last_node == "n0"),
    );
    eprintln!(
        "A cut off: B reclaimed its addresses after {:.1}s (lease {LEASE_TTL}s + quarantine {QUARANTINE}s)",
        reclaimed.as_secs_f64()
    );
    assert!(reclaimed >= Duration::from_secs(LEASE_TTL + QUARANTINE - 1), "reclaimed too early: {reclaimed:?}");
    let after = lab.records();
    assert!(after.values().all(|r| r.node() != Some("n0")), "nothing stays A's: {after:?}");
    for ip in &a_warm {
        assert!(after.get(ip).is_none_or(|r| r.state_name() == "cooling"), "A's warm {ip}: {:?}", after.get(ip));
    }
    assert!(b.logs().contains("reclaimed the addresses of a node whose lease expired"));
    // A cannot know yet: the pod keeps its port while A is cut off.
    assert!(has_port(a, &port), "A detached the pod before it could know");
    assert_eq!(a.view().this_node.fenced_total, 0);
    // B gives the victim's address to a pod of its own (by name: no reuse delay); the keeper's
    // stays cooling.
    let taker = owner("taker");
    let taken = b
        .client()
        .ipam_assign(AssignSpec {
            owner: taker.clone(),
            netns: b.ns.path(),
            pod: None,
            ips: vec![assigned_ip],
            families: None,
            sticky: None,
        })
        .unwrap();
    assert_eq!(taken.ips, [assigned_ip]);
    assert!(matches!(lab.records().get(&keeper_ip), Some(AddressRecord::Cooling { .. })));

    // Heal: A finds its lease gone, re-registers, learns that the address is not its own any
    // more and detaches the pod.
    a.ns.ip(&["link", "set", FABRIC_DEV, "up"]);
    let healed = Instant::now();
    let detached = wait_or(
        Duration::from_secs(15),
        "A has detached the fenced pod",
        || !has_port(a, &port),
        || {
            let ss = a.ns.exec(&["ss", "-tnoi"]);
            format!("{}\n{:?}\n{}\n{}", a.logs(), a.view(), a.metrics(), String::from_utf8_lossy(&ss.stdout))
        },
    );
    eprintln!(
        "partition healed after {:.1}s; A detached the pod {:.1}s later",
        healed.duration_since(cut).as_secs_f64(),
        detached.as_secs_f64()
    );
    let view = a.ctl_ipam();
    assert!(view["this_node"]["fenced_total"].as_u64().unwrap() >= 1, "{view}");
    let lookup = a.client().ipam_lookup(&victim).unwrap_err();
    assert_eq!(lookup.code(), Some(ErrorCode::NotFound), "{lookup}");
    let logs = a.logs();
    assert!(logs.contains(FENCING_MESSAGE), "A's log has no fencing message:\n{logs}");
    assert!(logs.contains("pod detached: its address is owned elsewhere"), "{logs}");
    assert!(logs.contains("assigned on n1"), "the fencing message names the new holder:\n{logs}");
    let metrics = a.metrics();
    assert!(metrics.contains("\nvswitch_ipam_fenced_total 1\n"), "{metrics}");
    // The keeper's address was taken back: its pod keeps its port and its address.
    assert!(has_port(a, &keeper_port), "A detached a pod whose address nobody took");
    assert_eq!(a.client().ipam_lookup(&keeper).unwrap().ips, [keeper_ip]);
    assert!(
        matches!(&lab.records()[&keeper_ip], AddressRecord::Assigned { node, owner, .. } if node == "n0" && *owner == keeper),
        "{:?}",
        lab.records().get(&keeper_ip)
    );
    assert!(logs.contains("taken back"), "{logs}");
    // A is a member again, with a fresh warm pool that is not the addresses it lost.
    wait_for(Duration::from_secs(10), "A is live again with a full warm pool", || {
        lab.live_nodes().contains("n0") && warm_is_full(&a.view())
    });
    let now = lab.records();
    assert!(now.get(&assigned_ip).is_none_or(|r| r.node() != Some("n0")), "{:?}", now.get(&assigned_ip));
    // The two pods that stay are deleted, so what follows checks what it always did.
    a.client().ipam_release(&keeper).unwrap();
    b.client().ipam_release(&taker).unwrap();
    lab.wait_synced(Duration::from_secs(10));
    let audit = lab.audit();
    eprintln!("etcd after healing: {audit}");
    assert!(audit.lost.is_empty(), "{:#?}", audit.lost);
    assert!(audit.assigned.is_empty(), "{:?}", audit.assigned);
}
