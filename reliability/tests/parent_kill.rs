//! Scenario 3 — the parent is killed with `kill -9` while its LocalProcess runners live: every
//! runner is gone within the failsafe window (`FLAME_PARENT_TIMEOUT=2000`), and a restarted
//! parent's `reap` finds nothing left — or ends a runner that survived.
//!
//! Related tests elsewhere: the kill -9 / SIGSTOP / SIGTERM of a parent of `interop` runners
//! (`examples/tests/parent_death.rs`; this file adds the restarted parent's `reap`), the Docker
//! variant
//! (`flame-backend-docker/tests/docker.rs::parent_killed_leaves_no_container_after_the_failsafe_window`),
//! a runner whose parent goes silent without dying
//! (`examples/tests/local_process.rs::a_runner_whose_parent_goes_silent_exits_on_its_own`).
#![allow(clippy::unwrap_used)]
#![cfg(target_os = "linux")]

mod common;

use common::*;
use flame_core::backend::local_process::PidRecord;
use flame_core::{Backend, LocalProcess, ReapScope};
use flame_http::HttpTransport;
use flame_reliability::procfs::{
    alive, pids_with_env, start_and_wait_for_line, wait_until, KillByEnv, TempDir,
};
use std::sync::Arc;
use std::time::{Duration, Instant};

const WINDOW: Duration = Duration::from_millis(2000);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parent_kill_9_leaves_no_runner_after_the_failsafe_window_and_reap_cleans_up() {
    let state = TempDir::new("rel-parent-state").unwrap();
    let app = format!("rel-pk-{}", uuid::Uuid::new_v4().simple());
    let state_dir = state.path().to_string_lossy().into_owned();
    let (mut parent, parent_id) = start_and_wait_for_line(
        rel_runner(),
        &[
            ("REL_ROLE", "parent"),
            ("REL_APP", &app),
            ("REL_STATE_DIR", &state_dir),
            ("REL_RUNNERS", "3"),
            ("FLAME_PARENT_TIMEOUT", "2000"),
            ("RUST_LOG", "off"),
        ],
        "PARENT_READY ",
        Duration::from_secs(60),
    )
    .unwrap();
    let _cleanup = KillByEnv::new("FLAME_PARENT_ID", parent_id.clone());
    let runners = pids_with_env("FLAME_PARENT_ID", &parent_id);
    assert_eq!(runners.len(), 3, "three runners serve");
    let backend = LocalProcess::command(rel_runner(), Vec::<String>::new()).state_dir(state.path());
    assert_eq!(backend.records(&app).len(), 3, "each runner has a pid file");

    parent.0.kill().unwrap(); // SIGKILL
    let killed = Instant::now();
    parent.0.wait().unwrap();
    let gone = wait_until(WINDOW + Duration::from_secs(3), || {
        runners.iter().all(|p| !alive(*p))
    });
    let took = killed.elapsed();
    assert!(
        gone.is_some(),
        "runners still alive {took:?} after the parent died: {:?}",
        runners.iter().filter(|p| alive(**p)).collect::<Vec<_>>()
    );
    assert!(
        took <= WINDOW + Duration::from_millis(1500),
        "runners took {took:?} to go"
    );

    // A restarted parent reaps: nothing is left to end, and the stale pid files go.
    let ended = backend
        .reap(&ReapScope::new(
            app.clone(),
            "restarted-parent",
            Arc::new(HttpTransport::new()),
        ))
        .await
        .unwrap();
    assert_eq!(ended, 0, "a runner survived its parent");
    assert!(backend.records(&app).is_empty(), "stale pid files left");
    eprintln!("parent kill -9: 3 runners gone {took:?} after the parent (window {WINDOW:?}); reap found {ended} left");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reap_ends_a_runner_that_outlived_its_dead_parent() {
    // A runner started without the parent-death checks (as if its watchdog had failed), with
    // the pid file a dead parent would have left.
    let state = TempDir::new("rel-reap-state").unwrap();
    let app = format!("rel-reap-{}", uuid::Uuid::new_v4().simple());
    let runner_id = format!("default-{}", uuid::Uuid::new_v4().simple());
    let (mut stray, _url) = start_and_wait_for_line(
        rel_runner(),
        &[
            ("FLAME_MODE", "runner"),
            ("FLAME_SECRET", SECRET),
            ("FLAME_LISTEN", "127.0.0.1:0"),
            ("FLAME_RUNNER_ID", &runner_id),
            ("RUST_LOG", "off"),
        ],
        "FLAME_READY ",
        Duration::from_secs(30),
    )
    .unwrap();
    let backend = LocalProcess::command(rel_runner(), Vec::<String>::new())
        .state_dir(state.path())
        .grace(Duration::from_secs(3));
    let dead_parent = {
        let mut c = std::process::Command::new("true").spawn().unwrap();
        let pid = c.id();
        c.wait().unwrap();
        pid
    };
    let record = PidRecord {
        pid: stray.pid(),
        parent_pid: dead_parent,
        parent_id: "crashed-parent".into(),
        runner_id: runner_id.clone(),
        pool: "default".into(),
        url: None,
    };
    std::fs::create_dir_all(backend.app_dir(&app)).unwrap();
    std::fs::write(
        backend.app_dir(&app).join(format!("{runner_id}.json")),
        serde_json::to_vec(&record).unwrap(),
    )
    .unwrap();
    let ended = backend
        .reap(&ReapScope::new(
            app.clone(),
            "restarted-parent",
            Arc::new(HttpTransport::new()),
        ))
        .await
        .unwrap();
    assert_eq!(ended, 1);
    let exited = wait_until(Duration::from_secs(5), || stray.0.try_wait().unwrap().is_some());
    assert!(exited.is_some(), "reap did not end the stray runner");
    assert!(backend.records(&app).is_empty());
}
