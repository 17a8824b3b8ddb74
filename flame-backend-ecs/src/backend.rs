//! [`EcsBackend`]: runners are ECS tasks.

use crate::config::{EcsBackendBuilder, EcsSettings, Launch, SecretDelivery};
use crate::error::{classify, is_not_found, EcsError, EcsErrorKind};
use async_trait::async_trait;
use aws_sdk_ecs::types::{
    AssignPublicIp, AwsVpcConfiguration, CapacityProviderStrategyItem, ContainerOverride, DesiredStatus,
    KeyValuePair, LaunchType, NetworkConfiguration, Tag, Task, TaskField, TaskOverride,
};
use backon::{BackoffBuilder, ExponentialBuilder};
use flame_core::backend::{labels, ReapCandidate};
use flame_core::{
    Backend, Endpoint, Error, ReapScope, Result, RunnerAddress, RunnerHandle, RunnerState, SpawnRequest,
};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::time::{timeout_at, Instant};

/// How long a clean-up StopTask may take (it runs after a failure, or from a drop guard).
const STOP_BUDGET: Duration = Duration::from_secs(20);

/// DescribeTasks takes at most this many tasks per call.
const DESCRIBE_BATCH: usize = 100;

/// A [`Backend`] whose runners are ECS tasks: RunTask, then DescribeTasks until `RUNNING` with
/// an ENI address (where `spawn` returns; core's readiness probe pings the runner from there);
/// StopTask to end; ListTasks + tags to reap. `status` is `Stopped` as soon as ECS says the
/// task is stopping, and `exit_details` is what ECS says about why (stop code, stopped
/// reason, the containers' exit codes and reasons).
///
/// `reap` ends only provably orphaned tasks of the app ([`flame_core::backend::reap`]), never
/// a runner of another live parent (replicas, rolling deploys): it probes each other parent's
/// task at its ENI address (through the address resolver when one is set) without the secret,
/// and stops those whose runner says its parent has been silent past the failsafe window, or
/// that do not answer for the unreachable window (the failsafe window plus the boot timeout).
/// A task still provisioning, without an address, is spared.
///
/// Build it with [`EcsBackend::builder`]. Cloning is cheap (the SDK client is shared).
#[derive(Clone)]
pub struct EcsBackend {
    client: aws_sdk_ecs::Client,
    settings: Arc<EcsSettings>,
    container: Arc<tokio::sync::OnceCell<String>>,
}

impl std::fmt::Debug for EcsBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EcsBackend")
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

/// Where a task is in its lifecycle, as far as a boot wait cares.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Phase {
    /// `PROVISIONING`, `PENDING`, `ACTIVATING` (or not yet visible).
    Booting,
    /// `RUNNING`; the ENI address when there is one, and whether it has an ENI at all.
    Running { ip: Option<String>, has_eni: bool },
    /// Stopping or stopped; why.
    Stopped(String),
}

impl EcsBackend {
    /// A builder; see [`EcsBackendBuilder`].
    pub fn builder() -> EcsBackendBuilder {
        EcsBackendBuilder::new()
    }

    pub(crate) fn from_parts(client: aws_sdk_ecs::Client, settings: EcsSettings) -> Self {
        let container = Arc::new(tokio::sync::OnceCell::new());
        if let Some(name) = &settings.container_name {
            let _ = container.set(name.clone());
        }
        EcsBackend {
            client,
            settings: Arc::new(settings),
            container,
        }
    }

    /// The ECS client.
    pub fn client(&self) -> &aws_sdk_ecs::Client {
        &self.client
    }

    /// The resolved settings.
    pub fn settings(&self) -> &EcsSettings {
        &self.settings
    }

    /// The `startedBy` value of every task of `app`: `flame-<app>`, limited to the characters
    /// ECS accepts (letters, digits, `-`, `_`, `/`; others become `_`) and to 128 of them.
    ///
    /// ```
    /// assert_eq!(flame_backend_ecs::EcsBackend::started_by("media app"), "flame-media_app");
    /// ```
    pub fn started_by(app: &str) -> String {
        let mut out: String = format!("flame-{app}")
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '/') {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        out.truncate(128);
        out
    }

