//! What the backend sees of a runner container while it boots — its last output lines and how
//! it exited — kept for [`Backend::exit_details`](flame_core::Backend::exit_details).
//!
//! Containers run with `AutoRemove`, so once a runner exits dockerd forgets it (its exit code
//! and log go with it) within moments. A boot watch is therefore registered before the
//! container starts: dockerd's `wait` (condition `removed`, as `docker run --rm` does) reports
//! its exit code, and the log stream spawn follows for `FLAME_READY <url>` keeps being read
//! into a short tail. Both end when the runner's boot window closes (core's readiness probe
//! shares that window) or the container ends; what they saw is kept a little longer, then
//! dropped, so nothing grows with the number of runners.

use bollard::container::LogOutput;
use bollard::query_parameters::WaitContainerOptionsBuilder;
use bollard::Docker;
use flame_core::Secret;
use futures::{Stream, StreamExt};
use std::collections::{HashMap, VecDeque};
use std::pin::Pin;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;
use tokio::sync::watch;
use tokio::time::Instant;

/// Lines of runner output kept for error messages about a runner that failed to boot.
pub(crate) const TAIL_LINES: usize = 20;

/// How long what a watch saw is kept after its boot window closed.
const LINGER: Duration = Duration::from_secs(60);

/// How long `exit_details` waits for a stopped runner's exit code and last lines to arrive.
const SETTLE: Duration = Duration::from_secs(3);

/// A container's log stream.
pub(crate) type LogStream =
    Pin<Box<dyn Stream<Item = std::result::Result<LogOutput, bollard::errors::Error>> + Send>>;

/// Boot watches by container id.
pub(crate) type Watches = Mutex<HashMap<String, Arc<Watched>>>;

/// How a container ended, as dockerd's `wait` said.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Exit {
    /// Its exit code, when known.
    pub(crate) code: Option<i64>,
    /// dockerd's error about it, if any.
    pub(crate) error: Option<String>,
}

/// Where a watch stands.
#[derive(Debug, Clone, Default)]
pub(crate) struct Progress {
    /// Set once the container ended (or the wait failed).
    pub(crate) exit: Option<Exit>,
    /// Set once its output has been read to the end (or will not be read any more).
    pub(crate) logs_ended: bool,
}

/// What one boot watch saw.
pub(crate) struct Watched {
    tail: Mutex<VecDeque<String>>,
    progress: watch::Sender<Progress>,
    /// Redacted from every kept line.
    secret: Option<Secret>,
}

impl Watched {
    fn new(secret: Option<Secret>) -> Self {
        Watched {
            tail: Mutex::new(VecDeque::new()),
            progress: watch::Sender::new(Progress::default()),
            secret,
        }
    }

    /// Keeps `line` (trimmed, the secret redacted) among the last [`TAIL_LINES`].
    pub(crate) fn push_line(&self, line: &str) {
        let mut line = line.trim_end().to_owned();
        if let Some(secret) = self.secret.as_ref().filter(|s| !s.expose().is_empty()) {
            line = line.replace(secret.expose(), "<redacted>");
        }
        let mut tail = self.tail.lock().unwrap_or_else(|p| p.into_inner());
        tail.push_back(line);
        while tail.len() > TAIL_LINES {
            tail.pop_front();
        }
    }

    /// The kept lines, oldest first.
    pub(crate) fn lines(&self) -> Vec<String> {
        let tail = self.tail.lock().unwrap_or_else(|p| p.into_inner());
        tail.iter().cloned().collect()
    }

    /// Marks the output as read to the end.
    pub(crate) fn end_logs(&self) {
        self.progress.send_modify(|p| p.logs_ended = true);
    }

    fn set_exit(&self, exit: Exit) {
        self.progress.send_modify(|p| p.exit = Some(exit));
    }

    /// Waits (at most `within`) until the container ended and its output was read; returns
    /// what is known by then.
    pub(crate) async fn settle(&self, within: Duration) -> Progress {
        let mut rx = self.progress.subscribe();
        let _ = tokio::time::timeout(within, rx.wait_for(|p| p.exit.is_some() && p.logs_ended)).await;
        let now = rx.borrow().clone();
        now
    }

    /// Waits for the container's end as long as [`SETTLE`].
    pub(crate) async fn settled(&self) -> Progress {
        self.settle(SETTLE).await
    }
}

