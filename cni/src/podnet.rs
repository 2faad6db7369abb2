//! The pod side: a persistent TAP in the pod's namespace, configured over rtnetlink from a
//! thread that entered that namespace (so the netlink socket and `/proc/sys/net` are its).
//!
//! eth0 gets the pod's MAC (derived from its address, or the runtime's `mac`) and the MTU; per
//! family of the pod, its address (`IP/32`, `IP/128`), the default route via that family's
//! gateway (169.254.1.1 behind a link-scope route; IPv6: the gateway MAC's link-local address,
//! on-link by definition) and a permanent neighbour entry for the gateway (so the pod never has
//! to resolve it, and a vswitchd restart does not stall its first packets). An IPv4-only pod has
//! IPv6 disabled on eth0 (an idle pod sends nothing); a pod with IPv6 ignores router
//! advertisements and redirects. An interface of that name already in the namespace is refused,
//! never deleted.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::Path;
use std::time::{Duration, Instant};

use futures::TryStreamExt;
use rtnetlink::packet_route::address::{AddressAttribute, AddressFlags, AddressMessage};
use rtnetlink::packet_route::link::{LinkAttribute, LinkFlags};
use rtnetlink::packet_route::neighbour::{NeighbourAddress, NeighbourAttribute, NeighbourMessage, NeighbourState};
use rtnetlink::packet_route::route::{RouteAddress, RouteAttribute, RouteMessage, RouteScope};
use rtnetlink::{Handle, LinkUnspec, RouteMessageBuilder};
use vswitch_api::MacAddr;
use vswitch_host::link::{self, in_netns, link_index};

use crate::spec::PodIps;

#[derive(Debug, thiserror::Error)]
pub enum PodNetError {
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("{0}")]
    Link(#[from] vswitch_host::link::LinkError),
    #[error("{0}")]
    Tap(#[from] vswitch_host::tap::TapError),
    #[error("netlink: {0}")]
    Netlink(#[from] rtnetlink::Error),
    #[error("{0}")]
    Check(String),
    /// An IPv6 address did not become usable (duplicate address detection failed or took too long).
    #[error("{0}")]
    Settle(String),
    /// ADD found an interface of that name in the namespace: never ours to delete.
    #[error("an interface named {0} already exists in the pod's network namespace")]
    Exists(String),
}

/// Is `ns` the node's own network namespace (the one pid 1 or this process is in)? Creating or
/// deleting a pod interface there would touch the node itself.
pub fn is_node_netns(ns: &Path) -> std::io::Result<bool> {
    use std::os::unix::fs::MetadataExt;
    let target = std::fs::metadata(ns)?;
    for own in ["/proc/self/ns/net", "/proc/1/ns/net"] {
        if let Ok(m) = std::fs::metadata(own) {
            if (m.dev(), m.ino()) == (target.dev(), target.ino()) {
                return Ok(true);
            }
        }
    }
    Ok(false)
}

/// What the pod's interface should look like.
#[derive(Debug, Clone, Copy)]
pub struct PodInterface<'a> {
    pub ifname: &'a str,
    pub mac: MacAddr,
    pub mtu: u16,
    /// One address per family the pod has; the other family gets no address and no route.
    pub ips: PodIps,
    pub gateway: Ipv4Addr,
    /// The IPv6 gateway: the gateway MAC's link-local address.
    pub gateway6: Ipv6Addr,
    pub gateway_mac: MacAddr,
}

impl PodInterface<'_> {
    /// Each family's address with its prefix length and gateway.
    fn families(&self) -> impl Iterator<Item = (IpAddr, u8, IpAddr)> + '_ {
        self.ips.iter().map(|ip| match ip {
            IpAddr::V4(_) => (ip, 32, IpAddr::V4(self.gateway)),
            IpAddr::V6(_) => (ip, 128, IpAddr::V6(self.gateway6)),
        })
    }
}

