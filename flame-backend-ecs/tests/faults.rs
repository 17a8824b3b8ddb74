//! ECS API faults from a wiremock server shaped like the ECS JSON 1.1 API (no engine needed):
//! throttling, 5xx until the retries give up, RunTask `failures[]`, truncated replies, tasks
//! that stop during boot. Each ends in a typed error with nothing left running: where a task
//! had started, a StopTask for it was sent before spawn returned.
#![allow(clippy::unwrap_used)]

mod common;

use common::mock::{self, op, TASK_ARN};
use common::*;
use flame_backend_ecs::{EcsError, EcsErrorKind};
use flame_core::{Backend, ErrorCode, RunnerState};
use std::time::Duration;
use wiremock::{MockServer, ResponseTemplate};

const BOOT: Duration = Duration::from_secs(10);

fn req() -> flame_core::SpawnRequest {
    request("faults", "parent-f", BOOT)
}

#[tokio::test]
async fn throttling_then_success() {
    let server = MockServer::start().await;
    op("RunTask")
        .respond_with(mock::error(400, "ThrottlingException", "Rate exceeded"))
        .up_to_n_times(2)
        .with_priority(1)
        .mount(&server)
        .await;
    op("RunTask")
        .respond_with(mock::run_task_ok())
        .with_priority(2)
        .mount(&server)
        .await;
    op("DescribeTasks")
        .respond_with(mock::error(400, "ThrottlingException", "Rate exceeded"))
        .up_to_n_times(1)
        .with_priority(1)
        .mount(&server)
        .await;
    op("DescribeTasks")
        .respond_with(mock::described(mock::task(
            "RUNNING",
            "RUNNING",
            Some("10.0.0.5"),
        )))
        .with_priority(2)
        .mount(&server)
        .await;
    let runners = Runners::new();
    let backend = mock::backend(&server, &runners).await;
    let handle = start(&backend, req(), &runners.transport).await.unwrap();
    assert_eq!(handle.backend_id, TASK_ARN);
    assert_eq!(add(&runners.transport, &handle.endpoint, 20, 22).await, 42);
    assert_eq!(
        mock::count(&server, "RunTask").await,
        3,
        "two throttled attempts, then one that worked"
    );
    assert_eq!(mock::count(&server, "DescribeTasks").await, 2);
    assert_eq!(mock::count(&server, "StopTask").await, 0);
    // The retried RunTask carried the same idempotency token every time.
    let tokens: Vec<_> = mock::bodies(&server, "RunTask")
        .await
        .iter()
        .map(|b| b["clientToken"].as_str().unwrap().to_owned())
        .collect();
    assert!(tokens.windows(2).all(|w| w[0] == w[1]), "{tokens:?}");
}

#[tokio::test]
async fn throttling_until_give_up_is_a_retryable_typed_error() {
    let server = MockServer::start().await;
    op("RunTask")
        .respond_with(mock::error(400, "ThrottlingException", "Rate exceeded"))
        .mount(&server)
        .await;
    let runners = Runners::new();
    let backend = mock::backend(&server, &runners).await;
    let err = start(&backend, req(), &runners.transport).await.unwrap_err();
    assert_eq!(EcsError::kind_of(&err), Some(EcsErrorKind::Throttled), "{err}");
    assert_eq!(err.code(), ErrorCode::Backend);
    assert!(err.is_retryable());
    assert_eq!(mock::count(&server, "RunTask").await, 3, "max_attempts");
    // A throttled RunTask started nothing: no clean-up calls.
    assert_eq!(mock::count(&server, "StopTask").await, 0);
}

