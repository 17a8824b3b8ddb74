#![allow(clippy::unwrap_used)]
//! The shared backend conformance suite (`flame_core::testkit::conformance`) against the Fly
//! backend: the fake Machines API on 127.0.0.1 boots a real flame-http runner per machine
//! from the machine's env, and the parent reaches it over HTTP.

mod common;

use common::*;
use flame_backend_fly::{metadata, FlyBackend, FlyConfig, RetryPolicy};
use flame_core::testkit::conformance::{self, Subject};
use flame_core::Backend;
use flame_http::HttpTransport;
use serde_json::json;
use std::sync::Arc;
use std::time::Duration;
use wiremock::matchers::{method, path};
use wiremock::{Mock, ResponseTemplate};

#[tokio::test]
async fn fly_backend_passes_the_conformance_suite() {
    let fake = FakeFly::start_http().await;
    let backend: Arc<dyn Backend> = Arc::new(fake.backend(fake.config()));
    let state = fake.state.clone();
    let subject = Subject::new(backend, Arc::new(HttpTransport::new()), |parent: &str| {
        conformance::default_request(APP, parent)
    })
    .boot_timeout(Duration::from_secs(10))
    .leftovers(move |req| {
        // Machines Fly still holds for this runner (any state but destroyed).
        let st = state.lock().unwrap();
        let n = st
            .machines
            .values()
            .filter(|m| m["config"]["metadata"][metadata::RUNNER] == json!(req.runner_id))
            .filter(|m| m["state"] != "destroyed")
            .count();
        Box::pin(async move { n })
    });
    conformance::run_all(&subject).await;
    assert!(fake.machine_ids().is_empty(), "{:?}", fake.machine_ids());
    assert!(fake.unmatched().is_empty(), "{:?}", fake.unmatched());
}

#[tokio::test]
async fn engine_errors_are_typed() {
    let fake = FakeFly::start_http().await;
    let prober = HttpTransport::new();
    // Nothing listens: connection refused, retried, then a typed BACKEND error.
    let refused = FlyBackend::new(
        FlyConfig::new(APP, IMAGE, TOKEN)
            .api_url("http://127.0.0.1:9")
            .retry(RetryPolicy {
                max_retries: 1,
                ..fast_retry()
            }),
    )
    .unwrap();
    let mut request = conformance::default_request(APP, "p");
    request.boot_timeout = Duration::from_secs(5);
    conformance::engine_errors_are_typed(&refused, request, &prober).await;

    // A token Fly rejects.
    Mock::given(method("POST"))
        .and(path(format!("/v1/apps/{APP}/machines")))
        .respond_with(ResponseTemplate::new(401).set_body_json(json!({ "error": "unauthorized" })))
        .with_priority(1)
        .mount(&fake.server)
        .await;
    let backend = fake.backend(fake.config());
    let mut request = conformance::default_request(APP, "p");
    request.boot_timeout = Duration::from_secs(5);
    conformance::engine_errors_are_typed(&backend, request, &prober).await;
    assert!(fake.machine_ids().is_empty());
}
