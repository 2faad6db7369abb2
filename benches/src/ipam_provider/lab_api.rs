//! What differs between the providers in the bench, and nothing else: which lab VPC serves
//! them, how its API is slowed and rate-limited, and how many calls it answered. The phases
//! (`super::run`) are one code path for all.

use std::collections::BTreeMap;

use serde_json::json;
use vpc_lab::lab::{Lab, VpcMode};

/// The VPC providers `vpc-bench ipam --provider` measures, each against its lab VPC's API.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Provider {
    /// `--vpc ucloud`: the lab's emulator of UCloud's VPC API.
    Ucloud,
    /// `--vpc aws`: moto behind the lab's EC2 proxy.
    Aws,
}

/// How the lab's API is held back during the measured phases.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ApiSlowdown {
    /// Added to every call.
    pub latency_ms: u64,
    /// UCloud: the API's token bucket, calls per second (RetCode 153 past it).
    pub rate_per_sec: f64,
    /// EC2: the share of calls answered `RequestLimitExceeded` (the lab's proxy throttles by
    /// chance, not by a bucket).
    pub throttle: f64,
}

impl ApiSlowdown {
    /// The API at full speed.
    pub const NONE: ApiSlowdown = ApiSlowdown { latency_ms: 0, rate_per_sec: f64::INFINITY, throttle: 0.0 };
}

impl Provider {
    /// The key of its figures in the report and JSON.
    pub fn name(self) -> &'static str {
        match self {
            Provider::Ucloud => "ucloud",
            Provider::Aws => "aws",
        }
    }

    /// The lab VPC whose API the nodes allocate from.
    pub fn vpc_mode(self) -> VpcMode {
        match self {
            Provider::Ucloud => VpcMode::Ucloud,
            Provider::Aws => VpcMode::Aws,
        }
    }

    /// What the slowdown says about this provider's API, for the table's heading.
    pub fn describe(self, slow: &ApiSlowdown) -> String {
        match self {
            Provider::Ucloud => format!("{}: {} ms, at most {}/s", self.name(), slow.latency_ms, slow.rate_per_sec),
            Provider::Aws => {
                format!("{}: {} ms, {}% RequestLimitExceeded", self.name(), slow.latency_ms, slow.throttle * 100.0)
            }
        }
    }

    /// Holds the lab's API back as `slow` says.
    pub fn slow_api(self, lab: &Lab, slow: &ApiSlowdown) {
        match self {
            Provider::Ucloud => {
                // The server's faults take `null` for no rate limit.
                let rate = slow.rate_per_sec.is_finite().then_some(slow.rate_per_sec);
                ucloud_api(lab).set_faults(json!({"latency_ms": slow.latency_ms, "rate_per_sec": rate}));
            }
            Provider::Aws => ec2(lab).faults(json!({"latency_ms": slow.latency_ms, "throttle": slow.throttle})),
        }
    }

    /// Every call the lab's API received so far by action, refused ones included (each cost
    /// the node a round trip), counted by the API itself.
    pub fn api_calls(self, lab: &Lab) -> BTreeMap<String, u64> {
        let mut by_action = BTreeMap::new();
        match self {
            Provider::Ucloud => {
                // One entry per action and RetCode.
                for call in ucloud_api(lab).state()["calls"].as_array().into_iter().flatten() {
                    let action = call["action"].as_str().unwrap_or("?").to_string();
                    *by_action.entry(action).or_default() += call["count"].as_u64().unwrap_or(0);
                }
            }
            Provider::Aws => {
                let calls = ec2(lab).calls();
                by_action
                    .extend(calls.as_object().into_iter().flatten().map(|(a, n)| (a.clone(), n.as_u64().unwrap_or(0))));
            }
        }
        by_action
    }
}

fn ucloud_api(lab: &Lab) -> &vpc_lab::lab::vpc_api::VpcApi {
    lab.vpc_api().expect("a lab with --vpc ucloud serves the VPC API")
}

fn ec2(lab: &Lab) -> &vpc_lab::ec2::Ec2Lab {
    lab.ec2_vpc().expect("a lab with --vpc aws runs EC2").ec2()
}

/// What the nodes themselves timed, summed over `nodes` (their `vswitchctl ipam`): the calls
/// that allocate addresses, and the fabric probes of new addresses (how long until the VPC's
/// SDN delivered one). Across a phase, the difference says where an empty-pool ADD's time went.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct NodeTimings {
    pub allocations: u64,
    pub allocation_ms: u64,
    pub probes: u64,
    pub probe_ms: u64,
}

impl NodeTimings {
    pub fn read(lab: &Lab, nodes: usize) -> NodeTimings {
        let mut t = NodeTimings::default();
        for node in 0..nodes {
            let view = &lab.daemon(node).ctl_json(&["ipam"])["provider"];
            // UCloud's and EC2's names for a call that allocates.
            for call in view["calls"].as_array().into_iter().flatten() {
                if ["AllocateSecondaryIp", "AssignPrivateIpAddresses"].contains(&call["action"].as_str().unwrap_or(""))
                {
                    t.allocations += call["calls"].as_u64().unwrap_or(0);
                    t.allocation_ms += call["millis"].as_u64().unwrap_or(0);
                }
            }
            t.probes += view["fabric_probe"]["probes"].as_u64().unwrap_or(0);
            t.probe_ms += view["fabric_probe"]["total_ms"].as_u64().unwrap_or(0);
        }
        t
    }

    /// What happened since `before`, as "N allocation calls, mean X ms; M probes, mean Y ms".
    pub fn since(&self, before: &NodeTimings) -> String {
        let mean = |ms: u64, n: u64| ms.checked_div(n).unwrap_or(0);
        // (Saturating: a vswitchd restarted meanwhile counts from zero again.)
        let (calls, probes) =
            (self.allocations.saturating_sub(before.allocations), self.probes.saturating_sub(before.probes));
        format!(
            "{calls} allocation calls, mean {} ms; {probes} fabric probes, mean {} ms",
            mean(self.allocation_ms.saturating_sub(before.allocation_ms), calls),
            mean(self.probe_ms.saturating_sub(before.probe_ms), probes)
        )
    }
}
