//! The [`DockerBackend`]: runners as containers.

use crate::config::{
    Gpus, Limits, Network, PullPolicy, DEFAULT_API_TIMEOUT, DEFAULT_RUNNER_PORT, DEFAULT_STOP_GRACE,
};
use crate::detect;
use crate::error::{engine_error, is_conflict, is_not_found, status_of};
use crate::watch::{self, LogStream, Watched, Watches, TAIL_LINES};
use async_trait::async_trait;
use bollard::container::LogOutput;
use bollard::models::{
    ContainerCreateBody, ContainerStateStatusEnum, ContainerSummaryStateEnum, DeviceRequest, HostConfig,
    HostConfigLogConfig,
};
use bollard::query_parameters::{
    CreateContainerOptionsBuilder, CreateImageOptionsBuilder, ListContainersOptionsBuilder,
    LogsOptionsBuilder, RemoveContainerOptionsBuilder, StopContainerOptionsBuilder,
};
use bollard::Docker;
use flame_core::backend::{labels, ReapCandidate};
use flame_core::{
    AddressResolver, Backend, Endpoint, Error, ErrorCode, ReapScope, Result, RunnerAddress, RunnerHandle,
    RunnerState, SpawnRequest,
};
use futures::StreamExt;
use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::OnceCell;
use tokio::time::Instant;

/// The default socket, as the Docker CLI uses it when `DOCKER_HOST` is unset.
const DEFAULT_HOST: &str = "unix:///var/run/docker.sock";

/// How long past its boot window a runner's exit is still watched for (core's readiness
/// probe shares that window; a little more lets it ask for the details at its very end).
const WATCH_MARGIN: Duration = Duration::from_secs(5);

/// Builds a [`DockerBackend`]; start with [`DockerBackend::builder`].
#[derive(Clone)]
pub struct DockerBackendBuilder {
    host: Option<String>,
    image: Option<String>,
    use_own_image: bool,
    command: Option<Vec<String>>,
    forward_env: Vec<String>,
    env: BTreeMap<String, String>,
    limits: Limits,
    gpus: Option<Gpus>,
    network: Network,
    runner_port: u16,
    labels: BTreeMap<String, String>,
    pull_policy: PullPolicy,
    stop_grace: Duration,
    api_timeout: Duration,
    init: bool,
    log_driver: Option<String>,
    log_options: BTreeMap<String, String>,
    resolver: Option<AddressResolver>,
}

impl fmt::Debug for DockerBackendBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DockerBackendBuilder")
            .field("host", &self.host)
            .field("image", &self.image)
            .field("use_own_image", &self.use_own_image)
            .field("network", &self.network)
            .field("pull_policy", &self.pull_policy)
            .finish_non_exhaustive()
    }
}

impl DockerBackendBuilder {
    /// The engine to talk to, e.g. `unix:///var/run/docker.sock` or `tcp://127.0.0.1:2375`.
    /// Default: `DOCKER_HOST`, else the local socket, as the Docker CLI does.
    pub fn docker_host(mut self, host: impl Into<String>) -> Self {
        self.host = Some(host.into());
        self
    }

    /// The runner image when the parent does not itself run in a container (or when
    /// [`DockerBackendBuilder::use_own_image`] is off).
    pub fn image(mut self, image: impl Into<String>) -> Self {
        self.image = Some(image.into());
        self
    }

    /// Whether a parent that runs in a container starts runners from its own image, with the
    /// image's own command (default `true`). The backend finds its container through its cgroup,
    /// mount table and hostname, and asks dockerd about it.
    pub fn use_own_image(mut self, yes: bool) -> Self {
        self.use_own_image = yes;
        self
    }

    /// Replaces the image's command (`CMD`) for runners. By default runners run the image's
    /// own command, with `FLAME_MODE=runner` in the environment.
    pub fn command<I, S>(mut self, command: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.command = Some(command.into_iter().map(Into::into).collect());
        self
    }

    /// Names of the parent's environment variables to copy into every runner (runners do not
    /// inherit the parent's environment otherwise).
    pub fn forward_env<I, S>(mut self, names: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.forward_env.extend(names.into_iter().map(Into::into));
        self
    }

    /// Sets one environment variable for every runner (the runner variables flame sets, such as
    /// `FLAME_MODE`, win over it).
    pub fn env(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.env.insert(name.into(), value.into());
        self
    }

    /// Memory limit of each runner, in bytes (`--memory`).
    pub fn memory_bytes(mut self, bytes: i64) -> Self {
        self.limits.memory_bytes = Some(bytes);
        self
    }

    /// CPU limit of each runner, in CPUs (`--cpus`, e.g. `1.5`).
    pub fn cpus(mut self, cpus: f64) -> Self {
        self.limits.nano_cpus = Some((cpus * 1e9).round() as i64);
        self
    }

    /// GPUs for each runner: a Docker device request with capability `gpu`, as
    /// `docker run --gpus` makes it (the engine needs a GPU runtime such as
    /// nvidia-container-toolkit; without one, spawn fails with a non-retryable `BACKEND` error).
    pub fn gpus(mut self, gpus: Gpus) -> Self {
        self.gpus = Some(gpus);
        self
    }

    /// The network runners join (default [`Network::Host`]).
    pub fn network(mut self, network: Network) -> Self {
        self.network = network;
        self
    }

    /// The port runners listen on inside a [`Network::Named`] network (default 8080).
    pub fn runner_port(mut self, port: u16) -> Self {
        self.runner_port = port;
        self
    }

    /// Adds a label to every runner container (the `flame.*` labels are always set and win).
    pub fn label(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.labels.insert(key.into(), value.into());
        self
    }

    /// When to pull the image (default [`PullPolicy::IfMissing`]; the parent's own image is
    /// never pulled).
    pub fn pull_policy(mut self, policy: PullPolicy) -> Self {
        self.pull_policy = policy;
        self
    }

    /// How long `terminate` lets a runner drain after SIGTERM before SIGKILL (default 10 s;
    /// whole seconds, rounded up).
    pub fn stop_grace(mut self, grace: Duration) -> Self {
        self.stop_grace = grace;
        self
    }

    /// Whether runners get Docker's init process as PID 1 (`docker run --init`, default
    /// `true`), which forwards `terminate`'s SIGTERM to the runner and reaps zombies. Turn it
    /// off for an engine without `docker-init`.
    pub fn init(mut self, yes: bool) -> Self {
        self.init = yes;
        self
    }

