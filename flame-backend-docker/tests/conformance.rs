//! The backend conformance behaviours (DESIGN.md §6) against a real dockerd: spawn → ping →
//! invoke → terminate; a boot timeout leaves nothing; reap finds leftovers; terminate twice is
//! fine; engine errors are typed.
#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use flame_core::{Backend, ErrorCode, ReapScope, RunnerState, Transport};
use std::time::{Duration, Instant};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spawn_ping_invoke_terminate() {
    if !docker_available() {
        return;
    }
    let app = unique_app("lifecycle");
    let _cleanup = Cleanup::new(&app);
    let backend = backend_builder().build().unwrap();
    let request = spawn_request(&app, "parent-1", Duration::from_secs(30));
    let runner_id = request.runner_id.clone();
    let prober = request.prober.clone();

    let handle = backend.spawn(request).await.unwrap();
    assert_eq!(handle.runner_id, runner_id);
    assert!(
        handle.endpoint.url.starts_with("http://127.0.0.1:"),
        "{}",
        handle.endpoint.url
    );
    assert_eq!(app_containers(&app).await, vec![handle.backend_id.clone()]);
    assert_eq!(backend.status(&handle).await.unwrap(), RunnerState::Running);

    let status = prober.ping(&handle.endpoint).await.unwrap();
    assert!(status.ok);
    let sum: i64 = call(&handle.endpoint, "math", "add", &(2i64, 3i64))
        .await
        .unwrap();
    assert_eq!(sum, 5);

    backend.terminate(&handle).await.unwrap();
    assert_eq!(backend.status(&handle).await.unwrap(), RunnerState::Stopped);
    assert!(
        app_containers(&app).await.is_empty(),
        "terminate left a container"
    );
    assert!(
        prober.ping(&handle.endpoint).await.is_err(),
        "the runner still answers"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn boot_timeout_leaves_nothing() {
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
    let err = backend
        .spawn(spawn_request(&app, "parent-1", boot_timeout))
        .await
        .unwrap_err();
    let took = started.elapsed();
    assert_eq!(err.code(), ErrorCode::SpawnTimeout, "{err}");
    assert!(err.is_retryable());
    assert!(took >= boot_timeout, "gave up early: {took:?}");
    assert!(
        took < boot_timeout + Duration::from_secs(15),
        "gave up late: {took:?}"
    );
    assert!(
        app_containers(&app).await.is_empty(),
        "a timed-out spawn left its container"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reap_removes_runners_of_a_crashed_parent_only() {
    if !docker_available() {
        return;
    }
    let app = unique_app("reap");
    let _cleanup = Cleanup::new(&app);
    let backend = backend_builder().build().unwrap();
    // A parent that crashed left two runners; the live parent has one.
    let boot = Duration::from_secs(30);
    let (a, b, live) = tokio::join!(
        backend.spawn(spawn_request(&app, "crashed-parent", boot)),
        backend.spawn(spawn_request(&app, "crashed-parent", boot)),
        backend.spawn(spawn_request(&app, "live-parent", boot)),
    );
    let (a, b, live) = (a.unwrap(), b.unwrap(), live.unwrap());
    // Another app's runner is never touched.
    let other_app = unique_app("reap-other");
    let _cleanup_other = Cleanup::new(&other_app);
    let other = backend
        .spawn(spawn_request(&other_app, "crashed-parent", boot))
        .await
        .unwrap();

    let scope = ReapScope {
        app: app.clone(),
        live_parent: "live-parent".into(),
    };
    assert_eq!(backend.reap(&scope).await.unwrap(), 2);
    assert_eq!(backend.status(&a).await.unwrap(), RunnerState::Stopped);
    assert_eq!(backend.status(&b).await.unwrap(), RunnerState::Stopped);
    assert_eq!(backend.status(&live).await.unwrap(), RunnerState::Running);
    assert_eq!(backend.status(&other).await.unwrap(), RunnerState::Running);
    assert_eq!(app_containers(&app).await, vec![live.backend_id.clone()]);
    assert_eq!(backend.reap(&scope).await.unwrap(), 0, "reap is repeatable");

    backend.terminate(&live).await.unwrap();
    backend.terminate(&other).await.unwrap();
    assert!(app_containers(&app).await.is_empty());
    assert!(app_containers(&other_app).await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn terminate_twice_and_unknown_runners_are_fine() {
    if !docker_available() {
        return;
    }
    let app = unique_app("terminate-twice");
    let _cleanup = Cleanup::new(&app);
    let backend = backend_builder().build().unwrap();
    let handle = backend
        .spawn(spawn_request(&app, "parent-1", Duration::from_secs(30)))
        .await
        .unwrap();
    let (first, second) = tokio::join!(backend.terminate(&handle), backend.terminate(&handle));
    first.unwrap();
    second.unwrap();
    backend.terminate(&handle).await.unwrap();
    let mut unknown = handle.clone();
    unknown.backend_id = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef".into();
    backend.terminate(&unknown).await.unwrap();
    assert_eq!(backend.status(&unknown).await.unwrap(), RunnerState::Stopped);
    assert!(app_containers(&app).await.is_empty());
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
    let err = missing
        .spawn(spawn_request(&app, "parent-1", Duration::from_secs(10)))
        .await
        .unwrap_err();
    assert_eq!(err.code(), ErrorCode::Backend, "{err}");
    assert!(!err.is_retryable(), "{err}");
    assert!(err.message().contains("No such image"), "{err}");
    assert_eq!(err.details().unwrap()["status"], 404);

    // Same runner id twice: dockerd's 409 name conflict, not retryable, first runner intact.
    let backend = backend_builder().build().unwrap();
    let request = spawn_request(&app, "parent-1", Duration::from_secs(30));
    let handle = backend.spawn(request.clone()).await.unwrap();
    let err = backend.spawn(request).await.unwrap_err();
    assert_eq!(err.code(), ErrorCode::Backend, "{err}");
    assert!(!err.is_retryable(), "{err}");
    assert!(err.message().contains("already in use"), "{err}");
    assert_eq!(backend.status(&handle).await.unwrap(), RunnerState::Running);
    backend.terminate(&handle).await.unwrap();
    assert!(app_containers(&app).await.is_empty());
}
