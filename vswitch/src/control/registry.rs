//! The control core, sans I/O: ports, adjacencies, routes and uplink neighbours, and the
//! forwarding snapshot built from them.
//!
//! Nothing here opens a file, a socket or a device; the driver ([`super::Switch`]) does the I/O
//! (TAP queues, netlink, ARP frames, the state file) and hands the results in. That keeps every
//! rule of the registry testable on its own:
//! - a pod port owns its /32; static routes (from the configuration or the API) cannot replace
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
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use fib::{Fib, Ipv4Prefix};
use vswitch_api::api::{ApiError, Bandwidth, ErrorCode, LinkState, PodRef, PortSpec, RateLimit};

use crate::datapath::{Datapath, PortQueues, PortTotals, Snapshot};
use crate::neighbor::{Action, NeighborLimits, NeighborTable};
use crate::pipeline::{PortRateLimit, TokenBucket};
use crate::state::{Adjacency, ForwardingState, NextHop, PortId, PortInfo, PortRole, MAX_PORTS};
use crate::wire::MacAddr;

/// The host port's id: it is attached first and never removed.
pub const HOST_PORT: PortId = 0;

/// Where a route came from, which decides who may change it and whether it is saved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RouteOrigin {
    /// A pod port's /32, removed with the port.
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
    /// ARP requests to send (probes: sender 0.0.0.0).
    pub ask: Vec<Ipv4Addr>,
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
    ports: Vec<Option<PortRecord>>,
    adjacencies: Vec<Option<Adjacency>>,
    /// Freed slots with the generation that freed them, oldest first.
    free_adjacencies: VecDeque<(u32, u64)>,
    routes: BTreeMap<Ipv4Prefix, Route>,
    neighbors: NeighborTable,
    uplink: Option<PortId>,
    /// Attaches in flight: name -> address.
    pending: HashMap<String, Ipv4Addr>,
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

