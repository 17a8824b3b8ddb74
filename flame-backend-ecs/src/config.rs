//! Settings of the ECS backend and its builder.

use crate::backend::EcsBackend;
use crate::error::{EcsError, EcsErrorKind};
use crate::metadata;
use aws_config::retry::RetryConfig;
use aws_config::timeout::TimeoutConfig;
use aws_config::{BehaviorVersion, Region, SdkConfig};
use aws_sdk_ecs::config::Credentials;
use flame_core::{AddressResolver, Result, RunnerAddress};
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
    /// by the ECS agent as `FLAME_SECRET`): the override never carries it. The parent must use
    /// the same secret — when the runner runs the parent's own task definition, the parent's
    /// `FLAME_SECRET` comes from the same entry. The production setup.
    TaskDefinition,
}

/// Timing of the boot wait: DescribeTasks polling and `ping` retries, each with exponential
/// backoff (with jitter) between `min` and `max`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PollSettings {
    /// First DescribeTasks delay.
    pub describe_min: Duration,
    /// Longest DescribeTasks delay.
    pub describe_max: Duration,
    /// First delay between pings of a booting runner.
    pub ping_min: Duration,
    /// Longest delay between pings.
    pub ping_max: Duration,
    /// While pinging, check the task with DescribeTasks this often (to notice a task that
    /// stopped instead of waiting out `boot_timeout`).
    pub recheck_every: Duration,
}

impl Default for PollSettings {
    fn default() -> Self {
        PollSettings {
            describe_min: Duration::from_millis(250),
            describe_max: Duration::from_secs(5),
            ping_min: Duration::from_millis(100),
            ping_max: Duration::from_secs(1),
            recheck_every: Duration::from_secs(5),
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

    /// Boot-wait timing.
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

    /// Loads the AWS configuration, fills defaults from the task metadata endpoint (when
    /// there is one) and checks the settings.
    pub async fn build(self) -> Result<EcsBackend> {
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

        let metadata_uri = match self.metadata_uri.clone() {
            Some(uri) => uri,
            None => std::env::var(metadata::ENV).ok().filter(|v| !v.is_empty()),
        };
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
            secret_delivery: self.secret_delivery.unwrap_or(SecretDelivery::Overrides),
            tags: self.tags,
            platform_version: self.platform_version,
            poll: self.poll,
            resolver: self.resolver,
        })
    }
}
