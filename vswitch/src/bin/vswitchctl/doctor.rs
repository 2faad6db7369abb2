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
//! The conflist is read here with a few serde fields rather than through the `cni` crate, so the
//! CLI does not depend on the plugin; the defaults below are the plugin's (`cni/src/spec.rs`).

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use vswitch::control::config::ConfigError;
use vswitch::control::Config;
use vswitch_api::client::{Client, DEFAULT_SOCKET};
use vswitch_api::MacAddr;

pub const DEFAULT_CONFLIST: &str = "/etc/cni/net.d/10-vpc.conflist";
pub const DEFAULT_CONFIG: &str = "/etc/vswitchd/vswitchd.toml";

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
    }
    let socket = options
        .socket
        .clone()
        .or_else(|| config.as_ref().map(|c| c.socket.clone()))
        .unwrap_or_else(|| DEFAULT_SOCKET.into());
    checks.push(daemon(&socket));
    match read_conflist(&options.conflist) {
        Ok(entry) => {
            checks.push(check(
                "conflist",
                Status::Ok,
                format!("{}: network {:?}, vpc-cni entry found", options.conflist.display(), entry.network),
            ));
            if let Some(c) = &config {
                checks.extend(agreement(&entry, c, &socket));
            }
            if entry.cluster {
                checks.push(cluster_pool(&socket));
            } else {
                checks.push(pool(&entry, SystemTime::now()));
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
    let path = path.unwrap_or(Path::new(DEFAULT_CONFIG));
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
                "{e}; start vswitchd (the DaemonSet, or `vswitchd --config {DEFAULT_CONFIG}`), or point doctor at its socket with --socket or --config"
            ),
        ),
    }
}

/// The vpc-cni entry of a conflist, with the plugin's defaults filled in.
#[derive(Debug, Clone)]
pub struct CniEntry {
    pub network: String,
    pub socket: PathBuf,
    pub gateway: Ipv4Addr,
    pub gateway_mac: Option<MacAddr>,
    pub mtu: u16,
    /// `ipam.type` vswitchd: addresses come from vswitchd's cluster pool (no ranges).
    pub cluster: bool,
    pub ranges: Vec<(Ipv4Addr, Ipv4Addr)>,
    pub data_dir: PathBuf,
    pub reuse_delay_seconds: u64,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawEntry {
    #[serde(rename = "type")]
    plugin_type: Option<String>,
    vswitch_socket: Option<PathBuf>,
    gateway: Option<Ipv4Addr>,
    gateway_mac: Option<MacAddr>,
    mtu: Option<u16>,
    ipam: Option<RawIpam>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawIpam {
    #[serde(rename = "type")]
    source: Option<String>,
    #[serde(default)]
    ranges: Vec<RawRange>,
    data_dir: Option<PathBuf>,
    reuse_delay_seconds: Option<u64>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawRange {
    range_start: Ipv4Addr,
    range_end: Ipv4Addr,
}

pub fn read_conflist(path: &Path) -> Result<CniEntry, String> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        format!("reading {}: {e}; install the conflist there (cni/vpc-cni.conflist) or pass --conflist", path.display())
    })?;
    parse_conflist(&text).map_err(|e| format!("{}: {e}", path.display()))
}

/// A conflist (`plugins: [...]`) or a single network configuration whose type is vpc-cni.
pub fn parse_conflist(text: &str) -> Result<CniEntry, String> {
    let value: serde_json::Value = serde_json::from_str(text).map_err(|e| format!("not JSON: {e}"))?;
    let network = value.get("name").and_then(|n| n.as_str()).ok_or("no network \"name\"")?.to_string();
    let entry = match value.get("plugins").and_then(|p| p.as_array()) {
        Some(plugins) => plugins.iter().find(|p| p.get("type").and_then(|t| t.as_str()) == Some("vpc-cni")),
        None => Some(&value),
    };
    let raw: RawEntry = entry
        .map(|e| serde_json::from_value(e.clone()).map_err(|e| format!("the vpc-cni entry: {e}")))
        .transpose()?
        .filter(|r: &RawEntry| r.plugin_type.as_deref() == Some("vpc-cni"))
        .ok_or("no plugin of type vpc-cni")?;
    let ipam = raw.ipam.ok_or("the vpc-cni entry has no ipam")?;
    let cluster = ipam.source.as_deref() == Some("vswitchd");
    if ipam.ranges.is_empty() && !cluster {
        return Err("ipam.ranges is empty".into());
    }
    Ok(CniEntry {
        network,
        socket: raw.vswitch_socket.unwrap_or_else(|| DEFAULT_SOCKET.into()),
        gateway: raw.gateway.unwrap_or(Ipv4Addr::new(169, 254, 1, 1)),
        gateway_mac: raw.gateway_mac,
        mtu: raw.mtu.unwrap_or(1500),
        cluster,
        ranges: ipam.ranges.iter().map(|r| (r.range_start, r.range_end)).collect(),
        data_dir: ipam.data_dir.unwrap_or_else(|| "/var/lib/vpc-cni".into()),
        reuse_delay_seconds: ipam.reuse_delay_seconds.unwrap_or(120),
    })
}

