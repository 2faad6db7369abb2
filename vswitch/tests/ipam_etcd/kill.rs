//! `kill -9` in the middle of allocations: nothing lost and nothing duplicated across restarts.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::IpAddr;
use std::time::Duration;

use rand::Rng;

use vswitch::ipam::record::AddressRecord;
use vswitch_api::api::ErrorCode;

use crate::lab::{client, cut_off, one_at_a_time, owner, spec, wait_for, warm_is_full, Lab, FENCING_MESSAGE};

#[test]
fn a_node_killed_mid_allocation_loses_and_duplicates_nothing() {
    let _turn = one_at_a_time();
    const ROUNDS: usize = 20;
    let mut lab = Lab::new(1, "warm_target = 2\nwarm_max = 4\nreuse_delay_seconds = 3");
    let socket = lab.nodes[0].daemon.socket.clone();
    let mut rng = rand::thread_rng();
    // Owner -> what the test knows: Some(ip) held, None: unknown (its request was cut off).
    let mut held: BTreeMap<String, Option<IpAddr>> = BTreeMap::new();
    let (mut replied, mut add_cut, mut released_n, mut release_cut) = (0, 0, 0, 0);
    // Cut-off requests that turned out to have been done before the kill.
    let (mut add_done, mut release_done) = (0, 0);
    let mut seq = 0;
    for round in 0..ROUNDS {
        // A few new ADDs and some DELs at once, and the daemon killed 0-20 ms later.
        let adds: Vec<String> = (0..rng.gen_range(1..=3))
            .map(|_| {
                seq += 1;
                format!("k{seq}")
            })
            .collect();
        let dels: Vec<String> =
            held.iter().filter(|(_, ip)| ip.is_some()).map(|(o, _)| o.clone()).filter(|_| rng.gen_bool(0.5)).collect();
        let kill_after = Duration::from_millis(rng.gen_range(0..=20));
        let (add_results, del_results) = std::thread::scope(|s| {
            let adds: Vec<_> = adds
                .iter()
                .map(|o| {
                    let socket = &socket;
                    s.spawn(move || (o.clone(), client(socket).ipam_assign(spec(o))))
                })
                .collect();
            let dels: Vec<_> = dels
                .iter()
                .map(|o| {
                    let socket = &socket;
                    s.spawn(move || (o.clone(), client(socket).ipam_release(&owner(o))))
                })
                .collect();
            std::thread::sleep(kill_after);
            lab.nodes[0].daemon.kill9();
            let adds: Vec<_> = adds.into_iter().map(|h| h.join().unwrap()).collect();
            let dels: Vec<_> = dels.into_iter().map(|h| h.join().unwrap()).collect();
            (adds, dels)
        });
        for (o, result) in add_results {
            match result {
                Ok(v) => {
                    assert!(v.new, "{o}: {v:?}");
                    replied += 1;
                    held.insert(o, Some(v.ips[0]));
                }
                Err(e) if cut_off(&e) => {
                    add_cut += 1;
                    held.insert(o, None);
                }
                Err(e) if e.code() == Some(ErrorCode::Exhausted) || e.code() == Some(ErrorCode::Unavailable) => {}
                Err(e) => panic!("round {round}: assign {o}: {e}"),
            }
        }
        // Owners whose DEL was cut off: it may or may not have happened.
        let mut maybe_released: HashSet<String> = HashSet::new();
        for (o, result) in del_results {
            match result {
                Ok(r) => {
                    assert_eq!(r.released, [held[&o].unwrap()], "{o}");
                    released_n += 1;
                    held.remove(&o);
                }
                Err(e) if cut_off(&e) => {
                    release_cut += 1;
                    maybe_released.insert(o);
                }
                Err(e) => panic!("round {round}: release {o}: {e}"),
            }
        }
        // Asked at once: the restarted node answers only after its first round with the store,
        // where it adopts the claims the kill cut off before they reached its file.
        lab.nodes[0].start();

        // After the restart, each owner's address is what the test was told, or (reply lost)
        // whatever the node says now; a DEL whose reply was lost may or may not have happened.
        let c = client(&socket);
        let mut seen: HashMap<IpAddr, String> = HashMap::new();
        for (o, known) in held.iter_mut() {
            let now = match c.ipam_lookup(&owner(o)) {
                Ok(v) => Some(v.ips[0]),
                Err(e) if e.code() == Some(ErrorCode::NotFound) => None,
                Err(e) => panic!("lookup {o}: {e}"),
            };
            match (*known, now) {
                (Some(ip), Some(now)) => assert_eq!(ip, now, "round {round}: {o} had {ip}"),
                // A DEL cut off by the kill went through.
                (Some(_), None) if maybe_released.contains(o) => {
                    release_done += 1;
                    *known = None
                }
                (Some(ip), None) => panic!("round {round}: {o} had {ip}, released nothing, and the node forgot it"),
                (None, now) => {
                    add_done += usize::from(now.is_some());
                    *known = now
                }
            }
            if let Some(ip) = now {
                if let Some(other) = seen.insert(ip, o.clone()) {
                    panic!("round {round}: {ip} is held by {o} and {other}");
                }
            }
        }
        held.retain(|_, ip| ip.is_some());
    }
    eprintln!(
        "{ROUNDS} kills: {replied} ADDs answered, {add_cut} cut off ({add_done} of them done before the kill); \
         {released_n} DELs answered, {release_cut} cut off ({release_done} done); {} owners hold addresses now",
        held.len()
    );

    // etcd agrees with the node: every address it says the node has is in its warm pool or held
    // by an owner the test knows, with the same address.
    lab.wait_synced(Duration::from_secs(15));
    let node = &lab.nodes[0];
    wait_for(Duration::from_secs(10), "the warm pool is full", || warm_is_full(&node.view()));
    let c = node.client();
    let records = lab.records();
    let mut warm = 0;
    for (ip, record) in &records {
        match record {
            AddressRecord::Warm { node, .. } => {
                assert_eq!(node, "n0");
                warm += 1;
            }
            AddressRecord::Assigned { owner: o, node, .. } => {
                assert_eq!(node, "n0");
                assert_eq!(
                    held.get(&o.container_id),
                    Some(&Some(*ip)),
                    "{ip} is {o:?}'s in etcd; the test knows {held:?}"
                );
            }
            AddressRecord::Cooling { .. } => {}
            other => panic!("{ip}: {other:?}"),
        }
    }
    assert_eq!(warm as u64, node.view().this_node.warm, "etcd's warm pool of n0 is the node's: {records:?}");
    for (o, ip) in &held {
        assert!(
            matches!(records.get(&ip.unwrap()), Some(AddressRecord::Assigned { owner: r, .. }) if r.container_id == *o),
            "{o} holds {ip:?} but etcd says {:?}",
            records.get(&ip.unwrap())
        );
        // Asking again gives the same address.
        let again = c.ipam_assign(spec(o)).unwrap();
        assert_eq!((again.ips.first().copied(), again.new), (*ip, false), "{o}");
    }
    let audit = lab.audit();
    eprintln!("etcd after {ROUNDS} kills: {audit}");
    assert!(audit.lost.is_empty(), "{:#?}", audit.lost);
    assert_eq!(audit.assigned.len(), held.len());
    let logs = node.logs();
    assert!(!logs.contains("this node's lease expired"), "restarts are quick: the lease must survive them");
    let fenced: Vec<&str> = logs.lines().filter(|l| l.contains(FENCING_MESSAGE)).collect();
    assert!(fenced.is_empty(), "one node alone, so nothing may be fenced:\n{}", fenced.join("\n"));

    // Everything released: nothing stays assigned, nothing is lost.
    for o in held.keys() {
        c.ipam_release(&owner(o)).unwrap();
    }
    lab.wait_synced(Duration::from_secs(10));
    let audit = lab.audit();
    eprintln!("etcd after releasing everything: {audit}");
    assert!(audit.assigned.is_empty() && audit.lost.is_empty(), "{audit:?}");
}
