//! Software UDP segmentation: cuts a UDP GSO super-frame (virtio-net `GSO_UDP_L4`, what a
//! socket with `UDP_SEGMENT` hands a TAP that took `TUN_F_USO4/6`) into the datagrams it stands
//! for, for an egress whose kernel side cannot take it whole (see `PortQueue::takes_udp_gso`).
//!
//! Each segment is the frame's Ethernet, IP and UDP headers followed by `gso_size` bytes of its
//! payload (the last one shorter), with the IPv4 total length, identification (the super-frame's
//! plus the segment's index, as the kernel's own segmentation numbers them) and header checksum,
//! or the IPv6 payload length, and the UDP length made its own.
//!
//! The UDP checksum is computed in full, and the segment leaves with an empty virtio-net header
//! (no offload): this path runs only for an egress that refused offloads (an old kernel), so the
//! one form every receiver takes is the one to send, and the payload is being copied anyway,
//! so summing it costs a second pass over bytes already in cache. A partial checksum
//! (NEEDS_CSUM with the pseudo-header seed) would save that pass but lean on the very offload
//! support the egress was found to lack.
//!
//! Pure functions over byte slices: [`UdpGso::parse`] validates a frame once, then
//! [`UdpGso::write_segment`] writes any segment into a caller's buffer (no allocation).

use std::net::{Ipv4Addr, Ipv6Addr};

use super::checksum;
use super::ethernet::{self, EtherType, EthernetFrame};
use super::ipv4::{self, Ipv4Packet};
use super::ipv6::{self, Ipv6Packet};
use super::vnet::{self, VnetHeader};

pub const UDP_HEADER_LEN: usize = 8;
/// The most segments one frame may be cut into: the kernel's `UDP_MAX_SEGMENTS`, which a
/// `UDP_SEGMENT` send never exceeds. Past it the frame is refused: a pod writing its own
/// virtio-net headers (a packet socket with PACKET_VNET_HDR) could otherwise make one read cost
/// the switch 64 K writes.
pub const MAX_SEGMENTS: usize = 128;

const L3: usize = vnet::LEN + ethernet::HEADER_LEN;

/// Why a frame cannot be segmented; all are counted as `udp_gso_malformed`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum UdpGsoError {
    /// Also a segment size of 0, which the header's own check refuses.
    #[error("virtio_net_hdr missing or inconsistent, or its GSO type is not UDP_L4")]
    NotUdpGso,
    #[error("headers truncated or invalid")]
    BadHeaders,
    #[error("not UDP directly over IPv4 or IPv6 (fragment, extension headers or another protocol)")]
    NotUdp,
    #[error("checksum offload fields do not point at the UDP checksum")]
    BadChecksumOffload,
    #[error("no UDP payload")]
    NoPayload,
    #[error("more than {MAX_SEGMENTS} segments")]
    TooManySegments,
}

/// A validated `GSO_UDP_L4` frame (vnet header first): where its headers end and how it is cut.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UdpGso {
    /// Addresses, for the pseudo-header of each segment's checksum.
    addresses: Addresses,
    /// Offset of the UDP header in the frame (vnet header included).
    l4: usize,
    /// End of the datagram by its IP length (bytes past it are padding, not payload).
    end: usize,
    gso_size: usize,
    segments: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Addresses {
    V4 { src: Ipv4Addr, dst: Ipv4Addr, id: u16 },
    V6 { src: Ipv6Addr, dst: Ipv6Addr },
}

/// Whether `frame` (vnet header first) claims to be a UDP GSO super-frame: the one byte the
/// egress looks at before anything else.
#[inline(always)]
pub fn is_udp_gso(frame: &[u8]) -> bool {
    frame.get(1).is_some_and(|&gso_type| gso_type & !vnet::GSO_ECN == vnet::GSO_UDP_L4)
}

