//! etcd's own counters, read from each member's `/metrics` and summed over the members: what
//! the cluster's clients cost etcd, whichever member they talk to.
//!
//! - read: `etcd_network_client_grpc_sent_bytes_total` (bytes etcd sent to clients);
//! - written: `etcd_network_client_grpc_received_bytes_total` (bytes clients sent to etcd);
//! - requests: `grpc_server_msg_received_total` (every gRPC message clients sent, unary
//!   requests and messages on streams such as lease keep-alives alike);
//! - database: `etcd_mvcc_db_total_size_in_bytes` (the largest member's).

use std::collections::BTreeMap;

use vpc_lab::etcd::EtcdCluster;

/// One reading of the counters, summed over the members.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct EtcdCounters {
    pub read_bytes: f64,
    pub written_bytes: f64,
    pub requests: f64,
    pub db_bytes: f64,
    /// `requests` by gRPC method (Range, Txn, LeaseKeepAlive, Watch, ...).
    pub by_method: BTreeMap<String, f64>,
}

impl EtcdCounters {
    /// Reads every member (a member that does not answer is an error: the figures would be short).
    pub fn read(cluster: &EtcdCluster, members: usize) -> Result<EtcdCounters, String> {
        let mut total = EtcdCounters::default();
        for i in 0..members {
            let text = cluster.metrics(i)?;
            let one = EtcdCounters::parse(&text);
            total.read_bytes += one.read_bytes;
            total.written_bytes += one.written_bytes;
            total.requests += one.requests;
            total.db_bytes = total.db_bytes.max(one.db_bytes);
            for (method, n) in one.by_method {
                *total.by_method.entry(method).or_default() += n;
            }
        }
        Ok(total)
    }

    /// The figures in one member's exposition text.
    pub fn parse(text: &str) -> EtcdCounters {
        EtcdCounters {
            read_bytes: sum(text, "etcd_network_client_grpc_sent_bytes_total"),
            written_bytes: sum(text, "etcd_network_client_grpc_received_bytes_total"),
            requests: sum(text, "grpc_server_msg_received_total"),
            db_bytes: sum(text, "etcd_mvcc_db_total_size_in_bytes"),
            by_method: by_method(text, "grpc_server_msg_received_total"),
        }
    }

    /// What happened between `earlier` and `self` (the database size is `self`'s).
    pub fn since(&self, earlier: &EtcdCounters) -> EtcdCounters {
        EtcdCounters {
            read_bytes: self.read_bytes - earlier.read_bytes,
            written_bytes: self.written_bytes - earlier.written_bytes,
            requests: self.requests - earlier.requests,
            db_bytes: self.db_bytes,
            by_method: self
                .by_method
                .iter()
                .map(|(m, n)| (m.clone(), n - earlier.by_method.get(m).copied().unwrap_or(0.0)))
                .filter(|(_, n)| *n > 0.0)
                .collect(),
        }
    }
}

/// Metric `name` summed by its `grpc_method` label.
fn by_method(text: &str, name: &str) -> BTreeMap<String, f64> {
    let mut out = BTreeMap::new();
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let Some(rest) = line.strip_prefix(name).and_then(|r| r.strip_prefix('{')) else { continue };
        let Some((labels, value)) = rest.rsplit_once('}') else { continue };
        let method = labels.split(',').find_map(|l| l.strip_prefix("grpc_method=\"")?.strip_suffix('"'));
        if let (Some(method), Some(Ok(value))) = (method, value.split_whitespace().next().map(str::parse::<f64>)) {
            *out.entry(method.to_string()).or_default() += value;
        }
    }
    out
}

/// The sum of every series of metric `name` (all label sets).
fn sum(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let rest = l.strip_prefix(name)?;
            let value = match rest.chars().next()? {
                '{' => rest.rsplit_once('}')?.1,
                ' ' => rest,
                _ => return None,
            };
            value.split_whitespace().next()?.parse::<f64>().ok()
        })
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sums_every_series_of_the_named_metric_and_no_other() {
        let text = "# HELP grpc_server_msg_received_total x\n\
            grpc_server_msg_received_total{grpc_method=\"Range\",grpc_service=\"etcdserverpb.KV\",grpc_type=\"unary\"} 10\n\
            grpc_server_msg_received_total{grpc_method=\"Txn\",grpc_service=\"etcdserverpb.KV\",grpc_type=\"unary\"} 5\n\
            grpc_server_msg_received_total_other 99\n\
            etcd_network_client_grpc_sent_bytes_total 1.5e+06\n\
            etcd_network_client_grpc_received_bytes_total 2000\n\
            etcd_mvcc_db_total_size_in_bytes 4.096e+06\n";
        let c = EtcdCounters::parse(text);
        let methods = |m: &[(&str, f64)]| m.iter().map(|(k, v)| (k.to_string(), *v)).collect::<BTreeMap<_, _>>();
        let expected = EtcdCounters {
            read_bytes: 1.5e6,
            written_bytes: 2000.0,
            requests: 15.0,
            db_bytes: 4.096e6,
            by_method: methods(&[("Range", 10.0), ("Txn", 5.0)]),
        };
        assert_eq!(c, expected);
        let later = EtcdCounters {
            read_bytes: 2.5e6,
            written_bytes: 3000.0,
            requests: 20.0,
            db_bytes: 1.0,
            by_method: methods(&[("Range", 12.0), ("Txn", 5.0)]),
        };
        assert_eq!(
            later.since(&c),
            EtcdCounters {
                read_bytes: 1e6,
                written_bytes: 1000.0,
                requests: 5.0,
                db_bytes: 1.0,
                by_method: methods(&[("Range", 2.0)])
            }
        );
    }
}
