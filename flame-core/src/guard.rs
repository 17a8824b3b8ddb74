//! Runs a handler future with its deadline enforced, its cancellation fired, and panics caught.

use crate::context::Context;
use crate::error::{Error, ErrorCode, Result};
use futures::FutureExt;
use std::future::Future;
use std::panic::AssertUnwindSafe;

/// Runs `make(ctx)` for the call described by `ctx`:
/// - past the deadline the context's cancellation fires, the future is dropped (its work
///   stops) and the result is a `TIMEOUT` error;
/// - a panic, while creating or polling the future, becomes a `HANDLER_ERROR` for this call only;
/// - if the caller gives up (this future is dropped before the handler finished), the
///   context's cancellation fires too.
pub async fn run_guarded<T, F, Fut>(ctx: Context, make: F) -> Result<T>
where
    F: FnOnce(Context) -> Fut,
    Fut: Future<Output = Result<T>>,
{
    let deadline = ctx.deadline();
    let token = ctx.cancellation().clone();
    let mut on_drop = CancelOnDrop(Some(token.clone()));
    let fut = match std::panic::catch_unwind(AssertUnwindSafe(|| make(ctx))) {
        Ok(f) => f,
        Err(panic) => return Err(panic_error(panic)),
    };
    let guarded = AssertUnwindSafe(fut).catch_unwind();
    let outcome = match deadline {
        Some(d) => match tokio::time::timeout_at(d, guarded).await {
            Ok(out) => out,
            Err(_) => {
                token.cancel();
                return Err(Error::new(
                    ErrorCode::Timeout,
                    "handler ran past the call's deadline",
                ));
            }
        },
        None => guarded.await,
    };
    on_drop.disarm();
    outcome.unwrap_or_else(|panic| Err(panic_error(panic)))
}

/// Fires the token if dropped while still armed: the caller went away mid-call.
struct CancelOnDrop(Option<tokio_util::sync::CancellationToken>);

impl CancelOnDrop {
    fn disarm(&mut self) {
        self.0 = None;
    }
}

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        if let Some(token) = self.0.take() {
            token.cancel();
        }
    }
}

fn panic_error(panic: Box<dyn std::any::Any + Send>) -> Error {
    let text = panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "non-string panic payload".to_owned());
    tracing::error!(panic = %text, "flame handler panicked");
    Error::handler("handler panicked").with_details(serde_json::Value::String(text))
}
