//! Streamed results on the calling side: [`Flame::call_stream`] (see [`crate::stream`]).

use super::{remote_invocation, CallStart, Flame, Inner, Route};
use crate::call::{attempt_remote, CallOptions, Plan};
use crate::codec::binary;
use crate::config::Mode;
use crate::error::{Error, ErrorCode, Result};
use crate::method::{Method, Streamed};
use crate::pool::{Lease, LeaseOutcome};
use crate::registry::Wire;
use crate::stream::frame::{self, Frame};
use crate::stream::{Body, CallStream, Guarded, ItemStream, StreamEnd};
use crate::telemetry;
use crate::transport::{Args, Reply};
use futures::future::BoxFuture;
use futures::{StreamExt, TryStreamExt};
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

/// The largest item of a streamed result whose method sets no `max_response_bytes`.
pub const DEFAULT_MAX_ITEM: u64 = 64 * 1024 * 1024;

/// Counts a streamed call in flight (shutdown waits for it) until its stream ends.
struct InFlight(Arc<Inner>);

impl Drop for InFlight {
    fn drop(&mut self) {
        if self.0.in_flight.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.drained.notify_waiters();
        }
    }
}

impl Flame {
    /// Calls a streaming method ([`Registry::handle_stream`](crate::Registry::handle_stream))
    /// with the default options: its items arrive as the handler yields them. See
    /// [`crate::stream`] for backpressure, cancellation on drop and the deadline.
    pub fn call_stream<Req, Item>(&self, method: Method<Req, Streamed<Item>>, req: Req) -> CallStream<Item>
    where
        Req: Serialize + Send + 'static,
        Item: DeserializeOwned + Send + 'static,
    {
        self.call_stream_with(method, req, CallOptions::default())
    }

    /// Calls a streaming method with `options`. The timeout covers the whole stream; a retry
    /// (by the call's policy, when safe) can happen only before the first item — after it, an
    /// error ends the stream as its last item (a runner that died: `TRANSPORT`, retryable).
    /// An idempotency key reaches the handler, but a streamed call is not remembered by it.
    pub fn call_stream_with<Req, Item>(
        &self,
        method: Method<Req, Streamed<Item>>,
        req: Req,
        options: CallOptions,
    ) -> CallStream<Item>
    where
        Req: Serialize + Send + 'static,
        Item: DeserializeOwned + Send + 'static,
    {
        let inner = &self.inner;
        if inner.closed.load(Ordering::Acquire) {
            return CallStream::failed(Error::new(ErrorCode::Shutdown, "flame is shutting down"));
        }
        if inner.config.mode == Mode::Parent && !binary::supports::<Item>() {
            return CallStream::failed(Error::new(
                ErrorCode::BadRequest,
                format!(
                    "{method}: streamed items travel in the binary codec, which cannot decode `{}` \
                     (it needs a self-describing format: serde_json::Value, untagged enums, flatten)",
                    std::any::type_name::<Item>()
                ),
            ));
        }
        inner.in_flight.fetch_add(1, Ordering::AcqRel);
        let in_flight = InFlight(inner.clone());
        let CallStart {
            plan,
            remote,
            pool,
            span,
        } = self.begin_call(&method, &options);
        let started = Instant::now();
        let record = {
            let span = span.clone();
            move |end: StreamEnd<'_>| {
                let outcome = end.outcome();
                span.record("outcome", outcome);
                telemetry::call_finished(
                    method.service_id(),
                    method.method_id(),
                    &pool,
                    outcome,
                    started.elapsed(),
                );
            }
        };
        let items: ItemStream<Item> = if remote {
            let flame = self.clone();
            let setup = async move { flame.open_remote(method, req, options, plan).await }.instrument(span);
            Box::pin(futures::stream::once(setup).try_flatten())
        } else {
            let _entered = span.enter();
            match self.open_local(method, req, options, plan.deadline) {
                Ok(items) => items,
                Err(e) => Box::pin(futures::stream::once(async move { Err(e) })),
            }
        };
        // The handler's cancellation travels with the items (locally: their own `Guarded`;
        // remotely: the dropped connection), so this token fires nothing further.
        CallStream::new(
            Guarded::new(items, None, CancellationToken::new())
                .holding(in_flight)
                .on_end(record),
        )
    }

    /// A local streamed call: the handler's stream itself, under the call's deadline, its
    /// context cancelled when the caller drops it.
    fn open_local<Req, Item>(
        &self,
        method: Method<Req, Streamed<Item>>,
        req: Req,
        options: CallOptions,
        deadline: Instant,
    ) -> Result<ItemStream<Item>>
    where
        Req: Serialize + Send + 'static,
        Item: DeserializeOwned + Send + 'static,
    {
        let entry = self
            .inner
            .registry
            .lookup(method.service_id(), method.method_id())?;
        let cancel = CancellationToken::new();
        let ctx = self
            .local_context(options, deadline)
            .with_cancellation(cancel.clone());
        let items: ItemStream<Item> = if let Some(typed) = entry.typed_stream::<Req, Item>() {
            let typed = typed.clone();
            match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| typed(ctx, req))) {
                Ok(items) => items,
                Err(_) => return Err(Error::handler("handler panicked while starting its stream")),
            }
        } else {
            // Same ids, other types: through the binary codec, as a remote call would.
            let Wire::Stream(handler) = &entry.wire else {
                return Err(Error::new(
                    ErrorCode::BadRequest,
                    format!("{method} returns one result, not a stream: call it with call"),
                ));
            };
            let handler = handler.clone();
            let body = Body::encode(req)?;
            let frames = futures::stream::once(async move { handler(ctx, body).await }).try_flatten();
            Box::pin(frames.and_then(|frame| async move {
                // A frame from the handler: the 5-byte header, then the item.
                binary::decode::<Item>(frame.get(5..).unwrap_or_default())
            }))
        };
        Ok(Box::pin(Guarded::new(items, Some(deadline), cancel)))
    }

    /// A remote streamed call: the one retry loop (`attempt_remote`) sends it, and hands its
    /// frames out as items, the lease held until the stream ends.
    async fn open_remote<Req, Item>(
        &self,
        method: Method<Req, Streamed<Item>>,
        req: Req,
        options: CallOptions,
        plan: Plan,
    ) -> Result<ItemStream<Item>>
    where
        Req: Serialize + Send + 'static,
        Item: DeserializeOwned + Send + 'static,
    {
        let Route {
            pool,
            budget,
            transport,
        } = self.route(&plan)?;
        let invocation = remote_invocation(&method, Args::typed(req), &plan, options, true);
        let max_item = method.limits().response.unwrap_or(DEFAULT_MAX_ITEM);
        let (timeout, deadline) = (plan.timeout, plan.deadline);
        let read = move |reply: Reply,
                         lease: &mut Option<Lease>|
              -> BoxFuture<'static, Result<ItemStream<Item>>> {
            let lease = lease.take();
            Box::pin(async move {
                let Reply::Stream(body) = reply else {
                    return Err(Error::serialization(
                        "the runner sent one result to a streamed call (is the method a streaming one there?)",
                    ));
                };
                // As for a unary call: a caller that waited for a runner to boot has its
                // timeout counted from the runner.
                let deadline = match &lease {
                    Some(l) if l.fresh_runner() => deadline.max(Instant::now() + timeout),
                    _ => deadline,
                };
                Ok(remote_items::<Item>(body, max_item, deadline, lease))
            })
        };
        attempt_remote(
            pool.as_ref(),
            transport.as_ref(),
            budget,
            &plan,
            invocation,
            &read,
        )
        .await
    }
}

