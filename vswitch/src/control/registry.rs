//! The control core, sans I/O: ports, adjacencies, routes and uplink neighbours, and the
//! forwarding snapshot built from them.
//!
//! Nothing here opens a file, a socket or a device; the driver ([`super::Switch`]) does the I/O
//! (TAP queues, netlink, ARP frames, the state file) and hands the results in. That keeps every
//! rule of the registry testable on its own:
//! - a pod port owns its /32 and /128; static routes (from the configuration or the API) cannot replace
//!   it, and an API route replaces another only when asked to;
//! - publishing stores the snapshot (ports, adjacencies) before the FIB, so a route a worker finds
//!   always has its adjacency;
//! - adjacency slots are reused, but only once every worker has loaded a snapshot published after
//!   the slot was freed ([`Registry::quiesced`]): a worker still holding an older FIB view can then
//!   only meet an empty slot (a counted drop), never somebody else's adjacency. So the table stays
//!   as large as the most ports ever attached at once, however many come and go.
//! - an attach in flight reserves its name and address, so concurrent attaches (whose I/O runs
//!   without the registry's lock) cannot both take them.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use fib::{AnyPrefix, Fib, Ipv4Prefix, Ipv6Prefix};
use vswitch_api::api::{ApiError, Bandwidth, ErrorCode, LinkState, PodRef, PortSpec, RateLimit};

use crate::datapath::{Datapath, PortQueues, PortTotals, Snapshot};
use crate::neighbor::{Action, NeighborLimits, NeighborTable};
use crate::state::{Adjacency, ForwardingState, NextHop, PortId, PortInfo, PortRole, MAX_PORTS};
use crate::state::{PortRateLimit, TokenBucket};
use crate::wire::MacAddr;

/// The host port's id: it is attached first and never removed.
pub const HOST_PORT: PortId = 0;

/// Where a route came from, which decides who may change it and whether it is saved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RouteOrigin {
    /// A pod port's /32 or /128, removed with the port.
    Port,
    /// From vswitchd.toml (host port routes, the uplink's subnet and default); made again at
    /// every start, not saved.
    Config,
    /// Added through the API; saved in the state file and restored at start.
    Api,
}

impl RouteOrigin {
    pub fn name(self) -> &'static str {
        match self {
            RouteOrigin::Port => "port",
            RouteOrigin::Config => "config",
            RouteOrigin::Api => "api",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Route {
    pub port: PortId,
    pub adjacency: u32,
    pub origin: RouteOrigin,
}

/// How a port was attached: what listing and persistence need besides the forwarding info.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attachment {
    pub ifname: String,
    /// A pod's namespace path, and the namespace's identity (device, inode) when attached, to
    /// notice the path disappearing or naming another namespace.
    pub netns: Option<PathBuf>,
    pub netns_id: Option<(u64, u64)>,
    pub pod: Option<PodRef>,
    pub bandwidth: Option<Bandwidth>,
}

pub struct PortRecord {
    pub info: PortInfo,
    pub attachment: Attachment,
    /// None once the device is gone: the workers stop polling it.
    pub queues: Option<PortQueues>,
    pub adjacency: u32,
    pub link: LinkState,
    /// Counters at attach time (ids are reused; counters are per id).
    pub baseline: PortTotals,
}

impl std::fmt::Debug for PortRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PortRecord").field("info", &self.info).field("link", &self.link).finish_non_exhaustive()
    }
}

/// A pod port that passed validation and holds its reservation; the driver opens its queues
/// and then calls [`Registry::commit_pod`] or [`Registry::cancel`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodReservation {
    pub spec: PortSpec,
    pub mtu: u16,
    /// A port whose device is gone that held this name or address; committing replaces it.
    pub replaces: Option<PortId>,
}

/// What the neighbour machinery wants done on the uplink.
#[derive(Debug, Default)]
pub struct UplinkWork {
    /// Neighbours to ask for: ARP requests (probes: sender 0.0.0.0) or neighbour solicitations.
    pub ask: Vec<IpAddr>,
    /// Packets (vnet header first) to send to `mac`.
    pub send: Vec<(Vec<u8>, MacAddr)>,
    pub unresolved_drops: u64,
    pub queue_full_drops: u64,
}

pub struct Registry {
    gateway_ip: Ipv4Addr,
    gateway_mac: MacAddr,
    pod_mtu: u16,
    datapath: Arc<Datapath>,
    fib: Fib<Ipv4Addr>,
    fib6: Fib<Ipv6Addr>,
    ports: Vec<Option<PortRecord>>,
    adjacencies: Vec<Option<Adjacency>>,
    /// Freed slots with the generation that freed them, oldest first.
    free_adjacencies: VecDeque<(u32, u64)>,
    routes: BTreeMap<AnyPrefix, Route>,
    neighbors: NeighborTable,
    uplink: Option<PortId>,
    /// Attaches in flight: name -> addresses.
    pending: HashMap<String, PodAddresses>,
    generation: u64,
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registry").field("generation", &self.generation).finish_non_exhaustive()
    }
}

