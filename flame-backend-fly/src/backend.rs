//! [`FlyBackend`]: runners as Fly Machines.

use crate::api::{
    CreateMachineRequest, FlyApiError, GuestBody, Machine, MachineConfig, MachineState, MachinesClient,
    Restart,
};
use crate::config::FlyConfig;
use async_trait::async_trait;
use flame_core::backend::ReapCandidate;
use flame_core::{
    AddressResolver, Backend, Endpoint, Error, ErrorCode, ReapScope, Result, RunnerAddress, RunnerHandle,
    RunnerState, SpawnRequest,
};
use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::time::Instant;

/// Metadata keys of runner machines (the core label keys with `.` replaced by `_`).
pub mod metadata {
    /// The application name.
    pub const APP: &str = "flame_app";
    /// The pool name.
    pub const POOL: &str = "flame_pool";
    /// The id of the parent that spawned the runner.
    pub const PARENT: &str = "flame_parent";
    /// The runner id.
    pub const RUNNER: &str = "flame_runner";
    /// The parent's own machine id, when the parent runs on Fly.
    pub const PARENT_MACHINE: &str = "flame_parent_machine";
}

/// Runs each runner as a Fly Machine created through the Machines API.
///
/// `spawn` creates the machine (`auto_destroy: true`, restart policy `no`, the `flame_*`
/// metadata, only the runner variables and what the user forwards in its environment) and
/// returns once Fly reports it `started`, with the runner's endpoint at the machine's private
/// 6PN address: core's readiness probe pings it from there. Whatever fails after the machine
/// exists destroys it (`force=true`) before the typed error is returned, and a spawn that is
/// dropped half-way destroys it in the background. `status` is `Stopped` as soon as Fly
/// reports the machine stopping, stopped, failed or gone, and `exit_details` gives its state
/// and its last event (with the exit code, signal and OOM kill of an exit event). `terminate` stops (SIGTERM, then waits up to `stop_timeout` for the drain) and
/// destroys; it is idempotent. `reap` ends only provably orphaned machines of this app
/// ([`flame_core::backend::reap`]), never a runner of another live parent (replicas, rolling
/// deploys): it destroys machines that are stopped (or failed), and stops and destroys those
/// whose runner, probed at the machine's private address (through the address resolver when
/// one is set) without the secret, says its parent has been silent past the failsafe window,
/// or does not answer for that window plus the boot timeout.
///
/// ```no_run
/// # async fn demo() -> Result<(), flame_core::Error> {
/// use flame_backend_fly::{FlyBackend, FlyConfig};
/// let backend = FlyBackend::new(FlyConfig::from_env()?.memory_mb(2048))?;
/// # let _ = backend; Ok(()) }
/// ```
#[derive(Clone)]
pub struct FlyBackend {
    inner: Arc<Inner>,
}

struct Inner {
    config: FlyConfig,
    client: MachinesClient,
    resolver: Option<AddressResolver>,
    /// Machine id → instance id of the runners this backend started (for `wait?state=stopped`).
    instances: Mutex<HashMap<String, String>>,
}

impl fmt::Debug for FlyBackend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FlyBackend")
            .field("config", &self.inner.config)
            .field("custom_resolver", &self.inner.resolver.is_some())
            .finish()
    }
}

impl FlyBackend {
    /// A backend with these settings.
    pub fn new(config: FlyConfig) -> Result<Self> {
        let client = MachinesClient::new(&config)?;
        Ok(FlyBackend {
            inner: Arc::new(Inner {
                config,
                client,
                resolver: None,
                instances: Mutex::new(HashMap::new()),
            }),
        })
    }

    /// A backend configured from the environment ([`FlyConfig::from_env`]).
    pub fn from_env() -> Result<Self> {
        FlyBackend::new(FlyConfig::from_env()?)
    }

    /// Maps each machine to the URL the parent uses instead of `http://[private_ip]:port`
    /// (tests map machines to runners on 127.0.0.1). Returning `None` falls back to the
    /// default.
    pub fn with_resolver(mut self, resolver: AddressResolver) -> Self {
        match Arc::get_mut(&mut self.inner) {
            Some(inner) => inner.resolver = Some(resolver),
            None => {
                // Already shared: build a fresh inner with the same settings.
                if let Ok(b) = FlyBackend::new(self.inner.config.clone()) {
                    self = b.with_resolver(resolver);
                }
            }
        }
        self
    }

