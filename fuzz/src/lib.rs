//! What each fuzz target checks, as plain functions: `cargo fuzz` drives them with libFuzzer
//! (fuzz_targets/), and `cargo test` replays the committed corpus through them (tests/).
//!
//! Every function must not panic on any input; where it asserts, the assertion is the property
//! (our parsers agree with etherparse, the pipeline never emits a malformed or spoofed frame, the
//! FIB agrees with a naive reference, parsers round-trip).

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::sync::OnceLock;

use etherparse::{Ethernet2Slice, Ipv4HeaderSlice};
use fib::{Fib, Ipv4Prefix};
use vswitch::pipeline::{IcmpLimiter, Next, NoTrace, Pipeline};
use vswitch::state::{ForwardingState, ForwardingStateBuilder, PortRole};
use vswitch::wire::arp::ArpPacket;
use vswitch::wire::icmp::{self, IcmpError};
use vswitch::wire::ipv4::Ipv4Packet;
use vswitch::wire::vnet::{self, VnetHeader};
use vswitch::wire::{EthernetFrame, MacAddr};

/// Ethernet: ours and etherparse accept the same frames and read the same fields.
pub fn ethernet(data: &[u8]) {
    let ours = EthernetFrame::new_checked(data);
    let theirs = Ethernet2Slice::from_slice_without_fcs(data);
    assert_eq!(ours.is_ok(), theirs.is_ok(), "accept/reject differs");
    if let (Ok(o), Ok(t)) = (ours, theirs) {
        assert_eq!(o.src().0, t.source());
        assert_eq!(o.dst().0, t.destination());
        assert_eq!(o.ethertype_raw(), t.ether_type().0);
        assert_eq!(o.payload(), t.payload_slice());
    }
}

/// ARP: what we accept, etherparse accepts with the same fields.
pub fn arp(data: &[u8]) {
    if let Ok(ours) = ArpPacket::new_checked(data) {
        let theirs = etherparse::ArpPacketSlice::from_slice(data).expect("etherparse rejects an ARP packet we accept");
        assert_eq!(ours.sender_mac().0, theirs.sender_hw_addr());
        assert_eq!(ours.sender_ip().octets(), theirs.sender_protocol_addr());
        assert_eq!(ours.target_mac().0, theirs.target_hw_addr());
        assert_eq!(ours.target_ip().octets(), theirs.target_protocol_addr());
    }
}

/// IPv4: whatever we accept, etherparse accepts with the same fields; whatever etherparse
/// rejects, we reject. (We refuse more: a bad checksum, a total length beyond the bytes.)
pub fn ipv4(data: &[u8]) {
    let ours = Ipv4Packet::new_checked(data);
    let theirs = Ipv4HeaderSlice::from_slice(data);
    if theirs.is_err() {
        assert!(ours.is_err(), "we accept a header etherparse rejects");
    }
    if let Ok(o) = ours {
        let t = theirs.expect("etherparse rejects a header we accept");
        assert_eq!(o.src(), t.source_addr());
        assert_eq!(o.dst(), t.destination_addr());
        assert_eq!(o.ttl(), t.ttl());
        assert_eq!(o.protocol(), t.protocol().0);
        assert_eq!(o.header_len(), t.slice().len());
        assert_eq!(o.total_len(), t.total_len() as usize);
        assert_eq!(o.dont_fragment(), t.dont_fragment());
        assert!(checksum_verifies(t.slice()), "we accepted a bad checksum");
        // Decrementing TTL keeps a valid header.
        if o.ttl() > 0 {
            let mut copy = data.to_vec();
            Ipv4Packet::new_checked(&mut copy[..]).expect("same bytes").decrement_ttl();
            assert!(Ipv4Packet::new_checked(&copy[..]).is_ok());
        }
    }
}

/// An independent RFC 1071 check over raw header bytes (etherparse's parsed header drops the
/// reserved flag bit, so its recomputed checksum can differ from the one on the wire).
fn checksum_verifies(header: &[u8]) -> bool {
    let sum = header.chunks(2).map(|w| u32::from(u16::from_be_bytes([w[0], *w.get(1).unwrap_or(&0)]))).sum::<u32>();
    let folded = (sum & 0xffff) + (sum >> 16);
    (folded & 0xffff) + (folded >> 16) == 0xffff
}

/// virtio_net_hdr: an accepted header round-trips.
pub fn vnet(data: &[u8]) {
    let frame_len = data.len().saturating_sub(vnet::LEN);
    if let Ok(h) = VnetHeader::parse(data, frame_len) {
        let mut out = [0u8; vnet::LEN];
        h.write(&mut out);
        assert_eq!(VnetHeader::parse(&out, frame_len).expect("round trip"), h);
    }
}

