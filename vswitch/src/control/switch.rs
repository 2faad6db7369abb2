//! The control plane's I/O driver around the sans-I/O [`Registry`]: it opens TAP queues (on a
//! thread inside the pod's namespace), keeps the node's routes to pods over netlink, sends ARP on
//! the uplink, saves the state file, and answers the API.
//!
//! Locking: the registry sits behind a plain mutex that is only ever held for in-memory work,
//! never across an `.await` or a system call that can block (netlink, namespace threads, file
//! syncs). So attaching a pod never stalls ARP handling, the slow path or /metrics. An attach
//! reserves its name and address first, does its I/O unlocked, then commits.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::fd::RawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use vswitch_api::api::{
    ApiError, CountersView, DropSampleView, DropsView, ErrorCode, FlowSpec, NeighborView, PortCounters,
    PortRole as ApiPortRole, PortSpec, PortView, Request, Response, RouteView, StatusView, TraceView,
};

use super::config::{Config, UplinkConfig};
use super::handover::{Handover, Offer};
use super::hostnet::{HostNet, HostNetError};
use super::ipam::IpamRequest;
use super::persist::{SavedPort, SavedRoute, SavedState, StateError, StateFile, FORMAT};
use super::podio::{open_tap_queues, tap_queues_from, KernelPodIo, MemoryPodIo, PodIo};
use super::registry::{
    parse_prefix, PodAddresses, PodReservation, PortRecord, Registry, UplinkSpec, UplinkWork, HOST_PORT,
};
use super::trace;
use crate::datapath::{spawn_worker, stats, Datapath, PortQueues, PortTotals, SlowPacket, SlowReason, WorkerStats};
use crate::pipeline::{DropReason, IcmpLimiter, MAX_FRAME};
use crate::port::packet::PacketSocket;
use crate::port::tap::Attach;
use crate::port::{NoUdpGso, PortQueue};
use crate::state::{NextHop, PortId, PortRole};
use crate::wire::arp::{self, ArpPacket, Operation};
use crate::wire::ethernet::{self, EthernetFrame};
use crate::wire::icmpv6::{self, NeighborAdvert};
use crate::wire::ipv6::{self, Ipv6Packet};
use crate::wire::udp_gso::{self, UdpGso};
use crate::wire::{vnet, EtherType, MacAddr};

/// Why the daemon could not start.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error("host networking: {0}")]
    HostNet(#[from] HostNetError),
    #[error("{0}")]
    State(#[from] StateError),
    #[error("starting workers: {0}")]
    Workers(std::io::Error),
    #[error("attaching {name}: {source}")]
    Attach { name: String, source: crate::port::TapError },
    #[error("uplink {name}: {source}")]
    Uplink { name: String, source: std::io::Error },
    #[error("{0}")]
    Api(#[from] ApiError),
}

/// The uplink NIC as the control plane uses it: to send ARP and packets that waited for it.
#[derive(Debug)]
struct Uplink {
    port: PortId,
    mac: MacAddr,
    /// The source of neighbour solicitations: the NIC's configured IPv6 address, or its MAC's
    /// link-local address.
    ndp_source: Ipv6Addr,
    sender: PacketSocket,
}

/// Without an uplink, the node's own NIC (`host_port.announce_on`), used only to announce pods.
#[derive(Debug)]
struct Announcer {
    name: String,
    ifindex: u32,
    mac: MacAddr,
    sender: PacketSocket,
}

pub struct Switch {
    config: Config,
    registry: Mutex<Registry>,
    datapath: Arc<Datapath>,
    wakers: Vec<Arc<mio::Waker>>,
    workers: Mutex<Vec<std::thread::JoinHandle<()>>>,
    /// Every worker's counters, and the control plane's own last.
    stats: Vec<Arc<WorkerStats>>,
    control_stats: Arc<WorkerStats>,
    /// Pod TAPs and the node's routes to pods: the kernel, or memory for tests and fuzzing.
    pods: Box<dyn PodIo>,
    /// Set while handing over to a new instance: changes are refused (retryable) so the state
    /// handed over stays the state.
    pub(super) frozen: AtomicBool,
    /// Held (shared) by every request that changes state and by the IPAM's upkeep, for their
    /// whole run; freezing for an upgrade takes it exclusively, so the state handed over
    /// includes every change that was already answered, and none lands after.
    pub(super) in_flight: tokio::sync::RwLock<()>,
    uplink: Option<Uplink>,
    announcer: Option<Announcer>,
    /// When drops were last asked for (sampling is on until a while after).
    watched_at: Mutex<Option<Instant>>,
    /// Since when some worker has been behind the latest state (for `health`).
    behind_since: Mutex<Option<Instant>>,
    /// Also serialises saves, so the file always ends with the latest state. None in memory.
    state_file: Option<Mutex<StateFile>>,
    started: Instant,
    /// Cluster address allocation (`[ipam]`), if configured.
    pub(super) ipam: Option<Arc<super::ipam::Ipam>>,
}

impl std::fmt::Debug for Switch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Switch").field("config", &self.config).finish_non_exhaustive()
    }
}

fn unavailable(what: impl std::fmt::Display) -> ApiError {
    ApiError::new(ErrorCode::Unavailable, what)
}

