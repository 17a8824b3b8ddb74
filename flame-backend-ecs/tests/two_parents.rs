//! Two live parents of one app side by side on moto (issue 13, "friendly fire"): each parent
//! is a real process (`examples/ecs_parent.rs parent`, a flame parent with the ECS backend on
//! moto), and each task is played by real processes on 127.0.0.1 — an agent that kills the
//! task's runner on StopTask, and a real flame runner with its failsafe (moto never starts
//! containers; its private addresses are never dialled). Parent B starting and reaping leaves
//! parent A's tasks alone while A's calls are in flight; after A is killed with SIGKILL its
//! runners exit by their failsafe while moto still says `RUNNING`, and B's reap stops those
//! tasks once they have not answered for the unreachable window.
#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use flame_core::testkit::parent_process::ParentProcess as Parent;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;
use tokio::process::Command;
use tokio::time::Instant;

/// The parents' failsafe window (`FLAME_PARENT_TIMEOUT`): the same for both, as replicas of
/// one app share their configuration. Each pings its runners every second.
const WINDOW_MS: u64 = 6_000;
/// How long each of A's calls stays in flight.
const CALL_MS: u64 = 8_000;

/// The `ecs_parent` example cargo built next to this test.
fn example_binary() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    // target/<profile>/deps/<test>-<hash> → target/<profile>/examples/ecs_parent
    let bin = exe
        .parent()
        .and_then(Path::parent)
        .unwrap()
        .join("examples")
        .join("ecs_parent");
    assert!(
        bin.exists(),
        "{} is missing: `cargo test -p flame-backend-ecs` builds it (or `cargo build -p flame-backend-ecs --examples`)",
        bin.display()
    );
    bin
}

/// Whether process `pid` still runs this test's binary (a zombie or a reused pid does not).
fn alive(pid: u32) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    // `pid (comm) S …`: the state follows the last `)`.
    let state = stat.rsplit(')').next().unwrap_or("").trim_start().chars().next();
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    !matches!(state, Some('Z') | Some('X') | None) && String::from_utf8_lossy(&cmdline).contains("ecs_parent")
}

/// The directory the parents' address resolver keeps its task → URL map and pids in. On
/// drop every task process still running is killed (agents first: their runners die with
/// them) and the directory is removed, whether the test passed or not.
struct TaskDir(PathBuf);

