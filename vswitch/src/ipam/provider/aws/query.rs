//! EC2's Query protocol: a form POST of `Action=...&Version=2016-11-15&...`, signed with SigV4
//! (`aws-sigv4`, service `ec2`), answered in XML; error replies typed into [`ProviderError`].

use std::time::{Duration, SystemTime};

use aws_sigv4::http_request::{sign, SignableBody, SignableRequest, SigningSettings};
use aws_sigv4::sign::v4;

use super::credentials::{CredentialSource, Credentials};
use super::xml;
use crate::ipam::provider::http::{form_encode, parse_reply, ApiEndpoint};
use crate::ipam::provider::ProviderError;

pub const API_VERSION: &str = "2016-11-15";
/// A call that takes longer than this counts as the API being unavailable.
const CALL_TIMEOUT: Duration = Duration::from_secs(10);

/// Why the client cannot be built from `[ipam.aws]`.
#[derive(Debug, thiserror::Error)]
pub enum AwsSetupError {
    #[error("ipam.aws.{key} '{value}': only http://HOST[:PORT][/PATH] is supported")]
    Endpoint { key: &'static str, value: String },
    #[error("ipam.aws: {0}")]
    Api(String),
    #[error(transparent)]
    Credentials(#[from] super::credentials::CredentialsError),
}

/// One endpoint with one identity. `Debug` leaves the credentials out.
pub struct Query {
    endpoint: ApiEndpoint,
    region: String,
    credentials: CredentialSource,
}

/// EC2 error codes after which instance-profile credentials are fetched again and the call is
/// retried once (rotated or revoked before their `Expiration`).
const STALE_CREDENTIALS: &[&str] = &["AuthFailure", "ExpiredToken", "InvalidClientTokenId"];

/// A call that failed: the typed error, and EC2's error code when it answered with one.
struct Refusal {
    error: ProviderError,
    code: Option<String>,
}

impl From<ProviderError> for Refusal {
    fn from(error: ProviderError) -> Refusal {
        Refusal { error, code: None }
    }
}

impl std::fmt::Debug for Query {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Query")
            .field("endpoint", &self.endpoint)
            .field("region", &self.region)
            .field("credentials", &self.credentials)
            .finish()
    }
}

/// What an EC2 error code means for the pool.
pub fn typed_error(status: u16, code: &str, message: &str) -> ProviderError {
    let said = format!("{code}: {message}");
    match code {
        "RequestLimitExceeded" | "Throttling" | "ThrottlingException" => ProviderError::Throttled(said),
        "InsufficientFreeAddressesInSubnet" => ProviderError::SubnetFull(said),
        "PrivateIpAddressLimitExceeded" | "AttachmentLimitExceeded" | "NetworkInterfaceLimitExceeded" => {
            ProviderError::Quota(said)
        }
        "AuthFailure"
        | "SignatureDoesNotMatch"
        | "InvalidClientTokenId"
        | "UnauthorizedOperation"
        | "MissingAuthenticationToken"
        | "ExpiredToken"
        | "RequestExpired"
        | "OptInRequired" => ProviderError::Auth(said),
        "InternalError" | "InternalFailure" | "ServiceUnavailable" | "Unavailable" => ProviderError::Unavailable(said),
        _ if status >= 500 => ProviderError::Unavailable(said),
        _ => ProviderError::Other { code: u32::from(status), message: said },
    }
}

impl Query {
    /// `endpoint`'s server checked against `ca_file` if given (`https://`).
    pub fn new(
        endpoint: &str,
        ca_file: Option<&std::path::Path>,
        region: &str,
        credentials: CredentialSource,
    ) -> Result<Query, AwsSetupError> {
        let endpoint = ApiEndpoint::new(endpoint, ca_file).map_err(|e| AwsSetupError::Api(e.to_string()))?;
        Ok(Query { endpoint, region: region.into(), credentials })
    }

    /// Where the credentials come from (never the credentials).
    pub fn credentials_source(&self) -> String {
        self.credentials.describe()
    }

    /// The SigV4 headers of a POST of `body`.
    fn signed_headers(
        &self,
        host: &str,
        body: &str,
        credentials: &Credentials,
    ) -> Result<Vec<(String, String)>, String> {
        let identity = aws_credential_types::Credentials::new(
            &credentials.access_key_id,
            &credentials.secret_access_key,
            credentials.session_token.clone(),
            None,
            "vswitchd",
        )
        .into();
        let params = v4::SigningParams::builder()
            .identity(&identity)
            .region(&self.region)
            .name("ec2")
            .time(SystemTime::now())
            .settings(SigningSettings::default())
            .build()
            .map_err(|e| e.to_string())?
            .into();
        // SigV4 signs the host and path, not the scheme.
        let url = format!("https://{host}{}", self.endpoint.path());
        let headers = [("host", host), ("content-type", "application/x-www-form-urlencoded; charset=utf-8")];
        let request = SignableRequest::new("POST", url, headers.into_iter(), SignableBody::Bytes(body.as_bytes()))
            .map_err(|e| e.to_string())?;
        let (instructions, _) = sign(request, &params).map_err(|e| e.to_string())?.into_parts();
        let mut all: Vec<(String, String)> = headers[1..].iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        all.extend(instructions.headers().map(|(k, v)| (k.to_string(), v.to_string())));
        Ok(all)
    }

