#![allow(clippy::unwrap_used)]
//! The Kubernetes backend against the fake API server on 127.0.0.1: the Pod it creates,
//! field by field; boot driven by the watch (bookmarks, a cut stream, an expired
//! resourceVersion); every Pod failure (ImagePullBackOff, Unschedulable past boot_timeout,
//! OOMKilled, a missing Secret, deleted during boot, stuck, a runner that never answers, a
//! dropped spawn); every API failure (409, 422, 403, 429, 5xx, timeouts, a lost reply);
//! terminate, status and reap. Real flame-http runners stand in for the Pods.

mod common;

use common::*;
use flame_backend_k8s::{K8sConfig, K8sError, K8sErrorKind, PodSettings};
use flame_core::backend::ReapScope;
use flame_core::{codec, Backend, Endpoint, ErrorCode, Invocation, RunnerState, Transport};
use flame_http::HttpTransport;
use serde_json::{json, Value};
use std::sync::Arc;
use std::time::{Duration, Instant};

const BOOT: Duration = Duration::from_secs(15);

fn http() -> Arc<HttpTransport> {
    Arc::new(HttpTransport::new())
}

async fn add(endpoint: &Endpoint, a: i64, b: i64) -> i64 {
    let inv = Invocation {
        service_id: "math".into(),
        method_id: "add".into(),
        args: codec::encode_args(&(a, b)).unwrap().into(),
        deadline: Some(tokio::time::Instant::now() + Duration::from_secs(10)),
        idempotency_key: None,
        trace: Default::default(),
        attempt: 1,
        cast: false,
        stream: false,
        limits: Default::default(),
    };
    let text = HttpTransport::new().invoke(endpoint, &inv).await.unwrap();
    serde_json::from_str::<Value>(text.json_text().unwrap()).unwrap()["json"]
        .as_i64()
        .unwrap()
}

fn env_of(pod: &Value) -> Vec<(String, Value)> {
    pod["spec"]["containers"][0]["env"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| (e["name"].as_str().unwrap().to_owned(), e.clone()))
        .collect()
}

fn count(requests: &[String], prefix: &str) -> usize {
    requests.iter().filter(|r| r.starts_with(prefix)).count()
}

// ---- the Pod, field by field -----------------------------------------------------------

