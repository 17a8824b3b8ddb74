//! Pools of runners: the [`Pool`] trait, the [`Lease`] it hands out, and the pools flame
//! ships ([`StaticPool`] over fixed URLs, [`ElasticPool`] grown through a backend).

mod breaker;
mod config;
pub mod elastic;
mod static_pool;

pub use config::PoolConfig;
pub use elastic::{ElasticPool, ElasticPoolBuilder, PoolEvent, PoolEventHook, RunnerTemplate};
pub use static_pool::StaticPool;

use crate::call::CallDefaults;
use crate::error::Result;
use crate::transport::Endpoint;
use async_trait::async_trait;
use std::fmt;
use std::time::Duration;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// What a checkout waits for.
#[derive(Debug, Clone, Default)]
pub struct CheckoutOptions {
    /// Give up (with `TIMEOUT`/`OVERLOADED`) at this instant.
    pub deadline: Option<Instant>,
}

/// How a leased call ended, reported back to the pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LeaseOutcome {
    /// The runner answered (success or an application error).
    Done,
    /// The runner could not be reached or broke mid-call: the pool should check its health.
    RunnerFailed,
}

/// One concurrency slot on one runner. Dropping it gives the slot back.
pub struct Lease {
    endpoint: Endpoint,
    lost: CancellationToken,
    release: Option<Box<dyn FnOnce(LeaseOutcome) + Send + Sync>>,
    fresh_runner: bool,
}

impl Lease {
    /// A lease on `endpoint`; `release` runs once when the lease ends. `lost` fires if the
    /// pool finds the runner dead while the call is in flight.
    pub fn new(
        endpoint: Endpoint,
        lost: CancellationToken,
        release: impl FnOnce(LeaseOutcome) + Send + Sync + 'static,
    ) -> Self {
        Lease {
            endpoint,
            lost,
            release: Some(Box::new(release)),
            fresh_runner: false,
        }
    }

    /// Marks the lease as one the caller waited for a runner to boot to get: the call's
    /// timeout then counts from now, not from before the boot (see [`Lease::fresh_runner`]).
    pub fn set_fresh_runner(&mut self) {
        self.fresh_runner = true;
    }

    /// Whether the caller waited for this runner to boot. A call's timeout covers the call,
    /// not a runner's boot (bounded by `boot_timeout`), so a short timeout does not fail calls
    /// while a pool grows.
    pub fn fresh_runner(&self) -> bool {
        self.fresh_runner
    }

    /// The runner to send the call to.
    pub fn endpoint(&self) -> &Endpoint {
        &self.endpoint
    }

    /// Fires when the pool declares the runner dead.
    pub fn lost(&self) -> &CancellationToken {
        &self.lost
    }

    /// Ends the lease, telling the pool how the call went.
    pub fn finish(mut self, outcome: LeaseOutcome) {
        if let Some(release) = self.release.take() {
            release(outcome);
        }
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        if let Some(release) = self.release.take() {
            release(LeaseOutcome::Done);
        }
    }
}

impl fmt::Debug for Lease {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Lease")
            .field("runner", &self.endpoint.runner_id)
            .finish()
    }
}

/// A snapshot of a pool.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PoolStats {
    /// Runners serving.
    pub runners: usize,
    /// Runners being started.
    pub booting: usize,
    /// Leases out.
    pub in_flight: usize,
    /// Callers waiting for a slot.
    pub waiting: usize,
    /// Total slots of the serving runners.
    pub capacity: usize,
}

/// A set of runners calls are leased from.
#[async_trait]
pub trait Pool: Send + Sync + 'static {
    /// The pool's name.
    fn name(&self) -> &str;

    /// A slot on the least-loaded runner, waiting (FIFO) up to the deadline.
    async fn checkout(&self, options: &CheckoutOptions) -> Result<Lease>;

    /// A snapshot of the pool.
    fn stats(&self) -> PoolStats;

    /// The timeout and retry policy calls through this pool get when neither the call nor its
    /// method sets one (see [`crate::call`]). Default: none.
    fn call_defaults(&self) -> CallDefaults {
        CallDefaults::default()
    }

    /// How many calls the pool can run at once when fully grown, if it knows (what
    /// [`Flame::map`](crate::Flame::map) keeps busy). Default: unknown.
    fn capacity_hint(&self) -> Option<usize> {
        None
    }

    /// Stops leasing, waits up to `grace` for leases out, then ends every runner.
    async fn shutdown(&self, grace: Duration) -> Result<()>;
}
