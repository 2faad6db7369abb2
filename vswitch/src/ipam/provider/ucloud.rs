//! UCloud's VPC API for one node's NIC: form-encoded POST, `Signature` = hex SHA1 of every other
//! parameter sorted by name (name then value, concatenated) followed by the private key, JSON
//! replies with `RetCode` (as `ucloud-sdk-python3` and UK8S's CNI speak it).
//!
//! The transport is a small HTTP/1.1 client on tokio (one connection per call, `Connection:
//! close`; `https://` through rustls: [`super::http`]).

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::Path;
use std::time::Duration;

use serde_json::Value;

use super::config::UCloudConfig;
use super::http::{form_encode, ok_body, ApiEndpoint};
use super::ucloud_metadata::NodeIdentity;
use super::{PoolCall, ProviderError, SecondaryIp, VpcProvider};

/// A call that takes longer than this counts as the API being unavailable.
const CALL_TIMEOUT: Duration = Duration::from_secs(10);

/// Why the client cannot be built from `[ipam.ucloud]`.
#[derive(Debug, thiserror::Error)]
pub enum UCloudSetupError {
    #[error("ipam.ucloud: {0}")]
    Endpoint(String),
    #[error("ipam.ucloud: reading {path}: {source}")]
    Credential { path: std::path::PathBuf, source: std::io::Error },
    #[error("ipam.ucloud: {0} is empty")]
    EmptyCredential(std::path::PathBuf),
}

/// The client. Its `Debug` leaves the private key out.
pub struct UCloud {
    config: UCloudConfig,
    endpoint: ApiEndpoint,
    public_key: String,
    private_key: String,
    /// This node's NIC and host, configured or from the metadata service.
    identity: NodeIdentity,
}

impl std::fmt::Debug for UCloud {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UCloud").field("endpoint", &self.config.endpoint).field("identity", &self.identity).finish()
    }
}

fn read_secret(path: &Path) -> Result<String, UCloudSetupError> {
    let text = std::fs::read_to_string(path)
        .map_err(|source| UCloudSetupError::Credential { path: path.to_path_buf(), source })?;
    let text = text.trim().to_string();
    if text.is_empty() {
        return Err(UCloudSetupError::EmptyCredential(path.to_path_buf()));
    }
    Ok(text)
}

/// UCloud's signature of `params` (all but `Signature`) under `private_key`.
pub fn signature(params: &BTreeMap<String, String>, private_key: &str) -> String {
    let mut text = String::new();
    for (key, value) in params.iter().filter(|(k, _)| *k != "Signature") {
        text.push_str(key);
        text.push_str(value);
    }
    text.push_str(private_key);
    hex::encode(ring::digest::digest(&ring::digest::SHA1_FOR_LEGACY_USE_ONLY, text.as_bytes()))
}

impl UCloud {
    /// The client for `config` on behalf of the node `identity` (`ucloud_metadata::identity`).
    pub fn new(config: &UCloudConfig, identity: NodeIdentity) -> Result<UCloud, UCloudSetupError> {
        let endpoint = ApiEndpoint::new(&config.endpoint, config.ca_file.as_deref())
            .map_err(|e| UCloudSetupError::Endpoint(e.to_string()))?;
        Ok(UCloud {
            endpoint,
            public_key: read_secret(&config.public_key_file)?,
            private_key: read_secret(&config.private_key_file)?,
            identity,
            config: config.clone(),
        })
    }

    /// The signed form body of `action` with `params` and the common ones.
    fn body(&self, action: &str, params: &[(&str, String)]) -> String {
        let mut all: BTreeMap<String, String> = params.iter().map(|(k, v)| (k.to_string(), v.clone())).collect();
        all.insert("Action".into(), action.into());
        all.insert("PublicKey".into(), self.public_key.clone());
        all.insert("Region".into(), self.config.region.clone());
        all.insert("Zone".into(), self.config.zone.clone());
        all.insert("ProjectId".into(), self.config.project.clone());
        let sig = signature(&all, &self.private_key);
        all.insert("Signature".into(), sig);
        form_encode(&all)
    }

    async fn post(&self, body: String) -> Result<Vec<u8>, String> {
        let form = [("Content-Type", "application/x-www-form-urlencoded")];
        let reply = self.endpoint.exchange("POST", &form, &body, CALL_TIMEOUT).await?;
        ok_body(&reply)
    }

