//! Does the fabric deliver a new secondary IP yet? A cloud's API answers `AllocateSecondaryIp`
//! before its SDN delivers the address (the flow-table push), so an address handed out at once
//! loses the pod's first packets. As UK8S's plugin does with arping, the node asks for the VPC
//! gateway's MAC in an ARP request sent on the NIC with the new address as sender: the SDN drops
//! it (and anything to the address) until it knows the address is this NIC's, so the gateway's
//! reply to the new address is the proof that the fabric delivers it.
//!
//! [`FabricProbe`] is the seam (a fake in the pool's tests); [`ArpProbe`] the real one: a raw
//! AF_PACKET socket on the NIC found by its MAC, a request every [`RESEND`] until the reply or
//! the timeout. [`ProbeStats`] keeps the histogram and the last probe for metrics and views.

use std::future::Future;
use std::net::{IpAddr, Ipv4Addr};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::wire::{arp, EtherType, EthernetFrame, MacAddr};

/// How often the request is sent again while the fabric drops it.
pub const RESEND: Duration = Duration::from_millis(100);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProbeError {
    #[error("the fabric did not deliver {ip} within {timeout:?}")]
    TimedOut { ip: IpAddr, timeout: Duration },
    #[error("cannot probe {0}: the ARP probe is IPv4 only")]
    NotIpv4(IpAddr),
    #[error("no interface has the NIC's MAC {0}")]
    NoInterface(String),
    #[error("no gateway to probe: set ipam.ucloud.fabric_probe_target (no IPv4 default route)")]
    NoGateway,
    #[error("ARP probe socket: {0}")]
    Io(String),
}

impl ProbeError {
    /// The outcome as views and logs name it.
    pub fn kind(&self) -> &'static str {
        match self {
            ProbeError::TimedOut { .. } => "timeout",
            _ => "error",
        }
    }
}

/// Waits until the fabric delivers `ip` on the NIC with MAC `nic`, or `timeout` passes.
pub trait FabricProbe: Send + Sync + 'static {
    fn probe(&self, nic: &str, ip: IpAddr, timeout: Duration) -> impl Future<Output = Result<(), ProbeError>> + Send;
    /// Whether the node has an interface with the MAC `nic` (without probing).
    fn has_interface(&self, _nic: &str) -> bool {
        true
    }
}

/// The ARP probe on the node's VPC NIC that holds the address (the provider names its MAC:
/// [`super::VpcProvider::fabric_probe_mac`]); its interface is looked up at each probe (it may
/// come later than vswitchd, and be renamed).
#[derive(Debug, Clone)]
pub struct ArpProbe {
    /// Whom to ask; none: the node's IPv4 default gateway.
    target: Option<Ipv4Addr>,
}

impl ArpProbe {
    pub fn new(target: Option<Ipv4Addr>) -> ArpProbe {
        ArpProbe { target }
    }
}

impl FabricProbe for ArpProbe {
    async fn probe(&self, nic: &str, ip: IpAddr, timeout: Duration) -> Result<(), ProbeError> {
        let IpAddr::V4(ip) = ip else { return Err(ProbeError::NotIpv4(ip)) };
        let (nic, target) = (nic.to_ascii_lowercase(), self.target);
        tokio::task::spawn_blocking(move || {
            let mac: MacAddr = nic.parse().map_err(|_| ProbeError::NoInterface(nic.clone()))?;
            let ifindex = interface_with_mac(&nic).ok_or_else(|| ProbeError::NoInterface(nic.clone()))?;
            let gateway = target.or_else(default_gateway).ok_or(ProbeError::NoGateway)?;
            arp_until_answered(ifindex, mac, ip, gateway, timeout)
        })
        .await
        .map_err(|e| ProbeError::Io(e.to_string()))?
    }

    fn has_interface(&self, nic: &str) -> bool {
        interface_with_mac(&nic.to_ascii_lowercase()).is_some()
    }
}

/// The index of the interface whose MAC is `mac` (lower case, colons).
fn interface_with_mac(mac: &str) -> Option<u32> {
    interface_field(mac, "ifindex")?.parse().ok()
}

/// Whether an interface of this network namespace has the MAC `mac` and is up (`IFF_UP`).
pub fn interface_up_with_mac(mac: &str) -> bool {
    let flags = interface_field(&mac.to_ascii_lowercase(), "flags");
    flags.and_then(|f| u32::from_str_radix(f.trim_start_matches("0x"), 16).ok()).is_some_and(|f| f & 1 != 0)
}

