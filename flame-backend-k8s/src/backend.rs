//! [`K8sBackend`]: runners as Pods.

use crate::config::{K8sConfig, RetryPolicy};
use crate::error::{classify, classify_watch, K8sError, K8sErrorKind};
use crate::pod::{
    assess, build_pod, container_ended, describe, flame_value, label_value, runner_port, Boot, ParentTemplate,
};
use async_trait::async_trait;
use backon::{BackoffBuilder, ExponentialBuilder};
use flame_core::backend::{labels, ReapCandidate, ReapReason};
use flame_core::{
    AddressResolver, Backend, Endpoint, Error, ReapScope, Result, RunnerAddress, RunnerHandle, RunnerState,
    SpawnRequest,
};
use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, DeleteParams, ListParams, PostParams, Preconditions, PropagationPolicy};
use kube::runtime::{watcher, WatchStreamExt};
use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tokio::time::{timeout_at, Instant};

/// How long a clean-up delete may take (after a failed spawn, or from a drop guard).
const CLEANUP_BUDGET: Duration = Duration::from_secs(20);

/// Runs each runner as a Kubernetes Pod (see the [crate docs](crate)).
///
/// `spawn` creates the Pod (from the parent Pod's own spec, or the configured image; an
/// ownerReference to the parent Pod, `restartPolicy: Never`, `activeDeadlineSeconds`, the
/// `flame.*` labels), watches it (a `kube::runtime` watcher, no polling) until it runs with a
/// Pod IP, and returns the runner's endpoint there: core's readiness probe pings it from
/// there. A Pod that fails first (`ImagePullBackOff`, `OOMKilled`, evicted, still
/// `Unschedulable` at `boot_timeout`) is deleted and the typed error carries the Pod's reason
/// and message; so is a Pod whose spawn is dropped half-way. `status` is `Stopped` as soon as
/// the Pod's phase is `Failed`/`Succeeded` or its container ended, and `exit_details` gives
/// the Pod's reason and message and its container's termination (reason, exit code). `terminate` deletes the Pod with a grace period (idempotent: a Pod
/// that is gone is `Ok`). `reap` lists the app's Pods by label and deletes only those the
/// core reap rule proves orphaned ([`ReapScope::select`]).
///
/// ```no_run
/// # async fn demo() -> Result<(), flame_core::Error> {
/// use flame_backend_k8s::{K8sBackend, K8sConfig};
/// // In a cluster: the parent Pod from HOSTNAME, the namespace of its ServiceAccount.
/// let backend = K8sBackend::from_env().await?;
/// // Or with your own client and settings.
/// let client = kube::Client::try_default().await.map_err(|e| flame_core::Error::config(e.to_string()))?;
/// let other = K8sBackend::new(client, K8sConfig::from_image("registry.example/app:1.4").namespace("jobs"))?;
/// # let _ = (backend, other); Ok(()) }
/// ```
#[derive(Clone)]
pub struct K8sBackend {
    inner: Arc<Inner>,
}

struct Inner {
    client: kube::Client,
    pods: Api<Pod>,
    namespace: String,
    config: K8sConfig,
    resolver: Option<AddressResolver>,
    parent: tokio::sync::OnceCell<ParentTemplate>,
}

impl fmt::Debug for K8sBackend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("K8sBackend")
            .field("namespace", &self.inner.namespace)
            .field("config", &self.inner.config)
            .field("custom_resolver", &self.inner.resolver.is_some())
            .finish()
    }
}

impl K8sBackend {
    /// A backend on `client` with these settings; runners go to `config.namespace`, else the
    /// client's default namespace. A `CONFIG` error when there is neither a parent Pod nor an
    /// image.
    pub fn new(client: kube::Client, config: K8sConfig) -> Result<Self> {
        config.validate()?;
        let namespace = config
            .namespace
            .clone()
            .unwrap_or_else(|| client.default_namespace().to_owned());
        Ok(K8sBackend {
            inner: Arc::new(Inner {
                pods: Api::namespaced(client.clone(), &namespace),
                client,
                namespace,
                config,
                resolver: None,
                parent: tokio::sync::OnceCell::new(),
            }),
        })
    }

