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
//!
//! The module is split by what each part holds: [`events`] (what the pool reports),
//! [`template`] (what every runner is told), `state` (the bookkeeping under the one lock),
//! `lease` (checkout, release, deciding starts), `boot` (starting a runner), `health`
//! (pings, idle shutdown, dead and draining runners) and `shutdown`.

mod boot;
pub mod events;
mod health;
mod lease;
mod shutdown;
mod state;
pub mod template;

pub use events::{PoolEvent, PoolEventHook};
pub use template::RunnerTemplate;

use super::breaker::Breaker;
use super::{CheckoutOptions, Lease, Pool, PoolConfig, PoolStats};
use crate::backend::{Backend, RunnerHandle};
use crate::config::Secret;
use crate::error::{Error, Result};
use crate::spawn_guard::{self};
use async_trait::async_trait;
use state::{Shared, State};
use std::fmt;
use std::sync::atomic::AtomicUsize;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

/// A pool that starts runners through a [`Backend`] when calls need them and ends them when
/// idle, with exactly the semantics of DESIGN.md §4 (see the [module docs](self)).
///
/// ```
/// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
/// use flame_core::pool::{ElasticPool, RunnerTemplate};
/// use flame_core::testkit::InMemoryTransport;
/// use flame_core::{Backend, CheckoutOptions, Pool, PoolConfig, Secret};
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

    fn call_defaults(&self) -> crate::call::CallDefaults {
        self.shared.config.call_defaults()
    }

    fn capacity_hint(&self) -> Option<usize> {
        Some(self.shared.config.max.saturating_mul(self.shared.conc))
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
