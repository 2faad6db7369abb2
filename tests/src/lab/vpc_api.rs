//! The lab VPC's API: an emulator of UCloud's VPC API for pod addresses (`AllocateSecondaryIp`,
//! `DeleteSecondaryIp`, `DescribeSecondaryIp`, `MoveSecondaryIPMac`, `DescribeSubnet`), in
//! UCloud's own dialect, which alone programs the fabric's SDN. Lab code, not product code: it
//! stands in for the cloud so that the product's provider mode and the lab's tests meet a VPC
//! that behaves like one.
//!
//! [`dialect`] is the wire format, [`vpc`] the model with its invariants, [`server`] the process
//! (`vpc-lab vpc-api`); here are the handles the lab and the tests hold: [`VpcApi`] (the process
//! in its namespace, killed on drop) and [`SdkClient`] (UCloud's Python SDK, run in a namespace).

pub mod dialect;
pub mod local;
pub mod server;
pub mod vpc;

use std::ffi::OsStr;
use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::netns::{binary, Netns};
use vpc::VpcConfig;

/// The API's TCP port.
pub const API_PORT: u16 = 80;
/// The venv that tests/install-deps.sh installs UCloud's Python SDK in.
pub const SDK_VENV: &str = "/opt/vpc-lab-venv";

/// The API server, running in a namespace of its own on the fabric. Killed on drop.
#[derive(Debug)]
pub struct VpcApi {
    pub ns: Netns,
    child: Option<Child>,
    /// `http://ADDR:80`, as the SDK's `base_url`.
    pub endpoint: String,
    /// The control socket ([`server`]): state dump and faults.
    pub control: PathBuf,
    pub config: VpcConfig,
    pub log: PathBuf,
}

impl VpcApi {
    /// Starts the API in a new namespace (`prefix` + unique), attached to `fabric`'s bridge
    /// `br0` by port `port` with addresses `addrs` (`ADDR/LEN`; the first is the endpoint, and
    /// `config` should list them as a fixed host on `port`). The server loads the SDN's table
    /// into `fabric` and registers the fixed hosts and primary addresses before it answers.
    /// `dir` takes its configuration, log and control socket.
    pub fn start(prefix: &str, fabric: &Netns, port: &str, addrs: &[&str], config: &VpcConfig, dir: &Path) -> VpcApi {
        let ns = Netns::new(prefix);
        super::attach(fabric, &ns, "eth0", port, addrs[0]);
        for extra in &addrs[1..] {
            ns.ip(&["addr", "add", extra, "dev", "eth0", "nodad"]);
        }
        let ip: IpAddr = addrs[0].split('/').next().and_then(|a| a.parse().ok()).expect("ADDR/LEN");
        std::fs::create_dir_all(dir).expect("the API's directory");
        let config_path = dir.join("vpc.json");
        std::fs::write(&config_path, serde_json::to_vec_pretty(config).expect("serialisable")).expect("write vpc.json");
        let control = dir.join("vpc-api.sock");
        let log = dir.join("vpc-api.log");
        let listen = SocketAddr::new(ip, API_PORT).to_string();
        let args = [
            "vpc-api".as_ref(),
            "--config".as_ref(),
            config_path.as_os_str(),
            "--listen".as_ref(),
            listen.as_ref(),
            "--fabric".as_ref(),
            fabric.name.as_ref(),
        ];
        let child = start_server(&ns.name, &args, &control, &log, Duration::from_secs(10));
        let endpoint = format!("http://{}", SocketAddr::new(ip, API_PORT));
        VpcApi { ns, child: Some(child), endpoint, control, config: config.clone(), log }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The server's state ([`server`]'s `state`).
    pub fn state(&self) -> Value {
        control(&self.control, &json!({"op": "state"}))
            .unwrap_or_else(|e| panic!("vpc-api state: {e}; {}", self.log_text()))
    }

    /// Changes some of the faults (`{"rate_per_sec": 5}`, `{"down": true}`, ...); returns them all.
    pub fn set_faults(&self, faults: Value) -> Value {
        let answer = control(&self.control, &json!({"op": "faults", "faults": faults})).expect("vpc-api faults");
        assert!(answer.get("error").is_none(), "vpc-api faults: {answer}");
        answer["faults"].clone()
    }

    /// An SDN counter's packets.
    pub fn counter(&self, name: &str) -> u64 {
        self.state()["counters"][name]["packets"].as_u64().unwrap_or_else(|| panic!("no SDN counter {name}"))
    }

    /// Leaves the server and its namespace running (`vpc-lab up`); returns the namespace's
    /// name and the server's pid, which `vpc-lab down` removes and kills.
    pub fn detach(mut self) -> (String, Option<u32>) {
        let pid = self.child.take().map(|c| c.id());
        let ns = self.ns.name.clone();
        // Neither the process nor the namespace is to go: nothing of it is dropped.
        std::mem::forget(self);
        (ns, pid)
    }
}

