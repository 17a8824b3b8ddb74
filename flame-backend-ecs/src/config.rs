//! Settings of the ECS backend and its builder.

use crate::backend::EcsBackend;
use crate::error::{EcsError, EcsErrorKind};
use crate::metadata;
use aws_config::retry::RetryConfig;
use aws_config::timeout::TimeoutConfig;
use aws_config::{BehaviorVersion, Region, SdkConfig};
use aws_sdk_ecs::config::Credentials;
use flame_core::{AddressResolver, Result, RunnerAddress, Secret};
use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

/// How a task is placed: a launch type, a capacity provider strategy, or the cluster's
/// default capacity provider strategy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Launch {
    /// Omit both: the cluster's default capacity provider strategy decides.
    ClusterDefault,
    /// A launch type: `FARGATE`, `EC2` or `EXTERNAL`.
    LaunchType(String),
    /// A capacity provider strategy: `(provider, weight, base)` items, e.g.
    /// `[("FARGATE_SPOT", 1, 0)]`.
    CapacityProviders(Vec<(String, i32, i32)>),
}

/// How the runner gets `FLAME_SECRET`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SecretDelivery {
    /// In the container overrides, next to the other `FLAME_*` variables. Simple, but
    /// **anyone allowed to call `ecs:DescribeTasks` on the cluster can read it**: container
    /// overrides are part of the task description. Fine for development.
    Overrides,
    /// From the task definition's `secrets` (Secrets Manager or SSM Parameter Store, injected
    /// by the ECS agent as `FLAME_SECRET`): the override never carries it, and the parent signs
    /// its calls to these runners with that same secret — by default its own `FLAME_SECRET`
    /// (the same entry, when the runner runs the parent's own task definition), or the one
    /// given to [`EcsBackendBuilder::task_definition_secret`]. The production setup.
    TaskDefinition,
}

/// Timing of spawn's wait for the task to run with an address: DescribeTasks polling with
/// exponential backoff (with jitter) between `describe_min` and `describe_max`. (Pinging the
/// runner until healthy is core's readiness probe, not this backend's.)
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PollSettings {
    /// First DescribeTasks delay.
    pub describe_min: Duration,
    /// Longest DescribeTasks delay.
    pub describe_max: Duration,
}

impl Default for PollSettings {
    fn default() -> Self {
        PollSettings {
            describe_min: Duration::from_millis(250),
            describe_max: Duration::from_secs(5),
        }
    }
}

/// Retries of ECS API calls. They are done by the AWS SDK's standard retry strategy (one
/// place, never stacked with a retry of our own): throttling (`ThrottlingException`, 429),
/// 5xx and timeouts are retried with exponential backoff and jitter; other errors are not.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetrySettings {
    /// Attempts per API call, the first included (SDK default 3; ours 5).
    pub max_attempts: u32,
    /// First backoff.
    pub initial_backoff: Duration,
    /// Longest backoff.
    pub max_backoff: Duration,
    /// Limit for one attempt (connect + reply).
    pub attempt_timeout: Duration,
    /// Connect timeout.
    pub connect_timeout: Duration,
}

impl Default for RetrySettings {
    fn default() -> Self {
        RetrySettings {
            max_attempts: 5,
            initial_backoff: Duration::from_millis(200),
            max_backoff: Duration::from_secs(10),
            attempt_timeout: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(3),
        }
    }
}

