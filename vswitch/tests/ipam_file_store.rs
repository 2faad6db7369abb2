//! The single-node address store (`ipam-store.json`, `[ipam]` without etcd) as an operator
//! meets it: damaged while vswitchd was down, it stops the start with a message naming the file
//! and how to recover, and is left as it was; the recovery the message names then works.
//! Real vswitchd and vswitchctl, a real node namespace and pod. Needs root.

use std::net::Ipv4Addr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use vpc_lab::netns::{require_root, Binaries, Daemon, Netns, Pod, TempDir};

const CONFIG: &str = "[ipam]\nnode_name = \"n1\"\npools = [\"10.10.61.0/24\"]\nwarm_target = 2\nwarm_max = 4\n";
const POD_IP: Ipv4Addr = Ipv4Addr::new(10, 10, 61, 50);

fn bins() -> Binaries {
    Binaries { vswitchd: env!("CARGO_BIN_EXE_vswitchd").into(), vswitchctl: env!("CARGO_BIN_EXE_vswitchctl").into() }
}

/// Polls `vswitchctl --json ipam` until `done` holds for it.
fn wait_for_ipam(daemon: &Daemon, what: &str, done: impl Fn(&serde_json::Value) -> bool) -> serde_json::Value {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let view = daemon.ctl_json(&["ipam"]);
        if done(&view) {
            return view;
        }
        assert!(Instant::now() < deadline, "{what}: {view:#}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Starts vswitchd as [`Daemon`] does and waits for it to exit (killed and failed after 15 s).
fn start_expecting_exit(node: &Netns, dir: &Path) -> (Option<i32>, String) {
    let mut child = Command::new("ip")
        .args(["netns", "exec", &node.name, env!("CARGO_BIN_EXE_vswitchd")])
        .args(["--config", dir.join("vswitchd.toml").to_str().unwrap()])
        .args(["--socket", dir.join("vswitchd.sock").to_str().unwrap()])
        .args(["--state-dir", dir.join("state").to_str().unwrap(), "--metrics-addr", "127.0.0.1:9477"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start vswitchd");
    let deadline = Instant::now() + Duration::from_secs(15);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            let out = child.wait_with_output().unwrap();
            panic!("vswitchd started on a corrupt store: {}", String::from_utf8_lossy(&out.stderr));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = child.wait_with_output().unwrap();
    (out.status.code(), String::from_utf8_lossy(&out.stderr).into_owned())
}

#[test]
fn a_truncated_store_stops_the_start_is_left_as_it_was_and_the_named_recovery_works() {
    require_root();
    // Drop order: the daemon first, then the pod and node namespaces, then the directory.
    let dir = TempDir::new();
    let node = Netns::new("vti");
    let pod = Pod::new(POD_IP);
    let mut daemon = Daemon::start_with_config(&bins(), &node, &dir.0, 1, CONFIG);
    daemon.attach("c1:eth0", &pod);
    wait_for_ipam(&daemon, "the warm pool filled", |v| v["store_reachable"] == true && v["this_node"]["warm"] == 2);
    daemon.kill9();

    // Damaged while vswitchd was down: half the file is gone.
    let state = dir.0.join("state");
    let store = state.join("ipam-store.json");
    let whole = std::fs::read(&store).unwrap();
    std::fs::write(&store, &whole[..whole.len() / 2]).unwrap();
    let damaged = std::fs::read(&store).unwrap();

    let (code, stderr) = start_expecting_exit(&node, &dir.0);
    eprintln!("vswitchd on the truncated store: exit {code:?}\n{stderr}");
    assert!(code.is_some_and(|c| c != 0), "exit {code:?}: {stderr}");
    let local = state.join("ipam.json");
    for expected in [
        format!("the address store {} is corrupt (", store.display()),
        "vswitchd does not start on it and leaves it as it is".to_string(),
        format!("move {} and {} away", store.display(), local.display()),
    ] {
        assert!(stderr.contains(&expected), "{expected:?} not in: {stderr}");
    }
    assert!(!stderr.contains("unreachable") && !stderr.contains("ready"), "{stderr}");
    assert_eq!(std::fs::read(&store).unwrap(), damaged, "the store file was written to");
    assert!(!daemon.ctl(&["ports"]).status.success(), "nothing answers on the API socket");

    // The recovery the message names: both files away, start again. The store starts empty and
    // learns the pod's address from its port.
    std::fs::rename(&store, state.join("ipam-store.json.corrupt")).unwrap();
    std::fs::rename(&local, state.join("ipam.json.old")).unwrap();
    daemon.spawn(&node, 1);
    let view = wait_for_ipam(&daemon, "the pod's address recorded in the new store", |v| {
        let n1 = v["nodes"].as_array().and_then(|nodes| nodes.iter().find(|n| n["name"] == "n1"));
        n1.is_some_and(|n1| {
            n1["warm"].as_array().is_some_and(|w| w.len() == 2)
                && n1["assigned"].as_array().is_some_and(|a| {
                    a.iter().any(|x| x["ip"] == POD_IP.to_string() && x["owner"]["containerID"] == "c1")
                })
        })
    });
    let warm = &view["nodes"].as_array().unwrap().iter().find(|n| n["name"] == "n1").unwrap()["warm"];
    assert!(!warm.as_array().unwrap().contains(&serde_json::json!(POD_IP.to_string())), "{view:#}");
    let rebuilt: serde_json::Value = serde_json::from_slice(&std::fs::read(&store).unwrap()).unwrap();
    assert!(rebuilt["keys"].as_object().is_some_and(|k| k.len() >= 3), "{rebuilt:#}");
    let ports = daemon.ctl_json(&["ports"]);
    let port = ports.as_array().unwrap().iter().find(|p| p["name"] == "c1:eth0").cloned();
    assert!(port.is_some_and(|p| p["link"] == "up"), "the pod kept its port through all of it: {ports:#}");
}
