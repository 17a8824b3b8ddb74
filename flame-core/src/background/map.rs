//! [`Flame::map`]: one method over many inputs, with bounded parallelism, as a stream.

use crate::call::CallOptions;
use crate::config::Mode;
use crate::error::Result;
use crate::flame::Flame;
use crate::method::Method;
use futures::stream::{self, BoxStream, Stream, StreamExt};
use serde::de::DeserializeOwned;
use serde::Serialize;

/// How [`Flame::map_with`] runs: parallelism, what one failure does, and the options of each
/// call.
///
/// ```
/// use flame_core::{CallOptions, MapOptions};
/// let opts = MapOptions::new().concurrency(64).fail_fast(true).call(CallOptions::new().retries(2));
/// assert_eq!(opts.get_concurrency(), Some(64));
/// ```
#[derive(Debug, Clone, Default)]
pub struct MapOptions {
    concurrency: Option<usize>,
    fail_fast: bool,
    call: CallOptions,
}

impl MapOptions {
    /// Defaults: as many calls at once as the pool can take, every item reported in place.
    pub fn new() -> Self {
        MapOptions::default()
    }

    /// At most `n` calls at once (at least 1). Default: what the pool can take (`max` runners ×
    /// `max_concurrency`; 64 in local mode).
    pub fn concurrency(mut self, n: usize) -> Self {
        self.concurrency = Some(n.max(1));
        self
    }

    /// Stop at the first failed item: the stream yields that error and ends, and the calls still
    /// running are cancelled. Default false: every item gets its own `Result`.
    pub fn fail_fast(mut self, on: bool) -> Self {
        self.fail_fast = on;
        self
    }

    /// The options of every call (pool, timeout per item, retry policy, …).
    pub fn call(mut self, options: CallOptions) -> Self {
        self.call = options;
        self
    }

    /// The concurrency set, if any.
    pub fn get_concurrency(&self) -> Option<usize> {
        self.concurrency
    }
}

/// Local mode runs handlers in-process: this many at once unless told otherwise.
const LOCAL_CONCURRENCY: usize = 64;

impl Flame {
    /// Calls `method` once per input, many at once (as many as the pool can take), and yields
    /// the results **in input order**, each its own `Result` — one failure does not sink the
    /// rest. Each item is retried by the call's policy. Dropping the stream cancels the calls
    /// still running.
    ///
    /// ```
    /// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
    /// use flame_core::{Context, Flame, Method, Registry};
    /// use futures::StreamExt;
    /// const DOUBLE: Method<u32, u32> = Method::new("math", "double");
    /// let registry = Registry::new().handle(DOUBLE, |_ctx: Context, n: u32| async move { Ok(n * 2) });
    /// let flame = Flame::builder(registry).start().await?;
    /// let doubled: Vec<u32> = flame.map(DOUBLE, 1..=5).map(|r| r.unwrap()).collect().await;
    /// assert_eq!(doubled, [2, 4, 6, 8, 10]);
    /// # Ok::<(), flame_core::Error>(())
    /// # }).unwrap();
    /// ```
    pub fn map<Req, Resp, I>(&self, method: Method<Req, Resp>, inputs: I) -> BoxStream<'static, Result<Resp>>
    where
        Req: Serialize + Send + 'static,
        Resp: DeserializeOwned + Send + 'static,
        I: IntoIterator<Item = Req>,
        I::IntoIter: Send + 'static,
    {
        self.map_with(method, inputs, MapOptions::default())
    }

    /// [`Flame::map`] with [`MapOptions`].
    pub fn map_with<Req, Resp, I>(
        &self,
        method: Method<Req, Resp>,
        inputs: I,
        options: MapOptions,
    ) -> BoxStream<'static, Result<Resp>>
    where
        Req: Serialize + Send + 'static,
        Resp: DeserializeOwned + Send + 'static,
        I: IntoIterator<Item = Req>,
        I::IntoIter: Send + 'static,
    {
        self.map_stream(method, stream::iter(inputs), options)
    }

    /// [`Flame::map_with`] over a stream of inputs (read as slots free up: backpressure).
    pub fn map_stream<Req, Resp, S>(
        &self,
        method: Method<Req, Resp>,
        inputs: S,
        options: MapOptions,
    ) -> BoxStream<'static, Result<Resp>>
    where
        Req: Serialize + Send + 'static,
        Resp: DeserializeOwned + Send + 'static,
        S: Stream<Item = Req> + Send + 'static,
    {
        let n = self.map_concurrency(method.pool(), &options);
        let fail_fast = options.fail_fast;
        let results = self.calls(method, inputs, options.call).buffered(n);
        stop_after_error(results, fail_fast, Result::is_err)
    }

    /// Like [`Flame::map_with`], but yields `(input index, result)` in **completion order**:
    /// a slow item does not hold back the others.
    pub fn map_unordered<Req, Resp, I>(
        &self,
        method: Method<Req, Resp>,
        inputs: I,
        options: MapOptions,
    ) -> BoxStream<'static, (usize, Result<Resp>)>
    where
        Req: Serialize + Send + 'static,
        Resp: DeserializeOwned + Send + 'static,
        I: IntoIterator<Item = Req>,
        I::IntoIter: Send + 'static,
    {
        let n = self.map_concurrency(method.pool(), &options);
        let fail_fast = options.fail_fast;
        let flame = self.clone();
        let call = options.call;
        let results = stream::iter(inputs.into_iter().enumerate())
            .map(move |(i, req)| {
                let (flame, call) = (flame.clone(), call.clone());
                async move { (i, flame.call_with(method, req, call).await) }
            })
            .buffer_unordered(n);
        stop_after_error(results, fail_fast, |item| item.1.is_err())
    }

    fn calls<Req, Resp, S>(
        &self,
        method: Method<Req, Resp>,
        inputs: S,
        call: CallOptions,
    ) -> impl Stream<Item = impl std::future::Future<Output = Result<Resp>> + Send> + Send
    where
        Req: Serialize + Send + 'static,
        Resp: DeserializeOwned + Send + 'static,
        S: Stream<Item = Req> + Send + 'static,
    {
        let flame = self.clone();
        inputs.map(move |req| {
            let (flame, call) = (flame.clone(), call.clone());
            async move { flame.call_with(method, req, call).await }
        })
    }

    /// How many calls a map runs at once: the option, else what the pool can take.
    fn map_concurrency(&self, method_pool: Option<&str>, options: &MapOptions) -> usize {
        if let Some(n) = options.concurrency {
            return n;
        }
        if self.inner.config.mode != Mode::Parent {
            return LOCAL_CONCURRENCY;
        }
        let name = options
            .call
            .get_pool()
            .or(method_pool)
            .unwrap_or(&self.inner.config.default_pool);
        self.inner
            .pools
            .get(name)
            .and_then(|p| p.capacity_hint())
            .unwrap_or(LOCAL_CONCURRENCY)
            .max(1)
    }
}

/// With `fail_fast`, ends the stream after the first item `is_err` says failed (which it
/// yields).
fn stop_after_error<I: Send + 'static>(
    results: impl Stream<Item = I> + Send + 'static,
    fail_fast: bool,
    is_err: fn(&I) -> bool,
) -> BoxStream<'static, I> {
    if !fail_fast {
        return results.boxed();
    }
    results
        .scan(false, move |failed, item| {
            let out = (!*failed).then(|| {
                *failed = is_err(&item);
                item
            });
            futures::future::ready(out)
        })
        .boxed()
}