    /// A backend with these settings and a client inferred the standard way (in a cluster:
    /// the Pod's ServiceAccount; outside: `KUBECONFIG` / `~/.kube/config`). The client's own
    /// retry layer is off: the backend retries itself ([`RetryPolicy`], bounded by
    /// `boot_timeout`). A client you pass to [`K8sBackend::new`] should have
    /// `kube::Config::default_retry` off too, or the two retries multiply.
    pub async fn connect(config: K8sConfig) -> Result<Self> {
        config.validate()?;
        let no_cluster = |e: &dyn std::error::Error| {
            Error::from(K8sError::new(
                K8sErrorKind::Config,
                format!(
                    "no Kubernetes cluster found (neither the in-cluster ServiceAccount nor a \
                     kubeconfig): {}",
                    crate::error::chain(e)
                ),
            ))
        };
        let mut client_config = kube::Config::infer().await.map_err(|e| no_cluster(&e))?;
        client_config.default_retry = false;
        let client = kube::Client::try_from(client_config).map_err(|e| no_cluster(&e))?;
        K8sBackend::new(client, config)
    }

    /// A backend configured from the environment ([`K8sConfig::from_env`]) and the standard
    /// client.
    pub async fn from_env() -> Result<Self> {
        K8sBackend::connect(K8sConfig::from_env()?).await
    }

    /// Maps each Pod to the URL the parent uses instead of `http://<pod IP>:<port>` (tests map
    /// Pods to runners on 127.0.0.1). Returning `None` falls back to the Pod IP.
    pub fn with_resolver(mut self, resolver: AddressResolver) -> Self {
        match Arc::get_mut(&mut self.inner) {
            Some(inner) => inner.resolver = Some(resolver),
            None => {
                let old = &self.inner;
                self.inner = Arc::new(Inner {
                    client: old.client.clone(),
                    pods: old.pods.clone(),
                    namespace: old.namespace.clone(),
                    config: old.config.clone(),
                    resolver: Some(resolver),
                    parent: tokio::sync::OnceCell::new(),
                });
            }
        }
        self
    }

    /// The settings.
    pub fn config(&self) -> &K8sConfig {
        &self.inner.config
    }

    /// The namespace runner Pods are created in.
    pub fn namespace(&self) -> &str {
        &self.inner.namespace
    }

    /// The Kubernetes client.
    pub fn client(&self) -> &kube::Client {
        &self.inner.client
    }
}

/// Exponential backoff with jitter for API retries; `retryAfterSeconds` wins when given.
struct Retrier<'a> {
    policy: &'a RetryPolicy,
    backoff: backon::ExponentialBackoff,
    attempt: u32,
}

impl<'a> Retrier<'a> {
    fn new(policy: &'a RetryPolicy) -> Self {
        Retrier {
            policy,
            backoff: ExponentialBuilder::new()
                .with_min_delay(policy.min_delay)
                .with_max_delay(policy.max_delay)
                .with_jitter()
                .without_max_times()
                .build(),
            attempt: 0,
        }
    }

    /// Counts an attempt; call before each.
    fn start(&mut self) -> u32 {
        self.attempt += 1;
        self.attempt
    }

    /// How long to wait before the next attempt after `err`, or `None` to give up.
    fn delay(&mut self, err: &K8sError) -> Option<Duration> {
        if !err.kind.is_retryable() || self.attempt > self.policy.max_retries {
            return None;
        }
        let backoff = self.backoff.next().unwrap_or(self.policy.max_delay);
        Some(match err.retry_after {
            Some(after) => after.min(self.policy.max_retry_after),
            None => backoff,
        })
    }
}

