//! The ECS backend against a real moto_server (DESIGN.md §6): `.ci/setup/20-moto.sh` starts
//! it; tests reach it at `FLAME_MOTO_URL` (default http://127.0.0.1:5000). Each test uses its
//! own cluster. The address resolver maps every task to an in-process runner: moto's private
//! 10.x addresses are never contacted.
#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use flame_backend_ecs::{EcsError, EcsErrorKind, SecretDelivery};
use flame_core::{Backend, ErrorCode, ReapScope, RunnerState};
use std::time::Duration;

const BOOT: Duration = Duration::from_secs(10);

#[tokio::test]
async fn moto_spawn_ping_invoke_status_terminate() {
    if !moto_available().await {
        return;
    }
    let world = MotoWorld::new("basic").await;
    let runners = Runners::new();
    let backend = world
        .builder()
        .resolver(runners.resolver())
        .build()
        .await
        .unwrap();
    assert_eq!(backend.name(), "ecs");

    let req = request("basic", "parent-1", BOOT);
    let handle = start(&backend, req.clone(), &runners.transport).await.unwrap();
    assert_eq!(handle.runner_id, req.runner_id);
    assert!(
        handle.backend_id.starts_with("arn:aws:ecs:"),
        "{}",
        handle.backend_id
    );
    assert!(
        handle.endpoint.url.starts_with("mem://"),
        "{}",
        handle.endpoint.url
    );
    assert_eq!(
        handle.endpoint.secret.as_ref().map(|s| s.expose()),
        Some("s3cret-for-tests")
    );

    // The resolver saw the ENI address moto assigned (never contacted) and the runner port.
    let seen = runners.seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].backend_id, handle.backend_id);
    assert_eq!(seen[0].port, 8080);
    let host = seen[0].host.clone().unwrap();
    assert!(host.parse::<std::net::Ipv4Addr>().unwrap().is_private(), "{host}");

    assert_eq!(add(&runners.transport, &handle.endpoint, 2, 3).await, 5);
    assert_eq!(backend.status(&handle).await.unwrap(), RunnerState::Running);

    backend.terminate(&handle).await.unwrap();
    assert_eq!(backend.status(&handle).await.unwrap(), RunnerState::Stopped);
    let task = world.describe(&handle.backend_id).await;
    assert_eq!(task.desired_status(), Some("STOPPED"));
    assert_eq!(
        task.stopped_reason(),
        Some("flame: runner terminated by its parent")
    );
    assert!(world.running_tasks().await.is_empty());
}