#[tokio::test]
async fn a_runner_pod_from_the_parent_pod_matches_the_api_field_by_field() {
    let fake = FakeK8s::start().await;
    fake.insert_parent_pod();
    let config = K8sConfig::from_parent_pod(PARENT_POD)
        .namespace(NS)
        .runner_port(PORT)
        .delete_grace(Duration::from_secs(2))
        .retry(fast_retry())
        .env("EXTRA", "1")
        .pod_settings(
            PodSettings::new()
                .cpu("500m")
                .memory("1Gi")
                .label("team", "media")
                .annotation("example.com/owner", "media"),
        )
        .pool(
            "default",
            PodSettings::new()
                .gpus(1)
                .tolerate_gpus()
                .node_selector("cloud.google.com/gke-accelerator", "nvidia-l4"),
        );
    let backend = fake.backend(config);
    let handle = start(&backend, spawn_request("default-r1", "parent-1", BOOT))
        .await
        .unwrap();
    // The runner got its secret and ids through the Pod's env: a signed call works.
    assert_eq!(add(&handle.endpoint, 20, 22).await, 42);
    assert_eq!(handle.backend_id, "flame-default-r1");

    let pod = &fake.creates()[0];
    let expect = |ptr: &str, want: Value| {
        assert_eq!(pod.pointer(ptr), Some(&want), "{ptr} in {pod:#}");
    };
    expect("/apiVersion", json!("v1"));
    expect("/kind", json!("Pod"));
    expect("/metadata/name", json!("flame-default-r1"));
    expect("/metadata/namespace", json!(NS));
    expect(
        "/metadata/ownerReferences",
        json!([{ "apiVersion": "v1", "kind": "Pod", "name": PARENT_POD, "uid": PARENT_UID,
                 "controller": false, "blockOwnerDeletion": false }]),
    );
    // The parent's labels (a ReplicaSet's pod-template-hash) are not copied: its Deployment
    // must never count runners as its own Pods.
    expect(
        "/metadata/labels",
        json!({ "flame.app": APP, "flame.pool": "default", "flame.parent": "parent-1",
                "flame.runner": "default-r1", "team": "media" }),
    );
    expect(
        "/metadata/annotations",
        json!({ "flame.app": APP, "flame.pool": "default", "flame.parent": "parent-1",
                "flame.runner": "default-r1", "example.com/owner": "media" }),
    );
    expect("/spec/restartPolicy", json!("Never"));
    expect("/spec/activeDeadlineSeconds", json!(86400));
    expect("/spec/terminationGracePeriodSeconds", json!(2));
    expect("/spec/serviceAccountName", json!("shop"));
    expect("/spec/imagePullSecrets", json!([{ "name": "registry-creds" }]));
    expect(
        "/spec/securityContext",
        json!({ "runAsNonRoot": true, "runAsUser": 10001 }),
    );
    expect(
        "/spec/nodeSelector",
        json!({ "kubernetes.io/os": "linux", "cloud.google.com/gke-accelerator": "nvidia-l4" }),
    );
    expect(
        "/spec/tolerations",
        json!([{ "key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule" }]),
    );
    // Only the volume the application container mounts; never the ServiceAccount token.
    expect(
        "/spec/volumes",
        json!([{ "name": "cache", "emptyDir": { "sizeLimit": "1Gi" } }]),
    );
    assert_eq!(
        pod["spec"]["containers"].as_array().unwrap().len(),
        1,
        "no sidecars"
    );
    let c = "/spec/containers/0";
    expect(&format!("{c}/name"), json!("runner"));
    expect(&format!("{c}/image"), json!(IMAGE));
    expect(&format!("{c}/imagePullPolicy"), json!("IfNotPresent"));
    expect(&format!("{c}/command"), json!(["/app/shop"]));
    expect(&format!("{c}/args"), json!(["--serve"]));
    expect(
        &format!("{c}/envFrom"),
        json!([{ "configMapRef": { "name": "shop-config" } }]),
    );
    expect(
        &format!("{c}/ports"),
        json!([{ "name": "flame", "containerPort": 8080, "protocol": "TCP" }]),
    );
    expect(
        &format!("{c}/resources"),
        json!({ "requests": { "cpu": "500m", "memory": "1Gi" },
                "limits": { "memory": "1Gi", "nvidia.com/gpu": "1" } }),
    );
    expect(
        &format!("{c}/volumeMounts"),
        json!([{ "name": "cache", "mountPath": "/cache" }]),
    );
    assert!(
        pod.pointer(&format!("{c}/readinessProbe")).is_none(),
        "the parent's probes are dropped"
    );
    let env = env_of(pod);
    let names: Vec<&str> = env.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(
        names,
        [
            "RUST_LOG",
            "POD_NAME",
            "DATABASE_URL",
            "EXTRA",
            "FLAME_LISTEN",
            "FLAME_MODE",
            "FLAME_PARENT_ID",
            "FLAME_PARENT_TIMEOUT",
            "FLAME_POOL",
            "FLAME_RUNNER_ID",
            "FLAME_SECRET"
        ],
        "the parent's env (its FLAME_MODE=parent dropped), then the runner's"
    );
    let value = |name: &str| env.iter().find(|(n, _)| n == name).unwrap().1.clone();
    assert_eq!(
        value("FLAME_MODE"),
        json!({ "name": "FLAME_MODE", "value": "runner" })
    );
    assert_eq!(
        value("FLAME_LISTEN"),
        json!({ "name": "FLAME_LISTEN", "value": "0.0.0.0:8080" })
    );
    assert_eq!(value("FLAME_SECRET")["value"], "runner-secret-1");
    assert_eq!(value("FLAME_PARENT_ID")["value"], "parent-1");
    assert_eq!(
        value("DATABASE_URL"),
        json!({ "name": "DATABASE_URL", "valueFrom": { "secretKeyRef": { "name": "shop-db", "key": "url" } } })
    );
    assert!(fake.invalid().is_empty(), "{:?}", fake.invalid());
    backend.terminate(&handle).await.unwrap();
}

#[tokio::test]
async fn label_values_are_made_label_safe_and_the_exact_values_kept() {
    let fake = FakeK8s::start().await;
    let backend = fake.backend(fake.config());
    let app = "Shop Service/EU (blue)";
    let parent = format!("parent-{}", "x".repeat(70));
    let mut req = spawn_request("default-r1", &parent, BOOT);
    req.app = app.into();
    req.labels.insert("flame.app".into(), app.into());
    req.labels.insert("flame.parent".into(), parent.clone());
    let handle = start(&backend, req).await.unwrap();
    // The API (the fake validates label values as the real one does) took it.
    assert!(fake.invalid().is_empty(), "{:?}", fake.invalid());
    let pod = fake.pod(&handle.backend_id).unwrap();
    let labels = &pod["metadata"]["labels"];
    assert_eq!(labels["flame.app"], "Shop_Service_EU__blue");
    assert_eq!(labels["flame.parent"].as_str().unwrap().len(), 63);
    assert_eq!(pod["metadata"]["annotations"]["flame.app"], app);
    assert_eq!(pod["metadata"]["annotations"]["flame.parent"], parent.as_str());
    backend.terminate(&handle).await.unwrap();

    // Reap selects by the label but judges by the exact value: a Pod of another app whose
    // label value is the same after shortening is never touched.
    for (name, exact) in [("flame-x-same", app), ("flame-x-other", "Shop Service:EU (blue)")] {
        fake.insert_pod(json!({
            "metadata": { "name": name,
                "labels": { "flame.app": "Shop_Service_EU__blue", "flame.parent": "gone", "flame.runner": name },
                "annotations": { "flame.app": exact, "flame.parent": "gone", "flame.runner": name } },
            "spec": { "containers": [{ "name": "runner", "image": IMAGE }] },
            "status": { "phase": "Failed", "reason": "DeadlineExceeded" }
        }));
    }
    let scope = ReapScope::new(app, "parent-now", http());
    assert_eq!(backend.reap(&scope).await.unwrap(), 1);
    assert!(fake.pod("flame-x-same").is_none());
    assert!(fake.pod("flame-x-other").is_some(), "another app's Pod");
}

