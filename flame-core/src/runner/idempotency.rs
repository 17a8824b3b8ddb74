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

enum Slot<V> {
    Running(watch::Receiver<Option<V>>),
    Done(V),
}

struct State<V> {
    slots: HashMap<Key, Slot<V>>,
    done_by_expiry: BTreeSet<(Instant, Key)>,
}

impl<V> Default for State<V> {
    fn default() -> Self {
        State {
            slots: HashMap::new(),
            done_by_expiry: BTreeSet::new(),
        }
    }
}

impl<V> State<V> {
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

/// The runner's memory of idempotency keys; `V` is the remembered reply.
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
pub struct IdempotencyCache<V = Bytes> {
    inner: Arc<Inner<V>>,
}

impl<V> Clone for IdempotencyCache<V> {
    fn clone(&self) -> Self {
        IdempotencyCache {
            inner: self.inner.clone(),
        }
    }
}

struct Inner<V> {
    capacity: usize,
    ttl: Duration,
    state: Mutex<State<V>>,
}

impl<V: Clone + Send + Sync + 'static> std::fmt::Debug for IdempotencyCache<V> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IdempotencyCache")
            .field("capacity", &self.inner.capacity)
            .field("ttl", &self.inner.ttl)
            .field("len", &self.len())
            .finish()
    }
}

/// What to do with a call that carries an idempotency key.
pub enum Begin<V = Bytes> {
    /// First time: run it, then [`Recorder::finish`].
    Run(Recorder<V>),
    /// Another call with this key is running: wait for its result.
    Wait(Waiter<V>),
    /// Already ran: this is the reply.
    Done(V),
    /// The cache is full of running calls: run it without remembering.
    Uncached,
}

/// Records the outcome of the first run of a key. Dropped without [`Recorder::finish`], it
/// forgets the key and wakes the waiters, which then start over.
pub struct Recorder<V = Bytes> {
    cache: IdempotencyCache<V>,
    key: Key,
    tx: Option<watch::Sender<Option<V>>>,
}

/// Waits for the first run of a key.
pub struct Waiter<V = Bytes> {
    rx: watch::Receiver<Option<V>>,
}

impl<V: Clone> Waiter<V> {
    /// The first run's reply, or `None` if that run was abandoned (start over).
    pub async fn result(&mut self) -> Option<V> {
        match self.rx.wait_for(|v| v.is_some()).await {
            Ok(v) => v.clone(),
            Err(_) => None,
        }
    }
}

impl<V> IdempotencyCache<V> {
    fn lock(&self) -> std::sync::MutexGuard<'_, State<V>> {
        match self.inner.state.lock() {
            Ok(s) => s,
            Err(poisoned) => poisoned.into_inner(),
        }
    }
}

impl<V: Clone + Send + Sync + 'static> IdempotencyCache<V> {
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

    /// Looks up `key` for `service`/`method` and claims it when it is new.
    pub fn begin(&self, service: &str, method: &str, key: &str) -> Begin<V> {
        self.begin_in("", service, method, key)
    }

    /// [`IdempotencyCache::begin`] within `scope` (e.g. the codec of the reply: a key's reply
    /// is remembered in the codec it was sent in).
    pub fn begin_in(&self, scope: &str, service: &str, method: &str, key: &str) -> Begin<V> {
        let full = format!("{scope}\u{0}{service}\u{0}{method}\u{0}{key}");
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

impl<V: Clone + Send + Sync + 'static> Recorder<V> {
    /// Hands `reply` to every waiter; remembers it for the TTL when `keep` (a final outcome),
    /// else forgets the key so that a retry runs again.
    pub fn finish(mut self, reply: V, keep: bool) {
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

impl<V> Drop for Recorder<V> {
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
        let c = IdempotencyCache::<Bytes>::new(10, Duration::from_secs(5));
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
        let c = IdempotencyCache::<Bytes>::new(2, Duration::from_secs(5));
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
        let c = IdempotencyCache::<Bytes>::new(10, Duration::from_secs(5));
        let Begin::Run(r) = c.begin("s", "m", "a") else {
            panic!()
        };
        r.finish(Bytes::from_static(b"x"), true);
        tokio::time::advance(Duration::from_secs(6)).await;
        assert!(matches!(c.begin("s", "m", "a"), Begin::Run(_)));
    }
}
