//! Next-hop resolution on the uplink: the neighbour table of both families (ARP for IPv4,
//! neighbour discovery for IPv6), sans I/O.
//!
//! Workers look neighbours up in the published snapshot. A miss hands the packet to the control
//! plane, which calls [`NeighborTable::on_miss`]: the packet waits in a bounded per-neighbour
//! queue and an ARP request or neighbour solicitation goes out, retried a few times before the neighbour is marked failed
//! (and its packets dropped). A reply ([`NeighborTable::on_reply`]) makes it reachable and
//! releases the queue. Reachable entries are re-confirmed after `reachable_for`; the table is
//! bounded. Time comes in as an argument, so all of this is tested without clocks or sockets.

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::time::Duration;

use crate::wire::MacAddr;

#[derive(Debug, Clone, Copy)]
pub struct NeighborLimits {
    pub max_entries: usize,
    pub max_queued: usize,
    pub attempts: u32,
    pub retry_every: Duration,
    pub reachable_for: Duration,
    pub failed_for: Duration,
}

impl Default for NeighborLimits {
    fn default() -> Self {
        NeighborLimits {
            max_entries: 4096,
            max_queued: 16,
            attempts: 3,
            retry_every: Duration::from_secs(1),
            reachable_for: Duration::from_secs(60),
            failed_for: Duration::from_secs(3),
        }
    }
}

#[derive(Debug)]
enum State {
    Incomplete {
        queued: VecDeque<Vec<u8>>,
        attempts: u32,
        next_try: Duration,
    },
    Reachable {
        mac: MacAddr,
        until: Duration,
    },
    /// Being re-confirmed: still used, and a request is out.
    Probing {
        mac: MacAddr,
        attempts: u32,
        next_try: Duration,
    },
    Failed {
        until: Duration,
    },
}

/// What the caller must do.
#[derive(Debug, PartialEq, Eq)]
pub enum Action {
    /// Broadcast an ARP request for this address.
    Ask(IpAddr),
    /// These packets were dropped: the neighbour did not answer or its queue was full.
    Dropped { unresolved: usize, queue_full: usize },
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct NeighborEntry {
    pub ip: IpAddr,
    pub mac: Option<MacAddr>,
    pub state: &'static str,
}

#[derive(Debug, Default)]
pub struct NeighborTable {
    limits: NeighborLimits,
    entries: HashMap<IpAddr, State>,
}

impl NeighborTable {
    pub fn new(limits: NeighborLimits) -> NeighborTable {
        NeighborTable { limits, entries: HashMap::new() }
    }

    /// A packet for `ip` found no neighbour in the snapshot.
    pub fn on_miss(&mut self, ip: IpAddr, packet: Vec<u8>, now: Duration) -> Vec<Action> {
        let limits = self.limits;
        if !self.entries.contains_key(&ip) && self.entries.len() >= limits.max_entries && !self.evict_failed() {
            return vec![Action::Dropped { unresolved: 0, queue_full: 1 }];
        }
        let entry =
            self.entries.entry(ip).or_insert(State::Incomplete { queued: VecDeque::new(), attempts: 0, next_try: now });
        match entry {
            State::Incomplete { queued, attempts, next_try } => {
                let mut actions = Vec::new();
                if queued.len() >= limits.max_queued {
                    actions.push(Action::Dropped { unresolved: 0, queue_full: 1 });
                } else {
                    queued.push_back(packet);
                }
                if *attempts == 0 {
                    *attempts = 1;
                    *next_try = now + limits.retry_every;
                    actions.push(Action::Ask(ip));
                }
                actions
            }
            // Published since the worker looked: the caller re-sends via `mac_of`.
            State::Reachable { .. } | State::Probing { .. } => Vec::new(),
            State::Failed { .. } => vec![Action::Dropped { unresolved: 1, queue_full: 0 }],
        }
    }

    /// A neighbour the instance this one replaces (an upgrade) had resolved: reachable at once,
    /// so the first packets after the handover need no ARP (whose reply the old instance, still
    /// reading the uplink, may take). Ignored when known already or when the table is full.
    pub fn adopt(&mut self, ip: IpAddr, mac: MacAddr, now: Duration) -> bool {
        if self.entries.contains_key(&ip) || self.entries.len() >= self.limits.max_entries {
            return false;
        }
        self.entries.insert(ip, State::Reachable { mac, until: now + self.limits.reachable_for });
        true
    }