/// The resolved settings of an [`EcsBackend`].
#[derive(Clone)]
pub struct EcsSettings {
    /// Cluster name or ARN.
    pub cluster: String,
    /// Task definition (`family`, `family:revision` or ARN) the runners run.
    pub task_definition: String,
    /// The container that gets the overrides; `None`: the task definition's only container
    /// (looked up once with DescribeTaskDefinition).
    pub container_name: Option<String>,
    /// Placement.
    pub launch: Launch,
    /// `awsvpc` subnets.
    pub subnets: Vec<String>,
    /// `awsvpc` security groups (empty: the VPC's default group).
    pub security_groups: Vec<String>,
    /// `assignPublicIp` (`ENABLED` when true).
    pub assign_public_ip: bool,
    /// Container override `command` (the runner entrypoint); `None`: the image's own, which
    /// then serves because `FLAME_MODE=runner` is set.
    pub command: Option<Vec<String>>,
    /// Task-level CPU override (`"1024"`, `"1 vCPU"`).
    pub cpu: Option<String>,
    /// Task-level memory override (`"2048"`, `"2 GB"`).
    pub memory: Option<String>,
    /// The port runners listen on (`FLAME_LISTEN=0.0.0.0:<port>`); the task's security group
    /// must let the parent reach it.
    pub runner_port: u16,
    /// How `FLAME_SECRET` reaches the runner.
    pub secret_delivery: SecretDelivery,
    /// With [`SecretDelivery::TaskDefinition`]: the secret the task definition gives the
    /// runner, which the parent signs with.
    pub task_definition_secret: Option<Secret>,
    /// Extra tags on every task.
    pub tags: BTreeMap<String, String>,
    /// `platformVersion` (Fargate), if set.
    pub platform_version: Option<String>,
    /// Boot-wait timing.
    pub poll: PollSettings,
    /// Maps a task to the URL the parent uses; `None`: `http://<ENI IP>:<runner_port>`.
    pub resolver: Option<AddressResolver>,
}

impl fmt::Debug for EcsSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EcsSettings")
            .field("cluster", &self.cluster)
            .field("task_definition", &self.task_definition)
            .field("container_name", &self.container_name)
            .field("launch", &self.launch)
            .field("subnets", &self.subnets)
            .field("security_groups", &self.security_groups)
            .field("assign_public_ip", &self.assign_public_ip)
            .field("command", &self.command)
            .field("cpu", &self.cpu)
            .field("memory", &self.memory)
            .field("runner_port", &self.runner_port)
            .field("secret_delivery", &self.secret_delivery)
            .field(
                "task_definition_secret",
                &self.task_definition_secret.as_ref().map(|_| "<redacted>"),
            )
            .field("tags", &self.tags)
            .field("platform_version", &self.platform_version)
            .field("poll", &self.poll)
            .field("resolver", &self.resolver.as_ref().map(|_| "<fn>"))
            .finish()
    }
}

impl EcsSettings {
    /// The URL of a runner: the resolver's answer, else `http://<host>:<port>`.
    pub fn runner_url(&self, address: &RunnerAddress) -> Option<String> {
        if let Some(resolver) = &self.resolver {
            if let Some(url) = resolver(address) {
                return Some(url);
            }
        }
        let host = address.host.as_deref()?;
        Some(if host.contains(':') {
            format!("http://[{host}]:{}", address.port)
        } else {
            format!("http://{host}:{}", address.port)
        })
    }
}

/// Builds an [`EcsBackend`]: ECS settings, plus where the AWS configuration comes from.
///
/// Credentials, region and endpoint come the standard AWS way (environment, profile, the
/// task's container role) unless set here. When the parent itself runs on ECS
/// (`ECS_CONTAINER_METADATA_URI_V4` is set), cluster, task definition, container, launch type
/// and subnets default to the parent's own; set them here to override.
///
/// ```no_run
/// # async fn build() -> flame_core::Result<()> {
/// use flame_backend_ecs::{EcsBackend, SecretDelivery};
/// let backend = EcsBackend::builder()
///     .cluster("jobs")
///     .task_definition("media-app:42")
///     .container_name("app")
///     .fargate()
///     .subnets(["subnet-0abc"])
///     .security_groups(["sg-0runners"])
///     .secret_delivery(SecretDelivery::TaskDefinition)
///     .build()
///     .await?;
/// # let _ = backend; Ok(()) }
/// ```
#[derive(Default)]
#[must_use]
pub struct EcsBackendBuilder {
    cluster: Option<String>,
    task_definition: Option<String>,
    container_name: Option<String>,
    launch: Option<Launch>,
    subnets: Option<Vec<String>>,
    security_groups: Vec<String>,
    assign_public_ip: bool,
    command: Option<Vec<String>>,
    cpu: Option<String>,
    memory: Option<String>,
    runner_port: Option<u16>,
    secret_delivery: Option<SecretDelivery>,
    task_definition_secret: Option<Secret>,
    tags: BTreeMap<String, String>,
    platform_version: Option<String>,
    poll: PollSettings,
    retry: RetrySettings,
    resolver: Option<AddressResolver>,
    sdk_config: Option<SdkConfig>,
    region: Option<String>,
    endpoint_url: Option<String>,
    credentials: Option<Credentials>,
    metadata_uri: Option<Option<String>>,
}

