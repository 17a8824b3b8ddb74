//! A flame parent on ECS (moto) and the processes that stand in for its tasks, for the
//! two-parent tests (`tests/two_parents.rs`). moto never starts containers, so this binary
//! plays them, on 127.0.0.1 only (moto's private 10.x addresses are never dialled):
//!
//! - `FLAME_MODE=runner`: a real flame runner (flame-http) serving `math/add` and
//!   `utils/sleep`, with the no-orphan failsafe and the unauthenticated `parentSilentMs`
//!   health answer.
//! - `ecs_parent task <dir> <moto-url> <cluster> <task-arn> <port>`: the "ECS agent" of one
//!   task: reads the task's container-override environment from moto (secret, parent id,
//!   runner id, failsafe window), starts this binary as that task's runner on
//!   `127.0.0.1:<port>`, and kills it when moto says the task is stopping (StopTask). When the
//!   runner exits by itself (its failsafe) it exits too, and leaves moto alone: moto keeps
//!   saying `RUNNING`, like an engine that has not noticed yet — only `reap` can tell.
//! - `ecs_parent parent <moto-url> <cluster> <task-definition> <subnet> <app> <dir> <runners>
//!   <call-ms>`: a real flame parent with the ECS backend on moto (an elastic pool `default`
//!   of exactly `<runners>` tasks, failsafe window from `FLAME_PARENT_TIMEOUT`, 10 s boot
//!   timeout). Its address resolver maps each task to `http://127.0.0.1:<port>` through files
//!   in `<dir>` (`<task-id>.url`, `<task-id>.pid` for the agent's pid), starting the task's
//!   agent the first time, so every parent resolves a task to the same runner, as ECS gives a
//!   task one ENI address; at most 16 tasks per directory. It prints `PARENT <its parent id>`,
//!   then `READY` once its runners serve. With `<call-ms>` > 0, one caller per runner calls
//!   `utils/sleep(<call-ms>)` over and over, printing `CALL_START <caller> <n> <unix-ms>` and
//!   `CALL_OK …` or `CALL_ERR <caller> <n> <unix-ms> <error>`. On stdin, `reap` runs this
//!   parent's own reap (the scope `start` reaps with) and prints `REAPED <ended> <start-ms>
//!   <end-ms>` (or `REAP_ERR <error>`); `exit` or end of input shuts it down and exits.

use flame_backend_ecs::aws::Credentials;
use flame_backend_ecs::{EcsBackend, PollSettings, RetrySettings};
use flame_core::testkit::parent_program::{serve_parent, Callers};
use flame_core::{Backend, Context, Error, Flame, Method, Mode, PoolConfig, Registry, RunnerAddress};
use flame_http::HttpExt;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// `math/add`.
const ADD: Method<(i64, i64), i64> = Method::new("math", "add");
/// `utils/sleep`: sleeps this many milliseconds, then answers them (a call that stays in
/// flight).
const SLEEP: Method<u64, u64> = Method::new("utils", "sleep");

/// Most task agents one directory (one test) may start: the cap on what this binary spawns.
const MAX_TASKS: usize = 16;

fn registry() -> Registry {
    Registry::new()
        .handle(ADD, |_ctx: Context, (a, b): (i64, i64)| async move { Ok(a + b) })
        .handle(SLEEP, |_ctx: Context, ms: u64| async move {
            tokio::time::sleep(Duration::from_millis(ms)).await;
            Ok(ms)
        })
}

fn usage(text: &str) -> Error {
    Error::config(format!("usage: {text}"))
}

/// An ECS client on moto.
async fn moto_client(moto: &str) -> Result<aws_sdk_ecs::Client, Error> {
    let backend = moto_builder(moto)
        .cluster("unused")
        .task_definition("unused")
        .container_name("unused")
        .build()
        .await?;
    Ok(backend.client().clone())
}

fn moto_builder(moto: &str) -> flame_backend_ecs::EcsBackendBuilder {
    EcsBackend::builder()
        .endpoint_url(moto)
        .region("us-east-1")
        .credentials(Credentials::new("test", "test", None, None, "flame-tests"))
        .task_metadata_uri(None)
        .poll(PollSettings {
            describe_min: Duration::from_millis(20),
            describe_max: Duration::from_millis(100),
        })
        .retry(RetrySettings {
            max_attempts: 3,
            initial_backoff: Duration::from_millis(10),
            max_backoff: Duration::from_millis(40),
            attempt_timeout: Duration::from_secs(5),
            connect_timeout: Duration::from_secs(1),
        })
}

fn task_id(arn: &str) -> &str {
    arn.rsplit('/').next().unwrap_or(arn)
}

/// The task's state and container-override environment, as moto keeps them; `None` when
/// moto does not know the task.
async fn describe(
    client: &aws_sdk_ecs::Client,
    cluster: &str,
    arn: &str,
) -> Result<Option<(bool, BTreeMap<String, String>)>, Error> {
    let out = client
        .describe_tasks()
        .cluster(cluster)
        .tasks(arn)
        .send()
        .await
        .map_err(|e| Error::backend(format!("DescribeTasks: {e}"), true))?;
    let Some(task) = out.tasks().iter().find(|t| t.task_arn() == Some(arn)) else {
        return Ok(None);
    };
    let running = task.desired_status() == Some("RUNNING");
    let env = task
        .overrides()
        .and_then(|o| o.container_overrides().first())
        .map(|c| {
            c.environment()
                .iter()
                .filter_map(|kv| Some((kv.name()?.to_owned(), kv.value()?.to_owned())))
                .collect()
        })
        .unwrap_or_default();
    Ok(Some((running, env)))
}

