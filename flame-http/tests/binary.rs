//! The binary codec over real sockets: negotiation, round trips of bytes and nested structs in
//! both codecs, streamed payloads both ways, signatures and size limits.
#![allow(clippy::unwrap_used)]

mod common;

use bytes::Bytes;
use common::{raw, SECRET};
use flame_core::codec::Codec;
use flame_core::{
    Args, Config, Context, Dispatcher, Endpoint, ErrorCode, Flame, Invocation, Method, Mode, Registry, Reply,
    Secret, Transport,
};
use flame_http::{BoundServer, ClientOptions, HttpExt, HttpServer, HttpTransport, ServerOptions};
use serde::{Deserialize, Serialize};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

#[derive(Serialize, Deserialize, Debug, PartialEq, Clone)]
struct Inner {
    label: String,
    weights: Vec<f32>,
    note: Option<String>,
}

#[derive(Serialize, Deserialize, Debug, PartialEq, Clone)]
struct Frame {
    seq: u64,
    #[serde(with = "serde_bytes")]
    pixels: Vec<u8>,
    blob: Bytes,
    plain: Vec<u8>,
    inner: Vec<Inner>,
}

fn frame(size: usize) -> Frame {
    Frame {
        seq: 42,
        pixels: (0..size).map(|i| (i % 251) as u8).collect(),
        blob: Bytes::from(vec![7u8; size / 2]),
        plain: vec![1, 2, 3],
        inner: vec![Inner {
            label: "ünï".into(),
            weights: vec![0.5, -1.25],
            note: None,
        }],
    }
}

const ECHO: Method<Frame, Frame> = Method::new("bin", "echo")
    .with_max_request_bytes(64 << 20)
    .with_max_response_bytes(64 << 20);
/// `(len) -> len bytes`: the reply's size is the caller's to choose.
const MAKE: Method<u64, Bytes> = Method::new("bin", "make").with_max_response_bytes(64 << 20);
/// The same, but the runner refuses replies over 1 KiB.
const MAKE_SMALL: Method<u64, Bytes> = Method::new("bin", "make_small").with_max_response_bytes(1024);
/// `(bytes) -> their length`, default limits (1 MiB request).
const LEN: Method<Bytes, u64> = Method::new("bin", "len");
/// `(bytes) -> their length`, up to 8 KiB only.
const LEN_SMALL: Method<Bytes, u64> = Method::new("bin", "len_small").with_max_request_bytes(8 * 1024);
const ADD: Method<(f64, f64), f64> = Method::new("math", "add");
/// Types the binary codec cannot decode (they need a self-describing format).
const META: Method<serde_json::Value, serde_json::Value> = Method::new("bin", "meta");
const WHO: Method<u32, serde_json::Value> = Method::new("bin", "who");
const PICK: Method<Either, u32> = Method::new("bin", "pick");

#[derive(Serialize, Deserialize, Debug, PartialEq, Clone)]
#[serde(untagged)]
enum Either {
    Number(u32),
    Text(String),
}

struct Server {
    url: String,
    addr: std::net::SocketAddr,
    runs: Arc<AtomicUsize>,
    shutdown: CancellationToken,
    task: tokio::task::JoinHandle<flame_core::Result<()>>,
    secret: Option<Secret>,
}

impl Drop for Server {
    fn drop(&mut self) {
        self.shutdown.cancel();
        self.task.abort();
    }
}

impl Server {
    fn endpoint(&self) -> Endpoint {
        Endpoint::new(self.url.clone(), "bin-runner").with_secret(self.secret.clone())
    }
}

