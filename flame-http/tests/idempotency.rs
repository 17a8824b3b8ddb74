//! Idempotency keys: a key runs once per runner; duplicates get the first result.
#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use flame_core::{codec, ErrorCode, Transport};
use flame_http::HttpTransport;
use std::time::Duration;

#[tokio::test]
async fn same_key_twice_runs_once_and_returns_the_first_result() {
    let server = start(Some(SECRET)).await;
    let t = HttpTransport::new();
    let mut inv = invocation(COUNT, &(), Duration::from_secs(5));
    inv.idempotency_key = Some("order-42".into());
    let first = t.invoke(&server.endpoint(), &inv).await.unwrap();
    // A second attempt: fresh invocationId and signature, same key.
    let second = t.invoke(&server.endpoint(), &inv).await.unwrap();
    assert_eq!(first.json_text(), second.json_text());
    assert_eq!(
        codec::decode_result::<usize>(first.json_text().unwrap()).unwrap(),
        1
    );
    assert_eq!(server.probe.runs(), 1);
    // Another key runs.
    inv.idempotency_key = Some("order-43".into());
    let third = t.invoke(&server.endpoint(), &inv).await.unwrap();
    assert_eq!(
        codec::decode_result::<usize>(third.json_text().unwrap()).unwrap(),
        2
    );
}

#[tokio::test]
async fn concurrent_duplicates_wait_for_the_first_run() {
    let server = start(Some(SECRET)).await;
    let t = HttpTransport::new();
    let mut inv = invocation(SLOW_COUNT, &300, Duration::from_secs(5));
    inv.idempotency_key = Some("dup".into());
    let calls: Vec<_> = (0..5)
        .map(|_| {
            let (t, ep, inv) = (t.clone(), server.endpoint(), inv.clone());
            tokio::spawn(async move { t.invoke(&ep, &inv).await })
        })
        .collect();
    let mut results = Vec::new();
    for c in calls {
        results.push(c.await.unwrap().unwrap());
    }
    assert!(
        results.iter().all(|r| r.json_text() == results[0].json_text()),
        "{results:?}"
    );
    assert_eq!(server.probe.runs(), 1);
}

#[tokio::test]
async fn retryable_failures_are_not_remembered() {
    let server = start(Some(SECRET)).await;
    let t = HttpTransport::new();
    let mut inv = invocation(FLAKY, &1, Duration::from_secs(5));
    inv.idempotency_key = Some("flaky-1".into());
    let err = t.invoke(&server.endpoint(), &inv).await.unwrap_err();
    assert_eq!(err.code(), ErrorCode::Overloaded);
    // The retry runs the handler again, and its success is then remembered.
    let ok = t.invoke(&server.endpoint(), &inv).await.unwrap();
    assert_eq!(codec::decode_result::<usize>(ok.json_text().unwrap()).unwrap(), 2);
    let again = t.invoke(&server.endpoint(), &inv).await.unwrap();
    assert_eq!(ok.json_text(), again.json_text());
    assert_eq!(
        server.probe.flaky_calls.load(std::sync::atomic::Ordering::SeqCst),
        2
    );
}

#[tokio::test]
async fn final_errors_are_remembered_and_keys_are_scoped_by_method() {
    let server = start(Some(SECRET)).await;
    let t = HttpTransport::new();
    let mut inv = invocation(TYPED_FAIL, &3, Duration::from_secs(5));
    inv.idempotency_key = Some("k".into());
    let e1 = t.invoke(&server.endpoint(), &inv).await.unwrap_err();
    let e2 = t.invoke(&server.endpoint(), &inv).await.unwrap_err();
    assert_eq!(e1.app_value(), e2.app_value());
    // Same key on another method is another call.
    let mut count = invocation(COUNT, &(), Duration::from_secs(5));
    count.idempotency_key = Some("k".into());
    t.invoke(&server.endpoint(), &count).await.unwrap();
    assert_eq!(server.probe.runs(), 1);
}

#[tokio::test]
async fn first_run_survives_its_caller_hanging_up() {
    let server = start(Some(SECRET)).await;
    let t = HttpTransport::new();
    let mut inv = invocation(SLOW_COUNT, &400, Duration::from_secs(5));
    inv.idempotency_key = Some("hangup".into());
    let (t1, ep, inv1) = (t.clone(), server.endpoint(), inv.clone());
    let first = tokio::spawn(async move { t1.invoke(&ep, &inv1).await });
    while server.probe.runs() == 0 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    first.abort();
    // The retry joins the run already under way instead of starting another.
    let out = t.invoke(&server.endpoint(), &inv).await.unwrap();
    assert_eq!(
        codec::decode_result::<usize>(out.json_text().unwrap()).unwrap(),
        1
    );
    assert_eq!(server.probe.runs(), 1);
}
