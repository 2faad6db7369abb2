//! The lab's path matrix as integration tests: each test stands up its own uniquely named VPC
//! (namespaces, vswitchd nodes, pods through vpc-cni, with --ipam etcd a 3-member etcd cluster),
//! checks every path, and tears it all down, also when an assertion fails. Needs root, like
//! every namespace test.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr};
use std::process::Command;
use std::time::{Duration, Instant};

use nix::sys::signal::kill;
use nix::unistd::Pid;
use vpc_lab::etcd::require_etcd;
use vpc_lab::lab::ec2_sdn::HOTPLUG_MTU;
use vpc_lab::lab::{
    Family, IpFamily, IpamMode, Lab, LabSpec, LabState, PathCheck, UplinkMode, VpcMode, IPAM_PREFIX, POD_NAMESPACE,
    POD_POOL, POD_POOL6,
};
use vpc_lab::netns::require_root;

/// Every row of `vpc-lab check` passed; the failed ones listed if not.
fn assert_all_passed(checks: &[PathCheck]) {
    let failed: Vec<String> =
        checks.iter().filter(|c| !c.ok).map(|c| format!("{} ({} -> {}): {}", c.path, c.from, c.to, c.detail)).collect();
    assert!(failed.is_empty(), "paths failed:\n{}", failed.join("\n"));
}

fn every_path_works(spec: LabSpec) {
    require_root();
    let mut lab = Lab::up(spec, |_| {});
    let checks = lab.check();
    assert_all_passed(&checks);
    // 24 rows per family with two nodes (see three_nodes_on_etcd for the count).
    let families = lab.family.families();
    assert_eq!(checks.len(), 24 * families.len(), "the matrix lost paths");
    for family in &families {
        let rows = checks.iter().filter(|c| c.family == family.to_string()).count();
        assert_eq!(rows, 24, "{family} rows of the matrix");
    }
    for pod in &lab.pods {
        assert_eq!(
            (pod.ip.is_some(), pod.ipv6.is_some()),
            (families.contains(&Family::V4), families.contains(&Family::V6)),
            "{pod:?} for {:?}",
            lab.family
        );
    }
    // A working TCP stream across nodes; how fast it goes is vpc-bench's business (three labs
    // share two cores here, so a figure from a test would say little). What a test can say: the
    // switches do not lose its segments. When the uplink socket's receive buffer held only
    // three GSO frames, 5-7% of the segments were sent again and the stream fell to 3 Gbit/s.
    for family in families {
        let run = lab.iperf3(family, "n1a", "n2a", 3).unwrap_or_else(|e| panic!("iperf3 across nodes, {family}: {e}"));
        eprintln!(
            "{family} iperf3 n1a -> n2a: {:.2} Gbit/s, {} retransmitted",
            run.bits_per_second / 1e9,
            run.retransmits
        );
        assert!(run.retransmit_ratio() < 0.01, "{family}: segments lost across nodes: {run:?}");
    }
    lab.delete_pods();
}

#[test]
fn host_routed_lab_every_path_works() {
    every_path_works(LabSpec::default());
}

#[test]
fn dedicated_uplink_lab_every_path_works() {
    every_path_works(LabSpec { mode: UplinkMode::Uplink, ..LabSpec::default() });
}

/// Dual stack: the VPC has fd00:10::/64 next to 10.10.0.0/16, every pod both families from
/// vpc-cni, and every path of the matrix runs over each (IPv6: the Service's ClusterIP
/// [fd00:96::10]:80, the NodePort on the nodes' IPv6 addresses, Packet Too Big and path MTU
/// discovery to the hybrid network behind the 1400-byte link).
#[test]
fn dual_stack_host_routed_lab_every_path_works() {
    every_path_works(LabSpec { family: IpFamily::Dual, ..LabSpec::default() });
}

#[test]
fn dual_stack_dedicated_uplink_lab_every_path_works() {
    every_path_works(LabSpec { mode: UplinkMode::Uplink, family: IpFamily::Dual, ..LabSpec::default() });
}

/// Pods with IPv6 only (the VPC's hosts keep IPv4 too).
#[test]
fn ipv6_only_lab_every_path_works() {
    every_path_works(LabSpec { family: IpFamily::Ipv6, ..LabSpec::default() });
}

