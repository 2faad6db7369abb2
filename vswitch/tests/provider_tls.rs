//! The providers' `https://` against a real TLS server: the lab's EC2 proxy (tests/src/ec2_lab.py)
//! serving TLS with a certificate this test makes (openssl CLI), in front of moto (vpc_lab::ec2).
//! With `ca_file` naming the CA that signed it the EC2 client works; without it (Mozilla's roots),
//! with another CA, or under a name the certificate does not carry, every call fails with the
//! TLS error said. Needs the tests' venv with moto (tests/install-deps.sh) and openssl.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use vpc_lab::ec2::{Ec2Lab, REGION};
use vpc_lab::lab::vpc_api::SDK_VENV;
use vswitch::ipam::provider::aws::config::AwsConfig;
use vswitch::ipam::provider::aws::credentials::Credentials;
use vswitch::ipam::provider::aws::Ec2;
use vswitch::ipam::provider::config::UCloudConfig;
use vswitch::ipam::provider::ucloud::UCloud;
use vswitch::ipam::provider::ucloud_metadata;
use vswitch::ipam::provider::{ProviderError, VpcProvider};

const PROXY: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/src/ec2_lab.py");

/// `openssl` with `args` split at spaces (the paths are a temporary directory's: none in them).
fn openssl(args: &str) {
    let out = Command::new("openssl").args(args.split(' ')).output().expect("openssl");
    assert!(out.status.success(), "openssl {args}: {}", String::from_utf8_lossy(&out.stderr));
}

/// A CA named `name` in `dir`: (certificate, key).
fn ca(dir: &Path, name: &str) -> (PathBuf, PathBuf) {
    let (cert, key) = (dir.join(format!("{name}.crt")), dir.join(format!("{name}.key")));
    openssl(&format!(
        "req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 1 -subj /CN={name} \
         -addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign -keyout {} -out {}",
        key.display(),
        cert.display()
    ));
    (cert, key)
}

/// A server certificate for `localhost` only, signed by `ca`: (certificate, key).
fn server_cert(dir: &Path, (ca_cert, ca_key): &(PathBuf, PathBuf)) -> (PathBuf, PathBuf) {
    let (cert, key, csr, ext) =
        (dir.join("server.crt"), dir.join("server.key"), dir.join("server.csr"), dir.join("server.ext"));
    std::fs::write(&ext, "subjectAltName=DNS:localhost\nextendedKeyUsage=serverAuth\nbasicConstraints=CA:FALSE\n")
        .unwrap();
    openssl(&format!(
        "req -new -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -subj /CN=localhost -keyout {} -out {}",
        key.display(),
        csr.display()
    ));
    openssl(&format!(
        "x509 -req -in {} -CA {} -CAkey {} -CAcreateserial -days 1 -extfile {} -out {}",
        csr.display(),
        ca_cert.display(),
        ca_key.display(),
        ext.display(),
        cert.display()
    ));
    (cert, key)
}

/// The lab's proxy serving TLS on loopback in front of `upstream`; killed on drop.
struct TlsProxy {
    child: Child,
    port: u16,
}

impl TlsProxy {
    fn start(upstream: &str, (cert, key): &(PathBuf, PathBuf)) -> TlsProxy {
        let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let child = Command::new(format!("{SDK_VENV}/bin/python"))
            .args([PROXY, "proxy", "--listen", &format!("127.0.0.1:{port}"), "--upstream", upstream])
            .arg("--tls-cert")
            .arg(cert)
            .arg("--tls-key")
            .arg(key)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .spawn()
            .expect("start the TLS proxy");
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "the TLS proxy did not come up");
            std::thread::sleep(Duration::from_millis(100));
        }
        TlsProxy { child, port }
    }
}

impl Drop for TlsProxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn ec2(lab: &Ec2Lab, endpoint: &str, ca_file: Option<&Path>) -> Ec2 {
    let mut config: AwsConfig = toml::from_str(&format!(
        "region = \"{REGION}\"\nsubnet_id = \"{}\"\ninstance_id = \"{}\"\nendpoint = \"{endpoint}\"",
        lab.subnet, lab.instances[0]
    ))
    .unwrap();
    config.ca_file = ca_file.map(Path::to_path_buf);
    let credentials = Credentials {
        access_key_id: "AKIDLAB".into(),
        secret_access_key: "lab-secret".into(),
        session_token: None,
        source: "test".into(),
    };
    Ec2::with_credentials(&config, credentials).unwrap()
}

