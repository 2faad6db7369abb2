//! `vpc-bench tap-cost`: the kernel's own per-packet price for a 64-byte frame through a pod's
//! TAP, measured the way vswitchd pays it: write() of a frame into the pod (the pod's stack
//! takes it up to its first netfilter hook, where it is dropped, as in the e2e flood) and read()
//! of a frame the pod sent. Their sum bounds what one forwarding thread can do with TAP I/O,
//! whatever the switch does in userspace.

use std::io;
use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use vpc_lab::netns::Pod;
use vswitch::port::netns::run_in;
use vswitch::port::tap::{Attach, TapQueue};
use vswitch::port::PortQueue;
use vswitch::wire::vnet;

use vswitch::wire::MacAddr;

use crate::udp_flood::{drop_at_receiver, RawSender, Target, BURST, FRAME_LEN};

/// The UDP port of the frames written into the pod (dropped there).
const PORT: u16 = 9;

#[derive(Debug, Clone, Copy)]
pub struct TapCost {
    pub write_ns: f64,
    pub read_ns: f64,
    pub frames: u64,
}

impl TapCost {
    /// Frames per second one thread could move with one read and one write each.
    pub fn bound_pps(&self) -> f64 {
        1e9 / (self.write_ns + self.read_ns)
    }
}

/// Measures over about `seconds` (half writing, half reading).
pub fn run(seconds: f64) -> io::Result<TapCost> {
    let pod = Pod::new(Ipv4Addr::new(10, 78, 0, 2));
    drop_at_receiver(&pod.ns.name, PORT, false)?;
    let queue = TapQueue::open("eth0", Some(&pod.ns.path()), Attach::Existing).map_err(io::Error::other)?;
    let gateway: MacAddr = vpc_lab::netns::GATEWAY_MAC.parse().map_err(io::Error::other)?;
    let ifindex = pod.ifindex() as i32;
    let inbound = Target {
        dev: "eth0".into(),
        ifindex,
        src_mac: gateway,
        dst_mac: pod.mac.parse().map_err(io::Error::other)?,
        src_ip: Ipv4Addr::new(10, 78, 9, 9).into(),
        dst_ip: pod.ip.into(),
        dst_port: PORT,
    };
    let mut frame = vec![0u8; vnet::LEN];
    frame.extend_from_slice(&inbound.frames(1)[0]);

    // Writes: vswitchd delivering to the pod.
    let budget = Duration::from_secs_f64(seconds / 2.0);
    let (mut writes, start) = (0u64, Instant::now());
    while start.elapsed() < budget {
        for _ in 0..1024 {
            queue.send(&frame)?;
        }
        writes += 1024;
    }
    let write_ns = start.elapsed().as_nanos() as f64 / writes as f64;

    // Reads: the pod sends a burst (untimed), vswitchd reads it back (timed).
    let outbound = Target {
        src_mac: inbound.dst_mac,
        dst_mac: gateway,
        src_ip: pod.ip.into(),
        dst_ip: Ipv4Addr::new(10, 78, 9, 9).into(),
        ..inbound
    };
    let burst = vec![outbound.frames(1).remove(0); BURST];
    let sender = run_in(Some(&pod.ns.path()), || RawSender::open(ifindex))?;
    let mut buf = vec![0u8; 2048];
    let (mut reads, mut reading, start) = (0u64, Duration::ZERO, Instant::now());
    while start.elapsed() < budget {
        // The TAP's queue holds 500 frames; four bursts stay below that.
        for _ in 0..4 {
            sender.send_burst(&burst)?;
        }
        let t = Instant::now();
        loop {
            match queue.recv(&mut buf) {
                Ok(n) if n >= vnet::LEN + FRAME_LEN => reads += 1,
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => return Err(e),
            }
        }
        reading += t.elapsed();
    }
    if reads == 0 {
        return Err(io::Error::other("no frame came back out of the TAP"));
    }
    Ok(TapCost { write_ns, read_ns: reading.as_nanos() as f64 / reads as f64, frames: writes + reads })
}
