//! What the configuration turns on: a chained plugin after vpc-cni, runtime capabilities and old
//! result shapes, the log file.

use std::path::PathBuf;

use serde_json::{json, Value};
use vpc_lab::netns::{cni_command, run_cni, Netns};

use crate::lab::{address, cni, cni_args, cni_env, code_of, has_link, lab, link_field};

#[test]
fn a_chained_reference_plugin_runs_after_vpc_cni() {
    let lab = lab(57);
    let tuning = PathBuf::from("/usr/lib/cni/tuning");
    assert!(tuning.exists(), "needs Debian's containernetworking-plugins (tests/run.sh installs it)");
    let pod = Netns::new("vtp");
    // The conflist the runtime would run: vpc-cni, then tuning with vpc-cni's result.
    let conf = lab.conf("1.0.0");
    let (ok, result) = cni("ADD", "chain", Some(&pod.path()), &conf);
    assert!(ok, "{result}");
    let tuning_conf = json!({"cniVersion": "1.0.0", "name": "vpc", "type": "tuning",
        "sysctl": {"net.ipv4.conf.eth0.rp_filter": "2"}, "prevResult": result});
    let run_tuning = |command: &str| run_cni(cni_command(&tuning, command, "chain", &pod.path()), &tuning_conf);
    let out = run_tuning("ADD");
    assert!(out.status.success(), "tuning ADD: {}", String::from_utf8_lossy(&out.stdout));
    let chained: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(chained["ips"], result["ips"], "the chain keeps vpc-cni's addresses");
    let sysctl = pod.exec(&["cat", "/proc/sys/net/ipv4/conf/eth0/rp_filter"]);
    assert_eq!(String::from_utf8_lossy(&sysctl.stdout).trim(), "2");
    assert!(run_tuning("DEL").status.success());
    assert!(cni("DEL", "chain", Some(&pod.path()), &conf).0);
}

#[test]
fn capabilities_static_ip_mac_bandwidth_and_old_result_shapes() {
    let lab = lab(61);
    let conf = lab.conf("1.0.0");
    let pods: Vec<Netns> = (0..4).map(|_| Netns::new("vtp")).collect();
    let args = "IgnoreUnknown=1;K8S_POD_NAMESPACE=shop;K8S_POD_NAME=cart-0";
    // runtimeConfig as containerd's go-cni writes it: Go field names.
    let mut caps = conf.clone();
    caps["capabilities"] = json!({"ips": true, "mac": true, "bandwidth": true});
    caps["runtimeConfig"] = json!({
        "ips": ["10.10.61.77/24"],
        "mac": "02:42:ac:11:00:77",
        "bandwidth": {"IngressRate": 10_000_000u64, "IngressBurst": 4_294_967_295u64, "EgressRate": 20_000_000u64, "EgressBurst": 3_000_000u64},
        "portMappings": [{"HostPort": 18080, "ContainerPort": 8080, "Protocol": "tcp", "HostIP": ""}],
        "io.kubernetes.cri.pod-annotations": null,
    });
    let (ok, r) = cni_args("ADD", "cap-0", &pods[0].path(), args, &caps);
    assert!(ok, "{r}");
    assert_eq!(address(&r).to_string(), "10.10.61.77");
    assert_eq!(r["interfaces"][0]["mac"], "02:42:ac:11:00:77");
    assert_eq!(link_field(&pods[0], "eth0", "address"), "02:42:ac:11:00:77");
    let port = lab.port("cap-0:eth0").unwrap();
    assert_eq!(port["mac"], "02:42:ac:11:00:77", "{port}");
    assert_eq!(port["pod"], json!({"namespace": "shop", "name": "cart-0"}));
    assert_eq!(
        port["bandwidth"],
        json!({"ingress": {"rate_bps": 10_000_000u64, "burst_bits": 1_000_000u64},
               "egress": {"rate_bps": 20_000_000u64, "burst_bits": 3_000_000u64}}),
        "{port}"
    );
    // The same address through CNI_ARGS: taken. Outside the ranges: refused. Nothing is left.
    assert_eq!(code_of(cni_args("ADD", "cap-1", &pods[1].path(), "IP=10.10.61.77", &conf)), 103);
    assert_eq!(code_of(cni_args("ADD", "cap-1", &pods[1].path(), "IP=10.10.99.1", &conf)), 7);
    assert!(!has_link(&pods[1], "eth0") && lab.allocations().len() == 1);
    let (ok, r1) = cni_args("ADD", "cap-1", &pods[1].path(), "IP=10.10.61.78;MAC=02:00:00:00:61:78", &conf);
    assert!(
        ok && address(&r1).to_string() == "10.10.61.78" && r1["interfaces"][0]["mac"] == "02:00:00:00:61:78",
        "{r1}"
    );
    // A capability vpc-cni cannot honour, declared on its own entry, is a configuration error.
    let mut wrong = conf.clone();
    wrong["capabilities"] = json!({"portMappings": true});
    let (ok, err) = cni("ADD", "cap-2", Some(&pods[2].path()), &wrong);
    assert!(!ok && err["code"] == 7 && err["msg"].as_str().unwrap().contains("portMappings"), "{err}");
    // 0.3.1 (Multus attachments): "version" per address, no interface MTU; no CHECK.
    let mut old = conf.clone();
    old["cniVersion"] = json!("0.3.1");
    let (ok, r3) = cni("ADD", "cap-3", Some(&pods[3].path()), &old);
    assert!(ok, "{r3}");
    assert_eq!((r3["cniVersion"].as_str(), r3["ips"][0]["version"].as_str()), (Some("0.3.1"), Some("4")));
    assert!(r3["interfaces"][0].get("mtu").is_none(), "{r3}");
    let mut check = old.clone();
    check["prevResult"] = r3;
    assert_eq!(code_of(cni("CHECK", "cap-3", Some(&pods[3].path()), &check)), 1);
    assert!(cni("DEL", "cap-3", Some(&pods[3].path()), &old).0);
    for (i, ns) in pods.iter().enumerate().take(2) {
        assert!(cni("DEL", &format!("cap-{i}"), Some(&ns.path()), &conf).0);
    }
    assert!(lab.allocations().is_empty());
}

