//! The lab every test here starts: a node namespace with vswitchd, the plugin's configuration,
//! and vpc-cni run the way a container runtime runs it.

use std::io::Write;
use std::net::Ipv4Addr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::{json, Value};
use vpc_lab::netns::{require_root, Binaries, Daemon, Netns, TempDir};

pub const CNI: &str = env!("CARGO_BIN_EXE_vpc-cni");

pub struct Lab {
    pub daemon: Daemon,
    pub node: Netns,
    pub dir: TempDir,
    pub subnet: u8,
}

pub fn lab(subnet: u8) -> Lab {
    require_root();
    let dir = TempDir::new();
    let node = Netns::new("vtn");
    node.ip(&["addr", "add", "10.10.0.5/32", "dev", "lo"]);
    let daemon = Daemon::start(&Binaries::beside_current_exe(), &node, &dir.0, 1);
    Lab { daemon, node, dir, subnet }
}

impl Lab {
    pub fn conf(&self, version: &str) -> Value {
        json!({
            "cniVersion": version,
            "name": "vpc",
            "type": "vpc-cni",
            "vswitchSocket": self.daemon.socket,
            "mtu": 1500,
            "dns": {"nameservers": ["10.96.0.10"]},
            "ipam": {
                "ranges": [{"rangeStart": format!("10.10.{}.10", self.subnet), "rangeEnd": format!("10.10.{}.250", self.subnet)}],
                "dataDir": self.dir.0.join("ipam"),
            },
            "logFile": self.dir.0.join("vpc-cni.log"),
        })
    }

    pub fn allocations(&self) -> serde_json::Map<String, Value> {
        self.ipam_state()["allocations"].as_object().cloned().unwrap_or_default()
    }

    pub fn port(&self, name: &str) -> Option<Value> {
        self.daemon.ctl_json(&["ports"]).as_array().unwrap().iter().find(|p| p["name"] == name).cloned()
    }

    pub fn ipam_state(&self) -> Value {
        std::fs::read(self.dir.0.join("ipam/vpc/state.json")).map_or(json!({}), |b| serde_json::from_slice(&b).unwrap())
    }
}

/// Runs the plugin like containerd does; returns (success, stdout JSON or Null).
pub fn cni(command: &str, container: &str, netns: Option<&Path>, conf: &Value) -> (bool, Value) {
    cni_env(command, &[("CNI_CONTAINERID", container), ("CNI_IFNAME", "eth0")], netns, conf)
}

pub fn cni_env(command: &str, vars: &[(&str, &str)], netns: Option<&Path>, conf: &Value) -> (bool, Value) {
    let mut cmd = Command::new(CNI);
    cmd.env_clear()
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .env("CNI_COMMAND", command)
        .env("CNI_PATH", "/opt/cni/bin:/usr/lib/cni")
        .env("CNI_ARGS", "IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=web-0")
        .envs(vars.iter().copied())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped());
    if let Some(ns) = netns {
        cmd.env("CNI_NETNS", ns);
    }
    let mut child = cmd.spawn().expect("run vpc-cni");
    child.stdin.take().unwrap().write_all(conf.to_string().as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let value = if stdout.trim().is_empty() {
        Value::Null
    } else {
        serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("not JSON ({e}): {stdout}"))
    };
    (out.status.success(), value)
}

/// Runs the plugin with the lab's environment but `args` as CNI_ARGS.
pub fn cni_args(command: &str, container: &str, netns: &Path, args: &str, conf: &Value) -> (bool, Value) {
    cni_env(command, &[("CNI_CONTAINERID", container), ("CNI_IFNAME", "eth0"), ("CNI_ARGS", args)], Some(netns), conf)
}

pub fn code_of((ok, v): (bool, Value)) -> u64 {
    assert!(!ok, "should fail: {v}");
    v["code"].as_u64().unwrap_or_else(|| panic!("no code: {v}"))
}

pub fn address(result: &Value) -> Ipv4Addr {
    result["ips"][0]["address"].as_str().unwrap().split('/').next().unwrap().parse().unwrap()
}

pub fn has_link(ns: &Netns, name: &str) -> bool {
    ns.exec(&["ip", "link", "show", name]).status.success()
}

/// vswitchd deletes a detached pod's TAP right after answering DEL; give it a moment.
pub fn link_gone_soon(ns: &Netns, name: &str) -> bool {
    let deadline = std::time::Instant::now() + Duration::from_secs(3);
    while has_link(ns, name) {
        if std::time::Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    true
}

pub fn link_field(ns: &Netns, dev: &str, field: &str) -> Value {
    let out = ns.exec(&["ip", "-j", "link", "show", dev]);
    serde_json::from_slice::<Value>(&out.stdout).unwrap()[0][field].clone()
}
