//! The providers' HTTP/1.1 client on tokio: one connection per call (`Connection: close`).
//! [`ApiEndpoint`] is a VPC API's: `https://` through rustls (the ring provider and rustls that
//! etcd-client already links), the server checked against Mozilla's roots built in
//! (webpki-roots: the shipped image has no system bundle) or, with `ca_file`, against that CA
//! alone; `http://` only to an address that stays inside a private network (loopback,
//! link-local, RFC 1918, shared, ULA), with a warning unless loopback or link-local: the requests
//! carry signatures (and an AWS session token) that must not cross the internet in clear. The
//! plain [`exchange`] is for the instance metadata service.

use std::net::IpAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, ServerName};
use tokio_rustls::rustls::{ClientConfig, RootCertStore};
use tokio_rustls::TlsConnector;

/// Replies larger than this are not the API's.
const MAX_REPLY: u64 = 4 << 20;

/// `SCHEME://host[:port][/path]` split, for `scheme` `http` or `https`.
fn split_url(url: &str, scheme: &str, default_port: u16) -> Option<(String, u16, String)> {
    let rest = url.strip_prefix(scheme)?.strip_prefix("://")?;
    let (authority, path) = match rest.find('/') {
        Some(at) => (&rest[..at], rest[at..].to_string()),
        None => (rest, "/".to_string()),
    };
    let (host, port) = match authority.rsplit_once(':') {
        Some((h, p)) if !h.ends_with(']') || h.starts_with('[') => (h, p.parse().ok()?),
        _ => (authority, default_port),
    };
    (!host.is_empty()).then(|| (host.trim_matches(['[', ']']).to_string(), port, path))
}

/// `http://host[:port][/path]` split.
pub(crate) fn split_endpoint(endpoint: &str) -> Option<(String, u16, String)> {
    split_url(endpoint, "http", 80)
}

/// `application/x-www-form-urlencoded`, as Python's `urlencode` writes it (AWS's Query
/// protocol encodes the same way: RFC 3986 unreserved characters kept).
pub(crate) fn form_encode<'a>(params: impl IntoIterator<Item = (&'a String, &'a String)>) -> String {
    let escape = |s: &str| {
        let mut out = String::with_capacity(s.len());
        for b in s.bytes() {
            match b {
                b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => out.push(b as char),
                b' ' => out.push('+'),
                _ => out.push_str(&format!("%{b:02X}")),
            }
        }
        out
    };
    params.into_iter().map(|(k, v)| format!("{}={}", escape(k), escape(v))).collect::<Vec<_>>().join("&")
}

/// `host` as the `Host` header says it (with a port other than 80).
pub(crate) fn host_header(host: &str, port: u16) -> String {
    if port == 80 {
        host.to_string()
    } else {
        format!("{host}:{port}")
    }
}

/// A reply: status and body (read to its end: `Content-Length` or until close).
#[derive(Debug)]
pub(crate) struct Reply {
    pub status: u16,
    pub body: Vec<u8>,
}

/// Parses a whole HTTP/1.1 reply.
pub(crate) fn parse_reply(reply: &[u8]) -> Result<Reply, String> {
    let end = reply.windows(4).position(|w| w == b"\r\n\r\n").ok_or("no end of headers")?;
    let head = std::str::from_utf8(&reply[..end]).map_err(|_| "headers not UTF-8")?;
    let status = head.split_whitespace().nth(1).and_then(|s| s.parse().ok()).ok_or("no status")?;
    let body = &reply[end + 4..];
    let header = |name: &str| {
        head.lines()
            .find_map(|l| l.split_once(':').filter(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.trim()))
    };
    if header("transfer-encoding").is_some_and(|v| v.eq_ignore_ascii_case("chunked")) {
        return Err("chunked replies are not read (the API answers with Content-Length)".into());
    }
    let body = match header("content-length").map(str::parse::<usize>) {
        Some(Ok(n)) if body.len() >= n => &body[..n],
        Some(_) => return Err("reply shorter than its Content-Length".into()),
        None => body,
    };
    Ok(Reply { status, body: body.to_vec() })
}