fn registry(runs: Arc<AtomicUsize>) -> Registry {
    let r1 = runs.clone();
    Registry::new()
        .handle(ECHO, move |_c: Context, f: Frame| {
            r1.fetch_add(1, Ordering::SeqCst);
            async move { Ok(f) }
        })
        .handle(MAKE, |_c: Context, n: u64| async move {
            Ok(Bytes::from(vec![9u8; n as usize]))
        })
        .handle(MAKE_SMALL, |_c: Context, n: u64| async move {
            Ok(Bytes::from(vec![9u8; n as usize]))
        })
        .handle(LEN, move |_c: Context, b: Bytes| {
            runs.fetch_add(1, Ordering::SeqCst);
            async move { Ok(b.len() as u64) }
        })
        .handle(
            LEN_SMALL,
            |_c: Context, b: Bytes| async move { Ok(b.len() as u64) },
        )
        .handle(ADD, |_c: Context, (a, b): (f64, f64)| async move { Ok(a + b) })
        .handle(META, |_c: Context, v: serde_json::Value| async move {
            Ok(serde_json::json!({ "got": v }))
        })
        .handle(WHO, |_c: Context, n: u32| async move {
            Ok(serde_json::json!({ "n": n }))
        })
        .handle(PICK, |_c: Context, e: Either| async move {
            Ok(match e {
                Either::Number(n) => n,
                Either::Text(t) => t.len() as u32,
            })
        })
}

async fn start(secret: Option<&str>) -> Server {
    let runs = Arc::new(AtomicUsize::new(0));
    let mut cfg = Config::default();
    cfg.secret = secret.map(Secret::new);
    cfg.listen = Some("127.0.0.1:0".parse().unwrap());
    let dispatcher = Arc::new(Dispatcher::new(registry(runs.clone()), "bin-runner"));
    let options = ServerOptions::default().announce(false).handle_signals(false);
    let bound: BoundServer = HttpServer::with_options(options)
        .bind(dispatcher, &cfg)
        .await
        .unwrap();
    let shutdown = CancellationToken::new();
    Server {
        url: bound.url(),
        addr: bound.local_addr(),
        runs,
        task: tokio::spawn(bound.run(shutdown.clone())),
        shutdown,
        secret: cfg.secret,
    }
}

fn call<Req: Serialize + Send + 'static, Resp>(method: Method<Req, Resp>, req: Req) -> Invocation {
    Invocation {
        service_id: method.service_id().into(),
        method_id: method.method_id().into(),
        args: Args::typed(req),
        deadline: Some(tokio::time::Instant::now() + Duration::from_secs(30)),
        idempotency_key: None,
        trace: Default::default(),
        attempt: 1,
        cast: false,
        stream: false,
        limits: method.limits(),
    }
}

