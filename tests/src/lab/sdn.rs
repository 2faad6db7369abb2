//! The lab VPC's SDN data plane (`--vpc ucloud`): the fabric stays a Linux bridge, and an
//! nftables table of the `bridge` family lets a frame through only when the VPC's flow table
//! says so, whatever ARP or the bridge's MAC learning say.
//!
//! The flow table is two sets of `(fabric port, address)` pairs, one per family: what each NIC
//! (or fixed host) owns. On the way in (`prerouting`, once per frame) an IP packet's source must
//! be owned by the port it entered on, and its destination owned by some port; on the way out
//! (`forward`, once per port the bridge sends it to) its destination must be owned by that
//! port. Outside the VPC's prefixes only the gateway's port may send from, and receive for,
//! addresses. ARP is checked like IP (the sender address owned by the sending port, the target
//! owned by someone; a probe from 0.0.0.0 only for an owned target, and its reply, whose target
//! is 0.0.0.0, only from the owner), so an address the SDN does
//! not know does not even resolve. IPv6 neighbour discovery passes as link control: from
//! link-local or unspecified sources only towards link-local or multicast destinations (MLD,
//! DAD, router and neighbour solicitations), and with owned global sources to the solicited-node
//! multicast groups; nft 1.0.6 cannot match a neighbour advertisement's target, so a host may
//! announce any IPv6 address, but no packet to or from it passes unless it is owned. Everything
//! else (IPv4 broadcast and multicast, other ether types) is dropped. Every drop is counted by
//! reason in a named counter ([`COUNTERS`]).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::io::Write as _;
use std::net::IpAddr;
use std::process::{Command, Stdio};

use ipnet::IpNet;
use serde::Serialize;

use super::vpc_api::vpc::{FlowChange, FlowEntry};

/// The nftables table (family `bridge`) in the fabric's namespace.
pub const TABLE: &str = "vpc_sdn";

/// The named counters: (name, what it counts).
pub const COUNTERS: &[(&str, &str)] = &[
    ("delivered4", "IPv4 packets delivered to the port owning their destination (or leaving by the gateway)"),
    ("delivered6", "IPv6 packets delivered to the port owning their destination (or leaving by the gateway)"),
    ("arp_spoofed", "ARP whose sender address is not owned by the port it came from"),
    ("arp_unknown_target", "ARP for a target address no port owns"),
    ("src4_unregistered", "IPv4 packets whose source is not owned by the port they came from"),
    ("src6_unregistered", "IPv6 packets whose source is not owned by the port they came from"),
    ("dst4_unregistered", "IPv4 packets to an address no port owns"),
    ("dst6_unregistered", "IPv6 packets to an address no port owns"),
    ("dst4_other_port", "IPv4 copies headed to a port that does not own the destination (stale ARP, flooding)"),
    ("dst6_other_port", "IPv6 copies headed to a port that does not own the destination (stale NDP, flooding)"),
    ("broadcast4", "IPv4 broadcast and multicast (a VPC carries none)"),
    ("other_ethertype", "frames neither ARP, IPv4 nor IPv6"),
];

#[derive(Debug, thiserror::Error)]
pub enum SdnError {
    #[error("running nft in {netns}: {source}")]
    Spawn { netns: String, source: std::io::Error },
    #[error("nft in {netns} refused the script: {stderr}\n{script}")]
    Refused { netns: String, stderr: String, script: String },
    #[error("nft's counters are not JSON as expected: {0}")]
    Counters(String),
}

