#![allow(clippy::unwrap_used)]
//! The Fly backend against a fake Machines API on 127.0.0.1 (wiremock) shaped like the
//! documented one. Runners are in-process dispatchers the address resolver maps each machine
//! to, so the whole path (API calls, ping, invoke) runs without dialling a private address.

mod common;

use common::*;
use flame_backend_fly::{metadata, FlyApiError, FlyConfig, Init, RetryPolicy};
use flame_core::{
    codec, Backend, Endpoint, ErrorCode, Invocation, ReapScope, RunnerHandle, RunnerState, Transport,
};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use wiremock::matchers::{method, path, path_regex};
use wiremock::{Mock, ResponseTemplate};

const BOOT: Duration = Duration::from_secs(5);

fn machines() -> String {
    format!("/v1/apps/{APP}/machines")
}

async fn invoke_add(transport: &impl Transport, endpoint: &Endpoint, a: i64, b: i64) -> i64 {
    let inv = Invocation {
        service_id: "math".into(),
        method_id: "add".into(),
        args: codec::encode_args(&(a, b)).unwrap().into(),
        deadline: None,
        idempotency_key: None,
        trace: Default::default(),
        attempt: 1,
        cast: false,
        stream: false,
        limits: Default::default(),
    };
    let text = transport.invoke(endpoint, &inv).await.unwrap();
    let v: Value = serde_json::from_str(text.json_text().unwrap()).unwrap();
    v["json"].as_i64().unwrap()
}

fn fly_source(err: &flame_core::Error) -> &FlyApiError {
    std::error::Error::source(err)
        .and_then(|s| s.downcast_ref::<FlyApiError>())
        .expect("a FlyApiError source")
}

#[tokio::test]
async fn create_body_matches_the_documented_api_field_by_field() {
    let fake = FakeFly::start().await;
    let mut expected_env = BTreeMap::new();
    for (k, v) in [
        ("DATABASE_URL", "postgres://db.internal/app"),
        ("FLAME_LISTEN", "[::]:8080"),
        ("FLAME_MODE", "runner"),
        ("FLAME_PARENT_ID", "parent-1"),
        ("FLAME_PARENT_TIMEOUT", "20000"),
        ("FLAME_SECRET", "runner-secret-1"),
    ] {
        expected_env.insert(k.to_string(), json!(v));
    }
    fake.expect_create(vec![
        ("/name", json!("flame-r1")),
        ("/region", json!("ams")),
        ("/config/image", json!(IMAGE)),
        ("/config/init", json!({ "cmd": ["/app/server", "--flame"] })),
        (
            "/config/guest",
            json!({ "cpu_kind": "performance", "cpus": 2, "memory_mb": 4096 }),
        ),
        ("/config/auto_destroy", json!(true)),
        ("/config/restart", json!({ "policy": "no" })),
        ("/config/env", Value::Object(expected_env.into_iter().collect())),
        ("/config/metadata/flame_app", json!(APP)),
        ("/config/metadata/flame_pool", json!("default")),
        ("/config/metadata/flame_parent", json!("parent-1")),
        ("/config/metadata/flame_runner", json!("r1")),
        ("/config/metadata/team", json!("media")),
    ])
    .await;
    // The parent has plenty in its own environment; only DATABASE_URL is forwarded.
    let config = fake
        .config()
        .init(Init {
            cmd: Some(vec!["/app/server".into(), "--flame".into()]),
            ..Init::default()
        })
        .env("DATABASE_URL", "postgres://db.internal/app")
        .metadata("team", "media");
    let backend = fake.backend(config);
    let handle = start(&backend, spawn_request("r1", "parent-1", BOOT), &fake.runners())
        .await
        .unwrap();

    let id = fake.machine_ids().pop().unwrap();
    assert_eq!(handle.backend_id, id);
    assert_eq!(handle.runner_id, "r1");
    assert_eq!(handle.endpoint.url, format!("mem://{id}"));
    assert_eq!(
        handle.endpoint.secret.as_ref().unwrap().expose(),
        "runner-secret-1"
    );

    // The create body, whole: nothing but documented keys, and no GPU fields without a GPU.
    let create = &fake.requests_matching("POST", &machines()).await[0];
    assert_eq!(
        create.headers["authorization"],
        format!("Bearer {TOKEN}").as_str()
    );
    assert_eq!(create.headers["content-type"], "application/json");
    let body: Value = serde_json::from_slice(&create.body).unwrap();
    assert!(create_body_problems(&create.body).is_empty());
    let top: Vec<&String> = body.as_object().unwrap().keys().collect();
    assert_eq!(top, ["config", "name", "region"]);
    assert!(body["config"]["guest"].get("gpu_kind").is_none());
    assert!(!body["config"]["env"]
        .as_object()
        .unwrap()
        .contains_key("FLY_API_TOKEN"));

    // Then the wait: documented query (state, whole seconds 1–60, the instance id).
    let waits = fake.requests_matching("GET", "/wait").await;
    assert_eq!(waits.len(), 1);
    let q: BTreeMap<String, String> = waits[0]
        .url
        .query_pairs()
        .map(|(k, v)| (k.into(), v.into()))
        .collect();
    assert_eq!(q["state"], "started");
    let t: u64 = q["timeout"].parse().unwrap();
    assert!(
        (1..=5).contains(&t),
        "timeout {t} must be within the boot timeout"
    );
    assert_eq!(
        q["instance_id"],
        fake.machine(&id).unwrap()["instance_id"].as_str().unwrap()
    );
    assert_eq!(
        waits[0].headers["authorization"],
        format!("Bearer {TOKEN}").as_str()
    );
    assert!(fake.unmatched().is_empty(), "{:?}", fake.unmatched());
    fake.server.verify().await;
}

