//! A hostile pod, live: it sends well over 10,000 malformed and spoofed frames while two other
//! pods run traffic through the same vswitchd. The switch stays up, the pair's traffic goes on,
//! no hostile frame reaches anyone, and every drop is counted by reason. Needs root.

use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::Duration;

use vpc_lab::netns::{require_root, Binaries, Daemon, Netns, Pod, TempDir};
use vswitch::port::packet::PacketSocket;
use vswitch::port::{netns, PortQueue};
use vswitch::wire::vnet::{self, VnetHeader};

const MARKER: &[u8] = b"HOSTILE-FRAME";
const GW_MAC: [u8; 6] = [0x02, 0x00, 0xa9, 0xfe, 0x01, 0x01];

fn mac_of(pod: &Pod) -> [u8; 6] {
    pod.mac.parse::<vswitch::wire::MacAddr>().expect("mac").0
}

/// A raw socket on a pod's eth0 (frames with a vnet header in front), opened inside its
/// namespace. `capture` sockets see only what arrives at the pod.
fn raw_socket(pod: &Pod, capture: bool) -> Arc<PacketSocket> {
    let path = pod.ns.path();
    Arc::new(
        netns::run_in(Some(&path), || {
            let index = nix::net::if_::if_nametoindex("eth0").map_err(std::io::Error::from)?;
            if capture {
                PacketSocket::open_queue(index, (std::process::id() & 0x7fff) as u16 + index as u16)
            } else {
                PacketSocket::open_sender(index)
            }
        })
        .expect("raw socket in the pod"),
    )
}

