//! UDP segmentation offload through vswitchd, in real namespaces: a pod's UDP_SEGMENT sends
//! (QUIC's and WireGuard's way of sending) cross vswitchd as whole super-frames, and reach the
//! other pod as every datagram intact; with the egress unable to take them
//! (`force_udp_segmentation`, standing in for a kernel that refused USO), vswitchd cuts them
//! itself and the datagrams still all arrive, intact. IPv4 and IPv6.
//! Needs root (CI runs as root); without it every test here fails with a clear message.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use nix::sys::socket::{setsockopt, sockopt};
use vpc_lab::netns::{require_root, Binaries, Daemon, Netns, Pod, TempDir};
use vswitch::port::netns;

const SEGMENT: usize = 1400;
/// One send: 46 full datagrams and a short one of 700 bytes (the last of a train is shorter).
const WRITE: usize = 46 * SEGMENT + 700;
const WRITES: usize = 150;
const DATAGRAMS: usize = WRITES * WRITE.div_ceil(SEGMENT);
const PORT: u16 = 4433;

struct Node {
    // Field order is drop order: the daemon goes before the namespaces it uses.
    daemon: Daemon,
    a: Pod,
    b: Pod,
    _node: Netns,
    _dir: TempDir,
}

fn bins() -> Binaries {
    Binaries { vswitchd: env!("CARGO_BIN_EXE_vswitchd").into(), vswitchctl: env!("CARGO_BIN_EXE_vswitchctl").into() }
}

/// A node with vswitchd (configured with `config`) and two dual-stack pods on subnet `subnet`.
fn node(config: &str, subnet: u8) -> Node {
    require_root();
    let dir = TempDir::new();
    let node = Netns::new("vtu");
    let daemon = Daemon::start_with_config(&bins(), &node, &dir.0, 1, config);
    let v6 = |last| Ipv6Addr::new(0xfd00, 0x10, 0, 0, 0, 0, subnet.into(), last);
    let a = Pod::new(Ipv4Addr::new(10, 10, subnet, 2)).with_ipv6(v6(2));
    let b = Pod::new(Ipv4Addr::new(10, 10, subnet, 3)).with_ipv6(v6(3));
    daemon.attach("pod-a", &a);
    daemon.attach("pod-b", &b);
    // Both families resolve (IPv6 through vswitchd's neighbour advertisements) before counting.
    assert!(a.ping(&b.ip.to_string(), 2), "pod to pod ping");
    assert!(a.ping(&b.ipv6.unwrap().to_string(), 2), "pod to pod ping over IPv6");
    Node { daemon, a, b, _node: node, _dir: dir }
}

/// Datagram `index` of write `write`: its numbers, then a pattern of both.
fn datagram(write: usize, index: usize, len: usize) -> Vec<u8> {
    let mut d = Vec::with_capacity(len);
    d.extend_from_slice(&(write as u32).to_be_bytes());
    d.extend_from_slice(&(index as u32).to_be_bytes());
    d.extend((8..len).map(|i| (i * 31 + write * 7 + index * 13) as u8));
    d
}

/// What one write of the train holds: its datagrams, concatenated.
fn train(write: usize) -> Vec<u8> {
    (0..WRITE.div_ceil(SEGMENT)).flat_map(|i| datagram(write, i, SEGMENT.min(WRITE - i * SEGMENT))).collect()
}

/// The counters that tell whether super-frames crossed whole.
#[derive(Debug)]
struct Seen {
    /// Frames vswitchd read from pod A.
    a_rx: u64,
    /// Frames it wrote to pod B, and how many of them it had to cut first.
    b_tx: u64,
    b_segmented: u64,
}

fn counters(daemon: &Daemon) -> (u64, u64, u64) {
    let (a, b) = (daemon.port_counters("pod-a"), daemon.port_counters("pod-b"));
    let get = |c: &serde_json::Value, k: &str| c[k].as_u64().unwrap_or_else(|| panic!("no counter {k}: {c}"));
    (get(&a, "rx_packets"), get(&b, "tx_packets"), get(&b, "tx_segmented"))
}

