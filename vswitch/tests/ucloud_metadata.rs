//! vswitchd on a UCloud node whose `[ipam.ucloud]` leaves `nic_mac` and `host_id` out (one
//! DaemonSet config for every node): it asks a fake UHost metadata service for the instance
//! document at UCloud's path (`/meta-data/v1.json`, shaped as ucloud-sdk-go's fixture: two NICs,
//! the primary one marked `"default": true` and listed second), and allocates the warm pool
//! through the lab's VPC API, which accepts `AllocateSecondaryIp` only for the NIC's own MAC and
//! host id. A metadata service without that path: the IPAM does not start, vswitchd exits naming
//! what it could not learn. Both servers run on a node namespace's loopback. Needs root.

use std::io::{Read, Write};
use std::net::TcpListener;
use std::path::Path;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use vpc_lab::lab::vpc_api::local::{serve, small_vpc};
use vpc_lab::netns::{require_root, Binaries, Daemon, Netns, TempDir};

const PRIMARY_MAC: &str = "52:54:00:71:04:E1";
const OTHER_MAC: &str = "52:54:00:71:04:E2";
const HOST: &str = "uhost-hhqeihh5";

fn bins() -> Binaries {
    Binaries { vswitchd: env!("CARGO_BIN_EXE_vswitchd").into(), vswitchctl: env!("CARGO_BIN_EXE_vswitchctl").into() }
}

/// The instance document as the UHost metadata service serves it (the fields UK8S reads).
fn document() -> Value {
    let nic = |default: bool, mac: &str, ip: &str| {
        json!({"default": default, "id": "", "mac": mac, "subnet-id": "subnet-t", "vpc-id": "uvnet-t",
               "ips": [{"ip-address": ip, "type": "Private"}]})
    };
    json!({
        "availability-zone": "cn-lab-01", "cloud-name": "ucloud", "instance-id": HOST,
        "local-hostname": "10-0-0-10", "platform": "uhost", "region": "cn-lab",
        "uhost": {"uhost-id": HOST, "project-id": "org-lab", "zone": "cn-lab-01",
                  "network-interfaces": [nic(false, OTHER_MAC, "10.0.0.11"), nic(true, PRIMARY_MAC, "10.0.0.10")]},
    })
}

/// Runs `f` on a thread in `netns` (setns is per thread; threads it spawns stay there too).
fn in_netns<T: Send + 'static>(netns: &Path, f: impl FnOnce() -> T + Send + 'static) -> T {
    let file = std::fs::File::open(netns).unwrap();
    std::thread::spawn(move || {
        nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
        f()
    })
    .join()
    .unwrap()
}

/// A metadata service on the namespace's loopback: `document` at UCloud's path (404 when
/// `None`), 404 for anything else. Returns its endpoint and the paths it was asked for.
fn metadata_service(node: &Netns, document: Option<Value>) -> (String, Arc<Mutex<Vec<String>>>) {
    let asked = Arc::new(Mutex::new(Vec::new()));
    let log = asked.clone();
    let port = in_netns(&node.path(), move || {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        std::thread::spawn(move || {
            for mut stream in listener.incoming().map_while(Result::ok) {
                let mut buf = [0; 4096];
                let n = stream.read(&mut buf).unwrap_or(0);
                let request = String::from_utf8_lossy(&buf[..n]).to_string();
                let path = request.split_whitespace().nth(1).unwrap_or("").to_string();
                log.lock().unwrap().push(path.clone());
                let (status, body) = match (&document, path.as_str()) {
                    (Some(doc), "/meta-data/v1.json") => ("200 OK", doc.to_string()),
                    _ => ("404 Not Found", "404 page not found".to_string()),
                };
                let reply = format!("HTTP/1.1 {status}\r\nContent-Length: {}\r\n\r\n{body}", body.len());
                let _ = stream.write_all(reply.as_bytes());
            }
        });
        port
    });
    (format!("http://127.0.0.1:{port}"), asked)
}

/// The lab's VPC API on the namespace's loopback, knowing only the primary NIC (of `HOST`).
fn vpc_api(node: &Netns, dir: &Path) -> u16 {
    let dir = dir.to_path_buf();
    in_netns(&node.path(), move || serve(&small_vpc(&[(&PRIMARY_MAC.to_ascii_lowercase(), HOST)]), &dir))
}