/// The `task` mode: one task's agent.
async fn agent(args: &[String]) -> Result<(), Error> {
    let [_, dir, moto, cluster, arn, port] = args else {
        return Err(usage("task <dir> <moto-url> <cluster> <task-arn> <port>"));
    };
    let client = moto_client(moto).await?;
    let Some((true, env)) = describe(&client, cluster, arn).await? else {
        return Ok(());
    };
    let io = |e: std::io::Error| Error::backend(format!("cannot start the task's runner: {e}"), false);
    let exe = std::env::current_exe().map_err(io)?;
    let mut runner = tokio::process::Command::new(exe)
        .env_clear()
        .envs(&env)
        .env("FLAME_MODE", "runner")
        .env("FLAME_LISTEN", format!("127.0.0.1:{port}"))
        // The runner dies with its agent (parent-death signal), as a container with its task.
        .env("FLAME_PARENT_PID", std::process::id().to_string())
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .map_err(io)?;
    if let Some(pid) = runner.id() {
        let _ = std::fs::write(
            Path::new(dir).join(format!("{}.runner-pid", task_id(arn))),
            pid.to_string(),
        );
    }
    loop {
        tokio::select! {
            // The runner ended by itself (its failsafe): so does the "container".
            _ = runner.wait() => return Ok(()),
            _ = tokio::time::sleep(Duration::from_millis(250)) => {}
        }
        // StopTask: the container is killed.
        if let Ok(None | Some((false, _))) = describe(&client, cluster, arn).await {
            let _ = runner.start_kill();
            let _ = runner.wait().await;
            return Ok(());
        }
    }
}

/// Maps each task to `http://127.0.0.1:<port>` through files in `dir`, starting the task's
/// agent the first time (one per task, whichever parent resolves it first).
fn resolver(
    dir: PathBuf,
    moto: String,
    cluster: String,
) -> impl Fn(&RunnerAddress) -> Option<String> + Send + Sync + 'static {
    let lock = Mutex::new(());
    move |address: &RunnerAddress| {
        let _one_at_a_time = lock.lock().ok()?;
        let id = task_id(&address.backend_id).to_owned();
        let url_file = dir.join(format!("{id}.url"));
        // Another parent (or an earlier call) claimed the task: wait for its URL.
        let claim = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(dir.join(format!("{id}.claim")));
        if claim.is_err() {
            for _ in 0..100 {
                if let Ok(url) = std::fs::read_to_string(&url_file) {
                    return Some(url.trim().to_owned());
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            return None;
        }
        let claimed = std::fs::read_dir(&dir)
            .ok()?
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name().to_string_lossy().ends_with(".claim"))
            .count();
        if claimed > MAX_TASKS {
            eprintln!(
                "ecs_parent: more than {MAX_TASKS} tasks in {}: refusing to start another",
                dir.display()
            );
            return None;
        }
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .ok()?
            .port();
        let mut child = std::process::Command::new(std::env::current_exe().ok()?)
            .arg("task")
            .arg(&dir)
            .arg(&moto)
            .arg(&cluster)
            .arg(&address.backend_id)
            .arg(port.to_string())
            .env_remove("FLAME_MODE")
            .env_remove("FLAME_PARENT_ID")
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .spawn()
            .ok()?;
        let _ = std::fs::write(dir.join(format!("{id}.pid")), child.id().to_string());
        // Reap the agent when it exits (no zombie while this parent lives).
        std::thread::spawn(move || child.wait());
        let url = format!("http://127.0.0.1:{port}");
        let tmp = dir.join(format!("{id}.url.tmp"));
        std::fs::write(&tmp, &url).ok()?;
        std::fs::rename(&tmp, &url_file).ok()?;
        Some(url)
    }
}

/// The `parent` mode.
async fn parent(args: &[String]) -> Result<(), Error> {
    let [_, moto, cluster, task_definition, subnet, app, dir, runners, call_ms] = args else {
        return Err(usage(
            "parent <moto-url> <cluster> <task-definition> <subnet> <app> <dir> <runners> <call-ms>",
        ));
    };
    let runners: usize = runners
        .parse()
        .map_err(|_| Error::config("runners is not a number"))?;
    let call_ms: u64 = call_ms
        .parse()
        .map_err(|_| Error::config("call-ms is not a number"))?;
    let backend = moto_builder(moto)
        .cluster(cluster)
        .task_definition(task_definition)
        .fargate()
        .subnets([subnet.clone()])
        .security_groups(["sg-flame-test"])
        .resolver(resolver(PathBuf::from(dir), moto.clone(), cluster.clone()))
        .build()
        .await?;
    let backend: Arc<dyn Backend> = Arc::new(backend);
    let flame = Flame::builder(registry())
        .http()
        .from_env()?
        .mode(Mode::Parent)
        .app(app)
        .backend_shared(backend.clone())
        .pool(
            "default",
            PoolConfig::default()
                .min(runners)
                .max(runners)
                .max_concurrency(1)
                .boot_timeout(Duration::from_secs(10))
                .health_interval(Duration::from_secs(1))
                .idle_shutdown_after(Duration::from_secs(3600)),
        )
        .start()
        .await?;
    let callers = Callers {
        method: SLEEP,
        ms: call_ms,
        callers: runners,
    };
    serve_parent(flame, &[("default", runners)], Some(callers), vec![backend]).await
}

#[tokio::main]
async fn main() -> Result<(), Error> {
    // As in every flame binary, FLAME_MODE decides: a runner ignores its arguments.
    if std::env::var("FLAME_MODE").is_ok_and(|m| m == "runner") {
        let flame = Flame::builder(registry()).http().from_env()?.start().await?;
        return flame.shutdown().await;
    }
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("task") => agent(&args).await,
        Some("parent") => parent(&args).await,
        _ => Err(usage("ecs_parent task … | parent … (or FLAME_MODE=runner)")),
    }
}