    /// The settings.
    pub fn config(&self) -> &FlyConfig {
        &self.inner.config
    }
}

/// The machine name for a runner: `flame-{runner_id}` (the pool's runner ids already start
/// with the pool's name), DNS-safe, at most 63 characters.
fn machine_name(req: &SpawnRequest) -> String {
    let mut name: String = format!("flame-{}", req.runner_id)
        .to_ascii_lowercase()
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .collect();
    while name.contains("--") {
        name = name.replace("--", "-");
    }
    let name: String = name.trim_matches('-').chars().take(63).collect();
    name.trim_end_matches('-').to_owned()
}

fn default_url(addr: &RunnerAddress) -> Option<String> {
    let host = addr.host.as_deref()?;
    Some(if host.contains(':') {
        format!("http://[{host}]:{}", addr.port)
    } else {
        format!("http://{host}:{}", addr.port)
    })
}

fn spawn_timeout(message: String) -> Error {
    Error::new(ErrorCode::SpawnTimeout, message)
}

/// Cleans up after a spawn that fails or is dropped half-way: destroys its machine, or, while
/// the create is still in flight, looks for one carrying the runner's id.
struct SpawnGuard {
    inner: Arc<Inner>,
    runner_id: String,
    machine: Option<String>,
    armed: bool,
}

impl SpawnGuard {
    fn disarm(&mut self) {
        self.armed = false;
    }

    /// Destroys the machine now; the guard stays armed until that is done, so a spawn
    /// dropped during the destroy (core's readiness deadline) still destroys it.
    async fn destroy_now(&mut self) {
        if let Some(id) = self.machine.clone() {
            self.inner.destroy_quietly(&id).await;
        }
        self.machine = None;
        self.armed = false;
    }
}

impl Drop for SpawnGuard {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        let Ok(handle) = tokio::runtime::Handle::try_current() else {
            tracing::warn!(runner = %self.runner_id, "fly: spawn dropped outside a runtime; the runner's failsafe and auto_destroy will end its machine");
            return;
        };
        let inner = self.inner.clone();
        let runner_id = std::mem::take(&mut self.runner_id);
        let machine = self.machine.take();
        tracing::debug!(runner = %runner_id, ?machine, "fly: spawn dropped; cleaning up in the background");
        handle.spawn(async move {
            match machine {
                Some(id) => inner.destroy_quietly(&id).await,
                None => inner.sweep_runner(&runner_id).await,
            }
        });
    }
}

impl Inner {
    fn create_body(&self, req: &SpawnRequest) -> Result<CreateMachineRequest> {
        let cfg = &self.config;
        let secret = req
            .secret
            .as_ref()
            .map(|s| s.expose().to_owned())
            .or_else(|| req.env.get("FLAME_SECRET").cloned())
            .filter(|s| !s.is_empty())
            .ok_or_else(|| {
                Error::config(
                    "the Fly backend needs a secret (FLAME_SECRET or the pool's secret): runners \
                     listen on the Fly private network and must verify who calls them",
                )
            })?;
        // Only what the user forwards (backend-level, then the request's) plus the runner
        // variables; nothing else of the parent's environment.
        let mut env: BTreeMap<String, String> = cfg.env.clone();
        env.extend(req.env.iter().map(|(k, v)| (k.clone(), v.clone())));
        env.insert("FLAME_MODE".into(), "runner".into());
        env.insert("FLAME_LISTEN".into(), format!("[::]:{}", cfg.runner_port));
        env.insert("FLAME_SECRET".into(), secret);
        env.entry("FLAME_PARENT_ID".into())
            .or_insert_with(|| req.parent_id.clone());

        let mut meta: BTreeMap<String, String> = cfg.metadata.clone();
        for (k, v) in &req.labels {
            meta.insert(k.replace('.', "_"), v.clone());
        }
        meta.insert(metadata::APP.into(), req.app.clone());
        meta.insert(metadata::POOL.into(), req.pool.clone());
        meta.insert(metadata::PARENT.into(), req.parent_id.clone());
        meta.insert(metadata::RUNNER.into(), req.runner_id.clone());
        if let Some(parent_machine) = &cfg.parent_machine_id {
            meta.insert(metadata::PARENT_MACHINE.into(), parent_machine.clone());
        }
        Ok(CreateMachineRequest {
            name: machine_name(req),
            region: cfg.region.clone(),
            config: MachineConfig {
                image: cfg.image.clone(),
                init: cfg.init.clone(),
                guest: GuestBody::from(&cfg.guest),
                env,
                auto_destroy: true,
                restart: Restart { policy: "no" },
                metadata: meta,
            },
        })
    }

