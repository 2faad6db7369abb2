//! This node's identity on UCloud, as UK8S's CNI learns it: the UHost metadata service's instance
//! document, `GET http://100.80.80.80/meta-data/v1.json` (ucloud/ucloud-sdk-go
//! `ucloud/metadata/client.go`, `GetInstanceIdentityDocument`; ucloud/uk8s-cni-vpc
//! `pkg/uapi/meta.go` `GetMeta` and `pkg/uapi/client.go` `NewClient`). From it: the host id
//! (`ObjectId` of `AllocateSecondaryIp`) is `instance-id` (UK8S's `meta.InstanceId`), and the NIC
//! whose secondary IPs pods get is the entry of `uhost.network-interfaces` with `"default": true`
//! (UK8S takes the VPC and subnet from that one), its `mac`. `[ipam.ucloud]`'s `host_id` and
//! `nic_mac`, when set, win: a DaemonSet leaves them out, one config for every node.

use std::time::Duration;

use serde_json::Value;

use super::config::UCloudConfig;
use super::http::{exchange, parse_reply, split_endpoint};

/// The UHost metadata service, the same address in every region.
pub const METADATA_ENDPOINT: &str = "http://100.80.80.80";
/// The instance document's path.
pub const DOCUMENT_PATH: &str = "/meta-data/v1.json";
/// Each try; the service answers from the hypervisor, in milliseconds.
const TRY_TIMEOUT: Duration = Duration::from_secs(2);
/// Tries while the service is unreachable or failing (a node just booted); a 4xx is final.
const TRIES: u32 = 3;
const BETWEEN_TRIES: Duration = Duration::from_secs(1);

/// Whom the pods' secondary IPs are registered to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeIdentity {
    /// The NIC's MAC, lower case.
    pub nic_mac: String,
    /// The UHost id (`ObjectId`).
    pub host_id: String,
    /// `configured`, or `metadata http://100.80.80.80` for what it told.
    pub source: String,
}

/// Why the identity is not known: vswitchd's IPAM does not start (as with any unusable
/// `[ipam.ucloud]`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MetadataError {
    /// A switch built without asking the service (in memory) and a config that leaves it out.
    #[error(
        "ipam.ucloud: nic_mac and host_id must be set here (the metadata service is asked only at vswitchd's start)"
    )]
    NotDiscovered,
    #[error(
        "ipam.ucloud: {missing} not set and the UHost metadata service could not tell: GET {endpoint}{DOCUMENT_PATH}: \
         {error} (set {missing} in [ipam.ucloud], or check ipam.ucloud.metadata_endpoint and the route to it)"
    )]
    Unavailable { missing: &'static str, endpoint: String, error: String },
    #[error(
        "ipam.ucloud: {missing} not set and the UHost metadata service's instance document \
         ({endpoint}{DOCUMENT_PATH}) has no {field}: set {missing} in [ipam.ucloud]"
    )]
    NotInDocument { missing: &'static str, endpoint: String, field: &'static str },
}

/// What `[ipam.ucloud]` leaves to the metadata service, as the error names it.
fn missing(config: &UCloudConfig) -> Option<&'static str> {
    match (&config.nic_mac, &config.host_id) {
        (Some(_), Some(_)) => None,
        (None, Some(_)) => Some("nic_mac is"),
        (Some(_), None) => Some("host_id is"),
        (None, None) => Some("nic_mac and host_id are"),
    }
}

/// The identity `[ipam.ucloud]` gives by itself, if it gives all of it.
pub fn configured(config: &UCloudConfig) -> Option<NodeIdentity> {
    Some(NodeIdentity {
        nic_mac: config.nic_mac.as_ref()?.to_ascii_lowercase(),
        host_id: config.host_id.clone()?,
        source: "configured".into(),
    })
}

/// This node's identity: `[ipam.ucloud]`'s, completed from the metadata service if needed.
pub async fn identity(config: &UCloudConfig) -> Result<NodeIdentity, MetadataError> {
    let Some(missing) = missing(config) else {
        return Ok(configured(config).expect("both set"));
    };
    let endpoint = config.metadata_endpoint.trim_end_matches('/').to_string();
    let document = fetch_document(&endpoint).await.map_err(|error| MetadataError::Unavailable {
        missing,
        endpoint: endpoint.clone(),
        error,
    })?;
    let absent = |field| MetadataError::NotInDocument { missing, endpoint: endpoint.clone(), field };
    let host_id = match &config.host_id {
        Some(id) => id.clone(),
        None => host_id(&document).ok_or_else(|| absent("instance-id"))?,
    };
    let nic_mac = match &config.nic_mac {
        Some(mac) => mac.to_ascii_lowercase(),
        None => {
            primary_mac(&document).ok_or_else(|| absent("primary NIC (uhost.network-interfaces, \"default\": true)"))?
        }
    };
    Ok(NodeIdentity { nic_mac, host_id, source: format!("metadata {endpoint}") })
}