fn checksum(header: &[u8]) -> u16 {
    let mut sum: u32 = header.chunks(2).map(|w| u32::from(u16::from_be_bytes([w[0], *w.get(1).unwrap_or(&0)]))).sum();
    while sum >> 16 != 0 {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// An IPv4 frame from `src_mac` to the gateway, carrying the marker; `mutate` breaks it.
fn ipv4_frame(
    src_mac: [u8; 6],
    src: Ipv4Addr,
    dst: Ipv4Addr,
    ttl: u8,
    payload: usize,
    mutate: impl FnOnce(&mut Vec<u8>),
) -> Vec<u8> {
    let mut f = vec![0u8; vnet::LEN];
    f.extend_from_slice(&GW_MAC);
    f.extend_from_slice(&src_mac);
    f.extend_from_slice(&[0x08, 0x00]);
    let total = 20 + 8 + MARKER.len() + payload;
    let mut ip = vec![0x45, 0, (total >> 8) as u8, total as u8, 0, 1, 0x40, 0, ttl, 17, 0, 0];
    ip.extend_from_slice(&src.octets());
    ip.extend_from_slice(&dst.octets());
    let c = checksum(&ip);
    ip[10..12].copy_from_slice(&c.to_be_bytes());
    f.extend_from_slice(&ip);
    f.extend_from_slice(&[0x30, 0x39, 0x30, 0x39, 0, (8 + MARKER.len() + payload) as u8, 0, 0]); // UDP, no checksum
    f.extend_from_slice(MARKER);
    f.extend(std::iter::repeat_n(0xaa, payload));
    mutate(&mut f);
    f
}

fn arp_frame(src_mac: [u8; 6], op: u8, sender_mac: [u8; 6], sender_ip: Ipv4Addr, target_ip: Ipv4Addr) -> Vec<u8> {
    let mut f = vec![0u8; vnet::LEN];
    f.extend_from_slice(&[0xff; 6]);
    f.extend_from_slice(&src_mac);
    f.extend_from_slice(&[0x08, 0x06, 0, 1, 0x08, 0, 6, 4, 0, op]);
    f.extend_from_slice(&sender_mac);
    f.extend_from_slice(&sender_ip.octets());
    f.extend_from_slice(&[0; 6]);
    f.extend_from_slice(&target_ip.octets());
    f.extend_from_slice(MARKER);
    f
}

/// Every frame that reached a capture socket, without its vnet header.
fn drain(socket: &PacketSocket) -> Vec<Vec<u8>> {
    let mut frames = Vec::new();
    let mut buf = vec![0u8; 70_000];
    while let Ok(n) = socket.recv(&mut buf) {
        frames.push(buf[vnet::LEN..n].to_vec());
    }
    frames
}

#[test]
fn a_hostile_pod_cannot_hurt_anyone() {
    require_root();
    let dir = TempDir::new();
    let node = Netns::new("vtn");
    let daemon = Daemon::start(
        &Binaries {
            vswitchd: env!("CARGO_BIN_EXE_vswitchd").into(),
            vswitchctl: env!("CARGO_BIN_EXE_vswitchctl").into(),
        },
        &node,
        &dir.0,
        2,
    );
    let (a, b, h) = (
        Pod::new(Ipv4Addr::new(10, 10, 60, 2)),
        Pod::new(Ipv4Addr::new(10, 10, 60, 3)),
        Pod::new(Ipv4Addr::new(10, 10, 60, 66)),
    );
    for (name, pod) in [("pod-a", &a), ("pod-b", &b), ("hostile", &h)] {
        daemon.attach(name, pod);
    }
    // Let the hostile pod put frames of any size on its wire.
    h.ns.ip(&["link", "set", "eth0", "mtu", "9000"]);
    let capture_a = raw_socket(&a, true);
    let capture_b = raw_socket(&b, true);
    assert!(a.ping(&b.ip.to_string(), 2));
    drain(&capture_a);
    drain(&capture_b);

    let hm = mac_of(&h);
    let (am, bm) = (mac_of(&a), mac_of(&b));
    let other = Ipv4Addr::new(10, 10, 60, 99);
    let kinds: Vec<(&str, Vec<u8>)> = vec![
        ("truncated ethernet", {
            let mut f = vec![0u8; vnet::LEN];
            f.extend_from_slice(&GW_MAC[..]);
            f.extend_from_slice(&hm[..4]);
            f
        }),
        ("truncated ipv4", ipv4_frame(hm, h.ip, b.ip, 64, 0, |f| f.truncate(vnet::LEN + 14 + 12))),
        ("header length 3", ipv4_frame(hm, h.ip, b.ip, 64, 0, |f| f[vnet::LEN + 14] = 0x43)),
        ("header length 15", ipv4_frame(hm, h.ip, b.ip, 64, 0, |f| f[vnet::LEN + 14] = 0x4f)),
        ("total length too big", ipv4_frame(hm, h.ip, b.ip, 64, 0, |f| f[vnet::LEN + 16] = 0x7f)),
        (
            "total length too small",
            ipv4_frame(hm, h.ip, b.ip, 64, 0, |f| {
                f[vnet::LEN + 16] = 0;
                f[vnet::LEN + 17] = 10
            }),
        ),
        ("bad checksum", ipv4_frame(hm, h.ip, b.ip, 64, 0, |f| f[vnet::LEN + 24] ^= 0x55)),
        ("ttl 0", ipv4_frame(hm, h.ip, b.ip, 0, 0, |_| {})),
        ("ttl 1", ipv4_frame(hm, h.ip, b.ip, 1, 0, |_| {})),
        ("forged source ip", ipv4_frame(hm, other, b.ip, 64, 0, |_| {})),
        ("forged source ip of a pod", ipv4_frame(hm, a.ip, b.ip, 64, 0, |_| {})),
        ("forged source mac", ipv4_frame(am, h.ip, b.ip, 64, 0, |_| {})),
        ("arp reply claiming pod-a", arp_frame(hm, 2, hm, a.ip, b.ip)),
        ("arp reply (pods are never asked)", arp_frame(hm, 2, hm, h.ip, b.ip)),
        ("arp request as pod-a", arp_frame(hm, 1, hm, a.ip, b.ip)),
        ("arp with forged sender mac", arp_frame(hm, 1, bm, h.ip, b.ip)),
        ("oversized with DF", ipv4_frame(hm, h.ip, b.ip, 64, 6000, |_| {})),
        (
            "vlan tagged",
            ipv4_frame(hm, h.ip, b.ip, 64, 0, |f| {
                f.splice(vnet::LEN + 12..vnet::LEN + 12, [0x81, 0x00, 0x00, 0x05]);
            }),
        ),
        ("not to the gateway", ipv4_frame(hm, h.ip, b.ip, 64, 0, |f| f[vnet::LEN..vnet::LEN + 6].copy_from_slice(&bm))),
        (
            "ipv6 ethertype",
            ipv4_frame(hm, h.ip, b.ip, 64, 0, |f| f[vnet::LEN + 12..vnet::LEN + 14].copy_from_slice(&[0x86, 0xdd])),
        ),
    ];
    // Bad virtio_net_hdr: the kernel itself refuses these at the socket, which is worth knowing.
    let bad_vnet = {
        let mut f = ipv4_frame(hm, h.ip, b.ip, 64, 0, |_| {});
        VnetHeader { flags: 1, gso_type: 1, hdr_len: 9000, gso_size: 0, csum_start: 4000, csum_offset: 3000 }
            .write(&mut f[..vnet::LEN]);
        f
    };

    let hostile = raw_socket(&h, false);
    let sender = {
        let hostile = hostile.clone();
        let kinds = kinds.clone();
        std::thread::spawn(move || {
            let (mut sent, mut refused) = (0usize, 0usize);
            for round in 0..700 {
                for (_, frame) in &kinds {
                    match hostile.send(frame) {
                        Ok(()) => sent += 1,
                        Err(_) => refused += 1,
                    }
                }
                refused += hostile.send(&bad_vnet).is_err() as usize;
                if round % 50 == 0 {
                    std::thread::sleep(Duration::from_millis(5));
                }
            }
            (sent, refused)
        })
    };
    // Meanwhile the pair runs traffic: pings must all come back, iperf3 must finish.
    let ping = a.ns.exec(&["ping", "-c", "30", "-i", "0.05", "-W", "1", &b.ip.to_string()]);
    let mut server = b.ns.spawn(&["iperf3", "-s", "-1", "-p", "5201"]);
    std::thread::sleep(Duration::from_millis(200));
    let iperf = a.ns.exec(&["iperf3", "-c", &b.ip.to_string(), "-p", "5201", "-t", "2", "-J"]);
    let _ = server.kill();
    let _ = server.wait();
    let (sent, refused) = sender.join().expect("sender");
    eprintln!("hostile pod: {sent} frames sent, {refused} refused by its own kernel");
    assert!(sent >= 10_000, "only {sent} hostile frames got onto the wire");
    assert!(ping.status.success(), "the pair lost pings during the attack:\n{}", String::from_utf8_lossy(&ping.stdout));
    let report: serde_json::Value = serde_json::from_slice(&iperf.stdout).expect("iperf3 JSON");
    let gbps = report["end"]["sum_received"]["bits_per_second"].as_f64().unwrap_or(0.0) / 1e9;
    eprintln!("pair iperf3 during the attack: {gbps:.2} Gbit/s");
    assert!(gbps > 0.2, "the pair's throughput collapsed: {gbps:.2} Gbit/s");

    // Nothing hostile reached the pair.
    std::thread::sleep(Duration::from_millis(200));
    for (who, capture) in [("pod-a", &capture_a), ("pod-b", &capture_b)] {
        let leaked = drain(capture).into_iter().filter(|f| f.windows(MARKER.len()).any(|w| w == MARKER)).count();
        assert_eq!(leaked, 0, "{leaked} hostile frames reached {who}");
    }

    // The switch is up and counted every drop by reason. (Frames shorter than an Ethernet
    // header and bad virtio_net_hdrs never reach it: the pod's own kernel refuses to send them.)
    assert!(daemon.ctl(&["status"]).status.success(), "vswitchd is gone");
    let hostile_rx = daemon.port_counters("hostile")["rx_packets"].as_u64().unwrap();
    assert!(hostile_rx >= 10_000, "vswitchd saw {hostile_rx} frames from the hostile pod");
    for reason in [
        "ipv4_truncated",
        "ipv4_bad_header_length",
        "ipv4_bad_total_length",
        "ipv4_bad_checksum",
        "ttl_expired",
        "spoofed_source_ip",
        "spoofed_source_mac",
        "arp_reply_from_pod",
        "arp_spoofed",
        "fragmentation_needed",
        "icmp_rate_limited",
        "vlan_tagged",
        "not_our_mac",
        "unsupported_ethertype",
    ] {
        let n = daemon.drops(reason);
        assert!(n > 0, "no drops counted as {reason}: {}", daemon.ctl_json(&["counters"]));
    }
    // Every hostile frame that reached the switch was dropped (the pair's own traffic was not).
    let c = daemon.ctl_json(&["counters"]);
    let dropped: u64 = c["drops"].as_array().unwrap().iter().map(|d| d[1].as_u64().unwrap()).sum();
    let sent_to_others = daemon.port_counters("pod-a")["tx_packets"].as_u64().unwrap()
        + daemon.port_counters("pod-b")["tx_packets"].as_u64().unwrap();
    eprintln!("switch: {hostile_rx} frames from the hostile pod, {dropped} drops in all, {sent_to_others} frames delivered to the pair");
    assert!(
        dropped + 50 >= hostile_rx,
        "some hostile frames were not dropped: {dropped} drops for {hostile_rx} frames"
    );
    drop(daemon);
    let _ = (&node, &dir);
}
