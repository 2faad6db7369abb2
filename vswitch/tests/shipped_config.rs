//! The configuration the DaemonSet ships (its ConfigMap's `vswitchd.toml`) loads as vswitchd
//! loads it, and so does each provider table left commented in it, uncommented as its comment
//! says (`provider = "..."` in `[ipam]`): a renamed or misspelt key is refused there
//! (`deny_unknown_fields`), so an example that drifted from the code fails here.

use serde::Deserialize;
use vswitch::control::config::Config;

const MANIFEST: &str = include_str!("../../cni/deploy/vswitchd-daemonset.yaml");

/// The ConfigMap's `vswitchd.toml`.
fn shipped() -> String {
    let config_map = serde_yaml::Deserializer::from_str(MANIFEST)
        .map(|d| serde_yaml::Value::deserialize(d).expect("the manifest is YAML"))
        .find(|d| d["kind"] == "ConfigMap")
        .expect("a ConfigMap");
    config_map["data"]["vswitchd.toml"].as_str().expect("data.vswitchd.toml").to_string()
}

/// `toml` with `provider = "<provider>"` in `[ipam]` and the commented `[ipam.<provider>]` table
/// uncommented: its header and the commented `key = value` lines that follow it.
fn with_provider(toml: &str, provider: &str) -> String {
    let header = format!("# [ipam.{provider}]");
    let lines: Vec<&str> = toml.lines().collect();
    let at = lines.iter().position(|l| l.trim() == header).unwrap_or_else(|| panic!("no `{header}` in {toml}"));
    let is_key = |l: &str| l.split_once(" = ").is_some_and(|(k, _)| k.chars().all(|c| c.is_alphanumeric() || c == '_'));
    let mut table = vec![&header[2..]];
    table.extend(lines[at + 1..].iter().map_while(|l| l.trim().strip_prefix("# ").filter(|l| is_key(l))));
    assert!(table.len() > 1, "`{header}` has no keys");
    let mut out: Vec<String> = Vec::new();
    for line in &lines {
        out.push(line.to_string());
        if line.trim() == "[ipam]" {
            out.push(format!("provider = \"{provider}\""));
        }
    }
    out.push(String::new());
    out.extend(table.iter().map(|l| l.to_string()));
    out.join("\n")
}

fn load(toml: &str) -> Config {
    let config: Config = toml::from_str(toml).unwrap_or_else(|e| panic!("{e}\n{toml}"));
    config.validate().unwrap_or_else(|e| panic!("{e}\n{toml}"));
    config
}

#[test]
fn the_shipped_configuration_loads() {
    let config = load(&shipped());
    let ipam = config.ipam.expect("[ipam]");
    assert!(ipam.provider.is_none(), "the shipped mode is the cluster IPAM on etcd");
    assert!(ipam.settings().is_ok());
}

#[test]
fn each_commented_provider_table_loads_as_its_comment_says() {
    let aws = load(&with_provider(&shipped(), "aws")).ipam.expect("[ipam]");
    let table = aws.aws.expect("[ipam.aws]");
    table.settings().unwrap_or_else(|e| panic!("[ipam.aws]: {e}"));
    assert_eq!((table.warm_ip_target, table.minimum_ip_target), (Some(2), Some(32)), "AWS's names are read");
    let ucloud = load(&with_provider(&shipped(), "ucloud")).ipam.expect("[ipam]");
    ucloud.ucloud.expect("[ipam.ucloud]").settings().unwrap_or_else(|e| panic!("[ipam.ucloud]: {e}"));
}
