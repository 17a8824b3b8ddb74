//! Interop with the TypeScript reference (`@monotykamary/flame`): one binary, mode from the
//! environment.
//!
//! - **Runner** (`FLAME_MODE=runner`): serves the methods of the reference's `e2e/services.ts`
//!   with the same ids and behaviour (`math`/`add`, `math`/`sub`, `math.add`/`default`,
//!   `decorated`/`add`, `decorated`/`mul`, `utils`/`ping`) — taking what they take: JavaScript
//!   numbers are `f64`, so `math/add(0.1, 0.2)` is `0.30000000000000004` as in JavaScript, and a
//!   whole result is written as JavaScript writes it (`5`, not `5.0`) — plus `utils`/`nonce` (a fresh UUID
//!   per run), `utils`/`whoami` (pid, hostname, cgroup, runner id) and `utils`/`sleep` (sleeps
//!   `ms`, returns it). It prints `FLAME_READY <url>` once listening, so the reference's
//!   `e2e/parent.ts` can call it (`RUNNER_URL=<url> FLAME_SECRET=… bun e2e/parent.ts`).
//! - **Parent** (`FLAME_MODE=parent`, or just `FLAME_RUNNER_URL` set): makes the calls
//!   `e2e/parent.ts` makes against `FLAME_RUNNER_URL` (e.g. the reference's `e2e/runner.ts`),
//!   checks each result, prints `E2E_OK` and exits 0; on a failure it names the call and exits 1.
//! - **Local** (nothing set): the same checks in-process.
//!
//! ```sh
//! FLAME_MODE=runner FLAME_SECRET=flame-secret FLAME_LISTEN=127.0.0.1:8080 cargo run --example interop
//! FLAME_RUNNER_URL=http://127.0.0.1:8080 FLAME_SECRET=flame-secret cargo run --example interop
//! ```

use decorated::{DecoratedClient, DecoratedService};
use flame::{Context, Error, Flame, Method, Mode, Registry};
use serde_json::{json, Value};
use std::time::Duration;

/// `flame.service("math", { add, sub })`: `add(a: number, b: number)`, so `f64`s.
pub const MATH_ADD: Method<(f64, f64), f64> = Method::new("math", "add");
/// `math`/`sub`.
pub const MATH_SUB: Method<(f64, f64), f64> = Method::new("math", "sub");
/// `flame.fn("math.add", …)`: service `math.add`, method `default`.
pub const ADD_FN: Method<(f64, f64), f64> = Method::new("math.add", "default");
/// `@flame({ serviceId: "utils", id: "ping" }) static ping()`.
pub const PING: Method<(), String> = Method::new("utils", "ping");
/// A fresh random UUID on every run (tells one run from two).
pub const NONCE: Method<(), String> = Method::new("utils", "nonce");
/// Where this runner runs: `{pid, hostname, cgroup, runner_id}`.
pub const WHOAMI: Method<(), Value> = Method::new("utils", "whoami");
/// Sleeps `ms` milliseconds, returns `ms`.
pub const SLEEP: Method<u64, u64> = Method::new("utils", "sleep");

/// The `@flameService("decorated")` class of `e2e/services.ts`: `add` (decorated with
/// `id: "add"`) and `mul` (registered by the class decorator under its property name) —
/// defined once with `#[flame::service]`, flame-rs's counterpart of those decorators. (The
/// reference routes `add` to its `gpu` pool; a Rust runner has no pools, and this binary's
/// parent has one, so no `pool` is set here.)
mod decorated {
    /// The service: `decorated`/`add` and `decorated`/`mul`, positional `(a, b)` like the
    /// reference's methods (JavaScript numbers: `f64`). Generates
    /// `DecoratedService::{ADD, MUL, register}` and `DecoratedClient`.
    #[flame::service(id = "decorated")]
    pub trait Decorated {
        /// `decorated`/`add`.
        #[flame(id = "add")]
        async fn add(&self, a: f64, b: f64) -> flame::Result<f64>;
        /// `decorated`/`mul`.
        async fn mul(&self, a: f64, b: f64) -> flame::Result<f64>;
    }

    /// The implementation the runner serves.
    pub struct Calculator;

    impl Decorated for Calculator {
        async fn add(&self, a: f64, b: f64) -> flame::Result<f64> {
            Ok(a + b)
        }

        async fn mul(&self, a: f64, b: f64) -> flame::Result<f64> {
            Ok(a * b)
        }
    }
}

