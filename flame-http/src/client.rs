//! The parent side: [`HttpTransport`], core's [`Transport`] over a pooled keep-alive hyper
//! client. It speaks the binary codec to flame-rs runners and wire protocol v1 (JSON) to
//! anything else: a runner says which codecs it takes in the `x-flame-codecs` header of its
//! health replies (every readiness probe and health check reads it) and of its JSON replies.

use crate::sign::{self, Signer, SIGNATURE_HEADER, TIMESTAMP_HEADER};
use crate::wire::{self, WireBody};
use async_trait::async_trait;
use bytes::Bytes;
use flame_core::codec::{Codec, InvocationResponse, WireError};
use flame_core::runner::replay::format_seq;
use flame_core::stream::Body;
use flame_core::transport::{error_for_status, now_millis};
use flame_core::{Endpoint, Error, ErrorCode, Invocation, Reply, Result, RunnerStatus, Secret, Transport};
use http::header::{CONTENT_LENGTH, CONTENT_TYPE};
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode, Uri};
use hyper::body::Incoming;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

/// Settings of [`HttpTransport`].
///
/// ```
/// use flame_http::ClientOptions;
/// use std::time::Duration;
/// let opts = ClientOptions::default().connect_timeout(Duration::from_secs(2));
/// assert_eq!(opts.invoke_path, "/invoke");
/// ```
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct ClientOptions {
    /// The runner's invoke path. Default `/invoke`.
    pub invoke_path: String,
    /// Timeout of establishing a connection. Default 5 s.
    pub connect_timeout: Duration,
    /// Timeout of a `ping`. Default 5 s.
    pub ping_timeout: Duration,
    /// Idle pooled connections close after this. Default 20 s (below the runner's 30 s header
    /// read timeout, which also ends idle connections).
    pub pool_idle_timeout: Duration,
    /// Idle connections kept per runner. Default 32.
    pub pool_max_idle_per_host: usize,
    /// Largest response body accepted, unless the method sets its own
    /// (`Method::with_max_response_bytes`); for a streamed result, the largest item. Default
    /// 64 MiB. A reply over it is `PAYLOAD_TOO_LARGE`, not retried, the runner not suspected.
    pub max_response_bytes: usize,
    /// The codec to speak: `None` (default) negotiates — binary with flame-rs runners, JSON
    /// with anything else; `Some(Codec::Json)` always speaks wire protocol v1.
    pub codec: Option<Codec>,
}

impl Default for ClientOptions {
    fn default() -> Self {
        ClientOptions {
            invoke_path: "/invoke".into(),
            connect_timeout: Duration::from_secs(5),
            ping_timeout: Duration::from_secs(5),
            pool_idle_timeout: Duration::from_secs(20),
            pool_max_idle_per_host: 32,
            max_response_bytes: 64 * 1024 * 1024,
            codec: None,
        }
    }
}

impl ClientOptions {
    /// Sets [`ClientOptions::invoke_path`].
    pub fn invoke_path(mut self, path: impl Into<String>) -> Self {
        self.invoke_path = path.into();
        self
    }
    /// Sets [`ClientOptions::connect_timeout`].
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }
    /// Sets [`ClientOptions::ping_timeout`].
    pub fn ping_timeout(mut self, timeout: Duration) -> Self {
        self.ping_timeout = timeout;
        self
    }
    /// Sets [`ClientOptions::pool_idle_timeout`].
    pub fn pool_idle_timeout(mut self, timeout: Duration) -> Self {
        self.pool_idle_timeout = timeout;
        self
    }
    /// Sets [`ClientOptions::max_response_bytes`].
    pub fn max_response_bytes(mut self, bytes: usize) -> Self {
        self.max_response_bytes = bytes;
        self
    }
    /// Sets [`ClientOptions::codec`].
    pub fn codec(mut self, codec: Option<Codec>) -> Self {
        self.codec = codec;
        self
    }
}

