//! [`ElasticPool`]: runners started through a [`Backend`] on demand and ended when idle
//! (DESIGN.md §4).
//!
//! How it works, in short:
//! - All bookkeeping lives in one `std::sync::Mutex` that is never held across an `.await`.
//!   Runners with a free slot sit in a `BTreeSet` keyed by `(load, id)`, so the least-loaded
//!   runner is its first element: checkout and release are `O(log n)` in the number of runners.
//! - Callers that find no free slot wait in a FIFO queue (a `BTreeMap` keyed by arrival), each
//!   on a oneshot channel; a freed slot goes to the oldest waiter. A waiter that gives up (its
//!   deadline passes or its future is dropped) is removed, and a slot that raced to it is handed
//!   on, so it leaves no trace.
//! - A runner is started when waiters outnumber the slots that runners already booting will
//!   bring (pending spawns are counted), and `running + booting < max`; or when the pool is
//!   below `min`.
//! - Each runner has a small monitor task: it pings the runner every `health_interval`
//!   (authenticated pings keep the runner's parent-death watchdog fed), ends it after
//!   `idle_shutdown_after` without calls (never below `min`), and declares it down when pings
//!   fail: its leases' [`Lease::lost`] token fires, so calls in flight fail with a retryable
//!   error, and a replacement starts when the pool is below `min` or callers are waiting.
//!   A runner that refuses connections while its backend says it runs is draining (on
//!   `SIGTERM` a runner closes its listener first): it is retired instead — no new leases,
//!   its calls in flight finish, and it is ended once they have.
//! - Three fences keep a pool from starting runners in a loop (README "Safety"): before every
//!   start it asks [`spawn_guard::check_spawn_allowed`] (a runner process never spawns unless
//!   nesting was opted into, up to a hard depth cap); `boot_failure_threshold` consecutive failed
//!   boots open a breaker (no starts for a capped exponential backoff, then one trial start;
//!   callers no runner can serve fail at once with a retryable `NO_RUNNER` naming the last
//!   failure); and a spawn budget caps starts in any rolling minute.

use super::breaker::{Breaker, Gate};
use super::{CheckoutOptions, Lease, LeaseOutcome, Pool, PoolConfig, PoolStats};
use crate::backend::{labels, Backend, RunnerHandle, RunnerState, SpawnRequest};
use crate::config::Secret;
use crate::error::{Error, ErrorCode, Result};
use crate::spawn_guard::{self, DEFAULT_MAX_DEPTH, MAX_NESTING_DEPTH, SPAWN_DEPTH_VAR};
use crate::transport::Transport;
use async_trait::async_trait;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use tokio::sync::{oneshot, Notify};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// Something that happened in a pool. Every event is also logged with `tracing` (target
/// `flame::pool`, field `event` = `grow_start`, `grow_end`, `shrink` or `runner_down`).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum PoolEvent {
    /// A runner is being started.
    GrowStart {
        /// The pool.
        pool: String,
        /// The new runner's id.
        runner_id: String,
    },
    /// A start finished: `error` is `None` when the runner is serving.
    GrowEnd {
        /// The pool.
        pool: String,
        /// The runner's id.
        runner_id: String,
        /// Why the start failed, if it did.
        error: Option<String>,
    },
    /// A runner was ended on purpose (idle, single use, draining, pool shutdown).
    Shrink {
        /// The pool.
        pool: String,
        /// The runner's id.
        runner_id: String,
        /// `idle`, `single_use`, `draining` or `shutdown`.
        reason: &'static str,
    },
    /// A runner was found dead (failed pings, or the engine says it stopped) and removed.
    RunnerDown {
        /// The pool.
        pool: String,
        /// The runner's id.
        runner_id: String,
        /// What was observed.
        reason: String,
    },
    /// Boots kept failing: the pool starts no runner for `retry_in`, then tries one.
    BreakerOpen {
        /// The pool.
        pool: String,
        /// Consecutive failed boots.
        failures: u32,
        /// How long the pool waits before its next (single, trial) start.
        retry_in: Duration,
        /// The last boot failure.
        last_error: String,
    },
    /// A runner came up after the breaker had opened: starts are back to normal.
    BreakerClosed {
        /// The pool.
        pool: String,
    },
    /// The spawn budget (`max_spawns_per_minute`) is spent: no start until the window moves.
    SpawnBudgetSpent {
        /// The pool.
        pool: String,
        /// Starts allowed per rolling minute.
        budget: usize,
    },
}

impl PoolEvent {
    /// The event's name: `grow_start`, `grow_end`, `shrink`, `runner_down`, `breaker_open`,
    /// `breaker_closed` or `spawn_budget_spent`.
    pub fn name(&self) -> &'static str {
        match self {
            PoolEvent::GrowStart { .. } => "grow_start",
            PoolEvent::GrowEnd { .. } => "grow_end",
            PoolEvent::Shrink { .. } => "shrink",
            PoolEvent::RunnerDown { .. } => "runner_down",
            PoolEvent::BreakerOpen { .. } => "breaker_open",
            PoolEvent::BreakerClosed { .. } => "breaker_closed",
            PoolEvent::SpawnBudgetSpent { .. } => "spawn_budget_spent",
        }
    }
}

/// A callback for [`PoolEvent`]s. It runs inline, so keep it short (send to a channel, count).
pub type PoolEventHook = Arc<dyn Fn(&PoolEvent) + Send + Sync>;