    /// `action` with `params`: the reply's XML on success, else the typed error. Credentials
    /// EC2 calls stale are fetched again and the call retried once.
    pub async fn call(&self, action: &str, params: &[(String, String)]) -> Result<String, ProviderError> {
        let credentials = self.credentials.current().await?;
        match self.send(action, params, &credentials).await {
            Err(Refusal { code: Some(code), error })
                if STALE_CREDENTIALS.contains(&code.as_str()) && self.credentials.refused(&credentials).await =>
            {
                tracing::warn!(action, %error, source = %credentials.source, "EC2 refused the credentials: fetching them again");
                let credentials = self.credentials.current().await?;
                self.send(action, params, &credentials).await.map_err(|r| r.error)
            }
            other => other.map_err(|r| r.error),
        }
    }

    /// One signed exchange.
    async fn send(
        &self,
        action: &str,
        params: &[(String, String)],
        credentials: &Credentials,
    ) -> Result<String, Refusal> {
        let mut form = vec![("Action".to_string(), action.to_string()), ("Version".into(), API_VERSION.into())];
        form.extend(params.iter().cloned());
        let body = form_encode(form.iter().map(|(k, v)| (k, v)));
        let host = self.endpoint.host_header();
        let headers = self
            .signed_headers(&host, &body, credentials)
            .map_err(|e| ProviderError::Auth(format!("{action}: signing: {e}")))?;
        let headers: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        let unavailable = |e: String| ProviderError::Unavailable(format!("{action} {}: {e}", self.endpoint.url()));
        let raw = self.endpoint.exchange("POST", &headers, &body, CALL_TIMEOUT).await.map_err(unavailable)?;
        let reply = parse_reply(&raw).map_err(unavailable)?;
        let text = String::from_utf8_lossy(&reply.body).into_owned();
        if reply.status == 200 {
            return Ok(text);
        }
        Err(match xml::error(&text) {
            Some((code, message)) => Refusal { error: typed_error(reply.status, &code, &message), code: Some(code) },
            None if reply.status >= 500 => unavailable(format!("HTTP status {}", reply.status)).into(),
            None => ProviderError::Other { code: u32::from(reply.status), message: format!("{action}: {text}") }.into(),
        })
    }
}

/// Query parameters as the protocol numbers lists: `Filter.1.Name`, `Filter.1.Value.1`, ...
#[derive(Debug, Default)]
pub struct Params(pub Vec<(String, String)>);

impl Params {
    pub fn set(mut self, key: &str, value: impl Into<String>) -> Params {
        self.0.push((key.to_string(), value.into()));
        self
    }

    pub fn filter(self, name: &str, values: &[&str]) -> Params {
        let n = self.0.iter().filter(|(k, _)| k.ends_with(".Name") && k.starts_with("Filter.")).count() + 1;
        let mut with = self.set(&format!("Filter.{n}.Name"), name);
        for (i, v) in values.iter().enumerate() {
            with = with.set(&format!("Filter.{n}.Value.{}", i + 1), *v);
        }
        with
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_codes_are_typed() {
        assert!(matches!(typed_error(503, "RequestLimitExceeded", "slow down"), ProviderError::Throttled(_)));
        assert!(matches!(typed_error(400, "InsufficientFreeAddressesInSubnet", ""), ProviderError::SubnetFull(_)));
        assert!(matches!(typed_error(400, "PrivateIpAddressLimitExceeded", ""), ProviderError::Quota(_)));
        assert!(matches!(typed_error(401, "AuthFailure", ""), ProviderError::Auth(_)));
        assert!(matches!(typed_error(500, "Whatever", ""), ProviderError::Unavailable(_)));
        let other = typed_error(400, "InvalidNetworkInterfaceID.NotFound", "eni-1 does not exist");
        assert_eq!(
            other,
            ProviderError::Other {
                code: 400,
                message: "InvalidNetworkInterfaceID.NotFound: eni-1 does not exist".into()
            }
        );
    }

    #[test]
    fn filters_are_numbered() {
        let p = Params::default().filter("attachment.instance-id", &["i-1"]).filter("tag-key", &["a", "b"]);
        let keys: Vec<&str> = p.0.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(
            keys,
            ["Filter.1.Name", "Filter.1.Value.1", "Filter.2.Name", "Filter.2.Value.1", "Filter.2.Value.2"]
        );
    }

    /// The signature is SigV4's: an `Authorization` header naming the key, the date, the
    /// region and service, and the session token when there is one; never the secret.
    #[test]
    fn requests_are_signed() {
        let credentials = Credentials {
            access_key_id: "AKIDEXAMPLE".into(),
            secret_access_key: "s3cr3t".into(),
            session_token: Some("token".into()),
            source: "test".into(),
        };
        let query =
            Query::new("http://127.0.0.1:5000", None, "us-east-1", CredentialSource::Fixed(credentials.clone()))
                .unwrap();
        let body = "Action=DescribeSubnets&Version=2016-11-15";
        let headers = query.signed_headers("127.0.0.1:5000", body, &credentials).unwrap();
        let get = |name: &str| headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str());
        let auth = get("authorization").unwrap();
        assert!(auth.starts_with("AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/"), "{auth}");
        assert!(auth.contains("/us-east-1/ec2/aws4_request") && auth.contains("SignedHeaders="), "{auth}");
        assert!(get("x-amz-date").is_some());
        assert_eq!(get("x-amz-security-token"), Some("token"));
        assert!(!format!("{query:?}").contains("s3cr3t") && !auth.contains("s3cr3t"));
        let with =
            |endpoint: &str| Query::new(endpoint, None, "us-east-1", CredentialSource::Fixed(credentials.clone()));
        assert!(with("https://ec2.us-east-1.amazonaws.com").is_ok());
        assert!(matches!(with("http://52.94.1.1"), Err(AwsSetupError::Api(m)) if m.contains("public address")));
    }
}