/// The items of a streamed reply: frames decoded, the runner's loss noticed, the deadline
/// enforced, the lease given back when the stream ends (a cut stream reports its runner).
fn remote_items<T: DeserializeOwned + Send + 'static>(
    body: Body,
    max_item: u64,
    deadline: Instant,
    lease: Option<Lease>,
) -> ItemStream<T> {
    let frames = Box::pin(frame::decode(body.into_stream(), max_item));
    let lost = lease.as_ref().map(|l| l.lost().clone()).unwrap_or_default();
    let runner = lease
        .as_ref()
        .map(|l| l.endpoint().runner_id.clone())
        .unwrap_or_default();
    let items = futures::stream::unfold(Some((frames, lost)), move |state| {
        let runner = runner.clone();
        async move {
            let (mut frames, lost) = state?;
            let next = tokio::select! {
                biased;
                f = frames.next() => f,
                _ = lost.cancelled() => {
                    let err = Error::transport(format!("runner {runner} was lost during the stream")).with_retryable(true);
                    return Some((Err(err), None));
                }
            };
            match next? {
                Ok(Frame::Item(bytes)) => Some((binary::decode::<T>(&bytes), Some((frames, lost)))),
                Ok(Frame::End) => None,
                Ok(Frame::Error(e)) | Err(e) => Some((Err(e), None)),
            }
        }
    });
    let mut lease = lease;
    Box::pin(
        Guarded::new(items, Some(deadline), CancellationToken::new()).on_end(move |end| {
            if let Some(lease) = lease.take() {
                let outcome = match end {
                    StreamEnd::Failed(e) if e.code() == ErrorCode::Transport => LeaseOutcome::RunnerFailed,
                    _ => LeaseOutcome::Done,
                };
                lease.finish(outcome);
            }
        }),
    )
}
