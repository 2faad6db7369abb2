//! The lab's EC2 for the tests of `[ipam] provider = "aws"`: moto's server (`moto[server]` in the
//! tests' venv, tests/requirements.txt) with the lab's proxy in front of it (`ec2_lab.py`: the
//! throttling, latency, outages, subnet capacity and address uniqueness moto lacks), both on
//! loopback (the host's, or a node namespace's so that a vswitchd in it reaches them), stopped on
//! drop. The VPC, subnet and instances are created through moto's API at start.

use std::net::{SocketAddr, TcpListener};
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::lab::vpc_api::SDK_VENV;

const SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/src/ec2_lab.py");
/// The region moto's state is kept under (the proxy's and seed's clients use it too).
pub const REGION: &str = "us-east-1";

/// moto and the proxy, running.
#[derive(Debug)]
pub struct Ec2Lab {
    netns: Option<String>,
    moto: Option<Child>,
    proxy: Option<Child>,
    /// `http://ADDR:PORT` of the proxy: the endpoint vswitchd is given.
    pub endpoint: String,
    /// `http://127.0.0.1:PORT` of moto itself, behind the proxy: for the lab's own reads, which
    /// the proxy neither counts nor faults.
    pub upstream: String,
    pub subnet: String,
    pub instances: Vec<String>,
}

/// A port nothing listens on: any in a fresh namespace, the kernel's pick on the host.
fn free_port(netns: Option<&str>) -> u16 {
    match netns {
        Some(_) => 20000 + (std::process::id() % 20000) as u16,
        None => TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port(),
    }
}

/// Whether the tests' venv has moto (tests/install-deps.sh).
pub fn have_moto() -> bool {
    Path::new(SDK_VENV).join("bin/moto_server").exists()
}

impl Ec2Lab {
    /// moto and the proxy on loopback (of `netns` if given), a VPC with the subnet 10.0.1.0/24
    /// and `count` instances of `instance_type` in it.
    pub fn start(netns: Option<&str>, instance_type: &str, count: usize) -> Ec2Lab {
        let mut lab = Ec2Lab::launch(netns, None);
        let seeded = lab.seed(&["seed", "--instance-type", instance_type, "--count", &count.to_string()]);
        lab.subnet = seeded["subnet"].as_str().unwrap().into();
        lab.instances = seeded["instances"].as_array().unwrap().iter().map(|i| i.as_str().unwrap().into()).collect();
        lab
    }

