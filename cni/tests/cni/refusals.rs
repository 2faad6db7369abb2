//! Bad configuration and environments: refused with the spec's error codes before anything
//! changes.

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};

use serde_json::{json, Value};
use vpc_lab::netns::Netns;

use crate::lab::{address, cni, cni_env, code_of, has_link, lab, CNI};

#[test]
fn bad_input_gets_the_specs_error_codes() {
    let lab = lab(55);
    let conf = lab.conf("1.1.0");
    let pod = Netns::new("vtp");
    let code = |(ok, v): (bool, Value)| {
        assert!(!ok, "should fail: {v}");
        v["code"].as_u64().unwrap()
    };
    // VERSION.
    let (ok, v) = cni_env("VERSION", &[], None, &json!({"cniVersion": "1.0.0"}));
    assert!(ok && v["supportedVersions"] == json!(["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"]), "{v}");
    // Environment.
    assert_eq!(code(cni_env("ADD", &[("CNI_IFNAME", "eth0")], Some(&pod.path()), &conf)), 4, "no container id");
    assert_eq!(code(cni_env("FROB", &[], None, &conf)), 4);
    let (ok, v) = {
        let mut cmd = Command::new(CNI);
        cmd.env_clear()
            .env("CNI_COMMAND", "ADD")
            .env("CNI_CONTAINERID", "x")
            .env("CNI_IFNAME", "eth0")
            .env("CNI_NETNS", pod.path())
            .env("CNI_PATH", "/x")
            .env("CNI_ARGS", "FOO=bar");
        let out = cmd.stdin(Stdio::null()).output().unwrap();
        (out.status.success(), serde_json::from_slice::<Value>(&out.stdout).unwrap())
    };
    assert!(!ok && v["code"] == 4, "unknown CNI_ARGS key: {v}");
    // Configuration.
    let mut cmd = Command::new(CNI);
    let out = cmd
        .env_clear()
        .env("CNI_COMMAND", "ADD")
        .env("CNI_CONTAINERID", "x")
        .env("CNI_IFNAME", "eth0")
        .env("CNI_NETNS", pod.path())
        .env("CNI_PATH", "/x")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .and_then(|mut c| {
            c.stdin.take().unwrap().write_all(b"{not json")?;
            c.wait_with_output()
        })
        .unwrap();
    assert_eq!(serde_json::from_slice::<Value>(&out.stdout).unwrap()["code"], 6);
    let mut old = conf.clone();
    old["cniVersion"] = json!("0.2.0");
    assert_eq!(code(cni("ADD", "x", Some(&pod.path()), &old)), 1);
    let mut wrong = conf.clone();
    wrong["ipam"]["ranges"] = json!([]);
    assert_eq!(code(cni("ADD", "x", Some(&pod.path()), &wrong)), 7);
    // A namespace that does not exist.
    assert_eq!(code(cni("ADD", "x", Some(Path::new("/run/netns/does-not-exist")), &conf)), 3);
    // vswitchd unreachable: try again later, and nothing was allocated or created.
    let mut down = conf.clone();
    down["vswitchSocket"] = json!(lab.dir.0.join("nobody-here.sock"));
    assert_eq!(code(cni("ADD", "x", Some(&pod.path()), &down)), 11);
    assert!(!has_link(&pod, "eth0"));
    assert!(lab.ipam_state()["allocations"].as_object().is_none_or(|a| a.is_empty()));
    // STATUS: fine when up, 51 when vswitchd is down, 50 when out of addresses.
    assert!(cni_env("STATUS", &[], None, &conf).0);
    assert_eq!(code(cni_env("STATUS", &[], None, &down)), 51);
    let mut tiny = conf.clone();
    tiny["ipam"]["ranges"] = json!([{"rangeStart": "10.10.55.200", "rangeEnd": "10.10.55.200"}]);
    tiny["name"] = json!("tiny");
    assert!(cni("ADD", "only", Some(&pod.path()), &tiny).0);
    assert_eq!(code(cni_env("STATUS", &[], None, &tiny)), 50);
    let other = Netns::new("vtp");
    assert_eq!(code(cni("ADD", "second", Some(&other.path()), &tiny)), 100, "pool exhausted");
    assert!(!has_link(&other, "eth0"), "the failed ADD was rolled back");
    assert!(cni("DEL", "only", Some(&pod.path()), &tiny).0);
}

#[test]
fn environment_edges_are_refused_before_anything_happens() {
    let lab = lab(60);
    let conf = lab.conf("1.1.0");
    let pod = Netns::new("vtp");
    let run = |id: &str, ifname: &str| {
        cni_env("ADD", &[("CNI_CONTAINERID", id), ("CNI_IFNAME", ifname)], Some(&pod.path()), &conf)
    };
    for (id, ifname) in [
        ("_x", "eth0"),
        ("-x", "eth0"),
        ("x/y", "eth0"),
        ("x", "a-name-too-long!"),
        ("x", "eth:0"),
        ("x", "eth 0"),
        ("x", ".."),
        ("x", "a/b"),
    ] {
        assert_eq!(code_of(run(id, ifname)), 4, "{id:?} {ifname:?}");
    }
    assert!(!has_link(&pod, "eth0") && lab.allocations().is_empty());
    // The node's own namespace is never a pod's.
    // (/proc/1/ns/net only where this sandbox lets root stat it.)
    for node in ["/proc/self/ns/net", "/proc/1/ns/net"].into_iter().filter(|p| std::fs::metadata(p).is_ok()) {
        assert_eq!(code_of(cni("ADD", "x", Some(Path::new(node)), &conf)), 4, "ADD in {node}");
        assert_eq!(code_of(cni("DEL", "x", Some(Path::new(node)), &conf)), 4, "DEL in {node}");
    }
    assert!(lab.allocations().is_empty());
    // An interface of that name already in the namespace: refused, and left alone.
    pod.ip(&["tuntap", "add", "dev", "eth0", "mode", "tun"]); // not ours: a TUN, not a TAP
    let (ok, err) = cni("ADD", "taken", Some(&pod.path()), &conf);
    assert!(!ok && err["code"] == 101 && err["msg"].as_str().unwrap().contains("interface"), "{err}");
    assert!(has_link(&pod, "eth0"), "the existing interface was not deleted");
    assert!(lab.allocations().is_empty() && lab.port("taken:eth0").is_none());
    // A second ADD for a running pod is refused without disturbing it.
    let other = Netns::new("vtp");
    let (ok, first) = cni("ADD", "twice", Some(&other.path()), &conf);
    assert!(ok, "{first}");
    assert_eq!(code_of(cni("ADD", "twice", Some(&other.path()), &conf)), 101);
    assert!(has_link(&other, "eth0") && lab.port("twice:eth0").is_some());
    assert!(lab.allocations().contains_key(&address(&first).to_string()), "the pod kept its address");
    let mut checked = conf.clone();
    checked["prevResult"] = first;
    assert!(cni("CHECK", "twice", Some(&other.path()), &checked).0);
    assert!(cni("DEL", "twice", Some(&other.path()), &conf).0);
}
