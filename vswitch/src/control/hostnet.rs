//! The node-side plumbing of the host port, over rtnetlink: bring the TAP up, and keep one
//! `POD/32 dev vsw0` route per local pod so the node's stack (and kube-proxy's DNAT) can reach it.
//! (The link helpers vpc-cni uses as well live in `vswitch_api::link`.)

use std::net::Ipv4Addr;

use futures::TryStreamExt;
use rtnetlink::packet_route::address::AddressAttribute;
use rtnetlink::packet_route::link::LinkAttribute;
use rtnetlink::{Handle, LinkUnspec, RouteMessageBuilder};
use vswitch_api::link::set_noqueue;

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

    fn host_route(ip: Ipv4Addr, ifindex: u32) -> rtnetlink::packet_route::route::RouteMessage {
        RouteMessageBuilder::<Ipv4Addr>::new().destination_prefix(ip, 32).output_interface(ifindex).build()
    }

    /// `ip route replace IP/32 dev IFINDEX`.
    pub async fn route_to_pod(&self, ip: Ipv4Addr, ifindex: u32) -> Result<(), HostNetError> {
        self.handle.route().add(Self::host_route(ip, ifindex)).replace().execute().await?;
        Ok(())
    }

    /// Removes that route; a route already gone is fine.
    pub async fn remove_route_to_pod(&self, ip: Ipv4Addr, ifindex: u32) -> Result<(), HostNetError> {
        match self.handle.route().del(Self::host_route(ip, ifindex)).execute().await {
            Ok(()) => Ok(()),
            Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -libc::ESRCH => Ok(()),
            Err(e) => Err(e.into()),
        }
    }
}
