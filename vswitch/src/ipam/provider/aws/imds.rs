//! The instance metadata service, IMDSv2: a session token from `PUT /latest/api/token`, then
//! `GET /latest/meta-data/...` with it (as AWS's VPC CNI reads the instance id, and the SDKs'
//! credential chain reads the instance profile's credentials).

use std::time::{Duration, SystemTime};

use serde::Deserialize;

use super::credentials::Credentials;
use super::enis::parse_rfc3339;
use crate::ipam::provider::http::{exchange, parse_reply, split_endpoint};
use crate::ipam::provider::ProviderError;

const TIMEOUT: Duration = Duration::from_secs(2);
/// The instance profile's role names, one per line (EC2 attaches at most one).
const ROLES: &str = "iam/security-credentials/";

/// One IMDSv2 session with the service at `endpoint`.
struct Session {
    endpoint: String,
    host: String,
    port: u16,
    token: String,
}

fn unavailable(endpoint: &str) -> impl Fn(String) -> ProviderError + '_ {
    move |e| ProviderError::Unavailable(format!("instance metadata {endpoint}: {e}"))
}

impl Session {
    async fn open(endpoint: &str) -> Result<Session, ProviderError> {
        let fail = unavailable(endpoint);
        let (host, port, _) = split_endpoint(endpoint).ok_or_else(|| fail("not an http:// URL".into()))?;
        let ttl = [("X-aws-ec2-metadata-token-ttl-seconds", "60")];
        let raw = exchange((&host, port), "PUT", "/latest/api/token", &ttl, "", TIMEOUT).await.map_err(&fail)?;
        let reply = parse_reply(&raw).map_err(&fail)?;
        if reply.status != 200 {
            return Err(fail(format!("token: HTTP status {}", reply.status)));
        }
        let token = String::from_utf8(reply.body).map_err(|_| fail("token: not UTF-8".into()))?.trim().to_string();
        Ok(Session { endpoint: endpoint.into(), host, port, token })
    }

    /// `meta-data/{item}`: its status and body.
    async fn get(&self, item: &str) -> Result<(u16, Vec<u8>), ProviderError> {
        let with = [("X-aws-ec2-metadata-token", self.token.as_str())];
        let path = format!("/latest/meta-data/{item}");
        let fail = unavailable(&self.endpoint);
        let raw = exchange((&self.host, self.port), "GET", &path, &with, "", TIMEOUT).await.map_err(&fail)?;
        let reply = parse_reply(&raw).map_err(&fail)?;
        Ok((reply.status, reply.body))
    }
}

/// `meta-data/{item}` from the metadata service at `endpoint`.
pub async fn metadata(endpoint: &str, item: &str) -> Result<String, ProviderError> {
    let (status, body) = Session::open(endpoint).await?.get(item).await?;
    let fail = unavailable(endpoint);
    if status != 200 {
        return Err(fail(format!("{item}: HTTP status {status}")));
    }
    let value = String::from_utf8_lossy(&body).trim().to_string();
    if value.is_empty() {
        return Err(fail(format!("{item}: empty")));
    }
    Ok(value)
}

/// The instance profile's credentials as IMDS serves them (`iam/security-credentials/<role>`).
#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct RoleDocument {
    #[serde(default)]
    code: Option<String>,
    access_key_id: String,
    secret_access_key: String,
    #[serde(default)]
    token: Option<String>,
    expiration: String,
}

/// The instance profile's role and its current credentials, with their expiry. No role (no
/// instance profile attached): [`ProviderError::Auth`]; the service unreachable:
/// [`ProviderError::Unavailable`]. Errors never quote the document (it holds the secret).
pub async fn role_credentials(endpoint: &str) -> Result<(Credentials, SystemTime), ProviderError> {
    let session = Session::open(endpoint).await?;
    let (status, body) = session.get(ROLES).await?;
    let role = String::from_utf8_lossy(&body).lines().next().unwrap_or("").trim().to_string();
    if status == 404 || (status == 200 && role.is_empty()) {
        return Err(ProviderError::Auth(format!(
            "instance metadata {endpoint}: no instance profile (GET /latest/meta-data/{ROLES}: HTTP status {status})"
        )));
    }
    if status != 200 {
        return Err(unavailable(endpoint)(format!("{ROLES}: HTTP status {status}")));
    }
    let (status, body) = session.get(&format!("{ROLES}{role}")).await?;
    let bad = |what: &str| unavailable(endpoint)(format!("{ROLES}{role}: {what}"));
    if status != 200 {
        return Err(bad(&format!("HTTP status {status}")));
    }
    let doc: RoleDocument = serde_json::from_slice(&body).map_err(|_| bad("not the credentials document"))?;
    if let Some(code) = doc.code.as_deref().filter(|c| *c != "Success") {
        return Err(bad(&format!("Code {code}")));
    }
    let expires = parse_rfc3339(&doc.expiration).ok_or_else(|| bad("an unreadable Expiration"))?;
    let credentials = Credentials {
        access_key_id: doc.access_key_id,
        secret_access_key: doc.secret_access_key,
        session_token: doc.token,
        source: format!("instance profile {role} (IMDS {endpoint})"),
    };
    Ok((credentials, expires))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A metadata service that answers only with the token it handed out.
    #[tokio::test]
    async fn the_instance_id_is_read_with_a_token() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let endpoint = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move {
            loop {
                let (mut stream, _) = listener.accept().await.unwrap();
                let mut buf = vec![0; 4096];
                let n = stream.read(&mut buf).await.unwrap();
                let request = String::from_utf8_lossy(&buf[..n]).to_string();
                let (status, body) = if request.starts_with("PUT /latest/api/token")
                    && request.contains("X-aws-ec2-metadata-token-ttl-seconds")
                {
                    ("200 OK", "tok-1")
                } else if request.starts_with("GET /latest/meta-data/instance-id")
                    && request.contains("X-aws-ec2-metadata-token: tok-1")
                {
                    ("200 OK", "i-0123\n")
                } else {
                    ("401 Unauthorized", "")
                };
                let reply = format!("HTTP/1.1 {status}\r\nContent-Length: {}\r\n\r\n{body}", body.len());
                stream.write_all(reply.as_bytes()).await.unwrap();
            }
        });
        assert_eq!(metadata(&endpoint, "instance-id").await.unwrap(), "i-0123");
        assert!(
            matches!(metadata(&endpoint, "instance-type").await, Err(ProviderError::Unavailable(m)) if m.contains("401"))
        );
    }
}
