#![allow(clippy::unwrap_used)]
//! A flame parent that runs in a Pod, end to end: the elastic pool starts runner Pods from the
//! parent Pod's own spec through the fake API server, calls reach the stand-in flame-http
//! runners over signed HTTP, a crashed earlier parent's remains are reaped at start, shutdown
//! deletes every runner Pod, and the ownerReference lets the garbage collector delete runners
//! with the parent Pod.

mod common;

use common::*;
use flame_backend_k8s::K8sConfig;
use flame_core::{Flame, Mode, PoolConfig};
use flame_http::HttpExt;
use serde_json::json;
use std::time::Duration;

const BOOT: Duration = Duration::from_secs(15);

fn parent_config() -> K8sConfig {
    K8sConfig::from_parent_pod(PARENT_POD)
        .namespace(NS)
        .runner_port(PORT)
        .delete_grace(Duration::from_secs(2))
        .retry(fast_retry())
}

#[tokio::test]
async fn a_parent_in_a_pod_calls_runner_pods_through_an_elastic_pool() {
    let fake = FakeK8s::start().await;
    fake.insert_parent_pod();
    // What a crashed earlier parent left: a runner Pod that ended (its failsafe fired).
    fake.insert_pod(json!({
        "metadata": { "name": "flame-default-old",
            "labels": { "flame.app": APP, "flame.pool": "default", "flame.parent": "long-gone", "flame.runner": "default-old" },
            "annotations": { "flame.app": APP, "flame.pool": "default", "flame.parent": "long-gone", "flame.runner": "default-old" } },
        "spec": { "containers": [{ "name": "runner", "image": IMAGE }], "restartPolicy": "Never" },
        "status": { "phase": "Succeeded" }
    }));
    let flame = Flame::builder(registry())
        .http()
        .mode(Mode::Parent)
        .app(APP)
        .handle_signals(false)
        .backend(fake.backend(parent_config()))
        .pool(
            "default",
            PoolConfig::default().max(2).max_concurrency(4).boot_timeout(BOOT),
        )
        .start()
        .await
        .unwrap();
    let calls: Vec<_> = (0..6i64)
        .map(|i| {
            let flame = flame.clone();
            tokio::spawn(async move { flame.call(ADD, (i, 40)).await })
        })
        .collect();
    for (i, call) in calls.into_iter().enumerate() {
        assert_eq!(call.await.unwrap().unwrap(), i as i64 + 40);
    }
    fake.wait_for("the leftover to be reaped", Duration::from_secs(20), |st| {
        !st.pods.contains_key("flame-default-old")
    })
    .await;

    let runners: Vec<String> = fake.pod_names().into_iter().filter(|n| n != PARENT_POD).collect();
    assert!(!runners.is_empty() && runners.len() <= 2, "{runners:?}");
    for name in &runners {
        let pod = fake.pod(name).unwrap();
        assert_eq!(pod["metadata"]["ownerReferences"][0]["uid"], PARENT_UID);
        assert_eq!(pod["metadata"]["annotations"]["flame.parent"], flame.parent_id());
        assert_eq!(pod["metadata"]["labels"]["flame.app"], APP);
        assert_eq!(pod["spec"]["serviceAccountName"], "shop");
        let env = pod["spec"]["containers"][0]["env"].as_array().unwrap();
        let value = |k: &str| env.iter().find(|e| e["name"] == k).map(|e| e["value"].clone());
        assert_eq!(value("FLAME_MODE"), Some(json!("runner")));
        assert_eq!(value("FLAME_PARENT_ID"), Some(json!(flame.parent_id())));
        assert_eq!(value("FLAME_LISTEN"), Some(json!("0.0.0.0:8080")));
    }

    flame.shutdown().await.unwrap();
    fake.wait_for(
        "shutdown to delete every runner Pod",
        Duration::from_secs(20),
        |st| st.pods.keys().all(|n| n == PARENT_POD),
    )
    .await;
    assert!(fake.invalid().is_empty(), "{:?}", fake.invalid());
}

#[tokio::test]
async fn deleting_the_parent_pod_deletes_its_runner_pods() {
    let fake = FakeK8s::start().await;
    fake.insert_parent_pod();
    let flame = Flame::builder(registry())
        .http()
        .mode(Mode::Parent)
        .app(APP)
        .handle_signals(false)
        .backend(fake.backend(parent_config()))
        .pool("default", PoolConfig::default().min(1).max(1).boot_timeout(BOOT))
        .start()
        .await
        .unwrap();
    assert_eq!(flame.call(ADD, (1, 2)).await.unwrap(), 3);
    assert_eq!(fake.pod_names().len(), 2, "{:?}", fake.pod_names());
    // The parent Pod goes (its Deployment scaled down; it was evicted): Kubernetes' garbage
    // collector follows the runners' ownerReference to it.
    fake.state.lock().unwrap().remove(PARENT_POD);
    assert!(fake.pod_names().is_empty(), "{:?}", fake.pod_names());
    flame.shutdown().await.unwrap();
}
