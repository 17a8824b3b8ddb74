//! The runner side: a hyper HTTP/1.1 server that serves core's [`Dispatcher`].
//!
//! `POST {invoke_path}` runs invocations; `GET /health` answers pings. The request's content
//! type picks the codec: `application/json` is wire protocol v1 (the TypeScript reference's),
//! `application/x-flame-bincode` the binary codec of flame-rs parents ([`crate::wire`]). Every
//! request passes, in this order, what only HTTP can check: the in-flight cap (503); the body
//! limit — the method's own (`Method::with_max_request_bytes`) or `FLAME_MAX_BODY_BYTES` — on
//! the declared length before reading (413) and while reading (413); the signature (401) —
//! for a large binary payload, the envelope's before any payload byte is read and the
//! payload's trailer as it ends; the envelope's syntax (400). Then core's runner pipeline, the
//! same for every transport ([`Dispatcher::handle`], [`Dispatcher::handle_binary`]): the
//! `iat`/`exp` window (401), replay rejection (401), the method (404) and the idempotency
//! cache, before a handler runs. A binary payload is never held whole: it is decoded as it
//! arrives, and a large result is encoded as it is sent.

use crate::sign::{self, Signer, MAX_SKEW, SIGNATURE_HEADER, TIMESTAMP_HEADER};
use crate::wire::{self, WireBody};
use async_trait::async_trait;
use bytes::Bytes;
use flame_core::codec::{Codec, InvocationRequest};
use flame_core::runner::ReplyKind;
use flame_core::stream::{Body, STREAM_THRESHOLD};
use flame_core::transport::now_millis;
use flame_core::{Config, DispatchReply, Dispatcher, Error, ErrorCode, Result, RunnerServer, Secret};
use futures::stream::BoxStream;
use futures::StreamExt;
use http::header::{CONNECTION, CONTENT_LENGTH, CONTENT_TYPE, RETRY_AFTER};
use http::{HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, LengthLimitError, Limited};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use std::convert::Infallible;
use std::io::Write;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// The environment variable that lets a runner without a secret listen on a non-loopback
/// address (`FLAME_ALLOW_INSECURE=true`).
pub const ALLOW_INSECURE_ENV: &str = "FLAME_ALLOW_INSECURE";

/// Limits and timeouts of the runner server. [`ServerOptions::default`] reads
/// `FLAME_ALLOW_INSECURE`; everything else has fixed defaults.
///
/// ```
/// use flame_http::ServerOptions;
/// use std::time::Duration;
/// let opts = ServerOptions::default().max_in_flight(64).drain_grace(Duration::from_secs(10));
/// assert_eq!(opts.max_in_flight, 64);
/// ```
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct ServerOptions {
    /// Invocations handled at once (reading, waiting or running); past it a request gets 503
    /// `Overloaded` at once, before its body is read. Default 256.
    pub max_in_flight: usize,
    /// Open connections at once; past it new connections are closed at once. Default 1024.
    pub max_connections: usize,
    /// A connection must deliver a request's headers within this (also closes idle
    /// keep-alive connections after it). Default 30 s.
    pub header_read_timeout: Duration,
    /// A request's body must arrive within this, else 408 and the connection closes.
    /// Default 30 s.
    pub body_read_timeout: Duration,
    /// On shutdown, calls in flight get this long to finish. Default 30 s.
    pub drain_grace: Duration,
    /// Clock skew accepted on signed health timestamps. Default 60 s. (The envelope's window,
    /// replay and idempotency bounds are core's: `flame_core::runner::RunnerLimits`.)
    pub max_skew: Duration,
    /// Listen on non-loopback addresses without a secret (`FLAME_ALLOW_INSECURE`). Default
    /// false.
    pub allow_insecure: bool,
    /// Print `FLAME_READY <url>` on stdout once listening. Default true.
    pub announce: bool,
    /// Drain on SIGTERM and SIGINT. Default true.
    pub handle_signals: bool,
}

