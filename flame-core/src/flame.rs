//! The [`Flame`] handle and its builder.

use crate::backend::{Backend, LocalProcess, ReapScope};
use crate::call::{backoff, safe_to_retry, CallOptions};
use crate::codec;
use crate::config::{Config, Mode, Secret};
use crate::context::Context;
use crate::error::{Error, ErrorCode, Result};
use crate::guard::run_guarded;
use crate::method::Method;
use crate::pool::{
    CheckoutOptions, ElasticPool, LeaseOutcome, Pool, PoolConfig, PoolEvent, PoolEventHook, RunnerTemplate,
    StaticPool,
};
use crate::registry::Registry;
use crate::runner::failsafe::Failsafe;
use crate::runner::{Dispatcher, RunnerServer};
use crate::spawn_guard;
use crate::transport::{Endpoint, Invocation, Transport};
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;
use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

type Override = Box<dyn Fn(&mut Config) + Send + Sync>;

/// Builds a [`Flame`]: registry, pools, backend, transport, configuration.
///
/// In parent mode without `FLAME_RUNNER_URL`, every pool declared with
/// [`FlameBuilder::pool`] becomes an [`ElasticPool`] over the backend (default:
/// [`LocalProcess::current_exe`]); with no pool declared, the default pool gets
/// [`PoolConfig::default`]. Each pool has its own fresh secret. [`FlameBuilder::start`] also
/// reaps runners a crashed earlier parent of the same app left behind (only provably orphaned
/// ones: see [`crate::backend::reap`]), and (unless [`FlameBuilder::handle_signals`] is off)
/// makes Ctrl-C / `SIGTERM` shut down cleanly: calls drain, every runner is ended, then the
/// process exits.
///
/// **A runner is a runner.** In a process a flame parent started as a runner
/// (`FLAME_MODE=runner` with `FLAME_PARENT_ID`, see [`spawn_guard`]), `start` serves as a
/// runner whatever the code says — with or without [`FlameBuilder::from_env`], whatever
/// [`FlameBuilder::mode`] or [`FlameBuilder::default_mode`] asked for — and the environment the
/// parent gave it (secret, listen address, parent id, failsafe window) wins over code. The only
/// exception is an explicit opt-in to nested pools ([`FlameBuilder::allow_nested`]) together with
/// an explicit `mode(Mode::Parent)`, capped in depth.
///
/// ```no_run
/// # async fn run(registry: flame_core::Registry) -> flame_core::Result<()> {
/// use flame_core::{Flame, LocalProcess, Mode, PoolConfig};
/// let flame = Flame::builder(registry)
///     .pool("default", PoolConfig::default().max(4))
///     .backend(LocalProcess::current_exe())
///     .default_mode(Mode::Parent) // FLAME_MODE=local still wins
///     .from_env()?
///     .start()
///     .await?;
/// # Ok(()) }
/// ```
pub struct FlameBuilder {
    registry: Registry,
    config: Config,
    overrides: Vec<Override>,
    app: Option<String>,
    pool_configs: Vec<(String, PoolConfig)>,
    pools: Vec<Arc<dyn Pool>>,
    backend: Option<Arc<dyn Backend>>,
    transport: Option<Arc<dyn Transport>>,
    server: Option<Arc<dyn RunnerServer>>,
    explicit_mode: bool,
    env_mode: bool,
    default_mode: Option<Mode>,
    pool_hooks: Vec<PoolEventHook>,
    handle_signals: bool,
    runner_env: BTreeMap<String, String>,
    nested_depth: Option<u32>,
}

impl FlameBuilder {
    fn set(mut self, f: impl Fn(&mut Config) + Send + Sync + 'static) -> Self {
        f(&mut self.config);
        self.overrides.push(Box::new(f));
        self
    }

    /// Sets the mode explicitly (wins over `FLAME_MODE`).
    pub fn mode(mut self, mode: Mode) -> Self {
        self.explicit_mode = true;
        self.set(move |c| c.mode = mode)
    }

    /// The mode when neither code ([`FlameBuilder::mode`]) nor the environment (`FLAME_MODE`,
    /// `FLAME_RUNNER`) names one; e.g. `Mode::Parent` for a program that should run remotely by
    /// default while `FLAME_MODE=local` still runs it in-process.
    pub fn default_mode(mut self, mode: Mode) -> Self {
        self.default_mode = Some(mode);
        self.resolve_mode();
        self
    }

    fn resolve_mode(&mut self) {
        if let (false, false, Some(mode)) = (self.explicit_mode, self.env_mode, self.default_mode) {
            self.config.mode = mode;
        }
    }

