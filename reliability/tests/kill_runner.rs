//! Scenario 2 — `kill -9` a runner with 1000 calls in flight (pool of 4 real `rel_runner`
//! processes × 250): every caller gets a result or a retryable error before its deadline, and
//! the pool replaces the runner. With idempotency keys and retries on, every call completes,
//! and the runners' execution logs (which survive `kill -9`) show no key ran twice on one
//! runner.
#![allow(clippy::unwrap_used)]
#![cfg(target_os = "linux")]

mod common;

use common::*;
use flame_core::{CallOptions, PoolConfig};
use flame_reliability::methods::{read_logs, Record, RECORD};
use flame_reliability::procfs::{signal, wait_until_async, KillByEnv};
use std::collections::HashMap;
use std::time::{Duration, Instant};

const IN_FLIGHT: usize = 1000;

/// The two scenarios run one after the other: each holds 1000 calls on 4 runners.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn pool() -> PoolConfig {
    PoolConfig::default()
        .min(4)
        .max(4)
        .max_concurrency(250)
        .health_interval(Duration::from_secs(2))
}

async fn ready(p: &Parent) {
    assert!(
        wait_until_async(Duration::from_secs(60), || p.stats().runners == 4)
            .await
            .is_some(),
        "4 runners did not start: {:?}",
        p.stats()
    );
}

/// Waits until all `n` calls hold a slot, then a little more so their handlers run.
async fn all_in_flight(p: &Parent, n: usize) {
    assert!(
        wait_until_async(Duration::from_secs(30), || p.stats().in_flight == n)
            .await
            .is_some(),
        "calls did not all get a slot: {:?}",
        p.stats()
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
}

async fn no_runner_left(p: &Parent) {
    p.flame.shutdown().await.unwrap();
    let gone = wait_until_async(Duration::from_secs(15), || p.runner_pids().is_empty()).await;
    assert!(
        gone.is_some(),
        "runners left after shutdown: {:?}",
        p.runner_pids()
    );
}

async fn replaced(p: &Parent, victim: u32) {
    let back = wait_until_async(Duration::from_secs(30), || {
        let pids = p.runner_pids();
        p.stats().runners == 4 && pids.len() == 4 && !pids.contains(&victim)
    })
    .await;
    assert!(
        back.is_some(),
        "the pool did not replace the runner: {:?}",
        p.stats()
    );
    assert!(p.events_named("runner_down") >= 1, "no runner_down event");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kill_9_with_1000_calls_in_flight_every_caller_resolves_before_its_deadline() {
    let _serial = SERIAL.lock().await;
    let p = parent(pool(), &[]).await;
    let _cleanup = KillByEnv::new("FLAME_PARENT_ID", p.parent_id());
    ready(&p).await;
    let timeout = Duration::from_secs(10);
    let calls: Vec<_> = (0..IN_FLIGHT)
        .map(|i| {
            let f = p.flame.clone();
            tokio::spawn(async move {
                let t = Instant::now();
                let r = f
                    .call_with(
                        RECORD,
                        Record::new(format!("k-{i}")).sleep(3000),
                        CallOptions::new().timeout(timeout),
                    )
                    .await;
                (r, t.elapsed())
            })
        })
        .collect();
    all_in_flight(&p, IN_FLIGHT).await;
    let victim = p.runner_pids()[0];
    signal(victim, "KILL");
    let killed = Instant::now();

    let (mut ok, mut retryable, mut slowest, mut fastest_failure) = (0, 0, Duration::ZERO, Duration::MAX);
    for c in calls {
        let (result, took) = tokio::time::timeout(timeout + Duration::from_secs(5), c)
            .await
            .expect("a caller hung past its deadline")
            .unwrap();
        assert!(
            took <= timeout + Duration::from_millis(500),
            "a call took {took:?}, past its {timeout:?} deadline"
        );
        slowest = slowest.max(took);
        match result {
            Ok(r) => {
                assert_ne!(r.pid, victim, "a result came from the killed runner");
                ok += 1;
            }
            Err(e) => {
                assert!(e.is_retryable(), "not retryable: {e}");
                retryable += 1;
                fastest_failure = fastest_failure.min(killed.elapsed());
            }
        }
    }
    eprintln!(
        "kill -9 with {IN_FLIGHT} in flight: {ok} ok, {retryable} retryable errors, slowest caller {slowest:?}"
    );
    assert_eq!(ok + retryable, IN_FLIGHT);
    assert!(
        retryable > 0 && retryable <= 250,
        "{retryable} errors, the victim held at most 250 calls"
    );
    replaced(&p, victim).await;
    no_runner_left(&p).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kill_9_with_keys_and_retries_every_call_completes_and_no_key_runs_twice_on_a_runner() {
    let _serial = SERIAL.lock().await;
    let p = parent(pool(), &[]).await;
    let _cleanup = KillByEnv::new("FLAME_PARENT_ID", p.parent_id());
    ready(&p).await;
    let calls: Vec<_> = (0..IN_FLIGHT)
        .map(|i| {
            let f = p.flame.clone();
            tokio::spawn(async move {
                f.call_with(
                    RECORD,
                    Record::new(format!("key-{i}")).sleep(2000),
                    CallOptions::new()
                        .timeout(Duration::from_secs(40))
                        .idempotency_key(format!("key-{i}"))
                        .retries(6),
                )
                .await
            })
        })
        .collect();
    all_in_flight(&p, IN_FLIGHT).await;
    let victim = p.runner_pids()[0];
    signal(victim, "KILL");
    let started = Instant::now();
    let mut failures = Vec::new();
    for c in calls {
        if let Err(e) = c.await.unwrap() {
            failures.push(e.to_string());
        }
    }
    assert!(
        failures.is_empty(),
        "{} calls failed, e.g. {:?}",
        failures.len(),
        &failures[..failures.len().min(5)]
    );

    let logs = read_logs(p.logs.path());
    let mut runners_per_key: HashMap<&str, u32> = HashMap::new();
    for (runner, runs) in &logs {
        for (tag, n) in runs {
            assert_eq!(*n, 1, "key {tag} ran {n} times on runner {runner}");
            *runners_per_key.entry(tag.as_str()).or_insert(0) += 1;
        }
    }
    assert_eq!(runners_per_key.len(), IN_FLIGHT, "every key ran somewhere");
    let moved = runners_per_key.values().filter(|n| **n > 1).count();
    eprintln!(
        "kill -9 with keys + retries: {IN_FLIGHT} calls all completed ({:?} after the kill); {moved} keys ran again on another runner after theirs died; none twice on one runner",
        started.elapsed()
    );
    assert!(moved <= 250);
    replaced(&p, victim).await;
    no_runner_left(&p).await;
}
