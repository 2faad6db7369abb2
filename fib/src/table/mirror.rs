//! The writer's mirror of every chunk, and publishing it: rebuilding what changed and swapping
//! it in for the readers.

use std::sync::atomic::Ordering;

use crate::chunk::{ChunkPtr, LocalPrefix};
use crate::prefix::{Address, Prefix, GROUP_BITS};

/// The writer's record of one chunk: its prefixes and children, and what is published for it.
#[derive(Default)]
pub(super) struct ChunkMirror {
    /// Sorted by `(bits, len)`.
    pub(super) prefixes: Vec<LocalPrefix>,
    /// The chunks below (IPv6 only). Boxed: most chunks have none, and a full IPv4 table has
    /// 69,000 mirrors.
    pub(super) below: Option<Box<Below>>,
    pub(super) published: Option<ChunkPtr>,
    pub(super) published_fallback: u32,
    /// Own prefixes or the set of children changed: rebuild on publish.
    pub(super) dirty: bool,
    /// Something below changed.
    pub(super) dirty_below: bool,
    /// This mirror's key is in its parent's `dirty_children`.
    pub(super) queued: bool,
}

#[derive(Default)]
pub(super) struct Below {
    /// Sorted by key; a child's position here is its index in the published chunk.
    pub(super) children: Vec<(u32, ChunkMirror)>,
    /// Keys of children changed since the last publish (each once: see `queued`).
    pub(super) dirty_children: Vec<u32>,
}

impl ChunkMirror {
    pub(super) fn is_empty(&self) -> bool {
        self.prefixes.is_empty() && self.children().is_empty()
    }

    pub(super) fn children(&self) -> &[(u32, ChunkMirror)] {
        self.below.as_ref().map_or(&[], |below| &below.children)
    }

    pub(super) fn children_mut(&mut self) -> &mut [(u32, ChunkMirror)] {
        self.below.as_mut().map_or(&mut [], |below| &mut below.children)
    }

    pub(super) fn child_position(&self, key: u32) -> Result<usize, usize> {
        self.children().binary_search_by_key(&key, |c| c.0)
    }

    pub(super) fn child(&self, key: u32) -> Option<&ChunkMirror> {
        self.child_position(key).ok().map(|at| &self.children()[at].1)
    }

    /// The child at `key`, queued for the next publish; created when `create` is set.
    pub(super) fn child_for_update(&mut self, key: u32, create: bool) -> Option<&mut ChunkMirror> {
        let at = match self.child_position(key) {
            Ok(at) => at,
            Err(at) if create => {
                self.below.get_or_insert_with(Default::default).children.insert(at, (key, ChunkMirror::default()));
                self.dirty = true;
                at
            }
            Err(_) => return None,
        };
        self.dirty_below = true;
        let below = self.below.as_mut().expect("the child exists");
        let child = &mut below.children[at].1;
        if !child.queued {
            child.queued = true;
            below.dirty_children.push(key);
        }
        Some(&mut below.children[at].1)
    }
}

/// For each child key (ascending), the best match among `prefixes` (sorted by `(bits, len)`, so
/// in pre-order) or `fallback`: one sweep with a stack of nested prefixes. A prefix popped for
/// not covering a key ends before it, so it covers no later key either.
pub(super) fn child_fallbacks(prefixes: &[LocalPrefix], keys: impl Iterator<Item = u32>, fallback: u32) -> Vec<u32> {
    let mut stack: Vec<&LocalPrefix> = Vec::new();
    let mut next = prefixes.iter().peekable();
    keys.map(|key| {
        while let Some(p) = next.next_if(|p| p.bits() <= key) {
            while stack.last().is_some_and(|top| !top.covers(p.bits())) {
                stack.pop();
            }
            stack.push(p);
        }
        while stack.last().is_some_and(|top| !top.covers(key)) {
            stack.pop();
        }
        stack.last().map_or(fallback, |p| p.next_hop)
    })
    .collect()
}

/// Things the publisher collects: chunks to retire once the new ones are visible, and the change
/// in published bytes.
#[derive(Default)]
pub(super) struct PublishLog {
    pub(super) retired: Vec<ChunkPtr>,
    pub(super) bytes_added: usize,
    pub(super) bytes_removed: usize,
}

impl PublishLog {
    pub(super) fn install(&mut self, chunk: ChunkPtr) -> ChunkPtr {
        self.bytes_added += chunk.heap_bytes();
        chunk
    }

    pub(super) fn retire(&mut self, chunk: ChunkPtr) {
        self.bytes_removed += chunk.heap_bytes();
        self.retired.push(chunk);
    }
}

