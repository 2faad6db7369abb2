//! The controller: owns the FIB writer, the port registry and the workers, and turns API
//! requests into a new published forwarding state. It never touches packets.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use arc_swap::ArcSwap;
use fib::{Fib, Ipv4Prefix};

use super::api::{CountersView, NeighborView, PortView, Request, RouteView, TraceView};
use super::config::{Config, UplinkConfig};
use super::hostnet::{HostNet, HostNetError};
use super::store::PortStore;
use crate::datapath::{
    spawn_worker, stats, Datapath, PortQueues, PortTotals, SlowPacket, SlowReason, Snapshot, WorkerStats,
    SLOW_PATH_DEPTH,
};
use crate::neighbor::{Action, NeighborLimits, NeighborTable};
use crate::pipeline::{DropReason, IcmpLimiter, Next, Pipeline, Trace, MAX_FRAME};
use crate::port::packet::PacketSocket;
use crate::port::tap::{Attach, TapQueue};
use crate::port::PortQueue;
use crate::state::{Adjacency, ForwardingState, NextHop, PortId, PortInfo, PortRole, MAX_PORTS};
use crate::wire::arp::{self, ArpPacket, Operation};
use crate::wire::ethernet::{self, EthernetFrame};
use crate::wire::{vnet, EtherType, MacAddr};

#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error("port '{0}' already exists")]
    PortExists(String),
    #[error("no port named '{0}'")]
    NoSuchPort(String),
    #[error("{ip} is already used by port '{port}'")]
    AddressInUse { ip: Ipv4Addr, port: String },
    #[error("{0}")]
    Invalid(String),
    #[error("no free port id (at most {MAX_PORTS} ports)")]
    TooManyPorts,
    #[error("attaching port '{name}': {source}")]
    Attach { name: String, source: crate::port::TapError },
    #[error("host networking: {0}")]
    HostNet(#[from] HostNetError),
    #[error("state directory: {0}")]
    Store(std::io::Error),
    #[error("starting workers: {0}")]
    Workers(std::io::Error),
    #[error("no route for {0}")]
    NoSuchRoute(String),
    #[error("route {0} belongs to a port; remove the port instead")]
    RouteOwnedByPort(String),
    #[error("uplink {name}: {source}")]
    Uplink { name: String, source: std::io::Error },
}

/// The uplink NIC as the control plane uses it: to send ARP and packets that waited for it.
struct Uplink {
    port: PortId,
    mac: MacAddr,
    sender: PacketSocket,
}

/// How a pod port was attached (what `add_port` said), kept for listing and persistence.
#[derive(Debug, Clone)]
struct Attachment {
    netns: Option<PathBuf>,
    ifname: String,
    request: Option<Request>,
}

struct PortRecord {
    info: PortInfo,
    attachment: Attachment,
    queues: PortQueues,
    adjacency: u32,
    /// Counters at attach time (ids are reused; counters are per id).
    baseline: PortTotals,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RouteOwner {
    /// The /32 of a pod port (removed with it).
    Port,
    /// Added through the API, or the host port's default route.
    Static,
}

#[derive(Debug, Clone, Copy)]
struct Route {
    port: PortId,
    adjacency: u32,
    owner: RouteOwner,
}

pub struct Switch {
    config: Config,
    datapath: Arc<Datapath>,
    wakers: Vec<Arc<mio::Waker>>,
    workers: Vec<std::thread::JoinHandle<()>>,
    stats: Vec<Arc<WorkerStats>>,
    fib: Fib<Ipv4Addr>,
    ports: Vec<Option<PortRecord>>,
    adjacencies: Vec<Option<Adjacency>>,
    routes: BTreeMap<Ipv4Prefix, Route>,
    generation: u64,
    hostnet: HostNet,
    host_ifindex: u32,
    store: PortStore,
    uplink: Option<Uplink>,
    neighbors: NeighborTable,
    /// Counters for what the control plane itself sends or drops (ARP, resolved packets).
    control_stats: Arc<WorkerStats>,
    slow_path: Option<tokio::sync::mpsc::Receiver<SlowPacket>>,
    started: Instant,
}

impl std::fmt::Debug for Switch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Switch").field("generation", &self.generation).finish_non_exhaustive()
    }
}