// ---- boot: the watch ------------------------------------------------------------------

#[tokio::test]
async fn boot_follows_a_watch_not_a_polling_loop() {
    let fake = FakeK8s::start().await;
    // The Pod is scheduled only once the watch is open: list, watch and events in one order.
    fake.state.lock().unwrap().hold_until_watched = true;
    let backend = fake.backend(fake.config());
    let handle = backend
        .spawn(spawn_request("default-w1", "p", BOOT))
        .await
        .unwrap();
    let requests = fake.requests();
    let pods = format!("/api/v1/namespaces/{NS}/pods");
    assert_eq!(count(&requests, &format!("POST {pods}")), 1, "{requests:#?}");
    assert_eq!(
        count(&requests, &format!("GET {pods}/")),
        0,
        "no GET polling: {requests:#?}"
    );
    // kube's watcher: one list (fieldSelector on the Pod's name), then a watch from the
    // list's resourceVersion, with bookmarks.
    let lists: Vec<_> = requests
        .iter()
        .filter(|r| r.starts_with(&format!("GET {pods}?")) && !r.contains("watch=true"))
        .collect();
    assert_eq!(lists.len(), 1, "{requests:#?}");
    assert!(
        lists[0].contains("fieldSelector=metadata.name%3Dflame-default-w1"),
        "{}",
        lists[0]
    );
    let watches = fake.watches();
    assert_eq!(watches.len(), 1, "{watches:?}");
    let w = &watches[0];
    assert_eq!(w["fieldSelector"], "metadata.name=flame-default-w1");
    assert_eq!(w["allowWatchBookmarks"], "true");
    assert!(w["resourceVersion"].parse::<u64>().unwrap() > 1000);
    // Pending → scheduled → Running: the events the spawn waited on.
    let kinds: Vec<&str> = fake
        .events_of("flame-default-w1")
        .iter()
        .map(|(_, k)| *k)
        .collect();
    assert_eq!(kinds, ["ADDED", "MODIFIED", "MODIFIED"]);
    backend.terminate(&handle).await.unwrap();
}

#[tokio::test]
async fn a_cut_watch_resumes_from_the_last_resource_version() {
    let fake = FakeK8s::start().await;
    {
        let mut st = fake.state.lock().unwrap();
        st.watch_cuts = 1;
        st.hold_until_watched = true;
    }
    let backend = fake.backend(fake.config());
    let handle = backend
        .spawn(spawn_request("default-w2", "p", BOOT))
        .await
        .unwrap();
    // The first watch delivered the "scheduled" event and was cut; the second resumed from
    // that event's resourceVersion and delivered "Running".
    let watches = fake.watches();
    assert!(watches.len() >= 2, "{watches:?}");
    let events = fake.events_of("flame-default-w2");
    let rvs: Vec<u64> = watches
        .iter()
        .map(|w| w["resourceVersion"].parse().unwrap())
        .collect();
    assert_eq!(
        rvs[0], events[0].0,
        "the first watch starts at the list's resourceVersion"
    );
    assert_eq!(
        rvs[1], events[1].0,
        "the second resumes after the last event seen: {rvs:?} {events:?}"
    );
    let lists = fake
        .requests()
        .iter()
        .filter(|r| r.starts_with("GET") && r.contains("limit=500"))
        .count();
    assert_eq!(lists, 1, "a cut watch is resumed, not re-listed");
    backend.terminate(&handle).await.unwrap();
}

#[tokio::test]
async fn an_expired_resource_version_lists_again() {
    let fake = FakeK8s::start().await;
    fake.state.lock().unwrap().watch_expired = 1;
    let backend = fake.backend(fake.config());
    let handle = backend
        .spawn(spawn_request("default-w3", "p", BOOT))
        .await
        .unwrap();
    let lists = fake
        .requests()
        .iter()
        .filter(|r| r.starts_with("GET") && r.contains("limit=500"))
        .count();
    assert_eq!(lists, 2, "410 Expired: a fresh list, then a watch");
    backend.terminate(&handle).await.unwrap();
}

// ---- boot: Pods that fail --------------------------------------------------------------

