//! The racing clients of the chaos test: each slot assigns and releases through one node's
//! socket, and the model records who holds what as the clients were told, to find duplicates.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use rand::Rng;
use vswitch_api::api::{AddressView, ErrorCode};
use vswitch_api::client::Client;

use crate::lab::{cut_off, owner, spec};

/// Who holds what, as the clients were told: an address is held from a successful assign reply
/// until a successful release reply.
#[derive(Debug, Default)]
pub struct Model {
    pub held: HashMap<IpAddr, Hold>,
    /// An address assigned to someone else while its holder's release was on its way for long
    /// (its reply lost in a kill): decided when that release is finally answered.
    pub suspects: Vec<Suspect>,
    pub duplicates: Vec<String>,
    pub anomalies: Vec<String>,
    /// Reassignments while the old holder's release reply was outstanding, found legitimate.
    pub late_reuse_ok: u64,
}

#[derive(Debug)]
pub struct Hold {
    pub owner: String,
    pub node: usize,
    /// When the first release request for it was sent.
    pub release_sent: Option<Instant>,
}

#[derive(Debug)]
pub struct Suspect {
    pub ip: IpAddr,
    pub old: String,
    pub new: String,
    pub at: Instant,
}

/// The reuse delay in test 1. A released address can be handed out again only after
/// `floor(release second) + REUSE`, so more than `REUSE - 1` seconds after the release: an
/// assignment earlier than that after the release request was sent is a duplicate for certain.
pub const CHAOS_REUSE: u64 = 2;
pub const CERTAIN_WINDOW: Duration = Duration::from_secs(CHAOS_REUSE - 1);

impl Model {
    /// `owner` on `node` was told it has `ip` at `at`.
    pub fn assigned(&mut self, owner: &str, node: usize, ip: IpAddr, at: Instant) {
        if let Some(hold) = self.held.get(&ip) {
            if hold.owner == owner {
                return;
            }
            match hold.release_sent {
                Some(sent) if at.duration_since(sent) >= CERTAIN_WINDOW => {
                    self.suspects.push(Suspect { ip, old: hold.owner.clone(), new: owner.into(), at })
                }
                _ => self.duplicates.push(format!(
                    "{ip} given to {owner} on n{node} while {} (n{}) holds it{}",
                    hold.owner,
                    hold.node,
                    hold.release_sent.map_or(String::new(), |s| format!(
                        " (its release was sent {:?} before)",
                        at.duration_since(s)
                    ))
                )),
            }
        }
        self.held.insert(ip, Hold { owner: owner.into(), node, release_sent: None });
    }

    pub fn release_sent(&mut self, owner: &str, ip: IpAddr, at: Instant) {
        if let Some(hold) = self.held.get_mut(&ip).filter(|h| h.owner == owner) {
            hold.release_sent.get_or_insert(at);
        }
    }

    /// `owner`'s release of `ip`, sent at `sent`, was answered: `now` says whether it released
    /// the address just then (false: an earlier attempt whose reply was lost had done it).
    pub fn released(&mut self, owner: &str, ip: IpAddr, sent: Instant, now: bool) {
        if self.held.get(&ip).is_some_and(|h| h.owner == owner) {
            self.held.remove(&ip);
        }
        let (mine, others): (Vec<Suspect>, Vec<Suspect>) =
            std::mem::take(&mut self.suspects).into_iter().partition(|s| s.old == owner && s.ip == ip);
        self.suspects = others;
        for s in mine {
            // Released only by this attempt, which started at `sent`: anyone who had the address
            // before `sent + CERTAIN_WINDOW` had it while `owner` still did.
            if now && s.at < sent + CERTAIN_WINDOW {
                self.duplicates.push(format!("{ip} given to {} while {owner} still held it", s.new));
            } else {
                self.late_reuse_ok += 1;
            }
        }
    }
}

#[derive(Debug, Default)]
pub struct Counts {
    pub assigned: AtomicU64,
    pub released: AtomicU64,
    pub repeat_assign: AtomicU64,
    pub unavailable: AtomicU64,
    pub exhausted: AtomicU64,
    pub unreachable: AtomicU64,
    /// Requests whose reply was lost and that were sent again.
    pub retried: AtomicU64,
}

impl Counts {
    pub fn ops(&self) -> u64 {
        self.assigned.load(Ordering::Relaxed)
            + self.released.load(Ordering::Relaxed)
            + self.repeat_assign.load(Ordering::Relaxed)
    }
}

