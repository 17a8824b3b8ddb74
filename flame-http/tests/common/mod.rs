// Shared by the integration tests of flame-http (included with `mod common;`).
#![allow(dead_code, clippy::unwrap_used)]

use bytes::Bytes;
use flame_core::codec::{self, InvocationRequest};
use flame_core::transport::now_millis;
use flame_core::{
    Config, Context, Dispatcher, Endpoint, Error, ErrorCode, Invocation, Method, Registry, Secret,
};
use flame_http::{BoundServer, HttpServer, ServerOptions};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

pub const SECRET: &str = "test-secret";

pub const ADD: Method<(i64, i64), i64> = Method::new("math", "add");
pub const SLOW: Method<u64, String> = Method::new("test", "slow");
pub const PANIC: Method<(), ()> = Method::new("test", "panic");
pub const FAIL_WITH: Method<(String, bool), ()> = Method::new("test", "fail_with");
pub const REMOTE_CODE: Method<String, ()> = Method::new("test", "remote_code");
pub const TYPED_FAIL: Method<u32, u32> = Method::new("test", "typed_fail");
pub const COUNT: Method<(), usize> = Method::new("test", "count");
pub const SLOW_COUNT: Method<u64, usize> = Method::new("test", "slow_count");
pub const FLAKY: Method<usize, usize> = Method::new("test", "flaky");
pub const TRACE: Method<(), Option<String>> = Method::new("test", "trace");

#[derive(serde::Serialize, serde::Deserialize, Debug, PartialEq)]
pub enum Declined {
    Insufficient { needed: u32 },
}

impl std::fmt::Display for Declined {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "declined")
    }
}

/// Counters the handlers bump, so tests can tell whether (and how often) a handler ran.
#[derive(Clone, Default)]
pub struct Probe {
    pub runs: Arc<AtomicUsize>,
    pub cancelled: Arc<AtomicUsize>,
    pub started: Arc<AtomicUsize>,
    pub flaky_calls: Arc<AtomicUsize>,
    pub invocation_ids: Arc<Mutex<Vec<String>>>,
}

impl Probe {
    pub fn runs(&self) -> usize {
        self.runs.load(Ordering::SeqCst)
    }
    pub fn cancelled(&self) -> usize {
        self.cancelled.load(Ordering::SeqCst)
    }
    pub fn started(&self) -> usize {
        self.started.load(Ordering::SeqCst)
    }
}

pub fn registry(probe: &Probe) -> Registry {
    let p1 = probe.clone();
    let p2 = probe.clone();
    let p3 = probe.clone();
    let p4 = probe.clone();
    Registry::new()
        .handle(ADD, |_ctx: Context, (a, b): (i64, i64)| async move { Ok(a + b) })
        .handle(SLOW, move |ctx: Context, ms: u64| {
            let p = p1.clone();
            async move {
                p.started.fetch_add(1, Ordering::SeqCst);
                let watcher = ctx.cancellation().clone();
                let c = p.cancelled.clone();
                tokio::spawn(async move {
                    watcher.cancelled().await;
                    c.fetch_add(1, Ordering::SeqCst);
                });
                tokio::time::sleep(Duration::from_millis(ms)).await;
                Ok(format!("slept {ms}"))
            }
        })
        .handle(PANIC, |_ctx: Context, ()| async move {
            panic!("handler exploded");
        })
        .handle(
            FAIL_WITH,
            |_ctx: Context, (code, retryable): (String, bool)| async move {
                Err::<(), _>(
                    Error::new(ErrorCode::from_wire(&code), format!("failing with {code}"))
                        .with_retryable(retryable),
                )
            },
        )
        .handle(REMOTE_CODE, |_ctx: Context, code: String| async move {
            Err::<(), _>(Error::new(ErrorCode::Remote, "custom").with_remote_code(code))
        })
        .handle(TYPED_FAIL, |_ctx: Context, needed: u32| async move {
            Err::<u32, _>(Error::app(Declined::Insufficient { needed }))
        })
        .handle(COUNT, move |_ctx: Context, ()| {
            let p = p2.clone();
            async move { Ok(p.runs.fetch_add(1, Ordering::SeqCst) + 1) }
        })
        .handle(SLOW_COUNT, move |_ctx: Context, ms: u64| {
            let p = p3.clone();
            async move {
                let n = p.runs.fetch_add(1, Ordering::SeqCst) + 1;
                tokio::time::sleep(Duration::from_millis(ms)).await;
                Ok(n)
            }
        })
        .handle(FLAKY, move |ctx: Context, fail_first: usize| {
            let p = p4.clone();
            async move {
                p.invocation_ids
                    .lock()
                    .unwrap()
                    .push(ctx.invocation_id().to_owned());
                let n = p.flaky_calls.fetch_add(1, Ordering::SeqCst) + 1;
                if n <= fail_first {
                    Err(Error::new(ErrorCode::Overloaded, format!("flaky attempt {n}")))
                } else {
                    Ok(n)
                }
            }
        })
        .handle(TRACE, |ctx: Context, ()| async move {
            Ok(ctx.trace().get("traceparent").cloned())
        })
}