/// IPv6 on a pod's eth0: addresses and routes come from vpc-cni alone, so router advertisements
/// (vswitchd drops them; this holds even if one got through), SLAAC and redirects are refused,
/// and the link-local address is the MAC's EUI-64 (`addr_gen_mode` 0), the one vswitchd's port
/// security lets the pod send from. Written before the link goes up (the link-local address is
/// made when it gets a carrier); CHECK verifies them.
const IPV6_SYSCTLS: &[(&str, &str)] =
    &[("disable_ipv6", "0"), ("accept_ra", "0"), ("autoconf", "0"), ("addr_gen_mode", "0"), ("accept_redirects", "0")];

/// Duplicate address detection starts at once instead of after a random delay of up to a second
/// (RFC 4862 spreads hosts starting together on a shared link; this link has vswitchd alone on
/// its other end), so an ADD waits for DAD about one retransmission time.
const IPV6_DAD_NO_DELAY: (&str, &str) = ("router_solicitation_delay", "0");

/// How long ADD waits for the pod's IPv6 addresses to pass duplicate address detection.
pub const SETTLE_TIMEOUT: Duration = Duration::from_secs(10);

/// Creates and configures the pod's TAP. An interface of that name already there is
/// [`PodNetError::Exists`] and left alone; on any other error, what was created is left for
/// [`remove`]. IPv6 addresses are tentative until the TAP has a carrier (vswitchd attached it)
/// and DAD passed: [`settle`] waits for that.
pub fn create(ns: &Path, pod: PodInterface<'_>) -> Result<(), PodNetError> {
    in_netns(ns, move |handle: Handle| async move {
        // TUNSETIFF would attach to an existing TAP rather than fail, and the interface may not
        // be ours at all (another plugin's, or the runtime's): refuse, and touch nothing.
        if link_index(&handle, pod.ifname).await?.is_some() {
            return Err(PodNetError::Exists(pod.ifname.to_string()));
        }
        // Already inside the namespace. The queue is closed again at once: the device persists,
        // and vswitchd attaches its own.
        vswitch_host::tap::create_persistent(pod.ifname)?;
        let index = link_index(&handle, pod.ifname)
            .await?
            .ok_or_else(|| PodNetError::Check(format!("{} vanished", pod.ifname)))?;
        link::set_noqueue(&handle, index).await?;
        if pod.ips.v6.is_some() {
            for (key, value) in IPV6_SYSCTLS.iter().chain([&IPV6_DAD_NO_DELAY]) {
                write_sysctl(pod.ifname, key, value)?;
            }
        } else {
            disable_ipv6(pod.ifname)?;
        }
        handle
            .link()
            .set(LinkUnspec::new_with_index(index).address(pod.mac.0.to_vec()).mtu(pod.mtu as u32).up().build())
            .execute()
            .await?;
        for (ip, prefix, gateway) in pod.families() {
            handle.address().add(index, ip, prefix).execute().await?;
            if let IpAddr::V4(gateway) = gateway {
                // 169.254.1.1 is in no subnet of the pod's: a link route makes it on-link. An
                // IPv6 link-local gateway is on-link as it is.
                let to_gateway = RouteMessageBuilder::<Ipv4Addr>::new()
                    .destination_prefix(gateway, 32)
                    .output_interface(index)
                    .scope(RouteScope::Link)
                    .build();
                handle.route().add(to_gateway).execute().await?;
            }
            handle.route().add(default_route(gateway, index)).execute().await?;
            handle
                .neighbours()
                .add(index, gateway)
                .link_layer_address(&pod.gateway_mac.0)
                .state(NeighbourState::Permanent)
                .execute()
                .await?;
        }
        Ok(())
    })
}

fn default_route(gateway: IpAddr, index: u32) -> RouteMessage {
    match gateway {
        IpAddr::V4(gw) => RouteMessageBuilder::<Ipv4Addr>::new().gateway(gw).output_interface(index).build(),
        IpAddr::V6(gw) => RouteMessageBuilder::<Ipv6Addr>::new().gateway(gw).output_interface(index).build(),
    }
}

