//! [`LocalProcess`]: runners as child processes of this executable — the embedded default,
//! nothing to install.
//!
//! - **Spawn** runs the program (by default [`std::env::current_exe`] with this process's own
//!   arguments) with the request's environment plus `FLAME_PARENT_PID`, in its own process
//!   group (a Ctrl-C in the terminal reaches the parent only; the parent then ends its runners
//!   in order). It reads the child's stdout until the line `FLAME_READY <url>` (within
//!   `boot_timeout`, else the child is killed and spawn fails with `SPAWN_TIMEOUT`) and returns
//!   that endpoint; core's readiness probe then pings it until healthy. Later stdout/stderr
//!   lines go to `tracing` (target `flame::runner`) with the runner id; the last stderr lines
//!   and the exit status explain a runner that exited before it was ready
//!   ([`Backend::exit_details`]).
//! - **Children are forked from one long-lived thread** owned by this module. Linux's
//!   `PR_SET_PDEATHSIG` (which the runner sets on itself, see [`crate::runner::failsafe`])
//!   fires when the *thread* that forked the child exits; forking from tokio's worker or
//!   blocking threads would kill runners when such a thread retires (DESIGN.md §4).
//! - **Terminate** sends `SIGTERM` (the runner drains), then `SIGKILL` after the grace time;
//!   children are also `kill_on_drop`.
//! - **Reap**: every runner has a pid file in a per-app state directory
//!   (`$XDG_RUNTIME_DIR/flame/<app>/`, else `<tmp>/flame-<uid>/<app>/`). `reap` never ends a
//!   live parent's runner ([`super::reap`]): a runner whose parent process still runs is
//!   spared, one whose parent process is gone is orphaned; when the parent process is this one
//!   (another flame handle in this process) the shared health rule decides. It checks
//!   `/proc/<pid>/environ` for the runner id so a reused pid is never hit.

use super::{Backend, ReapCandidate, ReapScope, RunnerHandle, RunnerState, SpawnRequest};
use crate::error::{Error, ErrorCode, Result};
use crate::transport::Endpoint;
use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use std::collections::{HashMap, VecDeque};
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{mpsc, Arc, Mutex, OnceLock};
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::process::{Child, Command};
use tokio::time::Instant;

/// Lines of a child's stderr kept to explain a failed start.
const STDERR_TAIL: usize = 20;

/// Runners as local child processes (see the [module docs](self)).
///
/// ```no_run
/// use flame_core::backend::LocalProcess;
/// use std::time::Duration;
/// // The default: this executable, same arguments, started in runner mode.
/// let backend = LocalProcess::current_exe().grace(Duration::from_secs(5));
/// // Or any flame program (tests use the example binaries this way).
/// let other = LocalProcess::command("target/debug/examples/interop", Vec::<String>::new());
/// ```
#[derive(Clone)]
pub struct LocalProcess {
    inner: Arc<Inner>,
}

struct Inner {
    program: std::result::Result<PathBuf, String>,
    args: Vec<OsString>,
    env: Vec<(String, String)>,
    grace: Duration,
    state_dir: Option<PathBuf>,
    /// Children this backend started and has not ended, by pid.
    children: Mutex<HashMap<String, Child>>,
    /// The last stderr lines of each child, by pid (for [`Backend::exit_details`]).
    tails: Mutex<HashMap<String, Tail>>,
}

/// The last lines of a child's stderr.
type Tail = Arc<Mutex<VecDeque<String>>>;

impl std::fmt::Debug for LocalProcess {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalProcess")
            .field("program", &self.inner.program)
            .field("args", &self.inner.args)
            .field("grace", &self.inner.grace)
            .finish()
    }
}

/// What a pid file records about a runner.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct PidRecord {
    /// The runner's process id.
    pub pid: u32,
    /// The parent's process id.
    pub parent_pid: u32,
    /// The parent's flame id (`FLAME_PARENT_ID`).
    pub parent_id: String,
    /// The runner id.
    pub runner_id: String,
    /// The pool name.
    pub pool: String,
    /// Where the runner listens (for the reap rule's health probe).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
}

