//! Scenario 4 — `SIGTERM` to a runner under load (pool of 2 real `rel_runner` processes): its
//! calls in flight finish within the drain grace, new calls go to the other runner (none runs
//! on the draining one, per its own execution log), it exits, and the pool replaces it.
//!
//! New calls carry idempotency keys and retries: a call that races the drain on a pooled
//! keep-alive connection is reset unread, and without a key it is not safely repeatable.
#![allow(clippy::unwrap_used)]
#![cfg(target_os = "linux")]

mod common;

use common::*;
use flame_core::{CallOptions, LocalProcess, PoolConfig};
use flame_reliability::methods::{read_logs, Record, RECORD};
use flame_reliability::procfs::{alive, signal, wait_until_async, KillByEnv};
use std::time::{Duration, Instant};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigterm_under_load_drains_in_flight_calls_and_new_calls_go_elsewhere() {
    let grace = Duration::from_secs(5);
    let p = parent(
        PoolConfig::default()
            .min(2)
            .max(2)
            .max_concurrency(100)
            .health_interval(Duration::from_secs(2)),
        &[("REL_DRAIN_GRACE_MS", "5000")],
    )
    .await;
    let _cleanup = KillByEnv::new("FLAME_PARENT_ID", p.parent_id());
    assert!(
        wait_until_async(Duration::from_secs(60), || p.stats().runners == 2)
            .await
            .is_some()
    );

    let in_flight: Vec<_> = (0..100)
        .map(|i| {
            let f = p.flame.clone();
            tokio::spawn(async move {
                f.call_with(
                    RECORD,
                    Record::new(format!("old-{i}")).sleep(1500),
                    CallOptions::new().timeout(Duration::from_secs(30)),
                )
                .await
            })
        })
        .collect();
    assert!(
        wait_until_async(Duration::from_secs(10), || p.stats().in_flight == 100)
            .await
            .is_some()
    );
    tokio::time::sleep(Duration::from_millis(200)).await;
    let victim = p.runner_pids()[0];
    let victim_addr = LocalProcess::command(rel_runner(), Vec::<String>::new())
        .state_dir(p.state.path())
        .records(&p.app)
        .into_iter()
        .find(|r| r.pid == victim)
        .and_then(|r| r.url)
        .expect("the victim's pid file names its URL")
        .trim_start_matches("http://")
        .to_owned();
    signal(victim, "TERM");
    // Event-driven, not timed: the new calls start once the victim has begun to drain (it
    // closes its listener first), however long a loaded machine takes to deliver the signal.
    assert!(
        wait_until_async(Duration::from_secs(20), || std::net::TcpStream::connect(
            &victim_addr
        )
        .is_err())
        .await
        .is_some(),
        "the victim never closed its listener after SIGTERM"
    );
    let termed = Instant::now();

    // New calls while it drains: every one succeeds, on another runner.
    let mut new_calls = 0;
    while termed.elapsed() < Duration::from_millis(1500) {
        let batch: Vec<_> = (0..10)
            .map(|i| {
                let f = p.flame.clone();
                let tag = format!("new-{new_calls}-{i}");
                let tag2 = tag.clone();
                tokio::spawn(async move {
                    f.call_with(
                        RECORD,
                        Record::new(tag),
                        // A call sent on a pooled keep-alive connection just as the draining
                        // runner closes it gets a connection reset: the runner never read it,
                        // but the client cannot prove that, so only a keyed call is retried.
                        CallOptions::new()
                            .timeout(Duration::from_secs(20))
                            .idempotency_key(tag2)
                            .retries(3),
                    )
                    .await
                })
            })
            .collect();
        for b in batch {
            let r = b.await.unwrap().unwrap();
            assert_ne!(r.pid, victim, "a new call ran on the draining runner");
        }
        new_calls += 10;
    }

    // The calls in flight on it finished, within the grace.
    let mut on_victim = 0;
    let mut victim_id = None;
    for c in in_flight {
        let r = c
            .await
            .unwrap()
            .expect("an in-flight call failed during the drain");
        if r.pid == victim {
            on_victim += 1;
            victim_id = r.runner_id;
        }
    }
    let drained_in = termed.elapsed();
    assert!(on_victim > 0, "the victim had no calls in flight");
    assert!(drained_in < grace, "in-flight calls took {drained_in:?}");
    let exited = wait_until_async(grace + Duration::from_secs(2), || !alive(victim)).await;
    assert!(exited.is_some(), "the drained runner did not exit");

    // Its own log: only the calls it had before SIGTERM.
    let logs = read_logs(p.logs.path());
    let victim_log = &logs[&victim_id.expect("the victim's runner id")];
    assert_eq!(victim_log.len(), on_victim);
    assert!(
        victim_log.keys().all(|t| t.starts_with("old-")),
        "new work ran on the draining runner"
    );

    let replaced = wait_until_async(Duration::from_secs(30), || {
        let pids = p.runner_pids();
        p.stats().runners == 2 && pids.len() == 2 && !pids.contains(&victim)
    })
    .await;
    assert!(
        replaced.is_some(),
        "the pool did not replace the drained runner: {:?}",
        p.stats()
    );
    eprintln!(
        "SIGTERM under load: {on_victim} in-flight calls on the victim all finished ({drained_in:?} after SIGTERM, grace {grace:?}); {new_calls} new calls all served elsewhere; runner exited after {:?}; replaced",
        exited.unwrap() + drained_in
    );
    p.flame.shutdown().await.unwrap();
    let gone = wait_until_async(Duration::from_secs(15), || p.runner_pids().is_empty()).await;
    assert!(
        gone.is_some(),
        "runners left after shutdown: {:?}",
        p.runner_pids()
    );
}
