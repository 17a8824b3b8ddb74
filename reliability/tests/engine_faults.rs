//! Scenario 7 — engine faults through an elastic pool: the Docker engine down (a closed port),
//! the Fly Machines API answering 429 and 500, ECS throttling and 5xx (wiremock servers on
//! 127.0.0.1). Every call ends
//! in a typed error before its deadline, the pool ends up empty (no runner counted, booting or
//! leased), and no machine is left behind.
//!
//! The backends' own fault tests are not repeated here: dockerd gone mid-test
//! (`flame-backend-docker/tests/docker.rs`), Fly retries, `Retry-After`, 409/412/422
//! (`flame-backend-fly/tests/fly_api.rs`), ECS throttling and 5xx
//! (`flame-backend-ecs/tests/faults.rs`).
#![allow(clippy::unwrap_used)]

use flame_backend_docker::DockerBackend;
use flame_backend_ecs::aws::Credentials;
use flame_backend_ecs::{EcsBackend, PollSettings, RetrySettings};
use flame_backend_fly::{FlyBackend, FlyConfig, RetryPolicy};
use flame_core::{Backend, CallOptions, ErrorCode, Flame, Mode, PoolConfig, Registry};
use flame_http::HttpTransport;
use flame_reliability::methods::{Record, RECORD};
use serde_json::json;
use std::sync::Arc;
use std::time::{Duration, Instant};
use wiremock::matchers::{header, method, path, path_regex};
use wiremock::{Mock, MockServer, ResponseTemplate};

const TOKEN: &str = "fm2_REL_TOKEN_9f8e7d6c5b";

async fn parent(backend: impl Backend) -> Flame {
    Flame::builder(Registry::new())
        .app(format!("rel-faults-{}", uuid::Uuid::new_v4().simple()))
        .transport(Arc::new(HttpTransport::new()))
        .mode(Mode::Parent)
        .backend(backend)
        .pool(
            "default",
            PoolConfig::default()
                .max(2)
                .max_concurrency(10)
                .boot_timeout(Duration::from_secs(5)),
        )
        .handle_signals(false)
        .start()
        .await
        .unwrap()
}

/// Makes `n` concurrent calls; each must fail with `code` before its deadline. Returns the
/// errors' texts.
async fn all_fail_typed(flame: &Flame, n: usize, code: ErrorCode, retryable: bool) -> Vec<String> {
    let deadline = Duration::from_secs(15);
    let calls: Vec<_> = (0..n)
        .map(|i| {
            let f = flame.clone();
            tokio::spawn(async move {
                let t = Instant::now();
                let r = f
                    .call_with(
                        RECORD,
                        Record::new(format!("f-{i}")),
                        CallOptions::new().timeout(deadline).retries(2),
                    )
                    .await;
                (r, t.elapsed())
            })
        })
        .collect();
    let mut texts = Vec::new();
    for c in calls {
        let (r, took) = c.await.unwrap();
        let err = r.unwrap_err();
        assert_eq!(boot_failure_code(&err), code.as_str(), "{err}");
        assert_eq!(err.is_retryable(), retryable, "{err}");
        assert!(took < deadline, "a call took {took:?}");
        texts.push(format!("{err} {:?}", err.details()));
    }
    texts
}

/// The code of the engine's failure: the error's own, or — once repeated failed boots opened
/// the pool's crash-loop breaker and callers fail fast with `NO_RUNNER` — the last boot
/// failure's, which that error names in its details.
fn boot_failure_code(err: &flame_core::Error) -> String {
    match (err.code(), err.details()) {
        (ErrorCode::NoRunner, Some(d)) if d.get("breaker").is_some() => {
            d["lastBootError"]["code"].as_str().unwrap_or("?").to_owned()
        }
        (code, _) => code.as_str().to_owned(),
    }
}

