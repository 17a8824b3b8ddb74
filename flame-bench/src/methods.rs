//! The methods our benchmark runner serves (`flame-bench runner`), shared with the driver.

use bytes::Bytes;
use flame_core::{Context, Method, Registry, Streamed};
use futures::StreamExt;
use std::time::{SystemTime, UNIX_EPOCH};

/// `math/add(2, 3)`: the small call every server row measures.
pub const ADD: Method<(i64, i64), i64> = Method::new("math", "add");
/// An upload: the bytes in, their length out (up to 1 GiB).
pub const UPLOAD: Method<Bytes, u64> = Method::new("bench", "upload").with_max_request_bytes(1 << 30);
/// A download: a length in, that many bytes out (up to 1 GiB).
pub const DOWNLOAD: Method<u64, Bytes> = Method::new("bench", "download").with_max_response_bytes(1 << 30);
/// `n` items `(index, nanoseconds since the epoch when the handler yielded it)`, as fast as
/// they are read.
pub const TICKS: Method<u32, Streamed<(u32, u64)>> = Method::new("bench", "ticks");

/// Wall-clock nanoseconds since the Unix epoch (one clock for every process on the machine).
pub fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

/// The runner's registry.
///
/// ```
/// let r = flame_bench::methods::registry();
/// assert!(r.contains("bench", "upload") && r.contains("math", "add"));
/// ```
pub fn registry() -> Registry {
    Registry::new()
        .handle(ADD, |_ctx: Context, (a, b): (i64, i64)| async move { Ok(a + b) })
        .handle(UPLOAD, |_ctx: Context, data: Bytes| async move {
            Ok(data.len() as u64)
        })
        .handle(DOWNLOAD, |_ctx: Context, n: u64| async move {
            Ok(Bytes::from(vec![0xA5u8; n as usize]))
        })
        .handle_stream(TICKS, |_ctx: Context, n: u32| {
            futures::stream::iter(0..n).map(|i| Ok((i, now_ns())))
        })
}