#[tokio::test]
async fn bytes_and_nested_structs_round_trip_in_both_codecs_signed_and_unsigned() {
    for secret in [Some(SECRET), None] {
        let server = start(secret).await;
        let binary = HttpTransport::new();
        binary.ping(&server.endpoint()).await.unwrap(); // learns the runner's codecs
        let json = HttpTransport::with_options(ClientOptions::default().codec(Some(Codec::Json)));
        // Inline (small), and streamed with a signature trailer (3 MiB).
        for size in [100, 3 << 20] {
            let value = frame(size);
            let reply = binary
                .invoke(&server.endpoint(), &call(ECHO, value.clone()))
                .await
                .unwrap();
            assert!(
                matches!(reply, Reply::Binary(_)),
                "binary after the probe: {reply:?}"
            );
            assert_eq!(
                reply.decode::<Frame>().await.unwrap(),
                value,
                "binary, {size} bytes"
            );
            if size < (1 << 20) {
                let reply = json
                    .invoke(&server.endpoint(), &call(ECHO, value.clone()))
                    .await
                    .unwrap();
                assert!(reply.json_text().is_some(), "JSON when told to");
                assert_eq!(
                    reply.decode::<Frame>().await.unwrap(),
                    value,
                    "JSON, {size} bytes"
                );
            }
        }
        // Fractions add as in JavaScript, in both codecs.
        let reply = binary
            .invoke(&server.endpoint(), &call(ADD, (0.1, 0.2)))
            .await
            .unwrap();
        assert_eq!(reply.decode::<f64>().await.unwrap(), 0.1 + 0.2);
        let reply = json
            .invoke(&server.endpoint(), &call(ADD, (0.1, 0.2)))
            .await
            .unwrap();
        assert_eq!(reply.json_text(), Some(r#"{"json":0.30000000000000004}"#));
    }
}

#[tokio::test]
async fn a_parent_learns_the_binary_codec_from_its_first_json_reply() {
    let server = start(Some(SECRET)).await;
    let t = HttpTransport::new();
    let first = t
        .invoke(&server.endpoint(), &call(LEN, Bytes::from_static(b"abc")))
        .await
        .unwrap();
    assert!(first.json_text().is_some(), "unknown runner, small call: JSON");
    let second = t
        .invoke(&server.endpoint(), &call(LEN, Bytes::from_static(b"abcd")))
        .await
        .unwrap();
    assert!(matches!(second, Reply::Binary(_)));
    assert_eq!(second.decode::<u64>().await.unwrap(), 4);
    // A large first call asks the runner first rather than spell bytes as JSON numbers.
    let fresh = HttpTransport::new();
    let big = fresh
        .invoke(&server.endpoint(), &call(ECHO, frame(200_000)))
        .await
        .unwrap();
    assert!(matches!(big, Reply::Binary(_)));
}

fn envelope(method: &str, seq: &str) -> flame_core::codec::InvocationRequest {
    let now = flame_core::transport::now_millis();
    flame_core::codec::InvocationRequest {
        invocation_id: String::new(),
        service_id: "bin".into(),
        method_id: method.into(),
        args: String::new(),
        iat: now,
        exp: now + 30_000,
        timeout_ms: None,
        idempotency_key: None,
        trace: None,
        attempt: None,
        cast: None,
        stream: None,
        seq: Some(seq.into()),
    }
}

fn pairs(map: &http::HeaderMap) -> Vec<(&str, String)> {
    map.iter()
        .map(|(k, v)| (k.as_str(), v.to_str().unwrap().to_owned()))
        .collect()
}

#[tokio::test]
async fn a_tampered_binary_payload_is_refused_before_the_handler_sees_it() {
    let server = start(Some(SECRET)).await;
    let signer = flame_http::sign::Signer::new(&Secret::new(SECRET));
    let payload = flame_core::codec::binary::encode(&Bytes::from_static(b"abc")).unwrap();
    // Sign the right envelope and payload, then send another payload.
    let mut map =
        flame_http::wire::headers(&envelope("len", "00000000000000aa.1"), "", payload.len() as u64).unwrap();
    flame_http::wire::sign_inline(&mut map, &signer, &payload).unwrap();
    let mut tampered = payload.clone();
    *tampered.last_mut().unwrap() ^= 1;
    let (status, text) = raw(server.addr, "POST", "/invoke", &pairs(&map), &tampered).await;
    assert_eq!((status, text.as_str()), (401, "Invalid signature"));
    // Another envelope under the same signature is refused too.
    let mut other =
        flame_http::wire::headers(&envelope("len", "00000000000000aa.2"), "", payload.len() as u64).unwrap();
    other.insert(
        flame_http::wire::SIGNATURE,
        map[flame_http::wire::SIGNATURE].clone(),
    );
    let (status, _) = raw(server.addr, "POST", "/invoke", &pairs(&other), &payload).await;
    assert_eq!(status, 401);
    assert_eq!(server.runs.load(Ordering::SeqCst), 0);
    // The untampered one passes (proving the test signs correctly), once.
    let (status, _) = raw(server.addr, "POST", "/invoke", &pairs(&map), &payload).await;
    assert_eq!(status, 200);
    let (status, text) = raw(server.addr, "POST", "/invoke", &pairs(&map), &payload).await;
    assert_eq!((status, text.as_str()), (401, "Replayed request"));
    assert_eq!(server.runs.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn a_tampered_streamed_payload_fails_at_its_trailer_and_the_handler_never_runs() {
    let server = start(Some(SECRET)).await;
    let signer = flame_http::sign::Signer::new(&Secret::new(SECRET));
    let big = frame(1 << 20);
    let payload = flame_core::codec::binary::encode(&big).unwrap();
    let mut map =
        flame_http::wire::headers(&envelope("echo", "00000000000000bb.1"), "t", payload.len() as u64)
            .unwrap();
    let mut mac = flame_http::wire::sign_envelope(&mut map, &signer).unwrap();
    hmac::Mac::update(&mut mac, &payload);
    let tag = hmac::Mac::finalize(mac).into_bytes();
    let mut body = payload.clone();
    body[payload.len() / 2] ^= 1; // one bit flipped mid-payload
    body.extend_from_slice(&tag);
    let (status, text) = raw(server.addr, "POST", "/invoke", &pairs(&map), &body).await;
    assert_eq!(status, 200, "{text}");
    assert!(text.contains("signature"), "{text}");
    assert_eq!(
        server.runs.load(Ordering::SeqCst),
        0,
        "the handler never saw the payload"
    );
    // The same request untampered (a fresh seq) runs.
    let mut map =
        flame_http::wire::headers(&envelope("echo", "00000000000000bb.2"), "t", payload.len() as u64)
            .unwrap();
    let mut mac = flame_http::wire::sign_envelope(&mut map, &signer).unwrap();
    hmac::Mac::update(&mut mac, &payload);
    let mut body = payload.clone();
    body.extend_from_slice(&hmac::Mac::finalize(mac).into_bytes());
    let (status, _) = raw(server.addr, "POST", "/invoke", &pairs(&map), &body).await;
    assert_eq!(status, 200);
    assert_eq!(server.runs.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn over_limit_requests_are_payload_too_large_both_ways_and_never_retried() {
    let server = start(Some(SECRET)).await;
    let t = HttpTransport::new();
    t.ping(&server.endpoint()).await.unwrap();
    // The method's own limit: refused by the parent, never sent.
    let err = t
        .invoke(&server.endpoint(), &call(LEN_SMALL, Bytes::from(vec![0u8; 9000])))
        .await
        .unwrap_err();
    assert_eq!(err.code(), ErrorCode::PayloadTooLarge, "{err}");
    assert!(!err.is_retryable());
    // The runner's default (1 MiB), which the parent learned from its health reply.
    let err = t
        .invoke(&server.endpoint(), &call(LEN, Bytes::from(vec![0u8; 2 << 20])))
        .await
        .unwrap_err();
    assert_eq!(err.code(), ErrorCode::PayloadTooLarge, "{err}");
    assert!(!err.is_retryable());
    // A parent that does not know the runner's limit: the runner refuses the declared length
    // (413) before reading the payload, and drains it so the parent reads the answer.
    let naive = HttpTransport::with_options(ClientOptions::default().codec(Some(Codec::Json)));
    let err = naive
        .invoke(&server.endpoint(), &call(LEN, Bytes::from(vec![0u8; 1_100_000])))
        .await
        .unwrap_err();
    assert_eq!(err.code(), ErrorCode::PayloadTooLarge, "{err}");
    assert!(!err.is_retryable());
    // A binary request declaring more than the method takes: 413 from the headers alone.
    let map = flame_http::wire::headers(&envelope("len_small", "00000000000000cc.1"), "", 9000).unwrap();
    let (status, text) = raw(server.addr, "POST", "/invoke", &pairs(&map), b"").await;
    assert_eq!((status, text.as_str()), (413, "Payload too large"));
    assert_eq!(server.runs.load(Ordering::SeqCst), 0);
    // The runner still serves.
    let ok = t
        .invoke(&server.endpoint(), &call(LEN, Bytes::from_static(b"x")))
        .await
        .unwrap();
    assert_eq!(ok.decode::<u64>().await.unwrap(), 1);
}

#[tokio::test]
async fn over_limit_replies_are_payload_too_large_both_ways() {
    let server = start(Some(SECRET)).await;
    let t = HttpTransport::with_options(ClientOptions::default().max_response_bytes(1 << 20));
    t.ping(&server.endpoint()).await.unwrap();
    // The runner refuses to send a reply over the method's limit.
    let err = t
        .invoke(&server.endpoint(), &call(MAKE_SMALL, 2000))
        .await
        .unwrap_err();
    assert_eq!(err.code(), ErrorCode::PayloadTooLarge, "{err}");
    assert!(!err.is_retryable());
    // The parent refuses a reply over its own limit (declared length), in either codec.
    let mut inv = call(MAKE, 2 << 20);
    inv.limits = Default::default(); // the client's 1 MiB, not the method's 64 MiB
    let err = t.invoke(&server.endpoint(), &inv).await.unwrap_err();
    assert_eq!(err.code(), ErrorCode::PayloadTooLarge, "{err}");
    assert!(!err.is_retryable());
    let json = HttpTransport::with_options(
        ClientOptions::default()
            .max_response_bytes(1 << 20)
            .codec(Some(Codec::Json)),
    );
    let err = json.invoke(&server.endpoint(), &inv).await.unwrap_err();
    assert_eq!(err.code(), ErrorCode::PayloadTooLarge, "{err}");
    // Under the method's own (larger) limit it passes.
    let ok = t.invoke(&server.endpoint(), &call(MAKE, 2 << 20)).await.unwrap();
    assert_eq!(ok.decode::<Bytes>().await.unwrap().len(), 2 << 20);
}

#[tokio::test]
async fn a_parent_gets_payload_too_large_and_keeps_its_runner() {
    let server = start(Some(SECRET)).await;
    let flame = Flame::builder(registry(Arc::new(AtomicUsize::new(0))))
        .http()
        .mode(Mode::Parent)
        .runner_urls(vec![server.url.clone()])
        .config({
            let mut c = Config::default();
            c.secret = Some(Secret::new(SECRET));
            c
        })
        .start()
        .await
        .unwrap();
    for _ in 0..3 {
        let err = flame
            .call(LEN_SMALL, Bytes::from(vec![1u8; 10_000]))
            .await
            .unwrap_err();
        assert_eq!(err.code(), ErrorCode::PayloadTooLarge, "{err}");
        let err = flame.call(MAKE_SMALL, 5000).await.unwrap_err();
        assert_eq!(err.code(), ErrorCode::PayloadTooLarge, "{err}");
    }
    assert_eq!(flame.call(LEN, Bytes::from_static(b"fine")).await.unwrap(), 4);
    let stats = flame.pool("default").unwrap().stats();
    assert_eq!(stats.runners, 1, "the runner was not reported down: {stats:?}");
    flame.shutdown().await.unwrap();
}

#[tokio::test]
async fn types_the_binary_codec_cannot_decode_travel_as_json() {
    let server = start(Some(SECRET)).await;
    let t = HttpTransport::new();
    t.ping(&server.endpoint()).await.unwrap();
    let value = serde_json::json!({ "a": [1, "x", null] });
    // A binary request for a method whose arguments need a self-describing codec: the runner
    // answers 415 before reading them, the transport sends them again as JSON (and from then on).
    for _ in 0..2 {
        let reply = t
            .invoke(&server.endpoint(), &call(META, value.clone()))
            .await
            .unwrap();
        assert!(reply.json_text().is_some(), "{reply:?}");
        assert_eq!(
            reply.decode::<serde_json::Value>().await.unwrap(),
            serde_json::json!({ "got": value })
        );
    }
    let reply = t
        .invoke(&server.endpoint(), &call(PICK, Either::Text("four".into())))
        .await
        .unwrap();
    assert_eq!(reply.decode::<u32>().await.unwrap(), 4);
    // Through a parent: a result type bincode cannot decode makes the call JSON from the start.
    let flame = Flame::builder(Registry::new())
        .http()
        .mode(Mode::Parent)
        .runner_urls(vec![server.url.clone()])
        .config({
            let mut c = Config::default();
            c.secret = Some(Secret::new(SECRET));
            c
        })
        .start()
        .await
        .unwrap();
    assert_eq!(flame.call(WHO, 7).await.unwrap(), serde_json::json!({ "n": 7 }));
    assert_eq!(flame.call(PICK, Either::Number(9)).await.unwrap(), 9);
    assert_eq!(
        flame.call(META, serde_json::json!([true])).await.unwrap(),
        serde_json::json!({ "got": [true] })
    );
    // And everything else stays binary.
    assert_eq!(flame.call(LEN, Bytes::from_static(b"abc")).await.unwrap(), 3);
    flame.shutdown().await.unwrap();
}
