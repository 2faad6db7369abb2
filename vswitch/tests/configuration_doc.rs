//! docs/configuration.md against the code, so they cannot drift: every key of vswitchd's
//! `Config` is documented and every documented key exists, with the documented TOML defaults
//! equal to `Config::default()`; every key of the shipped conflist is documented, and every
//! documented vpc-cni key is a field of the plugin's configuration (`cni/src/spec/conf.rs`),
//! with the documented defaults equal to the plugin's; and where the two files must agree, their
//! defaults do.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::Value;
use vswitch::control::config::UplinkConfig;
use vswitch::control::Config;

const DOC: &str = include_str!("../../docs/configuration.md");
const CONFLIST: &str = include_str!("../../cni/vpc-cni.conflist");
const CNI_SPEC: &str = include_str!("../../cni/src/spec/conf.rs");

/// The first column of every table row under the `heading` section (up to the next heading of
/// the same or a higher level), with the row's third column (the default).
fn documented(heading: &str) -> BTreeMap<String, String> {
    let level = heading.chars().take_while(|c| *c == '#').count();
    let mut rows = BTreeMap::new();
    let mut inside = false;
    for line in DOC.lines() {
        if line.starts_with('#') {
            let l = line.chars().take_while(|c| *c == '#').count();
            if line == heading {
                inside = true;
                continue;
            }
            if inside && l <= level {
                break;
            }
        }
        if !inside {
            continue;
        }
        let cells: Vec<&str> = line.split('|').map(str::trim).collect();
        if cells.len() > 4 && cells[1].starts_with('`') {
            let key = cells[1].trim_matches('`').to_string();
            assert!(rows.insert(key.clone(), cells[3].to_string()).is_none(), "{key} is listed twice");
        }
    }
    assert!(!rows.is_empty(), "no table under {heading}");
    rows
}

/// Dotted paths of every key in `value` (tables too, so `host_port` and `host_port.name`).
fn paths(value: &Value, prefix: &str, list_marker: &str, out: &mut BTreeSet<String>) {
    match value {
        Value::Object(map) => {
            for (k, v) in map {
                let path = if prefix.is_empty() { k.clone() } else { format!("{prefix}.{k}") };
                out.insert(path.clone());
                paths(v, &path, list_marker, out);
            }
        }
        Value::Array(items) => {
            for item in items.iter().filter(|i| i.is_object()) {
                paths(item, &format!("{prefix}{list_marker}"), list_marker, out);
            }
        }
        _ => {}
    }
}

#[test]
fn every_vswitchd_key_is_documented_and_every_documented_key_exists() {
    // Optional parts filled in, so that their keys serialise too.
    let full = Config {
        gateway_mac: Some("02:00:00:00:00:01".parse().unwrap()),
        uplink: Some(UplinkConfig {
            interface: "eth1".into(),
            subnet: "10.10.0.0/16".parse().unwrap(),
            gateway: Some("10.10.0.1".parse().unwrap()),
            address: Some("10.10.0.11".parse().unwrap()),
            subnet6: Some("fd00:10::/64".parse().unwrap()),
            gateway6: Some("fd00:10::1".parse().unwrap()),
            address6: Some("fd00:10::11".parse().unwrap()),
            mtu: 1500,
        }),
        host_port: vswitch::control::config::HostPortConfig { announce_on: Some("eth0".into()), ..Default::default() },
        ipam: Some(
            toml::from_str(
                r#"node_name = "n1"
                   pools = ["10.10.0.0/16"]
                   provider = "ucloud"
                   [etcd]
                   endpoints = ["https://10.10.0.5:2379"]
                   ca_file = "ca.crt"
                   cert_file = "c.crt"
                   key_file = "c.key"
                   [ucloud]
                   endpoint = "http://10.10.0.30:80"
                   ca_file = "ucloud-ca.pem"
                   region = "cn-lab"
                   zone = "cn-lab-01"
                   project = "org-lab"
                   vpc_id = "uvnet-lab"
                   subnet_id = "subnet-lab"
                   nic_mac = "52:54:00:00:00:01"
                   host_id = "uhost-node1"
                   public_key_file = "public_key"
                   private_key_file = "private_key"
                   fabric_probe_target = "10.10.0.1"
                   [aws]
                   region = "us-east-1"
                   subnet_id = "subnet-1"
                   instance_id = "i-1"
                   endpoint = "http://127.0.0.1:5000"
                   ca_file = "aws-ca.pem"
                   security_group_ids = ["sg-1"]
                   cluster_name = "lab"
                   warm_ip_target = 2
                   minimum_ip_target = 4
                   max_eni = 2"#,
            )
            .unwrap(),
        ),
        ..Config::default()
    };
    let mut in_code = BTreeSet::new();
    paths(&serde_json::to_value(&full).unwrap(), "", "[]", &mut in_code);
    let doc = documented("## vswitchd.toml");
    let in_doc: BTreeSet<String> = doc.keys().cloned().collect();
    let undocumented: Vec<_> = in_code.difference(&in_doc).collect();
    let unknown: Vec<_> = in_doc.difference(&in_code).collect();
    assert!(undocumented.is_empty(), "keys of Config missing from docs/configuration.md: {undocumented:?}");
    assert!(unknown.is_empty(), "docs/configuration.md lists keys Config does not have: {unknown:?}");

    // A default written as a TOML literal is the code's default.
    let defaults = serde_json::to_value(Config::default()).unwrap();
    let mut checked = 0;
    for (key, default) in &doc {
        let Some(literal) = default.strip_prefix('`').and_then(|d| d.strip_suffix('`')) else { continue };
        let Some(code) = key.split('.').try_fold(&defaults, |v, k| v.get(k)) else { continue };
        let parsed: toml::Value = toml::from_str::<toml::Table>(&format!("v = {literal}"))
            .unwrap_or_else(|e| panic!("{key}: default {literal} is not TOML: {e}"))["v"]
            .clone();
        assert_eq!(serde_json::to_value(parsed).unwrap(), *code, "the documented default of {key}");
        checked += 1;
    }
    assert!(checked >= 12, "only {checked} defaults compared");
    // And the file of documented defaults is accepted as a whole.
    let literals: Vec<String> = doc
        .iter()
        .filter(|(k, _)| !k.contains('.'))
        .filter_map(|(k, d)| Some(format!("{k} = {}", d.strip_prefix('`')?.strip_suffix('`')?)))
        .collect();
    let parsed: Config = toml::from_str(&literals.join("\n")).expect("the documented defaults parse");
    parsed.validate().unwrap();
}

