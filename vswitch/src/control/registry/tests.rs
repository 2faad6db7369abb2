use super::*;
use crate::port::{MemoryPort, PortQueue};

/// The registry and what the workers would see: each change's publication stored, then the FIBs
/// released, as the driver does.
struct Driven {
    r: Registry,
    seen: Snapshot,
}

impl Driven {
    fn change<P: Published>(&mut self, change: impl FnOnce(&mut Registry) -> P) -> P::Outcome {
        let (outcome, publication) = change(&mut self.r).split();
        if let Some(publication) = publication {
            self.seen = publication.snapshot;
            self.r.publish_fibs();
        }
        outcome
    }

    /// Where the published state sends `ip`: the port the FIB's adjacency names.
    fn published_port(&self, ip: [u8; 4]) -> Option<PortId> {
        let index = self.seen.forwarding.fib.pin().lookup(Ipv4Addr::from(ip))?;
        self.seen.forwarding.adjacency(index).map(|a| a.port)
    }

    fn attach(&mut self, name: &str, ip: [u8; 4], quiesced: u64) -> PortId {
        let reservation = self.r.reserve_pod(spec(name, ip)).unwrap();
        self.change(|r| r.commit_pod(reservation, queues(), None, |_| PortTotals::default(), quiesced)).unwrap()
    }
}

fn prefix(text: &str) -> AnyPrefix {
    text.parse().unwrap()
}

fn registry() -> Driven {
    let gateway_ip = Ipv4Addr::new(169, 254, 1, 1);
    let gateway_mac = MacAddr::local_from(gateway_ip.octets());
    let mut r = Registry::new(gateway_ip, gateway_mac, 1500);
    let routes = [prefix("0.0.0.0/0")];
    let publication =
        r.attach_host("vsw0", 1500, MacAddr([2, 0, 0, 0, 0, 1]), queues(), &routes, PortTotals::default());
    r.publish_fibs();
    Driven { r, seen: publication.snapshot }
}

fn queues() -> PortQueues {
    let q: Arc<dyn PortQueue> = Arc::new(MemoryPort::default());
    vec![q].into()
}

fn spec(name: &str, ip: [u8; 4]) -> PodSpec {
    PodSpec {
        name: name.into(),
        netns: format!("/run/netns/{name}").into(),
        ifname: "eth0".into(),
        addresses: PodAddresses { ip: Some(Ipv4Addr::from(ip)), ipv6: None },
        mac: MacAddr::local_from(ip),
        mtu: None,
        pod: None,
        bandwidth: None,
    }
}

#[test]
fn attach_and_detach_publish_the_pod_route_and_remove_it() {
    let mut d = registry();
    let before = d.r.generation();
    let id = d.attach("a", [10, 0, 0, 5], u64::MAX);
    assert!(d.r.generation() > before);
    assert_eq!(d.published_port([10, 0, 0, 5]), Some(id));
    assert_eq!(d.published_port([10, 0, 0, 6]), Some(HOST_PORT), "the default goes to the node");
    let record = d.change(|r| r.detach("a")).unwrap();
    assert_eq!(record.info.id, id);
    assert_eq!(d.published_port([10, 0, 0, 5]), Some(HOST_PORT));
    assert!(matches!(d.r.detach("a").unwrap_err(), RegistryError::NoSuchPort(_)));
    assert!(matches!(d.r.detach("vsw0").unwrap_err(), RegistryError::NotAPodPort(_)), "the host port stays");
}

#[test]
fn names_and_addresses_are_unique_including_attaches_in_flight() {
    let mut d = registry();
    d.attach("a", [10, 0, 0, 5], u64::MAX);
    let r = &mut d.r;
    assert!(matches!(r.reserve_pod(spec("a", [10, 0, 0, 6])).unwrap_err(), RegistryError::PortExists(_)));
    assert!(matches!(r.reserve_pod(spec("b", [10, 0, 0, 5])).unwrap_err(), RegistryError::AddressInUse { .. }));
    let pending = r.reserve_pod(spec("c", [10, 0, 0, 7])).unwrap();
    assert!(matches!(r.reserve_pod(spec("c", [10, 0, 0, 8])).unwrap_err(), RegistryError::PortBeingAttached(_)));
    assert!(matches!(r.reserve_pod(spec("d", [10, 0, 0, 7])).unwrap_err(), RegistryError::AddressBeingAttached { .. }));
    r.cancel(&pending);
    assert!(r.reserve_pod(spec("d", [10, 0, 0, 7])).is_ok(), "a cancelled reservation frees its address");
    let x = || spec("x", [10, 0, 0, 9]);
    let with_ip =
        |ip: Option<Ipv4Addr>, ipv6: Option<Ipv6Addr>| PodSpec { addresses: PodAddresses { ip, ipv6 }, ..x() };
    for (bad, why) in [
        (with_ip(Some(Ipv4Addr::new(169, 254, 1, 1)), None), "the gateway"),
        (with_ip(None, None), "no address at all"),
        (with_ip(Some(Ipv4Addr::new(10, 0, 0, 9)), Some("fe80::1".parse().unwrap())), "a link-local address"),
        (PodSpec { mac: MacAddr::BROADCAST, ..x() }, "a multicast MAC"),
        (PodSpec { mtu: Some(100), ..x() }, "a tiny MTU"),
        (PodSpec { ifname: "a/b".into(), ..x() }, "a bad ifname"),
        (
            PodSpec {
                bandwidth: Some(BandwidthLimits {
                    ingress: Some(Rate { bits_per_second: 0, burst_bits: 1 }),
                    egress: None,
                }),
                ..x()
            },
            "a zero rate",
        ),
    ] {
        assert!(matches!(r.reserve_pod(bad).unwrap_err(), RegistryError::InvalidPod(_)), "{why}");
    }
}

