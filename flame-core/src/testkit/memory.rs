//! A transport that hands the encoded request to a [`Dispatcher`] in the same process, byte
//! for byte the wire format, through the same runner pipeline as HTTP (window, replay,
//! idempotency: [`Dispatcher::handle`]), so pools and the parent path are testable without
//! sockets.

use crate::codec::InvocationResponse;
use crate::error::{Error, Result};
use crate::runner::Dispatcher;
use crate::transport::{error_for_status, Endpoint, Invocation, RunnerStatus, Transport};
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
///     args: codec::encode_args(&(2i64, 3i64)).unwrap(),
///     deadline: None, idempotency_key: None, trace: Default::default(), attempt: 1, cast: false,
/// };
/// let text = transport.invoke(&Endpoint::new("mem://r1", "r1"), &inv).await.unwrap();
/// assert_eq!(text, r#"{"json":5}"#);
/// # });
/// # fn tokio_test_block(f: impl std::future::Future<Output = ()>) {
/// #     tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(f)
/// # }
/// ```
#[derive(Default, Clone)]
pub struct InMemoryTransport {
    runners: Arc<RwLock<HashMap<String, Arc<Dispatcher>>>>,
}

impl InMemoryTransport {
    /// An empty transport.
    pub fn new() -> Self {
        InMemoryTransport::default()
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
    async fn invoke(&self, endpoint: &Endpoint, invocation: &Invocation) -> Result<String> {
        let dispatcher = self.get(&endpoint.url)?;
        let body = serde_json::to_vec(&invocation.to_request())?;
        let reply = dispatcher.dispatch_bytes(&body).await;
        if reply.status != 200 {
            return Err(error_for_status(
                reply.status,
                &String::from_utf8_lossy(&reply.body),
            ));
        }
        let response: InvocationResponse = serde_json::from_slice(&reply.body)
            .map_err(|e| Error::transport(format!("runner sent a malformed response: {e}")))?;
        response.into_result()
    }

    async fn ping(&self, endpoint: &Endpoint) -> Result<RunnerStatus> {
        Ok(self.get(&endpoint.url)?.status())
    }
}
