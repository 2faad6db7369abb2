//! The invocation log: one JSON line per plugin run (verb, container, pod, address, duration,
//! outcome), appended to `logFile` and moved to `<logFile>.1` once it is larger than
//! `logMaxBytes`. Never stdout (that is the CNI result), and never an error: a log that cannot
//! be written is skipped, the verb's outcome stands.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use nix::fcntl::{Flock, FlockArg};

/// Where and how much to log; read from the raw configuration so that even an invocation whose
/// configuration is invalid is logged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogTarget {
    pub path: Option<PathBuf>,
    pub max_bytes: u64,
}

impl LogTarget {
    pub fn from_config(raw: &[u8]) -> LogTarget {
        let value = serde_json::from_slice::<serde_json::Value>(raw).unwrap_or_default();
        let path = match value.get("logFile") {
            Some(serde_json::Value::String(p)) if p.is_empty() => None,
            Some(serde_json::Value::String(p)) => Some(PathBuf::from(p)),
            _ => Some(crate::spec::default_log_file()),
        };
        let max_bytes =
            value.get("logMaxBytes").and_then(|v| v.as_u64()).unwrap_or_else(crate::spec::default_log_max_bytes);
        LogTarget { path, max_bytes }
    }

    /// Appends `line` (one JSON object) and rotates; any failure is swallowed.
    pub fn write(&self, line: &serde_json::Value) {
        if let Some(path) = &self.path {
            let _ = append(path, self.max_bytes, line);
        }
    }
}

fn open(path: &Path) -> std::io::Result<Flock<File>> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let file = OpenOptions::new().create(true).append(true).open(path)?;
    Flock::lock(file, FlockArg::LockExclusive).map_err(|(_, e)| e.into())
}

fn append(path: &Path, max_bytes: u64, line: &serde_json::Value) -> std::io::Result<()> {
    let mut text = line.to_string();
    text.push('\n');
    // Concurrent runs serialise on the file's lock; one that waited while another rotated holds
    // the old file, so it checks it still has the one at `path` and reopens otherwise.
    for _ in 0..4 {
        let mut file = open(path)?;
        let held = file.metadata()?;
        let current = std::fs::metadata(path)?;
        if (held.dev(), held.ino()) != (current.dev(), current.ino()) {
            continue;
        }
        if held.len() > 0 && held.len() + text.len() as u64 > max_bytes {
            let mut rotated = path.as_os_str().to_owned();
            rotated.push(".1");
            std::fs::rename(path, PathBuf::from(rotated))?;
            continue;
        }
        return file.write_all(text.as_bytes());
    }
    Ok(())
}

/// Now as RFC 3339 UTC with milliseconds (`2025-01-31T12:00:00.123Z`).
pub fn timestamp(now: SystemTime) -> String {
    let since = now.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = since.as_secs();
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Civil from days (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        since.subsec_millis()
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn timestamps_are_rfc3339() {
        assert_eq!(timestamp(UNIX_EPOCH), "1970-01-01T00:00:00.000Z");
        assert_eq!(timestamp(UNIX_EPOCH + Duration::from_millis(1_709_210_096_789)), "2024-02-29T12:34:56.789Z");
    }

    #[test]
    fn targets_come_from_the_raw_config() {
        assert_eq!(LogTarget::from_config(b"{not json").path, Some(crate::spec::default_log_file()));
        let t = LogTarget::from_config(br#"{"logFile":"/tmp/x.log","logMaxBytes":100}"#);
        assert_eq!((t.path.as_deref(), t.max_bytes), (Some(Path::new("/tmp/x.log")), 100));
        assert_eq!(LogTarget::from_config(br#"{"logFile":""}"#).path, None);
    }

    #[test]
    fn lines_are_appended_and_rotated_at_the_bound() {
        let dir = std::env::temp_dir().join(format!("vpc-cni-log-{}", std::process::id()));
        let path = dir.join("sub/cni.log");
        let target = LogTarget { path: Some(path.clone()), max_bytes: 200 };
        for i in 0..10 {
            target.write(&serde_json::json!({"n": i, "pad": "x".repeat(40)}));
        }
        let current = std::fs::read_to_string(&path).unwrap();
        let old = std::fs::read_to_string(dir.join("sub/cni.log.1")).unwrap();
        assert!(current.len() <= 200 && old.len() <= 200, "{current} / {old}");
        assert!(current.lines().last().unwrap().contains("\"n\":9"));
        assert!(current.lines().chain(old.lines()).all(|l| serde_json::from_str::<serde_json::Value>(l).is_ok()));
        // An unwritable target is not an error.
        LogTarget { path: Some("/proc/nope/cni.log".into()), max_bytes: 1 }.write(&serde_json::json!({}));
        std::fs::remove_dir_all(dir).unwrap();
    }
}
