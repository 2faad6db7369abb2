//! Why a frame was dropped: the datapath's reasons as the API names them, in the datapath's
//! order (`vswitch`'s `pipeline/drop.rs`; a count check and a name test keep the two equal).

use serde::{Deserialize, Serialize};

/// An enum with the list of its variants, in order.
macro_rules! listed {
    ($(#[$meta:meta])* pub enum $name:ident { $($(#[$variant_meta:meta])* $variant:ident,)* }) => {
        $(#[$meta])*
        pub enum $name {
            $($(#[$variant_meta])* $variant,)*
        }

        impl $name {
            /// Every variant, in the order declared.
            pub const ALL: &'static [$name] = &[$($name::$variant,)*];
        }
    };
}

listed! {
    /// Why the switch dropped a frame: the datapath's drop reasons, in its order, named as its
    /// metric labels (`vswitch_drops_total{reason="..."}`).
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
    #[serde(rename_all = "snake_case")]
    pub enum DropReason {
        BadVnetHeader,
        FrameTooShort,
        FrameTooLong,
        VlanTagged,
        #[serde(rename = "unsupported_ethertype")]
        UnsupportedEtherType,
        SpoofedSourceMac,
        NotOurMac,
        ArpMalformed,
        ArpSpoofed,
        ArpReplyFromPod,
        ArpOwnAddress,
        ArpNotOurs,
        Ipv4Truncated,
        Ipv4BadVersion,
        Ipv4BadHeaderLength,
        Ipv4BadTotalLength,
        Ipv4BadChecksum,
        Ipv6Truncated,
        Ipv6BadVersion,
        Ipv6BadExtensionHeaders,
        #[serde(rename = "ipv6_routing_header_0")]
        Ipv6RoutingHeader0,
        Ipv6AtomicFragment,
        FirstFragmentIncomplete,
        FragmentOverlapsHeaders,
        IpLengthMismatch,
        Ipv6Multicast,
        Ipv6LinkLocal,
        SpoofedSourceIp,
        TtlExpired,
        NdpMalformed,
        NdpSpoofed,
        NdpOwnAddress,
        NdpNotOurs,
        RaGuard,
        NoRoute,
        NeighborUnresolved,
        NeighborQueueFull,
        SlowPathFull,
        Hairpin,
        FragmentationNeeded,
        FragmentationUnsupported,
        PacketTooBig,
        IcmpRateLimited,
        PortDown,
        TxQueueFull,
        TxError,
        UdpGsoMalformed,
        RateLimited,
        RxOverflow,
    }
}

impl std::fmt::Display for DropReason {
    /// The name on the wire (`ttl_expired`).
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match serde_json::to_value(self) {
            Ok(serde_json::Value::String(name)) => f.pad(&name),
            _ => unreachable!("a unit variant serialises as its name"),
        }
    }
}
