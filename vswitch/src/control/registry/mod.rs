//! The control core, sans I/O: ports, adjacencies, routes and uplink neighbours, and the
//! forwarding snapshot built from them.
//!
//! Nothing here opens a file, a socket or a device, nor touches the datapath: the driver
//! (`control::driver`) does the I/O (TAP queues, netlink, ARP frames, the state file), hands the
//! results and the time in, and publishes the [`Publication`] each change returns. That keeps
//! every rule of the registry testable on its own:
//! - a pod port owns its /32 and /128; static routes (from the configuration or the API) cannot replace
//!   it, and an API route replaces another only when asked to;
//! - a publication is stored before the FIB's staged changes are made visible
//!   ([`Registry::publish_fibs`]), so a route a worker finds always has its adjacency;
//! - adjacency slots are reused, but only once every worker has loaded a snapshot published after
//!   the slot was freed (the caller passes that generation in: `Datapath::quiesced`): a worker
//!   still holding an older FIB view can then only meet an empty slot (a counted drop), never
//!   somebody else's adjacency. So the table stays as large as the most ports ever attached at
//!   once, however many come and go.
//! - an attach in flight reserves its name and address, so concurrent attaches (whose I/O runs
//!   without the registry's lock) cannot both take them.

mod error;
mod pod;
mod publication;
mod records;
#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::Arc;
use std::time::Duration;

use fib::{AnyPrefix, Fib, Ipv4Prefix, Ipv6Prefix};

pub use error::{InvalidPod, RegistryError};
pub use pod::{BandwidthLimits, PodAddresses, PodName, PodSpec, Rate};
pub use publication::{Publication, Published};
pub use records::{Attachment, LinkState, PodReservation, PortRecord, Route, RouteOrigin, UplinkSpec, UplinkWork};

use crate::datapath::{PortQueues, PortTotals, Snapshot};
use crate::neighbor::{Action, NeighborLimits, NeighborTable};
use crate::state::{Adjacency, ForwardingState, NextHop, PortId, PortInfo, PortRole, MAX_PORTS};
use crate::state::{PortRateLimit, TokenBucket};
use crate::wire::MacAddr;

/// The host port's id: it is attached first and never removed.
pub const HOST_PORT: PortId = 0;

pub struct Registry {
    gateway_ip: Ipv4Addr,
    gateway_mac: MacAddr,
    pod_mtu: u16,
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

/// The default route of `address`'s family.
pub fn default_route(address: IpAddr) -> AnyPrefix {
    match address {
        IpAddr::V4(_) => AnyPrefix::V4(Ipv4Prefix::new(Ipv4Addr::UNSPECIFIED, 0).expect("valid")),
        IpAddr::V6(_) => AnyPrefix::V6(Ipv6Prefix::new(Ipv6Addr::UNSPECIFIED, 0).expect("valid")),
    }
}

impl Registry {
    /// An empty registry; its first publication has generation 1.
    pub fn new(gateway_ip: Ipv4Addr, gateway_mac: MacAddr, pod_mtu: u16) -> Registry {
        Registry {
            gateway_ip,
            gateway_mac,
            pod_mtu,
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

    fn free_port_id(&self) -> Result<PortId, RegistryError> {
        (1..MAX_PORTS as PortId)
            .find(|&id| self.ports.get(id as usize).is_none_or(|p| p.is_none()))
            .ok_or(RegistryError::NoFreePortId)
    }

    /// A slot for a new adjacency: a freed one every worker has moved past, else a new one.
    /// `quiesced` is the oldest generation any worker still uses (`Datapath::quiesced`).
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
    ) -> Publication {
        let info =
            PortInfo { id: HOST_PORT, name: name.into(), role: PortRole::Host { peer_mac }, mtu, rate_limit: None };
        let attachment = Attachment { ifname: name.into(), netns: None, netns_id: None, pod: None, bandwidth: None };
        self.install(info, attachment, queues, NextHop::Mac(peer_mac), baseline, u64::MAX);
        let adjacency = self.record(HOST_PORT).adjacency;
        for prefix in routes {
            self.insert_route(*prefix, Route { port: HOST_PORT, adjacency, origin: RouteOrigin::Config });
        }
        self.stage()
    }

    /// Attaches the uplink NIC: the connected subnets resolved by ARP and neighbour discovery,
    /// and a default route via each VPC gateway.
    pub fn attach_uplink(
        &mut self,
        name: &str,
        mtu: u16,
        spec: UplinkSpec,
        queues: PortQueues,
    ) -> Result<(PortId, Publication), RegistryError> {
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
            self.insert_route(default_route(gateway), Route { port: id, adjacency: via, origin: RouteOrigin::Config });
        }
        self.uplink = Some(id);
        Ok((id, self.stage()))
    }

