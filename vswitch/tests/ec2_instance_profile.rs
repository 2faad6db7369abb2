//! `[ipam] provider = "aws"` on an EC2 node without keys in the environment or a credentials
//! file: the chain's last link, the instance profile through IMDSv2. A fake IMDS (in this
//! process) hands out the role's credentials in turn; EC2 is moto behind the lab's proxy
//! (vpc_lab::ec2), with a recording hop in front that keeps each call's `Authorization` and
//! `X-Amz-Security-Token` (moto checks neither) and can refuse one call with `AuthFailure`.
//! Needs the tests' venv with moto (tests/install-deps.sh); no root.

use std::collections::VecDeque;
use std::io::Write;
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use vpc_lab::ec2::{header, read_request, reply, Ec2Lab, RecordingHop, REGION};
use vswitch::ipam::provider::aws::config::AwsConfig;
use vswitch::ipam::provider::aws::credentials::CredentialSource;
use vswitch::ipam::provider::aws::enis::rfc3339;
use vswitch::ipam::provider::aws::Ec2;
use vswitch::ipam::provider::{ProviderError, VpcProvider};

const ROLE: &str = "vpc-node-role";

fn answer(stream: &mut TcpStream, status: &str, body: &str) {
    let _ = stream.write_all(&reply(status, body));
}