#[tokio::test]
async fn gpu_guest_and_defaults() {
    let fake = FakeFly::start().await;
    fake.expect_create(vec![
        ("/config/guest", json!({ "cpu_kind": "performance", "cpus": 8, "memory_mb": 32768, "gpu_kind": "a100-pcie-40gb", "gpus": 1 })),
        ("/config/init", json!({})),
    ])
    .await;
    let config = fake
        .config()
        .cpus("performance", 8)
        .memory_mb(32768)
        .gpu("a100-pcie-40gb", 1);
    let backend = fake.backend(config);
    start(&backend, spawn_request("g1", "parent-1", BOOT), &fake.runners())
        .await
        .unwrap();
    assert!(fake.unmatched().is_empty(), "{:?}", fake.unmatched());
    fake.server.verify().await;
}

#[tokio::test]
async fn conformance_flow_spawn_ping_invoke_status_terminate_idempotent() {
    let fake = FakeFly::start().await;
    let backend = fake.backend(fake.config());
    let transport = fake.runners();
    let handle = start(&backend, spawn_request("r1", "parent-1", BOOT), &fake.runners())
        .await
        .unwrap();

    assert!(transport.ping(&handle.endpoint).await.unwrap().ok);
    assert_eq!(invoke_add(&transport, &handle.endpoint, 2, 3).await, 5);
    assert_eq!(backend.status(&handle).await.unwrap(), RunnerState::Running);

    backend.terminate(&handle).await.unwrap();
    assert_eq!(backend.status(&handle).await.unwrap(), RunnerState::Stopped);
    assert!(fake.machine_ids().is_empty());
    assert!(
        transport.ping(&handle.endpoint).await.is_err(),
        "runner must be gone"
    );
    // Terminating again (machine unknown to Fly: 404) is fine.
    backend.terminate(&handle).await.unwrap();

    // terminate = stop (SIGTERM) → wait for `stopped` (with the instance id) → delete ?force=true
    let stop = &fake.requests_matching("POST", "/stop").await[0];
    let body: Value = serde_json::from_slice(&stop.body).unwrap();
    assert_eq!(body, json!({ "signal": "SIGTERM" }));
    let reqs = fake.requests().await;
    let id = &handle.backend_id;
    let tail: Vec<&str> = reqs
        .iter()
        .map(String::as_str)
        .skip_while(|r| !r.starts_with("POST") || !r.ends_with("/stop"))
        .collect();
    assert_eq!(tail[0], format!("POST {}/{id}/stop", machines()));
    assert!(
        tail[1].starts_with(&format!("GET {}/{id}/wait?", machines()))
            && tail[1].contains("state=stopped")
            && tail[1].contains("instance_id="),
        "{tail:?}"
    );
    assert_eq!(tail[2], format!("DELETE {}/{id}?force=true", machines()));
    assert!(fake.unmatched().is_empty(), "{:?}", fake.unmatched());
}

