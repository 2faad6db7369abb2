//! The pod side: a persistent TAP in the pod's namespace, configured over rtnetlink from a
//! thread that entered that namespace (so the netlink socket belongs to it).
//!
//! eth0 gets the pod's MAC (derived from its IP, or the runtime's `mac`), the MTU, `IP/32`, a
//! link-scope route to the gateway, the default route via the gateway, and a permanent neighbour
//! entry for the gateway (so the pod never has to ARP for it, and a vswitchd restart does not
//! stall its first packets), and IPv6 disabled on it (the network is IPv4 only; an idle pod sends
//! nothing). An interface of that name already in the namespace is refused,
//! never deleted.

use std::net::{IpAddr, Ipv4Addr};
use std::path::Path;

use futures::TryStreamExt;
use rtnetlink::packet_route::address::AddressAttribute;
use rtnetlink::packet_route::link::LinkFlags;
use rtnetlink::packet_route::neighbour::NeighbourState;
use rtnetlink::packet_route::route::{RouteAddress, RouteAttribute, RouteScope};
use rtnetlink::{Handle, LinkUnspec, RouteMessageBuilder};
use vswitch_api::link::{self, in_netns, link_index};
use vswitch_api::MacAddr;

#[derive(Debug, thiserror::Error)]
pub enum PodNetError {
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("{0}")]
    Link(#[from] vswitch_api::link::LinkError),
    #[error("netlink: {0}")]
    Netlink(#[from] rtnetlink::Error),
    #[error("{0}")]
    Check(String),
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
    pub ip: Ipv4Addr,
    pub gateway: Ipv4Addr,
    pub gateway_mac: MacAddr,
}

/// Creates and configures the pod's TAP. An interface of that name already there is
/// [`PodNetError::Exists`] and left alone; on any other error, what was created is left for
/// [`remove`].
pub fn create(ns: &Path, pod: PodInterface<'_>) -> Result<(), PodNetError> {
    in_netns(ns, move |handle: Handle| async move {
        // TUNSETIFF would attach to an existing TAP rather than fail, and the interface may not
        // be ours at all (another plugin's, or the runtime's): refuse, and touch nothing.
        if link_index(&handle, pod.ifname).await?.is_some() {
            return Err(PodNetError::Exists(pod.ifname.to_string()));
        }
        // Already inside the namespace. The queue is closed again at once: the device persists,
        // and vswitchd attaches its own.
        vswitch_api::tap::create_persistent(pod.ifname)
            .map_err(|e| std::io::Error::new(e.kind(), format!("creating the TAP {}: {e}", pod.ifname)))?;
        let index = link_index(&handle, pod.ifname)
            .await?
            .ok_or_else(|| PodNetError::Check(format!("{} vanished", pod.ifname)))?;
        link::set_noqueue(&handle, index).await?;
        disable_ipv6(pod.ifname)?;
        handle
            .link()
            .set(LinkUnspec::new_with_index(index).address(pod.mac.0.to_vec()).mtu(pod.mtu as u32).up().build())
            .execute()
            .await?;
        handle.address().add(index, IpAddr::V4(pod.ip), 32).execute().await?;
        let to_gateway = RouteMessageBuilder::<Ipv4Addr>::new()
            .destination_prefix(pod.gateway, 32)
            .output_interface(index)
            .scope(RouteScope::Link)
            .build();
        handle.route().add(to_gateway).execute().await?;
        let default = RouteMessageBuilder::<Ipv4Addr>::new().gateway(pod.gateway).output_interface(index).build();
        handle.route().add(default).execute().await?;
        handle
            .neighbours()
            .add(index, IpAddr::V4(pod.gateway))
            .link_layer_address(&pod.gateway_mac.0)
            .state(NeighbourState::Permanent)
            .execute()
            .await?;
        Ok(())
    })
}

/// The network is IPv4 only: without this, the pod's kernel sends IPv6 router solicitations and
/// MLD reports as soon as the link is up, which vswitchd can only drop (`unsupported_ethertype`),
/// and an idle pod would never be quiet. Written before the link goes up, from the thread inside
/// the pod's namespace (`/proc/sys/net` is the namespace of the thread that opens it). A kernel
/// without IPv6 has no such file, which is fine.
fn disable_ipv6(ifname: &str) -> Result<(), PodNetError> {
    let path = format!("/proc/sys/net/ipv6/conf/{ifname}/disable_ipv6");
    match std::fs::write(&path, "1") {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(std::io::Error::new(e.kind(), format!("writing {path}: {e}")).into()),
    }
}

/// Deletes the pod's TAP now; a namespace or link already gone is success.
pub fn remove(ns: &Path, ifname: &str) -> Result<(), PodNetError> {
    Ok(link::delete_link_in(ns, ifname)?)
}

/// Verifies the interface is there, up, with the pod's address and the default route via the
/// gateway. Its MAC and MTU are not compared: a chained plugin (tuning) may legitimately have
/// changed them.
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
        let has_ip = addresses.iter().any(|a| {
            a.header.prefix_len == 32
                && a.attributes
                    .iter()
                    .any(|attr| matches!(attr, AddressAttribute::Address(IpAddr::V4(ip)) if *ip == pod.ip))
        });
        if !has_ip {
            return fail(format!("{} does not have {}/32", pod.ifname, pod.ip));
        }
        let routes: Vec<_> =
            handle.route().get(RouteMessageBuilder::<Ipv4Addr>::new().build()).execute().try_collect().await?;
        let default_via_gateway = routes.iter().any(|r| {
            r.header.destination_prefix_length == 0
                && r.attributes
                    .iter()
                    .any(|a| matches!(a, RouteAttribute::Gateway(RouteAddress::Inet(gw)) if *gw == pod.gateway))
                && r.attributes.iter().any(|a| matches!(a, RouteAttribute::Oif(i) if *i == index))
        });
        if !default_via_gateway {
            return fail(format!("no default route via {} on {}", pod.gateway, pod.ifname));
        }
        Ok(())
    })
}