impl Drop for VpcApi {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// `vpc-lab ARGS --control CONTROL` (a lab server: the VPC API, the EC2 SDN programmer) in
/// namespace `ns`, its output in `log`, once it answers `{"op": "state"}` on `control`; panics
/// with its log if it exits first or takes longer than `within`.
pub fn start_server(ns: &str, args: &[&OsStr], control_socket: &Path, log: &Path, within: Duration) -> Child {
    let out = std::fs::File::create(log).expect("the server's log");
    let mut child = Command::new("ip")
        .args(["netns", "exec", ns])
        .arg(binary("vpc-lab"))
        .args(args)
        .arg("--control")
        .arg(control_socket)
        .stdout(out.try_clone().expect("log"))
        .stderr(out)
        .spawn()
        .expect("start a vpc-lab server");
    let deadline = Instant::now() + within;
    while control(control_socket, &json!({"op": "state"})).is_err() {
        let exited = child.try_wait().ok().flatten();
        if exited.is_some() || Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            let text = std::fs::read_to_string(log).unwrap_or_default();
            panic!("vpc-lab {args:?} did not come up ({exited:?}): {text}");
        }
        std::thread::sleep(Duration::from_millis(30));
    }
    child
}

/// One request and its answer on a server's control socket.
pub fn control(socket: &Path, request: &Value) -> std::io::Result<Value> {
    let mut stream = UnixStream::connect(socket)?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    stream.write_all(format!("{request}\n").as_bytes())?;
    let mut text = String::new();
    stream.read_to_string(&mut text)?;
    serde_json::from_str(&text).map_err(std::io::Error::other)
}

/// UCloud's own Python SDK (`ucloud-sdk-python3`, in [`SDK_VENV`]), run in a namespace: what
/// proves the lab speaks UCloud's dialect. Each call is one process of
/// `tests/tests/ucloud_sdk_call.py`.
#[derive(Debug, Clone)]
pub struct SdkClient {
    pub netns: String,
    pub endpoint: String,
    pub region: String,
    pub project_id: String,
    pub public_key: String,
    pub private_key: String,
}

/// What a call through the SDK came to.
#[derive(Debug, Clone)]
pub struct SdkReply {
    /// 0 on success, else the RetCode of the SDK's `RetCodeException` (-1: another failure).
    pub ret_code: i64,
    pub message: String,
    /// The SDK's parsed response (success only).
    pub response: Value,
    pub elapsed: Duration,
}

impl SdkClient {
    /// A client for `api`'s VPC with its first credential, run in `netns`.
    pub fn new(api: &VpcApi, netns: &str) -> SdkClient {
        let cred = &api.config.credentials[0];
        SdkClient {
            netns: netns.to_string(),
            endpoint: api.endpoint.clone(),
            region: api.config.region.clone(),
            project_id: api.config.project_id.clone(),
            public_key: cred.public_key.clone(),
            private_key: cred.private_key.clone(),
        }
    }

    /// Fails clearly when the SDK is not installed.
    pub fn require() {
        let python = Path::new(SDK_VENV).join("bin/python");
        let ok = Command::new(&python).args(["-c", "import ucloud.services.vpc"]).status().is_ok_and(|s| s.success());
        assert!(ok, "UCloud's Python SDK is missing from {SDK_VENV}: run tests/install-deps.sh");
    }

    /// Calls `action` through the SDK's typed VPC client with `params` (a JSON object).
    pub fn call(&self, action: &str, params: Value) -> SdkReply {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/ucloud_sdk_call.py");
        let setup = json!({"base_url": self.endpoint, "region": self.region, "project_id": self.project_id,
                           "public_key": self.public_key, "private_key": self.private_key});
        let started = Instant::now();
        let out = Command::new("ip")
            .args(["netns", "exec", &self.netns])
            .arg(Path::new(SDK_VENV).join("bin/python"))
            .arg(&script)
            .args([&setup.to_string(), action, &params.to_string()])
            .stdin(Stdio::null())
            .output()
            .expect("run the SDK");
        let elapsed = started.elapsed();
        let text = String::from_utf8_lossy(&out.stdout);
        let v: Value = serde_json::from_str(text.trim()).unwrap_or_else(|e| {
            panic!("the SDK printed no reply ({e}): {text}{}", String::from_utf8_lossy(&out.stderr))
        });
        SdkReply {
            ret_code: v["ret_code"].as_i64().unwrap_or(-1),
            message: v["message"].as_str().unwrap_or("").to_string(),
            response: v["response"].clone(),
            elapsed,
        }
    }
}