impl Switch {
    /// Starts the workers, attaches the host port and the uplink, and re-attaches the saved pod
    /// ports. Returns the switch and the receiving end of the workers' slow path.
    ///
    /// With a `handover` (an upgrade), the state and the queues come from the instance being
    /// replaced instead of the state file and new opens.
    pub async fn start(
        config: Config,
        mut handover: Option<Handover>,
    ) -> Result<(Arc<Switch>, tokio::sync::mpsc::Receiver<SlowPacket>), ControlError> {
        // Read the state first: a file this version cannot read stops the start before anything
        // is touched.
        let state_file = StateFile::open(&config.state_dir, config.pod_mtu)?;
        let saved = match &handover {
            Some(h) if h.workers != config.workers => {
                return Err(ControlError::Api(ApiError::new(
                    ErrorCode::Invalid,
                    format!(
                        "the running vswitchd has {} workers, this one {}: upgrade with the same configuration",
                        h.workers, config.workers
                    ),
                )))
            }
            Some(h) => h.state.clone(),
            None => state_file.load()?,
        };

        let gateway_mac = config.gateway_mac();
        let (slow_tx, slow_rx) = tokio::sync::mpsc::channel(crate::datapath::SLOW_PATH_DEPTH);
        let datapath =
            Arc::new(Datapath::new(Registry::empty_snapshot(config.gateway_ip, gateway_mac), slow_tx, config.workers));
        let mut wakers = Vec::new();
        let mut workers = Vec::new();
        let mut stats = Vec::new();
        for index in 0..config.workers {
            let s = Arc::new(WorkerStats::default());
            let icmp = IcmpLimiter::new(config.icmp_errors_per_second, config.icmp_burst);
            let (waker, handle) = spawn_worker(index, datapath.clone(), s.clone(), icmp, config.forwarding)
                .map_err(ControlError::Workers)?;
            wakers.push(waker);
            workers.push(handle);
            stats.push(s);
        }
        let control_stats = Arc::new(WorkerStats::default());
        stats.push(control_stats.clone());
        let ipam = super::ipam::open(&config)?;
        let hostnet = HostNet::connect()?;
        let mut registry = Registry::new(config.gateway_ip, gateway_mac, config.pod_mtu, datapath.clone());

        // The host port.
        let name = config.host_port.name.clone();
        let handed = handover.as_mut().and_then(|h| h.take_queues(&name)).filter(|q| q.len() == config.workers);
        let queues = match handed {
            Some(fds) => tap_queues_from(fds, &name),
            None => open_tap_queues(&name, None, Attach::CreatePersistent, config.workers)
                .await
                .map_err(|source| ControlError::Attach { name: name.clone(), source })?,
        };
        // IPv6 on (the node resolves its /128 routes to pods here with neighbour discovery, from
        // its link-local address), but no autoconfiguration from the router advertisements the
        // switch never sends. A node booted without IPv6 has none of these files.
        for (key, value) in [("disable_ipv6", "0"), ("accept_ra", "0"), ("autoconf", "0")] {
            match std::fs::write(format!("/proc/sys/net/ipv6/conf/{name}/{key}"), value) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                    tracing::warn!(port = %name, error = %e, "could not set ipv6 {key} on the host port")
                }
                _ => {}
            }
        }
        let queues = egress_queues(config.force_udp_segmentation, queues);
        let (host_ifindex, peer_mac) = hostnet.bring_up(&name, config.host_port.mtu).await?;
        let routes = host_routes(&config)?;
        let baseline = stats::port_totals(&stats, HOST_PORT);
        registry.attach_host(&name, config.host_port.mtu, peer_mac, queues, &routes, baseline);
        tracing::info!(port = %name, %peer_mac, ifindex = host_ifindex, "host port attached");

        let uplink = match &config.uplink {
            Some(uplink) => {
                let force = config.force_udp_segmentation;
                Some(attach_uplink(&mut registry, &hostnet, uplink, config.workers, force, handover.as_mut()).await?)
            }
            None => None,
        };
        let announcer = match &config.host_port.announce_on {
            Some(name) => {
                let (ifindex, mac) = hostnet.link(name).await?;
                let sender = PacketSocket::open_sender(ifindex)
                    .map_err(|source| ControlError::Uplink { name: name.clone(), source })?;
                tracing::info!(interface = %name, %mac, "pods are announced with gratuitous ARP from the node's NIC");
                Some(Announcer { name: name.clone(), ifindex, mac, sender })
            }
            None => None,
        };

        let switch = Arc::new(Switch {
            config,
            registry: Mutex::new(registry),
            datapath,
            wakers,
            workers: Mutex::new(workers),
            stats,
            control_stats,
            pods: Box::new(KernelPodIo {
                proxy_ndp_ifindex: announcer.as_ref().map(|a| a.ifindex),
                hostnet,
                host_ifindex,
                handed: Mutex::new(handover.map(|mut h| h.take_all()).unwrap_or_default()),
            }),
            frozen: AtomicBool::new(false),
            in_flight: tokio::sync::RwLock::new(()),
            behind_since: Mutex::new(None),
            watched_at: Mutex::new(None),
            uplink,
            announcer,
            state_file: Some(Mutex::new(state_file)),
            started: Instant::now(),
            ipam,
        });
        switch.wake_workers();
        switch.restore(saved).await;
        switch.adopt_ports_into_ipam().await;
        Ok((switch, slow_rx))
    }

    /// A switch with everything in memory: no workers, a host port of memory queues, pods
    /// attached with [`MemoryPodIo`], no uplink and no state file. The request dispatch is the
    /// real one; tests and the control-request fuzz target drive it.
    pub fn in_memory(config: Config) -> Result<Arc<Switch>, ApiError> {
        Self::in_memory_with(config, Box::new(MemoryPodIo), None)
    }

    /// [`Switch::in_memory`] with another pod I/O (to inject failures) and a state file.
    pub fn in_memory_with(
        config: Config,
        pods: Box<dyn PodIo>,
        state_file: Option<StateFile>,
    ) -> Result<Arc<Switch>, ApiError> {
        let ipam = super::ipam::open(&config)?;
        let gateway_mac = config.gateway_mac();
        let (slow_tx, _) = tokio::sync::mpsc::channel(1);
        let datapath = Arc::new(Datapath::new(Registry::empty_snapshot(config.gateway_ip, gateway_mac), slow_tx, 0));
        let control_stats = Arc::new(WorkerStats::default());
        let mut registry = Registry::new(config.gateway_ip, gateway_mac, config.pod_mtu, datapath.clone());
        let routes = host_routes(&config)?;
        let queue: Arc<dyn PortQueue> = Arc::new(crate::port::MemoryPort::default());
        let peer_mac = MacAddr([0x02, 0, 0, 0, 0, 1]);
        registry.attach_host(
            &config.host_port.name,
            config.host_port.mtu,
            peer_mac,
            vec![queue].into(),
            &routes,
            PortTotals::default(),
        );
        Ok(Arc::new(Switch {
            config,
            registry: Mutex::new(registry),
            datapath,
            wakers: Vec::new(),
            workers: Mutex::new(Vec::new()),
            stats: vec![control_stats.clone()],
            control_stats,
            pods,
            frozen: AtomicBool::new(false),
            in_flight: tokio::sync::RwLock::new(()),
            behind_since: Mutex::new(None),
            watched_at: Mutex::new(None),
            uplink: None,
            announcer: None,
            state_file: state_file.map(Mutex::new),
            started: Instant::now(),
            ipam,
        }))
    }

    fn registry(&self) -> MutexGuard<'_, Registry> {
        // A panic while holding the lock leaves the registry as consistent as any other
        // interrupted in-memory update; keep serving rather than poison every later request.
        self.registry.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn wake_workers(&self) {
        for waker in &self.wakers {
            let _ = waker.wake();
        }
    }

    fn now(&self) -> Duration {
        self.started.elapsed()
    }

    /// Re-attaches the saved pods and API routes; a pod whose namespace or TAP is gone is
    /// dropped (its DEL may never come, or came while we were down).
    async fn restore(self: &Arc<Self>, saved: SavedState) {
        for port in &saved.ports {
            match self.add_port(port.to_spec()).await {
                Ok(_) => tracing::info!(port = %port.name, "re-attached"),
                Err(e) => {
                    tracing::warn!(port = %port.name, error = %e, "not re-attached (its namespace or TAP is gone)")
                }
            }
        }
        for route in &saved.routes {
            let restored =
                parse_prefix(&route.prefix).and_then(|prefix| self.registry().add_route(prefix, &route.port, true));
            if let Err(e) = restored {
                tracing::warn!(prefix = %route.prefix, port = %route.port, error = %e, "saved route not restored");
            }
        }
        self.wake_workers();
        if let Err(e) = self.persist().await {
            tracing::error!(error = %e, "cannot save state");
        }
    }

    /// Saves pods and API routes. The state is read under the file's lock, so saves that race
    /// end with the newest state on disk.
    async fn persist(self: &Arc<Self>) -> Result<(), ApiError> {
        let switch = self.clone();
        tokio::task::spawn_blocking(move || {
            let Some(file) = &switch.state_file else { return Ok(()) };
            let file = file.lock().unwrap_or_else(|e| e.into_inner());
            let state = switch.saved_state();
            file.save(&state)
        })
        .await
        .map_err(|e| unavailable(format!("saving state: {e}")))?
        .map_err(|e| unavailable(format!("saving state: {e}")))
    }

    fn saved_state(&self) -> SavedState {
        let registry = self.registry();
        let ports = registry.ports().filter_map(|p| Some(SavedPort::from_spec(&spec_of(p)?, p.info.mtu))).collect();
        let routes = registry
            .api_routes()
            .into_iter()
            .map(|(prefix, port)| SavedRoute { prefix: prefix.to_string(), port })
            .collect();
        SavedState { format: FORMAT, ports, routes }
    }

    /// Serves one API request.
    pub async fn handle(self: &Arc<Self>, request: Request) -> Result<Response, ApiError> {
        let changes = matches!(
            request,
            Request::AddPort(_)
                | Request::DelPort { .. }
                | Request::AddRoute { .. }
                | Request::DelRoute { .. }
                | Request::IpamAssign(_)
                | Request::IpamRelease { .. }
                | Request::IpamGc { .. }
        );
        let _in_flight = if changes { Some(self.in_flight.read().await) } else { None };
        if changes && self.frozen.load(Ordering::Acquire) {
            return Err(unavailable("vswitchd is handing over to its upgrade; retry in a moment"));
        }
        match request {
            Request::AddPort(spec) => self.add_port(spec).await.map(|view| Response::Port(Box::new(view))),
            Request::DelPort { name, remove_device } => {
                self.del_port(&name, remove_device).await.map(|()| Response::Done)
            }
            Request::AddRoute { prefix, port, replace } => {
                let prefix = parse_prefix(&prefix)?;
                self.registry().add_route(prefix, &port, replace)?;
                self.wake_workers();
                self.persist().await.map(|()| Response::Done)
            }
            Request::DelRoute { prefix } => {
                let prefix = parse_prefix(&prefix)?;
                self.registry().del_route(prefix)?;
                self.wake_workers();
                self.persist().await.map(|()| Response::Done)
            }
            Request::Status => Ok(Response::Status(self.status())),
            Request::ListPorts => Ok(Response::Ports(self.list_ports())),
            Request::ListRoutes => Ok(Response::Routes(self.list_routes())),
            Request::ListNeighbors => Ok(Response::Neighbors(self.list_neighbors())),
            Request::Counters => Ok(Response::Counters(self.counters())),
            Request::Trace { port, frame } => self.trace(&port, &frame).map(Response::Trace),
            Request::TraceFlow(flow) => self.trace_flow(&flow).map(Response::Trace),
            Request::Drops { after } => Ok(Response::Drops(self.drop_samples(after))),
            Request::IpamAssign(spec) => self.handle_ipam(IpamRequest::Assign(spec)).await,
            Request::IpamRelease { owner } => self.handle_ipam(IpamRequest::Release(owner)).await,
            Request::IpamLookup { owner } => self.handle_ipam(IpamRequest::Lookup(owner)).await,
            Request::IpamGc { keep } => self.handle_ipam(IpamRequest::Gc(keep)).await,
            Request::Ipam => self.handle_ipam(IpamRequest::View).await,
        }
    }

    async fn add_port(self: &Arc<Self>, spec: PortSpec) -> Result<PortView, ApiError> {
        let reservation = self.registry().reserve_pod(spec)?;
        match self.open_pod(&reservation).await {
            Ok((queues, netns_id)) => {
                let addresses = PodAddresses::of(&reservation.spec);
                let id = {
                    let mut registry = self.registry();
                    let quiesced = self.datapath.quiesced();
                    let baseline = |id| stats::port_totals(&self.stats, id);
                    registry.commit_pod(reservation, queues, netns_id, baseline, quiesced)?
                };
                self.wake_workers();
                self.persist().await?;
                // Tell the VPC subnet where these addresses live now (a gratuitous ARP, an
                // unsolicited neighbour advertisement).
                addresses.iter().for_each(|ip| self.announce(ip));
                let registry = self.registry();
                let record = registry.record(id);
                let ips = addresses.iter().map(|ip| ip.to_string()).collect::<Vec<_>>().join(" ");
                tracing::info!(port = %record.info.name, %ips, id, pod = ?record.attachment.pod, "pod port attached");
                Ok(self.port_view(record))
            }
            Err(e) => {
                self.registry().cancel(&reservation);
                Err(e)
            }
        }
    }

    /// The I/O of an attach: the pod's TAP queues and the node's route to it.
    async fn open_pod(&self, reservation: &PodReservation) -> Result<(PortQueues, Option<(u64, u64)>), ApiError> {
        let spec = &reservation.spec;
        let netns_id = self.pods.netns_id(&spec.netns).ok_or_else(|| {
            ApiError::new(ErrorCode::NotFound, format!("network namespace {} does not exist", spec.netns.display()))
        })?;
        let queues = self.pods.open_queues(spec, self.config.workers).await?;
        let queues = egress_queues(self.config.force_udp_segmentation, queues);
        for ip in PodAddresses::of(spec).iter() {
            self.pods.add_host_route(ip).await?;
        }
        Ok((queues, Some(netns_id)))
    }

    pub(super) async fn del_port(self: &Arc<Self>, name: &str, remove_device: bool) -> Result<(), ApiError> {
        let record = self.registry().detach(name)?;
        self.wake_workers();
        // Saved before anything else can fail, so a deleted port never comes back at restart.
        self.persist().await?;
        if let PortRole::Pod { ip, ipv6, .. } = record.info.role {
            // A route left behind only misroutes the node's traffic to an address nobody holds;
            // it must not make the DEL fail (the port is gone already). Logged and counted.
            for ip in (PodAddresses { ip, ipv6 }).iter() {
                if let Err(e) = self.pods.remove_host_route(ip).await {
                    tracing::warn!(port = %name, %ip, error = %e, "could not remove the node's route to the pod");
                    self.control_stats.dropped(DropReason::TxError);
                }
            }
        }
        if let (true, Some(netns)) = (remove_device, record.attachment.netns.clone()) {
            // Our queues go when the workers drop the old snapshot; the device can go now.
            self.pods.delete_device(netns, record.attachment.ifname.clone());
        }
        tracing::info!(port = %name, id = record.info.id, "port removed");
        Ok(())
    }

    /// Marks pod ports whose namespace disappeared (or was replaced) without a DEL: they stop
    /// being polled and forwarded to, and show as `gone` until a DEL or GC removes them.
    pub fn check_devices(&self) {
        // While handing over, the queues' descriptors must stay as offered.
        if self.frozen.load(Ordering::Acquire) {
            return;
        }
        let mut registry = self.registry();
        let gone: Vec<(PortId, String)> = registry
            .ports()
            .filter(|p| p.link == vswitch_api::api::LinkState::Up)
            .filter_map(|p| {
                let (netns, attached) = (p.attachment.netns.as_ref()?, p.attachment.netns_id?);
                (self.pods.netns_id(netns) != Some(attached)).then(|| (p.info.id, p.info.name.clone()))
            })
            .collect();
        for (id, name) in gone {
            registry.mark_gone(id);
            tracing::warn!(port = %name, "the port's network namespace is gone without a DEL; port marked gone");
        }
        drop(registry);
        self.wake_workers();
    }

    /// Sends a frame (vnet header first) out of the uplink from the control plane. Frames that
    /// waited for a neighbour come this way: a UDP GSO one is cut into datagrams here, as a
    /// worker would, if the uplink cannot take it whole.
    fn send_on_uplink(&self, frame: &[u8]) {
        let Some(uplink) = &self.uplink else { return };
        let send = |frame: &[u8]| match uplink.sender.send(frame) {
            Ok(()) => self.control_stats.tx(uplink.port, frame.len()),
            Err(_) => self.control_stats.dropped(DropReason::TxError),
        };
        let cut = self.config.force_udp_segmentation || !uplink.sender.takes_udp_gso();
        if !(cut && udp_gso::is_udp_gso(frame)) {
            return send(frame);
        }
        let Ok(gso) = UdpGso::parse(frame) else {
            return self.control_stats.dropped(DropReason::UdpGsoMalformed);
        };
        self.control_stats.segmented(uplink.port);
        let mut datagram = vec![0u8; gso.max_segment_len()];
        for index in 0..gso.segments() {
            let len = gso.write_segment(frame, index, &mut datagram);
            send(&datagram[..len]);
        }
    }

    /// Broadcasts an ARP request on the uplink: `who-has target tell sender`. With sender
    /// 0.0.0.0 it is a probe (RFC 5227), which hosts answer without learning anything.
    fn send_arp(&self, op: Operation, sender_ip: Ipv4Addr, target_ip: Ipv4Addr) {
        let Some(uplink) = &self.uplink else { return };
        self.send_on_uplink(&arp_frame(uplink.mac, op, sender_ip, target_ip));
    }

    /// Asks the uplink's VPC subnet for `target`'s MAC (a multicast neighbour solicitation).
    fn send_neighbor_solicit(&self, target: Ipv6Addr) {
        let Some(uplink) = &self.uplink else { return };
        let mut frame = [0u8; vnet::LEN + ethernet::HEADER_LEN + icmpv6::NS_PACKET_LEN];
        let mut eth = EthernetFrame::new_checked(&mut frame[vnet::LEN..]).expect("sized");
        eth.set_dst(ipv6::multicast_mac(ipv6::solicited_node(target)));
        eth.set_src(uplink.mac);
        eth.set_ethertype(EtherType::Ipv6);
        icmpv6::emit_neighbor_solicit(eth.payload_mut(), uplink.ndp_source, target, uplink.mac);
        self.send_on_uplink(&frame);
    }

    /// Announces `ip` (a pod just attached here), so hosts that knew the address elsewhere
    /// update at once: a gratuitous ARP or an unsolicited neighbour advertisement, from the
    /// uplink, or from the node's NIC in host-routed mode.
    fn announce(&self, ip: IpAddr) {
        let (mac, sender, name) = match (&self.uplink, &self.announcer) {
            (Some(uplink), _) => {
                (uplink.mac, &uplink.sender, self.config.uplink.as_ref().map(|u| u.interface.as_str()))
            }
            (None, Some(announcer)) => (announcer.mac, &announcer.sender, Some(announcer.name.as_str())),
            (None, None) => return,
        };
        let sent = match ip {
            IpAddr::V4(ip) => sender.send(&arp_frame(mac, Operation::Request, ip, ip)),
            IpAddr::V6(ip) => {
                let mut frame = [0u8; vnet::LEN + ethernet::HEADER_LEN + icmpv6::NA_PACKET_LEN];
                let mut eth = EthernetFrame::new_checked(&mut frame[vnet::LEN..]).expect("sized");
                eth.set_dst(ipv6::multicast_mac(ipv6::ALL_NODES));
                eth.set_src(mac);
                eth.set_ethertype(EtherType::Ipv6);
                icmpv6::emit_unsolicited_neighbor_advert(eth.payload_mut(), ip, mac, false);
                sender.send(&frame)
            }
        };
        if let Err(e) = sent {
            tracing::warn!(interface = ?name, %ip, error = %e, "could not announce the pod");
        }
    }

    /// Does what the neighbour machinery asked for, outside the registry's lock.
    fn run_uplink_work(&self, work: UplinkWork) {
        for ip in work.ask {
            match ip {
                IpAddr::V4(ip) => self.send_arp(Operation::Request, Ipv4Addr::UNSPECIFIED, ip),
                IpAddr::V6(ip) => self.send_neighbor_solicit(ip),
            }
        }
        for (mut data, mac) in work.send {
            data[vnet::LEN..vnet::LEN + 6].copy_from_slice(&mac.0);
            self.send_on_uplink(&data);
        }
        self.control_stats.dropped_many(DropReason::NeighborUnresolved, work.unresolved_drops);
        self.control_stats.dropped_many(DropReason::NeighborQueueFull, work.queue_full_drops);
    }

    /// A packet from a worker's slow path.
    pub fn on_slow_packet(&self, packet: SlowPacket) {
        let now = self.now();
        let work = match packet.reason {
            SlowReason::Resolve { next_hop, .. } => self.registry().on_unresolved(next_hop, packet.data, now),
            SlowReason::Learn { .. } => {
                let Some((ip, mac)) = learned_neighbor(&packet.data) else { return };
                let work = self.registry().on_neighbor_reply(ip, mac, now);
                self.wake_workers();
                work
            }
        };
        self.run_uplink_work(work);
    }

    /// Neighbour timers: retries, failures, re-confirmation.
    pub fn on_neighbor_tick(&self) {
        let work = self.registry().on_neighbor_tick(self.now());
        self.wake_workers();
        self.run_uplink_work(work);
    }

    fn port_view(&self, p: &PortRecord) -> PortView {
        let role = match p.info.role {
            PortRole::Pod { ip, ipv6, mac } => ApiPortRole::Pod { ip, ipv6, mac },
            PortRole::Host { peer_mac } => ApiPortRole::Host { peer_mac },
            PortRole::Uplink { mac, .. } => ApiPortRole::Uplink { mac },
        };
        let c = stats::port_totals(&self.stats, p.info.id).since(p.baseline);
        PortView {
            id: p.info.id,
            name: p.info.name.clone(),
            role,
            mtu: p.info.mtu,
            netns: p.attachment.netns.clone(),
            ifname: p.attachment.ifname.clone(),
            pod: p.attachment.pod.clone(),
            bandwidth: p.attachment.bandwidth,
            link: p.link,
            counters: counters(c),
        }
    }

    pub fn status(&self) -> StatusView {
        let registry = self.registry();
        StatusView {
            version: env!("CARGO_PKG_VERSION").to_string(),
            uptime_seconds: self.started.elapsed().as_secs(),
            ports: registry.ports().count(),
            routes: registry.routes().count(),
            workers: self.config.workers,
            generation: registry.generation(),
        }
    }

    pub fn list_ports(&self) -> Vec<PortView> {
        let registry = self.registry();
        registry.ports().map(|p| self.port_view(p)).collect()
    }

    pub fn list_routes(&self) -> Vec<RouteView> {
        let registry = self.registry();
        registry
            .routes()
            .filter_map(|(prefix, r)| {
                let adj = registry.adjacency(r.adjacency)?;
                let protocol = if matches!(prefix, fib::AnyPrefix::V4(_)) { "arp" } else { "ndp" };
                let next_hop = match adj.next_hop {
                    NextHop::Mac(mac) => mac.to_string(),
                    NextHop::Resolve { via: Some(via) } => format!("{protocol} {via}"),
                    NextHop::Resolve { via: None } => protocol.to_string(),
                };
                Some(RouteView {
                    prefix: prefix.to_string(),
                    port: registry.record(r.port).info.name.clone(),
                    next_hop,
                    mtu: adj.mtu,
                    origin: r.origin.name().to_string(),
                })
            })
            .collect()
    }

    pub fn list_neighbors(&self) -> Vec<NeighborView> {
        let registry = self.registry();
        let port = registry.uplink().map_or_else(String::new, |u| u.info.name.clone());
        registry
            .neighbors()
            .list()
            .into_iter()
            .map(|n| NeighborView { ip: n.ip, mac: n.mac, port: port.clone(), state: n.state.to_string() })
            .collect()
    }

    /// Every drop reason with its count over all workers and the control plane.
    pub fn drops(&self) -> Vec<(DropReason, u64)> {
        DropReason::ALL.iter().map(|&r| (r, self.stats.iter().map(|s| s.drops(r)).sum())).collect()
    }

    pub fn counters(&self) -> CountersView {
        let (fib_routes, neighbors) = {
            let registry = self.registry();
            (registry.fib_routes(), registry.neighbors().len())
        };
        CountersView {
            ports: self.list_ports().into_iter().map(|p| (p.name, p.counters)).collect(),
            drops: self.drops().into_iter().map(|(r, n)| (r.name().to_string(), n)).collect(),
            fib_routes,
            neighbors,
        }
    }

    /// What /metrics shows, gathered under the lock once; rendered by [`super::metrics`].
    pub fn metrics_snapshot(&self) -> super::metrics::MetricsSnapshot {
        let (fib_routes, fib_memory, neighbors) = {
            let registry = self.registry();
            (registry.fib_routes(), registry.fib_memory(), registry.neighbors().len())
        };
        super::metrics::MetricsSnapshot {
            ports: self.list_ports(),
            drops: self.drops(),
            fib_routes,
            fib_memory,
            neighbors,
            uptime: self.started.elapsed(),
            process: super::metrics::ProcessStats::read(),
            shaping_delayed: self.stats.iter().map(|s| s.delayed_frames()).sum(),
            shaping_throttled: self.stats.iter().map(|s| s.throttled_batches()).sum(),
            ipam: self.ipam.as_ref().map(|i| i.metrics()),
        }
    }

    /// Is the datapath sound: every worker thread alive, and every worker forwarding with the
    /// latest published state (an idle worker takes it up within its 200 ms poll timeout, so one
    /// still behind after `STALE_AFTER` is stuck).
    pub fn health(&self) -> Health {
        const STALE_AFTER: Duration = Duration::from_secs(2);
        let generation = self.registry().generation();
        let quiesced = self.datapath.quiesced();
        let dead = self.workers.lock().unwrap_or_else(|e| e.into_inner()).iter().filter(|w| w.is_finished()).count();
        let mut behind = self.behind_since.lock().unwrap_or_else(|e| e.into_inner());
        let stuck_for = if quiesced >= generation {
            *behind = None;
            Duration::ZERO
        } else {
            behind.get_or_insert_with(Instant::now).elapsed()
        };
        let mut problems = Vec::new();
        if dead > 0 {
            problems.push(format!("{dead} of {} workers died", self.config.workers));
        }
        if stuck_for > STALE_AFTER {
            problems.push(format!("a worker has not taken up state {generation} for {stuck_for:?}"));
        }
        Health { generation, workers: self.config.workers, problems }
    }

    /// Runs a frame (hex, Ethernet onwards) through the pipeline as if it arrived on `port`, on
    /// the live state, without sending anything.
    pub fn trace(&self, port: &str, frame_hex: &str) -> Result<TraceView, ApiError> {
        let id = self
            .registry()
            .port_id(port)
            .ok_or_else(|| ApiError::new(ErrorCode::NotFound, format!("no port named '{port}'")))?;
        let digits: String = frame_hex.chars().filter(|c| !c.is_whitespace() && *c != ':').collect();
        let frame =
            hex::decode(&digits).map_err(|e| ApiError::new(ErrorCode::Invalid, format!("frame is not hex: {e}")))?;
        if frame.len() + vnet::LEN > MAX_FRAME {
            return Err(ApiError::new(ErrorCode::Invalid, "frame too long"));
        }
        let mut buf = vec![0u8; vnet::LEN];
        buf.extend_from_slice(&frame);
        let len = buf.len();
        Ok(trace::run(&self.datapath.snapshot.load(), &self.list_routes(), id, buf, len))
    }

    /// Builds a frame from a pod (port name or `NAMESPACE/POD`) to an address and traces it.
    pub fn trace_flow(&self, flow: &FlowSpec) -> Result<TraceView, ApiError> {
        let (id, ip, mac, mtu) = {
            let registry = self.registry();
            let pod = registry
                .ports()
                .find(|p| {
                    p.info.name == flow.from
                        || p.attachment.pod.as_ref().is_some_and(|pod| pod.to_string() == flow.from)
                })
                .ok_or_else(|| ApiError::new(ErrorCode::NotFound, format!("no pod or port '{}'", flow.from)))?;
            let PortRole::Pod { ip, ipv6, mac } = pod.info.role else {
                return Err(ApiError::new(ErrorCode::Invalid, format!("'{}' is not a pod port", flow.from)));
            };
            let ip = if flow.to.is_ipv6() { ipv6.map(IpAddr::V6) } else { ip.map(IpAddr::V4) };
            let ip = ip.ok_or_else(|| {
                ApiError::new(ErrorCode::Invalid, format!("'{}' has no address of {}'s family", flow.from, flow.to))
            })?;
            (pod.info.id, ip, mac, pod.info.mtu)
        };
        let (buf, len) = trace::flow_frame(flow, ip, mac, self.config.gateway_mac(), mtu)?;
        Ok(trace::run(&self.datapath.snapshot.load(), &self.list_routes(), id, buf, len))
    }

    /// Recent drops from `after` on, with their pods; turns sampling on for `WATCH_FOR`.
    pub fn drop_samples(&self, after: u64) -> DropsView {
        *self.watched_at.lock().unwrap_or_else(|e| e.into_inner()) = Some(Instant::now());
        self.datapath.drops.set_watching(true);
        let (samples, next) = self.datapath.drops.since(after);
        let registry = self.registry();
        let samples = samples
            .into_iter()
            .map(|s| {
                let record = registry.ports().find(|p| p.info.id == s.port);
                DropSampleView {
                    seq: s.seq,
                    unix_ms: s.unix_ms,
                    port: record.map_or_else(|| s.port.to_string(), |r| r.info.name.clone()),
                    pod: record.and_then(|r| r.attachment.pod.clone()),
                    reason: s.reason.name().to_string(),
                    src: s.src,
                    dst: s.dst,
                    protocol: s.protocol.map(|p| match p {
                        1 => "icmp".to_string(),
                        6 => "tcp".to_string(),
                        17 => "udp".to_string(),
                        other => other.to_string(),
                    }),
                    src_port: s.ports.map(|p| p.0),
                    dst_port: s.ports.map(|p| p.1),
                }
            })
            .collect();
        DropsView { samples, next }
    }

    /// Sampling stops when nobody asked for drops for a while (no cost when nobody watches).
    pub fn expire_drop_watch(&self) {
        const WATCH_FOR: Duration = Duration::from_secs(5);
        let mut watched = self.watched_at.lock().unwrap_or_else(|e| e.into_inner());
        if watched.is_some_and(|at| at.elapsed() > WATCH_FOR) {
            *watched = None;
            self.datapath.drops.set_watching(false);
        }
    }

    /// Stops taking changes and lists what an upgrade takes over: the state and every port's
    /// queue descriptors (which stay open here until this process exits).
    /// Blocks until the changes in flight are done (call it off the async runtime).
    pub fn freeze_and_offer(&self) -> Offer {
        self.frozen.store(true, Ordering::Release);
        let _no_changes = self.in_flight.blocking_write();
        let ports = self
            .registry()
            .ports()
            .filter_map(|p| {
                let fds: Vec<RawFd> = p.queues.as_ref()?.iter().filter_map(|q| q.raw_fd()).collect();
                Some((p.info.name.clone(), fds))
            })
            .collect();
        Offer {
            state: self.saved_state(),
            workers: self.config.workers,
            ports,
            uplink_sender: self.uplink.as_ref().and_then(|u| u.sender.raw_fd()),
        }
    }

    /// The upgrade did not take over: take changes again.
    pub fn thaw(&self) {
        self.frozen.store(false, Ordering::Release);
    }

    /// Stops the workers. TAP devices persist, so pods keep their interfaces.
    pub fn shutdown(&self) {
        self.datapath.stop.store(true, Ordering::Relaxed);
        self.wake_workers();
        let workers = std::mem::take(&mut *self.workers.lock().unwrap_or_else(|e| e.into_inner()));
        for handle in workers {
            let _ = handle.join();
        }
    }
}

