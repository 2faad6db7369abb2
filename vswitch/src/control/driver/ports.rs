//! Pod ports over their life: attached (reserve, open the TAP queues and the node's route
//! without the registry's lock, commit), detached, and marked gone when their namespace vanished
//! without a DEL. Every change is saved before it is answered.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::errors::RequestError;
use super::publisher::Publisher;
use super::saver::Saver;
use super::uplink::UplinkSender;
use super::workers::Counters;
use crate::control::config::Config;
use crate::control::podio::PodIo;
use crate::control::registry::{LinkState, PodAddresses, PodName, PodReservation, PodSpec};
use crate::datapath::PortQueues;
use crate::pipeline::DropReason;
use crate::port::{NoUdpGso, PortQueue};
use crate::state::PortId;

#[derive(Debug)]
pub struct Ports {
    /// Pod TAPs and the node's routes to pods: the kernel, or memory for tests and fuzzing.
    pods: Box<dyn PodIo>,
    publisher: Arc<Publisher>,
    counters: Arc<Counters>,
    saver: Arc<Saver>,
    /// Announces the addresses of pods just attached.
    uplink: Arc<UplinkSender>,
    /// Queues per port: one per worker.
    workers: usize,
    force_udp_segmentation: bool,
    /// Since when each gone port has been seen gone (by this instance; an upgrade starts over).
    gone_since: Mutex<HashMap<String, Instant>>,
    /// Gone ports removed after `gone_port_timeout_seconds`.
    gone_removed: AtomicU64,
}

/// A port whose namespace has been gone for longer than the timeout, as it is removed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Orphan {
    pub name: String,
    pub pod: Option<PodName>,
    pub addresses: Vec<std::net::IpAddr>,
    pub gone_for: Duration,
}

impl Ports {
    /// Pod ports through `pods`, with a queue per worker of `config`.
    pub fn new(
        config: &Config,
        pods: Box<dyn PodIo>,
        parts: (Arc<Publisher>, Arc<Counters>, Arc<Saver>, Arc<UplinkSender>),
    ) -> Ports {
        let (publisher, counters, saver, uplink) = parts;
        let (workers, force_udp_segmentation) = (config.workers, config.force_udp_segmentation);
        Ports {
            pods,
            publisher,
            counters,
            saver,
            uplink,
            workers,
            force_udp_segmentation,
            gone_since: Mutex::default(),
            gone_removed: AtomicU64::new(0),
        }
    }

    /// Attaches a pod port; a failure leaves nothing reserved.
    pub async fn add(&self, spec: PodSpec) -> Result<PortId, RequestError> {
        let reservation = self.publisher.registry().reserve_pod(spec)?;
        let (queues, netns_id) = match self.open(&reservation).await {
            Ok(opened) => opened,
            Err(e) => {
                self.publisher.registry().cancel(&reservation);
                return Err(e);
            }
        };
        let (name, pod, addresses) =
            (reservation.spec.name.clone(), reservation.spec.pod.clone(), reservation.spec.addresses);
        let id = self.publisher.update(|registry, quiesced| {
            let baseline = |id| self.counters.port_totals(id);
            registry.commit_pod(reservation, queues, Some(netns_id), baseline, quiesced)
        })?;
        self.saver.save().await?;
        // Tell the VPC subnet where these addresses live now (a gratuitous ARP, an unsolicited
        // neighbour advertisement); those of a later ENI were announced from its NIC already.
        addresses.iter().filter(|ip| !self.pods.announces_itself(*ip)).for_each(|ip| self.uplink.announce(ip));
        let ips = addresses.iter().map(|ip| ip.to_string()).collect::<Vec<_>>().join(" ");
        tracing::info!(port = %name, %ips, id, ?pod, "pod port attached");
        Ok(id)
    }

