//! # flame-backend-docker
//!
//! The Docker backend of flame (FLAME for Rust): each runner is a container started through
//! dockerd's API ([bollard]), from the parent's own image when the parent runs in a container,
//! else from the image you configure, with `FLAME_MODE=runner` added to its environment.
//!
//! ```no_run
//! # async fn demo() -> Result<(), flame_core::Error> {
//! use flame_backend_docker::{DockerBackend, Network, PullPolicy};
//! use flame_core::Backend;
//!
//! let backend = DockerBackend::builder()
//!     .image("registry.example/my-app:1.4.2") // used when the parent is not in a container
//!     .pull_policy(PullPolicy::IfMissing)
//!     .network(Network::Host)
//!     .forward_env(["RUST_LOG", "DATABASE_URL"])
//!     .memory_bytes(512 << 20)
//!     .cpus(1.0)
//!     .label("team", "media")
//!     .build()?;
//! backend.ping_engine().await?; // dockerd answers
//! assert_eq!(backend.name(), "docker");
//! # Ok(()) }
//! ```
//!
//! Hand it to the flame builder (`.backend(backend)`) and pools start and stop containers as
//! load comes and goes. What the backend guarantees:
//!
//! - It connects the way the Docker CLI does: `DOCKER_HOST` (`unix://` or `tcp://`), else
//!   `/var/run/docker.sock`; the API version is negotiated with the engine.
//! - Every container carries the labels `flame.app`, `flame.pool`, `flame.parent` and
//!   `flame.runner`, plus `AutoRemove`, so a runner that exits (its failsafe fired, or it
//!   crashed) leaves no container behind. `reap` removes only provably orphaned runners of the
//!   app — exited, or reporting (unauthenticated, no secret) that their parent has been silent
//!   past the failsafe window, or not answering for longer than that plus the boot timeout —
//!   and never a runner of another live parent (replicas and rolling deploys are safe).
//! - `spawn` creates and starts the container and returns as soon as the runner's address is
//!   known — its `FLAME_READY <url>` line ([`Network::Host`]) or its address on a
//!   [`Network::Named`] network — without pinging it: core's one readiness probe
//!   (`flame_core::backend::readiness::start_runner`, which pools use) pings it until healthy,
//!   and ends it otherwise. A container that exits before announcing itself is a `BACKEND`
//!   error with its exit code and last output; one that does not announce within
//!   `boot_timeout` is removed and the error is `SPAWN_TIMEOUT`; a spawn that fails or is
//!   dropped half-way removes its container. `status` says `Stopped` as soon as the container
//!   exited, and `exit_details` gives its exit code and last output lines (kept by a watch
//!   registered before the container starts, since `AutoRemove` removes it at once), so a
//!   runner that dies after announcing itself fails its start at once with that text.
//!   `terminate` stops (SIGTERM, grace time), then removes, and is idempotent.
//! - dockerd errors are `BACKEND` errors carrying the engine's message, retryable where a retry
//!   can help (engine unreachable, 5xx) and not otherwise (image missing, name conflict).

mod backend;
mod config;
mod detect;
mod error;
mod watch;

pub use backend::{DockerBackend, DockerBackendBuilder};
pub use config::{Gpus, Limits, Network, PullPolicy};
