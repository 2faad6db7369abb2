//! IRSA (IAM roles for service accounts): the pod's service-account token, projected into a file
//! kubelet rotates, traded at STS for the role's temporary keys with `AssumeRoleWithWebIdentity`
//! (an unsigned Query request: the token is the proof). As the Go and Rust SDKs do it: the
//! environment the EKS pod identity webhook injects (`AWS_WEB_IDENTITY_TOKEN_FILE`,
//! `AWS_ROLE_ARN`, optional `AWS_ROLE_SESSION_NAME`), the regional STS endpoint unless
//! `AWS_STS_REGIONAL_ENDPOINTS=legacy` or `AWS_ENDPOINT_URL_STS` / `AWS_ENDPOINT_URL` say
//! otherwise, no `DurationSeconds` (the role's default, an hour), and the token file read again
//! at every renewal. Neither the token nor the keys are ever logged.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::config::AwsConfig;
use super::credentials::{Credentials, CredentialsError, Renewal};
use super::enis::parse_rfc3339;
use super::xml;
use crate::ipam::provider::http::{form_encode, parse_reply, ApiEndpoint};
use crate::ipam::provider::ProviderError;

pub const STS_API_VERSION: &str = "2011-06-15";
const CALL_TIMEOUT: Duration = Duration::from_secs(10);

/// Regions whose `legacy` STS endpoint is the global one (botocore's list); every other region
/// only has its regional endpoint.
const GLOBAL_STS_REGIONS: &[&str] = &[
    "ap-northeast-1",
    "ap-south-1",
    "ap-southeast-1",
    "ap-southeast-2",
    "ca-central-1",
    "eu-central-1",
    "eu-north-1",
    "eu-west-1",
    "eu-west-2",
    "eu-west-3",
    "sa-east-1",
    "us-east-1",
    "us-east-2",
    "us-west-1",
    "us-west-2",
];

/// The role IRSA assumes and how; its current keys in [`Renewal`].
#[derive(Debug)]
pub struct WebIdentity {
    role_arn: String,
    token_file: PathBuf,
    session_name: String,
    sts: ApiEndpoint,
    sts_url: String,
    pub(super) renewal: Renewal,
}

/// The STS endpoint for `region`, as the SDKs resolve it from `env`.
pub fn sts_endpoint(env: &impl Fn(&str) -> Option<String>, region: &str) -> String {
    if let Some(url) = env("AWS_ENDPOINT_URL_STS").or_else(|| env("AWS_ENDPOINT_URL")) {
        return url.trim_end_matches('/').to_string();
    }
    let legacy = env("AWS_STS_REGIONAL_ENDPOINTS").is_some_and(|v| v.eq_ignore_ascii_case("legacy"));
    if legacy && GLOBAL_STS_REGIONS.contains(&region) {
        "https://sts.amazonaws.com".into()
    } else {
        format!("https://sts.{region}.amazonaws.com")
    }
}

/// The token in `path`, as STS takes it (a JWT: surrounding whitespace dropped).
fn read_token(path: &Path) -> Result<String, CredentialsError> {
    let bad = |message: String| CredentialsError::TokenFile { path: path.to_path_buf(), message };
    let token = std::fs::read_to_string(path).map_err(|e| bad(e.to_string()))?;
    let token = token.trim();
    if token.is_empty() {
        return Err(bad("empty".into()));
    }
    Ok(token.to_string())
}

impl WebIdentity {
    /// IRSA as `env` configures it: `None` without `AWS_WEB_IDENTITY_TOKEN_FILE`; an error when
    /// the role is missing or the token file unreadable now (vswitchd refuses to start rather
    /// than run on the node's instance profile).
    pub fn from_env(
        env: &impl Fn(&str) -> Option<String>,
        config: &AwsConfig,
    ) -> Result<Option<WebIdentity>, CredentialsError> {
        let Some(token_file) = env("AWS_WEB_IDENTITY_TOKEN_FILE").map(PathBuf::from) else { return Ok(None) };
        let role_arn = env("AWS_ROLE_ARN").ok_or(CredentialsError::NoRoleArn)?;
        read_token(&token_file)?;
        let session_name = env("AWS_ROLE_SESSION_NAME").unwrap_or_else(|| {
            format!("vswitchd-{}", SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_millis())
        });
        let sts_url = sts_endpoint(env, &config.region);
        let sts = ApiEndpoint::new(&sts_url, config.ca_file.as_deref())
            .map_err(|e| CredentialsError::StsEndpoint(e.to_string()))?;
        Ok(Some(WebIdentity { role_arn, token_file, session_name, sts, sts_url, renewal: Renewal::default() }))
    }

