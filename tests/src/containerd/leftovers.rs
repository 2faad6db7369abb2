//! What a containerd leaves on the machine and how to find it: its shims and their processes,
//! their sockets, mounts and cgroups.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Processes whose command line has `arg` as one argument (containerd's shims get `-address SOCKET`).
pub(super) fn processes_with_arg(arg: &Path) -> Vec<i32> {
    let want = arg.as_os_str().as_encoded_bytes();
    all_pids()
        .into_iter()
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| c.split(|&b| b == 0).any(|a| a == want))
        })
        .collect()
}

fn all_pids() -> Vec<i32> {
    std::fs::read_dir("/proc")
        .map(|d| d.flatten().filter_map(|e| e.file_name().to_str()?.parse().ok()).collect())
        .unwrap_or_default()
}

fn parent_of(pid: i32) -> Option<i32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // "pid (comm) state ppid ...": comm may hold spaces and parentheses; it ends at the last ')'.
    stat[stat.rfind(')')? + 1..].split_whitespace().nth(1)?.parse().ok()
}

/// Every process below `roots` (children, their children, ...).
pub(super) fn descendants(roots: &[i32]) -> Vec<i32> {
    let parents: Vec<(i32, i32)> = all_pids().into_iter().filter_map(|p| Some((p, parent_of(p)?))).collect();
    let mut found: Vec<i32> = Vec::new();
    let mut frontier: HashSet<i32> = roots.iter().copied().collect();
    while !frontier.is_empty() {
        let next: HashSet<i32> = parents
            .iter()
            .filter(|(_, pp)| frontier.contains(pp))
            .map(|&(p, _)| p)
            .filter(|p| !found.contains(p))
            .collect();
        found.extend(&next);
        frontier = next;
    }
    found
}

/// Whether process `pid` is running (not gone, not a zombie).
pub fn alive(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .is_ok_and(|s| s.rfind(')').and_then(|i| s[i + 1..].split_whitespace().next()) != Some("Z"))
}

/// The paths of the unix sockets process `pid` holds open.
pub(super) fn unix_sockets_of(pid: i32) -> Vec<PathBuf> {
    let inodes: HashSet<String> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| {
            d.flatten()
                .filter_map(|e| {
                    let link = std::fs::read_link(e.path()).ok()?;
                    let s = link.to_str()?;
                    Some(s.strip_prefix("socket:[")?.strip_suffix(']')?.to_string())
                })
                .collect()
        })
        .unwrap_or_default();
    let table = std::fs::read_to_string(format!("/proc/{pid}/net/unix")).unwrap_or_default();
    table
        .lines()
        .skip(1)
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.len() >= 8 && inodes.contains(f[6]) && f[7].starts_with('/')).then(|| PathBuf::from(f[7]))
        })
        .collect()
}

/// Mount points of this mount namespace, in mount order.
pub fn mount_points() -> Vec<PathBuf> {
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split(' ').nth(4).map(|m| PathBuf::from(m.replace("\\040", " "))))
        .collect()
}

/// The directories of cgroup `parent` in every hierarchy that has it.
pub fn cgroup_dirs(parent: &str) -> Vec<PathBuf> {
    let rel = parent.trim_start_matches('/');
    let mut roots: Vec<PathBuf> = std::fs::read_dir("/sys/fs/cgroup")
        .map(|d| d.flatten().map(|h| h.path().join(rel)).collect())
        .unwrap_or_default();
    // cgroup v2 alone: /sys/fs/cgroup is the hierarchy itself.
    roots.push(Path::new("/sys/fs/cgroup").join(rel));
    roots.into_iter().filter(|r| r.is_dir()).collect()
}

/// Removes cgroup `parent` and everything below it in every hierarchy (deepest first).
pub(super) fn remove_cgroups(parent: &str) {
    let mut dirs: Vec<PathBuf> = Vec::new();
    let mut stack = cgroup_dirs(parent);
    while let Some(d) = stack.pop() {
        if let Ok(entries) = std::fs::read_dir(&d) {
            stack.extend(entries.flatten().filter(|e| e.file_type().is_ok_and(|t| t.is_dir())).map(|e| e.path()));
        }
        dirs.push(d);
    }
    dirs.sort_by_key(|d| std::cmp::Reverse(d.components().count()));
    for d in dirs {
        for _ in 0..50 {
            if std::fs::remove_dir(&d).is_ok() || !d.exists() {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}
