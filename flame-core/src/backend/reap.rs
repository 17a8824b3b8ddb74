//! Reap only the provably orphaned (DESIGN.md §9): the one rule every backend's
//! [`Backend::reap`](super::Backend::reap) applies to the runners it finds.
//!
//! Several live parents of one app are normal (replicas, a rolling deploy), so a runner is never
//! ended because its parent id is not ours. A backend lists the runners of the app (by labels,
//! tags, metadata, pid files) as [`ReapCandidate`]s and asks [`ReapScope::select`] which to end.
//! A candidate is ended only when
//! 1. the engine says it is stopped (an exited container, a stopped machine: clean-up only), or
//! 2. it answers the *unauthenticated* health probe with `parentSilentMs` at or above
//!    [`ReapScope::orphan_after`] — its parent has not pinged it for the failsafe window, which a
//!    live parent never lets happen (it pings every `health_interval`, at most a third of the
//!    window), or
//! 3. the engine says it runs but it does not answer at all for [`ReapScope::unreachable_after`]
//!    (the failsafe window plus a boot timeout, so a runner that a live parent is still booting
//!    is never taken for dead).
//!
//! Everything else is spared: the live parent's own runners, runners without a parent id
//! (not started by flame), and runners whose parent is in touch. A runner that answers without
//! `parentSilentMs` (started by an older flame, or by hand) is spared too: its own failsafe ends
//! it when its parent is gone.
//!
//! ```
//! # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
//! use flame_core::backend::reap::{ReapCandidate, ReapReason, ReapScope, ReapVerdict};
//! use flame_core::testkit::InMemoryTransport;
//! use flame_core::{RunnerState};
//! use std::sync::Arc;
//! let scope = ReapScope::new("shop", "parent-b", Arc::new(InMemoryTransport::new()));
//! let gone = ReapCandidate::new("r1", "c1", Some("parent-a".into()), RunnerState::Stopped, None);
//! assert_eq!(scope.judge(&gone).await, ReapVerdict::End(ReapReason::Stopped));
//! let ours = ReapCandidate::new("r2", "c2", Some("parent-b".into()), RunnerState::Running, None);
//! assert!(matches!(scope.judge(&ours).await, ReapVerdict::Spare(_)));
//! # });
//! ```

use super::RunnerState;
use crate::transport::{Endpoint, Transport};
use std::fmt;
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

/// Which runners `reap` looks at, and the windows that prove a runner orphaned.
#[derive(Clone)]
#[non_exhaustive]
pub struct ReapScope {
    /// The application name: only its runners are candidates.
    pub app: String,
    /// The reaping parent's own id: its runners are never candidates.
    pub live_parent: String,
    /// Reaches runners for the unauthenticated health probe (no secret is sent).
    pub prober: Arc<dyn Transport>,
    /// A runner whose parent has been silent this long is orphaned. Default 20 s (the default
    /// `FLAME_PARENT_TIMEOUT`).
    pub orphan_after: Duration,
    /// A runner the engine says runs but that never answers for this long is ended. Default
    /// 50 s (the failsafe window plus the default 30 s boot timeout).
    pub unreachable_after: Duration,
    /// How long one health probe may take. Default 2 s.
    pub probe_timeout: Duration,
}

impl fmt::Debug for ReapScope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ReapScope")
            .field("app", &self.app)
            .field("live_parent", &self.live_parent)
            .field("orphan_after", &self.orphan_after)
            .field("unreachable_after", &self.unreachable_after)
            .finish()
    }
}

impl ReapScope {
    /// Runners of `app`, as seen by live parent `live_parent`, probed through `prober`.
    pub fn new(app: impl Into<String>, live_parent: impl Into<String>, prober: Arc<dyn Transport>) -> Self {
        ReapScope {
            app: app.into(),
            live_parent: live_parent.into(),
            prober,
            orphan_after: Duration::from_secs(20),
            unreachable_after: Duration::from_secs(50),
            probe_timeout: Duration::from_secs(2),
        }
    }

    /// Sets the failsafe window (`orphan_after`) and how long an unanswering runner is given
    /// (`unreachable_after`, at least the window).
    pub fn windows(mut self, orphan_after: Duration, unreachable_after: Duration) -> Self {
        self.orphan_after = orphan_after;
        self.unreachable_after = unreachable_after.max(orphan_after);
        self
    }

    /// Sets how long one health probe may take.
    pub fn probe_timeout(mut self, timeout: Duration) -> Self {
        self.probe_timeout = timeout;
        self
    }

