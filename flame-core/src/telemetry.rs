//! Spans and metrics, hung off the one call lifecycle (issue 14).
//!
//! **Spans** (`tracing`, target `flame`): a parent call is a `flame.call` span (`service`,
//! `method`, `pool`, `outcome`, `attempts`) with one `flame.attempt` child per attempt
//! (`runner`, `attempt`, `outcome`); on the runner each invocation is a `flame.invoke` span
//! (`service`, `method`, `invocation_id`, `attempt`, `outcome`). With the `opentelemetry`
//! feature and a `tracing-opentelemetry` layer installed, the attempt span's W3C
//! `traceparent`/`tracestate` is injected into the envelope's `trace` automatically and the
//! runner's span is made its child, so one trace spans parent and runner.
//!
//! **Metrics** (the [`metrics`] facade: a no-op until the application installs a recorder,
//! e.g. `metrics-exporter-prometheus`). Names and labels:
//!
//! | name | kind | labels | what |
//! |---|---|---|---|
//! | `flame_calls_total` | counter | service, method, pool, outcome | calls finished (outcome = `ok` or the error code) |
//! | `flame_call_duration_seconds` | histogram | service, method, pool, outcome | a call's whole time, retries included |
//! | `flame_call_retries_total` | counter | service, method, pool | retries made |
//! | `flame_pool_queue_wait_seconds` | histogram | pool | time a call waited for a slot |
//! | `flame_pool_runners` | gauge | pool, state (`running`, `booting`) | runners by state |
//! | `flame_pool_in_flight` | gauge | pool | leases out |
//! | `flame_pool_waiting` | gauge | pool | callers waiting for a slot |
//! | `flame_pool_spawns_total` | counter | pool | runner starts |
//! | `flame_pool_boot_duration_seconds` | histogram | pool | start → ready of runners that came up |
//! | `flame_pool_boot_failures_total` | counter | pool | starts that failed |
//! | `flame_invocations_total` | counter | service, method, outcome | invocations a runner ran |
//! | `flame_invocation_duration_seconds` | histogram | service, method, outcome | their handler time |

use crate::error::Result;
use metrics::{counter, gauge, histogram, SharedString};
use std::collections::BTreeMap;
use std::time::Duration;

/// `flame_calls_total`.
pub const CALLS: &str = "flame_calls_total";
/// `flame_call_duration_seconds`.
pub const CALL_DURATION: &str = "flame_call_duration_seconds";
/// `flame_call_retries_total`.
pub const RETRIES: &str = "flame_call_retries_total";
/// `flame_pool_queue_wait_seconds`.
pub const QUEUE_WAIT: &str = "flame_pool_queue_wait_seconds";
/// `flame_pool_runners`.
pub const POOL_RUNNERS: &str = "flame_pool_runners";
/// `flame_pool_in_flight`.
pub const POOL_IN_FLIGHT: &str = "flame_pool_in_flight";
/// `flame_pool_waiting`.
pub const POOL_WAITING: &str = "flame_pool_waiting";
/// `flame_pool_spawns_total`.
pub const SPAWNS: &str = "flame_pool_spawns_total";
/// `flame_pool_boot_duration_seconds`.
pub const BOOT_DURATION: &str = "flame_pool_boot_duration_seconds";
/// `flame_pool_boot_failures_total`.
pub const BOOT_FAILURES: &str = "flame_pool_boot_failures_total";
/// `flame_invocations_total`.
pub const INVOCATIONS: &str = "flame_invocations_total";
/// `flame_invocation_duration_seconds`.
pub const INVOCATION_DURATION: &str = "flame_invocation_duration_seconds";

/// The `outcome` label of a result: `ok`, or the error's code (`TIMEOUT`, `HANDLER_ERROR`, …).
pub fn outcome<T>(result: &Result<T>) -> &'static str {
    match result {
        Ok(_) => "ok",
        Err(e) => e.code().as_str(),
    }
}

pub(crate) fn call_finished(
    service: &'static str,
    method: &'static str,
    pool: &str,
    outcome: &'static str,
    took: Duration,
) {
    // `&'static str` labels stay borrowed (no allocation per call); only the pool is copied.
    let labels = [
        ("service", SharedString::from(service)),
        ("method", SharedString::from(method)),
        ("pool", SharedString::from(pool.to_owned())),
        ("outcome", SharedString::from(outcome)),
    ];
    counter!(CALLS, &labels).increment(1);
    histogram!(CALL_DURATION, &labels).record(took.as_secs_f64());
}