    /// Replaces the whole configuration (later setters and explicit values still win).
    pub fn config(mut self, config: Config) -> Self {
        self.config = config;
        for o in &self.overrides {
            o(&mut self.config);
        }
        self.resolve_mode();
        self
    }

    /// Calls `hook` with every event of every elastic pool this builder makes (`grow_start`,
    /// `grow_end`, `shrink`, `runner_down`); they are also `tracing` events.
    pub fn on_pool_event(mut self, hook: impl Fn(&PoolEvent) + Send + Sync + 'static) -> Self {
        self.pool_hooks.push(Arc::new(hook));
        self
    }

    /// Whether [`FlameBuilder::start`] in parent mode makes Ctrl-C / `SIGTERM` shut flame down
    /// cleanly (drain calls, end every runner, exit the process). Default true; turn it off to
    /// handle signals yourself and call [`Flame::shutdown`].
    pub fn handle_signals(mut self, on: bool) -> Self {
        self.handle_signals = on;
        self
    }

    /// Adds an environment variable for every runner the elastic pools start.
    pub fn runner_env(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.runner_env.insert(key.into(), value.into());
        self
    }

    /// Opts into nested pools: runners of this parent may build parents of their own (with an
    /// explicit `mode(Mode::Parent)` and this same opt-in), down to spawn depth `max_depth`
    /// (2: one level of nesting). Capped at [`spawn_guard::MAX_NESTING_DEPTH`]: a higher value
    /// makes `start`/`build` fail with `CONFIG`. Without it runners never start runners.
    pub fn allow_nested(mut self, max_depth: u32) -> Self {
        self.nested_depth = Some(max_depth);
        self
    }

    /// Applies "a runner is a runner" (see the type's docs): in a process a flame parent
    /// started as a runner, the parent's environment wins and the mode is `Runner`.
    fn enforce_runner_identity(&mut self) -> Result<()> {
        let Some(spawned) = spawn_guard::spawned_runner() else {
            return Ok(());
        };
        let nested_parent = self.nested_depth.is_some_and(|d| d > spawned.depth)
            && self.explicit_mode
            && self.config.mode == Mode::Parent;
        if nested_parent {
            return Ok(());
        }
        let asked = self.config.mode;
        self.config.apply_lookup(&|k| std::env::var(k).ok())?;
        for o in &self.overrides {
            o(&mut self.config);
        }
        if asked != Mode::Runner {
            tracing::warn!(
                target: "flame",
                asked = %asked,
                parent = %spawned.parent_id,
                depth = spawned.depth,
                "this process was started by a flame parent as a runner: serving as a runner (a runner never starts runners)"
            );
        }
        self.config.mode = Mode::Runner;
        self.env_mode = true;
        Ok(())
    }

    /// Sets the default call timeout.
    pub fn request_timeout(self, timeout: Duration) -> Self {
        self.set(move |c| c.request_timeout = timeout)
    }

    /// Sets static runner URLs for parent mode.
    pub fn runner_urls(self, urls: Vec<String>) -> Self {
        self.set(move |c| c.runner_urls = urls.clone())
    }

    /// Names the application (labels runners; defaults to the executable's name).
    pub fn app(mut self, name: impl Into<String>) -> Self {
        self.app = Some(name.into());
        self
    }

    /// Declares an elastic pool grown through the backend.
    pub fn pool(mut self, name: impl Into<String>, config: PoolConfig) -> Self {
        self.pool_configs.push((name.into(), config));
        self
    }

    /// Adds a ready-made pool (e.g. a [`StaticPool`]); it wins over a declared pool of the
    /// same name.
    pub fn with_pool(mut self, pool: Arc<dyn Pool>) -> Self {
        self.pools.push(pool);
        self
    }

    /// Sets the backend elastic pools start runners with.
    pub fn backend(mut self, backend: impl Backend) -> Self {
        self.backend = Some(Arc::new(backend));
        self
    }

    /// Sets an already shared backend (e.g. one a test keeps a handle to).
    pub fn backend_shared(mut self, backend: Arc<dyn Backend>) -> Self {
        self.backend = Some(backend);
        self
    }

    /// Sets the parent-side transport.
    pub fn transport(mut self, transport: Arc<dyn Transport>) -> Self {
        self.transport = Some(transport);
        self
    }

    /// Sets the runner-side server.
    pub fn server(mut self, server: Arc<dyn RunnerServer>) -> Self {
        self.server = Some(server);
        self
    }

