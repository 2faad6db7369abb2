//! The control protocol: one JSON [`Request`] per line on vswitchd's unix socket, one
//! [`Reply`] per line back.
//!
//! `{"op":"add_port","name":"pod1","netns":"/run/netns/pod1","ifname":"eth0","ip":"10.10.1.5","mac":"02:00:0a:0a:01:05"}`
//! is answered `{"ok":true,"result":{...}}` or
//! `{"ok":false,"error":{"code":"exists","message":"port 'pod1' already exists"}}`. Clients
//! decide what an error means by its [`ErrorCode`] only; the message is for people and may be
//! reworded. A malformed request gets an `invalid` error on its own line; the connection and
//! the daemon carry on.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::MacAddr;

mod drop_reason;
mod ipam_view;

pub use drop_reason::*;
pub use ipam_view::*;

/// The longest request line the daemon reads; a longer one is refused and the connection closed.
pub const MAX_REQUEST_BYTES: usize = 1 << 20;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
pub enum Request {
    /// Attach a pod's existing TAP. Answered with the new [`PortView`].
    AddPort(PortSpec),
    /// Detach a port; with `remove_device`, also delete its TAP afterwards (in the background:
    /// the reply does not wait for the kernel to unregister the device).
    DelPort {
        name: String,
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        remove_device: bool,
    },
    /// Route `prefix` (e.g. `10.20.0.0/16`) out of port `port`. An existing route is an
    /// `exists` error unless `replace` is set.
    AddRoute {
        prefix: String,
        port: String,
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        replace: bool,
    },
    DelRoute {
        prefix: String,
    },
    /// A cheap liveness answer: [`StatusView`].
    Status,
    ListPorts,
    ListRoutes,
    ListNeighbors,
    Counters,
    /// Run a frame (hex, Ethernet onwards) through the pipeline as if it arrived on `port`.
    Trace {
        port: String,
        frame: String,
    },
    /// Build a frame from a pod to an address and run it through the pipeline.
    TraceFlow(FlowSpec),
    /// Recent drops with sequence numbers from `after` on ([`DropsView`]). Asking turns sampling
    /// on for a few seconds; a follower asks again with `next`.
    Drops {
        #[serde(default)]
        after: u64,
    },
    /// Cluster IPAM: the addresses of an attachment, one per family asked for (the ones it has,
    /// `ips` if asked for, a sticky pod's own, or ones from the node's warm pools). Answered
    /// with an [`AddressView`].
    IpamAssign(AssignSpec),
    /// Gives an attachment's address back (to the pool after the reuse delay, or held for a
    /// sticky pod). Answered with a [`ReleasedView`]; releasing twice is fine.
    IpamRelease {
        owner: Attachment,
    },
    /// The attachment's address, or `not_found`.
    IpamLookup {
        owner: Attachment,
    },
    /// Releases every address of this node held by an attachment not in `keep` (CNI GC).
    IpamGc {
        keep: Vec<Attachment>,
    },
    /// Pools, nodes, warm pools, sticky and quarantined addresses: [`IpamView`].
    Ipam,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AssignSpec {
    pub owner: Attachment,
    pub netns: PathBuf,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod: Option<PodRef>,
    /// Specific addresses, at most one per family (runtimeConfig.ips / CNI_ARGS IP=).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ips: Vec<IpAddr>,
    /// The families wanted; `None`: every family the cluster's pools hold.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub families: Option<IpFamilies>,
    /// The pod's annotations ask for a sticky address (sent only then: see [`crate::sticky`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sticky: Option<crate::sticky::StickyRequest>,
}

/// Which address families a pod gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum IpFamilies {
    Ipv4,
    Ipv6,
    Dual,
}

impl IpFamilies {
    pub fn has_ipv4(self) -> bool {
        self != IpFamilies::Ipv6
    }