/// What a call through the client comes to: the TLS error's text, or None on success.
async fn failure(client: &Ec2) -> Option<String> {
    match client.describe().await {
        Ok(_) => None,
        Err(ProviderError::Unavailable(message)) => Some(message),
        Err(other) => panic!("a TLS failure is the API being unavailable, not {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_endpoints_are_checked_against_ca_file() {
    let dir = tempfile::tempdir().unwrap();
    let lab_ca = ca(dir.path(), "lab-ca");
    let other_ca = ca(dir.path(), "other-ca");
    let server = server_cert(dir.path(), &lab_ca);
    let lab = Ec2Lab::start(None, "t3.medium", 1);
    let proxy = TlsProxy::start(&lab.endpoint, &server);
    let by_name = format!("https://localhost:{}", proxy.port);

    let trusted = ec2(&lab, &by_name, Some(&lab_ca.0));
    assert_eq!(failure(&trusted).await, None, "the lab's CA in ca_file: the call goes through");
    assert!(lab.total_calls() > 0, "the calls reached EC2 through the TLS proxy");

    let system = failure(&ec2(&lab, &by_name, None)).await.expect("Mozilla's roots do not know the lab's CA");
    assert!(system.contains("TLS") && system.contains("UnknownIssuer"), "{system}");

    let wrong_ca = failure(&ec2(&lab, &by_name, Some(&other_ca.0))).await.expect("another CA in ca_file");
    assert!(wrong_ca.contains("UnknownIssuer"), "{wrong_ca}");

    // The same server under an address its certificate does not name.
    let by_address = format!("https://127.0.0.1:{}", proxy.port);
    let wrong_name = failure(&ec2(&lab, &by_address, Some(&lab_ca.0))).await.expect("a name the certificate lacks");
    assert!(wrong_name.contains("NotValidForName") || wrong_name.contains("not valid for name"), "{wrong_name}");
    eprintln!("without ca_file: {system}\nanother CA: {wrong_ca}\nanother name: {wrong_name}");
}

/// `[ipam.ucloud]` takes the same `ca_file`: a missing or empty one is refused at setup, naming it.
#[test]
fn ucloud_ca_file_is_read_at_setup() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("public_key"), "pub").unwrap();
    std::fs::write(dir.path().join("private_key"), "priv").unwrap();
    std::fs::write(dir.path().join("empty.pem"), "").unwrap();
    let config = |ca_file: &str| -> UCloudConfig {
        toml::from_str(&format!(
            "endpoint = \"https://api.ucloud.cn\"\nca_file = \"{ca_file}\"\nregion = \"cn-bj2\"\nzone = \"cn-bj2-02\"\n\
             project = \"org-1\"\nvpc_id = \"uvnet-1\"\nsubnet_id = \"subnet-1\"\nnic_mac = \"52:54:00:00:00:01\"\n\
             host_id = \"uhost-1\"\npublic_key_file = \"{0}/public_key\"\nprivate_key_file = \"{0}/private_key\"",
            dir.path().display()
        ))
        .unwrap()
    };
    let lab_ca = ca(dir.path(), "lab-ca");
    let identity = |c: &UCloudConfig| ucloud_metadata::configured(c).expect("nic_mac and host_id are set");
    let good = config(lab_ca.0.to_str().unwrap());
    assert!(UCloud::new(&good, identity(&good)).is_ok());
    for bad in ["/nonexistent/ca.pem".to_string(), dir.path().join("empty.pem").display().to_string()] {
        let bad_config = config(&bad);
        let error = UCloud::new(&bad_config, identity(&bad_config)).unwrap_err().to_string();
        assert!(error.starts_with("ipam.ucloud: ca_file") && error.contains(&bad), "{error}");
    }
}
