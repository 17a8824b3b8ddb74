//! # flame — FLAME for Rust
//!
//! Run chosen functions on short-lived runners started from your own binary, with a different
//! entrypoint. One binary, three modes: **local** (in-process), **parent** (routes calls to
//! runners) and **runner** (serves registered handlers). This is the crate applications depend
//! on; adapters switch on with features (`http`, `docker`, `ecs`, `fly`, `k8s`).
//!
//! ```
//! # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
//! use flame::{CallOptions, Context, Flame, Method, Registry};
//! use std::time::Duration;
//!
//! pub const ADD: Method<(i64, i64), i64> = Method::new("math", "add");
//!
//! let registry = Registry::new().handle(ADD, |_ctx: Context, (a, b): (i64, i64)| async move { Ok(a + b) });
//! let flame = Flame::builder(registry).from_env()?.start().await?;
//! assert_eq!(flame.call(ADD, (2, 3)).await?, 5);
//! let sum = flame.call_with(ADD, (4, 5), CallOptions::new().timeout(Duration::from_secs(1))).await?;
//! assert_eq!(sum, 9);
//! flame.shutdown().await?;
//! # Ok::<(), flame::Error>(())
//! # }).unwrap();
//! ```

// What an application uses. Plumbing for adapter and test authors is under [`raw`].
pub use flame_core::{
    CallHandle, CallOptions, CallStream, Config, Context, Error, ErrorCode, Flame, FlameBuilder, ItemStream,
    LocalProcess, MapOptions, Method, Mode, PayloadLimits, PlaceOptions, PlacedTask, PoolConfig, PoolEvent,
    PoolStats, Registry, Result, RetryBudget, RetryPolicy, Secret, Streamed,
};

/// Plumbing for adapter authors (transports, backends, pools, the runner dispatcher, the
/// wire codec) and for tests: what an application does not need to name. The modules are
/// `flame_core`'s own.
pub mod raw {
    pub use flame_core::backend::{
        AddressResolver, Backend, ReapCandidate, ReapReason, ReapScope, RunnerAddress, RunnerHandle,
        RunnerState, SpawnRequest,
    };
    pub use flame_core::pool::{
        CheckoutOptions, ElasticPool, ElasticPoolBuilder, Lease, LeaseOutcome, Pool, RunnerTemplate,
        StaticPool,
    };
    pub use flame_core::runner::{DispatchReply, Dispatcher, RunnerLimits, RunnerServer};
    /// Test support (feature `testkit`): the in-memory transport, engine gating, the backend
    /// conformance suite.
    #[cfg(feature = "testkit")]
    pub use flame_core::testkit;
    pub use flame_core::transport::{Args, Endpoint, Invocation, Reply, RunnerStatus, Transport};
    pub use flame_core::CallDefaults;
    pub use flame_core::{
        backend, call, codec, config, context, error, method, pool, registry, runner, spawn_guard, stream,
        transport,
    };
}

/// The Fly.io backend (feature `fly`): each runner is a Fly Machine created from the parent's
/// own image through the Machines API. See [`fly::FlyBackend`] and [`fly::FlyConfig`].
#[cfg(feature = "fly")]
pub mod fly {
    pub use flame_backend_fly::*;
}
#[cfg(feature = "fly")]
pub use flame_backend_fly::FlyBackend;

/// The AWS ECS backend (feature `ecs`): each runner is an ECS task of the parent's own task
/// definition (or a named one), started with RunTask. See [`ecs::EcsBackend`].
#[cfg(feature = "ecs")]
pub mod ecs {
    pub use flame_backend_ecs::*;
}
#[cfg(feature = "ecs")]
pub use flame_backend_ecs::EcsBackend;

/// The Docker backend (feature `docker`): each runner is a container started through dockerd,
/// from the parent's own image when it runs in a container. See [`docker::DockerBackend`].
#[cfg(feature = "docker")]
pub mod docker {
    pub use flame_backend_docker::*;
}
#[cfg(feature = "docker")]
pub use flame_backend_docker::DockerBackend;

/// The Kubernetes backend (feature `k8s`): each runner is a Pod made from the parent Pod's own
/// spec (or an image), owned by the parent Pod. See [`k8s::K8sBackend`] and [`k8s::K8sConfig`].
#[cfg(feature = "k8s")]
pub mod k8s {
    pub use flame_backend_k8s::*;
}
#[cfg(feature = "k8s")]
pub use flame_backend_k8s::K8sBackend;

/// The HTTP transport (feature `http`, on by default): wire protocol v1, compatible with the
/// TypeScript `@monotykamary/flame`. [`http::HttpExt`] wires it into a [`FlameBuilder`];
/// [`builder`] does that for you.
#[cfg(feature = "http")]
pub mod http {
    pub use flame_http::*;
}

/// A [`FlameBuilder`] over `registry`, with the HTTP transport (parent mode) and runner server
/// (runner mode) already wired in when the `http` feature is on (the default). Same as
/// `Flame::builder(registry).http()`.
///
/// ```
/// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
/// const ADD: flame::Method<(i64, i64), i64> = flame::Method::new("math", "add");
/// let registry = flame::Registry::new()
///     .handle(ADD, |_ctx: flame::Context, (a, b): (i64, i64)| async move { Ok(a + b) });
/// // FLAME_MODE=runner serves over HTTP, FLAME_MODE=parent calls FLAME_RUNNER_URL; local here.
/// let flame = flame::builder(registry).from_env()?.start().await?;
/// assert_eq!(flame.call(ADD, (2, 3)).await?, 5);
/// # Ok::<(), flame::Error>(())
/// # }).unwrap();
/// ```
pub fn builder(registry: Registry) -> FlameBuilder {
    #[cfg(feature = "http")]
    {
        use flame_http::HttpExt;
        Flame::builder(registry).http()
    }
    #[cfg(not(feature = "http"))]
    {
        Flame::builder(registry)
    }
}

/// Define a service once: `#[flame::service]` on a trait of `async fn` methods generates the
/// typed `Method` consts, a typed client and the registration of an implementation.
pub use flame_macros::service;
