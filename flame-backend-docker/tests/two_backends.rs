//! Two pools on two backends in one parent (issue 16, `FlameBuilder::pool_with`): parent A is a
//! real `docker_runner parent` process with a pool `default` of Docker runners and a pool `local`
//! of a LocalProcess runner. Both runners of A are frozen (`docker pause`, SIGSTOP: their
//! failsafes cannot fire) and A is killed with SIGKILL; parent B of the same app, with the same
//! two backends, starts — and its reap ends what A left on *both* backends, while its own
//! runners keep serving.
#![allow(clippy::unwrap_used)]
#![cfg(target_os = "linux")]

mod common;

use common::parents::*;
use common::*;
use std::time::Duration;

/// The parents' failsafe window.
const WINDOW_MS: u64 = 6_000;

/// Live processes whose environment holds all of `pairs`.
fn processes_with(pairs: &[(&str, &str)]) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            let Ok(env) = std::fs::read(format!("/proc/{pid}/environ")) else {
                return false;
            };
            let vars: Vec<&[u8]> = env.split(|b| *b == 0).collect();
            pairs
                .iter()
                .all(|(k, v)| vars.contains(&format!("{k}={v}").as_bytes()))
        })
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| {
                !s.rsplit(')')
                    .next()
                    .is_some_and(|r| r.trim_start().starts_with('Z'))
            })
        })
        .collect()
}

fn signal(pid: u32, sig: &str) {
    let _ = std::process::Command::new("kill")
        .args([format!("-{sig}"), pid.to_string()])
        .status();
}

/// Kills every process of the given parents, also when the test fails.
struct KillParents(Vec<String>);

impl Drop for KillParents {
    fn drop(&mut self) {
        for parent in &self.0 {
            for pid in processes_with(&[("FLAME_PARENT_ID", parent)]) {
                signal(pid, "KILL");
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_parent_with_two_backends_has_both_reaped_by_the_next_parent() {
    if !docker_available() {
        return;
    }
    let app = unique_app("two-backends");
    let _cleanup = Cleanup::new(&app);
    let state = std::env::temp_dir().join(format!("flame-two-backends-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&state).unwrap();

    let mut a = start_parent("A", &app, 1, 0, WINDOW_MS, Some(&state)).await;
    let mut kill = KillParents(vec![a.id.clone()]);
    let a_containers = containers_of_parent(&app, &a.id);
    assert_eq!(a_containers.len(), 1, "A's Docker runner");
    let a_local = processes_with(&[("FLAME_PARENT_ID", &a.id), ("FLAME_POOL", "local")]);
    assert_eq!(a_local.len(), 1, "A's LocalProcess runner");

    // Freeze both runners, then kill A: nothing of A can clean up after itself now.
    let paused = std::process::Command::new("docker")
        .args(["pause", &a_containers[0]])
        .output()
        .unwrap();
    assert!(
        paused.status.success(),
        "{}",
        String::from_utf8_lossy(&paused.stderr)
    );
    signal(a_local[0], "STOP");
    a.kill9().await;

    // B: same app, same two backends. Its start reaps both in the background; its explicit
    // reap waits for the verdicts (the frozen container needs the unreachable window).
    let mut b = start_parent("B", &app, 1, 0, WINDOW_MS, Some(&state)).await;
    kill.0.push(b.id.clone());
    let (ended, started, finished) = b.reap(Duration::from_secs(120)).await;
    eprintln!(
        "B's reap (both backends) took {} ms, ended {ended}",
        finished - started
    );
    assert!(
        wait_gone(&a_containers[0], Duration::from_secs(60)).await,
        "A's frozen Docker runner is still there"
    );
    let until = tokio::time::Instant::now() + Duration::from_secs(30);
    while !processes_with(&[("FLAME_PARENT_ID", &a.id)]).is_empty() && tokio::time::Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        processes_with(&[("FLAME_PARENT_ID", &a.id)]).is_empty(),
        "A's stopped LocalProcess runner survived B's reap"
    );
    // B's own runners on both backends still serve.
    let b_containers = containers_of_parent(&app, &b.id);
    assert_eq!(b_containers.len(), 1);
    assert_eq!(container_state(&b_containers[0]).as_deref(), Some("running"));
    assert_eq!(
        processes_with(&[("FLAME_PARENT_ID", &b.id), ("FLAME_POOL", "local")]).len(),
        1,
        "B's LocalProcess runner"
    );
    b.exit(Duration::from_secs(60)).await;
    assert!(
        wait_no_containers(&app, Duration::from_secs(30)).await,
        "containers left: {:?}",
        app_containers(&app).await
    );
    let _ = std::fs::remove_dir_all(&state);
}
