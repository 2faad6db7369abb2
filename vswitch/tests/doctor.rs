//! `vswitchctl doctor` on temporary files: a conflist and a vswitchd.toml that agree and that
//! disagree, an address pool running low, a dual-stack conflist, no daemon (FAIL) and a running one
//! (ok).

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

use serde_json::{json, Value};
use vpc_lab::netns::{require_root, Binaries, Daemon, Netns, TempDir};

const CTL: &str = env!("CARGO_BIN_EXE_vswitchctl");

/// Runs doctor --json; returns (exit code, check name -> (status, detail)).
fn doctor(args: &[&str]) -> (i32, BTreeMap<String, (String, String)>) {
    let out = Command::new(CTL).arg("--json").arg("doctor").args(args).output().unwrap();
    let list: Value =
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stdout)));
    let checks = list
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            let s = |k: &str| c[k].as_str().unwrap().to_string();
            (s("check"), (s("status"), s("detail")))
        })
        .collect();
    (out.status.code().unwrap(), checks)
}

fn conflist(socket: &Path, data_dir: &Path, extra: Value) -> Value {
    let mut entry = json!({
        "type": "vpc-cni",
        "vswitchSocket": socket,
        "gateway": "169.254.1.1",
        "mtu": 1500,
        "ipam": {"ranges": [{"rangeStart": "10.10.40.1", "rangeEnd": "10.10.40.20"}], "dataDir": data_dir},
    });
    for (k, v) in extra.as_object().unwrap() {
        entry[k] = v.clone();
    }
    json!({"cniVersion": "1.0.0", "name": "vpc", "plugins": [entry, {"type": "portmap", "capabilities": {"portMappings": true}}]})
}

fn write(dir: &Path, name: &str, text: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path.to_str().unwrap().to_string()
}

fn status<'a>(checks: &'a BTreeMap<String, (String, String)>, name: &str) -> &'a str {
    &checks.get(name).unwrap_or_else(|| panic!("no check {name} in {checks:?}")).0
}

#[test]
fn agreeing_files_pass_and_no_daemon_fails_the_socket_check() {
    let dir = TempDir::new();
    let socket = dir.0.join("nothing-here.sock");
    let toml = write(&dir.0, "vswitchd.toml", &format!("socket = {:?}\npod_mtu = 1500\nworkers = 2\n", socket));
    let list = write(&dir.0, "10-vpc.conflist", &conflist(&socket, &dir.0.join("ipam"), json!({})).to_string());
    let (code, checks) = doctor(&["--config", &toml, "--conflist", &list]);
    for name in ["config", "conflist", "gateway", "gateway_mac", "mtu", "socket", "address_pool", "uplink"] {
        assert_eq!(status(&checks, name), "ok", "{name}: {:?}", checks[name]);
    }
    assert!(checks["address_pool"].1.starts_with("20 of 20 addresses free"), "{:?}", checks["address_pool"]);
    assert_eq!(status(&checks, "vswitchd"), "fail");
    assert!(checks["vswitchd"].1.contains("unreachable"), "{:?}", checks["vswitchd"]);
    for name in ["ip_forward", "dev_net_tun", "tun_module"] {
        assert!(checks.contains_key(name), "{name} is checked");
    }
    assert_eq!(code, 1, "a FAIL exits 1");

    // The same without --json: one line per check, FAIL spelt out.
    let out = Command::new(CTL).args(["doctor", "--config", &toml, "--conflist", &list]).output().unwrap();
    let text = String::from_utf8(out.stdout).unwrap();
    assert_eq!(text.lines().count(), checks.len(), "{text}");
    assert!(text.lines().any(|l| l.starts_with("FAIL  vswitchd: ")), "{text}");
    assert!(text.lines().any(|l| l.starts_with("ok    mtu: ")), "{text}");
    assert_eq!(out.status.code(), Some(1));
}

