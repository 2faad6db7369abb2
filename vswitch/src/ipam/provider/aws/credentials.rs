//! The standard credential chain, the part a node's DaemonSet uses without an SDK, in the order
//! of the Go SDK (AWS's VPC CNI's) and botocore: the environment's keys (`AWS_ACCESS_KEY_ID`,
//! `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN`); then IRSA's web identity
//! (`AWS_WEB_IDENTITY_TOKEN_FILE` and `AWS_ROLE_ARN`: [`super::web_identity`]); then the shared
//! credentials file (`AWS_SHARED_CREDENTIALS_FILE` or `~/.aws/credentials`, profile
//! `AWS_PROFILE` or `default`); then the instance profile through IMDSv2. Temporary credentials
//! ([`CredentialSource`]) are fetched on first use, renewed [`REFRESH_BEFORE`] their
//! `Expiration` and after EC2 refused them. The secrets are never printed: `Debug` shows where
//! they came from.

use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use super::config::AwsConfig;
use super::imds;
use super::web_identity::WebIdentity;
use crate::ipam::provider::ProviderError;

/// Temporary credentials are renewed this long before they expire, as the AWS SDKs do.
pub const REFRESH_BEFORE: Duration = Duration::from_secs(300);

#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    pub access_key_id: String,
    pub secret_access_key: String,
    pub session_token: Option<String>,
    /// Where they came from (`environment`, `/root/.aws/credentials [default]`).
    pub source: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials").field("source", &self.source).finish_non_exhaustive()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum CredentialsError {
    #[error(
        "ipam.aws: no credentials: AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY are not both set and \
         {path} has no profile [{profile}] with aws_access_key_id and aws_secret_access_key"
    )]
    NotFound { path: PathBuf, profile: String },
    #[error("ipam.aws: reading the shared credentials file {path}: {source}")]
    Unreadable { path: PathBuf, source: std::io::Error },
    #[error(
        "ipam.aws: AWS_WEB_IDENTITY_TOKEN_FILE is set but AWS_ROLE_ARN is not: IRSA needs both (the \
         service account's eks.amazonaws.com/role-arn annotation sets them)"
    )]
    NoRoleArn,
    #[error(
        "ipam.aws: the web identity token file {path} (AWS_WEB_IDENTITY_TOKEN_FILE): {message}; \
         mount the service account token as a projected volume with audience sts.amazonaws.com"
    )]
    TokenFile { path: PathBuf, message: String },
    #[error("ipam.aws: the STS endpoint: {0}")]
    StsEndpoint(String),
}

impl Credentials {
    /// The chain as the process's environment says.
    pub fn from_env() -> Result<Credentials, CredentialsError> {
        Credentials::from_chain(process_env)
    }

    /// The environment's keys, else the shared file's (the chain's fixed links).
    pub fn from_chain(env: impl Fn(&str) -> Option<String>) -> Result<Credentials, CredentialsError> {
        if let (Some(access_key_id), Some(secret_access_key)) = (env("AWS_ACCESS_KEY_ID"), env("AWS_SECRET_ACCESS_KEY"))
        {
            let session_token = env("AWS_SESSION_TOKEN");
            return Ok(Credentials { access_key_id, secret_access_key, session_token, source: "environment".into() });
        }
        let path = env("AWS_SHARED_CREDENTIALS_FILE")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(env("HOME").unwrap_or_else(|| "/root".into())).join(".aws/credentials"));
        let profile = env("AWS_PROFILE").unwrap_or_else(|| "default".into());
        let text = match std::fs::read_to_string(&path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
            Err(source) => return Err(CredentialsError::Unreadable { path, source }),
        };
        let keys = profile_keys(&text, &profile);
        let get = |key: &str| keys.iter().find(|(k, _)| k == key).map(|(_, v)| v.clone());
        match (get("aws_access_key_id"), get("aws_secret_access_key")) {
            (Some(access_key_id), Some(secret_access_key)) => Ok(Credentials {
                access_key_id,
                secret_access_key,
                session_token: get("aws_session_token"),
                source: format!("{} [{profile}]", path.display()),
            }),
            _ => Err(CredentialsError::NotFound { path, profile }),
        }
    }
}

/// Where each call's credentials come from. `Debug` names the source only.
pub enum CredentialSource {
    /// The environment's or the shared file's, as read at start.
    Fixed(Credentials),
    /// IRSA's: STS `AssumeRoleWithWebIdentity` with the service account's token.
    WebIdentity(WebIdentity),
    /// The instance profile's, from IMDS.
    InstanceProfile(InstanceProfile),
}

impl std::fmt::Debug for CredentialSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("CredentialSource").field(&self.describe()).finish()
    }
}

/// Temporary credentials with their expiry, kept until [`REFRESH_BEFORE`] it.
#[derive(Debug, Default)]
pub struct Renewal(tokio::sync::Mutex<Option<(Credentials, SystemTime)>>);

