//! # flame-backend-fly
//!
//! A flame [`Backend`](flame_core::Backend) that runs each runner as a
//! [Fly Machine](https://fly.io/docs/machines/), created from the parent's own image through
//! the Machines REST API (`reqwest` on rustls). It follows Elixir FLAME's `FlyBackend`: one
//! `POST /v1/apps/{app}/machines` with `auto_destroy: true` and restart policy `no`, the
//! runner variables plus only what you forward in the machine's environment, and `flame_*`
//! metadata (`flame_app`, `flame_pool`, `flame_parent`, `flame_runner`) for `reap` (which
//! ends only provably orphaned machines: stopped, or whose runner says — unauthenticated, no
//! secret — that its parent has been silent past the failsafe window, or does not answer for
//! that window plus the boot timeout; never another live parent's). `spawn` then waits for
//! `started` and returns the runner's endpoint on the machine's private IPv6; core's one
//! readiness probe (`flame_core::backend::readiness::start_runner`, which pools use) pings it
//! until it answers, fails the start at once — with the machine's state and last event
//! (`exit_details`) — when Fly says the machine stopped, and ends it otherwise. A machine that
//! fails to come up is destroyed before the error is returned.
//!
//! Settings come from the variables every Fly machine sees (`FLY_APP_NAME`, `FLY_IMAGE_REF`,
//! `FLY_REGION`, `FLY_MACHINE_ID`) plus the `FLY_API_TOKEN` secret; see [`FlyConfig`].
//! The token never appears in an error, a log line or `Debug` output.
//!
//! ```no_run
//! use flame_backend_fly::{FlyBackend, FlyConfig};
//! use flame_core::{Context, Flame, Method, PoolConfig, Registry};
//! use std::time::Duration;
//!
//! const ADD: Method<(i64, i64), i64> = Method::new("math", "add");
//!
//! # async fn run() -> Result<(), flame_core::Error> {
//! let registry = Registry::new().handle(ADD, |_c: Context, (a, b): (i64, i64)| async move { Ok(a + b) });
//! // FLY_APP_NAME, FLY_IMAGE_REF, FLY_API_TOKEN (and FLY_REGION) come from the machine.
//! let backend = FlyBackend::new(
//!     FlyConfig::from_env()?
//!         .cpus("performance", 2)
//!         .memory_mb(4096)
//!         .forward_env(["DATABASE_URL"]),
//! )?;
//! let flame = Flame::builder(registry)
//!     .pool("default", PoolConfig::default().max(4).boot_timeout(Duration::from_secs(60)))
//!     .backend(backend)
//!     .from_env()?
//!     .start()
//!     .await?;
//! let five = flame.call(ADD, (2, 3)).await?;
//! # let _ = five;
//! flame.shutdown().await
//! # }
//! ```

mod api;
mod backend;
mod config;

pub use api::{FlyApiError, MachineState};
pub use backend::{metadata, FlyBackend};
pub use config::{FlyConfig, Guest, Init, RetryPolicy, DEFAULT_API_URL, DEFAULT_RUNNER_PORT, ENV_VARS};
