//! Dual stack: pods on three nodes race for an IPv4 and an IPv6 address each.

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::Duration;

use vswitch::ipam::record::AddressRecord;
use vswitch_api::api::AddressView;

use crate::lab::{client, one_at_a_time, owner, spec, Lab};

#[test]
fn dual_stack_pods_racing_on_three_nodes_get_one_address_per_family_and_never_share_one() {
    let _serial = one_at_a_time();
    // 30 IPv4 addresses and a /64, probed rather than listed.
    let lab =
        Lab::with_pools(3, &["10.98.0.0/27", "fd98::/64"], "warm_target = 2\nwarm_max = 4\nreuse_delay_seconds = 3");
    const PODS_PER_NODE: usize = 8;
    let replies: Vec<(String, usize, AddressView)> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..lab.nodes.len())
            .flat_map(|n| (0..PODS_PER_NODE).map(move |i| (n, format!("d{n}-{i}"))))
            .map(|(n, id)| {
                let socket = lab.nodes[n].daemon.socket.clone();
                s.spawn(move || {
                    let reply = client(&socket).ipam_assign(spec(&id)).unwrap_or_else(|e| panic!("{id} on n{n}: {e}"));
                    (id, n, reply)
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let mut seen: HashMap<IpAddr, String> = HashMap::new();
    for (id, _, reply) in &replies {
        assert!(reply.new, "{id}: {reply:?}");
        let [v4, v6] = reply.ips[..] else { panic!("{id} got {:?}, not one address per family", reply.ips) };
        assert!(v4.is_ipv4() && v6.is_ipv6() && lab.pool.contains(v4) && lab.pool.contains(v6), "{id}: {v4} {v6}");
        for ip in [v4, v6] {
            if let Some(other) = seen.insert(ip, id.clone()) {
                panic!("{ip} given to both {other} and {id}");
            }
        }
    }
    // Asked again: the same two. And etcd says the same, with both families' keys.
    for (id, n, reply) in &replies {
        let again = lab.nodes[*n].client().ipam_assign(spec(id)).unwrap();
        assert_eq!((&again.ips, again.new), (&reply.ips, false), "{id}");
    }
    lab.wait_synced(Duration::from_secs(20));
    let records = lab.records();
    for (id, n, reply) in &replies {
        for ip in &reply.ips {
            assert!(
                matches!(&records[ip], AddressRecord::Assigned { node, owner, .. }
                    if *node == format!("n{n}") && owner.container_id == *id),
                "{ip} of {id}: {:?}",
                records.get(ip)
            );
        }
    }
    // The view and the metrics count both families.
    let ctl = lab.nodes[0].ctl_ipam();
    assert!(ctl["this_node"]["warm"].as_u64().unwrap() >= 2, "{ctl}");
    let metrics = lab.nodes[0].metrics();
    assert!(metrics.contains("vswitch_ipam_pool_addresses{family=\"ipv6\"}"), "{metrics}");
    assert!(metrics.contains("vswitch_ipam_node_addresses{family=\"ipv4\",state=\"assigned\"} 8"), "{metrics}");
    // Released: both addresses of every pod cool down.
    for (id, n, reply) in &replies {
        let released = lab.nodes[*n].client().ipam_release(&owner(id)).unwrap().released;
        assert_eq!(released, reply.ips, "{id}");
    }
    lab.wait_synced(Duration::from_secs(20));
    let records = lab.records();
    for ip in seen.keys() {
        assert!(matches!(records.get(ip), Some(AddressRecord::Cooling { .. })), "{ip}: {:?}", records.get(ip));
    }
}