/// What every runner a pool starts is told: the parts of a [`SpawnRequest`] that do not change
/// from one runner to the next. [`RunnerTemplate::request`] makes a fresh request (new runner
/// id) with the environment of DESIGN.md §1.
///
/// ```
/// use flame_core::pool::RunnerTemplate;
/// use flame_core::{InMemoryTransport, Secret};
/// use std::sync::Arc;
/// use std::time::Duration;
/// let t = RunnerTemplate::new("shop", "parent-1", Secret::generate(), Arc::new(InMemoryTransport::new()))
///     .parent_timeout(Duration::from_secs(20));
/// let req = t.request("default", Duration::from_secs(30));
/// assert_eq!(req.env["FLAME_MODE"], "runner");
/// assert_eq!(req.env["FLAME_PARENT_TIMEOUT"], "20000");
/// assert_eq!(req.env["FLAME_SPAWN_DEPTH"], "1");
/// assert_eq!(req.labels["flame.pool"], "default");
/// ```
#[derive(Clone)]
pub struct RunnerTemplate {
    /// The application name (`flame.app` label, reap scope).
    pub app: String,
    /// The spawning parent's id (`FLAME_PARENT_ID`, `flame.parent` label).
    pub parent_id: String,
    /// The secret runners verify requests with (`FLAME_SECRET`); one per pool.
    pub secret: Secret,
    /// How long a runner lives without authenticated parent contact (`FLAME_PARENT_TIMEOUT`).
    pub parent_timeout: Duration,
    /// Extra environment for every runner (wins over nothing: the `FLAME_*` variables above are
    /// always set by the pool).
    pub env: BTreeMap<String, String>,
    /// The transport the pool pings and calls runners with; also the spawn-time prober.
    pub transport: Arc<dyn Transport>,
    /// The deepest spawn depth runners of this template may have (see
    /// [`spawn_guard`]): 1 — a top-level parent starts runners, runners start none — unless
    /// nesting was opted into with [`RunnerTemplate::allow_nested`].
    pub max_depth: u32,
}