/// The whole table: sets empty, to be filled with [`FlowTable::apply`]. Replaces any older one.
pub fn ruleset(gateway_port: Option<&str>, prefixes: &[IpNet]) -> String {
    let list = |v6: bool| {
        let nets: Vec<String> =
            prefixes.iter().filter(|n| matches!(n, IpNet::V6(_)) == v6).map(|n| n.to_string()).collect();
        (!nets.is_empty()).then(|| format!("{{ {} }}", nets.join(", ")))
    };
    let (vpc4, vpc6) = (list(false), list(true));
    // Traffic leaving or entering the VPC: only through the gateway's port.
    let routed = |dir: &str, addr: &str, vpc: &Option<String>, then: &str| match (gateway_port, vpc) {
        (Some(gw), Some(vpc)) => format!("        {dir} \"{gw}\" {addr} != {vpc} {then}\n"),
        _ => String::new(),
    };
    let mut rules = format!("table bridge {TABLE} {{}}\ndelete table bridge {TABLE}\ntable bridge {TABLE} {{\n");
    rules.push_str(
        "    set own4 { type ifname . ipv4_addr; }\n    set own6 { type ifname . ipv6_addr; }\n\
         \x20   set addr4 { type ipv4_addr; }\n    set addr6 { type ipv6_addr; }\n",
    );
    for (name, _) in COUNTERS {
        let _ = writeln!(rules, "    counter {name} {{}}");
    }
    rules.push_str(
        "    chain from_port {\n        type filter hook prerouting priority 0; policy drop;\n\
         \x20       ether type arp jump arp_in\n        ether type ip jump ip_in\n        ether type ip6 jump ip6_in\n\
         \x20       counter name other_ethertype drop\n    }\n",
    );
    rules.push_str(
        "    chain arp_in {\n        arp saddr ip 0.0.0.0 arp daddr ip @addr4 accept\n\
         \x20       arp saddr ip 0.0.0.0 counter name arp_unknown_target drop\n\
         \x20       arp operation reply arp daddr ip 0.0.0.0 iifname . arp saddr ip @own4 accept\n\
         \x20       iifname . arp saddr ip != @own4 counter name arp_spoofed drop\n\
         \x20       arp daddr ip != @addr4 counter name arp_unknown_target drop\n        accept\n    }\n",
    );
    rules.push_str("    chain ip_in {\n        meta pkttype { broadcast, multicast } counter name broadcast4 drop\n");
    rules.push_str("        iifname . ip saddr @own4 goto ip_dst\n");
    rules.push_str(&routed("iifname", "ip saddr", &vpc4, "goto ip_dst"));
    rules.push_str("        counter name src4_unregistered drop\n    }\n");
    rules.push_str("    chain ip_dst {\n        ip daddr @addr4 accept\n");
    // Leaving the VPC: the forward chain lets it go to the gateway's port only.
    if let (Some(_), Some(vpc4)) = (gateway_port, &vpc4) {
        let _ = writeln!(rules, "        ip daddr != {vpc4} accept");
    }
    rules.push_str("        counter name dst4_unregistered drop\n    }\n");
    rules.push_str(
        "    chain ip6_in {\n        ip6 saddr { ::, fe80::/10 } goto ip6_link\n        iifname . ip6 saddr @own6 goto ip6_dst\n",
    );
    rules.push_str(&routed("iifname", "ip6 saddr", &vpc6, "goto ip6_dst"));
    rules.push_str("        counter name src6_unregistered drop\n    }\n");
    rules.push_str(
        "    chain ip6_link {\n        ip6 daddr { fe80::/10, ff02::/16 } accept\n\
         \x20       icmpv6 type { nd-neighbor-solicit, nd-neighbor-advert } ip6 hoplimit 255 accept\n\
         \x20       counter name src6_unregistered drop\n    }\n",
    );
    rules.push_str("    chain ip6_dst {\n        ip6 daddr ff02::/16 meta l4proto icmpv6 accept\n        ip6 daddr @addr6 accept\n");
    if let Some(vpc6) = &vpc6 {
        if gateway_port.is_some() {
            let _ = writeln!(rules, "        ip6 daddr != {vpc6} ip6 daddr != ff00::/8 accept");
        }
    }
    rules.push_str("        counter name dst6_unregistered drop\n    }\n");
    rules.push_str(
        "    chain to_port {\n        type filter hook forward priority 0; policy accept;\n\
         \x20       ether type ip jump ip_out\n        ether type ip6 jump ip6_out\n    }\n",
    );
    rules.push_str("    chain ip_out {\n        oifname . ip daddr @own4 counter name delivered4 accept\n");
    rules.push_str(&routed("oifname", "ip daddr", &vpc4, "counter name delivered4 accept"));
    rules.push_str("        counter name dst4_other_port drop\n    }\n");
    rules.push_str(
        "    chain ip6_out {\n        ip6 daddr { fe80::/10, ff00::/8 } accept\n\
         \x20       oifname . ip6 daddr @own6 counter name delivered6 accept\n",
    );
    rules.push_str(&routed("oifname", "ip6 daddr", &vpc6, "counter name delivered6 accept"));
    rules.push_str("        counter name dst6_other_port drop\n    }\n}\n");
    rules
}

/// What the fabric's flow table holds, mirrored: changes become nft scripts that never delete
/// what is not there nor add what is (nft refuses both in a transaction).
#[derive(Debug, Default, Clone)]
pub struct FlowTable {
    entries: BTreeSet<FlowEntry>,
}

impl FlowTable {
    pub fn entries(&self) -> &BTreeSet<FlowEntry> {
        &self.entries
    }

    /// Applies `changes` in order to the mirror; returns the script that brings the kernel's
    /// sets along (None when nothing changed).
    pub fn apply(&mut self, changes: &[FlowChange]) -> Option<String> {
        let before = self.entries.clone();
        for change in changes {
            match change {
                FlowChange::Add(e) => self.entries.insert(e.clone()),
                FlowChange::Remove(e) => self.entries.remove(e),
            };
        }
        let addrs = |s: &BTreeSet<FlowEntry>| s.iter().map(|e| e.addr).collect::<BTreeSet<IpAddr>>();
        let (old_addrs, new_addrs) = (addrs(&before), addrs(&self.entries));
        let mut script = String::new();
        let family = |a: &IpAddr| if a.is_ipv4() { "4" } else { "6" };
        for e in before.difference(&self.entries) {
            let _ = writeln!(
                script,
                "delete element bridge {TABLE} own{} {{ \"{}\" . {} }}",
                family(&e.addr),
                e.port,
                e.addr
            );
        }
        for a in old_addrs.difference(&new_addrs) {
            let _ = writeln!(script, "delete element bridge {TABLE} addr{} {{ {a} }}", family(a));
        }
        for a in new_addrs.difference(&old_addrs) {
            let _ = writeln!(script, "add element bridge {TABLE} addr{} {{ {a} }}", family(a));
        }
        for e in self.entries.difference(&before) {
            let _ =
                writeln!(script, "add element bridge {TABLE} own{} {{ \"{}\" . {} }}", family(&e.addr), e.port, e.addr);
        }
        (!script.is_empty()).then_some(script)
    }
}

