//! # flame — FLAME for Rust
//!
//! Run chosen functions on short-lived runners started from your own binary, with a different
//! entrypoint. One binary, three modes: **local** (in-process), **parent** (routes calls to
//! runners) and **runner** (serves registered handlers). This is the crate applications depend
//! on; adapters switch on with features (`http`, `docker`, `ecs`, `fly`).
//!
//! ```
//! # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
//! use flame::{CallOptions, Context, Flame, Method, Registry};
//! use std::time::Duration;
//!
//! pub const ADD: Method<(i64, i64), i64> = Method::new("math", "add");
//!
//! let registry = Registry::new().handle(ADD, |_ctx: Context, (a, b): (i64, i64)| async move { Ok(a + b) });
//! let flame = Flame::builder(registry).from_env()?.start().await?;
//! assert_eq!(flame.call(ADD, (2, 3)).await?, 5);
//! let sum = flame.call_with(ADD, (4, 5), CallOptions::new().timeout(Duration::from_secs(1))).await?;
//! assert_eq!(sum, 9);
//! flame.shutdown().await?;
//! # Ok::<(), flame::Error>(())
//! # }).unwrap();
//! ```

pub use flame_core::*;
