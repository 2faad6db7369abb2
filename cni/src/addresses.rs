//! Where a pod's addresses come from: this node's own ranges, kept in files by the plugin
//! (`"ipam": {"type": "local"}`, the default), or the cluster-wide pool vswitchd allocates from
//! (`"ipam": {"type": "vswitchd"}`, on etcd). The verbs ask this, never a store directly.

use std::net::IpAddr;
use std::path::Path;

use vswitch_api::api::{AddressView, AssignSpec, ErrorCode, IpFamilies, PodRef};
use vswitch_api::sticky::StickyRequest;

use crate::client::{ClientError, Vswitch};
use crate::ipam::Ipam;
use crate::spec::{Attachment, CniError, Code, PodIps};

#[derive(Debug)]
pub enum Addresses {
    Local(Ipam),
    Cluster(Vswitch),
}

/// vswitchd's IPAM answers, by error code: the pool is empty (100), the address is someone
/// else's (103), the request is wrong (7), or try again later (11: the store is unreachable and
/// the warm pool empty, a sticky pod's address is still held elsewhere, vswitchd is down).
fn cluster_error(e: ClientError) -> CniError {
    match e.code() {
        Some(ErrorCode::Exhausted) => CniError::with_details(Code::PoolExhausted, "no free address", e),
        Some(ErrorCode::Conflict) => {
            CniError::with_details(Code::AddressTaken, "the requested address is not available", e)
        }
        Some(ErrorCode::Invalid) => {
            CniError::with_details(Code::InvalidConfig, "vswitchd refused the address request", e)
        }
        _ => e.into(),
    }
}

/// Asks vswitchd for addresses; a vswitchd older than `AssignSpec::sticky` refuses the field as
/// unknown, and is asked again without it (the pod starts, its address not sticky).
fn assign_compatibly(vswitch: &Vswitch, spec: AssignSpec) -> Result<AddressView, ClientError> {
    let sticky = spec.sticky.is_some();
    match vswitch.ipam_assign(spec.clone()) {
        Err(ClientError::Api(e))
            if sticky && e.code == ErrorCode::Invalid && e.message.contains("unknown field `sticky`") =>
        {
            eprintln!("vpc-cni: vswitchd is too old for sticky addresses by annotation: assigned without");
            vswitch.ipam_assign(AssignSpec { sticky: None, ..spec })
        }
        other => other,
    }
}

/// vswitchd's addresses as a pod's: one per family.
fn pod_ips(ips: Vec<IpAddr>) -> Result<PodIps, CniError> {
    PodIps::from_ips(ips).map_err(|e| CniError::with_details(Code::SwitchRefused, "vswitchd's addresses", e))
}

impl Addresses {
    /// The addresses for `owner` (the ones it has, the requested ones, or new ones; one per
    /// family of the network), and whether this call assigned them (false: undoing a failed ADD
    /// must not release them). `sticky`: the pod's annotations ask for a sticky address (only
    /// vswitchd's IPAM keeps one; the local ranges ignore it).
    pub fn assign(
        &self,
        owner: &Attachment,
        requested: PodIps,
        families: Option<IpFamilies>,
        netns: &Path,
        pod: Option<PodRef>,
        sticky: Option<StickyRequest>,
    ) -> Result<(PodIps, bool), CniError> {
        let (ips, new) = match self {
            Addresses::Local(ipam) => ipam.allocate_for(owner, requested, Some(netns))?,
            Addresses::Cluster(vswitch) => {
                let ips = requested.iter().collect();
                let spec = AssignSpec { owner: owner.clone(), netns: netns.into(), pod, ips, families, sticky };
                let view = assign_compatibly(vswitch, spec).map_err(cluster_error)?;
                (pod_ips(view.ips)?, view.new)
            }
        };
        if ips.is_empty() {
            return Err(CniError::new(Code::InvalidConfig, "the network has no address family to assign from"));
        }
        Ok((ips, new))
    }

    /// Gives `owner`'s addresses back (releasing twice is fine).
    pub fn release(&self, owner: &Attachment) -> Result<PodIps, CniError> {
        match self {
            Addresses::Local(ipam) => Ok(ipam.release(owner)?),
            Addresses::Cluster(vswitch) => pod_ips(vswitch.ipam_release(owner).map_err(cluster_error)?.released),
        }
    }

