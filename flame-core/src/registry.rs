//! The registry: which handler serves which `(service_id, method_id)`.

use crate::codec;
use crate::context::Context;
use crate::error::{Error, ErrorCode, Result};
use crate::method::{Method, PayloadLimits, Streamed};
use crate::stream::{frame, Body, ItemStream};
use bytes::Bytes;
use futures::future::BoxFuture;
use futures::stream::BoxStream;
use futures::{Stream, StreamExt};
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::Value;
use std::any::Any;
use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;

/// A handler with its request and response types intact (the local-mode fast path).
pub(crate) type TypedFn<Req, Resp> =
    Arc<dyn Fn(Context, Req) -> BoxFuture<'static, Result<Resp>> + Send + Sync>;

/// A handler behind the wire codec: positional arguments in, superjson result text out.
pub(crate) type ErasedFn =
    Arc<dyn Fn(Context, Vec<Value>) -> BoxFuture<'static, Result<String>> + Send + Sync>;

/// A handler behind the binary codec: the request payload in (decoded as it arrives), the
/// result payload out (encoded as it is sent, when large).
pub(crate) type BinaryFn = Arc<dyn Fn(Context, Body) -> BoxFuture<'static, Result<Body>> + Send + Sync>;

/// A streaming handler behind the binary codec: the request payload in, its items out, each as
/// its frame (`stream::frame::item`).
pub(crate) type StreamFn =
    Arc<dyn Fn(Context, Body) -> BoxFuture<'static, Result<BoxStream<'static, Result<Bytes>>>> + Send + Sync>;

/// A streaming handler with its types intact (the local-mode path).
pub(crate) type TypedStreamFn<Req, Item> = Arc<dyn Fn(Context, Req) -> ItemStream<Item> + Send + Sync>;

/// How a method answers over the binary codec.
pub(crate) enum Wire {
    /// One result.
    Unary(BinaryFn),
    /// A stream of items.
    Stream(StreamFn),
}

pub(crate) struct Entry {
    /// The method's service and method ids (its `Method` const's: `'static`, so metrics can
    /// label with them without copying).
    pub(crate) ids: (&'static str, &'static str),
    typed: Box<dyn Any + Send + Sync>,
    pub(crate) erased: ErasedFn,
    pub(crate) wire: Wire,
    pub(crate) limits: PayloadLimits,
    /// Whether the request type can be decoded from the binary codec.
    pub(crate) binary_args: bool,
}

impl Entry {
    pub(crate) fn typed<Req: 'static, Resp: 'static>(&self) -> Option<&TypedFn<Req, Resp>> {
        self.typed.downcast_ref::<TypedFn<Req, Resp>>()
    }

    pub(crate) fn typed_stream<Req: 'static, Item: 'static>(&self) -> Option<&TypedStreamFn<Req, Item>> {
        self.typed.downcast_ref::<TypedStreamFn<Req, Item>>()
    }
}

/// Maps method ids to handlers, in the style of axum's router.
///
/// ```
/// use flame_core::{Context, Method, Registry};
/// const ADD: Method<(i64, i64), i64> = Method::new("math", "add");
/// const UPPER: Method<String, String> = Method::new("text", "upper");
/// let registry = Registry::new()
///     .handle(ADD, |_ctx: Context, (a, b): (i64, i64)| async move { Ok(a + b) })
///     .handle(UPPER, |_ctx: Context, s: String| async move { Ok(s.to_uppercase()) });
/// assert!(registry.check().is_ok());
/// assert!(registry.contains("math", "add"));
///
/// // Registering the same ids twice is an error, not a silent overwrite.
/// let dup = registry.handle(ADD, |_ctx: Context, (a, b): (i64, i64)| async move { Ok(a - b) });
/// assert!(dup.check().is_err());
/// ```
#[derive(Default)]
pub struct Registry {
    services: HashMap<String, HashMap<String, Entry>>,
    errors: Vec<String>,
}

impl Registry {
    /// An empty registry.
    pub fn new() -> Self {
        Registry::default()
    }

