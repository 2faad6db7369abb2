//! `--vpc ucloud`'s "cluster external -> Service via LoadBalancer" row, the way a VPC-native
//! cluster serves a LoadBalancer Service: a load balancer on the VPC (standing in for UCloud's
//! ULB) whose real servers are the Service's pod addresses themselves, no NodePort hop, and a
//! client outside the cluster (the hybrid-cloud host) whose own address every backend sees.
//!
//! The balancer is IPVS (`ipvsadm`) in its own namespace, a fixed host of the VPC at [`VIP`]
//! (port `flb` of the fabric), in NAT mode: on a VPC with source/destination checks a pod can
//! neither receive for the VIP nor answer from it (its NIC does not own it, and vswitchd's port
//! security stops a pod sending from an address not its own), which direct routing and
//! tunnelling both need; NAT mode rewrites only the destination, so the client's address is kept.
//! NAT mode needs the replies back through the balancer, which a cloud's SDN does for its own
//! load balancers: here the VPC gateway sends the replies of the connections the balancer
//! opened (marked in its conntrack) to the balancer over their own link, and the balancer sends
//! the connections it opens into the VPC through the gateway, the one port allowed to send from
//! addresses outside the VPC. Where the kernel has no IPVS (some VM kernels have no modules), the
//! same NAT balancer is made of iptables DNAT rules spreading connections as IPVS's round robin
//! does; the row says which one served.

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr};

use serde::{Deserialize, Serialize};

use super::{sh, veth, Family, Lab, PathCheck, Topology, HYBRID_IP, SERVER_PORT};
use crate::netns::Netns;

/// The load balancer's address on the VPC, and its port.
pub const VIP: Ipv4Addr = Ipv4Addr::new(10, 10, 0, 40);
pub const VIP_PORT: u16 = 80;
/// The link between the VPC gateway (.1) and the balancer (.2), off the fabric.
const LINK_GATEWAY: &str = "172.16.40.1";
const LINK_BALANCER: &str = "172.16.40.2";
/// The gateway's routing table and conntrack mark for the balancer's connections.
const MARK: &str = "40";

/// The balancer as a later `vpc-lab check` finds it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LabLoadBalancer {
    pub netns: String,
    pub vip: Ipv4Addr,
    /// `ipvs` or `iptables` (no IPVS in the kernel).
    pub kind: String,
    /// The real servers: the Service's pods.
    pub backends: Vec<String>,
}

/// Whether this kernel has IPVS (`ipvsadm` answers in namespace `ns`).
fn ipvs_works(ns: &Netns) -> bool {
    ns.exec(&["ipvsadm", "-Ln"]).status.success()
}

