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
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

const MARKER: &str = "FLAME_RUNAWAY_TEST";
/// The parent plus its pool's `max` of 3 runners.
const ALLOWED: usize = 4;
/// Past this many processes the watchdog kills the whole run.
const KILL_AT: usize = 12;

/// The fences around one run; dropping it kills whatever of the run is left.
struct Fence {
    marker: String,
    cgroup: Option<PathBuf>,
    stop: Arc<AtomicBool>,
    max_seen: Arc<AtomicUsize>,
    tripped: Arc<AtomicBool>,
    watchdog: Option<std::thread::JoinHandle<()>>,
}

impl Fence {
    fn new() -> Fence {
        let marker = uuid::Uuid::new_v4().simple().to_string();
        let (stop, max_seen, tripped) = (
            Arc::new(AtomicBool::new(false)),
            Arc::new(AtomicUsize::new(0)),
            Arc::new(AtomicBool::new(false)),
        );
        let watchdog = {
            let (marker, stop, max_seen, tripped) =
                (marker.clone(), stop.clone(), max_seen.clone(), tripped.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::SeqCst) {
                    let pids = pids_with_env(MARKER, &marker);
                    max_seen.fetch_max(pids.len(), Ordering::SeqCst);
                    if pids.len() > KILL_AT {
                        tripped.store(true, Ordering::SeqCst);
                    }
                    // Once tripped, every process of the run dies, round after round.
                    if tripped.load(Ordering::SeqCst) {
                        kill_all(&pids);
                    }
                    std::thread::sleep(Duration::from_millis(10));
                }
            })
        };
        Fence {
            cgroup: pids_cgroup(&marker),
            marker,
            stop,
            max_seen,
            tripped,
            watchdog: Some(watchdog),
        }
    }

    /// The command for `program args`, started inside the cgroup when there is one.
    fn command(&self, program: PathBuf, args: &[&str]) -> Command {
        let mut cmd = match &self.cgroup {
            Some(dir) => {
                let mut c = Command::new("sh");
                c.arg("-c")
                    .arg(format!(
                        "echo $$ > {}/cgroup.procs && exec \"$0\" \"$@\"",
                        dir.display()
                    ))
                    .arg(program)
                    .args(args);
                c
            }
            None => {
                let mut c = Command::new(program);
                c.args(args);
                c
            }
        };
        for (k, _) in std::env::vars() {
            if k.starts_with("FLAME_") {
                cmd.env_remove(k);
            }
        }
        cmd.env(MARKER, &self.marker);
        cmd
    }
}

impl Drop for Fence {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(w) = self.watchdog.take() {
            let _ = w.join();
        }
        // Kill until three rounds in a row find nothing: a process forked while a round ran
        // is caught by the next one (and the cgroup, when there is one, stops forks at its cap).
        let mut quiet = 0;
        let until = std::time::Instant::now() + Duration::from_secs(20);
        while quiet < 3 && std::time::Instant::now() < until {
            let mut pids = pids_with_env(MARKER, &self.marker);
            if let Some(dir) = &self.cgroup {
                let procs = std::fs::read_to_string(dir.join("cgroup.procs")).unwrap_or_default();
                pids.extend(procs.split_whitespace().filter_map(|p| p.parse::<u32>().ok()));
            }
            if pids.is_empty() {
                quiet += 1;
            } else {
                quiet = 0;
                kill_all(&pids);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        if let Some(dir) = &self.cgroup {
            let _ = std::fs::remove_dir(dir);
        }
    }
}

/// SIGKILLs every pid in one `kill` command (one fork per round, not one per process).
fn kill_all(pids: &[u32]) {
    if pids.is_empty() {
        return;
    }
    let _ = Command::new("kill")
        .arg("-KILL")
        .args(pids.iter().map(u32::to_string))
        .stderr(Stdio::null())
        .status();
}

/// A fresh pids cgroup with `pids.max` (v1 or v2), when this machine lets us make one. It
/// counts threads, so the cap leaves room for each process's runtime threads.
fn pids_cgroup(name: &str) -> Option<PathBuf> {
    let v1 = PathBuf::from("/sys/fs/cgroup/pids");
    let base = if v1.join("cgroup.procs").exists() {
        v1
    } else {
        let v2 = PathBuf::from("/sys/fs/cgroup");
        let controllers = std::fs::read_to_string(v2.join("cgroup.subtree_control")).ok()?;
        if !controllers.split_whitespace().any(|c| c == "pids") {
            return None;
        }
        v2
    };
    let dir = base.join(format!("flame-runaway-{name}"));
    std::fs::create_dir(&dir).ok()?;
    if std::fs::write(dir.join("pids.max"), "256").is_err() {
        let _ = std::fs::remove_dir(&dir);
        return None;
    }
    Some(dir)
}

fn run_misconfigured(args: &[&str]) {
    let fence = Fence::new();
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
        wait_until(Duration::from_secs(10), || pids_with_env(MARKER, &fence.marker)
            .is_empty()),
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
