//! `cargo run --example quickstart`, as a newcomer runs it: calls served by runner processes,
//! a clean exit, and nothing left running.
#![allow(clippy::unwrap_used)]
#![cfg(target_os = "linux")]

mod local_process_common;

use local_process_common::*;
use std::collections::BTreeSet;
use std::io::Read;
use std::process::{Command, Stdio};
use std::time::Duration;

fn run_quickstart(env: &[(&str, &str)]) -> (u32, String, bool) {
    let mut child = Command::new(example_bin("quickstart"))
        .env_remove("FLAME_MODE")
        .env_remove("FLAME_RUNNER_URL")
        .envs(env.iter().copied())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let pid = child.id();
    let mut stdout = child.stdout.take().unwrap();
    let mut guard = ChildGuard(child);
    let _cleanup = KillByEnv("FLAME_PARENT_PID".into(), pid.to_string());
    let finished = wait_until(Duration::from_secs(60), || {
        matches!(guard.0.try_wait(), Ok(Some(_)))
    });
    assert!(finished, "quickstart did not finish within 60 s");
    let ok = guard.0.wait().unwrap().success();
    let mut out = String::new();
    stdout.read_to_string(&mut out).unwrap();
    (pid, out, ok)
}

#[test]
fn quickstart_runs_calls_on_runner_processes_and_leaves_nothing() {
    let (pid, out, ok) = run_quickstart(&[]);
    assert!(ok, "quickstart failed:\n{out}");
    assert!(out.contains("parent mode"), "{out}");
    let runner_pids: BTreeSet<u32> = out
        .lines()
        .filter_map(|l| l.split("priced by runner pid ").nth(1))
        .map(|rest| rest.trim_end_matches(')').trim().parse().unwrap())
        .collect();
    let served = out.lines().filter(|l| l.contains("priced by runner pid")).count();
    assert_eq!(served, 6, "one line per call:\n{out}");
    assert!(runner_pids.len() >= 2, "the pool grew past one runner:\n{out}");
    assert!(
        !runner_pids.contains(&pid),
        "calls ran in runners, not the parent"
    );
    assert!(out.contains("code HANDLER_ERROR (Some(Empty))"), "{out}");
    assert!(out.contains("none is left running"), "{out}");
    for runner in &runner_pids {
        assert!(!alive(*runner), "runner {runner} outlived the quickstart");
    }
    assert!(pids_with_env("FLAME_PARENT_PID", &pid.to_string()).is_empty());
}

#[test]
fn quickstart_in_local_mode_runs_in_process() {
    let (_, out, ok) = run_quickstart(&[("FLAME_MODE", "local")]);
    assert!(ok, "{out}");
    assert!(out.contains("local mode"), "{out}");
    assert_eq!(out.matches("priced by this process").count(), 6, "{out}");
}
