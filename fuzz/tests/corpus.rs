//! Replays the committed corpus (seeded from captured frames, grown by fuzzing, plus every crash
//! ever found) through the fuzz checks on the stable toolchain.

use std::path::Path;

fn replay(target: &str, check: fn(&[u8])) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus").join(target);
    let mut count = 0;
    for entry in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let path = entry.expect("entry").path();
        let data = std::fs::read(&path).expect("read corpus file");
        let outcome = std::panic::catch_unwind(|| check(&data));
        assert!(outcome.is_ok(), "{target}: {} fails", path.display());
        count += 1;
    }
    assert!(count > 0, "{target}: empty corpus");
}

#[test]
fn ethernet() {
    replay("ethernet", vpc_fuzz::ethernet);
}
#[test]
fn arp() {
    replay("arp", vpc_fuzz::arp);
}
#[test]
fn ipv4() {
    replay("ipv4", vpc_fuzz::ipv4);
}
#[test]
fn vnet() {
    replay("vnet", vpc_fuzz::vnet);
}
#[test]
fn icmp() {
    replay("icmp", vpc_fuzz::icmp);
}
#[test]
fn pipeline() {
    replay("pipeline", vpc_fuzz::pipeline);
}
#[test]
fn fib() {
    replay("fib", vpc_fuzz::fib);
}
#[test]
fn cni_input() {
    replay("cni_input", vpc_fuzz::cni_input);
}
#[test]
fn control_request() {
    replay("control_request", vpc_fuzz::control_request);
}