#[test]
fn a_smaller_pod_mtu_is_honoured() {
    // Pods at 1300: a DF ping at the pod MTU fits the 1400 hybrid link, so set that link lower.
    every_path_works(LabSpec { pod_mtu: 1300, hybrid_mtu: 1280, ..LabSpec::default() });
}

/// Three nodes allocating from one pool in etcd (one per family): every path for every node
/// pair, the NodePort through every node, every pod's addresses distinct, from the pools and as
/// etcd records them, and the sticky pod moved to another node, keeping its addresses, answering
/// within a second.
fn three_nodes_on_etcd(mode: UplinkMode, family: IpFamily) {
    require_root();
    require_etcd();
    let started = Instant::now();
    let spec = LabSpec { mode, ipam: IpamMode::Etcd, nodes: 3, family, ..LabSpec::default() };
    let mut lab = Lab::up(spec, |_| {});
    let up = started.elapsed();
    let checks = lab.check();
    assert_all_passed(&checks);
    // 3 same node, 6 across, 3 own node, 6 other node, 6 node to pod, 3 ClusterIP, 3 NodePort,
    // 3 + 3 VM, 3 + 3 hybrid, 3 MTU.
    assert_eq!(checks.len(), 45 * family.families().len(), "the matrix lost paths");
    let node_ports: Vec<&str> =
        checks.iter().filter(|c| c.path == "outside client -> NodePort").map(|c| c.to.as_str()).collect();
    assert_eq!(node_ports.len(), 3 * family.families().len(), "the NodePort through every node, per family");
    let nodes: BTreeSet<&str> = node_ports.into_iter().collect();
    assert_eq!(nodes, BTreeSet::from(["node1:30080", "node2:30080", "node3:30080"]));
    let matrix = started.elapsed() - up;

    assert_addresses_are_etcds(&lab);
    let before = lab.sticky_pod().expect("a sticky pod").clone();
    assert_eq!(before.node, 0);
    let moved = lab.move_sticky();
    eprintln!("{}", serde_json::to_string_pretty(&moved).unwrap());
    assert!(moved.ok(), "the sticky move failed: {:#?}", moved.checks);
    assert_eq!((moved.from_node, moved.to_node, moved.ip_after), (0, 1, before.ip));
    assert_eq!(lab.sticky_pod().unwrap().ipv6, before.ipv6, "the sticky pod keeps its IPv6 address too");
    assert_eq!(moved.observer, "n3a", "a pod on the third node watched the move");
    for (who, ms) in [("VM", moved.vm_ms), ("pod", moved.pod_ms)] {
        let ms = ms.unwrap_or_else(|| panic!("the {who} never reached the moved pod"));
        assert!(ms < 1000.0, "the {who} reached the moved pod only {ms:.0} ms after the ADD");
    }
    let after = lab.sticky_pod().unwrap().clone();
    assert_eq!((after.node, after.ip, after.ipv6), (1, before.ip, before.ipv6));
    assert_ne!((&after.netns, &after.container_id), (&before.netns, &before.container_id), "a new sandbox");
    assert_addresses_are_etcds(&lab);
    lab.delete_pods();
    eprintln!(
        "{mode:?}: up {up:?}, {} paths {matrix:?}, sticky move: ADD {:.0} ms after the DEL ({} tries), VM {:.0} ms, pod {:.0} ms; total {:?}",
        checks.len(),
        moved.del_to_add_ms,
        moved.add_attempts,
        moved.vm_ms.unwrap(),
        moved.pod_ms.unwrap(),
        started.elapsed()
    );
}