    /// The container that gets the overrides: configured, else the task definition's only
    /// container (one DescribeTaskDefinition, remembered).
    async fn container_name(&self) -> Result<String> {
        self.container
            .get_or_try_init(|| async {
                let out = self
                    .client
                    .describe_task_definition()
                    .task_definition(&self.settings.task_definition)
                    .send()
                    .await
                    .map_err(|e| Error::from(classify("DescribeTaskDefinition", &e)))?;
                let names: Vec<&str> = out
                    .task_definition()
                    .map(|td| td.container_definitions())
                    .unwrap_or_default()
                    .iter()
                    .filter_map(|c| c.name())
                    .collect();
                match names.as_slice() {
                    [one] => Ok((*one).to_owned()),
                    [] => Err(EcsError::new(
                        EcsErrorKind::MalformedReply,
                        format!(
                            "task definition {} has no named container",
                            self.settings.task_definition
                        ),
                    )
                    .into()),
                    many => Err(EcsError::new(
                        EcsErrorKind::Config,
                        format!(
                            "task definition {} has {} containers ({}): name the runner's with \
                             container_name()",
                            self.settings.task_definition,
                            many.len(),
                            many.join(", ")
                        ),
                    )
                    .into()),
                }
            })
            .await
            .cloned()
    }

    /// The runner's environment as it goes into the container override.
    fn runner_env(&self, request: &SpawnRequest) -> BTreeMap<String, String> {
        let mut env = request.env.clone();
        env.insert("FLAME_MODE".into(), "runner".into());
        env.insert(
            "FLAME_LISTEN".into(),
            format!("0.0.0.0:{}", self.settings.runner_port),
        );
        match self.settings.secret_delivery {
            SecretDelivery::TaskDefinition => {
                env.remove("FLAME_SECRET");
            }
            SecretDelivery::Overrides => {
                if let Some(secret) = &request.secret {
                    env.insert("FLAME_SECRET".into(), secret.expose().to_owned());
                }
            }
        }
        env
    }

    /// The task's tags: the request's labels, the flame labels, the configured extras.
    fn runner_tags(&self, request: &SpawnRequest) -> BTreeMap<String, String> {
        let mut tags = self.settings.tags.clone();
        tags.extend(request.labels.clone());
        tags.insert(labels::APP.into(), request.app.clone());
        tags.insert(labels::POOL.into(), request.pool.clone());
        tags.insert(labels::PARENT.into(), request.parent_id.clone());
        tags.insert(labels::RUNNER.into(), request.runner_id.clone());
        tags
    }

    fn run_task(
        &self,
        request: &SpawnRequest,
        container: &str,
    ) -> Result<aws_sdk_ecs::operation::run_task::builders::RunTaskFluentBuilder> {
        let s = &self.settings;
        let bad = |what: &str, e: &dyn std::fmt::Display| -> Error {
            EcsError::new(EcsErrorKind::Config, format!("{what}: {e}")).into()
        };
        let mut container_override = ContainerOverride::builder().name(container);
        for (name, value) in self.runner_env(request) {
            container_override =
                container_override.environment(KeyValuePair::builder().name(name).value(value).build());
        }
        if let Some(command) = &s.command {
            container_override = container_override.set_command(Some(command.clone()));
        }
        let overrides = TaskOverride::builder()
            .container_overrides(container_override.build())
            .set_cpu(s.cpu.clone())
            .set_memory(s.memory.clone())
            .build();
        let mut run = self
            .client
            .run_task()
            .cluster(&s.cluster)
            .task_definition(&s.task_definition)
            .count(1)
            .overrides(overrides)
            .started_by(Self::started_by(&request.app))
            .enable_execute_command(false)
            .client_token(client_token(&request.runner_id))
            .set_platform_version(s.platform_version.clone());
        for (key, value) in self.runner_tags(request) {
            run = run.tags(Tag::builder().key(key).value(value).build());
        }
        match &s.launch {
            Launch::ClusterDefault => {}
            Launch::LaunchType(t) => run = run.launch_type(LaunchType::from(t.as_str())),
            Launch::CapacityProviders(items) => {
                for (provider, weight, base) in items {
                    run = run.capacity_provider_strategy(
                        CapacityProviderStrategyItem::builder()
                            .capacity_provider(provider)
                            .weight(*weight)
                            .base(*base)
                            .build()
                            .map_err(|e| bad("capacity provider strategy", &e))?,
                    );
                }
            }
        }
        if !s.subnets.is_empty() {
            let vpc = AwsVpcConfiguration::builder()
                .set_subnets(Some(s.subnets.clone()))
                .set_security_groups((!s.security_groups.is_empty()).then(|| s.security_groups.clone()))
                .assign_public_ip(if s.assign_public_ip {
                    AssignPublicIp::Enabled
                } else {
                    AssignPublicIp::Disabled
                })
                .build()
                .map_err(|e| bad("awsvpc configuration", &e))?;
            run =
                run.network_configuration(NetworkConfiguration::builder().awsvpc_configuration(vpc).build());
        }
        Ok(run)
    }

