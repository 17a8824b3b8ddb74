//! What the user can choose about runner containers: image, pull policy, network, resources,
//! GPUs, forwarded variables, labels.

use std::time::Duration;

/// When the backend pulls the runner image before creating a container.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PullPolicy {
    /// Never pull: the image must be present locally (a missing image is a non-retryable
    /// `BACKEND` error carrying dockerd's "No such image" message).
    Never,
    /// Pull only when the image is not present locally (`docker run`'s default).
    #[default]
    IfMissing,
    /// Pull before every spawn.
    Always,
}

/// Which network runner containers join.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Network {
    /// The host's network (`--network host`): the runner listens on the host's loopback at the
    /// port it announces in its `FLAME_READY <url>` line.
    #[default]
    Host,
    /// A named Docker network (e.g. a user-defined bridge): the runner listens on
    /// `0.0.0.0:<runner_port>` and the parent reaches it at its IP address on that network.
    Named(String),
}

/// GPUs handed to each runner (Docker device requests, like `docker run --gpus`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Gpus {
    /// Every GPU (`--gpus all`).
    All,
    /// This many GPUs (`--gpus 2`).
    Count(u32),
    /// These devices, by index or UUID (`--gpus '"device=0,2"'`).
    Devices(Vec<String>),
}

/// Resource limits of each runner container.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Limits {
    /// Memory limit in bytes (`--memory`).
    pub memory_bytes: Option<i64>,
    /// CPU limit in billionths of a CPU (`--cpus 1.5` is 1_500_000_000).
    pub nano_cpus: Option<i64>,
}

/// Defaults of a [`crate::DockerBackend`].
pub(crate) const DEFAULT_STOP_GRACE: Duration = Duration::from_secs(10);
pub(crate) const DEFAULT_RUNNER_PORT: u16 = 8080;
pub(crate) const DEFAULT_API_TIMEOUT: Duration = Duration::from_secs(60);
