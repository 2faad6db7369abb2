//! `vswitchctl doctor`: is this node ready for pods? One line per check (ok, warn or FAIL, and
//! for a FAIL what to do), exit 1 if anything failed. The check names are stable identifiers
//! (`ip_forward`, `dev_net_tun`, `tun_module`, `config`, `uplink`, `vswitchd`, `conflist`,
//! `gateway`, `gateway_mac`, `mtu`, `socket`, `address_pool`) for scripts reading `--json`.
//!
//! Checks: the node prerequisites (`net.ipv4.ip_forward`, `/dev/net/tun` and the tun module, the
//! uplink NIC when one is configured), vswitchd.toml, vswitchd answering on its socket, the CNI
//! conflist and whether its vpc-cni entry agrees with vswitchd.toml (gateway, gateway MAC, MTU,
//! socket), and how many addresses the node IPAM has left.
//!
//! The conflist is read by the plugin's own parser (`cni::spec::NetConf::from_conflist`), so
//! doctor accepts exactly what vpc-cni accepts, dual-stack ranges included, with the same
//! defaults (`vswitch_api::defaults`), and the address pool is counted by the plugin's IPAM.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use cni::ipam::{FamilyUsage, Ipam};
use cni::spec::{IpFamilies, IpamSource, NetConf};
use serde::Serialize;
use vswitch::control::config::ConfigError;
use vswitch::control::Config;
use vswitch::ipam::provider::aws::config::AwsConfig;
use vswitch::ipam::provider::aws::Ec2;
use vswitch::ipam::provider::config::UCloudConfig;
use vswitch::ipam::provider::{ProviderError, VpcProvider};
use vswitch_api::client::Client;
use vswitch_api::defaults;

/// Below this share of free addresses the pool check warns.
const LOW_POOL_PERCENT: u64 = 10;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Ok,
    Warn,
    Fail,
}

#[derive(Debug, Clone, Serialize)]
pub struct Check {
    pub check: String,
    pub status: Status,
    pub detail: String,
}

fn check(name: &str, status: Status, detail: impl Into<String>) -> Check {
    Check { check: name.to_string(), status, detail: detail.into() }
}

/// What to look at.
#[derive(Debug, Clone)]
pub struct Options {
    pub conflist: PathBuf,
    /// vswitchd.toml; `None` means the default path, where a missing file means the defaults.
    pub config: Option<PathBuf>,
    /// `--socket` given on the command line: where vswitchd listens, whatever its file says.
    pub socket: Option<PathBuf>,
}

/// Runs every check, in order.
pub fn run(options: &Options) -> Vec<Check> {
    let mut checks = vec![ip_forward(std::fs::read_to_string("/proc/sys/net/ipv4/ip_forward"))];
    checks.extend(tun(Path::new("/dev/net/tun")));
    let config = load_config(options.config.as_deref());
    let (config, config_check) = match config {
        Ok((config, detail)) => (Some(config), check("config", Status::Ok, detail)),
        Err(detail) => (None, check("config", Status::Fail, detail)),
    };
    checks.push(config_check);
    if let Some(c) = &config {
        checks.push(uplink(c, Path::new("/sys/class/net")));
        checks.extend(vpc_api(c));
    }
    let socket = options
        .socket
        .clone()
        .or_else(|| config.as_ref().map(|c| c.socket.clone()))
        .unwrap_or_else(|| defaults::SOCKET.into());
    checks.push(daemon(&socket));
    match read_conflist(&options.conflist) {
        Ok(conf) => {
            let families = match conf.families() {
                Some(IpFamilies::Dual) => "IPv4 and IPv6",
                Some(IpFamilies::Ipv4) => "IPv4",
                Some(IpFamilies::Ipv6) => "IPv6",
                None => "the families of vswitchd's pools",
            };
            checks.push(check(
                "conflist",
                Status::Ok,
                format!(
                    "{}: network {:?}, vpc-cni entry found (cniVersion {}, pods get {families})",
                    options.conflist.display(),
                    conf.name,
                    conf.cni_version
                ),
            ));
            if let Some(c) = &config {
                checks.extend(agreement(&conf, c, &socket));
            }
            match conf.ipam.source {
                IpamSource::Vswitchd => checks.push(cluster_pool(&socket)),
                IpamSource::Local => checks.push(pool(&conf, SystemTime::now())),
            }
        }
        Err(detail) => checks.push(check("conflist", Status::Fail, detail)),
    }
    checks
}