    /// moto on loopback (of `netns` if given) and the proxy in front of it on `proxy` (default:
    /// loopback too), with nothing in EC2 yet.
    pub fn launch(netns: Option<&str>, proxy: Option<SocketAddr>) -> Ec2Lab {
        assert!(have_moto(), "moto is not installed in {SDK_VENV}: run tests/install-deps.sh");
        let moto_port = free_port(netns);
        let proxy = proxy.unwrap_or_else(|| {
            let port = if netns.is_some() { moto_port + 1 } else { free_port(netns) };
            SocketAddr::from(([127, 0, 0, 1], port))
        });
        let spawn = |args: &[&str]| {
            let mut cmd = match netns {
                Some(ns) => {
                    let mut c = Command::new("ip");
                    c.args(["netns", "exec", ns]);
                    c.args(args);
                    c
                }
                None => {
                    let mut c = Command::new(args[0]);
                    c.args(&args[1..]);
                    c
                }
            };
            cmd.stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::null()).spawn().expect("start")
        };
        let python = format!("{SDK_VENV}/bin/python");
        let moto_server = format!("{SDK_VENV}/bin/moto_server");
        let moto = spawn(&[&moto_server, "-H", "127.0.0.1", "-p", &moto_port.to_string()]);
        let upstream = format!("http://127.0.0.1:{moto_port}");
        let proxy_process = spawn(&[&python, SCRIPT, "proxy", "--listen", &proxy.to_string(), "--upstream", &upstream]);
        Ec2Lab {
            netns: netns.map(Into::into),
            moto: Some(moto),
            proxy: Some(proxy_process),
            endpoint: format!("http://{proxy}"),
            upstream,
            subnet: String::new(),
            instances: Vec::new(),
        }
    }

    /// `ec2_lab.py` seeding subcommand `args` (with the endpoint added), retried until moto is up;
    /// what it printed.
    pub fn seed(&self, args: &[&str]) -> Value {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let out = self.script(args);
            if out.status.success() {
                break serde_json::from_slice::<Value>(&out.stdout).expect("seed prints JSON");
            }
            assert!(Instant::now() < deadline, "moto did not come up: {}", String::from_utf8_lossy(&out.stderr));
            std::thread::sleep(Duration::from_millis(500));
        }
    }

    /// Leaves moto and the proxy running after this handle goes (`vpc-lab up`); their pids.
    pub fn detach(mut self) -> Vec<u32> {
        [self.moto.take(), self.proxy.take()].into_iter().flatten().map(|c| c.id()).collect()
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut cmd = match &self.netns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns]).arg(args[0]);
                c
            }
            None => Command::new(args[0]),
        };
        cmd.args(&args[1..]);
        cmd
    }

    /// `ec2_lab.py SUBCOMMAND --endpoint <proxy> ...`.
    pub fn script(&self, args: &[&str]) -> Output {
        let python = format!("{SDK_VENV}/bin/python");
        let mut full = vec![python.as_str(), SCRIPT, args[0], "--endpoint", &self.endpoint];
        full.extend_from_slice(&args[1..]);
        self.command(&full).output().expect("run ec2_lab.py")
    }

    /// Every ENI as moto holds it: `id`, `status`, `instance`, `device_index`, `primary`,
    /// `secondary`, `tags`.
    pub fn enis(&self) -> Vec<Value> {
        let out = self.script(&["describe"]);
        assert!(out.status.success(), "describe: {}", String::from_utf8_lossy(&out.stderr));
        serde_json::from_slice::<Value>(&out.stdout).unwrap().as_array().unwrap().clone()
    }

    /// The ENIs attached to `instance`.
    pub fn enis_of(&self, instance: &str) -> Vec<Value> {
        self.enis().into_iter().filter(|e| e["instance"] == instance).collect()
    }

    /// The secondary addresses of `instance`'s ENIs.
    pub fn secondary_of(&self, instance: &str) -> Vec<String> {
        let enis = self.enis_of(instance);
        enis.iter()
            .flat_map(|e| e["secondary"].as_array().unwrap().iter().map(|a| a.as_str().unwrap().to_string()))
            .collect()
    }

    /// A detached ENI in the subnet with `tags`; its id.
    pub fn create_eni(&self, tags: &[(&str, &str)]) -> String {
        let mut args = vec!["create-eni".to_string(), "--subnet".into(), self.subnet.clone()];
        for (k, v) in tags {
            args.extend(["--tag".into(), format!("{k}={v}")]);
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = self.script(&args);
        assert!(out.status.success(), "create-eni: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).unwrap().trim().into()
    }

    fn curl(&self, args: &[&str]) -> Value {
        let mut full = vec!["curl", "-sS", "--max-time", "10"];
        full.extend_from_slice(args);
        let out = self.command(&full).output().expect("curl");
        assert!(out.status.success(), "curl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        serde_json::from_slice(&out.stdout).expect("JSON from the proxy")
    }

    /// Sets the proxy's faults: `{"throttle": 0.3, "latency_ms": 50, "down": true, "capacity": 12}`.
    pub fn faults(&self, faults: Value) {
        let url = format!("{}/__lab/faults", self.endpoint);
        self.curl(&["-X", "POST", "--data", &faults.to_string(), &url]);
    }

    /// The calls the proxy received, by action.
    pub fn calls(&self) -> Value {
        self.curl(&[&format!("{}/__lab/calls", self.endpoint)])
    }

    /// All calls the proxy received.
    pub fn total_calls(&self) -> u64 {
        self.calls().as_object().unwrap().values().filter_map(Value::as_u64).sum()
    }
}

impl Drop for Ec2Lab {
    fn drop(&mut self) {
        for child in [&mut self.proxy, &mut self.moto].into_iter().flatten() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
