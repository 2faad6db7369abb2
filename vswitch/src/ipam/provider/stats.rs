//! What the provider's API calls did: counts and latency by action and result (the metrics),
//! the last errors and the API's health (`vswitchctl ipam`).

use std::collections::{BTreeMap, VecDeque};
use std::sync::Mutex;
use std::time::Duration;

use serde::Serialize;

use super::probe::{ProbeError, ProbeReport, ProbeStats};
use super::ProviderError;

/// How many errors the view keeps.
const LAST_ERRORS: usize = 8;

/// Calls of one action with one result.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct CallCount {
    pub calls: u64,
    pub seconds: f64,
}

#[derive(Debug, Default)]
pub struct ApiStats {
    inner: Mutex<Inner>,
    /// The fabric probes of new addresses (not API calls, but what the API's answer is worth).
    probe: ProbeStats,
}

#[derive(Debug, Default)]
struct Inner {
    calls: BTreeMap<(&'static str, &'static str), CallCount>,
    last_errors: VecDeque<String>,
    healthy: Option<bool>,
}

/// A copy for views and metrics.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ApiReport {
    /// `(action, result)` → count and total latency.
    pub calls: Vec<(String, String, CallCount)>,
    pub last_errors: Vec<String>,
    /// The last call reached the API (none: no call yet).
    pub healthy: Option<bool>,
    pub fabric_probe: ProbeReport,
}

impl ApiStats {
    pub fn record(&self, action: &'static str, took: Duration, result: Result<(), &ProviderError>) {
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let label = result.err().map_or("ok", ProviderError::kind);
        let count = inner.calls.entry((action, label)).or_default();
        count.calls += 1;
        count.seconds += took.as_secs_f64();
        if let Err(e) = result {
            if !matches!(e, ProviderError::AddressGone(_)) {
                inner.last_errors.push_back(format!("{action}: {e}"));
                if inner.last_errors.len() > LAST_ERRORS {
                    inner.last_errors.pop_front();
                }
            }
        }
        inner.healthy = Some(!result.is_err_and(ProviderError::is_transient));
    }

    pub fn record_probe(&self, ip: std::net::IpAddr, took: Duration, result: &Result<(), ProbeError>) {
        self.probe.record(ip, took, result);
    }

    pub fn report(&self) -> ApiReport {
        let inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        ApiReport {
            calls: inner.calls.iter().map(|((a, r), c)| (a.to_string(), r.to_string(), c.clone())).collect(),
            last_errors: inner.last_errors.iter().cloned().collect(),
            healthy: inner.healthy,
            fabric_probe: self.probe.report(),
        }
    }

    /// All calls made so far.
    pub fn total_calls(&self) -> u64 {
        self.inner.lock().unwrap_or_else(|e| e.into_inner()).calls.values().map(|c| c.calls).sum()
    }
}