pub fn ip_forward(value: std::io::Result<String>) -> Check {
    const FIX: &str = "run `sysctl -w net.ipv4.ip_forward=1` and persist it in /etc/sysctl.d/";
    match value {
        Ok(v) if v.trim() == "1" => check("ip_forward", Status::Ok, "net.ipv4.ip_forward = 1"),
        Ok(v) => check(
            "ip_forward",
            Status::Fail,
            format!(
                "net.ipv4.ip_forward = {}: the node does not route pods' traffic to or from other hosts; {FIX}",
                v.trim()
            ),
        ),
        Err(e) => check("ip_forward", Status::Fail, format!("reading /proc/sys/net/ipv4/ip_forward: {e}; {FIX}")),
    }
}

/// `/dev/net/tun` is there and opens (which loads the tun module if needed).
pub fn tun(dev: &Path) -> Vec<Check> {
    use std::os::unix::fs::FileTypeExt;
    let name = "dev_net_tun";
    let exists = match std::fs::metadata(dev) {
        Ok(m) if m.file_type().is_char_device() => check(name, Status::Ok, "/dev/net/tun is a character device"),
        Ok(_) => {
            return vec![check(
                name,
                Status::Fail,
                "exists but is not a character device; remove it and run `mknod /dev/net/tun c 10 200`",
            )]
        }
        Err(e) => {
            return vec![check(
                name,
                Status::Fail,
                format!(
                    "{e}: vswitchd cannot create TAPs; run `modprobe tun` (or `mkdir -p /dev/net && mknod /dev/net/tun c 10 200`); in a pod, mount it from the host"
                ),
            )]
        }
    };
    let module = match std::fs::OpenOptions::new().read(true).write(true).open(dev) {
        Ok(_) => check("tun_module", Status::Ok, "/dev/net/tun opens"),
        Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => {
            check("tun_module", Status::Warn, format!("cannot open /dev/net/tun ({e}): run doctor as root to know"))
        }
        Err(e) => check(
            "tun_module",
            Status::Fail,
            format!("opening /dev/net/tun: {e}: the tun driver is missing; run `modprobe tun` (CONFIG_TUN)"),
        ),
    };
    vec![exists, module]
}

pub fn uplink(config: &Config, sys_class_net: &Path) -> Check {
    match &config.uplink {
        None => check("uplink", Status::Ok, "none configured: pods' traffic leaves through the node"),
        Some(u) if sys_class_net.join(&u.interface).exists() => {
            check("uplink", Status::Ok, format!("interface {} exists", u.interface))
        }
        Some(u) => check(
            "uplink",
            Status::Fail,
            format!(
                "interface {} (uplink.interface in vswitchd.toml) does not exist; fix the name or bring the NIC up",
                u.interface
            ),
        ),
    }
}

/// vswitchd.toml, or the defaults when the default path has no file.
pub fn load_config(path: Option<&Path>) -> Result<(Config, String), String> {
    let explicit = path.is_some();
    let path = path.unwrap_or(Path::new(defaults::CONFIG));
    match Config::load(path) {
        Ok(c) => Ok((c, format!("{} parses and is valid", path.display()))),
        Err(ConfigError::Read { source, .. }) if !explicit && source.kind() == std::io::ErrorKind::NotFound => {
            Ok((Config::default(), format!("{} absent: vswitchd runs on its defaults", path.display())))
        }
        Err(e) => Err(format!("{e}; fix the file (docs/configuration.md lists every key)")),
    }
}

pub fn daemon(socket: &Path) -> Check {
    let client = Client::new(socket).with_timeouts(Duration::from_secs(2), Duration::from_secs(5));
    match client.status() {
        Ok(s) => check(
            "vswitchd",
            Status::Ok,
            format!(
                "{} answers: version {}, up {}s, {} ports, {} routes",
                socket.display(),
                s.version,
                s.uptime_seconds,
                s.ports,
                s.routes
            ),
        ),
        Err(e) => check(
            "vswitchd",
            Status::Fail,
            format!(
                "{e}; start vswitchd (the DaemonSet, or `vswitchd --config {}`), or point doctor at its socket with --socket or --config",
                defaults::CONFIG
            ),
        ),
    }
}

