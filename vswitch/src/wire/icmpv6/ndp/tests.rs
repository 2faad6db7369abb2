//! The Neighbor Discovery views against captured frames, truncations at every byte and malformed
//! options, and the advertisements written compared with what Linux sends.

use super::*;
use crate::wire::captured::{
    ICMPV6_ECHO_REQUEST, NDP_DAD_SOLICIT, NDP_NEIGHBOR_ADVERT, NDP_NEIGHBOR_ADVERT_NO_OPTIONS, NDP_NEIGHBOR_SOLICIT,
    NDP_ROUTER_ADVERT, NDP_ROUTER_SOLICIT,
};
use crate::wire::icmpv6::tests::{a, mac, message};
use crate::wire::icmpv6::*;
use crate::wire::ipv6::Ipv6Packet;

#[test]
fn parses_captured_neighbor_discovery() {
    let (b, _, _) = message(&NDP_NEIGHBOR_SOLICIT);
    let ns = NeighborSolicit::new_checked(&b[..]).unwrap();
    assert_eq!(ns.target(), a("fe80::42:acff:fe11:3"));
    assert_eq!(ns.options().collect::<Vec<_>>(), [NdpOption::SourceLinkAddr(mac("02:42:ac:11:00:02"))]);
    assert_eq!(ns.source_mac(), Some(mac("02:42:ac:11:00:02")));

    let (b, src, _) = message(&NDP_DAD_SOLICIT);
    let dad = NeighborSolicit::new_checked(&b[..]).unwrap();
    assert!(src.is_unspecified());
    assert_eq!((dad.target(), dad.source_mac()), (a("fe80::42:acff:fe11:3"), None));
    let nonce = NdpOption::Other { kind: 14, data: &[0x05, 0x9d, 0x1b, 0x0d, 0xe4, 0xbc][..] };
    assert_eq!(dad.options().collect::<Vec<_>>(), [nonce]);

    let (b, _, _) = message(&NDP_NEIGHBOR_ADVERT);
    let na = NeighborAdvert::new_checked(&b[..]).unwrap();
    assert_eq!((na.is_router(), na.is_solicited(), na.is_override()), (false, true, true));
    assert_eq!((na.target(), na.target_mac()), (a("fe80::42:acff:fe11:3"), Some(mac("02:42:ac:11:00:03"))));
    let (b, _, _) = message(&NDP_NEIGHBOR_ADVERT_NO_OPTIONS);
    let na = NeighborAdvert::new_checked(&b[..]).unwrap();
    assert_eq!((na.is_router(), na.is_solicited(), na.is_override()), (false, true, false));
    assert_eq!((na.target(), na.target_mac(), na.options().count()), (a("fe80::42:acff:fe11:2"), None, 0));

    let (b, _, dst) = message(&NDP_ROUTER_SOLICIT);
    let rs = RouterSolicit::new_checked(&b[..]).unwrap();
    assert_eq!((dst, rs.source_mac()), (ipv6::ALL_ROUTERS, Some(mac("02:42:ac:11:00:02"))));

    let (b, _, dst) = message(&NDP_ROUTER_ADVERT);
    let ra = RouterAdvert::new_checked(&b[..]).unwrap();
    assert_eq!(dst, ipv6::ALL_NODES);
    assert_eq!((ra.cur_hop_limit(), ra.is_managed(), ra.is_other_config()), (64, false, false));
    assert_eq!((ra.router_lifetime(), ra.reachable_time(), ra.retrans_timer()), (1800, 0, 0));
    let prefix = PrefixInfo {
        prefix_len: 64,
        on_link: true,
        autonomous: true,
        valid_lifetime: 86400,
        preferred_lifetime: 14400,
        prefix: a("2001:db8:1::"),
    };
    assert_eq!(
        ra.options().collect::<Vec<_>>(),
        [NdpOption::SourceLinkAddr(mac("02:42:ac:11:00:02")), NdpOption::Mtu(1500), NdpOption::PrefixInfo(prefix)]
    );
    assert_eq!((ra.mtu(), ra.prefixes().collect::<Vec<_>>()), (Some(1500), vec![prefix]));
}