impl fmt::Debug for EcsBackendBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EcsBackendBuilder")
            .field("cluster", &self.cluster)
            .field("task_definition", &self.task_definition)
            .field("container_name", &self.container_name)
            .field("launch", &self.launch)
            .field("subnets", &self.subnets)
            .field("security_groups", &self.security_groups)
            .field("runner_port", &self.runner_port)
            .field("secret_delivery", &self.secret_delivery)
            .field("region", &self.region)
            .field("endpoint_url", &self.endpoint_url)
            .finish_non_exhaustive()
    }
}

impl EcsBackendBuilder {
    /// A builder with nothing set.
    pub fn new() -> Self {
        EcsBackendBuilder::default()
    }

    /// The cluster (name or ARN).
    pub fn cluster(mut self, cluster: impl Into<String>) -> Self {
        self.cluster = Some(cluster.into());
        self
    }

    /// The task definition runners run (`family`, `family:revision` or ARN). Default: the
    /// parent's own, when it runs on ECS.
    pub fn task_definition(mut self, task_definition: impl Into<String>) -> Self {
        self.task_definition = Some(task_definition.into());
        self
    }

    /// The container that gets the command and environment overrides. Default: the parent's
    /// own container name on ECS, else the task definition's only container.
    pub fn container_name(mut self, name: impl Into<String>) -> Self {
        self.container_name = Some(name.into());
        self
    }

    /// `launchType: FARGATE`.
    pub fn fargate(self) -> Self {
        self.launch(Launch::LaunchType("FARGATE".into()))
    }

    /// Placement: launch type, capacity providers, or the cluster default.
    pub fn launch(mut self, launch: Launch) -> Self {
        self.launch = Some(launch);
        self
    }

    /// The `awsvpc` subnets (required unless the parent's own can be read from ECS).
    pub fn subnets<I, S>(mut self, subnets: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.subnets = Some(subnets.into_iter().map(Into::into).collect());
        self
    }

    /// The `awsvpc` security groups; they must let the parent reach `runner_port`.
    pub fn security_groups<I, S>(mut self, groups: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.security_groups = groups.into_iter().map(Into::into).collect();
        self
    }

    /// `assignPublicIp: ENABLED` (needed on Fargate in public subnets without NAT, to pull
    /// the image). Default off.
    pub fn assign_public_ip(mut self, assign: bool) -> Self {
        self.assign_public_ip = assign;
        self
    }

    /// The runner's command (container override). Default: the image's own entrypoint,
    /// which serves as a runner because `FLAME_MODE=runner` is set.
    pub fn command<I, S>(mut self, command: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.command = Some(command.into_iter().map(Into::into).collect());
        self
    }

    /// Task-level CPU override, e.g. `"1024"`.
    pub fn cpu(mut self, cpu: impl Into<String>) -> Self {
        self.cpu = Some(cpu.into());
        self
    }

    /// Task-level memory override (MiB), e.g. `"2048"`.
    pub fn memory(mut self, memory: impl Into<String>) -> Self {
        self.memory = Some(memory.into());
        self
    }

    /// The port runners listen on. Default 8080.
    pub fn runner_port(mut self, port: u16) -> Self {
        self.runner_port = Some(port);
        self
    }