/// `instance-id` (UK8S's `ObjectId` for a UHost), else `uhost.uhost-id`.
fn host_id(document: &Value) -> Option<String> {
    [&document["instance-id"], &document["uhost"]["uhost-id"]]
        .into_iter()
        .find_map(|v| v.as_str().filter(|s| !s.is_empty()).map(String::from))
}

/// The MAC of the NIC marked `"default": true`; a document with a single NIC and no mark (older
/// UHosts) means that one. Several NICs and none marked: unknown, never a guess.
fn primary_mac(document: &Value) -> Option<String> {
    let nics = document["uhost"]["network-interfaces"].as_array()?;
    let marked = nics.iter().find(|n| n["default"].as_bool() == Some(true));
    let nic = marked.or_else(|| (nics.len() == 1).then(|| &nics[0]))?;
    nic["mac"].as_str().filter(|m| !m.is_empty()).map(str::to_ascii_lowercase)
}

/// The instance document, parsed; tries again while the service is unreachable or failing.
async fn fetch_document(endpoint: &str) -> Result<Value, String> {
    let (host, port, _) = split_endpoint(endpoint).ok_or("not an http://HOST[:PORT] URL")?;
    let mut last = String::new();
    for attempt in 1..=TRIES {
        if attempt > 1 {
            tokio::time::sleep(BETWEEN_TRIES).await;
        }
        let reply = match exchange((&host, port), "GET", DOCUMENT_PATH, &[], "", TRY_TIMEOUT).await {
            Ok(raw) => parse_reply(&raw)?,
            Err(e) => {
                last = e;
                continue;
            }
        };
        match reply.status {
            200 => return serde_json::from_slice(&reply.body).map_err(|e| format!("not a JSON document: {e}")),
            status @ 400..=499 => return Err(format!("HTTP status {status}")),
            status => last = format!("HTTP status {status}"),
        }
    }
    Err(format!("{last} ({TRIES} tries)"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn document(nics: Value) -> Value {
        json!({"instance-id": "uhost-hhqeihh5", "uhost": {"uhost-id": "uhost-hhqeihh5", "network-interfaces": nics}})
    }

    #[test]
    fn the_primary_nic_is_the_default_one() {
        let two = document(json!([
            {"default": false, "mac": "52:54:00:AA:00:02"},
            {"default": true, "mac": "52:54:00:71:04:E1"},
        ]));
        assert_eq!(primary_mac(&two).as_deref(), Some("52:54:00:71:04:e1"));
        assert_eq!(host_id(&two).as_deref(), Some("uhost-hhqeihh5"));
        let one_unmarked = document(json!([{"mac": "52:54:00:71:04:E1"}]));
        assert_eq!(primary_mac(&one_unmarked).as_deref(), Some("52:54:00:71:04:e1"));
        let two_unmarked = document(json!([{"mac": "52:54:00:aa:00:01"}, {"mac": "52:54:00:aa:00:02"}]));
        assert_eq!(primary_mac(&two_unmarked), None, "never a guess");
        assert_eq!(host_id(&json!({"uhost": {"uhost-id": "uhost-2"}})).as_deref(), Some("uhost-2"));
        assert_eq!(host_id(&json!({"instance-id": ""})), None);
    }

    #[test]
    fn what_is_missing_is_named() {
        let mut config: UCloudConfig = toml::from_str(
            "endpoint = \"http://127.0.0.1:1\"\nregion = \"r\"\nzone = \"z\"\nproject = \"p\"\nvpc_id = \"v\"\n\
             subnet_id = \"s\"\npublic_key_file = \"a\"\nprivate_key_file = \"b\"",
        )
        .unwrap();
        assert_eq!(config.metadata_endpoint, METADATA_ENDPOINT);
        assert_eq!(missing(&config), Some("nic_mac and host_id are"));
        config.host_id = Some("uhost-1".into());
        assert_eq!(missing(&config), Some("nic_mac is"));
        config.nic_mac = Some("52:54:00:00:00:0A".into());
        let configured = configured(&config).unwrap();
        assert_eq!((configured.nic_mac.as_str(), configured.source.as_str()), ("52:54:00:00:00:0a", "configured"));
    }
}
