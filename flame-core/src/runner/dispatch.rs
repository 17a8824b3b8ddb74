use super::pipeline::{deadline_of, Guards, RunnerLimits};
use crate::codec::{self, Codec, InvocationRequest, InvocationResponse};
use crate::context::{Context, SharedState};
use crate::error::{Error, ErrorCode, Result};
use crate::guard::run_guarded;
use crate::registry::{Entry, Registry, Wire};
use crate::stream::{frame, Body, Guarded, StreamEnd};
use crate::telemetry;
use crate::transport::RunnerStatus;
use bytes::Bytes;
use futures::stream::BoxStream;
use futures::{Future, StreamExt};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

/// What the body of a [`DispatchReply`] is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplyKind {
    /// Plain text: a refusal before any handler (400, 401, 404, 413, 503).
    Text,
    /// The JSON wire's response envelope, `{"ok":true,…}` or `{"ok":false,…}`.
    Envelope,
    /// Binary codec: the result's payload.
    Ok,
    /// Binary codec: the error, as the JSON `WireError` (`{"code":…,"message":…}`).
    Error,
    /// Binary codec: a streamed result's frames (`stream::frame`).
    Stream,
}

/// A reply as a transport sends it: status, content type, what it is, and its body — in
/// memory (`body`) or, for a large or streamed result, arriving (`streamed`).
#[derive(Debug)]
pub struct DispatchReply {
    /// HTTP-style status: 200, or a refusal (400, 401, 404, 413, 503, plain text).
    pub status: u16,
    /// `application/json`, `text/plain; charset=utf-8`, or a binary codec's type.
    pub content_type: &'static str,
    /// What the body is.
    pub kind: ReplyKind,
    /// The body, when in memory (empty when `streamed` is set).
    pub body: Bytes,
    /// The body, when it is produced as it is sent (a large result, a streamed result).
    pub streamed: Option<Body>,
}

impl DispatchReply {
    /// A plain-text reply.
    pub fn text(status: u16, body: impl Into<String>) -> Self {
        DispatchReply {
            status,
            content_type: "text/plain; charset=utf-8",
            kind: ReplyKind::Text,
            body: Bytes::from(body.into()),
            streamed: None,
        }
    }

    /// A 200 reply carrying a response envelope.
    pub fn envelope(response: &InvocationResponse) -> Self {
        match serde_json::to_vec(response) {
            Ok(body) => DispatchReply::envelope_bytes(Bytes::from(body)),
            Err(e) => DispatchReply::text(500, format!("failed to encode response: {e}")),
        }
    }

    pub(crate) fn envelope_bytes(body: Bytes) -> Self {
        DispatchReply {
            status: 200,
            content_type: "application/json",
            kind: ReplyKind::Envelope,
            body,
            streamed: None,
        }
    }

    /// A 200 reply carrying a binary result payload.
    pub fn payload(body: Body) -> Self {
        let (body, streamed) = match body.as_full() {
            Some(b) => (b.clone(), None),
            None => (Bytes::new(), Some(body)),
        };
        DispatchReply {
            status: 200,
            content_type: codec::binary::CONTENT_TYPE,
            kind: ReplyKind::Ok,
            body,
            streamed,
        }
    }

    /// A 200 reply carrying a streamed result's frames.
    pub fn stream(frames: Body) -> Self {
        DispatchReply {
            status: 200,
            content_type: frame::CONTENT_TYPE,
            kind: ReplyKind::Stream,
            body: Bytes::new(),
            streamed: Some(frames),
        }
    }

    /// A 200 reply carrying an error, in `codec` (details only when `expose`; a typed
    /// application error always).
    pub fn failure(err: &Error, codec: Codec, expose: bool) -> Self {
        let response = InvocationResponse::failure(err, expose);
        match codec {
            Codec::Json => DispatchReply::envelope(&response),
            Codec::Binary => {
                let body = response
                    .error
                    .and_then(|e| serde_json::to_vec(&e).ok())
                    .unwrap_or_else(|| {
                        br#"{"code":"serialization_error","message":"cannot encode the error"}"#.to_vec()
                    });
                DispatchReply {
                    status: 200,
                    content_type: "application/json",
                    kind: ReplyKind::Error,
                    body: Bytes::from(body),
                    streamed: None,
                }
            }
        }
    }

    /// The body, wherever it is.
    pub fn into_body(self) -> Body {
        match self.streamed {
            Some(b) => b,
            None => Body::full(self.body),
        }
    }

    /// The body's length, when known.
    pub fn len(&self) -> Option<u64> {
        match &self.streamed {
            Some(b) => b.len(),
            None => Some(self.body.len() as u64),
        }
    }

    /// Whether the body is known to be empty.
    pub fn is_empty(&self) -> bool {
        self.len() == Some(0)
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

/// A streamed call in flight, for as long as its stream lives.
struct StreamInFlight(Arc<Dispatcher>);

impl Drop for StreamInFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::AcqRel);
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

