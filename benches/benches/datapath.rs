//! The datapath's per-packet costs, with no I/O: wire parsing (ours next to etherparse), the
//! pipeline on batches of 32 frames (pod to pod; pod to the uplink through a FIB holding the full
//! RIS IPv4 table), and the ARP reply path. `cargo bench -p benches --bench datapath`.
//!
//! Each pipeline iteration first restores the batch from a template (the pipeline rewrites
//! frames in place); `restore_only` measures that copy alone, to subtract.

use std::hint::black_box;
use std::net::Ipv4Addr;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use etherparse::{PacketBuilder, SlicedPacket};
use fib::compare::{self, RouteSet};
use fib::testdata::RisFile;
use fib::{routes, Ipv4Prefix};
use vswitch::pipeline::{IcmpLimiter, Next, NoTrace, Pipeline};
use vswitch::state::{Fibs, ForwardingState, ForwardingStateBuilder};
use vswitch::wire::arp::ArpPacket;
use vswitch::wire::ethernet::EthernetFrame;
use vswitch::wire::ipv4::Ipv4Packet;
use vswitch::wire::vnet::{self, VnetHeader};
use vswitch::wire::MacAddr;

const BATCH: usize = 32;
const GW_IP: Ipv4Addr = Ipv4Addr::new(10, 10, 0, 1);
const GW_MAC: MacAddr = MacAddr([0x02, 0, 0, 0, 0, 1]);
const ROUTER_IP: Ipv4Addr = Ipv4Addr::new(10, 10, 0, 254);
const ROUTER_MAC: MacAddr = MacAddr([0x02, 0, 0, 0, 0, 0xfe]);
const UP_MAC: MacAddr = MacAddr([0x02, 0, 0, 0, 0, 0x99]);
const A_IP: Ipv4Addr = Ipv4Addr::new(10, 10, 1, 2);
const A_MAC: MacAddr = MacAddr([0x02, 0, 10, 10, 1, 2]);
const B_IP: Ipv4Addr = Ipv4Addr::new(10, 10, 1, 3);
const B_MAC: MacAddr = MacAddr([0x02, 0, 10, 10, 1, 3]);
const A: u16 = 0;
const B: u16 = 1;
const UPLINK: u16 = 2;

/// Pods A and B and an uplink; `routes` (the full table, for the uplink case) go out of the
/// uplink through its router (a resolved neighbour), the pods' /32s to the pods.
fn switch(routes: &[(Ipv4Prefix, u32)]) -> (ForwardingState, Fibs) {
    let builder = ForwardingStateBuilder::new(GW_IP, GW_MAC)
        .pod(A_IP, A_MAC, 1500)
        .pod(B_IP, B_MAC, 1500)
        .uplink(UP_MAC, None, "10.10.0.0/16".parse().unwrap(), Some(ROUTER_IP), 1500)
        .neighbor(ROUTER_IP, ROUTER_MAC);
    assert_eq!(builder.next_port(), UPLINK + 1);
    routes.iter().fold(builder, |b, (prefix, _)| b.route(*prefix, UPLINK)).build()
}

/// A 64-byte UDP frame from pod A to `dst`, behind a vnet header.
fn udp64(dst: Ipv4Addr) -> Vec<u8> {
    let mut buf = vec![0u8; vnet::LEN];
    VnetHeader::default().write(&mut buf);
    PacketBuilder::ethernet2(A_MAC.0, GW_MAC.0)
        .ipv4(A_IP.octets(), dst.octets(), 64)
        .udp(10_000, 9)
        .write(&mut buf, &[0x5a; 18])
        .unwrap();
    buf
}

fn arp_request() -> Vec<u8> {
    let mut buf = vec![0u8; vnet::LEN];
    buf.extend_from_slice(&MacAddr::BROADCAST.0);
    buf.extend_from_slice(&A_MAC.0);
    buf.extend_from_slice(&[0x08, 0x06, 0, 1, 0x08, 0, 6, 4, 0, 1]);
    buf.extend_from_slice(&A_MAC.0);
    buf.extend_from_slice(&A_IP.octets());
    buf.extend_from_slice(&[0; 6]);
    buf.extend_from_slice(&GW_IP.octets());
    buf
}