impl LocalProcess {
    /// Runs this executable again, with this process's arguments: the same program becomes a
    /// runner because the environment says `FLAME_MODE=runner`.
    pub fn current_exe() -> Self {
        let program = std::env::current_exe()
            .map_err(|e| format!("cannot find the current executable to start runners from: {e}"));
        LocalProcess::new(program, std::env::args_os().skip(1).collect())
    }

    /// Runs `program` with `args` (for tests, or a separate runner binary).
    pub fn command<I, S>(program: impl Into<PathBuf>, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<OsString>,
    {
        LocalProcess::new(Ok(program.into()), args.into_iter().map(Into::into).collect())
    }

    fn new(program: std::result::Result<PathBuf, String>, args: Vec<OsString>) -> Self {
        LocalProcess {
            inner: Arc::new(Inner {
                program,
                args,
                env: Vec::new(),
                grace: Duration::from_secs(5),
                state_dir: None,
                children: Mutex::new(HashMap::new()),
                tails: Mutex::new(HashMap::new()),
            }),
        }
    }

    fn edit(mut self, f: impl FnOnce(&mut Inner)) -> Self {
        match Arc::get_mut(&mut self.inner) {
            Some(inner) => f(inner),
            None => {
                let old = &self.inner;
                let mut inner = Inner {
                    program: old.program.clone(),
                    args: old.args.clone(),
                    env: old.env.clone(),
                    grace: old.grace,
                    state_dir: old.state_dir.clone(),
                    children: Mutex::new(HashMap::new()),
                    tails: Mutex::new(HashMap::new()),
                };
                f(&mut inner);
                self.inner = Arc::new(inner);
            }
        }
        self
    }

    /// How long `terminate` waits after `SIGTERM` before `SIGKILL` (default 5 s).
    pub fn grace(self, grace: Duration) -> Self {
        self.edit(|i| i.grace = grace)
    }

    /// Adds an environment variable for every runner (the request's variables win).
    pub fn env(self, key: impl Into<String>, value: impl Into<String>) -> Self {
        let (k, v) = (key.into(), value.into());
        self.edit(|i| i.env.push((k, v)))
    }

    /// Sets the directory pid files go to (default: see [`LocalProcess::default_state_dir`]);
    /// one subdirectory per app is made inside it.
    pub fn state_dir(self, dir: impl Into<PathBuf>) -> Self {
        let dir = dir.into();
        self.edit(|i| i.state_dir = Some(dir))
    }

    /// `$XDG_RUNTIME_DIR/flame`, else `<tmp>/flame-<uid>`.
    pub fn default_state_dir() -> PathBuf {
        match std::env::var_os("XDG_RUNTIME_DIR") {
            Some(d) if !d.is_empty() && Path::new(&d).is_dir() => PathBuf::from(d).join("flame"),
            _ => std::env::temp_dir().join(format!("flame-{}", uid())),
        }
    }

    /// The directory holding the pid files of `app`'s runners.
    pub fn app_dir(&self, app: &str) -> PathBuf {
        let base = self
            .inner
            .state_dir
            .clone()
            .unwrap_or_else(LocalProcess::default_state_dir);
        let safe: String = app
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        base.join(if safe.is_empty() || safe.starts_with('.') {
            format!("app{safe}")
        } else {
            safe
        })
    }

    /// The pid records of `app`'s runners found in the state directory.
    pub fn records(&self, app: &str) -> Vec<PidRecord> {
        let Ok(entries) = std::fs::read_dir(self.app_dir(app)) else {
            return Vec::new();
        };
        entries
            .filter_map(|e| e.ok())
            .filter(|e| e.path().extension().is_some_and(|x| x == "json"))
            .filter_map(|e| std::fs::read(e.path()).ok())
            .filter_map(|b| serde_json::from_slice(&b).ok())
            .collect()
    }

    /// How many children this backend started and has not ended.
    pub fn live_children(&self) -> usize {
        self.children().len()
    }

    fn children(&self) -> std::sync::MutexGuard<'_, HashMap<String, Child>> {
        self.inner.children.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn tails(&self) -> std::sync::MutexGuard<'_, HashMap<String, Tail>> {
        self.inner.tails.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn write_record(&self, app: &str, record: &PidRecord) {
        let dir = self.app_dir(app);
        let result = create_private_dir(&dir).and_then(|_| {
            let body = serde_json::to_vec(record).map_err(std::io::Error::other)?;
            std::fs::write(dir.join(format!("{}.json", record.runner_id)), body)
        });
        if let Err(e) = result {
            tracing::warn!(target: "flame::backend", dir = %dir.display(), error = %e, "cannot write a runner pid file (reap will not find this runner)");
        }
    }

    fn remove_record(&self, app: &str, runner_id: &str) {
        let _ = std::fs::remove_file(self.app_dir(app).join(format!("{runner_id}.json")));
    }

    /// Reads the child's stdout until it announces `FLAME_READY <url>` (readiness itself is
    /// core's probe); returns where it listens and its stderr tail.
    async fn boot(
        &self,
        request: &SpawnRequest,
        child: &mut Child,
        deadline: Instant,
    ) -> Result<(Endpoint, Tail)> {
        let runner = request.runner_id.clone();
        let tail = Arc::new(Mutex::new(VecDeque::new()));
        if let Some(stderr) = child.stderr.take() {
            tokio::spawn(forward(stderr, runner.clone(), "stderr", Some(tail.clone())));
        }
        let stdout = child
            .stdout
            .take()
            .ok_or_else(|| Error::backend("the runner's stdout was not captured", false))?;
        let mut lines = BufReader::new(stdout).lines();
        let announced = tokio::time::timeout_at(deadline, async {
            loop {
                match lines.next_line().await {
                    Ok(Some(line)) => match line.trim().strip_prefix("FLAME_READY ") {
                        Some(url) => return Ok(url.trim().to_owned()),
                        None => log_line(&runner, "stdout", &line),
                    },
                    Ok(None) => return Err(None),
                    Err(e) => return Err(Some(e)),
                }
            }
        })
        .await;
        let url = match announced {
            Ok(Ok(url)) => url,
            Ok(Err(read_error)) => {
                let status = tokio::time::timeout(Duration::from_secs(2), child.wait()).await;
                // Give the stderr forwarder a moment to collect the last lines.
                tokio::time::sleep(Duration::from_millis(50)).await;
                let why = match (read_error, status) {
                    (Some(e), _) => format!("reading its stdout failed: {e}"),
                    (None, Ok(Ok(s))) => format!("it exited ({s}) before printing FLAME_READY"),
                    (None, _) => "it closed its stdout before printing FLAME_READY".to_owned(),
                };
                return Err(Error::backend(
                    format!("runner {runner} failed to start: {why}{}", tail_text(&tail)),
                    false,
                ));
            }
            Err(_) => {
                return Err(Error::new(
                    ErrorCode::SpawnTimeout,
                    format!(
                        "runner {runner} did not print FLAME_READY within the boot timeout of {:?}{}",
                        request.boot_timeout,
                        tail_text(&tail)
                    ),
                ))
            }
        };
        tokio::spawn(forward_lines(lines, runner.clone(), "stdout"));
        Ok((
            Endpoint::new(url, runner).with_secret(request.secret.clone()),
            tail,
        ))
    }
}

#[async_trait]
impl Backend for LocalProcess {
    fn name(&self) -> &str {
        "local"
    }