/// The sysfs attribute `field` of the interface whose MAC is `mac`.
fn interface_field(mac: &str, field: &str) -> Option<String> {
    std::fs::read_dir("/sys/class/net").ok()?.flatten().find_map(|entry| {
        let address = std::fs::read_to_string(entry.path().join("address")).ok()?;
        if address.trim() != mac {
            return None;
        }
        Some(std::fs::read_to_string(entry.path().join(field)).ok()?.trim().to_string())
    })
}

/// The gateway of the IPv4 default route (`/proc/net/route`: little-endian hex).
fn default_gateway() -> Option<Ipv4Addr> {
    let routes = std::fs::read_to_string("/proc/net/route").ok()?;
    routes.lines().skip(1).find_map(|line| {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.get(1) != Some(&"00000000") || f.get(7) != Some(&"00000000") {
            return None;
        }
        let gw = u32::from_str_radix(f.get(2)?, 16).ok()?;
        (gw != 0).then(|| Ipv4Addr::from(gw.swap_bytes()))
    })
}

/// An ARP request from `(mac, ip)` for `gateway`, in an Ethernet broadcast frame.
pub(crate) fn request_frame(mac: MacAddr, ip: Ipv4Addr, gateway: Ipv4Addr) -> Vec<u8> {
    let mut frame = vec![0u8; crate::wire::ethernet::HEADER_LEN + arp::PACKET_LEN];
    {
        let mut eth = EthernetFrame::new_checked(&mut frame[..]).expect("long enough");
        eth.set_dst(MacAddr::BROADCAST);
        eth.set_src(mac);
        eth.set_ethertype(EtherType::Arp);
        arp::emit(eth.payload_mut(), arp::Operation::Request, (mac, ip), (MacAddr([0; 6]), gateway));
    }
    frame
}

/// Whether `frame` is `gateway`'s ARP reply to `ip`.
pub(crate) fn is_reply(frame: &[u8], ip: Ipv4Addr, gateway: Ipv4Addr) -> bool {
    let Ok(eth) = EthernetFrame::new_checked(frame) else { return false };
    if eth.ethertype() != EtherType::Arp {
        return false;
    }
    let Ok(packet) = arp::ArpPacket::new_checked(eth.payload()) else { return false };
    packet.operation() == arp::Operation::Reply && packet.sender_ip() == gateway && packet.target_ip() == ip
}

fn os_error(what: &str) -> ProbeError {
    ProbeError::Io(format!("{what}: {}", std::io::Error::last_os_error()))
}

/// Sends the request every [`RESEND`] until the reply comes or `timeout` passes.
fn arp_until_answered(
    ifindex: u32,
    mac: MacAddr,
    ip: Ipv4Addr,
    gateway: Ipv4Addr,
    timeout: Duration,
) -> Result<(), ProbeError> {
    const ETH_P_ARP: u16 = 0x0806;
    // SAFETY: plain socket(2) call.
    let raw = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW | libc::SOCK_CLOEXEC, ETH_P_ARP.to_be().into()) };
    if raw < 0 {
        return Err(os_error("socket"));
    }
    // SAFETY: `raw` is a fresh descriptor we own.
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
    // SAFETY: sockaddr_ll is plain data; zeroed is a valid starting value.
    let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    addr.sll_family = libc::AF_PACKET as libc::c_ushort;
    addr.sll_protocol = ETH_P_ARP.to_be();
    addr.sll_ifindex = ifindex as i32;
    let addr_len = std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t;
    // SAFETY: `addr` is a valid sockaddr_ll and its size is passed.
    if unsafe { libc::bind(fd.as_raw_fd(), (&addr as *const libc::sockaddr_ll).cast(), addr_len) } < 0 {
        return Err(os_error("bind"));
    }
    let wait = libc::timeval { tv_sec: 0, tv_usec: 20_000 };
    // SAFETY: `wait` lives across the call and its size is passed.
    let set = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            (&wait as *const libc::timeval).cast(),
            std::mem::size_of::<libc::timeval>() as libc::socklen_t,
        )
    };
    if set < 0 {
        return Err(os_error("SO_RCVTIMEO"));
    }
    let request = request_frame(mac, ip, gateway);
    let deadline = Instant::now() + timeout;
    let mut next_send = Instant::now();
    let mut buf = [0u8; 1600];
    loop {
        let now = Instant::now();
        if now >= deadline {
            return Err(ProbeError::TimedOut { ip: IpAddr::V4(ip), timeout });
        }
        if now >= next_send {
            // SAFETY: `request` is valid for reads of its length (the socket is bound: send(2)
            // goes out on the NIC).
            if unsafe { libc::send(fd.as_raw_fd(), request.as_ptr().cast(), request.len(), 0) } < 0 {
                return Err(os_error("send"));
            }
            next_send = now + RESEND;
        }
        // SAFETY: `buf` is valid for writes of its length.
        let n = unsafe { libc::recv(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
        if n > 0 && is_reply(&buf[..n as usize], ip, gateway) {
            return Ok(());
        }
    }
}

/// Upper bounds of the histogram's buckets, in seconds (the last, +Inf, is implied).
const BUCKETS: [f64; 10] = [0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 3.0, 5.0, 10.0, 30.0];

/// The last probe.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LastProbe {
    pub ip: IpAddr,
    pub seconds: f64,
    /// `delivered`, `timeout` or `error`.
    pub result: &'static str,
}