#[test]
fn every_conflist_key_is_documented_and_every_documented_plugin_key_exists() {
    let conflist: Value = serde_json::from_str(CONFLIST).unwrap();
    let top = documented("### Top level");
    let entry_doc = documented("### The vpc-cni entry");
    for key in conflist.as_object().unwrap().keys() {
        assert!(top.contains_key(key), "the conflist's {key} is not documented");
    }
    let entry = conflist["plugins"].as_array().unwrap().iter().find(|p| p["type"] == "vpc-cni").unwrap();
    let mut keys = BTreeSet::new();
    paths(entry, "", "[]", &mut keys);
    for key in keys {
        // Opaque values (capabilities, dns) are documented as a whole.
        let documented_as = |k: &str| entry_doc.contains_key(k);
        let parent_opaque = ["capabilities.", "dns."].iter().any(|p| key.starts_with(p));
        assert!(documented_as(&key) || parent_opaque, "the shipped vpc-cni entry's {key} is not documented");
    }
    for key in entry_doc.keys() {
        let last = key.rsplit('.').next().unwrap().trim_end_matches("[]");
        let snake: String = last
            .chars()
            .flat_map(|c| if c.is_ascii_uppercase() { vec!['_', c.to_ascii_lowercase()] } else { vec![c] })
            .collect();
        assert!(
            CNI_SPEC.contains(&format!("pub {snake}:")) || CNI_SPEC.contains(&format!("rename = \"{last}\"")),
            "docs/configuration.md lists {key}, which vpc-cni's NetConf does not have"
        );
    }
}

#[test]
fn the_documented_plugin_defaults_are_the_plugins_and_agree_with_vswitchd() {
    let minimal = r#"{"cniVersion":"1.1.0","name":"vpc","type":"vpc-cni","ipam":{"ranges":[{"rangeStart":"10.10.40.1","rangeEnd":"10.10.40.9"}]}}"#;
    let conf = cni::spec::NetConf::parse(minimal.as_bytes()).unwrap();
    // Every key with a literal default, as the plugin filled it in.
    let parsed = serde_json::json!({
        "vswitchSocket": conf.vswitch_socket,
        "gateway": conf.gateway,
        "mtu": conf.mtu,
        "logFile": conf.log_file,
        "logMaxBytes": conf.log_max_bytes,
        "ipam": {
            "type": conf.ipam.source,
            "dataDir": conf.ipam.data_dir,
            "reuseDelaySeconds": conf.ipam.reuse_delay_seconds,
        },
    });
    let mut checked = 0;
    for (key, default) in documented("### The vpc-cni entry") {
        let Some(literal) = default.strip_prefix('`').and_then(|d| d.strip_suffix('`')) else { continue };
        let code = key.split('.').try_fold(&parsed, |v, k| v.get(k));
        let code = code.unwrap_or_else(|| panic!("{key} has a documented default this test does not read"));
        let documented: Value = serde_json::from_str(literal).unwrap_or_else(|e| panic!("{key}: {literal}: {e}"));
        assert_eq!(&documented, code, "the documented default of {key}");
        checked += 1;
    }
    assert_eq!(checked, 8, "every literal default compared");

    // What both files must agree on, they agree on when neither says.
    let vswitchd = Config::default();
    assert_eq!(conf.vswitch_socket, vswitchd.socket);
    assert_eq!(conf.gateway, vswitchd.gateway_ip);
    assert_eq!(conf.gateway_mac(), vswitchd.gateway_mac());
    assert_eq!(conf.mtu, vswitchd.pod_mtu);
    let cluster: vswitch::ipam::IpamConfig = toml::from_str("pools = [\"10.10.0.0/16\"]").unwrap();
    assert_eq!(conf.ipam.reuse_delay_seconds, cluster.reuse_delay_seconds);
}
