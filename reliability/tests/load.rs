//! Scenario 1 — 10 000 concurrent calls through an elastic pool of at most 4 real
//! `rel_runner` processes × 100 concurrency over signed HTTP: every call resolves exactly once
//! (the runners' own execution logs count each tag once), and runner memory stays bounded
//! (`VmRSS` from `/proc` before and after).
#![allow(clippy::unwrap_used)]
#![cfg(target_os = "linux")]

mod common;

use common::*;
use flame_core::{CallOptions, PoolConfig};
use flame_reliability::methods::{read_logs, Record, RECORD};
use flame_reliability::procfs::{rss_kb, wait_until, KillByEnv};
use std::collections::HashMap;
use std::time::{Duration, Instant};

const CALLS: usize = 10_000;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn ten_thousand_concurrent_calls_resolve_exactly_once_with_bounded_memory() {
    let p = parent(
        PoolConfig::default()
            .max(4)
            .max_concurrency(100)
            .health_interval(Duration::from_secs(2)),
        &[],
    )
    .await;
    let _cleanup = KillByEnv::new("FLAME_PARENT_ID", p.parent_id());

    // Warm up: 400 concurrent slow calls grow the pool to its max of 4.
    let warm: Vec<_> = (0..400)
        .map(|i| {
            let f = p.flame.clone();
            tokio::spawn(async move {
                f.call_with(
                    RECORD,
                    Record::new(format!("warm-{i}")).sleep(300),
                    CallOptions::new().timeout(Duration::from_secs(60)),
                )
                .await
            })
        })
        .collect();
    for w in warm {
        w.await.unwrap().unwrap();
    }
    let pids = p.runner_pids();
    assert_eq!(pids.len(), 4, "the pool grew to exactly its max");
    let before: HashMap<u32, u64> = pids.iter().map(|pid| (*pid, rss_kb(*pid).unwrap())).collect();
    let parent_before = rss_kb(std::process::id()).unwrap();

    let started = Instant::now();
    let calls: Vec<_> = (0..CALLS)
        .map(|i| {
            let f = p.flame.clone();
            tokio::spawn(async move {
                f.call_with(
                    RECORD,
                    Record::new(format!("load-{i}")).sleep(2),
                    CallOptions::new().timeout(Duration::from_secs(120)),
                )
                .await
            })
        })
        .collect();
    let mut max_stats = p.stats();
    let mut results = Vec::with_capacity(CALLS);
    for c in calls {
        let s = p.stats();
        max_stats.runners = max_stats.runners.max(s.runners + s.booting);
        max_stats.in_flight = max_stats.in_flight.max(s.in_flight);
        results.push(c.await.unwrap());
    }
    let took = started.elapsed();
    let failures: Vec<String> = results
        .iter()
        .filter_map(|r| r.as_ref().err().map(|e| e.to_string()))
        .collect();
    assert!(
        failures.is_empty(),
        "{} calls failed, e.g. {:?}",
        failures.len(),
        &failures[..failures.len().min(5)]
    );
    for r in &results {
        assert_eq!(r.as_ref().unwrap().runs, 1, "a tag ran twice on one runner");
    }
    assert!(max_stats.runners <= 4, "the pool went past max: {max_stats:?}");
    assert!(
        max_stats.in_flight <= 400,
        "more leases than slots: {max_stats:?}"
    );

    // Exactly once, from the runners' side.
    let logs = read_logs(p.logs.path());
    let mut per_tag: HashMap<&str, u32> = HashMap::new();
    for runs in logs.values() {
        for (tag, n) in runs {
            if tag.starts_with("load-") {
                *per_tag.entry(tag.as_str()).or_insert(0) += n;
            }
        }
    }
    assert_eq!(per_tag.len(), CALLS, "every call ran");
    let twice: Vec<_> = per_tag.iter().filter(|(_, n)| **n != 1).collect();
    assert!(
        twice.is_empty(),
        "ran more than once: {:?}",
        &twice[..twice.len().min(5)]
    );

    // Memory bounded.
    let after: HashMap<u32, u64> = pids.iter().map(|pid| (*pid, rss_kb(*pid).unwrap_or(0))).collect();
    let parent_after = rss_kb(std::process::id()).unwrap();
    eprintln!(
        "load: {CALLS} calls in {took:?} ({:.0} calls/s), max {} runners, max {} in flight; runner RSS KiB before {:?} after {:?}; parent RSS {parent_before} -> {parent_after} KiB; calls per runner {:?}",
        CALLS as f64 / took.as_secs_f64(),
        max_stats.runners,
        max_stats.in_flight,
        before.values().collect::<Vec<_>>(),
        after.values().collect::<Vec<_>>(),
        logs.values().map(|m| m.keys().filter(|t| t.starts_with("load-")).count()).collect::<Vec<_>>(),
    );
    for pid in &pids {
        assert!(
            after[pid] < before[pid] + 64 * 1024,
            "runner {pid} RSS grew from {} KiB to {} KiB",
            before[pid],
            after[pid]
        );
    }
    assert!(after.values().all(|kb| *kb > 0), "a runner died under load");

    p.flame.shutdown().await.unwrap();
    assert!(
        wait_until(Duration::from_secs(10), || p.runner_pids().is_empty()).is_some(),
        "runners left after shutdown"
    );
}