#[tokio::test]
async fn terminate_of_an_unknown_machine_is_ok() {
    let fake = FakeFly::start().await;
    let backend = fake.backend(fake.config());
    let handle = RunnerHandle {
        runner_id: "gone".into(),
        backend_id: "d8e7f6a5b4c3d2".into(),
        endpoint: Endpoint::new("mem://d8e7f6a5b4c3d2", "gone"),
    };
    backend.terminate(&handle).await.unwrap();
    assert_eq!(backend.status(&handle).await.unwrap(), RunnerState::Stopped);
    assert!(fake.unmatched().is_empty(), "{:?}", fake.unmatched());
}

/// The reap rule on the fake Machines API: a stopped machine of another parent is destroyed
/// at once; a started one whose runner says its parent has been silent past the window, and
/// one whose runner never answers (past the unreachable window), are stopped and destroyed.
/// The live parent's own machine, a machine of another *live* parent (a replica, in touch with
/// its runner), another app's machine and a machine without flame metadata are left alone.
#[tokio::test]
async fn reap_destroys_only_runners_of_dead_parents() {
    let fake = FakeFly::start().await;
    let meta = |parent: &str, app: &str| json!({ "flame_app": app, "flame_pool": "default", "flame_parent": parent, "flame_runner": "x" });
    fake.insert_machine("aa01", "started", meta("dead-parent", APP)); // never answers
    fake.insert_machine("aa02", "stopped", meta("dead-parent", APP));
    fake.insert_machine("aa03", "started", meta("live-parent", APP));
    fake.insert_machine("aa04", "started", meta("dead-parent", "another-app"));
    fake.insert_machine("aa05", "started", json!({ "fly_platform_version": "v2" }));
    fake.insert_machine("aa06", "started", meta("replica-parent", APP));
    fake.insert_machine("aa07", "started", meta("dead-parent", APP)); // answers: parent silent
    let runner = |id: &str| {
        fake.runners().add(
            &format!("mem://{id}"),
            flame_core::Dispatcher::new(registry(), id).with_parent(true),
        )
    };
    let replica = runner("aa06");
    let replica_again = replica.clone();
    runner("aa07");
    // The replica's parent keeps in touch with its runner, as a live parent's pool does.
    let touch = tokio::spawn(async move {
        loop {
            replica.note_parent_contact();
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
    let backend = fake.backend(fake.config());
    let window = Duration::from_secs(1);
    let scope =
        ReapScope::new(APP, "live-parent", Arc::new(fake.runners())).windows(window, Duration::from_secs(2));
    tokio::time::sleep(window + Duration::from_millis(500)).await;
    let started = Instant::now();
    let ended = backend.reap(&scope).await;
    touch.abort();
    assert_eq!(ended.unwrap(), 3);
    assert!(
        started.elapsed() >= Duration::from_secs(2),
        "the unanswering machine was given the unreachable window"
    );
    assert_eq!(fake.machine_ids(), ["aa03", "aa04", "aa05", "aa06"]);
    let list = fake.requests_matching("GET", &machines()).await;
    assert_eq!(list.len(), 1);
    assert_eq!(
        list[0].url.query(),
        Some(format!("metadata.{}={APP}", metadata::APP).as_str())
    );
    // The started orphans were stopped before they were destroyed; the stopped one only
    // destroyed.
    let stops: Vec<String> = fake
        .requests_matching("POST", "/stop")
        .await
        .iter()
        .map(|r| r.url.path().to_owned())
        .collect();
    assert_eq!(stops.len(), 2, "{stops:?}");
    assert!(
        stops.iter().all(|p| p.contains("/aa01/") || p.contains("/aa07/")),
        "{stops:?}"
    );
    // Nothing more to reap (the replica is in touch again).
    replica_again.note_parent_contact();
    let again = backend.reap(&scope).await.unwrap();
    assert_eq!(again, 0);
    assert!(fake.unmatched().is_empty(), "{:?}", fake.unmatched());
}

#[tokio::test]
async fn wait_408_is_retried_until_started() {
    let fake = FakeFly::start().await;
    fake.set_boot(Boot::TimeoutsThenStart(3));
    let backend = fake.backend(fake.config());
    let handle = start(&backend, spawn_request("r1", "p", BOOT), &fake.runners())
        .await
        .unwrap();
    assert_eq!(fake.requests_matching("GET", "/wait").await.len(), 4);
    assert_eq!(backend.status(&handle).await.unwrap(), RunnerState::Running);
    assert!(fake.unmatched().is_empty(), "{:?}", fake.unmatched());
}

#[tokio::test]
async fn machine_failed_during_boot_is_destroyed_with_a_typed_error() {
    let fake = FakeFly::start().await;
    fake.set_boot(Boot::GoesTo("failed"));
    let backend = fake.backend(fake.config());
    let err = start(&backend, spawn_request("r1", "p", BOOT), &fake.runners())
        .await
        .unwrap_err();
    assert_eq!(err.code(), ErrorCode::Backend);
    assert!(err.message().contains("`failed`"), "{err}");
    assert!(!err.is_retryable());
    assert_eq!(err.details().unwrap()["state"], "failed");
    assert_eq!(fly_source(&err).fly_status.as_deref(), Some("failed"));
    assert_no_token(&err);
    // Destroyed before the error came back.
    assert!(fake.machine_ids().is_empty());
    assert_eq!(fake.requests_matching("DELETE", "").await.len(), 1);
    assert!(fake.unmatched().is_empty(), "{:?}", fake.unmatched());
}

#[tokio::test]
async fn machine_destroyed_during_boot_is_a_typed_error() {
    let fake = FakeFly::start().await;
    fake.set_boot(Boot::Destroyed);
    let backend = fake.backend(fake.config());
    let err = start(&backend, spawn_request("r1", "p", BOOT), &fake.runners())
        .await
        .unwrap_err();
    assert_eq!(err.code(), ErrorCode::Backend);
    assert!(err.message().contains("`destroyed`"), "{err}");
    assert_no_token(&err);
    assert!(fake.machine_ids().is_empty());
    assert!(fake.unmatched().is_empty(), "{:?}", fake.unmatched());
}

#[tokio::test]
async fn boot_that_never_starts_is_a_spawn_timeout_and_leaves_nothing() {
    let fake = FakeFly::start().await;
    fake.set_boot(Boot::Never);
    let backend = fake.backend(fake.config());
    let started = Instant::now();
    let err = start(
        &backend,
        spawn_request("r1", "p", Duration::from_millis(1500)),
        &fake.runners(),
    )
    .await
    .unwrap_err();
    assert_eq!(err.code(), ErrorCode::SpawnTimeout);
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    assert!(
        fake.wait_no_machines(Duration::from_secs(5)).await,
        "machine must be destroyed"
    );
    assert!(fake.unmatched().is_empty(), "{:?}", fake.unmatched());
}

#[tokio::test]
async fn runner_that_never_answers_ping_is_a_spawn_timeout_and_is_destroyed() {
    let fake = FakeFly::start().await;
    fake.set_runner_answers(false);
    let backend = fake.backend(fake.config());
    let err = start(
        &backend,
        spawn_request("r1", "p", Duration::from_millis(1500)),
        &fake.runners(),
    )
    .await
    .unwrap_err();
    assert_eq!(err.code(), ErrorCode::SpawnTimeout);
    assert!(err.message().contains("did not answer a health ping"), "{err}");
    // The readiness probe ended it: stopped, then destroyed.
    assert!(fake.machine_ids().is_empty(), "machine must be destroyed");
    let deletes = fake.requests_matching("DELETE", "").await;
    assert_eq!(deletes.len(), 1);
    assert_eq!(deletes[0].url.query(), Some("force=true"));
}

#[tokio::test]
async fn rate_limit_429_honours_retry_after() {
    let fake = FakeFly::start().await;
    Mock::given(method("POST"))
        .and(path(machines()))
        .respond_with(
            ResponseTemplate::new(429)
                .insert_header("retry-after", "1")
                .set_body_json(json!({ "error": "rate limit exceeded" })),
        )
        .with_priority(1)
        .up_to_n_times(1)
        .mount(&fake.server)
        .await;
    let backend = fake.backend(fake.config());
    let started = Instant::now();
    start(&backend, spawn_request("r1", "p", BOOT), &fake.runners())
        .await
        .unwrap();
    let took = started.elapsed();
    assert!(
        took >= Duration::from_secs(1),
        "Retry-After: 1 was not honoured ({took:?})"
    );
    assert!(took < Duration::from_secs(4), "{took:?}");
    assert_eq!(fake.requests_matching("POST", &machines()).await.len(), 2);

    // A Retry-After longer than the policy allows ends the retries at once, retryable.
    Mock::given(method("POST"))
        .and(path(machines()))
        .respond_with(
            ResponseTemplate::new(429)
                .insert_header("retry-after", "600")
                .set_body_json(json!({ "error": "rate limit exceeded" })),
        )
        .with_priority(1)
        .mount(&fake.server)
        .await;
    let err = start(&backend, spawn_request("r2", "p", BOOT), &fake.runners())
        .await
        .unwrap_err();
    assert_eq!(err.code(), ErrorCode::Backend);
    assert!(err.is_retryable());
    assert_eq!(fly_details(&err).0, 429);
    assert_no_token(&err);
}

#[tokio::test]
async fn server_errors_are_retried_with_backoff_until_give_up() {
    let fake = FakeFly::start().await;
    Mock::given(method("POST"))
        .and(path(machines()))
        .respond_with(
            ResponseTemplate::new(500)
                .set_body_json(json!({ "error": "internal error", "status": "unknown" })),
        )
        .with_priority(1)
        .mount(&fake.server)
        .await;
    let backend = fake.backend(fake.config());
    let err = start(&backend, spawn_request("r1", "p", BOOT), &fake.runners())
        .await
        .unwrap_err();
    assert_eq!(err.code(), ErrorCode::Backend);
    assert!(err.is_retryable());
    let (status, code, text) = fly_details(&err);
    assert_eq!(
        (status, code.as_deref(), text.as_str()),
        (500, Some("unknown"), "internal error")
    );
    assert_eq!(err.details().unwrap()["attempts"], 4, "1 try + 3 retries");
    assert!(
        err.message().contains("HTTP 500") && err.message().contains("after 4 attempts"),
        "{err}"
    );
    assert_eq!(fake.requests_matching("POST", &machines()).await.len(), 4);
    // The outcome of a 5xx create is unknown: the backend looked for a half-made machine.
    let sweeps = fake.requests_matching("GET", &machines()).await;
    assert_eq!(sweeps.len(), 1);
    assert_eq!(sweeps[0].url.query(), Some("metadata.flame_runner=r1"));
    assert_no_token(&err);
}

#[tokio::test]
async fn a_5xx_then_success_is_retried() {
    let fake = FakeFly::start().await;
    Mock::given(method("POST"))
        .and(path(machines()))
        .respond_with(ResponseTemplate::new(503).set_body_string("upstream unavailable"))
        .with_priority(1)
        .up_to_n_times(2)
        .mount(&fake.server)
        .await;
    let backend = fake.backend(fake.config());
    start(&backend, spawn_request("r1", "p", BOOT), &fake.runners())
        .await
        .unwrap();
    assert_eq!(fake.requests_matching("POST", &machines()).await.len(), 3);
    assert_eq!(fake.machine_ids().len(), 1);
}

#[tokio::test]
async fn machine_limit_422_is_a_typed_error_and_not_retried() {
    let fake = FakeFly::start().await;
    Mock::given(method("POST"))
        .and(path(machines()))
        .respond_with(ResponseTemplate::new(422).set_body_json(json!({
            "error": "could not create machine: app flame-test-app has reached its machine limit (50)",
            "status": "machine_limit_reached",
        })))
        .with_priority(1)
        .mount(&fake.server)
        .await;
    let backend = fake.backend(fake.config());
    let err = start(&backend, spawn_request("r1", "p", BOOT), &fake.runners())
        .await
        .unwrap_err();
    assert_eq!(err.code(), ErrorCode::Backend);
    assert!(!err.is_retryable());
    let fly = fly_source(&err);
    assert_eq!(fly.http_status, 422);
    assert_eq!(fly.fly_status.as_deref(), Some("machine_limit_reached"));
    assert!(err.message().contains("machine limit"), "{err}");
    assert_eq!(fake.requests_matching("POST", &machines()).await.len(), 1);
    // A clean 4xx created nothing: no sweep.
    assert!(fake.requests_matching("GET", &machines()).await.is_empty());
    assert_no_token(&err);
}

#[tokio::test]
async fn conflicts_409_and_412_are_not_retried_blindly() {
    for (status, code, retryable) in [
        (409, "insufficient_capacity", true),
        (412, "insufficient_capacity", true),
    ] {
        let fake = FakeFly::start().await;
        Mock::given(method("POST"))
            .and(path(machines()))
            .respond_with(ResponseTemplate::new(status).set_body_json(json!({
                "error": "insufficient resources available to fulfill request", "status": code,
            })))
            .with_priority(1)
            .mount(&fake.server)
            .await;
        let backend = fake.backend(fake.config());
        let err = start(&backend, spawn_request("r1", "p", BOOT), &fake.runners())
            .await
            .unwrap_err();
        assert_eq!(err.code(), ErrorCode::Backend);
        assert_eq!(err.is_retryable(), retryable, "{status}");
        assert_eq!(
            fly_details(&err),
            (
                status as u64,
                Some(code.into()),
                "insufficient resources available to fulfill request".into()
            )
        );
        assert_eq!(
            fake.requests_matching("POST", &machines()).await.len(),
            1,
            "{status} retried"
        );
        assert_no_token(&err);
    }
}

#[tokio::test]
async fn malformed_json_is_a_typed_error() {
    let fake = FakeFly::start().await;
    Mock::given(method("POST"))
        .and(path(machines()))
        .respond_with(
            ResponseTemplate::new(200)
                .set_body_raw(r#"{"id": "e2865aa", "state": "crea"#, "application/json"),
        )
        .with_priority(1)
        .mount(&fake.server)
        .await;
    let backend = fake.backend(fake.config());
    let err = start(&backend, spawn_request("r1", "p", BOOT), &fake.runners())
        .await
        .unwrap_err();
    assert_eq!(err.code(), ErrorCode::Backend);
    assert!(err.message().contains("malformed JSON"), "{err}");
    // A 200 we cannot read may have made a machine: the backend looked for it.
    assert_eq!(fake.requests_matching("GET", &machines()).await.len(), 1);
    assert_no_token(&err);

    // An error reply that is not JSON keeps its text.
    let fake = FakeFly::start().await;
    Mock::given(method("POST"))
        .and(path(machines()))
        .respond_with(ResponseTemplate::new(400).set_body_string("<html>bad gateway-ish</html>"))
        .with_priority(1)
        .mount(&fake.server)
        .await;
    let backend = fake.backend(fake.config());
    let err = start(&backend, spawn_request("r1", "p", BOOT), &fake.runners())
        .await
        .unwrap_err();
    assert_eq!(fly_details(&err).0, 400);
    assert!(err.message().contains("bad gateway-ish"), "{err}");

    // A list reply that is not a list of machines.
    let fake = FakeFly::start().await;
    Mock::given(method("GET"))
        .and(path(machines()))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({ "machines": "nope" })))
        .with_priority(1)
        .mount(&fake.server)
        .await;
    let backend = fake.backend(fake.config());
    let err = backend
        .reap(&ReapScope::new(APP, "p", Arc::new(fake.runners())))
        .await
        .unwrap_err();
    assert_eq!(err.code(), ErrorCode::Backend);
    assert!(err.message().contains("malformed JSON"), "{err}");
}

#[derive(Clone, Default)]
struct LogBuf(Arc<Mutex<Vec<u8>>>);
impl std::io::Write for LogBuf {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}
impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for LogBuf {
    type Writer = LogBuf;
    fn make_writer(&'a self) -> LogBuf {
        self.clone()
    }
}

#[tokio::test]
async fn the_token_never_appears_in_errors_logs_or_debug() {
    let logs = LogBuf::default();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(logs.clone())
        .with_max_level(tracing::Level::TRACE)
        .with_ansi(false)
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);

    let fake = FakeFly::start().await;
    // A hostile API that echoes the Authorization header back in its error bodies.
    let echo = json!({ "error": format!("token Bearer {TOKEN} is not authorized for app"), "status": format!("bad_{TOKEN}") });
    Mock::given(method("POST"))
        .and(path(machines()))
        .respond_with(ResponseTemplate::new(401).set_body_json(echo.clone()))
        .with_priority(1)
        .up_to_n_times(1)
        .mount(&fake.server)
        .await;
    Mock::given(method("POST"))
        .and(path(machines()))
        .respond_with(
            ResponseTemplate::new(502).set_body_string(format!("proxy saw authorization: Bearer {TOKEN}")),
        )
        .with_priority(1)
        .up_to_n_times(4)
        .mount(&fake.server)
        .await;
    Mock::given(method("DELETE"))
        .and(path_regex(format!("^{}/.+$", machines())))
        .respond_with(ResponseTemplate::new(403).set_body_json(echo.clone()))
        .with_priority(1)
        .mount(&fake.server)
        .await;
    let backend = fake.backend(fake.config());
    let mut errors = Vec::new();
    errors.push(
        start(&backend, spawn_request("r1", "p", BOOT), &fake.runners())
            .await
            .unwrap_err(),
    ); // 401
    errors.push(
        start(&backend, spawn_request("r2", "p", BOOT), &fake.runners())
            .await
            .unwrap_err(),
    ); // 502 ×4
    let handle = RunnerHandle {
        runner_id: "x".into(),
        backend_id: "abc123".into(),
        endpoint: Endpoint::new("mem://abc123", "x"),
    };
    fake.insert_machine("abc123", "started", json!({}));
    errors.push(backend.terminate(&handle).await.unwrap_err()); // stop ok, delete 403
                                                                // A connection refused (nothing listens on this port any more).
    let dead = FlyConfig::new(APP, IMAGE, TOKEN)
        .api_url("http://127.0.0.1:9")
        .retry(RetryPolicy {
            max_retries: 1,
            ..fast_retry()
        });
    let dead = flame_backend_fly::FlyBackend::new(dead).unwrap();
    errors.push(
        start(&dead, spawn_request("r3", "p", BOOT), &fake.runners())
            .await
            .unwrap_err(),
    );
    errors.push(
        dead.reap(&ReapScope::new(APP, "p", Arc::new(fake.runners())))
            .await
            .unwrap_err(),
    );

    assert_eq!(fly_details(&errors[0]).0, 401);
    assert!(!errors[0].is_retryable());
    assert_eq!(fly_details(&errors[1]).0, 502);
    for err in &errors {
        assert_no_token(err);
    }
    assert!(errors[0].message().contains("<redacted>"), "{}", errors[0]);
    assert!(!format!("{backend:?}").contains(TOKEN));
    assert!(!format!("{:?}", backend.config()).contains(TOKEN));
    let logs = String::from_utf8(logs.0.lock().unwrap().clone()).unwrap();
    assert!(logs.contains("fly"), "logs were captured");
    assert!(
        !logs.contains(TOKEN) && !logs.contains("5b7e0c9d1f"),
        "token in logs:\n{logs}"
    );
}

#[tokio::test]
async fn status_maps_machine_states() {
    let fake = FakeFly::start().await;
    let backend = fake.backend(fake.config());
    for (state, want) in [
        ("created", RunnerState::Booting),
        ("starting", RunnerState::Booting),
        ("started", RunnerState::Running),
        ("stopping", RunnerState::Stopped),
        ("stopped", RunnerState::Stopped),
        ("failed", RunnerState::Stopped),
        ("destroyed", RunnerState::Stopped),
    ] {
        let id = format!("bb{}", state.len());
        fake.insert_machine(&id, state, json!({}));
        let handle = RunnerHandle {
            runner_id: "x".into(),
            backend_id: id.clone(),
            endpoint: Endpoint::new("mem://x", "x"),
        };
        assert_eq!(backend.status(&handle).await.unwrap(), want, "{state}");
        fake.state.lock().unwrap().machines.remove(&id);
    }
}

#[tokio::test]
async fn a_spawn_dropped_half_way_destroys_its_machine() {
    let fake = FakeFly::start().await;
    fake.set_boot(Boot::Never);
    let backend = fake.backend(fake.config());
    // The caller gives up while the machine boots (its deadline passed, or it was cancelled).
    let gave_up = tokio::time::timeout(
        Duration::from_millis(300),
        backend.spawn(spawn_request("r1", "p", Duration::from_secs(30))),
    )
    .await;
    assert!(gave_up.is_err());
    assert_eq!(fake.requests_matching("POST", &machines()).await.len(), 1);
    let until = Instant::now() + Duration::from_secs(5);
    while !fake.machine_ids().is_empty() && Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        fake.machine_ids().is_empty(),
        "the dropped spawn's machine must be destroyed"
    );
    assert!(fake.unmatched().is_empty(), "{:?}", fake.unmatched());
}

