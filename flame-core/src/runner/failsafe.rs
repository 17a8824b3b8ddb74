//! The runner's no-orphan failsafe (DESIGN.md §4): a runner exits on its own when its parent
//! is gone.
//!
//! A runner started by a parent gets `FLAME_PARENT_ID` (and `FLAME_PARENT_TIMEOUT`, default
//! 20 s). While it serves, a watchdog checks [`Dispatcher::since_parent_contact`]: every
//! authenticated request from the parent (calls and the pool's health pings, which come well
//! inside the window) resets it. With no contact for `FLAME_PARENT_TIMEOUT` the watchdog marks
//! the runner draining and fires the server's shutdown token: the server stops accepting,
//! finishes the calls in flight and returns, and the process exits.
//!
//! Local children (started by [`LocalProcess`](crate::backend::LocalProcess), which also sets
//! `FLAME_PARENT_PID`) additionally:
//! - ask Linux for `SIGTERM` when their parent dies (`PR_SET_PDEATHSIG`, set by the child on
//!   itself, so no `unsafe` `pre_exec` is needed; `LocalProcess` forks from one long-lived
//!   thread so the signal is not fired early by a retiring thread);
//! - check `getppid()` against `FLAME_PARENT_PID`: a changed parent pid means the parent died
//!   (the child was re-parented), on every platform and also in the race where the parent died
//!   before the signal was armed.
//!
//! Runners started by hand (no `FLAME_PARENT_ID`) have no watchdog.

use crate::config::Config;
use crate::runner::Dispatcher;
use std::sync::Arc;
use std::time::Duration;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// Why the failsafe ended the runner.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trigger {
    /// No authenticated parent contact for the parent timeout.
    ParentSilent,
    /// The parent process is gone (the runner was re-parented).
    ParentGone,
}

/// The parent-death watchdog of one runner.
///
/// ```
/// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
/// use flame_core::runner::failsafe::{Failsafe, Trigger};
/// use flame_core::{Dispatcher, Registry};
/// use std::sync::Arc;
/// use std::time::Duration;
/// let dispatcher = Arc::new(Dispatcher::new(Registry::new(), "r1"));
/// let shutdown = tokio_util::sync::CancellationToken::new();
/// // Nobody contacts this runner: after 50 ms it drains and its server is told to stop.
/// let trigger = Failsafe::new(Duration::from_millis(50)).watch(dispatcher.clone(), shutdown.clone()).await;
/// assert_eq!(trigger, Some(Trigger::ParentSilent));
/// assert!(shutdown.is_cancelled() && dispatcher.is_draining());
/// # });
/// ```
#[derive(Debug, Clone)]
pub struct Failsafe {
    parent_timeout: Duration,
    parent_pid: Option<u32>,
    hard_exit_after: Option<Duration>,
}

impl Failsafe {
    /// A watchdog that fires after `parent_timeout` without parent contact.
    pub fn new(parent_timeout: Duration) -> Self {
        Failsafe {
            parent_timeout,
            parent_pid: None,
            hard_exit_after: None,
        }
    }

    /// The failsafe this runner needs: `None` without `FLAME_PARENT_ID` (started by hand);
    /// otherwise one with `config.parent_timeout` and, when `FLAME_PARENT_PID` is set, the
    /// parent-process checks.
    pub fn from_config(config: &Config) -> Option<Self> {
        config.parent_id.as_ref()?;
        let parent_pid = std::env::var("FLAME_PARENT_PID")
            .ok()
            .and_then(|p| p.trim().parse::<u32>().ok())
            .filter(|p| *p > 1);
        Some(Failsafe {
            parent_timeout: config.parent_timeout,
            parent_pid,
            hard_exit_after: None,
        })
    }

    /// Also watch that the parent process `pid` stays this process's parent.
    pub fn parent_pid(mut self, pid: u32) -> Self {
        self.parent_pid = Some(pid);
        self
    }

    /// After firing, end the process if the server has not stopped within `grace` (a handler
    /// that ignores cancellation must not keep an orphan alive). Off by default.
    pub fn hard_exit_after(mut self, grace: Duration) -> Self {
        self.hard_exit_after = Some(grace);
        self
    }

    /// Arms the parent-death signal (Linux, when the parent pid is known: a local child) and
    /// runs [`Failsafe::watch`] in a task.
    pub fn spawn(
        self,
        dispatcher: Arc<Dispatcher>,
        shutdown: CancellationToken,
    ) -> JoinHandle<Option<Trigger>> {
        if self.parent_pid.is_some() {
            arm_parent_death_signal();
        }
        tokio::spawn(self.watch(dispatcher, shutdown))
    }

