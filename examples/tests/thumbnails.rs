//! `cargo run --example thumbnails` as a user runs it (issue 16): a parent fans 48 jobs out with
//! `map` over LocalProcess runners, shows progress, and every runner built its runner state
//! exactly once (the parent never); with a failing runner state, the parent gets a clear boot
//! error quickly and nothing is left running. Runs inside a process fence (cgroup `pids.max`
//! when available, and a watchdog).
#![allow(clippy::unwrap_used)]
#![cfg(target_os = "linux")]

mod local_process_common;

use local_process_common::*;
use std::collections::BTreeMap;
use std::io::Read;
use std::process::Stdio;
use std::time::Duration;

fn run(env: &[(&str, &str)]) -> (bool, String, String, Fence) {
    let fence = Fence::new(KILL_AT);
    let mut cmd = fence.command(example_bin("thumbnails"), &[]);
    cmd.envs(env.iter().copied())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().unwrap();
    let (mut out, mut err) = (child.stdout.take().unwrap(), child.stderr.take().unwrap());
    let mut guard = ChildGuard(child);
    let finished = wait_until(Duration::from_secs(120), || {
        matches!(guard.0.try_wait(), Ok(Some(_)))
    });
    assert!(finished, "thumbnails did not finish within 120 s");
    let ok = guard.0.wait().unwrap().success();
    let (mut stdout, mut stderr) = (String::new(), String::new());
    out.read_to_string(&mut stdout).unwrap();
    err.read_to_string(&mut stderr).unwrap();
    assert!(
        !fence.tripped.load(std::sync::atomic::Ordering::SeqCst),
        "runaway"
    );
    (ok, stdout, stderr, fence)
}

#[test]
fn thumbnails_fan_out_over_runners_that_build_their_state_once() {
    let (ok, out, err, fence) = run(&[("THUMBNAILS_JOBS", "48")]);
    assert!(ok, "thumbnails failed:\n{out}\n{err}");
    assert!(
        out.contains("the parent built its runner state 0 time(s)"),
        "{out}"
    );
    assert!(out.contains("48/48"), "progress reaches the end:\n{out}");
    assert!(out.contains("48 thumbnails in"), "{out}");
    let runners: BTreeMap<u32, (u32, u32)> = out
        .lines()
        .filter_map(|l| l.trim().strip_prefix("runner pid "))
        .map(|rest| {
            let pid = rest.split(':').next().unwrap().parse().unwrap();
            let thumbs = rest
                .split(": ")
                .nth(1)
                .unwrap()
                .split(' ')
                .next()
                .unwrap()
                .parse()
                .unwrap();
            let builds = rest
                .split("built ")
                .nth(1)
                .unwrap()
                .split(' ')
                .next()
                .unwrap()
                .parse()
                .unwrap();
            (pid, (thumbs, builds))
        })
        .collect();
    assert!((1..=3).contains(&runners.len()), "at most 3 runners: {runners:?}");
    assert_eq!(runners.values().map(|(t, _)| t).sum::<u32>(), 48);
    assert!(
        runners.values().all(|(_, b)| *b == 1),
        "state built once per runner: {runners:?}"
    );
    assert!(
        fence.max_seen.load(std::sync::atomic::Ordering::SeqCst) <= 4,
        "parent + 3 runners"
    );
    assert!(wait_until(Duration::from_secs(10), || fence
        .processes()
        .is_empty()));
}

#[test]
fn a_failing_runner_state_is_a_clear_boot_error_and_leaves_nothing() {
    let started = std::time::Instant::now();
    let (ok, out, err, fence) = run(&[("THUMBNAILS_JOBS", "8"), ("THUMBNAILS_BREAK_STATE", "1")]);
    assert!(!ok, "the parent must fail:\n{out}\n{err}");
    let all = format!("{out}\n{err}");
    assert!(
        all.contains("the resampler kernel cannot be built"),
        "the parent's error names the runner state's failure:\n{all}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(60),
        "no hang: {:?}",
        started.elapsed()
    );
    assert!(
        wait_until(Duration::from_secs(10), || fence.processes().is_empty()),
        "nothing left running"
    );
}
