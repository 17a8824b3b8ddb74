//! Settings of the Kubernetes backend: where runner Pods come from (the parent Pod's own spec,
//! or an image), what each pool's Pods get (resources, GPUs, node selector, tolerations,
//! labels, annotations), how long they may live, and how the API client retries.

use flame_core::{Error, Result};
use k8s_openapi::api::core::v1::Toleration;
use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

/// The port a runner Pod listens on by default (`FLAME_LISTEN=0.0.0.0:8080`).
pub const DEFAULT_RUNNER_PORT: u16 = 8080;

/// The extended resource a GPU is requested as (NVIDIA's device plugin).
pub const NVIDIA_GPU: &str = "nvidia.com/gpu";

/// Where a Pod finds the namespace of its ServiceAccount.
pub const SERVICE_ACCOUNT_NAMESPACE_FILE: &str = "/var/run/secrets/kubernetes.io/serviceaccount/namespace";

/// Every environment variable [`K8sConfig::from_env`] reads.
pub const ENV_VARS: [&str; 18] = [
    "KUBERNETES_SERVICE_HOST",
    "HOSTNAME",
    "POD_NAME",
    "POD_NAMESPACE",
    "FLAME_K8S_POD_NAME",
    "FLAME_K8S_NAMESPACE",
    "FLAME_K8S_IMAGE",
    "FLAME_K8S_CONTAINER",
    "FLAME_K8S_SERVICE_ACCOUNT",
    "FLAME_K8S_PORT",
    "FLAME_K8S_CPU",
    "FLAME_K8S_MEMORY",
    "FLAME_K8S_GPUS",
    "FLAME_K8S_NODE_SELECTOR",
    "FLAME_K8S_ACTIVE_DEADLINE_SECONDS",
    "FLAME_K8S_DELETE_GRACE_SECONDS",
    "FLAME_K8S_FORWARD_ENV",
    "FLAME_K8S_IMAGE_PULL_POLICY",
];

/// What the Pods of one pool get on top of the runner template: resources (requests and
/// limits, GPUs), scheduling (node selector, tolerations) and metadata (labels, annotations).
///
/// The settings for all pools ([`K8sConfig::pod`]) and those of a named pool
/// ([`K8sConfig::pool`]) are merged: maps key by key (the pool's win), tolerations added.
///
/// ```
/// use flame_backend_k8s::PodSettings;
/// let gpu = PodSettings::new()
///     .cpu("4")
///     .memory("16Gi")
///     .gpus(1)                                // limits nvidia.com/gpu: 1
///     .tolerate_gpus()                        // nvidia.com/gpu:NoSchedule, operator Exists
///     .node_selector("cloud.google.com/gke-accelerator", "nvidia-l4")
///     .label("team", "media");
/// assert_eq!(gpu.limits["nvidia.com/gpu"], "1");
/// assert_eq!(gpu.requests["memory"], "16Gi");
/// ```
#[derive(Debug, Clone, Default, PartialEq)]
#[non_exhaustive]
pub struct PodSettings {
    /// `resources.requests` of the runner container (`cpu`, `memory`, ...), as quantities.
    pub requests: BTreeMap<String, String>,
    /// `resources.limits` of the runner container (`memory`, `nvidia.com/gpu`, ...).
    pub limits: BTreeMap<String, String>,
    /// `spec.nodeSelector`.
    pub node_selector: BTreeMap<String, String>,
    /// `spec.tolerations`.
    pub tolerations: Vec<Toleration>,
    /// Extra Pod labels (the `flame.*` labels are always set by the backend and win).
    pub labels: BTreeMap<String, String>,
    /// Extra Pod annotations (the `flame.*` annotations are set by the backend and win).
    pub annotations: BTreeMap<String, String>,
}

impl PodSettings {
    /// No settings.
    pub fn new() -> Self {
        PodSettings::default()
    }

    /// Requests `quantity` of `resource` (e.g. `("cpu", "500m")`).
    pub fn request(mut self, resource: impl Into<String>, quantity: impl Into<String>) -> Self {
        self.requests.insert(resource.into(), quantity.into());
        self
    }

    /// Limits `resource` to `quantity`.
    pub fn limit(mut self, resource: impl Into<String>, quantity: impl Into<String>) -> Self {
        self.limits.insert(resource.into(), quantity.into());
        self
    }

