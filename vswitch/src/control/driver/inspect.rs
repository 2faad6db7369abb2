//! Looking at the live datapath without changing it: `trace` runs a frame (given, or built from
//! a flow) through the pipeline on the published state, sending nothing; `drops` turns the
//! workers' drop sampling on for a while and reads the samples.

use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use vswitch_api::api::{DropsView, FlowSpec, TraceView};

use super::publisher::Publisher;
use super::views;
use crate::control::trace::{self, TraceError};
use crate::datapath::drop_sampler::DropSampler;
use crate::pipeline::MAX_FRAME;
use crate::state::PortRole;
use crate::wire::{vnet, MacAddr};

/// Runs a frame (hex, Ethernet onwards) through the pipeline as if it arrived on `port`, on the
/// live state, without sending anything.
pub fn trace_frame(publisher: &Publisher, port: &str, frame_hex: &str) -> Result<TraceView, TraceError> {
    let id = publisher.registry().port_id(port).ok_or_else(|| TraceError::NoSuchPort(port.into()))?;
    let digits: String = frame_hex.chars().filter(|c| !c.is_whitespace() && *c != ':').collect();
    let frame = hex::decode(&digits)?;
    if frame.len() + vnet::LEN > MAX_FRAME {
        return Err(TraceError::FrameTooLong);
    }
    let mut buf = vec![0u8; vnet::LEN];
    buf.extend_from_slice(&frame);
    let len = buf.len();
    let routes = views::routes(&publisher.registry());
    Ok(trace::run(&publisher.snapshot(), &routes, id, buf, len))
}

/// Builds a frame from a pod (port name or `NAMESPACE/POD`) to an address, as the pod's kernel
/// would send it to `gateway_mac`, and traces it.
pub fn trace_flow(publisher: &Publisher, flow: &FlowSpec, gateway_mac: MacAddr) -> Result<TraceView, TraceError> {
    let (id, ip, mac, mtu) = {
        let registry = publisher.registry();
        let pod = registry
            .ports()
            .find(|p| {
                p.info.name == flow.from || p.attachment.pod.as_ref().is_some_and(|pod| pod.to_string() == flow.from)
            })
            .ok_or_else(|| TraceError::NoSuchPod(flow.from.clone()))?;
        let PortRole::Pod { ip, ipv6, mac } = pod.info.role else {
            return Err(TraceError::NotAPod(flow.from.clone()));
        };
        let ip = if flow.to.is_ipv6() { ipv6.map(IpAddr::V6) } else { ip.map(IpAddr::V4) };
        let ip = ip.ok_or_else(|| TraceError::NoAddressOfFamily { from: flow.from.clone(), to: flow.to })?;
        (pod.info.id, ip, mac, pod.info.mtu)
    };
    let (buf, len) = trace::flow_frame(flow, ip, mac, gateway_mac, mtu)?;
    let routes = views::routes(&publisher.registry());
    Ok(trace::run(&publisher.snapshot(), &routes, id, buf, len))
}

/// Drop sampling: on while someone asked for drops lately, off (costing nothing) otherwise.
#[derive(Debug)]
pub struct DropWatch {
    sampler: Arc<DropSampler>,
    /// When drops were last asked for.
    watched_at: Mutex<Option<Instant>>,
}

impl DropWatch {
    /// How long sampling stays on after a request.
    const WATCH_FOR: Duration = Duration::from_secs(5);

    pub fn new(sampler: Arc<DropSampler>) -> DropWatch {
        DropWatch { sampler, watched_at: Mutex::new(None) }
    }

    /// Recent drops from `after` on, with their pods; turns sampling on for `WATCH_FOR`.
    pub fn samples(&self, publisher: &Publisher, after: u64) -> DropsView {
        *self.watched_at.lock().unwrap_or_else(|e| e.into_inner()) = Some(Instant::now());
        self.sampler.set_watching(true);
        let (samples, next) = self.sampler.since(after);
        DropsView { samples: views::drop_samples(samples, &publisher.registry()), next }
    }

    /// Sampling stops when nobody asked for drops for a while.
    pub fn expire(&self) {
        let mut watched = self.watched_at.lock().unwrap_or_else(|e| e.into_inner());
        if watched.is_some_and(|at| at.elapsed() > Self::WATCH_FOR) {
            *watched = None;
            self.sampler.set_watching(false);
        }
    }
}