async fn pool_is_empty(flame: &Flame) {
    let pool = flame.pool("default").unwrap();
    let until = Instant::now() + Duration::from_secs(10);
    loop {
        let s = pool.stats();
        if s.runners == 0 && s.booting == 0 && s.in_flight == 0 && s.waiting == 0 {
            return;
        }
        assert!(Instant::now() < until, "the pool kept something: {s:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn docker_engine_down_gives_typed_retryable_errors_through_the_pool() {
    let closed_port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let backend = DockerBackend::builder()
        .docker_host(format!("tcp://127.0.0.1:{closed_port}"))
        .image("flame-reliability:absent")
        .api_timeout(Duration::from_secs(3))
        .build()
        .unwrap();
    let flame = parent(backend).await;
    let errors = all_fail_typed(&flame, 20, ErrorCode::Backend, true).await;
    assert!(
        errors.iter().all(|e| e.contains(&closed_port.to_string())),
        "{:?}",
        errors[0]
    );
    pool_is_empty(&flame).await;
    // The pool keeps working once asked again: still typed, still nothing kept.
    all_fail_typed(&flame, 3, ErrorCode::Backend, true).await;
    pool_is_empty(&flame).await;
    flame.shutdown().await.unwrap();
}

fn fly(server: &MockServer) -> FlyBackend {
    let retry = RetryPolicy {
        max_retries: 2,
        min_delay: Duration::from_millis(10),
        max_delay: Duration::from_millis(50),
        max_retry_after: Duration::from_secs(2),
    };
    let config = FlyConfig::new("rel-app", "registry.fly.io/rel-app:deployment-1", TOKEN)
        .api_url(server.uri())
        .stop_timeout(Duration::from_secs(1))
        .request_timeout(Duration::from_secs(3))
        .retry(retry);
    // The private addresses a fake machine reports are never dialled.
    FlyBackend::new(config)
        .unwrap()
        .with_resolver(Arc::new(|_| Some("http://127.0.0.1:9".into())))
}

const MACHINES: &str = "/v1/apps/rel-app/machines";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fly_429_and_500_give_typed_errors_through_the_pool_and_create_nothing() {
    for (status, retry_after, retryable) in [(429u16, Some("600"), true), (500, None, true)] {
        let server = MockServer::start().await;
        let mut reply =
            ResponseTemplate::new(status).set_body_json(json!({"error": "nope", "status": "unavailable"}));
        if let Some(after) = retry_after {
            reply = reply.insert_header("retry-after", after);
        }
        Mock::given(method("POST"))
            .and(path(MACHINES))
            .respond_with(reply)
            .mount(&server)
            .await;
        Mock::given(method("GET"))
            .and(path(MACHINES))
            .respond_with(ResponseTemplate::new(200).set_body_json(json!([])))
            .mount(&server)
            .await;
        let flame = parent(fly(&server)).await;
        let errors = all_fail_typed(&flame, 10, ErrorCode::Backend, retryable).await;
        assert!(
            errors.iter().all(|e| !e.contains(TOKEN)),
            "the token leaked: {}",
            errors[0]
        );
        pool_is_empty(&flame).await;
        flame.shutdown().await.unwrap();
        let requests = server.received_requests().await.unwrap();
        let creates = requests
            .iter()
            .filter(|r| r.method.as_str() == "POST" && r.url.path() == MACHINES)
            .count();
        assert!(creates >= 1, "{status}: no create was tried");
        eprintln!("fly {status}: {} calls failed typed (BACKEND, retryable), {creates} create attempts, nothing created", errors.len());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fly_machine_that_never_starts_is_destroyed_not_leaked() {
    let server = MockServer::start().await;
    let machine = json!({
        "id": "e2865rel0001",
        "name": "flame-rel",
        "state": "created",
        "region": "ams",
        "instance_id": "01HRELINSTANCE0001",
        "private_ip": "fdaa:0:3b99:a7b:1:e229:8038:2",
        "config": {},
    });
    Mock::given(method("POST"))
        .and(path(MACHINES))
        .respond_with(ResponseTemplate::new(200).set_body_json(machine.clone()))
        .mount(&server)
        .await;
    Mock::given(method("GET"))
        .and(path_regex(format!("^{MACHINES}/e2865rel0001/wait$")))
        .respond_with(ResponseTemplate::new(500).set_body_json(json!({"error": "internal"})))
        .mount(&server)
        .await;
    Mock::given(method("GET"))
        .and(path(format!("{MACHINES}/e2865rel0001")))
        .respond_with(ResponseTemplate::new(200).set_body_json(machine))
        .mount(&server)
        .await;
    Mock::given(method("POST"))
        .and(path(format!("{MACHINES}/e2865rel0001/stop")))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({"ok": true})))
        .mount(&server)
        .await;
    Mock::given(method("DELETE"))
        .and(path(format!("{MACHINES}/e2865rel0001")))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({"ok": true})))
        .mount(&server)
        .await;
    Mock::given(method("GET"))
        .and(path(MACHINES))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!([])))
        .mount(&server)
        .await;
    let flame = parent(fly(&server)).await;
    let f = flame.clone();
    let err = f
        .call_with(
            RECORD,
            Record::new("never-starts"),
            CallOptions::new().timeout(Duration::from_secs(15)),
        )
        .await
        .unwrap_err();
    assert!(
        matches!(err.code(), ErrorCode::Backend | ErrorCode::SpawnTimeout),
        "{err}"
    );
    assert!(!err.to_string().contains(TOKEN));
    pool_is_empty(&flame).await;
    flame.shutdown().await.unwrap();
    let requests = server.received_requests().await.unwrap();
    let creates = requests
        .iter()
        .filter(|r| r.method.as_str() == "POST" && r.url.path() == MACHINES)
        .count();
    let deletes = requests
        .iter()
        .filter(|r| r.method.as_str() == "DELETE" && r.url.path().ends_with("/e2865rel0001"))
        .count();
    assert!(creates >= 1);
    assert!(
        deletes >= creates,
        "{creates} machines created, {deletes} destroyed: {err}"
    );
    eprintln!("fly machine that never starts: {err}; {creates} created, {deletes} destroy requests");
}

const ECS_TARGET: &str = "AmazonEC2ContainerServiceV20141113";
const TASK_ARN: &str = "arn:aws:ecs:us-east-1:123456789012:task/rel/0123456789abcdef";

