//! Observability: every call is a `tracing` span (`flame.call`, with one `flame.attempt` per
//! attempt; the runner's `flame.invoke`), and flame's metrics go through the `metrics` facade to
//! whatever recorder the application installs — here `metrics-exporter-prometheus`, whose text
//! this program prints at the end (serve it on `/metrics` in a real service).
//!
//! `cargo run --example observability` — a parent pricing 8 items on LocalProcess runners (the
//! same binary, `FLAME_MODE=runner`), then the Prometheus text of the `flame_*` metrics.
//! `RUST_LOG=flame=info` also shows the spans as they close.

use flame::{Context, Error, Method, Mode, PoolConfig, Registry};
use std::time::Duration;
use tracing_subscriber::fmt::format::FmtSpan;

/// Doubles a number after a short pause (so calls overlap and the pool grows).
pub const DOUBLE: Method<u64, u64> = Method::new("demo", "double");

fn registry() -> Registry {
    Registry::new().handle(DOUBLE, |_ctx: Context, n: u64| async move {
        tokio::time::sleep(Duration::from_millis(100)).await;
        Ok(n * 2)
    })
}

#[tokio::main]
async fn main() -> Result<(), Error> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_span_events(FmtSpan::CLOSE)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let metrics = metrics_exporter_prometheus::PrometheusBuilder::new()
        .install_recorder()
        .map_err(|e| Error::config(format!("cannot install the Prometheus recorder: {e}")))?;

    let flame = flame::builder(registry())
        .pool("default", PoolConfig::default().max(2).max_concurrency(4))
        .default_mode(Mode::Parent)
        .from_env()?
        .start()
        .await?;
    let mut calls = tokio::task::JoinSet::new();
    for n in 0..8u64 {
        let flame = flame.clone();
        calls.spawn(async move { flame.call(DOUBLE, n).await });
    }
    let mut sum = 0;
    while let Some(done) = calls.join_next().await {
        sum += done.map_err(|e| Error::handler(format!("call task failed: {e}")))??;
    }
    println!("8 calls in {} mode, results sum to {sum}", flame.mode());
    flame.shutdown().await?;

    println!("\nPrometheus text of flame's metrics (the parent's; each runner records its own):");
    for line in metrics.render().lines().filter(|l| l.contains("flame_")) {
        println!("{line}");
    }
    Ok(())
}