#[tokio::test]
async fn moto_run_task_arguments_as_sent() {
    if !moto_available().await {
        return;
    }
    let world = MotoWorld::new("args").await;
    let runners = Runners::new();
    let backend = world
        .builder()
        .resolver(runners.resolver())
        .command(["/app/media", "--runner"])
        .cpu("1024")
        .memory("2048")
        .runner_port(9000)
        .tag("team", "media")
        .build()
        .await
        .unwrap();
    let mut req = request("args-app", "parent-args", BOOT);
    req.env.insert("USER_SETTING".into(), "forwarded".into());
    let handle = start(&backend, req.clone(), &runners.transport).await.unwrap();

    let task = world.describe(&handle.backend_id).await;
    assert_eq!(task.started_by(), Some("flame-args-app"));
    assert_eq!(task.launch_type().map(|l| l.as_str()), Some("FARGATE"));
    assert!(!task.enable_execute_command());
    assert_eq!(
        task.task_definition_arn()
            .map(|a| a.ends_with(&world.task_definition)),
        Some(true)
    );

    let tags: std::collections::BTreeMap<_, _> = task
        .tags()
        .iter()
        .map(|t| (t.key().unwrap(), t.value().unwrap()))
        .collect();
    assert_eq!(tags["flame.app"], "args-app");
    assert_eq!(tags["flame.pool"], "default");
    assert_eq!(tags["flame.parent"], "parent-args");
    assert_eq!(tags["flame.runner"], req.runner_id.as_str());
    assert_eq!(tags["team"], "media");

    let overrides = task.overrides().unwrap();
    assert_eq!(overrides.cpu(), Some("1024"));
    assert_eq!(overrides.memory(), Some("2048"));
    let container = &overrides.container_overrides()[0];
    assert_eq!(container.name(), Some("app"));
    assert_eq!(container.command(), ["/app/media", "--runner"]);
    let env: std::collections::BTreeMap<_, _> = container
        .environment()
        .iter()
        .map(|kv| (kv.name().unwrap(), kv.value().unwrap()))
        .collect();
    assert_eq!(env["FLAME_MODE"], "runner");
    assert_eq!(env["FLAME_LISTEN"], "0.0.0.0:9000");
    assert_eq!(env["FLAME_PARENT_ID"], "parent-args");
    assert_eq!(env["FLAME_RUNNER_ID"], req.runner_id.as_str());
    assert_eq!(env["USER_SETTING"], "forwarded");
    // The documented caveat: in Overrides mode the secret is visible to DescribeTasks callers.
    assert_eq!(env["FLAME_SECRET"], "s3cret-for-tests");

    // The resolver was told the configured port.
    assert_eq!(runners.seen.lock().unwrap()[0].port, 9000);
    backend.terminate(&handle).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn moto_secret_from_task_definition_stays_out_of_overrides() {
    if !moto_available().await {
        return;
    }
    let world = MotoWorld::new("secret").await;
    // The task definition's `secrets` give the runner this FLAME_SECRET.
    let td_secret = flame_core::Secret::new("from-secrets-manager");
    let runners = common::tasks::TaskRunners::start_with(&world, Some(td_secret.clone()));
    let backend = world
        .builder()
        .resolver(runners.resolver())
        .secret_delivery(SecretDelivery::TaskDefinition)
        .task_definition_secret(td_secret.clone())
        .build()
        .await
        .unwrap();
    let req = request("secret", "p", BOOT);
    let handle = start(&backend, req.clone(), &*runners.transport()).await.unwrap();
    let task = world.describe(&handle.backend_id).await;
    let container = &task.overrides().unwrap().container_overrides()[0];
    let env: Vec<_> = container
        .environment()
        .iter()
        .map(|kv| (kv.name().unwrap(), kv.value().unwrap()))
        .collect();
    assert!(env.iter().any(|(k, _)| *k == "FLAME_MODE"), "{env:?}");
    assert!(!env.iter().any(|(k, _)| *k == "FLAME_SECRET"), "{env:?}");
    let secret_text = td_secret.expose();
    assert!(!env.iter().any(|(_, v)| v.contains(secret_text)), "{env:?}");
    // The parent signs with the task definition's secret, and a real signed call works.
    assert_eq!(
        handle.endpoint.secret.as_ref().map(|s| s.expose()),
        Some(secret_text)
    );
    assert_eq!(
        add(runners.transport().as_ref(), &handle.endpoint, 40, 2).await,
        42
    );
    // Signed with the pool's own (different) secret, the runner refuses.
    let wrong = handle.endpoint.clone().with_secret(req.secret.clone());
    let inv = flame_core::Invocation {
        service_id: "math".into(),
        method_id: "add".into(),
        args: flame_core::codec::encode_args(&(1i64, 1i64)).unwrap().into(),
        deadline: None,
        idempotency_key: None,
        trace: Default::default(),
        attempt: 1,
        cast: false,
        stream: false,
        limits: Default::default(),
    };
    let err = runners.transport().invoke(&wrong, &inv).await.unwrap_err();
    assert_eq!(err.code(), ErrorCode::Unauthorized, "{err}");
    backend.terminate(&handle).await.unwrap();

    // Without a secret to sign with, TaskDefinition delivery is a config error at build time
    // (unless the parent's FLAME_SECRET is set, which this test process does not do).
    if std::env::var("FLAME_SECRET").is_err() {
        let err = world
            .builder()
            .secret_delivery(SecretDelivery::TaskDefinition)
            .build()
            .await
            .unwrap_err();
        assert_eq!(err.code(), ErrorCode::Config);
        assert!(err.message().contains("task_definition_secret"), "{err}");
    }
}

#[tokio::test]
async fn moto_container_name_comes_from_the_task_definition() {
    if !moto_available().await {
        return;
    }
    let single = MotoWorld::new("onecontainer").await;
    let runners = Runners::new();
    let backend = moto_builder()
        .cluster(&single.cluster)
        .task_definition(&single.task_definition)
        .fargate()
        .subnets([single.subnet.clone()])
        .security_groups(["sg-flame-test"])
        .resolver(runners.resolver())
        .build()
        .await
        .unwrap();
    let handle = start(&backend, request("onecontainer", "p", BOOT), &runners.transport)
        .await
        .unwrap();
    let task = single.describe(&handle.backend_id).await;
    assert_eq!(
        task.overrides().unwrap().container_overrides()[0].name(),
        Some("app")
    );
    backend.terminate(&handle).await.unwrap();

    // Two containers and none named: a typed config error, and nothing started.
    let two = MotoWorld::with_containers("twocontainers", &["app", "sidecar"]).await;
    let backend = moto_builder()
        .cluster(&two.cluster)
        .task_definition(&two.task_definition)
        .fargate()
        .subnets([two.subnet.clone()])
        .security_groups(["sg-flame-test"])
        .resolver(runners.resolver())
        .build()
        .await
        .unwrap();
    let err = start(&backend, request("twocontainers", "p", BOOT), &runners.transport)
        .await
        .unwrap_err();
    assert_eq!(err.code(), ErrorCode::Config, "{err}");
    assert_eq!(EcsError::kind_of(&err), Some(EcsErrorKind::Config));
    assert!(err.message().contains("sidecar"), "{err}");
    assert!(two.running_tasks().await.is_empty());
}

/// A task that ECS stops right after it is RUNNING (an essential container exited) was
/// placed, but its runner never answers: core's readiness probe hears from DescribeTasks that
/// it stopped and fails the start at once — long before the boot timeout — with ECS's stopped
/// reason from `exit_details`.
#[tokio::test]
async fn moto_task_stopped_right_after_running_fails_fast_with_its_stop_reason() {
    if !moto_available().await {
        return;
    }
    let world = MotoWorld::new("stopboot").await;
    let runners = Runners::new();
    // The runner never answers, so the probe keeps pinging and asking ECS about the task.
    let backend = world
        .builder()
        .resolver(runners.silent_resolver())
        .build()
        .await
        .unwrap();
    let boot = Duration::from_secs(60);
    let started = std::time::Instant::now();
    let spawn = tokio::spawn({
        let backend = backend.clone();
        let transport = runners.transport.clone();
        let req = request("stopboot", "p", boot);
        async move { start(&backend, req, &transport).await }
    });
    // The backend resolved the task's address: it was RUNNING, spawn has placed it.
    let arn = loop {
        if let Some(address) = runners.seen.lock().unwrap().first() {
            break address.backend_id.clone();
        }
        assert!(!spawn.is_finished(), "the start ended before the task ran");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    // The task dies on its own (an essential container exits): stop it from the side.
    world
        .client
        .stop_task()
        .cluster(&world.cluster)
        .task(&arn)
        .reason("Essential container in task exited")
        .send()
        .await
        .unwrap();
    let err = tokio::time::timeout(boot, spawn)
        .await
        .unwrap()
        .unwrap()
        .unwrap_err();
    let took = started.elapsed();
    assert!(took < boot / 2, "noticed late: {took:?}");
    assert_eq!(err.code(), ErrorCode::Backend, "{err}");
    assert!(!err.is_retryable(), "{err}");
    assert!(err.message().contains("exited before it was ready"), "{err}");
    assert!(err.message().contains(&arn), "{err}");
    assert!(
        err.message().contains("Essential container in task exited"),
        "{err}"
    );
    assert!(!err.to_string().contains("s3cret-for-tests"), "{err}");
    assert!(world.running_tasks().await.is_empty());
    eprintln!("a task stopped after RUNNING failed its start in {took:?}: {err}");
}

#[tokio::test]
async fn moto_boot_timeout_stops_the_task() {
    if !moto_available().await {
        return;
    }
    let world = MotoWorld::new("boottimeout").await;
    let runners = Runners::new();
    // The task runs, but its runner never answers a health ping.
    let backend = world
        .builder()
        .resolver(runners.silent_resolver())
        .build()
        .await
        .unwrap();
    let started = std::time::Instant::now();
    let err = start(
        &backend,
        request("boottimeout", "p", Duration::from_millis(1500)),
        &runners.transport,
    )
    .await
    .unwrap_err();
    let took = started.elapsed();
    assert_eq!(err.code(), ErrorCode::SpawnTimeout, "{err}");
    assert!(err.is_retryable());
    assert!(
        took >= Duration::from_millis(1400) && took < Duration::from_secs(8),
        "{took:?}"
    );
    // Nothing left running: the probe ended the task.
    assert!(world.running_tasks().await.is_empty());
    let arn = runners.seen.lock().unwrap()[0].backend_id.clone();
    let task = world.describe(&arn).await;
    assert_eq!(task.desired_status(), Some("STOPPED"));
    assert_eq!(
        task.stopped_reason(),
        Some("flame: runner terminated by its parent")
    );
}

/// The reap rule on moto: a dead parent's tasks (their runners report a parent silent past
/// the window) are stopped; the reaping parent's own task, a task of another *live* parent of
/// the same app (a replica: it keeps in touch), and another app's task keep running.
#[tokio::test]
async fn moto_reap_stops_only_tasks_of_dead_parents_of_the_app() {
    if !moto_available().await {
        return;
    }
    let world = MotoWorld::new("reap").await;
    let runners = Runners::new();
    let backend = world
        .builder()
        .resolver(runners.resolver())
        .build()
        .await
        .unwrap();
    let app = format!("reap-{}", uuid::Uuid::new_v4().simple());
    let dead1 = start(&backend, request(&app, "dead-parent", BOOT), &runners.transport)
        .await
        .unwrap();
    let dead2 = start(&backend, request(&app, "dead-parent", BOOT), &runners.transport)
        .await
        .unwrap();
    let live = start(&backend, request(&app, "live-parent", BOOT), &runners.transport)
        .await
        .unwrap();
    let replica = start(
        &backend,
        request(&app, "replica-parent", BOOT),
        &runners.transport,
    )
    .await
    .unwrap();
    let other = start(
        &backend,
        request("other-app", "dead-parent", BOOT),
        &runners.transport,
    )
    .await
    .unwrap();
    // The replica's parent keeps in touch with its runner, as a live parent's pool does.
    let in_touch = runners.dispatcher(&replica.backend_id).unwrap();
    let touch = tokio::spawn(async move {
        loop {
            in_touch.note_parent_contact();
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });

    let window = Duration::from_secs(1);
    let scope =
        ReapScope::new(&app, "live-parent", runners.prober()).windows(window, Duration::from_secs(10));
    // The dead parent's silence passes the window.
    tokio::time::sleep(window + Duration::from_millis(500)).await;
    let ended = backend.reap(&scope).await;
    touch.abort();
    assert_eq!(ended.unwrap(), 2);
    assert_eq!(backend.status(&dead1).await.unwrap(), RunnerState::Stopped);
    assert_eq!(backend.status(&dead2).await.unwrap(), RunnerState::Stopped);
    assert_eq!(backend.status(&live).await.unwrap(), RunnerState::Running);
    assert_eq!(backend.status(&replica).await.unwrap(), RunnerState::Running);
    assert_eq!(backend.status(&other).await.unwrap(), RunnerState::Running);
    let reason = world
        .describe(&dead1.backend_id)
        .await
        .stopped_reason()
        .unwrap()
        .to_owned();
    assert!(
        reason.starts_with("flame: reaped, parent dead-parent is gone: its parent has been silent for"),
        "{reason}"
    );
    // Nothing more to reap: the replica's runner is in touch again.
    runners
        .dispatcher(&replica.backend_id)
        .unwrap()
        .note_parent_contact();
    assert_eq!(backend.reap(&scope).await.unwrap(), 0);

    backend.terminate(&live).await.unwrap();
    backend.terminate(&replica).await.unwrap();
    backend.terminate(&other).await.unwrap();
    assert!(world.running_tasks().await.is_empty());
}

#[tokio::test]
async fn moto_terminate_twice_is_ok() {
    if !moto_available().await {
        return;
    }
    let world = MotoWorld::new("twice").await;
    let runners = Runners::new();
    let backend = world
        .builder()
        .resolver(runners.resolver())
        .build()
        .await
        .unwrap();
    let handle = start(&backend, request("twice", "p", BOOT), &runners.transport)
        .await
        .unwrap();
    backend.terminate(&handle).await.unwrap();
    backend.terminate(&handle).await.unwrap();
    assert_eq!(backend.status(&handle).await.unwrap(), RunnerState::Stopped);
    assert!(world.running_tasks().await.is_empty());
}

#[tokio::test]
async fn moto_many_concurrent_spawns_each_get_their_own_task() {
    if !moto_available().await {
        return;
    }
    let world = MotoWorld::new("concurrent").await;
    let runners = Runners::new();
    let backend = world
        .builder()
        .resolver(runners.resolver())
        .build()
        .await
        .unwrap();
    let spawns: Vec<_> = (0..8)
        .map(|_| {
            let backend = backend.clone();
            let transport = runners.transport.clone();
            let req = request("concurrent", "p", BOOT);
            tokio::spawn(async move { start(&backend, req, &transport).await })
        })
        .collect();
    let mut handles = Vec::new();
    for s in spawns {
        handles.push(s.await.unwrap().unwrap());
    }
    let mut arns: Vec<_> = handles.iter().map(|h| h.backend_id.clone()).collect();
    arns.sort();
    arns.dedup();
    assert_eq!(arns.len(), 8);
    assert_eq!(world.running_tasks().await.len(), 8);
    for (i, h) in handles.iter().enumerate() {
        assert_eq!(
            add(&runners.transport, &h.endpoint, i as i64, 1).await,
            i as i64 + 1
        );
        backend.terminate(h).await.unwrap();
    }
    assert!(world.running_tasks().await.is_empty());
}

#[tokio::test]
async fn moto_unknown_cluster_is_rejected_and_starts_nothing() {
    if !moto_available().await {
        return;
    }
    let world = MotoWorld::new("nocluster").await;
    let runners = Runners::new();
    let backend = world
        .builder()
        .cluster(format!("does-not-exist-{}", uuid::Uuid::new_v4().simple()))
        .resolver(runners.resolver())
        .build()
        .await
        .unwrap();
    let err = start(&backend, request("nocluster", "p", BOOT), &runners.transport)
        .await
        .unwrap_err();
    assert_eq!(EcsError::kind_of(&err), Some(EcsErrorKind::Rejected), "{err}");
    assert!(!err.is_retryable());
    assert_eq!(
        EcsError::of(&err).and_then(|e| e.ecs_code.as_deref()),
        Some("ClusterNotFoundException")
    );
    assert!(runners.seen.lock().unwrap().is_empty());
}