/// How a failed start deleted its Pod.
enum Deleted {
    /// By spawn, at once (grace 0): the Pod failed before it ran with a Pod IP.
    BySpawn,
    /// By core's readiness probe through `terminate` (the delete grace): the Pod ran, its
    /// runner never became ready.
    ByProbe,
}

async fn failed_spawn(
    fake: &FakeK8s,
    plan: Plan,
    runner: &str,
    boot: Duration,
    deleted: Deleted,
) -> (flame_core::Error, Duration) {
    fake.set_plan(plan);
    let backend = fake.backend(fake.config());
    let started = Instant::now();
    let err = start(&backend, spawn_request(runner, "p", boot))
        .await
        .unwrap_err();
    let took = started.elapsed();
    // The Pod is deleted before the error comes back.
    assert_eq!(fake.pods_of_runner(runner), 0, "{err}");
    let grace = match deleted {
        Deleted::BySpawn => 0,
        Deleted::ByProbe => fake.config().delete_grace.as_secs(),
    };
    let deletes = fake.deletes();
    assert!(
        deletes
            .iter()
            .any(|(n, o)| n == &flame_backend_k8s::pod_name(runner) && o["gracePeriodSeconds"] == grace),
        "{deletes:?}"
    );
    assert!(fake.invalid().is_empty(), "{:?}", fake.invalid());
    assert!(
        !format!("{err:?}").contains("runner-secret-1"),
        "the secret leaked: {err:?}"
    );
    (err, took)
}

#[tokio::test]
async fn image_pull_backoff_fails_at_once_with_the_pods_reason_and_message() {
    let fake = FakeK8s::start().await;
    let (err, took) = failed_spawn(&fake, Plan::ImagePull, "default-f1", BOOT, Deleted::BySpawn).await;
    let k = k8s(&err);
    assert_eq!(k.kind, K8sErrorKind::ImagePull, "{err}");
    assert_eq!(k.reason.as_deref(), Some("ImagePullBackOff"));
    assert_eq!(err.code(), ErrorCode::Backend);
    assert!(!err.is_retryable());
    assert!(
        err.message()
            .contains(&format!("Back-off pulling image \"{IMAGE}\"")),
        "{err}"
    );
    assert!(
        took < Duration::from_secs(5),
        "no need to wait for the boot timeout: {took:?}"
    );
}

#[tokio::test]
async fn unschedulable_past_the_boot_timeout_is_a_spawn_timeout_with_the_schedulers_message() {
    let fake = FakeK8s::start().await;
    fake.state.lock().unwrap().bookmark_every = Duration::from_millis(100);
    let boot = Duration::from_millis(1500);
    let msg = "0/3 nodes are available: 3 Insufficient nvidia.com/gpu. preemption: 0/3 nodes are available";
    let (err, took) = failed_spawn(
        &fake,
        Plan::Unschedulable(msg),
        "default-f2",
        boot,
        Deleted::BySpawn,
    )
    .await;
    assert_eq!(
        K8sError::kind_of(&err),
        Some(K8sErrorKind::Unschedulable),
        "{err}"
    );
    assert_eq!(err.code(), ErrorCode::SpawnTimeout);
    assert!(err.is_retryable());
    assert!(err.message().contains("Insufficient nvidia.com/gpu"), "{err}");
    // It waited for the scheduler most of the boot timeout (spawn leaves a little of it to
    // delete the Pod), and not much longer.
    assert!(
        took >= boot * 3 / 4 && took < boot + Duration::from_secs(10),
        "{took:?}"
    );
    // One watch the whole time, with bookmarks flowing.
    assert!(fake.state.lock().unwrap().bookmarks_sent >= 3);
    assert_eq!(fake.watches().len(), 1, "{:?}", fake.watches());
}

#[tokio::test]
async fn bookmarks_move_the_watch_forward() {
    let fake = FakeK8s::start().await;
    fake.state.lock().unwrap().bookmark_every = Duration::from_millis(100);
    fake.set_plan(Plan::Unschedulable(
        "0/1 nodes are available: 1 node(s) had untolerated taint",
    ));
    let backend = fake.backend(fake.config());
    let spawn = tokio::spawn(async move {
        backend
            .spawn(spawn_request("default-b1", "p", Duration::from_secs(4)))
            .await
    });
    fake.wait_for("the watch", Duration::from_secs(10), |st| st.watches.len() == 1)
        .await;
    // Other objects change: the resourceVersion moves on past the Pod's last event, and only
    // bookmarks tell the watch.
    fake.insert_pod(json!({ "metadata": { "name": "unrelated" },
        "spec": { "containers": [{ "name": "app", "image": "nginx" }] } }));
    let moved_to = fake.state.lock().unwrap().rv;
    fake.wait_for("a bookmark past it", Duration::from_secs(10), |st| {
        st.last_bookmark_rv >= moved_to
    })
    .await;
    fake.cut_watches_now();
    fake.wait_for("the watch to resume", Duration::from_secs(10), |st| {
        st.watches.len() == 2
    })
    .await;
    let resumed: u64 = fake.watches()[1]["resourceVersion"].parse().unwrap();
    let pod_last = fake.events_of("flame-default-b1").last().unwrap().0;
    assert!(pod_last < moved_to, "{pod_last} {moved_to}");
    assert!(
        resumed >= moved_to,
        "resumed from the bookmark ({resumed}), not the Pod's last event ({pod_last})"
    );
    let err = spawn.await.unwrap().unwrap_err();
    assert_eq!(
        K8sError::kind_of(&err),
        Some(K8sErrorKind::Unschedulable),
        "{err}"
    );
}

