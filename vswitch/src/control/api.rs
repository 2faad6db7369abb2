//! The control API: one JSON request per line on a unix socket, one JSON reply per line.
//!
//! `{"op":"add_port","name":"pod1","netns":"/run/netns/pod1","ifname":"eth0","ip":"10.10.1.5","mac":"02:00:0a:0a:01:05"}`
//! is answered `{"ok":true,"result":...}` or `{"ok":false,"error":"..."}`. A bad request gets an
//! error reply on its own line; the connection and the daemon carry on.

use std::net::Ipv4Addr;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::datapath::PortTotals;
use crate::state::PortRole;
use crate::wire::MacAddr;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
pub enum Request {
    /// Attach a pod's existing TAP `ifname` in `netns`.
    AddPort {
        name: String,
        netns: PathBuf,
        ifname: String,
        ip: Ipv4Addr,
        mac: MacAddr,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        mtu: Option<u16>,
    },
    /// Detach a port; with `remove_device`, also delete its TAP afterwards (in the background:
    /// the reply does not wait for the kernel to unregister the device).
    DelPort {
        name: String,
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        remove_device: bool,
    },
    /// Route `prefix` (e.g. `10.20.0.0/16`) out of port `port`.
    AddRoute {
        prefix: String,
        port: String,
    },
    DelRoute {
        prefix: String,
    },
    /// A cheap liveness answer: the number of ports and the state generation.
    Status,
    ListPorts,
    ListRoutes,
    ListNeighbors,
    Counters,
    /// Run a frame (hex, Ethernet onwards) through the pipeline as if it arrived on `port`.
    Trace {
        port: String,
        frame: String,
    },
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Reply {
    pub ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl Reply {
    pub fn ok(result: impl Serialize) -> Reply {
        Reply { ok: true, result: Some(serde_json::to_value(result).expect("serialisable")), error: None }
    }

    pub fn error(message: impl std::fmt::Display) -> Reply {
        Reply { ok: false, result: None, error: Some(message.to_string()) }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PortView {
    pub id: u16,
    pub name: String,
    #[serde(flatten)]
    pub role: PortRole,
    pub mtu: u16,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub netns: Option<PathBuf>,
    pub ifname: String,
    pub counters: PortTotals,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RouteView {
    pub prefix: String,
    pub port: String,
    /// A MAC, `arp <via>`, or `arp` (each destination on the connected subnet).
    pub next_hop: String,
    pub mtu: u16,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NeighborView {
    pub ip: Ipv4Addr,
    pub mac: Option<MacAddr>,
    pub port: String,
    pub state: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CountersView {
    pub ports: Vec<(String, PortTotals)>,
    pub drops: Vec<(String, u64)>,
    pub fib_routes: usize,
    pub neighbors: usize,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TraceView {
    pub steps: Vec<(String, String)>,
    pub verdict: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_parse_and_unknown_ones_are_errors() {
        let r: Request = serde_json::from_str(
            r#"{"op":"add_port","name":"p","netns":"/run/netns/p","ifname":"eth0","ip":"10.0.0.2","mac":"02:00:00:00:00:02"}"#,
        )
        .unwrap();
        assert!(matches!(r, Request::AddPort { mtu: None, .. }));
        assert_eq!(serde_json::from_str::<Request>(r#"{"op":"list_ports"}"#).unwrap(), Request::ListPorts);
        assert!(serde_json::from_str::<Request>(r#"{"op":"reboot"}"#).is_err());
        assert!(serde_json::from_str::<Request>(r#"{"op":"del_port"}"#).is_err());
        assert!(serde_json::from_str::<Request>(r#"{"op":"del_port","name":"p","x":1}"#).is_err());
        assert!(serde_json::from_str::<Request>(
            r#"{"op":"add_port","name":"p","netns":"/n","ifname":"eth0","ip":"10.0.0.300","mac":"02:00:00:00:00:02"}"#
        )
        .is_err());
    }
}