impl UdpGso {
    /// Checks `frame` (vnet header, then the Ethernet frame) once for everything the segments
    /// depend on; a frame that passes can be cut without further checks.
    pub fn parse(frame: &[u8]) -> Result<UdpGso, UdpGsoError> {
        let header = frame
            .get(..vnet::LEN)
            .and_then(|b| VnetHeader::parse(b, frame.len() - vnet::LEN).ok())
            .ok_or(UdpGsoError::NotUdpGso)?;
        if header.gso_type & !vnet::GSO_ECN != vnet::GSO_UDP_L4 {
            return Err(UdpGsoError::NotUdpGso);
        }
        let eth = EthernetFrame::new_checked(&frame[vnet::LEN..]).map_err(|_| UdpGsoError::BadHeaders)?;
        let ip = &frame[L3..];
        let (addresses, l4, end) = match eth.ethertype() {
            EtherType::Ipv4 => {
                let ip = Ipv4Packet::new_checked(ip).map_err(|_| UdpGsoError::BadHeaders)?;
                if ip.protocol() != ipv4::PROTO_UDP || ip.is_fragment() {
                    return Err(UdpGsoError::NotUdp);
                }
                let id = u16::from_be_bytes([frame[L3 + 4], frame[L3 + 5]]);
                (Addresses::V4 { src: ip.src(), dst: ip.dst(), id }, L3 + ip.header_len(), L3 + ip.total_len())
            }
            EtherType::Ipv6 => {
                let ip = Ipv6Packet::new_checked(ip).map_err(|_| UdpGsoError::BadHeaders)?;
                // Extension headers would need walking here and a routing header's final
                // destination in the pseudo-header; the kernel's UDP_SEGMENT sends have none.
                if ip.next_header() != ipv6::PROTO_UDP {
                    return Err(UdpGsoError::NotUdp);
                }
                (Addresses::V6 { src: ip.src(), dst: ip.dst() }, L3 + ipv6::HEADER_LEN, L3 + ip.total_len())
            }
            _ => return Err(UdpGsoError::NotUdp),
        };
        if l4 + UDP_HEADER_LEN > end {
            return Err(UdpGsoError::BadHeaders);
        }
        // The kernel always hands GSO frames over with their checksum left to complete, at the
        // UDP header: anything else is not what the payload's checksum field means.
        let csum_at = header.csum_start as usize + vnet::LEN;
        if header.flags & vnet::FLAG_NEEDS_CSUM == 0 || csum_at != l4 || header.csum_offset != 6 {
            return Err(UdpGsoError::BadChecksumOffload);
        }
        let payload = end - l4 - UDP_HEADER_LEN;
        if payload == 0 {
            return Err(UdpGsoError::NoPayload);
        }
        let gso_size = header.gso_size as usize;
        let segments = payload.div_ceil(gso_size);
        if segments > MAX_SEGMENTS {
            return Err(UdpGsoError::TooManySegments);
        }
        Ok(UdpGso { addresses, l4, end, gso_size, segments })
    }

    /// How many datagrams the frame is cut into.
    pub fn segments(&self) -> usize {
        self.segments
    }

    /// The UDP payload bytes of segment `index` and where they start in the frame.
    fn payload_range(&self, index: usize) -> std::ops::Range<usize> {
        let start = self.l4 + UDP_HEADER_LEN + index * self.gso_size;
        start..(start + self.gso_size).min(self.end)
    }

    /// The length of segment `index` as [`UdpGso::write_segment`] writes it (vnet header
    /// included).
    pub fn segment_len(&self, index: usize) -> usize {
        self.l4 + UDP_HEADER_LEN + self.payload_range(index).len()
    }

    /// The longest segment's length: room enough for any of them.
    pub fn max_segment_len(&self) -> usize {
        self.segment_len(0)
    }