/// Every probe's time: a histogram, how many did not end in delivery, and the last.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct ProbeReport {
    pub count: u64,
    pub sum_seconds: f64,
    /// `(upper bound, probes in this bucket alone)`, the last bound `f64::MAX` (+Inf).
    pub buckets: Vec<(f64, u64)>,
    pub timeouts: u64,
    pub errors: u64,
    pub last: Option<LastProbe>,
}

#[derive(Debug, Default)]
pub struct ProbeStats {
    inner: Mutex<ProbeReport>,
}

impl ProbeStats {
    pub fn record(&self, ip: IpAddr, took: Duration, result: &Result<(), ProbeError>) {
        let mut r = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        if r.buckets.is_empty() {
            r.buckets = BUCKETS.iter().chain(&[f64::MAX]).map(|b| (*b, 0)).collect();
        }
        let seconds = took.as_secs_f64();
        r.count += 1;
        r.sum_seconds += seconds;
        if let Some(bucket) = r.buckets.iter_mut().find(|(bound, _)| seconds <= *bound) {
            bucket.1 += 1;
        }
        match result {
            Err(ProbeError::TimedOut { .. }) => r.timeouts += 1,
            Err(_) => r.errors += 1,
            Ok(()) => {}
        }
        let result = result.as_ref().map_or_else(ProbeError::kind, |()| "delivered");
        r.last = Some(LastProbe { ip, seconds, result });
    }

    pub fn report(&self) -> ProbeReport {
        self.inner.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_request_asks_the_gateway_from_the_new_address_and_only_its_reply_counts() {
        let mac = MacAddr([0x52, 0x54, 0, 0x0a, 0, 0x0b]);
        let (ip, gw) = (Ipv4Addr::new(10, 10, 64, 7), Ipv4Addr::new(10, 10, 0, 1));
        let frame = request_frame(mac, ip, gw);
        let eth = EthernetFrame::new_checked(&frame[..]).unwrap();
        assert_eq!((eth.dst(), eth.src(), eth.ethertype()), (MacAddr::BROADCAST, mac, EtherType::Arp));
        let packet = arp::ArpPacket::new_checked(eth.payload()).unwrap();
        assert_eq!((packet.operation(), packet.sender_ip(), packet.target_ip()), (arp::Operation::Request, ip, gw));
        assert!(!is_reply(&frame, ip, gw), "our own request is no answer");
        let mut reply = frame.clone();
        {
            let mut eth = EthernetFrame::new_checked(&mut reply[..]).unwrap();
            let mut packet = arp::ArpPacket::new_checked(eth.payload_mut()).unwrap();
            packet.make_reply(MacAddr([2, 0, 0, 0, 0, 1]));
        }
        assert!(is_reply(&reply, ip, gw));
        assert!(!is_reply(&reply, Ipv4Addr::new(10, 10, 64, 8), gw), "a reply to another address");
    }

    #[test]
    fn the_histogram_counts_each_probe_once_and_keeps_the_last() {
        let stats = ProbeStats::default();
        let ip: IpAddr = "10.10.64.7".parse().unwrap();
        stats.record(ip, Duration::from_millis(30), &Ok(()));
        stats.record(ip, Duration::from_millis(2900), &Ok(()));
        let timeout = Duration::from_secs(5);
        stats.record(ip, timeout, &Err(ProbeError::TimedOut { ip, timeout }));
        let r = stats.report();
        assert_eq!((r.count, r.timeouts, r.errors), (3, 1, 0));
        assert_eq!(r.buckets.iter().map(|b| b.1).sum::<u64>(), 3);
        assert_eq!(r.buckets.iter().find(|b| b.0 == 3.0).unwrap().1, 1, "2.9 s in the <= 3 s bucket");
        assert_eq!(r.last, Some(LastProbe { ip, seconds: 5.0, result: "timeout" }));
    }
}