    pub fn has_ipv6(self) -> bool {
        self != IpFamilies::Ipv4
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DropsView {
    pub samples: Vec<DropSampleView>,
    /// The `after` for the next request.
    pub next: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DropSampleView {
    pub seq: u64,
    /// Milliseconds since the Unix epoch.
    pub unix_ms: u64,
    /// The port the dropped frame came from, and its pod.
    pub port: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod: Option<PodRef>,
    pub reason: DropReason,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub src: Option<IpAddr>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dst: Option<IpAddr>,
    /// `tcp`, `udp`, `icmp` or the protocol number.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub src_port: Option<u16>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dst_port: Option<u16>,
}

/// A flow to trace: from a pod (its port name, or `NAMESPACE/POD`) to an address.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FlowSpec {
    pub from: String,
    pub to: IpAddr,
    pub protocol: FlowProtocol,
    /// The IP packet's size in bytes (default: a small packet of the protocol).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<u16>,
    /// Send it as a GSO super-frame (TCP or UDP), as a pod's kernel hands TSO frames over.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub gso: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum FlowProtocol {
    Tcp { port: u16 },
    Udp { port: u16 },
    Icmp,
}

/// A pod port as the CNI plugin asks for it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PortSpec {
    /// Unique per attachment; the plugin uses `CONTAINER_ID:IFNAME`.
    pub name: String,
    pub netns: PathBuf,
    pub ifname: String,
    /// The pod's addresses: at least one of the two.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip: Option<Ipv4Addr>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ipv6: Option<Ipv6Addr>,
    pub mac: MacAddr,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtu: Option<u16>,
    /// The Kubernetes pod this port belongs to, from the runtime's CNI_ARGS.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod: Option<PodRef>,
    /// Traffic limits (kubernetes.io/ingress-bandwidth and egress-bandwidth).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bandwidth: Option<Bandwidth>,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PodRef {
    pub namespace: String,
    pub name: String,
}

/// The port name of an attachment in vswitchd: `CONTAINER_ID:IFNAME`.
pub fn port_name(owner: &Attachment) -> String {
    format!("{}:{}", owner.container_id, owner.ifname)
}

/// One network attachment as the runtime names it (CNI's container ID and interface name).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Attachment {
    #[serde(rename = "containerID")]
    pub container_id: String,
    pub ifname: String,
}

impl std::fmt::Display for PodRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// Rates in bits per second and bursts in bits, as CNI's `bandwidth` capability gives them.
/// Ingress is traffic into the pod, egress traffic from it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Bandwidth {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ingress: Option<RateLimit>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub egress: Option<RateLimit>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimit {
    pub rate_bps: u64,
    pub burst_bits: u64,
}

/// What kind of error, for programs. Stable: clients branch on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// The request is malformed or names impossible values.
    Invalid,
    /// The named port or route does not exist.
    NotFound,
    /// A port of that name, or that route, exists already.
    Exists,
    /// The request collides with something else (an address another port holds, a route a port
    /// owns).
    Conflict,
    /// The daemon cannot take more (ports).
    Exhausted,
    /// The daemon could not do it now (a netlink or file error); retrying may work.
    Unavailable,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{message} ({code:?})")]
pub struct ApiError {
    pub code: ErrorCode,
    pub message: String,
}

impl ApiError {
    pub fn new(code: ErrorCode, message: impl std::fmt::Display) -> ApiError {
        ApiError { code, message: message.to_string() }
    }
}

/// One reply line. `T` is the request's result type ([`Response`] on the daemon's side; the
/// specific view on the client's).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Reply<T> {
    pub ok: bool,
    #[serde(default = "Option::default", skip_serializing_if = "Option::is_none")]
    pub result: Option<T>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<ApiError>,
}

impl<T> Reply<T> {
    pub fn from_result(result: Result<T, ApiError>) -> Reply<T> {
        match result {
            Ok(value) => Reply { ok: true, result: Some(value), error: None },
            Err(error) => Reply { ok: false, result: None, error: Some(error) },
        }
    }
}

/// Every result the daemon sends; serialised without a tag (the request says what to expect).
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(untagged)]
pub enum Response {
    Done,
    Port(Box<PortView>),
    Ports(Vec<PortView>),
    Routes(Vec<RouteView>),
    Neighbors(Vec<NeighborView>),
    Counters(CountersView),
    Status(StatusView),
    Trace(TraceView),
    Drops(DropsView),
    Address(AddressView),
    Released(ReleasedView),
    Ipam(Box<IpamView>),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "role", rename_all = "snake_case")]
pub enum PortRole {
    /// A pod's eth0: may only send from `ip`, `ipv6` (and its link-local address) and `mac`.
    Pod {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        ip: Option<Ipv4Addr>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        ipv6: Option<Ipv6Addr>,
        mac: MacAddr,
    },
    /// The node's own stack; `peer_mac` is the kernel side's MAC.
    Host { peer_mac: MacAddr },
    /// A NIC dedicated to pod traffic on the VPC subnet.
    Uplink { mac: MacAddr },
}

