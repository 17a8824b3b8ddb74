//! The idempotency cache: a call whose `idempotencyKey` this runner already ran (or is running)
//! is not run again. The caller gets the first result; a duplicate that arrives while the first
//! run is in flight waits for it. Entries are bounded in number and expire after a TTL.
//!
//! Only final outcomes are remembered: a success, or an error that is not retryable. After a
//! retryable failure (e.g. a timeout) the key is forgotten, so a retry runs the handler again.
//! Keys are scoped by service and method.

use bytes::Bytes;
use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::watch;
use tokio::time::Instant;

type Key = String;

enum Slot {
    Running(watch::Receiver<Option<Bytes>>),
    Done(Bytes),
}

#[derive(Default)]
struct State {
    slots: HashMap<Key, Slot>,
    done_by_expiry: BTreeSet<(Instant, Key)>,
}

impl State {
    fn purge(&mut self, now: Instant) {
        while let Some((exp, _)) = self.done_by_expiry.first() {
            if *exp > now {
                break;
            }
            if let Some((_, key)) = self.done_by_expiry.pop_first() {
                self.slots.remove(&key);
            }
        }
    }

    fn evict_oldest_done(&mut self) -> bool {
        match self.done_by_expiry.pop_first() {
            Some((_, key)) => {
                self.slots.remove(&key);
                true
            }
            None => false,
        }
    }
}

/// The runner's memory of idempotency keys.
///
/// ```
/// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
/// use flame_core::runner::idempotency::{Begin, IdempotencyCache};
/// use std::time::Duration;
/// let cache = IdempotencyCache::new(100, Duration::from_secs(60));
/// let Begin::Run(run) = cache.begin("math", "add", "k1") else { panic!() };
/// let Begin::Wait(mut wait) = cache.begin("math", "add", "k1") else { panic!() };
/// run.finish(bytes::Bytes::from_static(b"first"), true);
/// assert_eq!(wait.result().await.unwrap(), "first");
/// assert!(matches!(cache.begin("math", "add", "k1"), Begin::Done(b) if b == "first"));
/// # });
/// ```
#[derive(Clone)]
pub struct IdempotencyCache {
    inner: Arc<Inner>,
}

struct Inner {
    capacity: usize,
    ttl: Duration,
    state: Mutex<State>,
}

impl std::fmt::Debug for IdempotencyCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IdempotencyCache")
            .field("capacity", &self.inner.capacity)
            .field("ttl", &self.inner.ttl)
            .field("len", &self.len())
            .finish()
    }
}

/// What to do with a call that carries an idempotency key.
pub enum Begin {
    /// First time: run it, then [`Recorder::finish`].
    Run(Recorder),
    /// Another call with this key is running: wait for its result.
    Wait(Waiter),
    /// Already ran: this is the reply.
    Done(Bytes),
    /// The cache is full of running calls: run it without remembering.
    Uncached,
}

/// Records the outcome of the first run of a key. Dropped without [`Recorder::finish`], it
/// forgets the key and wakes the waiters, which then start over.
pub struct Recorder {
    cache: IdempotencyCache,
    key: Key,
    tx: Option<watch::Sender<Option<Bytes>>>,
}

/// Waits for the first run of a key.
pub struct Waiter {
    rx: watch::Receiver<Option<Bytes>>,
}

impl Waiter {
    /// The first run's reply, or `None` if that run was abandoned (start over).
    pub async fn result(&mut self) -> Option<Bytes> {
        match self.rx.wait_for(|v| v.is_some()).await {
            Ok(v) => v.clone(),
            Err(_) => None,
        }
    }
}

