//! LocalProcess against real child processes (small shell scripts that print `FLAME_READY`),
//! without HTTP: the prober is a stand-in transport. The full path with real runners and
//! signed HTTP is in `examples/tests/local_process.rs`.
#![allow(clippy::unwrap_used)]
#![cfg(unix)]

use async_trait::async_trait;
use flame_core::backend::LocalProcess;
use flame_core::pool::RunnerTemplate;
use flame_core::{
    Backend, Endpoint, Error, ErrorCode, Invocation, ReapScope, RunnerState, RunnerStatus, Secret,
    SpawnRequest, Transport,
};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Answers pings as told; never invoked.
struct Prober(AtomicBool);

#[async_trait]
impl Transport for Prober {
    async fn invoke(&self, _e: &Endpoint, _i: &Invocation) -> flame_core::Result<String> {
        Err(Error::transport("not used"))
    }
    async fn ping(&self, _e: &Endpoint) -> flame_core::Result<RunnerStatus> {
        if self.0.load(Ordering::SeqCst) {
            Ok(RunnerStatus {
                ok: true,
                ..RunnerStatus::default()
            })
        } else {
            Err(Error::not_delivered("connection refused"))
        }
    }
}

struct Dir(PathBuf);
impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn dir() -> Dir {
    let d = std::env::temp_dir().join(format!("flame-lp-test-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&d).unwrap();
    Dir(d)
}

fn script(body: &str, state: &Dir) -> LocalProcess {
    LocalProcess::command("sh", ["-c", body])
        .state_dir(state.0.join("state"))
        .grace(Duration::from_secs(2))
}

fn request(parent: &str, healthy: bool, boot: Duration) -> SpawnRequest {
    RunnerTemplate::new(
        "lp-test",
        parent,
        Secret::generate(),
        Arc::new(Prober(AtomicBool::new(healthy))),
    )
    .request("default", boot)
}

fn alive(pid: u32) -> bool {
    // A zombie is not alive for this purpose: read the state from /proc.
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => !stat
            .rsplit(')')
            .next()
            .is_some_and(|rest| rest.trim_start().starts_with('Z')),
        Err(_) => false,
    }
}

async fn wait_dead(pid: u32, within: Duration) -> bool {
    let until = std::time::Instant::now() + within;
    while std::time::Instant::now() < until {
        if !alive(pid) {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    !alive(pid)
}

fn read_pid(path: &std::path::Path) -> u32 {
    for _ in 0..100 {
        if let Ok(s) = std::fs::read_to_string(path) {
            if let Ok(p) = s.trim().parse() {
                return p;
            }
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!("no pid in {}", path.display());
}

const READY: &str = "echo starting up; echo FLAME_READY http://127.0.0.1:9/; exec sleep 300";

#[tokio::test]
async fn spawn_reads_the_ready_line_and_terminate_ends_the_process() {
    let d = dir();
    let backend = script(READY, &d);
    let req = request("p1", true, Duration::from_secs(10));
    let secret = req.secret.clone();
    let h = backend.spawn(req).await.unwrap();
    assert_eq!(h.endpoint.url, "http://127.0.0.1:9");
    assert_eq!(h.endpoint.secret, secret);
    let pid: u32 = h.backend_id.parse().unwrap();
    assert!(alive(pid));
    assert_eq!(backend.status(&h).await.unwrap(), RunnerState::Running);
    assert_eq!(backend.records("lp-test").len(), 1, "a pid file per runner");
    backend.terminate(&h).await.unwrap();
    assert!(wait_dead(pid, Duration::from_secs(5)).await);
    assert_eq!(backend.status(&h).await.unwrap(), RunnerState::Stopped);
    backend.terminate(&h).await.unwrap();
    assert!(backend.records("lp-test").is_empty(), "pid file removed");
    assert_eq!(backend.live_children(), 0);
}

#[tokio::test]
async fn terminate_sends_sigterm_first() {
    let d = dir();
    let marker = d.0.join("term");
    let body = format!(
        "trap 'echo got-term > {}; exit 0' TERM; echo FLAME_READY http://127.0.0.1:9; while true; do sleep 0.05; done",
        marker.display()
    );
    let backend = script(&body, &d);
    let h = backend
        .spawn(request("p1", true, Duration::from_secs(10)))
        .await
        .unwrap();
    backend.terminate(&h).await.unwrap();
    assert_eq!(std::fs::read_to_string(&marker).unwrap().trim(), "got-term");
}

#[tokio::test]
async fn sigkill_follows_when_sigterm_is_ignored() {
    let d = dir();
    let body = "trap '' TERM; echo FLAME_READY http://127.0.0.1:9; while true; do sleep 0.05; done";
    let backend = script(body, &d).grace(Duration::from_millis(300));
    let h = backend
        .spawn(request("p1", true, Duration::from_secs(10)))
        .await
        .unwrap();
    let pid: u32 = h.backend_id.parse().unwrap();
    let started = std::time::Instant::now();
    backend.terminate(&h).await.unwrap();
    assert!(!alive(pid));
    assert!(started.elapsed() < Duration::from_secs(5));
}

#[tokio::test]
async fn a_runner_that_never_announces_itself_is_killed_at_boot_timeout() {
    let d = dir();
    let pidfile = d.0.join("pid");
    let body = format!("echo $$ > {}; exec sleep 300", pidfile.display());
    let backend = script(&body, &d);
    let err = backend
        .spawn(request("p1", true, Duration::from_millis(500)))
        .await
        .unwrap_err();
    assert_eq!(err.code(), ErrorCode::SpawnTimeout, "{err}");
    assert!(
        wait_dead(read_pid(&pidfile), Duration::from_secs(2)).await,
        "nothing left running"
    );
    assert_eq!(backend.live_children(), 0);
    assert!(backend.records("lp-test").is_empty());
}

#[tokio::test]
async fn a_runner_that_never_answers_pings_is_killed_at_boot_timeout() {
    let d = dir();
    let pidfile = d.0.join("pid");
    let body = format!(
        "echo $$ > {}; echo FLAME_READY http://127.0.0.1:9; exec sleep 300",
        pidfile.display()
    );
    let backend = script(&body, &d);
    let err = backend
        .spawn(request("p1", false, Duration::from_millis(500)))
        .await
        .unwrap_err();
    assert_eq!(err.code(), ErrorCode::SpawnTimeout, "{err}");
    assert!(err.message().contains("ping"), "{err}");
    assert!(wait_dead(read_pid(&pidfile), Duration::from_secs(2)).await);
}

#[tokio::test]
async fn a_runner_that_exits_early_is_a_backend_error_with_its_stderr() {
    let d = dir();
    let backend = script("echo 'cannot bind: address in use' >&2; exit 3", &d);
    let err = backend
        .spawn(request("p1", true, Duration::from_secs(5)))
        .await
        .unwrap_err();
    assert_eq!(err.code(), ErrorCode::Backend);
    assert!(!err.is_retryable());
    assert!(err.message().contains("address in use"), "{err}");
}

#[tokio::test]
async fn a_missing_program_is_a_backend_error() {
    let backend = LocalProcess::command("/nonexistent/flame-runner", Vec::<String>::new());
    let err = backend
        .spawn(request("p1", true, Duration::from_secs(5)))
        .await
        .unwrap_err();
    assert_eq!(err.code(), ErrorCode::Backend);
    assert!(err.message().contains("/nonexistent/flame-runner"), "{err}");
}

#[tokio::test]
async fn runners_get_the_request_environment_and_the_parent_pid() {
    let d = dir();
    let out = d.0.join("env");
    let body = format!(
        "echo \"$FLAME_MODE $FLAME_RUNNER_ID $FLAME_PARENT_ID $FLAME_PARENT_PID\" > {}; echo FLAME_READY http://127.0.0.1:9; exec sleep 300",
        out.display()
    );
    let backend = script(&body, &d);
    let req = request("parent-7", true, Duration::from_secs(5));
    let id = req.runner_id.clone();
    let h = backend.spawn(req).await.unwrap();
    let env = std::fs::read_to_string(&out).unwrap();
    assert_eq!(env.trim(), format!("runner {id} parent-7 {}", std::process::id()));
    backend.terminate(&h).await.unwrap();
}

#[tokio::test]
async fn reap_ends_runners_of_other_dead_parents_only() {
    let d = dir();
    let backend = script(READY, &d);
    let old = backend
        .spawn(request("crashed-parent", true, Duration::from_secs(5)))
        .await
        .unwrap();
    let live = backend
        .spawn(request("live-parent", true, Duration::from_secs(5)))
        .await
        .unwrap();
    // A fresh backend (as after a restart) sees only the pid files.
    let fresh = script(READY, &d);
    let scope = ReapScope {
        app: "lp-test".into(),
        live_parent: "live-parent".into(),
    };
    assert_eq!(fresh.reap(&scope).await.unwrap(), 1);
    let old_pid: u32 = old.backend_id.parse().unwrap();
    assert!(wait_dead(old_pid, Duration::from_secs(5)).await);
    assert!(
        alive(live.backend_id.parse().unwrap()),
        "the live parent's runner is kept"
    );
    assert_eq!(fresh.reap(&scope).await.unwrap(), 0, "nothing left to reap");
    backend.terminate(&old).await.unwrap();
    backend.terminate(&live).await.unwrap();
}

#[tokio::test]
async fn reap_never_signals_a_reused_pid() {
    let d = dir();
    let backend = script(READY, &d);
    let h = backend
        .spawn(request("crashed-parent", true, Duration::from_secs(5)))
        .await
        .unwrap();
    // Rewrite the pid file to point at a process that is not a runner: this test's own pid.
    let app_dir = backend.app_dir("lp-test");
    let file = std::fs::read_dir(&app_dir)
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let mut rec: serde_json::Value = serde_json::from_slice(&std::fs::read(&file).unwrap()).unwrap();
    rec["pid"] = std::process::id().into();
    std::fs::write(&file, serde_json::to_vec(&rec).unwrap()).unwrap();
    let fresh = script(READY, &d);
    let scope = ReapScope {
        app: "lp-test".into(),
        live_parent: "other".into(),
    };
    assert_eq!(fresh.reap(&scope).await.unwrap(), 0);
    backend.terminate(&h).await.unwrap();
}

#[tokio::test]
async fn dropping_the_backend_kills_its_children() {
    let d = dir();
    let backend = script(READY, &d);
    let h = backend
        .spawn(request("p1", true, Duration::from_secs(5)))
        .await
        .unwrap();
    let pid: u32 = h.backend_id.parse().unwrap();
    drop(backend);
    assert!(wait_dead(pid, Duration::from_secs(5)).await);
}