/// A Pod that runs (spawn placed it) and is then OOMKilled before its runner answers: core's
/// readiness probe hears from the API that it stopped and fails the start at once — long
/// before the boot timeout — with the Pod's reason and its container's termination
/// (`exit_details`); the Pod is deleted.
#[tokio::test]
async fn an_oom_killed_pod_fails_with_its_reason() {
    let fake = FakeK8s::start().await;
    let (err, took) = failed_spawn(&fake, Plan::OomKilled, "default-f3", BOOT, Deleted::ByProbe).await;
    assert_eq!(err.code(), ErrorCode::Backend, "{err}");
    assert!(!err.is_retryable(), "{err}");
    assert!(err.message().contains("exited before it was ready"), "{err}");
    assert!(err.message().contains("phase Failed"), "{err}");
    assert!(
        err.message().contains("terminated: OOMKilled, exit code 137"),
        "{err}"
    );
    assert!(took < BOOT / 2, "not fast: {took:?}");
    eprintln!("a Pod OOMKilled after it ran failed its start in {took:?}: {err}");
}

#[tokio::test]
async fn a_missing_secret_fails_with_create_container_config_error() {
    let fake = FakeK8s::start().await;
    let (err, _) = failed_spawn(&fake, Plan::ConfigError, "default-f4", BOOT, Deleted::BySpawn).await;
    assert_eq!(
        K8sError::kind_of(&err),
        Some(K8sErrorKind::ContainerConfig),
        "{err}"
    );
    assert!(err.message().contains("secret \"shop-db\" not found"), "{err}");
    assert!(!err.is_retryable());
}

#[tokio::test]
async fn a_pod_stuck_in_container_creating_times_out() {
    let fake = FakeK8s::start().await;
    let boot = Duration::from_millis(1200);
    let (err, took) = failed_spawn(&fake, Plan::Stuck, "default-f5", boot, Deleted::BySpawn).await;
    assert_eq!(K8sError::kind_of(&err), Some(K8sErrorKind::BootTimeout), "{err}");
    assert_eq!(err.code(), ErrorCode::SpawnTimeout);
    assert!(err.message().contains("ContainerCreating"), "{err}");
    assert!(took < boot + Duration::from_secs(10), "{took:?}");
}

#[tokio::test]
async fn a_runner_that_never_answers_times_out() {
    let fake = FakeK8s::start().await;
    let (err, _) = failed_spawn(
        &fake,
        Plan::RunsWithoutRunner,
        "default-f6",
        Duration::from_millis(1500),
        Deleted::ByProbe,
    )
    .await;
    // Core's readiness probe gave up on it.
    assert_eq!(err.code(), ErrorCode::SpawnTimeout, "{err}");
    assert!(err.is_retryable());
    assert!(err.message().contains("did not answer a health ping"), "{err}");
}

#[tokio::test]
async fn a_pod_deleted_during_boot_fails_the_spawn() {
    let fake = FakeK8s::start().await;
    fake.set_plan(Plan::Stuck);
    let backend = fake.backend(fake.config());
    let spawn = tokio::spawn({
        let backend = backend.clone();
        async move { start(&backend, spawn_request("default-f7", "p", BOOT)).await }
    });
    let name = flame_backend_k8s::pod_name("default-f7");
    fake.wait_for("the Pod to be scheduled", Duration::from_secs(10), |st| {
        st.pods
            .get(&name)
            .is_some_and(|p| p["spec"]["nodeName"] == "node-1")
    })
    .await;
    // Someone (kubectl delete, an eviction) deletes it.
    fake.state.lock().unwrap().remove(&name);
    let err = spawn.await.unwrap().unwrap_err();
    let k = k8s(&err);
    assert_eq!(k.kind, K8sErrorKind::PodFailed, "{err}");
    assert_eq!(k.reason.as_deref(), Some("Deleted"));
}