impl Default for ServerOptions {
    fn default() -> Self {
        let allow_insecure = std::env::var(ALLOW_INSECURE_ENV)
            .map(|v| {
                matches!(
                    v.trim().to_ascii_lowercase().as_str(),
                    "1" | "true" | "yes" | "on"
                )
            })
            .unwrap_or(false);
        ServerOptions {
            max_in_flight: 256,
            max_connections: 1024,
            header_read_timeout: Duration::from_secs(30),
            body_read_timeout: Duration::from_secs(30),
            drain_grace: Duration::from_secs(30),
            max_skew: MAX_SKEW,
            allow_insecure,
            announce: true,
            handle_signals: true,
        }
    }
}

macro_rules! setter {
    ($(#[$doc:meta])* $name:ident: $ty:ty) => {
        $(#[$doc])*
        pub fn $name(mut self, value: $ty) -> Self {
            self.$name = value;
            self
        }
    };
}

impl ServerOptions {
    setter!(/// Sets [`ServerOptions::max_in_flight`].
        max_in_flight: usize);
    setter!(/// Sets [`ServerOptions::max_connections`].
        max_connections: usize);
    setter!(/// Sets [`ServerOptions::header_read_timeout`].
        header_read_timeout: Duration);
    setter!(/// Sets [`ServerOptions::body_read_timeout`].
        body_read_timeout: Duration);
    setter!(/// Sets [`ServerOptions::drain_grace`].
        drain_grace: Duration);
    setter!(/// Sets [`ServerOptions::max_skew`].
        max_skew: Duration);
    setter!(/// Sets [`ServerOptions::allow_insecure`].
        allow_insecure: bool);
    setter!(/// Sets [`ServerOptions::announce`].
        announce: bool);
    setter!(/// Sets [`ServerOptions::handle_signals`].
        handle_signals: bool);
}

/// The runner server: implements core's [`RunnerServer`] over hyper.
///
/// ```no_run
/// # async fn run() -> flame_core::Result<()> {
/// use flame_core::{Config, Dispatcher, Registry, RunnerServer};
/// use std::sync::Arc;
/// let dispatcher = Arc::new(Dispatcher::new(Registry::new(), "runner-1"));
/// let shutdown = tokio_util::sync::CancellationToken::new();
/// // Prints `FLAME_READY http://127.0.0.1:<port>`, serves until `shutdown` fires, then drains.
/// // (In runner mode `FlameBuilder::start` does this, and fires `shutdown` on SIGTERM.)
/// flame_http::HttpServer::new()
///     .serve(dispatcher, &Config::default(), shutdown)
///     .await
/// # }
/// ```
#[derive(Debug, Clone, Default)]
pub struct HttpServer {
    options: ServerOptions,
}

impl HttpServer {
    /// A server with [`ServerOptions::default`].
    pub fn new() -> Self {
        HttpServer::default()
    }

    /// A server with `options`.
    pub fn with_options(options: ServerOptions) -> Self {
        HttpServer { options }
    }

    /// The options.
    pub fn options(&self) -> &ServerOptions {
        &self.options
    }

    /// Binds the listen address of `config` without serving yet (so a caller can learn the
    /// port first).
    pub async fn bind(&self, dispatcher: Arc<Dispatcher>, config: &Config) -> Result<BoundServer> {
        BoundServer::bind(dispatcher, config, self.options.clone()).await
    }
}

/// As core's [`RunnerServer`] (what `FlameBuilder::start` uses in runner mode), the server
/// installs no signal handler of its own: core's runner owns SIGTERM/Ctrl-C (it drains and fires
/// `shutdown`), so one process has one handler.
#[async_trait]
impl RunnerServer for HttpServer {
    async fn serve(
        &self,
        dispatcher: Arc<Dispatcher>,
        config: &Config,
        shutdown: CancellationToken,
    ) -> Result<()> {
        let options = self.options.clone().handle_signals(false);
        let bound = BoundServer::bind(dispatcher, config, options).await?;
        if self.options.announce {
            bound.announce();
        }
        bound.run(shutdown).await
    }
}

/// Serves `dispatcher` over HTTP on its own (without a `Flame` runner around it) with the
/// default [`ServerOptions`]: binds, prints `FLAME_READY <url>`, serves until `shutdown` fires
/// or SIGTERM/SIGINT arrives, drains, returns.
pub async fn serve(dispatcher: Arc<Dispatcher>, config: &Config, shutdown: CancellationToken) -> Result<()> {
    let options = ServerOptions::default();
    let bound = BoundServer::bind(dispatcher, config, options.clone()).await?;
    if options.announce {
        bound.announce();
    }
    bound.run(shutdown).await
}

/// The address a runner listens on: `config.listen`, else `127.0.0.1:0` when a parent spawned
/// it (`parent_id` set), else `0.0.0.0:8080`.
pub fn listen_addr(config: &Config) -> SocketAddr {
    config.listen.unwrap_or_else(|| {
        if config.parent_id.is_some() {
            SocketAddr::from((Ipv4Addr::LOCALHOST, 0))
        } else {
            SocketAddr::from((Ipv4Addr::UNSPECIFIED, 8080))
        }
    })
}

/// The URL a client on this machine reaches `addr` at (unspecified addresses become loopback).
pub fn url_for(addr: SocketAddr) -> String {
    let ip = match addr.ip() {
        IpAddr::V4(v4) if v4.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(v6) if v6.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        ip => ip,
    };
    format!("http://{}", SocketAddr::new(ip, addr.port()))
}

/// A server bound to its address, not serving yet.
pub struct BoundServer {
    listener: TcpListener,
    local_addr: SocketAddr,
    state: Arc<State>,
}

impl std::fmt::Debug for BoundServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BoundServer")
            .field("local_addr", &self.local_addr)
            .finish()
    }
}