/// What /healthz reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Health {
    pub generation: u64,
    pub workers: usize,
    /// Empty when healthy.
    pub problems: Vec<String>,
}

/// The host port's routes from the configuration: its extra prefixes, and the defaults of both
/// families if asked.
fn host_routes(config: &Config) -> Result<Vec<fib::AnyPrefix>, ApiError> {
    let mut routes = config.host_port.routes.iter().map(|p| parse_prefix(p)).collect::<Result<Vec<_>, _>>()?;
    if config.host_port.default_route {
        routes.push(parse_prefix("0.0.0.0/0").expect("valid"));
        routes.push(parse_prefix("::/0").expect("valid"));
    }
    Ok(routes)
}

/// What an ARP reply or announcement, or a neighbour advertisement, heard on the uplink says:
/// where an address is now. Only neighbours already in the table are updated with it.
fn learned_neighbor(data: &[u8]) -> Option<(IpAddr, MacAddr)> {
    let eth = EthernetFrame::new_checked(data.get(vnet::LEN..)?).ok()?;
    match eth.ethertype() {
        EtherType::Arp => {
            let arp = ArpPacket::new_checked(eth.payload()).ok()?;
            // A reply, or an announcement (a gratuitous request).
            let announcement = arp.sender_ip() == arp.target_ip();
            (arp.operation() == Operation::Reply || announcement).then(|| (arp.sender_ip().into(), arp.sender_mac()))
        }
        EtherType::Ipv6 => {
            let ip = Ipv6Packet::new_checked(eth.payload()).ok()?;
            let upper = ip.upper_layer().ok()?;
            let na = NeighborAdvert::new_checked(ip.packet().get(upper.offset..)?).ok()?;
            // Without a target link-layer option (allowed in a solicited reply), the sender's MAC.
            Some((na.target().into(), na.target_mac().unwrap_or(eth.src())))
        }
        _ => None,
    }
}

