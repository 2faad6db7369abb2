//! The driver's errors, and the one place they become the API's: every failure a request can
//! meet (the registry's refusals, pod I/O, the state file, trace input, the upgrade freeze) is a
//! [`RequestError`], turned into an [`ApiError`] with its [`ErrorCode`] here and nowhere else.
//! The message is the error's own text.

use std::path::PathBuf;

use vswitch_api::api::{ApiError, ErrorCode};

use super::saver::SaveError;
use crate::control::hostnet::HostNetError;
use crate::control::persist::StateError;
use crate::control::podio::PodIoError;
use crate::control::registry::RegistryError;
use crate::control::trace::TraceError;
use crate::ipam::IpamError;
use crate::port::TapError;

/// Why the daemon could not start.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error("host networking: {0}")]
    HostNet(#[from] HostNetError),
    #[error("{0}")]
    State(#[from] StateError),
    #[error("starting workers: {0}")]
    Workers(std::io::Error),
    #[error("the running vswitchd has {running} workers, this one {this}: upgrade with the same configuration")]
    WorkersDiffer { running: usize, this: usize },
    #[error("attaching {name}: {source}")]
    Attach { name: String, source: TapError },
    #[error("uplink {name}: {source}")]
    Uplink { name: String, source: std::io::Error },
    #[error("{0}")]
    Registry(#[from] RegistryError),
    /// The `[ipam]` section could not be opened.
    #[error("{0}")]
    Ipam(#[from] IpamError),
}

/// Why a request failed.
#[derive(Debug, thiserror::Error)]
pub enum RequestError {
    #[error(transparent)]
    Registry(#[from] RegistryError),
    #[error("network namespace {} does not exist", .0.display())]
    NoNamespace(PathBuf),
    #[error(transparent)]
    PodIo(#[from] PodIoError),
    #[error(transparent)]
    Save(#[from] SaveError),
    #[error("prefix '{prefix}': {source}")]
    Prefix { prefix: String, source: fib::PrefixError },
    #[error(transparent)]
    Trace(#[from] TraceError),
    #[error("vswitchd is handing over to its upgrade; retry in a moment")]
    Frozen,
    /// What the IPAM refused (also: no `[ipam]` section, no address for a lookup).
    #[error(transparent)]
    Ipam(#[from] IpamError),
}

impl From<RequestError> for ApiError {
    fn from(e: RequestError) -> ApiError {
        let e = match e {
            RequestError::Ipam(e) => return super::ipam_errors::api_error(e),
            e => e,
        };
        let code = match &e {
            RequestError::Registry(e) => registry_code(e),
            RequestError::NoNamespace(_) => ErrorCode::NotFound,
            RequestError::PodIo(e) => pod_io_code(e),
            RequestError::Save(_) | RequestError::Frozen => ErrorCode::Unavailable,
            RequestError::Prefix { .. } => ErrorCode::Invalid,
            RequestError::Trace(TraceError::NoSuchPort(_) | TraceError::NoSuchPod(_)) => ErrorCode::NotFound,
            RequestError::Trace(_) => ErrorCode::Invalid,
            RequestError::Ipam(_) => unreachable!("mapped above"),
        };
        ApiError::new(code, e)
    }
}

fn registry_code(e: &RegistryError) -> ErrorCode {
    match e {
        RegistryError::NoSuchPort(_) | RegistryError::NoSuchRoute(_) => ErrorCode::NotFound,
        RegistryError::PortExists(_) | RegistryError::PortBeingAttached(_) | RegistryError::RouteExists(_) => {
            ErrorCode::Exists
        }
        RegistryError::AddressInUse { .. }
        | RegistryError::AddressBeingAttached { .. }
        | RegistryError::PortGone(_)
        | RegistryError::RouteOwnedByPort(_) => ErrorCode::Conflict,
        RegistryError::InvalidPod(_) | RegistryError::NotAPodPort(_) => ErrorCode::Invalid,
        RegistryError::NoFreePortId => ErrorCode::Exhausted,
    }
}

/// A pod whose TAP is not there is `not_found` (the plugin gives up); anything else may pass.
fn pod_io_code(e: &PodIoError) -> ErrorCode {
    match e {
        PodIoError::Attach { source: TapError::Attach { source, .. }, .. }
            if source.kind() == std::io::ErrorKind::NotFound =>
        {
            ErrorCode::NotFound
        }
        PodIoError::Attach { .. } | PodIoError::HostNet(_) | PodIoError::Eni(_) => ErrorCode::Unavailable,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control::registry::InvalidPod;

    #[test]
    fn each_error_has_its_code_and_its_own_message() {
        let prefix: fib::AnyPrefix = "10.0.0.0/8".parse().unwrap();
        let missing_tap = TapError::Attach { name: "eth0".into(), source: std::io::ErrorKind::NotFound.into() };
        let busy_tap = TapError::Attach { name: "eth0".into(), source: std::io::ErrorKind::ResourceBusy.into() };
        for (error, code) in [
            (RegistryError::NoSuchPort("a".into()).into(), ErrorCode::NotFound),
            (RegistryError::RouteExists(prefix).into(), ErrorCode::Exists),
            (RegistryError::RouteOwnedByPort(prefix).into(), ErrorCode::Conflict),
            (RegistryError::InvalidPod(InvalidPod::NoAddress).into(), ErrorCode::Invalid),
            (RegistryError::NoFreePortId.into(), ErrorCode::Exhausted),
            (RequestError::NoNamespace("/run/netns/x".into()), ErrorCode::NotFound),
            (PodIoError::Attach { port: "a".into(), source: missing_tap }.into(), ErrorCode::NotFound),
            (PodIoError::Attach { port: "a".into(), source: busy_tap }.into(), ErrorCode::Unavailable),
            (RequestError::Frozen, ErrorCode::Unavailable),
            (TraceError::NoSuchPod("x".into()).into(), ErrorCode::NotFound),
            (TraceError::FrameTooLong.into(), ErrorCode::Invalid),
        ] {
            let message = error.to_string();
            let api = ApiError::from(error);
            assert_eq!((api.code, api.message), (code, message));
        }
        assert_eq!(
            ApiError::from(RequestError::from(RegistryError::PortExists("pod1".into()))).message,
            "port 'pod1' already exists",
            "the message clients have always read"
        );
        let off = ApiError::from(RequestError::from(IpamError::Off));
        assert_eq!(
            (off.code, off.message.as_str()),
            (ErrorCode::Invalid, "this vswitchd has no [ipam] section: cluster address allocation is off")
        );
    }
}
