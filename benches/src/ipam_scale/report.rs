//! One size's figures, as a table and as the JSON the issue names.

use serde_json::json;

/// How long until no record named a killed node.
#[derive(Debug, Clone, Copy, Default)]
pub struct Reclaim {
    pub from_kill_s: f64,
    /// From its lease key's disappearance (the lease expired): what the target is about.
    pub after_expiry_s: f64,
}

/// Reclaim is done within the quarantine and this much more after the lease expires.
pub const RECLAIM_SLACK_S: f64 = 5.0;
/// At the largest size against the smallest of the invocation.
pub const READ_GROWTH_TARGET: f64 = 1.2;
pub const ADD_P99_GROWTH_TARGET: f64 = 1.5;

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
    /// The same ADDs timed around the agent: the wait for its shard's runtime included.
    pub add_around: Latency,
    pub del: Latency,
    /// ADDs refused during the measured churn.
    pub add_errors: u64,
    pub etcd_read_bytes_per_s: f64,
    pub etcd_write_bytes_per_s: f64,
    pub etcd_requests_per_s: f64,
    pub etcd_requests_by_method_per_s: std::collections::BTreeMap<String, f64>,
    pub db_bytes: f64,
    pub rss_bytes_per_node: u64,
    /// A node that did not lead killed: until no record names it.
    pub reclaim: Option<Reclaim>,
    /// Then the leader killed: the same, a handover included.
    pub leader_reclaim: Option<Reclaim>,
    /// The 1-minute load average as the measured window began and ended.
    pub load_average: (f64, f64),
    /// CPU seconds per second the simulation process (every agent, the churn) used meanwhile.
    pub agents_cpu: f64,
    /// How late an agents' runtime woke a 1 ms sleep (the floor under ADD's latency here).
    pub wake_lateness: Latency,
    /// The quarantine the run used (the reclaim target is this + 5 s after the lease expires).
    pub quarantine_s: u64,
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
            "etcd_requests_per_node_per_s_by_method": self
                .etcd_requests_by_method_per_s
                .iter()
                .map(|(m, v)| (m.clone(), n(self.per_node(*v))))
                .collect::<serde_json::Map<_, _>>(),
            "etcd_db_bytes": self.db_bytes,
            "rss_bytes_per_node": self.rss_bytes_per_node,
            "reclaim_s": self.reclaim.map_or(json!(null), |r| n(r.from_kill_s)),
            "reclaim_after_expiry_s": self.reclaim.map_or(json!(null), |r| n(r.after_expiry_s)),
            "leader_reclaim_s": self.leader_reclaim.map_or(json!(null), |r| n(r.from_kill_s)),
            "leader_reclaim_after_expiry_s": self.leader_reclaim.map_or(json!(null), |r| n(r.after_expiry_s)),
            "reconcile_s": self.reconcile_s.map_or(json!(null), n),
            "restarted_kept": self.restarted_kept,
            "load_average_before": self.load_average.0,
            "load_average_after": self.load_average.1,
            "agents_cpu_per_s": n(self.agents_cpu),
            "agents_cpu_us_per_node_per_s": n(self.agents_cpu * 1e6 / self.nodes as f64),
            "add_samples": self.add.samples,
            "add_around_p50_ms": n(self.add_around.p50_ms),
            "add_around_p99_ms": n(self.add_around.p99_ms),
            "wake_lateness_p50_ms": n(self.wake_lateness.p50_ms),
            "wake_lateness_p99_ms": n(self.wake_lateness.p99_ms),
        })
    }
}

pub fn json(runs: &[Run]) -> serde_json::Value {
    let targets: Vec<_> =
        targets(runs).into_iter().map(|t| json!({ "target": t.what, "measured": t.measured, "met": t.met })).collect();
    json!({ "runs": runs.iter().map(Run::json).collect::<Vec<_>>(), "targets": targets })
}

/// One of the targets, judged on this invocation's runs.
#[derive(Debug, Clone, PartialEq)]
pub struct Target {
    pub what: String,
    pub measured: String,
    pub met: bool,
}