fn ecs_op(name: &str) -> wiremock::MockBuilder {
    Mock::given(method("POST")).and(header("x-amz-target", format!("{ECS_TARGET}.{name}").as_str()))
}

fn ecs_json(status: u16, body: serde_json::Value) -> ResponseTemplate {
    ResponseTemplate::new(status)
        .insert_header("content-type", "application/x-amz-json-1.1")
        .set_body_string(body.to_string())
}

fn ecs_task(last: &str) -> serde_json::Value {
    json!({
        "taskArn": TASK_ARN,
        "clusterArn": "arn:aws:ecs:us-east-1:123456789012:cluster/rel",
        "lastStatus": last,
        "desiredStatus": "RUNNING",
        "attachments": [{ "type": "ElasticNetworkInterface", "status": "ATTACHED", "details": [
            {"name": "subnetId", "value": "subnet-1"},
            {"name": "privateIPv4Address", "value": "10.0.0.5"}
        ]}],
        "containers": [],
    })
}

async fn ecs(server: &MockServer) -> EcsBackend {
    EcsBackend::builder()
        .endpoint_url(server.uri())
        .region("us-east-1")
        .credentials(Credentials::new("test", "test", None, None, "flame-reliability"))
        .task_metadata_uri(None)
        .cluster("rel")
        .task_definition("rel:1")
        .container_name("app")
        .fargate()
        .subnets(["subnet-1"])
        .poll(PollSettings {
            describe_min: Duration::from_millis(20),
            describe_max: Duration::from_millis(100),
        })
        .retry(RetrySettings {
            max_attempts: 3,
            initial_backoff: Duration::from_millis(10),
            max_backoff: Duration::from_millis(40),
            attempt_timeout: Duration::from_secs(2),
            connect_timeout: Duration::from_secs(1),
        })
        // The private address a fake task reports is never dialled.
        .resolver(|_| Some("http://127.0.0.1:9".into()))
        .build()
        .await
        .unwrap()
}

async fn ecs_count(server: &MockServer, op: &str) -> usize {
    let target = format!("{ECS_TARGET}.{op}");
    server
        .received_requests()
        .await
        .unwrap()
        .iter()
        .filter(|r| {
            r.headers
                .get("x-amz-target")
                .is_some_and(|v| v.as_bytes() == target.as_bytes())
        })
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ecs_throttling_gives_typed_retryable_errors_through_the_pool_and_starts_nothing() {
    let server = MockServer::start().await;
    ecs_op("RunTask")
        .respond_with(ecs_json(
            400,
            json!({"__type": "ThrottlingException", "message": "Rate exceeded"}),
        ))
        .mount(&server)
        .await;
    ecs_op("ListTasks")
        .respond_with(ecs_json(200, json!({"taskArns": []})))
        .mount(&server)
        .await;
    let flame = parent(ecs(&server).await).await;
    let errors = all_fail_typed(&flame, 10, ErrorCode::Backend, true).await;
    pool_is_empty(&flame).await;
    flame.shutdown().await.unwrap();
    let (runs, stops) = (
        ecs_count(&server, "RunTask").await,
        ecs_count(&server, "StopTask").await,
    );
    assert!(runs >= 3, "the SDK retried the throttled RunTask: {runs}");
    assert_eq!(stops, 0, "no task was started, none to stop");
    eprintln!(
        "ecs throttling: {} calls failed typed, {runs} RunTask attempts, nothing started; e.g. {}",
        errors.len(),
        errors[0]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ecs_5xx_after_the_task_started_stops_it_through_the_pool() {
    let server = MockServer::start().await;
    ecs_op("RunTask")
        .respond_with(ecs_json(
            200,
            json!({"tasks": [ecs_task("PROVISIONING")], "failures": []}),
        ))
        .mount(&server)
        .await;
    ecs_op("DescribeTasks")
        .respond_with(ecs_json(
            500,
            json!({"__type": "ServerException", "message": "internal"}),
        ))
        .mount(&server)
        .await;
    ecs_op("StopTask")
        .respond_with(ecs_json(200, json!({"task": ecs_task("RUNNING")})))
        .mount(&server)
        .await;
    ecs_op("ListTasks")
        .respond_with(ecs_json(200, json!({"taskArns": []})))
        .mount(&server)
        .await;
    let flame = parent(ecs(&server).await).await;
    let err = flame
        .call_with(
            RECORD,
            Record::new("ecs-5xx"),
            CallOptions::new().timeout(Duration::from_secs(15)),
        )
        .await
        .unwrap_err();
    assert!(
        matches!(err.code(), ErrorCode::Backend | ErrorCode::SpawnTimeout),
        "{err}"
    );
    pool_is_empty(&flame).await;
    flame.shutdown().await.unwrap();
    let (runs, stops) = (
        ecs_count(&server, "RunTask").await,
        ecs_count(&server, "StopTask").await,
    );
    assert!(runs >= 1);
    assert!(stops >= runs, "{runs} tasks started, {stops} stopped: {err}");
    eprintln!("ecs 5xx after RunTask: {err}; {runs} started, {stops} StopTask");
}
