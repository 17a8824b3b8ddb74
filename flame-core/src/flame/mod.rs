//! The [`Flame`] handle an application calls through, and ([`builder`]) how it is built.

mod builder;
mod stream;

pub(crate) use builder::terminate_signal;
pub use builder::FlameBuilder;

use crate::backend::{Backend, ReapScope};
use crate::background::CastErrorHook;
use crate::call::{attempt_remote, BudgetState, CallDefaults, CallOptions, Plan};
use crate::codec;
use crate::config::{Config, Mode};
use crate::context::{Context, SharedState};
use crate::error::{Error, ErrorCode, Result};
use crate::guard::run_guarded;
use crate::method::Method;
use crate::pool::Pool;
use crate::registry::Registry;
use crate::telemetry;
use crate::transport::{Args, Invocation, Transport};
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;
use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

/// The handle an application calls through. Cheap to clone.
///
/// ```
/// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
/// use flame_core::{CallOptions, Context, Flame, Method, Mode, Registry};
/// use std::time::Duration;
/// const WORDS: Method<String, usize> = Method::new("text", "words");
/// let registry = Registry::new().handle(WORDS, |_ctx: Context, s: String| async move {
///     Ok(s.split_whitespace().count())
/// });
/// let flame = Flame::builder(registry).mode(Mode::Local).start().await.unwrap();
/// assert_eq!(flame.call(WORDS, "to be or not".to_string()).await.unwrap(), 4);
/// let n = flame
///     .call_with(WORDS, "a b".to_string(), CallOptions::new().timeout(Duration::from_secs(1)))
///     .await
///     .unwrap();
/// assert_eq!(n, 2);
/// flame.shutdown().await.unwrap();
/// # });
/// ```
#[derive(Clone)]
pub struct Flame {
    pub(crate) inner: Arc<Inner>,
}

pub(crate) struct Inner {
    /// The retry budget of each pool.
    budgets: HashMap<String, BudgetState>,
    registry: Arc<Registry>,
    pub(crate) config: Config,
    pub(crate) pools: HashMap<String, Arc<dyn Pool>>,
    transport: Option<Arc<dyn Transport>>,
    in_flight: AtomicUsize,
    drained: Notify,
    closed: AtomicBool,
    /// The backends of the elastic pools, each once (for reap).
    pub(crate) backends: Vec<Arc<dyn Backend>>,
    app: String,
    parent_id: String,
    /// The longest boot timeout of the elastic pools (reap gives unanswering runners this
    /// long on top of the failsafe window).
    max_boot: Duration,
    /// How long shutdown waits for calls in flight before cancelling them.
    shutdown_timeout: Duration,
    /// The runner state, in local mode (runners keep theirs in their dispatcher).
    pub(crate) state: Option<SharedState>,
    /// Fires when shutdown gives up waiting: every background call still running stops.
    pub(crate) background: CancellationToken,
    /// Told about casts that could not be delivered.
    cast_hooks: Vec<CastErrorHook>,
}

struct CallGuard<'a>(&'a Inner);

impl Drop for CallGuard<'_> {
    fn drop(&mut self) {
        if self.0.in_flight.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.drained.notify_waiters();
        }
    }
}

/// What a call (unary or streamed) resolves once before it runs: its plan, whether it goes to a
/// runner, the pool name its span and metrics carry, and its `flame.call` span.
pub(crate) struct CallStart {
    pub(crate) plan: Plan,
    pub(crate) remote: bool,
    pub(crate) pool: String,
    pub(crate) span: tracing::Span,
}

impl Flame {
    /// Resolves `method`'s call with `options` into a [`CallStart`].
    pub(crate) fn begin_call<Req, Resp>(
        &self,
        method: &Method<Req, Resp>,
        options: &CallOptions,
    ) -> CallStart {
        let inner = &*self.inner;
        let plan = Plan::resolve(
            options,
            method.pool(),
            method.timeout_ms().map(Duration::from_millis),
            method.retry(),
            |pool| {
                inner
                    .pools
                    .get(pool)
                    .map_or(CallDefaults::default(), |p| p.call_defaults())
            },
            &inner.config,
        );
        let remote = inner.config.mode == Mode::Parent;
        let pool = if remote {
            plan.pool.clone()
        } else {
            "local".to_owned()
        };
        let span = tracing::info_span!(
            target: "flame",
            "flame.call",
            service = method.service_id(),
            method = method.method_id(),
            pool = %pool,
            outcome = tracing::field::Empty,
            attempts = tracing::field::Empty,
        );
        CallStart {
            plan,
            remote,
            pool,
            span,
        }
    }
}

impl Flame {
    /// A builder over `registry`, configured with defaults (local mode) until told otherwise.
    pub fn builder(registry: Registry) -> FlameBuilder {
        FlameBuilder::new(registry)
    }