    /// Requests this much CPU (`"500m"`, `"2"`); no CPU limit, so a runner can burst.
    pub fn cpu(self, quantity: impl Into<String>) -> Self {
        self.request("cpu", quantity)
    }

    /// Requests and limits memory to this much (`"512Mi"`, `"16Gi"`).
    pub fn memory(self, quantity: impl Into<String>) -> Self {
        let q = quantity.into();
        self.request("memory", q.clone()).limit("memory", q)
    }

    /// Asks for `count` NVIDIA GPUs (`limits: nvidia.com/gpu`; Kubernetes sets the request to
    /// the same count).
    pub fn gpus(self, count: u32) -> Self {
        self.gpu_resource(NVIDIA_GPU, count)
    }

    /// Asks for `count` of another device plugin's resource (`amd.com/gpu`, ...).
    pub fn gpu_resource(self, resource: impl Into<String>, count: u32) -> Self {
        self.limit(resource, count.to_string())
    }

    /// Adds a node selector entry.
    pub fn node_selector(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.node_selector.insert(key.into(), value.into());
        self
    }

    /// Adds a toleration.
    pub fn toleration(mut self, toleration: Toleration) -> Self {
        self.tolerations.push(toleration);
        self
    }

    /// Tolerates the usual GPU node taint (`nvidia.com/gpu` exists, `NoSchedule`).
    pub fn tolerate_gpus(self) -> Self {
        self.toleration(Toleration {
            key: Some(NVIDIA_GPU.into()),
            operator: Some("Exists".into()),
            effect: Some("NoSchedule".into()),
            ..Toleration::default()
        })
    }

    /// Adds a Pod label.
    pub fn label(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.labels.insert(key.into(), value.into());
        self
    }

    /// Adds a Pod annotation.
    pub fn annotation(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.annotations.insert(key.into(), value.into());
        self
    }

    /// These settings with `over`'s on top: maps merged key by key (`over` wins), tolerations
    /// of both.
    pub fn merged(&self, over: &PodSettings) -> PodSettings {
        let merge = |a: &BTreeMap<String, String>, b: &BTreeMap<String, String>| {
            let mut out = a.clone();
            out.extend(b.iter().map(|(k, v)| (k.clone(), v.clone())));
            out
        };
        let mut tolerations = self.tolerations.clone();
        tolerations.extend(over.tolerations.iter().cloned());
        PodSettings {
            requests: merge(&self.requests, &over.requests),
            limits: merge(&self.limits, &over.limits),
            node_selector: merge(&self.node_selector, &over.node_selector),
            tolerations,
            labels: merge(&self.labels, &over.labels),
            annotations: merge(&self.annotations, &over.annotations),
        }
    }

    /// Whether any resource is set.
    pub fn has_resources(&self) -> bool {
        !self.requests.is_empty() || !self.limits.is_empty()
    }
}

/// How the API client retries: 429, 5xx, timeouts and connection failures back off
/// exponentially with jitter (a 429's `retryAfterSeconds` is honoured, up to
/// `max_retry_after`). 409, 422, 403 and other 4xx are never retried: they become typed errors
/// with the API's message.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct RetryPolicy {
    /// Retries after the first attempt.
    pub max_retries: u32,
    /// First backoff delay.
    pub min_delay: Duration,
    /// Largest backoff delay.
    pub max_delay: Duration,
    /// A `retryAfterSeconds` longer than this is cut to it.
    pub max_retry_after: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_retries: 5,
            min_delay: Duration::from_millis(200),
            max_delay: Duration::from_secs(5),
            max_retry_after: Duration::from_secs(10),
        }
    }
}

impl RetryPolicy {
    /// `max_retries` retries, backing off from `min_delay` to `max_delay`.
    pub fn new(max_retries: u32, min_delay: Duration, max_delay: Duration) -> Self {
        RetryPolicy {
            max_retries,
            min_delay,
            max_delay: max_delay.max(min_delay),
            ..RetryPolicy::default()
        }
    }

    /// Sets the longest `retryAfterSeconds` honoured.
    pub fn max_retry_after(mut self, limit: Duration) -> Self {
        self.max_retry_after = limit;
        self
    }
}

