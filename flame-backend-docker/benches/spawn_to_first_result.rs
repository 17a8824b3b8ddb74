//! Spawn → first result for a Docker runner: `spawn` (create, start, `FLAME_READY` from the
//! log stream, ping until healthy) plus the first `math/add` call, then `terminate`.
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
use flame_core::Backend;
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
    let warm = backend
        .spawn(spawn_request(&app, "bench", Duration::from_secs(30)))
        .await
        .unwrap();
    backend.terminate(&warm).await.unwrap();

    let (mut spawn, mut first, mut second, mut terminate) = (vec![], vec![], vec![], vec![]);
    for _ in 0..rounds {
        let t0 = Instant::now();
        let handle = backend
            .spawn(spawn_request(&app, "bench", Duration::from_secs(30)))
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
    println!("Docker runner ({}), {rounds} rounds:", backend.docker_host());
    summary("spawn (until ping ok)", spawn);
    summary("spawn -> first result", first);
    summary("a later call", second);
    summary("terminate (stop + remove)", terminate);
}
