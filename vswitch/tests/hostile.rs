//! A hostile pod, live: it sends well over 10,000 malformed and spoofed frames, IPv4 and IPv6,
//! while two other dual-stack pods run traffic through the same vswitchd. The switch stays up,
//! the pair's traffic goes on, no hostile frame reaches anyone, and every drop is counted by
//! reason. Then what a router forwards on purpose ([`hardening`]): padded packets cut to their
//! IP length, fragments whose overlap only the receiving pod can see. Needs root.

use std::net::{Ipv4Addr, Ipv6Addr};
use std::sync::Arc;
use std::time::Duration;

use vpc_lab::netns::{require_root, Binaries, Daemon, Netns, Pod, TempDir};
use vswitch::port::packet::PacketSocket;
use vswitch::port::{netns, PortQueue};
use vswitch::wire::vnet::{self, VnetHeader};

#[path = "hostile/hardening.rs"]
mod hardening;

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

/// An IPv4 UDP frame from `src_mac` to the gateway (DF set), carrying the marker; `mutate`
/// breaks it.
fn ipv4_frame(
    src_mac: [u8; 6],
    src: Ipv4Addr,
    dst: Ipv4Addr,
    ttl: u8,
    payload: usize,
    mutate: impl FnOnce(&mut Vec<u8>),
) -> Vec<u8> {
    let mut udp = vec![0x30, 0x39, 0x30, 0x39, 0, (8 + MARKER.len() + payload) as u8, 0, 0]; // no checksum
    udp.extend_from_slice(MARKER);
    udp.extend(std::iter::repeat_n(0xaa, payload));
    let mut f = hardening::ipv4_packet(src_mac, (src, dst, ttl), (17, 0x4000, 1), &udp);
    mutate(&mut f);
    f
}

/// MACs (source, destination) and IPv6 source, destination and hop limit.
type Addressing = (([u8; 6], [u8; 6]), (Ipv6Addr, Ipv6Addr, u8));

/// An IPv6 frame from `src_mac` to `dst_mac`: `headers` (extension headers, each `(protocol,
/// bytes)`, in order) then `upper` (its protocol and bytes; for ICMPv6 the checksum is filled),
/// then the marker. `mutate` breaks it.
fn ipv6_frame(
    ((src_mac, dst_mac), (src, dst, hop)): Addressing,
    headers: &[(u8, Vec<u8>)],
    (protocol, upper): (u8, Vec<u8>),
    mutate: impl FnOnce(&mut Vec<u8>),
) -> Vec<u8> {
    let mut upper = upper;
    if protocol == 58 {
        let mut pseudo = [src.octets(), dst.octets()].concat();
        pseudo.extend_from_slice(&(upper.len() as u32).to_be_bytes());
        pseudo.extend_from_slice(&[0, 0, 0, 58]);
        upper[2..4].fill(0);
        pseudo.extend_from_slice(&upper);
        let c = checksum(&pseudo);
        upper[2..4].copy_from_slice(&c.to_be_bytes());
    }
    let mut payload = Vec::new();
    let protocols: Vec<u8> = headers.iter().map(|h| h.0).chain([protocol]).collect();
    for (i, (_, bytes)) in headers.iter().enumerate() {
        let mut header = bytes.clone();
        header[0] = protocols[i + 1];
        payload.extend_from_slice(&header);
    }
    payload.extend_from_slice(&upper);
    let mut f = vec![0u8; vnet::LEN];
    f.extend_from_slice(&dst_mac);
    f.extend_from_slice(&src_mac);
    f.extend_from_slice(&[0x86, 0xdd, 0x60, 0, 0, 0]);
    f.extend_from_slice(&(payload.len() as u16).to_be_bytes());
    f.extend_from_slice(&[protocols[0], hop]);
    f.extend_from_slice(&src.octets());
    f.extend_from_slice(&dst.octets());
    f.extend_from_slice(&payload);
    mutate(&mut f);
    f
}

