//! # flame-core
//!
//! The core of flame, FLAME for Rust: run chosen functions on short-lived runners started from
//! your own binary. This crate holds services, the registry, the invocation context, errors,
//! configuration, the wire codec, the [`Transport`], [`Backend`] and [`Pool`] traits, and the
//! runner-side [`Dispatcher`]. It has no HTTP and no cloud SDK: those are adapter crates, put
//! together by the `flame` facade.
//!
//! ```
//! # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
//! use flame_core::{Context, Flame, Method, Registry};
//!
//! #[derive(serde::Serialize, serde::Deserialize)]
//! struct Resize { url: String, width: u32 }
//!
//! const RESIZE: Method<Resize, String> = Method::new("media", "resize");
//!
//! let registry = Registry::new().handle(RESIZE, |_ctx: Context, r: Resize| async move {
//!     Ok(format!("{}@{}w", r.url, r.width))
//! });
//! let flame = Flame::builder(registry).start().await?; // local mode by default
//! let out = flame.call(RESIZE, Resize { url: "cat.png".into(), width: 128 }).await?;
//! assert_eq!(out, "cat.png@128w");
//! flame.shutdown().await?;
//! # Ok::<(), flame_core::Error>(())
//! # }).unwrap();
//! ```

pub mod backend;
pub mod background;
pub mod call;
pub mod codec;
pub mod config;
pub mod context;
pub mod error;
pub mod flame;
pub mod guard;
pub mod method;
pub mod pool;
pub mod registry;
pub mod runner;
pub mod spawn_guard;
pub mod stream;
pub mod telemetry;
#[cfg(feature = "testkit")]
pub mod testkit;
pub mod transport;

pub use backend::{
    AddressResolver, Backend, LocalProcess, ReapScope, RunnerAddress, RunnerHandle, RunnerState, SpawnRequest,
};
pub use background::{CallHandle, CastError, CastHandle, MapOptions, PlaceOptions, PlacedTask};
pub use call::{CallDefaults, CallOptions, RetryBudget, RetryPolicy};
pub use config::{Config, Mode, Secret};
pub use context::Context;
pub use error::{Error, ErrorCode, Result};
pub use flame::{Flame, FlameBuilder};
pub use method::{Method, PayloadLimits, Streamed};
pub use pool::{
    CheckoutOptions, ElasticPool, Lease, LeaseOutcome, Pool, PoolConfig, PoolEvent, PoolStats, StaticPool,
};
pub use registry::Registry;
pub use runner::{DispatchReply, Dispatcher, RunnerServer};
pub use stream::{CallStream, ItemStream};
pub use transport::{Args, Endpoint, Invocation, Reply, RunnerStatus, Transport};
