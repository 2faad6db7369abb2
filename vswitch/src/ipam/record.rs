//! What the cluster store holds, one key per address: the address record is the only truth about
//! who may use an address. Everything else (the sticky index, node keys, down marks) is a hint
//! that is checked against it.
//!
//! ```text
//! <prefix>/ip/<address>          AddressRecord (absent: free)
//! <prefix>/node/<node>           NodeRecord, bound to the node's lease: present while it lives
//! <prefix>/member/<node>         written at each registration: the nodes the leader watches over
//! <prefix>/held/<node>/<address> the node's index: present for every record naming the node
//! <prefix>/reclaim-leader        the node that reclaims dead nodes' addresses, bound to its lease
//! <prefix>/pool                  the pool every node must be configured with
//! <prefix>/down/<node>           when a node was first seen without its lease (quarantine)
//! <prefix>/sticky/<ns>/<name>    the IPv4 address a sticky pod keeps
//! <prefix>/sticky6/<ns>/<name>   the IPv6 address a sticky pod keeps
//! ```
//!
//! An address's key text is the standard library's `Display` of it (RFC 5952 for IPv6: lower
//! case, longest zero run compressed), so one address has exactly one key; a key spelt any
//! other way is not read as an address.

use std::net::IpAddr;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use vswitch_api::api::{Attachment, PodRef};

use super::pool::Family;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum AddressRecord {
    /// In `node`'s warm pool: no pod has it yet.
    Warm { node: String, since: u64 },
    /// A pod's, on `node`.
    Assigned {
        node: String,
        owner: Attachment,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pod: Option<PodRef>,
        since: u64,
    },
    /// Kept for `pod` until `until` (it was deleted and may come back, on any node).
    Sticky { pod: PodRef, until: u64, last_node: String },
    /// Released at `released_at`; free once the reuse delay has passed, so a new pod never
    /// receives the connections of the old one.
    Cooling { released_at: u64, last_node: String },
}

impl AddressRecord {
    /// The node that may use the address now.
    pub fn node(&self) -> Option<&str> {
        match self {
            AddressRecord::Warm { node, .. } | AddressRecord::Assigned { node, .. } => Some(node),
            _ => None,
        }
    }

    /// The attachment it is assigned to.
    pub fn owner(&self) -> Option<&Attachment> {
        match self {
            AddressRecord::Assigned { owner, .. } => Some(owner),
            _ => None,
        }
    }

    /// May a node claim it at `now`? Released addresses after the reuse delay; sticky ones once
    /// their hold and then the reuse delay have passed.
    pub fn claimable(&self, now: u64, reuse_delay: u64) -> bool {
        match self {
            AddressRecord::Cooling { released_at, .. } => now >= released_at.saturating_add(reuse_delay),
            AddressRecord::Sticky { until, .. } => now >= until.saturating_add(reuse_delay),
            _ => false,
        }
    }

    pub fn state_name(&self) -> &'static str {
        match self {
            AddressRecord::Warm { .. } => "warm",
            AddressRecord::Assigned { .. } => "assigned",
            AddressRecord::Sticky { .. } => "sticky",
            AddressRecord::Cooling { .. } => "cooling",
        }
    }

    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("records serialise")
    }

    pub fn decode(bytes: &[u8]) -> Option<AddressRecord> {
        serde_json::from_slice(bytes).ok()
    }
}

/// Written under the node's lease.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeRecord {
    pub lease: i64,
    pub since: u64,
}

/// The key layout under one cluster prefix.
#[derive(Debug, Clone)]
pub struct Keys {
    prefix: String,
}

impl Keys {
    pub fn new(prefix: &str) -> Keys {
        Keys { prefix: prefix.trim_end_matches('/').to_string() }
    }

    pub fn ips(&self) -> String {
        format!("{}/ip/", self.prefix)
    }

    pub fn ip(&self, ip: IpAddr) -> String {
        format!("{}/ip/{ip}", self.prefix)
    }

    pub fn ip_of(&self, key: &str) -> Option<IpAddr> {
        let text = key.strip_prefix(&self.ips())?;
        text.parse().ok().filter(|ip: &IpAddr| ip.to_string() == text)
    }

    pub fn nodes(&self) -> String {
        format!("{}/node/", self.prefix)
    }

    pub fn node(&self, node: &str) -> String {
        format!("{}/node/{node}", self.prefix)
    }

    pub fn members(&self) -> String {
        format!("{}/member/", self.prefix)
    }

    pub fn member(&self, node: &str) -> String {
        format!("{}/member/{node}", self.prefix)
    }

    /// The node's index: one key per address whose record may name it. Written before the
    /// write that makes a record name the node and deleted only after one that makes it name
    /// someone else, so it always covers the node's records (and may hold a few stale ones).
    pub fn held(&self, node: &str) -> String {
        format!("{}/held/{node}/", self.prefix)
    }

    pub fn held_ip(&self, node: &str, ip: IpAddr) -> String {
        format!("{}/held/{node}/{ip}", self.prefix)
    }

    /// The address of an index key under [`Keys::held`]`(node)`.
    pub fn held_ip_of(&self, node: &str, key: &str) -> Option<IpAddr> {
        let text = key.strip_prefix(&self.held(node))?;
        text.parse().ok().filter(|ip: &IpAddr| ip.to_string() == text)
    }

    /// Bound to the leader's lease. (Releases before the lease-bound key wrote `<prefix>/leader`
    /// without a lease; a new name, so such a key never blocks leadership.)
    pub fn leader(&self) -> String {
        format!("{}/reclaim-leader", self.prefix)
    }

    pub fn pool(&self) -> String {
        format!("{}/pool", self.prefix)
    }

    pub fn downs(&self) -> String {
        format!("{}/down/", self.prefix)
    }

    pub fn down(&self, node: &str) -> String {
        format!("{}/down/{node}", self.prefix)
    }

    /// The sticky index of the pod's address of `family` (IPv4 keeps the key it always had).
    pub fn sticky(&self, pod: &PodRef, family: Family) -> String {
        let dir = match family {
            Family::Ipv4 => "sticky",
            Family::Ipv6 => "sticky6",
        };
        format!("{}/{dir}/{}/{}", self.prefix, pod.namespace, pod.name)
    }
}

pub fn now_secs() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_and_know_when_they_are_free() {
        let pod = PodRef { namespace: "db".into(), name: "pg-0".into() };
        let sticky = AddressRecord::Sticky { pod, until: 100, last_node: "n1".into() };
        assert_eq!(AddressRecord::decode(&sticky.encode()), Some(sticky.clone()));
        assert!(!sticky.claimable(100, 120) && !sticky.claimable(219, 120) && sticky.claimable(220, 120));
        let cooling = AddressRecord::Cooling { released_at: 10, last_node: "n1".into() };
        assert!(!cooling.claimable(129, 120) && cooling.claimable(130, 120));
        assert!(!AddressRecord::Warm { node: "n".into(), since: 0 }.claimable(u64::MAX, 0));
        let keys = Keys::new("/vpc/");
        assert_eq!(keys.ip("10.0.0.1".parse().unwrap()), "/vpc/ip/10.0.0.1");
        assert_eq!(keys.ip_of("/vpc/ip/fd00::1"), Some("fd00::1".parse().unwrap()));
        assert_eq!(keys.ip_of("/vpc/node/x"), None);
        assert_eq!(keys.ip("FD00:0:0::0001".parse().unwrap()), "/vpc/ip/fd00::1", "one spelling per address");
        assert_eq!(keys.ip_of("/vpc/ip/fd00:0::1"), None, "not the canonical spelling");
    }
}