#[tokio::test]
async fn a_dropped_spawn_deletes_its_pod() {
    let fake = FakeK8s::start().await;
    fake.set_plan(Plan::Stuck);
    let backend = fake.backend(fake.config());
    let name = flame_backend_k8s::pod_name("default-f8");
    let mut spawn = Box::pin(backend.spawn(spawn_request("default-f8", "p", BOOT)));
    tokio::select! {
        _ = &mut spawn => panic!("a stuck Pod cannot boot"),
        _ = fake.wait_for("the Pod to exist", Duration::from_secs(10), |st| st.pods.contains_key(&name)) => {}
    }
    drop(spawn);
    fake.wait_for(
        "the dropped spawn's Pod to be deleted",
        Duration::from_secs(10),
        |st| !st.pods.contains_key(&name),
    )
    .await;
}

// ---- the API refuses or fails -----------------------------------------------------------

#[tokio::test]
async fn conflict_invalid_and_forbidden_are_final_with_the_apis_message() {
    let fake = FakeK8s::start().await;
    let backend = fake.backend(fake.config());
    // 409: the name is taken by a Pod that is not ours; it is left alone.
    fake.insert_pod(json!({
        "metadata": { "name": "flame-default-c1" },
        "spec": { "containers": [{ "name": "app", "image": "nginx" }] },
        "status": { "phase": "Running" }
    }));
    let err = start(&backend, spawn_request("default-c1", "p", BOOT))
        .await
        .unwrap_err();
    let k = k8s(&err);
    assert_eq!(
        (k.kind, k.http_status, k.attempts),
        (K8sErrorKind::Conflict, Some(409), 1),
        "{err}"
    );
    assert_eq!(k.reason.as_deref(), Some("AlreadyExists"));
    assert!(
        err.message().contains("pods \"flame-default-c1\" already exists"),
        "{err}"
    );
    assert!(!err.is_retryable());
    assert!(
        fake.pod("flame-default-c1").is_some(),
        "someone else's Pod is never deleted"
    );
    assert!(fake.deletes().is_empty());

    // 422 and 403: one attempt each, the API's own words in the error.
    fake.fault("create", 1, FaultKind::Status(422));
    let err = start(&backend, spawn_request("default-c2", "p", BOOT))
        .await
        .unwrap_err();
    let k = k8s(&err);
    assert_eq!((k.kind, k.attempts), (K8sErrorKind::Invalid, 1), "{err}");
    assert!(
        err.message().contains("Pod \"flame-default-c2\" is invalid"),
        "{err}"
    );
    assert!(!err.is_retryable());

    fake.fault("create", 1, FaultKind::Status(403));
    let err = start(&backend, spawn_request("default-c3", "p", BOOT))
        .await
        .unwrap_err();
    let k = k8s(&err);
    assert_eq!((k.kind, k.attempts), (K8sErrorKind::Forbidden, 1), "{err}");
    assert!(err.message().contains("cannot create resource \"pods\""), "{err}");
    assert!(err.message().contains("Role"), "says what RBAC is missing: {err}");
    assert_eq!(err.code(), ErrorCode::Backend);
    let creates = count(&fake.requests(), "POST");
    assert_eq!(creates, 3, "none of them retried");
    assert_eq!(fake.pod_names(), ["flame-default-c1"]);
}

#[tokio::test]
async fn throttling_and_server_errors_are_retried_with_backoff() {
    let fake = FakeK8s::start().await;
    let backend = fake.backend(fake.config());
    // 429 twice (retryAfterSeconds: 1), then the create goes through.
    fake.fault("create", 2, FaultKind::Status(429));
    let started = Instant::now();
    let h = start(&backend, spawn_request("default-t1", "p", BOOT))
        .await
        .unwrap();
    assert!(
        started.elapsed() >= Duration::from_secs(2),
        "honours retryAfterSeconds"
    );
    assert_eq!(count(&fake.requests(), "POST"), 3);
    backend.terminate(&h).await.unwrap();

    // 500 and 503 once each, then fine.
    fake.fault("create", 1, FaultKind::Status(500));
    fake.fault("create", 1, FaultKind::Status(503));
    let h = start(&backend, spawn_request("default-t2", "p", BOOT))
        .await
        .unwrap();
    assert_eq!(count(&fake.requests(), "POST"), 6);
    // get and delete are retried too.
    fake.fault("get", 1, FaultKind::Status(500));
    assert_eq!(backend.status(&h).await.unwrap(), RunnerState::Running);
    fake.fault("delete", 1, FaultKind::Status(503));
    backend.terminate(&h).await.unwrap();

    // 503 every time: after 1 + max_retries attempts a typed, retryable error; nothing left.
    fake.fault("create", 100, FaultKind::Status(503));
    let err = start(&backend, spawn_request("default-t3", "p", BOOT))
        .await
        .unwrap_err();
    let k = k8s(&err);
    assert_eq!(
        (k.kind, k.http_status, k.attempts),
        (K8sErrorKind::Unavailable, Some(503), 4),
        "{err}"
    );
    assert!(err.is_retryable());
    assert!(err.message().contains("ServiceUnavailable"), "{err}");
    assert_eq!(fake.pods_of_runner("default-t3"), 0);

    // 429 every time (without retryAfterSeconds: plain backoff): Throttled.
    fake.state.lock().unwrap().faults.clear();
    fake.fault(
        "create",
        100,
        FaultKind::StatusWith(
            429,
            "TooManyRequests",
            "Too many requests, please try again later.",
        ),
    );
    let err = start(&backend, spawn_request("default-t4", "p", BOOT))
        .await
        .unwrap_err();
    assert_eq!(K8sError::kind_of(&err), Some(K8sErrorKind::Throttled), "{err}");
    assert!(err.is_retryable());
}

