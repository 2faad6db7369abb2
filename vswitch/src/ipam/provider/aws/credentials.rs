//! The standard credential chain, the part a node's DaemonSet uses without an SDK, in the SDKs'
//! order: the environment (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN`),
//! the shared credentials file (`AWS_SHARED_CREDENTIALS_FILE` or `~/.aws/credentials`, profile
//! `AWS_PROFILE` or `default`), then the instance profile through IMDSv2 ([`CredentialSource`]:
//! fetched on first use, renewed [`REFRESH_BEFORE`] their `Expiration` and after EC2 refused
//! them). The secrets are never printed: `Debug` shows where they came from.

use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use super::imds;
use crate::ipam::provider::ProviderError;

/// Instance-profile credentials are renewed this long before they expire, as the AWS SDKs do.
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
}

impl Credentials {
    /// The chain as the process's environment says.
    pub fn from_env() -> Result<Credentials, CredentialsError> {
        Credentials::from_chain(|name| std::env::var(name).ok().filter(|v| !v.is_empty()))
    }

    /// The chain with `env` for the environment.
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
    /// The instance profile's, from IMDS.
    InstanceProfile(InstanceProfile),
}

impl std::fmt::Debug for CredentialSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("CredentialSource").field(&self.describe()).finish()
    }
}

/// The instance profile's credentials, cached until [`REFRESH_BEFORE`] their expiry.
#[derive(Debug)]
pub struct InstanceProfile {
    imds_endpoint: String,
    /// Why the chain got this far, for the error when IMDS has nothing either.
    before: String,
    cached: tokio::sync::Mutex<Option<(Credentials, SystemTime)>>,
}

impl CredentialSource {
    /// The chain as the process's environment says; its last link asks IMDS at `imds_endpoint`.
    pub fn from_env(imds_endpoint: &str) -> Result<CredentialSource, CredentialsError> {
        CredentialSource::chain(|name| std::env::var(name).ok().filter(|v| !v.is_empty()), imds_endpoint)
    }

    /// The chain with `env` for the environment: its credentials if it has some, else the
    /// instance profile's (asked on first use, so vswitchd starts while IMDS is unreachable).
    pub fn chain(
        env: impl Fn(&str) -> Option<String>,
        imds_endpoint: &str,
    ) -> Result<CredentialSource, CredentialsError> {
        match Credentials::from_chain(env) {
            Ok(credentials) => Ok(CredentialSource::Fixed(credentials)),
            Err(e @ CredentialsError::NotFound { .. }) => Ok(CredentialSource::InstanceProfile(InstanceProfile {
                imds_endpoint: imds_endpoint.into(),
                before: e.to_string(),
                cached: tokio::sync::Mutex::new(None),
            })),
            Err(e) => Err(e),
        }
    }

    /// Where the credentials come from (never the credentials).
    pub fn describe(&self) -> String {
        match self {
            CredentialSource::Fixed(c) => c.source.clone(),
            CredentialSource::InstanceProfile(p) => match p.cached.try_lock().ok().and_then(|c| c.clone()) {
                Some((c, _)) => c.source,
                None => format!("instance profile (IMDS {}, not fetched yet)", p.imds_endpoint),
            },
        }
    }

    /// The credentials for the next call: the cached instance-profile ones unless they expire
    /// within [`REFRESH_BEFORE`]; IMDS down, ones not yet expired are used still.
    pub async fn current(&self) -> Result<Credentials, ProviderError> {
        let profile = match self {
            CredentialSource::Fixed(c) => return Ok(c.clone()),
            CredentialSource::InstanceProfile(p) => p,
        };
        let mut cached = profile.cached.lock().await;
        let now = SystemTime::now();
        if let Some((c, _)) = cached.as_ref().filter(|(_, expires)| now + REFRESH_BEFORE < *expires) {
            return Ok(c.clone());
        }
        match imds::role_credentials(&profile.imds_endpoint).await {
            Ok((fresh, expires)) => {
                let left = expires.duration_since(now).unwrap_or_default().as_secs();
                tracing::info!(source = %fresh.source, expires_in_seconds = left, "EC2 credentials fetched");
                *cached = Some((fresh.clone(), expires));
                Ok(fresh)
            }
            Err(e) => match cached.as_ref().filter(|(_, expires)| now < *expires) {
                Some((c, _)) => {
                    tracing::warn!(error = %e, "instance-profile credentials not renewed: the current ones serve until they expire");
                    Ok(c.clone())
                }
                None => Err(match e {
                    ProviderError::Auth(m) => ProviderError::Auth(format!("{}; and {m}", profile.before)),
                    other => other,
                }),
            },
        }
    }

    /// EC2 refused `used` (`AuthFailure`, `ExpiredToken`, ...): the next [`Self::current`]
    /// fetches anew, unless another call already did. Whether retrying can help.
    pub async fn refused(&self, used: &Credentials) -> bool {
        let CredentialSource::InstanceProfile(profile) = self else { return false };
        let mut cached = profile.cached.lock().await;
        if cached.as_ref().is_some_and(|(c, _)| c.access_key_id == used.access_key_id) {
            *cached = None;
        }
        true
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
}
