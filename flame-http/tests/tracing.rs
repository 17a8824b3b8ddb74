//! One trace across parent and runner over real HTTP (issue 14): the parent's `flame.call`
//! span, its `flame.attempt` child, and the runner's `flame.invoke` span share a trace id, the
//! runner's span is the attempt's child, and nobody set `traceparent` by hand (flame-core's
//! `opentelemetry` feature injects and extracts it). The subscriber is process-wide, so this
//! binary holds this one test.
#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use flame_core::{Flame, Mode, StaticPool};
use flame_http::HttpTransport;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider};
use std::sync::Arc;
use tracing_subscriber::layer::SubscriberExt;

#[tokio::test]
async fn parent_call_and_runner_invocation_share_one_trace() {
    let exporter = InMemorySpanExporter::default();
    let provider = SdkTracerProvider::builder()
        .with_simple_exporter(exporter.clone())
        .build();
    let subscriber = tracing_subscriber::registry()
        .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("flame-test")));
    tracing::subscriber::set_global_default(subscriber).unwrap();

    let server = start(Some(SECRET)).await;
    let flame = Flame::builder(flame_core::Registry::new())
        .mode(Mode::Parent)
        .transport(Arc::new(HttpTransport::new()))
        .with_pool(Arc::new(StaticPool::new("default", vec![server.endpoint()], 4)))
        .handle_signals(false)
        .build()
        .unwrap();
    assert_eq!(flame.call(ADD, (2, 3)).await.unwrap(), 5);
    // The handler saw a W3C traceparent that nobody set by hand.
    let seen = flame.call(TRACE, ()).await.unwrap();
    assert!(
        seen.as_deref().is_some_and(|tp| tp.starts_with("00-")),
        "{seen:?}"
    );
    provider.force_flush().unwrap();

    let spans = exporter.get_finished_spans().unwrap();
    let named = |name: &str| -> Vec<_> { spans.iter().filter(|s| s.name == name).collect() };
    let (calls, attempts, invokes) = (named("flame.call"), named("flame.attempt"), named("flame.invoke"));
    assert_eq!(
        (calls.len(), attempts.len(), invokes.len()),
        (2, 2, 2),
        "{:#?}",
        spans.iter().map(|s| &s.name).collect::<Vec<_>>()
    );
    for call in &calls {
        let trace = call.span_context.trace_id();
        let attempt = attempts
            .iter()
            .find(|a| a.span_context.trace_id() == trace)
            .expect("an attempt span in the call's trace");
        assert_eq!(
            attempt.parent_span_id,
            call.span_context.span_id(),
            "attempt is the call's child"
        );
        let invoke = invokes
            .iter()
            .find(|i| i.span_context.trace_id() == trace)
            .expect("the runner's invocation span is in the parent's trace");
        assert_eq!(
            invoke.parent_span_id,
            attempt.span_context.span_id(),
            "invocation is the attempt's child"
        );
    }
    assert_ne!(
        calls[0].span_context.trace_id(),
        calls[1].span_context.trace_id(),
        "one trace per call"
    );
}