/// A key pair the fake IMDS hands out: access key id, and its expiry from now.
#[derive(Clone, Copy)]
struct Issue(&'static str, Duration);

/// IMDSv2 with one role: the token, the role's name, then the next of `issues` at each ask for
/// the role's credentials (the last one again once they run out). Records `METHOD path` of each
/// request, with `!` appended when a GET came without the session token.
fn fake_imds(issues: Vec<Issue>) -> (String, Arc<Mutex<Vec<String>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let endpoint = format!("http://{}", listener.local_addr().unwrap());
    let asked = Arc::new(Mutex::new(Vec::new()));
    let log = asked.clone();
    std::thread::spawn(move || {
        let mut issues: VecDeque<Issue> = issues.into();
        for mut stream in listener.incoming().map_while(Result::ok) {
            let (head, _) = read_request(&mut stream);
            let Some(line) = head.first() else { continue };
            let (method, path) = line.split_once(' ').map(|(m, r)| (m, r.split(' ').next().unwrap())).unwrap();
            let tokened = header(&head, "X-aws-ec2-metadata-token").as_deref() == Some("imds-session");
            log.lock().unwrap().push(format!("{method} {path}{}", if method == "GET" && !tokened { "!" } else { "" }));
            let roles = "/latest/meta-data/iam/security-credentials/";
            match (method, path.strip_prefix(roles)) {
                ("PUT", _) if path == "/latest/api/token" => answer(&mut stream, "200 OK", "imds-session"),
                ("GET", _) if !tokened => answer(&mut stream, "401 Unauthorized", ""),
                ("GET", Some("")) => answer(&mut stream, "200 OK", ROLE),
                ("GET", Some(ROLE)) => {
                    let Issue(key, lifetime) = if issues.len() > 1 { issues.pop_front().unwrap() } else { issues[0] };
                    let document = serde_json::json!({
                        "Code": "Success", "LastUpdated": rfc3339(SystemTime::now()), "Type": "AWS-HMAC",
                        "AccessKeyId": key, "SecretAccessKey": format!("secret-of-{key}"),
                        "Token": format!("token-of-{key}"), "Expiration": rfc3339(SystemTime::now() + lifetime),
                    });
                    answer(&mut stream, "200 OK", &document.to_string());
                }
                _ => answer(&mut stream, "404 Not Found", ""),
            }
        }
    });
    (endpoint, asked)
}

fn config(lab: &Ec2Lab, endpoint: &str, imds: &str) -> AwsConfig {
    toml::from_str(&format!(
        "region = \"{REGION}\"\nsubnet_id = \"{}\"\ninstance_id = \"{}\"\nendpoint = \"{endpoint}\"\n\
         imds_endpoint = \"{imds}\"",
        lab.subnet, lab.instances[0]
    ))
    .unwrap()
}

/// The chain with nothing in the environment and no credentials file: the instance profile.
fn instance_profile_chain(config: &AwsConfig, home: &std::path::Path) -> CredentialSource {
    let home = home.display().to_string();
    let source = CredentialSource::chain(move |name| (name == "HOME").then(|| home.clone()), config).unwrap();
    assert!(matches!(source, CredentialSource::InstanceProfile(_)), "{source:?}");
    source
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_are_signed_with_the_instance_profiles_credentials_renewed_before_expiry_and_after_a_refusal() {
    let lab = Ec2Lab::start(None, "t3.small", 1);
    let hop = RecordingHop::start(None, &lab.endpoint);
    // ASIAFIRST expires within the 5 minutes before which the SDKs renew: used once, then renewed.
    let (imds, asked) = fake_imds(vec![
        Issue("ASIAFIRST", Duration::from_secs(120)),
        Issue("ASIASECOND", Duration::from_secs(6 * 3600)),
        Issue("ASIATHIRD", Duration::from_secs(6 * 3600)),
    ]);
    let home = tempfile::tempdir().unwrap();
    let config = config(&lab, &hop.endpoint, &imds);
    let ec2 = Ec2::with_credential_source(&config, instance_profile_chain(&config, home.path())).unwrap();
    assert!(ec2.identity().contains("not fetched yet"), "{}", ec2.identity());

    for _ in 0..3 {
        let free = ec2.subnet_free().await.unwrap_or_else(|e| panic!("DescribeSubnets: {e}"));
        assert!(free > 0);
    }
    // EC2 refuses ASIASECOND before its Expiration (revoked, rotated): fetched again, retried once.
    hop.refuse_next.store(true, Ordering::SeqCst);
    ec2.subnet_free().await.unwrap_or_else(|e| panic!("DescribeSubnets after AuthFailure: {e}"));

    let seen: Vec<(String, String)> = hop.calls().iter().map(|c| (c.access_key(), c.session_token())).collect();
    let keys: Vec<&str> = seen.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(keys, ["ASIAFIRST", "ASIASECOND", "ASIASECOND", "ASIASECOND", "ASIATHIRD"]);
    for (key, token) in &seen {
        assert_eq!(token, &format!("token-of-{key}"), "the session token travels with its key");
    }
    let asked = asked.lock().unwrap().clone();
    let fetches = asked.iter().filter(|a| *a == &format!("GET /latest/meta-data/iam/security-credentials/{ROLE}"));
    assert_eq!(fetches.count(), 3, "fetched at first use, before expiry, after the refusal: {asked:?}");
    assert!(asked.iter().all(|a| !a.ends_with('!')), "every GET carried the IMDSv2 token: {asked:?}");
    assert!(asked.iter().filter(|a| a.starts_with("PUT /latest/api/token")).count() >= 3, "{asked:?}");

    let identity = ec2.identity();
    assert!(identity.contains(&format!("instance profile {ROLE} (IMDS {imds})")), "{identity}");
    let printed = format!("{ec2:?} {identity}");
    assert!(!printed.contains("secret-of") && !printed.contains("token-of"), "{printed}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_keys_or_an_instance_profile_the_error_names_every_link() {
    // An IMDS whose instance has no role: 404 on the role list, as EC2's does.
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let imds = format!("http://{}", listener.local_addr().unwrap());
    std::thread::spawn(move || {
        for mut stream in listener.incoming().map_while(Result::ok) {
            let (head, _) = read_request(&mut stream);
            match head.first().is_some_and(|l| l.starts_with("PUT /latest/api/token")) {
                true => answer(&mut stream, "200 OK", "imds-session"),
                false => answer(&mut stream, "404 Not Found", ""),
            }
        }
    });
    let home = tempfile::tempdir().unwrap();
    let config: AwsConfig = toml::from_str(&format!(
        "region = \"{REGION}\"\nsubnet_id = \"subnet-1\"\ninstance_id = \"i-1\"\nendpoint = \"http://127.0.0.1:1\"\n\
         imds_endpoint = \"{imds}\""
    ))
    .unwrap();
    let ec2 = Ec2::with_credential_source(&config, instance_profile_chain(&config, home.path())).unwrap();
    let error = ec2.subnet_free().await.unwrap_err();
    let ProviderError::Auth(said) = &error else { panic!("{error:?}") };
    assert!(said.contains("AWS_ACCESS_KEY_ID") && said.contains("[default]"), "{said}");
    assert!(said.contains("no instance profile") && said.contains("404"), "{said}");
}