fn sysctl_path(ifname: &str, key: &str) -> String {
    format!("/proc/sys/net/ipv6/conf/{ifname}/{key}")
}

fn write_sysctl(ifname: &str, key: &str, value: &str) -> Result<(), PodNetError> {
    let path = sysctl_path(ifname, key);
    std::fs::write(&path, value)
        .map_err(|e| std::io::Error::new(e.kind(), format!("writing {path} (is IPv6 available?): {e}")).into())
}

/// An IPv4-only pod: without this, the pod's kernel sends IPv6 router solicitations and MLD
/// reports as soon as the link is up, which vswitchd can only drop, and an idle pod would never
/// be quiet. A kernel without IPv6 has no such file, which is fine.
fn disable_ipv6(ifname: &str) -> Result<(), PodNetError> {
    match write_sysctl(ifname, "disable_ipv6", "1") {
        Err(PodNetError::Io(e)) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        other => other,
    }
}

/// An address's flags: the 32-bit attribute when the kernel sends it, the header's byte otherwise.
fn address_flags(address: &AddressMessage) -> AddressFlags {
    address
        .attributes
        .iter()
        .find_map(|a| match a {
            AddressAttribute::Flags(f) => Some(*f),
            _ => None,
        })
        .unwrap_or_else(|| AddressFlags::from_bits_retain(address.header.flags.bits().into()))
}

fn find_address(addresses: &[AddressMessage], ip: IpAddr) -> Option<&AddressMessage> {
    addresses
        .iter()
        .find(|a| a.attributes.iter().any(|attr| matches!(attr, AddressAttribute::Address(have) if *have == ip)))
}