fn counters(c: PortTotals) -> PortCounters {
    PortCounters {
        rx_packets: c.rx_packets,
        rx_bytes: c.rx_bytes,
        tx_packets: c.tx_packets,
        tx_bytes: c.tx_bytes,
        rx_dropped: c.rx_dropped,
        tx_segmented: c.tx_segmented,
    }
}

/// A port's queues as the datapath gets them: with `force_udp_segmentation`, each wrapped to
/// refuse UDP GSO frames, so the workers cut them into datagrams (tests and diagnosis).
fn egress_queues(force_udp_segmentation: bool, queues: PortQueues) -> PortQueues {
    if !force_udp_segmentation {
        return queues;
    }
    queues.iter().map(|q| Arc::new(NoUdpGso(q.clone())) as Arc<dyn PortQueue>).collect::<Vec<_>>().into()
}

/// What a pod port was attached with, for the state file; `None` for the host port and uplink.
fn spec_of(p: &PortRecord) -> Option<PortSpec> {
    let PortRole::Pod { ip, ipv6, mac } = p.info.role else { return None };
    Some(PortSpec {
        name: p.info.name.clone(),
        netns: p.attachment.netns.clone()?,
        ifname: p.attachment.ifname.clone(),
        ip,
        ipv6,
        mac,
        mtu: Some(p.info.mtu),
        pod: p.attachment.pod.clone(),
        bandwidth: p.attachment.bandwidth,
    })
}

