//! Streams: payloads that arrive or leave a chunk at a time ([`Body`]), and streamed results —
//! a handler that returns a stream of items ([`Registry::handle_stream`]), a caller that gets a
//! [`CallStream`] back ([`Flame::call_stream`]).
//!
//! A streamed result has backpressure end to end (the runner polls the handler's stream only as
//! fast as the caller reads), the call's deadline over the whole stream (past it the caller gets
//! `TIMEOUT` and the handler's context is cancelled), and cancellation: dropping the
//! `CallStream` before its end drops the handler's stream and fires its context's cancellation,
//! in local mode and across a runner. A runner that dies mid-stream gives the caller a typed,
//! retryable `TRANSPORT` error after the items it already sent. Over HTTP a streamed result
//! needs the binary codec (Rust ⇄ Rust): the TypeScript reference has none.
//!
//! ```
//! # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
//! use flame_core::{Context, Flame, Method, Registry, Streamed};
//! use futures::StreamExt;
//!
//! const COUNT: Method<u32, Streamed<u32>> = Method::new("demo", "count");
//!
//! let registry = Registry::new().handle_stream(COUNT, |_ctx: Context, n: u32| {
//!     futures::stream::iter((1..=n).map(Ok))
//! });
//! let flame = Flame::builder(registry).start().await.unwrap(); // local mode
//! let items: Vec<u32> = flame.call_stream(COUNT, 3).map(|r| r.unwrap()).collect().await;
//! assert_eq!(items, [1, 2, 3]);
//! flame.shutdown().await.unwrap();
//! # });
//! ```
//!
//! [`Registry::handle_stream`]: crate::Registry::handle_stream
//! [`Flame::call_stream`]: crate::Flame::call_stream

mod body;
pub mod frame;

pub use body::{Body, CHUNK_SIZE, STREAM_THRESHOLD};

use crate::error::{Error, ErrorCode, Result};
use futures::{Future, Stream, TryFutureExt};
use std::any::Any;
use std::fmt;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::task::{Context as TaskContext, Poll};
use tokio::time::{Instant, Sleep};
use tokio_util::sync::CancellationToken;

/// The stream a streaming handler returns (what a `#[flame::service]` streaming method
/// returns inside its `Result`).
pub type ItemStream<T> = Pin<Box<dyn Stream<Item = Result<T>> + Send + 'static>>;

/// Turns a future of a stream into the stream: an error of the future is the stream's one
/// item. (How the service macro registers a streaming method: `async fn … ->
/// flame::Result<flame::ItemStream<T>>`.)
///
/// ```
/// # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
/// use futures::StreamExt;
/// let s = flame_core::stream::flatten(async { Ok(futures::stream::iter([Ok(1), Ok(2)])) });
/// assert_eq!(s.map(|r| r.unwrap()).collect::<Vec<i32>>().await, [1, 2]);
/// # });
/// ```
pub fn flatten<T, F, S>(future: F) -> ItemStream<T>
where
    F: Future<Output = Result<S>> + Send + 'static,
    S: Stream<Item = Result<T>> + Send + 'static,
    T: 'static,
{
    Box::pin(future.try_flatten_stream())
}

/// The items of a streamed call ([`Flame::call_stream`](crate::Flame::call_stream)): each a
/// `Result`; an error ends the stream. Dropping it cancels the call.
pub struct CallStream<T> {
    inner: ItemStream<T>,
}

impl<T> fmt::Debug for CallStream<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("CallStream")
    }
}

impl<T: 'static> CallStream<T> {
    pub(crate) fn new(inner: impl Stream<Item = Result<T>> + Send + 'static) -> Self {
        CallStream {
            inner: Box::pin(inner),
        }
    }

    /// A stream whose one item is `err`.
    pub(crate) fn failed(err: Error) -> Self
    where
        T: Send,
    {
        CallStream::new(futures::stream::once(async move { Err(err) }))
    }
}

impl<T> Stream for CallStream<T> {
    type Item = Result<T>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<Option<Result<T>>> {
        self.inner.as_mut().poll_next(cx)
    }
}

/// A stream of results run under a call's rules: its deadline (past it: a `TIMEOUT` item, then
/// the end, and `cancel` fires), panics caught (a `HANDLER_ERROR` item), the end after the first
/// error, `cancel` fired when dropped before its end, and `hold` (an in-flight guard, a lease)
/// kept until the end.
pub(crate) struct Guarded<T> {
    inner: Option<Pin<Box<dyn Stream<Item = Result<T>> + Send>>>,
    deadline: Option<Pin<Box<Sleep>>>,
    cancel: CancellationToken,
    done: bool,
    hold: Option<Box<dyn Any + Send>>,
    on_end: Option<OnEnd>,
}

/// What runs when a [`Guarded`] stream ends.
type OnEnd = Box<dyn FnOnce(StreamEnd<'_>) + Send>;

/// How a [`Guarded`] stream ended.
#[derive(Debug, Clone, Copy)]
pub(crate) enum StreamEnd<'a> {
    /// After its last item.
    Done,
    /// With this error (its last item).
    Failed(&'a Error),
    /// Dropped before its end: the caller went away.
    Dropped,
}

impl StreamEnd<'_> {
    /// The `outcome` label of metrics: `ok`, the error's code, or `DROPPED`.
    pub(crate) fn outcome(&self) -> &'static str {
        match self {
            StreamEnd::Done => "ok",
            StreamEnd::Failed(e) => e.code().as_str(),
            StreamEnd::Dropped => "DROPPED",
        }
    }
}

