//! `#[flame::service]`: a service defined once as a trait passes the same local-mode and
//! parent-path tests as hand-written `Method` handlers, and speaks the same wire.
#![allow(clippy::unwrap_used)]

use flame::raw::testkit::InMemoryTransport;
use flame::raw::{codec, Dispatcher, Endpoint, StaticPool};
use flame::{CallOptions, Context, ErrorCode, Flame, Method, Mode, Registry};
use serde::Serialize;
use std::sync::atomic::AtomicUsize;
use std::sync::Arc;
use std::time::Duration;

mod common;
use common::*;

fn local_with(service: MathImpl) -> Flame {
    Flame::builder(MathService::registry(service))
        .mode(Mode::Local)
        .build()
        .unwrap()
}

fn local() -> (Flame, MathClient) {
    let flame = local_with(MathImpl::default());
    let client = MathClient::new(flame.clone());
    (flame, client)
}

/// Parent mode over the in-memory transport: every call goes through the wire codec.
fn parent(cancelled: Arc<AtomicUsize>) -> (Flame, MathClient) {
    let transport = InMemoryTransport::new();
    let service = MathImpl {
        cancelled,
        ..Default::default()
    };
    transport.add("mem://r0", Dispatcher::new(MathService::registry(service), "r0"));
    let pool = StaticPool::new("default", vec![Endpoint::new("mem://r0", "r0")], 4);
    let flame = Flame::builder(Registry::new())
        .mode(Mode::Parent)
        .transport(Arc::new(transport))
        .with_pool(Arc::new(pool))
        .build()
        .unwrap();
    let client = MathClient::new(flame.clone());
    (flame, client)
}

/// The exact `args` text a call of `method` with `req` sends.
fn wire<Req: Serialize, Resp>(_method: Method<Req, Resp>, req: Req) -> String {
    codec::encode_args(&req).unwrap()
}

#[test]
fn ids_come_from_the_attributes_and_names() {
    assert_eq!(MathService::SERVICE_ID, "math");
    assert_eq!(MathService::ADD.service_id(), "math");
    assert_eq!(MathService::ADD.method_id(), "add");
    assert_eq!(MathService::MUL.method_id(), "multiply");
    assert_eq!(MathService::MUL.timeout_ms(), Some(2000));
    assert_eq!(MathService::ADD.timeout_ms(), None);
    assert_eq!(MathService::MUL.retry(), Some(flame::RetryPolicy::attempts(3)));
    assert_eq!(MathService::ADD.retry(), None);
    assert_eq!(ImageToolsService::SERVICE_ID, "image_tools");
    assert_eq!(ImageToolsService::UPSCALE.pool(), Some("gpu"));
    assert_eq!(
        ImageToolsService::registry(Upscaler).methods(),
        vec![("image_tools".to_string(), "upscale".to_string())]
    );
    assert_eq!(MathService::METHODS.len(), 11);
    assert!(MathService::METHODS.contains(&("math", "multiply")));
    let registry = MathService::registry(MathImpl::default());
    let mut expected: Vec<(String, String)> = MathService::METHODS
        .iter()
        .map(|(s, m)| (s.to_string(), m.to_string()))
        .collect();
    expected.sort();
    assert_eq!(registry.methods(), expected);
}

