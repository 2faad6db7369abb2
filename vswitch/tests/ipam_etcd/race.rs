//! Three nodes racing on 32 addresses while vswitchd is killed and etcd members are stopped or
//! killed: nothing handed out twice, nothing lost.

mod clients;

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use rand::Rng;

use crate::lab::{client, one_at_a_time, wait_for, warm_is_full, Lab, Node, FENCING_MESSAGE, POOL_SIZE};
use crate::race::clients::{Client1, Counts, Model, Slot, CHAOS_REUSE};

#[derive(Debug, Default)]
struct Chaos {
    node_kills: u64,
    etcd_stops: u64,
    etcd_kills: u64,
    etcd_restarts: u64,
    slowest_etcd_recovery: Duration,
}

#[test]
fn three_nodes_racing_on_32_addresses_never_duplicate_or_lose() {
    let _turn = one_at_a_time();
    const THREADS_PER_NODE: usize = 2;
    const SLOTS_PER_THREAD: usize = 3;
    const TARGET_OPS: u64 = 3000;
    const MIN_RUN: Duration = Duration::from_secs(30);
    const MAX_RUN: Duration = Duration::from_secs(150);

    let mut lab = Lab::new(3, &format!("warm_target = 4\nwarm_max = 6\nreuse_delay_seconds = {CHAOS_REUSE}"));
    let sockets: Vec<PathBuf> = lab.nodes.iter().map(|n| n.daemon.socket.clone()).collect();
    let model = Mutex::new(Model::default());
    let counts = Counts::default();
    let stop = AtomicBool::new(false);
    let started = Instant::now();
    let Lab { nodes, etcd, .. } = &mut lab;

    let chaos = std::thread::scope(|s| {
        for (node, socket) in sockets.iter().enumerate() {
            for t in 0..THREADS_PER_NODE {
                let (model, counts, stop) = (&model, &counts, &stop);
                s.spawn(move || {
                    let c = Client1 { node, client: client(socket), model, counts };
                    let mut rng = rand::thread_rng();
                    let mut slots: Vec<Slot> = (0..SLOTS_PER_THREAD).map(|_| Slot::Idle).collect();
                    let mut seq = 0;
                    let mut next_owner = || {
                        seq += 1;
                        format!("n{node}-t{t}-{seq}")
                    };
                    while !stop.load(Ordering::Relaxed) {
                        let i = rng.gen_range(0..slots.len());
                        let slot = std::mem::replace(&mut slots[i], Slot::Idle);
                        let waiting = !matches!(slot, Slot::Idle | Slot::Holding(..));
                        slots[i] = c.step(slot, &mut next_owner, &mut rng);
                        let still_waiting = matches!(slots[i], Slot::Unsure(_) | Slot::Releasing(..));
                        if still_waiting || waiting {
                            std::thread::sleep(Duration::from_millis(50));
                        } else {
                            std::thread::sleep(Duration::from_millis(rng.gen_range(0..15)));
                        }
                    }
                    // Wind down: every slot ends idle (lost replies answered, everything released).
                    let deadline = Instant::now() + Duration::from_secs(60);
                    while let Some(i) = slots.iter().position(|s| !matches!(s, Slot::Idle)) {
                        assert!(Instant::now() < deadline, "n{node}: could not release {:?}", slots[i]);
                        let slot = std::mem::replace(&mut slots[i], Slot::Idle);
                        // Always release (never the repeated assign) when winding down.
                        let slot = match slot {
                            Slot::Holding(owner, ip) => {
                                let sent = Instant::now();
                                model.lock().unwrap().release_sent(&owner, ip, sent);
                                c.release(owner, ip, sent, false)
                            }
                            other => c.step(other, || unreachable!("no new owners"), &mut rng),
                        };
                        if !matches!(slot, Slot::Idle) {
                            std::thread::sleep(Duration::from_millis(100));
                        }
                        slots[i] = slot;
                    }
                });
            }
        }

        let chaos = s.spawn(|| {
            let mut rng = rand::thread_rng();
            let mut chaos = Chaos::default();
            let mut down: Option<usize> = None;
            while !stop.load(Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(rng.gen_range(600..1400)));
                if rng.gen_bool(0.5) {
                    let i = rng.gen_range(0..nodes.len());
                    nodes[i].daemon.kill9();
                    std::thread::sleep(Duration::from_millis(rng.gen_range(0..300)));
                    nodes[i].start();
                    chaos.node_kills += 1;
                } else if let Some(m) = down.take() {
                    let t = Instant::now();
                    etcd.start_member(m);
                    etcd.wait_healthy(Duration::from_secs(30)).expect("etcd healthy after a member restart");
                    chaos.slowest_etcd_recovery = chaos.slowest_etcd_recovery.max(t.elapsed());
                    chaos.etcd_restarts += 1;
                } else {
                    let m = rng.gen_range(0..3);
                    if rng.gen_bool(0.5) {
                        etcd.stop_member(m);
                        chaos.etcd_stops += 1;
                    } else {
                        etcd.kill_member(m);
                        chaos.etcd_kills += 1;
                    }
                    down = Some(m);
                }
            }
            if let Some(m) = down {
                etcd.start_member(m);
                etcd.wait_healthy(Duration::from_secs(30)).expect("etcd healthy after a member restart");
                chaos.etcd_restarts += 1;
            }
            chaos
        });

        loop {
            std::thread::sleep(Duration::from_millis(200));
            let elapsed = started.elapsed();
            if (counts.ops() >= TARGET_OPS && elapsed >= MIN_RUN) || elapsed >= MAX_RUN || chaos.is_finished() {
                break;
            }
        }
        stop.store(true, Ordering::Relaxed);
        chaos.join()
    });
    let chaos = chaos.unwrap_or_else(|e| std::panic::resume_unwind(e));
    let run = started.elapsed();

    // Everything was released; now every node writes it to etcd.
    let synced = Instant::now();
    lab.wait_synced(Duration::from_secs(30));
    let synced = synced.elapsed();
    let model = model.into_inner().unwrap();
    let c = |a: &AtomicU64| a.load(Ordering::Relaxed);
    eprintln!(
        "{:.1}s of chaos: {} operations ({} assigned, {} released, {} repeated assigns answered the same); \
         refused: {} unavailable, {} exhausted; {} requests unanswered (daemon killed), {} resent",
        run.as_secs_f64(),
        counts.ops(),
        c(&counts.assigned),
        c(&counts.released),
        c(&counts.repeat_assign),
        c(&counts.unavailable),
        c(&counts.exhausted),
        c(&counts.unreachable),
        c(&counts.retried),
    );
    eprintln!(
        "chaos: {} vswitchd kill -9 + restart, etcd members {} stopped + {} killed, {} restarted (slowest back to \
         healthy: {:.1}s); synced {:.1}s after the last release",
        chaos.node_kills,
        chaos.etcd_stops,
        chaos.etcd_kills,
        chaos.etcd_restarts,
        chaos.slowest_etcd_recovery.as_secs_f64(),
        synced.as_secs_f64()
    );
    eprintln!(
        "model: {} duplicates, {} anomalies, {} reassignments while an old release reply was outstanding (fine)",
        model.duplicates.len(),
        model.anomalies.len(),
        model.late_reuse_ok
    );
    let logs: Vec<String> = lab.nodes.iter().map(Node::logs).collect();
    let count = |needle: &str| logs.iter().map(|l| l.matches(needle).count()).sum::<usize>();
    eprintln!(
        "daemon logs: {} addresses adopted from the store after a crash, {} after a lost reply, {} fenced, \
         {} reclaims, {} lease expiries",
        count("adopted an address the store gives this node"),
        count("a write whose reply was lost went through"),
        count(FENCING_MESSAGE),
        count("reclaimed the addresses of a node"),
        count("this node's lease expired"),
    );

    assert!(model.duplicates.is_empty(), "duplicates: {:#?}", model.duplicates);
    assert!(model.anomalies.is_empty(), "anomalies: {:#?}", model.anomalies);
    assert!(model.held.is_empty() && model.suspects.is_empty(), "left over: {:?} {:?}", model.held, model.suspects);
    assert!(counts.ops() >= TARGET_OPS, "only {} operations in {run:?}", counts.ops());
    assert!(chaos.node_kills >= 5 && chaos.etcd_restarts >= 5, "too little chaos: {chaos:?}");
    assert_eq!(count(FENCING_MESSAGE), 0, "no node was cut off for long, so none may be fenced");

    // etcd's own view: nothing assigned, nothing outside the pool, nothing lost, and each node's
    // warm pool in etcd is exactly the one it knows (no address claimed and forgotten).
    // Once the released addresses have cooled down, every node refills its warm pool; then
    // etcd's warm pool of each node must be exactly the one the node knows.
    wait_for(Duration::from_secs(20), "every node's warm pool is full again", || {
        lab.nodes.iter().all(|n| warm_is_full(&n.view()))
    });
    let deadline = Instant::now() + Duration::from_secs(10);
    let audit = loop {
        let audit = lab.audit();
        let local_warm: Vec<(String, u64)> =
            lab.nodes.iter().map(|n| (n.name.clone(), n.view().this_node.warm)).collect();
        if local_warm.iter().all(|(n, warm)| audit.warm.get(n).copied().unwrap_or(0) as u64 == *warm) {
            break audit;
        }
        if Instant::now() >= deadline {
            let records = lab.records();
            let mut history = String::new();
            for (ip, r) in records.iter().filter(|(_, r)| r.state_name() == "warm") {
                history.push_str(&format!("--- {ip}: {r:?}\n"));
                for node in &lab.nodes {
                    let logs = node.logs();
                    for line in logs.lines().filter(|l| l.contains(&format!("ip={ip} "))) {
                        history.push_str(&format!("{}: {line}\n", node.name));
                    }
                }
            }
            panic!("etcd's warm pools are not the nodes': etcd {audit}; the nodes {local_warm:?}\n{history}");
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    eprintln!("etcd after the run: {audit}");
    if !audit.assigned.is_empty() {
        let mut history = String::new();
        for (ip, _, owner) in &audit.assigned {
            for node in &lab.nodes {
                for line in node.logs().lines().filter(|l| l.contains(&ip.to_string()) || l.contains(owner.as_str())) {
                    history.push_str(&format!("{}: {line}\n", node.name));
                }
            }
        }
        panic!("still assigned after releasing everything: {:?}\n{history}", audit.assigned);
    }
    assert!(audit.lost.is_empty(), "lost addresses: {:#?}", audit.lost);
    assert_eq!(audit.free + audit.cooling + audit.warm.values().sum::<usize>(), POOL_SIZE);
    assert_eq!(audit.warm.values().sum::<usize>(), 3 * 4, "every node has its 4 warm addresses: {audit}");
    let downs = lab.etcd.get_prefix(&lab.keys.downs());
    assert!(downs.is_empty(), "down marks left: {downs:?}");
}