    /// What `reap` may end for this parent: runners of this app (never this parent's) that
    /// are provably orphaned, judged with this parent's failsafe window (`FLAME_PARENT_TIMEOUT`)
    /// and boot timeout. `None` without elastic pools (or a transport to probe with).
    pub fn reap_scope(&self) -> Option<ReapScope> {
        let inner = &*self.inner;
        if inner.backends.is_empty() {
            return None;
        }
        let prober = inner.transport.clone()?;
        let window = inner.config.parent_timeout;
        Some(
            ReapScope::new(inner.app.clone(), inner.parent_id.clone(), prober)
                .windows(window, window + inner.max_boot),
        )
    }

    /// This parent's id (`FLAME_PARENT_ID` of the runners it starts).
    pub fn parent_id(&self) -> &str {
        &self.inner.parent_id
    }

    /// The application name runners are labelled with.
    pub fn app(&self) -> &str {
        &self.inner.app
    }

    /// Makes Ctrl-C / `SIGTERM` shut flame down cleanly — calls drain, every runner is ended —
    /// and then exit the process (status 130 / 143); a second signal exits at once.
    /// [`FlameBuilder::start`] calls this in parent mode with elastic pools unless
    /// [`FlameBuilder::handle_signals`] is off.
    pub fn shutdown_on_signal(&self) -> tokio::task::JoinHandle<()> {
        let weak: Weak<Inner> = Arc::downgrade(&self.inner);
        tokio::spawn(async move {
            let name = terminate_signal().await;
            let code = if name == "SIGTERM" { 143 } else { 130 };
            if let Some(inner) = weak.upgrade() {
                let flame = Flame { inner };
                tracing::info!(target: "flame", signal = name, "shutting down: draining calls, ending runners");
                tokio::select! {
                    r = flame.shutdown() => {
                        if let Err(e) = r {
                            tracing::warn!(target: "flame", error = %e, "shutdown after a signal failed");
                        }
                    }
                    again = terminate_signal() => {
                        tracing::warn!(target: "flame", signal = again, "second signal: exiting now");
                    }
                }
            }
            std::process::exit(code);
        })
    }

    /// The mode this handle runs in.
    pub fn mode(&self) -> Mode {
        self.inner.config.mode
    }

    /// The configuration.
    pub fn config(&self) -> &Config {
        &self.inner.config
    }

    /// A pool by name.
    pub fn pool(&self, name: &str) -> Option<&Arc<dyn Pool>> {
        self.inner.pools.get(name)
    }

    /// Calls `method` with `req` and the default options.
    pub async fn call<Req, Resp>(&self, method: Method<Req, Resp>, req: Req) -> Result<Resp>
    where
        Req: Serialize + Send + 'static,
        Resp: DeserializeOwned + Send + 'static,
    {
        self.call_with(method, req, CallOptions::default()).await
    }

    /// Calls `method` with `req` and `options`.
    pub async fn call_with<Req, Resp>(
        &self,
        method: Method<Req, Resp>,
        req: Req,
        options: CallOptions,
    ) -> Result<Resp>
    where
        Req: Serialize + Send + 'static,
        Resp: DeserializeOwned + Send + 'static,
    {
        let inner = &*self.inner;
        if inner.closed.load(Ordering::Acquire) {
            return Err(Error::new(ErrorCode::Shutdown, "flame is shutting down"));
        }
        inner.in_flight.fetch_add(1, Ordering::AcqRel);
        let _guard = CallGuard(inner);
        let CallStart {
            plan,
            remote,
            pool,
            span,
        } = self.begin_call(&method, &options);
        let started = Instant::now();
        let result = async {
            if remote {
                self.call_remote(method, req, options, plan).await
            } else {
                self.call_local(method, req, options, plan.deadline).await
            }
        }
        .instrument(span.clone())
        .await;
        let outcome = telemetry::outcome(&result);
        span.record("outcome", outcome);
        telemetry::call_finished(
            method.service_id(),
            method.method_id(),
            &pool,
            outcome,
            started.elapsed(),
        );
        result
    }

    /// The hooks told about undeliverable casts.
    pub(crate) fn cast_hooks(&self) -> &[CastErrorHook] {
        &self.inner.cast_hooks
    }

    /// The context of a call run in this process (local mode): a fresh id, the call's
    /// deadline, key, trace and pool, and the runner state.
    pub(crate) fn local_context(&self, options: CallOptions, deadline: Instant) -> Context {
        Context::new(uuid::Uuid::new_v4().to_string())
            .with_deadline(Some(deadline))
            .with_idempotency_key(options.idempotency_key)
            .with_trace(options.trace)
            .with_pool(options.pool)
            .with_state(self.inner.state.clone())
    }

