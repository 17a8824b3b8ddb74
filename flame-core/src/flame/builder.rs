//! [`FlameBuilder`]: registry, pools, backends, transport and configuration, then `start`.

use super::{no_transport, Flame, Inner};
use crate::background::{CastError, CastErrorHook};
use crate::context::SharedState;

use crate::backend::{Backend, LocalProcess};
use crate::call::{BudgetState, RetryPolicy};
use crate::config::{Config, Mode, Secret};
use crate::error::{Error, Result};
use crate::pool::{ElasticPool, Pool, PoolConfig, PoolEvent, PoolEventHook, RunnerTemplate, StaticPool};
use crate::registry::Registry;
use crate::runner::failsafe::Failsafe;
use crate::runner::{Dispatcher, RunnerServer};
use crate::spawn_guard;
use crate::transport::{Endpoint, Transport};
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicUsize};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

type Override = Box<dyn Fn(&mut Config) + Send + Sync>;
/// A pool declared with [`FlameBuilder::pool`] or [`FlameBuilder::pool_with`] (its own backend).
type DeclaredPool = (String, PoolConfig, Option<Arc<dyn Backend>>);
/// Builds the runner state (see [`FlameBuilder::runner_state`]).
type StateInit = Box<dyn FnOnce() -> futures::future::BoxFuture<'static, Result<SharedState>> + Send>;

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
    pool_configs: Vec<DeclaredPool>,
    pools: Vec<Arc<dyn Pool>>,
    backend: Option<Arc<dyn Backend>>,
    state_init: Option<StateInit>,
    shutdown_timeout: Duration,
    transport: Option<Arc<dyn Transport>>,
    server: Option<Arc<dyn RunnerServer>>,
    explicit_mode: bool,
    env_mode: bool,
    default_mode: Option<Mode>,
    pool_hooks: Vec<PoolEventHook>,
    cast_hooks: Vec<CastErrorHook>,
    handle_signals: bool,
    runner_env: BTreeMap<String, String>,
    nested_depth: Option<u32>,
}

impl FlameBuilder {
    /// A builder over `registry` with defaults (see [`Flame::builder`]).
    pub(super) fn new(registry: Registry) -> FlameBuilder {
        FlameBuilder {
            registry,
            config: Config::default(),
            overrides: Vec::new(),
            app: None,
            pool_configs: Vec::new(),
            pools: Vec::new(),
            backend: None,
            state_init: None,
            shutdown_timeout: Duration::from_secs(30),
            transport: None,
            server: None,
            explicit_mode: false,
            env_mode: false,
            default_mode: None,
            pool_hooks: Vec::new(),
            cast_hooks: Vec::new(),
            handle_signals: true,
            runner_env: BTreeMap::new(),
            nested_depth: None,
        }
    }

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