#[test]
fn port_routes_cannot_be_replaced_and_api_routes_only_when_asked() {
    let mut d = registry();
    d.attach("a", [10, 0, 0, 5], u64::MAX);
    let host_route = prefix("10.0.0.5/32");
    assert!(matches!(d.r.add_route(host_route, "vsw0", true).unwrap_err(), RegistryError::RouteOwnedByPort(_)));
    assert!(matches!(d.r.del_route(host_route).unwrap_err(), RegistryError::RouteOwnedByPort(_)));
    let services = prefix("10.96.0.0/12");
    d.change(|r| r.add_route(services, "vsw0", false)).unwrap();
    assert!(matches!(d.r.add_route(services, "a", false).unwrap_err(), RegistryError::RouteExists(_)));
    d.change(|r| r.add_route(services, "a", true)).unwrap();
    assert_eq!(d.published_port([10, 96, 0, 1]), d.r.port_id("a"));
    assert_eq!(d.r.api_routes(), vec![(services, "a".to_string())]);
    assert!(matches!(d.r.add_route(services, "nope", true).unwrap_err(), RegistryError::NoSuchPort(_)));
    // The config's default route is replaceable only on request, too.
    let default = prefix("0.0.0.0/0");
    assert!(matches!(d.r.add_route(default, "a", false).unwrap_err(), RegistryError::RouteExists(_)));
    // Removing the port takes its API routes with it.
    d.change(|r| r.detach("a")).unwrap();
    assert!(d.r.api_routes().is_empty());
    assert!(matches!(d.r.del_route(services).unwrap_err(), RegistryError::NoSuchRoute(_)));
}

#[test]
fn adjacency_slots_are_reused_only_after_the_workers_moved_on() {
    let mut d = registry();
    let id = d.attach("a", [10, 0, 0, 5], u64::MAX);
    let slot = d.r.record(id).adjacency;
    let freed_at = d.r.generation();
    d.change(|r| r.detach("a")).unwrap();
    // A worker still on the generation that had the route: the slot must not be reused.
    let id = d.attach("b", [10, 0, 0, 6], freed_at);
    assert_ne!(d.r.record(id).adjacency, slot);
    // Every worker has loaded a later snapshot: now it is.
    d.change(|r| r.detach("b")).unwrap();
    let quiesced = d.r.generation() + 1;
    let id = d.attach("c", [10, 0, 0, 7], quiesced);
    assert_eq!(d.r.record(id).adjacency, slot);
}

#[test]
fn ten_thousand_attach_detach_cycles_leave_the_tables_as_after_the_first() {
    let mut d = registry();
    let mut after_first = None;
    let mut first_publish = Duration::ZERO;
    let mut last_publish = Duration::ZERO;
    for i in 0..10_000u32 {
        let ip = (Ipv4Addr::new(10, 1, 0, 0).to_bits() + i % 4000).to_be_bytes();
        let quiesced = d.r.generation() + 1;
        d.attach("cycling", ip, quiesced);
        let start = std::time::Instant::now();
        d.change(|r| r.detach("cycling")).unwrap();
        let took = start.elapsed();
        if i == 0 {
            after_first = Some((d.r.adjacency_slots(), d.r.fib_routes(), d.r.ports().count()));
            first_publish = took;
        }
        last_publish = took;
    }
    assert_eq!(Some((d.r.adjacency_slots(), d.r.fib_routes(), d.r.ports().count())), after_first);
    // Not a timing test: the table sizes above are the property; this only guards against a
    // publish that grows with the number of cycles (it would be ~10,000x).
    assert!(last_publish < first_publish * 50 + Duration::from_millis(5), "{first_publish:?} -> {last_publish:?}");
}

