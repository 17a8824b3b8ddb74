use super::{CheckoutOptions, Lease, LeaseOutcome, Pool, PoolStats};
use crate::call::CallDefaults;
use crate::error::{Error, ErrorCode, Result};
use crate::transport::Endpoint;
use async_trait::async_trait;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Semaphore;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// A pool over fixed runner URLs (`FLAME_RUNNER_URL`): least-loaded choice, `max_concurrency`
/// per runner, FIFO waiting up to the caller's deadline.
///
/// ```
/// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
/// use flame_core::{CheckoutOptions, Endpoint, Pool, StaticPool};
/// let pool = StaticPool::new("default", vec![Endpoint::new("http://127.0.0.1:8080", "r1")], 2);
/// let a = pool.checkout(&CheckoutOptions::default()).await.unwrap();
/// let b = pool.checkout(&CheckoutOptions::default()).await.unwrap();
/// assert_eq!(pool.stats().in_flight, 2);
/// drop((a, b));
/// assert_eq!(pool.stats().in_flight, 0);
/// # });
/// ```
pub struct StaticPool {
    name: String,
    runners: Arc<Vec<Slot>>,
    max_concurrency: usize,
    permits: Arc<Semaphore>,
    waiting: Arc<AtomicUsize>,
    epoch: Instant,
    call_defaults: CallDefaults,
}

struct Slot {
    endpoint: Endpoint,
    load: AtomicUsize,
    /// Until this many ms after the pool's epoch, the runner is avoided (it just failed).
    cool_until_ms: AtomicU64,
}

/// How long a runner that failed a call is avoided while others have free slots.
const COOL_DOWN: Duration = Duration::from_secs(2);

impl StaticPool {
    /// A pool named `name` over `endpoints`, each taking `max_concurrency` calls at once.
    pub fn new(name: impl Into<String>, endpoints: Vec<Endpoint>, max_concurrency: usize) -> Self {
        let max_concurrency = max_concurrency.max(1);
        let total = endpoints
            .len()
            .saturating_mul(max_concurrency)
            .min(Semaphore::MAX_PERMITS);
        StaticPool {
            name: name.into(),
            runners: Arc::new(
                endpoints
                    .into_iter()
                    .map(|endpoint| Slot {
                        endpoint,
                        load: AtomicUsize::new(0),
                        cool_until_ms: AtomicU64::new(0),
                    })
                    .collect(),
            ),
            max_concurrency,
            permits: Arc::new(Semaphore::new(total)),
            waiting: Arc::new(AtomicUsize::new(0)),
            epoch: Instant::now(),
            call_defaults: CallDefaults::default(),
        }
    }

    /// Sets the timeout and retry policy calls through this pool get when neither the call
    /// nor its method sets one.
    pub fn with_call_defaults(mut self, defaults: CallDefaults) -> Self {
        self.call_defaults = defaults;
        self
    }

    /// Claims a slot on the least-loaded runner, avoiding runners that just failed; the caller
    /// holds a permit, so one is free.
    fn claim(&self) -> Option<usize> {
        let now = self.epoch.elapsed().as_millis() as u64;
        loop {
            let (idx, _, load) = self
                .runners
                .iter()
                .enumerate()
                .map(|(i, s)| {
                    (
                        i,
                        s.cool_until_ms.load(Ordering::Acquire) > now,
                        s.load.load(Ordering::Acquire),
                    )
                })
                .filter(|(_, _, l)| *l < self.max_concurrency)
                .min_by_key(|(_, cooling, l)| (*cooling, *l))?;
            let slot = &self.runners[idx];
            if slot
                .load
                .compare_exchange(load, load + 1, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
            {
                return Some(idx);
            }
        }
    }
}

struct Waiting(Arc<AtomicUsize>);
impl Drop for Waiting {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

#[async_trait]
impl Pool for StaticPool {
    fn name(&self) -> &str {
        &self.name
    }

    fn call_defaults(&self) -> CallDefaults {
        self.call_defaults
    }

    fn capacity_hint(&self) -> Option<usize> {
        Some(self.runners.len().saturating_mul(self.max_concurrency))
    }