    /// The logging driver of runner containers (`--log-driver`; default: the engine's). The
    /// backend reads the runner's `FLAME_READY <url>` line from its logs, so with
    /// [`Network::Host`] the driver must be readable (`json-file`, `local`, or any driver with
    /// Docker's dual logging); on a [`Network::Named`] network an unreadable driver (`none`)
    /// works too, as the runner's port is known.
    pub fn log_driver(mut self, driver: impl Into<String>) -> Self {
        self.log_driver = Some(driver.into());
        self
    }

    /// An option of the logging driver (`--log-opt key=value`, e.g. `max-size=10m`).
    pub fn log_option(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.log_options.insert(key.into(), value.into());
        self
    }

    /// Bound on each dockerd request (default 60 s; `terminate`'s stop gets the stop grace on
    /// top).
    pub fn api_timeout(mut self, timeout: Duration) -> Self {
        self.api_timeout = timeout;
        self
    }

    /// Maps each started runner to the URL the parent uses (DESIGN.md §6), overriding the
    /// announced URL or container address.
    pub fn address_resolver(mut self, resolver: AddressResolver) -> Self {
        self.resolver = Some(resolver);
        self
    }

    /// Builds the backend. No request goes to dockerd until the first operation; an
    /// unsupported `DOCKER_HOST` scheme is a `CONFIG` error here.
    pub fn build(self) -> Result<DockerBackend> {
        let host = self
            .host
            .clone()
            .or_else(|| std::env::var("DOCKER_HOST").ok().filter(|h| !h.trim().is_empty()))
            .unwrap_or_else(|| DEFAULT_HOST.to_owned());
        let supported = ["unix://", "tcp://", "http://"];
        if !supported.iter().any(|s| host.starts_with(s)) {
            return Err(Error::config(format!(
                "DOCKER_HOST={host:?} is not supported: use unix:///path/docker.sock or tcp://host:port"
            )));
        }
        if let Network::Named(name) = &self.network {
            if name.trim().is_empty() {
                return Err(Error::config("the runner network name is empty"));
            }
        }
        if !self.use_own_image && self.image.is_none() {
            return Err(Error::config(
                "the Docker backend needs a runner image: call DockerBackendBuilder::image",
            ));
        }
        Ok(DockerBackend {
            inner: Arc::new(Inner {
                host,
                settings: self,
                client: OnceCell::new(),
                target: OnceCell::new(),
                watches: Arc::default(),
            }),
        })
    }
}

/// A [`Backend`] that runs each runner as a Docker container, through dockerd's API
/// ([bollard]).
///
/// - **Image and command.** A parent that runs in a container starts runners from its own
///   image with its own command; otherwise from [`DockerBackendBuilder::image`] with the
///   image's command. `FLAME_MODE=runner` and the other runner variables are added to the
///   environment, with the variables the user forwards.
/// - **Labels.** Every container carries `flame.app`, `flame.pool`, `flame.parent` and
///   `flame.runner`, and `AutoRemove`, so a runner that exits is gone.
/// - **Reap** ends only provably orphaned runners of the app ([`flame_core::backend::reap`]),
///   never a live parent's (replicas, rolling deploys): exited containers, containers created
///   but never started for longer than the unreachable window, and running ones whose
///   unauthenticated health answer says their parent has been silent past the failsafe
///   window, or that do not answer at all for the unreachable window. It finds each runner's
///   address as spawn does: the `FLAME_READY <url>` line read back from the container's log
///   (host networking), or its address on the named network, through the address resolver
///   when one is set. A runner whose address it cannot learn (its log rotated the line away)
///   is spared: its own failsafe ends it when its parent is gone.
/// - **Address.** The runner's URL comes from its `FLAME_READY <url>` line in the container's
///   log stream ([`Network::Host`]), or from its address on a [`Network::Named`] network; the
///   address resolver overrides either.
/// - **Errors.** dockerd errors become `BACKEND` errors with the engine's message, retryable
///   where a retry can help.
///
/// Cheap to clone.
#[derive(Clone)]
pub struct DockerBackend {
    inner: Arc<Inner>,
}

struct Inner {
    host: String,
    settings: DockerBackendBuilder,
    client: OnceCell<Docker>,
    target: OnceCell<Target>,
    /// What spawn saw of booting runners, for [`Backend::exit_details`].
    watches: Arc<Watches>,
}

/// What runners run: an image, and optionally the command to run in it.
#[derive(Debug, Clone)]
struct Target {
    image: String,
    entrypoint: Option<Vec<String>>,
    cmd: Option<Vec<String>>,
    own: bool,
}

impl fmt::Debug for DockerBackend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DockerBackend")
            .field("host", &self.inner.host)
            .field("settings", &self.inner.settings)
            .finish()
    }
}

impl DockerBackend {
    /// A builder with the defaults: `DOCKER_HOST` or the local socket, the parent's own image
    /// when it runs in a container, host networking, pull if missing, 10 s stop grace.
    pub fn builder() -> DockerBackendBuilder {
        DockerBackendBuilder {
            host: None,
            image: None,
            use_own_image: true,
            command: None,
            forward_env: Vec::new(),
            env: BTreeMap::new(),
            limits: Limits::default(),
            gpus: None,
            network: Network::Host,
            runner_port: DEFAULT_RUNNER_PORT,
            labels: BTreeMap::new(),
            pull_policy: PullPolicy::IfMissing,
            stop_grace: DEFAULT_STOP_GRACE,
            api_timeout: DEFAULT_API_TIMEOUT,
            init: true,
            log_driver: None,
            log_options: BTreeMap::new(),
            resolver: None,
        }
    }

    /// A backend running `image` with every other setting at its default (the parent's own
    /// image still wins when the parent runs in a container).
    pub fn new(image: impl Into<String>) -> Result<DockerBackend> {
        DockerBackend::builder().image(image).build()
    }

    /// The engine address this backend talks to (`unix://…` or `tcp://…`).
    pub fn docker_host(&self) -> &str {
        &self.inner.host
    }

    /// The image runners are started from: the parent's own image when it runs in a container
    /// (and [`DockerBackendBuilder::use_own_image`] is on), else the configured one.
    pub async fn runner_image(&self) -> Result<String> {
        let docker = self.client().await?;
        Ok(self.target(&docker).await?.image.clone())
    }

    /// Checks that dockerd answers (`GET /_ping`).
    pub async fn ping_engine(&self) -> Result<()> {
        let docker = self.client().await?;
        self.call("ping dockerd", docker.ping()).await.map(|_| ())
    }

