//! A transport that hands the encoded request to a [`Dispatcher`] in the same process, in the
//! wire's own encodings, through the same runner pipeline as HTTP (window, replay,
//! idempotency: [`Dispatcher::handle`], [`Dispatcher::handle_binary`]), so pools and the
//! parent path are testable without sockets. Like HTTP with a flame-rs runner it uses the
//! binary codec for typed arguments (streamed results included) unless told to speak JSON.

use crate::codec::{Codec, InvocationResponse, WireError};
use crate::error::{Error, Result};
use crate::runner::{DispatchReply, Dispatcher, ReplyKind};
use crate::transport::{error_for_status, Endpoint, Invocation, Reply, RunnerStatus, Transport};
use async_trait::async_trait;
use std::collections::HashMap;
use std::sync::{Arc, RwLock};

/// Routes by endpoint URL to in-process dispatchers.
///
/// ```
/// # tokio_test_block(async {
/// use flame_core::testkit::InMemoryTransport;
/// use flame_core::{codec, Context, Dispatcher, Endpoint, Invocation, Method, Registry, Transport};
/// const ADD: Method<(i64, i64), i64> = Method::new("math", "add");
/// let registry = Registry::new().handle(ADD, |_c: Context, (a, b): (i64, i64)| async move { Ok(a + b) });
/// let transport = InMemoryTransport::new();
/// transport.add("mem://r1", Dispatcher::new(registry, "r1"));
/// let inv = Invocation {
///     service_id: "math".into(), method_id: "add".into(),
///     args: codec::encode_args(&(2i64, 3i64)).unwrap().into(),
///     deadline: None, idempotency_key: None, trace: Default::default(), attempt: 1, cast: false,
///     stream: false, limits: Default::default(),
/// };
/// let reply = transport.invoke(&Endpoint::new("mem://r1", "r1"), &inv).await.unwrap();
/// assert_eq!(reply.json_text(), Some(r#"{"json":5}"#)); // text arguments: the JSON wire
/// let typed = Invocation { args: flame_core::Args::typed((2i64, 3i64)), ..inv };
/// let reply = transport.invoke(&Endpoint::new("mem://r1", "r1"), &typed).await.unwrap();
/// assert_eq!(reply.decode::<i64>().await.unwrap(), 5); // typed arguments: the binary codec
/// # });
/// # fn tokio_test_block(f: impl std::future::Future<Output = ()>) {
/// #     tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(f)
/// # }
/// ```
#[derive(Clone)]
pub struct InMemoryTransport {
    runners: Arc<RwLock<HashMap<String, Arc<Dispatcher>>>>,
    codec: Codec,
}

impl Default for InMemoryTransport {
    fn default() -> Self {
        InMemoryTransport {
            runners: Arc::default(),
            codec: Codec::Binary,
        }
    }
}

impl InMemoryTransport {
    /// An empty transport (binary codec for typed arguments).
    pub fn new() -> Self {
        InMemoryTransport::default()
    }

    /// The same transport speaking `codec` for typed arguments (`Codec::Json`: the wire the
    /// TypeScript reference speaks).
    pub fn with_codec(mut self, codec: Codec) -> Self {
        self.codec = codec;
        self
    }

    /// Serves `url` with `dispatcher`; returns the shared dispatcher.
    pub fn add(&self, url: &str, dispatcher: Dispatcher) -> Arc<Dispatcher> {
        let d = Arc::new(dispatcher);
        self.add_shared(url, d.clone());
        d
    }

    /// Serves `url` with an already shared dispatcher.
    pub fn add_shared(&self, url: &str, dispatcher: Arc<Dispatcher>) {
        if let Ok(mut map) = self.runners.write() {
            map.insert(url.trim_end_matches('/').to_owned(), dispatcher);
        }
    }

    /// Stops serving `url` (later calls fail as if the connection was refused).
    pub fn remove(&self, url: &str) -> Option<Arc<Dispatcher>> {
        self.runners.write().ok()?.remove(url.trim_end_matches('/'))
    }

    /// Hands `body` (an encoded envelope, as a transport would after checking its signature)
    /// to the runner at `url` as it is: for tests of what the pipeline does with replayed,
    /// stale or malformed envelopes.
    pub async fn send_raw(&self, url: &str, body: &[u8]) -> Result<crate::runner::DispatchReply> {
        Ok(self.get(url)?.dispatch_bytes(body).await)
    }

    /// Whether a runner serves `url`.
    pub fn serves(&self, url: &str) -> bool {
        self.get(url).is_ok()
    }

    fn get(&self, url: &str) -> Result<Arc<Dispatcher>> {
        self.runners
            .read()
            .ok()
            .and_then(|m| m.get(url).cloned())
            .ok_or_else(|| Error::not_delivered(format!("no in-memory runner at {url}")))
    }
}

#[async_trait]
impl Transport for InMemoryTransport {
    async fn invoke(&self, endpoint: &Endpoint, invocation: &Invocation) -> Result<Reply> {
        let dispatcher = self.get(&endpoint.url)?;
        let binary_args = dispatcher
            .registry()
            .binary_args(&invocation.service_id, &invocation.method_id);
        if self.codec == Codec::Binary && invocation.args.has_binary() && binary_args {
            let envelope = invocation.envelope(String::new());
            let reply = dispatcher
                .handle_binary(envelope, invocation.args.to_binary()?)
                .await;
            return binary_reply(reply);
        }
        if invocation.stream {
            return Err(Error::new(
                crate::ErrorCode::BadRequest,
                "a streamed result needs the binary codec and typed arguments",
            ));
        }
        let body = serde_json::to_vec(&invocation.to_request()?)?;
        let reply = dispatcher.dispatch_bytes(&body).await;
        if reply.status != 200 {
            return Err(error_for_status(
                reply.status,
                &String::from_utf8_lossy(&reply.body),
            ));
        }
        let response: InvocationResponse = serde_json::from_slice(&reply.body)
            .map_err(|e| Error::transport(format!("runner sent a malformed response: {e}")))?;
        response.into_result().map(Reply::Json)
    }

    async fn ping(&self, endpoint: &Endpoint) -> Result<RunnerStatus> {
        Ok(self.get(&endpoint.url)?.status())
    }
}

/// A binary-codec reply as the parent sees it.
fn binary_reply(reply: DispatchReply) -> Result<Reply> {
    if reply.status != 200 {
        return Err(error_for_status(
            reply.status,
            &String::from_utf8_lossy(&reply.body),
        ));
    }
    match reply.kind {
        ReplyKind::Ok => Ok(Reply::Binary(reply.into_body())),
        ReplyKind::Stream => Ok(Reply::Stream(reply.into_body())),
        ReplyKind::Error => {
            let wire: WireError = serde_json::from_slice(&reply.body)
                .map_err(|e| Error::transport(format!("runner sent a malformed error: {e}")))?;
            Err(wire.into_error())
        }
        other => Err(Error::transport(format!(
            "runner sent a {other:?} reply to a binary request"
        ))),
    }
}
