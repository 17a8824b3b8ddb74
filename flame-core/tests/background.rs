//! Background work over the pools (issue 16): spawn, map, place — against the fake backend and
//! the in-memory transport (the runner pipeline included), with a paused clock.
#![allow(clippy::unwrap_used)]
mod common;
mod pool_common;

use common::*;
use flame_core::pool::ElasticPool;
use flame_core::{
    CallOptions, Context, Error, ErrorCode, Flame, MapOptions, Method, Mode, PoolConfig, Registry,
};
use futures::StreamExt;
use pool_common::*;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

fn parent_over(fake: &Arc<Fake>, pool: ElasticPool) -> Flame {
    Flame::builder(Registry::new())
        .mode(Mode::Parent)
        .transport(Arc::new(fake.transport.clone()))
        .with_pool(Arc::new(pool))
        .handle_signals(false)
        .shutdown_timeout(Duration::from_secs(60))
        .build()
        .unwrap()
}

fn parent(config: PoolConfig) -> (Flame, Arc<Fake>, Probe, Events) {
    let (reg, probe) = registry();
    let fake = Fake::new(reg);
    let (pool, events) = pool(&fake, config);
    (parent_over(&fake, pool), fake, probe, events)
}

#[tokio::test(start_paused = true)]
async fn a_detached_call_outlives_its_caller_and_shutdown_waits_for_it() {
    let (flame, _fake, probe, _) = parent(PoolConfig::default().max(1));
    let handle = flame.spawn_with(SLOW, 5_000, CallOptions::new().timeout(Duration::from_secs(60)));
    let id = handle.id().to_owned();
    assert!(!id.is_empty());
    handle.detach(); // the caller goes away
    tokio::time::sleep(Duration::from_secs(1)).await;
    let started = tokio::time::Instant::now();
    flame.shutdown().await.unwrap();
    // Shutdown waited for the detached call to finish (it slept 5 s from its start).
    assert!(
        started.elapsed() >= Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(probe.cancelled.load(Ordering::SeqCst), 0, "it was not cancelled");
}

#[tokio::test(start_paused = true)]
async fn a_spawned_call_joins_with_its_result_and_result_times_out_while_running() {
    let (flame, _fake, _, _) = parent(PoolConfig::default().max(1));
    let mut handle = flame.spawn(SLOW, 2_000);
    let early = handle.result(Duration::from_millis(500)).await.unwrap_err();
    assert_eq!(early.code(), ErrorCode::Timeout);
    assert!(early.is_retryable());
    assert_eq!(
        handle.result(Duration::from_secs(10)).await.unwrap(),
        "slept 2000"
    );
    assert_eq!(flame.spawn(ADD, (20, 22)).join().await.unwrap(), 42);
    flame.shutdown().await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn cancel_and_drop_reach_the_handler() {
    let (flame, _fake, probe, _) = parent(PoolConfig::default().max(1));
    let handle = flame.spawn(SLOW, 60_000);
    tokio::time::sleep(Duration::from_secs(1)).await;
    handle.cancel();
    settle().await;
    tokio::time::sleep(Duration::from_millis(10)).await;
    assert_eq!(
        probe.cancelled.load(Ordering::SeqCst),
        1,
        "cancel reached the handler"
    );
    let dropped = flame.spawn(SLOW, 60_000);
    tokio::time::sleep(Duration::from_secs(1)).await;
    drop(dropped); // not detached: dropping cancels, like a linked process
    settle().await;
    tokio::time::sleep(Duration::from_millis(10)).await;
    assert_eq!(
        probe.cancelled.load(Ordering::SeqCst),
        2,
        "dropping the handle cancelled it"
    );
    flame.shutdown().await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn a_spawned_call_on_a_runner_that_dies_is_a_typed_retryable_error() {
    let (flame, fake, _, _) = parent(PoolConfig::default().max(1));
    let handle = flame.spawn(SLOW, 60_000);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let runner = fake.alive.lock().unwrap().iter().next().unwrap().clone();
    fake.kill(&runner);
    let err = handle.join().await.unwrap_err();
    assert!(err.is_retryable(), "{err}");
    assert!(
        matches!(err.code(), ErrorCode::Transport | ErrorCode::Timeout),
        "{err}"
    );
    flame.shutdown().await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn shutdown_cancels_detached_calls_past_its_timeout() {
    let (reg, probe) = registry();
    let fake = Fake::new(reg);
    let (pool, _) = pool(&fake, PoolConfig::default().max(1));
    let flame = Flame::builder(Registry::new())
        .mode(Mode::Parent)
        .transport(Arc::new(fake.transport.clone()))
        .with_pool(Arc::new(pool))
        .handle_signals(false)
        .shutdown_timeout(Duration::from_secs(2))
        .build()
        .unwrap();
    flame
        .spawn_with(
            SLOW,
            600_000,
            CallOptions::new().timeout(Duration::from_secs(3600)),
        )
        .detach();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let started = tokio::time::Instant::now();
    flame.shutdown().await.unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
    settle().await;
    assert_eq!(
        probe.cancelled.load(Ordering::SeqCst),
        1,
        "the handler saw the cancellation"
    );
}

/// Fails item 500, sleeps a little per item, and tracks how many run at once.
const WORK: Method<u32, u32> = Method::new("batch", "work");

fn work_registry(running: Arc<AtomicUsize>, peak: Arc<AtomicUsize>, cancelled: Arc<AtomicUsize>) -> Registry {
    Registry::new().handle(WORK, move |ctx: Context, n: u32| {
        let (running, peak, cancelled) = (running.clone(), peak.clone(), cancelled.clone());
        async move {
            /// Counts the item as running until its future ends, by completion or by drop.
            struct Running(Arc<AtomicUsize>);
            impl Drop for Running {
                fn drop(&mut self) {
                    self.0.fetch_sub(1, Ordering::SeqCst);
                }
            }
            let now = running.fetch_add(1, Ordering::SeqCst) + 1;
            let _running = Running(running.clone());
            peak.fetch_max(now, Ordering::SeqCst);
            let watcher = ctx.cancellation().clone();
            let c = cancelled.clone();
            let gone = tokio::spawn(async move {
                watcher.cancelled().await;
                c.fetch_add(1, Ordering::SeqCst);
            });
            tokio::time::sleep(Duration::from_millis(20 + u64::from(n % 7))).await;
            gone.abort();
            if n == 500 {
                return Err(Error::handler("item 500 is bad"));
            }
            Ok(n * 2)
        }
    })
}

#[tokio::test(start_paused = true)]
async fn map_keeps_every_slot_busy_and_yields_ordered_results_with_failures_in_place() {
    let (running, peak, cancelled) = (Arc::default(), Arc::new(AtomicUsize::new(0)), Arc::default());
    let fake = Fake::new(work_registry(running, peak.clone(), cancelled));
    *fake.boot_delay.lock().unwrap() = Duration::from_millis(10);
    let (pool, _) = pool(&fake, PoolConfig::default().max(4).max_concurrency(8));
    let flame = parent_over(&fake, pool);
    let results: Vec<_> = flame.map(WORK, 0..1000u32).collect().await;
    assert_eq!(results.len(), 1000);
    for (i, r) in results.iter().enumerate() {
        if i == 500 {
            let e = r.as_ref().unwrap_err();
            assert_eq!(e.code(), ErrorCode::Handler, "{e}");
        } else {
            assert_eq!(*r.as_ref().unwrap(), i as u32 * 2, "item {i} in place");
        }
    }
    assert_eq!(
        peak.load(Ordering::SeqCst),
        32,
        "4 runners × 8 slots all busy at the peak"
    );
    assert_eq!(fake.spawned.load(Ordering::SeqCst), 4);
    // fail_fast: the failure ends the stream.
    let first: Vec<_> = flame
        .map_with(WORK, 490..1000u32, MapOptions::new().fail_fast(true))
        .collect()
        .await;
    assert_eq!(first.len(), 11, "490..=500, the last one the error");
    assert!(first.last().unwrap().is_err());
    // Completion order, with the input index.
    let mut unordered: Vec<(usize, u32)> = flame
        .map_unordered(WORK, 0..50u32, MapOptions::new().concurrency(5))
        .map(|(i, r)| (i, r.unwrap()))
        .collect()
        .await;
    unordered.sort();
    assert_eq!(unordered, (0..50).map(|i| (i, i as u32 * 2)).collect::<Vec<_>>());
    flame.shutdown().await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn dropping_the_map_stream_cancels_the_items_in_flight() {
    let (running, peak, cancelled) = (
        Arc::new(AtomicUsize::new(0)),
        Arc::default(),
        Arc::new(AtomicUsize::new(0)),
    );
    let fake = Fake::new(work_registry(running.clone(), peak, cancelled.clone()));
    let (pool, _) = pool(&fake, PoolConfig::default().max(2).max_concurrency(4));
    let flame = parent_over(&fake, pool);
    let mut stream = flame.map(WORK, 0..1000u32);
    let first = stream.next().await.unwrap().unwrap();
    assert_eq!(first, 0);
    let busy = running.load(Ordering::SeqCst);
    assert!(busy > 0, "items were running");
    drop(stream);
    settle().await;
    assert_eq!(
        running.load(Ordering::SeqCst),
        0,
        "nothing runs after the stream is dropped"
    );
    assert_eq!(
        cancelled.load(Ordering::SeqCst),
        busy,
        "each item in flight saw its cancellation"
    );
    flame.shutdown().await.unwrap();
}

const HOLD: Method<u64, String> = Method::new("test", "slow");

#[tokio::test(start_paused = true)]
async fn a_placed_task_keeps_its_runner_from_idling_out_until_it_ends() {
    let idle = Duration::from_secs(30);
    let (flame, fake, probe, events) = parent(PoolConfig::default().max(1).idle_shutdown_after(idle));
    let mut task = flame.place(HOLD, 120_000);
    tokio::time::sleep(Duration::from_secs(90)).await;
    assert!(task.is_running());
    assert_eq!(
        fake.alive(),
        1,
        "idle_shutdown_after passed three times, the runner stays"
    );
    assert!(!names(&events).contains(&"shrink"));
    assert_eq!(task.ended().await.unwrap(), "slept 120000");
    tokio::time::sleep(idle + Duration::from_secs(5)).await;
    assert_eq!(fake.alive(), 0, "idled out once the task ended");
    assert!(names(&events).contains(&"shrink"));
    // stop(): cancels on the runner.
    let task = flame.place(HOLD, 600_000);
    tokio::time::sleep(Duration::from_secs(5)).await;
    let stopped = task.stop().await.unwrap_err();
    assert_eq!(stopped.code(), ErrorCode::Shutdown);
    settle().await;
    assert_eq!(probe.cancelled.load(Ordering::SeqCst), 1);
    // The runner dies: the handle reports it.
    let mut task = flame.place(HOLD, 600_000);
    tokio::time::sleep(Duration::from_secs(5)).await;
    let runner = fake.alive.lock().unwrap().iter().next().unwrap().clone();
    fake.kill(&runner);
    let err = task.ended().await.unwrap_err();
    assert!(err.is_retryable(), "{err}");
    flame.shutdown().await.unwrap();
}

#[tokio::test]
async fn runner_state_reaches_handlers_in_local_mode_and_is_built_once() {
    const GREET: Method<String, String> = Method::new("state", "greet");
    struct Greeter {
        prefix: String,
    }
    let built = Arc::new(Mutex::new(0));
    let b = built.clone();
    let registry = Registry::new().handle(GREET, |ctx: Context, name: String| async move {
        let g = ctx.state::<Greeter>()?;
        Ok(format!("{}{name}", g.prefix))
    });
    let flame = Flame::builder(registry)
        .mode(Mode::Local)
        .runner_state(move || async move {
            *b.lock().unwrap() += 1;
            Ok(Greeter {
                prefix: "hello, ".into(),
            })
        })
        .start()
        .await
        .unwrap();
    for _ in 0..3 {
        assert_eq!(flame.call(GREET, "ada".into()).await.unwrap(), "hello, ada");
    }
    assert_eq!(*built.lock().unwrap(), 1);
    // A failing init is the start's error, with the init's own words.
    let err = Flame::builder(Registry::new())
        .mode(Mode::Local)
        .runner_state(|| async { Err::<Greeter, _>(Error::config("the model file is missing")) })
        .start()
        .await
        .err()
        .unwrap();
    assert!(err.message().contains("the model file is missing"), "{err}");
    // A parent never builds it.
    let never = Arc::new(Mutex::new(0));
    let n = never.clone();
    let fake = Fake::new(Registry::new());
    let (pool, _) = pool(&fake, PoolConfig::default());
    let parent = Flame::builder(Registry::new())
        .mode(Mode::Parent)
        .transport(Arc::new(fake.transport.clone()))
        .with_pool(Arc::new(pool))
        .handle_signals(false)
        .runner_state(move || async move {
            *n.lock().unwrap() += 1;
            Ok(())
        })
        .start()
        .await
        .unwrap();
    assert_eq!(*never.lock().unwrap(), 0, "no runner state in a parent");
    parent.shutdown().await.unwrap();
}

/// Counts reaps on the way to a fake backend.
struct Reaped(Arc<Fake>, Arc<AtomicUsize>);

#[async_trait::async_trait]
impl flame_core::Backend for Reaped {
    fn name(&self) -> &str {
        "reaped"
    }
    async fn spawn(&self, r: flame_core::SpawnRequest) -> flame_core::Result<flame_core::RunnerHandle> {
        self.0.spawn(r).await
    }
    async fn terminate(&self, h: &flame_core::RunnerHandle) -> flame_core::Result<()> {
        self.0.terminate(h).await
    }
    async fn status(&self, h: &flame_core::RunnerHandle) -> flame_core::Result<flame_core::RunnerState> {
        self.0.status(h).await
    }
    async fn reap(&self, _scope: &flame_core::ReapScope) -> flame_core::Result<usize> {
        self.1.fetch_add(1, Ordering::SeqCst);
        Ok(0)
    }
}

#[tokio::test]
async fn a_pool_with_its_own_backend_starts_runners_there_and_both_backends_are_reaped() {
    // One transport reaches both fakes' runners (runner ids are unique per pool).
    let (cpu_reg, _) = registry();
    let cpu = Fake::new(cpu_reg);
    let gpu = Fake::new(registry().0);
    let gpu_reaps = Arc::new(AtomicUsize::new(0));
    let gpu_backend = Reaped(
        Arc::new(Fake {
            transport: cpu.transport.clone(),
            ..Arc::try_unwrap(gpu).ok().unwrap()
        }),
        gpu_reaps.clone(),
    );
    let gpu_fake = gpu_backend.0.clone();
    let default_backend = Arc::new(Reaped(cpu.clone(), Arc::new(AtomicUsize::new(0))));
    let flame = Flame::builder(Registry::new())
        .mode(Mode::Parent)
        .transport(Arc::new(cpu.transport.clone()))
        .backend_shared(default_backend.clone())
        .pool("default", PoolConfig::default().max(1))
        .pool_with("gpu", PoolConfig::default().max(1), gpu_backend)
        .handle_signals(false)
        .start()
        .await
        .unwrap();
    assert_eq!(flame.call(ADD, (1, 2)).await.unwrap(), 3);
    assert_eq!(
        flame
            .call_with(ADD, (2, 2), CallOptions::new().pool("gpu"))
            .await
            .unwrap(),
        4
    );
    assert_eq!(
        cpu.spawned.load(Ordering::SeqCst),
        1,
        "default pool on the default backend"
    );
    assert_eq!(
        gpu_fake.spawned.load(Ordering::SeqCst),
        1,
        "gpu pool on its own backend"
    );
    // Each backend got the runner environment of the default path.
    let gpu_req = gpu_fake.requests.lock().unwrap()[0].clone();
    assert_eq!(gpu_req.env["FLAME_MODE"], "runner");
    assert_eq!(gpu_req.env["FLAME_PARENT_ID"], flame.parent_id());
    assert_eq!(gpu_req.labels["flame.pool"], "gpu");
    // Reap ran once on each backend when the parent started.
    let until = tokio::time::Instant::now() + Duration::from_secs(10);
    while (default_backend.1.load(Ordering::SeqCst) == 0 || gpu_reaps.load(Ordering::SeqCst) == 0)
        && tokio::time::Instant::now() < until
    {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(default_backend.1.load(Ordering::SeqCst), 1);
    assert_eq!(gpu_reaps.load(Ordering::SeqCst), 1);
    flame.shutdown().await.unwrap();
}

/// Records that it ran, after a pause (so the acknowledgement clearly comes first).
const RECORD: Method<String, u32> = Method::new("audit", "record");

fn record_registry(seen: Arc<Mutex<Vec<String>>>) -> Registry {
    Registry::new().handle(RECORD, move |_ctx: Context, event: String| {
        let seen = seen.clone();
        async move {
            tokio::time::sleep(Duration::from_secs(5)).await;
            if event == "bad" {
                return Err(Error::handler("bad event"));
            }
            seen.lock().unwrap().push(event);
            Ok(7)
        }
    })
}

#[tokio::test(start_paused = true)]
async fn a_cast_is_acknowledged_when_accepted_and_runs_once_per_key() {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let fake = Fake::new(record_registry(seen.clone()));
    let (pool, _) = pool(&fake, PoolConfig::default().max(1));
    let flame = parent_over(&fake, pool);
    let started = tokio::time::Instant::now();
    let cast = flame.cast(RECORD, "login".to_string());
    assert!(cast.idempotency_key().starts_with("cast-"), "a key is made up");
    cast.accepted().await.unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "acknowledged before the handler ran"
    );
    assert!(seen.lock().unwrap().is_empty());
    tokio::time::sleep(Duration::from_secs(6)).await;
    assert_eq!(*seen.lock().unwrap(), ["login"]);
    // The same key delivered twice (a retry after a lost acknowledgement) runs once.
    for _ in 0..2 {
        flame
            .cast_with(
                RECORD,
                "logout".to_string(),
                CallOptions::new().idempotency_key("k-1"),
            )
            .accepted()
            .await
            .unwrap();
    }
    tokio::time::sleep(Duration::from_secs(6)).await;
    assert_eq!(*seen.lock().unwrap(), ["login", "logout"]);
    // A handler failure after the acknowledgement is the runner's to log: the cast was accepted.
    flame.cast(RECORD, "bad".to_string()).accepted().await.unwrap();
    // Fire and forget: the shutdown waits for nothing on the parent, the runner drains it.
    flame.cast(RECORD, "last".to_string());
    tokio::time::sleep(Duration::from_millis(100)).await;
    flame.shutdown().await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn an_undeliverable_cast_goes_to_the_hooks() {
    let fake = Fake::new(Registry::new());
    fake.fail_next.store(usize::MAX, Ordering::SeqCst);
    let (pool, _) = pool(&fake, PoolConfig::default().max(1));
    let reports = Arc::new(Mutex::new(Vec::new()));
    let r = reports.clone();
    let flame = Flame::builder(Registry::new())
        .mode(Mode::Parent)
        .transport(Arc::new(fake.transport.clone()))
        .with_pool(Arc::new(pool))
        .handle_signals(false)
        .on_cast_error(move |e| r.lock().unwrap().push((e.method.clone(), e.error.code())))
        .build()
        .unwrap();
    let err = flame
        .cast(RECORD, "lost".to_string())
        .accepted()
        .await
        .unwrap_err();
    assert_eq!(err.code(), ErrorCode::Backend, "{err}");
    assert_eq!(
        *reports.lock().unwrap(),
        [("audit/record".to_string(), ErrorCode::Backend)]
    );
    flame.shutdown().await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn a_cast_in_local_mode_is_acknowledged_at_once_and_shutdown_waits_for_it() {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let flame = Flame::builder(record_registry(seen.clone()))
        .mode(Mode::Local)
        .start()
        .await
        .unwrap();
    let started = tokio::time::Instant::now();
    flame.cast(RECORD, "local".to_string()).accepted().await.unwrap();
    assert!(started.elapsed() < Duration::from_secs(1));
    flame.shutdown().await.unwrap();
    assert_eq!(*seen.lock().unwrap(), ["local"], "shutdown waited for the cast");
}