/// What the transport knows of one runner (by URL and secret): its codecs and default limit
/// (learned from its replies), the secret's keyed HMAC state, and this transport's request
/// sequence towards it (`seq`: the runner's replay window).
struct Peer {
    secret: Option<Secret>,
    signer: Option<Signer>,
    /// 0 unknown, 1 JSON only, 2 binary too.
    codec: AtomicU8,
    /// The runner's default request limit, 0 unknown.
    max_body: AtomicU64,
    sender: u64,
    seq: AtomicU64,
    probed: tokio::sync::OnceCell<()>,
    /// Methods (`service/method`) whose arguments the runner takes as JSON only (it answered a
    /// binary request with 415); `json_args_any` says whether there are any.
    json_args: RwLock<std::collections::HashSet<String>>,
    json_args_any: std::sync::atomic::AtomicBool,
}

const UNKNOWN: u8 = 0;
const JSON_ONLY: u8 = 1;
const BINARY: u8 = 2;

/// Above this size a call to a runner whose codecs are not known yet asks it first (a small one
/// goes as JSON, which every runner takes, and its reply says).
const PROBE_ABOVE: u64 = 64 * 1024;

/// Peers remembered before the map is cleared (runners come and go).
const MAX_PEERS: usize = 4096;

impl Peer {
    fn new(secret: Option<Secret>) -> Peer {
        // A random sender id per peer (per transport and runner): the runner keeps one replay
        // window per sender.
        let sender = RandomState::new().hash_one(now_millis() ^ (std::process::id() as u64) << 40);
        Peer {
            signer: secret.as_ref().map(Signer::new),
            secret,
            codec: AtomicU8::new(UNKNOWN),
            max_body: AtomicU64::new(0),
            sender,
            seq: AtomicU64::new(0),
            probed: tokio::sync::OnceCell::new(),
            json_args: RwLock::default(),
            json_args_any: std::sync::atomic::AtomicBool::new(false),
        }
    }

    fn json_args(&self, invocation: &Invocation) -> bool {
        self.json_args_any.load(Ordering::Relaxed)
            && self
                .json_args
                .read()
                .is_ok_and(|set| set.contains(&format!("{}/{}", invocation.service_id, invocation.method_id)))
    }

    fn set_json_args(&self, invocation: &Invocation) {
        if let Ok(mut set) = self.json_args.write() {
            set.insert(format!("{}/{}", invocation.service_id, invocation.method_id));
        }
        self.json_args_any.store(true, Ordering::Relaxed);
    }

    fn next_seq(&self) -> String {
        format_seq(self.sender, self.seq.fetch_add(1, Ordering::Relaxed) + 1)
    }

    fn max_body(&self) -> Option<u64> {
        Some(self.max_body.load(Ordering::Relaxed)).filter(|n| *n > 0)
    }

    /// Learns from a reply's headers what the runner takes.
    fn learn(&self, headers: &HeaderMap) {
        let binary = headers
            .get(wire::CODECS)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.split(',').any(|c| c.trim() == Codec::Binary.name()));
        self.codec
            .store(if binary { BINARY } else { JSON_ONLY }, Ordering::Relaxed);
        if let Some(n) = headers
            .get(wire::MAX_BODY)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok())
        {
            self.max_body.store(n, Ordering::Relaxed);
        }
    }
}

/// Core's [`Transport`] over HTTP/1.1: pooled keep-alive connections, requests signed with the
/// endpoint's secret, a fresh `invocationId` per attempt. It sends exactly one attempt: core
/// owns the call's deadline (it drops this future when the deadline passes, which cancels the
/// request) and its retries.
///
/// ```no_run
/// # async fn run() -> flame_core::Result<()> {
/// use flame_core::{Endpoint, Secret, Transport};
/// let transport = flame_http::HttpTransport::new();
/// let runner = Endpoint::new("http://127.0.0.1:8080", "r1").with_secret(Some(Secret::new("s3cret")));
/// let status = transport.ping(&runner).await?;
/// assert!(status.ok);
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct HttpTransport {
    client: Client<HttpConnector, WireBody>,
    options: ClientOptions,
    peers: Arc<RwLock<HashMap<String, Arc<Peer>>>>,
}

impl std::fmt::Debug for HttpTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpTransport")
            .field("options", &self.options)
            .finish()
    }
}

impl Default for HttpTransport {
    fn default() -> Self {
        HttpTransport::new()
    }
}

impl HttpTransport {
    /// A transport with [`ClientOptions::default`].
    pub fn new() -> Self {
        HttpTransport::with_options(ClientOptions::default())
    }