#[test]
fn each_view_takes_its_own_type_only() {
    let (ns, _, _) = message(&NDP_NEIGHBOR_SOLICIT);
    let (na, _, _) = message(&NDP_NEIGHBOR_ADVERT);
    let (rs, _, _) = message(&NDP_ROUTER_SOLICIT);
    let (ra, _, _) = message(&NDP_ROUTER_ADVERT);
    let (echo, _, _) = message(&ICMPV6_ECHO_REQUEST);
    for other in [&na, &rs, &ra, &echo] {
        assert!(NeighborSolicit::new_checked(&other[..]).is_err());
    }
    for other in [&ns, &rs, &ra, &echo] {
        assert!(NeighborAdvert::new_checked(&other[..]).is_err());
    }
    for other in [&ns, &na, &ra, &echo] {
        assert!(RouterSolicit::new_checked(&other[..]).is_err());
    }
    for other in [&ns, &na, &rs, &echo] {
        assert!(RouterAdvert::new_checked(&other[..]).is_err());
    }
    let mut coded = ns.clone();
    coded[1] = 1;
    assert_eq!(
        NeighborSolicit::new_checked(&coded[..]).unwrap_err(),
        WireError::Malformed("NDP message with a code other than 0")
    );
}

#[test]
fn truncations_at_every_byte_keep_only_whole_options() {
    type Check = fn(&[u8]) -> bool;
    let cases: [(&[u8], Check, &[usize]); 4] = [
        (&NDP_NEIGHBOR_SOLICIT, |b| NeighborSolicit::new_checked(b).is_ok(), &[24, 32]),
        (&NDP_NEIGHBOR_ADVERT, |b| NeighborAdvert::new_checked(b).is_ok(), &[24, 32]),
        (&NDP_ROUTER_SOLICIT, |b| RouterSolicit::new_checked(b).is_ok(), &[8, 16]),
        (&NDP_ROUTER_ADVERT, |b| RouterAdvert::new_checked(b).is_ok(), &[16, 24, 32, 64]),
    ];
    for (frame, accepts, boundaries) in cases {
        let (b, _, _) = message(frame);
        for cut in 0..=b.len() {
            assert_eq!(accepts(&b[..cut]), boundaries.contains(&cut), "cut at {cut} of {}", b.len());
        }
    }
}

#[test]
fn malformed_options_are_refused() {
    let (ns, _, _) = message(&NDP_NEIGHBOR_SOLICIT);
    let (ra, _, _) = message(&NDP_ROUTER_ADVERT);
    let refuse = |bytes: &[u8], mutate: &dyn Fn(&mut Vec<u8>)| {
        let mut b = bytes.to_vec();
        mutate(&mut b);
        match b[0] {
            TYPE_NEIGHBOR_SOLICIT => NeighborSolicit::new_checked(&b[..]).unwrap_err(),
            _ => RouterAdvert::new_checked(&b[..]).unwrap_err(),
        }
    };
    let malformed = WireError::Malformed;
    // Length 0 (which would loop forever if believed), past the end, a lone trailing byte.
    assert_eq!(refuse(&ns, &|b| b[25] = 0), malformed("NDP option of length 0"));
    assert_eq!(refuse(&ns, &|b| b[25] = 2), malformed("NDP option runs past the end of the message"));
    assert_eq!(refuse(&ns, &|b| b.push(1)), malformed("NDP option runs past the end of the message"));
    assert_eq!(refuse(&ns, &|b| b.extend([3, 0])), malformed("NDP option of length 0"));
    // Options read here must have their size; a link-layer address is Ethernet's.
    let long_slla = |b: &mut Vec<u8>| {
        b[25] = 2;
        b.extend([0; 8]);
    };
    assert_eq!(refuse(&ns, &long_slla), malformed("NDP link-layer address option is not 8 bytes"));
    // The RA's options: source link-layer address at 16, MTU at 24, prefix information at 32.
    let long_mtu = |b: &mut Vec<u8>| {
        b[25] = 2;
        b.splice(32..32, [0; 8]);
    };
    assert_eq!(refuse(&ra, &long_mtu), malformed("NDP MTU option is not 8 bytes"));
    let short_prefix = |b: &mut Vec<u8>| {
        b[33] = 3;
        b.truncate(56);
    };
    assert_eq!(refuse(&ra, &short_prefix), malformed("NDP prefix information option is not 32 bytes"));
    assert_eq!(refuse(&ra, &|b| b[34] = 129), malformed("NDP prefix longer than 128 bits"));
    // Unknown options of any length are kept whole.
    let mut b = ra.clone();
    b.extend([25, 3].iter().chain(&[0xaa; 22]));
    let ra = RouterAdvert::new_checked(&b[..]).unwrap();
    assert_eq!(ra.options().last(), Some(NdpOption::Other { kind: 25, data: &[0xaa; 22][..] }));
    // A multicast target.
    assert_eq!(refuse(&ns, &|b| b[8] = 0xff), malformed("NDP target is a multicast address"));
    let (mut na, _, _) = message(&NDP_NEIGHBOR_ADVERT);
    na[8] = 0xff;
    assert_eq!(NeighborAdvert::new_checked(&na[..]).unwrap_err(), malformed("NDP target is a multicast address"));
}