/// Every pod's address is distinct, in the pool, and assigned to that pod on its node in etcd;
/// vswitchctl ipam on every node shows the same.
fn assert_addresses_are_etcds(lab: &Lab) {
    assert!(lab.wait_ipam_synced(Duration::from_secs(5)), "the nodes did not write their pods to etcd");
    let addresses = |p: &vpc_lab::lab::LabPod| p.ip.map(IpAddr::V4).into_iter().chain(p.ipv6.map(IpAddr::V6));
    let ips: BTreeSet<IpAddr> = lab.pods.iter().flat_map(addresses).collect();
    let families = lab.spec.family.families().len();
    assert_eq!(ips.len(), lab.pods.len() * families, "two pods share an address: {:?}", lab.pods);
    assert_eq!(lab.pods.len(), 3 * 2 + 1);
    for ip in &ips {
        let in_pool = match ip {
            IpAddr::V4(v4) => u32::from(*v4) & 0xffff_c000 == u32::from(Ipv4Addr::new(10, 10, 64, 0)),
            IpAddr::V6(v6) => v6.segments()[..7] == [0xfd00, 0x10, 0, 0, 0, 0, 0x64],
        };
        assert!(in_pool, "{ip} is outside the pools {POD_POOL} and {POD_POOL6}");
    }
    let wanted: BTreeMap<IpAddr, (String, String)> = lab
        .pods
        .iter()
        .flat_map(|p| {
            let owner = (format!("node{}", p.node + 1), format!("{POD_NAMESPACE}/{}", p.name));
            addresses(p).map(move |ip| (ip, owner.clone()))
        })
        .collect();
    let records = lab.etcd().expect("etcd").get_prefix(&format!("{IPAM_PREFIX}/ip/"));
    let assigned: BTreeMap<IpAddr, (String, String)> = records
        .iter()
        .filter_map(|(key, value)| {
            let record: serde_json::Value = serde_json::from_str(value).ok()?;
            (record["state"] == "assigned").then(|| {
                let ip = key.rsplit('/').next().unwrap().parse().unwrap();
                let pod = format!("{}/{}", record["pod"]["namespace"].as_str()?, record["pod"]["name"].as_str()?);
                Some((ip, (record["node"].as_str()?.to_string(), pod)))
            })?
        })
        .collect();
    assert_eq!(assigned, wanted, "etcd's assigned records against the lab's pods");
    for node in 0..3 {
        let view = lab.daemon(node).ctl_json(&["ipam"]);
        let shown: BTreeMap<IpAddr, (String, String)> = view["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|n| {
                n["assigned"].as_array().unwrap().iter().map(move |a| {
                    let pod =
                        format!("{}/{}", a["pod"]["namespace"].as_str().unwrap(), a["pod"]["name"].as_str().unwrap());
                    (a["ip"].as_str().unwrap().parse().unwrap(), (n["name"].as_str().unwrap().to_string(), pod))
                })
            })
            .collect();
        assert_eq!(shown, wanted, "vswitchctl ipam on node{}: {view}", node + 1);
    }
}

#[test]
fn three_nodes_on_etcd_host_routed_dual_stack() {
    three_nodes_on_etcd(UplinkMode::HostRouted, IpFamily::Dual);
}

#[test]
fn three_nodes_on_etcd_dedicated_uplink() {
    three_nodes_on_etcd(UplinkMode::Uplink, IpFamily::Ipv4);
}

/// `--vpc ucloud`: the fabric is an SDN that delivers only addresses registered through the lab's
/// VPC API, and each node's vswitchd (`[ipam] provider = "ucloud"`) gets its pods' addresses as
/// secondary IPs of its NIC. Every path for every node pair passes, and the VPC's own view has
/// each pod's address on the NIC of the pod's node, and nowhere else.
fn three_nodes_on_the_ucloud_vpc(mode: UplinkMode) {
    require_root();
    let started = Instant::now();
    let spec = LabSpec { mode, vpc: VpcMode::Ucloud, ipam: IpamMode::Vpc, nodes: 3, ..LabSpec::default() };
    let mut lab = Lab::up(spec, |_| {});
    let up = started.elapsed();
    let checks = lab.check();
    assert_all_passed(&checks);
    assert!(checks.len() >= 45, "the matrix lost paths: {}", checks.len());
    let state = lab.vpc_api().expect("the VPC API runs with --vpc ucloud").state();
    let vpc = lab.vpc.as_ref().expect("the lab's VPC");
    let pod_nic = match mode {
        UplinkMode::HostRouted => "eth0",
        UplinkMode::Uplink => "up0",
    };
    let secondary: BTreeMap<String, BTreeSet<String>> = state["vpc"]["nics"]
        .as_array()
        .expect("the VPC's NICs")
        .iter()
        .map(|n| {
            let ips = n["secondary"].as_array().unwrap().iter().map(|ip| ip.as_str().unwrap().to_string()).collect();
            (n["mac"].as_str().unwrap().to_string(), ips)
        })
        .collect();
    for pod in &lab.pods {
        let nic = vpc.nics.iter().find(|n| n.node == pod.node && n.interface == pod_nic).expect("the pod's NIC");
        let ip = pod.ip4().to_string();
        let holders: Vec<&String> = secondary.iter().filter(|(_, ips)| ips.contains(&ip)).map(|(mac, _)| mac).collect();
        assert_eq!(
            holders,
            vec![&nic.mac],
            "{} ({ip}) on node{}: the VPC has it on {holders:?}",
            pod.name,
            pod.node + 1
        );
    }
    lab.delete_pods();
    eprintln!("{mode:?} on the ucloud VPC: up {up:?}, {} paths, total {:?}", checks.len(), started.elapsed());
}