const HOST_PORT: PortId = 0;

impl Switch {
    /// Starts the workers, attaches the host port, and re-attaches every persisted pod port.
    pub async fn start(config: Config) -> Result<Switch, ControlError> {
        let fib = Fib::new();
        let empty = ForwardingState {
            gateway_ip: config.gateway_ip,
            gateway_mac: config.gateway_mac(),
            ports: Vec::new(),
            adjacencies: Vec::new(),
            fib: fib.reader(),
            neighbors: Default::default(),
        };
        let (slow_tx, slow_rx) = tokio::sync::mpsc::channel(SLOW_PATH_DEPTH);
        let datapath = Arc::new(Datapath {
            snapshot: ArcSwap::from_pointee(Snapshot { generation: 0, forwarding: empty, queues: Vec::new() }),
            stop: Default::default(),
            slow_path: slow_tx,
        });
        let mut wakers = Vec::new();
        let mut workers = Vec::new();
        let mut stats = Vec::new();
        for index in 0..config.workers {
            let s = Arc::new(WorkerStats::default());
            let icmp = IcmpLimiter::new(config.icmp_errors_per_second, config.icmp_burst);
            let (waker, handle) =
                spawn_worker(index, datapath.clone(), s.clone(), icmp).map_err(ControlError::Workers)?;
            wakers.push(waker);
            workers.push(handle);
            stats.push(s);
        }
        let control_stats = Arc::new(WorkerStats::default());
        stats.push(control_stats.clone());
        let store = PortStore::open(&config.state_dir).map_err(ControlError::Store)?;
        let hostnet = HostNet::connect()?;
        let uplink_config = config.uplink.clone();
        let mut switch = Switch {
            config,
            datapath,
            wakers,
            workers,
            stats,
            fib,
            ports: Vec::new(),
            adjacencies: Vec::new(),
            routes: BTreeMap::new(),
            generation: 0,
            hostnet,
            host_ifindex: 0,
            store,
            uplink: None,
            neighbors: NeighborTable::new(NeighborLimits::default()),
            control_stats,
            slow_path: Some(slow_rx),
            started: Instant::now(),
        };
        switch.attach_host_port().await?;
        if let Some(uplink) = uplink_config {
            switch.attach_uplink(&uplink).await?;
        }
        switch.restore().await;
        Ok(switch)
    }

    /// The receiving end of the workers' slow path; the server's loop takes it once.
    pub fn take_slow_path(&mut self) -> Option<tokio::sync::mpsc::Receiver<SlowPacket>> {
        self.slow_path.take()
    }

