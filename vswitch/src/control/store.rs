//! The ports a restarted vswitchd must re-attach, kept in `STATE_DIR/ports.json`. Written to a
//! temporary file, synced and renamed, so a crash leaves either the old or the new list.

use std::io::Write;
use std::path::{Path, PathBuf};

use super::api::Request;

#[derive(Debug)]
pub struct PortStore {
    path: PathBuf,
}

impl PortStore {
    pub fn open(state_dir: &Path) -> std::io::Result<PortStore> {
        std::fs::create_dir_all(state_dir)?;
        Ok(PortStore { path: state_dir.join("ports.json") })
    }

    /// The saved `add_port` requests; none if the file does not exist yet.
    pub fn load(&self) -> std::io::Result<Vec<Request>> {
        match std::fs::read(&self.path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(std::io::Error::other),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
            Err(e) => Err(e),
        }
    }

    pub fn save(&self, ports: &[Request]) -> std::io::Result<()> {
        let tmp = self.path.with_extension("json.tmp");
        let mut file = std::fs::File::create(&tmp)?;
        file.write_all(&serde_json::to_vec_pretty(ports).map_err(std::io::Error::other)?)?;
        file.sync_all()?;
        std::fs::rename(&tmp, &self.path)?;
        if let Some(dir) = self.path.parent() {
            std::fs::File::open(dir)?.sync_all()?;
        }
        Ok(())
    }
}