    /// How `FLAME_SECRET` reaches the runner. Default [`SecretDelivery::Overrides`];
    /// production: [`SecretDelivery::TaskDefinition`].
    pub fn secret_delivery(mut self, delivery: SecretDelivery) -> Self {
        self.secret_delivery = Some(delivery);
        self
    }

    /// With [`SecretDelivery::TaskDefinition`]: the secret the runner's task definition
    /// injects as `FLAME_SECRET` (the parent signs with it). Default: the parent's own
    /// `FLAME_SECRET`.
    pub fn task_definition_secret(mut self, secret: Secret) -> Self {
        self.task_definition_secret = Some(secret);
        self
    }

    /// An extra tag on every task.
    pub fn tag(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.tags.insert(key.into(), value.into());
        self
    }

    /// The Fargate platform version.
    pub fn platform_version(mut self, version: impl Into<String>) -> Self {
        self.platform_version = Some(version.into());
        self
    }

    /// Timing of spawn's wait for the task to run with an address (DescribeTasks polling).
    pub fn poll(mut self, poll: PollSettings) -> Self {
        self.poll = poll;
        self
    }

    /// ECS API retry and timeout settings (applied to the SDK's retry strategy).
    pub fn retry(mut self, retry: RetrySettings) -> Self {
        self.retry = retry;
        self
    }

    /// Maps each task to the URL the parent uses (tests: a runner on 127.0.0.1). Returning
    /// `None` falls back to `http://<ENI IP>:<runner_port>`.
    pub fn resolver(
        mut self,
        resolver: impl Fn(&RunnerAddress) -> Option<String> + Send + Sync + 'static,
    ) -> Self {
        self.resolver = Some(Arc::new(resolver));
        self
    }

    /// Uses this AWS configuration instead of loading one (retry and timeout settings of
    /// this builder still apply).
    pub fn sdk_config(mut self, config: SdkConfig) -> Self {
        self.sdk_config = Some(config);
        self
    }

    /// The AWS region (default: the standard chain, e.g. `AWS_REGION`).
    pub fn region(mut self, region: impl Into<String>) -> Self {
        self.region = Some(region.into());
        self
    }

    /// The ECS API endpoint (default: the region's; tests: a moto_server or a mock).
    pub fn endpoint_url(mut self, url: impl Into<String>) -> Self {
        self.endpoint_url = Some(url.into());
        self
    }

    /// Static credentials (default: the standard chain — environment, profile, container
    /// role). Meant for emulators such as moto.
    pub fn credentials(mut self, credentials: Credentials) -> Self {
        self.credentials = Some(credentials);
        self
    }

    /// The ECS task metadata endpoint to read defaults from (default:
    /// `ECS_CONTAINER_METADATA_URI_V4`); `None` turns the lookup off.
    pub fn task_metadata_uri(mut self, uri: Option<String>) -> Self {
        self.metadata_uri = Some(uri);
        self
    }

    /// A builder with the `FLAME_ECS_*` variables of the process environment applied (see
    /// [`EcsBackendBuilder::apply_lookup`]).
    pub fn from_env() -> Result<Self> {
        EcsBackendBuilder::new().apply_lookup(|k| std::env::var(k).ok())
    }

