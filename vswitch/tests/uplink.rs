//! The dedicated-uplink mode end to end: the node's vswitchd owns a NIC (a veth) on the VPC
//! fabric (a Linux bridge in its own namespace) where a VM lives. The VM reaches pods by ARPing
//! for their addresses, which the switch answers; pods reach the VM after the switch resolves
//! it with ARP itself; the same over IPv6 with neighbour discovery. Needs root, like every
//! namespace test.

use std::net::{Ipv4Addr, Ipv6Addr};

use vpc_lab::netns::{require_root, Binaries, Daemon, Netns, Pod, TempDir};

#[test]
fn pods_and_a_vpc_host_reach_each_other_over_the_uplink() {
    let lab = uplink_fabric(2);
    let (node, vm, fabric) = (&lab.node, &lab.vm, &lab.fabric);
    let daemon = &lab.daemon;
    let pod = Pod::new(Ipv4Addr::new(10, 10, 40, 2));
    daemon.attach("pod-a", &pod);

    // VM to pod first: the VM ARPs for the pod's address on the fabric; the switch answers.
    let out = vm.exec(&["ping", "-c", "3", "-i", "0.2", "-W", "1", "10.10.40.2"]);
    assert!(out.status.success(), "VM to pod: {}", String::from_utf8_lossy(&out.stdout));
    // Pod to VM: the switch resolves the VM with ARP and sends the waiting packet.
    vm.ip(&["neigh", "flush", "dev", "eth0"]);
    assert!(pod.ping("10.10.0.50", 3), "pod to VM over the uplink");

    let neighbors = daemon.ctl_json(&["neighbors"]);
    let vm_entry = neighbors.as_array().unwrap().iter().find(|n| n["ip"] == "10.10.0.50").cloned();
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

    // A burst the switch cannot read (stopped) overflows the uplink socket; once it runs again
    // it reports what the kernel dropped under rx_overflow.
    let pid = nix::unistd::Pid::from_raw(daemon.child.as_ref().unwrap().id() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGSTOP).unwrap();
    let vm_nic = vm.ifindex("eth0");
    let sender =
        vswitch::port::netns::run_in(Some(&vm.path()), || vswitch::port::packet::PacketSocket::open_sender(vm_nic))
            .unwrap();
    send_frames(&sender, 30_000);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGCONT).unwrap();
    std::thread::sleep(std::time::Duration::from_millis(1500));
    assert!(daemon.drops("rx_overflow") > 0, "{}", daemon.ctl_json(&["counters"]));
    let _keep = (&fabric, &node);
}

