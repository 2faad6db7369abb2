//! ADD, CHECK and DEL over a pod's life: repeated, concurrent, after its namespace is gone, and
//! with the plugin killed mid-ADD.

use std::io::Write;
use std::net::Ipv4Addr;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use serde_json::Value;
use vpc_lab::netns::{cni_command, Netns};

use crate::lab::{address, cni, lab, link_gone_soon, CNI};

#[test]
fn add_check_del_cycles_and_a_second_del() {
    let lab = lab(51);
    let (a, b) = (Netns::new("vtp"), Netns::new("vtp"));
    let conf = lab.conf("1.1.0");
    let (ok, ra) = cni("ADD", "ctr-a", Some(&a.path()), &conf);
    assert!(ok, "{ra}");
    let (ok, rb) = cni("ADD", "ctr-b", Some(&b.path()), &conf);
    assert!(ok, "{rb}");
    assert_eq!(ra["cniVersion"], "1.1.0");
    assert_eq!(ra["interfaces"][0]["sandbox"], a.path().display().to_string());
    assert_eq!(ra["routes"][0]["gw"], "169.254.1.1");
    assert_eq!(ra["dns"]["nameservers"][0], "10.96.0.10");
    let (ip_a, ip_b) = (address(&ra), address(&rb));
    assert_ne!(ip_a, ip_b);

    // The pods can talk, to each other and to the node.
    assert!(a.exec(&["ping", "-c", "2", "-i", "0.2", "-W", "1", &ip_b.to_string()]).status.success(), "pod to pod");
    assert!(a.exec(&["ping", "-c", "2", "-i", "0.2", "-W", "1", "10.10.0.5"]).status.success(), "pod to node");

    let mut checked = conf.clone();
    checked["prevResult"] = ra.clone();
    assert!(cni("CHECK", "ctr-a", Some(&a.path()), &checked).0, "CHECK after ADD");
    // CHECK notices a broken pod: its default route removed.
    a.ip(&["route", "del", "default"]);
    let (ok, err) = cni("CHECK", "ctr-a", Some(&a.path()), &checked);
    assert!(!ok && err["code"].as_u64().unwrap() >= 100, "{err}");

    assert!(cni("DEL", "ctr-a", Some(&a.path()), &conf).0);
    assert!(link_gone_soon(&a, "eth0"), "DEL removed the TAP");
    assert!(lab.daemon.ctl_json(&["ports"]).as_array().unwrap().iter().all(|p| p["name"] != "ctr-a:eth0"));
    assert!(!lab.ipam_state()["allocations"].as_object().unwrap().contains_key(&ip_a.to_string()));
    let (ok, out) = cni("DEL", "ctr-a", Some(&a.path()), &conf);
    assert!(ok && out.is_null(), "a second DEL succeeds quietly: {out}");
    // The released address is held back; a new pod gets another one.
    let c = Netns::new("vtp");
    let (ok, rc) = cni("ADD", "ctr-c", Some(&c.path()), &conf);
    assert!(ok && address(&rc) != ip_a, "{rc}");
    for (id, ns) in [("ctr-b", &b), ("ctr-c", &c)] {
        assert!(cni("DEL", id, Some(&ns.path()), &conf).0);
    }
    let _ = &lab.node;
}

#[test]
fn del_after_the_namespace_is_gone_still_releases_port_and_address() {
    let lab = lab(52);
    let conf = lab.conf("1.0.0");
    let pod = Netns::new("vtp");
    let path = pod.path();
    let (ok, r) = cni("ADD", "ctr-gone", Some(&path), &conf);
    assert!(ok, "{r}");
    drop(pod); // the runtime deleted the sandbox first
    assert!(cni("DEL", "ctr-gone", Some(&path), &conf).0, "DEL with a stale netns path");
    assert!(cni("DEL", "ctr-gone", None, &conf).0, "DEL without CNI_NETNS");
    assert!(lab.daemon.ctl_json(&["ports"]).as_array().unwrap().len() == 1, "only the host port is left");
    assert!(lab.ipam_state()["allocations"].as_object().unwrap().is_empty());
}

#[test]
fn fifty_concurrent_adds_give_fifty_distinct_working_addresses() {
    let lab = lab(53);
    let conf = lab.conf("1.1.0");
    let pods: Vec<Netns> = (0..50).map(|_| Netns::new("vtp")).collect();
    let results: Vec<(bool, Value)> = std::thread::scope(|s| {
        let handles: Vec<_> = pods
            .iter()
            .enumerate()
            .map(|(i, ns)| {
                let conf = &conf;
                s.spawn(move || cni("ADD", &format!("ctr-{i}"), Some(&ns.path()), conf))
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let mut addresses: Vec<Ipv4Addr> = results
        .iter()
        .map(|(ok, r)| {
            assert!(ok, "{r}");
            address(r)
        })
        .collect();
    addresses.sort();
    addresses.dedup();
    assert_eq!(addresses.len(), 50);
    // Every one works: each pod pings the next.
    let failures: Vec<String> = std::thread::scope(|s| {
        let handles: Vec<_> = pods
            .iter()
            .enumerate()
            .map(|(i, ns)| {
                let to = address(&results[(i + 1) % 50].1).to_string();
                s.spawn(move || (ns.exec(&["ping", "-c", "1", "-W", "2", &to]).status.success(), to))
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).filter(|(ok, _)| !ok).map(|(_, to)| to).collect()
    });
    assert!(failures.is_empty(), "unreachable: {failures:?}");
    for (i, ns) in pods.iter().enumerate() {
        assert!(cni("DEL", &format!("ctr-{i}"), Some(&ns.path()), &conf).0);
    }
    assert!(lab.ipam_state()["allocations"].as_object().unwrap().is_empty());
}

#[test]
fn kill_9_during_add_leaves_nothing_once_del_has_run() {
    let lab = lab(54);
    let conf = lab.conf("1.1.0");
    for (i, delay_ms) in [0u64, 2, 5, 10, 20, 40].into_iter().enumerate() {
        let pod = Netns::new("vtp");
        let id = format!("ctr-kill-{i}");
        let mut child = cni_command(Path::new(CNI), "ADD", &id, &pod.path()).stdout(Stdio::null()).spawn().unwrap();
        child.stdin.take().unwrap().write_all(conf.to_string().as_bytes()).unwrap();
        std::thread::sleep(Duration::from_millis(delay_ms));
        let _ = child.kill();
        let _ = child.wait();
        assert!(cni("DEL", &id, Some(&pod.path()), &conf).0, "DEL after a killed ADD ({delay_ms} ms)");
        assert!(link_gone_soon(&pod, "eth0"), "TAP left behind ({delay_ms} ms)");
        let ports = lab.daemon.ctl_json(&["ports"]);
        assert!(
            ports.as_array().unwrap().iter().all(|p| p["name"] != format!("{id}:eth0")),
            "port left behind: {ports}"
        );
        assert!(
            lab.ipam_state()["allocations"].as_object().is_none_or(|a| a.is_empty()),
            "address left behind ({delay_ms} ms)"
        );
    }
}