    /// An ARP reply (or announcement) says `ip` is at `mac`. Returns the packets that were
    /// waiting for it, and whether the published table must change.
    pub fn on_reply(&mut self, ip: IpAddr, mac: MacAddr, now: Duration) -> (Vec<Vec<u8>>, bool) {
        let until = now + self.limits.reachable_for;
        match self.entries.insert(ip, State::Reachable { mac, until }) {
            Some(State::Incomplete { queued, .. }) => (queued.into(), true),
            Some(State::Reachable { mac: old, .. }) | Some(State::Probing { mac: old, .. }) => (Vec::new(), old != mac),
            Some(State::Failed { .. }) => (Vec::new(), true),
            // Unsolicited: learn nothing we did not ask about.
            None => {
                self.entries.remove(&ip);
                (Vec::new(), false)
            }
        }
    }

    /// Retries, gives up, re-confirms and expires. Returns what to do, and whether the
    /// published table must change.
    pub fn on_tick(&mut self, now: Duration) -> (Vec<Action>, bool) {
        let limits = self.limits;
        let mut actions = Vec::new();
        let mut changed = false;
        let mut unresolved = 0;
        self.entries.retain(|&ip, state| match state {
            State::Incomplete { queued, attempts, next_try } if now >= *next_try => {
                if *attempts >= limits.attempts {
                    unresolved += queued.len();
                    *state = State::Failed { until: now + limits.failed_for };
                } else {
                    *attempts += 1;
                    *next_try = now + limits.retry_every;
                    actions.push(Action::Ask(ip));
                }
                true
            }
            State::Reachable { mac, until } if now >= *until => {
                *state = State::Probing { mac: *mac, attempts: 1, next_try: now + limits.retry_every };
                actions.push(Action::Ask(ip));
                true
            }
            State::Probing { attempts, next_try, .. } if now >= *next_try => {
                if *attempts >= limits.attempts {
                    changed = true;
                    false
                } else {
                    *attempts += 1;
                    *next_try = now + limits.retry_every;
                    actions.push(Action::Ask(ip));
                    true
                }
            }
            State::Failed { until } => now < *until,
            _ => true,
        });
        if unresolved > 0 {
            actions.push(Action::Dropped { unresolved, queue_full: 0 });
        }
        (actions, changed)
    }

    /// Makes room by removing a failed entry, if there is one.
    fn evict_failed(&mut self) -> bool {
        let victim = self.entries.iter().find(|(_, s)| matches!(s, State::Failed { .. })).map(|(ip, _)| *ip);
        victim.is_some_and(|ip| self.entries.remove(&ip).is_some())
    }

    /// The MAC for `ip`, if known (reachable or being re-confirmed).
    pub fn mac_of(&self, ip: IpAddr) -> Option<MacAddr> {
        match self.entries.get(&ip)? {
            State::Reachable { mac, .. } | State::Probing { mac, .. } => Some(*mac),
            _ => None,
        }
    }

