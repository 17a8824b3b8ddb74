//! Define a service once: `#[flame::service]` beside the explicit `Method` API.
//!
//! Run it with `cargo run --example service_macro`. With no `FLAME_MODE` set it runs in local
//! mode and prints what each call returned; with `FLAME_MODE=runner` the same binary serves
//! both services (the macro's and the hand-written one) to a parent.
//!
//! The trait below generates:
//! - `MathService::{SERVICE_ID, ADD, MUL, DIVIDE, COUNTDOWN}` — ordinary `Method` consts with
//!   explicit ids (`math`/`add`, `math`/`mul`, …), usable with `Flame::call`;
//! - `MathService::register(registry, impl)` — the registration of an implementation;
//! - `MathClient` — a typed client whose methods call through a `Flame` handle.

use flame::{CallOptions, Context, Error, Flame, Method, Registry};
use serde::{Deserialize, Serialize};
use std::time::Duration;

/// Why a division was refused: a typed application error that travels back to the caller.
#[derive(Debug, Serialize, Deserialize)]
pub enum MathError {
    /// The divisor was zero.
    DivisionByZero {
        /// The dividend.
        dividend: i64,
    },
}

impl std::fmt::Display for MathError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            MathError::DivisionByZero { dividend } => write!(f, "{dividend} / 0"),
        }
    }
}

/// Handlers may return their own error type when it converts into `flame::Error`.
impl From<MathError> for Error {
    fn from(e: MathError) -> Error {
        Error::app(e)
    }
}

/// Arithmetic, defined once. Service id `math`; the methods are positional on the wire, so
/// `add` interoperates with the TypeScript reference's `add(ctx, a, b)`.
#[flame::service(id = "math")]
pub trait Math {
    /// `math`/`add`.
    async fn add(&self, a: i64, b: i64) -> flame::Result<i64>;
    /// `math`/`mul`: the wire id differs from the Rust name; calls default to a 5 s timeout.
    #[flame(id = "mul", timeout_ms = 5000)]
    async fn multiply(&self, a: f64, b: f64) -> flame::Result<f64>;
    /// `math`/`divide`, with a typed error.
    async fn divide(&self, a: i64, b: i64) -> Result<i64, MathError>;
    /// `math`/`countdown`: takes the call's context (deadline, cancellation) first.
    async fn countdown(&self, ctx: Context, from: u32) -> flame::Result<Vec<u32>>;
}

/// The implementation: plain `async fn`s.
struct Calculator;

impl Math for Calculator {
    async fn add(&self, a: i64, b: i64) -> flame::Result<i64> {
        Ok(a + b)
    }

    async fn multiply(&self, a: f64, b: f64) -> flame::Result<f64> {
        Ok(a * b)
    }

    async fn divide(&self, a: i64, b: i64) -> Result<i64, MathError> {
        if b == 0 {
            return Err(MathError::DivisionByZero { dividend: a });
        }
        Ok(a / b)
    }

    async fn countdown(&self, ctx: Context, from: u32) -> flame::Result<Vec<u32>> {
        let mut out = Vec::new();
        for n in (0..=from).rev() {
            if ctx.is_cancelled() {
                return Err(Error::handler("cancelled"));
            }
            out.push(n);
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        Ok(out)
    }
}

/// The explicit API, for comparison: one hand-written method handle and handler.
pub const MEAN: Method<Vec<f64>, f64> = Method::new("stats", "mean");

fn registry() -> Registry {
    let explicit = Registry::new().handle(MEAN, |_ctx: Context, xs: Vec<f64>| async move {
        if xs.is_empty() {
            return Err(Error::handler("the mean of nothing"));
        }
        Ok(xs.iter().sum::<f64>() / xs.len() as f64)
    });
    MathService::register(explicit, Calculator)
}

#[tokio::main]
async fn main() -> Result<(), Error> {
    let flame = Flame::builder(registry()).from_env()?.start().await?;
    println!("flame service_macro: mode = {}", flame.mode());

    // The generated client.
    let math = MathClient::new(flame.clone());
    println!("math.add(2, 3)        = {}", math.add(2, 3).await?);
    println!("math.multiply(1.5, 4) = {}", math.multiply(1.5, 4.0).await?);
    println!("math.divide(84, 2)    = {}", math.divide(84, 2).await?);
    let err = math.divide(1, 0).await.expect_err("dividing by zero is refused");
    println!(
        "math.divide(1, 0)     = error {} ({:?})",
        err.code(),
        err.app_error::<MathError>()
    );
    let quick = math
        .clone()
        .with_options(CallOptions::new().timeout(Duration::from_secs(2)));
    println!("math.countdown(3)     = {:?}", quick.countdown(3).await?);

    // The generated consts are ordinary `Method`s...
    println!(
        "flame.call({}, (20, 22)) = {}",
        MathService::ADD,
        flame.call(MathService::ADD, (20, 22)).await?
    );
    // ...and a hand-written handle with the same ids and types reaches the same handler.
    const ADD_BY_HAND: Method<(i64, i64), i64> = Method::new("math", "add");
    println!(
        "flame.call(ADD_BY_HAND, (1, 1)) = {}",
        flame.call(ADD_BY_HAND, (1, 1)).await?
    );

    // The explicit API, side by side.
    println!(
        "flame.call({MEAN}, [1, 2, 3, 4]) = {}",
        flame.call(MEAN, vec![1.0, 2.0, 3.0, 4.0]).await?
    );

    flame.shutdown().await?;
    println!("done");
    Ok(())
}