impl fmt::Debug for RunnerTemplate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RunnerTemplate")
            .field("app", &self.app)
            .field("parent_id", &self.parent_id)
            .field("parent_timeout", &self.parent_timeout)
            .field("env", &self.env.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl RunnerTemplate {
    /// A template for runners of `app` started by parent `parent_id`, reached via `transport`.
    pub fn new(
        app: impl Into<String>,
        parent_id: impl Into<String>,
        secret: Secret,
        transport: Arc<dyn Transport>,
    ) -> Self {
        RunnerTemplate {
            app: app.into(),
            parent_id: parent_id.into(),
            secret,
            parent_timeout: Duration::from_secs(20),
            env: BTreeMap::new(),
            transport,
            max_depth: DEFAULT_MAX_DEPTH,
        }
    }

    /// Lets runners of this template start runners of their own, down to spawn depth
    /// `max_depth` (2: runners may start one more level). A `CONFIG` error above
    /// [`MAX_NESTING_DEPTH`].
    pub fn allow_nested(mut self, max_depth: u32) -> Result<Self> {
        if max_depth > MAX_NESTING_DEPTH {
            return Err(Error::config(format!(
                "nested pools are capped at spawn depth {MAX_NESTING_DEPTH}; {max_depth} was asked for"
            )));
        }
        self.max_depth = max_depth.max(DEFAULT_MAX_DEPTH);
        Ok(self)
    }

    /// Sets how long runners live without parent contact.
    pub fn parent_timeout(mut self, timeout: Duration) -> Self {
        self.parent_timeout = timeout;
        self
    }

    /// Adds an environment variable for every runner.
    pub fn env(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.env.insert(key.into(), value.into());
        self
    }

    /// A request for one new runner of `pool` (fresh runner id), one spawn depth below this
    /// process (a process whose depth cannot be read makes runners that can never spawn).
    pub fn request(&self, pool: &str, boot_timeout: Duration) -> SpawnRequest {
        let depth = spawn_guard::spawn_depth().map_or(MAX_NESTING_DEPTH + 1, |d| d.saturating_add(1));
        self.request_at_depth(pool, boot_timeout, depth)
    }

    /// A request for one new runner of `pool` at spawn depth `depth` (`FLAME_SPAWN_DEPTH`).
    pub fn request_at_depth(&self, pool: &str, boot_timeout: Duration, depth: u32) -> SpawnRequest {
        let runner_id = format!("{pool}-{}", uuid::Uuid::new_v4().simple());
        let mut env = self.env.clone();
        for (k, v) in [
            ("FLAME_MODE", "runner".to_owned()),
            ("FLAME_SECRET", self.secret.expose().to_owned()),
            ("FLAME_LISTEN", "127.0.0.1:0".to_owned()),
            ("FLAME_PARENT_ID", self.parent_id.clone()),
            (
                "FLAME_PARENT_TIMEOUT",
                self.parent_timeout.as_millis().max(1).to_string(),
            ),
            ("FLAME_RUNNER_ID", runner_id.clone()),
            ("FLAME_POOL", pool.to_owned()),
            (SPAWN_DEPTH_VAR, depth.to_string()),
        ] {
            env.insert(k.to_owned(), v);
        }
        let labels = BTreeMap::from([
            (labels::APP.to_owned(), self.app.clone()),
            (labels::POOL.to_owned(), pool.to_owned()),
            (labels::PARENT.to_owned(), self.parent_id.clone()),
            (labels::RUNNER.to_owned(), runner_id.clone()),
        ]);
        SpawnRequest {
            runner_id,
            app: self.app.clone(),
            pool: pool.to_owned(),
            parent_id: self.parent_id.clone(),
            env,
            labels,
            boot_timeout,
            secret: Some(self.secret.clone()),
            prober: self.transport.clone(),
        }
    }
}

/// A pool that starts runners through a [`Backend`] when calls need them and ends them when
/// idle, with exactly the semantics of DESIGN.md §4 (see the [module docs](self)).
///
/// ```
/// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
/// use flame_core::pool::{ElasticPool, RunnerTemplate};
/// use flame_core::{Backend, CheckoutOptions, InMemoryTransport, Pool, PoolConfig, Secret};
/// # use flame_core::{Dispatcher, Endpoint, Registry, ReapScope, RunnerHandle, RunnerState, SpawnRequest};
/// # struct Mem(InMemoryTransport);
/// # #[async_trait::async_trait]
/// # impl Backend for Mem {
/// #     fn name(&self) -> &str { "mem" }
/// #     async fn spawn(&self, r: SpawnRequest) -> flame_core::Result<RunnerHandle> {
/// #         let url = format!("mem://{}", r.runner_id);
/// #         self.0.add(&url, Dispatcher::new(Registry::new(), r.runner_id.clone()));
/// #         Ok(RunnerHandle { endpoint: Endpoint::new(url, r.runner_id.clone()), runner_id: r.runner_id, backend_id: "1".into() })
/// #     }
/// #     async fn terminate(&self, h: &RunnerHandle) -> flame_core::Result<()> { self.0.remove(&h.endpoint.url); Ok(()) }
/// #     async fn status(&self, _: &RunnerHandle) -> flame_core::Result<RunnerState> { Ok(RunnerState::Running) }
/// #     async fn reap(&self, _: &ReapScope) -> flame_core::Result<usize> { Ok(0) }
/// # }
/// let transport = InMemoryTransport::new();
/// let backend = Mem(transport.clone()); // a Backend: LocalProcess, Docker, ...
/// let template = RunnerTemplate::new("app", "parent-1", Secret::generate(), std::sync::Arc::new(transport));
/// let pool = ElasticPool::builder("default", std::sync::Arc::new(backend), template)
///     .config(PoolConfig::default().max(2).max_concurrency(1))
///     .build()?;
/// let a = pool.checkout(&CheckoutOptions::default()).await?; // starts a runner
/// let b = pool.checkout(&CheckoutOptions::default()).await?; // and a second one
/// assert_ne!(a.endpoint().runner_id, b.endpoint().runner_id);
/// drop((a, b));
/// pool.shutdown(std::time::Duration::from_secs(1)).await?;
/// assert_eq!(pool.stats().runners, 0);
/// # Ok::<(), flame_core::Error>(())
/// # }).unwrap();
/// ```
pub struct ElasticPool {
    shared: Arc<Shared>,
}

/// Configures an [`ElasticPool`]; see [`ElasticPool::builder`].
pub struct ElasticPoolBuilder {
    name: String,
    config: PoolConfig,
    backend: Arc<dyn Backend>,
    template: RunnerTemplate,
    hooks: Vec<PoolEventHook>,
}

impl ElasticPoolBuilder {
    /// Sets the pool's configuration (default: [`PoolConfig::default`]).
    pub fn config(mut self, config: PoolConfig) -> Self {
        self.config = config;
        self
    }

    /// Adds a callback for the pool's events (`grow_start`, `grow_end`, `shrink`,
    /// `runner_down`).
    pub fn on_event(mut self, hook: impl Fn(&PoolEvent) + Send + Sync + 'static) -> Self {
        self.hooks.push(Arc::new(hook));
        self
    }

    /// Adds a shared callback for the pool's events.
    pub fn on_event_shared(mut self, hook: PoolEventHook) -> Self {
        self.hooks.push(hook);
        self
    }

    /// Builds the pool. With `min > 0` it starts the first runners at once, which needs a
    /// tokio runtime (a `CONFIG` error otherwise). `max` is at least 1, and `min` at most `max`.
    pub fn build(self) -> Result<ElasticPool> {
        let mut config = self.config;
        config.max = config.max.max(1);
        config.min = config.min.min(config.max);
        config.max_concurrency = config.max_concurrency.max(1);
        // Ping well inside the runner's parent-death window, whatever the user configured.
        let window = self.template.parent_timeout / 3;
        let health_interval = config.health_interval.min(window).max(Duration::from_millis(10));
        let conc = if config.single_use {
            1
        } else {
            config.max_concurrency
        };
        // A process that may not start runners (a runner, past the depth cap) gets a pool that
        // refuses at once with the reason, rather than one that tries and fails.
        let refusal = spawn_guard::check_spawn_allowed(self.template.max_depth)
            .err()
            .map(|e| e.message().to_owned());
        if let Some(e) = &refusal {
            tracing::warn!(target: "flame::pool", pool = %self.name, error = %e, "this pool will never start a runner");
        }
        let breaker = Breaker::new(
            config.boot_failure_threshold,
            config.breaker_backoff,
            config.breaker_max_backoff,
            config.spawn_budget(),
        );
        let shared = Arc::new(Shared {
            name: self.name,
            conc,
            health_interval,
            config,
            backend: self.backend,
            template: self.template,
            hooks: self.hooks,
            refusal,
            state: Mutex::new(State {
                breaker,
                ..State::default()
            }),
            closed: CancellationToken::new(),
            changed: Notify::new(),
            terminating: AtomicUsize::new(0),
        });
        if shared.config.min > 0 {
            if tokio::runtime::Handle::try_current().is_err() {
                return Err(Error::config(
                    "an ElasticPool with min > 0 must be built inside a tokio runtime",
                ));
            }
            let actions = shared.rebalance(&mut shared.lock());
            shared.apply(actions);
        }
        Ok(ElasticPool { shared })
    }
}

impl ElasticPool {
    /// A builder for pool `name` starting runners through `backend` as `template` says.
    pub fn builder(
        name: impl Into<String>,
        backend: Arc<dyn Backend>,
        template: RunnerTemplate,
    ) -> ElasticPoolBuilder {
        ElasticPoolBuilder {
            name: name.into(),
            config: PoolConfig::default(),
            backend,
            template,
            hooks: Vec::new(),
        }
    }

    /// The pool's configuration (after clamping: `max >= 1`, `min <= max`).
    pub fn config(&self) -> &PoolConfig {
        &self.shared.config
    }

    /// The runners serving now, least loaded first.
    pub fn runners(&self) -> Vec<RunnerHandle> {
        let st = self.shared.lock();
        let mut v: Vec<(usize, u64, RunnerHandle)> = st
            .runners
            .iter()
            .map(|(id, r)| (r.load, *id, r.handle.clone()))
            .collect();
        v.sort_by_key(|(l, id, _)| (*l, *id));
        v.into_iter().map(|(_, _, h)| h).collect()
    }

    /// The secret this pool's runners verify requests with.
    pub fn secret(&self) -> &Secret {
        &self.shared.template.secret
    }
}

impl Drop for ElasticPool {
    fn drop(&mut self) {
        // Dropped without `shutdown`: end the runners in the background, if a runtime is there.
        // (Backends also have their own safety nets: kill on drop, the runner's watchdog.)
        if self.shared.lock().closed {
            return;
        }
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            let shared = self.shared.clone();
            rt.spawn(async move { shared.shutdown(Duration::ZERO).await });
        } else {
            self.shared.closed.cancel();
        }
    }
}

