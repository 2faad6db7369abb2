//! The sticky pod on the lab VPC ([`super::IpamMode::Vpc`]): it is sticky by UK8S's annotations,
//! which vpc-cni gets as containerd passes them, in `runtimeConfig` under the
//! `io.kubernetes.cri.pod-annotations` capability its conflist entry declares.

use serde_json::{json, Value};
use vswitch_api::sticky::{CLAIM_POLICY_ANNOTATION, POD_ANNOTATIONS_CAPABILITY, STATIC_IP_ANNOTATION};

/// How long the lab's sticky pod keeps its address with no pod.
pub const CLAIM_POLICY: &str = "300s";

/// Adds the sticky pod's annotations to vpc-cni's configuration, as a runtime does.
pub fn annotate(conf: &mut Value) {
    conf["capabilities"] = json!({ POD_ANNOTATIONS_CAPABILITY: true });
    conf["runtimeConfig"] = json!({
        POD_ANNOTATIONS_CAPABILITY: {
            STATIC_IP_ANNOTATION: "true",
            CLAIM_POLICY_ANNOTATION: CLAIM_POLICY,
            "io.kubernetes.pod.namespace": super::POD_NAMESPACE,
        }
    });
}
