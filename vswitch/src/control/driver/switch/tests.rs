use std::net::{IpAddr, Ipv4Addr};

use futures::future::BoxFuture;
use vswitch_api::api::{CountersView, DropsView, ErrorCode, FlowSpec, PortSpec, Reply};

use super::*;
use crate::control::hostnet::HostNetError;
use crate::control::persist::SavedRoute;
use crate::control::podio::PodIoError;
use crate::control::registry::PodSpec;
use crate::control::trace;
use crate::datapath::PortQueues;

fn spec(name: &str, last: u8) -> PortSpec {
    PortSpec {
        name: name.into(),
        netns: format!("/run/netns/{name}").into(),
        ifname: "eth0".into(),
        ip: Some(Ipv4Addr::new(10, 0, 0, last)),
        ipv6: None,
        mac: MacAddr::local_from([10, 0, 0, last]),
        mtu: None,
        pod: None,
        bandwidth: None,
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap()
}

fn names(ports: &[PortView]) -> Vec<(String, String)> {
    ports.iter().map(|p| (p.name.clone(), format!("{:?}", p.role))).collect()
}

#[test]
fn a_restored_switch_has_the_saved_ports_and_api_routes() {
    let rt = runtime();
    let first = Switch::in_memory(Config::default()).unwrap();
    for (name, last) in [("a", 2), ("b", 3)] {
        rt.block_on(first.handle(Request::AddPort(spec(name, last)))).unwrap();
    }
    let route = Request::AddRoute { prefix: "10.96.0.0/12".into(), port: "b".into(), replace: false };
    rt.block_on(first.handle(route)).unwrap();
    let saved = first.saved_state();
    assert_eq!(saved.ports.len(), 2);
    assert_eq!(saved.routes, vec![SavedRoute { prefix: "10.96.0.0/12".into(), port: "b".into() }]);

    let second = Switch::in_memory(Config::default()).unwrap();
    rt.block_on(second.restore(saved));
    assert_eq!(names(&second.list_ports()), names(&first.list_ports()));
    let routes = |s: &Switch| s.list_routes().into_iter().map(|r| (r.prefix, r.port, r.origin)).collect::<Vec<_>>();
    assert_eq!(routes(&second), routes(&first));
}

/// Pod I/O whose node route removal always fails.
#[derive(Debug)]
struct RouteRemovalFails;

impl PodIo for RouteRemovalFails {
    fn netns_id(&self, path: &std::path::Path) -> Option<(u64, u64)> {
        MemoryPodIo.netns_id(path)
    }
    fn open_queues<'a>(&'a self, spec: &'a PodSpec, workers: usize) -> BoxFuture<'a, Result<PortQueues, PodIoError>> {
        MemoryPodIo.open_queues(spec, workers)
    }
    fn add_host_route(&self, _: IpAddr) -> BoxFuture<'_, Result<(), PodIoError>> {
        Box::pin(async { Ok(()) })
    }
    fn remove_host_route(&self, _: IpAddr) -> BoxFuture<'_, Result<(), PodIoError>> {
        let refused = std::io::Error::other("no buffer space");
        Box::pin(async { Err(HostNetError::Connect(refused).into()) })
    }
    fn delete_device(&self, _: std::path::PathBuf, _: String) {}
}

#[test]
fn a_deleted_port_stays_deleted_when_netlink_fails() {
    let rt = runtime();
    let dir = tempfile::tempdir().unwrap();
    let file = StateFile::open(dir.path(), 1500).unwrap();
    let switch = Switch::in_memory_with(Config::default(), Box::new(RouteRemovalFails), Some(file)).unwrap();
    rt.block_on(switch.handle(Request::AddPort(spec("a", 2)))).unwrap();
    assert_eq!(StateFile::open(dir.path(), 1500).unwrap().load().unwrap().ports.len(), 1);
    rt.block_on(switch.handle(Request::DelPort { name: "a".into(), remove_device: false })).unwrap();
    // Saved before the failing netlink call: a restart does not bring the port back.
    assert!(StateFile::open(dir.path(), 1500).unwrap().load().unwrap().ports.is_empty());
    assert_eq!(switch.drops().iter().find(|(r, _)| *r == DropReason::TxError).map(|(_, n)| *n), Some(1));
}

/// Where the recorded replies live: one request line, then its reply line.
const TRANSCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/src/control/testdata/replies.jsonl");