    /// Attaches the dedicated NIC: one fanout socket per worker, the subnet and the default
    /// route through it, and the kernel kept off it (no forwarding, no ARP replies, no IPv6).
    async fn attach_uplink(&mut self, config: &UplinkConfig) -> Result<(), ControlError> {
        let name = config.interface.clone();
        let uplink_error = |source| ControlError::Uplink { name: name.clone(), source };
        let (ifindex, mac) = self.hostnet.bring_up(&name, config.mtu).await?;
        for (key, value) in
            [("ipv4/conf/{}/forwarding", "0"), ("ipv4/conf/{}/arp_ignore", "8"), ("ipv6/conf/{}/disable_ipv6", "1")]
        {
            let path = format!("/proc/sys/net/{}", key.replace("{}", &name));
            std::fs::write(&path, value)
                .map_err(|e| uplink_error(std::io::Error::new(e.kind(), format!("{path}: {e}"))))?;
        }
        // Fanout groups are per namespace; the pid keeps two daemons' groups apart.
        let group = (std::process::id() & 0xffff) as u16;
        let queues: Vec<Arc<dyn PortQueue>> = (0..self.config.workers)
            .map(|_| PacketSocket::open_queue(ifindex, group).map(|s| Arc::new(s) as Arc<dyn PortQueue>))
            .collect::<Result<_, _>>()
            .map_err(uplink_error)?;
        let sender = PacketSocket::open_sender(ifindex).map_err(uplink_error)?;
        let id = self.free_port_id()?;
        let info = PortInfo {
            id,
            name: name.clone(),
            role: PortRole::Uplink { mac, ip: None },
            mtu: config.mtu,
            rate_limit: None,
        };
        let attachment = Attachment { netns: None, ifname: name.clone(), request: None };
        self.install_port(info, attachment, queues.into(), NextHop::Arp { via: None }, mac);
        let subnet: Ipv4Prefix =
            config.subnet.parse().map_err(|e| ControlError::Invalid(format!("uplink.subnet: {e}")))?;
        let connected = self.record(id).adjacency;
        self.routes.insert(subnet, Route { port: id, adjacency: connected, owner: RouteOwner::Static });
        self.fib.insert(subnet, connected).expect("adjacency index in range");
        if let Some(gateway) = config.gateway {
            let via_gateway = self.adjacencies.len() as u32;
            self.adjacencies.push(Some(Adjacency {
                port: id,
                src_mac: mac,
                next_hop: NextHop::Arp { via: Some(gateway) },
                mtu: config.mtu,
            }));
            let default: Ipv4Prefix = "0.0.0.0/0".parse().expect("valid");
            self.routes.insert(default, Route { port: id, adjacency: via_gateway, owner: RouteOwner::Static });
            self.fib.insert(default, via_gateway).expect("adjacency index in range");
        }
        self.uplink = Some(Uplink { port: id, mac, sender });
        self.publish();
        tracing::info!(uplink = %name, %mac, ifindex, %subnet, "uplink attached");
        Ok(())
    }

    fn free_port_id(&self) -> Result<PortId, ControlError> {
        (1..MAX_PORTS as PortId)
            .find(|&id| self.ports.get(id as usize).is_none_or(|p| p.is_none()))
            .ok_or(ControlError::TooManyPorts)
    }

    fn now(&self) -> std::time::Duration {
        self.started.elapsed()
    }

    /// Sends a frame (vnet header first) out of the uplink from the control plane.
    fn send_on_uplink(&self, frame: &[u8]) {
        let Some(uplink) = &self.uplink else { return };
        match uplink.sender.send(frame) {
            Ok(()) => self.control_stats.tx(uplink.port, frame.len()),
            Err(_) => self.control_stats.dropped(DropReason::TxError),
        }
    }

    /// Broadcasts an ARP request on the uplink: `who-has target tell sender`. With sender
    /// 0.0.0.0 it is a probe (RFC 5227), which hosts answer without learning anything.
    fn send_arp(&self, op: Operation, sender_ip: Ipv4Addr, target_ip: Ipv4Addr) {
        let Some(uplink) = &self.uplink else { return };
        let mut frame = [0u8; vnet::LEN + ethernet::HEADER_LEN + arp::PACKET_LEN];
        let mut eth = EthernetFrame::new_checked(&mut frame[vnet::LEN..]).expect("sized");
        eth.set_dst(MacAddr::BROADCAST);
        eth.set_src(uplink.mac);
        eth.set_ethertype(EtherType::Arp);
        arp::emit(eth.payload_mut(), op, (uplink.mac, sender_ip), (MacAddr::ZERO, target_ip));
        self.send_on_uplink(&frame);
    }

    fn run_actions(&mut self, actions: Vec<Action>) {
        for action in actions {
            match action {
                Action::Ask(ip) => self.send_arp(Operation::Request, Ipv4Addr::UNSPECIFIED, ip),
                Action::Dropped { unresolved, queue_full } => {
                    (0..unresolved).for_each(|_| self.control_stats.dropped(DropReason::NeighborUnresolved));
                    (0..queue_full).for_each(|_| self.control_stats.dropped(DropReason::NeighborQueueFull));
                }
            }
        }
    }