    /// Watches until the parent is gone (returns what was seen, after firing `shutdown`) or
    /// `shutdown` fires for another reason (returns `None`).
    pub async fn watch(self, dispatcher: Arc<Dispatcher>, shutdown: CancellationToken) -> Option<Trigger> {
        let every = (self.parent_timeout / 4).clamp(Duration::from_millis(10), Duration::from_millis(500));
        let trigger = loop {
            if let Some(pid) = self.parent_pid {
                if parent_pid() != Some(pid) {
                    break Trigger::ParentGone;
                }
            }
            if dispatcher.since_parent_contact() >= self.parent_timeout {
                break Trigger::ParentSilent;
            }
            tokio::select! {
                _ = shutdown.cancelled() => return None,
                _ = tokio::time::sleep(every) => {}
            }
        };
        match trigger {
            Trigger::ParentSilent => tracing::warn!(
                target: "flame::runner",
                runner = dispatcher.runner_id(),
                timeout_ms = self.parent_timeout.as_millis() as u64,
                "no contact from the parent within FLAME_PARENT_TIMEOUT: draining and exiting"
            ),
            Trigger::ParentGone => tracing::warn!(
                target: "flame::runner",
                runner = dispatcher.runner_id(),
                "the parent process is gone: draining and exiting"
            ),
        }
        dispatcher.set_draining();
        shutdown.cancel();
        if let Some(grace) = self.hard_exit_after {
            tokio::spawn(async move {
                tokio::time::sleep(grace).await;
                tracing::error!(target: "flame::runner", "calls did not drain in time after the parent left: exiting now");
                std::process::exit(0);
            });
        }
        Some(trigger)
    }
}

#[cfg(unix)]
fn parent_pid() -> Option<u32> {
    Some(std::os::unix::process::parent_id())
}

#[cfg(not(unix))]
fn parent_pid() -> Option<u32> {
    None
}

#[cfg(target_os = "linux")]
fn arm_parent_death_signal() {
    if let Err(e) = nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGTERM) {
        tracing::debug!(target: "flame::runner", error = %e, "cannot set the parent-death signal; the watchdog still runs");
    }
}

#[cfg(not(target_os = "linux"))]
fn arm_parent_death_signal() {}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Registry;

    #[tokio::test(start_paused = true)]
    async fn contact_keeps_the_runner_alive() {
        let d = Arc::new(Dispatcher::new(Registry::new(), "r"));
        let token = CancellationToken::new();
        let watch = tokio::spawn(Failsafe::new(Duration::from_secs(2)).watch(d.clone(), token.clone()));
        for _ in 0..10 {
            tokio::time::sleep(Duration::from_secs(1)).await;
            d.note_parent_contact();
        }
        assert!(!token.is_cancelled());
        tokio::time::sleep(Duration::from_secs(3)).await;
        assert!(token.is_cancelled());
        assert_eq!(watch.await.ok().flatten(), Some(Trigger::ParentSilent));
    }

    #[tokio::test]
    async fn a_changed_parent_pid_fires_at_once() {
        let d = Arc::new(Dispatcher::new(Registry::new(), "r"));
        let token = CancellationToken::new();
        let not_my_parent = std::process::id();
        let t = Failsafe::new(Duration::from_secs(60))
            .parent_pid(not_my_parent)
            .watch(d, token.clone())
            .await;
        assert_eq!(t, Some(Trigger::ParentGone));
    }

    #[tokio::test]
    async fn stopping_for_another_reason_ends_the_watch() {
        let d = Arc::new(Dispatcher::new(Registry::new(), "r"));
        let token = CancellationToken::new();
        token.cancel();
        let t = Failsafe::new(Duration::from_secs(60))
            .watch(d.clone(), token)
            .await;
        assert_eq!(t, None);
        assert!(!d.is_draining());
    }

    #[test]
    fn only_runners_with_a_parent_get_one() {
        let cfg = Config::default();
        assert!(Failsafe::from_config(&cfg).is_none());
        let cfg = Config::from_lookup(|k| (k == "FLAME_PARENT_ID").then(|| "p".into())).ok();
        assert!(cfg.and_then(|c| Failsafe::from_config(&c)).is_some());
    }
}