/// Settings of a [`K8sBackend`](crate::K8sBackend).
///
/// Runner Pods come from **the parent Pod's own spec** when [`parent_pod`](Self::parent_pod)
/// is set (it is, from `HOSTNAME`, when the parent runs in a cluster), else from
/// [`image`](Self::image). Runner environment values are never shown in `Debug` output.
///
/// ```
/// use flame_backend_k8s::{K8sConfig, PodSettings};
/// // In a cluster: everything from the Pod's own environment (HOSTNAME, the ServiceAccount's
/// // namespace); here through a lookup, as a Pod would see it.
/// let cfg = K8sConfig::from_lookup(|k| match k {
///     "KUBERNETES_SERVICE_HOST" => Some("10.96.0.1".into()),
///     "HOSTNAME" => Some("media-7d9c5b-x2k4p".into()),
///     "POD_NAMESPACE" => Some("media".into()),
///     "FLAME_K8S_MEMORY" => Some("2Gi".into()),
///     _ => None,
/// })
/// .unwrap()
/// .pool("gpu", PodSettings::new().gpus(1).tolerate_gpus());
/// assert_eq!(cfg.parent_pod.as_deref(), Some("media-7d9c5b-x2k4p"));
/// assert_eq!(cfg.namespace.as_deref(), Some("media"));
/// assert_eq!(cfg.pod.limits["memory"], "2Gi");
/// ```
#[derive(Clone)]
#[non_exhaustive]
pub struct K8sConfig {
    /// Namespace runners are created in (`FLAME_K8S_NAMESPACE`, `POD_NAMESPACE`, the
    /// ServiceAccount's namespace); `None`: the client's default namespace.
    pub namespace: Option<String>,
    /// The parent's own Pod, read through the API to build runner Pods from
    /// (`FLAME_K8S_POD_NAME`, `POD_NAME`, or `HOSTNAME` in a cluster). Runners get an
    /// ownerReference to it, so Kubernetes deletes them with it.
    pub parent_pod: Option<String>,
    /// The image runners run when there is no parent Pod (`FLAME_K8S_IMAGE`); with a parent
    /// Pod it replaces the parent's image.
    pub image: Option<String>,
    /// Which container of the parent Pod is the application (`FLAME_K8S_CONTAINER`; default:
    /// the first).
    pub container: Option<String>,
    /// Replaces the container's command (`ENTRYPOINT`); default: the parent's, or the image's.
    pub command: Option<Vec<String>>,
    /// Replaces the container's args (`CMD`); default: the parent's, or the image's.
    pub args: Option<Vec<String>>,
    /// `imagePullPolicy` (`FLAME_K8S_IMAGE_PULL_POLICY`); default: the parent's, or the
    /// cluster's default.
    pub image_pull_policy: Option<String>,
    /// `serviceAccountName` of runners (`FLAME_K8S_SERVICE_ACCOUNT`); default: the parent's.
    pub service_account: Option<String>,
    /// Extra environment for every runner (`FLAME_K8S_FORWARD_ENV` copies named variables of
    /// the parent's). With a parent Pod, runners also get its container's `env` and `envFrom`.
    pub env: BTreeMap<String, String>,
    /// Port runners listen on (`FLAME_K8S_PORT`; on `0.0.0.0`, the Pod network).
    pub runner_port: u16,
    /// Pod settings of every pool.
    pub pod: PodSettings,
    /// Pod settings of named pools, on top of [`pod`](Self::pod).
    pub pools: BTreeMap<String, PodSettings>,
    /// `activeDeadlineSeconds`: the last fence, Kubernetes kills a runner Pod this long after
    /// it started, whatever happens (`FLAME_K8S_ACTIVE_DEADLINE_SECONDS`; default 24 h; the
    /// pool replaces a runner that ends). `None` sets none.
    pub active_deadline: Option<Duration>,
    /// Grace period of `terminate` (SIGTERM, then SIGKILL after it; also the Pods'
    /// `terminationGracePeriodSeconds`) (`FLAME_K8S_DELETE_GRACE_SECONDS`; default 10 s).
    pub delete_grace: Duration,
    /// Copy the parent Pod's volumes that its container mounts (default true; the
    /// ServiceAccount token volume is never copied, Kubernetes mounts its own).
    pub copy_parent_volumes: bool,
    /// Timeout of one API request (watches have their own).
    pub request_timeout: Duration,
    /// Retries of API requests.
    pub retry: RetryPolicy,
}

