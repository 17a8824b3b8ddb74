//! Starting one runner: the spawn-depth check, core's readiness probe, and what a success or a failure does to the pool (breaker included).

use super::events::PoolEvent;
use super::state::*;
use crate::backend::readiness::start_runner;
use crate::error::{Error, ErrorCode};
use crate::spawn_guard::{self, MAX_NESTING_DEPTH};
use crate::telemetry;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

impl Shared {
    pub(super) async fn boot(self: Arc<Self>) {
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
        telemetry::spawned(&self.name);
        let started = Instant::now();
        let boot_timeout = self.config.boot_timeout;
        let result = match depth {
            Err(refused) => Err(refused),
            Ok(_) => match tokio::time::timeout(
                boot_timeout + BOOT_SLACK,
                start_runner(&*self.backend, request, &*self.template.transport),
            )
            .await
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
                telemetry::booted(&self.name, started.elapsed(), true);
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
                telemetry::booted(&self.name, started.elapsed(), false);
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
}

fn spawn_timeout(runner_id: &str, boot_timeout: Duration) -> Error {
    Error::new(
        ErrorCode::SpawnTimeout,
        format!("runner {runner_id} did not become healthy within the boot timeout of {boot_timeout:?}"),
    )
}
