//! `--vpc ucloud`'s and `--vpc aws`'s "unregistered address" rows: a pod whose address was configured by hand (a
//! static address in its network config, through vpc-cni's local IPAM, so vswitchd attaches it
//! like any pod) but never registered with the VPC's API. On a real VPC such a pod is
//! unreachable and what it sends goes nowhere, whatever ARP says; the lab's SDN must do the same,
//! and its drop counters must show it did the dropping.

use std::net::Ipv4Addr;
use std::path::Path;

use serde_json::{json, Value};

use super::{start_server, vpc_api, Family, Lab, LabPod, PathCheck, Topology};
use crate::netns::Netns;

/// The pod's name, and its address on node `i`: in the VPC subnet, outside the pool the API
/// hands secondary IPs from and off every fixed host.
pub const UNREGISTERED_POD: &str = "unregistered";
pub fn unregistered_ip(node: usize) -> Ipv4Addr {
    Ipv4Addr::new(10, 10, node as u8 + 1, 200)
}

/// Drop counters that show a packet to an address no NIC owns was dropped, and those for a
/// packet from an address its port does not own.
const TO_UNKNOWN: &[&str] = &["arp_unknown_target", "dst4_unregistered", "dst4_other_port"];
const FROM_UNKNOWN: &[&str] = &["src4_unregistered", "arp_spoofed"];

impl Topology {
    /// The unregistered pod's network configuration: the node's, with a static address.
    fn unregistered_conf(&self, node: usize) -> Value {
        let ip = unregistered_ip(node).to_string();
        let mut conf = self.cni_conf(node);
        conf["ipam"] = json!({"ranges": [{"rangeStart": ip, "rangeEnd": ip}],
                              "dataDir": self.dir.join(format!("node{}/ipam-unregistered", node + 1))});
        conf
    }

    /// The SDN's drop counters `names`, summed (none without an SDN).
    fn sdn_drops(&self, names: &[&str]) -> Option<u64> {
        let state = vpc_api::control(self.sdn_control()?, &json!({"op": "state"})).ok()?;
        Some(names.iter().filter_map(|n| state["counters"][*n]["packets"].as_u64()).sum())
    }

    /// One row: `from` must not reach `to` by ping, and the SDN's counters `names` must move.
    fn check_dropped(
        &self,
        path: &str,
        (from, from_ns): (&str, &str),
        to: (&str, Ipv4Addr),
        names: &[&str],
    ) -> PathCheck {
        let mut check = PathCheck::of(Family::V4, path, from, to.0);
        let before = self.sdn_drops(names);
        let reached = self.ping(from_ns, to.1);
        let after = self.sdn_drops(names);
        let dropped = after.zip(before).map(|(a, b)| a.saturating_sub(b));
        check.ok = reached.is_err() && dropped.is_some_and(|n| n > 0);
        check.detail = match (reached, dropped) {
            (Ok(rtt), _) => format!("{} answered in {rtt:.3} ms: the VPC delivered an unregistered address", to.0),
            (Err(_), Some(n)) if n > 0 => format!("no answer; the SDN dropped {n} ({})", names.join(", ")),
            (Err(_), _) => format!("no answer, but the SDN's counters {} did not move", names.join(", ")),
        };
        check
    }

    /// The unregistered pod is unreachable from the VM and from a pod on another node, and what
    /// it sends to the VM is dropped; each row proven by the SDN's own counters. Run one at a
    /// time, so each row's counters are its own.
    pub fn check_unregistered(&self) -> Vec<PathCheck> {
        let Some(pod) = &self.unregistered else { return Vec::new() };
        let ip = pod.ip4();
        let other = self.pods.iter().find(|p| p.node != pod.node).expect("a pod on another node");
        vec![
            self.check_dropped(
                "unregistered address: VPC host (VM) -> pod",
                ("vm", &self.vm),
                (&pod.name, ip),
                TO_UNKNOWN,
            ),
            self.check_dropped(
                "unregistered address: pod on another node -> pod",
                (&other.name, &other.netns),
                (&pod.name, ip),
                TO_UNKNOWN,
            ),
            self.check_dropped(
                "unregistered address: pod -> VPC host (VM)",
                (&pod.name, &pod.netns),
                ("vm", super::VM_IP),
                FROM_UNKNOWN,
            ),
        ]
    }
}

impl Lab {
    /// The unregistered pod on `node`, through vpc-cni ADD with a static address, with a server.
    pub(super) fn add_unregistered_pod(&mut self, node: usize) -> LabPod {
        let name = UNREGISTERED_POD;
        let ns = Netns::new(&format!("{}p{name}", self.name));
        let container = format!("{}-{name}", self.name);
        let conf = self.unregistered_conf(node);
        let result =
            self.cni_with(&conf, "ADD", node, &container, &ns.path(), name).unwrap_or_else(|e| panic!("{}", e.message));
        let (ip, ipv6) = LabPod::from_result(&result);
        assert_eq!(ip, Some(unregistered_ip(node)), "vpc-cni ADD {name}: {result}");
        let pod = LabPod { name: name.into(), netns: ns.name.clone(), container_id: container, ip, ipv6, node };
        self.servers.push(start_server(&ns.name, name));
        self.pod_ns.push(ns);
        self.topology.unregistered = Some(pod.clone());
        pod
    }

    /// Its vpc-cni DEL.
    pub(super) fn delete_unregistered_pod(&mut self) {
        let Some(pod) = self.topology.unregistered.take() else { return };
        let conf = self.unregistered_conf(pod.node);
        let path = Path::new("/run/netns").join(&pod.netns);
        if let Err(e) = self.cni_with(&conf, "DEL", pod.node, &pod.container_id, &path, &pod.name) {
            panic!("{}", e.message);
        }
    }
}