    /// One call: the reply's fields on `RetCode` 0, else the typed error.
    async fn call(&self, action: &str, params: &[(&str, String)]) -> Result<Value, ProviderError> {
        let body = self
            .post(self.body(action, params))
            .await
            .map_err(|e| ProviderError::Unavailable(format!("{action} {}: {e}", self.config.endpoint)))?;
        let reply: Value = serde_json::from_slice(&body)
            .map_err(|e| ProviderError::Unavailable(format!("{action}: the reply is not JSON: {e}")))?;
        let code = reply["RetCode"].as_u64().unwrap_or(u64::MAX) as u32;
        let message = reply["Message"].as_str().unwrap_or("").to_string();
        Err(match code {
            0 => return Ok(reply),
            153 => ProviderError::Throttled(message),
            170..=172 => ProviderError::Auth(format!("RetCode {code}: {message}")),
            57000 => ProviderError::SubnetFull(message),
            58221 => ProviderError::AddressGone(message),
            58223 => ProviderError::Quota(message),
            u32::MAX => ProviderError::Unavailable(format!("{action}: a reply without RetCode")),
            code => ProviderError::Other { code, message },
        })
    }

    pub fn identity(&self) -> &NodeIdentity {
        &self.identity
    }

    fn subnet_params(&self) -> [(&str, String); 2] {
        [("VPCId", self.config.vpc_id.clone()), ("SubnetId", self.config.subnet_id.clone())]
    }
}

fn ip_of(value: &Value, action: &str) -> Result<IpAddr, ProviderError> {
    value["Ip"]
        .as_str()
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| ProviderError::Other { code: 0, message: format!("{action}: a reply without a valid Ip") })
}

/// The UCloud VPC API action behind each of the pool's calls.
pub fn call_name(call: PoolCall) -> &'static str {
    match call {
        PoolCall::Allocate => "AllocateSecondaryIp",
        PoolCall::Delete => "DeleteSecondaryIp",
        PoolCall::Describe | PoolCall::Locate => "DescribeSecondaryIp",
        PoolCall::Move => "MoveSecondaryIPMac",
        PoolCall::SubnetFree => "DescribeSubnet",
        // UCloud's NIC is the UHost's own: nothing leaks, never called.
        PoolCall::CollectLeakedNics => "CollectLeakedNics",
    }
}

fn data_set(reply: &Value) -> &[Value] {
    reply["DataSet"].as_array().map_or(&[], Vec::as_slice)
}

