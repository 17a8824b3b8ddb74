//! Replay rejection, two ways.
//!
//! - [`SequenceWindows`] (flame-rs parents): every request carries its sender's sequence number
//!   (`seq`, signed with the rest of the envelope); the runner keeps, per sender, the highest
//!   number seen and a bitmap of the [`SEQUENCE_WINDOW`] numbers below it — the anti-replay
//!   window of IPsec (RFC 4303 §3.4.3) and WireGuard. A number seen before is a replay; one
//!   below the window is refused as stale (retryable: it never ran). Memory is fixed per sender
//!   (1 KiB) whatever the request rate, so no sustained rate fills it; a sender is forgotten once
//!   every request it sent has expired.
//! - [`ReplayCache`] (the TypeScript reference, which sends no `seq`): every authenticated
//!   `invocationId` is remembered until its window closes (`exp` + skew), so a captured request
//!   cannot be sent again while it would still be accepted. Memory is bounded twice: entries
//!   leave when their window closes, and the cache holds at most `capacity` ids (past that, new
//!   requests are refused as overload rather than letting a replay through). Ids are kept as
//!   64-bit keyed SipHash digests (a per-process random key, so a caller cannot aim for
//!   collisions): about 50 bytes per id whatever its length.

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
    /// A sequence number below its sender's window: refused, though it may be a late original
    /// rather than a replay (it never ran, so the caller may retry it).
    Stale,
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

/// How many sequence numbers below the highest one seen a sender's window remembers: requests of
/// one sender may arrive this far out of order.
pub const SEQUENCE_WINDOW: u64 = 8192;

const WORDS: usize = (SEQUENCE_WINDOW / 64) as usize;

/// Per-sender sliding windows of sequence numbers (see the [module docs](self)).
///
/// ```
/// use flame_core::runner::replay::{ReplayCheck, SequenceWindows, SEQUENCE_WINDOW};
/// let w = SequenceWindows::new(16);
/// let (sender, exp, now) = (0xfeed, 2_000, 1_000);
/// assert_eq!(w.check(sender, 2, exp, now), ReplayCheck::Fresh);
/// assert_eq!(w.check(sender, 1, exp, now), ReplayCheck::Fresh); // late, inside the window
/// assert_eq!(w.check(sender, 2, exp, now), ReplayCheck::Replayed);
/// assert_eq!(w.check(sender, 2 + SEQUENCE_WINDOW, exp, now), ReplayCheck::Fresh);
/// assert_eq!(w.check(sender, 1, exp, now), ReplayCheck::Stale);
/// ```
#[derive(Debug)]
pub struct SequenceWindows {
    capacity: usize,
    senders: Mutex<HashMap<u64, Window>>,
}

#[derive(Debug)]
struct Window {
    top: u64,
    bits: Box<[u64; WORDS]>,
    /// The latest window end (`exp` + skew) of any request of this sender.
    until: u64,
}

impl Window {
    fn bit(seq: u64) -> (usize, u64) {
        let i = seq % SEQUENCE_WINDOW;
        ((i / 64) as usize, 1u64 << (i % 64))
    }

    fn check(&mut self, seq: u64) -> ReplayCheck {
        if seq > self.top {
            let ahead = seq - self.top;
            if ahead >= SEQUENCE_WINDOW {
                self.bits.fill(0);
            } else {
                for s in self.top + 1..seq {
                    let (w, m) = Window::bit(s);
                    self.bits[w] &= !m;
                }
            }
            self.top = seq;
            let (w, m) = Window::bit(seq);
            self.bits[w] |= m;
            return ReplayCheck::Fresh;
        }
        if self.top - seq >= SEQUENCE_WINDOW {
            return ReplayCheck::Stale;
        }
        let (w, m) = Window::bit(seq);
        if self.bits[w] & m != 0 {
            return ReplayCheck::Replayed;
        }
        self.bits[w] |= m;
        ReplayCheck::Fresh
    }
}

