//! The program the reliability scenarios start: a flame runner serving
//! [`flame_reliability::methods`], or (with `REL_ROLE=parent`) a parent that keeps a pool of
//! such runners alive until it is killed.
//!
//! Runner mode (`FLAME_MODE=runner`, as a pool starts it) reads, besides the `FLAME_*`
//! variables: `REL_HEADER_TIMEOUT_MS`, `REL_BODY_TIMEOUT_MS`, `REL_DRAIN_GRACE_MS` (server
//! limits) and `REL_LOG_DIR` (execution logs).
//!
//! Parent mode (`REL_ROLE=parent`): `REL_APP` (app name), `REL_STATE_DIR` (LocalProcess pid
//! files), `REL_RUNNERS` (pool min = max), `FLAME_PARENT_TIMEOUT`; prints
//! `PARENT_READY <parent id>` once every runner serves, then waits to be killed.

use flame_core::{Flame, LocalProcess, Mode, PoolConfig};
use flame_http::{ClientOptions, HttpExt, ServerOptions};
use flame_reliability::methods::registry;
use std::io::Write;
use std::time::Duration;

fn millis(var: &str, default: u64) -> Duration {
    Duration::from_millis(
        std::env::var(var)
            .ok()
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(default),
    )
}

async fn runner() -> flame_core::Result<()> {
    let server = ServerOptions::default()
        .header_read_timeout(millis("REL_HEADER_TIMEOUT_MS", 30_000))
        .body_read_timeout(millis("REL_BODY_TIMEOUT_MS", 30_000))
        .drain_grace(millis("REL_DRAIN_GRACE_MS", 30_000));
    let builder = Flame::builder(registry())
        .http_with(ClientOptions::default(), server)
        .from_env()?;
    if builder.current_config().mode != Mode::Runner {
        return Err(flame_core::Error::config(
            "rel_runner serves only as a runner (FLAME_MODE=runner) or as a parent (REL_ROLE=parent)",
        ));
    }
    // Serves until SIGTERM or the parent is gone, then exits the process.
    builder.start().await?;
    Ok(())
}

async fn parent() -> flame_core::Result<()> {
    let app = std::env::var("REL_APP").unwrap_or_else(|_| "rel".into());
    let runners: usize = std::env::var("REL_RUNNERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2);
    let mut backend = LocalProcess::current_exe()
        .env("REL_ROLE", "runner")
        .grace(Duration::from_secs(2));
    if let Ok(dir) = std::env::var("REL_STATE_DIR") {
        backend = backend.state_dir(dir);
    }
    let flame = Flame::builder(registry())
        .http()
        .app(app)
        .backend(backend)
        .pool("default", PoolConfig::default().min(runners).max(runners))
        .handle_signals(false)
        .from_env()?
        .mode(Mode::Parent)
        .start()
        .await?;
    let ready = async {
        loop {
            if flame
                .pool("default")
                .is_some_and(|p| p.stats().runners >= runners)
            {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(60), ready)
        .await
        .map_err(|_| flame_core::Error::config("runners did not start within 60 s"))?;
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "PARENT_READY {}", flame.parent_id());
    let _ = out.flush();
    drop(out);
    // Stay alive (pinging the runners) until the test kills this process.
    tokio::time::sleep(Duration::from_secs(600)).await;
    flame.shutdown().await
}

#[tokio::main]
async fn main() {
    let result = match std::env::var("REL_ROLE").as_deref() {
        Ok("parent") => parent().await,
        _ => runner().await,
    };
    if let Err(e) = result {
        eprintln!("rel_runner: {e}");
        std::process::exit(1);
    }
}
