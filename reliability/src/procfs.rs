//! Processes seen through `/proc` (Linux): memory, liveness, runners found by their
//! environment; signals; and guards that leave nothing running when a test fails.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A field of `/proc/<pid>/status` in KiB (e.g. `VmRSS`, `VmHWM`).
pub fn status_kb(pid: u32, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status.lines().find_map(|line| {
        let rest = line.strip_prefix(field)?.strip_prefix(':')?;
        rest.split_whitespace().next()?.parse().ok()
    })
}

/// The resident set size (`VmRSS`) of `pid`, in KiB.
pub fn rss_kb(pid: u32) -> Option<u64> {
    status_kb(pid, "VmRSS")
}

/// Whether `pid` runs (a zombie does not).
pub fn alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => !stat
            .rsplit(')')
            .next()
            .is_some_and(|rest| rest.trim_start().starts_with('Z')),
        Err(_) => false,
    }
}

/// Live processes whose environment holds `key=value`.
pub fn pids_with_env(key: &str, value: &str) -> Vec<u32> {
    let needle = format!("{key}={value}");
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let mut pids: Vec<u32> = entries
        .filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()))
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/environ"))
                .map(|env| env.split(|b| *b == 0).any(|v| v == needle.as_bytes()))
                .unwrap_or(false)
        })
        .filter(|pid| alive(*pid))
        .collect();
    pids.sort_unstable();
    pids
}

/// Sends signal `sig` (`KILL`, `TERM`, ...) to `pid` with `kill(1)`.
pub fn signal(pid: u32, sig: &str) {
    let _ = Command::new("kill")
        .args([format!("-{sig}"), pid.to_string()])
        .stderr(Stdio::null())
        .status();
}

/// Polls `f` every 20 ms until it holds or `within` passes; returns how long it took, or
/// `None` if it never held.
pub fn wait_until(within: Duration, mut f: impl FnMut() -> bool) -> Option<Duration> {
    let start = Instant::now();
    loop {
        if f() {
            return Some(start.elapsed());
        }
        if start.elapsed() >= within {
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Async [`wait_until`]: polls without blocking the runtime.
pub async fn wait_until_async(within: Duration, mut f: impl FnMut() -> bool) -> Option<Duration> {
    let start = Instant::now();
    loop {
        if f() {
            return Some(start.elapsed());
        }
        if start.elapsed() >= within {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Kills the child (and reaps it) when dropped, also when a test fails.
#[derive(Debug)]
pub struct ChildGuard(pub Child);

impl ChildGuard {
    /// The child's pid.
    pub fn pid(&self) -> u32 {
        self.0.id()
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// SIGKILLs every process whose environment holds `key=value` when dropped: no runner outlives
/// a failed test.
#[derive(Debug)]
pub struct KillByEnv(pub String, pub String);

impl KillByEnv {
    /// A guard for processes with `key=value` in their environment.
    pub fn new(key: impl Into<String>, value: impl Into<String>) -> Self {
        KillByEnv(key.into(), value.into())
    }
}

impl Drop for KillByEnv {
    fn drop(&mut self) {
        for pid in pids_with_env(&self.0, &self.1) {
            signal(pid, "KILL");
        }
    }
}

/// A directory under the system temp dir, removed when dropped.
#[derive(Debug)]
pub struct TempDir(pub std::path::PathBuf);

impl TempDir {
    /// A fresh, empty directory named `<prefix>-<uuid>`.
    pub fn new(prefix: &str) -> std::io::Result<TempDir> {
        let dir = std::env::temp_dir().join(format!("{prefix}-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir)?;
        Ok(TempDir(dir))
    }

    /// The path.
    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Starts `program` with `env` (stdout piped, stderr inherited unless `quiet`), reads lines
/// until one starts with `prefix`, and returns the guard and the rest of that line. Fails if the
/// process ends or says nothing matching within `within`.
pub fn start_and_wait_for_line(
    program: &Path,
    env: &[(&str, &str)],
    prefix: &str,
    within: Duration,
) -> std::io::Result<(ChildGuard, String)> {
    let mut child = Command::new(program)
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()?;
    let stdout = child
        .stdout
        .take()
        .ok_or_else(|| std::io::Error::other("stdout not captured"))?;
    let guard = ChildGuard(child);
    let (tx, rx) = std::sync::mpsc::channel();
    let prefix_owned = prefix.to_owned();
    std::thread::spawn(move || {
        let mut lines = BufReader::new(stdout).lines();
        let found = lines
            .by_ref()
            .map_while(Result::ok)
            .find_map(|l| l.strip_prefix(&prefix_owned).map(|r| r.trim().to_owned()));
        let _ = tx.send(found);
        // Keep draining so the child never blocks on a full pipe.
        for _ in lines {}
    });
    match rx.recv_timeout(within) {
        Ok(Some(rest)) => Ok((guard, rest)),
        Ok(None) => Err(std::io::Error::other(format!(
            "{} exited without printing `{prefix}`",
            program.display()
        ))),
        Err(_) => Err(std::io::Error::other(format!(
            "{} did not print `{prefix}` within {within:?}",
            program.display()
        ))),
    }
}