    /// Decides one candidate. May take up to `unreachable_after` for a runner that does not
    /// answer (it is probed again every second or so in that time).
    pub async fn judge(&self, candidate: &ReapCandidate) -> ReapVerdict {
        match candidate.parent_id.as_deref() {
            None => return ReapVerdict::Spare(SpareReason::NotFlame),
            Some(p) if p == self.live_parent => return ReapVerdict::Spare(SpareReason::OwnRunner),
            Some(_) => {}
        }
        if candidate.state == RunnerState::Stopped {
            return ReapVerdict::End(ReapReason::Stopped);
        }
        let started = Instant::now();
        let every = (self.unreachable_after / 20).clamp(Duration::from_millis(50), Duration::from_secs(1));
        loop {
            if let Some(endpoint) = &candidate.endpoint {
                // Strangers get the liveness answer only: no secret goes to a runner that may
                // belong to another parent.
                let probe = endpoint.clone().with_secret(None);
                if let Ok(Ok(status)) =
                    tokio::time::timeout(self.probe_timeout, self.prober.ping(&probe)).await
                {
                    return match status.parent_silent_ms {
                        Some(ms) if Duration::from_millis(ms) >= self.orphan_after => {
                            ReapVerdict::End(ReapReason::ParentSilent(Duration::from_millis(ms)))
                        }
                        Some(_) => ReapVerdict::Spare(SpareReason::ParentInTouch),
                        None => ReapVerdict::Spare(SpareReason::NoReport),
                    };
                }
            }
            let waited = started.elapsed();
            if waited >= self.unreachable_after {
                return ReapVerdict::End(ReapReason::Unreachable(waited));
            }
            tokio::time::sleep(every.min(self.unreachable_after - waited)).await;
        }
    }

    /// Decides every candidate at once; returns those to end, with why.
    pub async fn select(&self, candidates: Vec<ReapCandidate>) -> Vec<(ReapCandidate, ReapReason)> {
        let verdicts = futures::future::join_all(candidates.iter().map(|c| self.judge(c))).await;
        candidates
            .into_iter()
            .zip(verdicts)
            .filter_map(|(c, v)| match v {
                ReapVerdict::End(reason) => {
                    tracing::info!(target: "flame::reap", app = %self.app, runner = %c.runner_id, backend_id = %c.backend_id, parent = ?c.parent_id, %reason, "reaping an orphaned runner");
                    Some((c, reason))
                }
                ReapVerdict::Spare(why) => {
                    tracing::debug!(target: "flame::reap", app = %self.app, runner = %c.runner_id, parent = ?c.parent_id, ?why, "sparing a runner");
                    None
                }
            })
            .collect()
    }
}

/// A runner a backend found, as the reap rule needs to see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReapCandidate {
    /// The runner id (`flame.runner`).
    pub runner_id: String,
    /// The engine's id (pid, container id, task ARN, machine id).
    pub backend_id: String,
    /// The parent id it was labelled with (`flame.parent`), if any.
    pub parent_id: Option<String>,
    /// What the engine says about it.
    pub state: RunnerState,
    /// Where to probe it, when the backend can tell (through its address resolver).
    pub endpoint: Option<Endpoint>,
}

impl ReapCandidate {
    /// A candidate.
    pub fn new(
        runner_id: impl Into<String>,
        backend_id: impl Into<String>,
        parent_id: Option<String>,
        state: RunnerState,
        endpoint: Option<Endpoint>,
    ) -> Self {
        ReapCandidate {
            runner_id: runner_id.into(),
            backend_id: backend_id.into(),
            parent_id,
            state,
            endpoint,
        }
    }
}

/// What [`ReapScope::judge`] decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReapVerdict {
    /// End it.
    End(ReapReason),
    /// Leave it alone.
    Spare(SpareReason),
}

/// Why a runner is provably orphaned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReapReason {
    /// The engine says it stopped: only its remains are cleaned up.
    Stopped,
    /// It says its parent has been silent this long (at least the failsafe window).
    ParentSilent(Duration),
    /// It did not answer for this long while the engine said it runs.
    Unreachable(Duration),
}

impl fmt::Display for ReapReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ReapReason::Stopped => f.write_str("the engine says it stopped"),
            ReapReason::ParentSilent(d) => write!(f, "its parent has been silent for {} ms", d.as_millis()),
            ReapReason::Unreachable(d) => write!(f, "it did not answer for {} ms", d.as_millis()),
        }
    }
}

/// Why a runner is spared.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SpareReason {
    /// It belongs to the reaping parent.
    OwnRunner,
    /// It has no parent id: not started by a flame parent.
    NotFlame,
    /// Its parent pinged it within the failsafe window: a live parent's runner.
    ParentInTouch,
    /// It answered without saying when it last heard from its parent.
    NoReport,
    /// A backend-specific proof that its parent lives (e.g. the parent process runs).
    ParentAlive,
}
