//! Node IPAM: VPC addresses from the ranges this node was given.
//!
//! One JSON state file per network, changed only under an exclusive `flock` and replaced with
//! `vswitch_api::file::write_atomic` (temporary, fsync, rename, fsync the directory): a crash at
//! any instant leaves either the old or the new state, so an address is never handed out twice and an allocation is never lost
//! (the DEL or GC that follows a crashed ADD releases it). Allocations are keyed by container ID
//! and interface, so a repeated ADD gets the same address. A released address stays out of use
//! for `reuse_delay` (conntrack's SYN_SENT timeout is 120 s), so a new pod never receives the old
//! one's connections.

use std::collections::BTreeMap;
use std::fs::OpenOptions;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use nix::fcntl::{Flock, FlockArg};
use serde::{Deserialize, Serialize};

use crate::spec::{Attachment, RangeConf};

#[derive(Debug, thiserror::Error)]
pub enum IpamError {
    #[error("no free address in {0} (released ones wait out their reuse delay)")]
    Exhausted(String),
    #[error("{ip} is outside this node's ranges ({ranges})")]
    OutOfRange { ip: Ipv4Addr, ranges: String },
    #[error("{ip} is in use by container {holder}")]
    Taken { ip: Ipv4Addr, holder: String },
    #[error("container {owner} already has {has}; it cannot also take {wanted}")]
    OwnerHasAnother { owner: String, has: Ipv4Addr, wanted: Ipv4Addr },
    #[error("IPAM state {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("IPAM state {path} is corrupt: {source}")]
    Corrupt { path: PathBuf, source: serde_json::Error },
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct State {
    allocations: BTreeMap<Ipv4Addr, Attachment>,
    /// Address -> release time (seconds since the epoch).
    released: BTreeMap<Ipv4Addr, u64>,
    /// Where the next search starts, so addresses are used round-robin.
    last: Option<Ipv4Addr>,
    /// The sandbox each allocation was made for, so GC can remove a TAP without vswitchd.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    sandboxes: BTreeMap<Ipv4Addr, PathBuf>,
}

/// One allocation as GC sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Allocation {
    pub ip: Ipv4Addr,
    pub owner: Attachment,
    pub netns: Option<PathBuf>,
}

#[derive(Debug, Clone)]
pub struct Ipam {
    dir: PathBuf,
    ranges: Vec<RangeConf>,
    reuse_delay: Duration,
}

fn now_secs() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

impl Ipam {
    pub fn new(dir: &Path, ranges: Vec<RangeConf>, reuse_delay: Duration) -> Ipam {
        Ipam { dir: dir.into(), ranges, reuse_delay }
    }