/// Pod A sends `WRITES` 64 KB trains with UDP_SEGMENT to pod B at `to`; every datagram must
/// arrive at B whole, with its size and contents. Returns what the counters saw meanwhile.
fn send_trains(n: &Node, to: IpAddr) -> Seen {
    let target = SocketAddr::new(to, PORT);
    let receiver = netns::run_in(Some(&n.b.ns.path()), || UdpSocket::bind(target)).expect("bind in pod B");
    // The whole run fits in the receive buffer, so a slow reader loses nothing.
    setsockopt(&receiver, sockopt::RcvBufForce, &(64 << 20)).expect("SO_RCVBUFFORCE");
    receiver.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    let sender = netns::run_in(Some(&n.a.ns.path()), || {
        let any: IpAddr = if to.is_ipv6() { Ipv6Addr::UNSPECIFIED.into() } else { Ipv4Addr::UNSPECIFIED.into() };
        let s = UdpSocket::bind(SocketAddr::new(any, 0))?;
        s.connect(target)?;
        Ok(s)
    })
    .expect("socket in pod A");
    setsockopt(&sender, sockopt::UdpGsoSegment, &(SEGMENT as libc::c_int)).expect("UDP_SEGMENT");

    let before = counters(&n.daemon);
    let reader = std::thread::spawn(move || {
        let mut got: BTreeMap<(usize, usize), Vec<u8>> = BTreeMap::new();
        let mut buf = vec![0u8; 65536];
        let mut duplicates = 0;
        while got.len() < DATAGRAMS {
            let Ok(len) = receiver.recv(&mut buf) else { break };
            assert!(len >= 8, "a datagram of {len} bytes");
            let number = |at: usize| u32::from_be_bytes(buf[at..at + 4].try_into().unwrap()) as usize;
            if got.insert((number(0), number(4)), buf[..len].to_vec()).is_some() {
                duplicates += 1;
            }
        }
        (got, duplicates)
    });
    let started = Instant::now();
    for write in 0..WRITES {
        let data = train(write);
        let sent = sender.send(&data).unwrap_or_else(|e| panic!("UDP_SEGMENT send {write}: {e}"));
        assert_eq!(sent, WRITE);
    }
    let (got, duplicates) = reader.join().expect("reader");
    let elapsed = started.elapsed();
    let after = counters(&n.daemon);
    let seen = Seen { a_rx: after.0 - before.0, b_tx: after.1 - before.1, b_segmented: after.2 - before.2 };
    eprintln!(
        "{to}: {WRITES} sends of {WRITE} bytes = {DATAGRAMS} datagrams in {elapsed:?}; {} received; \
         vswitchd read {} frames from A, wrote {} to B ({} cut by vswitchd)",
        got.len(),
        seen.a_rx,
        seen.b_tx,
        seen.b_segmented
    );
    assert_eq!(duplicates, 0, "datagrams delivered twice");
    assert_eq!(got.len(), DATAGRAMS, "every datagram arrives ({} of {DATAGRAMS})", got.len());
    for ((write, index), data) in &got {
        let expected = datagram(*write, *index, SEGMENT.min(WRITE - index * SEGMENT));
        assert_eq!(data.len(), expected.len(), "datagram {index} of send {write}: its size");
        assert!(data == &expected, "datagram {index} of send {write}: its contents");
    }
    seen
}

#[test]
fn udp_gso_sends_cross_vswitchd_whole_and_every_datagram_arrives() {
    let n = node("", 41);
    for to in [IpAddr::V4(n.b.ip), IpAddr::V6(n.b.ipv6.unwrap())] {
        let seen = send_trains(&n, to);
        // Carried whole: about one read per send, not one per datagram (a few ARP or neighbour
        // frames may come along).
        assert!(
            seen.a_rx < (DATAGRAMS / 10) as u64,
            "{to}: vswitchd read {} frames from pod A for {DATAGRAMS} datagrams: UDP GSO sends were segmented \
             before vswitchd (USO refused? the kernel needs 6.2; see the vswitchd log)",
            seen.a_rx
        );
        assert!(seen.b_tx < (DATAGRAMS / 10) as u64, "{to}: {} frames written to pod B: not whole", seen.b_tx);
        assert_eq!(seen.b_segmented, 0, "{to}: pod B's port takes UDP GSO frames: nothing to cut");
    }
    assert_eq!(n.daemon.drops("udp_gso_malformed"), 0);
}

#[test]
fn udp_gso_frames_are_segmented_by_vswitchd_for_a_port_that_cannot_take_them() {
    let n = node("force_udp_segmentation = true\n", 42);
    for to in [IpAddr::V4(n.b.ip), IpAddr::V6(n.b.ipv6.unwrap())] {
        let seen = send_trains(&n, to);
        // Still read whole from pod A (its TAP has USO: the forcing is on the way out)...
        assert!(
            seen.a_rx < (DATAGRAMS / 10) as u64,
            "{to}: vswitchd read {} frames from pod A for {DATAGRAMS} datagrams: not whole",
            seen.a_rx
        );
        // ...and cut on the way to pod B: every send, into all of its datagrams.
        assert!(seen.b_segmented >= WRITES as u64, "{to}: {} of {WRITES} sends cut by vswitchd", seen.b_segmented);
        assert!(seen.b_tx >= DATAGRAMS as u64, "{to}: {} frames written to pod B for {DATAGRAMS}", seen.b_tx);
    }
    assert_eq!(n.daemon.drops("udp_gso_malformed"), 0);
    let text = String::from_utf8_lossy(&n.daemon.ctl(&["counters"]).stdout).to_string();
    assert!(text.contains("TX SEGMENTED"), "vswitchctl counters shows the column: {text}");
}
