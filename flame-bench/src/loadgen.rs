//! The one load generator every server is driven with: a Rust hyper HTTP/1.1 client with `N`
//! keep-alive connections, each sending its next request as soon as the last one is answered
//! (closed loop), for a warm-up and then a fixed measured window, bounded by a request count.
//!
//! Every request is built fresh — a new `invocationId`, `iat` now, `exp` 30 s later — and, when
//! a secret is given, signed, exactly as `flame_http::HttpTransport` builds it, so runners that
//! reject replays and stale requests accept every one: a wire-protocol v1 JSON envelope (what
//! the TypeScript reference's client sends: no `seq`), or a binary-codec request (what a
//! flame-rs parent sends to a flame-rs runner: the envelope in headers with the sender's `seq`,
//! the arguments in bincode). A reply counts only if it is correct (200 and `"ok":true`, the
//! binary result `5`, or for the echo server the body back), so a fast stream of 401s can never
//! pass for throughput.

use crate::stats::Summary;
use bytes::Bytes;
use flame_core::codec::{binary, Codec, InvocationRequest};
use flame_core::runner::replay::format_seq;
use flame_core::transport::now_millis;
use flame_core::Secret;
use flame_http::sign::Signer;
use http::header::{CONTENT_TYPE, HOST};
use http::{HeaderValue, Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpStream;
use tokio::time::Instant;

/// How hard and how long to drive a server.
#[derive(Debug, Clone)]
pub struct LoadConfig {
    /// Keep-alive connections, each with one request in flight.
    pub connections: usize,
    /// Time before measuring starts (connections open, caches and JITs warm).
    pub warmup: Duration,
    /// The measured window.
    pub duration: Duration,
    /// Stop after this many requests (warm-up included), whatever the time.
    pub max_requests: u64,
}

impl Default for LoadConfig {
    fn default() -> Self {
        LoadConfig {
            connections: 32,
            warmup: Duration::from_secs(1),
            duration: Duration::from_secs(5),
            max_requests: 5_000_000,
        }
    }
}

/// What a correct reply looks like.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Expect {
    /// 200 with `{"ok":true,…}` (a runner, JSON wire).
    Ok,
    /// 200 with exactly these bytes (a runner, binary codec: the result's bincode).
    Body(Bytes),
    /// 200 with the request's own body (the echo server).
    Echo,
}

/// The requests to send: one method's call, optionally signed.
#[derive(Clone)]
pub struct RequestKind {
    /// The service id.
    pub service: String,
    /// The method id.
    pub method: String,
    /// superjson text of the positional arguments (JSON wire).
    pub args: String,
    /// The arguments' bincode (binary codec).
    pub payload: Bytes,
    /// The codec of the requests.
    pub codec: Codec,
    /// Signs every request with this secret.
    pub secret: Option<Secret>,
    signer: Option<Signer>,
    /// The path requests go to.
    pub path: String,
    /// What a correct reply is.
    pub expect: Expect,
    /// This sender's id and request counter (binary codec: the runner's replay window).
    sender: u64,
    seq: Arc<AtomicU64>,
}

impl std::fmt::Debug for RequestKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RequestKind")
            .field("service", &self.service)
            .field("method", &self.method)
            .field("codec", &self.codec)
            .field("signed", &self.secret.is_some())
            .finish()
    }
}

impl RequestKind {
    /// `math/add(2, 3)` to `/invoke` on the JSON wire (as the reference's client sends it),
    /// signed when `secret` is set.
    pub fn math_add(secret: Option<Secret>) -> RequestKind {
        RequestKind {
            service: "math".into(),
            method: "add".into(),
            args: r#"{"json":[2,3]}"#.into(),
            payload: Bytes::from(binary::encode(&(2i64, 3i64)).unwrap_or_default()),
            codec: Codec::Json,
            signer: secret.as_ref().map(Signer::new),
            secret,
            path: "/invoke".into(),
            expect: Expect::Ok,
            sender: uuid::Uuid::new_v4().as_u64_pair().0,
            seq: Arc::new(AtomicU64::new(0)),
        }
    }

    /// `math/add(2, 3)` in the binary codec (as a flame-rs parent sends it to a flame-rs
    /// runner), signed when `secret` is set; the answer is the bincode of `5i64`.
    pub fn math_add_binary(secret: Option<Secret>) -> RequestKind {
        let five = Bytes::from(binary::encode(&5i64).unwrap_or_default());
        RequestKind {
            codec: Codec::Binary,
            expect: Expect::Body(five),
            ..RequestKind::math_add(secret)
        }
    }

    /// The same unsigned `math/add` request in `codec`, expected back as it was sent (the echo
    /// server: same headers, same body).
    pub fn echo(codec: Codec) -> RequestKind {
        RequestKind {
            codec,
            expect: Expect::Echo,
            ..RequestKind::math_add(None)
        }
    }