    /// Where the credentials come from (the role, the token's file, STS; once fetched, the
    /// assumed role's session too).
    pub fn describe(&self) -> String {
        self.renewal.source().unwrap_or_else(|| format!("{}, not fetched yet", self.source()))
    }

    fn source(&self) -> String {
        format!("web identity: role {} (token {}, STS {})", self.role_arn, self.token_file.display(), self.sts_url)
    }

    /// `AssumeRoleWithWebIdentity` with the token file's current content: the keys and their expiry.
    pub async fn assume_role(&self) -> Result<(Credentials, SystemTime), ProviderError> {
        let token = read_token(&self.token_file).map_err(|e| ProviderError::Auth(e.to_string()))?;
        let form: Vec<(String, String)> = [
            ("Action", "AssumeRoleWithWebIdentity"),
            ("Version", STS_API_VERSION),
            ("RoleArn", self.role_arn.as_str()),
            ("RoleSessionName", self.session_name.as_str()),
            ("WebIdentityToken", token.as_str()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        let body = form_encode(form.iter().map(|(k, v)| (k, v)));
        let headers = [("Content-Type", "application/x-www-form-urlencoded; charset=utf-8")];
        let unavailable = |e: String| ProviderError::Unavailable(format!("STS {}: {e}", self.sts_url));
        let raw = self.sts.exchange("POST", &headers, &body, CALL_TIMEOUT).await.map_err(unavailable)?;
        let reply = parse_reply(&raw).map_err(unavailable)?;
        let text = String::from_utf8_lossy(&reply.body);
        if reply.status != 200 {
            return Err(match xml::error(&text) {
                Some((code, message)) => self.refusal(reply.status, &code, &message),
                None => unavailable(format!("HTTP status {}", reply.status)),
            });
        }
        // Errors below never quote the reply: it holds the secret.
        let role = xml::assumed_role(&text).map_err(|e| unavailable(format!("AssumeRoleWithWebIdentity: {e}")))?;
        let expires = parse_rfc3339(&role.expiration)
            .ok_or_else(|| unavailable("AssumeRoleWithWebIdentity: an unreadable Expiration".into()))?;
        let source = format!("{} as {}", self.source(), role.assumed_arn.as_deref().unwrap_or("?"));
        let credentials = Credentials {
            access_key_id: role.access_key_id,
            secret_access_key: role.secret_access_key,
            session_token: Some(role.session_token),
            source,
        };
        Ok((credentials, expires))
    }

    /// STS's refusal as what the operator must fix.
    fn refusal(&self, status: u16, code: &str, message: &str) -> ProviderError {
        let said = format!("STS {} AssumeRoleWithWebIdentity {code}: {message}", self.sts_url);
        let (role, file) = (&self.role_arn, self.token_file.display());
        match code {
            "InvalidIdentityToken" => ProviderError::Auth(format!(
                "{said}: STS does not accept the token in {file}: the cluster's OIDC issuer must be an IAM \
                 identity provider of the role's account, and the token's audience sts.amazonaws.com"
            )),
            "ExpiredTokenException" | "ExpiredToken" => ProviderError::Auth(format!(
                "{said}: the token in {file} has expired: it must be a projected service-account token that \
                 kubelet rotates (expirationSeconds), not a copy"
            )),
            "AccessDenied" | "IDPRejectedClaim" => ProviderError::Auth(format!(
                "{said}: the trust policy of {role} must allow sts:AssumeRoleWithWebIdentity to this cluster's \
                 OIDC provider for this pod's service account (condition ...:sub = \
                 system:serviceaccount:NAMESPACE:NAME, ...:aud = sts.amazonaws.com)"
            )),
            // The identity provider's keys could not be fetched: STS's trouble, retried.
            "IDPCommunicationError" => ProviderError::Unavailable(format!(
                "{said}: STS could not reach the cluster's OIDC issuer to check the token; retried"
            )),
            "InvalidParameterValue" | "ValidationError" | "MalformedPolicyDocument" => ProviderError::Auth(format!(
                "{said}: check AWS_ROLE_ARN ({role}) and AWS_ROLE_SESSION_NAME ({})",
                self.session_name
            )),
            "RegionDisabledException" => ProviderError::Auth(format!(
                "{said}: activate STS in this region (IAM account settings) or set AWS_ENDPOINT_URL_STS"
            )),
            "Throttling" | "ThrottlingException" => ProviderError::Throttled(said),
            _ if status >= 500 => ProviderError::Unavailable(said),
            _ => ProviderError::Auth(said),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn env(vars: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let vars: HashMap<String, String> = vars.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        move |name| vars.get(name).cloned()
    }

    fn config() -> AwsConfig {
        toml::from_str("region = \"eu-west-3\"\nsubnet_id = \"subnet-1\"").unwrap()
    }

    #[test]
    fn the_sts_endpoint_is_regional_unless_the_environment_says_otherwise() {
        assert_eq!(sts_endpoint(&env(&[]), "eu-west-3"), "https://sts.eu-west-3.amazonaws.com");
        let legacy = env(&[("AWS_STS_REGIONAL_ENDPOINTS", "legacy")]);
        assert_eq!(sts_endpoint(&legacy, "us-east-1"), "https://sts.amazonaws.com");
        assert_eq!(sts_endpoint(&legacy, "ap-east-1"), "https://sts.ap-east-1.amazonaws.com", "no global one");
        let all = env(&[("AWS_ENDPOINT_URL", "http://10.0.0.9:5000/")]);
        assert_eq!(sts_endpoint(&all, "us-east-1"), "http://10.0.0.9:5000");
        let both = env(&[("AWS_ENDPOINT_URL", "http://10.0.0.9:5000"), ("AWS_ENDPOINT_URL_STS", "http://10.0.0.8")]);
        assert_eq!(sts_endpoint(&both, "us-east-1"), "http://10.0.0.8");
    }

    #[test]
    fn irsa_needs_a_role_and_a_readable_token_file() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("token");
        let path = file.to_str().unwrap();
        assert!(WebIdentity::from_env(&env(&[]), &config()).unwrap().is_none());
        let no_role = WebIdentity::from_env(&env(&[("AWS_WEB_IDENTITY_TOKEN_FILE", path)]), &config()).unwrap_err();
        assert!(matches!(no_role, CredentialsError::NoRoleArn), "{no_role}");
        let irsa = [("AWS_WEB_IDENTITY_TOKEN_FILE", path), ("AWS_ROLE_ARN", "arn:aws:iam::1:role/cni")];
        let missing = WebIdentity::from_env(&env(&irsa), &config()).unwrap_err();
        assert!(missing.to_string().contains(path) && missing.to_string().contains("projected"), "{missing}");
        std::fs::write(&file, "\n").unwrap();
        let empty = WebIdentity::from_env(&env(&irsa), &config()).unwrap_err();
        assert!(empty.to_string().contains("empty"), "{empty}");
        std::fs::write(&file, "eyJhbGciOi.jwt.sig\n").unwrap();
        let web = WebIdentity::from_env(&env(&irsa), &config()).unwrap().unwrap();
        assert!(web.session_name.starts_with("vswitchd-"), "{}", web.session_name);
        let described = web.describe();
        assert!(described.contains("role arn:aws:iam::1:role/cni") && described.contains(path), "{described}");
        assert!(described.contains("https://sts.eu-west-3.amazonaws.com") && !described.contains("eyJ"), "{described}");
        let named = WebIdentity::from_env(&env(&[irsa[0], irsa[1], ("AWS_ROLE_SESSION_NAME", "node-a")]), &config());
        assert_eq!(named.unwrap().unwrap().session_name, "node-a");
    }

    #[test]
    fn stss_refusals_say_what_to_fix() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("token");
        std::fs::write(&file, "jwt").unwrap();
        let vars = [("AWS_WEB_IDENTITY_TOKEN_FILE", file.to_str().unwrap()), ("AWS_ROLE_ARN", "arn:r")];
        let web = WebIdentity::from_env(&env(&vars), &config()).unwrap().unwrap();
        let said = |code| match web.refusal(400, code, "m") {
            ProviderError::Auth(m) => format!("auth {m}"),
            ProviderError::Unavailable(m) => format!("unavailable {m}"),
            other => format!("{other:?}"),
        };
        assert!(said("InvalidIdentityToken").contains("OIDC issuer must be an IAM identity provider"));
        assert!(said("ExpiredTokenException").contains("has expired"));
        assert!(said("AccessDenied").contains("trust policy of arn:r"));
        assert!(said("IDPCommunicationError").starts_with("unavailable"));
        assert!(said("Whatever").starts_with("auth STS https://sts.eu-west-3.amazonaws.com"));
        assert!(matches!(web.refusal(503, "ServiceUnavailable", ""), ProviderError::Unavailable(_)));
    }
}
