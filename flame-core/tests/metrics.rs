//! Metrics through the `metrics` facade (issue 14): recorded with `metrics-util`'s debugging
//! recorder, installed for this whole test binary (one test: the recorder is process-wide).
//! The names are those of `flame_core::telemetry`'s table.
#![allow(clippy::unwrap_used)]
mod common;
mod pool_common;

use common::*;
use flame_core::telemetry;
use flame_core::{CallOptions, ErrorCode, Flame, Mode, PoolConfig};
use metrics_util::debugging::{DebugValue, DebuggingRecorder, Snapshotter};
use metrics_util::MetricKind;
use pool_common::*;
use std::sync::Arc;
use std::time::Duration;

/// One recorded metric: kind, name, labels (sorted), value.
type Recorded = (MetricKind, String, Vec<(String, String)>, DebugValue);

fn snapshot(s: &Snapshotter) -> Vec<Recorded> {
    s.snapshot()
        .into_vec()
        .into_iter()
        .map(|(ck, _, _, v)| {
            let (kind, key) = ck.into_parts();
            let mut labels: Vec<(String, String)> = key
                .labels()
                .map(|l| (l.key().to_owned(), l.value().to_owned()))
                .collect();
            labels.sort();
            (kind, key.name().to_owned(), labels, v)
        })
        .collect()
}

fn find<'a>(all: &'a [Recorded], name: &str, labels: &[(&str, &str)]) -> Option<&'a DebugValue> {
    all.iter()
        .find(|(_, n, l, _)| {
            n == name
                && labels
                    .iter()
                    .all(|(k, v)| l.iter().any(|(lk, lv)| lk == k && lv == v))
        })
        .map(|(_, _, _, v)| v)
}

fn count(v: Option<&DebugValue>) -> u64 {
    match v {
        Some(DebugValue::Counter(n)) => *n,
        other => panic!("not a counter: {other:?}"),
    }
}

fn samples(v: Option<&DebugValue>) -> usize {
    match v {
        Some(DebugValue::Histogram(h)) => h.len(),
        other => panic!("not a histogram: {other:?}"),
    }
}

#[tokio::test(start_paused = true)]
async fn calls_pools_and_runners_are_measured_with_the_documented_names() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    recorder.install().unwrap();

    // A parent over a fake backend and the in-memory transport (runner side included).
    let fake = Fake::new(registry().0);
    let (pool, _) = pool(&fake, PoolConfig::default().max(2).max_concurrency(4));
    let flame = Flame::builder(registry().0)
        .mode(Mode::Parent)
        .transport(Arc::new(fake.transport.clone()))
        .with_pool(Arc::new(pool))
        .handle_signals(false)
        .build()
        .unwrap();
    for i in 0..3 {
        assert_eq!(flame.call(ADD, (i, 1)).await.unwrap(), i + 1);
    }
    let err = flame.call(FAIL, "no".to_string()).await.unwrap_err();
    assert_eq!(err.code(), ErrorCode::Handler);
    // A retried call: the only runner is gone, and the retry starts a new one.
    let runner = fake.alive.lock().unwrap().iter().next().unwrap().clone();
    fake.kill(&runner);
    let sum = flame
        .call_with(
            ADD,
            (2, 2),
            CallOptions::new().retries(2).timeout(Duration::from_secs(30)),
        )
        .await;
    assert!(sum.is_ok(), "{sum:?}");
    // Local mode counts too.
    let local = Flame::builder(registry().0).mode(Mode::Local).build().unwrap();
    local.call(ADD, (1, 1)).await.unwrap();

    let all = snapshot(&snapshotter);
    let names: std::collections::BTreeSet<&str> = all.iter().map(|(_, n, _, _)| n.as_str()).collect();
    for name in [
        telemetry::CALLS,
        telemetry::CALL_DURATION,
        telemetry::RETRIES,
        telemetry::QUEUE_WAIT,
        telemetry::POOL_RUNNERS,
        telemetry::POOL_IN_FLIGHT,
        telemetry::POOL_WAITING,
        telemetry::SPAWNS,
        telemetry::BOOT_DURATION,
        telemetry::INVOCATIONS,
        telemetry::INVOCATION_DURATION,
    ] {
        assert!(names.contains(name), "{name} missing from {names:?}");
    }
    let ok = [
        ("service", "math"),
        ("method", "add"),
        ("pool", "default"),
        ("outcome", "ok"),
    ];
    assert_eq!(count(find(&all, telemetry::CALLS, &ok)), 4);
    assert_eq!(samples(find(&all, telemetry::CALL_DURATION, &ok)), 4);
    let declined = [("method", "fail"), ("outcome", "HANDLER_ERROR")];
    assert_eq!(count(find(&all, telemetry::CALLS, &declined)), 1);
    assert_eq!(
        count(find(
            &all,
            telemetry::CALLS,
            &[("pool", "local"), ("outcome", "ok")]
        )),
        1
    );
    assert!(
        count(find(
            &all,
            telemetry::RETRIES,
            &[("method", "add"), ("pool", "default")]
        )) >= 1
    );
    assert_eq!(count(find(&all, telemetry::SPAWNS, &[("pool", "default")])), 2);
    assert_eq!(
        samples(find(&all, telemetry::BOOT_DURATION, &[("pool", "default")])),
        2
    );
    // Every attempt that reached a runner waited for its slot once.
    assert!(samples(find(&all, telemetry::QUEUE_WAIT, &[("pool", "default")])) >= 5);
    // The runner side: every invocation that ran, with its outcome.
    let ran = [("service", "math"), ("method", "add"), ("outcome", "ok")];
    assert_eq!(count(find(&all, telemetry::INVOCATIONS, &ran)), 4);
    assert_eq!(
        count(find(
            &all,
            telemetry::INVOCATIONS,
            &[("method", "fail"), ("outcome", "HANDLER_ERROR")]
        )),
        1
    );
    match find(
        &all,
        telemetry::POOL_RUNNERS,
        &[("pool", "default"), ("state", "running")],
    ) {
        Some(DebugValue::Gauge(g)) => assert_eq!(g.into_inner(), 1.0),
        other => panic!("{other:?}"),
    }
    flame.shutdown().await.unwrap();
}
