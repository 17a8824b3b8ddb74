//! [`ParentProcess`]: drives a real flame parent process in multi-parent tests (two live
//! parents of one app, `kill -9` of one, the other's reap). The process speaks a small line
//! protocol on stdout/stdin, the one the Docker and ECS test parents implement:
//!
//! - it prints `PARENT <parent id>`, then `READY` once its runners serve;
//! - callers print `CALL_START <caller> <n> <unix-ms>`, then `CALL_OK <caller> <n> <unix-ms>` or
//!   `CALL_ERR <caller> <n> <unix-ms> <error>`;
//! - on stdin, `reap` makes it reap and print `REAPED <ended> <start-ms> <end-ms>` (or
//!   `REAP_ERR <error>`); `exit` (or the end of stdin) shuts it down cleanly.
//!
//! Like the conformance checks, its methods panic with a message that says what went wrong.

use std::collections::BTreeMap;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt};
use tokio::process::{Child, ChildStdin, Command};
use tokio::sync::mpsc;
use tokio::time::Instant;

/// One call of a parent: start (unix ms), end if it ended, error if it failed.
pub type Call = (u128, Option<u128>, Option<String>);

/// A running parent process: its stdout lines, its stdin; killed when dropped.
pub struct ParentProcess {
    name: &'static str,
    child: Child,
    stdin: Option<ChildStdin>,
    lines: mpsc::UnboundedReceiver<String>,
    seen: Arc<Mutex<Vec<String>>>,
    /// Its parent id (from its `PARENT` line).
    pub id: String,
}

impl ParentProcess {
    /// Runs `command` (stdin, stdout piped; stderr inherited; the runner variables of the test
    /// process removed) and waits for `PARENT` (60 s) and `READY` (`ready_within`).
    pub async fn start(name: &'static str, mut command: Command, ready_within: Duration) -> ParentProcess {
        let mut child = command
            .env_remove("FLAME_MODE")
            .env_remove("FLAME_PARENT_ID")
            .env_remove("FLAME_RUNNER_URL")
            .env_remove("FLAME_SPAWN_DEPTH")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start parent {name}: {e}"));
        let Some(stdout) = child.stdout.take() else {
            panic!("parent {name}: stdout not captured")
        };
        let (tx, lines) = mpsc::unbounded_channel();
        let seen: Arc<Mutex<Vec<String>>> = Arc::default();
        let record = seen.clone();
        tokio::spawn(async move {
            let mut out = tokio::io::BufReader::new(stdout).lines();
            while let Ok(Some(line)) = out.next_line().await {
                record
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .push(line.clone());
                let _ = tx.send(line);
            }
        });
        let mut parent = ParentProcess {
            name,
            stdin: child.stdin.take(),
            child,
            lines,
            seen,
            id: String::new(),
        };
        let line = parent.expect("PARENT ", Duration::from_secs(60)).await;
        parent.id = line.trim_start_matches("PARENT ").trim().to_owned();
        parent.expect("READY", ready_within).await;
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

    /// Every line it printed so far.
    pub fn seen(&self) -> Vec<String> {
        self.seen.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Runs the parent's own reap; returns (ended, start unix ms, end unix ms).
    pub async fn reap(&mut self, within: Duration) -> (usize, u128, u128) {
        let name = self.name;
        let Some(stdin) = self.stdin.as_mut() else {
            panic!("parent {name}: stdin already closed")
        };
        if let Err(e) = async {
            stdin.write_all(b"reap\n").await?;
            stdin.flush().await
        }
        .await
        {
            panic!("parent {name}: cannot write to its stdin: {e}");
        }
        // `REAPED …` or `REAP_ERR …`.
        let line = self.expect("REAP", within).await;
        if let Some(err) = line.strip_prefix("REAP_ERR ") {
            panic!("parent {name}'s reap failed: {err}");
        }
        let f: Vec<&str> = line.split_whitespace().collect();
        let field = |i: usize| -> u128 {
            f.get(i)
                .and_then(|v| v.parse().ok())
                .unwrap_or_else(|| panic!("parent {name}: malformed reap line {line:?}"))
        };
        (field(1) as usize, field(2), field(3))
    }

    /// Asks the parent to shut down (its runners are ended) and waits for it to exit, which it
    /// must do successfully.
    pub async fn exit(mut self, within: Duration) {
        if let Some(mut stdin) = self.stdin.take() {
            let _ = stdin.write_all(b"exit\n").await;
        }
        let status = match tokio::time::timeout(within, self.child.wait()).await {
            Ok(Ok(status)) => status,
            Ok(Err(e)) => panic!("parent {}: waiting for it failed: {e}", self.name),
            Err(_) => panic!("parent {} did not shut down within {within:?}", self.name),
        };
        assert!(
            status.success(),
            "parent {} exited with {status}; it printed: {:?}",
            self.name,
            self.seen()
        );
    }

    /// SIGKILL: no clean-up code runs in the parent.
    pub async fn kill9(&mut self) {
        let _ = self.child.start_kill();
        let _ = self.child.wait().await;
    }

    /// Its calls so far, by (caller, number).
    pub fn calls(&self) -> BTreeMap<(u32, u64), Call> {
        let mut calls = BTreeMap::new();
        for line in self.seen() {
            let f: Vec<&str> = line.splitn(5, ' ').collect();
            if f.len() < 4 || !f[0].starts_with("CALL_") {
                continue;
            }
            let (Ok(caller), Ok(n), Ok(at)) = (f[1].parse(), f[2].parse(), f[3].parse::<u128>()) else {
                continue;
            };
            let entry = calls.entry((caller, n)).or_insert((0, None, None));
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
