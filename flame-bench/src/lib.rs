//! # flame-bench
//!
//! The benchmarks of flame (issue 8, results in `BENCHMARKS.md` at the repository root).
//!
//! - The `flame-bench` binary (`cargo run --release -p flame-bench`) starts, on 127.0.0.1, our
//!   runner (`flame-bench runner`: [`methods`]), the TypeScript reference runner under Bun and a
//!   raw hyper echo server, drives each with the **same** load generator ([`loadgen`]) — JSON
//!   and binary codec —, compares the full parent paths, moves 1/16/256 MiB payloads up and
//!   down against raw hyper ([`payload`]), times the first item of a streamed result, measures
//!   spawn → first result and idle memory, and prints the tables of `BENCHMARKS.md`;
//!   `--sustained-ms N` adds a sustained signed run counting 503s.
//! - `cargo bench -p flame-bench` runs the criterion micro-benchmarks (local-mode call
//!   overhead, codec, pool checkout, HMAC).
//!
//! The library holds the parts the binary is made of, so they can be tested on their own:
//!
//! ```
//! # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
//! use flame_bench::loadgen::{self, LoadConfig, RequestKind};
//! use std::time::Duration;
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
//! let addr = listener.local_addr().unwrap();
//! tokio::spawn(flame_bench::echo::serve(listener));
//! let config = LoadConfig {
//!     connections: 2,
//!     warmup: Duration::from_millis(20),
//!     duration: Duration::from_millis(100),
//!     max_requests: 1_000,
//! };
//! let report = loadgen::run(addr, &RequestKind::echo(flame_core::codec::Codec::Json), &config).await;
//! assert!(report.ok > 0 && report.errors == 0, "{report:?}");
//! # });
//! ```

pub mod echo;
pub mod loadgen;
pub mod methods;
pub mod payload;
pub mod procs;
pub mod stats;
