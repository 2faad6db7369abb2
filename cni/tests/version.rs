//! `vpc-cni --version` is for people: it prints the plugin's and the CNI versions and exits 0
//! without reading stdin (a runtime never passes arguments, it sets CNI_COMMAND).

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

#[test]
fn version_flag_prints_versions_without_reading_stdin() {
    // stdin is a pipe nobody writes to or closes: reading it would block until the deadline.
    let mut child = Command::new(env!("CARGO_BIN_EXE_vpc-cni"))
        .arg("--version")
        .env_remove("CNI_COMMAND")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("run vpc-cni");
    let _stdin = child.stdin.take();
    let deadline = Instant::now() + Duration::from_secs(10);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            child.kill().unwrap();
            panic!("vpc-cni --version waited for stdin");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.starts_with(&format!("vpc-cni {}\n", env!("CARGO_PKG_VERSION"))), "{text}");
    for v in cni::spec::supported_versions() {
        assert!(text.contains(&v), "{text} lacks {v}");
    }
}