    async fn checkout(&self, options: &CheckoutOptions) -> Result<Lease> {
        if self.runners.is_empty() {
            return Err(Error::new(
                ErrorCode::NoRunner,
                format!("pool `{}` has no runner URLs", self.name),
            ));
        }
        self.waiting.fetch_add(1, Ordering::AcqRel);
        let waiting = Waiting(self.waiting.clone());
        let acquire = self.permits.clone().acquire_owned();
        let permit = match options.deadline {
            Some(d) => tokio::time::timeout_at(d, acquire).await.map_err(|_| {
                Error::new(
                    ErrorCode::Overloaded,
                    format!(
                        "pool `{}`: every slot stayed busy until the call's deadline",
                        self.name
                    ),
                )
            })?,
            None => acquire.await,
        }
        .map_err(|_| Error::new(ErrorCode::Shutdown, format!("pool `{}` is shut down", self.name)))?;
        drop(waiting);
        let idx = self.claim().ok_or_else(|| {
            Error::new(
                ErrorCode::Overloaded,
                format!("pool `{}` has no free slot", self.name),
            )
        })?;
        let runners = self.runners.clone();
        let epoch = self.epoch;
        Ok(Lease::new(
            runners[idx].endpoint.clone(),
            CancellationToken::new(),
            move |outcome| {
                let slot = &runners[idx];
                if outcome == LeaseOutcome::RunnerFailed {
                    let until = (epoch.elapsed() + COOL_DOWN).as_millis() as u64;
                    slot.cool_until_ms.store(until, Ordering::Release);
                }
                slot.load.fetch_sub(1, Ordering::AcqRel);
                drop(permit);
            },
        ))
    }

    fn stats(&self) -> PoolStats {
        let in_flight = self.runners.iter().map(|s| s.load.load(Ordering::Acquire)).sum();
        PoolStats {
            runners: self.runners.len(),
            booting: 0,
            in_flight,
            waiting: self.waiting.load(Ordering::Acquire),
            capacity: self.runners.len() * self.max_concurrency,
        }
    }

    async fn shutdown(&self, grace: Duration) -> Result<()> {
        self.permits.close();
        let until = Instant::now() + grace;
        while self.stats().in_flight > 0 && Instant::now() < until {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pool(n: usize, c: usize) -> StaticPool {
        StaticPool::new(
            "p",
            (0..n)
                .map(|i| Endpoint::new(format!("mem://r{i}"), format!("r{i}")))
                .collect(),
            c,
        )
    }

    #[tokio::test]
    async fn spreads_to_least_loaded() {
        let p = pool(3, 2);
        let opts = CheckoutOptions::default();
        let leases: Vec<_> = futures::future::join_all((0..3).map(|_| p.checkout(&opts))).await;
        let mut ids: Vec<_> = leases
            .iter()
            .map(|l| l.as_ref().unwrap().endpoint().runner_id.clone())
            .collect();
        ids.sort();
        assert_eq!(ids, vec!["r0", "r1", "r2"]);
    }

    #[tokio::test(start_paused = true)]
    async fn full_pool_waits_until_deadline_then_overloaded() {
        let p = pool(1, 1);
        let _held = p.checkout(&CheckoutOptions::default()).await.unwrap();
        let err = p
            .checkout(&CheckoutOptions {
                deadline: Some(Instant::now() + Duration::from_millis(50)),
            })
            .await
            .unwrap_err();
        assert_eq!(err.code(), ErrorCode::Overloaded);
        assert_eq!(p.stats().waiting, 0, "a caller that gave up leaves no trace");
    }

    #[tokio::test]
    async fn waiter_gets_freed_slot() {
        let p = Arc::new(pool(1, 1));
        let held = p.checkout(&CheckoutOptions::default()).await.unwrap();
        let p2 = p.clone();
        let waiter = tokio::spawn(async move {
            p2.checkout(&CheckoutOptions::default())
                .await
                .map(|l| l.endpoint().runner_id.clone())
        });
        tokio::task::yield_now().await;
        drop(held);
        assert_eq!(waiter.await.unwrap().unwrap(), "r0");
    }

    #[tokio::test]
    async fn empty_and_shut_down_pools_fail_typed() {
        assert_eq!(
            pool(0, 1)
                .checkout(&CheckoutOptions::default())
                .await
                .unwrap_err()
                .code(),
            ErrorCode::NoRunner
        );
        let p = pool(1, 1);
        p.shutdown(Duration::from_millis(10)).await.unwrap();
        assert_eq!(
            p.checkout(&CheckoutOptions::default()).await.unwrap_err().code(),
            ErrorCode::Shutdown
        );
    }
}