    /// A transport with `options`.
    pub fn with_options(options: ClientOptions) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(options.connect_timeout));
        let client = Client::builder(TokioExecutor::new())
            .pool_timer(TokioTimer::new())
            .pool_idle_timeout(options.pool_idle_timeout)
            .pool_max_idle_per_host(options.pool_max_idle_per_host)
            .build(connector);
        HttpTransport {
            client,
            options,
            peers: Arc::default(),
        }
    }

    /// The options.
    pub fn options(&self) -> &ClientOptions {
        &self.options
    }

    fn peer(&self, endpoint: &Endpoint) -> Arc<Peer> {
        if let Ok(peers) = self.peers.read() {
            if let Some(p) = peers.get(&endpoint.url).filter(|p| p.secret == endpoint.secret) {
                return p.clone();
            }
        }
        let peer = Arc::new(Peer::new(endpoint.secret.clone()));
        if let Ok(mut peers) = self.peers.write() {
            if let Some(p) = peers.get(&endpoint.url).filter(|p| p.secret == endpoint.secret) {
                return p.clone();
            }
            if peers.len() >= MAX_PEERS {
                peers.clear();
            }
            peers.insert(endpoint.url.clone(), peer.clone());
        }
        peer
    }

    async fn send(&self, request: Request<WireBody>, url: &str) -> Result<Response<Incoming>> {
        self.client
            .request(request)
            .await
            .map_err(|e| client_error(e, url))
    }

    /// Sends a request and reads its (small) reply whole.
    async fn exchange(
        &self,
        request: Request<WireBody>,
        url: &str,
        limit: u64,
    ) -> Result<(StatusCode, HeaderMap, Bytes)> {
        let response = self.send(request, url).await?;
        let (parts, incoming) = response.into_parts();
        if let Some(n) = content_length(&parts.headers).filter(|n| *n > limit) {
            return Err(reply_too_large(url, n, limit));
        }
        let body = wire::collect(wire::chunks(incoming, limit, "reply"), limit)
            .await
            .map_err(|e| match e.code() {
                ErrorCode::PayloadTooLarge => reply_too_large(url, limit + 1, limit),
                _ => Error::transport(format!("reading the reply of {url} failed: {e}")),
            })?;
        Ok((parts.status, parts.headers, body))
    }

    /// The codec for this call: binary when the runner takes it and the arguments are typed.
    async fn codec_for(&self, endpoint: &Endpoint, invocation: &Invocation, peer: &Peer) -> Result<Codec> {
        if self.options.codec == Some(Codec::Json)
            || !invocation.args.has_binary()
            || peer.json_args(invocation)
        {
            return Ok(Codec::Json);
        }
        if peer.codec.load(Ordering::Relaxed) == UNKNOWN {
            let large = invocation.args.binary_len()?.unwrap_or(0) > PROBE_ABOVE;
            if invocation.stream || large {
                peer.probed
                    .get_or_init(|| async {
                        if let Err(e) = self.ping(endpoint).await {
                            tracing::debug!(url = %endpoint.url, error = %e, "codec probe failed: speaking JSON");
                        }
                    })
                    .await;
            }
        }
        Ok(match peer.codec.load(Ordering::Relaxed) {
            BINARY => Codec::Binary,
            _ => Codec::Json,
        })
    }

    async fn invoke_json(&self, endpoint: &Endpoint, invocation: &Invocation, peer: &Peer) -> Result<Reply> {
        let mut envelope = invocation.to_request()?;
        envelope.seq = Some(peer.next_seq());
        let body = serde_json::to_vec(&envelope)?;
        if let Some(limit) = invocation.limits.request.or(peer.max_body()) {
            check_request_size(body.len() as u64, limit)?;
        }
        let mut builder = Request::builder()
            .method(Method::POST)
            .uri(uri(endpoint, &self.options.invoke_path)?)
            .header(CONTENT_TYPE, "application/json");
        if let Some(signer) = &peer.signer {
            builder = builder.header(SIGNATURE_HEADER, signer.sign(&body));
        }
        if let Some(tp) = invocation.trace.get("traceparent") {
            builder = builder.header("traceparent", tp.as_str());
        }
        let request = builder
            .body(WireBody::full(body))
            .map_err(|e| Error::config(format!("cannot build the request: {e}")))?;
        let limit = invocation
            .limits
            .response
            .unwrap_or(self.options.max_response_bytes as u64);
        let (status, headers, body) = self.exchange(request, &endpoint.url, limit).await?;
        if status != StatusCode::OK {
            return Err(error_for_status(status.as_u16(), &String::from_utf8_lossy(&body)));
        }
        if headers.contains_key(wire::CODECS) {
            peer.learn(&headers);
        }
        let response: InvocationResponse = serde_json::from_slice(&body)
            .map_err(|e| Error::transport(format!("runner {} sent a malformed reply: {e}", endpoint.url)))?;
        response.into_result().map(Reply::Json)
    }

    async fn invoke_binary(
        &self,
        endpoint: &Endpoint,
        invocation: &Invocation,
        peer: &Peer,
    ) -> Result<Reply> {
        let len = invocation.args.binary_len()?.unwrap_or(0);
        if let Some(limit) = invocation.limits.request.or(peer.max_body()) {
            check_request_size(len, limit)?;
        }
        let mut envelope = invocation.envelope(String::new());
        envelope.seq = Some(peer.next_seq());
        let trailer = peer.signer.is_some() && len > wire::INLINE_MAX;
        let flags: String = [(invocation.cast, 'c'), (invocation.stream, 's'), (trailer, 't')]
            .iter()
            .filter_map(|(on, f)| on.then_some(*f))
            .collect();
        let mut headers = wire::headers(&envelope, &flags, len)?;
        let payload = invocation.args.to_binary()?;
        let body = match &peer.signer {
            None => WireBody::from_body(payload),
            Some(signer) if trailer => {
                let mac = wire::sign_envelope(&mut headers, signer)?;
                WireBody::stream(
                    Some(len + wire::TAG_LEN),
                    wire::signed(payload.into_stream(), mac),
                )
            }
            Some(signer) => {
                let bytes = payload.collect(len).await?;
                wire::sign_inline(&mut headers, signer, &bytes)?;
                WireBody::full(bytes)
            }
        };
        let mut request = Request::new(body);
        *request.method_mut() = Method::POST;
        *request.uri_mut() = uri(endpoint, &self.options.invoke_path)?;
        *request.headers_mut() = headers;
        let response = self.send(request, &endpoint.url).await?;
        let (parts, incoming) = response.into_parts();
        if parts.status != StatusCode::OK {
            let text = wire::collect(wire::chunks(incoming, 64 * 1024, "reply"), 64 * 1024)
                .await
                .unwrap_or_default();
            let err = error_for_status(parts.status.as_u16(), &String::from_utf8_lossy(&text));
            return Err(if parts.status == StatusCode::UNSUPPORTED_MEDIA_TYPE {
                err.with_remote_code(UNSUPPORTED)
            } else {
                err
            });
        }
        let max = invocation
            .limits
            .response
            .unwrap_or(self.options.max_response_bytes as u64);
        let url = &endpoint.url;
        match parts.headers.get(wire::RESULT).map(HeaderValue::as_bytes) {
            Some(b"ok") => {
                let declared = content_length(&parts.headers);
                if let Some(n) = declared.filter(|n| *n > max) {
                    return Err(reply_too_large(url, n, max));
                }
                Ok(Reply::Binary(Body::stream(
                    declared,
                    wire::chunks(incoming, max, "reply"),
                )))
            }
            Some(b"stream") => Ok(Reply::Stream(Body::stream(
                None,
                wire::chunks(incoming, u64::MAX, "streamed reply"),
            ))),
            Some(b"error") => {
                let limit = 1024 * 1024;
                let body = wire::collect(wire::chunks(incoming, limit, "reply"), limit).await?;
                let wire_error: WireError = serde_json::from_slice(&body)
                    .map_err(|e| Error::transport(format!("runner {url} sent a malformed error: {e}")))?;
                Err(wire_error.into_error())
            }
            _ => Err(Error::transport(format!(
                "runner {url} sent a binary reply without x-flame-result"
            ))),
        }
    }
}