/// A create that failed, and whether a Pod may exist anyway (a reply lost after the API
/// acted).
struct CreateFailure {
    error: K8sError,
    maybe_created: bool,
}

impl Inner {
    /// One API operation with retries (429, 5xx, timeouts, connection failures), each attempt
    /// bounded by `request_timeout`.
    async fn call<T, F, Fut>(&self, op: &str, mut f: F) -> std::result::Result<T, K8sError>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = kube::Result<T>>,
    {
        let mut retry = Retrier::new(&self.config.retry);
        loop {
            let attempt = retry.start();
            let mut err = match tokio::time::timeout(self.config.request_timeout, f()).await {
                Ok(Ok(v)) => return Ok(v),
                Ok(Err(e)) => classify(op, &e),
                Err(_) => K8sError::new(
                    K8sErrorKind::Unavailable,
                    format!("{op}: no answer within {:?}", self.config.request_timeout),
                ),
            };
            err.attempts = attempt;
            match retry.delay(&err) {
                Some(delay) => {
                    tracing::debug!(op, attempt, error = %err, ?delay, "k8s: API call failed; retrying");
                    tokio::time::sleep(delay).await;
                }
                None => return Err(err),
            }
        }
    }

    /// Creates the Pod. A 409 after an attempt whose outcome is unknown is checked: the Pod
    /// that exists is ours when it carries our runner id.
    async fn create(&self, pod: &Pod, runner_id: &str) -> std::result::Result<Pod, CreateFailure> {
        let name = pod.metadata.name.clone().unwrap_or_default();
        let op = format!("create pod {name}");
        let mut retry = Retrier::new(&self.config.retry);
        let mut maybe_created = false;
        loop {
            let attempt = retry.start();
            let mut err = match tokio::time::timeout(
                self.config.request_timeout,
                self.pods.create(&PostParams::default(), pod),
            )
            .await
            {
                Ok(Ok(created)) => return Ok(created),
                Ok(Err(e)) => classify(&op, &e),
                Err(_) => K8sError::new(
                    K8sErrorKind::Unavailable,
                    format!("{op}: no answer within {:?}", self.config.request_timeout),
                ),
            };
            err.attempts = attempt;
            err.pod = Some(name.clone());
            if err.kind == K8sErrorKind::Conflict && maybe_created {
                // An earlier attempt landed after all: adopt it if it is ours.
                if let Ok(Some(existing)) = self
                    .call(&format!("get pod {name}"), || self.pods.get_opt(&name))
                    .await
                {
                    if flame_value(&existing, labels::RUNNER) == Some(runner_id) {
                        tracing::debug!(pod = %name, "k8s: a retried create found its own Pod");
                        return Ok(existing);
                    }
                }
                // The name is taken by a Pod that is not (provably) ours: never delete it.
                maybe_created = false;
            }
            if matches!(err.kind, K8sErrorKind::Unavailable | K8sErrorKind::MalformedReply) {
                maybe_created = true;
            }
            match retry.delay(&err) {
                Some(delay) => {
                    tracing::debug!(op = %op, attempt, error = %err, ?delay, "k8s: create failed; retrying");
                    tokio::time::sleep(delay).await;
                }
                None => {
                    return Err(CreateFailure {
                        error: err,
                        maybe_created,
                    })
                }
            }
        }
    }