fn invalid(message: impl std::fmt::Display) -> ApiError {
    ApiError::new(ErrorCode::Invalid, message)
}

fn no_such_port(name: &str) -> ApiError {
    ApiError::new(ErrorCode::NotFound, format!("no port named '{name}'"))
}

pub fn parse_prefix(prefix: &str) -> Result<AnyPrefix, ApiError> {
    prefix.parse().map_err(|e| invalid(format!("prefix '{prefix}': {e}")))
}

/// A pod's addresses: either family or both.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PodAddresses {
    pub ip: Option<Ipv4Addr>,
    pub ipv6: Option<Ipv6Addr>,
}

impl PodAddresses {
    pub fn of(spec: &PortSpec) -> PodAddresses {
        PodAddresses { ip: spec.ip, ipv6: spec.ipv6 }
    }

    fn of_role(role: &PortRole) -> Option<PodAddresses> {
        match *role {
            PortRole::Pod { ip, ipv6, .. } => Some(PodAddresses { ip, ipv6 }),
            _ => None,
        }
    }

    /// The address both have, if any.
    fn shared_with(&self, other: &PodAddresses) -> Option<IpAddr> {
        match (self.ip, other.ip, self.ipv6, other.ipv6) {
            (Some(a), Some(b), ..) if a == b => Some(a.into()),
            (.., Some(a), Some(b)) if a == b => Some(a.into()),
            _ => None,
        }
    }

    /// The routes a pod port owns.
    pub fn host_prefixes(&self) -> impl Iterator<Item = AnyPrefix> {
        let v4 = self.ip.map(|ip| AnyPrefix::V4(Ipv4Prefix::host(ip)));
        v4.into_iter().chain(self.ipv6.map(|ip| AnyPrefix::V6(Ipv6Prefix::host(ip))))
    }

    pub fn iter(&self) -> impl Iterator<Item = IpAddr> {
        self.ip.map(IpAddr::V4).into_iter().chain(self.ipv6.map(IpAddr::V6))
    }
}

/// The uplink NIC: its MAC and addresses, the connected subnets, and the VPC gateways (a default
/// route per family through each).
#[derive(Debug, Clone, Default)]
pub struct UplinkSpec {
    pub mac: MacAddr,
    pub ip: Option<Ipv4Addr>,
    pub ipv6: Option<Ipv6Addr>,
    pub subnets: Vec<AnyPrefix>,
    pub gateways: Vec<IpAddr>,
}

impl Registry {
    /// An empty registry publishing into `datapath`.
    pub fn new(gateway_ip: Ipv4Addr, gateway_mac: MacAddr, pod_mtu: u16, datapath: Arc<Datapath>) -> Registry {
        Registry {
            gateway_ip,
            gateway_mac,
            pod_mtu,
            datapath,
            fib: Fib::new(),
            fib6: Fib::new(),
            ports: Vec::new(),
            adjacencies: Vec::new(),
            free_adjacencies: VecDeque::new(),
            routes: BTreeMap::new(),
            neighbors: NeighborTable::new(NeighborLimits::default()),
            uplink: None,
            pending: HashMap::new(),
            generation: 0,
        }
    }

    /// The snapshot a worker starts from before anything is attached.
    pub fn empty_snapshot(gateway_ip: Ipv4Addr, gateway_mac: MacAddr) -> Snapshot {
        let forwarding = ForwardingState {
            gateway_ip,
            gateway_mac,
            gateway_ip6: gateway_mac.link_local(),
            ports: Vec::new(),
            adjacencies: Vec::new(),
            fib: Fib::new().reader(),
            fib6: Fib::new().reader(),
            neighbors: Default::default(),
        };
        Snapshot { generation: 0, forwarding, queues: Vec::new() }
    }

    pub fn generation(&self) -> u64 {
        self.generation
    }

    pub fn fib_routes(&self) -> usize {
        self.fib.len() + self.fib6.len()
    }

    pub fn fib_memory(&self) -> usize {
        self.fib.memory().total() + self.fib6.memory().total()
    }

    pub fn adjacency_slots(&self) -> usize {
        self.adjacencies.len()
    }

    pub fn uplink(&self) -> Option<&PortRecord> {
        self.uplink.map(|id| self.record(id))
    }

    pub fn ports(&self) -> impl Iterator<Item = &PortRecord> {
        self.ports.iter().flatten()
    }

    pub fn routes(&self) -> impl Iterator<Item = (&AnyPrefix, &Route)> {
        self.routes.iter()
    }

    pub fn adjacency(&self, index: u32) -> Option<&Adjacency> {
        self.adjacencies.get(index as usize)?.as_ref()
    }

    pub fn neighbors(&self) -> &NeighborTable {
        &self.neighbors
    }

    pub fn record(&self, id: PortId) -> &PortRecord {
        self.ports[id as usize].as_ref().expect("live port id")
    }

