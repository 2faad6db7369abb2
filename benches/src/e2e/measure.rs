//! The measurements, each run between the two pods of a [`Topology`]: iperf3 TCP, the 64-byte
//! UDP forwarding rate (our AF_PACKET generator in A, B's receive counter), UDP request-response
//! latency, UDP throughput with segmentation offload (see [`crate::udp_gso`]), and the forwarding
//! process's CPU time from /proc. Each over the family of the topology's addresses (`iperf3 -6`,
//! IPv6/UDP frames, a request-response over IPv6).

use std::net::{IpAddr, SocketAddr};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use vpc_lab::netns::{binary, try_run, TcpRun};

use super::topology::Topology;
use crate::udp_flood::drop_at_receiver;

/// CPU seconds (user + system) a process has used so far, from /proc/PID/stat.
pub fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may contain spaces; fields after its closing parenthesis are fixed.
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let (utime, stime): (u64, u64) = (fields.get(11)?.parse().ok()?, fields.get(12)?.parse().ok()?);
    // SAFETY: sysconf has no preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    Some((utime + stime) as f64 / ticks)
}

/// Resident memory of a process in bytes, from /proc/PID/status.
pub fn rss_bytes(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    Some(line.split_whitespace().nth(1)?.parse::<u64>().ok()? * 1024)
}

/// Busy CPU seconds of the whole machine so far, every core, from /proc/stat (user, nice,
/// system, irq, softirq and steal: everything but idle and iowait).
pub fn machine_busy_seconds() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let fields: Vec<u64> =
        stat.lines().next()?.strip_prefix("cpu ")?.split_whitespace().filter_map(|f| f.parse().ok()).collect();
    let busy: u64 = [0, 1, 2, 5, 6, 7].iter().filter_map(|&i| fields.get(i)).sum();
    // SAFETY: sysconf has no preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    Some(busy as f64 / ticks)
}

/// CPU time the whole machine and the forwarding process spent while some work ran.
#[derive(Debug, Clone, Copy, Default)]
pub struct Load {
    pub wall_s: f64,
    pub machine_s: Option<f64>,
    pub forwarder_s: Option<f64>,
}

impl Load {
    /// CPU seconds per GB moved at `gbps`, from `cpu_s` spent over the whole run (the rate's
    /// window may be shorter than the run: the average busy cores are what count).
    pub fn per_gb(&self, cpu_s: Option<f64>, gbps: f64) -> Option<f64> {
        cpu_s.filter(|_| gbps > 0.0 && self.wall_s > 0.0).map(|s| s / self.wall_s / (gbps / 8.0))
    }
}

/// CPU the forwarding process spent while `work` ran, with `work`'s result.
fn with_cpu<T>(t: &Topology, work: impl FnOnce() -> Option<T>) -> Option<(T, Option<f64>)> {
    let before = t.forwarder_pid.and_then(cpu_seconds);
    let result = work()?;
    let after = t.forwarder_pid.and_then(cpu_seconds);
    Some((result, before.zip(after).map(|(b, a)| a - b)))
}

/// [`with_cpu`], with the whole machine's busy time and the wall time of `work`'s run.
fn with_load<T>(t: &Topology, work: impl FnOnce() -> Option<T>) -> Option<(T, Load)> {
    let (machine, start) = (machine_busy_seconds(), Instant::now());
    let (result, forwarder_s) = with_cpu(t, work)?;
    let wall_s = start.elapsed().as_secs_f64();
    let machine_s = machine.zip(machine_busy_seconds()).map(|(b, a)| a - b);
    Some((result, Load { wall_s, machine_s, forwarder_s }))
}

/// One iperf3 TCP run.
#[derive(Debug, Clone, Copy)]
pub struct Tcp {
    pub gbps: f64,
    pub bytes: f64,
    /// The forwarding process's CPU seconds during the run.
    pub cpu_s: Option<f64>,
    pub load: Load,
}

pub fn iperf3(t: &Topology, streams: u32, seconds: u32) -> Option<Tcp> {
    let ((gbps, bytes), load) = with_load(t, || {
        let run = iperf3_run(&t.a, &t.b, t.b_ip, streams, seconds).map_err(|e| eprintln!("  {e}")).ok()?;
        Some((run.bits_per_second / 1e9, run.bytes))
    })?;
    Some(Tcp { gbps, bytes, cpu_s: load.forwarder_s, load })
}

