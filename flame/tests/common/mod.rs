// Shared by the `#[flame::service]` integration tests (included with `mod common;`): the same
// service as flame-core's hand-written test registry, defined once as a trait.
#![allow(dead_code)]

use flame::{Context, Error};
use serde::{Deserialize, Serialize};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

#[derive(Serialize, Deserialize, Debug, PartialEq, Clone)]
pub struct Resize {
    pub url: String,
    pub width: u32,
}

/// A typed application error, converted with `Error::app`.
#[derive(Serialize, Deserialize, Debug, PartialEq)]
pub enum Declined {
    Insufficient { needed: u32 },
}

impl std::fmt::Display for Declined {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "declined")
    }
}

impl From<Declined> for Error {
    fn from(d: Declined) -> Error {
        Error::app(d)
    }
}

/// The same service as flame-core's hand-written test registry, defined once.
#[flame::service(id = "math")]
pub trait Math {
    /// `math`/`add`: two positional arguments.
    async fn add(&self, a: i64, b: i64) -> Result<i64, Error>;
    /// Renamed on the wire, with a default timeout and retry policy.
    #[flame(id = "multiply", timeout_ms = 2000, retries = 2)]
    async fn mul(&self, a: f64, b: f64) -> flame::Result<f64>;
    /// Takes the context: sleeps `ms` unless cancelled first.
    async fn slow(&self, ctx: Context, ms: u64) -> flame::Result<String>;
    /// No arguments.
    async fn count(&self) -> flame::Result<usize>;
    /// Panics.
    async fn explode(&self) -> flame::Result<()>;
    /// An untyped handler error.
    async fn fail(&self, msg: String) -> flame::Result<()>;
    /// A typed application error.
    async fn typed_fail(&self, needed: u32) -> Result<u32, Declined>;
    /// One struct argument.
    async fn resize(&self, req: Resize) -> flame::Result<String>;
    /// One argument that is itself a tuple: still one argument on the wire.
    async fn sum_pair(&self, pair: (i64, i64)) -> flame::Result<i64>;
    /// A default body (runs on the implementation's instance).
    async fn version(&self) -> flame::Result<String> {
        Ok("v1".to_owned())
    }
    /// A trailing `Option` may be left out by a JavaScript caller.
    async fn greet(&self, name: String, greeting: Option<String>) -> flame::Result<String>;
}

#[derive(Default)]
pub struct MathImpl {
    pub cancelled: Arc<AtomicUsize>,
    pub runs: AtomicUsize,
}

impl Math for MathImpl {
    async fn add(&self, a: i64, b: i64) -> Result<i64, Error> {
        Ok(a + b)
    }
    async fn mul(&self, a: f64, b: f64) -> flame::Result<f64> {
        Ok(a * b)
    }
    async fn slow(&self, ctx: Context, ms: u64) -> flame::Result<String> {
        let watcher = ctx.cancellation().clone();
        let cancelled = self.cancelled.clone();
        tokio::spawn(async move {
            watcher.cancelled().await;
            cancelled.fetch_add(1, Ordering::SeqCst);
        });
        tokio::time::sleep(Duration::from_millis(ms)).await;
        Ok(format!("slept {ms}"))
    }
    async fn count(&self) -> flame::Result<usize> {
        Ok(self.runs.fetch_add(1, Ordering::SeqCst) + 1)
    }
    async fn explode(&self) -> flame::Result<()> {
        panic!("handler exploded");
    }
    async fn fail(&self, msg: String) -> flame::Result<()> {
        Err(Error::handler(msg))
    }
    async fn typed_fail(&self, needed: u32) -> Result<u32, Declined> {
        Err(Declined::Insufficient { needed })
    }
    async fn resize(&self, req: Resize) -> flame::Result<String> {
        Ok(format!("{}@{}w", req.url, req.width))
    }
    async fn sum_pair(&self, (a, b): (i64, i64)) -> flame::Result<i64> {
        Ok(a + b)
    }
    async fn greet(&self, name: String, greeting: Option<String>) -> flame::Result<String> {
        Ok(format!("{}, {name}", greeting.as_deref().unwrap_or("hello")))
    }
}

/// The service id defaults to the trait name in snake_case.
#[flame::service]
pub trait ImageTools {
    #[flame(pool = "gpu")]
    async fn upscale(&self, url: String) -> flame::Result<String>;
}

pub struct Upscaler;

impl ImageTools for Upscaler {
    async fn upscale(&self, url: String) -> flame::Result<String> {
        Ok(format!("{url}@2x"))
    }
}

/// Waits (bounded) until the handler has seen its cancellation.
pub async fn wait_for_one(counter: &AtomicUsize) {
    for _ in 0..200 {
        if counter.load(Ordering::SeqCst) == 1 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("the handler was not cancelled within 2 s");
}