impl fmt::Debug for K8sConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("K8sConfig")
            .field("namespace", &self.namespace)
            .field("parent_pod", &self.parent_pod)
            .field("image", &self.image)
            .field("container", &self.container)
            .field("command", &self.command)
            .field("args", &self.args)
            .field("image_pull_policy", &self.image_pull_policy)
            .field("service_account", &self.service_account)
            .field("env", &self.env.keys().collect::<Vec<_>>())
            .field("runner_port", &self.runner_port)
            .field("pod", &self.pod)
            .field("pools", &self.pools)
            .field("active_deadline", &self.active_deadline)
            .field("delete_grace", &self.delete_grace)
            .field("copy_parent_volumes", &self.copy_parent_volumes)
            .field("request_timeout", &self.request_timeout)
            .field("retry", &self.retry)
            .finish()
    }
}

impl Default for K8sConfig {
    fn default() -> Self {
        K8sConfig {
            namespace: None,
            parent_pod: None,
            image: None,
            container: None,
            command: None,
            args: None,
            image_pull_policy: None,
            service_account: None,
            env: BTreeMap::new(),
            runner_port: DEFAULT_RUNNER_PORT,
            pod: PodSettings::default(),
            pools: BTreeMap::new(),
            active_deadline: Some(Duration::from_secs(24 * 3600)),
            delete_grace: Duration::from_secs(10),
            copy_parent_volumes: true,
            request_timeout: Duration::from_secs(30),
            retry: RetryPolicy::default(),
        }
    }
}

impl K8sConfig {
    /// Runners built from parent Pod `pod` (its image, command, env, ServiceAccount, volumes).
    pub fn from_parent_pod(pod: impl Into<String>) -> Self {
        K8sConfig {
            parent_pod: Some(pod.into()),
            ..K8sConfig::default()
        }
    }

    /// Runners that run `image` (outside a cluster, or a separate runner image).
    pub fn from_image(image: impl Into<String>) -> Self {
        K8sConfig {
            image: Some(image.into()),
            ..K8sConfig::default()
        }
    }

    /// Reads the Pod's environment (see [`ENV_VARS`]) and the ServiceAccount's namespace file.
    ///
    /// In a cluster (`KUBERNETES_SERVICE_HOST` is set) the parent Pod is
    /// `FLAME_K8S_POD_NAME`, else `POD_NAME`, else `HOSTNAME` (a Pod's hostname is its name);
    /// outside one only the first two count. The namespace is `FLAME_K8S_NAMESPACE`, else
    /// `POD_NAMESPACE`, else the ServiceAccount's
    /// ([`SERVICE_ACCOUNT_NAMESPACE_FILE`]), else the client's default. A malformed value is a
    /// `CONFIG` error naming the variable. Having neither a parent Pod nor an image is checked
    /// when the backend is made ([`K8sConfig::validate`]), so both can still be set in code.
    pub fn from_env() -> Result<Self> {
        let sa_namespace = std::fs::read_to_string(SERVICE_ACCOUNT_NAMESPACE_FILE).ok();
        K8sConfig::from_sources(|k| std::env::var(k).ok(), sa_namespace)
    }

    /// [`K8sConfig::from_env`] through `lookup`, without the namespace file (for tests and
    /// embedding).
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Self> {
        K8sConfig::from_sources(lookup, None)
    }