    pub fn port_id(&self, name: &str) -> Option<PortId> {
        self.ports().find(|p| p.info.name == name).map(|p| p.info.id)
    }

    fn free_port_id(&self) -> Result<PortId, ApiError> {
        (1..MAX_PORTS as PortId)
            .find(|&id| self.ports.get(id as usize).is_none_or(|p| p.is_none()))
            .ok_or_else(|| ApiError::new(ErrorCode::Exhausted, format!("no free port id (at most {MAX_PORTS} ports)")))
    }

    /// A slot for a new adjacency: a freed one every worker has moved past, else a new one.
    /// `quiesced` is the oldest generation any worker still uses ([`Datapath::quiesced`]).
    fn new_adjacency(&mut self, adjacency: Adjacency, quiesced: u64) -> u32 {
        let slot = match self.free_adjacencies.front() {
            Some(&(slot, freed_at)) if freed_at < quiesced => {
                self.free_adjacencies.pop_front();
                self.adjacencies[slot as usize] = Some(adjacency);
                slot
            }
            _ => {
                self.adjacencies.push(Some(adjacency));
                (self.adjacencies.len() - 1) as u32
            }
        };
        slot
    }

    /// Frees a slot; it is reused once no worker can hold a FIB view that points at it. The
    /// generation recorded is the next publish's, the first whose FIB no longer has its routes.
    fn free_adjacency(&mut self, slot: u32) {
        if let Some(entry) = self.adjacencies.get_mut(slot as usize) {
            if entry.take().is_some() {
                self.free_adjacencies.push_back((slot, self.generation + 1));
            }
        }
    }

    fn install(
        &mut self,
        info: PortInfo,
        attachment: Attachment,
        queues: PortQueues,
        next_hop: NextHop,
        baseline: PortTotals,
        quiesced: u64,
    ) -> PortId {
        let id = info.id;
        // The switch's own MAC toward the port: the NIC's on the uplink, the gateway's elsewhere.
        let src_mac = match info.role {
            PortRole::Uplink { mac, .. } => mac,
            PortRole::Pod { .. } | PortRole::Host { .. } => self.gateway_mac,
        };
        let adjacency = self.new_adjacency(Adjacency { port: id, src_mac, next_hop, mtu: info.mtu }, quiesced);
        if self.ports.len() <= id as usize {
            self.ports.resize_with(id as usize + 1, || None);
        }
        self.ports[id as usize] =
            Some(PortRecord { info, attachment, queues: Some(queues), adjacency, link: LinkState::Up, baseline });
        id
    }

    fn insert_route(&mut self, prefix: AnyPrefix, route: Route) {
        match prefix {
            AnyPrefix::V4(p) => self.fib.insert(p, route.adjacency),
            AnyPrefix::V6(p) => self.fib6.insert(p, route.adjacency),
        }
        .expect("adjacency index in range");
        self.routes.insert(prefix, route);
    }

    fn remove_route(&mut self, prefix: &AnyPrefix) -> Option<Route> {
        match prefix {
            AnyPrefix::V4(p) => self.fib.remove(p),
            AnyPrefix::V6(p) => self.fib6.remove(p),
        };
        self.routes.remove(prefix)
    }

    /// Attaches the host port (id 0) with the configuration's routes.
    pub fn attach_host(
        &mut self,
        name: &str,
        mtu: u16,
        peer_mac: MacAddr,
        queues: PortQueues,
        routes: &[AnyPrefix],
        baseline: PortTotals,
    ) -> PortId {
        let info =
            PortInfo { id: HOST_PORT, name: name.into(), role: PortRole::Host { peer_mac }, mtu, rate_limit: None };
        let attachment = Attachment { ifname: name.into(), netns: None, netns_id: None, pod: None, bandwidth: None };
        self.install(info, attachment, queues, NextHop::Mac(peer_mac), baseline, u64::MAX);
        let adjacency = self.record(HOST_PORT).adjacency;
        for prefix in routes {
            self.insert_route(*prefix, Route { port: HOST_PORT, adjacency, origin: RouteOrigin::Config });
        }
        self.publish();
        HOST_PORT
    }

    /// Attaches the uplink NIC: the connected subnets resolved by ARP and neighbour discovery,
    /// and a default route via each VPC gateway.
    pub fn attach_uplink(
        &mut self,
        name: &str,
        mtu: u16,
        spec: UplinkSpec,
        queues: PortQueues,
    ) -> Result<PortId, ApiError> {
        let id = self.free_port_id()?;
        let UplinkSpec { mac, ip, ipv6, subnets, gateways } = spec;
        let role = PortRole::Uplink { mac, ip, ipv6 };
        let info = PortInfo { id, name: name.into(), role, mtu, rate_limit: None };
        let attachment = Attachment { ifname: name.into(), netns: None, netns_id: None, pod: None, bandwidth: None };
        // Attached at start, before any traffic: its counters start from zero.
        self.install(info, attachment, queues, NextHop::Resolve { via: None }, PortTotals::default(), u64::MAX);
        let connected = self.record(id).adjacency;
        for subnet in subnets {
            self.insert_route(subnet, Route { port: id, adjacency: connected, origin: RouteOrigin::Config });
        }
        for gateway in gateways {
            let next_hop = NextHop::Resolve { via: Some(gateway) };
            let via = self.new_adjacency(Adjacency { port: id, src_mac: mac, next_hop, mtu }, u64::MAX);
            let default = parse_prefix(if gateway.is_ipv4() { "0.0.0.0/0" } else { "::/0" }).expect("valid");
            self.insert_route(default, Route { port: id, adjacency: via, origin: RouteOrigin::Config });
        }
        self.uplink = Some(id);
        self.publish();
        Ok(id)
    }

