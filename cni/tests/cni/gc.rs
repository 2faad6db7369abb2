//! GC and DEL cleaning up: attachments not in the valid list, both attachment keys, and
//! vswitchd down.

use std::time::Duration;

use serde_json::{json, Value};
use vpc_lab::netns::Netns;

use crate::lab::{cni, cni_env, code_of, has_link, lab, link_gone_soon};

/// Pods gc-0, gc-1 and gc-2, each in its own namespace, added with `conf`.
fn three_pods_added(conf: &Value) -> Vec<Netns> {
    let pods: Vec<Netns> = (0..3).map(|_| Netns::new("vtp")).collect();
    for (i, ns) in pods.iter().enumerate() {
        assert!(cni("ADD", &format!("gc-{i}"), Some(&ns.path()), conf).0);
    }
    pods
}

#[test]
fn gc_removes_every_attachment_not_in_the_valid_list() {
    let lab = lab(56);
    let conf = lab.conf("1.1.0");
    let pods = three_pods_added(&conf);
    let mut gc = conf.clone();
    gc["cni.dev/valid-attachments"] = json!([{"containerID": "gc-1", "ifname": "eth0"}]);
    assert!(cni_env("GC", &[], None, &gc).0);
    let allocations = lab.ipam_state()["allocations"].clone();
    assert_eq!(allocations.as_object().unwrap().len(), 1, "{allocations}");
    assert!(link_gone_soon(&pods[0], "eth0") && has_link(&pods[1], "eth0") && link_gone_soon(&pods[2], "eth0"));
    let names: Vec<String> = lab
        .daemon
        .ctl_json(&["ports"])
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(names, ["vsw0", "gc-1:eth0"]);
    // The other spelling of the key works too.
    let mut gc = conf.clone();
    gc["cni.dev/attachments"] = json!([]);
    assert!(cni_env("GC", &[], None, &gc).0);
    assert!(lab.ipam_state()["allocations"].as_object().unwrap().is_empty());
}

#[test]
fn gc_with_both_attachment_keys_keeps_their_union() {
    let lab = lab(58);
    let conf = lab.conf("1.1.0");
    let pods = three_pods_added(&conf);
    // libcni 1.2.3+ sends both keys.
    let mut gc = conf.clone();
    gc["cni.dev/valid-attachments"] = json!([{"containerID": "gc-0", "ifname": "eth0"}]);
    gc["cni.dev/attachments"] = json!([{"containerID": "gc-1", "ifname": "eth0"}]);
    let (ok, out) = cni_env("GC", &[], None, &gc);
    assert!(ok, "{out}");
    assert_eq!(lab.allocations().len(), 2);
    assert!(has_link(&pods[0], "eth0") && has_link(&pods[1], "eth0") && link_gone_soon(&pods[2], "eth0"));
    assert!(lab.port("gc-2:eth0").is_none() && lab.port("gc-0:eth0").is_some() && lab.port("gc-1:eth0").is_some());
    // GC is a 1.1.0 verb.
    let mut old = gc.clone();
    old["cniVersion"] = json!("1.0.0");
    assert_eq!(code_of(cni_env("GC", &[], None, &old)), 1);
    assert_eq!(code_of(cni_env("STATUS", &[], None, &old)), 1);
    assert_eq!(lab.allocations().len(), 2, "a refused GC removed nothing");
    for (i, ns) in pods.iter().enumerate().take(2) {
        assert!(cni("DEL", &format!("gc-{i}"), Some(&ns.path()), &conf).0);
    }
}

#[test]
fn del_and_gc_with_vswitchd_down_remove_taps_and_release_addresses() {
    let mut lab = lab(59);
    let conf = lab.conf("1.1.0");
    let pods: Vec<Netns> = (0..3).map(|_| Netns::new("vtp")).collect();
    for (i, ns) in pods.iter().enumerate() {
        assert!(cni("ADD", &format!("down-{i}"), Some(&ns.path()), &conf).0);
    }
    lab.daemon.kill9();
    // DEL never blocks the pod's removal.
    let (ok, out) = cni("DEL", "down-0", Some(&pods[0].path()), &conf);
    assert!(ok && out.is_null(), "DEL with vswitchd down: {out}");
    assert!(!has_link(&pods[0], "eth0"), "the plugin removed the TAP itself");
    assert_eq!(lab.allocations().len(), 2);
    assert!(cni("DEL", "down-0", Some(&pods[0].path()), &conf).0, "and stays idempotent");
    let log = std::fs::read_to_string(lab.dir.0.join("vpc-cni.log")).unwrap();
    assert!(log.lines().any(|l| l.contains("\"command\":\"DEL\"") && l.contains("warnings")), "{log}");
    // STATUS: not available, existing pods may have limited connectivity.
    assert_eq!(code_of(cni_env("STATUS", &[], None, &conf)), 51);
    // GC keeps going: the stale attachment's TAP (its sandbox is in the IPAM state) and address
    // go, and the error says vswitchd could not be reached.
    let mut gc = conf.clone();
    gc["cni.dev/valid-attachments"] = json!([{"containerID": "down-1", "ifname": "eth0"}]);
    let (ok, err) = cni_env("GC", &[], None, &gc);
    assert!(!ok && err["code"] == 11 && err["details"].as_str().unwrap().contains("unreachable"), "{err}");
    assert!(!has_link(&pods[2], "eth0") && has_link(&pods[1], "eth0"));
    assert_eq!(lab.allocations().len(), 1);
    // A restarted vswitchd drops the ports whose TAP is gone.
    let node = &lab.node;
    lab.daemon.spawn(node, 1);
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while lab.port("down-0:eth0").is_some() || lab.port("down-2:eth0").is_some() {
        assert!(std::time::Instant::now() < deadline, "stale ports kept: {}", lab.daemon.ctl_json(&["ports"]));
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(cni("DEL", "down-1", Some(&pods[1].path()), &conf).0);
    assert!(lab.allocations().is_empty());
}
