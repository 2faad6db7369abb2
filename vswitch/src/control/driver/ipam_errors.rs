//! The IPAM's failures as the API replies with them: the one place an [`IpamError`] becomes an
//! [`ErrorCode`]. vpc-cni turns the code alone into the runtime's (`Exhausted`: 100, pool
//! exhausted; `Conflict`: 103, address taken; `Invalid`: 7; `Unavailable`: 11, try again
//! later), so the codes here are a contract; the message is the IPAM's own.

use vswitch_api::api::{ApiError, ErrorCode};

use crate::ipam::IpamError;

pub fn api_error(e: IpamError) -> ApiError {
    let code = match &e {
        IpamError::Off
        | IpamError::Settings(_)
        | IpamError::Invalid(_)
        | IpamError::StateCorrupt { .. }
        | IpamError::StateTooNew { .. }
        | IpamError::StoreCorrupt { .. }
        | IpamError::StoreUnreadable { .. }
        | IpamError::Etcd(_)
        | IpamError::ProviderSetup(_) => ErrorCode::Invalid,
        IpamError::NotFound { .. } => ErrorCode::NotFound,
        IpamError::Exhausted { .. } => ErrorCode::Exhausted,
        IpamError::Conflict(_) => ErrorCode::Conflict,
        IpamError::StoreUnavailable { .. }
        | IpamError::StickyBusy(_)
        | IpamError::StateIo { .. }
        | IpamError::Provider(_) => ErrorCode::Unavailable,
    };
    ApiError::new(code, e)
}

#[cfg(test)]
mod tests {
    use std::net::IpAddr;

    use vswitch_api::api::PodRef;

    use super::*;
    use crate::ipam::error::{Conflict, Holder, InvalidRequest, StickyBusy};
    use crate::ipam::pool::Family;
    use crate::ipam::store::StoreError;

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    /// The replies CNI plugins have always seen, code and message, for every failure of a
    /// request (as the IPAM built them as `ApiError`s before it had its own error type).
    #[test]
    fn replies_keep_their_codes_and_messages() {
        let pod = PodRef { namespace: "db".into(), name: "pg-0".into() };
        let store = || StoreError("etcd: https://10.0.0.1:2379: request timed out".into());
        let cases: Vec<(IpamError, ErrorCode, &str)> = vec![
            (
                IpamError::Off,
                ErrorCode::Invalid,
                "this vswitchd has no [ipam] section: cluster address allocation is off",
            ),
            (
                InvalidRequest::FamilyNotInPool { pools: "10.0.0.0/28".into(), family: Family::Ipv6 }.into(),
                ErrorCode::Invalid,
                "the pool 10.0.0.0/28 has no IPv6 addresses",
            ),
            (
                InvalidRequest::TwoOfFamily(Family::Ipv6).into(),
                ErrorCode::Invalid,
                "at most one IPv6 address may be asked for",
            ),
            (
                InvalidRequest::UnaskedFamily(ip("fd00::1")).into(),
                ErrorCode::Invalid,
                "fd00::1 is not of a family this ADD asks for",
            ),
            (InvalidRequest::NotInPool(ip("10.9.0.1")).into(), ErrorCode::Invalid, "10.9.0.1 is not in the pool"),
            (IpamError::NotFound { container_id: "c1".into() }, ErrorCode::NotFound, "c1 has no address here"),
            (
                IpamError::Exhausted { family: Family::Ipv4, pools: "10.0.0.0/28, fd00::/64".into() },
                ErrorCode::Exhausted,
                "no free IPv4 address in the pool 10.0.0.0/28, fd00::/64",
            ),
            (
                Conflict::AlreadyHas { container_id: "c1".into(), has: ip("10.0.0.2"), asked: ip("10.0.0.3") }.into(),
                ErrorCode::Conflict,
                "c1 already has 10.0.0.2; it cannot also take 10.0.0.3",
            ),
            (
                Conflict::InUse { ip: ip("10.0.0.3"), by: Holder::Port }.into(),
                ErrorCode::Conflict,
                "10.0.0.3 is in use by a port of this node",
            ),
            (
                Conflict::InUse { ip: ip("10.0.0.3"), by: Holder::Local(Some("c9".into())) }.into(),
                ErrorCode::Conflict,
                "10.0.0.3 is in use by Some(\"c9\")",
            ),
            (
                Conflict::InUse { ip: ip("10.0.0.3"), by: Holder::Local(None) }.into(),
                ErrorCode::Conflict,
                "10.0.0.3 is in use by None",
            ),
            (
                Conflict::InUse { ip: ip("10.0.0.3"), by: Holder::Record { node: Some("n2".into()), state: "warm" } }
                    .into(),
                ErrorCode::Conflict,
                "10.0.0.3 is in use by n2 (warm)",
            ),
            (
                Conflict::InUse { ip: ip("10.0.0.3"), by: Holder::Record { node: None, state: "sticky" } }.into(),
                ErrorCode::Conflict,
                "10.0.0.3 is in use by - (sticky)",
            ),
            (
                Conflict::InUse { ip: ip("10.0.0.3"), by: Holder::Unreadable }.into(),
                ErrorCode::Conflict,
                "10.0.0.3 is in use by an unreadable record",
            ),
            (
                Conflict::InUse { ip: ip("10.0.0.3"), by: Holder::Raced }.into(),
                ErrorCode::Conflict,
                "10.0.0.3 is in use by another node (it changed while asking)",
            ),
            (
                IpamError::StoreUnavailable { what: "the warm pool is empty", source: store() },
                ErrorCode::Unavailable,
                "the warm pool is empty: the address store is unreachable \
                 (etcd: https://10.0.0.1:2379: request timed out); retry later",
            ),
            (
                StickyBusy::Changed { pod: pod.clone(), ip: ip("10.0.0.4") }.into(),
                ErrorCode::Unavailable,
                "db/pg-0's address 10.0.0.4 changed while taking it; retry",
            ),
            (
                StickyBusy::StillHeld { pod, ip: ip("10.0.0.4"), node: "n1".into() }.into(),
                ErrorCode::Unavailable,
                "db/pg-0 still holds 10.0.0.4 on n1 (its DEL has not happened yet); retry",
            ),
            (
                IpamError::StateIo {
                    path: "/var/lib/vswitchd/ipam.json".into(),
                    source: std::io::Error::from_raw_os_error(28),
                },
                ErrorCode::Unavailable,
                "IPAM state /var/lib/vswitchd/ipam.json: No space left on device (os error 28)",
            ),
        ];
        for (error, code, message) in cases {
            let reply = api_error(error);
            assert_eq!((reply.code, reply.message.as_str()), (code, message));
        }
    }

    #[test]
    fn a_corrupt_store_is_a_configuration_problem_not_an_outage() {
        let e = IpamError::StoreCorrupt {
            path: "/var/lib/vswitchd/ipam-store.json".into(),
            detail: "EOF while parsing an object at line 1 column 80".into(),
            local: "/var/lib/vswitchd/ipam.json".into(),
        };
        let reply = api_error(e);
        assert_eq!(reply.code, ErrorCode::Invalid, "Unavailable would read as: retry, the store is down");
        assert!(reply.message.starts_with("the address store /var/lib/vswitchd/ipam-store.json is corrupt (EOF"));
        assert!(reply.message.contains("move /var/lib/vswitchd/ipam-store.json and /var/lib/vswitchd/ipam.json away"));
    }
}