#[test]
fn three_nodes_on_the_ucloud_vpc_host_routed() {
    three_nodes_on_the_ucloud_vpc(UplinkMode::HostRouted);
}

#[test]
fn three_nodes_on_the_ucloud_vpc_dedicated_uplink() {
    three_nodes_on_the_ucloud_vpc(UplinkMode::Uplink);
}

/// The ENIs of `enis` (moto's view, `LabEc2::enis`) that hold `ip` as a secondary address.
fn holders(enis: &[serde_json::Value], ip: Ipv4Addr) -> Vec<String> {
    let ip = ip.to_string();
    enis.iter()
        .filter(|e| e["secondary"].as_array().is_some_and(|a| a.iter().any(|x| x.as_str() == Some(ip.as_str()))))
        .map(|e| e["id"].as_str().unwrap_or_default().to_string())
        .collect()
}

/// Whether the SDN programmer's flow table has `ip` on fabric port `port`.
fn forwarded(state: &serde_json::Value, port: &str, ip: Ipv4Addr) -> bool {
    let addr = ip.to_string();
    state["flow_table"].as_array().is_some_and(|t| t.iter().any(|e| e["port"] == port && e["addr"] == addr.as_str()))
}

/// `--vpc aws`, one lab for everything: EC2 (moto behind the lab's proxy) holds one instance
/// per node, and the fabric's SDN is programmed from its `DescribeNetworkInterfaces`. Every path
/// for every node pair passes; the unregistered address is dropped by the SDN (its rows pass
/// only when nothing answers and the drop counters moved); each pod's address is on its node's
/// primary ENI in EC2 and nowhere else, and the SDN forwards it to that node's port; one ENI
/// per node held everything (nothing unplaced); the sticky pod moves to node2 through
/// `AssignPrivateIpAddresses` with `AllowReassignment` and the VM and another node's pod reach it
/// within 2 s of its ADD; an address assigned twice in moto (which does not refuse it) is
/// refused by the SDN: it stays with the node that had it; and past one ENI's worth, node3
/// gets a second ENI, hot-plugged by the lab's EC2 as `eth1`, brought up by vswitchd, and a pod
/// on one of its addresses is reached from the VM and from another node's pod, its packets
/// leaving node3 through `eth1` (its from-rule), its rules gone with its DEL.
#[test]
fn three_nodes_on_the_aws_vpc() {
    require_root();
    assert!(vpc_lab::ec2::have_moto(), "moto is not installed: run tests/install-deps.sh");
    let started = Instant::now();
    let spec = LabSpec { vpc: VpcMode::Aws, ipam: IpamMode::Vpc, nodes: 3, ..LabSpec::default() };
    let mut lab = Lab::up(spec, |_| {});
    let up = started.elapsed();
    let checks = lab.check();
    assert_all_passed(&checks);
    assert!(checks.len() >= 45, "the matrix lost paths: {}", checks.len());
    let unregistered = checks.iter().filter(|c| c.path.starts_with("unregistered address")).count();
    assert_eq!(unregistered, 3, "the unregistered address's rows");

    let ec2 = lab.ec2.clone().expect("EC2 runs with --vpc aws");
    let node_eni = |node: usize| ec2.host(&format!("node{}", node + 1)).eni.clone();
    let enis = ec2.enis();
    let state = ec2.sdn_state();
    for pod in &lab.pods {
        let ip = pod.ip4();
        assert_eq!(holders(&enis, ip), vec![node_eni(pod.node)], "{} ({ip}) in EC2", pod.name);
        assert!(forwarded(&state, &format!("fn{}", pod.node + 1), ip), "{} ({ip}) not forwarded: {state}", pod.name);
    }
    assert_eq!(state["unplaced"], serde_json::json!([]), "a second ENI was attached");

    let moved = lab.move_sticky();
    assert!(moved.ok(), "the sticky move: {:#?}", moved.checks);
    let (ip, to) = (moved.ip_before, moved.to_node);
    assert_eq!(holders(&ec2.enis(), ip), vec![node_eni(to)], "the sticky address in EC2 after the move");
    assert!(
        forwarded(&ec2.sdn_state(), &format!("fn{}", to + 1), ip),
        "the sticky address not forwarded to node{}",
        to + 1
    );

    // A duplicate: n1a's address also on node3's ENI, in moto itself (the proxy refuses it).
    let n1a = lab.pod("n1a").expect("n1a").ip4();
    ec2.assign_behind_the_proxy(&node_eni(2), n1a);
    let deadline = Instant::now() + Duration::from_secs(5);
    let state = loop {
        let state = ec2.sdn_state();
        if state["duplicates"].as_array().is_some_and(|d| !d.is_empty()) || Instant::now() > deadline {
            break state;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(state["duplicates"][0][0], n1a.to_string(), "the SDN saw no duplicate: {state}");
    assert!(forwarded(&state, "fn1", n1a) && !forwarded(&state, "fn3", n1a), "the duplicate was not refused: {state}");
    let vm = lab.vm.clone();
    lab.ping(&vm, n1a).unwrap_or_else(|e| panic!("the VM lost n1a to the duplicate: {e}"));

    // Past one ENI's worth on node3: the provider attaches a second ENI, the lab's EC2
    // hot-plugs its NIC into node3 (eth1, down, on a fabric port of its own), and vswitchd
    // brings it up and routes the pods of its addresses through it. ADDs go on (one may fail
    // with code 11 while the NIC is not up yet) until a pod has an address of the second ENI.
    // The pod on the second ENI is announced from eth1 only: a gratuitous ARP for it from eth0
    // (the first ENI, fabric port fn3) would be dropped by the SDN as spoofed.
    let node3 = ec2.host("node3").instance.clone().expect("an instance");
    let spoofed_from_eth0 = "arp_spoofed_request_fn3";
    let arp_spoofed = || ec2.sdn_state()["counters"][spoofed_from_eth0]["packets"].as_u64().expect("fn3's counter");
    let mut added = Vec::new();
    let mut spoofed_by_add = 0;
    let (second_ip, second_ns) = (0..vpc_lab::lab::aws::SECONDARY_PER_ENI + 20)
        .find_map(|k| {
            let ns = vpc_lab::netns::Netns::new(&format!("{}y{k}", lab.name));
            let container = format!("{}-y{k}", lab.name);
            let spoofed_before = arp_spoofed();
            match lab.cni("ADD", 2, &container, &ns.path(), &format!("y{k}")) {
                Ok(result) => {
                    // The announcements leave before the ADD's reply; give the fabric a moment.
                    std::thread::sleep(Duration::from_millis(200));
                    spoofed_by_add = arp_spoofed() - spoofed_before;
                    let ip: Ipv4Addr = result["ips"][0]["address"]
                        .as_str()
                        .and_then(|a| a.split('/').next())
                        .unwrap()
                        .parse()
                        .unwrap();
                    let on = holders(&ec2.enis(), ip);
                    assert_eq!(on.len(), 1, "y{k} ({ip}) in EC2: {on:?}");
                    let found = (on[0] != node_eni(2)).then(|| (ip, ns.name.clone()));
                    added.push((ns, container, k));
                    found
                }
                Err(e) => {
                    assert_eq!(e.code, 11, "{}", e.message);
                    assert!(e.message.contains("attached but not present"), "{}", e.message);
                    std::thread::sleep(Duration::from_millis(500));
                    None
                }
            }
        })
        .expect("no pod on node3 got an address of its second ENI");
    let node3_enis: Vec<String> = ec2
        .enis()
        .iter()
        .filter(|e| e["instance"] == node3.as_str())
        .map(|e| e["id"].as_str().unwrap().into())
        .collect();
    assert_eq!(node3_enis.len(), 2, "node3's ENIs: {node3_enis:?}");
    // The set keeps every sender fn3 claimed wrongly, since the lab came up: never this one.
    let claimed = lab.fabric().exec(&["nft", "list", "set", "bridge", vpc_lab::lab::sdn::TABLE, spoofed_from_eth0]);
    let claimed = String::from_utf8_lossy(&claimed.stdout).to_string();
    assert_eq!(
        spoofed_by_add, 0,
        "the ADD of {second_ip} (second ENI) sent spoofed ARP requests from node3's eth0: {claimed}"
    );
    let mut senders = claimed.split(|c: char| !(c.is_ascii_digit() || c == '.'));
    assert!(!senders.any(|s| s == second_ip.to_string()), "node3's eth0 announced {second_ip} (second ENI): {claimed}");
    let second_eni = holders(&ec2.enis(), second_ip).remove(0);
    let state = ec2.sdn_state();
    let plug = &state["plugged"][&second_eni];
    assert_eq!(plug["ifname"], "eth1", "the second ENI's NIC: {state}");
    assert!(forwarded(&state, plug["port"].as_str().unwrap(), second_ip), "{second_ip} not on its port: {state}");
    let node = lab.node_ns(2);
    let link = String::from_utf8_lossy(&node.ip(&["-o", "link", "show", "eth1"]).stdout).to_string();
    assert!(link.contains(plug["mac"].as_str().unwrap()) && link.contains("state UP"), "eth1 in node3: {link}");
    // Plugged with the driver's default MTU, raised to what eth0 (the VPC) carries.
    let mtu = |nic: &str| {
        let out = node.exec(&["cat", &format!("/sys/class/net/{nic}/mtu")]);
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    assert_eq!(mtu("eth1"), mtu("eth0"), "eth1, plugged at {HOTPLUG_MTU}, takes eth0's MTU");
    let rules = String::from_utf8_lossy(&node.ip(&["rule", "show"]).stdout).to_string();
    assert!(rules.contains(&format!("1536:\tfrom {second_ip} lookup 2")), "node3's rules: {rules}");
    // From the VM, from another node's pod and to it: the replies and requests of the pod on
    // the second ENI leave node3 through eth1 (what EC2 delivers: its source is that ENI's).
    let sent = |node: &vpc_lab::netns::Netns| {
        let out = node.exec(&["cat", "/sys/class/net/eth1/statistics/tx_packets"]);
        String::from_utf8_lossy(&out.stdout).trim().parse::<u64>().expect("tx_packets")
    };
    let before = sent(node);
    let n1a_ns = lab.pod("n1a").expect("n1a").netns.clone();
    lab.ping(&vm, second_ip).unwrap_or_else(|e| panic!("the VM to the pod on the second ENI: {e}"));
    lab.ping(&n1a_ns, second_ip).unwrap_or_else(|e| panic!("n1a to the pod on the second ENI: {e}"));
    lab.ping(&second_ns, n1a).unwrap_or_else(|e| panic!("the pod on the second ENI to n1a: {e}"));
    let through_eth1 = sent(node) - before;
    assert!(through_eth1 >= 6, "{through_eth1} packets left node3 through eth1 for 6 pings' replies and requests");
    eprintln!("node3's second ENI {second_eni}: pod {second_ip}, {through_eth1} packets out of eth1 for 6 pings");
    // Strict reverse-path filtering on eth1 keeps the pod reachable: the check's reverse route,
    // from the pod's address, is its from-rule's table, out of eth1 itself.
    let rp_filter = |conf: &str| format!("/proc/sys/net/ipv4/conf/{conf}/rp_filter");
    let saved: Vec<(String, String)> = ["all", "eth1"]
        .iter()
        .map(|c| (rp_filter(c), String::from_utf8_lossy(&node.exec(&["cat", &rp_filter(c)]).stdout).trim().into()))
        .collect();
    let set = |path: &str, value: &str| node.exec(&["sh", "-c", &format!("echo {value} > {path}")]);
    saved.iter().for_each(|(path, _)| assert!(set(path, "1").status.success(), "setting {path}"));
    let strict = lab.ping(&vm, second_ip);
    saved.iter().for_each(|(path, value)| assert!(set(path, value).status.success(), "restoring {path}"));
    strict.unwrap_or_else(|e| panic!("the VM to the pod on the second ENI with rp_filter = 1 on eth1: {e}"));
    // eth1 reset (a driver reset, the NIC plugged again): the next upkeep round sets it up
    // again, with its table's routes (the kernel dropped them with the link), and announces the
    // pods of its ENI from it afresh, counted at its fabric port.
    let (sdn_table, port) = (vpc_lab::lab::sdn::TABLE, plug["port"].as_str().unwrap());
    let announced = format!("test_announced_{port}");
    for script in [
        format!("add counter bridge {sdn_table} {announced}"),
        format!(
            "insert rule bridge {sdn_table} arp_in iifname \"{port}\" arp saddr ip {second_ip} arp daddr ip \
             {second_ip} counter name {announced}"
        ),
    ] {
        let out = lab.fabric().exec(&["nft", &script]);
        assert!(out.status.success(), "nft {script}: {}", String::from_utf8_lossy(&out.stderr));
    }
    let announcements = || {
        let counters = vpc_lab::lab::sdn::counters(&lab.fabric().name).expect("the SDN's counters");
        counters.get(&announced).map_or(0, |c| c.packets)
    };
    assert_eq!(announcements(), 0, "no announcement of {second_ip} since the counter was added");
    assert!(node.ip(&["link", "set", "eth1", "down"]).status.success());
    let deadline = Instant::now() + Duration::from_secs(5);
    while announcements() == 0 {
        if Instant::now() >= deadline {
            let link = String::from_utf8_lossy(&node.ip(&["-o", "link", "show", "eth1"]).stdout).to_string();
            panic!(
                "{second_ip} was not announced from eth1 after its reset; eth1: {link}\nnode3's vswitchd: {}",
                lab.daemon(2)
                    .logs()
                    .lines()
                    .filter(|l| ["ENI", "WARN", "ERROR", "announc"].iter().any(|n| l.contains(n)))
                    .collect::<Vec<_>>()
                    .join("\n")
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    lab.ping(&vm, second_ip).unwrap_or_else(|e| panic!("the VM to the pod on the second ENI after eth1's reset: {e}"));
    // A rule of ours for no pod here (a previous vswitchd's, say) goes at the next upkeep round.
    node.ip(&["rule", "add", "to", "10.10.250.250", "lookup", "main", "priority", "512"]);
    let deadline = Instant::now() + Duration::from_secs(5);
    while String::from_utf8_lossy(&node.ip(&["rule", "show"]).stdout).contains("10.10.250.250") {
        assert!(Instant::now() < deadline, "a stale pod rule was not removed");
        std::thread::sleep(Duration::from_millis(200));
    }
    for (ns, container, k) in added {
        let _ = lab.cni("DEL", 2, &container, &ns.path(), &format!("y{k}"));
    }
    let rules = String::from_utf8_lossy(&node.ip(&["rule", "show"]).stdout).to_string();
    assert!(!rules.contains(&format!("{second_ip} ")), "the pod's rules outlived its DEL: {rules}");
    lab.delete_pods();
    eprintln!("the aws VPC: up {up:?}, {} paths, total {:?}", checks.len(), started.elapsed());
}

/// vswitchd hands a new secondary IP out only once the fabric delivers it (its ARP probe from
/// the address to the VPC gateway is answered), not after a fixed wait: with the VPC's
/// flow-table push slowed to 3 s, an ADD on an empty pool takes about 3 s, the probe time it
/// records is about 3 s, and the VM's very first packet to the pod right after the ADD is
/// answered (one ping, one ARP: nothing lost to the SDN).
#[test]
fn an_add_on_an_empty_pool_answers_once_the_fabric_delivers_the_address() {
    require_root();
    let spec = LabSpec { vpc: VpcMode::Ucloud, ipam: IpamMode::Vpc, pods_per_node: 1, ..LabSpec::default() };
    let mut lab = Lab::up(spec, |_| {});
    lab.vpc_api().expect("the VPC API").set_faults(serde_json::json!({"push_delay_ms": 3000}));
    let probes = |lab: &Lab| lab.daemon(0).ctl_json(&["ipam"])["provider"]["fabric_probe"].clone();
    // Empty node1's warm pool: ADDs from it answer at once (its addresses were probed before
    // they joined it), and the refill it starts takes the 3 s push before they join.
    let warm = lab.daemon(0).ctl_json(&["ipam"])["provider"]["warm"].as_array().expect("warm pool").len();
    assert!(warm >= 1, "node1 filled its pool");
    for n in 0..warm {
        let started = Instant::now();
        let pod = lab.add_pod(0, &format!("w{n}"));
        assert!(
            started.elapsed() < Duration::from_millis(1500),
            "{} from the pool took {:?}",
            pod.name,
            started.elapsed()
        );
    }
    let before = probes(&lab)["probes"].as_u64().unwrap_or(0);
    let started = Instant::now();
    let pod = lab.add_pod(0, "fresh");
    let add = started.elapsed();
    let vm = lab.vm.clone();
    let first = Command::new("ip")
        .args(["netns", "exec", &vm, "ping", "-c", "1", "-W", "1", &pod.ip4().to_string()])
        .output()
        .unwrap();
    let probe = probes(&lab);
    eprintln!("ADD on an empty pool: {add:?}; fabric probe {probe}");
    assert!(first.status.success(), "the VM's first packet to {} right after its ADD was lost", pod.ip4());
    assert!(add >= Duration::from_millis(2500) && add < Duration::from_millis(6000), "ADD took {add:?}");
    assert!(probe["probes"].as_u64().unwrap() > before, "{probe}");
    let last_ms = probe["last_ms"].as_u64().unwrap();
    assert!((2500..4500).contains(&last_ms), "the probe time recorded: {last_ms} ms ({probe})");
    assert_eq!(probe["timeouts"], 0, "{probe}");
    lab.delete_pods();
}

/// `vpc-lab up`, `check` and `down` each in its own process, as a person runs them: the etcd
/// members outlive `up`, each `check` moves the sticky pod on (state kept in between), and
/// `down` removes every namespace, process and directory.
#[test]
fn up_check_and_down_in_separate_processes_leave_nothing_behind() {
    require_root();
    require_etcd();
    let tool = env!("CARGO_BIN_EXE_vpc-lab");
    let run = |args: &[&str]| {
        let out = Command::new(tool).args(args).output().expect("run vpc-lab");
        let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        (out.status.success(), text)
    };
    let (ok, text) = run(&["up", "--vpc", "l2", "--nodes", "2", "--ipam", "etcd"]);
    let name = text
        .lines()
        .find_map(|l| l.strip_prefix("lab ")?.split_whitespace().next())
        .unwrap_or_else(|| panic!("no lab name in: {text}"))
        .to_string();
    // Down also when an assertion fails.
    struct Down<'a>(&'a str, String);
    impl Drop for Down<'_> {
        fn drop(&mut self) {
            let _ = Command::new(self.0).args(["down", &self.1]).output();
        }
    }
    let guard = Down(tool, name.clone());
    assert!(ok, "vpc-lab up: {text}");
    assert!(text.contains("node node1 (live)") && text.contains("default/sticky-0"), "vswitchctl ipam: {text}");
    let state = LabState::load(&name).expect("the lab's state");
    let etcd = state.etcd.clone().expect("etcd in the state");
    assert_eq!(etcd.pids.len(), 3);
    let alive = |pid: u32| kill(Pid::from_raw(pid as i32), None).is_ok();
    assert!(etcd.pids.iter().all(|&p| alive(p)), "the etcd members died with `vpc-lab up`");

    // Two checks: the sticky pod goes to node2 and back to node1, each from a new process.
    for to in ["node2", "node1"] {
        let (ok, text) = run(&["check", &name, "--json"]);
        assert!(ok, "vpc-lab check: {text}");
        let checks: serde_json::Value = serde_json::from_str(&text).expect("check --json");
        let checks = checks.as_array().unwrap();
        let moved = checks.iter().find(|c| c["path"] == "sticky pod: same address, next node").expect("sticky row");
        assert_eq!(moved["to"], to, "{moved}");
        for c in checks.iter().filter(|c| c["path"].as_str().unwrap().starts_with("sticky pod moved")) {
            assert!(c["elapsed_ms"].as_f64().unwrap() < 1000.0, "{c}");
        }
        assert!(checks.iter().all(|c| c["ok"] == true), "{text}");
    }
    let state = LabState::load(&name).expect("the lab's state");
    let (ok, text) = run(&["down", &name]);
    assert!(ok, "vpc-lab down: {text}");
    std::mem::forget(guard);

    let deadline = Instant::now() + Duration::from_secs(5);
    while state.pids.iter().chain(&etcd.pids).any(|&p| alive(p)) {
        assert!(Instant::now() < deadline, "processes outlived `vpc-lab down`");
        std::thread::sleep(Duration::from_millis(50));
    }
    let namespaces = String::from_utf8_lossy(&Command::new("ip").args(["netns", "list"]).output().unwrap().stdout)
        .lines()
        .filter(|l| l.starts_with(&name))
        .map(str::to_string)
        .collect::<Vec<_>>();
    assert!(namespaces.is_empty(), "namespaces left: {namespaces:?}");
    assert!(!state.dir.exists() && !etcd.dir.exists(), "directories left");
    assert!(!LabState::list().contains(&name));
}
