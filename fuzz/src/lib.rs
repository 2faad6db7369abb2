//! What each fuzz target checks, as plain functions: `cargo fuzz` drives them with libFuzzer
//! (fuzz_targets/), and `cargo test` replays the committed corpus through them (tests/).
//!
//! Every function must not panic on any input; where it asserts, the assertion is the property
//! (our parsers agree with etherparse, the pipeline never emits a malformed or spoofed frame, the
//! FIB agrees with a naive reference, parsers round-trip).

mod forwarding;

pub use forwarding::pipeline;

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, Ipv6Addr};

use etherparse::icmpv6::{NdpOptionSlice, NdpOptionsIterator};
use etherparse::{
    Ethernet2Slice, Icmpv6Slice, Icmpv6Type, Ipv4HeaderSlice, Ipv6ExtensionSlice, Ipv6HeaderSlice, Ipv6Slice,
};
use fib::{Fib, Ipv4Prefix};
use vswitch::wire::arp::ArpPacket;
use vswitch::wire::fragment;
use vswitch::wire::icmp::{self, IcmpError};
use vswitch::wire::icmpv6::{
    self, Icmpv6Error, Icmpv6Packet, NdpOption, NdpOptions, NeighborAdvert, NeighborSolicit, PrefixInfo, RouterAdvert,
    RouterSolicit,
};
use vswitch::wire::ipv4::Ipv4Packet;
use vswitch::wire::ipv6::{self, Ipv6Packet};
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