#[tokio::test]
async fn server_errors_until_give_up() {
    let server = MockServer::start().await;
    op("RunTask")
        .respond_with(mock::error(500, "ServerException", "Service unavailable"))
        .mount(&server)
        .await;
    op("ListTasks")
        .respond_with(mock::json(200, serde_json::json!({ "taskArns": [] })))
        .mount(&server)
        .await;
    let runners = Runners::new();
    let backend = mock::backend(&server, &runners).await;
    let err = start(&backend, req(), &runners.transport).await.unwrap_err();
    assert_eq!(EcsError::kind_of(&err), Some(EcsErrorKind::Unavailable), "{err}");
    assert!(err.is_retryable());
    assert!(err.message().contains("500"), "{err}");
    assert_eq!(mock::count(&server, "RunTask").await, 3);
    // The outcome of a 5xx RunTask is unknown: the backend looked for a task of this runner.
    let lists = mock::bodies(&server, "ListTasks").await;
    assert_eq!(lists.len(), 1);
    assert_eq!(lists[0]["startedBy"], "flame-faults");
    assert_eq!(mock::count(&server, "StopTask").await, 0);
}

#[tokio::test]
async fn run_task_failures_are_typed_capacity_agent_and_other() {
    for (reason, kind, retryable) in [
        ("RESOURCE:MEMORY", EcsErrorKind::Capacity, true),
        (
            "Capacity is unavailable at this time",
            EcsErrorKind::Capacity,
            true,
        ),
        ("AGENT", EcsErrorKind::Agent, true),
        ("MISSING", EcsErrorKind::RunTaskFailed, false),
    ] {
        let server = MockServer::start().await;
        op("RunTask")
            .respond_with(mock::json(
                200,
                serde_json::json!({
                    "tasks": [],
                    "failures": [{ "arn": "arn:aws:ecs:us-east-1:123456789012:container-instance/x", "reason": reason, "detail": "no room" }]
                }),
            ))
            .mount(&server)
            .await;
        let runners = Runners::new();
        let backend = mock::backend(&server, &runners).await;
        let err = start(&backend, req(), &runners.transport).await.unwrap_err();
        assert_eq!(EcsError::kind_of(&err), Some(kind), "{reason}: {err}");
        assert_eq!(err.is_retryable(), retryable, "{reason}");
        assert_eq!(EcsError::of(&err).unwrap().ecs_code.as_deref(), Some(reason));
        assert!(
            err.message().contains(reason) && err.message().contains("no room"),
            "{err}"
        );
        assert_eq!(
            mock::count(&server, "RunTask").await,
            1,
            "a failures[] reply is not retried"
        );
        assert_eq!(mock::count(&server, "DescribeTasks").await, 0);
        assert_eq!(mock::count(&server, "StopTask").await, 0, "nothing started");
    }
}

#[tokio::test]
async fn truncated_run_task_reply_is_malformed_and_the_task_is_found_and_stopped() {
    let server = MockServer::start().await;
    let full = serde_json::json!({ "tasks": [mock::task("PROVISIONING", "RUNNING", None)], "failures": [] })
        .to_string();
    op("RunTask")
        .respond_with(
            ResponseTemplate::new(200)
                .insert_header("content-type", "application/x-amz-json-1.1")
                .set_body_string(&full[..full.len() / 2]),
        )
        .mount(&server)
        .await;
    op("ListTasks")
        .respond_with(mock::json(200, serde_json::json!({ "taskArns": [TASK_ARN] })))
        .mount(&server)
        .await;
    let runners = Runners::new();
    let backend = mock::backend(&server, &runners).await;
    let request = req();
    // The task that did start carries this runner's id in its tags.
    let mut tagged = mock::task("PROVISIONING", "RUNNING", None);
    tagged["tags"] = serde_json::json!([
        { "key": "flame.app", "value": "faults" },
        { "key": "flame.runner", "value": request.runner_id },
    ]);
    op("DescribeTasks")
        .respond_with(mock::described(tagged))
        .mount(&server)
        .await;
    op("StopTask").respond_with(mock::stop_ok()).mount(&server).await;

    let err = start(&backend, request, &runners.transport).await.unwrap_err();
    assert_eq!(
        EcsError::kind_of(&err),
        Some(EcsErrorKind::MalformedReply),
        "{err}"
    );
    assert!(!err.is_retryable());
    assert_eq!(
        mock::count(&server, "RunTask").await,
        1,
        "an unreadable reply is not retried"
    );
    let stops = mock::bodies(&server, "StopTask").await;
    assert_eq!(stops.len(), 1);
    assert_eq!(stops[0]["task"], TASK_ARN);
    assert_eq!(stops[0]["cluster"], "flame-mock");
}

