//! # flame-reliability
//!
//! The reliability and security suite of flame (issue 9): load, faults and hostile input as
//! tests that can fail — no call lost or run twice, no runner leaked, no unsigned request
//! running a handler. The scenarios live in `tests/`; this crate holds what they share:
//!
//! - [`methods`]: the methods the `rel_runner` binary serves. [`methods::RECORD`] counts every
//!   handler execution per caller-chosen tag (in memory, and appended to a per-runner log file
//!   that survives `kill -9`); [`methods::STATS`] reports the counts and the runner's RSS.
//! - [`procfs`]: processes seen through `/proc` (RSS, liveness, runners found by their
//!   environment) and cleanup guards that kill what a failed test left.
//! - [`wire`]: hand-made requests for hostile-input tests (signed envelopes, raw HTTP/1.1 over
//!   TCP).
//!
//! ```
//! use flame_reliability::methods::{registry, Record, RECORD};
//! # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
//! // In local mode the handlers run in-process; the tests run them in `rel_runner` processes.
//! let flame = flame_core::Flame::builder(registry()).start().await?;
//! let first = flame.call(RECORD, Record::new("call-1")).await?;
//! assert_eq!(first.runs, 1);
//! flame.shutdown().await?;
//! # Ok::<(), flame_core::Error>(())
//! # }).unwrap();
//! ```

pub mod methods;
pub mod procfs;
pub mod wire;
