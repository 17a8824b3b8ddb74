#![allow(clippy::unwrap_used)]
//! The whole path over real HTTP on 127.0.0.1: the fake Machines API boots, for every machine
//! it creates, a flame-http runner configured from that machine's env (secret, parent id,
//! runner id) — as the image would on Fly — and the address resolver maps the machine to it.
//! The parent pings and invokes it with signed requests through `flame_http::HttpTransport`.

mod common;

use common::*;
use flame_backend_fly::metadata;
use flame_core::{codec, Backend, Flame, Invocation, Mode, PoolConfig, ReapScope, RunnerState, Transport};
use flame_http::{HttpExt, HttpTransport};
use serde_json::{json, Value};
use std::sync::Arc;
use std::time::Duration;

const BOOT: Duration = Duration::from_secs(10);

#[tokio::test]
async fn conformance_over_http_spawn_ping_invoke_terminate_reap() {
    let fake = FakeFly::start_http().await;
    let backend = fake.backend(fake.config());
    let http = Arc::new(HttpTransport::new());
    let request = spawn_request("r1", "parent-1", BOOT);

    let handle = start(&backend, request, &*http).await.unwrap();
    assert!(
        handle.endpoint.url.starts_with("http://127.0.0.1:"),
        "{}",
        handle.endpoint.url
    );
    // Authenticated ping (signed with the pool's secret, which the runner got through the
    // machine's env) reports the runner's own id.
    let status = http.ping(&handle.endpoint).await.unwrap();
    assert!(status.ok);
    assert_eq!(status.runner_id.as_deref(), Some(handle.backend_id.as_str()));
    let inv = Invocation {
        service_id: "math".into(),
        method_id: "add".into(),
        args: codec::encode_args(&(20i64, 22i64)).unwrap().into(),
        deadline: Some(tokio::time::Instant::now() + Duration::from_secs(5)),
        idempotency_key: None,
        trace: Default::default(),
        attempt: 1,
        cast: false,
        stream: false,
        limits: Default::default(),
    };
    let text = http.invoke(&handle.endpoint, &inv).await.unwrap();
    assert_eq!(
        serde_json::from_str::<Value>(text.json_text().unwrap()).unwrap(),
        json!({ "json": 42 })
    );
    assert_eq!(backend.status(&handle).await.unwrap(), RunnerState::Running);

    backend.terminate(&handle).await.unwrap();
    backend.terminate(&handle).await.unwrap();
    assert_eq!(backend.status(&handle).await.unwrap(), RunnerState::Stopped);
    assert!(fake.machine_ids().is_empty());
    assert!(
        http.ping(&handle.endpoint).await.is_err(),
        "the runner must be gone"
    );

    // A leftover of a crashed parent is reaped; the live parent's runner is kept.
    let leftover = start(&backend, spawn_request("old", "crashed-parent", BOOT), &*http)
        .await
        .unwrap();
    let live = start(&backend, spawn_request("new", "parent-1", BOOT), &*http)
        .await
        .unwrap();
    // The crashed parent says nothing more; its silence passes the window.
    let window = Duration::from_secs(1);
    tokio::time::sleep(window + Duration::from_millis(500)).await;
    let ended = backend
        .reap(&ReapScope::new(APP, "parent-1", http.clone()).windows(window, Duration::from_secs(10)))
        .await
        .unwrap();
    assert_eq!(ended, 1);
    assert_eq!(fake.machine_ids(), vec![live.backend_id.clone()]);
    assert!(http.ping(&leftover.endpoint).await.is_err());
    assert!(http.ping(&live.endpoint).await.unwrap().ok);
    backend.terminate(&live).await.unwrap();
    assert!(fake.unmatched().is_empty(), "{:?}", fake.unmatched());
}

#[tokio::test]
async fn a_parent_calls_fly_runners_through_an_elastic_pool_over_http() {
    let fake = FakeFly::start_http().await;
    // A machine a crashed earlier parent left behind (its runner's failsafe ended it, the
    // machine stayed): reaped when the parent starts.
    fake.insert_machine(
        "0ld0ld",
        "stopped",
        json!({ "flame_app": APP, "flame_pool": "default", "flame_parent": "long-gone", "flame_runner": "x" }),
    );
    let flame = Flame::builder(registry())
        .http()
        .mode(Mode::Parent)
        .app(APP)
        .handle_signals(false)
        .backend(fake.backend(fake.config()))
        .pool(
            "default",
            PoolConfig::default().max(2).max_concurrency(4).boot_timeout(BOOT),
        )
        .start()
        .await
        .unwrap();
    // The start's reap runs in the background: wait for its DELETE (bounded).
    let until = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let deletes = fake.requests_matching("DELETE", "").await;
        if deletes.iter().any(|r| r.url.path().ends_with("/0ld0ld")) {
            break;
        }
        assert!(tokio::time::Instant::now() < until, "the leftover was not reaped");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(flame.call(ADD, (2, 3)).await.unwrap(), 5);
    assert_eq!(flame.call(ADD, (40, 2)).await.unwrap(), 42);

    let ids = fake.machine_ids();
    assert_eq!(ids.len(), 1, "one runner serves both calls: {ids:?}");
    let machine = fake.machine(&ids[0]).unwrap();
    let meta = &machine["config"]["metadata"];
    assert_eq!(meta[metadata::APP], APP);
    assert_eq!(meta[metadata::POOL], "default");
    assert_eq!(meta[metadata::PARENT], flame.parent_id());
    let env = machine["config"]["env"].as_object().unwrap();
    assert_eq!(env["FLAME_MODE"], "runner");
    assert_eq!(env["FLAME_LISTEN"], "[::]:8080");
    assert_eq!(env["FLAME_PARENT_ID"], flame.parent_id());
    assert!(
        env.keys().all(|k| k.starts_with("FLAME_")),
        "only runner variables: {env:?}"
    );

    flame.shutdown().await.unwrap();
    assert!(
        fake.machine_ids().is_empty(),
        "shutdown ends every runner: {:?}",
        fake.machine_ids()
    );
    assert!(fake.unmatched().is_empty(), "{:?}", fake.unmatched());
}
