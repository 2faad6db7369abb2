//! IPv6: off on an IPv4 pod's interface; dual-stack and IPv6-only pods ready when ADD returns;
//! settling (DAD) that fails or never ends.

use std::net::Ipv6Addr;
use std::time::Duration;

use serde_json::{json, Value};
use vpc_lab::netns::{require_root, Netns};

use crate::lab::{address, cni, cni_env, lab, link_field, link_gone_soon, Lab};

#[test]
fn an_idle_ipv4_pod_sends_nothing_ipv6_is_off_on_its_interface() {
    let lab = lab(70);
    let conf = lab.conf("1.0.0");
    let pod = Netns::new("vtp");
    // The host port vsw0 is an interface of the node, whose own IPv6 chatter (router
    // solicitations, MLD) also ends up as unsupported_ethertype; silence it here so the counter
    // measures the pod.
    lab.node.exec(&["sysctl", "-qw", "net.ipv6.conf.vsw0.disable_ipv6=1"]);
    std::thread::sleep(Duration::from_millis(200));
    let before = lab.daemon.drops("unsupported_ethertype");
    let (ok, r) = cni("ADD", "ctr-quiet", Some(&pod.path()), &conf);
    assert!(ok, "{r}");
    let out = pod.exec(&["cat", "/proc/sys/net/ipv6/conf/eth0/disable_ipv6"]);
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "1", "disable_ipv6 on the pod's eth0");
    // With IPv6 on, the pod's kernel sends MLD reports and router solicitations once eth0 is up,
    // which vswitchd drops as unsupported_ethertype.
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(lab.daemon.port_counters("ctr-quiet:eth0")["rx_packets"], 0, "the idle pod sent frames");
    assert_eq!(lab.daemon.drops("unsupported_ethertype"), before, "non-IPv4 frames while idle");
    assert!(cni("DEL", "ctr-quiet", Some(&pod.path()), &conf).0);
}

impl Lab {
    /// `conf` with an IPv6 range of this lab's own next to the IPv4 one (`keep_ipv4`) or instead.
    fn conf_ipv6(&self, version: &str, keep_ipv4: bool) -> Value {
        let mut conf = self.conf(version);
        let ranges = conf["ipam"]["ranges"].as_array_mut().unwrap();
        if !keep_ipv4 {
            ranges.clear();
        }
        let (start, end) = (format!("fd00:10:{}::10", self.subnet), format!("fd00:10:{}::ffff:ffff", self.subnet));
        ranges.push(json!({"rangeStart": start, "rangeEnd": end}));
        conf
    }
}