/// The targets: the largest size that filled against the smallest (bytes read per node,
/// ADD p99), and the reclaim after lease expiry at every size, both kills. A size that did not
/// fill, or a reclaim that never finished, is a target not met.
pub fn targets(runs: &[Run]) -> Vec<Target> {
    let mut out = Vec::new();
    let filled: Vec<&Run> = runs.iter().filter(|r| r.reached).collect();
    if let (Some(small), Some(large)) = (filled.iter().min_by_key(|r| r.nodes), runs.iter().max_by_key(|r| r.nodes)) {
        if large.nodes > small.nodes {
            let (s, l) = (small.nodes, large.nodes);
            let mut growth = |what: &str, of: fn(&Run) -> f64, limit: f64, unit: &str| {
                let (a, b) = (of(small), of(large));
                let measured = if large.reached {
                    format!("{b:.1} {unit} at {l} vs {a:.1} at {s}: x{:.2}", b / a)
                } else {
                    format!("{l} nodes never filled")
                };
                let met = large.reached && b <= limit * a;
                out.push(Target { what: format!("{what} at {l} nodes <= {limit}x at {s}"), measured, met });
            };
            growth(
                "etcd bytes read per node per s",
                |r| r.per_node(r.etcd_read_bytes_per_s),
                READ_GROWTH_TARGET,
                "B/s",
            );
            growth("ADD p99", |r| r.add.p99_ms, ADD_P99_GROWTH_TARGET, "ms");
        }
    }
    for r in runs {
        let limit = r.quarantine_s as f64 + RECLAIM_SLACK_S;
        for (who, reclaim) in [("a node", r.reclaim), ("the leader", r.leader_reclaim)] {
            let measured = match (r.reached, reclaim) {
                (false, _) => "never filled".to_string(),
                (true, None) => "not reclaimed".to_string(),
                (true, Some(c)) => {
                    format!("{:.1} s after expiry ({:.1} s after the kill)", c.after_expiry_s, c.from_kill_s)
                }
            };
            let met = r.reached && reclaim.is_some_and(|c| c.after_expiry_s <= limit);
            out.push(Target {
                what: format!("{} nodes: {who}'s addresses reclaimed <= quarantine + {RECLAIM_SLACK_S} s = {limit} s after its lease expired", r.nodes),
                measured,
                met,
            });
        }
    }
    out
}

/// The runs side by side, one row per size.
pub fn table(runs: &[Run]) -> String {
    let mut out = String::from(
        "nodes  pods  ADD p50/p99 ms   DEL p50/p99 ms   etcd read B/s/node  write B/s/node  req/s/node  \
         etcd total read/write/req per s   db MB   RSS KB/node  reclaim s: node / leader, after expiry (after kill)  reconcile s\n",
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
        let reclaim = |c: Option<Reclaim>| {
            c.map_or("-".to_string(), |c| format!("{:.1} ({:.1})", c.after_expiry_s, c.from_kill_s))
        };
        let reclaims = format!("{} / {}", reclaim(r.reclaim), reclaim(r.leader_reclaim));
        out.push_str(&format!(
            "{:>5} {:>5}  {:>6.2}/{:<7.2} {:>6.2}/{:<7.2}  {:>18.0} {:>15.0} {:>11.2}  {:>9.2e}/{:.2e}/{:.0}   {:>6.1} {:>12}   {:<44} {:>10}\n",
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
            reclaims,
            opt(r.reconcile_s),
        ));
    }
    out.push_str("\nthe machine during each measured window:\n");
    for r in runs.iter().filter(|r| r.reached) {
        out.push_str(&format!(
            "  {:>5} nodes: load average {:.1} -> {:.1}; the agents' process {:.2} CPU s/s ({:.0} us per node per s); \
             a 1 ms sleep on an agents' runtime woke late by p50 {:.2} / p99 {:.2} ms; \
             ADD p50/p99 {:.2} / {:.2} ms in the agent, {:.2} / {:.2} ms around it ({} ADDs)\n",
            r.nodes,
            r.load_average.0,
            r.load_average.1,
            r.agents_cpu,
            r.agents_cpu * 1e6 / r.nodes as f64,
            r.wake_lateness.p50_ms,
            r.wake_lateness.p99_ms,
            r.add.p50_ms,
            r.add.p99_ms,
            r.add_around.p50_ms,
            r.add_around.p99_ms,
            r.add.samples,
        ));
    }
    out.push_str("\ntargets:\n");
    for t in targets(runs) {
        out.push_str(&format!("  {}: {} ({})\n", t.what, if t.met { "met" } else { "not met" }, t.measured));
    }
    out
}