pub fn read_conflist(path: &Path) -> Result<NetConf, String> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        format!("reading {}: {e}; install the conflist there (cni/vpc-cni.conflist) or pass --conflist", path.display())
    })?;
    parse_conflist(&text).map_err(|e| format!("{}: {e}", path.display()))
}

/// A conflist (`plugins: [...]`) or a single network configuration: its vpc-cni entry as the
/// plugin will read it, or why vpc-cni would refuse it (with the CNI error code it would return).
pub fn parse_conflist(text: &str) -> Result<NetConf, String> {
    NetConf::from_conflist(text.as_bytes()).map_err(|e| format!("{e} (vpc-cni would fail with code {})", e.code as u32))
}

/// The conflist's vpc-cni entry against vswitchd.toml: both sides must say the same.
pub fn agreement(conf: &NetConf, config: &Config, socket: &Path) -> Vec<Check> {
    let same = |name: &str, conflist_key: &str, ours: String, toml_key: &str, theirs: String| {
        if ours == theirs {
            check(name, Status::Ok, format!("conflist and vswitchd agree: {ours}"))
        } else {
            check(
                name,
                Status::Fail,
                format!(
                    "the conflist's {conflist_key} is {ours} but vswitchd's {toml_key} is {theirs}; make them equal (pods added meanwhile may need re-creating)"
                ),
            )
        }
    };
    // Both sides derive the MAC from the gateway address the same way when it is not set.
    vec![
        same("gateway", "gateway", conf.gateway.to_string(), "gateway_ip", config.gateway_ip.to_string()),
        same(
            "gateway_mac",
            "gatewayMac",
            conf.gateway_mac().to_string(),
            "gateway_mac",
            config.gateway_mac().to_string(),
        ),
        same("mtu", "mtu", conf.mtu.to_string(), "pod_mtu", config.pod_mtu.to_string()),
        same(
            "socket",
            "vswitchSocket",
            conf.vswitch_socket.display().to_string(),
            "socket",
            socket.display().to_string(),
        ),
    ]
}

/// The cluster IPAM as vswitchd sees it: fails when no ADD can get an address (the warm pool is
/// empty and the store unreachable, or the pool is used up), warns when the store is unreachable
/// or under 10 % of the pool is free.
pub fn cluster_pool(socket: &Path) -> Check {
    let client = Client::new(socket).with_timeouts(Duration::from_secs(2), Duration::from_secs(5));
    let view = match client.ipam() {
        Ok(v) => v,
        Err(e) => {
            return check(
                "address_pool",
                Status::Fail,
                format!("the conflist uses vswitchd's IPAM, which answers: {e}"),
            )
        }
    };
    cluster_pool_of(&view)
}

pub fn cluster_pool_of(view: &vswitch_api::api::IpamView) -> Check {
    let local = &view.this_node;
    let node = format!(
        "node {}: {} pods, {} warm addresses (target {})",
        view.node, local.assigned, local.warm, local.warm_target
    );
    if !view.store_reachable {
        let why = view.store_error.clone().unwrap_or_default();
        return if local.warm == 0 {
            check(
                "address_pool",
                Status::Fail,
                format!(
                    "{node}; the store ({}) is unreachable ({why}): ADDs fail with code 11 until it returns",
                    view.store
                ),
            )
        } else {
            check(
                "address_pool",
                Status::Warn,
                format!(
                    "{node}; the store ({}) is unreachable ({why}): ADDs are served from the warm pool",
                    view.store
                ),
            )
        };
    }
    let detail = format!("{node}; pool {}: {} of {} addresses free", view.pools.join(", "), view.free, view.pool_size);
    if view.free == 0 && local.warm == 0 {
        check("address_pool", Status::Fail, format!("{detail}; no pod can start: add prefixes to ipam.pools"))
    } else if view.free * 100 < view.pool_size * LOW_POOL_PERCENT {
        check(
            "address_pool",
            Status::Warn,
            format!("{detail}; under {LOW_POOL_PERCENT}% free: add prefixes to ipam.pools soon"),
        )
    } else {
        check("address_pool", Status::Ok, detail)
    }
}

