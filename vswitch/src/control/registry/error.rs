//! Why the registry refuses a change. The driver maps each to the API's error code in one place
//! (`driver::errors`); the messages are the ones clients have always read.

use std::net::IpAddr;

use fib::AnyPrefix;

use crate::state::MAX_PORTS;
use crate::wire::MacAddr;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RegistryError {
    #[error("no port named '{0}'")]
    NoSuchPort(String),
    #[error("port '{0}' already exists")]
    PortExists(String),
    #[error("port '{0}' is being attached")]
    PortBeingAttached(String),
    #[error("{ip} is already used by port '{port}'")]
    AddressInUse { ip: IpAddr, port: String },
    #[error("{ip} is being attached as port '{port}'")]
    AddressBeingAttached { ip: IpAddr, port: String },
    #[error(transparent)]
    InvalidPod(#[from] InvalidPod),
    #[error("no free port id (at most {MAX_PORTS} ports)")]
    NoFreePortId,
    #[error("'{0}' is not a pod port; only pod ports can be removed")]
    NotAPodPort(String),
    #[error("port '{0}' has no device")]
    PortGone(String),
    #[error("route {0} belongs to a port; remove the port instead")]
    RouteOwnedByPort(AnyPrefix),
    #[error("a route for {0} exists; replace it explicitly")]
    RouteExists(AnyPrefix),
    #[error("no route for {0}")]
    NoSuchRoute(AnyPrefix),
}

/// Why a pod port's spec cannot be attached at all (whatever else is attached).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidPod {
    #[error("a port name has 1 to 256 characters")]
    NameLength,
    #[error("'{0}' is not an interface name")]
    InterfaceName(String),
    #[error("{0} is not a unicast MAC")]
    NotUnicast(MacAddr),
    #[error("a pod port needs an IPv4 or an IPv6 address")]
    NoAddress,
    #[error("{0} cannot be a pod address")]
    Address(IpAddr),
    #[error("MTU {0} is outside 576..=9000")]
    Mtu(u16),
    #[error("a bandwidth limit needs a rate and a burst above 0")]
    ZeroRate,
}