/// Starts watching container `id` (created, not yet started) until `until`; registers the
/// watch in `watches` and drops it again [`LINGER`] after `until`.
pub(crate) fn start(
    watches: &Arc<Watches>,
    docker: &Docker,
    id: &str,
    secret: Option<Secret>,
    until: Instant,
) -> Arc<Watched> {
    let watched = Arc::new(Watched::new(secret));
    watches
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .insert(id.to_owned(), watched.clone());
    let (registry, me, docker, id) = (
        Arc::downgrade(watches),
        Arc::downgrade(&watched),
        docker.clone(),
        id.to_owned(),
    );
    tokio::spawn(async move {
        let options = WaitContainerOptionsBuilder::new().condition("removed").build();
        let mut wait = docker.wait_container(&id, Some(options));
        let exit = match tokio::time::timeout_at(until, wait.next()).await {
            Ok(Some(Ok(reply))) => Some(Exit {
                code: Some(reply.status_code),
                error: reply.error.and_then(|e| e.message).filter(|m| !m.is_empty()),
            }),
            Ok(Some(Err(bollard::errors::Error::DockerContainerWaitError { error, code }))) => Some(Exit {
                code: Some(code),
                error: Some(error).filter(|m| !m.is_empty()),
            }),
            // Gone before the wait was registered, or dockerd failed: the code is unknown.
            Ok(Some(Err(_))) | Ok(None) => Some(Exit::default()),
            // Still running when its boot window closed: nothing to report.
            Err(_) => None,
        };
        drop(wait);
        if let (Some(exit), Some(watched)) = (exit, me.upgrade()) {
            watched.set_exit(exit);
        }
        tokio::time::sleep_until(until + LINGER).await;
        forget_if_same(&registry, &id, &me);
    });
    watched
}

/// Reads the rest of a runner's output into its watch until it ends or `until`.
pub(crate) fn drain(mut logs: LogStream, watched: &Arc<Watched>, until: Instant) {
    let me = Arc::downgrade(watched);
    tokio::spawn(async move {
        let read = async {
            let mut partial = String::new();
            while let Some(item) = logs.next().await {
                let bytes = match item {
                    Ok(LogOutput::StdOut { message })
                    | Ok(LogOutput::StdErr { message })
                    | Ok(LogOutput::Console { message }) => message,
                    Ok(LogOutput::StdIn { .. }) => continue,
                    Err(_) => break,
                };
                let Some(watched) = me.upgrade() else { return };
                partial.push_str(&String::from_utf8_lossy(&bytes));
                while let Some(nl) = partial.find('\n') {
                    let line: String = partial.drain(..=nl).collect();
                    watched.push_line(&line);
                }
            }
            if let Some(watched) = me.upgrade() {
                if !partial.trim().is_empty() {
                    watched.push_line(&partial);
                }
            }
        };
        let _ = tokio::time::timeout_at(until, read).await;
        if let Some(watched) = me.upgrade() {
            watched.end_logs();
        }
    });
}

/// Drops the watch of container `id` now (the runner was ended).
pub(crate) fn forget(watches: &Watches, id: &str) {
    watches.lock().unwrap_or_else(|p| p.into_inner()).remove(id);
}

fn forget_if_same(registry: &Weak<Watches>, id: &str, me: &Weak<Watched>) {
    let Some(watches) = registry.upgrade() else {
        return;
    };
    let mut watches = watches.lock().unwrap_or_else(|p| p.into_inner());
    if watches
        .get(id)
        .is_some_and(|w| std::ptr::eq(Arc::as_ptr(w), me.as_ptr()))
    {
        watches.remove(id);
    }
}

/// Says how a runner container ended: `container <id> exited with code 3 (<error>); its last
/// output lines: a | b`.
pub(crate) fn describe(short_id: &str, exit: Option<&Exit>, lines: &[String]) -> String {
    let mut text = match exit.map(|e| e.code) {
        Some(Some(code)) => format!("container {short_id} exited with code {code}"),
        Some(None) => format!("container {short_id} stopped (exit code unknown: it was removed)"),
        None => format!("container {short_id} stopped (dockerd has not reported its exit code yet)"),
    };
    if let Some(error) = exit.and_then(|e| e.error.as_deref()) {
        text.push_str(&format!(" ({error})"));
    }
    if !lines.is_empty() {
        text.push_str("; its last output lines: ");
        text.push_str(&lines.join(" | "));
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tail_is_bounded_and_redacted() {
        let w = Watched::new(Some(Secret::new("hunter2")));
        for i in 0..30 {
            w.push_line(&format!("line {i} hunter2\n"));
        }
        let lines = w.lines();
        assert_eq!(lines.len(), TAIL_LINES);
        assert_eq!(lines[0], "line 10 <redacted>");
        assert!(lines.iter().all(|l| !l.contains("hunter2")));
    }

    #[test]
    fn describes_exits() {
        let exit = Exit {
            code: Some(3),
            error: None,
        };
        assert_eq!(
            describe("abc", Some(&exit), &["boom".into(), "bye".into()]),
            "container abc exited with code 3; its last output lines: boom | bye"
        );
        assert_eq!(
            describe("abc", Some(&Exit::default()), &[]),
            "container abc stopped (exit code unknown: it was removed)"
        );
        assert_eq!(
            describe("abc", None, &[]),
            "container abc stopped (dockerd has not reported its exit code yet)"
        );
    }
}
