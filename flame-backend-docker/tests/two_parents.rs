//! Two live parents of one app side by side on a real dockerd (issue 13, "friendly fire"):
//! each parent is a real process (`docker_runner parent`, a flame parent with an elastic pool
//! of Docker runners). Parent B starting and reaping leaves parent A's runners alone while A's
//! calls are in flight; after A is killed with SIGKILL its runners end by their own failsafe,
//! and B's reap removes what is left (a runner frozen before its failsafe could fire).
#![allow(clippy::unwrap_used)]

mod common;

use common::parents::*;
use common::*;
use std::time::Duration;
use tokio::time::Instant;

/// The parents' failsafe window (`FLAME_PARENT_TIMEOUT`): the same for both, as replicas of
/// one app share their configuration. Each pings its runners every second.
const WINDOW_MS: u64 = 6_000;
/// How long each of A's calls stays in flight.
const CALL_MS: u64 = 8_000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_live_parents_never_reap_each_other_and_a_killed_ones_runners_go() {
    if !docker_available() {
        return;
    }
    let app = unique_app("two-parents");
    let _cleanup = Cleanup::new(&app);

    // Parent A: two runners, a call in flight on each, all the time.
    let mut a = start_parent("A", &app, 2, CALL_MS, WINDOW_MS, None).await;
    let a_runners = containers_of_parent(&app, &a.id);
    assert_eq!(a_runners.len(), 2, "A's runners: {a_runners:?}");
    a.expect("CALL_START", Duration::from_secs(30)).await;

    // Parent B of the same app starts (its start reaps in the background) with one runner.
    let mut b = start_parent("B", &app, 1, 0, WINDOW_MS, None).await;
    let b_runners = containers_of_parent(&app, &b.id);
    assert_eq!(b_runners.len(), 1, "B's runner: {b_runners:?}");

    // B reaps again while A's calls are in flight: it ends nothing of A's.
    let (ended, reap_start, reap_end) = b.reap(Duration::from_secs(90)).await;
    assert_eq!(ended, 0, "B's reap ended {ended} runner(s) of live parent A");
    assert_eq!(
        containers_of_parent(&app, &a.id),
        a_runners,
        "A's runners after B's reap"
    );
    for id in &a_runners {
        assert_eq!(container_state(id).as_deref(), Some("running"), "A's runner {id}");
    }
    // Every call of A that was in flight during B's reap finished, and succeeded.
    let until = Instant::now() + Duration::from_secs(60);
    let spanning = loop {
        let calls = a.calls();
        let spanning: Vec<_> = calls
            .iter()
            .filter(|(_, (start, _, _))| *start <= reap_start)
            .filter(|(_, (_, end, _))| end.map_or(true, |e| e >= reap_end))
            .map(|(k, v)| (*k, v.clone()))
            .collect();
        if !spanning.is_empty() && spanning.iter().all(|(_, (_, end, _))| end.is_some()) {
            break spanning;
        }
        assert!(
            Instant::now() < until,
            "A's calls around B's reap ({reap_start}..{reap_end}) did not finish: {calls:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    for ((caller, n), (_, _, error)) in &spanning {
        assert!(
            error.is_none(),
            "A's call {caller}/{n}, in flight during B's reap, failed: {error:?}"
        );
    }
    let failed: Vec<_> = a.calls().into_iter().filter(|(_, v)| v.2.is_some()).collect();
    assert!(failed.is_empty(), "A's calls failed: {failed:?}");
    eprintln!(
        "B's reap took {} ms and spared A; {} call(s) of A spanned it and succeeded",
        reap_end - reap_start,
        spanning.len()
    );

    // A dies (SIGKILL). One of its runners freezes right away (`docker pause`: its failsafe
    // cannot fire); the other ends by its own failsafe within the window (plus the drain of
    // its call in flight) and AutoRemove removes its container.
    a.kill9().await;
    let killed = Instant::now();
    let (frozen, other) = (&a_runners[0], &a_runners[1]);
    let paused = std::process::Command::new("docker")
        .args(["pause", frozen])
        .output()
        .unwrap();
    assert!(
        paused.status.success(),
        "docker pause: {}",
        String::from_utf8_lossy(&paused.stderr)
    );
    let bound = Duration::from_millis(WINDOW_MS + CALL_MS) + Duration::from_secs(30);
    assert!(
        wait_gone(other, bound).await,
        "A's runner {other} outlived its parent by more than {bound:?}"
    );
    eprintln!(
        "A's unfrozen runner gone {:?} after A's SIGKILL (window {WINDOW_MS} ms)",
        killed.elapsed()
    );
    assert_eq!(container_state(frozen).as_deref(), Some("paused"));

    // B's reap removes what is left: the frozen runner never answers, so after the
    // unreachable window (B's window plus its boot timeout) it is ended. B's own runner stays.
    let (ended, reap_start, reap_end) = b.reap(Duration::from_secs(120)).await;
    assert_eq!(ended, 1, "B's reap after A's death");
    assert!(
        wait_gone(frozen, Duration::from_secs(30)).await,
        "the frozen runner of dead parent A is still there"
    );
    assert!(containers_of_parent(&app, &a.id).is_empty());
    assert_eq!(containers_of_parent(&app, &b.id), b_runners);
    assert_eq!(container_state(&b_runners[0]).as_deref(), Some("running"));
    eprintln!("B's reap ended A's frozen runner in {} ms", reap_end - reap_start);

    b.exit(Duration::from_secs(60)).await;
    assert!(
        wait_no_containers(&app, Duration::from_secs(30)).await,
        "containers left: {:?}",
        app_containers(&app).await
    );
}
