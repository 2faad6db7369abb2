//! The daemon's event sources: the API socket, the metrics endpoint, the workers' slow path and
//! the timers (neighbours, vanished namespaces, the IPAM's upkeep). Each runs as its own task; none holds the registry's lock across an `.await`.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, UnixListener, UnixStream};
use tokio_util::codec::{AnyDelimiterCodec, AnyDelimiterCodecError, Framed};
use vswitch_api::api::{ApiError, ErrorCode, Reply, Request, Response, MAX_REQUEST_BYTES};

use super::driver::Switch;
use super::exposition::Exposition;
use crate::datapath::SlowPacket;
use crate::ipam::node;

/// How long an HTTP client may take to send its request head.
const HTTP_READ_TIMEOUT: Duration = Duration::from_secs(5);
/// How often pod namespaces are checked for having vanished without a DEL.
const DEVICE_CHECK_EVERY: Duration = Duration::from_secs(1);

/// Binds the API socket with mode 0600 (replacing a stale one).
pub fn bind_api(path: &Path) -> std::io::Result<UnixListener> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let listener = UnixListener::bind(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    Ok(listener)
}

pub async fn serve_api(listener: UnixListener, switch: Arc<Switch>) {
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                tokio::spawn(serve_connection(stream, switch.clone()));
            }
            Err(e) => tracing::warn!(error = %e, "accept on API socket failed"),
        }
    }
}

/// Parses one request line; anything that is not a request is an `invalid` error.
pub fn parse_request(line: &[u8]) -> Result<Request, ApiError> {
    serde_json::from_slice(line).map_err(|e| ApiError::new(ErrorCode::Invalid, format!("bad request: {e}")))
}

/// Serves one client: a reply line for every request line, in order, until it hangs up. An
/// oversized line gets its error reply and the connection is closed (the rest is not read).
async fn serve_connection(stream: UnixStream, switch: Arc<Switch>) {
    let codec = AnyDelimiterCodec::new_with_max_length(b"\n".to_vec(), b"\n".to_vec(), MAX_REQUEST_BYTES);
    let mut framed = Framed::new(stream, codec);
    while let Some(line) = framed.next().await {
        let (reply, close) = match line {
            Ok(line) => {
                let result = match parse_request(&line) {
                    Ok(request) => switch.handle(request).await,
                    Err(e) => Err(e),
                };
                (Reply::from_result(result), false)
            }
            Err(AnyDelimiterCodecError::MaxChunkLengthExceeded) => {
                let e = ApiError::new(ErrorCode::Invalid, format!("request longer than {MAX_REQUEST_BYTES} bytes"));
                (Reply::<Response>::from_result(Err(e)), true)
            }
            Err(AnyDelimiterCodecError::Io(_)) => return,
        };
        let line = serde_json::to_string(&reply).expect("replies serialise");
        if framed.send(line).await.is_err() || close {
            return;
        }
    }
}

/// Feeds the workers' slow path (ARP resolution and learning) and the neighbour timers to the
/// controller, and checks pod namespaces for having vanished.
pub async fn serve_slow_path(mut packets: tokio::sync::mpsc::Receiver<SlowPacket>, switch: Arc<Switch>) {
    let mut neighbor_tick = tokio::time::interval(Duration::from_millis(250));
    let mut device_tick = tokio::time::interval(DEVICE_CHECK_EVERY);
    loop {
        tokio::select! {
            packet = packets.recv() => match packet {
                Some(packet) => switch.on_slow_packet(packet),
                None => return,
            },
            _ = neighbor_tick.tick() => {
                switch.on_neighbor_tick();
                switch.expire_drop_watch();
            }
            _ = device_tick.tick() => {
                // Namespace lookups stat files; keep them off the runtime's thread.
                let checked = switch.clone();
                let _ = tokio::task::spawn_blocking(move || checked.check_devices()).await;
                switch.remove_gone_ports().await;
            }
        }
    }
}

/// Runs the cluster IPAM's upkeep every [`node::TICK`], or sooner when it asks (nothing without
/// `[ipam]`).
pub async fn serve_ipam(switch: Arc<Switch>) {
    let Some(ipam) = switch.ipam_upkeep() else { return };
    let mut tick = tokio::time::interval(node::TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = ipam.kicked() => {}
        }
        ipam.upkeep().await;
    }
}