/// ICMP errors quoting arbitrary bytes are well formed.
pub fn icmp(data: &[u8]) {
    let quoted = &data[..data.len().min(68)];
    let mtu = data.first().map_or(1500, |b| 576 + *b as u16);
    let mut buf = vec![0u8; 20 + 8 + quoted.len()];
    let error =
        if data.len().is_multiple_of(2) { IcmpError::TimeExceeded } else { IcmpError::FragmentationNeeded { mtu } };
    let len = icmp::emit_error(&mut buf, Ipv4Addr::new(10, 0, 0, 1), Ipv4Addr::new(10, 0, 0, 2), error, quoted);
    let ip = Ipv4Packet::new_checked(&buf[..len]).expect("our ICMP error is valid IPv4");
    assert_eq!(vswitch::wire::checksum::sum(ip.payload()), 0xffff, "ICMP checksum");
}

const GW_IP: Ipv4Addr = Ipv4Addr::new(169, 254, 1, 1);
const GW_MAC: MacAddr = MacAddr([2, 0, 0xa9, 0xfe, 1, 1]);
const UP_MAC: MacAddr = MacAddr([2, 0, 0, 0, 0, 0x99]);

/// Pods A (10.10.1.2) and B (10.10.1.3), the host port, an uplink with the VPC subnet and a known
/// neighbour, a default route through the VPC gateway.
fn state() -> &'static (ForwardingState, Fib<Ipv4Addr>) {
    static STATE: OnceLock<(ForwardingState, Fib<Ipv4Addr>)> = OnceLock::new();
    STATE.get_or_init(|| {
        let pod = |last| Ipv4Addr::new(10, 10, 1, last);
        let mac = |ip: Ipv4Addr| MacAddr::local_from(ip.octets());
        ForwardingStateBuilder::new(GW_IP, GW_MAC)
            .pod(pod(2), mac(pod(2)), 1500)
            .pod(pod(3), mac(pod(3)), 1500)
            .host_port(MacAddr([2, 0, 0, 0, 0, 0xee]), 9000)
            .route("10.96.0.0/12".parse().expect("prefix"), 2)
            .uplink(
                UP_MAC,
                Some(Ipv4Addr::new(10, 10, 0, 7)),
                "10.10.0.0/16".parse().expect("prefix"),
                Some(Ipv4Addr::new(10, 10, 0, 1)),
                1500,
            )
            .neighbor(Ipv4Addr::new(10, 10, 0, 50), MacAddr([2, 0, 0, 0, 0, 0x50]))
            .build()
    })
}

/// The whole pipeline: first byte picks the arrival port (5 is no port), the rest is the vnet
/// header and frame. Nothing panics; what leaves is well formed; forwarded IPv4 has TTL - 1; a
/// pod's frame only leaves if its source MAC and IP are the pod's own.
pub fn pipeline(data: &[u8]) {
    let Some((&selector, packet)) = data.split_first() else { return };
    let (state, _) = state();
    let in_port = (selector % 5) as u16;
    let mut buf = vec![0u8; packet.len().max(128) + 128];
    buf[..packet.len()].copy_from_slice(packet);
    let mut pipeline = Pipeline::new(IcmpLimiter::new(1_000_000, 1_000_000));
    let view = state.fib.pin();
    let next = pipeline.process(state, &view, in_port, &mut buf, packet.len(), 0, &mut NoTrace);
    let sent = match next {
        Next::Tx { len, .. } | Next::Respond { len, .. } | Next::Resolve { len, .. } => &buf[..len],
        Next::Drop(_) | Next::ToControl { .. } => return,
    };
    // Well formed: a valid vnet header and Ethernet frame, and valid IPv4 when IPv4.
    VnetHeader::parse(&sent[..vnet::LEN], sent.len() - vnet::LEN).expect("valid vnet header out");
    // The switch answers for layers 2 and 3 (it does not parse L4): check those.
    let frame = &sent[vnet::LEN..];
    let eth = Ethernet2Slice::from_slice_without_fcs(frame).expect("etherparse reads the Ethernet header we send");
    let arrived = &packet[vnet::LEN.min(packet.len())..];
    if eth.ether_type() == etherparse::EtherType::IPV4 {
        let slice = Ipv4HeaderSlice::from_slice(eth.payload_slice()).expect("etherparse reads the IPv4 header we send");
        assert!(checksum_verifies(slice.slice()), "bad checksum out");
        let header = slice.to_header();
        if matches!(next, Next::Tx { .. } | Next::Resolve { .. }) {
            // Forwarded: the same packet, one hop older.
            let original = Ipv4Packet::new_checked(&arrived[14..]).expect("forwarded only valid IPv4");
            assert_eq!(header.time_to_live + 1, original.ttl(), "TTL not decremented");
            assert_eq!(header.source, original.src().octets());
        }
    } else if eth.ether_type() == etherparse::EtherType::ARP {
        etherparse::ArpPacketSlice::from_slice(eth.payload_slice()).expect("etherparse reads the ARP we send");
    }
    // Port security: nothing from a pod leaves unless it came from the pod's own addresses
    // (ICMP errors and ARP replies go back to the pod itself).
    if let Some(PortRole::Pod { ip, mac }) = state.port(in_port).map(|p| &p.role) {
        let eth = EthernetFrame::new_checked(arrived).expect("sent something, so it parsed");
        assert_eq!(eth.src(), *mac, "a spoofed source MAC left the switch");
        if let Ok(original) = Ipv4Packet::new_checked(&arrived[14..]) {
            if matches!(next, Next::Tx { .. } | Next::Resolve { .. }) && u16::from(eth.ethertype()) == 0x0800 {
                assert_eq!(original.src(), *ip, "a spoofed source IP left the switch");
            }
        }
    }
}

