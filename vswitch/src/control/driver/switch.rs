//! The switch: the parts of the driver put together, and each API request and event handed to
//! the part that serves it. The parts own their state; this file owns none beyond the wiring.

use std::sync::Arc;
use std::time::Instant;

use vswitch_api::api::{ApiError, Attachment, PortView, Request, Response, RouteView, StatusView};

use super::errors::{ControlError, RequestError};
use super::inspect::{self, DropWatch};
use super::ipam::{self, IpamRequest, IpamService};
use super::ports::Ports;
use super::publisher::Publisher;
use super::saver::Saver;
use super::slow_path::SlowPath;
use super::startup;
use super::upgrade::{self, ChangeGate};
use super::uplink::{Announcer, Uplink, UplinkSender};
use super::views;
use super::workers::{Counters, Health, Workers};
use crate::control::config::Config;
use crate::control::eni::EniRouting;
use crate::control::handover::{Handover, Offer};
use crate::control::hostnet::HostNet;
use crate::control::metrics::{MetricsSnapshot, ProcessStats};
use crate::control::persist::{SavedState, StateFile};
use crate::control::podio::{KernelPodIo, MemoryPodIo, PodIo};
use crate::control::registry::{Registry, RegistryError};
use crate::datapath::{Datapath, PortTotals, SlowPacket};
use crate::ipam::IpamError;
use crate::pipeline::DropReason;
use crate::port::{MemoryPort, PortQueue};
use crate::wire::MacAddr;

/// vswitchd's control plane: answers the API, drives the registry with what the workers and the
/// timers hand up, and keeps the state file, each through one of its parts.
pub struct Switch {
    config: Config,
    started: Instant,
    publisher: Arc<Publisher>,
    workers: Workers,
    counters: Arc<Counters>,
    gate: Arc<ChangeGate>,
    saver: Arc<Saver>,
    uplink: Arc<UplinkSender>,
    ports: Arc<Ports>,
    slow_path: SlowPath,
    drop_watch: DropWatch,
    /// Cluster address allocation (`[ipam]`), if configured.
    ipam: Option<Arc<IpamService>>,
}

impl std::fmt::Debug for Switch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Switch").field("config", &self.config).finish_non_exhaustive()
    }
}

/// What [`Switch::assemble`] puts together.
struct Parts {
    publisher: Arc<Publisher>,
    workers: Workers,
    counters: Counters,
    pods: Box<dyn PodIo>,
    uplink: Option<Uplink>,
    announcer: Option<Announcer>,
    state_file: Option<StateFile>,
    ipam: Option<Arc<ipam::Ipam>>,
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
        let saved = startup::saved_state(&config, &state_file, handover.as_ref())?;

        let (slow_tx, slow_rx) = tokio::sync::mpsc::channel(crate::datapath::SLOW_PATH_DEPTH);
        let gateway_mac = config.gateway_mac();
        let datapath =
            Arc::new(Datapath::new(Registry::empty_snapshot(config.gateway_ip, gateway_mac), slow_tx, config.workers));
        let (workers, wakers, counters) = Workers::spawn(&config, &datapath).map_err(ControlError::Workers)?;
        let ipam = ipam::open(&config, ipam::discover(&config).await?)?;
        let hostnet = HostNet::connect()?;
        let registry = Registry::new(config.gateway_ip, gateway_mac, config.pod_mtu);
        let publisher = Arc::new(Publisher::new(registry, datapath, wakers));