/// Whether a port's device is there.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LinkState {
    Up,
    /// The TAP (or its namespace) disappeared without a DEL; the port forwards nothing.
    Gone,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PortCounters {
    pub rx_packets: u64,
    /// Ethernet frame bytes, as `ip -s link` counts them (no virtio-net header).
    pub rx_bytes: u64,
    pub tx_packets: u64,
    pub tx_bytes: u64,
    /// Frames received from the port that the switch dropped (`vswitchctl drops` says why).
    #[serde(default)]
    pub rx_dropped: u64,
    /// UDP GSO frames the switch cut into datagrams for this port, which could not take them
    /// whole (its kernel refused USO); the datagrams count in `tx_packets`.
    #[serde(default)]
    pub tx_segmented: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PortView {
    pub id: u16,
    pub name: String,
    #[serde(flatten)]
    pub role: PortRole,
    pub mtu: u16,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub netns: Option<PathBuf>,
    pub ifname: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod: Option<PodRef>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bandwidth: Option<Bandwidth>,
    pub link: LinkState,
    pub counters: PortCounters,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RouteView {
    pub prefix: String,
    pub port: String,
    /// A MAC, `arp <via>` or `ndp <via>`, or `arp`/`ndp` (each destination on the connected
    /// subnet).
    pub next_hop: String,
    pub mtu: u16,
    pub origin: RouteOrigin,
}

/// Where a route came from: `port` (a pod's /32 or /128, removed with it), `config` (from
/// vswitchd.toml) or `api`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RouteOrigin {
    Port,
    Config,
    Api,
}

impl std::fmt::Display for RouteOrigin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.pad(match self {
            RouteOrigin::Port => "port",
            RouteOrigin::Config => "config",
            RouteOrigin::Api => "api",
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NeighborView {
    pub ip: IpAddr,
    pub mac: Option<MacAddr>,
    pub port: String,
    pub state: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CountersView {
    pub ports: Vec<(String, PortCounters)>,
    /// Every reason, with how many frames it dropped.
    pub drops: Vec<(DropReason, u64)>,
    pub fib_routes: usize,
    pub neighbors: usize,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatusView {
    pub version: String,
    pub uptime_seconds: u64,
    pub ports: usize,
    pub routes: usize,
    pub workers: usize,
    pub generation: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TraceView {
    /// Each pipeline stage and what it decided, in words.
    pub steps: Vec<(String, String)>,
    pub verdict: String,
    /// The route that matched the destination: prefix, port, next hop.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub route: Option<String>,
    /// The frame as it leaves (or the ICMP error sent back), in words and in hex.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output_hex: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_parse_and_unknown_ones_are_errors() {
        let r: Request = serde_json::from_str(
            r#"{"op":"add_port","name":"p","netns":"/run/netns/p","ifname":"eth0","ip":"10.0.0.2","mac":"02:00:00:00:00:02"}"#,
        )
        .unwrap();
        assert!(matches!(r, Request::AddPort(PortSpec { mtu: None, pod: None, .. })));
        assert_eq!(serde_json::from_str::<Request>(r#"{"op":"list_ports"}"#).unwrap(), Request::ListPorts);
        assert!(serde_json::from_str::<Request>(r#"{"op":"reboot"}"#).is_err());
        assert!(serde_json::from_str::<Request>(r#"{"op":"del_port"}"#).is_err());
        assert!(serde_json::from_str::<Request>(r#"{"op":"del_port","name":"p","x":1}"#).is_err());
        assert!(serde_json::from_str::<Request>(
            r#"{"op":"add_port","name":"p","netns":"/n","ifname":"eth0","ip":"10.0.0.2","mac":"02:00:00:00:00:02","x":1}"#
        )
        .is_err());
        assert!(serde_json::from_str::<Request>(
            r#"{"op":"add_port","name":"p","netns":"/n","ifname":"eth0","ip":"10.0.0.300","mac":"02:00:00:00:00:02"}"#
        )
        .is_err());
    }

    #[test]
    fn replies_carry_codes_and_round_trip() {
        let error = Reply::<Response>::from_result(Err(ApiError::new(ErrorCode::NotFound, "no port named 'x'")));
        let line = serde_json::to_string(&error).unwrap();
        assert_eq!(line, r#"{"ok":false,"error":{"code":"not_found","message":"no port named 'x'"}}"#);
        let back: Reply<serde_json::Value> = serde_json::from_str(&line).unwrap();
        assert_eq!(back.error.unwrap().code, ErrorCode::NotFound);
        let done = serde_json::to_string(&Reply::from_result(Ok(Response::Done))).unwrap();
        assert_eq!(done, r#"{"ok":true,"result":null}"#);
        let back: Reply<()> = serde_json::from_str(&done).unwrap();
        assert!(back.ok);
    }

    #[test]
    fn enums_are_their_names_on_the_wire() {
        for reason in DropReason::ALL {
            let name = serde_json::to_string(reason).unwrap();
            assert_eq!(name, format!("\"{reason}\""));
            assert_eq!(serde_json::from_str::<DropReason>(&name).unwrap(), *reason);
        }
        assert_eq!(DropReason::UnsupportedEtherType.to_string(), "unsupported_ethertype");
        assert_eq!(format!("{:<8}|", DropReason::Hairpin), "hairpin |", "padded as a string");
        for (origin, name) in [(RouteOrigin::Port, "port"), (RouteOrigin::Config, "config"), (RouteOrigin::Api, "api")]
        {
            assert_eq!(serde_json::to_string(&origin).unwrap(), format!("\"{name}\""));
            assert_eq!(origin.to_string(), name);
        }
        assert!(serde_json::from_str::<DropReason>("\"no_such_reason\"").is_err());
    }
}
