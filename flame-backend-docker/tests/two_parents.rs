//! Two live parents of one app side by side on a real dockerd (issue 13, "friendly fire"):
//! each parent is a real process (`docker_runner parent`, a flame parent with an elastic pool
//! of Docker runners). Parent B starting and reaping leaves parent A's runners alone while A's
//! calls are in flight; after A is killed with SIGKILL its runners end by their own failsafe,
//! and B's reap removes what is left (a runner frozen before its failsafe could fire).
#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use flame_core::backend::labels;
use std::collections::BTreeMap;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt};
use tokio::process::{Child, ChildStdin, Command};
use tokio::sync::mpsc;
use tokio::time::Instant;

/// The parents' failsafe window (`FLAME_PARENT_TIMEOUT`): the same for both, as replicas of
/// one app share their configuration. Each pings its runners every second.
const WINDOW_MS: u64 = 6_000;
/// How long each of A's calls stays in flight.
const CALL_MS: u64 = 8_000;

/// One `docker_runner parent` process: its stdout lines, its stdin, killed on drop.
struct Parent {
    name: &'static str,
    child: Child,
    stdin: Option<ChildStdin>,
    lines: mpsc::UnboundedReceiver<String>,
    /// Every line it printed so far (for `CALL_*` checks and failure messages).
    seen: Arc<Mutex<Vec<String>>>,
    id: String,
}

impl Parent {
    async fn start(name: &'static str, app: &str, runners: usize, call_ms: u64) -> Parent {
        let mut child = Command::new(runner_binary())
            .args(["parent", &runner_image(), app])
            .arg(runners.to_string())
            .arg(call_ms.to_string())
            .env_remove("FLAME_MODE")
            .env_remove("FLAME_PARENT_ID")
            .env_remove("FLAME_RUNNER_URL")
            .env_remove("FLAME_SPAWN_DEPTH")
            .env("FLAME_PARENT_TIMEOUT", WINDOW_MS.to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, lines) = mpsc::unbounded_channel();
        let seen: Arc<Mutex<Vec<String>>> = Arc::default();
        let record = seen.clone();
        tokio::spawn(async move {
            let mut out = tokio::io::BufReader::new(stdout).lines();
            while let Ok(Some(line)) = out.next_line().await {
                record.lock().unwrap().push(line.clone());
                let _ = tx.send(line);
            }
        });
        let mut parent = Parent {
            name,
            stdin: child.stdin.take(),
            child,
            lines,
            seen,
            id: String::new(),
        };
        let line = parent.expect("PARENT ", Duration::from_secs(60)).await;
        parent.id = line.trim_start_matches("PARENT ").trim().to_owned();
        parent.expect("READY", Duration::from_secs(120)).await;
        parent
    }

    /// The next line starting with `prefix` (earlier lines are skipped), within `within`.
    async fn expect(&mut self, prefix: &str, within: Duration) -> String {
        let until = Instant::now() + within;
        loop {
            match tokio::time::timeout_at(until, self.lines.recv()).await {
                Ok(Some(line)) if line.starts_with(prefix) => return line,
                Ok(Some(_)) => {}
                Ok(None) => panic!(
                    "parent {} exited before printing {prefix:?}; it printed: {:?}",
                    self.name,
                    self.seen()
                ),
                Err(_) => panic!(
                    "parent {} printed no {prefix:?} within {within:?}; it printed: {:?}",
                    self.name,
                    self.seen()
                ),
            }
        }
    }

    fn seen(&self) -> Vec<String> {
        self.seen.lock().unwrap().clone()
    }

    /// Runs the parent's own reap; returns (ended, start unix ms, end unix ms).
    async fn reap(&mut self, within: Duration) -> (usize, u128, u128) {
        let stdin = self.stdin.as_mut().unwrap();
        stdin.write_all(b"reap\n").await.unwrap();
        stdin.flush().await.unwrap();
        // `REAPED …` or `REAP_ERR …`.
        let line = self.expect("REAP", within).await;
        if let Some(err) = line.strip_prefix("REAP_ERR ") {
            panic!("parent {}'s reap failed: {err}", self.name);
        }
        let f: Vec<&str> = line.split_whitespace().collect();
        (
            f[1].parse().unwrap(),
            f[2].parse().unwrap(),
            f[3].parse().unwrap(),
        )
    }

    /// Asks the parent to shut down (its runners are ended) and waits for it to exit.
    async fn exit(mut self, within: Duration) {
        if let Some(mut stdin) = self.stdin.take() {
            let _ = stdin.write_all(b"exit\n").await;
        }
        let status = tokio::time::timeout(within, self.child.wait())
            .await
            .unwrap_or_else(|_| panic!("parent {} did not shut down within {within:?}", self.name))
            .unwrap();
        assert!(
            status.success(),
            "parent {} exited with {status}; it printed: {:?}",
            self.name,
            self.seen()
        );
    }

    /// SIGKILL: no clean-up code runs in the parent.
    async fn kill9(&mut self) {
        self.child.start_kill().unwrap();
        self.child.wait().await.unwrap();
    }

    /// Its calls so far, by (caller, number).
    fn calls(&self) -> BTreeMap<(u32, u64), Call> {
        let mut calls = BTreeMap::new();
        for line in self.seen() {
            let f: Vec<&str> = line.splitn(5, ' ').collect();
            if f.len() < 4 || !f[0].starts_with("CALL_") {
                continue;
            }
            let key = (f[1].parse().unwrap(), f[2].parse().unwrap());
            let at: u128 = f[3].parse().unwrap();
            let entry = calls.entry(key).or_insert((0, None, None));
            match f[0] {
                "CALL_START" => entry.0 = at,
                "CALL_OK" => entry.1 = Some(at),
                _ => {
                    entry.1 = Some(at);
                    entry.2 = Some(f.get(4).unwrap_or(&"").to_string());
                }
            }
        }
        calls
    }
}

/// One call of a parent: start (unix ms), end if it ended, error if it failed.
type Call = (u128, Option<u128>, Option<String>);

/// Ids of the containers (any state) of `app` labelled with parent `parent`, through the CLI.
fn containers_of_parent(app: &str, parent: &str) -> Vec<String> {
    let out = std::process::Command::new("docker")
        .args(["ps", "-aq", "--no-trunc"])
        .args(["--filter", &format!("label={}={app}", labels::APP)])
        .args(["--filter", &format!("label={}={parent}", labels::PARENT)])
        .output()
        .unwrap();
    let mut ids: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .map(str::to_owned)
        .collect();
    ids.sort();
    ids
}

fn container_state(id: &str) -> Option<String> {
    let out = std::process::Command::new("docker")
        .args(["inspect", "--format", "{{.State.Status}}", id])
        .output()
        .unwrap();
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

async fn wait_gone(id: &str, within: Duration) -> bool {
    let until = Instant::now() + within;
    while Instant::now() < until {
        if container_state(id).is_none() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    container_state(id).is_none()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_live_parents_never_reap_each_other_and_a_killed_ones_runners_go() {
    if !docker_available() {
        return;
    }
    let app = unique_app("two-parents");
    let _cleanup = Cleanup::new(&app);

    // Parent A: two runners, a call in flight on each, all the time.
    let mut a = Parent::start("A", &app, 2, CALL_MS).await;
    let a_runners = containers_of_parent(&app, &a.id);
    assert_eq!(a_runners.len(), 2, "A's runners: {a_runners:?}");
    a.expect("CALL_START", Duration::from_secs(30)).await;

    // Parent B of the same app starts (its start reaps in the background) with one runner.
    let mut b = Parent::start("B", &app, 1, 0).await;
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
