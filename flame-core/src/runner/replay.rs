//! The replay cache: every authenticated `invocationId` is remembered until its window closes
//! (`exp` + skew), so a captured request cannot be sent again while it would still be accepted.
//! Memory is bounded twice: entries leave when their window closes, and the cache holds at most
//! `capacity` ids (past that, new requests are refused as overload rather than letting a replay
//! through). Ids are kept as 64-bit keyed SipHash digests (a per-process random key, so a
//! caller cannot aim for collisions): about 50 bytes per id whatever its length.

use std::collections::hash_map::RandomState;
use std::collections::{BTreeSet, HashMap};
use std::hash::BuildHasher;
use std::sync::Mutex;

/// What [`ReplayCache::check_and_insert`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplayCheck {
    /// First time seen inside its window: remembered now.
    Fresh,
    /// Seen before and its window is still open: a replay.
    Replayed,
    /// The cache is full of open windows: refuse (fail closed).
    Full,
}

/// Remembers invocation ids until their expiry (milliseconds since the epoch).
///
/// ```
/// use flame_core::runner::replay::{ReplayCache, ReplayCheck};
/// let cache = ReplayCache::new(100);
/// assert_eq!(cache.check_and_insert("id-1", 2_000, 1_000), ReplayCheck::Fresh);
/// assert_eq!(cache.check_and_insert("id-1", 2_000, 1_500), ReplayCheck::Replayed);
/// // Once its window closed the id is forgotten (a request with it is refused by the window
/// // check anyway).
/// assert_eq!(cache.check_and_insert("id-1", 3_000, 2_001), ReplayCheck::Fresh);
/// ```
#[derive(Debug)]
pub struct ReplayCache {
    capacity: usize,
    hasher: RandomState,
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    expiry_of: HashMap<u64, u64>,
    by_expiry: BTreeSet<(u64, u64)>,
}

impl State {
    fn purge(&mut self, now: u64) {
        while let Some((exp, _)) = self.by_expiry.first() {
            if *exp >= now {
                break;
            }
            if let Some((_, id)) = self.by_expiry.pop_first() {
                self.expiry_of.remove(&id);
            }
        }
    }
}

impl ReplayCache {
    /// A cache holding at most `capacity` open windows.
    pub fn new(capacity: usize) -> Self {
        ReplayCache {
            capacity: capacity.max(1),
            hasher: RandomState::new(),
            state: Mutex::new(State::default()),
        }
    }

    /// Records `id`, valid until `expires_ms`, at time `now_ms`; says whether it is fresh.
    pub fn check_and_insert(&self, id: &str, expires_ms: u64, now_ms: u64) -> ReplayCheck {
        let key = self.hasher.hash_one(id);
        let mut state = match self.state.lock() {
            Ok(s) => s,
            Err(poisoned) => poisoned.into_inner(),
        };
        state.purge(now_ms);
        if state.expiry_of.contains_key(&key) {
            return ReplayCheck::Replayed;
        }
        if state.expiry_of.len() >= self.capacity {
            return ReplayCheck::Full;
        }
        state.expiry_of.insert(key, expires_ms);
        state.by_expiry.insert((expires_ms, key));
        ReplayCheck::Fresh
    }

    /// Ids currently remembered.
    pub fn len(&self) -> usize {
        self.state.lock().map(|s| s.expiry_of.len()).unwrap_or(0)
    }

    /// Whether no id is remembered.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounded_and_expiring() {
        let c = ReplayCache::new(2);
        assert_eq!(c.check_and_insert("a", 10, 0), ReplayCheck::Fresh);
        assert_eq!(c.check_and_insert("b", 20, 0), ReplayCheck::Fresh);
        assert_eq!(c.check_and_insert("c", 20, 0), ReplayCheck::Full);
        assert_eq!(c.check_and_insert("c", 20, 11), ReplayCheck::Fresh);
        assert_eq!(c.len(), 2);
        assert_eq!(c.check_and_insert("b", 20, 12), ReplayCheck::Replayed);
        c.check_and_insert("z", 100, 21);
        assert_eq!(c.len(), 1);
    }
}
