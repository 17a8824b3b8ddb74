//! How busy `Flame::map` keeps a pool (issue 16): 10 runners × 8 slots, 4 000 items of 5 ms
//! each, in-memory runners (so the pool and the call lifecycle are measured, not a network).
//! A sampler reads `pool.stats().in_flight` every millisecond; utilisation is its mean over the
//! run divided by the 80 slots. The baseline in the same run: the same calls made by hand with
//! a semaphore of 80 permits (`join_all`), the best a caller can do.
//!
//! `cargo bench -p flame-core --bench map_utilization`
#![allow(clippy::unwrap_used, missing_docs)]

use flame_core::pool::RunnerTemplate;
use flame_core::testkit::MemoryBackend;
use flame_core::{Context, ElasticPool, Flame, Method, Mode, Pool, PoolConfig, Registry, Secret};
use futures::StreamExt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const WORK: Method<u32, u32> = Method::new("bench", "work");
const RUNNERS: usize = 10;
const SLOTS: usize = 8;
const ITEMS: u32 = 4_000;
const ITEM_TIME: Duration = Duration::from_millis(5);

fn registry() -> Registry {
    Registry::new().handle(WORK, |_ctx: Context, n: u32| async move {
        tokio::time::sleep(ITEM_TIME).await;
        Ok(n)
    })
}

async fn warm_parent() -> (Flame, Arc<ElasticPool>) {
    let backend = MemoryBackend::new(registry());
    let template = RunnerTemplate::new(
        "bench",
        "parent",
        Secret::generate(),
        Arc::new(backend.transport().clone()),
    )
    .parent_timeout(Duration::from_secs(3600));
    let pool = Arc::new(
        ElasticPool::builder("default", Arc::new(backend.clone()), template)
            .config(
                PoolConfig::default()
                    .min(RUNNERS)
                    .max(RUNNERS)
                    .max_concurrency(SLOTS)
                    .health_interval(Duration::from_secs(600))
                    .idle_shutdown_after(Duration::from_secs(3600)),
            )
            .build()
            .unwrap(),
    );
    while pool.stats().runners < RUNNERS {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let flame = Flame::builder(Registry::new())
        .mode(Mode::Parent)
        .transport(Arc::new(backend.transport().clone()))
        .with_pool(pool.clone())
        .handle_signals(false)
        .build()
        .unwrap();
    (flame, pool)
}

/// Runs `work` while sampling the pool; returns (wall time, mean utilisation).
async fn measured<F: std::future::Future<Output = ()>>(pool: &Arc<ElasticPool>, work: F) -> (Duration, f64) {
    let stop = Arc::new(AtomicBool::new(false));
    let (p, s) = (pool.clone(), stop.clone());
    let sampler = tokio::spawn(async move {
        let (mut sum, mut n) = (0usize, 0usize);
        while !s.load(Ordering::Relaxed) {
            sum += p.stats().in_flight;
            n += 1;
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        sum as f64 / n.max(1) as f64
    });
    let started = Instant::now();
    work.await;
    let took = started.elapsed();
    stop.store(true, Ordering::Relaxed);
    let mean = sampler.await.unwrap();
    (took, mean / (RUNNERS * SLOTS) as f64)
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let (flame, pool) = warm_parent().await;
        let ideal = ITEM_TIME * ITEMS / (RUNNERS * SLOTS) as u32;
        let (map_time, map_util) = measured(&pool, async {
            let mut s = flame.map(WORK, 0..ITEMS);
            let mut n = 0;
            while let Some(r) = s.next().await {
                assert_eq!(r.unwrap(), n);
                n += 1;
            }
        })
        .await;
        let (hand_time, hand_util) = measured(&pool, async {
            let permits = Arc::new(tokio::sync::Semaphore::new(RUNNERS * SLOTS));
            let calls = (0..ITEMS).map(|n| {
                let (f, permits) = (flame.clone(), permits.clone());
                async move {
                    let _p = permits.acquire_owned().await.unwrap();
                    f.call(WORK, n).await.unwrap()
                }
            });
            futures::future::join_all(calls).await;
        })
        .await;
        println!("map utilisation: {RUNNERS} runners × {SLOTS} slots, {ITEMS} items of {ITEM_TIME:?} (ideal {ideal:?})");
        println!("| how | wall time | mean slots busy | vs ideal time |");
        println!("|---|---|---|---|");
        for (name, t, u) in [("flame.map (ordered)", map_time, map_util), ("hand-made join_all + semaphore (baseline)", hand_time, hand_util)] {
            println!(
                "| {name} | {:.0} ms | {:.1} % | {:.2}× |",
                t.as_secs_f64() * 1e3,
                u * 100.0,
                t.as_secs_f64() / ideal.as_secs_f64()
            );
        }
        println!("ratio map / baseline wall time: {:.2}", map_time.as_secs_f64() / hand_time.as_secs_f64());
        flame.shutdown().await.unwrap();
    });
}
