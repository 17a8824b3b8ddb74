use super::pipeline::{deadline_of, Guards, RunnerLimits};
use crate::codec::{self, InvocationRequest, InvocationResponse};
use crate::context::{Context, SharedState};
use crate::error::{Error, Result};
use crate::guard::run_guarded;
use crate::registry::Registry;
use crate::telemetry;
use crate::transport::RunnerStatus;
use bytes::Bytes;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

/// A reply as a transport sends it: status, content type, body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DispatchReply {
    /// HTTP-style status: 200 (JSON envelope), 400, 404 (plain text).
    pub status: u16,
    /// `application/json` or `text/plain; charset=utf-8`.
    pub content_type: &'static str,
    /// The body.
    pub body: Bytes,
}

impl DispatchReply {
    /// A plain-text reply.
    pub fn text(status: u16, body: impl Into<String>) -> Self {
        DispatchReply {
            status,
            content_type: "text/plain; charset=utf-8",
            body: Bytes::from(body.into()),
        }
    }

    /// A 200 reply carrying a response envelope.
    pub fn envelope(response: &InvocationResponse) -> Self {
        match serde_json::to_vec(response) {
            Ok(body) => DispatchReply {
                status: 200,
                content_type: "application/json",
                body: Bytes::from(body),
            },
            Err(e) => DispatchReply::text(500, format!("failed to encode response: {e}")),
        }
    }
}

/// Decodes invocations, runs their handlers and encodes the replies: the runner-side core that
/// every transport serves.
pub struct Dispatcher {
    registry: Arc<Registry>,
    runner_id: String,
    expose_errors: bool,
    in_flight: AtomicUsize,
    started: Instant,
    last_contact_ms: AtomicU64,
    draining: AtomicBool,
    has_parent: bool,
    pub(super) guards: Guards,
    state: Option<SharedState>,
}

impl std::fmt::Debug for Dispatcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Dispatcher")
            .field("runner_id", &self.runner_id)
            .field("in_flight", &self.in_flight())
            .finish()
    }
}

struct InFlight<'a>(&'a AtomicUsize);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Dispatcher {
    /// A dispatcher over `registry`, reporting itself as `runner_id`.
    pub fn new(registry: Registry, runner_id: impl Into<String>) -> Self {
        Dispatcher::from_shared(Arc::new(registry), runner_id)
    }

    /// A dispatcher over a shared registry.
    pub fn from_shared(registry: Arc<Registry>, runner_id: impl Into<String>) -> Self {
        Dispatcher {
            registry,
            runner_id: runner_id.into(),
            expose_errors: false,
            in_flight: AtomicUsize::new(0),
            started: Instant::now(),
            last_contact_ms: AtomicU64::new(0),
            draining: AtomicBool::new(false),
            has_parent: false,
            guards: Guards::new(RunnerLimits::default()),
            state: None,
        }
    }

    /// Whether handler error details (e.g. panic text) go to the caller.
    pub fn with_expose_errors(mut self, expose: bool) -> Self {
        self.expose_errors = expose;
        self
    }

    /// Sets the runner state every handler's [`Context::state`] reaches.
    pub fn with_state(mut self, state: Option<SharedState>) -> Self {
        self.state = state;
        self
    }

    /// Sets the bounds of the pipeline's checks (window skew, replay and idempotency caches).
    pub fn with_limits(mut self, limits: RunnerLimits) -> Self {
        self.guards = Guards::new(limits);
        self
    }

    /// The bounds of the pipeline's checks.
    pub fn limits(&self) -> &RunnerLimits {
        &self.guards.limits
    }

    /// Marks this dispatcher as serving a runner a parent started (`FLAME_PARENT_ID`): its
    /// health answers then say how long the parent has been silent.
    pub fn with_parent(mut self, has_parent: bool) -> Self {
        self.has_parent = has_parent;
        self
    }

    /// The runner id.
    pub fn runner_id(&self) -> &str {
        &self.runner_id
    }

    /// The registry served.
    pub fn registry(&self) -> &Arc<Registry> {
        &self.registry
    }

