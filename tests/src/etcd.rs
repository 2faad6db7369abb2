//! A real multi-member etcd cluster (Debian's etcd 3.4) with TLS client-certificate auth, for the
//! integration tests and the lab tool: the IPAM keeps its state in etcd, so the tests need real
//! quorum loss, member restarts and certificate checks, not a mock.
//!
//! Everything lives in one unique temporary directory: the certificates (made with the openssl
//! CLI), each member's data directory and log. [`EtcdCluster::start`] puts the members on unique
//! loopback addresses in the current namespace, [`EtcdCluster::start_in`] each in a given
//! namespace. Dropping the cluster kills every member and removes the directory, also when a
//! test fails; should no `Drop` run at all (a test binary killed on timeout, `process::exit`),
//! the kernel kills the members when the process ends (see [`spawn_tied_to_process`]). A cluster
//! that must outlive its process (`vpc-lab up`) is started with [`EtcdCluster::start_in_detached`]
//! and handed over with [`EtcdCluster::detach`]: its pids and directory go to whoever removes it.

use std::fs::OpenOptions;
use std::io;
use std::net::{Ipv4Addr, TcpListener};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{mpsc, OnceLock};
use std::time::{Duration, Instant};

use base64::Engine as _;
use nix::sys::signal::{kill, Signal};
use nix::sys::wait::{waitid, Id, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;

use crate::netns::{have_tool, run, unique, TempDir};

const ETCD: &str = "/usr/bin/etcd";
const ETCDCTL: &str = "/usr/bin/etcdctl";
const CLIENT_PORT: u16 = 2379;
const PEER_PORT: u16 = 2380;
/// How long [`EtcdCluster::start`] waits for a healthy cluster (3.4 needs 1-3 s here).
const START_TIMEOUT: Duration = Duration::from_secs(20);
/// How long a stopped member gets to exit on SIGTERM before it is killed.
const STOP_TIMEOUT: Duration = Duration::from_secs(10);

/// Fails (never skips) unless etcd, etcdctl and openssl are installed.
pub fn require_etcd() {
    assert!(Path::new(ETCD).exists(), "etcd-server is not installed (tests/install-deps.sh installs it)");
    assert!(Path::new(ETCDCTL).exists(), "etcd-client is not installed (tests/install-deps.sh installs it)");
    assert!(have_tool("openssl"), "openssl is not installed (tests/install-deps.sh installs it)");
}

/// What a client needs to be let in: the cluster's CA and a client certificate signed by it
/// (CN=vswitchd). Each cluster has its own CA, so one cluster's client is refused by another.
#[derive(Debug, Clone)]
pub struct EtcdTls {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

#[derive(Debug)]
struct Member {
    name: String,
    /// The namespace under /run/netns it runs in; `None`: the current one.
    netns: Option<String>,
    ip: Ipv4Addr,
    /// Started by the harness and not stopped by it (it may have exited by itself).
    child: Option<Child>,
}

impl Member {
    fn client_url(&self) -> String {
        format!("https://{}:{CLIENT_PORT}", self.ip)
    }

    fn peer_url(&self) -> String {
        format!("https://{}:{PEER_PORT}", self.ip)
    }

    /// Whether the process has exited, without reaping it (so `&self` is enough).
    fn exited(&self) -> bool {
        self.child.as_ref().is_some_and(|c| {
            let flags = WaitPidFlag::WEXITED | WaitPidFlag::WNOHANG | WaitPidFlag::WNOWAIT;
            !matches!(waitid(Id::Pid(Pid::from_raw(c.id() as i32)), flags), Ok(WaitStatus::StillAlive))
        })
    }
}

/// A running etcd cluster, killed and removed on drop.
#[derive(Debug)]
pub struct EtcdCluster {
    members: Vec<Member>,
    tls: EtcdTls,
    /// Server and peer certificate (one for all members: its subjectAltName lists them all).
    server_cert: PathBuf,
    server_key: PathBuf,
    initial_cluster: String,
    token: String,
    /// Members run in their own session, not tied to this process (see [`EtcdCluster::detach`]).
    detached: bool,
    /// Dropped after `Drop::drop` has killed the members.
    dir: TempDir,
}

impl EtcdCluster {
    /// `members` members on unique loopback addresses 127.X.Y.(1..=members) in the current
    /// namespace (X, Y from the pid and a counter, and skipped while anything listens there, so
    /// parallel tests and processes never collide), client port 2379, peer port 2380. Returns
    /// once every member answers `endpoint health`; panics with the members' logs otherwise.
    pub fn start(members: usize) -> EtcdCluster {
        Self::start_under(members, &std::env::temp_dir())
    }

    /// [`EtcdCluster::start`] with the cluster's directory (the members' data) under `parent`:
    /// `/dev/shm` for a simulation that measures etcd's work, not this machine's disk.
    pub fn start_under(members: usize, parent: &Path) -> EtcdCluster {
        assert!((1..=254).contains(&members), "1 to 254 members, not {members}");
        require_etcd();
        let [a, x, y] = free_loopback_block(members);
        Self::launch_under((1..=members).map(|i| (None, Ipv4Addr::new(a, x, y, i as u8))).collect(), false, parent)
    }

    /// One member per entry, in namespace `netns` (a name under /run/netns, run through
    /// `ip netns exec`) listening on the given address, which the namespaces must route between
    /// (the lab: each member in its own namespace on the fabric). `etcdctl` runs in the first
    /// member's namespace. Returns once healthy, like [`EtcdCluster::start`].
    pub fn start_in(members: &[(String, Ipv4Addr)]) -> EtcdCluster {
        assert!(!members.is_empty(), "an etcd cluster needs a member");
        require_etcd();
        for (i, (_, ip)) in members.iter().enumerate() {
            assert!(!members[..i].iter().any(|(_, other)| other == ip), "two members on {ip}");
        }
        Self::launch(members.iter().map(|(ns, ip)| (Some(ns.clone()), *ip)).collect(), false)
    }

    /// [`EtcdCluster::start_in`], but the members are not tied to this process: each runs in a
    /// session of its own and lives on when the process ends, also without a `Drop`. Dropping
    /// the cluster still kills them; [`EtcdCluster::detach`] leaves them running. For
    /// `vpc-lab up`, whose lab outlives it; tests keep the tie.
    pub fn start_in_detached(members: &[(String, Ipv4Addr)]) -> EtcdCluster {
        assert!(!members.is_empty(), "an etcd cluster needs a member");
        require_etcd();
        for (i, (_, ip)) in members.iter().enumerate() {
            assert!(!members[..i].iter().any(|(_, other)| other == ip), "two members on {ip}");
        }
        Self::launch(members.iter().map(|(ns, ip)| (Some(ns.clone()), *ip)).collect(), true)
    }

    /// Leaves a detached cluster running and its directory in place; returns the members' pids
    /// and the directory, for whoever removes it later (`vpc-lab down`: kill the pids, remove
    /// the directory).
    pub fn detach(mut self) -> DetachedEtcd {
        assert!(self.detached, "only a cluster from start_in_detached outlives this process");
        let pids = self.members.iter_mut().filter_map(|m| m.child.take()).map(|c| c.id()).collect();
        let dir = std::mem::take(&mut self.dir.0);
        // Nothing is left to kill, and an empty path is nothing to remove.
        drop(self);
        DetachedEtcd { pids, dir }
    }

    fn launch(placement: Vec<(Option<String>, Ipv4Addr)>, detached: bool) -> EtcdCluster {
        Self::launch_under(placement, detached, &std::env::temp_dir())
    }

    fn launch_under(placement: Vec<(Option<String>, Ipv4Addr)>, detached: bool, parent: &Path) -> EtcdCluster {
        let dir = TempDir(parent.join(unique("vpc-etcd-")));
        std::fs::create_dir_all(&dir.0).unwrap_or_else(|e| panic!("create {}: {e}", dir.0.display()));
        let members: Vec<Member> = placement
            .into_iter()
            .enumerate()
            .map(|(i, (netns, ip))| Member { name: format!("m{i}"), netns, ip, child: None })
            .collect();
        let ips: Vec<Ipv4Addr> = members.iter().map(|m| m.ip).collect();
        let (tls, server_cert, server_key) = make_certificates(&dir.0, &ips);
        let initial_cluster =
            members.iter().map(|m| format!("{}={}", m.name, m.peer_url())).collect::<Vec<_>>().join(",");
        // Built before any member starts, so a panic from here on still kills them all.
        let mut cluster = EtcdCluster {
            members,
            tls,
            server_cert,
            server_key,
            initial_cluster,
            token: unique("vpc-etcd-"),
            detached,
            dir,
        };
        for i in 0..cluster.members.len() {
            cluster.spawn_member(i, "new");
        }
        if let Err(e) = cluster.wait_healthy(START_TIMEOUT) {
            panic!(
                "the etcd cluster in {} did not become healthy: {e}{}",
                cluster.dir().display(),
                cluster.log_tails()
            );
        }
        cluster
    }

    /// The members' client URLs, `https://ip:2379`, in member order.
    pub fn endpoints(&self) -> Vec<String> {
        self.members.iter().map(Member::client_url).collect()
    }

    pub fn tls(&self) -> &EtcdTls {
        &self.tls
    }

    /// The body of vswitchd.toml's `[ipam.etcd]` for a client of this cluster: its endpoints,
    /// the CA and the client certificate and key, and the request deadline (parse it into
    /// vswitch's `EtcdConfig` for a store made in the test itself).
    pub fn client_toml(&self, timeout_ms: u64) -> String {
        let path = |p: &Path| format!("{:?}", p.to_str().expect("UTF-8 paths"));
        format!(
            "endpoints = {:?}\nca_file = {}\ncert_file = {}\nkey_file = {}\ntimeout_ms = {timeout_ms}\n",
            self.endpoints(),
            path(&self.tls.ca),
            path(&self.tls.cert),
            path(&self.tls.key),
        )
    }

    /// The cluster's directory: `pki/`, `m<i>.data/`, `m<i>.log` (removed on drop).
    pub fn dir(&self) -> &Path {
        &self.dir.0
    }

    /// Stops member `i` the way an operator would (SIGTERM) and waits for it to exit; it is
    /// killed after 10 s.
    pub fn stop_member(&mut self, i: usize) {
        let Some(mut child) = self.members[i].child.take() else { return };
        let _ = kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM);
        let deadline = Instant::now() + STOP_TIMEOUT;
        while child.try_wait().ok().flatten().is_none() {
            if Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!("etcd member {i} ignored SIGTERM for {STOP_TIMEOUT:?}{}", self.log_tail(i));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Kills member `i` (SIGKILL, a crash) and waits for it to exit.
    pub fn kill_member(&mut self, i: usize) {
        if let Some(mut child) = self.members[i].child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Restarts stopped member `i` on its existing data directory (`--initial-cluster-state
    /// existing`). Does not wait: call [`EtcdCluster::wait_healthy`].
    pub fn start_member(&mut self, i: usize) {
        assert!(self.members[i].child.is_none(), "etcd member {i} is running");
        self.spawn_member(i, "existing");
    }

    /// Whether member `i` was started and has neither been stopped nor exited.
    pub fn is_running(&self, i: usize) -> bool {
        self.members[i].child.is_some() && !self.members[i].exited()
    }

    /// Waits until every member the harness started (and did not stop) answers `endpoint
    /// health`, which in 3.4 is a quorum read through that member. A member that exited by
    /// itself is an error (with its log), not a member to skip.
    pub fn wait_healthy(&self, timeout: Duration) -> Result<(), String> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(i) = (0..self.members.len()).find(|&i| self.members[i].exited()) {
                return Err(format!("etcd member {i} exited{}", self.log_tail(i)));
            }
            let endpoints: Vec<String> =
                self.members.iter().filter(|m| m.child.is_some()).map(Member::client_url).collect();
            if endpoints.is_empty() {
                return Err("no etcd member is running".into());
            }
            let out = self.etcdctl_on(&endpoints, &["--command-timeout=2s", "endpoint", "health"]);
            if out.status.success() {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(format!(
                    "not healthy after {timeout:?}: {}{}",
                    String::from_utf8_lossy(&out.stdout).trim(),
                    String::from_utf8_lossy(&out.stderr).trim()
                ));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// `etcdctl` (API v3) with the client certificate and every member as endpoint, in the first
    /// member's namespace when [`EtcdCluster::start_in`] made the cluster.
    pub fn etcdctl(&self, args: &[&str]) -> Output {
        self.etcdctl_on(&self.endpoints(), args)
    }

    /// `etcdctl` against member `i` alone: with `--consistency=s`, reads show that member's copy.
    pub fn etcdctl_member(&self, i: usize, args: &[&str]) -> Output {
        self.etcdctl_on(&[self.members[i].client_url()], args)
    }

    fn etcdctl_on(&self, endpoints: &[String], args: &[&str]) -> Output {
        let mut cmd = self.command(self.members[0].netns.as_deref(), ETCDCTL);
        cmd.env("ETCDCTL_API", "3")
            .arg(format!("--endpoints={}", endpoints.join(",")))
            .arg("--cacert")
            .arg(&self.tls.ca)
            .arg("--cert")
            .arg(&self.tls.cert)
            .arg("--key")
            .arg(&self.tls.key)
            .args(args)
            .stdin(Stdio::null());
        cmd.output().unwrap_or_else(|e| panic!("run etcdctl: {e}"))
    }

    /// Every key under `prefix` with its value, in key order (a linearizable read).
    pub fn get_prefix(&self, prefix: &str) -> Vec<(String, String)> {
        let out = self.etcdctl(&["get", "--prefix", "-w", "json", "--", prefix]);
        assert!(out.status.success(), "etcdctl get --prefix {prefix}: {}", String::from_utf8_lossy(&out.stderr));
        let reply: serde_json::Value = serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("etcdctl get: {e}: {}", String::from_utf8_lossy(&out.stdout)));
        // Keys and values are bytes, which etcdctl's JSON writes in base64; no `kvs` when none.
        let decode = |v: &serde_json::Value| {
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(v.as_str().unwrap_or_default())
                .unwrap_or_else(|e| panic!("etcdctl get: {v} is not base64: {e}"));
            String::from_utf8_lossy(&bytes).into_owned()
        };
        reply["kvs"]
            .as_array()
            .map_or(&[][..], Vec::as_slice)
            .iter()
            .map(|kv| (decode(&kv["key"]), decode(&kv["value"])))
            .collect()
    }

    /// Writes `key`; panics with etcdctl's error if it fails.
    pub fn put(&self, key: &str, value: &str) {
        let out = self.etcdctl(&["put", "--", key, value]);
        assert!(out.status.success(), "etcdctl put {key}: {}", String::from_utf8_lossy(&out.stderr));
    }

    /// Member `i`'s Prometheus figures (`GET /metrics` on its client URL, with the client
    /// certificate, through curl), for the benchmarks that read etcd's own counters.
    pub fn metrics(&self, i: usize) -> Result<String, String> {
        let m = &self.members[i];
        let mut cmd = self.command(m.netns.as_deref(), "curl");
        cmd.args(["-sS", "--max-time", "10", "--cacert"])
            .arg(&self.tls.ca)
            .arg("--cert")
            .arg(&self.tls.cert)
            .arg("--key")
            .arg(&self.tls.key)
            .arg(format!("{}/metrics", m.client_url()))
            .stdin(Stdio::null());
        let out = cmd.output().map_err(|e| format!("run curl: {e}"))?;
        if !out.status.success() {
            return Err(format!("curl {}/metrics: {}", m.client_url(), String::from_utf8_lossy(&out.stderr).trim()));
        }
        String::from_utf8(out.stdout).map_err(|e| format!("{}/metrics: {e}", m.client_url()))
    }

    fn command(&self, netns: Option<&str>, program: &str) -> Command {
        let mut cmd = match netns {
            Some(ns) => {
                let mut cmd = Command::new("ip");
                cmd.args(["netns", "exec", ns, program]);
                cmd
            }
            None => Command::new(program),
        };
        // etcd and etcdctl take ETCD_* / ETCDCTL_* variables as flags, and etcdctl refuses a flag
        // given both ways: only the harness's flags count.
        for (var, _) in std::env::vars_os() {
            if var.to_string_lossy().starts_with("ETCD") {
                cmd.env_remove(var);
            }
        }
        cmd
    }

    fn spawn_member(&mut self, i: usize, state: &str) {
        let m = &self.members[i];
        let log_path = self.log_path(i);
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .unwrap_or_else(|e| panic!("open {}: {e}", log_path.display()));
        let mut cmd = self.command(m.netns.as_deref(), ETCD);
        cmd.args(["--name", &m.name])
            .arg("--data-dir")
            .arg(self.dir.0.join(format!("{}.data", m.name)))
            .args(["--listen-client-urls", &m.client_url(), "--advertise-client-urls", &m.client_url()])
            .args(["--listen-peer-urls", &m.peer_url(), "--initial-advertise-peer-urls", &m.peer_url()])
            .args(["--initial-cluster", &self.initial_cluster, "--initial-cluster-state", state])
            .args(["--initial-cluster-token", &self.token])
            .arg("--cert-file")
            .arg(&self.server_cert)
            .arg("--key-file")
            .arg(&self.server_key)
            .arg("--trusted-ca-file")
            .arg(&self.tls.ca)
            .arg("--client-cert-auth")
            .arg("--peer-cert-file")
            .arg(&self.server_cert)
            .arg("--peer-key-file")
            .arg(&self.server_key)
            .arg("--peer-trusted-ca-file")
            .arg(&self.tls.ca)
            .arg("--peer-client-cert-auth")
            // Elections within a second, so tests of a lost leader stay short.
            .args(["--heartbeat-interval", "50", "--election-timeout", "500"])
            .args(["--logger", "zap", "--log-outputs", "stderr"])
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("clone the log file"))
            .stderr(log);
        let child = if self.detached { spawn_detached(cmd) } else { spawn_tied_to_process(cmd) }
            .unwrap_or_else(|e| panic!("start etcd member {i}: {e}"));
        self.members[i].child = Some(child);
    }

    fn log_path(&self, i: usize) -> PathBuf {
        self.dir.0.join(format!("{}.log", self.members[i].name))
    }

    /// The last lines of member `i`'s log, for a panic message (the directory goes with the drop).
    fn log_tail(&self, i: usize) -> String {
        let path = self.log_path(i);
        let text = std::fs::read_to_string(&path).unwrap_or_else(|e| format!("({}: {e})", path.display()));
        let lines: Vec<&str> = text.lines().collect();
        format!(
            "\n--- the last lines of {} ---\n{}",
            path.display(),
            lines[lines.len().saturating_sub(15)..].join("\n")
        )
    }

    fn log_tails(&self) -> String {
        (0..self.members.len()).map(|i| self.log_tail(i)).collect()
    }
}

impl Drop for EtcdCluster {
    fn drop(&mut self) {
        for i in 0..self.members.len() {
            self.kill_member(i);
        }
    }
}

/// The first free block 127.X.Y.0/24 (X in 1..=254, so never 127.0.0.1) of a sequence that starts
/// from the pid and steps with a per-process counter: distinct within the process, apart by 97
/// blocks between neighbouring pids, and skipped while anything listens on a member's ports.
fn free_loopback_block(members: usize) -> [u8; 3] {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    const BLOCKS: u32 = 254 * 256;
    let start = std::process::id().wrapping_mul(97);
    for _ in 0..1000 {
        let block = start.wrapping_add(NEXT.fetch_add(1, Ordering::Relaxed)) % BLOCKS;
        let (x, y) = ((1 + block / 256) as u8, (block % 256) as u8);
        let free = (1..=members).all(|i| {
            let ip = Ipv4Addr::new(127, x, y, i as u8);
            TcpListener::bind((ip, CLIENT_PORT)).is_ok() && TcpListener::bind((ip, PEER_PORT)).is_ok()
        });
        if free {
            return [127, x, y];
        }
    }
    panic!("no free loopback block for an etcd cluster after 1000 tries");
}

/// What [`EtcdCluster::detach`] leaves behind: running members and their directory.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct DetachedEtcd {
    pub pids: Vec<u32>,
    pub dir: PathBuf,
}

/// Starts `cmd` in a session of its own, so it outlives this process and no signal for this
/// process's terminal or group reaches it.
fn spawn_detached(mut cmd: Command) -> io::Result<Child> {
    // SAFETY: the closure runs in the forked child before exec and makes only the setsid system
    // call, which is async-signal-safe; it takes no lock and allocates nothing.
    unsafe {
        cmd.pre_exec(|| nix::unistd::setsid().map(drop).map_err(io::Error::from));
    }
    cmd.spawn()
}

/// A CA, one server and peer certificate for every member (subjectAltName: their addresses,
/// 127.0.0.1 and localhost; serverAuth and clientAuth, as members dial each other with it) and a
/// client certificate CN=vswitchd. EC P-256: three `openssl req` calls take some 30 ms.
fn make_certificates(dir: &Path, ips: &[Ipv4Addr]) -> (EtcdTls, PathBuf, PathBuf) {
    let pki = dir.join("pki");
    std::fs::create_dir_all(&pki).unwrap_or_else(|e| panic!("create {}: {e}", pki.display()));
    let mut san = vec!["IP:127.0.0.1".to_string(), "DNS:localhost".into()];
    san.extend(ips.iter().map(|ip| format!("IP:{ip}")));
    // Every extension spelled out here, so the result does not depend on the system openssl.cnf.
    let config = format!(
        "[req]\ndistinguished_name = dn\n[dn]\n\
         [ca]\nbasicConstraints = critical, CA:TRUE\nkeyUsage = critical, keyCertSign, cRLSign\n\
         subjectKeyIdentifier = hash\n\
         [server]\nbasicConstraints = critical, CA:FALSE\nkeyUsage = critical, digitalSignature\n\
         extendedKeyUsage = serverAuth, clientAuth\nsubjectAltName = {}\n\
         [client]\nbasicConstraints = critical, CA:FALSE\nkeyUsage = critical, digitalSignature\n\
         extendedKeyUsage = clientAuth\n",
        san.join(", ")
    );
    let config_path = pki.join("openssl.cnf");
    std::fs::write(&config_path, config).unwrap_or_else(|e| panic!("write {}: {e}", config_path.display()));
    let path = |name: &str| pki.join(name);
    let (ca, ca_key) = (path("ca.pem"), path("ca-key.pem"));
    let issue = |cert: &Path, key: &Path, subject: &str, section: &str, signed_by_ca: bool| {
        let mut args: Vec<&str> = vec!["openssl", "req", "-x509", "-new", "-nodes", "-newkey", "ec"];
        args.extend(["-pkeyopt", "ec_paramgen_curve:prime256v1", "-days", "3650", "-subj", subject]);
        args.extend(["-config", config_path.to_str().unwrap(), "-extensions", section]);
        args.extend(["-keyout", key.to_str().unwrap(), "-out", cert.to_str().unwrap()]);
        if signed_by_ca {
            args.extend(["-CA", ca.to_str().unwrap(), "-CAkey", ca_key.to_str().unwrap()]);
        }
        run(&args);
    };
    issue(&ca, &ca_key, "/CN=vpc-lab etcd CA", "ca", false);
    let (server_cert, server_key) = (path("server.pem"), path("server-key.pem"));
    issue(&server_cert, &server_key, "/CN=etcd", "server", true);
    let tls = EtcdTls { ca: ca.clone(), cert: path("client.pem"), key: path("client-key.pem") };
    issue(&tls.cert, &tls.key, "/CN=vswitchd", "client", true);
    (tls, server_cert, server_key)
}

type SpawnRequest = (Command, mpsc::Sender<io::Result<Child>>);

/// Starts `cmd` so that the kernel SIGKILLs it when this process ends, also when no `Drop` runs
/// (a test binary killed on timeout, `process::exit`, an abort). PR_SET_PDEATHSIG fires when the
/// *thread* that forked exits, so every member is forked by one thread that lives as long as the
/// process, not by the (short-lived) test thread. `ip netns exec` execs etcd in place, keeping it.
fn spawn_tied_to_process(mut cmd: Command) -> io::Result<Child> {
    static SPAWNER: OnceLock<mpsc::Sender<SpawnRequest>> = OnceLock::new();
    let spawner = SPAWNER.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<SpawnRequest>();
        std::thread::Builder::new()
            .name("etcd-spawner".into())
            .spawn(move || {
                for (mut cmd, reply) in rx {
                    let _ = reply.send(cmd.spawn());
                }
            })
            .expect("start the etcd spawner thread");
        tx
    });
    // SAFETY: the closure runs in the forked child before exec and makes only the prctl system
    // call, which is async-signal-safe; it takes no lock and allocates nothing.
    unsafe {
        cmd.pre_exec(|| nix::sys::prctl::set_pdeathsig(Signal::SIGKILL).map_err(io::Error::from));
    }
    let (tx, rx) = mpsc::channel();
    spawner.send((cmd, tx)).map_err(|_| io::Error::other("the etcd spawner thread is gone"))?;
    rx.recv().map_err(|_| io::Error::other("the etcd spawner thread is gone"))?
}