/// The body of a reply that must be `200`.
pub(crate) fn ok_body(reply: &[u8]) -> Result<Vec<u8>, String> {
    let reply = parse_reply(reply)?;
    if reply.status != 200 {
        return Err(format!("HTTP status {}", reply.status));
    }
    Ok(reply.body)
}

/// Sends the request and reads the reply to its end, on any stream.
async fn request_reply<S: AsyncRead + AsyncWrite + Unpin>(
    mut stream: S,
    head: (&str, &str, &str),
    headers: &[(&str, &str)],
    body: &str,
) -> Result<Vec<u8>, String> {
    let (method, path, host) = head;
    let mut request = format!("{method} {path} HTTP/1.1\r\nHost: {host}\r\n");
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str(&format!("Content-Length: {}\r\nConnection: close\r\nUser-Agent: vswitchd\r\n\r\n", body.len()));
    request.push_str(body);
    stream.write_all(request.as_bytes()).await.map_err(|e| e.to_string())?;
    stream.flush().await.map_err(|e| e.to_string())?;
    let mut reply = Vec::new();
    match stream.take(MAX_REPLY).read_to_end(&mut reply).await {
        Ok(_) => Ok(reply),
        // A TLS server that closes without close_notify (many do after `Connection: close`):
        // the reply is whole only if its Content-Length says so.
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof && whole_by_length(&reply) => Ok(reply),
        Err(e) => Err(e.to_string()),
    }
}

/// Whether `reply` has a `Content-Length` and at least that much body.
fn whole_by_length(reply: &[u8]) -> bool {
    let Some(end) = reply.windows(4).position(|w| w == b"\r\n\r\n") else { return false };
    let head = String::from_utf8_lossy(&reply[..end]);
    let length = head.lines().find_map(|l| {
        l.split_once(':').filter(|(k, _)| k.trim().eq_ignore_ascii_case("content-length")).map(|(_, v)| v.trim())
    });
    length.and_then(|n| n.parse::<usize>().ok()).is_some_and(|n| reply.len() - end - 4 >= n)
}

/// One plain-HTTP exchange with `host:port`: `method path` with `headers` and `body`, within
/// `timeout` (the instance metadata service; a VPC API goes through [`ApiEndpoint`]).
pub(crate) async fn exchange(
    (host, port): (&str, u16),
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
    timeout: Duration,
) -> Result<Vec<u8>, String> {
    let exchange = async {
        let stream = TcpStream::connect((host, port)).await.map_err(|e| e.to_string())?;
        request_reply(stream, (method, path, &host_header(host, port)), headers, body).await
    };
    tokio::time::timeout(timeout, exchange).await.map_err(|_| "timed out".to_string())?
}

/// Why an API endpoint cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum EndpointError {
    #[error("'{0}': not an https:// or http:// URL (SCHEME://HOST[:PORT][/PATH])")]
    Url(String),
    #[error("ca_file {path}: {message}")]
    CaFile { path: std::path::PathBuf, message: String },
    #[error("'{0}': plain http:// to a public address would send signed requests in clear: use https://")]
    PlainToPublic(String),
    #[error("'{0}': TLS setup: {1}")]
    Tls(String, String),
}

/// A VPC API's endpoint, parsed, with its TLS client (`https://`).
#[derive(Clone)]
pub(crate) struct ApiEndpoint {
    url: String,
    host: String,
    port: u16,
    path: String,
    tls: Option<(TlsConnector, ServerName<'static>)>,
}

impl std::fmt::Debug for ApiEndpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiEndpoint").field("url", &self.url).field("tls", &self.tls.is_some()).finish()
    }
}

/// Loopback or link-local (the instance metadata service, a proxy on the node).
fn this_link(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => v4.is_loopback() || v4.is_link_local(),
        IpAddr::V6(v6) => v6.is_loopback() || (v6.segments()[0] & 0xffc0) == 0xfe80,
    }
}