    /// Deletes a Pod after a failure, at once and bounded; `true` when it existed. Failures
    /// are logged: the caller's error is the spawn's.
    async fn delete_quietly(&self, name: &str, why: &str) -> bool {
        let dp = DeleteParams {
            grace_period_seconds: Some(0),
            propagation_policy: Some(PropagationPolicy::Background),
            ..DeleteParams::default()
        };
        let op = format!("delete pod {name}");
        let deleted =
            tokio::time::timeout(CLEANUP_BUDGET, self.call(&op, || self.pods.delete(name, &dp))).await;
        match deleted {
            Ok(Ok(_)) => {
                tracing::debug!(pod = name, why, "k8s: deleted runner Pod");
                true
            }
            Ok(Err(e)) if e.kind == K8sErrorKind::NotFound => false,
            Ok(Err(e)) => {
                tracing::warn!(pod = name, error = %e, "k8s: could not delete a failed runner Pod; its failsafe, activeDeadlineSeconds and ownerReference remain");
                true
            }
            Err(_) => {
                tracing::warn!(pod = name, "k8s: deleting a failed runner Pod timed out; its failsafe, activeDeadlineSeconds and ownerReference remain");
                true
            }
        }
    }

    /// The parent Pod's template (read once), when there is a parent Pod.
    async fn parent_template(&self) -> Result<Option<ParentTemplate>> {
        let Some(name) = self.config.parent_pod.as_deref() else {
            return Ok(None);
        };
        let template = self
            .parent
            .get_or_try_init(|| async {
                let pod = self
                    .call(&format!("get parent pod {name}"), || self.pods.get(name))
                    .await
                    .map_err(|mut e| {
                        if e.kind == K8sErrorKind::NotFound {
                            e.kind = K8sErrorKind::Config;
                            e.message = format!(
                                "{} (the parent Pod {name} is not in namespace {}: set \
                                 FLAME_K8S_POD_NAME or POD_NAME from the downward API when HOSTNAME \
                                 is not the Pod's name, and POD_NAMESPACE)",
                                e.message, self.namespace
                            );
                        }
                        Error::from(e)
                    })?;
                ParentTemplate::from_pod(
                    &pod,
                    self.config.container.as_deref(),
                    self.config.copy_parent_volumes,
                )
            })
            .await?;
        Ok(Some(template.clone()))
    }

    fn url_for(&self, address: &RunnerAddress) -> Option<String> {
        self.resolver
            .as_ref()
            .and_then(|r| r(address))
            .or_else(|| default_url(address))
    }

    /// Watches the Pod until it runs with an IP and returns where its runner listens; fails
    /// as soon as the Pod does. (Readiness is core's probe, from there on.)
    async fn boot(&self, req: &SpawnRequest, name: &str, deadline: Instant) -> Result<RunnerHandle> {
        let boot = req.boot_timeout;
        // After a watch error the watcher resumes from the last resourceVersion (or lists
        // afresh after a 410) once this backoff has passed.
        let backoff = ExponentialBuilder::new()
            .with_min_delay(Duration::from_millis(200))
            .with_max_delay(Duration::from_secs(5))
            .with_jitter()
            .without_max_times();
        let events = watcher::watch_object(self.pods.clone(), name)
            .backoff(watcher::ExponentialBackoff::from(backoff));
        let mut events = Box::pin(events);
        let op = format!("watch pod {name}");
        let mut last = (String::from("Pending"), String::new());
        // 1. Running with a Pod IP.
        let ip = loop {
            let event = match timeout_at(deadline, events.next()).await {
                Err(_) => return Err(waiting_timeout(name, boot, &last)),
                Ok(event) => event,
            };
            match self.pod_event(&op, name, event, &mut last)? {
                Some(ip) => break ip,
                None => continue,
            }
        };
        // 2. Where the runner listens.
        let address = RunnerAddress {
            runner_id: req.runner_id.clone(),
            backend_id: name.to_owned(),
            host: Some(ip.clone()),
            port: self.config.runner_port,
        };
        let url = self.url_for(&address).ok_or_else(|| {
            Error::from(
                K8sError::new(
                    K8sErrorKind::PodFailed,
                    format!("no URL for runner Pod {name} at {ip}"),
                )
                .with_pod(name),
            )
        })?;
        Ok(RunnerHandle {
            runner_id: req.runner_id.clone(),
            backend_id: name.to_owned(),
            endpoint: Endpoint::new(url, req.runner_id.clone()).with_secret(req.secret.clone()),
        })
    }