    /// Stops machine `id` (SIGTERM; waits up to `stop_timeout` for the drain when its
    /// instance is known), then destroys it. `false` when it was already gone.
    async fn stop_and_destroy(&self, id: &str, instance: Option<&str>) -> Result<bool> {
        match self.client.stop(id, "SIGTERM").await {
            Ok(false) => {
                self.client.limiter().forget(id);
                return Ok(false);
            }
            Ok(true) => {
                let grace = self.config.stop_timeout;
                if let (Some(instance), false) = (instance, grace.is_zero()) {
                    let secs = (grace.as_secs_f64().ceil() as u64).clamp(1, 60);
                    match self.client.wait(id, Some(instance), "stopped", secs).await {
                        Ok(true) => {}
                        Ok(false) => tracing::debug!(
                            machine = id,
                            "fly: runner still draining after stop_timeout; forcing"
                        ),
                        Err(e) => {
                            tracing::debug!(machine = id, error = %e, "fly: waiting for stop failed; forcing")
                        }
                    }
                }
            }
            Err(e) => {
                tracing::warn!(machine = id, error = %e, "fly: stop failed; destroying with force")
            }
        }
        self.client.destroy(id).await
    }

    async fn destroy_quietly(&self, id: &str) {
        if let Ok(mut m) = self.instances.lock() {
            m.remove(id);
        }
        match self.client.destroy(id).await {
            Ok(_) => tracing::debug!(machine = %id, "fly: destroyed machine"),
            Err(e) => {
                tracing::warn!(machine = %id, error = %e, "fly: could not destroy machine; its failsafe and auto_destroy remain")
            }
        }
    }

    /// After a create whose outcome is unknown (no reply, 5xx, retried, unreadable reply):
    /// destroys any machine that carries this runner's id.
    async fn sweep_runner(&self, runner_id: &str) {
        match self.client.list(metadata::RUNNER, runner_id).await {
            Ok(machines) => {
                for m in machines {
                    if m.metadata(metadata::RUNNER) == Some(runner_id) && !m.state().is_gone() {
                        self.destroy_quietly(&m.id).await;
                    }
                }
            }
            Err(e) => {
                tracing::warn!(runner = runner_id, error = %e, "fly: could not look for a half-created machine")
            }
        }
    }

    /// Fails when Fly says the machine is dead or gone; returns it when it is alive, `None`
    /// when Fly could not tell by `deadline` (a transient API failure is not a dead machine).
    async fn check_alive(&self, id: &str, during: &str, deadline: Instant) -> Result<Option<Machine>> {
        let got = match tokio::time::timeout_at(deadline, self.client.get(id)).await {
            Ok(Ok(got)) => got,
            Ok(Err(e)) => {
                tracing::debug!(machine = id, error = %e, "fly: could not read the machine's state");
                return Ok(None);
            }
            Err(_) => return Ok(None),
        };
        let state = match got {
            None => "destroyed".to_owned(),
            Some(m) if m.state().is_dead() => m.state.clone(),
            Some(m) => return Ok(Some(m)),
        };
        let st = MachineState::parse(&state);
        let retryable = !matches!(st, MachineState::Failed | MachineState::LaunchFailed);
        let api = FlyApiError {
            operation: "wait",
            http_status: 0,
            fly_status: Some(state.clone()),
            message: format!("machine {id} went `{state}` {during}"),
        };
        Err(Error::backend(api.message.clone(), retryable)
            .with_details(serde_json::json!({
                "backend": "fly", "machine_id": id, "state": state,
            }))
            .with_source(api))
    }

