//! The invocation context a handler receives.

use crate::error::{Error, Result};
use std::any::Any;
use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// What a handler knows about the call it serves: ids, deadline, attempt, idempotency key,
/// trace context and a cancellation token that fires at the deadline or when the caller gives
/// up.
///
/// ```
/// use flame_core::Context;
/// use std::time::Duration;
/// let ctx = Context::new("inv-1").with_timeout(Duration::from_secs(5));
/// assert!(ctx.remaining().unwrap() <= Duration::from_secs(5));
/// assert!(!ctx.is_cancelled());
/// ```
#[derive(Clone, Debug)]
pub struct Context {
    inner: Arc<Inner>,
    cancel: CancellationToken,
}

/// The per-runner state handlers share (built once per runner process by
/// `FlameBuilder::runner_state`).
pub type SharedState = Arc<dyn Any + Send + Sync>;

#[derive(Clone)]
struct Inner {
    invocation_id: String,
    deadline: Option<Instant>,
    attempt: u32,
    idempotency_key: Option<String>,
    trace: BTreeMap<String, String>,
    pool: Option<String>,
    state: Option<SharedState>,
}

impl fmt::Debug for Inner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Context")
            .field("invocation_id", &self.invocation_id)
            .field("deadline", &self.deadline)
            .field("attempt", &self.attempt)
            .field("idempotency_key", &self.idempotency_key)
            .field("trace", &self.trace)
            .field("pool", &self.pool)
            .field("state", &self.state.is_some())
            .finish()
    }
}

impl Context {
    /// A context for invocation `invocation_id`, no deadline, attempt 1.
    pub fn new(invocation_id: impl Into<String>) -> Self {
        Context {
            inner: Arc::new(Inner {
                invocation_id: invocation_id.into(),
                deadline: None,
                attempt: 1,
                idempotency_key: None,
                trace: BTreeMap::new(),
                pool: None,
                state: None,
            }),
            cancel: CancellationToken::new(),
        }
    }

    fn inner_mut(&mut self) -> &mut Inner {
        Arc::make_mut(&mut self.inner)
    }

    /// Sets the runner state handlers reach with [`Context::state`].
    pub fn with_state(mut self, state: Option<SharedState>) -> Self {
        self.inner_mut().state = state;
        self
    }

    /// The runner's state, built once per runner process (and once in local mode) by
    /// `FlameBuilder::runner_state`, never in a parent — the way axum's `State` reaches handlers.
    /// A `CONFIG` error names the type when none of that type was set.
    ///
    /// ```
    /// use flame_core::Context;
    /// use std::sync::Arc;
    /// struct Model { name: &'static str }
    /// let ctx = Context::new("inv-1").with_state(Some(Arc::new(Model { name: "resnet" })));
    /// assert_eq!(ctx.state::<Model>().unwrap().name, "resnet");
    /// assert!(ctx.state::<String>().is_err());
    /// ```
    pub fn state<T: Send + Sync + 'static>(&self) -> Result<Arc<T>> {
        self.inner
            .state
            .clone()
            .and_then(|s| s.downcast::<T>().ok())
            .ok_or_else(|| {
                Error::config(format!(
                    "this handler asked for runner state of type `{}`, and none of that type was set: \
                     build it with FlameBuilder::runner_state",
                    std::any::type_name::<T>()
                ))
            })
    }

    /// Sets the deadline.
    pub fn with_deadline(mut self, deadline: Option<Instant>) -> Self {
        self.inner_mut().deadline = deadline;
        self
    }

    /// Sets the deadline to `timeout` from now.
    pub fn with_timeout(self, timeout: Duration) -> Self {
        self.with_deadline(Some(Instant::now() + timeout))
    }

    /// Sets the attempt number (1 for the first).
    pub fn with_attempt(mut self, attempt: u32) -> Self {
        self.inner_mut().attempt = attempt;
        self
    }

    /// Sets the idempotency key.
    pub fn with_idempotency_key(mut self, key: Option<String>) -> Self {
        self.inner_mut().idempotency_key = key;
        self
    }

    /// Sets the trace context.
    pub fn with_trace(mut self, trace: BTreeMap<String, String>) -> Self {
        self.inner_mut().trace = trace;
        self
    }

    /// Sets the pool the call was routed through.
    pub fn with_pool(mut self, pool: Option<String>) -> Self {
        self.inner_mut().pool = pool;
        self
    }

    /// Uses `token` as this context's cancellation token.
    pub fn with_cancellation(mut self, token: CancellationToken) -> Self {
        self.cancel = token;
        self
    }

    /// The invocation id (unique per attempt).
    pub fn invocation_id(&self) -> &str {
        &self.inner.invocation_id
    }

    /// The deadline, if the call has one.
    pub fn deadline(&self) -> Option<Instant> {
        self.inner.deadline
    }

    /// Time left until the deadline (zero when past it), if the call has one.
    pub fn remaining(&self) -> Option<Duration> {
        self.inner
            .deadline
            .map(|d| d.saturating_duration_since(Instant::now()))
    }

    /// The attempt number, 1 for the first.
    pub fn attempt(&self) -> u32 {
        self.inner.attempt
    }

    /// The idempotency key, if the caller set one.
    pub fn idempotency_key(&self) -> Option<&str> {
        self.inner.idempotency_key.as_deref()
    }

    /// The trace context (e.g. `traceparent`).
    pub fn trace(&self) -> &BTreeMap<String, String> {
        &self.inner.trace
    }

    /// The pool the call was routed through, when known.
    pub fn pool(&self) -> Option<&str> {
        self.inner.pool.as_deref()
    }

    /// The cancellation token: fires at the deadline or when the caller gives up.
    pub fn cancellation(&self) -> &CancellationToken {
        &self.cancel
    }

    /// Whether the call has been cancelled.
    pub fn is_cancelled(&self) -> bool {
        self.cancel.is_cancelled()
    }

    /// Completes when the call is cancelled.
    pub async fn cancelled(&self) {
        self.cancel.cancelled().await
    }
}
