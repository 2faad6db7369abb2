//! What a start does before the switch serves: the saved state read (or handed over by the
//! instance being upgraded), the host port and the uplink attached with the kernel set up around
//! them, and the saved pods and routes attached again.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::Arc;

use fib::AnyPrefix;

use super::errors::ControlError;
use super::ports::{egress_queues, Ports};
use super::publisher::Publisher;
use super::saver::Saver;
use super::uplink::{Announcer, Uplink};
use super::views;
use super::workers::Counters;
use crate::control::config::{Config, UplinkConfig};
use crate::control::handover::Handover;
use crate::control::hostnet::HostNet;
use crate::control::persist::{SavedState, StateFile};
use crate::control::podio::{open_tap_queues, tap_queues_from};
use crate::control::registry::{default_route, UplinkSpec, HOST_PORT};
use crate::port::packet::PacketSocket;
use crate::port::tap::Attach;
use crate::port::PortQueue;

/// The state to start from: the one handed over by the instance being upgraded (which must run
/// as many workers: queues are per worker), else the state file's.
pub fn saved_state(
    config: &Config,
    state_file: &StateFile,
    handover: Option<&Handover>,
) -> Result<SavedState, ControlError> {
    match handover {
        Some(h) if h.workers != config.workers => {
            Err(ControlError::WorkersDiffer { running: h.workers, this: config.workers })
        }
        Some(h) => Ok(h.state.clone()),
        None => Ok(state_file.load()?),
    }
}

/// The host port's routes from the configuration: its extra prefixes, and the defaults of both
/// families if asked.
pub fn host_routes(config: &Config) -> Vec<AnyPrefix> {
    let mut routes: Vec<AnyPrefix> = config.host_port.routes.iter().map(|p| p.0).collect();
    if config.host_port.default_route {
        routes.extend([Ipv4Addr::UNSPECIFIED.into(), Ipv6Addr::UNSPECIFIED.into()].map(default_route));
    }
    routes
}

/// `/proc/sys/net/KEY` = `value`.
fn set_sysctl(key: &str, value: &str) -> std::io::Result<()> {
    let path = format!("/proc/sys/net/{key}");
    std::fs::write(&path, value).map_err(|e| std::io::Error::new(e.kind(), format!("{path}: {e}")))
}

/// Attaches the host port (its queues handed over, or the TAP created) with the configuration's
/// routes; returns its interface index.
pub async fn attach_host_port(
    config: &Config,
    hostnet: &HostNet,
    publisher: &Publisher,
    counters: &Counters,
    handover: Option<&mut Handover>,
) -> Result<u32, ControlError> {
    let name = config.host_port.name.clone();
    let handed = handover.and_then(|h| h.take_queues(&name)).filter(|q| q.len() == config.workers);
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
        match set_sysctl(&format!("ipv6/conf/{name}/{key}"), value) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                tracing::warn!(port = %name, error = %e, "could not set ipv6 {key} on the host port")
            }
            _ => {}
        }
    }
    let queues = egress_queues(config.force_udp_segmentation, queues);
    let (host_ifindex, peer_mac) = hostnet.bring_up(&name, config.host_port.mtu).await?;
    let routes = host_routes(config);
    let baseline = counters.port_totals(HOST_PORT);
    publisher
        .update(|registry, _| registry.attach_host(&name, config.host_port.mtu, peer_mac, queues, &routes, baseline));
    tracing::info!(port = %name, %peer_mac, ifindex = host_ifindex, "host port attached");
    Ok(host_ifindex)
}