    /// A fresh request (new id, current window, next `seq`), signed when a secret is set.
    pub fn request(&self, host: &str) -> Result<Request<Full<Bytes>>, String> {
        match self.codec {
            Codec::Json => {
                let (body, signature) = self.envelope();
                let mut builder = Request::builder()
                    .method(Method::POST)
                    .uri(self.path.as_str())
                    .header(HOST, host)
                    .header(CONTENT_TYPE, "application/json");
                if let Some(sig) = signature {
                    builder = builder.header(flame_http::sign::SIGNATURE_HEADER, sig);
                }
                builder.body(Full::new(body)).map_err(|e| e.to_string())
            }
            Codec::Binary => {
                let iat = now_millis();
                let envelope = InvocationRequest {
                    invocation_id: uuid::Uuid::new_v4().to_string(),
                    service_id: self.service.clone(),
                    method_id: self.method.clone(),
                    args: String::new(),
                    iat,
                    exp: iat + 30_000,
                    timeout_ms: Some(30_000),
                    idempotency_key: None,
                    trace: None,
                    attempt: Some(1),
                    cast: None,
                    stream: None,
                    seq: Some(format_seq(
                        self.sender,
                        self.seq.fetch_add(1, Ordering::Relaxed) + 1,
                    )),
                };
                let mut headers = flame_http::wire::headers(&envelope, "", self.payload.len() as u64)
                    .map_err(|e| e.to_string())?;
                if let Some(signer) = &self.signer {
                    flame_http::wire::sign_inline(&mut headers, signer, &self.payload)
                        .map_err(|e| e.to_string())?;
                }
                headers.insert(HOST, HeaderValue::from_str(host).map_err(|e| e.to_string())?);
                let mut request = Request::new(Full::new(self.payload.clone()));
                *request.method_mut() = Method::POST;
                *request.uri_mut() = self
                    .path
                    .parse()
                    .map_err(|e: http::uri::InvalidUri| e.to_string())?;
                *request.headers_mut() = headers;
                Ok(request)
            }
        }
    }

    /// A fresh JSON envelope (new id, current window) and its signature, if signed.
    pub fn envelope(&self) -> (Bytes, Option<String>) {
        let iat = now_millis();
        let request = InvocationRequest {
            invocation_id: uuid::Uuid::new_v4().to_string(),
            service_id: self.service.clone(),
            method_id: self.method.clone(),
            args: self.args.clone(),
            iat,
            exp: iat + 30_000,
            timeout_ms: Some(30_000),
            idempotency_key: None,
            trace: None,
            attempt: None,
            cast: None,
            stream: None,
            seq: None,
        };
        // A struct of strings and integers always serialises.
        let body = serde_json::to_vec(&request).unwrap_or_default();
        let signature = self.signer.as_ref().map(|s| s.sign(&body));
        (Bytes::from(body), signature)
    }
}

/// Drives the server at `addr` with `kind` requests as `config` says; returns what was
/// measured. Never panics on a misbehaving server: failures are counted as errors.
pub async fn run(addr: SocketAddr, kind: &RequestKind, config: &LoadConfig) -> Summary {
    let start = Instant::now();
    let measure_from = start + config.warmup;
    let end = measure_from + config.duration;
    let sent = Arc::new(AtomicU64::new(0));
    let kind = Arc::new(kind.clone());
    let mut tasks = Vec::with_capacity(config.connections);
    for _ in 0..config.connections.max(1) {
        let (kind, sent) = (kind.clone(), sent.clone());
        let max = config.max_requests;
        tasks.push(tokio::spawn(async move {
            connection(addr, &kind, measure_from, end, &sent, max).await
        }));
    }
    let mut samples = Vec::new();
    let mut errors = 0;
    let mut answered = 0;
    let mut overloaded = 0;
    let mut first_error = None;
    for task in tasks {
        match task.await {
            Ok(c) => {
                answered += c.answered;
                overloaded += c.overloaded;
                samples.extend(c.samples);
                errors += c.errors;
                if first_error.is_none() {
                    first_error = c.first_error;
                }
            }
            Err(e) => {
                errors += 1;
                first_error.get_or_insert_with(|| format!("load task failed: {e}"));
            }
        }
    }
    let finished = Instant::now().min(end);
    let elapsed = finished.saturating_duration_since(measure_from);
    Summary {
        answered,
        overloaded,
        ..Summary::from_samples(&mut samples, errors, elapsed, first_error)
    }
}

#[derive(Default)]
struct ConnResult {
    answered: u64,
    overloaded: u64,
    samples: Vec<u64>,
    errors: u64,
    first_error: Option<String>,
}

impl ConnResult {
    fn fail(&mut self, counted: bool, why: String) {
        if counted {
            self.errors += 1;
        }
        self.first_error.get_or_insert(why);
    }
}

type Sender = hyper::client::conn::http1::SendRequest<Full<Bytes>>;

