//! The whole parent path over the in-memory transport: byte-for-byte the wire format.
#![allow(clippy::unwrap_used)]
mod common;
use common::*;
use flame_core::testkit::InMemoryTransport;
use flame_core::{
    CallOptions, Dispatcher, Endpoint, ErrorCode, Flame, Invocation, Mode, StaticPool, Transport,
};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

fn parent(runners: usize) -> (Flame, InMemoryTransport, Probe) {
    let transport = InMemoryTransport::new();
    let (reg, probe) = registry();
    let reg = Arc::new(reg);
    let endpoints: Vec<Endpoint> = (0..runners)
        .map(|i| {
            let url = format!("mem://runner-{i}");
            transport.add_shared(
                &url,
                Arc::new(Dispatcher::from_shared(reg.clone(), format!("r{i}"))),
            );
            Endpoint::new(url, format!("r{i}"))
        })
        .collect();
    let pool = StaticPool::new("default", endpoints, 4);
    let (reg2, _) = registry();
    let flame = Flame::builder(reg2)
        .mode(Mode::Parent)
        .transport(Arc::new(transport.clone()))
        .with_pool(Arc::new(pool))
        .build()
        .unwrap();
    (flame, transport, probe)
}

#[tokio::test]
async fn remote_call_round_trips() {
    let (flame, _, _) = parent(2);
    assert_eq!(flame.call(ADD, (2, 3)).await.unwrap(), 5);
}

#[tokio::test]
async fn remote_errors_keep_their_code() {
    let (flame, _, _) = parent(1);
    let err = flame.call(FAIL, "nope".into()).await.unwrap_err();
    assert_eq!(err.code(), ErrorCode::Handler);
    assert_eq!(err.wire_code(), "handler_error");
    assert_eq!(err.message(), "nope");
    let err = flame.call(TYPED_FAIL, 3).await.unwrap_err();
    assert_eq!(
        err.app_error::<Declined>(),
        Some(Declined::Insufficient { needed: 3 })
    );
    let err = flame.call(PANIC, ()).await.unwrap_err();
    assert_eq!(err.code(), ErrorCode::Handler);
    assert!(
        err.details().is_none(),
        "panic text must not leave the runner by default"
    );
}

#[tokio::test]
async fn remote_deadline_times_out_and_cancels_handler() {
    let (flame, _, probe) = parent(1);
    let err = flame
        .call_with(SLOW, 5_000, CallOptions::new().timeout(Duration::from_millis(80)))
        .await
        .unwrap_err();
    assert_eq!(err.code(), ErrorCode::Timeout);
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(probe.cancelled.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn unknown_pool_is_no_runner() {
    let (flame, _, _) = parent(1);
    let err = flame
        .call_with(ADD, (1, 1), CallOptions::new().pool("gpu"))
        .await
        .unwrap_err();
    assert_eq!(err.code(), ErrorCode::NoRunner);
}

#[tokio::test]
async fn refused_runner_is_retried_when_safe() {
    let (flame, transport, _) = parent(2);
    // Runner 0 disappears: attempts routed there fail "not delivered" and are retried.
    transport.remove("mem://runner-0");
    for _ in 0..10 {
        assert_eq!(
            flame
                .call_with(ADD, (1, 2), CallOptions::new().retries(5))
                .await
                .unwrap(),
            3
        );
    }
}

#[tokio::test]
async fn no_retry_without_retries_option() {
    let (flame, transport, _) = parent(1);
    transport.remove("mem://runner-0");
    let err = flame.call(ADD, (1, 2)).await.unwrap_err();
    assert_eq!(err.code(), ErrorCode::Transport);
}

#[tokio::test]
async fn wire_bytes_match_the_reference_format() {
    let transport = InMemoryTransport::new();
    let (reg, _) = registry();
    let d = transport.add("mem://r", Dispatcher::new(reg, "r"));
    // A body exactly as the reference parent writes it.
    let now = flame_core::transport::now_millis();
    let body = format!(
        r#"{{"invocationId":"6f1c1f6e-5a43-4d0e-9d1c-2f6b8a9e0c11","serviceId":"math","methodId":"add","args":"{{\"json\":[2,3]}}","iat":{now},"exp":{}}}"#,
        now + 60_000
    );
    let reply = d.dispatch_bytes(body.as_bytes()).await;
    assert_eq!(reply.status, 200);
    assert_eq!(&reply.body[..], br#"{"ok":true,"result":"{\"json\":5}"}"#);
    let bad = d.dispatch_bytes(b"{not json").await;
    assert_eq!(bad.status, 400);
    let unknown = d
        .dispatch_bytes(
            body.replace("\"add\"", "\"nope\"")
                .replace("0c11", "0c12")
                .as_bytes(),
        )
        .await;
    assert_eq!(unknown.status, 404);
    // The transport maps those statuses to typed errors.
    let inv = Invocation {
        service_id: "math".into(),
        method_id: "nope".into(),
        args: r#"{"json":[]}"#.into(),
        deadline: None,
        idempotency_key: None,
        trace: Default::default(),
        attempt: 1,
        cast: false,
        stream: false,
        limits: Default::default(),
    };
    let err = transport
        .invoke(&Endpoint::new("mem://r", "r"), &inv)
        .await
        .unwrap_err();
    assert_eq!(err.code(), ErrorCode::NotFound);
}

#[tokio::test]
async fn many_concurrent_calls_each_resolve_once() {
    let (flame, _, probe) = parent(3);
    let calls = (0..500).map(|_| {
        let f = flame.clone();
        tokio::spawn(async move { f.call(COUNT, ()).await })
    });
    let results = futures_join(calls).await;
    assert!(results.iter().all(|r| r.is_ok()));
    assert_eq!(probe.runs.load(Ordering::SeqCst), 500);
}

async fn futures_join<T>(handles: impl Iterator<Item = tokio::task::JoinHandle<T>>) -> Vec<T> {
    let mut out = Vec::new();
    for h in handles {
        out.push(h.await.unwrap());
    }
    out
}

#[tokio::test]
async fn the_in_memory_path_runs_the_same_pipeline_as_http() {
    // Replayed and stale envelopes are refused before any handler runs, exactly as over HTTP.
    let transport = InMemoryTransport::new();
    let (reg, probe) = registry();
    transport.add("mem://r", Dispatcher::new(reg, "r"));
    let now = flame_core::transport::now_millis();
    let envelope = |id: &str, iat: u64, exp: u64| {
        format!(
            r#"{{"invocationId":"{id}","serviceId":"test","methodId":"count","args":"{{\"json\":[]}}","iat":{iat},"exp":{exp}}}"#
        )
    };
    let fresh = envelope("a1", now, now + 60_000);
    let first = transport.send_raw("mem://r", fresh.as_bytes()).await.unwrap();
    assert_eq!(first.status, 200);
    let replayed = transport.send_raw("mem://r", fresh.as_bytes()).await.unwrap();
    assert_eq!(
        (replayed.status, &replayed.body[..]),
        (401, &b"Replayed request"[..])
    );
    let stale = envelope("a2", now - 300_000, now - 200_000);
    let expired = transport.send_raw("mem://r", stale.as_bytes()).await.unwrap();
    assert_eq!(
        (expired.status, &expired.body[..]),
        (401, &b"Request expired"[..])
    );
    assert_eq!(
        probe.runs.load(std::sync::atomic::Ordering::SeqCst),
        1,
        "only the fresh envelope ran"
    );
}