pub(crate) fn retried(service: &str, method: &str, pool: &str) {
    counter!(RETRIES, "service" => service.to_owned(), "method" => method.to_owned(), "pool" => pool.to_owned())
        .increment(1);
}

pub(crate) fn queue_wait(pool: &str, waited: Duration) {
    histogram!(QUEUE_WAIT, "pool" => pool.to_owned()).record(waited.as_secs_f64());
}

pub(crate) fn pool_sizes(pool: &str, running: usize, booting: usize, in_flight: usize, waiting: usize) {
    gauge!(POOL_RUNNERS, "pool" => pool.to_owned(), "state" => "running").set(running as f64);
    gauge!(POOL_RUNNERS, "pool" => pool.to_owned(), "state" => "booting").set(booting as f64);
    gauge!(POOL_IN_FLIGHT, "pool" => pool.to_owned()).set(in_flight as f64);
    gauge!(POOL_WAITING, "pool" => pool.to_owned()).set(waiting as f64);
}

pub(crate) fn spawned(pool: &str) {
    counter!(SPAWNS, "pool" => pool.to_owned()).increment(1);
}

pub(crate) fn booted(pool: &str, took: Duration, ok: bool) {
    if ok {
        histogram!(BOOT_DURATION, "pool" => pool.to_owned()).record(took.as_secs_f64());
    } else {
        counter!(BOOT_FAILURES, "pool" => pool.to_owned()).increment(1);
    }
}

pub(crate) fn invoked(service: SharedString, method: SharedString, outcome: &'static str, took: Duration) {
    let labels = [
        ("service", service),
        ("method", method),
        ("outcome", SharedString::from(outcome)),
    ];
    counter!(INVOCATIONS, &labels).increment(1);
    histogram!(INVOCATION_DURATION, &labels).record(took.as_secs_f64());
}

/// The service and method labels of an invocation: borrowed from its registry entry's
/// `'static` ids, copied from the request only for a method this runner does not serve.
pub(crate) fn method_labels(
    ids: Option<(&'static str, &'static str)>,
    service: &str,
    method: &str,
) -> (SharedString, SharedString) {
    match ids {
        Some((s, m)) => (SharedString::from(s), SharedString::from(m)),
        None => (
            SharedString::from(service.to_owned()),
            SharedString::from(method.to_owned()),
        ),
    }
}

/// Puts the W3C trace context of `span` into `trace` (feature `opentelemetry`, with a
/// `tracing-opentelemetry` layer installed; otherwise a no-op). A `traceparent` the caller set
/// by hand is kept.
pub fn inject(span: &tracing::Span, trace: &mut BTreeMap<String, String>) {
    #[cfg(feature = "opentelemetry")]
    otel::inject(span, trace);
    #[cfg(not(feature = "opentelemetry"))]
    let _ = (span, trace);
}

/// Makes `span` a child of the trace context in `trace` (feature `opentelemetry`; otherwise a
/// no-op).
pub fn extract(span: &tracing::Span, trace: &BTreeMap<String, String>) {
    #[cfg(feature = "opentelemetry")]
    otel::extract(span, trace);
    #[cfg(not(feature = "opentelemetry"))]
    let _ = (span, trace);
}

#[cfg(feature = "opentelemetry")]
mod otel {
    use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
    use opentelemetry::trace::TraceContextExt;
    use opentelemetry_sdk::propagation::TraceContextPropagator;
    use std::collections::BTreeMap;
    use tracing_opentelemetry::OpenTelemetrySpanExt;

    struct Map<'a>(&'a mut BTreeMap<String, String>);

    impl Injector for Map<'_> {
        fn set(&mut self, key: &str, value: String) {
            self.0.entry(key.to_owned()).or_insert(value);
        }
    }

    struct Read<'a>(&'a BTreeMap<String, String>);

    impl Extractor for Read<'_> {
        fn get(&self, key: &str) -> Option<&str> {
            self.0.get(key).map(String::as_str)
        }
        fn keys(&self) -> Vec<&str> {
            self.0.keys().map(String::as_str).collect()
        }
    }

    pub(super) fn inject(span: &tracing::Span, trace: &mut BTreeMap<String, String>) {
        let cx = span.context();
        if cx.span().span_context().is_valid() {
            TraceContextPropagator::new().inject_context(&cx, &mut Map(trace));
        }
    }

    pub(super) fn extract(span: &tracing::Span, trace: &BTreeMap<String, String>) {
        if trace.contains_key("traceparent") {
            let parent = TraceContextPropagator::new().extract(&Read(trace));
            let _ = span.set_parent(parent);
        }
    }
}