    fn from_sources(lookup: impl Fn(&str) -> Option<String>, sa_namespace: Option<String>) -> Result<Self> {
        let get = |k: &str| lookup(k).map(|v| v.trim().to_owned()).filter(|v| !v.is_empty());
        let mut cfg = K8sConfig::default();
        let in_cluster = get("KUBERNETES_SERVICE_HOST").is_some();
        cfg.parent_pod = get("FLAME_K8S_POD_NAME").or_else(|| get("POD_NAME")).or_else(|| {
            if in_cluster {
                get("HOSTNAME")
            } else {
                None
            }
        });
        cfg.namespace = get("FLAME_K8S_NAMESPACE")
            .or_else(|| get("POD_NAMESPACE"))
            .or_else(|| {
                sa_namespace
                    .map(|s| s.trim().to_owned())
                    .filter(|s| !s.is_empty())
            });
        cfg.image = get("FLAME_K8S_IMAGE");
        cfg.container = get("FLAME_K8S_CONTAINER");
        cfg.service_account = get("FLAME_K8S_SERVICE_ACCOUNT");
        cfg.image_pull_policy = get("FLAME_K8S_IMAGE_PULL_POLICY");
        if let Some(policy) = &cfg.image_pull_policy {
            if !matches!(policy.as_str(), "Always" | "IfNotPresent" | "Never") {
                return Err(Error::config(format!(
                    "FLAME_K8S_IMAGE_PULL_POLICY={policy:?} is not Always, IfNotPresent or Never"
                )));
            }
        }
        if let Some(v) = get("FLAME_K8S_PORT") {
            cfg.runner_port = match v.parse::<u16>() {
                Ok(p) if p > 0 => p,
                _ => return Err(Error::config(format!("FLAME_K8S_PORT={v:?} is not a port"))),
            };
        }
        if let Some(v) = get("FLAME_K8S_CPU") {
            cfg.pod = cfg.pod.cpu(v);
        }
        if let Some(v) = get("FLAME_K8S_MEMORY") {
            cfg.pod = cfg.pod.memory(v);
        }
        if let Some(v) = get("FLAME_K8S_GPUS") {
            match v.parse::<u32>() {
                Ok(0) => {}
                Ok(n) => cfg.pod = cfg.pod.gpus(n),
                Err(_) => {
                    return Err(Error::config(format!(
                        "FLAME_K8S_GPUS={v:?} is not a whole number"
                    )))
                }
            }
        }
        if let Some(v) = get("FLAME_K8S_NODE_SELECTOR") {
            for pair in v.split(',').map(str::trim).filter(|p| !p.is_empty()) {
                match pair.split_once('=') {
                    Some((k, val)) if !k.trim().is_empty() => {
                        cfg.pod = cfg.pod.node_selector(k.trim(), val.trim());
                    }
                    _ => {
                        return Err(Error::config(format!(
                            "FLAME_K8S_NODE_SELECTOR={v:?}: {pair:?} is not key=value"
                        )))
                    }
                }
            }
        }
        if let Some(v) = get("FLAME_K8S_ACTIVE_DEADLINE_SECONDS") {
            cfg.active_deadline = match v.parse::<u64>() {
                Ok(0) => None,
                Ok(n) => Some(Duration::from_secs(n)),
                Err(_) => {
                    return Err(Error::config(format!(
                        "FLAME_K8S_ACTIVE_DEADLINE_SECONDS={v:?} is not a whole number of seconds"
                    )))
                }
            };
        }
        if let Some(v) = get("FLAME_K8S_DELETE_GRACE_SECONDS") {
            cfg.delete_grace = match v.parse::<u64>() {
                Ok(n) => Duration::from_secs(n),
                Err(_) => {
                    return Err(Error::config(format!(
                        "FLAME_K8S_DELETE_GRACE_SECONDS={v:?} is not a whole number of seconds"
                    )))
                }
            };
        }
        if let Some(names) = get("FLAME_K8S_FORWARD_ENV") {
            for name in names.split(',').map(str::trim).filter(|n| !n.is_empty()) {
                if let Some(value) = lookup(name) {
                    cfg.env.insert(name.to_owned(), value);
                }
            }
        }
        Ok(cfg)
    }

    /// Checks that runners can be built: a parent Pod or an image.
    pub fn validate(&self) -> Result<()> {
        if self.parent_pod.is_none() && self.image.is_none() {
            return Err(Error::config(
                "the Kubernetes backend needs the parent's Pod (in a cluster: HOSTNAME and \
                 KUBERNETES_SERVICE_HOST, or FLAME_K8S_POD_NAME / POD_NAME from the downward API) \
                 or an image for runners (FLAME_K8S_IMAGE)",
            ));
        }
        if self.runner_port == 0 {
            return Err(Error::config("the runner port must not be 0"));
        }
        Ok(())
    }

    /// Sets the namespace.
    pub fn namespace(mut self, namespace: impl Into<String>) -> Self {
        self.namespace = Some(namespace.into());
        self
    }

    /// Sets the parent Pod runners are built from.
    pub fn parent_pod(mut self, pod: impl Into<String>) -> Self {
        self.parent_pod = Some(pod.into());
        self
    }