/// A broadcast ARP packet from `mac` (with the packet socket's virtio-net header in front).
fn arp_frame(
    mac: MacAddr,
    op: Operation,
    sender_ip: Ipv4Addr,
    target_ip: Ipv4Addr,
) -> [u8; vnet::LEN + ethernet::HEADER_LEN + arp::PACKET_LEN] {
    let mut frame = [0u8; vnet::LEN + ethernet::HEADER_LEN + arp::PACKET_LEN];
    let mut eth = EthernetFrame::new_checked(&mut frame[vnet::LEN..]).expect("sized");
    eth.set_dst(MacAddr::BROADCAST);
    eth.set_src(mac);
    eth.set_ethertype(EtherType::Arp);
    arp::emit(eth.payload_mut(), op, (mac, sender_ip), (MacAddr::ZERO, target_ip));
    frame
}

/// Attaches the dedicated NIC: one fanout socket per worker, the subnet and the default route
/// through it, and the kernel kept off it (no forwarding, no ARP replies, no IPv6).
async fn attach_uplink(
    registry: &mut Registry,
    hostnet: &HostNet,
    config: &UplinkConfig,
    workers: usize,
    force_udp_segmentation: bool,
    handover: Option<&mut Handover>,
) -> Result<Uplink, ControlError> {
    let name = config.interface.clone();
    let uplink_error = |source| ControlError::Uplink { name: name.clone(), source };
    let (ifindex, mac) = hostnet.bring_up(&name, config.mtu).await?;
    for (key, value) in
        [("ipv4/conf/{}/forwarding", "0"), ("ipv4/conf/{}/arp_ignore", "8"), ("ipv6/conf/{}/disable_ipv6", "1")]
    {
        let path = format!("/proc/sys/net/{}", key.replace("{}", &name));
        std::fs::write(&path, value)
            .map_err(|e| uplink_error(std::io::Error::new(e.kind(), format!("{path}: {e}"))))?;
    }
    // Fanout groups are per namespace; the pid keeps two daemons' groups apart.
    let group = (std::process::id() & 0xffff) as u16;
    // Handed over by the instance being upgraded: the same sockets, already in their group.
    let handed = handover.and_then(|h| Some((h.take_queues(&name)?, h.uplink_sender.take()?)));
    let (queues, sender): (Vec<Arc<dyn PortQueue>>, PacketSocket) = match handed {
        Some((fds, sender)) if fds.len() == workers => (
            fds.into_iter().map(|fd| Arc::new(PacketSocket::from_fd(fd)) as Arc<dyn PortQueue>).collect(),
            PacketSocket::from_fd(sender),
        ),
        _ => (
            (0..workers)
                .map(|_| PacketSocket::open_queue(ifindex, group).map(|s| Arc::new(s) as Arc<dyn PortQueue>))
                .collect::<Result<_, _>>()
                .map_err(uplink_error)?,
            PacketSocket::open_sender(ifindex).map_err(uplink_error)?,
        ),
    };
    let mut subnets = vec![parse_prefix(&config.subnet)?];
    if let Some(subnet6) = &config.subnet6 {
        subnets.push(parse_prefix(subnet6)?);
    }
    // ICMP errors sent out of the uplink come from this address (none without one).
    let ip = match config.address {
        Some(ip) => Some(ip),
        None => hostnet.first_ipv4(ifindex).await?,
    };
    let gateways = config.gateway.map(IpAddr::V4).into_iter().chain(config.gateway6.map(IpAddr::V6)).collect();
    let spec = UplinkSpec { mac, ip, ipv6: config.address6, subnets: subnets.clone(), gateways };
    let port = registry.attach_uplink(&name, config.mtu, spec, egress_queues(force_udp_segmentation, queues.into()))?;
    tracing::info!(uplink = %name, %mac, ?ip, ipv6 = ?config.address6, ifindex, ?subnets, "uplink attached");
    let ndp_source = config.address6.unwrap_or_else(|| mac.link_local());
    Ok(Uplink { port, mac, ndp_source, sender })
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::future::BoxFuture;
    use vswitch_api::api::{PortView, Reply};

    fn spec(name: &str, last: u8) -> PortSpec {
        PortSpec {
            name: name.into(),
            netns: format!("/run/netns/{name}").into(),
            ifname: "eth0".into(),
            ip: Some(Ipv4Addr::new(10, 0, 0, last)),
            ipv6: None,
            mac: MacAddr::local_from([10, 0, 0, last]),
            mtu: None,
            pod: None,
            bandwidth: None,
        }
    }

    fn runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap()
    }

    fn names(ports: &[PortView]) -> Vec<(String, String)> {
        ports.iter().map(|p| (p.name.clone(), format!("{:?}", p.role))).collect()
    }

    #[test]
    fn a_restored_switch_has_the_saved_ports_and_api_routes() {
        let rt = runtime();
        let first = Switch::in_memory(Config::default()).unwrap();
        for (name, last) in [("a", 2), ("b", 3)] {
            rt.block_on(first.handle(Request::AddPort(spec(name, last)))).unwrap();
        }
        let route = Request::AddRoute { prefix: "10.96.0.0/12".into(), port: "b".into(), replace: false };
        rt.block_on(first.handle(route)).unwrap();
        let saved = first.saved_state();
        assert_eq!(saved.ports.len(), 2);
        assert_eq!(saved.routes, vec![SavedRoute { prefix: "10.96.0.0/12".into(), port: "b".into() }]);

        let second = Switch::in_memory(Config::default()).unwrap();
        rt.block_on(second.restore(saved));
        assert_eq!(names(&second.list_ports()), names(&first.list_ports()));
        let routes = |s: &Switch| s.list_routes().into_iter().map(|r| (r.prefix, r.port, r.origin)).collect::<Vec<_>>();
        assert_eq!(routes(&second), routes(&first));
    }

    /// Pod I/O whose node route removal always fails.
    #[derive(Debug)]
    struct RouteRemovalFails;

    impl PodIo for RouteRemovalFails {
        fn netns_id(&self, path: &std::path::Path) -> Option<(u64, u64)> {
            MemoryPodIo.netns_id(path)
        }
        fn open_queues<'a>(
            &'a self,
            spec: &'a PortSpec,
            workers: usize,
        ) -> BoxFuture<'a, Result<PortQueues, ApiError>> {
            MemoryPodIo.open_queues(spec, workers)
        }
        fn add_host_route(&self, _: IpAddr) -> BoxFuture<'_, Result<(), ApiError>> {
            Box::pin(async { Ok(()) })
        }
        fn remove_host_route(&self, _: IpAddr) -> BoxFuture<'_, Result<(), ApiError>> {
            Box::pin(async { Err(unavailable("netlink: no buffer space")) })
        }
        fn delete_device(&self, _: std::path::PathBuf, _: String) {}
    }

    #[test]
    fn a_deleted_port_stays_deleted_when_netlink_fails() {
        let rt = runtime();
        let dir = tempfile::tempdir().unwrap();
        let file = StateFile::open(dir.path(), 1500).unwrap();
        let switch = Switch::in_memory_with(Config::default(), Box::new(RouteRemovalFails), Some(file)).unwrap();
        rt.block_on(switch.handle(Request::AddPort(spec("a", 2)))).unwrap();
        assert_eq!(StateFile::open(dir.path(), 1500).unwrap().load().unwrap().ports.len(), 1);
        rt.block_on(switch.handle(Request::DelPort { name: "a".into(), remove_device: false })).unwrap();
        // Saved before the failing netlink call: a restart does not bring the port back.
        assert!(StateFile::open(dir.path(), 1500).unwrap().load().unwrap().ports.is_empty());
        assert_eq!(switch.drops().iter().find(|(r, _)| *r == DropReason::TxError).map(|(_, n)| *n), Some(1));
    }

    /// Where the recorded replies live: one request line, then its reply line.
    const TRANSCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/src/control/testdata/replies.jsonl");

    /// The replies to `status`, `list_ports`, `list_routes`, `counters` and `drops` on a switch
    /// with pods of both families, a port removed, config, port and API routes, counted
    /// traffic and sampled drops; times zeroed (they change run to run).
    fn transcript() -> Vec<(String, String)> {
        let rt = runtime();
        let mut config = Config::default();
        config.host_port.routes = vec!["10.96.0.0/12".into(), "fd00:96::/108".into()];
        let switch = Switch::in_memory_with(config, Box::new(RouteRemovalFails), None).unwrap();
        let dual = PortSpec {
            ipv6: Some("fd00:10::3".parse().unwrap()),
            pod: Some(vswitch_api::api::PodRef { namespace: "default".into(), name: "web-0".into() }),
            bandwidth: Some(vswitch_api::api::Bandwidth {
                ingress: Some(vswitch_api::api::RateLimit { rate_bps: 10_000_000, burst_bits: 80_000 }),
                egress: None,
            }),
            ..spec("b", 3)
        };
        let v6_only = PortSpec { ip: None, ipv6: Some("fd00:10::4".parse().unwrap()), ..spec("c", 4) };
        for port in [spec("a", 2), dual, v6_only] {
            rt.block_on(switch.handle(Request::AddPort(port))).unwrap();
        }
        let route = Request::AddRoute { prefix: "10.20.0.0/16".into(), port: "b".into(), replace: false };
        rt.block_on(switch.handle(route)).unwrap();
        // The node's route to c cannot be removed: a tx_error.
        rt.block_on(switch.handle(Request::DelPort { name: "c".into(), remove_device: false })).unwrap();
        switch.control_stats.rx(1, 1500);
        switch.control_stats.tx(2, 90);
        // Asking turns sampling on; then a spoofed UDP packet from a and a frame that is not IP.
        rt.block_on(switch.handle(Request::Drops { after: 0 })).unwrap();
        let flow = FlowSpec {
            from: "a".into(),
            to: "10.0.0.3".parse().unwrap(),
            protocol: vswitch_api::api::FlowProtocol::Udp { port: 53 },
            size: None,
            gso: false,
        };
        let gateway = switch.config.gateway_mac();
        let (frame, len) =
            trace::flow_frame(&flow, "10.0.0.9".parse().unwrap(), MacAddr([2, 0, 0, 0, 0, 9]), gateway, 1500).unwrap();
        switch.datapath.drops.sample(1, DropReason::SpoofedSourceIp, &frame[..len]);
        switch.datapath.drops.sample(0, DropReason::UnsupportedEtherType, &[0u8; 30]);

        let requests =
            [Request::Status, Request::ListPorts, Request::ListRoutes, Request::Counters, Request::Drops { after: 0 }];
        requests
            .into_iter()
            .map(|request| {
                let line = serde_json::to_string(&request).unwrap();
                let reply = match rt.block_on(switch.handle(request)).unwrap() {
                    Response::Status(status) => Response::Status(StatusView { uptime_seconds: 0, ..status }),
                    Response::Drops(mut drops) => {
                        drops.samples.iter_mut().for_each(|s| s.unix_ms = 0);
                        Response::Drops(drops)
                    }
                    other => other,
                };
                (line, serde_json::to_string(&Reply::from_result(Ok(reply))).unwrap())
            })
            .collect()
    }

    /// A reply line read by a client as the view it expects, and written again.
    fn as_client_reads_it<T: serde::de::DeserializeOwned + serde::Serialize>(line: &str) -> String {
        let reply: Reply<T> = serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"));
        serde_json::to_string(&reply).unwrap()
    }

    /// The API's replies, byte for byte as recorded (set RECORD_REPLIES=1 to record them again,
    /// only on purpose: clients read these lines).
    #[test]
    fn replies_are_the_recorded_ones_and_clients_read_them_back() {
        let lines = transcript();
        if std::env::var_os("RECORD_REPLIES").is_some() {
            let text: String = lines.iter().map(|(q, a)| format!("{q}\n{a}\n")).collect();
            std::fs::write(TRANSCRIPT, text).unwrap();
        }
        let recorded = std::fs::read_to_string(TRANSCRIPT).unwrap();
        let recorded: Vec<&str> = recorded.lines().collect();
        let produced: Vec<&str> = lines.iter().flat_map(|(q, a)| [q.as_str(), a.as_str()]).collect();
        assert_eq!(produced, recorded);
        for (request, reply) in &lines {
            let again = match serde_json::from_str::<Request>(request).unwrap() {
                Request::Status => as_client_reads_it::<StatusView>(reply),
                Request::ListPorts => as_client_reads_it::<Vec<PortView>>(reply),
                Request::ListRoutes => as_client_reads_it::<Vec<RouteView>>(reply),
                Request::Counters => as_client_reads_it::<CountersView>(reply),
                Request::Drops { .. } => as_client_reads_it::<DropsView>(reply),
                other => panic!("no view for {other:?}"),
            };
            assert_eq!(&again, reply);
        }
    }

    #[test]
    fn an_in_memory_switch_is_healthy() {
        let switch = Switch::in_memory(Config::default()).unwrap();
        assert_eq!(switch.health().problems, Vec::<String>::new());
    }

    #[test]
    fn requests_get_typed_answers_and_error_codes() {
        let rt = runtime();
        let switch = Switch::in_memory(Config::default()).unwrap();
        let added = rt.block_on(switch.handle(Request::AddPort(spec("a", 2)))).unwrap();
        assert!(matches!(added, Response::Port(ref p) if p.name == "a"));
        let code = |r: Request| rt.block_on(switch.handle(r)).unwrap_err().code;
        assert_eq!(code(Request::AddPort(spec("a", 3))), ErrorCode::Exists);
        assert_eq!(code(Request::AddPort(spec("b", 2))), ErrorCode::Conflict);
        let missing = PortSpec { netns: "/nonexistent/ns".into(), ..spec("c", 4) };
        assert_eq!(code(Request::AddPort(missing)), ErrorCode::NotFound);
        assert_eq!(code(Request::DelPort { name: "zz".into(), remove_device: false }), ErrorCode::NotFound);
        assert_eq!(code(Request::Trace { port: "a".into(), frame: "aéa".into() }), ErrorCode::Invalid);
        assert_eq!(code(Request::DelRoute { prefix: "10.0.0.2/32".into() }), ErrorCode::Conflict);
        // A failed attach left nothing reserved: the name and address can be used.
        rt.block_on(switch.handle(Request::AddPort(spec("c", 4)))).unwrap();
    }
}