/// The replies to `status`, `list_ports`, `list_routes`, `counters` and `drops` on a switch
/// with pods of both families, a port removed, config, port and API routes, counted
/// traffic and sampled drops; times zeroed (they change run to run).
fn transcript() -> Vec<(String, String)> {
    let rt = runtime();
    let mut config = Config::default();
    config.host_port.routes = vec!["10.96.0.0/12".parse().unwrap(), "fd00:96::/108".parse().unwrap()];
    let switch = Switch::in_memory_with(config, Box::new(RouteRemovalFails), None).unwrap();
    let dual = PortSpec {
        ipv6: Some("fd00:10::3".parse().unwrap()),
        pod: Some(vswitch_api::api::PodRef { namespace: "default".into(), name: "web-0".into() }),
        bandwidth: Some(vswitch_api::api::Bandwidth {
            ingress: Some(vswitch_api::api::RateLimit { rate_bps: 10_000_000, burst_bits: 80_000 }),
            egress: None,
        }),
        ..spec("b", 3)
    };
    let v6_only = PortSpec { ip: None, ipv6: Some("fd00:10::4".parse().unwrap()), ..spec("c", 4) };
    for port in [spec("a", 2), dual, v6_only] {
        rt.block_on(switch.handle(Request::AddPort(port))).unwrap();
    }
    let route = Request::AddRoute { prefix: "10.20.0.0/16".into(), port: "b".into(), replace: false };
    rt.block_on(switch.handle(route)).unwrap();
    // The node's route to c cannot be removed: a tx_error.
    rt.block_on(switch.handle(Request::DelPort { name: "c".into(), remove_device: false })).unwrap();
    switch.counters.control().rx(1, 1500);
    switch.counters.control().tx(2, 90);
    // Asking turns sampling on; then a spoofed UDP packet from a and a frame that is not IP.
    rt.block_on(switch.handle(Request::Drops { after: 0 })).unwrap();
    let flow = FlowSpec {
        from: "a".into(),
        to: "10.0.0.3".parse().unwrap(),
        protocol: vswitch_api::api::FlowProtocol::Udp { port: 53 },
        size: None,
        gso: false,
    };
    let gateway = switch.config.gateway_mac();
    let (frame, len) =
        trace::flow_frame(&flow, "10.0.0.9".parse().unwrap(), MacAddr([2, 0, 0, 0, 0, 9]), gateway, 1500).unwrap();
    let sampler = &switch.publisher.datapath().drops;
    sampler.sample(1, DropReason::SpoofedSourceIp, &frame[..len]);
    sampler.sample(0, DropReason::UnsupportedEtherType, &[0u8; 30]);

    let requests =
        [Request::Status, Request::ListPorts, Request::ListRoutes, Request::Counters, Request::Drops { after: 0 }];
    requests
        .into_iter()
        .map(|request| {
            let line = serde_json::to_string(&request).unwrap();
            let reply = match rt.block_on(switch.handle(request)).unwrap() {
                Response::Status(status) => Response::Status(StatusView { uptime_seconds: 0, ..status }),
                Response::Drops(mut drops) => {
                    drops.samples.iter_mut().for_each(|s| s.unix_ms = 0);
                    Response::Drops(drops)
                }
                other => other,
            };
            (line, serde_json::to_string(&Reply::from_result(Ok(reply))).unwrap())
        })
        .collect()
}

/// A reply line read by a client as the view it expects, and written again.
fn as_client_reads_it<T: serde::de::DeserializeOwned + serde::Serialize>(line: &str) -> String {
    let reply: Reply<T> = serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"));
    serde_json::to_string(&reply).unwrap()
}

/// The API's replies, byte for byte as recorded (set RECORD_REPLIES=1 to record them again,
/// only on purpose: clients read these lines).
#[test]
fn replies_are_the_recorded_ones_and_clients_read_them_back() {
    let lines = transcript();
    if std::env::var_os("RECORD_REPLIES").is_some() {
        let text: String = lines.iter().map(|(q, a)| format!("{q}\n{a}\n")).collect();
        std::fs::write(TRANSCRIPT, text).unwrap();
    }
    let recorded = std::fs::read_to_string(TRANSCRIPT).unwrap();
    let recorded: Vec<&str> = recorded.lines().collect();
    let produced: Vec<&str> = lines.iter().flat_map(|(q, a)| [q.as_str(), a.as_str()]).collect();
    assert_eq!(produced, recorded);
    for (request, reply) in &lines {
        let again = match serde_json::from_str::<Request>(request).unwrap() {
            Request::Status => as_client_reads_it::<StatusView>(reply),
            Request::ListPorts => as_client_reads_it::<Vec<PortView>>(reply),
            Request::ListRoutes => as_client_reads_it::<Vec<RouteView>>(reply),
            Request::Counters => as_client_reads_it::<CountersView>(reply),
            Request::Drops { .. } => as_client_reads_it::<DropsView>(reply),
            other => panic!("no view for {other:?}"),
        };
        assert_eq!(&again, reply);
    }
}

