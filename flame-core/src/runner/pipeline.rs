//! The runner's one pipeline, shared by every transport (HTTP, in-memory, …): what happens to
//! an authenticated, decoded envelope before and around its handler.
//!
//! A transport does what only it can — its in-flight cap, body limit, signature over the raw
//! bytes, decoding — and hands the envelope to [`Dispatcher::handle`], which checks, in order:
//! 1. the `iat`/`exp` window (401 `Request expired`), with [`RunnerLimits::max_skew`];
//! 2. replays of an `invocationId` inside its window (401 `Replayed request`; 503 when the
//!    bounded cache is full — fail closed);
//! 3. then counts as parent contact (feeds the failsafe);
//! 4. the method (404 `Not found`);
//! 5. the idempotency key: a key this runner already ran returns the first reply; a duplicate
//!    arriving while the first run is in flight waits for it; the first run is detached from its
//!    caller (a retry after a broken connection joins it);
//! 6. the handler, under its deadline and cancellation — or, for a cast (`"cast": true`), an
//!    acknowledgement at once while the handler (through the idempotency cache) runs on its
//!    own; a drain waits for it.

use super::idempotency::{Begin, IdempotencyCache};
use super::replay::{ReplayCache, ReplayCheck};
use super::{DispatchReply, Dispatcher};
use crate::codec::{InvocationRequest, InvocationResponse};
use crate::error::{Error, ErrorCode, Result};
use crate::transport::now_millis;
use bytes::Bytes;
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Bounds of the runner pipeline's checks.
///
/// ```
/// use flame_core::runner::RunnerLimits;
/// let limits = RunnerLimits::default();
/// assert_eq!(limits.max_skew.as_secs(), 60);
/// assert_eq!(limits.replay_capacity, 1_000_000);
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct RunnerLimits {
    /// Clock skew accepted on `iat`/`exp`. Default 60 s (the reference's `maxSkewMs`).
    pub max_skew: Duration,
    /// Invocation ids remembered for replay rejection. Default 1 000 000.
    pub replay_capacity: usize,
    /// Idempotency keys remembered. Default 10 000.
    pub idempotency_capacity: usize,
    /// How long a finished idempotent call's reply is kept. Default 10 minutes.
    pub idempotency_ttl: Duration,
}

impl Default for RunnerLimits {
    fn default() -> Self {
        RunnerLimits {
            max_skew: Duration::from_secs(60),
            replay_capacity: 1_000_000,
            idempotency_capacity: 10_000,
            idempotency_ttl: Duration::from_secs(600),
        }
    }
}

impl RunnerLimits {
    /// Sets `max_skew`.
    pub fn max_skew(mut self, skew: Duration) -> Self {
        self.max_skew = skew;
        self
    }
    /// Sets `replay_capacity`.
    pub fn replay_capacity(mut self, n: usize) -> Self {
        self.replay_capacity = n;
        self
    }
    /// Sets `idempotency_capacity`.
    pub fn idempotency_capacity(mut self, n: usize) -> Self {
        self.idempotency_capacity = n;
        self
    }
    /// Sets `idempotency_ttl`.
    pub fn idempotency_ttl(mut self, ttl: Duration) -> Self {
        self.idempotency_ttl = ttl;
        self
    }
}

/// The pipeline's state inside a [`Dispatcher`].
pub(super) struct Guards {
    pub(super) limits: RunnerLimits,
    replay: ReplayCache,
    idempotency: IdempotencyCache,
    detached: TaskTracker,
    hard_stop: CancellationToken,
}

impl Guards {
    pub(super) fn new(limits: RunnerLimits) -> Self {
        Guards {
            replay: ReplayCache::new(limits.replay_capacity),
            idempotency: IdempotencyCache::new(limits.idempotency_capacity, limits.idempotency_ttl),
            detached: TaskTracker::new(),
            hard_stop: CancellationToken::new(),
            limits,
        }
    }
}

/// Whether `iat`/`exp` (ms since epoch) are acceptable at `now`: `iat` not more than `skew` in
/// the future, `exp` not more than `skew` in the past, and `exp > iat` (the reference's
/// `validateWindow`).
pub fn window_ok(iat: u64, exp: u64, now: u64, skew: Duration) -> bool {
    let skew = skew.as_millis() as u64;
    iat <= now.saturating_add(skew) && exp >= now.saturating_sub(skew) && exp > iat
}

impl Dispatcher {
    /// Runs an authenticated, decoded envelope through the pipeline (see the
    /// [module docs](self)). If the caller goes away (this future is dropped), the handler's
    /// cancellation fires — except for an idempotent call's first run, which finishes for the
    /// retry that will join it. Replies are 200 with the response envelope, or a plain-text
    /// 401/404/503.
    pub async fn handle(self: &Arc<Self>, request: InvocationRequest) -> DispatchReply {
        let guards = &self.guards;
        let now = now_millis();
        let skew = guards.limits.max_skew;
        if !window_ok(request.iat, request.exp, now, skew) {
            return DispatchReply::text(401, "Request expired");
        }
        let window_end = request.exp.saturating_add(skew.as_millis() as u64);
        match guards
            .replay
            .check_and_insert(&request.invocation_id, window_end, now)
        {
            ReplayCheck::Fresh => {}
            ReplayCheck::Replayed => return DispatchReply::text(401, "Replayed request"),
            ReplayCheck::Full => return DispatchReply::text(503, "Overloaded"),
        }
        // Authenticated and fresh: the parent is alive.
        self.note_parent_contact();
        if !self.registry().contains(&request.service_id, &request.method_id) {
            return DispatchReply::text(404, "Not found");
        }
        if request.cast == Some(true) {
            self.accept_cast(request);
            return DispatchReply::envelope(&InvocationResponse::success("{\"json\":null}".to_owned()));
        }
        let cancel = self.call_token();
        let body = match request.idempotency_key.clone() {
            None => self.run_attached(&request, cancel).await.0,
            Some(key) => self.run_idempotent(request, &key, cancel).await,
        };
        DispatchReply {
            status: 200,
            content_type: "application/json",
            body,
        }
    }