    /// DescribeTasks for one task; `None` when ECS does not (or no longer) know it.
    async fn describe(&self, arn: &str) -> Result<Option<Task>> {
        let out = self
            .client
            .describe_tasks()
            .cluster(&self.settings.cluster)
            .tasks(arn)
            // Tags are not needed here, but asking every time keeps replies uniform (moto
            // keeps the include flag per server, not per request).
            .include(TaskField::Tags)
            .send()
            .await
            .map_err(|e| Error::from(classify("DescribeTasks", &e)))?;
        Ok(out.tasks().iter().find(|t| t.task_arn() == Some(arn)).cloned())
    }

    /// StopTask; a task (or cluster) ECS does not know counts as stopped.
    async fn stop(&self, arn: &str, reason: &str) -> Result<()> {
        match self
            .client
            .stop_task()
            .cluster(&self.settings.cluster)
            .task(arn)
            .reason(truncate(reason, 255))
            .send()
            .await
        {
            Ok(_) => Ok(()),
            Err(e) => {
                let err = classify("StopTask", &e);
                if is_not_found(&err) {
                    Ok(())
                } else {
                    Err(err.into())
                }
            }
        }
    }

    /// Stops a task after a failed spawn, bounded; failures are logged (the error the caller
    /// sees is the spawn's).
    async fn stop_after_failure(&self, arn: &str, reason: &str) {
        match tokio::time::timeout(STOP_BUDGET, self.stop(arn, reason)).await {
            Ok(Ok(())) => tracing::debug!(task = arn, reason, "flame ecs: stopped task after failed spawn"),
            Ok(Err(e)) => {
                tracing::warn!(task = arn, error = %e, "flame ecs: StopTask after failed spawn failed; the runner's failsafe ends it")
            }
            Err(_) => tracing::warn!(
                task = arn,
                "flame ecs: StopTask after failed spawn timed out; the runner's failsafe ends it"
            ),
        }
    }

    /// After a RunTask whose outcome is unknown (5xx, timeout, unreadable reply), finds a task
    /// that carries this runner's id and stops it.
    async fn stop_by_runner_id(&self, request: &SpawnRequest, reason: &str) {
        let found = tokio::time::timeout(STOP_BUDGET, async {
            let arns = self.list_app_tasks(&request.app).await?;
            let tasks = self.describe_with_tags(&arns).await?;
            Ok::<_, Error>(
                tasks
                    .into_iter()
                    .filter(|t| tag_map(t).get(labels::RUNNER) == Some(&request.runner_id.as_str()))
                    .filter_map(|t| t.task_arn().map(str::to_owned))
                    .collect::<Vec<_>>(),
            )
        })
        .await;
        match found {
            Ok(Ok(arns)) => {
                for arn in arns {
                    self.stop_after_failure(&arn, reason).await;
                }
            }
            Ok(Err(e)) => {
                tracing::warn!(runner = %request.runner_id, error = %e, "flame ecs: could not look for a task left by a failed RunTask; the runner's failsafe ends it")
            }
            Err(_) => {
                tracing::warn!(runner = %request.runner_id, "flame ecs: looking for a task left by a failed RunTask timed out")
            }
        }
    }