/// Runs batches of `templates` (cycled) through the pipeline; every frame must leave on
/// `expect_port` (checked once before measuring, so a broken setup cannot bench drops).
fn bench_pipeline(c: &mut Criterion, name: &str, state: &ForwardingState, templates: &[Vec<u8>], expect_port: u16) {
    let mut pipeline = Pipeline::new(IcmpLimiter::new(1000, 10));
    let mut buffers: Vec<Vec<u8>> = (0..BATCH).map(|_| vec![0u8; 256]).collect();
    let view = state.pin();
    for t in templates.iter().take(BATCH) {
        let mut buf = t.clone();
        buf.resize(256, 0);
        match pipeline.process(state, &view, A, &mut buf, t.len(), 0, &mut NoTrace) {
            Next::Tx { port, .. } if port == expect_port => {}
            other => panic!("{name}: expected Tx on port {expect_port}, got {other:?}"),
        }
    }
    drop(view);
    let mut group = c.benchmark_group("pipeline");
    group.throughput(Throughput::Elements(BATCH as u64));
    let mut next = 0;
    group.bench_function(name, |b| {
        b.iter(|| {
            let view = state.pin();
            let mut sent = 0;
            for buf in buffers.iter_mut() {
                let t = &templates[next % templates.len()];
                next += 1;
                buf[..t.len()].copy_from_slice(t);
                if let Next::Tx { len, .. } = pipeline.process(state, &view, A, buf, t.len(), 0, &mut NoTrace) {
                    sent += len;
                }
            }
            black_box(sent)
        })
    });
    if name == "pod_to_pod_udp64" {
        group.bench_function("restore_only", |b| {
            b.iter(|| {
                for buf in buffers.iter_mut() {
                    let t = &templates[next % templates.len()];
                    next += 1;
                    buf[..t.len()].copy_from_slice(t);
                }
                black_box(&buffers);
            })
        });
    }
    group.finish();
}

fn wire(c: &mut Criterion) {
    let frame = udp64(B_IP);
    let eth = &frame[vnet::LEN..];
    let arp = arp_request();
    let mut group = c.benchmark_group("parse");
    group.throughput(Throughput::Elements(1));
    group.bench_function("ours_vnet_ethernet_ipv4", |b| {
        b.iter(|| {
            let vnet = VnetHeader::parse(black_box(&frame[..vnet::LEN]), eth.len()).unwrap();
            let e = EthernetFrame::new_checked(black_box(eth)).unwrap();
            let ip = Ipv4Packet::new_checked(e.payload()).unwrap();
            black_box((vnet.is_gso(), e.ethertype(), ip.dst(), ip.ttl()))
        })
    });
    group.bench_function("etherparse_ethernet_ipv4", |b| {
        b.iter(|| {
            let p = SlicedPacket::from_ethernet(black_box(eth)).unwrap();
            black_box(p.net.is_some())
        })
    });
    group.bench_function("ours_arp", |b| {
        b.iter(|| {
            let e = EthernetFrame::new_checked(black_box(&arp[vnet::LEN..])).unwrap();
            let a = ArpPacket::new_checked(e.payload()).unwrap();
            black_box((a.operation(), a.target_ip()))
        })
    });
    group.finish();
}

fn pipeline(c: &mut Criterion) {
    let (small, _fib) = switch(&[]);
    bench_pipeline(c, "pod_to_pod_udp64", &small, &[udp64(B_IP)], B);
    bench_pipeline(c, "arp_reply", &small, &[arp_request()], A);

    let mut prefixes = routes::read_table(&RisFile::V4Table.path()).expect("v4 table");
    let set = RouteSet::from_prefixes(&std::mem::take(&mut prefixes));
    let routes: Vec<(Ipv4Prefix, u32)> = set.v4.iter().filter(|(p, _)| p.len() > 0).cloned().collect();
    let (full, _fib) = switch(&routes);
    // Destinations inside announced prefixes, none of them the pods'.
    let templates: Vec<Vec<u8>> = compare::addresses_in_prefixes(&routes, 4096, 7)
        .into_iter()
        .filter(|a| *a != A_IP && *a != B_IP)
        .map(udp64)
        .collect();
    bench_pipeline(c, "pod_to_uplink_full_fib_udp64", &full, &templates, UPLINK);
}

criterion_group!(benches, wire, pipeline);
criterion_main!(benches);
