//! The sticky move on the lab VPC (`--vpc ucloud`, provider mode), with real parts: three
//! vswitchd nodes taking pod addresses from the lab's UCloud-dialect API, etcd holding the sticky
//! records, the real vpc-cni called as containerd calls it with UK8S's static-IP annotations in
//! `runtimeConfig`. The sticky pod is deleted on node1 and created again, same name, new sandbox,
//! on node2: it keeps its address, which the VPC now has on node2's NIC (moved by
//! `MoveSecondaryIPMac`), and the VM and a pod on node3 reach it within 2 s of the ADD's return
//! (the flow-table push included). Needs root and etcd.

use std::time::Instant;

use serde_json::Value;
use vpc_lab::etcd::require_etcd;
use vpc_lab::lab::{IpamMode, Lab, LabSpec, UplinkMode, VpcMode};
use vpc_lab::netns::require_root;

/// The NICs (MACs) the VPC has `ip` on as a secondary IP.
fn holders(lab: &Lab, ip: &str) -> Vec<String> {
    let state = lab.vpc_api().expect("the VPC API").state();
    state["vpc"]["nics"]
        .as_array()
        .expect("the VPC's NICs")
        .iter()
        .filter(|n| n["secondary"].as_array().unwrap().iter().any(|s| s == ip))
        .map(|n| n["mac"].as_str().unwrap().to_string())
        .collect()
}

/// Successful calls of `action` node `node`'s vswitchd made.
fn api_calls(view: &Value, action: &str) -> u64 {
    view["provider"]["calls"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["action"] == action && c["result"] == "ok")
        .map(|c| c["calls"].as_u64().unwrap())
        .sum()
}

#[test]
fn a_sticky_pod_moves_to_another_node_through_the_vpc_api_and_answers_within_2_s() {
    require_root();
    require_etcd();
    let started = Instant::now();
    let spec = LabSpec {
        mode: UplinkMode::HostRouted,
        vpc: VpcMode::Ucloud,
        ipam: IpamMode::Vpc,
        nodes: 3,
        ..LabSpec::default()
    };
    let mut lab = Lab::up(spec, |_| {});
    let vpc = lab.vpc.clone().expect("the lab's VPC");
    let mac_of = |node: usize| vpc.nics.iter().find(|n| n.node == node && n.interface == "eth0").unwrap().mac.clone();
    let before = lab.sticky_pod().expect("a sticky pod with --vpc ucloud").clone();
    let ip = before.ip4().to_string();
    assert_eq!(before.node, 0);
    assert_eq!(holders(&lab, &ip), [mac_of(0)], "the sticky pod's address is node1's secondary IP");
    assert_eq!(api_calls(&lab.daemon(1).ctl_json(&["ipam"]), "MoveSecondaryIPMac"), 0);

    let moved = lab.move_sticky();
    eprintln!("{}", serde_json::to_string_pretty(&moved).unwrap());
    assert!(moved.ok(), "the sticky move failed: {:#?}", moved.checks);
    assert_eq!((moved.from_node, moved.to_node, moved.ip_after), (0, 1, before.ip));
    for (who, ms) in [("VM", moved.vm_ms), ("pod on node3", moved.pod_ms)] {
        let ms = ms.unwrap_or_else(|| panic!("the {who} never reached the moved pod"));
        assert!(ms <= 2000.0, "the {who} reached the moved pod only {ms:.0} ms after the ADD");
    }
    // The VPC moved it, and node2's vswitchd asked it to.
    assert_eq!(holders(&lab, &ip), [mac_of(1)], "the VPC has it on node2's NIC only");
    let node2 = lab.daemon(1).ctl_json(&["ipam"]);
    assert_eq!(api_calls(&node2, "MoveSecondaryIPMac"), 1, "{node2}");
    // Node1 handed it to nobody: not in its warm pool (reconcile drops it from its held list).
    let node1 = lab.daemon(0).ctl_json(&["ipam"]);
    let warm: Vec<&str> = node1["provider"]["warm"].as_array().unwrap().iter().map(|v| v.as_str().unwrap()).collect();
    assert!(!warm.contains(&ip.as_str()), "node1 pooled the moved address: {node1}");
    lab.delete_pods();
    eprintln!(
        "sticky move on the ucloud VPC: ADD {:.0} ms after the DEL ({} tries), VM {:.0} ms, pod {:.0} ms after the ADD; total {:?}",
        moved.del_to_add_ms,
        moved.add_attempts,
        moved.vm_ms.unwrap(),
        moved.pod_ms.unwrap(),
        started.elapsed()
    );
}