/// A machine that Fly started, but whose runner crashes at once (restart policy `no`: Fly
/// stops it and records an exit event): core's readiness probe hears from Fly that it stopped
/// and fails the start at once — long before the boot timeout — with the machine's state and
/// its exit event (`exit_details`); the machine is destroyed.
#[tokio::test]
async fn a_machine_that_dies_before_its_runner_answers_fails_fast() {
    let fake = FakeFly::start().await;
    fake.set_runner_answers(false);
    let backend = fake.backend(fake.config());
    let state = fake.state.clone();
    // The runner process crashes right after boot: with restart policy "no" Fly stops it.
    let crash = tokio::spawn(async move {
        loop {
            {
                let mut st = state.lock().unwrap();
                if let Some(m) = st.machines.values_mut().find(|m| m["state"] == "started") {
                    m["state"] = json!("stopped");
                    m["events"].as_array_mut().unwrap().insert(
                        0,
                        json!({
                            "type": "exit", "status": "stopped", "source": "flyd",
                            "timestamp": 1_700_000_005_000u64,
                            "request": { "exit_event": {
                                "exit_code": 3, "guest_exit_code": 3, "oom_killed": false,
                                "requested_stop": false, "restarting": false,
                            } },
                        }),
                    );
                    return;
                }
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    });
    let boot = Duration::from_secs(60);
    let started = Instant::now();
    let err = start(&backend, spawn_request("r1", "p", boot), &fake.runners())
        .await
        .unwrap_err();
    crash.await.unwrap();
    assert_eq!(err.code(), ErrorCode::Backend, "{err}");
    assert!(!err.is_retryable(), "{err}");
    assert!(err.message().contains("exited before it was ready"), "{err}");
    assert!(err.message().contains("`stopped`"), "{err}");
    assert!(err.message().contains("`exit`"), "no last event: {err}");
    assert!(err.message().contains("exit code 3"), "no exit code: {err}");
    assert!(started.elapsed() < boot / 4, "not fast: {:?}", started.elapsed());
    assert!(fake.machine_ids().is_empty(), "machine must be destroyed");
    assert_no_token(&err);
    assert!(!err.to_string().contains("runner-secret-1"), "{err}");
    eprintln!(
        "a machine that died after starting failed its start in {:?}: {err}",
        started.elapsed()
    );
}