    /// Reads `FLAME_*` variables (DESIGN.md §1); values set in code win. A malformed value is a
    /// `CONFIG` error.
    pub fn from_env(mut self) -> Result<Self> {
        self.config.apply_lookup(&|k| std::env::var(k).ok())?;
        let set = |k: &str| std::env::var(k).is_ok_and(|v| !v.trim().is_empty());
        self.env_mode |= set("FLAME_MODE") || (set("FLAME_RUNNER") && self.config.mode == Mode::Runner);
        for o in &self.overrides {
            o(&mut self.config);
        }
        self.resolve_mode();
        Ok(self)
    }

    /// The configuration as it stands.
    pub fn current_config(&self) -> &Config {
        &self.config
    }

    /// Builds the handle for local or parent mode. In runner mode, serves handlers until the
    /// server stops, then exits the process (a runner exists to serve): use
    /// [`FlameBuilder::serve_runner`] to get control back instead.
    pub async fn start(mut self) -> Result<Flame> {
        self.enforce_runner_identity()?;
        if self.config.mode == Mode::Runner {
            self.serve(true).await?;
            std::process::exit(0);
        }
        let handle_signals = self.handle_signals;
        let flame = self.build()?;
        if let (Some(backend), Some(scope)) = (flame.inner.backend.clone(), flame.reap_scope()) {
            tokio::spawn(async move {
                if let Err(e) = backend.reap(&scope).await {
                    tracing::warn!(target: "flame::pool", error = %e, "reaping runners of an earlier parent failed");
                }
            });
            if handle_signals {
                flame.shutdown_on_signal();
            }
        }
        Ok(flame)
    }

    /// Runner mode: serves the registry through the configured server until it stops: told
    /// to by `SIGTERM`/Ctrl-C (it drains first), or by the no-orphan failsafe when the parent
    /// is gone (see [`crate::runner::failsafe`]; only runners started with `FLAME_PARENT_ID`).
    pub async fn serve_runner(mut self) -> Result<()> {
        self.enforce_runner_identity()?;
        self.serve(false).await
    }

    async fn serve(self, exiting: bool) -> Result<()> {
        self.registry.check()?;
        let server = self.server.clone().ok_or_else(|| {
            Error::config("runner mode needs a server: enable the `http` feature of `flame`")
        })?;
        let runner_id = std::env::var("FLAME_RUNNER_ID").unwrap_or_else(|_| uuid::Uuid::new_v4().to_string());
        let dispatcher = Arc::new(
            Dispatcher::new(self.registry, runner_id)
                .with_expose_errors(self.config.expose_errors)
                .with_parent(self.config.parent_id.is_some()),
        );
        let shutdown = CancellationToken::new();
        let watchdog = Failsafe::from_config(&self.config).map(|f| {
            let f = if exiting {
                f.hard_exit_after(Duration::from_secs(10))
            } else {
                f
            };
            f.spawn(dispatcher.clone(), shutdown.clone())
        });
        let signals = {
            let (dispatcher, shutdown) = (dispatcher.clone(), shutdown.clone());
            tokio::spawn(async move {
                let name = terminate_signal().await;
                tracing::info!(target: "flame::runner", signal = name, "draining, then exiting");
                dispatcher.set_draining();
                shutdown.cancel();
            })
        };
        let served = server.serve(dispatcher, &self.config, shutdown.clone()).await;
        signals.abort();
        if let Some(w) = watchdog {
            w.abort();
        }
        served
    }

