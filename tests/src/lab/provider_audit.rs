//! Provider mode's books against the VPC's ([`super::IpamMode::Vpc`]): each node's NIC in the
//! VPC must hold exactly what the node accounts for (the lab's pods on it, its warm, cooling,
//! queued and held addresses); anything else on the NIC is leaked.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use serde_json::Value;

use super::Lab;

fn strings(v: &Value) -> BTreeSet<String> {
    v.as_array().map(|a| a.iter().filter_map(|s| s.as_str().map(str::to_string)).collect()).unwrap_or_default()
}

/// One node's NIC as the VPC has it and as the node accounts for it.
#[derive(Debug, Clone)]
pub struct NicBooks {
    /// The VPC's secondary IPs of the node's pod NIC.
    pub on_nic: BTreeSet<String>,
    /// The lab's pods on the node, its warm, cooling, queued and held addresses.
    pub accounted: BTreeSet<String>,
    pub warm: BTreeSet<String>,
    /// Nothing cooling or queued, and the API seen up.
    pub quiet: bool,
}

impl NicBooks {
    /// On the NIC, accounted for by nobody.
    pub fn leaked(&self) -> BTreeSet<String> {
        self.on_nic.difference(&self.accounted).cloned().collect()
    }
}

impl Lab {
    /// The VPC's secondary IPs of node `node`'s pod NIC (the VPC's view only: no call to the
    /// node, so it answers whatever the VPC API's latency).
    pub fn nic_secondary(&self, node: usize) -> BTreeSet<String> {
        if let Some(ec2) = &self.topology.ec2 {
            // --vpc aws: every ENI of the node's instance, as moto has it (not through the proxy).
            let instance = &ec2.host(&format!("node{}", node + 1)).instance;
            let enis = ec2.enis().into_iter().filter(|e| e["instance"].as_str() == instance.as_deref());
            return enis.flat_map(|e| strings(&e["secondary"])).collect();
        }
        let vpc = self.topology.vpc.as_ref().expect("a lab with --vpc ucloud or aws");
        let pod_nic = super::node_config::pod_nic(self.topology.mode);
        let mac = &vpc.nics.iter().find(|n| n.node == node && n.interface == pod_nic).expect("the node's NIC").mac;
        let state = self.vpc_api().expect("the VPC API").state();
        let nic = state["vpc"]["nics"].as_array().and_then(|a| a.iter().find(|n| n["mac"] == mac.as_str())).cloned();
        nic.map(|n| strings(&n["secondary"])).unwrap_or_default()
    }

    /// Node `node`'s books, now.
    pub fn nic_books(&self, node: usize) -> NicBooks {
        let view = self.daemon(node).ctl_json(&["ipam"]);
        let p = &view["provider"];
        let mut accounted: BTreeSet<String> =
            self.pods.iter().filter(|x| x.node == node).filter_map(|x| x.ip).map(|ip| ip.to_string()).collect();
        for list in ["warm", "cooling", "deleting"] {
            accounted.extend(strings(&p[list]));
        }
        accounted.extend(
            view["sticky"].as_array().into_iter().flatten().filter_map(|s| s["ip"].as_str().map(str::to_string)),
        );
        NicBooks {
            on_nic: self.nic_secondary(node),
            accounted,
            warm: strings(&p["warm"]),
            quiet: strings(&p["deleting"]).is_empty() && strings(&p["cooling"]).is_empty() && p["api_healthy"] == true,
        }
    }

    /// Until every node in `nodes` is quiet with its books matching the VPC's; the books of the
    /// last look either way (check them: after `within` they may still disagree).
    pub fn settle_nic_books(&self, nodes: std::ops::Range<usize>, within: Duration) -> Vec<NicBooks> {
        let deadline = Instant::now() + within;
        loop {
            let books: Vec<NicBooks> = nodes.clone().map(|i| self.nic_books(i)).collect();
            if books.iter().all(|b| b.quiet && b.on_nic == b.accounted) || Instant::now() >= deadline {
                return books;
            }
            std::thread::sleep(Duration::from_secs(1));
        }
    }
}
