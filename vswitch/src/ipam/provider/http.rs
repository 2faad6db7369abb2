//! The providers' HTTP/1.1 client on tokio: one connection per call (`Connection: close`),
//! `http://` only. Enough for the lab's endpoints, moto and the instance metadata service; a
//! cloud's real `https://` endpoint needs TLS (rustls, as etcd-client already links), which is
//! refused with a clear error rather than sending credentials in the clear.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Replies larger than this are not the API's.
const MAX_REPLY: u64 = 4 << 20;

/// `http://host[:port][/path]` split.
pub(crate) fn split_endpoint(endpoint: &str) -> Option<(String, u16, String)> {
    let rest = endpoint.strip_prefix("http://")?;
    let (authority, path) = match rest.find('/') {
        Some(at) => (&rest[..at], rest[at..].to_string()),
        None => (rest, "/".to_string()),
    };
    let (host, port) = match authority.rsplit_once(':') {
        Some((h, p)) if !h.ends_with(']') || h.starts_with('[') => (h, p.parse().ok()?),
        _ => (authority, 80),
    };
    (!host.is_empty()).then(|| (host.trim_matches(['[', ']']).to_string(), port, path))
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

/// One exchange with `host:port`: `method path` with `headers` and `body`, within `timeout`.
pub(crate) async fn exchange(
    (host, port): (&str, u16),
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
    timeout: Duration,
) -> Result<Vec<u8>, String> {
    let exchange = async {
        let mut stream = TcpStream::connect((host, port)).await.map_err(|e| e.to_string())?;
        let mut request = format!("{method} {path} HTTP/1.1\r\nHost: {}\r\n", host_header(host, port));
        for (name, value) in headers {
            request.push_str(&format!("{name}: {value}\r\n"));
        }
        request
            .push_str(&format!("Content-Length: {}\r\nConnection: close\r\nUser-Agent: vswitchd\r\n\r\n", body.len()));
        request.push_str(body);
        stream.write_all(request.as_bytes()).await.map_err(|e| e.to_string())?;
        let mut reply = Vec::new();
        stream.take(MAX_REPLY).read_to_end(&mut reply).await.map_err(|e| e.to_string())?;
        Ok::<_, String>(reply)
    };
    tokio::time::timeout(timeout, exchange).await.map_err(|_| "timed out".to_string())?
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
