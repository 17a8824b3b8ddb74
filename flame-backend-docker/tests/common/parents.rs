//! Real `docker_runner parent` processes for the multi-parent tests: a flame parent with an
//! elastic pool of Docker runners (and optionally a LocalProcess pool), driven over stdin/stdout.
#![allow(dead_code)]

use super::*;
use flame_core::backend::labels;
use std::collections::BTreeMap;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt};
use tokio::process::{Child, ChildStdin, Command};
use tokio::sync::mpsc;
use tokio::time::Instant;

/// One `docker_runner parent` process: its stdout lines, its stdin, killed on drop.
pub struct Parent {
    name: &'static str,
    child: Child,
    stdin: Option<ChildStdin>,
    lines: mpsc::UnboundedReceiver<String>,
    /// Every line it printed so far (for `CALL_*` checks and failure messages).
    seen: Arc<Mutex<Vec<String>>>,
    pub id: String,
}

impl Parent {
    /// Starts `docker_runner parent` with `runners` Docker runners (callers keeping `call_ms`
    /// calls in flight when > 0), failsafe window `window_ms`, and — with `local_state` — a
    /// second pool of one LocalProcess runner whose pid files live there.
    pub async fn start(
        name: &'static str,
        app: &str,
        runners: usize,
        call_ms: u64,
        window_ms: u64,
        local_state: Option<&std::path::Path>,
    ) -> Parent {
        let mut child = Command::new(runner_binary())
            .args(["parent", &runner_image(), app])
            .arg(runners.to_string())
            .arg(call_ms.to_string())
            .env_remove("FLAME_MODE")
            .env_remove("FLAME_PARENT_ID")
            .env_remove("FLAME_RUNNER_URL")
            .env_remove("FLAME_SPAWN_DEPTH")
            .env("FLAME_PARENT_TIMEOUT", window_ms.to_string())
            .env(
                "DOCKER_RUNNER_LOCAL_POOL",
                local_state.map(|d| d.display().to_string()).unwrap_or_default(),
            )
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
    pub async fn expect(&mut self, prefix: &str, within: Duration) -> String {
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

    pub fn seen(&self) -> Vec<String> {
        self.seen.lock().unwrap().clone()
    }

    /// Runs the parent's own reap; returns (ended, start unix ms, end unix ms).
    pub async fn reap(&mut self, within: Duration) -> (usize, u128, u128) {
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
    pub async fn exit(mut self, within: Duration) {
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
    pub async fn kill9(&mut self) {
        self.child.start_kill().unwrap();
        self.child.wait().await.unwrap();
    }

    /// Its calls so far, by (caller, number).
    pub fn calls(&self) -> BTreeMap<(u32, u64), Call> {
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
pub type Call = (u128, Option<u128>, Option<String>);

/// Ids of the containers (any state) of `app` labelled with parent `parent`, through the CLI.
pub fn containers_of_parent(app: &str, parent: &str) -> Vec<String> {
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

pub fn container_state(id: &str) -> Option<String> {
    let out = std::process::Command::new("docker")
        .args(["inspect", "--format", "{{.State.Status}}", id])
        .output()
        .unwrap();
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

pub async fn wait_gone(id: &str, within: Duration) -> bool {
    let until = Instant::now() + within;
    while Instant::now() < until {
        if container_state(id).is_none() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    container_state(id).is_none()
}