/// The FIB against a naive reference over arbitrary operation sequences (6 bytes each: kind,
/// address, length; every sixteenth operation publishes and compares).
pub fn fib(data: &[u8]) {
    // One table for the whole run, emptied after each input: making a table allocates its
    // 2^18-entry top level, which would cost more than the operations themselves.
    thread_local! {
        static TABLE: std::cell::RefCell<Fib<Ipv4Addr>> = std::cell::RefCell::new(Fib::new());
    }
    TABLE.with(|table| {
        let mut fib = table.borrow_mut();
        let reader = fib.reader();
        let mut naive: BTreeMap<Ipv4Prefix, u32> = BTreeMap::new();
        let mut probes = Vec::new();
        for (i, op) in data.chunks_exact(6).take(96).enumerate() {
            let addr = Ipv4Addr::new(op[1], op[2], op[3], op[4]);
            // Mostly /12 and longer: a short prefix fans out over many top-level slots, which is
            // correct but slow, and speed is what finds bugs. /0-/11 still come up, rarely.
            let len = match op[5] {
                0 => 0,
                1 => 8,
                2 => 10,
                3 => 11,
                n => 12 + n % 21,
            };
            let prefix = Ipv4Prefix::new_masked(addr, len).expect("len <= 32");
            probes.push(addr);
            if op[0] % 3 == 2 {
                assert_eq!(fib.remove(&prefix), naive.remove(&prefix));
            } else {
                let nh = (op[0] as u32) << 8 | i as u32;
                assert_eq!(fib.insert(prefix, nh).expect("small next hop"), naive.insert(prefix, nh));
            }
            if i % 16 == 15 {
                fib.publish();
                // Batched lookups too: up to 96 probes queue, carry over and walk in the ring.
                let mut batched = vec![None; probes.len()];
                reader.lookup_batch(&probes, &mut batched);
                for (&a, got) in probes.iter().zip(batched) {
                    let want =
                        naive.iter().filter(|(p, _)| p.contains(a)).max_by_key(|(p, _)| p.len()).map(|(_, &nh)| nh);
                    assert_eq!(reader.lookup(a), want, "lookup {a}");
                    assert_eq!(got, want, "batched lookup {a}");
                }
            }
        }
        assert_eq!(fib.len(), naive.len());
        for prefix in naive.keys() {
            fib.remove(prefix);
        }
        fib.publish();
        assert!(fib.is_empty());
        for &a in &probes {
            assert_eq!(reader.lookup(a), None, "emptied table still answers {a}");
        }
    });
}

/// The CNI input parsers: the network configuration, CNI_ARGS and the environment.
pub fn cni_input(data: &[u8]) {
    let _ = cni::spec::NetConf::parse(data);
    let text = String::from_utf8_lossy(data);
    let _ = cni::spec::CniArgs::parse(&text);
    let vars: BTreeMap<String, String> =
        text.lines().filter_map(|l| l.split_once('=')).map(|(k, v)| (k.to_string(), v.to_string())).collect();
    let _ = cni::spec::Environment::from_env(|k| vars.get(k).cloned());
}

/// The control API through the daemon's real dispatch, on an in-memory switch: every line gets a
/// reply, whatever parses as a request serialises and parses back the same, and after every
/// request the switch is consistent (its status agrees with its listings, every route goes out of
/// a listed port, no two pods share an address).
pub fn control_request(data: &[u8]) {
    use vswitch::control::api::{PortRole, Reply, Request};
    use vswitch::control::{server, Config, Switch};

    thread_local! {
        static RUNTIME: tokio::runtime::Runtime =
            tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    }
    let switch = Switch::in_memory(Config::default()).expect("the default configuration is valid");
    for line in data.split(|&b| b == b'\n') {
        let result = match server::parse_request(line) {
            Ok(request) => {
                let again = serde_json::to_vec(&request).expect("serialisable");
                assert_eq!(serde_json::from_slice::<Request>(&again).expect("round trip"), request);
                RUNTIME.with(|rt| rt.block_on(switch.handle(request)))
            }
            Err(e) => Err(e),
        };
        serde_json::to_string(&Reply::from_result(result)).expect("every reply serialises");

        let ports = switch.list_ports();
        assert_eq!(switch.status().ports, ports.len());
        for route in switch.list_routes() {
            assert!(ports.iter().any(|p| p.name == route.port), "route {} out of an unlisted port", route.prefix);
        }
        let mut addresses: Vec<_> =
            ports.iter().filter_map(|p| if let PortRole::Pod { ip, .. } = p.role { Some(ip) } else { None }).collect();
        let pods = addresses.len();
        addresses.sort();
        addresses.dedup();
        assert_eq!(addresses.len(), pods, "two pods share an address");
    }
}
