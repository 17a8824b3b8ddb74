//! Spawn safety with real processes (issue 13): the quickstart's shape built *without*
//! `from_env()` (and once more with an explicit `.mode(Mode::Parent)`) — the mistake that once
//! filled a machine with 29 000 processes — completes its calls on runner processes and never
//! has more than `max` (3) of them.
//!
//! Each run is fenced twice, so a regression cannot take the machine down: a cgroup with
//! `pids.max` when this machine lets us make one, and always a watchdog thread that counts the
//! run's processes (found by a marker variable every descendant inherits) every 10 ms and kills
//! them all past a small limit.
#![allow(clippy::unwrap_used)]
#![cfg(target_os = "linux")]

mod local_process_common;

use local_process_common::*;
use std::collections::BTreeSet;
use std::io::Read;
use std::process::Stdio;
use std::sync::atomic::Ordering;
use std::time::Duration;

/// The parent plus its pool's `max` of 3 runners.
const ALLOWED: usize = 4;

fn run_misconfigured(args: &[&str]) {
    let fence = Fence::new(KILL_AT);
    let mut child = fence
        .command(example_bin("misconfigured"), args)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let pid = child.id();
    let mut stdout = child.stdout.take().unwrap();
    let mut guard = ChildGuard(child);
    let finished = wait_until(Duration::from_secs(90), || {
        matches!(guard.0.try_wait(), Ok(Some(_)))
    });
    let tripped = fence.tripped.load(Ordering::SeqCst);
    let max_seen = fence.max_seen.load(Ordering::SeqCst);
    eprintln!(
        "misconfigured {args:?}: at most {max_seen} processes at once (parent + runners), cgroup fence: {}",
        fence.cgroup.is_some()
    );
    assert!(
        !tripped,
        "runaway: more than {KILL_AT} processes, the watchdog killed them"
    );
    assert!(finished, "the misconfigured program did not finish within 90 s");
    let ok = guard.0.wait().unwrap().success();
    let mut out = String::new();
    stdout.read_to_string(&mut out).unwrap();
    assert!(ok, "the misconfigured program failed:\n{out}");
    assert!(out.contains(&format!("pid {pid} is the parent")), "{out}");
    let served: BTreeSet<u32> = out
        .lines()
        .filter_map(|l| l.strip_prefix("served by pid "))
        .map(|p| p.trim().parse().unwrap())
        .collect();
    assert_eq!(
        out.lines().filter(|l| l.starts_with("served by pid ")).count(),
        6,
        "{out}"
    );
    assert!(
        !served.contains(&pid),
        "calls ran on runners, not the parent: {out}"
    );
    assert!(
        (1..=3).contains(&served.len()),
        "calls spread over the pool's at most 3 runners: {out}"
    );
    assert!(
        max_seen <= ALLOWED,
        "{max_seen} processes at once: more than the parent and its max of 3 runners"
    );
    assert!(
        wait_until(Duration::from_secs(10), || fence.processes().is_empty()),
        "processes of the run outlived it"
    );
}

#[test]
fn a_program_without_from_env_never_spawns_past_max() {
    run_misconfigured(&[]);
}

#[test]
fn a_program_with_explicit_parent_mode_never_spawns_past_max() {
    run_misconfigured(&["explicit-parent"]);
}