#[tokio::test]
async fn a_lost_create_reply_does_not_make_a_second_pod() {
    let fake = FakeK8s::start().await;
    let backend = fake.backend(fake.config());
    // The API creates the Pod, then the reply is lost (a 500 from a proxy); the retry gets
    // 409 AlreadyExists, finds the Pod carries this runner's id, and boots it.
    fake.fault("create", 1, FaultKind::AfterApply(500));
    let h = start(&backend, spawn_request("default-l1", "p", BOOT))
        .await
        .unwrap();
    assert_eq!(add(&h.endpoint, 1, 2).await, 3);
    assert_eq!(count(&fake.requests(), "POST"), 2);
    assert_eq!(fake.pods_of_runner("default-l1"), 1);
    backend.terminate(&h).await.unwrap();

    // A create that times out: retried; still exactly one Pod.
    let backend = fake.backend(fake.config().request_timeout(Duration::from_millis(300)));
    fake.fault("create", 1, FaultKind::Delay(Duration::from_millis(800)));
    let h = start(&backend, spawn_request("default-l2", "p", BOOT))
        .await
        .unwrap();
    assert_eq!(add(&h.endpoint, 2, 2).await, 4);
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert_eq!(fake.pods_of_runner("default-l2"), 1);
    backend.terminate(&h).await.unwrap();
}

// ---- terminate and status ---------------------------------------------------------------

#[tokio::test]
async fn terminate_deletes_with_a_grace_period_and_is_idempotent() {
    let fake = FakeK8s::start().await;
    let backend = fake.backend(fake.config());
    let h = start(&backend, spawn_request("default-d1", "p", BOOT))
        .await
        .unwrap();
    backend.terminate(&h).await.unwrap();
    let (name, options) = fake.deletes().pop().unwrap();
    assert_eq!(name, h.backend_id);
    assert_eq!(
        options,
        json!({ "gracePeriodSeconds": 2, "propagationPolicy": "Background" })
    );
    // Terminating: the runner drains (SIGTERM), then the Pod goes.
    fake.wait_for("the Pod to go", Duration::from_secs(10), |st| {
        !st.pods.contains_key(&h.backend_id)
    })
    .await;
    assert_eq!(backend.status(&h).await.unwrap(), RunnerState::Stopped);
    assert!(HttpTransport::new().ping(&h.endpoint).await.is_err());
    // Again, and a Pod that never existed: both Ok (404 is done).
    backend.terminate(&h).await.unwrap();
    let mut ghost = h.clone();
    ghost.backend_id = "flame-never-existed".into();
    backend.terminate(&ghost).await.unwrap();
    // A refusal is an error, though.
    fake.fault("delete", 1, FaultKind::Status(403));
    let err = backend.terminate(&ghost).await.unwrap_err();
    assert_eq!(K8sError::kind_of(&err), Some(K8sErrorKind::Forbidden));
}

#[tokio::test]
async fn status_follows_the_pod_phase() {
    let fake = FakeK8s::start().await;
    let backend = fake.backend(fake.config());
    for (name, phase) in [
        ("p-pending", "Pending"),
        ("p-running", "Running"),
        ("p-done", "Succeeded"),
        ("p-failed", "Failed"),
    ] {
        fake.insert_pod(json!({
            "metadata": { "name": name },
            "spec": { "containers": [{ "name": "runner", "image": IMAGE }] },
            "status": { "phase": phase }
        }));
    }
    let state = |name: &str| {
        let backend = backend.clone();
        let h = flame_core::RunnerHandle {
            runner_id: "r".into(),
            backend_id: name.into(),
            endpoint: Endpoint::new("http://127.0.0.1:1", "r"),
        };
        async move { backend.status(&h).await.unwrap() }
    };
    assert_eq!(state("p-pending").await, RunnerState::Booting);
    assert_eq!(state("p-running").await, RunnerState::Running);
    assert_eq!(state("p-done").await, RunnerState::Stopped);
    assert_eq!(state("p-failed").await, RunnerState::Stopped);
    assert_eq!(state("p-missing").await, RunnerState::Stopped);
}

// ---- reap -------------------------------------------------------------------------------

/// Authenticated pings every 200 ms, as a live parent's pool does, until dropped.
struct KeepInTouch(tokio::task::JoinHandle<()>);