/// An address plain HTTP may reach: one inside a private network, never the internet's.
fn private_address(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V6(v6) if v6.to_ipv4_mapped().is_some() => {
            v6.to_ipv4_mapped().is_some_and(|v4| private_address(v4.into()))
        }
        // RFC 1918 and the shared address space (100.64.0.0/10).
        IpAddr::V4(v4) => this_link(ip) || v4.is_private() || (v4.octets()[0] == 100 && (v4.octets()[1] & 0xc0) == 64),
        // Unique local (fc00::/7).
        IpAddr::V6(v6) => this_link(ip) || (v6.segments()[0] & 0xfe00) == 0xfc00,
    }
}

/// The roots `https://` trusts: `ca_file`'s certificates alone, else Mozilla's.
fn roots(ca_file: Option<&Path>) -> Result<RootCertStore, EndpointError> {
    let mut roots = RootCertStore::empty();
    let Some(path) = ca_file else {
        roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
        return Ok(roots);
    };
    let bad = |message: String| EndpointError::CaFile { path: path.to_path_buf(), message };
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
        .map_err(|e| bad(e.to_string()))?
        .collect::<Result<_, _>>()
        .map_err(|e| bad(e.to_string()))?;
    if certs.is_empty() {
        return Err(bad("no PEM certificate in it".into()));
    }
    for cert in certs {
        roots.add(cert).map_err(|e| bad(e.to_string()))?;
    }
    Ok(roots)
}

