//! Typed method handles: the wire ids plus the request and response types.

use crate::call::RetryPolicy;
use std::fmt;
use std::marker::PhantomData;

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

    /// The same method (ids, pool, timeout, retry policy) with another response type, for
    /// calls that read the reply differently (a cast ignores it).
    pub(crate) const fn retyped<R2>(&self) -> Method<Req, R2> {
        Method {
            service_id: self.service_id,
            method_id: self.method_id,
            pool: self.pool,
            timeout_ms: self.timeout_ms,
            retry: self.retry,
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
