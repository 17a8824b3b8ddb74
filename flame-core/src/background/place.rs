//! [`Flame::place`]: a long-lived task on a runner (Elixir FLAME's `place_child`).

use crate::call::{CallOptions, RetryPolicy};
use crate::error::Result;
use crate::flame::Flame;
use crate::method::Method;
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::fmt;
use std::time::Duration;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// How long a placed task may run unless [`PlaceOptions::lifetime`] says otherwise: a day.
pub const DEFAULT_LIFETIME: Duration = Duration::from_secs(24 * 3600);

/// Options of [`Flame::place_with`].
#[derive(Debug, Clone)]
pub struct PlaceOptions {
    pool: Option<String>,
    lifetime: Duration,
}

impl Default for PlaceOptions {
    fn default() -> Self {
        PlaceOptions {
            pool: None,
            lifetime: DEFAULT_LIFETIME,
        }
    }
}

impl PlaceOptions {
    /// Defaults: the method's or the default pool, a lifetime of a day.
    pub fn new() -> Self {
        PlaceOptions::default()
    }

    /// Places the task in pool `name`.
    pub fn pool(mut self, name: impl Into<String>) -> Self {
        self.pool = Some(name.into());
        self
    }

    /// The longest the task may run: its handler's deadline (default a day).
    pub fn lifetime(mut self, lifetime: Duration) -> Self {
        self.lifetime = lifetime;
        self
    }
}

/// A long-lived task placed on a runner. It holds one slot of that runner, which keeps the
/// runner from idling out while the task runs; the handle stops it and learns when — and how —
/// it ended. If the runner dies, the task ends with a retryable `TRANSPORT` error (it is not
/// placed again by itself). Dropping the handle leaves the task running until it ends, its
/// lifetime passes, or the parent shuts down.
pub struct PlacedTask<Resp> {
    id: String,
    task: Option<JoinHandle<Option<Result<Resp>>>>,
    stop: CancellationToken,
}

impl<Resp> fmt::Debug for PlacedTask<Resp> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PlacedTask")
            .field("id", &self.id)
            .field("running", &self.task.as_ref().is_some_and(|t| !t.is_finished()))
            .finish()
    }
}

impl<Resp: Send + 'static> PlacedTask<Resp> {
    /// The task's id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Whether the task still runs.
    pub fn is_running(&self) -> bool {
        self.task.as_ref().is_some_and(|t| !t.is_finished())
    }

    /// Waits until the task ends on its own (or its runner dies): its result.
    pub async fn ended(&mut self) -> Result<Resp> {
        let Some(task) = self.task.as_mut() else {
            return Err(crate::error::Error::config(
                "this task's end was already reported",
            ));
        };
        let done = task.await;
        self.task = None;
        finished(done)
    }

    /// Stops the task — its call is dropped, so its handler's cancellation fires on the runner
    /// and its slot is given back — and returns how it ended: `SHUTDOWN` ("stopped"), or its
    /// own result if it had ended first.
    pub async fn stop(mut self) -> Result<Resp> {
        self.stop.cancel();
        match self.task.take() {
            Some(task) => finished(task.await),
            None => Err(crate::error::Error::config(
                "this task's end was already reported",
            )),
        }
    }
}

fn finished<Resp>(done: std::result::Result<Option<Result<Resp>>, tokio::task::JoinError>) -> Result<Resp> {
    match done {
        Ok(Some(result)) => result,
        Ok(None) => Err(crate::error::Error::new(
            crate::error::ErrorCode::Shutdown,
            "the placed task was stopped",
        )),
        Err(e) => Err(crate::error::Error::handler(format!(
            "the placed task failed: {e}"
        ))),
    }
}

impl Flame {
    /// Places `method(req)` on a runner as a long-lived task (see [`PlacedTask`]).
    ///
    /// ```no_run
    /// # async fn run(flame: flame_core::Flame) -> flame_core::Result<()> {
    /// use flame_core::Method;
    /// const WORKER: Method<String, u64> = Method::new("jobs", "consume");
    /// let mut task = flame.place(WORKER, "queue-a".to_string());
    /// // ... later
    /// let processed = task.stop().await;
    /// # Ok(()) }
    /// ```
    pub fn place<Req, Resp>(&self, method: Method<Req, Resp>, req: Req) -> PlacedTask<Resp>
    where
        Req: Serialize + Send + 'static,
        Resp: DeserializeOwned + Send + 'static,
    {
        self.place_with(method, req, PlaceOptions::default())
    }

    /// [`Flame::place`] with [`PlaceOptions`].
    pub fn place_with<Req, Resp>(
        &self,
        method: Method<Req, Resp>,
        req: Req,
        options: PlaceOptions,
    ) -> PlacedTask<Resp>
    where
        Req: Serialize + Send + 'static,
        Resp: DeserializeOwned + Send + 'static,
    {
        let mut call = CallOptions::new()
            .timeout(options.lifetime)
            .retry(RetryPolicy::NONE);
        if let Some(pool) = options.pool {
            call = call.pool(pool);
        }
        let stop = self.inner.background.child_token();
        let flame = self.clone();
        let stopped = stop.clone();
        let task = tokio::spawn(async move {
            tokio::select! {
                result = flame.call_with(method, req, call) => Some(result),
                _ = stopped.cancelled() => None,
            }
        });
        PlacedTask {
            id: uuid::Uuid::new_v4().to_string(),
            task: Some(task),
            stop,
        }
    }
}