    /// Applies the `FLAME_ECS_*` variables `lookup` knows; unset or empty ones leave the
    /// setting alone. A malformed value is a `CONFIG` error naming the variable.
    ///
    /// | variable | setting |
    /// |---|---|
    /// | `FLAME_ECS_CLUSTER` | [`cluster`](Self::cluster) |
    /// | `FLAME_ECS_TASK_DEFINITION` | [`task_definition`](Self::task_definition) |
    /// | `FLAME_ECS_CONTAINER` | [`container_name`](Self::container_name) |
    /// | `FLAME_ECS_LAUNCH_TYPE` | `FARGATE`, `EC2` or `EXTERNAL` |
    /// | `FLAME_ECS_CAPACITY_PROVIDERS` | `provider[:weight[:base]]`, comma-separated |
    /// | `FLAME_ECS_SUBNETS`, `FLAME_ECS_SECURITY_GROUPS` | comma-separated ids |
    /// | `FLAME_ECS_ASSIGN_PUBLIC_IP` | `true` / `false` |
    /// | `FLAME_ECS_CPU`, `FLAME_ECS_MEMORY` | task-level overrides |
    /// | `FLAME_ECS_PORT` | [`runner_port`](Self::runner_port) |
    /// | `FLAME_ECS_SECRET_FROM_TASK_DEFINITION` | `true`: [`SecretDelivery::TaskDefinition`] |
    ///
    /// ```
    /// use flame_backend_ecs::{EcsBackendBuilder, Launch};
    /// let env = [("FLAME_ECS_CLUSTER", "jobs"), ("FLAME_ECS_CAPACITY_PROVIDERS", "FARGATE_SPOT:3,FARGATE:1:1")];
    /// let lookup = |k: &str| env.iter().find(|(n, _)| *n == k).map(|(_, v)| v.to_string());
    /// let builder = EcsBackendBuilder::new().apply_lookup(lookup).unwrap();
    /// # let _ = builder;
    /// let bad = EcsBackendBuilder::new().apply_lookup(|k| (k == "FLAME_ECS_PORT").then(|| "http".into()));
    /// assert!(bad.unwrap_err().message().contains("FLAME_ECS_PORT"));
    /// ```
    pub fn apply_lookup(mut self, lookup: impl Fn(&str) -> Option<String>) -> Result<Self> {
        let get = |k: &str| lookup(k).map(|v| v.trim().to_owned()).filter(|v| !v.is_empty());
        let bad = |k: &str, v: &str, what: &str| -> flame_core::Error {
            EcsError::new(EcsErrorKind::Config, format!("{k}={v:?}: {what}")).into()
        };
        let list = |v: &str| -> Vec<String> {
            v.split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(str::to_owned)
                .collect()
        };
        let flag = |k: &str, v: &str| -> Result<bool> {
            match v.to_ascii_lowercase().as_str() {
                "1" | "true" | "yes" | "on" => Ok(true),
                "0" | "false" | "no" | "off" => Ok(false),
                _ => Err(bad(k, v, "expected true or false")),
            }
        };
        if let Some(v) = get("FLAME_ECS_CLUSTER") {
            self.cluster = Some(v);
        }
        if let Some(v) = get("FLAME_ECS_TASK_DEFINITION") {
            self.task_definition = Some(v);
        }
        if let Some(v) = get("FLAME_ECS_CONTAINER") {
            self.container_name = Some(v);
        }
        if let Some(v) = get("FLAME_ECS_LAUNCH_TYPE") {
            let t = v.to_ascii_uppercase();
            if !matches!(t.as_str(), "FARGATE" | "EC2" | "EXTERNAL") {
                return Err(bad(
                    "FLAME_ECS_LAUNCH_TYPE",
                    &v,
                    "expected FARGATE, EC2 or EXTERNAL",
                ));
            }
            self.launch = Some(Launch::LaunchType(t));
        }
        if let Some(v) = get("FLAME_ECS_CAPACITY_PROVIDERS") {
            let mut items = Vec::new();
            for item in list(&v) {
                let mut parts = item.split(':');
                let name = parts.next().unwrap_or_default().to_owned();
                let mut number = |default: i32| -> Result<i32> {
                    match parts.next() {
                        None => Ok(default),
                        Some(n) => n.trim().parse().map_err(|_| {
                            bad(
                                "FLAME_ECS_CAPACITY_PROVIDERS",
                                &v,
                                "expected provider[:weight[:base]]",
                            )
                        }),
                    }
                };
                let weight = number(1)?;
                let base = number(0)?;
                items.push((name, weight, base));
            }
            if items.is_empty() {
                return Err(bad("FLAME_ECS_CAPACITY_PROVIDERS", &v, "no provider named"));
            }
            self.launch = Some(Launch::CapacityProviders(items));
        }
        if let Some(v) = get("FLAME_ECS_SUBNETS") {
            self.subnets = Some(list(&v));
        }
        if let Some(v) = get("FLAME_ECS_SECURITY_GROUPS") {
            self.security_groups = list(&v);
        }
        if let Some(v) = get("FLAME_ECS_ASSIGN_PUBLIC_IP") {
            self.assign_public_ip = flag("FLAME_ECS_ASSIGN_PUBLIC_IP", &v)?;
        }
        if let Some(v) = get("FLAME_ECS_CPU") {
            self.cpu = Some(v);
        }
        if let Some(v) = get("FLAME_ECS_MEMORY") {
            self.memory = Some(v);
        }
        if let Some(v) = get("FLAME_ECS_PORT") {
            let port: u16 = v
                .parse()
                .map_err(|_| bad("FLAME_ECS_PORT", &v, "expected a port number"))?;
            self.runner_port = Some(port);
        }
        if let Some(v) = get("FLAME_ECS_SECRET_FROM_TASK_DEFINITION") {
            if flag("FLAME_ECS_SECRET_FROM_TASK_DEFINITION", &v)? {
                self.secret_delivery = Some(SecretDelivery::TaskDefinition);
            }
        }
        Ok(self)
    }