/// Brings the published chunk for `mirror` up to date; returns the new pointer if it changed.
/// Children left empty are dropped here (their chunks retired); a mirror that is itself empty
/// publishes nothing, and its parent drops it. Only chunks hung from the top level may get a
/// root index (`may_index`): the tag that tells readers so lives in the top-level entry.
pub(super) fn publish_chunk(
    mirror: &mut ChunkMirror,
    fallback: u32,
    may_index: bool,
    log: &mut PublishLog,
) -> Option<ChunkPtr> {
    let own_changed = mirror.dirty || mirror.published.is_none();
    let fallback_changed = mirror.published_fallback != fallback;
    let dirty_children =
        mirror.below.as_mut().map(|below| std::mem::take(&mut below.dirty_children)).unwrap_or_default();
    // Unless the parent is rebuilt from the mirror, a replaced child is swapped into it in place.
    let in_place = if own_changed { None } else { mirror.published };
    let mut emptied = false;
    if own_changed || fallback_changed {
        // Every child's fallback may have moved.
        let fallbacks = child_fallbacks(&mirror.prefixes, mirror.children().iter().map(|c| c.0), fallback);
        for (position, ((_, child), child_fallback)) in mirror.children_mut().iter_mut().zip(fallbacks).enumerate() {
            emptied |= refresh_child(child, child_fallback, position, in_place, log);
        }
    } else {
        // Only queued children changed, and their fallbacks did not.
        for key in dirty_children {
            let position = mirror.child_position(key).expect("children are removed only here");
            let child = &mut mirror.children_mut()[position].1;
            let child_fallback = child.published_fallback;
            emptied |= refresh_child(child, child_fallback, position, in_place, log);
        }
    }
    if emptied {
        let below = mirror.below.as_mut().expect("a child emptied");
        below.children.retain(|(_, child)| {
            if child.is_empty() {
                if let Some(chunk) = child.published {
                    log.retire(chunk);
                }
            }
            !child.is_empty()
        });
        if below.children.is_empty() {
            mirror.below = None;
        }
        mirror.dirty = true;
    }
    mirror.dirty_below = false;
    if mirror.is_empty() {
        return None;
    }

    let rebuild = mirror.dirty || mirror.published.is_none();
    if !rebuild && !fallback_changed {
        return None;
    }
    let chunk = match mirror.published {
        Some(current) if !rebuild => current.with_fallback(fallback),
        _ => {
            let children: Vec<(u32, ChunkPtr)> =
                mirror.children().iter().map(|(i, c)| (*i, c.published.expect("children publish first"))).collect();
            if mirror.prefixes.capacity() > mirror.prefixes.len() * 5 / 4 + 4 {
                mirror.prefixes.shrink_to_fit(); // bulk loads leave Vec growth slack behind
            }
            ChunkPtr::build(&mirror.prefixes, &children, fallback, may_index)
        }
    };
    let new = log.install(chunk);
    if let Some(old) = mirror.published.replace(new) {
        log.retire(old);
    }
    mirror.published_fallback = fallback;
    mirror.dirty = false;
    Some(new)
}

/// Publishes `child` if it is stale; returns whether it is now empty (for its parent to drop).
pub(super) fn refresh_child(
    child: &mut ChunkMirror,
    fallback: u32,
    position: usize,
    in_place: Option<ChunkPtr>,
    log: &mut PublishLog,
) -> bool {
    child.queued = false;
    let stale = child.dirty || child.dirty_below || child.published.is_none();
    if !stale && child.published_fallback == fallback {
        return false;
    }
    let new = publish_chunk(child, fallback, false, log);
    if child.is_empty() {
        return true;
    }
    if let (Some(new), Some(parent)) = (new, in_place) {
        // SAFETY: `in_place` is the parent as published from this mirror, given only when the
        // mirror has not changed since (`publish_chunk`), so it has a child at each of the
        // mirror's positions, `position` among them.
        unsafe { parent.child_slot(position) }.store(new.as_raw(), Ordering::Release);
    }
    false
}

pub(super) fn prefix_at<A: Address>(bits: u128, len: u8) -> Prefix<A> {
    Prefix::new_masked(A::from_u128(bits), len).expect("length within family")
}

/// The address bits of 18-bit group `key` at `level` (inverse of [`Address::group`]).
pub(super) fn group_bits<A: Address>(key: u32, level: u32) -> u128 {
    let end = GROUP_BITS * (level + 1);
    let bits = A::BITS as u32;
    if end <= bits {
        (key as u128) << (bits - end)
    } else {
        (key as u128) >> (end - bits)
    }
}

pub(super) fn collect_routes<A: Address>(
    mirror: &ChunkMirror,
    base: u128,
    level: u32,
    out: &mut Vec<(Prefix<A>, u32)>,
) {
    for p in &mirror.prefixes {
        out.push((
            prefix_at(base | group_bits::<A>(p.bits(), level), (GROUP_BITS * level) as u8 + p.len()),
            p.next_hop,
        ));
    }
    for (key, child) in mirror.children() {
        collect_routes(child, base | group_bits::<A>(*key, level), level + 1, out);
    }
}

pub(super) fn mirror_bytes(m: &ChunkMirror) -> usize {
    let own = m.prefixes.capacity() * size_of::<LocalPrefix>();
    let kids: usize = m.children().iter().map(|(_, c)| mirror_bytes(c)).sum::<usize>()
        + m.below.as_ref().map_or(0, |below| {
            size_of::<Below>()
                + below.children.capacity() * size_of::<(u32, ChunkMirror)>()
                + below.dirty_children.capacity() * size_of::<u32>()
        });
    own + kids
}