    async fn spawn(&self, request: SpawnRequest) -> Result<RunnerHandle> {
        let deadline = Instant::now() + request.boot_timeout;
        let program = self.inner.program.clone().map_err(|e| Error::backend(e, false))?;
        let mut cmd = Command::new(&program);
        cmd.args(&self.inner.args)
            .envs(self.inner.env.iter().map(|(k, v)| (k, v)))
            .envs(&request.env)
            .env("FLAME_PARENT_PID", std::process::id().to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        #[cfg(unix)]
        cmd.process_group(0);
        let mut child = fork(cmd).await.map_err(|e| {
            Error::backend(
                format!("cannot start runner program {}: {e}", program.display()),
                false,
            )
            .with_source(e)
        })?;
        let pid = child.id().unwrap_or(0);
        match self.boot(&request, &mut child, deadline).await {
            Ok((endpoint, tail)) => {
                self.write_record(
                    &request.app,
                    &PidRecord {
                        pid,
                        parent_pid: std::process::id(),
                        parent_id: request.parent_id.clone(),
                        runner_id: request.runner_id.clone(),
                        pool: request.pool.clone(),
                        url: Some(endpoint.url.clone()),
                    },
                );
                self.children().insert(pid.to_string(), child);
                self.tails().insert(pid.to_string(), tail);
                tracing::debug!(target: "flame::backend", runner = %request.runner_id, pid, url = %endpoint.url, "runner process announced itself");
                Ok(RunnerHandle {
                    runner_id: request.runner_id,
                    backend_id: pid.to_string(),
                    endpoint,
                })
            }
            Err(e) => {
                // Never leave a failed start running.
                let _ = child.start_kill();
                let _ = tokio::time::timeout(Duration::from_secs(5), child.wait()).await;
                Err(e)
            }
        }
    }

    async fn exit_details(&self, handle: &RunnerHandle) -> Option<String> {
        let status = self
            .children()
            .get_mut(&handle.backend_id)
            .and_then(|c| c.try_wait().ok().flatten())
            .map(|s| format!("it exited ({s})"));
        // Give the stderr forwarder a moment to collect the last lines.
        tokio::time::sleep(Duration::from_millis(50)).await;
        let tail = self
            .tails()
            .get(&handle.backend_id)
            .map(tail_text)
            .unwrap_or_default();
        match (status, tail.is_empty()) {
            (None, true) => None,
            (status, _) => Some(format!("{}{tail}", status.unwrap_or_else(|| "it stopped".into()))),
        }
    }

    async fn terminate(&self, handle: &RunnerHandle) -> Result<()> {
        self.tails().remove(&handle.backend_id);
        let child = self.children().remove(&handle.backend_id);
        if let Some(mut child) = child {
            stop_child(&mut child, self.inner.grace).await?;
        }
        // The pid file lives under the app's dir; the handle does not name the app, so look
        // for it in every app dir of the state dir (there are few).
        let base = self
            .inner
            .state_dir
            .clone()
            .unwrap_or_else(LocalProcess::default_state_dir);
        if let Ok(apps) = std::fs::read_dir(base) {
            for app in apps.filter_map(|e| e.ok()) {
                let _ = std::fs::remove_file(app.path().join(format!("{}.json", handle.runner_id)));
            }
        }
        Ok(())
    }

    async fn status(&self, handle: &RunnerHandle) -> Result<RunnerState> {
        let mut children = self.children();
        Ok(match children.get_mut(&handle.backend_id) {
            Some(child) => match child.try_wait() {
                Ok(None) => RunnerState::Running,
                Ok(Some(_)) | Err(_) => RunnerState::Stopped,
            },
            None => RunnerState::Stopped,
        })
    }

    async fn reap(&self, scope: &ReapScope) -> Result<usize> {
        let mut orphans = Vec::new();
        let mut ask = Vec::new();
        for record in self.records(&scope.app) {
            if record.parent_id == scope.live_parent {
                continue;
            }
            let running = pid_alive(record.pid) && is_runner(record.pid, &record.runner_id);
            if !running {
                // Exited: only its pid file is left (and our own child's exit status).
                self.children().remove(&record.pid.to_string());
                self.remove_record(&scope.app, &record.runner_id);
                continue;
            }
            if record.parent_pid != std::process::id() {
                if pid_alive(record.parent_pid) {
                    // Its parent process runs: a live parent's runner (replica, second
                    // instance). Never ours to end.
                    continue;
                }
                orphans.push(record);
            } else {
                // Its parent is another flame handle in this process: ask the runner.
                let candidate = ReapCandidate::new(
                    record.runner_id.clone(),
                    record.pid.to_string(),
                    Some(record.parent_id.clone()),
                    RunnerState::Running,
                    record
                        .url
                        .as_ref()
                        .map(|u| Endpoint::new(u.clone(), record.runner_id.clone())),
                );
                ask.push((candidate, record));
            }
        }
        let chosen = scope.select(ask.iter().map(|(c, _)| c.clone()).collect()).await;
        orphans.extend(
            ask.into_iter()
                .filter(|(c, _)| chosen.iter().any(|(o, _)| o.runner_id == c.runner_id))
                .map(|(_, r)| r),
        );
        let mut ended = 0;
        for record in orphans {
            let own = self.children().remove(&record.pid.to_string());
            if let Some(mut child) = own {
                stop_child(&mut child, self.inner.grace).await?;
                ended += 1;
            } else if pid_alive(record.pid) && is_runner(record.pid, &record.runner_id) {
                signal(record.pid, Sig::Term);
                let until = Instant::now() + self.inner.grace;
                while pid_alive(record.pid) && Instant::now() < until {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                if pid_alive(record.pid) {
                    signal(record.pid, Sig::Kill);
                }
                ended += 1;
            }
            self.remove_record(&scope.app, &record.runner_id);
        }
        if ended > 0 {
            tracing::info!(target: "flame::backend", app = %scope.app, ended, "reaped orphaned runners");
        }
        Ok(ended)
    }
}

/// SIGTERM, wait up to `grace`, then SIGKILL.
async fn stop_child(child: &mut Child, grace: Duration) -> Result<()> {
    if matches!(child.try_wait(), Ok(Some(_))) {
        return Ok(());
    }
    if let Some(pid) = child.id() {
        signal(pid, Sig::Term);
        if tokio::time::timeout(grace, child.wait()).await.is_ok() {
            return Ok(());
        }
    }
    child
        .start_kill()
        .map_err(|e| Error::backend(format!("cannot kill runner process: {e}"), true))?;
    match tokio::time::timeout(Duration::from_secs(10), child.wait()).await {
        Ok(_) => Ok(()),
        Err(_) => Err(Error::backend(
            "runner process did not exit after SIGKILL within 10 s",
            true,
        )),
    }
}

enum Sig {
    Term,
    Kill,
}

#[cfg(unix)]
fn signal(pid: u32, sig: Sig) {
    use nix::sys::signal::{kill, Signal};
    let Ok(raw) = i32::try_from(pid) else { return };
    if raw <= 0 {
        return;
    }
    let s = match sig {
        Sig::Term => Signal::SIGTERM,
        Sig::Kill => Signal::SIGKILL,
    };
    let _ = kill(nix::unistd::Pid::from_raw(raw), s);
}

#[cfg(not(unix))]
fn signal(_pid: u32, _sig: Sig) {}

/// Whether a process with this pid exists (a zombie counts).
#[cfg(unix)]
pub(crate) fn pid_alive(pid: u32) -> bool {
    let Ok(raw) = i32::try_from(pid) else {
        return false;
    };
    if raw <= 0 {
        return false;
    }
    match nix::sys::signal::kill(nix::unistd::Pid::from_raw(raw), None) {
        Ok(()) => true,
        Err(nix::errno::Errno::EPERM) => true,
        Err(_) => false,
    }
}

#[cfg(not(unix))]
pub(crate) fn pid_alive(_pid: u32) -> bool {
    false
}

/// Whether process `pid` is the runner `runner_id` (its environment says so), so a reused pid
/// is never signalled. Without `/proc` it trusts the pid file.
fn is_runner(pid: u32, runner_id: &str) -> bool {
    let proc = Path::new("/proc");
    if !proc.is_dir() {
        return true;
    }
    match std::fs::read(proc.join(pid.to_string()).join("environ")) {
        Ok(env) => {
            let needle = format!("FLAME_RUNNER_ID={runner_id}");
            env.split(|b| *b == 0).any(|var| var == needle.as_bytes())
        }
        Err(_) => false,
    }
}

#[cfg(unix)]
fn uid() -> u32 {
    nix::unistd::getuid().as_raw()
}

#[cfg(not(unix))]
fn uid() -> u32 {
    0
}

fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt;
        builder.mode(0o700);
    }
    builder.create(dir)
}

fn log_line(runner: &str, stream: &'static str, line: &str) {
    tracing::info!(target: "flame::runner", runner, stream, "{line}");
}

async fn forward<R: AsyncRead + Unpin>(
    reader: R,
    runner: String,
    stream: &'static str,
    tail: Option<Arc<Mutex<VecDeque<String>>>>,
) {
    let mut lines = BufReader::new(reader).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        log_line(&runner, stream, &line);
        if let Some(tail) = &tail {
            let mut t = tail.lock().unwrap_or_else(|p| p.into_inner());
            if t.len() == STDERR_TAIL {
                t.pop_front();
            }
            t.push_back(line);
        }
    }
}

