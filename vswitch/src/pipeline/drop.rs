//! Why a packet was dropped: one named counter per reason.

macro_rules! drop_reasons {
    ($($variant:ident => $name:literal, $help:literal;)*) => {
        /// Every reason the pipeline drops a packet. Each has a counter; none is logged per packet.
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        #[repr(u8)]
        pub enum DropReason {
            $($variant,)*
        }

        impl DropReason {
            pub const ALL: &'static [DropReason] = &[$(DropReason::$variant,)*];
            pub const COUNT: usize = Self::ALL.len();

            /// The metric label, e.g. `ipv4_bad_checksum`.
            pub fn name(self) -> &'static str {
                match self {
                    $(DropReason::$variant => $name,)*
                }
            }

            pub fn help(self) -> &'static str {
                match self {
                    $(DropReason::$variant => $help,)*
                }
            }
        }
    };
}

drop_reasons! {
    BadVnetHeader => "bad_vnet_header", "virtio_net_hdr inconsistent with the frame";
    FrameTooShort => "frame_too_short", "shorter than an Ethernet header";
    FrameTooLong => "frame_too_long", "longer than the read buffer (a 64 KB GSO frame and its headers): refused whole";
    VlanTagged => "vlan_tagged", "802.1Q/802.1ad tagged frames are not switched";
    UnsupportedEtherType => "unsupported_ethertype", "neither IPv4, IPv6 nor ARP";
    SpoofedSourceMac => "spoofed_source_mac", "Ethernet source is not the port's MAC";
    NotOurMac => "not_our_mac", "IP frame not addressed to the switch's MAC on that port";
    ArpMalformed => "arp_malformed", "ARP that is not a well-formed Ethernet/IPv4 request or reply";
    ArpSpoofed => "arp_spoofed", "ARP sender MAC or IP is not the port's own";
    ArpReplyFromPod => "arp_reply_from_pod", "ARP reply from a pod (the switch never asks pods)";
    ArpOwnAddress => "arp_own_address", "ARP for the asker's own IP, unanswered so duplicate detection passes";
    ArpNotOurs => "arp_not_ours", "ARP on the host or uplink for an address the switch does not answer for";
    Ipv4Truncated => "ipv4_truncated", "shorter than an IPv4 header";
    Ipv4BadVersion => "ipv4_bad_version", "IP version field is not 4";
    Ipv4BadHeaderLength => "ipv4_bad_header_length", "IHL below 5 or beyond the packet";
    Ipv4BadTotalLength => "ipv4_bad_total_length", "total length below the header or beyond the frame";
    Ipv4BadChecksum => "ipv4_bad_checksum", "IPv4 header checksum does not verify";
    Ipv6Truncated => "ipv6_truncated", "shorter than an IPv6 header, or payload length beyond the frame";
    Ipv6BadVersion => "ipv6_bad_version", "IP version field is not 6";
    Ipv6BadExtensionHeaders => "ipv6_bad_extension_headers", "IPv6 extension header chain truncated, malformed, or longer than 8 headers";
    Ipv6RoutingHeader0 => "ipv6_routing_header_0", "IPv6 Routing Header type 0 with segments left (RFC 5095 deprecated it: one packet bounces between hosts as often as it lists them)";
    Ipv6AtomicFragment => "ipv6_atomic_fragment", "IPv6 atomic fragment (offset 0, no more fragments) from a pod: no stack has sent one since RFC 8200 (RFC 8021)";
    FirstFragmentIncomplete => "first_fragment_incomplete", "first fragment without the whole header chain through the upper-layer header (RFC 7112; for IPv4 the transport header, RFC 1858)";
    FragmentOverlapsHeaders => "fragment_overlaps_headers", "later fragment whose offset lands inside the headers its first fragment holds (RFC 5722, RFC 1858): the overlap visible without reassembly";
    IpLengthMismatch => "ip_length_mismatch", "bytes past the IP length that cannot be trimmed: in a GSO frame (never padded), or holding the checksum the vnet header asks to complete";
    Ipv6Multicast => "ipv6_multicast", "IPv6 multicast (MLD reports and the like) other than neighbour discovery: not switched";
    Ipv6LinkLocal => "ipv6_link_local", "IPv6 packet from or to a link-local address other than neighbour discovery: not routed off the link";
    SpoofedSourceIp => "spoofed_source_ip", "IP source is not the pod's own address (for IPv6, nor its link-local address)";
    TtlExpired => "ttl_expired", "IPv4 TTL or IPv6 hop limit 0 or 1 on arrival (time exceeded sent)";
    NdpMalformed => "ndp_malformed", "neighbour discovery message with a hop limit not 255, a bad checksum, a fragment header, or malformed options";
    NdpSpoofed => "ndp_spoofed", "neighbour discovery from a pod naming an address or MAC that is not its own";
    NdpOwnAddress => "ndp_own_address", "neighbour solicitation for the asker's own address, unanswered so duplicate address detection passes";
    NdpNotOurs => "ndp_not_ours", "neighbour discovery the switch does not answer: solicitations for others' addresses on the host or uplink, advertisements from pods, router solicitations";
    RaGuard => "ra_guard", "router advertisement or redirect from a pod (RA guard)";
    NoRoute => "no_route", "no FIB entry or adjacency for the destination";
    NeighborUnresolved => "neighbor_unresolved", "the uplink next hop did not answer ARP or neighbour solicitation";
    NeighborQueueFull => "neighbor_queue_full", "too many packets already waiting for that next hop to be resolved";
    SlowPathFull => "slow_path_full", "the queue to the control plane (neighbour resolution and learning) was full";
    Hairpin => "hairpin", "the route points back out of the arrival port";
    FragmentationNeeded => "fragmentation_needed", "DF set and larger than the egress MTU (fragmentation-needed sent)";
    FragmentationUnsupported => "fragmentation_unsupported", "larger than the egress MTU without DF (the switch does not fragment)";
    PacketTooBig => "packet_too_big", "IPv6 packet (or GSO segment) larger than the egress MTU (packet too big sent)";
    IcmpRateLimited => "icmp_rate_limited", "ICMP and ICMPv6 errors not sent because of the rate limit (the packets count under their own reason)";
    PortDown => "port_down", "the egress port is gone";
    TxQueueFull => "tx_queue_full", "the egress TAP queue was full";
    TxError => "tx_error", "write to the egress port failed";
    UdpGsoMalformed => "udp_gso_malformed", "a UDP GSO frame that had to be segmented for an egress unable to take it whole was inconsistent (truncated or non-UDP headers, checksum offsets not at the UDP header, lengths beyond the frame, over 128 segments): dropped whole";
    RateLimited => "rate_limited", "over the port's bandwidth limit (kubernetes.io/ingress-bandwidth or egress-bandwidth)";
    RxOverflow => "rx_overflow", "dropped by the kernel before the switch read it: the port's receive buffer was full (the uplink reports these)";
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique_metric_labels() {
        let mut names: Vec<_> = DropReason::ALL.iter().map(|r| r.name()).collect();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), DropReason::COUNT);
        assert!(names.iter().all(|n| n.chars().all(|c| c.is_ascii_lowercase() || c == '_' || c.is_ascii_digit())));
    }
}