async fn connect(addr: SocketAddr) -> Result<Sender, String> {
    let stream = tokio::time::timeout(Duration::from_secs(5), TcpStream::connect(addr))
        .await
        .map_err(|_| format!("connecting to {addr} timed out"))?
        .map_err(|e| format!("cannot connect to {addr}: {e}"))?;
    let _ = stream.set_nodelay(true);
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| format!("HTTP handshake with {addr} failed: {e}"))?;
    tokio::spawn(conn);
    Ok(sender)
}

/// Errors after which a connection gives up (a server that fails everything).
const MAX_ERRORS: u64 = 1_000;
/// One request may take this long before it counts as failed.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

async fn connection(
    addr: SocketAddr,
    kind: &RequestKind,
    measure_from: Instant,
    end: Instant,
    sent: &AtomicU64,
    max: u64,
) -> ConnResult {
    let mut out = ConnResult::default();
    let host = addr.to_string();
    let mut sender: Option<Sender> = None;
    while Instant::now() < end && out.errors < MAX_ERRORS {
        if sent.fetch_add(1, Ordering::Relaxed) >= max {
            break;
        }
        let s = match &mut sender {
            Some(s) if !s.is_closed() => s,
            _ => match connect(addr).await {
                Ok(s) => sender.insert(s),
                Err(e) => {
                    out.fail(true, e);
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            },
        };
        let request = match kind.request(&host) {
            Ok(r) => r,
            Err(e) => {
                out.fail(true, format!("cannot build a request: {e}"));
                break;
            }
        };
        let sent_len = hyper::body::Body::size_hint(request.body()).exact().unwrap_or(0) as usize;
        let t0 = Instant::now();
        let exchange = async {
            s.ready()
                .await
                .map_err(|e| format!("connection not ready: {e}"))?;
            let response = s
                .send_request(request)
                .await
                .map_err(|e| format!("request failed: {e}"))?;
            let status = response.status();
            let body = response
                .into_body()
                .collect()
                .await
                .map_err(|e| format!("reading the reply failed: {e}"))?
                .to_bytes();
            Ok::<_, String>((status, body))
        };
        let outcome = tokio::time::timeout(REQUEST_TIMEOUT, exchange).await;
        let t1 = Instant::now();
        let measured = t0 >= measure_from && t1 <= end;
        match outcome {
            Err(_) => {
                out.fail(measured, format!("no reply within {REQUEST_TIMEOUT:?}"));
                sender = None;
            }
            Ok(Err(e)) => {
                out.fail(measured, e);
                sender = None;
            }
            Ok(Ok((status, body))) => {
                if status == StatusCode::SERVICE_UNAVAILABLE {
                    out.overloaded += 1;
                }
                let correct = status == StatusCode::OK
                    && match &kind.expect {
                        Expect::Ok => contains(&body, br#""ok":true"#),
                        Expect::Body(want) => body == *want,
                        Expect::Echo => body.len() == sent_len,
                    };
                if !correct {
                    out.fail(
                        measured,
                        format!(
                            "unexpected reply {status}: {}",
                            String::from_utf8_lossy(&body[..body.len().min(200)])
                        ),
                    );
                } else {
                    out.answered += 1;
                    if measured {
                        out.samples.push((t1 - t0).as_nanos() as u64);
                    }
                }
            }
        }
    }
    out
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn envelopes_are_fresh_and_signed() {
        let secret = Secret::new("s");
        let kind = RequestKind::math_add(Some(secret.clone()));
        let (a, sig_a) = kind.envelope();
        let (b, _) = kind.envelope();
        let ra: InvocationRequest = serde_json::from_slice(&a).unwrap();
        let rb: InvocationRequest = serde_json::from_slice(&b).unwrap();
        assert_ne!(ra.invocation_id, rb.invocation_id);
        assert!(ra.exp > ra.iat);
        assert!(flame_http::sign::verify(&secret, &a, &sig_a.unwrap()));
        assert!(RequestKind::echo(Codec::Json).envelope().1.is_none());
        // Binary requests: the envelope in headers, a fresh seq each, signed inline.
        let kind = RequestKind::math_add_binary(Some(secret));
        let a = kind.request("h").unwrap();
        let b = kind.request("h").unwrap();
        let call = |r: &Request<Full<Bytes>>| r.headers()["x-flame-call"].to_str().unwrap().to_owned();
        assert_ne!(call(&a), call(&b));
        assert!(
            call(&a).starts_with("s=math m=add q=") && call(&a).ends_with(" n=2"),
            "{}",
            call(&a)
        );
        assert!(a.headers().contains_key("x-flame-signature"));
    }

    #[tokio::test]
    async fn a_dead_server_is_errors_not_a_hang() {
        // Bind then drop: nothing listens on the port.
        let addr = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        let config = LoadConfig {
            connections: 1,
            warmup: Duration::ZERO,
            duration: Duration::from_millis(100),
            max_requests: 20,
        };
        let s = run(addr, &RequestKind::echo(Codec::Json), &config).await;
        assert_eq!(s.ok, 0);
        assert!(s.errors > 0);
        assert!(s.first_error.unwrap().contains("connect"));
    }
}
