//! The node IPAM against state files in temporary directories: one address per family, all or
//! nothing, the reuse delay, specific addresses, usage, concurrent allocations.

use super::*;

fn fresh(delay: u64) -> (Ipam, PathBuf) {
    with_ranges(delay, &[("10.0.0.1", "10.0.0.3")])
}

fn with_ranges(delay: u64, ranges: &[(&str, &str)]) -> (Ipam, PathBuf) {
    static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let dir = std::env::temp_dir().join(format!(
        "vpc-ipam-{}-{}",
        std::process::id(),
        N.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    ));
    let ranges = ranges
        .iter()
        .map(|(start, end)| RangeConf { range_start: start.parse().unwrap(), range_end: end.parse().unwrap() })
        .collect();
    (Ipam::new(&dir, ranges, Duration::from_secs(delay)), dir)
}

/// A /64 less its first address: 2^64 - 1 addresses, far too many to enumerate.
const SLASH_64: (&str, &str) = ("fd00:10::1", "fd00:10::ffff:ffff:ffff:ffff");

fn ips(text: &str) -> PodIps {
    PodIps::parse_list(text.split(',')).unwrap()
}

#[test]
fn a_dual_stack_network_gives_one_address_per_family_from_a_slash_64_without_enumerating_it() {
    let (ipam, dir) = with_ranges(0, &[SLASH_64, ("10.0.0.1", "10.0.0.3")]);
    let a = ipam.allocate(&owner("a")).unwrap();
    assert_eq!(a, ips("10.0.0.1,fd00:10::1"));
    assert_eq!(ipam.allocate(&owner("a")).unwrap(), a, "repeated ADD gets the same addresses");
    assert_eq!(ipam.lookup(&owner("a")).unwrap(), a);
    assert_eq!(ipam.allocate(&owner("b")).unwrap(), ips("10.0.0.2,fd00:10::2"));
    assert_eq!(ipam.release(&owner("a")).unwrap(), a);
    // Round-robin per family: the next one follows the last handed out, not the released one.
    assert_eq!(ipam.allocate(&owner("c")).unwrap(), ips("10.0.0.3,fd00:10::3"));
    assert_eq!(ipam.allocations_with_sandbox().unwrap().len(), 2, "grouped by attachment");
    // A requested IPv6 address, anywhere in the /64, with the next IPv4 one.
    let d = ipam.allocate_specific(&owner("d"), "fd00:10::ffff:ffff:ffff:ffff".parse().unwrap()).unwrap();
    assert_eq!(d, ips("10.0.0.1,fd00:10::ffff:ffff:ffff:ffff"));
    // A requested address does not move the round-robin.
    ipam.release(&owner("b")).unwrap();
    assert_eq!(ipam.allocate(&owner("e")).unwrap().v6, Some("fd00:10::4".parse().unwrap()));
    assert!(matches!(
        ipam.allocate_specific(&owner("f"), "fd00:11::1".parse().unwrap()),
        Err(IpamError::OutOfRange { .. })
    ));
    assert!(matches!(
        ipam.allocate_specific(&owner("f"), "fd00:10::ffff:ffff:ffff:ffff".parse().unwrap()),
        Err(IpamError::Taken { .. })
    ));
    assert!(ipam.lookup(&owner("f")).unwrap().is_empty());
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn dual_stack_allocation_is_all_or_nothing() {
    // IPv4 runs out first: no IPv6 address is taken for the pod that cannot have both.
    let (ipam, dir) = with_ranges(120, &[("10.0.0.1", "10.0.0.1"), SLASH_64]);
    ipam.allocate(&owner("a")).unwrap();
    assert!(matches!(ipam.allocate(&owner("b")), Err(IpamError::Exhausted(r)) if r == "10.0.0.1-10.0.0.1"));
    assert!(ipam.lookup(&owner("b")).unwrap().is_empty());
    assert_eq!(ipam.allocations().unwrap().len(), 2);
    assert!(!ipam.can_allocate().unwrap(), "one family exhausted is no ADD");
    std::fs::remove_dir_all(dir).unwrap();
    // IPv6 runs out first: the IPv4 address is not kept either.
    let (ipam, dir) = with_ranges(120, &[("10.0.0.1", "10.0.0.9"), ("fd00::1", "fd00::1")]);
    ipam.allocate(&owner("a")).unwrap();
    assert!(matches!(ipam.allocate(&owner("b")), Err(IpamError::Exhausted(r)) if r == "fd00::1-fd00::1"));
    assert_eq!(ipam.allocations().unwrap().len(), 2);
    // Released, the address cools down before anyone gets it again.
    ipam.release(&owner("a")).unwrap();
    assert!(matches!(ipam.allocate(&owner("b")), Err(IpamError::Exhausted(_))));
    assert!(ipam.allocations().unwrap().is_empty());
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn an_ipv6_only_network_and_its_cooling_addresses() {
    let (ipam, dir) = with_ranges(120, &[("fd00::a", "fd00::c"), ("fd00:1::", "fd00:1::1")]);
    let got: Vec<PodIps> = (0..5).map(|i| ipam.allocate(&owner(&format!("p{i}"))).unwrap()).collect();
    let text: Vec<String> = got.iter().map(|g| g.to_string()).collect();
    assert_eq!(text, ["fd00::a", "fd00::b", "fd00::c", "fd00:1::", "fd00:1::1"]);
    assert!(matches!(
        ipam.allocate_specific(&owner("x"), "10.0.0.1".parse().unwrap()),
        Err(IpamError::OutOfRange { .. })
    ));
    ipam.release(&owner("p1")).unwrap();
    assert!(matches!(ipam.allocate(&owner("p5")), Err(IpamError::Exhausted(_))), "fd00::b is cooling");
    // Asked for by name, a cooling address is given.
    assert_eq!(ipam.allocate_specific(&owner("p5"), "fd00::b".parse().unwrap()).unwrap(), ips("fd00::b"));
    assert!(matches!(ipam.allocate_specific(&owner("p5"), "fd00::c".parse().unwrap()), Err(IpamError::Taken { .. })));
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn a_state_file_of_the_ipv4_only_plugin_reads_as_it_is() {
    let (ipam, dir) = fresh(120);
    std::fs::create_dir_all(&dir).unwrap();
    let old = r#"{"allocations":{"10.0.0.2":{"containerID":"a","ifname":"eth0"}},"released":{"10.0.0.1":1},"last":"10.0.0.2","sandboxes":{"10.0.0.2":"/run/netns/a"}}"#;
    std::fs::write(dir.join("state.json"), old).unwrap();
    assert_eq!(ipam.lookup(&owner("a")).unwrap(), ips("10.0.0.2"));
    assert_eq!(ipam.allocate(&owner("b")).unwrap(), ips("10.0.0.3"));
    std::fs::remove_dir_all(dir).unwrap();
}

fn owner(id: &str) -> Attachment {
    Attachment { container_id: id.into(), ifname: "eth0".into() }
}

#[test]
fn allocations_are_per_owner_idempotent_and_exhaust() {
    let (ipam, dir) = fresh(120);
    let a = ipam.allocate(&owner("a")).unwrap();
    assert_eq!(ipam.allocate(&owner("a")).unwrap(), a, "repeated ADD gets the same address");
    let b = ipam.allocate(&owner("b")).unwrap();
    let c = ipam.allocate(&owner("c")).unwrap();
    assert!(a != b && b != c && a != c);
    assert!(matches!(ipam.allocate(&owner("d")), Err(IpamError::Exhausted(_))));
    assert!(!ipam.can_allocate().unwrap());
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn released_addresses_wait_out_the_reuse_delay() {
    let (ipam, dir) = fresh(120);
    let a = ipam.allocate(&owner("a")).unwrap();
    ipam.allocate(&owner("b")).unwrap();
    ipam.allocate(&owner("c")).unwrap();
    assert_eq!(ipam.release(&owner("a")).unwrap(), a);
    assert!(ipam.release(&owner("a")).unwrap().is_empty(), "second release is fine");
    assert!(matches!(ipam.allocate(&owner("d")), Err(IpamError::Exhausted(_))), "{a} must not be reused yet");
    std::fs::remove_dir_all(dir).unwrap();

    let (ipam, dir) = fresh(0);
    let a = ipam.allocate(&owner("a")).unwrap();
    ipam.release(&owner("a")).unwrap();
    // Round-robin: the next allocation does not take the just-released address first.
    assert_ne!(ipam.allocate(&owner("e")).unwrap(), a);
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn specific_addresses_are_checked() {
    let (ipam, dir) = fresh(120);
    assert_eq!(ipam.allocate_specific(&owner("a"), "10.0.0.2".parse().unwrap()).unwrap().to_string(), "10.0.0.2");
    assert_eq!(ipam.allocate_specific(&owner("a"), "10.0.0.2".parse().unwrap()).unwrap().to_string(), "10.0.0.2");
    assert!(matches!(ipam.allocate_specific(&owner("b"), "10.0.0.2".parse().unwrap()), Err(IpamError::Taken { .. })));
    assert!(matches!(
        ipam.allocate_specific(&owner("b"), "10.0.0.9".parse().unwrap()),
        Err(IpamError::OutOfRange { .. })
    ));
    assert!(matches!(
        ipam.allocate_specific(&owner("a"), "10.0.0.3".parse().unwrap()),
        Err(IpamError::OwnerHasAnother { .. })
    ));
    let (ip, new) = ipam.allocate_for(&owner("c"), PodIps::default(), Some(Path::new("/run/netns/c"))).unwrap();
    assert!(new && ip.to_string() != "10.0.0.2");
    assert!(!ipam.allocate_for(&owner("c"), PodIps::default(), None).unwrap().1, "already had it");
    let all = ipam.allocations_with_sandbox().unwrap();
    assert_eq!(all.iter().find(|a| a.ips == ip).unwrap().netns.as_deref(), Some(Path::new("/run/netns/c")));
    ipam.release(&owner("c")).unwrap();
    assert!(ipam.allocations_with_sandbox().unwrap().iter().all(|a| a.netns.is_none()));
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn usage_counts_each_family_of_the_ranges_without_touching_the_directory() {
    let (ipam, dir) = with_ranges(120, &[("10.0.0.1", "10.0.0.3"), SLASH_64]);
    let empty = ipam.usage(SystemTime::now()).unwrap();
    assert!(!dir.exists(), "an observer creates nothing");
    assert_eq!(
        empty,
        [
            FamilyUsage { ipv6: false, total: 3, allocated: 0, cooling: 0 },
            FamilyUsage { ipv6: true, total: (1 << 64) - 1, allocated: 0, cooling: 0 },
        ]
    );
    ipam.allocate(&owner("a")).unwrap();
    ipam.allocate(&owner("b")).unwrap();
    ipam.release(&owner("b")).unwrap();
    let used = ipam.usage(SystemTime::now()).unwrap();
    assert_eq!((used[0].allocated, used[0].cooling, used[0].free()), (1, 1, 2));
    assert_eq!((used[1].allocated, used[1].cooling), (1, 1));
    let later = ipam.usage(SystemTime::now() + Duration::from_secs(121)).unwrap();
    assert_eq!(later[0].cooling, 0, "the reuse delay is over");
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn concurrent_allocations_never_collide() {
    let (ipam, dir) = fresh(120);
    let ipam = Ipam {
        ranges: vec![RangeConf { range_start: "10.0.1.0".parse().unwrap(), range_end: "10.0.1.255".parse().unwrap() }],
        ..ipam
    };
    let got: Vec<Ipv4Addr> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..8)
            .map(|t| {
                let ipam = ipam.clone();
                s.spawn(move || {
                    (0..25).map(|i| ipam.allocate(&owner(&format!("{t}-{i}"))).unwrap().v4.unwrap()).collect::<Vec<_>>()
                })
            })
            .collect();
        handles.into_iter().flat_map(|h| h.join().unwrap()).collect()
    });
    let mut unique = got.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(unique.len(), 200);
    assert_eq!(ipam.allocations().unwrap().len(), 200);
    std::fs::remove_dir_all(dir).unwrap();
}
