//! The lab's VPC API server in this process on 127.0.0.1, without a fabric (the flow table is
//! kept in memory): for the product's tests of its client, which need neither root nor
//! namespaces.

use std::path::Path;
use std::time::{Duration, Instant};

use super::server::{run, ServerArgs};
use super::vpc::{Credential, Faults, NicConfig, SubnetConfig, VpcConfig};

/// A VPC `uvnet-t` in region `cn-lab`, zone `cn-lab-01`, project `org-lab`, with one subnet
/// `subnet-t` (10.0.0.0/24, secondary IPs from 10.0.0.100/30: two free), the NICs `(mac,
/// host id)` and the key pair `pub`/`priv`.
pub fn small_vpc(nics: &[(&str, &str)]) -> VpcConfig {
    VpcConfig {
        region: "cn-lab".into(),
        zone: "cn-lab-01".into(),
        project_id: "org-lab".into(),
        vpc_id: "uvnet-t".into(),
        subnets: vec![SubnetConfig {
            subnet_id: "subnet-t".into(),
            cidr: "10.0.0.0/24".into(),
            gateway: "10.0.0.1".parse().expect("an address"),
            ipv6_cidr: None,
            ipv6_gateway: None,
            pool: Some("10.0.0.100/30".into()),
        }],
        nics: nics
            .iter()
            .enumerate()
            .map(|(i, (mac, host))| NicConfig {
                mac: mac.to_string(),
                object_id: host.to_string(),
                interface_id: None,
                subnet_id: "subnet-t".into(),
                port: format!("p{}", i + 1),
                primary: vec![],
            })
            .collect(),
        fixed_hosts: vec![],
        credentials: vec![Credential { public_key: "pub".into(), private_key: "priv".into() }],
        gateway_port: None,
        secondary_quota: 8,
        faults: Faults::default(),
    }
}

/// Serves `vpc` on a free port of 127.0.0.1 from a thread of this process (its configuration
/// and control socket in `dir`); returns the port once it accepts connections.
pub fn serve(vpc: &VpcConfig, dir: &Path) -> u16 {
    let port = std::net::TcpListener::bind("127.0.0.1:0").expect("a free port").local_addr().expect("bound").port();
    let config = dir.join("vpc.json");
    std::fs::write(&config, serde_json::to_vec(vpc).expect("serialisable")).expect("write vpc.json");
    let args =
        ServerArgs { config, listen: ([127, 0, 0, 1], port).into(), control: dir.join("control.sock"), fabric: None };
    std::thread::spawn(move || run(args));
    let started = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(started.elapsed() < Duration::from_secs(10), "the lab's VPC API did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
    port
}