    /// Runs an accepted cast on its own: through the idempotency cache when it has a key (a
    /// redelivered cast runs once), its outcome logged (the caller is not waiting).
    fn accept_cast(self: &Arc<Self>, request: InvocationRequest) {
        let this = self.clone();
        self.guards.detached.spawn(async move {
            let what = format!("{}/{}", request.service_id, request.method_id);
            let body = match request.idempotency_key.clone() {
                Some(key) => this.run_idempotent(request, &key, this.call_token()).await,
                None => {
                    let cancel = this.call_token();
                    this.run_attached(&request, cancel).await.0
                }
            };
            match serde_json::from_slice::<InvocationResponse>(&body) {
                Ok(reply) if reply.ok => {}
                Ok(reply) => {
                    let error = reply.error.map(|e| format!("{}: {}", e.code, e.message)).unwrap_or_default();
                    tracing::warn!(target: "flame::runner", method = %what, %error, "a cast's handler failed");
                }
                Err(e) => tracing::warn!(target: "flame::runner", method = %what, error = %e, "a cast's reply could not be read"),
            }
        });
    }

    /// A token for one call: it fires when the runner stops hard ([`Dispatcher::stop_all`]).
    pub fn call_token(&self) -> CancellationToken {
        self.guards.hard_stop.child_token()
    }

    /// Waits for idempotent runs detached from their callers (a drain waits for them too).
    pub async fn wait_detached(&self) {
        self.guards.detached.close();
        self.guards.detached.wait().await;
    }

    /// Cancels every call still running (the end of a drain's grace time).
    pub fn stop_all(&self) {
        self.guards.hard_stop.cancel();
    }

    async fn run_attached(&self, request: &InvocationRequest, cancel: CancellationToken) -> (Bytes, bool) {
        // Fires only if the caller goes away mid-call (this future is dropped), not after the
        // handler finished.
        let on_drop = cancel.clone().drop_guard();
        let result = self.invoke(request, cancel).await;
        on_drop.disarm();
        self.encode(result)
    }

    /// Runs a call with an idempotency key at most once per key: the first run is detached
    /// from its caller (a retry after a broken connection joins it), duplicates wait for it.
    async fn run_idempotent(
        self: &Arc<Self>,
        request: InvocationRequest,
        key: &str,
        cancel: CancellationToken,
    ) -> Bytes {
        let deadline = deadline_of(&request);
        let request = Arc::new(request);
        loop {
            match self
                .guards
                .idempotency
                .begin(&request.service_id, &request.method_id, key)
            {
                Begin::Done(reply) => return reply,
                Begin::Uncached => return self.run_attached(&request, cancel).await.0,
                Begin::Wait(mut waiter) => {
                    match tokio::time::timeout_at(deadline, waiter.result()).await {
                        Ok(Some(reply)) => return reply,
                        Ok(None) => continue,
                        Err(_) => return self
                            .encode(Err(Error::new(
                                ErrorCode::Timeout,
                                "the first run of this idempotency key did not finish before the deadline",
                            )))
                            .0,
                    }
                }
                Begin::Run(recorder) => {
                    let this = self.clone();
                    let req = request.clone();
                    let run = self.guards.detached.spawn(async move {
                        let cancel = this.call_token();
                        let (reply, keep) = this.encode(this.invoke(&req, cancel).await);
                        recorder.finish(reply.clone(), keep);
                        reply
                    });
                    return match run.await {
                        Ok(reply) => reply,
                        Err(e) => {
                            self.encode(Err(Error::handler(format!("handler task failed: {e}"))))
                                .0
                        }
                    };
                }
            }
        }
    }

    /// The reply envelope and whether it is a final outcome (success or a non-retryable error).
    fn encode(&self, result: Result<String>) -> (Bytes, bool) {
        let (response, keep) = match result {
            Ok(text) => (InvocationResponse::success(text), true),
            // `invoke` already kept undisclosed details on the runner.
            Err(err) => (InvocationResponse::failure(&err, true), !err.is_retryable()),
        };
        match serde_json::to_vec(&response) {
            Ok(v) => (Bytes::from(v), keep),
            Err(e) => {
                let fallback = InvocationResponse::failure(
                    &Error::serialization(format!("cannot encode the reply: {e}")),
                    false,
                );
                (
                    Bytes::from(serde_json::to_vec(&fallback).unwrap_or_default()),
                    false,
                )
            }
        }
    }
}

/// When the request's own deadline ends: `timeoutMs` from now, and never past `exp`.
pub(super) fn deadline_of(req: &InvocationRequest) -> Instant {
    let until_exp = req.exp.saturating_sub(now_millis()).max(1);
    let ms = req.timeout_ms.map_or(until_exp, |t| t.min(until_exp));
    Instant::now() + Duration::from_millis(ms)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn window_rules() {
        let skew = Duration::from_secs(60);
        let now = 1_000_000_000;
        assert!(window_ok(now, now + 1, now, skew));
        assert!(!window_ok(now + 60_001, now + 70_000, now, skew));
        assert!(!window_ok(now - 200_000, now - 60_001, now, skew));
        assert!(!window_ok(now, now, now, skew));
        assert!(window_ok(now - 100_000, now - 59_000, now, skew));
    }
}