    /// Where a remote call of `plan` goes: its pool, the pool's retry budget, the transport.
    pub(crate) fn route(&self, plan: &Plan) -> Result<Route<'_>> {
        let inner = &*self.inner;
        let no_pool = || {
            Error::new(
                ErrorCode::NoRunner,
                format!("no pool named `{}` is configured", plan.pool),
            )
        };
        let pool = inner.pools.get(&plan.pool).ok_or_else(no_pool)?;
        let budget = inner.budgets.get(&plan.pool).ok_or_else(no_pool)?;
        let transport = inner.transport.as_ref().ok_or_else(no_transport)?;
        Ok(Route {
            pool,
            budget,
            transport,
        })
    }

    async fn call_local<Req, Resp>(
        &self,
        method: Method<Req, Resp>,
        req: Req,
        options: CallOptions,
        deadline: Instant,
    ) -> Result<Resp>
    where
        Req: Serialize + Send + 'static,
        Resp: DeserializeOwned + Send + 'static,
    {
        let entry = self
            .inner
            .registry
            .lookup(method.service_id(), method.method_id())?;
        if options.cast {
            // Accepted: run it on its own (shutdown waits for it), acknowledge at once.
            let ctx = self.local_context(options, deadline);
            let args = codec::to_args(&req)?;
            let erased = entry.erased.clone();
            let flame = self.clone();
            let what = method.to_string();
            flame.inner.in_flight.fetch_add(1, Ordering::AcqRel);
            tokio::spawn(async move {
                let _guard = CallGuard(&flame.inner);
                if let Err(error) = run_guarded(ctx, move |ctx| erased(ctx, args)).await {
                    tracing::warn!(target: "flame::cast", method = %what, %error, "a cast's handler failed");
                }
            });
            return codec::decode_result("{\"json\":null}");
        }
        let ctx = self.local_context(options, deadline);
        if let Some(typed) = entry.typed::<Req, Resp>() {
            let typed = typed.clone();
            return run_guarded(ctx, move |ctx| typed(ctx, req)).await;
        }
        // Same ids, other types: go through the wire codec, as a remote call would.
        let args = codec::to_args(&req)?;
        let erased = entry.erased.clone();
        let text = run_guarded(ctx, move |ctx| erased(ctx, args)).await?;
        codec::decode_result(&text)
    }

    async fn call_remote<Req, Resp>(
        &self,
        method: Method<Req, Resp>,
        req: Req,
        options: CallOptions,
        plan: Plan,
    ) -> Result<Resp>
    where
        Req: Serialize + Send + 'static,
        Resp: DeserializeOwned + Send + 'static,
    {
        let Route {
            pool,
            budget,
            transport,
        } = self.route(&plan)?;
        let args = Args::typed(req).with_binary(codec::binary::supports::<Resp>());
        let invocation = remote_invocation(&method, args, &plan, options, false);
        let read = crate::call::decode::<Resp>;
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

    /// Stops taking calls, waits for calls in flight — detached background calls included —
    /// up to the shutdown timeout (`FlameBuilder::shutdown_timeout`, 30 s), cancels what is
    /// still running, then shuts every pool down (ending its runners).
    pub async fn shutdown(&self) -> Result<()> {
        let inner = &*self.inner;
        inner.closed.store(true, Ordering::Release);
        let until = Instant::now() + inner.shutdown_timeout;
        loop {
            let drained = inner.drained.notified();
            if inner.in_flight.load(Ordering::Acquire) == 0 {
                break;
            }
            if tokio::time::timeout_at(until, drained).await.is_err() {
                tracing::warn!(
                    target: "flame",
                    in_flight = inner.in_flight.load(Ordering::Acquire),
                    "shutdown timeout: cancelling the calls still running"
                );
                inner.background.cancel();
                // Cancelled calls end at once (their futures are dropped); give them a moment.
                let settle = Instant::now() + Duration::from_secs(5);
                while inner.in_flight.load(Ordering::Acquire) > 0 && Instant::now() < settle {
                    let drained = inner.drained.notified();
                    let _ = tokio::time::timeout_at(settle, drained).await;
                }
                break;
            }
        }
        let mut first_err = None;
        for pool in inner.pools.values() {
            if let Err(e) = pool.shutdown(Duration::from_secs(30)).await {
                tracing::warn!(pool = pool.name(), error = %e, "pool shutdown failed");
                first_err.get_or_insert(e);
            }
        }
        first_err.map_or(Ok(()), Err)
    }
}

/// The error of a parent-mode build without a transport.
/// Where a remote call goes ([`Flame::route`]).
pub(crate) struct Route<'a> {
    pub(crate) pool: &'a Arc<dyn Pool>,
    pub(crate) budget: &'a BudgetState,
    pub(crate) transport: &'a Arc<dyn Transport>,
}

/// The first attempt's invocation of a remote call (`stream`: a streamed call, never a cast).
pub(crate) fn remote_invocation<Req, Resp>(
    method: &Method<Req, Resp>,
    args: Args,
    plan: &Plan,
    options: CallOptions,
    stream: bool,
) -> Invocation {
    Invocation {
        service_id: method.service_id().to_owned(),
        method_id: method.method_id().to_owned(),
        args,
        deadline: Some(plan.deadline),
        idempotency_key: options.idempotency_key,
        trace: options.trace,
        attempt: 1,
        cast: options.cast && !stream,
        stream,
        limits: method.limits(),
    }
}

pub(crate) fn no_transport() -> Error {
    Error::config(
        "parent mode needs a transport: build with `flame::builder(registry)` (HTTP, the `http` feature, on by default) \
         or give one with `.transport(..)` (e.g. `flame_http::HttpExt::http`)",
    )
}