    /// Sends a packet that waited for its next hop's MAC.
    fn send_resolved(&self, mut data: Vec<u8>, mac: MacAddr) {
        data[vnet::LEN..vnet::LEN + 6].copy_from_slice(&mac.0);
        self.send_on_uplink(&data);
    }

    /// A packet from a worker's slow path.
    pub fn on_slow_packet(&mut self, packet: SlowPacket) {
        let now = self.now();
        match packet.reason {
            SlowReason::Resolve { next_hop, .. } => match self.neighbors.mac_of(next_hop) {
                Some(mac) => self.send_resolved(packet.data, mac),
                None => {
                    let actions = self.neighbors.on_miss(next_hop, packet.data, now);
                    self.run_actions(actions);
                }
            },
            SlowReason::Arp { .. } => {
                let Some(body) = packet.data.get(vnet::LEN + ethernet::HEADER_LEN..) else { return };
                let Ok(reply) = ArpPacket::new_checked(body) else { return };
                if reply.operation() != Operation::Reply {
                    return;
                }
                let (waiting, changed) = self.neighbors.on_reply(reply.sender_ip(), reply.sender_mac(), now);
                if changed {
                    self.publish();
                }
                for data in waiting {
                    self.send_resolved(data, reply.sender_mac());
                }
            }
        }
    }

    /// Neighbour timers: retries, failures, re-confirmation.
    pub fn on_neighbor_tick(&mut self) {
        let (actions, changed) = self.neighbors.on_tick(self.now());
        self.run_actions(actions);
        if changed {
            self.publish();
        }
    }

    async fn attach_host_port(&mut self) -> Result<(), ControlError> {
        let name = self.config.host_port.name.clone();
        let queues = self.open_queues(&name, &name, None, Attach::CreatePersistent).await?;
        let (ifindex, peer_mac) = self.hostnet.bring_up(&name, self.config.host_port.mtu).await?;
        self.host_ifindex = ifindex;
        let info = PortInfo {
            id: HOST_PORT,
            name: name.clone(),
            role: PortRole::Host { peer_mac },
            mtu: self.config.host_port.mtu,
            rate_limit: None,
        };
        let attachment = Attachment { netns: None, ifname: name, request: None };
        let gateway_mac = self.config.gateway_mac();
        self.install_port(info, attachment, queues, NextHop::Mac(peer_mac), gateway_mac);
        let adjacency = self.record(HOST_PORT).adjacency;
        let mut prefixes = self.config.host_port.routes.clone();
        if self.config.host_port.default_route {
            prefixes.push("0.0.0.0/0".into());
        }
        for prefix in prefixes {
            let prefix = Self::parse_prefix(&prefix)?;
            self.routes.insert(prefix, Route { port: HOST_PORT, adjacency, owner: RouteOwner::Static });
            self.fib.insert(prefix, adjacency).expect("adjacency index in range");
        }
        self.publish();
        tracing::info!(port = %self.config.host_port.name, %peer_mac, ifindex, "host port attached");
        Ok(())
    }

    /// Re-attaches the persisted pods; a pod whose namespace or TAP is gone is dropped.
    async fn restore(&mut self) {
        let saved = match self.store.load() {
            Ok(saved) => saved,
            Err(e) => {
                tracing::error!(error = %e, "cannot read saved ports; starting without them");
                return;
            }
        };
        for request in saved {
            if let Request::AddPort { name, .. } = &request {
                let name = name.clone();
                match self.handle(request).await {
                    Ok(_) => tracing::info!(port = %name, "re-attached"),
                    Err(e) => tracing::warn!(port = %name, error = %e, "not re-attached"),
                }
            }
        }
        if let Err(e) = self.persist() {
            tracing::error!(error = %e, "cannot save ports");
        }
    }

