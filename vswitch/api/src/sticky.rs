//! A pod's request for a sticky (static) address, as UK8S's StatefulSet annotations say it:
//! `network.beta.kubernetes.io/ucloud-statefulset-static-ip: "true"` and
//! `network.beta.kubernetes.io/ucloud-statefulset-ip-claim-policy: "300s" | "1h10m20s" | "Never"`
//! (how long the address is kept for the workload once no pod holds it; UK8S's default: Never).
//!
//! vpc-cni reads them from the runtime's `io.kubernetes.cri.pod-annotations` capability and
//! sends a [`StickyRequest`] in `AssignSpec::sticky`; vswitchd without the field (an older one)
//! refuses it as an unknown field, and vpc-cni then asks again without it.

use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// The annotation that asks for a sticky address (`"true"`).
pub const STATIC_IP_ANNOTATION: &str = "network.beta.kubernetes.io/ucloud-statefulset-static-ip";
/// The annotation that says how long the address outlives the pod.
pub const CLAIM_POLICY_ANNOTATION: &str = "network.beta.kubernetes.io/ucloud-statefulset-ip-claim-policy";
/// The runtime capability that carries the pod's annotations (containerd's CRI plugin).
pub const POD_ANNOTATIONS_CAPABILITY: &str = "io.kubernetes.cri.pod-annotations";

/// Keep the pod's address across deletion and re-creation, on any node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StickyRequest {
    /// How long the address is kept once no pod holds it.
    pub hold: ClaimPolicy,
}

/// How long a sticky address is kept for its workload with no pod.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClaimPolicy {
    /// Until a pod of that name comes back (or an operator deletes its record).
    Never,
    After(Duration),
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("claim policy '{0}' is neither Never nor a duration like 300s or 1h10m20s")]
pub struct ClaimPolicyError(pub String);

impl std::str::FromStr for ClaimPolicy {
    type Err = ClaimPolicyError;

    /// `Never` (any case) or Go's duration form with units h, m, s (`300s`, `1h10m20s`, `90m`).
    fn from_str(text: &str) -> Result<ClaimPolicy, ClaimPolicyError> {
        let bad = || ClaimPolicyError(text.to_string());
        let trimmed = text.trim();
        if trimmed.eq_ignore_ascii_case("never") {
            return Ok(ClaimPolicy::Never);
        }
        let mut seconds: u64 = 0;
        let mut digits = String::new();
        let mut units = 0;
        for c in trimmed.chars() {
            if c.is_ascii_digit() {
                digits.push(c);
                continue;
            }
            let scale = match c {
                'h' => 3600,
                'm' => 60,
                's' => 1,
                _ => return Err(bad()),
            };
            let n: u64 = digits.parse().map_err(|_| bad())?;
            seconds = n.checked_mul(scale).and_then(|s| seconds.checked_add(s)).ok_or_else(bad)?;
            digits.clear();
            units += 1;
        }
        if units == 0 || !digits.is_empty() {
            return Err(bad());
        }
        Ok(ClaimPolicy::After(Duration::from_secs(seconds)))
    }
}

impl fmt::Display for ClaimPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ClaimPolicy::Never => f.write_str("Never"),
            ClaimPolicy::After(d) => write!(f, "{}s", d.as_secs()),
        }
    }
}

/// On the wire as the annotation's text (`"Never"`, `"300s"`).
impl Serialize for ClaimPolicy {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for ClaimPolicy {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<ClaimPolicy, D::Error> {
        let text = String::deserialize(d)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StickyAnnotationError {
    #[error("annotation {STATIC_IP_ANNOTATION} is '{0}', not true or false")]
    NotABool(String),
    #[error("annotation {CLAIM_POLICY_ANNOTATION}: {0}")]
    Policy(#[from] ClaimPolicyError),
}

impl StickyRequest {
    /// What a pod's annotations ask for: `None` unless the static-IP annotation is `true`
    /// (the claim policy then defaults to Never, as in UK8S).
    pub fn from_annotations(
        get: impl Fn(&str) -> Option<String>,
    ) -> Result<Option<StickyRequest>, StickyAnnotationError> {
        let wanted = match get(STATIC_IP_ANNOTATION).as_deref().map(str::trim) {
            None => false,
            Some(v) if v.eq_ignore_ascii_case("true") => true,
            Some(v) if v.eq_ignore_ascii_case("false") || v.is_empty() => false,
            Some(v) => return Err(StickyAnnotationError::NotABool(v.to_string())),
        };
        if !wanted {
            return Ok(None);
        }
        let hold = match get(CLAIM_POLICY_ANNOTATION) {
            Some(text) => text.parse()?,
            None => ClaimPolicy::Never,
        };
        Ok(Some(StickyRequest { hold }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    #[test]
    fn claim_policies_parse_as_uk8s_writes_them() {
        let secs = |s| ClaimPolicy::After(Duration::from_secs(s));
        assert_eq!("300s".parse(), Ok(secs(300)));
        assert_eq!("1h10m20s".parse(), Ok(secs(4220)));
        assert_eq!("90m".parse(), Ok(secs(5400)));
        assert_eq!("Never".parse(), Ok(ClaimPolicy::Never));
        assert_eq!("never".parse(), Ok(ClaimPolicy::Never));
        for bad in ["", "300", "5d", "s", "1.5h", "-3s", "99999999999999999999h"] {
            assert_eq!(bad.parse::<ClaimPolicy>(), Err(ClaimPolicyError(bad.into())), "{bad}");
        }
        assert_eq!(serde_json::to_string(&secs(300)).unwrap(), "\"300s\"");
        assert_eq!(serde_json::from_str::<ClaimPolicy>("\"Never\"").unwrap(), ClaimPolicy::Never);
    }

    #[test]
    fn annotations_ask_for_a_sticky_address_only_when_true() {
        let ask = |pairs: &[(&str, &str)]| {
            let map: HashMap<String, String> = pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
            StickyRequest::from_annotations(|k| map.get(k).cloned())
        };
        assert_eq!(ask(&[]), Ok(None));
        assert_eq!(ask(&[(STATIC_IP_ANNOTATION, "false"), (CLAIM_POLICY_ANNOTATION, "300s")]), Ok(None));
        assert_eq!(ask(&[(STATIC_IP_ANNOTATION, "true")]), Ok(Some(StickyRequest { hold: ClaimPolicy::Never })));
        assert_eq!(
            ask(&[(STATIC_IP_ANNOTATION, "true"), (CLAIM_POLICY_ANNOTATION, "300s")]),
            Ok(Some(StickyRequest { hold: ClaimPolicy::After(Duration::from_secs(300)) }))
        );
        assert_eq!(ask(&[(STATIC_IP_ANNOTATION, "yes")]), Err(StickyAnnotationError::NotABool("yes".into())));
        let bad = ask(&[(STATIC_IP_ANNOTATION, "true"), (CLAIM_POLICY_ANNOTATION, "soon")]).unwrap_err();
        assert_eq!(
            bad.to_string(),
            "annotation network.beta.kubernetes.io/ucloud-statefulset-ip-claim-policy: claim policy 'soon' is \
             neither Never nor a duration like 300s or 1h10m20s"
        );
    }
}