struct State {
    dispatcher: Arc<Dispatcher>,
    secret: Option<Secret>,
    /// The secret's keyed HMAC state, made once.
    signer: Option<Signer>,
    invoke_path: String,
    /// The default request limit (`FLAME_MAX_BODY_BYTES`).
    max_body: u64,
    /// What a JSON body may be read up to before its method is known: the largest limit.
    json_read_limit: u64,
    /// `x-flame-max-body`'s value, made once.
    max_body_header: HeaderValue,
    options: ServerOptions,
    in_flight: Arc<Semaphore>,
}

impl BoundServer {
    /// Binds per `config` (see [`listen_addr`]). Without a secret, a non-loopback address is
    /// refused unless [`ServerOptions::allow_insecure`].
    pub async fn bind(
        dispatcher: Arc<Dispatcher>,
        config: &Config,
        options: ServerOptions,
    ) -> Result<BoundServer> {
        let addr = listen_addr(config);
        if config.secret.is_none() && !addr.ip().is_loopback() && !options.allow_insecure {
            return Err(Error::config(format!(
                "refusing to listen on {addr} without FLAME_SECRET: anyone who reaches it could run \
                 handlers. Set FLAME_SECRET, listen on 127.0.0.1, or set {ALLOW_INSECURE_ENV}=true"
            )));
        }
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|e| Error::config(format!("cannot listen on {addr}: {e}")).with_source(e))?;
        let local_addr = listener
            .local_addr()
            .map_err(|e| Error::config(format!("listener has no address: {e}")).with_source(e))?;
        let max_body = config.max_body_bytes as u64;
        let json_read_limit = dispatcher
            .registry()
            .largest_request_limit()
            .map_or(max_body, |n| n.max(max_body));
        let state = State {
            dispatcher,
            secret: config.secret.clone(),
            signer: config.secret.as_ref().map(Signer::new),
            invoke_path: config.invoke_path.clone(),
            max_body,
            json_read_limit,
            max_body_header: HeaderValue::from(max_body),
            in_flight: Arc::new(Semaphore::new(options.max_in_flight.max(1))),
            options,
        };
        Ok(BoundServer {
            listener,
            local_addr,
            state: Arc::new(state),
        })
    }

    /// The bound address.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The URL to reach this server from this machine.
    pub fn url(&self) -> String {
        url_for(self.local_addr)
    }

    /// Prints the one line `FLAME_READY <url>` on stdout and flushes it.
    pub fn announce(&self) {
        let mut out = std::io::stdout().lock();
        // A closed stdout must not stop the runner: the line is a courtesy to the spawner.
        let _ = writeln!(out, "FLAME_READY {}", self.url());
        let _ = out.flush();
    }

    /// Serves until `shutdown` fires (or SIGTERM/SIGINT, when handled), then drains: stops
    /// accepting, lets calls in flight finish within the drain grace, and returns.
    pub async fn run(self, shutdown: CancellationToken) -> Result<()> {
        let BoundServer {
            listener,
            local_addr,
            state,
        } = self;
        let signal = signal_token(state.options.handle_signals, shutdown.clone());
        let graceful = GracefulShutdown::new();
        let connections = Arc::new(Semaphore::new(state.options.max_connections.max(1)));
        let mut tasks = JoinSet::new();
        tracing::info!(%local_addr, runner = state.dispatcher.runner_id(), "flame runner listening");
        loop {
            tokio::select! {
                biased;
                _ = shutdown.cancelled() => break,
                _ = signal.cancelled() => break,
                Some(_) = tasks.join_next(), if !tasks.is_empty() => {}
                accepted = listener.accept() => {
                    let (stream, peer) = match accepted {
                        Ok(a) => a,
                        Err(e) => {
                            tracing::warn!(error = %e, "accept failed");
                            tokio::time::sleep(Duration::from_millis(20)).await;
                            continue;
                        }
                    };
                    let Ok(permit) = connections.clone().try_acquire_owned() else {
                        tracing::warn!(%peer, "connection limit reached; closing new connection");
                        continue;
                    };
                    let _ = stream.set_nodelay(true);
                    let st = state.clone();
                    let svc = service_fn(move |req| {
                        let st = st.clone();
                        async move { Ok::<_, Infallible>(handle(st, req).await) }
                    });
                    let mut builder = hyper::server::conn::http1::Builder::new();
                    builder
                        .timer(TokioTimer::new())
                        .header_read_timeout(state.options.header_read_timeout)
                        .keep_alive(true);
                    let conn = graceful.watch(builder.serve_connection(TokioIo::new(stream), svc));
                    tasks.spawn(async move {
                        if let Err(e) = conn.await {
                            tracing::debug!(%peer, error = %e, "connection ended with an error");
                        }
                        drop(permit);
                    });
                }
            }
        }
        drop(listener);
        state.dispatcher.set_draining();
        let grace_end = Instant::now() + state.options.drain_grace;
        tracing::info!(in_flight = state.dispatcher.in_flight(), "flame runner draining");
        let drained = tokio::time::timeout_at(grace_end, async {
            graceful.shutdown().await;
            state.dispatcher.wait_detached().await;
        })
        .await;
        if drained.is_err() {
            tracing::warn!(
                in_flight = state.dispatcher.in_flight(),
                "drain grace elapsed; cancelling the calls still in flight"
            );
        }
        state.dispatcher.stop_all();
        tasks.abort_all();
        while tasks.join_next().await.is_some() {}
        let _ = tokio::time::timeout(Duration::from_millis(100), state.dispatcher.wait_detached()).await;
        tracing::info!("flame runner stopped");
        Ok(())
    }
}