    /// Loads the AWS configuration, fills defaults from the task metadata endpoint (when
    /// there is one) and checks the settings.
    pub async fn build(self) -> Result<EcsBackend> {
        let metadata_uri = match self.metadata_uri.clone() {
            Some(uri) => uri,
            None => std::env::var(metadata::ENV).ok().filter(|v| !v.is_empty()),
        };
        if metadata_uri.is_none() {
            // Off ECS nothing can fill these in: say so before touching any AWS provider.
            self.check_required()?;
        }
        let retry = RetryConfig::standard()
            .with_max_attempts(self.retry.max_attempts.max(1))
            .with_initial_backoff(self.retry.initial_backoff)
            .with_max_backoff(self.retry.max_backoff);
        let timeouts = TimeoutConfig::builder()
            .connect_timeout(self.retry.connect_timeout)
            .operation_attempt_timeout(self.retry.attempt_timeout)
            .build();
        let sdk_config = match self.sdk_config.clone() {
            Some(c) => c,
            None => {
                let mut loader =
                    aws_config::defaults(BehaviorVersion::latest()).http_client(crate::https_client());
                if let Some(region) = &self.region {
                    loader = loader.region(Region::new(region.clone()));
                }
                if let Some(url) = &self.endpoint_url {
                    loader = loader.endpoint_url(url.clone());
                }
                if let Some(creds) = &self.credentials {
                    loader = loader.credentials_provider(creds.clone());
                }
                loader.load().await
            }
        };
        let mut ecs = aws_sdk_ecs::config::Builder::from(&sdk_config)
            .retry_config(retry)
            .timeout_config(timeouts);
        if sdk_config.http_client().is_none() {
            ecs = ecs.http_client(crate::https_client());
        }
        if let Some(url) = &self.endpoint_url {
            ecs = ecs.endpoint_url(url.clone());
        }
        if let Some(region) = &self.region {
            ecs = ecs.region(Region::new(region.clone()));
        }
        if let Some(creds) = &self.credentials {
            ecs = ecs.credentials_provider(creds.clone());
        }
        let client = aws_sdk_ecs::Client::from_conf(ecs.build());

        let own = match metadata_uri {
            Some(uri) if self.needs_defaults() => Some(metadata::read_own_task(&uri).await?),
            _ => None,
        };
        let mut subnets = self.subnets.clone();
        if subnets.is_none() {
            if let Some(own) = &own {
                subnets = Some(metadata::own_subnets(&client, own).await?);
            }
        }
        let settings = self.settings(own, subnets.unwrap_or_default())?;
        if settings.secret_delivery == SecretDelivery::Overrides {
            tracing::info!(
                "flame ecs: FLAME_SECRET travels in container overrides, readable by anyone with \
                 ecs:DescribeTasks; use SecretDelivery::TaskDefinition in production"
            );
        }
        Ok(EcsBackend::from_parts(client, settings))
    }