    /// Opens one queue per worker of TAP `ifname` for port `port`.
    async fn open_queues(
        &self,
        port: &str,
        ifname: &str,
        netns: Option<PathBuf>,
        attach: Attach,
    ) -> Result<PortQueues, ControlError> {
        let (port, ifname, workers) = (port.to_string(), ifname.to_string(), self.config.workers);
        let opened = tokio::task::spawn_blocking(move || {
            TapQueue::open_many(&ifname, netns.as_deref(), attach, workers)
                .map(|queues| queues.into_iter().map(|q| Arc::new(q) as Arc<dyn PortQueue>).collect::<Vec<_>>())
                .map_err(|source| ControlError::Attach { name: port, source })
        })
        .await
        .map_err(|e| ControlError::Invalid(format!("attach task failed: {e}")))??;
        Ok(opened.into())
    }

    fn record(&self, id: PortId) -> &PortRecord {
        self.ports[id as usize].as_ref().expect("live port id")
    }

    fn port_id(&self, name: &str) -> Option<PortId> {
        self.ports.iter().flatten().find(|p| p.info.name == name).map(|p| p.info.id)
    }

    fn install_port(
        &mut self,
        info: PortInfo,
        attachment: Attachment,
        queues: PortQueues,
        next_hop: NextHop,
        src_mac: MacAddr,
    ) {
        let id = info.id;
        // Adjacency indices are never reused (see `state`).
        let adjacency = self.adjacencies.len() as u32;
        self.adjacencies.push(Some(Adjacency { port: id, src_mac, next_hop, mtu: info.mtu }));
        if self.ports.len() <= id as usize {
            self.ports.resize_with(id as usize + 1, || None);
        }
        let baseline = stats::port_totals(&self.stats, id);
        self.ports[id as usize] = Some(PortRecord { info, attachment, queues, adjacency, baseline });
    }

    /// Publishes the forwarding state (ports, adjacencies) and the FIB, then wakes the workers.
    /// The snapshot goes first, so a route published by the FIB always finds its adjacency.
    fn publish(&mut self) {
        self.generation += 1;
        let forwarding = ForwardingState {
            gateway_ip: self.config.gateway_ip,
            gateway_mac: self.config.gateway_mac(),
            ports: self.ports.iter().map(|p| p.as_ref().map(|p| p.info.clone())).collect(),
            adjacencies: self.adjacencies.clone(),
            fib: self.fib.reader(),
            neighbors: Arc::new(self.neighbors.resolved()),
        };
        let queues = self.ports.iter().map(|p| p.as_ref().map(|p| p.queues.clone())).collect();
        self.datapath.snapshot.store(Arc::new(Snapshot { generation: self.generation, forwarding, queues }));
        self.fib.publish();
        for waker in &self.wakers {
            let _ = waker.wake();
        }
    }

    fn persist(&self) -> Result<(), ControlError> {
        let requests: Vec<Request> = self.ports.iter().flatten().filter_map(|p| p.attachment.request.clone()).collect();
        self.store.save(&requests).map_err(ControlError::Store)
    }

    /// Serves one API request.
    pub async fn handle(&mut self, request: Request) -> Result<serde_json::Value, ControlError> {
        fn value(v: impl serde::Serialize) -> serde_json::Value {
            serde_json::to_value(v).expect("serialisable")
        }
        match request {
            Request::AddPort { .. } => self.add_port(request).await.map(value),
            Request::DelPort { name, remove_device } => {
                self.del_port(&name, remove_device).await.map(|()| serde_json::Value::Null)
            }
            Request::AddRoute { prefix, port } => self.add_route(&prefix, &port).map(|()| serde_json::Value::Null),
            Request::DelRoute { prefix } => self.del_route(&prefix).map(|()| serde_json::Value::Null),
            Request::Status => Ok(value(
                serde_json::json!({"ports": self.ports.iter().flatten().count(), "generation": self.generation}),
            )),
            Request::ListPorts => Ok(value(self.list_ports())),
            Request::ListRoutes => Ok(value(self.list_routes())),
            Request::ListNeighbors => Ok(value(self.list_neighbors())),
            Request::Counters => Ok(value(self.counters())),
            Request::Trace { port, frame } => self.trace(&port, &frame).map(value),
        }
    }