/// Attaches the dedicated NIC: one fanout socket per worker, the subnet and the default route
/// through it, and the kernel kept off it (no forwarding, no ARP replies, no IPv6).
pub async fn attach_uplink(
    config: &Config,
    uplink: &UplinkConfig,
    hostnet: &HostNet,
    publisher: &Publisher,
    handover: Option<&mut Handover>,
) -> Result<Uplink, ControlError> {
    let name = uplink.interface.clone();
    let uplink_error = |source| ControlError::Uplink { name: name.clone(), source };
    let (ifindex, mac) = hostnet.bring_up(&name, uplink.mtu).await?;
    for (key, value) in
        [("ipv4/conf/{}/forwarding", "0"), ("ipv4/conf/{}/arp_ignore", "8"), ("ipv6/conf/{}/disable_ipv6", "1")]
    {
        set_sysctl(&key.replace("{}", &name), value).map_err(uplink_error)?;
    }
    // Fanout groups are per namespace; the pid keeps two daemons' groups apart.
    let group = (std::process::id() & 0xffff) as u16;
    // Handed over by the instance being upgraded: the same sockets, already in their group.
    let handed = handover.and_then(|h| Some((h.take_queues(&name)?, h.uplink_sender.take()?)));
    let (queues, sender): (Vec<Arc<dyn PortQueue>>, PacketSocket) = match handed {
        Some((fds, sender)) if fds.len() == config.workers => (
            fds.into_iter().map(|fd| Arc::new(PacketSocket::from_fd(fd)) as Arc<dyn PortQueue>).collect(),
            PacketSocket::from_fd(sender),
        ),
        _ => (
            (0..config.workers)
                .map(|_| PacketSocket::open_queue(ifindex, group).map(|s| Arc::new(s) as Arc<dyn PortQueue>))
                .collect::<Result<_, _>>()
                .map_err(uplink_error)?,
            PacketSocket::open_sender(ifindex).map_err(uplink_error)?,
        ),
    };
    let mut subnets = vec![AnyPrefix::V4(uplink.subnet.0)];
    subnets.extend(uplink.subnet6.map(|s| AnyPrefix::V6(s.0)));
    // ICMP errors sent out of the uplink come from this address (none without one).
    let ip = match uplink.address {
        Some(ip) => Some(ip),
        None => hostnet.first_ipv4(ifindex).await?,
    };
    let gateways = uplink.gateway.map(IpAddr::V4).into_iter().chain(uplink.gateway6.map(IpAddr::V6)).collect();
    let spec = UplinkSpec { mac, ip, ipv6: uplink.address6, subnets: subnets.clone(), gateways };
    let queues = egress_queues(config.force_udp_segmentation, queues.into());
    let port = publisher.update(|registry, _| registry.attach_uplink(&name, uplink.mtu, spec, queues))?;
    tracing::info!(uplink = %name, %mac, ?ip, ipv6 = ?uplink.address6, ifindex, ?subnets, "uplink attached");
    let ndp_source = uplink.address6.unwrap_or_else(|| mac.link_local());
    Ok(Uplink { name, port, mac, ndp_source, sender })
}

/// Without an uplink, the node's NIC that announces pods (`host_port.announce_on`), if set.
pub async fn open_announcer(config: &Config, hostnet: &HostNet) -> Result<Option<Announcer>, ControlError> {
    let Some(name) = &config.host_port.announce_on else { return Ok(None) };
    let (ifindex, mac) = hostnet.link(name).await?;
    let sender =
        PacketSocket::open_sender(ifindex).map_err(|source| ControlError::Uplink { name: name.clone(), source })?;
    tracing::info!(interface = %name, %mac, "pods are announced with gratuitous ARP from the node's NIC");
    Ok(Some(Announcer { name: name.clone(), ifindex, mac, sender }))
}

/// Re-attaches the saved pods and API routes; a pod whose namespace or TAP is gone is dropped
/// (its DEL may never come, or came while we were down).
pub async fn restore(saved: SavedState, ports: &Ports, publisher: &Publisher, saver: &Saver) {
    for port in &saved.ports {
        match ports.add(port.to_spec()).await {
            Ok(_) => tracing::info!(port = %port.name, "re-attached"),
            Err(e) => {
                tracing::warn!(port = %port.name, error = %e, "not re-attached (its namespace or TAP is gone)")
            }
        }
    }
    for route in &saved.routes {
        let restored = views::prefix(&route.prefix)
            .and_then(|prefix| Ok(publisher.update(|registry, _| registry.add_route(prefix, &route.port, true))?));
        if let Err(e) = restored {
            tracing::warn!(prefix = %route.prefix, port = %route.port, error = %e, "saved route not restored");
        }
    }
    if let Err(e) = saver.save().await {
        tracing::error!(error = %e, "cannot save state");
    }
}
