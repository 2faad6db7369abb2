//! The lab's EC2 for the tests of `[ipam] provider = "aws"`: moto's server (`moto[server]` in the
//! tests' venv, tests/requirements.txt) with the lab's proxy in front of it (`ec2_lab.py`: the
//! throttling, latency, outages, subnet capacity and address uniqueness moto lacks), both on
//! loopback (the host's, or a node namespace's so that a vswitchd in it reaches them), stopped on
//! drop. The VPC, subnet and instances are created through moto's API at start.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
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

/// One HTTP/1.1 request off `stream`: its head (lines) and body; empty if the peer said nothing.
pub fn read_request(stream: &mut TcpStream) -> (Vec<String>, Vec<u8>) {
    let mut data = Vec::new();
    let mut buf = [0; 8192];
    let end = loop {
        let n = stream.read(&mut buf).unwrap_or(0);
        if n == 0 {
            return (Vec::new(), Vec::new());
        }
        data.extend_from_slice(&buf[..n]);
        if let Some(end) = data.windows(4).position(|w| w == b"\r\n\r\n") {
            break end;
        }
    };
    let head: Vec<String> = String::from_utf8_lossy(&data[..end]).lines().map(String::from).collect();
    let length = header(&head, "content-length").map_or(0, |v| v.parse().unwrap());
    let mut body = data[end + 4..].to_vec();
    while body.len() < length {
        let n = stream.read(&mut buf).unwrap();
        body.extend_from_slice(&buf[..n]);
    }
    (head, body)
}

/// Header `name`'s value in a request's or reply's head lines.
pub fn header(head: &[String], name: &str) -> Option<String> {
    head.iter().find_map(|l| {
        l.split_once(':').filter(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.trim().to_string())
    })
}

/// A whole reply with `status` and `body`.
pub fn reply(status: &str, body: &str) -> Vec<u8> {
    format!("HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}", body.len()).into_bytes()
}

/// `application/x-www-form-urlencoded` decoded.
fn form_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let (mut out, mut i) = (Vec::new(), 0);
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                out.push(u8::from_str_radix(&text[i + 1..i + 3], 16).unwrap_or(b'?'));
                i += 2;
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// A call that went through a [`RecordingHop`]: the request and the reply it got.
#[derive(Debug, Clone)]
pub struct Recorded {
    pub head: Vec<String>,
    pub body: String,
    /// The reply's body (the hop's own when it refused the call).
    pub reply: String,
}

impl Recorded {
    pub fn header(&self, name: &str) -> Option<String> {
        header(&self.head, name)
    }

    /// The form parameter `key` of the body (Query protocol), decoded.
    pub fn param(&self, key: &str) -> Option<String> {
        self.body.split('&').find_map(|kv| kv.split_once('=').filter(|(k, _)| *k == key).map(|(_, v)| form_decode(v)))
    }

    /// The access key id SigV4's `Authorization` names (empty: unsigned).
    pub fn access_key(&self) -> String {
        let authorization = self.header("authorization").unwrap_or_default();
        authorization.split("Credential=").nth(1).and_then(|c| c.split('/').next()).unwrap_or("").to_string()
    }

    /// `X-Amz-Security-Token` (empty: none).
    pub fn session_token(&self) -> String {
        self.header("x-amz-security-token").unwrap_or_default()
    }
}

/// Edits the next reply (and may act) before the caller gets it: once.
pub type ReplyHook = Box<dyn FnOnce(&Recorded, String) -> String + Send>;

/// A hop in front of `upstream` (moto or the lab's proxy) that records every call (moto checks
/// neither signatures nor session tokens), refuses the call after `refuse_next` is set with
/// EC2's `AuthFailure` without passing it on, and lets [`RecordingHop::before_next_reply`] edit a
/// reply before the caller sees it.
pub struct RecordingHop {
    /// `http://127.0.0.1:PORT`.
    pub endpoint: String,
    seen: Arc<Mutex<Vec<Recorded>>>,
    pub refuse_next: Arc<AtomicBool>,
    hook: Arc<Mutex<Option<ReplyHook>>>,
}

impl std::fmt::Debug for RecordingHop {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RecordingHop").field("endpoint", &self.endpoint).finish_non_exhaustive()
    }
}