    async fn add_port(&mut self, request: Request) -> Result<PortView, ControlError> {
        let Request::AddPort { name, netns, ifname, ip, mac, mtu } = &request else {
            unreachable!("checked by caller")
        };
        if self.port_id(name).is_some() {
            return Err(ControlError::PortExists(name.clone()));
        }
        if let Some(p) =
            self.ports.iter().flatten().find(|p| matches!(p.info.role, PortRole::Pod { ip: other, .. } if other == *ip))
        {
            return Err(ControlError::AddressInUse { ip: *ip, port: p.info.name.clone() });
        }
        if mac.is_multicast() || *mac == MacAddr::ZERO {
            return Err(ControlError::Invalid(format!("{mac} is not a unicast MAC")));
        }
        if ip.is_unspecified() || ip.is_broadcast() || ip.is_multicast() || *ip == self.config.gateway_ip {
            return Err(ControlError::Invalid(format!("{ip} cannot be a pod address")));
        }
        let mtu = mtu.unwrap_or(self.config.pod_mtu);
        if !(576..=9000).contains(&mtu) {
            return Err(ControlError::Invalid(format!("MTU {mtu} is outside 576..=9000")));
        }
        let id = self.free_port_id()?;
        let queues = self.open_queues(name, ifname, Some(netns.clone()), Attach::Existing).await?;
        self.hostnet.route_to_pod(*ip, self.host_ifindex).await?;

        let info =
            PortInfo { id, name: name.clone(), role: PortRole::Pod { ip: *ip, mac: *mac }, mtu, rate_limit: None };
        let attachment =
            Attachment { netns: Some(netns.clone()), ifname: ifname.clone(), request: Some(request.clone()) };
        let gateway_mac = self.config.gateway_mac();
        self.install_port(info, attachment, queues, NextHop::Mac(*mac), gateway_mac);
        let adjacency = self.record(id).adjacency;
        let host_route = Ipv4Prefix::host(*ip);
        self.fib.insert(host_route, adjacency).expect("adjacency index in range");
        self.routes.insert(host_route, Route { port: id, adjacency, owner: RouteOwner::Port });
        self.publish();
        self.persist()?;
        // Tell the VPC subnet where this address lives now (a gratuitous ARP).
        self.send_arp(Operation::Request, *ip, *ip);
        tracing::info!(port = %name, %ip, %mac, id, "pod port attached");
        Ok(self.port_view(self.record(id)))
    }

    async fn del_port(&mut self, name: &str, remove_device: bool) -> Result<(), ControlError> {
        let id = self.port_id(name).ok_or_else(|| ControlError::NoSuchPort(name.into()))?;
        if id == HOST_PORT {
            return Err(ControlError::Invalid("the host port cannot be removed".into()));
        }
        let record = self.ports[id as usize].take().expect("found above");
        let gone: Vec<Ipv4Prefix> = self.routes.iter().filter(|(_, r)| r.port == id).map(|(p, _)| *p).collect();
        for prefix in gone {
            self.routes.remove(&prefix);
            self.fib.remove(&prefix);
        }
        self.adjacencies[record.adjacency as usize] = None;
        self.publish();
        if let PortRole::Pod { ip, .. } = record.info.role {
            self.hostnet.remove_route_to_pod(ip, self.host_ifindex).await?;
        }
        self.persist()?;
        if let (true, Some(netns)) = (remove_device, record.attachment.netns.clone()) {
            let ifname = record.attachment.ifname.clone();
            // Our queues go when the workers drop the old snapshot; the device can go now.
            tokio::task::spawn_blocking(move || {
                if let Err(e) = super::hostnet::delete_link_in(&netns, &ifname) {
                    tracing::warn!(netns = %netns.display(), %ifname, error = %e, "could not delete the TAP");
                }
            });
        }
        tracing::info!(port = %name, id, "port removed");
        Ok(())
    }

    fn parse_prefix(prefix: &str) -> Result<Ipv4Prefix, ControlError> {
        prefix.parse().map_err(|e| ControlError::Invalid(format!("prefix '{prefix}': {e}")))
    }