impl TaskDir {
    fn new() -> TaskDir {
        let dir =
            std::env::temp_dir().join(format!("flame-ecs-two-parents-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).unwrap();
        TaskDir(dir)
    }

    fn pid(&self, arn: &str, kind: &str) -> Option<u32> {
        let id = arn.rsplit('/').next().unwrap();
        std::fs::read_to_string(self.0.join(format!("{id}.{kind}")))
            .ok()
            .and_then(|p| p.trim().parse().ok())
    }

    /// Whether the agent or the runner of task `arn` still runs.
    fn task_alive(&self, arn: &str) -> bool {
        ["pid", "runner-pid"]
            .iter()
            .filter_map(|kind| self.pid(arn, kind))
            .any(alive)
    }

    fn pids(&self, kind: &str) -> Vec<u32> {
        let suffix = format!(".{kind}");
        std::fs::read_dir(&self.0)
            .map(|entries| {
                entries
                    .filter_map(|e| e.ok())
                    .filter(|e| e.file_name().to_string_lossy().ends_with(&suffix))
                    .filter_map(|e| std::fs::read_to_string(e.path()).ok())
                    .filter_map(|p| p.trim().parse().ok())
                    .collect()
            })
            .unwrap_or_default()
    }
}

impl Drop for TaskDir {
    fn drop(&mut self) {
        for kind in ["pid", "runner-pid"] {
            for pid in self.pids(kind) {
                if alive(pid) {
                    let _ = std::process::Command::new("kill")
                        .args(["-KILL", &pid.to_string()])
                        .status();
                }
            }
        }
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Starts `ecs_parent parent` for `app` on the moto world with `runners` runners (callers
/// keeping `call_ms` calls in flight when > 0), its tasks mapped through `dir`.
async fn start_parent(
    name: &'static str,
    world: &MotoWorld,
    app: &str,
    dir: &TaskDir,
    runners: usize,
    call_ms: u64,
) -> Parent {
    let mut command = Command::new(example_binary());
    command
        .arg("parent")
        .arg(moto_url())
        .args([&world.cluster, &world.task_definition, &world.subnet, app])
        .arg(&dir.0)
        .arg(runners.to_string())
        .arg(call_ms.to_string())
        .env("FLAME_PARENT_TIMEOUT", WINDOW_MS.to_string());
    Parent::start(name, command, Duration::from_secs(120)).await
}

/// Tasks of the cluster labelled with parent `parent` (any desired status): ARN → (desired
/// status, stopped reason).
async fn tasks_of(world: &MotoWorld, parent: &str) -> BTreeMap<String, (String, String)> {
    let mut arns = Vec::new();
    for status in [
        aws_sdk_ecs::types::DesiredStatus::Running,
        aws_sdk_ecs::types::DesiredStatus::Stopped,
    ] {
        let out = world
            .client
            .list_tasks()
            .cluster(&world.cluster)
            .desired_status(status)
            .send()
            .await
            .unwrap();
        arns.extend(out.task_arns().iter().cloned());
    }
    let mut tasks = BTreeMap::new();
    if arns.is_empty() {
        return tasks;
    }
    let out = world
        .client
        .describe_tasks()
        .cluster(&world.cluster)
        .set_tasks(Some(arns))
        .include(aws_sdk_ecs::types::TaskField::Tags)
        .send()
        .await
        .unwrap();
    for t in out.tasks() {
        let ours = t
            .tags()
            .iter()
            .any(|tag| tag.key() == Some("flame.parent") && tag.value() == Some(parent));
        if ours {
            tasks.insert(
                t.task_arn().unwrap().to_owned(),
                (
                    t.desired_status().unwrap_or_default().to_owned(),
                    t.stopped_reason().unwrap_or_default().to_owned(),
                ),
            );
        }
    }
    tasks
}

fn running(tasks: &BTreeMap<String, (String, String)>) -> Vec<String> {
    tasks
        .iter()
        .filter(|(_, (desired, _))| desired == "RUNNING")
        .map(|(arn, _)| arn.clone())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_live_parents_never_reap_each_other_and_a_killed_ones_tasks_are_stopped() {
    if !moto_available().await {
        return;
    }
    let world = MotoWorld::new("two-parents").await;
    let dir = TaskDir::new();
    let app = format!("two-parents-{}", &uuid::Uuid::new_v4().simple().to_string()[..8]);

    // Parent A: two tasks, a call in flight on each, all the time.
    let mut a = start_parent("A", &world, &app, &dir, 2, CALL_MS).await;
    let a_tasks = running(&tasks_of(&world, &a.id).await);
    assert_eq!(a_tasks.len(), 2, "A's tasks: {a_tasks:?}");
    a.expect("CALL_START", Duration::from_secs(30)).await;

    // Parent B of the same app starts (its start reaps in the background) with one task.
    let mut b = start_parent("B", &world, &app, &dir, 1, 0).await;
    let b_tasks = running(&tasks_of(&world, &b.id).await);
    assert_eq!(b_tasks.len(), 1, "B's task: {b_tasks:?}");

    // B reaps again while A's calls are in flight: it stops nothing of A's.
    let (ended, reap_start, reap_end) = b.reap(Duration::from_secs(90)).await;
    assert_eq!(ended, 0, "B's reap stopped {ended} task(s) of live parent A");
    let after = tasks_of(&world, &a.id).await;
    assert_eq!(running(&after), a_tasks, "A's tasks after B's reap: {after:?}");
    for arn in &a_tasks {
        assert!(dir.task_alive(arn), "A's runner of {arn} is gone");
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

    // A dies (SIGKILL). Its runners exit by their own failsafe within the window (plus the
    // drain of the call in flight); moto, which never hears of it, still says RUNNING.
    a.kill9().await;
    let killed = Instant::now();
    let bound = Duration::from_millis(WINDOW_MS + CALL_MS) + Duration::from_secs(30);
    while a_tasks.iter().any(|arn| dir.task_alive(arn)) {
        assert!(
            killed.elapsed() < bound,
            "A's runners outlived their parent by more than {bound:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    eprintln!(
        "A's runners gone {:?} after A's SIGKILL (window {WINDOW_MS} ms)",
        killed.elapsed()
    );
    assert_eq!(
        running(&tasks_of(&world, &a.id).await),
        a_tasks,
        "moto still says A's tasks run"
    );

    // B's reap stops them: they do not answer for the unreachable window (B's window plus
    // its boot timeout). B's own task keeps running.
    let (ended, reap_start, reap_end) = b.reap(Duration::from_secs(120)).await;
    assert_eq!(ended, 2, "B's reap after A's death");
    let after = tasks_of(&world, &a.id).await;
    assert!(running(&after).is_empty(), "A's tasks after B's reap: {after:?}");
    for (arn, (_, reason)) in &after {
        assert!(
            reason.starts_with(&format!(
                "flame: reaped, parent {} is gone: it did not answer for",
                a.id
            )),
            "{arn}: {reason}"
        );
    }
    assert_eq!(running(&tasks_of(&world, &b.id).await), b_tasks);
    assert!(dir.task_alive(&b_tasks[0]), "B's runner is gone");
    eprintln!("B's reap stopped A's two tasks in {} ms", reap_end - reap_start);

    b.exit(Duration::from_secs(60)).await;
    assert!(world.running_tasks().await.is_empty(), "tasks left running");
    let until = Instant::now() + Duration::from_secs(30);
    while dir.task_alive(&b_tasks[0]) {
        assert!(Instant::now() < until, "B's stopped task's runner still runs");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
