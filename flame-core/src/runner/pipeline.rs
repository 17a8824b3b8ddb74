//! The runner's one pipeline, shared by every transport (HTTP, in-memory, …): what happens to
//! an authenticated, decoded envelope before and around its handler.
//!
//! A transport does what only it can — its in-flight cap, body limits, the signature, decoding
//! the envelope — and hands it to [`Dispatcher::handle`] (JSON wire: `args` inside) or
//! [`Dispatcher::handle_binary`] (binary codec: the payload beside it, possibly still
//! arriving: nothing here reads it before the checks), which checks, in order:
//! 1. the `iat`/`exp` window (401 `Request expired`), with [`RunnerLimits::max_skew`];
//! 2. replays: with a `seq` (flame-rs parents), the sender's sliding window (401 `Replayed
//!    request`; a number below the window 503, retryable: it never ran); without one (the
//!    reference), the `invocationId` cache (401; 503 when the bounded cache is full — fail
//!    closed);
//! 3. then counts as parent contact (feeds the failsafe);
//! 4. the method (404 `Not found`), and that the call's shape matches it (a streamed call of a
//!    streaming method and only of one);
//! 5. a streamed call opens its stream here (no idempotency cache: a retry runs it again);
//! 6. the idempotency key: a key this runner already ran returns the first reply; a duplicate
//!    arriving while the first run is in flight waits for it; the first run is detached from its
//!    caller (a retry after a broken connection joins it);
//! 7. the handler, under its deadline and cancellation — or, for a cast (`"cast": true`), an
//!    acknowledgement once its arguments are read while the handler (through the idempotency
//!    cache) runs on its own; a drain waits for it.