impl VpcProvider for UCloud {
    fn name(&self) -> &'static str {
        "ucloud"
    }

    fn nic(&self) -> &str {
        &self.identity.nic_mac
    }

    fn call_name(&self, call: PoolCall) -> &'static str {
        call_name(call)
    }

    async fn allocate(&self, ip: Option<IpAddr>) -> Result<IpAddr, ProviderError> {
        let mut params = vec![("Mac", self.identity.nic_mac.clone()), ("ObjectId", self.identity.host_id.clone())];
        params.extend(self.subnet_params());
        params.extend(ip.map(|ip| ("Ip", ip.to_string())));
        let reply = self.call("AllocateSecondaryIp", &params).await?;
        ip_of(&reply["IpInfo"], "AllocateSecondaryIp")
    }

    async fn delete(&self, ip: IpAddr) -> Result<(), ProviderError> {
        let mut params = vec![("Ip", ip.to_string()), ("Mac", self.identity.nic_mac.clone())];
        params.push(("ObjectId", self.identity.host_id.clone()));
        params.extend(self.subnet_params());
        self.call("DeleteSecondaryIp", &params).await.map(drop)
    }

    async fn describe(&self) -> Result<Vec<IpAddr>, ProviderError> {
        let mut params = vec![("Mac", self.identity.nic_mac.clone())];
        params.extend(self.subnet_params());
        let reply = self.call("DescribeSecondaryIp", &params).await?;
        data_set(&reply).iter().map(|v| ip_of(v, "DescribeSecondaryIp")).collect()
    }

    async fn locate(&self, ip: IpAddr) -> Result<Option<SecondaryIp>, ProviderError> {
        let mut params = vec![("Ip", ip.to_string())];
        params.extend(self.subnet_params());
        let reply = self.call("DescribeSecondaryIp", &params).await?;
        let found = data_set(&reply).iter().find(|v| ip_of(v, "DescribeSecondaryIp").ok() == Some(ip));
        Ok(found.map(|v| SecondaryIp { ip, nic: v["Mac"].as_str().unwrap_or("").to_ascii_lowercase() }))
    }

    async fn move_here(&self, ip: IpAddr, from: &str) -> Result<(), ProviderError> {
        let params = [
            ("Ip", ip.to_string()),
            ("OldMac", from.to_string()),
            ("NewMac", self.identity.nic_mac.clone()),
            ("SubnetId", self.config.subnet_id.clone()),
        ];
        self.call("MoveSecondaryIPMac", &params).await.map(drop)
    }

    async fn subnet_free(&self) -> Result<u64, ProviderError> {
        let params = [("SubnetIds.0", self.config.subnet_id.clone()), ("ShowAvailableIPs", "true".to_string())];
        let reply = self.call("DescribeSubnet", &params).await?;
        let subnet = data_set(&reply).iter().find(|s| s["SubnetId"].as_str() == Some(&self.config.subnet_id));
        subnet.and_then(|s| s["AvailableIPs"].as_u64()).ok_or_else(|| ProviderError::Other {
            code: 0,
            message: format!("DescribeSubnet: no subnet {} in the reply", self.config.subnet_id),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::super::ucloud_metadata::configured;
    use super::*;

    /// The signature and encoding are the ones the lab's verifier (written after UCloud's SDK)
    /// accepts: same digest, and the form decodes back to the signed parameters.
    #[test]
    fn signature_matches_the_lab_verifier() {
        let mut params = BTreeMap::new();
        for (k, v) in
            [("Action", "DescribeSubnet"), ("PublicKey", "pub+/="), ("Region", "cn-lab"), ("SubnetIds.0", "s 1")]
        {
            params.insert(k.to_string(), v.to_string());
        }
        let ours = signature(&params, "secret");
        assert_eq!(ours, vpc_lab::lab::vpc_api::dialect::signature(&params, "secret"));
        assert_ne!(ours, signature(&params, "other"));
        let mut decoded = vpc_lab::lab::vpc_api::dialect::Params::new();
        vpc_lab::lab::vpc_api::dialect::parse_form(&form_encode(&params), &mut decoded).unwrap();
        assert_eq!(decoded, params);
    }

    /// The client against the lab's VPC API server (in memory, no fabric): every call the pool
    /// makes, the RetCodes it types, and a wrong key refused.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn every_call_against_the_lab_api() {
        use vpc_lab::lab::vpc_api::local::{serve, small_vpc};
        let dir = tempfile::tempdir().unwrap();
        let vpc = small_vpc(&[("52:54:00:00:00:01", "uhost-1"), ("52:54:00:00:00:02", "uhost-2")]);
        let port = serve(&vpc, dir.path());
        std::fs::write(dir.path().join("public_key"), "pub\n").unwrap();
        std::fs::write(dir.path().join("private_key"), "priv\n").unwrap();
        std::fs::write(dir.path().join("wrong_key"), "wrong").unwrap();
        let config = |mac: &str, host: &str, private: &str| UCloudConfig {
            endpoint: format!("http://127.0.0.1:{port}"),
            ca_file: None,
            region: "cn-lab".into(),
            zone: "cn-lab-01".into(),
            project: "org-lab".into(),
            vpc_id: "uvnet-t".into(),
            subnet_id: "subnet-t".into(),
            nic_mac: Some(mac.into()),
            host_id: Some(host.into()),
            metadata_endpoint: "http://127.0.0.1:1".into(),
            public_key_file: dir.path().join("public_key"),
            private_key_file: dir.path().join(private),
            warm_low: 1,
            warm_high: 2,
            cooldown_seconds: 30,
            fabric_probe_timeout_ms: 0,
            fabric_probe_target: None,
        };
        let client = |c: &UCloudConfig| UCloud::new(c, configured(c).unwrap()).unwrap();
        let one = client(&config("52:54:00:00:00:01", "uhost-1", "private_key"));
        let two = client(&config("52:54:00:00:00:02", "uhost-2", "private_key"));
        assert!(!format!("{one:?}").contains("priv"), "the key is never printed");
        let mut free = None;
        for _ in 0..100 {
            match one.subnet_free().await {
                Ok(n) => {
                    free = Some(n);
                    break;
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
        assert_eq!(free, Some(2), "10.0.0.100/30 less its network and broadcast addresses");
        let a = one.allocate(None).await.unwrap();
        assert_eq!(a, "10.0.0.101".parse::<IpAddr>().unwrap());
        let named = two.allocate(Some("10.0.0.103".parse().unwrap())).await.unwrap();
        assert_eq!(one.describe().await.unwrap(), vec![a]);
        assert_eq!(one.locate(named).await.unwrap().unwrap().nic, "52:54:00:00:00:02");
        one.move_here(named, "52:54:00:00:00:02").await.unwrap();
        assert_eq!(one.describe().await.unwrap(), vec![a, named]);
        one.allocate(None).await.unwrap();
        assert!(matches!(one.allocate(None).await, Err(ProviderError::SubnetFull(m)) if m.contains("subnet-t")));
        one.delete(a).await.unwrap();
        assert!(matches!(one.delete(a).await, Err(ProviderError::AddressGone(_))));
        let wrong = client(&config("52:54:00:00:00:01", "uhost-1", "wrong_key"));
        assert!(matches!(wrong.subnet_free().await, Err(ProviderError::Auth(m)) if m.contains("171")));
        let nobody = client(&UCloudConfig { endpoint: "http://127.0.0.1:1".into(), ..config("m", "h", "private_key") });
        assert!(matches!(nobody.subnet_free().await, Err(ProviderError::Unavailable(_))));
    }
}
