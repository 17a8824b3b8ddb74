//! [`RunnerTemplate`]: what every runner a pool starts is told.

use crate::backend::{labels, SpawnRequest};
use crate::config::Secret;
use crate::error::{Error, Result};
use crate::spawn_guard::{self, DEFAULT_MAX_DEPTH, MAX_NESTING_DEPTH, SPAWN_DEPTH_VAR};
use crate::transport::Transport;
use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

/// What every runner a pool starts is told: the parts of a [`SpawnRequest`] that do not change
/// from one runner to the next. [`RunnerTemplate::request`] makes a fresh request (new runner
/// id) with the environment of DESIGN.md §1.
///
/// ```
/// use flame_core::pool::RunnerTemplate;
/// use flame_core::testkit::InMemoryTransport;
/// use flame_core::{Secret};
/// use std::sync::Arc;
/// use std::time::Duration;
/// let t = RunnerTemplate::new("shop", "parent-1", Secret::generate(), Arc::new(InMemoryTransport::new()))
///     .parent_timeout(Duration::from_secs(20));
/// let req = t.request("default", Duration::from_secs(30));
/// assert_eq!(req.env["FLAME_MODE"], "runner");
/// assert_eq!(req.env["FLAME_PARENT_TIMEOUT"], "20000");
/// assert_eq!(req.env["FLAME_SPAWN_DEPTH"], "1");
/// assert_eq!(req.labels["flame.pool"], "default");
/// ```
#[derive(Clone)]
pub struct RunnerTemplate {
    /// The application name (`flame.app` label, reap scope).
    pub app: String,
    /// The spawning parent's id (`FLAME_PARENT_ID`, `flame.parent` label).
    pub parent_id: String,
    /// The secret runners verify requests with (`FLAME_SECRET`); one per pool.
    pub secret: Secret,
    /// How long a runner lives without authenticated parent contact (`FLAME_PARENT_TIMEOUT`).
    pub parent_timeout: Duration,
    /// Extra environment for every runner (wins over nothing: the `FLAME_*` variables above are
    /// always set by the pool).
    pub env: BTreeMap<String, String>,
    /// The transport the pool pings and calls runners with; also what the readiness probe
    /// pings a new runner through.
    pub transport: Arc<dyn Transport>,
    /// The deepest spawn depth runners of this template may have (see
    /// [`spawn_guard`]): 1 — a top-level parent starts runners, runners start none — unless
    /// nesting was opted into with [`RunnerTemplate::allow_nested`].
    pub max_depth: u32,
}

impl fmt::Debug for RunnerTemplate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RunnerTemplate")
            .field("app", &self.app)
            .field("parent_id", &self.parent_id)
            .field("parent_timeout", &self.parent_timeout)
            .field("env", &self.env.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl RunnerTemplate {
    /// A template for runners of `app` started by parent `parent_id`, reached via `transport`.
    pub fn new(
        app: impl Into<String>,
        parent_id: impl Into<String>,
        secret: Secret,
        transport: Arc<dyn Transport>,
    ) -> Self {
        RunnerTemplate {
            app: app.into(),
            parent_id: parent_id.into(),
            secret,
            parent_timeout: Duration::from_secs(20),
            env: BTreeMap::new(),
            transport,
            max_depth: DEFAULT_MAX_DEPTH,
        }
    }

    /// Lets runners of this template start runners of their own, down to spawn depth
    /// `max_depth` (2: runners may start one more level). A `CONFIG` error above
    /// [`MAX_NESTING_DEPTH`].
    pub fn allow_nested(mut self, max_depth: u32) -> Result<Self> {
        if max_depth > MAX_NESTING_DEPTH {
            return Err(Error::config(format!(
                "nested pools are capped at spawn depth {MAX_NESTING_DEPTH}; {max_depth} was asked for"
            )));
        }
        self.max_depth = max_depth.max(DEFAULT_MAX_DEPTH);
        Ok(self)
    }

    /// Sets how long runners live without parent contact.
    pub fn parent_timeout(mut self, timeout: Duration) -> Self {
        self.parent_timeout = timeout;
        self
    }

    /// Adds an environment variable for every runner.
    pub fn env(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.env.insert(key.into(), value.into());
        self
    }

    /// A request for one new runner of `pool` (fresh runner id), one spawn depth below this
    /// process (a process whose depth cannot be read makes runners that can never spawn).
    pub fn request(&self, pool: &str, boot_timeout: Duration) -> SpawnRequest {
        let depth = spawn_guard::spawn_depth().map_or(MAX_NESTING_DEPTH + 1, |d| d.saturating_add(1));
        self.request_at_depth(pool, boot_timeout, depth)
    }

    /// A request for one new runner of `pool` at spawn depth `depth` (`FLAME_SPAWN_DEPTH`).
    pub fn request_at_depth(&self, pool: &str, boot_timeout: Duration, depth: u32) -> SpawnRequest {
        let runner_id = format!("{pool}-{}", uuid::Uuid::new_v4().simple());
        let mut env = self.env.clone();
        for (k, v) in [
            ("FLAME_MODE", "runner".to_owned()),
            ("FLAME_SECRET", self.secret.expose().to_owned()),
            ("FLAME_LISTEN", "127.0.0.1:0".to_owned()),
            ("FLAME_PARENT_ID", self.parent_id.clone()),
            (
                "FLAME_PARENT_TIMEOUT",
                self.parent_timeout.as_millis().max(1).to_string(),
            ),
            ("FLAME_RUNNER_ID", runner_id.clone()),
            ("FLAME_POOL", pool.to_owned()),
            (SPAWN_DEPTH_VAR, depth.to_string()),
        ] {
            env.insert(k.to_owned(), v);
        }
        let labels = BTreeMap::from([
            (labels::APP.to_owned(), self.app.clone()),
            (labels::POOL.to_owned(), pool.to_owned()),
            (labels::PARENT.to_owned(), self.parent_id.clone()),
            (labels::RUNNER.to_owned(), runner_id.clone()),
        ]);
        SpawnRequest {
            runner_id,
            app: self.app.clone(),
            pool: pool.to_owned(),
            parent_id: self.parent_id.clone(),
            env,
            labels,
            boot_timeout,
            secret: Some(self.secret.clone()),
        }
    }
}
