//! ElasticPool semantics (DESIGN.md §4) against a fake backend and the in-memory transport,
//! with a paused clock where time matters.
#![allow(clippy::unwrap_used)]
mod common;
mod pool_common;

use common::*;
use flame_core::pool::PoolEvent;
use flame_core::testkit::InMemoryTransport;
use flame_core::{
    CallOptions, CheckoutOptions, ErrorCode, Flame, Lease, LeaseOutcome, Mode, Pool, PoolConfig,
};
use pool_common::*;
use std::collections::HashSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::time::Instant;

fn opts(secs: u64) -> CheckoutOptions {
    CheckoutOptions {
        deadline: Some(Instant::now() + Duration::from_secs(secs)),
    }
}

#[tokio::test(start_paused = true)]
async fn grows_on_demand_then_reuses_free_runners() {
    let fake = Fake::new(registry().0);
    let (pool, events) = pool(&fake, PoolConfig::default().max(2).max_concurrency(1));
    assert_eq!(pool.stats().runners, 0, "an elastic pool starts empty");
    let a = pool.checkout(&opts(10)).await.unwrap();
    let b = pool.checkout(&opts(10)).await.unwrap();
    assert_ne!(a.endpoint().runner_id, b.endpoint().runner_id);
    assert!(a.endpoint().secret.is_some(), "endpoints carry the pool secret");
    let a_id = a.endpoint().runner_id.clone();
    drop(a);
    let c = pool.checkout(&opts(10)).await.unwrap();
    assert_eq!(c.endpoint().runner_id, a_id, "a free runner is reused");
    assert_eq!(fake.spawned.load(Ordering::SeqCst), 2);
    assert_eq!(
        names(&events),
        vec!["grow_start", "grow_end", "grow_start", "grow_end"]
    );
    drop((b, c));
    pool.shutdown(Duration::from_secs(1)).await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn spawn_requests_carry_the_runner_environment() {
    let fake = Fake::new(registry().0);
    let (pool, _) = pool(&fake, PoolConfig::default().max(1));
    drop(pool.checkout(&opts(10)).await.unwrap());
    let req = fake.requests.lock().unwrap()[0].clone();
    for key in [
        "FLAME_MODE",
        "FLAME_SECRET",
        "FLAME_LISTEN",
        "FLAME_PARENT_ID",
        "FLAME_PARENT_TIMEOUT",
        "FLAME_RUNNER_ID",
    ] {
        assert!(req.env.contains_key(key), "{key} missing");
    }
    assert_eq!(req.env["FLAME_MODE"], "runner");
    assert_eq!(req.env["FLAME_LISTEN"], "127.0.0.1:0");
    assert_eq!(req.env["FLAME_RUNNER_ID"], req.runner_id);
    assert_eq!(req.labels["flame.app"], "test-app");
    assert_eq!(req.labels["flame.parent"], "parent-1");
    assert!(!format!("{req:?}").contains(req.env["FLAME_SECRET"].as_str()));
    pool.shutdown(Duration::from_secs(1)).await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn hundred_callers_on_an_empty_pool_start_at_most_max_runners() {
    let fake = Fake::new(registry().0);
    let (pool, _) = pool(&fake, PoolConfig::default().max(4).max_concurrency(1));
    let pool = Arc::new(pool);
    let tasks: Vec<_> = (0..100)
        .map(|_| {
            let p = pool.clone();
            tokio::spawn(async move {
                let lease = p.checkout(&opts(60)).await?;
                tokio::time::sleep(Duration::from_millis(10)).await;
                drop(lease);
                Ok::<_, flame_core::Error>(())
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap().unwrap();
    }
    assert_eq!(fake.spawned.load(Ordering::SeqCst), 4);
    assert_eq!(fake.max_alive.load(Ordering::SeqCst), 4);
    pool.shutdown(Duration::from_secs(1)).await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn pending_spawns_are_counted_with_their_capacity() {
    // 100 callers, 100 slots per runner: one runner is enough.
    let fake = Fake::new(registry().0);
    let (pool, _) = pool(&fake, PoolConfig::default().max(4).max_concurrency(100));
    let leases = {
        let o = opts(60);
        futures::future::join_all((0..100).map(|_| pool.checkout(&o))).await
    };
    assert!(leases.iter().all(|l| l.is_ok()));
    assert_eq!(fake.spawned.load(Ordering::SeqCst), 1);
    // One more needs a second runner.
    let extra = pool.checkout(&opts(60)).await.unwrap();
    assert_eq!(fake.spawned.load(Ordering::SeqCst), 2);
    drop((leases, extra));
    pool.shutdown(Duration::from_secs(1)).await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn waiters_at_max_are_served_in_fifo_order() {
    let fake = Fake::new(registry().0);
    let (pool, _) = pool(&fake, PoolConfig::default().max(1).max_concurrency(1));
    let pool = Arc::new(pool);
    let held = pool.checkout(&opts(10)).await.unwrap();
    let order = Arc::new(Mutex::new(Vec::new()));
    let mut tasks = Vec::new();
    for i in 0..8 {
        let p = pool.clone();
        let o = order.clone();
        tasks.push(tokio::spawn(async move {
            let lease = p.checkout(&opts(60)).await.unwrap();
            o.lock().unwrap().push(i);
            tokio::time::sleep(Duration::from_millis(5)).await;
            drop(lease);
        }));
        // Make sure waiter i is queued before waiter i + 1.
        settle().await;
    }
    assert_eq!(pool.stats().waiting, 8);
    drop(held);
    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(*order.lock().unwrap(), (0..8).collect::<Vec<_>>());
    assert_eq!(fake.spawned.load(Ordering::SeqCst), 1);
    pool.shutdown(Duration::from_secs(1)).await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn a_caller_that_gives_up_leaves_no_trace() {
    let fake = Fake::new(registry().0);
    let (pool, _) = pool(&fake, PoolConfig::default().max(1).max_concurrency(1));
    let held = pool.checkout(&opts(10)).await.unwrap();
    // Deadline passes while waiting at max: OVERLOADED.
    let err = pool
        .checkout(&CheckoutOptions {
            deadline: Some(Instant::now() + Duration::from_millis(50)),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), ErrorCode::Overloaded);
    assert!(err.is_retryable());
    // A caller whose future is dropped while waiting.
    let dropped = tokio::time::timeout(Duration::from_millis(50), pool.checkout(&opts(60))).await;
    assert!(dropped.is_err());
    let s = pool.stats();
    assert_eq!((s.waiting, s.in_flight), (0, 1));
    drop(held);
    let s = pool.stats();
    assert_eq!((s.waiting, s.in_flight), (0, 0));
    let again = pool.checkout(&opts(1)).await.unwrap();
    assert_eq!(pool.stats().in_flight, 1);
    drop(again);
    pool.shutdown(Duration::from_secs(1)).await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn a_deadline_shorter_than_the_boot_waits_for_the_booting_runner() {
    // Elixir FLAME fails calls whose timeout is shorter than the boot; flame-rs waits for the
    // boot (bounded by boot_timeout) and the call's timeout then covers the call.
    let fake = Fake::new(registry().0);
    *fake.boot_delay.lock().unwrap() = Duration::from_secs(5);
    let (pool, _) = pool(&fake, PoolConfig::default().max(1));
    let started = Instant::now();
    let lease = pool
        .checkout(&CheckoutOptions {
            deadline: Some(Instant::now() + Duration::from_secs(1)),
        })
        .await
        .unwrap();
    assert!(started.elapsed() >= Duration::from_secs(5));
    assert!(lease.fresh_runner(), "the caller waited for this runner's boot");
    drop(lease);
    let again = pool.checkout(&opts(1)).await.unwrap();
    assert!(!again.fresh_runner());
    drop(again);
    pool.shutdown(Duration::from_secs(1)).await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn a_call_with_a_short_timeout_succeeds_while_the_pool_grows() {
    let fake = Fake::new(registry().0);
    *fake.boot_delay.lock().unwrap() = Duration::from_secs(5);
    let (pool, _) = pool(&fake, PoolConfig::default().max(1));
    let flame = Flame::builder(registry().0)
        .mode(Mode::Parent)
        .transport(Arc::new(fake.transport.clone()))
        .with_pool(Arc::new(pool))
        .build()
        .unwrap();
    let sum = flame
        .call_with(ADD, (1, 2), CallOptions::new().timeout(Duration::from_secs(1)))
        .await
        .unwrap();
    assert_eq!(sum, 3);
    // The timeout still bounds the call itself.
    let err = flame
        .call_with(SLOW, 10_000, CallOptions::new().timeout(Duration::from_secs(1)))
        .await
        .unwrap_err();
    assert_eq!(err.code(), ErrorCode::Timeout);
    flame.shutdown().await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn boot_timeout_fails_the_caller_and_leaves_nothing() {
    let fake = Fake::new(registry().0);
    fake.hang.store(true, Ordering::SeqCst);
    let (pool, events) = pool(
        &fake,
        PoolConfig::default().max(2).boot_timeout(Duration::from_secs(2)),
    );
    let started = Instant::now();
    let err = pool.checkout(&opts(60)).await.unwrap_err();
    assert_eq!(err.code(), ErrorCode::SpawnTimeout);
    assert!(err.is_retryable());
    assert!(started.elapsed() < Duration::from_secs(3));
    let s = pool.stats();
    assert_eq!((s.runners, s.booting, s.waiting), (0, 0, 0));
    assert_eq!(fake.alive(), 0);
    let ev = events.lock().unwrap().clone();
    assert!(
        matches!(&ev[1], PoolEvent::GrowEnd { error: Some(_), .. }),
        "{ev:?}"
    );
    pool.shutdown(Duration::from_secs(1)).await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn failed_spawn_is_a_typed_error_and_the_next_caller_tries_again() {
    let fake = Fake::new(registry().0);
    fake.fail_next.store(1, Ordering::SeqCst);
    let (pool, _) = pool(&fake, PoolConfig::default().max(1));
    let err = pool.checkout(&opts(10)).await.unwrap_err();
    assert_eq!(err.code(), ErrorCode::Backend);
    assert!(err.message().contains("refused"), "{err}");
    let lease = pool.checkout(&opts(10)).await.unwrap();
    assert_eq!(fake.spawned.load(Ordering::SeqCst), 2);
    drop(lease);
    pool.shutdown(Duration::from_secs(1)).await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn failed_spawn_fails_only_the_waiters_it_would_have_served() {
    // Two runners boot for two callers; one start fails: one caller gets the error, the
    // other is served by the runner that did start.
    let fake = Fake::new(registry().0);
    fake.fail_next.store(1, Ordering::SeqCst);
    let (pool, _) = pool(&fake, PoolConfig::default().max(2).max_concurrency(1));
    let o = opts(10);
    let (a, b) = tokio::join!(pool.checkout(&o), pool.checkout(&o));
    let ok = [a.is_ok(), b.is_ok()];
    assert_eq!(ok.iter().filter(|x| **x).count(), 1, "{a:?} {b:?}");
    pool.shutdown(Duration::from_secs(1)).await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn least_loaded_runner_is_chosen() {
    let fake = Fake::new(registry().0);
    let (pool, _) = pool(&fake, PoolConfig::default().min(3).max(3).max_concurrency(10));
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(pool.stats().runners, 3, "min runners start with the pool");
    let leases = {
        let o = opts(10);
        futures::future::join_all((0..6).map(|_| pool.checkout(&o))).await
    };
    let mut per_runner = std::collections::HashMap::new();
    for l in &leases {
        *per_runner
            .entry(l.as_ref().unwrap().endpoint().runner_id.clone())
            .or_insert(0) += 1;
    }
    assert_eq!(per_runner.len(), 3);
    assert!(per_runner.values().all(|n| *n == 2), "{per_runner:?}");
    drop(leases);
    pool.shutdown(Duration::from_secs(1)).await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn idle_runners_shrink_to_min() {
    let fake = Fake::new(registry().0);
    let (pool, events) = pool(
        &fake,
        PoolConfig::default()
            .min(1)
            .max(3)
            .max_concurrency(1)
            .idle_shutdown_after(Duration::from_secs(10)),
    );
    let leases = {
        let o = opts(10);
        futures::future::join_all((0..3).map(|_| pool.checkout(&o))).await
    };
    assert_eq!(pool.stats().runners, 3);
    drop(leases);
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(pool.stats().runners, 3, "not idle long enough yet");
    tokio::time::sleep(Duration::from_secs(20)).await;
    assert_eq!(pool.stats().runners, 1, "shrunk to min");
    assert_eq!(fake.alive(), 1);
    assert_eq!(fake.terminated.load(Ordering::SeqCst), 2);
    assert_eq!(names(&events).iter().filter(|n| **n == "shrink").count(), 2);
    // And it stays at min.
    tokio::time::sleep(Duration::from_secs(120)).await;
    assert_eq!(pool.stats().runners, 1);
    pool.shutdown(Duration::from_secs(1)).await.unwrap();
    assert_eq!(fake.alive(), 0);
}

#[tokio::test(start_paused = true)]
async fn a_busy_runner_is_not_ended_as_idle() {
    let fake = Fake::new(registry().0);
    let (pool, _) = pool(
        &fake,
        PoolConfig::default()
            .max(1)
            .idle_shutdown_after(Duration::from_secs(1)),
    );
    let lease = pool.checkout(&opts(100)).await.unwrap();
    tokio::time::sleep(Duration::from_secs(30)).await;
    assert_eq!(pool.stats().runners, 1);
    drop(lease);
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(pool.stats().runners, 0, "idle after release, min is 0");
    pool.shutdown(Duration::from_secs(1)).await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn single_use_runners_serve_one_call() {
    let fake = Fake::new(registry().0);
    let (pool, events) = pool(
        &fake,
        PoolConfig::default().max(2).max_concurrency(10).single_use(true),
    );
    let a = pool.checkout(&opts(10)).await.unwrap();
    let b = pool.checkout(&opts(10)).await.unwrap();
    assert_ne!(
        a.endpoint().runner_id,
        b.endpoint().runner_id,
        "one call per runner"
    );
    let first = a.endpoint().runner_id.clone();
    drop(a);
    settle().await;
    assert_eq!(fake.terminated.load(Ordering::SeqCst), 1);
    let c = pool.checkout(&opts(10)).await.unwrap();
    assert_ne!(c.endpoint().runner_id, first);
    assert_eq!(fake.spawned.load(Ordering::SeqCst), 3);
    assert!(events.lock().unwrap().iter().any(|e| matches!(
        e,
        PoolEvent::Shrink {
            reason: "single_use",
            ..
        }
    )));
    drop((b, c));
    pool.shutdown(Duration::from_secs(1)).await.unwrap();
    assert_eq!(fake.alive(), 0);
}

#[tokio::test(start_paused = true)]
async fn runners_are_pinged_every_health_interval() {
    let fake = Fake::new(registry().0);
    let transport = Arc::new(CountingTransport {
        inner: fake.transport.clone(),
        pings: AtomicUsize::new(0),
    });
    let (pool, _) = pool_with(
        &fake,
        transport.clone(),
        PoolConfig::default()
            .min(1)
            .max(1)
            .health_interval(Duration::from_secs(1)),
    );
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let before = transport.pings.load(Ordering::SeqCst);
    tokio::time::sleep(Duration::from_secs(10)).await;
    let pings = transport.pings.load(Ordering::SeqCst) - before;
    assert!((9..=11).contains(&pings), "{pings} pings in 10 s");
    pool.shutdown(Duration::from_secs(1)).await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn health_interval_stays_inside_the_parent_timeout() {
    let fake = Fake::new(registry().0);
    let transport = Arc::new(CountingTransport {
        inner: fake.transport.clone(),
        pings: AtomicUsize::new(0),
    });
    let template =
        flame_core::pool::RunnerTemplate::new("a", "p", flame_core::Secret::generate(), transport.clone())
            .parent_timeout(Duration::from_secs(3));
    let pool = flame_core::ElasticPool::builder("default", fake.clone(), template)
        .config(
            PoolConfig::default()
                .min(1)
                .max(1)
                .health_interval(Duration::from_secs(60)),
        )
        .build()
        .unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = transport.pings.load(Ordering::SeqCst);
    tokio::time::sleep(Duration::from_secs(10)).await;
    let pings = transport.pings.load(Ordering::SeqCst) - before;
    assert!(pings >= 9, "every <= 1 s with a 3 s parent timeout, got {pings}");
    pool.shutdown(Duration::from_secs(1)).await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn a_dead_runner_is_removed_its_lease_lost_and_min_restored() {
    let fake = Fake::new(registry().0);
    let (pool, events) = pool(
        &fake,
        PoolConfig::default()
            .min(1)
            .max(2)
            .health_interval(Duration::from_secs(1)),
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    let lease = pool.checkout(&opts(60)).await.unwrap();
    let dead = lease.endpoint().runner_id.clone();
    fake.kill(&dead);
    tokio::time::timeout(Duration::from_secs(3), lease.lost().cancelled())
        .await
        .expect("the lease of a dead runner is lost within a health interval or two");
    drop(lease);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let runners = pool.runners();
    assert_eq!(runners.len(), 1, "min restored");
    assert_ne!(runners[0].runner_id, dead);
    assert!(events
        .lock()
        .unwrap()
        .iter()
        .any(|e| matches!(e, PoolEvent::RunnerDown { runner_id, .. } if *runner_id == dead)));
    pool.shutdown(Duration::from_secs(1)).await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn a_failed_call_triggers_a_health_check_at_once() {
    let fake = Fake::new(registry().0);
    let (pool, events) = pool(
        &fake,
        PoolConfig::default()
            .max(2)
            .health_interval(Duration::from_secs(3600))
            .idle_shutdown_after(Duration::from_secs(3600)),
    );
    let lease: Lease = pool.checkout(&opts(60)).await.unwrap();
    let dead = lease.endpoint().runner_id.clone();
    fake.kill(&dead);
    lease.finish(LeaseOutcome::RunnerFailed);
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(names(&events).last(), Some(&"runner_down"));
    assert_eq!(pool.stats().runners, 0);
    // Next caller gets a fresh runner.
    let next = pool.checkout(&opts(10)).await.unwrap();
    assert_ne!(next.endpoint().runner_id, dead);
    drop(next);
    pool.shutdown(Duration::from_secs(1)).await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn shutdown_ends_every_runner_and_refuses_new_calls() {
    let fake = Fake::new(registry().0);
    let (pool, _) = pool(&fake, PoolConfig::default().min(2).max(4).max_concurrency(1));
    let pool = Arc::new(pool);
    let a = pool.checkout(&opts(10)).await.unwrap();
    let p = pool.clone();
    let waiter = tokio::spawn(async move {
        // Will wait: 3 more callers than free runners at some point.
        let _x = p.checkout(&opts(60)).await;
        let _y = p.checkout(&opts(60)).await;
        p.checkout(&opts(60)).await.map(|_| ())
    });
    settle().await;
    drop(a);
    pool.shutdown(Duration::from_secs(5)).await.unwrap();
    let _ = waiter.await.unwrap();
    settle().await;
    assert_eq!(fake.alive(), 0, "no runner left");
    assert_eq!(pool.stats().runners, 0);
    assert_eq!(
        pool.checkout(&opts(1)).await.unwrap_err().code(),
        ErrorCode::Shutdown
    );
}

#[tokio::test(start_paused = true)]
async fn shutdown_during_boot_leaves_nothing() {
    let fake = Fake::new(registry().0);
    *fake.boot_delay.lock().unwrap() = Duration::from_secs(3);
    let (pool, _) = pool(&fake, PoolConfig::default().min(2).max(2));
    settle().await;
    assert_eq!(pool.stats().booting, 2);
    pool.shutdown(Duration::from_secs(1)).await.unwrap();
    assert_eq!(fake.spawned.load(Ordering::SeqCst), 2);
    assert_eq!(
        fake.alive(),
        0,
        "runners that finished booting after shutdown are ended"
    );
    assert_eq!(pool.stats().booting, 0);
}

#[tokio::test(start_paused = true)]
async fn a_call_in_flight_on_a_dying_runner_fails_retryable_and_the_pool_recovers() {
    let fake = Fake::new(registry().0);
    let transport = InMemoryTransport::clone(&fake.transport);
    let (pool, _) = pool(
        &fake,
        PoolConfig::default()
            .min(1)
            .max(2)
            .health_interval(Duration::from_secs(1)),
    );
    let pool = Arc::new(pool);
    let flame = Flame::builder(registry().0)
        .mode(Mode::Parent)
        .transport(Arc::new(transport))
        .with_pool(pool.clone())
        .build()
        .unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let victim = pool.runners()[0].runner_id.clone();
    let f = flame.clone();
    let call = tokio::spawn(async move {
        f.call_with(SLOW, 60_000, CallOptions::new().timeout(Duration::from_secs(120)))
            .await
    });
    settle().await;
    assert_eq!(pool.stats().in_flight, 1);
    fake.kill(&victim);
    let err = tokio::time::timeout(Duration::from_secs(10), call)
        .await
        .expect("the call fails within a few health intervals, not at its deadline")
        .unwrap()
        .unwrap_err();
    assert!(err.is_retryable(), "{err}");
    assert_eq!(err.code(), ErrorCode::Transport);
    tokio::time::sleep(Duration::from_secs(1)).await;
    // Replaced (min 1) and serving.
    assert_eq!(flame.call(ADD, (20, 22)).await.unwrap(), 42);
    assert!(!pool.runners().iter().any(|r| r.runner_id == victim));
    flame.shutdown().await.unwrap();
    assert_eq!(fake.alive(), 0);
}

#[tokio::test(start_paused = true)]
async fn persistent_spawn_failures_back_off_when_restoring_min() {
    let fake = Fake::new(registry().0);
    fake.fail_next.store(1_000, Ordering::SeqCst);
    let (pool, _) = pool(&fake, PoolConfig::default().min(1).max(1));
    tokio::time::sleep(Duration::from_secs(60)).await;
    let tries = fake.spawned.load(Ordering::SeqCst);
    assert!((3..=15).contains(&tries), "backed off, {tries} tries in 60 s");
    fake.fail_next.store(0, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_secs(60)).await;
    assert_eq!(
        pool.stats().runners,
        1,
        "min restored once the engine works again"
    );
    pool.shutdown(Duration::from_secs(1)).await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn several_named_pools_are_independent() {
    let fake = Fake::new(registry().0);
    let (cpu, _) = pool(&fake, PoolConfig::default().max(1));
    let template = flame_core::pool::RunnerTemplate::new(
        "test-app",
        "parent-1",
        flame_core::Secret::generate(),
        Arc::new(fake.transport.clone()),
    );
    let gpu = flame_core::ElasticPool::builder("gpu", fake.clone(), template)
        .config(PoolConfig::default().max(1))
        .build()
        .unwrap();
    let flame = Flame::builder(registry().0)
        .mode(Mode::Parent)
        .transport(Arc::new(fake.transport.clone()))
        .with_pool(Arc::new(cpu))
        .with_pool(Arc::new(gpu))
        .build()
        .unwrap();
    assert_eq!(flame.call(ADD, (1, 2)).await.unwrap(), 3);
    assert_eq!(
        flame
            .call_with(ADD, (2, 2), CallOptions::new().pool("gpu"))
            .await
            .unwrap(),
        4
    );
    let pools: HashSet<String> = fake
        .requests
        .lock()
        .unwrap()
        .iter()
        .map(|r| r.pool.clone())
        .collect();
    assert_eq!(pools, HashSet::from(["default".to_owned(), "gpu".to_owned()]));
    let secrets: HashSet<String> = fake
        .requests
        .lock()
        .unwrap()
        .iter()
        .map(|r| r.env["FLAME_SECRET"].clone())
        .collect();
    assert_eq!(secrets.len(), 2, "one secret per pool");
    flame.shutdown().await.unwrap();
    assert_eq!(fake.alive(), 0);
}

#[tokio::test(start_paused = true)]
async fn the_builder_makes_elastic_pools_over_the_backend() {
    let fake = Fake::new(registry().0);
    let events = Arc::new(AtomicUsize::new(0));
    let ev = events.clone();
    // No pool declared: the default pool, PoolConfig::default().
    let flame = Flame::builder(registry().0)
        .mode(Mode::Parent)
        .transport(Arc::new(fake.transport.clone()))
        .backend_shared(fake.clone())
        .on_pool_event(move |_| {
            ev.fetch_add(1, Ordering::SeqCst);
        })
        .handle_signals(false)
        .start()
        .await
        .unwrap();
    assert_eq!(flame.call(ADD, (2, 2)).await.unwrap(), 4);
    assert_eq!(fake.spawned.load(Ordering::SeqCst), 1);
    let req = fake.requests.lock().unwrap()[0].clone();
    assert_eq!(req.pool, "default");
    assert_eq!(req.parent_id, flame.parent_id());
    assert_eq!(req.env["FLAME_PARENT_TIMEOUT"], "20000");
    assert!(events.load(Ordering::SeqCst) >= 2, "grow_start, grow_end");
    flame.shutdown().await.unwrap();
    assert_eq!(fake.alive(), 0);
}

#[tokio::test(start_paused = true)]
async fn in_runner_mode_a_pool_never_spawns() {
    let fake = Fake::new(registry().0);
    let flame = Flame::builder(registry().0)
        .mode(Mode::Runner)
        .transport(Arc::new(fake.transport.clone()))
        .backend_shared(fake.clone())
        .pool("default", PoolConfig::default().min(2).max(4))
        .build()
        .unwrap();
    assert_eq!(flame.call(ADD, (1, 1)).await.unwrap(), 2, "runs locally");
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(fake.spawned.load(Ordering::SeqCst), 0);
    assert!(flame.pool("default").is_none());
}

#[test]
fn explicit_mode_wins_over_the_default_mode() {
    let b = Flame::builder(registry().0).default_mode(Mode::Parent);
    assert_eq!(b.current_config().mode, Mode::Parent);
    let b = b.mode(Mode::Local).default_mode(Mode::Parent);
    assert_eq!(b.current_config().mode, Mode::Local);
}