    async fn boot(&self, req: &SpawnRequest, machine: Machine, deadline: Instant) -> Result<RunnerHandle> {
        let id = machine.id.clone();
        let boot = req.boot_timeout;
        let mut private_ip = machine.private_ip.clone();
        // 1. Fly says `started` (the wait long-poll is 1–60 s; 408 means "not yet").
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(spawn_timeout(format!(
                    "fly machine {id} did not reach `started` within {boot:?}"
                )));
            }
            let secs = (left.as_secs_f64().ceil() as u64).clamp(1, 60);
            let waited = tokio::time::timeout_at(
                deadline,
                self.client
                    .wait(&id, machine.instance_id.as_deref(), "started", secs),
            )
            .await;
            match waited {
                Err(_) => {
                    return Err(spawn_timeout(format!(
                        "fly machine {id} did not reach `started` within {boot:?}"
                    )))
                }
                Ok(Ok(true)) => break,
                Ok(Ok(false)) => {
                    if let Some(m) = self.check_alive(&id, "during boot", deadline).await? {
                        private_ip = private_ip.or(m.private_ip);
                    }
                }
                Ok(Err(e)) => {
                    // A wait that errors (Fly answers 400 when the machine can no longer
                    // reach the state): the machine's own state makes the better error.
                    if let Some(m) = self.check_alive(&id, "during boot", deadline).await? {
                        private_ip = private_ip.or(m.private_ip);
                    }
                    if !e.is_retryable() {
                        return Err(e);
                    }
                    tokio::time::sleep(Duration::from_millis(250).min(left)).await;
                }
            }
        }
        if private_ip.is_none() {
            private_ip = self
                .check_alive(&id, "after start", deadline)
                .await?
                .and_then(|m| m.private_ip);
        }
        // 2. Where the runner listens.
        let address = RunnerAddress {
            runner_id: req.runner_id.clone(),
            backend_id: id.clone(),
            host: private_ip,
            port: self.config.runner_port,
        };
        let url = self
            .resolver
            .as_ref()
            .and_then(|r| r(&address))
            .or_else(|| default_url(&address))
            .ok_or_else(|| {
                Error::backend(
                    format!("fly machine {id} has no private_ip to reach the runner at"),
                    true,
                )
            })?;
        // Placed: core's readiness probe pings the runner from here on.
        let endpoint = Endpoint::new(url, req.runner_id.clone()).with_secret(req.secret.clone());
        if let (Some(instance), Ok(mut map)) = (machine.instance_id, self.instances.lock()) {
            map.insert(id.clone(), instance);
        }
        Ok(RunnerHandle {
            runner_id: req.runner_id.clone(),
            backend_id: id,
            endpoint,
        })
    }
}

/// Whether a failed create may have left a machine behind.
fn create_outcome_unknown(e: &Error) -> bool {
    let details = e.details();
    let status = details
        .and_then(|d| d.get("http_status"))
        .and_then(|s| s.as_u64())
        .unwrap_or(0);
    let attempts = details
        .and_then(|d| d.get("attempts"))
        .and_then(|s| s.as_u64())
        .unwrap_or(1);
    !(attempts <= 1 && (400..500).contains(&status))
}

/// When a spawn stops waiting for the engine to place its runner: a little before the boot
/// deadline — a fifth of the boot timeout, between 200 ms and 3 s — so that its own typed
/// error (with what the engine said) and the clean-up of what it started come back before
/// core's readiness routine cuts the spawn off at the deadline. (A spawn cut off anyway still
/// cleans up, from its drop guard.)
fn placement_deadline(boot_timeout: Duration) -> Instant {
    let margin = (boot_timeout / 5).clamp(Duration::from_millis(200), Duration::from_secs(3));
    Instant::now() + boot_timeout.saturating_sub(margin)
}

#[async_trait]
impl Backend for FlyBackend {
    fn name(&self) -> &str {
        "fly"
    }

    async fn spawn(&self, request: SpawnRequest) -> Result<RunnerHandle> {
        let inner = &self.inner;
        let deadline = placement_deadline(request.boot_timeout);
        let body = inner.create_body(&request)?;
        let mut guard = SpawnGuard {
            inner: inner.clone(),
            runner_id: request.runner_id.clone(),
            machine: None,
            armed: true,
        };
        let created = tokio::time::timeout_at(deadline, inner.client.create(&body, deadline)).await;
        let machine = match created {
            Ok(Ok(m)) => m,
            Ok(Err(e)) => {
                guard.disarm();
                if e.code() != ErrorCode::Config && create_outcome_unknown(&e) {
                    inner.sweep_runner(&request.runner_id).await;
                }
                return Err(e);
            }
            Err(_) => {
                guard.disarm();
                inner.sweep_runner(&request.runner_id).await;
                return Err(spawn_timeout(format!(
                    "creating a fly machine for runner {} took longer than {:?}",
                    request.runner_id, request.boot_timeout
                )));
            }
        };
        tracing::info!(machine = %machine.id, runner = %request.runner_id, state = %machine.state, "fly: machine created");
        guard.machine = Some(machine.id.clone());
        match inner.boot(&request, machine, deadline).await {
            Ok(handle) => {
                guard.disarm();
                Ok(handle)
            }
            Err(e) => {
                guard.destroy_now().await;
                Err(e)
            }
        }
    }

