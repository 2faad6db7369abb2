//! vpc-cni: the CNI plugin kubelet runs (through containerd or CRI-O) for every pod.
//!
//! Reads the network configuration on stdin and the CNI_* environment, runs the verb, prints the
//! result (ADD, VERSION) or the spec's error JSON, and exits non-zero on error.

use std::io::Read;
use std::process::ExitCode;

use cni::plugin;
use cni::spec::{CniError, Code, Command, Environment, NetConf, SUPPORTED_VERSIONS};

fn main() -> ExitCode {
    let mut stdin = Vec::new();
    let read = std::io::stdin().read_to_end(&mut stdin);
    // Errors are reported in the configuration's version when it can be read.
    let version = serde_json::from_slice::<serde_json::Value>(&stdin)
        .ok()
        .and_then(|v| v.get("cniVersion").and_then(|v| v.as_str()).map(str::to_string))
        .filter(|v| SUPPORTED_VERSIONS.contains(&v.as_str()))
        .unwrap_or_else(|| "1.1.0".to_string());
    let outcome = read
        .map_err(|e| CniError::with_details(Code::IoFailure, "reading stdin", e))
        .and_then(|_| run(&stdin, &version));
    match outcome {
        Ok(Some(output)) => {
            println!("{output}");
            ExitCode::SUCCESS
        }
        Ok(None) => ExitCode::SUCCESS,
        Err(e) => {
            println!("{}", e.to_json(&version));
            ExitCode::FAILURE
        }
    }
}

fn run(stdin: &[u8], version: &str) -> Result<Option<serde_json::Value>, CniError> {
    let env = Environment::from_env(|name| std::env::var(name).ok())?;
    if env.command == Command::Version {
        return Ok(Some(serde_json::json!({"cniVersion": version, "supportedVersions": SUPPORTED_VERSIONS})));
    }
    let conf = NetConf::parse(stdin)?;
    let plugin = plugin::Plugin { conf, env };
    match plugin.env.command {
        Command::Add => plugin.add().map(Some),
        Command::Del => plugin.del().map(|()| None),
        Command::Check => plugin.check().map(|()| None),
        Command::Gc => plugin.gc().map(|()| None),
        Command::Status => plugin.status().map(|()| None),
        Command::Version => unreachable!("answered above"),
    }
}
