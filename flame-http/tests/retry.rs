//! Core's one retry loop over real HTTP (the transport sends one attempt each time): every
//! attempt is a fresh, signed envelope, and an overloaded runner is retried without a key.
#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use flame_core::{CallOptions, Flame, Mode, StaticPool, Transport};
use flame_http::HttpTransport;
use std::sync::Arc;
use std::time::Duration;

fn parent_of(server: &TestServer) -> Flame {
    Flame::builder(flame_core::Registry::new())
        .mode(Mode::Parent)
        .transport(Arc::new(HttpTransport::new()))
        .with_pool(Arc::new(StaticPool::new("default", vec![server.endpoint()], 8)))
        .handle_signals(false)
        .build()
        .unwrap()
}

#[tokio::test]
async fn over_http_each_attempt_gets_a_fresh_invocation_id_and_signature() {
    let server = start(Some(SECRET)).await;
    let flame = parent_of(&server);
    let out = flame
        .call_with(
            FLAKY,
            2,
            CallOptions::new()
                .retries(4)
                .idempotency_key("flaky")
                .timeout(Duration::from_secs(10)),
        )
        .await
        .unwrap();
    assert_eq!(out, 3);
    let ids = server.probe.invocation_ids.lock().unwrap().clone();
    assert_eq!(ids.len(), 3);
    let unique: std::collections::HashSet<_> = ids.iter().collect();
    assert_eq!(unique.len(), 3, "replay cache would reject a reused id: {ids:?}");
}

#[tokio::test]
async fn over_http_retries_an_overloaded_runner_without_a_key() {
    let server = start_with(Some(SECRET), options().max_in_flight(1), |c| c).await;
    let plain = HttpTransport::new();
    let (p, ep) = (plain.clone(), server.endpoint());
    let busy = tokio::spawn(async move {
        p.invoke(&ep, &invocation(SLOW, &300, Duration::from_secs(5)))
            .await
    });
    while server.probe.started() == 0 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let flame = parent_of(&server);
    let out = flame
        .call_with(
            COUNT,
            (),
            CallOptions::new().retries(8).timeout(Duration::from_secs(10)),
        )
        .await
        .unwrap();
    assert_eq!(out, 1);
    busy.await.unwrap().unwrap();
}
