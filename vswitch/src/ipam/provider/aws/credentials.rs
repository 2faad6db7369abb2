//! The standard credential chain, the part a node's DaemonSet uses without an SDK: the
//! environment (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN`), then the
//! shared credentials file (`AWS_SHARED_CREDENTIALS_FILE` or `~/.aws/credentials`, profile
//! `AWS_PROFILE` or `default`). The secrets are never printed: `Debug` shows where they came from.

use std::path::PathBuf;

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