#[test]
fn disagreeing_files_fail_each_field_and_say_both_values() {
    let dir = TempDir::new();
    let toml = write(
        &dir.0,
        "vswitchd.toml",
        "socket = \"/run/vswitchd/other.sock\"\ngateway_ip = \"169.254.7.7\"\npod_mtu = 9000\n",
    );
    let entry = json!({"gatewayMac": "02:00:00:00:00:01"});
    let list =
        write(&dir.0, "c.conflist", &conflist(Path::new("/run/vswitchd/vswitchd.sock"), &dir.0, entry).to_string());
    let (code, checks) = doctor(&["--config", &toml, "--conflist", &list]);
    for (name, ours, theirs) in [
        ("gateway", "169.254.1.1", "169.254.7.7"),
        ("gateway_mac", "02:00:00:00:00:01", "02:00:a9:fe:07:07"),
        ("mtu", "1500", "9000"),
        ("socket", "/run/vswitchd/vswitchd.sock", "/run/vswitchd/other.sock"),
    ] {
        let (s, detail) = &checks[name];
        assert_eq!(s, "fail", "{name}: {detail}");
        assert!(detail.contains(ours) && detail.contains(theirs), "{name}: {detail}");
    }
    assert_eq!(code, 1);

    // A gateway MAC set in vswitchd.toml only: the conflist derives another one.
    let toml = write(&dir.0, "mac.toml", "gateway_mac = \"02:00:00:00:00:09\"\n");
    let list = write(&dir.0, "d.conflist", &conflist(Path::new("/x.sock"), &dir.0, json!({})).to_string());
    let (_, checks) = doctor(&["--config", &toml, "--conflist", &list]);
    assert_eq!(status(&checks, "gateway_mac"), "fail", "{:?}", checks["gateway_mac"]);
    assert_eq!(status(&checks, "gateway"), "ok");

    // Unreadable inputs fail their own check.
    let (_, checks) = doctor(&["--config", "/nonexistent/vswitchd.toml", "--conflist", "/nonexistent/x.conflist"]);
    assert_eq!((status(&checks, "config"), status(&checks, "conflist")), ("fail", "fail"));
    let bad = write(&dir.0, "bad.toml", "wrkers = 2\n");
    let broken = write(&dir.0, "bad.conflist", "{\"name\": \"vpc\", \"plugins\": [{\"type\": \"bridge\"}]}");
    let (_, checks) = doctor(&["--config", &bad, "--conflist", &broken]);
    assert!(checks["config"].1.contains("wrkers"), "{:?}", checks["config"]);
    assert!(checks["conflist"].1.contains("no plugin of type vpc-cni"), "{:?}", checks["conflist"]);
}

#[test]
fn a_low_pool_warns_and_an_empty_one_fails() {
    let dir = TempDir::new();
    let toml = write(&dir.0, "vswitchd.toml", "");
    let list = write(&dir.0, "c.conflist", &conflist(Path::new("/x.sock"), &dir.0.join("ipam"), json!({})).to_string());
    std::fs::create_dir_all(dir.0.join("ipam/vpc")).unwrap();
    let state = |n: u32| {
        let allocations: serde_json::Map<String, Value> = (1..=n)
            .map(|i| (format!("10.10.40.{i}"), json!({"containerID": format!("c{i}"), "ifname": "eth0"})))
            .collect();
        let state = json!({"allocations": allocations, "released": {}, "last": null});
        std::fs::write(dir.0.join("ipam/vpc/state.json"), state.to_string()).unwrap();
    };
    state(19);
    let (_, checks) = doctor(&["--config", &toml, "--conflist", &list]);
    assert_eq!(status(&checks, "address_pool"), "warn", "{:?}", checks["address_pool"]);
    assert!(checks["address_pool"].1.starts_with("1 of 20 addresses free"), "{:?}", checks["address_pool"]);
    state(20);
    let (_, checks) = doctor(&["--config", &toml, "--conflist", &list]);
    assert_eq!(status(&checks, "address_pool"), "fail", "{:?}", checks["address_pool"]);
}

