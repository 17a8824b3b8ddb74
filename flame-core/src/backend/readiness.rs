//! The one readiness probe every backend shares: a backend's [`Backend::spawn`] only places a
//! runner (a process, container, task, machine, Pod) and says where it listens; core then waits
//! until it answers a health ping — with backoff and jitter, within `boot_timeout`, and giving up
//! at once when the engine says the runner died — and ends it if it never does.
//!
//! ```no_run
//! # async fn demo(backend: &dyn flame_core::Backend, prober: &dyn flame_core::Transport, request: flame_core::SpawnRequest) -> flame_core::Result<()> {
//! use flame_core::backend::readiness::start_runner;
//! // Placed and healthy, or SPAWN_TIMEOUT / BACKEND with nothing left running.
//! let handle = start_runner(backend, request, prober).await?;
//! # let _ = handle; Ok(()) }
//! ```

use super::{Backend, RunnerHandle, RunnerState, SpawnRequest};
use crate::error::{Error, ErrorCode, Result};
use crate::transport::Transport;
use rand::Rng;
use std::time::Duration;
use tokio::time::Instant;

/// The first pause between pings; it doubles up to [`MAX_DELAY`], with jitter.
const FIRST_DELAY: Duration = Duration::from_millis(10);
/// The longest pause between pings.
const MAX_DELAY: Duration = Duration::from_millis(250);
/// The engine is asked whether the runner still runs at most this often while it does not
/// answer (engines such as ECS or Fly rate-limit their APIs).
const STATUS_EVERY: Duration = Duration::from_millis(500);
/// How long ending a runner that never became ready may take.
const END_TIMEOUT: Duration = Duration::from_secs(30);

/// Places a runner through `backend` and waits until it is ready (see the [module docs](self)),
/// all within `request.boot_timeout`. On any failure the runner is ended, so nothing is left:
/// `SPAWN_TIMEOUT` (retryable) when the time ran out, `BACKEND` when the engine refused or the
/// runner exited before it was ready (with what the engine knows, [`Backend::exit_details`]).
pub async fn start_runner(
    backend: &dyn Backend,
    request: SpawnRequest,
    prober: &dyn Transport,
) -> Result<RunnerHandle> {
    let boot_timeout = request.boot_timeout;
    let deadline = Instant::now() + boot_timeout;
    let runner_id = request.runner_id.clone();
    // The backend bounds its own wait by `boot_timeout` and says why it gave up (e.g. the
    // scheduler's message); the cut here is a backstop a little later. A spawn dropped at it
    // cleans up after itself (every backend guards that).
    let grace = (boot_timeout / 5).clamp(Duration::from_millis(200), Duration::from_secs(3));
    let handle = match tokio::time::timeout_at(deadline + grace, backend.spawn(request)).await {
        Ok(placed) => placed?,
        Err(_) => {
            return Err(Error::new(
                ErrorCode::SpawnTimeout,
                format!(
                "the {} backend did not place runner {runner_id} within the boot timeout of {boot_timeout:?}",
                backend.name()
            ),
            ))
        }
    };
    match wait_ready(backend, &handle, prober, deadline, boot_timeout).await {
        Ok(()) => Ok(handle),
        Err(e) => {
            match tokio::time::timeout(END_TIMEOUT, backend.terminate(&handle)).await {
                Ok(Ok(())) => {}
                Ok(Err(end)) => {
                    tracing::warn!(target: "flame::backend", runner = %runner_id, error = %end, "ending a runner that never became ready failed")
                }
                Err(_) => {
                    tracing::warn!(target: "flame::backend", runner = %runner_id, "ending a runner that never became ready timed out")
                }
            }
            Err(e)
        }
    }
}

/// Pings `handle` through `prober` until it answers `ok`, the engine says it stopped, or
/// `deadline` passes.
pub async fn wait_ready(
    backend: &dyn Backend,
    handle: &RunnerHandle,
    prober: &dyn Transport,
    deadline: Instant,
    boot_timeout: Duration,
) -> Result<()> {
    let mut delay = FIRST_DELAY;
    let mut last = String::from("no ping answered yet");
    let mut next_status = Instant::now();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(Error::new(
                ErrorCode::SpawnTimeout,
                format!(
                    "runner {} at {} did not answer a health ping within the boot timeout of {boot_timeout:?}: {last}",
                    handle.runner_id, handle.endpoint.url
                ),
            ));
        }
        match tokio::time::timeout(left, prober.ping(&handle.endpoint)).await {
            Ok(Ok(status)) if status.ok && !status.draining => return Ok(()),
            Ok(Ok(status)) if status.draining => last = "the runner is draining".to_owned(),
            Ok(Ok(_)) => last = "the runner said it is not ok".to_owned(),
            Ok(Err(e)) => last = e.to_string(),
            Err(_) => continue,
        }
        if Instant::now() >= next_status {
            next_status = Instant::now() + STATUS_EVERY;
            if let Ok(RunnerState::Stopped) = backend.status(handle).await {
                let details = backend.exit_details(handle).await;
                return Err(Error::backend(
                    format!(
                        "runner {} exited before it was ready{}",
                        handle.runner_id,
                        details.map(|d| format!(": {d}")).unwrap_or_default()
                    ),
                    false,
                ));
            }
        }
        let jittered = delay.mul_f64(rand::thread_rng().gen_range(0.5..=1.0));
        tokio::time::sleep(jittered.min(deadline.saturating_duration_since(Instant::now()))).await;
        delay = (delay * 2).min(MAX_DELAY);
    }
}