#[test]
fn an_in_memory_switch_is_healthy() {
    let switch = Switch::in_memory(Config::default()).unwrap();
    assert_eq!(switch.health().problems, Vec::<String>::new());
}

#[test]
fn requests_get_typed_answers_and_error_codes() {
    let rt = runtime();
    let switch = Switch::in_memory(Config::default()).unwrap();
    let added = rt.block_on(switch.handle(Request::AddPort(spec("a", 2)))).unwrap();
    assert!(matches!(added, Response::Port(ref p) if p.name == "a"));
    let code = |r: Request| rt.block_on(switch.handle(r)).unwrap_err().code;
    assert_eq!(code(Request::AddPort(spec("a", 3))), ErrorCode::Exists);
    assert_eq!(code(Request::AddPort(spec("b", 2))), ErrorCode::Conflict);
    let missing = PortSpec { netns: "/nonexistent/ns".into(), ..spec("c", 4) };
    assert_eq!(code(Request::AddPort(missing)), ErrorCode::NotFound);
    assert_eq!(code(Request::DelPort { name: "zz".into(), remove_device: false }), ErrorCode::NotFound);
    assert_eq!(code(Request::Trace { port: "a".into(), frame: "aéa".into() }), ErrorCode::Invalid);
    assert_eq!(code(Request::DelRoute { prefix: "10.0.0.2/32".into() }), ErrorCode::Conflict);
    // A failed attach left nothing reserved: the name and address can be used.
    rt.block_on(switch.handle(Request::AddPort(spec("c", 4)))).unwrap();
}

/// Pod I/O whose namespaces vanish on demand (as a runtime that removes a sandbox without a DEL).
#[derive(Debug, Default, Clone)]
struct VanishingNamespaces(Arc<std::sync::Mutex<Vec<std::path::PathBuf>>>);

impl PodIo for VanishingNamespaces {
    fn netns_id(&self, path: &std::path::Path) -> Option<(u64, u64)> {
        let vanished = self.0.lock().unwrap().iter().any(|p| p == path);
        if vanished {
            None
        } else {
            MemoryPodIo.netns_id(path)
        }
    }
    fn open_queues<'a>(&'a self, spec: &'a PodSpec, workers: usize) -> BoxFuture<'a, Result<PortQueues, PodIoError>> {
        MemoryPodIo.open_queues(spec, workers)
    }
    fn add_host_route(&self, ip: IpAddr) -> BoxFuture<'_, Result<(), PodIoError>> {
        MemoryPodIo.add_host_route(ip)
    }
    fn remove_host_route(&self, ip: IpAddr) -> BoxFuture<'_, Result<(), PodIoError>> {
        MemoryPodIo.remove_host_route(ip)
    }
    fn delete_device(&self, _: std::path::PathBuf, _: String) {}
}

#[test]
fn a_port_gone_for_the_timeout_is_removed_counted_and_a_late_del_is_harmless() {
    let rt = runtime();
    let namespaces = VanishingNamespaces::default();
    let config = Config { gone_port_timeout_seconds: 1, ..Config::default() };
    let switch = Switch::in_memory_with(config, Box::new(namespaces.clone()), None).unwrap();
    for (name, last) in [("ctr-a:eth0", 2), ("ctr-b:eth0", 3)] {
        rt.block_on(switch.handle(Request::AddPort(spec(name, last)))).unwrap();
    }
    namespaces.0.lock().unwrap().push("/run/netns/ctr-a:eth0".into());
    let pods = |s: &Switch| s.list_ports().into_iter().filter(|p| p.name.starts_with("ctr-")).count();
    switch.check_devices();
    rt.block_on(switch.remove_gone_ports());
    assert_eq!(pods(&switch), 2, "gone, but not for the timeout yet");
    std::thread::sleep(std::time::Duration::from_millis(1100));
    switch.check_devices();
    rt.block_on(switch.remove_gone_ports());
    let left: Vec<String> = switch.list_ports().into_iter().map(|p| p.name).filter(|n| n.starts_with("ctr-")).collect();
    assert_eq!(left, vec!["ctr-b:eth0".to_string()], "only the gone port is removed");
    assert!(switch.metrics_snapshot().render().contains("vswitch_gone_ports_removed_total 1"));
    // The runtime's DEL, late: the port is not found, which the plugin takes as done.
    let late = rt.block_on(switch.handle(Request::DelPort { name: "ctr-a:eth0".into(), remove_device: true }));
    assert_eq!(late.unwrap_err().code, ErrorCode::NotFound);
    // Its address is free for a new pod at once (the registry holds nothing for it).
    rt.block_on(switch.handle(Request::AddPort(spec("ctr-c:eth0", 2)))).unwrap();
}
