// Helpers for the tests that start real processes (included with `mod`): where the example
// binaries are, finding runner processes by their environment, and cleanup guards.
#![allow(dead_code)]
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// `target/<profile>/examples/<name>`: cargo builds the examples before running tests.
pub fn example_bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let profile_dir = exe.parent().and_then(|deps| deps.parent()).unwrap();
    let path = profile_dir.join("examples").join(name);
    assert!(
        path.exists(),
        "{} is missing: build it with `cargo build --example {name}` (cargo test does)",
        path.display()
    );
    path
}

/// Live (not zombie) processes whose environment holds `key=value`.
pub fn pids_with_env(key: &str, value: &str) -> Vec<u32> {
    let needle = format!("{key}={value}");
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()))
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/environ"))
                .map(|env| env.split(|b| *b == 0).any(|v| v == needle.as_bytes()))
                .unwrap_or(false)
        })
        .filter(|pid| alive(*pid))
        .collect()
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

/// Polls `f` every 50 ms until it holds or `within` passes; returns whether it held.
pub fn wait_until(within: Duration, mut f: impl FnMut() -> bool) -> bool {
    let until = Instant::now() + within;
    loop {
        if f() {
            return true;
        }
        if Instant::now() >= until {
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

pub fn signal(pid: u32, sig: &str) {
    let _ = Command::new("kill")
        .args([format!("-{sig}"), pid.to_string()])
        .stderr(Stdio::null())
        .status();
}

/// Kills the child (and waits for it) when dropped, also when a test fails.
pub struct ChildGuard(pub Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// SIGKILLs every process whose environment holds `key=value` when dropped: no runner
/// outlives a failed test.
pub struct KillByEnv(pub String, pub String);

impl Drop for KillByEnv {
    fn drop(&mut self) {
        for pid in pids_with_env(&self.0, &self.1) {
            signal(pid, "KILL");
        }
    }
}

/// The variable every process of a fenced run inherits.
pub const MARKER: &str = "FLAME_RUNAWAY_TEST";
/// Past this many processes the watchdog of `runaway.rs` kills the whole run.
pub const KILL_AT: usize = 12;

/// The fences around one run of a program that starts runners: a cgroup with `pids.max` when
/// this machine lets us make one, and always a watchdog thread that counts the run's processes
/// every 10 ms (by a marker variable every descendant inherits) and kills them all past
/// `kill_at`. Dropping it kills whatever of the run is left.
pub struct Fence {
    pub marker: String,
    pub cgroup: Option<PathBuf>,
    stop: Arc<AtomicBool>,
    pub max_seen: Arc<AtomicUsize>,
    pub tripped: Arc<AtomicBool>,
    watchdog: Option<std::thread::JoinHandle<()>>,
}

impl Fence {
    pub fn new(kill_at: usize) -> Fence {
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
                    if pids.len() > kill_at {
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
    pub fn command(&self, program: PathBuf, args: &[&str]) -> Command {
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

impl Fence {
    /// The run's live processes.
    pub fn processes(&self) -> Vec<u32> {
        pids_with_env(MARKER, &self.marker)
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
pub fn kill_all(pids: &[u32]) {
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
pub fn pids_cgroup(name: &str) -> Option<PathBuf> {
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