    /// Writes segment `index` (below [`UdpGso::segments`]) of `frame`, the frame this was parsed
    /// from, into the start of `out`, which must hold [`UdpGso::segment_len`] bytes; returns
    /// that length.
    pub fn write_segment(&self, frame: &[u8], index: usize, out: &mut [u8]) -> usize {
        debug_assert!(index < self.segments);
        let (l4, payload) = (self.l4, self.payload_range(index));
        let udp_len = UDP_HEADER_LEN + payload.len();
        let len = l4 + udp_len;
        let out = &mut out[..len];
        VnetHeader::default().write(&mut out[..vnet::LEN]);
        out[vnet::LEN..l4 + UDP_HEADER_LEN].copy_from_slice(&frame[vnet::LEN..l4 + UDP_HEADER_LEN]);
        out[l4 + UDP_HEADER_LEN..].copy_from_slice(&frame[payload]);
        let pseudo = match self.addresses {
            Addresses::V4 { src, dst, id } => {
                let header = &mut out[L3..l4];
                header[2..4].copy_from_slice(&((l4 - L3 + udp_len) as u16).to_be_bytes());
                header[4..6].copy_from_slice(&id.wrapping_add(index as u16).to_be_bytes());
                header[10..12].fill(0);
                let c = checksum::checksum(header);
                header[10..12].copy_from_slice(&c.to_be_bytes());
                checksum::ipv4_pseudo_header(src, dst, ipv4::PROTO_UDP, udp_len as u16)
            }
            Addresses::V6 { src, dst } => {
                out[L3 + 4..L3 + 6].copy_from_slice(&(udp_len as u16).to_be_bytes());
                checksum::ipv6_pseudo_header(&src, &dst, ipv6::PROTO_UDP, udp_len as u32)
            }
        };
        let udp = &mut out[l4..];
        udp[4..6].copy_from_slice(&(udp_len as u16).to_be_bytes());
        udp[6..8].fill(0);
        // 0 means "no checksum" in UDP (and is not allowed over IPv6): sent as its other form.
        let c = match !checksum::add(pseudo, checksum::sum(udp)) {
            0 => 0xffff,
            c => c,
        };
        udp[6..8].copy_from_slice(&c.to_be_bytes());
        len
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use etherparse::{NetSlice, PacketBuilder, SlicedPacket, TransportSlice};

    const SRC_MAC: [u8; 6] = [2, 0, 0, 0, 0, 1];
    const DST_MAC: [u8; 6] = [2, 0, 0, 0, 0, 2];
    const SRC4: [u8; 4] = [10, 0, 0, 1];
    const DST4: [u8; 4] = [10, 0, 0, 2];
    const SRC6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 1);
    const DST6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 2);

    fn payload(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 7 + i / 251) as u8).collect()
    }

    /// A GSO_UDP_L4 frame as a pod's kernel hands it over: one datagram's headers with the
    /// whole payload, the UDP checksum field holding the pseudo-header sum for the device to
    /// complete.
    fn gso_frame(v6: bool, data: &[u8], gso_size: u16) -> Vec<u8> {
        let builder = PacketBuilder::ethernet2(SRC_MAC, DST_MAC);
        let builder = if v6 { builder.ipv6(SRC6.octets(), DST6.octets(), 64) } else { builder.ipv4(SRC4, DST4, 64) };
        let mut frame = vec![0u8; vnet::LEN];
        builder.udp(40000, 443).write(&mut frame, data).unwrap();
        let l4 = L3 + if v6 { 40 } else { 20 };
        if !v6 {
            frame[L3 + 4..L3 + 6].copy_from_slice(&0xfffeu16.to_be_bytes()); // ID wraps at the third segment
            frame[L3 + 10..L3 + 12].fill(0);
            let c = checksum::checksum(&frame[L3..l4]);
            frame[L3 + 10..L3 + 12].copy_from_slice(&c.to_be_bytes());
        }
        let udp_len = (frame.len() - l4) as u16;
        let pseudo = if v6 {
            checksum::ipv6_pseudo_header(&SRC6, &DST6, 17, udp_len.into())
        } else {
            checksum::ipv4_pseudo_header(SRC4.into(), DST4.into(), 17, udp_len)
        };
        frame[l4 + 6..l4 + 8].copy_from_slice(&pseudo.to_be_bytes());
        VnetHeader {
            flags: vnet::FLAG_NEEDS_CSUM,
            gso_type: vnet::GSO_UDP_L4,
            hdr_len: (l4 + 8 - vnet::LEN) as u16,
            gso_size,
            csum_start: (l4 - vnet::LEN) as u16,
            csum_offset: 6,
        }
        .write(&mut frame);
        frame
    }

    /// Cuts `frame` into owned segments through one reused scratch buffer, as the egress does.
    fn cut(frame: &[u8]) -> Result<Vec<Vec<u8>>, UdpGsoError> {
        let gso = UdpGso::parse(frame)?;
        let mut scratch = vec![0u8; gso.max_segment_len()];
        Ok((0..gso.segments())
            .map(|i| {
                let n = gso.write_segment(frame, i, &mut scratch);
                assert_eq!(n, gso.segment_len(i));
                scratch[..n].to_vec()
            })
            .collect())
    }

    /// Parses every segment with etherparse and checks each field the segmentation sets;
    /// returns the payloads.
    fn check_segments(segments: &[Vec<u8>], v6: bool, gso_size: usize) -> Vec<u8> {
        let mut data = Vec::new();
        for (i, segment) in segments.iter().enumerate() {
            assert_eq!(
                VnetHeader::parse(&segment[..vnet::LEN], segment.len() - vnet::LEN).unwrap(),
                VnetHeader::default()
            );
            let p = SlicedPacket::from_ethernet(&segment[vnet::LEN..]).expect("a well-formed frame");
            let Some(TransportSlice::Udp(udp)) = p.transport else { panic!("segment {i} is not UDP") };
            let payload = udp.payload();
            assert!(payload.len() <= gso_size);
            if i + 1 < segments.len() {
                assert_eq!(payload.len(), gso_size, "every segment but the last is full");
            }
            assert_eq!(udp.length() as usize, 8 + payload.len(), "UDP length");
            assert_eq!((udp.source_port(), udp.destination_port()), (40000, 443));
            let expected = match p.net.unwrap() {
                NetSlice::Ipv4(ip) => {
                    assert!(!v6);
                    let h = ip.header().to_header();
                    assert_eq!(h.total_len as usize, segment.len() - L3, "IPv4 total length");
                    assert_eq!(h.identification, 0xfffeu16.wrapping_add(i as u16), "IPv4 identification");
                    assert_eq!(h.header_checksum, h.calc_header_checksum(), "IPv4 header checksum");
                    assert_eq!(h.time_to_live, 64);
                    udp.to_header().calc_checksum_ipv4(&h, payload).unwrap()
                }
                NetSlice::Ipv6(ip) => {
                    assert!(v6);
                    let h = ip.header().to_header();
                    assert_eq!(h.payload_length as usize, 8 + payload.len(), "IPv6 payload length");
                    udp.to_header().calc_checksum_ipv6(&h, payload).unwrap()
                }
                _ => panic!("not IP"),
            };
            assert_ne!(udp.checksum(), 0, "a UDP checksum is present");
            assert_eq!(udp.checksum(), expected, "UDP checksum of segment {i}");
            data.extend_from_slice(payload);
        }
        data
    }

    #[test]
    fn ipv4_and_ipv6_frames_are_cut_into_valid_datagrams_with_a_short_last_one() {
        for v6 in [false, true] {
            // 20 full segments and an odd last one of 999 bytes.
            let data = payload(20 * 1400 + 999);
            let frame = gso_frame(v6, &data, 1400);
            let segments = cut(&frame).unwrap();
            assert_eq!(segments.len(), 21, "v6 {v6}");
            assert_eq!(check_segments(&segments, v6, 1400), data, "the payloads, in order, are the original");
            assert_eq!(segments[20].len(), L3 + if v6 { 40 } else { 20 } + 8 + 999);
        }
    }

    #[test]
    fn a_64k_frame_and_exact_and_single_segment_cuts() {
        for v6 in [false, true] {
            let data = payload(65_535 - 20 - 8 - 40);
            let segments = cut(&gso_frame(v6, &data, 1400)).unwrap();
            assert_eq!(segments.len(), data.len().div_ceil(1400));
            assert_eq!(check_segments(&segments, v6, 1400), data);
            // A payload that is a whole number of segments: no short last one.
            let data = payload(3 * 1200);
            let segments = cut(&gso_frame(v6, &data, 1200)).unwrap();
            assert_eq!(segments.len(), 3);
            assert_eq!(check_segments(&segments, v6, 1200), data);
            // A segment size beyond the payload: one datagram.
            let data = payload(300);
            let segments = cut(&gso_frame(v6, &data, 1400)).unwrap();
            assert_eq!(segments.len(), 1);
            assert_eq!(check_segments(&segments, v6, 1400), data);
        }
    }

    #[test]
    fn malformed_frames_are_refused_without_panicking() {
        let good = gso_frame(false, &payload(5000), 1400);
        assert!(UdpGso::parse(&good).is_ok());
        let with = |mutate: &dyn Fn(&mut Vec<u8>)| {
            let mut frame = good.clone();
            mutate(&mut frame);
            UdpGso::parse(&frame).unwrap_err()
        };
        let vnet = |f: &mut Vec<u8>, edit: &dyn Fn(&mut VnetHeader)| {
            let mut h = VnetHeader::parse(&f[..vnet::LEN], f.len() - vnet::LEN).unwrap();
            edit(&mut h);
            h.write(f);
        };
        // The vnet header lying.
        assert_eq!(with(&|f| f[4..6].fill(0)), UdpGsoError::NotUdpGso, "segment size 0");
        assert_eq!(with(&|f| vnet(f, &|h| h.gso_type = vnet::GSO_TCPV4)), UdpGsoError::NotUdpGso);
        assert_eq!(with(&|f| vnet(f, &|h| h.csum_start += 2)), UdpGsoError::BadChecksumOffload);
        assert_eq!(with(&|f| vnet(f, &|h| h.csum_offset = 16)), UdpGsoError::BadChecksumOffload);
        assert_eq!(with(&|f| vnet(f, &|h| h.flags = 0)), UdpGsoError::BadChecksumOffload);
        assert_eq!(with(&|f| vnet(f, &|h| h.gso_size = 1)), UdpGsoError::TooManySegments);
        // Truncated anywhere in the headers.
        for len in [0, 5, vnet::LEN, vnet::LEN + 13, L3 + 10, L3 + 20, L3 + 27] {
            assert!(UdpGso::parse(&good[..len]).is_err(), "truncated to {len}");
        }
        // Cut short after the UDP header: the IP total length now lies.
        assert_eq!(UdpGso::parse(&good[..L3 + 28 + 100]).unwrap_err(), UdpGsoError::BadHeaders);
        // The IP header lying or not UDP.
        assert_eq!(with(&|f| f[L3 + 10] ^= 0xff), UdpGsoError::BadHeaders, "IPv4 header checksum");
        assert_eq!(with(&|f| f[L3 + 2..L3 + 4].copy_from_slice(&[0xff, 0xff])), UdpGsoError::BadHeaders);
        let reseal = |f: &mut Vec<u8>| {
            f[L3 + 10..L3 + 12].fill(0);
            let c = checksum::checksum(&f[L3..L3 + 20]);
            f[L3 + 10..L3 + 12].copy_from_slice(&c.to_be_bytes());
        };
        assert_eq!(
            with(&|f| {
                f[L3 + 9] = 6;
                reseal(f)
            }),
            UdpGsoError::NotUdp
        );
        assert_eq!(
            with(&|f| {
                f[L3 + 6] |= 0x20; // more fragments
                reseal(f)
            }),
            UdpGsoError::NotUdp
        );
        // Total length covering the UDP header only: nothing to cut.
        assert_eq!(
            with(&|f| {
                f[L3 + 2..L3 + 4].copy_from_slice(&28u16.to_be_bytes());
                reseal(f)
            }),
            UdpGsoError::NoPayload
        );
        assert_eq!(with(&|f| f[vnet::LEN + 13] = 0x06), UdpGsoError::NotUdp, "ARP");
        let v6 = gso_frame(true, &payload(5000), 1400);
        assert!(UdpGso::parse(&v6).is_ok());
        let mut bad = v6.clone();
        bad[L3 + 6] = 0; // a hop-by-hop header instead of UDP
        assert_eq!(UdpGso::parse(&bad).unwrap_err(), UdpGsoError::NotUdp);
        let mut bad = v6.clone();
        bad[L3 + 4..L3 + 6].copy_from_slice(&60000u16.to_be_bytes());
        assert_eq!(UdpGso::parse(&bad).unwrap_err(), UdpGsoError::BadHeaders);
        // Fuzz-ish: every single-byte corruption of the headers and every truncation either
        // parses into something that cuts without panicking, or is refused.
        for i in 0..L3 + 28 {
            for x in [0x01u8, 0x80, 0xff] {
                let mut f = good.clone();
                f[i] ^= x;
                if let Ok(gso) = UdpGso::parse(&f) {
                    let mut scratch = vec![0u8; gso.max_segment_len()];
                    for s in 0..gso.segments() {
                        assert_eq!(gso.write_segment(&f, s, &mut scratch), gso.segment_len(s));
                    }
                }
            }
        }
        for len in 0..good.len() {
            let _ = UdpGso::parse(&good[..len]);
        }
    }

    #[test]
    fn only_udp_l4_frames_are_taken_for_segmentation() {
        let frame = gso_frame(false, &payload(100), 40);
        assert!(is_udp_gso(&frame));
        let mut ecn = frame.clone();
        ecn[1] |= vnet::GSO_ECN;
        assert!(is_udp_gso(&ecn));
        for other in [vnet::GSO_NONE, vnet::GSO_TCPV4, vnet::GSO_UDP, vnet::GSO_TCPV6] {
            let mut f = frame.clone();
            f[1] = other;
            assert!(!is_udp_gso(&f), "{other}");
        }
        assert!(!is_udp_gso(&[0]));
    }
}