impl fmt::Debug for ElasticPool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ElasticPool")
            .field("name", &self.shared.name)
            .field("stats", &self.stats())
            .finish()
    }
}

#[async_trait]
impl Pool for ElasticPool {
    fn name(&self) -> &str {
        &self.shared.name
    }

    async fn checkout(&self, options: &CheckoutOptions) -> Result<Lease> {
        self.shared.checkout(options).await
    }

    fn stats(&self) -> PoolStats {
        let st = self.shared.lock();
        PoolStats {
            runners: st.runners.len(),
            booting: st.booting,
            in_flight: st.in_flight,
            waiting: st.waiters.len(),
            capacity: st
                .runners
                .values()
                .filter(|r| r.accepting(&self.shared.config))
                .count()
                * self.shared.conc,
        }
    }

    async fn shutdown(&self, grace: Duration) -> Result<()> {
        self.shared.shutdown(grace).await;
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------------

/// How long the pool waits past `boot_timeout` for a backend that overruns it before dropping
/// the spawn (backends must stop on time themselves; this is the pool's own safety net).
const BOOT_SLACK: Duration = Duration::from_secs(5);
/// Consecutive failed pings that declare a runner dead when the engine still says running.
const PING_FAILURES_DOWN: u32 = 2;

struct Shared {
    name: String,
    config: PoolConfig,
    /// Slots per runner (1 when single use).
    conc: usize,
    health_interval: Duration,
    backend: Arc<dyn Backend>,
    template: RunnerTemplate,
    hooks: Vec<PoolEventHook>,
    /// Why this process may not start runners at all (see [`spawn_guard`]): a `CONFIG` error.
    refusal: Option<String>,
    state: Mutex<State>,
    /// Fires when the pool shuts down (stops monitors).
    closed: CancellationToken,
    /// Woken when `in_flight`, `booting` or `terminating` falls (shutdown waits on it).
    changed: Notify,
    /// Runners being ended in the background.
    terminating: AtomicUsize,
}

struct State {
    runners: HashMap<u64, Runner>,
    /// Runners that take leases and have a free slot, by `(load, id)`.
    free: BTreeSet<(usize, u64)>,
    booting: usize,
    /// FIFO: keyed by arrival order.
    waiters: BTreeMap<u64, oneshot::Sender<Result<Lease>>>,
    next_id: u64,
    in_flight: usize,
    closed: bool,
    /// Consecutive failed starts, and when `min` may be retried after them.
    spawn_failures: u32,
    min_retry_at: Option<Instant>,
    /// The crash-loop breaker and spawn budget.
    breaker: Breaker,
    /// When a rebalance is already scheduled (after a breaker backoff or a spent budget).
    wake_at: Option<Instant>,
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
    fn next(&mut self) -> u64 {
        self.next_id += 1;
        self.next_id
    }
}

struct Runner {
    handle: RunnerHandle,
    load: usize,
    /// The load it is filed under in `free`, if it is there.
    in_free: Option<usize>,
    /// Failed a call or a ping: no new leases until a ping succeeds.
    suspect: bool,
    /// Draining or used up (single use): no new leases, ended when its load reaches 0.
    retiring: Option<&'static str>,
    used: bool,
    idle_since: Instant,
    lost: CancellationToken,
    went_idle: Arc<Notify>,
    check_now: Arc<Notify>,
}

impl Runner {
    fn accepting(&self, config: &PoolConfig) -> bool {
        !self.suspect && self.retiring.is_none() && !(config.single_use && self.used)
    }
}

/// Work decided under the lock, done after it is released.
#[derive(Default)]
#[must_use]
struct Actions {
    grants: Vec<(oneshot::Sender<Result<Lease>>, Result<Lease>)>,
    spawns: usize,
    terminate: Vec<(RunnerHandle, &'static str)>,
    events: Vec<PoolEvent>,
    /// Rebalance again at this instant (a breaker backoff or the spawn budget ends then).
    wake: Option<Instant>,
}

impl Actions {
    fn merge(&mut self, other: Actions) {
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

struct WaiterGuard<'a> {
    shared: &'a Arc<Shared>,
    id: Option<u64>,
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
    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock cannot leave the state half-updated in a way that
        // matters more than stopping the pool, so keep going with the data as it is.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn emit(&self, event: PoolEvent) {
        match &event {
            PoolEvent::GrowStart { pool, runner_id } => {
                tracing::info!(target: "flame::pool", event = "grow_start", pool, runner = runner_id, "starting a runner")
            }
            PoolEvent::GrowEnd {
                pool,
                runner_id,
                error: None,
            } => {
                tracing::info!(target: "flame::pool", event = "grow_end", pool, runner = runner_id, "runner ready")
            }
            PoolEvent::GrowEnd {
                pool,
                runner_id,
                error: Some(e),
            } => {
                tracing::warn!(target: "flame::pool", event = "grow_end", pool, runner = runner_id, error = %e, "runner failed to start")
            }
            PoolEvent::Shrink {
                pool,
                runner_id,
                reason,
            } => {
                tracing::info!(target: "flame::pool", event = "shrink", pool, runner = runner_id, reason, "ending a runner")
            }
            PoolEvent::RunnerDown {
                pool,
                runner_id,
                reason,
            } => {
                tracing::warn!(target: "flame::pool", event = "runner_down", pool, runner = runner_id, reason = %reason, "runner is down")
            }
            PoolEvent::BreakerOpen {
                pool,
                failures,
                retry_in,
                last_error,
            } => {
                tracing::error!(target: "flame::pool", event = "breaker_open", pool, failures, retry_in_ms = retry_in.as_millis() as u64, last_error = %last_error, "runners keep failing to boot: starting none for a while")
            }
            PoolEvent::BreakerClosed { pool } => {
                tracing::info!(target: "flame::pool", event = "breaker_closed", pool, "a runner booted again: starts are back to normal")
            }
            PoolEvent::SpawnBudgetSpent { pool, budget } => {
                tracing::error!(target: "flame::pool", event = "spawn_budget_spent", pool, budget, "spawn budget spent: no runner starts until the rolling minute moves on")
            }
        }
        for hook in &self.hooks {
            hook(&event);
        }
    }

    /// Re-files runner `id` in the free set after its load or availability changed.
    fn refile(&self, st: &mut State, id: u64) {
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
    fn take_slot(self: &Arc<Self>, st: &mut State, id: u64) -> Result<Lease> {
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

    /// Hands free slots to waiters (oldest first) and decides how many runners to start.
    fn rebalance(self: &Arc<Self>, st: &mut State) -> Actions {
        let mut actions = Actions::default();
        while !st.waiters.is_empty() {
            let Some(&(_, id)) = st.free.first() else {
                break;
            };
            let Some((_, tx)) = st.waiters.pop_first() else {
                break;
            };
            let lease = self.take_slot(st, id);
            actions.grants.push((tx, lease));
        }
        if st.closed {
            return actions;
        }
        if self.refusal.is_some() {
            return actions;
        }
        let now = Instant::now();
        let min_ok = st.min_retry_at.map_or(true, |t| now >= t);
        loop {
            let total = st.runners.len() + st.booting;
            if total >= self.config.max {
                break;
            }
            let uncovered = st.waiters.len().saturating_sub(st.booting * self.conc);
            if !(uncovered > 0 || (total < self.config.min && min_ok)) {
                break;
            }
            match st.breaker.gate(now, st.booting) {
                Gate::Open | Gate::Trial => {}
                Gate::TrialBooting => break,
                Gate::BreakerUntil(at) => {
                    actions.wake = Some(at);
                    break;
                }
                Gate::BudgetUntil(at) => {
                    if !st.breaker.budget_reported {
                        st.breaker.budget_reported = true;
                        actions.events.push(PoolEvent::SpawnBudgetSpent {
                            pool: self.name.clone(),
                            budget: self.config.spawn_budget(),
                        });
                    }
                    actions.wake = Some(at);
                    break;
                }
            }
            st.breaker.started(now);
            st.booting += 1;
            actions.spawns += 1;
        }
        if let Some(at) = actions.wake {
            if st.wake_at.is_some_and(|w| w <= at) {
                actions.wake = None;
            } else {
                st.wake_at = Some(at);
            }
        }
        actions
    }

    /// Does what `rebalance` decided; must be called without the lock.
    fn apply(self: &Arc<Self>, actions: Actions) {
        for event in actions.events {
            self.emit(event);
        }
        for (tx, grant) in actions.grants {
            // A waiter that just gave up: dropping the lease hands the slot on.
            if let Err(returned) = tx.send(grant) {
                drop(returned);
            }
        }
        for (handle, reason) in actions.terminate {
            self.end_in_background(handle, reason);
        }
        for _ in 0..actions.spawns {
            let shared = self.clone();
            tokio::spawn(async move { shared.boot().await });
        }
        if let Some(at) = actions.wake {
            let shared = self.clone();
            tokio::spawn(async move {
                tokio::select! {
                    _ = tokio::time::sleep_until(at) => {}
                    _ = shared.closed.cancelled() => return,
                }
                let actions = {
                    let mut st = shared.lock();
                    if st.wake_at == Some(at) {
                        st.wake_at = None;
                    }
                    shared.rebalance(&mut st)
                };
                shared.apply(actions);
            });
        }
    }

    /// Ends a runner in a task; shutdown waits for such tasks.
    fn end_in_background(self: &Arc<Self>, handle: RunnerHandle, reason: &'static str) {
        self.terminating.fetch_add(1, Ordering::AcqRel);
        let shared = self.clone();
        tokio::spawn(async move {
            shared.end_runner(handle, reason).await;
            shared.terminating.fetch_sub(1, Ordering::AcqRel);
            shared.changed.notify_waiters();
        });
    }

    async fn end_runner(&self, handle: RunnerHandle, reason: &'static str) {
        if let Err(e) = self.backend.terminate(&handle).await {
            tracing::warn!(target: "flame::pool", pool = %self.name, runner = %handle.runner_id, reason, error = %e, "terminating a runner failed");
        }
    }

    async fn checkout(self: &Arc<Self>, options: &CheckoutOptions) -> Result<Lease> {
        let (rx, id, actions) = {
            let mut st = self.lock();
            if st.closed {
                return Err(self.shut_down_error());
            }
            if st.waiters.is_empty() {
                if let Some(&(_, id)) = st.free.first() {
                    return self.take_slot(&mut st, id);
                }
            }
            if st.runners.is_empty() && st.booting == 0 {
                // Nothing could serve a waiter: say why now instead of at the deadline.
                if let Some(refusal) = &self.refusal {
                    return Err(Error::config(refusal.clone()));
                }
                let now = Instant::now();
                if let Gate::BreakerUntil(_) = st.breaker.gate(now, 0) {
                    return Err(st.breaker.error(&self.name, now));
                }
            }
            let id = st.next();
            let (tx, rx) = oneshot::channel();
            st.waiters.insert(id, tx);
            let actions = self.rebalance(&mut st);
            (rx, id, actions)
        };
        self.apply(actions);
        let mut guard = WaiterGuard {
            shared: self,
            id: Some(id),
        };
        let mut rx = rx;
        let mut outcome = match options.deadline {
            Some(deadline) => tokio::time::timeout_at(deadline, &mut rx).await.ok(),
            None => Some((&mut rx).await),
        };
        if outcome.is_none() && self.lock().booting > 0 {
            // A call's timeout covers the call, not a runner's boot: while runners boot, wait
            // for them (bounded by the boot timeout) rather than fail — Elixir FLAME's calls
            // fail during boot when their timeout is shorter than `boot_timeout`.
            let limit = self.config.boot_timeout + BOOT_SLACK;
            outcome = tokio::time::timeout(limit, &mut rx).await.ok();
        }
        match outcome {
            Some(Ok(grant)) => {
                guard.id = None;
                grant
            }
            Some(Err(_)) => {
                guard.id = None;
                Err(self.shut_down_error())
            }
            None => {
                drop(guard);
                // Any slot that raced to us was in the receiver, dropped with the timeout
                // future: it has been handed on already.
                let st = self.lock();
                let busy_at_max =
                    st.booting == 0 && !st.runners.is_empty() && st.runners.len() >= self.config.max;
                Err(if busy_at_max {
                    Error::new(
                        ErrorCode::Overloaded,
                        format!(
                            "pool `{}` is at its max of {} runners and every slot stayed busy until the call's deadline",
                            self.name, self.config.max
                        ),
                    )
                } else {
                    Error::new(
                        ErrorCode::Timeout,
                        format!(
                            "pool `{}`: no runner became ready before the call's deadline",
                            self.name
                        ),
                    )
                })
            }
        }
    }

    fn shut_down_error(&self) -> Error {
        Error::new(ErrorCode::Shutdown, format!("pool `{}` is shut down", self.name))
    }

    fn release(self: &Arc<Self>, id: u64, outcome: LeaseOutcome) {
        let actions = {
            let mut st = self.lock();
            st.in_flight = st.in_flight.saturating_sub(1);
            let mut actions = Actions::default();
            if let Some(r) = st.runners.get_mut(&id) {
                r.load = r.load.saturating_sub(1);
                if outcome == LeaseOutcome::RunnerFailed && !r.suspect {
                    r.suspect = true;
                    r.check_now.notify_one();
                }
                if r.load == 0 {
                    r.idle_since = Instant::now();
                    r.went_idle.notify_one();
                    let reason = r.retiring.or(if self.config.single_use && r.used {
                        Some("single_use")
                    } else {
                        None
                    });
                    if let Some(reason) = reason {
                        if let Some(r) = self.remove_runner(&mut st, id) {
                            r.lost.cancel();
                            actions.events.push(PoolEvent::Shrink {
                                pool: self.name.clone(),
                                runner_id: r.handle.runner_id.clone(),
                                reason,
                            });
                            actions.terminate.push((r.handle, reason));
                        }
                    }
                }
                self.refile(&mut st, id);
            }
            actions.merge(self.rebalance(&mut st));
            actions
        };
        self.apply(actions);
        self.changed.notify_waiters();
    }

    fn remove_runner(&self, st: &mut State, id: u64) -> Option<Runner> {
        let mut r = st.runners.remove(&id)?;
        if let Some(old) = r.in_free.take() {
            st.free.remove(&(old, id));
        }
        Some(r)
    }

    async fn boot(self: Arc<Self>) {
        // Asked again right before every start (the environment is the truth, not the state
        // the pool was built in): a runner process never starts runners unless allowed.
        let depth = spawn_guard::check_spawn_allowed(self.template.max_depth);
        let request = self.template.request_at_depth(
            &self.name,
            self.config.boot_timeout,
            *depth.as_ref().unwrap_or(&(MAX_NESTING_DEPTH + 1)),
        );
        let runner_id = request.runner_id.clone();
        self.emit(PoolEvent::GrowStart {
            pool: self.name.clone(),
            runner_id: runner_id.clone(),
        });
        let started = Instant::now();
        let boot_timeout = self.config.boot_timeout;
        let result = match depth {
            Err(refused) => Err(refused),
            Ok(_) => match tokio::time::timeout(boot_timeout + BOOT_SLACK, self.backend.spawn(request)).await
            {
                Ok(Ok(handle)) if started.elapsed() > boot_timeout + BOOT_SLACK / 5 => {
                    // The backend overran the boot timeout: its runner is not wanted any more.
                    self.end_runner(handle, "boot_timeout").await;
                    Err(spawn_timeout(&runner_id, boot_timeout))
                }
                Ok(r) => r,
                Err(_) => Err(spawn_timeout(&runner_id, boot_timeout)),
            },
        };
        match result {
            Ok(mut handle) => {
                if handle.endpoint.secret.is_none() {
                    handle.endpoint.secret = Some(self.template.secret.clone());
                }
                let (actions, monitor, closed_breaker) = {
                    let mut st = self.lock();
                    st.spawn_failures = 0;
                    st.min_retry_at = None;
                    let closed_breaker = st.breaker.succeeded();
                    if st.closed {
                        // Still counted as booting until it is ended, so shutdown waits for it.
                        (None, None, closed_breaker)
                    } else {
                        st.booting = st.booting.saturating_sub(1);
                        let id = st.next();
                        let runner = Runner {
                            handle: handle.clone(),
                            load: 0,
                            in_free: None,
                            suspect: false,
                            retiring: None,
                            used: false,
                            idle_since: Instant::now(),
                            lost: CancellationToken::new(),
                            went_idle: Arc::new(Notify::new()),
                            check_now: Arc::new(Notify::new()),
                        };
                        let monitor = (
                            id,
                            runner.lost.clone(),
                            runner.went_idle.clone(),
                            runner.check_now.clone(),
                        );
                        st.runners.insert(id, runner);
                        self.refile(&mut st, id);
                        (Some(self.rebalance(&mut st)), Some(monitor), closed_breaker)
                    }
                };
                self.emit(PoolEvent::GrowEnd {
                    pool: self.name.clone(),
                    runner_id: runner_id.clone(),
                    error: None,
                });
                if closed_breaker {
                    self.emit(PoolEvent::BreakerClosed {
                        pool: self.name.clone(),
                    });
                }
                match (actions, monitor) {
                    (Some(mut actions), Some((id, lost, went_idle, check_now))) => {
                        // These callers waited for this runner to boot.
                        for (_, grant) in actions.grants.iter_mut() {
                            if let Ok(lease) = grant {
                                lease.set_fresh_runner();
                            }
                        }
                        self.apply(actions);
                        let shared = self.clone();
                        tokio::spawn(
                            async move { shared.monitor(id, handle, lost, went_idle, check_now).await },
                        );
                    }
                    _ => {
                        // Shut down while it booted.
                        self.emit(PoolEvent::Shrink {
                            pool: self.name.clone(),
                            runner_id,
                            reason: "shutdown",
                        });
                        self.end_runner(handle, "shutdown").await;
                        let mut st = self.lock();
                        st.booting = st.booting.saturating_sub(1);
                    }
                }
            }
            Err(err) => {
                let (failed, actions, retry_in, opened) = {
                    let mut st = self.lock();
                    st.booting = st.booting.saturating_sub(1);
                    let now = Instant::now();
                    let opened = st
                        .breaker
                        .failed(now, &err)
                        .map(|backoff| (backoff, st.breaker.failures, st.breaker.error(&self.name, now)));
                    st.spawn_failures = st.spawn_failures.saturating_add(1);
                    let backoff = Duration::from_millis(100)
                        .saturating_mul(1u32 << st.spawn_failures.min(9))
                        .min(Duration::from_secs(30));
                    st.min_retry_at = Some(Instant::now() + backoff);
                    // The waiters this start would have served fail with its error; the rest
                    // are still covered by runners booting. Once the breaker opens, no start
                    // will come for a while: with no runner to free a slot, every waiter not
                    // covered by a boot still in progress fails now.
                    let uncovered = st.waiters.len().saturating_sub(st.booting * self.conc);
                    let failing = if opened.is_some() && st.runners.is_empty() {
                        uncovered
                    } else {
                        uncovered.min(self.conc)
                    };
                    let mut failed = Vec::new();
                    for _ in 0..failing {
                        if let Some((_, tx)) = st.waiters.pop_first() {
                            failed.push(tx);
                        }
                    }
                    let actions = self.rebalance(&mut st);
                    let below_min = st.runners.len() + st.booting < self.config.min && !st.closed;
                    (failed, actions, below_min.then_some(backoff), opened)
                };
                let message = err.to_string();
                for tx in failed {
                    let e = match &opened {
                        Some((_, _, breaker_error)) => {
                            Error::new(breaker_error.code(), breaker_error.message())
                                .with_retryable(true)
                                .with_details(breaker_error.details().cloned().unwrap_or_default())
                        }
                        None => Error::new(err.code(), err.message()).with_retryable(err.is_retryable()),
                    };
                    let _ = tx.send(Err(e));
                }
                self.emit(PoolEvent::GrowEnd {
                    pool: self.name.clone(),
                    runner_id,
                    error: Some(message.clone()),
                });
                if let Some((retry_in, failures, _)) = opened {
                    self.emit(PoolEvent::BreakerOpen {
                        pool: self.name.clone(),
                        failures,
                        retry_in,
                        last_error: message,
                    });
                }
                self.apply(actions);
                if let Some(delay) = retry_in {
                    let shared = self.clone();
                    tokio::spawn(async move {
                        tokio::select! {
                            _ = tokio::time::sleep(delay) => {}
                            _ = shared.closed.cancelled() => return,
                        }
                        let actions = shared.rebalance(&mut shared.lock());
                        shared.apply(actions);
                    });
                }
            }
        }
        self.changed.notify_waiters();
    }

    /// Watches one runner: health pings, idle shutdown, checks asked for by failed calls.
    async fn monitor(
        self: Arc<Self>,
        id: u64,
        handle: RunnerHandle,
        lost: CancellationToken,
        went_idle: Arc<Notify>,
        check_now: Arc<Notify>,
    ) {
        let ping_timeout = self
            .health_interval
            .clamp(Duration::from_secs(1), Duration::from_secs(10));
        let mut next_ping = Instant::now() + self.health_interval;
        let mut failures = 0u32;
        loop {
            let idle_at = {
                let st = self.lock();
                let Some(r) = st.runners.get(&id) else {
                    return;
                };
                (r.load == 0 && st.runners.len() > self.config.min)
                    .then(|| r.idle_since + self.config.idle_shutdown_after)
            };
            let far = Instant::now() + Duration::from_secs(86_400);
            tokio::select! {
                _ = lost.cancelled() => return,
                _ = self.closed.cancelled() => return,
                _ = went_idle.notified() => continue,
                _ = tokio::time::sleep_until(idle_at.unwrap_or(far)), if idle_at.is_some() => {
                    if self.retire_idle(id) {
                        return;
                    }
                    continue;
                }
                _ = check_now.notified() => {}
                _ = tokio::time::sleep_until(next_ping) => {}
            }
            let ping =
                tokio::time::timeout(ping_timeout, self.template.transport.ping(&handle.endpoint)).await;
            let (problem, refused) = match ping {
                Ok(Ok(status)) if status.draining => {
                    self.retire_draining(id);
                    (None, false)
                }
                Ok(Ok(_)) => (None, false),
                Ok(Err(e)) => {
                    let refused = e.code() == ErrorCode::Transport && e.handler_never_ran();
                    (Some(e.to_string()), refused)
                }
                Err(_) => (Some(format!("ping timed out after {ping_timeout:?}")), false),
            };
            next_ping = Instant::now() + self.health_interval;
            match problem {
                None => {
                    failures = 0;
                    self.clear_suspect(id);
                }
                Some(reason) => {
                    failures += 1;
                    let state = self.backend.status(&handle).await;
                    if refused && matches!(state, Ok(RunnerState::Running)) {
                        // It stopped listening but still runs: a runner draining on SIGTERM
                        // closes its listener first. Its calls in flight finish; it takes no
                        // new ones and is ended once they are done (or they fail on their own
                        // connections if it dies).
                        self.retire_draining(id);
                        return;
                    }
                    let stopped = matches!(state, Ok(RunnerState::Stopped));
                    if stopped || failures >= PING_FAILURES_DOWN {
                        let why = if stopped {
                            format!("{reason}; the {} backend says it stopped", self.backend.name())
                        } else {
                            format!("{failures} pings failed; last: {reason}")
                        };
                        self.runner_down(id, why);
                        return;
                    }
                    self.mark_suspect(id);
                    // Look again soon rather than a whole interval later.
                    next_ping = Instant::now() + (self.health_interval / 4).max(Duration::from_millis(50));
                }
            }
        }
    }

    fn mark_suspect(self: &Arc<Self>, id: u64) {
        let mut st = self.lock();
        if let Some(r) = st.runners.get_mut(&id) {
            r.suspect = true;
        }
        self.refile(&mut st, id);
    }

    fn clear_suspect(self: &Arc<Self>, id: u64) {
        let actions = {
            let mut st = self.lock();
            let Some(r) = st.runners.get_mut(&id) else {
                return;
            };
            if !r.suspect {
                return;
            }
            r.suspect = false;
            self.refile(&mut st, id);
            self.rebalance(&mut st)
        };
        self.apply(actions);
    }

    fn retire_draining(self: &Arc<Self>, id: u64) {
        let actions = {
            let mut st = self.lock();
            let Some(r) = st.runners.get_mut(&id) else {
                return;
            };
            if r.retiring.is_some() {
                return;
            }
            r.retiring = Some("draining");
            let mut actions = Actions::default();
            if r.load == 0 {
                if let Some(r) = self.remove_runner(&mut st, id) {
                    r.lost.cancel();
                    actions.events.push(PoolEvent::Shrink {
                        pool: self.name.clone(),
                        runner_id: r.handle.runner_id.clone(),
                        reason: "draining",
                    });
                    actions.terminate.push((r.handle, "draining"));
                }
            } else {
                self.refile(&mut st, id);
            }
            actions.merge(self.rebalance(&mut st));
            actions
        };
        self.apply(actions);
    }

    /// Ends runner `id` if it is still idle and the pool is above `min`; true if it did.
    fn retire_idle(self: &Arc<Self>, id: u64) -> bool {
        let handle = {
            let mut st = self.lock();
            let above_min = st.runners.len() > self.config.min;
            let Some(r) = st.runners.get(&id) else {
                return true;
            };
            if r.load > 0 || !above_min || r.idle_since.elapsed() < self.config.idle_shutdown_after {
                return false;
            }
            match self.remove_runner(&mut st, id) {
                Some(r) => r.handle,
                None => return true,
            }
        };
        self.emit(PoolEvent::Shrink {
            pool: self.name.clone(),
            runner_id: handle.runner_id.clone(),
            reason: "idle",
        });
        self.apply(Actions {
            terminate: vec![(handle, "idle")],
            ..Actions::default()
        });
        true
    }

    fn runner_down(self: &Arc<Self>, id: u64, reason: String) {
        let (runner, actions) = {
            let mut st = self.lock();
            let runner = self.remove_runner(&mut st, id);
            (runner, self.rebalance(&mut st))
        };
        let Some(runner) = runner else {
            self.apply(actions);
            return;
        };
        // Calls in flight on it fail now, retryable, instead of waiting for their deadline.
        runner.lost.cancel();
        self.emit(PoolEvent::RunnerDown {
            pool: self.name.clone(),
            runner_id: runner.handle.runner_id.clone(),
            reason,
        });
        self.apply(actions);
        // Make sure whatever is left of it is gone (idempotent for an exited runner).
        self.end_in_background(runner.handle, "down");
    }

    async fn shutdown(self: &Arc<Self>, grace: Duration) {
        let waiters = {
            let mut st = self.lock();
            st.closed = true;
            std::mem::take(&mut st.waiters)
        };
        for (_, tx) in waiters {
            let _ = tx.send(Err(self.shut_down_error()));
        }
        // Drain: wait for leases out, up to the grace time.
        let until = Instant::now() + grace.min(self.config.shutdown_timeout);
        loop {
            let changed = self.changed.notified();
            if self.lock().in_flight == 0 {
                break;
            }
            if tokio::time::timeout_at(until, changed).await.is_err() {
                break;
            }
        }
        let runners: Vec<Runner> = {
            let mut st = self.lock();
            st.free.clear();
            st.runners.drain().map(|(_, r)| r).collect()
        };
        self.closed.cancel();
        let ends = runners.into_iter().map(|r| {
            r.lost.cancel();
            self.emit(PoolEvent::Shrink {
                pool: self.name.clone(),
                runner_id: r.handle.runner_id.clone(),
                reason: "shutdown",
            });
            let shared = self.clone();
            async move { shared.end_runner(r.handle, "shutdown").await }
        });
        futures::future::join_all(ends).await;
        // Starts in progress end their runner themselves once they see the pool closed; wait
        // for them (bounded by the boot timeout) so nothing is left behind.
        let until = Instant::now() + self.config.boot_timeout + BOOT_SLACK;
        loop {
            let changed = self.changed.notified();
            if self.lock().booting == 0 && self.terminating.load(Ordering::Acquire) == 0 {
                break;
            }
            if tokio::time::timeout_at(until, changed).await.is_err() {
                tracing::warn!(target: "flame::pool", pool = %self.name, "runner starts still in progress after shutdown");
                break;
            }
        }
    }
}

fn spawn_timeout(runner_id: &str, boot_timeout: Duration) -> Error {
    Error::new(
        ErrorCode::SpawnTimeout,
        format!("runner {runner_id} did not become healthy within the boot timeout of {boot_timeout:?}"),
    )
}