#[tokio::test]
async fn truncated_describe_reply_is_malformed_and_the_task_is_stopped() {
    let server = MockServer::start().await;
    op("RunTask")
        .respond_with(mock::run_task_ok())
        .mount(&server)
        .await;
    op("DescribeTasks")
        .respond_with(
            ResponseTemplate::new(200)
                .insert_header("content-type", "application/x-amz-json-1.1")
                .set_body_string(r#"{"tasks":[{"taskArn":"arn:aws:ecs:us-east-1:1"#),
        )
        .mount(&server)
        .await;
    op("StopTask").respond_with(mock::stop_ok()).mount(&server).await;
    let runners = Runners::new();
    let backend = mock::backend(&server, &runners).await;
    let err = start(&backend, req(), &runners.transport).await.unwrap_err();
    assert_eq!(
        EcsError::kind_of(&err),
        Some(EcsErrorKind::MalformedReply),
        "{err}"
    );
    let stops = mock::bodies(&server, "StopTask").await;
    assert_eq!(stops.len(), 1, "the started task was stopped");
    assert_eq!(stops[0]["task"], TASK_ARN);
    assert!(stops[0]["reason"]
        .as_str()
        .unwrap()
        .starts_with("flame: spawn failed"));
}

#[tokio::test]
async fn describe_server_errors_until_give_up_stop_the_started_task() {
    let server = MockServer::start().await;
    op("RunTask")
        .respond_with(mock::run_task_ok())
        .mount(&server)
        .await;
    op("DescribeTasks")
        .respond_with(mock::error(503, "ServerException", "try later"))
        .mount(&server)
        .await;
    op("StopTask").respond_with(mock::stop_ok()).mount(&server).await;
    let runners = Runners::new();
    let backend = mock::backend(&server, &runners).await;
    let err = start(&backend, req(), &runners.transport).await.unwrap_err();
    assert_eq!(EcsError::kind_of(&err), Some(EcsErrorKind::Unavailable), "{err}");
    assert_eq!(mock::count(&server, "DescribeTasks").await, 3);
    assert_eq!(mock::count(&server, "StopTask").await, 1);
}

#[tokio::test]
async fn boot_waits_through_provisioning_pending_activating() {
    let server = MockServer::start().await;
    op("RunTask")
        .respond_with(mock::run_task_ok())
        .mount(&server)
        .await;
    for (i, state) in ["PROVISIONING", "PENDING", "ACTIVATING"].into_iter().enumerate() {
        op("DescribeTasks")
            .respond_with(mock::described(mock::task(state, "RUNNING", None)))
            .up_to_n_times(1)
            .with_priority(1 + i as u8)
            .mount(&server)
            .await;
    }
    op("DescribeTasks")
        .respond_with(mock::described(mock::task(
            "RUNNING",
            "RUNNING",
            Some("10.0.0.9"),
        )))
        .with_priority(10)
        .mount(&server)
        .await;
    let runners = Runners::new();
    let backend = mock::backend(&server, &runners).await;
    let handle = start(&backend, req(), &runners.transport).await.unwrap();
    assert_eq!(mock::count(&server, "DescribeTasks").await, 4);
    assert_eq!(runners.seen.lock().unwrap()[0].host.as_deref(), Some("10.0.0.9"));
    assert_eq!(backend.status(&handle).await.unwrap(), RunnerState::Running);
}

#[tokio::test]
async fn task_stopping_during_boot_is_typed_and_stopped() {
    let server = MockServer::start().await;
    op("RunTask")
        .respond_with(mock::run_task_ok())
        .mount(&server)
        .await;
    op("DescribeTasks")
        .respond_with(mock::described(mock::task("PENDING", "RUNNING", None)))
        .up_to_n_times(1)
        .with_priority(1)
        .mount(&server)
        .await;
    let mut stopped = mock::task("STOPPED", "STOPPED", None);
    stopped["stopCode"] = "TaskFailedToStart".into();
    stopped["stoppedReason"] = "CannotPullContainerError: pull access denied".into();
    op("DescribeTasks")
        .respond_with(mock::described(stopped))
        .with_priority(2)
        .mount(&server)
        .await;
    op("StopTask").respond_with(mock::stop_ok()).mount(&server).await;
    let runners = Runners::new();
    let backend = mock::backend(&server, &runners).await;
    let err = start(&backend, req(), &runners.transport).await.unwrap_err();
    assert_eq!(
        EcsError::kind_of(&err),
        Some(EcsErrorKind::StoppedDuringBoot),
        "{err}"
    );
    assert!(err.message().contains("CannotPullContainerError"), "{err}");
    assert!(err.message().contains("TaskFailedToStart"), "{err}");
    assert_eq!(mock::count(&server, "StopTask").await, 1);
    assert!(
        runners.seen.lock().unwrap().is_empty(),
        "never resolved: it never ran"
    );
}

#[tokio::test]
async fn slow_reply_times_out_and_is_retried() {
    let server = MockServer::start().await;
    op("RunTask")
        .respond_with(mock::run_task_ok().set_delay(Duration::from_secs(30)))
        .up_to_n_times(1)
        .with_priority(1)
        .mount(&server)
        .await;
    op("RunTask")
        .respond_with(mock::run_task_ok())
        .with_priority(2)
        .mount(&server)
        .await;
    op("DescribeTasks")
        .respond_with(mock::described(mock::task(
            "RUNNING",
            "RUNNING",
            Some("10.0.0.5"),
        )))
        .mount(&server)
        .await;
    let runners = Runners::new();
    let mut retry = fast_retry();
    retry.attempt_timeout = Duration::from_secs(1);
    let backend = mock::builder(&server)
        .retry(retry)
        .resolver(runners.resolver())
        .build()
        .await
        .unwrap();
    let started = std::time::Instant::now();
    start(&backend, req(), &runners.transport).await.unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(8),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(mock::count(&server, "RunTask").await, 2);
}

#[tokio::test]
async fn running_task_without_eni_is_a_config_error_and_stopped() {
    let server = MockServer::start().await;
    op("RunTask")
        .respond_with(mock::run_task_ok())
        .mount(&server)
        .await;
    let mut bridge = mock::task("RUNNING", "RUNNING", None);
    bridge["attachments"] = serde_json::json!([]);
    op("DescribeTasks")
        .respond_with(mock::described(bridge))
        .mount(&server)
        .await;
    op("StopTask").respond_with(mock::stop_ok()).mount(&server).await;
    let runners = Runners::new();
    let backend = mock::backend(&server, &runners).await;
    let err = start(&backend, req(), &runners.transport).await.unwrap_err();
    assert_eq!(EcsError::kind_of(&err), Some(EcsErrorKind::NoAddress), "{err}");
    assert!(err.message().contains("awsvpc"), "{err}");
    assert_eq!(mock::count(&server, "StopTask").await, 1);
}

#[tokio::test]
async fn terminate_of_an_unknown_task_is_ok_and_other_errors_are_not() {
    let server = MockServer::start().await;
    op("StopTask")
        .respond_with(mock::error(
            400,
            "InvalidParameterException",
            "The referenced task was not found.",
        ))
        .mount(&server)
        .await;
    let runners = Runners::new();
    let backend = mock::backend(&server, &runners).await;
    let handle = flame_core::RunnerHandle {
        runner_id: "r".into(),
        backend_id: TASK_ARN.into(),
        endpoint: flame_core::Endpoint::new("mem://x", "r"),
    };
    backend.terminate(&handle).await.unwrap();
    backend.terminate(&handle).await.unwrap();

    let server = MockServer::start().await;
    op("StopTask")
        .respond_with(mock::error(
            400,
            "AccessDeniedException",
            "not allowed to ecs:StopTask",
        ))
        .mount(&server)
        .await;
    let backend = mock::backend(&server, &runners).await;
    let err = backend.terminate(&handle).await.unwrap_err();
    assert_eq!(EcsError::kind_of(&err), Some(EcsErrorKind::Rejected), "{err}");
    assert!(err.message().contains("AccessDeniedException"), "{err}");
}

#[tokio::test]
async fn cancelled_spawn_stops_its_task() {
    let server = MockServer::start().await;
    op("RunTask")
        .respond_with(mock::run_task_ok())
        .mount(&server)
        .await;
    op("DescribeTasks")
        .respond_with(mock::described(mock::task("PENDING", "RUNNING", None)))
        .mount(&server)
        .await;
    op("StopTask").respond_with(mock::stop_ok()).mount(&server).await;
    let runners = Runners::new();
    let backend = mock::backend(&server, &runners).await;
    let spawn = backend.spawn(req());
    // The caller gives up while the task is still PENDING.
    assert!(tokio::time::timeout(Duration::from_millis(300), spawn)
        .await
        .is_err());
    for _ in 0..100 {
        if mock::count(&server, "StopTask").await == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let stops = mock::bodies(&server, "StopTask").await;
    assert_eq!(stops.len(), 1);
    assert_eq!(stops[0]["reason"], "flame: spawn cancelled");
}

#[tokio::test]
async fn defaults_come_from_the_task_metadata_endpoint() {
    use wiremock::matchers::{method, path};
    let server = MockServer::start().await;
    wiremock::Mock::given(method("GET"))
        .and(path("/v4/abc"))
        .respond_with(
            ResponseTemplate::new(200).set_body_json(serde_json::json!({ "Name": "web", "DockerId": "abc" })),
        )
        .mount(&server)
        .await;
    wiremock::Mock::given(method("GET"))
        .and(path("/v4/abc/task"))
        .respond_with(ResponseTemplate::new(200).set_body_json(serde_json::json!({
            "Cluster": "arn:aws:ecs:us-east-1:123456789012:cluster/prod",
            "TaskARN": "arn:aws:ecs:us-east-1:123456789012:task/prod/parent",
            "Family": "media-app",
            "Revision": "42",
            "LaunchType": "FARGATE"
        })))
        .mount(&server)
        .await;
    op("DescribeTasks")
        .respond_with(mock::described(mock::task(
            "RUNNING",
            "RUNNING",
            Some("10.0.0.2"),
        )))
        .mount(&server)
        .await;
    let backend = flame_backend_ecs::EcsBackend::builder()
        .endpoint_url(server.uri())
        .region(REGION)
        .credentials(flame_backend_ecs::aws::Credentials::new(
            "t", "t", None, None, "t",
        ))
        .task_metadata_uri(Some(format!("{}/v4/abc", server.uri())))
        .build()
        .await
        .unwrap();
    let s = backend.settings();
    assert_eq!(s.cluster, "arn:aws:ecs:us-east-1:123456789012:cluster/prod");
    assert_eq!(s.task_definition, "media-app:42");
    assert_eq!(s.container_name.as_deref(), Some("web"));
    assert_eq!(s.launch, flame_backend_ecs::Launch::LaunchType("FARGATE".into()));
    assert_eq!(s.subnets, ["subnet-1"]);
    let own = mock::bodies(&server, "DescribeTasks").await;
    assert_eq!(
        own[0]["tasks"][0],
        "arn:aws:ecs:us-east-1:123456789012:task/prod/parent"
    );

    // Off ECS with nothing configured: a typed config error naming what is missing.
    let err = flame_backend_ecs::EcsBackend::builder()
        .endpoint_url(server.uri())
        .region(REGION)
        .credentials(flame_backend_ecs::aws::Credentials::new(
            "t", "t", None, None, "t",
        ))
        .task_metadata_uri(None)
        .build()
        .await
        .unwrap_err();
    assert_eq!(err.code(), ErrorCode::Config);
    assert!(err.message().contains("cluster"), "{err}");
}