    /// Builds the handle without serving (local and parent modes; runner mode builds a handle
    /// whose calls run locally).
    pub fn build(mut self) -> Result<Flame> {
        self.enforce_runner_identity()?;
        self.registry.check()?;
        if let Some(depth) = self.nested_depth {
            if depth > spawn_guard::MAX_NESTING_DEPTH {
                return Err(Error::config(format!(
                    "allow_nested({depth}): nested pools are capped at spawn depth {}",
                    spawn_guard::MAX_NESTING_DEPTH
                )));
            }
        }
        let mut pools: HashMap<String, Arc<dyn Pool>> = HashMap::new();
        let parent_id = uuid::Uuid::new_v4().to_string();
        let app = self.app.clone().unwrap_or_else(default_app_name);
        let mut elastic_backend = None;
        let mut max_boot = Duration::ZERO;
        if self.config.mode == Mode::Parent {
            let transport_needed = self.transport.is_none();
            if transport_needed {
                return Err(Error::config(
                    "parent mode needs a transport: enable the `http` feature of `flame`",
                ));
            }
            let max_conc = |name: &str| {
                self.pool_configs
                    .iter()
                    .find(|(n, _)| n == name)
                    .map(|(_, c)| c.max_concurrency)
                    .unwrap_or(100)
            };
            if !self.config.runner_urls.is_empty() {
                let endpoints: Vec<Endpoint> = self
                    .config
                    .runner_urls
                    .iter()
                    .enumerate()
                    .map(|(i, u)| {
                        Endpoint::new(u.clone(), format!("static-{i}"))
                            .with_secret(self.config.secret.clone())
                    })
                    .collect();
                let mut names: Vec<String> = self.pool_configs.iter().map(|(n, _)| n.clone()).collect();
                names.push(self.config.default_pool.clone());
                for name in names {
                    let pool = StaticPool::new(name.clone(), endpoints.clone(), max_conc(&name));
                    pools.insert(name, Arc::new(pool));
                }
            } else {
                let declared = if self.pool_configs.is_empty() {
                    vec![(self.config.default_pool.clone(), PoolConfig::default())]
                } else {
                    self.pool_configs.clone()
                };
                for (name, pool_config) in declared {
                    if self.pools.iter().any(|p| p.name() == name) || pools.contains_key(&name) {
                        continue;
                    }
                    let Some(transport) = self.transport.clone() else {
                        continue;
                    };
                    let backend = elastic_backend
                        .get_or_insert_with(|| {
                            self.backend
                                .clone()
                                .unwrap_or_else(|| Arc::new(LocalProcess::current_exe()))
                        })
                        .clone();
                    let mut template =
                        RunnerTemplate::new(app.clone(), parent_id.clone(), Secret::generate(), transport)
                            .parent_timeout(self.config.parent_timeout);
                    if let Some(depth) = self.nested_depth {
                        template = template.allow_nested(depth)?;
                    }
                    template.env = self.runner_env.clone();
                    max_boot = max_boot.max(pool_config.boot_timeout);
                    let mut builder =
                        ElasticPool::builder(name.clone(), backend, template).config(pool_config);
                    for hook in &self.pool_hooks {
                        builder = builder.on_event_shared(hook.clone());
                    }
                    pools.insert(name, Arc::new(builder.build()?));
                }
            }
        }
        for pool in self.pools {
            pools.insert(pool.name().to_owned(), pool);
        }
        Ok(Flame {
            inner: Arc::new(Inner {
                registry: Arc::new(self.registry),
                config: self.config,
                pools,
                transport: self.transport,
                in_flight: AtomicUsize::new(0),
                drained: Notify::new(),
                closed: AtomicBool::new(false),
                backend: elastic_backend,
                app,
                parent_id,
                max_boot,
            }),
        })
    }
}

/// The executable's file name, else `flame`.
fn default_app_name() -> String {
    std::env::current_exe()
        .ok()
        .and_then(|p| p.file_stem().map(|s| s.to_string_lossy().into_owned()))
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "flame".to_owned())
}

/// Waits for Ctrl-C or (on Unix) `SIGTERM`; returns the signal's name.
async fn terminate_signal() -> &'static str {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => tokio::select! {
                _ = tokio::signal::ctrl_c() => "SIGINT",
                _ = term.recv() => "SIGTERM",
            },
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
                "SIGINT"
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
        "SIGINT"
    }
}

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
    inner: Arc<Inner>,
}

struct Inner {
    registry: Arc<Registry>,
    config: Config,
    pools: HashMap<String, Arc<dyn Pool>>,
    transport: Option<Arc<dyn Transport>>,
    in_flight: AtomicUsize,
    drained: Notify,
    closed: AtomicBool,
    /// The backend of the elastic pools, if any (for reap).
    backend: Option<Arc<dyn Backend>>,
    app: String,
    parent_id: String,
    /// The longest boot timeout of the elastic pools (reap gives unanswering runners this
    /// long on top of the failsafe window).
    max_boot: Duration,
}

struct CallGuard<'a>(&'a Inner);

impl Drop for CallGuard<'_> {
    fn drop(&mut self) {
        if self.0.in_flight.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.drained.notify_waiters();
        }
    }
}

impl Flame {
    /// A builder over `registry`, configured with defaults (local mode) until told otherwise.
    pub fn builder(registry: Registry) -> FlameBuilder {
        FlameBuilder {
            registry,
            config: Config::default(),
            overrides: Vec::new(),
            app: None,
            pool_configs: Vec::new(),
            pools: Vec::new(),
            backend: None,
            transport: None,
            server: None,
            explicit_mode: false,
            env_mode: false,
            default_mode: None,
            pool_hooks: Vec::new(),
            handle_signals: true,
            runner_env: BTreeMap::new(),
            nested_depth: None,
        }
    }