/// A server running in this process on 127.0.0.1.
pub struct TestServer {
    pub url: String,
    pub addr: SocketAddr,
    pub dispatcher: Arc<Dispatcher>,
    pub probe: Probe,
    pub shutdown: CancellationToken,
    pub task: Option<JoinHandle<flame_core::Result<()>>>,
    pub secret: Option<Secret>,
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.shutdown.cancel();
        if let Some(t) = self.task.take() {
            t.abort();
        }
    }
}

impl TestServer {
    pub fn endpoint(&self) -> Endpoint {
        Endpoint::new(self.url.clone(), "test-runner").with_secret(self.secret.clone())
    }

    /// Stops the server and waits (bounded) for `serve` to return.
    pub async fn stop(mut self) -> flame_core::Result<()> {
        self.shutdown.cancel();
        let task = self.task.take().unwrap();
        tokio::time::timeout(Duration::from_secs(10), task)
            .await
            .expect("serve did not return")
            .unwrap()
    }
}

pub fn options() -> ServerOptions {
    ServerOptions::default()
        .announce(false)
        .handle_signals(false)
        .drain_grace(Duration::from_secs(5))
}

pub async fn start(secret: Option<&str>) -> TestServer {
    start_with(secret, options(), |c| c).await
}

pub async fn start_with(
    secret: Option<&str>,
    options: ServerOptions,
    config: impl FnOnce(Config) -> Config,
) -> TestServer {
    let probe = Probe::default();
    let mut cfg = Config::default();
    cfg.secret = secret.map(Secret::new);
    cfg.listen = Some("127.0.0.1:0".parse().unwrap());
    let cfg = config(cfg);
    let dispatcher =
        Arc::new(Dispatcher::new(registry(&probe), "test-runner").with_parent(cfg.parent_id.is_some()));
    let bound: BoundServer = HttpServer::with_options(options)
        .bind(dispatcher.clone(), &cfg)
        .await
        .unwrap();
    let addr = bound.local_addr();
    let url = bound.url();
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(bound.run(shutdown.clone()));
    TestServer {
        url,
        addr,
        dispatcher,
        probe,
        shutdown,
        task: Some(task),
        secret: cfg.secret.clone(),
    }
}

pub fn invocation<Req: serde::Serialize, Resp>(
    method: Method<Req, Resp>,
    req: &Req,
    timeout: Duration,
) -> Invocation {
    Invocation {
        service_id: method.service_id().into(),
        method_id: method.method_id().into(),
        args: codec::encode_args(req).unwrap().into(),
        deadline: Some(Instant::now() + timeout),
        idempotency_key: None,
        trace: BTreeMap::new(),
        attempt: 1,
        cast: false,
        stream: false,
        limits: Default::default(),
    }
}

/// A well-formed envelope for `math`/`add` (2, 3), as JSON text.
pub fn envelope_with(mutate: impl FnOnce(&mut InvocationRequest)) -> Vec<u8> {
    let mut req = invocation(ADD, &(2, 3), Duration::from_secs(10))
        .to_request()
        .unwrap();
    mutate(&mut req);
    serde_json::to_vec(&req).unwrap()
}

pub fn envelope() -> Vec<u8> {
    envelope_with(|_| {})
}

pub fn count_envelope() -> Vec<u8> {
    envelope_with(|r| {
        r.service_id = "test".into();
        r.method_id = "count".into();
        r.args = r#"{"json":[]}"#.into();
    })
}

/// A raw HTTP/1.1 exchange on a fresh connection; returns (status, body).
pub async fn raw(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, String)],
    body: &[u8],
) -> (u16, String) {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nhost: {addr}\r\nconnection: close\r\ncontent-length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes()).await.unwrap();
    stream.write_all(body).await.unwrap();
    read_response(&mut stream).await
}

/// Reads a whole response (the server closes or sends Content-Length); returns (status, body).
pub async fn read_response(stream: &mut TcpStream) -> (u16, String) {
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), async {
        let mut chunk = [0u8; 8192];
        loop {
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    buf.extend_from_slice(&chunk[..n]);
                    if response_complete(&buf) {
                        break;
                    }
                }
            }
        }
    })
    .await;
    parse_response(&buf)
}

fn response_complete(buf: &[u8]) -> bool {
    let text = String::from_utf8_lossy(buf);
    let Some(end) = text.find("\r\n\r\n") else {
        return false;
    };
    let head = text[..end].to_ascii_lowercase();
    let len = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse::<usize>().ok());
    matches!(len, Some(n) if buf.len() >= end + 4 + n)
}

pub fn parse_response(buf: &[u8]) -> (u16, String) {
    let text = String::from_utf8_lossy(buf).to_string();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (status, body)
}

pub fn signed(body: &[u8]) -> Vec<(&'static str, String)> {
    vec![
        ("content-type", "application/json".into()),
        (
            "x-flame-signature",
            flame_http::sign::sign(&Secret::new(SECRET), body),
        ),
    ]
}

/// Proves the runner still serves: a signed `math`/`add` through the real transport.
pub async fn still_serves(server: &TestServer) {
    use flame_core::Transport;
    let t = flame_http::HttpTransport::new();
    let out = t
        .invoke(
            &server.endpoint(),
            &invocation(ADD, &(20, 22), Duration::from_secs(5)),
        )
        .await
        .expect("runner stopped serving");
    assert_eq!(out.json_text(), Some(r#"{"json":42}"#));
}

pub fn now() -> u64 {
    now_millis()
}

pub fn body_bytes(s: &str) -> Bytes {
    Bytes::from(s.to_owned())
}
