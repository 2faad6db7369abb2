//! One size's figures, as a table and as the JSON the issue names.

use serde_json::json;

#[derive(Debug, Clone, Copy, Default)]
pub struct Latency {
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub samples: usize,
}

/// One cluster size. Rates are etcd's, per second of steady state, for the whole cluster.
#[derive(Debug, Clone, Default)]
pub struct Run {
    pub nodes: usize,
    pub pods_per_node: usize,
    /// Every node reached its pods before the ramp limit (otherwise nothing else was measured).
    pub reached: bool,
    pub ramp_s: f64,
    pub add: Latency,
    pub del: Latency,
    /// ADDs refused during the measured churn.
    pub add_errors: u64,
    pub etcd_read_bytes_per_s: f64,
    pub etcd_write_bytes_per_s: f64,
    pub etcd_requests_per_s: f64,
    pub db_bytes: f64,
    pub rss_bytes_per_node: u64,
    /// From the kill to no record naming the dead node.
    pub reclaim_s: Option<f64>,
    /// The restarted node's first round (register, reconcile, sync, refill).
    pub reconcile_s: Option<f64>,
    /// The restarted node still holds every address it held.
    pub restarted_kept: bool,
}

impl Run {
    fn per_node(&self, total: f64) -> f64 {
        total / self.nodes as f64
    }

    pub fn json(&self) -> serde_json::Value {
        // Nothing past the fill was measured on a size that never filled.
        let reached = self.reached;
        let n = |v: f64| if v.is_finite() && reached { json!((v * 1000.0).round() / 1000.0) } else { json!(null) };
        json!({
            "nodes": self.nodes,
            "pods_per_node": self.pods_per_node,
            "reached": self.reached,
            "ramp_s": (self.ramp_s * 10.0).round() / 10.0,
            "add_p50_ms": n(self.add.p50_ms),
            "add_p99_ms": n(self.add.p99_ms),
            "del_p50_ms": n(self.del.p50_ms),
            "del_p99_ms": n(self.del.p99_ms),
            "adds_measured": self.add.samples,
            "add_errors": self.add_errors,
            "etcd_read_bytes_per_node_per_s": n(self.per_node(self.etcd_read_bytes_per_s)),
            "etcd_write_bytes_per_node_per_s": n(self.per_node(self.etcd_write_bytes_per_s)),
            "etcd_requests_per_node_per_s": n(self.per_node(self.etcd_requests_per_s)),
            "etcd_read_bytes_per_s": n(self.etcd_read_bytes_per_s),
            "etcd_write_bytes_per_s": n(self.etcd_write_bytes_per_s),
            "etcd_requests_per_s": n(self.etcd_requests_per_s),
            "etcd_db_bytes": self.db_bytes,
            "rss_bytes_per_node": self.rss_bytes_per_node,
            "reclaim_s": self.reclaim_s.map_or(json!(null), n),
            "reconcile_s": self.reconcile_s.map_or(json!(null), n),
            "restarted_kept": self.restarted_kept,
        })
    }
}

pub fn json(runs: &[Run]) -> serde_json::Value {
    json!({ "runs": runs.iter().map(Run::json).collect::<Vec<_>>() })
}

/// The runs side by side, one row per size.
pub fn table(runs: &[Run]) -> String {
    let mut out = String::from(
        "nodes  pods  ADD p50/p99 ms   DEL p50/p99 ms   etcd read B/s/node  write B/s/node  req/s/node  \
         etcd total read/write/req per s   db MB   RSS KB/node  reclaim s  reconcile s\n",
    );
    for r in runs {
        if !r.reached {
            out.push_str(&format!(
                "{:>5} {:>5}  not full after {:.0} s: nothing else measured (db {:.1} MB)\n",
                r.nodes,
                r.pods_per_node,
                r.ramp_s,
                r.db_bytes / 1e6
            ));
            continue;
        }
        let opt = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{v:.1}"));
        out.push_str(&format!(
            "{:>5} {:>5}  {:>6.2}/{:<7.2} {:>6.2}/{:<7.2}  {:>18.0} {:>15.0} {:>11.2}  {:>9.2e}/{:.2e}/{:.0}   {:>6.1} {:>12} {:>10} {:>12}\n",
            r.nodes,
            r.pods_per_node,
            r.add.p50_ms,
            r.add.p99_ms,
            r.del.p50_ms,
            r.del.p99_ms,
            r.per_node(r.etcd_read_bytes_per_s),
            r.per_node(r.etcd_write_bytes_per_s),
            r.per_node(r.etcd_requests_per_s),
            r.etcd_read_bytes_per_s,
            r.etcd_write_bytes_per_s,
            r.etcd_requests_per_s,
            r.db_bytes / 1e6,
            r.rss_bytes_per_node / 1024,
            opt(r.reclaim_s),
            opt(r.reconcile_s),
        ));
    }
    out
}
