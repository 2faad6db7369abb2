//! The provider bench's figures: one row per provider and the etcd mode's, the targets, JSON.

use serde_json::{json, Value};

use super::lab_api::{ApiSlowdown, Provider};

/// One provider's figures: the same keys for every provider (JSON `providers.<name>`).
#[derive(Debug, Clone, Copy, Default)]
pub struct ProviderFigures {
    pub add_p50_ms: f64,
    pub add_p99_ms: f64,
    /// Over the burst's ADDs that allocated their own address, `empty_pool_adds` of them.
    pub add_p99_empty_pool_ms: f64,
    pub empty_pool_adds: usize,
    pub api_calls_per_pod: f64,
    pub first_packet_ms_p50: f64,
    /// An address handed to a pod while another live pod had it.
    pub duplicates: usize,
    /// After every pod is gone and the pools settled: secondary addresses of a node's NICs the
    /// node does not account for.
    pub leaked: usize,
}

impl ProviderFigures {
    fn json(&self) -> Value {
        json!({
            "add_p50_ms": self.add_p50_ms, "add_p99_ms": self.add_p99_ms,
            "add_p99_empty_pool_ms": self.add_p99_empty_pool_ms, "empty_pool_adds": self.empty_pool_adds,
            "api_calls_per_pod": self.api_calls_per_pod, "first_packet_ms_p50": self.first_packet_ms_p50,
            "duplicates": self.duplicates, "leaked": self.leaked,
        })
    }
}

/// The etcd mode's sequential phase, the baseline of every provider's.
#[derive(Debug, Clone, Copy, Default)]
pub struct EtcdFigures {
    pub add_p50_ms: f64,
    pub add_p99_ms: f64,
    pub duplicates: usize,
}

#[derive(Debug)]
pub struct ProviderReport {
    pub nodes: usize,
    pub pods: usize,
    pub slow: ApiSlowdown,
    pub providers: Vec<(Provider, ProviderFigures)>,
    pub etcd: EtcdFigures,
}

/// The targets: warm-pool ADD p99 at most this times etcd's, at most this many API calls per pod.
const P99_RATIO_TARGET: f64 = 1.2;
const CALLS_PER_POD_TARGET: f64 = 1.2;

impl ProviderReport {
    fn duplicates(&self) -> usize {
        self.etcd.duplicates + self.providers.iter().map(|(_, f)| f.duplicates).sum::<usize>()
    }

    fn leaked(&self) -> usize {
        self.providers.iter().map(|(_, f)| f.leaked).sum()
    }

    pub fn json(&self) -> Value {
        let mut providers: serde_json::Map<String, Value> =
            self.providers.iter().map(|(p, f)| (p.name().to_string(), f.json())).collect();
        let etcd = &self.etcd;
        providers.insert(
            "etcd".into(),
            json!({"add_p50_ms": etcd.add_p50_ms, "add_p99_ms": etcd.add_p99_ms, "duplicates": etcd.duplicates}),
        );
        let slow = &self.slow;
        json!({
            "nodes": self.nodes, "pods": self.pods,
            "api": {"latency_ms": slow.latency_ms, "ucloud_rate_per_sec": slow.rate_per_sec, "aws_throttle": slow.throttle},
            "providers": providers, "duplicates": self.duplicates(), "leaked": self.leaked(),
        })
    }

    /// Each target, said, and whether it was met.
    pub fn targets(&self) -> Vec<(String, bool)> {
        let mut out = Vec::new();
        for (provider, f) in &self.providers {
            let name = provider.name();
            let ratio = f.add_p99_ms / self.etcd.add_p99_ms;
            out.push((
                format!("{name}: warm-pool ADD p99 {ratio:.2}x etcd's (at most {P99_RATIO_TARGET}x)"),
                ratio <= P99_RATIO_TARGET,
            ));
            out.push((
                format!("{name}: {:.2} VPC API calls per pod (at most {CALLS_PER_POD_TARGET})", f.api_calls_per_pod),
                f.api_calls_per_pod <= CALLS_PER_POD_TARGET,
            ));
            out.push((format!("{name}: {} duplicates (0)", f.duplicates), f.duplicates == 0));
            out.push((format!("{name}: {} leaked addresses (0)", f.leaked), f.leaked == 0));
        }
        out.push((format!("etcd: {} duplicates (0)", self.etcd.duplicates), self.etcd.duplicates == 0));
        out
    }

    pub fn table(&self) -> String {
        let apis: Vec<String> = self.providers.iter().map(|(p, _)| p.describe(&self.slow)).collect();
        let mut out = format!(
            "IPAM by provider: {} pods on {} nodes; the lab VPC API's latency and limit: {} (ms)\n",
            self.pods,
            self.nodes,
            apis.join("; ")
        );
        out += &format!(
            "{:<8} {:>8} {:>8} {:>18} {:>14} {:>17} {:>11} {:>7}\n",
            "mode",
            "ADD p50",
            "ADD p99",
            "ADD p99 empty (n)",
            "API calls/pod",
            "first packet p50",
            "duplicates",
            "leaked"
        );
        for (provider, f) in &self.providers {
            out += &format!(
                "{:<8} {:>8.1} {:>8.1} {:>18} {:>14.2} {:>17.1} {:>11} {:>7}\n",
                provider.name(),
                f.add_p50_ms,
                f.add_p99_ms,
                format!("{:.1} ({})", f.add_p99_empty_pool_ms, f.empty_pool_adds),
                f.api_calls_per_pod,
                f.first_packet_ms_p50,
                f.duplicates,
                f.leaked
            );
        }
        let etcd = &self.etcd;
        out += &format!(
            "{:<8} {:>8.1} {:>8.1} {:>18} {:>14} {:>17} {:>11} {:>7}\n",
            "etcd", etcd.add_p50_ms, etcd.add_p99_ms, "-", "-", "-", etcd.duplicates, "-"
        );
        for (target, met) in self.targets() {
            out += &format!("{}: {target}\n", if met { "met    " } else { "NOT MET" });
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(providers: Vec<(Provider, ProviderFigures)>) -> ProviderReport {
        ProviderReport {
            nodes: 3,
            pods: 10,
            slow: ApiSlowdown { latency_ms: 50, rate_per_sec: 20.0, throttle: 0.05 },
            providers,
            etcd: EtcdFigures { add_p50_ms: 9.0, add_p99_ms: 10.0, duplicates: 0 },
        }
    }

    #[test]
    fn every_provider_has_the_same_keys_and_its_own_targets() {
        let good = ProviderFigures { add_p99_ms: 11.0, api_calls_per_pod: 0.5, ..Default::default() };
        let slow = ProviderFigures { add_p99_ms: 13.0, api_calls_per_pod: 0.5, leaked: 2, ..Default::default() };
        // Two rows of one provider stand in for two providers: the keys come from one code path.
        let r = report(vec![(Provider::Ucloud, good), (Provider::Ucloud, slow)]);
        let json = r.json();
        let keys = |v: &Value| v.as_object().unwrap().keys().cloned().collect::<Vec<_>>();
        assert_eq!(keys(&json["providers"]["ucloud"]), keys(&good.json()));
        assert_eq!(json["leaked"], 2);
        let unmet: Vec<String> = r.targets().into_iter().filter(|(_, met)| !met).map(|(t, _)| t).collect();
        assert_eq!(unmet, ["ucloud: warm-pool ADD p99 1.30x etcd's (at most 1.2x)", "ucloud: 2 leaked addresses (0)"]);
        assert_eq!(r.table().lines().filter(|l| l.starts_with("ucloud ")).count(), 2, "{}", r.table());
    }
}