    /// Validates a pod port and reserves its name and address.
    pub fn reserve_pod(&mut self, spec: PodSpec) -> Result<PodReservation, RegistryError> {
        let mut replaces = None;
        let addresses = spec.addresses;
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
                return Err(RegistryError::PortExists(spec.name));
            } else if let Some(ip) = same_ip {
                return Err(RegistryError::AddressInUse { ip, port: p.info.name.clone() });
            }
        }
        if self.pending.contains_key(&spec.name) {
            return Err(RegistryError::PortBeingAttached(spec.name));
        }
        if let Some((other, ip)) = self.pending.iter().find_map(|(n, a)| Some((n, a.shared_with(&addresses)?))) {
            return Err(RegistryError::AddressBeingAttached { ip, port: other.clone() });
        }
        let mtu = spec.check(self.gateway_ip, self.pod_mtu)?;
        if self.ports().count() + self.pending.len() >= MAX_PORTS - 1 && replaces.is_none() {
            return Err(RegistryError::NoFreePortId);
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
    ) -> Result<(PortId, Publication), RegistryError> {
        self.pending.remove(&reservation.spec.name);
        if let Some(old) = reservation.replaces {
            self.remove_port(old);
        }
        let id = self.free_port_id()?;
        let PodSpec { name, netns, ifname, addresses, mac, pod, bandwidth, .. } = reservation.spec;
        let PodAddresses { ip, ipv6 } = addresses;
        let bucket = |r: Option<Rate>| r.map(|r| TokenBucket::new(r.bits_per_second, r.burst_bits));
        let rate_limit =
            bandwidth.map(|b| Arc::new(PortRateLimit { ingress: bucket(b.ingress), egress: bucket(b.egress) }));
        let info = PortInfo { id, name, role: PortRole::Pod { ip, ipv6, mac }, mtu: reservation.mtu, rate_limit };
        let attachment = Attachment { ifname, netns: Some(netns), netns_id, pod, bandwidth };
        self.install(info, attachment, queues, NextHop::Mac(mac), baseline(id), quiesced);
        let adjacency = self.record(id).adjacency;
        for prefix in addresses.host_prefixes() {
            self.insert_route(prefix, Route { port: id, adjacency, origin: RouteOrigin::Port });
        }
        Ok((id, self.stage()))
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
    pub fn detach(&mut self, name: &str) -> Result<(PortRecord, Publication), RegistryError> {
        let id = self.port_id(name).ok_or_else(|| RegistryError::NoSuchPort(name.into()))?;
        if !matches!(self.record(id).info.role, PortRole::Pod { .. }) {
            return Err(RegistryError::NotAPodPort(name.into()));
        }
        let record = self.remove_port(id);
        Ok((record, self.stage()))
    }

    /// Marks pod ports' devices gone: the workers stop polling them and their addresses stop
    /// being forwarded to, but the ports stay listed until a DEL (or GC) removes them. `None`
    /// when none of them was up.
    pub fn mark_gone(&mut self, ids: &[PortId]) -> Option<Publication> {
        let mut changed = false;
        for &id in ids {
            let Some(Some(record)) = self.ports.get_mut(id as usize) else { continue };
            if record.link == LinkState::Gone {
                continue;
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
            changed = true;
        }
        changed.then(|| self.stage())
    }

    /// Routes `prefix` out of `port` (an API route).
    pub fn add_route(&mut self, prefix: AnyPrefix, port: &str, replace: bool) -> Result<Publication, RegistryError> {
        let id = self.port_id(port).ok_or_else(|| RegistryError::NoSuchPort(port.into()))?;
        if self.record(id).link == LinkState::Gone {
            return Err(RegistryError::PortGone(port.into()));
        }
        match self.routes.get(&prefix) {
            Some(r) if r.origin == RouteOrigin::Port => return Err(RegistryError::RouteOwnedByPort(prefix)),
            Some(_) if !replace => return Err(RegistryError::RouteExists(prefix)),
            _ => {}
        }
        let adjacency = self.record(id).adjacency;
        self.insert_route(prefix, Route { port: id, adjacency, origin: RouteOrigin::Api });
        Ok(self.stage())
    }

    pub fn del_route(&mut self, prefix: AnyPrefix) -> Result<Publication, RegistryError> {
        match self.routes.get(&prefix) {
            None => return Err(RegistryError::NoSuchRoute(prefix)),
            Some(r) if r.origin == RouteOrigin::Port => return Err(RegistryError::RouteOwnedByPort(prefix)),
            Some(_) => {}
        }
        self.remove_route(&prefix);
        Ok(self.stage())
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
    pub fn on_neighbor_reply(&mut self, ip: IpAddr, mac: MacAddr, now: Duration) -> (UplinkWork, Option<Publication>) {
        let (waiting, changed) = self.neighbors.on_reply(ip, mac, now);
        let work = UplinkWork { send: waiting.into_iter().map(|p| (p, mac)).collect(), ..Default::default() };
        (work, changed.then(|| self.stage()))
    }

    /// The neighbours an upgrade handed over (see [`NeighborTable::adopt`]).
    pub fn adopt_neighbors(&mut self, neighbors: &[(IpAddr, MacAddr)], now: Duration) -> Option<Publication> {
        let mut changed = false;
        for &(ip, mac) in neighbors {
            changed |= self.neighbors.adopt(ip, mac, now);
        }
        changed.then(|| self.stage())
    }

    /// Neighbour timers: retries, failures, re-confirmation.
    pub fn on_neighbor_tick(&mut self, now: Duration) -> (UplinkWork, Option<Publication>) {
        let (actions, changed) = self.neighbors.on_tick(now);
        (Self::work(actions), changed.then(|| self.stage()))
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

    /// Ports, adjacencies, neighbours and FIB readers as the next generation's snapshot.
    fn stage(&mut self) -> Publication {
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
        Publication { snapshot: Snapshot { generation: self.generation, forwarding, queues } }
    }

    /// Makes the routes staged so far visible to the workers: call it once the snapshot of the
    /// change that staged them is where the workers load it (see [`Publication`]).
    pub fn publish_fibs(&mut self) {
        self.fib.publish();
        self.fib6.publish();
    }
}
