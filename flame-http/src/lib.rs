//! # flame-http
//!
//! The HTTP transport of flame (FLAME for Rust): wire protocol v1 (DESIGN.md §8) over hyper 1,
//! compatible with the TypeScript `@monotykamary/flame` runner and parent in both directions.
//!
//! - [`HttpServer`] serves core's [`Dispatcher`](flame_core::Dispatcher) in runner mode:
//!   `POST /invoke` and `GET /health`; it prints `FLAME_READY <url>` once listening and drains
//!   on shutdown and SIGTERM.
//! - [`HttpTransport`] is core's [`Transport`](flame_core::Transport) for parents: pooled
//!   keep-alive HTTP/1.1, signed requests, one attempt per `invoke` (deadlines and retries are
//!   core's: see `flame_core::call`).
//!
//! Security and limits: HMAC-SHA256 over the raw body checked in constant time, an `iat`/`exp`
//! window with 60 s skew, replay rejection of `invocationId`s inside their window, a body limit
//! enforced while reading, a cap on calls in flight, header and body read timeouts, and
//! idempotency keys honoured (a key is run once; duplicates get the first result).
//!
//! ```no_run
//! use flame_core::{Context, Flame, Method, Registry};
//! use flame_http::HttpExt;
//!
//! const ADD: Method<(i64, i64), i64> = Method::new("math", "add");
//!
//! #[tokio::main]
//! async fn main() -> flame_core::Result<()> {
//!     let registry = Registry::new().handle(ADD, |_ctx: Context, (a, b): (i64, i64)| async move { Ok(a + b) });
//!     // FLAME_MODE=runner serves over HTTP; FLAME_MODE=parent FLAME_RUNNER_URL=... calls it.
//!     let flame = Flame::builder(registry).http().from_env()?.start().await?;
//!     println!("{}", flame.call(ADD, (2, 3)).await?);
//!     flame.shutdown().await
//! }
//! ```

pub mod client;
pub mod server;
pub mod sign;
pub mod wire;

pub use client::{ClientOptions, HttpTransport};
pub use server::{serve, BoundServer, HttpServer, ServerOptions};

use flame_core::FlameBuilder;
use std::sync::Arc;

/// Wires the HTTP transport and server into a [`FlameBuilder`].
///
/// ```
/// use flame_http::HttpExt;
/// let builder = flame_core::Flame::builder(flame_core::Registry::new()).http();
/// # let _ = builder;
/// ```
pub trait HttpExt {
    /// Uses [`HttpTransport::new`] (parent mode) and [`HttpServer::new`] (runner mode).
    fn http(self) -> Self;

    /// Uses the given transport and server options.
    fn http_with(self, client: ClientOptions, server: ServerOptions) -> Self;
}

impl HttpExt for FlameBuilder {
    fn http(self) -> Self {
        self.transport(Arc::new(HttpTransport::new()))
            .server(Arc::new(HttpServer::new()))
    }

    fn http_with(self, client: ClientOptions, server: ServerOptions) -> Self {
        self.transport(Arc::new(HttpTransport::with_options(client)))
            .server(Arc::new(HttpServer::with_options(server)))
    }
}