    /// Calls `hook` for every cast ([`Flame::cast`]) that could not be delivered (after its
    /// retries); such failures are also logged with `tracing` (target `flame::cast`).
    pub fn on_cast_error(mut self, hook: impl Fn(&CastError) + Send + Sync + 'static) -> Self {
        self.cast_hooks.push(Arc::new(hook));
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

    /// Sets the default call timeout (the last in the precedence of [`crate::call`]).
    pub fn request_timeout(self, timeout: Duration) -> Self {
        self.set(move |c| c.request_timeout = timeout)
    }

    /// Sets the default retry policy (the last in the precedence of [`crate::call`]).
    pub fn default_retry(self, policy: RetryPolicy) -> Self {
        self.set(move |c| c.retry = policy)
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
        self.pool_configs.push((name.into(), config, None));
        self
    }

    /// Declares an elastic pool grown through a backend of its own — e.g. `default` on
    /// LocalProcess while `gpu` runs on ECS or Docker with other resources. It keeps every
    /// guarantee of the default path: the runner environment, parent id, failsafe, spawn fences,
    /// and reap when a parent starts.
    pub fn pool_with(mut self, name: impl Into<String>, config: PoolConfig, backend: impl Backend) -> Self {
        self.pool_configs
            .push((name.into(), config, Some(Arc::new(backend))));
        self
    }

    /// Builds the runner state once per runner process — in runner mode before the runner
    /// announces itself, in local mode in [`FlameBuilder::start`], never in a parent — and hands
    /// it to every handler as [`Context::state`](crate::Context::state). A failing `init` fails
    /// the runner's boot with its error (the parent sees it in the start's error); the state is
    /// dropped when the runner stops.
    ///
    /// ```no_run
    /// # async fn run(registry: flame_core::Registry) -> flame_core::Result<()> {
    /// struct Model { weights: Vec<f32> }
    /// let flame = flame_core::Flame::builder(registry)
    ///     .runner_state(|| async { Ok(Model { weights: vec![0.5; 1024] }) })
    ///     .start()
    ///     .await?;
    /// # Ok(()) }
    /// ```
    pub fn runner_state<T, F, Fut>(mut self, init: F) -> Self
    where
        T: Send + Sync + 'static,
        F: FnOnce() -> Fut + Send + 'static,
        Fut: std::future::Future<Output = Result<T>> + Send + 'static,
    {
        self.state_init = Some(Box::new(move || {
            Box::pin(async move { init().await.map(|t| Arc::new(t) as SharedState) })
        }));
        self
    }

    /// How long [`Flame::shutdown`] waits for calls in flight — detached background calls
    /// included — before it cancels them. Default 30 s.
    pub fn shutdown_timeout(mut self, timeout: Duration) -> Self {
        self.shutdown_timeout = timeout;
        self
    }

    async fn build_state(&mut self) -> Result<Option<SharedState>> {
        match self.state_init.take() {
            None => Ok(None),
            Some(init) => init().await.map(Some).map_err(|e| {
                let e = Error::new(
                    e.code(),
                    format!("building the runner state failed: {}", e.message()),
                )
                .with_retryable(false);
                tracing::error!(target: "flame::runner", error = %e, "runner state");
                e
            }),
        }
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
        // Local mode runs handlers here: they get the runner state too (a parent never builds it).
        let state = match self.config.mode {
            Mode::Local => self.build_state().await?,
            _ => None,
        };
        let mut flame = self.build()?;
        if let Some(inner) = Arc::get_mut(&mut flame.inner) {
            inner.state = state;
        }
        if let Some(scope) = flame.reap_scope() {
            for backend in flame.inner.backends.clone() {
                let scope = scope.clone();
                tokio::spawn(async move {
                    if let Err(e) = backend.reap(&scope).await {
                        tracing::warn!(target: "flame::pool", backend = backend.name(), error = %e, "reaping runners of an earlier parent failed");
                    }
                });
            }
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

    async fn serve(mut self, exiting: bool) -> Result<()> {
        self.registry.check()?;
        let state = self.build_state().await?;
        let server = self.server.clone().ok_or_else(|| {
            Error::config(
                "runner mode needs a server: build with `flame::builder(registry)` (HTTP, the `http` feature, on by default) \
                 or give one with `.server(..)` (e.g. `flame_http::HttpExt::http`)",
            )
        })?;
        let runner_id = std::env::var("FLAME_RUNNER_ID").unwrap_or_else(|_| uuid::Uuid::new_v4().to_string());
        let dispatcher = Arc::new(
            Dispatcher::new(self.registry, runner_id)
                .with_expose_errors(self.config.expose_errors)
                .with_parent(self.config.parent_id.is_some())
                .with_state(state),
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
        let mut backends: Vec<Arc<dyn Backend>> = Vec::new();
        let mut max_boot = Duration::ZERO;
        if self.config.mode == Mode::Parent {
            let transport_needed = self.transport.is_none();
            if transport_needed {
                return Err(no_transport());
            }
            let declared = |name: &str| {
                self.pool_configs
                    .iter()
                    .find(|(n, _, _)| n == name)
                    .map(|(_, c, _)| c.clone())
                    .unwrap_or_default()
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
                let mut names: Vec<String> = self.pool_configs.iter().map(|(n, _, _)| n.clone()).collect();
                names.push(self.config.default_pool.clone());
                for name in names {
                    let config = declared(&name);
                    let pool = StaticPool::new(name.clone(), endpoints.clone(), config.max_concurrency)
                        .with_call_defaults(config.call_defaults());
                    pools.insert(name, Arc::new(pool));
                }
            } else {
                let declared = if self.pool_configs.is_empty() {
                    vec![(self.config.default_pool.clone(), PoolConfig::default(), None)]
                } else {
                    self.pool_configs.clone()
                };
                let default_backend = self
                    .backend
                    .clone()
                    .unwrap_or_else(|| Arc::new(LocalProcess::current_exe()));
                for (name, pool_config, own_backend) in declared {
                    if self.pools.iter().any(|p| p.name() == name) || pools.contains_key(&name) {
                        continue;
                    }
                    let Some(transport) = self.transport.clone() else {
                        continue;
                    };
                    let backend = own_backend.unwrap_or_else(|| default_backend.clone());
                    if !backends.iter().any(|b| Arc::ptr_eq(b, &backend)) {
                        backends.push(backend.clone());
                    }
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
        let budgets = pools.keys().map(|n| (n.clone(), BudgetState::new())).collect();
        Ok(Flame {
            inner: Arc::new(Inner {
                budgets,
                registry: Arc::new(self.registry),
                config: self.config,
                pools,
                transport: self.transport,
                in_flight: AtomicUsize::new(0),
                drained: Notify::new(),
                closed: AtomicBool::new(false),
                backends,
                app,
                parent_id,
                max_boot,
                shutdown_timeout: self.shutdown_timeout,
                cast_hooks: self.cast_hooks,
                state: None,
                background: CancellationToken::new(),
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
pub(crate) async fn terminate_signal() -> &'static str {
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