/// `ip -j` output of a command run in `ns`.
fn ip_json(ns: &Netns, args: &[&str]) -> Vec<Value> {
    let mut full = vec!["ip", "-j"];
    full.extend_from_slice(args);
    let out = ns.exec(&full);
    assert!(out.status.success(), "{full:?}: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice::<Value>(&out.stdout).unwrap().as_array().cloned().unwrap_or_default()
}

fn sysctl(ns: &Netns, key: &str) -> String {
    let out = ns.exec(&["cat", &format!("/proc/sys/net/ipv6/conf/eth0/{key}")]);
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// The IPv6 address in an ADD result.
fn address6(result: &Value) -> Ipv6Addr {
    let entry = result["ips"].as_array().unwrap().iter().find(|e| e["address"].as_str().unwrap().contains(':'));
    entry.unwrap()["address"].as_str().unwrap().trim_end_matches("/128").parse().unwrap()
}

/// The IPv6 gateway of the lab's configuration: the default gateway MAC's link-local address.
fn gateway6() -> String {
    vswitch_api::MacAddr::local_from([169, 254, 1, 1]).link_local().to_string()
}

/// What ADD promises about a pod's IPv6 once it returns: its /128 and its EUI-64 link-local
/// address both past DAD (not tentative), router advertisements, SLAAC and redirects off, and
/// the default route via the gateway MAC's link-local address, which has a permanent neighbour
/// entry; the result and vswitchd's port say the same.
fn assert_ipv6_ready(lab: &Lab, pod: &Netns, container: &str, result: &Value) {
    let ip6 = address6(result);
    let mac: vswitch_api::MacAddr = result["interfaces"][0]["mac"].as_str().unwrap().parse().unwrap();
    let addresses = ip_json(pod, &["-6", "addr", "show", "dev", "eth0"]);
    let info = addresses[0]["addr_info"].as_array().unwrap();
    for (local, prefix) in [(ip6.to_string(), 128), (mac.link_local().to_string(), 64)] {
        let entry = info.iter().find(|a| a["local"] == local).unwrap_or_else(|| panic!("no {local}: {info:?}"));
        assert_eq!(entry["prefixlen"], prefix, "{entry}");
        assert!(entry.get("tentative").is_none() && entry.get("dadfailed").is_none(), "not usable yet: {entry}");
    }
    for (key, value) in [("accept_ra", "0"), ("autoconf", "0"), ("accept_redirects", "0"), ("addr_gen_mode", "0")] {
        assert_eq!(sysctl(pod, key), value, "net.ipv6.conf.eth0.{key}");
    }
    let routes = ip_json(pod, &["-6", "route", "show", "default"]);
    assert_eq!(routes.len(), 1, "{routes:?}");
    assert_eq!((routes[0]["gateway"].as_str(), routes[0]["dev"].as_str()), (Some(gateway6().as_str()), Some("eth0")));
    let neighbours = ip_json(pod, &["-6", "neigh", "show", "dev", "eth0"]);
    let gateway = neighbours.iter().find(|n| n["dst"] == gateway6().as_str()).expect("gateway neighbour");
    assert_eq!((gateway["lladdr"].as_str(), &gateway["state"]), (Some("02:00:a9:fe:01:01"), &json!(["PERMANENT"])));
    assert!(result["routes"].as_array().unwrap().contains(&json!({"dst": "::/0", "gw": gateway6()})), "{result}");
    let port = lab.port(&format!("{container}:eth0")).unwrap();
    assert_eq!(port["ipv6"], ip6.to_string(), "vswitchd's port: {port}");
}

#[test]
fn a_dual_stack_pod_gets_both_families_ready_when_add_returns_and_check_gc_del_cover_both() {
    let lab = lab(63);
    let conf = lab.conf_ipv6("1.1.0", true);
    let (a, b) = (Netns::new("vtp"), Netns::new("vtp"));
    let (ok, ra) = cni("ADD", "dual-a", Some(&a.path()), &conf);
    assert!(ok, "{ra}");
    assert_eq!(ra["ips"].as_array().unwrap().len(), 2, "{ra}");
    assert_eq!(ra["ips"][0]["gateway"], "169.254.1.1");
    assert_eq!(
        ra["ips"][1],
        json!({"address": format!("{}/128", address6(&ra)), "gateway": gateway6(), "interface": 0})
    );
    assert_eq!(address6(&ra).to_string(), "fd00:10:63::10");
    assert_ipv6_ready(&lab, &a, "dual-a", &ra);
    // IPv4 works as before, and the port has both addresses.
    let ip4 = address(&ra).to_string();
    assert_eq!(lab.port("dual-a:eth0").unwrap()["ip"], ip4);
    assert!(a.exec(&["ping", "-c", "2", "-i", "0.2", "-W", "1", "10.10.0.5"]).status.success(), "pod to node");

    let mut checked = conf.clone();
    checked["prevResult"] = ra.clone();
    let check = || cni("CHECK", "dual-a", Some(&a.path()), &checked);
    assert!(check().0, "CHECK after ADD: {}", check().1);
    // CHECK notices the IPv6 default route gone ...
    a.ip(&["-6", "route", "del", "default"]);
    let (ok, err) = check();
    assert!(!ok && err["code"].as_u64().unwrap() >= 100 && err["details"].as_str().unwrap().contains("::"), "{err}");
    a.ip(&["-6", "route", "add", "default", "via", &gateway6(), "dev", "eth0"]);
    assert!(check().0);
    // ... the gateway's neighbour entry pointing elsewhere ...
    let neigh =
        |mac: &str| a.ip(&["-6", "neigh", "replace", &gateway6(), "lladdr", mac, "dev", "eth0", "nud", "permanent"]);
    neigh("02:00:00:00:00:01");
    let (ok, err) = check();
    assert!(!ok && err["details"].as_str().unwrap().contains("neighbour"), "{err}");
    neigh("02:00:a9:fe:01:01");
    assert!(check().0);
    // ... and router advertisements accepted again.
    a.exec(&["sysctl", "-qw", "net.ipv6.conf.eth0.accept_ra=1"]);
    let (ok, err) = check();
    assert!(!ok && err["details"].as_str().unwrap().contains("accept_ra"), "{err}");

    // GC releases both families of a stale attachment.
    let (ok, rb) = cni("ADD", "dual-b", Some(&b.path()), &conf);
    assert!(ok, "{rb}");
    assert_eq!(lab.allocations().len(), 4);
    let mut gc = conf.clone();
    gc["cni.dev/valid-attachments"] = json!([{"containerID": "dual-a", "ifname": "eth0"}]);
    assert!(cni_env("GC", &[], None, &gc).0);
    let mut left: Vec<String> = lab.allocations().keys().cloned().collect();
    left.sort();
    assert_eq!(left, [ip4.clone(), address6(&ra).to_string()]);
    assert!(link_gone_soon(&b, "eth0") && lab.port("dual-b:eth0").is_none());

    // DEL releases both.
    assert!(cni("DEL", "dual-a", Some(&a.path()), &conf).0);
    assert!(link_gone_soon(&a, "eth0") && lab.port("dual-a:eth0").is_none());
    assert!(lab.allocations().is_empty());
    let released = lab.ipam_state()["released"].clone();
    assert!(released.get(&ip4).is_some() && released.get(address6(&ra).to_string()).is_some(), "{released}");
}

#[test]
fn an_ipv6_only_pod_has_no_ipv4_and_a_mac_from_its_ipv6_address() {
    let lab = lab(64);
    let conf = lab.conf_ipv6("1.0.0", false);
    let pod = Netns::new("vtp");
    let (ok, r) = cni("ADD", "v6-only", Some(&pod.path()), &conf);
    assert!(ok, "{r}");
    assert_eq!(r["ips"].as_array().unwrap().len(), 1, "{r}");
    assert_eq!(r["routes"], json!([{"dst": "::/0", "gw": gateway6()}]));
    let ip6 = address6(&r);
    let tail = &ip6.octets()[12..];
    let mac = format!("02:00:{:02x}:{:02x}:{:02x}:{:02x}", tail[0], tail[1], tail[2], tail[3]);
    assert_eq!(
        (r["interfaces"][0]["mac"].as_str(), link_field(&pod, "eth0", "address").as_str()),
        (Some(&*mac), Some(&*mac))
    );
    assert_ipv6_ready(&lab, &pod, "v6-only", &r);
    assert!(ip_json(&pod, &["-4", "addr", "show", "dev", "eth0"]).iter().all(|l| l["addr_info"] == json!([])));
    assert!(ip_json(&pod, &["-4", "route", "show"]).is_empty(), "no IPv4 routes");
    assert!(ip_json(&pod, &["-4", "neigh", "show", "dev", "eth0"]).is_empty(), "no IPv4 neighbours");
    assert!(lab.port("v6-only:eth0").unwrap().get("ip").is_none());
    let mut checked = conf.clone();
    checked["prevResult"] = r.clone();
    let (ok, out) = cni("CHECK", "v6-only", Some(&pod.path()), &checked);
    assert!(ok, "{out}");
    assert!(cni("DEL", "v6-only", Some(&pod.path()), &conf).0);
    assert!(link_gone_soon(&pod, "eth0") && lab.allocations().is_empty());
}

/// `podnet::settle` on its own, over a veth pair: DAD failing (the other end has the address
/// already) is an error at once, naming it; an address that stays tentative (no carrier) is one
/// after the timeout; a pair that is up settles in about one DAD round.
#[test]
fn settle_reports_dad_failure_and_gives_up_on_a_link_that_never_settles() {
    require_root();
    let (a, b) = (Netns::new("vtd"), Netns::new("vtd"));
    a.ip(&["link", "add", "eth0", "type", "veth", "peer", "name", "eth1", "netns", &b.name]);
    b.ip(&["link", "set", "eth1", "up"]);
    b.ip(&["addr", "add", "fd00:99::1/128", "dev", "eth1", "nodad"]);
    for ns in [&a, &b] {
        ns.exec(&["sysctl", "-qw", "net.ipv6.conf.all.router_solicitation_delay=0"]);
    }
    a.ip(&["link", "set", "eth0", "up"]);
    let wanted: Ipv6Addr = "fd00:99::2".parse().unwrap();
    a.ip(&["addr", "add", "fd00:99::2/128", "dev", "eth0"]);
    let started = std::time::Instant::now();
    cni::podnet::settle(&a.path(), "eth0", &[wanted], Duration::from_secs(10)).unwrap();
    assert!(started.elapsed() < Duration::from_secs(5), "{:?}", started.elapsed());

    a.ip(&["addr", "add", "fd00:99::1/128", "dev", "eth0"]);
    let started = std::time::Instant::now();
    let err = cni::podnet::settle(&a.path(), "eth0", &["fd00:99::1".parse().unwrap()], Duration::from_secs(10))
        .unwrap_err()
        .to_string();
    assert!(err.contains("duplicate address detection failed for fd00:99::1"), "{err}");
    assert!(started.elapsed() < Duration::from_secs(5), "DAD failure is reported at once");

    b.ip(&["link", "set", "eth1", "down"]); // no carrier on eth0: DAD never runs
    a.ip(&["addr", "add", "fd00:99::3/128", "dev", "eth0"]);
    let err = cni::podnet::settle(&a.path(), "eth0", &["fd00:99::3".parse().unwrap()], Duration::from_secs(1))
        .unwrap_err()
        .to_string();
    assert!(err.contains("not usable after 1 s") && err.contains("fd00:99::3 (tentative)"), "{err}");
}