/// One iperf3 TCP run: a one-shot server in namespace `server` (reached at `server_ip`, with
/// `-6` when that is IPv6), the client in `client`. The toolkit's `vpc_lab::netns::iperf3`,
/// for either family.
pub fn iperf3_run(client: &str, server: &str, server_ip: IpAddr, streams: u32, seconds: u32) -> Result<TcpRun, String> {
    let mut listener = Command::new("ip")
        .args(["netns", "exec", server, "iperf3", "-s", "-1", "-p", "5201"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("iperf3 server: {e}"))?;
    std::thread::sleep(Duration::from_millis(300));
    let (ip, streams, seconds) = (server_ip.to_string(), streams.to_string(), seconds.to_string());
    let mut args = vec!["ip", "netns", "exec", client, "iperf3"];
    if server_ip.is_ipv6() {
        args.push("-6");
    }
    args.extend(["-c", &ip, "-p", "5201", "-t", &seconds, "-P", &streams, "-J"]);
    let out = try_run(&args);
    let _ = listener.kill();
    let _ = listener.wait();
    let report: Value = serde_json::from_slice(&out.stdout).map_err(|e| format!("iperf3 printed no report: {e}"))?;
    let end = &report["end"];
    match (end["sum_received"]["bits_per_second"].as_f64(), end["sum_received"]["bytes"].as_f64()) {
        (Some(bits_per_second), Some(bytes)) => {
            Ok(TcpRun { bits_per_second, bytes, retransmits: end["sum_sent"]["retransmits"].as_u64().unwrap_or(0) })
        }
        _ => Err(format!("iperf3: {} {}", report["error"], end)),
    }
}

/// Request-response latency percentiles (p50, p99) in microseconds over `count` round trips.
pub fn rr(t: &Topology, count: u32) -> Option<(f64, f64)> {
    let tool = binary("vpc-bench");
    let bind = if t.b_ip.is_ipv6() { "::" } else { "0.0.0.0" };
    let mut server = Command::new("ip")
        .args(["netns", "exec", &t.b])
        .arg(&tool)
        .args(["rr-server", "--port", "7777", "--bind", bind])
        .stdout(Stdio::null())
        .spawn()
        .ok()?;
    std::thread::sleep(Duration::from_millis(200));
    let out = Command::new("ip")
        .args(["netns", "exec", &t.a])
        .arg(&tool)
        .args(["rr-client", &SocketAddr::new(t.b_ip, 7777).to_string(), "--count", &count.to_string()])
        .output()
        .ok()?;
    let _ = server.kill();
    let _ = server.wait();
    let v: Value = serde_json::from_slice(&out.stdout).ok()?;
    Some((v["p50_us"].as_f64()?, v["p99_us"].as_f64()?))
}

/// One UDP GSO run: payload B received in its window, and what A sent in its whole run.
#[derive(Debug, Clone, Copy)]
pub struct UdpGso {
    pub gbps: f64,
    pub received_bytes: u64,
    pub sent_bytes: u64,
    pub load: Load,
}

const GSO_PORT: u16 = 5300;

/// UDP GSO throughput from A to B over `seconds`: `vpc-bench udp-sink` in B counts what arrives
/// in the `seconds` after its first datagram, `vpc-bench udp-gso-send` in A sends for a second
/// longer so the window lies inside its run (received can never exceed sent).
pub fn udp_gso(t: &Topology, seconds: u32) -> Option<UdpGso> {
    let tool = binary("vpc-bench");
    let bind = if t.b_ip.is_ipv6() { "::" } else { "0.0.0.0" };
    let sink = Command::new("ip")
        .args(["netns", "exec", &t.b])
        .arg(&tool)
        .args(["udp-sink", "--port", &GSO_PORT.to_string(), "--seconds", &seconds.to_string(), "--bind", bind])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .ok()?;
    std::thread::sleep(Duration::from_millis(200));
    // The load is taken over the sender's run, which holds the sink's window.
    let (sent, load) = with_load(t, || {
        Command::new("ip")
            .args(["netns", "exec", &t.a])
            .arg(&tool)
            .args(["udp-gso-send", &SocketAddr::new(t.b_ip, GSO_PORT).to_string()])
            .args(["--seconds", &(seconds + 1).to_string()])
            .output()
            .ok()
    })?;
    let received = sink.wait_with_output().ok()?;
    let json = |out: &std::process::Output, what: &str| -> Option<Value> {
        let v = serde_json::from_slice(&out.stdout).ok();
        if v.is_none() {
            eprintln!("  {what} failed: {}", String::from_utf8_lossy(&out.stderr).trim());
        }
        v
    };
    let (sent, received) = (json(&sent, "udp-gso-send")?, json(&received, "udp-sink")?);
    if received["bytes"].as_u64() == Some(0) {
        eprintln!("  udp-sink: no datagram arrived");
        return None;
    }
    Some(UdpGso {
        gbps: received["gbps"].as_f64()?,
        received_bytes: received["bytes"].as_u64()?,
        sent_bytes: sent["bytes"].as_u64()?,
        load,
    })
}

/// Frames B's interface has received.
fn rx_packets(t: &Topology) -> Option<u64> {
    let out =
        try_run(&["ip", "netns", "exec", &t.b, "cat", &format!("/sys/class/net/{}/statistics/rx_packets", t.b_dev)]);
    String::from_utf8_lossy(&out.stdout).trim().parse().ok()
}

/// One 64-byte UDP flood.
#[derive(Debug, Clone, Copy)]
pub struct Flood {
    /// Frames per second B received.
    pub delivered_pps: f64,
    /// The generator's average over its whole run (warm-up included).
    pub sent_pps: f64,
    /// Frames B received in the measured window, and frames the generator sent in all: the
    /// window lies inside the generator's run, so the first can never exceed the second.
    pub delivered: u64,
    pub sent: u64,
    pub cpu_s: Option<f64>,
}

/// The flood's destination port (B listens on none).
const FLOOD_PORT: u16 = 9;

/// Floods B from A with 64-byte UDP frames (62-byte IPv6 frames over IPv6, see
/// [`crate::udp_flood`]) (`flows` source ports) and counts what B receives
/// over `seconds`, after half a second of warm-up; B drops them once counted (see
/// [`drop_at_receiver`]).
pub fn udp64(t: &Topology, seconds: u32, flows: u16) -> Option<Flood> {
    if let Err(e) = drop_at_receiver(&t.b, FLOOD_PORT, t.b_ip.is_ipv6()) {
        eprintln!("  udp64: {e}");
        return None;
    }
    let tool = binary("vpc-bench");
    let generator = Command::new("ip")
        .args(["netns", "exec", &t.a])
        .arg(&tool)
        .args([
            "udp-flood",
            &SocketAddr::new(t.b_ip, FLOOD_PORT).to_string(),
            "--seconds",
            &(seconds + 1).to_string(),
            "--flows",
            &flows.to_string(),
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .ok()?;
    std::thread::sleep(Duration::from_millis(500));
    let start = Instant::now();
    let measured = with_cpu(t, || {
        let before = rx_packets(t)?;
        std::thread::sleep(Duration::from_secs(seconds.into()));
        Some(rx_packets(t)? - before)
    });
    let elapsed = start.elapsed().as_secs_f64();
    let out = generator.wait_with_output().ok()?;
    let sent: Value = match serde_json::from_slice(&out.stdout) {
        Ok(v) => v,
        Err(_) => {
            eprintln!("  udp-flood failed: {}", String::from_utf8_lossy(&out.stderr).trim());
            return None;
        }
    };
    let (delivered, cpu_s) = measured?;
    Some(Flood {
        delivered_pps: delivered as f64 / elapsed,
        sent_pps: sent["pps"].as_f64()?,
        delivered,
        sent: sent["sent"].as_u64()?,
        cpu_s,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_per_gb_is_busy_cores_over_the_rate() {
        let load = Load { wall_s: 2.0, machine_s: Some(4.0), forwarder_s: Some(1.0) };
        // 2 cores busy moving 1 GB/s: 2 CPU seconds per GB; the forwarder's half a core, 0.5.
        assert_eq!(load.per_gb(load.machine_s, 8.0), Some(2.0));
        assert_eq!(load.per_gb(load.forwarder_s, 8.0), Some(0.5));
        assert_eq!(load.per_gb(load.machine_s, 0.0), None, "nothing moved: no cost per GB");
        assert_eq!(load.per_gb(None, 8.0), None);
    }

    #[test]
    fn the_machine_busy_time_grows_while_a_core_spins() {
        let before = machine_busy_seconds().expect("/proc/stat");
        let spin = Instant::now();
        while spin.elapsed() < Duration::from_millis(300) {
            std::hint::black_box(0u64);
        }
        let after = machine_busy_seconds().unwrap();
        assert!(after - before >= 0.2, "spun 0.3 s, the machine counted {:.2} s busy", after - before);
    }
}