/// A UDP header (no checksum) and the marker, as an upper layer.
fn udp6() -> (u8, Vec<u8>) {
    let mut udp = vec![0x30, 0x39, 0x30, 0x39, 0, (8 + MARKER.len()) as u8, 0, 0];
    udp.extend_from_slice(MARKER);
    (17, udp)
}

/// A neighbour discovery message: type, 4 bytes of flags, then `body`, then the marker in an
/// option of an unassigned type (a well-formed message, so it is judged on what it says).
fn ndp(kind: u8, flags: [u8; 4], body: &[&[u8]]) -> (u8, Vec<u8>) {
    let mut message = vec![kind, 0, 0, 0];
    message.extend_from_slice(&flags);
    body.iter().for_each(|part| message.extend_from_slice(part));
    let mut option = vec![0xfd, 2];
    option.extend_from_slice(MARKER);
    option.resize(16, 0);
    message.extend_from_slice(&option);
    (58, message)
}

/// A Destination Options header of 8 bytes (its next header is filled in by [`ipv6_frame`]).
fn dest_options() -> (u8, Vec<u8>) {
    (60, vec![0, 0, 1, 4, 0, 0, 0, 0])
}

/// A Fragment header at `offset` (bytes) with the more-fragments flag.
fn fragment(offset: u16, more: bool) -> (u8, Vec<u8>) {
    let word = (offset & 0xfff8) | more as u16;
    (44, vec![0, 0, (word >> 8) as u8, word as u8, 0, 0, 0x12, 0x34])
}

fn solicited_node_mac(ip: Ipv6Addr) -> [u8; 6] {
    let o = ip.octets();
    [0x33, 0x33, 0xff, o[13], o[14], o[15]]
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
    let v6 = |last| Ipv6Addr::new(0xfd00, 0x10, 0, 0, 0, 0, 60, last);
    let (a, b, h) = (
        Pod::new(Ipv4Addr::new(10, 10, 60, 2)).with_ipv6(v6(2)),
        Pod::new(Ipv4Addr::new(10, 10, 60, 3)).with_ipv6(v6(3)),
        Pod::new(Ipv4Addr::new(10, 10, 60, 66)).with_ipv6(v6(0x66)),
    );
    for (name, pod) in [("pod-a", &a), ("pod-b", &b), ("hostile", &h)] {
        daemon.attach(name, pod);
    }
    // Let the hostile pod put frames of any size on its wire.
    h.ns.ip(&["link", "set", "eth0", "mtu", "9000"]);
    let capture_a = raw_socket(&a, true);
    let capture_b = raw_socket(&b, true);
    assert!(a.ping(&b.ip.to_string(), 2));
    assert!(a.ping(&v6(3).to_string(), 2));
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
            "lldp ethertype",
            ipv4_frame(hm, h.ip, b.ip, 64, 0, |f| f[vnet::LEN + 12..vnet::LEN + 14].copy_from_slice(&[0x88, 0xcc])),
        ),
    ];
    let kinds: Vec<(&str, Vec<u8>)> =
        kinds.into_iter().chain(ipv6_kinds(&h, (am, bm), v6)).chain(hardening::kinds(&h, &b)).collect();
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
            let mut refused_kinds = std::collections::BTreeSet::new();
            for round in 0..700 {
                for (name, frame) in &kinds {
                    match hostile.send(frame) {
                        Ok(()) => sent += 1,
                        Err(_) => {
                            refused += 1;
                            refused_kinds.insert(*name);
                        }
                    }
                }
                refused += hostile.send(&bad_vnet).is_err() as usize;
                if round % 50 == 0 {
                    std::thread::sleep(Duration::from_millis(5));
                }
            }
            (sent, refused, refused_kinds)
        })
    };
    // Meanwhile the pair runs traffic: pings of both families must all come back, iperf3 must
    // finish.
    let ping6 = a.ns.spawn(&["ping", "-c", "30", "-i", "0.05", "-W", "1", &v6(3).to_string()]);
    let ping = a.ns.exec(&["ping", "-c", "30", "-i", "0.05", "-W", "1", &b.ip.to_string()]);
    let ping6 = ping6.wait_with_output().expect("ping6");
    let mut server = b.ns.spawn(&["iperf3", "-s", "-1", "-p", "5201"]);
    std::thread::sleep(Duration::from_millis(200));
    let iperf = a.ns.exec(&["iperf3", "-c", &b.ip.to_string(), "-p", "5201", "-t", "2", "-J"]);
    let _ = server.kill();
    let _ = server.wait();
    let (sent, refused, refused_kinds) = sender.join().expect("sender");
    eprintln!(
        "hostile pod: {sent} frames sent, {refused} refused by its own kernel (bad vnet header, {refused_kinds:?})"
    );
    assert!(sent >= 10_000, "only {sent} hostile frames got onto the wire");
    assert!(ping.status.success(), "the pair lost pings during the attack:\n{}", String::from_utf8_lossy(&ping.stdout));
    assert!(ping6.status.success(), "the pair lost IPv6 pings:\n{}", String::from_utf8_lossy(&ping6.stdout));
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
        "ipv6_truncated",
        "ipv6_bad_version",
        "ipv6_bad_extension_headers",
        "ipv6_link_local",
        "ipv6_multicast",
        "ndp_malformed",
        "ndp_spoofed",
        "ra_guard",
    ]
    .iter()
    .chain(hardening::REASONS)
    {
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
    hardening::forwarded_on_purpose(&h, &b, &hostile, &capture_b);
    drop(daemon);
    let _ = (&node, &dir);
}

