//! LocalProcess with real runner processes (the `interop` example binary) over signed HTTP:
//! the backend conformance suite, a runner killed mid-call, the parent-death watchdog, and a
//! runner that outlives 30 s of parent idleness (DESIGN.md §4's PDEATHSIG thread note).
#![allow(clippy::unwrap_used)]
#![cfg(target_os = "linux")]

mod local_process_common;

use flame::raw::Transport;
use flame::{CallOptions, Flame, LocalProcess, Method, Mode, PoolConfig, Registry};
use flame_core::testkit::conformance::{self, Subject};
use flame_http::HttpTransport;
use local_process_common::*;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

const WHOAMI: Method<(), serde_json::Value> = Method::new("utils", "whoami");
const SLEEP: Method<u64, u64> = Method::new("utils", "sleep");

struct TempDir(std::path::PathBuf);
impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
fn temp_dir() -> TempDir {
    let d = std::env::temp_dir().join(format!("flame-lp-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&d).unwrap();
    TempDir(d)
}

fn interop(state: &TempDir) -> LocalProcess {
    LocalProcess::command(example_bin("interop"), Vec::<String>::new())
        .state_dir(&state.0)
        .grace(Duration::from_secs(5))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conformance_suite_passes_for_local_process() {
    let state = temp_dir();
    let app = format!("conformance-{}", uuid::Uuid::new_v4().simple());
    let _cleanup = KillByEnv("FLAME_POOL".into(), "conformance".into());
    let a = app.clone();
    let subject = Subject::new(
        Arc::new(interop(&state)),
        Arc::new(HttpTransport::new()),
        move |parent_id: &str| conformance::default_request(&a, parent_id),
    )
    .boot_timeout(Duration::from_secs(30))
    .leftovers(|req| {
        let id = req.runner_id.clone();
        Box::pin(async move { pids_with_env("FLAME_RUNNER_ID", &id).len() })
    });
    conformance::run_all(&subject).await;
}

#[tokio::test]
async fn engine_errors_are_typed_for_local_process() {
    let broken = LocalProcess::command("/nonexistent/flame-runner", Vec::<String>::new());
    let req = conformance::default_request("conformance", "p");
    conformance::engine_errors_are_typed(&broken, req, &HttpTransport::new()).await;
}

async fn parent(state: &TempDir, pool: PoolConfig) -> Flame {
    Flame::builder(Registry::new())
        .app(format!("lp-test-{}", uuid::Uuid::new_v4().simple()))
        .transport(Arc::new(HttpTransport::new()))
        .mode(Mode::Parent)
        .backend(interop(state))
        .pool("default", pool)
        .handle_signals(false)
        .start()
        .await
        .unwrap()
}

async fn whoami(flame: &Flame) -> u32 {
    let me = flame.call(WHOAMI, ()).await.unwrap();
    me["pid"].as_u64().unwrap() as u32
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_runner_killed_mid_call_fails_the_call_retryable_and_is_replaced() {
    let state = temp_dir();
    let flame = parent(
        &state,
        PoolConfig::default()
            .min(1)
            .max(1)
            .health_interval(Duration::from_millis(500)),
    )
    .await;
    let _cleanup = KillByEnv("FLAME_PARENT_ID".into(), flame.parent_id().into());
    let victim = whoami(&flame).await;
    let f = flame.clone();
    let call = tokio::spawn(async move {
        f.call_with(SLEEP, 20_000, CallOptions::new().timeout(Duration::from_secs(60)))
            .await
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let killed_at = Instant::now();
    signal(victim, "KILL");
    let err = tokio::time::timeout(Duration::from_secs(10), call)
        .await
        .expect("the call fails soon after its runner dies")
        .unwrap()
        .unwrap_err();
    assert!(err.is_retryable(), "{err}");
    assert!(killed_at.elapsed() < Duration::from_secs(5));
    // The pool replaces it (min 1) and calls work again.
    let mut replacement = 0;
    for _ in 0..100 {
        match flame.call(WHOAMI, ()).await {
            Ok(me) => {
                replacement = me["pid"].as_u64().unwrap() as u32;
                break;
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
    assert!(replacement != 0 && replacement != victim);
    flame.shutdown().await.unwrap();
    assert!(
        wait_until(Duration::from_secs(5), || pids_with_env(
            "FLAME_PARENT_ID",
            flame.parent_id()
        )
        .is_empty()),
        "no runner left after shutdown"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_leaves_no_runner_process() {
    let state = temp_dir();
    let flame = parent(&state, PoolConfig::default().max(3).max_concurrency(1)).await;
    let _cleanup = KillByEnv("FLAME_PARENT_ID".into(), flame.parent_id().into());
    let calls: Vec<_> = (0..3)
        .map(|_| {
            let f = flame.clone();
            tokio::spawn(async move { f.call(SLEEP, 300).await })
        })
        .collect();
    for c in calls {
        assert_eq!(c.await.unwrap().unwrap(), 300);
    }
    let runners = pids_with_env("FLAME_PARENT_ID", flame.parent_id());
    assert_eq!(runners.len(), 3, "one runner per concurrent call");
    flame.shutdown().await.unwrap();
    for pid in runners {
        assert!(!alive(pid), "runner {pid} left after shutdown");
    }
}

/// DESIGN.md §4: PR_SET_PDEATHSIG fires when the *thread* that forked the child exits; tokio's
/// blocking threads retire after 10 s idle. Runners must outlive 30 s of parent idleness.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_runner_outlives_30_s_of_parent_idleness() {
    let state = temp_dir();
    let flame = parent(&state, PoolConfig::default().min(1).max(1)).await;
    let _cleanup = KillByEnv("FLAME_PARENT_ID".into(), flame.parent_id().into());
    let pid = whoami(&flame).await;
    // Make blocking-pool threads exist (and then retire while we are idle).
    for _ in 0..4 {
        tokio::task::spawn_blocking(|| std::thread::sleep(Duration::from_millis(10)))
            .await
            .unwrap();
    }
    tokio::time::sleep(Duration::from_secs(32)).await;
    assert!(alive(pid), "the runner died while its parent was idle");
    assert_eq!(whoami(&flame).await, pid, "the same runner still serves");
    flame.shutdown().await.unwrap();
    assert!(!alive(pid));
}

/// Starts the interop binary as a runner by hand, with `env`, and reads its URL.
fn runner_by_hand(env: &[(&str, &str)]) -> (ChildGuard, String) {
    let mut child = Command::new(example_bin("interop"))
        .env("FLAME_MODE", "runner")
        .env("FLAME_LISTEN", "127.0.0.1:0")
        .env_remove("FLAME_PARENT_PID")
        .envs(env.iter().copied())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let guard = ChildGuard(child);
    let mut line = String::new();
    BufReader::new(stdout).read_line(&mut line).unwrap();
    let url = line
        .trim()
        .strip_prefix("FLAME_READY ")
        .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
        .to_owned();
    (guard, url)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_runner_whose_parent_goes_silent_exits_on_its_own() {
    let (mut runner, url) = runner_by_hand(&[
        ("FLAME_SECRET", "s3cret"),
        ("FLAME_PARENT_ID", "ghost-parent"),
        ("FLAME_PARENT_TIMEOUT", "1500"),
    ]);
    // Authenticated pings keep it alive past the timeout...
    let transport = HttpTransport::new();
    let endpoint = flame::raw::Endpoint::new(url, "r").with_secret(Some(flame::Secret::new("s3cret")));
    for _ in 0..8 {
        transport.ping(&endpoint).await.unwrap();
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert!(
        runner.0.try_wait().unwrap().is_none(),
        "alive while the parent pings"
    );
    // ...an unauthenticated ping does not count as parent contact...
    let stranger = flame::raw::Endpoint::new(endpoint.url.clone(), "r");
    let silent_since = Instant::now();
    let _ = transport.ping(&stranger).await;
    // ...and without contact it drains and exits within the timeout + a little.
    let exited = wait_until(Duration::from_secs(6), || runner.0.try_wait().unwrap().is_some());
    assert!(
        exited,
        "runner still alive {:?} after its parent went silent",
        silent_since.elapsed()
    );
    assert!(silent_since.elapsed() >= Duration::from_millis(500));
    assert!(
        runner.0.wait().unwrap().success(),
        "it drained and exited cleanly"
    );
}

#[tokio::test]
async fn a_runner_started_by_hand_has_no_watchdog() {
    let (mut runner, _url) = runner_by_hand(&[("FLAME_SECRET", "s"), ("FLAME_PARENT_TIMEOUT", "500")]);
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(
        runner.0.try_wait().unwrap().is_none(),
        "no FLAME_PARENT_ID: no watchdog"
    );
}