pub fn parse_prefix(prefix: &str) -> Result<Ipv4Prefix, ApiError> {
    prefix.parse().map_err(|e| invalid(format!("prefix '{prefix}': {e}")))
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
        let fib: Fib<Ipv4Addr> = Fib::new();
        let forwarding = ForwardingState {
            gateway_ip,
            gateway_mac,
            ports: Vec::new(),
            adjacencies: Vec::new(),
            fib: fib.reader(),
            neighbors: Default::default(),
        };
        Snapshot { generation: 0, forwarding, queues: Vec::new() }
    }

    pub fn generation(&self) -> u64 {
        self.generation
    }

    pub fn fib_routes(&self) -> usize {
        self.fib.len()
    }

    pub fn fib_memory(&self) -> usize {
        self.fib.memory().total()
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

    pub fn routes(&self) -> impl Iterator<Item = (&Ipv4Prefix, &Route)> {
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

    fn insert_route(&mut self, prefix: Ipv4Prefix, route: Route) {
        self.fib.insert(prefix, route.adjacency).expect("adjacency index in range");
        self.routes.insert(prefix, route);
    }

    /// Attaches the host port (id 0) with the configuration's routes.
    pub fn attach_host(
        &mut self,
        name: &str,
        mtu: u16,
        peer_mac: MacAddr,
        queues: PortQueues,
        routes: &[Ipv4Prefix],
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

    /// Attaches the uplink NIC: the connected subnet resolved by ARP, and the default route via
    /// the VPC gateway when there is one.
    pub fn attach_uplink(
        &mut self,
        name: &str,
        mtu: u16,
        (mac, ip): (MacAddr, Option<Ipv4Addr>),
        queues: PortQueues,
        subnet: Ipv4Prefix,
        gateway: Option<Ipv4Addr>,
    ) -> Result<PortId, ApiError> {
        let id = self.free_port_id()?;
        let info = PortInfo { id, name: name.into(), role: PortRole::Uplink { mac, ip }, mtu, rate_limit: None };
        let attachment = Attachment { ifname: name.into(), netns: None, netns_id: None, pod: None, bandwidth: None };
        // Attached at start, before any traffic: its counters start from zero.
        self.install(info, attachment, queues, NextHop::Arp { via: None }, PortTotals::default(), u64::MAX);
        let connected = self.record(id).adjacency;
        self.insert_route(subnet, Route { port: id, adjacency: connected, origin: RouteOrigin::Config });
        if let Some(gateway) = gateway {
            let next_hop = NextHop::Arp { via: Some(gateway) };
            let via = self.new_adjacency(Adjacency { port: id, src_mac: mac, next_hop, mtu }, u64::MAX);
            let default = parse_prefix("0.0.0.0/0").expect("valid");
            self.insert_route(default, Route { port: id, adjacency: via, origin: RouteOrigin::Config });
        }
        self.uplink = Some(id);
        self.publish();
        Ok(id)
    }

    /// Validates a pod port and reserves its name and address.
    pub fn reserve_pod(&mut self, spec: PortSpec) -> Result<PodReservation, ApiError> {
        let mut replaces = None;
        for p in self.ports() {
            let same_name = p.info.name == spec.name;
            let same_ip = matches!(p.info.role, PortRole::Pod { ip, .. } if ip == spec.ip);
            if !(same_name || same_ip) {
                continue;
            }
            // A port whose device vanished without a DEL gives way to the new attachment.
            if p.link == LinkState::Gone && replaces.is_none_or(|r| r == p.info.id) {
                replaces = Some(p.info.id);
            } else if same_name {
                return Err(ApiError::new(ErrorCode::Exists, format!("port '{}' already exists", spec.name)));
            } else {
                return Err(ApiError::new(
                    ErrorCode::Conflict,
                    format!("{} is already used by port '{}'", spec.ip, p.info.name),
                ));
            }
        }
        if self.pending.contains_key(&spec.name) {
            return Err(ApiError::new(ErrorCode::Exists, format!("port '{}' is being attached", spec.name)));
        }
        if let Some((other, _)) = self.pending.iter().find(|(_, ip)| **ip == spec.ip) {
            return Err(ApiError::new(ErrorCode::Conflict, format!("{} is being attached as port '{other}'", spec.ip)));
        }
        if spec.name.is_empty() || spec.name.len() > 256 {
            return Err(invalid("a port name has 1 to 256 characters"));
        }
        if !vswitch_api::tap::valid_name(&spec.ifname) {
            return Err(invalid(format!("'{}' is not an interface name", spec.ifname)));
        }
        if spec.mac.is_multicast() || spec.mac == MacAddr::ZERO {
            return Err(invalid(format!("{} is not a unicast MAC", spec.mac)));
        }
        let ip = spec.ip;
        if ip.is_unspecified() || ip.is_broadcast() || ip.is_multicast() || ip.is_loopback() || ip == self.gateway_ip {
            return Err(invalid(format!("{ip} cannot be a pod address")));
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
        self.pending.insert(spec.name.clone(), ip);
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
        let PortSpec { name, netns, ifname, ip, mac, pod, bandwidth, .. } = reservation.spec;
        let bucket = |r: Option<RateLimit>| r.map(|r| TokenBucket::new(r.rate_bps, r.burst_bits));
        let rate_limit =
            bandwidth.map(|b| Arc::new(PortRateLimit { ingress: bucket(b.ingress), egress: bucket(b.egress) }));
        let info = PortInfo { id, name, role: PortRole::Pod { ip, mac }, mtu: reservation.mtu, rate_limit };
        let attachment = Attachment { ifname, netns: Some(netns), netns_id, pod, bandwidth };
        self.install(info, attachment, queues, NextHop::Mac(mac), baseline(id), quiesced);
        let adjacency = self.record(id).adjacency;
        self.insert_route(Ipv4Prefix::host(ip), Route { port: id, adjacency, origin: RouteOrigin::Port });
        self.publish();
        Ok(id)
    }

    /// Removes a port and every route through it; frees its adjacencies.
    fn remove_port(&mut self, id: PortId) -> PortRecord {
        let record = self.ports[id as usize].take().expect("live port id");
        let gone: Vec<Ipv4Prefix> = self.routes.iter().filter(|(_, r)| r.port == id).map(|(p, _)| *p).collect();
        for prefix in gone {
            if let Some(route) = self.routes.remove(&prefix) {
                self.fib.remove(&prefix);
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
        let owned: Vec<Ipv4Prefix> = self
            .routes
            .iter()
            .filter(|(_, r)| r.port == id && r.origin == RouteOrigin::Port)
            .map(|(p, _)| *p)
            .collect();
        for prefix in owned {
            self.fib.remove(&prefix);
            self.routes.remove(&prefix);
        }
        self.publish();
    }

    /// Routes `prefix` out of `port` (an API route).
    pub fn add_route(&mut self, prefix: Ipv4Prefix, port: &str, replace: bool) -> Result<(), ApiError> {
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

    pub fn del_route(&mut self, prefix: Ipv4Prefix) -> Result<(), ApiError> {
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
        self.routes.remove(&prefix);
        self.fib.remove(&prefix);
        self.publish();
        Ok(())
    }

    /// The routes added through the API (the ones the state file keeps), as (prefix, port).
    pub fn api_routes(&self) -> Vec<(Ipv4Prefix, String)> {
        self.routes
            .iter()
            .filter(|(_, r)| r.origin == RouteOrigin::Api)
            .map(|(p, r)| (*p, self.record(r.port).info.name.clone()))
            .collect()
    }

    /// A packet waiting for `next_hop`'s MAC on the uplink.
    pub fn on_unresolved(&mut self, next_hop: Ipv4Addr, packet: Vec<u8>, now: Duration) -> UplinkWork {
        match self.neighbors.mac_of(next_hop) {
            Some(mac) => UplinkWork { send: vec![(packet, mac)], ..Default::default() },
            None => {
                let actions = self.neighbors.on_miss(next_hop, packet, now);
                Self::work(actions)
            }
        }
    }

    /// An ARP reply heard on the uplink.
    pub fn on_arp_reply(&mut self, ip: Ipv4Addr, mac: MacAddr, now: Duration) -> UplinkWork {
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
            ports: self.ports.iter().map(|p| p.as_ref().map(|p| p.info.clone())).collect(),
            adjacencies: self.adjacencies.clone(),
            fib: self.fib.reader(),
            neighbors: Arc::new(self.neighbors.resolved()),
        };
        let queues = self.ports.iter().map(|p| p.as_ref().and_then(|p| p.queues.clone())).collect();
        self.datapath.snapshot.store(Arc::new(Snapshot { generation: self.generation, forwarding, queues }));
        self.fib.publish();
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
            ip: Ipv4Addr::from(ip),
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
            (PortSpec { ip: Ipv4Addr::new(169, 254, 1, 1), ..spec("x", [0; 4]) }, "the gateway"),
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
        r.attach_uplink("eth1", 1500, (nic, None), queues(), subnet, Some(Ipv4Addr::new(10, 10, 0, 1))).unwrap();
        let now = Duration::from_secs(1);
        let work = r.on_unresolved(Ipv4Addr::new(10, 10, 0, 9), vec![0; 64], now);
        assert_eq!(work.ask, vec![Ipv4Addr::new(10, 10, 0, 9)]);
        assert!(work.send.is_empty());
        let generation = r.generation();
        let peer = MacAddr([2, 0, 0, 0, 0, 10]);
        let work = r.on_arp_reply(Ipv4Addr::new(10, 10, 0, 9), peer, now);
        assert_eq!(work.send.len(), 1, "the waiting packet goes out");
        assert!(r.generation() > generation, "a resolved neighbour is published");
        assert_eq!(r.datapath.snapshot.load().forwarding.neighbors.get(&Ipv4Addr::new(10, 10, 0, 9)), Some(&peer));
        assert_eq!(r.on_unresolved(Ipv4Addr::new(10, 10, 0, 9), vec![0; 64], now).send.len(), 1);
    }
}