    /// Registers `handler` for `method`. A duplicate is remembered and reported by
    /// [`Registry::check`] (and so by `Flame::start`); use [`Registry::try_handle`] to get the
    /// error at once.
    pub fn handle<Req, Resp, F, Fut>(mut self, method: Method<Req, Resp>, handler: F) -> Self
    where
        Req: DeserializeOwned + Send + 'static,
        Resp: Serialize + Send + 'static,
        F: Fn(Context, Req) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<Resp>> + Send + 'static,
    {
        if let Err(e) = self.try_handle(method, handler) {
            self.errors.push(e.message().to_owned());
        }
        self
    }

    /// Registers `handler` for `method`, failing if those ids are already registered.
    pub fn try_handle<Req, Resp, F, Fut>(&mut self, method: Method<Req, Resp>, handler: F) -> Result<()>
    where
        Req: DeserializeOwned + Send + 'static,
        Resp: Serialize + Send + 'static,
        F: Fn(Context, Req) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<Resp>> + Send + 'static,
    {
        let (service, id) = (method.service_id(), method.method_id());
        self.ensure_new(service, id)?;
        let typed: TypedFn<Req, Resp> = Arc::new(move |ctx, req| Box::pin(handler(ctx, req)));
        let inner = typed.clone();
        let erased: ErasedFn = Arc::new(move |ctx, args| {
            let decoded = codec::from_args::<Req>(args);
            let inner = inner.clone();
            Box::pin(async move {
                let req = decoded?;
                let resp = inner(ctx, req).await?;
                codec::encode_result(&resp)
            })
        });
        let inner = typed.clone();
        let max_reply = method.limits().response;
        let binary: BinaryFn = Arc::new(move |ctx, body| {
            let inner = inner.clone();
            Box::pin(async move {
                let req: Req = body.decode().await?;
                let resp = inner(ctx, req).await?;
                Body::encode_within(resp, max_reply)
            })
        });
        self.insert(
            service,
            id,
            Entry {
                ids: (service, id),
                typed: Box::new(typed),
                erased,
                wire: Wire::Unary(binary),
                limits: method.limits(),
                binary_args: codec::binary::supports::<Req>(),
            },
        );
        Ok(())
    }

    /// Registers a streaming handler for `method`: it returns a stream of items, which the
    /// caller reads with [`Flame::call_stream`](crate::Flame::call_stream) (see
    /// [`crate::stream`]). A duplicate is reported by [`Registry::check`].
    ///
    /// ```
    /// use flame_core::{Context, Method, Registry, Streamed};
    /// const TICKS: Method<u32, Streamed<u32>> = Method::new("demo", "ticks");
    /// let registry = Registry::new().handle_stream(TICKS, |_ctx: Context, n: u32| {
    ///     futures::stream::iter((0..n).map(Ok))
    /// });
    /// assert!(registry.contains("demo", "ticks"));
    /// ```
    pub fn handle_stream<Req, Item, F, S>(mut self, method: Method<Req, Streamed<Item>>, handler: F) -> Self
    where
        Req: DeserializeOwned + Send + 'static,
        Item: Serialize + Send + 'static,
        F: Fn(Context, Req) -> S + Send + Sync + 'static,
        S: Stream<Item = Result<Item>> + Send + 'static,
    {
        if let Err(e) = self.try_handle_stream(method, handler) {
            self.errors.push(e.message().to_owned());
        }
        self
    }

    /// Registers a streaming handler for `method`, failing if those ids are already registered.
    pub fn try_handle_stream<Req, Item, F, S>(
        &mut self,
        method: Method<Req, Streamed<Item>>,
        handler: F,
    ) -> Result<()>
    where
        Req: DeserializeOwned + Send + 'static,
        Item: Serialize + Send + 'static,
        F: Fn(Context, Req) -> S + Send + Sync + 'static,
        S: Stream<Item = Result<Item>> + Send + 'static,
    {
        let (service, id) = (method.service_id(), method.method_id());
        self.ensure_new(service, id)?;
        let typed: TypedStreamFn<Req, Item> = Arc::new(move |ctx, req| Box::pin(handler(ctx, req)));
        let what = format!("{service}/{id}");
        let erased: ErasedFn = Arc::new(move |_ctx, _args| {
            let what = what.clone();
            Box::pin(async move {
                Err(Error::new(
                    ErrorCode::BadRequest,
                    format!("{what} streams its results: call it with call_stream (binary codec)"),
                ))
            })
        });
        let inner = typed.clone();
        let max_item = method.limits().response;
        let stream: StreamFn = Arc::new(move |ctx, body| {
            let inner = inner.clone();
            Box::pin(async move {
                let req: Req = body.decode().await?;
                let items = inner(ctx, req);
                Ok(items
                    .map(move |item| item.and_then(|item| frame::item(&item, max_item)))
                    .boxed())
            })
        });
        self.insert(
            service,
            id,
            Entry {
                ids: (service, id),
                typed: Box::new(typed),
                erased,
                wire: Wire::Stream(stream),
                limits: method.limits(),
                binary_args: codec::binary::supports::<Req>(),
            },
        );
        Ok(())
    }