    /// Task ARNs of `app` whose desired status is RUNNING.
    async fn list_app_tasks(&self, app: &str) -> Result<Vec<String>> {
        let mut arns = Vec::new();
        let mut next: Option<String> = None;
        loop {
            let out = self
                .client
                .list_tasks()
                .cluster(&self.settings.cluster)
                .started_by(Self::started_by(app))
                .desired_status(DesiredStatus::Running)
                .set_next_token(next.take())
                .send()
                .await
                .map_err(|e| Error::from(classify("ListTasks", &e)))?;
            arns.extend(out.task_arns().iter().cloned());
            match out.next_token() {
                Some(token) if !token.is_empty() => next = Some(token.to_owned()),
                _ => break,
            }
        }
        Ok(arns)
    }

    /// DescribeTasks with tags, in batches.
    async fn describe_with_tags(&self, arns: &[String]) -> Result<Vec<Task>> {
        let mut tasks = Vec::with_capacity(arns.len());
        for batch in arns.chunks(DESCRIBE_BATCH) {
            let out = self
                .client
                .describe_tasks()
                .cluster(&self.settings.cluster)
                .set_tasks(Some(batch.to_vec()))
                .include(TaskField::Tags)
                .send()
                .await
                .map_err(|e| Error::from(classify("DescribeTasks", &e)))?;
            tasks.extend(out.tasks().iter().cloned());
        }
        Ok(tasks)
    }

    /// Polls DescribeTasks until the task runs with an address; returns the address.
    async fn wait_running(&self, arn: &str, deadline: Instant) -> Result<String> {
        let p = self.settings.poll;
        let mut delays = ExponentialBuilder::new()
            .with_min_delay(p.describe_min)
            .with_max_delay(p.describe_max)
            .with_factor(1.5)
            .with_jitter()
            .without_max_times()
            .build();
        let mut last = String::from("not yet described");
        loop {
            let task = match timeout_at(deadline, self.describe(arn)).await {
                Ok(result) => result?,
                Err(_) => return Err(boot_timeout(arn, &last)),
            };
            match task.as_ref().map(phase) {
                None => last = "not yet visible to DescribeTasks".into(),
                Some(Phase::Booting) => {
                    last = format!(
                        "last status {}",
                        task.as_ref().and_then(|t| t.last_status()).unwrap_or("(none)")
                    )
                }
                Some(Phase::Running { ip: Some(ip), .. }) => return Ok(ip),
                Some(Phase::Running {
                    ip: None,
                    has_eni: false,
                }) => {
                    return Err(EcsError::new(
                        EcsErrorKind::NoAddress,
                        format!(
                            "task {arn} is RUNNING without an ENI: the runner's task definition \
                             must use networkMode awsvpc"
                        ),
                    )
                    .into())
                }
                Some(Phase::Running {
                    ip: None,
                    has_eni: true,
                }) => last = "RUNNING, ENI has no address yet".into(),
                Some(Phase::Stopped(why)) => {
                    return Err(EcsError::new(
                        EcsErrorKind::StoppedDuringBoot,
                        format!("task {arn} stopped during boot: {why}"),
                    )
                    .into())
                }
            }
            let delay = delays.next().unwrap_or(p.describe_max);
            if Instant::now() + delay >= deadline {
                tokio::time::sleep_until(deadline).await;
                return Err(boot_timeout(arn, &last));
            }
            tokio::time::sleep(delay).await;
        }
    }