    /// One event of the Pod's watch: `Some(ip)` once it runs with an IP, `None` to keep
    /// waiting, an error when the Pod failed or the watch cannot go on.
    fn pod_event(
        &self,
        op: &str,
        name: &str,
        event: Option<std::result::Result<Option<Pod>, watcher::Error>>,
        last: &mut (String, String),
    ) -> Result<Option<String>> {
        match event {
            None => Err(
                K8sError::new(K8sErrorKind::Unavailable, format!("{op}: the watch ended"))
                    .with_pod(name)
                    .into(),
            ),
            Some(Err(e)) => {
                let err = classify_watch(op, &e).with_pod(name);
                if err.kind.is_retryable() {
                    // The watcher resumes (from the last resourceVersion, or a fresh list)
                    // after a backoff.
                    tracing::debug!(pod = name, error = %err, "k8s: Pod watch interrupted; resuming");
                    Ok(None)
                } else {
                    Err(err.into())
                }
            }
            Some(Ok(None)) => Err(K8sError::new(
                K8sErrorKind::PodFailed,
                format!("runner Pod {name} was deleted before it was running"),
            )
            .with_reason("Deleted")
            .with_pod(name)
            .into()),
            Some(Ok(Some(pod))) => match assess(&pod) {
                Boot::Running(ip) => Ok(Some(ip)),
                Boot::Waiting { reason, message } => {
                    if (reason.as_str(), message.as_str()) != (last.0.as_str(), last.1.as_str()) {
                        tracing::debug!(pod = name, %reason, %message, "k8s: runner Pod waiting");
                    }
                    *last = (reason, message);
                    Ok(None)
                }
                Boot::Failed(kind, reason, message) => Err(K8sError::new(
                    kind,
                    format!("runner Pod {name} failed before it was running: {reason}: {message}"),
                )
                .with_reason(reason)
                .with_pod(name)
                .into()),
            },
        }
    }

    async fn spawn(self: &Arc<Self>, req: &SpawnRequest, deadline: Instant) -> Result<RunnerHandle> {
        let parent = match timeout_at(deadline, self.parent_template()).await {
            Ok(parent) => parent?,
            Err(_) => {
                return Err(K8sError::new(
                    K8sErrorKind::BootTimeout,
                    format!(
                        "reading the parent Pod took longer than the boot timeout of {:?}",
                        req.boot_timeout
                    ),
                )
                .into())
            }
        };
        let pod = build_pod(&self.config, parent.as_ref(), &self.namespace, req)?;
        let name = pod.metadata.name.clone().unwrap_or_default();
        // Armed before the create: a spawn dropped while the create is in flight still
        // deletes what it may have made.
        let mut guard = DeleteGuard {
            inner: self.clone(),
            name: name.clone(),
            armed: true,
        };
        match timeout_at(deadline, self.create(&pod, &req.runner_id)).await {
            Ok(Ok(_)) => {}
            Ok(Err(CreateFailure { error, maybe_created })) => {
                if maybe_created {
                    self.delete_quietly(&name, "create outcome unknown").await;
                }
                guard.armed = false;
                return Err(error.into());
            }
            Err(_) => {
                self.delete_quietly(&name, "create did not finish within the boot timeout")
                    .await;
                guard.armed = false;
                return Err(K8sError::new(
                    K8sErrorKind::BootTimeout,
                    format!(
                        "creating runner Pod {name} took longer than the boot timeout of {:?}",
                        req.boot_timeout
                    ),
                )
                .with_pod(&name)
                .into());
            }
        }
        tracing::debug!(pod = %name, runner = %req.runner_id, namespace = %self.namespace, "k8s: runner Pod created");
        let result = self.boot(req, &name, deadline).await;
        if result.is_err() {
            self.delete_quietly(&name, "spawn failed").await;
        }
        // Disarmed only now: a spawn dropped during the delete above still deletes.
        guard.armed = false;
        result
    }
}