#[test]
fn arguments_are_positional_on_the_wire() {
    // Exactly what the TypeScript reference's `add(ctx, a, b)` receives.
    assert_eq!(wire(MathService::ADD, (2, 3)), r#"{"json":[2,3]}"#);
    assert_eq!(wire(MathService::COUNT, ()), r#"{"json":[]}"#);
    assert_eq!(wire(MathService::FAIL, ("x".into(),)), r#"{"json":["x"]}"#);
    // One argument is the same wire as a hand-written non-tuple request type.
    assert_eq!(
        wire(MathService::FAIL, ("x".into(),)),
        codec::encode_args(&"x").unwrap()
    );
    let r = Resize {
        url: "u".into(),
        width: 3,
    };
    assert_eq!(
        wire(MathService::RESIZE, (r,)),
        r#"{"json":[{"url":"u","width":3}]}"#
    );
    // A tuple argument stays one argument.
    assert_eq!(wire(MathService::SUM_PAIR, ((1, 2),)), r#"{"json":[[1,2]]}"#);
}

#[tokio::test]
async fn client_returns_results_in_local_mode() {
    let (flame, math) = local();
    assert_eq!(math.add(40, 2).await.unwrap(), 42);
    assert_eq!(math.mul(1.5, 4.0).await.unwrap(), 6.0);
    assert_eq!(math.count().await.unwrap(), 1);
    assert_eq!(math.count().await.unwrap(), 2);
    assert_eq!(
        math.resize(Resize {
            url: "cat.png".into(),
            width: 128
        })
        .await
        .unwrap(),
        "cat.png@128w"
    );
    assert_eq!(math.sum_pair((20, 22)).await.unwrap(), 42);
    assert_eq!(math.version().await.unwrap(), "v1");
    assert_eq!(math.greet("ada".into(), None).await.unwrap(), "hello, ada");
    // The generated handles are ordinary methods.
    assert_eq!(flame.call(MathService::ADD, (1, 2)).await.unwrap(), 3);
    // Each method also has a background twin: spawn_<method> returns a CallHandle.
    let sum = math.spawn_add(20, 22);
    let greeting = math.spawn_greet("grace".into(), None);
    assert_eq!(sum.join().await.unwrap(), 42);
    assert_eq!(greeting.join().await.unwrap(), "hello, grace");
    flame.shutdown().await.unwrap();
}

#[tokio::test]
async fn handler_errors_and_panics_fail_that_call_only() {
    let (_flame, math) = local();
    let err = math.fail("nope".into()).await.unwrap_err();
    assert_eq!(err.code(), ErrorCode::Handler);
    assert_eq!(err.message(), "nope");
    let err = math.explode().await.unwrap_err();
    assert_eq!(err.code(), ErrorCode::Handler);
    assert_eq!(math.add(1, 1).await.unwrap(), 2);
}

#[tokio::test]
async fn typed_app_error_comes_back_typed() {
    let (_flame, math) = local();
    let err = math.typed_fail(7).await.unwrap_err();
    assert_eq!(
        err.app_error::<Declined>(),
        Some(Declined::Insufficient { needed: 7 })
    );
}

#[tokio::test]
async fn context_carries_the_deadline_and_cancellation() {
    let cancelled = Arc::new(AtomicUsize::new(0));
    let flame = local_with(MathImpl {
        cancelled: cancelled.clone(),
        ..Default::default()
    });
    let math =
        MathClient::new(flame.clone()).with_options(CallOptions::new().timeout(Duration::from_millis(50)));
    let err = math.slow(5_000).await.unwrap_err();
    assert_eq!(err.code(), ErrorCode::Timeout);
    wait_for_one(&cancelled).await;
    // Within the deadline it completes.
    assert_eq!(math.slow(1).await.unwrap(), "slept 1");
    assert_eq!(math.options().get_timeout(), Some(Duration::from_millis(50)));
}

#[tokio::test]
async fn handler_sees_the_method_timeout_in_its_context() {
    #[flame::service(id = "probe")]
    trait Probe {
        #[flame(timeout_ms = 1500)]
        async fn remaining_ms(&self, ctx: Context) -> flame::Result<u64>;
    }
    struct P;
    impl Probe for P {
        async fn remaining_ms(&self, ctx: Context) -> flame::Result<u64> {
            Ok(ctx.remaining().unwrap().as_millis() as u64)
        }
    }
    let flame = Flame::builder(ProbeService::registry(P)).build().unwrap();
    let ms = ProbeClient::new(flame).remaining_ms().await.unwrap();
    assert!(ms > 1000 && ms <= 1500, "{ms}");
}

#[tokio::test]
async fn macro_service_and_hand_written_methods_interoperate() {
    // A hand-written handle with the same ids and types calls the macro's service...
    const ADD: Method<(i64, i64), i64> = Method::new("math", "add");
    let (flame, _) = local();
    assert_eq!(flame.call(ADD, (2, 3)).await.unwrap(), 5);
    // ...and compatible types go through the codec, as a remote caller's would.
    const ADD_I32: Method<(i32, i32), i32> = Method::new("math", "add");
    assert_eq!(flame.call(ADD_I32, (2, 3)).await.unwrap(), 5);
    const RESIZE: Method<Resize, String> = Method::new("math", "resize");
    let r = Resize {
        url: "a".into(),
        width: 1,
    };
    assert_eq!(flame.call(RESIZE, r).await.unwrap(), "a@1w");

    // The generated client calls a hand-written handler.
    let hand = Registry::new().handle(
        ADD,
        |_ctx: Context, (a, b): (i64, i64)| async move { Ok(a * 100 + b) },
    );
    let flame = Flame::builder(hand).build().unwrap();
    assert_eq!(MathClient::new(flame).add(1, 2).await.unwrap(), 102);
}

#[tokio::test]
async fn parent_path_round_trips_through_the_wire() {
    let cancelled = Arc::new(AtomicUsize::new(0));
    let (flame, math) = parent(cancelled.clone());
    assert_eq!(flame.mode(), Mode::Parent);
    assert_eq!(math.add(2, 3).await.unwrap(), 5);
    assert_eq!(math.mul(2.5, 2.0).await.unwrap(), 5.0);
    assert_eq!(math.count().await.unwrap(), 1);
    assert_eq!(math.sum_pair((1, 2)).await.unwrap(), 3);
    assert_eq!(math.version().await.unwrap(), "v1");
    let err = math.fail("nope".into()).await.unwrap_err();
    assert_eq!(err.code(), ErrorCode::Handler);
    assert_eq!(err.wire_code(), "handler_error");
    let err = math.typed_fail(3).await.unwrap_err();
    assert_eq!(
        err.app_error::<Declined>(),
        Some(Declined::Insufficient { needed: 3 })
    );
    let err = math.explode().await.unwrap_err();
    assert_eq!(err.code(), ErrorCode::Handler);
    // The deadline travels with the call and cancels the handler on the runner.
    let err = math
        .clone()
        .with_options(CallOptions::new().timeout(Duration::from_millis(80)))
        .slow(5_000)
        .await
        .unwrap_err();
    assert_eq!(err.code(), ErrorCode::Timeout);
    wait_for_one(&cancelled).await;
    // Client options route the call: an unknown pool is NO_RUNNER.
    let err = math
        .clone()
        .with_options(CallOptions::new().pool("gpu"))
        .add(1, 1)
        .await
        .unwrap_err();
    assert_eq!(err.code(), ErrorCode::NoRunner);
    flame.shutdown().await.unwrap();
}

#[tokio::test]
async fn runner_serves_bodies_exactly_as_the_reference_parent_writes_them() {
    let d = std::sync::Arc::new(Dispatcher::new(MathService::registry(MathImpl::default()), "r"));
    // Every request is a fresh invocation: the runner pipeline rejects a replayed id.
    let ids = std::sync::atomic::AtomicUsize::new(0);
    let now = flame::raw::transport::now_millis();
    let body = |method: &str, args: &str| {
        let id = ids.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        format!(
            r#"{{"invocationId":"6f1c1f6e-5a43-4d0e-9d1c-2f6b8a9e{id:04}","serviceId":"math","methodId":"{method}","args":{},"iat":{now},"exp":{}}}"#,
            serde_json::to_string(args).unwrap(),
            now + 60_000
        )
    };
    let reply = d
        .dispatch_bytes(body("add", r#"{"json":[2,3]}"#).as_bytes())
        .await;
    assert_eq!(reply.status, 200);
    assert_eq!(&reply.body[..], br#"{"ok":true,"result":"{\"json\":5}"}"#);
    let reply = d
        .dispatch_bytes(body("multiply", r#"{"json":[1.5,2]}"#).as_bytes())
        .await;
    // A whole f64 is written as JavaScript writes it.
    assert_eq!(&reply.body[..], br#"{"ok":true,"result":"{\"json\":3}"}"#);
    // A JavaScript caller leaving the trailing optional argument out.
    let reply = d
        .dispatch_bytes(body("greet", r#"{"json":["ada"]}"#).as_bytes())
        .await;
    assert_eq!(
        &reply.body[..],
        br#"{"ok":true,"result":"{\"json\":\"hello, ada\"}"}"#
    );
    // Too many arguments is a serialization error, not a silent drop.
    let reply = d
        .dispatch_bytes(body("add", r#"{"json":[1,2,3]}"#).as_bytes())
        .await;
    assert_eq!(reply.status, 200);
    let text = String::from_utf8_lossy(&reply.body);
    assert!(text.contains(r#""ok":false"#), "{text}");
    assert!(text.contains("serialization_error"), "{text}");
    // The Rust method name is not an id when `#[flame(id)]` renames it.
    let reply = d
        .dispatch_bytes(body("mul", r#"{"json":[1,2]}"#).as_bytes())
        .await;
    assert_eq!(reply.status, 404);
}

#[tokio::test]
async fn registration_reports_duplicates() {
    // `register` keeps `Registry::handle`'s contract: duplicates fail `check` / start.
    let registry = MathService::register(MathService::registry(MathImpl::default()), MathImpl::default());
    let err = registry.check().unwrap_err();
    assert_eq!(err.code(), ErrorCode::Config);
    assert!(err.message().contains("math/add"), "{err}");
    assert!(Flame::builder(registry).build().is_err());

    // `try_register` fails at once and changes nothing.
    const OTHER: Method<(), u8> = Method::new("other", "x");
    let mut registry =
        Registry::new().handle(MathService::COUNT, |_c: Context, ()| async move { Ok(7usize) });
    registry = registry.handle(OTHER, |_c: Context, ()| async move { Ok(1u8) });
    let err = MathService::try_register(&mut registry, MathImpl::default()).unwrap_err();
    assert_eq!(err.code(), ErrorCode::Config);
    assert!(err.message().contains("math/count"), "{err}");
    assert_eq!(registry.methods().len(), 2);
    let mut fresh = Registry::new().handle(OTHER, |_c: Context, ()| async move { Ok(1u8) });
    MathService::try_register(&mut fresh, MathImpl::default()).unwrap();
    assert_eq!(fresh.methods().len(), 12);
    fresh.check().unwrap();
}

#[test]
fn client_debug_names_the_service() {
    let flame = local_with(MathImpl::default());
    let text = format!("{:?}", MathClient::new(flame));
    assert!(text.contains("MathClient") && text.contains("math"), "{text}");
}

#[tokio::test]
async fn client_calls_are_send_and_run_concurrently() {
    let (flame, math) = local();
    let calls: Vec<_> = (0..16)
        .map(|i| {
            let math = math.clone();
            tokio::spawn(async move { math.add(i, i).await })
        })
        .collect();
    for (i, call) in calls.into_iter().enumerate() {
        assert_eq!(call.await.unwrap().unwrap(), 2 * i as i64);
    }
    flame.shutdown().await.unwrap();
}