impl KeepInTouch {
    fn start(endpoint: Endpoint) -> Self {
        KeepInTouch(tokio::spawn(async move {
            let http = HttpTransport::new();
            loop {
                let _ = http.ping(&endpoint).await;
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }))
    }
}

impl Drop for KeepInTouch {
    fn drop(&mut self) {
        self.0.abort();
    }
}

fn leftover(name: &str, parent: Option<&str>, phase: &str, app: &str) -> Value {
    let mut labels = json!({ "flame.app": app, "flame.pool": "default", "flame.runner": name });
    if let Some(p) = parent {
        labels["flame.parent"] = json!(p);
    }
    json!({
        "metadata": { "name": name, "labels": labels.clone(), "annotations": labels },
        "spec": { "containers": [{ "name": "runner", "image": IMAGE, "ports": [{ "name": "flame", "containerPort": 8080 }] }] },
        "status": { "phase": phase }
    })
}

#[tokio::test]
async fn reap_deletes_only_provably_orphaned_pods() {
    let fake = FakeK8s::start().await;
    fake.state.lock().unwrap().max_page = 2;
    let backend = fake.backend(fake.config());
    // Runners of three parents: A is alive and in touch, B is the reaping parent, C crashed.
    let a = start(&backend, spawn_request("default-a", "parent-a", BOOT))
        .await
        .unwrap();
    let _touch = KeepInTouch::start(a.endpoint.clone());
    let b = start(&backend, spawn_request("default-b", "parent-b", BOOT))
        .await
        .unwrap();
    let c = start(&backend, spawn_request("default-c", "parent-c", BOOT))
        .await
        .unwrap();
    // Remains of crashed parents (stopped Pods), a Pod without a parent (not flame's), one of
    // another app, one already being deleted.
    fake.insert_pod(leftover("flame-gone-1", Some("gone-1"), "Failed", APP));
    fake.insert_pod(leftover("flame-gone-2", Some("gone-2"), "Succeeded", APP));
    fake.insert_pod(leftover("flame-no-parent", None, "Running", APP));
    fake.insert_pod(leftover("flame-other-app", Some("gone-3"), "Failed", "billing"));
    let mut terminating = leftover("flame-terminating", Some("gone-4"), "Running", APP);
    terminating["metadata"]["deletionTimestamp"] = json!("2026-12-01T00:00:00Z");
    fake.insert_pod(terminating);
    let uid_gone_1 = fake.pod("flame-gone-1").unwrap()["metadata"]["uid"].clone();

    // C's parent has been silent past the window (2 s) by the time B reaps; A's pings keep
    // it well inside.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let scope =
        ReapScope::new(APP, "parent-b", http()).windows(Duration::from_secs(2), Duration::from_secs(10));
    let ended = backend.reap(&scope).await.unwrap();
    assert_eq!(ended, 3, "gone-1, gone-2 and C");
    let mut left = fake.pod_names();
    left.sort();
    assert!(left.contains(&a.backend_id), "A's parent is alive: {left:?}");
    assert!(left.contains(&b.backend_id), "B's own: {left:?}");
    assert!(!left.contains(&"flame-gone-1".to_string()), "{left:?}");
    assert!(!left.contains(&"flame-gone-2".to_string()), "{left:?}");
    for kept in ["flame-no-parent", "flame-other-app", "flame-terminating"] {
        assert!(left.contains(&kept.to_string()), "{kept}: {left:?}");
    }
    fake.wait_for("C's Pod to go", Duration::from_secs(10), |st| {
        !st.pods.contains_key(&c.backend_id)
    })
    .await;
    assert_eq!(add(&a.endpoint, 1, 1).await, 2, "A's runner still serves");
    // Stopped remains go at once, and never another Pod that took the name: uid preconditions.
    let deletes = fake.deletes();
    let gone_1 = deletes.iter().find(|(n, _)| n == "flame-gone-1").unwrap();
    assert_eq!(
        gone_1.1,
        json!({ "gracePeriodSeconds": 0, "propagationPolicy": "Background", "preconditions": { "uid": uid_gone_1 } })
    );
    let c_delete = deletes.iter().find(|(n, _)| n == &c.backend_id).unwrap();
    assert_eq!(c_delete.1["gracePeriodSeconds"], 2, "a running orphan drains");
    // The list was paged (2 per page) and selected by the app label.
    let lists: Vec<String> = fake
        .requests()
        .into_iter()
        .filter(|r| r.contains("labelSelector=flame.app%3Dshop"))
        .collect();
    assert!(lists.len() >= 3, "{lists:#?}");
    assert!(lists.iter().any(|r| r.contains("continue=offset-")), "{lists:#?}");
    assert!(fake.invalid().is_empty(), "{:?}", fake.invalid());
    backend.terminate(&a).await.unwrap();
    backend.terminate(&b).await.unwrap();
}