/// The conflist's vpc-cni entry against vswitchd.toml: both sides must say the same.
pub fn agreement(entry: &CniEntry, config: &Config, socket: &Path) -> Vec<Check> {
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
    let conflist_mac = entry.gateway_mac.unwrap_or_else(|| MacAddr::local_from(entry.gateway.octets()));
    vec![
        same("gateway", "gateway", entry.gateway.to_string(), "gateway_ip", config.gateway_ip.to_string()),
        same("gateway_mac", "gatewayMac", conflist_mac.to_string(), "gateway_mac", config.gateway_mac().to_string()),
        same("mtu", "mtu", entry.mtu.to_string(), "pod_mtu", config.pod_mtu.to_string()),
        same("socket", "vswitchSocket", entry.socket.display().to_string(), "socket", socket.display().to_string()),
    ]
}

#[derive(Deserialize, Default)]
struct IpamState {
    #[serde(default)]
    allocations: BTreeMap<Ipv4Addr, serde_json::Value>,
    #[serde(default)]
    released: BTreeMap<Ipv4Addr, u64>,
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

/// Free addresses in the node IPAM (`dataDir/<network>/state.json`): warn under 10 %, fail at
/// none.
pub fn pool(entry: &CniEntry, now: SystemTime) -> Check {
    let path = entry.data_dir.join(&entry.network).join("state.json");
    let state: IpamState = match std::fs::read(&path) {
        Ok(bytes) => match serde_json::from_slice(&bytes) {
            Ok(s) => s,
            Err(e) => return check("address_pool", Status::Fail, format!("{} is corrupt: {e}", path.display())),
        },
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => IpamState::default(),
        Err(e) => return check("address_pool", Status::Warn, format!("reading {}: {e}", path.display())),
    };
    let in_ranges = |ip: &Ipv4Addr| entry.ranges.iter().any(|(a, b)| (*a..=*b).contains(ip));
    let total: u64 =
        entry.ranges.iter().map(|(a, b)| u64::from(u32::from(*b)).saturating_sub(u32::from(*a).into()) + 1).sum();
    let allocated = state.allocations.keys().filter(|ip| in_ranges(ip)).count() as u64;
    let now = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let waiting = state
        .released
        .iter()
        .filter(|(ip, &t)| {
            in_ranges(ip) && !state.allocations.contains_key(ip) && now.saturating_sub(t) < entry.reuse_delay_seconds
        })
        .count() as u64;
    let free = total.saturating_sub(allocated);
    let detail = format!(
        "{free} of {total} addresses free ({allocated} allocated, {waiting} of the free ones released less than {}s ago and waiting out the reuse delay), state {}",
        entry.reuse_delay_seconds,
        path.display()
    );
    if free == 0 {
        check("address_pool", Status::Fail, format!("{detail}; no pod can start: give the node more ipam.ranges"))
    } else if free * 100 < total * LOW_POOL_PERCENT {
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
            (e.gateway, e.mtu, e.socket.to_str().unwrap()),
            (Ipv4Addr::new(169, 254, 1, 1), 1500, DEFAULT_SOCKET)
        );
        assert!(parse_conflist(r#"{"name":"n","plugins":[{"type":"bridge"}]}"#).unwrap_err().contains("vpc-cni"));
    }

    #[test]
    fn the_pool_counts_allocations_in_the_ranges_and_warns_when_low() {
        let dir = tempfile::tempdir().unwrap();
        let entry = CniEntry {
            network: "vpc".into(),
            socket: DEFAULT_SOCKET.into(),
            gateway: Ipv4Addr::new(169, 254, 1, 1),
            gateway_mac: None,
            mtu: 1500,
            cluster: false,
            ranges: vec![(Ipv4Addr::new(10, 0, 0, 1), Ipv4Addr::new(10, 0, 0, 20))],
            data_dir: dir.path().into(),
            reuse_delay_seconds: 120,
        };
        assert_eq!(pool(&entry, SystemTime::now()).status, Status::Ok, "no state yet: all free");
        let write = |n: u8| {
            let allocations: BTreeMap<String, serde_json::Value> = (1..=n)
                .map(|i| (format!("10.0.0.{i}"), serde_json::json!({"containerID": format!("c{i}"), "ifname": "eth0"})))
                .collect();
            std::fs::create_dir_all(dir.path().join("vpc")).unwrap();
            let state = serde_json::json!({"allocations": allocations, "released": {"10.0.0.20": 0}, "last": null});
            std::fs::write(dir.path().join("vpc/state.json"), state.to_string()).unwrap();
        };
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
        let cluster = parse_conflist(r#"{"name":"n","type":"vpc-cni","ipam":{"type":"vswitchd"}}"#).unwrap();
        assert!(cluster.cluster && cluster.ranges.is_empty());
    }
}