use super::dispatch::ReplyKind;
use super::idempotency::{Begin, IdempotencyCache};
use super::replay::{parse_seq, ReplayCache, ReplayCheck, SequenceWindows};
use super::{DispatchReply, Dispatcher};
use crate::codec::{Codec, InvocationRequest, InvocationResponse};
use crate::error::{Error, ErrorCode, Result};
use crate::stream::{frame, Body};
use crate::transport::now_millis;
use bytes::{Bytes, BytesMut};
use futures::StreamExt;
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
/// assert_eq!(limits.senders, 1024);
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct RunnerLimits {
    /// Clock skew accepted on `iat`/`exp`. Default 60 s (the reference's `maxSkewMs`).
    pub max_skew: Duration,
    /// Invocation ids remembered for replay rejection of requests without a `seq` (the
    /// reference's). Default 1 000 000.
    pub replay_capacity: usize,
    /// Senders (parent transports) whose sequence windows are kept, 1 KiB each, for requests
    /// with a `seq`. Default 1024.
    pub senders: usize,
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
            senders: 1024,
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
    /// Sets `senders`.
    pub fn senders(mut self, n: usize) -> Self {
        self.senders = n;
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
    windows: SequenceWindows,
    idempotency: IdempotencyCache<Cached>,
    detached: TaskTracker,
    hard_stop: CancellationToken,
}

impl Guards {
    pub(super) fn new(limits: RunnerLimits) -> Self {
        Guards {
            replay: ReplayCache::new(limits.replay_capacity),
            windows: SequenceWindows::new(limits.senders),
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

/// A reply the idempotency cache remembers.
#[derive(Clone)]
pub(super) struct Cached {
    status: u16,
    content_type: &'static str,
    kind: ReplyKind,
    body: Bytes,
}

impl Cached {
    /// A reply to remember: a streamed body is read whole first.
    async fn of(reply: DispatchReply) -> Cached {
        let (status, content_type, kind) = (reply.status, reply.content_type, reply.kind);
        match reply.streamed {
            None => Cached {
                status,
                content_type,
                kind,
                body: reply.body,
            },
            Some(body) => match body.collect(u64::MAX).await {
                Ok(body) => Cached {
                    status,
                    content_type,
                    kind,
                    body,
                },
                Err(e) => Cached::of_error(&e, Codec::Binary),
            },
        }
    }

    fn of_error(err: &Error, codec: Codec) -> Cached {
        let r = DispatchReply::failure(err, codec, true);
        Cached {
            status: r.status,
            content_type: r.content_type,
            kind: r.kind,
            body: r.body,
        }
    }

    fn reply(self) -> DispatchReply {
        DispatchReply {
            status: self.status,
            content_type: self.content_type,
            kind: self.kind,
            body: self.body,
            streamed: None,
        }
    }
}

/// What came with an envelope.
enum Payload {
    /// The JSON wire: `args` inside the envelope.
    Json,
    /// The binary codec: the payload beside it.
    Binary(Body),
}

impl Payload {
    fn codec(&self) -> Codec {
        match self {
            Payload::Json => Codec::Json,
            Payload::Binary(_) => Codec::Binary,
        }
    }
}

impl Dispatcher {
    /// Runs an authenticated, decoded envelope of the JSON wire through the pipeline (see the
    /// [module docs](self)). If the caller goes away (this future is dropped), the handler's
    /// cancellation fires — except for an idempotent call's first run, which finishes for the
    /// retry that will join it. Replies are 200 with the response envelope, or a plain-text
    /// 401/404/503.
    pub async fn handle(self: &Arc<Self>, request: InvocationRequest) -> DispatchReply {
        self.handle_payload(request, Payload::Json).await
    }

    /// Runs an authenticated envelope of the binary codec (read from its headers) and its
    /// payload through the pipeline. The payload may still be arriving: it is read only once
    /// every check passed, decoded as it arrives, and the handler runs only once it has arrived
    /// whole and its stream ended cleanly (a transport checks a trailing signature there).
    /// Replies are 200 with [`ReplyKind::Ok`], [`ReplyKind::Error`] or [`ReplyKind::Stream`],
    /// or a plain-text refusal.
    pub async fn handle_binary(self: &Arc<Self>, request: InvocationRequest, payload: Body) -> DispatchReply {
        self.handle_payload(request, Payload::Binary(payload)).await
    }

    async fn handle_payload(self: &Arc<Self>, request: InvocationRequest, payload: Payload) -> DispatchReply {
        let guards = &self.guards;
        let now = now_millis();
        let skew = guards.limits.max_skew;
        if !window_ok(request.iat, request.exp, now, skew) {
            return DispatchReply::text(401, "Request expired");
        }
        let window_end = request.exp.saturating_add(skew.as_millis() as u64);
        let check = match request.seq.as_deref() {
            Some(seq) => match parse_seq(seq) {
                Some((sender, n)) => guards.windows.check(sender, n, window_end, now),
                None => return DispatchReply::text(400, "Invalid seq"),
            },
            None => guards
                .replay
                .check_and_insert(&request.invocation_id, window_end, now),
        };
        match check {
            ReplayCheck::Fresh => {}
            ReplayCheck::Replayed => return DispatchReply::text(401, "Replayed request"),
            ReplayCheck::Full => return DispatchReply::text(503, "Overloaded"),
            ReplayCheck::Stale => return DispatchReply::text(503, "Stale request sequence"),
        }
        // Authenticated and fresh: the parent is alive.
        self.note_parent_contact();
        let Some(entry) = self.registry().get(&request.service_id, &request.method_id) else {
            return DispatchReply::text(404, "Not found");
        };
        let codec = payload.codec();
        let streaming = matches!(entry.wire, crate::registry::Wire::Stream(_));
        let wants_stream = request.stream == Some(true);
        if streaming != wants_stream || (streaming && codec == Codec::Json) {
            let what = format!("{}/{}", request.service_id, request.method_id);
            let message = if streaming {
                format!("{what} streams its results: call it with call_stream (binary codec)")
            } else {
                format!("{what} returns one result, not a stream: call it with call")
            };
            return DispatchReply::failure(&Error::new(ErrorCode::BadRequest, message), codec, false);
        }
        if let Payload::Binary(body) = payload {
            if streaming {
                return self.open_stream(request, body).await;
            }
            return self.handle_unary(request, Payload::Binary(body)).await;
        }
        self.handle_unary(request, Payload::Json).await
    }

    async fn handle_unary(self: &Arc<Self>, request: InvocationRequest, payload: Payload) -> DispatchReply {
        let codec = payload.codec();
        if request.cast == Some(true) {
            // Accepted once its arguments are here: read them, acknowledge, run on its own.
            let payload = match payload {
                Payload::Json => Payload::Json,
                Payload::Binary(body) => match body.collect(u64::MAX).await {
                    Ok(bytes) => Payload::Binary(Body::full(bytes)),
                    Err(e) => return DispatchReply::failure(&e, codec, self.expose_errors()),
                },
            };
            self.accept_cast(request, payload);
            return match codec {
                Codec::Json => {
                    DispatchReply::envelope(&InvocationResponse::success("{\"json\":null}".to_owned()))
                }
                Codec::Binary => DispatchReply::payload(Body::full(Bytes::new())),
            };
        }
        let cancel = self.call_token();
        match request.idempotency_key.clone() {
            None => self.run_attached(&request, payload, cancel).await.0,
            Some(key) => self.run_idempotent(request, payload, &key, cancel).await,
        }
    }

    /// Opens a streamed call: its reply is the stream of its items' frames, then an end or
    /// error frame.
    async fn open_stream(self: &Arc<Self>, request: InvocationRequest, payload: Body) -> DispatchReply {
        let cancel = self.call_token();
        let expose = self.expose_errors();
        match self.invoke_stream(&request, payload, cancel).await {
            Err(e) => DispatchReply::failure(&e, Codec::Binary, expose),
            Ok(items) => {
                // The first item goes out alone, at once; after it, items ready together go out
                // together (one write for a burst of small items).
                let mut items = items;
                let first = futures::stream::once(async move {
                    let first = items.next().await;
                    futures::stream::iter(first.map(|f| vec![f])).chain(items.ready_chunks(256))
                })
                .flatten();
                let frames =
                    futures::stream::unfold(Some((Box::pin(first), true)), move |state| async move {
                        let (mut batches, first) = state?;
                        if !first {
                            // Pending once between batches: the transport flushes what it has now
                            // rather than holding it for the frames that follow.
                            tokio::task::yield_now().await;
                        }
                        let Some(batch) = batches.next().await else {
                            return Some((Ok(frame::end()), None));
                        };
                        let mut out = BytesMut::new();
                        for item in batch {
                            match item {
                                Ok(frame) => out.extend_from_slice(&frame),
                                Err(e) => {
                                    out.extend_from_slice(&frame::error(&e, expose));
                                    return Some((Ok(out.freeze()), None));
                                }
                            }
                        }
                        Some((Ok(out.freeze()), Some((batches, false))))
                    });
                DispatchReply::stream(Body::stream(None, frames))
            }
        }
    }

    /// Runs an accepted cast on its own: through the idempotency cache when it has a key (a
    /// redelivered cast runs once), its outcome logged (the caller is not waiting).
    fn accept_cast(self: &Arc<Self>, request: InvocationRequest, payload: Payload) {
        let this = self.clone();
        self.guards.detached.spawn(async move {
            let what = format!("{}/{}", request.service_id, request.method_id);
            let reply = match request.idempotency_key.clone() {
                Some(key) => {
                    this.run_idempotent(request, payload, &key, this.call_token())
                        .await
                }
                None => {
                    let cancel = this.call_token();
                    this.run_attached(&request, payload, cancel).await.0
                }
            };
            let failure = match reply.kind {
                ReplyKind::Envelope => match serde_json::from_slice::<InvocationResponse>(&reply.body) {
                    Ok(r) if r.ok => None,
                    Ok(r) => Some(
                        r.error
                            .map(|e| format!("{}: {}", e.code, e.message))
                            .unwrap_or_default(),
                    ),
                    Err(e) => Some(format!("the reply could not be read: {e}")),
                },
                ReplyKind::Ok => None,
                _ => Some(String::from_utf8_lossy(&reply.body).into_owned()),
            };
            if let Some(error) = failure {
                tracing::warn!(target: "flame::runner", method = %what, %error, "a cast's handler failed");
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

    /// Runs the call and encodes its reply; says whether it is a final outcome (success or a
    /// non-retryable error).
    async fn run_reply(
        &self,
        request: &InvocationRequest,
        payload: Payload,
        cancel: CancellationToken,
    ) -> (DispatchReply, bool) {
        match payload {
            Payload::Json => {
                let (body, keep) = self.encode(self.invoke(request, cancel).await);
                (DispatchReply::envelope_bytes(body), keep)
            }
            Payload::Binary(body) => match self.invoke_binary(request, body, cancel).await {
                Ok(result) => (DispatchReply::payload(result), true),
                // `invoke_binary` already kept undisclosed details on the runner.
                Err(e) => (DispatchReply::failure(&e, Codec::Binary, true), !e.is_retryable()),
            },
        }
    }

    async fn run_attached(
        &self,
        request: &InvocationRequest,
        payload: Payload,
        cancel: CancellationToken,
    ) -> (DispatchReply, bool) {
        // Fires only if the caller goes away mid-call (this future is dropped), not after the
        // handler finished.
        let on_drop = cancel.clone().drop_guard();
        let reply = self.run_reply(request, payload, cancel).await;
        on_drop.disarm();
        reply
    }

    /// Runs a call with an idempotency key at most once per key (and codec: a reply is kept in
    /// the codec it was sent in): the first run is detached from its caller (a retry after a
    /// broken connection joins it), duplicates wait for it.
    async fn run_idempotent(
        self: &Arc<Self>,
        request: InvocationRequest,
        payload: Payload,
        key: &str,
        cancel: CancellationToken,
    ) -> DispatchReply {
        let codec = payload.codec();
        let scope = codec.name();
        let deadline = deadline_of(&request);
        let request = Arc::new(request);
        let mut payload = Some(payload);
        loop {
            match self
                .guards
                .idempotency
                .begin_in(scope, &request.service_id, &request.method_id, key)
            {
                Begin::Done(reply) => return reply.reply(),
                Begin::Uncached => {
                    let payload = payload.take().unwrap_or(Payload::Json);
                    return self.run_attached(&request, payload, cancel).await.0;
                }
                Begin::Wait(mut waiter) => match tokio::time::timeout_at(deadline, waiter.result()).await {
                    Ok(Some(reply)) => return reply.reply(),
                    Ok(None) => continue,
                    Err(_) => {
                        let err = Error::new(
                            ErrorCode::Timeout,
                            "the first run of this idempotency key did not finish before the deadline",
                        );
                        return DispatchReply::failure(&err, codec, true);
                    }
                },
                Begin::Run(recorder) => {
                    let this = self.clone();
                    let req = request.clone();
                    let payload = payload.take().unwrap_or(Payload::Json);
                    let run = self.guards.detached.spawn(async move {
                        let cancel = this.call_token();
                        let (reply, keep) = this.run_reply(&req, payload, cancel).await;
                        let cached = Cached::of(reply).await;
                        recorder.finish(cached.clone(), keep);
                        cached
                    });
                    return match run.await {
                        Ok(reply) => reply.reply(),
                        Err(e) => {
                            Cached::of_error(&Error::handler(format!("handler task failed: {e}")), codec)
                                .reply()
                        }
                    };
                }
            }
        }
    }

    /// The JSON reply envelope and whether it is a final outcome (success or a non-retryable
    /// error).
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