/// IPv6: we accept exactly the fixed headers etherparse accepts whose payload length fits, with
/// the same fields; the extension-header walk agrees with etherparse's on the upper protocol, its
/// offset and the Fragment header, except where we refuse on purpose (more than
/// `MAX_EXTENSION_HEADERS`, two Fragment headers) or stop on purpose (after the Fragment header
/// of a later fragment, where etherparse reads the data as headers). ICMPv6 inside is checked as
/// in [`icmpv6`], with the packet's own addresses.
pub fn ipv6(data: &[u8]) {
    let ours = Ipv6Packet::new_checked(data);
    let theirs = Ipv6HeaderSlice::from_slice(data);
    let fits = |t: &Ipv6HeaderSlice| data.len() >= ipv6::HEADER_LEN + t.payload_length() as usize;
    assert_eq!(ours.is_ok(), theirs.as_ref().is_ok_and(fits), "accept/reject differs");
    let (Ok(o), Ok(t)) = (ours, theirs) else { return };
    assert_eq!(o.version(), 6);
    assert_eq!(o.traffic_class(), t.traffic_class());
    assert_eq!(o.flow_label(), t.flow_label().value());
    assert_eq!(o.payload_len(), t.payload_length() as usize);
    assert_eq!(o.next_header(), t.next_header().0);
    assert_eq!(o.hop_limit(), t.hop_limit());
    assert_eq!(o.src(), t.source_addr());
    assert_eq!(o.dst(), t.destination_addr());

    // Trailing bytes are padding: the packet alone reads the same. etherparse gets the packet
    // alone too (it would read a zero payload length with bytes after it as a jumbogram's).
    let packet = o.packet();
    assert_eq!(packet.len(), o.total_len());
    let walk = o.upper_layer();
    assert_eq!(Ipv6Packet::new_checked(packet).expect("the packet alone").upper_layer(), walk);
    let theirs = Ipv6Slice::from_slice(packet);
    match (&walk, &theirs) {
        (Ok(up), Ok(t)) => {
            let headers: Vec<_> = t.extensions().clone().into_iter().collect();
            let fragments: Vec<_> = headers
                .iter()
                .enumerate()
                .filter_map(|(i, h)| if let Ipv6ExtensionSlice::Fragment(f) = h { Some((i, f)) } else { None })
                .collect();
            let first_fragment = fragments.first().map(|(_, f)| ipv6::Fragment {
                offset: f.fragment_offset().value() * 8,
                more: f.more_fragments(),
                id: f.identification(),
            });
            assert_eq!(up.fragment, first_fragment, "Fragment header");
            if up.fragment.is_some_and(|f| f.is_later()) {
                // We stop after it; etherparse carries on through the data.
                let (i, _) = fragments[0];
                let through: usize = headers[..=i].iter().map(ext_len).sum();
                assert_eq!(up.offset, ipv6::HEADER_LEN + through);
                assert_eq!(up.extensions, i + 1);
                assert_eq!(up.routing, routing(&headers[..=i]), "Routing header");
            } else {
                assert_eq!(up.protocol, t.payload().ip_number.0, "upper protocol");
                assert_eq!(up.offset, ipv6::HEADER_LEN + t.extensions().slice().len(), "upper offset");
                assert_eq!(up.extensions, headers.len());
                assert_eq!(&packet[up.offset..], t.payload().payload);
                assert_eq!(up.routing, routing(&headers), "Routing header");
                if up.fragment.is_some_and(|f| f.is_first()) {
                    assert!(packet.len() - up.offset >= fragment::header_floor(up.protocol), "a tiny first fragment");
                }
            }
        }
        (Ok(up), Err(_)) => {
            assert!(up.fragment.is_some_and(|f| f.is_later()), "we walk a chain etherparse refuses: {up:?}")
        }
        (Err(e), Ok(t)) => {
            let headers: Vec<_> = t.extensions().clone().into_iter().collect();
            let count = |kind: fn(&Ipv6ExtensionSlice) -> bool| headers.iter().filter(|h| kind(h)).count();
            let fragments = count(|h| matches!(h, Ipv6ExtensionSlice::Fragment(_)));
            let routings = count(|h| matches!(h, Ipv6ExtensionSlice::Routing(_)));
            // RFC 7112: a first fragment short of its upper-layer header, whole as etherparse sees it.
            let first_fragment = headers.iter().any(|h| {
                matches!(h, Ipv6ExtensionSlice::Fragment(f) if f.more_fragments() && f.fragment_offset().value() == 0)
            });
            let tiny = first_fragment && t.payload().payload.len() < fragment::header_floor(t.payload().ip_number.0);
            let refused_on_purpose = match e {
                ipv6::ChainError::IncompleteFirstFragment { .. } => tiny,
                _ => headers.len() > ipv6::MAX_EXTENSION_HEADERS || fragments > 1 || routings > 1,
            };
            assert!(refused_on_purpose, "we refuse ({e}) a chain etherparse walks");
        }
        (Err(_), Err(_)) => {}
    }
    if let Ok(up) = walk {
        assert!(up.offset <= packet.len() && up.extensions <= ipv6::MAX_EXTENSION_HEADERS);
        if up.protocol == ipv6::PROTO_ICMPV6 && !up.fragment.is_some_and(|f| f.is_fragmenting()) {
            icmpv6_message(o.src(), o.dst(), &packet[up.offset..]);
        }
    }

    // The setters write what the accessors read, and nothing else.
    let mut copy = data.to_vec();
    let mut p = Ipv6Packet::new_checked(&mut copy[..]).expect("same bytes");
    let (hop_limit, src, dst) = (o.hop_limit().wrapping_sub(1), Ipv6Addr::from(!o.dst().to_bits()), o.src());
    p.set_hop_limit(hop_limit);
    p.set_src(src);
    p.set_dst(dst);
    assert_eq!((p.hop_limit(), p.src(), p.dst(), p.payload()), (hop_limit, src, dst, o.payload()));
    assert_eq!((&copy[..7], &copy[40..]), (&data[..7], &data[40..]));
}

/// The first Routing header's type and segments left.
fn routing(headers: &[Ipv6ExtensionSlice]) -> Option<ipv6::Routing> {
    headers.iter().find_map(|h| match h {
        Ipv6ExtensionSlice::Routing(r) => {
            Some(ipv6::Routing { routing_type: r.slice()[2], segments_left: r.slice()[3] })
        }
        _ => None,
    })
}

fn ext_len(h: &Ipv6ExtensionSlice) -> usize {
    match h {
        Ipv6ExtensionSlice::HopByHop(s)
        | Ipv6ExtensionSlice::Routing(s)
        | Ipv6ExtensionSlice::DestinationOptions(s) => s.slice().len(),
        Ipv6ExtensionSlice::Fragment(s) => s.slice().len(),
        Ipv6ExtensionSlice::Authentication(s) => s.slice().len(),
    }
}