impl IdempotencyCache {
    /// A cache of at most `capacity` keys, each remembered for `ttl` after its run finished.
    pub fn new(capacity: usize, ttl: Duration) -> Self {
        IdempotencyCache {
            inner: Arc::new(Inner {
                capacity: capacity.max(1),
                ttl,
                state: Mutex::new(State::default()),
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        match self.inner.state.lock() {
            Ok(s) => s,
            Err(poisoned) => poisoned.into_inner(),
        }
    }

    /// Looks up `key` for `service`/`method` and claims it when it is new.
    pub fn begin(&self, service: &str, method: &str, key: &str) -> Begin {
        let full = format!("{service}\u{0}{method}\u{0}{key}");
        let mut state = self.lock();
        state.purge(Instant::now());
        match state.slots.get(&full) {
            Some(Slot::Done(reply)) => return Begin::Done(reply.clone()),
            Some(Slot::Running(rx)) => return Begin::Wait(Waiter { rx: rx.clone() }),
            None => {}
        }
        if state.slots.len() >= self.inner.capacity && !state.evict_oldest_done() {
            return Begin::Uncached;
        }
        let (tx, rx) = watch::channel(None);
        state.slots.insert(full.clone(), Slot::Running(rx));
        Begin::Run(Recorder {
            cache: self.clone(),
            key: full,
            tx: Some(tx),
        })
    }

    /// Keys remembered (running or done).
    pub fn len(&self) -> usize {
        self.lock().slots.len()
    }

    /// Whether no key is remembered.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Recorder {
    /// Hands `reply` to every waiter; remembers it for the TTL when `keep` (a final outcome),
    /// else forgets the key so that a retry runs again.
    pub fn finish(mut self, reply: Bytes, keep: bool) {
        let mut state = self.cache.lock();
        if keep {
            let expires = Instant::now() + self.cache.inner.ttl;
            state.slots.insert(self.key.clone(), Slot::Done(reply.clone()));
            state.done_by_expiry.insert((expires, self.key.clone()));
        } else {
            state.slots.remove(&self.key);
        }
        drop(state);
        if let Some(tx) = self.tx.take() {
            tx.send_replace(Some(reply));
        }
    }
}

impl Drop for Recorder {
    fn drop(&mut self) {
        if self.tx.is_some() {
            // Abandoned: forget the key; waiters see the channel close and start over.
            let mut state = self.cache.lock();
            if matches!(state.slots.get(&self.key), Some(Slot::Running(_))) {
                state.slots.remove(&self.key);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn abandoned_run_lets_waiters_start_over() {
        let c = IdempotencyCache::new(10, Duration::from_secs(5));
        let Begin::Run(r) = c.begin("s", "m", "k") else {
            panic!("expected run")
        };
        let Begin::Wait(mut w) = c.begin("s", "m", "k") else {
            panic!("expected wait")
        };
        drop(r);
        assert!(w.result().await.is_none());
        assert!(matches!(c.begin("s", "m", "k"), Begin::Run(_)));
    }

    #[tokio::test]
    async fn retryable_outcomes_are_forgotten_and_capacity_is_bounded() {
        let c = IdempotencyCache::new(2, Duration::from_secs(5));
        let Begin::Run(r) = c.begin("s", "m", "a") else {
            panic!()
        };
        r.finish(Bytes::from_static(b"x"), false);
        assert!(c.is_empty());
        for k in ["a", "b", "c"] {
            let Begin::Run(r) = c.begin("s", "m", k) else {
                panic!()
            };
            r.finish(Bytes::from_static(b"y"), true);
        }
        assert_eq!(c.len(), 2);
        // Scoped by method: the same key on another method is new.
        assert!(matches!(c.begin("s", "other", "c"), Begin::Run(_)));
    }

    #[tokio::test(start_paused = true)]
    async fn entries_expire() {
        let c = IdempotencyCache::new(10, Duration::from_secs(5));
        let Begin::Run(r) = c.begin("s", "m", "a") else {
            panic!()
        };
        r.finish(Bytes::from_static(b"x"), true);
        tokio::time::advance(Duration::from_secs(6)).await;
        assert!(matches!(c.begin("s", "m", "a"), Begin::Run(_)));
    }
}
