//! A blocking client for vswitchd's API socket, with timeouts: a plugin run must not hang
//! kubelet when the daemon is stuck.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use vswitch::control::api::{PortView, Reply, Request};

const TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// Nothing answered: not running, restarting, or stuck.
    #[error("vswitchd at {path} is unreachable: {source}")]
    Unreachable { path: String, source: std::io::Error },
    /// It answered, and said no.
    #[error("vswitchd refused: {0}")]
    Refused(String),
}

#[derive(Debug)]
pub struct Vswitch<'a> {
    socket: &'a Path,
}

impl<'a> Vswitch<'a> {
    pub fn new(socket: &'a Path) -> Self {
        Vswitch { socket }
    }

    pub fn call(&self, request: &Request) -> Result<serde_json::Value, ClientError> {
        let unreachable = |source| ClientError::Unreachable { path: self.socket.display().to_string(), source };
        let mut stream = UnixStream::connect(self.socket).map_err(unreachable)?;
        stream.set_read_timeout(Some(TIMEOUT)).map_err(unreachable)?;
        stream.set_write_timeout(Some(TIMEOUT)).map_err(unreachable)?;
        let mut line = serde_json::to_vec(request).expect("serialisable");
        line.push(b'\n');
        stream.write_all(&line).map_err(unreachable)?;
        let mut reply = String::new();
        BufReader::new(stream).read_line(&mut reply).map_err(unreachable)?;
        let reply: Reply = serde_json::from_str(&reply).map_err(|e| unreachable(std::io::Error::other(e)))?;
        if reply.ok {
            Ok(reply.result.unwrap_or_default())
        } else {
            Err(ClientError::Refused(reply.error.unwrap_or_default()))
        }
    }

    /// Is it up and answering? (Cheap, unlike listing every port.)
    pub fn status(&self) -> Result<(), ClientError> {
        self.call(&Request::Status).map(|_| ())
    }

    pub fn ports(&self) -> Result<Vec<PortView>, ClientError> {
        let value = self.call(&Request::ListPorts)?;
        serde_json::from_value(value).map_err(|e| ClientError::Refused(format!("unexpected port list: {e}")))
    }
}
