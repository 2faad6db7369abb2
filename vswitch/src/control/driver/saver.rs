//! The state file as the driver keeps it: after every change the pods and API routes are saved
//! (`persist` has the file's format).

use std::sync::{Arc, Mutex};

use super::publisher::Publisher;
use crate::control::persist::{SavedPort, SavedRoute, SavedState, StateError, StateFile, FORMAT};
use crate::control::registry::Registry;

#[derive(Debug, thiserror::Error)]
pub enum SaveError {
    #[error("saving state: {0}")]
    File(#[from] StateError),
    #[error("saving state: {0}")]
    Task(#[from] tokio::task::JoinError),
}

#[derive(Debug)]
pub struct Saver {
    /// Also serialises saves, so the file always ends with the latest state. None in memory.
    file: Option<Arc<Mutex<StateFile>>>,
    publisher: Arc<Publisher>,
}

impl Saver {
    pub fn new(file: Option<StateFile>, publisher: Arc<Publisher>) -> Saver {
        Saver { file: file.map(|f| Arc::new(Mutex::new(f))), publisher }
    }

    /// Saves pods and API routes. The state is read under the file's lock, so saves that race
    /// end with the newest state on disk.
    pub async fn save(&self) -> Result<(), SaveError> {
        let Some(file) = self.file.clone() else { return Ok(()) };
        let publisher = self.publisher.clone();
        tokio::task::spawn_blocking(move || {
            let file = file.lock().unwrap_or_else(|e| e.into_inner());
            let state = saved_state(&publisher.registry());
            file.save(&state)
        })
        .await??;
        Ok(())
    }

    pub fn saved_state(&self) -> SavedState {
        saved_state(&self.publisher.registry())
    }
}

fn saved_state(registry: &Registry) -> SavedState {
    let ports = registry.ports().filter_map(|p| Some(SavedPort::from_spec(&p.pod_spec()?, p.info.mtu))).collect();
    let routes = registry
        .api_routes()
        .into_iter()
        .map(|(prefix, port)| SavedRoute { prefix: prefix.to_string(), port })
        .collect();
    SavedState { format: FORMAT, ports, routes }
}
