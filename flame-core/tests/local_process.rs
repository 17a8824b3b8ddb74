//! LocalProcess against real child processes (small shell scripts that print `FLAME_READY`),
//! without HTTP: the prober is a stand-in transport. The full path with real runners and
//! signed HTTP is in `examples/tests/local_process.rs`.
#![allow(clippy::unwrap_used)]
#![cfg(unix)]

use async_trait::async_trait;
use flame_core::backend::readiness::start_runner;
use flame_core::backend::LocalProcess;
use flame_core::pool::RunnerTemplate;
use flame_core::{
    Backend, Endpoint, Error, ErrorCode, Invocation, ReapScope, RunnerHandle, RunnerState, RunnerStatus,
    Secret, SpawnRequest, Transport,
};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Answers pings as told; never invoked.
struct Prober(AtomicBool);

#[async_trait]
impl Transport for Prober {
    async fn invoke(&self, _e: &Endpoint, _i: &Invocation) -> flame_core::Result<flame_core::Reply> {
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

fn request(parent: &str, boot: Duration) -> SpawnRequest {
    RunnerTemplate::new(
        "lp-test",
        parent,
        Secret::generate(),
        Arc::new(Prober(AtomicBool::new(true))),
    )
    .request("default", boot)
}

/// Starts a runner the way a pool does: LocalProcess places it, core's probe pings it through
/// a prober that answers (or not).
async fn start(backend: &LocalProcess, req: SpawnRequest, healthy: bool) -> flame_core::Result<RunnerHandle> {
    start_runner(backend, req, &Prober(AtomicBool::new(healthy))).await
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
    let req = request("p1", Duration::from_secs(10));
    let secret = req.secret.clone();
    let h = start(&backend, req, true).await.unwrap();
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
    let h = start(&backend, request("p1", Duration::from_secs(10)), true)
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
    let h = start(&backend, request("p1", Duration::from_secs(10)), true)
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
    let err = start(&backend, request("p1", Duration::from_millis(500)), true)
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
    let err = start(&backend, request("p1", Duration::from_millis(500)), false)
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
    let err = start(&backend, request("p1", Duration::from_secs(5)), true)
        .await
        .unwrap_err();
    assert_eq!(err.code(), ErrorCode::Backend);
    assert!(!err.is_retryable());
    assert!(err.message().contains("address in use"), "{err}");
}

#[tokio::test]
async fn a_runner_that_dies_after_announcing_itself_fails_at_once_with_its_exit_and_stderr() {
    // The probe asks the engine while pings fail: a dead runner is not waited for until the
    // boot timeout.
    let d = dir();
    let body = "echo FLAME_READY http://127.0.0.1:9; echo 'panic: config missing' >&2; exit 4";
    let backend = script(body, &d);
    let started = std::time::Instant::now();
    let err = start(&backend, request("p1", Duration::from_secs(20)), false)
        .await
        .unwrap_err();
    assert_eq!(err.code(), ErrorCode::Backend, "{err}");
    assert!(err.message().contains("exited before it was ready"), "{err}");
    assert!(err.message().contains("exit status: 4"), "{err}");
    assert!(err.message().contains("config missing"), "{err}");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(backend.live_children(), 0, "ended");
}

#[tokio::test]
async fn a_missing_program_is_a_backend_error() {
    let backend = LocalProcess::command("/nonexistent/flame-runner", Vec::<String>::new());
    let err = start(&backend, request("p1", Duration::from_secs(5)), true)
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
    let req = request("parent-7", Duration::from_secs(5));
    let id = req.runner_id.clone();
    let h = start(&backend, req, true).await.unwrap();
    let env = std::fs::read_to_string(&out).unwrap();
    assert_eq!(env.trim(), format!("runner {id} parent-7 {}", std::process::id()));
    backend.terminate(&h).await.unwrap();
}

/// Answers the reap rule's health probe per runner id: how long each runner's parent has
/// been silent.
struct Silence(Vec<(String, u64)>);

#[async_trait]
impl Transport for Silence {
    async fn invoke(&self, _e: &Endpoint, _i: &Invocation) -> flame_core::Result<flame_core::Reply> {
        Err(Error::transport("not used"))
    }
    async fn ping(&self, e: &Endpoint) -> flame_core::Result<RunnerStatus> {
        assert!(e.secret.is_none(), "reap probes without the secret");
        match self.0.iter().find(|(id, _)| *id == e.runner_id) {
            Some((_, ms)) => Ok(RunnerStatus {
                ok: true,
                parent_silent_ms: Some(*ms),
                ..RunnerStatus::default()
            }),
            None => Err(Error::not_delivered("connection refused")),
        }
    }
}

fn rewrite_record(backend: &LocalProcess, runner_id: &str, f: impl FnOnce(&mut serde_json::Value)) {
    let file = backend.app_dir("lp-test").join(format!("{runner_id}.json"));
    let mut rec: serde_json::Value = serde_json::from_slice(&std::fs::read(&file).unwrap()).unwrap();
    f(&mut rec);
    std::fs::write(&file, serde_json::to_vec(&rec).unwrap()).unwrap();
}

#[tokio::test]
async fn reap_ends_only_provably_orphaned_runners() {
    let d = dir();
    let backend = script(READY, &d);
    let spawn = |parent: &'static str| {
        let backend = backend.clone();
        async move {
            start(&backend, request(parent, Duration::from_secs(5)), true)
                .await
                .unwrap()
        }
    };
    // Parents in this very process (another flame handle): the runners' answers decide.
    let silent = spawn("crashed-parent").await;
    let in_touch = spawn("other-live-parent").await;
    let own = spawn("live-parent").await;
    // A parent in another process that still runs: spared without asking, even if it were
    // silent. A parent process that is gone: orphaned without asking.
    let replica = spawn("replica-parent").await;
    let orphan = spawn("dead-parent").await;
    let mut replica_parent = std::process::Command::new("sleep").arg("60").spawn().unwrap();
    rewrite_record(&backend, &replica.runner_id, |r| {
        r["parentPid"] = replica_parent.id().into()
    });
    let dead_parent = {
        let mut c = std::process::Command::new("true").spawn().unwrap();
        let pid = c.id();
        c.wait().unwrap();
        pid
    };
    rewrite_record(&backend, &orphan.runner_id, |r| {
        r["parentPid"] = dead_parent.into()
    });
    let answers = Silence(vec![
        (silent.runner_id.clone(), 25_000),
        (in_touch.runner_id.clone(), 300),
        (replica.runner_id.clone(), 60_000),
        (orphan.runner_id.clone(), 10),
    ]);
    // A fresh backend (as after a restart) sees only the pid files.
    let fresh = script(READY, &d);
    let scope = ReapScope::new("lp-test", "live-parent", Arc::new(answers))
        .windows(Duration::from_secs(20), Duration::from_secs(50));
    assert_eq!(fresh.reap(&scope).await.unwrap(), 2);
    for h in [&silent, &orphan] {
        assert!(wait_dead(h.backend_id.parse().unwrap(), Duration::from_secs(5)).await);
    }
    for h in [&in_touch, &own, &replica] {
        assert!(alive(h.backend_id.parse().unwrap()), "{} was reaped", h.runner_id);
    }
    assert_eq!(fresh.reap(&scope).await.unwrap(), 0, "nothing left to reap");
    for h in [&silent, &in_touch, &own, &replica, &orphan] {
        backend.terminate(h).await.unwrap();
    }
    let _ = replica_parent.kill();
    let _ = replica_parent.wait();
}

#[tokio::test]
async fn reap_never_signals_a_reused_pid() {
    let d = dir();
    let backend = script(READY, &d);
    let h = start(&backend, request("crashed-parent", Duration::from_secs(5)), true)
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
    let silent = Silence(vec![(h.runner_id.clone(), 60_000)]);
    let scope = ReapScope::new("lp-test", "other", Arc::new(silent));
    assert_eq!(fresh.reap(&scope).await.unwrap(), 0);
    backend.terminate(&h).await.unwrap();
}

#[tokio::test]
async fn dropping_the_backend_kills_its_children() {
    let d = dir();
    let backend = script(READY, &d);
    let h = start(&backend, request("p1", Duration::from_secs(5)), true)
        .await
        .unwrap();
    let pid: u32 = h.backend_id.parse().unwrap();
    drop(backend);
    assert!(wait_dead(pid, Duration::from_secs(5)).await);
}
