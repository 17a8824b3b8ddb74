//! Transport layers in the style of tower: each wraps any [`Transport`] and is one itself, so
//! retry and timeout compose instead of being flags inside the client.
//!
//! ```
//! use flame_http::{HttpTransport, TransportExt};
//! use std::time::Duration;
//! // Outermost first: a 10 s default budget for calls without a deadline, then up to 3 retries.
//! let transport = HttpTransport::new().with_retry(3).with_default_timeout(Duration::from_secs(10));
//! # let _ = transport;
//! ```

use async_trait::async_trait;
use flame_core::call::{backoff, safe_to_retry};
use flame_core::{Endpoint, Error, ErrorCode, Invocation, Result, RunnerStatus, Transport};
use std::time::Duration;
use tokio::time::Instant;

/// Retries failed attempts: only errors that are retryable, only when repeating is safe (an
/// idempotency key is set, or the error proves the handler never ran), with exponential backoff
/// and jitter (core's [`backoff`]), never past the call's deadline. Every attempt gets a fresh
/// `invocationId` and signature (the inner transport builds them) and a higher
/// [`Invocation::attempt`].
#[derive(Debug, Clone)]
pub struct Retry<T> {
    inner: T,
    max_retries: u32,
}

impl<T: Transport> Retry<T> {
    /// Wraps `inner`, retrying at most `max_retries` times.
    pub fn new(inner: T, max_retries: u32) -> Self {
        Retry { inner, max_retries }
    }

    /// The wrapped transport.
    pub fn inner(&self) -> &T {
        &self.inner
    }
}

fn fits_before(deadline: Option<Instant>, delay: Duration) -> bool {
    deadline.map_or(true, |d| Instant::now() + delay < d)
}

#[async_trait]
impl<T: Transport> Transport for Retry<T> {
    async fn invoke(&self, endpoint: &Endpoint, invocation: &Invocation) -> Result<String> {
        let mut attempt = invocation.clone();
        let mut delays = backoff(self.max_retries);
        loop {
            let err = match self.inner.invoke(endpoint, &attempt).await {
                Ok(text) => return Ok(text),
                Err(e) => e,
            };
            if !safe_to_retry(&err, attempt.idempotency_key.is_some()) {
                return Err(err);
            }
            let Some(delay) = delays.next() else {
                return Err(err);
            };
            if !fits_before(attempt.deadline, delay) {
                return Err(err);
            }
            tracing::debug!(error = %err, attempt = attempt.attempt, ?delay, runner = %endpoint.runner_id, "retrying");
            tokio::time::sleep(delay).await;
            attempt.attempt += 1;
        }
    }

    async fn ping(&self, endpoint: &Endpoint) -> Result<RunnerStatus> {
        // A ping runs no handler: every retryable error may be repeated.
        let mut delays = backoff(self.max_retries);
        loop {
            let err = match self.inner.ping(endpoint).await {
                Ok(s) => return Ok(s),
                Err(e) => e,
            };
            match delays.next() {
                Some(delay) if err.is_retryable() => tokio::time::sleep(delay).await,
                _ => return Err(err),
            }
        }
    }
}

/// Gives calls without a deadline one (`timeout` from now) and enforces every deadline around
/// the inner transport, answering `TIMEOUT` when it passes.
#[derive(Debug, Clone)]
pub struct Timeout<T> {
    inner: T,
    timeout: Duration,
}

impl<T: Transport> Timeout<T> {
    /// Wraps `inner` with a default budget of `timeout`.
    pub fn new(inner: T, timeout: Duration) -> Self {
        Timeout { inner, timeout }
    }
}

#[async_trait]
impl<T: Transport> Transport for Timeout<T> {
    async fn invoke(&self, endpoint: &Endpoint, invocation: &Invocation) -> Result<String> {
        let deadline = invocation
            .deadline
            .unwrap_or_else(|| Instant::now() + self.timeout);
        let mut bounded = invocation.clone();
        bounded.deadline = Some(deadline);
        match tokio::time::timeout_at(deadline, self.inner.invoke(endpoint, &bounded)).await {
            Ok(r) => r,
            Err(_) => Err(Error::new(
                ErrorCode::Timeout,
                format!(
                    "{}/{} ran past its deadline",
                    invocation.service_id, invocation.method_id
                ),
            )),
        }
    }

    async fn ping(&self, endpoint: &Endpoint) -> Result<RunnerStatus> {
        match tokio::time::timeout(self.timeout, self.inner.ping(endpoint)).await {
            Ok(r) => r,
            Err(_) => Err(Error::new(ErrorCode::Timeout, "ping ran past its deadline")),
        }
    }
}

/// Wraps any transport in the layers of this module.
pub trait TransportExt: Transport + Sized {
    /// Wraps in [`Retry`] with at most `max_retries` retries.
    fn with_retry(self, max_retries: u32) -> Retry<Self> {
        Retry::new(self, max_retries)
    }

    /// Wraps in [`Timeout`] with a default budget of `timeout`.
    fn with_default_timeout(self, timeout: Duration) -> Timeout<Self> {
        Timeout::new(self, timeout)
    }
}

impl<T: Transport> TransportExt for T {}
