//! LocalProcess: time from an empty pool to the first result (spawn this executable as a
//! runner, read `FLAME_READY`, ping, invoke over signed HTTP), then the warm call latency.
//! `cargo bench -p flame-examples --bench local_process_spawn` (release build).
//!
//! The bench binary is its own runner: with `FLAME_MODE=runner` it serves `math`/`add`.
#![allow(clippy::unwrap_used, missing_docs)]

use flame::{Context, Flame, LocalProcess, Method, Mode, PoolConfig, Registry};
use std::time::{Duration, Instant};

const ADD: Method<(i64, i64), i64> = Method::new("math", "add");

fn registry() -> Registry {
    Registry::new().handle(ADD, |_ctx: Context, (a, b): (i64, i64)| async move { Ok(a + b) })
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

#[tokio::main]
async fn main() {
    if std::env::var("FLAME_MODE").as_deref() == Ok("runner") {
        // Serves until the parent ends it, then exits.
        let _ = flame::builder(registry()).from_env().unwrap().start().await;
        return;
    }
    let rounds = 15;
    let warm_calls = 500;
    let mut first = Vec::new();
    let mut warm = Vec::new();
    for _ in 0..rounds {
        let started = Instant::now();
        let flame: Flame = flame::builder(registry())
            .mode(Mode::Parent)
            .backend(LocalProcess::current_exe())
            .pool("default", PoolConfig::default().max(1))
            .handle_signals(false)
            .start()
            .await
            .unwrap();
        assert_eq!(flame.call(ADD, (2, 3)).await.unwrap(), 5);
        first.push(started.elapsed());
        let t = Instant::now();
        for i in 0..warm_calls {
            assert_eq!(flame.call(ADD, (i, 1)).await.unwrap(), i + 1);
        }
        warm.push(t.elapsed() / warm_calls as u32);
        flame.shutdown().await.unwrap();
    }
    first.sort();
    warm.sort();
    println!("LocalProcess, {rounds} rounds (release build, runner = this executable)");
    println!(
        "  spawn -> first result: min {:.1} ms, median {:.1} ms, max {:.1} ms",
        ms(first[0]),
        ms(first[rounds / 2]),
        ms(first[rounds - 1])
    );
    println!(
        "  warm call (sequential, signed HTTP): median {:.3} ms",
        ms(warm[rounds / 2])
    );
}