        let host_ifindex =
            startup::attach_host_port(&config, &hostnet, &publisher, &counters, handover.as_mut()).await?;
        let uplink = match &config.uplink {
            Some(uplink) => {
                Some(startup::attach_uplink(&config, uplink, &hostnet, &publisher, handover.as_mut()).await?)
            }
            None => None,
        };
        let announcer = startup::open_announcer(&config, &hostnet).await?;
        let handed_neighbors = handover.as_mut().map(|h| std::mem::take(&mut h.neighbors)).unwrap_or_default();
        // Host-routed on AWS: pods of later ENIs are routed through their NICs by the node.
        let eni = match (&config.uplink, &ipam) {
            (None, Some(ipam)) => EniRouting::new(hostnet.handle(), ipam.clone()).map(Arc::new),
            _ => None,
        };
        let pods = KernelPodIo {
            proxy_ndp_ifindex: announcer.as_ref().map(|a| a.ifindex),
            eni,
            hostnet,
            host_ifindex,
            handed: std::sync::Mutex::new(handover.map(|mut h| h.take_all()).unwrap_or_default()),
        };
        let parts = Parts {
            publisher,
            workers,
            counters,
            pods: Box::new(pods),
            uplink,
            announcer,
            state_file: Some(state_file),
            ipam,
        };
        let switch = Switch::assemble(config, parts);
        switch.publisher.wake_workers();
        switch.slow_path.adopt_neighbors(&handed_neighbors);
        switch.restore(saved).await;
        if let Some(ipam) = &switch.ipam {
            ipam.adopt_ports().await;
        }
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
        let ipam = ipam::open(&config, None).map_err(super::ipam_errors::api_error)?;
        let gateway_mac = config.gateway_mac();
        let (slow_tx, _) = tokio::sync::mpsc::channel(1);
        let datapath = Arc::new(Datapath::new(Registry::empty_snapshot(config.gateway_ip, gateway_mac), slow_tx, 0));
        let registry = Registry::new(config.gateway_ip, gateway_mac, config.pod_mtu);
        let publisher = Arc::new(Publisher::new(registry, datapath, Vec::new()));
        let queue: Arc<dyn PortQueue> = Arc::new(MemoryPort::default());
        let (name, mtu, routes) = (&config.host_port.name, config.host_port.mtu, startup::host_routes(&config));
        let peer_mac = MacAddr([0x02, 0, 0, 0, 0, 1]);
        publisher.update(|registry, _| {
            registry.attach_host(name, mtu, peer_mac, vec![queue].into(), &routes, PortTotals::default())
        });
        let (workers, counters) = Workers::none(config.workers);
        let parts = Parts { publisher, workers, counters, pods, uplink: None, announcer: None, state_file, ipam };
        Ok(Switch::assemble(config, parts))
    }

    /// Wires the parts to each other.
    fn assemble(config: Config, parts: Parts) -> Arc<Switch> {
        let Parts { publisher, workers, counters, pods, uplink, announcer, state_file, ipam } = parts;
        let counters = Arc::new(counters);
        let gate = Arc::new(ChangeGate::default());
        let saver = Arc::new(Saver::new(state_file, publisher.clone()));
        let uplink = Arc::new(UplinkSender::new(uplink, announcer, counters.clone(), config.force_udp_segmentation));
        let ports =
            Arc::new(Ports::new(&config, pods, (publisher.clone(), counters.clone(), saver.clone(), uplink.clone())));
        let ipam = ipam.map(|ipam| Arc::new(IpamService::new(ipam, publisher.clone(), ports.clone(), gate.clone())));
        Arc::new(Switch {
            started: Instant::now(),
            slow_path: SlowPath::new(publisher.clone(), uplink.clone()),
            drop_watch: DropWatch::new(publisher.datapath().drops.clone()),
            config,
            publisher,
            workers,
            counters,
            gate,
            saver,
            uplink,
            ports,
            ipam,
        })
    }

    /// Re-attaches the saved pods and API routes, then saves what was attached.
    pub async fn restore(&self, saved: SavedState) {
        startup::restore(saved, &self.ports, &self.publisher, &self.saver).await
    }

    /// Serves one API request.
    pub async fn handle(&self, request: Request) -> Result<Response, ApiError> {
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
        let _in_flight = if changes { Some(self.gate.enter().await?) } else { None };
        Ok(self.dispatch(request).await?)
    }

    async fn dispatch(&self, request: Request) -> Result<Response, RequestError> {
        let registry = || self.publisher.registry();
        Ok(match request {
            Request::AddPort(spec) => {
                let id = self.ports.add(spec.into()).await?;
                let view = views::port(registry().record(id), &self.counters);
                Response::Port(Box::new(view))
            }
            Request::DelPort { name, remove_device } => {
                self.ports.remove(&name, remove_device).await?;
                Response::Done
            }
            Request::AddRoute { prefix, port, replace } => {
                let prefix = views::prefix(&prefix)?;
                self.publisher.update(|registry, _| registry.add_route(prefix, &port, replace))?;
                self.saver.save().await?;
                Response::Done
            }
            Request::DelRoute { prefix } => {
                let prefix = views::prefix(&prefix)?;
                self.publisher.update(|registry, _| registry.del_route(prefix))?;
                self.saver.save().await?;
                Response::Done
            }
            Request::Status => Response::Status(self.status()),
            Request::ListPorts => Response::Ports(self.list_ports()),
            Request::ListRoutes => Response::Routes(self.list_routes()),
            Request::ListNeighbors => Response::Neighbors(views::neighbors(&registry())),
            Request::Counters => Response::Counters(views::counters(&registry(), &self.counters)),
            Request::Trace { port, frame } => Response::Trace(inspect::trace_frame(&self.publisher, &port, &frame)?),
            Request::TraceFlow(flow) => {
                Response::Trace(inspect::trace_flow(&self.publisher, &flow, self.config.gateway_mac())?)
            }
            Request::Drops { after } => Response::Drops(self.drop_watch.samples(&self.publisher, after)),
            Request::IpamAssign(spec) => self.ipam()?.handle(IpamRequest::Assign(spec)).await?,
            Request::IpamRelease { owner } => self.ipam()?.handle(IpamRequest::Release(owner)).await?,
            Request::IpamLookup { owner } => self.ipam()?.handle(IpamRequest::Lookup(owner)).await?,
            Request::IpamGc { keep } => self.ipam()?.handle(IpamRequest::Gc(keep)).await?,
            Request::Ipam => self.ipam()?.handle(IpamRequest::View).await?,
        })
    }

    fn ipam(&self) -> Result<&IpamService, RequestError> {
        self.ipam.as_deref().ok_or(RequestError::Ipam(IpamError::Off))
    }

    /// The IPAM's upkeep, for its timer (none without `[ipam]`).
    pub fn ipam_upkeep(&self) -> Option<Arc<IpamService>> {
        self.ipam.clone()
    }

    pub fn status(&self) -> StatusView {
        views::status(&self.publisher.registry(), self.workers.count(), self.started.elapsed())
    }

    pub fn list_ports(&self) -> Vec<PortView> {
        views::ports(&self.publisher.registry(), &self.counters)
    }

    pub fn list_routes(&self) -> Vec<RouteView> {
        views::routes(&self.publisher.registry())
    }

    /// Every drop reason with its count over all workers and the control plane.
    pub fn drops(&self) -> Vec<(DropReason, u64)> {
        self.counters.drops()
    }

    /// What /metrics shows, gathered under the lock once; rendered by `metrics`.
    pub fn metrics_snapshot(&self) -> MetricsSnapshot {
        let (ports, fib_routes, fib_memory, neighbors) = {
            let registry = self.publisher.registry();
            let ports = views::ports(&registry, &self.counters);
            (ports, registry.fib_routes(), registry.fib_memory(), registry.neighbors().len())
        };
        let (shaping_delayed, shaping_throttled) = self.counters.shaping();
        MetricsSnapshot {
            ports,
            drops: self.counters.drops(),
            fib_routes,
            fib_memory,
            neighbors,
            uptime: self.started.elapsed(),
            process: ProcessStats::read(),
            shaping_delayed,
            shaping_throttled,
            gone_ports_removed: self.ports.gone_removed(),
            ipam: self.ipam.as_ref().and_then(|i| i.metrics()),
            provider_api: self.ipam.as_ref().and_then(|i| i.provider_api()),
        }
    }

    pub fn health(&self) -> Health {
        let generation = self.publisher.registry().generation();
        self.workers.health(generation, self.publisher.datapath().quiesced())
    }

    /// A packet from a worker's slow path.
    pub fn on_slow_packet(&self, packet: SlowPacket) {
        self.slow_path.on_packet(packet)
    }

    /// Neighbour timers: retries, failures, re-confirmation.
    pub fn on_neighbor_tick(&self) {
        self.slow_path.on_tick()
    }

    /// Sampling stops when nobody asked for drops for a while (no cost when nobody watches).
    pub fn expire_drop_watch(&self) {
        self.drop_watch.expire()
    }

    /// Marks pod ports whose namespace vanished without a DEL as gone.
    pub fn check_devices(&self) {
        // While handing over, the queues' descriptors must stay as offered.
        if !self.gate.is_frozen() {
            self.ports.check_devices()
        }
    }

    /// Removes the pod ports whose namespace has been gone for `gone_port_timeout_seconds`, as a
    /// DEL would (TAP deleted, and with `[ipam]` the address released into its reuse delay).
    pub async fn remove_gone_ports(&self) {
        let timeout = std::time::Duration::from_secs(self.config.gone_port_timeout_seconds);
        for orphan in self.ports.gone_for_at_least(timeout) {
            // Held off while handing over: the new instance does it after.
            let Ok(_in_flight) = self.gate.enter().await else { return };
            match self.ports.remove(&orphan.name, true).await {
                Ok(()) => {}
                // A DEL got there first.
                Err(RequestError::Registry(RegistryError::NoSuchPort(_))) => continue,
                Err(e) => {
                    tracing::warn!(port = %orphan.name, error = %e, "could not remove a port whose namespace is gone");
                    continue;
                }
            }
            self.ports.count_gone_removed();
            let (container_id, ifname) = orphan.name.rsplit_once(':').unwrap_or((&orphan.name, ""));
            let released = match &self.ipam {
                Some(ipam) => {
                    let owner = Attachment { container_id: container_id.into(), ifname: ifname.into() };
                    match ipam.handle(IpamRequest::Release(owner)).await {
                        Ok(_) => "released (reuse delay)",
                        Err(e) => {
                            tracing::warn!(port = %orphan.name, error = %e, "could not release the address of a gone port");
                            "release failed"
                        }
                    }
                }
                None => "left to the plugin's IPAM (CNI GC)",
            };
            let ips = orphan.addresses.iter().map(|ip| ip.to_string()).collect::<Vec<_>>().join(" ");
            tracing::warn!(
                port = %orphan.name,
                namespace = orphan.pod.as_ref().map_or("", |p| p.namespace.as_str()),
                pod = orphan.pod.as_ref().map_or("", |p| p.name.as_str()),
                container_id,
                %ips,
                address = released,
                gone_for = ?orphan.gone_for,
                "port removed: its network namespace was gone for longer than gone_port_timeout_seconds without a DEL"
            );
        }
    }

    /// The state the state file holds (and an upgrade takes over).
    pub fn saved_state(&self) -> SavedState {
        self.saver.saved_state()
    }

    /// Stops taking changes and lists what an upgrade takes over: the state and every port's
    /// queue descriptors (which stay open here until this process exits).
    /// Blocks until the changes in flight are done (call it off the async runtime).
    pub fn freeze_and_offer(&self) -> Offer {
        let _no_changes = self.gate.freeze();
        // Its own statement: the registry's lock is taken again below.
        let neighbors = self.publisher.registry().neighbors().resolved().into_iter().collect();
        Offer {
            state: self.saved_state(),
            workers: self.config.workers,
            ports: upgrade::offered_queues(&self.publisher.registry()),
            uplink_sender: self.uplink.sender_fd(),
            neighbors,
        }
    }

    /// Frozen for an upgrade: from the freeze until the upgrade fails (then thawed) or this
    /// instance exits.
    pub fn handing_over(&self) -> bool {
        self.gate.is_frozen()
    }

    /// The upgrade did not take over: take changes again.
    pub fn thaw(&self) {
        self.gate.thaw();
    }

    /// Stops the workers. TAP devices persist, so pods keep their interfaces.
    pub fn shutdown(&self) {
        self.workers.stop(self.publisher.datapath(), || self.publisher.wake_workers());
    }
}

#[cfg(test)]
mod tests;
