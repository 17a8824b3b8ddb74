//! # flame-backend-ecs — runners as AWS ECS tasks
//!
//! A [`flame_core::Backend`] over `aws-sdk-ecs`: every runner is one ECS task of the same
//! image as the parent, started with `RunTask` (container overrides carry `FLAME_MODE=runner`
//! and the other `FLAME_*` variables, optionally a different command), awaited with
//! `DescribeTasks` until `RUNNING` with an ENI address — that is where `spawn` returns; core's
//! one readiness probe (`flame_core::backend::readiness::start_runner`, which pools use) then
//! pings the runner until healthy, and fails the start at once, with ECS's stop code, stopped
//! reason and container exit codes (`exit_details`), when the task stops first. `StopTask`
//! ends it; `ListTasks` by `startedBy` plus the tags `flame.app` / `flame.parent` finds the
//! tasks a crashed parent left behind, and `reap` stops only those that are provably
//! orphaned — their runner says (unauthenticated, no secret) that its parent has been silent
//! past the failsafe window, or does not answer for that window plus the boot timeout —
//! never a runner of another live parent of the app (replicas, rolling deploys).
//!
//! ```no_run
//! use flame_backend_ecs::{EcsBackend, SecretDelivery};
//! use flame_core::{Context, Flame, Method, Mode, PoolConfig, Registry};
//! use std::time::Duration;
//!
//! const ADD: Method<(i64, i64), i64> = Method::new("math", "add");
//!
//! # async fn run() -> flame_core::Result<()> {
//! let registry = Registry::new().handle(ADD, |_: Context, (a, b): (i64, i64)| async move { Ok(a + b) });
//! // On ECS, cluster, task definition, container, launch type and subnets default to the
//! // parent's own task; off ECS, name them (or set FLAME_ECS_* and use from_env()).
//! let backend = EcsBackend::builder()
//!     .security_groups(["sg-0runners"])
//!     .secret_delivery(SecretDelivery::TaskDefinition)
//!     .build()
//!     .await?;
//! let flame = Flame::builder(registry)
//!     .default_mode(Mode::Parent)
//!     .backend(backend)
//!     .pool("default", PoolConfig::default().max(4).boot_timeout(Duration::from_secs(120)))
//!     .from_env()?
//!     .start() // in a runner task (FLAME_MODE=runner) this serves instead
//!     .await?;
//! assert_eq!(flame.call(ADD, (2, 3)).await?, 5);
//! flame.shutdown().await
//! # }
//! ```
//!
//! ## The secret
//!
//! Variables in container overrides are part of the task description: **anyone allowed to
//! call `ecs:DescribeTasks` on the cluster can read them**. With
//! [`SecretDelivery::TaskDefinition`] (the production setup) the override never carries
//! `FLAME_SECRET`; the runner gets it from its task definition's `secrets` (Secrets Manager or
//! SSM), the same entry the parent's own task reads.
//!
//! ## Retries
//!
//! Throttling, 5xx and timeouts of the ECS API are retried by the SDK's standard retry
//! strategy, configured through [`RetrySettings`]; this crate adds no retry loop of its own
//! around API calls (it only polls task state). What is left after the last attempt comes
//! back as a typed error: see [`EcsError`] and [`EcsErrorKind`].

mod backend;
mod config;
mod error;
pub mod metadata;

pub use backend::EcsBackend;
pub use config::{EcsBackendBuilder, EcsSettings, Launch, PollSettings, RetrySettings, SecretDelivery};
pub use error::{EcsError, EcsErrorKind};

/// The AWS SDK crates this backend is built on, for [`EcsBackendBuilder::sdk_config`],
/// [`EcsBackendBuilder::credentials`] and [`EcsBackend::client`].
pub mod aws {
    pub use aws_config;
    pub use aws_sdk_ecs;
    pub use aws_sdk_ecs::config::{Credentials, Region};
}

/// The HTTPS client for the AWS SDK: hyper with rustls on ring (plain `http://` works too,
/// for emulators).
pub(crate) fn https_client() -> aws_sdk_ecs::config::SharedHttpClient {
    use aws_smithy_http_client::tls;
    aws_smithy_http_client::Builder::new()
        .tls_provider(tls::Provider::Rustls(tls::rustls_provider::CryptoMode::Ring))
        .build_https()
}