#[derive(Debug)]
pub enum Slot {
    Idle,
    /// The assign's reply was lost: the daemon may have given it an address.
    Unsure(String),
    Holding(String, IpAddr),
    /// The release's reply was lost.
    Releasing(String, IpAddr),
}

pub struct Client1<'a> {
    pub node: usize,
    pub client: Client,
    pub model: &'a Mutex<Model>,
    pub counts: &'a Counts,
}

impl Client1<'_> {
    /// One step of a slot; returns its next state.
    pub fn step(&self, slot: Slot, new_owner: impl FnOnce() -> String, rng: &mut impl Rng) -> Slot {
        let anomaly = |text: String| self.model.lock().unwrap().anomalies.push(text);
        match slot {
            Slot::Idle => self.assign(new_owner(), false),
            Slot::Unsure(owner) => {
                self.counts.retried.fetch_add(1, Ordering::Relaxed);
                self.assign(owner, true)
            }
            Slot::Holding(owner, ip) if rng.gen_bool(0.2) => {
                // Asking again must give the same address, not a new one.
                match self.client.ipam_assign(spec(&owner)) {
                    Ok(AddressView { ips: again, new }) => {
                        if again != [ip] || new {
                            anomaly(format!("{owner} holds {ip} but asking again gave {again:?} (new: {new})"));
                        }
                        self.counts.repeat_assign.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(e) if cut_off(&e) => {
                        self.counts.unreachable.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(e) => anomaly(format!("{owner} holds {ip} but asking again failed: {e}")),
                }
                Slot::Holding(owner, ip)
            }
            Slot::Holding(owner, ip) => {
                let sent = Instant::now();
                self.model.lock().unwrap().release_sent(&owner, ip, sent);
                self.release(owner, ip, sent, false)
            }
            Slot::Releasing(owner, ip) => {
                self.counts.retried.fetch_add(1, Ordering::Relaxed);
                self.release(owner, ip, Instant::now(), true)
            }
        }
    }

    pub fn assign(&self, owner: String, retry: bool) -> Slot {
        match self.client.ipam_assign(spec(&owner)) {
            Ok(AddressView { ips, new }) => {
                let ip = ips[0];
                let at = Instant::now();
                let mut model = self.model.lock().unwrap();
                if !new && !retry {
                    model.anomalies.push(format!("{owner} is new but its address {ip} is not"));
                }
                model.assigned(&owner, self.node, ip, at);
                self.counts.assigned.fetch_add(1, Ordering::Relaxed);
                Slot::Holding(owner, ip)
            }
            Err(e) if e.code() == Some(ErrorCode::Unavailable) => {
                self.counts.unavailable.fetch_add(1, Ordering::Relaxed);
                Slot::Idle
            }
            Err(e) if e.code() == Some(ErrorCode::Exhausted) => {
                self.counts.exhausted.fetch_add(1, Ordering::Relaxed);
                // Every address is taken, cooling or warm on another node: give them time.
                std::thread::sleep(Duration::from_millis(20));
                Slot::Idle
            }
            Err(e) if cut_off(&e) => {
                self.counts.unreachable.fetch_add(1, Ordering::Relaxed);
                Slot::Unsure(owner)
            }
            Err(e) => {
                self.model.lock().unwrap().anomalies.push(format!("assign {owner} on n{}: {e}", self.node));
                Slot::Idle
            }
        }
    }

    pub fn release(&self, owner: String, ip: IpAddr, sent: Instant, retry: bool) -> Slot {
        match self.client.ipam_release(&self::owner(&owner)) {
            Ok(reply) => {
                let now = reply.released == [ip];
                let mut model = self.model.lock().unwrap();
                // A retry may find it released by the attempt whose reply was lost.
                let expected = now || (retry && reply.released.is_empty());
                if !expected {
                    model.anomalies.push(format!(
                        "releasing {owner} ({ip}) on n{} released {:?} (retry: {retry})",
                        self.node, reply.released
                    ));
                }
                model.released(&owner, ip, sent, now);
                self.counts.released.fetch_add(1, Ordering::Relaxed);
                Slot::Idle
            }
            Err(e) if cut_off(&e) => {
                self.counts.unreachable.fetch_add(1, Ordering::Relaxed);
                Slot::Releasing(owner, ip)
            }
            Err(e) => {
                self.model.lock().unwrap().anomalies.push(format!("release {owner} on n{}: {e}", self.node));
                Slot::Releasing(owner, ip)
            }
        }
    }
}