    /// Connects (once) and negotiates the API version with the engine.
    async fn client(&self) -> Result<Docker> {
        let host = &self.inner.host;
        let timeout = self.inner.settings.api_timeout;
        // `stop` answers only once the container stopped: allow the grace time on top.
        let request_timeout = timeout + self.stop_grace_secs_duration();
        self.inner
            .client
            .get_or_try_init(|| async {
                let docker = Docker::connect_with_host(host)
                    .map_err(|e| engine_error("connect", host, e))?
                    .with_timeout(request_timeout);
                match tokio::time::timeout(timeout, docker.negotiate_version()).await {
                    Ok(Ok(docker)) => Ok(docker),
                    Ok(Err(e)) => Err(engine_error("negotiate the API version", host, e)),
                    Err(_) => Err(engine_error(
                        "negotiate the API version",
                        host,
                        bollard::errors::Error::RequestTimeoutError,
                    )),
                }
            })
            .await
            .cloned()
    }

    /// Runs one dockerd request, bounded by the API timeout, mapping its error.
    async fn call<T>(
        &self,
        op: &str,
        fut: impl std::future::Future<Output = std::result::Result<T, bollard::errors::Error>>,
    ) -> Result<T> {
        self.call_raw(op, fut)
            .await?
            .map_err(|e| engine_error(op, &self.inner.host, e))
    }

    /// Like [`DockerBackend::call`], but hands back the engine's error for the caller to look
    /// at (404 and 409 are fine in some places).
    async fn call_raw<T>(
        &self,
        op: &str,
        fut: impl std::future::Future<Output = std::result::Result<T, bollard::errors::Error>>,
    ) -> Result<std::result::Result<T, bollard::errors::Error>> {
        let bound = self.inner.settings.api_timeout + self.stop_grace_secs_duration();
        tokio::time::timeout(bound, fut)
            .await
            .map_err(|_| engine_error(op, &self.inner.host, bollard::errors::Error::RequestTimeoutError))
    }

    fn stop_grace_secs(&self) -> i32 {
        let grace = self.inner.settings.stop_grace;
        let secs = grace.as_secs() + u64::from(grace.subsec_nanos() > 0);
        i32::try_from(secs).unwrap_or(i32::MAX)
    }

    fn stop_grace_secs_duration(&self) -> Duration {
        Duration::from_secs(self.stop_grace_secs().max(0) as u64)
    }

    /// Finds what runners run (once): the parent's own container, else the configured image.
    async fn target(&self, docker: &Docker) -> Result<&Target> {
        self.inner
            .target
            .get_or_try_init(|| async {
                let s = &self.inner.settings;
                if s.use_own_image {
                    if let Some(own) = self.own_container(docker).await? {
                        tracing::debug!(image = %own.image, "flame docker: runners use the parent's own image");
                        return Ok(Target {
                            cmd: s.command.clone(),
                            ..own
                        });
                    }
                }
                let image = s.image.clone().ok_or_else(|| {
                    Error::config(
                        "the parent does not run in a container and no runner image is configured: \
                         call DockerBackendBuilder::image",
                    )
                })?;
                Ok(Target {
                    image,
                    entrypoint: None,
                    cmd: s.command.clone(),
                    own: false,
                })
            })
            .await
    }

    /// This process's own container, if it runs in one that this engine knows.
    async fn own_container(&self, docker: &Docker) -> Result<Option<Target>> {
        let hostname = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
        let hostname = hostname.trim();
        for candidate in detect::own_container_candidates() {
            let found = self
                .call_raw(
                    "inspect the parent's own container",
                    docker.inspect_container(&candidate, None),
                )
                .await?;
            let info = match found {
                Ok(info) => info,
                Err(e) if is_not_found(&e) => continue,
                Err(e) => {
                    return Err(engine_error(
                        "inspect the parent's own container",
                        &self.inner.host,
                        e,
                    ))
                }
            };
            let id = info.id.clone().unwrap_or_default();
            let config = info.config.clone().unwrap_or_default();
            // A candidate found by hostname must really be this container, not one that
            // happens to be named like this host.
            let same = id.starts_with(&candidate)
                || config.hostname.as_deref() == Some(hostname) && !hostname.is_empty();
            let Some(image) = info.image.clone().filter(|_| same) else {
                continue;
            };
            // The image's own command: the parent's container may run with extra arguments,
            // but a runner is told what it is by `FLAME_MODE=runner`.
            return Ok(Some(Target {
                image,
                entrypoint: None,
                cmd: None,
                own: true,
            }));
        }
        Ok(None)
    }

    /// Applies the pull policy to `target`.
    async fn ensure_image(&self, docker: &Docker, target: &Target) -> Result<()> {
        if target.own {
            return Ok(());
        }
        let pull = match self.inner.settings.pull_policy {
            PullPolicy::Never => false,
            PullPolicy::Always => true,
            PullPolicy::IfMissing => {
                match self
                    .call_raw("inspect the runner image", docker.inspect_image(&target.image))
                    .await?
                {
                    Ok(_) => false,
                    Err(e) if is_not_found(&e) => true,
                    Err(e) => return Err(engine_error("inspect the runner image", &self.inner.host, e)),
                }
            }
        };
        if !pull {
            return Ok(());
        }
        let (name, tag) = detect::split_image(&target.image);
        let mut options = CreateImageOptionsBuilder::new().from_image(&name);
        if !tag.is_empty() {
            options = options.tag(&tag);
        }
        let op = format!("pull the runner image {}", target.image);
        let mut progress = docker.create_image(Some(options.build()), None, None);
        let pulled = async {
            while let Some(item) = progress.next().await {
                item?;
            }
            Ok(())
        };
        self.call(&op, pulled).await
    }