    /// Calls currently running.
    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Acquire)
    }

    /// Marks the runner as draining (reported by [`Dispatcher::status`]).
    pub fn set_draining(&self) {
        self.draining.store(true, Ordering::Release);
    }

    /// Whether the runner is draining.
    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Acquire)
    }

    /// Records authenticated contact from the parent (resets the failsafe watchdog).
    pub fn note_parent_contact(&self) {
        self.last_contact_ms
            .store(self.started.elapsed().as_millis() as u64, Ordering::Release);
    }

    /// Time since the last authenticated parent contact (or since start, if none yet).
    pub fn since_parent_contact(&self) -> Duration {
        let last = Duration::from_millis(self.last_contact_ms.load(Ordering::Acquire));
        self.started.elapsed().saturating_sub(last)
    }

    /// The health report.
    pub fn status(&self) -> RunnerStatus {
        RunnerStatus {
            ok: true,
            runner_id: Some(self.runner_id.clone()),
            in_flight: Some(self.in_flight()),
            uptime_ms: Some(self.started.elapsed().as_millis() as u64),
            draining: self.is_draining(),
            parent_silent_ms: self.parent_silent_ms(),
        }
    }

    /// The health answer for unauthenticated callers: alive, and how long the parent has been
    /// silent (nothing else: no id, no load).
    pub fn liveness(&self) -> RunnerStatus {
        RunnerStatus {
            ok: true,
            parent_silent_ms: self.parent_silent_ms(),
            ..RunnerStatus::default()
        }
    }

    fn parent_silent_ms(&self) -> Option<u64> {
        self.has_parent
            .then(|| self.since_parent_contact().as_millis() as u64)
    }

    /// Handles a raw request body (already authenticated by the transport): 400 for malformed
    /// JSON, else [`Dispatcher::handle`].
    pub async fn dispatch_bytes(self: &Arc<Self>, body: &[u8]) -> DispatchReply {
        match serde_json::from_slice::<InvocationRequest>(body) {
            Ok(req) => self.handle(req).await,
            Err(_) => DispatchReply::text(400, "Invalid JSON"),
        }
    }

    /// Runs the handler for `req` inside a `flame.invoke` span (a child of the caller's trace,
    /// feature `opentelemetry`); returns the superjson result text.
    pub async fn invoke(&self, req: &InvocationRequest, cancel: CancellationToken) -> Result<String> {
        let span = tracing::info_span!(
            target: "flame",
            "flame.invoke",
            service = %req.service_id,
            method = %req.method_id,
            invocation_id = %req.invocation_id,
            attempt = req.attempt.unwrap_or(1),
            runner = %self.runner_id,
            outcome = tracing::field::Empty,
        );
        if let Some(trace) = &req.trace {
            telemetry::extract(&span, trace);
        }
        let started = Instant::now();
        let result = self.run(req, cancel).instrument(span.clone()).await;
        let outcome = telemetry::outcome(&result);
        span.record("outcome", outcome);
        telemetry::invoked(&req.service_id, &req.method_id, outcome, started.elapsed());
        result
    }

    async fn run(&self, req: &InvocationRequest, cancel: CancellationToken) -> Result<String> {
        let entry = self.registry.lookup(&req.service_id, &req.method_id)?;
        let args = codec::decode_arg_values(&req.args)?;
        let ctx = Context::new(req.invocation_id.clone())
            .with_deadline(Some(deadline_of(req)))
            .with_idempotency_key(req.idempotency_key.clone())
            .with_trace(req.trace.clone().unwrap_or_default())
            .with_attempt(req.attempt.unwrap_or(1).max(1))
            .with_state(self.state.clone())
            .with_cancellation(cancel);
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        let _guard = InFlight(&self.in_flight);
        let handler = entry.erased.clone();
        run_guarded(ctx, move |ctx| handler(ctx, args))
            .await
            .map_err(|e| redact(e, self.expose_errors))
    }
}

fn redact(err: Error, expose: bool) -> Error {
    if expose || err.details().is_none() {
        return err;
    }
    // Details (e.g. panic text) stay on the runner; the log has them.
    tracing::debug!(error = %err, details = ?err.details(), "handler error details not exposed");
    let mut out = Error::new(err.code(), err.message());
    if let Some(r) = err.retryable_flag() {
        out = out.with_retryable(r);
    }
    if let Some(app) = err.app_value() {
        out = out.with_app_value(app.clone());
    }
    out
}