    fn add_route(&mut self, prefix: &str, port: &str) -> Result<(), ControlError> {
        let prefix = Self::parse_prefix(prefix)?;
        let id = self.port_id(port).ok_or_else(|| ControlError::NoSuchPort(port.into()))?;
        if self.routes.get(&prefix).is_some_and(|r| r.owner == RouteOwner::Port) {
            return Err(ControlError::RouteOwnedByPort(prefix.to_string()));
        }
        let adjacency = self.record(id).adjacency;
        self.routes.insert(prefix, Route { port: id, adjacency, owner: RouteOwner::Static });
        self.fib.insert(prefix, adjacency).expect("adjacency index in range");
        self.publish();
        Ok(())
    }

    fn del_route(&mut self, prefix: &str) -> Result<(), ControlError> {
        let prefix = Self::parse_prefix(prefix)?;
        match self.routes.get(&prefix) {
            None => return Err(ControlError::NoSuchRoute(prefix.to_string())),
            Some(r) if r.owner == RouteOwner::Port => return Err(ControlError::RouteOwnedByPort(prefix.to_string())),
            Some(_) => {}
        }
        self.routes.remove(&prefix);
        self.fib.remove(&prefix);
        self.publish();
        Ok(())
    }

    fn port_view(&self, p: &PortRecord) -> PortView {
        PortView {
            id: p.info.id,
            name: p.info.name.clone(),
            role: p.info.role.clone(),
            mtu: p.info.mtu,
            netns: p.attachment.netns.clone(),
            ifname: p.attachment.ifname.clone(),
            counters: stats::port_totals(&self.stats, p.info.id).since(p.baseline),
        }
    }

    pub fn list_ports(&self) -> Vec<PortView> {
        self.ports.iter().flatten().map(|p| self.port_view(p)).collect()
    }

    pub fn list_routes(&self) -> Vec<RouteView> {
        self.routes
            .iter()
            .filter_map(|(prefix, r)| {
                let adj = self.adjacencies.get(r.adjacency as usize)?.as_ref()?;
                let next_hop = match adj.next_hop {
                    NextHop::Mac(mac) => mac.to_string(),
                    NextHop::Arp { via: Some(via) } => format!("arp {via}"),
                    NextHop::Arp { via: None } => "arp".to_string(),
                };
                Some(RouteView {
                    prefix: prefix.to_string(),
                    port: self.record(r.port).info.name.clone(),
                    next_hop,
                    mtu: adj.mtu,
                })
            })
            .collect()
    }

    pub fn list_neighbors(&self) -> Vec<NeighborView> {
        let port = self.uplink.as_ref().map_or_else(String::new, |u| self.record(u.port).info.name.clone());
        self.neighbors
            .list()
            .into_iter()
            .map(|n| NeighborView { ip: n.ip, mac: n.mac, port: port.clone(), state: n.state.to_string() })
            .collect()
    }

    pub fn counters(&self) -> CountersView {
        CountersView {
            ports: self.list_ports().into_iter().map(|p| (p.name, p.counters)).collect(),
            drops: DropReason::ALL
                .iter()
                .map(|&r| (r.name().to_string(), self.stats.iter().map(|s| s.drops(r)).sum()))
                .collect(),
            fib_routes: self.fib.len(),
            neighbors: self.neighbors.len(),
        }
    }

