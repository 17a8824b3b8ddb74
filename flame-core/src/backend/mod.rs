//! How runners come and go: the [`Backend`] trait and what it is handed and hands back, and
//! [`LocalProcess`], the embedded default backend.

pub mod local_process;
pub mod readiness;
pub mod reap;

pub use local_process::LocalProcess;
pub use reap::{ReapCandidate, ReapReason, ReapScope, ReapVerdict, SpareReason};

use crate::config::Secret;
use crate::error::Result;
use crate::transport::Endpoint;
use async_trait::async_trait;
use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

/// Copies the parent's environment variables `names` that are set into `env` (what a
/// backend's `forward_env` does: nothing else of the parent's environment reaches a runner on
/// a remote engine); an unset one is skipped with a warning naming `backend`.
///
/// ```
/// use std::collections::BTreeMap;
/// std::env::set_var("FORWARD_ENV_DOC", "1");
/// let mut env = BTreeMap::new();
/// flame_core::backend::forward_parent_env(&mut env, ["FORWARD_ENV_DOC", "FORWARD_ENV_UNSET"], "doc");
/// assert_eq!(env.len(), 1);
/// assert_eq!(env["FORWARD_ENV_DOC"], "1");
/// ```
pub fn forward_parent_env<'a>(
    env: &mut BTreeMap<String, String>,
    names: impl IntoIterator<Item = &'a str>,
    backend: &str,
) {
    for name in names {
        match std::env::var(name) {
            Ok(value) => {
                env.insert(name.to_owned(), value);
            }
            Err(_) => tracing::warn!(variable = name, "{backend}: not forwarding unset variable"),
        }
    }
}

/// Label keys every backend attaches to its runners (Docker labels, ECS tags, Fly metadata
/// with `.` replaced by `_`).
pub mod labels {
    /// The application name.
    pub const APP: &str = "flame.app";
    /// The pool name.
    pub const POOL: &str = "flame.pool";
    /// The id of the parent that spawned the runner.
    pub const PARENT: &str = "flame.parent";
    /// The runner id.
    pub const RUNNER: &str = "flame.runner";
}

/// Everything a backend needs to start one runner.
#[derive(Clone)]
pub struct SpawnRequest {
    /// The new runner's id (unique).
    pub runner_id: String,
    /// The application name (`flame.app`).
    pub app: String,
    /// The pool name (`flame.pool`).
    pub pool: String,
    /// The spawning parent's id (`flame.parent`).
    pub parent_id: String,
    /// Environment for the runner: `FLAME_MODE=runner`, `FLAME_SECRET`, `FLAME_LISTEN`,
    /// `FLAME_PARENT_ID`, `FLAME_PARENT_TIMEOUT`, plus what the user forwards.
    pub env: BTreeMap<String, String>,
    /// Labels / tags / metadata for the runner (at least app, pool, parent).
    pub labels: BTreeMap<String, String>,
    /// The runner must be placed and answer a health ping within this time, or it is ended and
    /// the start fails with `SPAWN_TIMEOUT` (core's [`readiness`] enforces it; a backend uses it
    /// to bound its own waits).
    pub boot_timeout: Duration,
    /// The secret the runner verifies requests with.
    pub secret: Option<Secret>,
}

impl fmt::Debug for SpawnRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let env: BTreeMap<&str, &str> = self
            .env
            .iter()
            .map(|(k, v)| {
                (
                    k.as_str(),
                    if k.contains("SECRET") || k.contains("TOKEN") {
                        "<redacted>"
                    } else {
                        v.as_str()
                    },
                )
            })
            .collect();
        f.debug_struct("SpawnRequest")
            .field("runner_id", &self.runner_id)
            .field("app", &self.app)
            .field("pool", &self.pool)
            .field("parent_id", &self.parent_id)
            .field("env", &env)
            .field("labels", &self.labels)
            .field("boot_timeout", &self.boot_timeout)
            .finish()
    }
}

/// A started runner, as the backend knows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunnerHandle {
    /// The runner id of its [`SpawnRequest`].
    pub runner_id: String,
    /// The engine's id for it: pid, container id, task ARN, machine id.
    pub backend_id: String,
    /// Where to reach it.
    pub endpoint: Endpoint,
}

/// What a backend says about a runner.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunnerState {
    /// Started, not yet serving.
    Booting,
    /// Running.
    Running,
    /// Gone (exited, stopped, destroyed, or unknown to the engine).
    Stopped,
}

/// Where a spawned runner can be reached, as a backend sees it, before resolution.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunnerAddress {
    /// The runner id.
    pub runner_id: String,
    /// The engine's id (container id, task ARN, machine id).
    pub backend_id: String,
    /// The address the engine reports (e.g. an ENI IPv4 or a 6PN IPv6), if any.
    pub host: Option<String>,
    /// The port the runner listens on.
    pub port: u16,
}

/// Maps a spawned runner to the URL the parent should use. Every backend takes one, so tests
/// can send traffic to a runner process they started on 127.0.0.1 instead of the private
/// address an engine (or its emulator) reports.
pub type AddressResolver = Arc<dyn Fn(&RunnerAddress) -> Option<String> + Send + Sync>;

/// Starts and ends runners: a local process, a container, a task, a machine.
#[async_trait]
pub trait Backend: Send + Sync + 'static {
    /// A short name for logs (`local`, `docker`, `ecs`, `fly`).
    fn name(&self) -> &str;

    /// Places a runner and returns once the engine says where it listens (its endpoint, with
    /// the request's secret); readiness is not the backend's job: core's one probe,
    /// [`readiness::start_runner`], pings it until healthy and ends it otherwise. A spawn that
    /// fails, or whose future is dropped half-way, leaves nothing running.
    async fn spawn(&self, request: SpawnRequest) -> Result<RunnerHandle>;

    /// Ends a runner (graceful stop, then force). Idempotent: ending a gone runner is `Ok`.
    async fn terminate(&self, handle: &RunnerHandle) -> Result<()>;

    /// The runner's state as the engine sees it.
    async fn status(&self, handle: &RunnerHandle) -> Result<RunnerState>;

    /// What the engine knows about why a stopped runner stopped (exit status, last output,
    /// stop reason), for the error of a runner that exited before it was ready. Default: none.
    async fn exit_details(&self, _handle: &RunnerHandle) -> Option<String> {
        None
    }

    /// Ends the runners of `scope.app` that are provably orphaned — never a live parent's:
    /// list the app's runners as [`ReapCandidate`]s and end what [`ReapScope::select`] picks
    /// (see [`reap`] for the rule). Returns how many it ended.
    async fn reap(&self, scope: &ReapScope) -> Result<usize>;
}