impl SequenceWindows {
    /// Windows for at most `capacity` senders with requests still inside their time window
    /// (past that a new sender is refused as overload: fail closed).
    pub fn new(capacity: usize) -> Self {
        SequenceWindows {
            capacity: capacity.max(1),
            senders: Mutex::new(HashMap::new()),
        }
    }

    /// Checks and records sequence number `seq` (from 1) of `sender`, for a request whose
    /// window closes at `until_ms`, at `now_ms`.
    pub fn check(&self, sender: u64, seq: u64, until_ms: u64, now_ms: u64) -> ReplayCheck {
        if seq == 0 {
            return ReplayCheck::Replayed;
        }
        let mut senders = match self.senders.lock() {
            Ok(s) => s,
            Err(poisoned) => poisoned.into_inner(),
        };
        if let Some(w) = senders.get_mut(&sender) {
            w.until = w.until.max(until_ms);
            return w.check(seq);
        }
        if senders.len() >= self.capacity {
            // Senders whose every request has expired can be forgotten: a replay of theirs
            // fails the time window.
            senders.retain(|_, w| w.until >= now_ms);
            if senders.len() >= self.capacity {
                return ReplayCheck::Full;
            }
        }
        let mut w = Window {
            top: seq,
            bits: Box::new([0; WORDS]),
            until: until_ms,
        };
        let (i, m) = Window::bit(seq);
        w.bits[i] |= m;
        senders.insert(sender, w);
        ReplayCheck::Fresh
    }

    /// Senders remembered.
    pub fn len(&self) -> usize {
        self.senders.lock().map(|s| s.len()).unwrap_or(0)
    }

    /// Whether no sender is remembered.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Parses a `seq` field, `<sender: 16 hex digits>.<n: decimal>`.
///
/// ```
/// use flame_core::runner::replay::parse_seq;
/// assert_eq!(parse_seq("00000000000000ff.42"), Some((255, 42)));
/// assert_eq!(parse_seq("ff.42"), None);
/// ```
pub fn parse_seq(text: &str) -> Option<(u64, u64)> {
    let (sender, n) = text.split_once('.')?;
    if sender.len() != 16 {
        return None;
    }
    Some((u64::from_str_radix(sender, 16).ok()?, n.parse().ok()?))
}

/// Formats a `seq` field (see [`parse_seq`]).
pub fn format_seq(sender: u64, n: u64) -> String {
    format!("{sender:016x}.{n}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_take_reordering_refuse_replays_and_stay_small() {
        let w = SequenceWindows::new(2);
        // Out of order inside the window: all fresh, then all replays.
        let order = [5u64, 1, 3, 2, 4, 100, 50, 8192 + 4];
        for s in order {
            assert_eq!(w.check(7, s, 10, 0), ReplayCheck::Fresh, "{s}");
        }
        for s in [5u64, 100, 50, 8192 + 4] {
            assert_eq!(w.check(7, s, 10, 0), ReplayCheck::Replayed, "{s}");
        }
        // Slid past 1..=4: stale, not fresh.
        assert_eq!(w.check(7, 3, 10, 0), ReplayCheck::Stale);
        // A million requests later the memory is the same one window.
        for s in 10_000..1_010_000u64 {
            assert_eq!(w.check(9, s, 10, 0), ReplayCheck::Fresh);
        }
        assert_eq!(w.len(), 2);
        // Full of live senders: a third is refused; once they expire it is taken.
        assert_eq!(w.check(11, 1, 10, 5), ReplayCheck::Full);
        assert_eq!(w.check(11, 1, 100, 11), ReplayCheck::Fresh);
        assert_eq!(w.check(7, 0, 100, 11), ReplayCheck::Replayed, "0 is never valid");
    }

    #[test]
    fn seq_text_round_trips() {
        assert_eq!(parse_seq(&format_seq(u64::MAX, 9)), Some((u64::MAX, 9)));
        assert_eq!(parse_seq("zzzzzzzzzzzzzzzz.1"), None);
        assert_eq!(parse_seq("0000000000000001"), None);
    }

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