    fn io(&self, path: &Path) -> impl Fn(std::io::Error) -> IpamError + '_ {
        let path = path.to_path_buf();
        move |source| IpamError::Io { path: path.clone(), source }
    }

    /// Runs `f` on the state under the lock; saves it if `f` says it changed.
    fn with_state<T>(&self, f: impl FnOnce(&mut State) -> Result<(T, bool), IpamError>) -> Result<T, IpamError> {
        std::fs::create_dir_all(&self.dir).map_err(self.io(&self.dir))?;
        let lock_path = self.dir.join("lock");
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(self.io(&lock_path))?;
        let _guard = Flock::lock(lock, FlockArg::LockExclusive)
            .map_err(|(_, e)| IpamError::Io { path: lock_path.clone(), source: e.into() })?;
        let path = self.dir.join("state.json");
        let mut state = match std::fs::read(&path) {
            Ok(bytes) => {
                serde_json::from_slice(&bytes).map_err(|source| IpamError::Corrupt { path: path.clone(), source })?
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => State::default(),
            Err(e) => return Err(IpamError::Io { path, source: e }),
        };
        let (value, changed) = f(&mut state)?;
        if changed {
            let bytes = serde_json::to_vec_pretty(&state).expect("serialisable");
            vswitch_api::file::write_atomic(&path, &bytes).map_err(self.io(&path))?;
        }
        Ok(value)
    }

    fn candidates(&self) -> impl Iterator<Item = Ipv4Addr> + '_ {
        self.ranges.iter().flat_map(|r| (u32::from(r.range_start)..=u32::from(r.range_end)).map(Ipv4Addr::from))
    }

    fn usable(&self, state: &State, ip: Ipv4Addr, now: u64) -> bool {
        !state.allocations.contains_key(&ip)
            && state.released.get(&ip).is_none_or(|&t| now.saturating_sub(t) >= self.reuse_delay.as_secs())
    }

    /// The address for `owner`: the one it already has, or the next usable one.
    pub fn allocate(&self, owner: &Attachment) -> Result<Ipv4Addr, IpamError> {
        self.allocate_for(owner, None, None).map(|(ip, _)| ip)
    }

    /// `ip` for `owner`, if it is in the ranges and nobody else holds it (a recently released
    /// address may be asked for by name: the reuse delay only steers automatic choice).
    pub fn allocate_specific(&self, owner: &Attachment, ip: Ipv4Addr) -> Result<Ipv4Addr, IpamError> {
        self.allocate_for(owner, Some(ip), None).map(|(ip, _)| ip)
    }

    /// The address for `owner` (the requested one, or the next usable one), recording the
    /// sandbox; also says whether this call made the allocation (false: `owner` had it already,
    /// so undoing a failed ADD must not release it).
    pub fn allocate_for(
        &self,
        owner: &Attachment,
        requested: Option<Ipv4Addr>,
        netns: Option<&Path>,
    ) -> Result<(Ipv4Addr, bool), IpamError> {
        self.with_state(|state| {
            let now = now_secs();
            let existing = state.allocations.iter().find(|(_, o)| *o == owner).map(|(ip, _)| *ip);
            if let Some(ip) = existing {
                return match requested {
                    Some(wanted) if wanted != ip => {
                        Err(IpamError::OwnerHasAnother { owner: owner.container_id.clone(), has: ip, wanted })
                    }
                    _ => Ok(((ip, false), false)),
                };
            }
            let ip = match requested {
                Some(ip) => {
                    if !self.candidates().any(|c| c == ip) {
                        return Err(IpamError::OutOfRange { ip, ranges: self.describe() });
                    }
                    if let Some(holder) = state.allocations.get(&ip) {
                        return Err(IpamError::Taken { ip, holder: holder.container_id.clone() });
                    }
                    ip
                }
                None => {
                    let all: Vec<Ipv4Addr> = self.candidates().collect();
                    let start = state.last.and_then(|l| all.iter().position(|&ip| ip == l)).map_or(0, |p| p + 1);
                    let ip = (0..all.len())
                        .map(|i| all[(start + i) % all.len()])
                        .find(|&ip| self.usable(state, ip, now))
                        .ok_or_else(|| IpamError::Exhausted(self.describe()))?;
                    state.last = Some(ip);
                    ip
                }
            };
            state.allocations.insert(ip, owner.clone());
            if let Some(netns) = netns {
                state.sandboxes.insert(ip, netns.to_path_buf());
            }
            state.released.remove(&ip);
            state.released.retain(|_, t| now.saturating_sub(*t) < self.reuse_delay.as_secs());
            Ok(((ip, true), true))
        })
    }

    /// Releases `owner`'s address, if it has one (releasing twice is fine).
    pub fn release(&self, owner: &Attachment) -> Result<Option<Ipv4Addr>, IpamError> {
        self.with_state(|state| {
            let Some(ip) = state.allocations.iter().find(|(_, o)| *o == owner).map(|(ip, _)| *ip) else {
                return Ok((None, false));
            };
            state.allocations.remove(&ip);
            state.sandboxes.remove(&ip);
            state.released.insert(ip, now_secs());
            Ok((Some(ip), true))
        })
    }

    pub fn lookup(&self, owner: &Attachment) -> Result<Option<Ipv4Addr>, IpamError> {
        self.with_state(|state| Ok((state.allocations.iter().find(|(_, o)| *o == owner).map(|(ip, _)| *ip), false)))
    }

    pub fn allocations(&self) -> Result<Vec<(Ipv4Addr, Attachment)>, IpamError> {
        self.with_state(|state| Ok((state.allocations.iter().map(|(ip, o)| (*ip, o.clone())).collect(), false)))
    }

    /// Every allocation with the sandbox it was made for (when recorded).
    pub fn allocations_with_sandbox(&self) -> Result<Vec<Allocation>, IpamError> {
        self.with_state(|state| {
            let list = state
                .allocations
                .iter()
                .map(|(ip, o)| Allocation { ip: *ip, owner: o.clone(), netns: state.sandboxes.get(ip).cloned() })
                .collect();
            Ok((list, false))
        })
    }

    /// Addresses that could be handed out now.
    pub fn free(&self) -> Result<usize, IpamError> {
        let now = now_secs();
        self.with_state(|state| Ok((self.candidates().filter(|&ip| self.usable(state, ip, now)).count(), false)))
    }

    fn describe(&self) -> String {
        self.ranges.iter().map(|r| format!("{}-{}", r.range_start, r.range_end)).collect::<Vec<_>>().join(", ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fresh(delay: u64) -> (Ipam, PathBuf) {
        static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "vpc-ipam-{}-{}",
            std::process::id(),
            N.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        ));
        let ranges =
            vec![RangeConf { range_start: "10.0.0.1".parse().unwrap(), range_end: "10.0.0.3".parse().unwrap() }];
        (Ipam::new(&dir, ranges, Duration::from_secs(delay)), dir)
    }

    fn owner(id: &str) -> Attachment {
        Attachment { container_id: id.into(), ifname: "eth0".into() }
    }

    #[test]
    fn allocations_are_per_owner_idempotent_and_exhaust() {
        let (ipam, dir) = fresh(120);
        let a = ipam.allocate(&owner("a")).unwrap();
        assert_eq!(ipam.allocate(&owner("a")).unwrap(), a, "repeated ADD gets the same address");
        let b = ipam.allocate(&owner("b")).unwrap();
        let c = ipam.allocate(&owner("c")).unwrap();
        assert!(a != b && b != c && a != c);
        assert!(matches!(ipam.allocate(&owner("d")), Err(IpamError::Exhausted(_))));
        assert_eq!(ipam.free().unwrap(), 0);
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn released_addresses_wait_out_the_reuse_delay() {
        let (ipam, dir) = fresh(120);
        let a = ipam.allocate(&owner("a")).unwrap();
        ipam.allocate(&owner("b")).unwrap();
        ipam.allocate(&owner("c")).unwrap();
        assert_eq!(ipam.release(&owner("a")).unwrap(), Some(a));
        assert_eq!(ipam.release(&owner("a")).unwrap(), None, "second release is fine");
        assert!(matches!(ipam.allocate(&owner("d")), Err(IpamError::Exhausted(_))), "{a} must not be reused yet");
        std::fs::remove_dir_all(dir).unwrap();

        let (ipam, dir) = fresh(0);
        let a = ipam.allocate(&owner("a")).unwrap();
        ipam.release(&owner("a")).unwrap();
        // Round-robin: the next allocation does not take the just-released address first.
        assert_ne!(ipam.allocate(&owner("e")).unwrap(), a);
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn specific_addresses_are_checked() {
        let (ipam, dir) = fresh(120);
        assert_eq!(ipam.allocate_specific(&owner("a"), "10.0.0.2".parse().unwrap()).unwrap().to_string(), "10.0.0.2");
        assert_eq!(ipam.allocate_specific(&owner("a"), "10.0.0.2".parse().unwrap()).unwrap().to_string(), "10.0.0.2");
        assert!(matches!(
            ipam.allocate_specific(&owner("b"), "10.0.0.2".parse().unwrap()),
            Err(IpamError::Taken { .. })
        ));
        assert!(matches!(
            ipam.allocate_specific(&owner("b"), "10.0.0.9".parse().unwrap()),
            Err(IpamError::OutOfRange { .. })
        ));
        assert!(matches!(
            ipam.allocate_specific(&owner("a"), "10.0.0.3".parse().unwrap()),
            Err(IpamError::OwnerHasAnother { .. })
        ));
        let (ip, new) = ipam.allocate_for(&owner("c"), None, Some(Path::new("/run/netns/c"))).unwrap();
        assert!(new && ip.to_string() != "10.0.0.2");
        assert!(!ipam.allocate_for(&owner("c"), None, None).unwrap().1, "already had it");
        let all = ipam.allocations_with_sandbox().unwrap();
        assert_eq!(all.iter().find(|a| a.ip == ip).unwrap().netns.as_deref(), Some(Path::new("/run/netns/c")));
        ipam.release(&owner("c")).unwrap();
        assert!(ipam.allocations_with_sandbox().unwrap().iter().all(|a| a.netns.is_none()));
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn concurrent_allocations_never_collide() {
        let (ipam, dir) = fresh(120);
        let ipam = Ipam {
            ranges: vec![RangeConf {
                range_start: "10.0.1.0".parse().unwrap(),
                range_end: "10.0.1.255".parse().unwrap(),
            }],
            ..ipam
        };
        let got: Vec<Ipv4Addr> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..8)
                .map(|t| {
                    let ipam = ipam.clone();
                    s.spawn(move || {
                        (0..25).map(|i| ipam.allocate(&owner(&format!("{t}-{i}"))).unwrap()).collect::<Vec<_>>()
                    })
                })
                .collect();
            handles.into_iter().flat_map(|h| h.join().unwrap()).collect()
        });
        let mut unique = got.clone();
        unique.sort();
        unique.dedup();
        assert_eq!(unique.len(), 200);
        assert_eq!(ipam.allocations().unwrap().len(), 200);
        std::fs::remove_dir_all(dir).unwrap();
    }
}
