//! vswitchd with `[ipam] provider = "aws"` and only IRSA's environment (as the EKS pod identity
//! webhook injects it: `AWS_WEB_IDENTITY_TOKEN_FILE`, `AWS_ROLE_ARN`, `AWS_ROLE_SESSION_NAME`,
//! here `AWS_ENDPOINT_URL_STS` too): it trades the token file's content at moto's STS
//! (`AssumeRoleWithWebIdentity`, which moto answers for any token and role) for temporary keys,
//! signs its EC2 calls with them, and reads the token file again at each renewal, before expiry
//! and after EC2 refused the keys. Recording hops in front of STS and of EC2 (moto checks neither
//! tokens nor signatures) keep what went out. A token file that is not there: vswitchd refuses to
//! start, it does not fall through to the instance profile. Needs root and the tests' venv with
//! moto (tests/install-deps.sh).

use std::path::Path;
use std::process::Command;
use std::time::{Duration, SystemTime};

use serde_json::Value;
use vpc_lab::ec2::{wait_for_ipam, Ec2Lab, Recorded, RecordingHop, REGION};
use vpc_lab::netns::{require_root, Binaries, Daemon, Netns, TempDir};
use vswitch::ipam::provider::aws::enis::rfc3339;

const ROLE_ARN: &str = "arn:aws:iam::123456789012:role/vpc-cni-irsa";
const SESSION: &str = "vswitchd-node-a";

fn bins() -> Binaries {
    Binaries { vswitchd: env!("CARGO_BIN_EXE_vswitchd").into(), vswitchctl: env!("CARGO_BIN_EXE_vswitchctl").into() }
}

/// vswitchd.toml: EC2 through `ec2`; IMDS at a closed port, so a fall-through to the instance
/// profile could not succeed.
fn config(subnet: &str, instance: &str, ec2: &str) -> String {
    format!(
        "[ipam]\nprovider = \"aws\"\n[ipam.aws]\nregion = \"{REGION}\"\nsubnet_id = \"{subnet}\"\n\
         instance_id = \"{instance}\"\nendpoint = \"{ec2}\"\nimds_endpoint = \"http://127.0.0.1:1\"\n\
         WARM_IP_TARGET = 1\nIP_COOLDOWN_PERIOD = 0\nrequire_eni_interface = false\n"
    )
}

