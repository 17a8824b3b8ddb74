//! The runner side: a hyper HTTP/1.1 server that serves core's [`Dispatcher`].
//!
//! `POST {invoke_path}` runs invocations; `GET /health` answers pings. Every request passes,
//! in this order: the in-flight cap (503), the body limit while reading (413), the signature
//! (401), the JSON parser (400) — what only HTTP can check — and then core's runner pipeline,
//! the same for every transport ([`Dispatcher::handle`]): the `iat`/`exp` window (401), the
//! replay cache (401), the method lookup (404) and the idempotency cache, before a handler runs.

use crate::sign::{self, MAX_SKEW, SIGNATURE_HEADER, TIMESTAMP_HEADER};
use async_trait::async_trait;
use bytes::Bytes;
use flame_core::codec::InvocationRequest;
use flame_core::transport::now_millis;
use flame_core::{Config, DispatchReply, Dispatcher, Error, Result, RunnerServer, Secret};
use http::header::{CONNECTION, CONTENT_LENGTH, CONTENT_TYPE, RETRY_AFTER};
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, LengthLimitError, Limited};
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
    invoke_path: String,
    max_body: usize,
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
        let state = State {
            dispatcher,
            secret: config.secret.clone(),
            invoke_path: config.invoke_path.clone(),
            max_body: config.max_body_bytes,
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

type Reply = Response<Full<Bytes>>;

fn text(status: StatusCode, body: &'static str) -> Reply {
    let mut r = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    *r.status_mut() = status;
    r.headers_mut().insert(
        CONTENT_TYPE,
        http::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

fn json(body: Bytes) -> Reply {
    let mut r = Response::new(Full::new(body));
    r.headers_mut()
        .insert(CONTENT_TYPE, http::HeaderValue::from_static("application/json"));
    r
}

fn closing(mut r: Reply) -> Reply {
    r.headers_mut()
        .insert(CONNECTION, http::HeaderValue::from_static("close"));
    r
}

fn overloaded() -> Reply {
    let mut r = text(StatusCode::SERVICE_UNAVAILABLE, "Overloaded");
    r.headers_mut()
        .insert(RETRY_AFTER, http::HeaderValue::from_static("1"));
    r
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
    json(Bytes::from(body))
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
    let Ok(_permit) = state.in_flight.clone().try_acquire_owned() else {
        return overloaded();
    };
    // 2. The body limit, enforced while reading (a declared length over it is refused unread).
    let declared = req
        .headers()
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    if declared.is_some_and(|n| n > state.max_body as u64) {
        return closing(text(StatusCode::PAYLOAD_TOO_LARGE, "Payload too large"));
    }
    let signature = req
        .headers()
        .get(SIGNATURE_HEADER)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let limited = Limited::new(req.into_body(), state.max_body);
    let body = match tokio::time::timeout(state.options.body_read_timeout, limited.collect()).await {
        Err(_) => return closing(text(StatusCode::REQUEST_TIMEOUT, "Request timeout")),
        Ok(Err(e)) if e.downcast_ref::<LengthLimitError>().is_some() => {
            return closing(text(StatusCode::PAYLOAD_TOO_LARGE, "Payload too large"))
        }
        Ok(Err(_)) => return closing(text(StatusCode::BAD_REQUEST, "Invalid body")),
        Ok(Ok(collected)) => collected.to_bytes(),
    };
    // 3. The signature over the raw bytes, in constant time.
    if let Some(secret) = &state.secret {
        let valid = signature
            .as_deref()
            .is_some_and(|sig| sign::verify(secret, &body, sig));
        if !valid {
            return text(StatusCode::UNAUTHORIZED, "Invalid signature");
        }
    }
    // 4. The envelope, then core's pipeline (window, replay, method, idempotency, handler).
    let Ok(request) = serde_json::from_slice::<InvocationRequest>(&body) else {
        return text(StatusCode::BAD_REQUEST, "Invalid JSON");
    };
    reply(state.dispatcher.handle(request).await)
}

/// An HTTP response for a pipeline reply (503 gets `Retry-After`).
fn reply(r: DispatchReply) -> Reply {
    if r.status == 503 {
        return overloaded();
    }
    let mut resp = Response::new(Full::new(r.body));
    *resp.status_mut() = StatusCode::from_u16(r.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    resp.headers_mut()
        .insert(CONTENT_TYPE, http::HeaderValue::from_static(r.content_type));
    resp
}
