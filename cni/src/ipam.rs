//! Node IPAM: VPC addresses from the ranges this node was given, one per family the ranges
//! have (IPv4, IPv6 or both).
//!
//! One JSON state file per network, changed only under an exclusive `flock` and replaced with
//! `vswitch_host::file::write_atomic` (temporary, fsync, rename, fsync the directory): a crash at
//! any instant leaves either the old or the new state, so an address is never handed out twice and an allocation is never lost
//! (the DEL or GC that follows a crashed ADD releases it). Allocations are keyed by container ID
//! and interface, so a repeated ADD gets the same addresses; a dual-stack pod's two addresses are
//! taken in one change of the state, so it gets both or neither. A released address stays out of
//! use for `reuse_delay` (conntrack's SYN_SENT timeout is 120 s), so a new pod never receives the
//! old one's connections. Ranges are never enumerated (an IPv6 range may be a /64): the search
//! for a free address only steps over the addresses the state names.

use std::collections::BTreeMap;
use std::fs::OpenOptions;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use nix::fcntl::{Flock, FlockArg};
use serde::{Deserialize, Serialize};

use crate::spec::{ip_number, Attachment, PodIps, RangeConf};

#[derive(Debug, thiserror::Error)]
pub enum IpamError {
    #[error("no free address in {0} (released ones wait out their reuse delay)")]
    Exhausted(String),
    #[error("{ip} is outside this node's ranges ({ranges})")]
    OutOfRange { ip: IpAddr, ranges: String },
    #[error("{ip} is in use by container {holder}")]
    Taken { ip: IpAddr, holder: String },
    #[error("container {owner} already has {has}; it cannot also take {wanted}")]
    OwnerHasAnother { owner: String, has: IpAddr, wanted: IpAddr },
    #[error("IPAM state {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("IPAM state {path} is corrupt: {source}")]
    Corrupt { path: PathBuf, source: serde_json::Error },
}

/// The state file. Addresses of both families share the maps (an IPv4-only file of an older
/// vpc-cni reads as it is).
#[derive(Debug, Default, Serialize, Deserialize)]
struct State {
    allocations: BTreeMap<IpAddr, Attachment>,
    /// Address -> release time (seconds since the epoch).
    released: BTreeMap<IpAddr, u64>,
    /// Where the next IPv4 search starts, so addresses are used round-robin.
    last: Option<Ipv4Addr>,
    /// The same for IPv6.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    last6: Option<Ipv6Addr>,
    /// The sandbox each allocation was made for, so GC can remove a TAP without vswitchd.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    sandboxes: BTreeMap<IpAddr, PathBuf>,
}

impl State {
    fn held_by(&self, owner: &Attachment) -> PodIps {
        let mut ips = PodIps::default();
        for (ip, _) in self.allocations.iter().filter(|(_, o)| *o == owner) {
            // Two of one family cannot be written by this code; the first one counts.
            let _ = ips.add(*ip);
        }
        ips
    }

    /// `ips` become free, released at `now` (their reuse delay starts).
    fn release(&mut self, ips: PodIps, now: u64) {
        for ip in ips.iter() {
            self.allocations.remove(&ip);
            self.sandboxes.remove(&ip);
            self.released.insert(ip, now);
        }
    }

    fn last(&self, ipv6: bool) -> Option<IpAddr> {
        if ipv6 {
            self.last6.map(IpAddr::V6)
        } else {
            self.last.map(IpAddr::V4)
        }
    }

    fn set_last(&mut self, ip: IpAddr) {
        match ip {
            IpAddr::V4(v4) => self.last = Some(v4),
            IpAddr::V6(v6) => self.last6 = Some(v6),
        }
    }
}

/// The state at `path`; none yet is the empty state.
fn read_state(path: &Path) -> Result<State, IpamError> {
    match std::fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes).map_err(|source| IpamError::Corrupt { path: path.into(), source }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(State::default()),
        Err(source) => Err(IpamError::Io { path: path.into(), source }),
    }
}

/// How much of one family's ranges is in use, as `vswitchctl doctor` reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FamilyUsage {
    pub ipv6: bool,
    /// Addresses in the ranges (an IPv6 range may hold 2^64 of them).
    pub total: u128,
    pub allocated: u128,
    /// Free, but released less than the reuse delay ago: not handed out automatically yet.
    pub cooling: u128,
}

impl FamilyUsage {
    pub fn free(&self) -> u128 {
        self.total.saturating_sub(self.allocated)
    }
}

/// One attachment's allocation as GC sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Allocation {
    pub ips: PodIps,
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

