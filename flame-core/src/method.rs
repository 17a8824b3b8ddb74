//! Typed method handles: the wire ids plus the request and response types.

use crate::call::RetryPolicy;
use std::fmt;
use std::marker::PhantomData;

/// Size limits of one method's payloads, in bytes of their encoded form, over the global
/// defaults (`FLAME_MAX_BODY_BYTES` for requests on the runner, `ClientOptions::max_response_bytes`
/// for replies on the parent). Both ends read them from the same [`Method`]: the parent refuses
/// to send a request over the limit, the runner refuses to read one (and to send a reply over
/// its limit), each with `PAYLOAD_TOO_LARGE`, never retried.
///
/// ```
/// use flame_core::Method;
/// const UPLOAD: Method<bytes::Bytes, u64> = Method::new("media", "upload")
///     .with_max_request_bytes(512 << 20)
///     .with_max_response_bytes(1024);
/// assert_eq!(UPLOAD.limits().request, Some(512 << 20));
/// ```
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct PayloadLimits {
    /// Largest request payload; `None`: the runner's default.
    pub request: Option<u64>,
    /// Largest reply payload (for a streamed result: largest item); `None`: the parent's
    /// default.
    pub response: Option<u64>,
}

impl PayloadLimits {
    /// No limits of the method's own.
    pub const NONE: PayloadLimits = PayloadLimits {
        request: None,
        response: None,
    };
}

/// The response type of a method whose handler returns a stream of `T`s
/// ([`Registry::handle_stream`](crate::Registry::handle_stream)); the caller gets them with
/// [`Flame::call_stream`](crate::Flame::call_stream).
///
/// ```
/// use flame_core::{Method, Streamed};
/// /// Counts up to `n`, one number at a time.
/// const COUNT: Method<u32, Streamed<u32>> = Method::new("demo", "count");
/// # let _ = COUNT;
/// ```
pub struct Streamed<T>(PhantomData<fn() -> T>);

impl<T: 'static> Streamed<T> {
    /// Turns a future of a stream into the stream: an error of the future is the stream's one
    /// item (how `#[flame::service]` registers a method returning
    /// `flame::Result<flame::ItemStream<T>>`; see [`crate::stream::flatten`]).
    pub fn flatten<F, S>(future: F) -> crate::stream::ItemStream<T>
    where
        F: std::future::Future<Output = crate::Result<S>> + Send + 'static,
        S: futures::Stream<Item = crate::Result<T>> + Send + 'static,
    {
        crate::stream::flatten(future)
    }
}

impl<T> fmt::Debug for Streamed<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Streamed")
    }
}

/// A typed handle on one remote method, shared by the parent and the runner.
///
/// The ids are explicit strings that never depend on Rust type names, so builds of different
/// versions, or programs in other languages, agree on them.
///
/// ```
/// use flame_core::Method;
/// pub const ADD: Method<(i64, i64), i64> = Method::new("math", "add");
/// // The reference's `flame.fn("math.add", h)` is service `math.add`, method `default`:
/// pub const ADD_FN: Method<(i64, i64), i64> = Method::function("math.add");
/// assert_eq!(ADD_FN.method_id(), "default");
/// pub const ON_GPU: Method<String, String> = Method::new("media", "upscale").with_pool("gpu");
/// assert_eq!(ON_GPU.pool(), Some("gpu"));
/// ```
pub struct Method<Req, Resp> {
    service_id: &'static str,
    method_id: &'static str,
    pool: Option<&'static str>,
    timeout_ms: Option<u64>,
    retry: Option<RetryPolicy>,
    limits: PayloadLimits,
    _types: PhantomData<fn(Req) -> Resp>,
}

impl<Req, Resp> Method<Req, Resp> {
    /// A method `method_id` of service `service_id`.
    pub const fn new(service_id: &'static str, method_id: &'static str) -> Self {
        Method {
            service_id,
            method_id,
            pool: None,
            timeout_ms: None,
            retry: None,
            limits: PayloadLimits::NONE,
            _types: PhantomData,
        }
    }

    /// A single-method service: service `id`, method `default`.
    pub const fn function(id: &'static str) -> Self {
        Method::new(id, "default")
    }

    /// The pool calls of this method use unless the call names another.
    pub const fn with_pool(mut self, pool: &'static str) -> Self {
        self.pool = Some(pool);
        self
    }

    /// The timeout calls of this method use unless the call sets another.
    pub const fn with_timeout_ms(mut self, timeout_ms: u64) -> Self {
        self.timeout_ms = Some(timeout_ms);
        self
    }

    /// The service id.
    pub const fn service_id(&self) -> &'static str {
        self.service_id
    }

    /// The method id.
    pub const fn method_id(&self) -> &'static str {
        self.method_id
    }

    /// The method's default pool, if any.
    pub const fn pool(&self) -> Option<&'static str> {
        self.pool
    }

    /// The method's default timeout in milliseconds, if any.
    pub const fn timeout_ms(&self) -> Option<u64> {
        self.timeout_ms
    }

    /// The retry policy calls of this method use unless the call sets another (see
    /// [`crate::call`] for the precedence).
    ///
    /// ```
    /// use flame_core::{Method, RetryPolicy};
    /// const RESIZE: Method<String, String> = Method::new("media", "resize").with_retry(RetryPolicy::attempts(3));
    /// assert_eq!(RESIZE.retry().map(|p| p.max_attempts()), Some(3));
    /// ```
    pub const fn with_retry(mut self, policy: RetryPolicy) -> Self {
        self.retry = Some(policy);
        self
    }

    /// The method's retry policy, if any.
    pub const fn retry(&self) -> Option<RetryPolicy> {
        self.retry
    }

    /// The largest request payload of this method (encoded bytes), over the runner's default
    /// (`FLAME_MAX_BODY_BYTES`, 1 MiB): see [`PayloadLimits`].
    pub const fn with_max_request_bytes(mut self, bytes: u64) -> Self {
        self.limits.request = Some(bytes);
        self
    }

    /// The largest reply payload of this method (encoded bytes; for a streamed result, the
    /// largest item), over the parent's default (`ClientOptions::max_response_bytes`, 64 MiB).
    pub const fn with_max_response_bytes(mut self, bytes: u64) -> Self {
        self.limits.response = Some(bytes);
        self
    }

    /// The method's own payload limits.
    pub const fn limits(&self) -> PayloadLimits {
        self.limits
    }

    /// The same method (ids, pool, timeout, retry policy) with another response type, for
    /// calls that read the reply differently (a cast ignores it).
    pub(crate) const fn retyped<R2>(&self) -> Method<Req, R2> {
        Method {
            service_id: self.service_id,
            method_id: self.method_id,
            pool: self.pool,
            timeout_ms: self.timeout_ms,
            retry: self.retry,
            limits: self.limits,
            _types: PhantomData,
        }
    }
}

impl<Req, Resp> Clone for Method<Req, Resp> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<Req, Resp> Copy for Method<Req, Resp> {}

impl<Req, Resp> fmt::Debug for Method<Req, Resp> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Method({}/{})", self.service_id, self.method_id)
    }
}

impl<Req, Resp> fmt::Display for Method<Req, Resp> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.service_id, self.method_id)
    }
}
