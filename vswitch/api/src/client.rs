//! The one client of vswitchd's API socket, blocking, with timeouts: a CNI plugin run must not
//! hang kubelet when the daemon is stuck, and vswitchctl must not hang an operator.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::de::DeserializeOwned;

use crate::api::{
    AddressView, ApiError, AssignSpec, Attachment, IpamView, PortSpec, PortView, ReleasedView, Reply, Request,
    StatusView,
};

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// Nothing answered (not running, restarting, or stuck), or the answer was cut off.
    #[error("vswitchd at {path} is unreachable: {source}")]
    Unreachable { path: PathBuf, source: std::io::Error },
    /// It answered, and said no; `code` says why.
    #[error("vswitchd: {0}")]
    Api(#[from] ApiError),
    /// It answered something that is not a reply to this request (a version mismatch).
    #[error("vswitchd at {path} sent an unexpected reply: {detail}")]
    Protocol { path: PathBuf, detail: String },
}

impl ClientError {
    /// The API error code, when the daemon answered with one.
    pub fn code(&self) -> Option<crate::api::ErrorCode> {
        match self {
            ClientError::Api(e) => Some(e.code),
            _ => None,
        }
    }
}

#[derive(Debug, Clone)]
pub struct Client {
    socket: PathBuf,
    connect_timeout: Duration,
    reply_timeout: Duration,
}

impl Client {
    /// A client with a 2 s connect and 10 s reply timeout (attaching a pod takes milliseconds;
    /// the margin covers a node under load).
    pub fn new(socket: impl AsRef<Path>) -> Client {
        Client {
            socket: socket.as_ref().to_path_buf(),
            connect_timeout: Duration::from_secs(2),
            reply_timeout: Duration::from_secs(10),
        }
    }

    pub fn with_timeouts(mut self, connect: Duration, reply: Duration) -> Client {
        self.connect_timeout = connect;
        self.reply_timeout = reply;
        self
    }

    pub fn socket(&self) -> &Path {
        &self.socket
    }

    fn connect(&self) -> std::io::Result<UnixStream> {
        // A unix connect only blocks when the listener's backlog is full (a stuck daemon); run it
        // on a thread so the timeout holds then too.
        let path = self.socket.clone();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || drop(tx.send(UnixStream::connect(path))));
        rx.recv_timeout(self.connect_timeout)
            .unwrap_or_else(|_| Err(std::io::Error::new(std::io::ErrorKind::TimedOut, "connect timed out")))
    }

    /// Sends `request` and decodes the result as `T`.
    pub fn call<T: DeserializeOwned>(&self, request: &Request) -> Result<T, ClientError> {
        let unreachable = |source| ClientError::Unreachable { path: self.socket.clone(), source };
        let mut stream = self.connect().map_err(unreachable)?;
        stream.set_read_timeout(Some(self.reply_timeout)).map_err(unreachable)?;
        stream.set_write_timeout(Some(self.reply_timeout)).map_err(unreachable)?;
        let mut line = serde_json::to_vec(request).expect("requests serialise");
        line.push(b'\n');
        stream.write_all(&line).map_err(unreachable)?;
        let mut reply = String::new();
        BufReader::new(stream).read_line(&mut reply).map_err(unreachable)?;
        if !reply.ends_with('\n') {
            return Err(unreachable(std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "connection closed")));
        }
        let protocol = |detail: String| ClientError::Protocol { path: self.socket.clone(), detail };
        let reply: Reply<T> = serde_json::from_str(&reply).map_err(|e| protocol(e.to_string()))?;
        match (reply.ok, reply.result, reply.error) {
            (true, Some(value), _) => Ok(value),
            // A `null` result decodes as None; `T = ()` and `Option<_>` accept that.
            (true, None, _) => serde_json::from_value(serde_json::Value::Null).map_err(|e| protocol(e.to_string())),
            (false, _, Some(error)) => Err(ClientError::Api(error)),
            (false, _, None) => Err(protocol("an error reply without an error".into())),
        }
    }

    /// Is it up and answering? (Cheap, unlike listing every port.)
    pub fn status(&self) -> Result<StatusView, ClientError> {
        self.call(&Request::Status)
    }

    pub fn ports(&self) -> Result<Vec<PortView>, ClientError> {
        self.call(&Request::ListPorts)
    }

    pub fn add_port(&self, spec: PortSpec) -> Result<PortView, ClientError> {
        self.call(&Request::AddPort(spec))
    }

    pub fn del_port(&self, name: &str, remove_device: bool) -> Result<(), ClientError> {
        self.call(&Request::DelPort { name: name.to_string(), remove_device })
    }

    pub fn ipam_assign(&self, spec: AssignSpec) -> Result<AddressView, ClientError> {
        self.call(&Request::IpamAssign(spec))
    }

    pub fn ipam_release(&self, owner: &Attachment) -> Result<ReleasedView, ClientError> {
        self.call(&Request::IpamRelease { owner: owner.clone() })
    }

    pub fn ipam_lookup(&self, owner: &Attachment) -> Result<AddressView, ClientError> {
        self.call(&Request::IpamLookup { owner: owner.clone() })
    }

    pub fn ipam_gc(&self, keep: Vec<Attachment>) -> Result<ReleasedView, ClientError> {
        self.call(&Request::IpamGc { keep })
    }

    pub fn ipam(&self) -> Result<IpamView, ClientError> {
        self.call(&Request::Ipam)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::ErrorCode;
    use std::os::unix::net::UnixListener;

    fn serve_once(reply: &'static str) -> (Client, std::thread::JoinHandle<()>, PathBuf) {
        let dir = std::env::temp_dir().join(format!("vswitch-api-client-{}-{}", std::process::id(), reply.len()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("s.sock");
        let _ = std::fs::remove_file(&path);
        let listener = UnixListener::bind(&path).unwrap();
        let handle = std::thread::spawn(move || {
            let (stream, _) = listener.accept().unwrap();
            let mut line = String::new();
            BufReader::new(&stream).read_line(&mut line).unwrap();
            (&stream).write_all(reply.as_bytes()).unwrap();
        });
        (Client::new(&path), handle, dir)
    }

    #[test]
    fn error_codes_reach_the_caller_and_garbage_is_a_protocol_error() {
        let (client, h, dir) = serve_once("{\"ok\":false,\"error\":{\"code\":\"exists\",\"message\":\"x\"}}\n");
        assert_eq!(client.del_port("p", false).unwrap_err().code(), Some(ErrorCode::Exists));
        h.join().unwrap();
        std::fs::remove_dir_all(dir).unwrap();
        let (client, h, dir) = serve_once("{\"ok\":true,\"result\":[1,2]}\n");
        assert!(matches!(client.status(), Err(ClientError::Protocol { .. })));
        h.join().unwrap();
        std::fs::remove_dir_all(dir).unwrap();
        let (client, h, dir) = serve_once("{\"ok\":true,\"res");
        assert!(matches!(client.status(), Err(ClientError::Unreachable { .. })));
        h.join().unwrap();
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn nothing_listening_is_unreachable() {
        let client = Client::new("/nonexistent/vswitchd.sock");
        assert!(matches!(client.status(), Err(ClientError::Unreachable { .. })));
    }
}