impl Renewal {
    /// The cached credentials unless they expire within [`REFRESH_BEFORE`], else `fetch`'s; when
    /// `fetch` fails, cached ones not yet expired serve still (the error is logged).
    pub async fn current<F>(&self, fetch: impl FnOnce() -> F) -> Result<Credentials, ProviderError>
    where
        F: std::future::Future<Output = Result<(Credentials, SystemTime), ProviderError>>,
    {
        let mut cached = self.0.lock().await;
        let now = SystemTime::now();
        if let Some((c, _)) = cached.as_ref().filter(|(_, expires)| now + REFRESH_BEFORE < *expires) {
            return Ok(c.clone());
        }
        match fetch().await {
            Ok((fresh, expires)) => {
                let left = expires.duration_since(now).unwrap_or_default().as_secs();
                tracing::info!(source = %fresh.source, expires_in_seconds = left, "EC2 credentials fetched");
                *cached = Some((fresh.clone(), expires));
                Ok(fresh)
            }
            Err(e) => match cached.as_ref().filter(|(_, expires)| now < *expires) {
                Some((c, _)) => {
                    tracing::warn!(error = %e, source = %c.source, "credentials not renewed: the current ones serve until they expire");
                    Ok(c.clone())
                }
                None => Err(e),
            },
        }
    }

    /// EC2 refused `used`: the next [`Self::current`] fetches anew, unless another call already did.
    pub async fn forget(&self, used: &Credentials) {
        let mut cached = self.0.lock().await;
        if cached.as_ref().is_some_and(|(c, _)| c.access_key_id == used.access_key_id) {
            *cached = None;
        }
    }

    /// Where the cached credentials came from, if there are some (never blocks).
    pub fn source(&self) -> Option<String> {
        self.0.try_lock().ok().and_then(|c| c.as_ref().map(|(c, _)| c.source.clone()))
    }
}

/// The instance profile's credentials, renewed before their expiry.
#[derive(Debug)]
pub struct InstanceProfile {
    imds_endpoint: String,
    /// Why the chain got this far, for the error when IMDS has nothing either.
    before: String,
    renewal: Renewal,
}

/// The process's environment, empty values as unset (as the SDKs read it).
pub fn process_env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

impl CredentialSource {
    /// The chain as the process's environment says, for `config`'s region, CA and IMDS.
    pub fn from_env(config: &AwsConfig) -> Result<CredentialSource, CredentialsError> {
        CredentialSource::chain(process_env, config)
    }

    /// The chain with `env` for the environment: the environment's keys; else IRSA's web
    /// identity (its token file must be readable now: a pod meant to use IRSA must not fall
    /// through to the node's instance profile); else the shared file's keys; else the instance
    /// profile's (asked on first use, so vswitchd starts while IMDS is unreachable).
    pub fn chain(
        env: impl Fn(&str) -> Option<String>,
        config: &AwsConfig,
    ) -> Result<CredentialSource, CredentialsError> {
        let keys_in_env = env("AWS_ACCESS_KEY_ID").is_some() && env("AWS_SECRET_ACCESS_KEY").is_some();
        if !keys_in_env {
            if let Some(web_identity) = WebIdentity::from_env(&env, config)? {
                return Ok(CredentialSource::WebIdentity(web_identity));
            }
        }
        match Credentials::from_chain(env) {
            Ok(credentials) => Ok(CredentialSource::Fixed(credentials)),
            Err(e @ CredentialsError::NotFound { .. }) => Ok(CredentialSource::InstanceProfile(InstanceProfile {
                imds_endpoint: config.imds_endpoint.clone(),
                before: e.to_string(),
                renewal: Renewal::default(),
            })),
            Err(e) => Err(e),
        }
    }

    /// Where the credentials come from (never the credentials).
    pub fn describe(&self) -> String {
        match self {
            CredentialSource::Fixed(c) => c.source.clone(),
            CredentialSource::WebIdentity(w) => w.describe(),
            CredentialSource::InstanceProfile(p) => p
                .renewal
                .source()
                .unwrap_or_else(|| format!("instance profile (IMDS {}, not fetched yet)", p.imds_endpoint)),
        }
    }

    /// The credentials for the next call: temporary ones renewed as [`Renewal`] says.
    pub async fn current(&self) -> Result<Credentials, ProviderError> {
        match self {
            CredentialSource::Fixed(c) => Ok(c.clone()),
            CredentialSource::WebIdentity(w) => w.renewal.current(|| w.assume_role()).await,
            CredentialSource::InstanceProfile(p) => {
                p.renewal.current(|| imds::role_credentials(&p.imds_endpoint)).await.map_err(|e| match e {
                    ProviderError::Auth(m) => ProviderError::Auth(format!("{}; and {m}", p.before)),
                    other => other,
                })
            }
        }
    }

    /// EC2 refused `used` (`AuthFailure`, `ExpiredToken`, ...): the next [`Self::current`]
    /// fetches anew, unless another call already did. Whether retrying can help.
    pub async fn refused(&self, used: &Credentials) -> bool {
        match self {
            CredentialSource::Fixed(_) => false,
            CredentialSource::WebIdentity(w) => {
                w.renewal.forget(used).await;
                true
            }
            CredentialSource::InstanceProfile(p) => {
                p.renewal.forget(used).await;
                true
            }
        }
    }
}

