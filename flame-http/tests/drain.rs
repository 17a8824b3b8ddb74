//! Graceful drain: stop accepting, finish calls in flight within the grace, then return.
#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use flame_core::{codec, ErrorCode, Transport};
use flame_http::HttpTransport;
use std::time::Duration;

#[tokio::test]
async fn shutdown_finishes_calls_in_flight_then_stops_accepting() {
    let server = start(Some(SECRET)).await;
    let t = HttpTransport::new();
    let (t1, ep) = (t.clone(), server.endpoint());
    let call = tokio::spawn(async move {
        t1.invoke(&ep, &invocation(SLOW, &500, Duration::from_secs(10)))
            .await
    });
    while server.probe.started() == 0 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let endpoint = server.endpoint();
    let dispatcher = server.dispatcher.clone();
    server.stop().await.unwrap();
    assert!(dispatcher.is_draining());
    assert_eq!(dispatcher.in_flight(), 0);
    // serve returned only after the call in flight finished, with its real result.
    let out = call.await.unwrap().unwrap();
    assert_eq!(
        codec::decode_result::<String>(out.json_text().unwrap()).unwrap(),
        "slept 500"
    );
    // Nothing listens any more: refused, so never delivered.
    let err = HttpTransport::new()
        .invoke(&endpoint, &invocation(ADD, &(1, 2), Duration::from_secs(2)))
        .await
        .unwrap_err();
    assert!(err.handler_never_ran(), "{err}");
}

#[tokio::test]
async fn drain_grace_bounds_the_wait_and_cancels_the_rest() {
    let server = start_with(
        Some(SECRET),
        options().drain_grace(Duration::from_millis(300)),
        |c| c,
    )
    .await;
    let t = HttpTransport::new();
    let ep = server.endpoint();
    let call = tokio::spawn(async move {
        t.invoke(&ep, &invocation(SLOW, &20_000, Duration::from_secs(30)))
            .await
    });
    while server.probe.started() == 0 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let probe = server.probe.clone();
    let started = std::time::Instant::now();
    server.stop().await.unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    let err = call.await.unwrap().unwrap_err();
    assert_eq!(err.code(), ErrorCode::Transport, "{err}");
    let deadline = std::time::Instant::now() + Duration::from_secs(2);
    while probe.cancelled() == 0 && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(
        probe.cancelled(),
        1,
        "the cut-off handler's cancellation did not fire"
    );
}

#[tokio::test]
async fn idle_keep_alive_connections_do_not_hold_up_the_drain() {
    let server = start(Some(SECRET)).await;
    let t = HttpTransport::new();
    // Leaves a pooled keep-alive connection open.
    t.invoke(
        &server.endpoint(),
        &invocation(ADD, &(1, 2), Duration::from_secs(5)),
    )
    .await
    .unwrap();
    let started = std::time::Instant::now();
    server.stop().await.unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
}