#[test]
fn a_neighbour_that_announces_a_new_mac_is_followed_at_once() {
    let lab = uplink_fabric(1);
    let (vm, daemon) = (&lab.vm, &lab.daemon);
    let pod = Pod::new(Ipv4Addr::new(10, 10, 40, 3));
    daemon.attach("pod-g", &pod);
    assert!(pod.ping("10.10.0.50", 2), "pod to VM over the uplink");
    let mac_of_vm = |daemon: &Daemon| {
        let neighbors = daemon.ctl_json(&["neighbors"]);
        neighbors.as_array().unwrap().iter().find(|n| n["ip"] == "10.10.0.50").map(|n| n["mac"].clone())
    };
    let old = mac_of_vm(daemon);
    // The address moves to another MAC (a sticky pod re-created on another node, a replaced NIC,
    // a failed-over VIP) and is announced with a gratuitous ARP: the kernel sends one when the
    // MAC changes with arp_notify on. The switch's entry is still fresh (re-confirmed only after
    // 60 s), so only the announcement can move it.
    let new = "02:00:00:00:50:99";
    assert_ne!(old, Some(serde_json::json!(new)));
    let out = vm.exec(&["sysctl", "-qw", "net.ipv4.conf.eth0.arp_notify=1"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    vm.ip(&["link", "set", "eth0", "address", new]);
    let start = std::time::Instant::now();
    while mac_of_vm(daemon) != Some(serde_json::json!(new)) {
        assert!(start.elapsed() < std::time::Duration::from_secs(2), "still {:?}", mac_of_vm(daemon));
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    eprintln!("the switch followed the announcement after {:?}", start.elapsed());
    assert!(pod.ping("10.10.0.50", 2), "pod to the VM at its new MAC");
    let _keep = (&lab.fabric, &lab.node);
}

#[test]
fn pods_and_a_vpc_host_reach_each_other_over_the_uplink_with_ipv6() {
    let lab = uplink_fabric(2);
    let (node, vm, daemon) = (&lab.node, &lab.vm, &lab.daemon);
    let pod6 = Ipv6Addr::new(0xfd00, 0x10, 0, 0, 0, 0, 40, 2);
    let pod = Pod::new(Ipv4Addr::new(10, 10, 40, 4)).with_ipv6(pod6);
    // The VM still has the address at the MAC of the node the pod lived on before (a sticky pod
    // that moved): the unsolicited advertisement sent when the pod attaches here corrects it.
    vm.ip(&["-6", "neigh", "replace", &pod6.to_string(), "lladdr", "02:00:00:00:0b:ad", "dev", "eth0", "nud", "stale"]);
    daemon.attach("pod-6", &pod);
    let up0_mac = String::from_utf8_lossy(&node.exec(&["cat", "/sys/class/net/up0/address"]).stdout).trim().to_string();
    let vm_entry =
        || String::from_utf8_lossy(&vm.exec(&["ip", "-6", "neigh", "show", &pod6.to_string()]).stdout).to_string();
    let start = std::time::Instant::now();
    while !vm_entry().contains(&up0_mac) {
        assert!(start.elapsed() < std::time::Duration::from_secs(2), "the VM still has {}", vm_entry());
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    // VM to pod: the VM's neighbour solicitations for the pod's address are answered by the
    // switch with the uplink's MAC.
    let out = vm.exec(&["ping", "-c", "3", "-i", "0.2", "-W", "1", &pod6.to_string()]);
    assert!(out.status.success(), "VM to pod over IPv6: {}", String::from_utf8_lossy(&out.stdout));
    let entry = vm_entry();
    assert!(entry.contains(&up0_mac), "the VM reaches the pod through the uplink's MAC: {entry}");
    // Pod to VM: the switch resolves the VM with a neighbour solicitation of its own.
    vm.ip(&["-6", "neigh", "flush", "dev", "eth0"]);
    assert!(pod.ping("fd00:10::50", 3), "pod to VM over the uplink, IPv6");
    let neighbors = daemon.ctl_json(&["neighbors"]);
    let vm_entry = neighbors.as_array().unwrap().iter().find(|n| n["ip"] == "fd00:10::50").cloned();
    let vm_mac = String::from_utf8_lossy(&vm.exec(&["cat", "/sys/class/net/eth0/address"]).stdout).trim().to_string();
    assert_eq!(vm_entry.as_ref().map(|e| e["mac"].clone()), Some(serde_json::json!(vm_mac)), "{neighbors}");
    let routes = daemon.ctl_json(&["routes"]);
    assert!(
        routes.as_array().unwrap().iter().any(|r| r["prefix"] == "fd00:10::/64" && r["next_hop"] == "ndp"),
        "{routes}"
    );
    // An IPv6 address nobody has: given up after the retries, counted.
    let before = daemon.drops("neighbor_unresolved");
    assert!(!pod.ping("fd00:10::99", 1));
    std::thread::sleep(std::time::Duration::from_secs(4));
    assert!(daemon.drops("neighbor_unresolved") > before, "{}", daemon.ctl_json(&["counters"]));
    let _keep = &lab.fabric;
}

/// A VPC fabric (a bridge in its own namespace), a node whose vswitchd owns the NIC `up0` on it
/// (the dedicated-uplink mode, on both VPC subnets), and a VM (10.10.0.50, fd00:10::50) on it.
/// Fields drop in order: the daemon before the namespaces it uses.
struct UplinkFabric {
    daemon: Daemon,
    node: Netns,
    vm: Netns,
    fabric: Netns,
    _dir: TempDir,
}

fn uplink_fabric(workers: usize) -> UplinkFabric {
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
    vm.ip(&["-6", "addr", "add", "fd00:10::50/64", "dev", "eth0", "nodad"]);
    vm.ip(&["link", "set", "eth0", "up"]);
    let config = r#"
        host_port = { default_route = false, routes = ["10.10.0.5/32"] }
        [uplink]
        interface = "up0"
        subnet = "10.10.0.0/16"
        subnet6 = "fd00:10::/64"
        address6 = "fd00:10::7"
    "#;
    let daemon = Daemon::start_with_config(&bins(), &node, &dir.0, workers, config);
    UplinkFabric { daemon, node, vm, fabric, _dir: dir }
}

fn bins() -> Binaries {
    Binaries { vswitchd: env!("CARGO_BIN_EXE_vswitchd").into(), vswitchctl: env!("CARGO_BIN_EXE_vswitchctl").into() }
}

#[test]
fn the_uplink_socket_reports_what_the_kernel_dropped() {
    use vswitch::port::netns::run_in;
    use vswitch::port::packet::PacketSocket;
    use vswitch::port::PortQueue;

    require_root();
    let ns = Netns::new("vtk");
    ns.ip(&["link", "add", "nic", "type", "veth", "peer", "name", "wire"]);
    for dev in ["nic", "wire"] {
        ns.ip(&["link", "set", dev, "up"]);
    }
    let (nic, wire) = (ns.ifindex("nic"), ns.ifindex("wire"));
    let (uplink, sender) =
        run_in(Some(&ns.path()), || Ok((PacketSocket::open_queue(nic, 7)?, PacketSocket::open_sender(wire)?))).unwrap();
    // Into the uplink, which nobody reads, more than its 16 MiB receive buffer holds.
    let sent = 30_000;
    let frame = send_frames(&sender, sent);
    let dropped = uplink.take_kernel_drops();
    assert!(dropped > 0 && dropped < sent, "kernel drops {dropped} of {sent}");
    assert_eq!(uplink.take_kernel_drops(), 0, "the count starts again once read");
    // What was not dropped waits to be read, whole.
    let mut buf = vec![0u8; 65_536];
    assert_eq!(uplink.recv(&mut buf).unwrap(), frame.len());
}

/// Sends `count` full-size broadcast frames of a local experimental EtherType from a locally
/// administered MAC (a zero vnet header: no offloads), 45 MB for 30,000; returns the frame.
fn send_frames(sender: &vswitch::port::packet::PacketSocket, count: u64) -> Vec<u8> {
    use vswitch::port::PortQueue;
    use vswitch::wire::vnet;
    let mut frame = vec![0u8; vnet::LEN + 1514];
    frame[vnet::LEN..vnet::LEN + 6].fill(0xff);
    frame[vnet::LEN + 6..vnet::LEN + 12].copy_from_slice(&[0x02, 0, 0, 0, 0xb5, 0x01]); // a bridge drops a zero source
    frame[vnet::LEN + 12..vnet::LEN + 14].copy_from_slice(&[0x88, 0xb5]);
    let mut sent = 0;
    while sent < count {
        match sender.send(&frame) {
            Ok(()) => sent += 1,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => std::thread::yield_now(),
            Err(e) => panic!("send: {e}"),
        }
    }
    frame
}

/// Attaching pods (namespace threads, netlink round trips, state file syncs) must not stall the
/// slow path or /metrics: 100 pods attach while a VPC host floods the uplink with ARP replies
/// (each goes to the control plane); no reply may be lost to a full slow-path queue, and every
/// scrape answers within 100 ms.
#[test]
fn attaching_pods_stalls_neither_arp_handling_nor_metrics() {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::time::{Duration, Instant};
    use vswitch::port::PortQueue;
    use vswitch::wire::vnet;

    let lab = uplink_fabric(1);
    let (daemon, node, vm, fabric) = (&lab.daemon, &lab.node, &lab.vm, &lab.fabric);
    let pods: Vec<Pod> = (0..100).map(|i| Pod::new(Ipv4Addr::new(10, 10, 60 + i / 200, 2 + i % 200))).collect();

    // Unsolicited ARP replies from a host the switch never asked about: each one reaches the
    // control plane, which learns nothing from it (so the load is the slow path itself).
    let vm_nic = vm.ifindex("eth0");
    let sender =
        vswitch::port::netns::run_in(Some(&vm.path()), || vswitch::port::packet::PacketSocket::open_sender(vm_nic))
            .unwrap();
    let mut frame = vec![0u8; vnet::LEN + 42];
    let f = &mut frame[vnet::LEN..];
    f[0..6].fill(0xff);
    f[6..12].copy_from_slice(&[0x02, 0, 0x0a, 0x0a, 0, 0x4d]);
    f[12..14].copy_from_slice(&[0x08, 0x06]);
    f[14..22].copy_from_slice(&[0, 1, 0x08, 0, 6, 4, 0, 2]);
    f[22..28].copy_from_slice(&[0x02, 0, 0x0a, 0x0a, 0, 0x4d]);
    f[28..32].copy_from_slice(&[10, 10, 0, 77]);
    f[38..42].copy_from_slice(&[10, 10, 0, 5]);
    let stop = AtomicBool::new(false);
    let slowest_scrape = std::thread::scope(|s| {
        // About 10,000 replies a second in bursts of 100, for as long as the attaches take (at most 60 s).
        let flood = s.spawn(|| {
            let started = Instant::now();
            let mut sent = 0u64;
            while !stop.load(Ordering::Relaxed) && started.elapsed() < Duration::from_secs(60) {
                for _ in 0..100 {
                    if sender.send(&frame).is_ok() {
                        sent += 1;
                    }
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            sent
        });
        // One thread in the node's namespace scrapes every 20 ms and keeps the slowest answer.
        let scraper = s.spawn(|| {
            vswitch::port::netns::run_in(Some(&node.path()), || {
                use std::io::{Read, Write};
                let mut slowest = Duration::ZERO;
                while !stop.load(Ordering::Relaxed) {
                    let start = Instant::now();
                    let mut c = std::net::TcpStream::connect("127.0.0.1:9477")?;
                    c.write_all(b"GET /metrics HTTP/1.1\r\n\r\n")?;
                    let mut body = String::new();
                    c.read_to_string(&mut body)?;
                    assert!(body.contains("vswitch_ports "), "{body}");
                    slowest = slowest.max(start.elapsed());
                    std::thread::sleep(Duration::from_millis(20));
                }
                Ok(slowest)
            })
            .unwrap()
        });
        for (i, pod) in pods.iter().enumerate() {
            daemon.attach(&format!("pod-{i}"), pod);
        }
        stop.store(true, Ordering::Relaxed);
        let sent = flood.join().unwrap();
        assert!(sent > 1_000, "the flood sent only {sent} frames");
        scraper.join().unwrap()
    });
    assert_eq!(daemon.ctl_json(&["ports"]).as_array().unwrap().len(), 102);
    assert_eq!(daemon.drops("slow_path_full"), 0, "{}", daemon.ctl_json(&["counters"]));
    assert!(slowest_scrape < Duration::from_millis(100), "a scrape took {slowest_scrape:?}");
    eprintln!("slowest /metrics during 100 attaches: {slowest_scrape:?}");
    let _keep = (&fabric, &vm);
}

/// Pings sent 10 ms apart in each direction an upgrade is checked on; at most 0.5% may be lost.
const UPGRADE_PINGS: u32 = 400;
const UPGRADES: usize = 10;

/// `vswitchd --upgrade` in uplink mode, again and again (issue 24): each upgrade happens under
/// 10 ms pings from a pod to the VM across the uplink and from that pod to another, and loses at
/// most 0.5% of either. The first upgrade after start is checked like the others.
#[test]
fn repeated_upgrades_in_uplink_mode_lose_at_most_half_a_percent_of_pings() {
    let mut lab = uplink_fabric(2);
    let a = Pod::new(Ipv4Addr::new(10, 10, 40, 2));
    let b = Pod::new(Ipv4Addr::new(10, 10, 40, 3));
    lab.daemon.attach("pod-a", &a);
    lab.daemon.attach("pod-b", &b);
    let allowed = UPGRADE_PINGS / 200;
    let mut losses = Vec::new();
    for round in 1..=UPGRADES {
        let old_pid = lab.daemon.child.as_ref().unwrap().id();
        let count = UPGRADE_PINGS.to_string();
        let ping = |to: &str| a.ns.spawn(&["ping", "-i", "0.01", "-c", &count, "-W", "1", to]);
        let (to_vm, to_pod) = (ping("10.10.0.50"), ping(&b.ip.to_string()));
        std::thread::sleep(std::time::Duration::from_secs(1));
        lab.daemon.upgrade(&lab.node, 2);
        assert_ne!(lab.daemon.child.as_ref().unwrap().id(), old_pid, "upgrade {round}: still the old vswitchd");
        let lost_vm = UPGRADE_PINGS - received(to_vm);
        let lost_pod = UPGRADE_PINGS - received(to_pod);
        eprintln!("upgrade {round}: pod to VM lost {lost_vm} of {UPGRADE_PINGS}, pod to pod lost {lost_pod}");
        losses.push((round, lost_vm, lost_pod));
    }
    let over: Vec<_> = losses.iter().filter(|(_, vm, pod)| *vm > allowed || *pod > allowed).collect();
    assert!(over.is_empty(), "upgrades losing more than {allowed} of {UPGRADE_PINGS} (round, to VM, to pod): {over:?}");
    let _keep = (&lab.fabric, &lab.vm);
}

/// The replies a finished `ping` reports received.
fn received(ping: std::process::Child) -> u32 {
    let out = ping.wait_with_output().unwrap();
    let summary = String::from_utf8_lossy(&out.stdout).to_string();
    let line = summary.lines().find(|l| l.contains("packets transmitted"));
    let count = line.and_then(|l| l.split(", ").nth(1)).and_then(|r| r.split_whitespace().next());
    count.and_then(|n| n.parse().ok()).unwrap_or_else(|| panic!("no ping summary: {summary}"))
}