    fn insert(&mut self, service: &str, id: &str, entry: Entry) {
        self.services
            .entry(service.to_owned())
            .or_default()
            .insert(id.to_owned(), entry);
    }

    /// The payload limits `service_id`/`method_id` was registered with (`None`: no such method).
    pub fn limits(&self, service_id: &str, method_id: &str) -> Option<PayloadLimits> {
        self.get(service_id, method_id).map(|e| e.limits)
    }

    /// The largest request limit of any method (`None` if none has its own).
    pub fn largest_request_limit(&self) -> Option<u64> {
        self.services
            .values()
            .flat_map(|m| m.values())
            .filter_map(|e| e.limits.request)
            .max()
    }

    /// Whether the arguments of `service_id`/`method_id` can come in the binary codec (`false`:
    /// its request type needs a self-describing codec, see
    /// [`codec::binary::supports`]; a transport answers a binary request for it with 415, and the
    /// parent sends it again as JSON).
    pub fn binary_args(&self, service_id: &str, method_id: &str) -> bool {
        self.get(service_id, method_id).map_or(true, |e| e.binary_args)
    }

    /// Whether `service_id`/`method_id` streams its results.
    pub fn is_streaming(&self, service_id: &str, method_id: &str) -> bool {
        self.get(service_id, method_id)
            .is_some_and(|e| matches!(e.wire, Wire::Stream(_)))
    }

    /// Moves every handler of `other` into this registry (duplicates are reported by
    /// [`Registry::check`]).
    pub fn merge(mut self, other: Registry) -> Self {
        self.errors.extend(other.errors);
        for (service, methods) in other.services {
            for (id, entry) in methods {
                if self.contains(&service, &id) {
                    self.errors
                        .push(format!("method {service}/{id} is registered twice"));
                } else {
                    self.services
                        .entry(service.clone())
                        .or_default()
                        .insert(id, entry);
                }
            }
        }
        self
    }

    /// Fails with a `CONFIG` error if any registration was a duplicate.
    pub fn check(&self) -> Result<()> {
        match self.errors.as_slice() {
            [] => Ok(()),
            errors => Err(Error::config(errors.join("; "))),
        }
    }

    /// Whether a handler serves `service_id`/`method_id`.
    pub fn contains(&self, service_id: &str, method_id: &str) -> bool {
        self.get(service_id, method_id).is_some()
    }

    /// A `CONFIG` error when `service`/`method` is registered already.
    fn ensure_new(&self, service: &str, method: &str) -> Result<()> {
        if self.contains(service, method) {
            return Err(Error::config(format!(
                "method {service}/{method} is registered twice"
            )));
        }
        Ok(())
    }

    /// Every registered `(service_id, method_id)`, sorted.
    pub fn methods(&self) -> Vec<(String, String)> {
        let mut all: Vec<_> = self
            .services
            .iter()
            .flat_map(|(s, ms)| ms.keys().map(move |m| (s.clone(), m.clone())))
            .collect();
        all.sort();
        all
    }

    pub(crate) fn get(&self, service_id: &str, method_id: &str) -> Option<&Entry> {
        self.services.get(service_id)?.get(method_id)
    }

    pub(crate) fn lookup(&self, service_id: &str, method_id: &str) -> Result<&Entry> {
        self.get(service_id, method_id).ok_or_else(|| {
            Error::new(
                ErrorCode::NotFound,
                format!("unknown method {service_id}/{method_id}"),
            )
        })
    }
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registry")
            .field("methods", &self.methods())
            .finish()
    }
}