/// Runs `script` through `nft -f -` in namespace `netns` (one transaction).
pub fn run_nft(netns: &str, script: &str) -> Result<(), SdnError> {
    let spawn = |source| SdnError::Spawn { netns: netns.to_string(), source };
    let mut child = Command::new("ip")
        .args(["netns", "exec", netns, "nft", "-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(spawn)?;
    child.stdin.take().expect("piped stdin").write_all(script.as_bytes()).map_err(spawn)?;
    let out = child.wait_with_output().map_err(spawn)?;
    if !out.status.success() {
        return Err(SdnError::Refused {
            netns: netns.to_string(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
            script: script.to_string(),
        });
    }
    Ok(())
}

/// One named counter.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Counter {
    pub packets: u64,
    pub bytes: u64,
}

/// The table's named counters in namespace `netns`.
pub fn counters(netns: &str) -> Result<BTreeMap<String, Counter>, SdnError> {
    let out = Command::new("ip")
        .args(["netns", "exec", netns, "nft", "-j", "list", "counters", "table", "bridge", TABLE])
        .output()
        .map_err(|source| SdnError::Spawn { netns: netns.to_string(), source })?;
    let text = String::from_utf8_lossy(&out.stdout);
    let json: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| SdnError::Counters(format!("{e}: {text}")))?;
    let items = json["nftables"].as_array().ok_or_else(|| SdnError::Counters(text.to_string()))?;
    Ok(items
        .iter()
        .filter_map(|i| {
            let c = i.get("counter")?;
            let counter = Counter { packets: c["packets"].as_u64()?, bytes: c["bytes"].as_u64()? };
            Some((c["name"].as_str()?.to_string(), counter))
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(port: &str, addr: &str) -> FlowEntry {
        FlowEntry { port: port.into(), addr: addr.parse().unwrap() }
    }

    #[test]
    fn a_move_keeps_the_address_registered_and_changes_its_port() {
        let mut table = FlowTable::default();
        let script = table.apply(&[FlowChange::Add(entry("fn1", "10.10.64.1"))]).unwrap();
        assert_eq!(
            script,
            "add element bridge vpc_sdn addr4 { 10.10.64.1 }\nadd element bridge vpc_sdn own4 { \"fn1\" . 10.10.64.1 }\n"
        );
        let moved = [FlowChange::Remove(entry("fn1", "10.10.64.1")), FlowChange::Add(entry("fn2", "10.10.64.1"))];
        let script = table.apply(&moved).unwrap();
        assert_eq!(
            script,
            "delete element bridge vpc_sdn own4 { \"fn1\" . 10.10.64.1 }\nadd element bridge vpc_sdn own4 { \"fn2\" . 10.10.64.1 }\n"
        );
        // Removing what is not there changes nothing, so nft is not asked to.
        assert_eq!(table.apply(&[FlowChange::Remove(entry("fn1", "10.10.64.1"))]), None);
        let script = table.apply(&[FlowChange::Remove(entry("fn2", "10.10.64.1"))]).unwrap();
        assert!(script.contains("delete element bridge vpc_sdn addr4 { 10.10.64.1 }"), "{script}");
        assert!(table.entries().is_empty());
    }

    #[test]
    fn only_the_gateway_routes_outside_the_vpc() {
        let prefixes: Vec<IpNet> = vec!["10.10.0.0/16".parse().unwrap(), "fd00:10::/64".parse().unwrap()];
        let rules = ruleset(Some("fgw"), &prefixes);
        assert!(rules.contains("iifname \"fgw\" ip saddr != { 10.10.0.0/16 } goto ip_dst"), "{rules}");
        assert!(
            rules.contains("oifname \"fgw\" ip6 daddr != { fd00:10::/64 } counter name delivered6 accept"),
            "{rules}"
        );
        assert!(rules.contains("        ip daddr != { 10.10.0.0/16 } accept\n"), "{rules}");
        for (name, _) in COUNTERS {
            assert!(rules.contains(&format!("counter {name} {{}}")), "{name}");
        }
        let closed = ruleset(None, &prefixes);
        assert!(!closed.contains("!= { 10.10.0.0/16 }"), "{closed}");
    }
}