    async fn exit_details(&self, handle: &RunnerHandle) -> Option<String> {
        let id = handle.backend_id.as_str();
        match self.inner.client.get(id).await {
            Ok(Some(machine)) => Some(machine.describe()),
            Ok(None) => Some(format!("fly machine {id} is destroyed")),
            Err(e) => {
                tracing::debug!(machine = id, error = %e, "fly: could not read a stopped machine");
                None
            }
        }
    }

    async fn terminate(&self, handle: &RunnerHandle) -> Result<()> {
        let inner = &self.inner;
        let id = handle.backend_id.as_str();
        let instance = inner.instances.lock().ok().and_then(|mut m| m.remove(id));
        inner.stop_and_destroy(id, instance.as_deref()).await.map(|_| ())
    }

    async fn status(&self, handle: &RunnerHandle) -> Result<RunnerState> {
        Ok(match self.inner.client.get(&handle.backend_id).await? {
            None => RunnerState::Stopped,
            Some(m) => match m.state() {
                MachineState::Created | MachineState::Starting => RunnerState::Booting,
                MachineState::Started => RunnerState::Running,
                MachineState::Other(_) => RunnerState::Booting,
                _ => RunnerState::Stopped,
            },
        })
    }

    async fn reap(&self, scope: &ReapScope) -> Result<usize> {
        let inner = &self.inner;
        let machines = inner.client.list(metadata::APP, &scope.app).await?;
        let mut candidates = Vec::new();
        let mut instances: HashMap<String, String> = HashMap::new();
        for m in machines {
            // The filter is Fly's; check it again.
            if m.metadata(metadata::APP) != Some(scope.app.as_str()) {
                continue;
            }
            let Some(state) = reap_state(&m.state()) else {
                continue;
            };
            let parent = m.metadata(metadata::PARENT).map(str::to_owned);
            let runner_id = m
                .metadata(metadata::RUNNER)
                .map(str::to_owned)
                .unwrap_or_else(|| m.id.clone());
            let no_probe =
                state == RunnerState::Stopped || parent.as_deref().map_or(true, |p| p == scope.live_parent);
            let endpoint = if no_probe {
                None
            } else {
                let address = RunnerAddress {
                    runner_id: runner_id.clone(),
                    backend_id: m.id.clone(),
                    host: m.private_ip.clone(),
                    port: inner.config.runner_port,
                };
                match inner
                    .resolver
                    .as_ref()
                    .and_then(|r| r(&address))
                    .or_else(|| default_url(&address))
                {
                    Some(url) => Some(Endpoint::new(url, runner_id.clone())),
                    None => {
                        // No address to probe: nothing proves it orphaned. Its runner's
                        // failsafe and `auto_destroy` end it if its parent is gone.
                        tracing::debug!(machine = %m.id, runner = %runner_id, "fly: reap spares a machine without a private_ip");
                        continue;
                    }
                }
            };
            if let Some(instance) = &m.instance_id {
                instances.insert(m.id.clone(), instance.clone());
            }
            candidates.push(ReapCandidate::new(
                runner_id,
                m.id.clone(),
                parent,
                state,
                endpoint,
            ));
        }
        let chosen = scope.select(candidates).await;
        let mut ends = tokio::task::JoinSet::new();
        for (c, reason) in chosen {
            let inner = inner.clone();
            let instance = instances.remove(&c.backend_id);
            ends.spawn(async move {
                let result = if c.state == RunnerState::Stopped {
                    // Nothing runs there any more: only the machine is left.
                    inner.client.destroy(&c.backend_id).await
                } else {
                    inner.stop_and_destroy(&c.backend_id, instance.as_deref()).await
                };
                (c, reason, result)
            });
        }
        let mut ended = 0;
        let mut first_error: Option<Error> = None;
        while let Some(joined) = ends.join_next().await {
            let (c, reason, result) = match joined {
                Ok(done) => done,
                Err(e) => {
                    first_error.get_or_insert(Error::backend(format!("a fly reap task failed: {e}"), true));
                    continue;
                }
            };
            match result {
                Ok(true) => {
                    tracing::info!(machine = %c.backend_id, runner = %c.runner_id, parent = ?c.parent_id, %reason, "fly: reaped an orphaned runner");
                    ended += 1;
                }
                Ok(false) => {}
                Err(e) => {
                    tracing::warn!(machine = %c.backend_id, error = %e, "fly: reap could not destroy an orphaned runner");
                    first_error.get_or_insert(e);
                }
            }
        }
        match first_error {
            Some(e) => Err(e.context(format!("fly reap ended {ended} machines, then failed"))),
            None => Ok(ended),
        }
    }
}