    /// Whether handler error details go to the caller.
    pub fn expose_errors(&self) -> bool {
        self.expose_errors
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

    /// The request limit of `service_id`/`method_id`: its own, else `default` (the transport's,
    /// e.g. `FLAME_MAX_BODY_BYTES`).
    pub fn request_limit(&self, service_id: &str, method_id: &str, default: u64) -> u64 {
        self.registry
            .limits(service_id, method_id)
            .and_then(|l| l.request)
            .unwrap_or(default)
    }

    /// The span of one invocation, a child of the caller's trace (feature `opentelemetry`).
    fn span(&self, req: &InvocationRequest) -> tracing::Span {
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
        span
    }

    fn context(&self, req: &InvocationRequest, cancel: CancellationToken) -> Context {
        Context::new(req.invocation_id.clone())
            .with_deadline(Some(deadline_of(req)))
            .with_idempotency_key(req.idempotency_key.clone())
            .with_trace(req.trace.clone().unwrap_or_default())
            .with_attempt(req.attempt.unwrap_or(1).max(1))
            .with_state(self.state.clone())
            .with_cancellation(cancel)
    }

    /// Runs `call` for `req` inside its `flame.invoke` span, counted in flight, with metrics.
    /// `call` gets the method's registry entry (an unknown method is `NOT_FOUND`, counted too).
    async fn traced<'a, R, F, Fut>(&'a self, req: &InvocationRequest, call: F) -> Result<R>
    where
        F: FnOnce(&'a Entry) -> Fut,
        Fut: Future<Output = Result<R>>,
    {
        let entry = self.registry.lookup(&req.service_id, &req.method_id);
        let ids = entry.as_ref().ok().map(|e| e.ids);
        let span = self.span(req);
        let started = Instant::now();
        let result = async {
            self.in_flight.fetch_add(1, Ordering::AcqRel);
            let _guard = InFlight(&self.in_flight);
            let result = match entry {
                Ok(entry) => call(entry).await,
                Err(e) => Err(e),
            };
            result.map_err(|e| redact(e, self.expose_errors))
        }
        .instrument(span.clone())
        .await;
        let outcome = telemetry::outcome(&result);
        span.record("outcome", outcome);
        let (service, method) = telemetry::method_labels(ids, &req.service_id, &req.method_id);
        telemetry::invoked(service, method, outcome, started.elapsed());
        result
    }

    /// Runs the handler for `req` (JSON wire) inside a `flame.invoke` span (a child of the
    /// caller's trace, feature `opentelemetry`); returns the superjson result text.
    pub async fn invoke(&self, req: &InvocationRequest, cancel: CancellationToken) -> Result<String> {
        self.traced(req, |entry| async move {
            let args = codec::decode_arg_values(&req.args)?;
            let ctx = self.context(req, cancel);
            let handler = entry.erased.clone();
            run_guarded(ctx, move |ctx| handler(ctx, args)).await
        })
        .await
    }

    /// Runs the handler for `req` with a binary `payload` (decoded as it arrives, under the
    /// call's deadline); returns the result's payload (encoded as it is sent, when large).
    pub async fn invoke_binary(
        &self,
        req: &InvocationRequest,
        payload: Body,
        cancel: CancellationToken,
    ) -> Result<Body> {
        self.traced(req, |entry| async move {
            let Wire::Unary(handler) = &entry.wire else {
                return Err(streams_only(req));
            };
            let handler = handler.clone();
            let ctx = self.context(req, cancel);
            run_guarded(ctx, move |ctx| handler(ctx, payload)).await
        })
        .await
    }

    /// Starts the streaming handler for `req`: decodes its arguments and returns its items'
    /// frames, under the call's deadline and cancellation (dropping the stream cancels the
    /// handler), counted in flight until the stream ends.
    pub(crate) async fn invoke_stream(
        self: &Arc<Self>,
        req: &InvocationRequest,
        payload: Body,
        cancel: CancellationToken,
    ) -> Result<BoxStream<'static, Result<Bytes>>> {
        let entry: &Entry = self.registry.lookup(&req.service_id, &req.method_id)?;
        let Wire::Stream(handler) = &entry.wire else {
            return Err(Error::new(
                ErrorCode::BadRequest,
                format!(
                    "{}/{} returns one result, not a stream: call it with call",
                    req.service_id, req.method_id
                ),
            ));
        };
        let handler = handler.clone();
        let span = self.span(req);
        let started = Instant::now();
        let deadline = deadline_of(req);
        let ctx = self.context(req, cancel.clone());
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        let in_flight = StreamInFlight(self.clone());
        let opened = run_guarded(ctx, move |ctx| handler(ctx, payload))
            .instrument(span.clone())
            .await
            .map_err(|e| redact(e, self.expose_errors));
        let ids = entry.ids;
        let record = move |end: StreamEnd<'_>| {
            let outcome = end.outcome();
            span.record("outcome", outcome);
            telemetry::invoked(ids.0.into(), ids.1.into(), outcome, started.elapsed());
        };
        match opened {
            Err(e) => {
                record(StreamEnd::Failed(&e));
                Err(e)
            }
            Ok(items) => {
                let expose = self.expose_errors;
                let items = items.map(move |r| r.map_err(|e| redact(e, expose)));
                Ok(Guarded::new(items, Some(deadline), cancel)
                    .holding(in_flight)
                    .on_end(record)
                    .boxed())
            }
        }
    }
}

fn streams_only(req: &InvocationRequest) -> Error {
    Error::new(
        ErrorCode::BadRequest,
        format!(
            "{}/{} streams its results: call it with call_stream",
            req.service_id, req.method_id
        ),
    )
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