    async fn spawn_inner(&self, request: &SpawnRequest, deadline: Instant) -> Result<RunnerHandle> {
        let container = match timeout_at(deadline, self.container_name()).await {
            Ok(name) => name?,
            Err(_) => return Err(boot_timeout("(none started)", "looking up the container name")),
        };
        let run = self.run_task(request, &container)?;
        let out = match timeout_at(deadline, run.send()).await {
            Ok(Ok(out)) => out,
            Ok(Err(e)) => {
                let err = classify("RunTask", &e);
                if matches!(err.kind, EcsErrorKind::Unavailable | EcsErrorKind::MalformedReply) {
                    // The task may have started even though the reply was lost or unreadable.
                    self.stop_by_runner_id(request, "flame: RunTask reply lost or unreadable")
                        .await;
                }
                return Err(err.into());
            }
            Err(_) => {
                self.stop_by_runner_id(request, "flame: boot timeout during RunTask")
                    .await;
                return Err(boot_timeout("(RunTask pending)", "RunTask did not answer"));
            }
        };
        let arn = match out.tasks().first().and_then(|t| t.task_arn()) {
            Some(arn) => arn.to_owned(),
            None => {
                for task in out.tasks() {
                    // A task without an ARN cannot be stopped by us; nothing else to do.
                    tracing::warn!(?task, "flame ecs: RunTask returned a task without an ARN");
                }
                return Err(run_task_failure(&out, &self.settings.cluster).into());
            }
        };
        let guard = StopGuard::new(self.clone(), arn.clone());
        let result = async {
            let ip = self.wait_running(&arn, deadline).await?;
            let address = RunnerAddress {
                runner_id: request.runner_id.clone(),
                backend_id: arn.clone(),
                host: Some(ip),
                port: self.settings.runner_port,
            };
            let url = self.settings.runner_url(&address).ok_or_else(|| {
                Error::from(EcsError::new(
                    EcsErrorKind::NoAddress,
                    format!("no URL for task {arn}"),
                ))
            })?;
            // The secret the runner verifies with: the request's (sent in the overrides), or
            // the one its task definition injects.
            let secret = match self.settings.secret_delivery {
                SecretDelivery::Overrides => request.secret.clone(),
                SecretDelivery::TaskDefinition => self.settings.task_definition_secret.clone(),
            };
            // Placed: core's readiness probe pings it from here on.
            Ok::<_, Error>(Endpoint::new(url, request.runner_id.clone()).with_secret(secret))
        }
        .await;
        match result {
            Ok(endpoint) => {
                guard.disarm();
                Ok(RunnerHandle {
                    runner_id: request.runner_id.clone(),
                    backend_id: arn,
                    endpoint,
                })
            }
            Err(e) => {
                let reason = format!("flame: spawn failed: {}", e.message());
                self.stop_after_failure(&arn, &reason).await;
                // Disarmed only now: a spawn dropped during this StopTask still stops the task.
                guard.disarm();
                Err(e)
            }
        }
    }
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
impl Backend for EcsBackend {
    fn name(&self) -> &str {
        "ecs"
    }

    async fn spawn(&self, request: SpawnRequest) -> Result<RunnerHandle> {
        let deadline = placement_deadline(request.boot_timeout);
        let started = std::time::Instant::now();
        let result = self.spawn_inner(&request, deadline).await;
        match &result {
            Ok(handle) => tracing::info!(
                runner = %handle.runner_id,
                task = %handle.backend_id,
                url = %handle.endpoint.url,
                boot_ms = started.elapsed().as_millis() as u64,
                "flame ecs: runner placed"
            ),
            Err(e) => tracing::warn!(runner = %request.runner_id, error = %e, "flame ecs: spawn failed"),
        }
        result
    }

    async fn exit_details(&self, handle: &RunnerHandle) -> Option<String> {
        let arn = &handle.backend_id;
        match self.describe(arn).await {
            Ok(Some(task)) => Some(format!("task {arn}: {}", stop_description(&task))),
            Ok(None) => Some(format!("task {arn} is unknown to ECS (stopped long ago)")),
            Err(e) => {
                tracing::debug!(task = %arn, error = %e, "flame ecs: could not describe a stopped task");
                None
            }
        }
    }