    /// The container to create for `request`.
    fn container_body(&self, request: &SpawnRequest, target: &Target) -> ContainerCreateBody {
        let s = &self.inner.settings;
        let mut env: BTreeMap<String, String> = BTreeMap::new();
        for name in &s.forward_env {
            if let Ok(value) = std::env::var(name) {
                env.insert(name.clone(), value);
            }
        }
        env.extend(s.env.clone());
        env.extend(request.env.clone());
        env.insert("FLAME_MODE".into(), "runner".into());
        env.entry("FLAME_RUNNER_ID".into())
            .or_insert_with(|| request.runner_id.clone());
        env.entry("FLAME_PARENT_ID".into())
            .or_insert_with(|| request.parent_id.clone());
        if let Some(secret) = &request.secret {
            env.entry("FLAME_SECRET".into())
                .or_insert_with(|| secret.expose().to_owned());
        }
        let network_mode = match &s.network {
            Network::Host => {
                env.entry("FLAME_LISTEN".into())
                    .or_insert_with(|| "127.0.0.1:0".into());
                "host".to_owned()
            }
            Network::Named(name) => {
                // The parent reaches the runner at its address on the network.
                env.insert("FLAME_LISTEN".into(), format!("0.0.0.0:{}", s.runner_port));
                name.clone()
            }
        };

        let mut all_labels: HashMap<String, String> = s.labels.clone().into_iter().collect();
        all_labels.extend(request.labels.clone());
        all_labels.insert(labels::APP.into(), request.app.clone());
        all_labels.insert(labels::POOL.into(), request.pool.clone());
        all_labels.insert(labels::PARENT.into(), request.parent_id.clone());
        all_labels.insert(labels::RUNNER.into(), request.runner_id.clone());

        let device_requests = s.gpus.as_ref().map(|gpus| {
            let (count, device_ids) = match gpus {
                Gpus::All => (Some(-1), None),
                Gpus::Count(n) => (Some(i64::from(*n)), None),
                Gpus::Devices(ids) => (None, Some(ids.clone())),
            };
            vec![DeviceRequest {
                // As `docker run --gpus`: no driver named, the engine picks the one that
                // offers the `gpu` capability (nvidia-container-toolkit).
                driver: None,
                count,
                device_ids,
                capabilities: Some(vec![vec!["gpu".into()]]),
                options: None,
            }]
        });

        ContainerCreateBody {
            image: Some(target.image.clone()),
            entrypoint: target.entrypoint.clone(),
            cmd: target.cmd.clone(),
            env: Some(env.into_iter().map(|(k, v)| format!("{k}={v}")).collect()),
            labels: Some(all_labels),
            attach_stdout: Some(true),
            attach_stderr: Some(true),
            tty: Some(false),
            stop_timeout: Some(i64::from(self.stop_grace_secs())),
            host_config: Some(HostConfig {
                auto_remove: Some(true),
                network_mode: Some(network_mode),
                memory: s.limits.memory_bytes,
                nano_cpus: s.limits.nano_cpus,
                device_requests,
                init: Some(s.init),
                log_config: s.log_driver.as_ref().map(|driver| HostConfigLogConfig {
                    typ: Some(driver.clone()),
                    config: (!s.log_options.is_empty()).then(|| s.log_options.clone().into_iter().collect()),
                }),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    /// Follows the container's output until the runner announces `FLAME_READY <url>`, keeping
    /// the lines before it in `watched`; fails if the container ends first. Hands back the URL
    /// and the rest of the stream, or `None`: the container's log driver cannot be read.
    async fn announced_url(
        &self,
        docker: &Docker,
        id: &str,
        watched: &Watched,
    ) -> Result<Option<(String, LogStream)>> {
        let options = LogsOptionsBuilder::new()
            .follow(true)
            .stdout(true)
            .stderr(true)
            .build();
        let mut logs: LogStream = Box::pin(docker.logs(id, Some(options)));
        let mut partial = String::new();
        while let Some(item) = logs.next().await {
            let bytes = match item {
                Ok(LogOutput::StdOut { message })
                | Ok(LogOutput::StdErr { message })
                | Ok(LogOutput::Console { message }) => message,
                Ok(LogOutput::StdIn { .. }) => continue,
                Err(e) if is_not_found(&e) => break,
                // "configured logging driver does not support reading"
                Err(e) if status_of(&e) == Some(501) => {
                    watched.end_logs();
                    return Ok(None);
                }
                Err(e) => return Err(engine_error("follow the runner's output", &self.inner.host, e)),
            };
            partial.push_str(&String::from_utf8_lossy(&bytes));
            while let Some(nl) = partial.find('\n') {
                let line: String = partial.drain(..=nl).collect();
                if let Some(url) = detect::ready_url(&line) {
                    // The rest of this chunk belongs to the tail.
                    for rest in partial.lines().filter(|l| !l.trim().is_empty()) {
                        watched.push_line(rest);
                    }
                    return Ok(Some((url.to_owned(), logs)));
                }
                watched.push_line(&line);
            }
        }
        if !partial.trim().is_empty() {
            if let Some(url) = detect::ready_url(&partial) {
                return Ok(Some((url.to_owned(), logs)));
            }
            watched.push_line(&partial);
        }
        watched.end_logs();
        // The container ended: its exit code is moments away (bounded).
        let progress = watched.settle(Duration::from_secs(1)).await;
        let code = progress
            .exit
            .and_then(|e| e.code)
            .map(|c| format!(" (exit code {c})"))
            .unwrap_or_default();
        Err(Error::backend(
            format!(
                "runner container {} exited before it announced `FLAME_READY <url>`{code}; its last output: {:?}",
                short(id),
                watched.lines().join("\n")
            ),
            false,
        ))
    }

    /// The URL the parent uses for the runner in container `id` that announced `announced`.
    async fn runner_url(
        &self,
        docker: &Docker,
        runner_id: &str,
        id: &str,
        announced: &str,
    ) -> Result<String> {
        let (announced_host, port) = detect::host_port(announced).ok_or_else(|| {
            Error::backend(
                format!(
                    "runner container {} announced a malformed URL {announced:?}",
                    short(id)
                ),
                false,
            )
        })?;
        let (host, url) = match &self.inner.settings.network {
            Network::Host => {
                let host = match announced_host.as_str() {
                    "0.0.0.0" | "::" => "127.0.0.1".to_owned(),
                    _ => announced_host,
                };
                let url = if host.contains(':') {
                    format!("http://[{host}]:{port}")
                } else {
                    format!("http://{host}:{port}")
                };
                (host, url)
            }
            Network::Named(name) => {
                let info = self
                    .call("inspect the runner container", docker.inspect_container(id, None))
                    .await?;
                let ip = info
                    .network_settings
                    .and_then(|n| n.networks)
                    .and_then(|mut n| n.remove(name))
                    .and_then(|e| e.ip_address)
                    .filter(|ip| !ip.is_empty())
                    .ok_or_else(|| {
                        Error::backend(
                            format!(
                                "runner container {} has no address on network {name:?}",
                                short(id)
                            ),
                            false,
                        )
                    })?;
                let url = if ip.contains(':') {
                    format!("http://[{ip}]:{port}")
                } else {
                    format!("http://{ip}:{port}")
                };
                (ip, url)
            }
        };
        if let Some(resolve) = &self.inner.settings.resolver {
            let address = RunnerAddress {
                runner_id: runner_id.to_owned(),
                backend_id: id.to_owned(),
                host: Some(host),
                port,
            };
            if let Some(url) = resolve(&address) {
                return Ok(url);
            }
        }
        Ok(url)
    }

    /// Everything of spawn after the container exists: start it, learn where the runner
    /// listens (its `FLAME_READY <url>` line, or its address on the named network) and keep
    /// reading its output into `watched`. Readiness itself is core's probe. Any error leaves
    /// the container to the caller to remove.
    async fn boot(
        &self,
        docker: &Docker,
        request: &SpawnRequest,
        id: &str,
        deadline: Instant,
        watched: &Arc<Watched>,
        watch_until: Instant,
    ) -> Result<Endpoint> {
        self.call("start the runner container", docker.start_container(id, None))
            .await?;
        let announced = tokio::time::timeout_at(deadline, self.announced_url(docker, id, watched))
            .await
            .map_err(|_| spawn_timeout(request, id, "it did not announce `FLAME_READY <url>`"))??;
        let announced = match (announced, &self.inner.settings.network) {
            (Some((url, rest)), _) => {
                watch::drain(rest, watched, watch_until);
                url
            }
            // Unreadable logs: on a named network the port is known; the probe tells readiness.
            (None, Network::Named(_)) => format!("http://0.0.0.0:{}", self.inner.settings.runner_port),
            (None, Network::Host) => {
                return Err(Error::backend(
                    format!(
                        "the log driver of runner container {} cannot be read, so its `FLAME_READY <url>` \
                         line (and port) is unknown: use a readable log driver (json-file, local, or \
                         dual logging; DockerBackendBuilder::log_driver) or a named network",
                        short(id)
                    ),
                    false,
                ))
            }
        };
        let url = self
            .runner_url(docker, &request.runner_id, id, &announced)
            .await?;
        Ok(Endpoint::new(url, request.runner_id.clone()).with_secret(request.secret.clone()))
    }

    /// Removes container `id` (forced), treating "already gone" and "removal in progress" as
    /// done, then waits (bounded) until dockerd no longer lists it.
    async fn remove(&self, docker: &Docker, id: &str) -> Result<()> {
        let options = RemoveContainerOptionsBuilder::new().force(true).v(true).build();
        match self
            .call_raw(
                "remove the runner container",
                docker.remove_container(id, Some(options)),
            )
            .await?
        {
            Ok(()) => return Ok(()),
            Err(e) if is_not_found(&e) => return Ok(()),
            Err(e) if is_conflict(&e) => {} // AutoRemove is already removing it.
            Err(e) => return Err(engine_error("remove the runner container", &self.inner.host, e)),
        }
        let until = Instant::now() + Duration::from_secs(10);
        while Instant::now() < until {
            match self
                .call_raw("inspect the runner container", docker.inspect_container(id, None))
                .await?
            {
                Err(e) if is_not_found(&e) => return Ok(()),
                _ => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
        Err(Error::backend(
            format!("runner container {} is still being removed after 10 s", short(id)),
            true,
        ))
    }
}

impl DockerBackend {
    /// The `FLAME_READY <url>` line runner container `id` printed at boot, read back from its
    /// log (not followed, at most [`LOG_SCAN_LIMIT`] bytes, bounded by the API timeout).
    /// `None` when the log cannot be read or no longer holds the line (a rotating log driver
    /// dropped it, or the runner never announced).
    async fn logged_url(&self, docker: &Docker, id: &str) -> Option<String> {
        let options = LogsOptionsBuilder::new()
            .follow(false)
            .stdout(true)
            .stderr(true)
            .build();
        let mut logs = docker.logs(id, Some(options));
        let scan = async {
            let mut partial = String::new();
            let mut read = 0usize;
            while let Some(item) = logs.next().await {
                let bytes = match item {
                    Ok(LogOutput::StdOut { message })
                    | Ok(LogOutput::StdErr { message })
                    | Ok(LogOutput::Console { message }) => message,
                    Ok(LogOutput::StdIn { .. }) => continue,
                    Err(_) => return None,
                };
                read += bytes.len();
                partial.push_str(&String::from_utf8_lossy(&bytes));
                while let Some(nl) = partial.find('\n') {
                    let line: String = partial.drain(..=nl).collect();
                    if let Some(url) = detect::ready_url(&line) {
                        return Some(url.to_owned());
                    }
                }
                if read > LOG_SCAN_LIMIT {
                    return None;
                }
            }
            detect::ready_url(&partial).map(str::to_owned)
        };
        tokio::time::timeout(self.inner.settings.api_timeout, scan)
            .await
            .ok()
            .flatten()
    }

    /// What dockerd still knows about how container `id` ended, for a runner no boot watch
    /// saw end (another backend value spawned it, or its boot window is long closed): its
    /// state, exit code, OOM kill and error, and its last output lines. `None` when the
    /// container is gone (`AutoRemove`) or dockerd cannot be asked.
    async fn inspect_exit(&self, id: &str) -> Option<String> {
        let docker = self.client().await.ok()?;
        let info = self
            .call("inspect the runner container", docker.inspect_container(id, None))
            .await
            .ok()?;
        let state = info.state.unwrap_or_default();
        let mut text = format!(
            "container {} is {}",
            short(id),
            state
                .status
                .map(|s| s.to_string())
                .unwrap_or_else(|| "in an unknown state".into())
        );
        if let Some(code) = state.exit_code {
            text.push_str(&format!(", exit code {code}"));
        }
        if state.oom_killed == Some(true) {
            text.push_str(", killed for lack of memory (OOMKilled)");
        }
        if let Some(error) = state.error.filter(|e| !e.is_empty()) {
            text.push_str(&format!(" ({error})"));
        }
        let options = LogsOptionsBuilder::new()
            .follow(false)
            .stdout(true)
            .stderr(true)
            .tail(&TAIL_LINES.to_string())
            .build();
        let read = async {
            let mut out = String::new();
            let mut logs = docker.logs(id, Some(options));
            while let Some(Ok(item)) = logs.next().await {
                if let LogOutput::StdOut { message }
                | LogOutput::StdErr { message }
                | LogOutput::Console { message } = item
                {
                    out.push_str(&String::from_utf8_lossy(&message));
                }
            }
            out
        };
        let out = tokio::time::timeout(self.inner.settings.api_timeout, read)
            .await
            .unwrap_or_default();
        let lines: Vec<&str> = out.lines().filter(|l| !l.trim().is_empty()).collect();
        if !lines.is_empty() {
            text.push_str("; its last output lines: ");
            text.push_str(&lines.join(" | "));
        }
        Some(text)
    }

    /// Where `reap` probes runner `runner_id` in container `id`: found as spawn finds it (the
    /// `FLAME_READY` line, or the known port on a named network; the address resolver wins),
    /// without the secret. `None` when it cannot be told.
    async fn reap_endpoint(&self, docker: &Docker, runner_id: &str, id: &str) -> Option<Endpoint> {
        let announced = match (self.logged_url(docker, id).await, &self.inner.settings.network) {
            (Some(url), _) => url,
            (None, Network::Named(_)) => format!("http://0.0.0.0:{}", self.inner.settings.runner_port),
            (None, Network::Host) => return None,
        };
        match self.runner_url(docker, runner_id, id, &announced).await {
            Ok(url) => Some(Endpoint::new(url, runner_id.to_owned())),
            Err(e) => {
                tracing::debug!(container = %short(id), error = %e, "flame docker: reap cannot tell where this runner listens");
                None
            }
        }
    }

    /// Ends a container `reap` chose: an exited one is removed; a running one is stopped
    /// (SIGTERM, the stop grace, SIGKILL), then removed.
    async fn end_orphan(&self, docker: &Docker, id: &str, running: bool) -> Result<()> {
        if running {
            let options = StopContainerOptionsBuilder::new()
                .t(self.stop_grace_secs())
                .build();
            match self
                .call_raw(
                    "stop the runner container",
                    docker.stop_container(id, Some(options)),
                )
                .await
            {
                Ok(Ok(())) => {}
                Ok(Err(e)) if is_not_found(&e) || is_conflict(&e) => {}
                // A frozen (paused) or wedged container may refuse the stop: the forced
                // removal below kills it either way.
                Ok(Err(e)) => {
                    tracing::debug!(container = %short(id), error = %e, "flame docker: stop refused; removing with force")
                }
                Err(e) => return Err(e),
            }
        }
        self.remove(docker, id).await
    }
}

/// The most log `reap` reads looking for a runner's `FLAME_READY` line (it is the runner's
/// first line; past this much output it has been rotated away or never came).
const LOG_SCAN_LIMIT: usize = 1 << 20;

/// A runner container as `reap` sees it: its candidate, unless `reap` has no business with
/// it at all.
fn reap_state(
    state: Option<&ContainerSummaryStateEnum>,
    age: Duration,
    unreachable_after: Duration,
) -> Option<RunnerState> {
    match state? {
        ContainerSummaryStateEnum::RUNNING | ContainerSummaryStateEnum::PAUSED => Some(RunnerState::Running),
        ContainerSummaryStateEnum::RESTARTING => Some(RunnerState::Booting),
        // Never started: a live parent starts its containers within moments of creating them
        // (and removes them at its boot timeout), so one this old was left by a parent that
        // died in between: only its remains are left. A younger one may be booting.
        ContainerSummaryStateEnum::CREATED if age >= unreachable_after => Some(RunnerState::Stopped),
        ContainerSummaryStateEnum::EXITED | ContainerSummaryStateEnum::DEAD => Some(RunnerState::Stopped),
        // Being stopped or removed already (perhaps by its own live parent, draining): leave
        // it to whoever is ending it.
        ContainerSummaryStateEnum::CREATED
        | ContainerSummaryStateEnum::STOPPING
        | ContainerSummaryStateEnum::REMOVING
        | ContainerSummaryStateEnum::EMPTY => None,
    }
}

/// Removes a half-started container if spawn is abandoned (its future dropped) before it
/// finished; disarmed once spawn hands the container over or removes it itself.
struct RemoveOnDrop {
    backend: Option<DockerBackend>,
    docker: Docker,
    id: String,
}

impl RemoveOnDrop {
    fn disarm(&mut self) {
        self.backend = None;
    }
}

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let Some(backend) = self.backend.take() else {
            return;
        };
        let (docker, id) = (self.docker.clone(), std::mem::take(&mut self.id));
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(async move {
                if let Err(e) = backend.remove(&docker, &id).await {
                    tracing::warn!(container = %short(&id), error = %e, "flame docker: could not remove an abandoned runner container");
                }
            });
        }
    }
}

fn spawn_timeout(request: &SpawnRequest, id: &str, why: &str) -> Error {
    Error::new(
        ErrorCode::SpawnTimeout,
        format!(
            "runner {} (container {}) was not placed within {:?}: {why}",
            request.runner_id,
            short(id),
            request.boot_timeout
        ),
    )
}

fn short(id: &str) -> &str {
    id.get(..12).unwrap_or(id)
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
impl Backend for DockerBackend {
    fn name(&self) -> &str {
        "docker"
    }

    async fn spawn(&self, request: SpawnRequest) -> Result<RunnerHandle> {
        let deadline = placement_deadline(request.boot_timeout);
        // What the runner prints and how it exits is kept for core's readiness probe, which
        // may ask until the whole boot timeout has passed.
        let watch_until = Instant::now() + request.boot_timeout + WATCH_MARGIN;
        let docker = self.client().await?;
        let target = self.target(&docker).await?.clone();
        self.ensure_image(&docker, &target).await?;
        let body = self.container_body(&request, &target);
        let name = detect::container_name(&request.app, &request.runner_id);
        let options = CreateContainerOptionsBuilder::new().name(&name).build();
        let created = self
            .call(
                "create the runner container",
                docker.create_container(Some(options), body),
            )
            .await?;
        let id = created.id;
        let mut guard = RemoveOnDrop {
            backend: Some(self.clone()),
            docker: docker.clone(),
            id: id.clone(),
        };
        // Registered before the container starts, so even a runner that exits at once (and
        // is auto-removed) leaves its exit code and last lines for `exit_details`.
        let watched = watch::start(
            &self.inner.watches,
            &docker,
            &id,
            request.secret.clone(),
            watch_until,
        );
        match self
            .boot(&docker, &request, &id, deadline, &watched, watch_until)
            .await
        {
            Ok(endpoint) => {
                guard.disarm();
                tracing::debug!(runner = %request.runner_id, container = %short(&id), url = %endpoint.url, "flame docker: runner placed");
                Ok(RunnerHandle {
                    runner_id: request.runner_id.clone(),
                    backend_id: id,
                    endpoint,
                })
            }
            Err(e) => {
                watch::forget(&self.inner.watches, &id);
                // The guard stays armed while the container is removed: a caller that gives
                // up now (the readiness probe's deadline) still leaves nothing.
                let removed = self.remove(&docker, &id).await;
                guard.disarm();
                if let Err(cleanup) = removed {
                    tracing::warn!(container = %short(&id), error = %cleanup, "flame docker: could not remove a runner that failed to boot");
                    return Err(e.context(format!("and its container could not be removed ({cleanup})")));
                }
                Err(e)
            }
        }
    }

    async fn exit_details(&self, handle: &RunnerHandle) -> Option<String> {
        let id = &handle.backend_id;
        let watched = self
            .inner
            .watches
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(id)
            .cloned();
        if let Some(watched) = watched {
            // The engine said it stopped: its exit code and last lines are moments away.
            let progress = watched.settled().await;
            return Some(watch::describe(
                short(id),
                progress.exit.as_ref(),
                &watched.lines(),
            ));
        }
        let text = self.inspect_exit(id).await?;
        Some(
            match handle.endpoint.secret.as_ref().filter(|s| !s.expose().is_empty()) {
                Some(secret) => text.replace(secret.expose(), "<redacted>"),
                None => text,
            },
        )
    }

    async fn terminate(&self, handle: &RunnerHandle) -> Result<()> {
        let docker = self.client().await?;
        let id = &handle.backend_id;
        watch::forget(&self.inner.watches, id);
        let options = StopContainerOptionsBuilder::new()
            .t(self.stop_grace_secs())
            .build();
        match self
            .call_raw(
                "stop the runner container",
                docker.stop_container(id, Some(options)),
            )
            .await?
        {
            Ok(()) => {}
            Err(e) if is_not_found(&e) || is_conflict(&e) => {}
            Err(e) => return Err(engine_error("stop the runner container", &self.inner.host, e)),
        }
        self.remove(&docker, id).await
    }

    async fn status(&self, handle: &RunnerHandle) -> Result<RunnerState> {
        let docker = self.client().await?;
        let info = match self
            .call_raw(
                "inspect the runner container",
                docker.inspect_container(&handle.backend_id, None),
            )
            .await?
        {
            Ok(info) => info,
            Err(e) if is_not_found(&e) => return Ok(RunnerState::Stopped),
            Err(e) => return Err(engine_error("inspect the runner container", &self.inner.host, e)),
        };
        let status = info.state.and_then(|s| s.status);
        Ok(match status {
            Some(ContainerStateStatusEnum::RUNNING) | Some(ContainerStateStatusEnum::PAUSED) => {
                RunnerState::Running
            }
            Some(ContainerStateStatusEnum::CREATED) | Some(ContainerStateStatusEnum::RESTARTING) => {
                RunnerState::Booting
            }
            _ => RunnerState::Stopped,
        })
    }

    async fn reap(&self, scope: &ReapScope) -> Result<usize> {
        let docker = self.client().await?;
        let mut filters: HashMap<String, Vec<String>> = HashMap::new();
        filters.insert("label".into(), vec![format!("{}={}", labels::APP, scope.app)]);
        let options = ListContainersOptionsBuilder::new()
            .all(true)
            .filters(&filters)
            .build();
        let containers = self
            .call("list runner containers", docker.list_containers(Some(options)))
            .await?;
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs() as i64)
            .unwrap_or(0);
        let mut candidates = Vec::new();
        for c in containers {
            let labels = c.labels.unwrap_or_default();
            let Some(id) = c.id else { continue };
            if labels.get(labels::APP) != Some(&scope.app) {
                continue;
            }
            let age = Duration::from_secs(now.saturating_sub(c.created.unwrap_or(now)).max(0) as u64);
            let Some(state) = reap_state(c.state.as_ref(), age, scope.unreachable_after) else {
                continue;
            };
            let parent = labels.get(labels::PARENT).cloned();
            let runner_id = labels
                .get(labels::RUNNER)
                .cloned()
                .unwrap_or_else(|| short(&id).to_owned());
            let no_probe = parent.as_deref().map_or(true, |p| p == scope.live_parent);
            let endpoint = if no_probe || state == RunnerState::Stopped {
                // The rule spares or ends these without a probe: no log to read.
                None
            } else {
                match self.reap_endpoint(&docker, &runner_id, &id).await {
                    Some(endpoint) => Some(endpoint),
                    None => {
                        // Its address is unknown (its `FLAME_READY` line is not in its log any
                        // more, or not yet): nothing proves it orphaned. Its own failsafe ends
                        // it if its parent is gone, and AutoRemove removes the container.
                        tracing::debug!(container = %short(&id), runner = %runner_id, "flame docker: reap spares a runner whose address it cannot learn");
                        continue;
                    }
                }
            };
            candidates.push(ReapCandidate::new(runner_id, id, parent, state, endpoint));
        }
        let chosen = scope.select(candidates).await;
        let ends = chosen
            .iter()
            .map(|(c, _)| self.end_orphan(&docker, &c.backend_id, c.state != RunnerState::Stopped));
        let results = futures::future::join_all(ends).await;
        let mut ended = 0;
        let mut first_error: Option<Error> = None;
        for ((c, reason), result) in chosen.iter().zip(results) {
            match result {
                Ok(()) => {
                    tracing::info!(container = %short(&c.backend_id), runner = %c.runner_id, parent = ?c.parent_id, %reason, "flame docker: reaped an orphaned runner");
                    ended += 1;
                }
                Err(e) => {
                    tracing::warn!(container = %short(&c.backend_id), error = %e, "flame docker: reap could not remove an orphaned runner");
                    first_error.get_or_insert(e);
                }
            }
        }
        match first_error {
            Some(e) => Err(e.context(format!("reap removed {ended} orphaned runner container(s), then"))),
            None => Ok(ended),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request() -> SpawnRequest {
        SpawnRequest {
            runner_id: "r1".into(),
            app: "shop".into(),
            pool: "gpu".into(),
            parent_id: "p1".into(),
            env: BTreeMap::from([
                ("FLAME_MODE".into(), "runner".into()),
                ("FLAME_LISTEN".into(), "127.0.0.1:0".into()),
                ("EXTRA".into(), "from-request".into()),
            ]),
            labels: BTreeMap::from([("flame.app".into(), "spoofed".into())]),
            boot_timeout: Duration::from_secs(5),
            secret: Some(flame_core::Secret::new("s3cret")),
        }
    }

    fn target() -> Target {
        Target {
            image: "img:1".into(),
            entrypoint: None,
            cmd: None,
            own: false,
        }
    }

    fn env_of(body: &ContainerCreateBody) -> Vec<String> {
        body.env.clone().unwrap_or_default()
    }

    #[test]
    fn host_network_body() {
        let backend = DockerBackend::builder()
            .image("img:1")
            .docker_host("unix:///nowhere.sock")
            .env("EXTRA", "from-config")
            .label("team", "media")
            .memory_bytes(512 << 20)
            .cpus(1.5)
            .stop_grace(Duration::from_millis(2500))
            .build()
            .unwrap();
        let body = backend.container_body(&request(), &target());
        let env = env_of(&body);
        assert!(env.contains(&"FLAME_MODE=runner".to_owned()));
        assert!(env.contains(&"FLAME_LISTEN=127.0.0.1:0".to_owned()));
        assert!(
            env.contains(&"EXTRA=from-request".to_owned()),
            "the request wins: {env:?}"
        );
        assert!(env.contains(&"FLAME_RUNNER_ID=r1".to_owned()));
        assert!(env.contains(&"FLAME_PARENT_ID=p1".to_owned()));
        let labels = body.labels.clone().unwrap();
        assert_eq!(labels["flame.app"], "shop", "flame.* labels cannot be overridden");
        assert_eq!(labels["flame.pool"], "gpu");
        assert_eq!(labels["flame.parent"], "p1");
        assert_eq!(labels["flame.runner"], "r1");
        assert_eq!(labels["team"], "media");
        assert_eq!(body.cmd, None, "the image's own command");
        assert_eq!(body.stop_timeout, Some(3), "grace rounds up to whole seconds");
        let host = body.host_config.unwrap();
        assert_eq!(host.auto_remove, Some(true));
        assert_eq!(host.network_mode.as_deref(), Some("host"));
        assert_eq!(host.memory, Some(512 << 20));
        assert_eq!(host.nano_cpus, Some(1_500_000_000));
        assert_eq!(host.device_requests, None);
        assert_eq!(host.init, Some(true));
        assert!(host.log_config.is_none(), "the engine's log driver by default");
        let rotated = DockerBackend::builder()
            .image("img:1")
            .log_driver("local")
            .log_option("max-size", "10m")
            .build()
            .unwrap()
            .container_body(&request(), &target());
        let log = rotated.host_config.unwrap().log_config.unwrap();
        assert_eq!(log.typ.as_deref(), Some("local"));
        assert_eq!(log.config.unwrap()["max-size"], "10m");
    }

    #[test]
    fn named_network_and_gpus_body() {
        let build = |gpus| {
            DockerBackend::builder()
                .image("img:1")
                .docker_host("tcp://127.0.0.1:1")
                .network(Network::Named("flame-net".into()))
                .runner_port(9000)
                .gpus(gpus)
                .command(["/app", "--serve"])
                .build()
                .unwrap()
        };
        let backend = build(Gpus::Count(2));
        let body = backend.container_body(&request(), &target());
        assert!(env_of(&body).contains(&"FLAME_LISTEN=0.0.0.0:9000".to_owned()));
        let host = body.host_config.unwrap();
        assert_eq!(host.network_mode.as_deref(), Some("flame-net"));
        let gpu = &host.device_requests.unwrap()[0];
        assert_eq!(gpu.count, Some(2));
        assert_eq!(gpu.capabilities, Some(vec![vec!["gpu".to_owned()]]));
        assert_eq!(gpu.driver, None, "like the CLI, the engine picks the driver");
        let all = build(Gpus::All).container_body(&request(), &target());
        assert_eq!(
            all.host_config.unwrap().device_requests.unwrap()[0].count,
            Some(-1)
        );
        let ids = build(Gpus::Devices(vec!["0".into(), "2".into()])).container_body(&request(), &target());
        let req = &ids.host_config.unwrap().device_requests.unwrap()[0];
        assert_eq!(req.device_ids, Some(vec!["0".to_owned(), "2".to_owned()]));
        assert_eq!(req.count, None);
    }

    #[test]
    fn reap_states_follow_the_container_lifecycle() {
        use ContainerSummaryStateEnum as S;
        let window = Duration::from_secs(50);
        let young = Duration::from_secs(3);
        let old = Duration::from_secs(60);
        assert_eq!(
            reap_state(Some(&S::RUNNING), young, window),
            Some(RunnerState::Running)
        );
        assert_eq!(
            reap_state(Some(&S::PAUSED), old, window),
            Some(RunnerState::Running)
        );
        assert_eq!(
            reap_state(Some(&S::RESTARTING), old, window),
            Some(RunnerState::Booting)
        );
        assert_eq!(
            reap_state(Some(&S::EXITED), young, window),
            Some(RunnerState::Stopped)
        );
        assert_eq!(
            reap_state(Some(&S::DEAD), young, window),
            Some(RunnerState::Stopped)
        );
        // Never started: maybe a live parent is starting it, until that cannot be.
        assert_eq!(reap_state(Some(&S::CREATED), young, window), None);
        assert_eq!(
            reap_state(Some(&S::CREATED), old, window),
            Some(RunnerState::Stopped)
        );
        // Someone is ending it already.
        for s in [S::STOPPING, S::REMOVING, S::EMPTY] {
            assert_eq!(reap_state(Some(&s), old, window), None, "{s}");
        }
        assert_eq!(reap_state(None, old, window), None);
    }

    #[test]
    fn builder_validates() {
        let no_image = DockerBackend::builder().use_own_image(false).build();
        assert_eq!(no_image.unwrap_err().code(), ErrorCode::Config);
        let bad_host = DockerBackend::builder().image("x").docker_host("ftp://x").build();
        assert_eq!(bad_host.unwrap_err().code(), ErrorCode::Config);
        let empty_net = DockerBackend::builder()
            .image("x")
            .network(Network::Named(" ".into()))
            .build();
        assert_eq!(empty_net.unwrap_err().code(), ErrorCode::Config);
        let ok = DockerBackend::builder()
            .image("x")
            .docker_host("tcp://127.0.0.1:2375")
            .build()
            .unwrap();
        assert_eq!(ok.docker_host(), "tcp://127.0.0.1:2375");
        assert!(!format!("{ok:?}").is_empty());
    }
}
