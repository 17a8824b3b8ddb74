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
//! - `spawn` returns only once the runner answers `ping`; past `boot_timeout` the container is
//!   removed and the error is `SPAWN_TIMEOUT`. `terminate` stops (SIGTERM, grace time), then
//!   removes, and is idempotent.
//! - dockerd errors are `BACKEND` errors carrying the engine's message, retryable where a retry
//!   can help (engine unreachable, 5xx) and not otherwise (image missing, name conflict).

mod backend;
mod config;
mod detect;
mod error;

pub use backend::{DockerBackend, DockerBackendBuilder};
pub use config::{Gpus, Limits, Network, PullPolicy};
