//! vpc-cni's node-local ranges when a sandbox vanishes without a DEL and the runtime never sends
//! CNI GC (containerd 1.6): the first ADD after vswitchd dropped the gone port gives its address
//! back, and never a live pod's. The real plugin as a runtime calls it, a real vswitchd, real
//! namespaces; a range of two addresses, so without the sweep the third pod finds it exhausted.
//! Needs root.

use std::net::Ipv4Addr;
use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use vpc_lab::netns::{cni_command, require_root, run_cni, Binaries, Daemon, Netns, TempDir};

const CNI: &str = env!("CARGO_BIN_EXE_vpc-cni");
/// vswitchd's grace before it removes a port whose namespace vanished (300 s by default).
const GRACE: Duration = Duration::from_secs(5);

fn conf(daemon: &Daemon, dir: &TempDir) -> Value {
    json!({
        "cniVersion": "1.0.0",
        "name": "vpc",
        "type": "vpc-cni",
        "vswitchSocket": daemon.socket,
        // The released address is reusable at once, so the ADD that releases it can take it.
        "ipam": {
            "ranges": [{"rangeStart": "10.10.61.10", "rangeEnd": "10.10.61.11"}],
            "dataDir": dir.0.join("ipam"),
            "reuseDelaySeconds": 0,
        },
        "logFile": dir.0.join("vpc-cni.log"),
    })
}

/// ADD as a runtime makes it: the address, or the error JSON.
fn add(container: &str, netns: &Path, conf: &Value) -> Result<Ipv4Addr, Value> {
    let out = run_cni(cni_command(Path::new(CNI), "ADD", container, netns), conf);
    let result: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
    if !out.status.success() {
        return Err(result);
    }
    Ok(result["ips"][0]["address"].as_str().unwrap().split('/').next().unwrap().parse().unwrap())
}

fn allocations(dir: &TempDir) -> Value {
    let state: Value = serde_json::from_slice(&std::fs::read(dir.0.join("ipam/vpc/state.json")).unwrap()).unwrap();
    state["allocations"].clone()
}

fn port_link(daemon: &Daemon, name: &str) -> Option<String> {
    let ports = daemon.ctl_json(&["ports"]);
    ports.as_array().unwrap().iter().find(|p| p["name"] == name).map(|p| p["link"].as_str().unwrap().to_string())
}

#[test]
fn an_add_gives_back_the_address_of_a_sandbox_that_vanished_without_del_and_never_a_live_pods() {
    require_root();
    let dir = TempDir::new();
    let node = Netns::new("vvsn");
    let grace = format!("gone_port_timeout_seconds = {}\n", GRACE.as_secs());
    let daemon = Daemon::start_with_config(&Binaries::beside_current_exe(), &node, &dir.0.join("vswitchd"), 1, &grace);
    let conf = conf(&daemon, &dir);
    let (lost, live) = (Netns::new("vvsa"), Netns::new("vvsb"));
    let lost_ip = add("lost", &lost.path(), &conf).unwrap_or_else(|e| panic!("ADD lost: {e:#}"));
    let live_ip = add("live", &live.path(), &conf).unwrap_or_else(|e| panic!("ADD live: {e:#}"));

    // The runtime loses the sandbox (state wiped): no DEL, no GC. vswitchd sees its TAP go and
    // marks the port gone; while its grace runs, the address stays (the range is full).
    drop(lost);
    let deadline = Instant::now() + Duration::from_secs(10);
    while port_link(&daemon, "lost:eth0").as_deref() != Some("gone") {
        assert!(Instant::now() < deadline, "vswitchd did not mark the port gone: {:#}", daemon.ctl_json(&["ports"]));
        std::thread::sleep(Duration::from_millis(100));
    }
    let next = Netns::new("vvsc");
    let early = add("next", &next.path(), &conf).unwrap_err();
    assert_eq!(early["code"], 100, "vswitchd's grace is not cut short: {early:#}");
    assert_eq!(allocations(&dir)[lost_ip.to_string()]["containerID"], "lost");

    // vswitchd removes the gone port: the next ADD gives the vanished sandbox's address back and
    // takes it, though the range was full.
    while port_link(&daemon, "lost:eth0").is_some() {
        assert!(Instant::now() < deadline + GRACE, "vswitchd kept the gone port: {:#}", daemon.ctl_json(&["ports"]));
        std::thread::sleep(Duration::from_millis(100));
    }
    let next_ip = add("next", &next.path(), &conf).unwrap_or_else(|e| panic!("ADD next: {e:#}"));
    assert_eq!(next_ip, lost_ip, "{:#}", allocations(&dir));
    let log = std::fs::read_to_string(dir.0.join("vpc-cni.log")).unwrap();
    assert!(log.contains("vanished without a DEL"), "{log}");

    // Live pods keep theirs: the range is now truly full.
    let held = allocations(&dir);
    assert_eq!(held[live_ip.to_string()]["containerID"], "live", "{held:#}");
    let one_more = Netns::new("vvsd");
    let refused = add("one-more", &one_more.path(), &conf).unwrap_err();
    assert_eq!(refused["code"], 100, "{refused:#}");
    assert_eq!(allocations(&dir), held, "a failed ADD changes nothing");
    for (container, ns) in [("live", &live), ("next", &next)] {
        assert!(run_cni(cni_command(Path::new(CNI), "DEL", container, &ns.path()), &conf).status.success());
    }
}