impl Lab {
    /// The balancer's namespace on the fabric and on its link to the gateway, with the Service's
    /// pods as real servers.
    pub(super) fn add_load_balancer(&mut self) -> LabLoadBalancer {
        let ns = Netns::new(&format!("{}l", self.name));
        // On the VPC only the VIP (a /32: everything else leaves by the gateway link, so the
        // connections it opens to pods come into the VPC from the gateway's port).
        veth(&ns, "eth0", &self.fabric, "flb");
        self.fabric.ip(&["link", "set", "flb", "master", "br0", "up"]);
        ns.ip(&["addr", "add", &format!("{VIP}/32"), "dev", "eth0"]);
        // `--vpc aws`: the NLB's ENI in EC2, whose MAC the SDN forwards the VIP to.
        super::set_ec2_mac(self.topology.ec2.as_ref(), &ns, "lb");
        ns.ip(&["link", "set", "eth0", "up"]);
        veth(&ns, "eth1", &self.gateway, "eth2");
        ns.ip(&["addr", "add", &format!("{LINK_BALANCER}/30"), "dev", "eth1"]);
        ns.ip(&["link", "set", "eth1", "up"]);
        ns.ip(&["route", "add", "default", "via", LINK_GATEWAY]);
        self.gateway.ip(&["addr", "add", &format!("{LINK_GATEWAY}/30"), "dev", "eth2"]);
        self.gateway.ip(&["link", "set", "eth2", "up"]);
        let no_rp_filter = "for f in /proc/sys/net/ipv4/conf/*/rp_filter; do echo 0 > $f; done";
        sh(&ns, &format!("echo 1 > /proc/sys/net/ipv4/ip_forward && {no_rp_filter}"));
        // The gateway: the replies of connections that came from the balancer go back to it.
        sh(
            &self.gateway,
            &format!(
                "{no_rp_filter} && iptables -t mangle -A PREROUTING -i eth2 -j CONNMARK --set-mark {MARK} && \
                 iptables -t mangle -A PREROUTING -i eth0 -m connmark --mark {MARK} -j MARK --set-mark {MARK} && \
                 ip rule add fwmark {MARK} lookup {MARK} && ip route add default via {LINK_BALANCER} table {MARK}"
            ),
        );
        let backends: Vec<String> = self.topology.backends().iter().map(|p| p.name.clone()).collect();
        let servers: Vec<String> =
            self.topology.backends().iter().map(|p| format!("{}:{SERVER_PORT}", p.ip4())).collect();
        let vip = format!("{VIP}:{VIP_PORT}");
        let kind = if ipvs_works(&ns) {
            let mut script = format!("ipvsadm -A -t {vip} -s rr");
            for s in &servers {
                script.push_str(&format!(" && ipvsadm -a -t {vip} -r {s} -m"));
            }
            sh(&ns, &script);
            "ipvs"
        } else {
            // IPVS's round robin as DNAT rules: the k-th rule takes every (n-k)-th of the rest.
            let n = servers.len();
            let rules: Vec<String> = servers
                .iter()
                .enumerate()
                .map(|(k, s)| {
                    let pick = if n - k > 1 { format!("-m statistic --mode nth --every {} --packet 0 ", n - k) } else { String::new() };
                    format!("iptables -t nat -A PREROUTING -d {VIP} -p tcp --dport {VIP_PORT} {pick}-j DNAT --to-destination {s}")
                })
                .collect();
            sh(&ns, &rules.join(" && "));
            "iptables"
        };
        let lb = LabLoadBalancer { netns: ns.name.clone(), vip: VIP, kind: kind.into(), backends };
        self.lb_ns = Some(ns);
        self.topology.load_balancer = Some(lb.clone());
        lb
    }
}

impl Topology {
    /// The hybrid-cloud host connects to the VIP until every real server has answered; each
    /// must report the host's own address.
    pub(super) fn check_load_balancer(&self) -> Vec<PathCheck> {
        let Some(lb) = &self.load_balancer else { return Vec::new() };
        let (from_ns, _) = self.ns_of("hybrid", Family::V4);
        let (seen, rtt, error) = self.spread(&from_ns, IpAddr::V4(lb.vip), VIP_PORT);
        let mut check = PathCheck::of(
            Family::V4,
            "cluster external -> Service via LoadBalancer",
            "hybrid",
            &format!("{}:{VIP_PORT}", lb.vip),
        );
        check.rtt_ms = rtt;
        let names: BTreeSet<&str> = seen.iter().map(|(name, _)| name.as_str()).collect();
        let peers: BTreeSet<&str> = seen.iter().map(|(_, peer)| peer.as_str()).collect();
        let client = HYBRID_IP.to_string();
        let kept = peers.iter().all(|p| *p == client);
        check.ok = error.is_none() && self.all_backends(&seen) && kept;
        let names = names.into_iter().collect::<Vec<_>>().join(", ");
        check.detail = match error {
            Some(e) => format!("tcp: {e}"),
            None if kept => format!("{} (NAT mode) to the pods: {names} answered, each saw {client}", lb.kind),
            None => format!(
                "{names} answered; they saw {} - expected the client's {client}",
                peers.into_iter().collect::<Vec<_>>().join(", ")
            ),
        };
        vec![check]
    }
}