    /// What `reap` may end for this parent: runners of this app (never this parent's) that
    /// are provably orphaned, judged with this parent's failsafe window (`FLAME_PARENT_TIMEOUT`)
    /// and boot timeout. `None` without elastic pools (or a transport to probe with).
    pub fn reap_scope(&self) -> Option<ReapScope> {
        let inner = &*self.inner;
        inner.backend.as_ref()?;
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
        let timeout = options
            .timeout
            .or(method.timeout_ms().map(Duration::from_millis))
            .unwrap_or(inner.config.request_timeout);
        let deadline = Instant::now() + timeout;
        match inner.config.mode {
            Mode::Local | Mode::Runner => self.call_local(method, req, options, deadline).await,
            Mode::Parent => self.call_remote(method, req, options, deadline).await,
        }
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
        let ctx = Context::new(uuid::Uuid::new_v4().to_string())
            .with_deadline(Some(deadline))
            .with_idempotency_key(options.idempotency_key)
            .with_trace(options.trace)
            .with_pool(options.pool);
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
        deadline: Instant,
    ) -> Result<Resp>
    where
        Req: Serialize + Send + 'static,
        Resp: DeserializeOwned + Send + 'static,
    {
        let timeout = deadline.saturating_duration_since(Instant::now());
        let pool_name = options
            .pool
            .as_deref()
            .or(method.pool())
            .unwrap_or(&self.inner.config.default_pool)
            .to_owned();
        let pool = self.inner.pools.get(&pool_name).ok_or_else(|| {
            Error::new(
                ErrorCode::NoRunner,
                format!("no pool named `{pool_name}` is configured"),
            )
        })?;
        let transport = self
            .inner
            .transport
            .as_ref()
            .ok_or_else(|| Error::config("parent mode needs a transport"))?;
        let mut invocation = Invocation {
            service_id: method.service_id().to_owned(),
            method_id: method.method_id().to_owned(),
            args: codec::encode_args(&req)?,
            deadline: Some(deadline),
            idempotency_key: options.idempotency_key.clone(),
            trace: options.trace.clone(),
            attempt: 1,
        };
        let mut delays = backoff(options.retries);
        loop {
            let err = match attempt(pool.as_ref(), transport.as_ref(), &invocation, deadline, timeout).await {
                Ok(text) => return codec::decode_result(&text),
                Err(e) => e,
            };
            if !safe_to_retry(&err, invocation.idempotency_key.is_some()) {
                return Err(err);
            }
            let Some(delay) = delays.next() else {
                return Err(err);
            };
            if Instant::now() + delay >= deadline {
                return Err(err);
            }
            tracing::debug!(error = %err, attempt = invocation.attempt, ?delay, "flame call retrying");
            tokio::time::sleep(delay).await;
            invocation.attempt += 1;
        }
    }

    /// Stops taking calls, waits for calls in flight, then shuts every pool down (ending its
    /// runners).
    pub async fn shutdown(&self) -> Result<()> {
        let inner = &*self.inner;
        inner.closed.store(true, Ordering::Release);
        loop {
            let drained = inner.drained.notified();
            if inner.in_flight.load(Ordering::Acquire) == 0 {
                break;
            }
            drained.await;
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

/// One attempt: lease a slot, invoke, give the slot back with how it went.
async fn attempt(
    pool: &dyn Pool,
    transport: &dyn Transport,
    invocation: &Invocation,
    deadline: Instant,
    timeout: Duration,
) -> Result<String> {
    let lease = pool
        .checkout(&CheckoutOptions {
            deadline: Some(deadline),
        })
        .await?;
    // The caller waited for a runner to boot: its timeout covers the call, not the boot.
    let rebased;
    let (invocation, deadline) = if lease.fresh_runner() {
        let d = deadline.max(Instant::now() + timeout);
        let mut inv = invocation.clone();
        inv.deadline = Some(d);
        rebased = inv;
        (&rebased, d)
    } else {
        (invocation, deadline)
    };
    let result = tokio::select! {
        r = transport.invoke(lease.endpoint(), invocation) => r,
        _ = lease.lost().cancelled() => Err(Error::transport(format!(
            "runner {} was lost while the call was in flight", lease.endpoint().runner_id
        )).with_retryable(true)),
        _ = tokio::time::sleep_until(deadline) => Err(Error::new(ErrorCode::Timeout, "call ran past its deadline")),
    };
    let outcome = match &result {
        Err(e) if matches!(e.code(), ErrorCode::Transport) => LeaseOutcome::RunnerFailed,
        _ => LeaseOutcome::Done,
    };
    lease.finish(outcome);
    result
}
