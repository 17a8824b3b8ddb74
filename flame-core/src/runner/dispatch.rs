use crate::codec::{self, InvocationRequest, InvocationResponse};
use crate::context::Context;
use crate::error::{Error, Result};
use crate::guard::run_guarded;
use crate::registry::Registry;
use crate::transport::{now_millis, RunnerStatus};
use bytes::Bytes;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

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
        }
    }

    /// Whether handler error details (e.g. panic text) go to the caller.
    pub fn with_expose_errors(mut self, expose: bool) -> Self {
        self.expose_errors = expose;
        self
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

    /// Handles a raw request body: 400 for malformed JSON, 404 for an unknown method, else 200
    /// with the response envelope.
    pub async fn dispatch_bytes(&self, body: &[u8]) -> DispatchReply {
        match serde_json::from_slice::<InvocationRequest>(body) {
            Ok(req) => self.dispatch_request(&req, CancellationToken::new()).await,
            Err(e) => DispatchReply::text(400, format!("Invalid JSON: {e}")),
        }
    }

    /// Handles a decoded request. `cancel` fires if the caller goes away.
    pub async fn dispatch_request(
        &self,
        req: &InvocationRequest,
        cancel: CancellationToken,
    ) -> DispatchReply {
        if !self.registry.contains(&req.service_id, &req.method_id) {
            return DispatchReply::text(
                404,
                format!("Unknown method {}/{}", req.service_id, req.method_id),
            );
        }
        let response = match self.invoke(req, cancel).await {
            Ok(text) => InvocationResponse::success(text),
            Err(err) => InvocationResponse::failure(&err, self.expose_errors),
        };
        DispatchReply::envelope(&response)
    }

    /// Runs the handler for `req`; returns the superjson result text.
    pub async fn invoke(&self, req: &InvocationRequest, cancel: CancellationToken) -> Result<String> {
        let entry = self.registry.lookup(&req.service_id, &req.method_id)?;
        let args = codec::decode_arg_values(&req.args)?;
        let ctx = Context::new(req.invocation_id.clone())
            .with_deadline(deadline_of(req))
            .with_idempotency_key(req.idempotency_key.clone())
            .with_trace(req.trace.clone().unwrap_or_default())
            .with_cancellation(cancel);
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        let _guard = InFlight(&self.in_flight);
        let handler = entry.erased.clone();
        run_guarded(ctx, move |ctx| handler(ctx, args))
            .await
            .map_err(|e| redact(e, self.expose_errors))
    }
}

/// The handler's deadline: `timeoutMs` from now, and never past `exp`.
fn deadline_of(req: &InvocationRequest) -> Option<Instant> {
    let now = now_millis();
    let until_exp = req.exp.saturating_sub(now);
    let ms = match req.timeout_ms {
        Some(t) => t.min(until_exp.max(1)),
        None => until_exp.max(1),
    };
    Some(Instant::now() + Duration::from_millis(ms))
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