/// Provider mode: the VPC API's credentials and reachability, straight from vswitchd.toml (a
/// `DescribeSubnet(s)`, as vswitchd's own check), so it works with vswitchd down. Refused keys and
/// an unreachable endpoint are told apart; for AWS the detail names the chain's link that gave
/// the credentials (run it in vswitchd's container to see what vswitchd uses).
pub fn vpc_api(config: &Config) -> Option<Check> {
    use vswitch::ipam::provider::config::ProviderKind;
    let ipam = config.ipam.as_ref()?;
    let fail = |detail: String| Some(check("vpc_api", Status::Fail, detail));
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(r) => r,
        Err(e) => return fail(format!("cannot start a runtime for the API call: {e}")),
    };
    match ipam.provider? {
        ProviderKind::Ucloud => match &ipam.ucloud {
            Some(ucloud) => Some(ucloud_api(ucloud, &runtime)),
            None => fail("ipam.provider = \"ucloud\" needs an [ipam.ucloud] table".into()),
        },
        ProviderKind::Aws => match &ipam.aws {
            Some(aws) => Some(aws_api(aws, &runtime)),
            None => fail("ipam.provider = \"aws\" needs an [ipam.aws] table".into()),
        },
    }
}

/// The check for a subnet query's answer: `at` names the API, `keys` where to fix refused keys,
/// `endpoint` the key that sets the endpoint.
fn api_answer(at: &str, subnet: &str, (keys, endpoint): (&str, &str), answer: Result<u64, ProviderError>) -> Check {
    match answer {
        Ok(free) => check(
            "vpc_api",
            Status::Ok,
            format!("{at}: credentials accepted; subnet {subnet} has {free} free addresses"),
        ),
        Err(ProviderError::Auth(m)) => {
            check("vpc_api", Status::Fail, format!("{at} refused the credentials ({m}): check {keys}"))
        }
        Err(ProviderError::Unavailable(m)) => {
            check("vpc_api", Status::Fail, format!("{at} is unreachable ({m}): check {endpoint} and the route to it"))
        }
        Err(ProviderError::Throttled(m)) => {
            check("vpc_api", Status::Warn, format!("{at} answered, throttling this caller ({m}): the credentials work"))
        }
        Err(e) => check("vpc_api", Status::Fail, format!("{at}: subnet {subnet}: {e}")),
    }
}

fn ucloud_api(ucloud: &UCloudConfig, runtime: &tokio::runtime::Runtime) -> Check {
    use vswitch::ipam::provider::ucloud::UCloud;
    use vswitch::ipam::provider::ucloud_metadata;
    let fail = |detail: String| check("vpc_api", Status::Fail, detail);
    // The node's NIC and host as vswitchd would learn them (the metadata service, if not set).
    let identity = match runtime.block_on(ucloud_metadata::identity(ucloud)) {
        Ok(identity) => identity,
        Err(e) => return fail(e.to_string()),
    };
    let client = match UCloud::new(ucloud, identity) {
        Ok(c) => c,
        Err(e) => return fail(e.to_string()),
    };
    let keys = format!("the keys in {} and {}", ucloud.public_key_file.display(), ucloud.private_key_file.display());
    let at = format!("UCloud VPC API at {}", ucloud.endpoint);
    api_answer(&at, &ucloud.subnet_id, (&keys, "ipam.ucloud.endpoint"), runtime.block_on(client.subnet_free()))
}

fn aws_api(aws: &AwsConfig, runtime: &tokio::runtime::Runtime) -> Check {
    let client = match Ec2::new(aws) {
        Ok(c) => c,
        Err(e) => return check("vpc_api", Status::Fail, e.to_string()),
    };
    let answer = runtime.block_on(client.subnet_free());
    let at = format!(
        "EC2 at {}",
        aws.endpoint.clone().unwrap_or_else(|| format!("https://ec2.{}.amazonaws.com", aws.region))
    );
    let fix = ("the credentials and the role's EC2 permissions", "ipam.aws.endpoint");
    let mut result = api_answer(&at, &aws.subnet_id, fix, answer);
    // Asked after the call: the source is then the link that answered (with its role).
    result.detail.push_str(&format!("; {}", client.identity()));
    result
}