/// A machine as `reap` sees it: its candidate state, unless `reap` has no business with it.
fn reap_state(state: &MachineState) -> Option<RunnerState> {
    match state {
        MachineState::Created | MachineState::Starting | MachineState::Other(_) => Some(RunnerState::Booting),
        MachineState::Started => Some(RunnerState::Running),
        MachineState::Stopped
        | MachineState::Suspended
        | MachineState::Failed
        | MachineState::Replaced
        | MachineState::LaunchFailed => Some(RunnerState::Stopped),
        // Being stopped (perhaps drained by its own live parent) or destroyed already: leave
        // it to whoever is ending it.
        MachineState::Stopping | MachineState::Destroying | MachineState::Destroyed => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use flame_core::backend::labels;

    fn request(pool: &str, runner: &str) -> SpawnRequest {
        SpawnRequest {
            runner_id: runner.into(),
            app: "app".into(),
            pool: pool.into(),
            parent_id: "p".into(),
            env: BTreeMap::new(),
            labels: BTreeMap::new(),
            boot_timeout: Duration::from_secs(1),
            secret: None,
        }
    }

    #[test]
    fn machine_names_are_dns_safe_and_bounded() {
        assert_eq!(
            machine_name(&request("default", "Default_r1")),
            "flame-default-r1"
        );
        let long = "x".repeat(80);
        let name = machine_name(&request("gpu", &long));
        assert!(name.len() <= 63 && name.starts_with("flame-x"), "{name}");
    }

    #[test]
    fn metadata_keys_are_the_core_labels_with_underscores() {
        for (label, key) in [
            (labels::APP, metadata::APP),
            (labels::POOL, metadata::POOL),
            (labels::PARENT, metadata::PARENT),
            (labels::RUNNER, metadata::RUNNER),
        ] {
            assert_eq!(label.replace('.', "_"), key);
        }
    }

    #[test]
    fn default_url_brackets_ipv6() {
        let mut a = RunnerAddress {
            runner_id: "r".into(),
            backend_id: "m".into(),
            host: Some("fdaa:0:1::2".into()),
            port: 8080,
        };
        assert_eq!(default_url(&a).unwrap(), "http://[fdaa:0:1::2]:8080");
        a.host = Some("10.0.0.2".into());
        assert_eq!(default_url(&a).unwrap(), "http://10.0.0.2:8080");
        a.host = None;
        assert_eq!(default_url(&a), None);
    }

    #[test]
    fn reap_states_follow_the_machine_lifecycle() {
        for s in ["created", "starting", "whatever-new"] {
            assert_eq!(
                reap_state(&MachineState::parse(s)),
                Some(RunnerState::Booting),
                "{s}"
            );
        }
        assert_eq!(reap_state(&MachineState::Started), Some(RunnerState::Running));
        for s in ["stopped", "suspended", "failed", "replaced", "launch_failed"] {
            assert_eq!(
                reap_state(&MachineState::parse(s)),
                Some(RunnerState::Stopped),
                "{s}"
            );
        }
        for s in ["stopping", "destroying", "destroyed"] {
            assert_eq!(reap_state(&MachineState::parse(s)), None, "{s}");
        }
    }

    #[test]
    fn a_spawn_without_a_secret_is_refused_before_any_api_call() {
        let b = FlyBackend::new(FlyConfig::new("app", "img", "tok")).unwrap();
        let err = b.inner.create_body(&request("p", "r")).unwrap_err();
        assert_eq!(err.code(), ErrorCode::Config);
    }
}
