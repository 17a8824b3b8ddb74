//! ElasticPool checkout + release cost with 10, 100 and 1000 runners (in-memory runners: this
//! measures the pool's bookkeeping, not a network). `cargo bench -p flame-core --bench pool`.
//!
//! Prints, per pool size: nanoseconds per checkout+release on an idle pool, on a pool where
//! every runner is half loaded (the least-loaded set holds many distinct loads), and with 8
//! tasks doing it concurrently.
#![allow(clippy::unwrap_used, missing_docs)]

use flame_core::pool::RunnerTemplate;
use flame_core::testkit::MemoryBackend;
use flame_core::{CheckoutOptions, ElasticPool, Pool, PoolConfig, Registry, Secret};
use std::sync::Arc;
use std::time::{Duration, Instant};

const CONC: usize = 100;

async fn pool_of(n: usize) -> Arc<ElasticPool> {
    let backend = MemoryBackend::new(Registry::new());
    let transport = backend.transport().clone();
    let template = RunnerTemplate::new("bench", "parent", Secret::generate(), Arc::new(transport.clone()))
        .parent_timeout(Duration::from_secs(36_000));
    let pool = ElasticPool::builder("bench", Arc::new(backend), template)
        .config(
            PoolConfig::default()
                .min(n)
                .max(n)
                .max_concurrency(CONC)
                .health_interval(Duration::from_secs(3_600))
                .idle_shutdown_after(Duration::from_secs(3_600)),
        )
        .build()
        .unwrap();
    while pool.stats().runners < n {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    Arc::new(pool)
}

async fn per_op(pool: &ElasticPool, iters: u32) -> f64 {
    let opts = CheckoutOptions::default();
    let start = Instant::now();
    for _ in 0..iters {
        let lease = pool.checkout(&opts).await.unwrap();
        drop(lease);
    }
    start.elapsed().as_nanos() as f64 / f64::from(iters)
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        println!("ElasticPool checkout + release (max_concurrency {CONC})");
        println!(
            "{:>8} {:>14} {:>18} {:>22}",
            "runners", "idle ns/op", "half-loaded ns/op", "8 tasks ns/op (total)"
        );
        for n in [10usize, 100, 1000] {
            let pool = pool_of(n).await;
            let iters = 200_000;
            per_op(&pool, 10_000).await; // warm up
            let idle = per_op(&pool, iters).await;
            // Hold half of every runner's slots, with loads spread across runners.
            let mut held = Vec::new();
            for _ in 0..(n * CONC / 2) {
                held.push(pool.checkout(&CheckoutOptions::default()).await.unwrap());
            }
            let loaded = per_op(&pool, iters).await;
            drop(held);
            let tasks = 8u32;
            let start = Instant::now();
            let joins: Vec<_> = (0..tasks)
                .map(|_| {
                    let p = pool.clone();
                    tokio::spawn(async move { per_op(&p, iters / tasks).await })
                })
                .collect();
            for j in joins {
                j.await.unwrap();
            }
            let concurrent = start.elapsed().as_nanos() as f64 / f64::from(iters);
            println!("{n:>8} {idle:>14.0} {loaded:>18.0} {concurrent:>22.0}");
            pool.shutdown(Duration::from_secs(1)).await.unwrap();
        }
    });
}
