#![allow(clippy::unwrap_used)]
//! The shared backend conformance suite (`flame_core::testkit::conformance`) against the
//! Kubernetes backend: the fake API server on 127.0.0.1 starts a real flame-http runner for
//! each Pod, configured from the Pod's env, and flips the Pod to Running once it listens; the
//! parent reaches it over HTTP through the address resolver.

mod common;

use common::*;
use flame_backend_k8s::{K8sBackend, K8sConfig, K8sError, K8sErrorKind};
use flame_core::testkit::conformance::{self, Subject};
use flame_core::Backend;
use flame_http::HttpTransport;
use std::sync::Arc;
use std::time::Duration;

#[tokio::test]
async fn k8s_backend_passes_the_conformance_suite() {
    let fake = FakeK8s::start().await;
    let backend: Arc<dyn Backend> = Arc::new(fake.backend(fake.config()));
    let state = fake.state.clone();
    let subject = Subject::new(backend, Arc::new(HttpTransport::new()), |parent: &str| {
        conformance::default_request(APP, parent)
    })
    .boot_timeout(Duration::from_secs(15))
    .leftovers(move |req| {
        // Pods the API still holds for this runner, in any phase.
        let st = state.lock().unwrap();
        let n = st
            .pods
            .values()
            .filter(|p| p["metadata"]["annotations"]["flame.runner"] == req.runner_id.as_str())
            .count();
        Box::pin(async move { n })
    });
    conformance::run_all(&subject).await;
    assert!(fake.pod_names().is_empty(), "{:?}", fake.pod_names());
    assert!(
        fake.invalid().is_empty(),
        "requests the API would refuse: {:?}",
        fake.invalid()
    );
}

#[tokio::test]
async fn engine_errors_are_typed() {
    let prober = HttpTransport::new();
    // Nothing listens: connection refused, retried, then a typed BACKEND error.
    let mut config = kube::Config::new("http://127.0.0.1:9".parse().unwrap());
    config.default_namespace = NS.into();
    config.default_retry = false;
    let refused = K8sBackend::new(
        kube::Client::try_from(config).unwrap(),
        K8sConfig::from_image(IMAGE).retry(fast_retry()),
    )
    .unwrap();
    let mut request = conformance::default_request(APP, "p");
    request.boot_timeout = Duration::from_secs(10);
    conformance::engine_errors_are_typed(&refused, request.clone(), &prober).await;
    let err = refused.spawn(request).await.unwrap_err();
    assert_eq!(K8sError::kind_of(&err), Some(K8sErrorKind::Unavailable), "{err}");
    assert!(err.is_retryable());

    // RBAC refuses: 403 with the API's message.
    let fake = FakeK8s::start().await;
    fake.fault("create", 1, FaultKind::Status(403));
    let backend = fake.backend(fake.config());
    let mut request = conformance::default_request(APP, "p");
    request.boot_timeout = Duration::from_secs(10);
    conformance::engine_errors_are_typed(&backend, request, &prober).await;
    assert!(fake.pod_names().is_empty());
}
