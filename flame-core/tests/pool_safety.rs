//! The pool's fences against runaway starts (issue 13): the crash-loop breaker and the spawn
//! budget, against a fake backend with a paused clock. (The spawn-depth fence reads the process
//! environment, so it has a test binary of its own: `spawn_depth.rs`.)
#![allow(clippy::unwrap_used)]
mod common;
mod pool_common;

use common::*;
use flame_core::pool::PoolEvent;
use flame_core::{CheckoutOptions, ErrorCode, Pool, PoolConfig};
use pool_common::*;
use std::sync::atomic::Ordering;
use std::time::Duration;
use tokio::time::Instant;

fn opts(secs: u64) -> CheckoutOptions {
    CheckoutOptions {
        deadline: Some(Instant::now() + Duration::from_secs(secs)),
    }
}

#[tokio::test(start_paused = true)]
async fn a_crash_loop_stops_itself_and_callers_fail_fast_naming_the_boot_failure() {
    let fake = Fake::new(registry().0);
    // Every runner "exits at once": every start fails.
    fake.fail_next.store(usize::MAX, Ordering::SeqCst);
    let (pool, events) = pool(&fake, PoolConfig::default().max(4).max_concurrency(1));
    // Callers keep coming for a whole minute, each giving up after 5 s, one every 50 ms.
    let started = Instant::now();
    let mut errors = Vec::new();
    let mut slowest_fail_fast = Duration::ZERO;
    while started.elapsed() < Duration::from_secs(60) {
        let t = Instant::now();
        let err = pool.checkout(&opts(5)).await.unwrap_err();
        if err.message().contains("stopped starting runners") {
            slowest_fail_fast = slowest_fail_fast.max(t.elapsed());
        }
        errors.push(err);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let spawned = fake.spawned.load(Ordering::SeqCst);
    eprintln!(
        "crash loop: {spawned} starts in 60 s for {} callers; breaker errors took at most {slowest_fail_fast:?}",
        errors.len()
    );
    // 4 at once (max), then one trial per backoff (1, 2, 4, 8, 16, 30 s): far below one start
    // per caller, and under the budget.
    assert!(spawned <= 12, "{spawned} starts in 60 s");
    assert!(spawned <= PoolConfig::default().max(4).spawn_budget());
    let breaker_errors: Vec<_> = errors
        .iter()
        .filter(|e| e.message().contains("stopped starting runners"))
        .collect();
    assert!(
        breaker_errors.len() > errors.len() / 2,
        "most callers failed fast"
    );
    for e in &breaker_errors {
        assert_eq!(e.code(), ErrorCode::NoRunner);
        assert!(e.is_retryable(), "{e}");
        assert!(
            e.message().contains("refused"),
            "names the last boot failure: {e}"
        );
        assert_eq!(e.details().unwrap()["lastBootError"]["code"], "BACKEND");
    }
    // At once while the breaker is open; at most one trial boot (100 ms here) for a caller
    // that arrived while the trial was booting.
    assert!(
        slowest_fail_fast <= Duration::from_millis(150),
        "{slowest_fail_fast:?}"
    );
    let opened = events
        .lock()
        .unwrap()
        .iter()
        .filter(|e| matches!(e, PoolEvent::BreakerOpen { .. }))
        .count();
    assert!(opened >= 1, "a breaker_open event: {:?}", names(&events));
    pool.shutdown(Duration::from_secs(1)).await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn a_successful_boot_closes_the_breaker() {
    let fake = Fake::new(registry().0);
    fake.fail_next.store(3, Ordering::SeqCst);
    let (pool, events) = pool(&fake, PoolConfig::default().max(1).max_concurrency(1));
    for _ in 0..3 {
        assert!(pool.checkout(&opts(5)).await.is_err());
    }
    let err = pool.checkout(&opts(5)).await.unwrap_err();
    assert!(err.message().contains("3 consecutive failed boots"), "{err}");
    // After the first backoff (1 s) one trial start goes, succeeds, and the pool is normal.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let lease = pool.checkout(&opts(5)).await.unwrap();
    drop(lease);
    assert_eq!(fake.spawned.load(Ordering::SeqCst), 4);
    let names = names(&events);
    assert!(
        names.contains(&"breaker_open") && names.contains(&"breaker_closed"),
        "{names:?}"
    );
    pool.shutdown(Duration::from_secs(1)).await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn the_spawn_budget_caps_starts_per_minute_even_when_boots_succeed() {
    // Single-use runners: every call starts one. The budget is the last fence.
    let fake = Fake::new(registry().0);
    let config = PoolConfig::default()
        .max(3)
        .single_use(true)
        .max_spawns_per_minute(10);
    let (pool, events) = pool(&fake, config);
    let started = Instant::now();
    let (mut served, mut refused) = (0, 0);
    while started.elapsed() < Duration::from_secs(59) {
        match pool.checkout(&opts(1)).await {
            Ok(lease) => {
                served += 1;
                drop(lease);
            }
            Err(e) => {
                assert_eq!(e.code(), ErrorCode::Timeout, "{e}");
                refused += 1;
            }
        }
    }
    let spawned = fake.spawned.load(Ordering::SeqCst);
    eprintln!("budget 10/min: {spawned} starts, {served} served, {refused} timed out in 59 s");
    assert_eq!(spawned, 10);
    assert!(refused > 0);
    let names = names(&events);
    assert_eq!(
        names.iter().filter(|n| **n == "spawn_budget_spent").count(),
        1,
        "{names:?}"
    );
    // The window moves on: starts resume.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let lease = pool.checkout(&opts(5)).await.unwrap();
    drop(lease);
    assert_eq!(fake.spawned.load(Ordering::SeqCst), 11);
    pool.shutdown(Duration::from_secs(1)).await.unwrap();
}