    /// The I/O of an attach: the pod's TAP queues and the node's route to it.
    async fn open(&self, reservation: &PodReservation) -> Result<(PortQueues, (u64, u64)), RequestError> {
        let spec = &reservation.spec;
        let netns_id = self.pods.netns_id(&spec.netns).ok_or_else(|| RequestError::NoNamespace(spec.netns.clone()))?;
        let queues = self.pods.open_queues(spec, self.workers).await?;
        let queues = egress_queues(self.force_udp_segmentation, queues);
        for ip in spec.addresses.iter() {
            self.pods.add_host_route(ip).await?;
        }
        Ok((queues, netns_id))
    }

    /// Detaches a pod port; with `remove_device`, deletes its TAP too (in the background).
    pub async fn remove(&self, name: &str, remove_device: bool) -> Result<(), RequestError> {
        let record = self.publisher.update(|registry, _| registry.detach(name))?;
        // Saved before anything else can fail, so a deleted port never comes back at restart.
        self.saver.save().await?;
        if let Some(addresses) = PodAddresses::of_role(&record.info.role) {
            // A route left behind only misroutes the node's traffic to an address nobody holds;
            // it must not make the DEL fail (the port is gone already). Logged and counted.
            for ip in addresses.iter() {
                if let Err(e) = self.pods.remove_host_route(ip).await {
                    tracing::warn!(port = %name, %ip, error = %e, "could not remove the node's route to the pod");
                    self.counters.control().dropped(DropReason::TxError);
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
        let gone = self.publisher.update(|registry, _| {
            let gone: Vec<(PortId, String)> = registry
                .ports()
                .filter(|p| p.link == LinkState::Up)
                .filter_map(|p| {
                    let (netns, attached) = (p.attachment.netns.as_ref()?, p.attachment.netns_id?);
                    (self.pods.netns_id(netns) != Some(attached)).then(|| (p.info.id, p.info.name.clone()))
                })
                .collect();
            let ids: Vec<PortId> = gone.iter().map(|(id, _)| *id).collect();
            (gone, registry.mark_gone(&ids))
        });
        for (_, name) in gone {
            tracing::warn!(port = %name, "the port's network namespace is gone without a DEL; port marked gone");
        }
    }

    /// The gone ports seen gone for at least `timeout` (clocked from the first call that sees
    /// each gone); ports no longer gone are forgotten.
    pub fn gone_for_at_least(&self, timeout: Duration) -> Vec<Orphan> {
        let now = Instant::now();
        let registry = self.publisher.registry();
        let mut since = self.gone_since.lock().unwrap_or_else(|e| e.into_inner());
        let gone: Vec<_> = registry.ports().filter(|p| p.link == LinkState::Gone).collect();
        since.retain(|name, _| gone.iter().any(|p| p.info.name == *name));
        gone.into_iter()
            .filter_map(|p| {
                let gone_for = now - *since.entry(p.info.name.clone()).or_insert(now);
                (gone_for >= timeout).then(|| Orphan {
                    name: p.info.name.clone(),
                    pod: p.attachment.pod.clone(),
                    addresses: PodAddresses::of_role(&p.info.role).map(|a| a.iter().collect()).unwrap_or_default(),
                    gone_for,
                })
            })
            .collect()
    }

    /// Brings the node's routing for the pods in line (AWS: later ENIs' rules); logged.
    pub async fn reconcile_routing(&self) {
        if let Err(e) = self.pods.reconcile_routing().await {
            tracing::warn!(error = %e, "the pods' routing on the node");
        }
    }

    /// Counts a gone port removed.
    pub fn count_gone_removed(&self) {
        self.gone_removed.fetch_add(1, Ordering::Relaxed);
    }

    pub fn gone_removed(&self) -> u64 {
        self.gone_removed.load(Ordering::Relaxed)
    }
}

/// A port's queues as the datapath gets them: with `force_udp_segmentation`, each wrapped to
/// refuse UDP GSO frames, so the workers cut them into datagrams (tests and diagnosis).
pub fn egress_queues(force_udp_segmentation: bool, queues: PortQueues) -> PortQueues {
    if !force_udp_segmentation {
        return queues;
    }
    queues.iter().map(|q| Arc::new(NoUdpGso(q.clone())) as Arc<dyn PortQueue>).collect::<Vec<_>>().into()
}