/// Free addresses in the node IPAM (`dataDir/<network>/state.json`), per family of the ranges:
/// warn under 10 % in any family, fail at none (a pod needs one address of every family).
pub fn pool(conf: &NetConf, now: SystemTime) -> Check {
    let ipam =
        Ipam::new(&conf.ipam_dir(), conf.ipam.ranges.clone(), Duration::from_secs(conf.ipam.reuse_delay_seconds));
    let path = ipam.state_path();
    let families = match ipam.usage(now) {
        Ok(families) => families,
        Err(e @ cni::ipam::IpamError::Corrupt { .. }) => return check("address_pool", Status::Fail, e.to_string()),
        Err(e) => return check("address_pool", Status::Warn, e.to_string()),
    };
    let describe = |u: &FamilyUsage| {
        format!(
            "{} of {} addresses free ({} allocated, {} of the free ones released less than {}s ago and waiting out the reuse delay)",
            u.free(),
            u.total,
            u.allocated,
            u.cooling,
            conf.ipam.reuse_delay_seconds
        )
    };
    let counts = match families.as_slice() {
        [one] => describe(one),
        all => all
            .iter()
            .map(|u| format!("{}: {}", if u.ipv6 { "IPv6" } else { "IPv4" }, describe(u)))
            .collect::<Vec<_>>()
            .join("; "),
    };
    let detail = format!("{counts}, state {}", path.display());
    if families.iter().any(|u| u.free() == 0) {
        check("address_pool", Status::Fail, format!("{detail}; no pod can start: give the node more ipam.ranges"))
    } else if families.iter().any(|u| u.free() * 100 < u.total * u128::from(LOW_POOL_PERCENT)) {
        check("address_pool", Status::Warn, format!("{detail}; under {LOW_POOL_PERCENT}% free: add ipam.ranges soon"))
    } else {
        check("address_pool", Status::Ok, detail)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ip_forward_zero_fails_with_the_fix() {
        assert_eq!(ip_forward(Ok("1\n".into())).status, Status::Ok);
        let c = ip_forward(Ok("0\n".into()));
        assert_eq!(c.status, Status::Fail);
        assert!(c.detail.contains("sysctl -w net.ipv4.ip_forward=1"), "{}", c.detail);
    }

    #[test]
    fn a_missing_tun_device_fails() {
        let c = tun(Path::new("/nonexistent/tun"));
        assert_eq!((c.len(), c[0].status), (1, Status::Fail));
    }

    #[test]
    fn single_configuration_and_defaults() {
        let e = parse_conflist(
            r#"{"cniVersion":"1.0.0","name":"n","type":"vpc-cni","ipam":{"ranges":[{"rangeStart":"10.0.0.1","rangeEnd":"10.0.0.4"}]}}"#,
        )
        .unwrap();
        assert_eq!(
            (e.gateway, e.mtu, e.vswitch_socket.to_str().unwrap()),
            (std::net::Ipv4Addr::new(169, 254, 1, 1), 1500, "/run/vswitchd/vswitchd.sock")
        );
        assert!(parse_conflist(r#"{"name":"n","plugins":[{"type":"bridge"}]}"#).unwrap_err().contains("vpc-cni"));
    }

    /// Network "vpc" with `ranges` (JSON), its IPAM state under `data_dir`.
    fn local_network(data_dir: &Path, ranges: &str) -> NetConf {
        let text = format!(
            r#"{{"cniVersion":"1.1.0","name":"vpc","plugins":[{{"type":"vpc-cni","ipam":{{"ranges":{ranges},"dataDir":{:?}}}}}]}}"#,
            data_dir
        );
        parse_conflist(&text).unwrap()
    }

    /// A state file of the plugin's format: `allocated` held, 10.0.0.20 released long ago.
    fn write_state(data_dir: &Path, allocated: impl IntoIterator<Item = String>) {
        let allocations: serde_json::Map<String, serde_json::Value> = allocated
            .into_iter()
            .enumerate()
            .map(|(i, ip)| (ip, serde_json::json!({"containerID": format!("c{i}"), "ifname": "eth0"})))
            .collect();
        std::fs::create_dir_all(data_dir.join("vpc")).unwrap();
        let state = serde_json::json!({"allocations": allocations, "released": {"10.0.0.20": 0}, "last": null});
        std::fs::write(data_dir.join("vpc/state.json"), state.to_string()).unwrap();
    }

    #[test]
    fn the_pool_counts_allocations_in_the_ranges_and_warns_when_low() {
        let dir = tempfile::tempdir().unwrap();
        let entry = local_network(dir.path(), r#"[{"rangeStart":"10.0.0.1","rangeEnd":"10.0.0.20"}]"#);
        assert_eq!(pool(&entry, SystemTime::now()).status, Status::Ok, "no state yet: all free");
        let write = |n: u8| write_state(dir.path(), (1..=n).map(|i| format!("10.0.0.{i}")));
        write(18);
        let c = pool(&entry, SystemTime::now());
        assert_eq!(c.status, Status::Ok, "{}", c.detail);
        assert!(c.detail.starts_with("2 of 20 addresses free (18 allocated"), "{}", c.detail);
        write(19);
        assert_eq!(pool(&entry, SystemTime::now()).status, Status::Warn);
        write(20);
        assert_eq!(pool(&entry, SystemTime::now()).status, Status::Fail);
    }

    #[test]
    fn the_cluster_pool_fails_only_when_no_add_can_get_an_address() {
        let mut view = vswitch_api::api::IpamView {
            node: "n1".into(),
            store: "etcd https://e:2379".into(),
            store_reachable: true,
            store_error: None,
            pools: vec!["10.0.0.0/24".into()],
            exclude: vec![],
            pool_size: 254,
            free: 200,
            nodes: vec![],
            sticky: vec![],
            cooling: vec![],
            this_node: vswitch_api::api::LocalIpamView {
                warm: 2,
                warm_target: 8,
                assigned: 3,
                pending_sync: 0,
                fenced_total: 0,
            },
            provider: None,
        };
        assert_eq!(cluster_pool_of(&view).status, Status::Ok);
        view.free = 10;
        assert_eq!(cluster_pool_of(&view).status, Status::Warn, "under 10 %");
        view.store_reachable = false;
        assert_eq!(cluster_pool_of(&view).status, Status::Warn, "the warm pool serves");
        view.this_node.warm = 0;
        let c = cluster_pool_of(&view);
        assert_eq!(c.status, Status::Fail, "{}", c.detail);
        assert!(c.detail.contains("code 11"), "{}", c.detail);
        let cluster =
            parse_conflist(r#"{"cniVersion":"1.1.0","name":"n","type":"vpc-cni","ipam":{"type":"vswitchd"}}"#).unwrap();
        assert!(cluster.ipam.source == IpamSource::Vswitchd && cluster.ipam.ranges.is_empty());
    }

    #[test]
    fn a_dual_stack_pool_is_counted_per_family_and_either_running_out_fails() {
        let dir = tempfile::tempdir().unwrap();
        let conf = local_network(
            dir.path(),
            r#"[{"rangeStart":"10.0.0.1","rangeEnd":"10.0.0.20"},{"rangeStart":"fd00:10::1","rangeEnd":"fd00:10::ffff:ffff:ffff:ffff"}]"#,
        );
        assert_eq!(conf.families(), Some(IpFamilies::Dual));
        write_state(dir.path(), ["10.0.0.1".to_string(), "fd00:10::1".to_string()]);
        let c = pool(&conf, SystemTime::now());
        assert_eq!(c.status, Status::Ok, "{}", c.detail);
        assert!(c.detail.starts_with("IPv4: 19 of 20 addresses free (1 allocated"), "{}", c.detail);
        assert!(
            c.detail.contains("; IPv6: 18446744073709551614 of 18446744073709551615 addresses free (1 allocated"),
            "{}",
            c.detail
        );
        // IPv6 plenty, IPv4 gone: no pod of this network can start.
        write_state(dir.path(), (1..=20).map(|i| format!("10.0.0.{i}")).chain(["fd00:10::1".to_string()]));
        let c = pool(&conf, SystemTime::now());
        assert_eq!(c.status, Status::Fail, "{}", c.detail);
    }
}
