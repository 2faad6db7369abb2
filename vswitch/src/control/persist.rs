//! The state file, `STATE_DIR/ports.json`: what a restarted (or upgraded) vswitchd must attach
//! again. It has its own versioned format, independent of the wire API, so the API can change
//! without losing a node's pods on upgrade:
//! - format 2 (this one): `{"format":2,"ports":[...],"routes":[...]}`, pod ports with their pod
//!   identity and bandwidth, and the routes added through the API (which persist across restarts);
//! - format 1 (vswitchd before the typed API): a JSON array of the `add_port` requests; read and
//!   converted, written back as format 2 at the next change;
//! - a newer format is refused: the daemon stops with a message rather than run without the
//!   ports and overwrite a file it does not understand.
//!
//! Written with [`vswitch_host::file::write_atomic`], so a crash leaves the old or the new file.

use std::net::{Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use vswitch_api::MacAddr;

use super::registry::{BandwidthLimits, PodAddresses, PodName, PodSpec, Rate};

pub const FORMAT: u32 = 2;

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("state file {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("state file {path} is not valid: {detail}")]
    Corrupt { path: PathBuf, detail: String },
    #[error(
        "state file {path} has format {found}, written by a newer vswitchd; this one reads formats 1 to {FORMAT}. \
         Run the newer version, or move the file away to start without the saved ports"
    )]
    TooNew { path: PathBuf, found: u64 },
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SavedState {
    pub format: u32,
    pub ports: Vec<SavedPort>,
    #[serde(default)]
    pub routes: Vec<SavedRoute>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SavedPort {
    pub name: String,
    pub netns: PathBuf,
    pub ifname: String,
    /// Format 2 files from before dual-stack always have `ip`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip: Option<Ipv4Addr>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ipv6: Option<Ipv6Addr>,
    pub mac: MacAddr,
    pub mtu: u16,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_namespace: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ingress: Option<SavedRate>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub egress: Option<SavedRate>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct SavedRate {
    pub rate_bps: u64,
    pub burst_bits: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SavedRoute {
    pub prefix: String,
    pub port: String,
}

/// Format 1: one `add_port` request per pod, as the API of the time spelled it.
#[derive(Debug, Deserialize)]
struct LegacyAddPort {
    op: String,
    name: String,
    netns: PathBuf,
    ifname: String,
    ip: Ipv4Addr,
    mac: MacAddr,
    mtu: Option<u16>,
}

impl SavedPort {
    pub fn from_spec(spec: &PodSpec, mtu: u16) -> SavedPort {
        let rate = |r: Option<Rate>| r.map(|r| SavedRate { rate_bps: r.bits_per_second, burst_bits: r.burst_bits });
        SavedPort {
            name: spec.name.clone(),
            netns: spec.netns.clone(),
            ifname: spec.ifname.clone(),
            ip: spec.addresses.ip,
            ipv6: spec.addresses.ipv6,
            mac: spec.mac,
            mtu,
            pod_namespace: spec.pod.as_ref().map(|p| p.namespace.clone()),
            pod_name: spec.pod.as_ref().map(|p| p.name.clone()),
            ingress: rate(spec.bandwidth.and_then(|b| b.ingress)),
            egress: rate(spec.bandwidth.and_then(|b| b.egress)),
        }
    }

    pub fn to_spec(&self) -> PodSpec {
        let rate = |r: Option<SavedRate>| r.map(|r| Rate { bits_per_second: r.rate_bps, burst_bits: r.burst_bits });
        let bandwidth = (self.ingress.is_some() || self.egress.is_some())
            .then(|| BandwidthLimits { ingress: rate(self.ingress), egress: rate(self.egress) });
        let pod = match (&self.pod_namespace, &self.pod_name) {
            (Some(namespace), Some(name)) => Some(PodName { namespace: namespace.clone(), name: name.clone() }),
            _ => None,
        };
        PodSpec {
            name: self.name.clone(),
            netns: self.netns.clone(),
            ifname: self.ifname.clone(),
            addresses: PodAddresses { ip: self.ip, ipv6: self.ipv6 },
            mac: self.mac,
            mtu: Some(self.mtu),
            pod,
            bandwidth,
        }
    }
}

#[derive(Debug)]
pub struct StateFile {
    path: PathBuf,
    /// The pod MTU format-1 entries without one get.
    default_mtu: u16,
}

impl StateFile {
    pub fn open(state_dir: &Path, default_mtu: u16) -> Result<StateFile, StateError> {
        std::fs::create_dir_all(state_dir).map_err(|source| StateError::Io { path: state_dir.into(), source })?;
        Ok(StateFile { path: state_dir.join("ports.json"), default_mtu })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The saved state; empty if there is no file yet.
    pub fn load(&self) -> Result<SavedState, StateError> {
        let bytes = match std::fs::read(&self.path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Ok(SavedState { format: FORMAT, ..Default::default() })
            }
            Err(source) => return Err(StateError::Io { path: self.path.clone(), source }),
        };
        self.parse(&bytes)
    }

    fn parse(&self, bytes: &[u8]) -> Result<SavedState, StateError> {
        let corrupt = |detail: String| StateError::Corrupt { path: self.path.clone(), detail };
        let value: serde_json::Value = serde_json::from_slice(bytes).map_err(|e| corrupt(e.to_string()))?;
        if value.is_array() {
            let legacy: Vec<LegacyAddPort> = serde_json::from_value(value).map_err(|e| corrupt(e.to_string()))?;
            let ports = legacy
                .into_iter()
                .map(|p| {
                    if p.op != "add_port" {
                        return Err(corrupt(format!("format 1 entry with op '{}'", p.op)));
                    }
                    Ok(SavedPort {
                        name: p.name,
                        netns: p.netns,
                        ifname: p.ifname,
                        ip: Some(p.ip),
                        ipv6: None,
                        mac: p.mac,
                        mtu: p.mtu.unwrap_or(self.default_mtu),
                        pod_namespace: None,
                        pod_name: None,
                        ingress: None,
                        egress: None,
                    })
                })
                .collect::<Result<_, _>>()?;
            return Ok(SavedState { format: FORMAT, ports, routes: Vec::new() });
        }
        let found =
            value.get("format").and_then(|f| f.as_u64()).ok_or_else(|| corrupt("no \"format\" number".into()))?;
        if found > FORMAT as u64 {
            return Err(StateError::TooNew { path: self.path.clone(), found });
        }
        let mut state: SavedState = serde_json::from_value(value).map_err(|e| corrupt(e.to_string()))?;
        state.format = FORMAT;
        Ok(state)
    }

    pub fn save(&self, state: &SavedState) -> Result<(), StateError> {
        let bytes = serde_json::to_vec_pretty(state).expect("state serialises");
        vswitch_host::file::write_atomic(&self.path, &bytes)
            .map_err(|source| StateError::Io { path: self.path.clone(), source })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A ports.json exactly as vswitchd wrote it before this format existed.
    const FORMAT_1: &str = r#"[
  {
    "op": "add_port",
    "name": "f00d:eth0",
    "netns": "/run/netns/pod-a",
    "ifname": "eth0",
    "ip": "10.10.40.10",
    "mac": "02:00:0a:0a:28:0a",
    "mtu": 1400
  },
  {
    "op": "add_port",
    "name": "beef:eth0",
    "netns": "/var/run/netns/cni-1",
    "ifname": "eth0",
    "ip": "10.10.40.11",
    "mac": "02:00:0a:0a:28:0b"
  }
]"#;

    fn file(contents: &str) -> (tempfile::TempDir, StateFile) {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("ports.json"), contents).unwrap();
        let store = StateFile::open(dir.path(), 1500).unwrap();
        (dir, store)
    }

    #[test]
    fn format_1_files_are_restored() {
        let (_dir, store) = file(FORMAT_1);
        let state = store.load().unwrap();
        assert_eq!(state.ports.len(), 2);
        let spec = state.ports[0].to_spec();
        assert_eq!(
            (spec.name.as_str(), spec.addresses.ip, spec.addresses.ipv6, spec.mtu),
            ("f00d:eth0", Some(Ipv4Addr::new(10, 10, 40, 10)), None, Some(1400))
        );
        assert_eq!(state.ports[1].mtu, 1500, "entries without an MTU get the pod MTU");
        // Saved again, it is format 2 and reads back the same.
        store.save(&state).unwrap();
        assert_eq!(store.load().unwrap(), state);
        assert!(std::fs::read_to_string(store.path()).unwrap().contains("\"format\": 2"));
    }

    #[test]
    fn a_newer_format_is_refused_with_a_clear_message() {
        let (_dir, store) = file(r#"{"format":3,"ports":[],"flows":[]}"#);
        let e = store.load().unwrap_err();
        assert!(matches!(e, StateError::TooNew { found: 3, .. }));
        assert!(e.to_string().contains("newer vswitchd"), "{e}");
    }

    #[test]
    fn corrupt_files_are_errors_and_a_missing_file_is_empty() {
        for bad in ["{", r#"{"ports":[]}"#, r#"[{"op":"del_port","name":"x"}]"#, r#"{"format":2,"ports":[],"x":1}"#] {
            let (_dir, store) = file(bad);
            assert!(matches!(store.load(), Err(StateError::Corrupt { .. })), "{bad}");
        }
        let dir = tempfile::tempdir().unwrap();
        assert!(StateFile::open(dir.path(), 1500).unwrap().load().unwrap().ports.is_empty());
    }

    #[test]
    fn pod_identity_bandwidth_and_routes_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let store = StateFile::open(dir.path(), 1500).unwrap();
        let spec = PodSpec {
            name: "c1:eth0".into(),
            netns: "/run/netns/x".into(),
            ifname: "eth0".into(),
            addresses: PodAddresses { ip: Some(Ipv4Addr::new(10, 0, 0, 2)), ipv6: Some("fd00:10::2".parse().unwrap()) },
            mac: MacAddr::local_from([10, 0, 0, 2]),
            mtu: Some(1500),
            pod: Some(PodName { namespace: "default".into(), name: "web-0".into() }),
            bandwidth: Some(BandwidthLimits {
                ingress: Some(Rate { bits_per_second: 10_000_000, burst_bits: 80_000 }),
                egress: None,
            }),
        };
        let state = SavedState {
            format: FORMAT,
            ports: vec![SavedPort::from_spec(&spec, 1500)],
            routes: vec![SavedRoute { prefix: "10.96.0.0/12".into(), port: "vsw0".into() }],
        };
        store.save(&state).unwrap();
        let back = store.load().unwrap();
        assert_eq!(back, state);
        assert_eq!(back.ports[0].to_spec(), spec);
    }
}