    async fn terminate(&self, handle: &RunnerHandle) -> Result<()> {
        let arn = &handle.backend_id;
        match self.stop(arn, "flame: runner terminated by its parent").await {
            Ok(()) => Ok(()),
            // StopTask failed: if ECS does not know the task, or it stops anyway, the runner
            // is gone, which is all terminate promises.
            Err(e) => match self.describe(arn).await {
                Ok(None) => Ok(()),
                Ok(Some(task)) if matches!(phase(&task), Phase::Stopped(_)) => Ok(()),
                _ => Err(e),
            },
        }
    }

    async fn status(&self, handle: &RunnerHandle) -> Result<RunnerState> {
        Ok(match self.describe(&handle.backend_id).await? {
            None => RunnerState::Stopped,
            Some(task) => match phase(&task) {
                Phase::Booting => RunnerState::Booting,
                Phase::Running { .. } => RunnerState::Running,
                Phase::Stopped(_) => RunnerState::Stopped,
            },
        })
    }

    async fn reap(&self, scope: &ReapScope) -> Result<usize> {
        let arns = self.list_app_tasks(&scope.app).await?;
        let tasks = self.describe_with_tags(&arns).await?;
        let mut candidates = Vec::new();
        for task in &tasks {
            let tags = tag_map(task);
            // Tasks already told to stop are on their way out (perhaps drained by their own
            // live parent): nothing to do.
            if tags.get(labels::APP) != Some(&scope.app.as_str()) || task.desired_status() == Some("STOPPED")
            {
                continue;
            }
            let Some(arn) = task.task_arn() else { continue };
            let parent = tags.get(labels::PARENT).map(|p| (*p).to_owned());
            let runner_id = tags
                .get(labels::RUNNER)
                .map(|r| (*r).to_owned())
                .unwrap_or_else(|| arn.rsplit('/').next().unwrap_or(arn).to_owned());
            let state = match phase(task) {
                Phase::Booting => RunnerState::Booting,
                Phase::Running { .. } => RunnerState::Running,
                Phase::Stopped(_) => RunnerState::Stopped,
            };
            let no_probe =
                state == RunnerState::Stopped || parent.as_deref().map_or(true, |p| p == scope.live_parent);
            let endpoint = if no_probe {
                None
            } else {
                let address = RunnerAddress {
                    runner_id: runner_id.clone(),
                    backend_id: arn.to_owned(),
                    host: task_ip(task),
                    port: self.settings.runner_port,
                };
                match self.settings.runner_url(&address) {
                    Some(url) => Some(Endpoint::new(url, runner_id.clone())),
                    None => {
                        // No address yet (still provisioning): nothing proves it orphaned. If
                        // its parent is gone, the runner's own failsafe ends it once it runs.
                        tracing::debug!(task = arn, runner = %runner_id, "flame ecs: reap spares a task without an address");
                        continue;
                    }
                }
            };
            candidates.push(ReapCandidate::new(runner_id, arn, parent, state, endpoint));
        }
        let chosen = scope.select(candidates).await;
        let mut stopped = 0;
        let mut failed: Option<Error> = None;
        for (c, reason) in &chosen {
            let parent = c.parent_id.as_deref().unwrap_or("(none)");
            let why = format!("flame: reaped, parent {parent} is gone: {reason}");
            match self.stop(&c.backend_id, &why).await {
                Ok(()) => {
                    tracing::info!(task = %c.backend_id, runner = %c.runner_id, parent, %reason, "flame ecs: reaped an orphaned runner");
                    stopped += 1;
                }
                Err(e) => {
                    tracing::warn!(task = %c.backend_id, error = %e, "flame ecs: reap could not stop task");
                    failed.get_or_insert(e);
                }
            }
        }
        match failed {
            Some(e) => Err(e.context(format!("reap stopped {stopped} task(s), then"))),
            None => Ok(stopped),
        }
    }
}

/// Stops the task when a spawn is dropped half-way (the caller gave up).
struct StopGuard {
    backend: EcsBackend,
    arn: String,
    armed: bool,
}

impl StopGuard {
    fn new(backend: EcsBackend, arn: String) -> Self {
        StopGuard {
            backend,
            arn,
            armed: true,
        }
    }