    /// `owner`'s addresses (none: it has no allocation).
    pub fn lookup(&self, owner: &Attachment) -> Result<PodIps, CniError> {
        match self {
            Addresses::Local(ipam) => Ok(ipam.lookup(owner)?),
            Addresses::Cluster(vswitch) => match vswitch.ipam_lookup(owner) {
                Ok(view) => pod_ips(view.ips),
                Err(e) if e.code() == Some(ErrorCode::NotFound) => Ok(PodIps::default()),
                Err(e) => Err(cluster_error(e)),
            },
        }
    }

    /// Could an ADD get its addresses now?
    pub fn can_assign(&self) -> Result<bool, CniError> {
        match self {
            Addresses::Local(ipam) => Ok(ipam.can_allocate()?),
            Addresses::Cluster(vswitch) => {
                let view = vswitch.ipam().map_err(cluster_error)?;
                Ok(view.this_node.warm > 0 || (view.store_reachable && view.free > 0))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{BufRead, BufReader, Write};
    use std::os::unix::net::UnixListener;
    use vswitch_api::sticky::ClaimPolicy;

    /// `AssignSpec` as vswitchd had it before `sticky`, parsed the way its server parses requests.
    #[derive(serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct AssignSpecBeforeSticky {
        op: String,
        owner: Attachment,
        netns: std::path::PathBuf,
        #[serde(default)]
        pod: Option<PodRef>,
        #[serde(default)]
        ips: Vec<IpAddr>,
        #[serde(default)]
        families: Option<IpFamilies>,
    }

    fn socket_path(test: &str) -> std::path::PathBuf {
        let path = std::env::temp_dir().join(format!("vpc-cni-old-vswitchd-{test}-{}.sock", std::process::id()));
        let _ = std::fs::remove_file(&path);
        path
    }

    /// An old vswitchd answering `requests` lines; returns what it was sent.
    fn old_vswitchd(socket: &Path, requests: usize) -> std::thread::JoinHandle<Vec<String>> {
        let listener = UnixListener::bind(socket).unwrap();
        std::thread::spawn(move || {
            let mut seen = Vec::new();
            for _ in 0..requests {
                let (stream, _) = listener.accept().unwrap();
                let mut line = String::new();
                BufReader::new(&stream).read_line(&mut line).unwrap();
                let reply = match serde_json::from_str::<AssignSpecBeforeSticky>(&line) {
                    Ok(_) => r#"{"ok":true,"result":{"ips":["10.0.0.7"],"new":true}}"#.to_string(),
                    Err(e) => serde_json::json!({"ok": false, "error": {"code": "invalid", "message": format!("bad request: {e}")}})
                        .to_string(),
                };
                (&stream).write_all(format!("{reply}\n").as_bytes()).unwrap();
                seen.push(line);
            }
            seen
        })
    }

    #[test]
    fn a_sticky_request_to_a_vswitchd_without_sticky_is_asked_again_without_it() {
        let socket = socket_path("sticky");
        let server = old_vswitchd(&socket, 2);
        let owner = Attachment { container_id: "c1".into(), ifname: "eth0".into() };
        let pod = Some(PodRef { namespace: "db".into(), name: "pg-0".into() });
        let sticky = Some(StickyRequest { hold: ClaimPolicy::Never });
        let addresses = Addresses::Cluster(Vswitch::new(&socket));
        let (ips, new) =
            addresses.assign(&owner, PodIps::default(), None, Path::new("/run/netns/c1"), pod, sticky).unwrap();
        assert_eq!((ips.to_string(), new), ("10.0.0.7".to_string(), true));
        let seen = server.join().unwrap();
        assert!(seen[0].contains(r#""sticky":{"hold":"Never"}"#), "{}", seen[0]);
        assert!(!seen[1].contains("sticky"), "asked again without it: {}", seen[1]);
        let _ = std::fs::remove_file(socket);
    }

    #[test]
    fn a_request_without_sticky_is_the_old_wire_form() {
        let socket = socket_path("plain");
        let server = old_vswitchd(&socket, 1);
        let owner = Attachment { container_id: "c1".into(), ifname: "eth0".into() };
        let addresses = Addresses::Cluster(Vswitch::new(&socket));
        addresses.assign(&owner, PodIps::default(), None, Path::new("/run/netns/c1"), None, None).unwrap();
        assert!(!server.join().unwrap()[0].contains("sticky"));
        let _ = std::fs::remove_file(socket);
    }
}