    /// Validates a pod port and reserves its name and address.
    pub fn reserve_pod(&mut self, spec: PortSpec) -> Result<PodReservation, ApiError> {
        let mut replaces = None;
        let addresses = PodAddresses::of(&spec);
        for p in self.ports() {
            let same_name = p.info.name == spec.name;
            let same_ip = PodAddresses::of_role(&p.info.role).and_then(|a| a.shared_with(&addresses));
            if !same_name && same_ip.is_none() {
                continue;
            }
            // A port whose device vanished without a DEL gives way to the new attachment.
            if p.link == LinkState::Gone && replaces.is_none_or(|r| r == p.info.id) {
                replaces = Some(p.info.id);
            } else if same_name {
                return Err(ApiError::new(ErrorCode::Exists, format!("port '{}' already exists", spec.name)));
            } else if let Some(ip) = same_ip {
                return Err(ApiError::new(
                    ErrorCode::Conflict,
                    format!("{ip} is already used by port '{}'", p.info.name),
                ));
            }
        }
        if self.pending.contains_key(&spec.name) {
            return Err(ApiError::new(ErrorCode::Exists, format!("port '{}' is being attached", spec.name)));
        }
        if let Some((other, ip)) = self.pending.iter().find_map(|(n, a)| Some((n, a.shared_with(&addresses)?))) {
            return Err(ApiError::new(ErrorCode::Conflict, format!("{ip} is being attached as port '{other}'")));
        }
        if spec.name.is_empty() || spec.name.len() > 256 {
            return Err(invalid("a port name has 1 to 256 characters"));
        }
        if !vswitch_host::tap::valid_name(&spec.ifname) {
            return Err(invalid(format!("'{}' is not an interface name", spec.ifname)));
        }
        if spec.mac.is_multicast() || spec.mac == MacAddr::ZERO {
            return Err(invalid(format!("{} is not a unicast MAC", spec.mac)));
        }
        if addresses.ip.is_none() && addresses.ipv6.is_none() {
            return Err(invalid("a pod port needs an IPv4 or an IPv6 address"));
        }
        if let Some(ip) = addresses.ip {
            if ip.is_unspecified()
                || ip.is_broadcast()
                || ip.is_multicast()
                || ip.is_loopback()
                || ip == self.gateway_ip
            {
                return Err(invalid(format!("{ip} cannot be a pod address")));
            }
        }
        if let Some(ip) = addresses.ipv6 {
            // Link-local addresses are the link's own (the pod has its MAC's), never routed.
            if ip.is_unspecified() || ip.is_multicast() || ip.is_loopback() || ip.is_unicast_link_local() {
                return Err(invalid(format!("{ip} cannot be a pod address")));
            }
        }
        let mtu = spec.mtu.unwrap_or(self.pod_mtu);
        if !(576..=9000).contains(&mtu) {
            return Err(invalid(format!("MTU {mtu} is outside 576..=9000")));
        }
        if let Some(b) = &spec.bandwidth {
            for limit in [b.ingress, b.egress].into_iter().flatten() {
                if limit.rate_bps == 0 || limit.burst_bits == 0 {
                    return Err(invalid("a bandwidth limit needs a rate and a burst above 0"));
                }
            }
        }
        if self.ports().count() + self.pending.len() >= MAX_PORTS - 1 && replaces.is_none() {
            return Err(ApiError::new(ErrorCode::Exhausted, format!("no free port id (at most {MAX_PORTS} ports)")));
        }
        self.pending.insert(spec.name.clone(), addresses);
        Ok(PodReservation { spec, mtu, replaces })
    }

    /// Gives up a reservation (the driver's I/O failed).
    pub fn cancel(&mut self, reservation: &PodReservation) {
        self.pending.remove(&reservation.spec.name);
    }