/// The IPv6 attacks: spoofed sources (global and link-local), rogue router advertisements and
/// redirects (also hidden behind a fragment header), advertisements and solicitations naming
/// another pod, long and malformed extension-header chains, atomic and overlapping fragments
/// that hide or split a router advertisement, hop limits 0 and 1, bad payload lengths.
fn ipv6_kinds(h: &Pod, (am, bm): ([u8; 6], [u8; 6]), v6: impl Fn(u16) -> Ipv6Addr) -> Vec<(&'static str, Vec<u8>)> {
    let hm = mac_of(h);
    let (h6, b6) = (h.ipv6.unwrap(), v6(3));
    let ll = |mac: [u8; 6]| vswitch::wire::MacAddr(mac).link_local();
    let all_nodes: Ipv6Addr = "ff02::1".parse().unwrap();
    let all_nodes_mac = [0x33, 0x33, 0, 0, 0, 1];
    let to_b = |src: Ipv6Addr, hop: u8| ((hm, GW_MAC), (src, b6, hop));
    let ra = || ndp(134, [64, 0, 0x07, 0x08], &[&[0; 8]]);
    let option = |kind: u8, mac: [u8; 6]| [&[kind, 1][..], &mac[..]].concat();
    let nothing = |_: &mut Vec<u8>| {};
    vec![
        ("v6 forged source", ipv6_frame(to_b(v6(0x99), 64), &[], udp6(), nothing)),
        ("v6 forged source of a pod", ipv6_frame(to_b(v6(2), 64), &[], udp6(), nothing)),
        ("v6 forged link-local source", ipv6_frame(to_b(ll(bm), 64), &[], udp6(), nothing)),
        ("v6 own link-local to a pod", ipv6_frame(to_b(ll(hm), 64), &[], udp6(), nothing)),
        ("v6 forged source mac", ipv6_frame(((am, GW_MAC), (h6, b6, 64)), &[], udp6(), nothing)),
        ("rogue router advertisement", ipv6_frame(((hm, all_nodes_mac), (ll(hm), all_nodes, 255)), &[], ra(), nothing)),
        (
            "redirect",
            ipv6_frame(
                ((hm, bm), (ll(hm), ll(bm), 255)),
                &[],
                ndp(137, [0; 4], &[&b6.octets(), &h6.octets()]),
                nothing,
            ),
        ),
        (
            "advertisement claiming pod-b",
            ipv6_frame(
                ((hm, all_nodes_mac), (h6, all_nodes, 255)),
                &[],
                ndp(136, [0x20, 0, 0, 0], &[&b6.octets(), &option(2, hm)]),
                nothing,
            ),
        ),
        (
            "solicitation with pod-b's mac",
            ipv6_frame(
                ((hm, solicited_node_mac(v6(2))), (h6, "ff02::1:ff00:2".parse().unwrap(), 255)),
                &[],
                ndp(135, [0; 4], &[&v6(2).octets(), &option(1, bm)]),
                nothing,
            ),
        ),
        (
            "duplicate address detection for pod-b's address",
            ipv6_frame(
                ((hm, solicited_node_mac(b6)), (Ipv6Addr::UNSPECIFIED, "ff02::1:ff00:3".parse().unwrap(), 255)),
                &[],
                ndp(135, [0; 4], &[&b6.octets()]),
                nothing,
            ),
        ),
        (
            "routed solicitation (hop limit 64)",
            ipv6_frame(
                ((hm, GW_MAC), (h6, ll(GW_MAC), 64)),
                &[],
                ndp(135, [0; 4], &[&ll(GW_MAC).octets(), &option(1, hm)]),
                nothing,
            ),
        ),
        (
            "router advertisement in an atomic fragment",
            ipv6_frame(((hm, all_nodes_mac), (ll(hm), all_nodes, 255)), &[fragment(0, false)], ra(), nothing),
        ),
        (
            "router advertisement behind its first fragment's headers",
            ipv6_frame(
                ((hm, all_nodes_mac), (ll(hm), all_nodes, 255)),
                &[fragment(0, true), dest_options(), dest_options()],
                ra(),
                |f| f.truncate(vnet::LEN + 14 + 40 + 24),
            ),
        ),
        (
            "overlapping fragment of a router advertisement",
            ipv6_frame(((hm, all_nodes_mac), (ll(hm), all_nodes, 255)), &[fragment(8, false)], ra(), nothing),
        ),
        ("nine extension headers", ipv6_frame(to_b(h6, 64), &vec![dest_options(); 9], udp6(), nothing)),
        ("a hundred extension headers", ipv6_frame(to_b(h6, 64), &vec![dest_options(); 100], udp6(), nothing)),
        (
            "hop-by-hop options not first",
            ipv6_frame(to_b(h6, 64), &[dest_options(), (0, vec![0, 0, 1, 4, 0, 0, 0, 0])], udp6(), nothing),
        ),
        (
            "extension header beyond the payload",
            ipv6_frame(to_b(h6, 64), &[dest_options()], udp6(), |f| f[vnet::LEN + 14 + 41] = 200),
        ),
        ("v6 hop limit 0", ipv6_frame(to_b(h6, 0), &[], udp6(), nothing)),
        ("v6 hop limit 1", ipv6_frame(to_b(h6, 1), &[], udp6(), nothing)),
        (
            "payload length beyond the frame",
            ipv6_frame(to_b(h6, 64), &[], udp6(), |f| f[vnet::LEN + 18..vnet::LEN + 20].copy_from_slice(&[0x7f, 0xff])),
        ),
        (
            "payload length 0 before a hop-by-hop header",
            ipv6_frame(to_b(h6, 64), &[(0, vec![0, 0, 1, 4, 0, 0, 0, 0])], udp6(), |f| {
                f[vnet::LEN + 18..vnet::LEN + 20].fill(0)
            }),
        ),
        ("truncated ipv6", ipv6_frame(to_b(h6, 64), &[], udp6(), |f| f.truncate(vnet::LEN + 14 + 30))),
        ("ipv6 ethertype, version 4", ipv6_frame(to_b(h6, 64), &[], udp6(), |f| f[vnet::LEN + 14] = 0x40)),
        ("v6 multicast", ipv6_frame(((hm, all_nodes_mac), (h6, all_nodes, 64)), &[], udp6(), nothing)),
    ]
}