/// IRSA's environment and nothing else of the chain (a `HOME` without `.aws`).
fn irsa_env(token_file: &Path, sts: &str, home: &Path) -> Vec<(String, String)> {
    assert!(std::env::var_os("AWS_ACCESS_KEY_ID").is_none(), "the test's own environment has AWS keys");
    [
        ("AWS_WEB_IDENTITY_TOKEN_FILE", token_file.to_str().unwrap()),
        ("AWS_ROLE_ARN", ROLE_ARN),
        ("AWS_ROLE_SESSION_NAME", SESSION),
        ("AWS_ENDPOINT_URL_STS", sts),
        ("HOME", home.to_str().unwrap()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect()
}

/// The text of `<name>` in an XML reply.
fn element(xml: &str, name: &str) -> String {
    let start = xml.find(&format!("<{name}>")).unwrap_or_else(|| panic!("no {name} in {xml}")) + name.len() + 2;
    xml[start..start + xml[start..].find('<').unwrap()].to_string()
}

/// The keys STS handed out in `call`: access key id and session token.
fn issued(call: &Recorded) -> (String, String) {
    (element(&call.reply, "AccessKeyId"), element(&call.reply, "SessionToken"))
}

#[test]
fn ec2_calls_carry_the_keys_sts_traded_for_the_token_file_read_again_at_each_renewal() {
    require_root();
    let dir = TempDir::new();
    let node = Netns::new("vwid");
    let lab = Ec2Lab::start(Some(&node.name), "t3.small", 1);
    let (ec2, sts) =
        (RecordingHop::start(Some(node.path()), &lab.endpoint), RecordingHop::start(Some(node.path()), &lab.upstream));
    let token_file = dir.0.join("token");
    std::fs::write(&token_file, "token-one").unwrap();
    // STS's first keys expire within the 5 minutes before which they are renewed: the next EC2
    // call renews them. kubelet rotates the token meanwhile (before STS's answer is out).
    let rotate = token_file.clone();
    sts.before_next_reply(Box::new(move |_, reply| {
        std::fs::write(&rotate, "token-two").unwrap();
        let soon = rfc3339(SystemTime::now() + Duration::from_secs(120));
        reply.replace(&element(&reply, "Expiration"), &soon)
    }));
    let env = irsa_env(&token_file, &sts.endpoint, &dir.0);
    let config = config(&lab.subnet, &lab.instances[0], &ec2.endpoint);
    let daemon = Daemon::start_with_config_env(&bins(), &node, &dir.0.join("vswitchd"), 1, &config, &env);
    wait_for_ipam(&daemon, "the warm pool filled", Duration::from_secs(30), |v| {
        v["provider"]["warm"].as_array().is_some_and(|w| w.len() == 1)
    });

    let calls = sts.calls();
    assert!(calls.len() >= 2, "STS asked at first use and when the first keys were about to expire: {calls:#?}");
    for (call, token) in calls.iter().zip(["token-one", "token-two"]) {
        assert_eq!(call.param("Action").as_deref(), Some("AssumeRoleWithWebIdentity"), "{call:#?}");
        assert_eq!(call.param("WebIdentityToken").as_deref(), Some(token), "the token file as it is now: {call:#?}");
        assert_eq!(call.param("RoleArn").as_deref(), Some(ROLE_ARN));
        assert_eq!(call.param("RoleSessionName").as_deref(), Some(SESSION));
        assert_eq!(call.access_key(), "", "AssumeRoleWithWebIdentity is not signed");
    }
    let (first, second) = (issued(&calls[0]), issued(&calls[1]));
    assert!(first.0.starts_with("ASIA") && first.0 != second.0, "{first:?} {second:?}");
    let signed: Vec<(String, String)> = ec2.calls().iter().map(|c| (c.access_key(), c.session_token())).collect();
    assert_eq!(signed.first(), Some(&first), "the first EC2 call: STS's first keys with their session token");
    assert!(signed.contains(&second), "after the renewal, the second keys: {signed:?}");
    assert!(signed.iter().all(|s| *s == first || *s == second), "only STS's keys, each with its token: {signed:?}");

    // EC2 refuses the current keys (revoked): renewed at once, with the token kubelet rotated.
    std::fs::write(&token_file, "token-three").unwrap();
    let before = ec2.calls().len();
    ec2.refuse_next.store(true, std::sync::atomic::Ordering::SeqCst);
    let view = daemon.ctl_json(&["ipam"]);
    assert_eq!(view["store_reachable"], true, "DescribeSubnets retried with fresh keys: {view:#}");
    let calls = sts.calls();
    let last = calls.last().unwrap();
    assert_eq!(last.param("WebIdentityToken").as_deref(), Some("token-three"), "{calls:#?}");
    let after = ec2.calls()[before + 1..].to_vec();
    let third = issued(last);
    assert!(after.iter().any(|c| (c.access_key(), c.session_token()) == third), "retried with {third:?}: {after:#?}");

    let identity = view["provider"]["identity"].as_str().unwrap_or_default().to_string();
    assert!(identity.contains(&format!("web identity: role {ROLE_ARN}")), "{identity}");
    assert!(identity.contains(&format!("assumed-role/vpc-cni-irsa/{SESSION}")), "{identity}");
    // `vswitchctl doctor` in vswitchd's environment names the same link.
    let doctor = Command::new("ip")
        .args(["netns", "exec", &node.name, env!("CARGO_BIN_EXE_vswitchctl"), "--json", "doctor", "--config"])
        .arg(dir.0.join("vswitchd/vswitchd.toml"))
        .arg("--conflist")
        .arg(dir.0.join("no.conflist"))
        .envs(env)
        .output()
        .unwrap();
    let checks: Value = serde_json::from_slice(&doctor.stdout).unwrap_or(Value::Null);
    let vpc_api = checks.as_array().and_then(|l| l.iter().find(|c| c["check"] == "vpc_api")).cloned();
    let vpc_api = vpc_api.unwrap_or_else(|| panic!("no vpc_api check: {}", String::from_utf8_lossy(&doctor.stdout)));
    let detail = vpc_api["detail"].as_str().unwrap_or_default();
    assert_eq!(vpc_api["status"], "ok", "{vpc_api:#}");
    assert!(detail.contains(&format!("credentials from web identity: role {ROLE_ARN}")), "{detail}");
    assert_eq!(sts.calls().last().unwrap().param("WebIdentityToken").as_deref(), Some("token-three"));
    // Neither the token nor the keys in vswitchd's log.
    let logs = daemon.logs();
    assert!(logs.contains("EC2 credentials fetched") && logs.contains("web identity"), "{logs}");
    let secrets = calls.iter().flat_map(|c| [element(&c.reply, "SecretAccessKey"), element(&c.reply, "SessionToken")]);
    for secret in secrets.chain(["token-one", "token-two", "token-three"].map(String::from)) {
        assert!(!logs.contains(&secret), "{secret} is in vswitchd's log");
    }
}

#[test]
fn without_its_token_file_vswitchd_refuses_to_start_instead_of_using_the_instance_profile() {
    require_root();
    let dir = TempDir::new();
    let node = Netns::new("vwim");
    std::fs::write(dir.0.join("vswitchd.toml"), config("subnet-1", "i-1", "http://127.0.0.1:2")).unwrap();
    let missing = dir.0.join("no-such-token");
    let out = Command::new("timeout")
        .args(["20", "ip", "netns", "exec", &node.name, env!("CARGO_BIN_EXE_vswitchd"), "--config"])
        .arg(dir.0.join("vswitchd.toml"))
        .arg("--socket")
        .arg(dir.0.join("vswitchd.sock"))
        .arg("--state-dir")
        .arg(dir.0.join("state"))
        .args(["--host-port", "vsw0", "--workers", "1", "--metrics-addr", "127.0.0.1:9477"])
        .envs(irsa_env(&missing, "http://127.0.0.1:1", &dir.0))
        .output()
        .unwrap();
    let said = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert_ne!(out.status.code(), Some(124), "vswitchd kept running without its token file: {said}");
    assert!(!out.status.success(), "{said}");
    assert!(
        said.contains(&format!("the web identity token file {}", missing.display()))
            && said.contains("AWS_WEB_IDENTITY_TOKEN_FILE")
            && said.contains("projected volume"),
        "{said}"
    );
}