    /// Installs a reserved pod port with its opened queues and publishes it.
    pub fn commit_pod(
        &mut self,
        reservation: PodReservation,
        queues: PortQueues,
        netns_id: Option<(u64, u64)>,
        baseline: impl FnOnce(PortId) -> PortTotals,
        quiesced: u64,
    ) -> Result<PortId, ApiError> {
        self.pending.remove(&reservation.spec.name);
        if let Some(old) = reservation.replaces {
            self.remove_port(old);
        }
        let id = self.free_port_id()?;
        let PortSpec { name, netns, ifname, ip, ipv6, mac, pod, bandwidth, .. } = reservation.spec;
        let bucket = |r: Option<RateLimit>| r.map(|r| TokenBucket::new(r.rate_bps, r.burst_bits));
        let rate_limit =
            bandwidth.map(|b| Arc::new(PortRateLimit { ingress: bucket(b.ingress), egress: bucket(b.egress) }));
        let info = PortInfo { id, name, role: PortRole::Pod { ip, ipv6, mac }, mtu: reservation.mtu, rate_limit };
        let attachment = Attachment { ifname, netns: Some(netns), netns_id, pod, bandwidth };
        self.install(info, attachment, queues, NextHop::Mac(mac), baseline(id), quiesced);
        let adjacency = self.record(id).adjacency;
        for prefix in (PodAddresses { ip, ipv6 }).host_prefixes() {
            self.insert_route(prefix, Route { port: id, adjacency, origin: RouteOrigin::Port });
        }
        self.publish();
        Ok(id)
    }

    /// Removes a port and every route through it; frees its adjacencies.
    fn remove_port(&mut self, id: PortId) -> PortRecord {
        let record = self.ports[id as usize].take().expect("live port id");
        let gone: Vec<AnyPrefix> = self.routes.iter().filter(|(_, r)| r.port == id).map(|(p, _)| *p).collect();
        for prefix in gone {
            if let Some(route) = self.remove_route(&prefix) {
                if route.adjacency != record.adjacency {
                    self.free_adjacency(route.adjacency);
                }
            }
        }
        self.free_adjacency(record.adjacency);
        record
    }

    /// Detaches a pod port; the caller removes its host route and maybe its device.
    pub fn detach(&mut self, name: &str) -> Result<PortRecord, ApiError> {
        let id = self.port_id(name).ok_or_else(|| no_such_port(name))?;
        if !matches!(self.record(id).info.role, PortRole::Pod { .. }) {
            return Err(invalid(format!("'{name}' is not a pod port; only pod ports can be removed")));
        }
        let record = self.remove_port(id);
        self.publish();
        Ok(record)
    }

    /// Marks a pod port's device gone: the workers stop polling it and its address stops being
    /// forwarded to, but the port stays listed until a DEL (or GC) removes it.
    pub fn mark_gone(&mut self, id: PortId) {
        let Some(Some(record)) = self.ports.get_mut(id as usize) else { return };
        if record.link == LinkState::Gone {
            return;
        }
        record.link = LinkState::Gone;
        record.queues = None;
        let owned: Vec<AnyPrefix> = self
            .routes
            .iter()
            .filter(|(_, r)| r.port == id && r.origin == RouteOrigin::Port)
            .map(|(p, _)| *p)
            .collect();
        for prefix in owned {
            self.remove_route(&prefix);
        }
        self.publish();
    }

    /// Routes `prefix` out of `port` (an API route).
    pub fn add_route(&mut self, prefix: AnyPrefix, port: &str, replace: bool) -> Result<(), ApiError> {
        let id = self.port_id(port).ok_or_else(|| no_such_port(port))?;
        if self.record(id).link == LinkState::Gone {
            return Err(ApiError::new(ErrorCode::Conflict, format!("port '{port}' has no device")));
        }
        match self.routes.get(&prefix) {
            Some(r) if r.origin == RouteOrigin::Port => {
                return Err(ApiError::new(
                    ErrorCode::Conflict,
                    format!("route {prefix} belongs to a port; remove the port instead"),
                ))
            }
            Some(_) if !replace => {
                return Err(ApiError::new(
                    ErrorCode::Exists,
                    format!("a route for {prefix} exists; replace it explicitly"),
                ))
            }
            _ => {}
        }
        let adjacency = self.record(id).adjacency;
        self.insert_route(prefix, Route { port: id, adjacency, origin: RouteOrigin::Api });
        self.publish();
        Ok(())
    }

    pub fn del_route(&mut self, prefix: AnyPrefix) -> Result<(), ApiError> {
        match self.routes.get(&prefix) {
            None => return Err(ApiError::new(ErrorCode::NotFound, format!("no route for {prefix}"))),
            Some(r) if r.origin == RouteOrigin::Port => {
                return Err(ApiError::new(
                    ErrorCode::Conflict,
                    format!("route {prefix} belongs to a port; remove the port instead"),
                ))
            }
            Some(_) => {}
        }
        self.remove_route(&prefix);
        self.publish();
        Ok(())
    }

    /// The routes added through the API (the ones the state file keeps), as (prefix, port).
    pub fn api_routes(&self) -> Vec<(AnyPrefix, String)> {
        self.routes
            .iter()
            .filter(|(_, r)| r.origin == RouteOrigin::Api)
            .map(|(p, r)| (*p, self.record(r.port).info.name.clone()))
            .collect()
    }