/// The remote code a 415 reply is given here, to tell it from other transport errors.
const UNSUPPORTED: &str = "unsupported_media_type";

fn content_length(headers: &HeaderMap) -> Option<u64> {
    headers
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse().ok())
}

/// A request over its limit is refused here, never sent (the runner would refuse it too).
fn check_request_size(len: u64, limit: u64) -> Result<()> {
    if len > limit {
        return Err(Error::new(
            ErrorCode::PayloadTooLarge,
            format!("the request's {len} bytes are over the limit of {limit} bytes; it was not sent"),
        ));
    }
    Ok(())
}

fn reply_too_large(url: &str, len: u64, limit: u64) -> Error {
    Error::new(
        ErrorCode::PayloadTooLarge,
        format!("runner {url} sent a reply of {len} bytes or more, over the limit of {limit} bytes"),
    )
}

fn uri(endpoint: &Endpoint, path: &str) -> Result<Uri> {
    let text = format!("{}{}", endpoint.url, path);
    text.parse::<Uri>()
        .map_err(|e| Error::config(format!("runner URL {text:?} is invalid: {e}")))
}

/// Maps a hyper client error: failing to connect proves the request was never delivered.
fn client_error(err: hyper_util::client::legacy::Error, url: &str) -> Error {
    let mut text = err.to_string();
    let mut source = std::error::Error::source(&err);
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    if err.is_connect() {
        Error::not_delivered(format!("cannot connect to runner {url}: {text}")).with_source(err)
    } else {
        Error::transport(format!("request to runner {url} failed: {text}")).with_source(err)
    }
}