/// Serves `GET /metrics` (classic Prometheus text, or OpenMetrics to a client that asks for it)
/// and `GET /healthz`.
pub async fn serve_metrics(listener: TcpListener, switch: Arc<Switch>) {
    loop {
        let Ok((mut stream, _)) = listener.accept().await else { continue };
        let switch = switch.clone();
        tokio::spawn(async move {
            let Ok(Some(head)) = tokio::time::timeout(HTTP_READ_TIMEOUT, read_head(&mut stream)).await else {
                return;
            };
            let request_line = head.lines().next().unwrap_or("");
            let (status, content_type, body) = if request_line.starts_with("GET /metrics ") {
                let format = Exposition::negotiate(header(&head, "accept"));
                ("200 OK", format.content_type(), format.render(switch.metrics_snapshot().render()))
            } else if request_line.starts_with("GET /healthz ") {
                healthz(&switch)
            } else {
                ("404 Not Found", "text/plain", String::new())
            };
            let response = format!(
                "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = stream.write_all(response.as_bytes()).await;
        });
    }
}

/// `/healthz`: 503 while handing over to an upgrade (from the freeze on), so a probe marks the
/// new instance ready only once it answers, and while the datapath is unsound.
fn healthz(switch: &Switch) -> (&'static str, &'static str, String) {
    const UNAVAILABLE: &str = "503 Service Unavailable";
    if switch.handing_over() {
        return (UNAVAILABLE, "text/plain", "handing over to an upgrade\n".into());
    }
    let health = switch.health();
    let status = switch.status();
    if health.problems.is_empty() {
        let body = format!(
            "ok: {} workers forwarding with state {}, {} ports, up {}s\n",
            health.workers, health.generation, status.ports, status.uptime_seconds
        );
        ("200 OK", "text/plain", body)
    } else {
        (UNAVAILABLE, "text/plain", format!("unhealthy: {}\n", health.problems.join("; ")))
    }
}

/// A stop asked for (SIGTERM, ^C) while handing over: the handover finishes first, since the new
/// instance already forwards from the same queues and the old one must not tear anything down
/// under it. Returns whether the upgrade took over (else: a plain stop).
pub async fn stop_after_handover(switch: &Switch, taken_over: &mut tokio::sync::oneshot::Receiver<()>) -> bool {
    if !switch.handing_over() {
        return false;
    }
    tracing::warn!("asked to stop while handing over to an upgrade: letting the handover finish first");
    let deadline = tokio::time::Instant::now() + super::handover::CONFIRM_TIMEOUT + Duration::from_secs(1);
    loop {
        tokio::select! {
            taken = &mut *taken_over => return taken.is_ok(),
            _ = tokio::time::sleep(Duration::from_millis(20)) => {
                if !switch.handing_over() || tokio::time::Instant::now() > deadline {
                    return false;
                }
            }
        }
    }
}

/// A socket path this instance bound, by the identity of the file it made: after an upgrade the
/// same path may be the new instance's socket, which must not be unlinked on stop.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OwnedPath {
    path: std::path::PathBuf,
    dev: u64,
    ino: u64,
}

impl OwnedPath {
    /// Records the file now at `path` as ours (call it right after binding it there).
    pub fn claim(path: &Path) -> std::io::Result<OwnedPath> {
        use std::os::unix::fs::MetadataExt;
        let meta = std::fs::symlink_metadata(path)?;
        Ok(OwnedPath { path: path.to_path_buf(), dev: meta.dev(), ino: meta.ino() })
    }

    /// Unlinks the path only if it is still the file this instance made; returns whether it did.
    pub fn remove_if_ours(&self) -> bool {
        match OwnedPath::claim(&self.path) {
            Ok(now) if now == *self => std::fs::remove_file(&self.path).is_ok(),
            Ok(_) => {
                tracing::info!(path = %self.path.display(), "socket path belongs to another instance now: left alone");
                false
            }
            Err(_) => false,
        }
    }
}

/// The value of header `name` (lower case) in an HTTP request head.
fn header<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.lines().skip(1).find_map(|line| {
        let (key, value) = line.split_once(':')?;
        key.trim().eq_ignore_ascii_case(name).then(|| value.trim())
    })
}

/// Reads an HTTP request head (at most 4 KiB): the request line and the headers.
async fn read_head(stream: &mut tokio::net::TcpStream) -> Option<String> {
    let mut head = vec![0u8; 4096];
    let mut filled = 0;
    while filled < head.len() {
        match stream.read(&mut head[filled..]).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => filled += n,
        }
        if head[..filled].windows(4).any(|w| w == b"\r\n\r\n") {
            break;
        }
    }
    Some(String::from_utf8_lossy(&head[..filled]).into_owned())
}