/// ICMPv6 and NDP: the input is the source and destination addresses (32 bytes) then an ICMPv6
/// message. We accept the messages etherparse accepts and read the same type, code and checksum,
/// and verify the checksum when it does; the NDP views accept what etherparse parses as that
/// message with valid options, with the same fields and options, except where we refuse on
/// purpose (a multicast target, a link-layer address option not 8 bytes long, a prefix longer
/// than 128 bits). The errors and Neighbor Advertisements we write are valid to etherparse.
pub fn icmpv6(data: &[u8]) {
    let Some((addrs, message)) = data.split_first_chunk::<32>() else { return };
    let src = Ipv6Addr::from(<[u8; 16]>::try_from(&addrs[..16]).expect("16 bytes"));
    let dst = Ipv6Addr::from(<[u8; 16]>::try_from(&addrs[16..]).expect("16 bytes"));
    icmpv6_message(src, dst, message);

    // An error quoting the message as the offending packet.
    let mut buf = vec![0u8; ipv6::MIN_MTU];
    let error = match message.first() {
        Some(&b) if b % 2 == 0 => Icmpv6Error::TimeExceeded,
        _ => Icmpv6Error::PacketTooBig { mtu: 1280 + message.len() as u32 },
    };
    let len = icmpv6::emit_error(&mut buf, src, dst, error, message);
    assert!(len <= ipv6::MIN_MTU);
    let out = Ipv6Slice::from_slice(&buf[..len]).expect("etherparse reads the error we write");
    assert_eq!(out.payload().ip_number, etherparse::IpNumber::IPV6_ICMP);
    let icmp = Icmpv6Slice::from_slice(out.payload().payload).expect("an ICMPv6 message");
    assert!(icmp.is_checksum_valid(src.octets(), dst.octets()), "bad checksum on our error");
    match (error, icmp.icmp_type()) {
        (
            Icmpv6Error::TimeExceeded,
            Icmpv6Type::TimeExceeded(etherparse::icmpv6::TimeExceededCode::HopLimitExceeded),
        ) => {}
        (Icmpv6Error::PacketTooBig { mtu }, Icmpv6Type::PacketTooBig { mtu: theirs }) => assert_eq!(mtu, theirs),
        (ours, theirs) => panic!("we wrote {ours:?}, etherparse reads {theirs:?}"),
    }
    assert_eq!(icmp.payload(), &message[..icmpv6::quoted_len(message)]);

    // A Neighbor Advertisement answering `src` for `dst`, at a MAC from the message.
    if !dst.is_multicast() {
        let mac = MacAddr(message.get(..6).and_then(|m| m.try_into().ok()).unwrap_or([2, 0, 0, 0, 0, 1]));
        let router = message.len() % 2 == 1;
        let len = icmpv6::emit_neighbor_advert_reply(&mut buf, src, dst, mac, router);
        let out = Ipv6Slice::from_slice(&buf[..len]).expect("etherparse reads the NA we write");
        assert_eq!(out.header().hop_limit(), 255);
        let (from, to) = (out.header().source_addr(), out.header().destination_addr());
        assert_eq!((from, to), (dst, if src.is_unspecified() { ipv6::ALL_NODES } else { src }));
        let icmp = Icmpv6Slice::from_slice(out.payload().payload).expect("an ICMPv6 message");
        assert!(icmp.is_checksum_valid(from.octets(), to.octets()), "bad checksum on our NA");
        let Icmpv6Type::NeighborAdvertisement(flags) = icmp.icmp_type() else { panic!("not an NA") };
        assert_eq!((flags.router, flags.solicited, flags.r#override), (router, !src.is_unspecified(), true));
        let Ok(etherparse::icmpv6::Icmpv6PayloadSlice::NeighborAdvertisement(na)) = icmp.payload_slice() else {
            panic!("etherparse reads no NA")
        };
        assert_eq!(na.target_address(), dst);
        let options: Vec<_> = na.options_iterator().collect::<Result<_, _>>().expect("valid options");
        assert!(matches!(&options[..], [NdpOptionSlice::TargetLinkLayerAddress(o)] if o.link_layer_address() == mac.0));
        icmpv6_message(from, to, out.payload().payload);
    }
}

/// One ICMPv6 message between `src` and `dst`, against etherparse.
fn icmpv6_message(src: Ipv6Addr, dst: Ipv6Addr, message: &[u8]) {
    let ours = Icmpv6Packet::new_checked(message);
    let theirs = Icmpv6Slice::from_slice(message);
    assert_eq!(ours.is_ok(), theirs.is_ok(), "accept/reject differs");
    let (Ok(o), Ok(t)) = (ours, theirs) else { return };
    assert_eq!((o.msg_type(), o.code(), o.checksum()), (t.type_u8(), t.code_u8(), t.checksum()));
    assert_eq!((o.rest_of_header(), o.payload()), (t.bytes5to8(), t.payload()));
    assert_eq!(
        o.verify_checksum(src, dst),
        t.is_checksum_valid(src.octets(), dst.octets()),
        "checksum verdicts differ"
    );
    let mut copy = message.to_vec();
    Icmpv6Packet::new_checked(&mut copy[..]).expect("same bytes").fill_checksum(src, dst);
    assert!(Icmpv6Packet::new_checked(&copy[..]).expect("same bytes").verify_checksum(src, dst));
    let filled = Icmpv6Slice::from_slice(&copy).expect("same length");
    assert!(filled.is_checksum_valid(src.octets(), dst.octets()), "etherparse refuses our checksum");

    use etherparse::icmpv6::Icmpv6PayloadSlice as P;
    let payload = t.payload_slice();
    let (ndp_type, fixed) = match o.msg_type() {
        icmpv6::TYPE_NEIGHBOR_SOLICIT => (true, icmpv6::NEIGHBOR_SOLICIT_LEN),
        icmpv6::TYPE_NEIGHBOR_ADVERT => (true, icmpv6::NEIGHBOR_ADVERT_LEN),
        icmpv6::TYPE_ROUTER_SOLICIT => (true, icmpv6::ROUTER_SOLICIT_LEN),
        icmpv6::TYPE_ROUTER_ADVERT => (true, icmpv6::ROUTER_ADVERT_LEN),
        _ => (false, 0),
    };
    // What etherparse makes of the message as NDP: None when it is not that message (type,
    // code, length), else its options as ours would read them.
    let expected = match &payload {
        Ok(P::NeighborSolicitation(p)) => Some(expected_options(p.options())),
        Ok(P::NeighborAdvertisement(p)) => Some(expected_options(p.options())),
        Ok(P::RouterSolicitation(p)) => Some(expected_options(p.options())),
        Ok(P::RouterAdvertisement(p)) => Some(expected_options(p.options())),
        _ => None,
    };
    let same_options = |ours: NdpOptions| match &expected {
        Some(Ok(theirs)) => assert_eq!(&ours.collect::<Vec<_>>(), theirs, "options differ"),
        theirs => panic!("we accept NDP options {:?}, etherparse has {theirs:?}", ours.collect::<Vec<_>>()),
    };
    let target_multicast = message.get(8) == Some(&0xff);
    let ours = match o.msg_type() {
        icmpv6::TYPE_NEIGHBOR_SOLICIT => NeighborSolicit::new_checked(message).map(|ns| {
            let Ok(P::NeighborSolicitation(p)) = &payload else { panic!("etherparse reads no NS") };
            assert_eq!(ns.target(), p.target_address());
            assert_eq!(ns.source_mac(), ns.options().find_map(|o| source_mac(&o)));
            same_options(ns.options())
        }),
        icmpv6::TYPE_NEIGHBOR_ADVERT => NeighborAdvert::new_checked(message).map(|na| {
            let Ok(P::NeighborAdvertisement(p)) = &payload else { panic!("etherparse reads no NA") };
            let Icmpv6Type::NeighborAdvertisement(h) = t.icmp_type() else { panic!("etherparse reads no NA") };
            assert_eq!((na.is_router(), na.is_solicited(), na.is_override()), (h.router, h.solicited, h.r#override));
            assert_eq!(na.target(), p.target_address());
            same_options(na.options())
        }),
        icmpv6::TYPE_ROUTER_SOLICIT => RouterSolicit::new_checked(message).map(|rs| same_options(rs.options())),
        icmpv6::TYPE_ROUTER_ADVERT => RouterAdvert::new_checked(message).map(|ra| {
            let Ok(P::RouterAdvertisement(p)) = &payload else { panic!("etherparse reads no RA") };
            let Icmpv6Type::RouterAdvertisement(h) = t.icmp_type() else { panic!("etherparse reads no RA") };
            assert_eq!(
                (ra.cur_hop_limit(), ra.is_managed(), ra.is_other_config()),
                (h.cur_hop_limit, h.managed_address_config, h.other_config)
            );
            assert_eq!(
                (ra.router_lifetime(), ra.reachable_time(), ra.retrans_timer()),
                (h.router_lifetime, p.reachable_time(), p.retrans_timer())
            );
            same_options(ra.options())
        }),
        _ => return,
    };
    match (ours, expected) {
        (Ok(()), _) => {}
        // Refused on purpose, or etherparse refuses it too.
        (Err(_), Some(Err(_)) | None) => {}
        (Err(e), Some(Ok(_))) => {
            assert!(
                matches!(o.msg_type(), icmpv6::TYPE_NEIGHBOR_SOLICIT | icmpv6::TYPE_NEIGHBOR_ADVERT)
                    && target_multicast,
                "we refuse ({e}) NDP etherparse accepts"
            )
        }
    }
    // Any options area parses the same way on its own.
    if ndp_type && message.len() >= fixed {
        let alone = NdpOptions::new_checked(&message[fixed..]).map(|o| o.collect::<Vec<_>>());
        match (alone, expected_options(&message[fixed..])) {
            (Ok(ours), Ok(theirs)) => assert_eq!(ours, theirs),
            (Ok(ours), Err(theirs)) => panic!("we accept options {ours:?}, etherparse: {theirs}"),
            (Err(_), _) => {}
        }
    }
}

fn source_mac(o: &NdpOption) -> Option<MacAddr> {
    if let NdpOption::SourceLinkAddr(mac) = o {
        Some(*mac)
    } else {
        None
    }
}

/// etherparse's reading of NDP options in our terms, or why we must refuse them: etherparse
/// refuses them too, or they break one of our stricter rules.
fn expected_options(bytes: &[u8]) -> Result<Vec<NdpOption<'_>>, &'static str> {
    let mut out = Vec::new();
    for option in NdpOptionsIterator::from_slice(bytes) {
        let option = option.map_err(|_| "etherparse refuses them")?;
        let mac = |addr: &[u8]| addr.try_into().map(MacAddr).map_err(|_| "a link-layer address not 6 bytes long");
        out.push(match option {
            NdpOptionSlice::SourceLinkLayerAddress(o) => NdpOption::SourceLinkAddr(mac(o.link_layer_address())?),
            NdpOptionSlice::TargetLinkLayerAddress(o) => NdpOption::TargetLinkAddr(mac(o.link_layer_address())?),
            NdpOptionSlice::PrefixInformation(o) if o.prefix_length() > 128 => return Err("a prefix over 128 bits"),
            NdpOptionSlice::PrefixInformation(o) => NdpOption::PrefixInfo(PrefixInfo {
                prefix_len: o.prefix_length(),
                on_link: o.on_link(),
                autonomous: o.autonomous_address_configuration(),
                valid_lifetime: o.valid_lifetime(),
                preferred_lifetime: o.preferred_lifetime(),
                prefix: Ipv6Addr::from(o.prefix()),
            }),
            NdpOptionSlice::Mtu(o) => NdpOption::Mtu(o.mtu()),
            NdpOptionSlice::RedirectedHeader(o) => NdpOption::Other { kind: 4, data: &o.as_bytes()[2..] },
            NdpOptionSlice::Unknown(o) => NdpOption::Other { kind: o.option_type().0, data: o.data() },
            other => panic!("an option etherparse added: {other:?}"),
        });
    }
    Ok(out)
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