/// Waits until each of `wanted` (the pod's IPv6 address and its link-local one) is on `ifname`
/// and has passed duplicate address detection, as the reference plugins' `SettleAddresses` does:
/// a tentative address cannot be used as a source, so an ADD that returned earlier would hand
/// the runtime a pod whose first IPv6 connections fail. DAD failing (another host answers for
/// the address) is an error at once; still tentative after `timeout`, one too.
pub fn settle(ns: &Path, ifname: &str, wanted: &[Ipv6Addr], timeout: Duration) -> Result<(), PodNetError> {
    in_netns(ns, move |handle: Handle| async move {
        let index = link_index(&handle, ifname)
            .await?
            .ok_or_else(|| PodNetError::Settle(format!("{ifname} vanished before its addresses settled")))?;
        let deadline = Instant::now() + timeout;
        loop {
            let addresses: Vec<_> = handle.address().get().set_link_index_filter(index).execute().try_collect().await?;
            let mut pending = Vec::new();
            for &ip in wanted {
                match find_address(&addresses, IpAddr::V6(ip)).map(address_flags) {
                    Some(flags) if flags.contains(AddressFlags::Dadfailed) => {
                        return Err(PodNetError::Settle(format!(
                            "duplicate address detection failed for {ip} on {ifname}: another host on the link has it"
                        )))
                    }
                    Some(flags) if flags.contains(AddressFlags::Tentative) => pending.push(format!("{ip} (tentative)")),
                    Some(_) => {}
                    None => pending.push(format!("{ip} (missing)")),
                }
            }
            if pending.is_empty() {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(PodNetError::Settle(format!(
                    "{ifname}'s IPv6 addresses are not usable after {} s: {}",
                    timeout.as_secs(),
                    pending.join(", ")
                )));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
}

/// Deletes the pod's TAP now; a namespace or link already gone is success.
pub fn remove(ns: &Path, ifname: &str) -> Result<(), PodNetError> {
    Ok(link::delete_link_in(ns, ifname)?)
}

/// Verifies the interface is there and up and, per family of the pod, has its address (not a
/// duplicate), the default route via the gateway and the gateway's permanent neighbour entry
/// (while eth0 has `pod.mac`, the MAC ADD gave it); with IPv6, that router advertisements, SLAAC
/// and redirects are still off. Its MAC and MTU are not compared: a chained plugin (tuning) may
/// legitimately have changed them.
pub fn check(ns: &Path, pod: PodInterface<'_>) -> Result<(), PodNetError> {
    let fail = |what: String| Err(PodNetError::Check(what));
    if !ns.exists() {
        return fail(format!("network namespace {} is gone", ns.display()));
    }
    in_netns(ns, move |handle: Handle| async move {
        let Some(link) =
            handle.link().get().match_name(pod.ifname.to_string()).execute().try_next().await.ok().flatten()
        else {
            return fail(format!("{} does not exist", pod.ifname));
        };
        let index = link.header.index;
        if !link.header.flags.contains(LinkFlags::Up) {
            return fail(format!("{} is down", pod.ifname));
        }
        let addresses: Vec<_> = handle.address().get().set_link_index_filter(index).execute().try_collect().await?;
        let neighbours: Vec<_> = handle.neighbours().get().execute().try_collect().await?;
        for (ip, prefix, gateway) in pod.families() {
            let usable = find_address(&addresses, ip)
                .is_some_and(|a| a.header.prefix_len == prefix && !address_flags(a).contains(AddressFlags::Dadfailed));
            if !usable {
                return fail(format!("{} does not have {ip}/{prefix}", pod.ifname));
            }
            let family = match gateway {
                IpAddr::V4(_) => RouteMessageBuilder::<Ipv4Addr>::new().build(),
                IpAddr::V6(_) => RouteMessageBuilder::<Ipv6Addr>::new().build(),
            };
            let routes: Vec<_> = handle.route().get(family).execute().try_collect().await?;
            let default_via_gateway = routes.iter().any(|r| {
                r.header.destination_prefix_length == 0
                    && r.attributes.iter().any(|a| match a {
                        RouteAttribute::Gateway(RouteAddress::Inet(gw)) => IpAddr::V4(*gw) == gateway,
                        RouteAttribute::Gateway(RouteAddress::Inet6(gw)) => IpAddr::V6(*gw) == gateway,
                        _ => false,
                    })
                    && r.attributes.iter().any(|a| matches!(a, RouteAttribute::Oif(i) if *i == index))
            });
            if !default_via_gateway {
                return fail(format!("no default route via {gateway} on {}", pod.ifname));
            }
            // Changing the MAC flushes the neighbour table, permanent entries too: once a chained
            // plugin did, the pod resolves the gateway through vswitchd's answers, and an entry
            // for it need only not point elsewhere.
            let mut entries = neighbours.iter().filter(|n| {
                n.header.ifindex == index
                    && n.attributes.iter().any(|a| match a {
                        NeighbourAttribute::Destination(NeighbourAddress::Inet(ip)) => IpAddr::V4(*ip) == gateway,
                        NeighbourAttribute::Destination(NeighbourAddress::Inet6(ip)) => IpAddr::V6(*ip) == gateway,
                        _ => false,
                    })
            });
            let lladdr = |n: &NeighbourMessage| {
                n.attributes.iter().find_map(|a| match a {
                    NeighbourAttribute::LinkLayerAddress(mac) => Some(mac.clone()),
                    _ => None,
                })
            };
            if let Some(wrong) = entries.clone().filter_map(lladdr).find(|mac| mac[..] != pod.gateway_mac.0) {
                return fail(format!("the gateway {gateway}'s neighbour entry on {} is {wrong:02x?}", pod.ifname));
            }
            let mac_is_ours =
                link.attributes.iter().any(|a| matches!(a, LinkAttribute::Address(m) if m[..] == pod.mac.0));
            if mac_is_ours && !entries.any(|n| n.header.state == NeighbourState::Permanent) {
                return fail(format!("no permanent neighbour entry for the gateway {gateway} on {}", pod.ifname));
            }
        }
        if pod.ips.v6.is_some() {
            for (key, value) in IPV6_SYSCTLS {
                let path = sysctl_path(pod.ifname, key);
                let have = std::fs::read_to_string(&path)?;
                if have.trim() != *value {
                    return fail(format!("{path} is {}, not {value}", have.trim()));
                }
            }
        }
        Ok(())
    })
}