#[test]
fn every_verb_is_logged_the_log_rotates_and_check_tolerates_an_mtu_change() {
    let lab = lab(62);
    let mut conf = lab.conf("1.1.0");
    let log = lab.dir.0.join("logs/vpc-cni.log");
    conf["logFile"] = json!(log);
    let pod = Netns::new("vtp");
    let (ok, r) = cni("ADD", "logged", Some(&pod.path()), &conf);
    assert!(ok, "{r}");
    // A chained plugin (tuning) changing the MTU and MAC does not fail CHECK.
    pod.ip(&["link", "set", "eth0", "mtu", "1400", "address", "02:00:00:00:00:99"]);
    let mut checked = conf.clone();
    checked["prevResult"] = r.clone();
    let (ok, out) = cni("CHECK", "logged", Some(&pod.path()), &checked);
    assert!(ok, "CHECK after an MTU change: {out}");
    assert!(cni("DEL", "logged", Some(&pod.path()), &conf).0);
    let (ok, _) = cni("CHECK", "logged", Some(&pod.path()), &checked);
    assert!(!ok, "CHECK after DEL fails");
    let lines: Vec<Value> =
        std::fs::read_to_string(&log).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let commands: Vec<&str> = lines.iter().map(|l| l["command"].as_str().unwrap()).collect();
    assert_eq!(commands, ["ADD", "CHECK", "DEL", "CHECK"]);
    for line in &lines {
        assert_eq!((line["podNamespace"].as_str(), line["podName"].as_str()), (Some("default"), Some("web-0")));
        assert_eq!(line["containerID"], "logged");
        assert!(line["durationMs"].as_f64().is_some() && line["time"].is_string());
    }
    assert_eq!(lines[0]["address"], r["ips"][0]["address"].as_str().unwrap().trim_end_matches("/32"));
    assert!(lines[0]["ok"] == true && lines[3]["ok"] == false && lines[3]["code"].is_u64(), "{:?}", lines[3]);
    // Bounded: past logMaxBytes the file moves to .1.
    conf["logMaxBytes"] = json!(1000);
    for _ in 0..12 {
        cni_env("STATUS", &[], None, &conf);
    }
    let size = std::fs::metadata(&log).unwrap().len();
    let rotated = lab.dir.0.join("logs/vpc-cni.log.1");
    assert!(size <= 1000 && rotated.exists() && std::fs::metadata(&rotated).unwrap().len() <= 1000, "{size}");
    // An unwritable log never fails the verb.
    conf["logFile"] = json!("/proc/vpc-cni-cannot-log-here.log");
    assert!(cni_env("STATUS", &[], None, &conf).0);
}
