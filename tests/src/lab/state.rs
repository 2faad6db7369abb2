//! A lab that outlives the process that built it (`vpc-lab up`): what is recorded in
//! `/run/vpc-lab/NAME.json` to find it, check it and take it down later.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde::{Deserialize, Serialize};

use super::{kill9, StickyMove, Topology, STATE_DIR};
use crate::etcd::DetachedEtcd;
use crate::netns::pids_in;

/// Everything needed to find and remove a lab later (`vpc-lab down`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LabState {
    pub topology: Topology,
    pub dir: PathBuf,
    pub namespaces: Vec<String>,
    pub pids: Vec<u32>,
    /// The etcd members ([`super::IpamMode::Etcd`]): their pids and directory (certificates, data, logs).
    #[serde(default)]
    pub etcd: Option<DetachedEtcd>,
}

impl LabState {
    pub fn path(name: &str) -> PathBuf {
        Path::new(STATE_DIR).join(format!("{name}.json"))
    }

    /// The labs that are up.
    pub fn list() -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(STATE_DIR)
            .map(|d| {
                d.flatten().filter_map(|e| e.file_name().to_str()?.strip_suffix(".json").map(str::to_string)).collect()
            })
            .unwrap_or_default();
        names.sort();
        names
    }

    pub fn load(name: &str) -> std::io::Result<LabState> {
        let bytes = std::fs::read(Self::path(name))?;
        serde_json::from_slice(&bytes).map_err(std::io::Error::other)
    }

    pub fn save(&self) -> std::io::Result<()> {
        std::fs::create_dir_all(STATE_DIR)?;
        std::fs::write(Self::path(&self.topology.name), serde_json::to_vec_pretty(self).expect("serialisable"))
    }

    /// Moves the sticky pod to the next node (see [`Topology::move_sticky`]) and records where
    /// it is now: its new namespace and server replace the old ones in the state.
    pub fn move_sticky(&mut self) -> StickyMove {
        let moved = self.topology.move_sticky();
        self.namespaces.retain(|n| *n != moved.old_netns);
        self.pids.retain(|p| !moved.killed.contains(p));
        self.namespaces.push(moved.new_netns.keep());
        // Not waited for: it serves on after this process ends, until `vpc-lab down`.
        self.pids.push(moved.server.id());
        if let Err(e) = self.save() {
            eprintln!("vpc-lab: saving the lab's state: {e}");
        }
        moved.report
    }

    /// Kills the lab's processes (the recorded ones, the etcd members and anything else still
    /// running in its namespaces) and deletes its namespaces (and so every link in them).
    pub fn teardown(&self) {
        for &pid in &self.pids {
            kill9(pid);
        }
        if let Some(etcd) = &self.etcd {
            for &pid in &etcd.pids {
                kill9(pid);
            }
        }
        for ns in &self.namespaces {
            for pid in pids_in(ns) {
                kill9(pid);
            }
        }
        for ns in self.namespaces.iter().rev() {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
        if let Some(etcd) = &self.etcd {
            let _ = std::fs::remove_dir_all(&etcd.dir);
        }
        let _ = std::fs::remove_file(Self::path(&self.topology.name));
    }
}