fn waiting_timeout(name: &str, boot: Duration, last: &(String, String)) -> Error {
    let (reason, message) = last;
    let kind = if reason == "Unschedulable" {
        K8sErrorKind::Unschedulable
    } else {
        K8sErrorKind::BootTimeout
    };
    let detail = if message.is_empty() {
        reason.clone()
    } else {
        format!("{reason}: {message}")
    };
    K8sError::new(
        kind,
        format!("runner Pod {name} was not running within the boot timeout of {boot:?} ({detail})"),
    )
    .with_reason(reason.clone())
    .with_pod(name)
    .into()
}

fn default_url(addr: &RunnerAddress) -> Option<String> {
    let host = addr.host.as_deref()?;
    Some(if host.contains(':') {
        format!("http://[{host}]:{}", addr.port)
    } else {
        format!("http://{host}:{}", addr.port)
    })
}

/// The runner state of a Pod.
fn pod_state(pod: &Pod) -> RunnerState {
    let phase = pod
        .status
        .as_ref()
        .and_then(|s| s.phase.as_deref())
        .unwrap_or("Pending");
    match phase {
        "Succeeded" | "Failed" => RunnerState::Stopped,
        // Its container ended (`restartPolicy: Never`): the runner is gone before the kubelet
        // moves the phase on.
        _ if container_ended(pod) => RunnerState::Stopped,
        // Running (a Pod being deleted is draining: still Running until it is gone), or
        // Unknown (its node is unreachable: it may well run).
        "Running" | "Unknown" => RunnerState::Running,
        _ if pod.metadata.deletion_timestamp.is_some() => RunnerState::Stopped,
        _ => RunnerState::Booting,
    }
}

/// Deletes the Pod when a spawn is dropped half-way (the caller gave up).
struct DeleteGuard {
    inner: Arc<Inner>,
    name: String,
    armed: bool,
}

impl Drop for DeleteGuard {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            tracing::warn!(pod = %self.name, "k8s: spawn dropped outside a runtime; the runner's failsafe, activeDeadlineSeconds and ownerReference end its Pod");
            return;
        };
        let inner = self.inner.clone();
        let name = std::mem::take(&mut self.name);
        tracing::debug!(pod = %name, "k8s: spawn dropped; deleting its Pod in the background");
        rt.spawn(async move {
            if !inner.delete_quietly(&name, "spawn cancelled").await {
                // The create may still be in flight: look once more.
                tokio::time::sleep(Duration::from_secs(1)).await;
                inner.delete_quietly(&name, "spawn cancelled").await;
            }
        });
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
impl Backend for K8sBackend {
    fn name(&self) -> &str {
        "k8s"
    }

    async fn spawn(&self, request: SpawnRequest) -> Result<RunnerHandle> {
        let deadline = placement_deadline(request.boot_timeout);
        let started = std::time::Instant::now();
        let result = self.inner.spawn(&request, deadline).await;
        match &result {
            Ok(handle) => tracing::info!(
                runner = %handle.runner_id,
                pod = %handle.backend_id,
                url = %handle.endpoint.url,
                boot_ms = started.elapsed().as_millis() as u64,
                "k8s: runner placed"
            ),
            Err(e) => tracing::warn!(runner = %request.runner_id, error = %e, "k8s: spawn failed"),
        }
        result
    }

    async fn exit_details(&self, handle: &RunnerHandle) -> Option<String> {
        let inner = &self.inner;
        let name = handle.backend_id.as_str();
        match inner
            .call(&format!("get pod {name}"), || inner.pods.get_opt(name))
            .await
        {
            Ok(Some(pod)) => Some(describe(name, &pod)),
            Ok(None) => Some(format!("Pod {name} is gone (deleted)")),
            Err(e) => {
                tracing::debug!(pod = name, error = %e, "k8s: could not read a stopped runner Pod");
                None
            }
        }
    }