    /// Runs a frame through the pipeline with a recording tracer, on the live state, without
    /// sending anything.
    pub fn trace(&self, port: &str, frame_hex: &str) -> Result<TraceView, ControlError> {
        let id = self.port_id(port).ok_or_else(|| ControlError::NoSuchPort(port.into()))?;
        let frame = decode_hex(frame_hex)
            .ok_or_else(|| ControlError::Invalid("frame must be an even number of hex digits".into()))?;
        if frame.len() + vnet::LEN > MAX_FRAME {
            return Err(ControlError::Invalid("frame too long".into()));
        }
        let mut buf = vec![0u8; MAX_FRAME];
        buf[vnet::LEN..vnet::LEN + frame.len()].copy_from_slice(&frame);
        let snapshot = self.datapath.snapshot.load();
        let fib = snapshot.forwarding.fib.pin();
        let mut pipeline = Pipeline::new(IcmpLimiter::new(1, 1));
        let mut trace = Trace::default();
        let next = pipeline.process(&snapshot.forwarding, &fib, id, &mut buf, vnet::LEN + frame.len(), 0, &mut trace);
        let name = |id: PortId| snapshot.forwarding.port(id).map_or_else(|| id.to_string(), |p| p.name.clone());
        let verdict = match next {
            Next::Tx { port, len } => format!("output to {} ({} bytes)", name(port), len - vnet::LEN),
            Next::Drop(reason) => format!("drop: {} ({})", reason.name(), reason.help()),
            Next::Respond { reason, port, len } => {
                format!("drop: {}; ICMP error of {} bytes to {}", reason.name(), len - vnet::LEN, name(port))
            }
            Next::Resolve { port, next_hop, .. } => format!("to {} once ARP resolves {next_hop}", name(port)),
            Next::ToControl { .. } => "to the control plane (ARP learning)".to_string(),
        };
        Ok(TraceView { steps: trace.steps, verdict })
    }

    /// Prometheus text exposition.
    pub fn metrics(&self) -> String {
        use std::fmt::Write;
        let mut out = String::new();
        let ports = self.list_ports();
        for (metric, help, get) in [
            (
                "vswitch_port_rx_packets_total",
                "Frames received from the port.",
                (|c: &PortTotals| c.rx_packets) as fn(&PortTotals) -> u64,
            ),
            ("vswitch_port_rx_bytes_total", "Bytes received from the port (vnet header included).", |c| c.rx_bytes),
            ("vswitch_port_tx_packets_total", "Frames sent to the port.", |c| c.tx_packets),
            ("vswitch_port_tx_bytes_total", "Bytes sent to the port (vnet header included).", |c| c.tx_bytes),
        ] {
            let _ = writeln!(out, "# HELP {metric} {help}\n# TYPE {metric} counter");
            for p in &ports {
                let _ = writeln!(out, "{metric}{{port=\"{}\"}} {}", p.name, get(&p.counters));
            }
        }
        let _ =
            writeln!(out, "# HELP vswitch_drops_total Frames dropped, by reason.\n# TYPE vswitch_drops_total counter");
        for &reason in DropReason::ALL {
            let n: u64 = self.stats.iter().map(|s| s.drops(reason)).sum();
            let _ = writeln!(out, "vswitch_drops_total{{reason=\"{}\"}} {n}", reason.name());
        }
        let _ = writeln!(
            out,
            "# HELP vswitch_fib_routes Routes in the FIB.\n# TYPE vswitch_fib_routes gauge\nvswitch_fib_routes {}",
            self.fib.len()
        );
        let _ = writeln!(out, "# HELP vswitch_fib_memory_bytes Memory of the FIB.\n# TYPE vswitch_fib_memory_bytes gauge\nvswitch_fib_memory_bytes {}", self.fib.memory().total());
        let _ = writeln!(
            out,
            "# HELP vswitch_neighbors Neighbour entries.\n# TYPE vswitch_neighbors gauge\nvswitch_neighbors {}",
            self.neighbors.len()
        );
        let _ = writeln!(
            out,
            "# HELP vswitch_ports Attached ports.\n# TYPE vswitch_ports gauge\nvswitch_ports {}",
            ports.len()
        );
        out
    }

    /// Stops the workers. TAP devices persist, so pods keep their interfaces.
    pub fn shutdown(&mut self) {
        self.datapath.stop.store(true, Ordering::Relaxed);
        for waker in &self.wakers {
            let _ = waker.wake();
        }
        for handle in self.workers.drain(..) {
            let _ = handle.join();
        }
    }
}

fn decode_hex(s: &str) -> Option<Vec<u8>> {
    let s: String = s.chars().filter(|c| !c.is_whitespace() && *c != ':').collect();
    if s.len() % 2 != 0 {
        return None;
    }
    (0..s.len()).step_by(2).map(|i| u8::from_str_radix(&s[i..i + 2], 16).ok()).collect()
}
