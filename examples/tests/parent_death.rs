//! No orphans: a parent that dies (`kill -9`), freezes (`SIGSTOP`) or is told to stop
//! (`SIGTERM`) leaves no runner behind. The parent is this test binary run again as a child
//! process in "parent role" (the ignored test `parent_role`), with LocalProcess runners of the
//! `interop` example.
#![allow(clippy::unwrap_used)]
#![cfg(target_os = "linux")]

mod local_process_common;

use flame::raw::Pool;
use flame::{LocalProcess, Method, Mode, PoolConfig, Registry};
use local_process_common::*;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

const ROLE: &str = "FLAME_TEST_PARENT_ROLE";
const SLEEP: Method<u64, u64> = Method::new("utils", "sleep");
/// The runners' parent timeout in these tests.
const PARENT_TIMEOUT: Duration = Duration::from_millis(2000);

/// The parent: starts 2 runners, prints `PARENT_READY <parent id>`, then idles until killed.
/// Ctrl-C / SIGTERM are handled by flame (drain, end runners, exit 143).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "run as a child process by the other tests of this file"]
async fn parent_role() {
    if std::env::var(ROLE).is_err() {
        return;
    }
    let flame = flame::builder(Registry::new())
        .app("parent-death-test")
        .mode(Mode::Parent)
        .backend(LocalProcess::command(
            example_bin("interop"),
            Vec::<String>::new(),
        ))
        .pool("default", PoolConfig::default().min(2).max(2).max_concurrency(1))
        .from_env()
        .unwrap()
        .start()
        .await
        .unwrap();
    let pool: &Arc<dyn Pool> = flame.pool("default").unwrap();
    while pool.stats().runners < 2 {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(flame.call(SLEEP, 1).await.unwrap(), 1);
    println!("PARENT_READY {}", flame.parent_id());
    // Bounded, so a failing test never waits on it for long.
    tokio::time::sleep(Duration::from_secs(120)).await;
}

struct Parent {
    guard: ChildGuard,
    parent_id: String,
    runners: Vec<u32>,
    _cleanup: KillByEnv,
}

fn start_parent() -> Parent {
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "parent_role",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(ROLE, "1")
        .env("FLAME_PARENT_TIMEOUT", PARENT_TIMEOUT.as_millis().to_string())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let guard = ChildGuard(child);
    let mut parent_id = None;
    for line in BufReader::new(stdout).lines() {
        let line = line.unwrap();
        // libtest prints "test parent_role ... " before it, on the same line.
        if let Some(id) = line.split("PARENT_READY ").nth(1) {
            parent_id = Some(id.trim().to_owned());
            break;
        }
    }
    let parent_id = parent_id.expect("the parent role never got ready");
    let cleanup = KillByEnv("FLAME_PARENT_ID".into(), parent_id.clone());
    let runners = pids_with_env("FLAME_PARENT_ID", &parent_id);
    assert_eq!(runners.len(), 2, "two runners up: {runners:?}");
    Parent {
        guard,
        parent_id,
        runners,
        _cleanup: cleanup,
    }
}

fn runners_gone(p: &Parent) -> bool {
    p.runners.iter().all(|pid| !alive(*pid))
}

#[test]
fn runners_exit_when_the_parent_is_killed() {
    let mut p = start_parent();
    let killed = Instant::now();
    signal(p.guard.0.id(), "KILL");
    let _ = p.guard.0.wait();
    assert!(
        wait_until(PARENT_TIMEOUT + Duration::from_secs(5), || runners_gone(&p)),
        "runners {:?} still alive {:?} after the parent was killed",
        p.runners,
        killed.elapsed()
    );
    assert!(pids_with_env("FLAME_PARENT_ID", &p.parent_id).is_empty());
}

#[test]
fn runners_exit_when_the_parent_freezes() {
    // A frozen parent is not dead: no parent-death signal, same parent pid. Only the watchdog
    // (no authenticated contact for FLAME_PARENT_TIMEOUT) ends the runners.
    let p = start_parent();
    let frozen = Instant::now();
    signal(p.guard.0.id(), "STOP");
    let gone = wait_until(PARENT_TIMEOUT + Duration::from_secs(5), || runners_gone(&p));
    let took = frozen.elapsed();
    signal(p.guard.0.id(), "CONT");
    assert!(
        gone,
        "runners {:?} still alive {took:?} after the parent froze",
        p.runners
    );
    assert!(
        took >= PARENT_TIMEOUT - Duration::from_millis(600),
        "runners left after {took:?}, before the parent timeout"
    );
}

#[test]
fn sigterm_on_the_parent_drains_ends_runners_and_exits() {
    let mut p = start_parent();
    signal(p.guard.0.id(), "TERM");
    let exited = wait_until(Duration::from_secs(15), || {
        matches!(p.guard.0.try_wait(), Ok(Some(_)))
    });
    assert!(exited, "the parent did not exit on SIGTERM");
    let status = p.guard.0.wait().unwrap();
    assert_eq!(status.code(), Some(143), "exit status after SIGTERM");
    // Ended by the parent's shutdown, not left to the watchdog.
    assert!(
        wait_until(Duration::from_secs(1), || runners_gone(&p)),
        "{:?}",
        p.runners
    );
}
