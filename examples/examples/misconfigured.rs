//! A deliberately misconfigured program, for the spawn-safety tests (and for anyone who wants
//! to see the fences work): the quickstart's shape **without** `.from_env()`, so nothing in
//! `main` reads `FLAME_MODE=runner`, and — with the argument `explicit-parent` — with a
//! hard-coded `.mode(Mode::Parent)` that would beat `FLAME_MODE`.
//!
//! Before flame's spawn-safety rules every runner such a program started ran `main` as a parent
//! again and started runners of its own, without bound. Now a process a flame parent started as
//! a runner serves as a runner whatever its code says, a runner's pools never spawn (spawn
//! depth), a crash loop stops itself, and a spawn budget caps starts: this program prices its
//! calls on at most 3 runner processes and exits.
//!
//! ```sh
//! cargo run --example misconfigured                    # default_mode(Parent), no from_env
//! cargo run --example misconfigured -- explicit-parent # mode(Parent), no from_env
//! ```

use flame::{Context, Error, Method, Mode, PoolConfig, Registry};
use std::collections::BTreeSet;
use std::time::Duration;

/// Which process served the call, after a short pause (so calls overlap and the pool grows).
pub const WHOAMI: Method<u64, u32> = Method::new("safety", "whoami");

fn registry() -> Registry {
    Registry::new().handle(WHOAMI, |_ctx: Context, pause_ms: u64| async move {
        tokio::time::sleep(Duration::from_millis(pause_ms)).await;
        Ok(std::process::id())
    })
}

#[tokio::main]
async fn main() -> Result<(), Error> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let explicit = std::env::args().nth(1).as_deref() == Some("explicit-parent");
    let builder = flame::builder(registry()).pool("default", PoolConfig::default().max(3).max_concurrency(2));
    // The mistake under test: no `.from_env()?`, and the mode forced to parent in code.
    let builder = if explicit {
        builder.mode(Mode::Parent)
    } else {
        builder.default_mode(Mode::Parent)
    };
    let flame = builder.start().await?;
    println!(
        "misconfigured ({}): pid {} is the {} ",
        if explicit {
            "explicit parent"
        } else {
            "no from_env"
        },
        std::process::id(),
        flame.mode()
    );
    let mut calls = tokio::task::JoinSet::new();
    for _ in 0..6 {
        let flame = flame.clone();
        calls.spawn(async move { flame.call(WHOAMI, 300).await });
    }
    let mut runners = BTreeSet::new();
    while let Some(done) = calls.join_next().await {
        let pid = done.map_err(|e| Error::handler(format!("call task failed: {e}")))??;
        println!("served by pid {pid}");
        runners.insert(pid);
    }
    println!("6 calls served by {} runner process(es)", runners.len());
    flame.shutdown().await
}