/// The `key = value` lines of `[profile]` in an INI text (keys lower-cased).
fn profile_keys(text: &str, profile: &str) -> Vec<(String, String)> {
    let mut inside = false;
    let mut keys = Vec::new();
    for line in text.lines().map(str::trim) {
        if line.starts_with('#') || line.starts_with(';') || line.is_empty() {
            continue;
        }
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            inside = name.trim() == profile;
        } else if let (true, Some((k, v))) = (inside, line.split_once('=')) {
            keys.push((k.trim().to_ascii_lowercase(), v.trim().to_string()));
        }
    }
    keys
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn chain(vars: &[(&str, &str)]) -> Result<Credentials, CredentialsError> {
        let vars: HashMap<String, String> = vars.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        Credentials::from_chain(|name| vars.get(name).cloned())
    }

    #[test]
    fn environment_first_then_the_profile() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("credentials");
        std::fs::write(
            &file,
            "[default]\naws_access_key_id = AKIDEFAULT\naws_secret_access_key = s3cr3t-default\n\n\
             # the lab\n[lab]\naws_access_key_id=AKILAB\naws_secret_access_key=s3cr3t-lab\naws_session_token=tok\n",
        )
        .unwrap();
        let file = file.to_str().unwrap();
        let env = chain(&[("AWS_ACCESS_KEY_ID", "AKIENV"), ("AWS_SECRET_ACCESS_KEY", "s3cr3t-env")]).unwrap();
        assert_eq!((env.access_key_id.as_str(), env.source.as_str()), ("AKIENV", "environment"));
        let default = chain(&[("AWS_SHARED_CREDENTIALS_FILE", file)]).unwrap();
        assert_eq!(default.access_key_id, "AKIDEFAULT");
        let lab = chain(&[("AWS_SHARED_CREDENTIALS_FILE", file), ("AWS_PROFILE", "lab")]).unwrap();
        assert_eq!((lab.secret_access_key.as_str(), lab.session_token.as_deref()), ("s3cr3t-lab", Some("tok")));
        assert!(!format!("{lab:?}").contains("s3cr3t"), "the secret is never printed");
        let missing = chain(&[("AWS_SHARED_CREDENTIALS_FILE", file), ("AWS_PROFILE", "prod")]).unwrap_err();
        assert!(missing.to_string().contains("[prod]"), "{missing}");
    }

    /// Keys in the environment win; then IRSA (before the shared file, as the Go SDK and
    /// botocore order it); then the file; then the instance profile. IRSA half-configured or
    /// its token file unreadable is an error, never a fall-through to the node's role.
    #[test]
    fn the_chains_order() {
        let dir = tempfile::tempdir().unwrap();
        let (file, token) = (dir.path().join("credentials"), dir.path().join("token"));
        std::fs::write(&file, "[default]\naws_access_key_id = AKIFILE\naws_secret_access_key = s\n").unwrap();
        std::fs::write(&token, "jwt").unwrap();
        let config: AwsConfig = toml::from_str("region = \"us-east-1\"\nsubnet_id = \"subnet-1\"").unwrap();
        let (file, token) = (file.to_str().unwrap(), token.to_str().unwrap());
        let source = |vars: &[(&str, &str)]| {
            let vars: HashMap<String, String> = vars.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
            CredentialSource::chain(|name| vars.get(name).cloned(), &config)
        };
        let keys = [("AWS_ACCESS_KEY_ID", "AKIENV"), ("AWS_SECRET_ACCESS_KEY", "s")];
        let irsa = [("AWS_WEB_IDENTITY_TOKEN_FILE", token), ("AWS_ROLE_ARN", "arn:aws:iam::1:role/cni")];
        let shared = ("AWS_SHARED_CREDENTIALS_FILE", file);
        let all = source(&[keys[0], keys[1], irsa[0], irsa[1], shared]).unwrap();
        assert!(matches!(&all, CredentialSource::Fixed(c) if c.source == "environment"), "{all:?}");
        let web = source(&[irsa[0], irsa[1], shared]).unwrap();
        assert!(matches!(web, CredentialSource::WebIdentity(_)), "{web:?}");
        let from_file = source(&[shared]).unwrap();
        assert!(matches!(&from_file, CredentialSource::Fixed(c) if c.access_key_id == "AKIFILE"), "{from_file:?}");
        let home = ("HOME", dir.path().to_str().unwrap());
        let profile = source(&[home]).unwrap();
        assert!(matches!(profile, CredentialSource::InstanceProfile(_)), "{profile:?}");
        let gone = dir.path().join("gone");
        let unreadable = source(&[("AWS_WEB_IDENTITY_TOKEN_FILE", gone.to_str().unwrap()), irsa[1], home]).unwrap_err();
        assert!(matches!(unreadable, CredentialsError::TokenFile { .. }), "{unreadable}");
        assert!(matches!(source(&[irsa[0], home]).unwrap_err(), CredentialsError::NoRoleArn));
    }
}
