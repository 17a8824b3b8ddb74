//! The backend conformance suite of DESIGN.md §6 (`flame_core::testkit::conformance`, shared by
//! every backend) against a real dockerd, plus Docker-flavoured versions of its checks: a
//! runner that never prints `FLAME_READY`, reap across apps, dockerd's own refusals.
#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use flame_core::testkit::conformance::{self, Subject};
use flame_core::{Backend, ErrorCode, ReapScope, RunnerState, SpawnRequest};
use flame_http::HttpTransport;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Containers (any state) of one runner, by its `flame.runner` label.
async fn containers_of(req: &SpawnRequest) -> usize {
    let out = tokio::process::Command::new("docker")
        .args(["ps", "-aq", "--filter"])
        .arg(format!("label=flame.runner={}", req.runner_id))
        .output()
        .await
        .unwrap();
    String::from_utf8_lossy(&out.stdout).split_whitespace().count()
}

fn subject(app: &str, backend: flame_backend_docker::DockerBackend) -> Subject {
    let app = app.to_owned();
    Subject::new(
        Arc::new(backend),
        Arc::new(HttpTransport::new()),
        move |parent_id: &str| conformance::default_request(&app, parent_id),
    )
    .leftovers(|req| {
        let req = req.clone();
        Box::pin(async move { containers_of(&req).await })
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shared_conformance_suite() {
    if !docker_available() {
        return;
    }
    let app = unique_app("conformance");
    let _cleanup = Cleanup::new(&app);
    conformance::run_all(&subject(&app, backend_builder().build().unwrap())).await;
    assert!(app_containers(&app).await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shared_engine_errors_are_typed() {
    if !docker_available() {
        return;
    }
    let app = unique_app("conformance-errors");
    let _cleanup = Cleanup::new(&app);
    let prober: Arc<dyn flame_core::Transport> = Arc::new(HttpTransport::new());
    let missing_image = backend_builder()
        .image("flame-no-such-image:does-not-exist")
        .build()
        .unwrap();
    let closed_port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let no_engine = backend_builder()
        .docker_host(format!("tcp://127.0.0.1:{closed_port}"))
        .build()
        .unwrap();
    for backend in [missing_image, no_engine] {
        let mut request = conformance::default_request(&app, "p");
        request.boot_timeout = Duration::from_secs(10);
        conformance::engine_errors_are_typed(&backend, request, &*prober).await;
    }
    assert!(app_containers(&app).await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runner_that_never_announces_ready_times_out_and_leaves_nothing() {
    if !docker_available() {
        return;
    }
    let app = unique_app("boot-timeout");
    let _cleanup = Cleanup::new(&app);
    // The same image, with a command that never announces FLAME_READY.
    let backend = backend_builder()
        .command(["/docker_runner", "never-ready"])
        .build()
        .unwrap();
    let boot_timeout = Duration::from_secs(3);
    let started = Instant::now();
    let err = start(&backend, spawn_request(&app, "parent-1", boot_timeout))
        .await
        .unwrap_err();
    let took = started.elapsed();
    assert_eq!(err.code(), ErrorCode::SpawnTimeout, "{err}");
    assert!(err.is_retryable());
    // Spawn gives up a little before the boot deadline, to remove its container in time.
    assert!(took >= boot_timeout * 3 / 4, "gave up early: {took:?}");
    assert!(
        took < boot_timeout + Duration::from_secs(15),
        "gave up late: {took:?}"
    );
    // The probe dropped the spawn at the deadline: its guard removes the container.
    assert!(
        wait_no_containers(&app, Duration::from_secs(15)).await,
        "a timed-out spawn left its container"
    );
}

/// Keeps a runner's parent "in touch" (signed pings every 200 ms, as a live parent's pool
/// does) until dropped.
struct KeepInTouch(tokio::task::JoinHandle<()>);

impl KeepInTouch {
    fn start(endpoint: flame_core::Endpoint) -> KeepInTouch {
        KeepInTouch(tokio::spawn(async move {
            let transport = HttpTransport::new();
            loop {
                let _ = flame_core::Transport::ping(&transport, &endpoint).await;
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }))
    }
}

impl Drop for KeepInTouch {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// The reap rule on dockerd: a crashed parent's runners (silent past the window) are
/// removed; the reaping parent's own runner, a runner of another *live* parent of the same app
/// (a replica: it keeps pinging), and another app's runner are all left running.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reap_removes_runners_of_a_crashed_parent_only() {
    if !docker_available() {
        return;
    }
    let app = unique_app("reap");
    let _cleanup = Cleanup::new(&app);
    let backend = backend_builder().build().unwrap();
    // A parent that crashed left two runners; the live parent has one, and so has a replica.
    // Their own failsafe windows are long (60 s): only reap can end the crashed one's.
    let boot = Duration::from_secs(30);
    let (a, b, live, replica) = tokio::join!(
        start(&backend, spawn_request_with(&app, "crashed-parent", boot, 60_000)),
        start(&backend, spawn_request_with(&app, "crashed-parent", boot, 60_000)),
        start(&backend, spawn_request_with(&app, "live-parent", boot, 60_000)),
        start(&backend, spawn_request_with(&app, "replica-parent", boot, 60_000)),
    );
    let (a, b, live, replica) = (a.unwrap(), b.unwrap(), live.unwrap(), replica.unwrap());
    let _replica_alive = KeepInTouch::start(replica.endpoint.clone());
    // Another app's runner is never touched.
    let other_app = unique_app("reap-other");
    let _cleanup_other = Cleanup::new(&other_app);
    let other = start(
        &backend,
        spawn_request_with(&other_app, "crashed-parent", boot, 60_000),
    )
    .await
    .unwrap();

    let window = Duration::from_secs(2);
    let scope = ReapScope::new(&app, "live-parent", Arc::new(HttpTransport::new()))
        .windows(window, Duration::from_secs(20));
    // The crashed parent's silence passes the window.
    tokio::time::sleep(window + Duration::from_millis(500)).await;
    assert_eq!(backend.reap(&scope).await.unwrap(), 2);
    assert_eq!(backend.status(&a).await.unwrap(), RunnerState::Stopped);
    assert_eq!(backend.status(&b).await.unwrap(), RunnerState::Stopped);
    assert_eq!(backend.status(&live).await.unwrap(), RunnerState::Running);
    assert_eq!(backend.status(&replica).await.unwrap(), RunnerState::Running);
    assert_eq!(backend.status(&other).await.unwrap(), RunnerState::Running);
    let sum: i64 = call(&replica.endpoint, "math", "add", &(2i64, 3i64))
        .await
        .unwrap();
    assert_eq!(sum, 5, "the replica's runner still serves");
    let mut left = app_containers(&app).await;
    left.sort();
    let mut expected = vec![live.backend_id.clone(), replica.backend_id.clone()];
    expected.sort();
    assert_eq!(left, expected);
    assert_eq!(backend.reap(&scope).await.unwrap(), 0, "reap is repeatable");

    backend.terminate(&live).await.unwrap();
    backend.terminate(&replica).await.unwrap();
    backend.terminate(&other).await.unwrap();
    assert!(app_containers(&app).await.is_empty());
    assert!(app_containers(&other_app).await.is_empty());
}

/// What no runner answers for, reap judges by the engine's word: an exited container of
/// another parent is removed at once; one created but never started is left alone while a
/// live parent may still be starting it, and removed once older than the unreachable window.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reap_removes_exited_and_long_unstarted_containers() {
    if !docker_available() {
        return;
    }
    let app = unique_app("reap-remains");
    let _cleanup = Cleanup::new(&app);
    let image = runner_image();
    let labels = |runner: &str| {
        [
            format!("--label=flame.app={app}"),
            "--label=flame.parent=gone-parent".to_owned(),
            format!("--label=flame.runner={runner}"),
        ]
    };
    let docker = |args: Vec<String>| {
        let out = std::process::Command::new("docker").args(&args).output().unwrap();
        assert!(
            out.status.success(),
            "docker {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    };
    // A runner that exited (bad listen address) without AutoRemove.
    let mut args: Vec<String> = [
        "run",
        "-d",
        "--network=host",
        "-e=FLAME_MODE=runner",
        "-e=FLAME_LISTEN=bad",
    ]
    .map(str::to_owned)
    .to_vec();
    args.extend(labels("exited"));
    args.push(image.clone());
    let exited = docker(args);
    // A container created and never started (its parent died in between).
    let mut args = vec!["create".to_owned()];
    args.extend(labels("unstarted"));
    args.push(image.clone());
    let unstarted = docker(args);
    let until = Instant::now() + Duration::from_secs(30);
    while !docker_state(&exited).is_some_and(|s| s == "exited") {
        assert!(
            Instant::now() < until,
            "the runner did not exit: {:?}",
            docker_state(&exited)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let backend = backend_builder().build().unwrap();
    let prober = Arc::new(HttpTransport::new());
    // Default windows (50 s unreachable): the exited one goes, the young unstarted one stays.
    let scope = ReapScope::new(&app, "live-parent", prober.clone());
    assert_eq!(backend.reap(&scope).await.unwrap(), 1);
    assert_eq!(docker_state(&exited), None);
    assert_eq!(docker_state(&unstarted).as_deref(), Some("created"));
    // Past a (short) unreachable window it was provably abandoned.
    let scope = scope.windows(Duration::from_secs(1), Duration::from_secs(1));
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(backend.reap(&scope).await.unwrap(), 1);
    assert_eq!(docker_state(&unstarted), None);
    assert!(app_containers(&app).await.is_empty());
}

fn docker_state(id: &str) -> Option<String> {
    let out = std::process::Command::new("docker")
        .args(["inspect", "--format", "{{.State.Status}}", id])
        .output()
        .unwrap();
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn engine_errors_are_typed_missing_image_and_name_conflict() {
    if !docker_available() {
        return;
    }
    let app = unique_app("engine-errors");
    let _cleanup = Cleanup::new(&app);

    // Image missing, never pulled: dockerd's 404, not retryable.
    let missing = backend_builder()
        .image("flame-no-such-image:does-not-exist")
        .build()
        .unwrap();
    let err = start(&missing, spawn_request(&app, "parent-1", Duration::from_secs(10)))
        .await
        .unwrap_err();
    assert_eq!(err.code(), ErrorCode::Backend, "{err}");
    assert!(!err.is_retryable(), "{err}");
    assert!(err.message().contains("No such image"), "{err}");
    assert_eq!(err.details().unwrap()["status"], 404);

    // Same runner id twice: dockerd's 409 name conflict, not retryable, first runner intact.
    let backend = backend_builder().build().unwrap();
    let request = spawn_request(&app, "parent-1", Duration::from_secs(30));
    let handle = start(&backend, request.clone()).await.unwrap();
    let err = start(&backend, request).await.unwrap_err();
    assert_eq!(err.code(), ErrorCode::Backend, "{err}");
    assert!(!err.is_retryable(), "{err}");
    assert!(err.message().contains("already in use"), "{err}");
    assert_eq!(backend.status(&handle).await.unwrap(), RunnerState::Running);
    backend.terminate(&handle).await.unwrap();
    assert!(app_containers(&app).await.is_empty());
}