fn ip_of(number: u128, ipv6: bool) -> IpAddr {
    if ipv6 {
        IpAddr::V6(number.into())
    } else {
        IpAddr::V4(Ipv4Addr::from(number as u32))
    }
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
        let path = self.state_path();
        let mut state = read_state(&path)?;
        let (value, changed) = f(&mut state)?;
        if changed {
            let bytes = serde_json::to_vec_pretty(&state).expect("serialisable");
            vswitch_host::file::write_atomic(&path, &bytes).map_err(self.io(&path))?;
        }
        Ok(value)
    }

    /// The families the ranges have, IPv4 first (`true`: IPv6).
    fn families(&self) -> impl Iterator<Item = bool> + '_ {
        [false, true].into_iter().filter(|&ipv6| self.ranges.iter().any(|r| r.is_ipv6() == ipv6))
    }

    fn usable(&self, state: &State, ip: IpAddr, now: u64) -> bool {
        !state.allocations.contains_key(&ip)
            && state.released.get(&ip).is_none_or(|&t| now.saturating_sub(t) >= self.reuse_delay.as_secs())
    }

    /// The next usable address of a family after the last one handed out (round-robin over the
    /// ranges in their order). Every unusable candidate is allocated or released, so looking at
    /// that many plus one candidates finds a usable one if there is any: the walk is bounded by
    /// the state's size, never by the ranges'.
    fn next_free(&self, state: &State, ipv6: bool, now: u64) -> Option<IpAddr> {
        let spans: Vec<(u128, u128)> =
            self.ranges.iter().filter(|r| r.is_ipv6() == ipv6).map(RangeConf::span).collect();
        let last = state.last(ipv6).map(ip_number);
        let (first, from) =
            match last.and_then(|l| spans.iter().position(|&(s, e)| (s..=e).contains(&l)).map(|i| (i, l))) {
                Some((i, l)) if l < spans[i].1 => (i, l + 1),
                Some((i, _)) => ((i + 1) % spans.len(), spans[(i + 1) % spans.len()].0),
                None => (0, spans.first()?.0),
            };
        // From `from` to the end of its range, the ranges after it, those before it, and the
        // start of its own range.
        let walk = std::iter::once((from, spans[first].1))
            .chain(spans[first + 1..].iter().chain(&spans[..first]).copied())
            .chain((from > spans[first].0).then(|| (spans[first].0, from - 1)));
        let bound = state.allocations.len() + state.released.len() + 1;
        walk.flat_map(|(s, e)| s..=e).take(bound).map(|n| ip_of(n, ipv6)).find(|&ip| self.usable(state, ip, now))
    }

    /// The addresses for `owner`: the ones it already has, or the next usable ones.
    pub fn allocate(&self, owner: &Attachment) -> Result<PodIps, IpamError> {
        self.allocate_for(owner, PodIps::default(), None).map(|(ips, _)| ips)
    }

    /// `ip` for `owner` (and the next usable address of the other family, if the network has
    /// it), if `ip` is in the ranges and nobody else holds it (a recently released address may be
    /// asked for by name: the reuse delay only steers automatic choice).
    pub fn allocate_specific(&self, owner: &Attachment, ip: IpAddr) -> Result<PodIps, IpamError> {
        let requested = PodIps::from_ips([ip]).expect("one address");
        self.allocate_for(owner, requested, None).map(|(ips, _)| ips)
    }

    /// One address per family of the ranges for `owner` (the requested one, or the next usable
    /// one), recording the sandbox; also says whether this call made the allocation (false:
    /// `owner` had addresses already, so undoing a failed ADD must not release them). All or
    /// nothing: a family that fails leaves the state as it was.
    pub fn allocate_for(
        &self,
        owner: &Attachment,
        requested: PodIps,
        netns: Option<&Path>,
    ) -> Result<(PodIps, bool), IpamError> {
        self.with_state(|state| {
            let now = now_secs();
            for ip in requested.iter() {
                if !self.ranges.iter().any(|r| r.contains(ip)) {
                    return Err(IpamError::OutOfRange { ip, ranges: self.describe(None) });
                }
                match state.allocations.get(&ip) {
                    Some(holder) if holder != owner => {
                        return Err(IpamError::Taken { ip, holder: holder.container_id.clone() })
                    }
                    _ => {}
                }
            }
            let had = state.held_by(owner);
            for (has, wanted) in had.iter().flat_map(|has| requested.iter().map(move |wanted| (has, wanted))) {
                if has.is_ipv6() == wanted.is_ipv6() && has != wanted {
                    return Err(IpamError::OwnerHasAnother { owner: owner.container_id.clone(), has, wanted });
                }
            }
            let mut got = had;
            for ipv6 in self.families() {
                if got.iter().any(|ip| ip.is_ipv6() == ipv6) {
                    continue;
                }
                let ip = match requested.iter().find(|ip| ip.is_ipv6() == ipv6) {
                    Some(ip) => ip,
                    None => {
                        let ip = self
                            .next_free(state, ipv6, now)
                            .ok_or_else(|| IpamError::Exhausted(self.describe(Some(ipv6))))?;
                        state.set_last(ip);
                        ip
                    }
                };
                state.allocations.insert(ip, owner.clone());
                if let Some(netns) = netns {
                    state.sandboxes.insert(ip, netns.to_path_buf());
                }
                state.released.remove(&ip);
                got.add(ip).expect("one per family");
            }
            let changed = got != had;
            if changed {
                state.released.retain(|_, t| now.saturating_sub(*t) < self.reuse_delay.as_secs());
            }
            Ok(((got, had.is_empty()), changed))
        })
    }

    /// Releases `owner`'s addresses, if it has any (releasing twice is fine).
    pub fn release(&self, owner: &Attachment) -> Result<PodIps, IpamError> {
        self.with_state(|state| {
            let ips = state.held_by(owner);
            state.release(ips, now_secs());
            Ok((ips, !ips.is_empty()))
        })
    }

    /// `owner`'s addresses (none: it has no allocation).
    pub fn lookup(&self, owner: &Attachment) -> Result<PodIps, IpamError> {
        self.with_state(|state| Ok((state.held_by(owner), false)))
    }

    pub fn allocations(&self) -> Result<Vec<(IpAddr, Attachment)>, IpamError> {
        self.with_state(|state| Ok((state.allocations.iter().map(|(ip, o)| (*ip, o.clone())).collect(), false)))
    }

    /// Every attachment with its addresses and the sandbox they were allocated for (when recorded).
    pub fn allocations_with_sandbox(&self) -> Result<Vec<Allocation>, IpamError> {
        self.with_state(|state| {
            let mut by_owner: BTreeMap<&Attachment, Allocation> = BTreeMap::new();
            for (ip, owner) in &state.allocations {
                let entry = by_owner.entry(owner).or_insert_with(|| Allocation {
                    ips: PodIps::default(),
                    owner: owner.clone(),
                    netns: None,
                });
                let _ = entry.ips.add(*ip);
                entry.netns = entry.netns.take().or_else(|| state.sandboxes.get(ip).cloned());
            }
            Ok((by_owner.into_values().collect(), false))
        })
    }

    /// Releases `owner`'s addresses if the sandbox they were allocated for is still recorded as
    /// `netns` and that path still does not exist (checked under the lock, so a concurrent ADD
    /// or DEL of the owner wins). Released addresses wait out the reuse delay like any other.
    pub fn release_if_sandbox_gone(&self, owner: &Attachment, netns: &Path) -> Result<PodIps, IpamError> {
        self.with_state(|state| {
            let ips = state.held_by(owner);
            if ips.is_empty()
                || netns.exists()
                || ips.iter().any(|ip| state.sandboxes.get(&ip).map(PathBuf::as_path) != Some(netns))
            {
                return Ok((PodIps::default(), false));
            }
            state.release(ips, now_secs());
            Ok((ips, true))
        })
    }

    /// Could an ADD get its addresses now (a usable one in every family)?
    pub fn can_allocate(&self) -> Result<bool, IpamError> {
        let now = now_secs();
        self.with_state(|state| Ok((self.families().all(|ipv6| self.next_free(state, ipv6, now).is_some()), false)))
    }

    /// The state file (`<dataDir>/<network>/state.json`).
    pub fn state_path(&self) -> PathBuf {
        self.dir.join("state.json")
    }

    /// Per family of the ranges, IPv4 first: how many addresses they hold, are allocated, and
    /// are cooling at `now`. Reads without the lock and creates nothing (for an observer such as
    /// vswitchctl doctor): the file is only ever replaced whole, so a read sees one state.
    pub fn usage(&self, now: SystemTime) -> Result<Vec<FamilyUsage>, IpamError> {
        let state = read_state(&self.state_path())?;
        let now = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
        let in_ranges = |ip: &IpAddr, ipv6: bool| ip.is_ipv6() == ipv6 && self.ranges.iter().any(|r| r.contains(*ip));
        let usage = self
            .families()
            .map(|ipv6| FamilyUsage {
                ipv6,
                total: self
                    .ranges
                    .iter()
                    .filter(|r| r.is_ipv6() == ipv6)
                    .map(|r| {
                        let (start, end) = r.span();
                        end - start + 1
                    })
                    .sum(),
                allocated: state.allocations.keys().filter(|ip| in_ranges(ip, ipv6)).count() as u128,
                cooling: state
                    .released
                    .iter()
                    .filter(|(ip, &t)| {
                        in_ranges(ip, ipv6)
                            && !state.allocations.contains_key(ip)
                            && now.saturating_sub(t) < self.reuse_delay.as_secs()
                    })
                    .count() as u128,
            })
            .collect();
        Ok(usage)
    }

    /// The ranges, or those of one family (`Some(true)`: IPv6).
    fn describe(&self, ipv6: Option<bool>) -> String {
        let ranges = self.ranges.iter().filter(|r| ipv6.is_none_or(|v6| r.is_ipv6() == v6));
        ranges.map(|r| r.to_string()).collect::<Vec<_>>().join(", ")
    }
}

#[cfg(test)]
mod tests;
