//! The dedicated-uplink mode end to end: the node's vswitchd owns a NIC (a veth) on the VPC
//! fabric (a Linux bridge in its own namespace) where a VM lives. The VM reaches pods by ARPing
//! for their addresses, which the switch answers; pods reach the VM after the switch resolves
//! it with ARP itself. Needs root, like every namespace test.


use std::net::Ipv4Addr;

use vpc_lab::netns::{require_root, Binaries, Daemon, Netns, Pod, TempDir};

#[test]
fn pods_and_a_vpc_host_reach_each_other_over_the_uplink() {
    require_root();
    let dir = TempDir::new();
    let fabric = Netns::new("vtf");
    fabric.ip(&["link", "add", "br0", "type", "bridge"]);
    fabric.ip(&["link", "set", "br0", "up"]);
    let node = Netns::new("vtn");
    let vm = Netns::new("vtv");
    // Node NIC and VM NIC, each a veth whose other end is a bridge port in the fabric.
    for (ns, inside, outside) in [(&node, "up0", "fnode"), (&vm, "eth0", "fvm")] {
        ns.ip(&["link", "add", inside, "type", "veth", "peer", "name", outside, "netns", &fabric.name]);
        fabric.ip(&["link", "set", outside, "master", "br0", "up"]);
    }
    vm.ip(&["addr", "add", "10.10.0.50/16", "dev", "eth0"]);
    vm.ip(&["link", "set", "eth0", "up"]);

    let config = r#"
        host_port = { default_route = false, routes = ["10.10.0.5/32"] }
        [uplink]
        interface = "up0"
        subnet = "10.10.0.0/16"
    "#;
    let daemon = Daemon::start_with_config(&bins(), &node, &dir.0, 2, config);
    let pod = Pod::new(Ipv4Addr::new(10, 10, 40, 2));
    daemon.attach("pod-a", &pod);

    // VM to pod first: the VM ARPs for the pod's address on the fabric; the switch answers.
    let out = vm.exec(&["ping", "-c", "3", "-i", "0.2", "-W", "1", "10.10.40.2"]);
    assert!(out.status.success(), "VM to pod: {}", String::from_utf8_lossy(&out.stdout));
    // Pod to VM: the switch resolves the VM with ARP and sends the waiting packet.
    vm.ip(&["neigh", "flush", "dev", "eth0"]);
    assert!(pod.ping("10.10.0.50", 3), "pod to VM over the uplink");

    let neighbors = daemon.ctl_json(&["neighbors"]);
    let vm_entry = neighbors["result"].as_array().unwrap().iter().find(|n| n["ip"] == "10.10.0.50").cloned();
    let vm_mac = String::from_utf8_lossy(&vm.exec(&["cat", "/sys/class/net/eth0/address"]).stdout).trim().to_string();
    assert_eq!(vm_entry.as_ref().map(|e| e["mac"].clone()), Some(serde_json::json!(vm_mac)), "{neighbors}");
    assert_eq!(vm_entry.unwrap()["state"], "reachable");

    // The VM holds the pod's own address, at the uplink's MAC.
    let arp = String::from_utf8_lossy(&vm.exec(&["ip", "neigh", "show", "10.10.40.2"]).stdout).to_string();
    let up0_mac = String::from_utf8_lossy(&node.exec(&["cat", "/sys/class/net/up0/address"]).stdout).trim().to_string();
    assert!(arp.contains(&up0_mac), "the VM reaches the pod through the uplink's MAC: {arp}");

    // An address nobody has: the switch gives up after its retries and counts the drops.
    assert!(!pod.ping("10.10.0.99", 1));
    std::thread::sleep(std::time::Duration::from_secs(4));
    assert!(daemon.drops("neighbor_unresolved") >= 1, "{}", daemon.ctl_json(&["counters"]));
    let _keep = (&fabric, &node);
}

fn bins() -> Binaries {
    Binaries { vswitchd: env!("CARGO_BIN_EXE_vswitchd").into(), vswitchctl: env!("CARGO_BIN_EXE_vswitchctl").into() }
}
