//! The pool's bookkeeping: everything under its one lock, and the small helpers that work on it.

use super::events::log;
use super::events::{PoolEvent, PoolEventHook};
use super::template::RunnerTemplate;
use crate::backend::{Backend, RunnerHandle};
use crate::error::{Error, ErrorCode, Result};
use crate::pool::breaker::Breaker;
use crate::pool::{Lease, PoolConfig};
use crate::telemetry;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::AtomicUsize;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use tokio::sync::{oneshot, Notify};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// How long the pool waits past `boot_timeout` for a backend that overruns it before dropping
/// the spawn (backends must stop on time themselves; this is the pool's own safety net).
pub(super) const BOOT_SLACK: Duration = Duration::from_secs(5);
/// Consecutive failed pings that declare a runner dead when the engine still says running.
pub(super) const PING_FAILURES_DOWN: u32 = 2;

pub(super) struct Shared {
    pub(super) name: String,
    pub(super) config: PoolConfig,
    /// Slots per runner (1 when single use).
    pub(super) conc: usize,
    pub(super) health_interval: Duration,
    pub(super) backend: Arc<dyn Backend>,
    pub(super) template: RunnerTemplate,
    pub(super) hooks: Vec<PoolEventHook>,
    /// Why this process may not start runners at all (see [`spawn_guard`]): a `CONFIG` error.
    pub(super) refusal: Option<String>,
    pub(super) state: Mutex<State>,
    /// Fires when the pool shuts down (stops monitors).
    pub(super) closed: CancellationToken,
    /// Woken when `in_flight`, `booting` or `terminating` falls (shutdown waits on it).
    pub(super) changed: Notify,
    /// Runners being ended in the background.
    pub(super) terminating: AtomicUsize,
}

pub(super) struct State {
    pub(super) runners: HashMap<u64, Runner>,
    /// Runners that take leases and have a free slot, by `(load, id)`.
    pub(super) free: BTreeSet<(usize, u64)>,
    pub(super) booting: usize,
    /// FIFO: keyed by arrival order.
    pub(super) waiters: BTreeMap<u64, oneshot::Sender<Result<Lease>>>,
    pub(super) next_id: u64,
    pub(super) in_flight: usize,
    pub(super) closed: bool,
    /// Consecutive failed starts, and when `min` may be retried after them.
    pub(super) spawn_failures: u32,
    pub(super) min_retry_at: Option<Instant>,
    /// The crash-loop breaker and spawn budget.
    pub(super) breaker: Breaker,
    /// When a rebalance is already scheduled (after a breaker backoff or a spent budget).
    pub(super) wake_at: Option<Instant>,
}

impl Default for State {
    fn default() -> Self {
        let d = PoolConfig::default();
        State {
            runners: HashMap::new(),
            free: BTreeSet::new(),
            booting: 0,
            waiters: BTreeMap::new(),
            next_id: 0,
            in_flight: 0,
            closed: false,
            spawn_failures: 0,
            min_retry_at: None,
            breaker: Breaker::new(
                d.boot_failure_threshold,
                d.breaker_backoff,
                d.breaker_max_backoff,
                d.spawn_budget(),
            ),
            wake_at: None,
        }
    }
}

impl State {
    pub(super) fn next(&mut self) -> u64 {
        self.next_id += 1;
        self.next_id
    }
}

pub(super) struct Runner {
    pub(super) handle: RunnerHandle,
    pub(super) load: usize,
    /// The load it is filed under in `free`, if it is there.
    pub(super) in_free: Option<usize>,
    /// Failed a call or a ping: no new leases until a ping succeeds.
    pub(super) suspect: bool,
    /// Draining or used up (single use): no new leases, ended when its load reaches 0.
    pub(super) retiring: Option<&'static str>,
    pub(super) used: bool,
    pub(super) idle_since: Instant,
    pub(super) lost: CancellationToken,
    pub(super) went_idle: Arc<Notify>,
    pub(super) check_now: Arc<Notify>,
}

impl Runner {
    pub(super) fn accepting(&self, config: &PoolConfig) -> bool {
        !self.suspect && self.retiring.is_none() && !(config.single_use && self.used)
    }
}

/// Work decided under the lock, done after it is released.
#[derive(Default)]
#[must_use]
pub(super) struct Actions {
    pub(super) grants: Vec<(oneshot::Sender<Result<Lease>>, Result<Lease>)>,
    pub(super) spawns: usize,
    pub(super) terminate: Vec<(RunnerHandle, &'static str)>,
    pub(super) events: Vec<PoolEvent>,
    /// Rebalance again at this instant (a breaker backoff or the spawn budget ends then).
    pub(super) wake: Option<Instant>,
}

impl Actions {
    pub(super) fn merge(&mut self, other: Actions) {
        self.grants.extend(other.grants);
        self.spawns += other.spawns;
        self.terminate.extend(other.terminate);
        self.events.extend(other.events);
        self.wake = match (self.wake, other.wake) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
    }
}

pub(super) struct WaiterGuard<'a> {
    pub(super) shared: &'a Arc<Shared>,
    pub(super) id: Option<u64>,
}

impl Drop for WaiterGuard<'_> {
    fn drop(&mut self) {
        if let Some(id) = self.id.take() {
            let sender = self.shared.lock().waiters.remove(&id);
            drop(sender);
        }
    }
}

impl Shared {
    pub(super) fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock cannot leave the state half-updated in a way that
        // matters more than stopping the pool, so keep going with the data as it is.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(super) fn emit(&self, event: PoolEvent) {
        log(&event);
        for hook in &self.hooks {
            hook(&event);
        }
    }

    /// Re-files runner `id` in the free set after its load or availability changed.
    pub(super) fn refile(&self, st: &mut State, id: u64) {
        let Some(r) = st.runners.get_mut(&id) else {
            return;
        };
        if let Some(old) = r.in_free.take() {
            st.free.remove(&(old, id));
        }
        if r.accepting(&self.config) && r.load < self.conc {
            st.free.insert((r.load, id));
            r.in_free = Some(r.load);
        }
    }

    /// Takes one slot on runner `id` (which has one free).
    /// Publishes the pool's size gauges (`flame_pool_runners`, `…_in_flight`, `…_waiting`).
    pub(super) fn publish(&self, st: &State) {
        telemetry::pool_sizes(
            &self.name,
            st.runners.len(),
            st.booting,
            st.in_flight,
            st.waiters.len(),
        );
    }

    pub(super) fn take_slot(self: &Arc<Self>, st: &mut State, id: u64) -> Result<Lease> {
        let Some(r) = st.runners.get_mut(&id) else {
            return Err(Error::new(ErrorCode::NoRunner, "runner vanished"));
        };
        r.load += 1;
        r.used = true;
        let endpoint = r.handle.endpoint.clone();
        let lost = r.lost.clone();
        st.in_flight += 1;
        self.refile(st, id);
        let shared = self.clone();
        Ok(Lease::new(endpoint, lost, move |outcome| {
            shared.release(id, outcome)
        }))
    }

    pub(super) fn shut_down_error(&self) -> Error {
        Error::new(ErrorCode::Shutdown, format!("pool `{}` is shut down", self.name))
    }

    pub(super) fn remove_runner(&self, st: &mut State, id: u64) -> Option<Runner> {
        let mut r = st.runners.remove(&id)?;
        if let Some(old) = r.in_free.take() {
            st.free.remove(&(old, id));
        }
        Some(r)
    }
}
