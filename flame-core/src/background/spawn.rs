//! [`Flame::spawn`]: a call that runs in the background and hands back a [`CallHandle`] at once.

use crate::call::CallOptions;
use crate::error::{Error, ErrorCode, Result};
use crate::flame::Flame;
use crate::method::Method;
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::fmt;
use std::time::Duration;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// A call running in the background (see [`Flame::spawn`]): its id, its result when it ends,
/// and the means to cancel it or let it go on without anyone waiting.
///
/// Like a linked Elixir process by default: **dropping the handle cancels the call** (the
/// handler's cancellation fires, on the runner too). [`CallHandle::detach`] unlinks it (Elixir's
/// `link: false`): the call then runs until it ends, or until the parent's
/// [`shutdown`](Flame::shutdown) has waited its shutdown timeout for it.
#[must_use = "dropping a CallHandle cancels the call: join it, or detach it"]
pub struct CallHandle<Resp> {
    id: String,
    task: Option<JoinHandle<Option<Result<Resp>>>>,
    cancel: CancellationToken,
    detached: bool,
}

impl<Resp> fmt::Debug for CallHandle<Resp> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CallHandle")
            .field("id", &self.id)
            .field(
                "finished",
                &self.task.as_ref().map_or(true, JoinHandle::is_finished),
            )
            .field("detached", &self.detached)
            .finish()
    }
}

impl<Resp: Send + 'static> CallHandle<Resp> {
    /// The call's id (unique per spawned call; the runner's invocation ids are per attempt).
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Whether the call has ended (its result is ready).
    pub fn is_finished(&self) -> bool {
        self.task.as_ref().map_or(true, JoinHandle::is_finished)
    }

    /// Waits for the call's result.
    pub async fn join(mut self) -> Result<Resp> {
        match self.task.take() {
            Some(task) => outcome(task.await),
            None => Err(taken()),
        }
    }

    /// Waits at most `timeout` for the result: `TIMEOUT` (retryable) if the call is still
    /// running — it goes on, and the handle can be asked again.
    pub async fn result(&mut self, timeout: Duration) -> Result<Resp> {
        let Some(task) = self.task.as_mut() else {
            return Err(taken());
        };
        match tokio::time::timeout(timeout, task).await {
            Ok(done) => {
                self.task = None;
                outcome(done)
            }
            Err(_) => Err(Error::new(
                ErrorCode::Timeout,
                format!("call {} is still running after {timeout:?}", self.id),
            )
            .with_retryable(true)),
        }
    }

    /// Cancels the call: its future is dropped, so the handler's cancellation fires (on a
    /// runner, through the dropped request). Returns at once.
    pub fn cancel(mut self) {
        self.cancel.cancel();
        self.task = None;
    }

    /// Lets the call run on without this handle: it ends on its own, or when the parent's
    /// shutdown has waited its shutdown timeout for it. Shutdown waits for detached calls.
    pub fn detach(mut self) {
        self.detached = true;
    }
}

impl<Resp> Drop for CallHandle<Resp> {
    fn drop(&mut self) {
        if !self.detached {
            self.cancel.cancel();
        }
    }
}

fn taken() -> Error {
    Error::config("this call's result was already taken")
}

fn outcome<Resp>(done: std::result::Result<Option<Result<Resp>>, tokio::task::JoinError>) -> Result<Resp> {
    match done {
        Ok(Some(result)) => result,
        Ok(None) => Err(Error::new(
            ErrorCode::Shutdown,
            "the call was cancelled (flame shut down before it ended)",
        )),
        Err(e) => Err(Error::handler(format!("the call's task failed: {e}"))),
    }
}

impl Flame {
    /// Starts `method(req)` in the background with the default options and returns its
    /// [`CallHandle`] at once.
    ///
    /// ```
    /// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
    /// use flame_core::{Context, Flame, Method, Registry};
    /// const SQUARE: Method<u64, u64> = Method::new("math", "square");
    /// let registry = Registry::new().handle(SQUARE, |_ctx: Context, n: u64| async move { Ok(n * n) });
    /// let flame = Flame::builder(registry).start().await?;
    /// let handle = flame.spawn(SQUARE, 12);
    /// // ... other work ...
    /// assert_eq!(handle.join().await?, 144);
    /// flame.spawn(SQUARE, 3).detach(); // runs on; shutdown waits for it
    /// flame.shutdown().await?;
    /// # Ok::<(), flame_core::Error>(())
    /// # }).unwrap();
    /// ```
    pub fn spawn<Req, Resp>(&self, method: Method<Req, Resp>, req: Req) -> CallHandle<Resp>
    where
        Req: Serialize + Send + 'static,
        Resp: DeserializeOwned + Send + 'static,
    {
        self.spawn_with(method, req, CallOptions::default())
    }

    /// [`Flame::spawn`] with `options` (pool, timeout, retry policy, idempotency key…).
    pub fn spawn_with<Req, Resp>(
        &self,
        method: Method<Req, Resp>,
        req: Req,
        options: CallOptions,
    ) -> CallHandle<Resp>
    where
        Req: Serialize + Send + 'static,
        Resp: DeserializeOwned + Send + 'static,
    {
        let cancel = self.inner.background.child_token();
        let flame = self.clone();
        let stop = cancel.clone();
        let task = tokio::spawn(async move {
            tokio::select! {
                result = flame.call_with(method, req, options) => Some(result),
                _ = stop.cancelled() => None,
            }
        });
        CallHandle {
            id: uuid::Uuid::new_v4().to_string(),
            task: Some(task),
            cancel,
            detached: false,
        }
    }
}