/// A token that fires on SIGTERM or SIGINT (when `enabled`), or with `parent`.
fn signal_token(enabled: bool, parent: CancellationToken) -> CancellationToken {
    let token = parent.child_token();
    if !enabled {
        return token;
    }
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let (term, int) = (signal(SignalKind::terminate()), signal(SignalKind::interrupt()));
        match (term, int) {
            (Ok(mut term), Ok(mut int)) => {
                let t = token.clone();
                tokio::spawn(async move {
                    tokio::select! {
                        _ = term.recv() => tracing::info!("SIGTERM: draining"),
                        _ = int.recv() => tracing::info!("SIGINT: draining"),
                        _ = t.cancelled() => return,
                    }
                    t.cancel();
                });
            }
            _ => tracing::warn!("cannot install signal handlers; drain only on shutdown"),
        }
    }
    token
}

type Reply = Response<WireBody>;

fn text(status: StatusCode, body: &'static str) -> Reply {
    text_owned(status, Bytes::from_static(body.as_bytes()))
}

fn text_owned(status: StatusCode, body: impl Into<Bytes>) -> Reply {
    let mut r = Response::new(WireBody::full(body.into()));
    *r.status_mut() = status;
    r.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

fn json(body: Bytes) -> Reply {
    let mut r = Response::new(WireBody::full(body));
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    r
}

fn closing(mut r: Reply) -> Reply {
    r.headers_mut()
        .insert(CONNECTION, HeaderValue::from_static("close"));
    r
}

fn overloaded() -> Reply {
    let mut r = text(StatusCode::SERVICE_UNAVAILABLE, "Overloaded");
    r.headers_mut().insert(RETRY_AFTER, HeaderValue::from_static("1"));
    r
}

/// What a runner tells a parent about the codecs it takes (every reply to a parent carries it:
/// a parent that spoke JSON first learns to speak binary).
fn advertise(r: &mut Reply, state: &State) {
    let headers = r.headers_mut();
    headers.insert(wire::CODECS, HeaderValue::from_static("bincode"));
    headers.insert(wire::MAX_BODY, state.max_body_header.clone());
}

/// Bodies over their limit by no more than this are read and dropped after the 413, so that a
/// client still sending sees the 413 rather than a broken pipe; bigger ones are cut off.
const DRAIN_MAX: u64 = 16 * 1024 * 1024;

/// A 413 for a body whose declared length is over its limit: the body is drained (up to
/// [`DRAIN_MAX`], within the body read timeout) so the client reads the answer, or the
/// connection is closed.
fn too_large(state: &State, incoming: Incoming, declared: u64) -> Reply {
    drained(
        state,
        incoming,
        declared,
        text(StatusCode::PAYLOAD_TOO_LARGE, "Payload too large"),
    )
}

/// `reply` to a request whose body is not read: the body is drained (up to [`DRAIN_MAX`],
/// within the body read timeout) so the client reads the answer, or the connection is closed.
fn drained(state: &State, incoming: Incoming, declared: u64, reply: Reply) -> Reply {
    if declared > DRAIN_MAX {
        return closing(reply);
    }
    let timeout = state.options.body_read_timeout;
    tokio::spawn(async move {
        let mut chunks = wire::chunks(incoming, DRAIN_MAX, "over-limit body");
        let _ = tokio::time::timeout(
            timeout,
            async move { while let Some(Ok(_)) = chunks.next().await {} },
        )
        .await;
    });
    reply
}

fn declared_length(req: &Request<Incoming>) -> Option<u64> {
    req.headers()
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
}

async fn handle(state: Arc<State>, req: Request<Incoming>) -> Reply {
    let path = req.uri().path();
    if req.method() == Method::POST && path == state.invoke_path {
        invoke(state, req).await
    } else if req.method() == Method::GET && path == "/health" {
        health(&state, &req)
    } else {
        text(StatusCode::NOT_FOUND, "Not found")
    }
}

fn health(state: &State, req: &Request<Incoming>) -> Reply {
    let authenticated = match &state.secret {
        None => true,
        Some(secret) => health_signed(secret, req, state.options.max_skew),
    };
    let status = if authenticated {
        state.dispatcher.note_parent_contact();
        state.dispatcher.status()
    } else {
        // Strangers learn liveness and how long the parent has been silent (what `reap` needs
        // to tell a live parent's runner from an orphan), nothing else.
        state.dispatcher.liveness()
    };
    let body = serde_json::to_vec(&status).unwrap_or_else(|_| b"{\"ok\":true}".to_vec());
    let mut reply = json(Bytes::from(body));
    advertise(&mut reply, state);
    reply
}

fn health_signed(secret: &Secret, req: &Request<Incoming>, skew: Duration) -> bool {
    let header = |name: &str| req.headers().get(name).and_then(|v| v.to_str().ok());
    let (Some(ts), Some(sig)) = (header(TIMESTAMP_HEADER), header(SIGNATURE_HEADER)) else {
        return false;
    };
    let Ok(ts) = ts.trim().parse::<u64>() else {
        return false;
    };
    now_millis().abs_diff(ts) <= skew.as_millis() as u64
        && sign::verify(secret, sign::health_message(ts).as_bytes(), sig)
}

async fn invoke(state: Arc<State>, req: Request<Incoming>) -> Reply {
    // 1. The in-flight cap, before anything is read.
    let Ok(permit) = state.in_flight.clone().try_acquire_owned() else {
        return overloaded();
    };
    let codec = req
        .headers()
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(Codec::from_content_type);
    let reply = match codec {
        Some(Codec::Binary) => invoke_binary(&state, req).await,
        _ => invoke_json(&state, req).await,
    };
    // A result still being sent (large, or streamed) keeps its in-flight slot until it ends.
    if reply.body().is_streamed() {
        reply.map(|b| b.holding(permit))
    } else {
        reply
    }
}

/// The body's chunks, each within the body read timeout of the last.
fn timed(chunks: BoxStream<'static, Result<Bytes>>, idle: Duration) -> BoxStream<'static, Result<Bytes>> {
    futures::stream::unfold(Some(chunks), move |state| async move {
        let mut chunks = state?;
        match tokio::time::timeout(idle, chunks.next()).await {
            Ok(Some(c)) => Some((c, Some(chunks))),
            Ok(None) => None,
            Err(_) => Some((
                Err(Error::new(ErrorCode::Timeout, "the request body stalled")),
                None,
            )),
        }
    })
    .boxed()
}

/// The JSON wire (v1, the reference's): the body is read whole (within the largest limit of
/// any method), its signature checked over the raw bytes, then parsed.
async fn invoke_json(state: &State, req: Request<Incoming>) -> Reply {
    // 2. The body limit, enforced while reading (a declared length over it is refused unread).
    if let Some(n) = declared_length(&req).filter(|n| *n > state.json_read_limit) {
        return too_large(state, req.into_body(), n);
    }
    let signature = req
        .headers()
        .get(SIGNATURE_HEADER)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let body = match read_small(state, req.into_body(), state.json_read_limit).await {
        Ok(b) => b,
        Err(reply) => return reply,
    };
    // 3. The signature over the raw bytes, in constant time.
    if let Some(signer) = &state.signer {
        let valid = signature.as_deref().is_some_and(|sig| signer.verify(&body, sig));
        if !valid {
            return text(StatusCode::UNAUTHORIZED, "Invalid signature");
        }
    }
    // 4. The envelope, its method's own limit, then core's pipeline (window, replay, method,
    //    idempotency, handler).
    let Ok(request) = serde_json::from_slice::<InvocationRequest>(&body) else {
        return text(StatusCode::BAD_REQUEST, "Invalid JSON");
    };
    let limit = state
        .dispatcher
        .request_limit(&request.service_id, &request.method_id, state.max_body);
    if body.len() as u64 > limit {
        return text(StatusCode::PAYLOAD_TOO_LARGE, "Payload too large");
    }
    let mut reply = reply(state.dispatcher.handle(request).await);
    if reply.status() == StatusCode::OK {
        advertise(&mut reply, state);
    }
    reply
}

/// Reads a body whole, within `limit` and the body read timeout (the JSON wire, and small
/// binary payloads): a 408, 413 or 400 reply when it cannot.
async fn read_small(state: &State, body: Incoming, limit: u64) -> std::result::Result<Bytes, Reply> {
    let limited = Limited::new(body, usize::try_from(limit).unwrap_or(usize::MAX));
    match tokio::time::timeout(state.options.body_read_timeout, limited.collect()).await {
        Err(_) => Err(closing(text(StatusCode::REQUEST_TIMEOUT, "Request timeout"))),
        Ok(Err(e)) if e.downcast_ref::<LengthLimitError>().is_some() => {
            Err(closing(text(StatusCode::PAYLOAD_TOO_LARGE, "Payload too large")))
        }
        Ok(Err(_)) => Err(closing(text(StatusCode::BAD_REQUEST, "Invalid body"))),
        Ok(Ok(collected)) => Ok(collected.to_bytes()),
    }
}

/// The binary codec (flame-rs parents): the envelope from the headers, checked — limit, and
/// for a large payload the signature — before a byte of the payload is read; the payload then
/// streams into core's pipeline, which decodes it as it arrives (see [`crate::wire`]).
async fn invoke_binary(state: &State, req: Request<Incoming>) -> Reply {
    let envelope = match wire::read_envelope(req.headers()) {
        Ok(e) => e,
        Err(msg) => return text_owned(StatusCode::BAD_REQUEST, msg),
    };
    let len = envelope.payload_len;
    let trailer = envelope.trailer;
    let expected = len + if trailer { wire::TAG_LEN } else { 0 };
    // 2. The limit of this method, on the declared length, before anything is read.
    let limit = state.dispatcher.request_limit(
        &envelope.request.service_id,
        &envelope.request.method_id,
        state.max_body,
    );
    if len > limit {
        return too_large(state, req.into_body(), expected);
    }
    // A request type the binary codec cannot decode (it needs a self-describing format): the
    // parent is told to send this method's arguments as JSON, before the payload is read.
    let registry = state.dispatcher.registry();
    if !registry.binary_args(&envelope.request.service_id, &envelope.request.method_id) {
        let reply = text(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "the arguments of this method need the JSON codec",
        );
        return drained(state, req.into_body(), expected, reply);
    }
    if declared_length(&req).is_some_and(|n| n != expected) {
        return closing(text(
            StatusCode::BAD_REQUEST,
            "content-length does not match the payload length",
        ));
    }
    // 3. The signature: of the envelope now when a trailer carries the payload's, else of both
    //    once the (small) payload is read.
    let mut pending_check = None;
    let mut mac = None;
    if let Some(signer) = &state.signer {
        let Some(sig) = req.headers().get(wire::SIGNATURE).and_then(|v| v.to_str().ok()) else {
            return text(StatusCode::UNAUTHORIZED, "Invalid signature");
        };
        let mut m = signer.mac();
        wire::update_canonical(&mut m, req.headers());
        if trailer {
            if !sign::verify_mac(m.clone(), sig) {
                return text(StatusCode::UNAUTHORIZED, "Invalid signature");
            }
            mac = Some(m);
        } else if len > wire::INLINE_MAX {
            return closing(text(
                StatusCode::BAD_REQUEST,
                "a signed payload over 64 KiB carries its signature in a trailer",
            ));
        } else {
            pending_check = Some((m, sig.to_owned()));
        }
    }
    let idle = state.options.body_read_timeout;
    let payload = if trailer {
        let chunks = timed(wire::chunks(req.into_body(), expected, "request body"), idle);
        Body::stream(Some(len), wire::verified(chunks, len, mac))
    } else if len <= STREAM_THRESHOLD || pending_check.is_some() {
        let bytes = match read_small(state, req.into_body(), len).await {
            Ok(b) if b.len() as u64 != len => {
                return closing(text(
                    StatusCode::BAD_REQUEST,
                    "the body is shorter than its payload length",
                ))
            }
            Ok(b) => b,
            Err(reply) => return reply,
        };
        if let Some((mut m, sig)) = pending_check {
            hmac::Mac::update(&mut m, &bytes);
            if !sign::verify_mac(m, &sig) {
                return text(StatusCode::UNAUTHORIZED, "Invalid signature");
            }
        }
        Body::full(bytes)
    } else {
        let chunks = timed(wire::chunks(req.into_body(), expected, "request body"), idle);
        Body::stream(Some(len), wire::exact(chunks, len))
    };
    // 4. Core's pipeline (window, replay, method, idempotency, handler).
    reply(state.dispatcher.handle_binary(envelope.request, payload).await)
}

/// An HTTP response for a pipeline reply (503 gets `Retry-After`; a binary reply says what it
/// is in `x-flame-result`).
fn reply(r: DispatchReply) -> Reply {
    if r.status == 503 {
        return overloaded();
    }
    let status = StatusCode::from_u16(r.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let (kind, content_type) = (r.kind, r.content_type);
    let body = match r.streamed {
        Some(b) => WireBody::from_body(b),
        None => WireBody::full(r.body),
    };
    let mut resp = Response::new(body);
    *resp.status_mut() = status;
    let headers = resp.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    let result = match kind {
        ReplyKind::Ok => Some("ok"),
        ReplyKind::Error => Some("error"),
        ReplyKind::Stream => Some("stream"),
        ReplyKind::Text | ReplyKind::Envelope => None,
    };
    if let Some(result) = result {
        headers.insert(wire::RESULT, HeaderValue::from_static(result));
    }
    resp
}