impl<T> Guarded<T> {
    pub(crate) fn new(
        inner: impl Stream<Item = Result<T>> + Send + 'static,
        deadline: Option<Instant>,
        cancel: CancellationToken,
    ) -> Self {
        Guarded {
            inner: Some(Box::pin(inner)),
            deadline: deadline.map(|d| Box::pin(tokio::time::sleep_until(d))),
            cancel,
            done: false,
            hold: None,
            on_end: None,
        }
    }

    /// Keeps `value` alive until the stream ends (or is dropped).
    pub(crate) fn holding(mut self, value: impl Any + Send) -> Self {
        self.hold = Some(Box::new(value));
        self
    }

    /// Runs `f` once when the stream ends or is dropped before its end.
    pub(crate) fn on_end(mut self, f: impl FnOnce(StreamEnd<'_>) + Send + 'static) -> Self {
        self.on_end = Some(Box::new(f));
        self
    }

    fn finish(&mut self, end: StreamEnd<'_>, cancel: bool) {
        self.done = true;
        self.inner = None;
        self.deadline = None;
        if cancel {
            self.cancel.cancel();
        }
        if let Some(f) = self.on_end.take() {
            f(end);
        }
        self.hold = None;
    }
}

impl<T> Stream for Guarded<T> {
    type Item = Result<T>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<Option<Result<T>>> {
        let this = self.get_mut();
        if this.done {
            return Poll::Ready(None);
        }
        if let Some(d) = this.deadline.as_mut() {
            if d.as_mut().poll(cx).is_ready() {
                let err = Error::new(ErrorCode::Timeout, "the streamed call ran past its deadline");
                this.finish(StreamEnd::Failed(&err), true);
                return Poll::Ready(Some(Err(err)));
            }
        }
        let Some(inner) = this.inner.as_mut() else {
            return Poll::Ready(None);
        };
        match std::panic::catch_unwind(AssertUnwindSafe(|| inner.as_mut().poll_next(cx))) {
            Err(panic) => {
                let err = panic_error(panic);
                this.finish(StreamEnd::Failed(&err), true);
                Poll::Ready(Some(Err(err)))
            }
            Ok(Poll::Ready(Some(Ok(item)))) => Poll::Ready(Some(Ok(item))),
            Ok(Poll::Ready(Some(Err(err)))) => {
                this.finish(StreamEnd::Failed(&err), false);
                Poll::Ready(Some(Err(err)))
            }
            Ok(Poll::Ready(None)) => {
                this.finish(StreamEnd::Done, false);
                Poll::Ready(None)
            }
            Ok(Poll::Pending) => Poll::Pending,
        }
    }
}

impl<T> Drop for Guarded<T> {
    /// Dropped before its end: the caller went away; the handler's context is cancelled.
    fn drop(&mut self) {
        if !self.done {
            self.finish(StreamEnd::Dropped, true);
        }
    }
}

fn panic_error(panic: Box<dyn Any + Send>) -> Error {
    let text = panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "non-string panic payload".to_owned());
    tracing::error!(panic = %text, "flame streaming handler panicked");
    Error::handler("handler panicked").with_details(serde_json::Value::String(text))
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::StreamExt;
    use std::time::Duration;

    #[tokio::test]
    async fn guarded_ends_at_the_first_error_and_catches_panics() {
        let token = CancellationToken::new();
        let s = futures::stream::iter(vec![Ok(1), Err(Error::handler("x")), Ok(3)]);
        let out: Vec<_> = Guarded::new(s, None, token.clone()).collect().await;
        assert_eq!(out.len(), 2);
        assert!(!token.is_cancelled());

        let token = CancellationToken::new();
        let s = futures::stream::iter(0..3).map(|i| if i == 1 { panic!("at one") } else { Ok(i) });
        let out: Vec<_> = Guarded::new(s, None, token.clone()).collect().await;
        assert_eq!(out.len(), 2);
        assert_eq!(out[1].as_ref().unwrap_err().code(), ErrorCode::Handler);
        assert!(token.is_cancelled());
    }

    #[tokio::test(start_paused = true)]
    async fn guarded_enforces_its_deadline_and_cancels_on_drop() {
        let token = CancellationToken::new();
        let forever = futures::stream::pending::<Result<u8>>();
        let deadline = Instant::now() + Duration::from_secs(1);
        let out: Vec<_> = Guarded::new(forever, Some(deadline), token.clone())
            .collect()
            .await;
        assert_eq!(out[0].as_ref().unwrap_err().code(), ErrorCode::Timeout);
        assert!(token.is_cancelled());

        let token = CancellationToken::new();
        let mut s = Guarded::new(futures::stream::iter(vec![Ok(1u8), Ok(2)]), None, token.clone());
        assert_eq!(s.next().await.unwrap().unwrap(), 1);
        drop(s);
        assert!(token.is_cancelled(), "dropped before its end");
    }
}