    /// Builds the backend on an existing ECS client (its own retry and timeout settings
    /// apply); reads no task metadata.
    pub fn build_with_client(self, client: aws_sdk_ecs::Client) -> Result<EcsBackend> {
        let subnets = self.subnets.clone().unwrap_or_default();
        let settings = self.settings(None, subnets)?;
        Ok(EcsBackend::from_parts(client, settings))
    }

    /// Checks that what only the task metadata could fill in is set.
    fn check_required(&self) -> Result<()> {
        for (missing, what) in [
            (self.cluster.is_none(), "cluster"),
            (self.task_definition.is_none(), "task definition"),
        ] {
            if missing {
                return Err(EcsError::new(
                    EcsErrorKind::Config,
                    format!(
                        "no {what}: set it on EcsBackend::builder() (or FLAME_ECS_*), or run the \
                         parent on ECS so it defaults to the parent's own"
                    ),
                )
                .into());
            }
        }
        Ok(())
    }

    fn needs_defaults(&self) -> bool {
        self.cluster.is_none()
            || self.task_definition.is_none()
            || self.container_name.is_none()
            || self.launch.is_none()
            || self.subnets.is_none()
    }

    fn settings(self, own: Option<metadata::OwnTask>, subnets: Vec<String>) -> Result<EcsSettings> {
        let config_err = |what: &str| -> flame_core::Error {
            EcsError::new(
                EcsErrorKind::Config,
                format!(
                    "no {what}: set it on EcsBackend::builder(), or run the parent on ECS so \
                     it defaults to the parent's own"
                ),
            )
            .into()
        };
        let cluster = self
            .cluster
            .or_else(|| own.as_ref().map(|o| o.cluster.clone()))
            .ok_or_else(|| config_err("cluster"))?;
        let task_definition = self
            .task_definition
            .or_else(|| own.as_ref().map(|o| o.task_definition.clone()))
            .ok_or_else(|| config_err("task definition"))?;
        let container_name = self
            .container_name
            .or_else(|| own.as_ref().and_then(|o| o.container_name.clone()));
        let launch = self
            .launch
            .or_else(|| {
                own.as_ref()
                    .and_then(|o| o.launch_type.clone())
                    .map(Launch::LaunchType)
            })
            .unwrap_or(Launch::ClusterDefault);
        if let Launch::CapacityProviders(items) = &launch {
            if items.is_empty() {
                return Err(EcsError::new(
                    EcsErrorKind::Config,
                    "an empty capacity provider strategy: use Launch::ClusterDefault instead",
                )
                .into());
            }
        }
        let secret_delivery = self.secret_delivery.unwrap_or(SecretDelivery::Overrides);
        let task_definition_secret = match secret_delivery {
            SecretDelivery::Overrides => None,
            SecretDelivery::TaskDefinition => Some(
                self.task_definition_secret
                    .or_else(|| {
                        std::env::var("FLAME_SECRET")
                            .ok()
                            .filter(|s| !s.is_empty())
                            .map(Secret::new)
                    })
                    .ok_or_else(|| {
                        flame_core::Error::from(EcsError::new(
                            EcsErrorKind::Config,
                            "SecretDelivery::TaskDefinition needs the secret the task definition \
                             injects: set FLAME_SECRET in the parent (from the same secrets \
                             entry) or call task_definition_secret()",
                        ))
                    })?,
            ),
        };
        Ok(EcsSettings {
            cluster,
            task_definition,
            container_name,
            launch,
            subnets,
            security_groups: self.security_groups,
            assign_public_ip: self.assign_public_ip,
            command: self.command,
            cpu: self.cpu,
            memory: self.memory,
            runner_port: self.runner_port.unwrap_or(8080),
            secret_delivery,
            task_definition_secret,
            tags: self.tags,
            platform_version: self.platform_version,
            poll: self.poll,
            resolver: self.resolver,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lookup(pairs: &'static [(&'static str, &'static str)]) -> impl Fn(&str) -> Option<String> {
        move |k| pairs.iter().find(|(n, _)| *n == k).map(|(_, v)| (*v).to_owned())
    }

    #[test]
    fn env_fills_every_setting() {
        let b = EcsBackendBuilder::new()
            .apply_lookup(lookup(&[
                ("FLAME_ECS_CLUSTER", "jobs"),
                ("FLAME_ECS_TASK_DEFINITION", "app:7"),
                ("FLAME_ECS_CONTAINER", "web"),
                ("FLAME_ECS_CAPACITY_PROVIDERS", "FARGATE_SPOT:3, FARGATE:1:2"),
                ("FLAME_ECS_SUBNETS", "subnet-a, subnet-b"),
                ("FLAME_ECS_SECURITY_GROUPS", "sg-1"),
                ("FLAME_ECS_ASSIGN_PUBLIC_IP", "true"),
                ("FLAME_ECS_CPU", "1024"),
                ("FLAME_ECS_MEMORY", "2048"),
                ("FLAME_ECS_PORT", "9000"),
                ("FLAME_ECS_SECRET_FROM_TASK_DEFINITION", "yes"),
            ]))
            .unwrap()
            .task_definition_secret(Secret::new("s"));
        let s = b
            .settings(None, vec!["subnet-a".into(), "subnet-b".into()])
            .unwrap();
        assert_eq!(s.cluster, "jobs");
        assert_eq!(s.task_definition, "app:7");
        assert_eq!(s.container_name.as_deref(), Some("web"));
        assert_eq!(
            s.launch,
            Launch::CapacityProviders(vec![("FARGATE_SPOT".into(), 3, 0), ("FARGATE".into(), 1, 2)])
        );
        assert_eq!(s.security_groups, ["sg-1"]);
        assert!(s.assign_public_ip);
        assert_eq!(s.cpu.as_deref(), Some("1024"));
        assert_eq!(s.memory.as_deref(), Some("2048"));
        assert_eq!(s.runner_port, 9000);
        assert_eq!(s.secret_delivery, SecretDelivery::TaskDefinition);
        assert!(
            !format!("{s:?}").contains("\"s\""),
            "the secret is redacted in Debug"
        );
    }

    #[test]
    fn malformed_env_values_name_the_variable() {
        for (k, v) in [
            ("FLAME_ECS_LAUNCH_TYPE", "LAMBDA"),
            ("FLAME_ECS_PORT", "99999"),
            ("FLAME_ECS_ASSIGN_PUBLIC_IP", "maybe"),
            ("FLAME_ECS_CAPACITY_PROVIDERS", "FARGATE:x"),
        ] {
            let err = EcsBackendBuilder::new()
                .apply_lookup(move |n| (n == k).then(|| v.to_owned()))
                .err()
                .unwrap_or_else(|| panic!("{k}={v} accepted"));
            assert_eq!(err.code(), flame_core::ErrorCode::Config);
            assert!(err.message().contains(k), "{err}");
        }
    }

    #[test]
    fn default_url_brackets_ipv6() {
        let s = EcsBackendBuilder::new()
            .cluster("c")
            .task_definition("t")
            .settings(None, vec![])
            .unwrap();
        let mut a = RunnerAddress {
            runner_id: "r".into(),
            backend_id: "arn".into(),
            host: Some("10.0.1.2".into()),
            port: 8080,
        };
        assert_eq!(s.runner_url(&a).as_deref(), Some("http://10.0.1.2:8080"));
        a.host = Some("fd00::5".into());
        assert_eq!(s.runner_url(&a).as_deref(), Some("http://[fd00::5]:8080"));
        a.host = None;
        assert_eq!(s.runner_url(&a), None);
    }
}
