//! The shared backend conformance suite (`flame_core::testkit::conformance`) against moto:
//! real flame-http runners on 127.0.0.1 stand in for the tasks' containers (see
//! `common::tasks`), so spawn → ping → invoke → terminate → reap run over real HTTP while the
//! ECS API is moto's. moto's private 10.x addresses are never contacted.
#![allow(clippy::unwrap_used)]

mod common;

use common::tasks::TaskRunners;
use common::*;
use flame_core::testkit::conformance::{self, Subject};
use flame_core::Backend;
use std::sync::Arc;
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn moto_backend_passes_the_conformance_suite() {
    if !moto_available().await {
        return;
    }
    let world = MotoWorld::new("conformance").await;
    let runners = TaskRunners::start(&world);
    let backend = world
        .builder()
        .resolver(runners.resolver())
        .build()
        .await
        .unwrap();
    let backend: Arc<dyn Backend> = Arc::new(backend);
    let client = world.client.clone();
    let cluster = world.cluster.clone();
    let subject = Subject::new(backend, runners.transport(), |parent_id: &str| {
        conformance::default_request("conformance", parent_id)
    })
    .boot_timeout(Duration::from_secs(15))
    .leftovers(move |req| {
        // Tasks of this runner that ECS still wants RUNNING.
        let client = client.clone();
        let cluster = cluster.clone();
        let runner_id = req.runner_id.clone();
        Box::pin(async move {
            let arns = client
                .list_tasks()
                .cluster(&cluster)
                .desired_status(aws_sdk_ecs::types::DesiredStatus::Running)
                .send()
                .await
                .unwrap()
                .task_arns()
                .to_vec();
            if arns.is_empty() {
                return 0;
            }
            let out = client
                .describe_tasks()
                .cluster(&cluster)
                .set_tasks(Some(arns))
                .include(aws_sdk_ecs::types::TaskField::Tags)
                .send()
                .await
                .unwrap();
            out.tasks()
                .iter()
                .filter(|t| t.desired_status() == Some("RUNNING"))
                .filter(|t| {
                    t.tags().iter().any(|tag| {
                        tag.key() == Some("flame.runner") && tag.value() == Some(runner_id.as_str())
                    })
                })
                .count()
        })
    });
    conformance::run_all(&subject).await;
    assert!(
        !runners.started.lock().unwrap().is_empty(),
        "runners really started"
    );
    assert!(
        world.running_tasks().await.is_empty(),
        "nothing left in the cluster"
    );
}

#[tokio::test]
async fn moto_engine_errors_are_typed() {
    if !moto_available().await {
        return;
    }
    let world = MotoWorld::new("refusing").await;
    let runners = Runners::new();
    // A task definition that does not exist: ECS refuses RunTask.
    let failing = world
        .builder()
        .task_definition("flame-no-such-family:1")
        .resolver(runners.resolver())
        .build()
        .await
        .unwrap();
    let req = conformance::default_request("refusing", "p");
    conformance::engine_errors_are_typed(&failing, req, &runners.transport).await;
    // And a dead endpoint (nothing listens): retried, then a typed error.
    let dead = flame_backend_ecs::EcsBackend::builder()
        .endpoint_url("http://127.0.0.1:9")
        .region(REGION)
        .credentials(flame_backend_ecs::aws::Credentials::new(
            "t", "t", None, None, "t",
        ))
        .task_metadata_uri(None)
        .cluster("c")
        .task_definition("td:1")
        .container_name("app")
        .retry(fast_retry())
        .build()
        .await
        .unwrap();
    let mut req = conformance::default_request("refusing", "p");
    req.boot_timeout = Duration::from_secs(5);
    conformance::engine_errors_are_typed(&dead, req, &runners.transport).await;
    assert!(world.running_tasks().await.is_empty());
}