    /// A packet waiting for `next_hop`'s MAC on the uplink.
    pub fn on_unresolved(&mut self, next_hop: IpAddr, packet: Vec<u8>, now: Duration) -> UplinkWork {
        match self.neighbors.mac_of(next_hop) {
            Some(mac) => UplinkWork { send: vec![(packet, mac)], ..Default::default() },
            None => {
                let actions = self.neighbors.on_miss(next_hop, packet, now);
                Self::work(actions)
            }
        }
    }

    /// An ARP reply or neighbour advertisement heard on the uplink.
    pub fn on_neighbor_reply(&mut self, ip: IpAddr, mac: MacAddr, now: Duration) -> UplinkWork {
        let (waiting, changed) = self.neighbors.on_reply(ip, mac, now);
        if changed {
            self.publish();
        }
        UplinkWork { send: waiting.into_iter().map(|p| (p, mac)).collect(), ..Default::default() }
    }

    /// Neighbour timers: retries, failures, re-confirmation.
    pub fn on_neighbor_tick(&mut self, now: Duration) -> UplinkWork {
        let (actions, changed) = self.neighbors.on_tick(now);
        if changed {
            self.publish();
        }
        Self::work(actions)
    }

    fn work(actions: Vec<Action>) -> UplinkWork {
        let mut work = UplinkWork::default();
        for action in actions {
            match action {
                Action::Ask(ip) => work.ask.push(ip),
                Action::Dropped { unresolved, queue_full } => {
                    work.unresolved_drops += unresolved as u64;
                    work.queue_full_drops += queue_full as u64;
                }
            }
        }
        work
    }