#[test]
fn neighbor_advert_reply_is_what_linux_sends() {
    // Answering the captured solicitation as the captured host did gives its very bytes.
    let (b, solicitor, _) = message(&NDP_NEIGHBOR_SOLICIT);
    let ns = NeighborSolicit::new_checked(&b[..]).unwrap();
    let mut buf = [0u8; NA_PACKET_LEN];
    let len = emit_neighbor_advert_reply(&mut buf, solicitor, ns.target(), mac("02:42:ac:11:00:03"), false);
    assert_eq!(&buf[..len], &NDP_NEIGHBOR_ADVERT[14..]);

    // The gateway answers as a router, and its checksum verifies.
    let gw = mac("02:00:00:00:00:01");
    let len = emit_neighbor_advert_reply(&mut buf, solicitor, a("fe80::1"), gw, true);
    let ip = Ipv6Packet::new_checked(&buf[..len]).unwrap();
    assert_eq!((ip.src(), ip.dst(), ip.hop_limit()), (a("fe80::1"), solicitor, NDP_HOP_LIMIT));
    let icmp = Icmpv6Packet::new_checked(ip.payload()).unwrap();
    assert!(icmp.verify_checksum(ip.src(), ip.dst()));
    let na = NeighborAdvert::new_checked(ip.payload()).unwrap();
    assert_eq!((na.is_router(), na.is_solicited(), na.is_override()), (true, true, true));
    assert_eq!((na.target(), na.target_mac()), (a("fe80::1"), Some(gw)));

    // Duplicate Address Detection is answered to all nodes, unsolicited.
    let len = emit_neighbor_advert_reply(&mut buf, Ipv6Addr::UNSPECIFIED, a("fe80::1"), gw, true);
    let ip = Ipv6Packet::new_checked(&buf[..len]).unwrap();
    assert_eq!(ip.dst(), ipv6::ALL_NODES);
    assert!(Icmpv6Packet::new_checked(ip.payload()).unwrap().verify_checksum(ip.src(), ip.dst()));
    let na = NeighborAdvert::new_checked(ip.payload()).unwrap();
    assert_eq!((na.is_router(), na.is_solicited(), na.is_override()), (true, false, true));
}

#[test]
fn unsolicited_neighbor_advert_goes_to_all_nodes() {
    let mut buf = [0u8; NA_PACKET_LEN];
    let pod = mac("02:00:0a:0a:01:02");
    let len = emit_unsolicited_neighbor_advert(&mut buf, a("2001:db8:1::5"), pod, false);
    let ip = Ipv6Packet::new_checked(&buf[..len]).unwrap();
    assert_eq!((ip.src(), ip.dst(), ip.hop_limit()), (a("2001:db8:1::5"), ipv6::ALL_NODES, 255));
    let theirs = etherparse::Icmpv6Slice::from_slice(ip.payload()).unwrap();
    assert!(theirs.is_checksum_valid(ip.src().octets(), ip.dst().octets()));
    let na = NeighborAdvert::new_checked(ip.payload()).unwrap();
    assert_eq!((na.is_router(), na.is_solicited(), na.is_override()), (false, false, true));
    assert_eq!((na.target(), na.target_mac()), (a("2001:db8:1::5"), Some(pod)));
}
