//! The one owner of a call's lifecycle: [`Plan`] resolves pool, timeout and retry policy once;
//! [`attempt_remote`] runs the attempts through a pool (the only retry loop and the only
//! parent-side deadline).

use super::options::CallOptions;
use super::retry::{safe_to_retry, BudgetState, RetryPolicy};
use super::CallDefaults;
use crate::config::Config;
use crate::error::{Error, ErrorCode, Result};
use crate::pool::{CheckoutOptions, Lease, LeaseOutcome, Pool};
use crate::telemetry;
use crate::transport::{Invocation, Reply, Transport};
use futures::future::BoxFuture;
use serde::de::DeserializeOwned;
use std::time::Duration;
use tokio::time::Instant;
use tracing::Instrument;

/// A call's policy, resolved once when it starts (precedence: see [`crate::call`]).
#[derive(Debug, Clone)]
pub(crate) struct Plan {
    /// The pool the call goes through.
    pub pool: String,
    /// The call's timeout.
    pub timeout: Duration,
    /// `start + timeout`: the deadline of every attempt.
    pub deadline: Instant,
    /// The retry policy.
    pub retry: RetryPolicy,
}

impl Plan {
    /// Resolves the plan of a call of a method with `method_pool`, `method_timeout` and
    /// `method_retry`, given the defaults of pools by name.
    pub fn resolve(
        options: &CallOptions,
        method_pool: Option<&str>,
        method_timeout: Option<Duration>,
        method_retry: Option<RetryPolicy>,
        pool_defaults: impl Fn(&str) -> CallDefaults,
        config: &Config,
    ) -> Plan {
        let pool = options
            .pool
            .as_deref()
            .or(method_pool)
            .unwrap_or(&config.default_pool)
            .to_owned();
        let defaults = pool_defaults(&pool);
        let timeout = options
            .timeout
            .or(method_timeout)
            .or(defaults.timeout)
            .unwrap_or(config.request_timeout);
        let retry = options
            .retry
            .or(method_retry)
            .or(defaults.retry)
            .unwrap_or(config.retry);
        Plan {
            pool,
            timeout,
            deadline: Instant::now() + timeout,
            retry,
        }
    }
}

/// How a call reads its reply, inside the attempt (under its deadline, holding its lease): it
/// gets the reply and the lease; one that hands the reply out before it is read whole (a
/// streamed result) takes the lease along, so the slot stays taken until the stream ends.
pub(crate) trait ReadReply<T>:
    Fn(Reply, &mut Option<Lease>) -> BoxFuture<'static, Result<T>> + Sync
{
}

impl<T, F> ReadReply<T> for F where F: Fn(Reply, &mut Option<Lease>) -> BoxFuture<'static, Result<T>> + Sync {}

/// The [`ReadReply`] of a call with one result: decode it (a large one as it arrives).
pub(crate) fn decode<T: DeserializeOwned + Send + 'static>(
    reply: Reply,
    _lease: &mut Option<Lease>,
) -> BoxFuture<'static, Result<T>> {
    Box::pin(reply.decode::<T>())
}

/// Runs `invocation` through `pool` under `plan`: attempts until one succeeds, the error is not
/// safe to retry, the policy or the budget says stop, or the next attempt would start past the
/// deadline. Returns what `read` made of the reply.
pub(crate) async fn attempt_remote<T>(
    pool: &dyn Pool,
    transport: &dyn Transport,
    budget: &BudgetState,
    plan: &Plan,
    mut invocation: Invocation,
    read: &dyn ReadReply<T>,
) -> Result<T> {
    if let Some(b) = plan.retry.budget() {
        budget.deposit(&b);
    }
    let mut delays = plan.retry.delays();
    loop {
        let span = tracing::info_span!(
            target: "flame",
            "flame.attempt",
            attempt = invocation.attempt,
            runner = tracing::field::Empty,
            outcome = tracing::field::Empty,
        );
        tracing::Span::current().record("attempts", invocation.attempt);
        let result = attempt(pool, transport, &invocation, plan, &span, read)
            .instrument(span.clone())
            .await;
        span.record("outcome", telemetry::outcome(&result));
        let err = match result {
            Ok(text) => return Ok(text),
            Err(e) => e,
        };
        if !safe_to_retry(&err, invocation.idempotency_key.is_some()) {
            return Err(err);
        }
        let Some(delay) = delays.next() else {
            return Err(err);
        };
        if Instant::now() + delay >= plan.deadline {
            return Err(err);
        }
        if let Some(b) = plan.retry.budget() {
            if !budget.withdraw(&b) {
                tracing::debug!(target: "flame::call", pool = %plan.pool, error = %err, "retry budget spent: not retrying");
                return Err(err);
            }
        }
        tracing::debug!(target: "flame::call", error = %err, attempt = invocation.attempt, ?delay, "retrying");
        telemetry::retried(&invocation.service_id, &invocation.method_id, &plan.pool);
        tokio::time::sleep(delay).await;
        invocation.attempt += 1;
    }
}

/// One attempt: lease a slot, invoke, read the reply, give the slot back with how it went.
async fn attempt<T>(
    pool: &dyn Pool,
    transport: &dyn Transport,
    invocation: &Invocation,
    plan: &Plan,
    span: &tracing::Span,
    read: &dyn ReadReply<T>,
) -> Result<T> {
    let waiting = Instant::now();
    let lease = pool
        .checkout(&CheckoutOptions {
            deadline: Some(plan.deadline),
        })
        .await?;
    telemetry::queue_wait(&plan.pool, waiting.elapsed());
    span.record("runner", lease.endpoint().runner_id.as_str());
    // The runner's span becomes a child of this attempt's (feature `opentelemetry`).
    let mut trace = invocation.trace.clone();
    telemetry::inject(span, &mut trace);
    // The caller waited for a runner to boot: its timeout covers the call, not the boot.
    let deadline = if lease.fresh_runner() {
        plan.deadline.max(Instant::now() + plan.timeout)
    } else {
        plan.deadline
    };
    // Copy the invocation only when this attempt changes it.
    let changed;
    let invocation = if trace != invocation.trace || deadline != plan.deadline {
        let mut inv = invocation.clone();
        inv.trace = trace;
        inv.deadline = Some(deadline);
        changed = inv;
        &changed
    } else {
        invocation
    };
    let lost = lease.lost().clone();
    let runner = lease.endpoint().runner_id.clone();
    let mut held = Some(lease);
    let result = tokio::select! {
        r = async {
            let Some(lease) = held.as_ref() else {
                return Err(Error::transport("the attempt's lease is gone"));
            };
            let reply = transport.invoke(lease.endpoint(), invocation).await?;
            read(reply, &mut held).await
        } => r,
        _ = lost.cancelled() => Err(Error::transport(format!(
            "runner {runner} was lost while the call was in flight"
        )).with_retryable(true)),
        _ = tokio::time::sleep_until(deadline) => Err(Error::new(ErrorCode::Timeout, "call ran past its deadline")),
    };
    let outcome = match &result {
        Err(e) if matches!(e.code(), ErrorCode::Transport) => LeaseOutcome::RunnerFailed,
        _ => LeaseOutcome::Done,
    };
    // A streamed result took the lease along: it ends with the stream.
    if let Some(lease) = held {
        lease.finish(outcome);
    }
    result
}