#[async_trait]
impl Transport for HttpTransport {
    async fn invoke(&self, endpoint: &Endpoint, invocation: &Invocation) -> Result<Reply> {
        if invocation.remaining().is_some_and(|left| left.is_zero()) {
            return Err(Error::new(
                ErrorCode::Timeout,
                "call deadline passed before it was sent",
            ));
        }
        let peer = self.peer(endpoint);
        match self.codec_for(endpoint, invocation, &peer).await? {
            Codec::Binary => match self.invoke_binary(endpoint, invocation, &peer).await {
                // The runner cannot decode this method's arguments from the binary codec (and
                // read none of them): send them as JSON, now and from now on.
                Err(e) if e.remote_code() == Some(UNSUPPORTED) && !invocation.stream => {
                    peer.set_json_args(invocation);
                    self.invoke_json(endpoint, invocation, &peer).await
                }
                other => other,
            },
            Codec::Json if invocation.stream => Err(Error::new(
                ErrorCode::BadRequest,
                format!(
                    "runner {} does not take the binary codec, which a streamed result needs \
                     (the TypeScript reference has no streamed results)",
                    endpoint.url
                ),
            )),
            Codec::Json => self.invoke_json(endpoint, invocation, &peer).await,
        }
    }

    async fn ping(&self, endpoint: &Endpoint) -> Result<RunnerStatus> {
        let mut builder = Request::builder()
            .method(Method::GET)
            .uri(uri(endpoint, "/health")?);
        if let Some(secret) = &endpoint.secret {
            let ts = now_millis();
            builder = builder.header(TIMESTAMP_HEADER, ts.to_string()).header(
                SIGNATURE_HEADER,
                sign::sign(secret, sign::health_message(ts).as_bytes()),
            );
        }
        let request = builder
            .body(WireBody::empty())
            .map_err(|e| Error::config(format!("cannot build the request: {e}")))?;
        let (status, headers, body) = match tokio::time::timeout(
            self.options.ping_timeout,
            self.exchange(request, &endpoint.url, 1024 * 1024),
        )
        .await
        {
            Ok(r) => r?,
            Err(_) => {
                return Err(Error::new(
                    ErrorCode::Timeout,
                    format!(
                        "runner {} did not answer ping within {} ms",
                        endpoint.url,
                        self.options.ping_timeout.as_millis()
                    ),
                ))
            }
        };
        let peer = self.peer(endpoint);
        if status != StatusCode::OK {
            // Not a flame-rs runner (the reference has no health endpoint): it speaks JSON.
            peer.codec.store(JSON_ONLY, Ordering::Relaxed);
            return Err(error_for_status(status.as_u16(), &String::from_utf8_lossy(&body)));
        }
        peer.learn(&headers);
        serde_json::from_slice(&body).map_err(|e| {
            Error::transport(format!(
                "runner {} sent a malformed health reply: {e}",
                endpoint.url
            ))
        })
    }
}