const AUTH_FAILURE: &str = "<Response><Errors><Error><Code>AuthFailure</Code><Message>AWS was not able to validate \
                            the provided access credentials</Message></Error></Errors><RequestID>r</RequestID></Response>";

/// `raw`'s body replaced with `body`, its `Content-Length` with the new one.
fn with_body(raw: &[u8], body: &str) -> Vec<u8> {
    let end = raw.windows(4).position(|w| w == b"\r\n\r\n").unwrap_or(raw.len());
    let head = String::from_utf8_lossy(&raw[..end]);
    let mut out = String::new();
    for line in head.lines().filter(|l| !l.to_ascii_lowercase().starts_with("content-length:")) {
        out.push_str(line);
        out.push_str("\r\n");
    }
    format!("{out}Content-Length: {}\r\n\r\n{body}", body.len()).into_bytes()
}

impl RecordingHop {
    /// On loopback, of the network namespace at `netns` if given (where `upstream` is too).
    pub fn start(netns: Option<PathBuf>, upstream: &str) -> RecordingHop {
        let upstream = upstream.strip_prefix("http://").unwrap().to_string();
        let (seen, refuse_next) = (Arc::new(Mutex::new(Vec::new())), Arc::new(AtomicBool::new(false)));
        let hook: Arc<Mutex<Option<ReplyHook>>> = Arc::new(Mutex::new(None));
        let (log, refuse, edit) = (seen.clone(), refuse_next.clone(), hook.clone());
        let (bound, port) = std::sync::mpsc::channel();
        // The namespace is the thread's: it binds and connects there.
        std::thread::spawn(move || {
            if let Some(netns) = netns {
                let file = std::fs::File::open(netns).unwrap();
                nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
            }
            let listener = TcpListener::bind("127.0.0.1:0").unwrap();
            bound.send(listener.local_addr().unwrap().port()).unwrap();
            for mut stream in listener.incoming().map_while(Result::ok) {
                let (head, body) = read_request(&mut stream);
                let mut call =
                    Recorded { head, body: String::from_utf8_lossy(&body).into_owned(), reply: String::new() };
                let raw = if refuse.swap(false, Ordering::SeqCst) {
                    reply("401 Unauthorized", AUTH_FAILURE)
                } else {
                    let mut up = TcpStream::connect(&upstream).unwrap();
                    let mut request = call.head.join("\r\n").into_bytes();
                    request.extend_from_slice(b"\r\n\r\n");
                    request.extend_from_slice(&body);
                    up.write_all(&request).unwrap();
                    let mut raw = Vec::new();
                    up.read_to_end(&mut raw).unwrap();
                    raw
                };
                let end = raw.windows(4).position(|w| w == b"\r\n\r\n").map_or(raw.len(), |e| e + 4);
                call.reply = String::from_utf8_lossy(&raw[end..]).into_owned();
                let raw = match edit.lock().unwrap().take() {
                    Some(hook) => {
                        call.reply = hook(&call, call.reply.clone());
                        with_body(&raw, &call.reply)
                    }
                    None => raw,
                };
                log.lock().unwrap().push(call);
                let _ = stream.write_all(&raw);
            }
        });
        let port = port.recv().unwrap();
        RecordingHop { endpoint: format!("http://127.0.0.1:{port}"), seen, refuse_next, hook }
    }

    /// `hook` edits the next reply (and may act, e.g. rotate a file) before the caller gets it.
    pub fn before_next_reply(&self, hook: ReplyHook) {
        *self.hook.lock().unwrap() = Some(hook);
    }

    pub fn calls(&self) -> Vec<Recorded> {
        self.seen.lock().unwrap().clone()
    }
}

/// `vswitchctl ipam` of `daemon` until `done` says yes (its view), or a panic with `what` after `limit`.
pub fn wait_for_ipam(
    daemon: &crate::netns::Daemon,
    what: &str,
    limit: Duration,
    done: impl Fn(&Value) -> bool,
) -> Value {
    let deadline = Instant::now() + limit;
    loop {
        let view = daemon.ctl_json(&["ipam"]);
        if done(&view) {
            return view;
        }
        assert!(Instant::now() < deadline, "{what}: {view:#}");
        std::thread::sleep(Duration::from_millis(200));
    }
}