    /// Publishes ports, adjacencies and neighbours as one snapshot, then the FIB. The snapshot
    /// goes first, so a route published by the FIB always finds its adjacency. The caller wakes
    /// the workers.
    pub fn publish(&mut self) {
        self.generation += 1;
        let forwarding = ForwardingState {
            gateway_ip: self.gateway_ip,
            gateway_mac: self.gateway_mac,
            gateway_ip6: self.gateway_mac.link_local(),
            ports: self.ports.iter().map(|p| p.as_ref().map(|p| p.info.clone())).collect(),
            adjacencies: self.adjacencies.clone(),
            fib: self.fib.reader(),
            fib6: self.fib6.reader(),
            neighbors: Arc::new(self.neighbors.resolved()),
        };
        let queues = self.ports.iter().map(|p| p.as_ref().and_then(|p| p.queues.clone())).collect();
        self.datapath.snapshot.store(Arc::new(Snapshot { generation: self.generation, forwarding, queues }));
        self.fib.publish();
        self.fib6.publish();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::port::{MemoryPort, PortQueue};
    use vswitch_api::api::RateLimit;

    fn registry() -> Registry {
        let gateway_ip = Ipv4Addr::new(169, 254, 1, 1);
        let gateway_mac = MacAddr::local_from(gateway_ip.octets());
        let (tx, _rx) = tokio::sync::mpsc::channel(1);
        let datapath = Arc::new(Datapath::new(Registry::empty_snapshot(gateway_ip, gateway_mac), tx, 0));
        let mut r = Registry::new(gateway_ip, gateway_mac, 1500, datapath);
        let routes = [parse_prefix("0.0.0.0/0").unwrap()];
        r.attach_host("vsw0", 1500, MacAddr([2, 0, 0, 0, 0, 1]), queues(), &routes, PortTotals::default());
        r
    }

    fn queues() -> PortQueues {
        let q: Arc<dyn PortQueue> = Arc::new(MemoryPort::default());
        vec![q].into()
    }

    fn spec(name: &str, ip: [u8; 4]) -> PortSpec {
        PortSpec {
            name: name.into(),
            netns: format!("/run/netns/{name}").into(),
            ifname: "eth0".into(),
            ip: Some(Ipv4Addr::from(ip)),
            ipv6: None,
            mac: MacAddr::local_from(ip),
            mtu: None,
            pod: None,
            bandwidth: None,
        }
    }

    fn attach(r: &mut Registry, name: &str, ip: [u8; 4], quiesced: u64) -> PortId {
        let reservation = r.reserve_pod(spec(name, ip)).unwrap();
        r.commit_pod(reservation, queues(), None, |_| PortTotals::default(), quiesced).unwrap()
    }

    /// Where the published state sends `ip`: the port the FIB's adjacency names.
    fn published_port(r: &Registry, ip: [u8; 4]) -> Option<PortId> {
        let snapshot = r.datapath.snapshot.load();
        let index = snapshot.forwarding.fib.pin().lookup(Ipv4Addr::from(ip))?;
        snapshot.forwarding.adjacency(index).map(|a| a.port)
    }

    #[test]
    fn attach_and_detach_publish_the_pod_route_and_remove_it() {
        let mut r = registry();
        let before = r.generation();
        let id = attach(&mut r, "a", [10, 0, 0, 5], u64::MAX);
        assert!(r.generation() > before);
        assert_eq!(published_port(&r, [10, 0, 0, 5]), Some(id));
        assert_eq!(published_port(&r, [10, 0, 0, 6]), Some(HOST_PORT), "the default goes to the node");
        let record = r.detach("a").unwrap();
        assert_eq!(record.info.id, id);
        assert_eq!(published_port(&r, [10, 0, 0, 5]), Some(HOST_PORT));
        assert_eq!(r.detach("a").unwrap_err().code, ErrorCode::NotFound);
        assert_eq!(r.detach("vsw0").unwrap_err().code, ErrorCode::Invalid, "the host port stays");
    }

    #[test]
    fn names_and_addresses_are_unique_including_attaches_in_flight() {
        let mut r = registry();
        attach(&mut r, "a", [10, 0, 0, 5], u64::MAX);
        assert_eq!(r.reserve_pod(spec("a", [10, 0, 0, 6])).unwrap_err().code, ErrorCode::Exists);
        assert_eq!(r.reserve_pod(spec("b", [10, 0, 0, 5])).unwrap_err().code, ErrorCode::Conflict);
        let pending = r.reserve_pod(spec("c", [10, 0, 0, 7])).unwrap();
        assert_eq!(r.reserve_pod(spec("c", [10, 0, 0, 8])).unwrap_err().code, ErrorCode::Exists);
        assert_eq!(r.reserve_pod(spec("d", [10, 0, 0, 7])).unwrap_err().code, ErrorCode::Conflict);
        r.cancel(&pending);
        assert!(r.reserve_pod(spec("d", [10, 0, 0, 7])).is_ok(), "a cancelled reservation frees its address");
        for (bad, why) in [
            (PortSpec { ip: Some(Ipv4Addr::new(169, 254, 1, 1)), ..spec("x", [0; 4]) }, "the gateway"),
            (PortSpec { ip: None, ..spec("x", [10, 0, 0, 9]) }, "no address at all"),
            (PortSpec { ipv6: Some("fe80::1".parse().unwrap()), ..spec("x", [10, 0, 0, 9]) }, "a link-local address"),
            (PortSpec { mac: MacAddr::BROADCAST, ..spec("x", [10, 0, 0, 9]) }, "a multicast MAC"),
            (PortSpec { mtu: Some(100), ..spec("x", [10, 0, 0, 9]) }, "a tiny MTU"),
            (PortSpec { ifname: "a/b".into(), ..spec("x", [10, 0, 0, 9]) }, "a bad ifname"),
            (
                PortSpec {
                    bandwidth: Some(Bandwidth {
                        ingress: Some(RateLimit { rate_bps: 0, burst_bits: 1 }),
                        egress: None,
                    }),
                    ..spec("x", [10, 0, 0, 9])
                },
                "a zero rate",
            ),
        ] {
            assert_eq!(r.reserve_pod(bad).unwrap_err().code, ErrorCode::Invalid, "{why}");
        }
    }

    #[test]
    fn port_routes_cannot_be_replaced_and_api_routes_only_when_asked() {
        let mut r = registry();
        attach(&mut r, "a", [10, 0, 0, 5], u64::MAX);
        let host_route = parse_prefix("10.0.0.5/32").unwrap();
        assert_eq!(r.add_route(host_route, "vsw0", true).unwrap_err().code, ErrorCode::Conflict);
        assert_eq!(r.del_route(host_route).unwrap_err().code, ErrorCode::Conflict);
        let services = parse_prefix("10.96.0.0/12").unwrap();
        r.add_route(services, "vsw0", false).unwrap();
        assert_eq!(r.add_route(services, "a", false).unwrap_err().code, ErrorCode::Exists);
        r.add_route(services, "a", true).unwrap();
        assert_eq!(published_port(&r, [10, 96, 0, 1]), r.port_id("a"));
        assert_eq!(r.api_routes(), vec![(services, "a".to_string())]);
        assert_eq!(r.add_route(services, "nope", true).unwrap_err().code, ErrorCode::NotFound);
        // The config's default route is replaceable only on request, too.
        let default = parse_prefix("0.0.0.0/0").unwrap();
        assert_eq!(r.add_route(default, "a", false).unwrap_err().code, ErrorCode::Exists);
        // Removing the port takes its API routes with it.
        r.detach("a").unwrap();
        assert!(r.api_routes().is_empty());
        assert_eq!(r.del_route(services).unwrap_err().code, ErrorCode::NotFound);
    }

    #[test]
    fn adjacency_slots_are_reused_only_after_the_workers_moved_on() {
        let mut r = registry();
        let id = attach(&mut r, "a", [10, 0, 0, 5], u64::MAX);
        let slot = r.record(id).adjacency;
        let freed_at = r.generation();
        r.detach("a").unwrap();
        // A worker still on the generation that had the route: the slot must not be reused.
        let id = attach(&mut r, "b", [10, 0, 0, 6], freed_at);
        assert_ne!(r.record(id).adjacency, slot);
        // Every worker has loaded a later snapshot: now it is.
        r.detach("b").unwrap();
        let quiesced = r.generation() + 1;
        let id = attach(&mut r, "c", [10, 0, 0, 7], quiesced);
        assert_eq!(r.record(id).adjacency, slot);
    }

    #[test]
    fn ten_thousand_attach_detach_cycles_leave_the_tables_as_after_the_first() {
        let mut r = registry();
        let mut after_first = None;
        let mut first_publish = Duration::ZERO;
        let mut last_publish = Duration::ZERO;
        for i in 0..10_000u32 {
            let ip = (Ipv4Addr::new(10, 1, 0, 0).to_bits() + i % 4000).to_be_bytes();
            let quiesced = r.generation() + 1;
            attach(&mut r, "cycling", ip, quiesced);
            let start = std::time::Instant::now();
            r.detach("cycling").unwrap();
            let took = start.elapsed();
            if i == 0 {
                after_first = Some((r.adjacency_slots(), r.fib_routes(), r.ports().count()));
                first_publish = took;
            }
            last_publish = took;
        }
        assert_eq!(Some((r.adjacency_slots(), r.fib_routes(), r.ports().count())), after_first);
        // Not a timing test: the table sizes above are the property; this only guards against a
        // publish that grows with the number of cycles (it would be ~10,000x).
        assert!(last_publish < first_publish * 50 + Duration::from_millis(5), "{first_publish:?} -> {last_publish:?}");
    }

    #[test]
    fn bandwidth_limits_reach_the_published_port() {
        let mut r = registry();
        let limit = RateLimit { rate_bps: 10_000_000, burst_bits: 1_000_000 };
        let spec =
            PortSpec { bandwidth: Some(Bandwidth { ingress: Some(limit), egress: None }), ..spec("a", [10, 0, 0, 5]) };
        let reservation = r.reserve_pod(spec).unwrap();
        let id = r.commit_pod(reservation, queues(), None, |_| PortTotals::default(), u64::MAX).unwrap();
        let snapshot = r.datapath.snapshot.load();
        let limits = snapshot.forwarding.port(id).unwrap().rate_limit.clone().expect("a limit");
        assert_eq!(
            limits.ingress.as_ref().map(|b| (b.bits_per_second(), b.burst_bits())),
            Some((10_000_000, 1_000_000))
        );
        assert!(limits.egress.is_none());
        assert!(snapshot.forwarding.port(HOST_PORT).unwrap().rate_limit.is_none());
    }

    #[test]
    fn a_gone_port_stops_forwarding_and_gives_way_to_a_new_attachment() {
        let mut r = registry();
        let id = attach(&mut r, "a", [10, 0, 0, 5], u64::MAX);
        r.mark_gone(id);
        assert_eq!(r.record(id).link, LinkState::Gone);
        assert!(r.record(id).queues.is_none());
        assert_eq!(published_port(&r, [10, 0, 0, 5]), Some(HOST_PORT));
        assert!(r.datapath.snapshot.load().queues[id as usize].is_none(), "workers stop polling it");
        // The address is free for a new pod: the gone port is replaced.
        let new = attach(&mut r, "b", [10, 0, 0, 5], u64::MAX);
        assert_eq!(published_port(&r, [10, 0, 0, 5]), Some(new));
        assert!(r.port_id("a").is_none());
    }

    #[test]
    fn neighbours_resolve_through_the_registry_and_publish() {
        let mut r = registry();
        let nic = MacAddr([2, 0, 0, 0, 0, 9]);
        let subnet = parse_prefix("10.10.0.0/16").unwrap();
        let subnet6 = parse_prefix("fd00:10::/64").unwrap();
        let gateways = vec![IpAddr::from([10, 10, 0, 1]), "fd00:10::1".parse().unwrap()];
        let uplink = UplinkSpec { mac: nic, subnets: vec![subnet, subnet6], gateways, ..Default::default() };
        r.attach_uplink("eth1", 1500, uplink, queues()).unwrap();
        let now = Duration::from_secs(1);
        for vm in [IpAddr::from([10, 10, 0, 9]), "fd00:10::9".parse().unwrap()] {
            let work = r.on_unresolved(vm, vec![0; 64], now);
            assert_eq!(work.ask, vec![vm]);
            assert!(work.send.is_empty());
            let generation = r.generation();
            let peer = MacAddr([2, 0, 0, 0, 0, 10]);
            let work = r.on_neighbor_reply(vm, peer, now);
            assert_eq!(work.send.len(), 1, "the waiting packet goes out");
            assert!(r.generation() > generation, "a resolved neighbour is published");
            assert_eq!(r.datapath.snapshot.load().forwarding.neighbors.get(&vm), Some(&peer));
            assert_eq!(r.on_unresolved(vm, vec![0; 64], now).send.len(), 1);
        }
        // Both defaults go through the uplink's gateways.
        let routes: Vec<String> = r.routes().map(|(p, _)| p.to_string()).collect();
        assert!(routes.contains(&"0.0.0.0/0".to_string()) && routes.contains(&"::/0".to_string()), "{routes:?}");
    }
}