impl ApiEndpoint {
    /// `url` (`https://HOST[:PORT][/PATH]` or `http://...`), the server of an `https://` one
    /// checked against `ca_file` if given.
    pub fn new(url: &str, ca_file: Option<&Path>) -> Result<ApiEndpoint, EndpointError> {
        let (parts, tls) = if let Some(parts) = split_url(url, "https", 443) {
            let config =
                ClientConfig::builder_with_provider(Arc::new(tokio_rustls::rustls::crypto::ring::default_provider()))
                    .with_safe_default_protocol_versions()
                    .map_err(|e| EndpointError::Tls(url.into(), e.to_string()))?
                    .with_root_certificates(roots(ca_file)?)
                    .with_no_client_auth();
            let name =
                ServerName::try_from(parts.0.clone()).map_err(|e| EndpointError::Tls(url.into(), e.to_string()))?;
            (parts, Some((TlsConnector::from(Arc::new(config)), name)))
        } else {
            let parts = split_endpoint(url).ok_or_else(|| EndpointError::Url(url.into()))?;
            if parts.0.parse().is_ok_and(|ip| !private_address(ip)) {
                return Err(EndpointError::PlainToPublic(url.into()));
            }
            if parts.0 != "localhost" && !parts.0.parse().is_ok_and(this_link) {
                tracing::warn!(
                    endpoint = url,
                    "plain http:// to the VPC API: signed requests travel unencrypted (allowed to private addresses only); \
                     use https:// unless the endpoint is inside the VPC"
                );
            }
            (parts, None)
        };
        let (host, port, path) = parts;
        Ok(ApiEndpoint { url: url.into(), host, port, path, tls })
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    /// The path requests go to.
    pub fn path(&self) -> &str {
        &self.path
    }

    /// The `Host` header (and what SigV4 signs): the port only when not the scheme's default.
    pub fn host_header(&self) -> String {
        let default = if self.tls.is_some() { 443 } else { 80 };
        if self.port == default {
            self.host.clone()
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }

    /// One exchange: `method` to the endpoint's path with `headers` and `body`, within `timeout`.
    pub async fn exchange(
        &self,
        method: &str,
        headers: &[(&str, &str)],
        body: &str,
        timeout: Duration,
    ) -> Result<Vec<u8>, String> {
        let exchange = async {
            let stream = TcpStream::connect((self.host.as_str(), self.port)).await.map_err(|e| e.to_string())?;
            let head = (method, self.path.as_str(), &*self.host_header());
            match &self.tls {
                Some((connector, name)) => {
                    let stream = connector.connect(name.clone(), stream).await.map_err(|e| format!("TLS: {e}"))?;
                    request_reply(stream, head, headers, body).await
                }
                None => {
                    let peer = stream.peer_addr().map_err(|e| e.to_string())?.ip();
                    if !private_address(peer) {
                        return Err(format!(
                            "refused: http:// to {peer}, a public address, would send signed requests in clear; use https://"
                        ));
                    }
                    request_reply(stream, head, headers, body).await
                }
            }
        };
        tokio::time::timeout(timeout, exchange).await.map_err(|_| "timed out".to_string())?
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints() {
        assert_eq!(split_endpoint("http://10.10.0.30:80"), Some(("10.10.0.30".into(), 80, "/".into())));
        assert_eq!(split_endpoint("http://api.lab/v1"), Some(("api.lab".into(), 80, "/v1".into())));
        assert_eq!(split_endpoint("https://api.ucloud.cn"), None);
        assert_eq!(split_endpoint("http://"), None);
        assert_eq!(split_url("https://api.ucloud.cn", "https", 443), Some(("api.ucloud.cn".into(), 443, "/".into())));
        assert_eq!(split_url("https://[::1]:8443/x", "https", 443), Some(("::1".into(), 8443, "/x".into())));
        let https = ApiEndpoint::new("https://ec2.us-east-1.amazonaws.com", None).unwrap();
        assert_eq!((https.host_header(), https.path()), ("ec2.us-east-1.amazonaws.com".into(), "/"));
        assert_eq!(ApiEndpoint::new("http://10.10.0.30:80", None).unwrap().host_header(), "10.10.0.30");
        assert!(matches!(ApiEndpoint::new("ftp://x", None), Err(EndpointError::Url(_))));
        let missing = ApiEndpoint::new("https://x", Some(Path::new("/nonexistent/ca.pem"))).unwrap_err();
        assert!(missing.to_string().contains("/nonexistent/ca.pem"), "{missing}");
    }

    #[test]
    fn plain_http_stays_in_private_networks() {
        for private in [
            "127.0.0.1",
            "10.10.0.30",
            "172.20.1.1",
            "192.168.1.1",
            "100.100.0.1",
            "169.254.169.254",
            "fd00::1",
            "fe80::1",
            "::ffff:10.0.0.1",
        ] {
            assert!(private_address(private.parse().unwrap()), "{private}");
        }
        for public in ["52.94.1.1", "8.8.8.8", "2600:1f18::1", "::ffff:52.94.1.1", "172.32.0.1", "100.128.0.1"] {
            assert!(!private_address(public.parse().unwrap()), "{public}");
        }
    }

    /// Plain HTTP to a public address is refused: at setup for an address, at connect for a
    /// name that resolves to one.
    #[test]
    fn plain_http_to_a_public_address_is_refused() {
        let refused = ApiEndpoint::new("http://52.94.1.1/", None).unwrap_err();
        assert!(matches!(refused, EndpointError::PlainToPublic(_)), "{refused}");
        assert!(ApiEndpoint::new("http://api.service.ucloud.cn", None).is_ok(), "a name is checked at connect");
    }

    #[test]
    fn replies() {
        let ok = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{}";
        assert_eq!(ok_body(ok).unwrap(), b"{}");
        assert!(ok_body(b"HTTP/1.1 502 Bad Gateway\r\n\r\n").unwrap_err().contains("502"));
        assert!(ok_body(b"HTTP/1.1 200 OK\r\ncontent-length: 9\r\n\r\n{}").is_err());
        let refused = parse_reply(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 3\r\n\r\n<a/>").unwrap();
        assert_eq!((refused.status, refused.body.as_slice()), (400, &b"<a/"[..]));
    }
}