    fn disarm(mut self) {
        self.armed = false;
    }
}

impl Drop for StopGuard {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        let backend = self.backend.clone();
        let arn = std::mem::take(&mut self.arn);
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(async move {
                backend.stop_after_failure(&arn, "flame: spawn cancelled").await;
            });
        } else {
            tracing::warn!(task = %arn, "flame ecs: spawn dropped outside a runtime; the runner's failsafe ends the task");
        }
    }
}

/// The lifecycle phase of a described task.
fn phase(task: &Task) -> Phase {
    let last = task.last_status().unwrap_or_default();
    let stopping = task.desired_status() == Some("STOPPED");
    match last {
        "RUNNING" if !stopping => Phase::Running {
            ip: task_ip(task),
            has_eni: task
                .attachments()
                .iter()
                .any(|a| a.r#type() == Some("ElasticNetworkInterface"))
                || task
                    .containers()
                    .iter()
                    .any(|c| !c.network_interfaces().is_empty()),
        },
        "DEACTIVATING" | "STOPPING" | "DEPROVISIONING" | "STOPPED" | "DELETED" | "RUNNING" => {
            Phase::Stopped(stop_description(task))
        }
        _ if stopping => Phase::Stopped(stop_description(task)),
        _ => Phase::Booting,
    }
}

/// Why a task stops, from everything ECS says about it.
fn stop_description(task: &Task) -> String {
    let mut parts = vec![format!(
        "last status {}, desired {}",
        task.last_status().unwrap_or("(none)"),
        task.desired_status().unwrap_or("(none)")
    )];
    if let Some(code) = task.stop_code() {
        parts.push(format!("stop code {}", code.as_str()));
    }
    if let Some(reason) = task.stopped_reason().filter(|r| !r.is_empty()) {
        parts.push(format!("reason {reason:?}"));
    }
    for c in task.containers() {
        if c.exit_code().is_some() || c.reason().is_some() {
            parts.push(format!(
                "container {} exit code {} {}",
                c.name().unwrap_or("?"),
                c.exit_code().map_or_else(|| "-".to_owned(), |x| x.to_string()),
                c.reason().unwrap_or_default()
            ));
        }
    }
    parts.join("; ")
}

/// The task's private address: the ENI attachment first (moto fills only that), then the
/// containers' network interfaces.
fn task_ip(task: &Task) -> Option<String> {
    let details: Vec<_> = task
        .attachments()
        .iter()
        .filter(|a| a.r#type() == Some("ElasticNetworkInterface"))
        .flat_map(|a| a.details())
        .collect();
    let detail = |name: &str| {
        details
            .iter()
            .find(|d| d.name() == Some(name))
            .and_then(|d| d.value())
            .filter(|v| !v.is_empty())
            .map(str::to_owned)
    };
    detail("privateIPv4Address")
        .or_else(|| detail("ipv6Address"))
        .or_else(|| {
            task.containers()
                .iter()
                .flat_map(|c| c.network_interfaces())
                .find_map(|n| {
                    n.private_ipv4_address()
                        .or(n.ipv6_address())
                        .filter(|v| !v.is_empty())
                        .map(str::to_owned)
                })
        })
}

fn tag_map(task: &Task) -> BTreeMap<&str, &str> {
    task.tags()
        .iter()
        .filter_map(|t| Some((t.key()?, t.value().unwrap_or_default())))
        .collect()
}

/// The typed error for a RunTask that started nothing.
fn run_task_failure(out: &aws_sdk_ecs::operation::run_task::RunTaskOutput, cluster: &str) -> EcsError {
    let Some(f) = out.failures().first() else {
        return EcsError::new(
            EcsErrorKind::MalformedReply,
            format!("RunTask on {cluster} returned neither a task nor a failure"),
        );
    };
    let reason = f.reason().unwrap_or_default();
    let lower = reason.to_ascii_lowercase();
    let kind = if reason.starts_with("RESOURCE") || lower.contains("capacity") {
        EcsErrorKind::Capacity
    } else if reason.starts_with("AGENT") {
        EcsErrorKind::Agent
    } else {
        EcsErrorKind::RunTaskFailed
    };
    let mut message = format!("RunTask on {cluster} failed: {reason}");
    if let Some(detail) = f.detail() {
        message.push_str(&format!(" ({detail})"));
    }
    if let Some(arn) = f.arn() {
        message.push_str(&format!(" [{arn}]"));
    }
    EcsError::new(kind, message).with_code(reason)
}

fn boot_timeout(arn: &str, last: &str) -> Error {
    EcsError::new(
        EcsErrorKind::BootTimeout,
        format!("task {arn} was not RUNNING with an address within boot_timeout ({last})"),
    )
    .into()
}

/// RunTask's idempotency token (at most 64 characters).
fn client_token(runner_id: &str) -> String {
    let token: String = runner_id
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_'))
        .take(64)
        .collect();
    if token.is_empty() {
        uuid::Uuid::new_v4().to_string()
    } else {
        token
    }
}

fn truncate(s: &str, max: usize) -> &str {
    match s.char_indices().nth(max) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use aws_sdk_ecs::types::{Attachment, Container, NetworkInterface};

    fn eni(ip: Option<&str>) -> Attachment {
        let mut a = Attachment::builder()
            .r#type("ElasticNetworkInterface")
            .details(KeyValuePair::builder().name("subnetId").value("subnet-1").build());
        if let Some(ip) = ip {
            a = a.details(
                KeyValuePair::builder()
                    .name("privateIPv4Address")
                    .value(ip)
                    .build(),
            );
        }
        a.build()
    }

    #[test]
    fn phases_follow_the_task_lifecycle() {
        for s in ["PROVISIONING", "PENDING", "ACTIVATING"] {
            let t = Task::builder().last_status(s).desired_status("RUNNING").build();
            assert_eq!(phase(&t), Phase::Booting, "{s}");
        }
        let t = Task::builder()
            .last_status("RUNNING")
            .desired_status("RUNNING")
            .attachments(eni(Some("10.0.0.7")))
            .build();
        assert_eq!(
            phase(&t),
            Phase::Running {
                ip: Some("10.0.0.7".into()),
                has_eni: true
            }
        );
        for s in ["DEACTIVATING", "STOPPING", "DEPROVISIONING", "STOPPED"] {
            let t = Task::builder().last_status(s).build();
            assert!(matches!(phase(&t), Phase::Stopped(_)), "{s}");
        }
        let t = Task::builder()
            .last_status("PENDING")
            .desired_status("STOPPED")
            .stopped_reason("Essential container exited")
            .build();
        match phase(&t) {
            Phase::Stopped(why) => assert!(why.contains("Essential container exited"), "{why}"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn address_prefers_the_eni_attachment_then_containers() {
        let t = Task::builder().attachments(eni(None)).build();
        assert_eq!(task_ip(&t), None);
        let t = Task::builder()
            .attachments(eni(None))
            .containers(
                Container::builder()
                    .network_interfaces(
                        NetworkInterface::builder()
                            .private_ipv4_address("10.1.2.3")
                            .build(),
                    )
                    .build(),
            )
            .build();
        assert_eq!(task_ip(&t).as_deref(), Some("10.1.2.3"));
        let t = Task::builder().attachments(eni(Some("10.9.9.9"))).build();
        assert_eq!(task_ip(&t).as_deref(), Some("10.9.9.9"));
        let v6 = Attachment::builder()
            .r#type("ElasticNetworkInterface")
            .details(
                KeyValuePair::builder()
                    .name("ipv6Address")
                    .value("fd00::7")
                    .build(),
            )
            .build();
        let t = Task::builder().attachments(v6).build();
        assert_eq!(task_ip(&t).as_deref(), Some("fd00::7"));
    }

    #[test]
    fn started_by_and_client_token_fit_ecs_limits() {
        assert_eq!(EcsBackend::started_by("a.b:c"), "flame-a_b_c");
        assert_eq!(EcsBackend::started_by(&"x".repeat(300)).len(), 128);
        assert_eq!(client_token(&"y".repeat(100)).len(), 64);
        assert!(!client_token("!!!").is_empty());
    }
}