async fn forward_lines<R: tokio::io::AsyncBufRead + Unpin>(
    mut lines: tokio::io::Lines<R>,
    runner: String,
    stream: &'static str,
) {
    while let Ok(Some(line)) = lines.next_line().await {
        log_line(&runner, stream, &line);
    }
}

fn tail_text(tail: &Tail) -> String {
    let t = tail.lock().unwrap_or_else(|p| p.into_inner());
    if t.is_empty() {
        String::new()
    } else {
        format!(
            "; its last stderr lines: {}",
            t.iter().cloned().collect::<Vec<_>>().join(" | ")
        )
    }
}

// --- the forking thread ----------------------------------------------------------------------

struct ForkJob {
    command: Command,
    runtime: tokio::runtime::Handle,
    reply: tokio::sync::oneshot::Sender<std::io::Result<Child>>,
}

/// Starts `command` from the one long-lived thread that forks every runner, so the runner's
/// parent-death signal is tied to a thread that lives as long as this process.
async fn fork(command: Command) -> std::io::Result<Child> {
    static FORKER: OnceLock<Mutex<mpsc::Sender<ForkJob>>> = OnceLock::new();
    let sender = FORKER.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<ForkJob>();
        let spawned = std::thread::Builder::new()
            .name("flame-forker".into())
            .spawn(move || {
                for job in rx {
                    let ForkJob {
                        mut command,
                        runtime,
                        reply,
                    } = job;
                    // A panic (e.g. a runtime shutting down) must not end this thread: its
                    // exit would fire the parent-death signal of every runner it forked.
                    let spawned = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                        let _entered = runtime.enter();
                        command.spawn()
                    }));
                    let _ = reply.send(spawned.unwrap_or_else(|_| {
                        Err(std::io::Error::other("starting the runner process panicked"))
                    }));
                }
            });
        if let Err(e) = spawned {
            tracing::error!(target: "flame::backend", error = %e, "cannot start the flame-forker thread");
        }
        Mutex::new(tx)
    });
    let (reply, answer) = tokio::sync::oneshot::channel();
    let job = ForkJob {
        command,
        runtime: tokio::runtime::Handle::current(),
        reply,
    };
    sender
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .send(job)
        .map_err(|_| std::io::Error::other("the flame-forker thread is gone"))?;
    answer
        .await
        .map_err(|_| std::io::Error::other("the flame-forker thread dropped the request"))?
}