    async fn terminate(&self, handle: &RunnerHandle) -> Result<()> {
        let inner = &self.inner;
        let name = handle.backend_id.as_str();
        let dp = DeleteParams {
            grace_period_seconds: Some(
                u32::try_from(inner.config.delete_grace.as_secs()).unwrap_or(u32::MAX),
            ),
            propagation_policy: Some(PropagationPolicy::Background),
            ..DeleteParams::default()
        };
        match inner
            .call(&format!("delete pod {name}"), || inner.pods.delete(name, &dp))
            .await
        {
            Ok(_) => Ok(()),
            Err(e) if e.kind == K8sErrorKind::NotFound => Ok(()),
            Err(e) => Err(e.with_pod(name).into()),
        }
    }

    async fn status(&self, handle: &RunnerHandle) -> Result<RunnerState> {
        let inner = &self.inner;
        let name = handle.backend_id.as_str();
        let pod = inner
            .call(&format!("get pod {name}"), || inner.pods.get_opt(name))
            .await
            .map_err(|e| Error::from(e.with_pod(name)))?;
        Ok(pod.as_ref().map_or(RunnerState::Stopped, pod_state))
    }

    async fn reap(&self, scope: &ReapScope) -> Result<usize> {
        let inner = &self.inner;
        let selector = format!("{}={}", labels::APP, label_value(&scope.app));
        let mut pods = Vec::new();
        let mut continue_token: Option<String> = None;
        loop {
            let mut lp = ListParams::default().labels(&selector).limit(500);
            lp.continue_token = continue_token.take();
            let list = inner
                .call(&format!("list pods {selector}"), || inner.pods.list(&lp))
                .await?;
            pods.extend(list.items);
            match list.metadata.continue_.filter(|t| !t.is_empty()) {
                Some(token) => continue_token = Some(token),
                None => break,
            }
        }
        let mut candidates = Vec::new();
        let mut uids = std::collections::HashMap::new();
        for pod in &pods {
            // The selector is the API's (and label values may be shortened): check the exact
            // app; a Pod already being deleted is on its way.
            if flame_value(pod, labels::APP) != Some(scope.app.as_str())
                || pod.metadata.deletion_timestamp.is_some()
            {
                continue;
            }
            let Some(name) = pod.metadata.name.clone() else {
                continue;
            };
            let runner_id = flame_value(pod, labels::RUNNER).unwrap_or(&name).to_owned();
            let endpoint = pod
                .status
                .as_ref()
                .and_then(|s| s.pod_ip.clone())
                .filter(|ip| !ip.is_empty())
                .and_then(|ip| {
                    let address = RunnerAddress {
                        runner_id: runner_id.clone(),
                        backend_id: name.clone(),
                        host: Some(ip),
                        port: runner_port(pod).unwrap_or(inner.config.runner_port),
                    };
                    inner.url_for(&address)
                })
                .map(|url| Endpoint::new(url, runner_id.clone()));
            uids.insert(name.clone(), pod.metadata.uid.clone());
            candidates.push(ReapCandidate::new(
                runner_id,
                name,
                flame_value(pod, labels::PARENT).map(str::to_owned),
                pod_state(pod),
                endpoint,
            ));
        }
        let chosen = scope.select(candidates).await;
        let mut ended = 0;
        let mut first_error: Option<K8sError> = None;
        for (candidate, reason) in chosen {
            let name = candidate.backend_id.as_str();
            let grace = match reason {
                ReapReason::Stopped => 0,
                _ => u32::try_from(inner.config.delete_grace.as_secs()).unwrap_or(u32::MAX),
            };
            let dp = DeleteParams {
                grace_period_seconds: Some(grace),
                propagation_policy: Some(PropagationPolicy::Background),
                // Never another Pod that took the name since the list.
                preconditions: uids.get(name).cloned().flatten().map(|uid| Preconditions {
                    uid: Some(uid),
                    resource_version: None,
                }),
                ..DeleteParams::default()
            };
            match inner
                .call(&format!("delete pod {name}"), || inner.pods.delete(name, &dp))
                .await
            {
                Ok(_) => {
                    tracing::info!(pod = name, parent = ?candidate.parent_id, %reason, "k8s: reaped an orphaned runner Pod");
                    ended += 1;
                }
                Err(e) if matches!(e.kind, K8sErrorKind::NotFound | K8sErrorKind::Conflict) => {}
                Err(e) => {
                    tracing::warn!(pod = name, error = %e, "k8s: reap could not delete a Pod");
                    first_error.get_or_insert(e.with_pod(name));
                }
            }
        }
        match first_error {
            Some(e) => Err(Error::from(e).context(format!("k8s reap deleted {ended} Pod(s), then failed"))),
            None => Ok(ended),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_url_brackets_ipv6() {
        let mut a = RunnerAddress {
            runner_id: "r".into(),
            backend_id: "p".into(),
            host: Some("fd00::7".into()),
            port: 8080,
        };
        assert_eq!(default_url(&a).unwrap(), "http://[fd00::7]:8080");
        a.host = Some("10.244.1.7".into());
        assert_eq!(default_url(&a).unwrap(), "http://10.244.1.7:8080");
        a.host = None;
        assert_eq!(default_url(&a), None);
    }

    #[test]
    fn pod_phases_map_to_runner_states() {
        let pod = |phase: &str, deleting: bool| -> Pod {
            let mut v = serde_json::json!({ "metadata": { "name": "p" }, "status": { "phase": phase } });
            if deleting {
                v["metadata"]["deletionTimestamp"] = "2026-12-01T00:00:00Z".into();
            }
            serde_json::from_value(v).unwrap()
        };
        assert_eq!(pod_state(&pod("Pending", false)), RunnerState::Booting);
        assert_eq!(pod_state(&pod("Pending", true)), RunnerState::Stopped);
        assert_eq!(pod_state(&pod("Running", false)), RunnerState::Running);
        assert_eq!(pod_state(&pod("Running", true)), RunnerState::Running);
        assert_eq!(pod_state(&pod("Succeeded", false)), RunnerState::Stopped);
        assert_eq!(pod_state(&pod("Failed", false)), RunnerState::Stopped);
        // Its container ended while the phase still says Running: the runner is gone.
        let ended: Pod = serde_json::from_value(serde_json::json!({ "metadata": { "name": "p" },
            "status": { "phase": "Running", "containerStatuses": [{ "name": "runner", "ready": false,
                "restartCount": 0, "image": "i", "imageID": "",
                "state": { "terminated": { "reason": "Error", "exitCode": 1 } } }] } }))
        .unwrap();
        assert_eq!(pod_state(&ended), RunnerState::Stopped);
    }

    #[test]
    fn retries_stop_at_final_answers_and_honour_retry_after() {
        let policy = RetryPolicy::new(2, Duration::from_millis(10), Duration::from_millis(20));
        let mut r = Retrier::new(&policy);
        r.start();
        let conflict = K8sError::new(K8sErrorKind::Conflict, "exists");
        assert_eq!(r.delay(&conflict), None);
        let mut throttled = K8sError::new(K8sErrorKind::Throttled, "slow");
        throttled.retry_after = Some(Duration::from_secs(60));
        assert_eq!(r.delay(&throttled), Some(policy.max_retry_after));
        r.start();
        assert!(r
            .delay(&K8sError::new(K8sErrorKind::Unavailable, "503"))
            .is_some());
        r.start();
        assert_eq!(r.delay(&K8sError::new(K8sErrorKind::Unavailable, "503")), None);
    }
}
