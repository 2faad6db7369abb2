//! The etcd harness against real TLS clusters of Debian's etcd: quorum kept with one member of
//! three gone and lost with two, restarted members catching up, a client without a certificate
//! refused, clusters side by side not colliding, members in their own namespaces. Needs root,
//! like every test here.

use std::net::{Ipv4Addr, TcpListener};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use vpc_lab::etcd::EtcdCluster;
use vpc_lab::netns::{require_root, Netns};

fn text(out: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

/// A put right after the leader died may have been forwarded to it and then waits out its timeout
/// (etcd 3.4 does not fail it early); retried, it must go through within `timeout`.
fn put_within(cluster: &EtcdCluster, key: &str, value: &str, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    loop {
        let out = cluster.etcdctl(&["--command-timeout=2s", "put", key, value]);
        if out.status.success() {
            return;
        }
        assert!(Instant::now() < deadline, "put {key} failed for {timeout:?}: {}", text(&out));
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The keys under `prefix` in member `i`'s own copy (a serializable read of that member alone).
fn member_keys(cluster: &EtcdCluster, i: usize, prefix: &str) -> Vec<String> {
    let out = cluster
        .etcdctl_member(i, &["--command-timeout=2s", "get", "--consistency=s", "--prefix", "--keys-only", prefix]);
    assert!(out.status.success(), "member {i}: get: {}", text(&out));
    String::from_utf8_lossy(&out.stdout).lines().filter(|l| !l.is_empty()).map(String::from).collect()
}

/// etcdctl against `cluster` with only a CA (no client certificate), or with another cluster's.
fn etcdctl_as(cluster: &EtcdCluster, cert: Option<&EtcdCluster>, args: &[&str]) -> Output {
    let mut cmd = Command::new("etcdctl");
    cmd.env("ETCDCTL_API", "3")
        .arg(format!("--endpoints={}", cluster.endpoints().join(",")))
        .arg("--cacert")
        .arg(&cluster.tls().ca)
        .args(["--command-timeout=2s", "--dial-timeout=2s"]);
    if let Some(other) = cert {
        cmd.arg("--cert").arg(&other.tls().cert).arg("--key").arg(&other.tls().key);
    }
    cmd.args(args).output().expect("run etcdctl")
}

#[test]
fn three_members_keep_quorum_lose_it_and_recover() {
    require_root();
    let started = Instant::now();
    let mut c = EtcdCluster::start(3);
    eprintln!("3 members healthy after {:?} on {:?}", started.elapsed(), c.endpoints());
    c.put("/vpc/a", "1");
    assert_eq!(c.get_prefix("/vpc/"), [("/vpc/a".to_string(), "1".to_string())]);

    let refused = etcdctl_as(&c, None, &["put", "/vpc/no-cert", "x"]);
    assert!(!refused.status.success(), "a client without a certificate wrote: {}", text(&refused));
    eprintln!("without a client certificate: {}", text(&refused).trim());
    assert!(c.get_prefix("/vpc/no-cert").is_empty());

    // One of three gone: two still make a quorum.
    c.kill_member(0);
    assert!(!c.is_running(0) && c.is_running(1) && c.is_running(2));
    let t = Instant::now();
    put_within(&c, "/vpc/b", "2", Duration::from_secs(10));
    eprintln!("put with member 0 killed: {:?}", t.elapsed());

    // Two of three gone: no quorum, a put gives up at its timeout. (Whether it is later committed
    // is not known: a leader that has not yet stepped down may hold it in its log.)
    c.stop_member(1);
    let t = Instant::now();
    let out = c.etcdctl(&["--command-timeout=2s", "put", "/vpc/c", "3"]);
    assert!(!out.status.success(), "a put without quorum succeeded: {}", text(&out));
    assert!(t.elapsed() < Duration::from_secs(10), "a put without quorum took {:?}", t.elapsed());
    eprintln!("put without quorum failed after {:?}: {}", t.elapsed(), text(&out).trim());

    // Both back on their data directories: the cluster converges.
    let t = Instant::now();
    c.start_member(0);
    c.start_member(1);
    c.wait_healthy(Duration::from_secs(20)).unwrap_or_else(|e| panic!("{e}"));
    eprintln!("3 members healthy again after {:?}", t.elapsed());
    assert!((0..3).all(|i| c.is_running(i)));
    c.put("/vpc/d", "4");
    let values = c.get_prefix("/vpc/");
    for (key, value) in [("/vpc/a", "1"), ("/vpc/b", "2"), ("/vpc/d", "4")] {
        assert!(values.contains(&(key.into(), value.into())), "{key}={value} missing from {values:?}");
    }
    // Each member's own copy catches up, also member 0's with the key written while it was dead.
    let deadline = Instant::now() + Duration::from_secs(10);
    for i in 0..3 {
        loop {
            let keys = member_keys(&c, i, "/vpc/");
            if ["/vpc/a", "/vpc/b", "/vpc/d"].iter().all(|k| keys.iter().any(|have| have == k)) {
                break;
            }
            assert!(Instant::now() < deadline, "member {i} did not catch up: {keys:?}");
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    // And all three agree on one leader.
    let out = c.etcdctl(&["endpoint", "status", "-w", "json"]);
    assert!(out.status.success(), "endpoint status: {}", text(&out));
    let status: serde_json::Value = serde_json::from_slice(&out.stdout).expect("endpoint status JSON");
    let leaders: Vec<u64> = status
        .as_array()
        .expect("one status per member")
        .iter()
        .filter_map(|s| s["Status"]["leader"].as_u64())
        .collect();
    assert!(leaders.len() == 3 && leaders[0] != 0 && leaders.iter().all(|&l| l == leaders[0]), "{status}");
}

#[test]
fn two_clusters_at_once_do_not_collide() {
    require_root();
    let (a, b) = std::thread::scope(|s| {
        let a = s.spawn(|| EtcdCluster::start(3));
        let b = s.spawn(|| EtcdCluster::start(3));
        (a.join().expect("cluster a"), b.join().expect("cluster b"))
    });
    assert!(a.endpoints().iter().all(|e| !b.endpoints().contains(e)), "{:?} {:?}", a.endpoints(), b.endpoints());
    assert_ne!(a.dir(), b.dir());
    a.put("/which", "a");
    b.put("/which", "b");
    assert_eq!(a.get_prefix("/which"), [("/which".to_string(), "a".to_string())]);
    assert_eq!(b.get_prefix("/which"), [("/which".to_string(), "b".to_string())]);
    // Each cluster has its own CA: a's client is a stranger to b.
    let out = etcdctl_as(&b, Some(&a), &["put", "/which", "a"]);
    assert!(!out.status.success(), "b took a's client certificate: {}", text(&out));

    // Dropping a frees its addresses and directory and leaves b alone.
    let (a_dir, a_ip) = (a.dir().to_path_buf(), a.endpoints()[0].clone());
    drop(a);
    assert!(!a_dir.exists(), "{} left behind", a_dir.display());
    let ip: Ipv4Addr = a_ip.trim_start_matches("https://").trim_end_matches(":2379").parse().unwrap();
    assert!(TcpListener::bind((ip, 2379)).is_ok(), "{a_ip} still taken");
    b.put("/which", "still b");
    assert_eq!(b.get_prefix("/which"), [("/which".to_string(), "still b".to_string())]);
}

#[test]
fn members_in_their_own_namespaces() {
    require_root();
    // A fabric namespace with a bridge, one namespace per member on it, as in the lab.
    let fabric = Netns::new("vte");
    fabric.ip(&["link", "add", "br0", "type", "bridge"]);
    fabric.ip(&["link", "set", "br0", "up"]);
    let nodes: Vec<Netns> = (0..3).map(|_| Netns::new("vte")).collect();
    let mut placement = Vec::new();
    for (i, node) in nodes.iter().enumerate() {
        let port = format!("p{i}");
        fabric.ip(&["link", "add", &port, "type", "veth", "peer", "name", "eth0", "netns", &node.name]);
        fabric.ip(&["link", "set", &port, "master", "br0", "up"]);
        let ip = Ipv4Addr::new(10, 77, 0, 11 + i as u8);
        node.ip(&["addr", "add", &format!("{ip}/24"), "dev", "eth0"]);
        node.ip(&["link", "set", "eth0", "up"]);
        placement.push((node.name.clone(), ip));
    }
    // Declared after the namespaces, so dropped (members killed) before them.
    let mut c = EtcdCluster::start_in(&placement);
    assert_eq!(c.endpoints()[2], "https://10.77.0.13:2379");
    c.put("/vpc/ns", "1");
    c.kill_member(2);
    put_within(&c, "/vpc/ns", "2", Duration::from_secs(10));
    c.start_member(2);
    c.wait_healthy(Duration::from_secs(20)).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(c.get_prefix("/vpc/"), [("/vpc/ns".to_string(), "2".to_string())]);
}