    /// Sets the image runners run.
    pub fn image(mut self, image: impl Into<String>) -> Self {
        self.image = Some(image.into());
        self
    }

    /// Names the parent Pod's application container.
    pub fn container(mut self, name: impl Into<String>) -> Self {
        self.container = Some(name.into());
        self
    }

    /// Replaces the runner container's command.
    pub fn command<I, S>(mut self, command: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.command = Some(command.into_iter().map(Into::into).collect());
        self
    }

    /// Replaces the runner container's args.
    pub fn args<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.args = Some(args.into_iter().map(Into::into).collect());
        self
    }

    /// Sets `imagePullPolicy` (`Always`, `IfNotPresent`, `Never`).
    pub fn image_pull_policy(mut self, policy: impl Into<String>) -> Self {
        self.image_pull_policy = Some(policy.into());
        self
    }

    /// Sets the runners' ServiceAccount.
    pub fn service_account(mut self, name: impl Into<String>) -> Self {
        self.service_account = Some(name.into());
        self
    }

    /// Adds one variable to every runner's environment.
    pub fn env(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.env.insert(name.into(), value.into());
        self
    }

    /// Forwards these variables of the parent's environment (those that are set) to every
    /// runner.
    pub fn forward_env<'a>(mut self, names: impl IntoIterator<Item = &'a str>) -> Self {
        flame_core::backend::forward_parent_env(&mut self.env, names, "k8s");
        self
    }

    /// Sets the port runners listen on.
    pub fn runner_port(mut self, port: u16) -> Self {
        self.runner_port = port;
        self
    }

    /// Sets the Pod settings of every pool.
    pub fn pod_settings(mut self, settings: PodSettings) -> Self {
        self.pod = settings;
        self
    }

    /// Sets the Pod settings of pool `name` (on top of those of every pool).
    pub fn pool(mut self, name: impl Into<String>, settings: PodSettings) -> Self {
        self.pools.insert(name.into(), settings);
        self
    }

    /// The Pod settings pool `pool` gets.
    pub fn settings_for(&self, pool: &str) -> PodSettings {
        match self.pools.get(pool) {
            Some(over) => self.pod.merged(over),
            None => self.pod.clone(),
        }
    }

    /// Sets `activeDeadlineSeconds` (`None`: none).
    pub fn active_deadline(mut self, deadline: Option<Duration>) -> Self {
        self.active_deadline = deadline;
        self
    }

    /// Sets the grace period of `terminate`.
    pub fn delete_grace(mut self, grace: Duration) -> Self {
        self.delete_grace = grace;
        self
    }

    /// Whether to copy the parent's volumes.
    pub fn copy_parent_volumes(mut self, copy: bool) -> Self {
        self.copy_parent_volumes = copy;
        self
    }

    /// Sets the timeout of one API request.
    pub fn request_timeout(mut self, timeout: Duration) -> Self {
        self.request_timeout = timeout;
        self
    }

    /// Sets the retry policy of API requests.
    pub fn retry(mut self, retry: RetryPolicy) -> Self {
        self.retry = retry;
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use flame_core::ErrorCode;

    fn lookup(pairs: &'static [(&'static str, &'static str)]) -> impl Fn(&str) -> Option<String> {
        move |k| pairs.iter().find(|(n, _)| *n == k).map(|(_, v)| v.to_string())
    }

    #[test]
    fn in_a_cluster_the_hostname_is_the_parent_pod() {
        let cfg = K8sConfig::from_sources(
            lookup(&[
                ("KUBERNETES_SERVICE_HOST", "10.96.0.1"),
                ("HOSTNAME", "app-5f7b9-abcde"),
            ]),
            Some("media\n".into()),
        )
        .unwrap();
        assert_eq!(cfg.parent_pod.as_deref(), Some("app-5f7b9-abcde"));
        assert_eq!(cfg.namespace.as_deref(), Some("media"));
        assert_eq!(cfg.runner_port, 8080);
        assert_eq!(cfg.active_deadline, Some(Duration::from_secs(86400)));
    }

    #[test]
    fn outside_a_cluster_hostname_does_not_count() {
        let cfg = K8sConfig::from_lookup(lookup(&[("HOSTNAME", "laptop")])).unwrap();
        assert_eq!(cfg.parent_pod, None);
        let err = cfg.validate().unwrap_err();
        assert_eq!(err.code(), ErrorCode::Config);
        assert!(err.message().contains("FLAME_K8S_IMAGE"), "{err}");
        let cfg =
            K8sConfig::from_lookup(lookup(&[("HOSTNAME", "laptop"), ("FLAME_K8S_IMAGE", "app:1")])).unwrap();
        assert_eq!(cfg.parent_pod, None);
        assert_eq!(cfg.image.as_deref(), Some("app:1"));
    }

    #[test]
    fn settings_are_read() {
        let cfg = K8sConfig::from_lookup(lookup(&[
            ("POD_NAME", "p"),
            ("POD_NAMESPACE", "jobs"),
            ("FLAME_K8S_NAMESPACE", "runners"),
            ("FLAME_K8S_PORT", "9000"),
            ("FLAME_K8S_CPU", "500m"),
            ("FLAME_K8S_MEMORY", "1Gi"),
            ("FLAME_K8S_GPUS", "2"),
            ("FLAME_K8S_NODE_SELECTOR", "pool=gpu, zone=a"),
            ("FLAME_K8S_ACTIVE_DEADLINE_SECONDS", "0"),
            ("FLAME_K8S_DELETE_GRACE_SECONDS", "3"),
            ("FLAME_K8S_FORWARD_ENV", "DATABASE_URL,MISSING"),
            ("DATABASE_URL", "postgres://db"),
            ("FLAME_K8S_IMAGE_PULL_POLICY", "IfNotPresent"),
        ]))
        .unwrap();
        assert_eq!(cfg.parent_pod.as_deref(), Some("p"));
        assert_eq!(cfg.namespace.as_deref(), Some("runners"));
        assert_eq!(cfg.runner_port, 9000);
        assert_eq!(cfg.pod.requests["cpu"], "500m");
        assert_eq!(cfg.pod.limits["memory"], "1Gi");
        assert_eq!(cfg.pod.limits[NVIDIA_GPU], "2");
        assert_eq!(cfg.pod.node_selector["zone"], "a");
        assert_eq!(cfg.active_deadline, None);
        assert_eq!(cfg.delete_grace, Duration::from_secs(3));
        assert_eq!(cfg.env.len(), 1);
        assert_eq!(cfg.image_pull_policy.as_deref(), Some("IfNotPresent"));
    }

    #[test]
    fn malformed_values_are_config_errors_naming_the_variable() {
        for (k, v) in [
            ("FLAME_K8S_PORT", "http"),
            ("FLAME_K8S_GPUS", "one"),
            ("FLAME_K8S_NODE_SELECTOR", "gpu"),
            ("FLAME_K8S_ACTIVE_DEADLINE_SECONDS", "1h"),
            ("FLAME_K8S_DELETE_GRACE_SECONDS", "-1"),
            ("FLAME_K8S_IMAGE_PULL_POLICY", "Sometimes"),
        ] {
            let err = K8sConfig::from_lookup(|q| match q {
                "FLAME_K8S_IMAGE" => Some("app:1".into()),
                q if q == k => Some(v.into()),
                _ => None,
            })
            .unwrap_err();
            assert_eq!(err.code(), ErrorCode::Config);
            assert!(err.message().contains(k), "{err}");
        }
    }

    #[test]
    fn pool_settings_merge_over_the_defaults() {
        let cfg = K8sConfig::from_image("app:1")
            .pod_settings(PodSettings::new().cpu("1").memory("1Gi").label("team", "a"))
            .pool("gpu", PodSettings::new().memory("16Gi").gpus(1).tolerate_gpus());
        let gpu = cfg.settings_for("gpu");
        assert_eq!(gpu.requests["cpu"], "1");
        assert_eq!(gpu.limits["memory"], "16Gi");
        assert_eq!(gpu.limits[NVIDIA_GPU], "1");
        assert_eq!(gpu.tolerations.len(), 1);
        assert_eq!(gpu.labels["team"], "a");
        assert_eq!(cfg.settings_for("other"), cfg.pod);
    }

    #[test]
    fn debug_hides_env_values() {
        let cfg = K8sConfig::from_image("app:1").env("DATABASE_URL", "postgres://pw@db");
        let shown = format!("{cfg:?}");
        assert!(!shown.contains("postgres://pw@db"), "{shown}");
        assert!(shown.contains("DATABASE_URL"));
    }
}