    /// What workers may use: every known neighbour.
    pub fn resolved(&self) -> HashMap<IpAddr, MacAddr> {
        self.entries.keys().filter_map(|&ip| Some((ip, self.mac_of(ip)?))).collect()
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn list(&self) -> Vec<NeighborEntry> {
        let mut out: Vec<_> = self
            .entries
            .iter()
            .map(|(&ip, s)| {
                let state = match s {
                    State::Incomplete { .. } => "incomplete",
                    State::Reachable { .. } => "reachable",
                    State::Probing { .. } => "probing",
                    State::Failed { .. } => "failed",
                };
                NeighborEntry { ip, mac: self.mac_of(ip), state }
            })
            .collect();
        out.sort_by_key(|e| e.ip);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use std::net::Ipv4Addr;

    const IP: IpAddr = IpAddr::V4(Ipv4Addr::new(10, 10, 0, 50));
    const MAC: MacAddr = MacAddr([2, 0, 0, 0, 0, 0x50]);
    const S: Duration = Duration::from_secs(1);

    fn table() -> NeighborTable {
        NeighborTable::new(NeighborLimits { max_entries: 2, max_queued: 2, ..Default::default() })
    }

    #[test]
    fn a_miss_asks_once_queues_and_a_reply_releases_the_queue() {
        let mut t = table();
        assert_eq!(t.on_miss(IP, vec![1], Duration::ZERO), vec![Action::Ask(IP)]);
        assert_eq!(t.on_miss(IP, vec![2], Duration::ZERO), vec![]);
        assert_eq!(t.on_miss(IP, vec![3], Duration::ZERO), vec![Action::Dropped { unresolved: 0, queue_full: 1 }]);
        assert_eq!(t.mac_of(IP), None);
        let (released, changed) = t.on_reply(IP, MAC, S / 2);
        assert_eq!((released, changed), (vec![vec![1], vec![2]], true));
        assert_eq!(t.resolved().get(&IP), Some(&MAC));
    }

    #[test]
    fn a_handed_over_neighbour_is_reachable_at_once_and_never_replaces_a_known_one() {
        let mut t = table();
        assert!(t.adopt(IP, MAC, Duration::ZERO));
        assert_eq!(t.mac_of(IP), Some(MAC));
        assert!(!t.adopt(IP, MacAddr([2, 0, 0, 0, 0, 0x99]), Duration::ZERO), "known already");
        assert_eq!(t.mac_of(IP), Some(MAC));
        let other = IpAddr::V4(Ipv4Addr::new(10, 10, 0, 51));
        assert!(t.adopt(other, MAC, Duration::ZERO));
        assert!(!t.adopt(IpAddr::V4(Ipv4Addr::new(10, 10, 0, 52)), MAC, Duration::ZERO), "the table is full");
        // Re-confirmed like any entry, after `reachable_for`.
        assert_eq!(t.on_miss(IP, vec![1], S), vec![]);
    }

    #[test]
    fn unanswered_requests_are_retried_then_the_packets_dropped() {
        let mut t = table();
        t.on_miss(IP, vec![1], Duration::ZERO);
        assert_eq!(t.on_tick(S).0, vec![Action::Ask(IP)]);
        assert_eq!(t.on_tick(2 * S).0, vec![Action::Ask(IP)]);
        assert_eq!(t.on_tick(3 * S).0, vec![Action::Dropped { unresolved: 1, queue_full: 0 }]);
        assert_eq!(t.on_miss(IP, vec![2], 4 * S), vec![Action::Dropped { unresolved: 1, queue_full: 0 }]);
        // After the failed period it is asked for again.
        t.on_tick(10 * S);
        assert_eq!(t.on_miss(IP, vec![3], 10 * S), vec![Action::Ask(IP)]);
    }

    #[test]
    fn reachable_entries_are_reconfirmed_and_expire_if_silent() {
        let mut t = table();
        t.on_miss(IP, vec![], Duration::ZERO);
        t.on_reply(IP, MAC, Duration::ZERO);
        assert_eq!(t.on_tick(61 * S).0, vec![Action::Ask(IP)]);
        assert_eq!(t.mac_of(IP), Some(MAC), "still used while probing");
        t.on_tick(62 * S);
        t.on_tick(63 * S);
        let (_, changed) = t.on_tick(64 * S);
        assert!(changed && t.mac_of(IP).is_none() && t.is_empty());
    }

    #[test]
    fn unsolicited_replies_teach_nothing_and_the_table_is_bounded() {
        let mut t = table();
        assert_eq!(t.on_reply(IP, MAC, Duration::ZERO), (vec![], false));
        assert!(t.is_empty());
        t.on_miss(IpAddr::from([10, 0, 0, 1]), vec![], Duration::ZERO);
        t.on_miss(IpAddr::from([10, 0, 0, 2]), vec![], Duration::ZERO);
        assert_eq!(
            t.on_miss(IpAddr::from([10, 0, 0, 3]), vec![], Duration::ZERO),
            vec![Action::Dropped { unresolved: 0, queue_full: 1 }]
        );
        assert_eq!(t.len(), 2);
    }
}
