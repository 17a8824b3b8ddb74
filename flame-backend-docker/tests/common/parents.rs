//! Real `docker_runner parent` processes for the multi-parent tests: a flame parent with an
//! elastic pool of Docker runners (and optionally a LocalProcess pool), driven over stdin/stdout.
#![allow(dead_code)]

use super::*;
use flame_core::backend::labels;
use std::time::Duration;
use tokio::process::Command;
use tokio::time::Instant;

pub use flame_core::testkit::parent_process::ParentProcess as Parent;

/// Starts `docker_runner parent` with `runners` Docker runners (callers keeping `call_ms` calls
/// in flight when > 0), failsafe window `window_ms`, and — with `local_state` — a second pool
/// of one LocalProcess runner whose pid files live there.
pub async fn start_parent(
    name: &'static str,
    app: &str,
    runners: usize,
    call_ms: u64,
    window_ms: u64,
    local_state: Option<&std::path::Path>,
) -> Parent {
    let mut command = Command::new(runner_binary());
    command
        .args(["parent", &runner_image(), app])
        .arg(runners.to_string())
        .arg(call_ms.to_string())
        .env("FLAME_PARENT_TIMEOUT", window_ms.to_string())
        .env(
            "DOCKER_RUNNER_LOCAL_POOL",
            local_state.map(|d| d.display().to_string()).unwrap_or_default(),
        );
    Parent::start(name, command, Duration::from_secs(120)).await
}

/// Ids of the containers (any state) of `app` labelled with parent `parent`, through the CLI.
pub fn containers_of_parent(app: &str, parent: &str) -> Vec<String> {
    let out = std::process::Command::new("docker")
        .args(["ps", "-aq", "--no-trunc"])
        .args(["--filter", &format!("label={}={app}", labels::APP)])
        .args(["--filter", &format!("label={}={parent}", labels::PARENT)])
        .output()
        .unwrap();
    let mut ids: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .map(str::to_owned)
        .collect();
    ids.sort();
    ids
}

pub fn container_state(id: &str) -> Option<String> {
    let out = std::process::Command::new("docker")
        .args(["inspect", "--format", "{{.State.Status}}", id])
        .output()
        .unwrap();
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

pub async fn wait_gone(id: &str, within: Duration) -> bool {
    let until = Instant::now() + within;
    while Instant::now() < until {
        if container_state(id).is_none() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    container_state(id).is_none()
}