#[test]
fn bandwidth_limits_reach_the_published_port() {
    let mut d = registry();
    let limit = Rate { bits_per_second: 10_000_000, burst_bits: 1_000_000 };
    let spec =
        PodSpec { bandwidth: Some(BandwidthLimits { ingress: Some(limit), egress: None }), ..spec("a", [10, 0, 0, 5]) };
    let reservation = d.r.reserve_pod(spec).unwrap();
    let id = d.change(|r| r.commit_pod(reservation, queues(), None, |_| PortTotals::default(), u64::MAX)).unwrap();
    let limits = d.seen.forwarding.port(id).unwrap().rate_limit.clone().expect("a limit");
    assert_eq!(limits.ingress.as_ref().map(|b| (b.bits_per_second(), b.burst_bits())), Some((10_000_000, 1_000_000)));
    assert!(limits.egress.is_none());
    assert!(d.seen.forwarding.port(HOST_PORT).unwrap().rate_limit.is_none());
}

#[test]
fn a_gone_port_stops_forwarding_and_gives_way_to_a_new_attachment() {
    let mut d = registry();
    let id = d.attach("a", [10, 0, 0, 5], u64::MAX);
    d.change(|r| r.mark_gone(&[id]));
    assert_eq!(d.r.record(id).link, LinkState::Gone);
    assert!(d.r.record(id).queues.is_none());
    assert_eq!(d.published_port([10, 0, 0, 5]), Some(HOST_PORT));
    assert!(d.seen.queues[id as usize].is_none(), "workers stop polling it");
    assert!(d.r.mark_gone(&[id]).is_none(), "gone already: nothing to publish");
    // The address is free for a new pod: the gone port is replaced.
    let new = d.attach("b", [10, 0, 0, 5], u64::MAX);
    assert_eq!(d.published_port([10, 0, 0, 5]), Some(new));
    assert!(d.r.port_id("a").is_none());
}

#[test]
fn neighbours_resolve_through_the_registry_and_publish() {
    let mut d = registry();
    let nic = MacAddr([2, 0, 0, 0, 0, 9]);
    let subnets = vec![prefix("10.10.0.0/16"), prefix("fd00:10::/64")];
    let gateways = vec![IpAddr::from([10, 10, 0, 1]), "fd00:10::1".parse().unwrap()];
    let uplink = UplinkSpec { mac: nic, subnets, gateways, ..Default::default() };
    d.change(|r| r.attach_uplink("eth1", 1500, uplink, queues())).unwrap();
    let now = Duration::from_secs(1);
    for vm in [IpAddr::from([10, 10, 0, 9]), "fd00:10::9".parse().unwrap()] {
        let work = d.r.on_unresolved(vm, vec![0; 64], now);
        assert_eq!(work.ask, vec![vm]);
        assert!(work.send.is_empty());
        let generation = d.r.generation();
        let peer = MacAddr([2, 0, 0, 0, 0, 10]);
        let work = d.change(|r| r.on_neighbor_reply(vm, peer, now));
        assert_eq!(work.send.len(), 1, "the waiting packet goes out");
        assert!(d.r.generation() > generation, "a resolved neighbour is published");
        assert_eq!(d.seen.forwarding.neighbors.get(&vm), Some(&peer));
        assert_eq!(d.r.on_unresolved(vm, vec![0; 64], now).send.len(), 1);
    }
    // Both defaults go through the uplink's gateways.
    let routes: Vec<String> = d.r.routes().map(|(p, _)| p.to_string()).collect();
    assert!(routes.contains(&"0.0.0.0/0".to_string()) && routes.contains(&"::/0".to_string()), "{routes:?}");
}

#[test]
fn nothing_reaches_the_workers_until_the_publication_is_stored() {
    let mut d = registry();
    let reservation = d.r.reserve_pod(spec("a", [10, 0, 0, 5])).unwrap();
    let (id, publication) = d.r.commit_pod(reservation, queues(), None, |_| PortTotals::default(), u64::MAX).unwrap();
    // Staged, not published: the old snapshot, and the FIB readers still on the old table.
    assert_eq!(d.published_port([10, 0, 0, 5]), Some(HOST_PORT));
    assert_eq!(publication.snapshot.generation, d.r.generation());
    d.seen = publication.snapshot;
    assert_eq!(d.published_port([10, 0, 0, 5]), Some(HOST_PORT), "the FIB waits for publish_fibs");
    d.r.publish_fibs();
    assert_eq!(d.published_port([10, 0, 0, 5]), Some(id));
}