/// Serves `STATE_DIR/upgrade.sock`: a new instance asks for this one's ports (see `handover`).
/// When one takes over, `taken_over` fires and the daemon exits; otherwise it carries on.
pub async fn serve_upgrades(listener: UnixListener, switch: Arc<Switch>, taken_over: tokio::sync::oneshot::Sender<()>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else { continue };
        let Ok(stream) = stream.into_std().and_then(|s| s.set_nonblocking(false).map(|()| s)) else { continue };
        let switch = switch.clone();
        let outcome = tokio::task::spawn_blocking(move || {
            let mut line = String::new();
            std::io::BufRead::read_line(&mut std::io::BufReader::new(&stream), &mut line)?;
            if line.trim() != "handover" {
                return Ok(false);
            }
            let offer = switch.freeze_and_offer();
            tracing::info!(ports = offer.ports.len(), "handing the ports over to an upgrade");
            let taken = super::handover::offer(&stream, &offer);
            if !matches!(taken, Ok(true)) {
                switch.thaw();
            }
            taken
        })
        .await;
        match outcome {
            Ok(Ok(true)) => {
                let _ = taken_over.send(());
                return;
            }
            Ok(Ok(false)) => tracing::warn!("an upgrade connected but did not take over; carrying on"),
            Ok(Err(e)) => tracing::warn!(error = %e, "an upgrade failed; carrying on"),
            Err(e) => tracing::warn!(error = %e, "the handover task failed; carrying on"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control::Config;

    async fn get_healthz(addr: std::net::SocketAddr) -> String {
        let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        stream.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
        let mut response = String::new();
        stream.read_to_string(&mut response).await.unwrap();
        response
    }

    #[tokio::test]
    async fn healthz_is_unavailable_from_the_freeze_until_a_failed_handover_thaws() {
        let switch = Switch::in_memory(Config::default()).unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(serve_metrics(listener, switch.clone()));
        assert!(get_healthz(addr).await.starts_with("HTTP/1.1 200 OK"));
        let frozen = switch.clone();
        tokio::task::spawn_blocking(move || drop(frozen.freeze_and_offer())).await.unwrap();
        let response = get_healthz(addr).await;
        assert!(response.starts_with("HTTP/1.1 503 "), "{response}");
        assert!(response.ends_with("handing over to an upgrade\n"), "{response}");
        switch.thaw();
        assert!(get_healthz(addr).await.starts_with("HTTP/1.1 200 OK"));
    }

    #[tokio::test]
    async fn a_stop_during_a_handover_waits_for_its_outcome() {
        let switch = Switch::in_memory(Config::default()).unwrap();
        // Not handing over: a plain stop at once.
        let (_sender, mut taken_over) = tokio::sync::oneshot::channel();
        assert!(!stop_after_handover(&switch, &mut taken_over).await);
        // Handing over, and the upgrade takes over 100 ms later: the stop reports the takeover.
        let frozen = switch.clone();
        tokio::task::spawn_blocking(move || drop(frozen.freeze_and_offer())).await.unwrap();
        let (sender, mut taken_over) = tokio::sync::oneshot::channel();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(100)).await;
            sender.send(()).unwrap();
        });
        let started = std::time::Instant::now();
        assert!(stop_after_handover(&switch, &mut taken_over).await);
        assert!(started.elapsed() >= Duration::from_millis(90));
        // Handing over, and the upgrade fails (thawed): a plain stop after it.
        let (_sender, mut taken_over) = tokio::sync::oneshot::channel();
        let thawing = switch.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(100)).await;
            thawing.thaw();
        });
        assert!(!stop_after_handover(&switch, &mut taken_over).await);
    }

    #[test]
    fn a_socket_path_rebound_by_another_instance_is_not_removed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("api.sock");
        let old = std::os::unix::net::UnixListener::bind(&path).unwrap();
        let ours = OwnedPath::claim(&path).unwrap();
        // The new instance binds its own socket at the same path (as bind_api does).
        std::fs::remove_file(&path).unwrap();
        let new = std::os::unix::net::UnixListener::bind(&path).unwrap();
        assert!(!ours.remove_if_ours());
        assert!(path.exists(), "the new instance's socket stays");
        let theirs = OwnedPath::claim(&path).unwrap();
        assert!(theirs.remove_if_ours());
        assert!(!path.exists());
        drop((old, new));
    }
}
