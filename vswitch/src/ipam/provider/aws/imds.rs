//! The instance metadata service, IMDSv2: a session token from `PUT /latest/api/token`, then
//! `GET /latest/meta-data/...` with it (as AWS's VPC CNI reads the instance id).

use std::time::Duration;

use crate::ipam::provider::http::{exchange, ok_body, split_endpoint};
use crate::ipam::provider::ProviderError;

const TIMEOUT: Duration = Duration::from_secs(2);

/// `meta-data/{item}` from the metadata service at `endpoint`.
pub async fn metadata(endpoint: &str, item: &str) -> Result<String, ProviderError> {
    let unavailable = |e: String| ProviderError::Unavailable(format!("instance metadata {endpoint}: {e}"));
    let (host, port, _) = split_endpoint(endpoint).ok_or_else(|| unavailable("not an http:// URL".into()))?;
    let ttl = [("X-aws-ec2-metadata-token-ttl-seconds", "60")];
    let token = exchange((&host, port), "PUT", "/latest/api/token", &ttl, "", TIMEOUT).await.map_err(unavailable)?;
    let token = String::from_utf8(ok_body(&token).map_err(|e| unavailable(format!("token: {e}")))?)
        .map_err(|_| unavailable("token: not UTF-8".into()))?;
    let with = [("X-aws-ec2-metadata-token", token.trim())];
    let path = format!("/latest/meta-data/{item}");
    let reply = exchange((&host, port), "GET", &path, &with, "", TIMEOUT).await.map_err(unavailable)?;
    let value = ok_body(&reply).map_err(|e| unavailable(format!("{item}: {e}")))?;
    let value = String::from_utf8_lossy(&value).trim().to_string();
    if value.is_empty() {
        return Err(unavailable(format!("{item}: empty")));
    }
    Ok(value)
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
