//! Spawn → first result for a Docker runner: a start as a pool makes it (`spawn`: create,
//! start, `FLAME_READY` from the log stream; then core's readiness probe pings until healthy)
//! plus the first `math/add` call, then `terminate`; and the
//! same through flame's elastic pool (a cold pool's first call boots a runner container).
//!
//! ```sh
//! cargo test -p flame-backend-docker            # builds the docker_runner example
//! cargo bench -p flame-backend-docker --bench spawn_to_first_result
//! ```
//!
//! Needs a running dockerd; prints min / median / max over `FLAME_BENCH_ROUNDS` rounds
//! (default 10).
#![allow(clippy::unwrap_used, missing_docs)]

#[path = "../tests/common/mod.rs"]
mod common;

use common::*;
use flame_core::{Backend, Context, Flame, Method, Mode, PoolConfig, Registry};
use flame_http::HttpExt;
use std::time::{Duration, Instant};

fn summary(name: &str, mut samples: Vec<Duration>) {
    samples.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    println!(
        "{name:<28} min {:>7.1} ms   median {:>7.1} ms   max {:>7.1} ms   (n = {})",
        ms(samples[0]),
        ms(samples[samples.len() / 2]),
        ms(samples[samples.len() - 1]),
        samples.len()
    );
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    if !docker_available() {
        return;
    }
    let rounds: usize = std::env::var("FLAME_BENCH_ROUNDS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(10);
    let app = unique_app("bench");
    let _cleanup = Cleanup::new(&app);
    let backend = backend_builder().build().unwrap();
    // Warm-up: image build, API negotiation, page cache.
    let warm = start(&backend, spawn_request(&app, "bench", Duration::from_secs(30)))
        .await
        .unwrap();
    backend.terminate(&warm).await.unwrap();

    let (mut spawn, mut first, mut second, mut terminate) = (vec![], vec![], vec![], vec![]);
    for _ in 0..rounds {
        let t0 = Instant::now();
        let handle = start(&backend, spawn_request(&app, "bench", Duration::from_secs(30)))
            .await
            .unwrap();
        spawn.push(t0.elapsed());
        let sum: i64 = call(&handle.endpoint, "math", "add", &(2i64, 3i64))
            .await
            .unwrap();
        first.push(t0.elapsed());
        assert_eq!(sum, 5);
        let t1 = Instant::now();
        let _: i64 = call(&handle.endpoint, "math", "add", &(4i64, 5i64))
            .await
            .unwrap();
        second.push(t1.elapsed());
        let t2 = Instant::now();
        backend.terminate(&handle).await.unwrap();
        terminate.push(t2.elapsed());
    }
    // Through the pool: a parent whose pool has no runner yet makes its first call.
    const ADD: Method<(i64, i64), i64> = Method::new("math", "add");
    let mut pool_first = vec![];
    for _ in 0..rounds {
        let registry =
            Registry::new().handle(ADD, |_ctx: Context, (a, b): (i64, i64)| async move { Ok(a + b) });
        let flame = Flame::builder(registry)
            .http()
            .mode(Mode::Parent)
            .app(app.clone())
            .handle_signals(false)
            .pool(
                "default",
                PoolConfig::default().max(1).boot_timeout(Duration::from_secs(30)),
            )
            .backend(backend.clone())
            .start()
            .await
            .unwrap();
        let t0 = Instant::now();
        assert_eq!(flame.call(ADD, (2, 3)).await.unwrap(), 5);
        pool_first.push(t0.elapsed());
        flame.shutdown().await.unwrap();
    }

    println!("Docker runner ({}), {rounds} rounds:", backend.docker_host());
    summary("start (until ping ok)", spawn);
    summary("spawn -> first result", first);
    summary("a later call", second);
    summary("terminate (stop + remove)", terminate);
    summary("pool: cold first call", pool_first);
}
