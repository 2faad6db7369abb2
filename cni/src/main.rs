//! vpc-cni: the CNI plugin kubelet runs (through containerd or CRI-O) for every pod.
//!
//! Reads the network configuration on stdin and the CNI_* environment, runs the verb, prints the
//! result (ADD, VERSION) or the spec's error JSON, and exits non-zero on error. Each run is
//! logged as one JSON line to the configuration's `logFile` (never to stdout). `vpc-cni
//! --version` prints the plugin's version and the CNI versions it speaks.

use std::io::Read;
use std::process::ExitCode;
use std::time::{Instant, SystemTime};

use cni::log::{timestamp, LogTarget};
use cni::plugin::{Notes, Plugin};
use cni::spec::{supported_versions, CniError, CniVersion, Code, Command, Environment, NetConf, VersionResult};

fn main() -> ExitCode {
    // For people and packaging scripts: runtimes never pass arguments (they set CNI_COMMAND and
    // write the configuration on stdin), so this cannot shadow a CNI call, and stdin is not read.
    if std::env::args_os().nth(1).is_some_and(|a| a == "--version") {
        println!("vpc-cni {}", env!("CARGO_PKG_VERSION"));
        println!("CNI versions: {}", supported_versions().join(", "));
        return ExitCode::SUCCESS;
    }
    let started = (Instant::now(), SystemTime::now());
    let mut stdin = Vec::new();
    let read = std::io::stdin().read_to_end(&mut stdin);
    // Errors are reported in the configuration's version when it can be read.
    let version = serde_json::from_slice::<serde_json::Value>(&stdin)
        .ok()
        .and_then(|v| v.get("cniVersion")?.as_str()?.parse::<CniVersion>().ok())
        .filter(|v| v.is_supported())
        .unwrap_or(CniVersion::LATEST);
    let mut notes = Notes::default();
    let outcome = read
        .map_err(|e| CniError::with_details(Code::IoFailure, "reading stdin", e))
        .and_then(|_| run(&stdin, version, &mut notes));
    let (code, output) = match &outcome {
        Ok(output) => (ExitCode::SUCCESS, output.clone()),
        Err(e) => (ExitCode::FAILURE, Some(json(e.reply(version)))),
    };
    if let Some(output) = &output {
        println!("{output}");
    }
    log(&stdin, started, &outcome, &notes);
    code
}

/// What is printed: through `Value`, whose keys are sorted, so the bytes do not depend on the
/// order of the typed structs' fields.
fn json(output: impl serde::Serialize) -> serde_json::Value {
    serde_json::to_value(output).expect("results serialise")
}

fn run(stdin: &[u8], version: CniVersion, notes: &mut Notes) -> Result<Option<serde_json::Value>, CniError> {
    let env = Environment::from_env(|name| std::env::var(name).ok())?;
    if env.command == Command::Version {
        return Ok(Some(json(VersionResult::new(version))));
    }
    let conf = NetConf::parse(stdin)?;
    let too_old = |verb: &str, since: CniVersion| {
        CniError::with_details(
            Code::IncompatibleVersion,
            format!("{verb} needs cniVersion {since} or later; the configuration says {}", conf.cni_version),
            conf.cni_version,
        )
    };
    match env.command {
        Command::Gc | Command::Status if conf.cni_version < CniVersion::GC_STATUS => {
            let verb = if env.command == Command::Gc { "GC" } else { "STATUS" };
            return Err(too_old(verb, CniVersion::GC_STATUS));
        }
        Command::Check if conf.cni_version < CniVersion::CHECK => {
            return Err(too_old("CHECK", CniVersion::CHECK));
        }
        _ => {}
    }
    let plugin = Plugin::new(conf, env);
    let result = match plugin.env.command {
        Command::Add => plugin.add().map(|result| Some(json(result))),
        Command::Del => plugin.del().map(|()| None),
        Command::Check => plugin.check().map(|()| None),
        Command::Gc => plugin.gc().map(|()| None),
        Command::Status => plugin.status().map(|()| None),
        Command::Version => unreachable!("answered above"),
    };
    *notes = plugin.notes.take();
    result
}

/// One JSON line about this run; fields come from the raw environment, so a run refused for a
/// bad environment is logged too.
fn log(
    stdin: &[u8],
    (began, at): (Instant, SystemTime),
    outcome: &Result<Option<serde_json::Value>, CniError>,
    notes: &Notes,
) {
    let var = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
    if var("CNI_COMMAND").as_deref() == Some("VERSION") {
        return;
    }
    let args = var("CNI_ARGS").unwrap_or_default();
    let arg = |key: &str| {
        args.split(';').filter_map(|p| p.split_once('=')).find(|(k, _)| *k == key).map(|(_, v)| v.to_string())
    };
    let conf = serde_json::from_slice::<serde_json::Value>(stdin).unwrap_or_default();
    let mut line = serde_json::json!({
        "time": timestamp(at),
        "command": var("CNI_COMMAND"),
        "containerID": var("CNI_CONTAINERID"),
        "ifname": var("CNI_IFNAME"),
        "netns": var("CNI_NETNS"),
        "podNamespace": arg("K8S_POD_NAMESPACE"),
        "podName": arg("K8S_POD_NAME"),
        "network": conf.get("name"),
        "cniVersion": conf.get("cniVersion"),
        "address": (!notes.addresses.is_empty()).then(|| notes.addresses.to_string()),
        "durationMs": (began.elapsed().as_secs_f64() * 1000.0 * 1000.0).round() / 1000.0,
        "ok": outcome.is_ok(),
    });
    if let Err(e) = outcome {
        line["code"] = serde_json::json!(e.code as u32);
        line["error"] = serde_json::json!(e.to_string());
    }
    if !notes.warnings.is_empty() {
        line["warnings"] = serde_json::json!(notes.warnings);
    }
    LogTarget::from_config(stdin).write(&line);
}
