//! The spec's error: a code, a message and details, printed as JSON on stdout with a non-zero
//! exit.

use serde::Serialize;

use super::CniVersion;

/// The spec's error codes this plugin returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub enum Code {
    IncompatibleVersion = 1,
    UnknownContainer = 3,
    InvalidEnvironment = 4,
    IoFailure = 5,
    DecodeFailure = 6,
    InvalidConfig = 7,
    TryAgainLater = 11,
    /// STATUS: the plugin cannot serve ADDs now (no address to hand out).
    NotAvailable = 50,
    /// STATUS: the plugin is not available, and existing containers in the network may have
    /// limited connectivity (vswitchd is unreachable).
    LimitedConnectivity = 51,
    /// Ours (100+ is plugin-specific): the address pool is exhausted.
    PoolExhausted = 100,
    /// Ours: setting up the pod's interface failed.
    InterfaceSetup = 101,
    /// Ours: vswitchd refused the port.
    SwitchRefused = 102,
    /// Ours: the requested static address is held by another container.
    AddressTaken = 103,
}

/// A CNI error: printed as the spec's error JSON on stdout, with a non-zero exit.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{msg}{}", details.as_deref().map(|d| format!(": {d}")).unwrap_or_default())]
pub struct CniError {
    pub code: Code,
    pub msg: String,
    pub details: Option<String>,
}

/// The error as the runtime reads it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ErrorReply<'a> {
    pub cni_version: CniVersion,
    pub code: u32,
    pub msg: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub details: Option<&'a str>,
}

impl CniError {
    pub fn new(code: Code, msg: impl Into<String>) -> CniError {
        CniError { code, msg: msg.into(), details: None }
    }

    pub fn with_details(code: Code, msg: impl Into<String>, details: impl ToString) -> CniError {
        CniError { code, msg: msg.into(), details: Some(details.to_string()) }
    }

    pub fn reply(&self, cni_version: CniVersion) -> ErrorReply<'_> {
        ErrorReply { cni_version, code: self.code as u32, msg: &self.msg, details: self.details.as_deref() }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_reply_has_the_specs_keys_and_details_only_when_there_are_some() {
        let e = CniError::with_details(Code::InvalidConfig, "bad", "why");
        assert_eq!(
            serde_json::to_value(e.reply(CniVersion::V1_0_0)).unwrap(),
            serde_json::json!({"cniVersion": "1.0.0", "code": 7, "msg": "bad", "details": "why"})
        );
        let e = CniError::new(Code::TryAgainLater, "later");
        assert_eq!(
            serde_json::to_value(e.reply(CniVersion::V0_3_1)).unwrap(),
            serde_json::json!({"cniVersion": "0.3.1", "code": 11, "msg": "later"})
        );
    }
}
