//! # flame-backend-k8s
//!
//! A flame [`Backend`](flame_core::Backend) that runs each runner as a Kubernetes **Pod**,
//! through [kube-rs](https://kube.rs) (`kube` + `k8s-openapi`, rustls, no OpenSSL).
//!
//! - **Same image, different entrypoint.** In a cluster a runner Pod is made from **the parent
//!   Pod's own spec**, read through the API (the Pod name from `HOSTNAME` or the downward API,
//!   the namespace from the ServiceAccount mount): its image, command, env and envFrom,
//!   ServiceAccount, image pull secrets, security context, node selector, tolerations and the
//!   volumes its container mounts — plus the runner variables (`FLAME_MODE=runner`,
//!   `FLAME_SECRET`, `FLAME_LISTEN=0.0.0.0:<port>`, `FLAME_PARENT_ID`, ...). Outside a cluster
//!   it runs a configured image. Each pool can add resources (requests, limits, GPUs as
//!   `nvidia.com/gpu`), a node selector, tolerations, labels and annotations ([`PodSettings`]).
//! - **The cluster cleans up.** Every runner Pod has an `ownerReference` to the parent Pod, so
//!   Kubernetes' garbage collector deletes the runners when the parent Pod goes — on top of
//!   the runner's own failsafe, `restartPolicy: Never` and `activeDeadlineSeconds`. The labels
//!   `flame.app`, `flame.pool`, `flame.parent`, `flame.runner` (label-safe values; the exact
//!   ones are annotations of the same keys) let `reap` find runners, and it deletes only
//!   runners the core reap rule proves orphaned — never a live parent's.
//! - **Boot** watches the Pod with a `kube::runtime` watcher until it runs with a Pod IP;
//!   that is where `spawn` returns, and core's one readiness probe
//!   (`flame_core::backend::readiness::start_runner`, which pools use) pings the runner until
//!   healthy. A Pod that fails before it runs (`ImagePullBackOff`, evicted, still
//!   `Unschedulable` at `boot_timeout`) is deleted and the error carries its reason and
//!   message ([`K8sError`]); one that fails after (`OOMKilled`, its container exits) fails the
//!   probe at once, with the Pod's reason, message and container termination
//!   (`exit_details`), and is deleted.
//!
//! **RBAC.** The parent's ServiceAccount needs a Role in the runners' namespace with
//! `pods`: `create`, `get`, `list`, `watch`, `delete` (see the README for the YAML).
//!
//! ```no_run
//! use flame_backend_k8s::{K8sBackend, K8sConfig, PodSettings};
//! use flame_core::{Context, Flame, Method, PoolConfig, Registry};
//! use std::time::Duration;
//!
//! const ADD: Method<(i64, i64), i64> = Method::new("math", "add");
//!
//! # async fn run() -> Result<(), flame_core::Error> {
//! let registry = Registry::new().handle(ADD, |_c: Context, (a, b): (i64, i64)| async move { Ok(a + b) });
//! // In a Pod: the parent Pod from HOSTNAME, the namespace from the ServiceAccount.
//! let config = K8sConfig::from_env()?
//!     .pod_settings(PodSettings::new().cpu("500m").memory("1Gi"))
//!     .pool("gpu", PodSettings::new().gpus(1).tolerate_gpus());
//! let backend = K8sBackend::connect(config).await?;
//! let flame = Flame::builder(registry)
//!     .pool("default", PoolConfig::default().max(4).boot_timeout(Duration::from_secs(120)))
//!     .backend(backend)
//!     .from_env()?
//!     .start()
//!     .await?;
//! let five = flame.call(ADD, (2, 3)).await?;
//! # let _ = five;
//! flame.shutdown().await
//! # }
//! ```

mod backend;
mod config;
mod error;
mod pod;

pub use backend::K8sBackend;
pub use config::{
    K8sConfig, PodSettings, RetryPolicy, DEFAULT_RUNNER_PORT, ENV_VARS, NVIDIA_GPU,
    SERVICE_ACCOUNT_NAMESPACE_FILE,
};
pub use error::{K8sError, K8sErrorKind};
pub use pod::{label_value, pod_name, RUNNER_CONTAINER, RUNNER_PORT_NAME};

/// The Kubernetes API types this backend uses (e.g. `k8s_openapi::api::core::v1::Toleration`).
pub use k8s_openapi;
/// The Kubernetes client crate this backend is built on (to make a [`kube::Client`]).
pub use kube;