fn config(dir: &Path, api_port: u16, metadata: &str) -> String {
    std::fs::write(dir.join("public_key"), "pub\n").unwrap();
    std::fs::write(dir.join("private_key"), "priv\n").unwrap();
    format!(
        r#"[ipam]
provider = "ucloud"
[ipam.ucloud]
endpoint = "http://127.0.0.1:{api_port}"
region = "cn-lab"
zone = "cn-lab-01"
project = "org-lab"
vpc_id = "uvnet-t"
subnet_id = "subnet-t"
public_key_file = "{public}"
private_key_file = "{private}"
metadata_endpoint = "{metadata}"
warm_low = 1
warm_high = 1
fabric_probe_timeout_ms = 0
"#,
        public = dir.join("public_key").display(),
        private = dir.join("private_key").display(),
    )
}

/// A node namespace with the lab's VPC API and a metadata service serving `document`, and the
/// vswitchd.toml for them.
struct UcloudNode {
    node: Netns,
    dir: TempDir,
    config: String,
    metadata: String,
    asked: Arc<Mutex<Vec<String>>>,
}

fn ucloud_node(prefix: &str, document: Option<Value>) -> UcloudNode {
    require_root();
    let dir = TempDir::new();
    let node = Netns::new(prefix);
    let api_port = vpc_api(&node, &dir.0);
    let (metadata, asked) = metadata_service(&node, document);
    let config = config(&dir.0, api_port, &metadata);
    UcloudNode { node, dir, config, metadata, asked }
}

#[test]
fn vswitchd_learns_its_nic_and_host_from_the_metadata_service() {
    let UcloudNode { node, dir, config, metadata, asked } = &ucloud_node("vucm", Some(document()));
    let daemon = Daemon::start_with_config(&bins(), node, &dir.0.join("vswitchd"), 1, config);

    // The warm pool fills only if AllocateSecondaryIp named the lab NIC's own MAC and host id.
    let deadline = Instant::now() + Duration::from_secs(30);
    let view = loop {
        let view = daemon.ctl_json(&["ipam"]);
        if view["provider"]["warm"].as_array().is_some_and(|w| w.len() == 1) {
            break view;
        }
        assert!(Instant::now() < deadline, "the warm pool did not fill: {view:#}");
        std::thread::sleep(Duration::from_millis(200));
    };
    let p = &view["provider"];
    assert_eq!(p["nic"], PRIMARY_MAC.to_ascii_lowercase(), "the NIC marked default, not the first: {view:#}");
    let identity = p["identity"].as_str().unwrap_or_default();
    assert!(identity.contains(HOST) && identity.contains(&format!("metadata {metadata}")), "{view:#}");
    assert_eq!(*asked.lock().unwrap(), ["/meta-data/v1.json"], "asked once, at start, at UCloud's path");
    let text = daemon.ctl(&["ipam"]);
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(text.contains(&format!("node: host {HOST}, NIC {}", PRIMARY_MAC.to_ascii_lowercase())), "{text}");
}

#[test]
fn without_the_metadata_path_the_ipam_refuses_to_start_and_says_why() {
    let UcloudNode { node, dir, config, metadata, asked } = &ucloud_node("vucn", None);
    let toml = dir.0.join("vswitchd.toml");
    std::fs::write(&toml, config).unwrap();
    let mut child = Command::new("ip")
        .args(["netns", "exec", &node.name, env!("CARGO_BIN_EXE_vswitchd"), "--config"])
        .arg(&toml)
        .arg("--socket")
        .arg(dir.0.join("vswitchd.sock"))
        .arg("--state-dir")
        .arg(dir.0.join("state"))
        .args(["--host-port", "vsw0", "--workers", "1", "--metrics-addr", "127.0.0.1:9477"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("vswitchd kept running without its node's identity");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let out = child.wait_with_output().unwrap();
    assert!(!out.status.success());
    let said = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(
        said.contains("nic_mac and host_id are not set")
            && said.contains(&format!("GET {metadata}/meta-data/v1.json"))
            && said.contains("HTTP status 404"),
        "{said}"
    );
    // A 404 is an answer: asked once, not retried.
    assert_eq!(*asked.lock().unwrap(), ["/meta-data/v1.json"]);
}
