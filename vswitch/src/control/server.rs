//! The API socket and the metrics endpoint. A request is served under the controller's lock;
//! a malformed one gets an error reply and the connection stays open.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::Arc;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, UnixListener, UnixStream};
use tokio::sync::Mutex;

use super::api::{Reply, Request};
use super::Switch;

/// Longest request line accepted; longer ones are refused, not buffered.
const MAX_REQUEST: usize = 1 << 20;

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

pub async fn serve_api(listener: UnixListener, switch: Arc<Mutex<Switch>>) {
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                tokio::spawn(serve_connection(stream, switch.clone()));
            }
            Err(e) => tracing::warn!(error = %e, "accept on API socket failed"),
        }
    }
}

async fn serve_connection(stream: UnixStream, switch: Arc<Mutex<Switch>>) {
    let (read, mut write) = stream.into_split();
    let mut lines = BufReader::new(read.take(u64::MAX));
    let mut line = Vec::new();
    loop {
        line.clear();
        let n = match (&mut lines).take(MAX_REQUEST as u64 + 1).read_until(b'\n', &mut line).await {
            Ok(0) => return,
            Ok(n) => n,
            Err(_) => return,
        };
        let reply = if n > MAX_REQUEST {
            // Refuse and close: the rest of the oversized line is not worth reading.
            let reply = Reply::error(format!("request longer than {MAX_REQUEST} bytes"));
            let _ = write_reply(&mut write, &reply).await;
            return;
        } else {
            match serde_json::from_slice::<Request>(&line) {
                Err(e) => Reply::error(format!("bad request: {e}")),
                Ok(request) => match switch.lock().await.handle(request).await {
                    Ok(value) => Reply { ok: true, result: Some(value), error: None },
                    Err(e) => Reply::error(e),
                },
            }
        };
        if write_reply(&mut write, &reply).await.is_err() {
            return;
        }
    }
}

async fn write_reply(write: &mut tokio::net::unix::OwnedWriteHalf, reply: &Reply) -> std::io::Result<()> {
    let mut bytes = serde_json::to_vec(reply).expect("serialisable");
    bytes.push(b'\n');
    write.write_all(&bytes).await
}

/// Feeds the workers' slow path (ARP resolution and learning) and the neighbour timers to the
/// controller.
pub async fn serve_slow_path(switch: Arc<Mutex<Switch>>) {
    let Some(mut packets) = switch.lock().await.take_slow_path() else { return };
    let mut tick = tokio::time::interval(std::time::Duration::from_millis(250));
    loop {
        tokio::select! {
            packet = packets.recv() => match packet {
                Some(packet) => switch.lock().await.on_slow_packet(packet),
                None => return,
            },
            _ = tick.tick() => switch.lock().await.on_neighbor_tick(),
        }
    }
}

/// Serves `GET /metrics` in the Prometheus text format.
pub async fn serve_metrics(listener: TcpListener, switch: Arc<Mutex<Switch>>) {
    loop {
        let Ok((mut stream, _)) = listener.accept().await else { continue };
        let switch = switch.clone();
        tokio::spawn(async move {
            let mut head = vec![0u8; 4096];
            let mut filled = 0;
            while filled < head.len() {
                match stream.read(&mut head[filled..]).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => filled += n,
                }
                if head[..filled].windows(4).any(|w| w == b"\r\n\r\n") {
                    break;
                }
            }
            let request_line = String::from_utf8_lossy(&head[..filled]).lines().next().unwrap_or("").to_string();
            let response = if request_line.starts_with("GET /metrics ") {
                let body = switch.lock().await.metrics();
                format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                )
            } else {
                "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".to_string()
            };
            let _ = stream.write_all(response.as_bytes()).await;
        });
    }
}
