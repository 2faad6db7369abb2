//! The node-side plumbing of the host port, over rtnetlink: bring the TAP up, and keep one
//! `POD/32 dev vsw0` (and `POD/128 dev vsw0`) route per local pod so the node's stack (and
//! kube-proxy's DNAT) can reach it.
//! (The link helpers vpc-cni uses as well live in `vswitch_host::link`.)

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use futures::TryStreamExt;
use rtnetlink::packet_route::address::AddressAttribute;
use rtnetlink::packet_route::link::LinkAttribute;
use rtnetlink::{Handle, LinkUnspec, RouteMessageBuilder};
use vswitch_host::link::set_noqueue;

use crate::wire::MacAddr;

#[derive(Debug, thiserror::Error)]
pub enum HostNetError {
    #[error("netlink: {0}")]
    Netlink(#[from] rtnetlink::Error),
    #[error("netlink connection: {0}")]
    Connect(#[from] std::io::Error),
    #[error("no link named {0}")]
    NoSuchLink(String),
}

#[derive(Debug, Clone)]
pub struct HostNet {
    handle: Handle,
}

impl HostNet {
    /// Opens a netlink connection in this (the node's) namespace; needs a tokio runtime.
    pub fn connect() -> Result<HostNet, HostNetError> {
        let (connection, handle, _) = rtnetlink::new_connection()?;
        tokio::spawn(connection);
        Ok(HostNet { handle })
    }

    /// The netlink handle, for the node's other plumbing ([`super::eni`]).
    pub fn handle(&self) -> Handle {
        self.handle.clone()
    }

    /// Sets `name` up with `mtu`; returns its index and MAC.
    pub async fn bring_up(&self, name: &str, mtu: u16) -> Result<(u32, MacAddr), HostNetError> {
        let (index, mac) = self.link(name).await?;
        set_noqueue(&self.handle, index).await?;
        self.handle.link().set(LinkUnspec::new_with_index(index).mtu(mtu as u32).up().build()).execute().await?;
        Ok((index, mac))
    }

    /// The index and MAC of link `name`, leaving it as it is.
    pub async fn link(&self, name: &str) -> Result<(u32, MacAddr), HostNetError> {
        let link = self
            .handle
            .link()
            .get()
            .match_name(name.to_string())
            .execute()
            .try_next()
            .await?
            .ok_or_else(|| HostNetError::NoSuchLink(name.into()))?;
        let index = link.header.index;
        let mac = link
            .attributes
            .iter()
            .find_map(|a| match a {
                LinkAttribute::Address(bytes) if bytes.len() == 6 => Some(MacAddr(bytes[..6].try_into().expect("6"))),
                _ => None,
            })
            .unwrap_or(MacAddr::ZERO);
        Ok((index, mac))
    }

    /// The first IPv4 address on link `index`, if it has one.
    pub async fn first_ipv4(&self, index: u32) -> Result<Option<Ipv4Addr>, HostNetError> {
        let addresses: Vec<_> =
            self.handle.address().get().set_link_index_filter(index).execute().try_collect().await?;
        Ok(addresses.iter().flat_map(|a| a.attributes.iter()).find_map(|attr| match attr {
            AddressAttribute::Address(std::net::IpAddr::V4(ip)) => Some(*ip),
            _ => None,
        }))
    }

    fn host_route(ip: IpAddr, ifindex: u32) -> rtnetlink::packet_route::route::RouteMessage {
        match ip {
            IpAddr::V4(ip) => {
                RouteMessageBuilder::<Ipv4Addr>::new().destination_prefix(ip, 32).output_interface(ifindex).build()
            }
            IpAddr::V6(ip) => {
                RouteMessageBuilder::<Ipv6Addr>::new().destination_prefix(ip, 128).output_interface(ifindex).build()
            }
        }
    }

    /// `ip route replace IP/32 dev IFINDEX` (`/128` for IPv6: the node resolves it with a
    /// neighbour solicitation, which the switch answers with the gateway MAC).
    pub async fn route_to_pod(&self, ip: IpAddr, ifindex: u32) -> Result<(), HostNetError> {
        self.handle.route().add(Self::host_route(ip, ifindex)).replace().execute().await?;
        Ok(())
    }

    /// `ip -6 neigh replace proxy IP dev IFINDEX`: the node answers neighbour solicitations for a
    /// pod's IPv6 address on its NIC (IPv6 has no proxy-ARP for everything routed elsewhere;
    /// `proxy_ndp` answers only for the addresses listed).
    pub async fn proxy_ndp(&self, ip: Ipv6Addr, ifindex: u32) -> Result<(), HostNetError> {
        use rtnetlink::packet_route::neighbour::NeighbourFlags;
        self.handle.neighbours().add(ifindex, ip.into()).flags(NeighbourFlags::Proxy).replace().execute().await?;
        Ok(())
    }

    /// Removes that entry; one already gone is fine.
    pub async fn remove_proxy_ndp(&self, ip: Ipv6Addr, ifindex: u32) -> Result<(), HostNetError> {
        use rtnetlink::packet_route::neighbour::{
            NeighbourAddress, NeighbourAttribute, NeighbourFlags, NeighbourMessage,
        };
        use rtnetlink::packet_route::AddressFamily;
        let mut message = NeighbourMessage::default();
        message.header.family = AddressFamily::Inet6;
        message.header.ifindex = ifindex;
        message.header.flags = NeighbourFlags::Proxy;
        message.attributes.push(NeighbourAttribute::Destination(NeighbourAddress::Inet6(ip)));
        match self.handle.neighbours().del(message).execute().await {
            Ok(()) => Ok(()),
            Err(rtnetlink::Error::NetlinkError(e)) if [-libc::ENOENT, -libc::ESRCH].contains(&e.raw_code()) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// Removes that route; a route already gone is fine.
    pub async fn remove_route_to_pod(&self, ip: IpAddr, ifindex: u32) -> Result<(), HostNetError> {
        match self.handle.route().del(Self::host_route(ip, ifindex)).execute().await {
            Ok(()) => Ok(()),
            Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -libc::ESRCH => Ok(()),
            Err(e) => Err(e.into()),
        }
    }
}
