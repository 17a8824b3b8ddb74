//! The `interop` example binary on its own (no Bun needed): the ready line, the extra methods
//! other backends' tests use, parent mode against it, and the drain on SIGTERM.
#![allow(clippy::unwrap_used)]

mod interop_common;

use flame_core::{Endpoint, Invocation, Secret, Transport};
use flame_http::HttpTransport;
use interop_common::*;
use std::time::Duration;

const SECRET: &str = "interop-secret";

fn call(service: &str, method: &str, args: &str, timeout: Duration) -> Invocation {
    Invocation {
        service_id: service.into(),
        method_id: method.into(),
        args: args.into(),
        deadline: Some(tokio::time::Instant::now() + timeout),
        idempotency_key: None,
        trace: Default::default(),
        attempt: 1,
        cast: false,
        stream: false,
        limits: Default::default(),
    }
}

fn endpoint(url: &str) -> Endpoint {
    Endpoint::new(url, "interop-runner").with_secret(Some(Secret::new(SECRET)))
}

#[tokio::test]
async fn runner_serves_nonce_whoami_sleep_and_health() {
    let bin = interop_binary();
    let (runner, url) = start_rust_runner(&bin, SECRET).await;
    let t = HttpTransport::new();
    let ep = endpoint(&url);
    let a = t
        .invoke(
            &ep,
            &call("utils", "nonce", r#"{"json":[]}"#, Duration::from_secs(5)),
        )
        .await
        .unwrap();
    let b = t
        .invoke(
            &ep,
            &call("utils", "nonce", r#"{"json":[]}"#, Duration::from_secs(5)),
        )
        .await
        .unwrap();
    let (a, b): (String, String) = (a.decode().await.unwrap(), b.decode().await.unwrap());
    assert_ne!(a, b, "nonce must differ per run");
    assert!(uuid::Uuid::parse_str(&a).is_ok(), "{a}");

    let who = t
        .invoke(
            &ep,
            &call("utils", "whoami", r#"{"json":[]}"#, Duration::from_secs(5)),
        )
        .await
        .unwrap();
    let who: serde_json::Value = who.decode().await.unwrap();
    assert_eq!(who["pid"].as_u64(), Some(u64::from(runner.pid())));
    assert_eq!(who["runner_id"], "interop-runner");
    assert!(who["hostname"].is_string() && who["cgroup"].is_string(), "{who}");

    let slept = t
        .invoke(
            &ep,
            &call("utils", "sleep", r#"{"json":[30]}"#, Duration::from_secs(5)),
        )
        .await
        .unwrap();
    assert_eq!(slept.decode::<u64>().await.unwrap(), 30);

    let status = t.ping(&ep).await.unwrap();
    assert_eq!(status.runner_id.as_deref(), Some("interop-runner"));
    drop(runner);
}

#[tokio::test]
async fn parent_mode_passes_against_our_own_runner_and_names_a_failure() {
    let bin = interop_binary();
    let (runner, url) = start_rust_runner(&bin, SECRET).await;
    let (ok, out, err) = run_rust_parent(&bin, &url, SECRET).await;
    assert!(ok && out.contains("E2E_OK"), "{out}\n{err}");
    drop(runner);
    // Nothing listens there any more: the parent fails and names the first call.
    let (ok, out, err) = run_rust_parent(&bin, &url, SECRET).await;
    assert!(!ok && !out.contains("E2E_OK"));
    assert!(err.contains("E2E_FAILED math/add(2, 3)"), "{err}");
}

#[tokio::test]
async fn sigterm_drains_the_call_in_flight_then_exits_cleanly() {
    let bin = interop_binary();
    let (runner, url) = start_rust_runner(&bin, SECRET).await;
    let t = HttpTransport::new();
    let ep = endpoint(&url);
    let call_task = tokio::spawn(async move {
        t.invoke(
            &ep,
            &call("utils", "sleep", r#"{"json":[700]}"#, Duration::from_secs(10)),
        )
        .await
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    let kill = std::process::Command::new("kill")
        .args(["-TERM", &runner.pid().to_string()])
        .status()
        .unwrap();
    assert!(kill.success());
    let out = call_task.await.unwrap().unwrap();
    assert_eq!(out.decode::<u64>().await.unwrap(), 700);
    let (ok, _, _) = runner.finish(Duration::from_secs(10)).await;
    assert!(ok, "runner did not exit 0 after draining");
    // And it no longer listens.
    let err = HttpTransport::new()
        .invoke(
            &endpoint(&url),
            &call("utils", "ping", r#"{"json":[]}"#, Duration::from_secs(2)),
        )
        .await
        .unwrap_err();
    assert!(err.handler_never_ran(), "{err}");
}