fn whoami() -> Value {
    let read = |p: &str| std::fs::read_to_string(p).ok().map(|s| s.trim().to_owned());
    let hostname = read("/etc/hostname")
        .filter(|s| !s.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_default();
    json!({
        "pid": std::process::id(),
        "hostname": hostname,
        "cgroup": read("/proc/self/cgroup").unwrap_or_default(),
        "runner_id": std::env::var("FLAME_RUNNER_ID").ok(),
    })
}

fn registry() -> Registry {
    let registry = Registry::new()
        .handle(
            MATH_ADD,
            |_ctx: Context, (a, b): (f64, f64)| async move { Ok(a + b) },
        )
        .handle(
            MATH_SUB,
            |_ctx: Context, (a, b): (f64, f64)| async move { Ok(a - b) },
        )
        .handle(
            ADD_FN,
            |_ctx: Context, (a, b): (f64, f64)| async move { Ok(a + b) },
        )
        .handle(PING, |_ctx: Context, ()| async move { Ok("pong".to_owned()) })
        .handle(NONCE, |_ctx: Context, ()| async move {
            Ok(uuid::Uuid::new_v4().to_string())
        })
        .handle(WHOAMI, |_ctx: Context, ()| async move { Ok(whoami()) })
        .handle(SLEEP, |ctx: Context, ms: u64| async move {
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(ms)) => Ok(ms),
                _ = ctx.cancelled() => Err(Error::new(flame::ErrorCode::Timeout, "sleep cancelled")),
            }
        });
    DecoratedService::register(registry, decorated::Calculator)
}

/// The calls of the reference's `e2e/parent.ts`, in its order, with its expected results.
async fn e2e_calls(flame: &Flame) -> Result<(), String> {
    async fn check<Req, Resp>(
        flame: &Flame,
        name: &str,
        method: Method<Req, Resp>,
        req: Req,
        want: Resp,
    ) -> Result<(), String>
    where
        Req: serde::Serialize + Send + 'static,
        Resp: serde::de::DeserializeOwned + PartialEq + std::fmt::Debug + Send + 'static,
    {
        match flame.call(method, req).await {
            Ok(got) if got == want => Ok(()),
            Ok(got) => Err(format!("{name}: expected {want:?}, got {got:?}")),
            Err(e) => Err(format!("{name}: {e}")),
        }
    }
    check(flame, "math/add(2, 3)", MATH_ADD, (2.0, 3.0), 5.0).await?;
    check(flame, "math/sub(5, 3)", MATH_SUB, (5.0, 3.0), 2.0).await?;
    check(flame, "math.add/default(10, 5)", ADD_FN, (10.0, 5.0), 15.0).await?;
    check(
        flame,
        "decorated/add(4, 6)",
        DecoratedService::ADD,
        (4.0, 6.0),
        10.0,
    )
    .await?;
    check(
        flame,
        "decorated/mul(3, 7)",
        DecoratedService::MUL,
        (3.0, 7.0),
        21.0,
    )
    .await?;
    check(flame, "utils/ping()", PING, (), "pong".to_owned()).await?;
    // JavaScript numbers: fractions add as in JavaScript, on either runner.
    check(
        flame,
        "math/add(0.1, 0.2)",
        MATH_ADD,
        (0.1, 0.2),
        0.30000000000000004,
    )
    .await?;
    check(
        flame,
        "decorated/mul(1.5, 2)",
        DecoratedService::MUL,
        (1.5, 2.0),
        3.0,
    )
    .await?;
    // The generated client, as the reference's parent calls `decorated.add(1, 1)`.
    match DecoratedClient::new(flame.clone()).add(1.0, 1.0).await {
        Ok(2.0) => {}
        Ok(got) => return Err(format!("decorated/add(1, 1): expected 2, got {got}")),
        Err(e) => return Err(format!("decorated/add(1, 1): {e}")),
    }
    Ok(())
}

#[tokio::main]
async fn main() -> Result<(), Error> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_writer(std::io::stderr)
        .init();
    let mut builder = flame::builder(registry()).from_env()?;
    let config = builder.current_config();
    if config.mode == Mode::Local && !config.runner_urls.is_empty() {
        builder = builder.mode(Mode::Parent);
    }
    // Runner mode serves here until shut down (SIGTERM drains), then exits.
    let flame = builder.start().await?;
    let outcome = e2e_calls(&flame).await;
    flame.shutdown().await?;
    match outcome {
        Ok(()) => {
            println!("E2E_OK");
            Ok(())
        }
        Err(failed) => {
            eprintln!("E2E_FAILED {failed}");
            std::process::exit(1);
        }
    }
}