#[test]
fn a_running_vswitchd_passes_the_socket_check() {
    require_root();
    let dir = TempDir::new();
    let node = Netns::new("vtd");
    let bins = Binaries { vswitchd: env!("CARGO_BIN_EXE_vswitchd").into(), vswitchctl: CTL.into() };
    let daemon = Daemon::start(&bins, &node, &dir.0, 1);
    let toml = write(&dir.0, "doctor.toml", &format!("socket = {:?}\n", daemon.socket));
    let list = write(&dir.0, "c.conflist", &conflist(&daemon.socket, &dir.0.join("ipam"), json!({})).to_string());
    let (_, checks) = doctor(&["--config", &toml, "--conflist", &list]);
    assert_eq!(status(&checks, "vswitchd"), "ok", "{:?}", checks["vswitchd"]);
    assert_eq!(status(&checks, "socket"), "ok");
    // --socket overrides the file's socket (and is what the conflist is compared with).
    let (_, checks) = doctor(&["--socket", "/nonexistent.sock", "--config", &toml, "--conflist", &list]);
    assert_eq!((status(&checks, "vswitchd"), status(&checks, "socket")), ("fail", "fail"));
    drop(daemon);
}

#[test]
fn a_dual_stack_conflist_is_read_and_each_familys_pool_checked() {
    let dir = TempDir::new();
    let socket = dir.0.join("nothing-here.sock");
    let toml = write(&dir.0, "vswitchd.toml", &format!("socket = {:?}\n", socket));
    let ranges = json!([
        {"rangeStart": "10.10.40.1", "rangeEnd": "10.10.40.20"},
        {"rangeStart": "fd00:10::1", "rangeEnd": "fd00:10::4"},
    ]);
    let mut list = conflist(&socket, &dir.0.join("ipam"), json!({}));
    list["plugins"][0]["ipam"]["ranges"] = ranges;
    list["cniVersions"] = json!(["1.0.0", "1.1.0"]);
    let list = write(&dir.0, "dual.conflist", &list.to_string());
    std::fs::create_dir_all(dir.0.join("ipam/vpc")).unwrap();
    let state = |ips: &[&str]| {
        let allocations: serde_json::Map<String, Value> = ips
            .iter()
            .map(|ip| (ip.to_string(), json!({"containerID": format!("c-{ip}"), "ifname": "eth0"})))
            .collect();
        let state = json!({"allocations": allocations, "released": {}, "last": null, "last6": null});
        std::fs::write(dir.0.join("ipam/vpc/state.json"), state.to_string()).unwrap();
    };

    state(&["10.10.40.1", "fd00:10::1"]);
    let (_, checks) = doctor(&["--config", &toml, "--conflist", &list]);
    for name in ["conflist", "gateway", "gateway_mac", "mtu", "socket", "address_pool"] {
        assert_eq!(status(&checks, name), "ok", "{name}: {:?}", checks[name]);
    }
    let conflist_detail = &checks["conflist"].1;
    assert!(conflist_detail.contains("cniVersion 1.1.0, pods get IPv4 and IPv6"), "{conflist_detail}");
    let pool = &checks["address_pool"].1;
    assert!(pool.starts_with("IPv4: 19 of 20 addresses free (1 allocated"), "{pool}");
    assert!(pool.contains("; IPv6: 3 of 4 addresses free (1 allocated"), "{pool}");

    // The IPv6 range used up: no pod of a dual-stack network can start, whatever IPv4 has left.
    state(&["10.10.40.1", "fd00:10::1", "fd00:10::2", "fd00:10::3", "fd00:10::4"]);
    let (code, checks) = doctor(&["--config", &toml, "--conflist", &list]);
    assert_eq!(status(&checks, "address_pool"), "fail", "{:?}", checks["address_pool"]);
    assert!(checks["address_pool"].1.contains("IPv6: 0 of 4 addresses free"), "{:?}", checks["address_pool"]);
    assert_eq!(code, 1);

    // A range the plugin would refuse (mixing families) fails the conflist check, with its code.
    let mut bad = conflist(&socket, &dir.0.join("ipam"), json!({}));
    bad["plugins"][0]["ipam"]["ranges"] = json!([{"rangeStart": "10.10.40.1", "rangeEnd": "fd00:10::4"}]);
    let bad = write(&dir.0, "bad.conflist", &bad.to_string());
    let (_, checks) = doctor(&["--config", &toml, "--conflist", &bad]);
    assert_eq!(status(&checks, "conflist"), "fail");
    assert!(checks["conflist"].1.contains("mixes IPv4 and IPv6"), "{:?}", checks["conflist"]);
    assert!(checks["conflist"].1.contains("code 7"), "{:?}", checks["conflist"]);
}
