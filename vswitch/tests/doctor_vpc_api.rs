//! `vswitchctl doctor` in provider mode against the lab's VPC API server (UCloud's dialect, in
//! this process on 127.0.0.1, no fabric): accepted keys pass, a wrong private key fails naming the
//! refused credentials and their files, a closed port fails as unreachable. No root needed.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

use serde_json::Value;
use vpc_lab::lab::vpc_api::local::{serve, small_vpc};
use vpc_lab::netns::TempDir;

const CTL: &str = env!("CARGO_BIN_EXE_vswitchctl");

fn doctor(toml: &Path, conflist: &Path) -> BTreeMap<String, (String, String)> {
    let out = Command::new(CTL)
        .args(["--json", "doctor", "--config"])
        .arg(toml)
        .arg("--conflist")
        .arg(conflist)
        .output()
        .unwrap();
    let list: Value = serde_json::from_slice(&out.stdout).unwrap();
    list.as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                c["check"].as_str().unwrap().into(),
                (c["status"].as_str().unwrap().into(), c["detail"].as_str().unwrap().into()),
            )
        })
        .collect()
}

fn toml(dir: &Path, name: &str, port: u16, private_key: &str) -> std::path::PathBuf {
    let text = format!(
        r#"socket = "{socket}"
[ipam]
provider = "ucloud"
pools = ["10.0.0.0/24"]
[ipam.ucloud]
endpoint = "http://127.0.0.1:{port}"
region = "cn-lab"
zone = "cn-lab-01"
project = "org-lab"
vpc_id = "uvnet-t"
subnet_id = "subnet-t"
nic_mac = "52:54:00:00:00:01"
host_id = "uhost-1"
public_key_file = "{public}"
private_key_file = "{private}"
"#,
        socket = dir.join("no.sock").display(),
        public = dir.join("public_key").display(),
        private = dir.join(private_key).display(),
    );
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

#[test]
fn doctor_checks_the_vpc_apis_credentials_and_reachability() {
    let dir = TempDir::new();
    let port = serve(&small_vpc(&[("52:54:00:00:00:01", "uhost-1")]), &dir.0);
    std::fs::write(dir.0.join("public_key"), "pub\n").unwrap();
    std::fs::write(dir.0.join("private_key"), "priv\n").unwrap();
    std::fs::write(dir.0.join("wrong_key"), "not-the-key\n").unwrap();
    let conflist = dir.0.join("none.conflist");

    let checks = doctor(&toml(&dir.0, "good.toml", port, "private_key"), &conflist);
    let (status, detail) = &checks["vpc_api"];
    assert_eq!(status, "ok", "{detail}");
    assert!(detail.contains("credentials accepted") && detail.contains("2 free addresses"), "{detail}");

    let checks = doctor(&toml(&dir.0, "wrong.toml", port, "wrong_key"), &conflist);
    let (status, detail) = &checks["vpc_api"];
    assert_eq!(status, "fail", "{detail}");
    assert!(detail.contains("refused the credentials") && detail.contains("wrong_key"), "{detail}");

    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let checks = doctor(&toml(&dir.0, "closed.toml", closed, "private_key"), &conflist);
    let (status, detail) = &checks["vpc_api"];
    assert_eq!(status, "fail", "{detail}");
    assert!(detail.contains("is unreachable"), "{detail}");
}
